"""Synthetic weather: a daily climate per block, fronts, rain, scripted events, diurnal curves.

Deterministic for a seed and random-access by day (each day draws from its own seeded
generator), so the live simulator can start on any date without replaying the past and
the offline generator produces the same weather for the same seed.

The climate is deliberately simple (a seasonal cosine by latitude, elevation lapse, fronts
as a sum of slow random waves), because what matters to the rest of the system is a
plausible shape: cold dawns, warm afternoons, humidity falling as temperature rises,
multi-day warm and cold spells, rain days, and events a test can force on a date.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Literal

import numpy as np
import numpy.typing as npt

from orchard.agronomy import sat_vapour_pressure

FloatArray = npt.NDArray[np.float64]
EventKind = Literal["frost", "heat", "rain", "dry"]

# Defaults of scripted events, chosen to cross the crops' alarm thresholds
# (orchard.crops: frost t10 around -2.2 °C, heat 32-40 °C).
EVENT_DEFAULTS: dict[str, float] = {"frost": -4.0, "heat": 39.0, "rain": 30.0, "dry": 0.0}

SUNRISE_H = 6.0
"""Local solar hour of the daily minimum (day length variation is ignored)."""
PEAK_H = 15.0
"""Local solar hour of the daily maximum."""


@dataclass(frozen=True)
class WeatherEvent:
    """A scripted weather event starting on a local date and lasting ``days`` days.

    ``frost``: the dawn of each day reaches ``value`` °C (default -4), under clear dry sky.
    ``heat``: afternoons reach at least ``value`` °C (default 39), warm nights, dry air.
    ``rain``: ``value`` mm of rain each day (default 30).
    ``dry``: no rain at all (a drought spell).
    """

    kind: EventKind
    start: date
    days: int = 1
    value: float | None = None

    def covers(self, day: date) -> bool:
        return self.start <= day < self.start + timedelta(days=self.days)

    @property
    def amount(self) -> float:
        return EVENT_DEFAULTS[self.kind] if self.value is None else self.value


_EVENT_RE = re.compile(
    r"^(?P<kind>frost|heat|rain|dry)@(?P<date>\d{4}-\d{2}-\d{2})"
    r"(?::(?P<days>\d+))?(?:=(?P<value>-?\d+(?:\.\d+)?))?$"
)


def parse_events(text: str) -> list[WeatherEvent]:
    """Parse ``kind@YYYY-MM-DD[:days][=value]`` items separated by ``;`` or ``,``.

    Example: ``frost@2026-04-20=-5;heat@2026-07-10:4;rain@2026-06-01=40``.
    """
    events: list[WeatherEvent] = []
    for item in re.split(r"[;,]", text):
        item = item.strip()
        if not item:
            continue
        match = _EVENT_RE.match(item)
        if match is None:
            raise ValueError(
                f"bad weather event {item!r}: use kind@YYYY-MM-DD[:days][=value], "
                "kind one of frost, heat, rain, dry"
            )
        events.append(
            WeatherEvent(
                kind=match["kind"],  # type: ignore[arg-type]
                start=date.fromisoformat(match["date"]),
                days=int(match["days"] or 1),
                value=float(match["value"]) if match["value"] is not None else None,
            )
        )
    return events


@dataclass(frozen=True)
class Site:
    """Where the weather is made: a block's latitude and elevation."""

    latitude: float
    elevation_m: float


@dataclass(frozen=True)
class DailyWeather:
    """Daily values for a run of consecutive local dates (arrays of equal length)."""

    first_day: date
    t_min: FloatArray
    t_max: FloatArray
    rain_mm: FloatArray
    rain_start_h: FloatArray
    rain_hours: FloatArray
    dewpoint_depression: FloatArray
    """Tmin minus dew point, °C: small on wet days, large in dry heat."""
    solar_factor: FloatArray
    """Fraction of clear-sky sunshine (charges the node batteries)."""


@dataclass
class Weather:
    """The weather of one farm: fronts shared by all blocks, climate per block latitude."""

    seed: int = 0
    events: list[WeatherEvent] = field(default_factory=list)

    def __post_init__(self) -> None:
        rng = np.random.default_rng([self.seed, 0xF0])
        # Fronts: four slow waves with periods of 4-20 days, about 2.5 °C standard deviation.
        self._front_periods = rng.uniform(4.0, 20.0, 4)
        self._front_phases = rng.uniform(0.0, 2 * np.pi, 4)
        self._front_amplitudes = rng.uniform(1.2, 2.3, 4)
        # Wet and dry spells: rain probability swings on a ~3-week wave.
        self._wet_phase = float(rng.uniform(0.0, 2 * np.pi))
        self._draws: dict[int, tuple[float, ...]] = {}

    def _day_draws(self, ordinal: int) -> tuple[float, ...]:
        """The random numbers of one day, shared by every block of the farm."""
        cached = self._draws.get(ordinal)
        if cached is None:
            day_rng = np.random.default_rng([self.seed, ordinal])
            normal = day_rng.normal(0.0, 1.0, 3)
            uniform = day_rng.uniform(0.0, 1.0, 3)
            amount = day_rng.exponential(8.0)  # ESTIMATE: mean 8 mm per rain day
            cached = (*normal.tolist(), *uniform.tolist(), float(amount))
            self._draws[ordinal] = cached
        return cached

    def daily(self, site: Site, first: date, days: int) -> DailyWeather:
        """Daily weather at ``site`` for ``days`` local dates from ``first``."""
        ordinals = np.arange(first.toordinal(), first.toordinal() + days, dtype=np.float64)
        doy = np.array(
            [(first + timedelta(days=i)).timetuple().tm_yday for i in range(days)], dtype=float
        )
        lat = abs(site.latitude)
        # ESTIMATE fitted by eye to East Asian stations (Xi'an 34°N, Xiamen 24°N, Haikou
        # 20°N): annual mean falls 0.65 °C per degree of latitude, the seasonal swing grows
        # with latitude; standard lapse rate 6.5 °C/km.
        annual_mean = 38.0 - 0.65 * lat - 0.0065 * site.elevation_m
        amplitude = max(2.0, 0.45 * lat - 2.0)
        warmest_doy = 200.0 if site.latitude >= 0 else 17.0
        seasonal = annual_mean + amplitude * np.cos(2 * np.pi * (doy - warmest_doy) / 365.25)
        fronts = np.zeros(days)
        for period, phase, amp in zip(
            self._front_periods, self._front_phases, self._front_amplitudes, strict=True
        ):
            fronts += amp * np.sin(2 * np.pi * ordinals / period + phase)

        draws = np.array([self._day_draws(int(o)) for o in ordinals]).reshape(days, 7)
        noise, dtr_noise, dew_noise, u_wet, rain_start, rain_hours, amount = draws.T
        p_wet = np.clip(0.22 + 0.15 * np.sin(2 * np.pi * ordinals / 23.0 + self._wet_phase), 0, 1)
        wet = u_wet < p_wet
        rain = np.where(wet, np.maximum(amount, 0.5), 0.0)
        mean = seasonal + fronts + 1.0 * noise
        # Diurnal range ~11 °C on clear days, halved under rain clouds (ESTIMATE).
        dtr = np.clip(11.0 + 2.0 * dtr_noise, 5.0, 18.0) * np.where(wet, 0.55, 1.0)
        t_min = mean - dtr / 2.0
        t_max = mean + dtr / 2.0 - np.where(wet, 1.5, 0.0)
        dew_dep = np.where(wet, 0.5, np.clip(2.5 + 1.0 * dew_noise, 0.5, 6.0))
        solar = np.where(wet, 0.35, 1.0)

        for event in self.events:
            for i in range(days):
                day = first + timedelta(days=i)
                if not event.covers(day):
                    continue
                if event.kind == "frost":
                    t_min[i] = min(t_min[i], event.amount)
                    t_max[i] = max(t_max[i], t_min[i] + 8.0)
                    rain[i], dew_dep[i], solar[i] = 0.0, 1.0, 1.0
                elif event.kind == "heat":
                    t_max[i] = max(t_max[i], event.amount)
                    t_min[i] = max(t_min[i], event.amount - 14.0)
                    rain[i], dew_dep[i], solar[i] = 0.0, 9.0, 1.0
                elif event.kind == "rain":
                    rain[i], dew_dep[i], solar[i] = event.amount, 0.3, 0.35
                elif event.kind == "dry":
                    rain[i] = 0.0
                    solar[i] = 1.0
        hours = np.where(rain > 0, 2.0 + 6.0 * rain_hours, 0.0)
        start_h = rain_start * (24.0 - np.maximum(hours, 1e-9))
        return DailyWeather(
            first_day=first,
            t_min=t_min,
            t_max=t_max,
            rain_mm=rain,
            rain_start_h=start_h,
            rain_hours=hours,
            dewpoint_depression=dew_dep,
            solar_factor=solar,
        )


def diurnal_temperature(
    hour: FloatArray,
    t_max_prev: FloatArray,
    t_min: FloatArray,
    t_max: FloatArray,
    t_min_next: FloatArray,
) -> FloatArray:
    """Air temperature at local solar ``hour`` of a day, from the days' extremes.

    Cosine rise from Tmin at sunrise to Tmax at 15:00, cosine fall to the next dawn's Tmin;
    before sunrise the curve is still falling from the previous afternoon's Tmax
    (``t_max_prev``). The curve's daily extremes are exactly Tmin and Tmax, so daily
    GDD computed from readings agrees with the model's.
    """
    rising = (
        t_min
        + (t_max - t_min) * (1.0 - np.cos(np.pi * (hour - SUNRISE_H) / (PEAK_H - SUNRISE_H))) / 2.0
    )
    span = 24.0 - PEAK_H + SUNRISE_H
    falling = t_max - (t_max - t_min_next) * (1.0 - np.cos(np.pi * (hour - PEAK_H) / span)) / 2.0
    night = (
        t_max_prev
        - (t_max_prev - t_min) * (1.0 - np.cos(np.pi * (hour + 24.0 - PEAK_H) / span)) / 2.0
    )
    return np.where(hour < SUNRISE_H, night, np.where(hour < PEAK_H, rising, falling))


def relative_humidity(t_air: FloatArray, dewpoint: FloatArray) -> FloatArray:
    """RH from air temperature and dew point: falls as the air warms over a fixed dew point."""
    rh = 100.0 * sat_vapour_pressure(dewpoint) / sat_vapour_pressure(t_air)
    return np.clip(rh, 5.0, 100.0)


def daylight_shape(hour: FloatArray) -> FloatArray:
    """Share of a day's radiation-driven flux per hour (integrates to 1 over the day)."""
    inside = (hour > SUNRISE_H) & (hour < SUNRISE_H + 12.0)
    return np.where(inside, (np.pi / 24.0) * np.sin(np.pi * (hour - SUNRISE_H) / 12.0), 0.0)
