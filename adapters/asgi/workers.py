"""``GET /workers``: the worker registry (every live worker of every process)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from asyncjobs import Queue
from asyncjobs.codec import format_time
from asyncjobs.stores.protocol import WorkerInfo

from .auth import READ, Authenticator, require

__all__ = ["WorkersEndpoint", "worker_to_wire", "workers_to_wire"]


def worker_to_wire(info: WorkerInfo) -> dict[str, Any]:
    """``{"id", "host", "pid", "types", "slots", "running", "started_at",
    "last_heartbeat", "expires_at"}``; times ISO 8601 UTC."""
    return {
        "id": info.id,
        "host": info.host,
        "pid": info.pid,
        "types": list(info.types),
        "slots": info.slots,
        "running": list(info.running),
        "started_at": format_time(info.started_at),
        "last_heartbeat": format_time(info.last_heartbeat),
        "expires_at": format_time(info.expires_at),
    }


def workers_to_wire(infos: list[WorkerInfo]) -> list[dict[str, Any]]:
    return [worker_to_wire(info) for info in infos]


class WorkersEndpoint:
    """The ``/workers`` route's handler (read scope)."""

    def __init__(self, queue: Queue, auth: Authenticator | None) -> None:
        self.queue = queue
        self.auth = auth

    async def __call__(self, request: Request) -> Response:
        await require(self.auth, request.scope, READ)
        return JSONResponse({"workers": workers_to_wire(await self.queue.workers())})
