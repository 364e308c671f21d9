"""Control state layer: alarm lifecycle, thresholds and overrides, webhooks; SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from control import webhooks
from control.alarms import Alarms, AlarmStateError
from control.store import open_store, webhook_delivery
from control.thresholds import Thresholds, ThresholdValidationError
from orchard.layout import load_orchard
from orchard.settings import CONFIG_DIR

ORCHARD = load_orchard(CONFIG_DIR / "orchard.toml")
T0 = datetime(2026, 5, 1, 3, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    if request.param == "sqlite":
        engine = open_store(f"sqlite:///{tmp_path_factory.mktemp('state')}/state.db")
        yield engine
        engine.dispose()
        return
    base_url: str = request.getfixturevalue("postgres_url")
    # One database per test so tests never see each other's rows.
    name = f"t_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine = open_store(base_url.rsplit("/", 1)[0] + f"/{name}")
    yield engine
    engine.dispose()
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE "{name}"'))
    admin.dispose()


def _raise(alarms: Alarms, severity: str = "major", value: float = -2.5, at: datetime = T0):
    return alarms.raise_alarm(
        type="frost",
        subject="apple-east",
        farm="sunny-hill",
        block="apple-east",
        severity=severity,
        message=f"frost {value}",
        value=value,
        now=at,  # type: ignore[arg-type]
    )


def test_alarm_lifecycle_one_active_per_type_and_subject(store: Engine) -> None:
    notified: list[str] = []
    alarms = Alarms(store, notify=lambda c: notified.append(f"{c.event}:{c.alarm.severity}"))
    first = _raise(alarms)
    assert first.event == "raised" and first.alarm.state == "active_unack"
    # The same condition again only refreshes the open alarm: no second alarm, no notification.
    again = _raise(alarms, value=-2.7, at=T0 + timedelta(minutes=5))
    assert again.event is None and again.alarm.id == first.alarm.id
    assert again.alarm.value == -2.7
    assert len(alarms.list(state="active")) == 1

    ack = alarms.acknowledge(first.alarm.id, "maria", now=T0 + timedelta(minutes=6))
    assert ack.alarm.state == "active_ack" and ack.alarm.acknowledged_by == "maria"
    # Escalation re-opens it for attention (unacknowledged, higher severity) and notifies.
    esc = _raise(alarms, severity="critical", value=-3.5, at=T0 + timedelta(minutes=10))
    assert esc.event == "escalated"
    assert esc.alarm.severity == "critical" and esc.alarm.state == "active_unack"
    assert esc.alarm.escalation_level == 1
    # A lower severity never silently downgrades an open alarm.
    assert (
        _raise(alarms, severity="major", at=T0 + timedelta(minutes=11)).alarm.severity == "critical"
    )

    cleared = alarms.clear(first.alarm.id, "control", reason="warmer", now=T0 + timedelta(hours=2))
    assert cleared.alarm.state == "cleared_unack" and cleared.alarm.cleared_by == "control"
    assert alarms.acknowledge(first.alarm.id, "li").alarm.state == "cleared_ack"
    assert [e.event for e in alarms.history(first.alarm.id)] == [
        "raised",
        "acknowledged",
        "escalated",
        "cleared",
        "acknowledged",
    ]
    # After a clear, the next occurrence is a new alarm.
    second = _raise(alarms, at=T0 + timedelta(days=1))
    assert second.event == "raised" and second.alarm.id != first.alarm.id
    assert notified == ["raised:major", "escalated:critical", "raised:major"]

    assert [a.id for a in alarms.list(state="cleared")] == [first.alarm.id]
    assert [a.id for a in alarms.list(min_severity="critical")] == [first.alarm.id]
    assert alarms.list(block="cherry-north") == []
    assert [a.id for a in alarms.list(since=T0 + timedelta(hours=3))] == [second.alarm.id]
    with pytest.raises(ValueError, match="unknown severity"):
        alarms.list(severity="apocalyptic")


def test_alarm_unique_active_key_is_enforced_by_the_database(store: Engine) -> None:
    alarms = Alarms(store)
    first = _raise(alarms)
    from control.store import alarm

    with pytest.raises(sa.exc.IntegrityError), store.begin() as conn:
        conn.execute(
            alarm.insert().values(
                type="frost",
                subject="apple-east",
                farm="f",
                block="b",
                severity="major",
                state="active_unack",
                message="dup",
                escalation_level=0,
                started_at=T0,
                last_seen_at=T0,
                active_key="frost|apple-east",
                updated_at=T0,
            )
        )
    assert len(alarms.list()) == 1 and alarms.get(first.alarm.id).active
    assert issubclass(AlarmStateError, Exception)


def test_thresholds_sources_overrides_validation_and_audit(store: Engine) -> None:
    th = Thresholds(store, ORCHARD)
    eff = th.effective("apple-east", date(2026, 5, 1))
    # Loam θFC 0.30, θWP 0.12, p 0.5: trigger 0.21 (agronomy-reference.md worked example).
    assert eff["soil_trigger"] == pytest.approx(0.21)
    assert eff.values["soil_trigger"].source == "crop_default"
    assert eff.values["irrigation_rate_mm_h"].source == "block_profile"
    assert eff.values["frost_t10"].value == -2.2

    with pytest.raises(ThresholdValidationError) as absurd:
        th.set_overrides("apple-east", {"soil_trigger": 5.0}, who="maria")
    assert "0.02–0.6 m³/m³" in str(absurd.value)
    assert absurd.value.problems[0].key == "soil_trigger"
    with pytest.raises(ThresholdValidationError, match="must be above soil_trigger"):
        th.set_overrides("apple-east", {"soil_refill": 0.2}, who="maria")
    with pytest.raises(ThresholdValidationError, match="frost_t90"):
        th.set_overrides("apple-east", {"frost_t10": -5.0}, who="maria")
    with pytest.raises(ThresholdValidationError, match="unknown threshold 'soil_triger'"):
        th.set_overrides("apple-east", {"soil_triger": 0.2}, who="maria")
    with pytest.raises(ThresholdValidationError, match="not allowed"):
        th.set_overrides("apple-east", {"heat_c": float("nan")}, who="maria")
    # A refused request changes nothing, even its valid parts (all or none).
    with pytest.raises(ThresholdValidationError):
        th.set_overrides("apple-east", {"heat_c": 33.0, "vpd_high_kpa": 99}, who="maria")
    assert th.overrides("apple-east") == [] and th.audit() == []

    after = th.set_overrides(
        "apple-east",
        {"soil_trigger": 0.19, "frost_t10": -5.0, "frost_t90": -7.0},
        who="maria",
        reason="mature trees, deep roots",
        now=T0,
    )
    assert after["soil_trigger"] == 0.19 and after.values["soil_trigger"].source == "override"
    assert "maria" in after.values["soil_trigger"].detail
    assert after.values["soil_trigger"].default == pytest.approx(0.21)
    removed = th.set_overrides(
        "apple-east", {"soil_trigger": None}, who="li", reason="back", now=T0 + timedelta(hours=1)
    )
    assert removed["soil_trigger"] == pytest.approx(0.21)
    log = th.audit("apple-east")
    assert [(e.key, e.old_value, e.new_value, e.actor) for e in log][:1] == [
        ("soil_trigger", 0.19, None, "li")
    ]
    first_change = next(e for e in log if e.key == "soil_trigger" and e.actor == "maria")
    assert (
        first_change.effective_before == pytest.approx(0.21)
        and first_change.reason == "mature trees, deep roots"
    )
    # Other blocks are untouched.
    assert th.effective("cherry-north").values["frost_t10"].source == "crop_default"


class _Receiver:
    """A real HTTP receiver that fails the first ``failures`` requests with 500."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.requests: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests.append((dict(self.headers), body))
                status = 500 if len(outer.requests) <= outer.failures else 204
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def _drain(dispatcher: webhooks.WebhookDispatcher, store: Engine, passes: int = 20) -> None:
    for _ in range(passes):
        await dispatcher.deliver_due()
        with store.connect() as conn:
            pending = conn.execute(
                sa.select(sa.func.count()).where(webhook_delivery.c.state == "pending")
            ).scalar_one()
        if not pending:
            return
        # Make the backoff due now instead of sleeping through it.
        with store.begin() as conn:
            conn.execute(webhook_delivery.update().values(next_attempt_at=datetime.now(UTC)))


async def test_webhook_signed_retried_and_logged(store: Engine) -> None:
    receiver = _Receiver(failures=2)
    settings = webhooks.WebhookSettings(
        url=receiver.url, secret="s3cret", max_attempts=5, backoff_min_s=0.01
    )
    dispatcher = webhooks.WebhookDispatcher(store, settings)
    sender = webhooks.WebhookSender(store, settings, dispatcher)
    try:
        delivery_id = sender.send(
            "alarm.raised", {"id": 7, "type": "frost"}, idempotency_key="alarm-7-raised-0"
        )
        # Enqueueing the same key again stores nothing new.
        assert (
            sender.send("alarm.raised", {"id": 7}, idempotency_key="alarm-7-raised-0")
            == delivery_id
        )
        await _drain(dispatcher, store)
    finally:
        await dispatcher._http.aclose()
        receiver.close()
    assert len(receiver.requests) == 3
    keys = {h["Idempotency-Key"] for h, _ in receiver.requests}
    assert keys == {"alarm-7-raised-0"}
    headers, body = receiver.requests[-1]
    assert webhooks.verify_signature(body, "s3cret", headers["X-Orchard-Signature"])
    assert not webhooks.verify_signature(body + b" ", "s3cret", headers["X-Orchard-Signature"])
    assert json.loads(body) == {"type": "alarm.raised", "data": {"id": 7, "type": "frost"}}
    [delivery] = webhooks.list_deliveries(store)
    assert delivery.state == "delivered" and delivery.attempts == 3
    attempts = webhooks.attempts_of(store, delivery.id)
    assert [a.status_code for a in attempts] == [500, 500, 204]


async def test_webhook_receiver_down_gives_up_after_bounded_attempts(store: Engine) -> None:
    receiver = _Receiver()
    url = receiver.url
    receiver.close()  # nobody listens any more
    settings = webhooks.WebhookSettings(
        url=url, secret="s", max_attempts=3, backoff_min_s=0.01, timeout_s=1
    )
    dispatcher = webhooks.WebhookDispatcher(store, settings)
    webhooks.WebhookSender(store, settings, dispatcher).send("alarm.raised", {"id": 1})
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop))
    try:
        # The background task works while this coroutine (the "control loop") carries on.
        await _drain(dispatcher, store)
    finally:
        stop.set()
        await task
    [delivery] = webhooks.list_deliveries(store)
    assert delivery.state == "failed" and delivery.attempts == 3
    assert all(a.status_code is None and a.error for a in webhooks.attempts_of(store, delivery.id))
    # Off by default: no URL, nothing stored.
    assert webhooks.WebhookSender(store, webhooks.WebhookSettings()).send("x", {}) is None
