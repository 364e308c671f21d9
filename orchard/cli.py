"""The ``orchard`` command: one entry point for every service and tool.

Subcommands are looked up lazily so that a missing optional service never breaks the
others, and each service keeps its own argument parsing.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

COMMANDS: dict[str, tuple[str, str]] = {
    "up": ("orchard.up:main", "start broker, InfluxDB and every service on a simulated orchard"),
    "sim": ("firmware_sim.__main__:main", "run the simulated orchard (field nodes and valves)"),
    "ingest": ("ingest.__main__:main", "run the ingest service (MQTT -> InfluxDB)"),
    "control": ("control.__main__:main", "run the control loop (irrigation, alarms, harvest)"),
    "api": ("api.__main__:main", "run the HTTP API and the agronomists' page"),
    "token": ("api.tokens:main", "create API tokens (the first admin token)"),
    "dashboards": ("dashboards.__main__:main", "build or push the Grafana dashboards"),
    "schemas": ("orchard.contract_docs:main", "write the JSON Schemas of the device contract"),
    "bench": ("orchard.bench:main", "run the benchmarks and print their figures"),
    "migrate": ("orchard.migrations:main", "migrate the state store now, or write a migration"),
}


def _load(target: str) -> Callable[[Sequence[str]], int | None]:
    module_name, _, func = target.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, func)  # type: ignore[no-any-return]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="orchard", description=__doc__)
    parser.add_argument("command", choices=sorted(COMMANDS), metavar="command")
    parser.epilog = "commands:\n" + "\n".join(
        f"  {name:<11} {help_}" for name, (_, help_) in sorted(COMMANDS.items())
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    if not args or args[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if args else 2
    ns = parser.parse_args(args[:1])
    target, _ = COMMANDS[ns.command]
    try:
        entry = _load(target)
    except ModuleNotFoundError as exc:
        parser.error(f"{ns.command} is not available: {exc}")
    result = entry(args[1:])
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
