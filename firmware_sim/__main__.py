"""``python -m firmware_sim`` / ``orchard sim``: the simulated orchard on a real broker.

Settings come from the environment (``ORCHARD_`` prefix, see :class:`SimSettings`);
command-line flags override them. SIGTERM or Ctrl-C stops it cleanly: what is buffered is
sent (for a few seconds), every node publishes ``offline`` and disconnects.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import Field, SecretStr

from firmware_sim.faults import FaultSpecError, parse_fault_items, resolve
from firmware_sim.runtime import SimConfig, SimStats, Simulator, parse_start
from firmware_sim.valves import DEFAULT_MAX_RUN_S
from firmware_sim.weather import parse_events
from orchard.layout import load_orchard
from orchard.logs import setup_logging
from orchard.settings import OrchardSettings

log = logging.getLogger("firmware_sim")


class SimSettings(OrchardSettings):
    """The simulator's settings (env ``ORCHARD_…``; flags of ``orchard sim`` override them)."""

    device_secret: SecretStr | None = Field(
        default=None, description="Farm device secret; node passwords derive from it"
    )
    sim_speed: float = Field(default=1.0, gt=0, description="Simulated seconds per real second")
    sim_start: str = Field(default="now", description="'now', relative '-180d', or ISO datetime")
    sim_interval_s: float = Field(
        default=60.0, gt=0, description="Simulated seconds between a node's readings"
    )
    sim_seed: int = 0
    sim_faults: str = Field(default="", description="NODE=KIND[:P][,KIND...];... (see faults)")
    sim_weather: str = Field(default="", description="kind@YYYY-MM-DD[:days][=value];...")
    sim_buffer: int = Field(
        default=10_000, ge=1, description="Readings each node keeps while the broker is away"
    )
    sim_max_run_s: int = Field(default=DEFAULT_MAX_RUN_S, gt=0, le=24 * 3600)
    sim_connect_concurrency: int = Field(default=100, ge=1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orchard sim",
        description="Run the simulated orchard: every sensor node and valve controller of "
        "the orchard file on its own MQTT connection.",
        epilog="Faults: stuck, spikes[:p], dropouts[:p], dying_battery, clock_skew[:seconds], "
        "malformed[:p]; NODE may be * or BLOCK/*. Weather: frost, heat, rain, dry, e.g. "
        "frost@2026-04-20=-5;heat@2026-07-10:4.",
    )
    parser.add_argument("--orchard", type=Path, help="orchard TOML (ORCHARD_ORCHARD_FILE)")
    parser.add_argument("--speed", type=float, help="simulated seconds per real second")
    parser.add_argument("--start", help="now, -180d, -12h or an ISO datetime")
    parser.add_argument("--interval", type=float, help="simulated seconds between readings")
    parser.add_argument("--seed", type=int)
    parser.add_argument(
        "--fault", action="append", default=[], metavar="NODE=KIND[:P],...", help="repeatable"
    )
    parser.add_argument("--weather", help="scripted weather events")
    parser.add_argument("--max-run", type=int, help="longest valve run accepted, seconds")
    parser.add_argument("--buffer", type=int, help="store-and-forward readings per node")
    parser.add_argument("--duration", type=float, help="stop after this many real seconds")
    parser.add_argument("--stats-json", type=Path, help="write final statistics here")
    return parser


def main(argv: Sequence[str] = ()) -> int:
    args = build_parser().parse_args(list(argv))
    overrides: dict[str, object] = {}
    for flag, field in (
        ("orchard", "orchard_file"),
        ("speed", "sim_speed"),
        ("start", "sim_start"),
        ("interval", "sim_interval_s"),
        ("seed", "sim_seed"),
        ("weather", "sim_weather"),
        ("max_run", "sim_max_run_s"),
        ("buffer", "sim_buffer"),
    ):
        value = getattr(args, flag)
        if value is not None:
            overrides[field] = value
    try:
        settings = SimSettings(**overrides)  # type: ignore[arg-type]
    except ValueError as exc:
        sys.stderr.write(f"orchard sim: {exc}\n")
        return 2
    setup_logging(settings.log_level, settings.log_json)
    # A thousand clients retrying after a broker restart would log a thousand warnings a
    # second; the simulator reports connection state itself (periodic stats).
    logging.getLogger("gmqtt").setLevel(logging.ERROR)
    if settings.device_secret is None:
        log.error("ORCHARD_DEVICE_SECRET is not set: node passwords derive from it")
        return 2
    try:
        orchard = load_orchard(settings.orchard_file)
        start = parse_start(settings.sim_start)
        weather = parse_events(settings.sim_weather)
        selection = parse_fault_items([settings.sim_faults, *args.fault])
        sensors = [(b.id, n) for b in orchard.blocks for n in b.sensor_nodes]
        faults = resolve(selection, [n for _, n in sensors], [b for b, _ in sensors])
    except (OSError, ValueError, FaultSpecError) as exc:
        log.error("%s", exc)
        return 2
    for node, kinds in sorted(faults.items()):
        log.warning(
            "fault injection on %s: %s", node, ", ".join(f"{k}:{v:g}" for k, v in kinds.items())
        )
    config = SimConfig(
        start=None if settings.sim_start.strip() in ("", "now") else start,
        speed=settings.sim_speed,
        interval_s=settings.sim_interval_s,
        seed=settings.sim_seed,
        buffer_size=settings.sim_buffer,
        max_run_s=settings.sim_max_run_s,
        connect_concurrency=settings.sim_connect_concurrency,
    )
    simulator = Simulator(
        orchard,
        settings.mqtt,
        settings.device_secret.get_secret_value(),
        config,
        weather=weather,
        faults=faults,
    )
    stats = asyncio.run(_run(simulator, args.duration))
    if args.stats_json is not None:
        args.stats_json.write_text(json.dumps(stats.as_dict(), indent=2))
    return 0


async def _run(simulator: Simulator, duration: float | None) -> SimStats:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return await simulator.run(stop, duration)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
