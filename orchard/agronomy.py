"""FAO-56 and horticultural formulas, scalar and numpy-vectorised alike.

Every function accepts floats or numpy arrays (broadcasting), so the control loop can
evaluate all blocks at once and the simulator can call them per node.
Equation numbers refer to Allen et al. (1998), FAO Irrigation and Drainage Paper 56.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import numpy.typing as npt

ArrayLike = float | npt.NDArray[np.float64]
A = TypeVar("A", float, npt.NDArray[np.float64])

SOLAR_CONSTANT = 0.0820  # MJ m-2 min-1, FAO-56 Eq. 21
MJ_TO_MM = 0.408  # mm day-1 per MJ m-2 day-1 (1 / latent heat 2.45), FAO-56 Eq. 20


def sat_vapour_pressure(t_c: A) -> A:
    """e°(T), kPa (FAO-56 Eq. 11)."""
    return 0.6108 * np.exp(17.27 * t_c / (t_c + 237.3))  # type: ignore[no-any-return]


def vpd(t_c: A, rh_pct: A) -> A:
    """Vapour pressure deficit of air at T and RH, kPa."""
    return sat_vapour_pressure(t_c) * (1.0 - np.clip(rh_pct, 0.0, 100.0) / 100.0)  # type: ignore[no-any-return]


def actual_vapour_pressure(t_min: A, t_max: A, rh_max: A, rh_min: A) -> A:
    """ea from daily RH extremes, kPa (FAO-56 Eq. 17)."""
    return (  # type: ignore[no-any-return]
        sat_vapour_pressure(t_min) * rh_max / 100.0 + sat_vapour_pressure(t_max) * rh_min / 100.0
    ) / 2.0


def slope_vapour_pressure(t_c: A) -> A:
    """Δ, kPa °C-1 (FAO-56 Eq. 13)."""
    return 4098.0 * sat_vapour_pressure(t_c) / (t_c + 237.3) ** 2  # type: ignore[no-any-return]


def psychrometric_constant(elevation_m: A) -> A:
    """γ, kPa °C-1 from elevation (FAO-56 Eq. 7 and 8)."""
    pressure = 101.3 * ((293.0 - 0.0065 * elevation_m) / 293.0) ** 5.26
    return 0.665e-3 * pressure  # type: ignore[no-any-return]


def extraterrestrial_radiation(latitude_deg: A, day_of_year: A) -> A:
    """Ra, MJ m-2 day-1 (FAO-56 Eq. 21-25). Polar day/night handled by clipping ωs."""
    phi = np.radians(latitude_deg)
    j = np.asarray(day_of_year, dtype=float)
    dr = 1.0 + 0.033 * np.cos(2.0 * np.pi * j / 365.0)  # Eq. 23
    delta = 0.409 * np.sin(2.0 * np.pi * j / 365.0 - 1.39)  # Eq. 24
    omega_s = np.arccos(np.clip(-np.tan(phi) * np.tan(delta), -1.0, 1.0))  # Eq. 25
    ra = (
        (24.0 * 60.0 / np.pi)
        * SOLAR_CONSTANT
        * dr
        * (omega_s * np.sin(phi) * np.sin(delta) + np.cos(phi) * np.cos(delta) * np.sin(omega_s))
    )
    return ra if isinstance(ra, np.ndarray) and ra.ndim else float(ra)  # type: ignore[return-value]


def et0_hargreaves(t_min: A, t_max: A, ra_mj: A) -> A:
    """Reference ET, mm day-1, from temperature only (FAO-56 Eq. 52)."""
    t_mean = (t_min + t_max) / 2.0
    spread = np.sqrt(np.maximum(t_max - t_min, 0.0))
    return 0.0023 * (t_mean + 17.8) * spread * MJ_TO_MM * ra_mj  # type: ignore[no-any-return]


def et0_penman_monteith(
    t_min: A,
    t_max: A,
    rh_max: A,
    rh_min: A,
    net_radiation_mj: A,
    wind_2m: A,
    elevation_m: A,
) -> A:
    """Reference ET, mm day-1, FAO Penman-Monteith daily form with G = 0 (FAO-56 Eq. 6)."""
    t_mean = (t_min + t_max) / 2.0
    es = (sat_vapour_pressure(t_min) + sat_vapour_pressure(t_max)) / 2.0  # Eq. 12
    ea = actual_vapour_pressure(t_min, t_max, rh_max, rh_min)
    delta = slope_vapour_pressure(t_mean)
    gamma = psychrometric_constant(elevation_m)
    numerator = 0.408 * delta * net_radiation_mj + gamma * (900.0 / (t_mean + 273.0)) * wind_2m * (
        es - ea
    )
    return numerator / (delta + gamma * (1.0 + 0.34 * wind_2m))  # type: ignore[no-any-return]


def net_radiation_from_temperature(
    t_min: A, t_max: A, ea: A, ra_mj: A, elevation_m: A, krs: float = 0.16
) -> A:
    """Rn estimated from Tmax-Tmin when no radiometer is present, MJ m-2 day-1.

    Rs = kRs·sqrt(Tmax-Tmin)·Ra (Eq. 50, kRs 0.16 interior / 0.19 coastal), Rso (Eq. 37),
    Rns = 0.77·Rs (Eq. 38, albedo 0.23), Rnl (Eq. 39), Rn = Rns - Rnl (Eq. 40).
    """
    rs = krs * np.sqrt(np.maximum(t_max - t_min, 0.0)) * ra_mj
    rso = (0.75 + 2e-5 * elevation_m) * ra_mj
    rns = 0.77 * rs
    sigma = 4.903e-9  # Stefan-Boltzmann, MJ K-4 m-2 day-1
    ratio = np.clip(
        np.divide(
            rs, rso, out=np.zeros_like(np.asarray(rs, dtype=float)), where=np.asarray(rso) > 0
        ),
        0.3,
        1.0,
    )
    rnl = (
        sigma
        * (((t_max + 273.16) ** 4 + (t_min + 273.16) ** 4) / 2.0)
        * (0.34 - 0.14 * np.sqrt(np.maximum(ea, 0.0)))
        * (1.35 * ratio - 0.35)
    )
    return rns - rnl  # type: ignore[no-any-return]


def growing_degree_days(t_min: A, t_max: A, t_base: float, t_cutoff: float) -> A:
    """Daily GDD, horizontal cutoff, averaging method (agronomy-reference.md)."""
    upper = np.minimum(t_max, t_cutoff)
    lower = np.maximum(t_min, t_base)
    return np.maximum(0.0, (upper + lower) / 2.0 - t_base)  # type: ignore[no-any-return]


def total_available_water(theta_fc: A, theta_wp: A, root_depth_m: A) -> A:
    """TAW, mm (FAO-56 Eq. 82)."""
    return 1000.0 * (theta_fc - theta_wp) * root_depth_m  # type: ignore[no-any-return]


def depletion_fraction(p_table: A, etc_mm: A) -> A:
    """p adjusted for evaporative demand, clamped 0.1-0.8 (FAO-56 Table 22 footnote)."""
    return np.clip(p_table + 0.04 * (5.0 - etc_mm), 0.1, 0.8)  # type: ignore[no-any-return]


def trigger_moisture(theta_fc: A, theta_wp: A, p: A) -> A:
    """Sensor θ at which RAW is used up: θFC - p·(θFC - θWP) (agronomy-reference.md)."""
    return theta_fc - p * (theta_fc - theta_wp)  # type: ignore[no-any-return]
