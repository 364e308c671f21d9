"""Ingest without the pipeline: validation reasons, line protocol, settings.

The pipeline itself (real broker, real InfluxDB) is tested in test_ingest_pipeline.py.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from pydantic import ValidationError

from ingest.lines import dead_letter_line, printable, status_line, telemetry_lines
from ingest.settings import IngestSettings
from ingest.validate import REASONS, Accepted, Rejection, Validator
from orchard.lineprotocol import to_ns
from orchard.models import MAX_PAYLOAD_BYTES, Reading, Status

TOPIC = "orchard/farm1/block-a/node-1/telemetry"
NOW = datetime.now(UTC).replace(microsecond=123456)


def reading(**extra: object) -> bytes:
    body: dict[str, object] = {"v": 1, "node": "node-1", "ts": NOW.isoformat(), "seq": 7}
    body.update(extra)
    return json.dumps(body).encode()


def check(payload: bytes, topic: str = TOPIC) -> Accepted | Rejection:
    return Validator(max_future_s=300, max_past_s=400 * 86_400).check(
        topic, payload, time.time_ns()
    )


def test_a_good_reading_becomes_one_exact_line() -> None:
    result = check(reading(temperature=21.5, humidity=60, soil_moisture=1e-05, rssi=-70))
    assert isinstance(result, Accepted)
    assert result.lines == [
        "telemetry,block=block-a,farm=farm1,node=node-1 "
        f"seq=7i,temperature=21.5,humidity=60.0,soil_moisture=1e-05,rssi=-70i {to_ns(NOW)}"
    ]
    assert result.readings == 1


def test_a_batch_becomes_one_line_per_reading() -> None:
    readings = [
        {"ts": (NOW - timedelta(minutes=i)).isoformat(), "seq": i, "maturity": 12.5}
        for i in range(3)
    ]
    result = check(json.dumps({"node": "node-1", "readings": readings}).encode())
    assert isinstance(result, Accepted)
    assert len(result.lines) == 3
    assert result.oldest_ns == to_ns(NOW - timedelta(minutes=2))


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\x00\xff\xfe binary garbage", "malformed_json"),
        (b'{"node": "node-1", "ts": ', "malformed_json"),
        (b"[1, 2, 3]", "malformed_json"),
        (reading(temperature="warm"), "wrong_type"),
        (reading(temperature=float("nan")), "not_finite"),  # json.dumps writes NaN
        (reading(temperature=float("inf")), "not_finite"),
        (reading(temperature=99.0), "out_of_range"),
        (reading(soil_moisture=-0.1), "out_of_range"),
        (reading(colour="red"), "unknown_field"),
        (b'{"node": "node-1", "seq": 1}', "missing_field"),
        (reading(v=2), "invalid_value"),
        (reading(node="node-2"), "node_mismatch"),
        (reading(ts=(NOW + timedelta(minutes=10)).isoformat()), "ts_future"),
        (reading(ts=(NOW - timedelta(days=401)).isoformat()), "ts_past"),
        (reading(ts="2026-01-01T00:00:00"), "wrong_type"),  # no time zone
        (b" " * (MAX_PAYLOAD_BYTES + 1), "oversize"),
    ],
)
def test_each_kind_of_bad_message_has_its_reason(payload: bytes, reason: str) -> None:
    result = check(payload)
    assert isinstance(result, Rejection), result
    assert result.reason == reason, result.detail
    assert result.reason in REASONS
    assert result.detail


def test_a_bad_topic_is_rejected() -> None:
    result = check(reading(), topic="orchard/farm1/Block A/node-1/telemetry")
    assert isinstance(result, Rejection)
    assert result.reason == "bad_topic"


def test_status_online_and_last_will_without_timestamp() -> None:
    validator = Validator(300, 86_400)
    now = time.time_ns()
    online = Status(node="node-1", state="online", firmware='1.0 "beta"', ts=NOW)
    result = validator.check(
        "orchard/farm1/block-a/node-1/status", online.model_dump_json().encode(), now
    )
    assert isinstance(result, Accepted)
    assert result.lines == [
        "node_status,block=block-a,farm=farm1,kind=sensor,node=node-1 "
        f'online=1i,state="online",firmware="1.0 \\"beta\\"" {to_ns(NOW)}'
    ]
    will = b'{"node": "node-1", "state": "offline"}'
    result = validator.check("orchard/farm1/block-a/node-1/status", will, now)
    assert isinstance(result, Accepted)
    assert result.lines[0].endswith(f'online=0i,state="offline" {now}')


def test_telemetry_lines_is_reusable_and_converts_numeric_types() -> None:
    readings = [
        Reading(ts=NOW, seq=1, temperature=20),
        # numpy values, as a season generator would produce them
        Reading.model_construct(ts=NOW, seq=np.int64(2), temperature=np.float64(20.25), rssi=None),
    ]
    lines = telemetry_lines("farm1", "block-a", "node-1", readings)
    assert (
        lines[0]
        == f"telemetry,block=block-a,farm=farm1,node=node-1 seq=1i,temperature=20.0 {to_ns(NOW)}"
    )
    assert lines[1].split(" ")[1] == "seq=2i,temperature=20.25"
    with pytest.raises(ValueError, match="invalid node id"):
        telemetry_lines("farm1", "block-a", "node 1", readings)


def test_status_line_escapes_firmware() -> None:
    status = Status(node="n", state="online", firmware="a,b=c\\")
    assert status_line("f", "b", "n", status, 5).endswith('firmware="a,b=c\\\\" 5')


def test_dead_letter_line_keeps_binary_readable_and_truncated() -> None:
    line = dead_letter_line("oversize", "orchard/x", b"\x00\xff" + b"a" * 5000, 'say "hi"', 9, 64)
    assert line.startswith("dead_letter,reason=oversize topic=")
    assert "\\\\x00\\\\xff" in line  # printable escapes, then line-protocol escaping
    assert "(5002 bytes)" in line
    assert 'detail="say \\"hi\\""' in line
    assert line.endswith("count=1i 9")
    assert "\n" not in printable(b"a\nb", 10)


def test_settings_refuse_a_batch_larger_than_the_inflight_window() -> None:
    with pytest.raises(ValidationError, match="receive_maximum"):
        IngestSettings(receive_maximum=100, batch_max_messages=100)
