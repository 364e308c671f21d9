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
from dataclasses import dataclass
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
    """One telemetry line for a validated reading; time is the device time in ns.

    The hot path: values must be plain ``float`` (the models coerce to it) and ``int``;
    :func:`telemetry_lines` converts anything else first. A float always prints with a
    decimal point or exponent, so InfluxDB never sees an integer where a float belongs.
    """
    t = reading.temperature
    h = reading.humidity
    s = reading.soil_moisture
    m = reading.maturity
    b = reading.battery
    r = reading.rssi
    return (
        f"{prefix}seq={reading.seq}i"
        f"{'' if t is None else f',temperature={t!r}'}"
        f"{'' if h is None else f',humidity={h!r}'}"
        f"{'' if s is None else f',soil_moisture={s!r}'}"
        f"{'' if m is None else f',maturity={m!r}'}"
        f"{'' if b is None else f',battery={b!r}'}"
        f"{'' if r is None else f',rssi={r}i'}"
        f" {to_ns(reading.ts) if ts_ns is None else ts_ns}"
    )


@dataclass(frozen=True, slots=True)
class _PlainReading:
    ts: datetime
    seq: int
    temperature: float | None
    humidity: float | None
    soil_moisture: float | None
    maturity: float | None
    battery: float | None
    rssi: int | None


def _opt_float(value: float | None) -> float | None:
    return None if value is None else float(value)


def _plain(reading: ReadingLike) -> _PlainReading:
    # numpy scalars and ints would print as "np.float64(...)" or as integers.
    return _PlainReading(
        reading.ts,
        int(reading.seq),
        _opt_float(reading.temperature),
        _opt_float(reading.humidity),
        _opt_float(reading.soil_moisture),
        _opt_float(reading.maturity),
        _opt_float(reading.battery),
        None if reading.rssi is None else int(reading.rssi),
    )


def telemetry_lines(farm: str, block: str, node: str, readings: Iterable[ReadingLike]) -> list[str]:
    """Lines of the ``telemetry`` measurement for one node's readings, as ingest writes them.

    Identifiers are checked here (raises :class:`orchard.ids.InvalidIdentifierError`);
    readings should be validated values (:class:`orchard.models.Reading`); numbers of
    any numeric type (numpy included) are converted to the stored types.
    """
    prefix = telemetry_prefix(
        check_id(farm, "farm id"), check_id(block, "block id"), check_id(node, "node id")
    )
    return [reading_line(prefix, _plain(reading)) for reading in readings]


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
