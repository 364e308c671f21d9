"""Reading the daily maturity and temperature series of every block from InfluxDB.

One InfluxQL statement per refresh covers the whole farm: daily median maturity and
daily temperature extremes per node, bucketed on the farm's local days. A cache keeps
the days already read, so the daily evaluation re-reads only the last two days (late
and redelivered readings land there), not the whole season.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import numpy as np

from control.harvest.readiness import BlockDaily
from orchard.influx import InfluxClient, Series, SyncInfluxClient, quote_literal
from orchard.layout import Block
from orchard.lineprotocol import to_ns


def day_start(day: date, tz: ZoneInfo) -> datetime:
    return datetime.combine(day, time(0), tzinfo=tz)


def daily_query(farm: str, start: datetime, end: datetime, tz: str) -> str:
    tz_clause = f" tz({quote_literal(tz)})" if tz != "UTC" else ""
    return (
        'SELECT median("maturity") AS "maturity", min("temperature") AS "tmin", '
        'max("temperature") AS "tmax" FROM "telemetry" '
        f'WHERE "farm" = {quote_literal(farm)} AND time >= {to_ns(start)} '
        f'AND time < {to_ns(end)} GROUP BY time(1d), "block", "node" fill(none)' + tz_clause
    )


def readings_query(farm: str, block: str, start: datetime, end: datetime) -> str:
    return (
        'SELECT "maturity" FROM "telemetry" '
        f'WHERE "farm" = {quote_literal(farm)} AND "block" = {quote_literal(block)} '
        f'AND time >= {to_ns(start)} AND time < {to_ns(end)} GROUP BY "node"'
    )


Cell = tuple[float, float, float]  # maturity median, tmin, tmax (nan: missing)


@dataclass
class DailyCache:
    """Daily aggregates per (block, node, local day), filled incrementally."""

    farm: str
    timezone: str = "UTC"
    cells: dict[tuple[str, str], dict[date, Cell]] = field(default_factory=dict)
    complete_until: date | None = None  # days before this one are final

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def span(self, season_start: date, as_of: datetime) -> tuple[datetime, datetime]:
        """What to read now: from the first day not yet final to ``as_of``."""
        first = season_start
        if self.complete_until is not None:
            # Re-read the last final day too: a node that buffered offline sends late.
            first = max(season_start, self.complete_until - timedelta(days=1))
        return day_start(first, self.tz), as_of

    def absorb(self, series: Iterable[Series], read_until: datetime) -> None:
        tz = self.tz
        for s in series:
            key = (s.tags.get("block", ""), s.tags.get("node", ""))
            days = self.cells.setdefault(key, {})
            cols = {c: i for i, c in enumerate(s.columns)}
            for row in s.values:
                day = datetime.fromtimestamp(row[cols["time"]] / 1000, tz=UTC).astimezone(tz)
                days[day.date()] = (
                    _num(row[cols["maturity"]]),
                    _num(row[cols["tmin"]]),
                    _num(row[cols["tmax"]]),
                )
        local_end = read_until.astimezone(tz)
        self.complete_until = local_end.date()

    def block_daily(self, block: Block, as_of: date, day_complete: bool = True) -> BlockDaily:
        start = block.bloom_date
        n_days = (as_of - start).days + 1
        days = [start + timedelta(days=i) for i in range(max(n_days, 1))]
        nodes = block.sensor_nodes
        maturity = np.full((len(nodes), len(days)), np.nan)
        tmin = np.full((len(nodes), len(days)), np.nan)
        tmax = np.full((len(nodes), len(days)), np.nan)
        for i, node in enumerate(nodes):
            cells = self.cells.get((block.id, node))
            if not cells:
                continue
            for j, day in enumerate(days):
                cell = cells.get(day)
                if cell is not None:
                    maturity[i, j], tmin[i, j], tmax[i, j] = cell
        # The median over nodes: one faulty probe cannot move the block's extremes.
        block_tmin, block_tmax = _column_median(tmin), _column_median(tmax)
        return BlockDaily(
            nodes=list(nodes),
            days=days,
            maturity=maturity,
            tmin=block_tmin,
            tmax=block_tmax,
            gdd_days=len(days) if day_complete else len(days) - 1,
        )


def _column_median(values: np.ndarray) -> np.ndarray:
    out = np.full(values.shape[1], np.nan)
    have = np.isfinite(values).any(axis=0)
    if have.any():
        out[have] = np.nanmedian(values[:, have], axis=0)
    return out


def _num(value: object) -> float:
    return float(value) if isinstance(value, int | float) else float("nan")


def refresh_sync(
    client: SyncInfluxClient, cache: DailyCache, season_start: date, as_of: datetime
) -> None:
    start, end = cache.span(season_start, as_of)
    if end <= start:
        return
    cache.absorb(client.query_one(daily_query(cache.farm, start, end, cache.timezone)), end)


async def refresh_async(
    client: InfluxClient, cache: DailyCache, season_start: date, as_of: datetime
) -> None:
    start, end = cache.span(season_start, as_of)
    if end <= start:
        return
    results = await client.query(daily_query(cache.farm, start, end, cache.timezone))
    cache.absorb(results[0] if results else [], end)


def recent_readings_sync(
    client: SyncInfluxClient, farm: str, block: str, start: datetime, end: datetime
) -> dict[str, np.ndarray]:
    return _by_node(client.query_one(readings_query(farm, block, start, end)))


async def recent_readings_async(
    client: InfluxClient, farm: str, block: str, start: datetime, end: datetime
) -> dict[str, np.ndarray]:
    results = await client.query(readings_query(farm, block, start, end))
    return _by_node(results[0] if results else [])


def _by_node(series: Iterable[Series]) -> dict[str, np.ndarray]:
    """Each node's individual maturity readings."""
    out: dict[str, np.ndarray] = {}
    for s in series:
        col = s.columns.index("maturity")
        values = [float(row[col]) for row in s.values if isinstance(row[col], int | float)]
        out[s.tags.get("node", "")] = np.asarray(values, dtype=float)
    return out
