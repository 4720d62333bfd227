"""Job stores: the one pluggable seam for state, and :func:`open_store`."""

from __future__ import annotations

from .memory import MemoryStore
from .protocol import (
    EventListener,
    Notifier,
    Outcome,
    Page,
    StateStore,
    Stats,
    Store,
    WorkerInfo,
)

__all__ = [
    "EventListener",
    "MemoryStore",
    "Notifier",
    "Outcome",
    "Page",
    "StateStore",
    "Stats",
    "Store",
    "WorkerInfo",
    "open_store",
]


def open_store(url: str) -> Store:
    """Build the store a URL names (nothing connects until ``await store.open()``).

    ``memory://``, ``sqlite:///path/to/jobs.db`` (``sqlite:///:memory:`` for a throwaway
    database), ``postgresql://user@host/db`` (extra ``asyncjobs[postgres]``),
    ``redis://host:6379/0[?prefix=name]`` or ``rediss://`` (extra ``asyncjobs[redis]``).

    Raises:
        ConfigurationError: the scheme is unknown or its extra is not installed.
    """
    from ..errors import ConfigurationError

    scheme, sep, _ = url.partition("://")
    if not sep:
        raise ConfigurationError(
            f"store URL {url!r} has no scheme; use memory://, sqlite:///path.db or postgresql://..."
        )
    scheme = scheme.lower()
    if scheme == "memory":
        return MemoryStore()
    if scheme == "sqlite":
        from .sqlite import SqliteStore

        return SqliteStore.from_url(url)
    if scheme in ("postgresql", "postgres"):
        from .postgres import PostgresStore

        return PostgresStore.from_url(url)
    if scheme in ("redis", "rediss"):
        from .redis import RedisStore

        return RedisStore.from_url(url)
    raise ConfigurationError(
        f"unknown store scheme {scheme!r} in {url!r}; use memory://, sqlite:///, postgresql:// or redis://"
    )
