"""InfluxQL for the readings endpoints.

Every identifier is checked with :func:`orchard.ids.check_id` and every value is
quoted with :func:`orchard.influx.quote_literal` here, at the one place queries are
built, even though the routes already validated them: a query can never be changed
by what a caller sends. Times are integers (nanoseconds) computed by us.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from orchard.ids import check_id
from orchard.influx import quote_ident, quote_literal
from orchard.schema import MEASUREMENTS

TELEMETRY = MEASUREMENTS["telemetry"]
NUMERIC_FIELDS = tuple(
    name for name, kind in TELEMETRY.fields.items() if kind in ("float", "integer")
)
AGGREGATES = ("mean", "min", "max")
_WINDOW_RE = re.compile(r"^([1-9][0-9]{0,6})(s|m|h|d)$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MIN_WINDOW_S = 10


class QueryLimitError(ValueError):
    """A request outside the limits on range, window or points; the message says why."""


def parse_window(window: str) -> int:
    """``"15m"`` -> 900 seconds."""
    match = _WINDOW_RE.fullmatch(window)
    if match is None:
        raise QueryLimitError(
            f"invalid window {window!r}: use a number and a unit s, m, h or d, e.g. 15m or 1h"
        )
    seconds = int(match.group(1)) * _UNIT_S[match.group(2)]
    if seconds < MIN_WINDOW_S:
        raise QueryLimitError(f"window {window!r} is shorter than {MIN_WINDOW_S}s")
    return seconds


def utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)


def time_range(
    start: datetime | None, end: datetime | None, default_span: timedelta
) -> tuple[datetime, datetime]:
    """``(start, end)`` in UTC with defaults (end: now), within what InfluxDB can store."""
    end_ = utc(end) if end else datetime.now(UTC)
    for name, value in (("start", start), ("end", end_)):
        if value is not None and not EARLIEST <= utc(value) <= LATEST:
            raise QueryLimitError(f"{name} must be between 1970 and 2200")
    start_ = utc(start) if start else end_ - default_span
    return start_, end_


def ns(value: datetime) -> int:
    return int(utc(value).timestamp() * 1_000_000) * 1000


@dataclass(frozen=True, slots=True)
class Scope:
    """Which series a query reads: a farm and block, optionally a single node."""

    farm: str
    block: str
    node: str | None = None

    def where(self) -> str:
        parts = [
            f'"farm" = {quote_literal(check_id(self.farm, "farm id"))}',
            f'"block" = {quote_literal(check_id(self.block, "block id"))}',
        ]
        if self.node is not None:
            parts.append(f'"node" = {quote_literal(check_id(self.node, "node id"))}')
        return " AND ".join(parts)


def check_range(start: datetime, end: datetime, max_days: float) -> None:
    if utc(end) <= utc(start):
        raise QueryLimitError("end must be after start")
    days = (utc(end) - utc(start)).total_seconds() / 86400
    if days > max_days:
        raise QueryLimitError(
            f"time range of {days:.1f} days is longer than the limit of {max_days:g} days"
        )


def check_field(field: str) -> str:
    if field not in NUMERIC_FIELDS:
        raise QueryLimitError(f"unknown field {field!r}; one of: {', '.join(NUMERIC_FIELDS)}")
    return field


def history_query(
    scope: Scope,
    field: str,
    start: datetime,
    end: datetime,
    window_s: int,
    aggregate: str,
    by_node: bool,
    max_points: int,
    max_days: float,
    series_count: int = 1,
) -> str:
    check_range(start, end, max_days)
    check_field(field)
    if aggregate not in AGGREGATES:
        raise QueryLimitError(f"unknown aggregate {aggregate!r}; one of: {', '.join(AGGREGATES)}")
    windows = math.ceil((utc(end) - utc(start)).total_seconds() / window_s)
    points = windows * (series_count if by_node else 1)
    if points > max_points:
        smallest = math.ceil(
            (utc(end) - utc(start)).total_seconds() * (series_count if by_node else 1) / max_points
        )
        raise QueryLimitError(
            f"{points} points requested, the limit is {max_points}: use a window of at "
            f"least {smallest}s or a shorter range"
        )
    # Windows start at ``start`` (not at epoch multiples), so the first one is whole.
    offset_s = int(utc(start).timestamp()) % window_s
    group = f"time({window_s}s, {offset_s}s)" + (', "node"' if by_node else "")
    return (
        f'SELECT {aggregate}({quote_ident(field)}) AS "value" FROM {quote_ident(TELEMETRY.name)} '
        f"WHERE {scope.where()} AND time >= {ns(start)} AND time < {ns(end)} "
        f"GROUP BY {group} fill(none)"
    )


def latest_query(scope: Scope) -> str:
    """The newest reading of each node in scope."""
    return (
        f"SELECT * FROM {quote_ident(TELEMETRY.name)} WHERE {scope.where()} "
        'GROUP BY "node" ORDER BY time DESC LIMIT 1'
    )


def status_query(scope: Scope) -> str:
    """The newest presence message of each node in scope."""
    return (
        f"SELECT * FROM {quote_ident(MEASUREMENTS['node_status'].name)} WHERE {scope.where()} "
        'GROUP BY "node" ORDER BY time DESC LIMIT 1'
    )


def export_query(scope: Scope, start: datetime, end: datetime) -> str:
    fields = ", ".join(quote_ident(f) for f in TELEMETRY.fields)
    return (
        f'SELECT "node", {fields} FROM {quote_ident(TELEMETRY.name)} WHERE {scope.where()} '
        f"AND time >= {ns(start)} AND time < {ns(end)} ORDER BY time ASC"
    )
