"""EventBus: fan-out of job events to subscribers with bounded, coalescing buffers.

Publishing never blocks and never awaits: a worker that reports progress is never slowed
by a slow subscriber. Each subscriber owns a buffer of pending events:

* pending ``job_progress`` events of one job coalesce to the newest (every event carries
  the full snapshot, so the newest says everything the older ones did);
* once a buffer holds ``max_pending`` events, every further non-final event coalesces
  with the pending events of its job the same way;
* final events (completed, failed, cancelled, deleted) are never coalesced away;
* a subscriber whose buffer still reaches ``4 * max_pending`` is cut off: its iterator
  raises :class:`~asyncjobs.errors.SubscriberOverflow` and it must resubscribe (it then
  gets fresh snapshots, so nothing is silently lost);
* :meth:`EventBus.resync` (the store may have missed events) flags every subscriber:
  its next :meth:`Subscriber.get` returns ``None`` once, and its reader re-reads the
  jobs it shows.

Subscribers with the same filter share one wake-up: a publish sets at most one event
per filter group it reaches (everything, its job, its type), however many subscribers
wait in that group, instead of building and setting an event per subscriber.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Hashable
from typing import final

import anyio

from .errors import SubscriberOverflow
from .job import EventType, JobEvent

__all__ = ["EventBus", "Subscriber"]


@final
class _Group:
    """Subscribers with one filter, and the one wake-up their waiting readers share."""

    __slots__ = ("subs", "wakeup")

    def __init__(self) -> None:
        self.subs: set[Subscriber] = set()
        # Made by the first reader that waits, set and dropped by the next publish.
        self.wakeup: anyio.Event | None = None

    def wake(self) -> None:
        wakeup = self.wakeup
        if wakeup is not None:
            self.wakeup = None
            wakeup.set()


@final
class Subscriber:
    """One subscriber's filter and pending buffer. Made by :meth:`EventBus.subscribe`."""

    __slots__ = (
        "_bus",
        "_closed",
        "_group",
        "_overflowed",
        "_pending",
        "_resync",
        "job_id",
        "max_pending",
        "type",
    )

    def __init__(
        self,
        bus: EventBus,
        group: _Group,
        job_id: str | None,
        type: str | None,
        max_pending: int,
    ) -> None:
        self._bus = bus
        self._group = group
        self.job_id = job_id
        self.type = type
        self.max_pending = max_pending
        self._pending: OrderedDict[Hashable, JobEvent] = OrderedDict()
        self._closed = False
        self._overflowed = False
        self._resync = False

    @property
    def pending(self) -> int:
        return len(self._pending)

    def offer(self, event: JobEvent) -> None:
        """Buffer one event (called by the bus, which then wakes the group; never blocks)."""
        if self._closed:
            return
        pending = self._pending
        key: Hashable
        if event.type.is_final:
            key = event.seq
        elif event.type is EventType.PROGRESS:
            key = (event.job.id, "progress")
        elif len(pending) >= self.max_pending:
            key = (event.job.id, "latest")
        else:
            key = event.seq
        if key in pending:
            del pending[key]  # re-insert at the end: order follows the newest version
        pending[key] = event
        if len(pending) >= 4 * self.max_pending:
            pending.clear()
            self._overflowed = True
            self._closed = True

    def mark_resync(self) -> None:
        """Events may have been missed: the next :meth:`get` returns ``None``."""
        self._resync = True
        self._group.wake()  # the others in the group find nothing new and wait again

    async def get(self) -> JobEvent | None:
        """The next pending event, or ``None`` once after :meth:`mark_resync`; waits.

        Raises:
            SubscriberOverflow: the subscriber fell too far behind and was cut off.
        """
        if not self._pending and await self._resynced():
            return None
        _, event = self._pending.popitem(last=False)
        return event

    async def get_many(self) -> list[JobEvent] | None:
        """Every pending event, oldest first (at least one), or ``None`` as :meth:`get`.

        A reader that writes to a socket takes what piled up while it was busy in one
        go, so it pays for one write per wake-up rather than one per event.

        Raises:
            SubscriberOverflow: the subscriber fell too far behind and was cut off.
        """
        if not self._pending and await self._resynced():
            return None
        events = list(self._pending.values())
        self._pending.clear()
        return events

    def take(self) -> list[JobEvent] | None:
        """Every pending event without waiting (``[]`` when none; then :meth:`wait`).

        ``None`` when :meth:`get_many` has something else to report first: a resync,
        the end of the stream, or an overflow.
        """
        pending = self._pending
        if pending:
            events = list(pending.values())
            pending.clear()
            return events
        if self._resync or self._closed:
            return None
        return []

    def wait(self) -> Awaitable[None]:
        """Wait for the next wake-up of this subscriber's group (a publish, a close, a resync).

        It may find nothing new: another subscriber of the group was the reason.
        """
        group = self._group
        wakeup = group.wakeup
        if wakeup is None:
            wakeup = group.wakeup = anyio.Event()
        return wakeup.wait()

    async def _resynced(self) -> bool:
        """Wait until an event is pending (False) or a resync is due (True)."""
        while not self._pending:
            if self._resync and not self._closed:
                self._resync = False
                return True
            if self._overflowed:
                raise SubscriberOverflow(
                    "this subscriber fell too far behind the event stream; resubscribe"
                )
            if self._closed:
                raise anyio.EndOfStream
            group = self._group
            if group.wakeup is None:
                group.wakeup = anyio.Event()
            await group.wakeup.wait()
        return False

    def close(self) -> None:
        """Stop receiving events and wake a waiting :meth:`get`."""
        self._closed = True
        # Always discard (it is idempotent): an overflow closes the buffer from inside
        # publish(), where the bus's sets cannot change size, so it unregisters here.
        self._bus._discard(self)
        self._group.wake()  # the others in the group find nothing new and wait again


@final
class EventBus:
    """In-process publish/subscribe of :class:`JobEvent` with filters by job and type."""

    __slots__ = ("_all", "_by_job", "_by_type", "max_pending")

    def __init__(self, *, max_pending: int = 1000) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self.max_pending = max_pending
        # Indexed by filter so a publish touches only the subscribers that want it.
        self._all = _Group()
        self._by_job: dict[str, _Group] = {}
        self._by_type: dict[str, _Group] = {}

    @property
    def subscriber_count(self) -> int:
        return (
            len(self._all.subs)
            + sum(len(g.subs) for g in self._by_job.values())
            + sum(len(g.subs) for g in self._by_type.values())
        )

    def subscribe(self, *, job_id: str | None = None, type: str | None = None) -> Subscriber:
        """Register a subscriber for one job, one job type, or (neither) everything."""
        if job_id is not None:
            group = self._by_job.get(job_id)
            if group is None:
                group = self._by_job[job_id] = _Group()
        elif type is not None:
            group = self._by_type.get(type)
            if group is None:
                group = self._by_type[type] = _Group()
        else:
            group = self._all
        sub = Subscriber(self, group, job_id, type, self.max_pending)
        group.subs.add(sub)
        return sub

    def publish(self, event: JobEvent) -> None:
        """Offer ``event`` to every matching subscriber, then wake each group once."""
        everyone = self._all
        if everyone.subs:
            for sub in everyone.subs:
                sub.offer(event)
            everyone.wake()
        job = event.job
        group = self._by_job.get(job.id)
        if group is not None:
            for sub in group.subs:
                # A job-level filter may also carry a type; it rarely does.
                if sub.type is None or sub.type == job.type:
                    sub.offer(event)
            group.wake()
        group = self._by_type.get(job.type)
        if group is not None:
            for sub in group.subs:
                sub.offer(event)
            group.wake()

    def resync(self) -> None:
        """Flag every subscriber: the store may have missed events."""
        groups = [self._all, *self._by_job.values(), *self._by_type.values()]
        for group in groups:
            for sub in list(group.subs):
                sub.mark_resync()

    def _discard(self, sub: Subscriber) -> None:
        group = sub._group
        group.subs.discard(sub)
        if group.subs:
            return
        # An emptied group leaves its index; a later subscriber starts a new one.
        if sub.job_id is not None:
            if self._by_job.get(sub.job_id) is group:
                del self._by_job[sub.job_id]
        elif sub.type is not None and self._by_type.get(sub.type) is group:
            del self._by_type[sub.type]
