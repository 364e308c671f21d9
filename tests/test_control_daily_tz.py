"""Daily agronomy on the farm's local calendar days, against the real influxd.

Readings are written as telemetry, bucketed by ``control.daily``'s query (InfluxQL ``tz()``)
and turned into ``block_daily`` rows the way the control service does it; the expected
extremes are placed by hand on either side of local midnights, including DST days.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from control import daily
from control.clock import FixedClock
from control.thresholds import _effective
from orchard import agronomy
from orchard.influx import SyncInfluxClient
from orchard.layout import Farm, Orchard, load_orchard
from orchard.lineprotocol import encode_point, to_ns
from orchard.settings import PROJECT_ROOT, InfluxSettings
from tests.conftest import LiveStack
from tests.test_control_helpers import small_orchard

STEP = timedelta(minutes=30)


def farm_in(zone: str) -> Orchard:
    base = small_orchard(farm=f"tz-{uuid.uuid4().hex[:8]}")
    return base.model_copy(update={"farm": Farm(id=base.farm.id, timezone=zone)})


def write_temperatures(
    influx: SyncInfluxClient,
    orchard: Orchard,
    start: datetime,
    end: datetime,
    temperature: Callable[[datetime], float],
    humidity: bool = False,
) -> None:
    """Every node of the block reports every 30 min in [start, end); the third node reads 1 °C
    higher, so the median over nodes is the profile itself."""
    block = orchard.blocks[0]
    lines = []
    for k, node in enumerate(block.sensor_nodes):
        t = start
        while t < end:
            fields: dict[str, float | None] = {
                "temperature": temperature(t) + (1.0 if k == 2 else 0.0),
                "soil_moisture": 0.25,
                "humidity": 60.0 if humidity else None,
            }
            tags = {"farm": orchard.farm.id, "block": block.id, "node": node}
            lines.append(encode_point("telemetry", tags, fields, to_ns(t)))
            t += STEP
    influx.write(lines)


def run_daily(
    influx: SyncInfluxClient, orchard: Orchard, first: date, today: date
) -> list[daily.DayRow]:
    """What the service does once a day, in the farm's zone; writes ``block_daily``."""
    zone = daily.farm_zone(orchard)
    block = orchard.blocks[0]
    series = influx.query_one(
        daily.daily_query(orchard.farm.id, orchard.blocks, first, today, zone), epoch="ms"
    )
    arrays = daily.node_days(series, orchard.blocks, first, today, zone)
    days = daily.day_range(first, today)
    thresholds = _effective(block, first, [])
    rows = daily.compute_block_days(block, thresholds, days, arrays[block.id], {}, {})
    influx.write(daily.daily_lines(orchard.farm.id, block.id, rows, zone))
    return rows


def stored_times(influx: SyncInfluxClient, orchard: Orchard) -> list[datetime]:
    [series] = influx.query_one(
        f"SELECT tmin FROM block_daily WHERE farm = '{orchard.farm.id}'", epoch="ms"
    )
    return [datetime.fromtimestamp(r["time"] / 1000, UTC) for r in series.rows()]


def extremes(rows: list[daily.DayRow]) -> dict[date, tuple[float, float]]:
    return {r.day: (r.tmin, r.tmax) for r in rows}


def shanghai_night(t: datetime) -> float:
    """24 °C by day, 14 °C at night; a cold front from 22:00 on 20 May to 06:00 on 21 May
    (local), coldest (-1 °C) at 04:00 local on the 21st."""
    local = t.astimezone(ZoneInfo("Asia/Shanghai"))
    stamp = local.replace(tzinfo=None)
    if datetime(2026, 5, 20, 22) <= stamp < datetime(2026, 5, 21):
        return 8.0
    if datetime(2026, 5, 21) <= stamp < datetime(2026, 5, 21, 6):
        return -1.0 if local.hour == 4 else 2.0
    return 24.0 if 6 <= local.hour < 22 else 14.0


SHANGHAI_START = datetime(2026, 5, 18, 16, tzinfo=UTC)  # 19 May 00:00 local
SHANGHAI_END = datetime(2026, 5, 22, 16, tzinfo=UTC)  # 23 May 00:00 local


def test_utc8_pre_dawn_frost_belongs_to_the_local_morning(influx: SyncInfluxClient) -> None:
    orchard = farm_in("Asia/Shanghai")
    write_temperatures(influx, orchard, SHANGHAI_START, SHANGHAI_END, shanghai_night)
    rows = run_daily(influx, orchard, date(2026, 5, 19), date(2026, 5, 23))

    # The 20th ends with the cold evening (8 °C); the -1 °C at 04:00 is the 21st's minimum.
    assert extremes(rows) == {
        date(2026, 5, 19): (14.0, 24.0),
        date(2026, 5, 20): (8.0, 24.0),
        date(2026, 5, 21): (-1.0, 24.0),
        date(2026, 5, 22): (14.0, 24.0),
    }
    # Each row stamped at its local midnight: 16:00Z the day before.
    assert stored_times(influx, orchard) == [
        datetime(2026, 5, d, 16, tzinfo=UTC) for d in (18, 19, 20, 21)
    ]
    # GDD and Ra on the local day: the 21st is day of year 141 (no humidity: Hargreaves).
    frost_day = rows[2]
    crop = orchard.blocks[0].crop_profile
    assert frost_day.gdd == pytest.approx(
        float(agronomy.growing_degree_days(-1.0, 24.0, crop.gdd_base_c, crop.gdd_cutoff_c))
    )
    ra = float(agronomy.extraterrestrial_radiation(orchard.blocks[0].latitude, 141.0))
    assert frost_day.et0_method == "hargreaves"
    assert frost_day.et0 == pytest.approx(float(agronomy.et0_hargreaves(-1.0, 24.0, ra)))


def test_same_readings_on_a_utc_farm_keep_utc_days(influx: SyncInfluxClient) -> None:
    orchard = farm_in("UTC")
    write_temperatures(influx, orchard, SHANGHAI_START, SHANGHAI_END, shanghai_night)
    rows = run_daily(influx, orchard, date(2026, 5, 19), date(2026, 5, 22))

    # UTC days run 08:00-08:00 local: the whole cold night falls on the 20th (the old result).
    assert extremes(rows) == {
        date(2026, 5, 19): (14.0, 24.0),
        date(2026, 5, 20): (-1.0, 24.0),
        date(2026, 5, 21): (14.0, 24.0),
    }
    assert stored_times(influx, orchard) == [datetime(2026, 5, d, tzinfo=UTC) for d in (19, 20, 21)]
    # A UTC farm sends the query it always sent: no tz() clause.
    utc_query = daily.daily_query(
        orchard.farm.id, orchard.blocks, date(2026, 5, 19), date(2026, 5, 22)
    )
    assert "tz(" not in utc_query
    assert utc_query == daily.daily_query(
        orchard.farm.id, orchard.blocks, date(2026, 5, 19), date(2026, 5, 22), daily.UTC_ZONE
    )


@pytest.mark.parametrize(
    ("zone", "day", "hours"),
    [
        ("Europe/Berlin", date(2026, 3, 29), 23),  # spring forward 02:00 -> 03:00
        ("Europe/Berlin", date(2026, 10, 25), 25),  # fall back 03:00 -> 02:00
        ("America/Santiago", date(2026, 9, 6), 23),  # midnight itself is skipped
    ],
)
def test_dst_day_is_one_local_day(
    influx: SyncInfluxClient, zone: str, day: date, hours: int
) -> None:
    tz = ZoneInfo(zone)
    before, after = day - timedelta(days=1), day + timedelta(days=1)
    starts = {d: daily.local_midnight(d, tz) for d in (before, day, after, after + timedelta(1))}
    assert (starts[after] - starts[day]) == timedelta(hours=hours)

    # Markers a quarter of an hour either side of each midnight: a day binned as 24 h
    # from the first midnight would put the ones next to the DST day's end on the wrong side.
    markers = {
        starts[day] - timedelta(minutes=15): 35.0,  # the day before: its maximum
        starts[day] + timedelta(minutes=15): 30.0,  # the DST day: its maximum, first thing
        starts[after] - timedelta(minutes=15): -3.0,  # the DST day: its minimum, last thing
        starts[after] + timedelta(minutes=15): -8.0,  # the day after: its minimum
    }

    def temperature(t: datetime) -> float:
        return markers.get(t, 15.0)

    orchard = farm_in(zone)
    first = starts[before] - timedelta(minutes=15)  # on the 30-minute grid of the markers
    write_temperatures(influx, orchard, first, starts[after + timedelta(1)], temperature)
    rows = run_daily(influx, orchard, before, after + timedelta(days=1))

    assert extremes(rows) == {before: (15.0, 35.0), day: (-3.0, 30.0), after: (-8.0, 15.0)}
    assert stored_times(influx, orchard) == [starts[before], starts[day], starts[after]]


def test_local_day_helpers_agree_across_a_dst_change() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    assert daily.local_midnight(date(2026, 3, 29), berlin) == datetime(2026, 3, 28, 23, tzinfo=UTC)
    assert daily.local_midnight(date(2026, 3, 30), berlin) == datetime(2026, 3, 29, 22, tzinfo=UTC)
    last_second = datetime(2026, 3, 29, 21, 59, 59, tzinfo=UTC).timestamp()
    assert daily.local_day(last_second, berlin) == date(2026, 3, 29)
    assert daily.local_day(last_second + 1, berlin) == date(2026, 3, 30)
    assert daily.local_today(datetime(2026, 5, 20, 16, tzinfo=UTC), ZoneInfo("Asia/Shanghai")) == (
        date(2026, 5, 21)
    )
    assert daily.farm_zone(farm_in("Asia/Shanghai")) == ZoneInfo("Asia/Shanghai")


def test_unknown_time_zone_is_rejected_when_the_orchard_loads(tmp_path: Path) -> None:
    text = (PROJECT_ROOT / "config" / "orchard.toml").read_text()
    assert 'timezone = "Asia/Shanghai"' in text
    assert load_orchard(PROJECT_ROOT / "config" / "orchard.toml").farm.timezone == "Asia/Shanghai"
    typo = tmp_path / "orchard.toml"
    typo.write_text(text.replace('timezone = "Asia/Shanghai"', 'timezone = "Asia/Shangai"'))
    with pytest.raises(ValidationError) as raised:
        load_orchard(typo)
    [error] = raised.value.errors()
    assert error["loc"] == ("farm", "timezone")
    assert "unknown time zone 'Asia/Shangai'" in error["msg"]
    for bad in ("", "UTC+8", "../../etc/passwd"):
        with pytest.raises(ValidationError, match="unknown time zone"):
            Farm(id="f", timezone=bad)


async def test_service_days_rain_and_irrigation_on_local_days(
    stack: LiveStack, influx_db: InfluxSettings, influx: SyncInfluxClient, tmp_path: Path
) -> None:
    from control.commands import _update, queue_command
    from control.service import STATE_SCOPE, ControlService, ControlSettings
    from control.store import kv_get, open_store

    orchard = farm_in("Asia/Shanghai")
    farm, block = orchard.farm.id, orchard.blocks[0]
    write_temperatures(influx, orchard, SHANGHAI_START, SHANGHAI_END, shanghai_night)
    url = f"sqlite:///{tmp_path}/state.db"
    store = open_store(url)
    settings = ControlSettings(
        demo=True, influx=influx_db, mqtt=stack.mqtt("orchard-control"), state_url=url
    )
    now = datetime(2026, 5, 22, 17, tzinfo=UTC)  # 01:00 on 23 May in Shanghai
    service = ControlService(settings, orchard=orchard, engine=store, clock=FixedClock(now))
    try:
        # Rain at 01:00 local on the 21st (17:00Z on the 20th) is the 21st's rain.
        service._record_rain([(datetime(2026, 5, 20, 17, tzinfo=UTC).timestamp(), block.id, 4.0)])
        assert kv_get(store, STATE_SCOPE, "rain_mm") == {block.id: {"2026-05-21": 4.0}}
        # A run issued at 02:00 local on the 22nd (18:00Z on the 21st) is the 22nd's water.
        command = queue_command(
            store,
            farm=farm,
            block=block.id,
            node="b1-ctl",
            valve="b1-v1",
            action="open",
            duration_s=600,
            issued_at=datetime(2026, 5, 21, 18, tzinfo=UTC),
            ttl_s=3600,
            depth_mm=6.0,
            decision_id=1,
        )
        _update(store, command.command_id, None, state="acknowledged")
        assert service._irrigation_mm(date(2026, 5, 19)) == {block.id: {date(2026, 5, 22): 6.0}}

        await service._daily(now, service.thresholds.effective_all(date(2026, 5, 22)))
        assert kv_get(store, STATE_SCOPE, "daily_done") == "2026-05-23"
    finally:
        await service.influx.aclose()

    [series] = influx.query_one(
        f"SELECT tmin, rain_mm, irrigation_mm FROM block_daily WHERE farm = '{farm}'"
    )
    rows = {datetime.fromtimestamp(r["time"] / 1000, UTC): r for r in series.rows()}
    # The 22nd is complete at 01:00 local on the 23rd (in UTC it would still be running).
    assert sorted(rows) == [datetime(2026, 5, d, 16, tzinfo=UTC) for d in (18, 19, 20, 21)]
    on_21st, on_22nd = (
        rows[datetime(2026, 5, 20, 16, tzinfo=UTC)],
        rows[datetime(2026, 5, 21, 16, tzinfo=UTC)],
    )
    assert (on_21st["tmin"], on_21st["rain_mm"], on_21st["irrigation_mm"]) == (-1.0, 4.0, 0.0)
    assert (on_22nd["tmin"], on_22nd["rain_mm"], on_22nd["irrigation_mm"]) == (14.0, 0.0, 6.0)
