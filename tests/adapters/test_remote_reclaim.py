"""A RemoteWorker that claims again a job it still runs (its lease ran out meanwhile).

The same bug as tests/test_worker_reclaim.py, in the remote worker: during an outage a
lease runs out, the server requeues the job and the same worker claims it again while
the first run is still unwinding. The worker kept its runs keyed by job id, so the
stale run's cleanup (``del self._running[job.id]``) removed the new run's entry, and the
new run's own cleanup then raised ``KeyError``, which took down ``RemoteWorker.run``.
"""

from __future__ import annotations

from typing import Any

import anyio
from asyncjobs.adapters.asgi import JobsApp

from asyncjobs import Janitor, JanitorConfig, JobContext, JobStatus, Queue
from asyncjobs.remote import RemoteWorker, RemoteWorkerConfig
from asyncjobs.testing import FakeClock

from .conftest import Serve
from .support import opened


def _queue(
    started: dict[int, anyio.Event],
    release: dict[int, anyio.Event],
    ended: dict[int, str],
    **options: Any,
) -> Queue:
    queue = Queue("memory://", **options)

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

    return queue


async def test_a_job_claimed_again_by_the_remote_worker_still_running_it_ends_once(
    serve: Serve,
) -> None:
    clock = FakeClock()
    started = {1: anyio.Event(), 2: anyio.Event()}
    release = {1: anyio.Event(), 2: anyio.Event()}
    ended: dict[int, str] = {}
    server = _queue(
        started, release, ended, concurrency=0, janitor=JanitorConfig(enabled=False), clock=clock
    )
    async with opened(server) as server_queue:
        url = await serve(JobsApp(server_queue))
        worker = RemoteWorker(
            url,
            _queue(started, release, ended).registry,
            # No heartbeat within the test: the fake clock alone decides when the lease ends.
            config=RemoteWorkerConfig(concurrency=2, lease=1.0, heartbeat=3600, poll=0.2),
        )
        failure: list[BaseException] = []

        async def run() -> None:
            try:
                await worker.run()
            except BaseException as exc:  # what took the worker down, for the assert
                failure.append(exc)
                raise

        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            job = await server_queue.submit("slow")
            with anyio.fail_after(10):
                await started[1].wait()
            clock.advance(2)  # attempt 1's lease runs out while its handler still runs
            report = await Janitor(server_queue.store, JanitorConfig(), clock).tick()
            assert report.requeued == 1
            with anyio.fail_after(10):
                await started[2].wait()  # the same worker claimed it again
                while 1 not in ended:
                    await anyio.sleep(0.01)
            # The stale run was stopped, never left to finish under a lease it lost.
            assert ended[1] == "cancelled"
            assert worker.running_count == 1
            release[1].set()
            release[2].set()
            with anyio.fail_after(10):
                done = await server_queue.wait(job.id)
                while worker.running_count:
                    await anyio.sleep(0.01)
            assert not failure
            worker.stop()
    assert not failure
    assert done.status is JobStatus.COMPLETED
    assert (done.result, done.attempts) == (2, 2)
    assert ended == {1: "cancelled", 2: "returned"}
