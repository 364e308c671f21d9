"""Simulator physics, offline (no broker): diurnal cycle, water balance, maturity, faults."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import numpy as np
import pytest

from firmware_sim.physics import OrchardModel
from firmware_sim.season import ValveOpening, ready_date, simulate, simulate_arrays
from firmware_sim.weather import WeatherEvent, parse_events
from orchard.agronomy import growing_degree_days
from orchard.layout import Orchard, load_orchard
from orchard.settings import CONFIG_DIR

TZ_OFFSET_H = 8  # the demo farm is in Asia/Shanghai


@pytest.fixture(scope="module")
def orchard() -> Orchard:
    return load_orchard(CONFIG_DIR / "orchard.toml")


def local_hours(times: np.ndarray) -> np.ndarray:
    return ((times / 3600.0) + TZ_OFFSET_H) % 24


def test_afternoon_is_warmer_than_predawn_and_humidity_moves_against_temperature(
    orchard: Orchard,
) -> None:
    start = datetime(2026, 6, 30, 16, tzinfo=UTC)  # local midnight
    season = simulate_arrays(orchard, start, start + timedelta(days=12), step_s=900, seed=3)
    hours = local_hours(season.times)
    day = ((season.times - season.times[0]) // 86400).astype(int)
    for d in range(12):
        afternoon = (day == d) & (hours >= 14) & (hours < 16)
        predawn = (day == d) & (hours >= 4) & (hours < 6)
        warm = season.temperature[afternoon].mean(axis=0)
        cold = season.temperature[predawn].mean(axis=0)
        assert (warm > cold + 1.0).all(), f"day {d}: afternoon {warm} vs pre-dawn {cold}"
        assert (
            season.humidity[afternoon].mean(axis=0) < season.humidity[predawn].mean(axis=0)
        ).all()
    for j in range(len(season.node_ids)):
        r = np.corrcoef(season.temperature[:, j], season.humidity[:, j])[0, 1]
        assert r < -0.5, f"{season.node_ids[j]}: T/RH correlation {r:.2f}"
    assert season.humidity.min() >= 0 and season.humidity.max() <= 100


def test_scripted_frost_night_and_heat_wave(orchard: Orchard) -> None:
    weather = parse_events("frost@2026-04-20=-5;heat@2026-07-10:3=40")
    spring = simulate_arrays(
        orchard,
        datetime(2026, 4, 18, 16, tzinfo=UTC),
        datetime(2026, 4, 22, 16, tzinfo=UTC),
        seed=5,
        weather=weather,
    )
    apple = [j for j, b in enumerate(spring.block_ids) if b == "apple-east"]
    frost_day = (spring.times >= datetime(2026, 4, 19, 16, tzinfo=UTC).timestamp()) & (
        spring.times < datetime(2026, 4, 20, 16, tzinfo=UTC).timestamp()
    )
    assert spring.temperature[frost_day][:, apple].min() < -4.0
    assert spring.temperature[~frost_day][:, apple].min() > -4.0
    summer = simulate_arrays(
        orchard,
        datetime(2026, 7, 9, 16, tzinfo=UTC),
        datetime(2026, 7, 12, 16, tzinfo=UTC),
        seed=5,
        weather=weather,
    )
    assert summer.temperature.max(axis=0).min() > 38.5  # every node sees the heat wave


def test_soil_dries_over_days_then_refills_after_a_valve_opens(orchard: Orchard) -> None:
    start = datetime(2026, 6, 30, 16, tzinfo=UTC)
    dry = [WeatherEvent("dry", date(2026, 6, 25), days=40)]
    opened = start + timedelta(days=12, hours=5)  # 05:00 local on day 12
    kwargs = {"step_s": 900.0, "seed": 11, "weather": dry}
    base = simulate_arrays(orchard, start, start + timedelta(days=14), **kwargs)
    watered = simulate_arrays(
        orchard,
        start,
        start + timedelta(days=14),
        valves=[ValveOpening("apple-east", opened, 4 * 3600, valve="apple-east-v1")],
        **kwargs,
    )
    v1 = [watered.column(n) for n in ("apple-east-n01", "apple-east-n02", "apple-east-n03")]
    v2 = [watered.column(n) for n in ("apple-east-n04", "apple-east-n05")]
    t = base.times

    def at(season_arr: np.ndarray, when: datetime, cols: list[int]) -> np.ndarray:
        return season_arr[np.searchsorted(t, when.timestamp()), cols]

    # Dries: every node lost water over eleven rainless days.
    drop = at(base.soil_moisture, start, v1 + v2) - at(
        base.soil_moisture, start + timedelta(days=11), v1 + v2
    )
    assert (drop > 0.02).all(), drop
    # Refills, with a delay: little has arrived after 30 minutes, most after 12 hours.
    gain = watered.soil_moisture - base.soil_moisture
    early = at(gain, opened + timedelta(minutes=30), v1)
    later = at(gain, opened + timedelta(hours=12), v1)
    expected = 4 * 3.5 * 0.9 / (1000 * 1.2)  # 4 h x rate x efficiency over Zr = 1.2 m
    assert (later > 0.6 * expected).all() and (later < 1.5 * expected).all(), later
    assert (early < 0.25 * later).all(), (early, later)
    # Before the valve opened, and on the other valve's nodes, nothing changed.
    assert np.array_equal(gain[t < opened.timestamp()], np.zeros_like(gain[t < opened.timestamp()]))
    assert np.abs(gain[:, v2]).max() == 0.0
    # Stays within the soil's physical range.
    assert watered.soil_moisture.min() > 0.1 and watered.soil_moisture.max() < 0.46


def test_maturity_never_decreases_and_crosses_the_threshold_near_the_gdd_target(
    orchard: Orchard,
) -> None:
    block = orchard.block("apple-east")
    crop = block.crop_profile
    start = datetime(2026, 4, 1, tzinfo=UTC)
    season = simulate_arrays(orchard, start, start + timedelta(days=200), step_s=3600, seed=2)
    cols = [j for j, b in enumerate(season.block_ids) if b == block.id]
    maturity = season.maturity[:, cols]
    assert (np.diff(maturity, axis=0) >= 0).all()
    assert maturity[0].max() < crop.harvest_threshold < maturity[-1].min()
    # Node-to-node spread.
    assert np.ptp(maturity[len(maturity) // 2]) > 0.02

    ready = ready_date(orchard, block.id, seed=2)
    assert ready is not None
    # Ground truth agrees with the generated readings: on the ready date (local), most
    # nodes pass the threshold, and on the day before they did not.
    local_dates = [
        (datetime.fromtimestamp(x, UTC) + timedelta(hours=TZ_OFFSET_H)).date() for x in season.times
    ]

    def passing_at_end_of(day: date) -> int:
        k = max(i for i, d in enumerate(local_dates) if d == day)
        return int((maturity[k] >= crop.harvest_threshold).sum())

    assert passing_at_end_of(ready) > len(cols) / 2
    assert passing_at_end_of(ready - timedelta(days=1)) <= len(cols) / 2
    # And it is where the block's degree-days reach the crop's target.
    model = OrchardModel(orchard, start=start, seed=2)
    days = (ready - block.bloom_date).days + 1
    daily = model.daily_weather(block.id, block.bloom_date, days)
    gdd = growing_degree_days(daily["t_min"], daily["t_max"], crop.gdd_base_c, crop.gdd_cutoff_c)
    assert 0.85 * crop.gdd_target < gdd.sum() < 1.15 * crop.gdd_target


def test_same_seed_same_season_other_seed_other_weather(orchard: Orchard) -> None:
    start = datetime(2026, 5, 1, tzinfo=UTC)
    a = simulate_arrays(orchard, start, start + timedelta(days=3), seed=9)
    b = simulate_arrays(orchard, start, start + timedelta(days=3), seed=9)
    c = simulate_arrays(orchard, start, start + timedelta(days=3), seed=10)
    assert np.array_equal(a.temperature, b.temperature)
    assert np.array_equal(a.soil_moisture, b.soil_moisture)
    assert not np.array_equal(a.temperature, c.temperature)
    assert ready_date(orchard, "cherry-north", seed=9) == ready_date(
        orchard, "cherry-north", seed=9
    )


def test_generator_yields_contract_readings_and_applies_faults(orchard: Orchard) -> None:
    start = datetime(2026, 5, 1, tzinfo=UTC)
    rows = list(
        simulate(
            orchard,
            start,
            start + timedelta(days=2),
            step_s=600,
            seed=4,
            faults={
                "apple-east-n01": "stuck",
                "apple-east-n02": "dropouts:0.5",
                "apple-east-n03": "clock_skew:-3600",
                "apple-east-n04": "spikes:0.2",
            },
        )
    )
    by_node: dict[str, list] = {}
    for block_id, node, reading in rows:
        assert orchard.block(block_id)
        by_node.setdefault(node, []).append(reading)
    steps = 2 * 24 * 6
    assert len(by_node["apple-east-n05"]) == steps
    assert [r.seq for r in by_node["apple-east-n05"]] == list(range(steps))
    stuck = by_node["apple-east-n01"]
    assert len({(r.temperature, r.humidity, r.soil_moisture) for r in stuck}) == 1
    assert len({r.temperature for r in by_node["apple-east-n05"]}) > 100
    assert 0.3 * steps < len(by_node["apple-east-n02"]) < 0.7 * steps
    skewed, normal = by_node["apple-east-n03"][0], by_node["apple-east-n05"][0]
    assert (normal.ts - skewed.ts) == timedelta(hours=1)
    spiky = np.array([r.temperature for r in by_node["apple-east-n04"]])
    assert (np.abs(np.diff(spiky)) > 20).sum() >= 10
    # Every generated reading satisfies the device contract.
    from orchard.models import Reading

    for _, _, reading in rows[:: max(1, len(rows) // 500)]:
        Reading.model_validate(reading.model_dump())


def test_dying_battery_goes_silent(orchard: Orchard) -> None:
    start = datetime(2026, 5, 1, tzinfo=UTC)
    season = simulate_arrays(
        orchard,
        start,
        start + timedelta(days=4),
        step_s=900,
        seed=1,
        faults={"cherry-north-n01": "dying_battery"},
    )
    j = season.column("cherry-north-n01")
    present = season.present[:, j]
    assert present[0] and not present[-1]
    volts = season.battery[present, j]
    assert volts[-1] < volts[0] - 0.5
    assert season.present[:, season.column("cherry-north-n02")].all()
