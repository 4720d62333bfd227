"""Gap recovery on PostgreSQL: ends that a web process's LISTEN connection missed.

A worker Queue and a web Queue (concurrency 0) run on two store instances, as two
processes would. Jobs end while the web's LISTEN connection is down (terminated by
``pg_terminate_backend``, or cut by a real restart of a private server), so their
NOTIFYs never reach it. The store resyncs on reconnect: every ``queue.wait()``
returns and a whole-queue subscription (what SSE and WebSocket clients ride on) gets
the end of every job.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import asyncpg
import pytest

from asyncjobs import JanitorConfig, Job, JobEvent, Queue, WorkerConfig
from asyncjobs.stores.postgres import PostgresStore

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]

JOBS = 12


async def _drop(url: str, schema: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def _ends_survive(url: str, cut: Callable[[PostgresStore], Awaitable[None]]) -> None:
    """Run JOBS jobs to their end while ``cut`` keeps the web store from hearing it."""
    schema = f"aj_resync_{uuid.uuid4().hex[:12]}"
    worker_store = PostgresStore(url, schema=schema)
    web_store = PostgresStore(url, schema=schema)
    worker = Queue(
        worker_store, concurrency=JOBS, worker=WorkerConfig(idle_wait=1.0, shutdown_grace=1.0)
    )
    web = Queue(web_store, concurrency=0, janitor=JanitorConfig(enabled=False))
    web.registry = worker.registry
    release = anyio.Event()

    @worker.job_type("gate")
    async def gate(ctx: Any, params: Any) -> str:
        await release.wait()
        return "done"

    try:
        async with worker, web:
            jobs = [await web.submit("gate", {}) for _ in range(JOBS)]
            with anyio.fail_after(30):
                while True:
                    statuses = [(await web.get(j.id)).status.value for j in jobs]
                    if set(statuses) == {"running"}:
                        break
                    await anyio.sleep(0.05)
            ends: dict[str, JobEvent] = {}
            waited: dict[str, Job] = {}

            async def watch_all() -> None:
                async with web.subscribe() as events:
                    async for event in events:
                        if event.type.is_final:
                            ends[event.job.id] = event
                            if len(ends) == JOBS:
                                return

            async def wait_one(job_id: str) -> None:
                waited[job_id] = await web.wait(job_id, timeout=60)

            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(watch_all)
                    for job in jobs:
                        tg.start_soon(wait_one, job.id)
                    await anyio.sleep(0.3)  # everyone is subscribed
                    listener = web_store.listener
                    assert listener is not None
                    reconnects = listener.reconnects
                    # As in a real outage, the LISTEN connection waits out its backoff
                    # while the jobs end: it reconnects only once they all have.
                    connect = listener._connect

                    async def late_connect() -> None:
                        for job in jobs:
                            await worker.wait(job.id, timeout=60)
                        await connect()

                    listener._connect = late_connect  # type: ignore[method-assign]
                    await cut(web_store)
                    release.set()  # the jobs end while the web is not listening
            assert web_store.listener is not None
            assert web_store.listener.reconnects > reconnects  # the cut really happened
            assert set(ends) == {j.id for j in jobs}
            assert {e.job.status.value for e in ends.values()} == {"completed"}
            assert {j.status.value for j in waited.values()} == {"completed"}
    finally:
        await worker_store.close()  # a Queue closes only the stores it built from a URL
        await web_store.close()
        await _drop(url, schema)


async def test_ends_missed_while_listen_was_terminated(postgres_url: str) -> None:
    async def terminate(store: PostgresStore) -> None:
        assert store.listener is not None
        pid = store.listener.backend_pid
        conn = await asyncpg.connect(postgres_url)
        try:
            await conn.execute("SELECT pg_terminate_backend($1)", pid)
        finally:
            await conn.close()

    await _ends_survive(postgres_url, terminate)


@pytest.mark.slow
async def test_ends_missed_during_a_real_restart() -> None:
    from servers import own_postgres

    with own_postgres() as server:

        async def restart(store: PostgresStore) -> None:
            await anyio.to_thread.run_sync(lambda: server.restart(down_for=1.0))

        await _ends_survive(server.url, restart)
