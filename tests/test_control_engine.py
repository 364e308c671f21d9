"""The rule engine on readings stored in a real InfluxDB: irrigation, rain, faults, hysteresis, backtest."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pytest

from control.backtest import backtest
from control.data import load_grid
from control.engine import BlockTable, EngineState, evaluate
from control.thresholds import ThresholdValidationError, _effective, with_proposed
from orchard.influx import SyncInfluxClient
from tests.test_control_helpers import FARM, T0, small_orchard, write_readings

DAY = date(2026, 5, 20)


def _run(
    influx: SyncInfluxClient, orchard, minutes: int, overrides: dict | None = None, ticks: int = 1
):
    block = orchard.blocks[0]
    th = with_proposed(block, DAY, [], overrides) if overrides else _effective(block, DAY, [])
    grid = load_grid(influx, FARM, [block], T0, T0 + timedelta(minutes=minutes), 60.0)
    table = BlockTable([block], [th], FARM)
    state = EngineState()
    if ticks == 1:
        return evaluate(grid, table, state, float("-inf")), th
    # The live loop: the same window evaluated in slices, state carried between them.
    from control.engine import Grid

    alarms, decisions = [], []
    edges = np.linspace(0, grid.n_times, ticks + 1).astype(int)
    since = float("-inf")
    for end in edges[1:]:
        sub = Grid(
            grid.times_s[:end],
            grid.nodes,
            grid.node_block,
            grid.blocks,
            {k: v[:, :end] for k, v in grid.values.items()},
        )
        r = evaluate(sub, table, state, since)
        alarms += r.alarms
        decisions += r.decisions
        since = float(grid.times_s[end - 1])
    return (alarms, decisions), th


def test_irrigation_after_minimum_duration_with_reason_depth_and_cap(
    influx: SyncInfluxClient,
) -> None:
    orchard = small_orchard(rate_mm_h=40.0)

    # Just above the 0.21 trigger, a 30-minute dip below it (too short), then below for good.
    def soil(m: float) -> float:
        if m >= 240:
            return 0.19
        if 120 <= m < 150:
            return 0.205
        return 0.215

    write_readings(influx, orchard.blocks[0], 420, soil=soil)
    result, th = _run(influx, orchard, 420)
    assert th["trigger_duration_min"] == 60
    irrigate = [d for d in result.decisions if d.action == "irrigate"]
    assert len(irrigate) == 1, result.decisions
    d = irrigate[0]
    # Exactly when the soil has been below the trigger for the minimum duration.
    assert d.t_s == (T0 + timedelta(minutes=240 + 60)).timestamp()
    # Depth to refill: (θFC 0.30 - 0.19) × 1.2 m root zone = 132 mm net, /0.9 = 146.7 mm gross.
    assert d.depth_mm == pytest.approx(132.0, abs=0.1)
    assert d.gross_mm == pytest.approx(146.7, abs=0.1)
    assert d.duration_s == pytest.approx(146.67 / 40.0 * 3600, abs=2)
    assert d.water_m3 == pytest.approx(1466.7, abs=1)  # 1 ha
    assert "0.210" in d.reason and "60 minutes" in d.reason and "132.0 mm" in d.reason
    assert d.inputs["healthy_soil_nodes"] == 3 and d.inputs["trigger"] == pytest.approx(0.21)
    assert d.code == "irrigate"

    # At the block's real rate (3.5 mm/h) the same need is capped at the maximum run.
    slow = small_orchard(rate_mm_h=3.5)
    capped, _ = _run(influx, slow, 420)
    [c] = [x for x in capped.decisions if x.action == "irrigate"]
    assert c.code == "irrigate_capped" and c.duration_s == 240 * 60
    assert c.gross_mm == pytest.approx(14.0) and "capped at the 240-minute maximum" in c.reason


def test_no_irrigation_after_rain_wetted_the_root_zone(influx: SyncInfluxClient) -> None:
    orchard = small_orchard()

    # Dry (below trigger) and then rain lifts the soil by 0.03, still below the trigger.
    def soil(m: float) -> float:
        if m < 30:
            return 0.16
        # (with a little sensor noise: a perfectly constant value would be a stuck probe)
        return 0.16 + min(0.03, 0.001 * (m - 30)) + 0.0005 * np.sin(m)

    write_readings(
        influx, orchard.blocks[0], 600, soil=soil, humidity=lambda m: 97.0 if 30 <= m < 60 else 70.0
    )
    result, _ = _run(influx, orchard, 600)
    assert [d.action for d in result.decisions] == ["skip"], [
        (d.code, d.t_s, d.reason) for d in result.decisions
    ]
    assert result.decisions[0].code == "skip_rain"
    assert "rain" in result.decisions[0].reason
    assert result.rain_events and result.rain_events[0][2] > 10  # mm estimated from the rise


def test_stuck_sensor_is_flagged_and_never_drives_irrigation(influx: SyncInfluxClient) -> None:
    orchard = small_orchard(nodes=3)
    nodes = orchard.blocks[0].sensor_nodes
    rng = np.random.default_rng(3)
    noise = {m: float(rng.normal(0, 0.001)) for m in range(0, 480)}
    # One probe stuck at a bone-dry value; the others are moist. Later the others go silent.
    profiles = {
        nodes[0]: lambda m: 0.15,
        nodes[1]: lambda m: 0.26 + noise[int(m)] if m < 240 else None,
        nodes[2]: lambda m: 0.26 - noise[int(m)] if m < 240 else None,
    }

    def alive(node: str, value: float):
        return lambda m: value + 0.01 * m if node == nodes[0] or m < 240 else None

    write_readings(
        influx,
        orchard.blocks[0],
        480,
        soil=profiles,
        temperature={n: alive(n, 15.0) for n in nodes},
        humidity={n: alive(n, 60.0) for n in nodes},
        battery={n: alive(n, 3.9) for n in nodes},
    )
    result, _ = _run(influx, orchard, 480)
    assert not [d for d in result.decisions if d.action == "irrigate"]
    codes = [d.code for d in result.decisions]
    # Alone, the stuck probe is one sensor's word; once recognised as stuck, it is no evidence at all.
    assert "skip_few_sensors" in codes and "skip_no_sensor" in codes
    stuck = [a for a in result.alarms if a.type == "sensor_stuck"]
    assert [(a.kind, a.subject) for a in stuck] == [("raise", nodes[0])]
    # Six hours after the first repeated value (the second reading).
    assert stuck[0].t_s == (T0 + timedelta(hours=6, minutes=1)).timestamp()
    offline = {a.subject for a in result.alarms if a.type == "node_offline" and a.kind == "raise"}
    assert offline == {nodes[1], nodes[2]}


def test_frost_hysteresis_minimum_duration_escalation_and_live_equals_replay(
    influx: SyncInfluxClient,
) -> None:
    orchard = small_orchard()

    # Apple, fruit set: t10 -2.2 °C, warning from -1.2, clear above -0.2, 10 min minimum.
    def temperature(m: float) -> float:
        if 20 <= m < 25:
            return -3.0  # 5-minute dip: shorter than the minimum duration
        if 60 <= m < 90:
            return -1.5  # frost warning
        if 90 <= m < 110:
            return -2.6  # below t10: escalate
        if 110 <= m < 230:
            return -1.0 if (m // 3) % 2 else -0.6  # wobbling inside the hysteresis band
        return 3.0

    write_readings(influx, orchard.blocks[0], 300, soil=lambda m: 0.26, temperature=temperature)
    result, th = _run(influx, orchard, 300)
    frost = [
        (a.kind, a.severity, round((a.t_s - T0.timestamp()) / 60))
        for a in result.alarms
        if a.type == "frost"
    ]
    assert frost == [
        ("raise", "major", 70),
        ("escalate", "critical", 100),
        ("clear", "critical", 260),
    ]
    assert th["frost_t10"] == -2.2
    # The same readings cut into 12 ticks give exactly the same transitions.
    (alarms, _), _ = _run(influx, orchard, 300, ticks=12)
    assert [(a.kind, a.t_s) for a in alarms if a.type == "frost"] == [
        (a.kind, a.t_s) for a in result.alarms if a.type == "frost"
    ]
    # A proposal with a longer minimum duration would have alarmed later.
    later, _ = _run(influx, orchard, 300, overrides={"frost_duration_min": 25})
    first = next(a for a in later.alarms if a.type == "frost")
    assert round((first.t_s - T0.timestamp()) / 60) == 85


def test_backtest_compares_current_and_proposed_thresholds(influx: SyncInfluxClient) -> None:
    orchard = small_orchard(rate_mm_h=40.0)
    block = orchard.blocks[0]
    # Three days drying from 0.26 to 0.185, cold night on day 2.
    write_readings(
        influx,
        block,
        3 * 1440,
        every_min=5,
        soil=lambda m: 0.26 - 0.075 * m / (3 * 1440),
        temperature=lambda m: (
            -1.8 if 1440 + 120 <= m < 1440 + 200 else 12.0 + 6 * np.sin(m / 1440 * 2 * np.pi)
        ),
    )
    end = T0 + timedelta(days=3)
    result = backtest(
        influx, orchard, block.id, T0, end, {"soil_trigger": 0.18, "frost_margin_c": 0.0}
    )
    assert result.current.irrigation_count >= 1 and result.current.water_m3 > 0
    assert result.proposed.irrigation_count == 0 and result.proposed.water_m3 == 0
    assert result.current.alarm_counts.get("frost") == 1
    assert "frost" not in result.proposed.alarm_counts  # -1.8 °C is above -2.2 with no margin
    assert result.current.thresholds["soil_trigger"] == pytest.approx(0.21)
    assert result.proposed.thresholds["soil_trigger"] == 0.18
    assert any("irrigation" in line for line in result.differences)
    assert result.as_json()["block"] == "b1"
    # Five-minute bins averaged by InfluxDB (the default) agree with the raw readings.
    raw = backtest(
        influx, orchard, block.id, T0, end, {"soil_trigger": 0.18, "frost_margin_c": 0.0}, step_s=60
    )
    assert raw.current.irrigation_count == result.current.irrigation_count
    assert raw.current.alarm_counts == result.current.alarm_counts
    assert raw.proposed.alarm_counts == result.proposed.alarm_counts
    with pytest.raises(ThresholdValidationError, match="soil_trigger"):
        backtest(influx, orchard, block.id, T0, end, {"soil_trigger": 3})


def test_rule_helpers_wobble_raises_once() -> None:
    from control.alarms import AlarmRule, evaluate_rule, replay_rule

    rule = AlarmRule(
        "heat", "above", raise_at=35.0, clear_at=33.0, raise_after_s=600, clear_after_s=600
    )
    times = np.arange(0, 6 * 3600, 60.0)
    # Hot for an hour, then wobbling around 35 (above the 33 clear level) for 3 h, then cool.
    minutes = times / 60
    values = np.where(minutes < 60, 36.0, np.where(minutes < 240, 34.0 + 2 * (minutes % 2), 30.0))
    episodes = replay_rule(rule, values[None, :], times, ["b1"])
    assert episodes == [[(600.0, 240 * 60.0 + 600)]]
    now = evaluate_rule(rule, values[None, :90], times[:90])
    assert bool(now.raise_now[0]) is False and bool(now.clear_now[0]) is False
    assert now.value[0] == 36.0
    with pytest.raises(ValueError, match="clear_at"):
        AlarmRule("heat", "above", raise_at=35.0, clear_at=36.0, raise_after_s=0, clear_after_s=0)


def test_backtest_carries_maturity_to_the_readiness_date(influx: SyncInfluxClient) -> None:
    orchard = small_orchard(nodes=4)
    block = orchard.blocks[0]
    # Starch index rising half a point a day from 1.5: the 3.0 threshold is passed on day 3.
    write_readings(
        influx,
        block,
        6 * 1440,
        every_min=30,
        soil=lambda m: 0.26,
        temperature=lambda m: 20.0 + 5 * np.sin(m / 1440 * 2 * np.pi),
        maturity=lambda m: 1.5 + 0.5 * (m // 1440),
    )
    end = T0 + timedelta(days=6)
    # Degree-days: apple's 1400 are far away in May; the proposal lowers the target.
    result = backtest(influx, orchard, block.id, T0, end, {"gdd_target": 300})
    assert result.proposed.readiness_date == (T0 + timedelta(days=3)).date()
    assert result.current.readiness_date is None  # 1400 degree-days not reached
    assert any("ready date" in line for line in result.differences)
