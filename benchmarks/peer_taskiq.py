"""taskiq with taskiq-redis (``ListQueueBroker``) on the shared workload shape.

    python benchmarks/peer_taskiq.py enqueue --n 10000
    python benchmarks/peer_taskiq.py drain --n 2000 --concurrency 10

Drain: N ``kiq()`` calls first, then taskiq's programmatic receiver
(``taskiq.api.run_receiver_task``) with ``max_async_tasks`` = concurrency in this
process; done when the task body has run N times. No result backend is configured
(taskiq's default), so there is no completion record to wait for: this is the
cheapest possible "done" and favours taskiq.

Latency: taskiq's way to wait for a task is a result backend; this mode configures
taskiq-redis's ``RedisAsyncResultBackend`` and waits with ``task.wait_result()``,
which polls (every 5 ms here, as the arq driver's ``job.result()``; taskiq's default is
200 ms).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from _common import (
    REDIS_URL,
    base_parser,
    emit,
    latency_summary,
    spaced_latency,
    timed_enqueue,
    unique,
)


async def main_async(mode: str, n: int, concurrency: int) -> None:
    from taskiq.api import run_receiver_task
    from taskiq_redis import ListQueueBroker, RedisAsyncResultBackend

    queue_name = unique("taskiq")
    broker = ListQueueBroker(REDIS_URL, queue_name=queue_name)
    if mode == "latency":
        broker = broker.with_result_backend(
            RedisAsyncResultBackend(REDIS_URL, prefix_str=queue_name, result_ex_time=600)
        )
    done = 0
    finished = asyncio.Event()

    @broker.task(task_name="noop")  # type: ignore[untyped-decorator, unused-ignore]
    async def noop() -> None:
        nonlocal done
        done += 1
        if done >= n:
            finished.set()

    starts: dict[int, float] = {}

    @broker.task(task_name="stamp")  # type: ignore[untyped-decorator, unused-ignore]
    async def stamp(i: int) -> None:
        starts[i] = time.perf_counter()

    await broker.startup()
    try:
        if mode == "latency":
            broker.is_worker_process = True
            task = asyncio.create_task(run_receiver_task(broker, max_async_tasks=concurrency))
            await asyncio.sleep(0.5)

            async def one(i: int) -> tuple[float, float | None]:
                t0 = time.perf_counter()
                task = await stamp.kiq(i)
                await task.wait_result(check_interval=0.005, timeout=30)
                return starts[i] - t0, time.perf_counter() - t0

            to_start, to_done = await spaced_latency(n, one)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            emit(
                system="taskiq",
                backend="redis",
                mode="latency",
                n=n,
                **latency_summary("start", to_start),
                **latency_summary("done", to_done),
            )
            return
        if mode == "enqueue":
            await timed_enqueue("taskiq", "redis", n, noop.kiq)
            return
        for i in range(0, n, 100):
            await asyncio.gather(*(noop.kiq() for _ in range(min(100, n - i))))
        broker.is_worker_process = True
        start = time.perf_counter()
        task = asyncio.create_task(run_receiver_task(broker, max_async_tasks=concurrency))
        await finished.wait()
        elapsed = time.perf_counter() - start
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        emit(
            system="taskiq",
            backend="redis",
            mode=f"drain_c{concurrency}",
            n=n,
            seconds=elapsed,
            rate=n / elapsed,
        )
    finally:
        from redis.asyncio import Redis

        redis = Redis.from_url(REDIS_URL)
        await redis.delete(queue_name)
        keys = [k async for k in redis.scan_iter(match=f"{queue_name}*", count=1000)]
        for i in range(0, len(keys), 500):
            await redis.delete(*keys[i : i + 500])
        await redis.aclose()
        await broker.shutdown()


def main() -> None:
    args = base_parser(__doc__ or "").parse_args()
    asyncio.run(main_async(args.mode, args.n, args.concurrency))


if __name__ == "__main__":
    main()
