"""The state store works on the real PostgreSQL that compose runs, not only on SQLite."""

from __future__ import annotations

import sqlalchemy as sa

from orchard.db import create_engine


def test_postgres_round_trip(postgres_url: str) -> None:
    engine = create_engine(postgres_url)
    meta = sa.MetaData()
    table = sa.Table(
        "probe", meta, sa.Column("id", sa.Integer, primary_key=True), sa.Column("v", sa.Text)
    )
    meta.create_all(engine)
    with engine.begin() as conn:
        conn.execute(table.insert(), [{"v": "a"}, {"v": "b"}])
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one() == 2
    engine.dispose()
