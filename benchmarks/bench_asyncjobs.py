"""asyncjobs on one store: enqueue rate, no-op drain throughput, latency, multi-process.

One run per invocation, printed as ``RESULT {json}``::

    python benchmarks/bench_asyncjobs.py enqueue --store sqlite --n 10000
    python benchmarks/bench_asyncjobs.py enqueue_many --store postgres --n 10000 --batch 1000
    python benchmarks/bench_asyncjobs.py drain --store postgres --n 2000 --concurrency 50
    python benchmarks/bench_asyncjobs.py latency --store memory --n 300
    python benchmarks/bench_asyncjobs.py multiproc --store postgres --n 2000 --workers 2

Every run gets a fresh store: a new memory store, a new SQLite file, a new PostgreSQL
schema (dropped afterwards).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

from _common import (
    base_parser,
    emit,
    fresh_pg_schema,
    fresh_sqlite,
    latency_summary,
    spawn,
    timed_enqueue,
)

from asyncjobs import JanitorConfig, JobContext, Queue
from asyncjobs.job import EventType, JobEvent
from asyncjobs.stores import Store, open_store

# The janitor's timers are irrelevant to these workloads; keep it off the hot path.
QUIET_JANITOR = JanitorConfig(interval=5.0)


@contextlib.asynccontextmanager
async def fresh_store(kind: str) -> AsyncIterator[str]:
    if kind == "memory":
        yield "memory://"
    elif kind == "sqlite":
        with fresh_sqlite() as url:
            yield url
    elif kind == "postgres":
        async with fresh_pg_schema() as url:
            yield url
    else:
        raise SystemExit(f"unknown store {kind!r}")


def make_queue(store: Store | str, concurrency: int) -> Queue:
    queue = Queue(store, concurrency=concurrency, janitor=QUIET_JANITOR)

    @queue.job_type("noop", max_attempts=1)
    async def noop(ctx: JobContext, params: dict[str, Any]) -> None:
        return None

    return queue


# A module constant: on Python 3.11 EventType.COMPLETED costs an EnumType.__getattr__ call,
# twice per job in the counter (aiojobs' counter is a bare increment).
_COMPLETED = EventType.COMPLETED


class CompletionCounter:
    """Counts final events (after the store committed them) and fires at ``target``."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.done = 0
        self.finished = asyncio.Event()

    def __call__(self, event: JobEvent) -> None:
        if event.type is _COMPLETED:
            self.done += 1
            if self.done >= self.target:
                self.finished.set()


async def enqueue(kind: str, n: int) -> None:
    async with fresh_store(kind) as url, make_queue(url, 0) as queue:
        for _ in range(20):  # warm up connections and caches
            await queue.submit("noop")
        await timed_enqueue("asyncjobs", kind, n, lambda: queue.submit("noop"))


async def enqueue_many(kind: str, n: int, batch: int) -> None:
    """``n`` jobs through ``submit_many``, ``batch`` at a time, from one client."""
    async with fresh_store(kind) as url, make_queue(url, 0) as queue:
        await queue.submit_many([{"type": "noop"}] * 20)  # warm up connections and caches
        start = time.perf_counter()
        for first in range(0, n, batch):
            await queue.submit_many([{"type": "noop"}] * min(batch, n - first))
        elapsed = time.perf_counter() - start
    emit(
        system="asyncjobs",
        backend=kind,
        mode="enqueue_many",
        n=n,
        batch=batch,
        seconds=elapsed,
        rate=n / elapsed,
    )


async def drain(kind: str, n: int, concurrency: int) -> None:
    async with fresh_store(kind) as url:
        store = open_store(url)
        await store.open()
        try:
            async with make_queue(store, 0) as client:
                await asyncio.gather(*(client.submit("noop") for _ in range(n)))
            counter = CompletionCounter(n)
            remove = store.add_listener(counter)
            start, cpu = time.perf_counter(), time.process_time()
            async with make_queue(store, concurrency):
                await counter.finished.wait()
                elapsed = time.perf_counter() - start
                cpu = time.process_time() - cpu
            remove()
        finally:
            await store.close()
    emit(
        system="asyncjobs",
        backend=kind,
        mode=f"drain_c{concurrency}",
        n=n,
        seconds=elapsed,
        rate=n / elapsed,
        # CPU time of this process: steadier than wall time on a shared machine (for
        # sqlite and postgres it leaves out the database's own work).
        cpu_rate=n / cpu,
    )


async def latency(kind: str, n: int, concurrency: int) -> None:
    starts: dict[str, float] = {}
    async with fresh_store(kind) as url:
        queue = Queue(url, concurrency=concurrency, janitor=QUIET_JANITOR)

        @queue.job_type("stamp", max_attempts=1)
        async def stamp(ctx: JobContext, params: dict[str, Any]) -> None:
            starts[ctx.job_id] = time.perf_counter()

        async with queue:
            to_start: list[float] = []
            to_done: list[float] = []

            async def one(measure: bool) -> None:
                t0 = time.perf_counter()
                job = await queue.submit("stamp")
                await queue.wait(job.id, timeout=30)
                t1 = time.perf_counter()
                if measure:
                    to_start.append(starts[job.id] - t0)
                    to_done.append(t1 - t0)

            tasks = []
            for i in range(n + 20):  # the first 20 warm up and are not counted
                tasks.append(asyncio.create_task(one(i >= 20)))
                await asyncio.sleep(0.010)
            await asyncio.gather(*tasks)
    emit(
        system="asyncjobs",
        backend=kind,
        mode="latency",
        n=n,
        **latency_summary("start", to_start),
        **latency_summary("done", to_done),
    )


async def worker(url: str, concurrency: int) -> None:
    """A worker process for ``multiproc``: runs until killed."""
    async with make_queue(url, concurrency):
        print("READY", flush=True)
        await asyncio.Event().wait()


async def multiproc(kind: str, n: int, concurrency: int, workers: int) -> None:
    """One submitting process (this one) plus ``workers`` separate worker processes."""
    if kind != "postgres":
        raise SystemExit("multiproc needs a store shared between processes: postgres")
    async with fresh_store(kind) as url:
        store = open_store(url)
        await store.open()  # creates the schema before the workers race to
        procs: list[subprocess.Popen[str]] = []
        try:
            for _ in range(workers):
                procs.append(
                    spawn(
                        [
                            sys.executable,
                            __file__,
                            "worker",
                            "--url",
                            url,
                            "--concurrency",
                            str(concurrency),
                        ],
                        stdout=subprocess.PIPE,
                    )
                )
            for proc in procs:
                assert proc.stdout is not None
                line = await asyncio.to_thread(proc.stdout.readline)
                if line.strip() != "READY":
                    raise SystemExit("a worker process did not start")
            counter = CompletionCounter(n)
            store.add_listener(counter)
            async with make_queue(store, 0) as client:
                start = time.perf_counter()
                for _ in range(n):
                    await client.submit("noop")
                submitted = time.perf_counter() - start
                await counter.finished.wait()
                elapsed = time.perf_counter() - start
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
            await store.close()
    emit(
        system="asyncjobs",
        backend=kind,
        mode=f"multiproc_{workers}x{concurrency}",
        n=n,
        seconds=elapsed,
        rate=n / elapsed,
        submit_seconds=submitted,
    )


def main() -> None:
    parser = base_parser(__doc__ or "")
    parser.add_argument("--store", default="memory", choices=["memory", "sqlite", "postgres"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--url", help="store URL (worker mode)")
    parser.add_argument("--batch", type=int, default=1000, help="jobs per submit_many")
    args = parser.parse_args()
    if args.mode == "enqueue":
        coro = enqueue(args.store, args.n)
    elif args.mode == "enqueue_many":
        coro = enqueue_many(args.store, args.n, args.batch)
    elif args.mode == "drain":
        coro = drain(args.store, args.n, args.concurrency)
    elif args.mode == "latency":
        coro = latency(args.store, args.n, args.concurrency)
    elif args.mode == "multiproc":
        coro = multiproc(args.store, args.n, args.concurrency, args.workers)
    elif args.mode == "worker":
        coro = worker(args.url, args.concurrency)
    else:
        raise SystemExit(f"unknown mode {args.mode!r}")
    asyncio.run(coro)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
