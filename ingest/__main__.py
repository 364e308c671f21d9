"""``python -m ingest`` / ``orchard ingest``: run the service, or read its dead letters.

python -m ingest                      run (settings from ORCHARD_* variables)
python -m ingest dead-letters -n 50   newest dead letters, for an operator
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Sequence

from ingest.deadletters import dead_letter_counts, read_dead_letters
from ingest.metrics import IngestMetrics
from ingest.service import IngestService
from ingest.settings import IngestSettings
from orchard.influx import InfluxError, SyncInfluxClient
from orchard.logs import setup_logging


async def _serve(settings: IngestSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    metrics = IngestMetrics()
    if settings.metrics_port:
        metrics.serve(settings.metrics_port)
    await IngestService(settings, metrics).run(stop)


def _dead_letters(settings: IngestSettings, limit: int, reason: str | None, as_json: bool) -> int:
    try:
        with SyncInfluxClient(settings.influx) as client:
            letters = read_dead_letters(client, limit, reason)
            counts = dead_letter_counts(client)
    except InfluxError as exc:
        print(f"cannot read dead letters from {settings.influx.url}: {exc}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps([letter.__dict__ for letter in letters], indent=2))
        return 0
    total = ", ".join(f"{reason}={n}" for reason, n in sorted(counts.items())) or "none"
    print(f"dead letters stored: {total}")
    for letter in letters:
        print(f"{letter.time}  {letter.reason:<15} {letter.topic}")
        print(f"    detail:  {letter.detail}")
        print(f"    payload: {letter.payload}")
    return 0


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(
        prog="ingest", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("run", help="run the service (the default)")
    letters = commands.add_parser("dead-letters", help="print the newest dead letters")
    letters.add_argument("-n", "--limit", type=int, default=20, help="how many (default 20)")
    letters.add_argument("--reason", help="only this reason, e.g. node_mismatch")
    letters.add_argument("--json", action="store_true", help="JSON instead of text")
    args = parser.parse_args(list(argv))
    settings = IngestSettings()
    if args.command == "dead-letters":
        return _dead_letters(settings, args.limit, args.reason, args.json)
    setup_logging(settings.log_level, settings.log_json)
    asyncio.run(_serve(settings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
