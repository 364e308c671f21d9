"""Settings of the API service (environment variables with the ``ORCHARD_`` prefix)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr

from control.clock import clock_kind
from control.commands import CommandSettings
from control.harvest.config import HarvestConfig
from control.webhooks import WebhookSettings
from orchard.settings import PROJECT_ROOT, OrchardSettings


class ApiSettings(OrchardSettings):
    api_host: str = Field(default="127.0.0.1", description="Interface the API listens on")
    api_port: int = Field(default=8000, ge=1, le=65535)
    admin_token: SecretStr | None = Field(
        default=None,
        description="Demo mode only: ensured to exist as an admin token at start-up",
    )
    history_max_days: float = Field(
        default=92.0, gt=0, le=3660, description="Longest time range of a history or export"
    )
    history_max_points: int = Field(
        default=10_000, ge=10, le=1_000_000, description="Most points one history call returns"
    )
    backtest_max_days: float = Field(default=92.0, gt=0, le=366)
    backtest_max_steps: int = Field(
        default=150_000, ge=100, description="Replay steps (period / step) one backtest may take"
    )
    backtest_raw_max_days: float = Field(
        default=3.0,
        ge=0,
        le=366,
        description=(
            "Backtests up to this long replay with the control loop's own step; longer ones "
            "default to backtest_long_step_s (a request may still ask for step_s)"
        ),
    )
    backtest_long_step_s: float = Field(
        default=300.0,
        ge=1,
        le=3600,
        description="Default replay step of long backtests: means over this many seconds",
    )
    offline_after_s: float = Field(
        default=900.0,
        gt=0,
        description="A node without a status message counts as offline after this silence",
    )
    # Device provisioning: the broker's password file and how to find the broker process
    # to reload it. `make up` keeps both under var/mosquitto; compose mounts the file.
    broker_passwd_file: Path = PROJECT_ROOT / "var" / "mosquitto" / "passwd"
    broker_pid_file: Path | None = Field(
        default=None, description="Mosquitto's pid_file, to send it SIGHUP after a change"
    )
    broker_pid: int | None = Field(default=None, ge=1, description="Mosquitto's pid, if known")
    broker_conf: Path | None = Field(
        default=None,
        description=(
            "Mosquitto's config file; without a pid or pid file the API looks for the "
            "mosquitto process started with `-c <this file>` (default: mosquitto.conf "
            "next to the password file)"
        ),
    )
    broker_public_host: str | None = Field(
        default=None, description="Broker address handed to provisioned devices"
    )
    # Listing changes made through the API go to the shop like control's own
    # (ORCHARD_HARVEST__SHOP_WEBHOOK_URL / _SECRET, retry policy ORCHARD_WEBHOOK__*).
    harvest: HarvestConfig = HarvestConfig()
    webhook: WebhookSettings = WebhookSettings()
    commands: CommandSettings = CommandSettings()
    # The control service's clock, for the times a manual command carries (see control.clock).
    control_clock: Literal["auto", "wall", "data"] = "auto"
    control_step_s: float = Field(
        default=60.0, ge=1, description="The control loop's time bin: backtests replay with it"
    )
    sim_speed: float = Field(default=1.0, gt=0, description="Set by `make up` for the simulator")
    readiness_timeout_s: float = Field(default=2.0, gt=0, le=30)

    @property
    def clock_kind(self) -> str:
        return clock_kind(self.control_clock, self.demo, self.sim_speed)

    def broker_conf_path(self) -> Path:
        return self.broker_conf or self.broker_passwd_file.parent / "mosquitto.conf"
