"""The worker of benchmarks/cross_process_latency.py: ``asyncjobs worker _latency_app:build``."""

from __future__ import annotations

import os
from typing import Any

from asyncjobs import JanitorConfig, JobContext, Queue


def build(concurrency: int | None = None) -> Queue:
    queue = Queue(
        os.environ["ASYNCJOBS_BENCH_URL"],
        concurrency=4 if concurrency is None else concurrency,
        janitor=JanitorConfig(enabled=concurrency != 0),
    )

    @queue.job_type("noop", max_attempts=1)
    async def noop(ctx: JobContext, params: dict[str, Any]) -> None:
        return None

    return queue
