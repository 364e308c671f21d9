"""The orchard's physics, vectorised over every sensor node of the orchard (no MQTT).

:class:`OrchardModel` holds the state that needs integrating (root-zone soil water, water
still on its way down, battery charge) and advances it in steps of at most 15 simulated
minutes; air temperature, humidity and maturity are closed-form functions of time and the
daily weather, so they can be evaluated for many times at once.

Water balance per node (FAO-56 ch. 8, in volumetric form over the crop's root depth Zr):
ETc = ET0 (Hargreaves, FAO-56 Eq. 52) x Kc (crop curve) x Ks (FAO-56 Eq. 84 water stress),
spread over daylight hours; rain and irrigation pass through two linear reservoirs in
series (a Nash cascade) before reaching the root zone, so water arrives hours later;
water above field capacity drains; the content stays between wilting point and saturation.

Maturity per node: the crop's index at fruit set plus a share of the way to the harvest
threshold equal to growing degree days since bloom over the crop's ``gdd_target``
(agronomy-reference.md averaging method with horizontal cutoff), scaled by a per-node rate.
GDD never decrease, so maturity never decreases.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import numpy.typing as npt

from firmware_sim.weather import (
    DailyWeather,
    Site,
    Weather,
    WeatherEvent,
    daylight_shape,
    diurnal_temperature,
    relative_humidity,
)
from orchard.agronomy import (
    depletion_fraction,
    et0_hargreaves,
    extraterrestrial_radiation,
    growing_degree_days,
    total_available_water,
)
from orchard.layout import Block, Orchard

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

MAX_STEP_S = 900.0
"""Longest integration step of the soil and battery state."""
EPOCH_ORDINAL = date(1970, 1, 1).toordinal()

# ESTIMATE: saturation ~0.15 m³/m³ above field capacity (total porosity 0.4-0.5 for
# these textures); FAO-56 does not tabulate it.
SATURATION_ABOVE_FC = 0.15
# ESTIMATE: time constant of each of the two reservoirs water passes on its way to the
# root zone, hours; the peak arrives after about one constant, the mean after two.
INFILTRATION_LAG_H = {
    "sand": 1.5,
    "sandy_loam": 2.0,
    "loam": 3.0,
    "silty_clay_loam": 4.0,
    "clay": 5.0,
}
DRAINAGE_TAU_H = 12.0  # ESTIMATE: water above field capacity drains within about a day.

# Battery: Li-ion 3.3-4.2 V with a small solar panel (ESTIMATE, typical LoRa node).
BATTERY_EMPTY_V = 3.3
BATTERY_FULL_V = 4.2
BATTERY_DRAIN_PER_H = 0.002
BATTERY_SOLAR_PER_DAY = 0.12
DYING_BATTERY_HOURS = 48.0


@dataclass(frozen=True)
class Sample:
    """What every node measures at one instant (arrays over nodes)."""

    t: float
    temperature: FloatArray
    humidity: FloatArray
    soil_moisture: FloatArray
    maturity: FloatArray
    battery: FloatArray
    rssi: IntArray
    battery_soc: FloatArray


@dataclass
class _Irrigation:
    block: int
    nodes: IntArray
    start: float
    end: float
    mm_per_h: float
    valve: str | None


def _utc_offset_s(timezone: str, at: datetime) -> float:
    try:
        offset = at.astimezone(ZoneInfo(timezone)).utcoffset()
    except ZoneInfoNotFoundError:
        return 0.0
    return offset.total_seconds() if offset is not None else 0.0


def _crop_cap(block: Block) -> float:
    crop = block.crop_profile
    _, high = crop.ideal_band
    # Past the ideal band fruit keeps maturing into over-maturity, then levels off.
    return high + 0.5 * (high - crop.harvest_threshold)


class OrchardModel:
    """Physical state of every sensor node of an orchard, advanced through simulated time.

    Times are POSIX seconds (UTC). Local solar time is taken from the farm's timezone
    offset at ``start`` (fixed for the run).
    """

    def __init__(
        self,
        orchard: Orchard,
        *,
        start: datetime,
        seed: int = 0,
        weather: Weather | Sequence[WeatherEvent] | None = None,
        max_step_s: float = MAX_STEP_S,
    ) -> None:
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        self.orchard = orchard
        self.seed = seed
        self.weather = (
            weather if isinstance(weather, Weather) else Weather(seed, list(weather or ()))
        )
        self.max_step_s = max_step_s
        self.tz_offset_s = _utc_offset_s(orchard.farm.timezone, start)
        self.blocks = list(orchard.blocks)
        self.block_index = {b.id: i for i, b in enumerate(self.blocks)}
        self.node_ids: list[str] = []
        self.node_block_ids: list[str] = []
        block_of_node: list[int] = []
        for bi, block in enumerate(self.blocks):
            for node in block.sensor_nodes:
                self.node_ids.append(node)
                self.node_block_ids.append(block.id)
                block_of_node.append(bi)
        self.node_index = {n: i for i, n in enumerate(self.node_ids)}
        self.node_block: IntArray = np.asarray(block_of_node, dtype=np.int64)
        n = len(self.node_ids)
        nb = self.node_block

        def per_block(values: list[float]) -> FloatArray:
            return np.asarray(values, dtype=np.float64)

        self._lat = per_block([b.latitude for b in self.blocks])
        soils = [b.soil_profile for b in self.blocks]
        crops = [b.crop_profile for b in self.blocks]
        self.theta_fc = per_block([s.theta_fc for s in soils])[nb]
        self.theta_wp = per_block([s.theta_wp for s in soils])[nb]
        self.theta_sat = self.theta_fc + SATURATION_ABOVE_FC
        self.root_depth = per_block([c.root_depth_m for c in crops])[nb]
        self.p_table = per_block([c.depletion_p for c in crops])[nb]
        self.lag_h = per_block([INFILTRATION_LAG_H.get(b.soil, 3.0) for b in self.blocks])[nb]
        self.irrigation_mm_h = per_block(
            [b.irrigation_rate_mm_h * b.application_efficiency for b in self.blocks]
        )
        self.gdd_base = per_block([c.gdd_base_c for c in crops])[nb]
        self.gdd_cut = per_block([c.gdd_cutoff_c for c in crops])[nb]
        self.gdd_target = per_block([c.gdd_target for c in crops])[nb]
        self.m_start = per_block([c.maturity_at_fruit_set for c in crops])[nb]
        self.m_threshold = per_block([c.harvest_threshold for c in crops])[nb]
        self.m_cap = per_block([_crop_cap(b) for b in self.blocks])[nb]

        rng = np.random.default_rng([seed, 0x5EED])
        # Node-to-node spread (ESTIMATE): microclimate, emitter and probe variation.
        self.t_offset = rng.normal(0.0, 0.4, n)
        self.et_mult = rng.uniform(0.85, 1.15, n)
        self.irrigation_mult = rng.uniform(0.85, 1.15, n)
        self.probe_offset = rng.normal(0.0, 0.006, n)
        self.maturity_rate = rng.uniform(0.94, 1.06, n)
        self.m_node_start = self.m_start + rng.normal(0.0, 0.03, n) * (
            self.m_threshold - self.m_start
        )
        self.rssi_base = rng.uniform(-96.0, -62.0, n)
        self.theta = self.theta_fc - rng.uniform(0.0, 0.02, n)
        self.soc = rng.uniform(0.7, 0.95, n)
        self.store_upper = np.zeros(n)
        self.store_lower = np.zeros(n)
        self.battery_dying = np.zeros(n, dtype=bool)
        self._noise = np.random.default_rng([seed, 0xA1])
        self._irrigations: list[_Irrigation] = []

        self.t = start.timestamp()
        self.start = start
        blooms = [b.bloom_date for b in self.blocks]
        self.origin = min([*blooms, self.local_date(self.t)]) - timedelta(days=3)
        self._days = 0
        self._tmin = np.zeros((len(self.blocks), 0))
        self._tmax = np.zeros((len(self.blocks), 0))
        self._rain = np.zeros((len(self.blocks), 0))
        self._rain_start = np.zeros((len(self.blocks), 0))
        self._rain_hours = np.zeros((len(self.blocks), 0))
        self._dew_dep = np.zeros((len(self.blocks), 0))
        self._solar = np.zeros((len(self.blocks), 0))
        self._et0 = np.zeros((len(self.blocks), 0))
        self._kc = np.zeros((len(self.blocks), 0))
        self._gdd = np.zeros((n, 0))
        self._gdd_cum = np.zeros((n, 1))  # GDD before day i, per node
        self._ensure_day(self.day_index(self.t) + 2)

    # -- time ------------------------------------------------------------------------
    def local_date(self, t: float) -> date:
        return date.fromordinal(EPOCH_ORDINAL + math.floor((t + self.tz_offset_s) / 86400.0))

    def day_index(self, t: float) -> int:
        return (
            EPOCH_ORDINAL + math.floor((t + self.tz_offset_s) / 86400.0) - self.origin.toordinal()
        )

    def _indices(self, times: FloatArray) -> tuple[IntArray, FloatArray]:
        local = times + self.tz_offset_s
        days = np.floor(local / 86400.0)
        di = (days + EPOCH_ORDINAL - self.origin.toordinal()).astype(np.int64)
        hour = (local - days * 86400.0) / 3600.0
        return di, hour

    def _ensure_day(self, di: int) -> None:
        """Extend the daily tables so that day index ``di`` (and the next) exist."""
        if di < 1:
            raise ValueError("time before the model's origin")
        while self._days <= di + 1:
            chunk = 128
            first = self.origin + timedelta(days=self._days)
            dailies = [
                self.weather.daily(Site(b.latitude, b.elevation_m), first, chunk)
                for b in self.blocks
            ]
            self._append(first, chunk, dailies)

    def _append(self, first: date, chunk: int, dailies: list[DailyWeather]) -> None:
        def stack(attr: str) -> FloatArray:
            return np.stack([getattr(d, attr) for d in dailies])

        tmin, tmax = stack("t_min"), stack("t_max")
        doy = np.array([(first + timedelta(days=i)).timetuple().tm_yday for i in range(chunk)])
        ra = extraterrestrial_radiation(self._lat[:, None], doy[None, :].astype(float))
        et0 = et0_hargreaves(tmin, tmax, ra)
        ordinals = first.toordinal() + np.arange(chunk)
        kc = np.empty((len(self.blocks), chunk))
        bloom_ord = np.array([b.bloom_date.toordinal() for b in self.blocks])
        for bi, block in enumerate(self.blocks):
            crop = block.crop_profile
            kc[bi] = [crop.kc(max(0.0, float(d - bloom_ord[bi]))) for d in ordinals]
        nb = self.node_block
        node_tmin = tmin[nb] + self.t_offset[:, None]
        node_tmax = tmax[nb] + self.t_offset[:, None]
        gdd = growing_degree_days(
            node_tmin,
            node_tmax,
            self.gdd_base[:, None],  # type: ignore[arg-type]
            self.gdd_cut[:, None],  # type: ignore[arg-type]
        )
        gdd = np.where(ordinals[None, :] >= bloom_ord[nb][:, None], gdd, 0.0)
        self._tmin = np.concatenate([self._tmin, tmin], axis=1)
        self._tmax = np.concatenate([self._tmax, tmax], axis=1)
        self._rain = np.concatenate([self._rain, stack("rain_mm")], axis=1)
        self._rain_start = np.concatenate([self._rain_start, stack("rain_start_h")], axis=1)
        self._rain_hours = np.concatenate([self._rain_hours, stack("rain_hours")], axis=1)
        self._dew_dep = np.concatenate([self._dew_dep, stack("dewpoint_depression")], axis=1)
        self._solar = np.concatenate([self._solar, stack("solar_factor")], axis=1)
        self._et0 = np.concatenate([self._et0, et0], axis=1)
        self._kc = np.concatenate([self._kc, kc], axis=1)
        self._gdd = np.concatenate([self._gdd, gdd], axis=1)
        cum = self._gdd_cum[:, -1:] + np.cumsum(gdd, axis=1)
        self._gdd_cum = np.concatenate([self._gdd_cum, cum], axis=1)
        self._days += chunk

    # -- closed-form signals ---------------------------------------------------------
    def block_temperature(self, times: FloatArray) -> FloatArray:
        """True air temperature per block, shape (len(times), blocks)."""
        di, hour = self._indices(times)
        self._ensure_day(int(di.max()))
        h = hour[:, None]
        return diurnal_temperature(
            h,
            self._tmax[:, di - 1].T,
            self._tmin[:, di].T,
            self._tmax[:, di].T,
            self._tmin[:, di + 1].T,
        )

    def _raining(self, di: IntArray, hour: FloatArray) -> BoolArray:
        start = self._rain_start[:, di].T
        return (
            (self._rain[:, di].T > 0)
            & (hour[:, None] >= start)
            & (hour[:, None] < start + self._rain_hours[:, di].T)
        )

    def air(self, times: FloatArray) -> tuple[FloatArray, FloatArray]:
        """True node air temperature and humidity, shape (len(times), nodes)."""
        di, hour = self._indices(times)
        self._ensure_day(int(di.max()))
        nb = self.node_block
        t_block = self.block_temperature(times)
        t_node = t_block[:, nb] + self.t_offset
        dewpoint = (self._tmin[:, di] - self._dew_dep[:, di]).T[:, nb] + self.t_offset
        rh = relative_humidity(t_node, dewpoint)
        rh = np.where(self._raining(di, hour)[:, nb], np.maximum(rh, 96.0), rh)
        return t_node, rh

    def gdd(self, times: FloatArray) -> FloatArray:
        """Growing degree days since bloom per node, shape (len(times), nodes)."""
        di, hour = self._indices(times)
        self._ensure_day(int(di.max()))
        frac = (hour / 24.0)[:, None]
        return self._gdd_cum[:, di].T + self._gdd[:, di].T * frac

    def maturity_from_gdd(self, gdd: FloatArray) -> FloatArray:
        share = gdd * self.maturity_rate / self.gdd_target
        m = self.m_node_start + (self.m_threshold - self.m_start) * share
        return np.clip(m, self.m_node_start, self.m_cap)

    def maturity(self, times: FloatArray) -> FloatArray:
        return self.maturity_from_gdd(self.gdd(times))

    def daily_gdd_table(self, first: date, days: int) -> tuple[FloatArray, FloatArray]:
        """(daily GDD, GDD cumulated to the end of each day) per node, shape (nodes, days)."""
        i0 = first.toordinal() - self.origin.toordinal()
        self._ensure_day(i0 + days)
        return self._gdd[:, i0 : i0 + days], self._gdd_cum[:, i0 + 1 : i0 + days + 1]

    def daily_weather(self, block_id: str, first: date, days: int) -> dict[str, FloatArray]:
        """The block's daily Tmin, Tmax, rain and ET0 (for tests and forecasts)."""
        bi = self.block_index[block_id]
        i0 = first.toordinal() - self.origin.toordinal()
        self._ensure_day(i0 + days)
        window = slice(i0, i0 + days)
        return {
            "t_min": self._tmin[bi, window],
            "t_max": self._tmax[bi, window],
            "rain_mm": self._rain[bi, window],
            "et0_mm": self._et0[bi, window],
            "kc": self._kc[bi, window],
        }

    # -- irrigation ------------------------------------------------------------------
    def valve_nodes(self, block_id: str, valve: str | None) -> IntArray:
        """Nodes a valve waters: the block's nodes split into contiguous groups, one per valve."""
        bi = self.block_index[block_id]
        nodes = np.flatnonzero(self.node_block == bi)
        block = self.blocks[bi]
        if valve is None or not block.valves:
            return nodes
        if valve not in block.valves:
            raise KeyError(f"block {block_id} has no valve {valve!r}")
        groups = np.array_split(nodes, len(block.valves))
        return groups[block.valves.index(valve)]

    def irrigate(self, block_id: str, valve: str | None, start: float, end: float) -> None:
        """Water the valve's nodes at the block's rate x application efficiency in [start, end)."""
        bi = self.block_index[block_id]
        self._irrigations.append(
            _Irrigation(
                bi,
                self.valve_nodes(block_id, valve),
                start,
                end,
                float(self.irrigation_mm_h[bi]),
                valve,
            )
        )

    def stop_irrigation(self, block_id: str, valve: str | None, at: float) -> None:
        bi = self.block_index[block_id]
        for run in self._irrigations:
            if run.block == bi and (valve is None or run.valve == valve) and run.end > at:
                run.end = max(run.start, at)

    # -- integrated state ------------------------------------------------------------
    def advance_to(self, t: float) -> None:
        """Integrate soil water and battery charge from the model's time up to ``t``."""
        if t <= self.t:
            return
        count = math.ceil((t - self.t) / self.max_step_s - 1e-9)
        edges = np.minimum(self.t + self.max_step_s * np.arange(count + 1), t)
        self.integrate(edges)

    def integrate(self, edges: FloatArray, record: bool = False) -> tuple[FloatArray, FloatArray]:
        """Step the state through consecutive times ``edges`` (``edges[0]`` = model time).

        Returns the soil water and battery charge after each step, shape (steps, nodes),
        when ``record`` is set (the offline generator); empty arrays otherwise.
        """
        t0s, t1s = edges[:-1], edges[1:]
        steps, n = len(t0s), len(self.node_ids)
        etc_pot, inv_denom, water, dsoc = self._forcing(t0s, t1s)
        taw = total_available_water(self.theta_fc, self.theta_wp, self.root_depth)
        mm_per_theta = 1000.0 * self.root_depth
        fc, wp, sat = self.theta_fc, self.theta_wp, self.theta_sat
        theta, upper, lower, soc = self.theta, self.store_upper, self.store_lower, self.soc
        dts_h = (t1s - t0s) / 3600.0
        uniform = steps > 0 and bool(np.all(dts_h == dts_h[0]))
        if uniform:
            k_lag = 1.0 - np.exp(-dts_h[0] / self.lag_h)
            k_drain = 1.0 - math.exp(-dts_h[0] / DRAINAGE_TAU_H)
        thetas = np.empty((steps, n)) if record else np.empty((0, n))
        socs = np.empty((steps, n)) if record else np.empty((0, n))
        for k in range(steps):
            if not uniform:
                k_lag = 1.0 - np.exp(-dts_h[k] / self.lag_h)
                k_drain = 1.0 - math.exp(-dts_h[k] / DRAINAGE_TAU_H)
            # FAO-56 Eq. 84 water stress: ET falls once readily available water is used.
            readily = taw - np.maximum(fc - theta, 0.0) * mm_per_theta
            ks = np.minimum(np.maximum(readily * inv_denom[k], 0.0), 1.0)
            # Two linear reservoirs in series: the delay of hours to the root zone.
            upper = upper + water[k]
            moved = upper * k_lag
            upper = upper - moved
            lower = lower + moved
            arrived = lower * k_lag
            lower = lower - arrived
            theta = theta + (arrived - etc_pot[k] * ks) / mm_per_theta
            theta = theta - np.maximum(theta - fc, 0.0) * k_drain
            theta = np.minimum(np.maximum(theta, wp), sat)
            soc = np.minimum(np.maximum(soc + dsoc[k], 0.0), 1.0)
            if record:
                thetas[k] = theta
                socs[k] = soc
        self.theta, self.store_upper, self.store_lower, self.soc = theta, upper, lower, soc
        if steps:
            self.t = float(t1s[-1])
            self._irrigations = [r for r in self._irrigations if r.end > self.t]
        return thetas, socs

    def _forcing(
        self, t0s: FloatArray, t1s: FloatArray
    ) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
        """Per-step inputs that do not depend on the state, vectorised over steps.

        Returns potential ETc (mm, before water stress), 1/((1-p)·TAW) for Ks, water reaching
        the surface (mm), and the battery charge change, each shaped (steps, nodes).
        """
        n = len(self.node_ids)
        if len(t0s) == 0:
            empty = np.zeros((0, n))
            return empty, empty, empty, empty
        mids = (t0s + t1s) / 2.0
        di, hour = self._indices(mids)
        self._ensure_day(int(di.max()))
        dt_h = ((t1s - t0s) / 3600.0)[:, None]
        nb = self.node_block
        shape = daylight_shape(hour)[:, None]
        etc_day = (self._et0[:, di] * self._kc[:, di]).T[:, nb]
        etc_pot = etc_day * shape * dt_h * self.et_mult
        taw = total_available_water(self.theta_fc, self.theta_wp, self.root_depth)
        p = depletion_fraction(self.p_table, etc_day)
        inv_denom = 1.0 / ((1.0 - p) * taw)

        rain = self._rain[:, di].T
        hours = self._rain_hours[:, di].T
        rain_rate = np.where(self._raining(di, hour), rain / np.maximum(hours, 1e-9), 0.0)
        water = rain_rate[:, nb] * dt_h
        for run in self._irrigations:
            overlap_h = (
                np.maximum(np.minimum(t1s, run.end) - np.maximum(t0s, run.start), 0.0) / 3600.0
            )
            if overlap_h.any():
                water[:, run.nodes] += (
                    run.mm_per_h * overlap_h[:, None] * self.irrigation_mult[run.nodes]
                )

        solar = self._solar[:, di].T[:, nb]
        dying = self.battery_dying
        charge = np.where(dying, 0.0, BATTERY_SOLAR_PER_DAY * shape * dt_h * solar)
        drain = np.where(dying, 1.0 / DYING_BATTERY_HOURS, BATTERY_DRAIN_PER_H) * dt_h
        return etc_pot, inv_denom, water, charge - drain

    # -- measurement -----------------------------------------------------------------
    def sample(self, t: float) -> Sample:
        """Advance to ``t`` and measure every node, with sensor noise."""
        self.advance_to(t)
        times = np.asarray([t], dtype=np.float64)
        temp, rh = self.air(times)
        maturity = self.maturity(times)[0]
        return self._measure(t, temp[0], rh[0], self.theta, maturity, self.soc)

    def sample_many(self, times: FloatArray) -> Sample:
        """Advance through increasing ``times`` and measure every node at each, shape (k, n).

        The live simulator uses it to catch up many report instants in one vectorised pass.
        """
        times = np.asarray(times, dtype=np.float64)
        prev = np.concatenate([[self.t], times[:-1]])
        counts = np.maximum(1, np.ceil((times - prev) / self.max_step_s - 1e-9)).astype(np.int64)
        edges = [np.asarray([self.t])]
        for a, b, c in zip(prev.tolist(), times.tolist(), counts.tolist(), strict=True):
            edges.append(np.linspace(a, b, c + 1)[1:])
        thetas, socs = self.integrate(np.concatenate(edges), record=True)
        at = np.cumsum(counts) - 1
        temp, rh = self.air(times)
        return self._measure(float(times[0]), temp, rh, thetas[at], self.maturity(times), socs[at])

    def _measure(
        self,
        t: float,
        temp: FloatArray,
        rh: FloatArray,
        theta: FloatArray,
        maturity: FloatArray,
        soc: FloatArray,
    ) -> Sample:
        noise = self._noise
        shape = temp.shape
        return Sample(
            t=t,
            temperature=np.round(temp + noise.normal(0.0, 0.1, shape), 2),
            humidity=np.round(np.clip(rh + noise.normal(0.0, 0.8, shape), 0.0, 100.0), 1).astype(
                np.float64
            ),
            soil_moisture=np.round(
                np.clip(theta + self.probe_offset + noise.normal(0.0, 0.0015, shape), 0.0, 0.8), 4
            ).astype(np.float64),
            maturity=np.round(maturity, 3),
            battery=np.round(
                BATTERY_EMPTY_V
                + (BATTERY_FULL_V - BATTERY_EMPTY_V) * soc
                + noise.normal(0.0, 0.005, shape),
                3,
            ),
            rssi=np.clip(np.rint(self.rssi_base + noise.normal(0.0, 2.0, shape)), -120, -30).astype(
                np.int64
            ),
            battery_soc=soc.copy(),
        )


def to_utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)
