"""What the PostgreSQL server allows, measured with raw asyncpg, beside PostgresStore.

The latency goal of the store (submit -> observed completion with an idle worker) and
its single-submit enqueue rate are judged against this floor: the same shape done with
nothing but asyncpg on the same server, with the same durability (each commit waits
for its WAL flush as the server is configured):

* latency: a client commits ``INSERT`` + ``pg_notify`` (one statement); the worker's
  LISTEN connection wakes; it claims with ``FOR UPDATE SKIP LOCKED`` (one statement);
  it commits the finish ``UPDATE`` + ``pg_notify``; the observer's LISTEN connection
  wakes. Timestamps per hop, so a gap in the store's path can be located.
* enqueue: sequential single-row ``INSERT`` statements from one connection.

Then the same on asyncjobs (the shape of ``bench_asyncjobs.py latency``: a Queue with
the worker in the submitting process, ``submit`` then ``wait``), runs interleaved in
rounds so that load on a shared machine hits both alike::

    BENCH_POSTGRES_URL=postgresql://... python benchmarks/postgres_floor.py --n 300
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PG_URL, fresh_pg_schema, percentile, unique

_TABLE = """
CREATE TABLE {t} (
    id bigserial PRIMARY KEY,
    status text NOT NULL,
    priority int NOT NULL DEFAULT 0,
    payload jsonb NOT NULL,
    lock_token text
);
CREATE INDEX ON {t} (priority, id) WHERE status = 'queued';
"""


def _ms(values: list[float]) -> str:
    return f"p50 {percentile(values, 50) * 1000:6.2f}  p99 {percentile(values, 99) * 1000:6.2f} ms"


async def raw_latency(n: int, gap: float) -> dict[str, list[float]]:
    """The raw shape; per job: seconds from submit to each hop."""
    import asyncpg

    table = unique("floor")
    setup = await asyncpg.connect(PG_URL)
    await setup.execute(_TABLE.format(t=table))
    client = await asyncpg.connect(PG_URL)
    worker = await asyncpg.connect(PG_URL)
    listen_w = await asyncpg.connect(PG_URL)
    listen_o = await asyncpg.connect(PG_URL)
    hops: dict[str, list[float]] = {
        k: [] for k in ("insert_commit", "wake", "claimed", "finish_commit", "observed")
    }
    t0: dict[str, float] = {}
    seen: dict[str, asyncio.Future[float]] = {}
    wake = asyncio.Event()
    insert = (
        f"WITH j AS (INSERT INTO {table} (status, payload) VALUES ('queued', $1::jsonb) "
        f"RETURNING id) SELECT id, pg_notify('{table}_new', id::text) FROM j"
    )
    claim = (
        f"UPDATE {table} SET status = 'running', lock_token = $1 WHERE id IN ("
        f"SELECT id FROM {table} WHERE status = 'queued' ORDER BY priority, id "
        "LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id, payload::text"
    )
    finish = (
        f"WITH j AS (UPDATE {table} SET status = 'succeeded', lock_token = NULL "
        "WHERE id = $1 AND lock_token = $2 RETURNING id) "
        f"SELECT pg_notify('{table}_done', id::text) FROM j"
    )
    stamps: dict[str, dict[str, float]] = {}
    finished: dict[str, asyncio.Future[None]] = {}

    woke = [0.0]

    def on_new(*_: Any) -> None:
        woke[0] = time.perf_counter()
        wake.set()

    def on_done(_c: Any, _p: int, _ch: str, payload: str) -> None:
        fut = seen.setdefault(payload, asyncio.get_running_loop().create_future())
        if not fut.done():
            fut.set_result(time.perf_counter())

    await listen_w.add_listener(f"{table}_new", on_new)
    await listen_o.add_listener(f"{table}_done", on_done)

    async def work() -> None:
        while True:
            await wake.wait()
            wake.clear()
            while True:
                row = await worker.fetchrow(claim, "tok")
                if row is None:
                    break
                key = str(row[0])
                stamps.setdefault(key, {})["wake"] = woke[0]
                stamps[key]["claimed"] = time.perf_counter()
                await worker.execute(finish, row[0], "tok")
                stamps[key]["finish_commit"] = time.perf_counter()
                done = finished.setdefault(key, asyncio.get_running_loop().create_future())
                done.set_result(None)

    runner = asyncio.create_task(work())
    try:
        for i in range(n + 20):
            start = time.perf_counter()
            row = await client.fetchrow(insert, '{"args": []}')
            committed = time.perf_counter()
            key = str(row[0])
            fut = seen.setdefault(key, asyncio.get_running_loop().create_future())
            t0[key] = start
            observed = await asyncio.wait_for(fut, 10)
            # The finish's reply may come after its notification reached the observer.
            await finished.setdefault(key, asyncio.get_running_loop().create_future())
            if i >= 20:
                s = stamps[key]
                hops["insert_commit"].append(committed - start)
                hops["wake"].append(s["wake"] - start)
                hops["claimed"].append(s["claimed"] - start)
                hops["finish_commit"].append(s["finish_commit"] - start)
                hops["observed"].append(observed - start)
            await asyncio.sleep(gap)
    finally:
        runner.cancel()
        for conn in (client, worker, listen_w, listen_o):
            await conn.close()
        await setup.execute(f"DROP TABLE {table}")
        await setup.close()
    return hops


async def raw_enqueue(n: int) -> float:
    """Sequential single-row inserts (each its own commit) from one connection: per second."""
    import asyncpg

    table = unique("floor")
    conn = await asyncpg.connect(PG_URL)
    await conn.execute(_TABLE.format(t=table))
    insert = f"INSERT INTO {table} (status, payload) VALUES ('queued', $1::jsonb) RETURNING id"
    try:
        start = time.perf_counter()
        for _ in range(n):
            await conn.fetchval(insert, '{"args": []}')
        return n / (time.perf_counter() - start)
    finally:
        await conn.execute(f"DROP TABLE {table}")
        await conn.close()


async def ours_latency(n: int, gap: float) -> dict[str, list[float]]:
    """``bench_asyncjobs.py latency``'s shape, but one job at a time like the floor."""
    from asyncjobs import JobContext, Queue

    starts: dict[str, float] = {}
    hops: dict[str, list[float]] = {"start": [], "observed": []}
    async with fresh_pg_schema() as url:
        queue = Queue(url, concurrency=10)

        @queue.job_type("stamp", max_attempts=1)
        async def stamp(ctx: JobContext, params: dict[str, Any]) -> None:
            starts[ctx.job_id] = time.perf_counter()

        async with queue:
            for i in range(n + 20):
                t0 = time.perf_counter()
                job = await queue.submit("stamp")
                await queue.wait(job.id, timeout=30)
                t1 = time.perf_counter()
                if i >= 20:
                    hops["start"].append(starts[job.id] - t0)
                    hops["observed"].append(t1 - t0)
                await asyncio.sleep(gap)
    return hops


async def ours_enqueue(n: int) -> float:
    from asyncjobs import JobContext, Queue

    async with fresh_pg_schema() as url:
        queue = Queue(url, concurrency=0)

        @queue.job_type("noop")
        async def noop(ctx: JobContext, params: dict[str, Any]) -> None:
            pass

        async with queue:
            start = time.perf_counter()
            for _ in range(n):
                await queue.submit("noop")
            return n / (time.perf_counter() - start)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=300, help="jobs per latency run")
    parser.add_argument("--enqueue-n", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--gap", type=float, default=0.010, help="seconds between jobs")
    parser.add_argument("--skip-ours", action="store_true")
    args = parser.parse_args()
    raw: dict[str, list[float]] = {}
    ours: dict[str, list[float]] = {}
    raw_rates: list[float] = []
    our_rates: list[float] = []
    for _ in range(args.rounds):
        for k, v in (await raw_latency(args.n, args.gap)).items():
            raw.setdefault(k, []).extend(v)
        raw_rates.append(await raw_enqueue(args.enqueue_n))
        if not args.skip_ours:
            for k, v in (await ours_latency(args.n, args.gap)).items():
                ours.setdefault(k, []).extend(v)
            our_rates.append(await ours_enqueue(args.enqueue_n))
    print(f"load average: {os.getloadavg()}")
    print("raw asyncpg floor, ms from submit:")
    for hop, values in raw.items():
        print(f"  {hop:14} {_ms(values)}")
    if ours:
        print("asyncjobs PostgresStore, ms from submit:")
        for hop, values in ours.items():
            print(f"  {hop:14} {_ms(values)}")
    line = f"enqueue, sequential single submits: raw {max(raw_rates):.0f}/s"
    if our_rates:
        line += f", asyncjobs {max(our_rates):.0f}/s"
    print(line + " (best round)")
    summary = {
        "raw_observed_p50_ms": percentile(raw["observed"], 50) * 1000,
        "raw_observed_p99_ms": percentile(raw["observed"], 99) * 1000,
        "raw_enqueue_rate": max(raw_rates),
    }
    if ours:
        summary |= {
            "ours_observed_p50_ms": percentile(ours["observed"], 50) * 1000,
            "ours_observed_p99_ms": percentile(ours["observed"], 99) * 1000,
            "ours_enqueue_rate": max(our_rates),
        }
    print("RESULT " + json.dumps({k: round(v, 3) for k, v in summary.items()}))


if __name__ == "__main__":
    asyncio.run(main())
