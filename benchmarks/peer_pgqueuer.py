"""PgQueuer (PostgreSQL, asyncpg) on the shared workload shape.

    python benchmarks/peer_pgqueuer.py enqueue --n 2000
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

from _common import base_parser, emit, fresh_pg_database


async def main_async(mode: str, n: int, concurrency: int) -> None:
    import asyncpg
    from pgqueuer import AsyncpgDriver, Queries, QueueManager
    from pgqueuer.domain.types import QueueExecutionMode

    async with fresh_pg_database() as url:
        conn = await asyncpg.connect(url)
        try:
            driver = AsyncpgDriver(conn)
            queries = Queries(driver)
            await queries.install()
            if mode == "enqueue":
                start = time.perf_counter()
                for _ in range(n):
                    await queries.enqueue("noop", None)
                elapsed = time.perf_counter() - start
                emit(
                    system="pgqueuer",
                    backend="postgres",
                    mode="enqueue",
                    n=n,
                    seconds=elapsed,
                    rate=n / elapsed,
                )
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
    args = base_parser(__doc__ or "").parse_args()
    asyncio.run(main_async(args.mode, args.n, args.concurrency))


if __name__ == "__main__":
    main()
