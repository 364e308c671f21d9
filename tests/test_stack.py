"""The real services the project starts: InfluxDB over its v1 API, Mosquitto with our policy."""

from __future__ import annotations

import asyncio

import gmqtt
import pytest
from gmqtt.mqtt.handler import MQTTConnectError

from orchard.influx import InfluxRejected, InfluxUnavailable, SyncInfluxClient, quote_literal
from orchard.mqtt import connect, make_client
from orchard.settings import InfluxSettings
from tests.conftest import LiveStack


def test_influx_write_and_query_round_trip(influx: SyncInfluxClient) -> None:
    influx.write(
        [
            "telemetry,farm=f,block=b,node=n1 temperature=20.5 1780288200000000000",
            "telemetry,farm=f,block=b,node=n1 temperature=21.5 1780288260000000000",
            # the same identity again: overwrites, never doubles
            "telemetry,farm=f,block=b,node=n1 temperature=21.5 1780288260000000000",
        ]
    )
    (series,) = influx.query_one(
        f"SELECT count(temperature), mean(temperature) FROM telemetry WHERE node = {quote_literal('n1')}"
    )
    row = series.rows()[0]
    assert row["count"] == 2 and row["mean"] == pytest.approx(21.0)


def test_influx_errors_are_classified(influx: SyncInfluxClient, influx_db: InfluxSettings) -> None:
    with pytest.raises(InfluxRejected):
        influx.write("this is not line protocol")
    dead = SyncInfluxClient(InfluxSettings(url="http://127.0.0.1:9", database="x", timeout_s=1))
    with pytest.raises(InfluxUnavailable):
        dead.write("m f=1")
    assert not dead.ping()


def test_hostile_literal_cannot_change_a_query(influx: SyncInfluxClient) -> None:
    influx.write("telemetry,node=n1 temperature=1 1780288200000000000")
    hostile = "n1' OR node =~ /.*/ OR node = '"
    assert influx.query_one(f"SELECT * FROM telemetry WHERE node = {quote_literal(hostile)}") == []


async def _collect(stack: LiveStack, topic: str, seconds: float) -> list[tuple[str, bytes]]:
    received: list[tuple[str, bytes]] = []

    def on_message(client: gmqtt.Client, t: str, payload: bytes, qos: int, props: object) -> int:
        received.append((t, payload))
        return 0

    sub = make_client("test-watcher", stack.mqtt("orchard-control"))
    sub.on_message = on_message
    await connect(sub, stack.mqtt("orchard-control"))
    sub.subscribe(topic, qos=1)
    await asyncio.sleep(seconds)
    await sub.disconnect()
    return received


async def test_acl_refuses_an_impersonating_device(stack: LiveStack) -> None:
    stack.add_devices(["acl-n1", "acl-n2"])
    watcher = asyncio.create_task(_collect(stack, "orchard/acl-farm/#", 1.5))
    await asyncio.sleep(0.3)
    device = make_client("acl-n1", stack.mqtt("acl-n1"))
    await connect(device, stack.mqtt("acl-n1"))
    device.publish("orchard/acl-farm/b/acl-n1/telemetry", b"own", qos=1)
    device.publish("orchard/acl-farm/b/acl-n2/telemetry", b"impersonated", qos=1)
    await asyncio.sleep(0.3)
    await device.disconnect()
    received = await watcher
    assert ("orchard/acl-farm/b/acl-n1/telemetry", b"own") in received
    assert all(payload != b"impersonated" for _, payload in received)


async def test_broker_refuses_wrong_password(stack: LiveStack) -> None:
    settings = stack.mqtt("orchard-ingest").model_copy(update={"password": "wrong"})
    client = gmqtt.Client("intruder")
    client.set_auth_credentials(settings.username, "wrong")
    with pytest.raises(MQTTConnectError):
        await client.connect(settings.host, settings.port)
