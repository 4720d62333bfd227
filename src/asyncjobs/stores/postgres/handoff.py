"""Hand-off of a new job to a worker of this process that is parked waiting for work.

An idle worker's next job would otherwise cost three commits before anyone sees it
end: the submit, the claim the submit wakes the worker for, and the finish. When a
worker of this store instance is parked in ``wait_for_work`` after a claim that found
nothing, and nothing has woken it since, a job submitted in this process is inserted
already claimed by that worker: one statement stores the queued snapshot's
``job_created`` and the running snapshot's ``job_started`` (two seqs, two NOTIFYs) and
the row as running under a fresh lease. The wake-up of the submit then finds the job
waiting in the store: the worker's claim returns it without a round trip.

The worker would have claimed the job a moment later anyway (it is woken by this very
submit); what changes is only that no other process can take it first. It is not done
for jobs of a type with a concurrency limit (those are counted across processes), for
delayed jobs, or for adds with ``max_queued``. A handed job its worker never comes back
for (it stopped meanwhile) is given back, requeued with its attempt returned, when the
worker unregisters or the store closes; after a crash its lease runs out as for any
claimed job.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Collection, Iterator, Mapping
from typing import final

import attrs

from ...job import Job, JobStatus

__all__ = ["Handoffs", "Standing"]


@attrs.frozen
class Standing:
    """What a worker asked for in its last claim, which came back short."""

    worker_id: str
    types: frozenset[str]
    lease: float
    generation: int  #: the store's work generation when that claim started


@final
class Handoffs:
    """The bookkeeping of hand-offs for one store instance (see the module docstring)."""

    def __init__(self) -> None:
        self._standing: dict[str, Standing] = {}
        self._parked: Counter[int] = Counter()
        self._handed: dict[str, list[Job]] = {}
        self._gone: set[str] = set()  # workers unregistered: nothing is handed to them

    def claimed(
        self,
        worker_id: str,
        types: Collection[str],
        limits: Mapping[str, int],
        lease: float,
        generation: int,
        *,
        short: bool,
    ) -> None:
        """Note a claim by ``worker_id``; a short one may be followed by a wait."""
        free = frozenset(t for t in types if t not in limits)
        if short and free:
            self._standing[worker_id] = Standing(worker_id, free, lease, generation)
        else:
            self._standing.pop(worker_id, None)

    @contextlib.contextmanager
    def parked(self, since: int) -> Iterator[None]:
        """A worker waits for work that came after generation ``since``."""
        self._parked[since] += 1
        try:
            yield
        finally:
            self._parked[since] -= 1
            if not self._parked[since]:
                del self._parked[since]

    def target(self, job: Job, generation: int) -> Standing | None:
        """The parked worker ``job`` may go to now, if any."""
        if job.status is not JobStatus.QUEUED or not self._parked.get(generation):
            return None
        for standing in self._standing.values():
            if standing.generation == generation and job.type in standing.types:
                return standing
        return None

    def hand(self, worker_id: str, job: Job) -> bool:
        """``job`` is stored as claimed by ``worker_id``: its next claim returns it.
        False if that worker unregistered meanwhile (the caller gives the job back)."""
        self._standing.pop(worker_id, None)
        if worker_id in self._gone:
            return False
        self._handed.setdefault(worker_id, []).append(job)
        return True

    def take(self, worker_id: str) -> list[Job]:
        """The jobs handed to ``worker_id`` and not taken yet (now taken)."""
        return self._handed.pop(worker_id, [])

    def forget(self, worker_id: str | None = None) -> list[Job]:
        """Drop the state of one worker (or of all); return its jobs not taken."""
        if worker_id is not None:
            self._standing.pop(worker_id, None)
            self._gone.add(worker_id)
            return self.take(worker_id)
        self._standing.clear()
        left = [job for jobs in self._handed.values() for job in jobs]
        self._handed.clear()
        return left
