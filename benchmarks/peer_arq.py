"""arq (Redis) on the shared workload shape: enqueue rate and no-op drain.

    python benchmarks/peer_arq.py enqueue --n 10000
    python benchmarks/peer_arq.py drain --n 2000 --concurrency 10

Drain: N jobs enqueued first, then one arq ``Worker`` in burst mode (it returns once
the queue is empty and its jobs finished, results recorded with arq's default
``keep_result``); ``poll_delay`` is lowered from 0.5 s to 0.01 s so the idle poll does
not dominate.
"""

from __future__ import annotations

import asyncio
import contextlib
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


async def noop(ctx: dict[str, Any]) -> None:
    return None


STARTS: dict[int, float] = {}


async def stamp(ctx: dict[str, Any], i: int) -> None:
    STARTS[i] = time.perf_counter()


async def main_async(mode: str, n: int, concurrency: int) -> None:
    from arq import create_pool
    from arq.connections import RedisSettings
    from arq.worker import Worker

    settings = RedisSettings.from_dsn(REDIS_URL)
    queue_name = unique("arq")
    pool = await create_pool(settings, default_queue_name=queue_name)
    try:
        if mode == "latency":
            worker = Worker(
                functions=[stamp],
                redis_pool=pool,
                queue_name=queue_name,
                max_jobs=concurrency,
                poll_delay=0.01,
                handle_signals=False,
            )
            task = asyncio.create_task(worker.async_run())
            await asyncio.sleep(0.5)

            async def one(i: int) -> tuple[float, float | None]:
                t0 = time.perf_counter()
                job = await pool.enqueue_job("stamp", i)
                assert job is not None
                # arq has no push notification of results: the client polls (5 ms here).
                await job.result(timeout=30, poll_delay=0.005)
                return STARTS[i] - t0, time.perf_counter() - t0

            to_start, to_done = await spaced_latency(n, one)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await worker.close()
            emit(
                system="arq",
                backend="redis",
                mode="latency",
                n=n,
                **latency_summary("start", to_start),
                **latency_summary("done", to_done),
            )
            return
        if mode == "enqueue":
            await timed_enqueue("arq", "redis", n, lambda: pool.enqueue_job("noop"))
            return
        await asyncio.gather(*(pool.enqueue_job("noop") for _ in range(n)))
        worker = Worker(
            functions=[noop],
            redis_pool=pool,
            queue_name=queue_name,
            max_jobs=concurrency,
            burst=True,
            poll_delay=0.01,
            handle_signals=False,
        )
        start = time.perf_counter()
        await worker.main()
        elapsed = time.perf_counter() - start
        if worker.jobs_complete != n:
            raise SystemExit(f"arq completed {worker.jobs_complete} of {n} jobs")
        await worker.close()
        emit(
            system="arq",
            backend="redis",
            mode=f"drain_c{concurrency}",
            n=n,
            seconds=elapsed,
            rate=n / elapsed,
        )
    finally:
        keys = [k async for k in pool.scan_iter(match="arq:*")]
        keys += [queue_name]
        for i in range(0, len(keys), 1000):
            await pool.delete(*keys[i : i + 1000])
        await pool.aclose()


def main() -> None:
    args = base_parser(__doc__ or "").parse_args()
    asyncio.run(main_async(args.mode, args.n, args.concurrency))


if __name__ == "__main__":
    main()
