"""Alembic migrations of the state store (``orchard.migrations``) on SQLite and PostgreSQL.

``test_upgrade_from_empty_matches_the_code`` is the one that fails when someone adds or
changes a table without writing a migration (``orchard migrate --new "..."``).
"""

from __future__ import annotations

import ast
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from orchard import migrations
from orchard.db import create_engine, init_db
from orchard.migrations import (
    TABLE_MODULES,
    MigrationError,
    current_revision,
    head_revision,
    load_all_tables,
    schema_differences,
)

ROOT = Path(__file__).resolve().parent.parent
METADATA = load_all_tables()


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database of its own."""
    if request.param == "sqlite":
        # A directory that does not exist yet: init_db makes it, as on a fresh install.
        yield f"sqlite:///{tmp_path / 'state' / 'state.db'}"
        return
    base_url: str = request.getfixturevalue("postgres_url")
    name = f"m_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield base_url.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def engine(empty_url: str) -> Iterator[Engine]:
    engine = create_engine(empty_url)
    yield engine
    engine.dispose()


def _tables(engine: Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def test_every_module_declaring_tables_is_listed() -> None:
    # A table module missing from TABLE_MODULES would be invisible to autogenerate and to
    # the schema comparison below, so the comparison could not catch its missing migration.
    declaring = set()
    for package in ("orchard", "control", "api", "ingest", "firmware_sim", "dashboards"):
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"))
            imports_metadata = any(
                isinstance(node, ast.ImportFrom)
                and node.module == "orchard.db"
                and any(alias.name == "metadata" for alias in node.names)
                for node in ast.walk(tree)
            )
            if imports_metadata:
                declaring.add(".".join(path.relative_to(ROOT).with_suffix("").parts))
    assert declaring, "found no table module at all: the scan is broken"
    assert declaring <= set(TABLE_MODULES), declaring - set(TABLE_MODULES)


def test_upgrade_from_empty_matches_the_code(engine: Engine) -> None:
    init_db(engine)
    with engine.connect() as conn:
        assert current_revision(conn) == head_revision()
        differences = schema_differences(conn)
    assert differences == [], (
        "the tables declared in the code differ from what the migrations create; write a "
        f'migration with `orchard migrate --new "..."` (docs/operations.md): {differences}'
    )
    assert set(METADATA.tables) <= _tables(engine)


def test_second_run_changes_nothing(engine: Engine) -> None:
    from control.store import kv

    init_db(engine)
    now = datetime(2026, 5, 1, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(kv.insert().values(scope="b1", key="k", value={"x": 1}, updated_at=now))
    init_db(engine)
    with engine.connect() as conn:
        assert current_revision(conn) == head_revision()
        assert conn.execute(sa.select(kv.c.value)).scalar_one() == {"x": 1}
        versions = conn.execute(sa.text("SELECT version_num FROM alembic_version")).all()
    assert versions == [(head_revision(),)]


def test_concurrent_starts_migrate_once(empty_url: str) -> None:
    # Several services starting together on an empty database, as separate processes
    # (Alembic's context is process-global, so threads would not race the database).
    # Without the lock PostgreSQL fails here most runs with a duplicate-key error.
    starter = "import sys; from orchard.db import create_engine, init_db; "
    starter += "init_db(create_engine(sys.argv[1]))"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", starter, empty_url],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    results = [(proc.communicate(timeout=120)[1], proc.returncode) for proc in procs]
    assert [stderr for stderr, code in results if code != 0] == []
    engine = create_engine(empty_url)
    try:
        with engine.connect() as conn:
            versions = conn.execute(sa.text("SELECT version_num FROM alembic_version")).all()
            assert versions == [(head_revision(),)]
            assert schema_differences(conn) == []
    finally:
        engine.dispose()


def test_adopts_a_database_made_by_create_all(engine: Engine) -> None:
    # Before migrations each service ran metadata.create_all with only its own tables:
    # here control's. Its rows must survive and the API's tables must appear.
    from control.store import kv

    control_tables = [t for name, t in METADATA.tables.items() if name.startswith("control_")]
    if engine.url.database and engine.dialect.name == "sqlite":
        Path(engine.url.database).parent.mkdir(parents=True)
    METADATA.create_all(engine, tables=control_tables)
    now = datetime(2026, 5, 1, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(kv.insert().values(scope="b1", key="k", value=[1, 2], updated_at=now))
    assert "alembic_version" not in _tables(engine)

    init_db(engine)
    with engine.connect() as conn:
        assert current_revision(conn) == head_revision()
        assert schema_differences(conn) == []
        assert conn.execute(sa.select(kv.c.value)).scalar_one() == [1, 2]
    assert {"api_tokens", "api_devices", "harvest_lot"} <= _tables(engine)


def test_refuses_an_unversioned_database_that_differs(engine: Engine) -> None:
    # An old api_tokens without the columns the code uses: stamping it would hide the
    # difference until a query fails, so init_db refuses and says what differs.
    if engine.url.database and engine.dialect.name == "sqlite":
        Path(engine.url.database).parent.mkdir(parents=True)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE api_tokens (id INTEGER PRIMARY KEY, name TEXT)"))
    with pytest.raises(
        MigrationError, match=r"(?s)no alembic_version.*api_tokens: column role is missing"
    ):
        init_db(engine)
    assert _tables(engine) == {"api_tokens"}, "nothing may be created or stamped"


def test_refuses_a_database_migrated_by_newer_code(engine: Engine) -> None:
    init_db(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(MigrationError, match=r"from revision 9999 .*newer code migrated"):
        init_db(engine)


def test_downgrade_to_base_then_upgrade_again(engine: Engine) -> None:
    from alembic import command

    init_db(engine)
    with engine.begin() as conn:
        command.downgrade(migrations.alembic_config(conn), "base")
    assert _tables(engine) - {"alembic_version"} == set()
    init_db(engine)
    with engine.connect() as conn:
        assert schema_differences(conn) == []


def test_orchard_migrate_command(empty_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert migrations.main(["--state-url", empty_url]) == 0
    assert f"at revision {head_revision()}" in capsys.readouterr().out
    engine = create_engine(empty_url)
    try:
        with engine.connect() as conn:
            assert current_revision(conn) == head_revision()
    finally:
        engine.dispose()
