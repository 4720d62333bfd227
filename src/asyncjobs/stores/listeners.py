"""The in-process event listeners of one store, shared by every store implementation."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import final

from ..job import JobEvent
from .protocol import EventListener

__all__ = ["Listeners"]

logger = logging.getLogger("asyncjobs.store")


@final
class Listeners:
    """Registered listeners and a fan-out that one broken listener cannot break."""

    __slots__ = ("_items",)

    def __init__(self) -> None:
        # A tuple, replaced on add/remove: emit() (twice per job) iterates it without a
        # copy and still sees a stable set when a listener unregisters itself.
        self._items: tuple[EventListener, ...] = ()

    def __bool__(self) -> bool:
        return bool(self._items)

    def add(self, listener: EventListener) -> Callable[[], None]:
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
