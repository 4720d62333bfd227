"""Queue: the API a host application calls."""

from __future__ import annotations

import bisect
import builtins
import collections
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable, Collection, Iterable
from datetime import datetime, timedelta, timezone
from types import TracebackType
from typing import Any, final

import anyio
import attrs

from . import tracing
from ._queue_ops import QueueOperations, _names, _statuses
from ._ulid import new_ulid
from .errors import ConfigurationError, FieldError, InvalidSubmission, JobNotFound, WaitTimeout
from .events import EventBus
from .janitor import Janitor, JanitorConfig
from .job import TERMINAL, EventType, Job, JobEvent, JobStatus
from .registry import Backoff, Handler, JobRegistry
from .schedules import Schedule, Scheduler
from .stores import open_store
from .stores.protocol import Page, Stats, Store, WorkerInfo
from .subscription import Subscription
from .supervision import STORE_RETRY, Background, Health, Supervisor
from .webhooks.dispatcher import WebhookConfig, WebhookDispatcher
from .webhooks.model import Webhook
from .worker import Worker, WorkerConfig

__all__ = ["Queue"]

logger = logging.getLogger("asyncjobs.queue")

#: Seconds closing an owned store may take once the queue has stopped.
_CLOSE_TIMEOUT = 10.0
#: Recent event (seq, time) pairs a Queue remembers for resumed streams.
_RECENT_EVENTS = 100_000


#: Event types after which a job never changes again (``EventType.is_final``), with
#: their names: ``member.value`` is two Python calls on 3.11, once per finished job.
_FINAL_EVENTS = {t: t.value for t in EventType if t.is_final}
#: Read off its class on Python 3.11 an enum member costs an EnumType.__getattr__ call.
_CANCEL_REQUESTED = EventType.CANCEL_REQUESTED


#: The default clock: ``datetime.now(timezone.utc)`` called from C (a partial, not a
#: Python function): the worker reads it once per job.
_utcnow: Callable[[], datetime] = functools.partial(datetime.now, timezone.utc)


@final
class Queue(QueueOperations):
    """A job queue: submit, observe, cancel; runs workers and a janitor while open.

    Args:
        store: A :class:`Store`, or a URL for :func:`open_store` (``memory://``,
            ``sqlite:///jobs.db``, ``postgresql://...``). A store built from a URL is
            closed with the queue.
        registry: The job types; a new, empty one by default (add with :meth:`job_type`).
        concurrency: Jobs this process runs at once; 0 runs no worker here (a web
            process in front of separate workers). Overrides ``worker.concurrency``.
        max_queued: :meth:`submit` raises QueueFull once this many jobs wait.
        worker: Worker tuning (lease, heartbeat, shutdown grace).
        janitor: Janitor tuning; ``JanitorConfig(enabled=False)`` runs none here.
        clock: Returns the current UTC time; injectable for tests.
        event_buffer: Events a subscriber may have pending before they coalesce.
        store_retry: Backoff of a background loop (claim, heartbeat, finish, janitor)
            while the store fails; see :meth:`health`.
        webhooks: Webhooks to register in the store when the queue opens (an upsert:
            every process may list the same ones).
        webhook_config: How this process delivers webhooks;
            ``WebhookConfig(enabled=False)`` sends none from here.
    """

    def __init__(
        self,
        store: Store | str = "memory://",
        *,
        registry: JobRegistry | None = None,
        concurrency: int | None = None,
        max_queued: int | None = None,
        worker: WorkerConfig | None = None,
        janitor: JanitorConfig | None = None,
        clock: Callable[[], datetime] = _utcnow,
        event_buffer: int = 1000,
        store_retry: Backoff = STORE_RETRY,
        webhooks: Iterable[Webhook] = (),
        webhook_config: WebhookConfig | None = None,
    ) -> None:
        self._owns_store = isinstance(store, str)
        self.store: Store = open_store(store) if isinstance(store, str) else store
        self.registry = registry if registry is not None else JobRegistry()
        worker_config = worker or WorkerConfig()
        if concurrency is not None:
            worker_config = attrs.evolve(worker_config, concurrency=concurrency)
        self.worker_config = worker_config
        self.janitor_config = janitor or JanitorConfig()
        if max_queued is not None and max_queued < 1:
            raise ValueError("max_queued must be at least 1")
        self.max_queued = max_queued
        self.clock = clock
        self.bus = EventBus(max_pending=event_buffer)
        # (seq, at) of recent events, so a stream resumed at a seq (SSE Last-Event-ID)
        # knows from when on to list the jobs that finished while it was away.
        self._recent: collections.deque[tuple[int, datetime]] = collections.deque(
            maxlen=_RECENT_EVENTS
        )
        self.worker: Worker | None = None
        self.janitor: Janitor | None = None
        self.supervisor = Supervisor(store_retry, clock)
        self._background: Background | None = None
        self._remove_listener: Callable[[], None] | None = None
        self._remove_resync: Callable[[], None] | None = None
        self.webhooks = tuple(webhooks)
        self.webhook_config = webhook_config or WebhookConfig()
        self.dispatcher: WebhookDispatcher | None = None
        self.schedules: dict[str, Schedule] = {}
        self.scheduler: Scheduler | None = None

    # -- registry shortcut ---------------------------------------------------------

    def job_type(self, name: str | None = None, **options: Any) -> Callable[[Handler], Handler]:
        """Register a job type; see :meth:`JobRegistry.job_type` for the options."""
        return self.registry.job_type(name, **options)

    @property
    def concurrency(self) -> int:
        return self.worker_config.concurrency

    def running_count(self) -> int:
        """Jobs running in this process now."""
        return self.worker.running_count if self.worker is not None else 0

    @property
    def is_open(self) -> bool:
        return self._background is not None

    def health(self) -> Health:
        """The health of this queue's background loops: ``ok``, or the loops that
        are failing now (each with its last error and since when).

        A failing loop retries on its own with backoff; the host's code is never
        cancelled by it. ``GET /health`` answers 503 while this is not ok.
        """
        return self.supervisor.health()

    # -- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> Queue:
        if self._background is not None:
            raise ConfigurationError("this queue is open already")
        await self.store.open()
        self.supervisor.clear()  # what a previous opening saw is over
        background = Background(self.supervisor)
        starters = []
        try:
            for hook in self.webhooks:
                await self.store.add_webhook(hook, now=self.clock())
        except BaseException:
            await self._release()
            raise
        self.scheduler = Scheduler(self, self.clock, self.supervisor)
        starters.append(self.scheduler.run)
        if self.webhook_config.enabled:
            self.dispatcher = WebhookDispatcher(
                self.store, self.webhook_config, self.clock, self.supervisor
            )
            starters.append(self.dispatcher.run)
        if self.janitor_config.enabled:
            self.janitor = Janitor(
                self.store,
                self.janitor_config,
                self.clock,
                self.supervisor,
                delivery_retention=self.webhook_config.retention,
            )
            starters.append(self.janitor.run)
        if self.worker_config.concurrency > 0:
            self.worker = Worker(
                self.store, self.registry, self.worker_config, self.clock, self.supervisor
            )
            starters.append(self.worker.run)
        self._remove_listener = self.store.add_listener(self._on_event)
        # Events may have been lost (a reconnect, a gap): subscriptions re-read.
        self._remove_resync = self.store.add_resync_listener(self.bus.resync)
        try:
            await background.start(*starters)
        except BaseException:
            await self._release()
            raise
        self._background = background
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop claiming, let running jobs finish (within the shutdown grace, then
        cancel and requeue them), stop the janitor and close an owned store.

        May be called from any task. If the caller is cancelled meanwhile, running
        jobs are halted and requeued at once; either way the wait is bounded
        (``WorkerConfig.shutdown_timeout`` after the halt): a handler that does not
        return by then, or a store that does not answer, is logged and its job left
        to lease expiry.
        """
        background, self._background = self._background, None
        if background is None:
            return
        worker, cfg = self.worker, self.worker_config
        try:
            if worker is not None:
                worker.stop()
                with anyio.move_on_after(cfg.shutdown_grace + cfg.shutdown_timeout):
                    await worker.wait_stopped()
        finally:
            with anyio.move_on_after(cfg.shutdown_timeout, shield=True):
                if worker is not None:
                    worker.stop(now=True)  # nothing left to do after a graceful drain
                    await worker.wait_stopped()
                background.cancel()
                await background.wait()
            if not background.done:
                running = worker.running_ids() if worker is not None else []
                logger.error(
                    "the queue did not stop within %gs; left behind: %s (their jobs are "
                    "recovered when their leases expire)",
                    cfg.shutdown_timeout,
                    ", ".join(running) or "its background tasks",
                )
            await self._release()

    async def _release(self) -> None:
        for remove in (self._remove_listener, self._remove_resync):
            if remove is not None:
                remove()
        self._remove_listener = self._remove_resync = None
        if self._owns_store:
            with anyio.move_on_after(_CLOSE_TIMEOUT, shield=True):
                await self.store.close()
        self.worker = None
        self.janitor = None
        self.dispatcher = None
        self.scheduler = None

    @contextlib.asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """A host framework's lifespan: ``Starlette(lifespan=queue.lifespan)``."""
        async with self:
            yield

    def _on_event(self, event: JobEvent) -> None:
        # Twice per job: attribute tests here rather than the properties behind them.
        if event.seq > 0:
            self._recent.append((event.seq, event.at))
        bus = self.bus
        if bus.wanted:  # publish() would find nobody: skip the call
            bus.publish(event)
        type_ = event.type
        if type_ is _CANCEL_REQUESTED and self.worker is not None:
            self.worker.on_event(event)  # the only event a worker acts on
        name = _FINAL_EVENTS.get(type_)  # one lookup, not a test and then a read
        if name is not None and self.dispatcher is not None and event.job.status in TERMINAL:
            self.dispatcher.poke(name)  # an outbox row may come with it

    def _require_open(self) -> None:
        if self._background is None:
            raise ConfigurationError(
                "the queue is not open: use `async with queue:` or the host's "
                "lifespan (`lifespan=queue.lifespan`) before submitting or observing"
            )

    # -- submit ------------------------------------------------------------------------

    async def submit(
        self,
        type: str,
        params: Any = None,
        *,
        priority: int | None = None,
        delay: float | timedelta | None = None,
        run_at: datetime | None = None,
        timeout: float | None = None,
        max_attempts: int | None = None,
        idempotency_key: str | None = None,
        tags: Collection[str] = (),
        owner: str | None = None,
    ) -> Job:
        """Validate and store a new job; return it (queued, or scheduled if delayed).

        Args:
            type: A registered job type's name.
            params: The params (a dict, or an instance of the type's params class).
            priority: Higher runs first; defaults to the type's priority.
            delay: Run no sooner than this many seconds from now.
            run_at: Run no sooner than this time (timezone-aware).
            timeout: Seconds an attempt may run; defaults to the type's timeout.
            max_attempts: Attempts before the job stays failed; the type's by default.
            idempotency_key: A second submit with the same key returns the first job.
            tags: Free-form labels, kept with the job.
            owner: The principal that owns the job (used by per-owner isolation).

        Raises:
            UnknownJobType: no such type. InvalidParams: bad params (nothing stored).
            InvalidSubmission: bad options. QueueFull: ``max_queued`` reached.
        """
        self._require_open()
        with tracing.submit_span(type) as span:
            job = self._new_job(
                type,
                params,
                priority=priority,
                delay=delay,
                run_at=run_at,
                timeout=timeout,
                max_attempts=max_attempts,
                idempotency_key=idempotency_key,
                tags=tags,
                owner=owner,
            )
            stored, _ = await self.store.add(job, max_queued=self.max_queued)
            tracing.set_job(span, stored)
        return stored

    def _new_job(
        self,
        type: str,
        params: Any = None,
        *,
        priority: int | None = None,
        delay: float | timedelta | None = None,
        run_at: datetime | None = None,
        timeout: float | None = None,
        max_attempts: int | None = None,
        idempotency_key: str | None = None,
        tags: Collection[str] = (),
        owner: str | None = None,
    ) -> Job:
        """Validate a submission and build its job (not stored yet)."""
        job_type = self.registry.get(type)
        if attrs.has(params.__class__):
            params = job_type.converter.unstructure(params)
        _, normalised = job_type.parse(params)
        now = self.clock()
        due = self._due_time(now, delay, run_at, timeout, max_attempts, tags)
        job = Job(
            id=new_ulid(),
            type=type,
            params=normalised,
            status=JobStatus.SCHEDULED if due > now else JobStatus.QUEUED,
            created_at=now,
            run_at=max(due, now),
            priority=job_type.priority if priority is None else int(priority),
            timeout=job_type.timeout if timeout is None else float(timeout),
            max_attempts=job_type.max_attempts if max_attempts is None else max_attempts,
            retention=job_type.retention,
            idempotency_key=idempotency_key,
            owner=owner,
            tags=tuple(tags),
            trace=tracing.inject(),
        )
        return job

    @staticmethod
    def _due_time(
        now: datetime,
        delay: float | timedelta | None,
        run_at: datetime | None,
        timeout: float | None,
        max_attempts: int | None,
        tags: Collection[str],
    ) -> datetime:
        errors: list[FieldError] = []
        due = now
        if delay is not None and run_at is not None:
            errors.append({"loc": ["delay"], "msg": "give delay or run_at, not both"})
        elif delay is not None:
            seconds = delay.total_seconds() if isinstance(delay, timedelta) else delay
            if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
                errors.append({"loc": ["delay"], "msg": "must be a number of seconds >= 0"})
            else:
                due = now + timedelta(seconds=seconds)
        elif run_at is not None:
            if not isinstance(run_at, datetime) or run_at.tzinfo is None:
                errors.append({"loc": ["run_at"], "msg": "must be a timezone-aware datetime"})
            else:
                due = run_at.astimezone(timezone.utc)
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
        ):
            errors.append({"loc": ["timeout"], "msg": "must be a number of seconds > 0"})
        if max_attempts is not None and (
            isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1
        ):
            errors.append({"loc": ["max_attempts"], "msg": "must be an integer >= 1"})
        if isinstance(tags, str) or not all(isinstance(t, str) for t in tags):
            errors.append({"loc": ["tags"], "msg": "must be a list of strings"})
        if errors:
            raise InvalidSubmission(errors)
        return due

    # -- observe -----------------------------------------------------------------------

    async def get(self, job_id: str) -> Job:
        """Raises: JobNotFound."""
        self._require_open()
        return await self.store.get(job_id)

    async def list(
        self,
        *,
        status: JobStatus | str | Iterable[JobStatus | str] | None = None,
        type: str | Iterable[str] | None = None,
        owner: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> Page:
        """Jobs, newest first, filtered; pass ``page.next_cursor`` for the next page."""
        self._require_open()
        if limit < 1:
            raise ValueError("limit must be at least 1")
        return await self.store.list(
            statuses=_statuses(status), types=_names(type), owner=owner, cursor=cursor, limit=limit
        )

    async def stats(self) -> Stats:
        """Counts per status, overall and per type."""
        self._require_open()
        return await self.store.stats()

    async def workers(self) -> builtins.list[WorkerInfo]:
        """The live workers of every process attached to the store, by id (a worker
        that died disappears once its lease has passed without a heartbeat)."""
        self._require_open()
        return await self.store.list_workers(now=self.clock())

    def seq_time(self, seq: int) -> datetime | None:
        """When the first event after ``seq`` happened, as far as this process knows
        (its oldest remembered event when ``seq`` is older); None before any event."""
        recent = self._recent
        if not recent:
            return None
        if seq < recent[0][0]:
            return recent[0][1]  # older than memory: everything since memory begins
        index = bisect.bisect_right(recent, (seq, datetime.max.replace(tzinfo=timezone.utc)))
        return recent[index][1] if index < len(recent) else self.clock()

    def subscribe(
        self,
        job_id: str | None = None,
        type: str | None = None,
        *,
        snapshot: bool = True,
        after_seq: int | None = None,
    ) -> Subscription:
        """Events of one job, one type, or the whole queue: current snapshots first
        (``job_snapshot`` events), then live events. A one-job subscription ends after
        the job's final event. Use as ``async for`` or ``async with ... as sub``.

        ``after_seq`` resumes a stream whose last event had that seq: the snapshot then
        also has the final event of each job that finished since (as far back as this
        process remembers, and among the newest 2000 finished jobs)."""
        self._require_open()
        return Subscription(self, job_id=job_id, type=type, snapshot=snapshot, after_seq=after_seq)

    async def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """Wait until the job is finished and return it.

        Raises:
            WaitTimeout: still live after ``timeout`` seconds. JobNotFound: no such job,
                or it was deleted while waiting.
        """
        with anyio.move_on_after(timeout if timeout is not None else float("inf")):
            async with self.subscribe(job_id) as events:
                async for event in events:
                    if event.job.status in TERMINAL:
                        return event.job
            raise JobNotFound(job_id)  # the stream ended without a final state: deleted
        assert timeout is not None
        raise WaitTimeout(job_id, timeout)

    # -- change ------------------------------------------------------------------------

    async def cancel(self, job_id: str) -> Job:
        """Cancel a job: at once when it waits, by cancelling its handler when it runs.

        Returns the job after the request (``cancel_requested`` set if it is running).

        Raises: IllegalTransition (it is finished), JobNotFound.
        """
        self._require_open()
        return await self.store.request_cancel(job_id, now=self.clock())

    async def delete(self, job_id: str, *, wait: float = 10.0) -> Job:
        """Delete a job, cancelling it first if it is live (a running job gets up to
        ``wait`` seconds to stop). Returns the job's last snapshot.

        Raises: JobNotFound, WaitTimeout (a running job did not stop in time).
        """
        self._require_open()
        job = await self.store.get(job_id)
        if not job.is_terminal:
            job = await self.store.request_cancel(job_id, now=self.clock())
            if not job.is_terminal:
                await self.wait(job_id, timeout=wait)
        return await self.store.delete(job_id, now=self.clock())

    async def purge(
        self,
        *,
        status: JobStatus | str | Iterable[JobStatus | str] | None = None,
        type: str | Iterable[str] | None = None,
        older_than: float | timedelta | None = None,
    ) -> int:
        """Delete finished jobs (all finished statuses by default); return how many.

        Raises: InvalidSubmission (a ValueError) when ``status`` names a live status.
        """
        self._require_open()
        statuses = _statuses(status) or list(TERMINAL)
        live = sorted(s.value for s in statuses if s not in TERMINAL)
        if live:
            raise InvalidSubmission(
                [{"loc": ["status"], "msg": f"only finished jobs can be purged, not {live}"}]
            )
        now = self.clock()
        if isinstance(older_than, int | float):
            older_than = timedelta(seconds=older_than)
        return await self.store.purge(
            now=now,
            statuses=statuses,
            types=_names(type),
            finished_before=None if older_than is None else now - older_than,
        )
