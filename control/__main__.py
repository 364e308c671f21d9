"""``python -m control`` / ``orchard control``: run the control loop until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from orchard.logs import setup_logging

log = logging.getLogger("control")


async def _serve(once: bool) -> int:
    from control.service import ControlService, ControlSettings

    settings = ControlSettings()
    service = ControlService(settings)
    log.info(
        "control starting: farm %s, %d blocks, tick %.0fs, %s clock, irrigation %s, webhooks %s",
        service.farm,
        len(service.orchard.blocks),
        settings.tick_interval_s,
        settings.clock_kind,
        "automatic" if settings.control_irrigate else "advisory only",
        "on" if settings.webhook.enabled else "off",
    )
    if once:
        from orchard.influx import InfluxError

        try:
            report = await service.tick()
        except InfluxError as exc:
            log.error("tick failed: %s", exc)
            return 1
        finally:
            await service.influx.aclose()
        print(
            f"tick at {report.now.isoformat()}: {len(report.alarms)} alarm changes, "
            f"{len(report.decisions)} decisions, {len(report.commands)} commands"
        )
        return 0
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await service.run(stop)
    log.info("control stopped")
    return 0


def _early_exit(signum: int, _frame: object) -> None:
    # A stop request during start-up (imports, first connection) is a clean exit too.
    raise SystemExit(0)


def main(argv: Sequence[str] = ()) -> int:
    signal.signal(signal.SIGTERM, _early_exit)
    parser = argparse.ArgumentParser(prog="orchard control", description="The control loop.")
    parser.add_argument("--once", action="store_true", help="run one tick and exit")
    args = parser.parse_args(list(argv))
    from control.service import ControlSettings

    settings = ControlSettings()
    setup_logging(settings.log_level, settings.log_json)
    return asyncio.run(_serve(args.once))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
