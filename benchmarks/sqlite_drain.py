"""How many no-op jobs per second a Queue drains from a SQLite store.

Fills a fresh database with ``--jobs`` queued no-op jobs (through a submit-only queue),
then opens a Queue with ``--concurrency`` worker slots on it and times until every job
has completed. Standalone: run it as

    python benchmarks/sqlite_drain.py --jobs 2000 --concurrency 10

``--store URL`` drains another store instead (``memory://`` makes a useful baseline,
though then the jobs are submitted to the same queue that drains them).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from asyncjobs import JanitorConfig, JobContext, JobEvent, Queue, open_store
from asyncjobs.job import EventType
from asyncjobs.stores.protocol import Store


def make_queue(store: Store, concurrency: int) -> Queue:
    queue = Queue(store, concurrency=concurrency, janitor=JanitorConfig(enabled=False))

    @queue.job_type("noop", max_attempts=1)
    async def noop(ctx: JobContext, params: dict[str, Any]) -> None:
        return None

    return queue


async def fill(store: Store, jobs: int) -> None:
    async with make_queue(store, 0) as queue:
        for _ in range(jobs):
            await queue.submit("noop")


async def drain(store: Store, jobs: int, concurrency: int, prefill: bool) -> float:
    done = anyio.Event()
    completed = 0

    def on_event(event: JobEvent) -> None:
        nonlocal completed
        if event.type is EventType.COMPLETED:
            completed += 1
            if completed == jobs:
                done.set()

    await store.open()
    remove = store.add_listener(on_event)
    try:
        started = time.perf_counter()
        async with make_queue(store, concurrency) as queue:
            if not prefill:
                for _ in range(jobs):
                    await queue.submit("noop")
            await done.wait()
            elapsed = time.perf_counter() - started
    finally:
        remove()
        await store.close()
    return elapsed


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = args.store or f"sqlite:///{Path(tmp) / 'bench.db'}"
        prefill = not url.startswith("memory:")
        store = open_store(url)
        if prefill:
            await fill(store, args.jobs)
        elapsed = await drain(store, args.jobs, args.concurrency, prefill)
    print(
        json.dumps(
            {
                "store": url.split("://")[0],
                "jobs": args.jobs,
                "concurrency": args.concurrency,
                "seconds": round(elapsed, 3),
                "jobs_per_second": round(args.jobs / elapsed, 1),
            }
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--store", default=None, help="store URL (default: a temp SQLite file)")
    anyio.run(main, parser.parse_args())
