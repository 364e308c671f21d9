"""``orchard up`` (``make up``): the whole system on one machine, on a simulated orchard.

Starts Mosquitto and influxd as child processes with project-local data under
``var/``, creates the database, then starts every service that exists (ingest,
control, api, simulator), prints where to look, and on Ctrl-C stops all of it in
order: the simulator first, ingest last (it flushes), then the broker and InfluxDB.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
from pydantic import Field

from orchard.broker import SERVICE_USERS, device_password
from orchard.influx import SyncInfluxClient
from orchard.layout import load_orchard
from orchard.logs import setup_logging
from orchard.settings import PROJECT_ROOT, InfluxSettings, OrchardSettings
from orchard.stack import Influxd, ManagedProcess, Mosquitto, StackError, _port_open

log = logging.getLogger("orchard.up")


class UpSettings(OrchardSettings):
    data_dir: Path = PROJECT_ROOT / "var"
    broker_port: int = Field(default=1883, ge=1, le=65535)
    influx_port: int = Field(default=8086, ge=1, le=65535)
    api_port: int = Field(default=8000, ge=1, le=65535)
    metrics_port: int = Field(default=9101, ge=1, le=65535)
    sim_speed: float = Field(default=3600.0, gt=0, description="Simulated seconds per real second")
    sim_start: str = Field(
        default="-180d",
        description="Where the demo's simulated clock starts: it replays the season up to now "
        "at sim_speed, then carries on in real time",
    )
    sim_interval_s: float = Field(default=300.0, gt=0, description="Simulated s between readings")
    services: str = Field(default="ingest,control,api,sim", description="Which services to start")


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    module: str
    mqtt_user: str | None


SERVICES = (
    ServiceSpec("ingest", "ingest", "orchard-ingest"),
    ServiceSpec("control", "control", "orchard-control"),
    ServiceSpec("api", "api", "orchard-api"),
    ServiceSpec("sim", "firmware_sim", None),
)


def load_or_create_secrets(path: Path) -> dict[str, object]:
    """Local secrets for this machine's stack, generated once, never committed."""
    if path.exists():
        return json.loads(path.read_text())  # type: ignore[no-any-return]
    data: dict[str, object] = {
        "mqtt": {user: secrets.token_urlsafe(18) for user in SERVICE_USERS},
        "device_secret": secrets.token_urlsafe(24),
        "admin_token": "orch_" + secrets.token_urlsafe(24),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
    return data


def _available(module: str) -> bool:
    try:
        return importlib.util.find_spec(f"{module}.__main__") is not None
    except ModuleNotFoundError:
        return False


class Stack:
    def __init__(self, settings: UpSettings) -> None:
        self.settings = settings
        self.data_dir = settings.data_dir.resolve()
        self.secrets = load_or_create_secrets(self.data_dir / "secrets.json")
        self.orchard = load_orchard(settings.orchard_file)
        mqtt_passwords: dict[str, str] = dict(self.secrets["mqtt"])  # type: ignore[call-overload]
        device_secret = str(self.secrets["device_secret"])
        accounts = dict(mqtt_passwords)
        for _, node in self.orchard.all_nodes():
            accounts[node] = device_password(device_secret, node)
        self.broker = Mosquitto(self.data_dir / "mosquitto", settings.broker_port, accounts)
        self.influxd = Influxd(self.data_dir / "influxdb", settings.influx_port)
        self.services: list[tuple[ServiceSpec, ManagedProcess]] = []

    def service_env(self, spec: ServiceSpec) -> dict[str, str]:
        s = self.settings
        env = dict(os.environ)
        mqtt_passwords: dict[str, str] = self.secrets["mqtt"]  # type: ignore[assignment]
        env.update(
            {
                "ORCHARD_DEMO": "true",
                "ORCHARD_MQTT__HOST": "127.0.0.1",
                "ORCHARD_MQTT__PORT": str(s.broker_port),
                "ORCHARD_INFLUX__URL": self.influxd.url,
                "ORCHARD_INFLUX__DATABASE": s.influx.database,
                "ORCHARD_ORCHARD_FILE": str(Path(s.orchard_file).resolve()),
                "ORCHARD_STATE_URL": f"sqlite:///{self.data_dir / 'state.db'}",
                "ORCHARD_DEVICE_SECRET": str(self.secrets["device_secret"]),
                "ORCHARD_ADMIN_TOKEN": str(self.secrets["admin_token"]),
                "ORCHARD_SIM_SPEED": str(s.sim_speed),
                "ORCHARD_SIM_START": s.sim_start,
                "ORCHARD_SIM_INTERVAL_S": str(s.sim_interval_s),
                "ORCHARD_API_PORT": str(s.api_port),
                "ORCHARD_METRICS_PORT": str(s.metrics_port),
                "ORCHARD_LOG_LEVEL": s.log_level,
                "PYTHONUNBUFFERED": "1",
            }
        )
        if spec.mqtt_user:
            env["ORCHARD_MQTT__USERNAME"] = spec.mqtt_user
            env["ORCHARD_MQTT__PASSWORD"] = mqtt_passwords[spec.mqtt_user]
        return env

    def start(self) -> None:
        for port, what in (
            (self.settings.broker_port, "broker"),
            (self.settings.influx_port, "InfluxDB"),
        ):
            if _port_open(port):
                raise StackError(
                    f"port {port} for the {what} is already in use: is another `make up` running? "
                    f"(choose another with ORCHARD_{'BROKER' if what == 'broker' else 'INFLUX'}_PORT)"
                )
        self.influxd.start()
        self.broker.start()
        with SyncInfluxClient(
            InfluxSettings(url=self.influxd.url, database=self.settings.influx.database)
        ) as influx:
            influx.create_database()
        wanted = {name.strip() for name in self.settings.services.split(",") if name.strip()}
        for spec in SERVICES:
            if spec.name not in wanted:
                continue
            if not _available(spec.module):
                log.info("service %s not available yet, skipped", spec.name)
                continue
            proc = ManagedProcess(
                spec.name,
                [sys.executable, "-m", spec.module],
                self.data_dir / "logs" / f"{spec.name}.log",
                env=self.service_env(spec),
            )
            proc.start()
            self.services.append((spec, proc))
            if spec.name == "ingest":
                self._wait_for_ingest_subscription(proc)

    def _wait_for_ingest_subscription(self, proc: ManagedProcess, timeout: float = 30.0) -> None:
        """Hold the other services until ingest has subscribed.

        On a fresh broker, ingest's persistent session does not exist until its first
        subscription; readings published before it would be dropped by the broker.
        """
        url = f"http://127.0.0.1:{self.settings.metrics_port}/metrics"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not proc.running:
                raise StackError(f"ingest exited during start-up:\n{proc.tail()}")
            try:
                text = httpx.get(url, timeout=1).text
            except httpx.HTTPError:
                text = ""
            if "ingest_mqtt_connected 1.0" in text:
                return
            time.sleep(0.2)
        raise StackError(f"ingest did not subscribe within {timeout:.0f}s:\n{proc.tail()}")

    def stop(self) -> None:
        # Simulator first (no new data), ingest last among services (it flushes what it holds).
        order = {"sim": 0, "api": 1, "control": 2, "ingest": 3}
        for spec, proc in sorted(self.services, key=lambda sp: order.get(sp[0].name, 9)):
            code = proc.stop()
            log.info("stopped %s (exit %s)", spec.name, code)
        self.broker.stop()
        self.influxd.stop()
        log.info("stopped broker and InfluxDB")

    def banner(self) -> str:
        s = self.settings
        names = ", ".join(spec.name for spec, _ in self.services) or "none"
        lines = [
            "",
            "orchard is running",
            f"  broker     mqtt://127.0.0.1:{s.broker_port}  (accounts in {self.data_dir / 'secrets.json'})",
            f"  InfluxDB   {self.influxd.url}  database {s.influx.database!r}",
            f"  services   {names}  (logs in {self.data_dir / 'logs'})",
        ]
        if any(spec.name == "api" for spec, _ in self.services):
            lines.append(
                f"  API        http://127.0.0.1:{s.api_port}/  (admin token in secrets.json)"
            )
        lines += [
            f"  watch      mosquitto_sub -p {s.broker_port} -u orchard-control -P <password> -t 'orchard/#' -v",
            "Ctrl-C stops everything.",
            "",
        ]
        return "\n".join(lines)

    def supervise(self, stop: threading.Event) -> None:
        """Restart a crashed service after a pause, so one failure does not end the demo."""
        while not stop.wait(1.0):
            for i, (spec, proc) in enumerate(self.services):
                if not proc.running and not stop.is_set():
                    log.error(
                        "%s exited with %s; restarting in 2s. Last log lines:\n%s",
                        spec.name,
                        proc.process.returncode if proc.process else None,
                        proc.tail(15),
                    )
                    if stop.wait(2.0):
                        return
                    fresh = ManagedProcess(proc.name, proc.argv, proc.log_path, env=proc.env)
                    fresh.start()
                    self.services[i] = (spec, fresh)


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(prog="orchard up", description=__doc__)
    parser.parse_args(argv)
    settings = UpSettings(demo=True)
    setup_logging(settings.log_level)
    stack = Stack(settings)
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        stack.start()
        sys.stderr.write(stack.banner())
        sys.stderr.flush()
        stack.supervise(stop)
    except StackError as exc:
        log.error("%s", exc)
        return 1
    finally:
        stack.stop()
    return 0
