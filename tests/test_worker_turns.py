"""A slot gives its turn to the next job when its attempt ends, before its finish is
stored, on stores whose finish waits for a round trip; handlers never run past
``concurrency``, and every end is stored before the queue closes."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import anyio

from asyncjobs import JanitorConfig, JobContext, JobStatus, MemoryStore, Queue, WorkerConfig
from asyncjobs.job import Job
from asyncjobs.stores.protocol import Outcome

QUIET = JanitorConfig(interval=0.05)


class SlowFinishStore(MemoryStore):  # a test-only subclass of a @final class
    """A store whose finish takes a round trip's time, as a server-backed store's does."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.finishing = 0

    async def finish(self, job_id: str, token: str, outcome: Outcome, *, now: datetime) -> Job:
        self.finishing += 1
        try:
            await anyio.sleep(self.delay)
            return await super().finish(job_id, token, outcome, now=now)
        finally:
            self.finishing -= 1


async def test_the_next_job_starts_while_the_previous_end_is_being_stored() -> None:
    store = SlowFinishStore(delay=0.05)
    queue = Queue(store, worker=WorkerConfig(concurrency=2, prefetch=0), janitor=QUIET)
    handlers = peak_handlers = peak_held = 0

    @queue.job_type("work")
    async def work(ctx: JobContext, params: dict[str, Any]) -> None:
        nonlocal handlers, peak_handlers, peak_held
        handlers += 1
        peak_handlers = max(peak_handlers, handlers)
        peak_held = max(peak_held, handlers + store.finishing)
        await anyio.sleep(0.01)
        handlers -= 1

    async with queue:
        jobs = await queue.submit_many([{"type": "work"} for _ in range(12)])
        for job in jobs:
            assert (await queue.wait(job.id, timeout=20)).status is JobStatus.COMPLETED
    assert peak_handlers == 2  # never more handlers than turns
    assert peak_held > 2  # a handler ran while other jobs' ends were being stored


async def test_ends_in_flight_are_stored_before_the_queue_closes() -> None:
    store = SlowFinishStore(delay=0.1)
    queue = Queue(store, worker=WorkerConfig(concurrency=2), janitor=QUIET)
    started = 0

    @queue.job_type("work")
    async def work(ctx: JobContext, params: dict[str, Any]) -> None:
        nonlocal started
        started += 1

    async with queue:
        jobs = await queue.submit_many([{"type": "work"} for _ in range(4)])
        with anyio.fail_after(10):
            while started < 4 or not store.finishing:
                await anyio.sleep(0.005)
    # Closed while ends were in flight: each was stored, none left running.
    for job in jobs:
        assert (await store.get(job.id)).status is JobStatus.COMPLETED


def _slot_tasks() -> int:
    return sum(t.get_name().endswith("Slots._slot") for t in asyncio.all_tasks())


async def test_the_memory_store_runs_one_slot_task_per_turn() -> None:
    async with Queue(concurrency=3, janitor=QUIET):
        assert _slot_tasks() == 3
    async with Queue(SlowFinishStore(delay=0.0), concurrency=3, janitor=QUIET):
        assert _slot_tasks() == 6
