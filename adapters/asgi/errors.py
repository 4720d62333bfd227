"""One error shape for every transport: ``{"error": {"code", "message", "details"}}``.

Each core exception class maps to exactly one HTTP status here; the adapter's own
failures (malformed JSON, a body over the limit, a missing token) are :class:`ApiError`.
The WebSocket handler reuses :func:`error_payload` so that a client sees the same
``code`` whichever transport it speaks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final, final

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from asyncjobs import errors as core

__all__ = [
    "STATUS_BY_ERROR",
    "ApiError",
    "error_payload",
    "error_response",
    "status_for",
]

#: Core exception class -> HTTP status. The first matching class (in MRO order) wins.
STATUS_BY_ERROR: Final[Mapping[type[core.AsyncJobsError], int]] = {
    core.JobNotFound: 404,
    core.UnknownJobType: 422,
    core.InvalidParams: 422,
    core.InvalidSubmission: 422,
    core.IllegalTransition: 409,
    core.LeaseLost: 409,
    core.QueueFull: 429,
    core.WaitTimeout: 202,
    # A closed or misconfigured queue: the service cannot answer now, the request was fine.
    core.ConfigurationError: 503,
}


@final
class ApiError(Exception):
    """An error the adapter itself raises: it carries its status, code and details.

    Args:
        status: The HTTP status to answer with.
        code: A stable, machine-readable code (``"malformed_json"``).
        message: A sentence for humans that says what to do next.
        details: Field errors or other structured context (JSON).
        headers: Extra response headers (``WWW-Authenticate``, ``Retry-After``).
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = dict(headers or {})


def status_for(exc: BaseException) -> int:
    """The HTTP status for an exception (500 when it is not one we expect)."""
    if isinstance(exc, ApiError):
        return exc.status
    if isinstance(exc, HTTPException):
        return exc.status_code
    for cls in type(exc).__mro__:
        status = STATUS_BY_ERROR.get(cls)
        if status is not None:
            return status
    return 500


def _details(exc: BaseException) -> Any:
    if isinstance(exc, ApiError):
        return exc.details
    if isinstance(exc, core.InvalidParams | core.InvalidSubmission):
        return exc.errors
    if isinstance(exc, core.UnknownJobType):
        return {"job_type": exc.name, "known": list(exc.known)}
    if isinstance(exc, core.JobNotFound):
        return {"job_id": exc.job_id}
    if isinstance(exc, core.IllegalTransition):
        return {"job_id": exc.job_id, "from": exc.from_status, "to": exc.to_status}
    if isinstance(exc, core.QueueFull):
        return {"limit": exc.limit, "retry_after": exc.retry_after}
    return None


_HTTP_CODES: Final[Mapping[int, str]] = {
    404: "not_found",
    405: "method_not_allowed",
}


def error_payload(exc: BaseException) -> dict[str, Any]:
    """The JSON body for ``exc``: ``{"error": {"code", "message", "details"}}``."""
    if isinstance(exc, ApiError):
        code, message = exc.code, exc.message
    elif isinstance(exc, core.AsyncJobsError):
        code, message = exc.code, str(exc)
    elif isinstance(exc, HTTPException):
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        message = exc.detail
    else:
        # Never echo an unexpected exception's text: it may hold internals.
        code, message = "internal_error", "the server failed to handle this request"
    return {"error": {"code": code, "message": message, "details": _details(exc)}}


def _headers(exc: BaseException) -> dict[str, str]:
    headers: dict[str, str] = {}
    if isinstance(exc, ApiError | HTTPException):
        headers.update(exc.headers or {})
    elif isinstance(exc, core.QueueFull):
        # Retry-After takes whole seconds; round up so clients never retry early.
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    return headers


def error_response(exc: BaseException) -> JSONResponse:
    """A JSON response carrying ``exc`` in the shared error shape and status."""
    return JSONResponse(error_payload(exc), status_code=status_for(exc), headers=_headers(exc))


async def handle_exception(request: Request, exc: Exception) -> Response:
    """Starlette exception handler: every error leaves in the shared shape."""
    return error_response(exc)
