"""The FastAPI application: long-lived clients in the lifespan, routers, error bodies."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.auth import Role, ensure_token
from api.devices import BrokerTarget, DeviceConflict, DeviceRegistry, ProvisioningError
from api.settings import ApiSettings
from orchard.db import create_engine, init_db
from orchard.ids import InvalidIdentifierError
from orchard.influx import InfluxClient, InfluxRejected, InfluxUnavailable, SyncInfluxClient
from orchard.layout import load_orchard

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"

DESCRIPTION = """
The orchard API: readings, node presence, thresholds, alarms, irrigation, listings,
backtests and device provisioning.

Every endpoint except `/health`, `/health/ready` and this document needs a bearer token:
`Authorization: Bearer orch_…`. Roles: **viewer** (read), **grower** (read, mark a
block harvested), **operator** (listings), **agronomist** (thresholds, alarms,
irrigation, backtests, harvests), **admin** (everything, devices, tokens). No token or a
bad one: 401; a role that may not: 403. Errors are
JSON: `{"detail": "what is wrong"}`.
"""


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "orchard_api_requests_total",
            "HTTP requests by route and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "orchard_api_request_seconds",
            "HTTP request latency by route",
            ["method", "route"],
            registry=self.registry,
        )


def _load_optional_routers(app: FastAPI) -> None:
    """Routers over other engineers' modules, added when those modules exist."""
    import importlib

    for name in ("api.routes.control", "api.routes.listings", "api.routes.irrigation"):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            log.warning("%s not available: %s", name, exc)
            continue
        app.include_router(module.router)
        for exc_class, handler in getattr(module, "exception_handlers", {}).items():
            app.add_exception_handler(exc_class, handler)


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    settings = settings or ApiSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.state_url.startswith("sqlite:///"):
            Path(settings.state_url.removeprefix("sqlite:///")).parent.mkdir(
                parents=True, exist_ok=True
            )
        engine = create_engine(settings.state_url)
        init_db(engine)
        influx = InfluxClient(settings.influx)
        # Blocking client for the thread pool (backtest replays run there, off the event loop).
        sync_influx = SyncInfluxClient(settings.influx)
        app.state.engine = engine
        app.state.influx = influx
        app.state.sync_influx = sync_influx
        app.state.orchard = load_orchard(settings.orchard_file)
        app.state.devices = DeviceRegistry(
            engine,
            BrokerTarget(
                passwd_file=settings.broker_passwd_file,
                pid_file=settings.broker_pid_file,
                pid=settings.broker_pid,
                conf=settings.broker_conf_path(),
            ),
        )
        demo_admin = settings.admin_token.get_secret_value() if settings.admin_token else None
        created = bool(demo_admin) and settings.demo
        if created and ensure_token(engine, str(demo_admin), "demo-admin", Role.admin):
            log.info("created the demo admin token from ORCHARD_ADMIN_TOKEN")
        try:
            if app.state.devices.sync():
                log.info("re-applied provisioned devices to %s", settings.broker_passwd_file)
        except ProvisioningError as exc:
            # The API still serves data; provisioning calls will report the same problem.
            log.warning("device accounts not applied to the broker: %s", exc)
        log.info("API ready on %s:%d", settings.api_host, settings.api_port)
        try:
            yield
        finally:
            await influx.aclose()
            sync_influx.close()
            engine.dispose()

    app = FastAPI(
        title="orchard API",
        version="1",
        description=DESCRIPTION,
        lifespan=lifespan,
        # Swagger UI and ReDoc load their scripts from a CDN, which a farm network may not
        # reach; the OpenAPI document itself is served (and open), for any viewer or client.
        docs_url=None,
        redoc_url=None,
        openapi_tags=[
            {"name": "system", "description": "Health, readiness, metrics (open: health only)"},
            {"name": "farms, blocks, nodes", "description": "Orchard layout and node presence"},
            {"name": "readings", "description": "Latest values, history, CSV export"},
            {
                "name": "thresholds",
                "description": "Effective thresholds, overrides with an audit log, backtests",
            },
            {"name": "alarms", "description": "List, acknowledge, clear, with history"},
            {"name": "irrigation", "description": "Decisions, valve commands, manual runs"},
            {
                "name": "harvest",
                "description": "Readiness per block and season; the grower marks a block harvested",
            },
            {"name": "listings", "description": "Lots for the shop: state and quantity"},
            {"name": "webhooks", "description": "Outgoing webhook delivery log"},
            {"name": "devices", "description": "Provisioning of node accounts on the broker"},
            {"name": "tokens", "description": "API tokens and roles"},
        ],
    )
    app.state.settings = settings
    app.state.metrics = Metrics()

    @app.middleware("http")
    async def count_requests(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        # The route template, not the raw path: ids must not explode label cardinality.
        name = getattr(route, "path", "unmatched")
        metrics: Metrics = app.state.metrics
        metrics.requests.labels(request.method, name, str(response.status_code)).inc()
        metrics.latency.labels(request.method, name).observe(time.perf_counter() - started)
        return response

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(InvalidIdentifierError)
    async def bad_id(_: Request, exc: InvalidIdentifierError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(InfluxUnavailable)
    async def influx_down(_: Request, exc: InfluxUnavailable) -> JSONResponse:
        log.warning("InfluxDB unavailable: %s", exc)
        return JSONResponse({"detail": "InfluxDB is unavailable, retry later"}, status_code=503)

    @app.exception_handler(InfluxRejected)
    async def influx_rejected(_: Request, exc: InfluxRejected) -> JSONResponse:
        log.error("InfluxDB rejected a query: %s", exc)
        return JSONResponse({"detail": "InfluxDB rejected the query"}, status_code=502)

    @app.exception_handler(DeviceConflict)
    async def conflict(_: Request, exc: DeviceConflict) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(ProvisioningError)
    async def provisioning(_: Request, exc: ProvisioningError) -> JSONResponse:
        log.error("provisioning: %s", exc)
        return JSONResponse({"detail": str(exc)}, status_code=503)

    from api.routes import admin, layout, readings, system

    app.include_router(system.router)
    app.include_router(layout.router)
    app.include_router(readings.router)
    app.include_router(admin.router)
    _load_optional_routers(app)

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/ui/")

    app.mount("/ui", StaticFiles(directory=STATIC_DIR, html=True), name="ui")
    return app
