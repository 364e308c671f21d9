"""Crop profiles shipped as data. Every default carries its source.

Defaults are starting points for agronomists to tune per block (see
``../shared/agronomy-reference.md``), not truths. Where no published figure fits,
the value is marked ESTIMATE with the reasoning, so nobody mistakes it for a citation.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Stage = Literal["bloom", "fruit_set", "fruit_growth", "maturation"]


class FrostCritical(BaseModel):
    """Temperatures for 10 % and 90 % kill after 30 minutes, °C."""

    model_config = ConfigDict(frozen=True)
    t10: float
    t90: float


class CropProfile(BaseModel):
    model_config = ConfigDict(frozen=True)

    key: str
    name: str
    maturity_index: str = Field(description="What the node's maturity reading measures")
    maturity_unit: str
    maturity_at_fruit_set: float = Field(description="Typical index early in the season")
    harvest_threshold: float = Field(description="Index at which fruit is ready to pick")
    ideal_band: tuple[float, float] = Field(description="Index band of top-grade fruit")
    kc_ini: float
    kc_mid: float
    kc_end: float
    season_days: int = Field(description="Typical days from full bloom to harvest")
    root_depth_m: float
    depletion_p: float = Field(description="FAO-56 p before the ETc adjustment")
    gdd_base_c: float
    gdd_cutoff_c: float
    gdd_target: float = Field(description="Degree-days from bloom to harvest maturity")
    frost: dict[Stage, FrostCritical]
    heat_c: float = Field(description="Air temperature above which heat stress is flagged")
    vpd_high_kpa: float
    vpd_low_kpa: float
    yield_kg_per_tree: float

    def stage(self, days_since_bloom: float) -> Stage:
        fraction = days_since_bloom / self.season_days
        if days_since_bloom < 14:
            return "bloom"
        if fraction < 0.25:
            return "fruit_set"
        if fraction < 0.8:
            return "fruit_growth"
        return "maturation"

    def kc(self, days_since_bloom: float) -> float:
        """FAO-56 crop coefficient curve (Fig. 25): flat ini, linear rise, flat mid, fall to end.

        Stage lengths as fractions of the season (ini 0.2, development 0.1, mid 0.5,
        late 0.2) follow the shape of FAO-56 Table 11 for deciduous orchards.
        """
        f = max(0.0, days_since_bloom / self.season_days)
        if f < 0.2:
            return self.kc_ini
        if f < 0.3:
            return self.kc_ini + (self.kc_mid - self.kc_ini) * (f - 0.2) / 0.1
        if f < 0.8:
            return self.kc_mid
        return self.kc_mid + (self.kc_end - self.kc_mid) * min(1.0, (f - 0.8) / 0.2)


_APPLE_CHERRY_FROST: dict[Stage, FrostCritical] = {
    # WSU EB0913/EB1128 via Penn State Extension: first pink to post-bloom -2.2 / -3.9 °C.
    "bloom": FrostCritical(t10=-2.2, t90=-3.9),
    "fruit_set": FrostCritical(t10=-2.2, t90=-3.9),
    # ESTIMATE: developing fruit is at least as tender as post-bloom; keep the same values.
    "fruit_growth": FrostCritical(t10=-2.2, t90=-3.9),
    "maturation": FrostCritical(t10=-2.2, t90=-3.9),
}

CROPS: dict[str, CropProfile] = {
    "apple": CropProfile(
        key="apple",
        name="Apple",
        # Cornell starch-iodine index 1-8; Gala mature 3, overmature 6 (agronomy-reference.md).
        maturity_index="starch index",
        maturity_unit="Cornell 1-8",
        maturity_at_fruit_set=1.0,
        harvest_threshold=3.0,
        ideal_band=(3.0, 6.0),
        # FAO-56 Table 12, apple/cherry/pear, no ground cover, no frost: 0.60 / 0.95 / 0.75.
        kc_ini=0.60,
        kc_mid=0.95,
        kc_end=0.75,
        # Michigan State model: Red Delicious long-storage harvest ~143 days after full bloom.
        season_days=143,
        # FAO-56 Table 22: apple 1.0-2.0 m, p 0.50.
        root_depth_m=1.2,
        depletion_p=0.50,
        # Apple phenology base 6.1 °C (agronomy-reference.md); 30 °C cutoff: ESTIMATE,
        # the usual horizontal cutoff for temperate fruit models.
        gdd_base_c=6.1,
        gdd_cutoff_c=30.0,
        # ESTIMATE: 143 days at ~10 degree-days/day (15-17 °C mean) over base 6.1.
        gdd_target=1400.0,
        frost={
            # WSU: apple tight cluster -2.8 / -6.1 °C (treated as the pre-bloom stage).
            **_APPLE_CHERRY_FROST,
        },
        # Schrader et al. 2001: sunburn browning at fruit surface 46-49 °C, fruit 11-17 °C
        # above air in full sun, so risk from about 32 °C air.
        heat_c=32.0,
        # agronomy-reference.md VPD section: stress above ~2.5-3 kPa, disease risk below ~0.4.
        vpd_high_kpa=3.0,
        vpd_low_kpa=0.4,
        # ESTIMATE: 30 kg/tree, a mid value for semi-dwarf orchards; set per block.
        yield_kg_per_tree=30.0,
    ),
    "cherry": CropProfile(
        key="cherry",
        name="Sweet cherry",
        # UC Davis Postharvest: SSC >= 14-16 % by variety, whole surface light red at least.
        maturity_index="soluble solids",
        maturity_unit="% SSC",
        maturity_at_fruit_set=8.0,
        harvest_threshold=16.0,
        ideal_band=(16.0, 21.0),
        kc_ini=0.60,  # FAO-56 Table 12 (apple, cherry, pear), no ground cover.
        kc_mid=0.95,
        kc_end=0.75,
        # ESTIMATE: 60-75 days bloom to harvest for Bing-type cherries.
        season_days=70,
        root_depth_m=1.0,  # FAO-56 Table 22, 1.0-2.0 m.
        depletion_p=0.50,  # FAO-56 Table 22.
        gdd_base_c=4.0,  # Zavalloni et al. 2006.
        gdd_cutoff_c=30.0,  # ESTIMATE, as apple.
        # ESTIMATE: 70 days at ~11 degree-days/day over base 4 °C.
        gdd_target=750.0,
        frost=_APPLE_CHERRY_FROST,  # WSU: sweet cherry first bloom to post-bloom -2.2 / -3.9.
        heat_c=35.0,  # ESTIMATE: cherry fruit doubling and sunburn above ~35 °C.
        vpd_high_kpa=3.0,
        vpd_low_kpa=0.4,
        yield_kg_per_tree=15.0,  # ESTIMATE: mature standard-rootstock tree 10-20 kg.
    ),
    "citrus": CropProfile(
        key="citrus",
        name="Orange",
        # Florida early-season oranges: TSS >= 8 % and Brix/acid ratio >= 10.5.
        maturity_index="Brix/acid ratio",
        maturity_unit="ratio",
        maturity_at_fruit_set=4.0,
        harvest_threshold=10.5,
        ideal_band=(10.5, 16.0),
        # FAO-56 Table 12, citrus no ground cover, 70 % canopy: 0.70 / 0.65 / 0.70.
        kc_ini=0.70,
        kc_mid=0.65,
        kc_end=0.70,
        season_days=240,  # ESTIMATE: navel/early oranges 7-9 months bloom to harvest.
        root_depth_m=1.3,  # FAO-56 Table 22, citrus 70 % canopy 1.2-1.5 m.
        depletion_p=0.50,  # FAO-56 Table 22.
        gdd_base_c=13.0,  # NSW DPI Primefact 749: citrus grows between 13 and 35 °C.
        gdd_cutoff_c=35.0,  # NSW DPI Primefact 749.
        gdd_target=2200.0,  # ESTIMATE: 240 days at ~9 degree-days/day over base 13.
        frost={
            # UF/IFAS HS1275: fruit freezes at about -2.2 to -3.3 °C.
            "bloom": FrostCritical(t10=-2.2, t90=-3.3),
            "fruit_set": FrostCritical(t10=-2.2, t90=-3.3),
            "fruit_growth": FrostCritical(t10=-2.2, t90=-3.3),
            "maturation": FrostCritical(t10=-2.2, t90=-3.3),
        },
        heat_c=35.0,  # NSW DPI Primefact 749: best growth 13-35 °C.
        vpd_high_kpa=3.0,
        vpd_low_kpa=0.4,
        yield_kg_per_tree=60.0,  # ESTIMATE: mature orange tree 40-90 kg.
    ),
    "mango": CropProfile(
        key="mango",
        name="Mango",
        # Dry matter rises ~0.7 %/week from ~11 % to ~22 %; commercial minimum ~14-15 %.
        maturity_index="dry matter",
        maturity_unit="% DM",
        maturity_at_fruit_set=11.0,
        harvest_threshold=14.5,
        ideal_band=(14.5, 18.0),
        # Carr 2013 (Exp. Agric. 50:1): mango Kc 0.65-1.05 (not in FAO-56).
        kc_ini=0.65,
        kc_mid=1.05,
        kc_end=0.85,
        season_days=120,  # ESTIMATE: Keitt 2185 degree-days at ~18/day.
        root_depth_m=1.5,  # ESTIMATE: deep-rooted tree crop, no FAO-56 entry.
        depletion_p=0.50,  # ESTIMATE: FAO-56 Table 22 value for citrus.
        gdd_base_c=12.0,  # Amaral et al. 2023 (Horticulturae 9:489).
        gdd_cutoff_c=32.0,  # Amaral et al. 2023: penalty above 32 °C.
        gdd_target=2185.0,  # Amaral et al. 2023: Keitt, flowering to harvest maturity.
        frost={
            # ESTIMATE: tropical crop with chilling injury near 0 °C; no bud-kill table exists.
            "bloom": FrostCritical(t10=0.0, t90=-1.5),
            "fruit_set": FrostCritical(t10=0.0, t90=-1.5),
            "fruit_growth": FrostCritical(t10=0.0, t90=-1.5),
            "maturation": FrostCritical(t10=0.0, t90=-1.5),
        },
        heat_c=40.0,  # ESTIMATE: mango tolerates high heat; flag extreme days only.
        vpd_high_kpa=3.5,  # Carr 2013: stomata close progressively from 0.5 to 4 kPa.
        vpd_low_kpa=0.4,
        yield_kg_per_tree=80.0,  # ESTIMATE: mature grafted tree 50-150 kg.
    ),
}
CROPS["orange"] = CROPS["citrus"]


def crop(key: str) -> CropProfile:
    try:
        return CROPS[key]
    except KeyError:
        raise KeyError(f"unknown crop {key!r}; known: {', '.join(sorted(CROPS))}") from None
