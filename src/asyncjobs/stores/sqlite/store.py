"""SqliteStore: jobs in one SQLite file, for one machine, surviving restarts.

Every call runs on the store's own thread, on its one connection, so calls are
serialized without blocking the event loop. Each write is one ``BEGIN IMMEDIATE``
transaction; its events get their ``seq`` inside that transaction (the counter lives in
the file, so it keeps growing across restarts) and reach listeners on the event loop
after the commit. The file is in WAL mode with ``synchronous=NORMAL``: a crash of the
process loses nothing committed; a power loss may lose the last transactions.

Several processes on one machine may share the file: claims never overlap, and every
change's events are also appended to an ``events`` table that each store instance tails
(:mod:`.notify`), so events, wake-ups and cancel requests reach every process within a
poll interval (25 ms) without reading the jobs table.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sqlite3
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from typing import Any, Final, final
from urllib.parse import parse_qs

from ...codec import dumps, worker_from_record, worker_to_record
from ...errors import ConfigurationError, QueueFull
from ...job import TERMINAL, EventType, Job, JobEvent, JobStatus
from ...jsonrules import check_storable
from ...webhooks.model import Delivery, Webhook
from ..listeners import LocalNotifier
from ..protocol import EventListener, Outcome, Page, Stats, WorkerInfo
from ..steps import (
    cancel_step,
    check_delete,
    check_purge_statuses,
    check_retry_statuses,
    expire_step,
    promote_step,
    purge_matches,
    retry_step,
    stats_from_counts,
)
from ..tasks import BackgroundTasks, TaskHandle
from . import running
from . import webhooks as outbox
from .batch import Changes
from .notify import EventTail
from .rows import fetch, save
from .schema import JOB_COLUMNS, job_from_row, job_params, micros, scoped_key
from .thread import SqliteThread

__all__ = ["SqliteStore"]

# `list` is a method name inside the class, so annotations there use this alias.
_Jobs = list[Job]
_Workers = list[WorkerInfo]
_Added = list[tuple[Job, bool]]
_Hooks = list[Webhook]
_Claimed = list[tuple[Delivery, Webhook]]
_Deliveries = list[Delivery]

_Q: Final = JobStatus.QUEUED.value
_R: Final = JobStatus.RUNNING.value
_S: Final = JobStatus.SCHEDULED.value
_INSERT: Final = f"INSERT INTO jobs ({JOB_COLUMNS}) VALUES ({', '.join('?' * 11)})"


def _marks(values: Collection[Any]) -> str:
    return ", ".join("?" * len(values))


@final
class SqliteStore:
    """A store in one SQLite file: durable on one machine, no server to run.

    Args:
        path: The database file (created if missing), or ``":memory:"`` for a throwaway
            database that lives as long as the store is open.
        busy_timeout: Seconds a write waits for another process's write lock before
            failing with ``sqlite3.OperationalError: database is locked``.
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 5.0) -> None:
        self.path = os.fspath(path)
        self.busy_timeout = busy_timeout
        self._thread = SqliteThread(
            self.path, busy_timeout, self._publish, repr(self), src=secrets.token_hex(8)
        )
        self._notifier = LocalNotifier()
        self._tail = EventTail(self._thread, self._notifier)
        self._tasks = BackgroundTasks(f"asyncjobs-sqlite:{self.path}")
        self._tail_task: TaskHandle | None = None

    @classmethod
    def from_url(cls, url: str) -> SqliteStore:
        """Build a store from ``sqlite:///relative.db``, ``sqlite:////abs/path.db`` or
        ``sqlite:///:memory:``; ``?busy_timeout=SECONDS`` is accepted.

        Raises:
            ConfigurationError: the URL is not a SQLite URL of that shape.
        """
        scheme, sep, rest = url.partition("://")
        rest, _, query = rest.partition("?")
        if scheme.lower() != "sqlite" or not sep or not rest.startswith("/") or rest == "/":
            raise ConfigurationError(
                f"bad SQLite URL {url!r}; use sqlite:///relative.db, sqlite:////abs/path.db "
                "or sqlite:///:memory:"
            )
        options = parse_qs(query)
        unknown = set(options) - {"busy_timeout"}
        if unknown:
            raise ConfigurationError(
                f"unknown SQLite URL option(s) {sorted(unknown)} in {url!r}; "
                "only busy_timeout is supported"
            )
        kwargs: dict[str, float] = {}
        if "busy_timeout" in options:
            try:
                kwargs["busy_timeout"] = float(options["busy_timeout"][-1])
            except ValueError:
                raise ConfigurationError(f"busy_timeout in {url!r} must be a number") from None
        return cls(rest[1:], **kwargs)

    @property
    def url(self) -> str:
        return f"sqlite:///{self.path}"

    def __repr__(self) -> str:
        return f"SqliteStore({self.path!r})"

    # -- lifecycle ---------------------------------------------------------------

    async def open(self) -> None:
        if self._thread.is_open:
            return
        await self._thread.open()
        if self.path != ":memory:":  # a private database has nobody else to hear
            await self._tail.start()
            await self._tasks.start()
            self._tail_task = self._tasks.start_soon(self._tail.run, "sqlite-events-tail")

    async def close(self) -> None:
        tailing, self._tail_task = self._tail_task, None
        await self._tasks.aclose()
        if tailing is not None and self._thread.is_open:
            with contextlib.suppress(sqlite3.Error):  # the row expires by itself anyway
                await self._tail.leave()
        await self._thread.close()

    @property
    def tail(self) -> EventTail:
        """The tail of other processes' events (for tests and diagnostics)."""
        return self._tail

    def _publish(self, events: list[JobEvent], wake: bool) -> None:  # loop, after a commit
        self._notifier.emit(events, wake=wake)

    # -- Store protocol: reads -----------------------------------------------------

    async def get(self, job_id: str) -> Job:
        return await self._thread.read(lambda conn: fetch(conn, self._thread.cache, job_id)[0])

    async def list(
        self,
        *,
        statuses: Collection[JobStatus] | None = None,
        types: Collection[str] | None = None,
        owner: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> Page:
        clauses: list[str] = []
        args: list[Any] = []
        if statuses is not None:
            values = sorted({JobStatus(s).value for s in statuses})
            clauses.append(f"status IN ({_marks(values)})")
            args += values
        if types is not None:
            names = sorted(set(types))
            clauses.append(f"type IN ({_marks(names)})")
            args += names
        if owner is not None:
            clauses.append("owner = ?")
            args.append(owner)
        if cursor is not None:
            clauses.append("id < ?")
            args.append(cursor)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT record FROM jobs {where} ORDER BY id DESC LIMIT ?"
        args.append(max(limit, 0) + 1)  # one more tells whether a next page exists

        def body(conn: sqlite3.Connection) -> list[str]:
            return [row[0] for row in conn.execute(sql, args)]

        records = await self._thread.read(body)
        jobs = [job_from_row(r) for r in records[:limit]]
        more = len(records) > limit and bool(jobs)
        return Page(jobs, jobs[-1].id if more else None)

    async def stats(self) -> Stats:
        def body(conn: sqlite3.Connection) -> list[tuple[str, str, int]]:
            sql = "SELECT type, status, COUNT(*) FROM jobs GROUP BY status, type"
            return list(conn.execute(sql))

        return stats_from_counts(await self._thread.read(body))

    # -- Store protocol: writes ----------------------------------------------------

    async def add(self, job: Job, *, max_queued: int | None = None) -> tuple[Job, bool]:
        check_storable(job)

        def body(conn: sqlite3.Connection, changes: Changes) -> tuple[Job, bool]:
            if job.idempotency_key is not None:
                row = conn.execute(
                    "SELECT record FROM jobs WHERE idempotency_key = ?",
                    (scoped_key(job.owner, job.idempotency_key),),
                ).fetchone()
                if row is not None:
                    return job_from_row(row[0]), False
            if max_queued is not None:
                (waiting,) = conn.execute(
                    "SELECT COUNT(*) FROM jobs WHERE status IN (?, ?)", (_Q, _S)
                ).fetchone()
                if waiting >= max_queued:
                    raise QueueFull(max_queued)
            if conn.execute("SELECT 1 FROM jobs WHERE id = ?", (job.id,)).fetchone():
                raise ValueError(f"a job with id {job.id} exists already")
            conn.execute(_INSERT, job_params(job))
            changes.emit(EventType.CREATED, job, job.created_at)
            changes.wake = job.status is JobStatus.QUEUED
            return job, True

        return await self._thread.write(body)

    async def claim(
        self,
        worker_id: str,
        *,
        types: Collection[str],
        limit: int,
        lease: float,
        now: datetime,
        type_limits: Mapping[str, int] | None = None,
    ) -> _Jobs:
        wanted = sorted(set(types))
        limits = dict(type_limits or {})
        cache = self._thread.cache
        return await self._thread.write(
            lambda conn, changes: running.claim(
                conn, changes, cache, worker_id, wanted, limits, limit, lease, now
            )
        )

    async def renew(self, job_id: str, token: str, *, lease: float, now: datetime) -> Job:
        cache = self._thread.cache
        return await self._thread.write(
            lambda conn, changes: running.renew(conn, changes, cache, job_id, token, lease, now)
        )

    async def set_progress(
        self, job_id: str, token: str, progress: float, message: str | None, *, now: datetime
    ) -> Job:
        cache = self._thread.cache
        return await self._thread.write(
            lambda conn, changes: running.set_progress(
                conn, changes, cache, job_id, token, progress, message, now
            )
        )

    async def finish(self, job_id: str, token: str, outcome: Outcome, *, now: datetime) -> Job:
        cache = self._thread.cache
        return await self._thread.write(
            lambda conn, changes: running.finish(conn, changes, cache, job_id, token, outcome, now)
        )

    async def request_cancel(self, job_id: str, *, now: datetime) -> Job:
        def body(conn: sqlite3.Connection, changes: Changes) -> Job:
            job = fetch(conn, self._thread.cache, job_id)[0]
            step = cancel_step(job, now)
            if step is None:
                return job
            cancelled, event = step
            save(conn, self._thread.cache, cancelled)
            changes.emit(event, cancelled, now)
            return cancelled

        return await self._thread.write(body)

    async def delete(self, job_id: str, *, now: datetime) -> Job:
        def body(conn: sqlite3.Connection, changes: Changes) -> Job:
            job = fetch(conn, self._thread.cache, job_id)[0]
            check_delete(job)
            conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            changes.emit(EventType.DELETED, job, now)
            return job

        return await self._thread.write(body)

    async def requeue_expired(self, *, now: datetime) -> _Jobs:
        def body(conn: sqlite3.Connection, changes: Changes) -> _Jobs:
            sql = "SELECT record FROM jobs WHERE status = ? AND lease_expires_at <= ? ORDER BY id"
            recovered: _Jobs = []
            for (record,) in conn.execute(sql, (_R, micros(now))).fetchall():
                job, event = expire_step(job_from_row(record), now)
                save(conn, self._thread.cache, job)
                changes.emit(event, job, now)
                recovered.append(job)
            changes.wake = bool(recovered)
            return recovered

        return await self._thread.write(body)

    async def promote_scheduled(self, *, now: datetime) -> _Jobs:
        def body(conn: sqlite3.Connection, changes: Changes) -> _Jobs:
            sql = "SELECT record FROM jobs WHERE status = ? AND run_at <= ? ORDER BY run_at, id"
            promoted: _Jobs = []
            for (record,) in conn.execute(sql, (_S, micros(now))).fetchall():
                job = promote_step(job_from_row(record))
                save(conn, self._thread.cache, job)
                changes.emit(EventType.QUEUED, job, now)
                promoted.append(job)
            changes.wake = bool(promoted)
            return promoted

        return await self._thread.write(body)

    async def purge(
        self,
        *,
        now: datetime,
        statuses: Collection[JobStatus] = TERMINAL,
        types: Collection[str] | None = None,
        finished_before: datetime | None = None,
        expired: bool = False,
        limit: int | None = None,
    ) -> int:
        chosen = sorted(s.value for s in check_purge_statuses(statuses))
        if not chosen or (types is not None and not types):
            return 0
        clauses = [f"status IN ({_marks(chosen)})"]
        args: list[Any] = list(chosen)
        if types is not None:
            names = sorted(set(types))
            clauses.append(f"type IN ({_marks(names)})")
            args += names
        if finished_before is not None:
            clauses.append("finished_at < ?")
            args.append(micros(finished_before))
        if expired:
            # A coarse filter with a microsecond of slack; the exact test, identical to
            # the memory store's float arithmetic, runs on each candidate below.
            clauses.append("retention IS NOT NULL AND finished_at + retention * 1e6 <= ? + 1")
            args.append(micros(now))
        sql = f"SELECT record FROM jobs WHERE {' AND '.join(clauses)} ORDER BY id"

        wanted = check_purge_statuses(statuses)

        def body(conn: sqlite3.Connection, changes: Changes) -> int:
            doomed: _Jobs = []
            for (record,) in conn.execute(sql, args):
                job = job_from_row(record)
                if not purge_matches(
                    job,
                    now=now,
                    statuses=wanted,
                    types=types,
                    finished_before=finished_before,
                    expired=expired,
                ):
                    continue
                doomed.append(job)
                if limit is not None and len(doomed) >= limit:
                    break
            for job in doomed:
                conn.execute("DELETE FROM jobs WHERE id = ?", (job.id,))
                changes.emit(EventType.DELETED, job, now)
            return len(doomed)

        return await self._thread.write(body)

    # -- operations: batch submit and retry in place -------------------------------

    async def add_many(self, jobs: Sequence[Job], *, max_queued: int | None = None) -> _Added:
        batch = list(jobs)
        for job in batch:
            check_storable(job)

        def body(conn: sqlite3.Connection, changes: Changes) -> list[tuple[Job, bool]]:
            # One transaction: an error anywhere rolls the whole batch back.
            results: list[tuple[Job, bool]] = []
            keys: dict[str, Job] = {}
            for job in batch:
                key = scoped_key(job.owner, job.idempotency_key)  # unique per owner
                if key is not None:
                    if key in keys:
                        results.append((keys[key], False))
                        continue
                    row = conn.execute(
                        "SELECT record FROM jobs WHERE idempotency_key = ?", (key,)
                    ).fetchone()
                    if row is not None:
                        results.append((job_from_row(row[0]), False))
                        continue
                    keys[key] = job
                try:
                    conn.execute(_INSERT, job_params(job))
                except sqlite3.IntegrityError:
                    raise ValueError(f"a job with id {job.id} exists already") from None
                results.append((job, True))
            new = [job for job, created in results if created]
            if max_queued is not None and new:
                (waiting,) = conn.execute(
                    "SELECT COUNT(*) FROM jobs WHERE status IN (?, ?)", (_Q, _S)
                ).fetchone()
                if waiting > max_queued:  # the count includes this batch
                    raise QueueFull(max_queued)
            for job in new:
                changes.emit(EventType.CREATED, job, job.created_at)
            changes.wake = any(job.status is JobStatus.QUEUED for job in new)
            return results

        return await self._thread.write(body)

    async def retry(self, job_id: str, *, now: datetime) -> Job:
        def body(conn: sqlite3.Connection, changes: Changes) -> Job:
            queued = retry_step(fetch(conn, self._thread.cache, job_id)[0], now)
            save(conn, self._thread.cache, queued)
            changes.emit(EventType.RETRYING, queued, now)
            changes.wake = True
            return queued

        return await self._thread.write(body)

    async def retry_many(
        self,
        *,
        now: datetime,
        statuses: Collection[JobStatus] = (JobStatus.FAILED,),
        types: Collection[str] | None = None,
        owner: str | None = None,
    ) -> _Jobs:
        chosen = sorted(s.value for s in check_retry_statuses(statuses))
        if not chosen or (types is not None and not types):
            return []
        clauses = [f"status IN ({_marks(chosen)})"]
        args: list[Any] = list(chosen)
        if types is not None:
            names = sorted(set(types))
            clauses.append(f"type IN ({_marks(names)})")
            args += names
        if owner is not None:
            clauses.append("owner = ?")
            args.append(owner)
        sql = f"SELECT record FROM jobs WHERE {' AND '.join(clauses)} ORDER BY id"

        def body(conn: sqlite3.Connection, changes: Changes) -> _Jobs:
            retried: _Jobs = []
            for (record,) in conn.execute(sql, args).fetchall():
                queued = retry_step(job_from_row(record), now)
                save(conn, self._thread.cache, queued)
                changes.emit(EventType.RETRYING, queued, now)
                retried.append(queued)
            changes.wake = bool(retried)
            return retried

        return await self._thread.write(body)

    # -- operations: the webhook outbox (rows written by a trigger) -----------------

    async def add_webhook(self, hook: Webhook, *, now: datetime) -> Webhook:
        return await self._thread.write(lambda conn, _: outbox.add_webhook(conn, hook, now))

    async def list_webhooks(self) -> _Hooks:
        return await self._thread.read(outbox.list_webhooks)

    async def delete_webhook(self, webhook_id: str) -> None:
        await self._thread.write(lambda conn, _: outbox.delete_webhook(conn, webhook_id))

    async def claim_deliveries(self, *, now: datetime, limit: int, lease: float) -> _Claimed:
        return await self._thread.write(
            lambda conn, _: outbox.claim_deliveries(conn, now, limit, lease)
        )

    async def finish_delivery(
        self,
        delivery_id: str,
        *,
        now: datetime,
        ok: bool,
        error: str | None = None,
        retry_at: datetime | None = None,
    ) -> None:
        await self._thread.write(
            lambda conn, _: outbox.finish_delivery(conn, delivery_id, now, ok, error, retry_at)
        )

    async def list_deliveries(
        self, webhook_id: str, *, status: str | None = None, limit: int = 100
    ) -> _Deliveries:
        return await self._thread.read(
            lambda conn: outbox.list_deliveries(conn, webhook_id, status, limit)
        )

    async def purge_deliveries(self, *, before: datetime, limit: int) -> int:
        return await self._thread.write(
            lambda conn, _: outbox.purge_deliveries(conn, before, limit)
        )

    # -- events and wake-ups -----------------------------------------------------

    # -- worker registry -----------------------------------------------------------

    async def register_worker(self, info: WorkerInfo) -> None:
        row = (info.id, micros(info.expires_at), dumps(worker_to_record(info)))

        def body(conn: sqlite3.Connection, changes: Changes) -> None:
            # Records of dead workers go here, so listing them stays a plain read.
            conn.execute(
                "DELETE FROM workers WHERE expires_at <= ?", (micros(info.last_heartbeat),)
            )
            conn.execute(
                "INSERT OR REPLACE INTO workers (id, expires_at, record) VALUES (?, ?, ?)", row
            )

        await self._thread.write(body)

    async def list_workers(self, *, now: datetime) -> _Workers:
        def body(conn: sqlite3.Connection) -> list[str]:
            sql = "SELECT record FROM workers WHERE expires_at > ? ORDER BY id"
            return [r[0] for r in conn.execute(sql, (micros(now),))]

        return [worker_from_record(json.loads(r)) for r in await self._thread.read(body)]

    async def remove_worker(self, worker_id: str) -> None:
        def body(conn: sqlite3.Connection, changes: Changes) -> None:
            conn.execute("DELETE FROM workers WHERE id = ?", (worker_id,))

        await self._thread.write(body)

    # -- notifier ----------------------------------------------------------------

    def add_listener(self, listener: EventListener) -> Callable[[], None]:
        return self._notifier.add_listener(listener)

    def add_resync_listener(self, callback: Callable[[], None]) -> Callable[[], None]:
        return self._notifier.add_resync_listener(callback)

    def work_generation(self) -> int:
        return self._notifier.work_generation()

    async def wait_for_work(self, timeout: float, *, since: int | None = None) -> None:
        await self._notifier.wait_for_work(timeout, since=since)
