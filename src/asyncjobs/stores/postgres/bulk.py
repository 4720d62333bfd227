"""What :class:`~.store.PostgresStore` does to many jobs at once: sweeps, purge, batch
submit, retry in place and listing.

Each works in batches of :data:`BATCH` jobs, a transaction per batch, and hands every
batch's committed events to the store's listeners before the next; the store's methods
of the same names call these.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ...codec import job_from_record
from ...job import EventType, Job, JobEvent, JobStatus
from ...jsonrules import check_storable
from ..protocol import Page
from ..steps import check_purge_statuses
from .schema import import_asyncpg
from .sql import change

if TYPE_CHECKING:
    from .store import PostgresStore

__all__ = ["BATCH", "add_many", "list_jobs", "load_job", "purge", "retry_many", "sweep"]

BATCH = 500

Conn = Any  # asyncpg.Connection; asyncpg is imported lazily


def load_job(text: str) -> Job:
    """A job from its stored record (JSON text)."""
    return job_from_record(json.loads(text))


async def sweep(
    store: PostgresStore,
    select: str,
    arg: Any,
    step: Callable[[Job], tuple[Job, EventType]],
    now: datetime,
) -> list[Job]:
    """Apply ``step`` to every job ``select`` finds, in batches of committed work."""
    changed: list[Job] = []
    while True:

        async def op(conn: Conn) -> list[JobEvent]:
            async with conn.transaction():
                rows = await conn.fetch(select, arg, BATCH)
                jobs = [load_job(r[0]) for r in rows]
                changes = [change(j, *step(j), now) for j in jobs]
                return await store._sql.write(conn, changes)

        events = await store._run(op)
        store._emit(events)
        changed += [e.job for e in events]
        if len(events) < BATCH:
            return changed


async def purge(
    store: PostgresStore,
    *,
    now: datetime,
    statuses: Collection[JobStatus],
    types: Collection[str] | None,
    finished_before: datetime | None,
    expired: bool,
    limit: int | None,
) -> int:
    """Delete the jobs that match, in batches; how many were deleted."""
    chosen = sorted(s.value for s in check_purge_statuses(statuses))
    if not chosen:
        return 0
    total = 0
    while limit is None or total < limit:
        batch = BATCH if limit is None else min(BATCH, limit - total)
        query, args = store._sql.purge_query(
            statuses=chosen,
            types=None if types is None else list(types),
            finished_before=finished_before,
            expired_at=now if expired else None,
            limit=batch,
        )

        async def op(conn: Conn, query: str = query, args: list[Any] = args) -> list[JobEvent]:
            async with conn.transaction():
                rows = await conn.fetch(query, *args)
                return await store._sql.delete(conn, [load_job(r[0]) for r in rows], now)

        events = await store._run(op)
        store._emit(events)
        total += len(events)
        if len(events) < batch:
            break
    return total


async def add_many(
    store: PostgresStore, jobs: Sequence[Job], *, max_queued: int | None
) -> list[tuple[Job, bool]]:
    """Insert a batch of jobs in one transaction (see :class:`.ops.OpsStatements`)."""
    batch = list(jobs)
    if not batch:
        return []
    for job in batch:
        check_storable(job)
    attempt = 0
    lock_key = f"asyncjobs:add:{store.schema}"

    async def op(conn: Conn) -> tuple[list[tuple[Job, bool]], list[JobEvent], bool]:
        nonlocal attempt
        attempt += 1
        if attempt > 1:
            stored = await store._ops.committed(conn, batch)
            if stored:  # our first attempt committed before the drop
                return [(stored.get(j.id, j), j.id in stored) for j in batch], [], True
        try:
            results, events = await store._ops.add_many(
                conn, batch, max_queued=max_queued, lock_key=lock_key
            )
        except import_asyncpg().UniqueViolationError:
            raise ValueError("a job of this batch has an id that exists already") from None
        return results, events, False

    results, events, replayed = await store._run(op)
    if replayed:
        for job, created in results:
            if created:
                await store._announce_again(job, EventType.CREATED, job.created_at)
        return results
    store._emit(events)
    return results


async def retry_many(
    store: PostgresStore,
    *,
    now: datetime,
    statuses: Collection[JobStatus],
    types: Collection[str] | None,
    owner: str | None,
) -> list[Job]:
    """Retry the jobs that match in place, a batch per transaction."""
    if types is not None and not types:
        return []
    retried: list[Job] = []
    while True:

        async def op(conn: Conn) -> list[JobEvent]:
            return await store._ops.retry_batch(
                conn, now=now, statuses=statuses, types=types, owner=owner
            )

        events = await store._run(op)
        store._emit(events)
        retried += [e.job for e in events]
        if len(events) < store._ops.batch_size():
            return retried


async def list_jobs(
    store: PostgresStore,
    *,
    statuses: Collection[JobStatus] | None,
    types: Collection[str] | None,
    owner: str | None,
    cursor: str | None,
    limit: int,
) -> Page:
    """One page of jobs, by id, and the cursor of the next (None: this is the last)."""
    query, args = store._sql.list_query(
        statuses=None if statuses is None else [JobStatus(s).value for s in statuses],
        types=None if types is None else list(types),
        owner=owner,
        cursor=cursor,
        limit=limit + 1,
    )
    rows = await store._run(lambda conn: conn.fetch(query, *args))
    jobs = [load_job(row[0]) for row in rows]
    if len(jobs) > limit:
        del jobs[limit:]
        return Page(jobs, jobs[-1].id if jobs else None)
    return Page(jobs, None)
