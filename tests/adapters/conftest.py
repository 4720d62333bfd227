"""Fixtures for the ASGI adapter: a real uvicorn server on a free loopback port.

The server runs in the test's own event loop, next to the queue, so a test can submit
through HTTP and inspect the queue directly (``queue.bus.subscriber_count``).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import httpx
import pytest
import uvicorn
from asyncjobs.adapters.asgi import JobsApp
from starlette.types import ASGIApp

from asyncjobs import Queue

from .support import build_queue, opened

Serve = Callable[..., Awaitable[str]]


@pytest.fixture
async def queue() -> AsyncIterator[Queue]:
    """An open memory queue with the test job types, three worker slots."""
    async with opened(build_queue()) as q:
        yield q


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start ASGI apps under uvicorn on 127.0.0.1:<free port>; each call returns a base URL."""
    running: list[tuple[uvicorn.Server, asyncio.Task[None], socket.socket]] = []

    async def start(app: ASGIApp, *, lifespan: str = "off", root_path: str = "") -> str:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        config = uvicorn.Config(
            app,
            lifespan=lifespan,
            ws="websockets-sansio",
            log_level="warning",
            timeout_graceful_shutdown=1,
            root_path=root_path,
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve([sock]))
        running.append((server, task, sock))
        with anyio.fail_after(10):
            while not server.started:
                if task.done():
                    task.result()  # raise the server's startup error
                    raise RuntimeError("uvicorn exited during startup")
                await anyio.sleep(0.01)
        return f"http://127.0.0.1:{sock.getsockname()[1]}"

    yield start
    for server, _, _ in running:
        server.should_exit = True
    for _, task, sock in running:
        with anyio.fail_after(10):
            await task
        sock.close()


@pytest.fixture
async def base_url(serve: Serve, queue: Queue) -> str:
    """A JobsApp served alone (no prefix, no auth)."""
    return await serve(JobsApp(queue, heartbeat=0.2))


@pytest.fixture
async def client(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as c:
        yield c
