"""Backtest equals live: the control loop ticks through a simulated week of stored readings,
then the API's backtest replays the same week with the same thresholds. Both must find
the same alarms and the same irrigation runs.

The loop runs advise-only (``control_irrigate=False``): its decisions are the engine's.
With commands on and no controller to deliver them, a queued command keeps its block busy
from the tick that issued it (``ControlService._engine_state``), which a replay of the
readings cannot know; that difference is real and expected, and is not what this tests.
Ticks are 3 hours of data apart, as under `make up`'s accelerated clock."""

from __future__ import annotations

import math
import tempfile
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from api.auth import Role, create_token
from api.settings import ApiSettings
from api.testing import running_api, synthetic_telemetry
from control.alarms import Alarms
from control.clock import FixedClock
from control.service import ControlService, ControlSettings
from control.store import irrigation_decision
from orchard.db import create_engine, init_db
from orchard.influx import SyncInfluxClient, quote_ident
from orchard.lineprotocol import encode_point, to_ns
from orchard.settings import CONFIG_DIR, InfluxSettings
from tests.conftest import LiveStack

FARM, BLOCK = "sunny-hill", "apple-east"
NODES = [f"{BLOCK}-n0{i}" for i in range(1, 6)]
DAYS = 7
TICK = timedelta(hours=3)
STEP_S = 60


@pytest.fixture
def week(stack: LiveStack) -> Iterator[tuple[InfluxSettings, str, datetime, datetime]]:
    database = f"live_{uuid.uuid4().hex[:10]}"
    settings = InfluxSettings(url=stack.influxd.url, database=database)
    # Whole hours, so the live loop's step-aligned bins and the replay's are the same.
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    start = end - timedelta(days=DAYS)
    tmp = Path(tempfile.mkdtemp(prefix="orchard-live-"))
    with SyncInfluxClient(settings) as influx:
        influx.create_database()
        influx.write(synthetic_telemetry(FARM, BLOCK, NODES, start, DAYS, STEP_S, seed=11))
        # Two heat episodes (points overwrite the temperature of the same instants), so the
        # week has alarms that are raised and cleared, once across a tick boundary.
        heat = []
        for offset in (timedelta(days=2, hours=12), timedelta(days=4, hours=1, minutes=30)):
            for minute in range(0, 150):
                ts = to_ns(start + offset + timedelta(minutes=minute))
                for node in NODES:
                    tags = {"farm": FARM, "block": BLOCK, "node": node}
                    heat.append(encode_point("telemetry", tags, {"temperature": 36.5}, ts))
        influx.write(heat)
        yield settings, f"sqlite:///{tmp / 'state.db'}", start, end
        influx.query(f"DROP DATABASE {quote_ident(database)}", database=False)


async def test_backtest_finds_what_the_live_loop_did(
    stack: LiveStack, week: tuple[InfluxSettings, str, datetime, datetime]
) -> None:
    influx, state_url, start, end = week
    engine = create_engine(state_url)
    init_db(engine)
    control = ControlService(
        ControlSettings(
            demo=True,
            influx=influx,
            mqtt=stack.mqtt("orchard-control"),
            state_url=state_url,
            orchard_file=CONFIG_DIR / "orchard.toml",
            control_step_s=STEP_S,
            control_irrigate=False,
        ),
        engine=engine,
        clock=FixedClock(start),
    )
    control.evaluators = []  # harvest readiness is not part of this comparison
    clock = control.clock
    assert isinstance(clock, FixedClock)
    try:
        now = start + timedelta(seconds=2 * STEP_S)
        while now <= end:
            clock.set(now)
            await control.tick()
            now += TICK
        if now - TICK < end:
            clock.set(end)
            await control.tick()
    finally:
        await control.influx.aclose()

    live_alarms = sorted(
        (a.type, a.subject, a.started_at, a.cleared_at)
        for a in Alarms(engine).list(block=BLOCK, limit=10_000)
    )
    with engine.connect() as conn:
        live_runs = sorted(
            row.ts
            for row in conn.execute(
                sa.select(irrigation_decision.c.ts).where(
                    irrigation_decision.c.block == BLOCK,
                    irrigation_decision.c.action == "irrigate",
                )
            )
        )

    api_settings = ApiSettings(
        demo=True,
        influx=influx,
        mqtt=stack.mqtt("orchard-api"),
        state_url=state_url,
        orchard_file=CONFIG_DIR / "orchard.toml",
        broker_passwd_file=Path(tempfile.mkdtemp()) / "passwd",
        control_step_s=STEP_S,  # the step a backtest calls raw
    )
    _, token = create_token(engine, "maria", Role.agronomist)
    with running_api(api_settings) as url:
        r = httpx.post(
            f"{url}/api/v1/blocks/{BLOCK}/backtest",
            headers={"Authorization": f"Bearer {token}"},
            json={
                "overrides": {},
                "start": start.isoformat(),
                "end": end.isoformat(),
                # A week is past the raw-step default: ask for the loop's own step.
                "raw": True,
            },
            timeout=120,
        )
    assert r.status_code == 200, r.text
    assert r.json()["step_s"] == STEP_S and "raw readings" in r.json()["step_note"]
    current = r.json()["current"]
    replay_alarms = sorted(
        (
            a["type"],
            a["subject"],
            datetime.fromisoformat(a["raised_at"]),
            datetime.fromisoformat(a["cleared_at"]) if a["cleared_at"] else None,
        )
        for a in current["alarms"]
    )
    replay_runs = sorted(datetime.fromisoformat(run["at"]) for run in current["irrigation"])

    # The week must exercise both: irrigation and alarms, or the comparison proves nothing.
    assert len(live_runs) >= 1, live_runs
    assert sum(a[0] == "heat" and a[3] is not None for a in live_alarms) == 2, live_alarms
    assert replay_runs == live_runs
    assert [a[:3] for a in replay_alarms] == [a[:3] for a in live_alarms]
    # Clear times agree for every episode that ended inside the week.
    assert [a[3] for a in replay_alarms] == [a[3] for a in live_alarms]
    assert math.isclose(
        current["water_m3"],
        sum(r["water_m3"] for r in current["irrigation"]),
        abs_tol=0.05,
    )
    engine.dispose()
