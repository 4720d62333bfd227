"""JobsApp: the REST, SSE, WebSocket and dashboard routes as one mountable ASGI app."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, final

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from asyncjobs.errors import AsyncJobsError

from .auth import Authenticator
from .docs import docs_routes
from .errors import ApiError, handle_exception
from .http import MAX_WAIT, HttpApi
from .metrics import QueueMetrics
from .openapi import openapi_document
from .ops import OpsApi
from .security import (
    normalize_origin,
    origin_allowed,
    refuse_origin,
    with_security_headers,
)
from .sse import BODY_SEND
from .webhooks import WebhookApi
from .websocket import serve_websocket
from .worker import WorkerApi

if TYPE_CHECKING:
    from asyncjobs.queue import Queue

__all__ = ["STATIC_DIR", "JobsApp"]

logger = logging.getLogger("asyncjobs.adapters.asgi")

#: Where the dashboard's files live (``index.html``, ``app.js``, ``style.css``).
STATIC_DIR: Final = Path(__file__).parent / "static"


def _route_path(scope: Scope) -> str:
    # Starlette mounts keep the full path and grow root_path; some hosts (and ASGI
    # servers run with --root-path) strip the prefix from path instead. Routing on
    # "path minus root_path when path starts with it" handles both.
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root) :]
    return path


def _full_path(scope: Scope) -> Scope:
    # Starlette (and so every route and the static files inside) expects `path` to
    # include `root_path`. Hosts that strip the prefix from `path` (Litestar mounts,
    # some proxies) get it put back, so both conventions route the same way.
    root: str = scope.get("root_path", "")
    path: str = scope["path"]
    if root and _route_path(scope) is path:
        return {**scope, "path": root.rstrip("/") + path}
    return scope


@final
class JobsApp:
    """REST, Server-Sent Events, WebSocket and the dashboard for one queue.

    A plain ASGI app: mount it under any prefix or serve it alone. It routes on the
    request path minus ``root_path`` and emits every URL with ``root_path``. It does
    not need lifespan events: the host starts the queue (``lifespan=queue.lifespan``
    or ``async with queue``). Served alone, it opens the queue from its own lifespan
    when the queue is not open yet.

    Args:
        queue: The queue to expose.
        auth: Who may do what (for example :class:`BearerTokens`); ``None`` allows
            everyone everything, and a warning is logged once.
        max_body: The largest request body accepted, in bytes (413 above it).
        dashboard: Serve the dashboard at the mount root (``/``) and its files under
            ``/static/``.
        heartbeat: Seconds between SSE comment frames and WebSocket pings.
        max_wait: The longest synchronous submit (``POST /jobs?wait=``) in seconds;
            longer waits are cut to it, so no request is held without bound.
        allowed_origins: Browser origins (``"https://app.example.com"``) besides the
            app's own that may open the WebSocket and send state-changing requests.
    """

    def __init__(
        self,
        queue: Queue,
        *,
        auth: Authenticator | None = None,
        max_body: int = 1_048_576,
        dashboard: bool = True,
        heartbeat: float = 15.0,
        max_wait: float = MAX_WAIT,
        allowed_origins: Iterable[str] = (),
    ) -> None:
        if max_body < 1:
            raise ValueError("max_body must be at least 1 byte")
        if heartbeat <= 0:
            raise ValueError("heartbeat must be a positive number of seconds")
        if max_wait < 0:
            raise ValueError("max_wait must be zero or more seconds")
        origins = []
        for origin in allowed_origins:
            normalized = normalize_origin(origin)
            if normalized is None:
                raise ValueError(f"not an origin: {origin!r}; use scheme://host[:port]")
            origins.append(normalized)
        self.allowed_origins: tuple[str, ...] = tuple(origins)
        self.queue = queue
        self.auth = auth
        self.max_body = max_body
        self.dashboard = dashboard
        self.heartbeat = heartbeat
        self.metrics = QueueMetrics(queue)
        self.api = HttpApi(
            queue,
            auth=auth,
            max_body=max_body,
            heartbeat=heartbeat,
            metrics=self.metrics,
            max_wait=max_wait,
        )
        self.ops = OpsApi(queue, auth=auth, max_body=max_body)
        self.webhooks = WebhookApi(queue, auth=auth, max_body=max_body)
        self.workers = WorkerApi(queue, auth=auth, max_body=max_body, max_wait=max_wait)
        self._warned = False
        # A store listener, not a task: it counts events from now on and needs no lifespan.
        self.metrics.attach()
        handlers: Any = {
            ApiError: handle_exception,
            AsyncJobsError: handle_exception,
            HTTPException: handle_exception,
            Exception: handle_exception,
        }
        self._app = Starlette(routes=self._routes(), exception_handlers=handlers)

    def _routes(self) -> list[BaseRoute]:
        # The operations routes first: /jobs/batch and /jobs/retry are not job ids.
        routes = self.ops.routes() + self.webhooks.routes() + self.api.routes()
        routes += self.workers.routes()
        routes += [
            Route("/openapi.json", self._openapi, methods=["GET"]),
            *docs_routes(STATIC_DIR),
            WebSocketRoute("/ws", self._websocket),
            Route("/", self._index, methods=["GET"]),
        ]
        if self.dashboard:
            routes.append(Mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False)))
        return routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._first_call()
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] in ("http", "websocket"):
            scope = _full_path(scope)
        if scope["type"] == "http":
            # Event streams send their body past the wrappers below (see BODY_SEND).
            scope = {**scope, BODY_SEND: send}
            send = with_security_headers(send)
            if not origin_allowed(scope, self.allowed_origins):
                await refuse_origin(scope, receive, send)
                return
        if scope["type"] == "http" and self._needs_slash(scope):
            # "/queue" -> "/queue/": the dashboard's relative links need the slash.
            root = scope.get("root_path", "")
            query = scope.get("query_string", b"").decode("latin-1")
            response = RedirectResponse(f"{root}/" + (f"?{query}" if query else ""), 307)
            await response(scope, receive, send)
            return
        await self._app(scope, receive, send)

    @staticmethod
    def _needs_slash(scope: Scope) -> bool:
        route = _route_path(scope)
        if route == "":
            return True
        # Hosts that strip the prefix (Litestar) hand us "/" for both "/queue" and
        # "/queue/"; the raw path still tells them apart.
        raw = scope.get("raw_path")
        return route == "/" and isinstance(raw, bytes) and bool(raw) and not raw.endswith(b"/")

    def _first_call(self) -> None:
        if self._warned:
            return
        self._warned = True
        if self.auth is None:
            logger.warning(
                "JobsApp has no auth: anyone who can reach it can submit, cancel and "
                "delete jobs; pass auth=BearerTokens({...}) unless a proxy guards it"
            )

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        # Only reached when served alone (hosts do not forward lifespan to mounts).
        async with contextlib.AsyncExitStack() as stack:
            await receive()  # lifespan.startup
            try:
                if not self.queue.is_open:
                    await stack.enter_async_context(self.queue)
            except Exception as exc:  # report startup failures to the server, not crash
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
            await receive()  # lifespan.shutdown
        await send({"type": "lifespan.shutdown.complete"})

    async def _index(self, request: Request) -> Response:
        root = str(request.scope.get("root_path", "")).rstrip("/")
        if not self.dashboard:
            return JSONResponse(
                {
                    "name": "asyncjobs",
                    "links": {
                        name: f"{root}{path}"
                        for name, path in [
                            ("jobs", "/jobs"),
                            ("events", "/events"),
                            ("job_types", "/job-types"),
                            ("stats", "/stats"),
                            ("health", "/health"),
                            ("metrics", "/metrics"),
                            ("openapi", "/openapi.json"),
                            ("docs", "/docs"),
                            ("websocket", "/ws"),
                        ]
                    },
                }
            )
        index = STATIC_DIR / "index.html"
        if not index.is_file():
            raise ApiError(
                404,
                "dashboard_missing",
                f"the dashboard files are missing ({index} not found); reinstall "
                "asyncjobs[asgi], or pass dashboard=False",
            )
        from starlette.responses import FileResponse

        return FileResponse(index, media_type="text/html", headers={"Cache-Control": "no-cache"})

    async def _openapi(self, request: Request) -> Response:
        root = str(request.scope.get("root_path", "")).rstrip("/")
        return JSONResponse(
            openapi_document(
                root_path=root,
                dashboard=self.dashboard,
                secured=self.auth is not None,
                job_types=self.queue.registry.describe(),
            )
        )

    async def _websocket(self, websocket: WebSocket) -> None:
        await serve_websocket(
            websocket,
            self.queue,
            auth=self.auth,
            heartbeat=self.heartbeat,
            allowed_origins=self.allowed_origins,
        )
