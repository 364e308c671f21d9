"""Write the device contract's JSON Schemas to ``docs/schema/`` (``orchard schemas --write``)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from orchard.models import json_schemas
from orchard.settings import PROJECT_ROOT

SCHEMA_DIR = PROJECT_ROOT / "docs" / "schema"


def rendered_schemas() -> dict[str, str]:
    """File name -> deterministic JSON text."""
    return {
        f"{name}.schema.json": json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False)
        + "\n"
        for name, schema in json_schemas().items()
    }


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(prog="orchard schemas")
    parser.add_argument("--write", action="store_true", help="write files (default: check)")
    parser.add_argument("--dir", type=Path, default=SCHEMA_DIR)
    args = parser.parse_args(argv)
    stale = []
    for name, text in rendered_schemas().items():
        path = args.dir / name
        if args.write:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        elif not path.exists() or path.read_text() != text:
            stale.append(name)
    if stale:
        print("stale schemas (run `make schemas`):", ", ".join(stale))
        return 1
    return 0
