"""MQTT client construction shared by every service and the simulator (gmqtt, MQTT 5).

gmqtt is asyncio-native, so one process can hold a thousand device connections
(the simulator) or sustain a QoS 1 flood with acknowledgements held back until the
data is stored (ingest). Reconnects use exponential backoff with full jitter, so a
broker restart is not met by a thousand clients reconnecting in the same instant.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Any

import gmqtt
from gmqtt.mqtt.constants import MQTTv50

from orchard.settings import MqttSettings

log = logging.getLogger(__name__)

SESSION_EXPIRY_S = 7 * 24 * 3600
"""Persistent sessions (ingest, control) survive a week of absence."""


class Backoff:
    """Exponential backoff with full jitter (AWS architecture blog, 'Exponential Backoff And Jitter')."""

    def __init__(self, minimum: float, maximum: float, rng: random.Random | None = None) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        ceiling = min(self.maximum, self.minimum * (2**self.attempt))
        self.attempt += 1
        return self._rng.uniform(self.minimum, max(self.minimum, ceiling))

    def reset(self) -> None:
        self.attempt = 0


def make_client(
    client_id: str,
    settings: MqttSettings,
    *,
    persistent_session: bool = False,
    will: gmqtt.Message | None = None,
    receive_maximum: int | None = None,
    ack_after_handling: bool = False,
    on_connect: Callable[[gmqtt.Client, int, int, Any], None] | None = None,
    on_disconnect: Callable[[gmqtt.Client, Any, Exception | None], None] | None = None,
    persistent_storage: Any | None = None,
) -> gmqtt.Client:
    """A gmqtt client with credentials, optional persistent session and jittered reconnects.

    ``persistent_session``: fixed client id, clean start off and a session expiry, so the
    broker keeps QoS 1 messages for us while we are away (a default client wipes them).
    ``ack_after_handling``: PUBACK is sent when the (async) on_message handler returns,
    not on arrival, so a message is acknowledged only once it is safely handled.
    Pass connection callbacks here rather than assigning ``client.on_connect``, which
    would replace the reconnect backoff installed below.
    ``persistent_storage``: gmqtt's store of unacknowledged outgoing QoS 1 messages; a
    custom one sees every PUBACK (``remove_message_by_mid``) and every in-flight message
    gmqtt discards on a reconnect without a session (``clear``), e.g. to resend it.
    """
    properties: dict[str, Any] = {}
    if persistent_session:
        properties["session_expiry_interval"] = SESSION_EXPIRY_S
    if receive_maximum is not None:
        properties["receive_maximum"] = receive_maximum
    client = gmqtt.Client(
        client_id,
        clean_session=not persistent_session,
        optimistic_acknowledgement=not ack_after_handling,
        will_message=will,
        persistent_storage=persistent_storage,
        logger=logging.getLogger(f"gmqtt.{client_id}"),
        **properties,
    )
    if settings.username:
        password = settings.password.get_secret_value() if settings.password else None
        client.set_auth_credentials(settings.username, password)
    backoff = Backoff(settings.reconnect_min_s, settings.reconnect_max_s)
    client.set_config({"reconnect_retries": -1, "reconnect_delay": backoff.next_delay()})

    def connected(c: gmqtt.Client, flags: int, rc: int, properties: Any) -> None:
        backoff.reset()
        c.set_config({"reconnect_retries": -1, "reconnect_delay": backoff.next_delay()})
        if on_connect is not None:
            on_connect(c, flags, rc, properties)

    def disconnected(c: gmqtt.Client, packet: Any, exc: Exception | None = None) -> None:
        # gmqtt waits reconnect_delay before its next attempt: set a fresh jittered one.
        c.set_config({"reconnect_retries": -1, "reconnect_delay": backoff.next_delay()})
        if on_disconnect is not None:
            on_disconnect(c, packet, exc)

    client.on_connect = connected
    client.on_disconnect = disconnected
    return client


async def connect(
    client: gmqtt.Client, settings: MqttSettings, *, stop: asyncio.Event | None = None
) -> None:
    """Connect, retrying with backoff and jitter until it works or ``stop`` is set."""
    backoff = Backoff(settings.reconnect_min_s, settings.reconnect_max_s)
    while True:
        try:
            await client.connect(
                settings.host, settings.port, keepalive=settings.keepalive, version=MQTTv50
            )
            return
        except (TimeoutError, OSError, gmqtt.mqtt.handler.MQTTConnectError) as exc:
            delay = backoff.next_delay()
            log.warning(
                "MQTT connect to %s:%d failed (%s); retrying in %.1fs",
                settings.host,
                settings.port,
                exc,
                delay,
            )
        if stop is not None:
            try:
                await asyncio.wait_for(stop.wait(), delay)
                raise asyncio.CancelledError("stopped while connecting")
            except TimeoutError:
                continue
        else:
            await asyncio.sleep(delay)
