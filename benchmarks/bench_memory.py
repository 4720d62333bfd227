"""Memory per finished job kept in the memory store (tracemalloc, and RSS for scale).

    python benchmarks/bench_memory.py jobs --n 100000

N jobs are submitted through a Queue, then claimed and finished through the store's
own calls (what the worker does, minus running a handler: that keeps the traced run
short); retention keeps them all. The figure is the traced memory still held
afterwards, divided by N.
tracemalloc counts Python allocations only, which is all the memory store makes.
"""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
from datetime import datetime, timezone
from typing import Any

from _common import base_parser, emit

from asyncjobs import JanitorConfig, JobContext, Queue
from asyncjobs.job import JobStatus
from asyncjobs.stores import MemoryStore, Outcome


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        import os

        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def main_async(n: int, concurrency: int) -> None:
    store = MemoryStore()
    await store.open()
    queue = Queue(store, concurrency=0, janitor=JanitorConfig(enabled=False))

    @queue.job_type("noop", max_attempts=1)
    async def noop(ctx: JobContext, params: dict[str, Any]) -> None:
        return None

    done = Outcome(JobStatus.COMPLETED, result=None)

    async def run_batch(count: int) -> None:
        # What a worker does per job, minus the handler: submit, claim, finish.
        for _ in range(count):
            await queue.submit("noop")
        now = datetime.now(timezone.utc)
        for job in await store.claim("bench", types=["noop"], limit=count, lease=30, now=now):
            assert job.lease is not None
            await store.finish(job.id, job.lease.token, done, now=now)

    async with queue:
        await run_batch(10)  # warm every code path before measuring
        gc.collect()
        rss0 = rss_bytes()
        tracemalloc.start()
        base, _ = tracemalloc.get_traced_memory()
        start = time.perf_counter()
        for i in range(0, n, concurrency):
            await run_batch(min(concurrency, n - i))
        elapsed = time.perf_counter() - start
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rss1 = rss_bytes()
        stats = await queue.stats()
    emit(
        system="asyncjobs",
        backend="memory",
        mode="memory_per_job",
        n=n,
        bytes_per_job=round((held - base) / n),
        rss_bytes_per_job=round((rss1 - rss0) / n),
        completed=stats.counts.get(JobStatus.COMPLETED, 0) - 10,
        seconds=elapsed,
    )


def main() -> None:
    args = base_parser(__doc__ or "").parse_args()
    asyncio.run(main_async(args.n, args.concurrency))


if __name__ == "__main__":
    main()
