"""Offline season generator and harvest ground truth (no broker, no clock: as fast as numpy).

Use it to load a season into InfluxDB quickly, to back-test irrigation rules, and to score
harvest forecasts against the simulated truth::

    from datetime import UTC, datetime
    from firmware_sim.season import ValveOpening, ready_date, simulate, simulate_arrays
    from firmware_sim.weather import WeatherEvent, parse_events
    from orchard.layout import load_orchard

    orchard = load_orchard("config/orchard.toml")
    weather = parse_events("frost@2026-04-20=-5;heat@2026-07-10:4")
    for block_id, node_id, reading in simulate(
        orchard,
        datetime(2026, 4, 1, tzinfo=UTC),
        datetime(2026, 8, 29, tzinfo=UTC),
        step_s=900,
        seed=7,
        weather=weather,
        valves=[ValveOpening("apple-east", datetime(2026, 6, 1, 5, tzinfo=UTC), 4 * 3600)],
        faults={"apple-east-n02": "stuck,spikes"},
    ):
        ...  # orchard.models.Reading with ts, seq, temperature, humidity, ...

    ready_date(orchard, "apple-east", seed=7, weather=weather)  # -> datetime.date | None

``simulate(orchard, start, end, *, step_s=900, seed=0, weather=None, valves=(), faults=None)``
yields ``(block_id, node_id, Reading)`` in time order (all nodes at one instant, then the
next instant); ``seq`` is the step number. ``simulate_arrays`` (same arguments) returns a
:class:`SeasonArrays` of numpy arrays shaped (steps, nodes), which is faster still.
``weather`` is a :class:`~firmware_sim.weather.Weather` or a list of
:class:`~firmware_sim.weather.WeatherEvent` (frost, heat, rain, dry on a date).
``valves`` are :class:`ValveOpening` runs (``valve=None``: every valve of the block).
``faults`` maps a node (or ``*``, ``BLOCK/*``) to fault kinds, as a string
``"stuck,spikes:0.1"`` or a list of :class:`~firmware_sim.faults.Fault`.

``ready_date(orchard, block_id, *, seed=0, weather=None, horizon_days=400)`` is the local
date on which more than half of the block's nodes first report maturity at or past the
crop's ``harvest_threshold``: what a harvest forecast is scored against. The same seed and
weather give the same date in the offline generator and the live simulator.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

import numpy as np
import numpy.typing as npt

from firmware_sim.faults import Fault, FaultInjector, parse_fault_items, resolve
from firmware_sim.physics import OrchardModel, Sample
from firmware_sim.weather import Weather, WeatherEvent
from orchard.layout import Orchard
from orchard.models import Reading

FloatArray = npt.NDArray[np.float64]
WeatherArg = Weather | Sequence[WeatherEvent] | None
FaultsArg = Mapping[str, str | Sequence[Fault]] | None


@dataclass(frozen=True)
class ValveOpening:
    """An irrigation run for the offline generator: a block's valve open for duration_s."""

    block_id: str
    start: datetime
    duration_s: float
    valve: str | None = None


@dataclass(frozen=True)
class SeasonArrays:
    """A generated season: one row per instant, one column per sensor node."""

    times: FloatArray
    """POSIX seconds of each instant (the true time; ``ts`` adds the node's clock skew)."""
    node_ids: list[str]
    block_ids: list[str]
    temperature: FloatArray
    humidity: FloatArray
    soil_moisture: FloatArray
    maturity: FloatArray
    battery: FloatArray
    rssi: npt.NDArray[np.int64]
    present: npt.NDArray[np.bool_]
    """False where no reading exists (dropout, dead battery, malformed on the wire)."""
    skew_s: FloatArray
    """Per-node clock skew added to the timestamp."""

    def column(self, node_id: str) -> int:
        return self.node_ids.index(node_id)


def _fault_selection(faults: FaultsArg) -> dict[str, list[Fault]]:
    if not faults:
        return {}
    out: dict[str, list[Fault]] = {}
    for node, spec in faults.items():
        if isinstance(spec, str):
            out.update(parse_fault_items([f"{node}={spec}"]))
        else:
            out[node] = list(spec)
    return out


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError(f"{value!r} must be timezone-aware")
    return value.astimezone(UTC)


def simulate_arrays(
    orchard: Orchard,
    start: datetime,
    end: datetime,
    *,
    step_s: float = 900.0,
    seed: int = 0,
    weather: WeatherArg = None,
    valves: Sequence[ValveOpening] = (),
    faults: FaultsArg = None,
) -> SeasonArrays:
    """Generate every sensor node's readings for [start, end) every ``step_s`` seconds."""
    start, end = _aware(start), _aware(end)
    if step_s <= 0:
        raise ValueError("step_s must be positive")
    model = OrchardModel(orchard, start=start, seed=seed, weather=weather)
    injector = FaultInjector(
        model.node_ids,
        resolve(_fault_selection(faults), model.node_ids, model.node_block_ids),
        seed=seed,
    )
    model.battery_dying = injector.dying.copy()
    for run in valves:
        t0 = _aware(run.start).timestamp()
        model.irrigate(run.block_id, run.valve, t0, t0 + run.duration_s)
    times = np.arange(start.timestamp(), end.timestamp(), step_s, dtype=np.float64)
    model_theta0, model_soc0 = model.theta.copy(), model.soc.copy()
    steps, n = len(times), len(model.node_ids)
    temp, rh = model.air(times) if steps else (np.zeros((0, n)), np.zeros((0, n)))
    maturity = model.maturity(times) if steps else np.zeros((0, n))
    # State at each reading: the initial state, then one integration step per interval.
    substeps = max(1, math.ceil(step_s / model.max_step_s - 1e-9))
    fine = start.timestamp() + (step_s / substeps) * np.arange((steps - 1) * substeps + 1)
    theta_after, soc_after = model.integrate(fine.astype(np.float64), record=True)
    theta_after, soc_after = (
        theta_after[substeps - 1 :: substeps],
        soc_after[substeps - 1 :: substeps],
    )
    theta = np.concatenate([model_theta0[None, :], theta_after])[:steps]
    soc = np.concatenate([model_soc0[None, :], soc_after])[:steps]
    measured = model._measure(0.0, temp, rh, theta, maturity, soc)
    present = np.ones((steps, n), dtype=bool)
    skew = np.zeros(n)
    if injector.any:
        fields = {
            "temperature": measured.temperature.copy(),
            "humidity": measured.humidity.copy(),
            "soil_moisture": measured.soil_moisture.copy(),
            "battery": measured.battery.copy(),
        }
        for k in range(steps):
            row = Sample(
                t=float(times[k]),
                temperature=fields["temperature"][k],
                humidity=fields["humidity"][k],
                soil_moisture=fields["soil_moisture"][k],
                maturity=measured.maturity[k],
                battery=fields["battery"][k],
                rssi=measured.rssi[k],
                battery_soc=soc[k],
            )
            out = injector.apply(row)
            fields["temperature"][k] = out.sample.temperature
            fields["humidity"][k] = out.sample.humidity
            fields["soil_moisture"][k] = out.sample.soil_moisture
            fields["battery"][k] = out.sample.battery
            present[k] = out.sent & ~out.lost & ~out.malformed
            skew = out.skew_s
        measured = Sample(
            t=0.0,
            temperature=fields["temperature"],
            humidity=fields["humidity"],
            soil_moisture=fields["soil_moisture"],
            maturity=measured.maturity,
            battery=fields["battery"],
            rssi=measured.rssi,
            battery_soc=soc,
        )
    return SeasonArrays(
        times=times,
        node_ids=list(model.node_ids),
        block_ids=list(model.node_block_ids),
        temperature=measured.temperature,
        humidity=measured.humidity,
        soil_moisture=measured.soil_moisture,
        maturity=measured.maturity,
        battery=measured.battery,
        rssi=measured.rssi,
        present=present,
        skew_s=np.asarray(skew, dtype=np.float64),
    )


def simulate(
    orchard: Orchard,
    start: datetime,
    end: datetime,
    *,
    step_s: float = 900.0,
    seed: int = 0,
    weather: WeatherArg = None,
    valves: Sequence[ValveOpening] = (),
    faults: FaultsArg = None,
) -> Iterator[tuple[str, str, Reading]]:
    """Yield ``(block_id, node_id, Reading)`` for every sensor node, instant by instant."""
    season = simulate_arrays(
        orchard, start, end, step_s=step_s, seed=seed, weather=weather, valves=valves, faults=faults
    )
    pairs = list(zip(season.block_ids, season.node_ids, strict=True))
    skew = season.skew_s.tolist()
    construct = Reading.model_construct
    skewed = [j for j, s in enumerate(skew) if s]
    for k, t in enumerate(season.times.tolist()):
        ts_row = [datetime.fromtimestamp(t, UTC)] * len(pairs)
        for j in skewed:
            ts_row[j] = datetime.fromtimestamp(t + skew[j], UTC)
        temps = season.temperature[k].tolist()
        hums = season.humidity[k].tolist()
        soils = season.soil_moisture[k].tolist()
        mats = season.maturity[k].tolist()
        bats = season.battery[k].tolist()
        rssis = season.rssi[k].tolist()
        present = season.present[k].tolist()
        for j, (block_id, node_id) in enumerate(pairs):
            if not present[j]:
                continue
            # Values are generated inside the contract's ranges; skip re-validating 10^5 rows.
            yield (
                block_id,
                node_id,
                construct(
                    ts=ts_row[j],
                    seq=k,
                    temperature=temps[j],
                    humidity=hums[j],
                    soil_moisture=soils[j],
                    maturity=mats[j],
                    battery=bats[j],
                    rssi=rssis[j],
                ),
            )


def ready_date(
    orchard: Orchard,
    block_id: str,
    *,
    seed: int = 0,
    weather: WeatherArg = None,
    horizon_days: int = 400,
) -> date | None:
    """Local date when more than half of the block's nodes first pass the harvest threshold."""
    block = orchard.block(block_id)
    bloom = datetime.combine(block.bloom_date, time(12), UTC)
    model = OrchardModel(orchard, start=bloom, seed=seed, weather=weather)
    columns = np.flatnonzero(model.node_block == model.block_index[block_id])
    if len(columns) == 0:
        return None
    _, cumulated = model.daily_gdd_table(block.bloom_date, horizon_days)
    maturity = model.maturity_from_gdd(cumulated.T)[:, columns]  # (days, block nodes)
    ready = (maturity >= block.crop_profile.harvest_threshold).sum(axis=1) > len(columns) / 2
    days = np.flatnonzero(ready)
    return block.bloom_date + timedelta(days=int(days[0])) if len(days) else None


def ready_dates(
    orchard: Orchard, *, seed: int = 0, weather: WeatherArg = None
) -> dict[str, date | None]:
    return {b.id: ready_date(orchard, b.id, seed=seed, weather=weather) for b in orchard.blocks}
