"""Fault injection: what real field nodes do wrong, on demand, per node.

Faults are chosen per node with ``NODE=KIND[:PARAM][,KIND[:PARAM]...]`` items separated by
``;`` (env ``ORCHARD_SIM_FAULTS``) or one ``--fault`` flag per item. ``NODE`` may be ``*``
(every sensor node) or ``BLOCK/*`` (every node of a block).

==============  =====================================================  =================
kind            effect                                                 PARAM (default)
==============  =====================================================  =================
stuck           temperature, humidity, soil moisture freeze            -
spikes          one field jumps to an implausible (but in-range) value probability (0.05)
dropouts        the reading is lost on the radio (seq still advances)  probability (0.3)
dying_battery   no solar charge, fast drain; silent once empty         -
clock_skew      the device clock is off by PARAM seconds               seconds (900)
malformed       the payload on the wire is not valid JSON              probability (0.25)
==============  =====================================================  =================

The offline generator applies all of them except ``malformed``, which exists only on the
wire (such a reading is left out of what it yields).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from firmware_sim.physics import BATTERY_EMPTY_V, Sample

FAULT_KINDS = ("stuck", "spikes", "dropouts", "dying_battery", "clock_skew", "malformed")
DEFAULT_PARAMS: dict[str, float] = {
    "stuck": 0.0,
    "spikes": 0.05,
    "dropouts": 0.3,
    "dying_battery": 0.0,
    "clock_skew": 900.0,
    "malformed": 0.25,
}


class FaultSpecError(ValueError):
    """A fault selection that cannot be understood."""


@dataclass(frozen=True)
class Fault:
    kind: str
    param: float

    def __str__(self) -> str:
        return f"{self.kind}:{self.param:g}"


def parse_fault_items(items: Iterable[str]) -> dict[str, list[Fault]]:
    """Parse ``NODE=KIND[:PARAM],...`` items (each may hold several ``;``-separated items)."""
    selection: dict[str, list[Fault]] = {}
    for chunk in items:
        for item in chunk.split(";"):
            item = item.strip()
            if not item:
                continue
            node, sep, kinds = item.partition("=")
            if not sep or not node.strip() or not kinds.strip():
                raise FaultSpecError(f"bad fault {item!r}: use NODE=KIND[:PARAM][,KIND...]")
            for spec in kinds.split(","):
                kind, _, param = spec.strip().partition(":")
                if kind not in FAULT_KINDS:
                    raise FaultSpecError(
                        f"unknown fault {kind!r} for {node}: known {', '.join(FAULT_KINDS)}"
                    )
                try:
                    value = float(param) if param else DEFAULT_PARAMS[kind]
                except ValueError:
                    raise FaultSpecError(f"bad parameter {param!r} for fault {kind}") from None
                if kind in ("spikes", "dropouts", "malformed") and not 0.0 <= value <= 1.0:
                    raise FaultSpecError(f"{kind} takes a probability 0-1, got {value}")
                selection.setdefault(node.strip(), []).append(Fault(kind, value))
    return selection


def resolve(
    selection: Mapping[str, Sequence[Fault]], node_ids: Sequence[str], node_blocks: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Map each node to ``{kind: param}``; raise for a node that does not exist."""
    known = set(node_ids)
    out: dict[str, dict[str, float]] = {}
    for target, faults in selection.items():
        if target == "*":
            nodes = list(node_ids)
        elif target.endswith("/*"):
            block = target[:-2]
            nodes = [n for n, b in zip(node_ids, node_blocks, strict=True) if b == block]
            if not nodes:
                raise FaultSpecError(f"fault for {target}: no sensor nodes in block {block!r}")
        elif target in known:
            nodes = [target]
        else:
            raise FaultSpecError(f"fault for unknown sensor node {target!r}")
        for node in nodes:
            out.setdefault(node, {}).update({f.kind: f.param for f in faults})
    return out


@dataclass
class Faulted:
    """A sample after fault injection."""

    sample: Sample
    sent: npt.NDArray[np.bool_]
    """The node takes and transmits a reading (False: dead battery)."""
    lost: npt.NDArray[np.bool_]
    """Lost on the radio: the node counted it, nobody receives it."""
    malformed: npt.NDArray[np.bool_]
    skew_s: npt.NDArray[np.float64]


@dataclass
class FaultInjector:
    """Applies the selected faults to samples of all nodes, deterministically for a seed."""

    node_ids: Sequence[str]
    faults: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        n = len(self.node_ids)
        index = {node: i for i, node in enumerate(self.node_ids)}

        def mask_and_param(kind: str) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64]]:
            mask = np.zeros(n, dtype=bool)
            param = np.zeros(n)
            for node, kinds in self.faults.items():
                if kind in kinds:
                    mask[index[node]] = True
                    param[index[node]] = kinds[kind]
            return mask, param

        self.stuck, _ = mask_and_param("stuck")
        self.spikes, self.spike_p = mask_and_param("spikes")
        self.dropouts, self.dropout_p = mask_and_param("dropouts")
        self.dying, _ = mask_and_param("dying_battery")
        self.skewed, self.skew = mask_and_param("clock_skew")
        self.malformed, self.malformed_p = mask_and_param("malformed")
        self._rng = np.random.default_rng([self.seed, 0xFA])
        self._frozen: dict[str, npt.NDArray[np.float64]] = {}
        self.any = bool(self.faults)

    def apply(self, sample: Sample) -> Faulted:
        n = len(self.node_ids)
        sent = ~(self.dying & (sample.battery_soc <= 0.0))
        if not self.any:
            none = np.zeros(n, dtype=bool)
            return Faulted(sample, sent, none, none, np.zeros(n))
        rng = self._rng
        temperature = sample.temperature.copy()
        humidity = sample.humidity.copy()
        soil = sample.soil_moisture.copy()
        battery = sample.battery.copy()
        if self.stuck.any():
            if not self._frozen:
                self._frozen = {"t": temperature.copy(), "h": humidity.copy(), "s": soil.copy()}
            temperature = np.where(self.stuck, self._frozen["t"], temperature)
            humidity = np.where(self.stuck, self._frozen["h"], humidity)
            soil = np.where(self.stuck, self._frozen["s"], soil)
        if self.spikes.any():
            spike = self.spikes & (rng.random(n) < self.spike_p)
            which = rng.integers(0, 3, n)
            sign = np.where(rng.random(n) < 0.5, -1.0, 1.0)
            temperature = np.where(
                spike & (which == 0), np.clip(temperature + sign * 30.0, -60, 70), temperature
            )
            humidity = np.where(spike & (which == 1), np.where(sign > 0, 100.0, 0.0), humidity)
            soil = np.where(spike & (which == 2), np.where(sign > 0, 0.6, 0.0), soil)
        if self.dying.any():
            battery = np.where(self.dying, np.maximum(battery, BATTERY_EMPTY_V - 0.4), battery)
        lost = self.dropouts & (rng.random(n) < self.dropout_p)
        malformed = self.malformed & (rng.random(n) < self.malformed_p)
        faulted = Sample(
            t=sample.t,
            temperature=temperature,
            humidity=humidity,
            soil_moisture=soil,
            maturity=sample.maturity,
            battery=battery,
            rssi=sample.rssi,
            battery_soc=sample.battery_soc,
        )
        return Faulted(
            faulted, sent, lost & sent, malformed & sent, np.where(self.skewed, self.skew, 0.0)
        )


def corrupt(payload: bytes) -> bytes:
    """A payload a broken firmware might send: truncated JSON with trailing garbage."""
    return payload[: max(1, len(payload) // 2)] + b"\x00\xff}{"
