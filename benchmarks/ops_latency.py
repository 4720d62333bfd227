"""Operations figures, each beside a baseline measured in the same run.

* Webhook delivery latency: a job's stored end (``finished_at``) -> the receiver has the
  POST, against the in-process notification of the same end (``queue.wait`` returning).
* Schedule jitter: tick time -> the tick's job created, for ``every=0.1``, against a
  bare ``anyio.sleep`` loop aiming at the same ticks.
* Batch submit: ``submit_many`` of N jobs against N ``submit`` calls (jobs/s).

    python benchmarks/ops_latency.py [--store sqlite|memory|postgres] [--n 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import tempfile
import time
import uuid
from datetime import datetime
from typing import Any

import anyio
import uvicorn

from asyncjobs import JobContext, Queue
from asyncjobs.webhooks import Webhook, WebhookConfig


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000


def show(label: str, values: list[float]) -> None:
    print(f"  {label:<44} p50 {pct(values, 0.5):7.2f} ms   p99 {pct(values, 0.99):7.2f} ms")


def store_url(kind: str, tmp: str) -> str:
    if kind == "memory":
        return "memory://"
    if kind == "sqlite":
        return f"sqlite:///{tmp}/bench-{uuid.uuid4().hex[:6]}.db"
    base = os.environ.get("ASYNCJOBS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
    url = f"{base}?schema=aj_bench_{uuid.uuid4().hex[:10]}"
    CREATED.append(url)
    return url


CREATED: list[str] = []


async def drop_schemas() -> None:
    import asyncpg

    from asyncjobs.stores.postgres.schema import split_url

    for url in CREATED:
        dsn, schema = split_url(url)
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()


class Receiver:
    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        headers = dict(scope["headers"])
        self.arrived[headers[b"webhook-id"].decode()] = time.time()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


async def webhooks(kind: str, n: int, tmp: str) -> None:
    os.environ["ASYNCJOBS_WEBHOOK_ALLOW"] = "127.0.0.1"
    rx = Receiver()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(rx, lifespan="off", log_level="warning"))
    task = asyncio.create_task(server.serve([sock]))
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event to wait on
        await asyncio.sleep(0.01)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
    queue = Queue(
        store_url(kind, tmp),
        concurrency=4,
        webhooks=[Webhook(url=url)],
        webhook_config=WebhookConfig(poll=1.0),
    )

    @queue.job_type("noop")
    async def noop(ctx: JobContext, params: dict[str, Any]) -> None:
        pass

    notified: list[float] = []
    delivered: list[float] = []
    async with queue:
        hook_id = (await queue.list_webhooks())[0].id
        for _ in range(n):
            job = await queue.submit("noop")
            done = await queue.wait(job.id, timeout=30)
            notified.append(time.time() - done.finished_at.timestamp())  # type: ignore[union-attr]
            with anyio.fail_after(30):
                while not any(k.startswith(f"msg_{job.id}_") for k in rx.arrived):  # noqa: ASYNC110
                    await anyio.sleep(0.0005)
        for d in await queue.deliveries(hook_id, limit=n):
            delivered.append(rx.arrived[d.id] - d.at.timestamp())
    server.should_exit = True
    await task
    print(f"webhook delivery after a job's end ({kind}, {n} jobs, one at a time):")
    show("baseline: queue.wait() returns (in-process)", notified)
    show("webhook POST received", delivered)


async def schedules(kind: str, ticks: int, tmp: str) -> None:
    every = 0.1
    queue = Queue(store_url(kind, tmp), concurrency=0)

    @queue.job_type("tick")
    async def tick(ctx: JobContext, params: dict[str, Any]) -> None:
        pass

    queue.schedule("tick", every=every)
    async with queue:
        await anyio.sleep(ticks * every + 0.15)
        jobs = (await queue.list(limit=10_000)).jobs
    jitter = []
    for job in jobs:
        tick_at = datetime.fromisoformat((job.idempotency_key or "").split(":", 2)[2])
        jitter.append((job.created_at - tick_at).total_seconds())
    baseline = []
    for _ in range(ticks):
        now = time.time()
        target = (int(now / every) + 1) * every
        await anyio.sleep(target - now)
        baseline.append(time.time() - target)
    print(f"schedule jitter, every={every}s ({kind}, {len(jitter)} ticks):")
    show("baseline: anyio.sleep to the tick", baseline)
    show("tick -> job created", jitter)


async def batch(kind: str, n: int, tmp: str) -> None:
    queue = Queue(store_url(kind, tmp), concurrency=0)

    @queue.job_type("noop")
    async def noop(ctx: JobContext, params: dict[str, Any]) -> None:
        pass

    singles, manies = [], []
    async with queue:
        for _ in range(3):  # interleaved, best of three each: the machine is shared
            start = time.perf_counter()
            for _ in range(n):
                await queue.submit("noop")
            singles.append(n / (time.perf_counter() - start))
            start = time.perf_counter()
            await queue.submit_many([{"type": "noop"} for _ in range(n)])
            manies.append(n / (time.perf_counter() - start))
    single, many = max(singles), max(manies)
    print(f"submit ({kind}, {n} jobs, best of 3 interleaved):")
    print(f"  baseline: {n} x submit()                      {single:10.0f} jobs/s")
    ratio = many / single
    print(f"  submit_many (one round trip)                 {many:10.0f} jobs/s  ({ratio:.1f}x)")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", default="sqlite", choices=["memory", "sqlite", "postgres"])
    parser.add_argument("--n", type=int, default=200)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            await batch(args.store, args.n * 5, tmp)
            await webhooks(args.store, args.n, tmp)
            await schedules(args.store, 50, tmp)
        finally:
            await drop_schemas()


if __name__ == "__main__":
    anyio.run(main)
