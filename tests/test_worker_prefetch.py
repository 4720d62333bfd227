"""Claiming ahead of the free slots (WorkerConfig.prefetch): only while the queue is deep
and jobs are short, never past ``concurrency + prefetch``, and given back at a stop."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel

from asyncjobs import JanitorConfig, JobContext, JobStatus, MemoryStore, Queue, WorkerConfig

QUIET = JanitorConfig(interval=0.05)


class ClaimLog:
    """Wraps a store's claim: the limit of every claim and what each one returned."""

    def __init__(self, store: MemoryStore) -> None:
        self.limits: list[int] = []
        self.taken: list[int] = []
        self._claim = store.claim
        store.claim = self  # type: ignore[method-assign]

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.limits.append(kwargs["limit"])
        jobs = await self._claim(*args, **kwargs)
        self.taken.append(len(jobs))
        return jobs


async def _drain(queue: Queue, n: int, *, type_: str = "noop") -> None:
    async with queue:
        jobs = await queue.submit_many([{"type": type_} for _ in range(n)])
        for job in jobs:
            assert (await queue.wait(job.id, timeout=20)).status is JobStatus.COMPLETED


async def test_a_deep_queue_of_short_jobs_is_claimed_ahead_in_batches() -> None:
    store = MemoryStore()
    log = ClaimLog(store)
    queue = Queue(store, concurrency=4, janitor=QUIET)
    running = peak = 0

    @queue.job_type("noop")
    async def noop(ctx: JobContext, params: dict[str, Any]) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await anyio.lowlevel.checkpoint()
        running -= 1

    await _drain(queue, 300)
    # Up to concurrency + prefetch (= concurrency by default), asked for while slots are
    # busy: how many are held at that moment depends on how the slots interleave.
    assert 4 < max(log.limits) <= 8
    assert peak <= 4  # handlers never run past the slots
    ahead = [n for n in log.taken if n > 4]
    assert ahead  # some claims took more than the slots
    # Claims ahead wait for half the prefetch to be used: at least 2 jobs per claim then.
    assert len(log.taken) < 300 / 2


async def test_long_jobs_are_never_claimed_ahead() -> None:
    store = MemoryStore()
    log = ClaimLog(store)
    queue = Queue(store, concurrency=2, janitor=QUIET)

    @queue.job_type("slow")
    async def slow(ctx: JobContext, params: dict[str, Any]) -> None:
        await anyio.sleep(0.1)  # over PREFETCH_BELOW

    await _drain(queue, 8, type_="slow")
    assert max(log.limits) <= 2


async def test_prefetch_zero_claims_only_free_slots() -> None:
    store = MemoryStore()
    log = ClaimLog(store)
    queue = Queue(store, worker=WorkerConfig(concurrency=3, prefetch=0), janitor=QUIET)

    @queue.job_type("noop")
    async def noop(ctx: JobContext, params: dict[str, Any]) -> None:
        return None

    await _drain(queue, 100)
    assert max(log.limits) <= 3


async def test_a_stop_gives_jobs_claimed_ahead_back_at_once() -> None:
    store = MemoryStore()
    queue = Queue(
        store, worker=WorkerConfig(concurrency=1, prefetch=3, shutdown_grace=5), janitor=QUIET
    )
    release = anyio.Event()
    ran: list[str] = []

    @queue.job_type("noop")
    async def noop(ctx: JobContext, params: dict[str, Any]) -> None:
        ran.append(ctx.job_id)

    @queue.job_type("gate")
    async def gate(ctx: JobContext, params: dict[str, Any]) -> None:
        ran.append(ctx.job_id)
        await release.wait()

    async with queue:
        # Short jobs first, so that the worker learns they are short and the queue deep.
        warm = await queue.submit_many([{"type": "noop"} for _ in range(20)])
        for job in warm:
            await queue.wait(job.id, timeout=10)
        # One atomic batch: the gate (higher priority) is claimed first, the rest behind.
        first, *rest = await queue.submit_many(
            [{"type": "gate", "priority": 5}] + [{"type": "noop"} for _ in range(10)]
        )
        with anyio.fail_after(10):
            while not ran or ran[-1] != first.id:
                await anyio.sleep(0.01)
            # The worker holds the gate job and claims ahead behind it.
            while len((await queue.list(status="running")).jobs) < 2:
                await anyio.sleep(0.01)
        held = {j.id for j in (await queue.list(status="running")).jobs} - {first.id}
        assert held <= {j.id for j in rest}
        queue.worker.stop()  # type: ignore[union-attr]
        with anyio.fail_after(5):
            # Given back before the grace is over, while the gate job still runs.
            while [i for i in held if store._jobs[i].status is JobStatus.RUNNING]:
                await anyio.sleep(0.01)
        for job_id in held:
            back = await store.get(job_id)
            assert back.status is JobStatus.QUEUED
            assert back.attempts == 0  # the unstarted attempt was given back
            assert job_id not in ran
        release.set()
    assert (await store.get(first.id)).status is JobStatus.COMPLETED
