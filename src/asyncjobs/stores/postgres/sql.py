"""The SQL of :class:`~asyncjobs.stores.postgres.PostgresStore`, built once per schema.

Writes and their NOTIFY go in one statement: a data-modifying CTE changes the rows, the
event ``seq`` comes from the schema's sequence, and ``pg_notify`` sends the payload
``prefix || seq || suffix`` (the event record, with its seq spliced in by the server).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, NamedTuple, final

from ...codec import dumps, format_time, job_from_record
from ...job import EventType, Job, JobEvent, JobStatus
from ..steps import claim_step
from .events import encode_head, encode_suffix
from .records import patch_of

__all__ = ["Change", "Statements", "change", "payload"]

_QUEUED = JobStatus.QUEUED.value
_RUNNING = JobStatus.RUNNING.value
_SCHEDULED = JobStatus.SCHEDULED.value
STARTED = EventType.STARTED

# Announce each deleted row: one seq and one notification each, in input order.
_ANNOUNCE = """
ev AS (
    SELECT d.ord, d.id, d.suffix, nextval('{s}.event_seq') AS seq
    FROM (SELECT data.* FROM data JOIN changed USING (id) ORDER BY data.ord) AS d
)
SELECT id, seq, pg_notify(${ch}, ${prefix} || seq::text || suffix) FROM ev ORDER BY ord
"""
#: A NOTIFY payload must stay below 8000 bytes.
_LIMIT = 7890
#: What a partial event keeps of a job too big for NOTIFY (see events.py).
_SLIM = '{"params": {}, "result": null, "error": null, "message": null, "tags": []}'


def payload(head: str, record: str, id: str) -> str:
    """SQL for a NOTIFY payload built on the server: ``head`` (the payload up to the
    job, seq included) and the job's ``record`` text, or a partial event if too big."""
    slim = f"({record}::jsonb || '{_SLIM}'::jsonb)::text"
    return f"""CASE
    WHEN octet_length({head}) + octet_length({record}) < {_LIMIT}
        THEN {head} || ',"job":' || {record} || '}}'
    WHEN octet_length({head}) + octet_length({slim}) < {_LIMIT}
        THEN {head} || ',"partial":true,"job":' || {slim} || '}}'
    ELSE {head} || ',"partial":true,"id":' || to_json({id})::text || '}}'
END"""


class Change(NamedTuple):
    """One change to one stored job, as :meth:`Statements.write` takes it."""

    job: Job  #: the snapshot after the change
    type: EventType
    at: datetime
    patch: str  #: JSON of the fields that changed (:func:`.records.patch_of`)
    expected: int | None  #: the version the row must still have (None: any)


def change(
    before: Job, after: Job, type: EventType, at: datetime, *, fenced: bool = True
) -> Change:
    """The change from ``before`` to ``after``, fenced on ``before``'s version."""
    patch = dumps(patch_of(before, after))
    return Change(after, type, at, patch, before.version if fenced else None)


@final
class Statements:
    """Every statement, with the quoted schema name ``s`` filled in."""

    def __init__(self, s: str, channel: str, prefix: str) -> None:
        self.s = s
        self.channel = channel
        self.prefix = prefix
        self.get = f"SELECT record::text FROM {s}.jobs WHERE id = $1"
        self.get_for_update = self.get + " FOR UPDATE"
        self.get_by_key = (
            f"SELECT record::text FROM {s}.jobs"
            " WHERE idempotency_key = $1 AND owner IS NOT DISTINCT FROM $2"
        )
        self.next_seq = f"SELECT nextval('{s}.event_seq')"
        # The jobs a claim committed under its nonce (every token it wrote starts so).
        self.claimed_sql = (
            f"SELECT record::text, nextval('{s}.event_seq') FROM {s}.jobs"
            f" WHERE status = '{_RUNNING}' AND starts_with(lease_token, $1)"
            " ORDER BY priority DESC, id"
        )
        self.lock = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))"
        self.lock_many = (
            "SELECT pg_advisory_xact_lock(hashtextextended(k, 0))"
            " FROM unnest($1::text[]) WITH ORDINALITY AS t(k, o) ORDER BY o"
        )
        self.count_waiting = (
            f"SELECT count(*) FROM {s}.jobs WHERE status IN ('{_QUEUED}', '{_SCHEDULED}')"
        )
        self.count_running = (
            f"SELECT type, count(*) FROM {s}.jobs"
            f" WHERE status = '{_RUNNING}' AND type = ANY($1::text[]) GROUP BY type"
        )
        self.pick = (
            f"SELECT record::text FROM {s}.jobs"
            f" WHERE status = '{_QUEUED}' AND type = ANY($1::text[])"
            " ORDER BY priority DESC, id LIMIT $2 FOR UPDATE SKIP LOCKED"
        )
        self.expired = (
            f"SELECT record::text FROM {s}.jobs"
            f" WHERE status = '{_RUNNING}' AND lease_expires_at <= $1"
            " ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED"
        )
        self.due = (
            f"SELECT record::text FROM {s}.jobs"
            f" WHERE status = '{_SCHEDULED}' AND run_at <= $1"
            " ORDER BY run_at, id LIMIT $2 FOR UPDATE SKIP LOCKED"
        )
        self.stats = f"SELECT type, status, count(*) FROM {s}.jobs GROUP BY type, status"
        self.renew = (
            f"UPDATE {s}.jobs SET lease_expires_at = $3,"
            " record = jsonb_set(record, '{lease,expires_at}', to_jsonb($4::text))"
            f" WHERE id = $1 AND status = '{_RUNNING}' AND lease_token = $2"
            " RETURNING record::text"
        )
        # The record is sent once, as text: stored as jsonb, and copied into the payload.
        self.insert = f"""
WITH ins AS (
    INSERT INTO {s}.jobs (id, type, status, priority, run_at, finished_at, retention,
                          idempotency_key, owner, record)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::text::jsonb)
    ON CONFLICT ((coalesce(owner, '')), (owner IS NULL), idempotency_key)
        WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id
),
ev AS (SELECT id, nextval('{s}.event_seq') AS seq FROM ins),
msg AS (SELECT id, seq, $12 || seq::text || $13 AS head, $10::text AS record FROM ev)
SELECT seq, pg_notify($11, {payload("head", "record", "id")}) FROM msg
"""
        # A job handed to a parked worker (see handoff.py): stored running, announced
        # twice, created (the queued record $11) then started (the running one, $10).
        self.insert_running = f"""
WITH ins AS (
    INSERT INTO {s}.jobs (id, type, status, priority, run_at, finished_at, retention,
                          idempotency_key, owner, lease_token, lease_expires_at, record)
    VALUES ($1, $2, '{_RUNNING}', $3, $4, NULL, $5, $6, $7, $8, $9, $10::text::jsonb)
    ON CONFLICT ((coalesce(owner, '')), (owner IS NULL), idempotency_key)
        WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id
),
created AS (SELECT id, nextval('{s}.event_seq') AS seq FROM ins),
started AS (SELECT id, seq AS first, nextval('{s}.event_seq') AS seq FROM created),
msg AS (
    SELECT id, first, seq, $10::text AS running, $11::text AS queued,
           $13 || first::text || $14 AS created_head, $13 || seq::text || $15 AS started_head
    FROM started
)
SELECT first, seq,
       pg_notify($12, {payload("created_head", "queued", "id")}),
       pg_notify($12, {payload("started_head", "running", "id")})
FROM msg
"""
        # A change is a patch merged into the stored record, fenced on the version it
        # was computed from: a row whose version is not ``expected`` (when given) is left
        # alone and not announced (an optimistic write that lost a race changes
        # nothing). A patch without a lease keeps the row's lease: a renew does not bump
        # the version, so the snapshot a progress report started from may hold an older
        # expiry than the row. The payloads are built here from the merged records.
        self.write_sql = f"""
WITH data AS (
    SELECT * FROM unnest($1::text[], $2::jsonb[], $3::text[], $4::int[])
    WITH ORDINALITY AS d(id, patch, head, expected, ord)
),
changed AS (
    -- The columns follow the record: each is taken from the patch when it changed.
    UPDATE {s}.jobs AS j SET
        status = coalesce(d.patch->>'status', j.status),
        priority = coalesce((d.patch->>'priority')::int, j.priority),
        run_at = coalesce((d.patch->>'run_at')::timestamptz, j.run_at),
        finished_at = CASE WHEN d.patch ? 'finished_at'
            THEN (d.patch->>'finished_at')::timestamptz ELSE j.finished_at END,
        lease_token = CASE WHEN d.patch ? 'lease'
            THEN d.patch->'lease'->>'token' ELSE j.lease_token END,
        lease_expires_at = CASE WHEN d.patch ? 'lease'
            THEN (d.patch->'lease'->>'expires_at')::timestamptz ELSE j.lease_expires_at END,
        record = j.record || d.patch
    FROM data AS d
    WHERE j.id = d.id
      AND (d.expected IS NULL OR (j.record->>'version')::int = d.expected)
    RETURNING j.id, j.record::text AS record
),
ev AS (
    SELECT d.*, nextval('{s}.event_seq') AS seq
    FROM (SELECT data.ord, data.id, data.head, changed.record
          FROM data JOIN changed USING (id) ORDER BY data.ord) AS d
),
msg AS (SELECT ord, id, seq, record, $6 || seq::text || head AS head FROM ev)
SELECT id, seq, pg_notify($5, {payload("head", "record", "id")}) FROM msg ORDER BY ord
"""
        delete = f"""
WITH data AS (
    SELECT * FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS d(id, suffix, ord)
),
changed AS (DELETE FROM {s}.jobs WHERE id IN (SELECT id FROM data) RETURNING id),"""
        self.delete_sql = delete + _ANNOUNCE.format(s=s, ch=3, prefix=4)
        # The whole claim in one statement (one round trip, its own transaction): pick
        # with SKIP LOCKED, apply steps.claim_step in SQL, draw seqs in claim order and
        # notify. The conformance suite checks that it agrees with the Python step.
        self.claim_sql = f"""
WITH picked AS (
    SELECT id FROM {s}.jobs
    WHERE status = '{_QUEUED}' AND type = ANY($1::text[])
      -- Taken (once, an InitPlan) before any row is locked; a retry waits on it.
      AND (SELECT pg_try_advisory_xact_lock(hashtextextended($10::text, 0)))
    ORDER BY priority DESC, id LIMIT $2 FOR UPDATE SKIP LOCKED
),
claimed AS (
    UPDATE {s}.jobs AS j
    SET status = '{_RUNNING}', lease_token = t.token, lease_expires_at = $4,
        record = j.record || jsonb_build_object(
            'status', '{_RUNNING}',
            'attempts', (j.record->>'attempts')::int + 1,
            'started_at', $5::text,
            'progress', 0.0,
            'message', NULL::text,
            'version', (j.record->>'version')::int + 1,
            'lease', jsonb_build_object(
                'worker_id', $3::text, 'token', t.token, 'expires_at', $6::text))
    FROM (SELECT id, $10::text || id AS token FROM picked) AS t
    WHERE j.id = t.id
    RETURNING j.id, j.priority, j.record
),
ev AS (
    SELECT o.id, o.record::text AS record, nextval('{s}.event_seq') AS seq
    FROM (SELECT * FROM claimed ORDER BY priority DESC, id) AS o
),
msg AS (SELECT id, record, seq, $8 || seq::text || $9 AS head FROM ev)
SELECT seq, record, pg_notify($7, {payload("head", "record", "id")})
FROM msg ORDER BY seq
"""

    async def claimed_by(self, conn: Any, nonce: str, now: datetime) -> list[JobEvent]:
        """The jobs an earlier attempt of the claim ``nonce`` committed, if it did.

        A claim whose reply was lost may still be running on the server: the advisory
        lock it took before locking any row is held until it commits or rolls back, so
        this waits for it, then reads what it claimed (still running under its tokens).
        """
        async with conn.transaction():
            await conn.execute(self.lock, nonce)
            rows = await conn.fetch(self.claimed_sql, nonce)
        return [
            JobEvent(EventType.STARTED, row[1], now, job_from_record(json.loads(row[0])))
            for row in rows
        ]

    async def write(self, conn: Any, changes: list[Change]) -> list[JobEvent]:
        """Store changes to existing jobs and announce them, in one statement.

        A change whose row no longer has its ``expected`` version is skipped: it is
        neither written nor announced, nor in the result.
        """
        if not changes:
            return []
        heads: dict[tuple[EventType, datetime], str] = {}
        for c in changes:
            if (c.type, c.at) not in heads:
                heads[(c.type, c.at)] = encode_head(c.type, c.at)
        rows = await conn.fetch(
            self.write_sql,
            [c.job.id for c in changes],
            [c.patch for c in changes],
            [heads[(c.type, c.at)] for c in changes],
            [c.expected for c in changes],
            self.channel,
            self.prefix,
        )
        seqs = {row[0]: row[1] for row in rows}
        return [JobEvent(c.type, seqs[c.job.id], c.at, c.job) for c in changes if c.job.id in seqs]

    async def delete(self, conn: Any, jobs: list[Job], now: datetime) -> list[JobEvent]:
        """Delete jobs and announce ``job_deleted`` with their last snapshots."""
        if not jobs:
            return []
        rows = await conn.fetch(
            self.delete_sql,
            [j.id for j in jobs],
            [encode_suffix(self.prefix, EventType.DELETED, j, now) for j in jobs],
            self.channel,
            self.prefix,
        )
        seqs = {row["id"]: row["seq"] for row in rows}
        return [JobEvent(EventType.DELETED, seqs[j.id], now, j) for j in jobs if j.id in seqs]

    async def claim(
        self,
        conn: Any,
        worker_id: str,
        types: list[str],
        limit: int,
        lease: float,
        now: datetime,
        nonce: str,
    ) -> list[JobEvent]:
        """Claim up to ``limit`` queued jobs of ``types`` (no type limits) in one statement.

        Each lease token is ``nonce`` followed by the job id, so :meth:`claimed_by` finds
        what this claim took if its reply is lost.
        """
        expires = now + timedelta(seconds=lease)
        rows = await conn.fetch(
            self.claim_sql,
            types,
            limit,
            worker_id,
            expires,
            format_time(now),
            format_time(expires),
            self.channel,
            self.prefix,
            encode_head(EventType.STARTED, now),
            nonce,
        )
        return [
            JobEvent(EventType.STARTED, row[0], now, job_from_record(json.loads(row[1])))
            for row in rows
        ]

    async def claim_limited(
        self,
        conn: Any,
        worker_id: str,
        limits: Mapping[str, int],
        free: list[str],
        limit: int,
        lease: float,
        now: datetime,
        schema: str,
        nonce: str,
    ) -> list[JobEvent]:
        """Claim with per-type limits, exact across processes: a transaction that holds
        an advisory lock per limited type while it counts that type's running jobs.
        Tokens and the nonce's lock are as in :meth:`claim`."""
        async with conn.transaction():
            await conn.execute(self.lock, nonce)
            texts: list[str] = []
            limited = sorted(limits)
            # Sorted lock order: two claimers never deadlock on each other.
            await conn.execute(self.lock_many, [f"asyncjobs:type:{schema}:{t}" for t in limited])
            running = dict(await conn.fetch(self.count_running, limited))
            for type_ in limited:
                room = min(limits[type_] - running.get(type_, 0), limit)
                if room > 0:
                    texts += [r[0] for r in await conn.fetch(self.pick, [type_], room)]
            if free:
                texts += [r[0] for r in await conn.fetch(self.pick, free, limit)]
            jobs = [job_from_record(json.loads(text)) for text in texts]
            picked = sorted(jobs, key=lambda j: (-j.priority, j.id))[:limit]
            changes = [
                change(j, claim_step(j, worker_id, nonce + j.id, lease, now), STARTED, now)
                for j in picked
            ]
            return await self.write(conn, changes)

    def list_query(
        self,
        *,
        statuses: list[str] | None,
        types: list[str] | None,
        owner: str | None,
        cursor: str | None,
        limit: int,
    ) -> tuple[str, list[Any]]:
        where, args = _filters(statuses=statuses, types=types)
        if owner is not None:
            args.append(owner)
            where.append(f"owner = ${len(args)}")
        if cursor is not None:
            args.append(cursor)
            where.append(f"id < ${len(args)}")
        args.append(limit)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        return (
            f"SELECT record::text FROM {self.s}.jobs{clause} ORDER BY id DESC LIMIT ${len(args)}",
            args,
        )

    def purge_query(
        self,
        *,
        statuses: list[str],
        types: list[str] | None,
        finished_before: datetime | None,
        expired_at: datetime | None,
        limit: int,
    ) -> tuple[str, list[Any]]:
        where, args = _filters(statuses=statuses, types=types)
        if finished_before is not None:
            args.append(finished_before)
            where.append(f"finished_at < ${len(args)}")
        if expired_at is not None:
            args.append(expired_at)
            where.append(
                "retention IS NOT NULL AND finished_at IS NOT NULL"
                f" AND finished_at + retention * interval '1 second' <= ${len(args)}"
            )
        args.append(limit)
        return (
            f"SELECT record::text FROM {self.s}.jobs WHERE {' AND '.join(where)}"
            f" ORDER BY id LIMIT ${len(args)} FOR UPDATE SKIP LOCKED",
            args,
        )


def _filters(*, statuses: list[str] | None, types: list[str] | None) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    args: list[Any] = []
    if statuses is not None:
        args.append(statuses)
        where.append(f"status = ANY(${len(args)}::text[])")
    if types is not None:
        args.append(types)
        where.append(f"type = ANY(${len(args)}::text[])")
    return where, args
