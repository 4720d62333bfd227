"""Worker: claims jobs, runs their handlers, renews leases, retries, shuts down gracefully."""

from __future__ import annotations

import enum
import functools
import logging
import os
import socket
import time
import traceback
from collections import deque
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, final

import anyio
import attrs

from . import joblog
from ._ulid import new_ulid
from .context import JobContext
from .errors import JobCancelled, JobNotFound, JobTimeout, LeaseLost
from .executors import Executor, HandlerFailed, process_context, run_in_process, run_in_thread
from .job import EventType, Job, JobError, JobEvent, JobStatus
from .jsonrules import clean_text, json_problems
from .registry import JobRegistry, JobType
from .stores.memory import MemoryStore
from .stores.protocol import Outcome, Store, WorkerInfo
from .supervision import Supervisor
from .tracing import attempt_span
from .tracing import enabled as tracing_enabled

__all__ = ["Worker", "WorkerConfig"]

#: Seconds a stopping worker gives the store to drop its registry record.
_UNREGISTER_TIMEOUT = 5.0

logger = logging.getLogger("asyncjobs.worker")
_jobs_log = joblog.logger

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


#: The outcome of every attempt that returned None: records are immutable, so one serves.
_COMPLETED = Outcome(JobStatus.COMPLETED)
#: Read off its class on Python 3.11 an enum member costs an EnumType.__getattr__ call.
_LOOP = Executor.LOOP


class _Stop(enum.Enum):
    CANCEL = "cancel"  # a user asked to cancel the job
    SHUTDOWN = "shutdown"  # the worker is stopping; requeue
    LOST = "lost"  # the lease was lost; someone else owns the job now


@attrs.define(eq=False)
class _Running:
    job: Job
    token: str
    ctx: JobContext
    # The cancel scope a halt cancels: the slot's scope while the attempt runs, else
    # None (a job not started yet is skipped by its slot; a finish is never cut by one).
    scope: anyio.CancelScope | None = None
    stop: _Stop | None = None
    finishing: bool = False  # the attempt is over; heartbeats would race the finish
    began: float = 0.0  # time.monotonic() at the attempt's start, for its log line
    finish_scope: anyio.CancelScope | None = None  # the shielded finish, while it runs
    # Its deadline, kept by the heartbeat loop; time.monotonic() is the asyncio loop's
    # clock, without the per-call async-library lookup of anyio.current_time().
    finish_by: float = float("inf")


def _clean(error: JobError) -> JobError:
    """An error from a child process, repaired like ours (see jsonrules.clean_text)."""
    tb = None if error.traceback is None else clean_text(error.traceback)
    return JobError(type=clean_text(error.type), message=clean_text(error.message), traceback=tb)


def _error_of(exc: BaseException) -> JobError:
    # Repaired, not refused: an error must always be storable (see jsonrules.clean_text).
    return JobError(
        type=type(exc).__qualname__,
        message=clean_text(str(exc)),
        traceback=clean_text(
            "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        ),
    )


@final
class Worker:
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
        self._running: dict[str, _Running] = {}
        self._registered_running: frozenset[str] = frozenset()
        # Claimed jobs waiting for a slot task, best first; idle slots wait on an event
        # each, and one is woken at a time (_wake_slot).
        self._ready: deque[_Running] = deque()
        self._idle: deque[anyio.Event] = deque()
        self._waking = 0  # slots woken that have not looked at _ready yet
        self._stopping = False
        self._changed = anyio.Event()  # a slot freed up or stop() was called
        self._waiting = False  # _wait_changed waits: the next _poke must set _changed
        self._idle_scope: anyio.CancelScope | None = None
        self._job_types: dict[str, JobType] = {}  # the registry's, as of run()
        # Exactly the memory store (not a wrapper or a subclass, which may await): each
        # of its calls runs to its end without suspending (see _finish).
        self._finish_never_suspends = type(store) is MemoryStore
        self._stopped = anyio.Event()
        self._hurry = False  # stop(now=True): skip what is left of the grace
        self._grace_scope: anyio.CancelScope | None = None
        # Prefetch state: the last claim came back full, and the running average of
        # attempt durations (None until an attempt has ended).
        self._deep = False
        self._avg_run: float | None = None

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

    def _poke(self) -> None:
        # The event is renewed by the waiter (_wait_changed), not here: a poke per
        # finished job would otherwise build an Event nobody waits on; and it is set
        # only while someone waits (a poke before the wait was accounted for).
        if self._waiting:
            self._waiting = False
            self._changed.set()
        if self._idle_scope is not None:
            self._idle_scope.cancel()

    async def _wait_changed(self) -> None:
        """Wait for the next :meth:`_poke`. Callers check their condition first, with
        no await in between, so a poke that came earlier has been accounted for."""
        if self._changed.is_set():
            self._changed = anyio.Event()
        self._waiting = True
        try:
            await self._changed.wait()
        finally:
            self._waiting = False

    def on_event(self, event: JobEvent) -> None:
        """React to store events: a cancel request for a job this worker runs."""
        if event.type is EventType.CANCEL_REQUESTED:
            running = self._running.get(event.job.id)
            if running is not None and running.stop is None:
                self._halt(running, _Stop.CANCEL)

    def _halt(self, running: _Running, why: _Stop) -> None:
        running.stop = why
        running.ctx._cancel()
        if running.scope is not None:
            running.scope.cancel()

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
            for _ in range(cfg.concurrency):
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
                for job in jobs:
                    assert job.lease is not None
                    stale = self._running.get(job.id)
                    if stale is not None and stale.stop is None:
                        # We still run it under a lease that ran out (renewals stalled):
                        # the store handed it out again, so that run is fenced off.
                        self._halt(stale, _Stop.LOST)
                    token = job.lease.token
                    ctx = JobContext(job, functools.partial(self._store_progress, job.id, token))
                    running = _Running(job, token, ctx)
                    self._running[job.id] = running
                    self._ready.append(running)
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
        held = len(self._running)
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
                self._halt(waiting, _Stop.SHUTDOWN)
            await self._end(waiting, None, None)
        grace = 0.0 if self._hurry else self.config.shutdown_grace
        with anyio.move_on_after(grace) as self._grace_scope:
            while self._running:
                await self._wait_changed()
        self._grace_scope = None
        for running in list(self._running.values()):
            if running.stop is None:
                self._halt(running, _Stop.SHUTDOWN)
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
                if running.stop is _Stop.LOST or running.finishing:
                    continue
                try:
                    job = await self.store.renew(
                        running.job.id, running.token, lease=self.config.lease, now=self.clock()
                    )
                except (LeaseLost, JobNotFound):
                    if running.finishing:
                        continue  # it ended while we were renewing: not a lost lease
                    logger.warning("lost the lease on job %s; abandoning it", running.job.id)
                    self._halt(running, _Stop.LOST)
                    continue
                except Exception as exc:  # the loop's edge: retry sooner, within the lease
                    delay = min(interval, self.supervisor.failed("heartbeat", exc))
                    break
                if job.cancel_requested and running.stop is None:
                    self._halt(running, _Stop.CANCEL)
            else:
                self.supervisor.recovered("heartbeat")

    def _cut_overdue_finishes(self) -> None:
        now = time.monotonic()
        for running in self._running.values():
            if running.finish_scope is not None and now >= running.finish_by:
                running.finish_scope.cancel()

    def _wake_slot(self) -> None:
        """Wake one idle slot for the jobs in ``_ready``, unless one is on its way.

        The slot that takes a job wakes the next while jobs are left (:meth:`_take`):
        a batch spreads over as many slots as its handlers need, and a slot whose
        handler never suspends runs job after job with no trip through the event loop
        and without waking every idle slot for nothing.
        """
        if not self._waking and self._idle:
            self._waking += 1
            self._idle.pop().set()  # the slot idle the shortest time: its frames are warm

    async def _take(self) -> _Running:
        """The next claimed job for a slot; waits until the claim loop hands one over."""
        ready = self._ready
        while not ready:
            event = anyio.Event()
            self._idle.append(event)
            try:
                await event.wait()
            except BaseException:  # cancelled: no longer idle, nor on its way
                if event.is_set():
                    self._waking -= 1
                else:
                    self._idle.remove(event)
                raise
            self._waking -= 1
        running = ready.popleft()
        if ready:
            self._wake_slot()
        return running

    async def _slot(self) -> None:
        """Run claimed jobs one after another until the worker's task group ends.

        The slot's cancel scope is shared by its jobs and renewed only after a halt
        cancelled it: a job that is neither halted nor timed enters no scope of its own.
        """
        current: _Running | None = None
        outcome: Outcome | None = None
        ready = self._ready
        traced = tracing_enabled()
        try:
            while True:
                with anyio.CancelScope() as scope:
                    while True:
                        if ready:
                            current = ready.popleft()
                            if ready and not self._waking:
                                self._wake_slot()
                        else:
                            current = await self._take()
                        outcome = None
                        # One level check per job while INFO is off (DEBUG is off then too);
                        # the end of a completed or cancelled attempt is logged at INFO.
                        info = _jobs_log.isEnabledFor(logging.INFO)
                        if info and _jobs_log.isEnabledFor(logging.DEBUG):
                            joblog.attempt_started(current.job)
                        current.began = time.monotonic()
                        if current.stop is None:  # halted while it waited for the slot
                            current.scope = scope
                            try:
                                if traced:
                                    outcome = await attempt_span(
                                        current.job, functools.partial(self._attempt, current)
                                    )
                                else:
                                    outcome = await self._attempt(current)
                            finally:
                                current.scope = None
                        # Only a halt (which sets ``stop`` first) cancels the slot's scope.
                        if current.stop is not None and scope.cancel_called:
                            break  # a halt landed as the attempt ended: leave the scope
                        running, current = current, None
                        if running.stop is not None or outcome is None:
                            await self._end(running, outcome, scope)
                            continue
                        # _end's common case inline (an attempt that returned its outcome,
                        # not halted): a coroutine less per job.
                        ended = time.monotonic()
                        took = ended - running.began
                        avg = self._avg_run
                        self._avg_run = took if avg is None else avg + (took - avg) * 0.1
                        running.finishing = True
                        running.finish_by = ended + self.config.finish_timeout
                        try:
                            await self._finish(running, outcome, scope)
                            if info or outcome.status not in joblog.QUIET_STATUSES:
                                joblog.attempt_ended(running.job, outcome, took)
                        finally:
                            # _release(), inline
                            if self._running.get(running.job.id) is running:
                                del self._running[running.job.id]
                            if self._waiting:
                                self._poke()
                # The slot's scope was cancelled by a halt of ``current``.
                if current is not None:
                    running, current = current, None
                    await self._end(running, outcome, None)
        finally:
            # The worker itself is being cancelled: give the job back rather than
            # leave it to lease expiry.
            if current is not None:
                await self._end(current, outcome, None)

    async def _end(
        self, running: _Running, outcome: Outcome | None, scope: anyio.CancelScope | None
    ) -> None:
        """Decide an attempt's outcome from how it ended and store it."""
        # A cancel that lands as the handler returns still wins: a job the user
        # cancelled never turns up completed afterwards.
        if running.stop is _Stop.CANCEL:
            outcome = Outcome(JobStatus.CANCELLED)
        elif running.stop is _Stop.SHUTDOWN:
            outcome = Outcome(JobStatus.QUEUED)
        elif running.stop is _Stop.LOST:
            outcome = None
        elif outcome is None:  # cancelled from outside (the host): requeue
            outcome = Outcome(JobStatus.QUEUED)
        took = 0.0
        ended = time.monotonic()
        if running.began:  # it started (a job given back unstarted says nothing)
            took = ended - running.began
            avg = self._avg_run
            self._avg_run = took if avg is None else avg + (took - avg) * 0.1
        running.finishing = True
        try:
            if outcome is not None:
                running.finish_by = ended + self.config.finish_timeout
                await self._finish(running, outcome, scope)
            if (
                outcome is None
                or outcome.status not in joblog.QUIET_STATUSES
                or _jobs_log.isEnabledFor(logging.INFO)
            ):
                joblog.attempt_ended(running.job, outcome, took)
        finally:
            self._release(running)

    def _release(self, running: _Running) -> None:
        """The attempt is over and its end stored (or given up): free its place."""
        if self._running.get(running.job.id) is running:  # not a later claim's entry
            del self._running[running.job.id]
        self._poke()

    async def _attempt(self, running: _Running) -> Outcome | None:
        job = running.job
        job_type = self._job_types.get(job.type) or self.registry.get(job.type)
        timer: anyio.CancelScope | None = None
        try:
            if job.timeout is None:  # no timer: one cancel scope less on the hot path
                if job_type.executor is _LOOP:  # _call inline: a coroutine less
                    result = await job_type.handler(running.ctx, job_type.structure(job.params))
                else:
                    result = await self._call(job_type, running)
            else:
                with anyio.move_on_after(job.timeout) as timer:
                    result = await self._call(job_type, running)
                if timer.cancel_called:
                    return self._timed_out(job)
            # Fail here, with the handler's name on it, not in a store; the same rules as
            # a submission, so no store holds a result that another could not read back.
            if result is not None and (problems := json_problems(result, ["result"])):
                # TypeError for what is not JSON at all (a set, an object), as json.dumps.
                kind = TypeError if any("JSON value" in p["msg"] for p in problems) else ValueError
                raise kind(f"the handler returned a value no store can hold: {problems}")
            return _COMPLETED if result is None else Outcome(JobStatus.COMPLETED, result=result)
        except LeaseLost:
            running.stop = _Stop.LOST
            return None
        except JobCancelled:
            # A thread told to stop by its timer raises this: that is still a timeout.
            if timer is not None and timer.cancel_called:
                return self._timed_out(job)
            return Outcome(JobStatus.CANCELLED)
        except Exception as exc:  # the job boundary: any handler error fails the attempt
            if running.stop is not None:
                return None  # an exception raised while being halted: the halt decides
            if timer is not None and timer.cancel_called:
                return self._timed_out(job)
            error = _clean(exc.error) if isinstance(exc, HandlerFailed) else _error_of(exc)
            return self._failure(job_type, job, error)

    def _timed_out(self, job: Job) -> Outcome:
        assert job.timeout is not None
        exc = JobTimeout(f"job {job.id} exceeded its timeout of {job.timeout:g}s")
        # Final, not retried: an attempt that overran its limit would most likely
        # overrun it again, and each retry would hold a slot that long.
        return Outcome(JobStatus.FAILED, error=_error_of(exc))

    async def _call(self, job_type: JobType, running: _Running) -> Any:
        job = running.job
        if job_type.executor is Executor.PROCESS:
            return await run_in_process(
                job_type.handler, running.ctx, job, job_type.params_cls, self._processes
            )
        params = job_type.structure(job.params)
        if job_type.executor is Executor.THREAD:
            return await run_in_thread(job_type.handler, running.ctx, params, self._threads)
        return await job_type.handler(running.ctx, params)

    def _failure(self, job_type: JobType, job: Job, error: JobError) -> Outcome:
        if job.attempts < job.max_attempts:
            delay = job_type.backoff.delay(job.attempts)
            return Outcome(
                JobStatus.SCHEDULED, error=error, run_at=self.clock() + timedelta(seconds=delay)
            )
        return Outcome(JobStatus.FAILED, error=error)

    async def _finish(
        self, running: _Running, outcome: Outcome, scope: anyio.CancelScope | None
    ) -> None:
        """Store the end of an attempt, retrying while the store fails, for at most
        ``finish_timeout`` seconds; shielded, so a shutdown does not lose it.

        ``scope`` is the slot's own (active, uncancelled) scope: shielding it for the
        finish saves a scope per job. Without one, a shielded scope of its own is used.
        The deadline is kept by the heartbeat loop (:meth:`_cut_overdue_finishes`),
        not by a timer per finish: on a fast store a timer costs a sixth of a job.
        The caller has set ``running.finish_by``.
        """
        if scope is None:
            with anyio.CancelScope(shield=True) as running.finish_scope:
                if await self._store_end(running, outcome):
                    return
        else:
            running.finish_scope = scope
            # The memory store's calls never suspend, so no cancellation can land inside
            # its finish: the shield (two toggles, 3% of a no-op job) guards only what may
            # suspend, a retry's sleep.
            shielded = not self._finish_never_suspends
            if shielded:
                scope.shield = True
            try:
                # The first try inline: a coroutine less per job on the common path.
                try:
                    await self.store.finish(
                        running.job.id, running.token, outcome, now=self.clock()
                    )
                except (LeaseLost, JobNotFound):
                    self._log_lost_finish(running, outcome)
                    return
                except Exception as exc:  # the finish's edge: retry while time is left
                    if not shielded:
                        scope.shield = shielded = True
                    if await self._store_end(running, outcome, exc):
                        return
                else:
                    self.supervisor.recovered("finish")
                    return
            except anyio.get_cancelled_exc_class():
                if scope.cancel_called:  # cut off by the heartbeat loop
                    self._log_unstored(running, outcome)
                raise
            finally:
                if shielded:
                    scope.shield = False
                running.finish_scope = None
        # Only a passed deadline gets here: cut off by the heartbeat loop, or out of time.
        self._log_unstored(running, outcome)

    async def _store_end(
        self, running: _Running, outcome: Outcome, failed: Exception | None = None
    ) -> bool:
        """Try to store the end until it is stored (True) or time is up (False);
        ``failed`` is the error of a first try made by the caller."""
        job_id = running.job.id
        while True:
            if failed is not None:
                delay = self.supervisor.failed("finish", failed)
                left = running.finish_by - time.monotonic()
                if left <= 0:
                    return False
                await anyio.sleep(min(delay, left))
            try:
                await self.store.finish(job_id, running.token, outcome, now=self.clock())
            except (LeaseLost, JobNotFound):
                self._log_lost_finish(running, outcome)
                return True
            except Exception as exc:  # the finish's edge: retry while time is left
                failed = exc
                continue
            self.supervisor.recovered("finish")
            return True

    def _log_lost_finish(self, running: _Running, outcome: Outcome) -> None:
        logger.warning(
            "job %s ended (%s) after this worker lost its lease; the new holder decides",
            running.job.id,
            outcome.status.value,
        )

    def _log_unstored(self, running: _Running, outcome: Outcome) -> None:
        logger.error(
            "could not store the end (%s) of job %s within %gs; it is left to lease "
            "expiry and will run again",
            outcome.status.value,
            running.job.id,
            self.config.finish_timeout,
        )
