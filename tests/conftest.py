"""Test fixtures: a real Mosquitto and a real influxd on free loopback ports.

Both are started once per test session with throw-away data directories and stopped
after. Tests that need to restart or kill the broker take ``private_broker`` instead,
so they never disturb the shared one.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from orchard.broker import SERVICE_USERS, device_password
from orchard.influx import SyncInfluxClient, quote_ident
from orchard.settings import InfluxSettings, MqttSettings
from orchard.stack import Influxd, Mosquitto, Postgres, free_port

TEST_DEVICE_SECRET = "test-device-secret"


@dataclass
class LiveStack:
    broker: Mosquitto
    influxd: Influxd
    service_passwords: dict[str, str]
    device_secret: str = TEST_DEVICE_SECRET
    devices: set[str] = field(default_factory=set)

    def mqtt(self, user: str = "orchard-ingest") -> MqttSettings:
        """Settings for a service account, or for a device registered with add_devices."""
        if user in self.service_passwords:
            password = self.service_passwords[user]
        else:
            if user not in self.devices:
                self.add_devices([user])
            password = device_password(self.device_secret, user)
        return MqttSettings(
            host="127.0.0.1",
            port=self.broker.port,
            username=user,
            password=password,  # type: ignore[arg-type]
            reconnect_min_s=0.1,
            reconnect_max_s=1.0,
        )

    def add_devices(self, nodes: Iterable[str]) -> None:
        """Give devices broker accounts (password derived from the device secret) and reload."""
        new = set(nodes) - self.devices
        if not new:
            return
        self.devices |= new
        self.broker.set_accounts(self.accounts())
        # SIGHUP reload is asynchronous; give the broker a moment to read the file.
        time.sleep(0.2)

    def accounts(self) -> dict[str, str]:
        out = dict(self.service_passwords)
        out.update({n: device_password(self.device_secret, n) for n in self.devices})
        return out


def _service_passwords() -> dict[str, str]:
    return {user: secrets.token_urlsafe(12) for user in SERVICE_USERS}


@pytest.fixture(scope="session")
def stack() -> Iterator[LiveStack]:
    root = Path(tempfile.mkdtemp(prefix="orchard-test-"))
    passwords = _service_passwords()
    broker = Mosquitto(root / "mosquitto", free_port(), passwords)
    influxd = Influxd(root / "influxdb", free_port())
    try:
        influxd.start()
        broker.start()
        yield LiveStack(broker=broker, influxd=influxd, service_passwords=passwords)
    finally:
        broker.stop()
        influxd.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def influx_db(stack: LiveStack) -> Iterator[InfluxSettings]:
    """A fresh database for one test on the shared influxd, dropped afterwards."""
    settings = InfluxSettings(url=stack.influxd.url, database=f"t_{uuid.uuid4().hex[:12]}")
    with SyncInfluxClient(settings) as client:
        client.create_database()
        yield settings
        client.query(f"DROP DATABASE {quote_ident(settings.database)}", database=False)


@pytest.fixture
def influx(influx_db: InfluxSettings) -> Iterator[SyncInfluxClient]:
    with SyncInfluxClient(influx_db) as client:
        yield client


@pytest.fixture
def private_broker(stack: LiveStack) -> Iterator[Callable[[], LiveStack]]:
    """A factory for a broker of the test's own, which it may stop, kill and restart."""
    made: list[tuple[Mosquitto, Path]] = []

    def make() -> LiveStack:
        root = Path(tempfile.mkdtemp(prefix="orchard-broker-"))
        passwords = _service_passwords()
        broker = Mosquitto(root, free_port(), passwords)
        broker.start()
        made.append((broker, root))
        return LiveStack(broker=broker, influxd=stack.influxd, service_passwords=passwords)

    yield make
    for broker, root in made:
        broker.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL (the compose state store), for tests that prove portability."""
    root = Path(tempfile.mkdtemp(prefix="orchard-pg-"))
    server = Postgres(root, free_port())
    try:
        server.start()
        yield server.url
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
