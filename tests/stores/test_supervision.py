"""Supervision over every store: a store outage never reaches the host's code, every
loop retries and reports through ``queue.health()``, and a store that never answers
cannot hang ``aclose()``. Faults come from :class:`asyncjobs.testing.FaultyStore`."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from asyncjobs import JanitorConfig, JobContext, JobStatus, Queue, WorkerConfig
from asyncjobs.registry import Backoff
from asyncjobs.testing import FaultyStore

from .conftest import StoreFactory

FAST_RETRY = Backoff(base=0.02, factor=2.0, max=0.2, jitter=0.1)


async def wait_until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.02)


def make_queue(store: FaultyStore, **worker: Any) -> Queue:
    queue = Queue(
        store,  # type: ignore[arg-type]
        worker=WorkerConfig(lease=2.0, heartbeat=0.05, idle_wait=0.1, **worker),
        janitor=JanitorConfig(interval=0.05),
        store_retry=FAST_RETRY,
    )

    @queue.job_type("echo", max_attempts=1)
    async def echo(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
        return params

    @queue.job_type("nap", max_attempts=1)
    async def nap(ctx: JobContext, params: dict[str, Any]) -> str:
        await anyio.sleep(params["seconds"])
        return "rested"

    return queue


def failing_loops(queue: Queue) -> set[str]:
    return {p.loop for p in queue.health().problems}


async def test_a_store_outage_never_cancels_the_host_and_every_loop_recovers(
    store_factory: StoreFactory, caplog: pytest.LogCaptureFixture
) -> None:
    store = FaultyStore(await store_factory())
    queue = make_queue(store)
    host_steps = 0
    async with queue:
        first = await queue.submit("echo", {"n": 1})
        assert (await queue.wait(first.id, timeout=15)).status is JobStatus.COMPLETED
        running = await queue.submit("nap", {"seconds": 1.0})
        await wait_until(lambda: queue.running_count() == 1)

        with caplog.at_level(logging.INFO, logger="asyncjobs.supervision"):
            store.fail("claim", "renew", "requeue_expired", "promote_scheduled")
            expected = {"claim", "heartbeat", "janitor.requeue_expired"}
            expected.add("janitor.promote_scheduled")
            # The host's own code keeps running all through the outage.
            with anyio.fail_after(15):
                while not expected <= failing_loops(queue):
                    await anyio.sleep(0.02)
                    host_steps += 1
            health = queue.health()
            assert not health.ok
            claim = next(p for p in health.problems if p.loop == "claim")
            assert "ConnectionError" in claim.reason and claim.failures >= 1
            await anyio.sleep(0.3)  # many more failures: still one warning per loop
            queued = await queue.submit("echo", {"n": 2})  # add still works
            store.heal()
            await wait_until(lambda: queue.health().ok)
        warnings = [
            r
            for r in caplog.records
            if r.levelno == logging.WARNING and r.name == "asyncjobs.supervision"
        ]
        per_loop = [r.getMessage().split()[1] for r in warnings]
        assert sorted(per_loop) == sorted(set(per_loop)), per_loop
        assert {"claim", "heartbeat"} <= set(per_loop)
        assert any("recovered" in r.getMessage() for r in caplog.records)
        # The job that ran through the outage finished; the one added meanwhile ran.
        assert (await queue.wait(running.id, timeout=15)).status is JobStatus.COMPLETED
        assert (await queue.wait(queued.id, timeout=15)).result == {"n": 2}
        assert store.faults["claim"] >= 2
    assert host_steps > 0


async def test_a_finish_that_fails_for_a_while_is_retried_until_it_lands(
    store_factory: StoreFactory,
) -> None:
    store = FaultyStore(await store_factory())
    queue = make_queue(store)
    async with queue:
        store.fail("finish")
        job = await queue.submit("echo", {"n": 3})
        await wait_until(lambda: store.faults["finish"] >= 3)
        assert "finish" in failing_loops(queue)
        store.heal()
        done = await queue.wait(job.id, timeout=15)
    assert done.status is JobStatus.COMPLETED
    assert done.result == {"n": 3}
    assert queue.health().ok


async def test_a_finish_that_never_returns_does_not_hang_aclose(
    store_factory: StoreFactory, caplog: pytest.LogCaptureFixture
) -> None:
    store = FaultyStore(await store_factory())
    queue = make_queue(store, finish_timeout=0.5, shutdown_grace=0.2, shutdown_timeout=2.0)
    await queue.__aenter__()
    store.hang("finish")
    job = await queue.submit("echo", {"n": 4})
    await wait_until(lambda: store.faults["finish"] >= 1)
    with caplog.at_level(logging.ERROR, logger="asyncjobs.worker"), anyio.fail_after(10):
        await queue.aclose()
    assert any("lease expiry" in r.getMessage() for r in caplog.records)
    store.heal()
    # Nothing was stored: the job waits, running, for its lease to expire.
    assert (await store.get(job.id)).status is JobStatus.RUNNING


async def test_a_shutdown_while_the_store_is_down_is_bounded(
    store_factory: StoreFactory,
) -> None:
    store = FaultyStore(await store_factory())
    queue = make_queue(store, finish_timeout=0.5, shutdown_grace=0.1, shutdown_timeout=2.0)
    async with queue:
        job = await queue.submit("nap", {"seconds": 30})
        await wait_until(lambda: queue.running_count() == 1)
        store.fail("finish", "renew", "claim")
        with anyio.fail_after(10):
            await queue.aclose()
    store.heal()
    assert (await store.get(job.id)).status is JobStatus.RUNNING  # left to lease expiry


@pytest.mark.postgres
async def test_a_postgres_statement_that_never_answers_times_out(postgres_url: str) -> None:
    from asyncjobs.stores.postgres import PostgresStore

    schema = f"aj_test_{uuid.uuid4().hex[:16]}"
    store = PostgresStore(postgres_url, schema=schema, command_timeout=0.3)
    await store.open()
    try:
        with anyio.fail_after(10), pytest.raises(asyncio.TimeoutError):
            await store._run(lambda conn: conn.execute("SELECT pg_sleep(30)"), retry=False)
        assert (await store.stats()).total == 0  # the pool still works afterwards
    finally:
        await store.close()
        import asyncpg

        conn = await asyncpg.connect(postgres_url)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()
