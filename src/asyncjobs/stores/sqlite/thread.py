"""One SQLite connection on its own thread: reads, write transactions, and their events.

Every call runs on the thread, in submission order, so calls are serialized without a
lock and the event loop never blocks on the database. A write is one ``BEGIN
IMMEDIATE`` transaction; the events it emits get their ``seq`` from a counter in the
file inside that same transaction, and are handed to the event loop after the commit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import sqlite3
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar, final

import anyio

from ...codec import dumps, event_to_record
from ...errors import ConfigurationError
from ...job import EventType, Job, JobEvent
from .schema import migrate

#: Events kept for other processes to tail: anything younger than this stays; a process
#: that falls further behind sees a gap in the sequence and resyncs.
EVENT_KEEP_SECONDS = 60.0
#: Trim the events table once per this many writes that emitted events.
_TRIM_EVERY = 256

__all__ = ["Changes", "SqliteThread"]

T = TypeVar("T")


@final
class Changes:
    """What one write transaction tells the event loop once it has committed."""

    __slots__ = ("events", "pending", "wake")

    def __init__(self) -> None:
        self.pending: list[tuple[EventType, Job, datetime]] = []
        self.events: list[JobEvent] = []
        self.wake = False

    def emit(self, type: EventType, job: Job, at: datetime) -> None:
        self.pending.append((type, job, at))


@final
class SqliteThread:
    """Runs callables against one connection on one dedicated thread.

    Args:
        path: The database file, or ``":memory:"``.
        busy_timeout: Seconds a write waits for another process's write lock.
        publish: Called on the event loop with the changes of each committed write.
        name: How errors name the owner (``SqliteStore('jobs.db')``).
    """

    def __init__(
        self,
        path: str,
        busy_timeout: float,
        publish: Callable[[Changes], None],
        name: str,
        src: str = "",
    ) -> None:
        self.path = path
        self.src = src  # this store instance's id, written with each event
        self._writes = 0
        #: The last event seq this connection wrote (read on the thread by the tail).
        self.last_seq = 0
        #: Whether another store instance tails this file (set on the thread by the
        #: tail); only then are events appended to the events table.
        self.peers_present = False
        self.busy_timeout = busy_timeout
        self._publish = publish
        self._name = name
        self._conn: sqlite3.Connection | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def is_open(self) -> bool:
        return self._executor is not None

    async def open(self) -> None:
        """Start the thread, connect, set the pragmas and migrate. Idempotent."""
        if self._executor is not None:
            return
        loop = asyncio.get_running_loop()
        executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="asyncjobs-sqlite"
        )
        try:
            await asyncio.wrap_future(executor.submit(self._connect))
        except BaseException:
            executor.submit(self._disconnect)
            executor.shutdown(wait=False)
            raise
        self._loop = loop
        self._executor = executor

    async def close(self) -> None:
        """Run what was submitted already, then close the connection. Idempotent."""
        executor = self._executor
        if executor is None:
            return
        self._executor = None  # new calls fail; calls already queued still run first
        try:
            with anyio.CancelScope(shield=True):
                await asyncio.wrap_future(executor.submit(self._disconnect))
        finally:
            executor.shutdown(wait=False)

    def _connect(self) -> None:  # store thread
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000):d}")
            conn.execute("PRAGMA journal_mode = WAL")  # ":memory:" stays "memory"
            conn.execute("PRAGMA synchronous = NORMAL")
            migrate(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _disconnect(self) -> None:  # store thread
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _executor_or_fail(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._executor is None:
            raise ConfigurationError(
                f"{self._name} is not open; await store.open() first (a Queue opens its store)"
            )
        return self._executor

    def _connection(self) -> sqlite3.Connection:  # store thread
        if self._conn is None:
            raise ConfigurationError(f"{self._name} was closed")
        return self._conn

    async def read(self, body: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``body`` on the thread; a single SELECT is a consistent snapshot."""
        executor = self._executor_or_fail()
        return await asyncio.wrap_future(executor.submit(lambda: body(self._connection())))

    async def write(self, body: Callable[[sqlite3.Connection, Changes], T]) -> T:
        """Run ``body`` in one write transaction; publish its changes after the commit."""
        executor = self._executor_or_fail()
        future = executor.submit(self._transaction, body)
        try:
            # A transaction that has begun will commit: wait for it, so that its events
            # are published and the caller learns its outcome; anyio cancellation is
            # delivered right after.
            with anyio.CancelScope(shield=True):
                value, changes = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            # Plain asyncio cancellation reaches through the shield. A transaction not
            # yet started is dropped with the future; one in flight still commits, and
            # its events must still go out.
            future.add_done_callback(self._publish_from_thread)
            raise
        self._publish(changes)
        return value

    def _transaction(
        self, body: Callable[[sqlite3.Connection, Changes], T]
    ) -> tuple[T, Changes]:  # store thread
        conn = self._connection()
        changes = Changes()
        conn.execute("BEGIN IMMEDIATE")
        try:
            value = body(conn, changes)
            if changes.pending:
                (last,) = conn.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()
                conn.execute(
                    "UPDATE meta SET value = ? WHERE key = 'seq'", (last + len(changes.pending),)
                )
                changes.events = [
                    JobEvent(type=type_, seq=last + n, at=at, job=job)
                    for n, (type_, job, at) in enumerate(changes.pending, start=1)
                ]
                self.last_seq = changes.events[-1].seq
                if self.peers_present:
                    self._append_events(conn, changes.events, last)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return value, changes

    def _append_events(
        self, conn: sqlite3.Connection, events: list[JobEvent], last: int
    ) -> None:  # store thread, inside the write transaction
        stamp = int(time.time() * 1e6)
        conn.executemany(
            "INSERT INTO events (seq, src, stamp, record) VALUES (?, ?, ?, ?)",
            [(e.seq, self.src, stamp, dumps(event_to_record(e))) for e in events],
        )
        self._writes += 1
        if self._writes % _TRIM_EVERY == 0:
            cutoff = stamp - int(EVENT_KEEP_SECONDS * 1e6)
            conn.execute("DELETE FROM events WHERE seq <= ? AND stamp < ?", (last, cutoff))

    def _publish_from_thread(self, future: concurrent.futures.Future[Any]) -> None:
        if future.cancelled() or future.exception() is not None or self._loop is None:
            return
        _, changes = future.result()
        with contextlib.suppress(RuntimeError):  # a closed loop has nobody left to tell
            self._loop.call_soon_threadsafe(self._publish, changes)
