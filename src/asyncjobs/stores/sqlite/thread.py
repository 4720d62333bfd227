"""One SQLite connection on its own thread: reads, and writes grouped into transactions.

Every call runs on the thread, in submission order, so calls are serialized without a
lock and the event loop never blocks on the database. Writes are grouped (batch.py):
the first write of a loop turn schedules a flush at the end of that turn; every write
queued until then, and every one queued while that transaction runs, goes out in one
``BEGIN IMMEDIATE`` transaction, one hop to the thread and back. The events a batch
emits are handed to the event loop after its commit, then each caller gets its result.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import sqlite3
from collections.abc import Callable
from typing import TypeVar, final

import anyio

from ...errors import ConfigurationError
from ...job import JobEvent
from .batch import Changes, Op, Seq, run_batch
from .rows import RowCache
from .schema import migrate

__all__ = ["Changes", "SqliteThread"]

#: Prepared statements kept per connection (sqlite3's default is 128): the store's
#: statements are fixed strings, and a miss means parsing and planning again.
_STATEMENT_CACHE = 256

T = TypeVar("T")


@final
class SqliteThread:
    """Runs callables against one connection on one dedicated thread.

    Args:
        path: The database file, or ``":memory:"``.
        busy_timeout: Seconds a write waits for another process's write lock.
        publish: Called on the event loop with the events of each committed batch and
            whether it may have made work claimable (``wake``).
        name: How errors name the owner (``SqliteStore('jobs.db')``).
        src: This store instance's id, written with each event for other processes.
    """

    def __init__(
        self,
        path: str,
        busy_timeout: float,
        publish: Callable[[list[JobEvent], bool], None],
        name: str,
        src: str = "",
    ) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        #: The event counter and the peers, as this instance sees them (thread only).
        self.seq = Seq(src)
        #: Running jobs as this instance last wrote them (thread only; see rows.py).
        self.cache = RowCache()
        #: Transactions committed and ops they carried (tests and diagnostics read them).
        self.batches = 0
        self.ops = 0
        self._publish = publish
        self._name = name
        self._conn: sqlite3.Connection | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[Op] = []
        self._flushing = False  # a flush is scheduled, or a batch is on the thread

    @property
    def src(self) -> str:
        return self.seq.src

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
        batch = self._take()
        if batch:
            executor.submit(self._run, batch)
        try:
            with anyio.CancelScope(shield=True):
                await asyncio.wrap_future(executor.submit(self._disconnect))
        finally:
            executor.shutdown(wait=False)

    def _connect(self) -> None:  # store thread
        conn = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout,
            isolation_level=None,
            cached_statements=_STATEMENT_CACHE,
        )
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
        self.cache.clear()
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
        """Run ``body`` in a write transaction (shared with the writes queued beside it);
        its events are published after the commit, before this returns."""
        self._executor_or_fail()
        loop = self._loop
        assert loop is not None
        future: asyncio.Future[T] = loop.create_future()
        self._pending.append(Op(body, future))
        if not self._flushing:
            self._flushing = True
            loop.call_soon(self._flush)
        # A write that was sent will commit, and its batch publishes its events, whoever
        # waits. The shield lets the caller learn the outcome; anyio cancellation is
        # delivered right after. Plain asyncio cancellation reaches through the shield
        # and cancels the future: a write not yet sent is then dropped from its batch.
        with anyio.CancelScope(shield=True):
            value = await future
        return value

    def _take(self) -> list[Op]:
        batch = [op for op in self._pending if not op.future.cancelled()]
        self._pending = []
        return batch

    def _flush(self) -> None:  # event loop
        batch = self._take()
        executor = self._executor
        if not batch or executor is None:  # close() sent what was queued
            self._flushing = False
            return
        executor.submit(self._run, batch)

    def _run(self, batch: list[Op]) -> None:  # store thread
        try:
            run_batch(self._connection(), batch, self.seq, self.cache)
        except BaseException as exc:  # the transaction failed: every op with it
            for op in batch:
                op.error = exc
        else:
            self.batches += 1
            self.ops += len(batch)
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # a closed loop has nobody to tell
                loop.call_soon_threadsafe(self._done, batch)

    def _done(self, batch: list[Op]) -> None:  # event loop
        events: list[JobEvent] = []
        wake = False
        for op in batch:
            if op.error is None:
                events += op.changes.events
                wake = wake or op.changes.wake
        if events or wake:
            self._publish(events, wake)
        for op in batch:
            future = op.future
            if future.cancelled():
                continue
            if op.error is None:
                future.set_result(op.value)
            else:
                future.set_exception(op.error)
        # What was queued while this batch ran goes out now, as the next one.
        self._flush()
