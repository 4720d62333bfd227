"""Queues of the Redis multi-process tests (tests/stores/test_redis.py).

``asyncjobs worker redis_apps:build`` runs the job types of :mod:`pg_worker_app` (they
are store-agnostic) against ``ASYNCJOBS_MP_URL``; ``asyncjobs serve redis_apps:web``
is a web process in front of them that runs no jobs.
"""

from __future__ import annotations

from asyncjobs import Queue
from pg_worker_app import build

__all__ = ["build", "web"]


def web() -> Queue:
    return build(concurrency=0)
