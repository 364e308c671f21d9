"""Harvest readiness of a block from its daily maturity and temperature series.

The rule (agronomy-reference.md, "A readiness rule worth encoding"): degree-days since
bloom reach the cultivar's target AND the maturity index passes its threshold on most
healthy nodes AND no frost or heat alarm is open on the block. Everything here works
on arrays, so a replay of a season and the daily evaluation run the same code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt

from control.harvest.forecast import Forecast, ForecastInputs, ForecastRules, forecast_ready
from orchard.agronomy import growing_degree_days
from orchard.crops import CropProfile

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


class ReadinessState(StrEnum):
    NOT_READY = "not_ready"
    READY_SOON = "ready_soon"
    READY = "ready"
    HARVESTED = "harvested"


@dataclass(frozen=True, slots=True)
class ReadinessRules:
    min_ready_share: float = 0.75  # "most nodes": three in four healthy nodes past threshold
    ready_soon_days: int = 7
    stale_after_days: int = 2  # a node silent this long no longer speaks for the block
    stuck_days: int = 4  # identical daily values this many days: a stuck sensor
    grade_days: int = 1  # the grade looks at the readings of the last day: the fruit as it is now
    forecast: ForecastRules = field(default_factory=ForecastRules)


@dataclass(slots=True)
class BlockDaily:
    """Daily series of one block, from bloom to ``days[-1]``; nan where nothing arrived.

    ``maturity`` is nodes × days (the node's daily median), ``tmin``/``tmax`` are the
    block's daily extremes (median over its nodes, so one bad probe cannot move them).
    ``gdd_days`` leaves out a day still in progress: half a day's extremes would
    understate its degree-days.
    """

    nodes: list[str]
    days: list[date]
    maturity: FloatArray
    tmin: FloatArray
    tmax: FloatArray
    gdd_days: int | None = None  # leading days whose temperatures are complete (None: all)


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The harvest thresholds in force for a block (crop defaults + agronomist overrides)."""

    maturity: float
    gdd_target: float
    ideal_low: float
    ideal_high: float
    gdd_base: float
    gdd_cutoff: float

    @classmethod
    def from_crop(cls, crop: CropProfile, **overrides: float) -> Thresholds:
        values: dict[str, float] = {
            "maturity": crop.harvest_threshold,
            "gdd_target": crop.gdd_target,
            "ideal_low": crop.ideal_band[0],
            "ideal_high": crop.ideal_band[1],
            "gdd_base": crop.gdd_base_c,
            "gdd_cutoff": crop.gdd_cutoff_c,
        }
        values.update({k: float(v) for k, v in overrides.items() if k in values})
        return cls(**values)


@dataclass(frozen=True, slots=True)
class Readiness:
    block: str
    as_of: date
    state: ReadinessState
    conditions_met: bool
    healthy_nodes: int
    nodes_total: int
    ready_nodes: int
    ready_share: float
    maturity_median: float | None
    maturity_level: float | None  # the quantile that must pass: (1 - min_ready_share)
    threshold: float
    gdd_cum: float
    gdd_target: float
    gdd_missing_days: int
    blocking_alarms: tuple[str, ...]
    unhealthy: dict[str, str]
    forecast: Forecast
    reasons: tuple[str, ...]

    def evidence(self) -> dict[str, Any]:
        """What the decision rests on, in a form a shop or a grower can read."""
        return {
            "as_of": self.as_of.isoformat(),
            "state": self.state.value,
            "healthy_nodes": self.healthy_nodes,
            "nodes_total": self.nodes_total,
            "ready_nodes": self.ready_nodes,
            "ready_share": round(self.ready_share, 3),
            "maturity_median": _round(self.maturity_median),
            "maturity_threshold": self.threshold,
            "gdd_since_bloom": round(self.gdd_cum, 1),
            "gdd_target": self.gdd_target,
            "blocking_alarms": list(self.blocking_alarms),
            "unhealthy_nodes": dict(self.unhealthy),
            "forecast_date": _iso(self.forecast.date),
            "forecast_earliest": _iso(self.forecast.earliest),
            "forecast_latest": _iso(self.forecast.latest),
            "forecast_reason": self.forecast.reason,
            "reasons": list(self.reasons),
        }


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def _iso(value: date | None) -> str | None:
    return None if value is None else value.isoformat()


def node_health(
    maturity: FloatArray,
    plausible: tuple[float, float],
    rules: ReadinessRules,
    flagged: dict[str, str],
    nodes: Sequence[str],
) -> tuple[BoolArray, dict[str, str]]:
    """Which nodes may vote today, and why each other one may not."""
    n_nodes, n_days = maturity.shape
    reasons: dict[str, str] = {}
    healthy = np.ones(n_nodes, dtype=bool)
    recent = maturity[:, max(0, n_days - rules.stale_after_days) :]
    silent: BoolArray = np.asarray(~np.isfinite(recent).any(axis=1))
    latest = _latest(maturity, rules.stale_after_days)
    with np.errstate(invalid="ignore"):
        implausible: BoolArray = np.asarray(
            np.isfinite(latest) & ((latest < plausible[0]) | (latest > plausible[1]))
        )
    stuck = _stuck(maturity, rules.stuck_days)
    for i, node in enumerate(nodes):
        if node in flagged:
            reasons[node] = flagged[node]
        elif silent[i]:
            reasons[node] = f"no maturity reading for {rules.stale_after_days} days"
        elif implausible[i]:
            reasons[node] = f"maturity {latest[i]:.2f} outside the plausible range"
        elif stuck[i]:
            reasons[node] = f"maturity unchanged for {rules.stuck_days} days (stuck sensor)"
        else:
            continue
        healthy[i] = False
    return healthy, reasons


def _stuck(maturity: FloatArray, days: int) -> BoolArray:
    """Nodes whose daily value has not moved for ``days`` days while their neighbours' did.

    Fruit that has levelled off reads the same on every node; a frozen sensor is the
    one that stays put while the rest of the block moves.
    """
    n_nodes, n_days = maturity.shape
    if n_days < days or n_nodes < 2:
        return np.zeros(n_nodes, dtype=bool)
    tail = maturity[:, n_days - days :]
    complete = np.isfinite(tail).all(axis=1)
    flat = complete & (tail.max(axis=1, initial=-np.inf) == tail.min(axis=1, initial=np.inf))
    moving = complete & ~flat
    if not moving.any():
        return np.zeros(n_nodes, dtype=bool)
    # Maturity never goes back, so a frozen probe is soon left behind by its moving
    # neighbours; fruit levelled off at over-maturity sits at the top of the block.
    moving_now = float(np.median(tail[moving, -1]))
    return np.asarray(flat & (tail[:, -1] < moving_now), dtype=bool)


def _latest(maturity: FloatArray, within_days: int) -> FloatArray:
    """Each node's most recent daily value within the last days (nan if none)."""
    tail = maturity[:, max(0, maturity.shape[1] - within_days) :]
    out = np.full(maturity.shape[0], np.nan)
    for col in range(tail.shape[1]):  # later columns overwrite earlier ones
        have = np.isfinite(tail[:, col])
        out[have] = tail[have, col]
    return out


def plausible_range(crop: CropProfile) -> tuple[float, float]:
    # ESTIMATE: an index below 0 or above twice the top of the ideal band is a sensor
    # fault for every crop shipped (starch 1-8, SSC to ~25 %, ratio to ~25, DM to ~25 %).
    return (0.0, 2.0 * crop.ideal_band[1])


def evaluate_block(
    block: str,
    crop: CropProfile,
    series: BlockDaily,
    thresholds: Thresholds,
    rules: ReadinessRules = ReadinessRules(),
    *,
    open_alarms: Sequence[str] = (),
    flagged_nodes: dict[str, str] | None = None,
    previous: ReadinessState | None = None,
) -> Readiness:
    """Readiness of one block as of the last day of ``series``."""
    as_of = series.days[-1]
    n_nodes = len(series.nodes)
    healthy, unhealthy = node_health(
        series.maturity, plausible_range(crop), rules, flagged_nodes or {}, series.nodes
    )
    latest = _latest(series.maturity, rules.stale_after_days)
    voting = latest[healthy & np.isfinite(latest)]
    healthy_count = int(voting.size)
    ready_nodes = int((voting >= thresholds.maturity).sum())
    ready_share = ready_nodes / healthy_count if healthy_count else 0.0

    complete = len(series.days) if series.gdd_days is None else series.gdd_days
    daily_gdd = growing_degree_days(
        series.tmin[:complete], series.tmax[:complete], thresholds.gdd_base, thresholds.gdd_cutoff
    )
    missing = ~np.isfinite(daily_gdd)
    known = daily_gdd[~missing]
    # A day without temperatures still had weather: count it at the season's mean rate.
    fill = float(known.mean()) if known.size else 0.0
    cumulative = np.cumsum(np.where(missing, fill, daily_gdd))
    gdd_cum = float(cumulative[-1]) if cumulative.size else 0.0
    # Degree-days at the end of each day; a day in progress counts half a day's worth.
    gdd_at_day = np.full(len(series.days), np.nan)
    gdd_at_day[:complete] = cumulative
    if complete < len(series.days):
        gdd_at_day[complete:] = gdd_cum + 0.5 * (float(known[-7:].mean()) if known.size else 0.0)

    q = 1.0 - rules.min_ready_share
    level_series = _daily_quantile(series.maturity, healthy, q)
    offsets = np.array([(d - as_of).days for d in series.days], dtype=float)
    forecast = forecast_ready(
        ForecastInputs(
            as_of=as_of,
            day_offsets=offsets,
            maturity_level=level_series,
            threshold=thresholds.maturity,
            healthy_nodes=healthy_count,
            gdd_cum=gdd_cum,
            gdd_target=thresholds.gdd_target,
            daily_gdd=daily_gdd,
            gdd_cum_series=gdd_at_day,
        ),
        rules.forecast,
    )

    reasons: list[str] = []
    maturity_ok = healthy_count >= rules.forecast.min_nodes and ready_share >= rules.min_ready_share
    if healthy_count < rules.forecast.min_nodes:
        reasons.append(
            f"only {healthy_count} healthy node(s) report maturity; "
            f"{rules.forecast.min_nodes} needed"
        )
    elif not maturity_ok:
        reasons.append(
            f"{ready_nodes} of {healthy_count} healthy nodes past {crop.maturity_index} "
            f"{thresholds.maturity:g} ({rules.min_ready_share:.0%} needed)"
        )
    gdd_ok = gdd_cum >= thresholds.gdd_target
    if not gdd_ok:
        reasons.append(f"{gdd_cum:.0f} of {thresholds.gdd_target:.0f} degree-days since bloom")
    blocking = tuple(sorted(open_alarms))
    if blocking:
        reasons.append("held back by open alarm(s): " + ", ".join(blocking))
    conditions_met = maturity_ok and gdd_ok and not blocking

    if previous is ReadinessState.HARVESTED:
        state = ReadinessState.HARVESTED
    elif conditions_met:
        state = ReadinessState.READY
    elif previous is ReadinessState.READY and not blocking:
        # Ripe fruit does not unripen: a sensor dropping out after the block was declared
        # ready must not flip it back (only an open frost or heat alarm does).
        state = ReadinessState.READY
        reasons.insert(0, "ready since an earlier evaluation")
    elif forecast.days is not None and forecast.days <= rules.ready_soon_days and not blocking:
        state = ReadinessState.READY_SOON
    else:
        state = ReadinessState.NOT_READY
    if conditions_met:
        reasons.append(
            f"{ready_nodes} of {healthy_count} healthy nodes past {crop.maturity_index} "
            f"{thresholds.maturity:g}, {gdd_cum:.0f} degree-days since bloom"
        )

    return Readiness(
        block=block,
        as_of=as_of,
        state=state,
        conditions_met=conditions_met,
        healthy_nodes=healthy_count,
        nodes_total=n_nodes,
        ready_nodes=ready_nodes,
        ready_share=ready_share,
        maturity_median=float(np.median(voting)) if voting.size else None,
        maturity_level=float(np.quantile(voting, q)) if voting.size else None,
        threshold=thresholds.maturity,
        gdd_cum=gdd_cum,
        gdd_target=thresholds.gdd_target,
        gdd_missing_days=int(missing.sum()),
        blocking_alarms=blocking,
        unhealthy=unhealthy,
        forecast=forecast,
        reasons=tuple(reasons),
    )


def _daily_quantile(maturity: FloatArray, healthy: BoolArray, q: float) -> FloatArray:
    """Per day, the q-quantile over today's healthy nodes: the value that must pass."""
    rows = maturity[healthy]
    out = np.full(maturity.shape[1], np.nan)
    if rows.size == 0:
        return out
    have = np.isfinite(rows).any(axis=0)
    if have.any():
        out[have] = np.nanquantile(rows[:, have], q, axis=0)
    return out


def season_days(bloom: date, as_of: date) -> list[date]:
    return [bloom + timedelta(days=i) for i in range((as_of - bloom).days + 1)]
