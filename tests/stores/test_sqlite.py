"""Behaviour only the SQLite store has: a file that outlives the store, its schema and
pragmas, and one thread serializing every call. The shared conformance suite covers the
Store protocol itself."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio
import pytest

from asyncjobs._ulid import new_ulid
from asyncjobs.errors import ConfigurationError, LeaseLost, QueueFull
from asyncjobs.job import EventType, Job, JobEvent, JobStatus
from asyncjobs.stores import open_store
from asyncjobs.stores.protocol import Outcome
from asyncjobs.stores.sqlite import SqliteStore
from asyncjobs.stores.sqlite.schema import JOB_COLUMNS, MIGRATIONS, job_params
from asyncjobs.webhooks.model import Webhook

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)


def make_job(type: str = "work", *, status: JobStatus = JobStatus.QUEUED, **fields: Any) -> Job:
    fields.setdefault("created_at", NOW)
    fields.setdefault("run_at", NOW)
    fields.setdefault("params", {"n": 1})
    return Job(id=new_ulid(), type=type, status=status, **fields)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "jobs.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(db_path)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def reopened(path: Path) -> SqliteStore:
    store = SqliteStore(path)
    await store.open()
    return store


# -- URLs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///jobs.db", "jobs.db"),
        ("sqlite:///data/jobs.db", "data/jobs.db"),
        ("sqlite:////var/lib/app/jobs.db", "/var/lib/app/jobs.db"),
        ("sqlite:///:memory:", ":memory:"),
        ("SQLITE:///jobs.db", "jobs.db"),
    ],
)
def test_from_url_paths(url: str, path: str) -> None:
    store = SqliteStore.from_url(url)
    assert store.path == path
    assert store.busy_timeout == 5.0


def test_from_url_busy_timeout() -> None:
    assert SqliteStore.from_url("sqlite:///j.db?busy_timeout=0.5").busy_timeout == 0.5


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://",
        "sqlite:///",
        "sqlite://host/jobs.db",
        "postgresql:///jobs.db",
        "sqlite:///j.db?timeout=3",
        "sqlite:///j.db?busy_timeout=soon",
    ],
)
def test_from_url_rejects(url: str) -> None:
    with pytest.raises(ConfigurationError):
        SqliteStore.from_url(url)


def test_open_store_picks_sqlite(db_path: Path) -> None:
    store = open_store(f"sqlite:///{db_path}")
    assert isinstance(store, SqliteStore)
    assert store.path == str(db_path)


async def test_memory_database_works() -> None:
    store = SqliteStore.from_url("sqlite:///:memory:")
    await store.open()
    try:
        job, created = await store.add(make_job())
        assert created
        assert await store.get(job.id) == job
    finally:
        await store.close()


async def test_calls_before_open_fail_clearly(db_path: Path) -> None:
    store = SqliteStore(db_path)
    with pytest.raises(ConfigurationError, match="not open"):
        await store.get("nope")
    await store.open()
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(ConfigurationError, match="not open"):
        await store.add(make_job())


# -- the file: schema, pragmas, persistence -------------------------------------------------


def pragma(path: Path, name: str) -> Any:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f"PRAGMA {name}").fetchone()[0]
    finally:
        conn.close()


async def test_migrates_an_empty_file_and_reopens_idempotently(db_path: Path) -> None:
    db_path.write_bytes(b"")  # noqa: ASYNC240 (an existing, empty file is version 0)
    first = await reopened(db_path)
    job, _ = await first.add(make_job())
    await first.open()  # idempotent while open
    await first.close()
    assert pragma(db_path, "user_version") == len(MIGRATIONS)

    second = await reopened(db_path)
    try:
        assert pragma(db_path, "user_version") == len(MIGRATIONS)
        assert await second.get(job.id) == job
    finally:
        await second.close()


async def test_refuses_a_newer_schema(db_path: Path) -> None:
    conn = sqlite3.connect(db_path)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    store = SqliteStore(db_path)
    with pytest.raises(ConfigurationError, match="upgrade asyncjobs"):
        await store.open()
    with pytest.raises(ConfigurationError, match="not open"):
        await store.get("x")


async def test_wal_mode_and_synchronous_normal(store: SqliteStore, db_path: Path) -> None:
    assert pragma(db_path, "journal_mode") == "wal"
    # synchronous is per connection: ask the store's own.
    synchronous = await store._thread.read(
        lambda conn: conn.execute("PRAGMA synchronous").fetchone()
    )
    assert synchronous == (1,)  # NORMAL


async def test_jobs_survive_close_and_reopen(db_path: Path) -> None:
    store = await reopened(db_path)
    queued, _ = await store.add(make_job(priority=5, owner="ann", tags=("a", "b")))
    scheduled, _ = await store.add(
        make_job(status=JobStatus.SCHEDULED, run_at=NOW + timedelta(hours=1))
    )
    keyed, _ = await store.add(make_job(idempotency_key="k1"))
    (running,) = await store.claim("w1", types=["work"], limit=1, lease=30, now=NOW)
    assert running.id == queued.id  # highest priority first
    assert running.lease is not None
    done = await store.finish(
        running.id, running.lease.token, Outcome(JobStatus.COMPLETED, result=[1, 2]), now=NOW
    )
    await store.close()

    store = await reopened(db_path)
    try:
        assert await store.get(queued.id) == done
        assert (await store.get(queued.id)).result == [1, 2]
        assert await store.get(scheduled.id) == scheduled
        assert await store.get(keyed.id) == keyed
        again, created = await store.add(make_job(idempotency_key="k1"))
        assert (again, created) == (keyed, False)
        page = await store.list(owner="ann")
        assert [j.id for j in page.jobs] == [queued.id]
        stats = await store.stats()
        assert stats.counts[JobStatus.COMPLETED] == 1
        assert stats.counts[JobStatus.SCHEDULED] == 1
        assert stats.counts[JobStatus.QUEUED] == 1
    finally:
        await store.close()


async def test_the_same_instance_reopens(store: SqliteStore) -> None:
    job, _ = await store.add(make_job())
    await store.close()
    await store.open()
    assert await store.get(job.id) == job


async def test_seq_keeps_increasing_across_restarts(db_path: Path) -> None:
    seen: list[int] = []
    store = await reopened(db_path)
    store.add_listener(lambda e: seen.append(e.seq))
    for _ in range(3):
        await store.add(make_job())
    await store.close()

    store = await reopened(db_path)
    store.add_listener(lambda e: seen.append(e.seq))
    try:
        await store.add(make_job())
        await store.claim("w", types=["work"], limit=2, lease=5, now=NOW)
    finally:
        await store.close()
    assert seen == [1, 2, 3, 4, 5, 6]


async def test_lease_expired_while_down_is_recovered(db_path: Path) -> None:
    store = await reopened(db_path)
    await store.add(make_job(max_attempts=3))
    (running,) = await store.claim("dead", types=["work"], limit=1, lease=10, now=NOW)
    await store.close()  # the process "dies" holding the lease

    store = await reopened(db_path)
    try:
        assert await store.requeue_expired(now=NOW + timedelta(seconds=5)) == []
        (recovered,) = await store.requeue_expired(now=NOW + timedelta(seconds=10))
        assert recovered.status is JobStatus.QUEUED
        assert recovered.attempts == 1
        assert recovered.error is not None
        assert recovered.error.type == "LeaseExpired"
        assert running.lease is not None
        (again,) = await store.claim("alive", types=["work"], limit=1, lease=10, now=NOW)
        assert again.attempts == 2
        assert again.lease is not None
        assert again.lease.token != running.lease.token
    finally:
        await store.close()


# -- one thread, many callers ----------------------------------------------------------------


async def test_many_tasks_serialize(store: SqliteStore) -> None:
    events: list[JobEvent] = []
    threads: set[int] = set()

    def listen(event: JobEvent) -> None:
        threads.add(threading.get_ident())
        events.append(event)

    store.add_listener(listen)
    ids: list[str] = []

    async def add_one() -> None:
        job, _ = await store.add(make_job())
        ids.append(job.id)

    claimed: list[Job] = []

    async def claim_one() -> None:
        claimed.extend(await store.claim("w", types=["work"], limit=1, lease=30, now=NOW))

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for _ in range(60):
                tg.start_soon(add_one)
        async with anyio.create_task_group() as tg:
            for _ in range(80):
                tg.start_soon(claim_one)

    assert len(ids) == 60
    assert sorted(j.id for j in claimed) == sorted(ids)  # each job claimed exactly once
    assert [e.seq for e in events] == list(range(1, 121))
    assert threads == {threading.get_ident()}  # listeners run on the event loop thread
    assert (await store.stats()).counts[JobStatus.RUNNING] == 60


async def test_second_store_on_same_file_sees_and_never_double_claims(
    store: SqliteStore, db_path: Path
) -> None:
    other = await reopened(db_path)
    try:
        jobs = [(await store.add(make_job()))[0] for _ in range(40)]
        assert await other.get(jobs[0].id) == jobs[0]
        assert len((await other.list(limit=100)).jobs) == 40

        claimed: list[Job] = []

        async def drain(s: SqliteStore, worker: str) -> None:
            while batch := await s.claim(worker, types=["work"], limit=3, lease=30, now=NOW):
                claimed.extend(batch)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for n in range(3):
                    tg.start_soon(drain, store, f"a{n}")
                    tg.start_soon(drain, other, f"b{n}")
        assert sorted(j.id for j in claimed) == sorted(j.id for j in jobs)
        # events of the second store carry seq from the shared, persisted counter
        seen: list[int] = []
        await other.tail.poll()  # the first store's claims reach `other` before this
        other.add_listener(lambda e: seen.append(e.seq))
        await other.add(make_job())
        assert seen == [81]
    finally:
        await other.close()


async def test_wait_for_work_wakes_on_add(store: SqliteStore) -> None:
    woke = anyio.Event()

    async def waiter() -> None:
        await store.wait_for_work(30)
        woke.set()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.sleep(0.05)
            assert not woke.is_set()
            await store.add(make_job())
            await woke.wait()


# -- cancellation keeps commit and events together -------------------------------------------


@pytest.mark.parametrize("how", ["anyio", "asyncio"])
async def test_cancelled_caller_never_splits_commit_from_event(
    store: SqliteStore, how: str
) -> None:
    created: list[str] = []
    store.add_listener(lambda e: created.append(e.job.id) if e.type is EventType.CREATED else None)
    jobs = [make_job() for _ in range(20)]
    for n, job in enumerate(jobs):
        if how == "anyio":
            with anyio.CancelScope() as scope:
                scope.cancel()
                await store.add(job)
        else:
            task = asyncio.create_task(store.add(job))
            for _ in range(n % 4):  # cancel at different points of the call
                await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    await store.stats()  # the store thread has run everything submitted before this
    await asyncio.sleep(0)  # and the loop has run what that thread handed back
    stored = {j.id for j in (await store.list(limit=100)).jobs}
    assert set(created) == stored
    if how == "anyio":
        assert stored == {j.id for j in jobs}  # a shielded write always completes


async def test_the_owner_migration_scopes_existing_idempotency_keys(db_path: Path) -> None:
    store = SqliteStore(db_path)
    await store.open()
    owned, _ = await store.add(make_job(idempotency_key="k", owner="alice"))
    unowned, _ = await store.add(make_job(idempotency_key="u"))
    await store.close()
    # Put the file back as it was before that migration (the 4th): bare keys. The later
    # ones run again on reopening; each must be fine with that (dropping a trigger is).
    conn = sqlite3.connect(db_path)
    conn.execute("UPDATE jobs SET idempotency_key = 'k' WHERE id = ?", (owned.id,))
    conn.execute("PRAGMA user_version = 3")
    conn.commit()
    conn.close()
    store = SqliteStore(db_path)
    await store.open()
    try:
        again, created = await store.add(make_job(idempotency_key="k", owner="alice"))
        assert not created and again.id == owned.id
        other, created = await store.add(make_job(idempotency_key="k", owner="bob"))
        assert created and other.id != owned.id
        same, created = await store.add(make_job(idempotency_key="u"))
        assert not created and same.id == unowned.id
    finally:
        await store.close()


async def test_a_store_alone_on_its_file_appends_no_events(tmp_path: Path) -> None:
    """One process alone pays nothing for cross-process events; a second one makes the
    first append them, and stops it again once it has left."""
    import sqlite3

    first = SqliteStore(tmp_path / "alone.db")
    await first.open()
    try:
        await first.add(make_job())

        def rows() -> int:
            conn = sqlite3.connect(tmp_path / "alone.db")
            try:
                return int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])
            finally:
                conn.close()

        assert rows() == 0
        second = SqliteStore(tmp_path / "alone.db")
        await second.open()  # returns once the first has seen it
        try:
            seen: list[str] = []
            second.add_listener(lambda e: seen.append(e.type.value))
            await first.add(make_job())
            assert rows() == 1
            with anyio.fail_after(10):
                while not seen:
                    await anyio.sleep(0.01)
            assert seen == ["job_created"]
        finally:
            await second.close()
        await first.tail.refresh_peers()  # the second left: nobody to write for
        await first.add(make_job())
        assert rows() == 1
    finally:
        await first.close()


# -- group commit: the writes queued together go out in one transaction -------------------


def trace_statements(store: SqliteStore) -> list[str]:
    """Every statement the store's connection runs from now on (on its thread)."""
    seen: list[str] = []

    def install(conn: sqlite3.Connection) -> None:
        conn.set_trace_callback(seen.append)

    executor = store._thread._executor
    assert executor is not None
    executor.submit(lambda: install(store._thread._connection())).result()
    return seen


async def claimed(store: SqliteStore, count: int) -> list[Job]:
    for _ in range(count):
        await store.add(make_job())
    return await store.claim("w", types=["work"], limit=count, lease=30, now=NOW)


def token(job: Job) -> str:
    assert job.lease is not None
    return job.lease.token


async def test_writes_queued_together_commit_once(store: SqliteStore) -> None:
    jobs = await claimed(store, 20)
    statements = trace_statements(store)
    ended: list[JobEvent] = []
    store.add_listener(ended.append)
    done = await asyncio.gather(
        *(
            store.finish(j.id, token(j), Outcome(JobStatus.COMPLETED, result=n), now=NOW)
            for n, j in enumerate(jobs)
        )
    )
    assert [j.status for j in done] == [JobStatus.COMPLETED] * 20
    assert statements.count("BEGIN IMMEDIATE") == 1
    assert statements.count("COMMIT") == 1
    # one event each, numbered in the order the calls were made
    assert [e.job.id for e in ended] == [j.id for j in jobs]
    assert [e.seq for e in ended] == list(range(ended[0].seq, ended[0].seq + 20))
    for job in done:
        assert await store.get(job.id) == job


async def test_a_stale_token_fails_only_its_own_write(store: SqliteStore) -> None:
    first, second, third = await claimed(store, 3)
    statements = trace_statements(store)
    results = await asyncio.gather(
        store.finish(first.id, token(first), Outcome(JobStatus.COMPLETED), now=NOW),
        store.finish(second.id, "stale", Outcome(JobStatus.COMPLETED), now=NOW),
        store.set_progress(third.id, token(third), 0.5, "half", now=NOW),
        return_exceptions=True,
    )
    assert statements.count("COMMIT") == 1
    assert isinstance(results[0], Job) and results[0].status is JobStatus.COMPLETED
    assert isinstance(results[1], LeaseLost)
    assert isinstance(results[2], Job) and results[2].progress == 0.5
    assert (await store.get(first.id)).status is JobStatus.COMPLETED
    assert await store.get(second.id) == second  # untouched, still running
    assert (await store.get(third.id)).message == "half"


async def test_a_write_that_fails_after_writing_is_undone_alone(store: SqliteStore) -> None:
    events: list[JobEvent] = []
    store.add_listener(events.append)
    alone = make_job()
    over = [make_job(), make_job()]
    results = await asyncio.gather(
        store.add_many(over, max_queued=1),  # inserts both, then finds the queue full
        store.add(alone),
        return_exceptions=True,
    )
    assert isinstance(results[0], QueueFull)
    assert results[1] == (alone, True)
    stored = {j.id for j in (await store.list(limit=10)).jobs}
    assert stored == {alone.id}
    assert [(e.type, e.job.id) for e in events] == [(EventType.CREATED, alone.id)]


async def test_a_cancelled_caller_is_left_out_of_its_batch(store: SqliteStore) -> None:
    kept, dropped = make_job(), make_job()
    task = asyncio.create_task(store.add(dropped))
    await asyncio.sleep(0)  # queued, not yet sent
    task.cancel()
    await store.add(kept)
    with pytest.raises(asyncio.CancelledError):
        await task
    assert {j.id for j in (await store.list(limit=10)).jobs} == {kept.id}


async def test_hot_writes_keep_every_column_in_step_with_the_record(store: SqliteStore) -> None:
    """Claim, renew, progress and finish write only the columns they can change; the
    row must still read back as the job they return."""
    jobs = await claimed(store, 4)
    later = NOW + timedelta(seconds=5)
    renewed = await store.renew(jobs[0].id, token(jobs[0]), lease=60, now=later)
    moved = await store.set_progress(jobs[1].id, token(jobs[1]), 0.25, "a quarter", now=later)
    retry = Outcome(JobStatus.SCHEDULED, run_at=NOW + timedelta(minutes=1))
    outcomes = [Outcome(JobStatus.COMPLETED, result={"ok": 1}), retry]
    done = [
        await store.finish(j.id, token(j), o, now=later)
        for j, o in zip(jobs[2:], outcomes, strict=True)
    ]
    back = await store.finish(renewed.id, token(renewed), Outcome(JobStatus.QUEUED), now=later)

    def columns(conn: sqlite3.Connection, job_id: str) -> tuple[Any, ...]:
        return conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()  # type: ignore[no-any-return]

    for job in [*jobs, renewed, moved, *done, back][4:]:
        row = await store._thread.read(lambda conn, i=job.id: columns(conn, i))  # type: ignore[misc]
        fresh = await store.get(job.id)
        assert row == job_params(fresh)
    assert (await store.get(moved.id)) == moved
    assert (await store.get(back.id)).status is JobStatus.QUEUED


async def test_a_change_by_another_process_is_never_overwritten(
    store: SqliteStore, db_path: Path
) -> None:
    """The store remembers the rows of the jobs it runs; a change another process made
    meanwhile must win over that memory (here: a cancel request, then a requeue)."""
    other = await reopened(db_path)
    try:
        (job,) = await claimed(store, 1)
        await other.request_cancel(job.id, now=NOW)  # sets cancel_requested
        renewed = await other.renew(job.id, token(job), lease=600, now=NOW)
        progressed = await store.set_progress(job.id, token(job), 0.5, None, now=NOW)
        assert progressed.cancel_requested
        assert progressed.lease == renewed.lease  # the other's renewal is kept
        ended = await store.finish(job.id, token(job), Outcome(JobStatus.QUEUED), now=NOW)
        assert ended.status is JobStatus.CANCELLED  # a cancel request wins over a requeue
    finally:
        await other.close()


async def test_events_of_a_batch_reach_another_process(store: SqliteStore, db_path: Path) -> None:
    other = await reopened(db_path)
    try:
        await store.tail.refresh_peers()  # the writer learns of the other now
        heard: list[JobEvent] = []
        other.add_listener(heard.append)
        jobs = [make_job(params={"n": n, "text": 'quote " and \\ and é'}) for n in range(5)]
        mine: list[JobEvent] = []
        store.add_listener(mine.append)
        await asyncio.gather(*(store.add(j) for j in jobs))
        started = await store.claim("w", types=["work"], limit=5, lease=30, now=NOW)
        await asyncio.gather(
            *(store.finish(j.id, token(j), Outcome(JobStatus.COMPLETED), now=NOW) for j in started)
        )
        with anyio.fail_after(10):
            while len(heard) < len(mine):
                await other.tail.poll()
        assert heard == mine
        assert other.tail.gaps == 0
    finally:
        await other.close()


async def test_no_trigger_slows_the_jobs_table(store: SqliteStore, db_path: Path) -> None:
    # Any UPDATE trigger on jobs doubles the cost of each update of a job row.
    conn = sqlite3.connect(db_path)
    try:
        triggers = conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
        assert triggers.fetchall() == []
    finally:
        conn.close()


async def test_a_batch_writes_the_webhook_deliveries_of_its_ends_only(store: SqliteStore) -> None:
    hook = Webhook(id="wh1", url="https://example.com/hook", events=("job_completed",))
    await store.add_webhook(hook, now=NOW)
    first, second, third = await claimed(store, 3)
    await asyncio.gather(
        store.finish(first.id, token(first), Outcome(JobStatus.COMPLETED), now=NOW),
        store.finish(second.id, "stale", Outcome(JobStatus.COMPLETED), now=NOW),
        store.finish(third.id, token(third), Outcome(JobStatus.FAILED), now=NOW),
        return_exceptions=True,
    )
    (delivery,) = await store.list_deliveries(hook.id)
    assert delivery.id == f"msg_{first.id}_0_{hook.id}"
    assert delivery.job == await store.get(first.id)
    assert delivery.event == "job_completed"


async def test_claimed_jobs_get_distinct_fresh_tokens(store: SqliteStore) -> None:
    jobs = await claimed(store, 50)
    tokens = [token(j) for j in jobs]
    assert len(set(tokens)) == 50
    assert all(len(t) == 24 and int(t, 16) >= 0 for t in tokens)
