"""The SQL of :class:`~asyncjobs.stores.postgres.PostgresStore`, built once per schema.

Writes and their NOTIFY go in one statement: a data-modifying CTE changes the rows, the
event ``seq`` comes from the schema's sequence, and ``pg_notify`` sends the payload
``prefix || seq || suffix`` (the event record, with its seq spliced in by the server).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, final

from ..job import JobStatus

__all__ = ["Statements"]

_QUEUED = JobStatus.QUEUED.value
_RUNNING = JobStatus.RUNNING.value
_SCHEDULED = JobStatus.SCHEDULED.value

# Announce each row of ``data`` (id, suffix, ord): one seq and one notification each,
# in input order.
_ANNOUNCE = """
ev AS (SELECT ord, suffix, nextval('{s}.event_seq') AS seq FROM data ORDER BY ord)
SELECT seq, pg_notify(${ch}, ${prefix} || seq::text || suffix) FROM ev ORDER BY ord
"""


@final
class Statements:
    """Every statement, with the quoted schema name ``s`` filled in."""

    def __init__(self, s: str) -> None:
        self.s = s
        self.get = f"SELECT record::text FROM {s}.jobs WHERE id = $1"
        self.get_for_update = self.get + " FOR UPDATE"
        self.get_by_key = f"SELECT record::text FROM {s}.jobs WHERE idempotency_key = $1"
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
        self.insert = f"""
WITH ins AS (
    INSERT INTO {s}.jobs (id, type, status, priority, run_at, finished_at, retention,
                          idempotency_key, owner, record)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb)
    ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id
),
ev AS (SELECT nextval('{s}.event_seq') AS seq FROM ins)
SELECT seq, pg_notify($11, $12 || seq::text || $13) FROM ev
"""
        self.write = f"""
WITH data AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::timestamptz[],
                         $5::timestamptz[], $6::text[], $7::timestamptz[], $8::text[],
                         $9::text[])
    WITH ORDINALITY AS d(id, status, priority, run_at, finished_at, lease_token,
                         lease_expires_at, record, suffix, ord)
),
up AS (
    UPDATE {s}.jobs AS j SET status = d.status, priority = d.priority, run_at = d.run_at,
        finished_at = d.finished_at, lease_token = d.lease_token,
        lease_expires_at = d.lease_expires_at, record = d.record::jsonb
    FROM data AS d WHERE j.id = d.id
),""" + _ANNOUNCE.format(s=s, ch=10, prefix=11)
        self.delete = f"""
WITH data AS (
    SELECT * FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS d(id, suffix, ord)
),
del AS (DELETE FROM {s}.jobs WHERE id IN (SELECT id FROM data)),""" + _ANNOUNCE.format(
            s=s, ch=3, prefix=4
        )

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
