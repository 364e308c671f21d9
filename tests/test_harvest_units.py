"""Harvest readiness, forecast, grading and the lot lifecycle, without InfluxDB."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from control.harvest.forecast import ForecastInputs, ForecastRules, forecast_ready, theil_sen
from control.harvest.grading import estimated_quantity_kg, grade_readings
from control.harvest.lots import (
    LotDraft,
    LotStateError,
    correct_quantity,
    get_lot,
    lot_history,
    mark_sold_out,
    publish_lot,
    upsert_lot,
    withdraw_lot,
)
from control.harvest.readiness import BlockDaily, ReadinessState, Thresholds, evaluate_block
from control.harvest.tables import lot
from control.store import open_store
from orchard.crops import CROPS
from orchard.layout import Block

APPLE = CROPS["apple"]


def test_theil_sen_ignores_outliers_that_move_least_squares() -> None:
    x = np.arange(20, dtype=float)
    y = 1.0 + 0.1 * x
    y[[16, 18, 19]] += 8.0  # three wild readings at the end
    fit = theil_sen(x, y)
    assert fit.slope == pytest.approx(0.1, abs=1e-9)
    assert fit.slope_low <= 0.1 <= fit.slope_high
    least_squares = np.polyfit(x, y, 1)[0]
    assert abs(least_squares - 0.1) > 0.05


def _inputs(level: np.ndarray, nodes: int = 5, gdd_cum: float = 900.0) -> ForecastInputs:
    n = level.size
    return ForecastInputs(
        as_of=date(2026, 8, 1),
        day_offsets=np.arange(-(n - 1), 1, dtype=float),
        maturity_level=level,
        threshold=3.0,
        healthy_nodes=nodes,
        gdd_cum=gdd_cum,
        gdd_target=1000.0,
        daily_gdd=np.full(n, 10.0),
    )


def test_forecast_on_a_clean_trend_and_gdd_rate() -> None:
    level = 1.0 + 0.1 * np.arange(15, dtype=float)  # 2.4 today, 0.1/day: 6 days to go
    fc = forecast_ready(_inputs(level, gdd_cum=990.0))
    assert fc.ok and fc.days == pytest.approx(6.0, abs=0.01)
    assert fc.low_days is not None and fc.high_days is not None
    assert fc.low_days <= fc.days <= fc.high_days
    assert fc.date == date(2026, 8, 7)
    # GDD further away than maturity: the later of the two wins.
    fc_gdd = forecast_ready(_inputs(level, gdd_cum=800.0))
    assert fc_gdd.days == pytest.approx(20.0, abs=0.01)


@pytest.mark.parametrize(
    ("level", "nodes", "reason"),
    [
        (1.0 + 0.1 * np.arange(15.0), 2, "too few healthy nodes"),
        (1.0 + 0.1 * np.arange(4.0), 5, "too little maturity history"),
        (np.full(15, 1.5), 5, "not rising"),
        (
            1.0 + 0.02 * np.arange(15.0) + np.tile([0.0, 1.2, -0.9], 5),
            5,
            "not rising",
        ),
    ],
)
def test_a_poor_forecast_gives_a_reason_not_a_date(
    level: np.ndarray, nodes: int, reason: str
) -> None:
    fc = forecast_ready(_inputs(level, nodes=nodes))
    assert not fc.ok and fc.date is None
    assert fc.reason is not None and reason in fc.reason


def test_noisy_index_is_reported_as_noisy() -> None:
    rng = np.random.default_rng(3)
    level = 1.0 + 0.02 * np.arange(21.0) + rng.normal(0, 0.3, 21)
    level[-1] = 1.3
    inputs = _inputs(level)
    fc = forecast_ready(inputs)
    assert not fc.ok
    assert fc.reason is not None and "uncertain" in fc.reason


def _series(
    maturity: np.ndarray, tmin: float = 10.0, tmax: float = 26.0, days: int | None = None
) -> BlockDaily:
    n = maturity.shape[1] if days is None else days
    start = date(2026, 4, 12)
    return BlockDaily(
        nodes=[f"n{i}" for i in range(maturity.shape[0])],
        days=[start + timedelta(days=i) for i in range(n)],
        maturity=maturity,
        tmin=np.full(n, tmin),
        tmax=np.full(n, tmax),
    )


def _ramp(nodes: int, days: int, start: float, slope: float) -> np.ndarray:
    base = start + slope * np.arange(days, dtype=float)
    offsets = np.linspace(-0.1, 0.1, nodes)[:, None]
    return base[None, :] + offsets


def test_ready_when_maturity_gdd_and_no_alarm() -> None:
    # 12 degree-days a day over base 6.1 for 130 days: 1560 >= 1400.
    mat = _ramp(5, 130, 1.0, 0.025)  # reaches 3.0 near day 80
    series = _series(mat, tmin=10.1, tmax=26.1)
    thresholds = Thresholds.from_crop(APPLE)
    r = evaluate_block("b", APPLE, series, thresholds)
    assert r.state is ReadinessState.READY and r.ready_share == 1.0
    assert r.gdd_cum == pytest.approx(130 * 12.0)
    held = evaluate_block("b", APPLE, series, thresholds, open_alarms=["frost"])
    assert held.state is ReadinessState.NOT_READY
    assert any("frost" in reason for reason in held.reasons)


def test_gdd_short_keeps_block_not_ready_even_with_ripe_index() -> None:
    mat = _ramp(5, 60, 2.0, 0.05)
    r = evaluate_block("b", APPLE, _series(mat), Thresholds.from_crop(APPLE))
    assert r.state is not ReadinessState.READY
    assert any("degree-days" in reason for reason in r.reasons)


def test_faulty_nodes_do_not_vote() -> None:
    mat = _ramp(5, 130, 1.0, 0.025)
    mat[0, -6:] = 2.0  # stuck at an unripe value
    mat[1, -1] = 40.0  # impossible starch index
    mat[2, -3:] = np.nan  # silent
    r = evaluate_block("b", APPLE, _series(mat, 10.1, 26.1), Thresholds.from_crop(APPLE))
    assert set(r.unhealthy) == {"n0", "n1", "n2"}
    assert r.healthy_nodes == 2
    assert r.state is ReadinessState.NOT_READY  # 2 nodes are too few for a verdict
    assert any("only 2 healthy" in reason for reason in r.reasons)


def test_ready_soon_from_the_forecast() -> None:
    mat = _ramp(5, 120, 1.0, 0.0175)  # level ~3.0 at day 115
    r = evaluate_block("b", APPLE, _series(mat[:, :112], 10.1, 26.1), Thresholds.from_crop(APPLE))
    assert r.state is ReadinessState.READY_SOON
    assert r.forecast.days is not None and r.forecast.days <= 7


def test_harvested_is_final_for_the_season() -> None:
    mat = _ramp(5, 130, 1.0, 0.025)
    r = evaluate_block(
        "b",
        APPLE,
        _series(mat, 10.1, 26.1),
        Thresholds.from_crop(APPLE),
        previous=ReadinessState.HARVESTED,
    )
    assert r.state is ReadinessState.HARVESTED


def test_grade_and_quantity() -> None:
    assert grade_readings([3.5, 4.0, 4.5, 5.0, 2.0], (3.0, 6.0)).grade == "A"
    assert grade_readings([3.5, 4.0, 2.5, 2.0], (3.0, 6.0)).grade == "B"
    assert grade_readings([2.5, 7.0, 3.5], (3.0, 6.0)).grade == "C"
    assert grade_readings([], (3.0, 6.0)).grade == "ungraded"
    block = Block(
        id="b1", crop="apple", area_ha=1, trees=1000, bloom_date=date(2026, 4, 1), latitude=34
    )
    assert estimated_quantity_kg(block, 0.9) == 1000 * 30.0 * 0.9


@pytest.fixture
def state_engine(tmp_path: Path) -> sa.Engine:
    return open_store(f"sqlite:///{tmp_path / 'state.db'}")


def _draft(quantity: float = 1000.0, grade: str = "A") -> LotDraft:
    return LotDraft(
        lot="b1-2026-w1",
        farm="f",
        block="b1",
        season=date(2026, 4, 1),
        window_no=1,
        crop="apple",
        variety="gala",
        quantity_kg=quantity,
        grade=grade,
        in_band_share=0.9,
        window_start=date(2026, 8, 20),
        window_end=date(2026, 9, 3),
        title="Gala apples",
        description="...",
        evidence={"state": "ready"},
    )


def test_lot_upsert_never_duplicates_and_skips_noise(state_engine: sa.Engine) -> None:
    first = upsert_lot(state_engine, _draft())
    assert first.event == "created" and first.lot.version == 1
    same = upsert_lot(state_engine, _draft(quantity=1010.0))  # 1 %: noise
    assert same.event is None and same.lot.version == 1
    bigger = upsert_lot(state_engine, _draft(quantity=1200.0))
    assert bigger.event == "updated" and bigger.lot.version == 2
    with state_engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(lot)).scalar_one() == 1
        # The unique key holds even against a writer that skips upsert_lot.
        with pytest.raises(sa.exc.IntegrityError):
            conn.execute(
                lot.insert().values(
                    lot="other",
                    farm="f",
                    block="b1",
                    season=date(2026, 4, 1),
                    window_no=1,
                    crop="apple",
                    variety="",
                    state="draft",
                    quantity_kg_estimated=1.0,
                    grade="A",
                    in_band_share=1.0,
                    window_start=date(2026, 8, 20),
                    window_end=date(2026, 9, 3),
                    title="",
                    description="",
                    evidence={},
                    version=1,
                    created_at=first.lot.created_at,
                    updated_at=first.lot.created_at,
                )
            )


def test_lot_lifecycle_and_grower_correction(state_engine: sa.Engine) -> None:
    sent: list[str] = []
    upsert_lot(state_engine, _draft())
    name = "b1-2026-w1"
    with pytest.raises(LotStateError, match="only when published"):
        mark_sold_out(state_engine, name, "shop", sink=lambda c: sent.append(c.idempotency_key))
    published = publish_lot(state_engine, name, "shop", sink=lambda c: sent.append(str(c.event)))
    assert published.lot.state == "published" and published.lot.published_at is not None
    assert publish_lot(state_engine, name, "shop").event is None  # repeat is harmless
    corrected = correct_quantity(state_engine, name, 850.0, "grower")
    assert corrected.lot.quantity_kg == 850.0 and corrected.lot.quantity_kg_estimated == 1000.0
    # Re-estimation never overrides the grower's figure.
    upsert_lot(state_engine, _draft(quantity=1500.0))
    assert get_lot(state_engine, name).quantity_kg == 850.0
    withdrawn = withdraw_lot(state_engine, name, "shop", sink=lambda c: sent.append(str(c.event)))
    assert withdrawn.lot.state == "withdrawn"
    with pytest.raises(LotStateError):
        publish_lot(state_engine, name, "shop")
    # A closed lot is left alone by the control loop.
    assert upsert_lot(state_engine, _draft(quantity=2000.0)).event is None
    assert sent == ["published", "withdrawn"]
    events = [e["event"] for e in lot_history(state_engine, name)]
    assert events == ["created", "published", "updated", "updated", "withdrawn"]


def test_levelled_off_fruit_is_not_a_stuck_sensor_but_a_frozen_probe_is() -> None:
    mat = np.minimum(_ramp(5, 130, 1.0, 0.1), 7.5)  # over-mature fruit levels off
    r = evaluate_block("b", APPLE, _series(mat, 10.1, 26.1), Thresholds.from_crop(APPLE))
    assert r.unhealthy == {}
    # Levelling off one node after the other: the flat ones sit at the top, not behind.
    staggered = np.minimum(_ramp(5, 130, 1.0, 0.05), 7.4)
    r1 = evaluate_block("b", APPLE, _series(staggered, 10.1, 26.1), Thresholds.from_crop(APPLE))
    assert r1.unhealthy == {}
    moving = _ramp(5, 130, 1.0, 0.025)
    moving[2, -6:] = moving[2, -7]  # frozen while the others keep rising past it
    r2 = evaluate_block("b", APPLE, _series(moving, 10.1, 26.1), Thresholds.from_crop(APPLE))
    assert list(r2.unhealthy) == ["n2"] and "stuck" in r2.unhealthy["n2"]


def test_a_ready_block_stays_ready_when_a_sensor_drops_out_but_not_under_frost() -> None:
    mat = _ramp(4, 130, 1.0, 0.025)
    mat[:2, -3:] = np.nan  # two of four nodes fall silent
    series = _series(mat, 10.1, 26.1)
    thresholds = Thresholds.from_crop(APPLE)
    fresh = evaluate_block("b", APPLE, series, thresholds)
    assert fresh.state is ReadinessState.NOT_READY  # no verdict from two nodes
    kept = evaluate_block("b", APPLE, series, thresholds, previous=ReadinessState.READY)
    assert kept.state is ReadinessState.READY
    frozen = evaluate_block(
        "b", APPLE, series, thresholds, previous=ReadinessState.READY, open_alarms=["frost"]
    )
    assert frozen.state is ReadinessState.NOT_READY


def test_gdd_clock_follows_heat_not_the_calendar() -> None:
    # Fruit ripens by heat: 0.01 index per degree-day; a cool fortnight then a warm week
    # (6.75 today, 25 degree-days to go at the last ten days' 12 a day).
    daily = np.array([5.0] * 14 + [15.0] * 7)
    cum = 500.0 + np.cumsum(daily)
    level = 0.01 * cum
    base = ForecastInputs(
        as_of=date(2026, 8, 1),
        day_offsets=np.arange(-20, 1, dtype=float),
        maturity_level=level,
        threshold=7.0,
        healthy_nodes=5,
        gdd_cum=float(cum[-1]),
        gdd_target=0.0,
        daily_gdd=daily,
        gdd_cum_series=cum,
    )
    by_heat = forecast_ready(base)
    assert by_heat.ok and by_heat.detail["maturity_days"] == pytest.approx(25.0 / 12.0, abs=0.05)
    by_days = forecast_ready(base, ForecastRules(clock="days"))
    # The calendar trend averages the cool days in and comes out later.
    assert by_days.days is not None and by_heat.days is not None
    assert by_days.days > by_heat.days


def test_backtest_ready_date_moves_with_the_proposed_threshold() -> None:
    from datetime import UTC, datetime

    from control.engine import EngineResult, Grid
    from control.harvest import backtest_ready_date
    from control.harvest.bench import demo_subset
    from firmware_sim.season import ready_date, simulate_arrays

    orchard = demo_subset(("cherry-north",))
    block = orchard.block("cherry-north")
    season = simulate_arrays(
        orchard,
        datetime(2026, 4, 2, tzinfo=UTC),
        datetime(2026, 7, 1, tzinfo=UTC),
        step_s=3 * 3600,
        seed=5,
    )
    grid = Grid(
        times_s=season.times,
        nodes=season.node_ids,
        node_block=np.zeros(len(season.node_ids), dtype=np.int64),
        blocks=[block.id],
        values={"maturity": season.maturity.T.copy(), "temperature": season.temperature.T.copy()},
    )
    no_alarms = EngineResult(
        alarms=[], decisions=[], block_snapshot={}, node_faults={}, rain_events=[]
    )
    current = backtest_ready_date(
        block, grid, no_alarms, {"harvest_threshold": 16.0, "gdd_target": 750.0}
    )
    stricter = backtest_ready_date(
        block, grid, no_alarms, {"harvest_threshold": 18.0, "gdd_target": 750.0}
    )
    truth = ready_date(orchard, block.id, seed=5)
    assert current is not None and stricter is not None and truth is not None
    assert 0 <= (current - truth).days <= 7
    assert stricter > current
    without_maturity = Grid(
        times_s=grid.times_s,
        nodes=grid.nodes,
        node_block=grid.node_block,
        blocks=grid.blocks,
        values={"temperature": grid.values["temperature"]},
    )
    assert (
        backtest_ready_date(
            block, without_maturity, no_alarms, {"harvest_threshold": 16.0, "gdd_target": 750.0}
        )
        is None
    )


def test_gdd_rate_drift_is_followed_but_bounded() -> None:
    from control.harvest.forecast import _days_to_accumulate

    assert _days_to_accumulate(100.0, 10.0, 0.0) == pytest.approx(10.0)
    warming = _days_to_accumulate(100.0, 10.0, 0.2)
    assert 8.0 < warming < 10.0
    # A steep fitted trend is not extrapolated beyond 1.25 times today's rate.
    assert _days_to_accumulate(100.0, 10.0, 5.0) == pytest.approx(100.0 / 12.5, abs=0.2)
    assert _days_to_accumulate(0.0, 10.0, 0.0) == 0.0
