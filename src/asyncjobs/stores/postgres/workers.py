"""The worker registry of :class:`~.store.PostgresStore`: one row per live worker in ``workers``.

A heartbeat replaces the worker's row and deletes the rows of workers that died (expired
at or before the heartbeat), so listing them stays a plain read.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ...codec import dumps, worker_from_record, worker_to_record
from ..protocol import WorkerInfo
from .schema import quote_ident

if TYPE_CHECKING:
    from .store import PostgresStore

__all__ = ["delete_worker", "list_workers", "register_worker"]

Conn = Any  # asyncpg.Connection; asyncpg is imported lazily


async def register_worker(store: PostgresStore, info: WorkerInfo) -> None:
    """Write a worker's heartbeat (its record and expiry); drop dead workers' rows."""
    table = f"{quote_ident(store.schema)}.workers"
    record = dumps(worker_to_record(info))

    async def op(conn: Conn) -> None:
        # Records of dead workers go here, so listing them stays a plain read.
        await conn.execute(f"DELETE FROM {table} WHERE expires_at <= $1", info.last_heartbeat)
        await conn.execute(
            f"INSERT INTO {table} (id, expires_at, record) VALUES ($1, $2, $3::jsonb) "
            "ON CONFLICT (id) DO UPDATE SET expires_at = EXCLUDED.expires_at, "
            "record = EXCLUDED.record",
            info.id,
            info.expires_at,
            record,
        )

    await store._run(op)


async def list_workers(store: PostgresStore, *, now: datetime) -> list[WorkerInfo]:
    """The workers whose records have not expired at ``now``, by id."""
    sql = (
        f"SELECT record::text FROM {quote_ident(store.schema)}.workers "
        "WHERE expires_at > $1 ORDER BY id"
    )
    rows = await store._run(lambda conn: conn.fetch(sql, now))
    return [worker_from_record(json.loads(r[0])) for r in rows]


async def delete_worker(store: PostgresStore, worker_id: str) -> None:
    """Delete a worker's row."""
    sql = f"DELETE FROM {quote_ident(store.schema)}.workers WHERE id = $1"
    await store._run(lambda conn: conn.execute(sql, worker_id))
