"""The SQLite schema, its ordered migrations, and the row <-> Job mapping.

A job is stored twice over in one row: the columns the store queries on (status, type,
priority, owner, times as integer microseconds since the epoch, so comparisons are exact)
and the full JSON record from :func:`asyncjobs.codec.job_to_record`, which is what a
read rebuilds the job from. ``PRAGMA user_version`` is the number of migrations applied.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timedelta, timezone
from typing import Any, Final

from ...codec import dumps, job_from_record, job_to_record
from ...errors import ConfigurationError
from ...job import Job

__all__ = ["MIGRATIONS", "JOB_COLUMNS", "job_from_row", "job_params", "micros", "migrate"]

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICRO: Final = timedelta(microseconds=1)

#: Migration N (1-based) brings a database from user_version N-1 to N. Append only:
#: never edit a migration that has shipped.
MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        """
        CREATE TABLE jobs (
            id               TEXT PRIMARY KEY,
            type             TEXT NOT NULL,
            status           TEXT NOT NULL,
            priority         INTEGER NOT NULL,
            owner            TEXT,
            idempotency_key  TEXT UNIQUE,
            run_at           INTEGER NOT NULL,
            finished_at      INTEGER,
            lease_expires_at INTEGER,
            retention        REAL,
            record           TEXT NOT NULL
        ) WITHOUT ROWID
        """,
        # claim: queued jobs of some types, highest priority first, then FIFO by id;
        # also serves stats (GROUP BY status, type) from the index alone.
        "CREATE INDEX jobs_claim ON jobs (status, type, priority DESC, id)",
        # list filters, newest (highest id) first
        "CREATE INDEX jobs_status ON jobs (status, id)",
        "CREATE INDEX jobs_type ON jobs (type, id)",
        "CREATE INDEX jobs_owner ON jobs (owner, id)",
        # janitor: due scheduled jobs, expired leases, finished jobs past retention
        "CREATE INDEX jobs_run_at ON jobs (status, run_at, id)",
        "CREATE INDEX jobs_lease ON jobs (status, lease_expires_at)",
        "CREATE INDEX jobs_finished ON jobs (status, finished_at)",
        # the event sequence survives restarts, so seq keeps increasing
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
        "INSERT INTO meta (key, value) VALUES ('seq', 0)",
    ),
    (
        # Every event, appended in the transaction of its change, so that the other
        # processes on this file can tail it (see notify.py); trimmed by age.
        # src: the store instance that wrote it; stamp: wall clock (us) for trimming.
        """
        CREATE TABLE events (
            seq    INTEGER PRIMARY KEY,
            src    TEXT NOT NULL,
            stamp  INTEGER NOT NULL,
            record TEXT NOT NULL
        )
        """,
        # Store instances tailing the events table, each refreshed every second: a
        # writer appends events only while another instance is there to read them.
        """
        CREATE TABLE peers (
            src        TEXT PRIMARY KEY,
            expires_at INTEGER NOT NULL
        ) WITHOUT ROWID
        """,
        # The worker registry: one row per live worker, refreshed with its heartbeat.
        """
        CREATE TABLE workers (
            id         TEXT PRIMARY KEY,
            expires_at INTEGER NOT NULL,
            record     TEXT NOT NULL
        ) WITHOUT ROWID
        """,
    ),
)

JOB_COLUMNS: Final = (
    "id, type, status, priority, owner, idempotency_key, run_at, finished_at, "
    "lease_expires_at, retention, record"
)


def micros(value: datetime) -> int:
    """Exact integer microseconds since the epoch (floats would round near 2**53)."""
    return (value - _EPOCH) // _MICRO


def job_params(job: Job) -> tuple[Any, ...]:
    """The values of :data:`JOB_COLUMNS` for ``job``, in order."""
    return (
        job.id,
        job.type,
        job.status.value,
        job.priority,
        job.owner,
        job.idempotency_key,
        micros(job.run_at),
        None if job.finished_at is None else micros(job.finished_at),
        None if job.lease is None else micros(job.lease.expires_at),
        job.retention,
        dumps(job_to_record(job)),
    )


def job_from_row(record: str) -> Job:
    return job_from_record(json.loads(record))


def migrate(conn: sqlite3.Connection) -> int:
    """Apply the migrations this database lacks, in one transaction; return the version.

    ``BEGIN IMMEDIATE`` takes the write lock before reading ``user_version``, so two
    processes opening the same new file at once migrate it exactly once.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > len(MIGRATIONS):
            raise ConfigurationError(
                f"this SQLite database has schema version {version}, newer than this "
                f"asyncjobs understands ({len(MIGRATIONS)}); upgrade asyncjobs"
            )
        for number in range(version + 1, len(MIGRATIONS) + 1):
            for statement in MIGRATIONS[number - 1]:
                conn.execute(statement)
            # PRAGMA takes no parameters; number is an int we computed.
            conn.execute(f"PRAGMA user_version = {number:d}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return len(MIGRATIONS)
