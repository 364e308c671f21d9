"""Product lots (listings) and their lifecycle: draft → published → sold out / withdrawn.

The control loop creates and updates lots from the readiness evaluation
(:func:`upsert_lot`); a shop operator publishes, withdraws or marks them sold out and a
grower corrects the quantity, through the functions below, which the API calls. Every
change bumps the lot's version, is recorded in ``harvest_lot_event`` and is handed to
an :class:`EventSink` (the shop webhook outbox) with an idempotency key that is stable
for that change, so a redelivery is recognisable as the same event.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from control.harvest.tables import LOT_OPEN_STATES, lot, lot_event
from control.store import utcnow
from orchard.lineprotocol import encode_point, to_ns

log = logging.getLogger(__name__)

LotState = Literal["draft", "published", "sold_out", "withdrawn"]
LotEventKind = Literal["created", "updated", "published", "withdrawn", "sold_out"]

# Quantity changes smaller than this are re-estimation noise, not news for the shop.
MATERIAL_QUANTITY_CHANGE = 0.05


class ListingError(Exception):
    """Base of listing failures the API turns into 4xx answers."""


class LotNotFound(ListingError):
    pass


class LotStateError(ListingError):
    """The change is not allowed in the lot's current state."""


class Lot(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: int
    lot: str
    farm: str
    block: str
    season: date
    window_no: int
    crop: str
    variety: str
    state: LotState
    quantity_kg_estimated: float
    quantity_kg_corrected: float | None
    corrected_by: str | None
    grade: str
    in_band_share: float
    window_start: date
    window_end: date
    title: str
    description: str
    evidence: dict[str, Any]
    version: int
    created_at: datetime
    updated_at: datetime
    published_at: datetime | None
    closed_at: datetime | None

    @property
    def quantity_kg(self) -> float:
        """What the shop may sell: the grower's correction wins over the estimate."""
        if self.quantity_kg_corrected is not None:
            return self.quantity_kg_corrected
        return self.quantity_kg_estimated

    def public(self) -> dict[str, Any]:
        """The lot as a shop sees it (webhook body, API answer)."""
        return {
            "lot": self.lot,
            "farm": self.farm,
            "block": self.block,
            "season": self.season.isoformat(),
            "crop": self.crop,
            "variety": self.variety,
            "state": self.state,
            "quantity_kg": self.quantity_kg,
            "quantity_kg_estimated": self.quantity_kg_estimated,
            "quantity_source": "grower" if self.quantity_kg_corrected is not None else "estimate",
            "grade": self.grade,
            "in_band_share": round(self.in_band_share, 3),
            "harvest_window": {
                "start": self.window_start.isoformat(),
                "end": self.window_end.isoformat(),
            },
            "title": self.title,
            "description": self.description,
            "evidence": self.evidence,
            "version": self.version,
            "updated_at": self.updated_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class LotChange:
    lot: Lot
    event: LotEventKind | None  # None: nothing the shop needs to hear about

    @property
    def idempotency_key(self) -> str:
        return f"listing:{self.lot.farm}:{self.lot.lot}:v{self.lot.version}:{self.event}"

    def payload(self, now: datetime | None = None) -> dict[str, Any]:
        return {
            "type": f"listing.{self.event}",
            "id": self.idempotency_key,
            "occurred_at": (now or self.lot.updated_at).isoformat(),
            "listing": self.lot.public(),
        }


EventSink = Callable[[LotChange], None]
"""Receives every change with an event; the control service enqueues it as a webhook."""


@dataclass(frozen=True, slots=True)
class LotDraft:
    """What an evaluation knows about the lot of a block's harvest window."""

    lot: str
    farm: str
    block: str
    season: date
    window_no: int
    crop: str
    variety: str
    quantity_kg: float
    grade: str
    in_band_share: float
    window_start: date
    window_end: date
    title: str
    description: str
    evidence: dict[str, Any]


def lot_id(block: str, season: date, window_no: int) -> str:
    return f"{block}-{season.year}-w{window_no}"


def _row(row: Any) -> Lot:
    return Lot.model_validate(dict(row._mapping))


def _record(
    conn: Connection, current: Lot, event: str, actor: str, now: datetime, detail: Any
) -> None:
    conn.execute(
        lot_event.insert().values(
            lot=current.lot,
            ts=now,
            event=event,
            actor=actor,
            version=current.version,
            detail=detail,
        )
    )


def _material(current: Lot, draft: LotDraft) -> bool:
    if current.grade != draft.grade:
        return True
    if (current.window_start, current.window_end) != (draft.window_start, draft.window_end):
        return True
    if current.evidence.get("state") != draft.evidence.get("state"):
        return True
    base = max(current.quantity_kg_estimated, 1.0)
    return abs(draft.quantity_kg - current.quantity_kg_estimated) / base >= MATERIAL_QUANTITY_CHANGE


def upsert_lot(engine: Engine, draft: LotDraft, now: datetime | None = None) -> LotChange:
    """Create the window's lot or update it; never a second lot for the same window.

    A lot that is sold out or withdrawn is left as it is: the shop closed it on purpose.
    """
    now = now or utcnow()
    key = (
        lot.c.farm == draft.farm,
        lot.c.block == draft.block,
        lot.c.season == draft.season,
        lot.c.window_no == draft.window_no,
    )
    for _ in range(3):
        try:
            with engine.begin() as conn:
                row = conn.execute(sa.select(lot).where(*key)).first()
                if row is None:
                    conn.execute(
                        lot.insert().values(
                            lot=draft.lot,
                            farm=draft.farm,
                            block=draft.block,
                            season=draft.season,
                            window_no=draft.window_no,
                            crop=draft.crop,
                            variety=draft.variety,
                            state="draft",
                            quantity_kg_estimated=draft.quantity_kg,
                            grade=draft.grade,
                            in_band_share=draft.in_band_share,
                            window_start=draft.window_start,
                            window_end=draft.window_end,
                            title=draft.title,
                            description=draft.description,
                            evidence=draft.evidence,
                            version=1,
                            created_at=now,
                            updated_at=now,
                        )
                    )
                    created = _row(conn.execute(sa.select(lot).where(*key)).one())
                    _record(conn, created, "created", "control", now, None)
                    return LotChange(created, "created")
                current = _row(row)
                if current.state not in LOT_OPEN_STATES:
                    return LotChange(current, None)
                material = _material(current, draft)
                values: dict[str, Any] = {"evidence": draft.evidence, "updated_at": now}
                if material:
                    values.update(
                        quantity_kg_estimated=draft.quantity_kg,
                        grade=draft.grade,
                        in_band_share=draft.in_band_share,
                        window_start=draft.window_start,
                        window_end=draft.window_end,
                        title=draft.title,
                        description=draft.description,
                        version=current.version + 1,
                    )
                conn.execute(lot.update().where(lot.c.id == current.id).values(**values))
                updated = _row(conn.execute(sa.select(lot).where(lot.c.id == current.id)).one())
                if not material:
                    return LotChange(updated, None)
                _record(
                    conn,
                    updated,
                    "updated",
                    "control",
                    now,
                    {"quantity_kg_estimated": draft.quantity_kg, "grade": draft.grade},
                )
                return LotChange(updated, "updated")
        except IntegrityError:
            # Another writer created the window's lot between our read and insert.
            continue
    raise ListingError(f"could not store lot {draft.lot}: concurrent writers")


# --- changes by people (through the API) ----------------------------------------------

_TRANSITIONS: dict[LotEventKind, tuple[tuple[str, ...], LotState]] = {
    "published": (("draft",), "published"),
    "sold_out": (("published",), "sold_out"),
    "withdrawn": (("draft", "published"), "withdrawn"),
}


def get_lot(engine: Engine, lot_name: str) -> Lot:
    with engine.connect() as conn:
        row = conn.execute(sa.select(lot).where(lot.c.lot == lot_name)).first()
    if row is None:
        raise LotNotFound(f"no lot {lot_name!r}")
    return _row(row)


def list_lots(
    engine: Engine,
    *,
    farm: str | None = None,
    block: str | None = None,
    state: str | None = None,
    limit: int = 100,
) -> list[Lot]:
    conditions: list[Any] = []
    if farm is not None:
        conditions.append(lot.c.farm == farm)
    if block is not None:
        conditions.append(lot.c.block == block)
    if state is not None:
        conditions.append(lot.c.state == state)
    query = sa.select(lot).where(*conditions).order_by(lot.c.created_at.desc(), lot.c.id.desc())
    with engine.connect() as conn:
        return [_row(r) for r in conn.execute(query.limit(limit))]


def lot_history(engine: Engine, lot_name: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(lot_event).where(lot_event.c.lot == lot_name).order_by(lot_event.c.id)
        )
        return [dict(r._mapping) for r in rows]


def _transition(
    engine: Engine,
    lot_name: str,
    event: LotEventKind,
    who: str,
    sink: EventSink | None,
    now: datetime | None,
) -> LotChange:
    allowed, target = _TRANSITIONS[event]
    now = now or utcnow()
    with engine.begin() as conn:
        row = conn.execute(sa.select(lot).where(lot.c.lot == lot_name)).first()
        if row is None:
            raise LotNotFound(f"no lot {lot_name!r}")
        current = _row(row)
        if current.state == target:
            return LotChange(current, None)  # repeating a change is harmless
        if current.state not in allowed:
            raise LotStateError(
                f"lot {lot_name} is {current.state}; it can be {event.replace('_', ' ')} "
                f"only when {' or '.join(allowed)}"
            )
        values: dict[str, Any] = {
            "state": target,
            "version": current.version + 1,
            "updated_at": now,
        }
        if target == "published":
            values["published_at"] = now
        else:
            values["closed_at"] = now
        # The version check makes a concurrent change lose cleanly instead of overwriting.
        done = conn.execute(
            lot.update()
            .where(lot.c.id == current.id, lot.c.version == current.version)
            .values(**values)
        ).rowcount
        if not done:
            raise LotStateError(f"lot {lot_name} changed meanwhile; read it again")
        changed = _row(conn.execute(sa.select(lot).where(lot.c.id == current.id)).one())
        _record(conn, changed, event, who, now, None)
    change = LotChange(changed, event)
    _deliver(sink, change)
    return change


def publish_lot(
    engine: Engine,
    lot_name: str,
    who: str,
    *,
    sink: EventSink | None = None,
    now: datetime | None = None,
) -> LotChange:
    return _transition(engine, lot_name, "published", who, sink, now)


def withdraw_lot(
    engine: Engine,
    lot_name: str,
    who: str,
    *,
    sink: EventSink | None = None,
    now: datetime | None = None,
) -> LotChange:
    return _transition(engine, lot_name, "withdrawn", who, sink, now)


def mark_sold_out(
    engine: Engine,
    lot_name: str,
    who: str,
    *,
    sink: EventSink | None = None,
    now: datetime | None = None,
) -> LotChange:
    return _transition(engine, lot_name, "sold_out", who, sink, now)


def correct_quantity(
    engine: Engine,
    lot_name: str,
    quantity_kg: float,
    who: str,
    *,
    sink: EventSink | None = None,
    now: datetime | None = None,
) -> LotChange:
    """The grower's own figure replaces the estimate (re-estimation never overrides it)."""
    if not 0 <= quantity_kg < 10_000_000:
        raise ListingError(f"quantity {quantity_kg} kg is out of range (0 to 10,000,000 kg)")
    now = now or utcnow()
    with engine.begin() as conn:
        row = conn.execute(sa.select(lot).where(lot.c.lot == lot_name)).first()
        if row is None:
            raise LotNotFound(f"no lot {lot_name!r}")
        current = _row(row)
        if current.state not in LOT_OPEN_STATES:
            raise LotStateError(f"lot {lot_name} is {current.state}; its quantity is final")
        conn.execute(
            lot.update()
            .where(lot.c.id == current.id)
            .values(
                quantity_kg_corrected=float(quantity_kg),
                corrected_by=who,
                version=current.version + 1,
                updated_at=now,
            )
        )
        changed = _row(conn.execute(sa.select(lot).where(lot.c.id == current.id)).one())
        _record(
            conn,
            changed,
            "updated",
            who,
            now,
            {"quantity_kg_corrected": quantity_kg, "was": current.quantity_kg},
        )
    change = LotChange(changed, "updated")
    _deliver(sink, change)
    return change


def _deliver(sink: EventSink | None, change: LotChange) -> None:
    if sink is None or change.event is None:
        return
    try:
        sink(change)
    except Exception:
        # The change is stored; a failing outbox must not turn it into an API error.
        log.exception("listing event %s could not be queued", change.idempotency_key)


def listing_point(change: LotChange, ts: datetime | None = None) -> str:
    """The ``listing`` measurement point of a change (orchard/schema.py)."""
    current = change.lot
    return encode_point(
        "listing",
        {"farm": current.farm, "block": current.block, "lot": current.lot},
        {
            "state": current.state,
            "quantity_kg": float(current.quantity_kg),
            "grade": current.grade,
            "event": change.event or "evaluated",
        },
        to_ns(ts or current.updated_at),
    )
