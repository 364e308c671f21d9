"""``orchard bench backtest``: a month of one block, replayed end to end against a real influxd.

Writes 30 days × 20 nodes × one reading a minute (864,000 points) into a throw-away
influxd, then times :func:`control.backtest.backtest` (query + replay, current and
proposed thresholds) a few times and prints the figures. Target: under 5 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np

from control.backtest import backtest, clear_cache
from orchard.influx import SyncInfluxClient
from orchard.layout import Block, Farm, Orchard
from orchard.lineprotocol import encode_point
from orchard.settings import InfluxSettings
from orchard.stack import Influxd, free_port


def bench_orchard(nodes: int) -> Orchard:
    return Orchard(
        farm=Farm(id="bench-farm"),
        blocks=[
            Block(
                id="bench-block",
                crop="apple",
                soil="loam",
                area_ha=2.0,
                trees=1500,
                bloom_date=date(2026, 4, 10),
                latitude=34.3,
                node_count=nodes,
                controller="bench-ctl",
                valves=["bench-v1"],
            )
        ],
    )


def synthetic_lines(
    block: Block, start: datetime, days: int, step_s: int, seed: int = 7
) -> list[str]:
    """Diurnal temperature and humidity, soil drying by ET with weekly irrigation, noise."""
    rng = np.random.default_rng(seed)
    n = days * 86400 // step_s
    t = np.arange(n) * step_s
    hours = t / 3600.0
    lines: list[str] = []
    t0 = int(start.timestamp())
    for k, node in enumerate(block.sensor_nodes):
        temp = 14 + 9 * np.sin((hours - 9) / 24 * 2 * np.pi) + rng.normal(0, 0.3, n) + k * 0.05
        hum = np.clip(65 - 20 * np.sin((hours - 9) / 24 * 2 * np.pi) + rng.normal(0, 2, n), 5, 100)
        soil = 0.29 - 0.012 * ((hours / 24) % 8) + rng.normal(0, 0.002, n)
        battery = 3.9 - 0.0005 * (hours / 24) + rng.normal(0, 0.005, n)
        tags = {"farm": "bench-farm", "block": block.id, "node": node}
        for i in range(n):
            lines.append(
                encode_point(
                    "telemetry",
                    tags,
                    {
                        "temperature": round(float(temp[i]), 2),
                        "humidity": round(float(hum[i]), 1),
                        "soil_moisture": round(float(soil[i]), 4),
                        "battery": round(float(battery[i]), 3),
                        "seq": i,
                    },
                    (t0 + int(t[i])) * 1_000_000_000,
                )
            )
    return lines


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(prog="orchard bench backtest", description=__doc__)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--step", type=int, default=60, help="seconds between readings")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--steps", type=int, nargs="+", default=[300, 60], help="replay steps to time (s)"
    )
    args = parser.parse_args(list(argv))
    root = Path(tempfile.mkdtemp(prefix="orchard-bench-backtest-"))
    influxd = Influxd(root, free_port())
    try:
        influxd.start()
        settings = InfluxSettings(url=influxd.url, database="bench", timeout_s=120)
        orchard = bench_orchard(args.nodes)
        block = orchard.blocks[0]
        start = datetime(2026, 6, 1, tzinfo=UTC)
        end = start + timedelta(days=args.days)
        with SyncInfluxClient(settings) as client:
            client.create_database()
            t = time.perf_counter()
            lines = synthetic_lines(block, start, args.days, args.step)
            for i in range(0, len(lines), 20_000):
                client.write(lines[i : i + 20_000])
            print(
                f"wrote {len(lines):,} readings ({args.nodes} nodes, {args.days} days, "
                f"every {args.step}s) in {time.perf_counter() - t:.1f}s"
            )
            for step in args.steps:
                figures = []
                label = "5-minute means from InfluxDB" if step > 60 else "raw readings"
                for _ in range(args.runs):
                    clear_cache()
                    t = time.perf_counter()
                    result = backtest(
                        client, orchard, block.id, start, end, {"soil_trigger": 0.19}, step_s=step
                    )
                    figures.append(time.perf_counter() - t)
                    print(
                        f"  step {step}s cold: {figures[-1]:.2f}s (query {result.query_s:.2f}s, "
                        f"replay of both threshold sets {result.replay_s:.2f}s): current "
                        f"{result.current.irrigation_count} runs {result.current.water_m3:g} m³, "
                        f"proposed {result.proposed.irrigation_count} runs "
                        f"{result.proposed.water_m3:g} m³"
                    )
                t = time.perf_counter()
                backtest(
                    client,
                    orchard,
                    block.id,
                    start,
                    end,
                    {"soil_trigger": 0.2, "heat_c": 25},
                    step_s=step,
                )
                warm = time.perf_counter() - t
                best, median = min(figures), statistics.median(figures)
                load = os.getloadavg()[0]
                verdict = "OK" if median < 5.0 else "SLOWER than the 5 s target"
                print(
                    f"backtest, step {step}s ({label}), end to end (query + replay): median "
                    f"{median:.2f}s, best {best:.2f}s over {args.runs} cold runs (target < 5 s): "
                    f"{verdict}; next proposal on the same period (readings cached) {warm:.2f}s; "
                    f"load average {load:.1f} on {os.cpu_count()} cores"
                )
    finally:
        influxd.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


def tick_orchard(blocks: int, nodes_per_block: int) -> Orchard:
    return Orchard(
        farm=Farm(id="bench-farm"),
        blocks=[
            Block(
                id=f"blk{b:03d}",
                crop="apple",
                soil="loam",
                area_ha=2.0,
                trees=1500,
                bloom_date=date(2026, 4, 10),
                latitude=34.3,
                node_count=nodes_per_block,
                controller=f"blk{b:03d}-ctl",
                valves=[f"blk{b:03d}-v1"],
            )
            for b in range(blocks)
        ],
    )


def minute_lines(orchard: Orchard, minute: int, t0: int, rng: np.random.Generator) -> list[str]:
    """One reading of every node for minute ``minute`` after ``t0`` (epoch s)."""
    hours = minute / 60.0
    lines = []
    ts = (t0 + minute * 60) * 1_000_000_000
    for block in orchard.blocks:
        nodes = block.sensor_nodes
        temp = 14 + 9 * np.sin((hours - 9) / 24 * 2 * np.pi) + rng.normal(0, 0.3, len(nodes))
        hum = 65 - 20 * np.sin((hours - 9) / 24 * 2 * np.pi) + rng.normal(0, 2, len(nodes))
        soil = 0.27 - 0.0005 * hours + rng.normal(0, 0.002, len(nodes))
        for k, node in enumerate(nodes):
            lines.append(
                f"telemetry,block={block.id},farm=bench-farm,node={node} "
                f"temperature={temp[k]:.2f},humidity={hum[k]:.1f},soil_moisture={soil[k]:.4f},"
                f"battery=3.9{k % 10},seq={minute}i {ts}"
            )
    return lines


def tick_main(argv: Sequence[str] = ()) -> int:
    """``orchard bench tick``: steady-state control ticks over a whole orchard."""
    import asyncio

    parser = argparse.ArgumentParser(
        prog="orchard bench tick",
        description="Times steady-state control ticks (InfluxDB query + rolling window + "
        "engine + recording) for BLOCKS x NODES nodes reading once a minute, against a "
        "throw-away influxd. Target (issue 4): under 200 ms for 10,000 nodes in 500 blocks.",
    )
    parser.add_argument("--blocks", type=int, default=500)
    parser.add_argument("--nodes", type=int, default=20, help="nodes per block")
    parser.add_argument("--hours", type=float, default=3.0, help="history written first")
    parser.add_argument("--context-h", type=float, default=8.0, help="ORCHARD_CONTROL_CONTEXT_H")
    parser.add_argument("--ticks", type=int, default=20, help="timed steady-state ticks")
    parser.add_argument("--query-parts", type=int, default=1, help="ORCHARD_CONTROL_QUERY_PARTS")
    parser.add_argument(
        "--quiet-s",
        type=float,
        default=30.0,
        help="seconds to wait after loading the history before timing ticks (compactions)",
    )
    parser.add_argument(
        "--pause",
        type=float,
        default=1.0,
        help="seconds between writing a minute and the tick that reads it (live, the tick "
        "comes ORCHARD_CONTROL_SETTLE_S = 15 s after the minute closed, not at once)",
    )
    args = parser.parse_args(list(argv))
    return asyncio.run(_tick_bench(args))


async def _tick_bench(args: argparse.Namespace) -> int:
    import asyncio

    from control.clock import FixedClock
    from control.service import ControlService, ControlSettings

    root = Path(tempfile.mkdtemp(prefix="orchard-bench-tick-"))
    influxd = Influxd(root / "influx", free_port())
    rng = np.random.default_rng(3)
    orchard = tick_orchard(args.blocks, args.nodes)
    n_nodes = args.blocks * args.nodes
    t0 = int(datetime(2026, 6, 1, 6, tzinfo=UTC).timestamp())
    history_min = int(args.hours * 60)
    try:
        influxd.start()
        settings = InfluxSettings(url=influxd.url, database="bench", timeout_s=120)
        with SyncInfluxClient(settings) as client:
            client.create_database()
            t = time.perf_counter()
            for m in range(history_min):
                client.write(minute_lines(orchard, m, t0, rng))
            print(
                f"wrote {history_min * n_nodes:,} readings ({n_nodes:,} nodes in {args.blocks} "
                f"blocks, {args.hours:g} h, one a minute) in {time.perf_counter() - t:.1f}s"
            )
            clock = FixedClock(datetime.fromtimestamp(t0 + history_min * 60 + 1, UTC))
            service = ControlService(
                ControlSettings(
                    influx=settings,
                    state_url=f"sqlite:///{root / 'state.db'}",
                    control_irrigate=False,
                    control_context_h=args.context_h,
                    control_query_parts=args.query_parts,
                ),
                orchard=orchard,
                clock=clock,
            )
            service.evaluators = []  # harvest readiness has its own benchmark
            service.background_writes = True  # as in run()
            try:
                t = time.perf_counter()
                first = await service.tick()
                cold = time.perf_counter() - t
                print(
                    f"first tick (whole window loaded, daily agronomy): {cold * 1000:.0f} ms "
                    f"(query {first.query_s * 1000:.0f} ms, engine {first.evaluate_s * 1000:.0f} ms)"
                )
                # Let InfluxDB compact the history it was just loaded with (a running farm
                # does not write three hours at once), unless told otherwise.
                await asyncio.sleep(args.quiet_s)
                totals, queries, fetches, engines, writes = [], [], [], [], []
                minute = history_min
                for i in range(args.ticks + 2):
                    client.write(minute_lines(orchard, minute, t0, rng))
                    await asyncio.sleep(args.pause)
                    minute += 1
                    clock.set(datetime.fromtimestamp(t0 + minute * 60 + 16, UTC))
                    t = time.perf_counter()
                    report = await service.tick()
                    elapsed = time.perf_counter() - t
                    # The background write of block_state, finished before the next minute.
                    await service.flush_lines()
                    if i < 2 or report.full_fetch:  # warm-up
                        continue
                    writes.append(service.last_write_s)
                    totals.append(elapsed)
                    queries.append(report.query_s)
                    fetches.append(report.fetch_s)
                    engines.append(report.evaluate_s)
            finally:
                await service.influx.aclose()

        def figures(xs: list[float]) -> str:
            xs = sorted(xs)
            p99 = xs[min(len(xs) - 1, round(0.99 * (len(xs) - 1)))]
            return (
                f"p50 {statistics.median(xs) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
                f"max {xs[-1] * 1000:.0f} ms"
            )

        window_bins = int(args.context_h * 60) + 2
        print(
            f"steady-state tick ({len(totals)} ticks, one new minute each, "
            f"{n_nodes:,} nodes x {window_bins} one-minute bins in the window):"
        )
        print(f"  whole tick:            {figures(totals)}")
        print(f"  InfluxDB query:        {figures(queries)}")
        print(f"  query + window merge:  {figures(fetches)}")
        print(f"  engine (evaluate):     {figures(engines)}")
        print(f"  background write of block_state (not in the tick): {figures(writes)}")
        load = os.getloadavg()[0]
        verdict = "OK" if statistics.median(totals) < 0.2 else "SLOWER than the 200 ms target"
        print(f"target < 200 ms: {verdict}; load average {load:.1f} on {os.cpu_count()} cores")
    finally:
        influxd.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0
