"""The OpenAPI 3.1 document of the HTTP routes (``GET /openapi.json``).

Written by hand next to the routes rather than generated: the routes are few, and the
document is checked by openapi-spec-validator and exercised by schemathesis in tests.
The WebSocket protocol is described in ``info.description`` (OpenAPI has no WebSocket
operations); its messages are in ``docs/websocket.md``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from asyncjobs.job import TERMINAL, JobStatus

from .http import MAX_LIMIT, MAX_WAIT
from .openapi_ops import ops_paths, ops_schemas
from .openapi_worker import worker_paths, worker_schemas
from .wire import MAX_DELAY, MAX_STRING, MAX_TAGS, MAX_TIMEOUT, PRIORITY_RANGE

__all__ = ["openapi_document"]

_REF = "#/components/schemas/"
_STATUSES: Final = [s.value for s in JobStatus]
_FINISHED: Final = sorted(s.value for s in TERMINAL)
_TIME: Final = {"type": "string", "format": "date-time"}
_NULLABLE_TIME: Final = {"type": ["string", "null"], "format": "date-time"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


def _json(schema: dict[str, Any], description: str, **headers: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if headers:
        out["headers"] = {
            name: {"description": text, "schema": {"type": "string"}}
            for name, text in headers.items()
        }
    return out


def _error(description: str, **headers: str) -> dict[str, Any]:
    return _json(_ref("Error"), description, **headers)


_UNAUTHORIZED: Final = {
    "401": _error("No valid bearer token.", **{"WWW-Authenticate": "The bearer challenge."}),
    "403": _error("The token lacks the scope this route needs."),
}
_UNAVAILABLE: Final = {"503": _error("The queue is not open.")}


#: Text every store can hold: no NUL (lone surrogates are not valid JSON text anyway).
_NO_NUL: Final = "^[^\\u0000]*$"
#: Free-form params: any JSON value that every store can hold.
_FREE_FORM: Final = {
    "type": "object",
    "propertyNames": {"pattern": _NO_NUL},
    "additionalProperties": {"$ref": "#/components/schemas/JsonValue"},
}

#: ``delay`` and ``run_at`` exclude each other.
_DELAY_AND_RUN_AT: Final = {"required": ["delay", "run_at"]}


def _options() -> dict[str, Any]:
    """The properties of a submission besides ``type`` and ``params``."""
    lo, hi = PRIORITY_RANGE
    # null means "the default", as if the field were absent.
    return {
        "priority": {"type": ["integer", "null"], "minimum": lo, "maximum": hi},
        "delay": {"type": ["number", "null"], "minimum": 0, "maximum": MAX_DELAY},
        "run_at": {"type": ["string", "null"], "format": "date-time"},
        "timeout": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": MAX_TIMEOUT},
        "max_attempts": {"type": ["integer", "null"], "minimum": 1, "maximum": 1000},
        "idempotency_key": {
            "type": ["string", "null"],
            "minLength": 1,
            "maxLength": MAX_STRING,
            "pattern": _NO_NUL,
        },
        "tags": {
            "type": ["array", "null"],
            "maxItems": MAX_TAGS,
            "items": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_STRING,
                "pattern": _NO_NUL,
            },
        },
    }


def _or_null(schema: Mapping[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _component_name(type_name: str, suffix: str) -> str:
    """``"send-email"`` -> ``"SendEmailSubmission"``: a name code generators can use."""
    words = [w for w in re.split(r"[^0-9A-Za-z]+", type_name) if w]
    stem = "".join(w[:1].upper() + w[1:] for w in words) or "Job"
    if stem[0].isdigit():
        stem = "Type" + stem
    return stem + suffix


def _submission(job_types: Sequence[Mapping[str, Any]] | None) -> dict[str, Any]:
    """The ``Submission`` schema and, per registered job type, ``<Type>Submission`` and
    ``<Type>Params`` components.

    Each type gets named components, referenced from a ``oneOf`` with a discriminator
    on ``type``: code generators (openapi-python-client and others) turn named
    components into classes, and drop or misname inline variants.
    """
    options = _options()
    if not job_types:
        return {
            "Submission": {
                "type": "object",
                "properties": {
                    "type": {"type": "string", "minLength": 1, "maxLength": MAX_STRING},
                    "params": {"type": ["object", "null"]},
                    **options,
                },
                "required": ["type"],
                "additionalProperties": False,
                "not": _DELAY_AND_RUN_AT,
            }
        }
    components: dict[str, Any] = {}
    mapping: dict[str, str] = {}
    for job_type in job_types:
        name = str(job_type["name"])
        submission, params_name = (_component_name(name, s) for s in ("Submission", "Params"))
        while submission in components or params_name in components:  # "a-b" and "a_b"
            submission, params_name = submission + "_", params_name + "_"
        params = {k: v for k, v in job_type["params_schema"].items() if k != "$schema"}
        if params == {"type": "object", "additionalProperties": True}:
            params = dict(_FREE_FORM)  # what a plain-dict type takes, stated exactly
        params["title"] = params_name
        components[params_name] = params
        params_ref = _ref(params_name)
        components[submission] = {
            "title": submission,
            "description": f"A `{name}` job."
            + (f" {d}" if (d := job_type.get("description")) else ""),
            "type": "object",
            "properties": {
                "type": {"type": "string", "const": name},
                # null params mean "all defaults", which only works without required fields
                "params": params_ref if params.get("required") else _or_null(params_ref),
                **options,
            },
            "required": ["type", "params"] if params.get("required") else ["type"],
            "additionalProperties": False,
            "not": _DELAY_AND_RUN_AT,
        }
        mapping[name] = _REF + submission
    components["Submission"] = {
        "oneOf": [{"$ref": ref} for ref in mapping.values()],
        "discriminator": {"propertyName": "type", "mapping": mapping},
    }
    return components


def _schemas(job_types: Sequence[Mapping[str, Any]] | None) -> dict[str, Any]:
    return {
        "JsonValue": {
            "description": "A JSON value every store can hold: no NUL in text, numbers "
            "within a double's range, at most 64 levels deep.",
            "anyOf": [
                {"type": ["null", "boolean", "number"]},
                {"type": "string", "pattern": _NO_NUL},
                {"type": "array", "items": {"$ref": "#/components/schemas/JsonValue"}},
                _FREE_FORM,
            ],
        },
        "JobError": {
            "type": ["object", "null"],
            "properties": {
                "type": {"type": "string"},
                "message": {"type": "string"},
                "traceback": {"type": ["string", "null"]},
            },
            "required": ["type", "message"],
        },
        "Job": {
            "type": "object",
            "properties": {
                "id": {"type": "string", "description": "A ULID: 26 characters, sortable."},
                "type": {"type": "string"},
                "params": {"type": "object"},
                "status": {"type": "string", "enum": _STATUSES},
                "priority": {"type": "integer"},
                "progress": {"type": "number", "minimum": 0, "maximum": 1},
                "message": {"type": ["string", "null"]},
                "result": {},
                "error": _ref("JobError"),
                "attempts": {"type": "integer", "minimum": 0},
                "max_attempts": {"type": "integer", "minimum": 1},
                "created_at": _TIME,
                "run_at": _TIME,
                "started_at": _NULLABLE_TIME,
                "finished_at": _NULLABLE_TIME,
                "timeout": {"type": ["number", "null"]},
                "tags": {"type": "array", "items": {"type": "string"}},
                "cancel_requested": {"type": "boolean"},
                "history": {
                    "type": "array",
                    "items": _ref("Run"),
                    "description": "Earlier runs, oldest first (a retry in place adds one).",
                },
                "version": {"type": "integer", "minimum": 1},
            },
            "required": ["id", "type", "params", "status", "progress", "version"],
        },
        "JobEvent": {
            "type": "object",
            "description": "The `data:` of an SSE frame; its `id:` is `seq`.",
            "properties": {
                "type": {"type": "string"},
                "seq": {"type": "integer", "minimum": 0},
                "at": _TIME,
                "job": _ref("Job"),
            },
            "required": ["type", "seq", "at", "job"],
        },
        **_submission(job_types),
        "JobPage": {
            "type": "object",
            "properties": {
                "jobs": {"type": "array", "items": _ref("Job")},
                "count": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "How many jobs match the filters, on every page.",
                },
                "next_cursor": {"type": ["string", "null"]},
                "next": {"type": ["string", "null"], "description": "URL of the next page."},
            },
            "required": ["jobs", "count", "next_cursor", "next"],
        },
        "JobType": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "description": {"type": ["string", "null"]},
                "params_schema": {"type": "object", "description": "JSON Schema 2020-12."},
                "timeout": {"type": ["number", "null"]},
                "max_attempts": {"type": "integer"},
                "priority": {"type": "integer"},
                "concurrency": {"type": ["integer", "null"]},
            },
            "required": ["name", "params_schema"],
        },
        "Counts": {
            "type": "object",
            "properties": {s: {"type": "integer", "minimum": 0} for s in _STATUSES},
            "required": _STATUSES,
        },
        "Stats": {
            "type": "object",
            "properties": {
                "counts": _ref("Counts"),
                "by_type": {"type": "object", "additionalProperties": _ref("Counts")},
                "total": {"type": "integer", "minimum": 0},
                "concurrency": {"type": "integer", "minimum": 0},
                "running_here": {"type": "integer", "minimum": 0},
            },
            "required": ["counts", "by_type", "total"],
        },
        "Worker": {
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "host": {"type": "string"},
                "pid": {"type": "integer"},
                "types": {"type": "array", "items": {"type": "string"}},
                "slots": {"type": "integer", "minimum": 0},
                "running": {"type": "array", "items": {"type": "string"}},
                "started_at": _TIME,
                "last_heartbeat": _TIME,
                "expires_at": _TIME,
            },
            "required": [
                "id",
                "host",
                "pid",
                "types",
                "slots",
                "running",
                "started_at",
                "last_heartbeat",
                "expires_at",
            ],
        },
        "Health": {
            "type": "object",
            "properties": {
                "status": {"type": "string", "enum": ["ok", "degraded", "unavailable"]},
                "message": {"type": "string"},
                "problems": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "loop": {"type": "string"},
                            "reason": {"type": "string"},
                            "since": _TIME,
                            "failures": {"type": "integer", "minimum": 0},
                        },
                        "required": ["loop", "reason", "since", "failures"],
                    },
                },
            },
            "required": ["status"],
        },
        "Error": {
            "type": "object",
            "properties": {
                "error": {
                    "type": "object",
                    "properties": {
                        "code": {"type": "string"},
                        "message": {"type": "string"},
                        "details": {},
                    },
                    "required": ["code", "message", "details"],
                }
            },
            "required": ["error"],
        },
    }


def _param(
    name: str,
    where: str,
    schema: dict[str, Any],
    description: str,
    *,
    required: bool = False,
    explode: bool | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": name,
        "in": where,
        "required": required,
        "description": description,
        "schema": schema,
    }
    if explode is not None:
        out["explode"] = explode
    return out


#: A job id: a ULID (26 characters of Crockford's base32).
_ULID: Final = {"type": "string", "pattern": "^[0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{26}$"}
_JOB_ID: Final = _param(
    "job_id", "path", _ULID, "The job's id (a 26-character ULID).", required=True
)
_LAST_EVENT_ID: Final = _param(
    "Last-Event-ID",
    "header",
    {"type": "string"},
    "The `id:` of the last frame seen; older live events are skipped.",
)
_SSE: Final = {
    "description": "An event stream: a `: connected` comment, snapshots (no `id:`), then events "
    "(`id:` = seq, `data:` = JobEvent JSON), with `: ping` comments.",
    "content": {
        "text/event-stream": {"schema": {"type": "string"}, "x-data-schema": _ref("JobEvent")}
    },
}


def _paths(dashboard: bool) -> dict[str, Any]:
    status_filter = _param(
        "status",
        "query",
        {"type": "array", "items": {"type": "string", "enum": _STATUSES}},
        "Only jobs in these statuses (repeat, or separate with commas).",
    )
    type_filter = _param(
        "type",
        "query",
        {"type": "array", "items": {"type": "string"}},
        "Only jobs of these types (repeat, or separate with commas).",
    )
    job_404 = {
        "400": _error("The job id is malformed (not a 26-character ULID): `invalid_id`."),
        "404": _error("No such job (or not visible to this token)."),
    }
    job_ok = {"200": _json(_ref("Job"), "The job.")}
    paths: dict[str, Any] = {
        "/jobs": {
            "get": {
                "operationId": "listJobs",
                "summary": "List jobs, newest first.",
                "parameters": [
                    status_filter,
                    type_filter,
                    _param("cursor", "query", _ULID, "The last page's `next_cursor`."),
                    _param(
                        "limit",
                        "query",
                        {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 50},
                        "Page size.",
                    ),
                ],
                "responses": {
                    "200": _json(_ref("JobPage"), "One page of jobs."),
                    "422": _error("A bad filter or cursor, or an unknown query parameter."),
                    **_UNAUTHORIZED,
                    **_UNAVAILABLE,
                },
            },
            "post": {
                "operationId": "submitJob",
                "summary": "Submit a job.",
                "parameters": [
                    _param(
                        "wait",
                        "query",
                        {"type": "number", "minimum": 0},
                        "Hold the request until the job ends, at most this many seconds "
                        f"(longer waits are cut to the app's max_wait, {MAX_WAIT:g} by default).",
                    ),
                    _param(
                        "Idempotency-Key",
                        "header",
                        {"type": "string", "minLength": 1, "maxLength": MAX_STRING},
                        "Used when the body has no `idempotency_key`.",
                    ),
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("Submission")}},
                },
                "responses": {
                    "200": _json(
                        _ref("Job"),
                        "With `?wait`: the job finished in time.",
                        Location="The job's URL.",
                    ),
                    "202": _json(
                        _ref("Job"),
                        "Accepted: the job is stored and will run.",
                        Location="The job's URL.",
                    ),
                    "400": _error("The body is not JSON, or holds text that is not valid Unicode."),
                    "413": _error("The body is larger than `max_body`."),
                    "415": _error("The body is not sent as `Content-Type: application/json`."),
                    "422": _error(
                        "Unknown job type, bad params or bad options (field errors in `details`)."
                    ),
                    "429": _error("The queue is full.", **{"Retry-After": "Seconds to wait."}),
                    **_UNAUTHORIZED,
                    **_UNAVAILABLE,
                },
            },
            "delete": {
                "operationId": "clearJobs",
                "summary": "Delete finished jobs.",
                "parameters": [
                    _param(
                        "status",
                        "query",
                        {"type": "array", "items": {"type": "string", "enum": _FINISHED}},
                        "Finished statuses to delete (all finished ones by default).",
                    ),
                    type_filter,
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {"deleted": {"type": "integer"}},
                            "required": ["deleted"],
                        },
                        "How many jobs were deleted.",
                    ),
                    "422": _error("A live or unknown status."),
                    **_UNAUTHORIZED,
                    **_UNAVAILABLE,
                },
            },
        },
        "/jobs/{job_id}": {
            "parameters": [_JOB_ID],
            "get": {
                "operationId": "getJob",
                "summary": "One job.",
                "responses": {**job_ok, **job_404, **_UNAUTHORIZED, **_UNAVAILABLE},
            },
            "delete": {
                "operationId": "deleteJob",
                "summary": "Delete a job, cancelling it if live.",
                "responses": {
                    "200": _json(_ref("Job"), "Deleted; the last snapshot."),
                    "202": _json(_ref("Job"), "Being cancelled; it did not stop in time."),
                    **job_404,
                    **_UNAUTHORIZED,
                    **_UNAVAILABLE,
                },
            },
        },
        "/jobs/{job_id}/cancel": {
            "parameters": [_JOB_ID],
            "post": {
                "operationId": "cancelJob",
                "summary": "Cancel a job.",
                "responses": {
                    **job_ok,
                    **job_404,
                    "409": _error("The job has finished already."),
                    **_UNAUTHORIZED,
                    **_UNAVAILABLE,
                },
            },
        },
        "/jobs/{job_id}/events": {
            "parameters": [_JOB_ID],
            "get": {
                "operationId": "jobEvents",
                "summary": "SSE of one job; ends after its end.",
                "parameters": [_LAST_EVENT_ID],
                "responses": {"200": _SSE, **job_404, **_UNAUTHORIZED, **_UNAVAILABLE},
            },
        },
        "/events": {
            "get": {
                "operationId": "allEvents",
                "summary": "SSE of the whole queue.",
                "parameters": [
                    _LAST_EVENT_ID,
                    _param("type", "query", {"type": "string"}, "One job type."),
                ],
                "responses": {"200": _SSE, **_UNAUTHORIZED, **_UNAVAILABLE},
            },
        },
        "/job-types": {
            "get": {
                "operationId": "listJobTypes",
                "summary": "Job types and params schemas.",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["job_types"],
                            "properties": {
                                "job_types": {"type": "array", "items": _ref("JobType")}
                            },
                        },
                        "The registered job types.",
                    ),
                    **_UNAUTHORIZED,
                },
            },
        },
        "/stats": {
            "get": {
                "operationId": "getStats",
                "summary": "Counts per status and type.",
                "responses": {
                    "200": _json(_ref("Stats"), "Counts."),
                    **_UNAUTHORIZED,
                    **_UNAVAILABLE,
                },
            },
        },
        "/workers": {
            "get": {
                "operationId": "listWorkers",
                "summary": "Live workers of every process (the worker registry).",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["workers"],
                            "properties": {"workers": {"type": "array", "items": _ref("Worker")}},
                        },
                        "Every live worker of every process sharing the store.",
                    ),
                    **_UNAUTHORIZED,
                    **_UNAVAILABLE,
                },
            },
        },
        "/health": {
            "get": {
                "operationId": "health",
                "summary": "Liveness; no auth.",
                "security": [],
                "responses": {
                    "200": _json(_ref("Health"), 'The queue is open and healthy (`"ok"`).'),
                    "503": _json(
                        _ref("Health"),
                        'The queue is not open (`"unavailable"`), or `"degraded"`: a loop\'s '
                        "store calls fail (`problems` names each).",
                    ),
                },
            },
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus text exposition.",
                "responses": {
                    "200": {
                        "description": "Metrics",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_UNAUTHORIZED,
                    **_UNAVAILABLE,
                },
            },
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document.",
                "security": [],
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1.")},
            },
        },
        "/docs": {
            "get": {
                "operationId": "docs",
                "summary": "Interactive API docs (Swagger UI, no CDN).",
                "security": [],
                "responses": {
                    "200": {
                        "description": "The docs page.",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    },
                    "404": _error("The Swagger UI assets are not installed."),
                },
            },
        },
        "/docs/assets/{name}": {
            "parameters": [
                _param("name", "path", {"type": "string"}, "The asset's file name.", required=True)
            ],
            "get": {
                "operationId": "docsAsset",
                "summary": "A file of the docs page.",
                "security": [],
                "responses": {
                    "200": {
                        "description": "The file.",
                        "content": {"*/*": {"schema": {"type": "string"}}},
                    },
                    "404": _error("No such asset."),
                },
            },
        },
        "/": {
            "get": {
                "operationId": "index",
                "security": [],
                "summary": "The dashboard (HTML)" if dashboard else "Links to the API.",
                "responses": (
                    {
                        "200": {
                            "description": "The dashboard page.",
                            "content": {"text/html": {"schema": {"type": "string"}}},
                        },
                        "404": _error("The dashboard files are missing."),
                    }
                    if dashboard
                    else {"200": _json({"type": "object"}, "Links.")}
                ),
            },
        },
    }
    return paths


def _type_names(job_types: Sequence[Mapping[str, Any]] | None) -> list[str] | None:
    return None if job_types is None else [str(t["name"]) for t in job_types]


_DESCRIPTION: Final = """Submit, watch, cancel and clear jobs. Live updates come from the SSE
routes below and from the WebSocket.

## WebSocket `/ws`

`ws(s)://<host><mount>/ws` (a browser that cannot set headers passes
`?access_token=<token>`). OpenAPI cannot describe a WebSocket, so here is the protocol:

- On connect the server sends **`queue_state`** first:
  `{"type": "queue_state", "jobs": [Job...], "stats": Stats, "job_types": [JobType...]}`
  (and `"workers": [...]` where the store registers workers).
- Then every **JobEvent** as it happens: `{"type": "job_created" | "job_started" |
  "job_progress" | "job_retrying" | "job_completed" | "job_failed" | "job_cancelled" |
  "job_deleted", "seq", "at", "job": Job}`.
- The client may send (each gets a reply; a malformed one gets `{"type": "error", ...}`):
  - `{"type": "create_job", "job_type": "...", "params": {...}, "priority"?, "delay"?}`
  - `{"type": "cancel_job", "job_id": "..."}`
  - `{"type": "clear_completed"}`
  - `{"type": "get_state"}` (a fresh `queue_state`)
  - `{"type": "subscribe", "job_id"?: "...", "job_type"?: "..."}` (narrow the events)

The `Job`, `JobEvent`, `Stats` and `JobType` schemas are in the Schemas section below.
"""


def openapi_document(
    *,
    root_path: str = "",
    dashboard: bool = True,
    secured: bool = True,
    job_types: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The OpenAPI 3.1 document, with ``servers`` set to the mount point.

    Args:
        root_path: The mount prefix (``"/queue"``), or ``""`` when served alone.
        dashboard: Whether ``/`` serves the dashboard or a JSON index.
        secured: Whether routes need a bearer token (an authenticator is configured).
        job_types: ``registry.describe()``; each type's params schema then describes the
            body of ``POST /jobs``.
    """
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "asyncjobs",
            "version": "1",
            "description": _DESCRIPTION,
        },
        "servers": [{"url": root_path or "/"}],
        "paths": {
            **_paths(dashboard),
            # The remote-worker protocol, described in its own module.
            **worker_paths(_UNAUTHORIZED, _UNAVAILABLE, _error("An error.")),
            # Retry, batch submit, schedules and webhooks, likewise.
            **ops_paths(_UNAUTHORIZED, _UNAVAILABLE, _error),
        },
        "components": {
            "schemas": {
                **_schemas(job_types),
                **worker_schemas(_type_names(job_types)),
                **ops_schemas(),
            },
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "accessToken": {"type": "apiKey", "in": "query", "name": "access_token"},
            },
        },
    }
    if secured:
        document["security"] = [{"bearer": []}, {"accessToken": []}]
    return document
