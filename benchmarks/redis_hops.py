"""Where the Redis store's submit-to-observed-end time goes, hop by hop (a diagnostic).

    BENCH_REDIS_URL=redis://127.0.0.1:6379/9 python benchmarks/redis_hops.py 300

The latency case of ``redis_compare.py`` (an idle worker with 10 slots on a store of its
own, in the submitter's process; jobs submitted 10 ms apart, each awaited with
``queue.wait``), with each hop stamped by wrapping the stores' internals: the submit's
reply, the worker's tail handing on ``job_created``, the claim sent and its reply, the
handler's start, the finish sent and its reply, the observer's tail handing on
``job_completed``, ``wait`` returning (a job handed to the parked worker: its tail
hands on ``job_created`` and then ``job_started``, and the claim makes no round trip).
Prints each hop's p50 after the submit call.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
import uuid
from typing import Any

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/9")
DROP = "for _, k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', k) end"
T: dict[str, dict[str, float]] = {}


def mark(job_id: str, name: str, at: float | None = None) -> None:
    T.setdefault(job_id, {})[name] = time.perf_counter() if at is None else at


async def main(n: int) -> None:
    from asyncjobs import JanitorConfig, JobContext, Queue
    from asyncjobs.job import EventType

    prefix = f"hops_{uuid.uuid4().hex[:8]}"

    def make(concurrency: int) -> Any:
        queue = Queue(
            f"{URL}?prefix={prefix}", concurrency=concurrency, janitor=JanitorConfig(enabled=False)
        )

        @queue.job_type("stamp", max_attempts=1)
        async def stamp(ctx: JobContext, params: dict[str, Any]) -> None:
            mark(ctx.job_id, "4 handler starts")

        return queue

    submitter, worker = make(0), make(10)
    async with submitter, worker:
        ws, ss = worker.store, submitter.store
        worker_deliver, observer_deliver = ws._on_remote, ss._on_remote

        def on_worker(event: Any, outbox: bool) -> None:
            if event.type is EventType.CREATED:
                mark(event.job.id, "2 worker has job_created")
            worker_deliver(event, outbox)

        def on_observer(event: Any, outbox: bool) -> None:
            if event.type is EventType.COMPLETED:
                mark(event.job.id, "6 observer has job_completed")
            observer_deliver(event, outbox)

        ws._tail._deliver, ss._tail._deliver = on_worker, on_observer
        worker_handed = getattr(ws._tail, "_handed", None)
        if worker_handed is not None:  # a store that hands jobs to parked workers

            def on_handed(event: Any, member: bytes) -> None:
                if event.type is EventType.CREATED:
                    mark(event.job.id, "2 worker has job_created")
                else:
                    mark(event.job.id, "2b worker has job_started (handed)")
                worker_handed(event, member)

            ws._tail._handed = on_handed
        claim, commit = ws.claim, ws._commit

        async def timed_claim(*args: Any, **kwargs: Any) -> Any:
            sent = time.perf_counter()
            jobs = await claim(*args, **kwargs)
            for job in jobs:
                mark(job.id, "3a claim sent", sent)
                mark(job.id, "3b claim reply")
            return jobs

        async def timed_commit(changes: Any) -> Any:
            sent = time.perf_counter()
            replies = await commit(changes)
            for change in changes:
                mark(change[0], "5a finish sent", sent)
                mark(change[0], "5b finish reply")
            return replies

        ws.claim, ws._commit, ws._finishes._send = timed_claim, timed_commit, timed_commit
        await asyncio.sleep(0.5)  # the worker reaches its idle wait

        async def one() -> str:
            start = time.perf_counter()
            job = await submitter.submit("stamp")
            mark(job.id, "0 submit", start)
            mark(job.id, "1 submit reply")
            await submitter.wait(job.id, timeout=30)
            mark(job.id, "7 wait returns")
            return str(job.id)

        tasks = []
        for _ in range(20 + n):
            tasks.append(asyncio.create_task(one()))
            await asyncio.sleep(0.010)
        ids = (await asyncio.gather(*tasks))[20:]
        await ss._redis().eval(DROP, 0, "{" + prefix + "}:*")
    for name in sorted({k for i in ids for k in T[i]}):
        values = [1000 * (T[i][name] - T[i]["0 submit"]) for i in ids if name in T[i]]
        print(f"{name:30} p50 {statistics.median(values):6.2f} ms  (n={len(values)})")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 300))
