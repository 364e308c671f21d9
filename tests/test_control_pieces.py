"""The engine judges each bin once: a period evaluated in pieces, with the carried state
handed from one piece to the next, decides exactly as the period evaluated at once.

This is what lets the live tick evaluate only its new minute (and the backtest a month in
one call) with one implementation. The period below exercises every rule that carries
something between pieces: durations (frost, heat, VPD, soil, battery), stuck runs,
spikes and their count, held values over gaps, offline age, the rain baseline, irrigation
runs and their settling time, and the "no healthy sensor" episode.
"""

from __future__ import annotations

import itertools
from datetime import date

import numpy as np
import pytest

from control.engine import BlockTable, Carry, EngineResult, EngineState, Grid, evaluate
from control.thresholds import _effective
from orchard.layout import Block

STEP = 60.0
HOURS = 30
DAY = date(2026, 5, 20)


def _blocks() -> list[Block]:
    common = dict(
        soil="loam",
        area_ha=1.0,
        trees=800,
        bloom_date=date(2026, 4, 10),
        latitude=34.3,
        irrigation_rate_mm_h=40.0,
        application_efficiency=0.9,
    )
    return [
        Block(id="b1", crop="apple", node_count=4, controller="b1-ctl", valves=["b1-v1"], **common),
        Block(
            id="b2", crop="cherry", node_count=3, controller="b2-ctl", valves=["b2-v1"], **common
        ),
        Block(id="b3", crop="orange", node_count=2, **common),
    ]


def _grid(blocks: list[Block], seed: int = 11) -> Grid:
    rng = np.random.default_rng(seed)
    n_t = HOURS * 60
    times = 1_780_000_000.0 + np.arange(n_t) * STEP
    minute = np.arange(n_t, dtype=np.float64)
    nodes = [n for b in blocks for n in b.sensor_nodes]
    node_block = np.array([i for i, b in enumerate(blocks) for _ in b.sensor_nodes])
    n = len(nodes)
    hours = minute / 60.0
    temp = 14 + 9 * np.sin((hours - 9) / 24 * 2 * np.pi) + rng.normal(0, 0.3, (n, n_t))
    hum = np.clip(
        65 - 20 * np.sin((hours - 9) / 24 * 2 * np.pi) + rng.normal(0, 2, (n, n_t)), 5, 100
    )
    soil = 0.26 - 0.14 * np.clip((minute - 120) / 600, 0, 1) + rng.normal(0, 0.002, (n, n_t))
    battery = np.full((n, n_t), 3.9) + rng.normal(0, 0.005, (n, n_t))
    # b1: frost at night hours 20-22 on all nodes; a rain at minute 250 refills the soil.
    b1 = node_block == 0
    temp[np.ix_(b1, (minute >= 1200) & (minute < 1330))] = -2.5
    soil[np.ix_(b1, minute >= 250)] += 0.09
    hum[np.ix_(b1, (minute >= 245) & (minute < 290))] = 98.0
    # b2: heat in the afternoon, a spiky temperature sensor, a stuck soil probe, low battery.
    b2_nodes = np.flatnonzero(node_block == 1)
    temp[np.ix_(b2_nodes, (minute >= 600) & (minute < 760))] = 38.0
    temp[b2_nodes[0], [300, 420, 500, 530, 900]] = 30.0
    soil[b2_nodes[1], 200:] = 0.2345
    battery[b2_nodes[2], 700:1100] = 3.1
    # b3: both nodes go silent for hours (offline, no healthy sensor), then come back;
    # one reads out of range for a while.
    b3_nodes = np.flatnonzero(node_block == 2)
    for arr in (temp, hum, soil, battery):
        arr[np.ix_(b3_nodes, (minute >= 400) & (minute < 700))] = np.nan
    soil[b3_nodes[0], 1000:1100] = 0.9
    temp[b3_nodes[0], 1400:1460] = 70.0  # a second field of the same node, later
    # Readings every few minutes, not every bin, on some nodes (gaps the hold covers).
    sparse = np.ones((n, n_t), dtype=bool)
    sparse[::2, 1::3] = False
    for arr in (temp, hum, soil, battery):
        arr[~sparse] = np.nan
    maturity = np.full((n, n_t), np.nan)
    maturity[:, 30] = rng.uniform(2.0, 4.0, n)
    return Grid(
        times_s=times,
        nodes=nodes,
        node_block=node_block,
        blocks=[b.id for b in blocks],
        values={
            "temperature": temp,
            "humidity": hum,
            "soil_moisture": soil,
            "battery": battery,
            "maturity": maturity,
        },
        prior_age_s=np.full(n, 120.0),
        prior_maturity=np.full(n, np.nan),
    )


def _slice(grid: Grid, a: int, b: int) -> Grid:
    return Grid(
        times_s=grid.times_s[a:b],
        nodes=grid.nodes,
        node_block=grid.node_block,
        blocks=grid.blocks,
        values={k: v[:, a:b] for k, v in grid.values.items()},
        prior_age_s=grid.prior_age_s,
        prior_maturity=grid.prior_maturity,
    )


def _keys(results: list[EngineResult]) -> tuple[list, list, list]:
    alarms = sorted(
        (a.t_s, a.type, a.subject, a.kind, a.severity, a.message) for r in results for a in r.alarms
    )
    decisions = [
        (d.t_s, d.block, d.action, d.code, d.duration_s, d.water_m3, d.reason)
        for r in results
        for d in r.decisions
    ]
    rains = [(t, b, round(mm, 6)) for r in results for t, b, mm in r.rain_events]
    return alarms, decisions, rains


@pytest.mark.parametrize("pieces", ["random", "warm-up then bins", "empty first piece"])
def test_pieces_decide_exactly_as_one_evaluation(pieces: str) -> None:
    blocks = _blocks()
    table = BlockTable(blocks, [_effective(b, DAY, []) for b in blocks], "f")
    grid = _grid(blocks)
    whole_state = EngineState()
    whole = evaluate(grid, table, whole_state, float("-inf"))

    n_t = grid.n_times
    rng = np.random.default_rng(5)
    if pieces == "random":
        edges = sorted({0, n_t, *rng.integers(1, n_t, 60).tolist()})
    elif pieces == "warm-up then bins":
        edges = [0, 1200, *range(1201, n_t + 1)]
    else:
        edges = [0, 0, 5, 5, *range(60, n_t, 97), n_t]
    state, carry = EngineState(), Carry()
    results = [
        evaluate(_slice(grid, a, b), table, state, float("-inf"), carry=carry)
        for a, b in itertools.pairwise(edges)
    ]
    alarms, decisions, rains = _keys(results)
    w_alarms, w_decisions, w_rains = _keys([whole])
    assert alarms == w_alarms
    assert decisions == w_decisions
    assert rains == w_rains
    assert state.active == whole_state.active
    assert state.last_code == whole_state.last_code
    assert state.rain_until == whole_state.rain_until
    for block, snapshot in whole.block_snapshot.items():
        assert results[-1].block_snapshot[block] == pytest.approx(snapshot, nan_ok=True)

    # The period really exercises what is carried.
    types = {a[1] for a in w_alarms}
    assert {
        "frost",
        "heat",
        "sensor_spikes",
        "sensor_stuck",
        "sensor_out_of_range",
        "node_offline",
        "low_battery",
        "soil_dry",
    } <= types, types
    codes = {d[3] for d in w_decisions}
    assert {"irrigate", "skip_no_sensor"} <= codes, codes
    assert any(r[1] == "b1" for r in w_rains)


def test_warm_up_emits_nothing_before_since_and_the_same_after() -> None:
    """The live loop's restart: the context window is evaluated with ``since`` at the last
    bin already handled, then the new bins; together they decide as one evaluation."""
    blocks = _blocks()
    table = BlockTable(blocks, [_effective(b, DAY, []) for b in blocks], "f")
    grid = _grid(blocks)
    whole = evaluate(grid, table, EngineState(), float("-inf"))
    cut = 1000
    since = float(grid.times_s[cut - 1])
    carry = Carry()
    state = EngineState()
    # What was active at the cut comes from the store in the live loop.
    evaluate(_slice(grid, 0, cut), table, state, float("-inf"))
    active_at_cut = dict(state.active)
    state = EngineState(active=active_at_cut, last_code={})
    warm = evaluate(_slice(grid, 0, cut), table, state, since, carry=carry)
    assert warm.alarms == [] and warm.decisions == [] and warm.rain_events == []
    rest = evaluate(_slice(grid, cut, grid.n_times), table, state, since, carry=carry)
    after = [a for a in _keys([whole])[0] if a[0] > since]
    assert _keys([rest])[0] == after


def test_a_node_whose_status_says_offline_is_raised_once_across_pieces() -> None:
    """The retained status (Last Will) says offline: bins after its last reading count as
    offline in every piece, so ticks of several bins do not clear and raise it again."""
    blocks = _blocks()
    table = BlockTable(blocks, [_effective(b, DAY, []) for b in blocks], "f")
    grid = _slice(_grid(blocks), 0, 120)
    node = grid.nodes[1]
    for values in grid.values.values():
        values[1, 30:] = np.nan
    state, carry = EngineState(), Carry()
    transitions = [
        (a.t_s, a.kind)
        for a_, b_ in itertools.pairwise(range(0, 121, 10))
        for a in evaluate(
            _slice(grid, a_, b_), table, state, float("-inf"), carry=carry, offline_now={node}
        ).alarms
        if a.subject == node and a.type == "node_offline"
    ]
    assert transitions == [(float(grid.times_s[30]), "raise")]
