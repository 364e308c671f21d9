"""One alarm lifecycle for every alarm in orchard (ThingsBoard's alarm model).

States: ``active_unack`` → ``active_ack`` (someone acknowledged) → cleared
(``cleared_unack`` or ``cleared_ack``: an alarm that cleared before anyone looked
stays visible as unacknowledged). There is at most ONE active alarm per
``(type, subject)``: raising it again updates the open one (value, last seen) or
escalates it (higher severity), it never opens a second one. The store enforces this
with a unique key, so two writers (control, API) cannot race into a duplicate.

Two layers:

* :class:`AlarmRule` + :func:`evaluate_rule` decide *when* a condition raises or clears:
  a raise condition and a separate clear condition (hysteresis), each sustained for a
  minimum duration, with an optional escalation level. They work on numpy arrays so the
  control engine evaluates every node or block at once, live and in a replay.
* :class:`Alarms` records the decision: raise/update/escalate, acknowledge, clear,
  list/filter and history. Every change is an event in ``control_alarm_event``, and
  changes that deserve a notification (raised, escalated) go to the ``notify`` callback
  (the control service forwards them to the webhook outbox).

Usage (e.g. harvest readiness)::

    alarms = Alarms(engine)
    change = alarms.raise_alarm(type="harvest_readiness", subject="apple-east", farm="f",
                                block="apple-east", severity="warning", message="ready")
    alarms.acknowledge(change.alarm.id, who="maria")
    alarms.clear(change.alarm.id, who="maria", reason="picked")
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from control.store import (
    ALARM_ACTIVE_STATES,
    ALARM_STATES,
    SEVERITIES,
    alarm,
    alarm_event,
    utcnow,
)

log = logging.getLogger(__name__)

Severity = Literal["indeterminate", "warning", "minor", "major", "critical"]
AlarmState = Literal["active_unack", "active_ack", "cleared_unack", "cleared_ack"]
EventKind = Literal["raised", "updated", "escalated", "acknowledged", "cleared"]
StateFilter = Literal["active", "cleared", "unack", "ack", "any"] | AlarmState


def severity_rank(severity: str) -> int:
    try:
        return SEVERITIES.index(severity)
    except ValueError:
        raise ValueError(f"unknown severity {severity!r}; known: {', '.join(SEVERITIES)}") from None


class AlarmError(Exception):
    """Base of alarm failures the API turns into 4xx answers."""


class AlarmNotFound(AlarmError):
    pass


class AlarmStateError(AlarmError):
    """The transition is not allowed from the alarm's current state."""


class Alarm(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: int
    type: str
    subject: str
    farm: str
    block: str | None
    severity: Severity
    state: AlarmState
    message: str
    value: float | None
    threshold: float | None
    details: dict[str, Any] | None
    escalation_level: int
    started_at: datetime
    last_seen_at: datetime
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    cleared_at: datetime | None
    cleared_by: str | None
    clear_reason: str | None
    updated_at: datetime

    @property
    def active(self) -> bool:
        return self.state in ALARM_ACTIVE_STATES

    @property
    def acknowledged(self) -> bool:
        return self.acknowledged_at is not None


class AlarmEvent(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: int
    alarm_id: int
    ts: datetime
    event: EventKind
    actor: str
    severity: Severity
    state: AlarmState
    value: float | None
    message: str | None


@dataclass(frozen=True, slots=True)
class AlarmChange:
    """What a raise/acknowledge/clear did. ``event`` is None when nothing changed."""

    alarm: Alarm
    event: EventKind | None

    @property
    def notify(self) -> bool:
        return self.event in ("raised", "escalated")


Notifier = Callable[[AlarmChange], None]


def _row_to_alarm(row: Any) -> Alarm:
    return Alarm.model_validate(dict(row._mapping))


def _active_key(type_: str, subject: str) -> str:
    return f"{type_}|{subject}"


class Alarms:
    """Alarm store operations bound to one engine (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine, notify: Notifier | None = None) -> None:
        self.engine = engine
        self._notify = notify

    # --- writing -------------------------------------------------------------------

    def raise_alarm(
        self,
        *,
        type: str,
        subject: str,
        farm: str,
        block: str | None,
        severity: Severity,
        message: str,
        value: float | None = None,
        threshold: float | None = None,
        details: dict[str, Any] | None = None,
        now: datetime | None = None,
        actor: str = "control",
    ) -> AlarmChange:
        """Open the alarm, or update/escalate the active one of the same (type, subject).

        A higher severity than the open alarm's escalates it (event ``escalated``,
        acknowledgement reset so someone looks again). A lower or equal severity only
        refreshes value, message and ``last_seen_at``; severity never silently drops.
        """
        severity_rank(severity)
        now = now or utcnow()
        key = _active_key(type, subject)
        for _ in range(3):
            try:
                with self.engine.begin() as conn:
                    change = self._raise_in(
                        conn,
                        key,
                        type,
                        subject,
                        farm,
                        block,
                        severity,
                        message,
                        value,
                        threshold,
                        details,
                        now,
                        actor,
                    )
                break
            except IntegrityError:
                # Another writer opened the same alarm between our read and insert: retry,
                # which now finds it and updates it.
                continue
        else:  # pragma: no cover - three collisions in a row
            raise AlarmError(f"could not raise {type} on {subject}: concurrent writers")
        if change.notify and self._notify is not None:
            self._safe_notify(change)
        return change

    def _raise_in(
        self,
        conn: Connection,
        key: str,
        type_: str,
        subject: str,
        farm: str,
        block: str | None,
        severity: Severity,
        message: str,
        value: float | None,
        threshold: float | None,
        details: dict[str, Any] | None,
        now: datetime,
        actor: str,
    ) -> AlarmChange:
        row = conn.execute(sa.select(alarm).where(alarm.c.active_key == key)).first()
        if row is None:
            alarm_id = conn.execute(
                alarm.insert().values(
                    type=type_,
                    subject=subject,
                    farm=farm,
                    block=block,
                    severity=severity,
                    state="active_unack",
                    message=message,
                    value=value,
                    threshold=threshold,
                    details=details,
                    escalation_level=0,
                    started_at=now,
                    last_seen_at=now,
                    active_key=key,
                    updated_at=now,
                )
            ).inserted_primary_key[0]  # type: ignore[index]
            self._event(
                conn, alarm_id, now, "raised", actor, severity, "active_unack", value, message
            )
            return AlarmChange(self._get(conn, alarm_id), "raised")
        current = _row_to_alarm(row)
        values: dict[str, Any] = {
            "last_seen_at": max(now, current.last_seen_at),
            "value": value,
            "message": message,
            "threshold": threshold,
            "details": details,
            "updated_at": now,
        }
        event: EventKind | None = None
        if severity_rank(severity) > severity_rank(current.severity):
            event = "escalated"
            values.update(
                severity=severity,
                escalation_level=current.escalation_level + 1,
                state="active_unack",
                acknowledged_at=None,
                acknowledged_by=None,
            )
        conn.execute(alarm.update().where(alarm.c.id == current.id).values(**values))
        if event is not None:
            self._event(
                conn, current.id, now, event, actor, severity, "active_unack", value, message
            )
        return AlarmChange(self._get(conn, current.id), event)

    def acknowledge(
        self, alarm_id: int, who: str, *, now: datetime | None = None, note: str | None = None
    ) -> AlarmChange:
        """Acknowledge an alarm (active or cleared). Acknowledging twice changes nothing."""
        now = now or utcnow()
        with self.engine.begin() as conn:
            current = self._get(conn, alarm_id)
            if current.acknowledged:
                return AlarmChange(current, None)
            state = "active_ack" if current.active else "cleared_ack"
            conn.execute(
                alarm.update()
                .where(alarm.c.id == alarm_id)
                .values(state=state, acknowledged_at=now, acknowledged_by=who, updated_at=now)
            )
            self._event(
                conn, alarm_id, now, "acknowledged", who, current.severity, state, None, note
            )
            return AlarmChange(self._get(conn, alarm_id), "acknowledged")

    def clear(
        self,
        alarm_id: int,
        who: str = "control",
        *,
        reason: str = "",
        value: float | None = None,
        now: datetime | None = None,
    ) -> AlarmChange:
        """Clear an active alarm (``who`` = "control" for an automatic clear, else a user)."""
        now = now or utcnow()
        with self.engine.begin() as conn:
            current = self._get(conn, alarm_id)
            if not current.active:
                return AlarmChange(current, None)
            state = "cleared_ack" if current.acknowledged else "cleared_unack"
            conn.execute(
                alarm.update()
                .where(alarm.c.id == alarm_id)
                .values(
                    state=state,
                    cleared_at=now,
                    cleared_by=who,
                    clear_reason=reason,
                    active_key=None,
                    updated_at=now,
                    **({"value": value} if value is not None else {}),
                )
            )
            self._event(conn, alarm_id, now, "cleared", who, current.severity, state, value, reason)
            return AlarmChange(self._get(conn, alarm_id), "cleared")

    def clear_active(
        self,
        type: str,
        subject: str,
        who: str = "control",
        *,
        reason: str = "",
        value: float | None = None,
        now: datetime | None = None,
    ) -> AlarmChange | None:
        """Clear the active alarm of (type, subject) if there is one."""
        active = self.get_active(type, subject)
        if active is None:
            return None
        return self.clear(active.id, who, reason=reason, value=value, now=now)

    # --- reading -------------------------------------------------------------------

    def get(self, alarm_id: int) -> Alarm:
        with self.engine.connect() as conn:
            return self._get(conn, alarm_id)

    def get_active(self, type: str, subject: str) -> Alarm | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(alarm).where(alarm.c.active_key == _active_key(type, subject))
            ).first()
        return None if row is None else _row_to_alarm(row)

    def active_counts(self, *, farm: str | None = None) -> dict[str, int]:
        """Number of active alarms per block (one grouped query, no rows materialised)."""
        query = sa.select(alarm.c.block, sa.func.count()).where(
            alarm.c.state.in_(ALARM_ACTIVE_STATES), alarm.c.block.is_not(None)
        )
        if farm is not None:
            query = query.where(alarm.c.farm == farm)
        with self.engine.connect() as conn:
            rows = conn.execute(query.group_by(alarm.c.block)).all()
        return {str(r[0]): int(r[1]) for r in rows}

    def active(self, *, block: str | None = None, farm: str | None = None) -> list[Alarm]:
        return self.list(state="active", block=block, farm=farm, limit=100_000)

    def list(
        self,
        *,
        state: StateFilter = "any",
        severity: str | Sequence[str] | None = None,
        min_severity: str | None = None,
        type: str | Sequence[str] | None = None,
        block: str | None = None,
        farm: str | None = None,
        subject: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> builtins.list[Alarm]:
        """Alarms newest first. ``since``/``until`` select alarms that overlap the period."""
        query = sa.select(alarm)
        conditions: list[Any] = []
        if state == "active":
            conditions.append(alarm.c.state.in_(ALARM_ACTIVE_STATES))
        elif state == "cleared":
            conditions.append(alarm.c.state.in_(("cleared_unack", "cleared_ack")))
        elif state == "unack":
            conditions.append(alarm.c.state.in_(("active_unack", "cleared_unack")))
        elif state == "ack":
            conditions.append(alarm.c.state.in_(("active_ack", "cleared_ack")))
        elif state != "any":
            if state not in ALARM_STATES:
                raise ValueError(f"unknown alarm state filter {state!r}")
            conditions.append(alarm.c.state == state)
        if severity is not None:
            wanted = [severity] if isinstance(severity, str) else list(severity)
            for s in wanted:
                severity_rank(s)
            conditions.append(alarm.c.severity.in_(wanted))
        if min_severity is not None:
            conditions.append(alarm.c.severity.in_(SEVERITIES[severity_rank(min_severity) :]))
        if type is not None:
            conditions.append(alarm.c.type.in_([type] if isinstance(type, str) else list(type)))
        if block is not None:
            conditions.append(alarm.c.block == block)
        if farm is not None:
            conditions.append(alarm.c.farm == farm)
        if subject is not None:
            conditions.append(alarm.c.subject == subject)
        if since is not None:
            conditions.append(sa.or_(alarm.c.cleared_at.is_(None), alarm.c.cleared_at >= since))
        if until is not None:
            conditions.append(alarm.c.started_at <= until)
        query = (
            query.where(*conditions)
            .order_by(alarm.c.started_at.desc(), alarm.c.id.desc())
            .limit(limit)
            .offset(offset)
        )
        with self.engine.connect() as conn:
            return [_row_to_alarm(r) for r in conn.execute(query)]

    def history(self, alarm_id: int) -> builtins.list[AlarmEvent]:
        """Every change of one alarm, oldest first."""
        with self.engine.connect() as conn:
            self._get(conn, alarm_id)
            rows = conn.execute(
                sa.select(alarm_event)
                .where(alarm_event.c.alarm_id == alarm_id)
                .order_by(alarm_event.c.ts, alarm_event.c.id)
            )
            return [AlarmEvent.model_validate(dict(r._mapping)) for r in rows]

    def events(
        self, *, since: datetime | None = None, block: str | None = None, limit: int = 1000
    ) -> builtins.list[tuple[Alarm, AlarmEvent]]:
        """Recent events across alarms, oldest first (for feeds and annotations)."""
        query = sa.select(alarm_event, alarm.c.block).join(
            alarm, alarm.c.id == alarm_event.c.alarm_id
        )
        if since is not None:
            query = query.where(alarm_event.c.ts >= since)
        if block is not None:
            query = query.where(alarm.c.block == block)
        query = query.order_by(alarm_event.c.ts, alarm_event.c.id).limit(limit)
        out: builtins.list[tuple[Alarm, AlarmEvent]] = []
        with self.engine.connect() as conn:
            for row in conn.execute(query).all():
                mapping = dict(row._mapping)
                mapping.pop("block", None)
                ev = AlarmEvent.model_validate(mapping)
                out.append((self._get(conn, ev.alarm_id), ev))
        return out

    # --- helpers -------------------------------------------------------------------

    @staticmethod
    def _get(conn: Connection, alarm_id: int) -> Alarm:
        row = conn.execute(sa.select(alarm).where(alarm.c.id == alarm_id)).first()
        if row is None:
            raise AlarmNotFound(f"no alarm with id {alarm_id}")
        return _row_to_alarm(row)

    @staticmethod
    def _event(
        conn: Connection,
        alarm_id: int,
        ts: datetime,
        event: EventKind,
        actor: str,
        severity: str,
        state: str,
        value: float | None,
        message: str | None,
    ) -> None:
        conn.execute(
            alarm_event.insert().values(
                alarm_id=alarm_id,
                ts=ts,
                event=event,
                actor=actor,
                severity=severity,
                state=state,
                value=value,
                message=message,
            )
        )

    def _safe_notify(self, change: AlarmChange) -> None:
        assert self._notify is not None
        try:
            self._notify(change)
        except Exception:
            # A notification failure must never undo or block the alarm itself.
            log.exception("alarm notification failed for alarm %d", change.alarm.id)


# --- rules: when a condition raises and clears ------------------------------------------------


@dataclass(frozen=True, slots=True)
class AlarmRule:
    """A threshold alarm with hysteresis, minimum durations and one escalation level.

    ``direction="below"``: raise when value ≤ ``raise_at`` for ``raise_after_s``; clear
    when value ≥ ``clear_at`` for ``clear_after_s`` (``clear_at`` > ``raise_at``: the gap
    is the hysteresis band, so a value wobbling around ``raise_at`` never clears and
    re-raises). ``"above"`` mirrors it. ``escalate_at`` (further in the raise direction)
    lifts the severity to ``escalate_severity`` once sustained for ``raise_after_s``.
    """

    type: str
    direction: Literal["above", "below"]
    raise_at: float
    clear_at: float
    raise_after_s: float
    clear_after_s: float
    severity: Severity = "major"
    escalate_at: float | None = None
    escalate_severity: Severity = "critical"

    def __post_init__(self) -> None:
        if self.direction == "below" and self.clear_at < self.raise_at:
            raise ValueError(f"{self.type}: clear_at must be above raise_at for a 'below' alarm")
        if self.direction == "above" and self.clear_at > self.raise_at:
            raise ValueError(f"{self.type}: clear_at must be below raise_at for an 'above' alarm")


def cummax_rows(a: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Running maximum along the last axis of a 2-D array. numpy's accumulate along rows
    is slow for many rows (one inner loop per row): a few columns are done one by one,
    many through the transpose, where the inner loop runs across rows."""
    if a.ndim != 2:
        return np.maximum.accumulate(a, axis=-1)
    if a.shape[1] <= 16:
        out = a.copy()
        for j in range(1, a.shape[1]):
            np.maximum(out[:, j - 1], out[:, j], out=out[:, j])
        return out
    return np.ascontiguousarray(np.maximum.accumulate(a.T, axis=0).T)


def run_length_s(
    condition: npt.NDArray[np.bool_], times_s: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """For each sample, how long (s) the condition has held without a break, along the last axis.

    ``condition`` shape (..., T), ``times_s`` shape (T,). 0 where the condition is false,
    and 0 at the first sample of a run (one sample proves no duration). NaN-valued
    samples should be passed as False for the raise side: missing data never sustains
    an alarm.
    """
    t = np.asarray(times_s, dtype=np.float64)
    n = t.shape[0]
    idx = np.broadcast_to(np.arange(n), condition.shape)
    # Index of the last False at or before each sample; the run started just after it.
    last_false = np.where(condition, -1, idx)
    last_false = cummax_rows(last_false)
    start = np.clip(last_false + 1, 0, n - 1)
    # A run that begins at the first sample of the window may have started earlier than we
    # can see; it counts only from the window start, which is the conservative reading.
    return np.asarray(np.where(condition, t - t[start], 0.0), dtype=np.float64)


def carried_run(
    condition: npt.NDArray[np.bool_],
    times_s: npt.NDArray[np.float64],
    began_s: npt.NDArray[np.float64],
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """:func:`run_length_s` for a window that continues an earlier one.

    ``began_s`` (shape (S,)) is when each subject's run in progress at the end of the
    earlier window began (NaN: the condition did not hold at its last sample). Returns the
    run lengths and the same "began" array for the next window, so evaluating a period in
    pieces measures exactly the durations of evaluating it at once.
    """
    t = np.asarray(times_s, dtype=np.float64)
    n = t.shape[0]
    if n == 0:
        return np.zeros(condition.shape), began_s.copy()
    idx = np.broadcast_to(np.arange(n), condition.shape)
    last_false = cummax_rows(np.where(condition, -1, idx))
    began = t[np.clip(last_false + 1, 0, n - 1)]
    carried = (last_false < 0) & ~np.isnan(began_s)[:, None]
    began = np.where(carried, began_s[:, None], began)
    run = np.where(condition, t - began, 0.0)
    return run, np.where(condition[:, -1], began[:, -1], np.nan)


@dataclass
class RunStarts:
    """Per subject, when the raise, clear and escalate conditions of one rule began holding
    (NaN: not holding at the last sample evaluated): what a rule carries between windows."""

    raise_s: npt.NDArray[np.float64]
    clear_s: npt.NDArray[np.float64]
    escalate_s: npt.NDArray[np.float64]

    @classmethod
    def empty(cls, n: int) -> RunStarts:
        return cls(np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan))

    def __len__(self) -> int:
        return int(self.raise_s.shape[0])

    def grown(self, n: int) -> RunStarts:
        """The same starts for ``n`` subjects (new subjects appended, never seen holding)."""
        extra = n - len(self)
        if extra <= 0:
            return self
        pad = np.full(extra, np.nan)
        return RunStarts(
            np.concatenate([self.raise_s, pad]),
            np.concatenate([self.clear_s, pad]),
            np.concatenate([self.escalate_s, pad]),
        )

    def take(self, rows: npt.NDArray[np.int64]) -> RunStarts:
        return RunStarts(self.raise_s[rows], self.clear_s[rows], self.escalate_s[rows])

    def put(self, rows: npt.NDArray[np.int64], part: RunStarts) -> None:
        self.raise_s[rows] = part.raise_s
        self.clear_s[rows] = part.clear_s
        self.escalate_s[rows] = part.escalate_s


def sustained(
    condition: npt.NDArray[np.bool_], times_s: npt.NDArray[np.float64], duration_s: float
) -> npt.NDArray[np.bool_]:
    """True where the condition holds and has held for at least ``duration_s``."""
    return np.asarray(condition & (run_length_s(condition, times_s) >= duration_s))


@dataclass(frozen=True, slots=True)
class RuleOutcome:
    """Per subject: raise/clear/escalate at the evaluated instant, and the triggering value."""

    raise_now: npt.NDArray[np.bool_]
    clear_now: npt.NDArray[np.bool_]
    escalate_now: npt.NDArray[np.bool_]
    value: npt.NDArray[np.float64]


def threshold_mask(
    values: npt.NDArray[np.float64], threshold: Any, direction: str, raise_side: bool
) -> npt.NDArray[np.bool_]:
    with np.errstate(invalid="ignore"):
        if direction == "below":
            out = values <= threshold if raise_side else values >= threshold
        else:
            out = values >= threshold if raise_side else values <= threshold
    return np.asarray(out & ~np.isnan(values))


def evaluate_rule(
    rule: AlarmRule,
    values: npt.NDArray[np.float64],
    times_s: npt.NDArray[np.float64],
    *,
    raise_at: npt.NDArray[np.float64] | float | None = None,
    clear_at: npt.NDArray[np.float64] | float | None = None,
    escalate_at: npt.NDArray[np.float64] | float | None = None,
) -> RuleOutcome:
    """Evaluate a rule for many subjects at the LAST sample of a window.

    ``values`` shape (S, T) for S subjects over T sample times. Per-subject thresholds
    (e.g. each block's own trigger) can be passed as arrays of shape (S, 1) instead of the
    rule's scalars. Whether an alarm is currently active is the store's business: the
    caller raises where ``raise_now`` and no alarm is open, clears where ``clear_now``
    and one is.
    """
    r_at = rule.raise_at if raise_at is None else raise_at
    c_at = rule.clear_at if clear_at is None else clear_at
    e_at = rule.escalate_at if escalate_at is None else escalate_at
    raise_now = sustained(
        threshold_mask(values, r_at, rule.direction, True), times_s, rule.raise_after_s
    )[..., -1]
    clear_now = sustained(
        threshold_mask(values, c_at, rule.direction, False), times_s, rule.clear_after_s
    )[..., -1]
    if e_at is not None:
        escalate_now = sustained(
            threshold_mask(values, e_at, rule.direction, True), times_s, rule.raise_after_s
        )[..., -1]
    else:
        escalate_now = np.zeros_like(raise_now)
    # The value reported with the alarm: the worst value over the raise window.
    with np.errstate(all="ignore"):
        window = times_s >= times_s[-1] - max(rule.raise_after_s, 1.0)
        tail = np.where(window, values, np.nan)
        if tail.shape[-1] and not np.all(np.isnan(tail)):
            worst = (
                np.nanmin(tail, axis=-1) if rule.direction == "below" else np.nanmax(tail, axis=-1)
            )
        else:
            worst = np.full(values.shape[:-1], np.nan)
    return RuleOutcome(raise_now, clear_now, escalate_now, np.asarray(worst, dtype=np.float64))


def rule_transitions(
    rule: AlarmRule,
    values: npt.NDArray[np.float64],
    times: npt.NDArray[np.float64],
    subjects: Sequence[str],
    active: dict[tuple[str, str], str],
    since_s: float,
    *,
    raise_at: Any = None,
    clear_at: Any = None,
    escalate_at: Any = None,
    starts: RunStarts | None = None,
    subject_index: dict[str, int] | None = None,
) -> list[tuple[int, int, str, str]]:
    """(subject index, time index, kind, severity) of every raise/escalate/clear after ``since_s``.

    The active state starts from ``active`` (the store) and is updated in place, so the
    next rule or the next tick sees the result. With ``starts`` the minimum durations
    count from runs that began in earlier windows, and ``starts`` is updated for the next
    window: a period evaluated in pieces gives exactly the transitions of one evaluation.
    ``subject_index`` (subject -> row), when given, saves a pass over all subjects.
    """
    r_at = rule.raise_at if raise_at is None else raise_at
    c_at = rule.clear_at if clear_at is None else clear_at
    e_at = rule.escalate_at if escalate_at is None else escalate_at
    if starts is None:
        starts = RunStarts.empty(values.shape[0])

    def held(at: Any, raise_side: bool, began: npt.NDArray[np.float64], after_s: float) -> Any:
        mask = threshold_mask(values, at, rule.direction, raise_side)
        run, began_next = carried_run(mask, times, began)
        return mask & (run >= after_s), began_next

    raise_ok, starts.raise_s = held(r_at, True, starts.raise_s, rule.raise_after_s)
    clear_ok, starts.clear_s = held(c_at, False, starts.clear_s, rule.clear_after_s)
    if e_at is not None:
        esc_ok, starts.escalate_s = held(e_at, True, starts.escalate_s, rule.raise_after_s)
    else:
        esc_ok = np.zeros_like(raise_ok)
    first = int(np.searchsorted(times, since_s, side="right"))
    out: list[tuple[int, int, str, str]] = []
    # Only subjects where something can happen after ``since_s`` need the loop: an inactive
    # one with a raise condition, an active one with a clear or escalate condition. With
    # thousands of nodes most have neither, and the test is one vectorised pass.
    can_raise = raise_ok[:, first:].any(axis=1)
    can_change = clear_ok[:, first:].any(axis=1) | esc_ok[:, first:].any(axis=1)
    is_active = np.zeros(values.shape[0], dtype=bool)
    if active:
        if subject_index is not None:
            for rtype, subject in active:
                row = subject_index.get(subject) if rtype == rule.type else None
                if row is not None and row < is_active.shape[0]:
                    is_active[row] = True
        else:
            for s, subject in enumerate(subjects):
                if (rule.type, subject) in active:
                    is_active[s] = True
    todo = np.flatnonzero(np.where(is_active, can_change, can_raise))
    # Jump from one state change to the next with searchsorted on each subject's true
    # indices: the Python loop runs once per alarm episode, not once per sample.
    for s in todo.tolist():
        key = (rule.type, subjects[s])
        state = active.get(key)
        r_idx = np.flatnonzero(raise_ok[s])
        c_idx = np.flatnonzero(clear_ok[s])
        e_idx = np.flatnonzero(esc_ok[s])
        pos = first
        while pos < len(times):
            if state is None:
                k = int(np.searchsorted(r_idx, pos))
                if k == len(r_idx):
                    break
                i = int(r_idx[k])
                state = rule.escalate_severity if esc_ok[s, i] else rule.severity
                out.append((s, i, "raise", state))
                pos = i + 1
                continue
            k = int(np.searchsorted(c_idx, pos))
            clear_i = int(c_idx[k]) if k < len(c_idx) else len(times)
            if state != rule.escalate_severity and e_idx.size:
                k = int(np.searchsorted(e_idx, pos))
                if k < len(e_idx) and int(e_idx[k]) < clear_i:
                    i = int(e_idx[k])
                    state = rule.escalate_severity
                    out.append((s, i, "escalate", state))
                    pos = i + 1
                    continue
            if clear_i == len(times):
                break
            out.append((s, clear_i, "clear", state))
            state = None
            pos = clear_i + 1
        if state is None:
            active.pop(key, None)
        else:
            active[key] = state
    return out


def replay_rule(
    rule: AlarmRule,
    values: npt.NDArray[np.float64],
    times_s: npt.NDArray[np.float64],
    subjects: Sequence[str],
    *,
    raise_at: Any = None,
    clear_at: Any = None,
) -> list[list[tuple[float, float | None]]]:
    """Alarm episodes over a whole history: per subject, a list of (raised_s, cleared_s|None).

    The same transitions as a live tick (:func:`rule_transitions`), so both agree.
    """
    active: dict[tuple[str, str], str] = {}
    episodes: list[list[tuple[float, float | None]]] = [[] for _ in subjects]
    opened: dict[int, float] = {}
    for s, i, kind, _sev in sorted(
        rule_transitions(
            rule, values, times_s, subjects, active, -np.inf, raise_at=raise_at, clear_at=clear_at
        ),
        key=lambda x: (x[0], x[1]),
    ):
        if kind == "raise":
            opened[s] = float(times_s[i])
        elif kind == "clear" and s in opened:
            episodes[s].append((opened.pop(s), float(times_s[i])))
    for s, t in opened.items():
        episodes[s].append((t, None))
    return episodes
