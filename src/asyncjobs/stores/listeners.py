"""The in-process half of every store's notifier: listeners, resync listeners, wake-ups.

Each backend delivers its events (its own, and those it hears from other processes) to
one :class:`LocalNotifier`, which fans them out to this process. Wake-ups are
level-triggered: :meth:`LocalNotifier.wake` bumps a generation counter, and a waiter
passes the generation it read before its claim (``since``), so a wake-up that arrived
while the claim was on its way back is never lost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import final

import anyio

from ..job import EventType, JobEvent
from .protocol import EventListener

__all__ = ["WAKE", "Listeners", "LocalNotifier"]

logger = logging.getLogger("asyncjobs.store")

#: Events after which a job may have become claimable (or a per-type slot freed up).
WAKE = frozenset(
    {
        EventType.CREATED,
        EventType.QUEUED,
        EventType.RETRYING,
        EventType.COMPLETED,
        EventType.FAILED,
        EventType.CANCELLED,
    }
)


@final
class Listeners:
    """Registered callables and a fan-out that one broken callable cannot break."""

    __slots__ = ("_items",)

    def __init__(self) -> None:
        # A tuple, replaced on add/remove: emit() (twice per job) iterates it without a
        # copy and still sees a stable set when a listener unregisters itself.
        self._items: tuple[Callable[..., None], ...] = ()

    def __bool__(self) -> bool:
        return bool(self._items)

    def add(self, listener: Callable[..., None]) -> Callable[[], None]:
        """Register ``listener``; return a function that removes it (safe to call twice)."""
        self._items = (*self._items, listener)

        def remove() -> None:
            items = list(self._items)
            if listener in items:
                items.remove(listener)
                self._items = tuple(items)

        return remove

    def emit(self, events: Iterable[JobEvent]) -> None:
        """Call every listener with each event, in order."""
        for event in events:
            for listener in self._items:
                try:
                    listener(event)
                except Exception:  # a broken listener must not undo a committed change
                    logger.exception("event listener %r failed", listener)

    def emit_one(self, event: JobEvent) -> None:
        """Call every listener with one event: :meth:`emit` without the iterable."""
        for listener in self._items:
            try:
                listener(event)
            except Exception:  # a broken listener must not undo a committed change
                logger.exception("event listener %r failed", listener)

    def call(self) -> None:
        """Call every (argument-less) listener once."""
        for listener in list(self._items):
            try:
                listener()
            except Exception:  # a broken listener must not stop the others
                logger.exception("listener %r failed", listener)


@final
class LocalNotifier:
    """Event listeners, resync listeners and the wake-up generation of one store."""

    __slots__ = ("_events", "_generation", "_resync", "_wakeup", "emit_one")

    def __init__(self) -> None:
        self._events = Listeners()
        #: Deliver one event, and wake nobody: the hot path of an in-process store, which
        #: wakes workers itself when a change may have made work claimable.
        self.emit_one = self._events.emit_one
        self._resync = Listeners()
        self._generation = 0
        self._wakeup: anyio.Event | None = None

    @property
    def wanted(self) -> bool:
        """Whether anyone listens for events."""
        return bool(self._events)

    def add_listener(self, listener: EventListener) -> Callable[[], None]:
        return self._events.add(listener)

    def add_resync_listener(self, callback: Callable[[], None]) -> Callable[[], None]:
        return self._resync.add(callback)

    def emit(self, events: Iterable[JobEvent], *, wake: bool | None = None) -> None:
        """Deliver ``events``; wake idle workers if one may have made work claimable
        (``wake=None`` decides by the event types)."""
        events = tuple(events)
        self._events.emit(events)
        if wake or (wake is None and any(e.type in WAKE for e in events)):
            self.wake()

    def emit_and_wake(self, event: JobEvent) -> None:
        """Deliver one event, then :meth:`wake`: an in-process store's end of an
        attempt (once per job), in one call rather than two."""
        for listener in self._events._items:  # Listeners.emit_one(), inline
            try:
                listener(event)
            except Exception:  # a broken listener must not undo a committed change
                logger.exception("event listener %r failed", listener)
        self._generation += 1  # wake(), inline
        wakeup, self._wakeup = self._wakeup, None
        if wakeup is not None:
            wakeup.set()

    def wake(self) -> None:
        self._generation += 1
        wakeup, self._wakeup = self._wakeup, None
        if wakeup is not None:
            wakeup.set()

    def resync(self) -> None:
        """Tell resync listeners that events may have been missed; wake workers too."""
        logger.info("store notifier may have missed events; listeners re-read their state")
        self._resync.call()
        self.wake()

    def work_generation(self) -> int:
        return self._generation

    async def wait_for_work(self, timeout: float, *, since: int | None = None) -> None:
        if since is None:
            since = self._generation
        if self._generation > since:
            return
        if self._wakeup is None:
            self._wakeup = anyio.Event()
        wakeup = self._wakeup
        with anyio.move_on_after(timeout):
            await wakeup.wait()
