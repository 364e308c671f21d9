"""Response and request models of the API (they make the OpenAPI document)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from api.auth import Role
from orchard.ids import Identifier


class ErrorBody(BaseModel):
    detail: str | list[object] = Field(examples=["invalid or revoked token"])


ERRORS: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorBody, "description": "No token, or an invalid or revoked one"},
    403: {"model": ErrorBody, "description": "The token's role may not do this"},
}
NOT_FOUND: dict[int | str, dict[str, object]] = {
    404: {"model": ErrorBody, "description": "Unknown farm, block or node"}
}


class FarmOut(BaseModel):
    id: str = Field(examples=["sunny-hill"])
    name: str
    timezone: str
    blocks: list[str]


class BlockOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"id": "apple-east"}]})
    id: str
    farm: str
    name: str
    crop: str
    variety: str
    soil: str
    area_ha: float
    trees: int
    bloom_date: date
    latitude: float
    elevation_m: float
    controller: str | None
    valves: list[str]
    irrigation_rate_mm_h: float
    application_efficiency: float
    nodes: list[str]


class NodeStatus(BaseModel):
    node: str = Field(examples=["apple-east-n01"])
    block: str
    kind: Literal["sensor", "controller"]
    provisioned: Literal["orchard-file", "api", "revoked"]
    online: bool | None = Field(description="From the retained status / Last Will, else recency")
    online_source: Literal["status", "recency", "unknown"]
    state: str | None = None
    firmware: str | None = None
    last_seen: datetime | None = Field(default=None, description="Time of the newest reading")
    battery: float | None = Field(default=None, description="Battery voltage, V")
    rssi: int | None = Field(default=None, description="Radio signal strength, dBm")


class LatestReading(BaseModel):
    node: str
    time: datetime
    temperature: float | None = None
    humidity: float | None = None
    soil_moisture: float | None = None
    maturity: float | None = None
    battery: float | None = None
    rssi: int | None = None
    seq: int | None = None


class HistoryPoint(BaseModel):
    time: datetime
    value: float


class HistorySeries(BaseModel):
    node: str | None = Field(description="None when the block is aggregated over its nodes")
    points: list[HistoryPoint]


class History(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "block": "apple-east",
                    "node": None,
                    "field": "soil_moisture",
                    "aggregate": "mean",
                    "window_s": 3600,
                    "start": "2026-11-01T00:00:00Z",
                    "end": "2026-11-02T00:00:00Z",
                    "series": [
                        {
                            "node": None,
                            "points": [{"time": "2026-11-01T00:00:00Z", "value": 0.231}],
                        }
                    ],
                }
            ]
        }
    )
    block: str
    node: str | None
    field: str
    aggregate: str
    window_s: int
    start: datetime
    end: datetime
    series: list[HistorySeries]


class DeviceIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"node": "apple-east-n06", "block": "apple-east", "kind": "sensor"}]
        },
    )
    node: Identifier = Field(description="Node id; it becomes the broker username")
    block: Identifier
    kind: Literal["sensor", "controller"] = "sensor"


class DeviceCredentials(BaseModel):
    node: str
    block: str
    username: str
    password: str = Field(description="Shown once; the API keeps only its hash")
    broker_host: str
    broker_port: int
    topics: dict[str, str]


class DeviceOut(BaseModel):
    node: str
    farm: str
    block: str
    kind: str
    state: str
    created_at: datetime
    created_by: str | None
    revoked_at: datetime | None
    revoked_by: str | None


class TokenIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"name": "shop-frontend", "role": "operator"}]},
    )
    name: str = Field(min_length=1, max_length=100, pattern=r"^[ -~]+$")
    role: Role


class TokenCreated(BaseModel):
    id: int
    name: str
    role: Role
    token: str = Field(description="Shown once; the API keeps only its SHA-256")


class TokenOut(BaseModel):
    id: int
    name: str
    role: Role
    created_at: datetime
    created_by: str | None
    revoked_at: datetime | None
    last_used_at: datetime | None


class WhoAmI(BaseModel):
    name: str
    role: Role
    permissions: list[str]
