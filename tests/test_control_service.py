"""The control service end to end: real InfluxDB, real broker, the simulator's valve controller."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from datetime import date, timedelta
from pathlib import Path

import pytest

from control.alarms import Alarms
from control.clock import FixedClock
from control.commands import list_commands
from control.service import ControlService, ControlSettings
from control.store import open_store
from control.thresholds import Thresholds
from control.webhooks import WebhookSettings, list_deliveries
from orchard.influx import SyncInfluxClient
from orchard.settings import PROJECT_ROOT, InfluxSettings
from tests.conftest import LiveStack
from tests.test_control_commands import Clock, Controller, until
from tests.test_control_helpers import T0, small_orchard, write_readings


def _settings(stack: LiveStack, influx_db: InfluxSettings, state_url: str) -> ControlSettings:
    return ControlSettings(
        demo=True,
        influx=influx_db,
        mqtt=stack.mqtt("orchard-control"),
        state_url=state_url,
        control_step_s=60,
        webhook=WebhookSettings(url="http://127.0.0.1:9/hook", secret="s"),
    )


async def test_drying_block_is_watered_frost_alarmed_and_override_applies_next_tick(
    stack: LiveStack, influx_db: InfluxSettings, influx: SyncInfluxClient, tmp_path: Path
) -> None:
    farm = f"farm-{uuid.uuid4().hex[:6]}"
    orchard = small_orchard(farm=farm)
    block = orchard.blocks[0]

    def soil(m: float) -> float:
        return (0.215 if m < 180 else 0.19) + 0.0005 * ((m % 7) - 3) / 3

    def temperature(m: float) -> float:
        # The air cools over two readings: a single jump of more than 8 °C would be held
        # back one reading as a possible spike (engine.SPIKE_LIMIT).
        if m == 329:
            return 5.0
        return -2.0 if 330 <= m < 360 else 12.0 + 0.01 * (m % 13)

    write_readings(influx, block, 420, soil=soil, temperature=temperature, farm=farm)
    store = open_store(f"sqlite:///{tmp_path}/state.db")
    clock = FixedClock(T0 + timedelta(hours=3))
    service = ControlService(
        _settings(stack, influx_db, f"sqlite:///{tmp_path}/state.db"),
        orchard=orchard,
        engine=store,
        clock=clock,
    )
    sim_clock = Clock()
    sim_clock.now = T0 + timedelta(hours=4)
    controller = Controller(stack, farm, "b1-ctl", sim_clock, valves=("b1-v1",))
    await controller.up()
    await service.link.start()
    await service.link.wait_connected()
    try:
        report = await service.tick()
        assert not report.decisions  # below the trigger for minutes only

        # An agronomist lowers the trigger below the current soil moisture: the next tick
        # (no restart) uses it and does not irrigate.
        Thresholds(store, orchard).set_overrides(
            block.id, {"soil_trigger": 0.18}, who="maria", reason="test"
        )
        clock.set(T0 + timedelta(hours=4, minutes=30))
        report = await service.tick()
        assert not [d for d in report.decisions if d.action == "irrigate"]

        Thresholds(store, orchard).set_overrides(block.id, {"soil_trigger": None}, who="maria")
        clock.set(T0 + timedelta(hours=5))
        report = await service.tick()
        [decision] = [d for d in report.decisions if d.action == "irrigate"]
        assert "0.210" in decision.reason
        [command] = report.commands
        assert command.valve == "b1-v1" and command.duration_s == decision.duration_s
        assert command.issued_at == clock.now()
        await until(lambda: service.link.online("b1-ctl") is True)
        await until(lambda: list_commands(store)[0].state == "acknowledged", pump=service.link)
        assert controller.runs == ["b1-v1"]

        # Frost from 5:30 for 30 minutes: alarmed within two ticks after the 10-minute minimum.
        clock.set(T0 + timedelta(hours=5, minutes=41))
        await service.tick()
        clock.set(T0 + timedelta(hours=5, minutes=42))
        await service.tick()
        alarms = Alarms(store)
        frost = alarms.get_active("frost", block.id)
        assert frost is not None and frost.severity == "major"
        assert frost.started_at == T0 + timedelta(hours=5, minutes=40)
        assert any(d.event_type == "alarm.raised" for d in list_deliveries(store))
        # Warm again: the frost alarm clears after its clear duration.
        clock.set(T0 + timedelta(hours=7))
        await service.tick()
        assert alarms.get_active("frost", block.id) is None
        assert [e.event for e in alarms.history(frost.id)] == ["raised", "cleared"]

        # The next day: daily agronomy for the 20th.
        clock.set(T0 + timedelta(days=1, hours=1))
        await service.tick()
        await service.flush_lines()
    finally:
        await service.link.stop()
        await controller.down()
        await service.influx.aclose()

    q = influx.query_one
    events = [
        r["event"]
        for s in q(f"SELECT event FROM irrigation WHERE farm = '{farm}'")
        for r in s.rows()
    ]
    assert "decision_irrigate" in events and "command_acknowledged" in events
    alarm_events = [
        r["event"]
        for s in q(f"SELECT event FROM alarm WHERE type = 'frost' AND farm = '{farm}'")
        for r in s.rows()
    ]
    assert alarm_events == ["raised", "cleared"]
    states = q(
        f"SELECT trigger, soil_moisture, healthy_nodes FROM block_state WHERE farm = '{farm}'"
    )
    triggers = [r["trigger"] for r in states[0].rows()]
    assert 0.18 in triggers and 0.21 in triggers
    [daily] = q(f"SELECT * FROM block_daily WHERE farm = '{farm}'")[0].rows()
    assert daily["time"] == int((T0.timestamp()) * 1000)
    assert daily["et0_method"] == "penman_monteith" and daily["et0"] > 0
    assert daily["gdd"] > 0 and daily["kc"] == pytest.approx(
        block.crop_profile.kc((date(2026, 5, 20) - block.bloom_date).days), abs=1e-3
    )


def test_service_process_stops_cleanly_on_sigterm(
    stack: LiveStack, influx_db: InfluxSettings, tmp_path: Path
) -> None:
    mqtt = stack.mqtt("orchard-control")
    env = dict(os.environ)
    env.update(
        ORCHARD_DEMO="true",
        ORCHARD_MQTT__HOST=mqtt.host,
        ORCHARD_MQTT__PORT=str(mqtt.port),
        ORCHARD_MQTT__USERNAME="orchard-control",
        ORCHARD_MQTT__PASSWORD=mqtt.password.get_secret_value() if mqtt.password else "",
        ORCHARD_INFLUX__URL=influx_db.url,
        ORCHARD_INFLUX__DATABASE=influx_db.database,
        ORCHARD_STATE_URL=f"sqlite:///{tmp_path}/state.db",
        ORCHARD_CONTROL_TICK_S="0.5",
        PYTHONPATH=str(PROJECT_ROOT),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "control"],
        env=env,
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        # Wait until it runs ticks, then ask it to stop.
        for raw in proc.stdout:
            lines.append(raw.decode())
            if "control starting" in lines[-1]:
                break
        asyncio.run(asyncio.sleep(1.5))
        assert proc.poll() is None, "".join(lines)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = "".join(lines) + (proc.stdout.read().decode() if proc.stdout else "")
    assert code == 0, output
    assert "control stopped" in output and "Traceback" not in output


async def test_data_clock_follows_the_newest_reading(
    influx_db: InfluxSettings, influx: SyncInfluxClient
) -> None:
    from control.clock import DataClock
    from orchard.influx import InfluxClient

    farm = f"farm-{uuid.uuid4().hex[:6]}"
    block = small_orchard(farm=farm).blocks[0]
    client = InfluxClient(influx_db)
    clock = DataClock(client, farm)
    try:
        await clock.refresh()
        assert not clock.ready
        write_readings(influx, block, 30, soil=lambda m: 0.25, farm=farm)
        await clock.refresh()
        assert clock.now() == T0 + timedelta(minutes=29)
        # A late, older reading never moves the clock back.
        write_readings(
            influx, block, 5, soil=lambda m: 0.25, farm=farm, start=T0 - timedelta(days=1)
        )
        await clock.refresh()
        assert clock.now() == T0 + timedelta(minutes=29)
    finally:
        await client.aclose()


async def test_watered_block_recovers_and_its_dry_alarm_clears(
    stack: LiveStack, influx_db: InfluxSettings, influx: SyncInfluxClient, tmp_path: Path
) -> None:
    farm = f"farm-{uuid.uuid4().hex[:6]}"
    orchard = small_orchard(farm=farm)
    block = orchard.blocks[0]

    def soil(m: float) -> float:
        # Dry (below the 0.165 "too dry" level) until the water arrives at 4 h, then wet.
        base = 0.16 if m < 240 else min(0.27, 0.16 + 0.004 * (m - 240))
        return base + 0.0005 * ((m % 7) - 3) / 3

    write_readings(influx, block, 360, soil=soil, farm=farm)
    store = open_store(f"sqlite:///{tmp_path}/state.db")
    clock = FixedClock(T0 + timedelta(minutes=70))
    service = ControlService(
        _settings(stack, influx_db, f"sqlite:///{tmp_path}/state.db"),
        orchard=orchard,
        engine=store,
        clock=clock,
    )
    sim_clock = Clock()
    sim_clock.now = T0 + timedelta(minutes=71)
    controller = Controller(stack, farm, "b1-ctl", sim_clock, valves=("b1-v1",))
    await controller.up()
    await service.link.start()
    await service.link.wait_connected()
    try:
        report = await service.tick()
        [command] = report.commands
        await until(lambda: service.link.online("b1-ctl") is True)
        await until(lambda: list_commands(store)[0].state == "acknowledged", pump=service.link)
        clock.set(T0 + timedelta(minutes=130))
        await service.tick()
        alarms = Alarms(store)
        dry = alarms.get_active("soil_dry", block.id)
        assert dry is not None and "too dry" in dry.message
        clock.set(T0 + timedelta(minutes=330))
        report = await service.tick()
        # The rise that follows our own irrigation is not mistaken for rain.
        assert not [d for d in report.decisions if d.code == "skip_rain"]
        assert alarms.get_active("soil_dry", block.id) is None
        assert alarms.get(dry.id).cleared_by == "control"
        assert controller.runs == ["b1-v1"] and command.state == "queued"
    finally:
        await service.link.stop()
        await controller.down()
        await service.influx.aclose()


async def test_a_block_failing_half_way_loses_no_alarm_of_the_others(
    stack: LiveStack,
    influx_db: InfluxSettings,
    influx: SyncInfluxClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """b2 fails in its irrigation step, after the alarm rules ran for every block: the frost
    alarms of the pass that failed must still be raised by the block-by-block retry."""
    import control.engine as engine_module
    from orchard.layout import Orchard

    farm = f"farm-{uuid.uuid4().hex[:6]}"
    one = small_orchard(farm=farm, controller=False).blocks[0]
    two = one.model_copy(update={"id": "b2"})
    orchard = Orchard(farm=small_orchard(farm=farm).farm, blocks=[one, two])

    def temperature(m: float) -> float:
        return 12.0 + 0.01 * (m % 13) if m < 100 else (5.0 if m == 100 else -2.0)

    for block in orchard.blocks:
        write_readings(
            influx,
            block,
            180,
            soil=lambda m: 0.15 + 0.0005 * (m % 3),
            temperature=temperature,
            farm=farm,
        )
    real_decide = engine_module._decide

    def broken(block, *args, **kwargs):  # type: ignore[no-untyped-def]
        if block.id == "b2":
            raise ZeroDivisionError("a corrupt profile in b2")
        return real_decide(block, *args, **kwargs)

    monkeypatch.setattr(engine_module, "_decide", broken)
    store = open_store(f"sqlite:///{tmp_path}/state.db")
    service = ControlService(
        _settings(stack, influx_db, f"sqlite:///{tmp_path}/state.db"),
        orchard=orchard,
        engine=store,
        clock=FixedClock(T0 + timedelta(minutes=170)),
    )
    service.evaluators = []
    try:
        # The first tick evaluates only the last bins; the frost started an hour earlier
        # and is raised there (its minimum duration has long passed).
        report = await service.tick()
    finally:
        await service.influx.aclose()
    assert report.failed_blocks == ["b2"]
    assert Alarms(store).get_active("frost", "b1") is not None
    assert {d.block for d in report.decisions} == {"b1"}


async def test_a_failing_block_does_not_stop_the_others(
    stack: LiveStack,
    influx_db: InfluxSettings,
    influx: SyncInfluxClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import control.service as service_module
    from orchard.layout import Orchard

    farm = f"farm-{uuid.uuid4().hex[:6]}"
    one = small_orchard(farm=farm, controller=False).blocks[0]
    two = one.model_copy(update={"id": "b2"})
    orchard = Orchard(farm=small_orchard(farm=farm).farm, blocks=[one, two])
    for block in orchard.blocks:
        write_readings(influx, block, 180, soil=lambda m: 0.15 + 0.0005 * (m % 3), farm=farm)
    real_evaluate = service_module.evaluate

    def flaky(grid, table, *args, **kwargs):  # type: ignore[no-untyped-def]
        if "b2" in grid.blocks:
            raise ValueError("corrupt profile")
        return real_evaluate(grid, table, *args, **kwargs)

    monkeypatch.setattr(service_module, "evaluate", flaky)
    service = ControlService(
        _settings(stack, influx_db, f"sqlite:///{tmp_path}/state.db"),
        orchard=orchard,
        engine=open_store(f"sqlite:///{tmp_path}/state.db"),
        clock=FixedClock(T0 + timedelta(minutes=170)),
    )
    try:
        report = await service.tick()
    finally:
        await service.influx.aclose()
    assert report.failed_blocks == ["b2"]
    assert {d.block for d in report.decisions} == {"b1"}
