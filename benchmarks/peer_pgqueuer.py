"""PgQueuer (PostgreSQL, asyncpg) on the shared workload shape.

    python benchmarks/peer_pgqueuer.py enqueue --n 2000
    python benchmarks/peer_pgqueuer.py enqueue_many --n 10000 --batch 1000
    python benchmarks/peer_pgqueuer.py drain --n 2000 --concurrency 50

Each run installs PgQueuer's tables into a new database. Drain: N jobs enqueued
first (one batch insert), then ``QueueManager.run(mode=drain)`` with
``max_concurrent_tasks`` = concurrency and ``batch_size`` = concurrency / 2 (PgQueuer
requires the cap to be at least twice the batch); it returns once the queue is empty
and its buffered completions are written.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

from _common import (
    base_parser,
    emit,
    fresh_pg_database,
    latency_summary,
    spaced_latency,
    timed_enqueue,
)


async def latency(url: str, client: Any, n: int, concurrency: int) -> None:
    """Idle worker (its own connection), a client that waits with CompletionWatcher."""
    import asyncpg
    from pgqueuer import AsyncpgDriver, Queries, QueueManager
    from pgqueuer.core.completion import CompletionWatcher

    starts: dict[int, float] = {}
    worker_conn = await asyncpg.connect(url)
    watch_conn = await asyncpg.connect(url)
    try:
        qm = QueueManager(Queries(AsyncpgDriver(worker_conn)))

        @qm.entrypoint("stamp")  # type: ignore[untyped-decorator, unused-ignore]
        async def stamp(job: Any) -> None:
            starts[int(job.payload)] = time.perf_counter()

        task = asyncio.create_task(
            qm.run(
                dequeue_timeout=timedelta(seconds=1),
                batch_size=max(1, concurrency // 2),
                max_concurrent_tasks=concurrency,
            )
        )
        await asyncio.sleep(0.5)
        watch_driver = AsyncpgDriver(watch_conn)
        async with CompletionWatcher(
            watch_driver, queries=Queries(watch_driver), debounce=timedelta(milliseconds=1)
        ) as watcher:

            async def one(i: int) -> tuple[float, float | None]:
                t0 = time.perf_counter()
                (job_id,) = await client.enqueue("stamp", str(i).encode())
                await watcher.wait_for(job_id)
                return starts[i] - t0, time.perf_counter() - t0

            to_start, to_done = await spaced_latency(n, one)
        qm.shutdown.set()
        await asyncio.wait_for(task, 30)
    finally:
        await worker_conn.close()
        await watch_conn.close()
    emit(
        system="pgqueuer",
        backend="postgres",
        mode="latency",
        n=n,
        **latency_summary("start", to_start),
        **latency_summary("done", to_done),
    )


async def enqueue_many(queries: Any, n: int, batch: int) -> None:
    """``n`` jobs through PgQueuer's list enqueue, ``batch`` at a time (one INSERT each)."""
    start = time.perf_counter()
    for first in range(0, n, batch):
        size = min(batch, n - first)
        await queries.enqueue(["noop"] * size, [None] * size, [0] * size)
    elapsed = time.perf_counter() - start
    emit(
        system="pgqueuer",
        backend="postgres",
        mode="enqueue_many",
        n=n,
        batch=batch,
        seconds=elapsed,
        rate=n / elapsed,
    )


async def main_async(mode: str, n: int, concurrency: int, batch: int = 1000) -> None:
    import asyncpg
    from pgqueuer import AsyncpgDriver, Queries, QueueManager
    from pgqueuer.domain.types import QueueExecutionMode

    async with fresh_pg_database() as url:
        conn = await asyncpg.connect(url)
        try:
            driver = AsyncpgDriver(conn)
            queries = Queries(driver)
            await queries.install()
            if mode == "latency":
                await latency(url, queries, n, concurrency)
                return
            if mode == "enqueue":
                await timed_enqueue(
                    "pgqueuer", "postgres", n, lambda: queries.enqueue("noop", None)
                )
                return
            if mode == "enqueue_many":
                await enqueue_many(queries, n, batch)
                return
            await queries.enqueue(["noop"] * n, [None] * n, [0] * n)
            qm = QueueManager(queries)
            done = 0

            @qm.entrypoint("noop")  # type: ignore[untyped-decorator, unused-ignore]
            async def noop(job: object) -> None:
                nonlocal done
                done += 1

            start = time.perf_counter()
            await qm.run(
                dequeue_timeout=timedelta(seconds=1),
                batch_size=max(1, concurrency // 2),
                mode=QueueExecutionMode.drain,
                max_concurrent_tasks=concurrency,
            )
            elapsed = time.perf_counter() - start
            if done != n:
                raise SystemExit(f"pgqueuer ran {done} of {n} jobs")
            emit(
                system="pgqueuer",
                backend="postgres",
                mode=f"drain_c{concurrency}",
                n=n,
                seconds=elapsed,
                rate=n / elapsed,
            )
        finally:
            await conn.close()


def main() -> None:
    parser = base_parser(__doc__ or "")
    parser.add_argument("--batch", type=int, default=1000, help="jobs per enqueue_many call")
    args = parser.parse_args()
    asyncio.run(main_async(args.mode, args.n, args.concurrency, args.batch))


if __name__ == "__main__":
    main()
