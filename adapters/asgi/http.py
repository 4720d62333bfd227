"""The REST and SSE routes of :class:`~asyncjobs.adapters.asgi.JobsApp`.

Every URL this module emits (``Location``, ``next``) starts with the request's
``root_path``, so links stay right under any mount prefix.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final, final
from urllib.parse import urlencode

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from asyncjobs.codec import job_to_wire, problem_to_wire
from asyncjobs.errors import JobNotFound, WaitTimeout
from asyncjobs.job import TERMINAL, Job, JobStatus

from .auth import CANCEL, READ, SUBMIT, Authenticator, Principal, require
from .errors import ApiError
from .metrics import CONTENT_TYPE, QueueMetrics
from .sse import EventStream, FrameCache, event_stream
from .ssehub import SseHub
from .wire import (
    check_job_id,
    invalid,
    loads,
    parse_statuses,
    parse_submission,
    stats_to_wire,
)
from .workers import WorkersEndpoint

if TYPE_CHECKING:
    from asyncjobs.queue import Queue

__all__ = [
    "MAX_LIMIT",
    "MAX_WAIT",
    "HttpApi",
    "check_query",
    "read_body",
    "require_json",
    "visible_to",
]

#: The longest ``?wait=`` a request may hold a connection by default, in seconds.
MAX_WAIT: Final = 60.0
#: The largest page ``GET /jobs`` returns.
MAX_LIMIT: Final = 500
#: How long ``DELETE /jobs/{id}`` waits for a running job to stop before answering 202.
DELETE_WAIT: Final = 5.0


async def read_body(request: Request, max_body: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``max_body`` bytes.

    A declared ``Content-Length`` over the limit is refused before reading anything;
    a chunked body is counted while it streams and never buffered past the limit.
    A body that is not declared ``application/json`` is refused with 415: browsers send
    other types (forms, ``text/plain``) cross-site without asking, JSON they do not.
    """
    require_json(request)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body:
        raise _too_large(max_body)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_body:
            raise _too_large(max_body)
        chunks.append(chunk)
    return b"".join(chunks)


def require_json(request: Request) -> None:
    """Refuse a request whose ``Content-Type`` is not JSON (415 ``unsupported_media_type``)."""
    kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json")):
        return
    raise ApiError(
        415,
        "unsupported_media_type",
        "send the body as JSON with Content-Type: application/json"
        + (f" (not {kind})" if kind else ""),
        details={"content_type": kind or None},
    )


def _too_large(max_body: int) -> ApiError:
    return ApiError(
        413,
        "body_too_large",
        f"the request body is larger than {max_body} bytes",
        details={"max_body": max_body},
    )


def visible_to(principal: Principal | None) -> Callable[[Job], bool] | None:
    """A filter for owner isolation, or ``None`` when the principal sees every job."""
    owner = principal.isolated_owner if principal is not None else None
    if owner is None:
        return None
    return lambda job: job.owner == owner


def _is_job_id(value: str) -> bool:
    try:
        check_job_id(value)
    except ApiError:
        return False
    return True


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


def _query_number(request: Request, name: str, *, minimum: float, maximum: float) -> float | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < minimum:
        raise invalid([{"loc": ["query", name], "msg": f"must be a number >= {minimum:g}"}])
    return min(value, maximum)


def _query_int(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = lo - 1
    if not lo <= value <= hi:
        raise invalid([{"loc": ["query", name], "msg": f"must be an integer in [{lo}, {hi}]"}])
    return value


def _query_strings(request: Request, name: str) -> list[str] | None:
    values = [p.strip() for v in request.query_params.getlist(name) for p in v.split(",")]
    return [v for v in values if v] or None


Endpoint = Callable[[Request], Awaitable[Response]]
#: Query parameters every route takes: the token of clients that cannot set headers.
_ALWAYS: Final = frozenset({"access_token"})


def check_query(request: Request, allowed: frozenset[str]) -> None:
    """422 naming each query parameter the route does not take (as for body fields)."""
    unknown = sorted(set(request.query_params) - allowed - _ALWAYS)
    if unknown:
        raise invalid(
            [{"loc": ["query", name], "msg": "unknown query parameter"} for name in unknown],
            f"use only {sorted(allowed)}" if allowed else "this route takes no query parameters",
        )


def _dispatch(methods: dict[str, tuple[Endpoint, frozenset[str]]]) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        # HEAD is served by the GET handler; the server drops the body.
        method = "GET" if request.method == "HEAD" else request.method
        handler, allowed = methods[method]
        check_query(request, allowed)
        return await handler(request)

    return endpoint


_NONE: Final[frozenset[str]] = frozenset()


@final
class HttpApi:
    """The route handlers; one instance per app, holding no per-request state.

    Args:
        queue: The queue behind the routes.
        auth: The authenticator, or ``None`` to allow everything.
        max_body: The largest request body accepted, in bytes.
        heartbeat: Seconds between SSE comment frames.
        metrics: The app's metrics.
        max_wait: The longest ``?wait=`` honoured, in seconds; longer waits are cut to it.
    """

    def __init__(
        self,
        queue: Queue,
        *,
        auth: Authenticator | None,
        max_body: int,
        heartbeat: float,
        metrics: QueueMetrics,
        max_wait: float = MAX_WAIT,
    ) -> None:
        self.queue = queue
        self.max_wait = max_wait
        self.auth = auth
        self.max_body = max_body
        self.heartbeat = heartbeat
        self.metrics = metrics
        self.frames = FrameCache()
        self.hub = SseHub()

    def routes(self) -> list[BaseRoute]:
        """The Starlette routes, relative to the mount point."""
        # One Route per path (not per method) so that a 405 lists every allowed method.
        filters = frozenset({"status", "type"})
        table: dict[str, dict[str, tuple[Endpoint, frozenset[str]]]] = {
            "/jobs": {
                "GET": (self.list_jobs, filters | {"cursor", "limit"}),
                "POST": (self.submit, frozenset({"wait"})),
                "DELETE": (self.clear, filters),
            },
            "/jobs/{job_id}": {"GET": (self.get_job, _NONE), "DELETE": (self.delete_job, _NONE)},
            "/jobs/{job_id}/cancel": {"POST": (self.cancel_job, _NONE)},
            "/jobs/{job_id}/events": {"GET": (self.job_events, _NONE)},
            "/events": {"GET": (self.all_events, frozenset({"type"}))},
            "/job-types": {"GET": (self.job_types, _NONE)},
            "/stats": {"GET": (self.stats, _NONE)},
            "/health": {"GET": (self.health, _NONE)},
            "/metrics": {"GET": (self.render_metrics, _NONE)},
            "/workers": {"GET": (WorkersEndpoint(self.queue, self.auth), _NONE)},
        }
        return [
            Route(path, _dispatch(methods), methods=list(methods))
            for path, methods in table.items()
        ]

    async def _visible_job(self, principal: Principal | None, job_id: str) -> Job:
        job = await self.queue.get(check_job_id(job_id))
        visible = visible_to(principal)
        if visible is not None and not visible(job):
            raise JobNotFound(job_id)  # 404, not 403: do not reveal that it exists
        return job

    def _job_url(self, request: Request, job_id: str) -> str:
        return f"{_root(request)}/jobs/{job_id}"

    # -- jobs --------------------------------------------------------------------------

    async def submit(self, request: Request) -> Response:
        """``POST /jobs``: 202 with the job and ``Location``; ``?wait=S`` holds until it ends."""
        principal = await require(self.auth, request.scope, SUBMIT)
        wait = _query_number(request, "wait", minimum=0.0, maximum=self.max_wait)
        body = loads(await read_body(request, self.max_body))
        job_type, kwargs = parse_submission(
            body, idempotency_key=request.headers.get("idempotency-key")
        )
        owner = principal.owner if principal is not None else None
        job = await self.queue.submit(job_type, owner=owner, **kwargs)
        status = 202
        if wait is not None:
            job = await self._wait(request, job, wait)
            status = 200 if job.is_terminal else 202
        return JSONResponse(
            job_to_wire(job),
            status_code=status,
            headers={"Location": self._job_url(request, job.id)},
        )

    async def _wait(self, request: Request, job: Job, seconds: float) -> Job:
        """Wait up to ``seconds`` for ``job`` to end; a client disconnect stops the
        waiting, never the job."""
        if job.is_terminal:
            return job
        latest = job

        async def watch_disconnect(scope: anyio.CancelScope) -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass
            scope.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_disconnect, tg.cancel_scope)
            try:
                latest = await self.queue.wait(job.id, timeout=seconds)
            except WaitTimeout:
                latest = await self.queue.get(job.id)
            tg.cancel_scope.cancel()
        return latest

    async def list_jobs(self, request: Request) -> Response:
        """``GET /jobs?status=&type=&cursor=&limit=``: newest first, with ``next_cursor``."""
        principal = await require(self.auth, request.scope, READ)
        statuses = parse_statuses(request.query_params.getlist("status"), loc=["query", "status"])
        types = _query_strings(request, "type")
        cursor = request.query_params.get("cursor")
        if cursor is not None and not _is_job_id(cursor):
            raise invalid([{"loc": ["query", "cursor"], "msg": "must be a next_cursor value"}])
        limit = _query_int(request, "limit", 50, 1, MAX_LIMIT)
        owner = principal.isolated_owner if principal is not None else None
        page = await self.queue.list(
            status=statuses, type=types, owner=owner, cursor=cursor, limit=limit
        )
        count = await self._count(statuses, types, owner)
        next_url = None
        if page.next_cursor is not None:
            query = [(k, v) for k, v in request.query_params.multi_items() if k != "cursor"]
            query.append(("cursor", page.next_cursor))
            next_url = f"{_root(request)}/jobs?{urlencode(query)}"
        return JSONResponse(
            {
                "jobs": [job_to_wire(j) for j in page.jobs],
                "count": max(count, len(page.jobs)),
                "next_cursor": page.next_cursor,
                "next": next_url,
            }
        )

    async def _count(
        self, statuses: list[JobStatus] | None, types: list[str] | None, owner: str | None
    ) -> int:
        """How many jobs match: from the store's counts, or by paging an owner's jobs."""
        wanted = statuses or list(JobStatus)
        if owner is None:
            stats = await self.queue.stats()
            if types is None:
                return sum(int(stats.counts.get(s, 0)) for s in wanted)
            return sum(int(stats.by_type.get(t, {}).get(s, 0)) for t in set(types) for s in wanted)
        # Stores count per status and type, not per owner: an isolated principal's
        # count walks its own jobs (bounded by what that owner has).
        total, cursor = 0, None
        while True:
            page = await self.queue.list(
                status=statuses, type=types, owner=owner, cursor=cursor, limit=MAX_LIMIT
            )
            total += len(page.jobs)
            if page.next_cursor is None:
                return total
            cursor = page.next_cursor

    async def get_job(self, request: Request) -> Response:
        """``GET /jobs/{id}``."""
        principal = await require(self.auth, request.scope, READ)
        job = await self._visible_job(principal, request.path_params["job_id"])
        return JSONResponse(job_to_wire(job))

    async def cancel_job(self, request: Request) -> Response:
        """``POST /jobs/{id}/cancel``: 200 with the job (409 when it has finished)."""
        principal = await require(self.auth, request.scope, CANCEL)
        job = await self._visible_job(principal, request.path_params["job_id"])
        job = await self.queue.cancel(job.id)
        return JSONResponse(job_to_wire(job))

    async def delete_job(self, request: Request) -> Response:
        """``DELETE /jobs/{id}``: cancel it if live, then delete it.

        200 with the last snapshot once deleted; 202 with the job when a running job has
        not stopped within a few seconds (it is being cancelled; delete it again later).
        """
        principal = await require(self.auth, request.scope, CANCEL)
        job = await self._visible_job(principal, request.path_params["job_id"])
        try:
            job = await self.queue.delete(job.id, wait=DELETE_WAIT)
        except WaitTimeout:
            return JSONResponse(job_to_wire(await self.queue.get(job.id)), status_code=202)
        return JSONResponse(job_to_wire(job))

    async def clear(self, request: Request) -> Response:
        """``DELETE /jobs?status=completed,failed&type=``: delete finished jobs."""
        principal = await require(self.auth, request.scope, CANCEL)
        statuses = parse_statuses(
            request.query_params.getlist("status"), loc=["query", "status"], terminal_only=True
        )
        types = _query_strings(request, "type")
        owner = principal.isolated_owner if principal is not None else None
        if owner is None:
            deleted = await self.queue.purge(status=statuses, type=types)
        else:
            deleted = await self._clear_owned(owner, statuses, types)
        return JSONResponse({"deleted": deleted})

    async def _clear_owned(
        self, owner: str, statuses: list[JobStatus] | None, types: list[str] | None
    ) -> int:
        deleted = 0
        wanted = statuses or list(TERMINAL)
        while True:
            # Deleting shifts pages, so always read the first page again.
            page = await self.queue.list(status=wanted, type=types, owner=owner, limit=MAX_LIMIT)
            if not page.jobs:
                return deleted
            for job in page.jobs:
                try:
                    await self.queue.delete(job.id)
                except JobNotFound:
                    continue  # someone else deleted it meanwhile
                deleted += 1

    # -- events ------------------------------------------------------------------------

    async def job_events(self, request: Request) -> Response:
        """``GET /jobs/{id}/events``: SSE, snapshot first, ends after the final event."""
        principal = await require(self.auth, request.scope, READ)
        job = await self._visible_job(principal, request.path_params["job_id"])
        stream = event_stream(
            self.queue,
            job_id=job.id,
            last_event_id=request.headers.get("last-event-id"),
            heartbeat=self.heartbeat,
            frames=self.frames,
            hub=self.hub,
        )
        return EventStream(stream)

    async def all_events(self, request: Request) -> Response:
        """``GET /events?type=``: SSE of the whole queue (or one job type)."""
        principal = await require(self.auth, request.scope, READ)
        job_type = request.query_params.get("type") or None
        stream = event_stream(
            self.queue,
            job_type=job_type,
            last_event_id=request.headers.get("last-event-id"),
            heartbeat=self.heartbeat,
            visible=visible_to(principal),
            frames=self.frames,
            hub=self.hub,
        )
        return EventStream(stream)

    # -- about the queue ---------------------------------------------------------------

    async def job_types(self, request: Request) -> Response:
        """``GET /job-types``: each type with its params JSON Schema."""
        await require(self.auth, request.scope, READ)
        return JSONResponse({"job_types": self.queue.registry.describe()})

    async def stats(self, request: Request) -> Response:
        """``GET /stats``: counts per status and per type."""
        await require(self.auth, request.scope, READ)
        body = stats_to_wire(await self.queue.stats())
        body["concurrency"] = self.queue.concurrency
        body["running_here"] = self.queue.running_count()
        return JSONResponse(body)

    async def health(self, request: Request) -> Response:
        """``GET /health``: 200 while the queue is open and its loops are healthy; 503
        while it is closed, or degraded (a loop's store calls fail) with the reasons
        (no auth)."""
        if not self.queue.is_open:
            return JSONResponse(
                {"status": "unavailable", "message": "the queue is not open"}, status_code=503
            )
        health = self.queue.health()
        if health.ok:
            return JSONResponse({"status": "ok"})
        return JSONResponse(
            {"status": "degraded", "problems": [problem_to_wire(p) for p in health.problems]},
            status_code=503,
        )

    async def render_metrics(self, request: Request) -> Response:
        """``GET /metrics``: Prometheus text exposition."""
        await require(self.auth, request.scope, READ)
        return Response(await self.metrics.render(), media_type=CONTENT_TYPE)
