"""A small simulated season in InfluxDB, written the way the services write it.

Telemetry, node status and dead letters go through ingest's own line functions
(:mod:`ingest.lines`), so the dashboards are proven against exactly what ingest
stores. The control loop's measurements (``block_state``, ``block_daily``,
``irrigation``, ``alarm``, ``readiness``, ``listing``) are built from
:mod:`orchard.schema` with :func:`orchard.lineprotocol.encode_point`, with the state
vocabularies control uses (alarm states, readiness states, lot states).

The signals are deterministic and plausible (diurnal temperature with humidity moving
against it, soil drying then refilled by irrigation, maturity rising toward the crop's
harvest threshold), not a physics model: the dashboards need realistic shapes and
ranges, not agronomy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ingest.lines import dead_letter_line, status_line, telemetry_lines
from orchard.influx import SyncInfluxClient
from orchard.layout import Orchard
from orchard.lineprotocol import FieldValue, encode_point, to_ns
from orchard.models import Reading, Status
from orchard.schema import MEASUREMENTS

HOUR = timedelta(hours=1)


@dataclass(frozen=True)
class Season:
    orchard: Orchard
    start: datetime
    end: datetime
    offline_node: str
    listed_blocks: tuple[str, ...]

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


def build_season(
    orchard: Orchard, days: int = 21, now: datetime | None = None
) -> tuple[Season, list[str]]:
    end = (now or datetime.now(UTC)).replace(minute=0, second=0, microsecond=0)
    start = end - timedelta(days=days)
    farm = orchard.farm.id
    lines: list[str] = []
    offline_node = orchard.blocks[0].sensor_nodes[-1]
    listed: list[str] = []

    for b_index, block in enumerate(orchard.blocks):
        crop = block.crop_profile
        soil = block.soil_profile
        trigger = soil.theta_fc - crop.depletion_p * (soil.theta_fc - soil.theta_wp)
        refill = soil.theta_fc - 0.02
        threshold = crop.harvest_threshold
        # Blocks ripen at different speeds: the first reaches its threshold inside the window.
        maturity_end = threshold * (1.05 - 0.1 * b_index)
        maturity_start = (
            crop.maturity_at_fruit_set + (maturity_end - crop.maturity_at_fruit_set) * 0.6
        )

        # --- telemetry and status, as ingest writes them
        for n_index, node in enumerate(block.sensor_nodes):
            readings = []
            ts, seq = start, 1
            while ts <= end:
                if node == offline_node and ts > end - timedelta(hours=6):
                    break  # this node went silent six hours ago
                temperature, humidity = _climate(ts, b_index, n_index)
                progress = (ts - start) / (end - start)
                readings.append(
                    Reading(
                        ts=ts,
                        seq=seq,
                        temperature=round(temperature, 2),
                        humidity=round(humidity, 1),
                        soil_moisture=round(
                            trigger + 0.04 * math.cos(progress * 6 * math.pi) + 0.002 * n_index, 4
                        ),
                        maturity=round(
                            maturity_start
                            + (maturity_end - maturity_start) * progress
                            + 0.05 * n_index,
                            3,
                        ),
                        battery=round(4.1 - 0.4 * progress - 0.02 * n_index, 3),
                        rssi=-60 - 5 * n_index - b_index,
                    )
                )
                ts += HOUR
                seq += 1
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

        # --- control: block state every hour, daily agronomy, irrigation, alarms
        gdd_cum = 0.0
        ts = start
        while ts <= end:
            temperature, humidity = _climate(ts, b_index, 0)
            progress = (ts - start) / (end - start)
            lines.append(
                _point(
                    "block_state",
                    {"farm": farm, "block": block.id},
                    {
                        "soil_moisture": round(
                            trigger + 0.04 * math.cos(progress * 6 * math.pi), 4
                        ),
                        "trigger": round(trigger, 4),
                        "refill": round(refill, 4),
                        "temperature": round(temperature, 2),
                        "humidity": round(humidity, 1),
                        "vpd": round(_vpd(temperature, humidity), 3),
                        "maturity": round(
                            maturity_start + (maturity_end - maturity_start) * progress, 3
                        ),
                        "maturity_threshold": float(threshold),
                        "healthy_nodes": len(block.sensor_nodes)
                        - (
                            1
                            if block.sensor_nodes[-1] == offline_node
                            and ts > end - timedelta(hours=6)
                            else 0
                        ),
                        "open_alarms": 1 if b_index == 0 and ts > end - timedelta(hours=5) else 0,
                    },
                    ts,
                )
            )
            ts += HOUR
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
                        "gdd": round(gdd, 2),
                        "gdd_cum": round(gdd_cum, 1),
                        "vpd_max": round(_vpd(tmax, 40.0), 3),
                    },
                    midnight,
                )
            )
            target = crop.gdd_target
            share = min(1.0, max(0.0, 1.0 - 0.3 * b_index - (end.date() - day).days * 0.03))
            state = "ready" if share >= 0.8 else "ready_soon" if share >= 0.5 else "not_ready"
            forecast_days = None if state == "ready" else round(10 * (1 - share), 1)
            lines.append(
                _point(
                    "readiness",
                    {"farm": farm, "block": block.id},
                    {
                        "state": state,
                        "ready_share": round(share, 3),
                        "gdd_cum": round(gdd_cum, 1),
                        "gdd_target": float(target),
                        "forecast_days": forecast_days,
                        "forecast_low_days": None if forecast_days is None else forecast_days - 2,
                        "forecast_high_days": None if forecast_days is None else forecast_days + 3,
                        "forecast_date": None
                        if forecast_days is None
                        else (day + timedelta(days=round(forecast_days))).isoformat(),
                    },
                    midnight + timedelta(hours=6),
                )
            )
            day += timedelta(days=1)

        for run, valve in enumerate(block.valves or [f"{block.id}-v1"]):
            for k in range(3):
                started = start + timedelta(days=2 + 6 * k + run, hours=5)
                if started >= end:
                    continue
                command = f"{block.id}-{k}-{run}"
                tags = {"farm": farm, "block": block.id, "valve": valve}
                lines.append(
                    _point(
                        "irrigation",
                        tags,
                        {
                            "event": "decided",
                            "command_id": command,
                            "duration_s": 7200,
                            "depth_mm": 7.0,
                            "reason": "root-zone soil moisture below the trigger for 3 h",
                        },
                        started,
                    )
                )
                lines.append(
                    _point(
                        "irrigation",
                        tags,
                        {
                            "event": "completed",
                            "command_id": command,
                            "duration_s": 7200,
                            "water_m3": round(70 * block.area_ha, 1),
                        },
                        started + timedelta(hours=2),
                    )
                )

        alarm_tags = {
            "farm": farm,
            "block": block.id,
            "type": "heat",
            "severity": "major",
            "subject": block.id,
        }
        raised = start + timedelta(days=3, hours=14)
        lines.append(
            _point(
                "alarm",
                alarm_tags,
                {
                    "state": "active_unack",
                    "event": "raised",
                    "message": "heat stress: 36.2 °C for 45 min",
                    "value": 36.2,
                },
                raised,
            )
        )
        lines.append(
            _point(
                "alarm",
                alarm_tags,
                {
                    "state": "cleared_unack",
                    "event": "cleared",
                    "message": "back below 33 °C",
                    "value": 32.5,
                },
                raised + timedelta(hours=3),
            )
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
            lot_tags = {"farm": farm, "block": block.id, "lot": lot}
            quantity = round(
                block.trees * (block.yield_kg_per_tree or crop.yield_kg_per_tree) * 0.8, 0
            )
            lines.append(
                _point(
                    "listing",
                    lot_tags,
                    {"state": "draft", "quantity_kg": quantity, "grade": "A", "event": "created"},
                    created,
                )
            )
            if b_index == 0:
                lines.append(
                    _point(
                        "listing",
                        lot_tags,
                        {
                            "state": "published",
                            "quantity_kg": quantity,
                            "grade": "A",
                            "event": "published",
                        },
                        created + timedelta(days=1),
                    )
                )

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
    return Season(orchard, start, end, offline_node, tuple(listed)), lines


def load_season(client: SyncInfluxClient, orchard: Orchard, days: int = 21) -> Season:
    season, lines = build_season(orchard, days)
    for i in range(0, len(lines), 5000):
        client.write(lines[i : i + 5000])
    return season
