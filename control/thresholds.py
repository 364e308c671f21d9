"""Effective thresholds of a block: crop and block defaults, overridden by agronomists.

Every threshold the control loop uses is listed once in :data:`SPECS` (unit, allowed
range, what it does). A block's effective value comes from, in order of precedence:

1. an agronomist's override for that block (``control_threshold_override``),
2. the block profile (``config/orchard.toml``: irrigation rate, efficiency),
3. a default derived from the crop profile and the soil (``orchard.crops``, FAO-56),
4. a control default (marked ESTIMATE where no published figure exists).

Each value reports where it came from, so an agronomist sees at a glance which numbers
are theirs. Overrides are validated with pydantic (range, unit) and for consistency
(refill above trigger, frost t90 below t10, ...) against the *effective* set, so a
change that would make the whole set contradictory is refused with a message naming
the allowed range. Every accepted change is audited (who, when, old → new, reason).

The control loop reads the effective thresholds at every tick (one small query), so a
change applies within one tick, without a restart.

API used by ``api/``::

    th = Thresholds(engine, orchard)
    th.effective("apple-east").as_json()          # values with their sources
    th.set_overrides("apple-east", {"soil_trigger": 0.2}, who="maria", reason="young trees")
    # raises ThresholdValidationError(problems=[...]) -> HTTP 422 with str(exc)
    th.audit("apple-east")
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from sqlalchemy.engine import Engine

from control.store import threshold_audit, threshold_override, utcnow
from orchard.agronomy import trigger_moisture
from orchard.crops import Stage
from orchard.layout import Block, Orchard

Source = Literal["override", "block_profile", "crop_default", "control_default"]


@dataclass(frozen=True, slots=True)
class ThresholdSpec:
    key: str
    unit: str
    minimum: float
    maximum: float
    description: str

    @property
    def allowed(self) -> str:
        return f"{self.minimum:g}–{self.maximum:g} {self.unit}".rstrip()


SPECS: dict[str, ThresholdSpec] = {
    s.key: s
    for s in [
        ThresholdSpec(
            "soil_trigger", "m³/m³", 0.02, 0.6, "root-zone soil moisture at which irrigation starts"
        ),
        ThresholdSpec(
            "soil_refill", "m³/m³", 0.03, 0.7, "soil moisture an irrigation run refills to"
        ),
        ThresholdSpec(
            "soil_dry",
            "m³/m³",
            0.01,
            0.6,
            "soil moisture below which a 'soil too dry' alarm is raised",
        ),
        ThresholdSpec(
            "soil_wet",
            "m³/m³",
            0.05,
            0.8,
            "soil moisture above which a 'waterlogged' alarm is raised",
        ),
        ThresholdSpec(
            "soil_hysteresis",
            "m³/m³",
            0.0,
            0.1,
            "margin a soil value must recover by before its alarm clears",
        ),
        ThresholdSpec(
            "trigger_duration_min",
            "min",
            5,
            1440,
            "how long soil must stay below the trigger before irrigating",
        ),
        ThresholdSpec("max_run_min", "min", 5, 1440, "longest single irrigation run"),
        ThresholdSpec(
            "rain_lockout_h", "h", 0, 168, "no irrigation this long after rain wetted the root zone"
        ),
        ThresholdSpec(
            "irrigation_rate_mm_h", "mm/h", 0.1, 100, "water applied per hour of valve opening"
        ),
        ThresholdSpec(
            "application_efficiency",
            "",
            0.3,
            1.0,
            "share of applied water that reaches the root zone",
        ),
        ThresholdSpec("root_depth_m", "m", 0.1, 5.0, "effective root depth Zr"),
        ThresholdSpec(
            "depletion_p",
            "",
            0.1,
            0.8,
            "FAO-56 depletion fraction p (share of TAW used before stress)",
        ),
        ThresholdSpec(
            "frost_t10",
            "°C",
            -15,
            5,
            "temperature of 10 % bud/fruit kill after 30 min, current stage",
        ),
        ThresholdSpec(
            "frost_t90",
            "°C",
            -20,
            5,
            "temperature of 90 % bud/fruit kill after 30 min, current stage",
        ),
        ThresholdSpec("frost_margin_c", "°C", 0, 5, "frost warning this far above t10"),
        ThresholdSpec(
            "frost_duration_min",
            "min",
            0,
            120,
            "how long the frost condition must hold before alarming",
        ),
        ThresholdSpec("heat_c", "°C", 20, 55, "air temperature above which heat stress is alarmed"),
        ThresholdSpec(
            "heat_duration_min", "min", 0, 720, "how long heat must last before alarming"
        ),
        ThresholdSpec(
            "temp_hysteresis_c",
            "°C",
            0,
            10,
            "margin a temperature must recover by before its alarm clears",
        ),
        ThresholdSpec(
            "vpd_high_kpa", "kPa", 0.5, 8, "sustained VPD above this flags water/heat stress"
        ),
        ThresholdSpec("vpd_low_kpa", "kPa", 0, 2, "sustained VPD below this flags disease risk"),
        ThresholdSpec(
            "vpd_hysteresis_kpa", "kPa", 0, 2, "margin VPD must recover by before its alarm clears"
        ),
        ThresholdSpec(
            "vpd_duration_min",
            "min",
            10,
            1440,
            "how long VPD must stay out of band before alarming",
        ),
        ThresholdSpec(
            "vpd_low_duration_min",
            "min",
            30,
            2880,
            "how long VPD must stay below the low band before the disease-risk alarm",
        ),
        ThresholdSpec("battery_low_v", "V", 0, 15, "battery voltage below which a node is flagged"),
        ThresholdSpec(
            "offline_after_min", "min", 1, 1440, "silence after which a node is flagged offline"
        ),
        ThresholdSpec(
            "harvest_threshold",
            "",
            0,
            100,
            "maturity index at which fruit is ready (crop's own unit)",
        ),
        ThresholdSpec(
            "gdd_target", "°C·day", 0, 10000, "degree-days from bloom to harvest maturity"
        ),
    ]
}

# Control defaults that no publication gives; each says why it is what it is.
CONTROL_DEFAULTS: dict[str, tuple[float, str]] = {
    "soil_hysteresis": (0.01, "ESTIMATE: about twice a capacitive probe's noise"),
    "trigger_duration_min": (60, "ESTIMATE: an hour below trigger rules out a single dip"),
    "max_run_min": (240, "ESTIMATE: long runs are split; water needs hours to reach the root zone"),
    "rain_lockout_h": (24, "ESTIMATE: a day for rain to redistribute in the root zone"),
    "frost_margin_c": (1.0, "ESTIMATE: 1 °C of warning before t10 to start frost protection"),
    "frost_duration_min": (10, "ESTIMATE: short, because WSU kill values apply after 30 min"),
    "heat_duration_min": (30, "ESTIMATE: sunburn needs sustained exposure (Schrader et al. 2001)"),
    "temp_hysteresis_c": (1.0, "ESTIMATE: above sensor noise, below a meaningful change"),
    "vpd_hysteresis_kpa": (0.3, "ESTIMATE"),
    "vpd_duration_min": (120, "ESTIMATE: 'sustained' VPD stress, agronomy-reference.md"),
    "vpd_low_duration_min": (
        480,
        "ESTIMATE: infection needs long wet periods (apple scab, Mills table: ~9 h at 10 °C); "
        "shorter humid nights are normal",
    ),
    "battery_low_v": (3.4, "ESTIMATE: single-cell Li-ion near 10 % charge"),
    "offline_after_min": (30, "ESTIMATE: several missed readings at 1-5 min intervals"),
}


class ThresholdValue(BaseModel):
    model_config = ConfigDict(frozen=True)

    key: str
    value: float
    unit: str
    source: Source
    detail: str = Field(description="where the default comes from, or who overrode it")
    default: float = Field(description="the value without any override")
    allowed_min: float
    allowed_max: float
    description: str


class EffectiveThresholds(BaseModel):
    model_config = ConfigDict(frozen=True)

    block: str
    on: date
    stage: Stage
    values: dict[str, ThresholdValue]

    def __getitem__(self, key: str) -> float:
        return self.values[key].value

    def as_floats(self) -> dict[str, float]:
        return {k: v.value for k, v in self.values.items()}


class Override(BaseModel):
    model_config = ConfigDict(frozen=True)

    block: str
    key: str
    value: float
    updated_at: datetime
    updated_by: str
    reason: str


class AuditEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: int
    block: str
    key: str
    old_value: float | None
    new_value: float | None
    effective_before: float | None
    effective_after: float | None
    actor: str
    ts: datetime
    reason: str


@dataclass(frozen=True, slots=True)
class ThresholdProblem:
    key: str
    message: str
    allowed: str | None = None


class ThresholdValidationError(ValueError):
    """Refused overrides; ``problems`` lists each, ``str()`` is one readable message."""

    def __init__(self, problems: list[ThresholdProblem]) -> None:
        self.problems = problems
        super().__init__("; ".join(p.message for p in problems))

    def to_json(self) -> list[dict[str, Any]]:
        return [{"key": p.key, "message": p.message, "allowed": p.allowed} for p in self.problems]


# Pydantic model of an override request: every key optional, each with its range.
OverrideModel: type[BaseModel] = create_model(  # type: ignore[call-overload]
    "ThresholdOverrides",
    __config__=ConfigDict(extra="forbid", allow_inf_nan=False),
    **{
        key: (
            float | None,
            Field(default=None, ge=spec.minimum, le=spec.maximum, description=spec.description),
        )
        for key, spec in SPECS.items()
    },
)


def days_since_bloom(block: Block, on: date) -> int:
    return (on - block.bloom_date).days


def stage_on(block: Block, on: date) -> Stage:
    return block.crop_profile.stage(max(0, days_since_bloom(block, on)))


def defaults(block: Block, on: date) -> dict[str, tuple[float, Source, str]]:
    """Each threshold's value without overrides, with its source and a short citation."""
    crop = block.crop_profile
    soil = block.soil_profile
    stage = stage_on(block, on)
    frost = crop.frost[stage]
    p = crop.depletion_p
    out: dict[str, tuple[float, Source, str]] = {
        "soil_trigger": (
            round(float(trigger_moisture(soil.theta_fc, soil.theta_wp, p)), 4),
            "crop_default",
            f"FAO-56: θFC − p·(θFC − θWP), {block.soil} soil, p {p:g} ({crop.name})",
        ),
        "soil_refill": (
            soil.theta_fc,
            "crop_default",
            f"field capacity of {block.soil} (FAO-56 Table 19)",
        ),
        "soil_dry": (
            round(soil.theta_wp + 0.25 * (soil.theta_fc - soil.theta_wp), 4),
            "control_default",
            "ESTIMATE: three quarters of the available water used, close to wilting point",
        ),
        "soil_wet": (
            round(soil.theta_fc + 0.06, 4),
            "control_default",
            "ESTIMATE: well above field capacity; a loam drains there within a day",
        ),
        "irrigation_rate_mm_h": (block.irrigation_rate_mm_h, "block_profile", "block profile"),
        "application_efficiency": (block.application_efficiency, "block_profile", "block profile"),
        "root_depth_m": (crop.root_depth_m, "crop_default", f"{crop.name}, FAO-56 Table 22"),
        "depletion_p": (p, "crop_default", f"{crop.name}, FAO-56 Table 22"),
        "frost_t10": (frost.t10, "crop_default", f"{crop.name}, stage {stage} (WSU / UF-IFAS)"),
        "frost_t90": (frost.t90, "crop_default", f"{crop.name}, stage {stage} (WSU / UF-IFAS)"),
        "heat_c": (crop.heat_c, "crop_default", f"{crop.name} crop profile"),
        "vpd_high_kpa": (crop.vpd_high_kpa, "crop_default", "agronomy-reference.md VPD section"),
        "vpd_low_kpa": (crop.vpd_low_kpa, "crop_default", "agronomy-reference.md VPD section"),
        "harvest_threshold": (
            crop.harvest_threshold,
            "crop_default",
            f"{crop.name}: {crop.maturity_index} ({crop.maturity_unit})",
        ),
        "gdd_target": (crop.gdd_target, "crop_default", f"{crop.name} crop profile"),
    }
    for key, (value, why) in CONTROL_DEFAULTS.items():
        out[key] = (float(value), "control_default", why)
    missing = set(SPECS) - set(out)
    assert not missing, f"thresholds without a default: {missing}"
    return out


def _ordering_problems(values: Mapping[str, float], changed: set[str]) -> list[ThresholdProblem]:
    """Consistency of a whole effective set; reported on the keys the request touched."""
    problems: list[ThresholdProblem] = []

    def need(low: str, high: str, why: str) -> None:
        if values[low] >= values[high] and (low in changed or high in changed):
            u = SPECS[low].unit
            key = high if high in changed else low
            problems.append(
                ThresholdProblem(
                    key,
                    f"{high} ({values[high]:g} {u}) must be above {low} ({values[low]:g} {u}): {why}",
                    f"{high} > {values[low]:g} {u}"
                    if key == high
                    else f"{low} < {values[high]:g} {u}",
                )
            )

    need("soil_trigger", "soil_refill", "irrigation would stop before it starts")
    need("soil_dry", "soil_trigger", "the dry alarm must sit below the irrigation trigger")
    need("soil_refill", "soil_wet", "refilling would itself raise a waterlogged alarm")
    need("frost_t90", "frost_t10", "90 % kill happens at a colder temperature than 10 % kill")
    need("vpd_low_kpa", "vpd_high_kpa", "the low-VPD band must lie below the high-VPD band")
    return problems


def validate_overrides(
    block: Block,
    changes: Mapping[str, Any],
    current_overrides: Mapping[str, float],
    on: date,
) -> dict[str, float | None]:
    """Check a request (key → value, None to remove) and return it typed, or raise."""
    problems: list[ThresholdProblem] = []
    unknown = [k for k in changes if k not in SPECS]
    for key in unknown:
        problems.append(
            ThresholdProblem(key, f"unknown threshold {key!r}; known: {', '.join(SPECS)}")
        )
    known = {k: v for k, v in changes.items() if k in SPECS}
    try:
        parsed = OverrideModel.model_validate({k: v for k, v in known.items() if v is not None})
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            key = str(err["loc"][0]) if err["loc"] else "?"
            spec = SPECS.get(key)
            got = err.get("input")
            if spec is None:
                problems.append(ThresholdProblem(key, f"{key}: {err['msg']}"))
                continue
            problems.append(
                ThresholdProblem(
                    key,
                    f"{key} = {got!r} is not allowed: must be a number from {spec.allowed} "
                    f"({spec.description})",
                    spec.allowed,
                )
            )
    if problems:
        raise ThresholdValidationError(problems)
    typed: dict[str, float | None] = {
        k: (None if v is None else float(getattr(parsed, k))) for k, v in known.items()
    }
    merged = {k: v[0] for k, v in defaults(block, on).items()}
    merged.update(current_overrides)
    for key, value in typed.items():
        if value is None:
            merged[key] = defaults(block, on)[key][0]
        else:
            merged[key] = value
    problems = _ordering_problems(merged, set(typed))
    # Frost defaults change with the crop stage: an override must stay consistent with
    # every stage's defaults, not only today's, or it would break later in the season.
    if {"frost_t10", "frost_t90"} & set(typed) and not problems:
        for stage, crit in block.crop_profile.frost.items():
            t10 = merged["frost_t10"] if "frost_t10" in {**current_overrides, **typed} else crit.t10
            t90 = merged["frost_t90"] if "frost_t90" in {**current_overrides, **typed} else crit.t90
            if t90 >= t10:
                problems.append(
                    ThresholdProblem(
                        "frost_t10" if "frost_t10" in typed else "frost_t90",
                        f"frost_t90 ({t90:g} °C) must be below frost_t10 ({t10:g} °C) in stage "
                        f"{stage}: override both together",
                        "frost_t90 < frost_t10",
                    )
                )
                break
    if problems:
        raise ThresholdValidationError(problems)
    return typed


class Thresholds:
    """Effective thresholds and overrides for the blocks of one orchard."""

    def __init__(self, engine: Engine, orchard: Orchard) -> None:
        self.engine = engine
        self.orchard = orchard
        # (block, its overrides) -> thresholds, for the day in _cached_on: a tick asks for
        # every block's thresholds, which change only with an override or the day.
        self._cache: dict[tuple[str, tuple[Override, ...]], EffectiveThresholds] = {}
        self._cached_on: date | None = None

    def block(self, block_id: str) -> Block:
        return self.orchard.block(block_id)

    def overrides(self, block_id: str | None = None) -> list[Override]:
        query = sa.select(threshold_override)
        if block_id is not None:
            query = query.where(threshold_override.c.block == block_id)
        with self.engine.connect() as conn:
            rows = conn.execute(
                query.order_by(threshold_override.c.block, threshold_override.c.key)
            )
            return [Override.model_validate(dict(r._mapping)) for r in rows]

    def effective(self, block_id: str, on: date | None = None) -> EffectiveThresholds:
        block = self.block(block_id)
        return _effective(block, on or datetime.now(UTC).date(), self.overrides(block_id))

    def effective_all(self, on: date | None = None) -> dict[str, EffectiveThresholds]:
        """Every block's thresholds with one query (what a control tick calls)."""
        on = on or datetime.now(UTC).date()
        by_block: dict[str, list[Override]] = {}
        for o in self.overrides():
            by_block.setdefault(o.block, []).append(o)
        if on != self._cached_on:
            self._cache.clear()
            self._cached_on = on
        out: dict[str, EffectiveThresholds] = {}
        for b in self.orchard.blocks:
            key = (b.id, tuple(by_block.get(b.id, ())))
            found = self._cache.get(key)
            if found is None:
                found = self._cache[key] = _effective(b, on, list(key[1]))
            out[b.id] = found
        return out

    def set_overrides(
        self,
        block_id: str,
        changes: Mapping[str, Any],
        *,
        who: str,
        reason: str = "",
        now: datetime | None = None,
        on: date | None = None,
    ) -> EffectiveThresholds:
        """Apply overrides atomically (all or none); ``None`` removes an override.

        Raises :class:`ThresholdValidationError` naming each refused value and its
        allowed range, and ``KeyError`` for an unknown block.
        """
        block = self.block(block_id)
        now = now or utcnow()
        on = on or now.date()
        if not changes:
            raise ThresholdValidationError([ThresholdProblem("", "no threshold given")])
        with self.engine.begin() as conn:
            rows = conn.execute(
                sa.select(threshold_override).where(threshold_override.c.block == block_id)
            ).all()
            current = {r.key: r.value for r in rows}
            typed = validate_overrides(block, changes, current, on)
            base = defaults(block, on)
            for key, value in typed.items():
                old = current.get(key)
                if old == value:
                    continue
                before = old if old is not None else base[key][0]
                after = value if value is not None else base[key][0]
                cond = (threshold_override.c.block == block_id) & (threshold_override.c.key == key)
                if value is None:
                    conn.execute(threshold_override.delete().where(cond))
                elif old is None:
                    conn.execute(
                        threshold_override.insert().values(
                            block=block_id,
                            key=key,
                            value=value,
                            updated_at=now,
                            updated_by=who,
                            reason=reason,
                        )
                    )
                else:
                    conn.execute(
                        threshold_override.update()
                        .where(cond)
                        .values(value=value, updated_at=now, updated_by=who, reason=reason)
                    )
                conn.execute(
                    threshold_audit.insert().values(
                        block=block_id,
                        key=key,
                        old_value=old,
                        new_value=value,
                        effective_before=before,
                        effective_after=after,
                        actor=who,
                        ts=now,
                        reason=reason,
                    )
                )
        return self.effective(block_id, on)

    def audit(
        self, block_id: str | None = None, *, key: str | None = None, limit: int = 100
    ) -> list[AuditEntry]:
        """Threshold changes, newest first."""
        query = sa.select(threshold_audit)
        if block_id is not None:
            query = query.where(threshold_audit.c.block == block_id)
        if key is not None:
            query = query.where(threshold_audit.c.key == key)
        query = query.order_by(threshold_audit.c.ts.desc(), threshold_audit.c.id.desc()).limit(
            limit
        )
        with self.engine.connect() as conn:
            return [AuditEntry.model_validate(dict(r._mapping)) for r in conn.execute(query)]


def _effective(block: Block, on: date, overrides: list[Override]) -> EffectiveThresholds:
    base = defaults(block, on)
    by_key = {o.key: o for o in overrides}
    values: dict[str, ThresholdValue] = {}
    for key, spec in SPECS.items():
        default_value, source, detail = base[key]
        o = by_key.get(key)
        values[key] = ThresholdValue(
            key=key,
            value=o.value if o is not None else default_value,
            unit=spec.unit,
            source="override" if o is not None else source,
            detail=(
                f"set by {o.updated_by} on {o.updated_at:%Y-%m-%d %H:%M} UTC"
                + (f": {o.reason}" if o.reason else "")
                if o is not None
                else detail
            ),
            default=default_value,
            allowed_min=spec.minimum,
            allowed_max=spec.maximum,
            description=spec.description,
        )
    return EffectiveThresholds(block=block.id, on=on, stage=stage_on(block, on), values=values)


def with_proposed(
    block: Block, on: date, current: list[Override], proposed: Mapping[str, Any]
) -> EffectiveThresholds:
    """Effective thresholds if ``proposed`` were applied (validated; nothing stored)."""
    typed = validate_overrides(block, proposed, {o.key: o.value for o in current}, on)
    merged = {o.key: o for o in current}
    stamp = datetime.now(UTC)
    for key, value in typed.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = Override(
                block=block.id,
                key=key,
                value=value,
                updated_at=stamp,
                updated_by="proposal",
                reason="backtest",
            )
    return _effective(block, on, list(merged.values()))
