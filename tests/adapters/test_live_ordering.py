"""Clients that connect while jobs end never keep a finished job shown as live.

The WebSocket and the SSE streams subscribe before they read the queue's state; a
store whose reads are slow widens the window between reading and subscribing, and
hypothesis interleaves connects with jobs ending.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from typing import Any, cast

import anyio
import httpx
import uvicorn
from asyncjobs.adapters.asgi import JobsApp
from httpx_sse import aconnect_sse
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect

from asyncjobs import JobContext, Queue
from asyncjobs.stores import MemoryStore, Page, Store

from .support import opened

LIVE = {"scheduled", "queued", "running"}


class SlowReads:
    """A memory store whose ``list`` answers ``delay`` seconds after it read the jobs."""

    def __init__(self, delay: float) -> None:
        self._inner = MemoryStore()
        self.delay = delay

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def list(self, **kwargs: Any) -> Page:
        page = await self._inner.list(**kwargs)
        await anyio.sleep(self.delay)
        return page


@contextlib.asynccontextmanager
async def served(queue: Queue) -> AsyncIterator[str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        JobsApp(queue, heartbeat=5),
        lifespan="off",
        ws="websockets-sansio",
        log_level="warning",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve([sock]))
    try:
        with anyio.fail_after(10):
            while not server.started:
                await anyio.sleep(0.01)
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        with anyio.fail_after(10):
            await task
        sock.close()


def apply(view: dict[str, dict[str, Any]], job: dict[str, Any], deleted: bool = False) -> None:
    """What the dashboard does: keep the newest version of each job."""
    old = view.get(job["id"])
    if old is not None and old["version"] >= job["version"]:
        return
    if deleted:
        view.pop(job["id"], None)
    else:
        view[job["id"]] = job


async def watch_ws(address: str, view: dict[str, dict[str, Any]]) -> None:
    async with connect(f"ws://{address}/ws") as ws:
        async for raw in ws:
            message = json.loads(raw)
            if message["type"] == "queue_state":
                view.clear()
                for job in message["jobs"]:
                    view[job["id"]] = job
            elif message["type"].startswith("job_"):
                apply(view, message["job"], message["type"] == "job_deleted")


async def watch_sse(address: str, view: dict[str, dict[str, Any]]) -> None:
    async with (
        httpx.AsyncClient(timeout=30) as client,
        aconnect_sse(client, "GET", f"http://{address}/events") as source,
    ):
        async for sse in source.aiter_sse():
            message = json.loads(sse.data)
            apply(view, message["job"], message["type"] == "job_deleted")


async def scenario(durations: list[float], connects: list[float], delay: float) -> None:
    store = SlowReads(delay)
    queue = Queue(cast(Store, store), concurrency=len(durations))

    @queue.job_type("nap", max_attempts=1)
    async def nap(ctx: JobContext, params: dict[str, Any]) -> None:
        await anyio.sleep(params["s"])

    ws_views: list[dict[str, dict[str, Any]]] = [{} for _ in connects]
    sse_view: dict[str, dict[str, Any]] = {}
    async with opened(queue), served(queue) as address, anyio.create_task_group() as tg:
        jobs = [await queue.submit("nap", {"s": s}) for s in durations]

        async def connect_later(at: float, view: dict[str, dict[str, Any]]) -> None:
            await anyio.sleep(at)
            await watch_ws(address, view)

        for at, view in zip(connects, ws_views, strict=True):
            tg.start_soon(connect_later, at, view)
        tg.start_soon(watch_sse, address, sse_view)
        for job in jobs:
            await queue.wait(job.id, timeout=10)

        def settled() -> bool:
            # queue_state lists every job; an SSE stream's snapshot only the live ones.
            return all(len(view) == len(jobs) for view in ws_views) and not any(
                j["status"] in LIVE for view in [*ws_views, sse_view] for j in view.values()
            )

        # Poll with a deadline: a client that missed an end never settles.
        with anyio.move_on_after(3):
            while not settled():
                await anyio.sleep(0.02)
        tg.cancel_scope.cancel()
    for view in [*ws_views, sse_view]:
        live = sorted(j["id"] for j in view.values() if j["status"] in LIVE)
        assert live == [], f"finished jobs still shown as live: {live}"
    for view in ws_views:
        assert len(view) == len(jobs)


@settings(
    max_examples=10,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # a failure shows; no slow shrink
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    durations=st.lists(st.floats(0.0, 0.05), min_size=1, max_size=12),
    connects=st.lists(st.floats(0.0, 0.06), min_size=1, max_size=3),
    delay=st.floats(0.0, 0.05),
)
async def test_connects_interleaved_with_ends_show_every_end(
    durations: list[float], connects: list[float], delay: float
) -> None:
    await scenario(durations, connects, delay)
