"""Valve command lifecycle over a real Mosquitto with the simulator's valve controller."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.engine import Engine

from control.commands import CommandSettings, ValveLink, get_command, list_commands, queue_command
from control.store import open_store
from firmware_sim.node import ValveControllerNode
from firmware_sim.valves import ValveLogic
from orchard.topics import NodeAddress
from tests.conftest import LiveStack

NOW = datetime(2026, 6, 1, 6, 0, tzinfo=UTC)


class Clock:
    """The control clock and the controller's simulated clock, moved by the test."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now

    def seconds(self) -> float:
        return self.now.timestamp()


class Controller:
    def __init__(
        self,
        stack: LiveStack,
        farm: str,
        node: str,
        clock: Clock,
        valves: tuple[str, ...] = ("v1",),
    ) -> None:
        self.runs: list[str] = []
        self.logic = ValveLogic(
            node, list(valves), water=lambda valve, start, end: self.runs.append(valve)
        )
        self.address = NodeAddress(farm, "b1", node)
        self.stack = stack
        self.clock = clock
        self.node: ValveControllerNode | None = None
        self.task: asyncio.Task[None] | None = None

    async def up(self) -> None:
        # A fresh device object each time, like a rebooted controller; the logic keeps its memory.
        self.node = ValveControllerNode(
            self.address, self.stack.mqtt(self.address.node), self.clock.seconds, self.logic
        )
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self.node.run_connection(self.stop, asyncio.Semaphore(1)))
        await until(lambda: bool(self.node and self.node.connected))

    async def down(self) -> None:
        assert self.node is not None
        await self.node.close(1.0)
        self.stop.set()
        if self.task:
            await self.task

    def tick(self) -> None:
        assert self.node is not None
        self.node.tick(self.clock.seconds())


async def until(
    predicate: Callable[[], bool], timeout: float = 10.0, pump: ValveLink | None = None
) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        if pump is not None:
            pump.pump()
        await asyncio.sleep(0.05)


@pytest.fixture
def store(tmp_path) -> Engine:  # type: ignore[no-untyped-def]
    return open_store(f"sqlite:///{tmp_path}/state.db")


@pytest.fixture
def farm() -> str:
    return f"farm-{uuid.uuid4().hex[:6]}"


@contextlib.asynccontextmanager
async def link_for(
    stack: LiveStack, store: Engine, farm: str, clock: Clock, client_id: str, **settings: float
) -> AsyncIterator[ValveLink]:
    events: list[tuple[str, str]] = []
    link = ValveLink(
        store,
        stack.mqtt("orchard-control"),
        clock,
        settings=CommandSettings(
            **{"ack_timeout_s": 0.5, "max_attempts": 3, "ttl_s": 3600, **settings}
        ),
        client_id=client_id,
        farm=farm,
        listener=lambda c, e: events.append((c.command_id, e)),
    )
    link.events = events  # type: ignore[attr-defined]
    await link.start()
    await link.wait_connected()
    try:
        yield link
    finally:
        await link.stop()


def _queue(
    store: Engine,
    farm: str,
    node: str,
    clock: Clock,
    *,
    valve: str = "v1",
    ttl_s: float = 3600,
    duration_s: int = 120,
):
    return queue_command(
        store,
        farm=farm,
        block="b1",
        node=node,
        valve=valve,
        action="open",
        duration_s=duration_s,
        issued_at=clock.now,
        ttl_s=ttl_s,
        reason="soil below trigger",
    )


async def test_lifecycle_acknowledged_then_completed_and_rejection(
    stack: LiveStack, store: Engine, farm: str
) -> None:
    clock = Clock()
    node = f"{farm}-ctl"
    controller = Controller(stack, farm, node, clock)
    await controller.up()
    async with link_for(stack, store, farm, clock, f"control-{farm}") as link:
        await until(lambda: link.online(node) is True)
        command = _queue(store, farm, node, clock)
        assert command.state == "queued"
        await until(
            lambda: get_command(store, command.command_id).state == "acknowledged", pump=link
        )
        clock.now += timedelta(seconds=121)
        controller.tick()
        await until(lambda: get_command(store, command.command_id).state == "completed", pump=link)
        done = get_command(store, command.command_id)
        assert (
            done.attempts == 1
            and done.acknowledged_at is not None
            and done.completed_at is not None
        )
        assert [e for c, e in link.events if c == command.command_id] == [
            "sent",
            "acknowledged",
            "completed",
        ]  # type: ignore[attr-defined]
        assert controller.runs == ["v1"]

        bad = _queue(store, farm, node, clock, valve="v9")
        await until(lambda: get_command(store, bad.command_id).state == "failed", pump=link)
        assert "unknown valve" in (get_command(store, bad.command_id).error or "")
    await controller.down()


async def test_silent_controller_times_out_after_bounded_attempts(
    stack: LiveStack, store: Engine, farm: str
) -> None:
    clock = Clock()
    async with link_for(stack, store, farm, clock, f"control-{farm}", ack_timeout_s=0.2) as link:
        command = _queue(store, farm, f"{farm}-ghost", clock)
        await until(lambda: get_command(store, command.command_id).state == "timed_out", pump=link)
        timed_out = get_command(store, command.command_id)
        assert timed_out.attempts == 3
        assert "no answer" in (timed_out.error or "")


async def test_offline_controller_waits_then_delivers_or_expires(
    stack: LiveStack, store: Engine, farm: str
) -> None:
    clock = Clock()
    node = f"{farm}-ctl"
    controller = Controller(stack, farm, node, clock)
    await controller.up()
    await controller.down()  # retained status now says offline
    async with link_for(stack, store, farm, clock, f"control-{farm}") as link:
        await until(lambda: link.online(node) is False)
        waiting = _queue(store, farm, node, clock, ttl_s=3600)
        short = _queue(store, farm, node, clock, ttl_s=600)
        for _ in range(10):
            link.pump()
            await asyncio.sleep(0.05)
        # Not marked sent, let alone delivered, while the controller is away.
        assert get_command(store, waiting.command_id).state == "queued"
        assert get_command(store, waiting.command_id).attempts == 0
        clock.now += timedelta(minutes=11)
        link.pump()
        expired = get_command(store, short.command_id)
        assert expired.state == "expired" and "offline" in (expired.error or "")

        await controller.up()
        await until(
            lambda: get_command(store, waiting.command_id).state == "acknowledged", pump=link
        )
        assert controller.runs == ["v1"]
    await controller.down()


async def test_restart_mid_command_neither_loses_nor_repeats(
    stack: LiveStack, store: Engine, farm: str
) -> None:
    clock = Clock()
    node = f"{farm}-ctl"
    controller = Controller(stack, farm, node, clock)
    await controller.up()
    client_id = f"control-{farm}"
    async with link_for(stack, store, farm, clock, client_id, ack_timeout_s=0.2) as first:
        await until(lambda: first.online(node) is True)
        command = _queue(store, farm, node, clock)
        first.pump()
        assert get_command(store, command.command_id).state == "sent"
        # The control service dies right after sending, before it hears the answer.
    await controller.down()  # and the controller reboots meanwhile (it remembers the command)
    await asyncio.sleep(0.5)
    await controller.up()
    async with link_for(stack, store, farm, clock, client_id, ack_timeout_s=0.2) as second:
        # The restarted service resends the same command id; the controller does not run it twice.
        await until(
            lambda: get_command(store, command.command_id).state == "acknowledged", pump=second
        )
        for _ in range(10):
            second.pump()
            await asyncio.sleep(0.05)
    await controller.down()
    assert controller.runs == ["v1"]
    assert [c.command_id for c in list_commands(store)] == [command.command_id]
    assert get_command(store, command.command_id).state == "acknowledged"
