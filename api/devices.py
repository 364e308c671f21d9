"""Device provisioning: broker accounts for nodes, kept in the state store.

The state store is the source of truth for provisioned and revoked devices; the
broker's password file is derived from it. Entries this module does not manage
(service accounts, devices whose password derives from the farm's device secret) are
kept as they are, so provisioning works on the file `make up` or compose wrote.
A change rewrites the file atomically and sends Mosquitto SIGHUP: connected devices
stay connected, and Mosquitto 2.0 drops the session of an account that is gone.
"""

from __future__ import annotations

import logging
import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from control.store import UtcDateTime
from orchard.broker import (
    SERVICE_USERS,
    find_mosquitto_pid,
    hash_password_entry,
    read_password_file,
    reload_broker,
    write_hashed_password_file,
)
from orchard.db import metadata

log = logging.getLogger(__name__)

api_devices = sa.Table(
    "api_devices",
    metadata,
    sa.Column("node", sa.String(32), primary_key=True),
    sa.Column("farm", sa.String(32), nullable=False),
    sa.Column("block", sa.String(32), nullable=False),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("state", sa.String(10), nullable=False),  # active | revoked
    # Mosquitto's PBKDF2 hash of the password, never the password itself.
    sa.Column("password_hash", sa.String(300), nullable=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("created_by", sa.String(100), nullable=True),
    sa.Column("revoked_at", UtcDateTime, nullable=True),
    sa.Column("revoked_by", sa.String(100), nullable=True),
)


class ProvisioningError(Exception):
    """Provisioning could not be applied to the broker."""


class DeviceConflict(ProvisioningError):
    """The node is already provisioned, or its id is reserved."""


@dataclass(frozen=True, slots=True)
class BrokerTarget:
    passwd_file: Path
    pid_file: Path | None
    pid: int | None
    conf: Path

    def find_pid(self) -> int | None:
        if self.pid is not None:
            return self.pid
        if self.pid_file is not None:
            try:
                return int(self.pid_file.read_text().strip())
            except (OSError, ValueError):
                return None
        return find_mosquitto_pid(self.conf)


class DeviceRegistry:
    def __init__(self, engine: Engine, broker: BrokerTarget) -> None:
        self.engine = engine
        self.broker = broker
        self._lock = threading.Lock()

    def all(self) -> list[dict[str, object]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(api_devices).order_by(api_devices.c.block, api_devices.c.node)
            ).all()
        return [{k: v for k, v in r._mapping.items() if k != "password_hash"} for r in rows]

    def get(self, node: str) -> dict[str, object] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(api_devices).where(api_devices.c.node == node)).first()
        if row is None:
            return None
        return {k: v for k, v in row._mapping.items() if k != "password_hash"}

    def active_nodes(self, block: str | None = None) -> list[dict[str, object]]:
        return [
            d
            for d in self.all()
            if d["state"] == "active" and (block is None or d["block"] == block)
        ]

    def register(self, node: str, farm: str, block: str, kind: str, by: str) -> str:
        """Create or replace the node's account; returns its new password (shown once)."""
        if node in SERVICE_USERS:
            raise DeviceConflict(f"{node!r} is a service account name")
        password = secrets.token_urlsafe(24)
        hashed = hash_password_entry(node, password)
        now = datetime.now(UTC)
        with self._lock:
            with self.engine.begin() as conn:
                row = conn.execute(
                    sa.select(api_devices.c.state).where(api_devices.c.node == node)
                ).first()
                if row is not None and row.state == "active":
                    raise DeviceConflict(
                        f"node {node!r} is already provisioned; revoke it first to re-issue"
                    )
                values = {
                    "farm": farm,
                    "block": block,
                    "kind": kind,
                    "state": "active",
                    "password_hash": hashed,
                    "created_at": now,
                    "created_by": by,
                    "revoked_at": None,
                    "revoked_by": None,
                }
                if row is None:
                    conn.execute(api_devices.insert().values(node=node, **values))
                else:
                    conn.execute(
                        api_devices.update().where(api_devices.c.node == node).values(**values)
                    )
            self._apply()
        log.info("provisioned device %s in block %s by %s", node, block, by)
        return password

    def revoke(self, node: str, by: str, farm: str = "", block: str = "") -> bool:
        """Remove the node's broker account; False if it was already revoked."""
        now = datetime.now(UTC)
        with self._lock:
            with self.engine.begin() as conn:
                row = conn.execute(
                    sa.select(api_devices.c.state).where(api_devices.c.node == node)
                ).first()
                if row is not None and row.state == "revoked":
                    return False
                values = {"state": "revoked", "revoked_at": now, "revoked_by": by}
                if row is None:
                    # A node of the orchard file whose account derives from the device secret.
                    conn.execute(
                        api_devices.insert().values(
                            node=node,
                            farm=farm,
                            block=block,
                            kind="sensor",
                            password_hash=None,
                            created_at=now,
                            created_by=None,
                            **values,
                        )
                    )
                else:
                    conn.execute(
                        api_devices.update().where(api_devices.c.node == node).values(**values)
                    )
            self._apply()
        log.info("revoked device %s by %s", node, by)
        return True

    def sync(self) -> bool:
        """Re-apply the stored accounts to the password file (at start-up); True if changed."""
        with self._lock:
            return self._apply()

    def _apply(self) -> bool:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(api_devices.c.node, api_devices.c.state, api_devices.c.password_hash)
            ).all()
        path = self.broker.passwd_file
        current = read_password_file(path)
        wanted = dict(current)
        for row in rows:
            if row.state == "active" and row.password_hash:
                wanted[row.node] = row.password_hash
            else:
                wanted.pop(row.node, None)
        if wanted == current:
            return False
        try:
            write_hashed_password_file(path, wanted)
        except OSError as exc:
            raise ProvisioningError(f"cannot write the broker password file {path}: {exc}") from exc
        pid = self.broker.find_pid()
        if pid is None:
            raise ProvisioningError(
                f"password file {path} updated, but the broker process was not found to "
                "reload it (set ORCHARD_BROKER_PID_FILE or ORCHARD_BROKER_PID)"
            )
        try:
            reload_broker(pid)
        except OSError as exc:
            raise ProvisioningError(f"cannot signal the broker (pid {pid}): {exc}") from exc
        return True
