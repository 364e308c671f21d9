"""Thresholds, alarms, readiness and the webhook delivery log (over ``control/``)."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from api.deps import (
    AlarmsWriter,
    BacktestRunner,
    EngineDep,
    HarvestWriter,
    InfluxDep,
    OrchardDep,
    Reader,
    SettingsDep,
    ThresholdsWriter,
)
from api.queries import QueryLimitError, time_range, utc
from api.routes.irrigation import control_now
from api.routes.layout import BlockId, find_block
from api.schemas import ERRORS, NOT_FOUND, ErrorBody
from api.settings import ApiSettings
from control.alarms import Alarm, AlarmEvent, AlarmNotFound, Alarms
from control.backtest import backtest
from control.harvest.engine import block_states, mark_harvested
from control.thresholds import (
    SPECS,
    AuditEntry,
    EffectiveThresholds,
    Thresholds,
    ThresholdValidationError,
)
from control.webhooks import Attempt, Delivery, attempts_of, list_deliveries
from orchard.ids import check_id
from orchard.influx import quote_ident, quote_literal

router = APIRouter(prefix="/api/v1", responses=ERRORS)

# --- thresholds ---------------------------------------------------------------------


class ThresholdChange(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "values": {"soil_trigger": 0.2, "max_run_min": None},
                    "reason": "young trees need less stress",
                }
            ]
        },
    )
    values: dict[Annotated[str, Field(max_length=64)], float | None] = Field(
        description="Threshold key -> new override, or null to go back to the default. Keys: "
        + ", ".join(f"{k} ({s.allowed})" for k, s in SPECS.items())
    )
    reason: str = Field(default="", max_length=500, description="Why (kept in the audit log)")


class ThresholdProblemOut(BaseModel):
    key: str
    message: str
    allowed: str | None


class ThresholdError(BaseModel):
    detail: str = Field(
        examples=["soil_trigger = 0.9 is not allowed: must be a number from 0.02–0.6 m³/m³"]
    )
    problems: list[ThresholdProblemOut]


def _thresholds(engine: Any, orchard: Any) -> Thresholds:
    return Thresholds(engine, orchard)


@router.get(
    "/blocks/{block_id}/thresholds",
    tags=["thresholds"],
    summary="Effective thresholds of a block, each with its source (default or override)",
    responses=NOT_FOUND,
)
def thresholds_get(
    block_id: BlockId,
    _: Reader,
    engine: EngineDep,
    orchard: OrchardDep,
    on: Annotated[date | None, Query(description="Day (crop stage); default today")] = None,
) -> EffectiveThresholds:
    find_block(orchard, block_id)
    return _thresholds(engine, orchard).effective(block_id, on)


@router.patch(
    "/blocks/{block_id}/thresholds",
    tags=["thresholds"],
    summary="Change overrides (all or none); every change is audited",
    responses={
        **NOT_FOUND,
        422: {"model": ThresholdError, "description": "What is wrong and the allowed range"},
    },
)
def thresholds_patch(
    block_id: BlockId,
    body: ThresholdChange,
    principal: ThresholdsWriter,
    engine: EngineDep,
    orchard: OrchardDep,
) -> EffectiveThresholds:
    find_block(orchard, block_id)
    try:
        return _thresholds(engine, orchard).set_overrides(
            block_id, body.values, who=principal.name, reason=body.reason
        )
    except ThresholdValidationError as exc:
        raise _ThresholdRefused(exc) from None


class _ThresholdRefused(HTTPException):
    def __init__(self, exc: ThresholdValidationError) -> None:
        super().__init__(422, str(exc))
        self.problems = exc.to_json()


async def _threshold_refused(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, _ThresholdRefused)
    return JSONResponse({"detail": exc.detail, "problems": exc.problems}, status_code=422)


exception_handlers = {_ThresholdRefused: _threshold_refused}


@router.get(
    "/blocks/{block_id}/thresholds/audit",
    tags=["thresholds"],
    summary="Who changed which threshold of a block, when, old -> new, why (newest first)",
    responses=NOT_FOUND,
)
def thresholds_audit(
    block_id: BlockId,
    _: Reader,
    engine: EngineDep,
    orchard: OrchardDep,
    key: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[AuditEntry]:
    find_block(orchard, block_id)
    return _thresholds(engine, orchard).audit(block_id, key=key, limit=limit)


@router.get(
    "/thresholds/audit",
    tags=["thresholds"],
    summary="Threshold changes of every block (newest first)",
)
def thresholds_audit_all(
    _: Reader,
    engine: EngineDep,
    orchard: OrchardDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[AuditEntry]:
    return _thresholds(engine, orchard).audit(None, limit=limit)


# --- alarms ---------------------------------------------------------------------------

AlarmType = Annotated[str, Query(pattern=r"^[a-z0-9_]{1,64}$", description="Alarm type")]


class AlarmDetail(BaseModel):
    alarm: Alarm
    history: list[AlarmEvent]


class AckBody(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"note": "on it"}]})
    note: str | None = Field(default=None, max_length=500)


class ClearBody(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"reason": "sensor replaced"}]}
    )
    reason: str = Field(default="", max_length=500)


@router.get("/alarms", tags=["alarms"], summary="Alarms, newest first, filtered")
def alarms_list(
    _: Reader,
    engine: EngineDep,
    state: Annotated[
        Literal[
            "active",
            "cleared",
            "unack",
            "ack",
            "any",
            "active_unack",
            "active_ack",
            "cleared_unack",
            "cleared_ack",
        ],
        Query(description="Lifecycle filter"),
    ] = "any",
    severity: Annotated[
        Literal["indeterminate", "warning", "minor", "major", "critical"] | None, Query()
    ] = None,
    min_severity: Annotated[
        Literal["indeterminate", "warning", "minor", "major", "critical"] | None, Query()
    ] = None,
    type: AlarmType | None = None,
    block: Annotated[str | None, Query(pattern=r"^[a-z0-9](?:[a-z0-9_-]{0,30}[a-z0-9])?$")] = None,
    subject: Annotated[str | None, Query(max_length=128)] = None,
    since: Annotated[datetime | None, Query(description="Alarms active at or after")] = None,
    until: Annotated[datetime | None, Query(description="Alarms started at or before")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> list[Alarm]:
    return Alarms(engine).list(
        state=state,
        severity=severity,
        min_severity=min_severity,
        type=type,
        block=block,
        subject=subject,
        since=utc(since) if since else None,
        until=utc(until) if until else None,
        limit=limit,
        offset=offset,
    )


def _alarm_detail(alarms: Alarms, alarm_id: int) -> AlarmDetail:
    try:
        return AlarmDetail(alarm=alarms.get(alarm_id), history=alarms.history(alarm_id))
    except AlarmNotFound as exc:
        raise HTTPException(404, str(exc)) from None


AlarmId = Annotated[int, Path(ge=1, le=2**62)]


@router.get(
    "/alarms/{alarm_id}",
    tags=["alarms"],
    summary="One alarm with its history",
    responses={404: {"model": ErrorBody}},
)
def alarm_get(alarm_id: AlarmId, _: Reader, engine: EngineDep) -> AlarmDetail:
    return _alarm_detail(Alarms(engine), alarm_id)


@router.post(
    "/alarms/{alarm_id}/ack",
    tags=["alarms"],
    summary="Acknowledge an alarm (repeating it changes nothing)",
    responses={404: {"model": ErrorBody}},
)
def alarm_ack(
    alarm_id: AlarmId, principal: AlarmsWriter, engine: EngineDep, body: AckBody | None = None
) -> AlarmDetail:
    alarms = Alarms(engine)
    try:
        alarms.acknowledge(alarm_id, principal.name, note=body.note if body else None)
    except AlarmNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    return _alarm_detail(alarms, alarm_id)


@router.post(
    "/alarms/{alarm_id}/clear",
    tags=["alarms"],
    summary="Clear an active alarm by hand (control raises it again if the cause persists)",
    responses={404: {"model": ErrorBody}},
)
def alarm_clear(
    alarm_id: AlarmId, principal: AlarmsWriter, engine: EngineDep, body: ClearBody | None = None
) -> AlarmDetail:
    alarms = Alarms(engine)
    try:
        alarms.clear(alarm_id, principal.name, reason=body.reason if body else "")
    except AlarmNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    return _alarm_detail(alarms, alarm_id)


# --- readiness and the overview --------------------------------------------------------


@router.get("/readiness", tags=["harvest"], summary="Harvest readiness of every block")
def readiness(_: Reader, engine: EngineDep, orchard: OrchardDep) -> list[dict[str, Any]]:
    return block_states(engine, orchard.farm.id)


READINESS_EXAMPLE = {
    "farm": "sunny-hill",
    "block": "apple-east",
    "season": "2026-04-12",
    "state": "harvested",
    "state_since": "2026-09-14T07:30:00Z",
    "ready_on": "2026-09-08",
    "harvested_at": "2026-09-14T07:30:00Z",
    "harvested_by": "grower-ana",
    "forecast_date": None,
    "evidence": {"state": "ready", "ready_nodes": 4, "healthy_nodes": 5},
}


def _current_season(engine: Any, orchard: Any, block_id: str) -> dict[str, Any] | None:
    block = find_block(orchard, block_id)
    rows = [
        r
        for r in block_states(engine, orchard.farm.id)
        if r["block"] == block.id and r["season"] == block.bloom_date
    ]
    return rows[0] if rows else None


@router.get(
    "/blocks/{block_id}/readiness",
    tags=["harvest"],
    summary="Harvest readiness of one block this season (null before its first evaluation)",
    responses={**NOT_FOUND, 200: {"content": {"application/json": {"example": READINESS_EXAMPLE}}}},
)
def block_readiness(
    block_id: BlockId, _: Reader, engine: EngineDep, orchard: OrchardDep
) -> dict[str, Any] | None:
    return _current_season(engine, orchard, block_id)


@router.post(
    "/blocks/{block_id}/readiness/harvested",
    tags=["harvest"],
    summary="Mark the block harvested for this season (the grower's word; repeating it is harmless)",
    description=(
        "Sets the block's readiness state to `harvested` for the season (its bloom date), "
        "which is final: later evaluations keep it. The block's `harvest_readiness` alarm is "
        "cleared. Its lot is not touched: the shop still sells what was picked. Allowed "
        "whatever the current state (fruit may be picked early before a storm). Marking an "
        "already harvested block changes nothing and answers with who marked it first."
    ),
    responses={**NOT_FOUND, 200: {"content": {"application/json": {"example": READINESS_EXAMPLE}}}},
)
async def block_mark_harvested(
    block_id: BlockId,
    principal: HarvestWriter,
    engine: EngineDep,
    orchard: OrchardDep,
    influx: InfluxDep,
    settings: SettingsDep,
) -> dict[str, Any]:
    find_block(orchard, block_id)
    # The control service's clock (the data clock in an accelerated demo): the harvest and
    # the alarm's clearing must sit on the same time line as the evaluations and the raise.
    now = await control_now(settings, influx, orchard.farm.id, wall_fallback=True)
    row = await run_in_threadpool(
        lambda: mark_harvested(engine, orchard, block_id, principal.name, now=now)
    )
    return dict(row)


class BlockOverview(BaseModel):
    block: str
    name: str
    crop: str
    state: dict[str, Any] | None = Field(
        description="Newest control tick of the block (block_state measurement)"
    )
    open_alarms: int
    worst_severity: str | None
    readiness: str | None
    readiness_forecast: date | None


@router.get(
    "/overview",
    tags=["farms, blocks, nodes"],
    summary="Every block at a glance: current state, open alarms, readiness",
)
async def overview(
    _: Reader, engine: EngineDep, orchard: OrchardDep, influx: InfluxDep
) -> list[BlockOverview]:
    farm = check_id(orchard.farm.id, "farm id")
    q = (
        f"SELECT * FROM {quote_ident('block_state')} WHERE {quote_ident('farm')} = "
        f"{quote_literal(farm)} GROUP BY {quote_ident('block')} ORDER BY time DESC LIMIT 1"
    )
    results = await influx.query(q)
    states = {s.tags.get("block"): s.rows()[0] for s in (results[0] if results else []) if s.values}
    active = await run_in_threadpool(Alarms(engine).active, farm=farm)
    ready = await run_in_threadpool(block_states, engine, farm)
    latest_ready: dict[str, dict[str, Any]] = {}
    for r in ready:  # ordered by season: the last one is the current season
        latest_ready[r["block"]] = r
    out = []
    from control.alarms import severity_rank

    for b in orchard.blocks:
        mine = [a for a in active if a.block == b.id]
        worst = max(mine, key=lambda a: severity_rank(a.severity)).severity if mine else None
        ready_row = latest_ready.get(b.id)
        out.append(
            BlockOverview(
                block=b.id,
                name=b.name,
                crop=b.crop,
                state=states.get(b.id),
                open_alarms=len(mine),
                worst_severity=worst,
                readiness=ready_row["state"] if ready_row else None,
                readiness_forecast=ready_row["forecast_date"] if ready_row else None,
            )
        )
    return out


# --- webhook delivery log -------------------------------------------------------------


@router.get(
    "/webhooks/deliveries",
    tags=["webhooks"],
    summary="Outgoing webhook messages (alarms, listings), newest first",
)
def webhook_deliveries(
    _: Reader,
    engine: EngineDep,
    state: Annotated[Literal["pending", "delivered", "failed"] | None, Query()] = None,
    event_type: Annotated[str | None, Query(pattern=r"^[a-z0-9_.]{1,64}$")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[Delivery]:
    return list_deliveries(engine, state=state, event_type=event_type, limit=limit)


@router.get(
    "/webhooks/deliveries/{delivery_id}/attempts",
    tags=["webhooks"],
    summary="Every attempt of one delivery: status code, error, duration",
)
def webhook_attempts(
    delivery_id: Annotated[int, Path(ge=1, le=2**62)], _: Reader, engine: EngineDep
) -> list[Attempt]:
    return attempts_of(engine, delivery_id)


# --- backtest ---------------------------------------------------------------------------


class BacktestIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "overrides": {"soil_trigger": 0.19},
                    "start": "2026-06-01T00:00:00Z",
                    "end": "2026-07-01T00:00:00Z",
                },
                {
                    "overrides": {"heat_c": 34, "max_run_min": None},
                    "start": "2026-06-01T00:00:00Z",
                    "end": "2026-06-15T00:00:00Z",
                    "raw": True,
                },
            ]
        },
    )
    overrides: dict[Annotated[str, Field(max_length=64)], float | None] = Field(
        description="Proposed overrides, as for PATCH .../thresholds (null: back to default)"
    )
    start: datetime | None = Field(default=None, description="Default: 7 days before end")
    end: datetime | None = Field(default=None, description="Default: now")
    step_s: float | None = Field(
        default=None,
        ge=10,
        le=3600,
        description=(
            "Replay step in seconds. Default: the control loop's own step (the raw readings, "
            "same results as live) for periods up to ORCHARD_BACKTEST_RAW_MAX_DAYS (3 days), "
            "5-minute means beyond (answers in seconds; see `step_note` in the answer). "
            "Use `raw` to replay a long period on the raw readings."
        ),
        examples=[300],
    )
    raw: bool = Field(
        default=False,
        description=(
            "Replay the raw readings with the control loop's own step, whatever the period "
            "(what the loop did, minute by minute; slower). Not together with step_s."
        ),
    )


def backtest_step(
    requested: float | None, raw: bool, period: timedelta, settings: ApiSettings
) -> tuple[float, str]:
    """The replay step of a backtest and a sentence an agronomist can read about it."""
    loop = settings.control_step_s
    if raw:
        if requested is not None and requested != loop:
            raise HTTPException(
                422,
                f"raw replays the loop's own {loop:g} s step: send raw or step_s, not both",
            )
        return loop, f"raw readings: the control loop's own {loop:g} s step, as asked"
    if requested is not None:
        if requested == loop:
            return requested, f"raw readings: the control loop's own {loop:g} s step, as asked"
        return requested, f"{requested:g} s means, as asked (the control loop steps {loop:g} s)"
    raw_max = settings.backtest_raw_max_days
    if period <= timedelta(days=raw_max) or settings.backtest_long_step_s <= loop:
        return loop, f"raw readings: the control loop's own {loop:g} s step"
    step = settings.backtest_long_step_s
    return step, (
        f"{step / 60:g}-minute means of the readings (default for periods over {raw_max:g} "
        f"days, to answer in seconds); ask for raw readings to replay what the control loop "
        "saw, minute by minute (slower)"
    )


@router.post(
    "/blocks/{block_id}/backtest",
    tags=["thresholds"],
    summary="Replay a past period with proposed overrides, side by side with the current ones",
    description=(
        "Runs the stored readings through the control loop's own rule engine twice, with the "
        "thresholds in force and with the proposal; returns alarms, irrigation runs and water, "
        "the readiness date when known, and the differences in words. Nothing is stored."
    ),
    responses={
        **NOT_FOUND,
        422: {"model": ThresholdError, "description": "Invalid proposal or period"},
    },
)
def backtest_block(
    block_id: BlockId,
    body: BacktestIn,
    _: BacktestRunner,
    engine: EngineDep,
    orchard: OrchardDep,
    settings: SettingsDep,
    request: Request,
) -> dict[str, Any]:
    find_block(orchard, block_id)
    try:
        start, end = time_range(body.start, body.end, timedelta(days=7))
    except QueryLimitError as exc:
        raise HTTPException(422, str(exc)) from None
    max_days = settings.backtest_max_days
    if end - start > timedelta(days=max_days):
        raise HTTPException(422, f"a backtest covers at most {max_days:g} days")
    step_s, step_note = backtest_step(body.step_s, body.raw, end - start, settings)
    steps = (end - start).total_seconds() / step_s
    if steps > settings.backtest_max_steps:
        raise HTTPException(
            422,
            f"{steps:.0f} replay steps requested, the limit is {settings.backtest_max_steps}: "
            f"use a step of at least {(end - start).total_seconds() / settings.backtest_max_steps:.0f}s",
        )
    try:
        result = backtest(
            request.app.state.sync_influx,
            orchard,
            block_id,
            start,
            end,
            body.overrides,
            engine=engine,
            step_s=step_s,
        )
    except ThresholdValidationError as exc:
        raise _ThresholdRefused(exc) from None
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    answer = result.as_json()
    answer["step_note"] = step_note
    answer["loop_step_s"] = settings.control_step_s
    return answer
