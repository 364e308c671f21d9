"""Daily agronomy per block from the stored readings (``block_daily``).

For each block and each day since bloom: Tmin/Tmax and RH extremes (median over the
block's nodes of each node's daily extreme, so one faulty probe does not set the day),
ET0, ETc = Kc·ET0, the FAO-56 root-zone water balance, GDD and the day's peak VPD.

* ET0: FAO Penman-Monteith (Eq. 6) when humidity was measured, with net radiation
  estimated from the temperature range (Eq. 50, 37-40) and wind at FAO-56's default of
  2 m/s (no anemometer on the nodes, FAO-56 ch. 3 "missing wind speed data"); Hargreaves
  (Eq. 52) from temperature alone otherwise. Ra from latitude and day of year (Eq. 21).
* Water balance (Eq. 85): Dr,i = Dr,i-1 − P_i − I_i + ETc_i, bounded to [0, TAW]; rain P
  as detected by the engine (a soil-moisture rise no irrigation explains), irrigation I
  the net depth of the runs that controllers acknowledged. Day one starts from the sensors.
* GDD: averaging method with horizontal cutoff, accumulated from bloom.

Days are the farm's local calendar days (``[farm] timezone`` in the orchard file, an IANA
name): a night's minimum belongs to one day, and GDD/ET0 days are the grower's days. The
query buckets with InfluxQL ``GROUP BY time(1d) ... tz('Area/City')``, which starts each
bucket at local midnight and so gives a 23 h day and a 25 h day at DST changes (checked
against influxd 1.6, also where midnight itself is skipped, e.g. America/Santiago). Ra
(Eq. 21) uses the local day of year. A ``block_daily`` point is stamped at the local
midnight that starts its day, as a UTC instant (16:00Z the day before in Asia/Shanghai);
a farm in UTC gets exactly the former UTC-day query and times.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import numpy as np

from control.thresholds import EffectiveThresholds
from orchard import agronomy
from orchard.influx import Series, quote_literal, quote_regex_alternatives
from orchard.layout import Block, Orchard
from orchard.lineprotocol import encode_point, to_ns

DEFAULT_WIND_2M = 2.0  # m/s, FAO-56 ch. 3: world average used when wind is not measured
KRS_INTERIOR = 0.16  # FAO-56 Eq. 50 adjustment coefficient for interior locations
UTC_ZONE = ZoneInfo("UTC")


def farm_zone(orchard: Orchard) -> ZoneInfo:
    """The farm's time zone (validated when the orchard file loads)."""
    return ZoneInfo(orchard.farm.timezone)


def local_day(ts_s: float, zone: ZoneInfo) -> date:
    """The farm's calendar day of a Unix time in seconds."""
    return datetime.fromtimestamp(ts_s, zone).date()


def local_midnight(day: date, zone: ZoneInfo) -> datetime:
    """The instant (UTC) the farm's ``day`` starts.

    Where a DST change skips midnight, the zone's pre-change offset maps it to the first
    instant of the day, which is also where InfluxDB's ``tz()`` buckets start.
    """
    return datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)


def local_today(now: datetime, zone: ZoneInfo) -> date:
    """The farm's current day at the aware instant ``now``."""
    return now.astimezone(zone).date()


@dataclass
class DayRow:
    day: date
    tmin: float
    tmax: float
    rh_min: float | None
    rh_max: float | None
    soil: float | None
    et0: float
    et0_method: str
    kc: float
    etc: float
    rain_mm: float
    irrigation_mm: float
    depletion_mm: float
    taw_mm: float
    raw_mm: float
    gdd: float
    gdd_cum: float
    vpd_max: float | None

    def fields(self) -> dict[str, float | str | None]:
        return {
            "tmin": round(self.tmin, 2),
            "tmax": round(self.tmax, 2),
            "rh_min": None if self.rh_min is None else round(self.rh_min, 1),
            "rh_max": None if self.rh_max is None else round(self.rh_max, 1),
            "et0": round(self.et0, 2),
            "et0_method": self.et0_method,
            "kc": round(self.kc, 3),
            "etc": round(self.etc, 2),
            "rain_mm": round(self.rain_mm, 1),
            "irrigation_mm": round(self.irrigation_mm, 1),
            "depletion_mm": round(self.depletion_mm, 1),
            "taw_mm": round(self.taw_mm, 1),
            "raw_mm": round(self.raw_mm, 1),
            "gdd": round(self.gdd, 2),
            "gdd_cum": round(self.gdd_cum, 1),
            "vpd_max": None if self.vpd_max is None else round(self.vpd_max, 3),
        }


def daily_query(
    farm: str, blocks: Sequence[Block], start: date, end: date, zone: ZoneInfo = UTC_ZONE
) -> str:
    """Per node and local day in ``[start, end)``: T and RH extremes, mean soil moisture."""
    ids = [b.id for b in blocks]
    begin = local_midnight(start, zone)
    finish = local_midnight(end, zone)
    # Without tz() InfluxDB buckets on UTC days, so a UTC farm keeps the former query.
    tz_clause = "" if zone.key == "UTC" else f" tz({quote_literal(zone.key)})"
    return (
        "SELECT min(temperature) AS tmin, max(temperature) AS tmax, min(humidity) AS rh_min,"
        " max(humidity) AS rh_max, mean(soil_moisture) AS soil FROM telemetry"
        f" WHERE farm = {quote_literal(farm)} AND block =~ {quote_regex_alternatives(ids)}"
        f" AND time >= {to_ns(begin)} AND time < {to_ns(finish)}"
        " GROUP BY time(1d), block, node fill(none)" + tz_clause
    )


def node_days(
    series: Sequence[Series],
    blocks: Sequence[Block],
    start: date,
    end: date,
    zone: ZoneInfo = UTC_ZONE,
) -> dict[str, dict[str, np.ndarray]]:
    """block -> field -> (nodes, days) array (NaN where missing); rows in ms epoch."""
    n_days = (end - start).days
    # Local days are 23, 24 or 25 h long: a row belongs to the day whose local midnight is
    # the last one at or before it, not to (t - t0) // 86400.
    midnights_ms = np.array(
        [local_midnight(d, zone).timestamp() * 1000.0 for d in day_range(start, end)]
    )
    by_block: dict[str, list[Series]] = {}
    for s in series:
        by_block.setdefault(s.tags.get("block", ""), []).append(s)
    out: dict[str, dict[str, np.ndarray]] = {}
    for block in blocks:
        rows = by_block.get(block.id, [])
        arrays = {
            f: np.full((max(1, len(rows)), n_days), np.nan)
            for f in ("tmin", "tmax", "rh_min", "rh_max", "soil")
        }
        for k, s in enumerate(rows):
            cols = {c: i for i, c in enumerate(s.columns)}
            data = np.array(s.values, dtype=np.float64)
            if data.size == 0:
                continue
            day_idx = np.searchsorted(midnights_ms, data[:, cols["time"]], side="right") - 1
            ok = (day_idx >= 0) & (day_idx < n_days)
            for f in arrays:
                if f in cols:
                    arrays[f][k, day_idx[ok]] = data[ok, cols[f]]
        out[block.id] = arrays
    return out


def _median(x: np.ndarray) -> np.ndarray:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.asarray(np.nanmedian(x, axis=0))


def compute_block_days(
    block: Block,
    thresholds: EffectiveThresholds,
    days: Sequence[date],
    arrays: Mapping[str, np.ndarray],
    rain_mm: Mapping[date, float],
    irrigation_mm: Mapping[date, float],
) -> list[DayRow]:
    """The water balance and degree-days, day by day, for the days that have temperatures."""
    crop = block.crop_profile
    soil = block.soil_profile
    tmin = _median(arrays["tmin"])
    tmax = _median(arrays["tmax"])
    rh_min = _median(arrays["rh_min"])
    rh_max = _median(arrays["rh_max"])
    theta = _median(arrays["soil"])
    zr = thresholds["root_depth_m"]
    taw = float(agronomy.total_available_water(soil.theta_fc, soil.theta_wp, zr))
    rows: list[DayRow] = []
    depletion: float | None = None
    gdd_cum = 0.0
    for i, day in enumerate(days):
        if np.isnan(tmin[i]) or np.isnan(tmax[i]):
            continue
        doy = day.timetuple().tm_yday
        ra = float(agronomy.extraterrestrial_radiation(block.latitude, float(doy)))
        has_rh = not (np.isnan(rh_min[i]) or np.isnan(rh_max[i]))
        if has_rh:
            ea = float(agronomy.actual_vapour_pressure(tmin[i], tmax[i], rh_max[i], rh_min[i]))
            rn = float(
                agronomy.net_radiation_from_temperature(
                    tmin[i], tmax[i], ea, ra, block.elevation_m, KRS_INTERIOR
                )
            )
            et0 = float(
                agronomy.et0_penman_monteith(
                    tmin[i], tmax[i], rh_max[i], rh_min[i], rn, DEFAULT_WIND_2M, block.elevation_m
                )
            )
            method = "penman_monteith"
        else:
            et0 = float(agronomy.et0_hargreaves(tmin[i], tmax[i], ra))
            method = "hargreaves"
        et0 = max(0.0, et0)
        since_bloom = (day - block.bloom_date).days
        kc = crop.kc(max(0, since_bloom))
        etc = kc * et0
        p = float(agronomy.depletion_fraction(thresholds["depletion_p"], etc))
        raw = p * taw
        rain = rain_mm.get(day, 0.0)
        irrigation = irrigation_mm.get(day, 0.0)
        if depletion is None:
            start = (soil.theta_fc - theta[i]) * zr * 1000.0 if not np.isnan(theta[i]) else 0.0
            depletion = float(np.clip(start, 0.0, taw))
        else:
            # FAO-56 Eq. 85 (runoff, capillary rise and deep percolation folded into the bounds:
            # water above field capacity drains, so Dr never goes below 0).
            depletion = float(np.clip(depletion - rain - irrigation + etc, 0.0, taw))
        gdd = (
            float(
                agronomy.growing_degree_days(tmin[i], tmax[i], crop.gdd_base_c, crop.gdd_cutoff_c)
            )
            if since_bloom >= 0
            else 0.0
        )
        gdd_cum += gdd
        vpd_max = float(agronomy.vpd(tmax[i], rh_min[i])) if has_rh else None
        rows.append(
            DayRow(
                day=day,
                tmin=float(tmin[i]),
                tmax=float(tmax[i]),
                rh_min=float(rh_min[i]) if has_rh else None,
                rh_max=float(rh_max[i]) if has_rh else None,
                soil=None if np.isnan(theta[i]) else float(theta[i]),
                et0=et0,
                et0_method=method,
                kc=kc,
                etc=etc,
                rain_mm=rain,
                irrigation_mm=irrigation,
                depletion_mm=depletion,
                taw_mm=taw,
                raw_mm=raw,
                gdd=gdd,
                gdd_cum=gdd_cum,
                vpd_max=vpd_max,
            )
        )
    return rows


def daily_lines(
    farm: str, block: str, rows: Sequence[DayRow], zone: ZoneInfo = UTC_ZONE
) -> list[str]:
    """``block_daily`` points, each at the local midnight that starts its day."""
    out = []
    for r in rows:
        ts = local_midnight(r.day, zone)
        out.append(
            encode_point("block_daily", {"farm": farm, "block": block}, r.fields(), to_ns(ts))
        )
    return out


def day_range(start: date, end: date) -> list[date]:
    return [start + timedelta(days=i) for i in range((end - start).days)]
