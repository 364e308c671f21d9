"""Ready-date forecast from the maturity trend and the GDD rate.

The maturity trend is a Theil-Sen fit (median of pairwise slopes) over the recent daily
values of the block's readiness quantile, so one wild reading or one bad day cannot drag
the line. The band comes from the rank-based confidence interval of the Theil-Sen slope
(Sen 1968), the same construction as ``scipy.stats.theilslopes``. The GDD part divides
the degree-days still missing by the recent daily rate. The block is ready only when
both hold, so the forecast is the later of the two.

When the evidence cannot support a date (too few nodes, too little history, an index
that does not rise, or one too noisy for its trend) the forecast carries a reason and
no date: a grower plans pickers on this, an invented date costs money.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Literal

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

Z_90 = 1.6448536269514722  # two-sided 90 % normal quantile


@dataclass(frozen=True, slots=True)
class TrendFit:
    slope: float  # index units per day
    slope_low: float
    slope_high: float
    level: float  # fitted index at the last day
    residual_mad: float
    points: int


def theil_sen(x: FloatArray, y: FloatArray, z: float = Z_90) -> TrendFit:
    """Theil-Sen slope with its rank-based confidence interval; x in days."""
    mask = np.isfinite(x) & np.isfinite(y)
    x, y = x[mask], y[mask]
    n = int(x.size)
    if n < 2:
        raise ValueError("a trend needs at least two points")
    i, j = np.triu_indices(n, k=1)
    dx = x[j] - x[i]
    ok = dx != 0
    slopes = np.sort((y[j] - y[i])[ok] / dx[ok])
    if slopes.size == 0:
        raise ValueError("a trend needs points on at least two different days")
    slope = float(np.median(slopes))
    intercept = float(np.median(y - slope * x))
    # Variance of Kendall's S without tie correction (Sen 1968, eq. 2.6).
    sigma = math.sqrt(n * (n - 1) * (2 * n + 5) / 18.0)
    m = slopes.size
    low_rank = int(np.clip(round((m - z * sigma) / 2.0) - 1, 0, m - 1))
    high_rank = int(np.clip(round((m + z * sigma) / 2.0), 0, m - 1))
    residuals = y - (intercept + slope * x)
    mad = float(np.median(np.abs(residuals - np.median(residuals))))
    level = intercept + slope * float(x.max())
    return TrendFit(
        slope=slope,
        slope_low=float(slopes[low_rank]),
        slope_high=float(slopes[high_rank]),
        level=level,
        residual_mad=mad,
        points=n,
    )


@dataclass(frozen=True, slots=True)
class Forecast:
    """Days from ``as_of`` to readiness, with a band; or a reason why there is no date."""

    as_of: date
    days: float | None = None
    low_days: float | None = None
    high_days: float | None = None
    reason: str | None = None
    detail: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.days is not None

    @property
    def date(self) -> dt.date | None:
        if self.days is None:
            return None
        return self.as_of + timedelta(days=math.ceil(self.days))

    @property
    def earliest(self) -> dt.date | None:
        return None if self.low_days is None else self.as_of + timedelta(math.ceil(self.low_days))

    @property
    def latest(self) -> dt.date | None:
        return None if self.high_days is None else self.as_of + timedelta(math.ceil(self.high_days))


@dataclass(frozen=True, slots=True)
class ForecastInputs:
    as_of: date
    day_offsets: FloatArray  # days relative to as_of (<= 0), one per daily value
    maturity_level: FloatArray  # the block's readiness quantile per day (nan: no data)
    threshold: float
    healthy_nodes: int
    gdd_cum: float
    gdd_target: float
    daily_gdd: FloatArray  # recent daily GDD, oldest first (nan: no data)
    # Degree-days since bloom at each of day_offsets (for the trend against heat units).
    gdd_cum_series: FloatArray | None = None


@dataclass(frozen=True, slots=True)
class ForecastRules:
    min_nodes: int = 3
    min_history_days: int = 7
    trend_window_days: int = 21
    gdd_rate_days: int = 10
    max_forecast_days: float = 120.0
    # Follow the seasonal drift of the daily GDD (warming in spring, cooling in autumn),
    # fitted over the trend window, instead of assuming today's rate for weeks ahead.
    rate_drift: bool = True
    # "gdd": maturity is fitted against degree-days since bloom and projected with the
    # recent GDD rate (fruit ripens by heat, so a warm spell ahead of a cool one is
    # handled); "days": fitted against calendar days.
    clock: Literal["gdd", "days"] = "gdd"
    # The fit's scatter must stay small next to the rise of the trend over the window,
    # otherwise the line says nothing about when the threshold is crossed.
    max_noise_ratio: float = 0.5
    # A band wider than this (days, or the forecast itself if longer) is not a date.
    max_band_days: float = 14.0


def forecast_ready(inp: ForecastInputs, rules: ForecastRules = ForecastRules()) -> Forecast:
    if inp.healthy_nodes < rules.min_nodes:
        return Forecast(
            inp.as_of,
            reason=f"too few healthy nodes ({inp.healthy_nodes} < {rules.min_nodes})",
        )
    window = inp.day_offsets >= -(rules.trend_window_days - 1)
    use_gdd = rules.clock == "gdd" and inp.gdd_cum_series is not None
    x = (inp.gdd_cum_series if use_gdd else inp.day_offsets)[window]  # type: ignore[index]
    y = inp.maturity_level[window]
    have = np.isfinite(y) & np.isfinite(x)
    if int(have.sum()) < rules.min_history_days:
        return Forecast(
            inp.as_of,
            reason=f"too little maturity history ({int(have.sum())} days with data, "
            f"{rules.min_history_days} needed)",
        )

    # The GDD rate ahead: the mean of the last days. Weather, not sensors, makes it
    # uncertain: a band of one standard error of the mean each way, at least 10 %.
    recent = inp.daily_gdd[-rules.gdd_rate_days :]
    recent = recent[np.isfinite(recent)]
    if recent.size < min(rules.min_history_days, rules.gdd_rate_days):
        return Forecast(inp.as_of, reason="too little temperature history")
    rate = float(recent.mean())
    if rate <= 0.05:
        return Forecast(inp.as_of, reason="degree-days are not accumulating (too cold)")
    spread = max(0.1, float(recent.std(ddof=1) / math.sqrt(recent.size)) / rate)
    drift = _rate_drift(inp.daily_gdd, rules) if rules.rate_drift else 0.0
    # The mean rate belongs to the middle of its window, half a window ago.
    rate_now = rate + drift * rules.gdd_rate_days / 2.0

    def days_for(gdd: float, scale: float = 1.0) -> float:
        return _days_to_accumulate(gdd, rate_now * scale, drift * scale)

    fit = theil_sen(x[have], y[have])
    unit = "gdd" if use_gdd else "day"
    detail = {
        f"slope_per_{unit}": round(fit.slope, 5),
        "slope_low": round(fit.slope_low, 5),
        "slope_high": round(fit.slope_high, 5),
        "level": round(fit.level, 3),
        "residual_mad": round(fit.residual_mad, 4),
        "trend_days": float(fit.points),
        "gdd_rate_per_day": round(rate, 2),
    }
    remaining = inp.threshold - fit.level
    if remaining <= 0:
        m_need, m_low, m_high = 0.0, 0.0, 0.0
    else:
        if fit.slope <= 0 or fit.slope_low <= 0:
            return Forecast(
                inp.as_of, reason="maturity index is not rising clearly yet", detail=detail
            )
        scatter = 1.4826 * fit.residual_mad  # MAD scaled to a standard deviation
        rise = fit.slope * float(x[have].max() - x[have].min())
        if scatter > rules.max_noise_ratio * rise:
            return Forecast(
                inp.as_of,
                reason="maturity index too noisy for its trend "
                f"(scatter {scatter:.2f} against a rise of {rise:.2f} over the window)",
                detail=detail,
            )
        # In the fit's own unit: degree-days or days still needed.
        m_need = remaining / fit.slope
        m_low = remaining / fit.slope_high
        m_high = remaining / fit.slope_low

    gdd_missing = max(0.0, inp.gdd_target - inp.gdd_cum)
    slow, fast = max(1 - spread, 0.2), 1 + spread
    if use_gdd:
        days = days_for(max(m_need, gdd_missing))
        low = days_for(max(m_low, gdd_missing), fast)
        high = days_for(max(m_high, gdd_missing), slow)
        m_days = days_for(m_need)
    else:
        m_days = m_need
        days = max(m_need, days_for(gdd_missing))
        low = max(m_low, days_for(gdd_missing, fast))
        high = max(m_high, days_for(gdd_missing, slow))
    g_days = days_for(gdd_missing)
    detail["gdd_rate_drift_per_day"] = round(drift, 3)

    if days > rules.max_forecast_days:
        return Forecast(
            inp.as_of,
            reason=f"ready date more than {rules.max_forecast_days:.0f} days away",
            detail=detail,
        )
    detail["maturity_days"] = round(m_days, 1)
    detail["gdd_days"] = round(g_days, 1)
    if high - low > max(rules.max_band_days, days):
        return Forecast(
            inp.as_of,
            reason=f"maturity trend too uncertain (somewhere between {low:.0f} and "
            f"{high:.0f} days)",
            detail=detail,
        )
    return Forecast(inp.as_of, days=days, low_days=low, high_days=high, detail=detail)


def _rate_drift(daily_gdd: FloatArray, rules: ForecastRules) -> float:
    """Theil-Sen slope of the daily GDD over the trend window (degree-days per day²)."""
    tail = daily_gdd[-rules.trend_window_days :]
    x = np.arange(tail.size, dtype=float)
    have = np.isfinite(tail)
    if int(have.sum()) < rules.min_history_days:
        return 0.0
    try:
        return theil_sen(x[have], tail[have]).slope
    except ValueError:
        return 0.0


def _days_to_accumulate(gdd: float, rate: float, drift: float, horizon: int = 400) -> float:
    """Days for ``gdd`` degree-days at a rate starting at ``rate`` and drifting linearly.

    The rate is held between 0.75 and 1.25 times today's: a straight line fitted on three
    weeks must not be extrapolated into a heatwave or a winter.
    """
    if gdd <= 0:
        return 0.0
    if rate <= 0:
        return math.inf
    daily = np.clip(rate + drift * (np.arange(horizon) + 0.5), 0.75 * rate, 1.25 * rate)
    total = np.cumsum(daily)
    k = int(np.searchsorted(total, gdd))
    if k >= horizon:
        return math.inf
    before = float(total[k - 1]) if k else 0.0
    return k + (gdd - before) / float(daily[k])
