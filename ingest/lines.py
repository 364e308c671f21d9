"""Line protocol for what ingest stores (``orchard/schema.py``), built fast.

Ingest turns tens of thousands of readings a second into lines, so these are
hand-rolled f-strings rather than the generic :func:`orchard.lineprotocol.encode_point`.
That is safe because every tag value is an identifier checked by
:func:`orchard.ids.check_id` (no space, comma, ``=`` or quote can reach a tag) and every
field value is a number already validated by :mod:`orchard.models` (finite, in range).
Free text (firmware, dead letters) still goes through the generic escaping.

:func:`telemetry_lines` is public: load a season into InfluxDB with exactly the points
ingest would have written, e.g. for dashboard tests.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Protocol

from orchard.ids import check_id
from orchard.lineprotocol import format_field, to_ns
from orchard.models import Status

TELEMETRY = "telemetry"
NODE_STATUS = "node_status"
DEAD_LETTER = "dead_letter"


class ReadingLike(Protocol):
    """A reading: :class:`orchard.models.Reading`, :class:`orchard.models.Telemetry` or alike."""

    @property
    def ts(self) -> datetime: ...
    @property
    def seq(self) -> int: ...
    @property
    def temperature(self) -> float | None: ...
    @property
    def humidity(self) -> float | None: ...
    @property
    def soil_moisture(self) -> float | None: ...
    @property
    def maturity(self) -> float | None: ...
    @property
    def battery(self) -> float | None: ...
    @property
    def rssi(self) -> int | None: ...


def telemetry_prefix(farm: str, block: str, node: str) -> str:
    """Measurement and tags (sorted by key, as InfluxDB prefers), with the trailing space."""
    return f"{TELEMETRY},block={block},farm={farm},node={node} "


def reading_line(prefix: str, reading: ReadingLike, ts_ns: int | None = None) -> str:
    """One telemetry line for a validated reading; time is the device time in ns."""
    fields = f"seq={reading.seq}i"
    # float() guards the type: a float field written once as an integer would make
    # InfluxDB refuse every later float for that field (a field type conflict).
    if reading.temperature is not None:
        fields += f",temperature={float(reading.temperature)!r}"
    if reading.humidity is not None:
        fields += f",humidity={float(reading.humidity)!r}"
    if reading.soil_moisture is not None:
        fields += f",soil_moisture={float(reading.soil_moisture)!r}"
    if reading.maturity is not None:
        fields += f",maturity={float(reading.maturity)!r}"
    if reading.battery is not None:
        fields += f",battery={float(reading.battery)!r}"
    if reading.rssi is not None:
        fields += f",rssi={int(reading.rssi)}i"
    return f"{prefix}{fields} {to_ns(reading.ts) if ts_ns is None else ts_ns}"


def telemetry_lines(farm: str, block: str, node: str, readings: Iterable[ReadingLike]) -> list[str]:
    """Lines of the ``telemetry`` measurement for one node's readings, as ingest writes them.

    Identifiers are checked here (raises :class:`orchard.ids.InvalidIdentifierError`);
    readings must be validated values (use :class:`orchard.models.Reading`).
    """
    prefix = telemetry_prefix(
        check_id(farm, "farm id"), check_id(block, "block id"), check_id(node, "node id")
    )
    return [reading_line(prefix, reading) for reading in readings]


def telemetry_line_protocol(
    farm: str, block: str, node: str, readings: Iterable[ReadingLike]
) -> str:
    """:func:`telemetry_lines` joined into one ``/write`` body."""
    return "\n".join(telemetry_lines(farm, block, node, readings))


def status_line(farm: str, block: str, node: str, status: Status, ts_ns: int) -> str:
    """A ``node_status`` line: online 1/0, state, firmware when the device sent one."""
    fields = f'online={1 if status.state == "online" else 0}i,state="{status.state}"'
    if status.firmware is not None:
        fields += f",firmware={format_field(status.firmware)}"
    return (
        f"{NODE_STATUS},block={block},farm={farm},kind={status.kind},node={node} {fields} {ts_ns}"
    )


def printable(raw: bytes, limit: int) -> str:
    """At most ``limit`` bytes of a payload as readable text: binary shows as escapes."""
    text = raw[:limit].decode("utf-8", "backslashreplace")
    if not text.isprintable():
        text = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)
    if len(raw) > limit:
        text += f"... ({len(raw)} bytes)"
    return text


def dead_letter_line(
    reason: str, topic: str, payload: bytes, detail: str, ts_ns: int, payload_limit: int
) -> str:
    """A ``dead_letter`` line; the reason is a bounded label, the rest free text."""
    return (
        f"{DEAD_LETTER},reason={reason} "
        f"topic={format_field(printable(topic.encode(), 512))},"
        f"payload={format_field(printable(payload, payload_limit))},"
        f"detail={format_field(printable(detail.encode(), 1_000))},"
        f"count=1i {ts_ns}"
    )
