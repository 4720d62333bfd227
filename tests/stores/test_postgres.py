"""PostgreSQL-specific behaviour of PostgresStore, against the real server.

The conformance suite covers the Store protocol; these tests cover what only a store
shared by processes has: two instances on one schema (events, claims, limits,
idempotency races), migrations under concurrency, oversized NOTIFY payloads, and
recovery when the server drops the LISTEN connection or pooled connections.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

import anyio
import asyncpg
import pytest

from asyncjobs.errors import ConfigurationError, LeaseLost
from asyncjobs.job import EventType, Job, JobStatus
from asyncjobs.stores import Outcome, open_store
from asyncjobs.stores.postgres import PostgresStore, migrate
from asyncjobs.stores.postgres.schema import MIGRATIONS

from .test_conformance import LEASE, EventLog, add, at, claim_one, make_job, token

ALL_VERSIONS = [version for version, _ in MIGRATIONS]

pytestmark = pytest.mark.postgres

E = EventType
DONE, CANCELLED = JobStatus.COMPLETED, JobStatus.CANCELLED
Factory = Callable[..., Awaitable[PostgresStore]]


@pytest.fixture
def schema() -> str:
    return f"aj_pg_{uuid.uuid4().hex[:16]}"


@pytest.fixture
async def stores(postgres_url: str, schema: str) -> AsyncIterator[Factory]:
    """``await stores()`` opens another PostgresStore on this test's own schema."""
    opened: list[PostgresStore] = []

    async def make(**kwargs: object) -> PostgresStore:
        store = PostgresStore(postgres_url, schema=schema, **kwargs)  # type: ignore[arg-type]
        opened.append(store)
        await store.open()
        return store

    try:
        yield make
    finally:
        for store in opened:
            await store.close()
        conn = await asyncpg.connect(postgres_url)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()


async def _admin(postgres_url: str, query: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(postgres_url)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


# -- URLs ------------------------------------------------------------------------


def test_from_url_takes_the_schema_out_of_the_dsn() -> None:
    store = PostgresStore.from_url(
        "postgres://u:secret@db:5432/jobs?schema=tenant_a&sslmode=disable"
    )
    assert store.schema == "tenant_a"
    assert store.dsn == "postgres://u:secret@db:5432/jobs?sslmode=disable"
    assert "secret" not in store.url
    assert isinstance(open_store("postgresql://db/jobs"), PostgresStore)
    assert PostgresStore.from_url("postgresql://db/jobs").schema == "asyncjobs"


@pytest.mark.parametrize("bad", ["1abc", "a-b", "x" * 49, 'a"; drop table jobs; --'])
def test_bad_schema_names_are_refused(bad: str) -> None:
    with pytest.raises(ConfigurationError, match="schema name"):
        PostgresStore("postgresql://db/jobs", schema=bad)


# -- migrations --------------------------------------------------------------------


async def test_migrate_is_idempotent(postgres_url: str, stores: Factory, schema: str) -> None:
    from asyncjobs.stores.postgres.schema import MIGRATIONS

    expected = [version for version, _ in MIGRATIONS]
    assert await migrate(f"{postgres_url}?schema={schema}") == expected
    assert await migrate(postgres_url, schema) == []
    store = await stores()  # open() after migrate() finds nothing to do
    (job,) = await add(store, make_job())
    assert await store.get(job.id) == job


async def test_concurrent_open_migrates_once(
    postgres_url: str, stores: Factory, schema: str
) -> None:
    with anyio.fail_after(30):
        opened = await asyncio.gather(*(stores() for _ in range(5)))
    rows = await _admin(postgres_url, f'SELECT version FROM "{schema}".schema_migrations')
    from asyncjobs.stores.postgres.schema import MIGRATIONS

    assert sorted(r[0] for r in rows) == [version for version, _ in MIGRATIONS]
    (job,) = await add(opened[0], make_job())
    assert await opened[4].get(job.id) == job


async def test_a_schema_from_a_newer_version_is_refused(
    postgres_url: str, stores: Factory, schema: str
) -> None:
    await stores()
    await _admin(postgres_url, f'INSERT INTO "{schema}".schema_migrations (version) VALUES (99)')
    with pytest.raises(ConfigurationError, match="newer"):
        await migrate(postgres_url, schema)


# -- two instances on one schema -------------------------------------------------


async def test_every_event_type_reaches_the_other_instance(stores: Factory) -> None:
    one, two = await stores(), await stores()
    log = EventLog(two)
    (job,) = await add(one, make_job(max_attempts=2))
    running = await claim_one(one)
    await one.set_progress(job.id, token(running), 0.5, "half", now=at(2))
    await one.request_cancel(job.id, now=at(3))
    await one.request_cancel(job.id, now=at(3.5))  # a repeat changes nothing, says nothing
    await one.requeue_expired(now=at(100))
    events = await log.expect(E.CREATED, E.STARTED, E.PROGRESS, E.CANCEL_REQUESTED, E.CANCELLED)
    assert [e.job.version for e in events] == [1, 2, 3, 4, 5]
    assert events[-1].job == await two.get(job.id)
    await one.delete(job.id, now=at(101))
    (deleted,) = await log.expect(E.DELETED)
    assert deleted.job == events[-1].job
    seqs = [e.seq for e in log.events]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)


async def test_an_event_too_big_for_notify_arrives_whole(stores: Factory) -> None:
    one, two = await stores(), await stores()
    log = EventLog(two)
    big = {"blob": "x" * 20_000}
    (job,) = await add(one, make_job(params=big))
    running = await claim_one(one)
    done = Outcome(JobStatus.COMPLETED, result={"echo": "y" * 20_000})
    await one.finish(job.id, token(running), done, now=at(2))
    # Read back while the job exists (a job deleted first can only be sent slim).
    created, started, completed = await log.expect(E.CREATED, E.STARTED, E.COMPLETED)
    await one.delete(job.id, now=at(3))
    (deleted,) = await log.expect(E.DELETED)
    assert created.job.params == big
    assert started.job.params == big
    assert completed.job.result == {"echo": "y" * 20_000}
    # Deleted before the receiver could read it back: the slim snapshot stands in.
    assert deleted.job.id == job.id
    assert deleted.job.status is JobStatus.COMPLETED


async def test_claims_from_two_instances_never_overlap(stores: Factory) -> None:
    one, two = await stores(), await stores()
    jobs = [make_job(priority=i % 3) for i in range(120)]
    for job in jobs:
        await one.add(job)
    claimed: Counter[str] = Counter()

    async def claimer(store: PostgresStore, name: str) -> None:
        while True:
            got = await store.claim(name, types=["t"], limit=4, lease=LEASE, now=at(1))
            if not got:
                return
            claimed.update(j.id for j in got)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(claimer, one, f"one-{i}")
                tg.start_soon(claimer, two, f"two-{i}")
    assert set(claimed) == {j.id for j in jobs}
    assert max(claimed.values()) == 1


async def test_type_limits_hold_under_concurrent_claims(stores: Factory) -> None:
    one, two = await stores(), await stores()
    for _ in range(30):
        await one.add(make_job("limited"))
        await one.add(make_job("free"))
    results: list[list[str]] = []

    async def claimer(store: PostgresStore, name: str) -> None:
        got = await store.claim(
            name,
            types=["limited", "free"],
            limit=5,
            lease=LEASE,
            now=at(1),
            type_limits={"limited": 3},
        )
        results.append([j.type for j in got])

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for i in range(6):
                tg.start_soon(claimer, one if i % 2 else two, f"w{i}")
    kinds = Counter(t for got in results for t in got)
    assert kinds["limited"] == 3
    assert kinds["free"] == 27  # every claimer filled its batch with free jobs
    stats = await two.stats()
    assert stats.by_type["limited"][JobStatus.RUNNING] == 3


async def test_an_idempotency_race_stores_one_job(stores: Factory) -> None:
    one, two = await stores(), await stores()
    log = EventLog(one)
    results = await asyncio.gather(
        *((one if i % 2 else two).add(make_job(key="same")) for i in range(10))
    )
    assert sum(created for _, created in results) == 1
    assert len({job.id for job, _ in results}) == 1
    await log.expect(E.CREATED)
    await anyio.sleep(0.2)
    assert len(log.events) == 1


# -- the single-job hot path (progress, finish) ------------------------------------


def _no_reads(store: PostgresStore, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every ``get`` of ``store`` (the hot path should make none)."""
    reads: list[str] = []
    real = store.get

    async def get(job_id: str) -> Job:
        reads.append(job_id)
        return await real(job_id)

    monkeypatch.setattr(store, "get", get)
    return reads


async def test_progress_and_finish_of_a_claimed_job_do_not_read_it_first(
    stores: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    one, two = await stores(), await stores()
    log = EventLog(two)
    (job,) = await add(one, make_job())
    running = await claim_one(one)
    reads = _no_reads(one, monkeypatch)
    await one.set_progress(job.id, token(running), 0.5, "half", now=at(2))
    done = await one.finish(job.id, token(running), Outcome(DONE, result=7), now=at(3))
    assert reads == []
    assert done.version == running.version + 2
    assert done == await two.get(job.id)
    events = await log.expect(E.CREATED, E.STARTED, E.PROGRESS, E.COMPLETED)
    assert events[-1].job == done


async def test_finish_after_another_instance_asked_to_cancel_ends_cancelled(
    stores: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    one, two = await stores(), await stores()
    (job,) = await add(one, make_job(max_attempts=3))
    running = await claim_one(one)
    flagged = await two.request_cancel(job.id, now=at(2))  # one's snapshot is stale now
    reads = _no_reads(one, monkeypatch)
    retry = Outcome(JobStatus.SCHEDULED, run_at=at(60))
    ended = await one.finish(job.id, token(running), retry, now=at(3))
    assert reads == [job.id]  # the fenced write missed, so it read the job and retried
    assert ended.status is CANCELLED
    assert ended.version == flagged.version + 1
    assert ended == await two.get(job.id)


async def test_a_stale_token_is_fenced_off_even_with_a_held_snapshot(stores: Factory) -> None:
    one, two = await stores(), await stores()
    (job,) = await add(one, make_job(max_attempts=2))
    first = await claim_one(one)
    await two.requeue_expired(now=at(100))  # one's lease ran out
    second = await claim_one(two, now=101, worker="w2")
    with pytest.raises(LeaseLost):
        await one.set_progress(job.id, token(first), 0.5, None, now=at(102))
    with pytest.raises(LeaseLost):
        await one.finish(job.id, token(first), Outcome(DONE), now=at(102))
    assert await one.get(job.id) == second  # untouched: the new holder decides
    done = await two.finish(job.id, token(second), Outcome(DONE), now=at(103))
    assert done.status is DONE
    with pytest.raises(LeaseLost):  # and a finished job cannot be finished again
        await two.finish(job.id, token(second), Outcome(DONE), now=at(104))


async def test_progress_from_a_held_snapshot_keeps_a_later_renewal(stores: Factory) -> None:
    one, two = await stores(), await stores()
    (job,) = await add(one, make_job())
    running = await claim_one(one)  # lease until at(1 + LEASE)
    # Renewed through another instance: one's held snapshot still has the old expiry,
    # and a renewal does not change the version the write is fenced on.
    renewed = await two.renew(job.id, token(running), lease=LEASE, now=at(20))
    assert renewed.lease is not None
    await one.set_progress(job.id, token(running), 0.5, None, now=at(21))
    stored = await two.get(job.id)
    assert stored.progress == 0.5
    assert stored.lease == renewed.lease
    assert await two.requeue_expired(now=at(1 + LEASE + 1)) == []  # still held


async def test_concurrent_finishes_share_statements_and_a_moved_row_falls_back(
    stores: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    one, two = await stores(), await stores()
    jobs = await add(one, *(make_job(max_attempts=3) for _ in range(20)))
    running = await one.claim("w", types=["t"], limit=20, lease=LEASE, now=at(1))
    assert len(running) == 20
    flagged = await two.request_cancel(jobs[7].id, now=at(2))  # one's snapshot is stale
    log = EventLog(two)
    batches: list[int] = []
    real = one._sql.write

    async def write(conn: object, changes: list[object], *args: object, **kw: object) -> object:
        batches.append(len(changes))
        return await real(conn, changes, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(one._sql, "write", write)
    retry = Outcome(JobStatus.SCHEDULED, run_at=at(60))
    ended = await asyncio.gather(
        *(
            one.finish(j.id, token(j), retry if j.id == jobs[7].id else Outcome(DONE), now=at(3))
            for j in running
        )
    )
    assert len(batches) < 20 and sum(batches) == 21  # the stale one twice: missed, retried
    by_id = {j.id: j for j in ended}
    assert by_id[jobs[7].id].status is CANCELLED  # the cancel request won over the retry
    assert by_id[jobs[7].id].version == flagged.version + 1
    assert [j.status for i, j in by_id.items() if i != jobs[7].id] == [DONE] * 19
    for job in ended:
        assert job == await two.get(job.id)
    await log.wait_for(20)
    assert Counter(e.job.id for e in log.events) == Counter(list(by_id))


# -- failures of the connection ------------------------------------------------------


async def test_listener_reconnects_after_its_backend_is_terminated(
    postgres_url: str, stores: Factory
) -> None:
    one, two = await stores(), await stores()
    listener = two.listener
    assert listener is not None
    assert listener.backend_pid is not None
    old_pid = listener.backend_pid
    log = EventLog(two)
    await _admin(postgres_url, "SELECT pg_terminate_backend($1)", old_pid)
    # The waiting worker is woken once the connection is back, to re-claim what it missed.
    with anyio.fail_after(10):
        await two.wait_for_work(60)
    assert listener.reconnects == 1
    assert listener.backend_pid not in (None, old_pid)
    (job,) = await add(one, make_job())
    (event,) = await log.expect(E.CREATED)
    assert event.job == job


async def test_pool_operations_survive_terminated_connections(
    postgres_url: str, stores: Factory
) -> None:
    store = await stores(min_pool=2, max_pool=2)
    (job,) = await add(store, make_job())
    await asyncio.gather(store.get(job.id), store.get(job.id))  # both pool slots connected
    listener = store.listener
    assert listener is not None
    killed = await _admin(
        postgres_url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
        f"asyncjobs:{store.schema}",
    )
    assert len(killed) == 2  # both pooled connections, and not the LISTEN one
    # No pause: the client may not have noticed the closed sockets yet; a retry covers it.
    assert await store.get(job.id) == job
    running = await claim_one(store)
    assert running.id == job.id


async def test_a_role_without_create_privileges_opens_a_migrated_schema(
    postgres_url: str, stores: Factory, schema: str
) -> None:
    await stores()  # migrated by the owner
    role = f"aj_app_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(postgres_url)
    try:
        await admin.execute(
            f"CREATE ROLE {role} LOGIN;"
            f' GRANT USAGE ON SCHEMA "{schema}" TO {role};'
            f' GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "{schema}" TO {role};'
            f' GRANT USAGE ON ALL SEQUENCES IN SCHEMA "{schema}" TO {role};'
        )
        parts = urlsplit(postgres_url)
        app_url = urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port or 5432}"))
        store = PostgresStore(app_url, schema=schema)
        await store.open()
        try:
            (job,) = await add(store, make_job())
            assert (await claim_one(store)).id == job.id
        finally:
            await store.close()
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await migrate(app_url, f"{schema}_new")  # but it cannot create a schema
    finally:
        await admin.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")
        await admin.close()


# -- a claim whose reply is lost --------------------------------------------------------


async def test_a_claim_whose_reply_is_lost_after_commit_returns_its_jobs(
    stores: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await stores()
    jobs = [(await add(store, make_job(params={"i": i})))[0] for i in range(3)]
    real = store._sql.claim
    calls = 0

    async def commit_then_drop(conn: asyncpg.Connection, *args: object) -> list[object]:
        nonlocal calls
        calls += 1
        if calls > 1:
            return await real(conn, *args)  # type: ignore[arg-type]
        await real(conn, *args)  # type: ignore[arg-type] # committed: one statement
        conn.terminate()  # ...and the reply is lost with the connection
        raise asyncpg.ConnectionDoesNotExistError("connection was closed mid-reply")

    monkeypatch.setattr(store._sql, "claim", commit_then_drop)
    log = EventLog(store)
    claimed = await store.claim("w1", types=["t"], limit=10, lease=LEASE, now=at(1))
    assert calls == 1, "the retry claimed again instead of reading back the first attempt"
    assert sorted(j.id for j in claimed) == sorted(j.id for j in jobs)
    # The caller holds the very tokens the database has: it can finish every job.
    for job in claimed:
        assert (await store.get(job.id)).lease == job.lease
        await store.finish(job.id, token(job), Outcome(DONE), now=at(2))
    assert {e.job.id for e in await log.expect(*[E.STARTED] * 3)} == {j.id for j in jobs}


async def test_a_retry_waits_for_a_claim_still_committing_on_the_server(
    postgres_url: str, stores: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await stores()
    jobs = [(await add(store, make_job(params={"i": i})))[0] for i in range(2)]
    real = store._sql.claim
    side = await asyncpg.connect(postgres_url)
    late: list[asyncio.Task[None]] = []
    calls = 0

    async def claim_commits_late(conn: asyncpg.Connection, *args: object) -> list[object]:
        # The first attempt's statement ran but its transaction commits only after the
        # client gave up on it and retried (a reply lost while the commit was on its way).
        nonlocal calls
        calls += 1
        if calls > 1:
            return await real(conn, *args)  # type: ignore[arg-type]
        transaction = side.transaction()
        await transaction.start()
        await real(side, *args)  # type: ignore[arg-type]

        async def commit() -> None:
            await asyncio.sleep(0.5)
            await transaction.commit()

        late.append(asyncio.create_task(commit()))
        raise asyncpg.ConnectionDoesNotExistError("connection was closed mid-reply")

    monkeypatch.setattr(store._sql, "claim", claim_commits_late)
    try:
        with anyio.fail_after(20):
            claimed = await store.claim("w1", types=["t"], limit=10, lease=LEASE, now=at(1))
        assert sorted(j.id for j in claimed) == sorted(j.id for j in jobs)
        for job in claimed:
            assert (await store.get(job.id)).lease == job.lease
    finally:
        for task in late:
            await task
        await side.close()


async def test_a_max_attempts_1_job_runs_when_its_claim_reply_is_lost(
    stores: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from asyncjobs import JobContext, Queue

    store = await stores()
    real = store._sql.claim
    dropped = 0

    async def drop_first_reply(conn: asyncpg.Connection, *args: object) -> list[object]:
        nonlocal dropped
        events = await real(conn, *args)  # type: ignore[arg-type]
        if events and not dropped:
            dropped += 1
            conn.terminate()
            raise asyncpg.ConnectionDoesNotExistError("connection was closed mid-reply")
        return events

    monkeypatch.setattr(store._sql, "claim", drop_first_reply)
    queue = Queue(store, concurrency=1)
    ran: list[int] = []

    @queue.job_type("once", max_attempts=1)
    async def once(ctx: JobContext, params: dict[str, int]) -> int:
        ran.append(params["n"])
        return params["n"]

    async with queue:
        job = await queue.submit("once", {"n": 7})
        done = await queue.wait(job.id, timeout=20)
    assert dropped == 1
    assert done.status is DONE and done.result == 7 and done.attempts == 1
    assert ran == [7]
