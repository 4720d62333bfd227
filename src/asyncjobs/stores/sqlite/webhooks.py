"""The webhook registry and outbox of :class:`~.store.SqliteStore` (schema migration 2).

Outbox rows are written by :func:`write_outbox` inside the transaction that ends a job,
from the end events of that transaction (batch.py), whichever store method ended it (a
finish, a cancel, a lease expiry); the other functions register webhooks and move
deliveries along. Each runs in a store write transaction (or a read), on the store's
thread.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone
from typing import Any, Final

from ...job import Job
from ...webhooks.model import Delivery, DeliveryStatus, Webhook, WebhookNotFound
from .schema import job_from_row, micros

__all__ = [
    "add_webhook",
    "claim_deliveries",
    "delete_webhook",
    "finish_delivery",
    "list_deliveries",
    "list_webhooks",
    "purge_deliveries",
    "write_outbox",
]

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=timezone.utc)
# A delivery's id is msg_{job id}_{runs before this one}_{webhook id}: stable across the
# delivery's retries, new when a job retried in place ends again.
_OUTBOX: Final = (
    "INSERT OR IGNORE INTO webhook_deliveries"
    " (id, webhook_id, event, job_id, record, at, status, attempts, next_at)"
    " SELECT 'msg_' || ?1 || '_' || ?2 || '_' || w.id, w.id, ?3, ?1, ?4, ?5, 'pending', 0, ?5"
    " FROM webhooks AS w WHERE instr(w.events, ',' || ?3 || ',') > 0"
)
_DELIVERY: Final = (
    "d.id, d.webhook_id, d.event, d.record, d.at, d.status, d.attempts, d.next_at,"
    " d.last_error, d.delivered_at"
)


def _time(value: int | None) -> datetime | None:
    return None if value is None else _EPOCH + timedelta(microseconds=value)


def _hook(row: Any) -> Webhook:
    id_, url, events, secret, created = row
    return Webhook(
        id=id_,
        url=url,
        events=tuple(e for e in events.split(",") if e),
        secret=secret,
        created_at=_time(created),
    )


def _delivery(row: Any) -> Delivery:
    id_, hook, event, record, at, status, attempts, next_at, error, delivered = row
    at_time = _time(at)
    assert at_time is not None
    return Delivery(
        id=id_,
        webhook_id=hook,
        event=event,
        job=job_from_row(record),
        at=at_time,
        status=status,
        attempts=attempts,
        next_at=_time(next_at),
        last_error=error,
        delivered_at=_time(delivered),
    )


def write_outbox(conn: sqlite3.Connection, ended: list[tuple[Job, str]]) -> None:
    """Queue a delivery of each ended job (with its stored record) for every webhook that
    asked for that end; nothing when no webhook is registered."""
    if not conn.execute("SELECT EXISTS (SELECT 1 FROM webhooks)").fetchone()[0]:
        return
    conn.executemany(
        _OUTBOX,
        [
            (
                job.id,
                len(job.history),
                f"job_{job.status.value}",
                record,
                micros(job.finished_at or job.run_at),
            )
            for job, record in ended
        ],
    )


def add_webhook(conn: sqlite3.Connection, hook: Webhook, now: datetime) -> Webhook:
    conn.execute(
        "INSERT INTO webhooks (id, url, events, secret, created_at) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (id) DO UPDATE SET url = excluded.url, events = excluded.events,"
        " secret = excluded.secret",
        (hook.id, hook.url, "," + ",".join(hook.events) + ",", hook.secret, micros(now)),
    )
    row = conn.execute(
        "SELECT id, url, events, secret, created_at FROM webhooks WHERE id = ?", (hook.id,)
    ).fetchone()
    return _hook(row)


def list_webhooks(conn: sqlite3.Connection) -> list[Webhook]:
    sql = "SELECT id, url, events, secret, created_at FROM webhooks ORDER BY created_at, id"
    return [_hook(row) for row in conn.execute(sql)]


def delete_webhook(conn: sqlite3.Connection, webhook_id: str) -> None:
    if conn.execute("DELETE FROM webhooks WHERE id = ?", (webhook_id,)).rowcount == 0:
        raise WebhookNotFound(webhook_id)
    conn.execute("DELETE FROM webhook_deliveries WHERE webhook_id = ?", (webhook_id,))


def claim_deliveries(
    conn: sqlite3.Connection, now: datetime, limit: int, lease: float
) -> list[tuple[Delivery, Webhook]]:
    rows = conn.execute(
        f"SELECT {_DELIVERY}, w.id, w.url, w.events, w.secret, w.created_at"
        " FROM webhook_deliveries AS d JOIN webhooks AS w ON w.id = d.webhook_id"
        " WHERE d.status = ? AND d.next_at <= ? ORDER BY d.next_at, d.id LIMIT ?",
        (DeliveryStatus.PENDING, micros(now), limit),
    ).fetchall()
    hidden_until = micros(now + timedelta(seconds=lease))
    taken: list[tuple[Delivery, Webhook]] = []
    for row in rows:
        conn.execute(
            "UPDATE webhook_deliveries SET next_at = ? WHERE id = ?", (hidden_until, row[0])
        )
        delivery = _delivery(row[:10])
        taken.append((delivery, _hook(row[10:])))
    return taken


def finish_delivery(
    conn: sqlite3.Connection,
    delivery_id: str,
    now: datetime,
    ok: bool,
    error: str | None,
    retry_at: datetime | None,
) -> None:
    if ok:
        status, next_at, delivered = DeliveryStatus.DELIVERED, None, micros(now)
    elif retry_at is not None:
        status, next_at, delivered = DeliveryStatus.PENDING, micros(retry_at), None
    else:
        status, next_at, delivered = DeliveryStatus.DEAD, None, None
    conn.execute(
        "UPDATE webhook_deliveries SET status = ?, attempts = attempts + 1, next_at = ?,"
        " last_error = ?, delivered_at = ? WHERE id = ?",
        (status, next_at, None if ok else error, delivered, delivery_id),
    )


def list_deliveries(
    conn: sqlite3.Connection, webhook_id: str, status: str | None, limit: int
) -> list[Delivery]:
    if conn.execute("SELECT 1 FROM webhooks WHERE id = ?", (webhook_id,)).fetchone() is None:
        raise WebhookNotFound(webhook_id)
    sql = f"SELECT {_DELIVERY} FROM webhook_deliveries AS d WHERE d.webhook_id = ?"
    args: list[Any] = [webhook_id]
    if status is not None:
        sql += " AND d.status = ?"
        args.append(status)
    sql += " ORDER BY d.at DESC, d.id DESC LIMIT ?"
    args.append(limit)
    return [_delivery(row) for row in conn.execute(sql, args)]


def purge_deliveries(conn: sqlite3.Connection, before: datetime, limit: int) -> int:
    return conn.execute(
        "DELETE FROM webhook_deliveries WHERE id IN (SELECT id FROM webhook_deliveries"
        " WHERE status != ? AND COALESCE(delivered_at, at) < ? LIMIT ?)",
        (DeliveryStatus.PENDING, micros(before), limit),
    ).rowcount
