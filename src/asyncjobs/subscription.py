"""Subscription: the iterator :meth:`Queue.subscribe` returns."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import TracebackType
from typing import TYPE_CHECKING, final

import anyio

from .job import EventType, Job, JobEvent, JobStatus

if TYPE_CHECKING:
    from .events import Subscriber
    from .queue import Queue

__all__ = ["Subscription"]

_LIVE = [JobStatus.SCHEDULED, JobStatus.QUEUED, JobStatus.RUNNING]


@final
class Subscription:
    """Snapshots first, then live events, each job's events in version order.

    The subscriber is registered before the snapshots are read, so no change falls in
    between; events whose version the subscription has already shown are dropped.
    Iterating registers lazily; leaving ``async with`` or :meth:`aclose` unregisters.
    """

    __slots__ = ("_done", "_job_id", "_queue", "_seen", "_snapshot", "_snapshots", "_sub", "_type")

    def __init__(
        self, queue: Queue, *, job_id: str | None, type: str | None, snapshot: bool
    ) -> None:
        self._queue = queue
        self._job_id = job_id
        self._type = type
        self._snapshot = snapshot
        self._sub: Subscriber | None = None
        self._snapshots: list[JobEvent] = []
        self._seen: dict[str, int] = {}
        self._done = False

    async def __aenter__(self) -> Subscription:
        await self._start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Unregister; a pending ``__anext__`` ends."""
        self._done = True
        if self._sub is not None:
            self._sub.close()

    def __del__(self) -> None:
        # A bare `async for` left with `break` never reaches aclose(); unregistering is
        # synchronous, so the garbage collector can do it.
        if self._sub is not None:
            self._sub.close()

    def __aiter__(self) -> AsyncIterator[JobEvent]:
        return self

    async def _start(self) -> None:
        if self._sub is not None:
            return
        queue = self._queue
        self._sub = queue.bus.subscribe(job_id=self._job_id, type=self._type)
        try:
            if self._job_id is not None:
                jobs = [await queue.store.get(self._job_id)]  # JobNotFound propagates
            elif self._snapshot:
                jobs = await self._live_jobs()
            else:
                jobs = []
        except BaseException:
            await self.aclose()
            raise
        now = queue.clock()
        for job in jobs:
            self._seen[job.id] = job.version
            if self._snapshot or self._job_id is not None:
                self._snapshots.append(JobEvent(EventType.SNAPSHOT, 0, now, job))
        self._snapshots.reverse()  # popped from the end: oldest first

    async def _live_jobs(self) -> list[Job]:
        store = self._queue.store
        types = None if self._type is None else [self._type]
        jobs: list[Job] = []
        cursor: str | None = None
        while True:
            page = await store.list(statuses=_LIVE, types=types, cursor=cursor, limit=500)
            jobs.extend(page.jobs)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        jobs.reverse()
        return jobs

    async def __anext__(self) -> JobEvent:
        await self._start()
        if self._snapshots:
            event = self._snapshots.pop()
            if self._job_id is not None and event.job.is_terminal:
                await self.aclose()  # the job is over already: the snapshot says it all
            return event
        assert self._sub is not None
        while not self._done:
            try:
                event = await self._sub.get()
            except anyio.EndOfStream:
                break
            job = event.job
            if event.type is EventType.DELETED:
                self._seen.pop(job.id, None)
            elif job.version <= self._seen.get(job.id, 0):
                continue  # shown already (in the snapshot or a newer coalesced event)
            elif event.type.is_final and self._job_id is None:
                self._seen.pop(job.id, None)  # bounded memory on whole-queue streams
            else:
                self._seen[job.id] = job.version
            if self._job_id is not None and event.type.is_final:
                await self.aclose()
            return event
        raise StopAsyncIteration
