"""Periodic jobs: ``queue.schedule(type, cron=... | every=...)``.

Every process that opens a queue with the same schedules computes the same tick times
(``every`` ticks are aligned to the Unix epoch; cron ticks are UTC) and submits each
tick's job with an idempotency key made of the schedule's name and the tick's time. The
store lets exactly one of those submissions create a job, so a tick runs once however
many processes share the store, and a restart does not run it again.

Missed ticks (no process was running): ``missed="skip"`` drops them and runs the next
tick on time; ``missed="catch_up"`` runs the most recent missed tick once, at start.
A tick that finds the queue full (``max_queued``) is skipped with a warning, like a
missed one. Cron expressions are parsed by cronsim (``pip install 'asyncjobs[schedules]'``); a
sixth field gives seconds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Final, Literal, final

import anyio
import attrs

from .codec import format_time
from .errors import ConfigurationError, QueueFull

if TYPE_CHECKING:
    from .queue import Queue
    from .supervision import Supervisor

__all__ = ["Schedule", "Scheduler", "tick_key"]

logger = logging.getLogger("asyncjobs.schedules")

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICRO: Final = timedelta(microseconds=1)
#: With ``missed="skip"``, a tick found this late (at most) still runs.
MAX_GRACE: Final = 60.0
#: The scheduler looks at the clock at least this often (an injected clock may jump).
MAX_SLEEP: Final = 1.0

Missed = Literal["skip", "catch_up"]
#: The loop's name in ``queue.health()``.
LOOP: Final = "schedules"


def _cronsim() -> Any:
    try:
        import cronsim
    except ImportError:
        raise ConfigurationError(
            "cron schedules need cronsim: pip install 'asyncjobs[schedules]'"
        ) from None
    return cronsim


def tick_key(name: str, tick: datetime) -> str:
    """The idempotency key of one tick's job."""
    return f"schedule:{name}:{format_time(tick)}"


@attrs.frozen(kw_only=True)
class Schedule:
    """One periodic job: a type, its params, and when (``cron`` or ``every`` seconds)."""

    name: str
    type: str
    params: Mapping[str, Any] = attrs.field(factory=dict)
    cron: str | None = None
    every: float | None = None
    missed: Missed = "skip"

    def __attrs_post_init__(self) -> None:
        if (self.cron is None) == (self.every is None):
            raise ConfigurationError("give a schedule exactly one of cron= or every=")
        if self.every is not None and not self.every > 0:
            raise ConfigurationError(f"every= must be a number of seconds > 0, not {self.every!r}")
        if self.missed not in ("skip", "catch_up"):
            raise ConfigurationError(f"missed= must be 'skip' or 'catch_up', not {self.missed!r}")
        if self.cron is not None:
            cronsim = _cronsim()
            try:
                cronsim.CronSim(self.cron, _EPOCH)
            except cronsim.CronSimError as exc:
                raise ConfigurationError(f"bad cron expression {self.cron!r}: {exc}") from None

    def latest(self, now: datetime) -> datetime:
        """The last tick at or before ``now``."""
        if self.every is not None:
            step = int(self.every * 1_000_000)
            return _EPOCH + ((now - _EPOCH) // _MICRO // step) * step * _MICRO
        cronsim = _cronsim()
        before = next(cronsim.CronSim(self.cron, now, reverse=True))
        after = next(cronsim.CronSim(self.cron, before))
        result: datetime = after if after <= now else before
        return result

    def next_after(self, moment: datetime) -> datetime:
        """The first tick strictly after ``moment``."""
        if self.every is not None:
            return self.latest(moment) + timedelta(seconds=self.every)
        result: datetime = next(_cronsim().CronSim(self.cron, moment))
        return result

    def period(self, tick: datetime) -> float:
        """Seconds from ``tick`` to the next one."""
        return (self.next_after(tick) - tick).total_seconds()

    def to_wire(self, now: datetime) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "params": dict(self.params),
            "cron": self.cron,
            "every": self.every,
            "missed": self.missed,
            "next_run": format_time(self.next_after(now)),
        }


@final
class Scheduler:
    """Submits each due tick of a queue's schedules; one per open queue."""

    def __init__(self, queue: Queue, clock: Callable[[], datetime], supervisor: Supervisor) -> None:
        self.queue = queue
        self.clock = clock
        self.supervisor = supervisor
        self._done: dict[str, datetime] = {}  # the last tick handled, per schedule

    async def tick(self) -> float:
        """Submit what is due now; return seconds until the next tick of any schedule."""
        now = self.clock()
        wait = MAX_SLEEP
        for schedule in list(self.queue.schedules.values()):
            await self._fire(schedule, now)
            wait = min(wait, (schedule.next_after(now) - now).total_seconds())
        return max(wait, 0.005)

    async def _fire(self, schedule: Schedule, now: datetime) -> None:
        tick = schedule.latest(now)
        if self._done.get(schedule.name) == tick:
            return
        period = schedule.period(tick)
        late = (now - tick).total_seconds()
        if schedule.missed == "skip" and late > min(period, MAX_GRACE):
            self._done[schedule.name] = tick  # missed while nothing ran: skip it
            return
        job = self.queue._new_job(
            schedule.type,
            dict(schedule.params),
            idempotency_key=tick_key(schedule.name, tick),
            tags=(f"schedule:{schedule.name}",),
        )
        if job.retention is not None:
            # The key must outlive the tick, or a catch-up after a purge would run it again.
            job = attrs.evolve(job, retention=max(job.retention, 2 * period))
        try:
            await self.queue.store.add(job, max_queued=self.queue.max_queued)
        except QueueFull as exc:
            # Back-pressure, not an outage: the tick is dropped like a missed one, never
            # queued past the bound (see docs/decisions.md).
            logger.warning("schedule %r skipped its tick at %s: %s", schedule.name, tick, exc)
        self._done[schedule.name] = tick

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Fire ticks forever; a failing store call is reported to the supervisor (and
        ``/health``) and retried with its backoff."""
        task_status.started()
        while True:
            try:
                wait = await self.tick()
            except Exception as exc:  # the loop's edge: an outage must not end schedules
                await anyio.sleep(self.supervisor.failed(LOOP, exc))
                continue
            self.supervisor.recovered(LOOP)
            await anyio.sleep(wait)
