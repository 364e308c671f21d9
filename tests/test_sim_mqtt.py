"""The simulator on a real Mosquitto: store-and-forward, Last Will, valves, faults on the wire."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import gmqtt

from firmware_sim.runtime import SimConfig, Simulator
from orchard.layout import Orchard, load_orchard
from orchard.models import (
    Status,
    TelemetryBatch,
    ValveAck,
    ValveCommand,
    parse_telemetry,
    telemetry_readings,
)
from orchard.mqtt import connect, make_client
from orchard.settings import PROJECT_ROOT, MqttSettings
from tests.conftest import LiveStack


def write_orchard(
    tmp_path: Path, farm: str, block: str, nodes: int, valves: list[str] | None = None
) -> Path:
    lines = [
        "[farm]",
        f'id = "{farm}"',
        'timezone = "UTC"',
        "[[blocks]]",
        f'id = "{block}"',
        'crop = "apple"',
        "area_ha = 1.0",
        "trees = 100",
        'bloom_date = "2026-04-10"',
        "latitude = 45.0",
        f"node_count = {nodes}",
    ]
    if valves:
        lines += [f'controller = "{block}-ctl"', f"valves = {json.dumps(valves)}"]
    path = tmp_path / f"{farm}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


class Watcher:
    """A subscriber on a service account that records every message it receives."""

    def __init__(self, settings: MqttSettings, topic: str, *, persistent: bool = False) -> None:
        self.settings = settings
        self.topic = topic
        self.messages: list[tuple[str, bytes, bool]] = []
        self.redelivered: list[tuple[str, bytes]] = []
        """Messages the broker flagged DUP: its own redelivery of a message it sent us before."""
        self.client = make_client(
            f"watch-{uuid.uuid4().hex[:8]}",
            settings,
            persistent_session=persistent,
            on_connect=lambda c, *_: c.subscribe(topic, qos=1),
        )
        self.client.on_message = self._on_message

    def _on_message(
        self, client: gmqtt.Client, topic: str, payload: bytes, qos: int, props: Any
    ) -> int:
        if props.get("dup") and any(t == topic and p == payload for t, p, _ in self.messages):
            self.redelivered.append((topic, payload))
        else:
            self.messages.append((topic, payload, bool(props.get("retain"))))
        return 0

    async def __aenter__(self) -> Watcher:
        await connect(self.client, self.settings)
        await asyncio.sleep(0.2)  # subscription in place
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.disconnect()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            await asyncio.sleep(0.05)
        return predicate()


def sim_for(
    orchard: Orchard,
    stack: LiveStack,
    *,
    speed: float,
    start: datetime | None = None,
    **kwargs: Any,
) -> Simulator:
    stack.add_devices([node for _, node in orchard.all_nodes()])
    config = SimConfig(
        start=start or datetime.now(UTC), speed=speed, interval_s=60.0, seed=1, drain_s=5.0
    )
    mqtt = stack.mqtt("orchard-control").model_copy(update={"username": None, "password": None})
    return Simulator(orchard, mqtt, stack.device_secret, config, **kwargs)


async def test_store_and_forward_survives_a_broker_restart(
    tmp_path: Path, private_broker: Callable[[], LiveStack]
) -> None:
    broker = private_broker()
    farm = "sf-farm"
    orchard = load_orchard(write_orchard(tmp_path, farm, "blk", 3))
    taken: dict[str, list[tuple[int, datetime]]] = {}
    sim = sim_for(
        orchard,
        broker,
        speed=600.0,  # 10 readings per node per real second
        start=datetime.now(UTC) - timedelta(days=2),
        on_reading=lambda node, r: taken.setdefault(node, []).append((r.seq, r.ts)),
    )
    watcher = Watcher(
        broker.mqtt("orchard-control"), f"orchard/{farm}/+/+/telemetry", persistent=True
    )
    async with watcher:
        stop = asyncio.Event()
        running = asyncio.create_task(sim.run(stop))
        await asyncio.sleep(2.0)
        broker.broker.stop()
        outage_start = datetime.fromtimestamp(sim.clock.now(), UTC)
        await asyncio.sleep(2.0)
        outage_end = datetime.fromtimestamp(sim.clock.now(), UTC)
        buffered = sum(n.backlog for n in sim.sensors)
        broker.broker.restart()
        await asyncio.sleep(2.0)
        stop.set()
        stats = await running
        expected = sum(len(v) for v in taken.values())

        def count() -> int:
            return sum(len(telemetry_readings(parse_telemetry(p))) for _, p, _ in watcher.messages)

        await watcher.wait_for(lambda: count() >= expected, timeout=15.0)

    assert buffered >= 3 * 10  # readings piled up while the broker was away
    assert stats.readings_dropped_buffer == 0 and stats.backlog == 0
    received: dict[str, list[tuple[int, datetime]]] = {}
    batches_after_outage = 0
    for topic, payload, _ in watcher.messages:
        message = parse_telemetry(payload)  # every message satisfies the contract
        assert topic.split("/")[3] == message.node
        readings = telemetry_readings(message)
        if isinstance(message, TelemetryBatch) and readings[-1].ts >= outage_start:
            batches_after_outage += 1
        received.setdefault(message.node, []).extend((r.seq, r.ts) for r in readings)
    assert batches_after_outage >= 1
    assert set(received) == set(taken) == set(orchard.block("blk").sensor_nodes)
    for node, readings in taken.items():
        seqs = [seq for seq, _ in readings]
        assert seqs == list(range(len(seqs)))  # the node took a contiguous run
        got = received[node]
        # Exactly once, in order, with the original device timestamp. (Only the broker's own
        # DUP redelivery to this subscriber across its restart is set aside by Watcher; a
        # device sending a reading twice would fail here.)
        assert got == readings, f"{node}: {len(got)} received vs {len(readings)} taken"
        assert any(outage_start < ts < outage_end for _, ts in got)


async def test_last_will_turns_status_offline_when_the_process_is_killed(
    tmp_path: Path, stack: LiveStack
) -> None:
    farm = "lw-farm"
    path = write_orchard(tmp_path, farm, "lw", 1)
    node = "lw-n01"
    stack.add_devices([node])
    env = dict(
        os.environ,
        ORCHARD_ORCHARD_FILE=str(path),
        ORCHARD_DEVICE_SECRET=stack.device_secret,
        ORCHARD_MQTT__HOST="127.0.0.1",
        ORCHARD_MQTT__PORT=str(stack.broker.port),
        ORCHARD_SIM_SPEED="60",
        PYTHONPATH=str(PROJECT_ROOT),
    )
    topic = f"orchard/{farm}/lw/{node}/status"

    def states(w: Watcher) -> list[str]:
        return [Status.model_validate_json(p).state for _, p, _ in w.messages]

    async with Watcher(stack.mqtt("orchard-control"), topic) as watcher:
        proc = subprocess.Popen(
            [sys.executable, "-m", "firmware_sim"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert await watcher.wait_for(lambda: "online" in states(watcher), timeout=20)
            os.kill(proc.pid, signal.SIGKILL)
            assert await watcher.wait_for(lambda: states(watcher)[-1] == "offline", timeout=10)
        finally:
            proc.kill()
            proc.wait()
    # A newcomer sees the retained Last Will.
    async with Watcher(stack.mqtt("orchard-control"), topic) as late:
        assert await late.wait_for(lambda: bool(late.messages), timeout=5)
        _, payload, retained = late.messages[0]
        status = Status.model_validate_json(payload)
        assert retained and status.state == "offline" and status.node == node and status.firmware


def command(valve: str, action: str = "open", duration_s: int = 0, **kw: Any) -> ValveCommand:
    now = datetime.now(UTC)
    return ValveCommand(
        command_id=kw.pop("command_id", f"cmd-{uuid.uuid4().hex[:12]}"),
        valve=valve,
        action=action,  # type: ignore[arg-type]
        duration_s=duration_s,
        issued_at=now,
        expires_at=kw.pop("expires_at", now + timedelta(minutes=5)),
    )


async def test_valve_commands_are_accepted_completed_or_refused_with_a_reason(
    tmp_path: Path, stack: LiveStack
) -> None:
    farm = "vc-farm"
    orchard = load_orchard(write_orchard(tmp_path, farm, "vb", 2, valves=["vb-v1", "vb-v2"]))
    # One simulated minute per real second, from a day ago (so the clock stays accelerated).
    sim = sim_for(orchard, stack, speed=60.0, start=datetime.now(UTC) - timedelta(days=1))
    watered: list[tuple[str | None, float, float]] = []
    irrigate = sim.model.irrigate
    sim.model.irrigate = lambda b, v, t0, t1: (watered.append((v, t0, t1)), irrigate(b, v, t0, t1))[
        -1
    ]  # type: ignore[method-assign]
    control = make_client(f"ctl-{uuid.uuid4().hex[:6]}", stack.mqtt("orchard-control"))
    cmd_topic = f"orchard/{farm}/vb/vb-ctl/command"
    async with Watcher(stack.mqtt("orchard-control"), f"orchard/{farm}/vb/vb-ctl/ack") as acks:
        stop = asyncio.Event()
        running = asyncio.create_task(sim.run(stop))
        await connect(control, stack.mqtt("orchard-control"))
        await asyncio.sleep(1.0)  # controller connected and subscribed

        def answers(command_id: str) -> list[ValveAck]:
            parsed = [ValveAck.model_validate_json(p) for _, p, _ in acks.messages]
            return [a for a in parsed if a.command_id == command_id]

        ok = command("vb-v1", duration_s=120)
        unknown = command("vb-v9", duration_s=60)
        too_long = command("vb-v2", duration_s=5 * 3600)
        sim_now = datetime.fromtimestamp(sim.clock.now(), UTC)
        expired = command("vb-v2", duration_s=60, expires_at=sim_now - timedelta(minutes=5))
        for c in (ok, unknown, too_long, expired):
            control.publish(cmd_topic, c.model_dump_json(), qos=1)
        control.publish(cmd_topic, b'{"command_id": "incomplete-1", "valve": "vb-v1"}', qos=1)
        control.publish(cmd_topic, b'{"command_id": "broken-json', qos=1)

        assert await acks.wait_for(
            lambda: [a.status for a in answers(ok.command_id)] == ["accepted", "completed"],
            timeout=15,
        )
        # The controller's clock is the simulator's: the run lasted 120 simulated seconds.
        accepted, completed = answers(ok.command_id)
        assert 100 <= (completed.ts - accepted.ts).total_seconds() <= 200
        assert [(v, t1 - t0) for v, t0, t1 in watered] == [("vb-v1", 120)]

        for c, words in (
            (unknown, "unknown valve"),
            (too_long, "exceeds the maximum"),
            (expired, "expired"),
        ):
            (ack,) = answers(c.command_id)
            assert ack.status == "rejected" and words in (ack.reason or ""), ack
        # Invalid commands are refused too, under their id when it can be read.
        assert await acks.wait_for(lambda: bool(answers("unreadable")), timeout=5)
        for command_id in ("incomplete-1", "unreadable"):
            (refused,) = answers(command_id)
            assert refused.status == "rejected" and "invalid command" in (refused.reason or "")

        # A resent command is acknowledged again, never executed twice.
        control.publish(cmd_topic, ok.model_dump_json(), qos=1)
        assert await acks.wait_for(lambda: len(answers(ok.command_id)) == 3, timeout=5)
        assert answers(ok.command_id)[-1].status == "completed"
        assert len(watered) == 1

        stop.set()
        await running
        await control.disconnect()


async def test_faults_on_the_wire_stuck_is_constant_malformed_is_not_json(
    tmp_path: Path, stack: LiveStack
) -> None:
    farm = "ft-farm"
    orchard = load_orchard(write_orchard(tmp_path, farm, "fb", 3))
    sim = sim_for(
        orchard,
        stack,
        speed=3600.0,
        start=datetime.now(UTC) - timedelta(days=1),
        faults={"fb-n01": {"malformed": 1.0}, "fb-n02": {"stuck": 0.0}},
    )
    async with Watcher(stack.mqtt("orchard-control"), f"orchard/{farm}/+/+/telemetry") as watcher:
        stop = asyncio.Event()
        stats = await sim.run(stop, duration_s=3.0)
        await watcher.wait_for(lambda: len(watcher.messages) >= 2 * 20, timeout=5)
    by_node: dict[str, list[bytes]] = {}
    for topic, payload, _ in watcher.messages:
        by_node.setdefault(topic.split("/")[3], []).append(payload)
    assert len(by_node["fb-n01"]) >= 20 and stats.readings_malformed >= 20
    for payload in by_node["fb-n01"]:
        try:
            json.loads(payload)
        except ValueError:
            continue
        raise AssertionError(f"malformed fault sent valid JSON: {payload!r}")
    stuck = [r for p in by_node["fb-n02"] for r in telemetry_readings(parse_telemetry(p))]
    healthy = [r for p in by_node["fb-n03"] for r in telemetry_readings(parse_telemetry(p))]
    assert len(stuck) >= 20 and len(healthy) >= 20
    assert len({(r.temperature, r.humidity, r.soil_moisture) for r in stuck}) == 1
    assert len({r.temperature for r in healthy}) > 10


async def test_sigterm_stops_cleanly_and_publishes_offline(
    tmp_path: Path, stack: LiveStack
) -> None:
    farm = "st-farm"
    path = write_orchard(tmp_path, farm, "st", 1)
    node = "st-n01"
    stack.add_devices([node])
    env = dict(
        os.environ,
        ORCHARD_ORCHARD_FILE=str(path),
        ORCHARD_DEVICE_SECRET=stack.device_secret,
        ORCHARD_MQTT__PORT=str(stack.broker.port),
        PYTHONPATH=str(PROJECT_ROOT),
    )
    topic = f"orchard/{farm}/st/{node}/status"
    async with Watcher(stack.mqtt("orchard-control"), topic) as watcher:
        proc = subprocess.Popen(
            [sys.executable, "-m", "firmware_sim"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert await watcher.wait_for(lambda: bool(watcher.messages), timeout=20)
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.wait, 15) == 0
            assert await watcher.wait_for(lambda: len(watcher.messages) >= 2, timeout=5)
        finally:
            proc.kill()
            proc.wait()
    last = Status.model_validate_json(watcher.messages[-1][1])
    # Published by the node on its way out (a Last Will carries no timestamp).
    assert last.state == "offline" and last.ts is not None


async def test_high_speed_catch_up_delivers_every_reading_in_order(
    tmp_path: Path, stack: LiveStack
) -> None:
    farm = "hs-farm"
    orchard = load_orchard(write_orchard(tmp_path, farm, "hs", 3))
    taken: dict[str, list[tuple[int, datetime]]] = {}
    sim = sim_for(
        orchard,
        stack,
        speed=86400.0,  # a simulated day per second: far more instants than messages
        start=datetime.now(UTC) - timedelta(days=30),
        on_reading=lambda node, r: taken.setdefault(node, []).append((r.seq, r.ts)),
    )
    async with Watcher(stack.mqtt("orchard-control"), f"orchard/{farm}/+/+/telemetry") as w:
        stats = await sim.run(asyncio.Event(), duration_s=2.0)
        expected = sum(len(v) for v in taken.values())

        def readings() -> list[tuple[str, int, datetime]]:
            out = []
            for _, payload, _ in w.messages:
                message = parse_telemetry(payload)
                out += [(message.node, r.seq, r.ts) for r in telemetry_readings(message)]
            return out

        await w.wait_for(lambda: len(readings()) >= expected, timeout=10)
    assert stats.readings_dropped_buffer == 0
    assert expected > 3 * 1000  # over two simulated days per node
    # Batched, not one message per reading. How many instants fit in one batch depends
    # on how busy the machine is, so only the fact of batching is asserted.
    sizes = [len(telemetry_readings(parse_telemetry(p))) for _, p, _ in w.messages]
    assert max(sizes) > 1 and len(w.messages) < expected
    got = readings()
    for node, mine in taken.items():
        assert [(s, ts) for n, s, ts in got if n == node] == mine


async def test_accelerated_clock_catches_up_and_never_publishes_the_future(
    tmp_path: Path, stack: LiveStack
) -> None:
    farm = "cu-farm"
    orchard = load_orchard(write_orchard(tmp_path, farm, "cu", 2))
    sim = sim_for(orchard, stack, speed=7200.0, start=datetime.now(UTC) - timedelta(hours=2))
    arrivals: list[tuple[datetime, datetime]] = []
    async with Watcher(stack.mqtt("orchard-control"), f"orchard/{farm}/+/+/telemetry") as w:
        w.client.on_message = lambda c, t, payload, q, p: (
            arrivals.extend(
                (r.ts, datetime.now(UTC)) for r in telemetry_readings(parse_telemetry(payload))
            ),
            0,
        )[-1]
        await sim.run(asyncio.Event(), duration_s=3.0)
        await w.wait_for(lambda: len(arrivals) >= 2 * 120, timeout=5)
    assert len(arrivals) >= 2 * 120  # two simulated hours at one reading a minute
    assert all(ts <= arrived for ts, arrived in arrivals)
    # After catching up it runs in real time: the last readings are from just now.
    assert datetime.now(UTC) - max(ts for ts, _ in arrivals) < timedelta(seconds=70)
