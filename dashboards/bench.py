"""``orchard bench dashboards``: how long each dashboard's queries take on a real InfluxDB.

Starts a throw-away influxd (orchard.stack), writes a simulated season of the demo
orchard (readings and block states every ``--step`` seconds for ``--days`` days), then
runs every dashboard's queries the way Grafana expands them, several times, and prints
the median time per dashboard (what a grower waits for on opening it, less Grafana's
own rendering) and the slowest panels.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from dashboards.boards import DASHBOARDS
from dashboards.season import build_season
from dashboards.verify import verify
from orchard.influx import SyncInfluxClient
from orchard.layout import load_orchard
from orchard.settings import CONFIG_DIR, InfluxSettings
from orchard.stack import Influxd, free_port


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(prog="orchard bench dashboards", description=__doc__)
    parser.add_argument("--days", type=int, default=30, help="season length (default 30)")
    parser.add_argument("--step", type=int, default=300, help="seconds between readings (300)")
    parser.add_argument("--runs", type=int, default=5, help="runs per dashboard (5)")
    args = parser.parse_args(list(argv))

    orchard = load_orchard(CONFIG_DIR / "orchard.toml")
    with tempfile.TemporaryDirectory(prefix="orchard-bench-dash-") as tmp:
        influxd = Influxd(Path(tmp), free_port())
        influxd.start()
        try:
            settings = InfluxSettings(url=influxd.url, database="bench", timeout_s=60)
            with SyncInfluxClient(settings) as client:
                client.create_database()
                started = time.perf_counter()
                season, lines = build_season(orchard, args.days, step_s=args.step)
                built = time.perf_counter() - started
                started = time.perf_counter()
                for i in range(0, len(lines), 5000):
                    client.write(lines[i : i + 5000])
                written = time.perf_counter() - started
                print(
                    f"season: {len(orchard.all_nodes())} devices, {args.days} days every "
                    f"{args.step} s: {len(lines):,} points built in {built:.1f} s, "
                    f"written in {written:.1f} s"
                )
                now = season.end + timedelta(minutes=30)
                boards = [build() for build in DASHBOARDS.values()]
                verify(client, boards, now)  # warm-up: caches, series index
                for board in boards:
                    totals: list[float] = []
                    slowest: dict[str, list[float]] = {}
                    for _ in range(args.runs):
                        checks = verify(client, [board], now)
                        errors = [c for c in checks if c.error]
                        if errors:
                            print(f"{board['uid']}: {errors[0].panel}: {errors[0].error}")
                            return 1
                        totals.append(sum(c.ms for c in checks))
                        for c in checks:
                            slowest.setdefault(c.panel, []).append(c.ms)
                    worst = max(slowest.items(), key=lambda kv: statistics.median(kv[1]))
                    print(
                        f"{board['uid']:<20} {len(checks):3d} queries  median {statistics.median(totals):7.1f} ms "
                        f"in all  (slowest: {worst[0]} {statistics.median(worst[1]):.1f} ms)"
                    )
        finally:
            influxd.stop()
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
