"""The OpenAPI paths and schemas of the operations routes: retry in place, batch
submit, schedules (:mod:`.ops`) and webhooks (:mod:`.webhooks`).

Kept apart from :mod:`.openapi` like :mod:`.openapi_worker`;
:func:`.openapi.openapi_document` merges these in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from asyncjobs.job import JobStatus
from asyncjobs.webhooks import EVENTS

from .ops import MAX_BATCH

__all__ = ["ops_paths", "ops_schemas"]

_REF = "#/components/schemas/"
_TIME: Final = {"type": "string", "format": "date-time"}
_NULLABLE_TIME: Final = {"type": ["string", "null"], "format": "date-time"}
_RETRYABLE: Final = [JobStatus.CANCELLED.value, JobStatus.FAILED.value]
_DELIVERY_STATUSES: Final = ["pending", "delivered", "dead"]

Error = Callable[[str], dict[str, Any]]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _object(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties}


def ops_schemas() -> dict[str, Any]:
    """The request and reply schemas of the operations routes (and ``Run``, an item of
    ``Job.history``)."""
    return {
        "Run": {
            **_object(
                ["status", "attempts"],
                status={"type": "string", "enum": _RETRYABLE},
                attempts={"type": "integer", "minimum": 0},
                error=_ref("JobError"),
                started_at=_NULLABLE_TIME,
                finished_at=_NULLABLE_TIME,
            ),
            "description": "An earlier run of a job retried in place: how it ended.",
        },
        "BatchRequest": {
            **_object(
                ["jobs"],
                jobs={
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_BATCH,
                    "items": _ref("Submission"),
                },
            ),
            "additionalProperties": False,
        },
        "BatchReply": _object(["jobs"], jobs={"type": "array", "items": _ref("Job")}),
        "Retried": _object(["retried"], retried={"type": "integer", "minimum": 0}),
        "Schedule": _object(
            ["name", "type", "params", "cron", "every", "missed", "next_run"],
            name={"type": "string"},
            type={"type": "string"},
            params={"type": "object"},
            cron={"type": ["string", "null"]},
            every={"type": ["number", "null"], "description": "Seconds between ticks."},
            missed={"type": "string", "enum": ["skip", "catch_up"]},
            next_run=_TIME,
        ),
        "WebhookRequest": {
            **_object(
                ["url"],
                url={
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 2048,
                    "description": "An http(s) URL; private and loopback hosts are refused "
                    "(422) unless listed in `ASYNCJOBS_WEBHOOK_ALLOW`.",
                    "examples": ["http://127.0.0.1:9/hook"],
                },
                events={
                    "type": "array",
                    "minItems": 1,
                    "items": {"type": "string", "enum": list(EVENTS)},
                    "description": "All of them by default.",
                },
                secret={
                    "type": ["string", "null"],
                    "minLength": 8,
                    "maxLength": 512,
                    "description": "`whsec_<base64>` or any string; generated when omitted "
                    "or null.",
                },
            ),
            "additionalProperties": False,
        },
        "Webhook": _object(
            ["id", "url", "events", "created_at"],
            id={"type": "string"},
            url={"type": "string"},
            events={"type": "array", "items": {"type": "string", "enum": list(EVENTS)}},
            created_at=_NULLABLE_TIME,
        ),
        "CreatedWebhook": {
            "allOf": [
                _ref("Webhook"),
                _object(
                    ["secret"],
                    secret={"type": "string", "description": "Shown only in this reply."},
                ),
            ]
        },
        "Delivery": _object(
            [
                "id",
                "webhook_id",
                "event",
                "job_id",
                "at",
                "status",
                "attempts",
                "next_at",
                "last_error",
                "delivered_at",
            ],
            id={"type": "string", "description": "The stable `webhook-id` header."},
            webhook_id={"type": "string"},
            event={"type": "string", "enum": list(EVENTS)},
            job_id={"type": "string"},
            at=_TIME,
            status={"type": "string", "enum": _DELIVERY_STATUSES},
            attempts={"type": "integer", "minimum": 0},
            next_at=_NULLABLE_TIME,
            last_error={"type": ["string", "null"]},
            delivered_at=_NULLABLE_TIME,
        ),
    }


def _param(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


def _webhook_paths(
    common: dict[str, Any],
    error: Error,
    not_json: dict[str, Any],
    unknown_query: dict[str, Any],
) -> dict[str, Any]:
    webhook_id = {
        "name": "webhook_id",
        "in": "path",
        "required": True,
        "description": "The webhook's id.",
        "schema": {"type": "string"},
    }
    not_found = {"404": error("No such webhook.")}
    return {
        "/webhooks": {
            "get": {
                "operationId": "listWebhooks",
                "summary": "Registered webhooks, oldest first (admin scope).",
                "responses": {
                    "200": _json(
                        _object(["webhooks"], webhooks={"type": "array", "items": _ref("Webhook")}),
                        "The webhooks (never their secrets).",
                    ),
                    **unknown_query,
                    **common,
                },
            },
            "post": {
                "operationId": "createWebhook",
                "summary": "Register a webhook for job ends (admin scope).",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("WebhookRequest")}},
                },
                "responses": {
                    "201": _json(_ref("CreatedWebhook"), "Registered; the secret is shown once."),
                    **not_json,
                    "422": error(
                        "A bad field or query parameter, or a refused target (a private or "
                        "loopback host not allowed by `ASYNCJOBS_WEBHOOK_ALLOW`, or one that "
                        "does not resolve)."
                    ),
                    **common,
                },
            },
        },
        "/webhooks/{webhook_id}": {
            "parameters": [webhook_id],
            "delete": {
                "operationId": "deleteWebhook",
                "summary": "Remove a webhook and its deliveries (admin scope).",
                "responses": {
                    "204": {"description": "Deleted."},
                    **not_found,
                    **unknown_query,
                    **common,
                },
            },
        },
        "/webhooks/{webhook_id}/deliveries": {
            "parameters": [webhook_id],
            "get": {
                "operationId": "listDeliveries",
                "summary": "A webhook's delivery log, newest first (admin scope).",
                "parameters": [
                    _param(
                        "status",
                        {"type": "string", "enum": _DELIVERY_STATUSES},
                        "Only deliveries in this state.",
                    ),
                    _param(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": 500, "default": 100},
                        "At most this many.",
                    ),
                ],
                "responses": {
                    "200": _json(
                        _object(
                            ["deliveries"], deliveries={"type": "array", "items": _ref("Delivery")}
                        ),
                        "The deliveries.",
                    ),
                    "422": error("A bad `status` or `limit`, or an unknown query parameter."),
                    **not_found,
                    **common,
                },
            },
        },
    }


def ops_paths(
    unauthorized: dict[str, Any], unavailable: dict[str, Any], error: Error
) -> dict[str, Any]:
    """The path items of the operations routes.

    Args:
        unauthorized: The 401/403 responses of a route that needs a scope.
        unavailable: The 503 response while the queue is not open.
        error: Builds an error response from its description.
    """
    common = {**unauthorized, **unavailable}
    job_id = {
        "name": "job_id",
        "in": "path",
        "required": True,
        "description": "The job's id (a 26-character ULID).",
        "schema": {"type": "string", "pattern": "^[0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{26}$"},
    }
    unknown_query = {"422": error("An unknown query parameter.")}
    not_json = {
        "400": error("The body is not JSON, or holds text that is not valid Unicode."),
        "413": error("The body is larger than `max_body`."),
        "415": error("The body is not sent as `Content-Type: application/json`."),
    }
    listed = {"type": "array", "items": {"type": "string"}}
    return {
        "/jobs/batch": {
            "post": {
                "operationId": "submitJobs",
                "summary": "Submit many jobs, all or nothing (submit scope).",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("BatchRequest")}},
                },
                "responses": {
                    "202": _json(_ref("BatchReply"), "Every job stored, in input order."),
                    **not_json,
                    "422": error(
                        "A bad submission; each field error's `loc` starts with "
                        '`["jobs", index]`. Nothing was stored.'
                    ),
                    "429": error("The queue is full."),
                    **common,
                },
            },
        },
        "/jobs/retry": {
            "post": {
                "operationId": "retryJobs",
                "summary": "Retry in place every failed (or cancelled) job (submit scope).",
                "parameters": [
                    _param(
                        "status",
                        {"type": "array", "items": {"type": "string", "enum": _RETRYABLE}},
                        "Which ended jobs to retry (`failed` by default).",
                    ),
                    _param("type", listed, "Only jobs of these types (repeat, or use commas)."),
                ],
                "responses": {
                    "200": _json(_ref("Retried"), "How many jobs were re-queued."),
                    "422": error(
                        "A status other than failed or cancelled, or an unknown parameter."
                    ),
                    **common,
                },
            },
        },
        "/jobs/{job_id}/retry": {
            "parameters": [job_id],
            "post": {
                "operationId": "retryJob",
                "summary": "Re-queue a failed or cancelled job with the same id (submit scope).",
                "description": "The run that ended is kept in the job's `history`.",
                "responses": {
                    "200": _json(_ref("Job"), "The re-queued job."),
                    "400": error(
                        "The job id is malformed (not a 26-character ULID): `invalid_id`."
                    ),
                    "404": error("No such job (or not visible to this token)."),
                    "409": error("The job is live or completed: only failed or cancelled retry."),
                    **unknown_query,
                    **common,
                },
            },
        },
        "/schedules": {
            "get": {
                "operationId": "listSchedules",
                "summary": "The queue's schedules with their next run (read scope).",
                "responses": {
                    "200": _json(
                        _object(
                            ["schedules"], schedules={"type": "array", "items": _ref("Schedule")}
                        ),
                        "The schedules, by name.",
                    ),
                    **unknown_query,
                    **unauthorized,
                },
            },
        },
        **_webhook_paths(common, error, not_json, unknown_query),
    }
