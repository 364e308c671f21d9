"""API tokens, roles and the permission table.

A token is shown once when created; the state store keeps only its SHA-256. Tokens
have 192 bits of entropy, so a fast hash is enough: nothing can be brute-forced, and
every request can be checked with one indexed lookup.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from control.store import UtcDateTime
from orchard.db import metadata

TOKEN_PREFIX = "orch_"


class Role(StrEnum):
    viewer = "viewer"  # read everything: dashboards, kiosks, growers who only look
    grower = "grower"  # read, and say in the field that a block is picked
    operator = "operator"  # shop: listings
    agronomist = "agronomist"  # thresholds, alarms, manual irrigation, backtests
    admin = "admin"  # devices, tokens, and everything else


class Permission(StrEnum):
    read = "read"
    listings_write = "listings:write"
    thresholds_write = "thresholds:write"
    alarms_write = "alarms:write"
    irrigation_write = "irrigation:write"
    backtest_run = "backtest:run"
    harvest_write = "harvest:write"
    quantity_write = "listings:quantity"
    devices_admin = "devices:admin"
    tokens_admin = "tokens:admin"


_ALL = frozenset(Role)
PERMISSIONS: dict[Permission, frozenset[Role]] = {
    Permission.read: _ALL,
    Permission.listings_write: frozenset({Role.operator, Role.admin}),
    Permission.thresholds_write: frozenset({Role.agronomist, Role.admin}),
    Permission.alarms_write: frozenset({Role.agronomist, Role.admin}),
    Permission.irrigation_write: frozenset({Role.agronomist, Role.admin}),
    # A backtest only reads, but replays weeks of data: kept to those who tune thresholds.
    Permission.backtest_run: frozenset({Role.agronomist, Role.admin}),
    # Marking a block harvested is final for the season and clears its readiness alarm:
    # a state change, so not for read-only viewer tokens. It is the grower's word (issue 5)
    # and agronomists record it on the grower's behalf.
    Permission.harvest_write: frozenset({Role.grower, Role.agronomist, Role.admin}),
    # The grower knows how much fruit there really is (issue 5: "quantities can be corrected
    # by the grower"); the shop operator may correct it too, e.g. after weighing the lot.
    Permission.quantity_write: frozenset({Role.grower, Role.operator, Role.admin}),
    Permission.devices_admin: frozenset({Role.admin}),
    Permission.tokens_admin: frozenset({Role.admin}),
}
"""Who may do what: the single source the endpoints and the docs are checked against."""


def allowed(role: Role, permission: Permission) -> bool:
    return role in PERMISSIONS[permission]


api_tokens = sa.Table(
    "api_tokens",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("role", sa.String(20), nullable=False),
    sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("created_by", sa.String(100), nullable=True),
    sa.Column("revoked_at", UtcDateTime, nullable=True),
    sa.Column("last_used_at", UtcDateTime, nullable=True),
)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's id, name and role."""

    token_id: int
    name: str
    role: Role

    def can(self, permission: Permission) -> bool:
        return allowed(self.role, permission)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(24)


def _now() -> datetime:
    return datetime.now(UTC)


def create_token(
    engine: Engine,
    name: str,
    role: Role,
    created_by: str | None = None,
    token: str | None = None,
) -> tuple[int, str]:
    """Store a new token (or the given one) and return ``(id, token)``; show it once."""
    token = token or new_token()
    with engine.begin() as conn:
        result = conn.execute(
            api_tokens.insert().values(
                name=name,
                role=role.value,
                token_sha256=hash_token(token),
                created_at=_now(),
                created_by=created_by,
            )
        )
        token_id = int(result.inserted_primary_key[0])  # type: ignore[index]
    return token_id, token


def ensure_token(engine: Engine, token: str, name: str, role: Role) -> bool:
    """Make sure ``token`` exists (not revoked) with ``role``; True if it had to be created."""
    digest = hash_token(token)
    with engine.begin() as conn:
        row = conn.execute(
            sa.select(api_tokens.c.id).where(api_tokens.c.token_sha256 == digest)
        ).first()
        if row is not None:
            conn.execute(
                api_tokens.update()
                .where(api_tokens.c.id == row.id)
                .values(role=role.value, revoked_at=None)
            )
            return False
    create_token(engine, name, role, created_by="start-up", token=token)
    return True


def authenticate(engine: Engine, token: str) -> Principal | None:
    """The principal of a valid, unrevoked token, or None."""
    if not token or len(token) > 200:
        return None
    with engine.begin() as conn:
        row = conn.execute(
            sa.select(
                api_tokens.c.id, api_tokens.c.name, api_tokens.c.role, api_tokens.c.last_used_at
            ).where(
                api_tokens.c.token_sha256 == hash_token(token),
                api_tokens.c.revoked_at.is_(None),
            )
        ).first()
        if row is None:
            return None
        now = _now()
        last = row.last_used_at
        # One write a minute per token at most: reads must not contend with control's writes.
        if last is None or (now - last).total_seconds() > 60:
            conn.execute(
                api_tokens.update().where(api_tokens.c.id == row.id).values(last_used_at=now)
            )
    return Principal(token_id=row.id, name=row.name, role=Role(row.role))


def list_tokens(engine: Engine) -> list[dict[str, object]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                api_tokens.c.id,
                api_tokens.c.name,
                api_tokens.c.role,
                api_tokens.c.created_at,
                api_tokens.c.created_by,
                api_tokens.c.revoked_at,
                api_tokens.c.last_used_at,
            ).order_by(api_tokens.c.id)
        ).all()
    return [dict(r._mapping) for r in rows]


def revoke_token(engine: Engine, token_id: int) -> bool:
    with engine.begin() as conn:
        result = conn.execute(
            api_tokens.update()
            .where(api_tokens.c.id == token_id, api_tokens.c.revoked_at.is_(None))
            .values(revoked_at=_now())
        )
    return bool(result.rowcount)
