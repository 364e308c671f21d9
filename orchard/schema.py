"""What the services store in InfluxDB: measurements, their tags and fields.

This table is the storage half of the contract. Writers (ingest, control, harvest)
build points from it, and the dashboard tests check that every field and tag a panel
queries is listed here, so a rename cannot silently empty a dashboard.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Measurement:
    name: str
    tags: tuple[str, ...]
    fields: dict[str, str]  # field -> InfluxDB type: float, integer, string, boolean
    writer: str
    doc: str


MEASUREMENTS: dict[str, Measurement] = {
    m.name: m
    for m in [
        Measurement(
            "telemetry",
            ("farm", "block", "node"),
            {
                "temperature": "float",
                "humidity": "float",
                "soil_moisture": "float",
                "maturity": "float",
                "battery": "float",
                "rssi": "integer",
                "seq": "integer",
            },
            "ingest",
            "One point per reading, timestamped with the device time: a redelivered "
            "message overwrites itself.",
        ),
        Measurement(
            "node_status",
            ("farm", "block", "node", "kind"),
            {"online": "integer", "state": "string", "firmware": "string"},
            "ingest",
            "Presence changes from the retained status and the Last Will.",
        ),
        Measurement(
            "dead_letter",
            ("reason",),
            {"topic": "string", "payload": "string", "detail": "string", "count": "integer"},
            "ingest",
            "Rejected messages: reason, topic, truncated payload, time of receipt.",
        ),
        Measurement(
            "block_state",
            ("farm", "block"),
            {
                "soil_moisture": "float",
                "trigger": "float",
                "refill": "float",
                "temperature": "float",
                "humidity": "float",
                "vpd": "float",
                "maturity": "float",
                "maturity_threshold": "float",
                "healthy_nodes": "integer",
                "open_alarms": "integer",
            },
            "control",
            "Per block, every control tick: robust aggregates and the thresholds in force.",
        ),
        Measurement(
            "block_daily",
            ("farm", "block"),
            {
                "tmin": "float",
                "tmax": "float",
                "rh_min": "float",
                "rh_max": "float",
                "et0": "float",
                "et0_method": "string",
                "kc": "float",
                "etc": "float",
                "rain_mm": "float",
                "irrigation_mm": "float",
                "depletion_mm": "float",
                "taw_mm": "float",
                "raw_mm": "float",
                "gdd": "float",
                "gdd_cum": "float",
                "vpd_max": "float",
            },
            "control",
            "Daily agronomy per block (FAO-56 ET0, ETc, root-zone depletion, GDD) on the farm's"
            " local days ([farm] timezone); time = the local midnight starting the day.",
        ),
        Measurement(
            "irrigation",
            ("farm", "block", "valve"),
            {
                "event": "string",
                "command_id": "string",
                "duration_s": "integer",
                "depth_mm": "float",
                "water_m3": "float",
                "reason": "string",
            },
            "control",
            "Irrigation decisions and command lifecycle events (dashboard annotations).",
        ),
        Measurement(
            "alarm",
            ("farm", "block", "type", "severity", "subject"),
            {"state": "string", "event": "string", "message": "string", "value": "float"},
            "control",
            "Alarm lifecycle events: raised, acknowledged, cleared, escalated.",
        ),
        Measurement(
            "readiness",
            ("farm", "block"),
            {
                "state": "string",
                "ready_share": "float",
                "gdd_cum": "float",
                "gdd_target": "float",
                "forecast_days": "float",
                "forecast_low_days": "float",
                "forecast_high_days": "float",
                "forecast_date": "string",
            },
            "control",
            "Harvest readiness per block, evaluated daily.",
        ),
        Measurement(
            "listing",
            ("farm", "block", "lot"),
            {"state": "string", "quantity_kg": "float", "grade": "string", "event": "string"},
            "control",
            "Product listing lifecycle for the shop.",
        ),
    ]
}
