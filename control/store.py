"""Control state tables on :data:`orchard.db.metadata` (portable SQLAlchemy Core).

Everything the control loop must not forget across a restart lives here, in tables
that work the same on SQLite (local, tests) and PostgreSQL (compose):

=================================  ====================================================
table                              what
=================================  ====================================================
``control_valve_command``          valve commands and their lifecycle (see ``commands``)
``control_alarm``                  alarms, one row per occurrence (see ``alarms``)
``control_alarm_event``            every change of an alarm: the history an operator reads
``control_threshold_override``     agronomist overrides of a block's thresholds
``control_threshold_audit``        who changed which threshold, when, old → new, why
``control_irrigation_decision``    each irrigation decision with its inputs and reason
``control_webhook_delivery``       outbound webhook messages (an outbox)
``control_webhook_attempt``        each delivery attempt: status code, error, duration
``control_kv``                     small per-block state (water balance carried day to day)
=================================  ====================================================

Times are stored as naive UTC (:class:`UtcDateTime`) and always come back timezone-aware,
because SQLite has no time zones and PostgreSQL's ``timestamptz`` would otherwise make
the two backends disagree.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect, Engine

from orchard.db import create_engine, init_db, metadata


class UtcDateTime(sa.types.TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out; stored as naive UTC on every backend."""

    impl = sa.DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the control store; pass an aware UTC time")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


# --- valve commands -------------------------------------------------------------------

COMMAND_STATES = (
    "queued",  # stored, waiting for its controller to be online (or for its first send)
    "sent",  # published at QoS 1, no answer yet
    "acknowledged",  # the controller accepted it (valve open for duration_s)
    "completed",  # the controller reported the run finished
    "timed_out",  # sent max_attempts times without an answer
    "failed",  # the controller rejected it (reason stored)
    "expired",  # its time to live passed before it could be delivered
    "cancelled",  # withdrawn by an operator or superseded
)
COMMAND_OPEN_STATES = ("queued", "sent", "acknowledged")

valve_command = sa.Table(
    "control_valve_command",
    metadata,
    sa.Column("command_id", sa.String(64), primary_key=True),
    sa.Column("farm", sa.String(64), nullable=False),
    sa.Column("block", sa.String(64), nullable=False, index=True),
    sa.Column("node", sa.String(64), nullable=False, doc="valve controller node id"),
    sa.Column("valve", sa.String(64), nullable=False),
    sa.Column("action", sa.String(8), nullable=False),
    sa.Column("duration_s", sa.Integer, nullable=False, default=0),
    sa.Column("depth_mm", sa.Float, nullable=True),
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("max_attempts", sa.Integer, nullable=False, default=3),
    sa.Column("issued_at", UtcDateTime, nullable=False, doc="in the control clock"),
    sa.Column("expires_at", UtcDateTime, nullable=False, doc="in the control clock"),
    sa.Column("next_attempt_at", UtcDateTime, nullable=True, doc="wall clock"),
    sa.Column("sent_at", UtcDateTime, nullable=True),
    sa.Column("acknowledged_at", UtcDateTime, nullable=True),
    sa.Column("completed_at", UtcDateTime, nullable=True),
    sa.Column("finished_at", UtcDateTime, nullable=True),
    sa.Column("reason", sa.Text, nullable=True, doc="why the command was issued"),
    sa.Column("error", sa.Text, nullable=True, doc="why it failed, timed out or expired"),
    sa.Column("decision_id", sa.Integer, nullable=True),
    sa.Column("created_by", sa.String(64), nullable=False, default="control"),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)

# --- alarms -----------------------------------------------------------------------------

ALARM_STATES = ("active_unack", "active_ack", "cleared_unack", "cleared_ack")
ALARM_ACTIVE_STATES = ("active_unack", "active_ack")
SEVERITIES = ("indeterminate", "warning", "minor", "major", "critical")
"""ThingsBoard's severities, lowest first."""

alarm = sa.Table(
    "control_alarm",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("type", sa.String(64), nullable=False, index=True),
    sa.Column("subject", sa.String(128), nullable=False, doc="block id, node id or valve id"),
    sa.Column("farm", sa.String(64), nullable=False),
    sa.Column("block", sa.String(64), nullable=True, index=True),
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("value", sa.Float, nullable=True),
    sa.Column("threshold", sa.Float, nullable=True),
    sa.Column("details", sa.JSON, nullable=True),
    sa.Column("escalation_level", sa.Integer, nullable=False, default=0),
    sa.Column("started_at", UtcDateTime, nullable=False, index=True),
    sa.Column("last_seen_at", UtcDateTime, nullable=False),
    sa.Column("acknowledged_at", UtcDateTime, nullable=True),
    sa.Column("acknowledged_by", sa.String(128), nullable=True),
    sa.Column("cleared_at", UtcDateTime, nullable=True),
    sa.Column("cleared_by", sa.String(128), nullable=True),
    sa.Column("clear_reason", sa.Text, nullable=True),
    # "type|subject" while active, NULL once cleared: a unique index on it makes "one
    # active alarm per (type, subject)" a database guarantee (NULLs never collide on
    # SQLite nor PostgreSQL), even with control and the API writing at once.
    sa.Column("active_key", sa.String(200), nullable=True, unique=True),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)

alarm_event = sa.Table(
    "control_alarm_event",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "alarm_id",
        sa.Integer,
        sa.ForeignKey("control_alarm.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("ts", UtcDateTime, nullable=False),
    sa.Column(
        "event", sa.String(16), nullable=False, doc="raised updated escalated acknowledged cleared"
    ),
    sa.Column("actor", sa.String(128), nullable=False),
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("value", sa.Float, nullable=True),
    sa.Column("message", sa.Text, nullable=True),
)

# --- thresholds ------------------------------------------------------------------------

threshold_override = sa.Table(
    "control_threshold_override",
    metadata,
    sa.Column("block", sa.String(64), primary_key=True),
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Float, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Column("updated_by", sa.String(128), nullable=False),
    sa.Column("reason", sa.Text, nullable=False, default=""),
)

threshold_audit = sa.Table(
    "control_threshold_audit",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("block", sa.String(64), nullable=False, index=True),
    sa.Column("key", sa.String(64), nullable=False),
    sa.Column("old_value", sa.Float, nullable=True, doc="NULL: there was no override"),
    sa.Column("new_value", sa.Float, nullable=True, doc="NULL: override removed"),
    sa.Column("effective_before", sa.Float, nullable=True),
    sa.Column("effective_after", sa.Float, nullable=True),
    sa.Column("actor", sa.String(128), nullable=False),
    sa.Column("ts", UtcDateTime, nullable=False, index=True),
    sa.Column("reason", sa.Text, nullable=False, default=""),
)

# --- irrigation decisions -----------------------------------------------------------------

irrigation_decision = sa.Table(
    "control_irrigation_decision",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("farm", sa.String(64), nullable=False),
    sa.Column("block", sa.String(64), nullable=False, index=True),
    sa.Column("ts", UtcDateTime, nullable=False, index=True, doc="in the control clock"),
    sa.Column("action", sa.String(16), nullable=False, doc="irrigate, wait, skip"),
    sa.Column("code", sa.String(32), nullable=False, doc="machine-readable reason"),
    sa.Column("reason", sa.Text, nullable=False, doc="the reason in a grower's words"),
    sa.Column("inputs", sa.JSON, nullable=False),
    sa.Column("depth_mm", sa.Float, nullable=True),
    sa.Column("duration_s", sa.Integer, nullable=True),
    sa.Column("water_m3", sa.Float, nullable=True),
    sa.Column("command_ids", sa.JSON, nullable=True),
)

# --- webhooks ----------------------------------------------------------------------------

webhook_delivery = sa.Table(
    "control_webhook_delivery",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("idempotency_key", sa.String(128), nullable=False, unique=True),
    sa.Column("event_type", sa.String(64), nullable=False, index=True),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("body", sa.Text, nullable=False, doc="the exact JSON bytes that are signed"),
    sa.Column("state", sa.String(16), nullable=False, index=True, doc="pending delivered failed"),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("max_attempts", sa.Integer, nullable=False),
    sa.Column("next_attempt_at", UtcDateTime, nullable=False, index=True),
    sa.Column("last_status_code", sa.Integer, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("delivered_at", UtcDateTime, nullable=True),
)

webhook_attempt = sa.Table(
    "control_webhook_attempt",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "delivery_id",
        sa.Integer,
        sa.ForeignKey("control_webhook_delivery.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("ts", UtcDateTime, nullable=False),
    sa.Column("status_code", sa.Integer, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("duration_ms", sa.Float, nullable=False),
)

# --- small per-block state ------------------------------------------------------------------

kv = sa.Table(
    "control_kv",
    metadata,
    sa.Column("scope", sa.String(64), primary_key=True),
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.JSON, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)


def kv_get(engine: Engine, scope: str, key: str) -> Any:
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(kv.c.value).where(kv.c.scope == scope, kv.c.key == key)
        ).first()
    return None if row is None else row[0]


def kv_set(engine: Engine, scope: str, key: str, value: Any) -> None:
    with engine.begin() as conn:
        updated = conn.execute(
            kv.update()
            .where(kv.c.scope == scope, kv.c.key == key)
            .values(value=value, updated_at=utcnow())
        ).rowcount
        if not updated:
            conn.execute(kv.insert().values(scope=scope, key=key, value=value, updated_at=utcnow()))


def open_store(url: str) -> Engine:
    """Engine on the state store, migrated to the newest schema (idempotent)."""
    engine = create_engine(url)
    if url.startswith("sqlite:///"):
        from pathlib import Path

        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    init_db(engine)
    return engine
