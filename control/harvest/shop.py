"""Listing events to the shop's webhook, through control's signed webhook outbox.

Body (``control.webhooks`` wraps it as ``{"type": ..., "data": ...}``)::

    {"type": "listing.created",
     "data": {"id": "listing:<farm>:<lot>:v<version>:<event>",
              "occurred_at": "...", "listing": {...}}}

The idempotency key is the ``id``: the same on every retry of one change, different for
the next change of the same lot, so a shop can de-duplicate and apply in version order.
"""

from __future__ import annotations

from pydantic import SecretStr
from sqlalchemy.engine import Engine

from control.harvest.config import HarvestConfig
from control.harvest.lots import EventSink, LotChange
from control.webhooks import WebhookDispatcher, WebhookSender, WebhookSettings


def shop_webhook_settings(
    config: HarvestConfig, base: WebhookSettings | None = None
) -> WebhookSettings | None:
    """The shop's receiver with its own secret; retry policy shared with control's."""
    if not config.shop_webhook_url:
        return None
    policy = base or WebhookSettings()
    return policy.model_copy(
        update={"url": config.shop_webhook_url, "secret": config.shop_webhook_secret}
    )


def url_secrets(config: HarvestConfig) -> dict[str, SecretStr]:
    """For ``WebhookDispatcher(url_secrets=...)``: sign shop messages with the shop's key."""
    if config.shop_webhook_url and config.shop_webhook_secret is not None:
        return {config.shop_webhook_url: config.shop_webhook_secret}
    return {}


def shop_sink(
    engine: Engine,
    config: HarvestConfig,
    *,
    base: WebhookSettings | None = None,
    dispatcher: WebhookDispatcher | None = None,
) -> EventSink | None:
    settings = shop_webhook_settings(config, base)
    if settings is None:
        return None
    sender = WebhookSender(engine, settings, dispatcher)

    def send(change: LotChange) -> None:
        if change.event is None:
            return
        data = change.payload()
        data.pop("type", None)  # the outbox adds the envelope's "type"
        sender.send(f"listing.{change.event}", data, idempotency_key=change.idempotency_key)

    return send
