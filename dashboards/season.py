"""A simulated season in InfluxDB, written the way the services write it.

Used by the dashboard tests and ``orchard bench dashboards``, and handy to look at the
dashboards in a Grafana before a farm has any data.

Readings come from the simulator's offline season generator
(:func:`firmware_sim.season.simulate`, with irrigation runs) and are stored with
ingest's own line functions (:mod:`ingest.lines`), like node status and dead letters,
so the dashboards are proven against exactly what ingest stores. ``readiness`` and
``listing`` points are made by harvest's own writers (:func:`readiness_point`,
:func:`listing_point`). Control's ``block_state``, ``block_daily``, ``irrigation`` and
``alarm`` writers are not available yet, so those points are built from
:mod:`orchard.schema` with :func:`orchard.lineprotocol.encode_point` (every name
checked against the schema), with control's state vocabularies (alarm states and
events). Their values are deterministic and plausible, not agronomy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from statistics import median
from typing import Any

from control.harvest.engine import readiness_point
from control.harvest.forecast import Forecast
from control.harvest.lots import Lot, LotChange, listing_point
from control.harvest.readiness import Readiness, ReadinessState
from firmware_sim.season import ValveOpening, simulate
from ingest.lines import dead_letter_line, status_line, telemetry_lines
from orchard.crops import CropProfile
from orchard.influx import SyncInfluxClient
from orchard.layout import Orchard
from orchard.lineprotocol import FieldValue, encode_point, to_ns
from orchard.models import Reading, Status
from orchard.schema import MEASUREMENTS


@dataclass(frozen=True)
class Season:
    orchard: Orchard
    start: datetime
    end: datetime
    offline_node: str
    listed_blocks: tuple[str, ...]
    latest_state: dict[str, dict[str, FieldValue | None]]
    """The last ``block_state`` fields written per block."""
    irrigations: list[tuple[str, datetime, float]]
    """(block, decision time, water m³ of the whole block) of every irrigation."""

    @property
    def farm(self) -> str:
        return self.orchard.farm.id


def _point(
    measurement: str, tags: dict[str, str], fields: dict[str, FieldValue | None], ts: datetime
) -> str:
    spec = MEASUREMENTS[measurement]
    # The season must hold to the storage contract too, or it would prove nothing.
    assert set(tags) <= set(spec.tags), (measurement, tags)
    assert {k for k, v in fields.items() if v is not None} <= set(spec.fields), (
        measurement,
        fields,
    )
    return encode_point(measurement, tags, fields, to_ns(ts))


def _climate(ts: datetime, block_index: int, node_index: int) -> tuple[float, float]:
    hour = ts.hour + ts.minute / 60
    diurnal = math.sin((hour - 9) / 24 * 2 * math.pi)  # warmest mid-afternoon
    temperature = 18 + 2 * block_index + 8 * diurnal + 0.3 * node_index
    humidity = max(15.0, min(98.0, 65 - 22 * diurnal - node_index))
    return temperature, humidity


def _vpd(temperature: float, humidity: float) -> float:
    # FAO-56 Eq. 11 saturation vapour pressure; VPD = e°(T)·(1 − RH/100).
    es = 0.6108 * math.exp(17.27 * temperature / (temperature + 237.3))
    return es * (1 - humidity / 100)


def _readiness(block: str, day: date, share: float, gdd_cum: float, crop: CropProfile) -> Readiness:
    """What harvest's evaluation would conclude on a day, in its own type."""
    state = (
        ReadinessState.READY
        if share >= 0.8
        else ReadinessState.READY_SOON
        if share >= 0.5
        else ReadinessState.NOT_READY
    )
    days = None if state is ReadinessState.READY else round(10 * (1 - share), 1)
    forecast = Forecast(
        as_of=day,
        days=days,
        low_days=None if days is None else max(0.0, days - 2),
        high_days=None if days is None else days + 3,
        reason="ready" if days is None else None,
    )
    return Readiness(
        block=block,
        as_of=day,
        state=state,
        conditions_met=state is ReadinessState.READY,
        healthy_nodes=5,
        nodes_total=5,
        ready_nodes=round(5 * share),
        ready_share=share,
        maturity_median=crop.harvest_threshold * (0.9 + 0.2 * share),
        maturity_level=crop.harvest_threshold * (0.85 + 0.2 * share),
        threshold=crop.harvest_threshold,
        gdd_cum=gdd_cum,
        gdd_target=crop.gdd_target,
        gdd_missing_days=0,
        blocking_alarms=(),
        unhealthy={},
        forecast=forecast,
        reasons=(),
    )


def _lot(
    farm: str, block: str, lot: str, crop: str, variety: str, quantity: float, at: datetime
) -> Lot:
    # Only what listing_point reads; model_construct keeps this independent of the lot's
    # other fields (window, evidence, texts), which harvest may extend.
    fields: dict[str, Any] = {
        "lot": lot,
        "farm": farm,
        "block": block,
        "crop": crop,
        "variety": variety,
        "state": "draft",
        "quantity_kg_estimated": quantity,
        "quantity_kg_corrected": None,
        "grade": "A",
        "version": 1,
        "created_at": at,
        "updated_at": at,
        "published_at": None,
    }
    return Lot.model_construct(**fields)


def build_season(
    orchard: Orchard, days: int = 21, now: datetime | None = None, step_s: int = 3600
) -> tuple[Season, list[str]]:
    """The season's lines: ``days`` up to ``now`` (on the hour), a reading per node and a
    block state per block every ``step_s`` seconds."""
    end = (now or datetime.now(UTC)).replace(minute=0, second=0, microsecond=0)
    start = end - timedelta(days=days)
    farm = orchard.farm.id
    lines: list[str] = []
    offline_node = orchard.blocks[0].sensor_nodes[-1]
    listed: list[str] = []
    latest: dict[str, dict[str, FieldValue | None]] = {}
    irrigations: list[tuple[str, datetime, float]] = []

    # Readings of the whole season, node by node, from the simulator's offline generator.
    valves = [
        ValveOpening(block.id, start + timedelta(days=2 + 6 * k, hours=5), 7200)
        for block in orchard.blocks
        for k in range(3)
    ]
    readings_of: dict[str, list[Reading]] = {}
    for _, node, reading in simulate(orchard, start, end, step_s=step_s, seed=7, valves=valves):
        if node == offline_node and reading.ts > end - timedelta(hours=6):
            continue  # this node went silent six hours ago
        readings_of.setdefault(node, []).append(reading)

    for b_index, block in enumerate(orchard.blocks):
        crop = block.crop_profile
        soil = block.soil_profile
        trigger = soil.theta_fc - crop.depletion_p * (soil.theta_fc - soil.theta_wp)
        refill = soil.theta_fc - 0.02
        threshold = crop.harvest_threshold

        # --- telemetry and status, as ingest writes them
        for node in block.sensor_nodes:
            readings = readings_of[node]
            lines += telemetry_lines(farm, block.id, node, readings)
            lines.append(
                status_line(
                    farm,
                    block.id,
                    node,
                    Status(node=node, state="online", firmware="1.4.2"),
                    to_ns(start),
                )
            )
            if node == offline_node:
                lines.append(
                    status_line(
                        farm,
                        block.id,
                        node,
                        Status(node=node, state="offline"),
                        to_ns(end - timedelta(hours=5)),
                    )
                )
        if block.controller:
            controller = Status(
                node=block.controller, state="online", kind="valve_controller", firmware="2.0.0"
            )
            lines.append(status_line(farm, block.id, block.controller, controller, to_ns(start)))

        # --- control: block state every hour (medians over the nodes that reported, as
        # the control loop's robust aggregate), daily agronomy, irrigation, alarms
        gdd_cum = 0.0
        by_step: dict[int, list[Reading]] = {}
        for node in block.sensor_nodes:
            for reading in readings_of[node]:
                by_step.setdefault(reading.seq, []).append(reading)
        first_step = min(by_step)
        for step in sorted(by_step):
            sample = by_step[step]
            # seq is the generator's step number
            ts = start + (step - first_step) * timedelta(seconds=step_s)
            temperature = median(r.temperature for r in sample if r.temperature is not None)
            humidity = median(r.humidity for r in sample if r.humidity is not None)
            state: dict[str, FieldValue | None] = {
                "soil_moisture": round(
                    median(r.soil_moisture for r in sample if r.soil_moisture is not None), 4
                ),
                "trigger": round(trigger, 4),
                "refill": round(refill, 4),
                "temperature": round(temperature, 2),
                "humidity": round(humidity, 1),
                "vpd": round(_vpd(temperature, humidity), 3),
                "maturity": round(median(r.maturity for r in sample if r.maturity is not None), 3),
                "maturity_threshold": float(threshold),
                "healthy_nodes": len(sample),
                "open_alarms": 1 if b_index == 0 and ts > end - timedelta(hours=5) else 0,
            }
            lines.append(_point("block_state", {"farm": farm, "block": block.id}, state, ts))
            latest[block.id] = state
        day = start.date()
        while day <= end.date():
            midnight = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
            tmin, _ = _climate(midnight.replace(hour=3), b_index, 0)
            tmax, _ = _climate(midnight.replace(hour=15), b_index, 0)
            gdd = max(0.0, (tmax + tmin) / 2 - crop.gdd_base_c)
            gdd_cum += gdd
            et0 = 4.0 + 0.5 * math.sin(day.toordinal())
            kc = crop.kc_mid
            lines.append(
                _point(
                    "block_daily",
                    {"farm": farm, "block": block.id},
                    {
                        "tmin": round(tmin, 2),
                        "tmax": round(tmax, 2),
                        "rh_min": 40.0,
                        "rh_max": 90.0,
                        "et0": round(et0, 2),
                        "kc": kc,
                        "etc": round(kc * et0, 2),
                        "depletion_mm": round(20 + 15 * math.sin(day.toordinal() / 3), 1),
                        "raw_mm": 45.0,
                        "taw_mm": 90.0,
                        "et0_method": "hargreaves",
                        "rain_mm": 6.0 if day.toordinal() % 9 == 0 else 0.0,
                        "irrigation_mm": 7.0 if (day - start.date()).days % 6 == 2 else 0.0,
                        "gdd": round(gdd, 2),
                        "gdd_cum": round(gdd_cum, 1),
                        "vpd_max": round(_vpd(tmax, 40.0), 3),
                    },
                    midnight,
                )
            )
            share = min(1.0, max(0.0, 1.0 - 0.3 * b_index - (end.date() - day).days * 0.03))
            lines.append(
                readiness_point(
                    farm,
                    _readiness(block.id, day, share, gdd_cum, crop),
                    midnight + timedelta(hours=6),
                )
            )
            day += timedelta(days=1)

        # Irrigation as control records it: a decision per valve (the block's water split
        # over its valves), then each valve command's lifecycle; one skipped decision.
        block_valves = block.valves or [f"{block.id}-v1"]
        for k in range(3):
            decided = start + timedelta(days=2 + 6 * k, hours=5)
            water = round(70 * block.area_ha, 1)
            for valve in block_valves:
                tags = {"farm": farm, "block": block.id, "valve": valve}
                command = f"{block.id}-{k}-{valve}"
                lines.append(
                    _point(
                        "irrigation",
                        tags,
                        {
                            "event": "decision_irrigate",
                            "command_id": command,
                            "duration_s": 7200,
                            "depth_mm": 7.0,
                            "water_m3": round(water / len(block_valves), 3),
                            "reason": "root-zone soil moisture below the trigger for 3 h",
                        },
                        decided,
                    )
                )
                for minutes, event in (
                    (0, "queued"),
                    (1, "sent"),
                    (2, "acknowledged"),
                    (122, "completed"),
                ):
                    lines.append(
                        _point(
                            "irrigation",
                            tags,
                            {
                                "event": f"command_{event}",
                                "command_id": command,
                                "duration_s": 7200,
                                "depth_mm": 7.0,
                                "reason": "",
                            },
                            decided + timedelta(minutes=minutes, seconds=1),
                        )
                    )
            irrigations.append((block.id, decided, water))
        skipped = {"farm": farm, "block": block.id, "valve": block_valves[0]}
        lines.append(
            _point(
                "irrigation",
                skipped,
                {"event": "decision_skip_rain", "reason": "rain wetted the root zone recently"},
                start + timedelta(days=5, hours=5),
            )
        )

        # A heat alarm raised as minor, escalated to major, then cleared: severity is a
        # tag, so the alarm's points span two series.
        raised = start + timedelta(days=3, hours=14)
        for minutes, severity, alarm_state, event, message, value in (
            (0, "minor", "active_unack", "raised", "heat stress: 35.1 °C for 30 min", 35.1),
            (30, "major", "active_unack", "escalated", "heat stress: 36.2 °C for 60 min", 36.2),
            (180, "major", "cleared_unack", "cleared", "back below 33 °C", 32.5),
        ):
            alarm_tags = {
                "farm": farm,
                "block": block.id,
                "type": "heat",
                "severity": severity,
                "subject": block.id,
            }
            alarm_fields: dict[str, FieldValue | None] = {
                "state": alarm_state,
                "event": event,
                "message": message,
                "value": value,
            }
            lines.append(
                _point("alarm", alarm_tags, alarm_fields, raised + timedelta(minutes=minutes))
            )
        if b_index == 0:
            stuck = {
                "farm": farm,
                "block": block.id,
                "type": "node_offline",
                "severity": "minor",
                "subject": offline_node,
            }
            lines.append(
                _point(
                    "alarm",
                    stuck,
                    {
                        "state": "active_unack",
                        "event": "raised",
                        "message": f"{offline_node} offline for 1 h",
                        "value": 1.0,
                    },
                    end - timedelta(hours=4),
                )
            )

        if b_index < 2:
            listed.append(block.id)
            lot = f"{block.id}-{end.year}"
            created = end - timedelta(days=3 - b_index)
            quantity = round(
                block.trees * (block.yield_kg_per_tree or crop.yield_kg_per_tree) * 0.8, 0
            )
            draft = _lot(farm, block.id, lot, crop.key, block.variety, quantity, created)
            lines.append(listing_point(LotChange(draft, "created"), created))
            if b_index == 0:
                published = created + timedelta(days=1)
                lot_now = draft.model_copy(
                    update={
                        "state": "published",
                        "version": 2,
                        "updated_at": published,
                        "published_at": published,
                    }
                )
                lines.append(listing_point(LotChange(lot_now, "published"), published))

    # --- ingest's dead letters (not tied to a farm: a bad message may name none)
    for i, reason in enumerate(["invalid_json", "out_of_range", "out_of_range", "node_mismatch"]):
        lines.append(
            dead_letter_line(
                reason,
                f"orchard/{farm}/x/y/telemetry",
                b'{"temperature": 999}',
                "value out of range",
                to_ns(end - timedelta(hours=2 + i)),
                256,
            )
        )
    return Season(orchard, start, end, offline_node, tuple(listed), latest, irrigations), lines


def load_season(
    client: SyncInfluxClient, orchard: Orchard, days: int = 21, step_s: int = 3600
) -> Season:
    """Write a season into the client's database (batches of 5,000 lines)."""
    season, lines = build_season(orchard, days, step_s=step_s)
    for i in range(0, len(lines), 5000):
        client.write(lines[i : i + 5000])
    return season
