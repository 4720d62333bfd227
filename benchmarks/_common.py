"""Helpers shared by the benchmark scripts: timing, percentiles, fresh databases, output.

Every benchmark script measures ONE run of one case and prints one line
``RESULT {json}`` on stdout; ``run.py`` repeats runs, bounds each in time, and takes
medians. Keeping one run per process gives every run a fresh interpreter, a fresh
database (a new PostgreSQL schema or database, a new SQLite file, a new Redis key
space) and an honest memory figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any

PG_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
#: Peers on Redis use their own database number so they never touch the tests' db 0.
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/9")


def emit(**result: Any) -> None:
    """Print one result line for ``run.py`` (and a human)."""
    print("RESULT " + json.dumps(result, sort_keys=True), flush=True)


async def timed_enqueue(
    system: str, backend: str, n: int, submit: Callable[[], Awaitable[object]]
) -> None:
    """Time ``n`` sequential submits from one client and emit the enqueue result."""
    start = time.perf_counter()
    for _ in range(n):
        await submit()
    elapsed = time.perf_counter() - start
    emit(system=system, backend=backend, mode="enqueue", n=n, seconds=elapsed, rate=n / elapsed)


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100) by nearest rank; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def latency_summary(prefix: str, seconds: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99 in milliseconds under ``{prefix}_p50_ms`` etc."""
    return {f"{prefix}_p{p}_ms": round(percentile(seconds, p) * 1000, 3) for p in (50, 95, 99)}


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("mode", help="what to measure (enqueue, drain, latency, ...)")
    parser.add_argument("--n", type=int, default=2000, help="jobs")
    parser.add_argument("--concurrency", type=int, default=10)
    return parser


def unique(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(4)}"


@contextlib.asynccontextmanager
async def fresh_pg_schema() -> AsyncIterator[str]:
    """A ``postgresql://...?schema=bench_xxx`` URL in a new schema, dropped afterwards."""
    import asyncpg

    schema = unique("bench")
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}schema={schema}"
    finally:
        conn = await asyncpg.connect(PG_URL)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()


@contextlib.asynccontextmanager
async def fresh_pg_database() -> AsyncIterator[str]:
    """A URL of a new, empty PostgreSQL database (peers install into ``public``)."""
    import asyncpg

    name = unique("bench")
    admin = await asyncpg.connect(PG_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base = PG_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        admin = await asyncpg.connect(PG_URL)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@contextlib.contextmanager
def fresh_sqlite() -> Iterator[str]:
    """A ``sqlite:///...`` URL of a new file in a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="asyncjobs-bench-") as tmp:
        yield f"sqlite:///{tmp}/jobs.db"


def fail(message: str) -> None:
    print(f"ERROR {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def spawn(argv: list[str], **kwargs: Any) -> subprocess.Popen[str]:
    """Start a helper process (Popen returns at once; it never blocks the loop)."""
    return subprocess.Popen(argv, text=True, cwd=Path(__file__).parent, **kwargs)


async def spaced_latency(
    n: int, one: Callable[[int], Coroutine[Any, Any, tuple[float, float | None]]], warmup: int = 20
) -> tuple[list[float], list[float]]:
    """Call ``one(i)`` for ``warmup + n`` jobs started 10 ms apart, concurrently.

    ``one`` submits job ``i``, waits for it, and returns (enqueue->start,
    enqueue->completion or None when the library offers no way to wait). The first
    ``warmup`` results are dropped.
    """
    tasks: list[asyncio.Task[tuple[float, float | None]]] = []
    for i in range(warmup + n):
        tasks.append(asyncio.create_task(one(i)))
        await asyncio.sleep(0.010)
    results = (await asyncio.gather(*tasks))[warmup:]
    return [s for s, _ in results], [d for _, d in results if d is not None]
