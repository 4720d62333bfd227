"""The SQLite store: one file, jobs survive restarts (stdlib sqlite3, off the event loop)."""

from .store import SqliteStore

__all__ = ["SqliteStore"]
