"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.deps import EngineDep, InfluxDep, Reader, SettingsDep
from api.probes import check_broker

router = APIRouter(tags=["system"])


@router.get(
    "/health",
    summary="Liveness: the process answers",
    responses={200: {"content": {"application/json": {"example": {"status": "ok"}}}}},
)
async def health() -> dict[str, str]:
    return {"status": "ok"}


def _check_store(engine: Any) -> str | None:
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:  # any driver error means "not ready"; the body says which
        return f"state store unavailable: {exc.__class__.__name__}: {exc}"
    return None


@router.get(
    "/health/ready",
    summary="Readiness: broker, InfluxDB and the state store answer",
    responses={
        200: {
            "content": {
                "application/json": {
                    "example": {
                        "status": "ready",
                        "checks": {"broker": "ok", "influxdb": "ok", "state_store": "ok"},
                    }
                }
            }
        },
        503: {"description": "At least one dependency is down; `checks` says which and why"},
    },
)
async def ready(settings: SettingsDep, influx: InfluxDep, engine: EngineDep) -> JSONResponse:
    broker, influx_ok, store = await asyncio.gather(
        check_broker(settings.mqtt, settings.readiness_timeout_s),
        influx.ping(),
        run_in_threadpool(_check_store, engine),
    )
    checks = {
        "broker": broker or "ok",
        "influxdb": "ok" if influx_ok else f"InfluxDB at {settings.influx.url} did not answer",
        "state_store": store or "ok",
    }
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ready" if ok else "not ready", "checks": checks}, status_code=200 if ok else 503
    )


@router.get(
    "/metrics",
    summary="Prometheus metrics of the API (needs a token: scrape with `authorization`)",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
async def metrics(request: Request, _: Reader) -> Response:
    return Response(
        generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST
    )
