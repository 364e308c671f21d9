"""``orchard dashboards verify``: run every dashboard query against an InfluxDB, as Grafana would.

For a farm, after an upgrade or before pushing the dashboards: each dashboard's template
variables are filled by their own queries, then every panel and annotation query is
expanded (time range, interval, variables; see :mod:`dashboards.expand`) and run.
It reports errors, empty panels and how long each query took.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from dashboards.expand import (
    TimeRange,
    annotation_queries,
    expand,
    panel_queries,
    resolve_variables,
    tag_values_of,
)
from dashboards.grafana import JSON
from orchard.influx import InfluxError, Series, SyncInfluxClient


@dataclass(frozen=True)
class QueryCheck:
    dashboard: str
    panel: str
    query: str
    rows: int
    ms: float
    error: str = ""


def _rows(series: list[Series]) -> int:
    return sum(1 for s in series for row in s.values if any(v is not None for v in row[1:]))


def _run(client: SyncInfluxClient, dashboard: str, panel: str, query: str) -> QueryCheck:
    started = time.perf_counter()
    try:
        results = client.query(query)
        rows = _rows(results[0]) if results else 0
        error = ""
    except InfluxError as exc:
        rows, error = 0, str(exc)
    return QueryCheck(dashboard, panel, query, rows, (time.perf_counter() - started) * 1000, error)


def verify_board(
    client: SyncInfluxClient, board: JSON, now: datetime | None = None
) -> list[QueryCheck]:
    uid = board["uid"]
    default_range = TimeRange.last(board["time"]["from"], now=now)
    try:
        variables = resolve_variables(
            board, lambda q: tag_values_of(client.query(q)[0]), default_range
        )
    except (LookupError, InfluxError) as exc:
        return [QueryCheck(uid, "(variables)", "", 0, 0.0, str(exc))]
    checks = []
    for pq in panel_queries(board):
        span = TimeRange.last(pq.time_from, now=now) if pq.time_from else default_range
        query = expand(pq.query, time_range=span, variables=variables, min_interval=pq.min_interval)
        checks.append(_run(client, uid, f"{pq.panel} [{pq.ref_id}]", query))
    for name, query in annotation_queries(board):
        expanded = expand(query, time_range=default_range, variables=variables)
        checks.append(_run(client, uid, f"annotation {name}", expanded))
    return checks


def verify(
    client: SyncInfluxClient, boards: Iterable[JSON], now: datetime | None = None
) -> list[QueryCheck]:
    return [check for board in boards for check in verify_board(client, board, now)]


def report(checks: list[QueryCheck]) -> str:
    lines = []
    for c in checks:
        status = "ERROR" if c.error else ("empty" if c.rows == 0 else f"{c.rows} rows")
        lines.append(f"{c.dashboard:<20} {c.ms:8.1f} ms  {status:<10} {c.panel}")
        if c.error:
            lines.append(f"{'':<20} {c.error}\n{'':<20} {c.query}")
    totals: dict[str, float] = {}
    for c in checks:
        totals[c.dashboard] = totals.get(c.dashboard, 0.0) + c.ms
    lines.append("")
    for uid, ms in totals.items():
        count = sum(1 for c in checks if c.dashboard == uid)
        lines.append(f"{uid:<20} {count:3d} queries, {ms:8.1f} ms in all")
    return "\n".join(lines)
