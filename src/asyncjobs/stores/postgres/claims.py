"""A worker's side of :class:`~.store.PostgresStore`: claiming jobs and renewing their leases.

Both are one statement each; a claim a dropped connection may have committed is found
again by its nonce, and a renewal retried after an outage moves its expiry on by the
time spent retrying.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Collection, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from ...codec import format_time
from ...errors import LeaseLost
from ...job import Job, JobEvent
from ..steps import check_lease
from .bulk import load_job

if TYPE_CHECKING:
    from .store import PostgresStore

__all__ = ["claim", "renew"]

Conn = Any  # asyncpg.Connection; asyncpg is imported lazily


async def claim(
    store: PostgresStore,
    worker_id: str,
    *,
    types: Collection[str],
    limit: int,
    lease: float,
    now: datetime,
    type_limits: Mapping[str, int] | None = None,
) -> list[Job]:
    """Claim up to ``limit`` queued jobs of ``types`` for ``worker_id`` (see the store's
    docstring: ``FOR UPDATE SKIP LOCKED``, advisory locks for limited types)."""
    wanted = sorted(set(types))
    if not wanted or limit <= 0:
        return []
    if store._handoffs is not None and (handed := store._handoffs.take(worker_id)):
        # Stored as claimed by this worker already: no round trip. The held snapshot
        # is the newest (a cancel request through this instance updates it).
        return [store._held.get(job.id, job) for job in handed]
    generation = store._notifier.work_generation()
    limits = {t: n for t, n in (type_limits or {}).items() if t in wanted}
    free = [t for t in wanted if t not in limits]
    adds = store._idle.adds
    if limits:
        store._idle.forget(worker_id)
    elif store._idle.nothing_for(worker_id, free):  # see .idle
        if store._handoffs is not None:
            store._handoffs.claimed(worker_id, wanted, limits, lease, generation, short=True)
        return []
    # The pool retries a call whose connection dropped, and the first attempt may
    # have committed before its reply was lost: every attempt of this claim writes
    # tokens that start with one nonce, and a retry first takes back what an earlier
    # attempt claimed, so no job is left running under a token nobody holds.
    nonce = secrets.token_hex(16)
    attempts = 0

    async def op(conn: Conn) -> list[JobEvent]:
        nonlocal attempts
        attempts += 1
        if attempts > 1 and (earlier := await store._sql.claimed_by(conn, nonce, now)):
            return earlier
        if not limits:
            return await store._sql.claim(conn, worker_id, free, limit, lease, now, nonce)
        return await store._sql.claim_limited(
            conn, worker_id, limits, free, limit, lease, now, store.schema, nonce
        )

    events = await store._run(op)
    store._emit(events)
    claimed = [e.job for e in events]
    store._hold(claimed)
    short = len(claimed) < limit
    # Not after a retry: its pick may have come back empty on the nonce's lock.
    if short and not limits and attempts == 1:
        store._idle.short(worker_id, adds, free)
    if store._handoffs is not None:
        store._handoffs.claimed(worker_id, wanted, limits, lease, generation, short=short)
    return claimed


async def renew(
    store: PostgresStore, job_id: str, token: str, *, lease: float, now: datetime
) -> Job:
    """Extend the lease of a job ``token`` holds."""
    # One statement, no row lock held across round trips: renewals are frequent.
    started = time.monotonic()
    retried = False

    def retrying() -> None:
        nonlocal retried
        retried = True

    def renew(conn: Conn) -> Any:  # a coroutine: asyncpg is untyped
        # A try after an outage must not write the expiry the first try computed:
        # that may be past already. Move ``now`` on by the time spent retrying.
        waited = time.monotonic() - started if retried else 0.0
        expires = now + timedelta(seconds=lease + waited)
        return conn.fetchval(store._sql.renew, job_id, token, expires, format_time(expires))

    text = await store._run(renew, on_retry=retrying)
    if text is None:
        store._held.pop(job_id, None)
        check_lease(await store.get(job_id), token)  # raises JobNotFound or LeaseLost
        raise LeaseLost(job_id)
    job = load_job(text)
    if job_id in store._held:  # not re-added if it finished meanwhile
        store._held[job_id] = job
    return job
