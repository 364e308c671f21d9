"""The rule engine: every node and block at once, over numpy arrays, live and in replay.

Input is a :class:`Grid` of readings, nodes × time bins (NaN where nothing was
measured), and a :class:`BlockTable` of each block's effective thresholds as arrays.
:func:`evaluate` walks the bins once and returns every alarm transition and irrigation
decision that falls after ``since_s``, plus the latest block aggregates.

Each bin is judged once. What a rule needs from earlier bins (run lengths, the last values,
spike times, held readings, the rain baseline) is carried in a :class:`Carry`, so the
live tick evaluates only the minute that just closed, the backtest a month in one call,
and both give the same answers for the same bins (``tests/test_control_pieces.py``).
There is no second implementation: what a backtest shows is what the loop would have done.

Pipeline of one evaluation:

1. node health: out-of-range values, stuck sensors (no change for hours), spikes (a
   jump held back until the next sample tells spike from change) → faulty samples are
   excluded;
2. block aggregates over healthy nodes: median soil moisture, temperature and RH, the
   coldest healthy temperature (frost is local), VPD from the medians;
3. alarm rules (:class:`control.alarms.AlarmRule`) with hysteresis and minimum
   durations on nodes (faults, offline, battery) and blocks (frost, heat, VPD, soil);
4. irrigation: soil below trigger for the minimum duration, not in or after rain,
   not while a run is under way, never with no healthy soil sensor; depth to refill.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from control.alarms import (
    AlarmRule,
    RunStarts,
    Severity,
    carried_run,
    cummax_rows,
    rule_transitions,
    threshold_mask,
)
from control.thresholds import EffectiveThresholds
from orchard.agronomy import vpd
from orchard.layout import Block

F64 = npt.NDArray[np.float64]
B8 = npt.NDArray[np.bool_]

FIELDS = ("temperature", "humidity", "soil_moisture", "battery", "maturity")

# --- sensor fault rules (control defaults; ESTIMATE where marked) ----------------------------
# Plausible agronomic envelope, tighter than the contract's physical one: a soil probe out of
# the ground reads ~0, a flooded or shorted one above any soil's saturation (~0.5, FAO-56
# Table 19 clays); air outside -35..55 °C at orchard height is a failing sensor (ESTIMATE).
PLAUSIBLE = {
    "soil_moisture": (0.01, 0.55),
    "temperature": (-35.0, 55.0),
    "humidity": (1.0, 100.0),
}
STUCK_AFTER_S = 6 * 3600  # ESTIMATE: real soil and air values always move within 6 h
STUCK_EPS = {"soil_moisture": 1e-6, "temperature": 1e-6, "humidity": 1e-6}
SPIKE_LIMIT = {"soil_moisture": 0.08, "temperature": 8.0, "humidity": 30.0}  # ESTIMATE
SPIKES_FOR_ALARM = 3  # ESTIMATE: three spikes in SPIKE_ALARM_WINDOW_S flag the sensor
SPIKE_ALARM_WINDOW_S = 6 * 3600
FAULT_CLEAR_AFTER_S = 3600

# Stand-in age for a node whose retained status (or Last Will) says offline.
STATUS_OFFLINE_AGE = 1e12

# --- timing of block rules that are not agronomist thresholds (ESTIMATE) -------------------
CLEAR_AFTER_S = 30 * 60  # a condition must be gone this long before its alarm clears
SOIL_ALARM_AFTER_S = 2 * 3600
WATERLOGGED_AFTER_S = 6 * 3600  # a loam at saturation drains to field capacity within a day
BATTERY_AFTER_S = 30 * 60
BATTERY_HYSTERESIS_V = 0.2
# After an irrigation starts, no new decision until the run is over and water had time to
# reach the root zone ("close the loop with dead time in mind", agronomy-reference.md).
SETTLE_AFTER_RUN_S = 4 * 3600  # ESTIMATE
# Rain: a rise of the block's median soil moisture this large within RAIN_WINDOW_S that no
# irrigation explains means rain wetted the root zone (the nodes carry no rain gauge).
RAIN_RISE = 0.015  # m³/m³, ESTIMATE: several times probe noise
RAIN_WINDOW_S = 3 * 3600
RAINING_RH = 95.0  # %RH with rising soil: raining now (ESTIMATE)
# A reading stands for its node until the next one, for at most this long: readings every
# few minutes then fill one-minute bins, and a silent node stops counting soon after.
HOLD_S = 15 * 60  # ESTIMATE
# Irrigation needs at least this many healthy soil sensors (fewer if the block has fewer):
# one probe is not enough evidence, e.g. a stuck one before it is recognised as stuck.
MIN_SOIL_SENSORS = 2


@dataclass
class Grid:
    """Readings binned on a regular time axis. ``values[f]`` has shape (nodes, times)."""

    times_s: F64
    nodes: list[str]
    node_block: npt.NDArray[np.int64]
    blocks: list[str]
    values: dict[str, F64]
    # Seconds since the node was last heard before the window (NaN: unknown).
    prior_age_s: F64 | None = None
    # Each node's latest maturity reading before the window (NaN: none known). Maturity is
    # sampled rarely, so a live window of hours usually holds none.
    prior_maturity: F64 | None = None

    @property
    def n_nodes(self) -> int:
        return len(self.nodes)

    @property
    def n_times(self) -> int:
        return int(self.times_s.shape[0])

    def field(self, name: str) -> F64:
        out = self.values.get(name)
        if out is None:
            return np.full((self.n_nodes, self.n_times), np.nan)
        return out


@dataclass
class BlockTable:
    """Per-block parameters as arrays (length B), in the order of ``Grid.blocks``."""

    blocks: list[Block]
    thresholds: list[EffectiveThresholds]
    farm: str

    def __post_init__(self) -> None:
        self._cache: dict[str, F64] = {}

    def col(self, key: str) -> F64:
        """A threshold for every block, shape (B, 1) to broadcast against (B, T)."""
        if key not in self._cache:
            self._cache[key] = np.array([[t[key]] for t in self.thresholds], dtype=np.float64)
        return self._cache[key]

    def static(self, name: str) -> F64:
        return np.array([float(getattr(b, name)) for b in self.blocks], dtype=np.float64)


@dataclass
class EngineState:
    """What carries over between evaluations (the live loop persists it in the store)."""

    # (type, subject) -> severity of the alarms currently active
    active: dict[tuple[str, str], str] = field(default_factory=dict)
    # block id -> epoch seconds until which no new irrigation may start
    irrigation_busy_until: dict[str, float] = field(default_factory=dict)
    # block id -> epoch seconds until which rain blocks irrigation
    rain_until: dict[str, float] = field(default_factory=dict)
    # block id -> irrigation runs known to have happened (start_s, end_s): their soil rise
    # is not rain
    irrigation_windows: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    # block id -> last decision code recorded (decisions are recorded when they change)
    last_code: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AlarmTransition:
    t_s: float
    kind: Literal["raise", "escalate", "clear"]
    type: str
    subject: str
    block: str
    severity: Severity
    value: float | None
    threshold: float | None
    message: str


@dataclass(frozen=True, slots=True)
class IrrigationDecision:
    t_s: float
    block: str
    action: Literal["irrigate", "skip"]
    code: str
    reason: str
    inputs: dict[str, Any]
    depth_mm: float | None = None
    gross_mm: float | None = None
    duration_s: int | None = None
    water_m3: float | None = None


@dataclass
class EngineResult:
    alarms: list[AlarmTransition]
    decisions: list[IrrigationDecision]
    # latest aggregates per block (NaN when unknown)
    block_snapshot: dict[str, dict[str, float]]
    node_faults: dict[str, list[str]]
    rain_events: list[tuple[float, str, float]]  # (t, block, estimated rain mm)
    aggregates: dict[str, F64] = field(default_factory=dict)  # (B, T) series, for replays


# --- carried state ----------------------------------------------------------------------------


@dataclass
class Carry:
    """What one evaluation hands to the next, so a period can be evaluated in pieces.

    Evaluating bins [a, c) at once gives exactly what evaluating [a, b) and then [b, c)
    with the same Carry gives (tested): each bin is judged once, with durations, stuck
    runs, spike counts, held values and the rain baseline continued from the bins before.
    The live loop keeps one Carry in memory and hands the engine only the new bins; a
    replay starts from an empty one. Nothing here is persisted: after a restart the loop
    rebuilds it by evaluating its context window first, emitting nothing for those bins.
    """

    n_nodes: int = 0
    n_blocks: int = 0
    last_s: float = math.nan  # time of the last bin evaluated (NaN: nothing yet)
    # Per sensor field, per node: last valid raw value and since when it has not changed
    # (stuck), the two latest plausible values (spikes), the last K spike times.
    last_raw: dict[str, F64] = field(default_factory=dict)
    same_since: dict[str, F64] = field(default_factory=dict)
    before_last: dict[str, F64] = field(default_factory=dict)
    last_ok: dict[str, F64] = field(default_factory=dict)
    spike_times: dict[str, F64] = field(default_factory=dict)
    # Per field, per node: the latest value fit for decisions and its time (held over gaps).
    held: dict[str, F64] = field(default_factory=dict)
    held_s: dict[str, F64] = field(default_factory=dict)
    last_seen_s: F64 = field(default_factory=lambda: np.zeros(0))
    maturity: F64 = field(default_factory=lambda: np.zeros(0))
    node_runs: dict[str, RunStarts] = field(default_factory=dict)
    block_runs: dict[str, RunStarts] = field(default_factory=dict)
    # The blocks' median soil moisture over the last RAIN_WINDOW_S (rain baseline).
    soil_history: F64 = field(default_factory=lambda: np.zeros((0, 0)))
    soil_history_s: F64 = field(default_factory=lambda: np.zeros(0))
    rain_rising: B8 = field(default_factory=lambda: np.zeros(0, dtype=bool))
    snapshot: dict[str, dict[str, float]] = field(default_factory=dict)
    _names: tuple[list[str], list[str], dict[str, int]] | None = None
    _primed: bool = False  # the first piece with bins has set the priors

    def fit(self, grid: Grid) -> None:
        """Size the arrays for the grid's nodes and blocks; on the first piece, start from
        what the grid knows of the time before it (last seen, latest maturity)."""
        n, b = grid.n_nodes, len(grid.blocks)
        if not self._primed and grid.n_times:
            self._primed = True
            self.last_seen_s = (
                grid.times_s[0] - grid.prior_age_s
                if grid.prior_age_s is not None and grid.n_times
                else np.full(n, np.nan)
            )
            self.maturity = (
                grid.prior_maturity.astype(np.float64, copy=True)
                if grid.prior_maturity is not None
                else np.full(n, np.nan)
            )
            self.n_nodes = n
        if n > self.n_nodes:
            extra = n - self.n_nodes
            for d in (
                self.last_raw,
                self.same_since,
                self.before_last,
                self.last_ok,
                self.held,
                self.held_s,
            ):
                for k in d:
                    d[k] = np.concatenate([d[k], np.full(extra, np.nan)])
            for k, v in self.spike_times.items():
                self.spike_times[k] = np.vstack([v, np.full((extra, v.shape[1]), np.nan)])
            self.last_seen_s = np.concatenate([self.last_seen_s, np.full(extra, -np.inf)])
            self.maturity = np.concatenate([self.maturity, np.full(extra, np.nan)])
            self.n_nodes = n
        if b != self.n_blocks or self.soil_history.shape[0] != b:
            self.soil_history = np.zeros((b, 0))
            self.soil_history_s = np.zeros(0)
            self.rain_rising = np.zeros(b, dtype=bool)
            self.block_runs = {}
            self.n_blocks = b

    def names(self, grid: Grid) -> tuple[list[str], dict[str, int]]:
        """Each node's block id and the node -> row index (kept while the nodes stay)."""
        if self._names is None or self._names[0] != grid.nodes:
            self._names = (
                list(grid.nodes),
                [grid.blocks[i] for i in grid.node_block.tolist()],
                {n: i for i, n in enumerate(grid.nodes)},
            )
        return self._names[1], self._names[2]

    def hold(self, name: str, x: F64, times: F64) -> F64:
        """``x`` with each node's last value held over gaps up to HOLD_S, continuing from
        the value this carry holds for ``name``."""
        out, self.held[name], self.held_s[name] = hold_forward(
            x, times, HOLD_S, self.node_array(self.held, name), self.node_array(self.held_s, name)
        )
        return out

    def node_array(self, store: dict[str, F64], key: str) -> F64:
        if key not in store:
            store[key] = np.full(self.n_nodes, np.nan)
        return store[key]

    def runs(self, kind: Literal["node", "block"], key: str) -> RunStarts:
        store, n = (
            (self.node_runs, self.n_nodes) if kind == "node" else (self.block_runs, self.n_blocks)
        )
        starts = store.get(key)
        starts = RunStarts.empty(n) if starts is None else starts.grown(n)
        store[key] = starts
        return starts


# --- node health ------------------------------------------------------------------------------


def _previous_valid(x: F64) -> tuple[npt.NDArray[np.int64], B8]:
    """Index of the previous valid (non-NaN) sample of each sample in its row (-1: none)."""
    valid = ~np.isnan(x)
    idx = np.where(valid, np.arange(x.shape[1]), -1)
    last = cummax_rows(idx)
    prev = np.concatenate([np.full((x.shape[0], 1), -1), last[:, :-1]], axis=1)
    return prev, valid


def _with_prior(prior: Sequence[F64], x: F64) -> F64:
    """``x`` with the carried samples prepended as leading columns."""
    return np.concatenate([np.stack(prior, axis=1), x], axis=1) if prior else x


def _stuck(x: F64, eps: F64, times: F64, last_raw: F64, same_since: F64) -> tuple[B8, F64, F64]:
    """True where the value has not changed (beyond eps) for STUCK_AFTER_S; gaps neither
    break nor extend a run. Returns the mask and the carried last value and run start."""
    xx = _with_prior([last_raw], x)
    prev, valid = _previous_valid(xx)
    prev_val = np.take_along_axis(xx, np.clip(prev, 0, None), axis=1)
    with np.errstate(invalid="ignore"):
        same = valid & (prev >= 0) & (np.abs(xx - prev_val) <= eps)
    same_or_gap = (same | ~valid)[:, 1:]
    run, same_since = carried_run(same_or_gap, times, same_since)
    last = cummax_rows(np.where(valid, np.arange(xx.shape[1]), -1))[:, -1]
    last_raw = np.where(last >= 0, xx[np.arange(xx.shape[0]), last], np.nan)
    return np.asarray(valid[:, 1:] & (run >= STUCK_AFTER_S)), last_raw, same_since


def _spikes(
    x: F64, limit: F64, times: F64, before_last: F64, last_ok: F64, spike_times: F64
) -> tuple[B8, B8, F64, F64, F64]:
    """(suspect, spiky, carried before_last, last_ok, spike_times) for plausible samples
    ``x`` (NaN elsewhere), ``limit`` per row.

    Causal, so a bin is judged once: a sample that jumps more than SPIKE_LIMIT from the
    previous one is *suspect* and kept out of decisions until the next sample tells. If
    the next one comes back (the suspect sample stood far from both neighbours, on the same
    side) it was a spike, counted at that moment; otherwise it was a real change and the
    series goes on from it. Three spikes within SPIKE_ALARM_WINDOW_S make the sensor
    *spiky* (faulty) until they age out.
    """
    xx = _with_prior([before_last, last_ok], x)
    prev, valid = _previous_valid(xx)
    prev2 = np.take_along_axis(
        np.concatenate([np.full((xx.shape[0], 1), -1), prev], axis=1), prev + 1, axis=1
    )
    a = np.take_along_axis(xx, np.clip(prev, 0, None), axis=1)
    h = np.take_along_axis(xx, np.clip(prev2, 0, None), axis=1)
    with np.errstate(invalid="ignore"):
        jump = valid & (prev >= 0) & (np.abs(xx - a) > limit)
        came_back = (
            valid
            & (prev2 >= 0)
            & (((a - h > limit) & (a - xx > limit)) | ((h - a > limit) & (xx - a > limit)))
        )
        suspect = (jump & ~came_back) | (came_back & (np.abs(xx - h) > limit))
    suspect, came_back = suspect[:, 2:], came_back[:, 2:]
    n = xx.shape[0]
    rows = np.arange(n)
    last = cummax_rows(np.where(valid, np.arange(xx.shape[1]), -1))[:, -1]
    before = np.take_along_axis(prev, np.clip(last, 0, None)[:, None], axis=1)[:, 0]
    last_ok = np.where(last >= 0, xx[rows, np.clip(last, 0, None)], np.nan)
    before_last = np.where((last >= 0) & (before >= 0), xx[rows, np.clip(before, 0, None)], np.nan)
    # Spikes within the window before each sample: this piece's (cumulative sum) plus the
    # last SPIKES_FOR_ALARM carried from earlier pieces.
    csum = np.cumsum(came_back, axis=1)
    start = np.searchsorted(times, times - SPIKE_ALARM_WINDOW_S, side="left")
    earlier = np.where(start > 0, csum[:, np.maximum(start - 1, 0)], 0)
    with np.errstate(invalid="ignore"):
        from_carried = (
            spike_times[:, :, None] >= (times - SPIKE_ALARM_WINDOW_S)[None, None, :]
        ).sum(axis=1)
    spiky = (csum - earlier + from_carried) >= SPIKES_FOR_ALARM
    hit = np.flatnonzero(came_back.any(axis=1))
    if hit.size:
        event_s = np.where(came_back[hit], times[None, :], -np.inf)
        both = np.concatenate([np.nan_to_num(spike_times[hit], nan=-np.inf), event_s], axis=1)
        latest = np.sort(both, axis=1)[:, -SPIKES_FOR_ALARM:]
        spike_times = spike_times.copy()
        spike_times[hit] = np.where(np.isinf(latest), np.nan, latest)
    return np.asarray(suspect), np.asarray(spiky), before_last, last_ok, spike_times


@dataclass
class Health:
    out_of_range: dict[str, B8]
    stuck: dict[str, B8]
    spike: dict[str, B8]  # suspect: jumped from the previous sample, not yet confirmed
    spiky: dict[str, B8]  # enough spikes recently to call the sensor faulty
    faulty: dict[str, B8]  # sample must not be used for decisions


def node_health(grid: Grid, carry: Carry) -> Health:
    """Every sensor field of every node in one pass: the fields are stacked (field-major,
    rows ``k * nodes + node``) so each step is one numpy call, not one per field."""
    times = grid.times_s
    names = tuple(PLAUSIBLE)
    n = grid.n_nodes

    def per_row(values: dict[str, float]) -> F64:
        return np.repeat([values[f] for f in names], n)[:, None].astype(np.float64)

    def stacked(store: dict[str, F64]) -> F64:
        return np.concatenate([carry.node_array(store, f) for f in names])

    def unstack(store: dict[str, F64], values: F64) -> None:
        for k, f in enumerate(names):
            store[f] = values[k * n : (k + 1) * n]

    x = np.concatenate([grid.field(f) for f in names])
    with np.errstate(invalid="ignore"):
        oor = (x < per_row({f: lo for f, (lo, _) in PLAUSIBLE.items()})) | (
            x > per_row({f: hi for f, (_, hi) in PLAUSIBLE.items()})
        )
    stuck, last_raw, same_since = _stuck(
        x, per_row(STUCK_EPS), times, stacked(carry.last_raw), stacked(carry.same_since)
    )
    spike_times = np.concatenate(
        [carry.spike_times.get(f, np.full((n, SPIKES_FOR_ALARM), np.nan)) for f in names]
    )
    spike, spiky, before_last, last_ok, spike_times = _spikes(
        np.where(oor, np.nan, x),
        per_row(SPIKE_LIMIT),
        times,
        stacked(carry.before_last),
        stacked(carry.last_ok),
        spike_times,
    )
    for store, values in (
        (carry.last_raw, last_raw),
        (carry.same_since, same_since),
        (carry.before_last, before_last),
        (carry.last_ok, last_ok),
        (carry.spike_times, spike_times),
    ):
        unstack(store, values)
    faulty = oor | stuck | spike | spiky

    def split(mask: B8) -> dict[str, B8]:
        return {f: mask[k * n : (k + 1) * n] for k, f in enumerate(names)}

    return Health(split(oor), split(stuck), split(spike), split(spiky), split(faulty))


# --- block aggregates -------------------------------------------------------------------------


class BlockGroups:
    """Nodes laid out per block, padded to the largest block, for per-block statistics of
    every block in one numpy call: shape (blocks, most nodes in a block, times)."""

    def __init__(self, node_block: npt.NDArray[np.int64], n_blocks: int) -> None:
        counts = (
            np.bincount(node_block, minlength=n_blocks)
            if node_block.size
            else np.zeros(n_blocks, dtype=np.int64)
        )
        width = max(1, int(counts.max()) if counts.size else 1)
        order = np.argsort(node_block, kind="stable")
        first = np.concatenate([[0], np.cumsum(counts)[:-1]]) if n_blocks else np.zeros(0, int)
        slot = np.arange(node_block.size) - np.repeat(first, counts)
        self.index = np.full((n_blocks, width), -1, dtype=np.int64)
        self.index[node_block[order], slot] = order
        self.pad = self.index < 0

    def gather(self, x: F64) -> F64:
        out = (
            x[np.clip(self.index, 0, None)]
            if x.shape[0]
            else np.full((*self.index.shape, x.shape[1]), np.nan)
        )
        out[self.pad] = np.nan
        return out

    def median(self, x: F64) -> F64:
        g = np.sort(self.gather(x), axis=1)  # NaN sort last
        k = np.sum(~np.isnan(g), axis=1)
        lo = np.clip((k - 1) // 2, 0, None)[:, None, :]
        hi = np.clip(k // 2, 0, g.shape[1] - 1)[:, None, :]
        mid = (np.take_along_axis(g, lo, axis=1) + np.take_along_axis(g, hi, axis=1))[:, 0] / 2
        return np.where(k > 0, mid, np.nan)

    def min(self, x: F64) -> F64:
        return np.asarray(np.fmin.reduce(self.gather(x), axis=1), dtype=np.float64)

    def count(self, x: F64) -> F64:
        return np.asarray(np.sum(~np.isnan(self.gather(x)), axis=1), dtype=np.float64)


_groups_cache: dict[tuple[int, bytes], BlockGroups] = {}


def block_groups(node_block: npt.NDArray[np.int64], n_blocks: int) -> BlockGroups:
    key = (n_blocks, node_block.tobytes())
    groups = _groups_cache.get(key)
    if groups is None:
        if len(_groups_cache) > 8:
            _groups_cache.clear()
        groups = _groups_cache[key] = BlockGroups(node_block, n_blocks)
    return groups


def hold_forward(
    x: F64, times: F64, max_s: float, held: F64 | None = None, held_s: F64 | None = None
) -> tuple[F64, F64, F64]:
    """Carry each node's last value over gaps up to ``max_s`` (bins without a reading),
    starting from ``held`` taken at ``held_s`` (the piece before). Returns the filled
    values and the (value, time) to carry on."""
    n = x.shape[0]
    held = np.full(n, np.nan) if held is None else held
    held_s = np.full(n, np.nan) if held_s is None else held_s
    if x.shape[1] == 0:
        return x, held, held_s
    valid = ~np.isnan(x)
    last = cummax_rows(np.where(valid, np.arange(x.shape[1]), -1))
    value = np.take_along_axis(x, np.clip(last, 0, None), axis=1)
    value_s = times[np.clip(last, 0, None)]
    value = np.where(last >= 0, value, held[:, None])
    value_s = np.where(last >= 0, value_s, held_s[:, None])
    with np.errstate(invalid="ignore"):
        fresh = (times[None, :] - value_s) <= max_s
    out = np.where(valid, x, np.where(fresh, value, np.nan))
    return out, value[:, -1].copy(), value_s[:, -1].copy()


def block_aggregates(grid: Grid, health: Health, carry: Carry) -> dict[str, F64]:
    groups = block_groups(grid.node_block, len(grid.blocks))
    clean = {
        name: carry.hold(
            name, np.where(health.faulty[name], np.nan, grid.field(name)), grid.times_s
        )
        for name in ("soil_moisture", "temperature", "humidity")
    }
    temp = groups.median(clean["temperature"])
    rh = groups.median(clean["humidity"])
    with np.errstate(invalid="ignore"):
        block_vpd = vpd(temp, rh)
    return {
        "soil_moisture": groups.median(clean["soil_moisture"]),
        "temperature": temp,
        "temperature_min": groups.min(clean["temperature"]),
        "humidity": rh,
        "vpd": np.asarray(block_vpd, dtype=np.float64),
        "healthy_soil_nodes": groups.count(clean["soil_moisture"]),
        "healthy_temp_nodes": groups.count(clean["temperature"]),
    }


# --- evaluation -------------------------------------------------------------------------------


def _fmt(x: float, digits: int = 1) -> str:
    return "unknown" if x != x else f"{x:.{digits}f}"


def evaluate(
    grid: Grid,
    table: BlockTable,
    state: EngineState,
    since_s: float,
    *,
    carry: Carry | None = None,
    offline_now: set[str] | None = None,
) -> EngineResult:
    """Evaluate every rule on the grid's bins, emitting what happens after ``since_s``.

    With ``carry`` the grid continues the bins evaluated before with the same Carry (the
    live loop passes only its new bins); without, the grid is a period on its own (a
    replay). Bins at or before ``since_s`` only build up durations and baselines.
    """
    carry = Carry() if carry is None else carry
    carry.fit(grid)
    times = grid.times_s
    health = node_health(grid, carry)
    agg = block_aggregates(grid, health, carry)
    alarms: list[AlarmTransition] = []
    nodes = grid.nodes
    block_of_node, node_index = carry.names(grid)

    def emit(
        rule: AlarmRule,
        values: F64,
        subjects: Sequence[str],
        subject_block: Sequence[str],
        message: Any,
        starts: RunStarts,
        **thresholds: Any,
    ) -> None:
        for s, i, kind, severity in rule_transitions(
            rule, values, times, subjects, state.active, since_s, starts=starts, **thresholds
        ):
            value = float(values[s, i])
            th_raw = thresholds.get("raise_at", rule.raise_at)
            th = float(np.asarray(th_raw).reshape(-1)[s] if np.ndim(th_raw) else th_raw)
            alarms.append(
                AlarmTransition(
                    float(times[i]),
                    kind,  # type: ignore[arg-type]
                    rule.type,
                    subjects[s],
                    subject_block[s],
                    severity,  # type: ignore[arg-type]
                    None if value != value or abs(value) >= STATUS_OFFLINE_AGE else value,
                    th,
                    message(s, i, value, kind),
                )
            )

    # -- node alarms ------------------------------------------------------------------------
    for fault, masks, words in (
        ("sensor_out_of_range", health.out_of_range, "reads values no soil or air can have"),
        ("sensor_stuck", health.stuck, "has not changed for 6 hours"),
        ("sensor_spikes", health.spiky, "jumps far from its neighbouring readings"),
    ):
        flag = np.zeros((grid.n_nodes, grid.n_times), dtype=bool)
        for mask in masks.values():
            flag |= mask
        indicator = np.where(flag, 1.0, 0.0)
        rule = AlarmRule(fault, "above", 0.5, 0.5, 0.0, FAULT_CLEAR_AFTER_S, severity="minor")

        def fault_message(
            s: int,
            i: int,
            _v: float,
            kind: str,
            words: str = words,
            masks: dict[str, B8] = masks,
        ) -> str:
            names = [n.replace("_", " ") for n, m in masks.items() if m[s, i]]
            if kind == "clear":
                return f"sensor on {nodes[s]} reads normally again"
            return f"{' and '.join(names) or 'a'} sensor on {nodes[s]} {words}; its readings are left out of decisions"

        emit(
            rule,
            indicator,
            nodes,
            block_of_node,
            fault_message,
            carry.runs("node", fault),
            subject_index=node_index,
        )

    # Offline: age of the newest reading at each bin.
    present = np.zeros((grid.n_nodes, grid.n_times), dtype=bool)
    for name in FIELDS:
        present |= ~np.isnan(grid.field(name))
    idx = np.where(present, np.arange(grid.n_times), -1)
    last = cummax_rows(idx)
    seen_s = np.where(last >= 0, times[np.clip(last, 0, None)], carry.last_seen_s[:, None])
    age = times[None, :] - seen_s
    if grid.n_times:
        carry.last_seen_s = seen_s[:, -1].copy()
    if offline_now and grid.n_times:
        # The node's retained status (or Last Will) says offline now: every bin after its
        # last reading in this piece counts as offline, so a tick of several bins does not
        # see it back online at its first bin and raise again at its last.
        flagged = np.flatnonzero(np.array([n in offline_now for n in nodes], dtype=bool))
        after_last = np.arange(grid.n_times)[None, :] > last[flagged, -1][:, None]
        age[flagged] = np.where(after_last, STATUS_OFFLINE_AGE, age[flagged])
    offline_limit = table.col("offline_after_min")[grid.node_block] * 60.0
    emit(
        AlarmRule("node_offline", "above", 0.0, 0.0, 0.0, 0.0, severity="major"),
        age,
        nodes,
        block_of_node,
        lambda s, _i, v, kind: (
            f"node {nodes[s]} is back online"
            if kind == "clear"
            else f"node {nodes[s]} has sent nothing for {_age_words(v)}"
        ),
        carry.runs("node", "node_offline"),
        raise_at=offline_limit,
        clear_at=offline_limit - 1e-9,
        subject_index=node_index,
    )
    battery_low = table.col("battery_low_v")[grid.node_block]
    battery = carry.hold("battery", grid.field("battery"), times)
    emit(
        AlarmRule(
            "low_battery",
            "below",
            0.0,
            BATTERY_HYSTERESIS_V,
            BATTERY_AFTER_S,
            BATTERY_AFTER_S,
            severity="warning",
        ),
        battery,
        nodes,
        block_of_node,
        lambda s, _i, v, kind: (
            f"battery of {nodes[s]} recharged ({_fmt(v, 2)} V)"
            if kind == "clear"
            else f"battery of {nodes[s]} is low ({_fmt(v, 2)} V): replace or recharge it"
        ),
        carry.runs("node", "low_battery"),
        raise_at=battery_low,
        clear_at=battery_low + BATTERY_HYSTERESIS_V,
        subject_index=node_index,
    )

    # -- block alarms -----------------------------------------------------------------------
    blocks = grid.blocks
    _block_rules(emit, agg, table, blocks, carry)

    # -- irrigation -------------------------------------------------------------------------
    decisions, rain_events = _irrigation(agg, grid.node_block, table, state, times, since_s, carry)

    snapshot = carry.snapshot
    if grid.n_times:
        for b, block in enumerate(blocks):
            snapshot[block] = {
                "soil_moisture": float(agg["soil_moisture"][b, -1]),
                "temperature": float(agg["temperature"][b, -1]),
                "humidity": float(agg["humidity"][b, -1]),
                "vpd": float(agg["vpd"][b, -1]),
                "healthy_nodes": float(agg["healthy_soil_nodes"][b, -1]),
            }
    for block in blocks:
        snapshot.setdefault(
            block,
            {
                "soil_moisture": np.nan,
                "temperature": np.nan,
                "humidity": np.nan,
                "vpd": np.nan,
                "healthy_nodes": 0.0,
            },
        )
    # Maturity is sampled rarely (a reading a day or less): each node's latest value counts,
    # over the nodes online now. The temperature, soil and RH fault rules say nothing about
    # the maturity sensor (harvest readiness judges those readings itself).
    maturity = grid.field("maturity")
    if grid.n_times:
        has = ~np.isnan(maturity)
        last_i = np.where(has.any(axis=1), grid.n_times - 1 - np.argmax(has[:, ::-1], axis=1), -1)
        ok = np.flatnonzero(last_i >= 0)
        carry.maturity[ok] = maturity[ok, last_i[ok]]
    latest = carry.maturity.copy()
    if grid.n_times:
        with np.errstate(invalid="ignore"):
            online = age[:, -1] <= offline_limit[:, 0]
        latest[~online] = np.nan
    block_maturity = block_groups(grid.node_block, len(blocks)).median(latest[:, None])[:, 0]
    for b, block in enumerate(blocks):
        snapshot[block]["maturity"] = float(block_maturity[b])
    # Faults at the last bin, for the nodes that have any.
    node_faults: dict[str, list[str]] = {}
    if grid.n_times:
        for kind, masks in (
            ("out_of_range", health.out_of_range),
            ("stuck", health.stuck),
            ("spikes", health.spiky),
        ):
            for name, m in masks.items():
                for n in np.flatnonzero(m[:, -1]).tolist():
                    node_faults.setdefault(nodes[n], []).append(f"{kind}:{name}")
    if grid.n_times:
        carry.last_s = float(times[-1])
    return EngineResult(
        alarms,
        decisions,
        {b: dict(v) for b, v in snapshot.items()},
        node_faults,
        rain_events,
        agg,
    )


def _age_words(seconds: float) -> str:
    if seconds >= STATUS_OFFLINE_AGE:
        return "a while: its last status message says offline"
    if seconds != seconds or seconds == np.inf:
        return "more than a week, or has never reported"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} minutes"
    return f"{seconds / 3600:.1f} hours"


def _block_rules(
    emit: Any, agg: dict[str, F64], table: BlockTable, blocks: list[str], carry: Carry
) -> None:
    """Block alarms whose minimum duration is itself a per-block threshold."""
    if not blocks:
        return
    col = table.col
    # Durations differ per block: evaluate each distinct duration group separately.
    frost_warn = col("frost_t10") + col("frost_margin_c")
    stages = [t.stage.replace("_", " ") for t in table.thresholds]
    specs: list[tuple[str, Literal["above", "below"], F64, str, Any, Any, Any, Severity, Any]] = [
        (
            "frost",
            "below",
            agg["temperature_min"],
            "frost_duration_min",
            frost_warn,
            frost_warn + col("temp_hysteresis_c"),
            col("frost_t10"),
            "major",
            lambda b, v, k: (
                f"frost risk over in {blocks[b]}: coldest sensor back to {_fmt(v)} °C"
                if k == "clear"
                else f"frost risk in {blocks[b]}: coldest healthy sensor at {_fmt(v)} °C "
                f"(warning from {_fmt(frost_warn[b, 0])} °C; 10 % kill at {_fmt(col('frost_t10')[b, 0])} °C, "
                f"90 % at {_fmt(col('frost_t90')[b, 0])} °C in stage {stages[b]}); start frost protection"
            ),
        ),
        (
            "heat",
            "above",
            agg["temperature"],
            "heat_duration_min",
            col("heat_c"),
            col("heat_c") - col("temp_hysteresis_c"),
            None,
            "major",
            lambda b, v, k: (
                f"heat over in {blocks[b]} ({_fmt(v)} °C)"
                if k == "clear"
                else f"heat stress in {blocks[b]}: {_fmt(v)} °C, above {_fmt(col('heat_c')[b, 0])} °C; consider cooling irrigation or shade"
            ),
        ),
        (
            "vpd_high",
            "above",
            agg["vpd"],
            "vpd_duration_min",
            col("vpd_high_kpa"),
            col("vpd_high_kpa") - col("vpd_hysteresis_kpa"),
            None,
            "warning",
            lambda b, v, k: (
                f"air moisture back to normal in {blocks[b]} (VPD {_fmt(v, 2)} kPa)"
                if k == "clear"
                else f"very dry air in {blocks[b]}: VPD {_fmt(v, 2)} kPa above {_fmt(col('vpd_high_kpa')[b, 0], 2)} kPa; trees close their stomata"
            ),
        ),
        (
            "vpd_low",
            "below",
            agg["vpd"],
            "vpd_low_duration_min",
            col("vpd_low_kpa"),
            col("vpd_low_kpa") + col("vpd_hysteresis_kpa"),
            None,
            "warning",
            lambda b, v, k: (
                f"air drier again in {blocks[b]} (VPD {_fmt(v, 2)} kPa)"
                if k == "clear"
                else f"humid, still air in {blocks[b]}: VPD {_fmt(v, 2)} kPa below {_fmt(col('vpd_low_kpa')[b, 0], 2)} kPa; disease risk"
            ),
        ),
        (
            "soil_dry",
            "below",
            agg["soil_moisture"],
            "",
            col("soil_dry"),
            col("soil_dry") + col("soil_hysteresis"),
            None,
            "major",
            lambda b, v, k: (
                f"soil moisture recovered in {blocks[b]} ({_fmt(v, 3)} m³/m³)"
                if k == "clear"
                else f"soil too dry in {blocks[b]}: {_fmt(v, 3)} m³/m³, below {_fmt(col('soil_dry')[b, 0], 3)}; check irrigation"
            ),
        ),
        (
            "waterlogged",
            "above",
            agg["soil_moisture"],
            "",
            col("soil_wet"),
            col("soil_wet") - col("soil_hysteresis"),
            None,
            "major",
            lambda b, v, k: (
                f"soil drained in {blocks[b]} ({_fmt(v, 3)} m³/m³)"
                if k == "clear"
                else f"waterlogged soil in {blocks[b]}: {_fmt(v, 3)} m³/m³ above {_fmt(col('soil_wet')[b, 0], 3)} for hours; roots lack air"
            ),
        ),
    ]
    for rtype, direction, values, duration_key, r_at, c_at, e_at, severity, message in specs:
        if duration_key:
            durations = col(duration_key)[:, 0] * 60.0
        else:
            durations = np.full(
                len(blocks), SOIL_ALARM_AFTER_S if rtype == "soil_dry" else WATERLOGGED_AFTER_S
            )
        starts = carry.runs("block", rtype)
        for duration in np.unique(durations):
            rows = np.flatnonzero(durations == duration)
            part = starts.take(rows)
            sub_blocks = [blocks[r] for r in rows]
            rule = AlarmRule(
                rtype,
                direction,
                0.0,
                0.0,
                float(duration),
                CLEAR_AFTER_S,
                severity=severity,
                escalate_at=None if e_at is None else 0.0,
            )

            def msg(
                s: int, _i: int, v: float, k: str, rows: Any = rows, message: Any = message
            ) -> str:
                return str(message(int(rows[s]), v, k))

            extra = {} if e_at is None else {"escalate_at": e_at[rows]}
            emit(
                rule,
                values[rows],
                sub_blocks,
                sub_blocks,
                msg,
                part,
                raise_at=r_at[rows],
                clear_at=c_at[rows],
                **extra,
            )
            starts.put(rows, part)


def _irrigation(
    agg: dict[str, F64],
    node_block: npt.NDArray[np.int64],
    table: BlockTable,
    state: EngineState,
    times: F64,
    since_s: float,
    carry: Carry,
) -> tuple[list[IrrigationDecision], list[tuple[float, str, float]]]:
    """Irrigation decisions and rain events, bin by bin in time order for each block that
    has something to decide (most blocks, most bins, have nothing)."""
    decisions: list[IrrigationDecision] = []
    rains: list[tuple[float, str, float]] = []
    if times.size == 0:
        return decisions, rains
    col = table.col
    soil = agg["soil_moisture"]
    rh = agg["humidity"]
    healthy = agg["healthy_soil_nodes"]
    below = threshold_mask(soil, col("soil_trigger"), "below", True)
    run, below_since = carried_run(below, times, carry.runs("block", "irrigation").raise_s)
    carry.runs("block", "irrigation").raise_s = below_since
    due = below & (run >= col("trigger_duration_min") * 60.0)
    # Rain: rise over RAIN_WINDOW_S beyond RAIN_RISE (the window minimum is the baseline),
    # the window reaching back into the bins of earlier pieces.
    n_hist = carry.soil_history.shape[1]
    all_s = np.concatenate([carry.soil_history_s, times])
    all_soil = np.concatenate([carry.soil_history, soil], axis=1)
    start = np.searchsorted(all_s, all_s - RAIN_WINDOW_S, side="left")
    with np.errstate(all="ignore"):
        filled = np.where(np.isnan(all_soil), np.inf, all_soil)
        window_min = _trailing_min(filled, start)[:, n_hist:]
        rise = np.where(np.isinf(window_min), 0.0, soil - window_min)
        rise = np.nan_to_num(rise, nan=0.0)
    keep = all_s >= all_s[-1] - RAIN_WINDOW_S
    carry.soil_history, carry.soil_history_s = all_soil[:, keep], all_s[keep]
    rain_now = rise >= RAIN_RISE
    rain_starts = rain_now & ~np.concatenate([carry.rain_rising[:, None], rain_now[:, :-1]], axis=1)
    carry.rain_rising = rain_now[:, -1].copy()
    with np.errstate(invalid="ignore"):
        raining = (rh >= RAINING_RH) & (rise > RAIN_RISE / 3)
    after = times > since_s
    first_after = int(np.searchsorted(times, since_s, side="right"))
    none_healthy = healthy == 0
    nodes_in_block = np.bincount(node_block, minlength=len(table.blocks))
    # Only blocks with a rain start, a due irrigation or a sensor-less episode boundary.
    no_sensor_code = np.array(
        [state.last_code.get(b.id) == "skip_no_sensor" for b in table.blocks], dtype=bool
    )
    busy = rain_starts.any(axis=1) | (due & after).any(axis=1)
    busy |= (none_healthy & after).any(axis=1) & ~no_sensor_code
    busy |= (~none_healthy & after).any(axis=1) & no_sensor_code
    for b in np.flatnonzero(busy).tolist():
        block = table.blocks[b]
        th = table.thresholds[b]
        bid = block.id
        lockout_s = th["rain_lockout_h"] * 3600.0
        needed = min(MIN_SOIL_SENSORS, int(nodes_in_block[b]))
        # The sensor-less rule changes only where "no healthy sensor" starts or ends.
        nh = none_healthy[b]
        edge = np.concatenate([[True], nh[1:] != nh[:-1]])
        if first_after < times.size:
            edge[first_after] = True
        visit = np.flatnonzero(rain_starts[b] | (after & (due[b] | edge)))
        for i in visit.tolist():
            t = float(times[i])
            if rain_starts[b, i]:
                known_runs = state.irrigation_windows.get(bid, [])
                if not any(s0 - 600 <= t <= s1 + SETTLE_AFTER_RUN_S for s0, s1 in known_runs):
                    state.rain_until[bid] = max(state.rain_until.get(bid, -np.inf), t + lockout_s)
                    if t > since_s:
                        rains.append((t, bid, float(rise[b, i]) * th["root_depth_m"] * 1000.0))
            if t <= since_s:
                continue
            # No healthy soil sensor: reported once per episode.
            if none_healthy[b, i]:
                if state.last_code.get(bid) != "skip_no_sensor":
                    decisions.append(
                        IrrigationDecision(
                            t,
                            bid,
                            "skip",
                            "skip_no_sensor",
                            f"No healthy soil sensor in {bid} (all faulty or silent): not "
                            "irrigating on readings that cannot be trusted. Check the sensors.",
                            {"healthy_soil_nodes": 0},
                        )
                    )
                    state.last_code[bid] = "skip_no_sensor"
                continue
            if state.last_code.get(bid) == "skip_no_sensor":
                state.last_code.pop(bid, None)
            if not due[b, i] or t < state.irrigation_busy_until.get(bid, -np.inf):
                continue
            decision = _decide(
                block,
                th,
                state,
                t,
                float(soil[b, i]),
                run[b, i],
                rh[b, i],
                int(healthy[b, i]),
                needed,
                bool(raining[b, i]),
            )
            if decision is None:
                continue
            decisions.append(decision)
            state.last_code[bid] = decision.code if decision.action == "skip" else "irrigate"
            if decision.action == "irrigate" and decision.duration_s is not None:
                state.irrigation_busy_until[bid] = t + decision.duration_s + SETTLE_AFTER_RUN_S
                state.irrigation_windows.setdefault(bid, []).append((t, t + decision.duration_s))
    decisions.sort(key=lambda d: d.t_s)
    return decisions, rains


def _decide(
    block: Block,
    th: EffectiveThresholds,
    state: EngineState,
    t: float,
    theta: float,
    below_s: float,
    rh: float,
    healthy: int,
    needed: int,
    raining: bool,
) -> IrrigationDecision | None:
    """The decision for a block whose soil has been below the trigger long enough: skip for
    too few sensors or rain (once per episode: None when already said), or irrigate."""
    bid = block.id
    rain_until = state.rain_until.get(bid, -np.inf)
    inputs: dict[str, Any] = {
        "soil_moisture": round(theta, 4),
        "trigger": th["soil_trigger"],
        "refill": th["soil_refill"],
        "below_trigger_min": round(below_s / 60.0, 1),
        "healthy_soil_nodes": healthy,
        "humidity": None if rh != rh else round(rh, 1),
        "rain_lockout_until_s": None if rain_until == -np.inf else rain_until,
    }
    if healthy < needed:
        if state.last_code.get(bid) == "skip_few_sensors":
            return None
        return IrrigationDecision(
            t,
            bid,
            "skip",
            "skip_few_sensors",
            f"Soil in {bid} reads {theta:.3f} m³/m³, below the "
            f"{th['soil_trigger']:.3f} trigger, but only {healthy} "
            f"healthy soil sensor(s) agree (at least {needed} needed): not "
            "irrigating on one probe's word. Check the other sensors.",
            inputs,
        )
    if t < rain_until or raining:
        if state.last_code.get(bid) == "skip_rain":
            return None
        hours = max(0.0, (rain_until - t) / 3600.0)
        reason = (
            f"Soil in {bid} is below the trigger but it is raining now; not irrigating."
            if raining
            else f"Soil in {bid} is at {theta:.3f} m³/m³, below the {th['soil_trigger']:.3f} "
            f"trigger, but rain wetted the root zone recently; waiting {hours:.0f} more hours "
            "before irrigating so rain water is not wasted."
        )
        return IrrigationDecision(t, bid, "skip", "skip_rain", reason, inputs)
    zr = th["root_depth_m"]
    efficiency = th["application_efficiency"]
    rate = th["irrigation_rate_mm_h"]
    net_mm = max(0.0, (th["soil_refill"] - theta) * zr * 1000.0)
    gross_mm = net_mm / efficiency
    full_s = gross_mm / rate * 3600.0
    cap_s = th["max_run_min"] * 60.0
    duration_s = round(min(full_s, cap_s))
    applied_mm = rate * duration_s / 3600.0
    water_m3 = applied_mm * block.area_ha * 10.0  # 1 mm over 1 ha = 10 m³
    capped = full_s > cap_s
    inputs.update(
        root_depth_m=zr,
        efficiency=efficiency,
        rate_mm_h=rate,
        net_mm=round(net_mm, 1),
        gross_mm=round(gross_mm, 1),
        max_run_min=th["max_run_min"],
    )
    reason = (
        f"Soil in {bid} has been at or below the {th['soil_trigger']:.3f} m³/m³ trigger for "
        f"{below_s / 60:.0f} minutes (median of {healthy} healthy sensors: "
        f"{theta:.3f}). Refilling to {th['soil_refill']:.3f} needs {net_mm:.1f} mm in the "
        f"{zr:g} m root zone, {gross_mm:.1f} mm at {efficiency:.0%} efficiency: "
        f"{duration_s / 60:.0f} minutes at {rate:g} mm/h"
        + (
            f", capped at the {th['max_run_min']:.0f}-minute maximum run "
            f"({applied_mm:.1f} mm now, the rest on a later run)."
            if capped
            else "."
        )
    )
    return IrrigationDecision(
        t,
        bid,
        "irrigate",
        "irrigate_capped" if capped else "irrigate",
        reason,
        inputs,
        depth_mm=round(net_mm, 2),
        gross_mm=round(applied_mm, 2),
        duration_s=duration_s,
        water_m3=round(water_m3, 2),
    )


def _trailing_min(x: F64, start: npt.NDArray[np.int64]) -> F64:
    """Minimum of x[:, start[i]:i+1] for each i (windows only move forward)."""
    n = x.shape[1]
    if n == 0:
        return x
    # Sparse table (log-doubling) range-minimum: O(n log n), vectorised over rows.
    levels = [x]
    span = 1
    while span * 2 <= n:
        prev = levels[-1]
        nxt = np.minimum(prev[:, : n - span * 2 + 1], prev[:, span : n - span + 1])
        levels.append(nxt)
        span *= 2
    ends = np.arange(n)
    lengths = ends - start + 1
    k = np.floor(np.log2(np.maximum(lengths, 1))).astype(int)
    out = np.empty_like(x)
    for level in np.unique(k):
        sel = np.flatnonzero(k == level)
        table = levels[level]
        left = table[:, start[sel]]
        right = table[:, ends[sel] - (1 << level) + 1]
        out[:, sel] = np.minimum(left, right)
    return out
