"""Irrigation: decisions with their reasons, valve commands with their lifecycle.

Read straight from control's tables (``control.store``); a manual command is added
through control's own command function when it is available, so the lifecycle has
one owner.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from fastapi import APIRouter, HTTPException, Path, Query
from pydantic import BaseModel

from api.deps import EngineDep, OrchardDep, Reader
from api.queries import utc
from api.routes.layout import BlockId, find_block
from api.schemas import ERRORS, NOT_FOUND, ErrorBody
from control.store import COMMAND_STATES, irrigation_decision, valve_command

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


class Command(BaseModel):
    command_id: str
    farm: str
    block: str
    node: str
    valve: str
    action: str
    duration_s: int
    depth_mm: float | None
    state: CommandState
    attempts: int
    max_attempts: int
    issued_at: datetime
    expires_at: datetime
    sent_at: datetime | None
    acknowledged_at: datetime | None
    completed_at: datetime | None
    finished_at: datetime | None
    reason: str | None
    error: str | None
    decision_id: int | None
    created_by: str
    created_at: datetime
    updated_at: datetime


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
    state: Annotated[CommandState | None, Query()] = None,
    since: Since = None,
    limit: Limit = 100,
) -> list[Command]:
    t = valve_command
    q = sa.select(t)
    if block is not None:
        q = q.where(t.c.block == block)
    if state is not None:
        q = q.where(t.c.state == state)
    if since is not None:
        q = q.where(t.c.created_at >= utc(since))
    with engine.connect() as conn:
        rows = conn.execute(q.order_by(t.c.created_at.desc()).limit(limit)).all()
    return [Command.model_validate(dict(r._mapping)) for r in rows]


@router.get(
    "/irrigation/commands/{command_id}",
    summary="One valve command",
    responses={404: {"model": ErrorBody}},
)
def command(
    command_id: Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{8,64}$")],
    _: Reader,
    engine: EngineDep,
) -> Command:
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(valve_command).where(valve_command.c.command_id == command_id)
        ).first()
    if row is None:
        raise HTTPException(404, f"no command {command_id!r}")
    return Command.model_validate(dict(row._mapping))
