"""A real HTTP webhook receiver for tests: uvicorn on a free loopback port.

It verifies every request's Standard Webhooks signature with its own code (not
asyncjobs'), records what arrived, and answers with the statuses a test scripts.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import attrs
import uvicorn


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Standard Webhooks verification, written from the spec."""
    key = (
        base64.b64decode(secret.removeprefix("whsec_"))
        if secret.startswith("whsec_")
        else secret.encode()
    )
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(
        part.startswith("v1,") and hmac.compare_digest(part[3:], expected)
        for part in headers["webhook-signature"].split(" ")
    )


@attrs.define
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    valid: bool

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@attrs.define
class Receiver:
    secret: str
    url: str = ""
    statuses: list[int] = attrs.Factory(list)  # answers in order; 200 once used up
    delay: float = 0.0
    received: list[Received] = attrs.Factory(list)
    arrived: anyio.Event = attrs.Factory(anyio.Event)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        valid = "webhook-signature" in headers and verify(self.secret, headers, body)
        self.received.append(Received(scope["path"], headers, body, valid))
        self.arrived.set()
        self.arrived = anyio.Event()
        if self.delay:
            await anyio.sleep(self.delay)
        status = self.statuses.pop(0) if self.statuses else 200
        extra = [(b"location", b"/elsewhere")] if 300 <= status < 400 else []
        await send({"type": "http.response.start", "status": status, "headers": extra})
        await send({"type": "http.response.body", "body": b"ok"})

    async def wait_for(self, count: int, within: float = 20.0) -> list[Received]:
        with anyio.fail_after(within):
            while len(self.received) < count:
                await self.arrived.wait()
        return self.received


@asynccontextmanager
async def receiver(secret: str, **options: Any) -> AsyncIterator[Receiver]:
    """Serve a :class:`Receiver` on 127.0.0.1:<free port>; its ``url`` ends in /hook."""
    app = Receiver(secret, **options)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, lifespan="off", log_level="warning", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve([sock]))
    with anyio.fail_after(10):
        while not server.started:
            if task.done():
                task.result()
            await anyio.sleep(0.01)
    app.url = f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
    try:
        yield app
    finally:
        server.should_exit = True
        with anyio.fail_after(10):
            await task
        sock.close()
