"""The harvest evaluation: readiness, forecast, state, alarm and lot for every block.

One :class:`HarvestEngine` per control service. The control loop calls
:meth:`HarvestEngine.tick` on every tick; it evaluates when ``evaluate_every_s`` has
passed (the forecast moves by the day, not by the minute). A replay calls
:meth:`HarvestEngine.evaluate` once per simulated day with the same code.

Per evaluation: one InfluxQL query for the whole farm (only the days not read before),
one query per block that needs a lot (its last days of readings, for the grade), one
write of the ``readiness`` and ``listing`` points. SQL state, alarms and lot events are
stored before the InfluxDB write, so a down InfluxDB loses a dashboard point, never a
decision.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from control.alarms import Alarms
from control.harvest.config import HarvestConfig
from control.harvest.data import (
    DailyCache,
    day_start,
    recent_readings_async,
    recent_readings_sync,
    refresh_async,
    refresh_sync,
)
from control.harvest.grading import (
    estimated_quantity_kg,
    grade_readings,
    harvest_window,
    listing_description,
    listing_title,
)
from control.harvest.lots import (
    EventSink,
    LotChange,
    LotDraft,
    listing_point,
    lot_id,
    upsert_lot,
)
from control.harvest.readiness import (
    Readiness,
    ReadinessState,
    Thresholds,
    evaluate_block,
)
from control.harvest.tables import block_state, lot, lot_event
from control.store import utcnow
from orchard.influx import InfluxClient, InfluxError, SyncInfluxClient
from orchard.layout import Block, Orchard
from orchard.lineprotocol import encode_point, to_ns

log = logging.getLogger(__name__)

ALARM_TYPE = "harvest_readiness"
WINDOW_NO = 1  # one harvest window per block and season; a second picking would be 2
_EVENT_STATE = {"published": "published", "withdrawn": "withdrawn", "sold_out": "sold_out"}


class ThresholdSource:
    """Effective harvest thresholds per block (control's thresholds, or crop defaults)."""

    def __call__(self, block: Block, on: date) -> Thresholds:
        return Thresholds.from_crop(block.crop_profile)


class ControlThresholds(ThresholdSource):
    """Crop defaults overridden by agronomists, read through ``control.thresholds``."""

    def __init__(self, thresholds: Any) -> None:
        self._thresholds = thresholds

    def __call__(self, block: Block, on: date) -> Thresholds:
        effective = self._thresholds.effective(block.id, on)
        return Thresholds.from_crop(
            block.crop_profile,
            maturity=effective["harvest_threshold"],
            gdd_target=effective["gdd_target"],
        )


@dataclass(frozen=True, slots=True)
class BlockOutcome:
    block: str
    readiness: Readiness
    previous: ReadinessState | None
    lot: LotChange | None

    @property
    def changed(self) -> bool:
        return self.previous is not self.readiness.state


@dataclass(frozen=True, slots=True)
class _Assessment:
    block: Block
    readiness: Readiness
    previous: ReadinessState | None
    ready_on: date | None
    healthy_nodes: tuple[str, ...]
    thresholds: Thresholds


class HarvestEngine:
    def __init__(
        self,
        orchard: Orchard,
        engine: Engine,
        config: HarvestConfig | None = None,
        *,
        alarms: Alarms | None = None,
        thresholds: ThresholdSource | None = None,
        sink: EventSink | None = None,
    ) -> None:
        self.orchard = orchard
        self.engine = engine
        self.config = config or HarvestConfig()
        self.rules = self.config.rules()
        self.alarms = alarms or Alarms(engine)
        self.thresholds = thresholds or ThresholdSource()
        self.sink = sink
        self.farm = orchard.farm.id
        self.tz = ZoneInfo(orchard.farm.timezone)
        self.cache = DailyCache(self.farm, orchard.farm.timezone)
        self._last_run: datetime | None = None
        self._lot_events_seen = 0  # id of the last harvest_lot_event mirrored to InfluxDB

    # --- scheduling --------------------------------------------------------------

    def due(self, now: datetime) -> bool:
        if not self.config.enabled:
            return False
        return (
            self._last_run is None
            or (now - self._last_run).total_seconds() >= self.config.evaluate_every_s
        )

    async def tick(self, client: InfluxClient, now: datetime) -> list[BlockOutcome]:
        """The control loop's hook: evaluate when due; never raise into the loop."""
        if not self.due(now):
            return []
        try:
            return await self.aevaluate(client, now)
        except Exception:
            log.exception("harvest evaluation failed; will retry at the next tick")
            return []

    # --- evaluation --------------------------------------------------------------

    @property
    def season_start(self) -> date:
        return min(b.bloom_date for b in self.orchard.blocks)

    def evaluate(self, client: SyncInfluxClient, as_of: datetime) -> list[BlockOutcome]:
        """Evaluate every block with data up to ``as_of`` (blocking client)."""
        refresh_sync(client, self.cache, self.season_start, as_of)
        assessments = self._assess(as_of)
        readings = {
            a.block.id: recent_readings_sync(
                client, self.farm, a.block.id, *self._grade_span(a, as_of)
            )
            for a in assessments
            if self._wants_lot(a)
        }
        outcomes, lines = self._apply(as_of, assessments, readings)
        try:
            client.write(lines)
        except InfluxError as exc:
            log.warning("harvest points not written to InfluxDB: %s", exc)
        self._last_run = as_of
        return outcomes

    async def aevaluate(self, client: InfluxClient, as_of: datetime) -> list[BlockOutcome]:
        """Same as :meth:`evaluate` with the asyncio client."""
        await refresh_async(client, self.cache, self.season_start, as_of)
        assessments = self._assess(as_of)
        readings = {
            a.block.id: await recent_readings_async(
                client, self.farm, a.block.id, *self._grade_span(a, as_of)
            )
            for a in assessments
            if self._wants_lot(a)
        }
        outcomes, lines = self._apply(as_of, assessments, readings)
        try:
            await client.write(lines)
        except InfluxError as exc:
            log.warning("harvest points not written to InfluxDB: %s", exc)
        self._last_run = as_of
        return outcomes

    def _eval_day(self, as_of: datetime) -> tuple[date, bool]:
        """The farm's local day being evaluated, and whether it is over."""
        local = as_of.astimezone(self.tz)
        if local.time() == datetime.min.time():
            return local.date() - timedelta(days=1), True
        return local.date(), False

    def _grade_span(self, a: _Assessment, as_of: datetime) -> tuple[datetime, datetime]:
        start = day_start(a.readiness.as_of - timedelta(days=self.rules.grade_days - 1), self.tz)
        return start, as_of

    def _wants_lot(self, a: _Assessment) -> bool:
        state = a.readiness.state
        if state is ReadinessState.READY:
            return True
        return state is ReadinessState.READY_SOON and self.config.list_when == "ready_soon"

    def _assess(self, as_of: datetime) -> list[_Assessment]:
        day, complete = self._eval_day(as_of)
        active = self.alarms.active(farm=self.farm)
        previous = self._states()
        out: list[_Assessment] = []
        for block in self.orchard.blocks:
            if day < block.bloom_date:
                continue
            blocking = sorted(
                {
                    a.type
                    for a in active
                    if a.block == block.id and a.type in self.config.blocking_alarm_types
                }
            )
            flagged = {
                a.subject: f"open {a.type.replace('_', ' ')} alarm"
                for a in active
                if a.type in self.config.node_fault_alarm_types and a.subject in block.sensor_nodes
            }
            prev_row = previous.get((block.id, block.bloom_date))
            prev_state = ReadinessState(prev_row["state"]) if prev_row else None
            thresholds = self.thresholds(block, day)
            series = self.cache.block_daily(block, day, complete)
            readiness = evaluate_block(
                block.id,
                block.crop_profile,
                series,
                thresholds,
                self.rules,
                open_alarms=blocking,
                flagged_nodes=flagged,
                previous=prev_state,
            )
            ready_on = prev_row["ready_on"] if prev_row else None
            if readiness.state is ReadinessState.READY and ready_on is None:
                ready_on = day
            healthy = tuple(n for n in block.sensor_nodes if n not in readiness.unhealthy)
            out.append(_Assessment(block, readiness, prev_state, ready_on, healthy, thresholds))
        return out

    def _states(self) -> dict[tuple[str, date], Mapping[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(block_state).where(block_state.c.farm == self.farm))
            return {(r.block, r.season): dict(r._mapping) for r in rows}

    def _apply(
        self,
        as_of: datetime,
        assessments: Sequence[_Assessment],
        readings: Mapping[str, Mapping[str, np.ndarray]],
    ) -> tuple[list[BlockOutcome], list[str]]:
        outcomes: list[BlockOutcome] = []
        lines: list[str] = self._people_changes()
        now = as_of.astimezone(UTC)
        for a in assessments:
            try:
                self._store_state(a, now)
                self._alarm(a, now)
                lot_change = None
                if a.block.id in readings:
                    lot_change = self._lot(a, readings[a.block.id], now)
                    if lot_change.event is not None:
                        lines.append(listing_point(lot_change, now))
                        self._emit(lot_change)
            except Exception:
                # One block's failure (a bad override, a locked row) must not stop the rest.
                log.exception("harvest evaluation of block %s failed", a.block.id)
                continue
            lines.append(readiness_point(self.farm, a.readiness, now))
            outcomes.append(BlockOutcome(a.block.id, a.readiness, a.previous, lot_change))
            if a.previous is not a.readiness.state:
                log.info(
                    "block %s: %s -> %s (%s)",
                    a.block.id,
                    a.previous.value if a.previous else "new",
                    a.readiness.state.value,
                    "; ".join(a.readiness.reasons),
                )
        return outcomes, lines

    def _people_changes(self) -> list[str]:
        """``listing`` points for lot changes made through the API since the last run.

        Points are keyed by lot and time, so mirroring an event twice (after a restart)
        overwrites itself.
        """
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    lot_event,
                    lot.c.farm,
                    lot.c.block,
                    lot.c.state,
                    lot.c.grade,
                    lot.c.quantity_kg_estimated,
                    lot.c.quantity_kg_corrected,
                )
                .join(lot, lot.c.lot == lot_event.c.lot)
                .where(lot_event.c.id > self._lot_events_seen, lot.c.farm == self.farm)
                .order_by(lot_event.c.id)
            ).all()
        lines: list[str] = []
        for r in rows:
            self._lot_events_seen = max(self._lot_events_seen, r.id)
            if r.actor == "control":
                continue  # the engine wrote its own events when it made them
            quantity = r.quantity_kg_corrected
            if quantity is None:
                quantity = r.quantity_kg_estimated
            lines.append(
                encode_point(
                    "listing",
                    {"farm": r.farm, "block": r.block, "lot": r.lot},
                    {
                        "state": _EVENT_STATE.get(r.event, r.state),
                        "quantity_kg": float(quantity),
                        "grade": r.grade,
                        "event": r.event,
                    },
                    to_ns(r.ts),
                )
            )
        return lines

    def _store_state(self, a: _Assessment, now: datetime) -> None:
        r = a.readiness
        values: dict[str, Any] = {
            "state": r.state.value,
            "ready_on": a.ready_on,
            "forecast_date": r.forecast.date,
            "forecast_earliest": r.forecast.earliest,
            "forecast_latest": r.forecast.latest,
            "forecast_reason": r.forecast.reason,
            "evidence": r.evidence(),
            "evaluated_at": now,
        }
        key = (
            block_state.c.farm == self.farm,
            block_state.c.block == a.block.id,
            block_state.c.season == a.block.bloom_date,
        )
        with self.engine.begin() as conn:
            if a.previous is None:
                conn.execute(
                    block_state.insert().values(
                        farm=self.farm,
                        block=a.block.id,
                        season=a.block.bloom_date,
                        state_since=now,
                        **values,
                    )
                )
                return
            if a.previous is not r.state:
                values["state_since"] = now
            conn.execute(block_state.update().where(*key).values(**values))

    def _alarm(self, a: _Assessment, now: datetime) -> None:
        r = a.readiness
        block = a.block
        if r.state is ReadinessState.READY:
            self.alarms.raise_alarm(
                type=ALARM_TYPE,
                subject=block.id,
                farm=self.farm,
                block=block.id,
                severity="major",
                message=f"{block.name or block.id} is ready to harvest: " + "; ".join(r.reasons),
                value=round(r.ready_share, 3),
                threshold=self.config.min_ready_share,
                details=r.evidence(),
                now=now,
            )
        elif r.state is ReadinessState.READY_SOON and r.forecast.date is not None:
            self.alarms.raise_alarm(
                type=ALARM_TYPE,
                subject=block.id,
                farm=self.farm,
                block=block.id,
                severity="minor",
                message=f"{block.name or block.id} ready soon: forecast {r.forecast.date} "
                f"(between {r.forecast.earliest} and {r.forecast.latest})",
                value=r.forecast.days,
                details=r.evidence(),
                now=now,
            )
        elif r.state is ReadinessState.NOT_READY:
            self.alarms.clear_active(
                ALARM_TYPE, block.id, reason="; ".join(r.reasons) or "not ready", now=now
            )

    def _lot(self, a: _Assessment, readings: Mapping[str, np.ndarray], now: datetime) -> LotChange:
        r = a.readiness
        block = a.block
        crop = block.crop_profile
        healthy = [readings[n] for n in a.healthy_nodes if n in readings]
        values = np.concatenate(healthy) if healthy else np.empty(0)
        grade = grade_readings(values, (a.thresholds.ideal_low, a.thresholds.ideal_high))
        if r.state is ReadinessState.READY:
            share = r.ready_share
            start = a.ready_on or r.as_of
        else:
            # Listed ahead of readiness: the lot is what "ready" will mean on the day.
            share = max(r.ready_share, self.config.min_ready_share)
            start = r.forecast.date or r.as_of
        quantity = estimated_quantity_kg(block, share)
        window = harvest_window(crop.key, start)
        farm_name = self.orchard.farm.name or self.farm
        evidence = r.evidence() | {
            "grade_readings": grade.readings,
            "grade_in_band_share": round(grade.in_band_share, 3),
            "ideal_band": [a.thresholds.ideal_low, a.thresholds.ideal_high],
            "maturity_index": crop.maturity_index,
            "maturity_unit": crop.maturity_unit,
        }
        draft = LotDraft(
            lot=lot_id(block.id, block.bloom_date, WINDOW_NO),
            farm=self.farm,
            block=block.id,
            season=block.bloom_date,
            window_no=WINDOW_NO,
            crop=crop.key,
            variety=block.variety,
            quantity_kg=quantity,
            grade=grade.grade,
            in_band_share=grade.in_band_share,
            window_start=window[0],
            window_end=window[1],
            title=listing_title(block, farm_name, grade.grade),
            description=listing_description(
                block, crop, farm_name, quantity, grade, window, share, r.gdd_cum
            ),
            evidence=evidence,
        )
        return upsert_lot(self.engine, draft, now)

    def _emit(self, change: LotChange) -> None:
        if self.sink is None:
            return
        try:
            self.sink(change)
        except Exception:
            log.exception("listing event %s could not be queued", change.idempotency_key)

    # --- changes by people ---------------------------------------------------------

    def mark_harvested(
        self, block_id: str, who: str, *, now: datetime | None = None
    ) -> Mapping[str, Any]:
        return mark_harvested(self.engine, self.orchard, block_id, who, alarms=self.alarms, now=now)


def mark_harvested(
    engine: Engine,
    orchard: Orchard,
    block_id: str,
    who: str,
    *,
    alarms: Alarms | None = None,
    now: datetime | None = None,
) -> Mapping[str, Any]:
    """The grower says the block is picked: state ``harvested`` for the season, alarm cleared.

    The block's lot stays as it is: the shop still sells what was picked.
    """
    block = orchard.block(block_id)
    now = now or utcnow()
    farm = orchard.farm.id
    key = (
        block_state.c.farm == farm,
        block_state.c.block == block.id,
        block_state.c.season == block.bloom_date,
    )
    with engine.begin() as conn:
        row = conn.execute(sa.select(block_state).where(*key)).first()
        values = {
            "state": ReadinessState.HARVESTED.value,
            "state_since": now,
            "harvested_at": now,
            "harvested_by": who,
        }
        if row is None:
            conn.execute(
                block_state.insert().values(
                    farm=farm,
                    block=block.id,
                    season=block.bloom_date,
                    evaluated_at=now,
                    evidence={"state": "harvested", "reasons": [f"marked harvested by {who}"]},
                    **values,
                )
            )
        elif row.state != ReadinessState.HARVESTED.value:
            conn.execute(block_state.update().where(*key).values(**values))
        result = conn.execute(sa.select(block_state).where(*key)).one()._mapping
    (alarms or Alarms(engine)).clear_active(
        ALARM_TYPE, block.id, who, reason=f"harvested (marked by {who})", now=now
    )
    return dict(result)


def block_states(engine: Engine, farm: str | None = None) -> list[dict[str, Any]]:
    """Every block's readiness state and evidence (what the API serves)."""
    query = sa.select(block_state).order_by(block_state.c.block, block_state.c.season)
    if farm is not None:
        query = query.where(block_state.c.farm == farm)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def readiness_point(farm: str, r: Readiness, ts: datetime) -> str:
    """The ``readiness`` measurement point (orchard/schema.py)."""
    f = r.forecast
    return encode_point(
        "readiness",
        {"farm": farm, "block": r.block},
        {
            "state": r.state.value,
            "ready_share": float(r.ready_share),
            "gdd_cum": float(round(r.gdd_cum, 2)),
            "gdd_target": float(r.gdd_target),
            "forecast_days": None if f.days is None else float(round(f.days, 2)),
            "forecast_low_days": None if f.low_days is None else float(round(f.low_days, 2)),
            "forecast_high_days": None if f.high_days is None else float(round(f.high_days, 2)),
            "forecast_date": f.date.isoformat() if f.date else None,
        },
        to_ns(ts),
    )
