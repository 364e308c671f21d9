"""Every dashboard query, expanded as Grafana would, run against the real InfluxDB.

Grafana cannot run here. Instead a simulated season is written to the real influxd
(ingest's own line functions for telemetry, status and dead letters; points built
from orchard/schema.py for control's measurements), each dashboard's template
variables are filled by running their own queries, and each panel's and annotation's
query is expanded (``$timeFilter``, ``$__interval``, variables) and run: it must not
error and must return data.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from dashboards.__main__ import main
from dashboards.boards import DASHBOARDS
from dashboards.expand import (
    PanelQuery,
    TimeRange,
    annotation_queries,
    expand,
    panel_queries,
    query_variables,
    resolve_variables,
    tag_values_of,
)
from dashboards.grafana import JSON
from dashboards.season import Season, load_season
from orchard.influx import Series, SyncInfluxClient, quote_ident
from orchard.layout import Orchard, load_orchard
from orchard.settings import CONFIG_DIR, InfluxSettings
from tests.conftest import LiveStack

BOARDS: dict[str, JSON] = {uid: build() for uid, build in DASHBOARDS.items()}
PANEL_QUERIES = [pq for board in BOARDS.values() for pq in panel_queries(board)]


@pytest.fixture(scope="module")
def orchard() -> Orchard:
    return load_orchard(CONFIG_DIR / "orchard.toml")


@pytest.fixture(scope="module")
def season_db(stack: LiveStack, orchard: Orchard) -> Iterator[tuple[SyncInfluxClient, Season]]:
    """One database with the season for the whole module (writing it once keeps this quick)."""
    settings = InfluxSettings(url=stack.influxd.url, database=f"dash_{uuid.uuid4().hex[:10]}")
    with SyncInfluxClient(settings) as client:
        client.create_database()
        season = load_season(client, orchard)
        try:
            yield client, season
        finally:
            client.query(f"DROP DATABASE {quote_ident(settings.database)}", database=False)


def _run(client: SyncInfluxClient, query: str) -> list[Series]:
    results = client.query(query)
    assert len(results) == 1, f"expected one statement's result for {query}"
    return results[0]


def _variables(client: SyncInfluxClient, season: Season, board: JSON) -> dict[str, list[str]]:
    time_range = TimeRange.last(board["time"]["from"], now=season.end + timedelta(minutes=30))
    return resolve_variables(board, lambda q: tag_values_of(_run(client, q)), time_range)


def _has_values(series: list[Series]) -> bool:
    for s in series:
        for row in s.values:
            # Column 0 is time; any non-null value after it is data.
            if any(v is not None for v in row[1:]):
                return True
    return False


def _range_for(board: JSON, pq: PanelQuery | None, season: Season) -> TimeRange:
    # "Now" is just after the last point of the season, as on a live farm.
    now = season.end + timedelta(minutes=30)
    span = pq.time_from if pq and pq.time_from else board["time"]["from"]
    return TimeRange.last(span, now=now)


def test_variables_follow_farm_block_node(season_db: tuple[SyncInfluxClient, Season]) -> None:
    client, season = season_db
    orchard = season.orchard
    board = BOARDS["orchard-block"]
    assert [v["name"] for v in query_variables(board)] == ["farm", "block", "node"]
    selected = _variables(client, season, board)
    assert selected["farm"] == [orchard.farm.id]
    first_block = sorted(b.id for b in orchard.blocks)[0]
    assert selected["block"] == [first_block]
    # "All" nodes of the selected block, and only of that block.
    assert selected["node"] == sorted(orchard.block(first_block).sensor_nodes)

    # A multi-block selection narrows the node list to exactly those blocks' nodes.
    two = sorted(b.id for b in orchard.blocks)[:2]
    time_range = _range_for(board, None, season)
    node_query = expand(
        query_variables(board)[2]["query"],
        time_range=time_range,
        variables={"farm": [orchard.farm.id], "block": two},
    )
    nodes = tag_values_of(_run(client, node_query))
    assert nodes == sorted(n for b in two for n in orchard.block(b).sensor_nodes)


@pytest.mark.parametrize(
    "pq", PANEL_QUERIES, ids=[f"{pq.dashboard}:{pq.panel}:{pq.ref_id}" for pq in PANEL_QUERIES]
)
def test_panel_query_returns_data(
    season_db: tuple[SyncInfluxClient, Season], pq: PanelQuery
) -> None:
    client, season = season_db
    board = BOARDS[pq.dashboard]
    variables = _variables(client, season, board)
    query = expand(
        pq.query,
        time_range=_range_for(board, pq, season),
        variables=variables,
        min_interval=pq.min_interval,
    )
    series = _run(client, query)
    assert _has_values(series), f"no data for {pq.dashboard} / {pq.panel}: {query}"


def _rows(series: list[Series]) -> list[dict[str, Any]]:
    # Grafana's table format shows GROUP BY tags as columns: merge them into each row.
    return [{**s.tags, **row} for s in series for row in s.rows()]


def test_overview_shows_every_block_against_its_thresholds(
    season_db: tuple[SyncInfluxClient, Season],
) -> None:
    client, season = season_db
    board = BOARDS["orchard-overview"]
    variables = _variables(client, season, board)
    by_title = {pq.panel: pq for pq in panel_queries(board)}

    def run(title: str) -> list[Series]:
        pq = by_title[title]
        return _run(
            client,
            expand(
                pq.query,
                time_range=_range_for(board, pq, season),
                variables=variables,
                min_interval=pq.min_interval,
            ),
        )

    blocks = {b.id for b in season.orchard.blocks}
    margin = {
        s.tags["block"]: s.values[-1][1] for s in run("Soil moisture above irrigation trigger")
    }
    progress = {s.tags["block"]: s.values[-1][1] for s in run("Maturity, % of harvest threshold")}
    assert set(margin) == set(progress) == blocks
    # The panels' arithmetic matches the last block state control wrote, block by block.
    for block, state in season.latest_state.items():
        value = {k: float(v) for k, v in state.items() if isinstance(v, int | float)}
        assert margin[block] == pytest.approx(value["soil_moisture"] - value["trigger"])
        assert progress[block] == pytest.approx(
            100 * value["maturity"] / value["maturity_threshold"]
        )
    first = season.orchard.blocks[0].id

    # Only the alarm still open is listed after Grafana's filter: the table query itself
    # returns the cleared ones too, with their last state.
    rows = _rows(run("Open alarms"))
    states = {(r["block"], r["type"]): (r["state"], r["severity"]) for r in rows}
    assert len(states) == len(rows), "one row per alarm, whatever its severity history"
    assert states[(first, "node_offline")] == ("active_unack", "minor")
    # Escalated from minor to major, then cleared: the row shows the clear, not a stale
    # "active" from the minor series.
    assert states[(first, "heat")] == ("cleared_unack", "major")

    listings = {r["lot"]: r["state"] for r in _rows(run("Listings"))}
    assert set(listings) == {f"{b}-{season.end.year}" for b in season.listed_blocks}
    assert listings[f"{first}-{season.end.year}"] == "published"


def test_fleet_sees_the_node_that_went_offline(season_db: tuple[SyncInfluxClient, Season]) -> None:
    client, season = season_db
    board = BOARDS["orchard-fleet"]
    variables = _variables(client, season, board)
    (pq,) = [p for p in panel_queries(board) if p.panel == "Node status"]
    rows = _rows(
        _run(
            client, expand(pq.query, time_range=_range_for(board, pq, season), variables=variables)
        )
    )
    state = {r["node"]: r["state"] for r in rows}
    assert state[season.offline_node] == "offline"
    assert sum(1 for s in state.values() if s == "online") == len(state) - 1

    def total(title: str) -> int:
        # What the panel's merge + reduce(sum) transformations show.
        (pq,) = [p for p in panel_queries(board) if p.panel == title]
        query = expand(pq.query, time_range=_range_for(board, pq, season), variables=variables)
        return sum(
            v
            for row in _rows(_run(client, query))
            for k, v in row.items()
            if k not in ("time", "node")
        )

    devices = len(season.orchard.all_nodes())
    assert (total("Nodes online"), total("Nodes offline")) == (devices - 1, 1)

    # The silent node shows as silent in the last intervals of the reporting timeline.
    (pq,) = [p for p in panel_queries(board) if p.panel == "Reporting nodes"]
    query = expand(
        pq.query,
        time_range=_range_for(board, pq, season),
        variables=variables,
        min_interval=pq.min_interval,
    )
    counts = {s.tags["node"]: [v for _, v in s.values] for s in _run(client, query)}
    assert counts[season.offline_node][-5:] == [0] * 5
    # Every other node reported in every whole hour of the range (the first and the last
    # bucket are cut by the range's ends).
    silent = {n: c for n, c in counts.items() if n != season.offline_node and min(c[1:-1]) == 0}
    assert silent == {}


@pytest.mark.parametrize("uid", sorted(BOARDS))
def test_annotations_return_events(season_db: tuple[SyncInfluxClient, Season], uid: str) -> None:
    client, season = season_db
    board = BOARDS[uid]
    annotations = list(annotation_queries(board))
    if uid != "orchard-block":
        assert annotations == []
        return
    assert {name for name, _ in annotations} == {"Irrigation", "Alarms"}
    variables = _variables(client, season, board)
    for name, query in annotations:
        expanded = expand(query, time_range=_range_for(board, None, season), variables=variables)
        assert _rows(_run(client, expanded)), f"annotation {name} found no events: {expanded}"


def test_verify_command_runs_every_query(
    season_db: tuple[SyncInfluxClient, Season],
    stack: LiveStack,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client, _ = season_db
    monkeypatch.setenv("ORCHARD_INFLUX__URL", stack.influxd.url)
    monkeypatch.setenv("ORCHARD_INFLUX__DATABASE", client.database)
    assert main(["verify", "--require-data"]) == 0
    out = capsys.readouterr().out
    assert "ERROR" not in out and " empty " not in out
    for uid in BOARDS:
        assert f"{uid} " in out
    assert out.count(" rows ") == len(PANEL_QUERIES) + 2  # + the two annotations


def test_verify_command_fails_on_an_empty_database(
    influx_db: InfluxSettings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ORCHARD_INFLUX__URL", influx_db.url)
    monkeypatch.setenv("ORCHARD_INFLUX__DATABASE", influx_db.database)
    assert main(["verify"]) == 1
    assert "variable $farm has no values" in capsys.readouterr().out


def test_irrigation_water_counts_each_run_once(season_db: tuple[SyncInfluxClient, Season]) -> None:
    client, season = season_db
    board = BOARDS["orchard-irrigation"]
    variables = _variables(client, season, board)
    (pq,) = [p for p in panel_queries(board) if p.panel == "Water used in the period"]
    query = expand(pq.query, time_range=_range_for(board, pq, season), variables=variables)
    water = {s.tags["block"]: s.values[0][1] for s in _run(client, query)}
    expected: dict[str, float] = {}
    for block, _, m3 in season.irrigations:
        expected[block] = expected.get(block, 0.0) + m3
    assert water == pytest.approx(expected)

    (pq,) = [p for p in panel_queries(board) if p.panel.startswith("Depth decided per day")]
    query = expand(
        pq.query,
        time_range=_range_for(board, pq, season),
        variables=variables,
        min_interval=pq.min_interval,
    )
    depth = {
        (s.tags["block"], s.tags["valve"]): sum(v for _, v in s.values) for s in _run(client, query)
    }
    runs = {b: sum(1 for blk, _, _ in season.irrigations if blk == b) for b in expected}
    for spec in season.orchard.blocks:
        for valve in spec.valves:
            assert depth[(spec.id, valve)] == pytest.approx(7.0 * runs[spec.id])
