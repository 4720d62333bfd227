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

Subscribers with the same filter share one wake-up: a publish wakes each filter group
it reaches (everything, its job, its type) once, resolving the futures its waiting
readers await in one pass, and offers the event with a key computed once per event.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Hashable
from typing import final

import anyio

from .errors import SubscriberOverflow
from .job import EventType, JobEvent

__all__ = ["EventBus", "Subscriber"]


def _key(event: JobEvent) -> Hashable | None:
    """An event's key in a pending buffer; ``None`` when it depends on the buffer."""
    if event.type.is_final:
        return event.seq  # never coalesced
    if event.type is EventType.PROGRESS:
        return (event.job.id, "progress")  # pending progress of a job: the newest
    return None


@final
class _Group:
    """Subscribers with one filter, and the waiting readers one publish wakes at once."""

    __slots__ = ("subs", "waiters")

    def __init__(self) -> None:
        self.subs: set[Subscriber] = set()
        # One future per waiting reader (a reader that is cancelled cancels its own
        # future only); a publish resolves them all in one pass and starts a new list.
        self.waiters: list[asyncio.Future[None]] = []

    def wait(self) -> asyncio.Future[None]:
        waiters = self.waiters
        if len(waiters) > 2 * len(self.subs) + 16:
            # Readers cancelled while waiting (closed connections) left done futures.
            waiters[:] = [f for f in waiters if not f.done()]
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters.append(waiter)
        return waiter

    def wake(self) -> None:
        waiters = self.waiters
        if waiters:
            self.waiters = []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)


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
        "_waiter",
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
        self._waiter: asyncio.Future[None] | None = None

    @property
    def pending(self) -> int:
        return len(self._pending)

    def offer(self, event: JobEvent) -> None:
        """Buffer one event (called by the bus, which then wakes the group; never blocks)."""
        self._offer(event, _key(event))

    def _offer(self, event: JobEvent, key: Hashable | None) -> None:
        # ``key`` is the same for every subscriber (the bus computes it once per event),
        # except ``None``: a non-final event whose key depends on this buffer's length.
        if self._closed:
            return
        pending = self._pending
        if key is None:
            key = (event.job.id, "latest") if len(pending) >= self.max_pending else event.seq
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
        self._wake()

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

        It may find nothing new: another subscriber of the group was the reason. A bare
        future, not a coroutine: a reader that waits per event pays for no frame.
        """
        waiter = self._waiter = self._group.wait()
        return waiter

    def _wake(self) -> None:
        """Wake this subscriber's reader alone (its group's others have nothing new)."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

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
            await self.wait()
        return False

    def close(self) -> None:
        """Stop receiving events and wake a waiting :meth:`get`."""
        self._closed = True
        # Always discard (it is idempotent): an overflow closes the buffer from inside
        # publish(), where the bus's sets cannot change size, so it unregisters here.
        self._bus._discard(self)
        self._wake()


@final
class EventBus:
    """In-process publish/subscribe of :class:`JobEvent` with filters by job and type."""

    __slots__ = ("_all", "_by_job", "_by_type", "max_pending", "wanted")

    def __init__(self, *, max_pending: int = 1000) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self.max_pending = max_pending
        # Indexed by filter so a publish touches only the subscribers that want it.
        self._all = _Group()
        self._by_job: dict[str, _Group] = {}
        self._by_type: dict[str, _Group] = {}
        #: Whether anyone subscribes: a publisher may skip :meth:`publish` otherwise (an
        #: attribute, not a property: read twice per job).
        self.wanted = False

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
        self.wanted = True
        return sub

    def publish(self, event: JobEvent) -> None:
        """Offer ``event`` to every matching subscriber, then wake each group once."""
        everyone, by_job, by_type = self._all, self._by_job, self._by_type
        if not (everyone.subs or by_job or by_type):
            return  # nobody listens: twice per job, so skip even the key
        key = _key(event)
        if everyone.subs:
            for sub in everyone.subs:
                sub._offer(event, key)
            everyone.wake()
        job = event.job
        group = by_job.get(job.id) if by_job else None
        if group is not None:
            for sub in group.subs:
                # A job-level filter may also carry a type; it rarely does.
                if sub.type is None or sub.type == job.type:
                    sub._offer(event, key)
            group.wake()
        group = by_type.get(job.type) if by_type else None
        if group is not None:
            for sub in group.subs:
                sub._offer(event, key)
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
        self.wanted = bool(self._all.subs or self._by_job or self._by_type)
