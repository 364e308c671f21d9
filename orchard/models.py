"""Message models of the device contract (contract version 1).

Every message on the broker is JSON validated by one of these models. They are
strict on purpose: unknown fields, NaN/infinity, wrong types and values outside
physical range are rejected, because a dashboard or an irrigation decision built on
a silently-coerced value is worse than a visible rejection.

Ranges are the sensors' physically possible envelope, not agronomic thresholds.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    field_validator,
)

from orchard.ids import Identifier

CONTRACT_VERSION = 1
MAX_BATCH = 500
"""Readings in one telemetry message; a gateway flushing more sends several messages."""
MAX_PAYLOAD_BYTES = 64 * 1024

_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True, str_max_length=256)

Temperature = Annotated[float, Field(ge=-60.0, le=70.0, description="Air temperature, °C")]
Humidity = Annotated[float, Field(ge=0.0, le=100.0, description="Relative humidity, %RH")]
SoilMoisture = Annotated[
    float, Field(ge=0.0, le=0.8, description="Volumetric soil water content, m³/m³")
]
Maturity = Annotated[
    float,
    Field(
        ge=0.0,
        le=100.0,
        description=(
            "Fruit maturity in the block's crop index: citrus Brix/acid ratio, mango dry "
            "matter %, apple starch index (Cornell 1-8), cherry soluble solids %"
        ),
    ),
]
Battery = Annotated[float, Field(ge=0.0, le=15.0, description="Battery voltage, V")]
Rssi = Annotated[int, Field(ge=-150, le=0, description="Radio signal strength, dBm")]
Sequence = Annotated[
    int, Field(ge=0, le=2**32 - 1, description="Per-node sequence number, wraps at 2^32")
]
CommandId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{8,64}$")]
Firmware = Annotated[str, StringConstraints(min_length=1, max_length=32, pattern=r"^[ -~]+$")]

MEASURED_FIELDS = ("temperature", "humidity", "soil_moisture", "maturity", "battery", "rssi")


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


class _Sample(BaseModel):
    """The fields of one sample, shared by a batch's readings and a single-reading message."""

    model_config = _STRICT

    ts: AwareDatetime = Field(description="Device time of the sample, ISO 8601 with offset (UTC)")
    seq: Sequence
    temperature: Temperature | None = None
    humidity: Humidity | None = None
    soil_moisture: SoilMoisture | None = None
    maturity: Maturity | None = None
    battery: Battery | None = None
    rssi: Rssi | None = None

    _to_utc = field_validator("ts")(_utc)


class Reading(_Sample):
    """One sample from one node. Absent sensors are omitted, never sent as null or 0."""


class Telemetry(_Sample):
    """Telemetry with a single reading (the common case for a live node)."""

    v: Literal[1] = Field(default=1, description="Contract version")
    node: Identifier = Field(description="Node id; must equal the node level of the topic")

    def readings(self) -> list[Reading]:
        # Already validated: copy the sample's fields without validating them again.
        return [Reading.model_construct(**{name: getattr(self, name) for name in _SAMPLE_FIELDS})]


_SAMPLE_FIELDS = tuple(_Sample.model_fields)


class TelemetryBatch(BaseModel):
    """Telemetry with several readings: gateways, and nodes flushing what they stored offline."""

    model_config = _STRICT

    v: Literal[1] = Field(default=1, description="Contract version")
    node: Identifier = Field(description="Node id; must equal the node level of the topic")
    readings: list[Reading] = Field(min_length=1, max_length=MAX_BATCH)


class Status(BaseModel):
    """Node presence. Published retained: ``online`` on connect, ``offline`` as Last Will."""

    model_config = _STRICT

    v: Literal[1] = 1
    node: Identifier
    state: Literal["online", "offline"]
    kind: Literal["sensor", "valve_controller", "gateway"] = "sensor"
    firmware: Firmware | None = None
    ts: AwareDatetime | None = Field(
        default=None,
        description="Device time when published; absent in a Last Will, which is fixed at connect",
    )


class ValveCommand(BaseModel):
    """A command from control to a valve controller node."""

    model_config = _STRICT

    v: Literal[1] = 1
    command_id: CommandId
    valve: Identifier
    action: Literal["open", "close"]
    duration_s: int = Field(
        default=0, ge=0, le=24 * 3600, description="Run time for 'open'; the valve closes itself"
    )
    issued_at: AwareDatetime
    expires_at: AwareDatetime = Field(description="A node must refuse a command received later")


class ValveAck(BaseModel):
    """A valve controller's answer to a command: accepted, rejected (with reason), completed."""

    model_config = _STRICT

    v: Literal[1] = 1
    command_id: CommandId
    node: Identifier
    valve: Identifier
    status: Literal["accepted", "rejected", "completed"]
    reason: str | None = Field(default=None, max_length=200)
    ts: AwareDatetime


TelemetryMessage = Telemetry | TelemetryBatch
_single = TypeAdapter(Telemetry)
_batch = TypeAdapter(TelemetryBatch)


def parse_telemetry(payload: bytes | str) -> Telemetry | TelemetryBatch:
    """Validate a telemetry payload of either shape.

    Picks the model from the presence of ``"readings"`` instead of trying a union, so
    the error a device integrator sees talks about the shape they meant to send.
    Raises :class:`pydantic.ValidationError`.
    """
    raw = payload if isinstance(payload, bytes) else payload.encode()
    if b'"readings"' in raw:
        return _batch.validate_json(raw)
    return _single.validate_json(raw)


def telemetry_readings(message: Telemetry | TelemetryBatch) -> list[Reading]:
    if isinstance(message, TelemetryBatch):
        return message.readings
    return message.readings()


def describe_error(exc: ValidationError) -> str:
    """A one-line reason for logs and the dead-letter store: first error's location and message."""
    errors = exc.errors(include_url=False)
    if not errors:
        return "invalid"
    first = errors[0]
    loc = ".".join(str(p) for p in first["loc"]) or "payload"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{loc}: {first['msg']}{more}"


def error_kind(exc: ValidationError) -> str:
    """A short, bounded label for metrics (``json_invalid``, ``extra_forbidden``, ...)."""
    errors = exc.errors(include_url=False)
    return str(errors[0]["type"]) if errors else "invalid"


SCHEMA_MODELS: dict[str, type[BaseModel]] = {
    "telemetry": Telemetry,
    "telemetry-batch": TelemetryBatch,
    "status": Status,
    "valve-command": ValveCommand,
    "valve-ack": ValveAck,
}


def json_schemas() -> dict[str, dict[str, object]]:
    """JSON Schema of every message, as committed under ``docs/schema/``."""
    return {name: model.model_json_schema() for name, model in SCHEMA_MODELS.items()}
