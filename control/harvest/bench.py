"""Season replay: load a simulated season into InfluxDB and evaluate it day by day.

Used by the season tests and by the forecast-accuracy benchmark::

    python -m control.harvest.bench --seeds 3

which starts a throw-away influxd, replays the demo orchard's apple and cherry blocks
for each seed and prints, per block, the simulator's ready date, the day the engine
declared the block ready, and the error of the forecasts made 14 and 7 days before the
simulator's ready date. (Figures, not assertions: see docs/harvest.md.)
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time as _time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.engine import Engine

from control.harvest.config import HarvestConfig
from control.harvest.engine import BlockOutcome, HarvestEngine
from control.harvest.readiness import ReadinessState
from orchard.influx import SyncInfluxClient
from orchard.layout import Orchard
from orchard.settings import PROJECT_ROOT, InfluxSettings


def load_season(
    client: SyncInfluxClient,
    orchard: Orchard,
    start: datetime,
    end: datetime,
    *,
    step_s: float = 3600.0,
    seed: int = 0,
    weather: Any = None,
    faults: Any = None,
    batch: int = 5000,
) -> int:
    """Write the offline generator's readings exactly as ingest stores them; returns points."""
    from firmware_sim.season import simulate
    from ingest.lines import reading_line, telemetry_prefix

    prefixes: dict[str, str] = {}
    lines: list[str] = []
    count = 0
    for block_id, node_id, reading in simulate(
        orchard, start, end, step_s=step_s, seed=seed, weather=weather, faults=faults
    ):
        prefix = prefixes.get(node_id)
        if prefix is None:
            prefix = prefixes[node_id] = telemetry_prefix(orchard.farm.id, block_id, node_id)
        lines.append(reading_line(prefix, reading))
        if len(lines) >= batch:
            client.write(lines)
            count += len(lines)
            lines = []
    client.write(lines)
    return count + len(lines)


@dataclass
class DayRecord:
    day: date
    state: ReadinessState
    forecast: date | None
    earliest: date | None
    latest: date | None
    reason: str | None


@dataclass
class Replay:
    days: dict[str, list[DayRecord]] = field(default_factory=dict)
    outcomes: list[BlockOutcome] = field(default_factory=list)

    def ready_day(self, block: str) -> date | None:
        for rec in self.days.get(block, []):
            if rec.state is ReadinessState.READY:
                return rec.day
        return None

    def on(self, block: str, day: date) -> DayRecord | None:
        return next((r for r in self.days.get(block, []) if r.day == day), None)

    def forecast_error(self, block: str, truth: date, lead_days: int) -> int | None:
        """Forecast date minus truth (days) of the forecast made ``lead_days`` before."""
        rec = self.on(block, truth - timedelta(days=lead_days))
        if rec is None or rec.forecast is None:
            return None
        return (rec.forecast - truth).days


def replay(harvest: HarvestEngine, client: SyncInfluxClient, first: date, last: date) -> Replay:
    """Evaluate at the end of every local day from ``first`` to ``last`` inclusive."""
    tz = ZoneInfo(harvest.orchard.farm.timezone)
    out = Replay()
    day = first
    while day <= last:
        as_of = datetime.combine(day + timedelta(days=1), time(0), tzinfo=tz)
        for outcome in harvest.evaluate(client, as_of):
            r = outcome.readiness
            out.days.setdefault(outcome.block, []).append(
                DayRecord(
                    r.as_of,
                    r.state,
                    r.forecast.date,
                    r.forecast.earliest,
                    r.forecast.latest,
                    r.forecast.reason,
                )
            )
            out.outcomes.append(outcome)
        day += timedelta(days=1)
    return out


def demo_subset(block_ids: Sequence[str] = ("apple-east", "cherry-north")) -> Orchard:
    from orchard.layout import load_orchard

    demo = load_orchard(PROJECT_ROOT / "config" / "orchard.toml")
    return Orchard(farm=demo.farm, blocks=[demo.block(b) for b in block_ids])


def season_span(
    orchard: Orchard, truth: dict[str, date | None], after_days: int = 10
) -> tuple[datetime, datetime]:
    tz = ZoneInfo(orchard.farm.timezone)
    first = min(b.bloom_date for b in orchard.blocks)
    last = max(d for d in truth.values() if d is not None) + timedelta(days=after_days)
    return (
        datetime.combine(first, time(0), tzinfo=tz).astimezone(UTC),
        datetime.combine(last + timedelta(days=1), time(0), tzinfo=tz).astimezone(UTC),
    )


def run_seed(
    influx: InfluxSettings,
    state: Engine,
    seed: int,
    orchard: Orchard,
    config: HarvestConfig | None = None,
) -> list[dict[str, Any]]:
    from firmware_sim.season import ready_dates

    truth = ready_dates(orchard, seed=seed)
    start, end = season_span(orchard, truth)
    rows: list[dict[str, Any]] = []
    with SyncInfluxClient(influx) as client:
        client.create_database()
        t0 = _time.perf_counter()
        points = load_season(client, orchard, start, end, seed=seed)
        t1 = _time.perf_counter()
        harvest = HarvestEngine(orchard, state, config)
        tz = ZoneInfo(orchard.farm.timezone)
        result = replay(
            harvest,
            client,
            start.astimezone(tz).date(),
            (end - timedelta(seconds=1)).astimezone(tz).date(),
        )
        t2 = _time.perf_counter()
    days = (end - start).days
    for block in orchard.blocks:
        true_day = truth[block.id]
        if true_day is None:
            continue
        ready = result.ready_day(block.id)
        rows.append(
            {
                "seed": seed,
                "block": block.id,
                "truth": true_day,
                "declared_ready": ready,
                "ready_lag": None if ready is None else (ready - true_day).days,
                "err14": result.forecast_error(block.id, true_day, 14),
                "err7": result.forecast_error(block.id, true_day, 7),
                "own14": None if ready is None else result.forecast_error(block.id, ready, 14),
                "own7": None if ready is None else result.forecast_error(block.id, ready, 7),
                "load_s": t1 - t0,
                "replay_s": t2 - t1,
                "points": points,
                "days": days,
            }
        )
    return rows


def main(argv: Sequence[str] = ()) -> int:
    from control.store import open_store
    from orchard.stack import Influxd, free_port

    parser = argparse.ArgumentParser(prog="python -m control.harvest.bench")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--clock", choices=("gdd", "days"), default="gdd")
    args = parser.parse_args(list(argv))
    root = Path(tempfile.mkdtemp(prefix="orchard-harvest-bench-"))
    influxd = Influxd(root / "influxdb", free_port())
    influxd.start()
    rows: list[dict[str, Any]] = []
    try:
        orchard = demo_subset()
        for seed in range(args.seeds):
            state = open_store(f"sqlite:///{root / f'state-{seed}.db'}")
            settings = InfluxSettings(url=influxd.url, database=f"bench_{seed}")
            config = HarvestConfig(forecast_clock=args.clock)
            rows += run_seed(settings, state, seed, orchard, config)
    finally:
        influxd.stop()
        shutil.rmtree(root, ignore_errors=True)
    print(
        "seed block         truth       ready(lag)        err@14d err@7d own@14d own@7d "
        "load_s replay_s days"
    )
    for r in rows:
        print(
            f"{r['seed']:>4} {r['block']:<13} {r['truth']}  {r['declared_ready']} "
            f"({r['ready_lag']:+})  {_fmt(r['err14']):>7} {_fmt(r['err7']):>6} "
            f"{_fmt(r['own14']):>7} {_fmt(r['own7']):>6} "
            f"{r['load_s']:7.1f} {r['replay_s']:8.1f} {r['days']:>4}"
            if r["ready_lag"] is not None
            else f"{r['seed']:>4} {r['block']:<13} {r['truth']}  never ready"
        )
    for key, what in (("err", "simulator's ready date"), ("own", "day declared ready")):
        for lead in (14, 7):
            errors = [r[f"{key}{lead}"] for r in rows if r[f"{key}{lead}"] is not None]
            missing = sum(1 for r in rows if r[f"{key}{lead}"] is None)
            if errors:
                print(
                    f"vs {what}, forecast {lead} d ahead: mean error {statistics.mean(errors):+.1f} d, "
                    f"mean |error| {statistics.mean(map(abs, errors)):.1f} d, "
                    f"max |error| {max(map(abs, errors))} d, n={len(errors)}, no date: {missing}"
                )
    return 0


def _fmt(value: int | None) -> str:
    return "none" if value is None else f"{value:+d}"


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
