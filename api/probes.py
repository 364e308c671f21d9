"""Readiness probes of the backing services."""

from __future__ import annotations

import asyncio
import secrets
import struct

from orchard.settings import MqttSettings

_CONNACK_REASONS = {
    1: "unacceptable protocol version",
    2: "client id rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorised",
}


def _mqtt_string(value: str) -> bytes:
    raw = value.encode()
    return struct.pack("!H", len(raw)) + raw


def _remaining_length(length: int) -> bytes:
    out = bytearray()
    while True:
        byte, length = length % 128, length // 128
        out.append(byte | (0x80 if length else 0))
        if not length:
            return bytes(out)


def connect_packet(settings: MqttSettings, client_id: str) -> bytes:
    flags = 0x02  # clean session: the probe leaves nothing behind on the broker
    payload = _mqtt_string(client_id)
    if settings.username:
        flags |= 0x80
        payload += _mqtt_string(settings.username)
        if settings.password is not None:
            flags |= 0x40
            payload += _mqtt_string(settings.password.get_secret_value())
    variable = _mqtt_string("MQTT") + bytes([4, flags]) + struct.pack("!H", 10)
    body = variable + payload
    return bytes([0x10]) + _remaining_length(len(body)) + body


async def check_broker(settings: MqttSettings, timeout: float) -> str | None:
    """None if the broker accepts the API's credentials, else what went wrong.

    A real MQTT CONNECT (3.1.1) rather than a TCP probe: a broker that is up but
    refuses our account is not ready for us either.
    """
    client_id = f"orchard-api-probe-{secrets.token_hex(4)}"
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(settings.host, settings.port), timeout
        )
    except (OSError, TimeoutError) as exc:
        return f"cannot connect to {settings.host}:{settings.port}: {exc!r}"
    try:
        writer.write(connect_packet(settings, client_id))
        await writer.drain()
        connack = await asyncio.wait_for(reader.readexactly(4), timeout)
        if connack[0] != 0x20:
            return f"unexpected reply to CONNECT: {connack.hex()}"
        if connack[3] != 0:
            return "broker refused the API's account: " + _CONNACK_REASONS.get(
                connack[3], f"code {connack[3]}"
            )
        writer.write(b"\xe0\x00")  # DISCONNECT
        await writer.drain()
        return None
    except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
        return f"broker did not answer CONNECT: {exc!r}"
    finally:
        writer.close()
