"""Webhook registrations, their deliveries, and the Standard Webhooks signature.

A delivery is one message to one webhook about one job's end. Its ``id`` is the
``webhook-id`` header: the same on every retry of it, so a receiver can drop repeats
(delivery is at least once). The body is built from the job's snapshot at its end,
so every retry of a delivery sends the same bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Collection, Iterable
from datetime import datetime
from typing import Any, Final

import attrs

from ..codec import dumps, format_time, job_to_wire
from ..errors import AsyncJobsError, ConfigurationError
from ..job import Job

__all__ = [
    "DEFAULT_EVENTS",
    "EVENTS",
    "Delivery",
    "DeliveryStatus",
    "Webhook",
    "WebhookNotFound",
    "delivery_body",
    "message_id",
    "new_secret",
    "sign",
    "webhook_id",
]

#: The events a webhook can ask for: a job's end, one per terminal status.
EVENTS: Final = ("job_completed", "job_failed", "job_cancelled")
DEFAULT_EVENTS: Final = EVENTS


class WebhookNotFound(AsyncJobsError, LookupError):
    """No webhook has this id."""

    code = "not_found"

    def __init__(self, webhook_id: str) -> None:
        super().__init__(f"no webhook with id {webhook_id!r}; GET /webhooks lists them")
        self.webhook_id = webhook_id


def _secret_key(secret: str) -> bytes:
    """A ``whsec_`` secret is base64 (Standard Webhooks); any other is used as UTF-8."""
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret[len("whsec_") :], validate=True)
        except binascii.Error:
            raise ConfigurationError(
                "a whsec_ webhook secret must be base64 after the prefix"
            ) from None
    return secret.encode()


def new_secret() -> str:
    """A fresh ``whsec_`` secret (24 random bytes)."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(_secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def webhook_id(url: str, events: Iterable[str]) -> str:
    """The id of a webhook given in code: stable, so every process registers it once."""
    text = url + "|" + ",".join(sorted(events))
    return "wh_" + hashlib.sha256(text.encode()).hexdigest()[:20]


def _events(value: Collection[str]) -> tuple[str, ...]:
    chosen = tuple(sorted(set(value)))
    unknown = [e for e in chosen if e not in EVENTS]
    if not chosen or unknown:
        raise ConfigurationError(
            f"webhook events must be some of {list(EVENTS)}; got {list(value)}"
        )
    return chosen


def _url(value: str) -> str:
    if not isinstance(value, str) or not value.lower().startswith(("http://", "https://")):
        raise ConfigurationError(f"a webhook URL must be http:// or https://, not {value!r}")
    return value


@attrs.frozen(kw_only=True)
class Webhook:
    """Where to send job ends, which ones, and the secret that signs them.

    Args:
        url: An ``http://`` or ``https://`` URL. Private and loopback addresses are
            refused unless the host is listed in ``ASYNCJOBS_WEBHOOK_ALLOW``.
        events: Some of ``job_completed``, ``job_failed``, ``job_cancelled`` (all by
            default).
        secret: The signing secret; ``whsec_<base64>`` as Standard Webhooks has it, or
            any string. A new random one when omitted (read it back from the object).
        id: Derived from ``url`` and ``events`` when omitted, so the same webhook given
            in code by many processes is registered once.
    """

    url: str = attrs.field(converter=_url)
    events: tuple[str, ...] = attrs.field(default=DEFAULT_EVENTS, converter=_events)
    secret: str = attrs.field(factory=new_secret, repr=False)
    id: str = attrs.field(default="")
    created_at: datetime | None = None

    def __attrs_post_init__(self) -> None:
        if not self.id:
            object.__setattr__(self, "id", webhook_id(self.url, self.events))
        _secret_key(self.secret)  # fail early on a malformed whsec_ secret

    def to_wire(self) -> dict[str, Any]:
        """The public shape: never the secret."""
        return {
            "id": self.id,
            "url": self.url,
            "events": list(self.events),
            "created_at": None if self.created_at is None else format_time(self.created_at),
        }


class DeliveryStatus:
    """The states of a delivery (plain strings, stored as they are)."""

    PENDING: Final = "pending"
    DELIVERED: Final = "delivered"
    DEAD: Final = "dead"


@attrs.frozen(kw_only=True)
class Delivery:
    """One message about one job's end to one webhook, and how sending it went."""

    id: str
    webhook_id: str
    event: str
    job: Job
    at: datetime
    status: str = DeliveryStatus.PENDING
    attempts: int = 0
    next_at: datetime | None = None
    last_error: str | None = None
    delivered_at: datetime | None = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "webhook_id": self.webhook_id,
            "event": self.event,
            "job_id": self.job.id,
            "at": format_time(self.at),
            "status": self.status,
            "attempts": self.attempts,
            "next_at": None if self.next_at is None else format_time(self.next_at),
            "last_error": self.last_error,
            "delivered_at": None if self.delivered_at is None else format_time(self.delivered_at),
        }


def delivery_body(delivery: Delivery) -> bytes:
    """``{"type", "timestamp", "data": job}``: the same bytes on every retry."""
    return dumps(
        {
            "type": delivery.event,
            "timestamp": format_time(delivery.at),
            "data": job_to_wire(delivery.job),
        }
    ).encode()


def message_id(job: Job, hook_id: str) -> str:
    """A delivery's id: one per webhook per run of a job (a retried job ends again)."""
    return f"msg_{job.id}_{len(job.history)}_{hook_id}"
