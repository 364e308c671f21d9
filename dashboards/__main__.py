"""``orchard dashboards`` / ``python -m dashboards``: build, check or push the dashboards.

- ``build``: write ``dashboards/json/<uid>.json`` from the builders;
- ``check``: exit 1 if a committed file differs from what the builders produce;
- ``push``: upload them to an existing Grafana (``--url``, token in ``GRAFANA_TOKEN``);
- ``verify``: run every query, expanded as Grafana would, against the InfluxDB of
  ``ORCHARD_INFLUX__*`` and report errors, empty panels and query times.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from dashboards import JSON_DIR
from dashboards.boards import DASHBOARDS
from dashboards.grafana import dump


def rendered() -> dict[str, str]:
    """File name → JSON text of every dashboard."""
    return {f"{uid}.json": dump(build()) for uid, build in DASHBOARDS.items()}


def build(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in rendered().items():
        path = out_dir / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        written.append(path)
    return written


def stale(out_dir: Path) -> list[str]:
    """Files that are missing, differ from the builders, or belong to no builder."""
    expected = rendered()
    problems = [
        name
        for name, text in expected.items()
        if not (out_dir / name).exists() or (out_dir / name).read_text() != text
    ]
    problems += sorted(p.name for p in out_dir.glob("*.json") if p.name not in expected)
    return problems


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(prog="orchard dashboards", description=__doc__)
    parser.add_argument(
        "--dir", type=Path, default=JSON_DIR, help="JSON directory (default: %(default)s)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="write the dashboard JSON files")
    sub.add_parser("check", help="fail if the committed JSON is not what the builders produce")
    push_p = sub.add_parser("push", help="upload the dashboards to an existing Grafana")
    push_p.add_argument(
        "--url", default=os.environ.get("GRAFANA_URL"), help="Grafana URL (env GRAFANA_URL)"
    )
    push_p.add_argument("--folder", default="Orchard", help="folder title (default: %(default)s)")
    push_p.add_argument("--folder-uid", default="orchard", help="folder uid (default: %(default)s)")
    push_p.add_argument(
        "--datasource-uid",
        default=None,
        help="uid of your InfluxDB (InfluxQL) datasource; default: the provisioned 'orchard-influxdb'",
    )
    verify_p = sub.add_parser("verify", help="run every dashboard query against InfluxDB")
    verify_p.add_argument(
        "--require-data", action="store_true", help="also fail when a panel returns no data"
    )
    args = parser.parse_args(list(argv))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    if args.command == "build":
        for path in build(args.dir):
            print(path)
        return 0
    if args.command == "check":
        problems = stale(args.dir)
        if problems:
            print(
                "dashboard JSON out of date: " + ", ".join(problems) + " (run `make dashboards`)",
                file=sys.stderr,
            )
            return 1
        print(f"{len(DASHBOARDS)} dashboards up to date in {args.dir}")
        return 0

    if args.command == "verify":
        return _verify(args.require_data)

    from grafana_client.client import GrafanaException
    from niquests.exceptions import RequestException

    from dashboards.push import PushTarget, push

    if not args.url:
        parser.error("push needs --url or GRAFANA_URL")
    token = os.environ.get("GRAFANA_TOKEN") or None
    target = PushTarget(
        url=args.url,
        token=token,
        folder_uid=args.folder_uid,
        folder_title=args.folder,
        datasource_uid=args.datasource_uid,
    )
    boards = [builder() for builder in DASHBOARDS.values()]
    try:
        urls = push(boards, target)
    except (GrafanaException, RequestException) as exc:
        print(f"push to {args.url} failed: {exc}", file=sys.stderr)
        return 1
    for url in urls:
        print(url)
    return 0


def _verify(require_data: bool) -> int:
    from dashboards.verify import report, verify
    from orchard.influx import SyncInfluxClient
    from orchard.settings import OrchardSettings

    settings = OrchardSettings()
    with SyncInfluxClient(settings.influx) as client:
        checks = verify(client, [builder() for builder in DASHBOARDS.values()])
    print(report(checks))
    failed = [c for c in checks if c.error or (require_data and c.rows == 0)]
    if failed:
        print(f"{len(failed)} of {len(checks)} queries failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
