"""What :class:`~.store.RedisStore` does to many jobs at once: the janitor's sweeps,
purge, batch submit, retry in place and listing.

Each reads ids from an index in batches of :data:`BATCH`, reads those jobs, computes
their changes with the shared steps and writes a batch as one call of the commit script
(each change landing or not on its own, as in :meth:`~.store.RedisStore._commit`).
The store's methods of the same names call these.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from ...codec import _iso as _time_text
from ...codec import record_text
from ...errors import JobNotFound, QueueFull
from ...job import TERMINAL, EventType, Job, JobEvent, JobStatus
from ...jsonrules import check_storable
from ..protocol import Page
from ..steps import (
    check_purge_statuses,
    check_retry_statuses,
    fill_page,
    purge_matches,
    retry_step,
)
from .events import materialize

if TYPE_CHECKING:
    from .store import RedisStore

__all__ = ["BATCH", "add_many", "idem_field", "list_jobs", "purge", "retry_many", "score", "sweep"]

BATCH = 500


def score(value: datetime) -> str:
    """A time as a sorted-set score (epoch seconds)."""
    return repr(value.timestamp())


def idem_field(job: Job) -> str:
    """The ``P idem`` field of a job's idempotency key (unique per owner), or ''."""
    if job.idempotency_key is None:
        return ""
    owner = job.owner or ""
    return f"{len(owner)}:{owner}:{job.idempotency_key}"


async def sweep(
    store: RedisStore,
    index: str,
    now: datetime,
    step: Callable[[Job], tuple[Job, EventType] | None],
    *,
    judge_lease: bool = False,
) -> list[Job]:
    """Apply ``step`` to the jobs an index scores at or before ``now``, in batches.

    Scores are floats: the range is read a millisecond wide and the step decides
    exactly, on the job itself.
    """
    client = store._redis()
    bound = repr(now.timestamp() + 0.001)
    changed: list[Job] = []
    offset = 0
    while True:
        ids = [
            i.decode()
            for i in await client.zrangebyscore(
                store._p + index, "-inf", bound, start=offset, num=BATCH
            )
        ]
        if not ids:
            return changed
        calls: list[list[str]] = []
        pending: list[tuple[Job, EventType]] = []
        skipped = 0
        for job in await store._read(ids):
            result = None if job is None else step(job)
            if result is None:
                skipped += 1
                continue
            assert job is not None
            nxt, type_ = result
            lease_was = ""
            if judge_lease and job.lease is not None:
                lease_was = _time_text(job.lease.expires_at)
            args = store._commit_args(job.version, nxt, type_, now, lease_was=lease_was)
            calls.append(args)
            pending.append((nxt, type_))
        replies = await store._commit(calls)
        events = [
            JobEvent(type_, int(reply[1]), now, nxt)
            for (nxt, type_), reply in zip(pending, replies, strict=True)
            if reply[0] == 1
        ]
        for event in events:
            store._held.pop(event.job.id, None)
        store._emit(events)
        changed += [e.job for e in events]
        # Jobs left alone (not yet due, changed meanwhile) keep their place.
        offset += skipped + (len(calls) - len(events))
        if len(ids) < BATCH:
            return changed


async def purge(
    store: RedisStore,
    *,
    now: datetime,
    statuses: Collection[JobStatus] = TERMINAL,
    types: Collection[str] | None = None,
    finished_before: datetime | None = None,
    expired: bool = False,
    limit: int | None = None,
) -> int:
    chosen = check_purge_statuses(statuses)
    if not chosen:
        return 0
    wanted_types = None if types is None else frozenset(types)
    index = "expiry" if expired else "finished"
    upper = "+inf"
    if expired:
        upper = repr(now.timestamp() + 0.001)
    elif finished_before is not None:
        upper = repr(finished_before.timestamp() + 0.001)

    def doomed(job: Job) -> bool:
        return purge_matches(
            job,
            now=now,
            statuses=chosen,
            types=wanted_types,
            finished_before=finished_before,
            expired=expired,
        )

    client = store._redis()
    total, offset = 0, 0
    while limit is None or total < limit:
        ids = [
            i.decode()
            for i in await client.zrangebyscore(
                store._p + index, "-inf", upper, start=offset, num=BATCH
            )
        ]
        if not ids:
            break
        calls: list[list[str]] = []
        gone: list[Job] = []
        kept = 0
        for job in await store._read(ids):
            if job is None or not doomed(job) or (limit is not None and total + len(gone) >= limit):
                kept += 1
                continue
            args = store._commit_args(job.version, job, EventType.DELETED, now, delete=True)
            calls.append(args)
            gone.append(job)
        replies = await store._commit(calls)
        events = [
            JobEvent(EventType.DELETED, int(reply[1]), now, job)
            for job, reply in zip(gone, replies, strict=True)
            if reply[0] == 1
        ]
        store._emit(events)
        total += len(events)
        offset += kept + (len(calls) - len(events))
        if len(ids) < BATCH:
            break
    return total


async def add_many(
    store: RedisStore, jobs: Sequence[Job], *, max_queued: int | None = None
) -> list[tuple[Job, bool]]:
    if not jobs:
        return []
    for job in jobs:
        check_storable(job)  # all or nothing: refused before anything is sent
    args: list[str] = [
        store._p,
        store._instance,
        store._maxlen,
        "" if max_queued is None else str(max_queued),
        str(len(jobs)),
    ]
    for job in jobs:
        args += [
            job.id,
            record_text(job),
            job.status.value,
            job.type,
            str(job.priority),
            score(job.run_at),
            idem_field(job),
            _time_text(job.created_at),
        ]
    reply = await store._eval("add_many", store._p + "seq", *args)
    if reply[0] == 3:
        assert max_queued is not None
        raise QueueFull(max_queued)
    if reply[0] == 4:
        raise ValueError(f"a job with id {reply[1].decode()} exists already")
    store._wrote(reply.pop())
    results: list[tuple[Job, bool]] = []
    events: list[JobEvent] = []
    for job, row in zip(jobs, reply[1:], strict=True):
        if row[0] == 1:
            results.append((job, True))
            events.append(JobEvent(EventType.CREATED, int(row[1]), job.created_at, job))
        elif row[0] == 2:
            results.append((materialize(*row[1:6]), False))
        else:  # an earlier job of this batch holds the key
            results.append((jobs[int(row[1]) - 1], False))
    store._emit(events)
    return results


async def retry_many(
    store: RedisStore,
    *,
    now: datetime,
    statuses: Collection[JobStatus] = (JobStatus.FAILED,),
    types: Collection[str] | None = None,
    owner: str | None = None,
) -> list[Job]:
    """Each job is retried atomically on its own (a job that changed meanwhile is
    judged again); the whole call is not one transaction."""
    chosen = check_retry_statuses(statuses)
    if not chosen:
        return []
    picked: list[Job] = []
    cursor: str | None = None
    while True:
        page = await store.list(
            statuses=chosen, types=types, owner=owner, cursor=cursor, limit=BATCH
        )
        picked += page.jobs
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    picked.reverse()  # oldest first
    retried: list[Job] = []
    for start in range(0, len(picked), BATCH):
        chunk = picked[start : start + BATCH]
        nexts = [retry_step(job, now) for job in chunk]
        calls = [
            store._commit_args(job.version, nxt, EventType.RETRYING, now)
            for job, nxt in zip(chunk, nexts, strict=True)
        ]
        replies = await store._commit(calls)
        events: list[JobEvent] = []
        for job, nxt, reply in zip(chunk, nexts, replies, strict=True):
            if reply[0] == 1:
                events.append(JobEvent(EventType.RETRYING, int(reply[1]), now, nxt))
                retried.append(nxt)
            elif reply[0] == 0:  # changed meanwhile: retry it if it still may be
                again = await _retry_if(store, job.id, chosen, now)
                if again is not None:
                    retried.append(again)
        store._emit(events)
    return retried


async def _retry_if(
    store: RedisStore, job_id: str, chosen: Collection[JobStatus], now: datetime
) -> Job | None:
    made: list[Job] = []

    def step(job: Job) -> tuple[Job, EventType] | None:
        if job.status not in chosen:
            return None  # someone else retried, or deleted and replaced it
        made.append(retry_step(job, now))
        return made[-1], EventType.RETRYING

    try:
        job = await store._change(job_id, step, now)
    except JobNotFound:
        return None
    return job if made and job is made[-1] else None


async def list_jobs(
    store: RedisStore,
    *,
    statuses: Collection[JobStatus] | None = None,
    types: Collection[str] | None = None,
    owner: str | None = None,
    cursor: str | None = None,
    limit: int = 100,
) -> Page:
    wanted_status = None if statuses is None else frozenset(JobStatus(s) for s in statuses)
    wanted_type = None if types is None else frozenset(types)
    if wanted_status is not None and not wanted_status:
        return Page([], None)
    index = "ids"
    if wanted_status is not None and len(wanted_status) == 1:
        index = "st:" + next(iter(wanted_status)).value
    client = store._redis()
    found: list[Job] = []
    upper = "+" if cursor is None else "(" + cursor
    batch = max(limit + 1, 50) if wanted_status is None and wanted_type is None else BATCH
    while True:
        ids = [
            i.decode()
            for i in await client.zrevrangebylex(store._p + index, upper, "-", start=0, num=batch)
        ]
        jobs = await store._read(ids)
        page = fill_page(
            found, jobs, statuses=wanted_status, types=wanted_type, owner=owner, limit=limit
        )
        if page is not None:
            return page
        if len(ids) < batch:
            return Page(found, None)
        upper = "(" + ids[-1]
