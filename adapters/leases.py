"""The remote-worker protocol's semantics, shared by the HTTP routes and the gRPC service.

A remote worker claims jobs with a lease, proves it still holds each one with the
lease's fencing token on every call, and ends the attempt with complete, fail or
release. This module knows nothing of HTTP or gRPC: each transport validates its own
messages, calls a :class:`LeaseGateway` method and maps the core errors to its
status codes (``LeaseLost`` -> 409 / FAILED_PRECONDITION, ``JobNotFound`` -> 404 /
NOT_FOUND).

Decisions (see docs/remote-workers.md):

* A heartbeat and a progress report both extend the lease (by ``lease`` seconds, or
  the gateway's default), so a worker that reports progress often needs no separate
  heartbeat.
* A cancel request wins: complete or fail of a job whose cancel was requested ends it
  ``cancelled``, as with the in-process worker. A worker that goes quiet after a cancel
  request ends ``cancelled`` when its lease runs out (the janitor's lease recovery).
* Fail retries like an in-process failure (the job type's ``max_attempts`` and backoff)
  unless ``retry=False``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, final

import anyio
import attrs

from asyncjobs.errors import InvalidSubmission, LeaseLost, UnknownJobType
from asyncjobs.job import Job, JobError, JobStatus
from asyncjobs.jsonrules import clean_text, json_problems
from asyncjobs.registry import Backoff
from asyncjobs.stores.protocol import Outcome

if TYPE_CHECKING:
    from asyncjobs.queue import Queue

__all__ = [
    "DEFAULT_LEASE",
    "MAX_CLAIM",
    "MAX_LEASE",
    "MAX_POLL",
    "Claimed",
    "LeaseGateway",
    "LeaseState",
]

#: Seconds a remote claim lasts when the worker does not say.
DEFAULT_LEASE: Final = 30.0
#: The longest lease a worker may ask for (an hour: a dead worker's job waits that long).
MAX_LEASE: Final = 3600.0
#: The most jobs one claim hands out.
MAX_CLAIM: Final = 100
#: The longest long-poll of a claim, in seconds.
MAX_POLL: Final = 60.0
#: The longest wait between claims on a store whose wake-ups are edge-triggered.
EDGE_TRIGGERED_WAIT: Final = 1.0
#: The longest a single store claim may run once started (it is not cancelled midway).
CLAIM_DEADLINE: Final = 30.0


@final
@attrs.frozen
class Claimed:
    """One job handed to a remote worker, with the token that fences its calls."""

    job: Job
    token: str
    lease_expires_at: datetime


@final
@attrs.frozen
class LeaseState:
    """What a heartbeat or progress report tells the worker."""

    cancel_requested: bool
    lease_expires_at: datetime


def _held(job: Job, token: str) -> None:
    # The store fences again atomically; this check gives a clean LeaseLost before we
    # read cancel_requested and attempts off a job someone else now holds.
    if job.status is not JobStatus.RUNNING or job.lease is None or job.lease.token != token:
        raise LeaseLost(f"job {job.id} is not held under this token (its lease was lost)")


@final
class LeaseGateway:
    """Claims, renews and ends jobs of ``queue`` on behalf of remote workers.

    Args:
        queue: The (open) queue whose store the workers draw from.
        default_lease: Seconds a lease lasts when a call does not say.
        max_poll: The longest long-poll of :meth:`claim`.
    """

    def __init__(
        self, queue: Queue, *, default_lease: float = DEFAULT_LEASE, max_poll: float = MAX_POLL
    ) -> None:
        self.queue = queue
        self.default_lease = default_lease
        self.max_poll = max_poll

    @property
    def _clock(self) -> Callable[[], datetime]:
        return self.queue.clock

    def check_types(self, types: Sequence[str] | None) -> list[str]:
        """The job types to claim: ``types`` (each must be registered), or all of them.

        Raises:
            UnknownJobType: a name is not registered on the server.
        """
        registry = self.queue.registry
        if not types:
            return list(registry.names())
        for name in types:
            registry.get(name)  # raises UnknownJobType
        return list(dict.fromkeys(types))

    async def claim(
        self,
        worker: str,
        *,
        types: Sequence[str] | None = None,
        limit: int = 1,
        wait: float = 0.0,
        lease: float | None = None,
    ) -> list[Claimed]:
        """Claim up to ``limit`` jobs, waiting up to ``wait`` seconds for one to arrive.

        The wait is woken by the store's wake-ups, not by polling.
        """
        names = self.check_types(types)
        seconds = lease or self.default_lease
        store = self.queue.store
        generation: Callable[[], int] | None = getattr(store, "work_generation", None)
        deadline = anyio.current_time() + min(max(wait, 0.0), self.max_poll)
        while True:
            # Read the wake-up generation before claiming: a job added while the claim
            # runs bumps it, so the wait below returns at once instead of missing it.
            since = generation() if generation is not None else None
            # Shielded (with a deadline): a claim cut off half-way could lease jobs to a
            # caller that never hears of them; they would wait out their lease.
            with anyio.move_on_after(CLAIM_DEADLINE, shield=True):
                jobs = await store.claim(
                    worker,
                    types=names,
                    limit=limit,
                    lease=seconds,
                    now=self._clock(),
                    type_limits=self.queue.registry.concurrency_limits(),
                )
            if jobs:
                return [self._claimed(job) for job in jobs]
            remaining = deadline - anyio.current_time()
            if remaining <= 0:
                return []
            await self._wait_for_work(remaining, since)

    async def _wait_for_work(self, timeout: float, since: int | None) -> None:
        store: Any = self.queue.store
        if since is None:
            # A store without work_generation() may drop a wake-up that lands between
            # the empty claim and this wait; claim again at least this often.
            await store.wait_for_work(min(timeout, EDGE_TRIGGERED_WAIT))
        else:
            await store.wait_for_work(timeout, since=since)

    @staticmethod
    def _claimed(job: Job) -> Claimed:
        assert job.lease is not None
        return Claimed(job, job.lease.token, job.lease.expires_at)

    async def heartbeat(self, job_id: str, token: str, *, lease: float | None = None) -> LeaseState:
        """Extend the lease; say whether a cancel was requested.

        Raises: LeaseLost, JobNotFound.
        """
        job = await self.queue.store.renew(
            job_id, token, lease=lease or self.default_lease, now=self._clock()
        )
        return self._state(job)

    async def progress(
        self,
        job_id: str,
        token: str,
        progress: float,
        message: str | None = None,
        *,
        lease: float | None = None,
    ) -> LeaseState:
        """Record progress (0.0 to 1.0) and extend the lease.

        Raises: LeaseLost, JobNotFound.
        """
        store = self.queue.store
        if message is not None:
            message = clean_text(message)  # storable in every store (as in-process progress)
        await store.set_progress(job_id, token, progress, message, now=self._clock())
        job = await store.renew(job_id, token, lease=lease or self.default_lease, now=self._clock())
        return self._state(job)

    @staticmethod
    def _state(job: Job) -> LeaseState:
        assert job.lease is not None
        return LeaseState(job.cancel_requested, job.lease.expires_at)

    async def complete(self, job_id: str, token: str, result: Any) -> Job:
        """End the attempt as completed (cancelled when a cancel was requested).

        Raises: LeaseLost, JobNotFound, InvalidSubmission (a result no store can hold).
        """
        if result is not None and (problems := json_problems(result, ["result"])):
            raise InvalidSubmission(problems, "the result cannot be stored")
        job = await self.queue.store.get(job_id)
        _held(job, token)
        if job.cancel_requested:
            outcome = Outcome(JobStatus.CANCELLED)
        else:
            outcome = Outcome(JobStatus.COMPLETED, result=result)
        return await self.queue.store.finish(job_id, token, outcome, now=self._clock())

    async def fail(self, job_id: str, token: str, error: JobError, *, retry: bool = True) -> Job:
        """End the attempt as failed: retried while attempts are left (unless ``retry``
        is false), cancelled when a cancel was requested.

        Raises: LeaseLost, JobNotFound.
        """
        tb = None if error.traceback is None else clean_text(error.traceback)
        error = JobError(
            type=clean_text(error.type), message=clean_text(error.message), traceback=tb
        )
        job = await self.queue.store.get(job_id)
        _held(job, token)
        now = self._clock()
        if job.cancel_requested:
            outcome = Outcome(JobStatus.CANCELLED, error=error)
        elif retry and job.attempts < job.max_attempts:
            delay = self._backoff(job.type).delay(job.attempts)
            outcome = Outcome(
                JobStatus.SCHEDULED, error=error, run_at=now + timedelta(seconds=delay)
            )
        else:
            outcome = Outcome(JobStatus.FAILED, error=error)
        return await self.queue.store.finish(job_id, token, outcome, now=now)

    async def release(self, job_id: str, token: str) -> Job:
        """Give the job back unrun (a worker shutting down): it is queued again and the
        interrupted attempt is not counted.

        Raises: LeaseLost, JobNotFound.
        """
        job = await self.queue.store.get(job_id)
        _held(job, token)
        outcome = Outcome(JobStatus.CANCELLED if job.cancel_requested else JobStatus.QUEUED)
        return await self.queue.store.finish(job_id, token, outcome, now=self._clock())

    def _backoff(self, job_type: str) -> Backoff:
        try:
            return self.queue.registry.get(job_type).backoff
        except UnknownJobType:
            return Backoff()
