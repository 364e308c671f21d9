"""The state store: SQLAlchemy Core over SQLite (local, tests) or PostgreSQL (compose).

Control state that must survive restarts lives here: valve commands and their
lifecycle, alarms, threshold overrides and their audit log, listings, webhook
deliveries, API tokens. Each owner declares its tables on :data:`metadata` and lists
its module in :data:`orchard.migrations.TABLE_MODULES`; a schema change needs a migration
(docs/operations.md). The services call :func:`create_engine` then :func:`init_db`.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

metadata = sa.MetaData()


def create_engine(url: str, **kwargs: Any) -> Engine:
    """An engine with the settings each backend needs for several services at once."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs
        )

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            # WAL lets the API read while control writes; foreign keys are off by default.
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True, **kwargs)


def init_db(engine: Engine) -> None:
    """Migrate the state store to the newest schema (idempotent, safe to run concurrently).

    Runs ``alembic upgrade head`` from :mod:`orchard.migrations` under a lock, so every
    service may call it on start. Creates every table of every service, not only those
    imported so far. Raises :class:`orchard.migrations.MigrationError` when the database
    cannot be brought in line (see docs/operations.md).
    """
    from orchard.migrations import upgrade

    upgrade(engine)
