"""procrastinate (PostgreSQL, psycopg 3) on the shared workload shape.

    python benchmarks/peer_procrastinate.py enqueue --n 2000
    python benchmarks/peer_procrastinate.py drain --n 2000 --concurrency 10

Each run installs procrastinate's schema into a new database. Drain: N jobs deferred
first (``batch_defer_async``), then ``run_worker_async(wait=False)``, which returns
once the queue is empty and every job it took is recorded as succeeded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from _common import (
    base_parser,
    emit,
    fresh_pg_database,
    latency_summary,
    spaced_latency,
    timed_enqueue,
)


async def main_async(mode: str, n: int, concurrency: int) -> None:
    import procrastinate

    async with fresh_pg_database() as url:
        app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))

        @app.task(name="noop")  # type: ignore[untyped-decorator, unused-ignore]
        async def noop() -> None:
            return None

        starts: dict[int, float] = {}

        @app.task(name="stamp")  # type: ignore[untyped-decorator, unused-ignore]
        async def stamp(i: int) -> None:
            starts[i] = time.perf_counter()

        async with app.open_async():
            await app.schema_manager.apply_schema_async()
            if mode == "latency":
                # procrastinate has no API to wait for a job's result: start only.
                task = asyncio.create_task(
                    app.run_worker_async(concurrency=concurrency, install_signal_handlers=False)
                )
                await asyncio.sleep(0.5)

                async def one(i: int) -> tuple[float, float | None]:
                    t0 = time.perf_counter()
                    await stamp.defer_async(i=i)
                    while i not in starts:  # noqa: ASYNC110 - the start is stamped in the job
                        await asyncio.sleep(0.001)
                    return starts[i] - t0, None

                to_start, _ = await spaced_latency(n, one)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                emit(
                    system="procrastinate",
                    backend="postgres",
                    mode="latency",
                    n=n,
                    **latency_summary("start", to_start),
                )
                return
            if mode == "enqueue":
                await timed_enqueue("procrastinate", "postgres", n, noop.defer_async)
                return
            for i in range(0, n, 500):
                await noop.batch_defer_async(*({} for _ in range(min(500, n - i))))
            start = time.perf_counter()
            await app.run_worker_async(
                concurrency=concurrency, wait=False, install_signal_handlers=False
            )
            elapsed = time.perf_counter() - start
            async with app.connector.pool.connection() as conn:
                cur = await conn.execute(
                    "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"
                )
                row = await cur.fetchone()
            if row is None or row[0] != n:
                raise SystemExit(f"procrastinate finished {row} of {n} jobs")
            emit(
                system="procrastinate",
                backend="postgres",
                mode=f"drain_c{concurrency}",
                n=n,
                seconds=elapsed,
                rate=n / elapsed,
            )


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    args = base_parser(__doc__ or "").parse_args()
    asyncio.run(main_async(args.mode, args.n, args.concurrency))


if __name__ == "__main__":
    main()
