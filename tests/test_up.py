"""`make up` smoke test: the whole stack starts, data flows, Ctrl-C stops everything, twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from orchard.influx import SyncInfluxClient
from orchard.layout import load_orchard
from orchard.settings import CONFIG_DIR, InfluxSettings
from orchard.stack import _port_open, free_port

ORCHARD_FILE = CONFIG_DIR / "orchard.toml"


def _processes_mentioning(marker: str) -> list[int]:
    """Pids whose command line or environment mentions ``marker`` (our data dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            blob = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker.encode() in blob:
            found.append(int(entry.name))
    return found


def _run_up(data_dir: Path, ports: dict[str, int]) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update(
        {
            "ORCHARD_DATA_DIR": str(data_dir),
            "ORCHARD_BROKER_PORT": str(ports["broker"]),
            "ORCHARD_INFLUX_PORT": str(ports["influx"]),
            "ORCHARD_API_PORT": str(ports["api"]),
            "ORCHARD_METRICS_PORT": str(ports["metrics"]),
            "ORCHARD_LOG_LEVEL": "INFO",
        }
    )
    return subprocess.Popen(
        [sys.executable, "-m", "orchard", "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _wait_for_telemetry(influx_url: str, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    count = 0
    with SyncInfluxClient(InfluxSettings(url=influx_url, database="orchard")) as influx:
        while time.monotonic() < deadline:
            try:
                series = influx.query_one("SELECT count(temperature) FROM telemetry")
            except Exception:  # the database may not exist for a moment
                series = []
            if series and series[0].values:
                count = int(series[0].values[0][1])
                if count > 0:
                    return count
            time.sleep(1)
    return count


def _wait_for_first_readings(influx_url: str, nodes: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    with SyncInfluxClient(InfluxSettings(url=influx_url, database="orchard")) as influx:
        while time.monotonic() < deadline:
            series = influx.query_one(
                "SELECT count(seq) FROM telemetry WHERE seq = 0 GROUP BY node"
            )
            if len(series) == nodes:
                return True
            time.sleep(1)
    return False


def _wait_for_http(url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return False


@pytest.mark.slow
def test_make_up_runs_the_orchard_and_stops_cleanly(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    for attempt in (1, 2):  # a second `make up` after the first must work too
        ports = {name: free_port() for name in ("broker", "influx", "api", "metrics")}
        proc = _run_up(data_dir, ports)
        try:
            count = _wait_for_telemetry(f"http://127.0.0.1:{ports['influx']}", timeout=90)
            assert count > 0, f"no telemetry stored on run {attempt}"
            assert _wait_for_http(f"http://127.0.0.1:{ports['api']}/health", timeout=60)
            # Ingest subscribes before the simulator starts, so even every node's very
            # first reading (seq 0) is stored: nothing is lost at start-up.
            sensors = sum(len(b.sensor_nodes) for b in load_orchard(ORCHARD_FILE).blocks)
            assert _wait_for_first_readings(f"http://127.0.0.1:{ports['influx']}", sensors, 30)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                output, _ = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                output, _ = proc.communicate()
                pytest.fail("orchard up did not stop within 60 s of Ctrl-C")
        text = output.decode(errors="replace")
        assert proc.returncode == 0, text[-3000:]
        assert "orchard is running" in text
        assert not _port_open(ports["broker"]) and not _port_open(ports["influx"])
        leftovers = _processes_mentioning(str(data_dir))
        assert leftovers == [], f"orphan processes after stop: {leftovers}"
