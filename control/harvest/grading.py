"""Lot quantity, quality grade and the text a shop can publish, from the evidence.

Pure functions: the listing store and the tests call the same code.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
import numpy.typing as npt

from orchard.crops import CropProfile
from orchard.layout import Block

# Grade by the share of the last days' maturity readings inside the crop's ideal band.
# ESTIMATE: cut-offs chosen so "A" means four in five fruit sampled at top condition,
# in the spirit of the UNECE "Extra"/"Class I"/"Class II" tolerances (which allow 5 %
# and 10 % of fruit outside class); tune per shop.
GRADE_CUTOFFS: tuple[tuple[str, float], ...] = (("A", 0.8), ("B", 0.5), ("C", 0.0))

# ESTIMATE: days a ripe lot can hang and still sell at grade. Cherries soften within
# about a week and a half; apples keep about two weeks on the tree; oranges store on the
# tree for weeks; mangoes picked at maturity over about three weeks.
HARVEST_WINDOW_DAYS: dict[str, int] = {"apple": 14, "cherry": 10, "citrus": 42, "mango": 21}


@dataclass(frozen=True, slots=True)
class Grade:
    grade: str
    in_band_share: float
    readings: int
    median: float | None


def grade_readings(readings: npt.ArrayLike, band: tuple[float, float]) -> Grade:
    values = np.asarray(readings, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return Grade("ungraded", 0.0, 0, None)
    share = float(((values >= band[0]) & (values <= band[1])).mean())
    grade = next(name for name, cutoff in GRADE_CUTOFFS if share >= cutoff)
    return Grade(grade, share, int(values.size), float(np.median(values)))


def estimated_quantity_kg(block: Block, ready_share: float) -> float:
    """Trees × yield per tree × share of the block that is ready, in kg."""
    per_tree = block.yield_kg_per_tree or block.crop_profile.yield_kg_per_tree
    return round(block.trees * per_tree * max(0.0, min(1.0, ready_share)), 0)


def harvest_window(crop_key: str, start: date) -> tuple[date, date]:
    days = HARVEST_WINDOW_DAYS.get(crop_key, 14)
    return start, start + timedelta(days=days)


def listing_title(block: Block, farm_name: str, grade: str) -> str:
    variety = block.variety.replace("_", " ").title()
    crop_name = block.crop_profile.name
    name = f"{variety} {crop_name.lower()}s" if variety else f"{crop_name}s"
    grade_text = f"grade {grade}" if grade != "ungraded" else "ungraded"
    return f"{name}, {grade_text}, fresh from {farm_name or 'the orchard'}"


def listing_description(
    block: Block,
    crop: CropProfile,
    farm_name: str,
    quantity_kg: float,
    grade: Grade,
    window: tuple[date, date],
    ready_share: float,
    gdd_cum: float,
) -> str:
    variety = block.variety.replace("_", " ").title() or crop.name
    where = block.name or block.id
    lines = [
        f"{variety} {crop.name.lower()} from {where} at {farm_name or 'our orchard'}, "
        f"picked between {window[0]:%d %b} and {window[1]:%d %b %Y}.",
        f"About {quantity_kg:,.0f} kg available.",
    ]
    if grade.median is not None:
        lines.append(
            f"Measured on the trees: median {crop.maturity_index} {grade.median:.1f} "
            f"{crop.maturity_unit}; {grade.in_band_share:.0%} of {grade.readings} readings "
            f"in the top-quality band {crop.ideal_band[0]:g}-{crop.ideal_band[1]:g}."
        )
    lines.append(
        f"{ready_share:.0%} of the block's sensor nodes show harvest maturity after "
        f"{gdd_cum:.0f} degree-days since bloom."
    )
    return " ".join(lines)
