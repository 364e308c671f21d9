"""Irrigation: decisions with their reasons, valve commands with their lifecycle.

Decisions are read from control's table; commands go through ``control.commands``
(the manual command too), so their lifecycle has one owner: the control service
delivers a queued manual command like its own.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from api.deps import EngineDep, InfluxDep, IrrigationWriter, OrchardDep, Reader, SettingsDep
from api.queries import utc
from api.routes.layout import BlockId, find_block
from api.schemas import ERRORS, NOT_FOUND, ErrorBody
from api.settings import ApiSettings
from control.clock import DataClock, WallClock
from control.commands import (
    Command,
    CommandNotFound,
    cancel_command,
    get_command,
    list_commands,
    queue_command,
)
from control.store import COMMAND_STATES, irrigation_decision
from control.thresholds import Thresholds
from orchard.ids import Identifier
from orchard.influx import InfluxClient

router = APIRouter(prefix="/api/v1", tags=["irrigation"], responses=ERRORS)

CommandState = Literal[
    "queued", "sent", "acknowledged", "completed", "timed_out", "failed", "expired", "cancelled"
]
assert set(CommandState.__args__) == set(COMMAND_STATES)  # type: ignore[attr-defined]


class Decision(BaseModel):
    id: int
    farm: str
    block: str
    ts: datetime
    action: str
    code: str
    reason: str
    inputs: dict[str, Any]
    depth_mm: float | None
    duration_s: int | None
    water_m3: float | None
    command_ids: list[str] | None


Since = Annotated[datetime | None, Query(description="From (ISO 8601)")]
Until = Annotated[datetime | None, Query(description="Until, exclusive")]
Limit = Annotated[int, Query(ge=1, le=1000)]


@router.get(
    "/blocks/{block_id}/irrigation/decisions",
    summary="Irrigation decisions of a block (irrigate or skip) with their reasons, newest first",
    responses=NOT_FOUND,
)
def decisions(
    block_id: BlockId,
    _: Reader,
    engine: EngineDep,
    orchard: OrchardDep,
    since: Since = None,
    until: Until = None,
    action: Annotated[Literal["irrigate", "skip", "wait"] | None, Query()] = None,
    limit: Limit = 100,
) -> list[Decision]:
    find_block(orchard, block_id)
    t = irrigation_decision
    q = sa.select(t).where(t.c.block == block_id)
    if since is not None:
        q = q.where(t.c.ts >= utc(since))
    if until is not None:
        q = q.where(t.c.ts < utc(until))
    if action is not None:
        q = q.where(t.c.action == action)
    with engine.connect() as conn:
        rows = conn.execute(q.order_by(t.c.ts.desc(), t.c.id.desc()).limit(limit)).all()
    return [Decision.model_validate(dict(r._mapping)) for r in rows]


@router.get(
    "/irrigation/commands",
    summary="Valve commands with their lifecycle (queued → sent → acknowledged → completed)",
)
def commands(
    _: Reader,
    engine: EngineDep,
    block: Annotated[str | None, Query(pattern=r"^[a-z0-9](?:[a-z0-9_-]{0,30}[a-z0-9])?$")] = None,
    state: Annotated[
        CommandState | Literal["open"] | None,
        Query(description="A lifecycle state, or 'open' (queued, sent or acknowledged)"),
    ] = None,
    limit: Limit = 100,
) -> list[Command]:
    return list_commands(engine, block=block, state=state, limit=limit)


CommandId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{8,64}$")]


@router.get(
    "/irrigation/commands/{command_id}",
    summary="One valve command",
    responses={404: {"model": ErrorBody}},
)
def command(command_id: CommandId, _: Reader, engine: EngineDep) -> Command:
    try:
        return get_command(engine, command_id)
    except CommandNotFound:
        raise HTTPException(404, f"no command {command_id!r}") from None


@router.post(
    "/irrigation/commands/{command_id}/cancel",
    summary="Withdraw a command that its controller has not acknowledged yet",
    responses={404: {"model": ErrorBody}, 409: {"model": ErrorBody}},
)
def command_cancel(
    command_id: CommandId, principal: IrrigationWriter, engine: EngineDep
) -> Command:
    try:
        return cancel_command(engine, command_id, principal.name)
    except CommandNotFound:
        raise HTTPException(404, f"no command {command_id!r}") from None
    except ValueError as exc:
        raise HTTPException(409, str(exc)) from None


class ManualIrrigation(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"valve": "apple-east-v1", "duration_min": 30, "reason": "flush fertiliser"}
            ]
        },
    )
    valve: Identifier
    duration_min: float = Field(
        gt=0,
        le=1440,
        allow_inf_nan=False,
        description="Run time; capped by the block's max_run_min threshold",
    )
    reason: str = Field(default="", max_length=500)


@router.post(
    "/blocks/{block_id}/irrigation/manual",
    status_code=201,
    summary="Open a valve for a while by hand (capped by the block's max_run_min)",
    description=(
        "Stores a valve command as `queued`; the control service delivers it when the "
        "block's controller is online, exactly like its own commands, and records its "
        "lifecycle. The run time may not exceed the block's effective `max_run_min`."
    ),
    responses={
        **NOT_FOUND,
        422: {"model": ErrorBody, "description": "Unknown valve, or run time above the cap"},
    },
)
async def manual_irrigation(
    block_id: BlockId,
    body: ManualIrrigation,
    principal: IrrigationWriter,
    engine: EngineDep,
    orchard: OrchardDep,
    influx: InfluxDep,
    settings: SettingsDep,
) -> Command:
    block = find_block(orchard, block_id)
    if body.valve not in block.valves or block.controller is None:
        valves = ", ".join(block.valves) or "none"
        raise HTTPException(
            422, f"valve {body.valve!r} is not in block {block_id} (valves: {valves})"
        )
    effective = await run_in_threadpool(Thresholds(engine, orchard).effective, block_id)
    cap = effective["max_run_min"]
    if body.duration_min > cap:
        raise HTTPException(
            422,
            f"duration_min {body.duration_min:g} is above this block's max_run_min of {cap:g} "
            f"min: allowed 1 s to {cap:g} min (raise max_run_min to allow longer runs)",
        )
    now = await control_now(settings, influx, orchard.farm.id)
    return await run_in_threadpool(
        lambda: queue_command(
            engine,
            farm=orchard.farm.id,
            block=block_id,
            node=str(block.controller),
            valve=body.valve,
            action="open",
            duration_s=max(1, round(body.duration_min * 60)),
            issued_at=now,
            ttl_s=settings.commands.ttl_s,
            reason=f"manual by {principal.name}" + (f": {body.reason}" if body.reason else ""),
            max_attempts=settings.commands.max_attempts,
            created_by=principal.name,
        )
    )


async def control_now(
    settings: ApiSettings, influx: InfluxClient, farm: str, *, wall_fallback: bool = False
) -> datetime:
    """Now in the control service's clock: commands carry issued/expiry times in it.

    Without telemetry the data clock has not started: 503, or the wall clock when
    ``wall_fallback`` (for records that need a time but no delivery, e.g. a harvest)."""
    if settings.clock_kind == "wall":
        return WallClock().now()
    clock = DataClock(influx, farm)
    await clock.refresh()
    if not clock.ready:
        if wall_fallback:
            return WallClock().now()
        raise HTTPException(503, "no telemetry yet: the demo's data clock has not started")
    return clock.now()
