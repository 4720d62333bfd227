"""SAQ on Redis or PostgreSQL on the shared workload shape: enqueue rate and drain.

    python benchmarks/peer_saq.py enqueue --backend redis --n 10000
    python benchmarks/peer_saq.py drain --backend postgres --n 2000 --concurrency 50

Drain: N jobs enqueued first, then one SAQ ``Worker``; done when its ``after_process``
hook (which runs after SAQ recorded the job's final status) has fired N times.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from _common import (
    REDIS_URL,
    base_parser,
    emit,
    fresh_pg_database,
    latency_summary,
    spaced_latency,
    timed_enqueue,
    unique,
)


async def noop(ctx: dict[str, Any]) -> None:
    return None


STARTS: dict[int, float] = {}


async def stamp(ctx: dict[str, Any], *, i: int) -> None:
    STARTS[i] = time.perf_counter()


async def latency(queue: Any, backend: str, n: int, concurrency: int) -> None:
    from saq import Worker

    worker = Worker(queue, functions=[stamp], concurrency=concurrency, dequeue_timeout=1.0)
    worker.SIGNALS = []
    task = asyncio.create_task(worker.start())
    await asyncio.sleep(0.5)  # let the worker reach its idle wait

    async def one(i: int) -> tuple[float, float | None]:
        t0 = time.perf_counter()
        job = await queue.enqueue("stamp", i=i)
        await job.refresh(until_complete=30)  # SAQ's own wait: pub/sub or LISTEN
        return STARTS[i] - t0, time.perf_counter() - t0

    to_start, to_done = await spaced_latency(n, one)
    await worker.stop()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    emit(
        system="saq",
        backend=backend,
        mode="latency",
        n=n,
        **latency_summary("start", to_start),
        **latency_summary("done", to_done),
    )


@contextlib.asynccontextmanager
async def open_queue(backend: str) -> AsyncIterator[Any]:
    from saq import Queue

    if backend == "redis":
        queue = Queue.from_url(REDIS_URL, name=unique("saq"))
        await queue.connect()
        try:
            yield queue
        finally:
            redis = queue.redis
            keys = [k async for k in redis.scan_iter(match=f"saq:{queue.name}*")]
            for i in range(0, len(keys), 1000):
                await redis.delete(*keys[i : i + 1000])
            await queue.disconnect()
    else:
        async with fresh_pg_database() as url:
            queue = Queue.from_url(url, name="bench")
            await queue.connect()
            try:
                yield queue
            finally:
                await queue.disconnect()


async def main_async(mode: str, backend: str, n: int, concurrency: int) -> None:
    from saq import Worker

    async with open_queue(backend) as queue:
        if mode == "latency":
            await latency(queue, backend, n, concurrency)
            return
        if mode == "enqueue":
            await timed_enqueue("saq", backend, n, lambda: queue.enqueue("noop"))
            return
        for i in range(0, n, 100):
            await asyncio.gather(*(queue.enqueue("noop") for _ in range(min(100, n - i))))
        done = 0
        finished = asyncio.Event()

        async def after(ctx: dict[str, Any]) -> None:
            nonlocal done
            done += 1
            if done >= n:
                finished.set()

        worker = Worker(
            queue,
            functions=[noop],
            concurrency=concurrency,
            after_process=after,
            dequeue_timeout=1.0,
        )
        worker.SIGNALS = []  # the benchmark owns signals
        start = time.perf_counter()
        task = asyncio.create_task(worker.start())
        await finished.wait()
        elapsed = time.perf_counter() - start
        await worker.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        emit(
            system="saq",
            backend=backend,
            mode=f"drain_c{concurrency}",
            n=n,
            seconds=elapsed,
            rate=n / elapsed,
        )


def main() -> None:
    parser = base_parser(__doc__ or "")
    parser.add_argument("--backend", choices=["redis", "postgres"], default="redis")
    args = parser.parse_args()
    asyncio.run(main_async(args.mode, args.backend, args.n, args.concurrency))


if __name__ == "__main__":
    main()
