"""Submit-to-observed-completion latency across processes, SQLite and PostgreSQL.

A web-like Queue (concurrency 0) in this process submits one no-op job at a time and
awaits ``queue.wait()``; an ``asyncjobs worker`` process on the same store runs it. The
baseline, in the same run, is the same store with the worker inside this process.
Default worker settings (``idle_wait`` 5 s): the latency comes from the notifier, not
from polling. Run as

    python benchmarks/cross_process_latency.py --jobs 200 \\
        --postgres postgresql://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import anyio

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from _latency_app import build  # noqa: E402


async def _measure(url: str, jobs: int, *, worker_here: bool) -> list[float]:
    os.environ["ASYNCJOBS_BENCH_URL"] = url
    queue = build(concurrency=2 if worker_here else 0)
    latencies: list[float] = []
    async with queue:
        if not worker_here:
            deadline = time.monotonic() + 30
            while not await queue.workers():  # the worker process registered
                assert time.monotonic() < deadline, "the worker process did not start"
                await anyio.sleep(0.1)
        for _ in range(10):  # warm up
            job = await queue.submit("noop")
            await queue.wait(job.id, timeout=30)
        for _ in range(jobs):
            started = time.perf_counter()
            job = await queue.submit("noop")
            await queue.wait(job.id, timeout=30)
            latencies.append(time.perf_counter() - started)
            await anyio.sleep(0.01)  # the worker is idle again when the next one comes
    return latencies


def _worker(url: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "ASYNCJOBS_BENCH_URL": url, "PYTHONPATH": str(HERE)}
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "asyncjobs", "worker", "_latency_app:build"],
            cwd=HERE,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _summary(name: str, latencies: list[float]) -> str:
    ms = sorted(x * 1000 for x in latencies)
    p50 = statistics.median(ms)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return f"{name:<34} n={len(ms):<5} p50 {p50:7.2f} ms   p99 {p99:7.2f} ms"


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        urls = [("sqlite", f"sqlite:///{Path(tmp) / 'bench.db'}")]
        if args.postgres:
            urls.append(("postgres", f"{args.postgres}?schema=aj_bench_{uuid.uuid4().hex[:8]}"))
        for name, url in urls:
            here = await _measure(url, args.jobs, worker_here=True)
            proc = _worker(url, Path(tmp) / f"{name}-worker.log")
            try:
                across = await _measure(url, args.jobs, worker_here=False)
            finally:
                proc.terminate()
                proc.wait(timeout=20)
            print(_summary(f"{name}: worker in this process", here))
            print(_summary(f"{name}: worker in another process", across))
            if name == "postgres":
                await _drop_schema(args.postgres, url.rsplit("=", 1)[1])


async def _drop_schema(dsn: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--postgres", default=None, help="a PostgreSQL URL to measure too")
    anyio.run(main, parser.parse_args())
