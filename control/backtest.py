"""Backtest: replay a block's stored readings through the engine with proposed thresholds.

The API calls :func:`backtest` when an agronomist considers an override: it loads the
block's readings for the period (one query), runs the same :func:`control.engine.evaluate`
the live loop runs, once with the thresholds in force and once with the proposal, and
returns both side by side: alarms (with start, end, duration), irrigation runs with
their water, and the harvest-readiness date if a readiness estimator is registered.

What a replay cannot know: readings already contain the effect of the irrigations that
really happened, so a proposal that would have irrigated less still sees the wetter
soil. The water figures compare decisions, not a re-simulated soil; the result says so.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy.engine import Engine

from control.data import load_grid
from control.engine import FIELDS, BlockTable, EngineResult, EngineState, Grid, evaluate
from control.thresholds import EffectiveThresholds, Override, Thresholds, _effective, with_proposed
from orchard.influx import SyncInfluxClient
from orchard.layout import Block, Orchard

ReadinessEstimator = Callable[[Block, Grid, EngineResult, EffectiveThresholds], date | None]
_readiness: list[ReadinessEstimator] = []

CAVEAT = (
    "Replayed on the stored readings, which already include the effect of the irrigations "
    "that really ran: water figures compare decisions, not a re-simulated soil."
)


def register_readiness(estimator: ReadinessEstimator) -> None:
    """Let ``control.harvest`` add its ready date to backtests (one call at import)."""
    if estimator not in _readiness:
        _readiness.append(estimator)


@dataclass
class AlarmEpisode:
    type: str
    subject: str
    severity: str
    raised_at: datetime
    cleared_at: datetime | None
    duration_h: float
    message: str


@dataclass
class IrrigationRun:
    at: datetime
    duration_min: float
    depth_mm: float
    applied_mm: float
    water_m3: float
    reason: str


@dataclass
class Skipped:
    at: datetime
    code: str
    reason: str


@dataclass
class Outcome:
    thresholds: dict[str, float]
    alarms: list[AlarmEpisode] = field(default_factory=list)
    irrigation: list[IrrigationRun] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    water_m3: float = 0.0
    irrigation_count: int = 0
    alarm_counts: dict[str, int] = field(default_factory=dict)
    alarm_hours: dict[str, float] = field(default_factory=dict)
    readiness_date: date | None = None


@dataclass
class BacktestResult:
    block: str
    start: datetime
    end: datetime
    step_s: float
    readings: int
    nodes: int
    proposed_overrides: dict[str, float | None]
    current: Outcome
    proposed: Outcome
    differences: list[str]
    query_s: float
    replay_s: float
    caveat: str = CAVEAT

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _ts(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def outcome(
    block: Block, grid: Grid, thresholds: EffectiveThresholds, farm: str, end: datetime
) -> Outcome:
    table = BlockTable([block], [thresholds], farm)
    result = evaluate(grid, table, EngineState(), since_s=float("-inf"))
    out = Outcome(thresholds=thresholds.as_floats())
    open_: dict[tuple[str, str], Any] = {}
    for tr in sorted(result.alarms, key=lambda a: a.t_s):
        key = (tr.type, tr.subject)
        if tr.kind == "raise":
            open_[key] = tr
        elif tr.kind == "escalate" and key in open_:
            open_[key] = (open_[key], tr.severity)
        elif tr.kind == "clear" and key in open_:
            first = open_.pop(key)
            raised, severity = first if isinstance(first, tuple) else (first, first.severity)
            out.alarms.append(
                AlarmEpisode(
                    tr.type,
                    tr.subject,
                    severity,
                    _ts(raised.t_s),
                    _ts(tr.t_s),
                    round((tr.t_s - raised.t_s) / 3600.0, 2),
                    raised.message,
                )
            )
    for item in open_.values():
        raised, severity = item if isinstance(item, tuple) else (item, item.severity)
        out.alarms.append(
            AlarmEpisode(
                raised.type,
                raised.subject,
                severity,
                _ts(raised.t_s),
                None,
                round((end.timestamp() - raised.t_s) / 3600.0, 2),
                raised.message,
            )
        )
    out.alarms.sort(key=lambda a: a.raised_at)
    for ep in out.alarms:
        out.alarm_counts[ep.type] = out.alarm_counts.get(ep.type, 0) + 1
        out.alarm_hours[ep.type] = round(out.alarm_hours.get(ep.type, 0.0) + ep.duration_h, 2)
    for d in result.decisions:
        if d.action == "irrigate":
            out.irrigation.append(
                IrrigationRun(
                    _ts(d.t_s),
                    round((d.duration_s or 0) / 60.0, 1),
                    d.depth_mm or 0.0,
                    d.gross_mm or 0.0,
                    d.water_m3 or 0.0,
                    d.reason,
                )
            )
        else:
            out.skipped.append(Skipped(_ts(d.t_s), d.code, d.reason))
    out.irrigation_count = len(out.irrigation)
    out.water_m3 = round(sum(r.water_m3 for r in out.irrigation), 2)
    for estimator in _readiness:
        ready = estimator(block, grid, result, thresholds)
        if ready is not None:
            out.readiness_date = ready
            break
    return out


def _ensure_estimators() -> None:
    """Register the harvest ready-date estimator even when nothing imported harvest yet
    (a backtest run without the API, e.g. from a script); without it the replay would
    drop the maturity readings and report no ready date."""
    if _readiness:
        return
    try:
        import control.harvest  # noqa: F401  (registers at import)
    except ImportError:
        return


def _differences(current: Outcome, proposed: Outcome) -> list[str]:
    lines: list[str] = []
    if (
        current.irrigation_count != proposed.irrigation_count
        or current.water_m3 != proposed.water_m3
    ):
        lines.append(
            f"irrigation: {current.irrigation_count} runs, {current.water_m3:g} m³ now; "
            f"{proposed.irrigation_count} runs, {proposed.water_m3:g} m³ with the proposal"
        )
    for t in sorted(set(current.alarm_counts) | set(proposed.alarm_counts)):
        a, b = current.alarm_counts.get(t, 0), proposed.alarm_counts.get(t, 0)
        if a != b or current.alarm_hours.get(t) != proposed.alarm_hours.get(t):
            lines.append(
                f"{t} alarms: {a} ({current.alarm_hours.get(t, 0):g} h) now; "
                f"{b} ({proposed.alarm_hours.get(t, 0):g} h) with the proposal"
            )
    if current.readiness_date != proposed.readiness_date:
        lines.append(
            f"ready date: {current.readiness_date} now; {proposed.readiness_date} with the proposal"
        )
    return lines or ["no difference over this period"]


def backtest(
    client: SyncInfluxClient,
    orchard: Orchard,
    block_id: str,
    start: datetime,
    end: datetime,
    proposed: Mapping[str, Any],
    *,
    engine: Engine | None = None,
    step_s: float = 300.0,
) -> BacktestResult:
    """Replay ``[start, end)`` of one block with the current and the proposed thresholds.

    The replay runs on ``step_s`` bins (5 minutes by default, averaged by InfluxDB, which
    sends a fifth of the rows of one-minute readings; every rule's minimum duration is at
    least that long). ``step_s=60`` replays the raw readings as the live loop sees them.

    Raises ``KeyError`` for an unknown block, :class:`~control.thresholds.ThresholdValidationError`
    for an invalid proposal (same rules as a real override), ``ValueError`` for a bad period.
    """
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("start and end must carry a time zone")
    if end <= start:
        raise ValueError("the period must end after it starts")
    if end - start > timedelta(days=366):
        raise ValueError("a backtest covers at most one year")
    block = orchard.block(block_id)
    on = (start + (end - start) / 2).date()
    current_overrides: list[Override] = (
        Thresholds(engine, orchard).overrides(block_id) if engine is not None else []
    )
    current_th = _effective(block, on, current_overrides)
    proposed_th = with_proposed(block, on, current_overrides, proposed)
    _ensure_estimators()
    t0 = time.perf_counter()
    # Battery readings only matter to a proposal about batteries; skipping them cuts a
    # quarter of the data to fetch and decode.
    fields = [
        f
        for f in FIELDS
        if (f != "battery" or "battery_low_v" in proposed) and (f != "maturity" or _readiness)
    ]
    grid = _cached_grid(client, orchard.farm.id, block, start, end, step_s, fields)
    t1 = time.perf_counter()
    current = outcome(block, grid, current_th, orchard.farm.id, end)
    prop = outcome(block, grid, proposed_th, orchard.farm.id, end)
    t2 = time.perf_counter()
    readings = int(sum((~_isnan(v)).sum() for v in grid.values.values()))
    return BacktestResult(
        block=block_id,
        start=start,
        end=end,
        step_s=step_s,
        readings=readings,
        nodes=grid.n_nodes,
        proposed_overrides=dict(proposed),
        current=current,
        proposed=prop,
        differences=_differences(current, prop),
        query_s=round(t1 - t0, 3),
        replay_s=round(t2 - t1, 3),
    )


_GRID_CACHE: OrderedDict[tuple[Any, ...], tuple[float, Grid]] = OrderedDict()
GRID_CACHE_TTL_S = 300.0
GRID_CACHE_SIZE = 4


def _cached_grid(
    client: SyncInfluxClient,
    farm: str,
    block: Block,
    start: datetime,
    end: datetime,
    step_s: float,
    fields: list[str],
) -> Grid:
    """An agronomist tries several proposals on one period in a row: the readings are
    fetched once and reused for a few minutes (short enough for late data to show up)."""
    key = (client.settings.url, client.database, farm, block.id, start, end, step_s, tuple(fields))
    aggregate = step_s > 60
    if aggregate:
        # InfluxDB's time bins are aligned to the epoch: start on a bin edge.
        start = datetime.fromtimestamp(start.timestamp() // step_s * step_s, UTC)
    now = time.monotonic()
    hit = _GRID_CACHE.get(key)
    if hit is not None and now - hit[0] < GRID_CACHE_TTL_S:
        _GRID_CACHE.move_to_end(key)
        return hit[1]
    grid = load_grid(
        client, farm, [block], start, end, step_s, fields=fields, server_aggregate=aggregate
    )
    _GRID_CACHE[key] = (now, grid)
    while len(_GRID_CACHE) > GRID_CACHE_SIZE:
        _GRID_CACHE.popitem(last=False)
    return grid


def clear_cache() -> None:
    _GRID_CACHE.clear()


def _isnan(x: Any) -> Any:
    import numpy as np

    return np.isnan(x)
