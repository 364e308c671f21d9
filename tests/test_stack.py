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


async def test_msgpack_and_json_answers_read_the_same(
    influx: SyncInfluxClient, influx_db: InfluxSettings
) -> None:
    """Queries ask for MessagePack (cheaper to write and read); JSON, what a server without
    it answers, reads the same, and an answer without an epoch stays JSON (RFC 3339 times)."""
    import httpx

    from orchard.influx import InfluxClient

    influx.write(
        [
            "telemetry,farm=f,block=b,node=n1 temperature=20.5,seq=1i 1780288200000000000",
            "telemetry,farm=f,block=b,node=n2 soil_moisture=0.25,battery=3.9 1780288260000000000",
            "telemetry,farm=f,block=b,node=n2 soil_moisture=0.26,battery=3.9 1780288320000000000",
        ]
    )
    q = 'SELECT "node", "temperature", "soil_moisture", "seq" FROM telemetry WHERE farm = \'f\''
    answers = {}
    for fmt in ("msgpack", "json"):
        settings = influx_db.model_copy(update={"query_format": fmt})
        with SyncInfluxClient(settings) as sync:
            answers[fmt, "sync"] = sync.query(q + "; SHOW TAG VALUES WITH KEY = node", epoch="ms")
            answers[fmt, "rfc3339"] = sync.query_one(q, epoch=None)
        client = InfluxClient(settings)
        try:
            answers[fmt, "async"] = await client.query(q, epoch="ms")
        finally:
            await client.aclose()
    reference = answers["json", "sync"]
    assert reference[0][0].values == [
        [1780288200000, "n1", 20.5, None, 1],
        [1780288260000, "n2", None, 0.25, None],
        [1780288320000, "n2", None, 0.26, None],
    ]
    assert answers["msgpack", "sync"] == reference
    assert answers["msgpack", "async"] == answers["json", "async"] == reference[:1]
    assert answers["msgpack", "rfc3339"] == answers["json", "rfc3339"]
    assert answers["json", "rfc3339"][0].values[0][0] == "2026-06-01T04:30:00Z"
    # The server really answered MessagePack when asked.
    response = httpx.post(
        f"{influx_db.url}/query",
        data={"q": q, "db": influx_db.database, "epoch": "ms"},
        headers={"Accept": "application/x-msgpack"},
    )
    assert response.headers["content-type"].startswith("application/x-msgpack")


def test_influx_errors_are_classified(influx: SyncInfluxClient, influx_db: InfluxSettings) -> None:
    with pytest.raises(InfluxRejected):
        influx.write("this is not line protocol")
    # A refused query reads as words, whatever format the server answered in.
    with pytest.raises(InfluxRejected, match="error parsing query"):
        influx.query("SELEC nonsense")
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
