"""The ingest service's settings (environment prefix ``ORCHARD_``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from orchard.ids import Identifier
from orchard.settings import OrchardSettings
from orchard.topics import INGEST_SHARE_GROUP

DAY_S = 86_400


class IngestSettings(OrchardSettings):
    """Everything ingest reads from the environment, e.g. ``ORCHARD_INGEST_CLIENT_ID``."""

    ingest_client_id: Identifier = Field(
        default="ingest-1",
        description="Fixed MQTT client id: the broker keeps this session's queue while away. "
        "Give every ingest process its own (ingest-1, ingest-2, ...).",
    )
    ingest_shared_subscription: bool = Field(
        default=False,
        description="Subscribe through $share/<group>/... so several ingest processes split "
        "the load. Off by default: Mosquitto 2.0.11 does not restore shared subscriptions "
        "from persistence, so messages published between a broker restart and ingest's "
        "resubscription are dropped by the broker (measured; see docs/ingest.md).",
    )
    ingest_share_group: Identifier = Field(
        default=INGEST_SHARE_GROUP, description="Shared-subscription group that splits the load"
    )
    ack_mode: Literal["batch", "handler"] = Field(
        default="batch",
        description="batch: all PUBACKs of a stored batch in one socket write, through a "
        "gmqtt internal (half the CPU per message, measured); handler: gmqtt's public "
        "ack-after-handling, one coroutine per message. Same guarantees; docs/ingest.md.",
    )
    metrics_port: int | None = Field(
        default=9101, ge=0, le=65535, description="Prometheus /metrics port; 0 or unset: off"
    )
    receive_maximum: int = Field(
        default=10_000,
        ge=2,
        le=65_535,
        description="MQTT 5 Receive Maximum: messages held unacknowledged at most. Keep it at "
        "or below Mosquitto's max_inflight_messages and above batch_max_messages.",
    )
    batch_max_lines: int = Field(default=5_000, ge=1, description="Seal a batch at this many lines")
    batch_max_messages: int = Field(
        default=4_000, ge=1, description="Seal a batch at this many messages"
    )
    flush_interval_s: float = Field(
        default=0.2, gt=0, description="Seal a batch this long after its first message"
    )
    write_concurrency: int = Field(default=2, ge=1, le=8, description="Batches written at once")
    max_future_s: float = Field(
        default=300.0, ge=0, description="Reject device timestamps further ahead of our clock"
    )
    max_past_s: float = Field(
        default=400 * DAY_S,
        gt=0,
        description="Reject device timestamps older than this (the demo replays a past season)",
    )
    retry_min_s: float = Field(default=0.2, gt=0, description="First write retry delay")
    retry_max_s: float = Field(default=10.0, gt=0, description="Longest write retry delay")
    shutdown_timeout_s: float = Field(
        default=20.0,
        gt=0,
        description="On SIGTERM, how long to try flushing before leaving "
        "the unwritten messages to the broker",
    )
    dead_letter_payload_bytes: int = Field(
        default=1_024, ge=16, le=60_000, description="Payload bytes kept in a dead letter"
    )
    create_database: bool = Field(
        default=True, description="CREATE DATABASE at start (harmless if it exists)"
    )

    @model_validator(mode="after")
    def _window_holds_a_batch(self) -> IngestSettings:
        # Acks wait for the batch write, so a batch larger than the broker's in-flight
        # window could never fill: it would be sealed only by the timer, every time.
        if self.batch_max_messages >= self.receive_maximum:
            raise ValueError(
                f"batch_max_messages ({self.batch_max_messages}) must be below "
                f"receive_maximum ({self.receive_maximum}), so one batch is written "
                "while the next one fills"
            )
        return self
