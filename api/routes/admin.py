"""Administration: device provisioning and API tokens."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from fastapi.concurrency import run_in_threadpool

from api.auth import PERMISSIONS, create_token, list_tokens, revoke_token
from api.deps import (
    DevicesAdmin,
    DevicesDep,
    EngineDep,
    OrchardDep,
    Reader,
    SettingsDep,
    TokensAdmin,
)
from api.devices import DeviceConflict
from api.routes.layout import NodeId, find_block
from api.schemas import (
    ERRORS,
    DeviceCredentials,
    DeviceIn,
    DeviceOut,
    ErrorBody,
    TokenCreated,
    TokenIn,
    TokenOut,
    WhoAmI,
)
from orchard.topics import Kind, node_topic

router = APIRouter(prefix="/api/v1", responses=ERRORS)


@router.get("/whoami", tags=["tokens"], summary="The calling token's name, role and permissions")
def whoami(principal: Reader) -> WhoAmI:
    return WhoAmI(
        name=principal.name,
        role=principal.role,
        permissions=sorted(p.value for p, roles in PERMISSIONS.items() if principal.role in roles),
    )


@router.get("/devices", tags=["devices"], summary="Devices provisioned or revoked through the API")
def devices_list(_: DevicesAdmin, devices: DevicesDep) -> list[DeviceOut]:
    return [DeviceOut.model_validate(d) for d in devices.all()]


@router.post(
    "/devices",
    tags=["devices"],
    status_code=201,
    summary="Register a node: create its broker account and return its password once",
    responses={
        404: {"model": ErrorBody, "description": "Unknown block"},
        409: {"model": ErrorBody, "description": "Node already provisioned or id reserved"},
        503: {"model": ErrorBody, "description": "Stored, but the broker could not be reloaded"},
    },
)
def devices_register(
    body: DeviceIn,
    principal: DevicesAdmin,
    devices: DevicesDep,
    orchard: OrchardDep,
    settings: SettingsDep,
) -> DeviceCredentials:
    block = find_block(orchard, body.block)
    for other in orchard.blocks:
        in_other = body.node in other.sensor_nodes or body.node == other.controller
        if in_other and other.id != block.id:
            raise HTTPException(
                409, f"node {body.node!r} belongs to block {other.id!r} in the orchard file"
            )
    try:
        password = devices.register(body.node, orchard.farm.id, block.id, body.kind, principal.name)
    except DeviceConflict as exc:
        raise HTTPException(409, str(exc)) from None
    farm = orchard.farm.id
    return DeviceCredentials(
        node=body.node,
        block=block.id,
        username=body.node,
        password=password,
        broker_host=settings.broker_public_host or settings.mqtt.host,
        broker_port=settings.mqtt.port,
        topics={k.value: node_topic(farm, block.id, body.node, k) for k in Kind},
    )


@router.delete(
    "/devices/{node_id}",
    tags=["devices"],
    summary="Revoke a node: remove its broker account; the broker drops its live session",
    responses={
        404: {"model": ErrorBody, "description": "Unknown node"},
        409: {"model": ErrorBody, "description": "Already revoked"},
    },
)
def devices_revoke(
    node_id: NodeId, principal: DevicesAdmin, devices: DevicesDep, orchard: OrchardDep
) -> DeviceOut:
    block_id = None
    for b in orchard.blocks:
        if node_id in b.sensor_nodes or node_id == b.controller:
            block_id = b.id
    known = devices.get(node_id)
    if known is None and block_id is None:
        raise HTTPException(404, f"unknown node {node_id!r}")
    if not devices.revoke(node_id, principal.name, orchard.farm.id, block_id or ""):
        raise HTTPException(409, f"node {node_id!r} is already revoked")
    found = devices.get(node_id)
    assert found is not None
    return DeviceOut.model_validate(found)


@router.get("/tokens", tags=["tokens"], summary="API tokens (never their secret)")
def tokens_list(_: TokensAdmin, engine: EngineDep) -> list[TokenOut]:
    return [TokenOut.model_validate(t) for t in list_tokens(engine)]


@router.post(
    "/tokens", tags=["tokens"], status_code=201, summary="Create a token; it is shown once"
)
def tokens_create(body: TokenIn, principal: TokensAdmin, engine: EngineDep) -> TokenCreated:
    token_id, token = create_token(engine, body.name, body.role, created_by=principal.name)
    return TokenCreated(id=token_id, name=body.name, role=body.role, token=token)


@router.delete(
    "/tokens/{token_id}",
    tags=["tokens"],
    status_code=204,
    summary="Revoke a token (effective on the next request)",
    responses={404: {"model": ErrorBody, "description": "No such unrevoked token"}},
)
async def tokens_revoke(token_id: int, _: TokensAdmin, engine: EngineDep) -> None:
    if not await run_in_threadpool(revoke_token, engine, token_id):
        raise HTTPException(404, f"no unrevoked token with id {token_id}")
