"""``orchard bench ingest``: the real chain, publishers → Mosquitto → ingest → InfluxDB.

Everything runs on this machine as separate processes: its own Mosquitto (the project's
config and ACL), its own influxd, ingest as ``python -m ingest`` (its CPU and peak RSS
are read from /proc), and publisher processes holding 1,000 device connections
(gmqtt, QoS 1, each device on its own topic and account). Throughput, loss and
latency are counted in InfluxDB, never from client counters.

Scenarios (``--scenario``, repeatable; sizes by flags):

- ``flood``: N single-reading messages as fast as the publishers go. With
  ``--preload`` the broker queues them for ingest's session first and ingest then
  drains them, so the load generator does not compete for the two cores.
- ``batch``: messages of 20 readings each (readings/s is the figure).
- ``steady``: a fixed rate for a fixed time; publish-to-queryable latency.

Progress is followed with InfluxDB's own write counter (``SHOW STATS``); stored
points, loss and duplicates with ``SELECT count``. Latency is sampled on 1 % of the
nodes: InfluxDB is polled every ``--poll`` seconds for their points per 100 ms of
device time (device time = publish time), so it is exact to about the poll interval
plus 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from orchard.broker import SERVICE_USERS, device_password
from orchard.influx import SyncInfluxClient, quote_regex_alternatives
from orchard.settings import InfluxSettings, MqttSettings
from orchard.stack import Influxd, ManagedProcess, Mosquitto, free_port

DEVICE_SECRET = "bench-device-secret"
FARM = "bench"


def node_name(i: int) -> str:
    return f"n{i:04d}"


def block_of(i: int) -> str:
    return f"b{i % 20:02d}"


# --- publisher worker (runs in a child process) -------------------------------------


def _reading_json(ts: datetime, seq: int, node_index: int) -> str:
    t = 15.0 + (seq % 100) * 0.1 + node_index % 7
    return (
        f'"ts":"{ts.isoformat()}","seq":{seq},"temperature":{t:.2f},"humidity":{55 + seq % 40}.5,'
        f'"soil_moisture":0.{200 + seq % 100},"battery":3.{70 + node_index % 20},'
        f'"rssi":-{60 + node_index % 30}'
    )


async def _publisher(spec: dict[str, Any]) -> dict[str, Any]:
    import gmqtt

    from orchard.mqtt import connect, make_client

    nodes: list[int] = spec["nodes"]
    per_node: int = spec["messages_per_node"]
    readings: int = spec["readings"]
    rate: float = spec["rate"]  # messages/s for this worker; 0: as fast as possible
    base_ns: int = spec["base_ns"]
    live_ts: bool = spec["live_ts"]
    clients: dict[int, gmqtt.Client] = {}
    sem = asyncio.Semaphore(50)

    async def open_client(i: int) -> None:
        name = node_name(i)
        settings = MqttSettings(
            port=spec["port"], username=name, password=device_password(DEVICE_SECRET, name)
        )
        client = make_client(f"bench-{name}", settings)
        async with sem:
            await connect(client, settings)
        clients[i] = client

    await asyncio.gather(*(open_client(i) for i in nodes))
    topics = {i: f"orchard/{FARM}/{block_of(i)}/{node_name(i)}/telemetry" for i in nodes}
    print(json.dumps({"ready": True}), flush=True)
    # Wait for the go signal on stdin so every worker starts together.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    started = time.time()
    sent = 0
    total = per_node * len(nodes)
    seq = 0
    while seq < per_node:
        for i in nodes:
            if rate:
                due = started + sent / rate
                delay = due - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            ts_ns = time.time_ns() // 1000 * 1000 if live_ts else base_ns + seq * readings * 1000000
            name = node_name(i)
            if readings == 1:
                ts = datetime.fromtimestamp(ts_ns / 1e9, UTC)
                body = f'{{"v":1,"node":"{name}",{_reading_json(ts, seq, i)}}}'
            else:
                parts = []
                for r in range(readings):
                    ts = datetime.fromtimestamp((ts_ns + r * 1_000_000) / 1e9, UTC)
                    parts.append("{" + _reading_json(ts, seq * readings + r, i) + "}")
                body = f'{{"v":1,"node":"{name}","readings":[{",".join(parts)}]}}'
            clients[i].publish(topics[i], body.encode(), qos=1)
            sent += 1
            if not rate and sent % 200 == 0:
                await asyncio.sleep(0)  # let PUBACKs in
        seq += 1
    publish_s = time.time() - started
    # Every message is acknowledged by the broker (it holds it) before we report.
    deadline = time.time() + 120
    while time.time() < deadline:
        if all(c._persistent_storage.is_empty for c in clients.values()):
            break
        await asyncio.sleep(0.05)
    unacked = sum(len(c._persistent_storage.get_all()) for c in clients.values())
    acked_s = time.time() - started
    await asyncio.gather(*(c.disconnect() for c in clients.values()))
    return {
        "sent": total,
        "unacked": unacked,
        "started": started,
        "publish_s": publish_s,
        "acked_s": acked_s,
    }


def _worker_main() -> int:
    spec = json.loads(sys.argv[2])
    result = asyncio.run(_publisher(spec))
    print(json.dumps(result), flush=True)
    return 0


# --- the harness ----------------------------------------------------------------


@dataclass
class Scenario:
    name: str
    messages: int
    readings: int
    rate: float  # total messages/s, 0 = flood
    preload: bool


@dataclass
class Sample:
    t: float
    count: int


class Chain:
    def __init__(self, root: Path, nodes: int, ingest_processes: int, ingest_env: dict[str, str]):
        self.root = root
        self.nodes = nodes
        self.passwords = {u: f"bench-{u}" for u in SERVICE_USERS}
        accounts = dict(self.passwords)
        accounts.update(
            {node_name(i): device_password(DEVICE_SECRET, node_name(i)) for i in range(nodes)}
        )
        self.broker = Mosquitto(root / "mosquitto", free_port(), accounts)
        self.influxd = Influxd(root / "influxdb", free_port())
        self.influx = InfluxSettings(url=self.influxd.url, database="bench")
        self.ingest_processes = ingest_processes
        self.ingest_env = ingest_env
        self.ingests: list[ManagedProcess] = []
        self.metrics_ports: list[int] = []
        self.profile_dir: Path | None = None
        self.profilers: list[subprocess.Popen[bytes]] = []
        self.profile_runs = 0

    def start(self) -> None:
        self.influxd.start()
        self.broker.start()

    def stop(self) -> None:
        for proc in self.ingests:
            proc.stop()
        self.broker.stop()
        self.influxd.stop()

    def reset_database(self) -> None:
        with SyncInfluxClient(self.influx) as client:
            client.query('DROP DATABASE "bench"', database=False)
            client.create_database()

    def start_ingest(self) -> None:
        self.ingests = []
        self.metrics_ports = []
        for k in range(self.ingest_processes):
            port = free_port()
            env = dict(os.environ)
            env.update(
                {
                    "ORCHARD_MQTT__PORT": str(self.broker.port),
                    "ORCHARD_MQTT__USERNAME": "orchard-ingest",
                    "ORCHARD_MQTT__PASSWORD": self.passwords["orchard-ingest"],
                    "ORCHARD_INFLUX__URL": self.influxd.url,
                    "ORCHARD_INFLUX__DATABASE": "bench",
                    "ORCHARD_INGEST_CLIENT_ID": f"bench-ingest-{k + 1}",
                    "ORCHARD_METRICS_PORT": str(port),
                    "ORCHARD_LOG_LEVEL": "WARNING",
                }
            )
            env.update(self.ingest_env)
            proc = ManagedProcess(
                f"ingest-{k + 1}",
                [sys.executable, "-m", "ingest"],
                self.root / f"ingest-{k + 1}.log",
                env=env,
            )
            proc.start()
            self.ingests.append(proc)
            self.metrics_ports.append(port)
            if self.profile_dir is not None:
                assert proc.process is not None
                self.profile_runs += 1
                out = self.profile_dir / f"ingest-{self.profile_runs}-{k + 1}.txt"
                py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
                self.profilers.append(
                    subprocess.Popen(
                        [
                            py_spy,
                            "record",
                            "-p",
                            str(proc.process.pid),
                            "-f",
                            "raw",
                            "-o",
                            str(out),
                            "--nonblocking",
                            "-r",
                            "200",
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
        deadline = time.time() + 30
        for port in self.metrics_ports:
            while time.time() < deadline:
                if _metric(port, "ingest_mqtt_connected") == 1.0:
                    break
                time.sleep(0.1)

    def stop_ingest(self) -> list[dict[str, float]]:
        for profiler in self.profilers:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(30)
        self.profilers = []
        stats = []
        for proc, port in zip(self.ingests, self.metrics_ports, strict=True):
            assert proc.process is not None
            pid = proc.process.pid
            stat = _proc_stats(pid)
            stat["received"] = _metric(port, "ingest_messages_received_total") or 0.0
            stat["retries"] = _metric(port, "ingest_write_retries_total") or 0.0
            proc.stop()
            stats.append(stat)
        self.ingests = []
        return stats

    def backend_cpu(self) -> dict[str, float]:
        """CPU seconds used so far by the broker and influxd (to see where time goes)."""
        out = {}
        for name, proc in (("mosquitto", self.broker.proc), ("influxd", self.influxd.proc)):
            assert proc.process is not None
            out[name] = _proc_stats(proc.process.pid)["cpu_s"]
        return out

    def count(self) -> int:
        with SyncInfluxClient(self.influx) as client:
            series = client.query_one("SELECT count(seq) FROM telemetry")
        return int(series[0].values[0][1]) if series else 0


def _metric(port: int, name: str) -> float | None:
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return None
    total = None
    for line in text.splitlines():
        if line.startswith(name):
            total = (total or 0.0) + float(line.rsplit(" ", 1)[1])
    return total


def _proc_stats(pid: int) -> dict[str, float]:
    ticks = os.sysconf("SC_CLK_TCK")
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    rss_kb = 0
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                rss_kb = int(line.split()[1])
    return {"cpu_s": cpu, "peak_rss_mb": rss_kb / 1024}


def _start_publishers(
    chain: Chain, scenario: Scenario, workers: int, live_ts: bool
) -> list[subprocess.Popen[str]]:
    per_node = max(1, scenario.messages // chain.nodes)
    base_ns = (time.time_ns() - 3_600 * 10**9) // 10**6 * 10**6
    procs = []
    for w in range(workers):
        nodes = list(range(w, chain.nodes, workers))
        spec = {
            "port": chain.broker.port,
            "nodes": nodes,
            "messages_per_node": per_node,
            "readings": scenario.readings,
            "rate": scenario.rate * len(nodes) / chain.nodes,
            "base_ns": base_ns,
            "live_ts": live_ts,
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "ingest.bench", "_publish", json.dumps(spec)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    for proc in procs:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("a publisher failed to start")
    return procs


def _go(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()


def _finish_publishers(procs: list[subprocess.Popen[str]]) -> list[dict[str, Any]]:
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def _points_received(client: SyncInfluxClient) -> int:
    """Points InfluxDB has accepted on /write since it started (its own counter, cheap)."""
    series = client.query("SHOW STATS FOR 'write'", database=False)[0]
    return int(series[0].rows()[0]["pointReq"]) if series else 0


def _poll_until(
    chain: Chain,
    expected: int,
    poll: float,
    timeout: float,
    latency_from: float | None,
    baseline: int,
) -> tuple[list[Sample], list[float]]:
    """Follow InfluxDB until it has taken ``expected`` points, or nothing for ``timeout``.

    Progress comes from InfluxDB's own write counter (a full ``count()`` 4 times a
    second would cost the server more than the writes); the final figures come from
    ``SELECT count``. Latency is sampled on 1 % of the nodes (probe nodes): their
    points per 100 ms of device time, as they become queryable.
    """
    samples: list[Sample] = []
    latencies: list[float] = []
    seen_per_bucket: dict[int, int] = {}
    last_change = time.time()
    last = -1
    probes = [node_name(i) for i in range(max(1, chain.nodes // 100))]
    probe_filter = f"node =~ {quote_regex_alternatives(probes)}"
    with SyncInfluxClient(chain.influx) as client:
        while True:
            now = time.time()
            if latency_from is not None:
                start_ms = int(latency_from * 1000) // 100 * 100 - 100
                series = client.query_one(
                    f"SELECT count(seq) FROM telemetry WHERE {probe_filter} AND "
                    f"time >= {start_ms}ms GROUP BY time(100ms) fill(none)"
                )
                for bucket_ms, n in series[0].values if series else []:
                    before = seen_per_bucket.get(bucket_ms, 0)
                    if n > before:
                        latency = now - (bucket_ms + 50) / 1000
                        latencies.extend([latency] * (n - before))
                        seen_per_bucket[bucket_ms] = n
            count = _points_received(client) - baseline
            samples.append(Sample(now, count))
            if count != last:
                last = count
                last_change = now
            if count >= expected or now - last_change > timeout:
                return samples, latencies
            time.sleep(poll)


def _rate_between(samples: list[Sample], low: float, high: float, total: int) -> float:
    t_low = next((s.t for s in samples if s.count >= low * total), None)
    t_high = next((s.t for s in samples if s.count >= high * total), None)
    if t_low is None or t_high is None or t_high <= t_low:
        return float("nan")
    return (high - low) * total / (t_high - t_low)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_scenario(chain: Chain, scenario: Scenario, workers: int, poll: float) -> dict[str, Any]:
    chain.reset_database()
    with SyncInfluxClient(chain.influx) as client:
        baseline = _points_received(client)
    live = not scenario.preload
    expected_msgs = max(1, scenario.messages // chain.nodes) * chain.nodes
    expected = expected_msgs * scenario.readings
    chain.start_ingest()
    if scenario.preload:
        # Ingest subscribed once (its session exists); stop it so the broker queues.
        chain.stop_ingest()
    procs = _start_publishers(chain, scenario, workers, live_ts=live)
    _go(procs)
    t_go = time.time()
    if scenario.preload:
        pub = _finish_publishers(procs)
        t_loaded = time.time()
        chain.start_ingest()
        t_start = time.time()
        others_before = chain.backend_cpu()
        samples, latencies = _poll_until(chain, expected, poll, 20, None, baseline)
    else:
        t_start = t_go
        others_before = chain.backend_cpu()
        samples, latencies = _poll_until(chain, expected, poll, 20, t_go, baseline)
        pub = _finish_publishers(procs)
    t_done = samples[-1].t
    others_after = chain.backend_cpu()
    time.sleep(1.0)  # late writes would show up as extra points
    stored = chain.count()
    stats = chain.stop_ingest()
    sent = sum(p["sent"] for p in pub)
    publish_s = max(p["publish_s"] for p in pub)
    result: dict[str, Any] = {
        "scenario": scenario.name,
        "messages_sent": sent,
        "readings_expected": sent * scenario.readings,
        "readings_stored": stored,
        "influx_points_received": samples[-1].count,
        "lost": max(0, sent * scenario.readings - stored),
        "extra_points": max(0, stored - sent * scenario.readings),
        "publisher_unacked": sum(p["unacked"] for p in pub),
        "publish_rate_msg_s": sent / publish_s if publish_s else float("nan"),
        "wall_s": t_done - t_start,
        "overall_readings_s": stored / (t_done - t_start) if t_done > t_start else float("nan"),
        "sustained_readings_s": _rate_between(samples, 0.1, 0.9, stored),
        "ingest_cpu_s": sum(s["cpu_s"] for s in stats),
        "ingest_peak_rss_mb": max(s["peak_rss_mb"] for s in stats),
        "ingest_received": sum(s["received"] for s in stats),
        "ingest_write_retries": sum(s["retries"] for s in stats),
        "mosquitto_cpu_s": others_after["mosquitto"] - others_before["mosquitto"],
        "influxd_cpu_s": others_after["influxd"] - others_before["influxd"],
        "load_average_1m": os.getloadavg()[0],
    }
    if scenario.preload:
        result["preload_s"] = t_loaded - t_go
    result["sustained_msg_s"] = result["sustained_readings_s"] / scenario.readings
    result["overall_msg_s"] = result["overall_readings_s"] / scenario.readings
    if live and latencies:
        result["latency_p50_s"] = _percentile(latencies, 0.5)
        result["latency_p99_s"] = _percentile(latencies, 0.99)
        result["latency_max_s"] = max(latencies)
    result["redelivered"] = max(0, int(result["ingest_received"]) - sent)
    return result


def _print(result: dict[str, Any]) -> None:
    print(f"\n== {result['scenario']}")
    for key, value in result.items():
        if key == "scenario":
            continue
        text = f"{value:,.2f}" if isinstance(value, float) else f"{value:,}"
        print(f"  {key:<24} {text}")


def main(argv: Sequence[str] = ()) -> int:
    args_list = list(argv)
    if args_list[:1] == ["_publish"]:
        return _worker_main()
    parser = argparse.ArgumentParser(
        prog="orchard bench ingest",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--scenario",
        action="append",
        choices=["flood", "batch", "steady"],
        help="repeatable; default: all three",
    )
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--flood-messages", type=int, default=200_000)
    parser.add_argument("--batch-messages", type=int, default=50_000)
    parser.add_argument("--batch-readings", type=int, default=20)
    parser.add_argument("--steady-rate", type=float, default=10_000)
    parser.add_argument("--steady-seconds", type=float, default=60)
    parser.add_argument(
        "--preload",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="flood/batch: queue everything in the broker, then start ingest (default on)",
    )
    parser.add_argument("--publishers", type=int, default=2, help="publisher processes")
    parser.add_argument("--ingest-processes", type=int, default=1)
    parser.add_argument("--poll", type=float, default=0.25, help="InfluxDB poll interval, s")
    parser.add_argument(
        "--ingest-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for ingest, e.g. ORCHARD_BATCH_MAX_LINES=2000",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="record ingest with py-spy (pip install py-spy) into DIR, collapsed stacks",
    )
    parser.add_argument("--json", action="store_true", help="print results as JSON lines")
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    args = parser.parse_args(args_list)
    chosen = args.scenario or ["flood", "batch", "steady"]
    scenarios = {
        "flood": Scenario("flood", args.flood_messages, 1, 0, args.preload),
        "batch": Scenario(
            f"batch ({args.batch_readings} readings/message)",
            args.batch_messages,
            args.batch_readings,
            0,
            args.preload,
        ),
        "steady": Scenario(
            f"steady ({args.steady_rate:,.0f} msg/s for {args.steady_seconds:.0f} s)",
            int(args.steady_rate * args.steady_seconds),
            1,
            args.steady_rate,
            False,
        ),
    }
    root = Path(tempfile.mkdtemp(prefix="orchard-bench-ingest-"))
    extra_env = dict(item.split("=", 1) for item in args.ingest_env)
    chain = Chain(root, args.nodes, args.ingest_processes, extra_env)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
        chain.profile_dir = args.profile
    print(
        f"orchard bench ingest: {args.nodes} nodes, {args.publishers} publisher processes, "
        f"{args.ingest_processes} ingest process(es), {os.cpu_count()} CPUs, data in {root}"
    )
    status = 0
    try:
        chain.start()
        for name in chosen:
            result = run_scenario(chain, scenarios[name], args.publishers, args.poll)
            if args.json:
                print(json.dumps(result))
            else:
                _print(result)
            if result["lost"]:
                status = 1
    except KeyboardInterrupt:
        status = 130
    finally:
        chain.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return status


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    raise SystemExit(main(sys.argv[1:]))
