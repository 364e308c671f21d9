"""Readings: latest per node, aggregated history, CSV export."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import StreamingResponse

from api.deps import DevicesDep, InfluxDep, OrchardDep, Reader, SettingsDep
from api.queries import (
    NUMERIC_FIELDS,
    QueryLimitError,
    Scope,
    check_range,
    export_query,
    history_query,
    latest_query,
    parse_window,
    time_range,
)
from api.routes.layout import BlockId, NodeId, find_block, node_block
from api.schemas import ERRORS, NOT_FOUND, History, HistoryPoint, HistorySeries, LatestReading
from api.settings import ApiSettings
from orchard.influx import InfluxClient
from orchard.schema import MEASUREMENTS

router = APIRouter(prefix="/api/v1", tags=["readings"], responses={**ERRORS, **NOT_FOUND})

FieldName = Literal[
    "temperature", "humidity", "soil_moisture", "maturity", "battery", "rssi", "seq"
]
assert set(FieldName.__args__) == set(NUMERIC_FIELDS)  # type: ignore[attr-defined]

Start = Annotated[
    datetime | None,
    Query(description="Start (ISO 8601; UTC if no offset). Default: 24 h before end"),
]
End = Annotated[datetime | None, Query(description="End, exclusive. Default: now")]
Window = Annotated[
    str,
    Query(
        pattern=r"^[1-9][0-9]{0,6}[smhd]$",
        description="Aggregation window, a number and a unit s, m, h or d",
        examples=["15m"],
    ),
]
Aggregate = Annotated[Literal["mean", "min", "max"], Query(description="Aggregate per window")]


def _range(start: datetime | None, end: datetime | None) -> tuple[datetime, datetime]:
    try:
        return time_range(start, end, timedelta(days=1))
    except QueryLimitError as exc:
        raise HTTPException(422, str(exc)) from None


def _latest_rows(series: list[Any]) -> list[LatestReading]:
    out = []
    for s in series:
        for row in s.rows():
            fields = {k: row.get(k) for k in MEASUREMENTS["telemetry"].fields}
            out.append(
                LatestReading(
                    node=s.tags.get("node", ""),
                    time=datetime.fromtimestamp(row["time"] / 1000, UTC),
                    **fields,
                )
            )
    return sorted(out, key=lambda r: r.node)


@router.get("/blocks/{block_id}/readings/latest", summary="Newest reading of each node of a block")
async def block_latest(
    block_id: BlockId, _: Reader, orchard: OrchardDep, influx: InfluxDep
) -> list[LatestReading]:
    b = find_block(orchard, block_id)
    return _latest_rows(await _one(influx, latest_query(Scope(orchard.farm.id, b.id))))


@router.get("/nodes/{node_id}/readings/latest", summary="Newest reading of a node")
async def node_latest(
    node_id: NodeId, _: Reader, orchard: OrchardDep, devices: DevicesDep, influx: InfluxDep
) -> LatestReading:
    b, _kind = node_block(orchard, devices, node_id)
    rows = _latest_rows(await _one(influx, latest_query(Scope(orchard.farm.id, b.id, node_id))))
    if not rows:
        raise HTTPException(404, f"no readings from node {node_id!r} yet")
    return rows[0]


async def _one(influx: InfluxClient, q: str) -> list[Any]:
    results = await influx.query(q)
    return results[0] if results else []


async def _history(
    influx: InfluxClient,
    settings: ApiSettings,
    scope: Scope,
    field: str,
    start: datetime | None,
    end: datetime | None,
    window: str,
    aggregate: str,
    by_node: bool,
    series_count: int,
) -> History:
    start_, end_ = _range(start, end)
    try:
        window_s = parse_window(window)
        q = history_query(
            scope,
            field,
            start_,
            end_,
            window_s,
            aggregate,
            by_node,
            settings.history_max_points,
            settings.history_max_days,
            series_count,
        )
    except QueryLimitError as exc:
        raise HTTPException(422, str(exc)) from None
    series = [
        HistorySeries(
            node=s.tags.get("node") if by_node else None,
            points=[
                HistoryPoint(time=datetime.fromtimestamp(t / 1000, UTC), value=v)
                for t, v in s.values
                if v is not None
            ],
        )
        for s in await _one(influx, q)
    ]
    return History(
        block=scope.block,
        node=scope.node,
        field=field,
        aggregate=aggregate,
        window_s=window_s,
        start=start_,
        end=end_,
        series=series,
    )


@router.get(
    "/blocks/{block_id}/readings/history",
    summary="A field of a block over time, aggregated by window (over the block, or per node)",
    responses={422: {"description": "Range, window or point limit exceeded; the message says how"}},
)
async def block_history(
    block_id: BlockId,
    _: Reader,
    orchard: OrchardDep,
    influx: InfluxDep,
    settings: SettingsDep,
    field: Annotated[FieldName, Query(description="Telemetry field")],
    start: Start = None,
    end: End = None,
    window: Window = "1h",
    aggregate: Aggregate = "mean",
    by_node: Annotated[bool, Query(description="One series per node")] = False,
) -> History:
    b = find_block(orchard, block_id)
    scope = Scope(orchard.farm.id, b.id)
    count = max(1, len(b.sensor_nodes))
    return await _history(
        influx, settings, scope, field, start, end, window, aggregate, by_node, count
    )


@router.get(
    "/nodes/{node_id}/readings/history",
    summary="A field of one node over time, aggregated by window",
    responses={422: {"description": "Range, window or point limit exceeded; the message says how"}},
)
async def node_history(
    node_id: NodeId,
    _: Reader,
    orchard: OrchardDep,
    devices: DevicesDep,
    influx: InfluxDep,
    settings: SettingsDep,
    field: Annotated[FieldName, Query(description="Telemetry field")],
    start: Start = None,
    end: End = None,
    window: Window = "1h",
    aggregate: Aggregate = "mean",
) -> History:
    b, _kind = node_block(orchard, devices, node_id)
    scope = Scope(orchard.farm.id, b.id, node_id)
    return await _history(influx, settings, scope, field, start, end, window, aggregate, False, 1)


CSV_COLUMNS = ["time", "farm", "block", "node", *MEASUREMENTS["telemetry"].fields]


async def _csv_rows(
    influx: InfluxClient, scope: Scope, start: datetime, end: datetime
) -> AsyncIterator[str]:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    yield buf.getvalue()
    # One day per query keeps the memory of a 90-day export bounded.
    chunk_start = start
    while chunk_start < end:
        chunk_end = min(end, chunk_start + timedelta(days=1))
        for s in await _one(influx, export_query(scope, chunk_start, chunk_end)):
            buf.seek(0)
            buf.truncate()
            for row in s.rows():
                t = datetime.fromtimestamp(row["time"] / 1000, UTC)
                values = [row.get(f) for f in MEASUREMENTS["telemetry"].fields]
                writer.writerow(
                    [
                        t.isoformat().replace("+00:00", "Z"),
                        scope.farm,
                        scope.block,
                        row.get("node"),
                        *("" if v is None else v for v in values),
                    ]
                )
            yield buf.getvalue()
        chunk_start = chunk_end


def _export(
    scope: Scope, settings: ApiSettings, influx: InfluxClient, start: Any, end: Any, name: str
) -> StreamingResponse:
    start_, end_ = _range(start, end)
    try:
        check_range(start_, end_, settings.history_max_days)
    except QueryLimitError as exc:
        raise HTTPException(422, str(exc)) from None
    filename = f"{name}_{start_:%Y%m%dT%H%M%SZ}_{end_:%Y%m%dT%H%M%SZ}.csv"
    return StreamingResponse(
        _csv_rows(influx, scope, start_, end_),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


_CSV_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {
            "text/csv": {
                "example": "time,farm,block,node,temperature,humidity,soil_moisture,maturity,"
                "battery,rssi,seq\n2026-11-01T00:00:00Z,sunny-hill,apple-east,apple-east-n01,"
                "18.2,64.0,0.24,3.1,3.9,-71,42\n"
            }
        }
    }
}


@router.get(
    "/blocks/{block_id}/export.csv", summary="Raw readings of a block as CSV", responses=_CSV_DOC
)
async def block_export(
    block_id: BlockId,
    _: Reader,
    orchard: OrchardDep,
    influx: InfluxDep,
    settings: SettingsDep,
    start: Start = None,
    end: End = None,
) -> StreamingResponse:
    b = find_block(orchard, block_id)
    return _export(Scope(orchard.farm.id, b.id), settings, influx, start, end, b.id)


@router.get(
    "/nodes/{node_id}/export.csv", summary="Raw readings of a node as CSV", responses=_CSV_DOC
)
async def node_export(
    node_id: NodeId,
    _: Reader,
    orchard: OrchardDep,
    devices: DevicesDep,
    influx: InfluxDep,
    settings: SettingsDep,
    start: Start = None,
    end: End = None,
) -> StreamingResponse:
    b, _kind = node_block(orchard, devices, node_id)
    return _export(Scope(orchard.farm.id, b.id, node_id), settings, influx, start, end, node_id)
