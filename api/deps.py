"""FastAPI dependencies: the long-lived clients of the app, and who is calling."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.engine import Engine

from api.auth import PERMISSIONS, Permission, Principal, authenticate
from api.devices import DeviceRegistry
from api.settings import ApiSettings
from orchard.influx import InfluxClient
from orchard.layout import Orchard


def get_settings(request: Request) -> ApiSettings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_engine(request: Request) -> Engine:
    return request.app.state.engine  # type: ignore[no-any-return]


def get_influx(request: Request) -> InfluxClient:
    return request.app.state.influx  # type: ignore[no-any-return]


def get_orchard(request: Request) -> Orchard:
    return request.app.state.orchard  # type: ignore[no-any-return]


def get_devices(request: Request) -> DeviceRegistry:
    return request.app.state.devices  # type: ignore[no-any-return]


SettingsDep = Annotated[ApiSettings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
InfluxDep = Annotated[InfluxClient, Depends(get_influx)]
OrchardDep = Annotated[Orchard, Depends(get_orchard)]
DevicesDep = Annotated[DeviceRegistry, Depends(get_devices)]

bearer = HTTPBearer(auto_error=False, description="An API token: `Authorization: Bearer orch_…`")


def require(permission: Permission) -> Callable[..., Principal]:
    """A dependency that admits tokens whose role holds ``permission``."""

    def check(
        engine: EngineDep,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> Principal:
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise HTTPException(
                401,
                "missing bearer token: send `Authorization: Bearer <token>`",
                headers={"WWW-Authenticate": "Bearer"},
            )
        principal = authenticate(engine, credentials.credentials)
        if principal is None:
            raise HTTPException(
                401, "invalid or revoked token", headers={"WWW-Authenticate": "Bearer"}
            )
        if not principal.can(permission):
            roles = ", ".join(sorted(r.value for r in PERMISSIONS[permission]))
            raise HTTPException(
                403,
                f"role {principal.role.value!r} may not {permission.value}; allowed roles: {roles}",
            )
        return principal

    return check


Reader = Annotated[Principal, Depends(require(Permission.read))]
ListingsWriter = Annotated[Principal, Depends(require(Permission.listings_write))]
ThresholdsWriter = Annotated[Principal, Depends(require(Permission.thresholds_write))]
AlarmsWriter = Annotated[Principal, Depends(require(Permission.alarms_write))]
IrrigationWriter = Annotated[Principal, Depends(require(Permission.irrigation_write))]
BacktestRunner = Annotated[Principal, Depends(require(Permission.backtest_run))]
HarvestWriter = Annotated[Principal, Depends(require(Permission.harvest_write))]
QuantityWriter = Annotated[Principal, Depends(require(Permission.quantity_write))]
DevicesAdmin = Annotated[Principal, Depends(require(Permission.devices_admin))]
TokensAdmin = Annotated[Principal, Depends(require(Permission.tokens_admin))]
