"""``orchard bench sim``: can one process simulate 1,000 nodes at one reading per second?

Starts a real Mosquitto with accounts for a generated orchard (50 blocks x 20 nodes by
default), runs ``python -m firmware_sim`` against it in real time (speed 1, one reading
per node per second) for ``--seconds``, and counts what a subscriber on the broker
received (not client counters). Prints nodes, target and achieved readings/s, the largest
lag of the simulated clock, broker-side counts, and the simulator's CPU and peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import secrets
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gmqtt
from pydantic import SecretStr

from orchard.broker import device_password
from orchard.mqtt import connect, make_client
from orchard.settings import PROJECT_ROOT, MqttSettings
from orchard.stack import Mosquitto, free_port

FARM = "bench-farm"


def write_orchard(path: Path, blocks: int, nodes_per_block: int) -> list[str]:
    lines = ["[farm]", f'id = "{FARM}"', 'timezone = "UTC"']
    crops = ("apple", "cherry", "citrus", "mango")
    nodes: list[str] = []
    for b in range(blocks):
        block = f"b{b:03d}"
        lines += [
            "[[blocks]]",
            f'id = "{block}"',
            f'crop = "{crops[b % len(crops)]}"',
            "area_ha = 1.0",
            "trees = 400",
            'bloom_date = "2026-04-01"',
            f"latitude = {20 + (b % 20)}",
            f"node_count = {nodes_per_block}",
        ]
        nodes += [f"{block}-n{i:02d}" for i in range(1, nodes_per_block + 1)]
    path.write_text("\n".join(lines) + "\n")
    return nodes


class Counter:
    def __init__(self) -> None:
        self.messages = 0
        self.readings = 0
        self.first: float | None = None
        self.last = 0.0

    def on_message(
        self, client: gmqtt.Client, topic: str, payload: bytes, qos: int, props: Any
    ) -> int:
        now = time.monotonic()
        self.first = self.first or now
        self.last = now
        self.messages += 1
        try:
            body = json.loads(payload)
            self.readings += len(body["readings"]) if "readings" in body else 1
        except (ValueError, KeyError, TypeError):
            pass
        return 0


def _rusage() -> tuple[float, int]:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime, usage.ru_maxrss


async def _run(args: argparse.Namespace, root: Path) -> dict[str, float]:
    nodes_per_block = max(1, args.nodes // args.blocks)
    orchard_path = root / "orchard.toml"
    nodes = write_orchard(orchard_path, args.blocks, nodes_per_block)
    device_secret = secrets.token_urlsafe(16)
    control_password = secrets.token_urlsafe(12)
    accounts = {n: device_password(device_secret, n) for n in nodes}
    accounts["orchard-control"] = control_password
    broker = Mosquitto(root / "mosquitto", free_port(), accounts)
    broker.start()
    try:
        counter = Counter()
        settings = MqttSettings(
            port=broker.port, username="orchard-control", password=SecretStr(control_password)
        )
        sub = make_client(f"bench-{uuid.uuid4().hex[:6]}", settings)
        sub.on_message = counter.on_message
        await connect(sub, settings)
        sub.subscribe(f"orchard/{FARM}/+/+/telemetry", qos=1)
        await asyncio.sleep(0.3)
        stats_path = root / "stats.json"
        env = dict(
            os.environ,
            ORCHARD_ORCHARD_FILE=str(orchard_path),
            ORCHARD_DEVICE_SECRET=device_secret,
            ORCHARD_MQTT__HOST="127.0.0.1",
            ORCHARD_MQTT__PORT=str(broker.port),
            ORCHARD_SIM_SPEED="1",
            ORCHARD_SIM_START="now",
            ORCHARD_SIM_INTERVAL_S=str(args.interval),
            ORCHARD_LOG_LEVEL="WARNING",
            PYTHONPATH=str(PROJECT_ROOT),
        )
        cpu0, _ = _rusage()
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "firmware_sim",
            "--duration",
            str(args.seconds),
            "--stats-json",
            str(stats_path),
            env=env,
        )
        await proc.wait()
        wall = time.monotonic() - started
        cpu1, maxrss_kb = _rusage()
        stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
        deadline = time.monotonic() + 10
        while counter.readings < stats.get("readings_acked", 0) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await sub.disconnect()
    finally:
        broker.stop()
    sim_seconds = float(stats.get("real_seconds", wall))
    nodes_total = len(nodes)
    return {
        "nodes": nodes_total,
        "seconds": sim_seconds,
        "target_per_s": nodes_total / args.interval,
        "taken": float(stats.get("readings_taken", 0)),
        "acked": float(stats.get("readings_acked", 0)),
        "received": counter.readings,
        "messages": counter.messages,
        # Over the window in which the subscriber saw readings arrive (start-up excluded).
        "achieved_per_s": counter.readings / max(1e-9, counter.last - (counter.first or 0.0))
        if counter.first
        else 0.0,
        "max_lag_s": float(stats.get("max_lag_s", float("nan"))),
        "start_delay_s": float(stats.get("max_start_delay_s", float("nan"))),
        "lag_p50_s": float(stats.get("lag_p50_s", float("nan"))),
        "lag_p99_s": float(stats.get("lag_p99_s", float("nan"))),
        "max_lag_connected_s": float(stats.get("max_lag_connected_s", float("nan"))),
        "connected_after_s": float(stats.get("all_connected_after_s") or float("nan")),
        "dropped": float(stats.get("readings_dropped_buffer", 0)),
        "cpu_pct": 100.0 * (cpu1 - cpu0) / wall if wall else 0.0,
        "peak_rss_mb": maxrss_kb / 1024.0,
        "exit": float(proc.returncode or 0),
    }


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(prog="orchard bench sim", description=__doc__)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--blocks", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between readings")
    args = parser.parse_args(list(argv))
    root = Path(tempfile.mkdtemp(prefix="orchard-bench-sim-"))
    try:
        r = asyncio.run(_run(args, root))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out = [
        "bench sim: one simulator process, real Mosquitto, counted by a subscriber on the broker",
        f"  nodes                     {r['nodes']:.0f} ({args.blocks} blocks), "
        f"one reading every {args.interval:g} s for {r['seconds']:.1f} s",
        f"  target readings/s         {r['target_per_s']:.0f}",
        f"  achieved readings/s       {r['achieved_per_s']:.0f} "
        "(received by the subscriber, first to last arrival)",
        f"  readings taken / acked    {r['taken']:.0f} / {r['acked']:.0f} (simulator)",
        f"  readings received         {r['received']:.0f} in {r['messages']:.0f} messages (broker)",
        f"  buffer drops              {r['dropped']:.0f}",
        f"  all nodes connected after {r['connected_after_s']:.2f} s",
        f"  max lag, instant to sent  {r['max_lag_connected_s']:.3f} s once connected "
        f"({r['max_lag_s']:.2f} s including start-up); "
        f"median {r['lag_p50_s']:.3f} s, p99 {r['lag_p99_s']:.3f} s",
        f"  max delay before a tick   {r['start_delay_s']:.3f} s (scheduler falling behind)",
        f"  simulator CPU             {r['cpu_pct']:.0f} % of one core",
        f"  simulator peak RSS        {r['peak_rss_mb']:.0f} MiB",
    ]
    print("\n".join(out))
    return 0 if r["exit"] == 0 and r["received"] >= r["acked"] > 0 else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
