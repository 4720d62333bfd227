"""streaQ (Redis streams, coredis) on the shared workload shape: enqueue, drain, latency.

    python benchmarks/peer_streaq.py enqueue --n 10000
    python benchmarks/peer_streaq.py drain --n 10000 --concurrency 10
    python benchmarks/peer_streaq.py latency --n 300 --concurrency 10

Drain: N tasks enqueued first (one pipeline per 500, not timed), then one streaQ
``Worker`` in burst mode (``worker.burst = True``, as ``streaq run --burst``): the clock
runs from its start until it returns, which it does once the stream is empty and every
task it took has finished, its result stored and published. Tasks are ``silent`` (no log
line per task) and keep streaQ's default result TTL. Enqueue: N sequential
``await task.enqueue()`` from one client. Latency: an idle worker in this process;
each submit is followed by ``await task.result()``, streaQ's own wait (a pub/sub
subscription on the task's channel, then a read of the stored result).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from _common import (
    REDIS_URL,
    base_parser,
    emit,
    latency_summary,
    spaced_latency,
    timed_enqueue,
    unique,
)


def _worker(queue_name: str, concurrency: int) -> Any:
    from streaq import Worker

    return Worker(
        redis_url=REDIS_URL,
        queue_name=queue_name,
        concurrency=concurrency,
        handle_signals=False,
    )


async def _destroy(queue_name: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_URL)
    keys = [k async for k in client.scan_iter(match=f"streaq:{queue_name}*", count=1000)]
    for i in range(0, len(keys), 500):
        await client.delete(*keys[i : i + 500])
    await client.aclose()


async def drain(queue_name: str, n: int, concurrency: int) -> None:
    worker = _worker(queue_name, concurrency)

    @worker.task(silent=True)
    async def noop() -> None:
        return None

    async with worker:
        for i in range(0, n, 500):
            await worker.enqueue_many([noop.enqueue() for _ in range(min(500, n - i))])
    worker.burst = True
    start = time.perf_counter()
    cpu = time.process_time()
    await worker.run_async()
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    if worker.counters["completed"] != n:
        raise SystemExit(f"streaq completed {worker.counters['completed']} of {n} tasks")
    emit(
        system="streaq",
        backend="redis",
        mode=f"drain_c{concurrency}",
        n=n,
        seconds=elapsed,
        rate=n / elapsed,
        cpu_rate=n / cpu,
    )


async def enqueue(queue_name: str, n: int) -> None:
    worker = _worker(queue_name, 1)

    @worker.task(silent=True)
    async def noop() -> None:
        return None

    async with worker:
        await timed_enqueue("streaq", "redis", n, lambda: noop.enqueue())


async def latency(queue_name: str, n: int, concurrency: int) -> None:
    import anyio

    worker = _worker(queue_name, concurrency)
    starts: dict[int, float] = {}

    @worker.task(silent=True)
    async def stamp(i: int) -> None:
        starts[i] = time.perf_counter()

    async with anyio.create_task_group() as tg:
        await tg.start(worker.run_async)
        await asyncio.sleep(0.5)  # the worker reaches its idle (blocking) read

        async def one(i: int) -> tuple[float, float | None]:
            t0 = time.perf_counter()
            task = await stamp.enqueue(i)
            await task.result(timeout=30)  # streaQ's own wait: pub/sub, then the result
            return starts[i] - t0, time.perf_counter() - t0

        to_start, to_done = await spaced_latency(n, one)
        tg.cancel_scope.cancel()
    emit(
        system="streaq",
        backend="redis",
        mode="latency",
        n=n,
        **latency_summary("start", to_start),
        **latency_summary("done", to_done),
    )


async def main_async(mode: str, n: int, concurrency: int) -> None:
    queue_name = unique("streaq")
    try:
        if mode == "drain":
            await drain(queue_name, n, concurrency)
        elif mode == "enqueue":
            await enqueue(queue_name, n)
        elif mode == "latency":
            await latency(queue_name, n, concurrency)
        else:
            raise SystemExit(f"unknown mode {mode!r}")
    finally:
        await _destroy(queue_name)


def main() -> None:
    args = base_parser(__doc__ or "").parse_args()
    asyncio.run(main_async(args.mode, args.n, args.concurrency))


if __name__ == "__main__":
    main()
