"""Expand a dashboard's InfluxQL the way Grafana does, to run it without Grafana.

Grafana cannot run on every machine that builds these dashboards, so the tests (and
``orchard dashboards verify``) reproduce what its InfluxDB datasource sends:
``$timeFilter`` becomes ``time >= <from>ms and time <= <to>ms``, ``$__interval`` the
range divided by the panel's data points and rounded to a "nice" interval (never below
the panel's or the datasource's minimum), and each template variable its selected
values, regex-escaped, ``(a|b)`` for several (``All`` selects them all).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from dashboards.grafana import JSON

DATASOURCE_MIN_INTERVAL = "10s"
"""``timeInterval`` of the provisioned datasource (config/grafana/provisioning)."""
MAX_DATA_POINTS = 1000
"""About one point per pixel of a wide panel, as Grafana asks."""

_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d|w)$")

# Grafana's kbn.roundInterval: (upper bound in ms, interval chosen in ms).
_NICE_INTERVALS: tuple[tuple[int, int], ...] = (
    (15, 10),
    (35, 20),
    (75, 50),
    (150, 100),
    (350, 200),
    (750, 500),
    (1_500, 1_000),
    (3_500, 2_000),
    (7_500, 5_000),
    (12_500, 10_000),
    (17_500, 15_000),
    (25_000, 20_000),
    (45_000, 30_000),
    (90_000, 60_000),
    (210_000, 120_000),
    (450_000, 300_000),
    (750_000, 600_000),
    (1_050_000, 900_000),
    (1_500_000, 1_200_000),
    (2_700_000, 1_800_000),
    (5_400_000, 3_600_000),
    (9_000_000, 7_200_000),
    (16_200_000, 10_800_000),
    (32_400_000, 21_600_000),
    (86_400_000, 43_200_000),
    (604_800_000, 86_400_000),
    (1_209_600_000, 604_800_000),
)


def duration_ms(text: str) -> int:
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"not a Grafana duration: {text!r}")
    return int(match.group(1)) * _UNITS_MS[match.group(2)]


def format_duration(ms: int) -> str:
    """The largest whole InfluxQL unit: ``3600000`` → ``1h``."""
    for unit in ("w", "d", "h", "m", "s"):
        size = _UNITS_MS[unit]
        if ms >= size and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def round_interval(ms: float) -> int:
    for bound, nice in _NICE_INTERVALS:
        if ms < bound:
            return nice
    return 2_592_000_000


@dataclass(frozen=True)
class TimeRange:
    start: datetime
    end: datetime

    @classmethod
    def last(cls, span: str, now: datetime | None = None) -> TimeRange:
        """``now-7d`` .. ``now`` (``span`` as in a dashboard's ``time.from`` or a ``timeFrom``)."""
        end = now or datetime.now(UTC)
        return cls(end - timedelta(milliseconds=duration_ms(span.removeprefix("now-"))), end)

    @property
    def start_ms(self) -> int:
        return int(self.start.timestamp() * 1000)

    @property
    def end_ms(self) -> int:
        return int(self.end.timestamp() * 1000)

    def time_filter(self) -> str:
        return f"time >= {self.start_ms}ms and time <= {self.end_ms}ms"


def interval_ms(time_range: TimeRange, min_interval: str = "") -> int:
    raw = (time_range.end_ms - time_range.start_ms) / MAX_DATA_POINTS
    floor = duration_ms(min_interval or DATASOURCE_MIN_INTERVAL)
    return max(round_interval(raw), floor)


_REGEX_SPECIAL = re.compile(r"[\\^$*+?.()|\[\]{}/]")


def regex_escape(value: str) -> str:
    """Grafana's escape for a value placed inside ``/^...$/``."""
    return _REGEX_SPECIAL.sub(lambda m: "\\" + m.group(0), value)


def format_values(values: Sequence[str]) -> str:
    escaped = [regex_escape(v) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def _literal(text: str) -> Callable[[re.Match[str]], str]:
    # A function, not a replacement string: values may hold backslashes (regex escapes).
    def replace(_match: re.Match[str]) -> str:
        return text

    return replace


def expand(
    query: str,
    *,
    time_range: TimeRange,
    variables: Mapping[str, Sequence[str]],
    min_interval: str = "",
) -> str:
    """The query text Grafana would send for this range and these variable selections."""
    step = interval_ms(time_range, min_interval)
    out = query.replace("$timeFilter", time_range.time_filter())
    out = out.replace("$__interval_ms", str(step)).replace("$__interval", format_duration(step))
    # Longest names first so $block is not replaced inside $blocks.
    for name in sorted(variables, key=len, reverse=True):
        values = variables[name]
        if not values:
            raise ValueError(f"variable ${name} has no value selected")
        # Grafana's three forms: $name, ${name} and the deprecated [[name]].
        pattern = (
            r"\$\{" + re.escape(name) + r"\}|\[\[" + re.escape(name) + r"\]\]"
            r"|\$" + re.escape(name) + r"(?![A-Za-z0-9_])"
        )
        out = re.sub(pattern, _literal(format_values(values)), out)
    leftover = re.search(r"\$[A-Za-z_]\w*", out)
    if leftover:
        raise ValueError(f"unresolved variable {leftover.group(0)} in {out!r}")
    return out


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    ref_id: str
    query: str
    min_interval: str
    time_from: str
    result_format: str


def panel_queries(board: JSON) -> Iterator[PanelQuery]:
    for panel in board.get("panels", []):
        for target in panel.get("targets", []):
            yield PanelQuery(
                dashboard=board["uid"],
                panel=panel["title"],
                ref_id=target["refId"],
                query=target["query"],
                min_interval=panel.get("interval", ""),
                time_from=panel.get("timeFrom", ""),
                result_format=target.get("resultFormat", "time_series"),
            )


def annotation_queries(board: JSON) -> Iterator[tuple[str, str]]:
    for annotation in board.get("annotations", {}).get("list", []):
        if annotation.get("datasource", {}).get("type") == "influxdb":
            yield annotation["name"], annotation["query"]


def query_variables(board: JSON) -> list[JSON]:
    return [v for v in board.get("templating", {}).get("list", []) if v.get("type") == "query"]


def resolve_variables(
    board: JSON,
    run: Callable[[str], list[str]],
    time_range: TimeRange,
    choose: Callable[[JSON, list[str]], list[str]] | None = None,
) -> dict[str, list[str]]:
    """Fill the variables in dashboard order, each query seeing the selections before it.

    ``run`` executes a query and returns the values; ``choose`` picks the selection
    (default: everything for multi/All variables, the first value otherwise).
    """

    def default_choice(variable: JSON, values: list[str]) -> list[str]:
        return values if variable.get("multi") or variable.get("includeAll") else values[:1]

    pick = choose or default_choice
    selected: dict[str, list[str]] = {}
    for variable in query_variables(board):
        query = expand(variable["query"], time_range=time_range, variables=selected)
        values = run(query)
        if not values:
            raise LookupError(f"variable ${variable['name']} has no values: {query}")
        selected[variable["name"]] = pick(variable, values)
    return selected


def tag_values_of(series: Sequence[Any]) -> list[str]:
    """Values of a ``SHOW TAG VALUES`` result (column ``value``)."""
    values: set[str] = set()
    for s in series:
        for row in s.rows():
            values.add(str(row["value"]))
    return sorted(values)
