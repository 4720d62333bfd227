"""Hand-off of a new job to a parked worker of another process (or of this one).

Between a submit and its job's observed end, an idle worker costs a round trip more
than it needs to: the submit rings its tail, and only then does it ask for the job. A
worker whose claim came back short is *parked* instead: the claim script puts it on
``P parked:<type>`` for each type it asked for (scored by when the entry ages out,
:data:`~.scripts.PARK_TTL` seconds on the server's clock), with what a hand-off needs in
``P parking`` (its lease, each type's running limit as it asked). A submit (ADD) of a
queued job whose type has nothing ready, and whose running limit has room, takes one
parked worker off every type and stores the job already claimed by it, exactly as the
claim script would, writing ``job_created`` then ``job_started`` (both marked ``h``
with the worker). The worker's store sees ``job_started`` in its tail, keeps the job
here for that worker and wakes it; its next claim returns the job without a round trip.

Failure modes:

* The worker stopped before the job reached its store (``remove_worker``, or the
  store closed): the job is given back at once, requeued with its attempt returned.
* The process was killed (-9): its entries stay until they age out (seconds); a job
  handed to it meanwhile runs out its lease and is requeued by the janitor, like any
  job a killed worker held.
* The worker's tail missed the entry (a resync): the same, recovered by lease expiry.
* A claim of the worker that crosses a hand-off in flight parks it again, and a second
  job may be handed to it: the store keeps no more jobs for a worker than the free room
  its last claim left (asked for minus got), and gives back the one beyond.
* A worker that stops claiming without stopping (draining at shutdown) keeps its entry:
  a job handed to it then waits until the worker is removed, and is given back.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import final

from ...job import Job, JobStatus

__all__ = ["Parking", "epoch_us", "from_epoch_us"]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def epoch_us(when: datetime) -> str:
    """``when`` in whole microseconds since the epoch (exact, unlike a float)."""
    delta = when - _EPOCH
    return str((delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds)


def from_epoch_us(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


@final
class Parking:
    """The hand-off bookkeeping of one store instance (see the module docstring)."""

    def __init__(self, instance: str) -> None:
        self._instance = instance
        # worker -> its claims may have parked it since its last full claim
        self._parked: dict[str, bool] = {}
        self._room: dict[str, int] = {}  # worker -> free room its last short claim left
        self._inbox: dict[str, list[Job]] = {}

    def member(self, worker_id: str) -> str:
        return f"{self._instance} {worker_id}"

    def enlist(self, worker_id: str) -> None:
        """A worker registered with this store: its short claims park it."""
        self._parked.setdefault(worker_id, False)

    def claim_args(self, worker_id: str, now: datetime, lease: float) -> list[str]:
        """What the claim script takes after the tokens (none: the caller never parks)."""
        parked = self._parked.get(worker_id)
        if parked is None:
            return []
        return [self.member(worker_id), epoch_us(now), repr(lease), "1" if parked else "0"]

    def claimed(self, worker_id: str, limit: int, got: int) -> None:
        if worker_id in self._parked:
            # A short claim parked it; a full one took it off (it said it was parked).
            # A hand-off takes it off too, but this stays set: a claim that crossed the
            # hand-off may have parked it again, and the next full claim clears that.
            self._parked[worker_id] = got < limit
            self._room[worker_id] = limit - got

    def arrived(self, worker_id: str, job: Job) -> bool:
        """``job`` was handed to ``worker_id``: kept for its next claim. False: the
        worker is gone from this store (the caller gives the job back)."""
        room = self._room.get(worker_id, 0)
        if worker_id not in self._parked or room <= 0:
            return False
        self._room[worker_id] = room - 1
        self._inbox.setdefault(worker_id, []).append(job)
        return True

    def changed(self, job: Job) -> Job | None:
        """Another process changed a job (an event): if it is kept for a worker, the
        newer snapshot replaces it while it still holds that lease (a cancel request),
        and it is dropped if not (its lease ran out: it is no longer the worker's).
        Returns the snapshot now kept, if any."""
        for jobs in self._inbox.values():
            for i, kept in enumerate(jobs):
                if kept.id != job.id:
                    continue
                lease, held = job.lease, kept.lease
                if job.status is JobStatus.RUNNING and lease and held and lease.token == held.token:
                    jobs[i] = job
                    return job
                del jobs[i]
                return None
        return None

    @property
    def keeping(self) -> bool:
        """Whether jobs are kept for workers (cheap: asked on every event)."""
        return bool(self._inbox)

    def take(self, worker_id: str) -> list[Job]:
        """The jobs handed to ``worker_id`` and not taken yet (now taken)."""
        if not self._inbox:
            return []
        return self._inbox.pop(worker_id, [])

    def forget(self, worker_id: str | None = None) -> tuple[list[str], list[Job]]:
        """Drop one worker (or all): the members to take off Redis, its jobs not taken."""
        if worker_id is not None:
            self._room.pop(worker_id, None)
            if self._parked.pop(worker_id, None) is None:
                return [], self._inbox.pop(worker_id, [])
            return [self.member(worker_id)], self._inbox.pop(worker_id, [])
        members = [self.member(w) for w in self._parked]
        jobs = [job for jobs in self._inbox.values() for job in jobs]
        self._parked.clear()
        self._room.clear()
        self._inbox.clear()
        return members, jobs
