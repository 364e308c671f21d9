"""Settings shared by the services, read from the environment (prefix ``ORCHARD_``).

Each service has one pydantic-settings class that composes these blocks, e.g.
``ORCHARD_MQTT__HOST`` or ``ORCHARD_INFLUX__URL``. Secrets come from the
environment (compose reads them from ``.env``), never from committed files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_PREFIX = "change-me"
"""Values in ``.env.example`` start with this; they are refused unless demo mode is on."""

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "config"


class MqttSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    keepalive: int = Field(default=30, ge=5, le=3600)
    reconnect_min_s: float = Field(default=0.5, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)


class InfluxSettings(BaseModel):
    url: str = "http://127.0.0.1:8086"
    database: str = "orchard"
    username: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = Field(
        default=None, description="InfluxDB 2.x/3.x token for the v1-compatible API"
    )
    timeout_s: float = Field(default=10.0, gt=0)
    retention_policy: str | None = None
    query_format: Literal["msgpack", "json"] = Field(
        default="msgpack",
        description="Answer format asked of /query: MessagePack is cheaper for the server to "
        "write and for us to read; a server answering JSON instead is read as JSON",
    )
    compress_answers: bool = Field(
        default=False,
        description="Ask for gzip-compressed query answers: worth it over a slow link only; "
        "on one host it costs the server more time than it saves",
    )


class OrchardSettings(BaseSettings):
    """Base for every service's settings class."""

    model_config = SettingsConfigDict(
        env_prefix="ORCHARD_", env_nested_delimiter="__", extra="ignore"
    )

    demo: bool = Field(default=False, description="Demo mode: placeholder secrets are allowed")
    log_level: str = "INFO"
    log_json: bool = False
    mqtt: MqttSettings = MqttSettings()
    influx: InfluxSettings = InfluxSettings()
    orchard_file: Path = CONFIG_DIR / "orchard.toml"
    state_url: str = Field(
        default=f"sqlite:///{PROJECT_ROOT / 'var' / 'state.db'}",
        description="SQLAlchemy URL of the control state store (PostgreSQL in compose)",
    )

    @model_validator(mode="after")
    def _refuse_placeholders(self) -> OrchardSettings:
        if not self.demo:
            refuse_placeholders(self)
        return self


def _secret_values(obj: object, path: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    if isinstance(obj, SecretStr):
        found.append((path, obj.get_secret_value()))
    elif isinstance(obj, BaseModel):
        for name in type(obj).model_fields:
            found.extend(_secret_values(getattr(obj, name), f"{path}.{name}" if path else name))
    return found


class PlaceholderSecretError(ValueError):
    pass


def refuse_placeholders(settings: BaseModel) -> None:
    """Raise if a secret still holds the ``.env.example`` placeholder outside demo mode."""
    bad = [
        path for path, value in _secret_values(settings, "") if value.startswith(PLACEHOLDER_PREFIX)
    ]
    if bad:
        raise PlaceholderSecretError(
            "placeholder secrets in " + ", ".join(bad) + ": set real values in .env "
            "(or ORCHARD_DEMO=true for a demo)"
        )
