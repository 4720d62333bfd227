"""The delivery loop: takes due deliveries from the store's outbox and sends them.

Every process whose queue runs it may take part: ``claim_deliveries`` hides a delivery
from other senders for a lease, so each attempt has one sender, and a sender that dies
mid-attempt leaves the delivery to be claimed again (at least once, same ``webhook-id``).
Sending uses httpx (``pip install 'asyncjobs[webhooks]'``), imported on the first send.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, final
from urllib.parse import urlsplit

import anyio
import attrs

from ..errors import AsyncJobsError, ConfigurationError
from .model import Delivery, Webhook, delivery_body, sign

if TYPE_CHECKING:
    from ..stores.protocol import Store
    from ..supervision import Supervisor

__all__ = ["ALLOW_ENV", "TargetRefused", "WebhookConfig", "WebhookDispatcher", "check_target"]

logger = logging.getLogger("asyncjobs.webhooks")

#: The loop's name in ``queue.health()``.
LOOP: Final = "webhooks"
#: Hosts (comma-separated) that may be private or loopback addresses.
ALLOW_ENV: Final = "ASYNCJOBS_WEBHOOK_ALLOW"


class TargetRefused(AsyncJobsError, ValueError):
    """A webhook URL points at a private, loopback or otherwise non-public address."""

    code = "webhook_target_refused"


@attrs.frozen
class WebhookConfig:
    """How this process delivers webhooks.

    Attributes:
        enabled: Run the delivery loop in this process.
        poll: Seconds between looks at the outbox when nothing woke the loop.
        timeout: Seconds one attempt may take (connect, send, read the status).
        max_attempts: Attempts before a delivery is marked dead.
        backoff: Seconds before the first retry; doubled after each failure...
        max_backoff: ...up to this many seconds.
        lease: Seconds a claimed delivery is hidden from other senders.
        batch: Deliveries claimed (and sent concurrently) at once.
        allow: Hosts allowed to be private or loopback, beside ``ASYNCJOBS_WEBHOOK_ALLOW``.
        retention: Seconds finished deliveries (delivered or dead) are kept before the
            janitor purges them (default 7 days); None keeps them for good.
    """

    enabled: bool = True
    poll: float = attrs.field(default=1.0, validator=attrs.validators.gt(0))
    timeout: float = attrs.field(default=10.0, validator=attrs.validators.gt(0))
    max_attempts: int = attrs.field(default=8, validator=attrs.validators.ge(1))
    backoff: float = attrs.field(default=2.0, validator=attrs.validators.gt(0))
    max_backoff: float = attrs.field(default=600.0, validator=attrs.validators.gt(0))
    lease: float = attrs.field(default=60.0, validator=attrs.validators.gt(0))
    batch: int = attrs.field(default=20, validator=attrs.validators.ge(1))
    allow: tuple[str, ...] = ()
    retention: float | None = attrs.field(default=7 * 86400.0)

    @retention.validator
    def _check_retention(self, _: attrs.Attribute[float | None], value: float | None) -> None:
        if value is not None and value <= 0:
            raise ValueError(f"retention must be positive seconds or None, not {value!r}")

    def delay(self, attempts: int) -> float:
        """Seconds before the next attempt after ``attempts`` failed ones."""
        return float(min(self.max_backoff, self.backoff * 2 ** (attempts - 1)))

    def allowed_hosts(self) -> frozenset[str]:
        env = os.environ.get(ALLOW_ENV, "")
        hosts = [h.strip().lower() for h in env.split(",")] + [h.lower() for h in self.allow]
        return frozenset(h for h in hosts if h)


async def check_target(url: str, allow: frozenset[str]) -> None:
    """Refuse a URL whose host resolves to a non-public address, unless allowed.

    Raises:
        TargetRefused: with the reason and how to allow the host.
    """
    try:
        host = (urlsplit(url).hostname or "").lower()
    except ValueError:  # "http://[::1": not a URL at all
        raise TargetRefused(f"webhook URL {url!r} is not a valid URL") from None
    if not host:
        raise TargetRefused(f"webhook URL {url!r} has no host")
    if host in allow:
        return
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            infos = await anyio.getaddrinfo(host, None)
        except (OSError, ValueError) as exc:  # ValueError: a label IDNA cannot encode
            raise TargetRefused(f"cannot resolve webhook host {host!r}: {exc}") from None
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    for address in addresses:
        if not address.is_global or address.is_multicast:
            raise TargetRefused(
                f"webhook host {host!r} is a private or loopback address ({address}); "
                f"allow it with {ALLOW_ENV}={host}"
            )


def _import_httpx() -> Any:
    try:
        import httpx
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConfigurationError(
            "sending webhooks needs httpx: pip install 'asyncjobs[webhooks]'"
        ) from None
    return httpx


@final
class WebhookDispatcher:
    """Sends due deliveries from ``store``'s outbox; one per queue that runs it."""

    def __init__(
        self,
        store: Store,
        config: WebhookConfig,
        clock: Callable[[], datetime],
        supervisor: Supervisor,
    ) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        self.supervisor = supervisor
        self._wake = anyio.Event()
        self._client: Any = None
        # The events some registered webhook asks for, as of the last look at the
        # store's webhooks (None: not known, every poke wakes the loop). A job's end that
        # no webhook wants wrote no delivery: waking the loop for it would cost a store
        # round trip per batch of ends. A webhook registered by another process is seen
        # at the next look, within ``poll`` seconds; the timed look at the outbox never
        # stopped, so its deliveries wait at most that long.
        self._wanted: frozenset[str] | None = None
        self._wanted_at = float("-inf")

    def poke(self, event: str | None = None) -> None:
        """Look at the outbox now: a job just ended with ``event`` (``job_completed``,
        ...; None: look whatever ended)."""
        wanted = self._wanted
        if event is None or wanted is None or event in wanted:
            self._wake.set()

    def forget_webhooks(self) -> None:
        """The registered webhooks changed: every end wakes the loop until the next look."""
        self._wanted = None
        self._wanted_at = float("-inf")

    async def _look_at_webhooks(self) -> None:
        """Refresh what the registered webhooks ask for, at most once per ``poll``."""
        now = time.monotonic()
        if now - self._wanted_at < self.config.poll:
            return
        hooks = await self.store.list_webhooks()
        self._wanted = frozenset(event for hook in hooks for event in hook.events)
        self._wanted_at = now

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Deliver forever; a failing store call is reported to the supervisor (and
        ``/health``) and retried with its backoff."""
        task_status.started()
        try:
            while True:
                try:
                    await self._look_at_webhooks()
                    sent = await self.tick()
                except Exception as exc:  # the loop's edge: never let one outage kill it
                    await anyio.sleep(self.supervisor.failed(LOOP, exc))
                    continue
                self.supervisor.recovered(LOOP)
                if sent < self.config.batch:
                    with anyio.move_on_after(self.config.poll):
                        await self._wake.wait()
                    self._wake = anyio.Event()
        finally:
            client, self._client = self._client, None
            if client is not None:
                with anyio.move_on_after(1, shield=True):
                    await client.aclose()

    async def tick(self) -> int:
        """Send one batch of due deliveries; return how many were attempted."""
        claimed = await self.store.claim_deliveries(
            now=self.clock(), limit=self.config.batch, lease=self.config.lease
        )
        if claimed:
            async with anyio.create_task_group() as tg:
                for delivery, hook in claimed:
                    tg.start_soon(self._send, delivery, hook)
        return len(claimed)

    async def _send(self, delivery: Delivery, hook: Webhook) -> None:
        httpx = _import_httpx()
        if self._client is None:
            # No redirects (a 3xx is a failure) and no proxies from the environment: the
            # address checked is the address connected to.
            self._client = httpx.AsyncClient(follow_redirects=False, trust_env=False)
        error: str | None = None
        final = False
        try:
            await check_target(hook.url, self.config.allowed_hosts())
            body = delivery_body(delivery)
            timestamp = int(self.clock().timestamp())
            headers = {
                "content-type": "application/json",
                "user-agent": "asyncjobs-webhooks",
                "webhook-id": delivery.id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": sign(hook.secret, delivery.id, timestamp, body),
            }
            response = await self._client.post(
                hook.url, content=body, headers=headers, timeout=self.config.timeout
            )
            if not 200 <= response.status_code < 300:
                error = f"HTTP {response.status_code}"
        except TargetRefused as exc:
            error, final = str(exc), True
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        now = self.clock()
        attempts = delivery.attempts + 1
        retry_at = None
        if error is not None and not final and attempts < self.config.max_attempts:
            retry_at = now + timedelta(seconds=self.config.delay(attempts))
        if error is not None:
            level = logging.WARNING if retry_at is None else logging.INFO
            logger.log(level, "webhook %s to %s failed: %s", delivery.id, hook.url, error)
        await self.store.finish_delivery(
            delivery.id, now=now, ok=error is None, error=error, retry_at=retry_at
        )
