"""How harvest plugs into the control service and its backtest.

* :class:`HarvestEvaluator` is a per-tick evaluator for ``ControlService.evaluators``:
  it builds one :class:`HarvestEngine` on the service's store, alarms (so
  ``harvest_readiness`` changes are notified like every alarm) and thresholds in force,
  and evaluates when due (``evaluate_every_s``), in the service's clock.
* :func:`backtest_ready_date` is registered with ``control.backtest`` so a backtest of
  proposed thresholds also shows the ready date they would give.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np

from control.harvest.config import HarvestConfig
from control.harvest.engine import HarvestEngine, ThresholdSource
from control.harvest.readiness import (
    BlockDaily,
    ReadinessRules,
    ReadinessState,
    Thresholds,
    evaluate_block,
)
from control.harvest.shop import shop_sink
from orchard.layout import Block

log = logging.getLogger(__name__)


class TickThresholds(ThresholdSource):
    """The thresholds the control tick already computed (crop defaults + overrides)."""

    def __init__(self) -> None:
        self.current: Mapping[str, Any] = {}

    def __call__(self, block: Block, on: date) -> Thresholds:
        effective = self.current.get(block.id)
        if effective is None:
            return Thresholds.from_crop(block.crop_profile)
        return Thresholds.from_crop(
            block.crop_profile,
            maturity=effective["harvest_threshold"],
            gdd_target=effective["gdd_target"],
        )


class HarvestEvaluator:
    """``ControlService.evaluators.append(HarvestEvaluator(settings.harvest))``."""

    def __init__(self, config: HarvestConfig | None = None) -> None:
        self.config = config or HarvestConfig()
        self.harvest: HarvestEngine | None = None
        self._thresholds = TickThresholds()

    def __repr__(self) -> str:
        return "HarvestEvaluator()"

    async def __call__(self, ctx: Any) -> None:
        if not self.config.enabled:
            return
        if self.harvest is None:
            webhooks = ctx.webhooks
            sink = shop_sink(
                ctx.engine,
                self.config,
                base=getattr(webhooks, "settings", None),
                dispatcher=getattr(webhooks, "dispatcher", None),
            )
            self.harvest = HarvestEngine(
                ctx.orchard,
                ctx.engine,
                self.config,
                alarms=ctx.alarms,
                thresholds=self._thresholds,
                sink=sink,
            )
        self._thresholds.current = ctx.thresholds
        await self.harvest.tick(ctx.influx, ctx.now)


def backtest_ready_date(block: Block, grid: Any, result: Any, thresholds: Any) -> date | None:
    """First local day in the grid on which the block would be ready with ``thresholds``.

    Needs a ``maturity`` field in the grid (None otherwise). Degree-days before the
    grid's first day are counted at the window's mean daily rate, the rule of
    :func:`~control.harvest.readiness.evaluate_block` for days without temperatures.
    Frost and heat alarms of the replay hold readiness back as they do live.
    """
    maturity = grid.field("maturity")
    if not np.isfinite(maturity).any():
        return None
    rows = [i for i, n in enumerate(grid.nodes) if n in set(block.sensor_nodes)]
    if not rows or grid.n_times == 0:
        return None
    # The backtest knows no farm time zone: its days are UTC days.
    local_days = np.array(
        [(datetime.fromtimestamp(t, UTC).date() - block.bloom_date).days for t in grid.times_s]
    )
    if local_days.max() < 0:
        return None
    n_days = int(local_days.max()) + 1
    nodes = [grid.nodes[i] for i in rows]
    mat = np.full((len(rows), n_days), np.nan)
    tmin = np.full((len(rows), n_days), np.nan)
    tmax = np.full((len(rows), n_days), np.nan)
    temperature = grid.field("temperature")
    for day in np.unique(local_days[local_days >= 0]):
        cols = local_days == day
        with np.errstate(all="ignore"):
            m = maturity[rows][:, cols]
            t = temperature[rows][:, cols]
            have_m = np.isfinite(m).any(axis=1)
            have_t = np.isfinite(t).any(axis=1)
            mat[have_m, day] = np.nanmedian(m[have_m], axis=1)
            tmin[have_t, day] = np.nanmin(t[have_t], axis=1)
            tmax[have_t, day] = np.nanmax(t[have_t], axis=1)
    days = [block.bloom_date + timedelta(days=i) for i in range(n_days)]
    block_tmin = _col_median(tmin)
    block_tmax = _col_median(tmax)
    th = Thresholds.from_crop(
        block.crop_profile,
        maturity=thresholds["harvest_threshold"],
        gdd_target=thresholds["gdd_target"],
    )
    blocking = _blocking_days(block, result, days)
    rules = ReadinessRules()
    first = max(0, int(local_days.min()))
    for day in range(first, n_days):
        series = BlockDaily(
            nodes=nodes,
            days=days[: day + 1],
            maturity=mat[:, : day + 1],
            tmin=block_tmin[: day + 1],
            tmax=block_tmax[: day + 1],
        )
        r = evaluate_block(
            block.id, block.crop_profile, series, th, rules, open_alarms=blocking[day]
        )
        if r.state is ReadinessState.READY:
            return days[day]
    return None


def _col_median(values: np.ndarray) -> np.ndarray:
    out = np.full(values.shape[1], np.nan)
    have = np.isfinite(values).any(axis=0)
    if have.any():
        out[have] = np.nanmedian(values[:, have], axis=0)
    return out


def _blocking_days(block: Block, result: Any, days: list[date]) -> list[tuple[str, ...]]:
    """Per day, the frost/heat alarm types of the replay open at the end of the day."""
    types = ("frost", "heat")
    transitions = sorted(
        (a for a in getattr(result, "alarms", []) if a.block == block.id and a.type in types),
        key=lambda a: a.t_s,
    )
    out: list[tuple[str, ...]] = []
    open_now: set[str] = set()
    i = 0
    for day in days:
        end = datetime.combine(day + timedelta(days=1), datetime.min.time(), UTC).timestamp()
        while i < len(transitions) and transitions[i].t_s < end:
            tr = transitions[i]
            if tr.kind == "clear":
                open_now.discard(tr.type)
            else:
                open_now.add(tr.type)
            i += 1
        out.append(tuple(sorted(open_now)))
    return out


def register() -> None:
    """Add the harvest ready date to control's backtests (idempotent)."""
    try:
        from control.backtest import register_readiness
    except ImportError:  # control without backtests: nothing to register with
        return
    register_readiness(backtest_ready_date)
