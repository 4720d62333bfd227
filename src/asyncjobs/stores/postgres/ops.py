"""Batch submit and retry in place for :class:`~.store.PostgresStore`: their SQL and steps.

Kept apart from :mod:`.sql` so the core job statements stay as they are. Both follow the
store's rule that a change and its announcement are one statement: the multi-row insert
draws one ``seq`` and sends one NOTIFY per new row, in input order.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any, final

from ...codec import dumps, job_from_record, job_to_record
from ...errors import QueueFull
from ...job import EventType, Job, JobEvent, JobStatus
from ..steps import check_retry_statuses, retry_step
from .events import encode_head
from .sql import Statements, change, payload

__all__ = ["OpsStatements"]

_BATCH = 500


@final
class OpsStatements:
    """The statements of add_many and retry_many, for one schema."""

    def __init__(self, sql: Statements) -> None:
        s = sql.s
        self.sql = sql
        # One multi-row insert; a row whose idempotency key is taken is skipped (and not
        # announced), exactly as the single-row insert does.
        self.insert_many = f"""
WITH data AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::timestamptz[],
                         $6::timestamptz[], $7::float8[], $8::text[], $9::text[],
                         $10::text[], $11::text[])
    WITH ORDINALITY AS d(id, type, status, priority, run_at, finished_at, retention,
                         idempotency_key, owner, record, head, ord)
),
ins AS (
    INSERT INTO {s}.jobs (id, type, status, priority, run_at, finished_at, retention,
                          idempotency_key, owner, record)
    SELECT id, type, status, priority, run_at, finished_at, retention, idempotency_key,
           owner, record::jsonb
    FROM data ORDER BY ord
    ON CONFLICT ((coalesce(owner, '')), (owner IS NULL), idempotency_key)
        WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id
),
ev AS (
    SELECT d.ord, d.id, d.record, d.head, nextval('{s}.event_seq') AS seq
    FROM (SELECT data.* FROM data JOIN ins USING (id) ORDER BY data.ord) AS d
),
msg AS (SELECT ord, id, seq, record, $13 || seq::text || head AS head FROM ev)
SELECT id, seq, pg_notify($12, {payload("head", "record", "id")}) FROM msg ORDER BY ord
"""
        # Keys are unique per owner (a NULL owner is one owner of its own).
        self.get_by_keys = (
            f"SELECT j.owner, j.idempotency_key, j.record::text FROM {s}.jobs AS j"
            " JOIN unnest($1::text[], $2::text[]) AS k(owner, key)"
            " ON j.idempotency_key = k.key AND j.owner IS NOT DISTINCT FROM k.owner"
        )
        self.get_many = f"SELECT id, record::text FROM {s}.jobs WHERE id = ANY($1::text[])"
        self.retryable = (
            f"SELECT record::text FROM {s}.jobs"
            " WHERE status = ANY($1::text[])"
            " AND ($2::text[] IS NULL OR type = ANY($2::text[]))"
            " AND ($3::text IS NULL OR owner = $3)"
            " ORDER BY id LIMIT $4 FOR UPDATE SKIP LOCKED"
        )

    async def add_many(
        self,
        conn: Any,
        jobs: Sequence[Job],
        *,
        max_queued: int | None,
        lock_key: str,
    ) -> tuple[list[tuple[Job, bool]], list[JobEvent]]:
        """Insert ``jobs`` (first of each idempotency key only) in one statement.

        Returns the results in input order and the events of the rows inserted.
        """
        sql = self.sql
        first: dict[tuple[str | None, str], Job] = {}
        fresh: list[Job] = []
        for job in jobs:
            key = None if job.idempotency_key is None else (job.owner, job.idempotency_key)
            if key is None or key not in first:
                fresh.append(job)
                if key is not None:
                    first[key] = job
        records = [dumps(job_to_record(j)) for j in fresh]
        args = (
            [j.id for j in fresh],
            [j.type for j in fresh],
            [j.status.value for j in fresh],
            [j.priority for j in fresh],
            [j.run_at for j in fresh],
            [j.finished_at for j in fresh],
            [j.retention for j in fresh],
            [j.idempotency_key for j in fresh],
            [j.owner for j in fresh],
            records,
            [encode_head(EventType.CREATED, j.created_at) for j in fresh],
            sql.channel,
            sql.prefix,
        )

        async def insert() -> tuple[list[tuple[Job, bool]], list[JobEvent]]:
            rows = await conn.fetch(self.insert_many, *args)
            seqs = {row["id"]: row["seq"] for row in rows}
            taken = [k for k, j in first.items() if j.id not in seqs]
            holders: dict[tuple[str | None, str], Job] = {}
            if taken:
                # In the same transaction, a new snapshot: it sees the rows that won.
                owners, keys = [k[0] for k in taken], [k[1] for k in taken]
                for owner, key, text in await conn.fetch(self.get_by_keys, owners, keys):
                    holders[(owner, key)] = job_from_record(json.loads(text))
            results: list[tuple[Job, bool]] = []
            for job in jobs:
                if job.id in seqs:
                    results.append((job, True))
                    continue
                if job.idempotency_key is None:
                    raise ValueError(f"a job with id {job.id} exists already")
                key = (job.owner, job.idempotency_key)
                holder = holders.get(key, first[key] if first[key].id in seqs else None)
                if holder is None:
                    raise ValueError(f"idempotency key {job.idempotency_key!r} is in flux")
                results.append((holder, False))
            events = [
                JobEvent(EventType.CREATED, seqs[j.id], j.created_at, j)
                for j in fresh
                if j.id in seqs
            ]
            # Counted after the insert, so the count includes this batch.
            if (
                max_queued is not None
                and events
                and await conn.fetchval(sql.count_waiting) > max_queued
            ):
                raise QueueFull(max_queued)
            return results, events

        async with conn.transaction():
            if max_queued is not None:
                await conn.execute(sql.lock, lock_key)  # exact across processes
            return await insert()

    async def committed(self, conn: Any, jobs: Sequence[Job]) -> dict[str, Job]:
        """Those of ``jobs`` stored already, by id (after a reply lost to a drop)."""
        rows = await conn.fetch(self.get_many, [j.id for j in jobs])
        return {row[0]: job_from_record(json.loads(row[1])) for row in rows}

    async def retry_batch(
        self,
        conn: Any,
        *,
        now: datetime,
        statuses: Collection[JobStatus],
        types: Collection[str] | None,
        owner: str | None,
    ) -> list[JobEvent]:
        """Retry in place up to one batch of matching jobs, in one transaction."""
        chosen = sorted(s.value for s in check_retry_statuses(statuses))
        async with conn.transaction():
            rows = await conn.fetch(
                self.retryable,
                chosen,
                None if types is None else sorted(set(types)),
                owner,
                _BATCH,
            )
            jobs = [job_from_record(json.loads(r[0])) for r in rows]
            changes = [change(j, retry_step(j, now), EventType.RETRYING, now) for j in jobs]
            return await self.sql.write(conn, changes)

    @staticmethod
    def batch_size() -> int:
        return _BATCH
