"""Job types for the RemoteWorker tests: imported by the server (in the test) and by
``asyncjobs worker remote_app:queue --url ...`` subprocesses (cwd = this directory)."""

from __future__ import annotations

import os
from typing import Any

import anyio

from asyncjobs import JanitorConfig, JobContext, Queue


def build(concurrency: int = 2) -> Queue:
    """The queue; the server side uses ``concurrency=0`` (remote workers only)."""
    queue = Queue("memory://", concurrency=concurrency, janitor=JanitorConfig(interval=0.05))

    @queue.job_type("steps", max_attempts=3)
    async def steps(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
        """Report progress in ``n`` steps of ``pause`` seconds (``first_pause`` on the first
        attempt); write the pid and attempt into the file ``mark``."""
        if params.get("mark"):
            await anyio.Path(params["mark"]).write_text(f"{os.getpid()} {ctx.attempt}")
        n = int(params.get("n", 3))
        pause = float(params.get("pause", 0.05))
        if ctx.attempt == 1:
            pause = float(params.get("first_pause", pause))
        for i in range(n):
            await ctx.progress(i / n, f"step {i + 1} of {n}")
            await anyio.sleep(pause)
        return {"pid": os.getpid(), "attempt": ctx.attempt}

    @queue.job_type("boom", max_attempts=1)
    async def boom(ctx: JobContext, params: dict[str, Any]) -> None:
        raise ValueError("boom")

    return queue


queue = build()


def web() -> Queue:
    """The server side for ``asyncjobs serve remote_app:web``: remote workers only."""
    return build(concurrency=0)
