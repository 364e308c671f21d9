"""The control service's notion of "now".

``wall``: the real clock (a farm). ``data``: the newest telemetry timestamp, for the demo,
where the simulator replays a past season faster than real time: the control loop then
acts on the replay as if it were live, and valve commands carry issued/expiry times in
that clock, which the simulated valve controllers compare with their simulated clock.
The data clock never runs backwards.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol

from orchard.influx import InfluxClient, InfluxError, quote_literal
from orchard.lineprotocol import to_ns


def clock_kind(setting: str, demo: bool, sim_speed: float) -> str:
    """Which clock a service uses: ``auto`` means data when the demo simulator is accelerated.

    The control service and the API (manual commands, harvest marks) must agree, so both
    ask this one function.
    """
    if setting == "auto":
        return "data" if demo and sim_speed > 1 else "wall"
    return setting


class Clock(Protocol):
    def now(self) -> datetime: ...

    async def refresh(self) -> None: ...


class WallClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    async def refresh(self) -> None:
        return None


class DataClock:
    """Now = the latest telemetry timestamp of the farm (refreshed once per tick)."""

    def __init__(self, influx: InfluxClient, farm: str) -> None:
        self.influx = influx
        self.farm = farm
        self._now: datetime | None = None

    def now(self) -> datetime:
        if self._now is None:
            raise RuntimeError("the data clock has no telemetry yet")
        return self._now

    @property
    def ready(self) -> bool:
        return self._now is not None

    async def refresh(self) -> None:
        # After the first answer only the newest shard range needs scanning.
        bound = f" AND time >= {to_ns(self._now)}" if self._now is not None else ""
        try:
            results = await self.influx.query(
                f"SELECT last(seq) FROM telemetry WHERE farm = {quote_literal(self.farm)}{bound}",
                epoch="ms",
            )
        except InfluxError:
            return
        series = results[0] if results else []
        if not series or not series[0].values:
            return
        latest = datetime.fromtimestamp(series[0].values[0][0] / 1000.0, UTC)
        if self._now is None or latest > self._now:
            self._now = latest


class FixedClock:
    """A clock tests move by hand."""

    def __init__(self, now: datetime) -> None:
        self._now = now

    def now(self) -> datetime:
        return self._now

    def set(self, now: datetime) -> None:
        self._now = now

    async def refresh(self) -> None:
        return None
