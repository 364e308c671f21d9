"""Alembic migrations of the state store, shipped inside the package.

Every service calls :func:`orchard.db.init_db`, which calls :func:`upgrade`: the schema is
brought to the newest revision under a lock, so several services starting at once on the
same database migrate it exactly once. No ``alembic.ini`` is needed at run time; the
configuration is built here. ``orchard migrate`` runs the same upgrade by hand and
``orchard migrate --new "message"`` writes the next revision (see docs/operations.md).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy.engine import Connection, Engine

from orchard.db import metadata

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent

TABLE_MODULES = (
    "control.store",
    "control.harvest.tables",
    "api.auth",
    "api.devices",
)
"""Every module that declares tables on :data:`orchard.db.metadata`.

A module that adds a table must be listed here, or autogenerate will not see it
(``tests/test_migrations.py`` checks the list against the source tree)."""

# Any constant works as long as every service uses the same one; this is b"orchard1".
_PG_LOCK_KEY = 0x6F72636861726431

# Differences that say a table's shape is not what the code expects. Index and
# constraint names are left out: PostgreSQL and SQLite name unnamed ones differently.
_SHAPE_DIFFS = frozenset({"add_table", "add_column", "remove_column"})
_MODIFY_DIFFS = frozenset({"modify_type", "modify_nullable"})


class MigrationError(RuntimeError):
    """The state store cannot be brought to the schema this code expects."""


def load_all_tables() -> sa.MetaData:
    """:data:`orchard.db.metadata` with every service's tables declared on it."""
    for name in TABLE_MODULES:
        importlib.import_module(name)
    return metadata


def alembic_config(
    connection: Connection | None = None, url: str | None = None, *, load_tables: bool = True
) -> Config:
    """An Alembic configuration pointing at the migrations in this package.

    ``load_tables=False`` spares env.py importing every service's table module: an
    upgrade only runs the revision files and does not need them.
    """
    config = Config()
    config.attributes["load_tables"] = load_tables
    config.set_main_option("path_separator", "os")
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("version_locations", str(MIGRATIONS_DIR / "versions"))
    if url is not None:
        # ConfigParser interpolation would choke on a '%' in a password.
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise MigrationError(f"no migration found in {MIGRATIONS_DIR / 'versions'}")
    return head


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def schema_differences(connection: Connection) -> list[Any]:
    """What autogenerate would change to make the database match the code (empty: none)."""
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, load_all_tables()))


@contextlib.contextmanager
def _locked(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction that only one process at a time may hold.

    The whole upgrade runs in it, so it is also atomic where DDL is transactional
    (PostgreSQL, SQLite).
    """
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            # Released by the commit or rollback that ends the transaction.
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
            with _commit_or_rollback(conn):
                yield conn
        elif engine.dialect.name == "sqlite":
            # pysqlite only opens transactions before DML and never takes the write
            # lock up front; BEGIN IMMEDIATE takes it now (waiting up to the busy
            # timeout), so a second process waits here instead of racing the DDL.
            raw = conn.connection.driver_connection
            saved = raw.isolation_level  # type: ignore[union-attr]
            raw.isolation_level = None  # type: ignore[union-attr]
            try:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                with _commit_or_rollback(conn):
                    yield conn
            finally:
                raw.isolation_level = saved  # type: ignore[union-attr]
        else:
            with _commit_or_rollback(conn):
                yield conn


@contextlib.contextmanager
def _commit_or_rollback(conn: Connection) -> Iterator[None]:
    try:
        yield
    except BaseException:
        conn.rollback()
        raise
    conn.commit()


# Alembic keeps the running migration context in module globals (alembic.context, op):
# two threads of one process must not migrate at once even on different databases.
_process_lock = threading.Lock()


def upgrade(engine: Engine, revision: str = "head") -> str:
    """Bring the state store to ``revision`` (default: the newest); return the revision."""
    with _process_lock:
        return _upgrade(engine, revision)


def _upgrade(engine: Engine, revision: str) -> str:
    if engine.url.get_backend_name() == "sqlite" and engine.url.database not in (
        None,
        "",
        ":memory:",
    ):
        Path(engine.url.database).parent.mkdir(parents=True, exist_ok=True)
    with _locked(engine) as conn:
        before = current_revision(conn)
        if before is None:
            _adopt_unversioned(conn)
        try:
            command.upgrade(alembic_config(conn, load_tables=False), revision)
        except CommandError as exc:
            raise MigrationError(
                f"cannot upgrade the state store from revision {before} to {revision}: {exc}. "
                "A revision this code does not know means newer code migrated the database; "
                "run that version, or restore the backup taken before it."
            ) from exc
        after = current_revision(conn)
    if after != before:
        log.info("state store migrated from %s to %s", before or "empty", after)
    if after is None:
        raise MigrationError("the state store has no revision after the upgrade")
    return after


def _adopt_unversioned(conn: Connection) -> None:
    """Stamp a database made by ``metadata.create_all`` (before migrations existed).

    Accepted only when its tables have exactly the columns, types and nullability the
    code declares; missing tables (a service that had never run) are created first.
    Anything else is refused with the differences, rather than guessed at.
    """
    ours = load_all_tables()
    existing = set(sa.inspect(conn).get_table_names()) & set(ours.tables)
    if not existing:
        return
    head = head_revision()
    problems = [
        diff for diff in _flatten(schema_differences(conn)) if _is_shape_problem(diff, existing)
    ]
    if problems:
        detail = "\n  ".join(_describe(p) for p in problems)
        raise MigrationError(
            "the state store has orchard tables but no alembic_version table, and they do "
            f"not match the schema of revision {head}:\n  {detail}\n"
            "Back the database up, then either bring these tables in line and run "
            "`orchard migrate`, or start from an empty database."
        )
    missing = [ours.tables[name] for name in ours.tables if name not in existing]
    ours.create_all(conn, tables=missing)
    log.warning(
        "state store had tables %s made before migrations existed; stamped at %s",
        sorted(existing),
        head,
    )
    command.stamp(alembic_config(conn), head)


def _flatten(diffs: list[Any]) -> Iterator[tuple[Any, ...]]:
    # compare_metadata nests column modifications in lists.
    for diff in diffs:
        if isinstance(diff, list):
            yield from diff
        else:
            yield diff


def _describe(diff: tuple[Any, ...]) -> str:
    kind = diff[0]
    if kind == "add_column":
        return f"{diff[2]}: column {diff[3].name} is missing"
    if kind == "remove_column":
        return f"{diff[2]}: column {diff[3].name} is not in the code"
    if kind == "modify_type":
        return f"{diff[2]}.{diff[3]}: type {diff[5]}, the code says {diff[6]}"
    if kind == "modify_nullable":
        allowed = "allows" if diff[5] else "refuses"
        return f"{diff[2]}.{diff[3]}: {allowed} NULL, the code says the opposite"
    return repr(diff)


def _is_shape_problem(diff: tuple[Any, ...], existing: set[str]) -> bool:
    kind = diff[0]
    if kind == "add_table":
        # A table no service had created yet: made by the adoption, not a mismatch.
        return diff[1].name in existing
    if kind in _SHAPE_DIFFS:
        return True
    return kind in _MODIFY_DIFFS


def new_revision(message: str) -> str:
    """Write the next revision, autogenerated from the tables the code declares.

    It compares against a scratch SQLite database at the current head, so no running
    database is needed; review the file before committing it.
    """
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    next_id = "0001" if head is None else f"{int(head) + 1:04d}" if head.isdigit() else None
    with tempfile.TemporaryDirectory(prefix="orchard-migrate-") as tmp:
        engine = sa.create_engine(f"sqlite:///{Path(tmp) / 'scratch.db'}")
        try:
            if head is not None:
                upgrade(engine)
            with engine.begin() as conn:
                config = alembic_config(conn)
                ruff = Path(sys.executable).with_name("ruff")
                if ruff.exists():
                    # Autogenerate writes long lines and unused imports; the repository's
                    # lint and format checks would fail on them.
                    hooks = {"fix": "check --fix --quiet", "format": "format --quiet"}
                    config.set_section_option("post_write_hooks", "hooks", ", ".join(hooks))
                    for name, options in hooks.items():
                        config.set_section_option("post_write_hooks", f"{name}.type", "exec")
                        config.set_section_option(
                            "post_write_hooks", f"{name}.executable", str(ruff)
                        )
                        config.set_section_option(
                            "post_write_hooks",
                            f"{name}.options",
                            f"{options} REVISION_SCRIPT_FILENAME",
                        )
                script = command.revision(
                    config, message=message, autogenerate=True, rev_id=next_id
                )
        finally:
            engine.dispose()
    if script is None or isinstance(script, list):
        raise MigrationError("alembic wrote no single revision")
    return str(script.path)


def main(argv: Sequence[str] = ()) -> int:
    """``orchard migrate``: upgrade the state store now, or write a new revision."""
    parser = argparse.ArgumentParser(prog="orchard migrate", description=main.__doc__)
    parser.add_argument("--state-url", help="SQLAlchemy URL (default: ORCHARD_STATE_URL)")
    parser.add_argument(
        "--new", metavar="MESSAGE", help="autogenerate the next revision from the code's tables"
    )
    args = parser.parse_args(argv)
    if args.new:
        path = new_revision(args.new)
        sys.stdout.write(f"wrote {path}; review it, then run the migration tests\n")
        return 0

    from orchard.db import create_engine
    from orchard.settings import OrchardSettings

    url = args.state_url or OrchardSettings().state_url
    engine = create_engine(url)
    try:
        revision = upgrade(engine)
    except MigrationError as exc:
        sys.stderr.write(f"orchard migrate: {exc}\n")
        return 1
    finally:
        engine.dispose()
    sys.stdout.write(
        f"state store {engine.url.render_as_string(hide_password=True)} at revision {revision}\n"
    )
    return 0
