"""The Redis store (extra ``asyncjobs[redis]``)."""

from .store import RedisStore

__all__ = ["RedisStore"]
