"""Reading and writing job rows on the store thread, with a cache of running jobs.

A running job is written several times by the process that holds it (its claim, its
progress, its finish), and each write used to read the row back and decode its JSON
first. :class:`RowCache` keeps, for each job this store instance last wrote while it
ran, the job and the exact record it wrote. A write then goes out as a compare-and-set:
``UPDATE ... WHERE id = ? AND record = ?`` with the cached record. If anything else
changed the row meanwhile (another process, the janitor, a cancel request), the record
differs, nothing is updated, and the write falls back to reading the row: the cache
saves work but is never trusted. The cache lives on the store thread only and is
dropped whenever a transaction rolls back.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Final, final

from ...errors import IllegalTransition, JobNotFound, LeaseLost
from ...job import Job, JobStatus
from .schema import job_from_row, job_params, job_record, micros

__all__ = ["RowCache", "fetch", "save", "write_step"]

#: Jobs kept at most; a process rarely runs more at once (concurrency plus prefetch).
CACHE_LIMIT: Final = 4096

_UPDATE: Final = (
    "UPDATE jobs SET type = ?, status = ?, priority = ?, owner = ?, idempotency_key = ?, "
    "run_at = ?, finished_at = ?, lease_expires_at = ?, retention = ?, record = ? WHERE id = ?"
)
#: What a running job's own writes (claim, renew, progress, finish) can change: never
#: its type, priority, owner, key or retention, so their index entries stay untouched.
SET_RUN: Final = (
    "UPDATE jobs SET status = ?, run_at = ?, finished_at = ?, lease_expires_at = ?, "
    "record = ? WHERE id = ?"
)
_CAS_RUN: Final = f"{SET_RUN} AND record = ?"
_SELECT: Final = "SELECT record FROM jobs WHERE id = ?"

#: The errors a step raises on a job it must not change; on a cached job they may only
#: mean the cache is behind, so the write reads the row and takes the step again.
_REFUSED: Final = (LeaseLost, IllegalTransition, ValueError)


@final
class RowCache:
    """``job id -> (job, record)`` for running jobs this instance wrote; see the module."""

    __slots__ = ("_rows",)

    def __init__(self) -> None:
        self._rows: dict[str, tuple[Job, str]] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, job_id: str) -> tuple[Job, str] | None:
        return self._rows.get(job_id)

    def put(self, job: Job, record: str) -> None:
        """Remember ``job`` as stored in ``record`` while it runs; forget it otherwise."""
        rows = self._rows
        if job.status is not JobStatus.RUNNING:
            rows.pop(job.id, None)
            return
        rows[job.id] = (job, record)
        if len(rows) > CACHE_LIMIT:  # leases lost to another process leave entries
            del rows[next(iter(rows))]

    def drop(self, job_id: str) -> None:
        self._rows.pop(job_id, None)

    def clear(self) -> None:
        self._rows.clear()


def fetch(conn: sqlite3.Connection, cache: RowCache, job_id: str) -> tuple[Job, str]:
    """The job's current row: decoded, unless it is the record the cache holds."""
    row = conn.execute(_SELECT, (job_id,)).fetchone()
    if row is None:
        raise JobNotFound(job_id)
    record: str = row[0]
    hit = cache.get(job_id)
    if hit is not None and hit[1] == record:
        return hit
    return job_from_row(record), record


def save(conn: sqlite3.Connection, cache: RowCache, job: Job) -> str:
    """Write every column of ``job``'s row; return its record."""
    job_id, *rest = params = job_params(job)
    conn.execute(_UPDATE, (*rest, job_id))
    record: str = params[-1]
    cache.put(job, record)
    return record


def run_params(job: Job, record: str) -> tuple[object, ...]:
    """The values of :data:`SET_RUN` before the id."""
    lease = job.lease
    return (
        job.status.value,
        micros(job.run_at),
        None if job.finished_at is None else micros(job.finished_at),
        None if lease is None else micros(lease.expires_at),
        record,
    )


def write_step(
    conn: sqlite3.Connection, cache: RowCache, job_id: str, step: Callable[[Job], Job]
) -> tuple[Job, str]:
    """Apply ``step`` (a running job's own change) to the job and store the result.

    From the cached job when the row still holds its record (no read, no decode);
    otherwise from the row as read now (the step then raises if it must).
    """
    hit = cache.get(job_id)
    if hit is not None:
        job, old = hit
        try:
            new = step(job)
        except _REFUSED:
            pass  # maybe the cache is behind: decide on the row itself below
        else:
            record = job_record(new)
            if conn.execute(_CAS_RUN, (*run_params(new, record), job_id, old)).rowcount:
                cache.put(new, record)
                return new, record
    job, _ = fetch(conn, cache, job_id)
    new = step(job)
    record = job_record(new)
    conn.execute(SET_RUN, (*run_params(new, record), job_id))
    cache.put(new, record)
    return new, record
