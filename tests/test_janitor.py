"""Janitor.tick driven by a FakeClock: promotion, lease recovery, retention."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from asyncjobs import (
    EventType,
    Janitor,
    JanitorConfig,
    JanitorReport,
    Job,
    JobEvent,
    JobNotFound,
    JobStatus,
    MemoryStore,
    Outcome,
    Queue,
)
from asyncjobs._ulid import new_ulid
from asyncjobs.registry import DEFAULT_RETENTION
from asyncjobs.testing import DEFAULT_START, FakeClock

# -- FakeClock ----------------------------------------------------------------------------


def test_fake_clock_stands_still_until_advanced() -> None:
    clock = FakeClock()
    assert clock() == DEFAULT_START == clock()
    assert clock.advance(1.5) == DEFAULT_START + timedelta(seconds=1.5)
    clock.advance(timedelta(minutes=1))
    assert clock() == DEFAULT_START + timedelta(seconds=61.5)
    assert clock().tzinfo is not None
    assert "FakeClock(" in repr(clock)


def test_fake_clock_rejects_naive_starts_and_going_back() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        FakeClock(datetime(2026, 1, 1))  # naive on purpose
    clock = FakeClock(datetime(2026, 1, 1, 2, tzinfo=timezone(timedelta(hours=2))))
    assert clock() == datetime(2026, 1, 1, tzinfo=timezone.utc)
    with pytest.raises(ValueError, match="forward"):
        clock.advance(-1)


# -- Janitor.tick -----------------------------------------------------------------------


class Setup:
    def __init__(self) -> None:
        self.clock = FakeClock()
        self.store = MemoryStore()
        self.janitor = Janitor(self.store, JanitorConfig(), self.clock)
        self.events: list[JobEvent] = []
        self.store.add_listener(self.events.append)

    async def add(
        self, *, delay: float = 0.0, max_attempts: int = 3, retention: float | None = 3600.0
    ) -> Job:
        now = self.clock()
        job = Job(
            id=new_ulid(),
            type="t",
            params={},
            status=JobStatus.SCHEDULED if delay > 0 else JobStatus.QUEUED,
            created_at=now,
            run_at=now + timedelta(seconds=delay),
            max_attempts=max_attempts,
            retention=retention,
        )
        stored, _ = await self.store.add(job)
        return stored

    async def claim(self, job: Job, lease: float = 30.0) -> Job:
        [claimed] = await self.store.claim(
            "worker", types=["t"], limit=1, lease=lease, now=self.clock()
        )
        assert claimed.id == job.id
        return claimed

    async def finish(self, job: Job, status: JobStatus = JobStatus.COMPLETED) -> Job:
        running = await self.claim(job)
        assert running.lease is not None
        return await self.store.finish(
            job.id, running.lease.token, Outcome(status), now=self.clock()
        )

    async def status(self, job: Job) -> JobStatus:
        return (await self.store.get(job.id)).status


@pytest.fixture
def env() -> Setup:
    return Setup()


async def test_promotes_due_scheduled_jobs_and_not_early_ones(env: Setup) -> None:
    soon = await env.add(delay=10)
    later = await env.add(delay=60)
    assert await env.janitor.tick() == JanitorReport()

    env.clock.advance(9.999)
    assert (await env.janitor.tick()).promoted == 0
    assert await env.status(soon) is JobStatus.SCHEDULED

    env.clock.advance(0.001)  # run_at <= now: due exactly on time
    assert await env.janitor.tick() == JanitorReport(promoted=1)
    assert await env.status(soon) is JobStatus.QUEUED
    assert await env.status(later) is JobStatus.SCHEDULED
    assert env.events[-1].type is EventType.QUEUED

    env.clock.advance(3600)
    assert (await env.janitor.tick()).promoted == 1
    assert await env.status(later) is JobStatus.QUEUED
    assert (await env.janitor.tick()).promoted == 0  # nothing twice


async def test_requeues_a_job_whose_lease_expired(env: Setup) -> None:
    job = await env.add(max_attempts=2)
    await env.claim(job, lease=30)
    env.clock.advance(29)
    assert (await env.janitor.tick()).requeued == 0
    assert await env.status(job) is JobStatus.RUNNING  # the lease still holds

    env.clock.advance(1)
    assert (await env.janitor.tick()).requeued == 1
    requeued = await env.store.get(job.id)
    assert requeued.status is JobStatus.QUEUED
    assert requeued.lease is None
    assert requeued.error is not None
    assert env.events[-1].type is EventType.RETRYING


async def test_fails_an_expired_job_with_no_attempts_left(env: Setup) -> None:
    job = await env.add(max_attempts=1)
    await env.claim(job, lease=5)
    env.clock.advance(5)
    assert (await env.janitor.tick()).requeued == 1
    failed = await env.store.get(job.id)
    assert failed.status is JobStatus.FAILED
    assert failed.error is not None
    assert failed.error.type == "LeaseExpired"
    assert env.events[-1].type is EventType.FAILED


async def test_purges_only_finished_jobs_past_their_retention(env: Setup) -> None:
    done = await env.finish(await env.add(retention=100))
    failed = await env.finish(await env.add(retention=100), JobStatus.FAILED)
    kept_longer = await env.finish(await env.add(retention=1000))
    forever = await env.finish(await env.add(retention=None))
    running = await env.claim(await env.add(retention=100), lease=10_000)
    waiting = await env.add(retention=100)
    scheduled = await env.add(delay=10_000, retention=100)

    env.clock.advance(99)
    assert (await env.janitor.tick()).purged == 0

    env.clock.advance(1)  # finished_at + retention <= now
    report = await env.janitor.tick()
    assert report.purged == 2
    for gone in (done, failed):
        with pytest.raises(JobNotFound):
            await env.store.get(gone.id)
    deleted = [e.job.id for e in env.events if e.type is EventType.DELETED]
    assert sorted(deleted) == sorted([done.id, failed.id])
    for kept in (kept_longer, forever, waiting, scheduled, running):
        assert (await env.store.get(kept.id)).id == kept.id

    env.clock.advance(900)
    assert (await env.janitor.tick()).purged == 1  # kept_longer's turn
    with pytest.raises(JobNotFound):
        await env.store.get(kept_longer.id)
    assert (await env.store.get(forever.id)).status is JobStatus.COMPLETED


async def test_tick_without_purge_keeps_expired_jobs(env: Setup) -> None:
    job = await env.finish(await env.add(retention=1))
    env.clock.advance(10)
    assert (await env.janitor.tick(purge=False)).purged == 0
    assert (await env.store.get(job.id)).id == job.id


async def test_purge_batch_bounds_one_round() -> None:
    env = Setup()
    env.janitor = Janitor(env.store, JanitorConfig(purge_batch=2), env.clock)
    for _ in range(5):
        await env.finish(await env.add(retention=1))
    env.clock.advance(1)
    assert [(await env.janitor.tick()).purged for _ in range(4)] == [2, 2, 1, 0]


def test_janitor_config_validates() -> None:
    with pytest.raises(ValueError, match="interval"):
        JanitorConfig(interval=0)
    with pytest.raises(ValueError, match="purge_batch"):
        JanitorConfig(purge_batch=0)


# -- default retention through a Queue ----------------------------------------------------


async def test_the_default_retention_is_24_hours() -> None:
    assert DEFAULT_RETENTION == 24 * 3600
    clock = FakeClock()
    queue = Queue(concurrency=0, clock=clock, janitor=JanitorConfig(enabled=False))

    @queue.job_type("t")
    async def handler(ctx: Any, params: dict[str, Any]) -> None: ...

    async with queue:
        job = await queue.submit("t")
        assert job.retention == DEFAULT_RETENTION
        cancelled = await queue.cancel(job.id)  # finished now
        janitor = Janitor(queue.store, JanitorConfig(), clock)

        clock.advance(timedelta(hours=24) - timedelta(seconds=1))
        assert (await janitor.tick()).purged == 0
        assert await queue.get(job.id) == cancelled

        clock.advance(1)
        assert (await janitor.tick()).purged == 1
        with pytest.raises(JobNotFound):
            await queue.get(job.id)


async def test_a_delayed_submission_is_promoted_by_the_janitor() -> None:
    clock = FakeClock()
    queue = Queue(concurrency=0, clock=clock, janitor=JanitorConfig(enabled=False))

    @queue.job_type("t")
    async def handler(ctx: Any, params: dict[str, Any]) -> None: ...

    async with queue:
        job = await queue.submit("t", delay=60)
        assert job.status is JobStatus.SCHEDULED
        janitor = Janitor(queue.store, JanitorConfig(), clock)
        assert (await janitor.tick()).promoted == 0
        clock.advance(60)
        assert (await janitor.tick()).promoted == 1
        assert (await queue.get(job.id)).status is JobStatus.QUEUED


async def test_purges_finished_webhook_deliveries_after_their_retention(env: Setup) -> None:
    from asyncjobs.webhooks import Webhook, WebhookConfig

    hook = await env.store.add_webhook(Webhook(url="https://h.example.com/"), now=env.clock())
    for _ in range(2):
        await env.finish(await env.add(retention=None))  # the jobs themselves are kept
    ok, pending = [
        d for d, _ in await env.store.claim_deliveries(now=env.clock(), limit=5, lease=9)
    ]
    await env.store.finish_delivery(ok.id, now=env.clock(), ok=True)
    await env.store.finish_delivery(pending.id, now=env.clock(), ok=False, retry_at=env.clock())
    janitor = Janitor(
        env.store, JanitorConfig(), env.clock, delivery_retention=WebhookConfig().retention
    )
    env.clock.advance(timedelta(days=6))
    assert (await janitor.tick()).deliveries_purged == 0
    env.clock.advance(timedelta(days=1, seconds=1))  # 7 days: the default retention
    assert await janitor.tick() == JanitorReport(deliveries_purged=1)
    assert [d.id for d in await env.store.list_deliveries(hook.id)] == [pending.id]
    # A queue's janitor takes the retention from its WebhookConfig.
    queue = Queue("memory://", concurrency=0, webhook_config=WebhookConfig(retention=60))
    async with queue:
        assert queue.janitor is not None and queue.janitor.delivery_retention == 60
