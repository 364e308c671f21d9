"""``orchard bench {ingest,sim,backtest,dashboards,harvest,all}`` (``make bench``): benchmarks that print figures.

Speed is measured here, on the real chain, never by timed assertions in tests.
Each benchmark lives next to the code it measures and is looked up lazily.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence

BENCHMARKS: dict[str, str] = {
    "sim": "firmware_sim.bench:main",
    "ingest": "ingest.bench:main",
    "backtest": "control.bench:main",
    "tick": "control.bench:tick_main",
    "dashboards": "dashboards.bench:main",
    "harvest": "control.harvest.bench:main",
    "api": "api.bench:main",
}


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(prog="orchard bench", description=__doc__)
    parser.add_argument("which", choices=[*BENCHMARKS, "all"])
    args, rest = parser.parse_known_args(argv)
    names = list(BENCHMARKS) if args.which == "all" else [args.which]
    status = 0
    for name in names:
        module_name, _, func = BENCHMARKS[name].partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            print(f"bench {name}: not available ({exc})")
            status = 1
            continue
        status |= int(getattr(module, func)(rest) or 0)
    return status
