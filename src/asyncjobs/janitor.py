"""Janitor: lease recovery, promotion of due scheduled jobs, retention, on timers."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import TypeVar, final

import anyio
import attrs

from .stores.protocol import Store
from .supervision import Supervisor

__all__ = ["Janitor", "JanitorConfig", "JanitorReport"]

logger = logging.getLogger("asyncjobs.janitor")

T = TypeVar("T")


@attrs.frozen
class JanitorConfig:
    """How often the janitor runs each chore.

    Attributes:
        enabled: Run the janitor in this process at all.
        interval: Seconds between promotions of due scheduled jobs and recoveries of
            expired leases (also the precision of ``delay``/``run_at``).
        purge_interval: Seconds between deletions of finished jobs past retention.
        purge_batch: At most this many jobs deleted per purge round.
    """

    enabled: bool = True
    interval: float = attrs.field(default=0.5, validator=attrs.validators.gt(0))
    purge_interval: float = attrs.field(default=60.0, validator=attrs.validators.gt(0))
    purge_batch: int = attrs.field(default=1000, validator=attrs.validators.ge(1))


@attrs.frozen
class JanitorReport:
    """What one :meth:`Janitor.tick` did."""

    promoted: int = 0
    requeued: int = 0
    purged: int = 0
    deliveries_purged: int = 0


@final
class Janitor:
    """Keeps a store healthy. Every process may run one: each chore is one atomic store
    call, so several janitors on one store do not conflict."""

    def __init__(
        self,
        store: Store,
        config: JanitorConfig,
        clock: Callable[[], datetime],
        supervisor: Supervisor | None = None,
        *,
        delivery_retention: float | None = None,
    ) -> None:
        """``delivery_retention``: seconds webhook deliveries are kept after they
        finished (delivered or dead), purged with the jobs; None keeps them."""
        self.store = store
        self.config = config
        self.clock = clock
        self.delivery_retention = delivery_retention
        self.supervisor = supervisor if supervisor is not None else Supervisor()
        self._retry_in = 0.0  # the longest backoff a failing chore asked for
        self._purge_failed = False  # retried on the next tick, not a purge_interval later

    async def tick(self, *, purge: bool = True) -> JanitorReport:
        """Run each chore once, at the clock's current time."""
        now = self.clock()
        requeued = await self.store.requeue_expired(now=now)
        promoted = await self.store.promote_scheduled(now=now)
        purged = hooks = 0
        if purge:
            purged = await self.store.purge(now=now, expired=True, limit=self.config.purge_batch)
            hooks = await self._purge_deliveries(now)
        return JanitorReport(len(promoted), len(requeued), purged, hooks)

    async def _purge_deliveries(self, now: datetime) -> int:
        if self.delivery_retention is None:
            return 0
        # A store without a webhook outbox yet (Redis: lands with its webhook ops) has
        # nothing to purge; calling it would report a failure on every round.
        purge = getattr(self.store, "purge_deliveries", None)
        if purge is None:
            return 0
        before = now - timedelta(seconds=self.delivery_retention)
        count: int = await purge(before=before, limit=self.config.purge_batch)
        return count

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Tick forever: chores every ``interval``, purges every ``purge_interval``.

        A chore whose store call fails is reported to the supervisor and retried with
        backoff; the others go on. Only cancellation ends the loop.
        """
        # The first tick recovers leases that expired while no process was running.
        report = await self._supervised_tick(purge=True)
        task_status.started()
        self._log(report)
        last_purge = anyio.current_time()
        while True:
            await anyio.sleep(max(self.config.interval, self._retry_in))
            due = anyio.current_time() - last_purge >= self.config.purge_interval
            if due:
                last_purge = anyio.current_time()
            self._log(await self._supervised_tick(purge=due or self._purge_failed))

    async def _supervised_tick(self, *, purge: bool) -> JanitorReport:
        self._retry_in = 0.0
        now = self.clock()
        requeued = await self._chore("requeue_expired", lambda: self.store.requeue_expired(now=now))
        promoted = await self._chore(
            "promote_scheduled", lambda: self.store.promote_scheduled(now=now)
        )
        purged = hooks_purged = 0
        if purge:
            limit = self.config.purge_batch
            count = await self._chore(
                "purge", lambda: self.store.purge(now=now, expired=True, limit=limit)
            )
            hooks = await self._chore("purge_deliveries", lambda: self._purge_deliveries(now))
            self._purge_failed = count is None or hooks is None
            purged = count or 0
            hooks_purged = hooks or 0
        return JanitorReport(len(promoted or ()), len(requeued or ()), purged, hooks_purged)

    async def _chore(self, name: str, op: Callable[[], Awaitable[T]]) -> T | None:
        loop = f"janitor.{name}"
        try:
            result = await op()
        except Exception as exc:  # the chore's edge: an outage must not end the janitor
            self._retry_in = max(self._retry_in, self.supervisor.failed(loop, exc))
            return None
        self.supervisor.recovered(loop)
        return result

    @staticmethod
    def _log(report: JanitorReport) -> None:
        if report.requeued:
            logger.warning(
                "recovered %d job(s) whose worker stopped renewing its lease", report.requeued
            )
        if report.purged:
            logger.info("purged %d finished job(s) past retention", report.purged)
        if report.deliveries_purged:
            logger.info(
                "purged %d finished webhook deliveries past retention", report.deliveries_purged
            )
