"""Pure state steps shared by every store.

Each function takes a job snapshot and returns the next one plus the event type to
publish, going through :func:`asyncjobs.job.advance`. Stores differ in how they lock,
persist and publish; what a change *is* lives here once, so all stores agree.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Collection, Iterable, Mapping
from datetime import datetime, timedelta

import attrs

from ..errors import IllegalTransition, LeaseLost
from ..job import (
    TERMINAL,
    EventType,
    Job,
    JobError,
    JobStatus,
    Run,
    advance,
    make_lease,
    transition,
)
from .protocol import Outcome, Page, Stats

__all__ = [
    "EXPIRED_ERROR",
    "check_delete",
    "check_lease",
    "claim_room",
    "purge_matches",
    "select_claims",
    "stats_from_counts",
    "claim_step",
    "cancel_step",
    "expire_step",
    "finish_step",
    "new_token",
    "progress_step",
    "promote_step",
    "renew_step",
    "retry_step",
    "RETRYABLE",
    "check_purge_statuses",
    "check_retry_statuses",
]

EXPIRED_ERROR = JobError(
    type="LeaseExpired",
    message="the worker holding this job stopped renewing its lease (it crashed or hung)",
)

_FINISH_EVENTS = {
    JobStatus.COMPLETED: EventType.COMPLETED,
    JobStatus.FAILED: EventType.FAILED,
    JobStatus.CANCELLED: EventType.CANCELLED,
    JobStatus.SCHEDULED: EventType.RETRYING,
    JobStatus.QUEUED: EventType.RETRYING,
}

# Enum members the hot path compares, as module constants: on Python 3.11 reading a
# member off its class goes through EnumType.__getattr__ (about 100 ns each time).
_RUNNING, _QUEUED, _SCHEDULED = JobStatus.RUNNING, JobStatus.QUEUED, JobStatus.SCHEDULED
_COMPLETED = JobStatus.COMPLETED


#: Random bytes per fencing token (24 hex characters), and tokens made per refill.
TOKEN_BYTES = 12
_TOKENS_PER_REFILL = 256

# Tokens drawn from os.urandom in bulk: one syscall per refill instead of one per claim.
# Each token is still 96 bits from the OS's CSPRNG, independent of every other token,
# so holding one token says nothing about the next (a per-process prefix plus a counter
# would let a worker predict the tokens of jobs claimed after its own). deque.popleft()
# and extend() are atomic, so threads (SQLite's) never draw the same token; a forked
# child drops the pool it inherited, so parent and child never share one either.
_tokens: deque[str] = deque()
if hasattr(os, "register_at_fork"):  # not on Windows (which has no fork either)
    os.register_at_fork(after_in_child=_tokens.clear)


def new_token() -> str:
    """A fresh, unguessable fencing token (96 random bits, as hex)."""
    try:
        return _tokens.popleft()
    except IndexError:
        hexed = os.urandom(TOKEN_BYTES * _TOKENS_PER_REFILL).hex()
        width = 2 * TOKEN_BYTES
        _tokens.extend([hexed[i : i + width] for i in range(width, len(hexed), width)])
        return hexed[:width]


def check_lease(job: Job, token: str) -> None:
    """Raise LeaseLost unless ``job`` is running under ``token``."""
    if job.status is not _RUNNING or job.lease is None or job.lease.token != token:
        raise LeaseLost(job.id)


#: timedelta(seconds=lease) by lease: a worker claims with the same lease every time.
_lease_spans: dict[float, timedelta] = {}


def _span(lease: float) -> timedelta:
    span = _lease_spans.get(lease)
    if span is None:
        span = timedelta(seconds=lease)
        if len(_lease_spans) < 64:
            _lease_spans[lease] = span
    return span


# Prepared advance() calls for the two steps every job takes (see job.transition).
_claimed = transition("attempts", "started_at", "progress", "message", "lease")
_completed = transition("result", "error", "progress", "finished_at", "lease")
_ended = transition("error", "finished_at", "lease")


def claim_step(job: Job, worker_id: str, token: str, lease: float, now: datetime) -> Job:
    span = _lease_spans.get(lease)  # _span(), inline: once per job
    expires = now + (span if span is not None else _span(lease))
    return _claimed(
        job, _RUNNING, job.attempts + 1, now, 0.0, None, make_lease(worker_id, token, expires)
    )


def renew_step(job: Job, token: str, lease: float, now: datetime) -> Job:
    """The lease is internal: renewing it is not a visible change, so no new version."""
    check_lease(job, token)
    assert job.lease is not None
    return attrs.evolve(job, lease=attrs.evolve(job.lease, expires_at=now + _span(lease)))


def progress_step(job: Job, token: str, progress: float, message: str | None) -> Job:
    check_lease(job, token)
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress must be between 0.0 and 1.0, got {progress!r}")
    return advance(job, progress=progress, message=message)


def finish_step(job: Job, token: str, outcome: Outcome, now: datetime) -> tuple[Job, EventType]:
    lease = job.lease  # check_lease(), inline: once per job
    if job.status is not _RUNNING or lease is None or lease.token != token:
        raise LeaseLost(job.id)
    status = outcome.status
    if job.cancel_requested and status in (_SCHEDULED, _QUEUED):
        # A cancel request wins over another attempt (as in expire_step): the attempt
        # ended before its worker saw the request, and a cancelled job never runs again.
        status = JobStatus.CANCELLED
    if status is _COMPLETED:
        nxt = _completed(job, status, outcome.result, None, 1.0, now, None)
    elif status in (JobStatus.FAILED, JobStatus.CANCELLED):
        nxt = _ended(job, status, outcome.error, now, None)
    elif status is JobStatus.SCHEDULED:
        if outcome.run_at is None:
            raise ValueError("a retry (SCHEDULED outcome) needs run_at")
        nxt = advance(job, status, error=outcome.error, run_at=outcome.run_at, lease=None)
    elif status is JobStatus.QUEUED:
        nxt = advance(job, status, attempts=max(job.attempts - 1, 0), run_at=now, lease=None)
    else:
        raise IllegalTransition(job.id, job.status.value, status.value)
    return nxt, _FINISH_EVENTS[status]


def cancel_step(job: Job, now: datetime) -> tuple[Job, EventType] | None:
    """Returns None when nothing changes (a running job already flagged)."""
    if job.status in (JobStatus.SCHEDULED, JobStatus.QUEUED):
        return advance(job, JobStatus.CANCELLED, finished_at=now), EventType.CANCELLED
    if job.status is JobStatus.RUNNING:
        if job.cancel_requested:
            return None
        return advance(job, cancel_requested=True), EventType.CANCEL_REQUESTED
    raise IllegalTransition(job.id, job.status.value, JobStatus.CANCELLED.value)


def expire_step(job: Job, now: datetime) -> tuple[Job, EventType]:
    if job.cancel_requested:
        return advance(job, JobStatus.CANCELLED, finished_at=now, lease=None), EventType.CANCELLED
    if job.attempts < job.max_attempts:
        return (
            advance(job, JobStatus.QUEUED, error=EXPIRED_ERROR, run_at=now, lease=None),
            EventType.RETRYING,
        )
    return (
        advance(job, JobStatus.FAILED, error=EXPIRED_ERROR, finished_at=now, lease=None),
        EventType.FAILED,
    )


def promote_step(job: Job) -> Job:
    return advance(job, JobStatus.QUEUED)


#: The statuses a job can be retried in place from.
RETRYABLE = frozenset({JobStatus.FAILED, JobStatus.CANCELLED})


def retry_step(job: Job, now: datetime) -> Job:
    """Re-queue a failed or cancelled job in place: same id, a fresh set of attempts,
    and the run that ended appended to ``history`` (its attempts and last error).

    Raises:
        IllegalTransition: the job is not failed or cancelled.
    """
    if job.status not in RETRYABLE:
        raise IllegalTransition(job.id, job.status.value, JobStatus.QUEUED.value)
    run = Run(job.status, job.attempts, job.error, job.started_at, job.finished_at)
    return advance(
        job,
        JobStatus.QUEUED,
        history=(*job.history, run),
        attempts=0,
        error=None,
        result=None,
        progress=0.0,
        message=None,
        started_at=None,
        finished_at=None,
        run_at=now,
        cancel_requested=False,
        lease=None,
    )


def check_retry_statuses(statuses: Iterable[JobStatus | str]) -> frozenset[JobStatus]:
    chosen = frozenset(JobStatus(s) for s in statuses)
    other = chosen - RETRYABLE
    if other:
        raise ValueError(
            f"only failed or cancelled jobs can be retried; not {sorted(s.value for s in other)}"
        )
    return chosen


def check_purge_statuses(statuses: Iterable[JobStatus | str]) -> frozenset[JobStatus]:
    chosen = frozenset(JobStatus(s) for s in statuses)
    live = chosen - TERMINAL
    if live:
        raise ValueError(f"only finished jobs can be purged; not {sorted(s.value for s in live)}")
    return chosen


def check_delete(job: Job) -> None:
    """Raise IllegalTransition unless ``job`` is finished (only those can be deleted)."""
    if not job.is_terminal:
        raise IllegalTransition(job.id, job.status.value, "deleted")


def purge_matches(
    job: Job,
    *,
    now: datetime,
    statuses: Collection[JobStatus],
    types: Collection[str] | None = None,
    finished_before: datetime | None = None,
    expired: bool = False,
) -> bool:
    """Whether :meth:`Store.purge` deletes ``job``: the exact predicate every store
    applies (a SQL store may pre-filter coarsely, then check each candidate here)."""
    if job.status not in statuses or (types is not None and job.type not in types):
        return False
    finished = job.finished_at
    if finished_before is not None and (finished is None or finished >= finished_before):
        return False
    return not expired or (
        job.retention is not None
        and finished is not None
        and finished.timestamp() + job.retention <= now.timestamp()
    )


def fill_page(
    found: list[Job],
    jobs: Iterable[Job | None],
    *,
    statuses: Collection[JobStatus] | None,
    types: Collection[str] | None,
    owner: str | None,
    limit: int,
) -> Page | None:
    """Append to ``found`` the ``jobs`` (newest first) that :meth:`Store.list`'s filters
    keep; the page once it is full and one more job matches, else None (read on)."""
    for job in jobs:
        if (
            job is None
            or (statuses is not None and job.status not in statuses)
            or (types is not None and job.type not in types)
            or (owner is not None and job.owner != owner)
        ):
            continue
        if len(found) == limit:
            return Page(found, found[-1].id)
        found.append(job)
    return None


def claim_room(
    types: Collection[str], type_limits: Mapping[str, int] | None, running: Mapping[str, int]
) -> dict[str, int]:
    """Free per-type slots of the limited ones among ``types``, given the jobs of each
    type running now; types without a limit are absent (unbounded)."""
    limits = type_limits or {}
    return {t: limits[t] - running.get(t, 0) for t in types if t in limits}


def select_claims(candidates: Iterable[Job], room: dict[str, int], limit: int) -> list[Job]:
    """The jobs a claim takes from ``candidates`` (best first: priority, then id), at
    most ``limit``, skipping types whose ``room`` ran out; ``room`` is decremented."""
    chosen: list[Job] = []
    for job in candidates:
        if len(chosen) >= limit:
            break
        if room.get(job.type, 1) <= 0:
            continue
        chosen.append(job)
        if job.type in room:
            room[job.type] -= 1
    return chosen


def stats_from_counts(rows: Iterable[tuple[str, JobStatus | str, int]]) -> Stats:
    """:class:`Stats` from ``(type, status, count)`` rows (one per pair, any order)."""
    counts = {s: 0 for s in JobStatus}
    by_type: dict[str, dict[JobStatus, int]] = {}
    for type_, status_value, n in rows:
        if not n:
            continue
        status = JobStatus(status_value)
        counts[status] += n
        by_type.setdefault(type_, {s: 0 for s in JobStatus})[status] += n
    return Stats(counts, by_type)
