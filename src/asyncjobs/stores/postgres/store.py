"""PostgresStore: jobs in PostgreSQL, shared by many processes on many machines.

* A change and its announcement are one statement: the row is written, the event
  ``seq`` drawn from the schema's sequence and ``pg_notify`` called together.
  PostgreSQL delivers a notification only when its transaction commits, so no process
  hears of a change that was rolled back.
* Single-job changes (progress, finish, cancel) are optimistic: compute the next
  snapshot with the shared steps of :mod:`..steps` and write the patch of what changed
  only if the row still has the version it was computed from (:mod:`.records`). For a
  job it claimed, the store starts from the snapshot it holds already, so progress and
  finish are one round trip; when the row moved on (a cancel request from another
  process, a lost lease) it reads the job and tries again. No lock is held across
  round trips. A worker's progress reports and finishes that arrive while another
  batch is being written go out together in one statement and one commit (:mod:`.batch`).
* A job submitted while a worker of this instance is parked waiting for work is
  inserted already claimed by it (:mod:`.handoff`).
* ``claim`` picks queued jobs with ``FOR UPDATE SKIP LOCKED`` (priority, then id) and
  moves them to running in one statement, so workers never wait on each other or take
  the same job. Per-type limits are exact across all workers: such a claim holds a
  transaction-level advisory lock per limited type while it counts its running jobs.
* Events reach this process's listeners directly after commit, and every other process
  through LISTEN on a dedicated connection (:mod:`.listen`, :mod:`.events`). When that
  connection drops, notifications sent meanwhile are lost: on reconnect the store
  calls its resync listeners (subscriptions re-read their jobs) and wakes its workers.
* Background loops (LISTEN keeper, remote events, finish batcher) run in one task
  group the store owns (:mod:`..tasks`).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar, final

from ...errors import ConfigurationError, IllegalTransition, JobNotFound, LeaseLost
from ...job import TERMINAL, EventType, Job, JobEvent, JobStatus
from ...webhooks.model import Delivery, Webhook
from ..handoff import give_back
from ..listeners import LocalNotifier
from ..protocol import EventListener, Outcome, Page, Stats, WorkerInfo
from ..steps import (
    cancel_step,
    check_delete,
    expire_step,
    finish_step,
    progress_step,
    promote_step,
    retry_step,
    stats_from_counts,
)
from ..tasks import BackgroundTasks
from . import bulk, claims, connect, submit, workers
from .batch import ChangeBatcher
from .bulk import load_job
from .events import RemoteEvents, make_prefix
from .handoff import Handoffs
from .idle import ADDS, IdleClaims
from .listen import Listener
from .ops import OpsStatements
from .pool import Pool
from .schema import (
    check_schema_name,
    migrate,
    quote_ident,
    redact,
    split_url,
)
from .sql import Change, Statements, change
from .webhooks import WebhookStatements

__all__ = ["PostgresStore", "migrate"]

logger = logging.getLogger("asyncjobs.store.postgres")

T = TypeVar("T")
Conn = Any  # asyncpg.Connection; asyncpg is imported lazily

#: Snapshots of claimed jobs kept per store instance (the oldest is dropped beyond it;
#: a change to a job without one just reads it first).
_HELD_MAX = 10_000
#: Seconds for which "this schema has no webhooks" spares the outbox a look.
_HOOKS_FOR = 1.0


@final
class PostgresStore:
    """A store in PostgreSQL: durable, and shared by every process attached to it.

    Args:
        dsn: A libpq URL, ``postgresql://user:password@host:5432/dbname``.
        schema: The PostgreSQL schema holding the tables (created by ``open()``).
        min_pool: Connections the pool keeps open.
        max_pool: Connections the pool opens at most (one more is used for LISTEN).
        reconnect_timeout: Seconds a call keeps retrying while the server cannot be
            reached (a restart, a failover) before it raises the connection error.
        command_timeout: Seconds one statement may take before it is abandoned (the
            connection is dropped) and the call raises ``TimeoutError``; a server that
            stops answering cannot hang a worker's finish or a shutdown.
        handoff: Insert a job submitted while a worker of this instance is parked
            waiting for work as already claimed by it (one commit less before it
            starts; see :mod:`.handoff`).
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "asyncjobs",
        min_pool: int = 1,
        max_pool: int = 10,
        reconnect_timeout: float = 30.0,
        command_timeout: float | None = 30.0,
        handoff: bool = True,
    ) -> None:
        self.dsn = dsn
        self.schema = check_schema_name(schema)
        self.url = redact(dsn) + ("" if schema == "asyncjobs" else f"?schema={schema}")
        self._min_pool = min_pool
        self._max_pool = max_pool
        self._reconnect_timeout = reconnect_timeout
        self._command_timeout = command_timeout
        self._channel = f"asyncjobs_{schema}"
        self._instance = secrets.token_hex(8)  # our own notifications are skipped
        self._prefix = make_prefix(self._instance)
        self._sql = Statements(quote_ident(self.schema), self._channel, self._prefix)
        self._ops = OpsStatements(self._sql)
        self._hooks = WebhookStatements(quote_ident(self.schema))
        self._pool: Pool | None = None
        self._listener: Listener | None = None
        self._notifier = LocalNotifier()
        self._tasks = BackgroundTasks(f"asyncjobs-pg:{schema}")
        self._remote = RemoteEvents(
            self._instance,
            deliver=self._deliver,
            wake=self._notify_work,
            fetch=self._find,
            wanted=lambda: self._notifier.wanted,
            resync=self._resync,
            wake_for=self._remote_wake,
        )
        self._changes = ChangeBatcher(self._run, self._sql)
        # Job id -> the last snapshot this instance wrote or read of a job it claimed:
        # the starting point of the next progress or finish, saving a read.
        self._held: OrderedDict[str, Job] = OrderedDict()
        self._handoffs = Handoffs() if handoff else None
        # Whether the schema has webhooks, and until when that is taken as known.
        self._hooks_known: tuple[bool, float] = (True, 0.0)
        self._idle = IdleClaims()

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> PostgresStore:
        """Build a store from ``postgresql://...`` or ``postgres://...[?schema=name]``."""
        dsn, schema = split_url(url)
        if schema is not None:
            kwargs.setdefault("schema", schema)
        return cls(dsn, **kwargs)

    @property
    def listener(self) -> Listener | None:
        """The LISTEN connection keeper (None while closed); for tests and diagnostics."""
        return self._listener

    # -- lifecycle ---------------------------------------------------------------

    async def open(self) -> None:
        """Migrate the schema and connect; wait out an outage for ``reconnect_timeout``.

        Raises:
            ConnectionError: the server stayed unreachable for ``reconnect_timeout``.
        """
        if self._pool is not None:
            return
        pool = await connect.open_pool(self)
        # Notifications sent while LISTEN was down are lost: on reconnect, resync.
        listener = Listener(self.dsn, self._channel, self._remote.on_payload, self._resync)
        try:
            await self._tasks.start()
            await listener.start(self._tasks)
        except BaseException:
            await self._tasks.aclose()
            await pool.close()
            raise
        self._pool, self._listener = pool, listener
        self._remote.start(self._tasks)
        self._changes.start(self._tasks)

    async def close(self) -> None:
        if self._handoffs is not None and self._pool is not None:
            await give_back(self, self._handoffs.forget())
        pool, self._pool = self._pool, None
        listener, self._listener = self._listener, None
        self._held.clear()
        if listener is not None:
            await listener.stop()
        await self._remote.stop()
        await self._changes.stop()
        await self._tasks.aclose()
        if pool is not None:
            await pool.close()

    # -- plumbing ----------------------------------------------------------------

    async def _run(
        self,
        op: Callable[[Conn], Awaitable[T]],
        *,
        retry: bool = True,
        on_retry: Callable[[], None] | None = None,
    ) -> T:
        """Run ``op`` on a pooled connection (retried across drops: see :mod:`.pool`)."""
        pool = self._pool
        if pool is None:
            raise ConfigurationError("the PostgreSQL store is closed; await store.open() first")
        return await pool.run(op, retry=retry, on_retry=on_retry)

    async def _announce_again(self, job: Job, type_: EventType, now: datetime) -> None:
        """Tell this process's listeners of a change whose reply a dropped connection
        lost (other processes had its NOTIFY), under a fresh seq: a waiter must not miss
        a job's final event."""
        seq = await self._run(lambda conn: conn.fetchval(self._sql.next_seq))
        self._emit([JobEvent(type_, seq, now, job)])

    async def _locked(self, conn: Conn, job_id: str) -> Job:
        text = await conn.fetchval(self._sql.get_for_update, job_id)
        if text is None:
            raise JobNotFound(job_id)
        return load_job(text)

    def _hold(self, jobs: Sequence[Job]) -> None:
        held = self._held
        for job in jobs:
            held[job.id] = job
            held.move_to_end(job.id)
        while len(held) > _HELD_MAX:
            held.popitem(last=False)

    def _emit(self, events: Collection[JobEvent]) -> None:
        """Hand committed events to this process's listeners; wake idle workers."""
        if any(e.type in ADDS for e in events):
            self._idle.added()
        self._notifier.emit(events)

    def _remote_wake(self, type_: EventType) -> None:
        if type_ in ADDS:
            self._idle.added()
        self._notifier.wake()

    def _resync(self) -> None:
        self._idle.added()
        self._notifier.resync()

    def _deliver(self, events: Collection[JobEvent]) -> None:
        self._notifier.emit(events, wake=False)  # remote wake-ups come with the payload

    def _notify_work(self) -> None:
        self._notifier.wake()

    async def _find(self, job_id: str) -> Job | None:
        try:
            return await self.get(job_id)
        except JobNotFound:
            return None

    # -- Store protocol ----------------------------------------------------------

    async def add(self, job: Job, *, max_queued: int | None = None) -> tuple[Job, bool]:
        return await submit.add(self, job, max_queued=max_queued)

    async def get(self, job_id: str) -> Job:
        text = await self._run(lambda conn: conn.fetchval(self._sql.get, job_id))
        if text is None:
            raise JobNotFound(job_id)
        return load_job(text)

    async def stats(self) -> Stats:
        rows = await self._run(lambda conn: conn.fetch(self._sql.stats))
        return stats_from_counts((type_, status, n) for type_, status, n in rows)

    async def claim(
        self,
        worker_id: str,
        *,
        types: Collection[str],
        limit: int,
        lease: float,
        now: datetime,
        type_limits: Mapping[str, int] | None = None,
    ) -> list[Job]:
        return await claims.claim(
            self, worker_id, types=types, limit=limit, lease=lease, now=now, type_limits=type_limits
        )

    async def renew(self, job_id: str, token: str, *, lease: float, now: datetime) -> Job:
        return await claims.renew(self, job_id, token, lease=lease, now=now)

    async def _change(
        self,
        job_id: str,
        step: Callable[[Job], tuple[Job, EventType] | None],
        now: datetime,
        token: str | None = None,
    ) -> Job:
        """Apply ``step`` to one job (None: nothing changes), write and announce it.

        Optimistic: the write lands only if the row still has the version the step
        started from (and ``token``, when given). The step starts from the snapshot
        this instance holds, if any (one round trip), else from a fresh read (two).
        """
        held = self._held
        job: Job | None = held.get(job_id)
        written: tuple[Job, EventType] | None = None  # our last write that seemed to miss
        while True:
            cached = job is not None
            if job is None:
                try:
                    job = await self.get(job_id)
                except JobNotFound:
                    held.pop(job_id, None)
                    raise
                if written is not None and job == written[0]:
                    # Our write committed, but its connection dropped before the reply
                    # and the retry found the version moved on (by that very write).
                    held.pop(job_id, None)
                    await self._announce_again(job, written[1], now)
                    return job
            try:
                result = step(job)
            except (LeaseLost, IllegalTransition):
                held.pop(job_id, None)
                if cached:  # the held snapshot may be stale: judge by the row itself
                    job = None
                    continue
                raise
            if result is None:
                return job
            nxt, type_ = result
            todo = change(job, nxt, type_, now)
            if token is not None:
                # A worker's progress or finish: written with the others of the moment.
                event = await self._changes.write(todo)
            else:
                event = await self._write(todo)
            if event is not None:
                if nxt.status is JobStatus.RUNNING and (token is not None or job_id in held):
                    self._hold([nxt])
                else:
                    held.pop(job_id, None)
                self._emit([event])
                return nxt
            job, written = None, (nxt, type_)

    async def _write(self, todo: Change) -> JobEvent | None:
        events = await self._run(lambda conn: self._sql.write(conn, [todo]))
        return events[0] if events else None

    async def set_progress(
        self, job_id: str, token: str, progress: float, message: str | None, *, now: datetime
    ) -> Job:
        def step(job: Job) -> tuple[Job, EventType]:
            return progress_step(job, token, progress, message), EventType.PROGRESS

        return await self._change(job_id, step, now, token)

    async def finish(self, job_id: str, token: str, outcome: Outcome, *, now: datetime) -> Job:
        return await self._change(
            job_id, lambda job: finish_step(job, token, outcome, now), now, token
        )

    async def request_cancel(self, job_id: str, *, now: datetime) -> Job:
        return await self._change(job_id, lambda j: cancel_step(j, now), now)

    async def delete(self, job_id: str, *, now: datetime) -> Job:
        async def op(conn: Conn) -> tuple[Job, list[JobEvent]]:
            async with conn.transaction():
                job = await self._locked(conn, job_id)
                check_delete(job)
                return job, await self._sql.delete(conn, [job], now)

        job, events = await self._run(op, retry=False)
        self._emit(events)
        return job

    async def requeue_expired(self, *, now: datetime) -> list[Job]:
        return await bulk.sweep(self, self._sql.expired, now, lambda j: expire_step(j, now), now)

    async def promote_scheduled(self, *, now: datetime) -> list[Job]:
        return await bulk.sweep(
            self, self._sql.due, now, lambda j: (promote_step(j), EventType.QUEUED), now
        )

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
        return await bulk.purge(
            self,
            now=now,
            statuses=statuses,
            types=types,
            finished_before=finished_before,
            expired=expired,
            limit=limit,
        )

    # -- operations: batch submit and retry in place -------------------------------

    async def add_many(
        self, jobs: Sequence[Job], *, max_queued: int | None = None
    ) -> list[tuple[Job, bool]]:
        return await bulk.add_many(self, jobs, max_queued=max_queued)

    async def retry(self, job_id: str, *, now: datetime) -> Job:
        return await self._change(
            job_id, lambda job: (retry_step(job, now), EventType.RETRYING), now
        )

    async def retry_many(
        self,
        *,
        now: datetime,
        statuses: Collection[JobStatus] = (JobStatus.FAILED,),
        types: Collection[str] | None = None,
        owner: str | None = None,
    ) -> list[Job]:
        return await bulk.retry_many(self, now=now, statuses=statuses, types=types, owner=owner)

    # -- operations: the webhook outbox (rows written by a trigger) -----------------

    async def add_webhook(self, hook: Webhook, *, now: datetime) -> Webhook:
        added = await self._run(lambda conn: self._hooks.add(conn, hook, now))
        self._hooks_known = (True, time.monotonic() + _HOOKS_FOR)
        return added

    async def list_webhooks(self) -> list[Webhook]:
        return await self._run(self._hooks.list_hooks)

    async def delete_webhook(self, webhook_id: str) -> None:
        await self._run(lambda conn: self._hooks.remove(conn, webhook_id))

    async def claim_deliveries(
        self, *, now: datetime, limit: int, lease: float
    ) -> list[tuple[Delivery, Webhook]]:
        # The dispatcher looks at the outbox after every batch of ends: without any
        # webhook (most queues) no row can be due, and a statement per batch of finishes
        # was a third of a drain's statements. Whether webhooks exist is checked at
        # most every _HOOKS_FOR seconds (a hook added here counts at once; one added
        # by another process within that time, as the dispatcher's own poll).
        exists, until = self._hooks_known
        if not exists and time.monotonic() < until:
            return []

        async def op(conn: Conn) -> tuple[list[tuple[Delivery, Webhook]], bool]:
            taken = await self._hooks.take(conn, now, limit, lease)
            if taken or (exists and time.monotonic() < until):
                return taken, True
            return taken, bool(await conn.fetchval(self._hooks.any))

        taken, exists = await self._run(op)
        if exists != self._hooks_known[0] or time.monotonic() >= self._hooks_known[1]:
            self._hooks_known = (exists, time.monotonic() + _HOOKS_FOR)
        return taken

    async def finish_delivery(
        self,
        delivery_id: str,
        *,
        now: datetime,
        ok: bool,
        error: str | None = None,
        retry_at: datetime | None = None,
    ) -> None:
        await self._run(
            lambda conn: self._hooks.record(conn, delivery_id, now, ok, error, retry_at)
        )

    async def list_deliveries(
        self, webhook_id: str, *, status: str | None = None, limit: int = 100
    ) -> list[Delivery]:
        return await self._run(lambda conn: self._hooks.deliveries(conn, webhook_id, status, limit))

    async def purge_deliveries(self, *, before: datetime, limit: int) -> int:
        status = await self._run(lambda conn: conn.execute(self._hooks.purge, before, limit))
        return int(status.split()[-1])  # "DELETE n"

    # -- worker registry -----------------------------------------------------------

    async def register_worker(self, info: WorkerInfo) -> None:
        await workers.register_worker(self, info)

    async def list_workers(self, *, now: datetime) -> list[WorkerInfo]:
        return await workers.list_workers(self, now=now)

    async def remove_worker(self, worker_id: str) -> None:
        self._idle.forget(worker_id)
        if self._handoffs is not None:
            await give_back(self, self._handoffs.forget(worker_id))
        await workers.delete_worker(self, worker_id)

    # -- notifier ----------------------------------------------------------------

    def add_listener(self, listener: EventListener) -> Callable[[], None]:
        return self._notifier.add_listener(listener)

    def add_resync_listener(self, callback: Callable[[], None]) -> Callable[[], None]:
        return self._notifier.add_resync_listener(callback)

    def work_generation(self) -> int:
        return self._notifier.work_generation()

    async def wait_for_work(self, timeout: float, *, since: int | None = None) -> None:
        generation = self._notifier.work_generation() if since is None else since
        try:
            if self._handoffs is None:
                await self._notifier.wait_for_work(timeout, since=generation)
            else:
                with self._handoffs.parked(generation):
                    await self._notifier.wait_for_work(timeout, since=generation)
        except Exception:  # the worker claims on a timer instead: let those through
            self._idle.forget()
            raise
        if self._notifier.work_generation() == generation:
            # Timed out: the claim that follows is the safety net (a notification
            # lost, a row skipped while another transaction held it). It goes through.
            self._idle.forget()

    # Defined last: inside the class body, ``list`` names this method from here on.
    async def list(
        self,
        *,
        statuses: Collection[JobStatus] | None = None,
        types: Collection[str] | None = None,
        owner: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> Page:
        return await bulk.list_jobs(
            self, statuses=statuses, types=types, owner=owner, cursor=cursor, limit=limit
        )
