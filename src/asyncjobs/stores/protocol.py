"""The Store protocol: the one pluggable seam for job state and notification.

A :class:`Store` is two halves that every backend provides: :class:`StateStore`, the
atomic job operations (and the worker registry), and :class:`Notifier`, which delivers
events to every process attached to the store, wakes idle workers (level-triggered: a
generation counter) and says ``resync`` when it may have missed events.

A store keeps jobs and publishes an event for every visible change. Each method is
atomic: it either applies its whole change and publishes its events, or raises and
changes nothing. Times are passed in (``now``) rather than read from a clock, so that
tests drive time and every store agrees on it.

Rules every store follows (the conformance suite in ``tests/stores`` checks them):

* Every status change goes through :func:`asyncjobs.job.advance` (or an equivalent
  that the conformance suite shows agrees with it) and bumps ``version`` by one.
  ``renew`` changes only the internal lease and bumps nothing.
* ``claim`` takes queued jobs of the given types, highest ``priority`` first, then by
  ``id`` (FIFO), never more than ``limit``, never more running jobs of a type than
  ``type_limits[type]`` across all workers; it moves them to running, adds one to
  ``attempts``, resets progress, and gives each a lease with a fresh fencing token.
* Methods that take a ``token`` raise :class:`~asyncjobs.errors.LeaseLost` unless the
  job is running under exactly that token: a worker whose lease expired can never
  finish, or report progress on, a job that was handed to someone else.
* Events: one per change, with ``seq`` strictly increasing per store, delivered to
  every listener registered with :meth:`Notifier.add_listener` in this process and in
  every other process attached to the same store (SQLite: every process on the same
  file). Listeners are plain callables run on the event loop; they must not block.
* Wake-ups are level-triggered: :meth:`Notifier.work_generation` grows on every
  wake-up (a job added, promoted, requeued, a running one ended, in any process), and
  ``wait_for_work(timeout, since=g)`` returns at once when the generation is past ``g``.
* A notifier that may have missed events (a reconnect, a gap in a sequence, a full
  inbox) calls every resync listener; they re-read what they show.

Event types per change:

=============================================  ========================
change                                         event
=============================================  ========================
add                                            job_created
scheduled -> queued (promote)                  job_queued
queued -> running (claim)                      job_started
set_progress                                   job_progress
request_cancel of a running job                job_cancel_requested
running -> scheduled / queued (retry, requeue) job_retrying
failed / cancelled -> queued (retry in place)  job_retrying
-> completed / failed / cancelled              job_completed / _failed / _cancelled
delete, purge                                  job_deleted (snapshot before deletion)
=============================================  ========================
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs

from ..job import TERMINAL, Job, JobError, JobEvent, JobStatus

if TYPE_CHECKING:
    from ..webhooks.model import Delivery, Webhook

__all__ = [
    "EventListener",
    "Notifier",
    "Outcome",
    "Page",
    "StateStore",
    "Stats",
    "Store",
    "WorkerInfo",
]

EventListener = Callable[[JobEvent], None]


@attrs.frozen
class Outcome:
    """How a worker ends one attempt of a job.

    ``status`` is the job's next status: ``COMPLETED`` (with ``result``), ``FAILED``
    (with ``error``), ``CANCELLED``, ``SCHEDULED`` (a retry at ``run_at``, keeping
    ``error``) or ``QUEUED`` (a requeue after a graceful shutdown: the interrupted
    attempt is given back, ``attempts - 1``).
    """

    status: JobStatus
    result: Any = None
    error: JobError | None = None
    run_at: datetime | None = None


@attrs.frozen
class Page:
    """One page of :meth:`Store.list`, newest first; ``next_cursor`` is None at the end.

    Iterating a page yields its jobs, and ``len(page)`` is how many it holds.
    """

    jobs: builtins.list[Job]
    next_cursor: str | None

    def __iter__(self) -> Iterator[Job]:
        return iter(self.jobs)

    def __len__(self) -> int:
        return len(self.jobs)


@attrs.frozen
class Stats:
    """Job counts per status, overall and per job type."""

    counts: Mapping[JobStatus, int]
    by_type: Mapping[str, Mapping[JobStatus, int]]

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@attrs.frozen
class WorkerInfo:
    """One live worker, as it registered itself with its last heartbeat.

    Attributes:
        id: The worker's id (``host:pid:suffix``), also the lease holder of its jobs.
        host: The machine's host name.
        pid: The worker's process id.
        types: The job types it runs.
        slots: Jobs it runs at once (its concurrency).
        running: Ids of the jobs it runs now.
        started_at: When it started.
        last_heartbeat: When it last refreshed this record.
        expires_at: When the record is dropped unless refreshed (``last_heartbeat +
            ttl``): a worker that died disappears then.
    """

    id: str
    host: str
    pid: int
    types: tuple[str, ...]
    slots: int
    running: tuple[str, ...]
    started_at: datetime
    last_heartbeat: datetime
    expires_at: datetime


@runtime_checkable
class StateStore(Protocol):
    """Persistent (or not) job state shared by every Queue attached to it."""

    async def open(self) -> None:
        """Connect, migrate, and start delivering events. Idempotent."""

    async def close(self) -> None:
        """Release connections and stop delivering events. Idempotent."""

    async def add(self, job: Job, *, max_queued: int | None = None) -> tuple[Job, bool]:
        """Store a new queued or scheduled job; publish ``job_created``.

        Returns ``(job, True)``; or, when a live-or-finished job with the same
        ``idempotency_key`` is stored already, ``(that_job, False)`` and nothing changes.

        Raises:
            QueueFull: ``max_queued`` is set and that many jobs are queued or scheduled.
        """
        ...

    async def get(self, job_id: str) -> Job:
        """Raises: JobNotFound."""
        ...

    async def list(
        self,
        *,
        statuses: Collection[JobStatus] | None = None,
        types: Collection[str] | None = None,
        owner: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> Page:
        """Jobs matching every given filter, newest (highest id) first.

        ``cursor`` is the ``next_cursor`` of the previous page (the id of its last job);
        jobs with ids below it follow.
        """
        ...

    async def stats(self) -> Stats:
        """Counts per status and per type."""
        ...

    async def claim(
        self,
        worker_id: str,
        *,
        types: Collection[str],
        limit: int,
        lease: float,
        now: datetime,
        type_limits: Mapping[str, int] | None = None,
    ) -> builtins.list[Job]:
        """Atomically move up to ``limit`` queued jobs to running for ``worker_id``."""
        ...

    async def renew(self, job_id: str, token: str, *, lease: float, now: datetime) -> Job:
        """Extend a held lease to ``now + lease``; the job's ``cancel_requested`` tells
        the worker whether someone asked to cancel it.

        Raises: LeaseLost, JobNotFound.
        """
        ...

    async def set_progress(
        self, job_id: str, token: str, progress: float, message: str | None, *, now: datetime
    ) -> Job:
        """Record progress (0.0 to 1.0) of a running job. Raises: LeaseLost, JobNotFound."""
        ...

    async def finish(self, job_id: str, token: str, outcome: Outcome, *, now: datetime) -> Job:
        """End the current attempt as ``outcome`` says. Raises: LeaseLost, JobNotFound."""
        ...

    async def request_cancel(self, job_id: str, *, now: datetime) -> Job:
        """Cancel a scheduled or queued job at once; flag a running one
        (``cancel_requested``) so the worker holding it cancels the handler.

        A repeated request on a running job changes nothing.

        Raises: IllegalTransition (the job is finished), JobNotFound.
        """
        ...

    async def delete(self, job_id: str, *, now: datetime) -> Job:
        """Delete a finished job; publish ``job_deleted``; return its last snapshot.

        Raises: IllegalTransition (the job is still live), JobNotFound.
        """
        ...

    async def requeue_expired(self, *, now: datetime) -> builtins.list[Job]:
        """Recover running jobs whose lease expired at or before ``now`` (their worker died).

        A job with a pending cancel request becomes cancelled; one with attempts left
        becomes queued (``job_retrying``); otherwise it fails with error type
        ``LeaseExpired``.
        """
        ...

    async def promote_scheduled(self, *, now: datetime) -> builtins.list[Job]:
        """Move scheduled jobs whose ``run_at <= now`` to queued."""
        ...

    async def purge(
        self,
        *,
        now: datetime,
        statuses: Collection[JobStatus] = TERMINAL,
        types: Collection[str] | None = None,
        finished_before: datetime | None = None,
        expired: bool = False,
        limit: int | None = None,
    ) -> int:
        """Delete finished jobs; publish ``job_deleted`` for each; return how many.

        ``statuses`` must all be terminal (ValueError otherwise). ``finished_before``
        keeps jobs that finished at or after it; ``expired=True`` deletes only jobs whose
        ``finished_at + retention <= now`` (jobs with no retention are kept).
        """
        ...

    async def register_worker(self, info: WorkerInfo) -> None:
        """Insert or replace the record of worker ``info.id`` (its heartbeat)."""
        ...

    async def list_workers(self, *, now: datetime) -> builtins.list[WorkerInfo]:
        """Workers whose record has not expired at ``now``, by id; expired ones go."""
        ...

    async def remove_worker(self, worker_id: str) -> None:
        """Drop a worker's record (it stopped cleanly). Unknown ids are ignored."""
        ...

    # -- operations: batch submit and retry in place ---------------------------------

    async def add_many(
        self, jobs: Sequence[Job], *, max_queued: int | None = None
    ) -> builtins.list[tuple[Job, bool]]:
        """Store new jobs in one atomic step (one round trip on a server-backed store).

        Each result is what :meth:`add` would return for that job, in input order: a job
        whose ``idempotency_key`` is taken (by a stored job, or by an earlier job of the
        same batch) gives ``(that_job, False)``. All or nothing: on an error nothing is
        stored and no event is published.

        Raises:
            QueueFull: ``max_queued`` is set and the new jobs would pass it.
        """
        ...

    async def retry(self, job_id: str, *, now: datetime) -> Job:
        """Re-queue a failed or cancelled job in place (see :func:`..steps.retry_step`);
        publish ``job_retrying`` and wake a worker.

        Raises: IllegalTransition (the job is not failed or cancelled), JobNotFound.
        """
        ...

    async def retry_many(
        self,
        *,
        now: datetime,
        statuses: Collection[JobStatus] = (JobStatus.FAILED,),
        types: Collection[str] | None = None,
        owner: str | None = None,
    ) -> builtins.list[Job]:
        """Retry in place every job matching the filters; return them, oldest first.

        ``statuses`` must be failed and/or cancelled (ValueError otherwise).
        """
        ...

    # -- operations: the webhook outbox ----------------------------------------------
    #
    # A job's move to a terminal status writes one pending delivery per webhook that
    # asked for that event, in the same atomic step as the move itself (a trigger in
    # SQLite and PostgreSQL): a crash after the end is stored loses no delivery.

    async def add_webhook(self, hook: Webhook, *, now: datetime) -> Webhook:
        """Register ``hook`` (an upsert by ``hook.id``); return it as stored."""
        ...

    async def list_webhooks(self) -> builtins.list[Webhook]:
        """Every registered webhook, oldest first."""
        ...

    async def delete_webhook(self, webhook_id: str) -> None:
        """Remove a webhook and its deliveries. Raises: WebhookNotFound."""
        ...

    async def claim_deliveries(
        self, *, now: datetime, limit: int, lease: float
    ) -> builtins.list[tuple[Delivery, Webhook]]:
        """Take up to ``limit`` pending deliveries due at ``now`` (oldest first) and
        hide them from other claimers for ``lease`` seconds: a sender that dies leaves
        them to be claimed again after that."""
        ...

    async def finish_delivery(
        self,
        delivery_id: str,
        *,
        now: datetime,
        ok: bool,
        error: str | None = None,
        retry_at: datetime | None = None,
    ) -> None:
        """Record one attempt: delivered (``ok``), pending again at ``retry_at``, or dead
        (not ok and no ``retry_at``). Unknown ids are ignored (a deleted webhook)."""
        ...

    async def list_deliveries(
        self, webhook_id: str, *, status: str | None = None, limit: int = 100
    ) -> builtins.list[Delivery]:
        """A webhook's deliveries, newest first. Raises: WebhookNotFound."""
        ...

    async def purge_deliveries(self, *, before: datetime, limit: int) -> int:
        """Delete up to ``limit`` finished deliveries that finished before ``before``:
        delivered ones by ``delivered_at``, dead ones by ``at`` (the job's end; a dead
        delivery keeps no time of its own). Pending ones are kept. Return the count."""
        ...


@runtime_checkable
class Notifier(Protocol):
    """Events to every process attached to the store, wake-ups, resync."""

    def add_listener(self, listener: EventListener) -> Callable[[], None]:
        """Call ``listener`` with every event; return a function that removes it."""
        ...

    def add_resync_listener(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` whenever events may have been missed (a reconnect, a gap);
        return a function that removes it."""
        ...

    def work_generation(self) -> int:
        """A counter that grows on every wake-up; read it before a claim."""
        ...

    async def wait_for_work(self, timeout: float, *, since: int | None = None) -> None:
        """Return at once if :meth:`work_generation` is past ``since``; else on the next
        wake-up (a job was added, promoted, requeued, or a running one ended) or after
        ``timeout`` seconds. ``since=None`` waits for the next wake-up."""
        ...


@runtime_checkable
class Store(StateStore, Notifier, Protocol):
    """A whole store: the state operations and the notifier."""
