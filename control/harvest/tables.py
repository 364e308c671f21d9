"""Harvest state tables on :data:`orchard.db.metadata` (portable SQLAlchemy Core).

=========================  =============================================================
table                      what
=========================  =============================================================
``harvest_block_state``    readiness state per block and season, with its evidence
``harvest_lot``            one product listing per block, season and harvest window
``harvest_lot_event``      every change of a lot: the history a shop operator reads
=========================  =============================================================

The unique key (farm, block, season, window_no) on ``harvest_lot`` makes "one lot per
block per harvest window" a database guarantee: re-evaluation updates the lot, and two
writers racing (control and the API) cannot create a second one.
"""

from __future__ import annotations

import sqlalchemy as sa

from control.store import UtcDateTime
from orchard.db import metadata

LOT_STATES = ("draft", "published", "sold_out", "withdrawn")
LOT_OPEN_STATES = ("draft", "published")

block_state = sa.Table(
    "harvest_block_state",
    metadata,
    sa.Column("farm", sa.String(64), primary_key=True),
    sa.Column("block", sa.String(64), primary_key=True),
    sa.Column("season", sa.Date, primary_key=True, doc="the block's bloom date"),
    sa.Column("state", sa.String(16), nullable=False, doc="not_ready ready_soon ready harvested"),
    sa.Column("state_since", UtcDateTime, nullable=False),
    sa.Column("ready_on", sa.Date, nullable=True, doc="first day the block was ready"),
    sa.Column("harvested_at", UtcDateTime, nullable=True),
    sa.Column("harvested_by", sa.String(128), nullable=True),
    sa.Column("forecast_date", sa.Date, nullable=True),
    sa.Column("forecast_earliest", sa.Date, nullable=True),
    sa.Column("forecast_latest", sa.Date, nullable=True),
    sa.Column("forecast_reason", sa.Text, nullable=True),
    sa.Column("evidence", sa.JSON, nullable=False),
    sa.Column("evaluated_at", UtcDateTime, nullable=False),
)

lot = sa.Table(
    "harvest_lot",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("lot", sa.String(160), nullable=False, unique=True),
    sa.Column("farm", sa.String(64), nullable=False),
    sa.Column("block", sa.String(64), nullable=False, index=True),
    sa.Column("season", sa.Date, nullable=False),
    sa.Column("window_no", sa.Integer, nullable=False),
    sa.Column("crop", sa.String(32), nullable=False),
    sa.Column("variety", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("quantity_kg_estimated", sa.Float, nullable=False),
    sa.Column("quantity_kg_corrected", sa.Float, nullable=True, doc="set by the grower"),
    sa.Column("corrected_by", sa.String(128), nullable=True),
    sa.Column("grade", sa.String(16), nullable=False),
    sa.Column("in_band_share", sa.Float, nullable=False),
    sa.Column("window_start", sa.Date, nullable=False),
    sa.Column("window_end", sa.Date, nullable=False),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("evidence", sa.JSON, nullable=False),
    sa.Column("version", sa.Integer, nullable=False, doc="bumped on every change"),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Column("published_at", UtcDateTime, nullable=True),
    sa.Column("closed_at", UtcDateTime, nullable=True, doc="sold out or withdrawn"),
    sa.UniqueConstraint("farm", "block", "season", "window_no", name="uq_harvest_lot_window"),
)

lot_event = sa.Table(
    "harvest_lot_event",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("lot", sa.String(160), nullable=False, index=True),
    sa.Column("ts", UtcDateTime, nullable=False),
    sa.Column("event", sa.String(16), nullable=False, doc="created updated published ..."),
    sa.Column("actor", sa.String(128), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("detail", sa.JSON, nullable=True),
)
