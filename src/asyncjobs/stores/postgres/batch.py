"""Group commit of finishes for :class:`~asyncjobs.stores.postgres.PostgresStore`.

Under load, many workers of one process finish jobs at nearly the same moment, and each
finish would be a statement and a commit (an fsync) of its own. A background task of
the store writes every finish queued while the previous batch was in flight in one
fenced statement (``Statements.write`` with the expected versions): one round trip and
one commit for the whole batch. An idle queue pays nothing extra: a lone finish is
written at once, as a batch of one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, final

import attrs

from ...errors import ConfigurationError
from ...job import EventType, Job, JobEvent
from ..tasks import BackgroundTasks, TaskHandle
from .sql import Statements

__all__ = ["FinishBatcher"]

#: At most this many finishes per statement.
_MAX_BATCH = 200


@attrs.define(eq=False)
class _Item:
    job: Job
    type: EventType
    record: str
    at: datetime
    expected: int
    done: asyncio.Future[JobEvent | None]


@final
class FinishBatcher:
    """Writes queued finishes in batches, one statement each (see the module docstring).

    Args:
        run: Runs an operation on a pooled connection (the store's ``_run``).
        sql: The store's statements.
    """

    def __init__(
        self, run: Callable[[Callable[[Any], Awaitable[Any]]], Awaitable[Any]], sql: Statements
    ) -> None:
        self._run = run
        self._sql = sql
        self._pending: list[_Item] = []
        self._wakeup = asyncio.Event()
        self._task: TaskHandle | None = None

    def start(self, tasks: BackgroundTasks) -> None:
        self._pending = []
        self._wakeup = asyncio.Event()
        self._task = tasks.start_soon(self._loop, "asyncjobs-pg-finish")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await task.stop()
        pending, self._pending = self._pending, []
        for item in pending:
            if not item.done.done():
                item.done.set_exception(ConfigurationError("the PostgreSQL store was closed"))

    async def write(
        self, job: Job, type_: EventType, record: str, at: datetime, *, expected: int
    ) -> JobEvent | None:
        """Store ``job`` if its row still has version ``expected``; None if it moved on."""
        done: asyncio.Future[JobEvent | None] = asyncio.get_running_loop().create_future()
        self._pending.append(_Item(job, type_, record, at, expected, done))
        self._wakeup.set()
        return await done

    async def _loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                batch = self._pending[:_MAX_BATCH]
                del self._pending[:_MAX_BATCH]
                await self._flush(batch)

    async def _flush(self, batch: list[_Item]) -> None:
        # Sorted by id: rows are locked in one order by every writer (no deadlocks).
        batch.sort(key=lambda item: item.job.id)
        changes = [(item.job, item.type) for item in batch]

        async def op(conn: Any) -> list[JobEvent]:
            return await self._sql.write(
                conn,
                changes,
                [item.at for item in batch],
                expected=[item.expected for item in batch],
                records=[item.record for item in batch],
            )

        try:
            events: list[JobEvent] = await self._run(op)
        except Exception as exc:  # handed to each waiting caller, who raises it
            for item in batch:
                if not item.done.done():
                    item.done.set_exception(exc)
            return
        written = {event.job.id: event for event in events}
        for item in batch:
            if not item.done.done():
                item.done.set_result(written.get(item.job.id))
