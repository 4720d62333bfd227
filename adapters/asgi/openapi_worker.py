"""The OpenAPI paths and schemas of the remote-worker routes (``/worker/*``).

Kept apart from :mod:`.openapi` so the worker protocol is described next to its own
limits; :func:`.openapi.openapi_document` merges these in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from ..leases import MAX_CLAIM, MAX_LEASE
from .worker import MAX_STRING, MAX_TEXT

__all__ = ["worker_paths", "worker_schemas"]

_REF = "#/components/schemas/"
_TIME: Final = {"type": "string", "format": "date-time"}
_TOKEN: Final = {"type": "string", "minLength": 1, "maxLength": MAX_STRING}
_LEASE: Final = {
    "type": ["number", "null"],
    "exclusiveMinimum": 0,
    "maximum": MAX_LEASE,
    "description": "Seconds the lease lasts from now (default 30).",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _body(schema: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(schema)}}}


def _object(required: list[str], **properties: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "required": required,
        "properties": properties,
        "additionalProperties": False,
    }


def worker_schemas(type_names: Sequence[str] | None = None) -> dict[str, Any]:
    """The request and reply schemas of the worker routes.

    Args:
        type_names: The registered job types; a claim may name only these.
    """
    name: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": MAX_STRING}
    if type_names is not None:
        name = {"type": "string", "enum": list(type_names)}
    return {
        "ClaimRequest": _object(
            ["worker"],
            worker={"type": "string", "minLength": 1, "maxLength": MAX_STRING},
            types={
                "type": ["array", "null"],
                "maxItems": MAX_CLAIM,
                "items": name,
                "description": "Job types to claim (default: every registered type).",
            },
            limit={"type": ["integer", "null"], "minimum": 1, "maximum": MAX_CLAIM, "default": 1},
            wait={
                "type": ["number", "null"],
                "minimum": 0,
                "description": "Long-poll: hold the request up to this many seconds "
                "(capped by the app's max_wait) until a job arrives.",
            },
            lease=_LEASE,
        ),
        "ClaimedJob": _object(
            ["job", "token", "lease_expires_at"],
            job=_ref("Job"),
            token={"type": "string", "description": "The fencing token; send it on every call."},
            lease_expires_at=_TIME,
        ),
        "ClaimReply": _object(["jobs"], jobs={"type": "array", "items": _ref("ClaimedJob")}),
        "LeaseRequest": _object(["token"], token=_TOKEN, lease=_LEASE),
        "ProgressRequest": _object(
            ["token", "progress"],
            token=_TOKEN,
            progress={"type": "number", "minimum": 0, "maximum": 1},
            message={"type": ["string", "null"], "maxLength": MAX_TEXT},
            lease=_LEASE,
        ),
        "LeaseReply": _object(
            ["cancel_requested", "lease_expires_at"],
            cancel_requested={
                "type": "boolean",
                "description": "Someone asked to cancel: stop and call fail (or release).",
            },
            lease_expires_at=_TIME,
        ),
        "CompleteRequest": _object(["token"], token=_TOKEN, result={}),
        "FailRequest": _object(
            ["token", "error"],
            token=_TOKEN,
            error=_object(
                ["type", "message"],
                type={"type": "string", "minLength": 1, "maxLength": MAX_STRING},
                message={"type": "string", "maxLength": MAX_TEXT},
                traceback={"type": ["string", "null"], "maxLength": MAX_TEXT},
            ),
            retry={
                "type": "boolean",
                "default": True,
                "description": "Retry while attempts are left (false: fail for good).",
            },
        ),
        "ReleaseRequest": _object(["token"], token=_TOKEN),
        "JobReply": _object(["job"], job=_ref("Job")),
    }


def worker_paths(
    unauthorized: dict[str, Any], unavailable: dict[str, Any], error: dict[str, Any]
) -> dict[str, Any]:
    """The ``/worker/*`` path items.

    Args:
        unauthorized: The shared 401/403 responses.
        unavailable: The shared 503 response.
        error: A response whose body is the shared error shape.
    """
    job_id = {
        "name": "job_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": "The claimed job's id.",
    }
    fenced = {
        "409": {**error, "description": "`lease_lost`: the token is stale or unknown."},
        "404": {**error, "description": "No such job."},
        "422": {**error, "description": "A bad body (field errors)."},
        "400": {**error, "description": "Malformed JSON."},
        "415": {**error, "description": "The body is not sent as `application/json`."},
        **unauthorized,
        **unavailable,
    }

    def fenced_op(op: str, summary: str, request: str, reply: str) -> dict[str, Any]:
        return {
            "post": {
                "operationId": op,
                "summary": summary,
                "tags": ["worker"],
                "parameters": [job_id],
                "requestBody": _body(request),
                "responses": {"200": _json(_ref(reply), "Done."), **fenced},
            }
        }

    return {
        "/worker/claim": {
            "post": {
                "operationId": "workerClaim",
                "summary": "Claim jobs with a lease (long-poll with `wait`).",
                "tags": ["worker"],
                "requestBody": _body("ClaimRequest"),
                "responses": {
                    "200": _json(_ref("ClaimReply"), "The claimed jobs (empty after `wait`)."),
                    "400": {**error, "description": "Malformed JSON."},
                    "415": {**error, "description": "The body is not sent as `application/json`."},
                    "422": {**error, "description": "A bad body or an unknown job type."},
                    **unauthorized,
                    **unavailable,
                },
            }
        },
        "/worker/jobs/{job_id}/heartbeat": fenced_op(
            "workerHeartbeat", "Extend the lease; learn of a cancel.", "LeaseRequest", "LeaseReply"
        ),
        "/worker/jobs/{job_id}/progress": fenced_op(
            "workerProgress",
            "Report progress and extend the lease.",
            "ProgressRequest",
            "LeaseReply",
        ),
        "/worker/jobs/{job_id}/complete": fenced_op(
            "workerComplete", "End the attempt with a result.", "CompleteRequest", "JobReply"
        ),
        "/worker/jobs/{job_id}/fail": fenced_op(
            "workerFail",
            "End the attempt with an error (retried while attempts are left).",
            "FailRequest",
            "JobReply",
        ),
        "/worker/jobs/{job_id}/release": fenced_op(
            "workerRelease",
            "Give the job back unrun (the attempt is not counted).",
            "ReleaseRequest",
            "JobReply",
        ),
    }
