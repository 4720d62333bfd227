"""The Queue of the PostgreSQL multi-process tests (tests/test_postgres_multiprocess.py).

Worker processes run it with ``asyncjobs worker pg_worker_app:build``; the test process
builds the same job types with ``build(concurrency=0)`` to submit and observe. The
store URL (with ``?schema=``) and the lease come from the environment, so every test
gets its own schema.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import anyio

from asyncjobs import JanitorConfig, JobContext, Queue, WorkerConfig
from asyncjobs.errors import LeaseLost


def build(concurrency: int | None = None, url: str | None = None) -> Queue:
    lease = float(os.environ.get("ASYNCJOBS_MP_LEASE", "2.0"))
    queue = Queue(
        url or os.environ["ASYNCJOBS_MP_URL"],
        concurrency=int(os.environ.get("ASYNCJOBS_MP_CONCURRENCY", "3"))
        if concurrency is None
        else concurrency,
        worker=WorkerConfig(lease=lease, idle_wait=1.0, shutdown_grace=1.0),
        janitor=JanitorConfig(interval=0.3),
    )

    @queue.job_type("steps", max_attempts=5)
    async def steps(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
        # Progress between naps: a worker that lost its lease hears LeaseLost here.
        for i in range(params["steps"]):
            try:
                await ctx.progress(i / params["steps"], f"step {i}")
            except LeaseLost:
                print(f"fenced off job {ctx.job_id}", file=sys.stderr, flush=True)
                raise
            await anyio.sleep(params["pause"])
        return {"pid": os.getpid(), "attempt": ctx.attempt}

    return queue
