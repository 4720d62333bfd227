"""How many no-op jobs per second a Queue drains from a PostgreSQL store.

Fills a fresh schema with ``--jobs`` queued no-op jobs (through a submit-only queue),
then opens a Queue with ``--concurrency`` worker slots on it and times until every job
has completed (as seen by the queue's own event listener). The schema is dropped at the
end. The output includes the 1-minute load average before and after the run: on a
shared machine, compare figures taken at similar load. Standalone: run it as

    python benchmarks/postgres_drain.py --jobs 2000 --concurrency 10
    python benchmarks/postgres_drain.py --jobs 2000 --concurrency 50 --max-pool 20

``--url`` picks the server (default: the test server, postgresql://postgres@127.0.0.1/test).
"""

from __future__ import annotations

import argparse
import json
import os
import time
import uuid
from typing import Any

import anyio
import asyncpg

from asyncjobs import JanitorConfig, JobContext, JobEvent, Queue
from asyncjobs.job import EventType
from asyncjobs.stores.postgres import PostgresStore


def make_queue(store: PostgresStore, concurrency: int) -> Queue:
    queue = Queue(store, concurrency=concurrency, janitor=JanitorConfig(enabled=False))

    @queue.job_type("noop", max_attempts=1)
    async def noop(ctx: JobContext, params: dict[str, Any]) -> None:
        return None

    return queue


async def fill(store: PostgresStore, jobs: int) -> float:
    started = time.perf_counter()
    queue = make_queue(store, 0)

    async def submit(n: int) -> None:
        for _ in range(n):
            await queue.submit("noop")

    # 10 concurrent submitters, like a busy web app.
    async with queue, anyio.create_task_group() as tg:
        for i in range(10):
            tg.start_soon(submit, jobs // 10 + (1 if i < jobs % 10 else 0))
    return time.perf_counter() - started


async def drain(store: PostgresStore, jobs: int, concurrency: int) -> float:
    done = anyio.Event()
    completed = 0

    def on_event(event: JobEvent) -> None:
        nonlocal completed
        if event.type is EventType.COMPLETED:
            completed += 1
            if completed == jobs:
                done.set()

    remove = store.add_listener(on_event)
    try:
        started = time.perf_counter()
        async with make_queue(store, concurrency):
            await done.wait()
            elapsed = time.perf_counter() - started
    finally:
        remove()
    return elapsed


async def main(args: argparse.Namespace) -> None:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    load_before = os.getloadavg()[0]
    store = PostgresStore(args.url, schema=schema, max_pool=args.max_pool)
    await store.open()
    try:
        fill_seconds = await fill(store, args.jobs)
        elapsed = await drain(store, args.jobs, args.concurrency)
    finally:
        await store.close()
        conn = await asyncpg.connect(args.url)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()
    print(
        json.dumps(
            {
                "store": "postgresql",
                "jobs": args.jobs,
                "concurrency": args.concurrency,
                "max_pool": args.max_pool,
                "submit_per_second": round(args.jobs / fill_seconds, 1),
                "seconds": round(elapsed, 3),
                "jobs_per_second": round(args.jobs / elapsed, 1),
                # The 1-minute load average: the figures only compare at similar load.
                "load_before": round(load_before, 2),
                "load_after": round(os.getloadavg()[0], 2),
            }
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--max-pool", type=int, default=10)
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    anyio.run(main, parser.parse_args())
