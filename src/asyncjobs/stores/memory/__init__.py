"""The in-memory store: dicts and heaps in this process (tests, demos, embedded runners)."""

from .store import MemoryStore

__all__ = ["MemoryStore"]
