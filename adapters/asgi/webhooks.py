"""The webhook routes of :class:`~asyncjobs.adapters.asgi.JobsApp` (admin scope).

* ``POST /webhooks`` ``{"url", "events"?, "secret"?}`` -> 201 with the webhook and its
  secret (generated when omitted; the only time the API shows it);
* ``GET /webhooks`` -> ``{"webhooks": [...]}``; ``DELETE /webhooks/{id}`` -> 204;
* ``GET /webhooks/{id}/deliveries?status=pending|delivered|dead&limit=`` ->
  ``{"deliveries": [...]}``, newest first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from asyncjobs.errors import ConfigurationError
from asyncjobs.webhooks import EVENTS, Webhook, WebhookNotFound
from asyncjobs.webhooks.dispatcher import TargetRefused

from .auth import ADMIN, Authenticator, require
from .errors import ApiError
from .http import check_query, read_body
from .wire import invalid, loads

if TYPE_CHECKING:
    from asyncjobs.queue import Queue

__all__ = ["WebhookApi"]

_STATUSES = ("pending", "delivered", "dead")


def _not_found(exc: WebhookNotFound) -> ApiError:
    return ApiError(404, "not_found", str(exc), details={"webhook_id": exc.webhook_id})


@final
class WebhookApi:
    """Route handlers for webhook registration and the delivery log."""

    def __init__(self, queue: Queue, *, auth: Authenticator | None, max_body: int) -> None:
        self.queue = queue
        self.auth = auth
        self.max_body = max_body

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/webhooks", self._dispatch, methods=["GET", "POST"]),
            Route("/webhooks/{webhook_id}", self.delete, methods=["DELETE"]),
            Route("/webhooks/{webhook_id}/deliveries", self.deliveries, methods=["GET"]),
        ]

    async def _dispatch(self, request: Request) -> Response:
        check_query(request, frozenset())
        return await (self.create if request.method == "POST" else self.list)(request)

    async def create(self, request: Request) -> Response:
        await require(self.auth, request.scope, ADMIN)
        body = loads(await read_body(request, self.max_body))
        if not isinstance(body, dict):
            raise invalid([{"loc": [], "msg": "the body must be a JSON object"}])
        errors: list[Any] = [
            {"loc": [k], "msg": "unknown field"}
            for k in sorted(set(body) - {"url", "events", "secret"})
        ]
        url, events, secret = body.get("url"), body.get("events", list(EVENTS)), body.get("secret")
        if not isinstance(url, str) or not 0 < len(url) <= 2048:
            errors.append({"loc": ["url"], "msg": "required: an http(s) URL"})
        if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
            errors.append({"loc": ["events"], "msg": f"must be a list of some of {list(EVENTS)}"})
        if secret is not None and (not isinstance(secret, str) or not 8 <= len(secret) <= 512):
            errors.append({"loc": ["secret"], "msg": "must be a string of 8 to 512 characters"})
        if errors:
            raise invalid(errors, "the webhook is not valid")
        options: dict[str, Any] = {"url": url, "events": events}
        if secret is not None:
            options["secret"] = secret
        try:
            hook = Webhook(**options)
            stored = await self.queue.add_webhook(hook)
        except TargetRefused as exc:
            raise invalid([{"loc": ["url"], "msg": str(exc)}], "the webhook is refused") from None
        except ConfigurationError as exc:
            raise invalid([{"loc": [], "msg": str(exc)}], "the webhook is not valid") from None
        return JSONResponse({**stored.to_wire(), "secret": stored.secret}, status_code=201)

    async def list(self, request: Request) -> Response:
        await require(self.auth, request.scope, ADMIN)
        hooks = await self.queue.list_webhooks()
        return JSONResponse({"webhooks": [h.to_wire() for h in hooks]})

    async def delete(self, request: Request) -> Response:
        await require(self.auth, request.scope, ADMIN)
        check_query(request, frozenset())
        try:
            await self.queue.delete_webhook(request.path_params["webhook_id"])
        except WebhookNotFound as exc:
            raise _not_found(exc) from None
        return Response(status_code=204)

    async def deliveries(self, request: Request) -> Response:
        await require(self.auth, request.scope, ADMIN)
        check_query(request, frozenset({"status", "limit"}))
        status = request.query_params.get("status")
        if status is not None and status not in _STATUSES:
            raise invalid([{"loc": ["query", "status"], "msg": f"use one of {list(_STATUSES)}"}])
        raw = request.query_params.get("limit", "100")
        if not raw.isdigit() or not 1 <= int(raw) <= 500:
            raise invalid([{"loc": ["query", "limit"], "msg": "must be an integer in [1, 500]"}])
        try:
            found = await self.queue.deliveries(
                request.path_params["webhook_id"], status=status, limit=int(raw)
            )
        except WebhookNotFound as exc:
            raise _not_found(exc) from None
        return JSONResponse({"deliveries": [d.to_wire() for d in found]})
