"""Device provisioning through the API against a real Mosquitto, and the token CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from api.auth import Role, authenticate, create_token
from api.settings import ApiSettings
from api.testing import running_api
from orchard.db import create_engine, init_db
from orchard.settings import CONFIG_DIR, PROJECT_ROOT
from tests.conftest import LiveStack

BLOCK = "apple-east"
DERIVED = "apple-east-n01"  # in the orchard file: its password derives from the device secret


def can_connect(broker: LiveStack, user: str, password: str) -> bool:
    result = subprocess.run(
        [
            "mosquitto_pub",
            "-p",
            str(broker.broker.port),
            "-u",
            user,
            "-P",
            password,
            "-i",
            f"probe-{user}",
            "-t",
            f"orchard/sunny-hill/{BLOCK}/{user}/status",
            "-m",
            "{}",
        ],
        capture_output=True,
        text=True,
        timeout=10,
    )
    return result.returncode == 0


class Subscriber:
    """A live device session (mosquitto_sub) whose output says whether it was dropped."""

    def __init__(self, broker: LiveStack, user: str, password: str) -> None:
        topic = f"orchard/sunny-hill/{BLOCK}/{user}/command"
        self.proc = subprocess.Popen(
            [
                "mosquitto_sub",
                "-p",
                str(broker.broker.port),
                "-u",
                user,
                "-P",
                password,
                "-i",
                user,
                "-t",
                topic,
                "-v",
                "-d",
                "-q",
                "1",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def output(self) -> str:
        self.proc.terminate()
        return self.proc.communicate(timeout=10)[0]


def wait_for(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return check()


@pytest.fixture
def broker(private_broker: Callable[[], LiveStack]) -> LiveStack:
    live = private_broker()
    live.add_devices([DERIVED, "apple-east-n02"])
    return live


@pytest.fixture
def settings(broker: LiveStack) -> Iterator[ApiSettings]:
    tmp = Path(tempfile.mkdtemp(prefix="orchard-api-dev-"))
    yield ApiSettings(
        demo=True,
        mqtt=broker.mqtt("orchard-api"),
        influx={"url": broker.influxd.url, "database": "unused"},  # type: ignore[arg-type]
        state_url=f"sqlite:///{tmp / 'state.db'}",
        orchard_file=CONFIG_DIR / "orchard.toml",
        broker_passwd_file=broker.broker.passwd_path,
        # No pid given: the API finds the broker by its config file, as under `make up`.
        broker_conf=broker.broker.conf_path,
        admin_token="orch_admin-for-device-tests",  # type: ignore[arg-type]
    )


def admin(url: str) -> httpx.Client:
    return httpx.Client(
        base_url=url, headers={"Authorization": "Bearer orch_admin-for-device-tests"}, timeout=30
    )


def test_register_revoke_and_restart(broker: LiveStack, settings: ApiSettings) -> None:
    derived_password = broker.accounts()[DERIVED]
    other = broker.accounts()["apple-east-n02"]
    with running_api(settings) as url, admin(url) as c:
        r = c.post("/api/v1/devices", json={"node": "apple-east-n06", "block": BLOCK})
        assert r.status_code == 201, r.text
        creds = r.json()
        assert creds["username"] == "apple-east-n06" and len(creds["password"]) >= 24
        assert (
            creds["topics"]["telemetry"] == "orchard/sunny-hill/apple-east/apple-east-n06/telemetry"
        )
        assert creds["broker_port"] == broker.broker.port
        # The password is stored only as Mosquitto's hash.
        assert creds["password"] not in broker.broker.passwd_path.read_text()
        assert wait_for(lambda: can_connect(broker, "apple-east-n06", creds["password"]))
        assert not can_connect(broker, "apple-east-n06", "guess")
        assert (
            c.post("/api/v1/devices", json={"node": "apple-east-n06", "block": BLOCK}).status_code
            == 409
        )
        assert (
            c.post("/api/v1/devices", json={"node": "orchard-ingest", "block": BLOCK}).status_code
            == 409
        )
        assert (
            c.post("/api/v1/devices", json={"node": "cherry-north-n01", "block": BLOCK}).status_code
            == 409
        )
        assert c.post("/api/v1/devices", json={"node": "x", "block": "nowhere"}).status_code == 404
        assert c.post("/api/v1/devices", json={"node": "Bad Id", "block": BLOCK}).status_code == 422
        nodes = c.get(f"/api/v1/blocks/{BLOCK}").json()["nodes"]
        assert "apple-east-n06" in nodes

        # Revoking a live device drops its session; another device's session survives the reload.
        victim = Subscriber(broker, DERIVED, derived_password)
        bystander = Subscriber(broker, "apple-east-n02", other)
        time.sleep(0.7)
        r = c.delete(f"/api/v1/devices/{DERIVED}")
        assert r.status_code == 200 and r.json()["state"] == "revoked"
        assert c.delete(f"/api/v1/devices/{DERIVED}").status_code == 409
        assert c.delete("/api/v1/devices/ghost").status_code == 404
        assert wait_for(lambda: not can_connect(broker, DERIVED, derived_password))
        time.sleep(1.0)
        subprocess.run(
            [
                "mosquitto_pub",
                "-p",
                str(broker.broker.port),
                "-u",
                "orchard-control",
                "-P",
                broker.service_passwords["orchard-control"],
                "-q",
                "1",
                "-t",
                f"orchard/sunny-hill/{BLOCK}/apple-east-n02/command",
                "-m",
                "after-reload",
            ],
            check=True,
            timeout=10,
        )
        time.sleep(0.5)
        victim_out, bystander_out = victim.output(), bystander.output()
        assert "CONNACK (5)" in victim_out or "not authorised" in victim_out, victim_out
        assert "after-reload" in bystander_out, bystander_out
        assert bystander_out.count("received CONNACK (0)") == 1, bystander_out
        devices = {d["node"]: d for d in c.get("/api/v1/devices").json()}
        assert devices[DERIVED]["revoked_by"] == "demo-admin"
        assert devices["apple-east-n06"]["state"] == "active"
        password = creds["password"]

    # A restart of the stack rewrites the password file from the orchard file alone...
    broker.broker.set_accounts(broker.accounts())
    assert wait_for(lambda: can_connect(broker, DERIVED, derived_password))
    assert not can_connect(broker, "apple-east-n06", password)
    # ...and the API re-applies its stored accounts at start-up.
    with running_api(settings):
        assert wait_for(lambda: can_connect(broker, "apple-east-n06", password))
        assert wait_for(lambda: not can_connect(broker, DERIVED, derived_password))
        assert can_connect(broker, "apple-east-n02", other)


def test_broker_not_found_is_a_clear_503(broker: LiveStack, settings: ApiSettings) -> None:
    lost = settings.model_copy(update={"broker_conf": Path("/nonexistent/mosquitto.conf")})
    with running_api(lost) as url, admin(url) as c:
        r = c.post("/api/v1/devices", json={"node": "apple-east-n07", "block": BLOCK})
        assert r.status_code == 503
        assert "ORCHARD_BROKER_PID" in r.json()["detail"]
        # Stored all the same: the next reload (or start-up) applies it.
        assert c.get("/api/v1/devices").json()[0]["node"] == "apple-east-n07"
    assert "apple-east-n07:" in broker.broker.passwd_path.read_text()


def test_token_cli_creates_a_working_admin_token(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    env = {**os.environ, "ORCHARD_STATE_URL": url, "PYTHONPATH": str(PROJECT_ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "orchard", "token", "create", "--role", "admin", "--name", "first"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert token.startswith("orch_") and "shown only now" in result.stderr
    engine = create_engine(url)
    init_db(engine)
    principal = authenticate(engine, token)
    assert principal is not None and principal.role is Role.admin and principal.name == "first"
    create_token(engine, "second", Role.viewer)
    listed = subprocess.run(
        [sys.executable, "-m", "orchard", "token", "list"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    ).stdout
    assert "first" in listed and "second" in listed and token not in listed
    bad = subprocess.run(
        [sys.executable, "-m", "orchard", "token", "create", "--role", "root", "--name", "x"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert bad.returncode != 0 and "invalid choice" in bad.stderr
    engine.dispose()
