"""Worker: claims jobs, runs their handlers, renews leases, retries, shuts down gracefully."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial
from typing import final

import anyio
import attrs

from . import joblog
from ._slots import Running, Slots, Stop, spans_for_all
from ._ulid import new_ulid
from .context import JobContext
from .errors import JobNotFound, LeaseLost
from .executors import process_context
from .job import EventType, JobEvent
from .registry import JobRegistry, JobType
from .stores.memory import MemoryStore
from .stores.protocol import Store, WorkerInfo
from .supervision import Supervisor

__all__ = ["Worker", "WorkerConfig"]

#: Seconds a stopping worker gives the store to drop its registry record.
_UNREGISTER_TIMEOUT = 5.0
#: Seconds between looks for an OpenTelemetry SDK while none is installed: the lookup
#: reads os.environ, and once per claimed batch it cost 3% of a no-op job.
_SPANS_RECHECK = 1.0

logger = logging.getLogger("asyncjobs.worker")

#: Seconds between registry refreshes while the set of running jobs keeps changing.
REGISTRY_REFRESH = 1.0

#: Claims go ahead of the free slots only while this worker's attempts take less than
#: this many seconds on average: a job claimed ahead waits for a slot, and must not wait
#: behind long jobs while another worker is idle.
PREFETCH_BELOW = 0.05


@attrs.frozen
class WorkerConfig:
    """How a worker runs jobs.

    Attributes:
        concurrency: Jobs this process runs at once (0: run none, only submit/observe).
        lease: Seconds a claim lasts without renewal; a crashed worker's jobs are
            recovered this long after its last heartbeat.
        heartbeat: Seconds between lease renewals (default ``lease / 3``).
        shutdown_grace: Seconds running jobs get to finish on shutdown before they are
            cancelled and requeued.
        idle_wait: Longest wait for a store wake-up before claiming again (a safety net
            against a lost wake-up; idle workers do not poll faster than this).
        finish_timeout: Seconds the worker keeps trying to store the end of an attempt
            (retrying while the store fails); after that the job is left to lease
            expiry, so that a store that never answers cannot hang a shutdown (checked
            at each heartbeat: a hanging finish is cut off up to one interval late).
        shutdown_timeout: Seconds a shutdown that must hurry (the host was cancelled,
            or the grace is over) waits for halted handlers to return and their ends
            to be stored, before it gives up on them (logged; lease expiry recovers
            their jobs).
        prefetch: Jobs claimed ahead of the free slots while the queue is deep (the
            last claim came back full) and jobs are short (attempts average under
            ``PREFETCH_BELOW`` seconds), so that a slot never waits for a claim's round
            trip and claims come in batches. A job claimed ahead is running and leased
            (renewed with the others) while it waits for a slot; a stopping worker gives
            it back at once. ``None``: as many as ``concurrency``; 0: never.
    """

    concurrency: int = attrs.field(default=3, validator=attrs.validators.ge(0))
    lease: float = attrs.field(default=30.0, validator=attrs.validators.gt(0))
    heartbeat: float | None = None
    shutdown_grace: float = attrs.field(default=10.0, validator=attrs.validators.ge(0))
    idle_wait: float = attrs.field(default=5.0, validator=attrs.validators.gt(0))
    finish_timeout: float = attrs.field(default=30.0, validator=attrs.validators.gt(0))
    shutdown_timeout: float = attrs.field(default=30.0, validator=attrs.validators.gt(0))
    prefetch: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.ge(0))
    )

    @property
    def heartbeat_interval(self) -> float:
        return self.heartbeat if self.heartbeat is not None else self.lease / 3

    @property
    def prefetch_count(self) -> int:
        return self.prefetch if self.prefetch is not None else self.concurrency


@final
class Worker(Slots):
    """Runs jobs of a registry from a store. Normally owned by a :class:`Queue`."""

    def __init__(
        self,
        store: Store,
        registry: JobRegistry,
        config: WorkerConfig,
        clock: Callable[[], datetime],
        supervisor: Supervisor | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.config = config
        self.clock = clock
        self.supervisor = supervisor if supervisor is not None else Supervisor()
        # Sync handlers run on threads of their own limiter, never anyio's shared one.
        self._threads = anyio.CapacityLimiter(max(config.concurrency, 1))
        self._processes = process_context()
        self.host = socket.gethostname()
        self.id = f"{self.host}:{os.getpid()}:{new_ulid()[-8:]}"
        self.started_at = clock()
        self._running: dict[str, Running] = {}
        self._registered_running: frozenset[str] = frozenset()
        # Claimed jobs waiting for a slot task, best first; idle slots wait on an event
        # each, and one is woken at a time (_wake_slot).
        self._ready: deque[Running] = deque()
        self._idle: deque[asyncio.Future[None]] = deque()
        self._waking = 0  # slots woken that have not looked at _ready yet
        self._attempting = 0  # slots running an attempt (at most concurrency)
        self._stopping = False
        self._changed: asyncio.Future[None] | None = None  # while _wait_changed waits
        self._waiting = False  # _wait_changed waits: the next _poke must resolve _changed
        self._idle_scope: anyio.CancelScope | None = None
        self._job_types: dict[str, JobType] = {}  # the registry's, as of run()
        # Exactly the memory store (not a wrapper or a subclass, which may await): each
        # of its calls runs to its end without suspending (see _finish).
        self._finish_never_suspends = type(store) is MemoryStore
        # True at first: the supervisor may be shared with an earlier worker of the queue.
        self._finish_trouble = True
        self._stopped = anyio.Event()
        self._hurry = False  # stop(now=True): skip what is left of the grace
        self._grace_scope: anyio.CancelScope | None = None
        # Prefetch state: the last claim came back full, and the running average of
        # attempt durations (None until an attempt has ended).
        self._deep = False
        self._avg_run: float | None = None
        self._spans_for_all = False  # looked up by the claim loop (_slots.spans_for_all)
        self._log_info = False  # whether the jobs log is at INFO, kept by the claim loop
        self._spans_checked_by = 0.0  # time.monotonic() of the next look while False

    @property
    def running_count(self) -> int:
        return len(self._running)

    def running_ids(self) -> list[str]:
        return list(self._running)

    def stop(self, *, now: bool = False) -> None:
        """Stop claiming; :meth:`run` then drains the running jobs and returns.

        Args:
            now: Halt the running jobs at once (they are requeued) rather than give
                them the shutdown grace first.
        """
        self._stopping = True
        if now:
            self._hurry = True
            if self._grace_scope is not None:
                self._grace_scope.cancel()
        self._poke()

    def on_event(self, event: JobEvent) -> None:
        """React to store events: a cancel request for a job this worker runs."""
        if event.type is EventType.CANCEL_REQUESTED:
            running = self._running.get(event.job.id)
            if running is not None and running.stop is None:
                self._halt(running, Stop.CANCEL)

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Claim and run jobs until :meth:`stop`, then drain gracefully."""
        try:
            await self._run(task_status)
        finally:
            # Set even when the host cancels us mid-drain, so Queue.aclose never hangs.
            self._stopped.set()

    async def _run(self, task_status: anyio.abc.TaskStatus[None]) -> None:
        cfg = self.config
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._heartbeat_loop)
            tg.start_soon(self._registry_loop)
            # Long-lived slot tasks: a task (and its cancel scope) per job costs more
            # than a no-op job itself.
            # Twice as many slots as turns where a finish may wait on the store: a slot
            # storing its job's end has given its turn to the next job (see _slots).
            for _ in range(cfg.concurrency * (1 if self._finish_never_suspends else 2)):
                tg.start_soon(self._slot)
            task_status.started()
            types = self.registry.names()
            self._job_types = {name: self.registry.get(name) for name in types}
            while not self._stopping:
                free = self._claim_limit()
                if free <= 0:
                    await self._wait_changed()
                    continue
                # Read before the claim: a wake-up that lands while the claim is on its
                # way back moves the generation on, and the wait below returns at once.
                generation = self.store.work_generation()
                try:
                    jobs = await self.store.claim(
                        self.id,
                        types=types,
                        limit=free,
                        lease=cfg.lease,
                        now=self.clock(),
                        type_limits=self.registry.concurrency_limits(),
                    )
                except Exception as exc:  # the loop's edge: an outage must not end it
                    await self._pause(self.supervisor.failed("claim", exc))
                    continue
                self.supervisor.recovered("claim")
                self._deep = len(jobs) >= free
                if jobs and not self._spans_for_all:
                    # An SDK, once installed, stays (OpenTelemetry sets its provider once);
                    # until then, looked for at most once a _SPANS_RECHECK per worker.
                    clock = time.monotonic()
                    if clock >= self._spans_checked_by:
                        self._spans_for_all = spans_for_all()
                        self._spans_checked_by = clock + _SPANS_RECHECK
                if jobs:
                    # The jobs log's level, read once per claimed batch, not once per job.
                    self._log_info = joblog.logger.isEnabledFor(logging.INFO)
                running_jobs, ready, progress = self._running, self._ready, self._store_progress
                for job in jobs:
                    lease = job.lease
                    assert lease is not None
                    stale = running_jobs.get(job.id)
                    if stale is not None and stale.stop is None:
                        # We still run it under a lease that ran out (renewals stalled):
                        # the store handed it out again, so that run is fenced off.
                        self._halt(stale, Stop.LOST)
                    token = lease.token
                    running = Running(job, token, JobContext(job, partial(progress, job.id, token)))
                    running_jobs[job.id] = running
                    ready.append(running)
                if jobs:
                    self._wake_slot()
                elif not self._stopping:  # stop() during the claim: no wait
                    with anyio.CancelScope() as self._idle_scope:
                        try:
                            await self.store.wait_for_work(cfg.idle_wait, since=generation)
                        except Exception as exc:  # a notifier outage: claim on a timer
                            await anyio.sleep(min(self.supervisor.failed("wake", exc), 1.0))
                        else:
                            self.supervisor.recovered("wake")
                    self._idle_scope = None
            await self._drain()
            tg.cancel_scope.cancel()
        with anyio.move_on_after(_UNREGISTER_TIMEOUT, shield=True):
            await self._unregister()

    def _claim_limit(self) -> int:
        """How many jobs the next claim may take: the free slots, plus the prefetch
        while the queue is deep and jobs are short. Claiming ahead waits until half the
        prefetch is used, so that claims come in batches rather than one per finish."""
        # Jobs waiting for a turn or in one; those whose end is being stored are not
        # counted (their turn went to the next job).
        held = len(self._ready) + self._attempting
        slots = self.config.concurrency
        ahead = self.config.prefetch_count
        avg = self._avg_run
        if ahead and self._deep and avg is not None and avg < PREFETCH_BELOW:
            return 0 if held > slots + ahead // 2 else slots + ahead - held
        return slots - held

    def info(self) -> WorkerInfo:
        """This worker's registry record as of now."""
        now = self.clock()
        self._registered_running = frozenset(self._running)
        return WorkerInfo(
            id=self.id,
            host=self.host,
            pid=os.getpid(),
            types=tuple(self.registry.names()),
            slots=self.config.concurrency,
            running=tuple(self._running),
            started_at=self.started_at,
            last_heartbeat=now,
            expires_at=now + timedelta(seconds=self.config.lease),
        )

    async def _register(self) -> None:
        # The registry is for operators to look at: a failure to refresh it must never
        # stop jobs from running, so it is logged and retried with the next heartbeat.
        try:
            await self.store.register_worker(self.info())
        except Exception:  # the registry's edge: any store error
            logger.warning("could not refresh worker %s in the registry", self.id, exc_info=True)

    async def _registry_loop(self) -> None:
        # The heartbeat refreshes the record every lease/3 (10 s by default): too slow for
        # a dashboard showing which slots are busy. Re-register when the running set has
        # changed, at most once per REGISTRY_REFRESH, so the write stays off the hot path.
        while True:
            await anyio.sleep(REGISTRY_REFRESH)
            if frozenset(self._running) != self._registered_running:
                await self._register()

    async def _unregister(self) -> None:
        try:
            await self.store.remove_worker(self.id)
        except Exception:  # the registry's edge: the record then expires with its lease
            logger.warning("could not remove worker %s from the registry", self.id, exc_info=True)

    async def _pause(self, seconds: float) -> None:
        """Sleep between retries; :meth:`stop` ends the sleep early."""
        with anyio.CancelScope() as self._idle_scope:
            await anyio.sleep(seconds)
        self._idle_scope = None

    async def wait_stopped(self) -> None:
        """Wait until :meth:`run` has drained and returned."""
        await self._stopped.wait()

    async def _drain(self) -> None:
        # Jobs claimed ahead and not started yet go back at once, not after the grace.
        while self._ready:
            waiting = self._ready.popleft()
            if waiting.stop is None:
                self._halt(waiting, Stop.SHUTDOWN)
            await self._end(waiting, None, None)
        grace = 0.0 if self._hurry else self.config.shutdown_grace
        with anyio.move_on_after(grace) as self._grace_scope:
            while self._running:
                await self._wait_changed()
        self._grace_scope = None
        for running in list(self._running.values()):
            if running.stop is None:
                self._halt(running, Stop.SHUTDOWN)
        while self._running:
            await self._wait_changed()

    async def _store_progress(
        self, job_id: str, token: str, fraction: float, message: str | None
    ) -> None:
        """A job's progress sink (bound to its id and token with functools.partial)."""
        try:
            await self.store.set_progress(job_id, token, fraction, message, now=self.clock())
        except (LeaseLost, JobNotFound):
            raise
        except Exception as exc:
            # Progress is advisory: an outage drops this update (the next one
            # carries the newest state) rather than failing the job.
            self.supervisor.failed("progress", exc)
        else:
            self.supervisor.recovered("progress")

    async def _heartbeat_loop(self) -> None:
        interval = self.config.heartbeat_interval
        delay = interval
        await self._register()  # here, not before run() starts: a slow store delays nothing
        while True:
            await anyio.sleep(delay)
            delay = interval
            self._cut_overdue_finishes()
            await self._register()
            for running in list(self._running.values()):
                # A halted job keeps its lease until its body has returned: a thread
                # runs on after a cancel, and nobody else may start the job meanwhile.
                if running.stop is Stop.LOST or running.finishing:
                    continue
                try:
                    job = await self.store.renew(
                        running.job.id, running.token, lease=self.config.lease, now=self.clock()
                    )
                except (LeaseLost, JobNotFound):
                    if running.finishing:
                        continue  # it ended while we were renewing: not a lost lease
                    logger.warning("lost the lease on job %s; abandoning it", running.job.id)
                    self._halt(running, Stop.LOST)
                    continue
                except Exception as exc:  # the loop's edge: retry sooner, within the lease
                    delay = min(interval, self.supervisor.failed("heartbeat", exc))
                    break
                if job.cancel_requested and running.stop is None:
                    self._halt(running, Stop.CANCEL)
            else:
                self.supervisor.recovered("heartbeat")

    def _cut_overdue_finishes(self) -> None:
        now = time.monotonic()
        for running in self._running.values():
            if running.finish_scope is not None and now >= running.finish_by:
                running.finish_scope.cancel()
