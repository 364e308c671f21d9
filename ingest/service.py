"""The ingest service: MQTT (persistent session, QoS 1) to InfluxDB batches.

At-least-once, end to end: a message is acknowledged (PUBACK) only after the batch
holding it is written, good points and dead letters alike. Until then it counts
against the broker's in-flight window (our Receive Maximum): when InfluxDB is down
the window fills and the broker stops sending, so the backlog waits in the broker's
persistent queue, not in our memory.

Two ways to withhold the PUBACK, same guarantees (``ack_mode``):

- ``batch`` (default): gmqtt's per-QoS-1-PUBLISH hook is replaced on the client
  instance by a plain method that adds the message to the open batch and remembers
  its packet id; once the batch is stored, every PUBACK goes out in one socket write.
  Measured: about half the CPU per message of ``handler`` (docs/ingest.md).
- ``handler``: gmqtt's public ack-after-handling (``make_client(ack_after_handling=
  True)``): an async ``on_message`` per message awaits its batch's future, and gmqtt
  sends the PUBACK when it returns. One asyncio task and one socket write per message.

Traps in gmqtt 0.8 (patched) that shape this module, read in ``gmqtt/mqtt/handler.py``:

- ``on_message`` must be a coroutine function: a plain function is called but its
  PUBACK is never sent, and the in-flight window silently fills up.
- Its return value is the PUBACK reason code: returning ``None`` raises inside gmqtt's
  done-callback and no PUBACK is sent. We return 0.
- Raising from the handler also sends no PUBACK; we use that on purpose
  (:class:`Unacknowledged`) and keep it out of the logs.
- The PUBACK goes out on whatever connection is current when it is sent. A message
  received before a reconnect has been redelivered on the new connection, so acking
  the stale copy is at best redundant and at worst acks a different message that
  reuses the packet id. Both modes remember the connection generation a message
  arrived on and withhold stale acks: the redelivered copy is acked after its own
  batch, and it overwrites the same point (same tags, same device time).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import gmqtt
from gmqtt import Subscription

from ingest.lines import DEAD_LETTER, TELEMETRY, dead_letter_line
from ingest.metrics import IngestMetrics
from ingest.settings import IngestSettings
from ingest.validate import Accepted, Rejection, Validator
from orchard.influx import InfluxClient, InfluxRejected, InfluxUnavailable
from orchard.mqtt import Backoff, connect, make_client
from orchard.topics import Kind, shared_subscription, subscription

log = logging.getLogger(__name__)

# PUBACK, MQTT 5 short form: remaining length 2 means reason code 0 (success).
_PUBACK = struct.Struct("!BBH")

# 4xx answers that say nothing about the points: retry (and shout) instead of bisecting
# a batch into dead letters. 404: database missing; 401/403: credentials.
_CONFIG_STATUSES = frozenset({401, 403, 404})


class Unacknowledged(Exception):
    """Raised by the message handler so that gmqtt sends no PUBACK (broker redelivers)."""


class _Abandoned(Exception):
    """Shutdown gave up waiting for InfluxDB."""


@dataclass(eq=False, slots=True)
class Batch:
    written: asyncio.Future[None]
    lines: list[str] = field(default_factory=list)
    messages: int = 0
    telemetry_messages: int = 0
    """Messages on telemetry topics, accepted or not (the rest came on status topics)."""
    readings: int = 0
    status_points: int = 0
    dead_letters: int = 0
    oldest_ns: int = 2**63
    sealed: bool = False
    mids: list[int] = field(default_factory=list)
    """Packet ids to acknowledge in ``batch`` ack mode, all from one connection..."""
    mids_generation: int = -1
    """...this one."""


class IngestService:
    """One ingest process. ``await run(stop)``; set ``stop`` for a graceful shutdown."""

    def __init__(self, settings: IngestSettings, metrics: IngestMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or IngestMetrics()
        self.validator = Validator(settings.max_future_s, settings.max_past_s)
        self.influx = InfluxClient(settings.influx)
        self._queue: asyncio.Queue[Batch] = asyncio.Queue()
        self._current: Batch | None = None
        self._generation = 0
        self._draining = False
        self._abandon = asyncio.Event()
        self._unacked = 0
        self._last_dead_letter_ns = 0
        self._writers: list[asyncio.Task[None]] = []
        self._batch_acks = False
        self.connected = asyncio.Event()
        self.subscribed = asyncio.Event()
        """Set once the broker granted the subscriptions (cleared on disconnect)."""
        self.client: gmqtt.Client | None = None

    # --- lifecycle --------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        # Keep start-up objects (modules, models, schemas) out of every collection.
        # Raising the thresholds too was tried: it kept the reference cycles of
        # finished HTTP writes, with their bodies, alive for longer (+20 MB RSS).
        gc.freeze()
        loop = asyncio.get_running_loop()
        previous_handler = loop.get_exception_handler()
        loop.set_exception_handler(_quiet_unacknowledged)
        try:
            await self._run(stop)
        finally:
            loop.set_exception_handler(previous_handler)
            await self.influx.aclose()

    async def _run(self, stop: asyncio.Event) -> None:
        s = self.settings
        if s.create_database:
            await self._create_database()
        self._writers = [
            asyncio.create_task(self._writer(), name=f"ingest-writer-{i}")
            for i in range(s.write_concurrency)
        ]
        client = make_client(
            s.ingest_client_id,
            s.mqtt,
            persistent_session=True,
            receive_maximum=s.receive_maximum,
            ack_after_handling=True,
            on_connect=self._on_connect,
            on_disconnect=self._on_disconnect,
        )
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        self._batch_acks = s.ack_mode == "batch" and _supports_batch_acks(client)
        if self._batch_acks:
            # gmqtt dispatches every QoS 1 PUBLISH to this method; replacing it on the
            # instance skips the coroutine, task and PUBACK write per message.
            client._package_handler._handle_qos_1_publish_packet = self._on_qos1_packet
        self.client = client
        try:
            await connect(client, s.mqtt, stop=stop)
        except asyncio.CancelledError:
            if not stop.is_set():
                raise
            log.info("stopped before the broker answered")
        else:
            await stop.wait()
        await self._shutdown(client)

    async def _create_database(self) -> None:
        try:
            await self.influx.create_database()
        except (InfluxUnavailable, InfluxRejected) as exc:
            # Not fatal: InfluxDB may come up later (writes retry and create it on a 404),
            # or be a 2.x/3.x server where databases are made by an administrator.
            log.warning("could not create database %r: %s", self.influx.database, exc)

    async def _shutdown(self, client: gmqtt.Client) -> None:
        """Stop taking messages, flush what we hold, acknowledge it, disconnect."""
        self._draining = True
        if self._current is not None:
            self._seal(self._current)
        try:
            await asyncio.wait_for(self._queue.join(), self.settings.shutdown_timeout_s)
            log.info("flushed; disconnecting")
        except TimeoutError:
            log.warning(
                "InfluxDB still unavailable after %.0fs: leaving %d unacknowledged messages "
                "to the broker for the next start",
                self.settings.shutdown_timeout_s,
                self._unacked,
            )
            self._abandon.set()
            await self._queue.join()
        # Let every handler return, so gmqtt writes the PUBACKs before DISCONNECT.
        for _ in range(100):
            if self._unacked == 0:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0)
        for task in self._writers:
            task.cancel()
        await asyncio.gather(*self._writers, return_exceptions=True)
        if client.is_connected:
            await client.disconnect()

    # --- MQTT callbacks -----------------------------------------------------------

    def _on_connect(self, client: gmqtt.Client, session_present: int, rc: int, props: Any) -> None:
        self._generation += 1
        log.info(
            "connected to the broker as %s (session %s)",
            self.settings.ingest_client_id,
            "resumed" if session_present else "new",
        )
        # A resumed session keeps plain subscriptions, but Mosquitto 2.0.11 does not
        # restore shared ones after a restart (measured): subscribe on every connect.
        if client.subscriptions:
            for sub in client.subscriptions:
                client.resubscribe(sub)
        else:
            client.subscribe([self._subscription(Kind.TELEMETRY), self._subscription(Kind.STATUS)])
        self.connected.set()

    def _subscription(self, kind: Kind) -> Subscription:
        s = self.settings
        if s.ingest_shared_subscription:
            # The broker sends no retained messages to shared subscriptions.
            return Subscription(shared_subscription(kind, s.ingest_share_group), qos=1)
        # Retained statuses only when the subscription is new, not on every reconnect.
        return Subscription(subscription(kind), qos=1, retain_handling_options=1)

    def _on_disconnect(self, client: gmqtt.Client, packet: Any, exc: Exception | None) -> None:
        self._generation += 1
        self.connected.clear()
        self.subscribed.clear()
        self.metrics.mqtt_connected.set(0)
        if not self._draining:
            log.warning("disconnected from the broker; reconnecting")

    def _on_subscribe(self, client: gmqtt.Client, mid: int, qos: Any, props: Any) -> None:
        if any(code >= 0x80 for code in qos):
            log.error("broker refused a subscription (codes %s): check the ACL", qos)
            return
        self.metrics.mqtt_connected.set(1)
        self.subscribed.set()

    async def _on_message(
        self, client: gmqtt.Client, topic: str, payload: bytes, qos: int, props: Any
    ) -> int:
        if self._draining:
            raise Unacknowledged  # the broker keeps it for our next session
        generation = self._generation
        batch = self._accept(topic, payload)
        self._unacked += 1
        try:
            await batch.written
        finally:
            self._unacked -= 1
        if generation != self._generation:
            raise Unacknowledged  # redelivered on the new connection; that copy gets the ack
        return 0  # PUBACK reason code: success

    def _on_qos1_packet(self, mid: int, payload: bytes, topic: str, props: Any) -> None:
        """``batch`` ack mode: take the message; its PUBACK goes out with its batch's."""
        if self._draining:
            return  # no ack: the broker keeps it for our next session
        batch = self._accept(topic, payload)
        if batch.mids_generation != self._generation:
            # Ids from an earlier connection: redelivered on this one, acked from there.
            self._unacked -= len(batch.mids)
            batch.mids.clear()
            batch.mids_generation = self._generation
        batch.mids.append(mid)
        self._unacked += 1

    def _ack_batch(self, batch: Batch) -> None:
        mids = batch.mids
        if not mids:
            return
        self._unacked -= len(mids)
        client = self.client
        if batch.mids_generation != self._generation or client is None:
            return
        connection = client._connection
        if connection is None or connection.is_closing():
            return
        connection.send_package(b"".join([_PUBACK.pack(0x40, 2, mid) for mid in mids]))

    # --- batching -------------------------------------------------------------------

    def _accept(self, topic: str, payload: bytes) -> Batch:
        now_ns = time.time_ns()
        batch = self._current if self._current is not None else self._new_batch()
        result = self.validator.check(topic, payload, now_ns)
        if type(result) is Accepted:
            batch.lines.extend(result.lines)
            if result.readings:
                batch.readings += result.readings
            else:
                batch.status_points += 1
            if result.oldest_ns < batch.oldest_ns:
                batch.oldest_ns = result.oldest_ns
        else:
            assert isinstance(result, Rejection)
            self._add_dead_letter(batch, result, topic, payload, now_ns)
        batch.messages += 1
        if topic[-7:] != "/status":
            batch.telemetry_messages += 1
        s = self.settings
        if len(batch.lines) >= s.batch_max_lines or batch.messages >= s.batch_max_messages:
            self._seal(batch)
        return batch

    def _add_dead_letter(
        self, batch: Batch, rejection: Rejection, topic: str | bytes, payload: bytes, now_ns: int
    ) -> None:
        topic_text = topic if isinstance(topic, str) else topic.decode("utf-8", "backslashreplace")
        batch.lines.append(
            dead_letter_line(
                rejection.reason,
                topic_text,
                payload,
                rejection.detail,
                self._dead_letter_ns(now_ns),
                self.settings.dead_letter_payload_bytes,
            )
        )
        batch.dead_letters += 1
        self.metrics.rejected.labels(rejection.reason).inc()
        log.info("rejected message on %s: %s: %s", topic_text, rejection.reason, rejection.detail)

    def _dead_letter_ns(self, now_ns: int) -> int:
        # Dead letters of one reason share a series; distinct times keep them distinct.
        ts = max(now_ns, self._last_dead_letter_ns + 1)
        self._last_dead_letter_ns = ts
        return ts

    def _new_batch(self) -> Batch:
        loop = asyncio.get_running_loop()
        batch = Batch(written=loop.create_future())
        self._current = batch
        loop.call_later(self.settings.flush_interval_s, self._seal, batch)
        return batch

    def _seal(self, batch: Batch) -> None:
        if batch.sealed:
            return
        batch.sealed = True
        if self._current is batch:
            self._current = None
        self._queue.put_nowait(batch)
        self.metrics.unacked.set(self._unacked)

    # --- writing --------------------------------------------------------------------

    async def _writer(self) -> None:
        while True:
            batch = await self._queue.get()
            try:
                await self._store(batch)
            except _Abandoned:
                self._unacked -= len(batch.mids)
                batch.written.set_exception(Unacknowledged())
                batch.written.exception()  # retrieved: no "never retrieved" warning
            except Exception as exc:  # one bad batch must not kill the writer
                log.exception("unexpected failure storing a batch; left to the broker")
                self._unacked -= len(batch.mids)
                batch.written.set_exception(Unacknowledged(str(exc)))
                batch.written.exception()
            finally:
                self._queue.task_done()

    async def _store(self, batch: Batch) -> None:
        m = self.metrics
        kind = Kind.TELEMETRY.value
        m.received.labels(kind).inc(batch.telemetry_messages)
        m.received.labels(Kind.STATUS.value).inc(batch.messages - batch.telemetry_messages)
        refused = await self._write_bisecting(batch.lines)
        if refused:
            await self._dead_letter_refused(refused)
        now_ns = time.time_ns()
        m.written.labels(TELEMETRY).inc(batch.readings)
        m.written.labels("node_status").inc(batch.status_points)
        m.written.labels(DEAD_LETTER).inc(batch.dead_letters + len(refused))
        if batch.readings:
            m.lag_seconds.observe(max(0.0, (now_ns - batch.oldest_ns) / 1e9))
        batch.written.set_result(None)
        self._ack_batch(batch)

    async def _write_bisecting(self, lines: list[str]) -> list[tuple[str, str]]:
        """Write ``lines``; return the ones InfluxDB refuses, with its reason.

        A refused batch is split in halves until the refused lines stand alone, so
        one conflicting point costs a few extra writes, never the good points.
        """
        if not lines:
            return []
        try:
            await self._write_retrying(lines)
            return []
        except InfluxRejected as exc:
            if len(lines) == 1:
                return [(lines[0], str(exc))]
            half = len(lines) // 2
            return await self._write_bisecting(lines[:half]) + await self._write_bisecting(
                lines[half:]
            )

    async def _write_retrying(self, lines: list[str]) -> None:
        """Write until it works; raise :class:`InfluxRejected` only for bad points."""
        body = "\n".join(lines).encode()
        backoff = Backoff(self.settings.retry_min_s, self.settings.retry_max_s)
        m = self.metrics
        while True:
            if self._abandon.is_set():
                raise _Abandoned
            started = time.perf_counter()
            try:
                await self.influx.write(body)
            except InfluxRejected as exc:
                if exc.status not in _CONFIG_STATUSES:
                    raise
                problem: Exception = exc
                if exc.status == 404 and self.settings.create_database:
                    await self._create_database()
            except InfluxUnavailable as exc:
                problem = exc
            else:
                m.write_seconds.observe(time.perf_counter() - started)
                m.batch_lines.observe(len(lines))
                m.influx_up.set(1)
                if backoff.attempt:
                    log.info("InfluxDB write succeeded after %d retries", backoff.attempt)
                return
            m.influx_up.set(0)
            m.retries.inc()
            delay = backoff.next_delay()
            log_level = (
                logging.WARNING
                if backoff.attempt in (1, 10) or backoff.attempt % 100 == 0
                else logging.DEBUG
            )
            log.log(
                log_level,
                "InfluxDB write of %d lines failed (%s); retry %d in %.1fs; %d messages wait",
                len(lines),
                problem,
                backoff.attempt,
                delay,
                self._unacked,
            )
            try:
                await asyncio.wait_for(self._abandon.wait(), delay)
            except TimeoutError:
                continue

    async def _dead_letter_refused(self, refused: list[tuple[str, str]]) -> None:
        now_ns = time.time_ns()
        letters = []
        for line, error in refused:
            topic = _topic_of_line(line)
            letters.append(
                dead_letter_line(
                    "write_rejected",
                    topic,
                    line.encode(),
                    error,
                    self._dead_letter_ns(now_ns),
                    self.settings.dead_letter_payload_bytes,
                )
            )
            self.metrics.rejected.labels("write_rejected").inc()
            log.warning("InfluxDB refused a point from %s: %s", topic, error)
        still_refused = await self._write_bisecting(letters)
        for line, error in still_refused:
            # Nothing further can hold it: say so loudly, with the data, in the log.
            log.error("InfluxDB refused a dead letter too (%s); its content: %s", error, line)


def _topic_of_line(line: str) -> str:
    """The MQTT topic a telemetry or status line came from, for its dead letter."""
    head = line.split(" ", 1)[0]
    measurement, _, tag_text = head.partition(",")
    tags = dict(pair.split("=", 1) for pair in tag_text.split(",") if "=" in pair)
    kind = "status" if measurement == "node_status" else "telemetry"
    try:
        return f"orchard/{tags['farm']}/{tags['block']}/{tags['node']}/{kind}"
    except KeyError:
        return ""


def _supports_batch_acks(client: gmqtt.Client) -> bool:
    """Whether this gmqtt has the internals ``batch`` ack mode relies on (0.8.x does)."""
    handler = getattr(client, "_package_handler", None)
    if callable(getattr(handler, "_handle_qos_1_publish_packet", None)) and hasattr(
        client, "_connection"
    ):
        return True
    log.warning("this gmqtt lacks the internals of ack_mode=batch; using ack_mode=handler")
    return False


def _quiet_unacknowledged(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Withheld acks surface as exceptions in gmqtt's done-callback; they are intended."""
    if isinstance(context.get("exception"), Unacknowledged):
        return
    loop.default_exception_handler(context)
