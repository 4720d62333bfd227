"""A worker that claims again a job it still runs (its own lease ran out meanwhile).

Found by the chaos tests (tests/chaos/test_pg_restart.py): during a PostgreSQL restart a
worker's renewals waited out the outage, its lease expired, the janitor requeued the
job, and the same worker claimed it again while the first run was still unwinding. The
worker kept its runs in a dict keyed by job id, so the stale run's cleanup removed the
new run's entry: the new run lost its heartbeats, and its own cleanup then raised
``KeyError``, which tore down the worker (the whole ``asyncjobs worker`` process).

Now the new claim stops the stale run at once (its lease is gone: the store handed the
job out again), and a run's cleanup only removes its own entry.
"""

from __future__ import annotations

from typing import Any

import anyio

from asyncjobs import Janitor, JanitorConfig, JobContext, JobStatus, Queue, WorkerConfig
from asyncjobs.testing import FakeClock


async def test_a_job_claimed_again_by_the_worker_still_running_it_ends_once() -> None:
    clock = FakeClock()
    queue = Queue(
        concurrency=2,
        # No heartbeat within the test: the fake clock alone decides when the lease ends.
        worker=WorkerConfig(lease=1.0, heartbeat=3600, idle_wait=0.05),
        janitor=JanitorConfig(enabled=False),
        clock=clock,
    )
    started = {1: anyio.Event(), 2: anyio.Event()}
    release = {1: anyio.Event(), 2: anyio.Event()}
    ended: dict[int, str] = {}

    @queue.job_type("slow", max_attempts=3)
    async def slow(ctx: JobContext, params: dict[str, Any]) -> int:
        attempt = ctx.attempt
        started[attempt].set()
        try:
            await release[attempt].wait()
        except anyio.get_cancelled_exc_class():
            ended[attempt] = "cancelled"
            raise
        ended[attempt] = "returned"
        return attempt

    async with queue:
        job = await queue.submit("slow")
        with anyio.fail_after(10):
            await started[1].wait()
        clock.advance(2)  # attempt 1's lease runs out while its handler still runs
        report = await Janitor(queue.store, JanitorConfig(), clock).tick()
        assert report.requeued == 1
        with anyio.fail_after(10):
            await started[2].wait()  # the same worker claimed it again
            while 1 not in ended:
                await anyio.sleep(0.01)
        # The stale run was stopped, never left to finish under a lease it lost.
        assert ended[1] == "cancelled"
        assert queue.running_count() == 1
        release[1].set()
        release[2].set()
        with anyio.fail_after(10):
            done = await queue.wait(job.id)
        with anyio.fail_after(10):
            while queue.running_count():
                await anyio.sleep(0.01)
    # Closing the queue raised nothing: the worker survived.
    assert done.status is JobStatus.COMPLETED
    assert (done.result, done.attempts) == (2, 2)
    assert ended == {1: "cancelled", 2: "returned"}
