"""Grafana dashboard JSON, built from plain data: targets, panels, variables, layout.

The grafana-foundation-sdk has no InfluxQL query type and is not a dependency, so
the few shapes the orchard dashboards need are written here. Everything returns
plain ``dict``s; :func:`dump` writes them with sorted keys so a rebuild is
byte-identical and a review diff shows only what changed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

JSON = dict[str, Any]

SCHEMA_VERSION = 39
DATASOURCE_VAR = "datasource"
DEFAULT_DATASOURCE_UID = "orchard-influxdb"
"""The uid the provisioned datasource gets (config/grafana/provisioning/datasources)."""
DEFAULT_DATASOURCE_NAME = "Orchard InfluxDB"

# Every panel and variable goes through the dashboard's datasource variable, so a farm
# that already runs Grafana can point the dashboards at its own InfluxDB datasource.
DATASOURCE: JSON = {"type": "influxdb", "uid": "${" + DATASOURCE_VAR + "}"}

ResultFormat = Literal["time_series", "table"]


@dataclass(frozen=True)
class Target:
    """One raw InfluxQL query of a panel."""

    query: str
    alias: str = ""
    result_format: ResultFormat = "time_series"

    def to_json(self, ref_id: str) -> JSON:
        out: JSON = {
            "datasource": DATASOURCE,
            "query": self.query,
            "rawQuery": True,
            "refId": ref_id,
            "resultFormat": self.result_format,
        }
        if self.alias:
            out["alias"] = self.alias
        return out


def targets(items: Sequence[Target]) -> list[JSON]:
    return [t.to_json(chr(ord("A") + i)) for i, t in enumerate(items)]


def thresholds(*steps: tuple[float | None, str]) -> JSON:
    """Absolute thresholds: ``(None, "red"), (0, "green")`` — the first step is the base."""
    return {
        "mode": "absolute",
        "steps": [{"color": color, "value": value} for value, color in steps],
    }


def value_mappings(mapping: Mapping[str, tuple[str, str]]) -> list[JSON]:
    """Map raw values to a display text and colour (state timelines, tables)."""
    options = {
        raw: {"color": color, "index": i, "text": text}
        for i, (raw, (text, color)) in enumerate(mapping.items())
    }
    return [{"options": options, "type": "value"}]


def override(matcher: JSON, **properties: Any) -> JSON:
    return {
        "matcher": matcher,
        "properties": [
            {"id": key.replace("__", "."), "value": value} for key, value in properties.items()
        ],
    }


def by_name(name: str, **properties: Any) -> JSON:
    return override({"id": "byName", "options": name}, **properties)


def by_regex(pattern: str, **properties: Any) -> JSON:
    return override({"id": "byRegexp", "options": pattern}, **properties)


DASHED = {"dash": [10, 10], "fill": "dash"}


@dataclass
class Panel:
    """A panel before layout: the grid position and id are assigned by :class:`Layout`."""

    type: str
    title: str
    description: str
    queries: Sequence[Target]
    width: int = 12
    height: int = 8
    unit: str = ""
    decimals: int | None = None
    min: float | None = None
    max: float | None = None
    thresholds: JSON | None = None
    mappings: list[JSON] = field(default_factory=list)
    overrides: list[JSON] = field(default_factory=list)
    custom: JSON = field(default_factory=dict)
    options: JSON = field(default_factory=dict)
    transformations: list[JSON] = field(default_factory=list)
    interval: str = ""
    """Minimum ``$__interval`` for this panel (e.g. ``1d`` for daily series)."""
    time_from: str = ""
    """Relative time override (Grafana's "Query options → Relative time"), e.g. ``30d``."""

    def to_json(self, panel_id: int, x: int, y: int) -> JSON:
        defaults: JSON = {"custom": dict(self.custom), "mappings": list(self.mappings)}
        if self.unit:
            defaults["unit"] = self.unit
        if self.decimals is not None:
            defaults["decimals"] = self.decimals
        if self.min is not None:
            defaults["min"] = self.min
        if self.max is not None:
            defaults["max"] = self.max
        defaults["thresholds"] = self.thresholds or thresholds((None, "green"))
        defaults["color"] = {"mode": "thresholds" if self.thresholds else "palette-classic"}
        out: JSON = {
            "datasource": DATASOURCE,
            "description": self.description,
            "fieldConfig": {"defaults": defaults, "overrides": list(self.overrides)},
            "gridPos": {"h": self.height, "w": self.width, "x": x, "y": y},
            "id": panel_id,
            "options": dict(self.options),
            "targets": targets(self.queries),
            "title": self.title,
            "type": self.type,
        }
        if self.transformations:
            out["transformations"] = list(self.transformations)
        if self.interval:
            out["interval"] = self.interval
        if self.time_from:
            out["timeFrom"] = self.time_from
        return out


# --- panel kinds ----------------------------------------------------------------------------

_LEGEND = {
    "calcs": ["lastNotNull", "min", "max"],
    "displayMode": "table",
    "placement": "right",
    "showLegend": True,
}


def timeseries(
    title: str,
    description: str,
    queries: Sequence[Target],
    *,
    unit: str = "",
    draw: Literal["line", "bars", "points"] = "line",
    stack: bool = False,
    **kwargs: Any,
) -> Panel:
    custom: JSON = {
        "drawStyle": draw,
        "fillOpacity": 60 if draw == "bars" else 10,
        "lineWidth": 1,
        "pointSize": 4,
        "showPoints": "never" if draw == "line" else "auto",
        "spanNulls": 3_600_000,
        "stacking": {"group": "A", "mode": "normal" if stack else "none"},
    }
    custom.update(kwargs.pop("custom", {}))
    options = {"legend": dict(_LEGEND), "tooltip": {"mode": "multi", "sort": "desc"}}
    return Panel(
        "timeseries",
        title,
        description,
        queries,
        unit=unit,
        custom=custom,
        options=options,
        **kwargs,
    )


def _reduce(calcs: Sequence[str], fields: str) -> JSON:
    return {"calcs": list(calcs), "fields": fields, "values": False}


def stat(
    title: str,
    description: str,
    queries: Sequence[Target],
    *,
    unit: str = "",
    reduce_calcs: Sequence[str] = ("lastNotNull",),
    fields: str = "",
    **kwargs: Any,
) -> Panel:
    """One big number per series; ``fields="/.*/"`` also shows text fields (states, dates)."""
    options = {
        "colorMode": "background",
        "graphMode": "none",
        "justifyMode": "auto",
        "orientation": "auto",
        "reduceOptions": _reduce(reduce_calcs, fields),
        "textMode": "value_and_name",
    }
    return Panel("stat", title, description, queries, unit=unit, options=options, **kwargs)


def bargauge(
    title: str, description: str, queries: Sequence[Target], *, unit: str = "", **kwargs: Any
) -> Panel:
    options = {
        "displayMode": "gradient",
        "orientation": "horizontal",
        "reduceOptions": _reduce(["lastNotNull"], ""),
        "showUnfilled": True,
        "valueMode": "color",
    }
    return Panel("bargauge", title, description, queries, unit=unit, options=options, **kwargs)


def table(
    title: str,
    description: str,
    queries: Sequence[Target],
    *,
    rename: Mapping[str, str] | None = None,
    hide: Iterable[str] = (),
    exclude_values: Mapping[str, str] | None = None,
    sort_by: str = "",
    sort_desc: bool = True,
    **kwargs: Any,
) -> Panel:
    """A table of ``resultFormat=table`` queries, merged, with columns renamed and hidden."""
    transformations: list[JSON] = list(kwargs.pop("transformations", []))
    # Grafana may return one frame per series (per GROUP BY tag value): merge them into
    # one table, and the frames of several queries with them.
    transformations.append({"id": "merge", "options": {}})
    if exclude_values:
        transformations.append(
            {
                "id": "filterByValue",
                "options": {
                    "filters": [
                        {
                            "config": {"id": "regex", "options": {"value": pattern}},
                            "fieldName": name,
                        }
                        for name, pattern in exclude_values.items()
                    ],
                    "match": "any",
                    "type": "exclude",
                },
            }
        )
    if rename or hide:
        transformations.append(
            {
                "id": "organize",
                "options": {
                    "excludeByName": {name: True for name in hide},
                    "renameByName": dict(rename or {}),
                },
            }
        )
    options: JSON = {"cellHeight": "sm", "footer": {"show": False}, "showHeader": True}
    if sort_by:
        options["sortBy"] = [{"desc": sort_desc, "displayName": sort_by}]
    custom = {"align": "auto", "cellOptions": {"type": "auto"}, "filterable": True}
    return Panel(
        "table",
        title,
        description,
        queries,
        custom=custom,
        options=options,
        transformations=transformations,
        **kwargs,
    )


def state_timeline(title: str, description: str, queries: Sequence[Target], **kwargs: Any) -> Panel:
    options = {
        "alignValue": "center",
        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
        "mergeValues": True,
        "rowHeight": 0.85,
        "showValue": "auto",
        "tooltip": {"mode": "single", "sort": "none"},
    }
    custom = {"fillOpacity": 80, "lineWidth": 0}
    return Panel(
        "state-timeline", title, description, queries, custom=custom, options=options, **kwargs
    )


def text(title: str, markdown: str, *, width: int = 24, height: int = 3) -> Panel:
    panel = Panel("text", title, "", (), width=width, height=height)
    panel.options = {"content": markdown, "mode": "markdown"}
    return panel


# --- layout, variables, dashboard -----------------------------------------------------------


class Layout:
    """Places panels left to right on Grafana's 24-column grid, wrapping to new rows."""

    def __init__(self) -> None:
        self.panels: list[JSON] = []
        self._x = 0
        self._y = 0
        self._row_height = 0

    def add(self, panel: Panel) -> None:
        if self._x + panel.width > 24:
            self._x = 0
            self._y += self._row_height
            self._row_height = 0
        self.panels.append(panel.to_json(len(self.panels) + 1, self._x, self._y))
        self._x += panel.width
        self._row_height = max(self._row_height, panel.height)


def datasource_variable() -> JSON:
    return {
        "current": {
            "selected": False,
            "text": DEFAULT_DATASOURCE_NAME,
            "value": DEFAULT_DATASOURCE_UID,
        },
        "hide": 0,
        "includeAll": False,
        "label": "Data source",
        "multi": False,
        "name": DATASOURCE_VAR,
        "options": [],
        "query": "influxdb",
        "refresh": 1,
        "regex": "",
        "type": "datasource",
    }


def query_variable(
    name: str, label: str, query: str, *, multi: bool = False, include_all: bool = False
) -> JSON:
    """A variable filled by an InfluxQL ``SHOW TAG VALUES`` query, refreshed on time change."""
    # Multi-value variables start on "All"; single ones on the first value Grafana finds.
    current = {"selected": True, "text": ["All"], "value": ["$__all"]} if include_all else {}
    return {
        "current": current,
        "datasource": DATASOURCE,
        "definition": query,
        "hide": 0,
        "includeAll": include_all,
        "label": label,
        "multi": multi,
        "name": name,
        "options": [],
        "query": query,
        "refresh": 2,
        "regex": "",
        "skipUrlSync": False,
        "sort": 1,
        "type": "query",
    }


@dataclass(frozen=True)
class Annotation:
    """An InfluxQL annotation query: each returned row becomes a marker on time series."""

    name: str
    query: str
    color: str
    text_column: str
    tags_columns: Sequence[str] = ()

    def to_json(self) -> JSON:
        tags = ",".join(self.tags_columns)
        return {
            "datasource": DATASOURCE,
            "enable": True,
            "hide": False,
            "iconColor": self.color,
            "name": self.name,
            "query": self.query,
            "tagsColumn": tags,
            "textColumn": self.text_column,
            "titleColumn": "",
            # Grafana 10+ reads the query from "target"; older versions from the fields above.
            "target": {
                "query": self.query,
                "rawQuery": True,
                "refId": "Anno",
                "resultFormat": "table",
                "tagsColumn": tags,
                "textColumn": self.text_column,
            },
        }


def dashboard(
    *,
    uid: str,
    title: str,
    description: str,
    panels: Sequence[Panel],
    variables: Sequence[JSON],
    annotations: Sequence[Annotation] = (),
    time_from: str = "now-24h",
    refresh: str = "1m",
) -> JSON:
    layout = Layout()
    for panel in panels:
        layout.add(panel)
    builtin = {
        "builtIn": 1,
        "datasource": {"type": "grafana", "uid": "-- Grafana --"},
        "enable": True,
        "hide": True,
        "iconColor": "rgba(0, 211, 255, 1)",
        "name": "Annotations & Alerts",
        "type": "dashboard",
    }
    return {
        "annotations": {"list": [builtin, *(a.to_json() for a in annotations)]},
        "description": description,
        "editable": True,
        "graphTooltip": 1,
        "links": [
            {
                "asDropdown": True,
                "icon": "external link",
                "includeVars": True,
                "keepTime": True,
                "tags": ["orchard"],
                "title": "Orchard dashboards",
                "type": "dashboards",
            }
        ],
        "panels": layout.panels,
        "refresh": refresh,
        "schemaVersion": SCHEMA_VERSION,
        "tags": ["orchard"],
        "templating": {"list": [datasource_variable(), *variables]},
        "time": {"from": time_from, "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "title": title,
        "uid": uid,
        "version": 1,
    }


def dump(board: JSON) -> str:
    """Deterministic text: sorted keys, two-space indent, trailing newline."""
    return json.dumps(board, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
