"""Harvest settings, a block of the control service's settings (``ORCHARD_HARVEST__*``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, SecretStr

from control.harvest.forecast import ForecastRules
from control.harvest.readiness import ReadinessRules


class HarvestConfig(BaseModel):
    enabled: bool = True
    min_ready_share: float = Field(
        default=0.75, gt=0, le=1, description="Share of healthy nodes past the threshold"
    )
    ready_soon_days: int = Field(default=7, ge=1, le=60, description="'Ready soon' horizon")
    list_when: Literal["ready", "ready_soon"] = Field(
        default="ready", description="Create the draft listing when ready, or already when soon"
    )
    min_nodes: int = Field(default=3, ge=1, description="Fewer healthy nodes: no verdict")
    min_history_days: int = Field(default=7, ge=3)
    trend_window_days: int = Field(default=21, ge=5, le=120)
    max_forecast_days: float = Field(default=120.0, gt=0)
    forecast_clock: Literal["gdd", "days"] = Field(
        default="gdd", description="Fit maturity against degree-days (default) or days"
    )
    evaluate_every_s: float = Field(
        default=3600.0, gt=0, description="Re-evaluate this often (the forecast moves daily)"
    )
    blocking_alarm_types: tuple[str, ...] = Field(
        default=("frost", "heat"), description="Open alarms of these types hold readiness back"
    )
    node_fault_alarm_types: tuple[str, ...] = Field(
        # Control's sensor alarms judge temperature and soil probes, not the maturity
        # sensor (which readiness checks itself: silent, implausible, left behind).
        default=("node_offline",),
        description="A node with one of these open alarms does not vote",
    )
    shop_webhook_url: str | None = Field(default=None, description="Listing events go here")
    shop_webhook_secret: SecretStr | None = Field(
        default=None, description="HMAC-SHA256 key shared with the shop"
    )

    def rules(self) -> ReadinessRules:
        return ReadinessRules(
            min_ready_share=self.min_ready_share,
            ready_soon_days=self.ready_soon_days,
            forecast=ForecastRules(
                min_nodes=self.min_nodes,
                min_history_days=self.min_history_days,
                trend_window_days=self.trend_window_days,
                max_forecast_days=self.max_forecast_days,
                clock=self.forecast_clock,
            ),
        )
