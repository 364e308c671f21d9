"""Listing events to a real local HTTP receiver: signature, retry after downtime, one lot.

The receiver is ``http.server`` in a thread, verifying the HMAC-SHA256 signature of every
body with the shared secret the way a shop would (docs/harvest.md has the snippet).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import sqlalchemy as sa

from control.harvest import HarvestConfig, HarvestEngine, publish_lot, shop_sink, url_secrets
from control.harvest.bench import demo_subset, load_season, replay, season_span
from control.harvest.tables import lot
from control.store import open_store
from control.webhooks import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    WebhookDispatcher,
    WebhookSettings,
    attempts_of,
    list_deliveries,
    sign,
    verify_signature,
)
from firmware_sim.season import ready_dates
from orchard.influx import SyncInfluxClient
from orchard.stack import free_port

SECRET = "shop-shared-secret"


class Receiver:
    """A shop's webhook endpoint: verifies, records, answers 204 (or 401 if forged)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.received: list[dict[str, Any]] = []
        self.rejected = 0
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/orchard/listings"

    def start(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if not verify_signature(body, SECRET, self.headers.get(SIGNATURE_HEADER)):
                    outer.rejected += 1
                    self.send_response(401)
                    self.end_headers()
                    return
                outer.received.append(
                    {"key": self.headers[IDEMPOTENCY_HEADER], "body": json.loads(body)}
                )
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(free_port())
    yield r
    r.stop()


@pytest.fixture
def state(tmp_path: Path) -> sa.Engine:
    return open_store(f"sqlite:///{tmp_path / 'state.db'}")


async def test_listing_webhook_signed_retried_and_one_lot(
    influx: SyncInfluxClient, state: sa.Engine, receiver: Receiver
) -> None:
    orchard = demo_subset(("cherry-north",))
    tz = ZoneInfo(orchard.farm.timezone)
    truth = ready_dates(orchard, seed=3)
    start, end = season_span(orchard, truth, after_days=6)
    load_season(influx, orchard, start, end, seed=3, step_s=3600)

    config = HarvestConfig(shop_webhook_url=receiver.url, shop_webhook_secret=SECRET)  # type: ignore[arg-type]
    policy = WebhookSettings(backoff_min_s=0.01, backoff_max_s=0.05, max_attempts=5)
    dispatcher = WebhookDispatcher(
        state,
        WebhookSettings(secret="alarm-webhook-secret"),  # type: ignore[arg-type]
        url_secrets=url_secrets(config),
    )
    sink = shop_sink(state, config, base=policy, dispatcher=dispatcher)
    harvest = HarvestEngine(orchard, state, config, sink=sink)

    # The shop is down while the block ripens: the evaluation goes on regardless.
    first = start.astimezone(tz).date()
    last = (end - timedelta(seconds=1)).astimezone(tz).date()
    result = replay(harvest, influx, first, last - timedelta(days=3))
    assert result.ready_day("cherry-north") is not None
    assert await dispatcher.deliver_due() >= 1
    pending = list_deliveries(state, state="pending")
    assert pending and pending[-1].event_type == "listing.created"
    assert "ConnectError" in (attempts_of(state, pending[-1].id)[0].error or "")

    # The shop comes back: the retry delivers, signed with the shop's secret.
    receiver.start()
    for _ in range(50):
        await dispatcher.deliver_due()
        if not list_deliveries(state, state="pending"):
            break
        await asyncio.sleep(0.02)
    assert not list_deliveries(state, state="pending")
    assert receiver.rejected == 0
    created = [m for m in receiver.received if m["body"]["type"] == "listing.created"]
    assert len(created) == 1
    listing = created[0]["body"]["data"]["listing"]
    assert listing["lot"] == "cherry-north-2026-w1" and listing["state"] == "draft"
    assert created[0]["key"] == created[0]["body"]["data"]["id"]
    assert listing["quantity_kg"] > 0 and listing["grade"] in ("A", "B", "C")

    # Days of re-evaluation and a publication: still one lot, each change delivered once.
    replay(harvest, influx, last - timedelta(days=2), last)
    publish_lot(state, "cherry-north-2026-w1", "shop-operator", sink=sink)
    for _ in range(50):
        await dispatcher.deliver_due()
        if not list_deliveries(state, state="pending"):
            break
        await asyncio.sleep(0.02)
    with state.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(lot)).scalar_one() == 1
    keys = [m["key"] for m in receiver.received]
    assert len(keys) == len(set(keys))
    assert {m["body"]["data"]["listing"]["lot"] for m in receiver.received} == {
        "cherry-north-2026-w1"
    }
    assert receiver.received[-1]["body"]["type"] == "listing.published"
    versions = [m["body"]["data"]["listing"]["version"] for m in receiver.received]
    assert versions == sorted(versions)
    # The dashboards see the operator's change at the next evaluation.
    replay(harvest, influx, last, last)
    published = influx.query_one(
        'SELECT "state", "quantity_kg" FROM "listing" WHERE "event" = \'published\''
    )
    assert published and published[0].rows()[0]["state"] == "published"
    log = list_deliveries(state)
    assert all(d.state == "delivered" for d in log)
    assert log[-1].attempts >= 2  # the created event: refused once, then delivered

    assert receiver.received[0]["key"].startswith("listing:sunny-hill:cherry-north-2026-w1:v1")

    # The shop's check is real: a body signed with another key is refused.
    forged = json.dumps(receiver.received[0]["body"]).encode()
    answer = httpx.post(
        receiver.url,
        content=forged,
        headers={SIGNATURE_HEADER: sign(forged, "not-the-secret"), IDEMPOTENCY_HEADER: "x"},
    )
    assert answer.status_code == 401 and receiver.rejected == 1
