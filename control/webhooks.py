"""Outbound webhooks: signed JSON, at-least-once, bounded retries, a readable delivery log.

The sender never talks to the receiver directly. :func:`enqueue` writes the message
to the ``control_webhook_delivery`` outbox (same store as alarms and commands, so a
message is never lost to a restart), and a :class:`WebhookDispatcher` task running in
the background posts due messages, so a receiver that is down never blocks the
control loop.

Each request carries:

* body: the JSON document, byte for byte what was signed;
* ``X-Orchard-Signature: sha256=<hex>``: HMAC-SHA256 of the body with the shared secret;
* ``Idempotency-Key``: the same on every retry of one message (receivers de-duplicate:
  delivery is at-least-once, so a timeout after the receiver stored the message means
  it will see it again);
* ``X-Orchard-Event``: the event type, ``X-Orchard-Delivery``: the delivery id.

A 2xx answer delivers the message. 408, 425, 429, 5xx and network errors are retried
with exponential backoff and full jitter up to ``max_attempts``; other 4xx mean the
receiver refuses this message and it is marked failed at once. Every attempt is logged
(``control_webhook_attempt``: status code, error, duration) for an operator to read.

Receivers verify with :func:`verify_signature`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx
import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from sqlalchemy.engine import Engine

from control.store import utcnow, webhook_attempt, webhook_delivery

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Orchard-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
EVENT_HEADER = "X-Orchard-Event"
DELIVERY_HEADER = "X-Orchard-Delivery"
RETRYABLE_STATUS = {408, 425, 429}


class WebhookSettings(BaseModel):
    """``ORCHARD_WEBHOOK__URL`` etc. Off (no URL) by default."""

    url: str | None = Field(default=None, description="Receiver URL; empty disables webhooks")
    secret: SecretStr | None = Field(default=None, description="Shared HMAC-SHA256 secret")
    timeout_s: float = Field(default=5.0, gt=0, le=60)
    max_attempts: int = Field(default=8, ge=1, le=50)
    backoff_min_s: float = Field(default=1.0, gt=0)
    backoff_max_s: float = Field(default=600.0, gt=0)
    poll_s: float = Field(default=1.0, gt=0, description="How often the outbox is checked")

    @property
    def enabled(self) -> bool:
        return bool(self.url)


class Delivery(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: int
    idempotency_key: str
    event_type: str
    url: str
    body: str
    state: str
    attempts: int
    max_attempts: int
    next_attempt_at: datetime
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None


class Attempt(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: int
    delivery_id: int
    attempt: int
    ts: datetime
    status_code: int | None
    error: str | None
    duration_ms: float


def canonical_body(payload: Any) -> bytes:
    """Compact, key-sorted JSON: one payload always gives the same bytes (and signature)."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str).encode()


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(body: bytes, secret: str, header: str | None) -> bool:
    """Constant-time check of an ``X-Orchard-Signature`` header (for receivers and tests)."""
    return header is not None and hmac.compare_digest(sign(body, secret), header)


def enqueue(
    engine: Engine,
    *,
    url: str,
    event_type: str,
    payload: Any,
    idempotency_key: str | None = None,
    max_attempts: int = 8,
    now: datetime | None = None,
) -> int:
    """Store a message for delivery and return its delivery id.

    Enqueueing the same ``idempotency_key`` twice stores it once (returns the first id),
    so a caller may retry its own enqueue after a crash without double notifications.
    """
    now = now or utcnow()
    key = idempotency_key or uuid.uuid4().hex
    body = canonical_body(payload).decode()
    with engine.begin() as conn:
        existing = conn.execute(
            sa.select(webhook_delivery.c.id).where(webhook_delivery.c.idempotency_key == key)
        ).first()
        if existing is not None:
            return int(existing[0])
        return int(
            conn.execute(
                webhook_delivery.insert().values(
                    idempotency_key=key,
                    event_type=event_type,
                    url=url,
                    body=body,
                    state="pending",
                    attempts=0,
                    max_attempts=max_attempts,
                    next_attempt_at=now,
                    created_at=now,
                )
            ).inserted_primary_key[0]  # type: ignore[index]
        )


def list_deliveries(
    engine: Engine, *, state: str | None = None, event_type: str | None = None, limit: int = 100
) -> list[Delivery]:
    """The delivery log, newest first."""
    query = sa.select(webhook_delivery)
    if state is not None:
        query = query.where(webhook_delivery.c.state == state)
    if event_type is not None:
        query = query.where(webhook_delivery.c.event_type == event_type)
    query = query.order_by(webhook_delivery.c.id.desc()).limit(limit)
    with engine.connect() as conn:
        return [Delivery.model_validate(dict(r._mapping)) for r in conn.execute(query)]


def attempts_of(engine: Engine, delivery_id: int) -> list[Attempt]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(webhook_attempt)
            .where(webhook_attempt.c.delivery_id == delivery_id)
            .order_by(webhook_attempt.c.attempt)
        )
        return [Attempt.model_validate(dict(r._mapping)) for r in rows]


class WebhookDispatcher:
    """Delivers due outbox messages in the background (one asyncio task).

    Database work runs in a worker thread so a slow store does not stall the event
    loop; HTTP calls have a timeout so a hanging receiver costs at most ``timeout_s``
    per attempt, and only this task waits for it.
    """

    def __init__(
        self,
        engine: Engine,
        settings: WebhookSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
        url_secrets: dict[str, SecretStr] | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        # Receivers with their own shared secret (the shop's listing webhook): one outbox,
        # one dispatcher, each message signed with the key of the URL it goes to.
        self.url_secrets = dict(url_secrets or {})
        self._rng = rng or random.Random()
        self._http = httpx.AsyncClient(timeout=settings.timeout_s, transport=transport)
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def wake(self) -> None:
        """Check the outbox now (after an enqueue) instead of at the next poll; thread-safe."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake.set)

    def backoff_s(self, attempt: int) -> float:
        """Full jitter: uniform in [min, min·2^(attempt-1)] capped at max."""
        ceiling = min(self.settings.backoff_max_s, self.settings.backoff_min_s * 2 ** (attempt - 1))
        return self._rng.uniform(
            self.settings.backoff_min_s, max(self.settings.backoff_min_s, ceiling)
        )

    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            while not stop.is_set():
                try:
                    await self.deliver_due()
                except Exception:
                    log.exception("webhook dispatcher pass failed; retrying")
                self._wake.clear()
                waiter = asyncio.ensure_future(self._wake.wait())
                stopper = asyncio.ensure_future(stop.wait())
                await asyncio.wait(
                    {waiter, stopper},
                    timeout=self.settings.poll_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                waiter.cancel()
                stopper.cancel()
        finally:
            await self._http.aclose()

    async def deliver_due(self, limit: int = 50) -> int:
        """Attempt every due message once; returns how many were attempted."""
        due = await asyncio.to_thread(self._due, limit)
        for delivery in due:
            await self._attempt(delivery)
        return len(due)

    def _due(self, limit: int) -> list[Delivery]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(webhook_delivery)
                .where(
                    webhook_delivery.c.state == "pending",
                    webhook_delivery.c.next_attempt_at <= utcnow(),
                )
                .order_by(webhook_delivery.c.next_attempt_at, webhook_delivery.c.id)
                .limit(limit)
            )
            return [Delivery.model_validate(dict(r._mapping)) for r in rows]

    async def _attempt(self, delivery: Delivery) -> None:
        body = delivery.body.encode()
        headers = {
            "Content-Type": "application/json",
            IDEMPOTENCY_HEADER: delivery.idempotency_key,
            EVENT_HEADER: delivery.event_type,
            DELIVERY_HEADER: str(delivery.id),
            "User-Agent": "orchard-control",
        }
        secret = self.url_secrets.get(delivery.url, self.settings.secret)
        if secret is not None:
            headers[SIGNATURE_HEADER] = sign(body, secret.get_secret_value())
        started = time.perf_counter()
        status: int | None = None
        error: str | None = None
        try:
            response = await self._http.post(delivery.url, content=body, headers=headers)
            status = response.status_code
            if not 200 <= status < 300:
                error = f"HTTP {status}: {response.text[:200]}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
        duration_ms = (time.perf_counter() - started) * 1000
        await asyncio.to_thread(self._record, delivery, status, error, duration_ms)

    def _record(
        self, delivery: Delivery, status: int | None, error: str | None, duration_ms: float
    ) -> None:
        now = utcnow()
        attempt = delivery.attempts + 1
        values: dict[str, Any] = {
            "attempts": attempt,
            "last_status_code": status,
            "last_error": error,
        }
        if error is None:
            values.update(state="delivered", delivered_at=now)
        elif (status is not None and 400 <= status < 500 and status not in RETRYABLE_STATUS) or (
            attempt >= delivery.max_attempts
        ):
            values.update(state="failed")
            log.warning(
                "webhook %s (%s) failed after %d attempt(s): %s",
                delivery.id,
                delivery.event_type,
                attempt,
                error,
            )
        else:
            values.update(next_attempt_at=now + timedelta(seconds=self.backoff_s(attempt)))
        with self.engine.begin() as conn:
            conn.execute(
                webhook_delivery.update()
                .where(webhook_delivery.c.id == delivery.id)
                .values(**values)
            )
            conn.execute(
                webhook_attempt.insert().values(
                    delivery_id=delivery.id,
                    attempt=attempt,
                    ts=now,
                    status_code=status,
                    error=error,
                    duration_ms=duration_ms,
                )
            )


class WebhookSender:
    """What producers hold: enqueue if configured, no-op otherwise, and wake the dispatcher."""

    def __init__(
        self, engine: Engine, settings: WebhookSettings, dispatcher: WebhookDispatcher | None = None
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.dispatcher = dispatcher

    def send(self, event_type: str, payload: Any, idempotency_key: str | None = None) -> int | None:
        if not self.settings.enabled or self.settings.url is None:
            return None
        delivery_id = enqueue(
            self.engine,
            url=self.settings.url,
            event_type=event_type,
            payload={"type": event_type, "data": payload},
            idempotency_key=idempotency_key,
            max_attempts=self.settings.max_attempts,
        )
        if self.dispatcher is not None:
            self.dispatcher.wake()
        return delivery_id
