"""The web app of the many-web-processes test: ``uvicorn mp_web_app:app --workers 2``.

Every response names the process that served it (``x-served-by``), so the test knows
which web process each of its SSE streams is attached to.
"""

from __future__ import annotations

import os
from typing import Any

from asyncjobs.adapters.asgi import JobsApp

from pg_worker_app import build

_jobs = JobsApp(build(concurrency=0))
_PID = str(os.getpid()).encode()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        await _jobs(scope, receive, send)
        return

    async def send_with_pid(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            headers = [*message.get("headers", []), (b"x-served-by", _PID)]
            message = {**message, "headers": headers}
        await send(message)

    await _jobs(scope, receive, send_with_pid)
