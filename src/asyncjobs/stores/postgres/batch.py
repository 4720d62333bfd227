"""Group commit of workers' changes for :class:`~asyncjobs.stores.postgres.PostgresStore`.

Under load, many workers of one process report progress and finish jobs at nearly the
same moment, and each change would be a statement and a commit (an fsync) of its own. A
background task of the store writes every change queued while the previous batch was in
flight in one fenced statement (``Statements.write``: each change only if its row still
has the version it was computed from): one round trip, one commit and one NOTIFY per
change for the whole batch. An idle queue pays nothing extra: a lone change (nothing
being written, nothing waiting) is written at once by its caller, without the hop to the
background task; changes that come meanwhile wait for it and go out together after.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, final

from ...errors import ConfigurationError
from ...job import JobEvent
from ..tasks import BackgroundTasks, TaskHandle
from .sql import Change, Statements

__all__ = ["ChangeBatcher"]

#: At most this many changes per statement.
_MAX_BATCH = 200

_Item = tuple[Change, "asyncio.Future[JobEvent | None]"]


@final
class ChangeBatcher:
    """Writes queued changes in batches, one statement each (see the module docstring).

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
        self._busy = False  # a batch (or a lone change) is being written

    def start(self, tasks: BackgroundTasks) -> None:
        self._pending = []
        self._busy = False
        self._wakeup = asyncio.Event()
        self._task = tasks.start_soon(self._loop, "asyncjobs-pg-finish")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await task.stop()
        pending, self._pending = self._pending, []
        for _, done in pending:
            if not done.done():
                done.set_exception(ConfigurationError("the PostgreSQL store was closed"))

    async def write(self, change: Change) -> JobEvent | None:
        """Store ``change`` if its row still has the version expected; None if it moved on."""
        if not self._busy and not self._pending and self._task is not None:
            self._busy = True
            try:
                events = await self._run(lambda conn: self._sql.write(conn, [change]))
            finally:
                self._busy = False
                if self._pending:
                    self._wakeup.set()
            return events[0] if events else None
        done: asyncio.Future[JobEvent | None] = asyncio.get_running_loop().create_future()
        self._pending.append((change, done))
        if not self._busy:
            self._wakeup.set()
        return await done

    async def _loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if self._busy:
                continue  # a lone change is being written: its writer sets the wake-up
            self._busy = True
            try:
                while self._pending:
                    batch = self._pending[:_MAX_BATCH]
                    del self._pending[:_MAX_BATCH]
                    await self._flush(batch)
            finally:
                self._busy = False

    async def _flush(self, batch: list[_Item]) -> None:
        # Sorted by id: rows are locked in one order by every writer (no deadlocks).
        batch.sort(key=lambda item: item[0].job.id)
        changes = [change for change, _ in batch]

        async def op(conn: Any) -> list[JobEvent]:
            return await self._sql.write(conn, changes)

        try:
            events: list[JobEvent] = await self._run(op)
        except Exception as exc:  # handed to each waiting caller, who raises it
            for _, done in batch:
                if not done.done():
                    done.set_exception(exc)
            return
        written = {event.job.id: event for event in events}
        for change, done in batch:
            if not done.done():
                done.set_result(written.get(change.job.id))
