"""Valve controller logic: validate commands, run valves on the simulated clock, acknowledge.

Pure logic, no MQTT: :class:`ValveLogic` turns a command payload into acknowledgements and
tells the physics when water flows. The MQTT side lives in :mod:`firmware_sim.node`.

Rules a real controller should follow too:
- A malformed command, an unknown valve, an ``open`` without a duration or longer than the
  maximum run, and a command received after its ``expires_at`` (on the controller's clock)
  are ``rejected`` with a reason. A payload whose ``command_id`` cannot even be read is
  answered with ``command_id`` ``"unreadable"`` so the sender still sees a refusal.
- A ``command_id`` seen before is never executed twice: its current state is acknowledged
  again (the control service resends after a restart).
- ``open`` answers ``accepted``, then ``completed`` when the run ends (or when a ``close``
  or a newer ``open`` of the same valve ends it early). ``close`` answers ``accepted`` and
  ``completed`` at once.
"""

from __future__ import annotations

import json
import logging
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import ValidationError

from orchard.ids import is_valid_id
from orchard.models import ValveAck, ValveCommand, describe_error

log = logging.getLogger(__name__)

DEFAULT_MAX_RUN_S = 4 * 3600
UNREADABLE_COMMAND_ID = "unreadable"
_COMMAND_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
REMEMBERED_COMMANDS = 1000


@dataclass
class _Run:
    command_id: str
    valve: str
    end: float


class ValveLogic:
    """One block controller's valves. ``water(valve, start, end)`` / ``stop(valve, at)`` feed
    the physics; times are POSIX seconds on the simulator's clock."""

    def __init__(
        self,
        node_id: str,
        valves: Sequence[str],
        *,
        max_run_s: int = DEFAULT_MAX_RUN_S,
        water: Callable[[str, float, float], None] | None = None,
        stop: Callable[[str, float], None] | None = None,
    ) -> None:
        self.node_id = node_id
        self.valves = list(valves)
        self.max_run_s = max_run_s
        self._water = water or (lambda valve, start, end: None)
        self._stop = stop or (lambda valve, at: None)
        self.runs: dict[str, _Run] = {}
        self.seen: OrderedDict[str, ValveAck] = OrderedDict()

    def _ack(
        self, command_id: str, valve: str, status: str, now: float, reason: str | None = None
    ) -> ValveAck:
        ack = ValveAck(
            command_id=command_id,
            node=self.node_id,
            valve=valve,
            status=status,
            reason=reason[:200] if reason else None,
            ts=datetime.fromtimestamp(now, UTC),
        )
        self.seen[command_id] = ack
        self.seen.move_to_end(command_id)
        while len(self.seen) > REMEMBERED_COMMANDS:
            self.seen.popitem(last=False)
        return ack

    def _reject_unparsed(self, payload: bytes, reason: str, now: float) -> list[ValveAck]:
        command_id, valve = UNREADABLE_COMMAND_ID, "unknown"
        try:
            raw = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            raw = None
        if isinstance(raw, dict):
            if isinstance(raw.get("command_id"), str) and _COMMAND_ID.match(raw["command_id"]):
                command_id = raw["command_id"]
            if is_valid_id(raw.get("valve")):
                valve = raw["valve"]
        log.warning("%s: rejected command %s: %s", self.node_id, command_id, reason)
        return [self._ack(command_id, valve, "rejected", now, reason)]

    def handle(self, payload: bytes, now: float) -> list[ValveAck]:
        """Acknowledgements for one command payload received at ``now``."""
        try:
            command = ValveCommand.model_validate_json(payload)
        except ValidationError as exc:
            return self._reject_unparsed(payload, f"invalid command: {describe_error(exc)}", now)
        previous = self.seen.get(command.command_id)
        if previous is not None:
            # Never run a command twice: say again where it stands.
            log.info(
                "%s: command %s seen before, re-acknowledged", self.node_id, command.command_id
            )
            return [previous]
        reason = self._refusal(command, now)
        if reason is not None:
            log.warning("%s: rejected command %s: %s", self.node_id, command.command_id, reason)
            return [self._ack(command.command_id, command.valve, "rejected", now, reason)]
        acks: list[ValveAck] = []
        current = self.runs.pop(command.valve, None)
        if current is not None:
            self._stop(command.valve, now)
            ended_by = "closed" if command.action == "close" else "superseded"
            acks.append(
                self._ack(
                    current.command_id,
                    command.valve,
                    "completed",
                    now,
                    f"{ended_by} by command {command.command_id}",
                )
            )
        acks.append(self._ack(command.command_id, command.valve, "accepted", now))
        if command.action == "open":
            end = now + command.duration_s
            self.runs[command.valve] = _Run(command.command_id, command.valve, end)
            self._water(command.valve, now, end)
            log.info(
                "%s: valve %s open for %d s (command %s)",
                self.node_id,
                command.valve,
                command.duration_s,
                command.command_id,
            )
        else:
            acks.append(self._ack(command.command_id, command.valve, "completed", now))
        return acks

    def _refusal(self, command: ValveCommand, now: float) -> str | None:
        if command.valve not in self.valves:
            return f"unknown valve {command.valve!r}; this controller drives {', '.join(self.valves) or 'none'}"
        if command.expires_at.timestamp() < now:
            clock = datetime.fromtimestamp(now, UTC).isoformat()
            return f"expired at {command.expires_at.isoformat()} (controller clock {clock})"
        if command.action == "open":
            if command.duration_s <= 0:
                return "open needs duration_s > 0"
            if command.duration_s > self.max_run_s:
                return f"run of {command.duration_s} s exceeds the maximum of {self.max_run_s} s"
        return None

    def tick(self, now: float) -> list[ValveAck]:
        """Close valves whose run has ended; ``completed`` acknowledgements at the end time."""
        acks = []
        for valve, run in list(self.runs.items()):
            if run.end <= now:
                del self.runs[valve]
                acks.append(self._ack(run.command_id, valve, "completed", run.end))
        return acks

    def open_valves(self) -> list[str]:
        return sorted(self.runs)
