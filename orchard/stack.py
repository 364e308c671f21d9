"""Start and stop the real backing services (Mosquitto, influxd) as child processes.

Used by ``orchard up`` (``make up``) and by the test fixtures, so the configuration
the tests prove is the one a farm runs. Each process gets loopback ports and its own
data directory; :meth:`ManagedProcess.stop` never leaves an orphan.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from orchard.broker import write_password_file
from orchard.settings import CONFIG_DIR

log = logging.getLogger(__name__)

MOSQUITTO_CONF_DIR = CONFIG_DIR / "mosquitto"


class StackError(RuntimeError):
    """A backing service failed to start or to become healthy."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_binary(name: str, package: str) -> str:
    path = shutil.which(name) or (
        f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None
    )
    if path is None:
        raise StackError(f"{name} not found: install the Debian package {package!r} (make deps)")
    return path


@dataclass
class ManagedProcess:
    """A child process in its own session, with its output in a log file."""

    name: str
    argv: Sequence[str]
    log_path: Path
    env: Mapping[str, str] | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.process = subprocess.Popen(
                list(self.argv),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C in a terminal goes to us; we stop children
                env=dict(self.env) if self.env is not None else None,
            )
        finally:
            log_file.close()
        log.info("started %s (pid %d), log %s", self.name, self.process.pid, self.log_path)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def send_signal(self, sig: int) -> None:
        if self.running:
            assert self.process is not None
            os.killpg(self.process.pid, sig)

    def stop(self, timeout: float = 15.0, sig: int = signal.SIGTERM) -> int | None:
        """SIGTERM the process group, wait, then SIGKILL. Returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0fs, killing it", self.name, timeout)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        self.stop(timeout=5, sig=signal.SIGKILL)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _wait(what: str, proc: ManagedProcess, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.running:
            raise StackError(f"{what} exited during start-up:\n{proc.tail()}")
        if check():
            return
        time.sleep(0.05)
    raise StackError(f"{what} not healthy after {timeout:.0f}s:\n{proc.tail()}")


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Mosquitto:
    """A real Mosquitto with the project's policy (``config/mosquitto/conf.d``) and ACL."""

    def __init__(self, data_dir: Path, port: int, accounts: Mapping[str, str]) -> None:
        self.data_dir = data_dir
        self.port = port
        self.accounts = dict(accounts)
        self.conf_path = data_dir / "mosquitto.conf"
        self.passwd_path = data_dir / "passwd"
        self.proc = ManagedProcess(
            "mosquitto",
            [require_binary("mosquitto", "mosquitto"), "-c", str(self.conf_path)],
            data_dir / "mosquitto.log",
        )

    def write_config(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        write_password_file(self.passwd_path, self.accounts)
        user = pwd.getpwuid(os.getuid()).pw_name
        # Mosquitto started as root drops to the 'mosquitto' user, which cannot write a
        # root-owned persistence folder and would lose its queue at shutdown. Stay as the
        # invoking user: the folder is ours.
        self.conf_path.write_text(
            "\n".join(
                [
                    "# Generated by orchard.stack: local listener and paths.",
                    f"user {user}",
                    f"listener {self.port} 127.0.0.1",
                    f"persistence_location {self.data_dir}/",
                    f"password_file {self.passwd_path}",
                    f"acl_file {MOSQUITTO_CONF_DIR / 'acl'}",
                    "log_dest stdout",
                    "log_type error",
                    "log_type warning",
                    "log_type notice",
                    "log_timestamp_format %Y-%m-%dT%H:%M:%S",
                    f"include_dir {MOSQUITTO_CONF_DIR / 'conf.d'}",
                    "",
                ]
            )
        )

    def set_accounts(self, accounts: Mapping[str, str]) -> None:
        """Rewrite the password file and reload it without dropping connected clients."""
        self.accounts = dict(accounts)
        write_password_file(self.passwd_path, self.accounts)
        self.proc.send_signal(signal.SIGHUP)

    def start(self, timeout: float = 15.0) -> None:
        self.write_config()
        self.proc.start()
        _wait("mosquitto", self.proc, lambda: _port_open(self.port), timeout)

    def stop(self) -> None:
        self.proc.stop()

    def restart(self) -> None:
        self.stop()
        self.proc = ManagedProcess(self.proc.name, self.proc.argv, self.proc.log_path)
        self.start()


class Influxd:
    """A real influxd 1.x serving the v1 HTTP API on a loopback port."""

    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir = data_dir
        self.port = port
        self.conf_path = data_dir / "influxdb.conf"
        self.url = f"http://127.0.0.1:{port}"
        self.proc = ManagedProcess(
            "influxd",
            [require_binary("influxd", "influxdb"), "run", "-config", str(self.conf_path)],
            data_dir / "influxd.log",
        )

    def write_config(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        rpc_port = free_port()
        self.conf_path.write_text(
            f"""# Generated by orchard.stack
reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"

[meta]
  dir = "{self.data_dir}/meta"

[data]
  dir = "{self.data_dir}/data"
  wal-dir = "{self.data_dir}/wal"
  query-log-enabled = false
  trace-logging-enabled = false

[coordinator]
  query-timeout = "30s"

[http]
  bind-address = "127.0.0.1:{self.port}"
  log-enabled = false
  max-body-size = 0

[monitor]
  store-enabled = false

[logging]
  level = "warn"

[continuous_queries]
  log-enabled = false
"""
        )

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/ping", timeout=0.5).status_code == 204
        except httpx.HTTPError:
            return False

    def start(self, timeout: float = 30.0) -> None:
        self.write_config()
        self.proc.start()
        _wait("influxd", self.proc, self.healthy, timeout)

    def stop(self) -> None:
        self.proc.stop()

    def restart(self) -> None:
        self.stop()
        self.proc = ManagedProcess(self.proc.name, self.proc.argv, self.proc.log_path)
        self.start()


def _postgres_bin(name: str) -> str:
    for version_dir in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        candidate = version_dir / name
        if candidate.exists():
            return str(candidate)
    return require_binary(name, "postgresql")


class Postgres:
    """A real PostgreSQL for the state store, in a throw-away cluster on a loopback port.

    PostgreSQL refuses to run as root, so when we are root the cluster belongs to the
    ``postgres`` system user (created by the Debian package).
    """

    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir = data_dir
        self.port = port
        self.url = f"postgresql+psycopg://orchard@127.0.0.1:{port}/orchard"
        self._run_as: list[str] = []
        if os.getuid() == 0:
            self._run_as = ["runuser", "-u", "postgres", "--"]
        self.proc = ManagedProcess(
            "postgres",
            [
                *self._run_as,
                _postgres_bin("postgres"),
                "-D",
                str(data_dir / "cluster"),
                "-p",
                str(port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"unix_socket_directories={data_dir}",
                "-c",
                "fsync=off",
            ],
            data_dir / "postgres.log",
        )

    def start(self, timeout: float = 30.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._run_as:
            shutil.chown(self.data_dir, "postgres", "postgres")
        subprocess.run(
            [
                *self._run_as,
                _postgres_bin("initdb"),
                "-D",
                str(self.data_dir / "cluster"),
                "-U",
                "orchard",
                "--auth=trust",
                "-E",
                "UTF8",
            ],
            check=True,
            capture_output=True,
        )
        self.proc.start()
        _wait("postgres", self.proc, lambda: _port_open(self.port), timeout)
        deadline = time.monotonic() + timeout
        while True:
            created = subprocess.run(
                [
                    _postgres_bin("createdb"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-U",
                    "orchard",
                    "orchard",
                ],
                capture_output=True,
            )
            if created.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise StackError(f"createdb failed: {created.stderr.decode()}")
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.stop()
