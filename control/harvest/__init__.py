"""Harvest readiness, ready-date forecast and product listings (issue 5).

Pure parts: :mod:`.readiness` (the rule, per block, on daily arrays), :mod:`.forecast`
(Theil-Sen trend + GDD rate), :mod:`.grading` (quantity, grade, listing text).
Stateful parts: :mod:`.tables`, :mod:`.lots` (lot lifecycle the API calls),
:mod:`.engine` (the daily evaluation the control loop runs), :mod:`.shop` (listing
events to the shop webhook through ``control.webhooks``). See ``docs/harvest.md``.
"""

from control.harvest.config import HarvestConfig
from control.harvest.engine import (
    ALARM_TYPE,
    BlockOutcome,
    ControlThresholds,
    HarvestEngine,
    block_states,
    mark_harvested,
)
from control.harvest.hook import HarvestEvaluator, backtest_ready_date, register
from control.harvest.lots import (
    ListingError,
    Lot,
    LotChange,
    LotNotFound,
    LotStateError,
    correct_quantity,
    get_lot,
    list_lots,
    lot_history,
    mark_sold_out,
    publish_lot,
    withdraw_lot,
)
from control.harvest.readiness import ReadinessState
from control.harvest.shop import shop_sink, url_secrets

register()

__all__ = [
    "ALARM_TYPE",
    "BlockOutcome",
    "ControlThresholds",
    "HarvestConfig",
    "HarvestEngine",
    "HarvestEvaluator",
    "ListingError",
    "Lot",
    "LotChange",
    "LotNotFound",
    "LotStateError",
    "ReadinessState",
    "backtest_ready_date",
    "block_states",
    "correct_quantity",
    "get_lot",
    "list_lots",
    "lot_history",
    "mark_harvested",
    "mark_sold_out",
    "publish_lot",
    "shop_sink",
    "url_secrets",
    "withdraw_lot",
]
