"""Signed webhooks on job ends, from a durable outbox in the store.

See ``docs/webhooks.md``. The models and the signature are here; the delivery loop
(:mod:`.dispatcher`) imports httpx only when it first sends.
"""

from .dispatcher import WebhookConfig, WebhookDispatcher, check_target
from .model import (
    EVENTS,
    Delivery,
    DeliveryStatus,
    Webhook,
    WebhookNotFound,
    delivery_body,
    message_id,
    new_secret,
    sign,
)

__all__ = [
    "EVENTS",
    "Delivery",
    "DeliveryStatus",
    "Webhook",
    "WebhookConfig",
    "WebhookDispatcher",
    "WebhookNotFound",
    "check_target",
    "delivery_body",
    "message_id",
    "new_secret",
    "sign",
]
