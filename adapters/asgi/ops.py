"""The operations routes of :class:`~asyncjobs.adapters.asgi.JobsApp`: retry in place
and batch submit.

* ``POST /jobs/{id}/retry`` re-queues a failed or cancelled job with the same id (200
  with the job; 409 when it is live or completed).
* ``POST /jobs/retry?status=failed&type=...`` retries every match: ``{"retried": n}``.
* ``GET /schedules`` lists the queue's schedules with their next run.
* ``POST /jobs/batch`` ``{"jobs": [submission, ...]}`` -> 202 ``{"jobs": [...]}``, all or
  nothing: a bad submission is a 422 whose field errors start with ``["jobs", index]``.

Retrying is submitting work again, so these routes need the ``submit`` scope; with
per-owner isolation a principal retries only its own jobs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, final

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from asyncjobs.codec import job_to_wire
from asyncjobs.errors import FieldError, InvalidSubmission, JobNotFound
from asyncjobs.job import JobStatus

from .auth import READ, SUBMIT, Authenticator, require
from .errors import ApiError
from .http import check_query, read_body, visible_to
from .wire import check_job_id, invalid, loads, parse_statuses, parse_submission

if TYPE_CHECKING:
    from asyncjobs.queue import Queue

__all__ = ["MAX_BATCH", "OpsApi"]

#: The most submissions one ``POST /jobs/batch`` may carry.
MAX_BATCH: Final = 1000
_RETRYABLE: Final = frozenset({JobStatus.FAILED, JobStatus.CANCELLED})
_NONE: Final[frozenset[str]] = frozenset()


Endpoint = Callable[[Request], Awaitable[Response]]
_EVERY_METHOD: Final = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def _post_only(endpoint: Endpoint) -> Endpoint:
    async def only(request: Request) -> Response:
        if request.method != "POST":
            raise HTTPException(
                405, f"{request.method} is not allowed here; use POST", {"Allow": "POST"}
            )
        return await endpoint(request)

    return only


@final
class OpsApi:
    """Route handlers for retry in place and batch submit.

    Args:
        queue: The queue behind the routes.
        auth: The authenticator, or ``None`` to allow everything.
        max_body: The largest request body accepted, in bytes.
    """

    def __init__(self, queue: Queue, *, auth: Authenticator | None, max_body: int) -> None:
        self.queue = queue
        self.auth = auth
        self.max_body = max_body

    def routes(self) -> list[BaseRoute]:
        """The Starlette routes, relative to the mount point."""
        # Every method, so that GET /jobs/batch is 405 rather than GET /jobs/{id} with
        # the id "batch" (Starlette tries later routes when only the method differs).
        return [
            Route("/jobs/batch", _post_only(self.submit_batch), methods=_EVERY_METHOD),
            Route("/jobs/retry", _post_only(self.retry_many), methods=_EVERY_METHOD),
            Route("/jobs/{job_id}/retry", self.retry_job, methods=["POST"]),
            Route("/schedules", self.schedules, methods=["GET"]),
        ]

    async def schedules(self, request: Request) -> Response:
        """``GET /schedules``: the queue's schedules with their next run (read scope)."""
        await require(self.auth, request.scope, READ)
        check_query(request, _NONE)
        now = self.queue.clock()
        items = sorted(self.queue.schedules.values(), key=lambda s: s.name)
        return JSONResponse({"schedules": [s.to_wire(now) for s in items]})

    async def retry_job(self, request: Request) -> Response:
        """``POST /jobs/{id}/retry``: 200 with the re-queued job."""
        principal = await require(self.auth, request.scope, SUBMIT)
        check_query(request, _NONE)
        job_id = check_job_id(request.path_params["job_id"])
        job = await self.queue.get(job_id)
        visible = visible_to(principal)
        if visible is not None and not visible(job):
            raise JobNotFound(job_id)
        return JSONResponse(job_to_wire(await self.queue.retry(job.id)))

    async def retry_many(self, request: Request) -> Response:
        """``POST /jobs/retry?status=failed,cancelled&type=``: ``{"retried": n}``."""
        principal = await require(self.auth, request.scope, SUBMIT)
        check_query(request, frozenset({"status", "type"}))
        statuses = parse_statuses(request.query_params.getlist("status"), loc=["query", "status"])
        statuses = statuses or [JobStatus.FAILED]
        if any(s not in _RETRYABLE for s in statuses):
            raise invalid(
                [{"loc": ["query", "status"], "msg": "only failed or cancelled jobs retry"}]
            )
        types = [
            p.strip() for v in request.query_params.getlist("type") for p in v.split(",")
        ] or None
        owner = principal.isolated_owner if principal is not None else None
        retried = await self.queue.retry_many(status=statuses, type=types, owner=owner)
        return JSONResponse({"retried": len(retried)})

    async def submit_batch(self, request: Request) -> Response:
        """``POST /jobs/batch``: 202 with the jobs, in input order."""
        principal = await require(self.auth, request.scope, SUBMIT)
        check_query(request, _NONE)
        body = loads(await read_body(request, self.max_body))
        if (
            not isinstance(body, dict)
            or set(body) != {"jobs"}
            or not isinstance(body["jobs"], list)
        ):
            raise invalid([{"loc": ["jobs"], "msg": 'send {"jobs": [submission, ...]}'}])
        items: list[Any] = body["jobs"]
        if not 1 <= len(items) <= MAX_BATCH:
            raise invalid([{"loc": ["jobs"], "msg": f"send 1 to {MAX_BATCH} submissions"}])
        owner = principal.owner if principal is not None else None
        errors: list[FieldError] = []
        submissions: list[dict[str, Any]] = []
        for index, item in enumerate(items):
            try:
                job_type, kwargs = parse_submission(item)
            except ApiError as exc:
                errors += [
                    {"loc": ["jobs", index, *e["loc"]], "msg": e["msg"]} for e in exc.details
                ]
                continue
            submissions.append({"type": job_type, "owner": owner, **kwargs})
        if errors:
            raise invalid(errors, "the batch is not valid; nothing was stored")
        try:
            jobs = await self.queue.submit_many(submissions)
        except InvalidSubmission as exc:
            raise invalid(
                [{"loc": ["jobs", *e["loc"]], "msg": e["msg"]} for e in exc.errors],
                "the batch is not valid; nothing was stored",
            ) from None
        return JSONResponse({"jobs": [job_to_wire(j) for j in jobs]}, status_code=202)
