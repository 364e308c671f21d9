"""Simulator building blocks without a broker: clock, settings parsing, valve logic."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from firmware_sim.faults import FaultSpecError, parse_fault_items, resolve
from firmware_sim.runtime import SimClock, SimConfig, Simulator, parse_start
from firmware_sim.valves import ValveLogic
from firmware_sim.weather import parse_events
from orchard.layout import load_orchard
from orchard.models import ValveCommand
from orchard.settings import MqttSettings
from orchard.stack import free_port
from tests.test_sim_mqtt import write_orchard

NOW = datetime(2026, 7, 1, 12, tzinfo=UTC)


def test_clock_accelerates_then_never_runs_ahead_of_the_wall() -> None:
    wall = [NOW.timestamp()]
    mono = [100.0]
    clock = SimClock(
        (NOW - timedelta(hours=2)).timestamp(),
        3600.0,
        wall=lambda: wall[0],
        monotonic=lambda: mono[0],
    )
    mono[0] += 1.0
    wall[0] += 1.0
    assert clock.now() == pytest.approx((NOW - timedelta(hours=1)).timestamp())
    assert clock.real_delay((NOW - timedelta(minutes=30)).timestamp()) == pytest.approx(0.5)
    mono[0] += 10.0
    wall[0] += 10.0
    assert clock.now() == wall[0]  # caught up: real time from here
    assert clock.caught_up
    assert clock.real_delay(wall[0] + 5.0) == pytest.approx(5.0)


def test_start_parsing() -> None:
    assert parse_start("now", NOW) == NOW
    assert parse_start("-180d", NOW) == NOW - timedelta(days=180)
    assert parse_start("-12h", NOW) == NOW - timedelta(hours=12)
    assert parse_start("2026-04-01T00:00:00", NOW) == datetime(2026, 4, 1, tzinfo=UTC)
    assert parse_start("2026-04-01T08:00:00+08:00", NOW) == datetime(2026, 4, 1, tzinfo=UTC)
    for bad in ("yesterday", "+3d", "2027-01-01T00:00:00Z"):
        with pytest.raises(ValueError):
            parse_start(bad, NOW)


def test_fault_and_weather_specs_are_checked() -> None:
    selection = parse_fault_items(["a-n01=stuck,spikes:0.2;b/*=clock_skew:-60", "*=dropouts"])
    nodes, blocks = ["a-n01", "a-n02", "b-n01"], ["a", "a", "b"]
    resolved = resolve(selection, nodes, blocks)
    assert resolved["a-n01"] == {"stuck": 0.0, "spikes": 0.2, "dropouts": 0.3}
    assert resolved["b-n01"] == {"clock_skew": -60.0, "dropouts": 0.3}
    for bad in ("a-n01", "a-n01=melting", "a-n01=spikes:2", "a-n01=spikes:x"):
        with pytest.raises(FaultSpecError):
            parse_fault_items([bad])
    with pytest.raises(FaultSpecError, match="unknown sensor node"):
        resolve(parse_fault_items(["zz=stuck"]), nodes, blocks)
    events = parse_events("frost@2026-04-20=-5; heat@2026-07-10:4")
    assert [(e.kind, e.days, e.amount) for e in events] == [("frost", 1, -5.0), ("heat", 4, 39.0)]
    with pytest.raises(ValueError, match="bad weather event"):
        parse_events("snow@2026-01-01")


def cmd(command_id: str, valve: str = "v1", action: str = "open", duration_s: int = 600) -> bytes:
    return (
        ValveCommand(
            command_id=command_id,
            valve=valve,
            action=action,  # type: ignore[arg-type]
            duration_s=duration_s,
            issued_at=NOW,
            expires_at=NOW + timedelta(minutes=5),
        )
        .model_dump_json()
        .encode()
    )


def test_valve_logic_runs_once_supersedes_and_closes() -> None:
    water: list[tuple[str, float, float]] = []
    stops: list[tuple[str, float]] = []
    logic = ValveLogic(
        "ctl",
        ["v1", "v2"],
        water=lambda v, a, b: water.append((v, a, b)),
        stop=lambda v, at: stops.append((v, at)),
    )
    t = NOW.timestamp()
    assert [a.status for a in logic.handle(cmd("first-0001"), t)] == ["accepted"]
    assert [a.status for a in logic.handle(cmd("first-0001"), t + 5)] == ["accepted"]  # resent
    assert len(water) == 1
    # A newer open of the same valve completes the first run.
    acks = logic.handle(cmd("second-001", duration_s=1200), t + 60)
    assert [(a.command_id, a.status) for a in acks] == [
        ("first-0001", "completed"),
        ("second-001", "accepted"),
    ]
    assert "superseded" in (acks[0].reason or "")
    acks = logic.handle(cmd("close-0001", action="close", duration_s=0), t + 120)
    assert [(a.command_id, a.status) for a in acks] == [
        ("second-001", "completed"),
        ("close-0001", "accepted"),
        ("close-0001", "completed"),
    ]
    assert stops == [("v1", t + 60), ("v1", t + 120)]
    assert logic.open_valves() == []
    # A run ends on the controller's clock.
    logic.handle(cmd("third-0001", valve="v2", duration_s=300), t + 200)
    assert logic.tick(t + 400) == []
    (done,) = logic.tick(t + 500)
    assert done.status == "completed" and done.ts == datetime.fromtimestamp(t + 500, UTC)
    (zero,) = logic.handle(cmd("zero-00001", duration_s=0), t + 250)
    assert zero.status == "rejected" and "duration" in (zero.reason or "")


async def test_store_and_forward_buffer_drops_the_oldest_when_full(tmp_path: Path) -> None:
    orchard = load_orchard(write_orchard(tmp_path, "bf-farm", "bf", 2))
    taken: dict[str, list[int]] = {}
    sim = Simulator(
        orchard,
        MqttSettings(port=free_port(), reconnect_min_s=0.1, reconnect_max_s=0.2),  # no broker
        "secret",
        SimConfig(start=NOW, speed=3600.0, interval_s=60.0, buffer_size=5, drain_s=0.1),
        on_reading=lambda node, r: taken.setdefault(node, []).append(r.seq),
    )
    stats = await sim.run(asyncio.Event(), duration_s=0.5)
    assert stats.readings_taken >= 2 * 10
    assert stats.readings_dropped_buffer == stats.readings_taken - 2 * 5
    assert stats.readings_acked == 0 and stats.backlog == 2 * 5
    for node in sim.sensors:
        # The newest readings are kept, in order.
        assert [r["seq"] for r, _ in node.pending] == taken[node.node_id][-5:]
