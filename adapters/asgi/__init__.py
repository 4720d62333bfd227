"""The ASGI adapter: REST, Server-Sent Events, WebSocket and the dashboard.

Needs the ``asgi`` extra: ``pip install 'asyncjobs[asgi]'``.

    from asyncjobs.adapters.asgi import JobsApp
    app.mount("/queue", JobsApp(queue))
"""

from __future__ import annotations

try:
    import starlette  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "asyncjobs.adapters.asgi needs Starlette: pip install 'asyncjobs[asgi]'"
    ) from exc

from .app import STATIC_DIR, JobsApp
from .auth import (
    ADMIN,
    CANCEL,
    READ,
    SCOPES,
    SUBMIT,
    WORKER,
    Authenticator,
    BearerTokens,
    Principal,
)
from .errors import ApiError, error_payload, error_response
from .metrics import QueueMetrics
from .openapi import openapi_document
from .sse import (
    SSE_HEADERS,
    EventStream,
    FrameCache,
    encode_comment,
    encode_event,
    event_stream,
)
from .ssehub import SseHub
from .websocket import serve_websocket

__all__ = [
    "ADMIN",
    "ApiError",
    "Authenticator",
    "BearerTokens",
    "CANCEL",
    "EventStream",
    "FrameCache",
    "JobsApp",
    "Principal",
    "QueueMetrics",
    "READ",
    "SCOPES",
    "SSE_HEADERS",
    "STATIC_DIR",
    "SUBMIT",
    "SseHub",
    "WORKER",
    "encode_comment",
    "encode_event",
    "error_payload",
    "error_response",
    "event_stream",
    "openapi_document",
    "serve_websocket",
]
