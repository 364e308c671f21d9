"""Run the real API in a thread on a free port (tests, benchmarks, the UI test)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

import httpx
import numpy as np
import uvicorn

from api.app import create_app
from api.settings import ApiSettings
from orchard.lineprotocol import encode_point, to_ns
from orchard.stack import free_port


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the test runner owns the signals
        pass


@contextmanager
def running_api(settings: ApiSettings, timeout: float = 20.0) -> Iterator[str]:
    """Serve ``create_app(settings)`` on 127.0.0.1 and yield its base URL."""
    port = free_port()
    settings = settings.model_copy(update={"api_host": "127.0.0.1", "api_port": port})
    app = create_app(settings)
    server = _Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    )
    thread = threading.Thread(target=server.run, name="api-server", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or not thread.is_alive():
            server.should_exit = True
            raise RuntimeError("the API did not start")
        time.sleep(0.05)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(15)


def synthetic_telemetry(
    farm: str,
    block: str,
    nodes: list[str],
    start: datetime,
    days: float,
    step_s: int,
    seed: int = 3,
) -> list[str]:
    """Line protocol of a plausible block: diurnal weather, soil drying 0.03 m³/m³ a day
    and refilled every fourth day (as if irrigated), small noise per node."""
    rng = np.random.default_rng(seed)
    n = int(days * 86400 // step_s)
    hours = np.arange(n) * step_s / 3600.0
    t0 = to_ns(start)
    lines: list[str] = []
    for k, node in enumerate(nodes):
        temp = 16 + 8 * np.sin((hours - 9) / 24 * 2 * np.pi) + rng.normal(0, 0.3, n) + k * 0.1
        hum = np.clip(60 - 18 * np.sin((hours - 9) / 24 * 2 * np.pi) + rng.normal(0, 2, n), 5, 100)
        soil = 0.29 - 0.03 * ((hours / 24) % 4) + rng.normal(0, 0.002, n)
        for i in range(n):
            lines.append(
                encode_point(
                    "telemetry",
                    {"farm": farm, "block": block, "node": node},
                    {
                        "temperature": round(float(temp[i]), 2),
                        "humidity": round(float(hum[i]), 1),
                        "soil_moisture": round(float(soil[i]), 4),
                        "battery": 3.9,
                        "rssi": -70 - k,
                        "seq": i,
                    },
                    t0 + i * step_s * 1_000_000_000,
                )
            )
    return lines
