"""The memory store's queued-job index: what a claim takes next, in O(T + log n)."""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Collection, Mapping
from typing import final

from ...job import Job, JobStatus

__all__ = ["QueuedIndex"]

_QUEUED = JobStatus.QUEUED  # a module constant: EnumType.__getattr__ costs on Python 3.11


@final
class _TypeQueue:
    """One type's queued ids: a heap of ids per priority, and the priorities best first."""

    __slots__ = ("heaps", "levels")

    def __init__(self) -> None:
        self.heaps: dict[int, list[str]] = {}
        self.levels: list[int] = []  # -priority, ascending: the best priority first


@final
class QueuedIndex:
    """Queued job ids per type, best first: higher priority, then lower id (a ULID, so
    the oldest job). Entries go stale when their job leaves the queued state and are
    dropped when they reach the head (lazy deletion).

    A heap per (type, priority) holds bare ids: a heap of ``(-priority, id)`` tuples
    compares tuples element by element at every level of every pop, three times the
    cost of comparing the ids alone.
    """

    __slots__ = ("_types",)

    def __init__(self) -> None:
        self._types: dict[str, _TypeQueue] = {}

    def push(self, job: Job) -> None:
        queue = self._types.get(job.type)
        if queue is None:
            queue = self._types[job.type] = _TypeQueue()
        heap = queue.heaps.get(job.priority)
        if heap is None:
            heap = queue.heaps[job.priority] = []
            bisect.insort(queue.levels, -job.priority)
        heapq.heappush(heap, job.id)

    def pop(
        self, types: Collection[str], room: Mapping[str, int], jobs: Mapping[str, Job]
    ) -> str | None:
        """Take the best queued id among ``types`` whose ``room`` is not used up
        (types missing from ``room`` are unbounded); ``jobs`` tells live entries."""
        best_heap: list[str] | None = None
        best_level = 0
        best_id = ""
        for type_ in types:
            queue = self._types.get(type_)
            if queue is None or room.get(type_, 1) <= 0:
                continue
            levels, heaps = queue.levels, queue.heaps
            while levels:
                level = levels[0]
                heap = heaps[-level]
                while heap:
                    head = jobs.get(heap[0])
                    if head is not None and head.status is _QUEUED:
                        break
                    heapq.heappop(heap)  # stale: the job left the queued state
                if heap:
                    break
                del levels[0], heaps[-level]  # an emptied priority leaves the index
            else:
                continue  # nothing queued of this type
            if (
                best_heap is None
                or level < best_level
                or (level == best_level and heap[0] < best_id)
            ):
                best_heap, best_level, best_id = heap, level, heap[0]
        if best_heap is None:
            return None
        heapq.heappop(best_heap)
        return best_id
