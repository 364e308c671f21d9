"""Broker accounts: service users, device credentials, and the Mosquitto password file."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import os
import signal
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

SERVICE_USERS = ("orchard-ingest", "orchard-control", "orchard-api")


def device_password(device_secret: str, node_id: str) -> str:
    """Per-device password derived from the farm's device secret.

    Derivation lets the simulator and provisioning tools agree on credentials without
    a file of 1,000 passwords; a real device gets its own value from provisioning.
    """
    return hmac.new(device_secret.encode(), node_id.encode(), hashlib.sha256).hexdigest()[:32]


def _check_user(user: str) -> None:
    if ":" in user or not user:
        raise ValueError(f"invalid broker username {user!r}")


def _replace_password_file(path: Path, entries: Mapping[str, str], *, hash_them: bool) -> None:
    """Atomically replace ``path`` with ``user:secret`` lines, hashing plain ones first."""
    for user, secret in entries.items():
        _check_user(user)
        if "\n" in secret:
            raise ValueError(f"invalid broker entry for {user!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".passwd-")
    try:
        with os.fdopen(fd, "w") as fh:
            for user, secret in entries.items():
                fh.write(f"{user}:{secret}\n")
        if hash_them:
            subprocess.run(["mosquitto_passwd", "-U", tmp], check=True, capture_output=True)
        os.chmod(tmp, 0o640)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_password_file(path: Path, accounts: Mapping[str, str]) -> None:
    """Write a Mosquitto password file with hashed passwords (``mosquitto_passwd -U``)."""
    _replace_password_file(path, accounts, hash_them=True)


# --- Provisioning: hashed entries kept outside the broker, reload by SIGHUP ------------


def hash_password_entry(user: str, password: str) -> str:
    """The hashed half of a password-file line (``$7$...``), made by ``mosquitto_passwd``.

    Callers keep this hash (never the password) so the file can be rewritten later.
    """
    _check_user(user)
    with tempfile.TemporaryDirectory(prefix="orchard-passwd-") as tmp:
        path = Path(tmp) / "passwd"
        path.write_text(f"{user}:{password}\n")
        subprocess.run(["mosquitto_passwd", "-U", str(path)], check=True, capture_output=True)
        line = path.read_text().strip()
    return line.split(":", 1)[1]


def read_password_file(path: Path) -> dict[str, str]:
    """``user -> hashed password`` of an existing Mosquitto password file (empty if none)."""
    entries: dict[str, str] = {}
    try:
        text = path.read_text()
    except FileNotFoundError:
        return entries
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#") or ":" not in line:
            continue
        user, hashed = line.split(":", 1)
        entries[user] = hashed
    return entries


def write_hashed_password_file(path: Path, entries: Mapping[str, str]) -> None:
    """Atomically replace a password file with already-hashed entries (no re-hashing)."""
    _replace_password_file(path, entries, hash_them=False)


def find_mosquitto_pid(conf_path: Path) -> int | None:
    """The pid of the ``mosquitto`` process started with ``-c conf_path``, if one runs here."""
    wanted = str(conf_path.resolve())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv if a]
        if not args or not os.path.basename(args[0]).startswith("mosquitto"):
            continue
        for flag, value in itertools.pairwise(args):
            if flag == "-c" and os.path.realpath(value) == wanted:
                return int(entry.name)
    return None


def reload_broker(pid: int) -> None:
    """Ask Mosquitto to re-read its password and ACL files (SIGHUP).

    Connected clients stay connected; Mosquitto 2.0 re-checks every live session's
    credentials on reload and disconnects those whose account is gone or changed.
    """
    os.kill(pid, signal.SIGHUP)
