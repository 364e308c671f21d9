"""Dashboards as code: the committed JSON is what the builders make, every name a query
uses is in the storage contract, Grafana's expansion is reproduced faithfully, and
``push`` sends what Grafana's HTTP API expects (to a recording HTTP server: no Grafana
can run here)."""

from __future__ import annotations

import json
import re
import shutil
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from dashboards import JSON_DIR
from dashboards.__main__ import main, rendered
from dashboards.boards import DASHBOARDS
from dashboards.expand import (
    TimeRange,
    annotation_queries,
    expand,
    format_duration,
    interval_ms,
    panel_queries,
    query_variables,
    regex_escape,
)
from dashboards.grafana import DATASOURCE_VAR, DEFAULT_DATASOURCE_UID, JSON
from dashboards.influxql import From, SchemaMismatch
from orchard.schema import MEASUREMENTS

BOARDS: dict[str, JSON] = {uid: build() for uid, build in DASHBOARDS.items()}


# --- committed JSON -------------------------------------------------------------------------


def test_committed_json_is_what_the_builders_make() -> None:
    for name, text in rendered().items():
        path = JSON_DIR / name
        assert path.exists(), f"{path} missing: run `make dashboards`"
        assert path.read_text() == text, f"{path} is stale: run `make dashboards` and commit"
    assert sorted(p.name for p in JSON_DIR.glob("*.json")) == sorted(rendered())
    assert main(["check"]) == 0


def test_check_fails_on_any_difference(tmp_path: Path) -> None:
    copy = tmp_path / "json"
    shutil.copytree(JSON_DIR, copy)
    assert main(["--dir", str(copy), "check"]) == 0
    path = copy / "orchard-fleet.json"
    board = json.loads(path.read_text())
    board["panels"][0]["title"] = "edited by hand in Grafana"
    path.write_text(json.dumps(board, indent=2, sort_keys=True) + "\n")
    assert main(["--dir", str(copy), "check"]) == 1
    (copy / "orchard-fleet.json").unlink()
    assert main(["--dir", str(copy), "check"]) == 1
    assert main(["--dir", str(copy), "build"]) == 0
    assert main(["--dir", str(copy), "check"]) == 0


def test_builds_are_deterministic_with_fixed_unique_ids() -> None:
    again = {uid: build() for uid, build in DASHBOARDS.items()}
    assert again == BOARDS
    assert list(BOARDS) == [b["uid"] for b in BOARDS.values()]
    assert len({b["title"] for b in BOARDS.values()}) == len(BOARDS)
    for board in BOARDS.values():
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), board["uid"]
        for panel in board["panels"]:
            pos = panel["gridPos"]
            assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, (board["uid"], panel["title"])
            assert panel["datasource"]["uid"] == "${" + DATASOURCE_VAR + "}"
            assert panel["targets"], f"{panel['title']} has no query"
            for target in panel["targets"]:
                assert target["rawQuery"] is True and target["datasource"] == panel["datasource"]


def test_required_dashboards_and_variables() -> None:
    assert set(BOARDS) == {
        "orchard-overview",
        "orchard-block",
        "orchard-irrigation",
        "orchard-harvest",
        "orchard-fleet",
    }
    names = {uid: [v["name"] for v in query_variables(b)] for uid, b in BOARDS.items()}
    assert names["orchard-block"] == ["farm", "block", "node"]
    assert all(n[0] == "farm" for n in names.values())
    for board in BOARDS.values():
        variables = board["templating"]["list"]
        assert variables[0]["type"] == "datasource"
        assert variables[0]["current"]["value"] == DEFAULT_DATASOURCE_UID
    block = BOARDS["orchard-block"]
    assert {a["name"] for a in block["annotations"]["list"]} >= {"Irrigation", "Alarms"}
    queries = [pq.query for b in BOARDS.values() for pq in panel_queries(b)]
    assert all("$timeFilter" in q for q in queries)
    # Time buckets always follow the zoom level: a panel that needs coarser buckets sets
    # its minimum interval instead of hard-coding one.
    buckets = [m for q in queries for m in re.findall(r"time\(([^)]*)\)", q)]
    assert buckets and set(buckets) == {"$__interval"}


# --- every name in the storage contract -----------------------------------------------------

_FROM = re.compile(r'FROM "([^"]+)"')
_ALIAS = re.compile(r'AS "([^"]+)"')
_IDENT = re.compile(r'"([^"]+)"')


def contract_violations(query: str, alias: str = "") -> list[str]:
    """Names the query uses that orchard/schema.py does not define for its measurement."""
    found = _FROM.findall(query)
    if len(found) != 1:
        return [f"expected one FROM in {query!r}"]
    measurement = found[0]
    if measurement not in MEASUREMENTS:
        return [f"unknown measurement {measurement!r}"]
    spec = MEASUREMENTS[measurement]
    known = set(spec.fields) | set(spec.tags)
    rest = _ALIAS.sub("", _FROM.sub("", query))
    problems = [
        f"{measurement} has no {name!r}" for name in _IDENT.findall(rest) if name not in known
    ]
    if "WITH KEY" in query:
        problems += [
            f"{measurement} has no tag {k!r}"
            for k in re.findall(r'KEY = "([^"]+)"', query)
            if k not in spec.tags
        ]
    for tag in re.findall(r"\$tag_(\w+)", alias):
        if tag not in spec.tags:
            problems.append(f"alias uses $tag_{tag}: not a tag of {measurement}")
        elif f'"{tag}"' not in query.split("GROUP BY", 1)[-1]:
            problems.append(f"alias uses $tag_{tag} but the query does not group by it")
    return problems


def all_queries() -> Iterator[tuple[str, str, str]]:
    for board in BOARDS.values():
        for panel in board["panels"]:
            for target in panel["targets"]:
                yield f"{board['uid']}:{panel['title']}", target["query"], target.get("alias", "")
        for variable in query_variables(board):
            yield f"{board['uid']}:${variable['name']}", variable["query"], ""
        for name, query in annotation_queries(board):
            yield f"{board['uid']}:annotation {name}", query, ""


def test_every_field_and_tag_exists_in_the_storage_contract() -> None:
    checked = 0
    problems: dict[str, list[str]] = {}
    for where, query, alias in all_queries():
        found = contract_violations(query, alias)
        if found:
            problems[where] = found
        checked += 1
    assert checked > 40
    assert problems == {}


def test_contract_check_catches_renames() -> None:
    assert contract_violations('SELECT mean("temp") FROM "telemetry" WHERE $timeFilter') == [
        "telemetry has no 'temp'"
    ]
    assert contract_violations('SELECT last("x") AS "y" FROM "nope" WHERE $timeFilter') == [
        "unknown measurement 'nope'"
    ]
    assert contract_violations(
        'SELECT mean("battery") FROM "telemetry" WHERE $timeFilter GROUP BY "node"', "$tag_block"
    ) == ["alias uses $tag_block but the query does not group by it"]
    # The builders refuse the same mistakes before any JSON is written.
    with pytest.raises(SchemaMismatch):
        From("telemetry").agg("mean", "temp")
    with pytest.raises(SchemaMismatch):
        From("dead_letter").match("farm")
    with pytest.raises(SchemaMismatch):
        From("weather").field("rain")


def test_annotation_columns_are_selected() -> None:
    for board in BOARDS.values():
        for annotation in board["annotations"]["list"][1:]:
            columns = set(_IDENT.findall(annotation["query"].split("FROM")[0]))
            wanted = {annotation["textColumn"], *annotation["tagsColumn"].split(",")}
            assert wanted <= columns, annotation["name"]


# --- Grafana's expansion --------------------------------------------------------------------


def test_expansion_matches_grafana() -> None:
    end = datetime(2026, 6, 1, 12, tzinfo=UTC)
    day = TimeRange.last("now-24h", now=end)
    query = (
        'SELECT mean("temperature") FROM "telemetry" WHERE "farm" =~ /^$farm$/ AND '
        '"node" =~ /^${node}$/ AND $timeFilter GROUP BY time($__interval), "node"'
    )
    out = expand(query, time_range=day, variables={"farm": ["sunny-hill"], "node": ["a-1", "b.2"]})
    assert out == (
        'SELECT mean("temperature") FROM "telemetry" WHERE "farm" =~ /^sunny-hill$/ AND '
        '"node" =~ /^(a-1|b\\.2)$/ AND time >= 1780228800000ms and time <= 1780315200000ms '
        'GROUP BY time(1m), "node"'
    )
    # 24 h over ~1000 points is 86.4 s: Grafana rounds to 1 m; 90 days (7,776 s) to 2 h; the panel
    # minimum wins when larger.
    assert format_duration(interval_ms(day)) == "1m"
    assert format_duration(interval_ms(TimeRange.last("now-90d", now=end))) == "2h"
    assert format_duration(interval_ms(day, "1d")) == "1d"
    assert format_duration(interval_ms(TimeRange.last("now-5m", now=end))) == "10s"
    assert regex_escape("a/b.c(d)") == "a\\/b\\.c\\(d\\)"
    with pytest.raises(ValueError, match=r"\$block"):
        expand('WHERE "block" =~ /^$block$/', time_range=day, variables={})


# --- push to an existing Grafana ------------------------------------------------------------


class _Recorder(BaseHTTPRequestHandler):
    requests: list[tuple[str, str, dict[str, str], Any]]
    folder_exists: bool
    status: int

    def _reply(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.requests.append((self.command, self.path, dict(self.headers), body))
        return body

    def do_GET(self) -> None:
        self._record()
        if self.status != 200:
            self._reply(self.status, {"message": "invalid API key"})
        elif self.path == "/api/folders/orchard" and self.folder_exists:
            self._reply(200, {"uid": "orchard", "title": "Orchard"})
        else:
            self._reply(404, {"message": "folder not found"})

    def do_POST(self) -> None:
        body = self._record()
        if self.path == "/api/folders":
            self._reply(200, {"uid": body["uid"], "title": body["title"]})
        elif self.path == "/api/dashboards/db":
            uid = body["dashboard"]["uid"]
            self._reply(200, {"status": "success", "uid": uid, "url": f"/d/{uid}/x", "version": 1})
        else:
            self._reply(404, {"message": "not found"})

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def fake_grafana() -> Iterator[tuple[str, type[_Recorder]]]:
    handler = type("Handler", (_Recorder,), {"requests": [], "folder_exists": False, "status": 200})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", handler
    finally:
        server.shutdown()
        server.server_close()


def test_push_creates_folder_and_uploads_every_dashboard(
    fake_grafana: tuple[str, type[_Recorder]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, handler = fake_grafana
    monkeypatch.setenv("GRAFANA_TOKEN", "glsa_test_token")
    assert main(["push", "--url", url, "--datasource-uid", "farm-influx"]) == 0
    calls = [(method, path) for method, path, _, _ in handler.requests]
    assert calls[:2] == [("GET", "/api/folders/orchard"), ("POST", "/api/folders")]
    assert calls[2:] == [("POST", "/api/dashboards/db")] * len(BOARDS)
    assert all(
        h.get("Authorization") == "Bearer glsa_test_token" for _, _, h, _ in handler.requests
    )
    uploads = [body for _, path, _, body in handler.requests if path == "/api/dashboards/db"]
    assert [u["dashboard"]["uid"] for u in uploads] == list(BOARDS)
    for upload in uploads:
        assert upload["folderUid"] == "orchard" and upload["overwrite"] is True
        board = upload["dashboard"]
        datasource = board["templating"]["list"][0]
        assert datasource["current"]["value"] == "farm-influx"
        # Apart from the datasource default, what is pushed is exactly what is committed.
        committed = json.loads((JSON_DIR / f"{board['uid']}.json").read_text())
        committed["templating"]["list"][0]["current"] = datasource["current"]
        assert board == committed
    assert capsys.readouterr().out.splitlines() == [f"/d/{uid}/x" for uid in BOARDS]


def test_push_reuses_folder_and_reports_auth_errors(
    fake_grafana: tuple[str, type[_Recorder]], capsys: pytest.CaptureFixture[str]
) -> None:
    url, handler = fake_grafana
    handler.folder_exists = True
    assert main(["push", "--url", url]) == 0
    assert ("POST", "/api/folders") not in [(m, p) for m, p, _, _ in handler.requests]
    handler.requests.clear()
    handler.status = 401
    assert main(["push", "--url", url]) == 1
    assert "Unauthorized" in capsys.readouterr().err
    assert [p for _, p, _, _ in handler.requests] == ["/api/folders/orchard"]
