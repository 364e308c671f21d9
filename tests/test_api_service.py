"""``python -m api`` as `make up` starts it: environment settings, demo admin token, SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from orchard.settings import CONFIG_DIR, PROJECT_ROOT
from orchard.stack import free_port
from tests.conftest import LiveStack


def test_service_starts_from_env_and_stops_on_sigterm(stack: LiveStack, tmp_path: Path) -> None:
    port = free_port()
    mqtt = stack.mqtt("orchard-api")
    env = {
        **os.environ,
        "PYTHONPATH": str(PROJECT_ROOT),
        "ORCHARD_DEMO": "true",
        "ORCHARD_API_PORT": str(port),
        "ORCHARD_MQTT__HOST": "127.0.0.1",
        "ORCHARD_MQTT__PORT": str(mqtt.port),
        "ORCHARD_MQTT__USERNAME": "orchard-api",
        "ORCHARD_MQTT__PASSWORD": stack.service_passwords["orchard-api"],
        "ORCHARD_INFLUX__URL": stack.influxd.url,
        "ORCHARD_INFLUX__DATABASE": "orchard_service_test",
        "ORCHARD_ORCHARD_FILE": str(CONFIG_DIR / "orchard.toml"),
        "ORCHARD_STATE_URL": f"sqlite:///{tmp_path / 'state' / 'state.db'}",
        "ORCHARD_ADMIN_TOKEN": "orch_from-secrets-json",
        "ORCHARD_BROKER_PASSWD_FILE": str(tmp_path / "passwd"),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "api"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.communicate()[0].decode()
            assert time.monotonic() < deadline, "API did not start"
            time.sleep(0.1)
        me = httpx.get(
            url + "/api/v1/whoami", headers={"Authorization": "Bearer orch_from-secrets-json"}
        )
        assert me.status_code == 200 and me.json() == {
            **me.json(),
            "name": "demo-admin",
            "role": "admin",
        }
        assert httpx.get(url + "/api/v1/whoami").status_code == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=20)[0].decode()
    assert proc.returncode == 0, output
    assert "created the demo admin token" in output


def test_api_on_postgresql(stack: LiveStack, postgres_url: str, tmp_path: Path) -> None:
    """The compose state store: tokens, thresholds and their audit on a real PostgreSQL."""
    from api.auth import Role, create_token, revoke_token
    from api.settings import ApiSettings
    from api.testing import running_api
    from orchard.db import create_engine, init_db
    from orchard.settings import InfluxSettings

    engine = create_engine(postgres_url)
    init_db(engine)
    token_id, token = create_token(engine, "pg-agronomist", Role.agronomist)
    settings = ApiSettings(
        influx=InfluxSettings(url=stack.influxd.url, database="unused"),
        mqtt=stack.mqtt("orchard-api"),
        state_url=postgres_url,
        orchard_file=CONFIG_DIR / "orchard.toml",
        broker_passwd_file=tmp_path / "passwd",
    )
    with running_api(settings) as url:
        headers = {"Authorization": f"Bearer {token}"}
        assert httpx.get(url + "/api/v1/whoami", headers=headers).json()["role"] == "agronomist"
        r = httpx.patch(
            url + "/api/v1/blocks/apple-east/thresholds",
            headers=headers,
            json={"values": {"soil_trigger": 0.23}, "reason": "pg"},
        )
        assert r.status_code == 200, r.text
        audit = httpx.get(url + "/api/v1/blocks/apple-east/thresholds/audit", headers=headers)
        assert audit.json()[0]["new_value"] == 0.23 and audit.json()[0]["ts"].endswith("Z")
        assert revoke_token(engine, token_id)
        assert httpx.get(url + "/api/v1/whoami", headers=headers).status_code == 401
    engine.dispose()
