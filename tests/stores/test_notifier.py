"""Notifier contracts, on every store: level-triggered wake-ups, resync, the worker
registry, and a worker that never loses a wake-up that lands during its claim."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import anyio

from asyncjobs import Queue
from asyncjobs.stores import Store, WorkerInfo
from asyncjobs.worker import WorkerConfig

from .conftest import Backend, StoreFactory
from .test_conformance import EventLog, add, at, make_job

E_DONE = "job_completed"


# -- wake-up generations -------------------------------------------------------


async def test_generation_grows_on_every_wake_up(store: Store) -> None:
    g0 = store.work_generation()
    await add(store, make_job())
    g1 = store.work_generation()
    assert g1 > g0
    await add(store, make_job(delay=5))  # scheduled: not claimable yet, may or may not wake
    await store.promote_scheduled(now=at(10))
    assert store.work_generation() > g1


async def test_wait_since_an_older_generation_returns_at_once(store: Store) -> None:
    since = store.work_generation()
    await add(store, make_job())  # the wake-up lands before anyone waits
    with anyio.fail_after(5):  # asks for 60 s: only the level-triggered check ends it
        await store.wait_for_work(60, since=since)


async def test_wait_since_the_current_generation_waits(store: Store) -> None:
    since = store.work_generation()
    started = time.monotonic()
    await store.wait_for_work(0.2, since=since)
    assert time.monotonic() - started >= 0.15


async def test_wait_since_sees_a_wake_up_from_another_instance(
    store_factory: StoreFactory,
) -> None:
    waiter, actor = await store_factory(), await store_factory()
    since = waiter.work_generation()
    await add(actor, make_job())
    with anyio.fail_after(10):
        await waiter.wait_for_work(60, since=since)
    assert waiter.work_generation() > since


# -- resync ----------------------------------------------------------------------


async def _force_gap(backend: Backend, store: Store) -> bool:
    """Make ``store`` miss events the way it could in production; False for memory,
    whose notifier cannot miss anything."""
    if backend.kind == "sqlite":
        import sqlite3

        from asyncjobs.stores.sqlite import SqliteStore

        assert isinstance(store, SqliteStore)
        # Another process wrote events that were trimmed before this one read them.
        conn = sqlite3.connect(store.path)
        try:
            conn.execute("UPDATE meta SET value = value + 5 WHERE key = 'seq'")
            conn.commit()
        finally:
            conn.close()
        return True
    if backend.kind == "postgres":
        import asyncpg

        listener = store.listener  # type: ignore[attr-defined]
        pid = listener.backend_pid
        conn = await asyncpg.connect(store.dsn)  # type: ignore[attr-defined]
        try:
            await conn.execute("SELECT pg_terminate_backend($1)", pid)
        finally:
            await conn.close()
        return True
    if backend.kind == "redis":
        import redis.asyncio as aioredis

        from asyncjobs.stores.redis import RedisStore

        assert isinstance(store, RedisStore)
        # The server "restarts" without persistence: the tail's connection drops and
        # the event stream comes back empty.
        client = aioredis.Redis.from_url(store.redis_url)
        try:
            name = store.tail_client_name
            ids = [c["id"] for c in await client.client_list() if c.get("name") == name]
            assert ids, f"no connection named {name}"
            await client.xtrim("{" + store.prefix + "}:events", maxlen=0, approximate=False)
            for client_id in ids:
                await client.client_kill_filter(_id=client_id)
        finally:
            await client.aclose()
        return True
    return False


async def test_a_notifier_that_missed_events_resyncs(
    store_factory: StoreFactory, backend: Backend
) -> None:
    watcher, actor = await store_factory(), await store_factory()
    calls: list[int] = []
    remove = watcher.add_resync_listener(lambda: calls.append(1))
    (job,) = await add(actor, make_job())
    since = watcher.work_generation()
    if not await _force_gap(backend, watcher):
        remove()
        assert calls == []  # memory: one process, nothing can be missed
        return
    with anyio.fail_after(20):
        while not calls:
            await anyio.sleep(0.02)
    # A resync also wakes idle workers: work may have arrived unheard.
    assert watcher.work_generation() > since
    remove()
    calls.clear()
    await _force_gap(backend, watcher)
    await anyio.sleep(0.3)
    assert calls == []  # removed listeners are not called
    assert (await watcher.get(job.id)).id == job.id


# -- worker registry -----------------------------------------------------------


def _info(
    worker_id: str, *, beat: float, ttl: float = 30.0, running: tuple[str, ...] = ()
) -> WorkerInfo:
    return WorkerInfo(
        id=worker_id,
        host="h",
        pid=123,
        types=("t", "u"),
        slots=3,
        running=running,
        started_at=at(0),
        last_heartbeat=at(beat),
        expires_at=at(beat) + timedelta(seconds=ttl),
    )


async def test_worker_registry_register_refresh_expire_remove(
    store_factory: StoreFactory,
) -> None:
    one, two = await store_factory(), await store_factory()
    await one.register_worker(_info("w1", beat=1))
    await one.register_worker(_info("w2", beat=1))
    await one.register_worker(_info("w1", beat=5, running=("job-a",)))  # a heartbeat
    listed = await two.list_workers(now=at(10))  # seen from another instance
    assert [w.id for w in listed] == ["w1", "w2"]
    assert listed[0] == _info("w1", beat=5, running=("job-a",))
    # w2's lease passes without a heartbeat: it is gone; w1 (refreshed) stays.
    assert [w.id for w in await two.list_workers(now=at(33))] == ["w1"]
    await two.remove_worker("w1")
    await two.remove_worker("nobody")  # unknown ids are ignored
    assert await one.list_workers(now=at(10)) == [_info("w2", beat=1)]


# -- the worker's claim loop -------------------------------------------------------


class SlowClaims:
    """Wraps a store; each claim that finds nothing replies only after ``delay``."""

    def __init__(self, inner: Store, delay: float) -> None:
        self._inner = inner
        self.delay = delay
        self.claims_in_flight = 0
        self.in_flight = anyio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def claim(self, *args: Any, **kwargs: Any) -> list[Any]:
        jobs = await self._inner.claim(*args, **kwargs)
        if not jobs:
            self.claims_in_flight += 1
            self.in_flight.set()
            await anyio.sleep(self.delay)  # the reply is on its way back
            self.claims_in_flight -= 1
        return list(jobs)


IDLE = 30.0  # far beyond the bounds below: only a kept wake-up starts the job in time


async def test_a_job_submitted_while_an_empty_claim_returns_starts_at_once(
    store: Store,
) -> None:
    slow = SlowClaims(store, delay=0.5)
    queue = Queue(slow, concurrency=1, worker=WorkerConfig(idle_wait=IDLE))  # type: ignore[arg-type]
    started = anyio.Event()

    @queue.job_type("t")
    async def handler(ctx: Any, params: Any) -> None:
        started.set()

    async with queue:
        with anyio.fail_after(10):
            await slow.in_flight.wait()  # an empty claim is on its way back
        assert slow.claims_in_flight == 1
        job = await queue.submit("t", {})
        begun = time.monotonic()
        with anyio.fail_after(IDLE / 3):
            done = await queue.wait(job.id)
        assert started.is_set()
        assert done.status.value == "completed"
        assert time.monotonic() - begun < IDLE / 3


async def test_stop_during_a_claim_returns_without_waiting_idle_wait(store: Store) -> None:
    slow = SlowClaims(store, delay=0.5)
    queue = Queue(slow, concurrency=1, worker=WorkerConfig(idle_wait=IDLE))  # type: ignore[arg-type]
    with anyio.fail_after(IDLE / 3 + 10):
        async with queue:
            with anyio.fail_after(10):
                await slow.in_flight.wait()  # stop() lands while the claim is out
            begun = time.monotonic()
    assert time.monotonic() - begun < IDLE / 3


async def test_workers_register_and_leave(store: Store) -> None:
    queue = Queue(store, concurrency=2, worker=WorkerConfig(lease=5))

    @queue.job_type("t")
    async def handler(ctx: Any, params: Any) -> None:
        await anyio.sleep(0.01)

    async with queue:
        assert queue.worker is not None
        with anyio.fail_after(10):  # registered by the worker's first heartbeat step
            while not (workers := await queue.workers()):
                await anyio.sleep(0.01)
        assert [w.id for w in workers] == [queue.worker.id]
        (me,) = workers
        assert me.types == ("t",) and me.slots == 2 and me.pid > 0 and me.host
        assert me.expires_at > me.last_heartbeat >= me.started_at
    # Stopped cleanly: the record goes at once, not after the lease.
    other = Queue(store, concurrency=0)
    async with other:
        assert await other.workers() == []


async def test_the_registry_shows_running_jobs_long_before_the_next_heartbeat(
    store: Store,
) -> None:
    # lease=60: heartbeats every 20 s, so only the running-set refresh can pass this.
    queue = Queue(store, concurrency=2, worker=WorkerConfig(lease=60))
    release = anyio.Event()

    @queue.job_type("t")
    async def handler(ctx: Any, params: Any) -> None:
        await release.wait()

    async def running() -> tuple[str, ...]:
        workers = await queue.workers()
        return workers[0].running if workers else ()

    async with queue:
        job = await queue.submit("t", {})
        with anyio.fail_after(8):
            while await running() != (job.id,):
                await anyio.sleep(0.05)
        release.set()
        await queue.wait(job.id, timeout=10)
        with anyio.fail_after(8):
            while await running() != ():
                await anyio.sleep(0.05)


async def test_cancel_from_another_instance_reaches_the_running_handler(
    store_factory: StoreFactory,
) -> None:
    worker_store, web_store = await store_factory(), await store_factory()
    worker = Queue(worker_store, concurrency=1)
    web = Queue(web_store, concurrency=0)
    entered = anyio.Event()

    @worker.job_type("t")
    async def handler(ctx: Any, params: Any) -> None:
        entered.set()
        await anyio.sleep(60)

    web.registry = worker.registry
    async with worker, web:
        job = await web.submit("t", {})
        with anyio.fail_after(10):
            await entered.wait()
        await web.cancel(job.id)
        with anyio.fail_after(10):  # the heartbeat (10 s) would be too late
            done = await web.wait(job.id)
        assert done.status.value == "cancelled"


async def test_queue_wait_survives_a_resync(store_factory: StoreFactory, backend: Backend) -> None:
    """A job that ends while the observer's notifier is cut off is still seen to end."""
    worker_store, web_store = await store_factory(), await store_factory()
    worker = Queue(worker_store, concurrency=1)
    web = Queue(web_store, concurrency=0)
    release = anyio.Event()

    @worker.job_type("t")
    async def handler(ctx: Any, params: Any) -> str:
        await release.wait()
        return "ok"

    web.registry = worker.registry
    async with worker, web:
        job = await web.submit("t", {})
        log = EventLog(web_store)
        result: list[Any] = []

        async def waiter() -> None:
            result.append(await web.wait(job.id, timeout=30))

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.sleep(0.2)
            if backend.kind == "postgres":
                # Cut LISTEN, finish the job while nobody listens: its NOTIFY is lost.
                await _force_gap(backend, web_store)
                release.set()
            elif backend.kind in ("sqlite", "redis"):
                release.set()
                await worker.wait(job.id, timeout=10)
                await _force_gap(backend, web_store)  # ...and the tail misses its end
            else:
                release.set()
        assert result[0].status.value == "completed"
        del log


async def test_the_remote_events_inbox_is_bounded_and_resyncs_after_dropping() -> None:
    """A flood of notifications beyond the inbox is dropped, then the store resyncs."""
    import json as _json

    from asyncjobs.codec import event_to_record
    from asyncjobs.job import EventType, JobEvent
    from asyncjobs.stores.postgres.events import RemoteEvents
    from asyncjobs.stores.tasks import BackgroundTasks

    delivered: list[JobEvent] = []
    resyncs: list[int] = []
    inbox = RemoteEvents(
        "me",
        deliver=delivered.extend,
        wake=lambda: None,
        fetch=lambda job_id: None,  # type: ignore[arg-type, return-value]
        wanted=lambda: True,
        resync=lambda: resyncs.append(1),
        inbox_max=3,
    )
    tasks = BackgroundTasks("test")
    await tasks.start()
    try:
        inbox.start(tasks)
        job = make_job()
        for seq in range(1, 9):  # all at once, before the consumer runs: 5 are dropped
            record = {
                "src": "other",
                **event_to_record(JobEvent(EventType.CREATED, seq, at(0), job)),
            }
            inbox.on_payload(_json.dumps(record))
        with anyio.fail_after(5):
            while not resyncs:
                await anyio.sleep(0.01)
        assert [e.seq for e in delivered] == [1, 2, 3]
        assert inbox.dropped_total == 5 and resyncs == [1]
    finally:
        await inbox.stop()
        await tasks.aclose()
