"""Subscription: the iterator :meth:`Queue.subscribe` returns."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, final

import anyio

from .errors import JobNotFound
from .job import EventType, Job, JobEvent, JobStatus

if TYPE_CHECKING:
    from .events import Subscriber
    from .queue import Queue

__all__ = ["Subscription"]

_LIVE = [JobStatus.SCHEDULED, JobStatus.QUEUED, JobStatus.RUNNING]
#: Pages of 500 finished jobs a resumed stream looks through (newest first).
_FINISHED_PAGES = 4
_END_EVENTS = {
    JobStatus.COMPLETED: EventType.COMPLETED,
    JobStatus.FAILED: EventType.FAILED,
    JobStatus.CANCELLED: EventType.CANCELLED,
}


@final
class Subscription:
    """Snapshots first, then live events, each job's events in version order.

    The subscriber is registered before the snapshots are read, so no change falls in
    between; events whose version the subscription has already shown are dropped.
    Iterating registers lazily; leaving ``async with`` or :meth:`aclose` unregisters.

    When the store says it may have missed events (resync), the subscription re-reads
    the jobs it shows and sends what changed, with ``seq`` 0: a job that finished
    meanwhile as its final event (``job_completed``, ...), one that was deleted as
    ``job_deleted``, a live one that moved on as a ``job_snapshot``.
    """

    __slots__ = (
        "_after_seq",
        "_done",
        "_found",
        "_job_id",
        "_queue",
        "_seen",
        "_snapshot",
        "_snapshots",
        "_sub",
        "_type",
    )

    def __init__(
        self,
        queue: Queue,
        *,
        job_id: str | None,
        type: str | None,
        snapshot: bool,
        after_seq: int | None = None,
    ) -> None:
        self._queue = queue
        self._after_seq = after_seq
        self._job_id = job_id
        self._type = type
        self._snapshot = snapshot
        self._sub: Subscriber | None = None
        self._snapshots: list[JobEvent] = []
        self._found: list[JobEvent] = []
        self._seen: dict[str, Job] = {}  # the newest snapshot shown, per job
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
        self._close()

    def _close(self) -> None:
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
            self._seen[job.id] = job
            if self._snapshot or self._job_id is not None:
                self._snapshots.append(JobEvent(EventType.SNAPSHOT, 0, now, job))
        if self._after_seq is not None and self._job_id is None and self._snapshot:
            since = queue.seq_time(self._after_seq)
            if since is not None:
                for job in await self._finished_since(since):
                    self._snapshots.append(JobEvent(_END_EVENTS[job.status], 0, now, job))
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

    async def _finished_since(self, since: datetime) -> list[Job]:
        """Finished jobs (of this type) that ended at or after ``since``, oldest first."""
        types = None if self._type is None else [self._type]
        found: list[Job] = []
        cursor: str | None = None
        for _ in range(_FINISHED_PAGES):
            page = await self._queue.store.list(
                statuses=list(_END_EVENTS), types=types, cursor=cursor, limit=500
            )
            found += [j for j in page.jobs if j.finished_at is not None and j.finished_at >= since]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        found.sort(key=lambda j: (j.finished_at, j.id))
        return found

    async def __anext__(self) -> JobEvent:
        await self._start()
        if self._snapshots:
            event = self._snapshots.pop()
            if self._job_id is not None and event.job.is_terminal:
                await self.aclose()  # the job is over already: the snapshot says it all
            return event
        assert self._sub is not None
        while not self._done:
            if self._found:  # what a resync found changed
                event = self._found.pop()
            else:
                try:
                    got = await self._sub.get()
                except anyio.EndOfStream:
                    break
                if got is None:
                    await self._resync()
                    continue
                event = got
            if self._admit(event):
                return event
        raise StopAsyncIteration

    async def next_batch(self) -> list[JobEvent]:
        """Every event available now, in the order :meth:`__anext__` yields them.

        Waits for at least one. A reader that writes to a socket sends a batch in one
        write; the events and their order are the same as one at a time.

        Raises:
            StopAsyncIteration: the subscription ended.
            SubscriberOverflow: the subscriber fell too far behind and was cut off.
        """
        while True:
            batch = await self.poll()
            if batch:
                return batch
            await self.wait()

    async def poll(self) -> list[JobEvent]:
        """The events available now, as :meth:`next_batch` returns them, or ``[]``.

        Never waits for a new event (it may read the store: the start's snapshots, a
        resync); after ``[]``, :meth:`wait` for more.

        Raises:
            StopAsyncIteration: the subscription ended.
            SubscriberOverflow: the subscriber fell too far behind and was cut off.
        """
        await self._start()
        if self._snapshots:
            batch = self._snapshots[::-1]
            self._snapshots.clear()
            if self._job_id is not None and batch[-1].job.is_terminal:
                await self.aclose()
            return batch
        while not self._done:
            ready = self.take_ready()
            if ready is not None:
                return ready
            assert self._sub is not None
            if self._found:
                events = self._found[::-1]
                self._found.clear()
            else:
                try:
                    # take_ready() found a resync, the end or an overflow to report:
                    # get_many() reports it at once, without waiting.
                    got = await self._sub.get_many()
                except anyio.EndOfStream:
                    break
                if got is None:
                    await self._resync()
                    continue
                events = got
            batch = []
            for event in events:
                if self._admit(event):
                    batch.append(event)
                    if self._done:  # a job stream's final event: the rest never shows
                        break
            if batch:
                return batch
        raise StopAsyncIteration

    def take_ready(self) -> list[JobEvent] | None:
        """The live events pending now, as :meth:`next_batch` returns them, without waiting.

        ``[]`` when nothing is pending (then :meth:`wait`); ``None`` when only
        :meth:`poll` can go on: before the start, with snapshots or a resync's
        findings to send, or with a resync, the end or an overflow to report.
        """
        sub = self._sub
        if sub is None or self._snapshots or self._found or self._done:
            return None
        events = sub.take()
        if events is None:
            return None
        if len(events) == 1:  # the usual case when keeping up
            return events if self._admit(events[0]) else []
        batch = []
        for event in events:
            if self._admit(event):
                batch.append(event)
                if self._done:  # a job stream's final event: the rest never shows
                    break
        return batch

    def wait(self) -> Awaitable[None]:
        """Wait until events may be pending (after :meth:`take_ready` returned ``[]``)."""
        assert self._sub is not None
        return self._sub.wait()

    def _admit(self, event: JobEvent) -> bool:
        """Whether ``event`` is news to this subscription; remembers what was shown."""
        job = event.job
        seen = self._seen.get(job.id)
        if event.type is EventType.DELETED:
            self._seen.pop(job.id, None)
        elif seen is not None and job.version <= seen.version:
            return False  # shown already (in the snapshot or a newer coalesced event)
        elif event.type.is_final and self._job_id is None:
            self._seen.pop(job.id, None)  # bounded memory on whole-queue streams
        else:
            self._seen[job.id] = job
        if self._job_id is not None and event.type.is_final:
            self._close()
        return True

    async def _resync(self) -> None:
        """Re-read the jobs this subscription shows; queue what changed as events."""
        queue = self._queue
        now = queue.clock()
        found: list[JobEvent] = []
        if self._job_id is not None:
            ids = [self._job_id]
            current: dict[str, Job] = {}
        else:
            live = await self._live_jobs()
            current = {job.id: job for job in live}
            ids = [i for i in self._seen if i not in current]
            for job in live:  # jobs that started or moved on while events were lost
                seen = self._seen.get(job.id)
                if seen is None or job.version > seen.version:
                    found.append(JobEvent(EventType.SNAPSHOT, 0, now, job))
        for job_id in ids:  # jobs shown as live that are no longer: how they ended
            last = self._seen.get(job_id)
            try:
                job = await queue.store.get(job_id)
            except JobNotFound:
                if last is not None:
                    found.append(JobEvent(EventType.DELETED, 0, now, last))
                continue
            if last is None or job.version > last.version:
                found.append(JobEvent(_END_EVENTS.get(job.status, EventType.SNAPSHOT), 0, now, job))
        found.sort(key=lambda e: e.job.id)
        found.reverse()  # popped from the end: oldest first
        self._found.extend(found)
