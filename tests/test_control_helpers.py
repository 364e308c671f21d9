"""Shared helpers for the control tests: a small orchard and readings written as line protocol."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta

from orchard.influx import SyncInfluxClient
from orchard.layout import Block, Farm, Orchard
from orchard.lineprotocol import encode_point, to_ns

FARM = "test-farm"
T0 = datetime(2026, 5, 20, 0, 0, tzinfo=UTC)


def small_orchard(
    *, nodes: int = 3, rate_mm_h: float = 40.0, controller: bool = True, farm: str = FARM
) -> Orchard:
    return Orchard(
        farm=Farm(id=farm),
        blocks=[
            Block(
                id="b1",
                crop="apple",
                soil="loam",
                area_ha=1.0,
                trees=800,
                bloom_date=date(2026, 4, 10),
                latitude=34.3,
                elevation_m=100,
                node_count=nodes,
                controller="b1-ctl" if controller else None,
                valves=["b1-v1"] if controller else [],
                irrigation_rate_mm_h=rate_mm_h,
                application_efficiency=0.9,
            )
        ],
    )


Profile = Callable[[float], float | None]
"""Value of a field at t minutes after T0 (None: no reading)."""


def write_readings(
    client: SyncInfluxClient,
    block: Block,
    minutes: int,
    *,
    soil: Profile | dict[str, Profile],
    temperature: Profile | dict[str, Profile] = lambda m: 15.0,
    humidity: Profile | dict[str, Profile] = lambda m: 60.0,
    battery: Profile | dict[str, Profile] = lambda m: 3.9,
    maturity: Profile | dict[str, Profile] | None = None,
    every_min: int = 1,
    start: datetime = T0,
    nodes: Sequence[str] | None = None,
    farm: str = FARM,
) -> None:
    """One reading per node every ``every_min`` minutes, fields from per-node profiles."""

    def pick(profile: Profile | dict[str, Profile], node: str) -> Profile:
        return profile[node] if isinstance(profile, dict) else profile

    lines = []
    for node in nodes or block.sensor_nodes:
        for m in range(0, minutes, every_min):
            fields = {
                "soil_moisture": pick(soil, node)(m),
                "temperature": pick(temperature, node)(m),
                "humidity": pick(humidity, node)(m),
                "battery": pick(battery, node)(m),
                "maturity": None if maturity is None else pick(maturity, node)(m),
                "seq": m,
            }
            if all(v is None for k, v in fields.items() if k != "seq"):
                continue
            lines.append(
                encode_point(
                    "telemetry",
                    {"farm": farm, "block": block.id, "node": node},
                    {
                        k: (None if v is None else round(float(v), 5)) if k != "seq" else v
                        for k, v in fields.items()
                    },
                    to_ns(start + timedelta(minutes=m)),
                )
            )
    for i in range(0, len(lines), 10_000):
        client.write(lines[i : i + 10_000])
