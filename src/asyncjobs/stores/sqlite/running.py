"""The writes of a running job's life, on the store thread: claim, renew, progress, finish.

These are the store's hot path (a drain makes two of them per job), so each writes only
the columns its step can change (:data:`.rows.SET_RUN`) and, after the claim, works
from the cached row (:mod:`.rows`) rather than reading and decoding it again.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Mapping
from datetime import datetime
from typing import Final

from ...job import EventType, Job, JobStatus
from ..protocol import Outcome
from ..steps import (
    claim_room,
    claim_step,
    finish_step,
    progress_step,
    renew_step,
    select_claims,
)
from .batch import Changes
from .rows import SET_RUN, RowCache, run_params, write_step
from .schema import job_from_row, job_record

__all__ = ["claim", "finish", "renew", "set_progress"]

_Q: Final = JobStatus.QUEUED.value
_R: Final = JobStatus.RUNNING.value
#: Random bytes per fencing token (``steps.new_token``'s size).
_TOKEN_BYTES: Final = 12


def _marks(count: int) -> str:
    return ", ".join("?" * count)


def claim(
    conn: sqlite3.Connection,
    changes: Changes,
    cache: RowCache,
    worker_id: str,
    wanted: list[str],
    limits: Mapping[str, int],
    limit: int,
    lease: float,
    now: datetime,
) -> list[Job]:
    """Claim up to ``limit`` queued jobs of the ``wanted`` types (highest priority, then
    oldest), within the per-type ``limits`` of running jobs."""
    claimed: list[Job] = []
    if not wanted or limit <= 0:
        return claimed
    running: dict[str, int] = {}
    limited = [t for t in wanted if t in limits]
    if limited:
        sql = (
            f"SELECT type, COUNT(*) FROM jobs WHERE status = ? "
            f"AND type IN ({_marks(len(limited))}) GROUP BY type"
        )
        running = dict(conn.execute(sql, (_R, *limited)).fetchall())
    room = claim_room(wanted, limits, running)
    eligible = [t for t in wanted if room.get(t, 1) > 0]
    # Each round takes the best queued jobs of the types with room left; a round that
    # skipped a type which ran out of room is followed by another.
    while eligible and len(claimed) < limit:
        sql = (
            f"SELECT record FROM jobs WHERE status = ? AND type IN ({_marks(len(eligible))}) "
            "ORDER BY priority DESC, id LIMIT ?"
        )
        rows = conn.execute(sql, (_Q, *eligible, limit - len(claimed))).fetchall()
        if not rows:
            break
        candidates = [job_from_row(record) for (record,) in rows]
        updates: list[tuple[object, ...]] = []
        # The tokens of the whole round from one read of the OS's random source (as
        # steps.new_token, but one system call rather than one per job).
        tokens = os.urandom(_TOKEN_BYTES * len(candidates)).hex()
        width = 2 * _TOKEN_BYTES
        chosen = select_claims(candidates, room, limit - len(claimed))
        for n, job in enumerate(chosen):
            token = tokens[n * width : (n + 1) * width]
            started = claim_step(job, worker_id, token, lease, now)
            record = job_record(started)
            updates.append((*run_params(started, record), started.id))
            cache.put(started, record)
            changes.emit(EventType.STARTED, started, now, record)
            claimed.append(started)
        conn.executemany(SET_RUN, updates)
        eligible = [t for t in eligible if room.get(t, 1) > 0]
    return claimed


def renew(
    conn: sqlite3.Connection,
    changes: Changes,
    cache: RowCache,
    job_id: str,
    token: str,
    lease: float,
    now: datetime,
) -> Job:
    """Extend the lease of a job running under ``token`` (no event: the lease is internal)."""
    renewed, _ = write_step(conn, cache, job_id, lambda job: renew_step(job, token, lease, now))
    return renewed


def set_progress(
    conn: sqlite3.Connection,
    changes: Changes,
    cache: RowCache,
    job_id: str,
    token: str,
    progress: float,
    message: str | None,
    now: datetime,
) -> Job:
    """Record the progress of a job running under ``token``."""
    updated, record = write_step(
        conn, cache, job_id, lambda job: progress_step(job, token, progress, message)
    )
    changes.emit(EventType.PROGRESS, updated, now, record)
    return updated


def finish(
    conn: sqlite3.Connection,
    changes: Changes,
    cache: RowCache,
    job_id: str,
    token: str,
    outcome: Outcome,
    now: datetime,
) -> Job:
    """End the attempt of a job running under ``token`` with ``outcome``."""
    events: list[EventType] = []

    def step(job: Job) -> Job:
        done, event = finish_step(job, token, outcome, now)
        events.append(event)
        return done

    done, record = write_step(conn, cache, job_id, step)
    changes.emit(events[-1], done, now, record)
    changes.wake = True  # a slot (and maybe a per-type slot) is free again
    return done
