"""The orchard dashboards: one function per panel, one function per dashboard.

Queries read only what ingest and control write (:mod:`orchard.schema`):

- ``telemetry``: per node readings (ingest), for per-node detail and fleet health;
- ``block_state``: per block aggregates and the thresholds in force (control), for
  everything "per block now" — the control loop already discards faulty nodes;
- ``block_daily``, ``irrigation``, ``alarm``: daily agronomy and events (control);
- ``readiness``, ``listing``: harvest (control/harvest);
- ``node_status``, ``dead_letter``: presence and rejected messages (ingest).
"""

from __future__ import annotations

from collections.abc import Callable

from dashboards.grafana import (
    DASHED,
    JSON,
    Annotation,
    Panel,
    Target,
    bargauge,
    by_name,
    by_regex,
    dashboard,
    override,
    query_variable,
    stat,
    state_timeline,
    table,
    thresholds,
    timeseries,
    value_mappings,
)
from dashboards.influxql import INTERVAL, From, latest, tag_values

TELEMETRY = From("telemetry")
NODE_STATUS = From("node_status")
DEAD_LETTER = From("dead_letter")
BLOCK_STATE = From("block_state")
BLOCK_DAILY = From("block_daily")
IRRIGATION = From("irrigation")
ALARM = From("alarm")
READINESS = From("readiness")
LISTING = From("listing")

# --- variables ------------------------------------------------------------------------------


def farm_variable() -> JSON:
    return query_variable("farm", "Farm", tag_values("telemetry", "farm"))


def block_variable(*, multi: bool) -> JSON:
    return query_variable(
        "block",
        "Block",
        tag_values("telemetry", "block", within=["farm"]),
        multi=multi,
        include_all=multi,
    )


def node_variable() -> JSON:
    return query_variable(
        "node",
        "Node",
        tag_values("telemetry", "node", within=["farm", "block"]),
        multi=True,
        include_all=True,
    )


def _farm(source: From) -> list[str]:
    return [source.match("farm")]


def _farm_block(source: From) -> list[str]:
    return [source.match("farm"), source.match("block")]


def _farm_block_node(source: From) -> list[str]:
    return [source.match("farm"), source.match("block"), source.match("node")]


READINESS_STATES = {
    "not_ready": ("Not ready", "blue"),
    "ready_soon": ("Ready soon", "yellow"),
    "ready": ("Ready", "green"),
    "harvested": ("Harvested", "purple"),
}
LISTING_STATES = {
    "draft": ("Draft", "blue"),
    "published": ("Published", "green"),
    "sold_out": ("Sold out", "purple"),
    "withdrawn": ("Withdrawn", "red"),
}
ONLINE = {"1": ("Online", "green"), "0": ("Offline", "red")}

# VPD bands from ../shared/agronomy-reference.md (tunable defaults, not per crop):
# sustained VPD above about 2.5 kPa closes stomata; below about 0.4 kPa is a disease risk.
VPD_LOW_KPA = 0.4
VPD_HIGH_KPA = 2.5

# --- Orchard overview -----------------------------------------------------------------------


def overview_blocks_now() -> Panel:
    columns = (
        "temperature",
        "humidity",
        "vpd",
        "soil_moisture",
        "trigger",
        "maturity",
        "maturity_threshold",
        "healthy_nodes",
        "open_alarms",
    )
    query = latest(BLOCK_STATE, columns, where=_farm(BLOCK_STATE), by_tags=["block"])
    return table(
        "Blocks now",
        "Latest control-loop view of every block: robust aggregates over its healthy nodes "
        "and the thresholds in force.",
        [Target(query, result_format="table")],
        width=24,
        height=7,
        rename={
            "Time": "Updated",
            "block": "Block",
            "temperature": "Temperature °C",
            "humidity": "Humidity %",
            "vpd": "VPD kPa",
            "soil_moisture": "Soil moisture m³/m³",
            "trigger": "Irrigation trigger",
            "maturity": "Maturity",
            "maturity_threshold": "Harvest threshold",
            "healthy_nodes": "Healthy nodes",
            "open_alarms": "Open alarms",
        },
        decimals=2,
    )


def overview_temperature() -> Panel:
    query = BLOCK_STATE.select(
        [BLOCK_STATE.agg("last", "temperature")], where=_farm(BLOCK_STATE), by_tags=["block"]
    )
    return stat(
        "Temperature now",
        "Latest block temperature (median of healthy nodes).",
        [Target(query, alias="$tag_block")],
        unit="celsius",
        decimals=1,
        width=12,
        height=5,
        thresholds=thresholds((None, "blue"), (0, "green"), (30, "orange"), (35, "red")),
    )


def overview_humidity() -> Panel:
    query = BLOCK_STATE.select(
        [BLOCK_STATE.agg("last", "humidity")], where=_farm(BLOCK_STATE), by_tags=["block"]
    )
    return stat(
        "Humidity now",
        "Latest block relative humidity.",
        [Target(query, alias="$tag_block")],
        unit="humidity",
        decimals=0,
        width=12,
        height=5,
        thresholds=thresholds((None, "orange"), (30, "green"), (90, "blue")),
    )


def overview_soil_margin() -> Panel:
    # Negative means the block is below its trigger: the control loop should be irrigating.
    column = f'last({BLOCK_STATE.field("soil_moisture")}) - last({BLOCK_STATE.field("trigger")}) AS "margin"'
    query = BLOCK_STATE.select([column], where=_farm(BLOCK_STATE), by_tags=["block"])
    return bargauge(
        "Soil moisture above irrigation trigger",
        "Latest root-zone soil moisture minus the block's irrigation trigger (m³/m³). Below zero "
        "the block is drier than its trigger.",
        [Target(query, alias="$tag_block")],
        unit="none",
        decimals=3,
        min=-0.1,
        max=0.2,
        thresholds=thresholds((None, "red"), (0, "yellow"), (0.02, "green")),
    )


def overview_maturity_progress() -> Panel:
    column = (
        f"last({BLOCK_STATE.field('maturity')}) / last({BLOCK_STATE.field('maturity_threshold')}) "
        '* 100 AS "progress"'
    )
    query = BLOCK_STATE.select([column], where=_farm(BLOCK_STATE), by_tags=["block"])
    return bargauge(
        "Maturity, % of harvest threshold",
        "Latest maturity index of each block as a share of its crop/variety harvest threshold "
        "(100 % = ready to pick).",
        [Target(query, alias="$tag_block")],
        unit="percent",
        decimals=0,
        min=0,
        max=120,
        thresholds=thresholds((None, "blue"), (90, "yellow"), (100, "green")),
    )


def overview_soil_moisture() -> Panel:
    query = BLOCK_STATE.select(
        [BLOCK_STATE.agg("mean", "soil_moisture")],
        where=_farm(BLOCK_STATE),
        by_time=INTERVAL,
        by_tags=["block"],
        fill="none",
    )
    return timeseries(
        "Soil moisture by block",
        "Root-zone soil moisture per block (robust aggregate over healthy nodes).",
        [Target(query, alias="$tag_block")],
        unit="none",
        decimals=3,
        width=24,
    )


def overview_open_alarms() -> Panel:
    query = BLOCK_STATE.select(
        [BLOCK_STATE.agg("last", "open_alarms")], where=_farm(BLOCK_STATE), by_tags=["block"]
    )
    return stat(
        "Open alarms per block",
        "Alarms not yet cleared, per block, as the control loop last counted them.",
        [Target(query, alias="$tag_block")],
        decimals=0,
        width=8,
        height=6,
        thresholds=thresholds((None, "green"), (1, "red")),
    )


def overview_alarm_list() -> Panel:
    # One row per (block, type, subject): severity is a tag that changes when an alarm
    # escalates, so grouping by it would leave the pre-escalation series "active" forever.
    query = latest(
        ALARM,
        ("state", "severity", "event", "message", "value"),
        where=_farm(ALARM),
        by_tags=["block", "type", "subject"],
    )
    return table(
        "Open alarms",
        "Every alarm whose latest event (last year) is not a clear: type, subject, severity, "
        "state (unacknowledged or acknowledged), since when, and the message.",
        [Target(query, result_format="table")],
        width=16,
        height=6,
        time_from="365d",
        exclude_values={"state": "^cleared"},
        rename={
            "block": "Block",
            "type": "Type",
            "severity": "Severity",
            "subject": "Subject",
            "state": "State",
            "event": "Last event",
            "message": "Message",
            "value": "Value",
            "Time": "Since",
        },
    )


def overview_readiness() -> Panel:
    columns = ("state", "ready_share", "gdd_cum", "gdd_target", "forecast_date", "forecast_days")
    query = latest(READINESS, columns, where=_farm(READINESS), by_tags=["block"])
    return table(
        "Harvest readiness",
        "Latest daily readiness evaluation per block: state, share of healthy nodes past the "
        "maturity threshold, degree-days against the cultivar target, forecast ready date.",
        [Target(query, result_format="table")],
        width=12,
        height=7,
        time_from="7d",
        rename={
            "Time": "Evaluated",
            "block": "Block",
            "state": "State",
            "ready_share": "Ready share",
            "gdd_cum": "GDD",
            "gdd_target": "GDD target",
            "forecast_date": "Forecast ready",
            "forecast_days": "Days to ready",
        },
        mappings=value_mappings(READINESS_STATES),
        overrides=[by_name("Ready share", unit="percentunit")],
        decimals=1,
    )


def _listing_table(title: str, *, with_block_filter: bool, width: int) -> Panel:
    where = _farm_block(LISTING) if with_block_filter else _farm(LISTING)
    columns = ("state", "quantity_kg", "grade", "event")
    query = latest(LISTING, columns, where=where, by_tags=["block", "lot"])
    return table(
        title,
        "Latest state of each product lot listed for the shop in the last 90 days.",
        [Target(query, result_format="table")],
        width=width,
        height=7,
        time_from="90d",
        rename={
            "Time": "Last change",
            "block": "Block",
            "lot": "Lot",
            "state": "State",
            "quantity_kg": "Quantity kg",
            "grade": "Grade",
            "event": "Last event",
        },
        mappings=value_mappings(LISTING_STATES),
        decimals=0,
    )


def overview_listings() -> Panel:
    return _listing_table("Listings", with_block_filter=False, width=12)


def overview() -> JSON:
    return dashboard(
        uid="orchard-overview",
        title="Orchard overview",
        description="Every block of the farm at a glance: climate, soil moisture against the "
        "irrigation trigger, maturity against the harvest threshold, alarms, readiness, listings.",
        variables=[farm_variable()],
        panels=[
            overview_blocks_now(),
            overview_temperature(),
            overview_humidity(),
            overview_soil_margin(),
            overview_maturity_progress(),
            overview_open_alarms(),
            overview_alarm_list(),
            overview_readiness(),
            overview_listings(),
            overview_soil_moisture(),
        ],
        time_from="now-24h",
    )


# --- Block detail ---------------------------------------------------------------------------


def _per_node(name: str) -> Target:
    query = TELEMETRY.select(
        [TELEMETRY.agg("mean", name)],
        where=_farm_block_node(TELEMETRY),
        by_time=INTERVAL,
        by_tags=["node"],
        fill="none",
    )
    return Target(query, alias="$tag_node")


def _block_series(source: From, *names: str, function: str = "mean", fill: str = "none") -> Target:
    query = source.select(
        [source.agg(function, name) for name in names],
        where=_farm_block(source),
        by_time=INTERVAL,
        fill=fill,
    )
    return Target(query, alias="block $col")


_BLOCK_LINE = by_regex(
    "^block .*", custom__lineWidth=3, color={"mode": "fixed", "fixedColor": "text"}
)


def block_temperature() -> Panel:
    return timeseries(
        "Temperature",
        "Air temperature of each selected node, and the block's robust aggregate (thick line).",
        [_per_node("temperature"), _block_series(BLOCK_STATE, "temperature")],
        unit="celsius",
        overrides=[_BLOCK_LINE],
    )


def block_humidity() -> Panel:
    return timeseries(
        "Relative humidity",
        "Relative humidity of each selected node, and the block's robust aggregate.",
        [_per_node("humidity"), _block_series(BLOCK_STATE, "humidity")],
        unit="humidity",
        min=0,
        max=100,
        overrides=[_BLOCK_LINE],
    )


def block_vpd() -> Panel:
    return timeseries(
        "Vapour pressure deficit",
        f"Block VPD (kPa). Dashed lines: sustained VPD above {VPD_HIGH_KPA} kPa closes stomata, "
        f"below {VPD_LOW_KPA} kPa with a wet canopy is a disease risk (tunable defaults).",
        [_block_series(BLOCK_STATE, "vpd")],
        unit="pressurekpa",
        min=0,
        thresholds=thresholds((None, "blue"), (VPD_LOW_KPA, "green"), (VPD_HIGH_KPA, "red")),
        custom={"thresholdsStyle": {"mode": "dashed"}},
    )


def block_soil_moisture() -> Panel:
    return timeseries(
        "Soil moisture, trigger and refill",
        "Soil moisture of each selected node and of the block (thick), with the irrigation "
        "trigger (red, dashed) and the refill target (blue, dashed) in force at the time.",
        [
            _per_node("soil_moisture"),
            _block_series(BLOCK_STATE, "soil_moisture"),
            _block_series(BLOCK_STATE, "trigger", "refill", function="last", fill="previous"),
        ],
        unit="none",
        decimals=3,
        width=24,
        height=9,
        overrides=[
            _BLOCK_LINE,
            by_name(
                "block trigger",
                custom__lineStyle=DASHED,
                color={"mode": "fixed", "fixedColor": "red"},
            ),
            by_name(
                "block refill",
                custom__lineStyle=DASHED,
                color={"mode": "fixed", "fixedColor": "blue"},
            ),
        ],
    )


def block_maturity() -> Panel:
    return timeseries(
        "Maturity index and harvest threshold",
        "Maturity index of each selected node (crop's index: starch, Brix/acid, dry matter, SSC) "
        "and the block's aggregate, with the harvest threshold (green, dashed).",
        [
            _per_node("maturity"),
            _block_series(BLOCK_STATE, "maturity"),
            _block_series(BLOCK_STATE, "maturity_threshold", function="last", fill="previous"),
        ],
        width=16,
        height=9,
        overrides=[
            _BLOCK_LINE,
            by_name(
                "block maturity_threshold",
                custom__lineStyle=DASHED,
                color={"mode": "fixed", "fixedColor": "green"},
            ),
        ],
    )


def block_forecast() -> Panel:
    columns = (
        "state",
        "forecast_date",
        "forecast_days",
        "forecast_low_days",
        "forecast_high_days",
        "ready_share",
    )
    query = latest(READINESS, columns, where=_farm_block(READINESS))
    return stat(
        "Harvest forecast",
        "Latest readiness state and forecast ready date with its uncertainty band (days from "
        "the evaluation). No date means the forecast is too uncertain to give one.",
        [Target(query, result_format="table")],
        width=8,
        height=9,
        time_from="7d",
        mappings=value_mappings(READINESS_STATES),
        overrides=[by_name("ready_share", unit="percentunit")],
        decimals=1,
        fields="/.*/",
    )


def block_gdd() -> Panel:
    return timeseries(
        "Growing degree-days since bloom",
        "Degree-days accumulated since bloom against the cultivar's target (dashed).",
        [
            _block_series(BLOCK_DAILY, "gdd_cum", function="last", fill="previous"),
            _block_series(READINESS, "gdd_target", function="last", fill="previous"),
        ],
        interval="1d",
        overrides=[
            by_name(
                "block gdd_target",
                custom__lineStyle=DASHED,
                color={"mode": "fixed", "fixedColor": "green"},
            )
        ],
    )


def _bars(name: str, color: str) -> JSON:
    return override(
        {"id": "byName", "options": name},
        custom__drawStyle="bars",
        custom__fillOpacity=60,
        color={"mode": "fixed", "fixedColor": color},
    )


def block_water_balance() -> Panel:
    return timeseries(
        "Daily water balance",
        "FAO-56 daily agronomy (mm): rain and irrigation in (bars), reference ET0 and crop "
        "ETc out, root-zone depletion against the readily available water (dashed): "
        "irrigation is due when depletion reaches RAW.",
        [
            _block_series(
                BLOCK_DAILY,
                "rain_mm",
                "irrigation_mm",
                "et0",
                "etc",
                "depletion_mm",
                "raw_mm",
                function="last",
            )
        ],
        unit="lengthmm",
        interval="1d",
        width=24,
        overrides=[
            by_name("block raw_mm", custom__lineStyle=DASHED),
            _bars("block rain_mm", "blue"),
            _bars("block irrigation_mm", "green"),
        ],
    )


def block_annotations() -> list[Annotation]:
    # Decisions and how each command ended; not every intermediate command event.
    irrigation = IRRIGATION.select(
        [IRRIGATION.column(c) for c in ("reason", "event", "valve", "duration_s", "depth_mm")],
        where=[
            *_farm_block(IRRIGATION),
            IRRIGATION.field_matches(
                "event", "^(decision_|command_(completed|failed|timed_out|expired))"
            ),
        ],
    )
    alarms = ALARM.select(
        [ALARM.column(c) for c in ("message", "event", "type", "severity", "subject")],
        where=_farm_block(ALARM),
    )
    return [
        Annotation("Irrigation", irrigation, "blue", "reason", ("event", "valve")),
        Annotation("Alarms", alarms, "red", "message", ("type", "severity", "event")),
    ]


def block_detail() -> JSON:
    return dashboard(
        uid="orchard-block",
        title="Block detail",
        description="One block, node by node: climate, VPD, soil moisture against its trigger "
        "and refill, maturity against its threshold with the harvest forecast. Irrigation runs "
        "and alarms are shown as annotations.",
        variables=[farm_variable(), block_variable(multi=False), node_variable()],
        annotations=block_annotations(),
        panels=[
            block_temperature(),
            block_humidity(),
            block_soil_moisture(),
            block_maturity(),
            block_forecast(),
            block_vpd(),
            block_gdd(),
            block_water_balance(),
        ],
        time_from="now-7d",
    )


# --- Irrigation and water use ---------------------------------------------------------------


# Irrigation points: one "decision_<code>" per valve when control decides (irrigate,
# irrigate_capped, skip_rain), then "command_<event>" per valve command. Depth and water
# are summed over the decisions to irrigate only, so command events do not count again.
IRRIGATE_DECISIONS = "^decision_irrigate"


def _applied(source: From) -> list[str]:
    return [*_farm_block(source), source.field_matches("event", IRRIGATE_DECISIONS)]


def _per_block_sum(name: str) -> Target:
    query = IRRIGATION.select(
        [IRRIGATION.agg("sum", name)],
        where=_applied(IRRIGATION),
        by_time=INTERVAL,
        by_tags=["block"],
        fill="0",
    )
    return Target(query, alias="$tag_block")


def irrigation_water_per_day() -> Panel:
    return timeseries(
        "Water applied per day",
        "Water volume of irrigation runs (m³), per block and day.",
        [_per_block_sum("water_m3")],
        unit="m3",
        draw="bars",
        stack=True,
        interval="1d",
        width=16,
    )


def irrigation_water_total() -> Panel:
    query = IRRIGATION.select(
        [IRRIGATION.agg("sum", "water_m3")], where=_applied(IRRIGATION), by_tags=["block"]
    )
    return stat(
        "Water used in the period",
        "Total irrigation water per block over the selected time range (m³).",
        [Target(query, alias="$tag_block")],
        unit="m3",
        decimals=1,
        width=8,
        thresholds=thresholds((None, "blue")),
        reduce_calcs=["sum"],
    )


def irrigation_depth_per_day() -> Panel:
    # Per valve: a depth is over the area a valve waters, so adding valves would overstate it.
    query = IRRIGATION.select(
        [IRRIGATION.agg("sum", "depth_mm")],
        where=_applied(IRRIGATION),
        by_time=INTERVAL,
        by_tags=["block", "valve"],
        fill="0",
    )
    return timeseries(
        "Depth decided per day, per valve",
        "Irrigation depth (mm) each valve was to apply, per day: decisions to irrigate only.",
        [Target(query, alias="$tag_block $tag_valve")],
        unit="lengthmm",
        draw="bars",
        interval="1d",
    )


def irrigation_etc_per_day() -> Panel:
    query = BLOCK_DAILY.select(
        [BLOCK_DAILY.agg("last", "etc")],
        where=_farm_block(BLOCK_DAILY),
        by_time=INTERVAL,
        by_tags=["block"],
        fill="none",
    )
    return timeseries(
        "Crop water use (ETc) per day",
        "FAO-56 crop evapotranspiration ETc = Kc × ET0 (mm/day), per block: what irrigation "
        "and rain must replace.",
        [Target(query, alias="$tag_block")],
        unit="lengthmm",
        interval="1d",
    )


def irrigation_rain_and_irrigation() -> Panel:
    query = BLOCK_DAILY.select(
        [BLOCK_DAILY.agg("last", "rain_mm"), BLOCK_DAILY.agg("last", "irrigation_mm")],
        where=_farm_block(BLOCK_DAILY),
        by_time=INTERVAL,
        by_tags=["block"],
        fill="none",
    )
    return timeseries(
        "Rain and irrigation per day",
        "Water that reached each block's root zone per day (mm), as the daily water balance "
        "counts it: rain (estimated from soil moisture rises no irrigation explains) and "
        "irrigation.",
        [Target(query, alias="$tag_block $col")],
        unit="lengthmm",
        draw="bars",
        interval="1d",
    )


def irrigation_depletion() -> Panel:
    query = BLOCK_DAILY.select(
        [BLOCK_DAILY.agg("last", "depletion_mm"), BLOCK_DAILY.agg("last", "raw_mm")],
        where=_farm_block(BLOCK_DAILY),
        by_time=INTERVAL,
        by_tags=["block"],
        fill="none",
    )
    return timeseries(
        "Root-zone depletion against readily available water",
        "Daily root-zone depletion (mm) per block; dashed: readily available water (RAW). "
        "Irrigation is due when depletion reaches RAW.",
        [Target(query, alias="$tag_block $col")],
        unit="lengthmm",
        interval="1d",
        overrides=[by_regex(".* raw_mm$", custom__lineStyle=DASHED)],
    )


def irrigation_events() -> Panel:
    columns = [
        IRRIGATION.column(c)
        for c in (
            "block",
            "valve",
            "event",
            "command_id",
            "duration_s",
            "depth_mm",
            "water_m3",
            "reason",
        )
    ]
    query = IRRIGATION.select(columns, where=_farm_block(IRRIGATION), newest_first=True, limit=500)
    return table(
        "Irrigation decisions and commands",
        "Every irrigation decision and valve-command event, newest first, with the reason "
        "the control loop gave.",
        [Target(query, result_format="table")],
        width=24,
        height=10,
        rename={
            "block": "Block",
            "valve": "Valve",
            "event": "Event",
            "command_id": "Command",
            "duration_s": "Duration s",
            "depth_mm": "Depth mm",
            "water_m3": "Water m³",
            "reason": "Reason",
        },
    )


def irrigation() -> JSON:
    return dashboard(
        uid="orchard-irrigation",
        title="Irrigation and water use",
        description="Water applied per block and day, against crop water use and root-zone "
        "depletion, with every decision and its reason.",
        variables=[farm_variable(), block_variable(multi=True)],
        panels=[
            irrigation_water_per_day(),
            irrigation_water_total(),
            irrigation_depth_per_day(),
            irrigation_etc_per_day(),
            irrigation_rain_and_irrigation(),
            irrigation_depletion(),
            irrigation_events(),
        ],
        time_from="now-30d",
        refresh="5m",
    )


# --- Harvest and listings -------------------------------------------------------------------


def harvest_state_timeline() -> Panel:
    query = READINESS.select(
        [READINESS.agg("last", "state")],
        where=_farm_block(READINESS),
        by_time=INTERVAL,
        by_tags=["block"],
        fill="previous",
    )
    return state_timeline(
        "Readiness by block",
        "Readiness state of each block over the season: not ready → ready soon → ready → harvested.",
        [Target(query, alias="$tag_block")],
        width=24,
        height=7,
        interval="1d",
        mappings=value_mappings(READINESS_STATES),
    )


def _per_block_daily(source: From, name: str, function: str = "last") -> Target:
    query = source.select(
        [source.agg(function, name)],
        where=_farm_block(source),
        by_time=INTERVAL,
        by_tags=["block"],
        fill="none",
    )
    return Target(query, alias="$tag_block")


def harvest_ready_share() -> Panel:
    return timeseries(
        "Share of nodes past the maturity threshold",
        "Per block, the share of healthy nodes whose maturity index passed the harvest threshold.",
        [_per_block_daily(READINESS, "ready_share")],
        unit="percentunit",
        min=0,
        max=1,
        interval="1d",
    )


def harvest_gdd_progress() -> Panel:
    column = f'last({READINESS.field("gdd_cum")}) / last({READINESS.field("gdd_target")}) * 100 AS "gdd_progress"'
    query = READINESS.select(
        [column], where=_farm_block(READINESS), by_time=INTERVAL, by_tags=["block"], fill="none"
    )
    return timeseries(
        "Degree-days, % of cultivar target",
        "Growing degree-days accumulated since bloom as a share of the cultivar's target.",
        [Target(query, alias="$tag_block")],
        unit="percent",
        min=0,
        interval="1d",
        thresholds=thresholds((None, "transparent"), (100, "green")),
        custom={"thresholdsStyle": {"mode": "dashed"}},
    )


def harvest_maturity_progress() -> Panel:
    column = (
        f"mean({BLOCK_STATE.field('maturity')}) / last({BLOCK_STATE.field('maturity_threshold')}) "
        '* 100 AS "maturity_progress"'
    )
    query = BLOCK_STATE.select(
        [column], where=_farm_block(BLOCK_STATE), by_time=INTERVAL, by_tags=["block"], fill="none"
    )
    return timeseries(
        "Maturity, % of harvest threshold",
        "Block maturity index as a share of its harvest threshold, so crops with different "
        "indices compare on one axis (100 % = ready).",
        [Target(query, alias="$tag_block")],
        unit="percent",
        min=0,
        thresholds=thresholds((None, "transparent"), (100, "green")),
        custom={"thresholdsStyle": {"mode": "dashed"}},
    )


def harvest_forecast_table() -> Panel:
    columns = ("state", "forecast_date", "forecast_days", "forecast_low_days", "forecast_high_days")
    query = latest(READINESS, columns, where=_farm_block(READINESS), by_tags=["block"])
    return table(
        "Forecast ready dates",
        "Latest forecast per block: the date, and days to ready with the low/high band. Empty "
        "when the forecast is too uncertain (too few nodes, noisy index).",
        [Target(query, result_format="table")],
        width=12,
        height=7,
        time_from="7d",
        rename={
            "Time": "Evaluated",
            "block": "Block",
            "state": "State",
            "forecast_date": "Ready on",
            "forecast_days": "Days",
            "forecast_low_days": "Earliest (days)",
            "forecast_high_days": "Latest (days)",
        },
        mappings=value_mappings(READINESS_STATES),
        decimals=1,
    )


def harvest_listings() -> Panel:
    return _listing_table("Listings", with_block_filter=True, width=12)


def harvest_listed_quantity() -> Panel:
    query = LISTING.select(
        [LISTING.agg("last", "quantity_kg")], where=_farm_block(LISTING), by_tags=["block", "lot"]
    )
    return bargauge(
        "Quantity per lot",
        "Estimated quantity of each listed lot (kg): trees × yield per tree × ready share, "
        "as corrected by the grower.",
        [Target(query, alias="$tag_block $tag_lot")],
        unit="masskg",
        decimals=0,
        min=0,
        width=24,
        height=6,
        time_from="90d",
        thresholds=thresholds((None, "green")),
    )


def harvest() -> JSON:
    return dashboard(
        uid="orchard-harvest",
        title="Harvest and listings",
        description="Readiness over the season, the maturity and degree-day evidence behind it, "
        "forecast ready dates, and the lots listed for the shop.",
        variables=[farm_variable(), block_variable(multi=True)],
        panels=[
            harvest_state_timeline(),
            harvest_maturity_progress(),
            harvest_gdd_progress(),
            harvest_ready_share(),
            harvest_forecast_table(),
            harvest_listings(),
            harvest_listed_quantity(),
        ],
        time_from="now-90d",
        refresh="15m",
    )


# --- Fleet health ---------------------------------------------------------------------------


# node_status has a point only when a node's presence changes: a node online for months
# has its last point months ago. A long look-back is cheap on this small measurement.
PRESENCE_LOOKBACK = "365d"


def _presence_count(title: str, description: str, column: str, color: str) -> Panel:
    # One row per node (its last presence state within a year), summed by Grafana: InfluxQL
    # cannot sum across GROUP BY series without a subquery, which 3.x may not serve.
    query = NODE_STATUS.select([column], where=_farm_block(NODE_STATUS), by_tags=["node"])
    return stat(
        title,
        description,
        [Target(query, result_format="table")],
        decimals=0,
        width=6,
        height=5,
        time_from=PRESENCE_LOOKBACK,
        thresholds=thresholds((None, color)),
        transformations=[
            {"id": "merge", "options": {}},
            {
                "id": "reduce",
                "options": {"includeTimeField": False, "mode": "reduceFields", "reducers": ["sum"]},
            },
        ],
    )


def fleet_online_now() -> Panel:
    return _presence_count(
        "Nodes online",
        "Nodes whose last status (retained status or Last Will) is online.",
        NODE_STATUS.agg("last", "online"),
        "green",
    )


def fleet_offline_now() -> Panel:
    return _presence_count(
        "Nodes offline",
        "Nodes whose last status is offline: their Last Will fired or they said goodbye.",
        f'1 - last({NODE_STATUS.field("online")}) AS "offline"',
        "red",
    )


def fleet_reporting_timeline() -> Panel:
    # From the readings themselves rather than node_status: status points exist only at
    # presence changes, so a node online for weeks has none inside a 24 h range.
    query = TELEMETRY.select(
        [TELEMETRY.agg("count", "seq", "readings")],
        where=_farm_block(TELEMETRY),
        by_time=INTERVAL,
        by_tags=["node"],
        fill="0",
    )
    mappings = [
        *value_mappings({"0": ("silent", "red")}),
        {
            "options": {
                "from": 1,
                "result": {"color": "green", "index": 1, "text": "reporting"},
                "to": 1e12,
            },
            "type": "range",
        },
    ]
    return state_timeline(
        "Reporting nodes",
        "Readings stored per node and interval (1 h or more, as nodes report at least hourly): "
        "red where a node sent nothing.",
        [Target(query, alias="$tag_node")],
        width=12,
        height=10,
        interval="1h",
        mappings=mappings,
    )


def fleet_status_table() -> Panel:
    query = NODE_STATUS.select(
        [NODE_STATUS.agg("last", "state"), NODE_STATUS.agg("last", "firmware")],
        where=_farm_block(NODE_STATUS),
        by_tags=["block", "node", "kind"],
    )
    return table(
        "Node status",
        "Latest presence state and firmware of each node (status messages of the last year).",
        [Target(query, result_format="table")],
        width=12,
        height=9,
        time_from=PRESENCE_LOOKBACK,
        hide=["Time"],
        rename={
            "block": "Block",
            "node": "Node",
            "kind": "Kind",
            "state": "State",
            "firmware": "Firmware",
        },
        mappings=value_mappings({"online": ("online", "green"), "offline": ("offline", "red")}),
    )


def fleet_last_seen() -> Panel:
    # A single selector keeps the time of the point it selects: the last reading's time.
    query = TELEMETRY.select(
        [TELEMETRY.agg("last", "seq")], where=_farm_block(TELEMETRY), by_tags=["block", "node"]
    )
    return table(
        "Last seen",
        "Time of the last stored reading of each node (last 7 days), oldest first.",
        [Target(query, result_format="table")],
        width=12,
        height=9,
        time_from="7d",
        rename={"Time": "Last seen", "block": "Block", "node": "Node", "seq": "Last seq"},
        sort_by="Last seen",
        sort_desc=False,
    )


def fleet_battery() -> Panel:
    query = TELEMETRY.select(
        [TELEMETRY.agg("last", "battery")],
        where=_farm_block(TELEMETRY),
        by_time=INTERVAL,
        by_tags=["node"],
        fill="none",
    )
    return timeseries(
        "Battery",
        "Battery voltage of each node.",
        [Target(query, alias="$tag_node")],
        unit="volt",
        decimals=2,
    )


def fleet_rssi() -> Panel:
    query = TELEMETRY.select(
        [TELEMETRY.agg("mean", "rssi")],
        where=_farm_block(TELEMETRY),
        by_time=INTERVAL,
        by_tags=["node"],
        fill="none",
    )
    return timeseries(
        "Radio signal (RSSI)",
        "Received signal strength of each node (dBm); below about -100 dBm links get lossy.",
        [Target(query, alias="$tag_node")],
        unit="dBm",
    )


def fleet_ingest_rate() -> Panel:
    column = f'count({TELEMETRY.field("seq")}) / ($__interval_ms / 1000) AS "readings_per_s"'
    query = TELEMETRY.select([column], where=_farm(TELEMETRY), by_time=INTERVAL, fill="0")
    return timeseries(
        "Readings stored per second",
        "Readings of the farm stored in InfluxDB per second, by device time.",
        [Target(query, alias="readings/s")],
        unit="reqps",
    )


def fleet_rejected() -> Panel:
    # dead_letter has no farm tag: a rejected message may not name a valid farm at all.
    query = DEAD_LETTER.select(
        [DEAD_LETTER.agg("sum", "count", "rejected")],
        by_time=INTERVAL,
        by_tags=["reason"],
        fill="0",
    )
    return timeseries(
        "Rejected messages by reason",
        "Messages ingest refused (dead-lettered), per reason. Every one is kept with its topic "
        "and payload: see the table below or the API.",
        [Target(query, alias="$tag_reason")],
        draw="bars",
        stack=True,
        decimals=0,
    )


def fleet_dead_letters() -> Panel:
    columns = [DEAD_LETTER.column(c) for c in ("reason", "topic", "detail", "payload")]
    query = DEAD_LETTER.select(columns, newest_first=True, limit=200)
    return table(
        "Latest rejected messages",
        "The newest dead letters: reason, topic, what was wrong, and the (truncated) payload.",
        [Target(query, result_format="table")],
        width=24,
        height=9,
        rename={
            "Time": "Received",
            "reason": "Reason",
            "topic": "Topic",
            "detail": "Detail",
            "payload": "Payload",
        },
    )


def fleet() -> JSON:
    return dashboard(
        uid="orchard-fleet",
        title="Fleet health",
        description="The devices and the pipeline: presence, last seen, battery and radio of "
        "every node, readings stored per second, and messages rejected by reason.",
        variables=[farm_variable(), block_variable(multi=True)],
        panels=[
            fleet_online_now(),
            fleet_offline_now(),
            fleet_ingest_rate(),
            fleet_reporting_timeline(),
            fleet_status_table(),
            fleet_last_seen(),
            fleet_battery(),
            fleet_rssi(),
            fleet_rejected(),
            fleet_dead_letters(),
        ],
        time_from="now-24h",
    )


DASHBOARDS: dict[str, Callable[[], JSON]] = {
    "orchard-overview": overview,
    "orchard-block": block_detail,
    "orchard-irrigation": irrigation,
    "orchard-harvest": harvest,
    "orchard-fleet": fleet,
}
"""Builders by uid; the JSON file of each is ``dashboards/json/<uid>.json``."""
