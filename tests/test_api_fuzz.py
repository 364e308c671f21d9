"""Schema-driven fuzz of the whole API: requests built from its own OpenAPI document,
valid and hostile, against the real server. No answer may be an undeclared 5xx."""

from __future__ import annotations

import random
import string
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from api.auth import Role, create_token
from api.settings import ApiSettings
from api.testing import running_api
from orchard.db import create_engine, init_db
from orchard.influx import SyncInfluxClient, quote_ident
from orchard.settings import CONFIG_DIR, InfluxSettings
from tests.conftest import LiveStack

SEED = 20261123
ROUNDS = 12
HOSTILE = [
    "",
    " ",
    "'",
    '"',
    "\\",
    "' OR '1'='1",
    '" OR 1=1 --',
    "x'; DROP DATABASE orchard; --",
    "../../etc/passwd",
    "%00",
    "\u0000",
    "a" * 300,
    "apple-east\nSELECT 1",
    "/^.*$/",
    "*",
    "😀",
    "-1",
    "1e309",
    "NaN",
    "null",
    "true",
    "[]",
    "{}",
    "apple-east",
    "sunny-hill",
    "apple-east-n01",
    "2026-01-01T00:00:00Z",
    "9999-12-31T23:59:59Z",
    "0001-01-01T00:00:00",
]


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = doc["components"]["schemas"][name]
    return schema


def value_for(
    doc: dict[str, Any], schema: dict[str, Any], rng: random.Random, depth: int = 0
) -> Any:
    """A value that usually fits ``schema`` and sometimes deliberately does not."""
    schema = _resolve(doc, schema)
    if rng.random() < 0.2:
        return rng.choice([*HOSTILE, -1, 0, 2**63, 1.5, None, True, [], {}])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return value_for(doc, rng.choice(schema[key]), rng, depth)
    if "enum" in schema:
        return rng.choice(schema["enum"])
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type")
    if kind == "integer":
        lo, hi = schema.get("minimum", -5), schema.get("maximum", 10**6)
        return rng.choice([lo, hi, rng.randint(int(lo), int(min(hi, lo + 1000)))])
    if kind == "number":
        lo, hi = schema.get("minimum", -100.0), schema.get("maximum", 1000.0)
        return rng.choice([lo, hi, rng.uniform(lo, hi)])
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "string":
        if schema.get("format") == "date-time":
            return rng.choice(["2026-06-01T00:00:00Z", "2026-11-01T12:00:00+08:00", "yesterday"])
        if schema.get("format") == "date":
            return rng.choice(["2026-06-01", "2026-02-30"])
        if "examples" in schema:
            return rng.choice(schema["examples"])
        return rng.choice(
            ["apple-east", "soil_trigger", "".join(rng.choices(string.ascii_lowercase, k=8))]
        )
    if kind == "array":
        return [
            value_for(doc, schema.get("items", {}), rng, depth + 1)
            for _ in range(rng.randint(0, 2))
        ]
    if kind == "object" or "properties" in schema or "additionalProperties" in schema:
        if depth > 3:
            return {}
        out: dict[str, Any] = {}
        for name, sub in schema.get("properties", {}).items():
            if name in schema.get("required", []) or rng.random() < 0.6:
                out[name] = value_for(doc, sub, rng, depth + 1)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for _ in range(rng.randint(0, 3)):
                out[rng.choice(["soil_trigger", "soil_refill", "max_run_min", "bogus", "'"])] = (
                    value_for(doc, extra, rng, depth + 1)
                )
        if rng.random() < 0.1:
            out["unexpected"] = 1
        return out
    return rng.choice(HOSTILE)


@pytest.fixture(scope="module")
def server(stack: LiveStack) -> Iterator[tuple[str, str]]:
    database = f"fuzz_{uuid.uuid4().hex[:10]}"
    influx_settings = InfluxSettings(url=stack.influxd.url, database=database)
    tmp = Path(tempfile.mkdtemp(prefix="orchard-fuzz-"))
    settings = ApiSettings(
        demo=True,
        influx=influx_settings,
        mqtt=stack.mqtt("orchard-api"),
        state_url=f"sqlite:///{tmp / 'state.db'}",
        orchard_file=CONFIG_DIR / "orchard.toml",
        broker_passwd_file=tmp / "passwd",
        broker_conf=tmp / "no-broker.conf",
    )
    engine = create_engine(settings.state_url)
    init_db(engine)
    _, token = create_token(engine, "fuzzer", Role.admin)
    with SyncInfluxClient(influx_settings) as influx:
        influx.create_database()
        with running_api(settings) as url:
            yield url, token
        influx.query(f"DROP DATABASE {quote_ident(database)}", database=False)
    engine.dispose()


def test_fuzz_every_operation_finds_no_server_error(server: tuple[str, str]) -> None:
    url, token = server
    rng = random.Random(SEED)
    client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
    doc = client.get("/openapi.json").json()
    failures: list[str] = []
    operations = 0
    answered: set[str] = set()  # operations that accepted at least one generated request
    for path, item in doc["paths"].items():
        for method, op in item.items():
            operations += 1
            declared = {int(code) for code in op.get("responses", {}) if code.isdigit()}
            for _ in range(ROUNDS):
                concrete = path
                params: dict[str, Any] = {}
                for p in op.get("parameters", []):
                    value = value_for(doc, p.get("schema", {}), rng)
                    if p["in"] == "path":
                        if path == "/api/v1/tokens/{token_id}":
                            value = rng.randint(1000, 10**6)  # never revoke the fuzzer itself
                        text = "x" if value in (None, "") else str(value)
                        concrete = concrete.replace("{" + p["name"] + "}", quote(text, safe=""))
                    elif (
                        p["in"] == "query"
                        and (p.get("required") or rng.random() < 0.7)
                        and isinstance(value, (str, int, float, bool))
                    ):
                        params[p["name"]] = value
                kwargs: dict[str, Any] = {"params": params}
                body = op.get("requestBody", {}).get("content", {}).get("application/json")
                if body is not None and rng.random() < 0.95:
                    kwargs["json"] = value_for(doc, body["schema"], rng)
                try:
                    response = client.request(method.upper(), concrete, **kwargs)
                except httpx.InvalidURL:
                    continue
                if response.status_code < 300:
                    answered.add(f"{method} {path}")
                if response.status_code >= 500 and response.status_code not in declared:
                    failures.append(
                        f"{method.upper()} {concrete} {kwargs} -> {response.status_code} "
                        f"{response.text[:200]}"
                    )
                if (
                    "json" in response.headers.get("content-type", "")
                    and response.status_code >= 400
                ):
                    assert "detail" in response.json(), response.text
    client.close()
    assert operations >= 30
    # The generator must reach the endpoints' logic, not only their validation.
    assert len(answered) >= operations * 0.6, sorted(answered)
    assert not failures, "\n".join(failures[:20])
