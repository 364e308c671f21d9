"""The rule engine: every node and block at once, over numpy arrays, live and in replay.

Input is a :class:`Grid` of readings, nodes × time bins (NaN where nothing was
measured), and a :class:`BlockTable` of each block's effective thresholds as arrays.
:func:`evaluate` walks the window once and returns every alarm transition and
irrigation decision that falls after ``since_s``, plus the latest block aggregates.

The live control tick calls it on the minutes since its previous tick (with some
history before, so durations are measured correctly); the backtest calls it on a month
of stored readings with proposed thresholds. There is no second implementation: what
a backtest shows is what the loop would have done.

Pipeline of one evaluation:

1. node health: out-of-range values, stuck sensors (no change for hours), spikes
   (a sample far from both its neighbours) → faulty samples are excluded;
2. block aggregates over healthy nodes: median soil moisture, temperature and RH, the
   coldest healthy temperature (frost is local), VPD from the medians;
3. alarm rules (:class:`control.alarms.AlarmRule`) with hysteresis and minimum
   durations on nodes (faults, offline, battery) and blocks (frost, heat, VPD, soil);
4. irrigation: soil below trigger for the minimum duration, not in or after rain,
   not while a run is under way, never with no healthy soil sensor; depth to refill.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from control.alarms import AlarmRule, Severity, rule_transitions, run_length_s, threshold_mask
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


# --- node health ------------------------------------------------------------------------------


def _neighbour_spikes(x: F64, limit: float) -> B8:
    """A sample far (> limit) from both its previous and next valid samples, on the same side."""
    valid = ~np.isnan(x)
    n = x.shape[1]
    idx = np.where(valid, np.arange(n), -1)
    prev_i = np.maximum.accumulate(idx, axis=1)
    prev_i = np.concatenate([np.full((x.shape[0], 1), -1), prev_i[:, :-1]], axis=1)
    idx_rev = np.where(valid, np.arange(n), n)
    next_i = np.minimum.accumulate(idx_rev[:, ::-1], axis=1)[:, ::-1]
    next_i = np.concatenate([next_i[:, 1:], np.full((x.shape[0], 1), n)], axis=1)
    prev_v = np.take_along_axis(x, np.clip(prev_i, 0, n - 1), axis=1)
    next_v = np.take_along_axis(x, np.clip(next_i, 0, n - 1), axis=1)
    with np.errstate(invalid="ignore"):
        up = (x - prev_v > limit) & (x - next_v > limit)
        down = (prev_v - x > limit) & (next_v - x > limit)
    return np.asarray(valid & (prev_i >= 0) & (next_i < n) & (up | down))


def nanmedian0(x: F64) -> F64:
    """Median along axis 0 ignoring NaN (NaN where all are NaN); faster than np.nanmedian."""
    if x.shape[0] == 1:
        return x[0].copy()
    s = np.sort(x, axis=0)  # NaN sort last
    k = np.sum(~np.isnan(x), axis=0)
    lo = np.clip((k - 1) // 2, 0, None)
    hi = np.clip(k // 2, 0, x.shape[0] - 1)
    cols = np.arange(x.shape[1])
    out = (s[lo, cols] + s[hi, cols]) / 2.0
    return np.where(k > 0, out, np.nan)


class _quiet:
    def __enter__(self) -> None:
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", category=RuntimeWarning)

    def __exit__(self, *exc: object) -> None:
        self._w.__exit__(*exc)


@dataclass
class Health:
    out_of_range: dict[str, B8]
    stuck: dict[str, B8]
    spike: dict[str, B8]
    spiky: dict[str, B8]  # enough spikes recently to call the sensor faulty
    faulty: dict[str, B8]  # sample must not be used for decisions


def _forward_fill_last_change(x: F64, eps: float, times: F64) -> B8:
    """True where the value has not changed (beyond eps) for STUCK_AFTER_S."""
    valid = ~np.isnan(x)
    # Compare each valid sample with the previous valid sample of the same node.
    idx = np.where(valid, np.arange(x.shape[1]), -1)
    prev_idx = np.maximum.accumulate(idx, axis=1)
    prev_idx = np.concatenate([np.full((x.shape[0], 1), -1), prev_idx[:, :-1]], axis=1)
    prev_val = np.take_along_axis(x, np.clip(prev_idx, 0, None), axis=1)
    same = valid & (prev_idx >= 0) & (np.abs(x - prev_val) <= eps)
    # Gaps (NaN) neither break nor extend a stuck run: treat them as "same".
    same_or_gap = same | ~valid
    run = run_length_s(same_or_gap, times)
    return np.asarray(valid & (run >= STUCK_AFTER_S))


def node_health(grid: Grid) -> Health:
    times = grid.times_s
    oor: dict[str, B8] = {}
    stuck: dict[str, B8] = {}
    spike: dict[str, B8] = {}
    spiky: dict[str, B8] = {}
    faulty: dict[str, B8] = {}
    for name, (lo, hi) in PLAUSIBLE.items():
        x = grid.field(name)
        with np.errstate(invalid="ignore"):
            oor[name] = np.asarray((x < lo) | (x > hi))
        stuck[name] = _forward_fill_last_change(x, STUCK_EPS[name], times)
        spike[name] = _neighbour_spikes(np.where(oor[name], np.nan, x), SPIKE_LIMIT[name])
        # Spikes within the alarm window, counted with a cumulative sum over time.
        csum = np.cumsum(spike[name], axis=1)
        start = np.searchsorted(times, times - SPIKE_ALARM_WINDOW_S, side="left")
        before = np.where(start > 0, csum[:, np.maximum(start - 1, 0)], 0)
        spiky[name] = (csum - before) >= SPIKES_FOR_ALARM
        faulty[name] = oor[name] | stuck[name] | spike[name] | spiky[name]
    return Health(oor, stuck, spike, spiky, faulty)


# --- block aggregates -------------------------------------------------------------------------


def _per_block(x: F64, node_block: npt.NDArray[np.int64], n_blocks: int, how: str) -> F64:
    out = np.full((n_blocks, x.shape[1]), np.nan)
    order = np.argsort(node_block, kind="stable")
    sorted_blocks = node_block[order]
    bounds = np.searchsorted(sorted_blocks, np.arange(n_blocks + 1))
    with np.errstate(all="ignore"), _quiet():
        for b in range(n_blocks):
            rows = order[bounds[b] : bounds[b + 1]]
            if rows.size == 0:
                continue
            part = x[rows]
            if how == "median":
                out[b] = nanmedian0(part)
            elif how == "min":
                out[b] = np.nanmin(part, axis=0)
            elif how == "count":
                out[b] = np.sum(~np.isnan(part), axis=0)
    return out


def hold_forward(x: F64, times: F64, max_s: float) -> F64:
    """Carry each node's last value over gaps up to ``max_s`` (bins without a reading)."""
    if x.size == 0:
        return x
    valid = ~np.isnan(x)
    idx = np.where(valid, np.arange(x.shape[1]), -1)
    last = np.maximum.accumulate(idx, axis=1)
    held = np.take_along_axis(x, np.clip(last, 0, None), axis=1)
    age = times[None, :] - times[np.clip(last, 0, None)]
    return np.where(valid, x, np.where((last >= 0) & (age <= max_s), held, np.nan))


def block_aggregates(grid: Grid, health: Health) -> dict[str, F64]:
    nb = len(grid.blocks)
    clean = {
        name: hold_forward(
            np.where(health.faulty[name], np.nan, grid.field(name)), grid.times_s, HOLD_S
        )
        for name in ("soil_moisture", "temperature", "humidity")
    }
    soil = _per_block(clean["soil_moisture"], grid.node_block, nb, "median")
    temp = _per_block(clean["temperature"], grid.node_block, nb, "median")
    tmin = _per_block(clean["temperature"], grid.node_block, nb, "min")
    rh = _per_block(clean["humidity"], grid.node_block, nb, "median")
    healthy_soil = _per_block(clean["soil_moisture"], grid.node_block, nb, "count")
    healthy_temp = _per_block(clean["temperature"], grid.node_block, nb, "count")
    with np.errstate(invalid="ignore"):
        block_vpd = vpd(temp, rh)
    return {
        "soil_moisture": soil,
        "temperature": temp,
        "temperature_min": tmin,
        "humidity": rh,
        "vpd": np.asarray(block_vpd, dtype=np.float64),
        "healthy_soil_nodes": healthy_soil,
        "healthy_temp_nodes": healthy_temp,
    }


# --- rule transitions (shared by live and replay) ---------------------------------------------


# --- evaluation -------------------------------------------------------------------------------


def _fmt(x: float, digits: int = 1) -> str:
    return "unknown" if x != x else f"{x:.{digits}f}"


def evaluate(
    grid: Grid,
    table: BlockTable,
    state: EngineState,
    since_s: float,
    *,
    offline_now: set[str] | None = None,
) -> EngineResult:
    """Evaluate every rule on the window, emitting what happens after ``since_s``."""
    times = grid.times_s
    health = node_health(grid)
    agg = block_aggregates(grid, health)
    alarms: list[AlarmTransition] = []
    block_of_node = [grid.blocks[i] for i in grid.node_block.tolist()]

    def emit(
        rule: AlarmRule,
        values: F64,
        subjects: Sequence[str],
        subject_block: Sequence[str],
        message: Any,
        **thresholds: Any,
    ) -> None:
        for s, i, kind, severity in rule_transitions(
            rule, values, times, subjects, state.active, since_s, **thresholds
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
                    message(s, value, kind),
                )
            )

    # -- node alarms ------------------------------------------------------------------------
    nodes = grid.nodes
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
            s: int, _v: float, kind: str, words: str = words, masks: dict[str, B8] = masks
        ) -> str:
            names = [n.replace("_", " ") for n, m in masks.items() if m[s].any()]
            if kind == "clear":
                return f"sensor on {nodes[s]} reads normally again"
            return f"{' and '.join(names) or 'a'} sensor on {nodes[s]} {words}; its readings are left out of decisions"

        emit(rule, indicator, nodes, block_of_node, fault_message)

    # Offline: age of the newest reading at each bin.
    present = np.zeros((grid.n_nodes, grid.n_times), dtype=bool)
    for name in FIELDS:
        present |= ~np.isnan(grid.field(name))
    idx = np.where(present, np.arange(grid.n_times), -1)
    last = np.maximum.accumulate(idx, axis=1)
    age = np.where(last >= 0, times[None, :] - times[np.clip(last, 0, None)], np.nan)
    if grid.prior_age_s is not None:
        prior = grid.prior_age_s[:, None] + (times[None, :] - times[0])
        age = np.where(last >= 0, age, prior)
    if offline_now:
        flagged = np.array([n in offline_now for n in nodes])
        age[flagged, -1] = STATUS_OFFLINE_AGE
    offline_limit = (
        np.array(
            [[table.thresholds[b]["offline_after_min"] * 60.0] for b in grid.node_block.tolist()]
        )
        if grid.n_nodes
        else np.zeros((0, 1))
    )
    emit(
        AlarmRule("node_offline", "above", 0.0, 0.0, 0.0, 0.0, severity="major"),
        age,
        nodes,
        block_of_node,
        lambda s, v, kind: (
            f"node {nodes[s]} is back online"
            if kind == "clear"
            else f"node {nodes[s]} has sent nothing for {_age_words(v)}"
        ),
        raise_at=offline_limit,
        clear_at=offline_limit - 1e-9,
    )
    battery_low = (
        np.array([[table.thresholds[b]["battery_low_v"]] for b in grid.node_block.tolist()])
        if grid.n_nodes
        else np.zeros((0, 1))
    )
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
        hold_forward(grid.field("battery"), times, HOLD_S),
        nodes,
        block_of_node,
        lambda s, v, kind: (
            f"battery of {nodes[s]} recharged ({_fmt(v, 2)} V)"
            if kind == "clear"
            else f"battery of {nodes[s]} is low ({_fmt(v, 2)} V): replace or recharge it"
        ),
        raise_at=battery_low,
        clear_at=battery_low + BATTERY_HYSTERESIS_V,
    )

    # -- block alarms -----------------------------------------------------------------------
    blocks = grid.blocks
    _block_rules(emit, agg, table, blocks)

    # -- irrigation -------------------------------------------------------------------------
    decisions, rain_events = _irrigation(agg, grid.node_block, table, state, times, since_s)

    snapshot: dict[str, dict[str, float]] = {}
    for b, block in enumerate(blocks):
        snapshot[block] = {
            "soil_moisture": float(agg["soil_moisture"][b, -1]) if grid.n_times else np.nan,
            "temperature": float(agg["temperature"][b, -1]) if grid.n_times else np.nan,
            "humidity": float(agg["humidity"][b, -1]) if grid.n_times else np.nan,
            "vpd": float(agg["vpd"][b, -1]) if grid.n_times else np.nan,
            "healthy_nodes": float(agg["healthy_soil_nodes"][b, -1]) if grid.n_times else 0.0,
        }
    # Maturity is sampled rarely (a reading a day or less): each node's latest value counts,
    # over the nodes online now. The temperature, soil and RH fault rules say nothing about
    # the maturity sensor (harvest readiness judges those readings itself).
    maturity = grid.field("maturity")
    latest = (
        grid.prior_maturity.astype(np.float64, copy=True)
        if grid.prior_maturity is not None
        else np.full(grid.n_nodes, np.nan)
    )
    if grid.n_times:
        has = ~np.isnan(maturity)
        last_i = np.where(has.any(axis=1), grid.n_times - 1 - np.argmax(has[:, ::-1], axis=1), -1)
        ok = last_i >= 0
        latest[ok] = maturity[np.flatnonzero(ok), last_i[ok]]
        with np.errstate(invalid="ignore"):
            online = age[:, -1] <= offline_limit[:, 0]
        latest[~online] = np.nan
    block_maturity = _per_block(latest[:, None], grid.node_block, len(blocks), "median")[:, 0]
    for b, block in enumerate(blocks):
        snapshot[block]["maturity"] = float(block_maturity[b])
    node_faults = {
        nodes[n]: [
            f"{kind}:{name}"
            for kind, masks in (
                ("out_of_range", health.out_of_range),
                ("stuck", health.stuck),
                ("spikes", health.spiky),
            )
            for name, m in masks.items()
            if grid.n_times and m[n, -1]
        ]
        for n in range(grid.n_nodes)
    }
    return EngineResult(alarms, decisions, snapshot, node_faults, rain_events, agg)


def _age_words(seconds: float) -> str:
    if seconds >= STATUS_OFFLINE_AGE:
        return "a while: its last status message says offline"
    if seconds != seconds or seconds == np.inf:
        return "more than a week, or has never reported"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} minutes"
    return f"{seconds / 3600:.1f} hours"


def _block_rules(emit: Any, agg: dict[str, F64], table: BlockTable, blocks: list[str]) -> None:
    """Block alarms whose minimum duration is itself a per-block threshold."""
    if not blocks:
        return
    col = table.col
    # Durations differ per block: evaluate each distinct duration group separately.
    frost_warn = col("frost_t10") + col("frost_margin_c")
    stages = [t.stage.replace("_", " ") for t in table.thresholds]
    specs: list[tuple[str, str, F64, str, Any, Any, Any, Severity, Any]] = [
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
        for duration in np.unique(durations):
            rows = np.flatnonzero(durations == duration)
            sub_blocks = [blocks[r] for r in rows]
            rule = AlarmRule(
                rtype,
                direction,
                0.0,
                0.0,
                float(duration),
                CLEAR_AFTER_S,  # type: ignore[arg-type]
                severity=severity,
                escalate_at=None if e_at is None else 0.0,
            )

            def msg(s: int, v: float, k: str, rows: Any = rows, message: Any = message) -> str:
                return str(message(int(rows[s]), v, k))

            extra = {} if e_at is None else {"escalate_at": e_at[rows]}
            emit(
                rule,
                values[rows],
                sub_blocks,
                sub_blocks,
                msg,
                raise_at=r_at[rows],
                clear_at=c_at[rows],
                **extra,
            )


def _irrigation(
    agg: dict[str, F64],
    node_block: npt.NDArray[np.int64],
    table: BlockTable,
    state: EngineState,
    times: F64,
    since_s: float,
) -> tuple[list[IrrigationDecision], list[tuple[float, str, float]]]:
    decisions: list[IrrigationDecision] = []
    rains: list[tuple[float, str, float]] = []
    if times.size == 0:
        return decisions, rains
    col = table.col
    soil = agg["soil_moisture"]
    rh = agg["humidity"]
    healthy = agg["healthy_soil_nodes"]
    below = threshold_mask(soil, col("soil_trigger"), "below", True)
    run = run_length_s(below, times)
    due = below & (run >= col("trigger_duration_min") * 60.0)
    # Rain: rise over RAIN_WINDOW_S beyond RAIN_RISE (the window minimum is the baseline).
    start = np.searchsorted(times, times - RAIN_WINDOW_S, side="left")
    with np.errstate(all="ignore"), _quiet():
        filled = np.where(np.isnan(soil), np.inf, soil)
        # Running minimum over the trailing window: cumulative trick on a small window count.
        window_min = _trailing_min(filled, start)
        rise = np.where(np.isinf(window_min), 0.0, soil - window_min)
        rise = np.nan_to_num(rise, nan=0.0)
    rain_now = rise >= RAIN_RISE
    with np.errstate(invalid="ignore"):
        raining = (rh >= RAINING_RH) & (rise > RAIN_RISE / 3)
    nodes_in_block = np.bincount(node_block, minlength=len(table.blocks))
    for b, block in enumerate(table.blocks):
        th = table.thresholds[b]
        bid = block.id
        busy_until = state.irrigation_busy_until.get(bid, -np.inf)
        prior_rain_until = state.rain_until.get(bid, -np.inf)
        lockout_s = th["rain_lockout_h"] * 3600.0
        known_runs = state.irrigation_windows.get(bid, [])
        # Rain events: the first sample of each rising episode that no irrigation explains.
        rain_times: list[float] = []
        prev = False
        for i in np.flatnonzero(rain_now[b] | np.r_[False, rain_now[b][:-1]]):
            t = float(times[i])
            is_rain = bool(rain_now[b, i])
            ours = any(s0 - 600 <= t <= s1 + SETTLE_AFTER_RUN_S for s0, s1 in known_runs)
            if is_rain and not prev and not ours:
                rain_times.append(t)
                if t > since_s:
                    rains.append((t, bid, float(rise[b, i]) * th["root_depth_m"] * 1000.0))
            prev = is_rain
        rain_arr = np.array(rain_times)
        if rain_times:
            state.rain_until[bid] = max(prior_rain_until, rain_times[-1] + lockout_s)
        candidates = np.flatnonzero(due[b] & (times > since_s))
        for i in candidates:
            t = float(times[i])
            if t < busy_until:
                continue
            k = int(np.searchsorted(rain_arr, t, side="right"))
            rain_until = max(prior_rain_until, rain_arr[k - 1] + lockout_s if k else -np.inf)
            theta = float(soil[b, i])
            inputs = {
                "soil_moisture": round(theta, 4),
                "trigger": th["soil_trigger"],
                "refill": th["soil_refill"],
                "below_trigger_min": round(float(run[b, i]) / 60.0, 1),
                "healthy_soil_nodes": int(healthy[b, i]),
                "humidity": None if rh[b, i] != rh[b, i] else round(float(rh[b, i]), 1),
                "rain_lockout_until_s": None if rain_until == -np.inf else rain_until,
            }
            needed = min(MIN_SOIL_SENSORS, nodes_in_block[b])
            if healthy[b, i] < needed:
                code = "skip_few_sensors"
                if state.last_code.get(bid) != code:
                    decisions.append(
                        IrrigationDecision(
                            t,
                            bid,
                            "skip",
                            code,
                            f"Soil in {bid} reads {theta:.3f} m³/m³, below the "
                            f"{th['soil_trigger']:.3f} trigger, but only {int(healthy[b, i])} "
                            f"healthy soil sensor(s) agree (at least {needed} needed): not "
                            "irrigating on one probe's word. Check the other sensors.",
                            inputs,
                        )
                    )
                    state.last_code[bid] = code
                continue
            if t < rain_until or raining[b, i]:
                code = "skip_rain"
                hours = max(0.0, (rain_until - t) / 3600.0)
                reason = (
                    f"Soil in {bid} is at {theta:.3f} m³/m³, below the {th['soil_trigger']:.3f} trigger, "
                    f"but rain wetted the root zone recently; waiting {hours:.0f} more hours "
                    "before irrigating so rain water is not wasted."
                    if not raining[b, i]
                    else f"Soil in {bid} is below the trigger but it is raining now; not irrigating."
                )
                if state.last_code.get(bid) != code:
                    decisions.append(IrrigationDecision(t, bid, "skip", code, reason, inputs))
                    state.last_code[bid] = code
                continue
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
                f"{run[b, i] / 60:.0f} minutes (median of {int(healthy[b, i])} healthy sensors: "
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
            decisions.append(
                IrrigationDecision(
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
            )
            state.last_code[bid] = "irrigate"
            busy_until = t + duration_s + SETTLE_AFTER_RUN_S
            state.irrigation_windows.setdefault(bid, []).append((t, t + duration_s))
        # Skip for no healthy sensors: reported once per episode.
        none_healthy = (healthy[b] == 0) & (times > since_s)
        if none_healthy.any() and state.last_code.get(bid) != "skip_no_sensor":
            i = int(np.flatnonzero(none_healthy)[0])
            decisions.append(
                IrrigationDecision(
                    float(times[i]),
                    bid,
                    "skip",
                    "skip_no_sensor",
                    f"No healthy soil sensor in {bid} (all faulty or silent): not irrigating on "
                    "readings that cannot be trusted. Check the sensors.",
                    {"healthy_soil_nodes": 0},
                )
            )
            state.last_code[bid] = "skip_no_sensor"
        elif not none_healthy.any() and state.last_code.get(bid) == "skip_no_sensor":
            state.last_code.pop(bid, None)
        state.irrigation_busy_until[bid] = busy_until
    decisions.sort(key=lambda d: d.t_s)
    return decisions, rains


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
