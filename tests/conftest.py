"""Shared fixtures: service URLs for the real PostgreSQL and Redis servers.

Locally, a test that needs a server skips with a clear reason when the server is not
reachable; with ASYNCJOBS_REQUIRE_SERVICES=1 (as .ci/run sets it) it fails instead.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

import pytest

POSTGRES_URL = os.environ.get(
    "ASYNCJOBS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("ASYNCJOBS_TEST_REDIS", "redis://127.0.0.1:6379/0")
REQUIRE_SERVICES = os.environ.get("ASYNCJOBS_REQUIRE_SERVICES") == "1"


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), 2
        ):
            return True
    except OSError:
        return False


def require_service(name: str, url: str, default_port: int) -> str:
    """Return ``url`` if its server answers; otherwise skip, or fail under CI."""
    if _reachable(url, default_port):
        return url
    message = f"{name} is not reachable at {url} (set ASYNCJOBS_TEST_{name.upper()})"
    if REQUIRE_SERVICES:
        pytest.fail(f"{message}; ASYNCJOBS_REQUIRE_SERVICES=1 forbids skipping")
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    return require_service("postgres", POSTGRES_URL, 5432)


@pytest.fixture(scope="session")
def redis_url() -> str:
    return require_service("redis", REDIS_URL, 6379)
