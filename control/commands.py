"""Valve commands: stored first, then delivered over MQTT, with a lifecycle nobody has to guess.

``queued`` → ``sent`` → ``acknowledged`` → ``completed``; or ``timed_out`` (sent
``max_attempts`` times without an answer), ``failed`` (the controller rejected it, with
its reason), ``expired`` (its time to live ran out before delivery), ``cancelled``.

* A command is written to the store before anything is published, so a crash loses
  nothing; on restart the loop picks up ``queued`` and ``sent`` commands where they were.
* A resend after a timeout or a restart carries the same ``command_id``; controllers
  de-duplicate by it (``firmware_sim.valves``), so a restart never opens a valve twice.
* A command for a controller that reports itself offline (retained ``status`` or its
  Last Will) is not published: it waits as ``queued`` until the controller is back or
  the command's ``expires_at`` passes (then ``expired``). It is never called delivered
  before the controller said so.
* ``issued_at``/``expires_at`` are in the control clock (wall clock, or the data clock
  during an accelerated replay); ack timeouts are network time (wall clock).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import gmqtt
import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.engine import Engine

from control.store import COMMAND_OPEN_STATES, utcnow, valve_command
from orchard.models import ValveAck, ValveCommand, describe_error
from orchard.mqtt import connect, make_client
from orchard.settings import MqttSettings
from orchard.topics import Kind, TopicError, command_topic, parse_topic, subscription

log = logging.getLogger(__name__)

CONTROL_CLIENT_ID = "orchard-control"


class CommandSettings(BaseModel):
    ack_timeout_s: float = Field(default=15.0, gt=0, description="Wall seconds to wait for an ack")
    max_attempts: int = Field(default=3, ge=1, le=20)
    ttl_s: float = Field(
        default=2 * 3600, gt=0, description="Control-clock seconds a command may wait for delivery"
    )


class Command(BaseModel):
    model_config = ConfigDict(frozen=True)

    command_id: str
    farm: str
    block: str
    node: str
    valve: str
    action: str
    duration_s: int
    depth_mm: float | None
    state: str
    attempts: int
    max_attempts: int
    issued_at: datetime
    expires_at: datetime
    next_attempt_at: datetime | None
    sent_at: datetime | None
    acknowledged_at: datetime | None
    completed_at: datetime | None
    finished_at: datetime | None
    reason: str | None
    error: str | None
    decision_id: int | None
    created_by: str
    created_at: datetime
    updated_at: datetime

    def message(self) -> ValveCommand:
        return ValveCommand(
            command_id=self.command_id,
            valve=self.valve,
            action=self.action,
            duration_s=self.duration_s,
            issued_at=self.issued_at,
            expires_at=self.expires_at,
        )


class CommandNotFound(KeyError):
    pass


def new_command_id() -> str:
    return "cmd-" + secrets.token_hex(8)


def queue_command(
    engine: Engine,
    *,
    farm: str,
    block: str,
    node: str,
    valve: str,
    action: str,
    duration_s: int,
    issued_at: datetime,
    ttl_s: float,
    reason: str = "",
    depth_mm: float | None = None,
    decision_id: int | None = None,
    max_attempts: int = 3,
    created_by: str = "control",
    command_id: str | None = None,
) -> Command:
    """Store a command as ``queued``; the delivery loop sends it when its controller is online."""
    now = utcnow()
    values = dict(
        command_id=command_id or new_command_id(),
        farm=farm,
        block=block,
        node=node,
        valve=valve,
        action=action,
        duration_s=int(duration_s),
        depth_mm=depth_mm,
        state="queued",
        attempts=0,
        max_attempts=max_attempts,
        issued_at=issued_at,
        expires_at=issued_at + timedelta(seconds=ttl_s),
        next_attempt_at=None,
        reason=reason,
        decision_id=decision_id,
        created_by=created_by,
        created_at=now,
        updated_at=now,
    )
    # Validate the wire message before storing, so a command that cannot be sent is never queued.
    ValveCommand(
        command_id=values["command_id"],
        valve=valve,
        action=action,
        duration_s=int(duration_s),
        issued_at=issued_at,
        expires_at=values["expires_at"],
    )
    with engine.begin() as conn:
        conn.execute(valve_command.insert().values(**values))
    return get_command(engine, str(values["command_id"]))


def get_command(engine: Engine, command_id: str) -> Command:
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(valve_command).where(valve_command.c.command_id == command_id)
        ).first()
    if row is None:
        raise CommandNotFound(f"no command {command_id!r}")
    return Command.model_validate(dict(row._mapping))


def list_commands(
    engine: Engine, *, block: str | None = None, state: str | None = None, limit: int = 100
) -> list[Command]:
    query = sa.select(valve_command)
    if block is not None:
        query = query.where(valve_command.c.block == block)
    if state == "open":
        query = query.where(valve_command.c.state.in_(COMMAND_OPEN_STATES))
    elif state is not None:
        query = query.where(valve_command.c.state == state)
    query = query.order_by(valve_command.c.created_at.desc()).limit(limit)
    with engine.connect() as conn:
        return [Command.model_validate(dict(r._mapping)) for r in conn.execute(query)]


def _update(engine: Engine, command_id: str, expect: tuple[str, ...] | None, **values: Any) -> bool:
    values["updated_at"] = utcnow()
    cond = valve_command.c.command_id == command_id
    if expect is not None:
        cond = cond & valve_command.c.state.in_(expect)
    with engine.begin() as conn:
        return bool(conn.execute(valve_command.update().where(cond).values(**values)).rowcount)


def cancel_command(engine: Engine, command_id: str, who: str) -> Command:
    """Withdraw a command that has not been acknowledged yet."""
    if not _update(
        engine,
        command_id,
        ("queued", "sent"),
        state="cancelled",
        finished_at=utcnow(),
        error=f"cancelled by {who}",
    ):
        current = get_command(engine, command_id)
        raise ValueError(
            f"command {command_id} is {current.state}; only queued or sent ones can be cancelled"
        )
    return get_command(engine, command_id)


CommandListener = Callable[[Command, str], None]
"""Called with the updated command and the event (sent, acknowledged, completed, ...)."""


class ValveLink:
    """The control service's MQTT side for valves: delivery, acks, controller presence."""

    def __init__(
        self,
        engine: Engine,
        mqtt: MqttSettings,
        clock: Callable[[], datetime],
        *,
        settings: CommandSettings | None = None,
        client_id: str = CONTROL_CLIENT_ID,
        farm: str = "+",
        listener: CommandListener | None = None,
    ) -> None:
        self.engine = engine
        self.mqtt = mqtt
        self.clock = clock
        self.settings = settings or CommandSettings()
        self.farm = farm
        self.listener = listener
        self.presence: dict[str, bool] = {}
        self.client = make_client(
            client_id, mqtt, persistent_session=True, on_connect=self._on_connect
        )
        self.client.on_message = self._on_message
        self._connected = asyncio.Event()

    # --- connection ------------------------------------------------------------------

    def _on_connect(self, client: gmqtt.Client, flags: int, rc: int, properties: Any) -> None:
        client.subscribe(subscription(Kind.ACK, self.farm), qos=1)
        client.subscribe(subscription(Kind.STATUS, self.farm), qos=1)
        self._connected.set()

    async def start(self, stop: asyncio.Event | None = None) -> None:
        await connect(self.client, self.mqtt, stop=stop)

    async def wait_connected(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout)

    async def stop(self) -> None:
        try:
            await asyncio.wait_for(self.client.disconnect(), timeout=3.0)
        except Exception:  # already gone: nothing to close
            log.debug("MQTT disconnect failed", exc_info=True)

    @property
    def connected(self) -> bool:
        return bool(self.client.is_connected)

    def online(self, node: str) -> bool | None:
        """Last known presence of a node (None: never heard)."""
        return self.presence.get(node)

    # --- incoming --------------------------------------------------------------------

    def _on_message(
        self, client: gmqtt.Client, topic: str, payload: bytes, qos: int, properties: Any
    ) -> int:
        try:
            parsed = parse_topic(topic)
            if parsed.kind is Kind.STATUS:
                self._on_status(parsed.address.node, payload)
            elif parsed.kind is Kind.ACK:
                self.handle_ack(payload)
        except TopicError:
            log.debug("ignored message on %s", topic)
        except Exception:
            # One bad message never kills the link.
            log.exception("failed to handle message on %s", topic)
        return 0

    def _on_status(self, node: str, payload: bytes) -> None:
        try:
            data = json.loads(payload)
            online = data.get("state") == "online"
        except (ValueError, AttributeError):
            return
        before = self.presence.get(node)
        self.presence[node] = online
        if before != online:
            log.info("node %s is %s", node, "online" if online else "offline")

    def handle_ack(self, payload: bytes) -> Command | None:
        try:
            ack = ValveAck.model_validate_json(payload)
        except ValidationError as exc:
            log.warning("invalid valve ack: %s", describe_error(exc))
            return None
        try:
            current = get_command(self.engine, ack.command_id)
        except CommandNotFound:
            log.info("ack for unknown command %s from %s", ack.command_id, ack.node)
            return None
        now = utcnow()
        event: str | None = None
        if ack.status == "accepted" and current.state in ("queued", "sent", "timed_out"):
            if current.state == "timed_out":
                log.warning("late ack for %s: the valve did run", ack.command_id)
            _update(
                self.engine,
                ack.command_id,
                None,
                state="acknowledged",
                acknowledged_at=now,
                error=None,
            )
            event = "acknowledged"
        elif ack.status == "completed" and current.state not in (
            "completed",
            "failed",
            "expired",
            "cancelled",
        ):
            _update(
                self.engine,
                ack.command_id,
                None,
                state="completed",
                completed_at=now,
                finished_at=now,
                acknowledged_at=current.acknowledged_at or now,
                error=ack.reason if ack.reason else None,
            )
            event = "completed"
        elif ack.status == "rejected" and current.state in ("queued", "sent", "timed_out"):
            reason = ack.reason or "rejected without a reason"
            state = "expired" if "expire" in reason.lower() else "failed"
            _update(self.engine, ack.command_id, None, state=state, finished_at=now, error=reason)
            event = state
        if event is None:
            return current
        updated = get_command(self.engine, ack.command_id)
        log.info("command %s %s (%s)", updated.command_id, event, ack.reason or ack.status)
        self._notify(updated, event)
        return updated

    def _notify(self, command: Command, event: str) -> None:
        if self.listener is None:
            return
        try:
            self.listener(command, event)
        except Exception:
            log.exception("command listener failed for %s", command.command_id)

    # --- outgoing --------------------------------------------------------------------

    def pump(self) -> None:
        """One delivery pass over open commands: send, resend, expire, time out."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(valve_command)
                .where(valve_command.c.state.in_(("queued", "sent")))
                .order_by(valve_command.c.created_at)
            ).all()
        now_control = self.clock()
        wall = utcnow()
        for row in rows:
            command = Command.model_validate(dict(row._mapping))
            try:
                self._advance(command, now_control, wall)
            except Exception:
                log.exception("delivery of command %s failed", command.command_id)

    def _advance(self, command: Command, now_control: datetime, wall: datetime) -> None:
        online = self.presence.get(command.node)
        if now_control >= command.expires_at:
            why = (
                f"controller {command.node} was offline until the command's time to live ran out"
                if online is False
                else f"not acknowledged by {command.node} before it expired"
            )
            if _update(
                self.engine,
                command.command_id,
                ("queued", "sent"),
                state="expired",
                finished_at=wall,
                error=why,
            ):
                self._notify(get_command(self.engine, command.command_id), "expired")
            return
        if online is False:
            if command.state == "sent":
                # It went away after we sent: wait for it (the broker holds the message for
                # its persistent session, and we resend when it is back).
                _update(
                    self.engine,
                    command.command_id,
                    ("sent",),
                    state="queued",
                    next_attempt_at=None,
                    error=f"controller {command.node} offline; waiting",
                )
            return
        if (
            command.state == "sent"
            and command.next_attempt_at is not None
            and wall < command.next_attempt_at
        ):
            return
        if command.state == "sent" and command.attempts >= command.max_attempts:
            if _update(
                self.engine,
                command.command_id,
                ("sent",),
                state="timed_out",
                finished_at=wall,
                error=f"no answer from {command.node} after {command.attempts} attempts",
            ):
                self._notify(get_command(self.engine, command.command_id), "timed_out")
            return
        if not self.connected:
            return
        payload = command.message().model_dump_json().encode()
        topic = command_topic(command.farm, command.block, command.node)
        attempts = command.attempts + 1
        # Store "sent" before publishing: if we crash in between, the restart resends the
        # same command id, which the controller de-duplicates.
        _update(
            self.engine,
            command.command_id,
            ("queued", "sent"),
            state="sent",
            attempts=attempts,
            sent_at=command.sent_at or wall,
            next_attempt_at=wall + timedelta(seconds=self.settings.ack_timeout_s),
            error=None,
        )
        self.client.publish(topic, payload, qos=1)
        log.info(
            "command %s to %s/%s sent (attempt %d)",
            command.command_id,
            command.node,
            command.valve,
            attempts,
        )
        if attempts == 1:
            self._notify(get_command(self.engine, command.command_id), "sent")

    async def run(self, stop: asyncio.Event, interval_s: float = 0.5) -> None:
        while not stop.is_set():
            try:
                # In the event loop's thread: gmqtt is not thread-safe, and the store
                # queries of one pass are a few milliseconds.
                self.pump()
            except Exception:
                log.exception("command delivery pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)
