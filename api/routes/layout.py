"""Farms, blocks and nodes: their profiles and the nodes' presence."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path
from fastapi.concurrency import run_in_threadpool

from api.deps import DevicesDep, InfluxDep, OrchardDep, Reader, SettingsDep
from api.devices import DeviceRegistry
from api.queries import Scope, status_query
from api.queries import latest_query as _latest_query
from api.schemas import ERRORS, NOT_FOUND, BlockOut, FarmOut, NodeStatus
from orchard.ids import ID_PATTERN
from orchard.influx import InfluxClient
from orchard.layout import Block, Orchard

router = APIRouter(prefix="/api/v1", tags=["farms, blocks, nodes"], responses=ERRORS)

FarmId = Annotated[str, Path(pattern=ID_PATTERN, examples=["sunny-hill"])]
BlockId = Annotated[str, Path(pattern=ID_PATTERN, examples=["apple-east"])]
NodeId = Annotated[str, Path(pattern=ID_PATTERN, examples=["apple-east-n01"])]


def find_block(orchard: Orchard, block_id: str) -> Block:
    try:
        return orchard.block(block_id)
    except KeyError:
        raise HTTPException(404, f"unknown block {block_id!r}") from None


def block_out(orchard: Orchard, block: Block, extra_nodes: list[str]) -> BlockOut:
    data = block.model_dump(exclude={"nodes", "node_count", "yield_kg_per_tree"})
    return BlockOut(farm=orchard.farm.id, nodes=[*block.sensor_nodes, *extra_nodes], **data)


def _provisioned(devices: DeviceRegistry, block: str) -> list[str]:
    return [str(d["node"]) for d in devices.active_nodes(block)]


def node_block(orchard: Orchard, devices: DeviceRegistry, node: str) -> tuple[Block, str]:
    """The block a node belongs to and its kind; 404 if the node is unknown."""
    for block in orchard.blocks:
        if node in block.sensor_nodes:
            return block, "sensor"
        if node == block.controller:
            return block, "controller"
    device = devices.get(node)
    if device is not None:
        return find_block(orchard, str(device["block"])), str(device["kind"])
    raise HTTPException(404, f"unknown node {node!r}")


def _ts(ms: Any) -> datetime | None:
    return datetime.fromtimestamp(ms / 1000, UTC) if isinstance(ms, int | float) else None


async def node_statuses(
    influx: InfluxClient,
    orchard: Orchard,
    devices: DeviceRegistry,
    block: Block,
    offline_after_s: float,
    only: str | None = None,
) -> list[NodeStatus]:
    scope = Scope(orchard.farm.id, block.id, only)
    status_res, latest_res = await influx.query(status_query(scope) + "; " + _latest_query(scope))
    status = {s.tags.get("node", ""): s.rows()[0] for s in status_res if s.values}
    latest = {s.tags.get("node", ""): s.rows()[0] for s in latest_res if s.values}
    registry = {str(d["node"]): d for d in await run_in_threadpool(devices.all)}
    nodes: list[tuple[str, str]] = [(n, "sensor") for n in block.sensor_nodes]
    if block.controller:
        nodes.append((block.controller, "controller"))
    known = {n for n, _ in nodes}
    nodes += [
        (str(d["node"]), str(d["kind"]))
        for d in registry.values()
        if d["block"] == block.id and d["state"] == "active" and d["node"] not in known
    ]
    now = datetime.now(UTC)
    out: list[NodeStatus] = []
    for node, kind in nodes:
        if only is not None and node != only:
            continue
        st = status.get(node)
        reading = latest.get(node)
        last_seen = _ts(reading["time"]) if reading else None
        if st is not None and st.get("online") is not None:
            online: bool | None = bool(st["online"])
            source = "status"
        elif last_seen is not None:
            online = (now - last_seen).total_seconds() <= offline_after_s
            source = "recency"
        else:
            online, source = None, "unknown"
        reg = registry.get(node)
        provisioned = (
            "orchard-file" if reg is None else ("api" if reg["state"] == "active" else "revoked")
        )
        out.append(
            NodeStatus(
                node=node,
                block=block.id,
                kind=kind,
                provisioned=provisioned,
                online=online,
                online_source=source,
                state=st.get("state") if st else None,
                firmware=st.get("firmware") if st else None,
                last_seen=last_seen,
                battery=reading.get("battery") if reading else None,
                rssi=reading.get("rssi") if reading else None,
            )
        )
    return out


@router.get("/farms", summary="Farms served by this API")
async def farms(_: Reader, orchard: OrchardDep) -> list[FarmOut]:
    f = orchard.farm
    return [
        FarmOut(id=f.id, name=f.name, timezone=f.timezone, blocks=[b.id for b in orchard.blocks])
    ]


@router.get("/farms/{farm_id}", summary="One farm", responses=NOT_FOUND)
async def farm(farm_id: FarmId, _: Reader, orchard: OrchardDep) -> FarmOut:
    if farm_id != orchard.farm.id:
        raise HTTPException(404, f"unknown farm {farm_id!r}")
    f = orchard.farm
    return FarmOut(id=f.id, name=f.name, timezone=f.timezone, blocks=[b.id for b in orchard.blocks])


@router.get("/blocks", summary="Every block with its profile")
def blocks(_: Reader, orchard: OrchardDep, devices: DevicesDep) -> list[BlockOut]:
    return [block_out(orchard, b, _provisioned(devices, b.id)) for b in orchard.blocks]


@router.get("/blocks/{block_id}", summary="A block's profile", responses=NOT_FOUND)
def block(block_id: BlockId, _: Reader, orchard: OrchardDep, devices: DevicesDep) -> BlockOut:
    b = find_block(orchard, block_id)
    return block_out(orchard, b, _provisioned(devices, b.id))


@router.get(
    "/blocks/{block_id}/nodes",
    summary="Nodes of a block with presence, last seen, battery and RSSI",
    responses=NOT_FOUND,
)
async def block_nodes(
    block_id: BlockId,
    _: Reader,
    orchard: OrchardDep,
    devices: DevicesDep,
    influx: InfluxDep,
    settings: SettingsDep,
) -> list[NodeStatus]:
    b = find_block(orchard, block_id)
    return await node_statuses(influx, orchard, devices, b, settings.offline_after_s)


@router.get("/nodes/{node_id}", summary="One node's presence and last reading", responses=NOT_FOUND)
async def node(
    node_id: NodeId,
    _: Reader,
    orchard: OrchardDep,
    devices: DevicesDep,
    influx: InfluxDep,
    settings: SettingsDep,
) -> NodeStatus:
    b, _kind = node_block(orchard, devices, node_id)
    found = await node_statuses(influx, orchard, devices, b, settings.offline_after_s, only=node_id)
    if not found:
        raise HTTPException(404, f"unknown node {node_id!r}")
    return found[0]
