"""The remote-worker routes: ``/worker/claim`` and ``/worker/jobs/{id}/...``.

Any language that speaks HTTP and JSON can run jobs: claim with a lease, send the
lease's token on every call, end the attempt with complete, fail or release. A stale
or forged token answers 409 ``lease_lost`` and changes nothing. Every route needs the
``worker`` scope. The semantics live in :class:`asyncjobs.adapters.leases.LeaseGateway`,
shared with the gRPC service.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, final

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from asyncjobs.codec import format_time, job_to_wire
from asyncjobs.errors import FieldError, JobNotFound, LeaseLost
from asyncjobs.job import JobError

from ..leases import MAX_CLAIM, MAX_LEASE, Claimed, LeaseGateway, LeaseState
from .auth import WORKER, Authenticator, require
from .http import read_body
from .wire import invalid, loads

if TYPE_CHECKING:
    from asyncjobs.queue import Queue

__all__ = ["MAX_STRING", "WorkerApi"]

#: The longest worker name, token, error type or message accepted.
MAX_STRING: Final = 256
MAX_TEXT: Final = 65_536


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class _Body:
    """Collects field errors while a body is read, then raises one 422 for all of them."""

    def __init__(self, body: Any, fields: frozenset[str]) -> None:
        if not isinstance(body, Mapping):
            raise invalid([{"loc": [], "msg": "the body must be a JSON object"}])
        self.body = body
        self.errors: list[FieldError] = [
            {"loc": [k], "msg": "unknown field"} for k in sorted(set(body) - fields)
        ]

    def string(
        self, name: str, *, required: bool, limit: int = MAX_STRING, shortest: int = 1
    ) -> str | None:
        value = self.body.get(name)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not shortest <= len(value) <= limit:
            self.errors.append({"loc": [name], "msg": f"required: a string of 1 to {limit} chars"})
            return None
        return value

    def number(self, name: str, lo: float, hi: float, *, lo_open: bool = False) -> float | None:
        value = self.body.get(name)
        if value is None:
            return None
        if not _number(value) or value > hi or value < lo or (lo_open and value == lo):
            bracket = "(" if lo_open else "["
            self.errors.append(
                {"loc": [name], "msg": f"must be a number in {bracket}{lo:g}, {hi:g}]"}
            )
            return None
        return float(value)

    def done(self) -> None:
        if self.errors:
            raise invalid(self.errors)


def _state(state: LeaseState) -> dict[str, Any]:
    return {
        "cancel_requested": state.cancel_requested,
        "lease_expires_at": format_time(state.lease_expires_at),
    }


def _claimed(claimed: Claimed) -> dict[str, Any]:
    return {
        "job": job_to_wire(claimed.job),
        "token": claimed.token,
        "lease_expires_at": format_time(claimed.lease_expires_at),
    }


@final
class WorkerApi:
    """The ``/worker/*`` route handlers of one app.

    Args:
        queue: The queue the workers draw from.
        auth: The authenticator, or ``None`` to allow everything.
        max_body: The largest request body accepted, in bytes.
        max_wait: The longest claim long-poll honoured, in seconds.
    """

    def __init__(
        self, queue: Queue, *, auth: Authenticator | None, max_body: int, max_wait: float
    ) -> None:
        self.gateway = LeaseGateway(queue, max_poll=max_wait)
        self.auth = auth
        self.max_body = max_body

    def routes(self) -> list[BaseRoute]:
        """The Starlette routes, relative to the mount point."""
        return [
            Route("/worker/claim", self.claim, methods=["POST"]),
            Route("/worker/jobs/{job_id}/heartbeat", self.heartbeat, methods=["POST"]),
            Route("/worker/jobs/{job_id}/progress", self.progress, methods=["POST"]),
            Route("/worker/jobs/{job_id}/complete", self.complete, methods=["POST"]),
            Route("/worker/jobs/{job_id}/fail", self.fail, methods=["POST"]),
            Route("/worker/jobs/{job_id}/release", self.release, methods=["POST"]),
        ]

    async def _body(self, request: Request, fields: frozenset[str]) -> _Body:
        await require(self.auth, request.scope, WORKER)
        return _Body(loads(await read_body(request, self.max_body)), fields)

    async def claim(self, request: Request) -> Response:
        """``POST /worker/claim`` ``{"worker", "types"?, "limit"?, "wait"?, "lease"?}``."""
        body = await self._body(request, frozenset({"worker", "types", "limit", "wait", "lease"}))
        worker = body.string("worker", required=True)
        types = body.body.get("types")
        if types is not None and (
            not isinstance(types, list)
            or len(types) > MAX_CLAIM
            or not all(isinstance(t, str) and 0 < len(t) <= MAX_STRING for t in types)
        ):
            body.errors.append({"loc": ["types"], "msg": "must be a list of job type names"})
        limit = body.number("limit", 1, MAX_CLAIM)
        if limit is not None and not limit.is_integer():
            body.errors.append({"loc": ["limit"], "msg": f"must be an integer in [1, {MAX_CLAIM}]"})
        wait = body.number("wait", 0, math.inf)
        lease = body.number("lease", 0, MAX_LEASE, lo_open=True)
        body.done()
        assert worker is not None
        names = self.gateway.check_types(types)  # 422 unknown_job_type before waiting

        claimed: list[Claimed] = []
        gone = False

        async def watch_disconnect(scope: anyio.CancelScope) -> None:
            # A worker that hangs up stops the long-poll.
            nonlocal gone
            while (await request.receive())["type"] != "http.disconnect":
                pass
            gone = True
            scope.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_disconnect, tg.cancel_scope)
            claimed = await self.gateway.claim(
                worker,
                types=names,
                limit=int(limit or 1),
                wait=wait or 0.0,
                lease=lease,
            )
            tg.cancel_scope.cancel()
        if gone and claimed:
            # Claimed as the worker hung up: nobody will hear of these; give them back.
            with anyio.move_on_after(10, shield=True):
                for c in claimed:
                    with contextlib.suppress(LeaseLost, JobNotFound):
                        await self.gateway.release(c.job.id, c.token)
        return JSONResponse({"jobs": [_claimed(c) for c in claimed]})

    async def heartbeat(self, request: Request) -> Response:
        """``POST /worker/jobs/{id}/heartbeat`` ``{"token", "lease"?}``."""
        body = await self._body(request, frozenset({"token", "lease"}))
        token = body.string("token", required=True)
        lease = body.number("lease", 0, MAX_LEASE, lo_open=True)
        body.done()
        assert token is not None
        state = await self.gateway.heartbeat(request.path_params["job_id"], token, lease=lease)
        return JSONResponse(_state(state))

    async def progress(self, request: Request) -> Response:
        """``POST /worker/jobs/{id}/progress`` ``{"token", "progress", "message"?, "lease"?}``."""
        body = await self._body(request, frozenset({"token", "progress", "message", "lease"}))
        token = body.string("token", required=True)
        progress = body.number("progress", 0, 1)
        if body.body.get("progress") is None:
            body.errors.append({"loc": ["progress"], "msg": "required: a number in [0, 1]"})
        message = body.string("message", required=False, limit=MAX_TEXT, shortest=0)
        lease = body.number("lease", 0, MAX_LEASE, lo_open=True)
        body.done()
        assert token is not None
        assert progress is not None
        state = await self.gateway.progress(
            request.path_params["job_id"], token, progress, message, lease=lease
        )
        return JSONResponse(_state(state))

    async def complete(self, request: Request) -> Response:
        """``POST /worker/jobs/{id}/complete`` ``{"token", "result"?}``."""
        body = await self._body(request, frozenset({"token", "result"}))
        token = body.string("token", required=True)
        body.done()
        assert token is not None
        job = await self.gateway.complete(
            request.path_params["job_id"], token, body.body.get("result")
        )
        return JSONResponse({"job": job_to_wire(job)})

    async def fail(self, request: Request) -> Response:
        """``POST /worker/jobs/{id}/fail`` ``{"token", "error": {"type", "message",
        "traceback"?}, "retry"?}``."""
        body = await self._body(request, frozenset({"token", "error", "retry"}))
        token = body.string("token", required=True)
        error = self._error(body)
        retry = body.body.get("retry", True)
        if not isinstance(retry, bool):
            body.errors.append({"loc": ["retry"], "msg": "must be true or false"})
        body.done()
        assert token is not None
        assert error is not None
        job = await self.gateway.fail(request.path_params["job_id"], token, error, retry=retry)
        return JSONResponse({"job": job_to_wire(job)})

    @staticmethod
    def _error(body: _Body) -> JobError | None:
        raw = body.body.get("error")
        if not isinstance(raw, Mapping):
            body.errors.append(
                {"loc": ["error"], "msg": "required: an object {type, message, traceback?}"}
            )
            return None
        inner = _Body(raw, frozenset({"type", "message", "traceback"}))
        kind = inner.string("type", required=True)
        message = raw.get("message")
        if not isinstance(message, str) or len(message) > MAX_TEXT:
            inner.errors.append({"loc": ["message"], "msg": "required: a string"})
            message = None
        trace = inner.string("traceback", required=False, limit=MAX_TEXT, shortest=0)
        body.errors += [{"loc": ["error", *e["loc"]], "msg": e["msg"]} for e in inner.errors]
        if inner.errors or kind is None:
            return None
        return JobError(type=kind, message=message or "", traceback=trace)

    async def release(self, request: Request) -> Response:
        """``POST /worker/jobs/{id}/release`` ``{"token"}``: give the job back unrun."""
        body = await self._body(request, frozenset({"token"}))
        token = body.string("token", required=True)
        body.done()
        assert token is not None
        job = await self.gateway.release(request.path_params["job_id"], token)
        return JSONResponse({"job": job_to_wire(job)})
