"""The live loop's rolling window: incremental ticks decide exactly as a replay of the whole
period, late readings are caught, water is counted once, block maturity reaches block_state."""

from __future__ import annotations

import math
import uuid
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from control.alarms import Alarms
from control.clock import FixedClock
from control.data import load_grid
from control.engine import BlockTable, EngineState, evaluate
from control.service import ControlService, ControlSettings
from control.store import kv_get, open_store
from control.thresholds import _effective
from control.window import RollingWindow
from orchard.influx import InfluxClient, SyncInfluxClient
from orchard.layout import Orchard
from orchard.lineprotocol import encode_point, to_ns
from orchard.settings import InfluxSettings
from tests.conftest import LiveStack
from tests.test_control_helpers import T0, small_orchard, write_readings

HOURS = 14


def _two_valve_orchard(farm: str) -> Orchard:
    orchard = small_orchard(nodes=4, farm=farm)
    block = orchard.blocks[0].model_copy(update={"valves": ["b1-v1", "b1-v2"], "area_ha": 2.0})
    return orchard.model_copy(update={"blocks": [block]})


def _write_period(influx: SyncInfluxClient, orchard: Orchard, farm: str) -> None:
    block = orchard.blocks[0]
    n1, n2, n3, n4 = block.sensor_nodes

    def soil(m: float) -> float:
        # Drying from hour 6 to below the 0.21 trigger, with probe noise (not stuck).
        base = 0.26 if m < 360 else max(0.19, 0.26 - 0.07 * (m - 360) / 180)
        return base + 0.0005 * ((m % 7) - 3) / 3

    def temperature(m: float) -> float:
        return -2.0 if 600 <= m < 640 else 12.0 + 0.01 * (m % 13)

    def spiky(m: float) -> float:
        return 30.0 if m in (300, 420, 500) else temperature(m)

    temps = {n1: temperature, n2: spiky, n3: temperature, n4: temperature}
    write_readings(
        influx, block, HOURS * 60, soil=soil, temperature=temps, farm=farm, nodes=[n1, n2, n3]
    )
    # n4 goes silent at hour 12: offline before the end.
    write_readings(
        influx, block, 12 * 60, soil=soil, temperature=temperature, farm=farm, nodes=[n4]
    )
    # One maturity reading per node at the start (maturity is sampled rarely).
    influx.write(
        [
            encode_point(
                "telemetry",
                {"farm": farm, "block": block.id, "node": node},
                {"maturity": value},
                to_ns(T0 + timedelta(minutes=5, seconds=30)),
            )
            for node, value in ((n1, 2.0), (n2, 2.5), (n3, 3.0), (n4, 9.0))
        ]
    )


async def test_incremental_ticks_decide_exactly_as_a_full_replay(
    stack: LiveStack, influx_db: InfluxSettings, influx: SyncInfluxClient, tmp_path: Path
) -> None:
    farm = f"farm-{uuid.uuid4().hex[:6]}"
    orchard = _two_valve_orchard(farm)
    block = orchard.blocks[0]
    _write_period(influx, orchard, farm)
    state_url = f"sqlite:///{tmp_path}/state.db"
    service = ControlService(
        ControlSettings(
            demo=True,
            influx=influx_db,
            mqtt=stack.mqtt("orchard-control"),
            state_url=state_url,
            control_step_s=60,
            control_irrigate=False,
        ),
        orchard=orchard,
        engine=open_store(state_url),
        clock=FixedClock(T0 + timedelta(minutes=10)),
    )
    service.evaluators = []
    clock = service.clock
    assert isinstance(clock, FixedClock)
    alarms, decisions, full_fetches = [], [], 0
    try:
        now = T0 + timedelta(minutes=10)
        while now <= T0 + timedelta(hours=HOURS):
            clock.set(now)
            report = await service.tick()
            alarms += report.alarms
            decisions += report.decisions
            full_fetches += report.full_fetch
            now += timedelta(minutes=7)
        await service.flush_lines()
    finally:
        await service.influx.aclose()
    assert full_fetches == 1  # the first tick; every later one fetched only the new minutes

    # The same period replayed in one evaluation over a grid loaded in one go.
    end = T0 + timedelta(minutes=(HOURS * 60 // 7) * 7 + 10)
    grid = load_grid(influx, farm, [block], T0, end, 60.0)
    table = BlockTable([block], [_effective(block, T0.date(), [])], farm)
    replay = evaluate(grid, table, EngineState(), float("-inf"))

    def alarm_key(a):
        return (a.t_s, a.type, a.subject, a.kind, a.severity)

    def decision_key(d):
        return (d.t_s, d.action, d.code, d.duration_s, d.water_m3)

    assert sorted(map(alarm_key, alarms)) == sorted(map(alarm_key, replay.alarms))
    assert [decision_key(d) for d in decisions] == [decision_key(d) for d in replay.decisions]
    # The period really exercises the rules being compared.
    types = {a.type for a in replay.alarms}
    assert {"frost", "sensor_spikes", "node_offline"} <= types
    assert [d.action for d in replay.decisions].count("irrigate") >= 1

    # Water: one decision, two valves, counted once.
    [irrigate, *_] = [d for d in decisions if d.action == "irrigate"]
    q = influx.query_one
    points = q(
        f"SELECT water_m3, valve FROM irrigation WHERE farm = '{farm}'"
        f" AND time = {to_ns(T0) + int((irrigate.t_s - T0.timestamp()) * 1e9)}"
    )[0].rows()
    assert sorted(p["valve"] for p in points) == ["b1-v1", "b1-v2"]
    assert sum(p["water_m3"] for p in points) == pytest.approx(irrigate.water_m3, abs=1e-3)
    [total] = q(f"SELECT sum(water_m3) AS w FROM irrigation WHERE farm = '{farm}'")[0].rows()
    assert total["w"] == pytest.approx(
        sum(d.water_m3 or 0 for d in decisions if d.action == "irrigate"), abs=1e-3
    )

    # Block maturity: median over the healthy nodes' latest readings (n4 is offline by now),
    # though the readings left the window hours ago.
    rows = q(f"SELECT maturity, maturity_threshold FROM block_state WHERE farm = '{farm}'")[
        0
    ].rows()
    assert rows[-1]["maturity"] == pytest.approx(2.5)
    assert rows[0]["maturity"] == pytest.approx(2.75)  # all four online: median of 2,2.5,3,9
    assert rows[-1]["maturity_threshold"] == 3.0


async def test_window_fetches_only_new_bins_and_a_reload_sees_late_readings(
    influx_db: InfluxSettings, influx: SyncInfluxClient
) -> None:
    farm = f"farm-{uuid.uuid4().hex[:6]}"
    orchard = small_orchard(nodes=2, farm=farm)
    block = orchard.blocks[0]
    node = block.sensor_nodes[0]
    write_readings(influx, block, 60, soil=lambda m: 0.25, farm=farm)
    window = RollingWindow(farm, [block], 60.0)
    t0 = T0.timestamp()

    def late(minute: int, value: float) -> None:
        influx.write(
            encode_point(
                "telemetry",
                {"farm": farm, "block": block.id, "node": node},
                {"soil_moisture": value},
                to_ns(T0 + timedelta(minutes=minute, seconds=20)),
            )
        )

    client = InfluxClient(influx_db)
    try:
        grid = await window.update(client, t0, t0 + 3600)
        assert window.stats.full and window.stats.rows == 120
        # Nothing new: no query at all.
        await window.update(client, t0, t0 + 3600)
        assert not window.stats.full and window.stats.rows == 0 and window.stats.query_s == 0
        # Two new minutes (one written late, into a minute already read) and the window
        # moved on by two: only the two new bins are fetched.
        write_readings(
            influx, block, 62, soil=lambda m: 0.26, farm=farm, start=T0 + timedelta(minutes=60)
        )
        late(40, 0.33)
        grid = await window.update(client, t0 + 120, t0 + 3720)
        assert not window.stats.full and window.stats.bins == 2 and window.stats.rows == 4
        assert grid.times_s[0] == t0 + 120 and grid.n_times == 60
        i40 = int(np.flatnonzero(grid.times_s == t0 + 40 * 60)[0])
        assert grid.field("soil_moisture")[0, i40] == 0.25  # the late reading: not re-read
        assert grid.field("soil_moisture")[0, -1] == 0.26
        tail = window.tail(t0 + 3540)  # the bins after the last one evaluated
        assert tail.times_s.tolist() == [t0 + 3600, t0 + 3660]
        np.testing.assert_array_equal(tail.field("soil_moisture"), [[0.26, 0.26], [0.26, 0.26]])
        # A reload (a restart, a jump of the clock) reads the whole window again, late
        # readings included, and equals a replay's grid of the same period.
        fresh = RollingWindow(farm, [block], 60.0)
        grid = await fresh.update(client, t0 + 120, t0 + 3720)
        assert fresh.stats.full
        assert grid.field("soil_moisture")[0, i40] == pytest.approx((0.25 + 0.33) / 2)
        replay = load_grid(
            influx, farm, [block], T0 + timedelta(minutes=2), T0 + timedelta(minutes=62)
        )
        for f, v in replay.values.items():
            np.testing.assert_array_equal(grid.values[f], v)
        assert math.isinf(float(grid.prior_age_s[0])) is False
    finally:
        await client.aclose()


async def test_maturity_read_in_its_own_statement_reaches_block_state(
    stack: LiveStack, influx_db: InfluxSettings, influx: SyncInfluxClient, tmp_path: Path
) -> None:
    """A minute's query leaves maturity out (it costs a cursor per node); its own statement
    every MATURITY_EVERY_S still brings a new reading to the block's maturity."""
    from control.window import MATURITY_EVERY_S

    farm = f"farm-{uuid.uuid4().hex[:6]}"
    orchard = small_orchard(nodes=3, farm=farm)
    block = orchard.blocks[0]
    write_readings(influx, block, 60, soil=lambda m: 0.25, farm=farm)
    state_url = f"sqlite:///{tmp_path}/state.db"
    clock = FixedClock(T0 + timedelta(minutes=10, seconds=30))
    service = ControlService(
        ControlSettings(
            demo=True,
            influx=influx_db,
            mqtt=stack.mqtt("orchard-control"),
            state_url=state_url,
            control_irrigate=False,
        ),
        orchard=orchard,
        engine=open_store(state_url),
        clock=clock,
    )
    service.evaluators = []

    def latest_maturity() -> float | None:
        rows = influx.query_one(
            f"SELECT last(maturity) AS m FROM block_state WHERE farm = '{farm}'"
        )
        return rows[0].rows()[0]["m"] if rows else None

    try:
        await service.tick()
        await service.flush_lines()
        assert latest_maturity() is None
        # Every node reads maturity once, at minute 12 (after the first load).
        influx.write(
            [
                encode_point(
                    "telemetry",
                    {"farm": farm, "block": block.id, "node": node},
                    {"maturity": value},
                    to_ns(T0 + timedelta(minutes=12, seconds=5)),
                )
                for node, value in zip(block.sensor_nodes, (2.0, 3.0, 4.0), strict=True)
            ]
        )
        seen_at = None
        for minute in range(11, 11 + int(MATURITY_EVERY_S // 60) + 3):
            clock.set(T0 + timedelta(minutes=minute, seconds=30))
            await service.tick()
            await service.flush_lines()
            if seen_at is None and latest_maturity() is not None:
                seen_at = minute
        assert latest_maturity() == pytest.approx(3.0)
        assert seen_at is not None and seen_at <= 12 + MATURITY_EVERY_S / 60 + 1
    finally:
        await service.influx.aclose()


async def test_bins_wait_for_a_lagging_ingest_but_a_silent_farm_still_alarms(
    stack: LiveStack, influx_db: InfluxSettings, influx: SyncInfluxClient, tmp_path: Path
) -> None:
    """Nothing stored after a bin yet (ingest catching up after an InfluxDB outage): the
    bin waits instead of being judged empty, for at most control_hold_s, so a farm that
    really fell silent is still alarmed offline."""
    farm = f"farm-{uuid.uuid4().hex[:6]}"
    orchard = small_orchard(nodes=3, farm=farm)
    block = orchard.blocks[0]
    soil = lambda m: 0.25 + 0.001 * (m % 5)  # noqa: E731
    write_readings(influx, block, 61, soil=soil, farm=farm)
    state_url = f"sqlite:///{tmp_path}/state.db"
    store = open_store(state_url)
    clock = FixedClock(T0 + timedelta(minutes=61, seconds=30))
    service = ControlService(
        ControlSettings(
            demo=True,
            influx=influx_db,
            mqtt=stack.mqtt("orchard-control"),
            state_url=state_url,
            control_irrigate=False,
        ),
        orchard=orchard,
        engine=store,
        clock=clock,
    )
    service.evaluators = []

    def processed() -> float:
        return float(kv_get(store, "control", "processed_until"))

    def offline_alarms() -> list[str]:
        return sorted(a.subject for a in Alarms(store).active() if a.type == "node_offline")

    try:
        report = await service.tick()
        assert not report.held_back and processed() == (T0 + timedelta(minutes=60)).timestamp()
        # Minutes 61-64 are late: the tick at 64:30 waits for them.
        clock.set(T0 + timedelta(minutes=64, seconds=30))
        report = await service.tick()
        assert report.held_back and processed() == (T0 + timedelta(minutes=60)).timestamp()
        write_readings(
            influx,
            block,
            4,
            soil=lambda m: soil(m + 61),
            farm=farm,
            start=T0 + timedelta(minutes=61),
        )
        clock.set(T0 + timedelta(minutes=65, seconds=30))
        report = await service.tick()
        assert not report.held_back and processed() == (T0 + timedelta(minutes=64)).timestamp()
        # The late minutes were judged with their readings: all three sensors healthy.
        await service.flush_lines()
        [state] = influx.query_one(
            f"SELECT last(healthy_nodes) AS h FROM block_state WHERE farm = '{farm}'"
        )
        assert state.rows()[0]["h"] == 3
        # Then the farm falls silent for good: after control_hold_s the bins are judged
        # anyway, and 30 minutes of silence raise node_offline for every node.
        for minute in range(70, 106, 5):
            clock.set(T0 + timedelta(minutes=minute, seconds=30))
            await service.tick()
        assert processed() >= (T0 + timedelta(minutes=105 - 6)).timestamp()
        assert offline_alarms() == sorted(block.sensor_nodes)
    finally:
        await service.influx.aclose()


async def test_a_query_split_by_blocks_fills_the_same_window(
    influx_db: InfluxSettings, influx: SyncInfluxClient
) -> None:
    """ORCHARD_CONTROL_QUERY_PARTS: the steady query as concurrent statements, each for a
    group of blocks, gives the window exactly what one statement gives."""
    farm = f"farm-{uuid.uuid4().hex[:6]}"
    base = small_orchard(nodes=2, farm=farm).blocks[0]
    blocks = [base.model_copy(update={"id": f"b{k}"}) for k in range(1, 4)]
    for k, block in enumerate(blocks):
        write_readings(influx, block, 30, soil=lambda m, k=k: 0.2 + 0.01 * k + 0.001 * m, farm=farm)
    t0 = T0.timestamp()
    client = InfluxClient(influx_db)
    try:
        grids = []
        for parts in (1, 2):
            window = RollingWindow(farm, blocks, 60.0, query_parts=parts)
            await window.update(client, t0, t0 + 600)
            grid = await window.update(client, t0, t0 + 1800)
            assert not window.stats.full and window.stats.rows == 6 * 20
            grids.append(grid)
        one, split = grids
        assert one.nodes == split.nodes and len(one.nodes) == 6
        for f in one.values:
            np.testing.assert_array_equal(one.values[f], split.values[f])
        assert not np.isnan(split.field("soil_moisture")).any()
    finally:
        await client.aclose()
