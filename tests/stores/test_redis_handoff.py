"""The Redis store's hand-off of a new job to a parked worker (``stores/redis/handoff``).

Every test parks a worker the way a worker does (registered with its store, a claim that
came back short) and submits from another store, unless it says otherwise.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta, timezone

import anyio
import attrs
import pytest
import redis.asyncio as aioredis

from asyncjobs import Job, JobStatus
from asyncjobs._ulid import new_ulid
from asyncjobs.job import EventType, JobEvent
from asyncjobs.stores import Outcome, WorkerInfo
from asyncjobs.stores.redis import RedisStore
from asyncjobs.stores.redis.scripts import PARK_TTL, PIN
from asyncjobs.stores.steps import claim_step

from .conftest import destroy_redis_prefix, script_calls

pytestmark = [pytest.mark.redis]

LEASE = 30.0


@pytest.fixture
async def prefix(redis_url: str) -> AsyncIterator[str]:
    name = f"aj_handoff_{uuid.uuid4().hex[:12]}"
    yield name
    await destroy_redis_prefix(redis_url, name)


@pytest.fixture
async def stores(redis_url: str, prefix: str) -> AsyncIterator[Callable[[], RedisStore]]:
    """Opened stores on one queue, closed at the end (``await stores.open(...)``)."""
    made: list[RedisStore] = []

    def make() -> RedisStore:
        store = RedisStore(redis_url, prefix=prefix)
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _job(type_: str = "t", *, priority: int = 0, run_at: datetime | None = None) -> Job:
    now = _now()
    status = JobStatus.QUEUED if run_at is None else JobStatus.SCHEDULED
    return Job(
        id=new_ulid(), type=type_, params={}, status=status, created_at=now,
        run_at=run_at or now, priority=priority, max_attempts=3,
    )  # fmt: skip


async def _open(make: Callable[[], RedisStore]) -> RedisStore:
    store = make()
    await store.open()
    return store


def _info(worker: str, types: tuple[str, ...], now: datetime) -> WorkerInfo:
    return WorkerInfo(
        id=worker, host="h", pid=1, types=types, slots=1, running=(), started_at=now,
        last_heartbeat=now, expires_at=now + timedelta(seconds=LEASE),
    )  # fmt: skip


async def _park(
    store: RedisStore,
    worker: str,
    types: tuple[str, ...] = ("t",),
    limits: dict[str, int] | None = None,
) -> None:
    now = _now()
    await store.register_worker(_info(worker, types, now))
    got = await store.claim(worker, types=types, limit=1, lease=LEASE, now=now, type_limits=limits)
    assert got == []


def _record(store: RedisStore) -> list[JobEvent]:
    seen: list[JobEvent] = []
    store.add_listener(seen.append)
    return seen


async def _until(check: Callable[[], bool]) -> None:
    with anyio.fail_after(10):
        while not check():
            await anyio.sleep(0.005)


async def _claim(store: RedisStore, worker: str, limit: int = 1, **kw: object) -> list[Job]:
    return await store.claim(
        worker,
        types=["t"],
        limit=limit,
        lease=LEASE,
        now=_now(),
        **kw,  # type: ignore[arg-type]
    )


async def test_an_idle_worker_of_another_store_gets_a_new_job_with_no_claim_call(
    stores: Callable[[], RedisStore],
) -> None:
    """The job reaches the parked worker already claimed: its claim makes no script call;
    every store sees job_created then job_started with the snapshot a claim would make,
    and the stored job is that snapshot."""
    submitter, worker, observer = await _open(stores), await _open(stores), await _open(stores)
    at_submitter, at_worker, at_observer = (
        _record(submitter),
        _record(worker),
        _record(observer),
    )
    await _park(worker, "w")
    generation = worker.work_generation()
    job = _job()
    stored, created = await submitter.add(job)
    assert created and stored == job
    await _until(lambda: worker.work_generation() > generation)
    with script_calls(worker) as calls:
        (got,) = await _claim(worker, "w")
    assert [name for name, _ in calls] == []
    assert got.status is JobStatus.RUNNING and got.attempts == 1
    assert got.lease is not None and got.lease.worker_id == "w"
    assert got.started_at is not None
    # What the claim step makes of the queued job at that moment, lease included.
    assert got == claim_step(job, "w", got.lease.token, LEASE, got.started_at)
    assert await observer.get(job.id) == got
    await _until(lambda: len(at_observer) == 2)
    for seen in (at_submitter, at_worker, at_observer):
        assert [e.type for e in seen] == [EventType.CREATED, EventType.STARTED]
        assert [e.job for e in seen] == [job, got]
        assert seen[1].seq == seen[0].seq + 1
        assert [e.seq for e in seen] == [e.seq for e in at_observer]
        assert [e.at for e in seen] == [job.created_at, got.started_at]
    stats = await observer.stats()
    assert stats.counts[JobStatus.RUNNING] == 1 and stats.counts[JobStatus.QUEUED] == 0
    # The indexes as a claim leaves them.
    client = aioredis.Redis.from_url(worker.redis_url)
    try:
        p = "{" + worker.prefix + "}:"
        expires = await client.zscore(p + "leases", job.id)
        assert expires == pytest.approx(got.lease.expires_at.timestamp(), abs=1e-6)
        assert await client.zscore(p + "leases", PIN) == float("inf")
        assert await client.zscore(p + "st:running", job.id) == 0
        for index in ("st:queued", "ready:t"):
            assert await client.zscore(p + index, job.id) is None
        assert await client.hmget(p + "counts", "queued|t", "running|t") == [b"0", b"1"]
        assert await client.hget(p + "job:" + job.id, "v") == b"2"
    finally:
        await client.aclose()
    done = await worker.finish(job.id, got.lease.token, Outcome(JobStatus.COMPLETED), now=_now())
    assert done.status is JobStatus.COMPLETED
    # Handed once: the worker is parked again only by its next short claim.
    again = _job()
    await submitter.add(again)
    assert (await observer.get(again.id)).status is JobStatus.QUEUED


async def test_a_worker_of_the_same_store_gets_the_job_too(
    stores: Callable[[], RedisStore],
) -> None:
    store = await _open(stores)
    await _park(store, "w")
    job = _job()
    await store.add(job)
    with script_calls(store) as calls:
        (got,) = await _claim(store, "w")
    assert (
        [name for name, _ in calls] == [] and got.id == job.id and got.status is JobStatus.RUNNING
    )


async def test_waiting_jobs_are_never_overtaken_and_delayed_jobs_never_handed(
    stores: Callable[[], RedisStore],
) -> None:
    submitter, worker = await _open(stores), await _open(stores)
    await _park(worker, "w")
    first = _job(priority=0)
    await submitter.add_many([first])  # a batch submit hands nothing: it waits
    later = _job(priority=5)  # a higher priority does not jump the hand-off's rule
    await submitter.add(later)
    delayed = _job(run_at=_now() + timedelta(hours=1))
    await submitter.add(delayed)
    for job, status in ((first, JobStatus.QUEUED), (later, JobStatus.QUEUED)):
        assert (await submitter.get(job.id)).status is status
    assert (await submitter.get(delayed.id)).status is JobStatus.SCHEDULED
    with script_calls(worker) as calls:
        got = await _claim(worker, "w", limit=5)
    assert [name for name, _ in calls] == ["claim"]
    assert [j.id for j in got] == [later.id, first.id]


async def test_a_type_at_its_running_limit_is_not_handed(
    stores: Callable[[], RedisStore],
) -> None:
    submitter, worker, other = await _open(stores), await _open(stores), await _open(stores)
    await submitter.add_many([_job()])
    (running,) = await _claim(other, "o")
    await _park(worker, "w", limits={"t": 1})  # short: no room under the limit
    job = _job()
    await submitter.add(job)
    assert (await submitter.get(job.id)).status is JobStatus.QUEUED
    assert running.lease is not None
    await other.finish(running.id, running.lease.token, Outcome(JobStatus.COMPLETED), now=_now())
    (got,) = await _claim(worker, "w", type_limits={"t": 1})
    assert got.id == job.id
    # With room under the limit, the hand-off happens.
    await _park(worker, "w2", limits={"t": 2})
    handed = _job()
    await submitter.add(handed)
    assert (await submitter.get(handed.id)).status is JobStatus.RUNNING


async def test_a_job_handed_to_a_worker_that_stopped_is_requeued_and_runs_elsewhere(
    stores: Callable[[], RedisStore],
) -> None:
    """Either way it can go: taken into the store's hand before the worker stops, or
    arriving after (the stop raced the submit: here, its parked entry left behind)."""
    submitter, worker, other = await _open(stores), await _open(stores), await _open(stores)
    seen = _record(other)
    # 1. In hand when the worker stops.
    await _park(worker, "w")
    generation = worker.work_generation()
    job = _job()
    await submitter.add(job)
    await _until(lambda: worker.work_generation() > generation)
    await worker.remove_worker("w")
    back = await submitter.get(job.id)
    assert back.status is JobStatus.QUEUED and back.attempts == 0 and back.lease is None
    (got,) = await _claim(other, "o")
    assert got.id == job.id and got.attempts == 1
    # 2. Arriving after the worker stopped.
    await _park(worker, "w2")
    inner = worker._eval

    async def no_unpark(name: str, key: str, *args: object) -> object:
        return None if name == "unpark" else await inner(name, key, *args)

    worker._eval = no_unpark  # type: ignore[method-assign]
    await worker.remove_worker("w2")
    worker._eval = inner  # type: ignore[method-assign]
    late = _job()
    await submitter.add(late)
    await _until(lambda: any(e.job.id == late.id and e.type is EventType.RETRYING for e in seen))
    back = await submitter.get(late.id)
    assert back.status is JobStatus.QUEUED and back.attempts == 0
    (got,) = await _claim(other, "o")
    assert got.id == late.id and got.attempts == 1


async def test_a_stopped_worker_or_a_closed_store_leaves_no_parked_entry(
    stores: Callable[[], RedisStore], redis_url: str, prefix: str
) -> None:
    submitter, worker = await _open(stores), await _open(stores)
    await _park(worker, "w", types=("t", "u"))
    await worker.remove_worker("w")
    await _park(worker, "x", types=("t",))
    await worker.close()
    job = _job()
    await submitter.add(job)
    assert (await submitter.get(job.id)).status is JobStatus.QUEUED
    client = aioredis.Redis.from_url(redis_url)
    try:
        p = "{" + prefix + "}:"
        assert await client.exists(p + "parked:t", p + "parked:u", p + "parking") == 0
    finally:
        await client.aclose()


async def test_a_full_claim_unparks_the_worker(stores: Callable[[], RedisStore]) -> None:
    submitter, worker = await _open(stores), await _open(stores)
    await _park(worker, "w")
    await submitter.add_many([_job()])
    assert len(await _claim(worker, "w")) == 1  # no free slot left: no hand-off now
    job = _job()
    await submitter.add(job)
    assert (await submitter.get(job.id)).status is JobStatus.QUEUED


async def test_the_parked_entry_of_a_dead_process_ages_out(
    stores: Callable[[], RedisStore], redis_url: str, prefix: str
) -> None:
    """A process killed without a goodbye leaves its entry: it lives PARK_TTL seconds
    (server clock) and a submit after that hands nothing to it, and drops it."""
    submitter, worker = await _open(stores), await _open(stores)
    await _park(worker, "w")
    client = aioredis.Redis.from_url(redis_url)
    try:
        key = "{" + prefix + "}:parked:t"
        ((member, expires),) = await client.zrange(key, 0, -1, withscores=True)
        server, micros = await client.time()
        assert abs(expires - (server + micros / 1e6 + PARK_TTL)) < 1
        await client.zadd(key, {member: server - 1})  # as if PARK_TTL had passed
        job = _job()
        await submitter.add(job)
        assert (await submitter.get(job.id)).status is JobStatus.QUEUED
        assert await client.exists(key, "{" + prefix + "}:parking") == 0
    finally:
        await client.aclose()


async def test_a_worker_with_a_clock_far_off_the_server_is_not_parked(
    stores: Callable[[], RedisStore],
) -> None:
    """A test's fake clock (or a badly set one) would make odd leases: no hand-off."""
    submitter, worker = await _open(stores), await _open(stores)
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    await worker.register_worker(_info("w", ("t",), now))
    assert await worker.claim("w", types=["t"], limit=1, lease=LEASE, now=now) == []
    job = _job()
    await submitter.add(job)
    assert (await submitter.get(job.id)).status is JobStatus.QUEUED


async def test_a_claim_crossing_a_hand_off_gets_no_job_beyond_its_free_room(
    stores: Callable[[], RedisStore],
) -> None:
    """The worker claims (one free slot) while a job handed to it is on its way: that
    claim parks it again and a second job is handed to it. The store keeps the first
    for it and gives back the second."""
    submitter, worker = await _open(stores), await _open(stores)
    await _park(worker, "w")
    assert worker._tail is not None
    handed, held_back = worker._tail._handed, []
    assert handed is not None
    worker._tail._handed = lambda event, member: held_back.append((event, member))
    first, second = _job(), _job()
    await submitter.add(first)
    await _until(lambda: len(held_back) == 2)  # its job_created and job_started
    assert await _claim(worker, "w") == []  # the crossing claim: one free slot, parks
    await submitter.add(second)
    await _until(lambda: len(held_back) == 4)
    for event, member in held_back:
        handed(event, member)
    worker._tail._handed = handed
    await _until(lambda: not worker._giving)
    back = await submitter.get(second.id)
    assert back.status is JobStatus.QUEUED and back.attempts == 0
    with script_calls(worker) as calls:
        assert [j.id for j in await _claim(worker, "w")] == [first.id]
    assert [name for name, _ in calls] == []


async def test_a_submit_whose_reply_was_lost_after_a_hand_off_is_its_own(
    stores: Callable[[], RedisStore],
) -> None:
    """A retried ADD finds the job its first attempt stored (and handed off): created,
    not a clash of ids."""
    submitter, worker = await _open(stores), await _open(stores)
    await _park(worker, "w")
    job = _job()
    assert await submitter.add(job) == (job, True)
    assert (await submitter.get(job.id)).status is JobStatus.RUNNING
    assert await submitter.add(job) == (job, True)
    await _park(worker, "w2")  # the id exists, and a worker is parked: still the id wins
    assert await submitter.add(job) == (job, True)
    assert (await submitter.stats()).counts[JobStatus.RUNNING] == 1
    with pytest.raises(ValueError, match="exists already"):
        await submitter.add(attrs.evolve(job, params={"other": 1}))


async def test_a_job_kept_for_a_worker_follows_changes_made_elsewhere(
    stores: Callable[[], RedisStore],
) -> None:
    """A cancel request before the worker takes its job: it takes the flagged snapshot.
    A lease that ran out meanwhile (requeued elsewhere): the job is not the worker's."""
    submitter, worker = await _open(stores), await _open(stores)
    seen = _record(worker)
    await _park(worker, "w")
    job = _job()
    await submitter.add(job)
    await submitter.request_cancel(job.id, now=_now())
    await _until(lambda: any(e.type is EventType.CANCEL_REQUESTED for e in seen))
    (got,) = await _claim(worker, "w")
    assert got.cancel_requested and got == await submitter.get(job.id)
    assert got.lease is not None
    await worker.finish(got.id, got.lease.token, Outcome(JobStatus.CANCELLED), now=_now())
    await _park(worker, "w")
    lost = _job()
    await submitter.add(lost)
    await _until(lambda: any(e.job.id == lost.id for e in seen))
    (requeued,) = await submitter.requeue_expired(now=_now() + timedelta(seconds=2 * LEASE))
    assert requeued.id == lost.id and requeued.status is JobStatus.QUEUED
    await _until(lambda: any(e.job == requeued for e in seen))
    with script_calls(worker) as calls:
        (again,) = await _claim(worker, "w")
    assert [name for name, _ in calls] == ["claim"]  # nothing kept: a claim of the requeued job
    assert again.id == lost.id and again.attempts == requeued.attempts + 1


async def test_the_scripts_time_text_is_pythons_isoformat(redis_url: str) -> None:
    """The hand-off writes the start and the lease's expiry as text made in Lua."""
    import random

    from asyncjobs.stores.redis.handoff import epoch_us
    from asyncjobs.stores.redis.scripts import _HANDOFF

    rng = random.Random(7)
    base = datetime(1970, 1, 1, tzinfo=timezone.utc)
    moments = [
        base,
        datetime(2000, 2, 29, 23, 59, 59, 999999, tzinfo=timezone.utc),
        datetime(2024, 12, 31, 12, 0, tzinfo=timezone.utc),
        datetime(2100, 3, 1, tzinfo=timezone.utc),
        _now(),
    ]
    moments += [base + timedelta(microseconds=rng.randrange(5 * 10**15)) for _ in range(200)]
    script = (
        "local P = ''\n"
        + _HANDOFF
        + "\nlocal out = {}\n"
        + ("for i = 1, #ARGV do out[i] = iso(tonumber(ARGV[i])) end\nreturn out")
    )
    client = aioredis.Redis.from_url(redis_url)
    try:
        texts = await client.eval(script, 0, *(epoch_us(m) for m in moments))
    finally:
        await client.aclose()
    assert [t.decode() for t in texts] == [m.isoformat() for m in moments]


async def test_a_worker_parking_drops_the_entry_of_a_dead_process_on_its_type(
    stores: Callable[[], RedisStore], redis_url: str, prefix: str
) -> None:
    """A type nobody submits any more would keep a dead process's entry forever: the
    next worker that parks on the type drops it, with its parking record."""
    dead, alive = await _open(stores), await _open(stores)
    await _park(dead, "gone")
    client = aioredis.Redis.from_url(redis_url)
    try:
        key, parking = "{" + prefix + "}:parked:t", "{" + prefix + "}:parking"
        ((member, _),) = await client.zrange(key, 0, -1, withscores=True)
        server, _ = await client.time()
        await client.zadd(key, {member: server - 1})  # as if PARK_TTL had passed
        await _park(alive, "w")
        mine = alive._parking.member("w").encode()
        assert await client.zrange(key, 0, -1) == [mine]
        assert await client.hkeys(parking) == [mine]
    finally:
        await client.aclose()
