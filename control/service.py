"""The control service: one tick evaluates every block, records decisions and acts.

A tick (every ``tick_s``):

1. read every block's effective thresholds (overrides apply within one tick);
2. load the readings since the previous tick, plus enough history for durations, for all
   blocks with ONE InfluxDB query;
3. run :func:`control.engine.evaluate` from where the previous tick stopped;
4. record alarm transitions (store + ``alarm`` measurement + webhook), irrigation
   decisions (store + ``irrigation`` measurement) and queue valve commands;
5. write ``block_state``; once a day, ``block_daily``;
6. run the per-tick evaluators (``ControlService.evaluators``: harvest plugs in here).

A failing block or a bad value never stops the loop: the tick falls back to evaluating
blocks one by one and logs the one that fails; any other error is logged and the next
tick tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import inspect
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Literal

import numpy as np
import sqlalchemy as sa
from pydantic import Field
from sqlalchemy.engine import Engine

from control import daily
from control.alarms import AlarmChange, Alarms
from control.clock import Clock, DataClock, WallClock, clock_kind
from control.commands import Command, CommandSettings, ValveLink, list_commands, queue_command
from control.engine import (
    AlarmTransition,
    BlockTable,
    Carry,
    EngineResult,
    EngineState,
    Grid,
    IrrigationDecision,
    evaluate,
)
from control.harvest.config import HarvestConfig
from control.harvest.shop import url_secrets as harvest_url_secrets
from control.store import (
    alarm,
    alarm_event,
    irrigation_decision,
    kv_get,
    kv_set,
    open_store,
    valve_command,
)
from control.thresholds import EffectiveThresholds, Thresholds
from control.webhooks import WebhookDispatcher, WebhookSender, WebhookSettings
from control.window import RollingWindow
from orchard.influx import InfluxClient, InfluxError, SyncInfluxClient
from orchard.layout import Orchard, load_orchard
from orchard.lineprotocol import encode_point, escape_key, to_ns
from orchard.settings import OrchardSettings

log = logging.getLogger(__name__)

ENGINE_ALARM_TYPES = (
    "frost",
    "heat",
    "vpd_high",
    "vpd_low",
    "soil_dry",
    "waterlogged",
    "sensor_out_of_range",
    "sensor_stuck",
    "sensor_spikes",
    "node_offline",
    "low_battery",
)
STATE_SCOPE = "control"


class ControlSettings(OrchardSettings):
    """Settings of the control service (``ORCHARD_`` + field name, nested with ``__``)."""

    control_tick_s: float = Field(default=30.0, gt=0, description="Seconds between ticks")
    control_clock: Literal["auto", "wall", "data"] = Field(
        default="auto",
        description="'data': now = newest telemetry (accelerated demo); auto = data when the "
        "demo simulator runs faster than real time",
    )
    control_step_s: float = Field(default=60.0, ge=1, description="Time bin of the engine")
    control_context_h: float = Field(
        default=8.0, gt=0, description="History loaded before the new readings (durations, stuck)"
    )
    control_max_catchup_h: float = Field(default=72.0, gt=0)
    control_query_parts: int = Field(
        default=1,
        ge=1,
        le=8,
        description="Concurrent statements a steady tick splits its query into, by blocks "
        "(2 on a large farm with InfluxDB on two or more cores)",
    )
    control_settle_s: float = Field(
        default=15.0,
        ge=0,
        description="A bin is evaluated this long after it closed (ingest's write delay)",
    )
    control_hold_s: float = Field(
        default=300.0,
        ge=0,
        description="While ingest lags (nothing stored after a bin yet), wait up to this long "
        "before evaluating the bin anyway (a whole farm falling silent must still alarm)",
    )
    control_irrigate: bool = Field(
        default=True, description="Send valve commands (else advise only)"
    )
    sim_speed: float = Field(default=1.0, gt=0, description="Set by `make up` for the simulator")
    commands: CommandSettings = CommandSettings()
    webhook: WebhookSettings = WebhookSettings()
    harvest: HarvestConfig = HarvestConfig()

    @property
    def tick_interval_s(self) -> float:
        """Real seconds between ticks. In an accelerated demo, tick often enough that a tick
        covers about ten simulated minutes (but at most once a second)."""
        if self.clock_kind == "data" and self.sim_speed > 1:
            return min(self.control_tick_s, max(1.0, 600.0 / self.sim_speed))
        return self.control_tick_s

    @property
    def settle_s(self) -> float:
        """How long after a bin closed it is read. In an accelerated demo the data clock
        runs ahead of ingest's writes by its batching delay (a second of real time is an
        hour of simulated time), so the settle keeps two real seconds of slack."""
        if self.clock_kind == "data" and self.sim_speed > 1:
            return max(self.control_settle_s, self.sim_speed * 2.0)
        return self.control_settle_s

    @property
    def command_ttl_s(self) -> float:
        """A command's time to live in the control clock. In an accelerated demo the data
        clock trails the simulator by the ingest delay (seconds of real time, hours of
        simulated time), so the TTL keeps at least half a real minute of slack."""
        if self.clock_kind == "data" and self.sim_speed > 1:
            return max(self.commands.ttl_s, self.sim_speed * 30.0)
        return self.commands.ttl_s

    @property
    def clock_kind(self) -> str:
        return clock_kind(self.control_clock, self.demo, self.sim_speed)


@dataclass
class TickContext:
    """What a per-tick evaluator (e.g. harvest readiness) receives."""

    now: datetime
    orchard: Orchard
    engine: Engine
    alarms: Alarms
    thresholds: dict[str, EffectiveThresholds]
    influx: InfluxClient
    result: EngineResult | None
    webhooks: WebhookSender


Evaluator = Callable[[TickContext], Awaitable[None] | None]


@dataclass
class TickReport:
    now: datetime
    alarms: list[AlarmTransition] = field(default_factory=list)
    decisions: list[IrrigationDecision] = field(default_factory=list)
    commands: list[Command] = field(default_factory=list)
    failed_blocks: list[str] = field(default_factory=list)
    query_s: float = 0.0  # the InfluxDB query alone
    fetch_s: float = 0.0  # query + merging the rows into the rolling window
    evaluate_s: float = 0.0  # the engine
    full_fetch: bool = False  # the whole window was (re)loaded this tick
    held_back: bool = False  # the newest bins wait for ingest (nothing stored after them)


def default_evaluators(settings: ControlSettings | None = None) -> list[Evaluator]:
    """Per-tick evaluators beyond the engine. Harvest readiness plugs in here."""
    from control.harvest.hook import HarvestEvaluator

    return [HarvestEvaluator(settings.harvest if settings is not None else None)]


class ControlService:
    def __init__(
        self,
        settings: ControlSettings,
        *,
        orchard: Orchard | None = None,
        engine: Engine | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self.orchard = orchard or load_orchard(settings.orchard_file)
        self.farm = self.orchard.farm.id
        self.engine = engine or open_store(settings.state_url)
        self.influx = InfluxClient(settings.influx)
        if clock is not None:
            self.clock: Clock = clock
        elif settings.clock_kind == "data":
            self.clock = DataClock(self.influx, self.farm)
        else:
            self.clock = WallClock()
        self.dispatcher = WebhookDispatcher(
            self.engine, settings.webhook, url_secrets=harvest_url_secrets(settings.harvest)
        )
        self.webhooks = WebhookSender(self.engine, settings.webhook, self.dispatcher)
        self.alarms = Alarms(self.engine, notify=self._notify_alarm)
        self.thresholds = Thresholds(self.engine, self.orchard)
        self.link = ValveLink(
            self.engine,
            settings.mqtt,
            self._now_or_wall,
            settings=settings.commands,
            farm=self.farm,
            listener=self._on_command,
        )
        self.evaluators: list[Evaluator] = default_evaluators(settings)
        self.window = RollingWindow(
            self.farm,
            self.orchard.blocks,
            settings.control_step_s,
            query_parts=settings.control_query_parts,
        )
        # The engine's state between ticks, and the thresholds it was built with: None until
        # the first tick, and again after a failure or a change of thresholds (rebuilt from
        # the window's history).
        self.carry: Carry | None = None
        self._carry_thresholds: list[dict[str, float]] = []
        self._table: BlockTable | None = None
        self._table_fingerprint: list[dict[str, float]] = []
        self._pending_lines: list[str] = []
        self._flush_task: asyncio.Task[None] | None = None
        # run() writes the dashboards' copy in the background; a caller driving tick()
        # itself (tests, --once) gets the points written before tick() returns.
        self.background_writes = False
        self.last_write_s = 0.0  # the last background write of _pending_lines

    # --- clock ---------------------------------------------------------------------------

    def _now_or_wall(self) -> datetime:
        try:
            return self.clock.now()
        except RuntimeError:
            return datetime.now(UTC)

    # --- notifications and annotations --------------------------------------------------------

    def _notify_alarm(self, change: AlarmChange) -> None:
        a = change.alarm
        self.webhooks.send(
            f"alarm.{change.event}",
            {
                "id": a.id,
                "type": a.type,
                "subject": a.subject,
                "farm": a.farm,
                "block": a.block,
                "severity": a.severity,
                "state": a.state,
                "message": a.message,
                "value": a.value,
                "threshold": a.threshold,
                "started_at": a.started_at.isoformat(),
                "escalation_level": a.escalation_level,
            },
            idempotency_key=f"alarm-{a.id}-{change.event}-{a.escalation_level}",
        )

    def _on_command(self, command: Command, event: str) -> None:
        self._pending_lines.append(
            encode_point(
                "irrigation",
                {"farm": command.farm, "block": command.block, "valve": command.valve},
                {
                    "event": f"command_{event}",
                    "command_id": command.command_id,
                    "duration_s": command.duration_s,
                    "depth_mm": command.depth_mm,
                    "reason": command.error or command.reason or "",
                },
                to_ns(self._now_or_wall()),
            )
        )
        if event in ("failed", "timed_out", "expired"):
            self.alarms.raise_alarm(
                type="valve_command",
                subject=command.valve,
                farm=command.farm,
                block=command.block,
                severity="major",
                message=f"irrigation command to {command.valve} {event.replace('_', ' ')}: {command.error}",
                details={"command_id": command.command_id},
            )
        elif event in ("acknowledged", "completed"):
            self.alarms.clear_active("valve_command", command.valve, reason=f"command {event}")

    async def flush_lines(self) -> None:
        """Write every pending point now (after a background write under way)."""
        if self._flush_task is not None:
            await self._flush_task
        await self._write_pending()

    async def _flush_after_tick(self) -> None:
        """Hand the pending points to a background write (in run()): the tick's decisions
        are in the store already, and the dashboards' copy need not hold up the next bin."""
        if not self.background_writes:
            await self.flush_lines()
        elif self._pending_lines and (self._flush_task is None or self._flush_task.done()):
            self._flush_task = asyncio.create_task(self._write_pending(), name="influx-mirror")

    async def _write_pending(self) -> None:
        if not self._pending_lines:
            return
        lines, self._pending_lines = self._pending_lines, []
        started = time.perf_counter()
        try:
            await self.influx.write(lines)
        except InfluxError as exc:
            log.warning(
                "could not write %d annotation points (%s); retrying next tick", len(lines), exc
            )
            self._pending_lines = lines + self._pending_lines
        self.last_write_s = time.perf_counter() - started

    def _mirror_alarm_events(self) -> None:
        """Every alarm change (control, API acks, harvest) becomes an ``alarm`` point."""
        last = int(kv_get(self.engine, STATE_SCOPE, "alarm_event_mirrored") or 0)
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    alarm_event,
                    alarm.c.type,
                    alarm.c.subject,
                    alarm.c.farm,
                    alarm.c.block,
                    alarm.c.message.label("alarm_message"),
                )
                .join(alarm, alarm.c.id == alarm_event.c.alarm_id)
                .where(alarm_event.c.id > last)
                .order_by(alarm_event.c.id)
                .limit(5000)
            ).all()
        for r in rows:
            self._pending_lines.append(
                encode_point(
                    "alarm",
                    {
                        "farm": r.farm,
                        "block": r.block or "",
                        "type": r.type,
                        "severity": r.severity,
                        "subject": r.subject,
                    },
                    {
                        "state": r.state,
                        "event": r.event,
                        "message": r.message or r.alarm_message,
                        "value": None
                        if r.value is None or not math.isfinite(r.value)
                        else float(r.value),
                    },
                    to_ns(r.ts),
                )
            )
            last = r.id
        if rows:
            kv_set(self.engine, STATE_SCOPE, "alarm_event_mirrored", last)

    # --- the tick ------------------------------------------------------------------------

    def _engine_state(self, now: datetime) -> EngineState:
        state = EngineState()
        for a in self.alarms.active(farm=self.farm):
            if a.type in ENGINE_ALARM_TYPES:
                state.active[(a.type, a.subject)] = a.severity
        saved = kv_get(self.engine, STATE_SCOPE, "engine") or {}
        state.rain_until = {k: float(v) for k, v in saved.get("rain_until", {}).items()}
        state.irrigation_busy_until = {k: float(v) for k, v in saved.get("busy_until", {}).items()}
        state.last_code = dict(saved.get("last_code", {}))
        horizon = now - timedelta(days=3)
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    valve_command.c.block,
                    valve_command.c.issued_at,
                    valve_command.c.duration_s,
                    valve_command.c.state,
                ).where(valve_command.c.issued_at >= horizon, valve_command.c.action == "open")
            ).all()
        for r in rows:
            start = r.issued_at.timestamp()
            if r.state in ("acknowledged", "completed"):
                state.irrigation_windows.setdefault(r.block, []).append(
                    (start, start + r.duration_s)
                )
            if r.state in ("queued", "sent", "acknowledged"):
                # A run under way or on its way: no second decision for this block meanwhile.
                state.irrigation_busy_until[r.block] = max(
                    state.irrigation_busy_until.get(r.block, -math.inf),
                    start + r.duration_s + 4 * 3600,
                )
        return state

    def _save_state(self, state: EngineState, processed_until: float) -> None:

        def finite(d: dict[str, float]) -> dict[str, float]:
            return {k: v for k, v in d.items() if math.isfinite(v)}

        kv_set(
            self.engine,
            STATE_SCOPE,
            "engine",
            {
                "rain_until": finite(state.rain_until),
                "busy_until": finite(state.irrigation_busy_until),
                "last_code": state.last_code,
            },
        )
        kv_set(self.engine, STATE_SCOPE, "processed_until", processed_until)

    def _evaluate(
        self, table: BlockTable, state: EngineState, since: float, offline: set[str]
    ) -> tuple[EngineResult | None, list[str]]:
        """Evaluate the bins after ``since``: only those with the carried state, or the whole
        window (its history only rebuilding the state) when there is none to continue.

        Each evaluation runs on a copy of ``state`` that is kept only if it succeeds, so a
        failure half-way leaves no transition recorded as done that was never emitted."""
        if table is not self._table:
            self._table = table
            self._table_fingerprint = [t.as_floats() for t in table.thresholds]
        fingerprint = self._table_fingerprint
        carry = self.carry
        if carry is None or carry.last_s != since or fingerprint != self._carry_thresholds:
            if carry is not None and fingerprint != self._carry_thresholds:
                log.info("thresholds changed: rebuilding the engine state from the window")
            carry, grid = Carry(), self.window.grid()
        else:
            grid = self.window.tail(since)
        self.carry = None
        trial = copy.deepcopy(state)
        try:
            result = evaluate(grid, table, trial, since, carry=carry, offline_now=offline)
        except Exception:
            log.exception("evaluation of all blocks failed; evaluating blocks one by one")
        else:
            vars(state).update(vars(trial))
            self.carry, self._carry_thresholds = carry, fingerprint
            return result, []
        # One block at a time over the whole window, without carried state (the next tick
        # rebuilds it), so a block that fails does not keep the others from their decisions.
        grid = self.window.grid()
        failed: list[str] = []
        merged: EngineResult | None = None
        for b, block in enumerate(table.blocks):
            rows = np.flatnonzero(grid.node_block == b)
            sub = Grid(
                times_s=grid.times_s,
                nodes=[grid.nodes[i] for i in rows.tolist()],
                node_block=np.zeros(rows.size, dtype=np.int64),
                blocks=[block.id],
                values={k: v[rows] for k, v in grid.values.items()},
                prior_age_s=None if grid.prior_age_s is None else grid.prior_age_s[rows],
                prior_maturity=None if grid.prior_maturity is None else grid.prior_maturity[rows],
            )
            trial = copy.deepcopy(state)
            try:
                r = evaluate(
                    sub,
                    BlockTable([block], [table.thresholds[b]], table.farm),
                    trial,
                    since,
                    offline_now=offline,
                )
            except Exception:
                log.exception("block %s failed to evaluate; skipped this tick", block.id)
                failed.append(block.id)
                continue
            vars(state).update(vars(trial))
            if merged is None:
                merged = r
            else:
                merged.alarms += r.alarms
                merged.decisions += r.decisions
                merged.block_snapshot.update(r.block_snapshot)
                merged.node_faults.update(r.node_faults)
                merged.rain_events += r.rain_events
        return merged, failed

    async def tick(self) -> TickReport:
        await self.clock.refresh()
        if isinstance(self.clock, DataClock) and not self.clock.ready:
            log.info("data clock: no telemetry yet, waiting")
            return TickReport(now=datetime.now(UTC))
        now = self.clock.now()
        report = TickReport(now=now)
        today = daily.local_today(now, daily.farm_zone(self.orchard))
        thresholds = await asyncio.to_thread(self.thresholds.effective_all, today)
        blocks = self.orchard.blocks
        table = self._table
        current = [thresholds[b.id] for b in blocks]
        # Thresholds come from a cache: the same objects mean the same table (its arrays
        # are built once, not every tick).
        if table is None or any(a is not b for a, b in zip(table.thresholds, current, strict=True)):
            table = BlockTable(blocks, current, self.farm)
        step = self.settings.control_step_s
        # Bins are aligned to the step. A bin is evaluated once, when it has closed and
        # ingest has had time to write its readings (control_settle_s).
        settled = now.timestamp() - self.settings.settle_s
        end = datetime.fromtimestamp(math.floor(settled / step) * step, UTC)
        processed = kv_get(self.engine, STATE_SCOPE, "processed_until")
        floor = end - timedelta(hours=self.settings.control_max_catchup_h)
        if processed:
            since = max(datetime.fromtimestamp(float(processed), UTC), floor)
        else:
            since = end - timedelta(seconds=step * 2)
        raw_start = (since - timedelta(hours=self.settings.control_context_h)).timestamp()
        start = datetime.fromtimestamp(math.floor(raw_start / step) * step, UTC)
        result: EngineResult | None = None
        grid: Grid | None = None
        loop = asyncio.get_running_loop()
        # The newest bin evaluated is end - step: nothing new until a further bin closes.
        if end > start and end - timedelta(seconds=step) > since:
            t0 = loop.time()
            grid = await self.window.update(self.influx, start.timestamp(), end.timestamp())
            # Bins up to the one holding the newest stored reading have been written (the
            # settle covers the rest of that minute). While ingest lags behind them (InfluxDB
            # back after an outage, a broker backlog) the newest bins wait, for at most
            # control_hold_s, rather than be judged empty.
            newest = self.window.newest_s
            written = (
                math.floor(newest / step) * step + step if math.isfinite(newest) else -math.inf
            )
            ready = max(
                end.timestamp() - self.settings.control_hold_s,
                written,
                since.timestamp() + step,  # a bin judged stays judged
            )
            if ready < end.timestamp():
                self.window.hold_back(ready)
                grid = self.window.grid()
            report.fetch_s = loop.time() - t0
            report.query_s = self.window.stats.query_s
            report.full_fetch = self.window.stats.full
            if self.window.stats.full:
                self.carry = None
            elif self.carry is not None and self.window.latest_maturity:
                # Maturity comes in its own statement every few minutes, for bins the
                # engine may have judged already: its latest value per node goes straight
                # into the carried state (it feeds no rule, only the block's maturity).
                self.carry.fit(grid)
                for row, value in self.window.latest_maturity.items():
                    self.carry.maturity[row] = value
            report.held_back = ready < end.timestamp()
        if grid is not None and grid.n_times and grid.times_s[-1] > since.timestamp():
            t1 = loop.time()
            state = self._engine_state(now)
            offline = {n for n, up in self.link.presence.items() if up is False}
            result, report.failed_blocks = self._evaluate(table, state, since.timestamp(), offline)
            report.evaluate_s = loop.time() - t1
            if result is not None:
                self._apply_alarms(result.alarms)
                report.alarms = result.alarms
                report.decisions = result.decisions
                report.commands = self._apply_decisions(result.decisions, thresholds, now)
                self._record_rain(result.rain_events)
                self._block_state(result, thresholds, now)
                self._save_state(state, float(grid.times_s[-1]))
        self._mirror_alarm_events()
        await self._flush_after_tick()
        await self._daily(now, thresholds)
        await self._run_evaluators(now, thresholds, result)
        await self._flush_after_tick()
        return report

    def _apply_alarms(self, transitions: list[AlarmTransition]) -> None:
        for tr in sorted(transitions, key=lambda a: a.t_s):
            at = datetime.fromtimestamp(tr.t_s, UTC)
            try:
                if tr.kind in ("raise", "escalate"):
                    self.alarms.raise_alarm(
                        type=tr.type,
                        subject=tr.subject,
                        farm=self.farm,
                        block=tr.block,
                        severity=tr.severity,
                        message=tr.message,
                        value=tr.value,
                        threshold=tr.threshold,
                        now=at,
                    )
                else:
                    self.alarms.clear_active(
                        tr.type, tr.subject, reason=tr.message, value=tr.value, now=at
                    )
            except Exception:
                log.exception("could not record alarm %s on %s", tr.type, tr.subject)

    def _apply_decisions(
        self,
        decisions: list[IrrigationDecision],
        thresholds: dict[str, EffectiveThresholds],
        now: datetime,
    ) -> list[Command]:
        commands: list[Command] = []
        latest: dict[str, IrrigationDecision] = {}
        for d in decisions:
            if d.action == "irrigate":
                latest[d.block] = d
        for d in decisions:
            block = self.orchard.block(d.block)
            acted = d.action == "irrigate" and latest.get(d.block) is d
            with self.engine.begin() as conn:
                decision_id = conn.execute(
                    irrigation_decision.insert().values(
                        farm=self.farm,
                        block=d.block,
                        ts=datetime.fromtimestamp(d.t_s, UTC),
                        action=d.action if acted or d.action != "irrigate" else "superseded",
                        code=d.code,
                        reason=d.reason,
                        inputs=d.inputs,
                        depth_mm=d.depth_mm,
                        duration_s=d.duration_s,
                        water_m3=d.water_m3,
                    )
                ).inserted_primary_key[0]  # type: ignore[index]
            ids: list[str] = []
            if acted and self.settings.control_irrigate and block.controller and block.valves:
                for valve in block.valves:
                    command = queue_command(
                        self.engine,
                        farm=self.farm,
                        block=block.id,
                        node=block.controller,
                        valve=valve,
                        action="open",
                        duration_s=int(d.duration_s or 0),
                        issued_at=now,
                        ttl_s=self.settings.command_ttl_s,
                        reason=d.reason,
                        depth_mm=d.depth_mm,
                        decision_id=int(decision_id),
                        max_attempts=self.settings.commands.max_attempts,
                    )
                    commands.append(command)
                    ids.append(command.command_id)
                with self.engine.begin() as conn:
                    conn.execute(
                        irrigation_decision.update()
                        .where(irrigation_decision.c.id == decision_id)
                        .values(command_ids=ids)
                    )
            # One point per valve (dashboards filter by valve), each with its share of the
            # block's water, so a sum over the points counts the water once.
            valves = block.valves or [""]
            for valve in valves:
                self._pending_lines.append(
                    encode_point(
                        "irrigation",
                        {"farm": self.farm, "block": d.block, "valve": valve},
                        {
                            "event": f"decision_{d.code}",
                            "command_id": ",".join(ids) or None,
                            "duration_s": d.duration_s,
                            "depth_mm": d.depth_mm,
                            "water_m3": None
                            if d.water_m3 is None
                            else round(d.water_m3 / len(valves), 4),
                            "reason": d.reason,
                        },
                        to_ns(datetime.fromtimestamp(d.t_s, UTC)),
                    )
                )
            log.info("irrigation decision for %s: %s", d.block, d.reason)
        return commands

    def _record_rain(self, rains: list[tuple[float, str, float]]) -> None:
        if not rains:
            return
        saved = kv_get(self.engine, STATE_SCOPE, "rain_mm") or {}
        zone = daily.farm_zone(self.orchard)
        for t, block, mm in rains:
            day = daily.local_day(t, zone).isoformat()
            per_block = saved.setdefault(block, {})
            per_block[day] = round(per_block.get(day, 0.0) + mm, 1)
        kv_set(self.engine, STATE_SCOPE, "rain_mm", saved)

    def _block_state(
        self, result: EngineResult, thresholds: dict[str, EffectiveThresholds], now: datetime
    ) -> None:
        """One ``block_state`` point per block (written every tick for 500 blocks: built
        with the line-protocol pieces directly rather than a dict per point)."""
        open_counts = self.alarms.active_counts(farm=self.farm)
        ts = to_ns(now)
        farm_tag = escape_key(self.farm)
        for block_id, snap in result.block_snapshot.items():
            th = thresholds[block_id]
            parts = [
                f"{k}={v!r}"
                for k in ("soil_moisture", "temperature", "humidity", "vpd", "maturity")
                if (v := round(snap.get(k, math.nan), 4)) == v and math.isfinite(v)
            ]
            healthy = snap.get("healthy_nodes", 0.0)
            parts += [
                f"trigger={float(th['soil_trigger'])!r}",
                f"refill={float(th['soil_refill'])!r}",
                f"maturity_threshold={float(th['harvest_threshold'])!r}",
                f"healthy_nodes={int(healthy) if math.isfinite(healthy) else 0}i",
                f"open_alarms={open_counts.get(block_id, 0)}i",
            ]
            self._pending_lines.append(
                f"block_state,block={escape_key(block_id)},farm={farm_tag} {','.join(parts)} {ts}"
            )

    async def _daily(self, now: datetime, thresholds: dict[str, EffectiveThresholds]) -> None:
        today = daily.local_today(now, daily.farm_zone(self.orchard))
        done = kv_get(self.engine, STATE_SCOPE, "daily_done")
        if done == today.isoformat():
            return
        try:
            lines = await self.daily_lines(today, thresholds)
            await self.influx.write(lines)
            kv_set(self.engine, STATE_SCOPE, "daily_done", today.isoformat())
        except InfluxError as exc:
            log.warning("daily agronomy not written (%s); retrying next tick", exc)

    async def daily_lines(
        self, today: date, thresholds: dict[str, EffectiveThresholds]
    ) -> list[str]:
        """``block_daily`` for every complete local day since the earliest bloom (idempotent)."""
        blocks = self.orchard.blocks
        zone = daily.farm_zone(self.orchard)
        first = min(b.bloom_date for b in blocks)
        if first >= today:
            return []
        first = max(first, today - timedelta(days=366))
        results = await self.influx.query(
            daily.daily_query(self.farm, blocks, first, today, zone), epoch="ms"
        )
        per_block = daily.node_days(results[0] if results else [], blocks, first, today, zone)
        days = daily.day_range(first, today)
        rain = kv_get(self.engine, STATE_SCOPE, "rain_mm") or {}
        irrigation = self._irrigation_mm(first)
        lines: list[str] = []
        for block in blocks:
            rows = daily.compute_block_days(
                block,
                thresholds[block.id],
                days,
                per_block[block.id],
                {date.fromisoformat(k): v for k, v in rain.get(block.id, {}).items()},
                irrigation.get(block.id, {}),
            )
            lines += daily.daily_lines(self.farm, block.id, rows, zone)
        return lines

    def _irrigation_mm(self, since: date) -> dict[str, dict[date, float]]:
        """Net depth of acknowledged runs per block and day (one valve's depth per decision)."""
        zone = daily.farm_zone(self.orchard)
        start = daily.local_midnight(since, zone)
        out: dict[str, dict[date, float]] = {}
        seen: set[tuple[str, int]] = set()
        for c in list_commands(self.engine, limit=100_000):
            if (
                c.state not in ("acknowledged", "completed")
                or c.issued_at < start
                or c.action != "open"
            ):
                continue
            key = (c.block, c.decision_id or hash(c.command_id))
            if key in seen:
                continue
            seen.add(key)
            day = daily.local_day(c.issued_at.timestamp(), zone)
            per = out.setdefault(c.block, {})
            per[day] = per.get(day, 0.0) + (c.depth_mm or 0.0)
        return out

    async def _run_evaluators(
        self, now: datetime, thresholds: dict[str, EffectiveThresholds], result: EngineResult | None
    ) -> None:
        ctx = TickContext(
            now,
            self.orchard,
            self.engine,
            self.alarms,
            thresholds,
            self.influx,
            result,
            self.webhooks,
        )
        for evaluator in self.evaluators:
            try:
                outcome = evaluator(ctx)
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:
                log.exception("evaluator %r failed", evaluator)

    # --- running ---------------------------------------------------------------------------

    async def _ensure_database(self, stop: asyncio.Event) -> None:
        """Create the database if needed; an InfluxDB that is not up yet is waited for."""
        delay = 1.0
        while not stop.is_set():
            try:
                await self.influx.create_database()
                return
            except InfluxError as exc:
                log.warning("InfluxDB not ready (%s); retrying in %.0fs", exc, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                delay = min(delay * 2, 30.0)

    async def run(self, stop: asyncio.Event) -> None:
        self.background_writes = True
        await self._ensure_database(stop)
        tasks = [asyncio.create_task(self.dispatcher.run(stop), name="webhooks")]
        connect = asyncio.create_task(self.link.start(stop), name="mqtt-connect")
        tasks.append(asyncio.create_task(self.link.run(stop), name="commands"))
        try:
            while not stop.is_set():
                started = asyncio.get_running_loop().time()
                try:
                    report = await self.tick()
                    if report.alarms or report.decisions:
                        log.info(
                            "tick at %s: %d alarm changes, %d decisions, %d commands",
                            report.now.isoformat(timespec="seconds"),
                            len(report.alarms),
                            len(report.decisions),
                            len(report.commands),
                        )
                except Exception:
                    log.exception("control tick failed; next tick will retry")
                elapsed = asyncio.get_running_loop().time() - started
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        stop.wait(), max(0.0, self.settings.tick_interval_s - elapsed)
                    )
        finally:
            stop.set()
            connect.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.flush_lines()
            await self.link.stop()
            await self.influx.aclose()

    def backtest_client(self) -> SyncInfluxClient:
        return SyncInfluxClient(self.settings.influx)
