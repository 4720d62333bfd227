"""The Redis store's script calls on their one pipelined connection (``ScriptLine``):
calls made together share it and each gets its own reply, a cancelled caller does not
put the others' replies out of step, a killed connection is replaced under the callers,
and the server's error replies (a forgotten script, a failing one) reach the caller."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timezone

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from asyncjobs import Job, JobStatus
from asyncjobs.stores.redis import RedisStore

from .conftest import destroy_redis_prefix

pytestmark = [pytest.mark.redis]

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _job() -> Job:
    return Job(
        id=uuid.uuid4().hex,
        type="t",
        params={"n": uuid.uuid4().hex},
        status=JobStatus.QUEUED,
        created_at=T0,
        run_at=T0,
    )


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    prefix = f"aj_line_{uuid.uuid4().hex[:12]}"
    store = RedisStore(redis_url, prefix=prefix)
    await store.open()
    try:
        yield store
    finally:
        await store.close()
        await destroy_redis_prefix(redis_url, prefix)


@pytest.fixture
async def admin(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def _line_ids(admin: aioredis.Redis, store: RedisStore) -> list[int]:
    clients = await admin.client_list()
    return [int(c["id"]) for c in clients if c.get("name") == store.line_client_name]


async def test_calls_made_together_share_one_connection_and_get_their_own_replies(
    store: RedisStore, admin: aioredis.Redis
) -> None:
    before = await admin.client_list()
    jobs = [_job() for _ in range(300)]
    results = await asyncio.gather(*(store.add(job) for job in jobs))
    assert [stored for stored, _ in results] == jobs
    assert all(inserted for _, inserted in results)
    assert [await store.get(job.id) for job in jobs] == jobs
    # One connection carried the 300 calls (a pool would have opened one per call in
    # flight, up to its size); the store's other connections are the ones it had.
    assert len(await _line_ids(admin, store)) == 1
    assert len(await admin.client_list()) <= len(before) + 1


async def test_a_cancelled_call_leaves_the_other_replies_in_step(store: RedisStore) -> None:
    await store.add(_job())  # the line is connected: a call is written in its first step
    jobs = [_job() for _ in range(200)]
    tasks = [asyncio.create_task(store.add(job)) for job in jobs]
    await asyncio.sleep(0)  # every call is written; cancel every third while in flight
    for task in tasks[::3]:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for job, task in zip(jobs, tasks, strict=True):
        if not task.cancelled():
            assert task.result() == (job, True)
    # A cancelled call was sent: its job is stored all the same (nothing half-written).
    assert [await store.get(job.id) for job in jobs] == jobs
    fresh = _job()
    assert await store.add(fresh) == (fresh, True)


async def test_a_killed_connection_is_replaced_and_the_calls_in_flight_go_on(
    store: RedisStore, admin: aioredis.Redis
) -> None:
    await store.add(_job())
    (old,) = await _line_ids(admin, store)
    jobs = [_job() for _ in range(100)]
    # Paused, the server holds the calls unanswered: they are in flight when it drops
    # the connection.
    await admin.execute_command("CLIENT", "PAUSE", 2000, "WRITE")
    try:
        calls = asyncio.gather(*(store.add(job) for job in jobs))
        await asyncio.sleep(0.1)
        await admin.execute_command("CLIENT", "KILL", "ID", old)
    finally:
        await admin.execute_command("CLIENT", "UNPAUSE")
    results = await asyncio.wait_for(calls, 10)
    # A call whose reply was lost was sent again; one that had landed says so (the id
    # exists, with this very job): either way every caller gets its own job back.
    assert [stored for stored, _ in results] == jobs
    assert [await store.get(job.id) for job in jobs] == jobs
    (new,) = await _line_ids(admin, store)
    assert new != old


async def test_a_forgotten_script_is_loaded_again_and_an_error_reply_is_raised(
    store: RedisStore, admin: aioredis.Redis
) -> None:
    await admin.script_flush()
    job = _job()
    assert await store.add(job) == (job, True)  # NOSCRIPT: loaded again, then ran
    assert await store.get(job.id) == job
    with pytest.raises(ResponseError):  # the script fails on a bad argument
        await store._eval("add", store._p + "seq", store._p)
    other = _job()
    assert await store.add(other) == (other, True)  # the next reply is its own
