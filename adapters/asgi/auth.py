"""Authentication: a pluggable authenticator and the built-in bearer tokens.

An authenticator is any object with ``async def __call__(scope) -> Principal | None``:
it reads the ASGI connection scope (headers, query string, client address, TLS info)
and returns who is calling, or ``None`` for "not authenticated" (HTTP 401). What a
principal may do is decided by its scopes (HTTP 403 when one is missing):

========  ===========================================================
scope     allows
========  ===========================================================
read      list and get jobs, job types, stats, metrics, SSE, WebSocket
submit    create jobs
cancel    cancel jobs, delete jobs, clear finished jobs
worker    the remote-worker routes (/worker/*, the gRPC WorkerService)
admin     everything, and every owner's jobs
========  ===========================================================

A principal with an ``owner`` is isolated: its submissions are stamped with that
owner, and it sees, cancels and deletes only jobs of that owner (others answer 404,
so a job's existence does not leak). A principal without an owner, or with ``admin``,
sees every job.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from typing import Final, Protocol, final
from urllib.parse import parse_qsl

import attrs
from starlette.types import Scope

from .errors import ApiError

__all__ = [
    "ADMIN",
    "CANCEL",
    "READ",
    "SCOPES",
    "SUBMIT",
    "WORKER",
    "Authenticator",
    "BearerTokens",
    "Principal",
    "require",
]

READ: Final = "read"
SUBMIT: Final = "submit"
CANCEL: Final = "cancel"
WORKER: Final = "worker"
ADMIN: Final = "admin"
SCOPES: Final = frozenset({READ, SUBMIT, CANCEL, WORKER, ADMIN})


def _scopes(value: Iterable[str]) -> frozenset[str]:
    scopes = frozenset(value)
    unknown = scopes - SCOPES
    if unknown:
        raise ValueError(f"unknown scope(s) {sorted(unknown)}; use some of {sorted(SCOPES)}")
    return scopes


@final
@attrs.frozen
class Principal:
    """Who is calling and what they may do.

    Attributes:
        name: A label for logs (never a secret).
        scopes: Some of ``read``, ``submit``, ``cancel``, ``worker``, ``admin``.
        owner: When set, the principal is isolated to jobs of this owner.
    """

    name: str
    scopes: frozenset[str] = attrs.field(default=frozenset({READ}), converter=_scopes)
    owner: str | None = None

    @property
    def is_admin(self) -> bool:
        return ADMIN in self.scopes

    def allows(self, scope: str) -> bool:
        """Whether this principal holds ``scope`` (``admin`` holds every scope)."""
        return scope in self.scopes or self.is_admin

    @property
    def isolated_owner(self) -> str | None:
        """The owner this principal is confined to, or ``None`` when it sees all jobs."""
        return None if self.is_admin else self.owner


class Authenticator(Protocol):
    """Decides who is calling from the ASGI scope of an HTTP or WebSocket connection."""

    async def __call__(self, scope: Scope) -> Principal | None:
        """Return the caller's principal, or ``None`` when the caller is not authenticated."""
        ...


def bearer_token(scope: Scope) -> str | None:
    """The bearer token of a connection: the ``Authorization`` header, else the
    ``access_token`` query parameter (EventSource and browser WebSocket clients cannot
    set headers)."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            kind, _, token = value.decode("latin-1").partition(" ")
            token = token.strip()
            return token if kind.lower() == "bearer" and token else None
    query: str = scope.get("query_string", b"").decode("latin-1")
    for key, found in parse_qsl(query, keep_blank_values=False):
        if key == "access_token":
            return found
    return None


@final
class BearerTokens:
    """Static bearer tokens mapped to principals, compared in constant time.

    Args:
        tokens: ``{"secret-token": Principal("ci", {"read", "submit"})}``.

    Example::

        auth = BearerTokens({
            os.environ["JOBS_ADMIN_TOKEN"]: Principal("ops", {"admin"}),
            os.environ["JOBS_APP_TOKEN"]: Principal("app", {"read", "submit"}, owner="app"),
        })
        JobsApp(queue, auth=auth)
    """

    __slots__ = ("_tokens",)

    def __init__(self, tokens: Mapping[str, Principal]) -> None:
        if not tokens:
            raise ValueError("BearerTokens needs at least one token")
        for token in tokens:
            if len(token) < 8:
                raise ValueError("bearer tokens must be at least 8 characters long")
        self._tokens = tuple((t.encode(), p) for t, p in tokens.items())

    async def __call__(self, scope: Scope) -> Principal | None:
        token = bearer_token(scope)
        if token is None:
            return None
        given = token.encode("utf-8", "surrogateescape")
        found: Principal | None = None
        # Compare against every token so the time taken does not say which one matched.
        for known, principal in self._tokens:
            if hmac.compare_digest(given, known):
                found = principal
        return found


def challenge(scope: Scope) -> dict[str, str]:
    """The ``WWW-Authenticate`` header for a 401 on this connection."""
    if bearer_token(scope) is None:
        return {"WWW-Authenticate": 'Bearer realm="asyncjobs"'}
    return {"WWW-Authenticate": 'Bearer realm="asyncjobs", error="invalid_token"'}


async def require(
    authenticator: Authenticator | None, scope: Scope, needed: str
) -> Principal | None:
    """Authenticate a connection and check that it holds ``needed``.

    Returns ``None`` when no authenticator is configured (everything is allowed).

    Raises:
        ApiError: 401 with ``WWW-Authenticate`` when not authenticated; 403 when the
            principal lacks ``needed``.
    """
    if authenticator is None:
        return None
    principal = await authenticator(scope)
    if principal is None:
        raise ApiError(
            401,
            "unauthenticated",
            "send a valid bearer token in the Authorization header "
            "(or the access_token query parameter)",
            headers=challenge(scope),
        )
    if not principal.allows(needed):
        raise ApiError(
            403,
            "forbidden",
            f"this token lacks the {needed!r} scope",
            details={"needed": needed, "scopes": sorted(principal.scopes)},
        )
    return principal
