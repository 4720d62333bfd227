"""The memory store's queued-job index: what a claim takes next, in O(T + log n)."""

from __future__ import annotations

import bisect
import heapq
from collections import deque
from collections.abc import Collection, Mapping
from typing import final

from ...job import Job, JobStatus

__all__ = ["QueuedIndex"]

_QUEUED = JobStatus.QUEUED  # a module constant: EnumType.__getattr__ costs on Python 3.11


@final
class _Level:
    """One (type, priority)'s queued ids, lowest first.

    Ids are ULIDs, increasing in the order jobs are made, so nearly every push comes in
    order and goes to the end of ``fifo`` (a deque: O(1) both ends, no comparisons
    beyond one with its tail). A push older than the tail (a retried, recovered or
    promoted job) goes to ``late``, a heap; a pop takes the lower of the two heads.
    """

    __slots__ = ("fifo", "late")

    def __init__(self) -> None:
        self.fifo: deque[str] = deque()
        self.late: list[str] = []

    def push(self, job_id: str) -> None:
        fifo = self.fifo
        if not fifo or fifo[-1] < job_id:
            fifo.append(job_id)
        else:
            heapq.heappush(self.late, job_id)

    def head(self, jobs: Mapping[str, Job]) -> str | None:
        """The lowest live id, dropping stale ones (their job left the queued state)."""
        fifo, late = self.fifo, self.late
        while fifo:
            head = jobs.get(fifo[0])
            if head is not None and head.status is _QUEUED:
                break
            fifo.popleft()
        while late:
            head = jobs.get(late[0])
            if head is not None and head.status is _QUEUED:
                break
            heapq.heappop(late)
        if not late:
            return fifo[0] if fifo else None
        if fifo and fifo[0] < late[0]:
            return fifo[0]
        return late[0]


@final
class _TypeQueue:
    """One type's queued ids: a level per priority, and the priorities best first."""

    __slots__ = ("levels", "order")

    def __init__(self) -> None:
        self.levels: dict[int, _Level] = {}
        self.order: list[int] = []  # -priority, ascending: the best priority first


@final
class QueuedIndex:
    """Queued job ids per type, best first: higher priority, then lower id (a ULID, so
    the oldest job). Entries go stale when their job leaves the queued state and are
    dropped when they reach the head (lazy deletion).

    Each (type, priority) keeps bare ids, not ``(-priority, id)`` tuples (compared
    element by element), mostly in a deque in arrival order (:class:`_Level`).
    """

    __slots__ = ("_types",)

    def __init__(self) -> None:
        self._types: dict[str, _TypeQueue] = {}

    def push(self, job: Job) -> None:
        queue = self._types.get(job.type)
        if queue is None:
            queue = self._types[job.type] = _TypeQueue()
        level = queue.levels.get(job.priority)
        if level is None:
            level = queue.levels[job.priority] = _Level()
            bisect.insort(queue.order, -job.priority)
        level.push(job.id)

    def pop(
        self, types: Collection[str], room: Mapping[str, int], jobs: Mapping[str, Job]
    ) -> str | None:
        """Take the best queued id among ``types`` whose ``room`` is not used up
        (types missing from ``room`` are unbounded); ``jobs`` tells live entries."""
        best: _Level | None = None
        best_order = 0
        best_id = ""
        for type_ in types:
            queue = self._types.get(type_)
            if queue is None or room.get(type_, 1) <= 0:
                continue
            order, levels = queue.order, queue.levels
            head: str | None = None
            while order:
                key = order[0]
                level = levels[-key]
                if level.late:
                    head = level.head(jobs)
                else:  # head() without late arrivals, inline: once per claimed job
                    fifo = level.fifo
                    while fifo:
                        head = fifo[0]
                        live = jobs.get(head)
                        if live is not None and live.status is _QUEUED:
                            break
                        fifo.popleft()
                    else:
                        head = None
                if head is not None:
                    break
                del order[0], levels[-key]  # an emptied priority leaves the index
            if head is None:
                continue  # nothing queued of this type
            if best is None or key < best_order or (key == best_order and head < best_id):
                best, best_order, best_id = level, key, head
        if best is None:
            return None
        fifo = best.fifo
        if fifo and fifo[0] == best_id:  # take(), inline
            fifo.popleft()
        else:
            heapq.heappop(best.late)
        return best_id
