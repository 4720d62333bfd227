"""Browser defences: the ``Origin`` check and the security headers of every response.

A browser attaches cookies and reaches loopback addresses for any page, so a JobsApp
without auth (the demo) must not obey another site. Three rules keep it safe:

* JSON bodies only (:func:`~asyncjobs.adapters.asgi.http.read_body` answers 415 to any
  other ``Content-Type``), so a cross-site "simple" request (a form, a ``text/plain``
  ``fetch``) cannot submit anything;
* a WebSocket, or a state-changing HTTP request (not GET, HEAD or OPTIONS), whose
  ``Origin`` is neither the app's own origin (the scheme, host and port the request was
  made to) nor in ``allowed_origins`` is refused (HTTP 403, WebSocket close 1008).
  Requests without ``Origin`` (curl, httpx, servers) are not browsers and pass;
* every response says ``X-Content-Type-Options: nosniff`` and ``X-Frame-Options:
  DENY``, with a Content-Security-Policy: the dashboard's allows its own files only
  and ``frame-ancestors 'none'``; an API response allows nothing at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final
from urllib.parse import urlsplit

from starlette.types import Message, Receive, Scope, Send

__all__ = [
    "API_CSP",
    "DASHBOARD_CSP",
    "normalize_origin",
    "origin_allowed",
    "with_security_headers",
]

#: The dashboard: its own scripts, styles, fetches and WebSocket; never in a frame.
DASHBOARD_CSP: Final = (
    "default-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; "
    "form-action 'self'; object-src 'none'; frame-ancestors 'none'"
)
#: JSON and event streams: nothing to run, load or frame.
API_CSP: Final = "default-src 'none'; frame-ancestors 'none'"

_DEFAULT_PORTS: Final[Mapping[str, int]] = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_BROWSER_SCHEME: Final[Mapping[str, str]] = {"ws": "http", "wss": "https"}
_SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})


def normalize_origin(value: str) -> str | None:
    """``scheme://host:port`` with the default port spelled out; None if not an origin."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    scheme = _BROWSER_SCHEME.get(scheme, scheme)
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port or _DEFAULT_PORTS[scheme]}"


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def _own_origin(scope: Scope) -> str | None:
    host = _header(scope, b"host")
    if host is None:
        server = scope.get("server")
        if not server:
            return None
        host = f"{server[0]}:{server[1]}"
    return normalize_origin(f"{scope.get('scheme', 'http')}://{host}")


def origin_allowed(scope: Scope, allowed: Iterable[str] = ()) -> bool:
    """Whether a request may act: no ``Origin`` (not a browser), its own, or an allowed one.

    Args:
        scope: The ASGI scope of an HTTP request or a WebSocket.
        allowed: Extra origins (``https://app.example.com``), normalized already or not.
    """
    origin = _header(scope, b"origin")
    if origin is None:
        return True
    if scope["type"] == "http" and scope.get("method", "GET") in _SAFE_METHODS:
        return True  # reads are kept from other sites by the browser's same-origin policy
    given = normalize_origin(origin)  # "null" (sandboxed frames, files) is never allowed
    if given is None:
        return False
    if given == _own_origin(scope):
        return True
    return given in {normalize_origin(o) for o in allowed}


def with_security_headers(send: Send) -> Send:
    """Wrap ``send`` so the response carries the security headers.

    A page (``text/html``) gets :data:`DASHBOARD_CSP`, anything else :data:`API_CSP`; a
    route's own ``Content-Security-Policy`` wins, so a page with other needs (an API
    docs page, say) can set its own.
    """

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", ()))
            present = {bytes(k).lower(): bytes(v) for k, v in headers}
            page = present.get(b"content-type", b"").startswith(b"text/html")
            csp = DASHBOARD_CSP if page else API_CSP
            for key, value in (
                (b"content-security-policy", csp.encode()),
                (b"x-content-type-options", b"nosniff"),
                (b"x-frame-options", b"DENY"),
                (b"referrer-policy", b"no-referrer"),
            ):
                if key not in present:
                    headers.append((key, value))
            message = {**message, "headers": headers}
        await send(message)

    return wrapped


async def refuse_origin(scope: Scope, receive: Receive, send: Send) -> None:
    """Answer a request from a foreign origin: 403 over HTTP, close 1008 for a WebSocket."""
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        # Closing before accepting makes the server answer the handshake with 403.
        await send({"type": "websocket.close", "code": 1008, "reason": "origin not allowed"})
        return
    from .errors import ApiError, error_response

    response = error_response(
        ApiError(
            403,
            "forbidden_origin",
            "requests from this origin are refused; serve the page from this app, or "
            "list its origin in JobsApp(..., allowed_origins=[...])",
        )
    )
    await response(scope, receive, send)
