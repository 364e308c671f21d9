"""``python -m api.bench`` (``orchard bench api``): the backtest endpoint timed end to end.

Same data as ``orchard bench backtest`` (30 days × 20 nodes × one reading a minute in a
throw-away influxd), but through HTTP: token check, validation, InfluxDB query, both
replays and the JSON answer, as the agronomists' page calls it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from api.auth import Role, create_token
from api.settings import ApiSettings
from api.testing import running_api
from control.backtest import clear_cache
from control.bench import bench_orchard, synthetic_lines
from orchard.db import create_engine, init_db
from orchard.influx import SyncInfluxClient
from orchard.settings import InfluxSettings
from orchard.stack import Influxd, free_port


def _orchard_toml(nodes: int) -> str:
    orchard = bench_orchard(nodes)
    b = orchard.blocks[0]
    return "\n".join(
        [
            "[farm]",
            f'id = "{orchard.farm.id}"',
            "",
            "[[blocks]]",
            f'id = "{b.id}"',
            f'crop = "{b.crop}"',
            f'soil = "{b.soil}"',
            f"area_ha = {b.area_ha}",
            f"trees = {b.trees}",
            f"bloom_date = {b.bloom_date.isoformat()}",
            f"latitude = {b.latitude}",
            f"node_count = {b.node_count}",
            f'controller = "{b.controller}"',
            f"valves = {list(b.valves)!r}".replace("'", '"'),
            "",
        ]
    )


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(prog="orchard bench api", description=__doc__)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--step", type=int, default=60, help="seconds between readings")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--replay-step",
        type=float,
        default=None,
        help="step_s sent with the request (default: none, the endpoint's own choice)",
    )
    parser.add_argument(
        "--raw", action="store_true", help="ask for the raw readings (the loop's own step)"
    )
    args = parser.parse_args(list(argv))
    root = Path(tempfile.mkdtemp(prefix="orchard-bench-api-"))
    influxd = Influxd(root / "influxdb", free_port())
    try:
        influxd.start()
        influx_settings = InfluxSettings(url=influxd.url, database="bench", timeout_s=120)
        orchard_file = root / "orchard.toml"
        orchard_file.write_text(_orchard_toml(args.nodes))
        orchard = bench_orchard(args.nodes)
        block = orchard.blocks[0]
        start = datetime(2026, 6, 1, tzinfo=UTC)
        end = start + timedelta(days=args.days)
        with SyncInfluxClient(influx_settings) as client:
            client.create_database()
            lines = synthetic_lines(block, start, args.days, args.step)
            for i in range(0, len(lines), 20_000):
                client.write(lines[i : i + 20_000])
        print(f"wrote {len(lines):,} readings ({args.nodes} nodes, {args.days} days)")
        settings = ApiSettings(
            demo=True,
            influx=influx_settings,
            state_url=f"sqlite:///{root / 'state.db'}",
            orchard_file=orchard_file,
            broker_passwd_file=root / "passwd",
        )
        engine = create_engine(settings.state_url)
        init_db(engine)
        _, token = create_token(engine, "bench", Role.agronomist)
        body: dict[str, object] = {
            "overrides": {"soil_trigger": 0.19},
            "start": start.isoformat(),
            "end": end.isoformat(),
        }
        if args.replay_step is not None:
            body["step_s"] = args.replay_step
        if args.raw:
            body["raw"] = True
        figures = []
        with running_api(settings) as url:
            headers = {"Authorization": f"Bearer {token}"}
            with httpx.Client(base_url=url, headers=headers, timeout=300) as http:
                for run in range(args.runs + 1):
                    # Cold: the API keeps a period's readings for a few minutes (an
                    # agronomist tries several proposals in a row); the last run is warm.
                    warm = run == args.runs
                    if not warm:
                        clear_cache()
                    t = time.perf_counter()
                    response = http.post(f"/api/v1/blocks/{block.id}/backtest", json=body)
                    elapsed = time.perf_counter() - t
                    response.raise_for_status()
                    result = response.json()
                    if not warm:
                        figures.append(elapsed)
                    print(
                        f"  {'warm' if warm else 'cold'} POST backtest {elapsed:.2f}s "
                        f"(query {result['query_s']:.2f}s, replay {result['replay_s']:.2f}s, "
                        f"step {result['step_s']:g}s, {result['readings']:,} values, "
                        f"{len(response.content):,} bytes): {'; '.join(result['differences'])}"
                    )
                print(f"  step: {result['step_note']}")
        median = statistics.median(figures)
        print(
            f"backtest endpoint end to end, cold: median {median:.2f}s, best {min(figures):.2f}s, "
            f"worst {max(figures):.2f}s over {args.runs} runs (target < 5 s): "
            f"{'OK' if median < 5 else 'SLOWER than target'}; load average "
            f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores"
        )
        engine.dispose()
    finally:
        influxd.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
