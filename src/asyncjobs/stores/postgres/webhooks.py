"""The webhook registry and outbox of :class:`~.store.PostgresStore` (migration 2).

Outbox rows are written by the ``jobs_webhook_outbox`` trigger in the transaction that
ends a job. ``claim`` hides due rows from other senders with ``FOR UPDATE SKIP LOCKED``
and a lease, in one statement.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any, final

from ...codec import job_from_record
from ...webhooks.model import Delivery, DeliveryStatus, Webhook, WebhookNotFound

__all__ = ["WebhookStatements"]

_D = (
    "d.id, d.webhook_id, d.event, d.record::text, d.at, d.status, d.attempts, d.next_at,"
    " d.last_error, d.delivered_at"
)


def _hook(row: Any) -> Webhook:
    return Webhook(
        id=row["id"],
        url=row["url"],
        events=tuple(row["events"]),
        secret=row["secret"],
        created_at=row["created_at"],
    )


def _delivery(row: Any) -> Delivery:
    return Delivery(
        id=row[0],
        webhook_id=row[1],
        event=row[2],
        job=job_from_record(json.loads(row[3])),
        at=row[4],
        status=row[5],
        attempts=row[6],
        next_at=row[7],
        last_error=row[8],
        delivered_at=row[9],
    )


@final
class WebhookStatements:
    """The webhook statements for one schema (``s`` quoted)."""

    def __init__(self, s: str) -> None:
        self.upsert = (
            f"INSERT INTO {s}.webhooks (id, url, events, secret, created_at)"
            " VALUES ($1, $2, $3::text[], $4, $5) ON CONFLICT (id) DO UPDATE"
            " SET url = excluded.url, events = excluded.events, secret = excluded.secret"
            " RETURNING id, url, events, secret, created_at"
        )
        self.all = (
            f"SELECT id, url, events, secret, created_at FROM {s}.webhooks ORDER BY created_at, id"
        )
        self.delete = f"DELETE FROM {s}.webhooks WHERE id = $1 RETURNING id"
        self.delete_deliveries = f"DELETE FROM {s}.webhook_deliveries WHERE webhook_id = $1"
        self.exists = f"SELECT 1 FROM {s}.webhooks WHERE id = $1"
        self.any = f"SELECT EXISTS (SELECT 1 FROM {s}.webhooks)"
        self.claim = f"""
WITH due AS (
    SELECT id FROM {s}.webhook_deliveries
    WHERE status = '{DeliveryStatus.PENDING}' AND next_at <= $1
    ORDER BY next_at, id LIMIT $2 FOR UPDATE SKIP LOCKED
),
hidden AS (
    UPDATE {s}.webhook_deliveries AS d SET next_at = $3
    FROM due WHERE d.id = due.id
    RETURNING d.*
)
SELECT {_D.replace("d.", "h.")}, w.id AS hook_id, w.url, w.events, w.secret, w.created_at
FROM hidden AS h JOIN {s}.webhooks AS w ON w.id = h.webhook_id
ORDER BY h.next_at, h.id
"""
        self.finish = (
            f"UPDATE {s}.webhook_deliveries SET status = $2, attempts = attempts + 1,"
            " next_at = $3, last_error = $4, delivered_at = $5 WHERE id = $1"
        )
        self.list = f"SELECT {_D} FROM {s}.webhook_deliveries AS d WHERE d.webhook_id = $1"
        self.purge = (
            f"DELETE FROM {s}.webhook_deliveries WHERE id IN (SELECT id FROM"
            f" {s}.webhook_deliveries WHERE status != '{DeliveryStatus.PENDING}'"
            " AND COALESCE(delivered_at, at) < $1 LIMIT $2)"
        )

    async def add(self, conn: Any, hook: Webhook, now: datetime) -> Webhook:
        row = await conn.fetchrow(
            self.upsert, hook.id, hook.url, list(hook.events), hook.secret, now
        )
        return _hook(row)

    async def list_hooks(self, conn: Any) -> list[Webhook]:
        return [_hook(row) for row in await conn.fetch(self.all)]

    async def remove(self, conn: Any, webhook_id: str) -> None:
        async with conn.transaction():
            if await conn.fetchval(self.delete, webhook_id) is None:
                raise WebhookNotFound(webhook_id)
            await conn.execute(self.delete_deliveries, webhook_id)

    async def take(
        self, conn: Any, now: datetime, limit: int, lease: float
    ) -> list[tuple[Delivery, Webhook]]:
        rows = await conn.fetch(self.claim, now, limit, now + timedelta(seconds=lease))
        return [
            (
                _delivery(row),
                Webhook(
                    id=row["hook_id"],
                    url=row["url"],
                    events=tuple(row["events"]),
                    secret=row["secret"],
                    created_at=row["created_at"],
                ),
            )
            for row in rows
        ]

    async def record(
        self,
        conn: Any,
        delivery_id: str,
        now: datetime,
        ok: bool,
        error: str | None,
        retry_at: datetime | None,
    ) -> None:
        if ok:
            status, next_at, delivered = DeliveryStatus.DELIVERED, None, now
        elif retry_at is not None:
            status, next_at, delivered = DeliveryStatus.PENDING, retry_at, None
        else:
            status, next_at, delivered = DeliveryStatus.DEAD, None, None
        await conn.execute(
            self.finish, delivery_id, status, next_at, None if ok else error, delivered
        )

    async def deliveries(
        self, conn: Any, webhook_id: str, status: str | None, limit: int
    ) -> list[Delivery]:
        if await conn.fetchval(self.exists, webhook_id) is None:
            raise WebhookNotFound(webhook_id)
        sql, args = self.list, [webhook_id]
        if status is not None:
            sql += " AND d.status = $2"
            args.append(status)
        sql += f" ORDER BY d.at DESC, d.id DESC LIMIT ${len(args) + 1}"
        return [_delivery(row) for row in await conn.fetch(sql, *args, limit)]
