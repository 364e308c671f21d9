"""Simulated devices on MQTT: sensor nodes with store-and-forward, valve controllers.

Every device has its own connection (username = node id), a retained ``online`` status on
connect, a retained ``offline`` Last Will, and reconnects with backoff and jitter
(:func:`orchard.mqtt.make_client`).

Store-and-forward: a sensor node queues every reading it takes; readings leave in order,
one message each while the link keeps up, as :class:`~orchard.models.TelemetryBatch` of up
to 100 readings when a backlog built up. A reading leaves the node only when the broker
acknowledged it (PUBACK); messages in flight when a connection drops are put back at the
head of the queue and sent again after the reconnect, so nothing is lost and order holds
(a message whose PUBACK was lost may arrive twice: QoS 1 is at-least-once, and ingest is
idempotent on the device timestamp). The queue is bounded; when full, the oldest reading
is dropped, counted and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import gmqtt
from gmqtt.storage import PersistentStorage

from firmware_sim.faults import corrupt
from firmware_sim.valves import ValveLogic
from orchard.models import Reading, Status
from orchard.mqtt import connect, make_client
from orchard.settings import MqttSettings
from orchard.topics import Kind, NodeAddress

log = logging.getLogger(__name__)

FIRMWARE = "orchard-sim 0.1.0"
BATCH_SIZE = 100
MAX_INFLIGHT_MESSAGES = 10
DROP_LOG_INTERVAL_S = 10.0
READING_FIELDS = ("temperature", "humidity", "soil_moisture", "maturity", "battery", "rssi")


class _Outbox(PersistentStorage):  # type: ignore[misc]
    """gmqtt's store of unacknowledged QoS 1 messages, reporting PUBACKs and discards."""

    def __init__(self, on_acked: Callable[[int], None], on_discarded: Callable[[], None]) -> None:
        super().__init__()
        self.last_mid: int | None = None
        self._on_acked = on_acked
        self._on_discarded = on_discarded

    def push_message(self, mid: int, raw_package: bytes) -> None:
        super().push_message(mid, raw_package)
        self.last_mid = mid

    def remove_message_by_mid(self, mid: int) -> None:
        super().remove_message_by_mid(mid)
        self._on_acked(mid)

    def clear(self) -> None:
        # Called by gmqtt on a CONNACK without a session: it will not resend these.
        super().clear()
        self._on_discarded()


WireReading = dict[str, Any]
"""A reading as it goes on the wire: ``ts`` (ISO 8601), ``seq`` and the measured fields."""


def wire_reading(reading: Reading) -> WireReading:
    out: WireReading = {"ts": reading.ts.isoformat(), "seq": reading.seq}
    for name in READING_FIELDS:
        value = getattr(reading, name)
        if value is not None:
            out[name] = value
    return out


def telemetry_bytes(node: str, readings: list[WireReading]) -> bytes:
    """A Telemetry message for one reading, a TelemetryBatch for several."""
    if len(readings) == 1:
        body = {"v": 1, "node": node, **readings[0]}
    else:
        body = {"v": 1, "node": node, "readings": readings}
    return json.dumps(body, separators=(",", ":")).encode()


class DeviceLink:
    """One device's MQTT connection: status, Last Will, reconnects."""

    kind: str = "sensor"

    def __init__(
        self,
        address: NodeAddress,
        settings: MqttSettings,
        clock: Callable[[], float],
        *,
        persistent_session: bool = False,
    ) -> None:
        self.address = address
        self.node_id = address.node
        self.settings = settings
        self.clock = clock
        self.connected = False
        self.closing = False
        self.connects = 0
        self.outbox = _Outbox(self._acked, self._discarded)
        will = gmqtt.Message(
            address.topic(Kind.STATUS),
            Status(node=self.node_id, state="offline", kind=self.kind, firmware=FIRMWARE)
            .model_dump_json(exclude_none=True)
            .encode(),
            qos=1,
            retain=True,
        )
        self.client = make_client(
            self.node_id,
            settings,
            persistent_session=persistent_session,
            will=will,
            on_connect=self._on_connect,
            on_disconnect=self._on_disconnect,
            persistent_storage=self.outbox,
        )

    def _status(self, state: str) -> bytes:
        return (
            Status(
                node=self.node_id,
                state=state,
                kind=self.kind,
                firmware=FIRMWARE,
                ts=datetime.fromtimestamp(self.clock(), UTC),
            )
            .model_dump_json(exclude_none=True)
            .encode()
        )

    def _on_connect(self, client: gmqtt.Client, flags: int, rc: int, properties: Any) -> None:
        self.connected = True
        self.connects += 1
        if self.connects > 1:
            log.debug("%s reconnected", self.node_id)
        client.publish(self.address.topic(Kind.STATUS), self._status("online"), qos=1, retain=True)
        self.on_connected(client)
        # After gmqtt's own replay of a resumed session (scheduled before us), keep order.
        asyncio.get_running_loop().call_soon(self.flush)

    def _on_disconnect(self, client: gmqtt.Client, packet: Any, exc: Exception | None) -> None:
        if self.connected and not self.closing:
            log.debug("%s disconnected (%s)", self.node_id, exc or "broker closed the connection")
        self.connected = False

    def on_connected(self, client: gmqtt.Client) -> None:
        """Hook: subscribe after a (re)connect."""

    def _acked(self, mid: int) -> None:
        """Hook: the broker acknowledged message ``mid``."""

    def _discarded(self) -> None:
        """Hook: gmqtt dropped its in-flight messages (reconnect without a session)."""

    def flush(self) -> None:
        """Hook: send what is waiting."""

    @property
    def idle(self) -> bool:
        return True

    async def run_connection(self, stop: asyncio.Event, gate: asyncio.Semaphore) -> None:
        """Connect (retrying with backoff) and leave reconnects to gmqtt."""
        async with gate:
            with contextlib.suppress(asyncio.CancelledError):
                await connect(self.client, self.settings, stop=stop)

    async def close(self, drain_s: float) -> None:
        """Send what is left (up to ``drain_s``), publish ``offline``, disconnect."""
        deadline = time.monotonic() + drain_s
        self.closing = True
        while self.connected and not self.idle and time.monotonic() < deadline:
            self.flush()
            await asyncio.sleep(0.05)
        if self.connected:
            self.client.publish(
                self.address.topic(Kind.STATUS), self._status("offline"), qos=1, retain=True
            )
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    self.outbox.wait_empty(), timeout=max(0.2, deadline - time.monotonic())
                )
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.client.disconnect(), timeout=2.0)


class SensorNode(DeviceLink):
    """A field node: takes readings and forwards them with a bounded store-and-forward queue."""

    def __init__(
        self,
        address: NodeAddress,
        settings: MqttSettings,
        clock: Callable[[], float],
        *,
        buffer_size: int = 10_000,
    ) -> None:
        super().__init__(address, settings, clock)
        self.topic = address.topic(Kind.TELEMETRY)
        self.buffer_size = buffer_size
        # (reading, malformed): a malformed one goes out alone as a corrupted payload.
        self.pending: deque[tuple[WireReading, bool]] = deque()
        self.inflight: OrderedDict[int, list[tuple[WireReading, bool]]] = OrderedDict()
        self.hold = False
        """Catching up at high speed: send full batches only, the scheduler flushes the rest."""
        self.seq = 0
        self.taken = 0
        self.sent = 0
        self.dropped = 0
        self.resent = 0
        self._last_drop_log = 0.0

    @property
    def idle(self) -> bool:
        return not self.pending and not self.inflight

    @property
    def backlog(self) -> int:
        return len(self.pending) + sum(len(v) for v in self.inflight.values())

    def next_seq(self) -> int:
        seq = self.seq
        self.seq = (self.seq + 1) % 2**32
        return seq

    def take(self, reading: WireReading, malformed: bool = False, send: bool = True) -> None:
        """Queue a reading; ``send=False`` leaves it for the next flush (batched catch-up)."""
        self.taken += 1
        self.pending.append((reading, malformed))
        self._enforce_bound()
        if send and self.connected and len(self.inflight) < MAX_INFLIGHT_MESSAGES:
            self.flush()

    def _enforce_bound(self) -> None:
        over = len(self.pending) - self.buffer_size
        if over <= 0:
            return
        for _ in range(over):
            self.pending.popleft()
        self.dropped += over
        now = time.monotonic()
        if now - self._last_drop_log > DROP_LOG_INTERVAL_S:
            self._last_drop_log = now
            log.warning(
                "%s: store-and-forward buffer full (%d readings), dropped the oldest; %d dropped so far",
                self.node_id,
                self.buffer_size,
                self.dropped,
            )

    def flush(self) -> None:
        while self.connected and self.pending and len(self.inflight) < MAX_INFLIGHT_MESSAGES:
            if not self.client.is_connected:
                return
            if self.pending[0][1]:
                batch = [self.pending.popleft()]
                payload = corrupt(telemetry_bytes(self.node_id, [batch[0][0]]))
            else:
                batch = []
                while self.pending and not self.pending[0][1] and len(batch) < BATCH_SIZE:
                    batch.append(self.pending.popleft())
                payload = telemetry_bytes(self.node_id, [r for r, _ in batch])
            self.outbox.last_mid = None
            self.client.publish(self.topic, payload, qos=1)
            mid = self.outbox.last_mid
            if mid is None:  # not stored by gmqtt: cannot track it, keep it queued
                self.pending.extendleft(reversed(batch))
                return
            self.inflight[mid] = batch

    def _acked(self, mid: int) -> None:
        batch = self.inflight.pop(mid, None)
        if batch is not None:
            self.sent += len(batch)
            if self.pending and (not self.hold or len(self.pending) >= BATCH_SIZE):
                self.flush()

    def _discarded(self) -> None:
        if not self.inflight:
            return
        again = [item for batch in self.inflight.values() for item in batch]
        self.inflight.clear()
        self.resent += len(again)
        self.pending.extendleft(reversed(again))
        self._enforce_bound()


class ValveControllerNode(DeviceLink):
    """A block's valve controller: commands in, acknowledgements out (QoS 1)."""

    kind = "valve_controller"

    def __init__(
        self,
        address: NodeAddress,
        settings: MqttSettings,
        clock: Callable[[], float],
        logic: ValveLogic,
    ) -> None:
        # A persistent session: commands sent while the controller is offline wait for it
        # (and expired ones are refused on arrival).
        super().__init__(address, settings, clock, persistent_session=True)
        self.logic = logic
        self.command_topic = address.topic(Kind.COMMAND)
        self.ack_topic = address.topic(Kind.ACK)
        self.pending_acks: deque[bytes] = deque(maxlen=1000)
        self.client.on_message = self._on_message

    def on_connected(self, client: gmqtt.Client) -> None:
        client.subscribe(self.command_topic, qos=1)

    def _on_message(
        self, client: gmqtt.Client, topic: str, payload: bytes, qos: int, properties: Any
    ) -> int:
        try:
            acks = self.logic.handle(payload, self.clock())
        except Exception:  # one bad command never kills the controller
            log.exception("%s: failed to handle a command", self.node_id)
            return 0
        for ack in acks:
            self.send_ack(ack.model_dump_json(exclude_none=True).encode())
        return 0

    def send_ack(self, payload: bytes) -> None:
        self.pending_acks.append(payload)
        self.flush()

    def tick(self, now: float) -> None:
        for ack in self.logic.tick(now):
            self.send_ack(ack.model_dump_json(exclude_none=True).encode())

    def flush(self) -> None:
        while self.connected and self.client.is_connected and self.pending_acks:
            self.client.publish(self.ack_topic, self.pending_acks.popleft(), qos=1)

    @property
    def idle(self) -> bool:
        return not self.pending_acks and self.outbox.is_empty
