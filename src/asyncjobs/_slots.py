"""The worker's slots: long-lived tasks that run claimed attempts and store their ends.

:class:`Slots` is the half of :class:`~asyncjobs.worker.Worker` that runs jobs: the
hand-off from the claim loop (one idle slot woken at a time), an attempt with its
timeout and its error handling, and the shielded, retried finish. The claim loop, the
heartbeat and the registry stay in ``worker.py``; ``Worker.__init__`` sets up the state
declared here.

At most ``concurrency`` slots run an attempt at once (``_attempting``). On a store whose
finish may wait for a round trip, the worker runs twice as many slot tasks, and a slot
gives up its turn when its attempt ends, before its finish is stored: another slot
starts the next job meanwhile, as a worker that buffers its completions would, and the
store sees the finishes of the moment together (its lease covers the job until its end
is stored). A store whose calls never suspend runs one slot task per turn.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import time
import traceback
from collections import deque
from collections.abc import Callable
from datetime import datetime, timedelta
from multiprocessing.context import BaseContext
from typing import TYPE_CHECKING, Any

import anyio
import attrs

from . import joblog
from .context import JobContext
from .errors import JobCancelled, JobNotFound, JobTimeout, LeaseLost
from .executors import Executor, HandlerFailed, run_in_process, run_in_thread
from .job import Job, JobError, JobStatus
from .jsonrules import clean_text, json_problems
from .registry import JobRegistry, JobType
from .stores.protocol import Outcome, Store
from .supervision import Supervisor
from .tracing import _otel, attempt_span

if TYPE_CHECKING:
    from .worker import WorkerConfig

__all__ = ["Running", "Slots", "Stop"]

logger = logging.getLogger("asyncjobs.worker")
_jobs_log = joblog.logger

#: The outcome of every attempt that returned None: records are immutable, so one serves.
_COMPLETED = Outcome(JobStatus.COMPLETED)
#: Read off its class on Python 3.11 an enum member costs an EnumType.__getattr__ call.
_LOOP = Executor.LOOP


class Stop(enum.Enum):
    CANCEL = "cancel"  # a user asked to cancel the job
    SHUTDOWN = "shutdown"  # the worker is stopping; requeue
    LOST = "lost"  # the lease was lost; someone else owns the job now


@attrs.define(eq=False)
class Running:
    job: Job
    token: str
    ctx: JobContext
    # The cancel scope a halt cancels: the slot's scope while the attempt runs, else
    # None (a job not started yet is skipped by its slot; a finish is never cut by one).
    scope: anyio.CancelScope | None = None
    stop: Stop | None = None
    finishing: bool = False  # the attempt is over; heartbeats would race the finish
    began: float = 0.0  # time.monotonic() at the attempt's start, for its log line
    finish_scope: anyio.CancelScope | None = None  # the shielded finish, while it runs
    # Its deadline, kept by the heartbeat loop; time.monotonic() is the asyncio loop's
    # clock, without the per-call async-library lookup of anyio.current_time().
    finish_by: float = float("inf")


def spans_for_all() -> bool:
    """Whether an attempt whose job carries no trace context still gets a span: an
    OpenTelemetry SDK is installed (the API's proxy provider no longer stands in).
    Without it :func:`~asyncjobs.tracing.attempt_span` would only call the attempt."""
    otel = _otel()
    if otel is None:
        return False
    trace = otel[0]
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


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


class Slots:
    """Runs claimed jobs on ``concurrency`` long-lived slot tasks (mixed into Worker)."""

    # Set up by Worker.__init__.
    store: Store
    registry: JobRegistry
    config: WorkerConfig
    clock: Callable[[], datetime]
    supervisor: Supervisor
    _threads: anyio.CapacityLimiter
    _processes: BaseContext
    _running: dict[str, Running]
    # Claimed jobs waiting for a slot task, best first; idle slots wait on a future
    # each, and one is woken at a time (_wake_slot).
    _ready: deque[Running]
    _idle: deque[asyncio.Future[None]]
    _waking: int  # slots woken that have not looked at _ready yet
    _attempting: int  # slots running an attempt: at most config.concurrency
    _avg_run: float | None  # the running average of attempt durations
    # spans_for_all(), looked up by the claim loop once per claim rather than per job:
    # the provider lookup reads os.environ each time (a tenth of a no-op job).
    _spans_for_all: bool
    _log_info: bool
    _job_types: dict[str, JobType]  # the registry's, as of run()
    _finish_never_suspends: bool
    # The supervisor may hold a failed finish (set before each supervisor.failed call):
    # a finish that succeeds reports its recovery only then, not once per job.
    _finish_trouble: bool
    _changed: asyncio.Future[None] | None  # what _wait_changed waits on, while it does
    _waiting: bool  # _wait_changed waits: the next _poke must resolve _changed
    _idle_scope: anyio.CancelScope | None

    def _poke(self) -> None:
        # The future is made by the waiter (_wait_changed), not here: a poke per
        # finished job would otherwise build one nobody waits on; and it is resolved
        # only while someone waits (a poke before the wait was accounted for).
        if self._waiting:
            self._waiting = False
            changed = self._changed
            if changed is not None and not changed.done():
                changed.set_result(None)
        if self._idle_scope is not None:
            self._idle_scope.cancel()

    async def _wait_changed(self) -> None:
        """Wait for the next :meth:`_poke`. Callers check their condition first, with
        no await in between, so a poke that came earlier has been accounted for.

        A bare future of the running loop, not an ``anyio.Event``: building one of those
        goes through the async-library lookup, a dozen calls per wait."""
        changed = self._changed = asyncio.get_running_loop().create_future()
        self._waiting = True
        try:
            await changed
        finally:
            self._waiting = False
            self._changed = None

    def _halt(self, running: Running, why: Stop) -> None:
        running.stop = why
        running.ctx._cancel()
        if running.scope is not None:
            running.scope.cancel()

    def _wake_slot(self) -> None:
        """Wake one idle slot for the jobs in ``_ready``, unless one is on its way.

        The slot that takes a job wakes the next while jobs are left (:meth:`_take`):
        a batch spreads over as many slots as its handlers need, and a slot whose
        handler never suspends runs job after job with no trip through the event loop
        and without waking every idle slot for nothing.
        """
        if not self._waking and self._attempting < self.config.concurrency:
            idle = self._idle
            while idle:
                waiter = idle.pop()  # the slot idle the shortest time: its frames are warm
                if not waiter.done():  # not cancelled (its slot is leaving)
                    self._waking += 1
                    waiter.set_result(None)
                    return

    async def _take(self) -> Running:
        """The next claimed job for a slot and a turn to run it; waits until the claim
        loop hands one over and fewer than ``concurrency`` attempts run."""
        ready = self._ready
        turns = self.config.concurrency
        while not ready or self._attempting >= turns:
            # A bare future, as in _wait_changed.
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._idle.append(waiter)
            try:
                await waiter
            except BaseException:  # cancelled: no longer idle, nor on its way
                if waiter.done() and not waiter.cancelled():
                    self._waking -= 1  # woken, and cancelled before it looked
                elif waiter in self._idle:  # (_wake_slot drops a cancelled one)
                    self._idle.remove(waiter)
                raise
            self._waking -= 1
        running = ready.popleft()
        self._attempting += 1
        if ready:
            self._wake_slot()
        return running

    def _attempt_over(self) -> None:
        """A slot's attempt ended: its turn goes to the next job before its finish is
        stored, unless the store's finish never suspends (the slot then takes the next
        job itself, at once, without waking another)."""
        self._attempting -= 1
        if not self._finish_never_suspends:
            if self._ready and not self._waking:
                self._wake_slot()
            if self._waiting:
                self._poke()  # the claim loop counts turns, not finishes

    async def _slot(self) -> None:
        """Run claimed jobs one after another until the worker's task group ends.

        The slot's cancel scope is shared by its jobs and renewed only after a halt
        cancelled it: a job that is neither halted nor timed enters no scope of its own.
        """
        current: Running | None = None
        outcome: Outcome | None = None
        ready = self._ready
        turns = self.config.concurrency
        never_suspends = self._finish_never_suspends
        store, clock = self.store, self.clock
        try:
            while True:
                with anyio.CancelScope() as scope:
                    while True:
                        if ready and self._attempting < turns:
                            current = ready.popleft()
                            self._attempting += 1
                            if ready and not self._waking:
                                self._wake_slot()
                        else:
                            current = await self._take()
                        outcome = None
                        try:
                            # The level as of the job's claim (read once per batch): while
                            # INFO is off DEBUG is off too, and the end of a completed or
                            # cancelled attempt is at INFO.
                            info = self._log_info
                            if info and _jobs_log.isEnabledFor(logging.DEBUG):
                                joblog.attempt_started(current.job)
                            current.began = time.monotonic()
                            if current.stop is None:  # halted while it waited for the slot
                                current.scope = scope
                                if current.job.trace is not None or self._spans_for_all:
                                    outcome = await attempt_span(
                                        current.job, functools.partial(self._attempt, current)
                                    )
                                else:
                                    outcome = await self._attempt(current)
                        finally:
                            current.scope = None
                            if never_suspends:  # _attempt_over(), inline
                                self._attempting -= 1
                            else:
                                self._attempt_over()
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
                            if never_suspends:
                                # _finish's first try inline on the memory store: its
                                # calls never suspend, so there is nothing to shield.
                                try:
                                    await store.finish(
                                        running.job.id, running.token, outcome, now=clock()
                                    )
                                except Exception as exc:  # the finish's edge, as in _finish
                                    await self._finish(running, outcome, scope, exc)
                                else:
                                    if self._finish_trouble:
                                        self._recovered_finish()
                            else:
                                await self._finish(running, outcome, scope)
                            if info or outcome.status not in joblog.QUIET_STATUSES:
                                joblog.attempt_ended(running.job, outcome, took)
                        finally:
                            # _release(), inline
                            if self._running.get(running.job.id) is running:
                                del self._running[running.job.id]
                            if self._waiting or self._idle_scope is not None:
                                self._poke()  # only when the claim loop waits
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
        self, running: Running, outcome: Outcome | None, scope: anyio.CancelScope | None
    ) -> None:
        """Decide an attempt's outcome from how it ended and store it."""
        # A cancel that lands as the handler returns still wins: a job the user
        # cancelled never turns up completed afterwards.
        if running.stop is Stop.CANCEL:
            outcome = Outcome(JobStatus.CANCELLED)
        elif running.stop is Stop.SHUTDOWN:
            outcome = Outcome(JobStatus.QUEUED)
        elif running.stop is Stop.LOST:
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

    def _release(self, running: Running) -> None:
        """The attempt is over and its end stored (or given up): free its place."""
        if self._running.get(running.job.id) is running:  # not a later claim's entry
            del self._running[running.job.id]
        self._poke()

    async def _attempt(self, running: Running) -> Outcome | None:
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
            running.stop = Stop.LOST
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

    async def _call(self, job_type: JobType, running: Running) -> Any:
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
        self,
        running: Running,
        outcome: Outcome,
        scope: anyio.CancelScope | None,
        failed: Exception | None = None,
    ) -> None:
        """Store the end of an attempt, retrying while the store fails, for at most
        ``finish_timeout`` seconds; shielded, so a shutdown does not lose it.

        ``scope`` is the slot's own (active, uncancelled) scope: shielding it for the
        finish saves a scope per job. Without one, a shielded scope of its own is used.
        The deadline is kept by the heartbeat loop (:meth:`_cut_overdue_finishes`),
        not by a timer per finish: on a fast store a timer costs a sixth of a job.
        The caller has set ``running.finish_by``; ``failed`` is the error of a first try
        the caller made itself (with ``scope``).
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
                if failed is None:
                    # The first try inline: a coroutine less per job on the common path.
                    try:
                        await self.store.finish(
                            running.job.id, running.token, outcome, now=self.clock()
                        )
                    except Exception as exc:  # the finish's edge: retry while time is left
                        failed = exc
                    else:
                        if self._finish_trouble:
                            self._recovered_finish()
                        return
                if isinstance(failed, (LeaseLost, JobNotFound)):
                    self._log_lost_finish(running, outcome)
                    return
                if not shielded:
                    scope.shield = shielded = True
                if await self._store_end(running, outcome, failed):
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
        self, running: Running, outcome: Outcome, failed: Exception | None = None
    ) -> bool:
        """Try to store the end until it is stored (True) or time is up (False);
        ``failed`` is the error of a first try made by the caller."""
        job_id = running.job.id
        while True:
            if failed is not None:
                self._finish_trouble = True
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
            self._recovered_finish()
            return True

    def _recovered_finish(self) -> None:
        self._finish_trouble = False
        self.supervisor.recovered("finish")

    def _log_lost_finish(self, running: Running, outcome: Outcome) -> None:
        logger.warning(
            "job %s ended (%s) after this worker lost its lease; the new holder decides",
            running.job.id,
            outcome.status.value,
        )

    def _log_unstored(self, running: Running, outcome: Outcome) -> None:
        logger.error(
            "could not store the end (%s) of job %s within %gs; it is left to lease "
            "expiry and will run again",
            outcome.status.value,
            running.job.id,
            self.config.finish_timeout,
        )
