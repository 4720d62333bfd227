"""How many no-op jobs per second a Queue drains from a PostgreSQL store, and what each
job costs: client CPU, server CPU and statements.

Fills a fresh schema with ``--jobs`` queued no-op jobs (through a submit-only queue:
10 concurrent submitters, or ``--fill many`` for ``submit_many`` in batches of 500),
then opens a Queue with ``--concurrency`` worker slots on it and times until every job
has completed (as seen by the queue's own event listener). The schema is dropped at the
end. One JSON line out, with:

* ``jobs_per_second`` (drain) and ``submit_per_second`` (fill);
* ``client_us_per_job``: CPU time of this process during the drain, per job;
* ``server_us_per_job``: CPU time of the store's server processes (its pool and its
  LISTEN connection) during the drain, read from ``/proc`` (only when the server runs
  on this machine; null otherwise);
* ``statements``: statements the store sent during the drain, by their first words;
* the 1-minute load average before and after (figures only compare at similar load).

    python benchmarks/postgres_drain.py --jobs 2000 --concurrency 10
    python benchmarks/postgres_drain.py --jobs 3000 --concurrency 50 --max-pool 20

``--url`` picks the server (default: the test server, postgresql://postgres@127.0.0.1/test).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import time
import uuid
from collections.abc import Awaitable
from typing import Any

import anyio
import asyncpg
from asyncpg.connection import Connection

from asyncjobs import JanitorConfig, JobContext, JobEvent, Queue
from asyncjobs.job import EventType
from asyncjobs.stores.postgres import PostgresStore

#: Statements sent, by their first words (counted while ``counting`` is on).
statements: collections.Counter[str] = collections.Counter()
counting = False


def _count_statements() -> None:
    for name in ("fetch", "fetchrow", "fetchval", "execute"):
        real = getattr(Connection, name)

        def counted(
            self: Connection, query: str, *args: Any, _real: Any = real, **kw: Any
        ) -> Awaitable[Any]:
            if counting:
                words = query.split()
                statements[" ".join(words[:4]) if words[0] == "WITH" else " ".join(words[:2])] += 1
            result: Awaitable[Any] = _real(self, query, *args, **kw)
            return result

        setattr(Connection, name, counted)


def make_queue(store: PostgresStore, concurrency: int) -> Queue:
    queue = Queue(store, concurrency=concurrency, janitor=JanitorConfig(enabled=False))

    @queue.job_type("noop", max_attempts=1)
    async def noop(ctx: JobContext, params: dict[str, Any]) -> None:
        return None

    return queue


async def fill(store: PostgresStore, jobs: int, how: str) -> float:
    started = time.perf_counter()
    queue = make_queue(store, 0)

    async def submit(n: int) -> None:
        for _ in range(n):
            await queue.submit("noop")

    async with queue:
        if how == "many":
            for i in range(0, jobs, 500):
                await queue.submit_many([{"type": "noop"}] * min(500, jobs - i))
        else:  # 10 concurrent submitters, like a busy web app
            async with anyio.create_task_group() as tg:
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


class ServerCpu:
    """CPU seconds of the server processes serving one schema (``/proc``, local only)."""

    def __init__(self, url: str, schema: str) -> None:
        self.url, self.schema = url, schema
        self.tick = os.sysconf("SC_CLK_TCK")

    async def pids(self) -> list[int]:
        conn = await asyncpg.connect(self.url)
        try:
            rows = await conn.fetch(
                "SELECT pid FROM pg_stat_activity WHERE application_name IN ($1, $2)",
                f"asyncjobs:{self.schema}",
                f"asyncjobs_{self.schema}:listen",
            )
        finally:
            await conn.close()
        return [row[0] for row in rows]

    def seconds(self, pid: int) -> float | None:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / self.tick


async def main(args: argparse.Namespace) -> None:
    global counting
    _count_statements()
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    load_before = os.getloadavg()[0]
    store = PostgresStore(args.url, schema=schema, max_pool=args.max_pool)
    await store.open()
    server = ServerCpu(args.url, schema)
    server_seconds: float | None = None
    try:
        fill_seconds = await fill(store, args.jobs, args.fill)
        before = {pid: server.seconds(pid) for pid in await server.pids()}
        counting, cpu = True, time.process_time()
        elapsed = await drain(store, args.jobs, args.concurrency)
        cpu, counting = time.process_time() - cpu, False
        after = {pid: server.seconds(pid) for pid in await server.pids()}
        if after and all(v is not None for v in after.values()):
            server_seconds = sum((after[p] or 0.0) - (before.get(p) or 0.0) for p in after)
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
                "fill": args.fill,
                "submit_per_second": round(args.jobs / fill_seconds, 1),
                "seconds": round(elapsed, 3),
                "jobs_per_second": round(args.jobs / elapsed, 1),
                "client_us_per_job": round(cpu / args.jobs * 1e6, 1),
                "server_us_per_job": None
                if server_seconds is None
                else round(server_seconds / args.jobs * 1e6, 1),
                "statements": dict(statements.most_common()),
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
    parser.add_argument("--fill", choices=["submit", "many"], default="submit")
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    anyio.run(main, parser.parse_args())
