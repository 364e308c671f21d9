"""``orchard api`` / ``python -m api``: serve the API and the agronomists' page."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence

import uvicorn

from api.settings import ApiSettings
from orchard.logs import setup_logging

log = logging.getLogger("api")


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(prog="orchard api", description=__doc__)
    parser.add_argument("--host", help="Interface to listen on (ORCHARD_API_HOST)")
    parser.add_argument("--port", type=int, help="Port (ORCHARD_API_PORT)")
    args = parser.parse_args(argv)
    settings = ApiSettings()
    if args.host:
        settings.api_host = args.host
    if args.port:
        settings.api_port = args.port
    setup_logging(settings.log_level, settings.log_json)
    from api.app import create_app

    app = create_app(settings)
    # uvicorn handles SIGTERM/SIGINT while serving (stops accepting, finishes requests, runs
    # the lifespan exit), then re-raises the signal to the handler it found: make that one a
    # no-op so a requested stop ends with status 0 instead of "killed by SIGTERM".
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stopped)
    uvicorn.run(
        app,
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,
        access_log=False,
        proxy_headers=False,
    )
    log.info("API stopped")
    return 0


def _stopped(signum: int, _frame: object) -> None:
    log.debug("signal %s after shutdown", signum)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
