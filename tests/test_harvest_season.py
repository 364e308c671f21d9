"""A simulated season, offline generator → InfluxDB → daily harvest evaluation, replayed.

Real influxd (session fixture), SQLite state store. The forecast error bounds below are
the measured figures of ``python -m control.harvest.bench`` (docs/harvest.md) with some
slack, not wishes: the engine's readiness rule needs three in four healthy nodes past the
threshold while the simulator's ready date is "more than half", so the engine is
expected a few days later than the simulator's date, never earlier.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from control.alarms import Alarms
from control.harvest import (
    ALARM_TYPE,
    HarvestConfig,
    HarvestEngine,
    ReadinessState,
    block_states,
    list_lots,
    mark_harvested,
)
from control.harvest.bench import demo_subset, load_season, replay, season_span
from control.harvest.tables import lot
from control.store import open_store
from firmware_sim.season import ready_dates
from firmware_sim.weather import WeatherEvent
from orchard.influx import InfluxClient, SyncInfluxClient
from orchard.settings import InfluxSettings

SEED = 7


@pytest.fixture
def state(tmp_path: Path) -> sa.Engine:
    return open_store(f"sqlite:///{tmp_path / 'state.db'}")


def test_season_ripens_blocks_lists_once_and_forecasts(
    influx: SyncInfluxClient, state: sa.Engine
) -> None:
    orchard = demo_subset(("apple-east", "cherry-north"))
    tz = ZoneInfo(orchard.farm.timezone)
    truth = ready_dates(orchard, seed=SEED)
    assert all(truth.values())
    start, end = season_span(orchard, truth, after_days=8)
    points = load_season(influx, orchard, start, end, seed=SEED, step_s=3600)
    assert points > 20_000

    harvest = HarvestEngine(orchard, state)
    result = replay(
        harvest,
        influx,
        start.astimezone(tz).date(),
        (end - timedelta(seconds=1)).astimezone(tz).date(),
    )

    for block in orchard.blocks:
        true_day = truth[block.id]
        assert true_day is not None
        states = [r.state for r in result.days[block.id]]
        ready_day = result.ready_day(block.id)
        assert ready_day is not None, f"{block.id} never became ready"
        lag = (ready_day - true_day).days
        print(f"{block.id}: simulator ready {true_day}, engine ready {ready_day} ({lag:+d} d)")
        assert 0 <= lag <= 7
        # The grower is warned before: ready soon comes first, not-ready never follows ready.
        first_soon = states.index(ReadinessState.READY_SOON)
        assert first_soon < states.index(ReadinessState.READY)
        assert ReadinessState.NOT_READY not in states[states.index(ReadinessState.READY) :]

        for lead, bound in ((14, 8), (7, 5)):
            error = result.forecast_error(block.id, true_day, lead)
            made = result.on(block.id, true_day - timedelta(days=lead))
            print(f"  forecast made {lead} d before: {made.forecast if made else None} ({error})")
            assert error is not None, made.reason if made else "no evaluation that day"
            assert -bound <= error <= bound

        alarm = Alarms(state).get_active(ALARM_TYPE, block.id)
        assert alarm is not None and alarm.severity == "major"

    # Exactly one lot per ready block, with a plausible quantity and grade.
    lots = list_lots(state, farm=orchard.farm.id)
    assert sorted(x.block for x in lots) == sorted(b.id for b in orchard.blocks)
    created = {
        row["lot"]: row
        for row in influx.query_one(
            'SELECT "event", "grade", "quantity_kg", "lot" FROM "listing" WHERE "event" = \'created\''
        )[0].rows()
    }
    for x in lots:
        block = orchard.block(x.block)
        full = block.trees * block.crop_profile.yield_kg_per_tree
        assert 0.75 * full <= x.quantity_kg <= full
        # Listed at a good grade; re-graded as the fruit goes on ripening on the tree.
        print(f"{x.lot}: listed grade {created[x.lot]['grade']}, now {x.grade} v{x.version}")
        assert created[x.lot]["grade"] in ("A", "B"), created[x.lot]
        assert x.grade in ("A", "B", "C")
        assert (
            x.version == 1
            or x.grade != created[x.lot]["grade"]
            or x.quantity_kg != (created[x.lot]["quantity_kg"])
        )
        assert x.window_start == result.ready_day(x.block)
        assert x.evidence["ready_nodes"] >= 0.75 * x.evidence["healthy_nodes"]
        assert block.variety.title() in x.title and "kg" in x.description
        assert x.state == "draft"

    # Dashboards: one readiness point per block per evaluated day, and the listing events.
    days = len(result.days["apple-east"])
    counts = influx.query_one('SELECT count("ready_share") FROM "readiness" GROUP BY "block"')
    assert {s.tags["block"]: s.values[0][1] for s in counts} == {
        b.id: len(result.days[b.id]) for b in orchard.blocks
    }
    assert days > 100
    events = influx.query_one('SELECT "event", "lot" FROM "listing"')[0].rows()
    assert [e["event"] for e in events].count("created") == 2

    # The grower marks cherries picked: harvested stays, the alarm clears, the lot stays.
    mark_harvested(state, orchard, "cherry-north", "grower-li")
    later = datetime.combine(end.astimezone(tz).date() + timedelta(days=1), time(0), tz)
    outcome = {o.block: o for o in harvest.evaluate(influx, later)}
    assert outcome["cherry-north"].readiness.state is ReadinessState.HARVESTED
    assert Alarms(state).get_active(ALARM_TYPE, "cherry-north") is None
    with state.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(lot)).scalar_one() == 2


def test_frost_alarm_holds_readiness_back(influx: SyncInfluxClient, state: sa.Engine) -> None:
    orchard = demo_subset(("cherry-north",))
    tz = ZoneInfo(orchard.farm.timezone)
    plain = ready_dates(orchard, seed=SEED)["cherry-north"]
    assert plain is not None
    # A frost night a few days before the block would be ready.
    frost_night = plain - timedelta(days=3)
    weather = [WeatherEvent("frost", frost_night, days=1, value=-4.0)]
    truth = ready_dates(orchard, seed=SEED, weather=weather)["cherry-north"]
    assert truth is not None
    start, end = season_span(orchard, {"cherry-north": truth}, after_days=12)
    load_season(influx, orchard, start, end, seed=SEED, weather=weather, step_s=3600)
    frost_rows = influx.query_one(
        'SELECT min("temperature") FROM "telemetry" WHERE time >= '
        f"'{datetime.combine(frost_night, time(0), tz).astimezone(UTC).isoformat()}' "
        f"AND time < '{datetime.combine(frost_night, time(12), tz).astimezone(UTC).isoformat()}'"
    )
    assert frost_rows[0].values[0][1] < -2.2  # the night really froze below cherry's t10

    harvest = HarvestEngine(orchard, state)
    alarms = Alarms(state)
    before = replay(harvest, influx, start.astimezone(tz).date(), frost_night - timedelta(days=1))
    assert before.ready_day("cherry-north") is None
    # Control raises frost on the block that night (its frost rule); an agronomist
    # acknowledges it, which keeps it active.
    frost = alarms.raise_alarm(
        type="frost",
        subject="cherry-north",
        farm=orchard.farm.id,
        block="cherry-north",
        severity="critical",
        message="air -4.0 °C below t10 -2.2 °C",
        value=-4.0,
        threshold=-2.2,
        now=datetime.combine(frost_night, time(5), tz),
    )
    alarms.acknowledge(frost.alarm.id, "agronomist")
    held = replay(harvest, influx, frost_night, end.astimezone(tz).date() - timedelta(days=2))
    records = held.days["cherry-north"]
    assert all(r.state is not ReadinessState.READY for r in records)
    # The maturity and GDD conditions did hold on the last days: only the alarm held it.
    last = [o for o in held.outcomes if o.block == "cherry-north"][-1].readiness
    assert last.ready_share >= 0.75 and last.gdd_cum >= last.gdd_target
    assert last.blocking_alarms == ("frost",)
    assert any("frost" in reason for reason in last.reasons)
    assert list_lots(state) == []
    assert alarms.get_active(ALARM_TYPE, "cherry-north") is None

    # Fruit inspected, alarm cleared: the next evaluation declares the block ready and lists it.
    alarms.clear(frost.alarm.id, "agronomist", reason="fruit inspected, no damage")
    day = end.astimezone(tz).date() - timedelta(days=1)
    after = replay(harvest, influx, day, day)
    assert after.days["cherry-north"][0].state is ReadinessState.READY
    assert len(list_lots(state)) == 1


async def test_control_loop_hook_matches_the_replay(
    influx: SyncInfluxClient, influx_db: InfluxSettings, tmp_path: Path
) -> None:
    """``tick`` (async client, the control loop's hook) decides as the blocking replay does."""
    orchard = demo_subset(("cherry-north",))
    tz = ZoneInfo(orchard.farm.timezone)
    truth = ready_dates(orchard, seed=SEED)["cherry-north"]
    assert truth is not None
    start, end = season_span(orchard, {"cherry-north": truth}, after_days=3)
    load_season(influx, orchard, start, end, seed=SEED, step_s=3600)
    days = [truth - timedelta(days=10 - i) for i in range(14)]

    sync_engine = HarvestEngine(orchard, open_store(f"sqlite:///{tmp_path / 'a.db'}"))
    expected = [replay(sync_engine, influx, day, day).days["cherry-north"][0] for day in days]
    loop_engine = HarvestEngine(
        orchard,
        open_store(f"sqlite:///{tmp_path / 'b.db'}"),
        HarvestConfig(evaluate_every_s=86_400),
    )
    client = InfluxClient(influx_db)
    try:
        got = []
        for day in days:
            as_of = datetime.combine(day + timedelta(days=1), time(0), tz)
            outcomes = await loop_engine.tick(client, as_of)
            assert await loop_engine.tick(client, as_of + timedelta(hours=1)) == []  # not due
            got.append(outcomes[0].readiness)
    finally:
        await client.aclose()
    assert [(r.as_of, r.state, r.forecast.date) for r in got] == [
        (e.day, e.state, e.forecast) for e in expected
    ]
    assert ReadinessState.READY in {r.state for r in got}

    # Listing already when ready soon: the lot exists before the block is ready, with the
    # forecast date as window start and the quantity "ready" will mean; then it follows.
    early_state = open_store(f"sqlite:///{tmp_path / 'c.db'}")
    early = HarvestEngine(orchard, early_state, HarvestConfig(list_when="ready_soon"))
    first_soon = next(e.day for e in expected if e.state is ReadinessState.READY_SOON)
    soon = replay(early, influx, days[0], first_soon)
    record = soon.days["cherry-north"][-1]
    (listed,) = list_lots(early_state)
    block = orchard.block("cherry-north")
    assert listed.window_start == record.forecast
    assert listed.quantity_kg == block.trees * block.crop_profile.yield_kg_per_tree * 0.75
    assert listed.evidence["state"] == "ready_soon"
    ready_day = next(e.day for e in expected if e.state is ReadinessState.READY)
    replay(early, influx, first_soon + timedelta(days=1), ready_day)
    (followed,) = list_lots(early_state)
    assert followed.lot == listed.lot and followed.version > listed.version
    assert followed.window_start == ready_day and followed.evidence["state"] == "ready"


async def test_service_evaluator_follows_agronomist_overrides(
    influx: SyncInfluxClient, influx_db: InfluxSettings, tmp_path: Path
) -> None:
    """Through control's per-tick hook: an override of the harvest threshold is obeyed."""
    from control.harvest import HarvestEvaluator
    from control.service import TickContext
    from control.thresholds import Thresholds
    from control.webhooks import WebhookSender, WebhookSettings

    orchard = demo_subset(("cherry-north",))
    tz = ZoneInfo(orchard.farm.timezone)
    truth = ready_dates(orchard, seed=SEED)["cherry-north"]
    assert truth is not None
    start, end = season_span(orchard, {"cherry-north": truth}, after_days=4)
    load_season(influx, orchard, start, end, seed=SEED, step_s=3600)
    engine = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    thresholds = Thresholds(engine, orchard)
    thresholds.set_overrides(
        "cherry-north", {"harvest_threshold": 19.0}, who="agronomist", reason="export market"
    )
    evaluator = HarvestEvaluator(HarvestConfig(evaluate_every_s=3600))
    client = InfluxClient(influx_db)
    as_of = datetime.combine(end.astimezone(tz).date(), time(0), tz)

    async def tick(now: datetime) -> None:
        await evaluator(
            TickContext(
                now=now,
                orchard=orchard,
                engine=engine,
                alarms=Alarms(engine),
                thresholds=thresholds.effective_all(now.date()),
                influx=client,
                result=None,
                webhooks=WebhookSender(engine, WebhookSettings()),
            )
        )

    try:
        await tick(as_of)
        assert evaluator.harvest is not None
        state = block_states(engine, orchard.farm.id)[0]
        assert state["state"] != "ready"
        assert "soluble solids 19" in " ".join(state["evidence"]["reasons"])
        thresholds.set_overrides("cherry-north", {"harvest_threshold": None}, who="agronomist")
        await tick(as_of + timedelta(hours=1))
        state = block_states(engine, orchard.farm.id)[0]
        # One hour into a new local day: that day is the first ready day.
        assert state["state"] == "ready" and state["ready_on"] == as_of.date()
    finally:
        await client.aclose()
