"""MemoryStore: the reference Store, in dicts and heaps, inside one process.

Every method runs without awaiting, so each is atomic on the event loop. Jobs are lost
when the process exits: use it for tests, demos and embedded runners that can afford
that; use SQLite or PostgreSQL for anything that must survive a restart.
"""

from __future__ import annotations

import bisect
import builtins
import heapq
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import final

import attrs

from ...errors import JobNotFound, QueueFull
from ...job import EventType, Job, JobStatus, make_event
from ...jsonrules import check_storable
from ...webhooks.model import Delivery, DeliveryStatus, Webhook, WebhookNotFound, message_id
from ..listeners import LocalNotifier
from ..protocol import EventListener, Outcome, Page, Stats, WorkerInfo
from ..steps import (
    cancel_step,
    check_delete,
    check_purge_statuses,
    check_retry_statuses,
    claim_room,
    claim_step,
    expire_step,
    fill_page,
    finish_step,
    new_token,
    progress_step,
    promote_step,
    purge_matches,
    renew_step,
    retry_step,
    stats_from_counts,
)
from .index import QueuedIndex

__all__ = ["MemoryStore"]

# Enum members the hot path compares, as module constants: on Python 3.11 reading a
# member off its class goes through EnumType.__getattr__ (about 100 ns each time).
_RUNNING, _QUEUED, _SCHEDULED = JobStatus.RUNNING, JobStatus.QUEUED, JobStatus.SCHEDULED
_STARTED = EventType.STARTED
_ENDED = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})


@final
class MemoryStore:
    """An in-process store: fast, and lost when the process exits."""

    url = "memory://"

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._order: builtins.list[str] = []  # every id, sorted, for cursor pagination
        self._queued = QueuedIndex()  # what a claim takes next
        self._scheduled: builtins.list[tuple[datetime, str]] = []
        self._running: set[str] = set()
        # Jobs per type and status. Plain dicts (not a Counter keyed by (type, status)):
        # each job moves twice, and a tuple key plus a dict subclass cost 4x as much.
        self._tally: dict[str, dict[JobStatus, int]] = {}
        # (owner, key) -> job id: a key is unique per owner, never matched across owners.
        self._idempotency: dict[tuple[str | None, str], str] = {}
        self._notifier = LocalNotifier()
        self._workers: dict[str, WorkerInfo] = {}
        self._seq = 0
        self._webhooks: dict[str, Webhook] = {}
        self._deliveries: dict[str, Delivery] = {}  # the outbox, oldest first

    # -- lifecycle ---------------------------------------------------------------

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    # -- internal bookkeeping ----------------------------------------------------

    def _counts(self, type_: str) -> dict[JobStatus, int]:
        tally = self._tally.get(type_)
        if tally is None:
            tally = self._tally[type_] = dict.fromkeys(JobStatus, 0)
        return tally

    def _put(self, old: Job | None, new: Job) -> None:
        status = new.status
        if old is not None:
            if old.status is status:  # a progress update or a cancel request
                self._jobs[new.id] = new
                return
            tally = self._tally[old.type]  # a job never changes its type
            tally[old.status] -= 1
            # Only a status change leaves the running set: a progress update or a cancel
            # request keeps the job running, and its lease must still be recoverable.
            if old.status is _RUNNING:
                self._running.discard(old.id)
        else:
            tally = self._counts(new.type)
        tally[status] += 1
        self._jobs[new.id] = new
        if status is _QUEUED:
            self._queued.push(new)
        elif status is _RUNNING:
            self._running.add(new.id)
        elif status is _SCHEDULED:
            heapq.heappush(self._scheduled, (new.run_at, new.id))
        elif self._webhooks:  # a terminal status, reached just now
            self._outbox(new)

    def _remove(self, job: Job) -> None:
        del self._jobs[job.id]
        self._tally[job.type][job.status] -= 1
        index = bisect.bisect_left(self._order, job.id)
        if index < len(self._order) and self._order[index] == job.id:
            del self._order[index]
        key = (job.owner, job.idempotency_key) if job.idempotency_key is not None else None
        if key is not None and self._idempotency.get(key) == job.id:
            del self._idempotency[key]

    def _emit(self, type: EventType, job: Job, now: datetime) -> None:
        self._seq += 1
        self._notifier.emit_one(make_event(type, self._seq, now, job))

    def _waiting(self) -> int:
        return sum(t[_QUEUED] + t[_SCHEDULED] for t in self._tally.values())

    def _notify_work(self) -> None:
        self._notifier.wake()

    def _get(self, job_id: str) -> Job:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise JobNotFound(job_id) from None

    # -- Store protocol ----------------------------------------------------------

    async def add(self, job: Job, *, max_queued: int | None = None) -> tuple[Job, bool]:
        check_storable(job)  # refuse what a durable store could not encode
        if job.idempotency_key is not None:
            existing = self._idempotency.get((job.owner, job.idempotency_key))
            if existing is not None:
                return self._jobs[existing], False
        if max_queued is not None and self._waiting() >= max_queued:
            raise QueueFull(max_queued)
        if job.id in self._jobs:
            raise ValueError(f"a job with id {job.id} exists already")
        self._put(None, job)
        bisect.insort(self._order, job.id)
        if job.idempotency_key is not None:
            self._idempotency[(job.owner, job.idempotency_key)] = job.id
        self._emit(EventType.CREATED, job, job.created_at)
        if job.status is JobStatus.QUEUED:
            self._notify_work()
        return job, True

    async def get(self, job_id: str) -> Job:
        return self._get(job_id)

    async def list(
        self,
        *,
        statuses: Collection[JobStatus] | None = None,
        types: Collection[str] | None = None,
        owner: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> Page:
        end = len(self._order) if cursor is None else bisect.bisect_left(self._order, cursor)
        wanted_status = None if statuses is None else frozenset(JobStatus(s) for s in statuses)
        wanted_type = None if types is None else frozenset(types)
        found: builtins.list[Job] = []
        newest_first = (self._jobs[self._order[index]] for index in range(end - 1, -1, -1))
        page = fill_page(
            found, newest_first, statuses=wanted_status, types=wanted_type, owner=owner, limit=limit
        )
        return page or Page(found, None)

    async def stats(self) -> Stats:
        return stats_from_counts((t, s, n) for t, c in self._tally.items() for s, n in c.items())

    async def claim(
        self,
        worker_id: str,
        *,
        types: Collection[str],
        limit: int,
        lease: float,
        now: datetime,
        type_limits: Mapping[str, int] | None = None,
    ) -> builtins.list[Job]:
        claimed: builtins.list[Job] = []
        jobs, tally, pop = self._jobs, self._tally, self._queued.pop
        emit_one = self._notifier.emit_one
        running_now = {t: tally[t][_RUNNING] for t in types if t in tally}
        room = claim_room(types, type_limits, running_now)
        while len(claimed) < limit:
            job_id = pop(types, room, jobs)  # O(T + log n)
            if job_id is None:
                break
            job = jobs[job_id]
            type_ = job.type
            running = claim_step(job, worker_id, new_token(), lease, now)
            # What _put does for queued -> running, inline: twice per batch is the hot path.
            counts = tally[type_]
            counts[_QUEUED] -= 1
            counts[_RUNNING] += 1
            jobs[job_id] = running
            self._running.add(job_id)
            if type_ in room:
                room[type_] -= 1
            claimed.append(running)
            self._seq += 1  # _emit(), inline: once per job
            emit_one(make_event(_STARTED, self._seq, now, running))
        return claimed

    async def renew(self, job_id: str, token: str, *, lease: float, now: datetime) -> Job:
        job = self._get(job_id)
        renewed = renew_step(job, token, lease, now)
        self._jobs[job_id] = renewed
        return renewed

    async def set_progress(
        self, job_id: str, token: str, progress: float, message: str | None, *, now: datetime
    ) -> Job:
        job = self._get(job_id)
        updated = progress_step(job, token, progress, message)
        self._put(job, updated)
        self._emit(EventType.PROGRESS, updated, now)
        return updated

    async def finish(self, job_id: str, token: str, outcome: Outcome, *, now: datetime) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        done, event = finish_step(job, token, outcome, now)
        status = done.status
        if status in _ENDED:  # what _put does for running -> ended, inline: once per job
            tally = self._tally[job.type]
            tally[job.status] -= 1
            tally[status] += 1
            self._running.discard(job_id)
            self._jobs[job_id] = done
            if self._webhooks:
                self._outbox(done)
        else:
            self._put(job, done)
        self._seq += 1  # _emit(), inline: once per job
        # The event, then a wake-up: a slot (and maybe a per-type slot) is free again.
        self._notifier.emit_and_wake(make_event(event, self._seq, now, done))
        return done

    async def request_cancel(self, job_id: str, *, now: datetime) -> Job:
        job = self._get(job_id)
        step = cancel_step(job, now)
        if step is None:
            return job
        cancelled, event = step
        self._put(job, cancelled)
        self._emit(event, cancelled, now)
        return cancelled

    async def delete(self, job_id: str, *, now: datetime) -> Job:
        job = self._get(job_id)
        check_delete(job)
        self._remove(job)
        self._emit(EventType.DELETED, job, now)
        return job

    async def requeue_expired(self, *, now: datetime) -> builtins.list[Job]:
        changed: builtins.list[Job] = []
        for job_id in sorted(self._running):
            job = self._jobs[job_id]
            if job.lease is not None and job.lease.expires_at <= now:
                recovered, event = expire_step(job, now)
                self._put(job, recovered)
                self._emit(event, recovered, now)
                changed.append(recovered)
        if changed:
            self._notify_work()
        return changed

    async def promote_scheduled(self, *, now: datetime) -> builtins.list[Job]:
        promoted: builtins.list[Job] = []
        while self._scheduled and self._scheduled[0][0] <= now:
            run_at, job_id = heapq.heappop(self._scheduled)
            job = self._jobs.get(job_id)
            if job is None or job.status is not JobStatus.SCHEDULED or job.run_at != run_at:
                continue  # stale entry
            queued = promote_step(job)
            self._put(job, queued)
            self._emit(EventType.QUEUED, queued, now)
            promoted.append(queued)
        if promoted:
            self._notify_work()
        return promoted

    async def purge(
        self,
        *,
        now: datetime,
        statuses: Collection[JobStatus] = (
            JobStatus.COMPLETED,
            JobStatus.FAILED,
            JobStatus.CANCELLED,
        ),
        types: Collection[str] | None = None,
        finished_before: datetime | None = None,
        expired: bool = False,
        limit: int | None = None,
    ) -> int:
        chosen = check_purge_statuses(statuses)
        doomed: builtins.list[Job] = []
        for job in self._jobs.values():
            if job.status not in chosen:  # most are not finished: skip the call
                continue
            if not purge_matches(
                job,
                now=now,
                statuses=chosen,
                types=types,
                finished_before=finished_before,
                expired=expired,
            ):
                continue
            doomed.append(job)
            if limit is not None and len(doomed) >= limit:
                break
        for job in doomed:
            self._remove(job)
            self._emit(EventType.DELETED, job, now)
        return len(doomed)

    # -- worker registry -----------------------------------------------------------

    async def register_worker(self, info: WorkerInfo) -> None:
        # Records of dead workers go here (as in the SQL stores): listing only reads.
        beat = info.last_heartbeat
        for worker_id in [w.id for w in self._workers.values() if w.expires_at <= beat]:
            del self._workers[worker_id]
        self._workers[info.id] = info

    async def list_workers(self, *, now: datetime) -> builtins.list[WorkerInfo]:
        alive = (w for w in self._workers.values() if w.expires_at > now)
        return sorted(alive, key=lambda w: w.id)

    async def remove_worker(self, worker_id: str) -> None:
        self._workers.pop(worker_id, None)

    # -- notifier (one process: nothing is ever missed, so it never resyncs) -------

    def add_listener(self, listener: EventListener) -> Callable[[], None]:
        return self._notifier.add_listener(listener)

    def add_resync_listener(self, callback: Callable[[], None]) -> Callable[[], None]:
        return self._notifier.add_resync_listener(callback)

    def work_generation(self) -> int:
        return self._notifier.work_generation()

    async def wait_for_work(self, timeout: float, *, since: int | None = None) -> None:
        await self._notifier.wait_for_work(timeout, since=since)

    # -- operations: batch submit and retry in place -------------------------------

    async def add_many(
        self, jobs: Sequence[Job], *, max_queued: int | None = None
    ) -> builtins.list[tuple[Job, bool]]:
        # Decide everything before changing anything: all or nothing.
        results: builtins.list[tuple[Job, bool]] = []
        keys: dict[tuple[str | None, str], Job] = {}
        ids: set[str] = set()
        for job in jobs:
            check_storable(job)  # refuse what a durable store could not encode
            key = None if job.idempotency_key is None else (job.owner, job.idempotency_key)
            if key is not None:
                existing = self._idempotency.get(key)
                if existing is not None:
                    results.append((self._jobs[existing], False))
                    continue
                if key in keys:
                    results.append((keys[key], False))
                    continue
                keys[key] = job
            if job.id in self._jobs or job.id in ids:
                raise ValueError(f"a job with id {job.id} exists already")
            ids.add(job.id)
            results.append((job, True))
        if max_queued is not None and self._waiting() + len(ids) > max_queued:
            raise QueueFull(max_queued)
        wake = False
        for job, created in results:
            if not created:
                continue
            self._put(None, job)
            bisect.insort(self._order, job.id)
            if job.idempotency_key is not None:
                self._idempotency[(job.owner, job.idempotency_key)] = job.id
            self._emit(EventType.CREATED, job, job.created_at)
            wake = wake or job.status is JobStatus.QUEUED
        if wake:
            self._notify_work()
        return results

    async def retry(self, job_id: str, *, now: datetime) -> Job:
        job = self._get(job_id)
        queued = retry_step(job, now)
        self._put(job, queued)
        self._emit(EventType.RETRYING, queued, now)
        self._notify_work()
        return queued

    async def retry_many(
        self,
        *,
        now: datetime,
        statuses: Collection[JobStatus] = (JobStatus.FAILED,),
        types: Collection[str] | None = None,
        owner: str | None = None,
    ) -> builtins.list[Job]:
        chosen = check_retry_statuses(statuses)
        picked = [
            job
            for job_id in self._order
            if (job := self._jobs[job_id]).status in chosen
            and (types is None or job.type in types)
            and (owner is None or job.owner == owner)
        ]
        retried: builtins.list[Job] = []
        for job in picked:
            queued = retry_step(job, now)
            self._put(job, queued)
            self._emit(EventType.RETRYING, queued, now)
            retried.append(queued)
        if retried:
            self._notify_work()
        return retried

    # -- operations: the webhook outbox --------------------------------------------

    def _outbox(self, job: Job) -> None:
        """Queue a delivery per interested webhook, in the same step as the job's end."""
        event = f"job_{job.status.value}"
        at = job.finished_at or job.run_at
        for hook in self._webhooks.values():
            if event in hook.events:
                delivery_id = message_id(job, hook.id)
                if delivery_id not in self._deliveries:
                    self._deliveries[delivery_id] = Delivery(
                        id=delivery_id, webhook_id=hook.id, event=event, job=job, at=at, next_at=at
                    )

    async def add_webhook(self, hook: Webhook, *, now: datetime) -> Webhook:
        existing = self._webhooks.get(hook.id)
        stored = attrs.evolve(hook, created_at=existing.created_at if existing is not None else now)
        self._webhooks[hook.id] = stored
        return stored

    async def list_webhooks(self) -> builtins.list[Webhook]:
        return list(self._webhooks.values())

    async def delete_webhook(self, webhook_id: str) -> None:
        if self._webhooks.pop(webhook_id, None) is None:
            raise WebhookNotFound(webhook_id)
        for delivery_id in [d.id for d in self._deliveries.values() if d.webhook_id == webhook_id]:
            del self._deliveries[delivery_id]

    async def claim_deliveries(
        self, *, now: datetime, limit: int, lease: float
    ) -> builtins.list[tuple[Delivery, Webhook]]:
        taken: builtins.list[tuple[Delivery, Webhook]] = []
        if not self._deliveries:  # the dispatcher looks after every finished batch
            return taken
        due = sorted(
            (
                d
                for d in self._deliveries.values()
                if d.status == DeliveryStatus.PENDING and d.next_at is not None and d.next_at <= now
            ),
            key=lambda d: (d.next_at, d.id),
        )
        for delivery in due[:limit]:
            hidden = attrs.evolve(delivery, next_at=now + timedelta(seconds=lease))
            self._deliveries[delivery.id] = hidden
            taken.append((hidden, self._webhooks[delivery.webhook_id]))
        return taken

    async def finish_delivery(
        self,
        delivery_id: str,
        *,
        now: datetime,
        ok: bool,
        error: str | None = None,
        retry_at: datetime | None = None,
    ) -> None:
        delivery = self._deliveries.get(delivery_id)
        if delivery is None:
            return
        if ok:
            status, next_at, delivered = DeliveryStatus.DELIVERED, None, now
        elif retry_at is not None:
            status, next_at, delivered = DeliveryStatus.PENDING, retry_at, None
        else:
            status, next_at, delivered = DeliveryStatus.DEAD, None, None
        self._deliveries[delivery_id] = attrs.evolve(
            delivery,
            status=status,
            attempts=delivery.attempts + 1,
            next_at=next_at,
            last_error=None if ok else error,
            delivered_at=delivered,
        )

    async def list_deliveries(
        self, webhook_id: str, *, status: str | None = None, limit: int = 100
    ) -> builtins.list[Delivery]:
        if webhook_id not in self._webhooks:
            raise WebhookNotFound(webhook_id)
        found = [
            d
            for d in reversed(self._deliveries.values())
            if d.webhook_id == webhook_id and (status is None or d.status == status)
        ]
        return found[:limit]

    async def purge_deliveries(self, *, before: datetime, limit: int) -> int:
        done = [
            d.id
            for d in self._deliveries.values()
            if d.status != DeliveryStatus.PENDING and (d.delivered_at or d.at) < before
        ][:limit]
        for delivery_id in done:
            del self._deliveries[delivery_id]
        return len(done)
