"""The live simulator: every node of an orchard in one asyncio process, on a simulated clock.

One scheduler drives all nodes: at each report instant it advances the physics (vectorised
over all nodes), applies faults and hands each node its reading; the nodes publish on their
own MQTT connections. The simulated clock runs ``speed`` times faster than real time from
``start`` until it catches up with the wall clock, then continues in real time, so no
timestamp is ever in the future (except what the ``clock_skew`` fault does on purpose).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from functools import partial

import numpy as np
from pydantic import SecretStr

from firmware_sim.faults import FaultInjector
from firmware_sim.node import SensorNode, ValveControllerNode
from firmware_sim.physics import OrchardModel, Sample
from firmware_sim.valves import DEFAULT_MAX_RUN_S, ValveLogic
from firmware_sim.weather import Weather, WeatherEvent
from orchard.broker import device_password
from orchard.layout import Orchard
from orchard.models import Reading
from orchard.settings import MqttSettings
from orchard.topics import NodeAddress

log = logging.getLogger(__name__)

STATS_LOG_INTERVAL_S = 30.0
CATCH_UP_INTERVALS = 5
CATCH_UP_FLUSH_S = 0.05
MAX_CATCH_UP_TICKS = 64


class SimClock:
    """Simulated time (POSIX seconds): accelerated from ``start``, never ahead of the wall."""

    def __init__(
        self,
        start: float,
        speed: float,
        *,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self._wall = wall
        self._monotonic = monotonic
        self.speed = speed
        self.anchor(start)

    def anchor(self, start: float) -> None:
        """Start (again) at ``start``, from this real instant."""
        self.start = min(start, self._wall())
        self._m0 = self._monotonic()

    def now(self) -> float:
        return min(self.start + (self._monotonic() - self._m0) * self.speed, self._wall())

    def real_delay(self, target: float) -> float:
        """Real seconds until the simulated clock reaches ``target``."""
        accelerated = (target - self.start) / self.speed - (self._monotonic() - self._m0)
        return max(0.0, accelerated, target - self._wall())

    @property
    def caught_up(self) -> bool:
        return self.start + (self._monotonic() - self._m0) * self.speed >= self._wall()


_RELATIVE = re.compile(r"^-(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_start(value: str | None, now: datetime | None = None) -> datetime:
    """``now``/empty, a relative ``-180d`` (s, m, h, d, w), or an ISO datetime (UTC if naive)."""
    now = now or datetime.now(UTC)
    if value is None or value.strip() in ("", "now"):
        return now
    text = value.strip()
    match = _RELATIVE.match(text)
    if match:
        return now - timedelta(seconds=float(match[1]) * _UNITS[match[2]])
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"bad start {value!r}: use 'now', a relative time like -180d or -12h, "
            "or an ISO datetime like 2026-04-01T00:00:00Z"
        ) from None
    parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    if parsed > now:
        raise ValueError(f"start {value!r} is in the future: the simulator never runs ahead")
    return parsed


@dataclass
class SimStats:
    nodes: int = 0
    controllers: int = 0
    ticks: int = 0
    readings_taken: int = 0
    readings_acked: int = 0
    readings_dropped_buffer: int = 0
    readings_lost_radio: int = 0
    readings_malformed: int = 0
    readings_resent: int = 0
    backlog: int = 0
    max_lag_s: float = 0.0
    """Largest delay, in simulated seconds, between a report instant and its readings leaving."""
    max_start_delay_s: float = 0.0
    """Largest delay, in simulated seconds, before the scheduler began a report instant's work
    (growing values mean the simulator cannot keep up)."""
    max_lag_connected_s: float = 0.0
    """The same, counted only once every device had connected (start-up excluded)."""
    lag_p50_s: float = 0.0
    lag_p99_s: float = 0.0
    """Median and 99th percentile of the lag over the last 10,000 report instants."""
    all_connected_after_s: float | None = None
    """Real seconds from start until every device was connected the first time."""
    sim_start: str = ""
    sim_end: str = ""
    real_seconds: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class SimConfig:
    start: datetime | None = None
    """None: the wall-clock time when the simulator starts running."""
    speed: float = 1.0
    interval_s: float = 60.0
    seed: int = 0
    buffer_size: int = 10_000
    max_run_s: int = DEFAULT_MAX_RUN_S
    connect_concurrency: int = 100
    drain_s: float = 5.0


class Simulator:
    def __init__(
        self,
        orchard: Orchard,
        mqtt: MqttSettings,
        device_secret: str,
        config: SimConfig,
        *,
        weather: Weather | list[WeatherEvent] | None = None,
        faults: Mapping[str, Mapping[str, float]] | None = None,
        on_reading: Callable[[str, Reading], None] | None = None,
    ) -> None:
        self.orchard = orchard
        self.config = config
        self.on_reading = on_reading
        self.clock = SimClock((config.start or datetime.now(UTC)).timestamp(), config.speed)
        start = datetime.fromtimestamp(self.clock.start, UTC)
        self.model = OrchardModel(orchard, start=start, seed=config.seed, weather=weather)
        self.faults = FaultInjector(self.model.node_ids, faults or {}, seed=config.seed)
        self.model.battery_dying = self.faults.dying.copy()
        farm = orchard.farm.id

        def device_settings(node: str) -> MqttSettings:
            return mqtt.model_copy(
                update={
                    "username": node,
                    "password": SecretStr(device_password(device_secret, node)),
                }
            )

        self.sensors = [
            SensorNode(
                NodeAddress(farm, block_id, node),
                device_settings(node),
                self.clock.now,
                buffer_size=config.buffer_size,
            )
            for node, block_id in zip(self.model.node_ids, self.model.node_block_ids, strict=True)
        ]
        self.controllers: list[ValveControllerNode] = []
        for block in orchard.blocks:
            if block.controller is None:
                continue
            logic = ValveLogic(
                block.controller,
                block.valves,
                max_run_s=config.max_run_s,
                water=partial(self._water, block.id),
                stop=partial(self._stop_water, block.id),
            )
            self.controllers.append(
                ValveControllerNode(
                    NodeAddress(farm, block.id, block.controller),
                    device_settings(block.controller),
                    self.clock.now,
                    logic,
                )
            )
        self.stats = SimStats(nodes=len(self.sensors), controllers=len(self.controllers))

    def _water(self, block_id: str, valve: str, start: float, end: float) -> None:
        self.model.irrigate(block_id, valve, start, end)

    def _stop_water(self, block_id: str, valve: str, at: float) -> None:
        self.model.stop_irrigation(block_id, valve, at)

    @property
    def devices(self) -> list[SensorNode | ValveControllerNode]:
        return [*self.sensors, *self.controllers]

    def _ticks(self, times: list[float], send: bool = True) -> None:
        """Take the readings of report instants ``times`` (one, or many when catching up)."""
        if len(times) == 1:
            batch = self.model.sample(times[0])
            rows = [batch]
        else:
            batch = self.model.sample_many(np.asarray(times))
            rows = [
                Sample(
                    t=t,
                    temperature=batch.temperature[k],
                    humidity=batch.humidity[k],
                    soil_moisture=batch.soil_moisture[k],
                    maturity=batch.maturity[k],
                    battery=batch.battery[k],
                    rssi=batch.rssi[k],
                    battery_soc=batch.battery_soc[k],
                )
                for k, t in enumerate(times)
            ]
        for t, row in zip(times, rows, strict=True):
            self._take(t, row, send)

    def _take(self, t: float, sample: Sample, send: bool) -> None:
        faulted = self.faults.apply(sample)
        s = faulted.sample
        temps, hums = s.temperature.tolist(), s.humidity.tolist()
        soils, mats = s.soil_moisture.tolist(), s.maturity.tolist()
        bats, rssis = s.battery.tolist(), s.rssi.tolist()
        sent, lost = faulted.sent.tolist(), faulted.lost.tolist()
        malformed, skew = faulted.malformed.tolist(), faulted.skew_s.tolist()
        ts = datetime.fromtimestamp(t, UTC).isoformat()
        hook = self.on_reading
        for j, node in enumerate(self.sensors):
            if not sent[j]:
                continue  # battery empty: the node is silent
            reading = {
                "ts": ts if not skew[j] else datetime.fromtimestamp(t + skew[j], UTC).isoformat(),
                "seq": node.next_seq(),
                "temperature": temps[j],
                "humidity": hums[j],
                "soil_moisture": soils[j],
                "maturity": mats[j],
                "battery": bats[j],
                "rssi": rssis[j],
            }
            if hook is not None:
                hook(node.node_id, Reading.model_validate(reading))
            if lost[j]:
                node.taken += 1
                self.stats.readings_lost_radio += 1
                continue
            if malformed[j]:
                self.stats.readings_malformed += 1
            node.take(reading, malformed=malformed[j], send=send)
        for controller in self.controllers:
            controller.tick(t)

    def _collect(self) -> None:
        st = self.stats
        st.readings_taken = sum(n.taken for n in self.sensors)
        st.readings_acked = sum(n.sent for n in self.sensors)
        st.readings_dropped_buffer = sum(n.dropped for n in self.sensors)
        st.readings_resent = sum(n.resent for n in self.sensors)
        st.backlog = sum(n.backlog for n in self.sensors)

    async def run(self, stop: asyncio.Event, duration_s: float | None = None) -> SimStats:
        """Run until ``stop`` is set (or ``duration_s`` real seconds passed), then shut down."""
        real0 = time.monotonic()
        cfg = self.config
        if cfg.start is None:
            self.clock.anchor(time.time())
        log.info(
            "simulating %d sensor nodes and %d valve controllers from %s at %gx, a reading every %g s",
            len(self.sensors),
            len(self.controllers),
            datetime.fromtimestamp(self.clock.start, UTC).isoformat(timespec="seconds"),
            cfg.speed,
            cfg.interval_s,
        )
        gate = asyncio.Semaphore(cfg.connect_concurrency)
        connecting = [asyncio.create_task(d.run_connection(stop, gate)) for d in self.devices]
        self.stats.sim_start = datetime.fromtimestamp(self.clock.start, UTC).isoformat()
        k = 0
        lags: deque[float] = deque(maxlen=10_000)
        last_connected = 0
        last_flush = time.monotonic()
        holding = False
        last_log = time.monotonic()
        try:
            while not stop.is_set():
                if duration_s is not None and time.monotonic() - real0 >= duration_s:
                    break
                t = self.clock.start + k * cfg.interval_s
                delay = self.clock.real_delay(t)
                if duration_s is not None:
                    delay = min(delay, max(0.0, duration_s - (time.monotonic() - real0)))
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
                    continue  # re-check stop, duration and the clock
                self.stats.max_start_delay_s = max(
                    self.stats.max_start_delay_s, self.clock.now() - t
                )
                # Far behind (a high speed): let readings pile up and leave in batches
                # every 50 ms, instead of one message per reading.
                behind = self.clock.now() - t > CATCH_UP_INTERVALS * cfg.interval_s
                if behind != holding:
                    holding = behind
                    for node in self.sensors:
                        node.hold = behind
                due = int((self.clock.now() - t) // cfg.interval_s) + 1
                count = min(due, MAX_CATCH_UP_TICKS) if behind else 1
                times = [self.clock.start + (k + i) * cfg.interval_s for i in range(count)]
                self._ticks(times, send=not behind)
                t = times[-1]
                if not behind or time.monotonic() - last_flush > CATCH_UP_FLUSH_S:
                    last_flush = time.monotonic()
                    for node in self.sensors:
                        node.flush()
                k += count
                self.stats.ticks = k
                self.stats.sim_end = datetime.fromtimestamp(t, UTC).isoformat()
                await asyncio.sleep(0)  # let the connections breathe between ticks
                lag = self.clock.now() - t
                connected = sum(d.connected for d in self.devices)
                if connected != last_connected:
                    total = len(self.devices)
                    if connected < last_connected == total:
                        log.warning(
                            "%d of %d devices lost the broker; their readings are buffered",
                            total - connected,
                            total,
                        )
                    elif connected == total:
                        log.info("all %d devices connected", total)
                    last_connected = connected
                self.stats.max_lag_s = max(self.stats.max_lag_s, lag)
                if self.stats.all_connected_after_s is None:
                    if all(d.connects for d in self.devices):
                        self.stats.all_connected_after_s = time.monotonic() - real0
                else:
                    self.stats.max_lag_connected_s = max(self.stats.max_lag_connected_s, lag)
                lags.append(lag)
                if time.monotonic() - last_log >= STATS_LOG_INTERVAL_S:
                    last_log = time.monotonic()
                    self._collect()
                    log.info(
                        "sim time %s, lag %.1f s, %d/%d devices connected, "
                        "readings taken %d acked %d backlog %d dropped %d",
                        self.stats.sim_end,
                        self.clock.now() - t,
                        sum(d.connected for d in self.devices),
                        len(self.devices),
                        self.stats.readings_taken,
                        self.stats.readings_acked,
                        self.stats.backlog,
                        self.stats.readings_dropped_buffer,
                    )
        finally:
            stop.set()
            await asyncio.gather(
                *(d.close(cfg.drain_s) for d in self.devices), return_exceptions=True
            )
            for task in connecting:
                task.cancel()
            await asyncio.gather(*connecting, return_exceptions=True)
            self._collect()
            if self.stats.backlog:
                log.warning(
                    "%d buffered readings were not delivered before shutdown (broker unreachable)",
                    self.stats.backlog,
                )
            if lags:
                ordered = sorted(lags)
                self.stats.lag_p50_s = ordered[len(ordered) // 2]
                self.stats.lag_p99_s = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
            self.stats.real_seconds = time.monotonic() - real0
            log.info("simulator stopped: %s", self.stats.as_dict())
        return self.stats
