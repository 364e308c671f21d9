"""InfluxDB line protocol encoding (the format of the v1 ``/write`` endpoint).

Identifiers are validated elsewhere, but escaping is still applied everywhere: the
encoder must be correct for any input, not only for the inputs we expect.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

_MEASUREMENT_ESCAPES = str.maketrans({",": r"\,", " ": r"\ ", "\n": r"\n"})
_KEY_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n"})

FieldValue = float | int | bool | str


def escape_measurement(name: str) -> str:
    return name.translate(_MEASUREMENT_ESCAPES)


def escape_key(key: str) -> str:
    return key.translate(_KEY_ESCAPES)


def format_field(value: FieldValue) -> str:
    # bool first: bool is an int subclass
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("line protocol cannot carry NaN or infinity")
        return repr(value)
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_ns(ts: datetime) -> int:
    """Nanoseconds since the epoch, exact to the microsecond (no float rounding).

    A naive datetime is taken as UTC.
    """
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    delta = ts - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def encode_point(
    measurement: str,
    tags: Mapping[str, str],
    fields: Mapping[str, FieldValue | None],
    ts_ns: int | None = None,
) -> str:
    """One line. ``None`` fields are skipped; a point with no field left is an error."""
    parts = [escape_measurement(measurement)]
    for key in sorted(tags):  # InfluxDB prefers tags sorted by key
        value = tags[key]
        if value != "":
            parts.append(f",{escape_key(key)}={escape_key(value)}")
    field_text = ",".join(
        f"{escape_key(k)}={format_field(v)}" for k, v in fields.items() if v is not None
    )
    if not field_text:
        raise ValueError(f"point for {measurement!r} has no fields")
    line = "".join(parts) + " " + field_text
    if ts_ns is not None:
        line += f" {ts_ns}"
    return line
