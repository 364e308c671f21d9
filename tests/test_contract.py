"""The device contract: topics, identifiers, message models and their committed schemas."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import jsonschema
import pytest
from pydantic import ValidationError

from orchard.contract_docs import SCHEMA_DIR, rendered_schemas
from orchard.ids import InvalidIdentifierError, check_id
from orchard.lineprotocol import encode_point, to_ns
from orchard.models import (
    MAX_BATCH,
    Status,
    Telemetry,
    TelemetryBatch,
    ValveAck,
    ValveCommand,
    describe_error,
    parse_telemetry,
    telemetry_readings,
)
from orchard.topics import Kind, TopicError, parse_topic, shared_subscription, telemetry_topic

SINGLE = {
    "v": 1,
    "node": "apple-east-n01",
    "ts": "2026-06-01T04:30:00Z",
    "seq": 42,
    "temperature": 18.25,
    "humidity": 71.5,
    "soil_moisture": 0.243,
    "maturity": 2.1,
    "battery": 3.71,
    "rssi": -78,
}


def test_single_reading_round_trip() -> None:
    message = parse_telemetry(json.dumps(SINGLE))
    assert isinstance(message, Telemetry)
    again = parse_telemetry(message.model_dump_json())
    assert again == message
    (reading,) = telemetry_readings(message)
    assert reading.ts == datetime(2026, 6, 1, 4, 30, tzinfo=UTC)
    assert reading.seq == 42 and reading.soil_moisture == 0.243


def test_batch_round_trip_keeps_order_and_timestamps() -> None:
    base = datetime(2026, 6, 1, tzinfo=UTC)
    readings = [
        {"ts": (base + timedelta(minutes=i)).isoformat(), "seq": i, "temperature": 10.0 + i}
        for i in range(20)
    ]
    message = parse_telemetry(json.dumps({"node": "gw-1", "readings": readings}))
    assert isinstance(message, TelemetryBatch)
    assert [r.seq for r in telemetry_readings(message)] == list(range(20))
    assert parse_telemetry(message.model_dump_json()) == message


def test_offsets_are_normalised_to_utc() -> None:
    message = parse_telemetry(json.dumps({**SINGLE, "ts": "2026-06-01T12:30:00+08:00"}))
    assert message.ts == datetime(2026, 6, 1, 4, 30, tzinfo=UTC)
    assert message.ts.tzinfo == UTC


@pytest.mark.parametrize(
    ("payload", "where"),
    [
        (b"{not json", "json_invalid"),
        (json.dumps({**SINGLE, "temperature": "warm"}).encode(), "temperature"),
        (json.dumps(SINGLE).replace("18.25", "NaN").encode(), "temperature"),
        (json.dumps(SINGLE).replace("18.25", "Infinity").encode(), "temperature"),
        (json.dumps({**SINGLE, "humidity": 140}).encode(), "humidity"),
        (json.dumps({**SINGLE, "soil_moisture": 1.5}).encode(), "soil_moisture"),
        (json.dumps({**SINGLE, "colour": "red"}).encode(), "colour"),
        (json.dumps({**SINGLE, "ts": "2026-06-01T04:30:00"}).encode(), "ts"),
        (json.dumps({**SINGLE, "node": "Apple East"}).encode(), "node"),
        (json.dumps({**SINGLE, "seq": -1}).encode(), "seq"),
        (json.dumps({"node": "gw-1", "readings": []}).encode(), "readings"),
    ],
)
def test_rejections_say_where(payload: bytes, where: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_telemetry(payload)
    assert where in describe_error(info.value) or where in str(info.value.errors()[0]["type"])


def test_batch_size_is_bounded() -> None:
    base = datetime(2026, 6, 1, tzinfo=UTC).isoformat()
    readings = [{"ts": base, "seq": i} for i in range(MAX_BATCH + 1)]
    with pytest.raises(ValidationError):
        parse_telemetry(json.dumps({"node": "gw-1", "readings": readings}))


@pytest.mark.parametrize(
    "bad", ["", "A", "a b", "a/b", "a+b", "#", "a,b", "a=b", "-a", "a" * 33, "é"]
)
def test_identifiers_reject_what_breaks_topics_or_line_protocol(bad: str) -> None:
    with pytest.raises(InvalidIdentifierError):
        check_id(bad)
    with pytest.raises((TopicError, InvalidIdentifierError)):
        parse_topic(f"orchard/farm/block/{bad}/telemetry")


def test_topics_round_trip() -> None:
    topic = telemetry_topic("sunny-hill", "apple-east", "apple-east-n01")
    assert topic == "orchard/sunny-hill/apple-east/apple-east-n01/telemetry"
    parsed = parse_topic(topic)
    assert parsed.kind is Kind.TELEMETRY and parsed.address.node == "apple-east-n01"
    assert shared_subscription(Kind.STATUS) == "$share/ingest/orchard/+/+/+/status"
    with pytest.raises(TopicError):
        parse_topic("orchard/a/b/c/d/telemetry")
    with pytest.raises(TopicError):
        parse_topic("orchard/a/b/c/weather")


def test_valve_messages_validate() -> None:
    now = datetime(2026, 6, 1, tzinfo=UTC)
    command = ValveCommand(
        command_id="cmd-00000001",
        valve="apple-east-v1",
        action="open",
        duration_s=1800,
        issued_at=now,
        expires_at=now + timedelta(minutes=10),
    )
    assert ValveCommand.model_validate_json(command.model_dump_json()) == command
    with pytest.raises(ValidationError):
        ValveCommand.model_validate({**command.model_dump(), "duration_s": 90_000})
    ack = ValveAck(
        command_id=command.command_id,
        node="ctl",
        valve="apple-east-v1",
        status="rejected",
        reason="unknown valve",
        ts=now,
    )
    assert ValveAck.model_validate_json(ack.model_dump_json()).reason == "unknown valve"
    Status.model_validate_json('{"node":"n1","state":"offline"}')


def test_committed_schemas_match_models() -> None:
    for name, text in rendered_schemas().items():
        committed = SCHEMA_DIR / name
        assert committed.exists(), f"{name} missing: run `make schemas`"
        assert committed.read_text() == text, f"{name} drifted from the models: run `make schemas`"


def test_schema_accepts_the_documented_example() -> None:
    schema = json.loads((SCHEMA_DIR / "telemetry.schema.json").read_text())
    jsonschema.validate(SINGLE, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**SINGLE, "extra": 1}, schema)


def test_line_protocol_escapes_and_keeps_exact_time() -> None:
    ts = datetime(2026, 6, 1, 4, 30, 0, 123456, tzinfo=UTC)
    assert to_ns(ts) == 1780288200123456000
    line = encode_point(
        "telemetry",
        {"node": "a b", "farm": "f,1"},
        {"temperature": 1.5, "rssi": -70, "state": 'say "hi"', "skip": None},
        to_ns(ts),
    )
    assert line == (
        'telemetry,farm=f\\,1,node=a\\ b temperature=1.5,rssi=-70i,state="say \\"hi\\"" '
        "1780288200123456000"
    )
