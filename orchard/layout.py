"""The orchard description: farm, blocks, nodes and valves, read from a TOML file.

The same file drives the simulator, the control loop's block profiles and the
broker's device accounts, so a node exists once, in one place.
"""

from __future__ import annotations

import tomllib
from datetime import date
from pathlib import Path
from typing import Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from orchard.crops import CROPS, CropProfile
from orchard.ids import Identifier


class Soil(BaseModel):
    model_config = ConfigDict(frozen=True)
    theta_fc: float = Field(gt=0, lt=0.8, description="Field capacity, m³/m³")
    theta_wp: float = Field(gt=0, lt=0.8, description="Wilting point, m³/m³")


# FAO-56 Table 19, mid-points of the ranges given for each texture class.
SOILS: dict[str, Soil] = {
    "sand": Soil(theta_fc=0.12, theta_wp=0.045),
    "sandy_loam": Soil(theta_fc=0.23, theta_wp=0.11),
    "loam": Soil(theta_fc=0.30, theta_wp=0.12),  # agronomy-reference.md worked example
    "silty_clay_loam": Soil(theta_fc=0.335, theta_wp=0.205),
    "clay": Soil(theta_fc=0.36, theta_wp=0.22),
}


class Block(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Identifier
    name: str = ""
    crop: str
    variety: str = ""
    soil: str = "loam"
    area_ha: float = Field(gt=0, le=10_000)
    trees: int = Field(gt=0)
    bloom_date: date
    latitude: float = Field(ge=-66.5, le=66.5)
    elevation_m: float = Field(default=100.0, ge=-430, le=6000)
    nodes: list[Identifier] = Field(default_factory=list)
    node_count: int = Field(default=0, ge=0, le=10_000, description="Generate ids {block}-nNN")
    controller: Identifier | None = Field(default=None, description="Valve controller node id")
    valves: list[Identifier] = Field(default_factory=list)
    irrigation_rate_mm_h: float = Field(default=4.0, gt=0, le=100)
    application_efficiency: float = Field(default=0.9, gt=0.3, le=1.0)
    yield_kg_per_tree: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.crop not in CROPS:
            raise ValueError(f"unknown crop {self.crop!r}; known: {', '.join(sorted(CROPS))}")
        if self.soil not in SOILS:
            raise ValueError(f"unknown soil {self.soil!r}; known: {', '.join(sorted(SOILS))}")
        if self.valves and self.controller is None:
            raise ValueError(f"block {self.id}: valves need a controller node")
        return self

    @property
    def sensor_nodes(self) -> list[str]:
        generated = [f"{self.id}-n{i:02d}" for i in range(1, self.node_count + 1)]
        return [*self.nodes, *generated]

    @property
    def crop_profile(self) -> CropProfile:
        return CROPS[self.crop]

    @property
    def soil_profile(self) -> Soil:
        return SOILS[self.soil]


class Farm(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: Identifier
    name: str = ""
    timezone: str = Field(default="UTC", description="IANA time zone; daily agronomy uses its days")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        # Checked at load time: a typo must not surface days later as an InfluxDB 400.
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {name!r}: use an IANA name such as 'Asia/Shanghai' or 'UTC'"
            ) from None
        return name


class Orchard(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    farm: Farm
    blocks: list[Block] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> Self:
        seen: set[str] = set()
        for block in self.blocks:
            ids = [*block.sensor_nodes, *([block.controller] if block.controller else [])]
            for node in ids:
                # Node ids are broker usernames (ACL pattern %u): unique across the farm.
                if node in seen:
                    raise ValueError(f"node id {node!r} is used twice")
                seen.add(node)
        block_ids = [b.id for b in self.blocks]
        if len(set(block_ids)) != len(block_ids):
            raise ValueError("block ids must be unique")
        return self

    def block(self, block_id: str) -> Block:
        for block in self.blocks:
            if block.id == block_id:
                return block
        raise KeyError(f"unknown block {block_id!r}")

    def all_nodes(self) -> list[tuple[Block, str]]:
        """Every device: sensor nodes, then each block's valve controller."""
        out = [(b, n) for b in self.blocks for n in b.sensor_nodes]
        out += [(b, b.controller) for b in self.blocks if b.controller]
        return out


def load_orchard(path: Path | str) -> Orchard:
    with open(path, "rb") as fh:
        return Orchard.model_validate(tomllib.load(fh))
