"""The API served for real (uvicorn on a free port) on real influxd, broker and SQLite."""

from __future__ import annotations

import csv
import io
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from pydantic import SecretStr

from api.auth import PERMISSIONS, Permission, Role, create_token
from api.settings import ApiSettings
from api.testing import running_api
from control.alarms import Alarms
from control.harvest.lots import LotDraft, upsert_lot
from orchard.db import create_engine, init_db
from orchard.influx import SyncInfluxClient, quote_ident
from orchard.lineprotocol import encode_point, to_ns
from orchard.settings import CONFIG_DIR, InfluxSettings
from tests.conftest import LiveStack

FARM = "sunny-hill"
BLOCK = "apple-east"
NODES = [f"{BLOCK}-n0{i}" for i in range(1, 6)]
NOW = datetime.now(UTC).replace(microsecond=0)
HOURS = 6


@dataclass
class Api:
    url: str
    tokens: dict[str, str]
    influx: SyncInfluxClient
    engine: object
    settings: ApiSettings

    def client(self, role: str | None = "admin") -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[role]}"} if role else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


def seed_telemetry(influx: SyncInfluxClient) -> None:
    lines = []
    for i, node in enumerate(NODES):
        for minute in range(0, HOURS * 60, 5):
            ts = NOW - timedelta(hours=HOURS) + timedelta(minutes=minute)
            lines.append(
                encode_point(
                    "telemetry",
                    {"farm": FARM, "block": BLOCK, "node": node},
                    {
                        "temperature": 15.0 + i + minute / 60,
                        "humidity": 60.0,
                        "soil_moisture": 0.20 + i * 0.01,
                        "battery": 3.9,
                        "rssi": -70 - i,
                        "seq": minute // 5,
                    },
                    to_ns(ts),
                )
            )
    lines.append(
        encode_point(
            "node_status",
            {"farm": FARM, "block": BLOCK, "node": NODES[0], "kind": "sensor"},
            {"online": 0, "state": "offline", "firmware": "1.2.0"},
            to_ns(NOW - timedelta(minutes=1)),
        )
    )
    influx.write(lines)


@pytest.fixture(scope="module")
def api(stack: LiveStack) -> Iterator[Api]:
    database = f"api_{uuid.uuid4().hex[:10]}"
    influx_settings = InfluxSettings(url=stack.influxd.url, database=database)
    tmp = Path(tempfile.mkdtemp(prefix="orchard-api-"))
    settings = ApiSettings(
        demo=True,
        influx=influx_settings,
        mqtt=stack.mqtt("orchard-api"),
        state_url=f"sqlite:///{tmp / 'state.db'}",
        orchard_file=CONFIG_DIR / "orchard.toml",
        broker_passwd_file=tmp / "passwd",
        admin_token="orch_demo-admin-token-for-tests",  # type: ignore[arg-type]
        history_max_points=500,
        history_max_days=31,
    )
    engine = create_engine(settings.state_url)
    init_db(engine)
    tokens = {role.value: create_token(engine, f"test-{role.value}", role)[1] for role in Role}
    with SyncInfluxClient(influx_settings) as influx:
        influx.create_database()
        seed_telemetry(influx)
        with running_api(settings) as url:
            yield Api(url, tokens, influx, engine, settings)
        influx.query(f"DROP DATABASE {quote_ident(database)}", database=False)
    engine.dispose()  # type: ignore[attr-defined]


# --- access -------------------------------------------------------------------------------


def test_health_is_open_and_ready_checks_every_dependency(api: Api) -> None:
    with api.client(None) as c:
        assert c.get("/health").json() == {"status": "ok"}
        ready = c.get("/health/ready")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"broker": "ok", "influxdb": "ok", "state_store": "ok"}
        assert c.get("/openapi.json").status_code == 200
        assert c.get("/ui/").status_code == 200


def test_readiness_reports_a_refused_broker_account(api: Api) -> None:
    bad = api.settings.mqtt.model_copy(update={"password": SecretStr("wrong")})
    with running_api(api.settings.model_copy(update={"mqtt": bad})) as url:
        r = httpx.get(url + "/health/ready")
    assert r.status_code == 503
    assert "refused" in r.json()["checks"]["broker"]
    assert r.json()["checks"]["influxdb"] == "ok"


def test_no_token_is_401_with_json_body(api: Api) -> None:
    with api.client(None) as c:
        r = c.get("/api/v1/blocks")
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == "Bearer"
        assert "bearer token" in r.json()["detail"]
        r = c.get("/api/v1/blocks", headers={"Authorization": "Bearer orch_not-a-token"})
        assert r.status_code == 401 and r.json()["detail"] == "invalid or revoked token"
        assert c.get("/metrics").status_code == 401


def test_demo_admin_token_from_settings_works(api: Api) -> None:
    r = httpx.get(
        api.url + "/api/v1/whoami",
        headers={"Authorization": "Bearer orch_demo-admin-token-for-tests"},
    )
    assert r.status_code == 200 and r.json()["role"] == "admin"


# One representative request per permission; the matrix checks each role against each.
PROBES: dict[Permission, tuple[str, str, dict[str, object] | None]] = {
    Permission.read: ("GET", f"/api/v1/blocks/{BLOCK}", None),
    Permission.listings_write: (
        "POST",
        "/api/v1/listings/no-such-lot/state",
        {"state": "published"},
    ),
    Permission.thresholds_write: ("PATCH", f"/api/v1/blocks/{BLOCK}/thresholds", {"values": {}}),
    Permission.alarms_write: ("POST", "/api/v1/alarms/999999/ack", None),
    Permission.irrigation_write: ("POST", "/api/v1/irrigation/commands/cmd-unknown1/cancel", None),
    Permission.backtest_run: ("POST", f"/api/v1/blocks/{BLOCK}/backtest", {"overrides": {"x": 1}}),
    Permission.harvest_write: ("POST", "/api/v1/blocks/no-such-block/readiness/harvested", None),
    Permission.quantity_write: (
        "PATCH",
        "/api/v1/listings/no-such-lot/quantity",
        {"quantity_kg": 100},
    ),
    Permission.devices_admin: ("GET", "/api/v1/devices", None),
    Permission.tokens_admin: ("GET", "/api/v1/tokens", None),
}


@pytest.mark.parametrize("permission", list(PROBES))
@pytest.mark.parametrize("role", [r.value for r in Role])
def test_role_matrix(api: Api, role: str, permission: Permission) -> None:
    method, path, body = PROBES[permission]
    with api.client(role) as c:
        r = c.request(method, path, json=body)
    if Role(role) in PERMISSIONS[permission]:
        # Allowed: the request reaches the endpoint (which may find nothing, or refuse the body).
        assert r.status_code not in (401, 403), r.text
    else:
        assert r.status_code == 403, r.text
        assert permission.value in r.json()["detail"]


def test_token_lifecycle_revocation_is_immediate(api: Api) -> None:
    with api.client("admin") as admin:
        created = admin.post("/api/v1/tokens", json={"name": "shop", "role": "operator"})
        assert created.status_code == 201
        token = created.json()["token"]
        assert token.startswith("orch_")
        listed = admin.get("/api/v1/tokens").json()
        assert all("token" not in t for t in listed)
        assert any(t["name"] == "shop" for t in listed)
        headers = {"Authorization": f"Bearer {token}"}
        me = httpx.get(api.url + "/api/v1/whoami", headers=headers).json()
        assert me["role"] == "operator" and "listings:write" in me["permissions"]
        assert admin.delete(f"/api/v1/tokens/{created.json()['id']}").status_code == 204
        assert httpx.get(api.url + "/api/v1/whoami", headers=headers).status_code == 401
        assert admin.delete(f"/api/v1/tokens/{created.json()['id']}").status_code == 404
        bad = admin.post("/api/v1/tokens", json={"name": "x", "role": "root"})
        assert bad.status_code == 422


def test_metrics_count_requests_by_route_template(api: Api) -> None:
    with api.client("viewer") as c:
        c.get(f"/api/v1/blocks/{BLOCK}")
        text = c.get("/metrics").text
    assert 'route="/api/v1/blocks/{block_id}"' in text
    assert "orchard_api_request_seconds_bucket" in text


# --- layout and readings --------------------------------------------------------------------


def test_farms_blocks_nodes(api: Api) -> None:
    with api.client("viewer") as c:
        farms = c.get("/api/v1/farms").json()
        assert farms[0]["id"] == FARM and BLOCK in farms[0]["blocks"]
        assert c.get(f"/api/v1/farms/{FARM}").status_code == 200
        assert c.get("/api/v1/farms/elsewhere").status_code == 404
        blocks = c.get("/api/v1/blocks").json()
        assert [b["id"] for b in blocks][:1] == [BLOCK]
        block = c.get(f"/api/v1/blocks/{BLOCK}").json()
        assert block["crop"] == "apple" and block["nodes"] == NODES
        assert c.get("/api/v1/blocks/nowhere").status_code == 404
        nodes = {n["node"]: n for n in c.get(f"/api/v1/blocks/{BLOCK}/nodes").json()}
        assert set(nodes) == {*NODES, "apple-east-ctl"}
        # n01 sent an offline status: the status wins over its recent readings.
        assert nodes[NODES[0]]["online"] is False and nodes[NODES[0]]["online_source"] == "status"
        assert nodes[NODES[0]]["firmware"] == "1.2.0"
        assert nodes[NODES[1]]["online"] is True and nodes[NODES[1]]["online_source"] == "recency"
        assert nodes[NODES[1]]["battery"] == 3.9 and nodes[NODES[1]]["rssi"] == -71
        assert nodes["apple-east-ctl"]["online"] is None
        one = c.get(f"/api/v1/nodes/{NODES[2]}").json()
        assert one["node"] == NODES[2] and one["rssi"] == -72
        assert c.get("/api/v1/nodes/ghost-node").status_code == 404


def test_latest_readings(api: Api) -> None:
    last = NOW - timedelta(minutes=5)
    with api.client("viewer") as c:
        rows = c.get(f"/api/v1/blocks/{BLOCK}/readings/latest").json()
        assert [r["node"] for r in rows] == NODES
        assert datetime.fromisoformat(rows[0]["time"]) == last
        assert rows[4]["soil_moisture"] == pytest.approx(0.24)
        one = c.get(f"/api/v1/nodes/{NODES[3]}/readings/latest").json()
        assert one["temperature"] == pytest.approx(15.0 + 3 + (HOURS * 60 - 5) / 60)
        assert c.get("/api/v1/nodes/apple-east-ctl/readings/latest").status_code == 404


def test_history_aggregates_by_window(api: Api) -> None:
    start = (NOW - timedelta(hours=HOURS)).isoformat()
    with api.client("viewer") as c:
        r = c.get(
            f"/api/v1/blocks/{BLOCK}/readings/history",
            params={
                "field": "soil_moisture",
                "start": start,
                "end": NOW.isoformat(),
                "window": "1h",
                "aggregate": "max",
            },
        )
        assert r.status_code == 200, r.text
        series = r.json()["series"]
        assert len(series) == 1 and series[0]["node"] is None
        values = [p["value"] for p in series[0]["points"]]
        assert values and all(v == pytest.approx(0.24) for v in values)
        per_node = c.get(
            f"/api/v1/blocks/{BLOCK}/readings/history",
            params={
                "field": "soil_moisture",
                "start": start,
                "window": "1h",
                "by_node": True,
                "aggregate": "min",
            },
        ).json()["series"]
        assert sorted(s["node"] for s in per_node) == NODES
        node = c.get(
            f"/api/v1/nodes/{NODES[0]}/readings/history",
            params={"field": "temperature", "start": start, "window": "30m"},
        ).json()
        first = node["series"][0]["points"][0]
        # mean of minutes 0..25 of the first half hour: 15 + mean(0,5,...,25)/60
        assert first["value"] == pytest.approx(15.0 + 12.5 / 60)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"window": "1s"},
            "invalid",
        ),  # below the pattern's minimum unit value is fine, but 1s < 10s
        (
            {"window": "1m", "start": "2026-01-01T00:00:00Z", "end": "2026-01-05T00:00:00Z"},
            "limit is 500",
        ),
        (
            {"start": "2025-01-01T00:00:00Z", "end": "2026-01-01T00:00:00Z", "window": "1d"},
            "longer than",
        ),
        ({"start": "2026-01-02T00:00:00Z", "end": "2026-01-01T00:00:00Z"}, "after start"),
        ({"window": "5 minutes"}, "pattern"),
        ({"field": "password"}, "field"),
        ({"aggregate": "sum"}, "aggregate"),
    ],
)
def test_history_limits_are_422_with_a_reason(
    api: Api, params: dict[str, str], message: str
) -> None:
    query = {"field": "temperature", **params}
    with api.client("viewer") as c:
        r = c.get(f"/api/v1/blocks/{BLOCK}/readings/history", params=query)
    assert r.status_code == 422, r.text
    text = str(r.json()["detail"])
    if message != "invalid":
        assert message in text, text


def test_csv_export(api: Api) -> None:
    start = (NOW - timedelta(hours=HOURS)).isoformat()
    with api.client("viewer") as c:
        r = c.get(f"/api/v1/blocks/{BLOCK}/export.csv", params={"start": start})
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(r.text)))
        assert len(rows) == len(NODES) * HOURS * 12
        assert {row["node"] for row in rows} == set(NODES)
        assert rows[0]["time"].endswith("Z") and rows[0]["maturity"] == ""
        node = c.get(f"/api/v1/nodes/{NODES[1]}/export.csv", params={"start": start}).text
        assert len(node.splitlines()) == 1 + HOURS * 12
        too_long = c.get(
            f"/api/v1/blocks/{BLOCK}/export.csv",
            params={"start": "2020-01-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"},
        )
        assert too_long.status_code == 422


HOSTILE_IDS = [
    "apple-east' OR '1'='1",
    'apple-east" OR 1=1',
    "apple-east\\",
    "x'; DROP DATABASE x; --",
    "apple-east/../..",
    "APPLE-EAST",
    "a" * 40,
    "apple east",
    "%27",
    "apple-east\nSELECT",
]


@pytest.mark.parametrize("hostile", HOSTILE_IDS)
def test_hostile_identifiers_never_reach_a_query(api: Api, hostile: str) -> None:
    paths = [
        "/api/v1/blocks/{}",
        "/api/v1/blocks/{}/nodes",
        "/api/v1/blocks/{}/readings/latest",
        "/api/v1/blocks/{}/readings/history?field=temperature",
        "/api/v1/blocks/{}/export.csv",
        "/api/v1/blocks/{}/thresholds",
        "/api/v1/blocks/{}/readiness",
        "/api/v1/nodes/{}",
        "/api/v1/nodes/{}/readings/latest",
        "/api/v1/nodes/{}/export.csv",
    ]
    with api.client("admin") as c:
        for path in paths:
            r = c.get(path.format(quote(hostile, safe="")))
            # Refused by validation (422) or not found (404) - never data, never a 500.
            assert r.status_code in (404, 422), (path, r.status_code, r.text)
        for path in ("/api/v1/blocks/{}/readiness/harvested", "/api/v1/blocks/{}/backtest"):
            r = c.post(path.format(quote(hostile, safe="")), json={"overrides": {}})
            assert r.status_code in (404, 422), (path, r.status_code, r.text)
        for param in ("block", "type", "subject"):
            r = c.get("/api/v1/alarms", params={param: hostile})
            # A well-formed but unknown value finds nothing; anything else is refused.
            assert r.status_code == 422 or r.json() == [], r.text
        r = c.get("/api/v1/listings", params={"block": hostile})
        assert r.status_code == 422
        for path, param in (
            ("/api/v1/irrigation/commands", "block"),
            ("/api/v1/webhooks/deliveries", "event_type"),
            (f"/api/v1/blocks/{BLOCK}/thresholds/audit", "key"),
        ):
            r = c.get(path, params={param: hostile})
            assert r.status_code == 422 or r.json() == [], (path, r.text)
    # The database still holds all the data a hostile query might have dropped.
    assert (
        api.influx.query_one('SELECT count("seq") FROM "telemetry"')[0].values[0][1]
        == len(NODES) * HOURS * 12
    )


def test_query_builder_escapes_even_if_validation_were_bypassed() -> None:
    from api.queries import Scope, latest_query
    from orchard.ids import InvalidIdentifierError

    with pytest.raises(InvalidIdentifierError):
        latest_query(Scope(FARM, "x' OR '1'='1"))
    q = latest_query(Scope(FARM, BLOCK, NODES[0]))
    assert f"\"node\" = '{NODES[0]}'" in q


# --- thresholds ------------------------------------------------------------------------------


def test_thresholds_get_patch_audit(api: Api) -> None:
    with api.client("agronomist") as c:
        eff = c.get(f"/api/v1/blocks/{BLOCK}/thresholds").json()
        trigger = eff["values"]["soil_trigger"]
        assert trigger["source"] != "override" and trigger["allowed_min"] == 0.02
        new = round(trigger["value"] + 0.01, 3)
        r = c.patch(
            f"/api/v1/blocks/{BLOCK}/thresholds",
            json={"values": {"soil_trigger": new}, "reason": "test: drier start"},
        )
        assert r.status_code == 200, r.text
        assert r.json()["values"]["soil_trigger"] == {
            **r.json()["values"]["soil_trigger"],
            "value": new,
            "source": "override",
        }
        audit = c.get(f"/api/v1/blocks/{BLOCK}/thresholds/audit").json()
        assert audit[0]["key"] == "soil_trigger" and audit[0]["new_value"] == new
        assert audit[0]["actor"] == "test-agronomist" and audit[0]["reason"] == "test: drier start"
        assert audit[0]["effective_before"] == trigger["value"]
        assert c.get("/api/v1/thresholds/audit").json()[0]["id"] == audit[0]["id"]
        # Back to the default: null removes the override.
        back = c.patch(
            f"/api/v1/blocks/{BLOCK}/thresholds", json={"values": {"soil_trigger": None}}
        )
        assert back.json()["values"]["soil_trigger"]["source"] == trigger["source"]


@pytest.mark.parametrize(
    ("values", "expect"),
    [
        ({"soil_trigger": 0.9}, "0.02–0.6"),
        ({"no_such_threshold": 1}, "unknown threshold"),
        ({"soil_trigger": 0.5, "soil_refill": 0.3}, "soil_refill"),
    ],
)
def test_threshold_refusals_say_what_and_the_range(
    api: Api, values: dict[str, float], expect: str
) -> None:
    with api.client("agronomist") as c:
        before = c.get(f"/api/v1/blocks/{BLOCK}/thresholds/audit").json()
        r = c.patch(f"/api/v1/blocks/{BLOCK}/thresholds", json={"values": values})
        assert r.status_code == 422
        assert expect in r.json()["detail"], r.json()
        assert r.json()["problems"]
        assert c.get(f"/api/v1/blocks/{BLOCK}/thresholds/audit").json() == before
        assert (
            c.patch(
                f"/api/v1/blocks/{BLOCK}/thresholds", json={"values": {"soil_trigger": "nan"}}
            ).status_code
            == 422
        )


# --- alarms ----------------------------------------------------------------------------------


def test_alarms_filter_ack_clear_with_history(api: Api) -> None:
    alarms = Alarms(api.engine)  # type: ignore[arg-type]
    dry = alarms.raise_alarm(
        type="soil_dry",
        subject=BLOCK,
        farm=FARM,
        block=BLOCK,
        severity="major",
        message="soil below 0.15",
        value=0.14,
    ).alarm
    alarms.raise_alarm(
        type="node_offline",
        subject="cherry-north-n01",
        farm=FARM,
        block="cherry-north",
        severity="warning",
        message="silent 40 min",
    )
    with api.client("agronomist") as c:
        listed = c.get("/api/v1/alarms", params={"block": BLOCK, "state": "active"}).json()
        assert [a["id"] for a in listed] == [dry.id]
        assert (
            c.get("/api/v1/alarms", params={"type": "node_offline"}).json()[0]["block"]
            == "cherry-north"
        )
        assert (
            c.get(
                "/api/v1/alarms", params={"min_severity": "major", "block": "cherry-north"}
            ).json()
            == []
        )
        assert c.get("/api/v1/alarms", params={"severity": "loud"}).status_code == 422
        acked = c.post(f"/api/v1/alarms/{dry.id}/ack", json={"note": "looking"}).json()
        assert acked["alarm"]["state"] == "active_ack"
        assert acked["alarm"]["acknowledged_by"] == "test-agronomist"
        cleared = c.post(f"/api/v1/alarms/{dry.id}/clear", json={"reason": "irrigated"}).json()
        assert cleared["alarm"]["state"] == "cleared_ack"
        assert [e["event"] for e in cleared["history"]] == ["raised", "acknowledged", "cleared"]
        assert c.get(f"/api/v1/alarms/{dry.id}").json()["history"][-1]["message"] == "irrigated"
        assert c.post("/api/v1/alarms/999999/ack").status_code == 404
        assert c.get("/api/v1/alarms/0").status_code == 422
    with api.client("viewer") as v:
        assert v.post(f"/api/v1/alarms/{dry.id}/ack").status_code == 403


# --- listings --------------------------------------------------------------------------------


def _lot(engine: object, name: str) -> None:
    upsert_lot(
        engine,  # type: ignore[arg-type]
        LotDraft(
            lot=name,
            farm=FARM,
            block=BLOCK,
            season=date(2026, 4, 12),
            window_no=1,
            crop="apple",
            variety="gala",
            quantity_kg=24000.0,
            grade="A",
            in_band_share=0.9,
            window_start=date(2026, 9, 10),
            window_end=date(2026, 9, 24),
            title="Gala",
            description="East slope Gala",
            evidence={"ready_share": 0.85},
        ),
    )


def test_listings_lifecycle_and_quantity(api: Api) -> None:
    name = "apple-east-2026-w1"
    _lot(api.engine, name)
    with api.client("operator") as c:
        assert [x["lot"] for x in c.get("/api/v1/listings", params={"block": BLOCK}).json()] == [
            name
        ]
        assert c.get(f"/api/v1/listings/{name}").json()["listing"]["state"] == "draft"
        assert (
            c.post(f"/api/v1/listings/{name}/state", json={"state": "sold_out"}).status_code == 409
        )
        pub = c.post(f"/api/v1/listings/{name}/state", json={"state": "published"})
        assert pub.status_code == 200 and pub.json()["listing"]["state"] == "published"
        q = c.patch(f"/api/v1/listings/{name}/quantity", json={"quantity_kg": 21500})
        assert q.json()["listing"]["quantity_kg"] == 21500
        assert q.json()["listing"]["quantity_source"] == "grower"
        assert (
            c.patch(f"/api/v1/listings/{name}/quantity", json={"quantity_kg": -1}).status_code
            == 422
        )
        sold = c.post(f"/api/v1/listings/{name}/state", json={"state": "sold_out"}).json()
        assert [h["event"] for h in sold["history"]] == [
            "created",
            "published",
            "updated",
            "sold_out",
        ]
        assert (
            c.patch(f"/api/v1/listings/{name}/quantity", json={"quantity_kg": 1}).status_code == 409
        )
        assert c.get("/api/v1/listings/nothing-here").status_code == 404
        assert isinstance(c.get("/api/v1/webhooks/deliveries").json(), list)
    with api.client("agronomist") as a:
        assert (
            a.post(f"/api/v1/listings/{name}/state", json={"state": "withdrawn"}).status_code == 403
        )


def test_grower_marks_a_block_harvested_once_and_its_alarm_clears(api: Api) -> None:
    block = "mango-west"  # no other test here touches its readiness or alarms
    alarm = (
        Alarms(api.engine)  # type: ignore[arg-type]
        .raise_alarm(
            type="harvest_readiness",
            subject=block,
            farm=FARM,
            block=block,
            severity="major",
            message="mango-west is ready",
        )
        .alarm
    )
    path = f"/api/v1/blocks/{block}/readiness"
    with api.client("viewer") as v:
        assert v.get(path).json() is None  # never evaluated
        refused = v.post(path + "/harvested")
        assert refused.status_code == 403 and "harvest:write" in refused.json()["detail"]
    with api.client("operator") as o:
        assert o.post(path + "/harvested").status_code == 403
    with api.client("grower") as g:
        assert g.post("/api/v1/blocks/no-such-block/readiness/harvested").status_code == 404
        first = g.post(path + "/harvested")
        assert first.status_code == 200, first.text
        marked = first.json()
        assert marked["state"] == "harvested" and marked["harvested_by"] == "test-grower"
        assert g.get(path).json() == marked
        cleared = g.get(f"/api/v1/alarms/{alarm.id}").json()
        assert cleared["alarm"]["state"].startswith("cleared")
        assert "harvested" in cleared["history"][-1]["message"]
    with api.client("agronomist") as a:
        # Repeating it (the agronomist on the grower's behalf) changes nothing.
        again = a.post(path + "/harvested")
        assert again.status_code == 200 and again.json() == marked
        assert len(a.get(f"/api/v1/alarms/{alarm.id}").json()["history"]) == len(cleared["history"])
        everything = a.get("/api/v1/readiness").json()
        assert [r["state"] for r in everything if r["block"] == block] == ["harvested"]


def test_backtest_says_which_step_it_replayed(api: Api) -> None:
    path = f"/api/v1/blocks/{BLOCK}/backtest"
    short = {"overrides": {"soil_trigger": 0.19}, "end": NOW.isoformat()}
    with api.client("agronomist") as c:
        r = c.post(path, json={**short, "start": (NOW - timedelta(hours=HOURS)).isoformat()})
        assert r.status_code == 200, r.text
        raw = r.json()
        assert raw["step_s"] == raw["loop_step_s"] == 60
        assert raw["step_note"].startswith("raw readings") and raw["readings"] > 0
        long = {**short, "start": (NOW - timedelta(days=10)).isoformat()}
        r = c.post(path, json=long)
        assert r.status_code == 200, r.text
        assert r.json()["step_s"] == 300 and "5-minute means" in r.json()["step_note"]
        assert "raw readings" in r.json()["step_note"]
        r = c.post(path, json={**long, "raw": True})
        assert r.status_code == 200 and r.json()["step_s"] == 60
        assert (
            r.json()["step_note"].startswith("raw readings") and "as asked" in r.json()["step_note"]
        )
        r = c.post(path, json={**long, "step_s": 600})
        assert r.status_code == 200 and r.json()["step_s"] == 600
        assert "600 s means, as asked" in r.json()["step_note"]
        both = c.post(path, json={**long, "raw": True, "step_s": 300})
        assert both.status_code == 422 and "not both" in both.json()["detail"]
        too_long = c.post(path, json={**short, "start": (NOW - timedelta(days=200)).isoformat()})
        assert too_long.status_code == 422 and "at most" in too_long.json()["detail"]
        assert c.post(path, json={**long, "step_s": 5}).status_code == 422
        refused = c.post(path, json={**long, "overrides": {"soil_trigger": 0.9}})
        assert refused.status_code == 422 and refused.json()["problems"][0]["key"] == "soil_trigger"
        assert c.post("/api/v1/blocks/nowhere/backtest", json=long).status_code == 404


def test_overview_counts_open_alarms(api: Api) -> None:
    with api.client("viewer") as c:
        rows = {r["block"]: r for r in c.get("/api/v1/overview").json()}
    assert set(rows) == {"apple-east", "cherry-north", "orange-south", "mango-west"}
    active = Alarms(api.engine).active(block="cherry-north")  # type: ignore[arg-type]
    assert rows["cherry-north"]["open_alarms"] == len(active)


# --- irrigation ------------------------------------------------------------------------------


def test_irrigation_decisions_and_commands(api: Api) -> None:
    from control.store import irrigation_decision, valve_command

    t = NOW - timedelta(hours=1)
    with api.engine.begin() as conn:  # type: ignore[attr-defined]
        decision_id = conn.execute(
            irrigation_decision.insert().values(
                farm=FARM,
                block=BLOCK,
                ts=t,
                action="irrigate",
                code="below_trigger",
                reason="soil 0.20 below trigger 0.21 for 60 min",
                inputs={"soil": 0.2},
                depth_mm=12.0,
                duration_s=3600,
                water_m3=180.0,
                command_ids=["cmd-00000001"],
            )
        ).inserted_primary_key[0]
        conn.execute(
            irrigation_decision.insert().values(
                farm=FARM,
                block=BLOCK,
                ts=t - timedelta(hours=1),
                action="skip",
                code="skip_rain",
                reason="rain wetted the root zone",
                inputs={},
            )
        )
        conn.execute(
            valve_command.insert().values(
                command_id="cmd-00000001",
                farm=FARM,
                block=BLOCK,
                node="apple-east-ctl",
                valve="apple-east-v1",
                action="open",
                duration_s=3600,
                depth_mm=12.0,
                state="acknowledged",
                attempts=1,
                max_attempts=3,
                issued_at=t,
                expires_at=t + timedelta(hours=1),
                reason="below trigger",
                decision_id=decision_id,
                created_by="control",
                created_at=t,
                updated_at=t,
            )
        )
    with api.client("viewer") as c:
        decisions = c.get(f"/api/v1/blocks/{BLOCK}/irrigation/decisions").json()
        assert [d["action"] for d in decisions] == ["irrigate", "skip"]
        assert decisions[0]["command_ids"] == ["cmd-00000001"]
        only = c.get(
            f"/api/v1/blocks/{BLOCK}/irrigation/decisions", params={"action": "skip"}
        ).json()
        assert [d["code"] for d in only] == ["skip_rain"]
        assert c.get("/api/v1/blocks/cherry-north/irrigation/decisions").json() == []
        commands = c.get("/api/v1/irrigation/commands", params={"block": BLOCK}).json()
        assert commands[0]["state"] == "acknowledged" and commands[0]["decision_id"] == decision_id
        assert c.get("/api/v1/irrigation/commands", params={"state": "failed"}).json() == []
        assert c.get("/api/v1/irrigation/commands", params={"state": "exploded"}).status_code == 422
        one = c.get("/api/v1/irrigation/commands/cmd-00000001").json()
        assert one["valve"] == "apple-east-v1"
        assert c.get("/api/v1/irrigation/commands/cmd-99999999").status_code == 404
        assert c.get("/api/v1/irrigation/commands/x'%20OR%201").status_code == 422


def test_manual_irrigation_is_capped_and_goes_through_the_command_lifecycle(api: Api) -> None:
    path = f"/api/v1/blocks/{BLOCK}/irrigation/manual"
    with api.client("agronomist") as c:
        cap = c.get(f"/api/v1/blocks/{BLOCK}/thresholds").json()["values"]["max_run_min"]["value"]
        too_long = c.post(path, json={"valve": "apple-east-v1", "duration_min": cap + 1})
        assert too_long.status_code == 422
        assert f"max_run_min of {cap:g}" in too_long.json()["detail"]
        wrong_valve = c.post(path, json={"valve": "cherry-north-v1", "duration_min": 5})
        assert wrong_valve.status_code == 422 and "apple-east-v1" in wrong_valve.json()["detail"]
        assert c.post(path, json={"valve": "apple-east-v1", "duration_min": 0}).status_code == 422
        r = c.post(path, json={"valve": "apple-east-v1", "duration_min": 12.5, "reason": "flush"})
        assert r.status_code == 201, r.text
        cmd = r.json()
        assert cmd["state"] == "queued" and cmd["duration_s"] == 750
        assert cmd["node"] == "apple-east-ctl" and cmd["created_by"] == "test-agronomist"
        assert cmd["reason"] == "manual by test-agronomist: flush"
        issued = datetime.fromisoformat(cmd["issued_at"])
        assert abs((issued - datetime.now(UTC)).total_seconds()) < 60  # wall clock outside demos
        listed = c.get("/api/v1/irrigation/commands", params={"state": "open"}).json()
        assert cmd["command_id"] in [x["command_id"] for x in listed]
        cancel = c.post(f"/api/v1/irrigation/commands/{cmd['command_id']}/cancel")
        assert cancel.status_code == 200 and cancel.json()["state"] == "cancelled"
        again = c.post(f"/api/v1/irrigation/commands/{cmd['command_id']}/cancel")
        assert again.status_code == 409
    with api.client("operator") as o:
        assert o.post(path, json={"valve": "apple-east-v1", "duration_min": 5}).status_code == 403


def test_role_matrix_covers_every_permission() -> None:
    assert set(PROBES) == set(Permission)


def test_influxdb_down_is_a_clear_503_and_not_ready(api: Api) -> None:
    from orchard.stack import free_port

    down = api.settings.influx.model_copy(update={"url": f"http://127.0.0.1:{free_port()}"})
    with running_api(api.settings.model_copy(update={"influx": down})) as url:
        headers = {"Authorization": f"Bearer {api.tokens['viewer']}"}
        for path in (
            f"/api/v1/blocks/{BLOCK}/readings/latest",
            f"/api/v1/blocks/{BLOCK}/nodes",
            f"/api/v1/blocks/{BLOCK}/readings/history?field=temperature",
        ):
            r = httpx.get(url + path, headers=headers, timeout=30)
            assert r.status_code == 503, (path, r.text)
            assert r.json()["detail"] == "InfluxDB is unavailable, retry later"
        # What does not need InfluxDB still answers.
        assert httpx.get(url + f"/api/v1/blocks/{BLOCK}", headers=headers).status_code == 200
        ready = httpx.get(url + "/health/ready", timeout=30)
        assert ready.status_code == 503 and ready.json()["checks"]["broker"] == "ok"


def test_no_endpoint_is_open_but_health_and_the_openapi_document(api: Api) -> None:
    with api.client(None) as c:
        doc = c.get("/openapi.json").json()
        open_paths = set()
        for path, item in doc["paths"].items():
            for method in item:
                concrete = path.replace("{", "").replace("}", "")  # any value: auth comes first
                r = c.request(method.upper(), concrete.replace("_id", "-1x"), json={})
                if r.status_code != 401:
                    open_paths.add(path)
        assert open_paths == {"/health", "/health/ready"}
        assert c.get("/docs").status_code == 404
