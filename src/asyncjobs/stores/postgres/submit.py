"""Single submits of :class:`~.store.PostgresStore`: insert, handoff, handed jobs given back.

A submit is one statement that writes the row, draws its event's ``seq`` and sends the
NOTIFY; a job submitted while a worker of this instance is parked is inserted already
claimed by it (:mod:`.handoff`). The store's ``add`` calls :func:`add`.
"""

from __future__ import annotations

import logging
import secrets
from typing import TYPE_CHECKING, Any

from ...codec import dumps, job_to_record
from ...errors import QueueFull
from ...job import EventType, Job, JobEvent
from ...jsonrules import check_storable
from ..handoff import give_back
from ..steps import claim_step
from .bulk import load_job
from .events import encode_head
from .handoff import Standing
from .schema import import_asyncpg

if TYPE_CHECKING:
    from .store import PostgresStore

__all__ = ["add", "add_handed"]

logger = logging.getLogger("asyncjobs.store.postgres")

Conn = Any  # asyncpg.Connection; asyncpg is imported lazily


async def add(store: PostgresStore, job: Job, *, max_queued: int | None) -> tuple[Job, bool]:
    """Insert one job (handed to a parked worker when one waits; see :mod:`.handoff`)."""
    check_storable(job)
    sql = store._sql
    record = dumps(job_to_record(job))
    head = encode_head(EventType.CREATED, job.created_at)
    if max_queued is None and store._handoffs is not None:
        target = store._handoffs.target(job, store._notifier.work_generation())
        if target is not None:
            return await add_handed(store, job, target, record, head)
    attempt = 0

    async def insert(conn: Conn) -> tuple[Job, JobEvent | None]:
        try:
            row = await conn.fetchrow(
                sql.insert,
                job.id,
                job.type,
                job.status.value,
                job.priority,
                job.run_at,
                job.finished_at,
                job.retention,
                job.idempotency_key,
                job.owner,
                record,
                store._channel,
                store._prefix,
                head,
            )
        except import_asyncpg().UniqueViolationError:
            raise ValueError(f"a job with id {job.id} exists already") from None
        if row is not None:
            return job, JobEvent(EventType.CREATED, row["seq"], job.created_at, job)
        # The idempotency key is taken (ON CONFLICT DO NOTHING): return its job.
        text = await conn.fetchval(sql.get_by_key, job.idempotency_key, job.owner)
        if text is None:
            raise ValueError(f"idempotency key {job.idempotency_key!r} is in flux")
        return load_job(text), None

    async def op(conn: Conn) -> tuple[Job, JobEvent | None]:
        nonlocal attempt
        attempt += 1
        if attempt > 1:
            existing = await conn.fetchval(sql.get, job.id)
            if existing is not None and load_job(existing) == job:
                return job, None  # our first attempt committed before the drop
        if max_queued is None:
            return await insert(conn)  # one statement, its own transaction
        async with conn.transaction():
            if job.idempotency_key is not None:
                text = await conn.fetchval(sql.get_by_key, job.idempotency_key, job.owner)
                if text is not None:
                    return load_job(text), None
            # Serialize counted adds so max_queued is exact across processes.
            await conn.execute(sql.lock, f"asyncjobs:add:{store.schema}")
            if await conn.fetchval(sql.count_waiting) >= max_queued:
                raise QueueFull(max_queued)
            return await insert(conn)

    stored, event = await store._run(op)
    if event is None:
        if stored is job and attempt > 1:  # added by an attempt whose reply was lost
            await store._announce_again(job, EventType.CREATED, job.created_at)
            return job, True
        return stored, False
    store._emit([event])
    return stored, True


async def add_handed(
    store: PostgresStore, job: Job, target: Standing, record: str, head: str
) -> tuple[Job, bool]:
    """Store ``job`` as claimed by the parked worker ``target`` (see :mod:`.handoff`)."""
    sql = store._sql
    token = secrets.token_hex(16) + job.id
    running = claim_step(job, target.worker_id, token, target.lease, job.created_at)
    assert running.lease is not None
    expires = running.lease.expires_at
    running_record = dumps(job_to_record(running))
    started_head = encode_head(EventType.STARTED, job.created_at)
    attempt = 0

    async def op(conn: Conn) -> tuple[Job, list[JobEvent] | None]:
        nonlocal attempt
        attempt += 1
        if attempt > 1:
            text = await conn.fetchval(sql.get, job.id)
            if text is not None and load_job(text) == running:
                return running, []  # our first attempt committed before the drop
        try:
            row = await conn.fetchrow(
                sql.insert_running,
                job.id,
                job.type,
                job.priority,
                job.run_at,
                job.retention,
                job.idempotency_key,
                job.owner,
                token,
                expires,
                running_record,
                record,
                store._channel,
                store._prefix,
                head,
                started_head,
            )
        except import_asyncpg().UniqueViolationError:
            raise ValueError(f"a job with id {job.id} exists already") from None
        if row is None:  # the idempotency key is taken: return its job
            text = await conn.fetchval(sql.get_by_key, job.idempotency_key, job.owner)
            if text is None:
                raise ValueError(f"idempotency key {job.idempotency_key!r} is in flux")
            return load_job(text), None
        return running, [
            JobEvent(EventType.CREATED, row[0], job.created_at, job),
            JobEvent(EventType.STARTED, row[1], job.created_at, running),
        ]

    stored, events = await store._run(op)
    if events is None:
        return stored, False
    store._hold([running])
    assert store._handoffs is not None
    # No wake-up since the worker's short claim: the queue still holds nothing for
    # it, but for what the wake-up of this job's own announcement will suggest.
    quiet = store._notifier.work_generation() == target.generation
    if not store._handoffs.hand(target.worker_id, running):
        await give_back(store, [running])  # its worker unregistered meanwhile
        quiet = False
    if events:
        store._emit(events)  # the created event wakes the worker: it takes the job
        if quiet:
            store._idle.short(target.worker_id, store._idle.adds, target.types)
    else:
        await store._announce_again(job, EventType.CREATED, job.created_at)
        await store._announce_again(running, EventType.STARTED, job.created_at)
    return job, True
