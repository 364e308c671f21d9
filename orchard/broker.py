"""Broker accounts: service users, device credentials, and the Mosquitto password file."""

from __future__ import annotations

import hashlib
import hmac
import os
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


def write_password_file(path: Path, accounts: Mapping[str, str]) -> None:
    """Write a Mosquitto password file with hashed passwords (``mosquitto_passwd -U``)."""
    for user in accounts:
        if ":" in user or not user:
            raise ValueError(f"invalid broker username {user!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".passwd-")
    try:
        with os.fdopen(fd, "w") as fh:
            for user, password in accounts.items():
                fh.write(f"{user}:{password}\n")
        subprocess.run(["mosquitto_passwd", "-U", tmp], check=True, capture_output=True)
        os.chmod(tmp, 0o640)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
