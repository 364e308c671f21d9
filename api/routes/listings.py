"""Product listings (harvest lots) for the shop: list, read, change state and quantity."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.engine import Engine

from api.deps import (
    EngineDep,
    ListingsWriter,
    OrchardDep,
    QuantityWriter,
    Reader,
    SettingsDep,
)
from api.schemas import ERRORS, ErrorBody
from api.settings import ApiSettings
from control.harvest.lots import (
    EventSink,
    ListingError,
    Lot,
    LotNotFound,
    correct_quantity,
    get_lot,
    list_lots,
    lot_history,
    mark_sold_out,
    publish_lot,
    withdraw_lot,
)
from control.harvest.shop import shop_sink

router = APIRouter(prefix="/api/v1", tags=["listings"], responses=ERRORS)

LotName = Annotated[
    str, Path(pattern=r"^[a-z0-9][a-z0-9_-]{0,159}$", examples=["apple-east-2026-w1"])
]
LISTING_EXAMPLE = {
    "lot": "apple-east-2026-w1",
    "farm": "sunny-hill",
    "block": "apple-east",
    "state": "published",
    "quantity_kg": 24000.0,
    "quantity_source": "estimate",
    "grade": "A",
    "harvest_window": {"start": "2026-09-10", "end": "2026-09-24"},
    "version": 3,
}


class ListingDetail(BaseModel):
    listing: dict[str, Any] = Field(examples=[LISTING_EXAMPLE])
    history: list[dict[str, Any]]


class StateChange(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"state": "published"}]}
    )
    state: Literal["published", "withdrawn", "sold_out"]


class QuantityChange(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"quantity_kg": 21500}]}
    )
    quantity_kg: float = Field(ge=0, lt=10_000_000, allow_inf_nan=False)


def _sink(engine: Engine, settings: ApiSettings) -> EventSink | None:
    # Enqueued in control's outbox; control's dispatcher delivers and retries.
    return shop_sink(engine, settings.harvest, base=settings.webhook)


def _detail(engine: Engine, lot: Lot) -> ListingDetail:
    return ListingDetail(listing=lot.public(), history=lot_history(engine, lot.lot))


@router.get(
    "/listings",
    summary="Listings, newest first",
    responses={200: {"content": {"application/json": {"example": [LISTING_EXAMPLE]}}}},
)
def listings(
    _: Reader,
    engine: EngineDep,
    orchard: OrchardDep,
    block: Annotated[str | None, Query(pattern=r"^[a-z0-9](?:[a-z0-9_-]{0,30}[a-z0-9])?$")] = None,
    state: Annotated[Literal["draft", "published", "sold_out", "withdrawn"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    lots = list_lots(engine, farm=orchard.farm.id, block=block, state=state, limit=limit)
    return [lot.public() for lot in lots]


@router.get(
    "/listings/{lot}", summary="One listing with its history", responses={404: {"model": ErrorBody}}
)
def listing(lot: LotName, _: Reader, engine: EngineDep) -> ListingDetail:
    return _detail(engine, get_lot(engine, lot))


@router.post(
    "/listings/{lot}/state",
    summary="Publish, withdraw or mark sold out (draft → published → sold out / withdrawn)",
    responses={
        404: {"model": ErrorBody},
        409: {"model": ErrorBody, "description": "Not allowed from the current state"},
    },
)
def listing_state(
    lot: LotName,
    body: StateChange,
    principal: ListingsWriter,
    engine: EngineDep,
    settings: SettingsDep,
) -> ListingDetail:
    change = {"published": publish_lot, "withdrawn": withdraw_lot, "sold_out": mark_sold_out}[
        body.state
    ]
    result = change(engine, lot, principal.name, sink=_sink(engine, settings))
    return _detail(engine, result.lot)


@router.patch(
    "/listings/{lot}/quantity",
    summary="Correct the quantity (the grower's figure replaces the estimate)",
    responses={
        404: {"model": ErrorBody},
        409: {"model": ErrorBody, "description": "The lot is closed"},
    },
)
def listing_quantity(
    lot: LotName,
    body: QuantityChange,
    principal: QuantityWriter,
    engine: EngineDep,
    settings: SettingsDep,
) -> ListingDetail:
    result = correct_quantity(
        engine, lot, body.quantity_kg, principal.name, sink=_sink(engine, settings)
    )
    return _detail(engine, result.lot)


async def _listing_error(_: Request, exc: Exception) -> JSONResponse:
    status = 404 if isinstance(exc, LotNotFound) else 409
    return JSONResponse({"detail": str(exc)}, status_code=status)


exception_handlers = {ListingError: _listing_error}
