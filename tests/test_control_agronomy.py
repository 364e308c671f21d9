"""FAO-56 formulas (``orchard.agronomy``) against the worked examples of FAO Paper 56.

Figures are those printed in Allen et al. (1998); tolerances are the examples' rounding.
"""

from __future__ import annotations

import math
from datetime import date

import numpy as np
import pytest

from control.daily import compute_block_days
from control.thresholds import _effective
from orchard import agronomy as ag
from tests.test_control_helpers import small_orchard


def test_example_8_extraterrestrial_radiation() -> None:
    # 20° S on 3 September (day 246): Ra = 32.2 MJ m-2 day-1, 13.1 mm/day.
    ra = ag.extraterrestrial_radiation(-20.0, 246.0)
    assert ra == pytest.approx(32.2, abs=0.05)
    assert ra * ag.MJ_TO_MM == pytest.approx(13.1, abs=0.05)


def test_example_18_penman_monteith_uccle() -> None:
    # Uccle (Brussels), 6 July (day 187), 50°48' N, 100 m; Tmax 21.5, Tmin 12.3, RHmax 84,
    # RHmin 63, wind 10 km/h at 10 m, 9.25 h of sunshine: ET0 = 3.9 mm/day.
    lat, doy, z = 50.8, 187.0, 100.0
    ra = ag.extraterrestrial_radiation(lat, doy)
    assert ra == pytest.approx(41.09, abs=0.05)
    delta = 0.409 * math.sin(2 * math.pi * doy / 365 - 1.39)
    daylight_h = 24 / math.pi * math.acos(-math.tan(math.radians(lat)) * math.tan(delta))  # Eq. 34
    assert daylight_h == pytest.approx(16.1, abs=0.05)
    rs = (0.25 + 0.5 * 9.25 / daylight_h) * ra  # Angstrom, Eq. 35
    assert rs == pytest.approx(22.07, abs=0.05)
    ea = ag.actual_vapour_pressure(12.3, 21.5, 84.0, 63.0)
    assert ea == pytest.approx(1.409, abs=0.002)
    rso = (0.75 + 2e-5 * z) * ra
    rnl = (
        4.903e-9
        * ((21.5 + 273.16) ** 4 + (12.3 + 273.16) ** 4)
        / 2
        * (0.34 - 0.14 * math.sqrt(ea))
        * (1.35 * rs / rso - 0.35)
    )
    rn = 0.77 * rs - rnl
    assert rn == pytest.approx(13.28, abs=0.05)
    u2 = 10 / 3.6 * 4.87 / math.log(67.8 * 10 - 5.42)  # Eq. 47, 10 m -> 2 m
    assert u2 == pytest.approx(2.078, abs=0.002)
    assert ag.et0_penman_monteith(12.3, 21.5, 84.0, 63.0, rn, u2, z) == pytest.approx(3.9, abs=0.05)


def test_example_20_lyon_temperature_only() -> None:
    # Lyon, mid-July (day 196), 45°43' N, 200 m, Tmax 26.6, Tmin 14.8: Ra 40.55 MJ,
    # Hargreaves 5.0 mm/day; Penman-Monteith with radiation estimated from the temperature
    # range (kRs 0.16), humidity from Tdew = Tmin and wind 2 m/s: 4.6 mm/day.
    ra = ag.extraterrestrial_radiation(45 + 43 / 60, 196.0)
    assert ra == pytest.approx(40.55, abs=0.05)
    assert ag.et0_hargreaves(14.8, 26.6, ra) == pytest.approx(5.0, abs=0.05)
    ea = ag.sat_vapour_pressure(14.8)
    rh_min = 100 * ea / ag.sat_vapour_pressure(26.6)
    rn = ag.net_radiation_from_temperature(14.8, 26.6, ea, ra, 200.0, 0.16)
    assert ag.et0_penman_monteith(14.8, 26.6, 100.0, rh_min, rn, 2.0, 200.0) == pytest.approx(
        4.6, abs=0.05
    )


def test_vectorised_forms_match_scalars() -> None:
    lat = np.array([-20.0, 50.8])
    doy = np.array([246.0, 187.0])
    assert np.allclose(ag.extraterrestrial_radiation(lat, doy), [32.19, 41.09], atol=0.01)


def test_water_balance_counts_rain_and_irrigation_and_gdd_from_bloom() -> None:
    orchard = small_orchard()
    block = orchard.blocks[0]
    days = [date(2026, 4, 9), date(2026, 4, 10), date(2026, 4, 11), date(2026, 4, 12)]
    arrays = {
        "tmin": np.array([[8.0, 8.0, 8.0, 8.0]]),
        "tmax": np.array([[22.0, 22.0, 22.0, 22.0]]),
        "rh_min": np.array([[40.0] * 4]),
        "rh_max": np.array([[90.0] * 4]),
        "soil": np.array([[0.25, 0.25, 0.25, 0.25]]),
    }
    th = _effective(block, days[0], [])
    rows = compute_block_days(
        block, th, days, arrays, {date(2026, 4, 11): 20.0}, {date(2026, 4, 12): 5.0}
    )
    # Day one starts from the sensors: (0.30 - 0.25) x 1.2 m = 60 mm depleted.
    assert rows[0].depletion_mm == pytest.approx(60.0)
    # Eq. 85: + ETc, - rain, - irrigation.
    assert rows[1].depletion_mm == pytest.approx(60.0 + rows[1].etc)
    assert rows[2].depletion_mm == pytest.approx(rows[1].depletion_mm - 20.0 + rows[2].etc)
    assert rows[3].depletion_mm == pytest.approx(rows[2].depletion_mm - 5.0 + rows[3].etc)
    assert rows[0].taw_mm == pytest.approx(216.0)  # 1000 x (0.30 - 0.12) x 1.2
    # GDD only from bloom (10 April): (22 + 8) / 2 - 6.1 = 8.9 a day.
    assert rows[0].gdd == 0.0
    assert [r.gdd_cum for r in rows] == pytest.approx([0.0, 8.9, 17.8, 26.7])
    assert all(
        r.et0_method == "penman_monteith" and r.etc == pytest.approx(r.kc * r.et0) for r in rows
    )
