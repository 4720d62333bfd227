"""Fixtures of the store conformance suite: every test runs once per store.

``store`` is a fresh, opened store per test (ids ``memory``, ``sqlite``, ``postgres``,
``redis``);
``store_factory`` opens more stores attached to the *same* database, for behaviour seen
across instances (claims, events, wake-ups). ``backend`` hands out fresh databases to
tests that manage their own stores (the hypothesis state machine).

A store module that is missing or broken fails its tests: nothing here skips on an
ImportError. Only an unreachable PostgreSQL server skips (or fails under
``ASYNCJOBS_REQUIRE_SERVICES=1``), through the ``postgres_url`` fixture.
"""

from __future__ import annotations

import re
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, final

import pytest

from asyncjobs.stores import MemoryStore, Store

KINDS = ("memory", "sqlite", "postgres", "redis")

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


@final
class Database:
    """One fresh database of one store kind; every store it builds shares its data."""

    def __init__(self, kind: str, *, path: Path | None = None, dsn: str | None = None) -> None:
        self.kind = kind
        self.path = path
        self.dsn = dsn
        # A unique schema keeps concurrent test runs on one server apart.
        self.schema = f"aj_test_{uuid.uuid4().hex[:16]}"
        self._memory: MemoryStore | None = None

    def build(self) -> Store:
        """A new, unopened store attached to this database.

        A memory store cannot be shared by two instances, so for memory every call
        returns the same instance: tests of cross-instance behaviour still run, trivially.
        """
        if self.kind == "memory":
            if self._memory is None:
                self._memory = MemoryStore()
            return self._memory
        if self.kind == "sqlite":
            from asyncjobs.stores.sqlite import SqliteStore

            assert self.path is not None
            return SqliteStore(self.path)
        if self.kind == "postgres":
            from asyncjobs.stores.postgres import PostgresStore

            assert self.dsn is not None
            return PostgresStore(self.dsn, schema=self.schema)
        if self.kind == "redis":
            from asyncjobs.stores.redis import RedisStore

            assert self.dsn is not None
            return RedisStore(self.dsn, prefix=self.schema)
        raise AssertionError(f"unknown store kind {self.kind!r}")

    async def destroy(self) -> None:
        """Remove what the stores left behind (the PostgreSQL schema, the Redis keys of
        this database's prefix; files go with tmp)."""
        if self.kind == "redis":
            await destroy_redis_prefix(self.dsn, self.schema)
            return
        if self.kind != "postgres":
            return
        import asyncpg

        assert _SCHEMA_NAME.match(self.schema)
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        finally:
            await conn.close()


async def destroy_redis_prefix(url: str | None, prefix: str) -> None:
    """Delete the keys of one prefix (SCAN + DEL: never FLUSHDB on a shared server)."""
    import redis.asyncio as aioredis

    assert url is not None and _SCHEMA_NAME.match(prefix)
    client = aioredis.Redis.from_url(url)
    try:
        batch: list[bytes] = []
        async for key in client.scan_iter(match="{" + prefix + "}:*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                await client.delete(*batch)
                batch.clear()
        if batch:
            await client.delete(*batch)
    finally:
        await client.aclose()


@final
class Backend:
    """Makes fresh databases of one store kind."""

    def __init__(self, kind: str, *, tmp_dir: Path, dsn: str | None = None) -> None:
        self.kind = kind
        self.tmp_dir = tmp_dir
        self.dsn = dsn
        self._made = 0

    def new_database(self) -> Database:
        self._made += 1
        if self.kind == "sqlite":
            # The first database is tmp_path/jobs.db; more (one per state machine run)
            # go into fresh subdirectories.
            directory = (
                self.tmp_dir if self._made == 1 else Path(tempfile.mkdtemp(dir=self.tmp_dir))
            )
            return Database(self.kind, path=directory / "jobs.db")
        return Database(self.kind, dsn=self.dsn)


StoreFactory = Callable[[], Awaitable[Store]]


@pytest.fixture(
    params=[
        pytest.param("memory", id="memory"),
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
        pytest.param("redis", id="redis", marks=pytest.mark.redis),
    ]
)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    kind: str = request.param
    dsn = None
    if kind == "postgres":
        dsn = request.getfixturevalue("postgres_url")
    elif kind == "redis":
        dsn = request.getfixturevalue("redis_url")
    return Backend(kind, tmp_dir=tmp_path, dsn=dsn)


@pytest.fixture
async def store_factory(backend: Backend) -> AsyncIterator[StoreFactory]:
    """``await store_factory()`` opens another store on this test's database."""
    database = backend.new_database()
    opened: list[Store] = []

    async def open_one() -> Store:
        store = database.build()
        await store.open()
        if not any(s is store for s in opened):
            opened.append(store)
        return store

    try:
        yield open_one
    finally:
        try:
            for store in reversed(opened):
                await store.close()
        finally:
            await database.destroy()


@pytest.fixture
async def store(store_factory: StoreFactory) -> Store:
    """A fresh, opened store; closed (and its database removed) after the test."""
    return await store_factory()


@contextmanager
def script_calls(store: Any) -> Iterator[list[tuple[str, tuple[Any, ...]]]]:
    """Every script call a Redis store makes while inside: (script name, its arguments
    after the key)."""
    calls: list[tuple[str, tuple[Any, ...]]] = []
    inner = store._eval

    async def spy(name: str, key: str, *args: Any) -> Any:
        calls.append((name, args))
        return await inner(name, key, *args)

    store._eval = spy
    try:
        yield calls
    finally:
        store._eval = inner
