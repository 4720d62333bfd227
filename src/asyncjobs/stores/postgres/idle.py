"""Claims of an idle worker that cannot find anything, answered without a statement.

After a worker's claim (without type limits) comes back short, the queue held nothing
more for its types. Until something may have queued a job, its next claims of those
types would find nothing again: an idle worker made two per job (one right after taking
a handed job, one when its slot freed up), each racing the finish it followed for the
server and the client's CPU. :class:`IdleClaims` answers them.

What may queue a job is counted apart from the store's work generation: ``job_created``,
``job_queued``, ``job_retrying`` (here, or heard from another process), a resync, a
hand-off's own announcement. Ends wake workers too (they free per-type slots) but queue
nothing, so they do not count. A ``wait_for_work`` that times out or fails clears
everything: the worker's safety-net claim (a notification lost, a row skipped while
another transaction held it) always reaches the server.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import final

from ...job import EventType

__all__ = ["ADDS", "IdleClaims"]

#: Events of a job becoming queued; the other wake-ups only free a per-type slot.
ADDS = frozenset({EventType.CREATED, EventType.QUEUED, EventType.RETRYING})


@final
class IdleClaims:
    """Which workers' claims are known to find nothing (see the module docstring)."""

    __slots__ = ("_adds", "_empty")

    def __init__(self) -> None:
        self._adds = 0  # things that may have queued a job, so far
        # Worker id -> (self._adds, types) as of its last claim that came back short.
        self._empty: dict[str, tuple[int, frozenset[str]]] = {}

    @property
    def adds(self) -> int:
        return self._adds

    def added(self) -> None:
        """A job may have been queued (or events were missed): forget what was known."""
        self._adds += 1

    def nothing_for(self, worker_id: str, types: Collection[str]) -> bool:
        """Whether a claim of ``types`` by ``worker_id`` is known to find nothing now."""
        known = self._empty.get(worker_id)
        if known is None:
            return False
        if known[0] == self._adds and known[1].issuperset(types):
            return True
        del self._empty[worker_id]
        return False

    def short(self, worker_id: str, adds: int, types: Collection[str]) -> None:
        """A claim of ``types`` that started when the count was ``adds`` came back short."""
        self._empty[worker_id] = (adds, frozenset(types))

    def forget(self, worker_id: str | None = None) -> None:
        """Forget one worker (it claims with limits, or left), or every worker."""
        if worker_id is None:
            self._empty.clear()
        else:
            self._empty.pop(worker_id, None)
