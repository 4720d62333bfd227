"""Helpers shared by the adapter tests: the test job types and bounded polling."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import attrs

from asyncjobs import JobContext, Queue


@attrs.frozen
class SleepParams:
    seconds: float = attrs.field(
        default=0.05, validator=[attrs.validators.ge(0), attrs.validators.le(30)]
    )
    steps: int = attrs.field(default=1, validator=[attrs.validators.ge(1), attrs.validators.le(50)])


def build_queue(**options: Any) -> Queue:
    """A memory queue with the job types the adapter tests use."""
    queue = Queue("memory://", **options)

    @queue.job_type("echo", max_attempts=1, description="Return the params.")
    async def echo(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
        return params

    @queue.job_type("sleep", max_attempts=1, description="Sleep in steps, reporting progress.")
    async def sleep(ctx: JobContext, params: SleepParams) -> dict[str, float]:
        for step in range(params.steps):
            await ctx.progress(step / params.steps, f"step {step + 1} of {params.steps}")
            await anyio.sleep(params.seconds / params.steps)
        return {"slept": params.seconds}

    @queue.job_type("fail", max_attempts=1)
    async def fail(ctx: JobContext, params: dict[str, Any]) -> None:
        raise RuntimeError("this job always fails")

    @queue.job_type("block", max_attempts=1, description="Run until cancelled.")
    async def block(ctx: JobContext, params: dict[str, Any]) -> None:
        await anyio.sleep_forever()

    return queue


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``predicate`` until it holds (bounded)."""
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.01)


@contextlib.asynccontextmanager
async def opened(queue: Queue) -> AsyncIterator[Queue]:
    """Keep ``queue`` open in a task of its own.

    pytest-asyncio runs a fixture's setup and teardown in different tasks, and a
    queue's task group must be entered and left in one task.
    """
    stop = asyncio.Event()

    async def hold() -> None:
        async with queue:
            await stop.wait()

    task = asyncio.create_task(hold())
    with anyio.fail_after(10):
        while not queue.is_open:
            if task.done():
                task.result()
            await anyio.sleep(0.01)
    try:
        yield queue
    finally:
        stop.set()
        with anyio.fail_after(15):
            await task
