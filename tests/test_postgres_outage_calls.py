"""PostgresStore calls that must ride out a server outage, on a private server.

Found by the chaos and ops tests: ``open()`` did not retry like the other calls (a worker
started while the server restarted exited with a traceback, once as
``InternalClientError: cannot switch to state 12``), and a ``renew`` retried across an
outage wrote the expiry its first try computed, so it "succeeded" with a lease that
had already run out.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timezone

import anyio
import pytest

from asyncjobs.job import JobStatus
from asyncjobs.stores import Outcome
from asyncjobs.stores.postgres import PostgresStore
from servers import OwnPostgres, own_postgres
from stores.test_conformance import make_job

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture(scope="module")
def server() -> Iterator[OwnPostgres]:
    with own_postgres() as pg:
        yield pg


def _store(server: OwnPostgres, **options: float) -> PostgresStore:
    return PostgresStore(server.url, schema=f"aj_{uuid.uuid4().hex[:12]}", **options)


async def test_open_waits_for_a_server_that_is_starting(server: OwnPostgres) -> None:
    store = _store(server, reconnect_timeout=60)
    await anyio.to_thread.run_sync(server.stop)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(store.open)
            await anyio.sleep(1.0)  # the open is retrying against a stopped server
            await anyio.to_thread.run_sync(server.start)
        job, _ = await store.add(make_job())  # the open succeeded: the store works
        assert (await store.get(job.id)).id == job.id
    finally:
        await store.close()


async def test_open_gives_up_after_its_bound_with_one_clear_line(server: OwnPostgres) -> None:
    store = _store(server, reconnect_timeout=1.0)
    await anyio.to_thread.run_sync(server.stop)
    try:
        with anyio.fail_after(30), pytest.raises(ConnectionError) as raised:
            await store.open()
    finally:
        await anyio.to_thread.run_sync(server.start)
    message = str(raised.value)
    assert "\n" not in message
    assert "cannot open the PostgreSQL store" in message and "after 1s" in message
    assert store.listener is None


async def test_a_renew_retried_across_an_outage_ends_in_the_future(server: OwnPostgres) -> None:
    store = _store(server, reconnect_timeout=60)
    await store.open()
    try:
        await store.add(make_job())
        now = datetime.now(timezone.utc)
        (job,) = await store.claim("w", types=["t"], limit=1, lease=30, now=now)
        assert job.lease is not None
        await anyio.to_thread.run_sync(server.stop)
        renewed: list[datetime] = []

        async def renew() -> None:
            now = datetime.now(timezone.utc)
            done = await store.renew(job.id, job.lease.token, lease=1.0, now=now)  # type: ignore[union-attr]
            assert done.lease is not None
            renewed.append(done.lease.expires_at)

        async with anyio.create_task_group() as tg:
            tg.start_soon(renew)
            await anyio.sleep(2.0)  # longer than the 1 s lease
            await anyio.to_thread.run_sync(server.start)
        # The lease it reports is one the worker still holds, not one past already.
        assert renewed[0] > datetime.now(timezone.utc)
        done = Outcome(JobStatus.COMPLETED, result=1)
        await store.finish(job.id, job.lease.token, done, now=datetime.now(timezone.utc))
    finally:
        await store.close()
