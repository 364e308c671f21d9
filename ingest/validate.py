"""Validation of one MQTT message against the device contract, into lines or a rejection.

:mod:`orchard.models` checks the payload (JSON, types, ranges, NaN, unknown fields);
this module adds what only ingest can check: the topic, the node in the payload
against the node in the topic, the device clock against ours, the payload size.
Every rejection carries a reason from :data:`REASONS` (a bounded label set, safe for
metrics) and a detail for people.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import TypeAdapter, ValidationError

from ingest.lines import reading_line, status_line, telemetry_prefix
from orchard.lineprotocol import to_ns
from orchard.models import (
    MAX_PAYLOAD_BYTES,
    Status,
    TelemetryBatch,
    describe_error,
    error_kind,
    parse_telemetry,
)
from orchard.topics import Kind, ParsedTopic, TopicError, parse_topic

REASONS = (
    "oversize",  # payload above orchard.models.MAX_PAYLOAD_BYTES
    "bad_topic",  # topic outside orchard/{farm}/{block}/{node}/{kind}, or not UTF-8
    "malformed_json",  # not JSON (binary garbage, truncated), or not a JSON object
    "unknown_field",  # a field the contract does not define
    "missing_field",
    "wrong_type",  # e.g. a string where a number belongs
    "not_finite",  # NaN or infinity
    "out_of_range",  # outside the sensor's physical envelope, or too many readings
    "invalid_value",  # any other contract violation (bad id, unsupported version, ...)
    "node_mismatch",  # the payload's node is not the topic's node
    "ts_future",  # device clock too far ahead of ours
    "ts_past",  # device timestamp older than the configured horizon
    "write_rejected",  # InfluxDB refused the point (e.g. a field type conflict)
)

_PYDANTIC_REASONS = {
    "json_invalid": "malformed_json",
    "json_type": "malformed_json",
    "model_type": "malformed_json",
    "model_attributes_type": "malformed_json",
    "extra_forbidden": "unknown_field",
    "missing": "missing_field",
    "finite_number": "not_finite",
    "greater_than": "out_of_range",
    "greater_than_equal": "out_of_range",
    "less_than": "out_of_range",
    "less_than_equal": "out_of_range",
    "too_short": "out_of_range",
    "too_long": "out_of_range",
}


def reason_for(exc: ValidationError) -> str:
    kind = error_kind(exc)
    reason = _PYDANTIC_REASONS.get(kind)
    if reason is not None:
        return reason
    if kind.endswith(("_type", "_parsing")) or kind == "timezone_aware":
        return "wrong_type"
    return "invalid_value"


@dataclass(slots=True)
class Rejection:
    reason: str
    detail: str


@dataclass(slots=True)
class Accepted:
    lines: list[str]
    oldest_ns: int
    """Oldest device timestamp in the message (for the lag metric)."""
    readings: int
    """Telemetry readings carried (0 for a status message)."""


_status = TypeAdapter(Status)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TOPIC_CACHE_SIZE = 100_000


class Validator:
    """Turns (topic, payload) into :class:`Accepted` lines or a :class:`Rejection`."""

    def __init__(self, max_future_s: float, max_past_s: float) -> None:
        self.max_future_ns = int(max_future_s * 1e9)
        self.max_past_ns = int(max_past_s * 1e9)
        # A thousand nodes publish on a thousand topics: parse each topic once.
        self._topics: dict[str, tuple[ParsedTopic, str] | Rejection] = {}

    def _topic(self, topic: str) -> tuple[ParsedTopic, str] | Rejection:
        cached = self._topics.get(topic)
        if cached is not None:
            return cached
        result: tuple[ParsedTopic, str] | Rejection
        try:
            parsed = parse_topic(topic)
        except TopicError as exc:
            result = Rejection("bad_topic", str(exc))
        else:
            a = parsed.address
            result = (parsed, telemetry_prefix(a.farm, a.block, a.node))
        if len(self._topics) >= _TOPIC_CACHE_SIZE:
            self._topics.clear()
        self._topics[topic] = result
        return result

    def _check_time(self, ts_ns: int, now_ns: int) -> Rejection | None:
        if ts_ns > now_ns + self.max_future_ns:
            ahead = (ts_ns - now_ns) / 1e9
            return Rejection("ts_future", f"device time {ahead:.0f} s ahead of ingest's clock")
        if ts_ns < now_ns - self.max_past_ns:
            behind = (now_ns - ts_ns) / 86_400e9
            return Rejection("ts_past", f"device time {behind:.1f} days in the past")
        return None

    def check(self, topic: str | bytes, payload: bytes, now_ns: int) -> Accepted | Rejection:
        if len(payload) > MAX_PAYLOAD_BYTES:
            return Rejection(
                "oversize", f"payload of {len(payload)} bytes, limit {MAX_PAYLOAD_BYTES}"
            )
        if isinstance(topic, bytes):  # gmqtt hands over a topic it could not decode as bytes
            return Rejection("bad_topic", "topic is not valid UTF-8")
        parsed_topic = self._topic(topic)
        if isinstance(parsed_topic, Rejection):
            return parsed_topic
        parsed, prefix = parsed_topic
        address = parsed.address
        if parsed.kind is Kind.TELEMETRY:
            return self._telemetry(address.node, prefix, payload, now_ns)
        if parsed.kind is Kind.STATUS:
            return self._status(parsed, payload, now_ns)
        return Rejection("bad_topic", f"ingest does not take {parsed.kind.value} messages")

    def _telemetry(
        self, node: str, prefix: str, payload: bytes, now_ns: int
    ) -> Accepted | Rejection:
        try:
            message = parse_telemetry(payload)
        except ValidationError as exc:
            return Rejection(reason_for(exc), describe_error(exc))
        if message.node != node:
            return Rejection(
                "node_mismatch", f"payload node {message.node!r} on the topic of node {node!r}"
            )
        readings = message.readings if isinstance(message, TelemetryBatch) else (message,)
        # The hot loop of a gateway's batch: bounds and epoch arithmetic inlined.
        earliest = now_ns - self.max_past_ns
        latest = now_ns + self.max_future_ns
        lines = []
        oldest = now_ns
        for reading in readings:
            delta = reading.ts - _EPOCH
            ts_ns = (
                delta.days * 86_400 + delta.seconds
            ) * 1_000_000_000 + delta.microseconds * 1_000
            if ts_ns < earliest or ts_ns > latest:
                problem = self._check_time(ts_ns, now_ns)
                assert problem is not None
                return problem
            if ts_ns < oldest:
                oldest = ts_ns
            lines.append(reading_line(prefix, reading, ts_ns))
        return Accepted(lines, oldest, len(lines))

    def _status(self, parsed: ParsedTopic, payload: bytes, now_ns: int) -> Accepted | Rejection:
        try:
            status = _status.validate_json(payload)
        except ValidationError as exc:
            return Rejection(reason_for(exc), describe_error(exc))
        a = parsed.address
        if status.node != a.node:
            return Rejection(
                "node_mismatch", f"payload node {status.node!r} on the topic of node {a.node!r}"
            )
        # A Last Will is fixed at connect time and carries no timestamp: the broker
        # publishes it when the node vanishes, so our receipt time is the best we have.
        ts_ns = now_ns if status.ts is None else to_ns(status.ts)
        problem = self._check_time(ts_ns, now_ns)
        if problem is not None:
            return problem
        return Accepted([status_line(a.farm, a.block, a.node, status, ts_ns)], ts_ns, 0)
