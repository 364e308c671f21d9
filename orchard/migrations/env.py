"""Alembic environment: run by ``alembic`` and by :func:`orchard.migrations.upgrade`.

At run time the caller passes its own connection (already in a locked transaction) in
``config.attributes["connection"]``; from the command line a URL is used instead.
"""

from __future__ import annotations

from logging.config import fileConfig
from typing import Any, Literal

import sqlalchemy as sa
from alembic import context
from alembic.autogenerate.api import AutogenContext

from orchard.db import metadata
from orchard.migrations import load_all_tables

config = context.config
if config.config_file_name is not None and config.attributes.get("connection") is None:
    # Only from the command line: a service's logging is its own business.
    fileConfig(config.config_file_name)
target_metadata = load_all_tables() if config.attributes.get("load_tables", True) else metadata


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    # Migrations must not import service code, whose types change over time: a type
    # decorator (control.store.UtcDateTime) is written as the column type it stores.
    if type_ == "type" and isinstance(obj, sa.types.TypeDecorator):
        return f"sa.{obj.impl_instance!r}"
    return False


def _configure(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        render_item=render_item,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
    )


def run_migrations_offline() -> None:
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        render_item=render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    # The plain `alembic -c orchard/migrations/alembic.ini` command line. Through
    # orchard.db.create_engine so that SQLite gets the same pragmas as the services.
    from orchard.db import create_engine

    engine = create_engine(_url())
    try:
        with engine.connect() as conn:
            _configure(conn)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url")
    url = url or config.get_main_option("sqlalchemy.url")
    if not url:
        from orchard.settings import OrchardSettings

        url = OrchardSettings().state_url
    return url


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
