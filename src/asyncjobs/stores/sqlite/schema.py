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

__all__ = [
    "JOB_COLUMNS",
    "MIGRATIONS",
    "job_from_row",
    "job_params",
    "job_record",
    "micros",
    "migrate",
    "scoped_key",
]

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
    # 3: webhooks and their durable outbox (see stores/sqlite/webhooks.py).
    (
        """
        CREATE TABLE webhooks (
            id         TEXT PRIMARY KEY,
            url        TEXT NOT NULL,
            events     TEXT NOT NULL,  -- ",job_completed,job_failed," for instr()
            secret     TEXT NOT NULL,
            created_at INTEGER NOT NULL
        ) WITHOUT ROWID
        """,
        """
        CREATE TABLE webhook_deliveries (
            id           TEXT PRIMARY KEY,  -- the webhook-id header, stable across retries
            webhook_id   TEXT NOT NULL,
            event        TEXT NOT NULL,
            job_id       TEXT NOT NULL,
            record       TEXT NOT NULL,     -- the job at its end: the body of every retry
            at           INTEGER NOT NULL,
            status       TEXT NOT NULL,
            attempts     INTEGER NOT NULL DEFAULT 0,
            next_at      INTEGER,
            last_error   TEXT,
            delivered_at INTEGER
        ) WITHOUT ROWID
        """,
        "CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_at)",
        "CREATE INDEX webhook_deliveries_hook ON webhook_deliveries (webhook_id, at)",
        # The outbox row is written by the same transaction as the job's end, whichever
        # store method ends it (finish, cancel, lease expiry): nothing can come between.
        """
        CREATE TRIGGER jobs_webhook_outbox AFTER UPDATE OF status ON jobs
        WHEN NEW.status IN ('completed', 'failed', 'cancelled')
             AND OLD.status IS NOT NEW.status
        BEGIN
            INSERT OR IGNORE INTO webhook_deliveries
                (id, webhook_id, event, job_id, record, at, status, attempts, next_at)
            SELECT 'msg_' || NEW.id || '_'
                       || json_array_length(json_extract(NEW.record, '$.history'))
                       || '_' || w.id,
                   w.id, 'job_' || NEW.status, NEW.id, NEW.record,
                   COALESCE(NEW.finished_at, NEW.run_at), 'pending', 0,
                   COALESCE(NEW.finished_at, NEW.run_at)
            FROM webhooks AS w
            WHERE instr(w.events, ',job_' || NEW.status || ',') > 0;
        END
        """,
    ),
    # 4: idempotency keys are unique per owner: the idempotency_key column (UNIQUE) holds
    # the key scoped by its owner (see scoped_key); the record keeps the key itself.
    (
        "UPDATE jobs SET idempotency_key = owner || char(0) || idempotency_key"
        " WHERE idempotency_key IS NOT NULL AND owner IS NOT NULL",
    ),
    # 5: the outbox rows are written by the transaction that ends a job, from its end
    # events (batch.py, webhooks.write_outbox): any UPDATE trigger on jobs, even one
    # whose WHEN is false, doubles the cost of every update of a job row.
    ("DROP TRIGGER IF EXISTS jobs_webhook_outbox",),
)

JOB_COLUMNS: Final = (
    "id, type, status, priority, owner, idempotency_key, run_at, finished_at, "
    "lease_expires_at, retention, record"
)


def micros(value: datetime) -> int:
    """Exact integer microseconds since the epoch (floats would round near 2**53)."""
    return (value - _EPOCH) // _MICRO


def scoped_key(owner: str | None, key: str | None) -> str | None:
    """The ``idempotency_key`` column: the key, prefixed by its owner and a NUL.

    Neither an owner nor a key may hold NUL (``jsonrules.check_storable``), and a key without
    an owner has no NUL, so two (owner, key) pairs never share a column value.
    """
    if key is None or owner is None:
        return key
    return f"{owner}\x00{key}"


def job_params(job: Job) -> tuple[Any, ...]:
    """The values of :data:`JOB_COLUMNS` for ``job``, in order."""
    return (
        job.id,
        job.type,
        job.status.value,
        job.priority,
        job.owner,
        scoped_key(job.owner, job.idempotency_key),
        micros(job.run_at),
        None if job.finished_at is None else micros(job.finished_at),
        None if job.lease is None else micros(job.lease.expires_at),
        job.retention,
        job_record(job),
    )


def job_record(job: Job) -> str:
    """The ``record`` column of ``job``: its full JSON record (``codec.job_to_record``)."""
    return dumps(job_to_record(job))


def job_from_row(record: str) -> Job:
    """The job a ``record`` column holds."""
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
