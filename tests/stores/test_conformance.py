"""The Store conformance suite: every operation of the Store protocol, on every store.

Each test states one rule of ``asyncjobs/stores/protocol.py``. Time is passed in
explicitly (``at(seconds)``), so nothing sleeps except short, bounded waits for events
and wake-ups that a server-backed store delivers asynchronously.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import anyio
import pytest

from asyncjobs._ulid import new_ulid
from asyncjobs.errors import (
    IllegalTransition,
    InvalidSubmission,
    JobNotFound,
    LeaseLost,
    QueueFull,
)
from asyncjobs.job import EventType, Job, JobError, JobEvent, JobStatus
from asyncjobs.stores import Outcome, Stats, Store

from .conftest import Backend, StoreFactory

T0 = datetime(2026, 11, 22, 12, 0, 0, tzinfo=timezone.utc)
LEASE = 30.0
Q, S, R = JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.RUNNING
DONE, FAILED, CANCELLED = JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED
E = EventType


def at(seconds: float) -> datetime:
    """The test clock: ``seconds`` after T0."""
    return T0 + timedelta(seconds=seconds)


def make_job(
    type_: str = "t",
    *,
    priority: int = 0,
    created: float = 0.0,
    delay: float = 0.0,
    max_attempts: int = 1,
    key: str | None = None,
    owner: str | None = None,
    retention: float | None = None,
    params: dict[str, Any] | None = None,
    tags: tuple[str, ...] = (),
    timeout: float | None = None,
) -> Job:
    """A new job as Queue.submit would build it: scheduled when ``delay > 0``."""
    return Job(
        id=new_ulid(),
        type=type_,
        params={} if params is None else params,
        status=S if delay > 0 else Q,
        created_at=at(created),
        run_at=at(created + delay),
        priority=priority,
        max_attempts=max_attempts,
        idempotency_key=key,
        owner=owner,
        retention=retention,
        tags=tags,
        timeout=timeout,
    )


class EventLog:
    """Records a store's events; ``expect`` checks the next ones, in order."""

    def __init__(self, store: Store) -> None:
        self.events: list[JobEvent] = []
        self._arrived = anyio.Event()
        self.remove = store.add_listener(self._record)
        self._next = 0

    def _record(self, event: JobEvent) -> None:
        self.events.append(event)
        self._arrived.set()

    async def wait_for(self, count: int, within: float = 5.0) -> None:
        """Wait (at most ``within`` seconds) until ``count`` events have arrived."""
        with anyio.fail_after(within):
            while len(self.events) < count:
                await self._arrived.wait()
                self._arrived = anyio.Event()

    async def expect(self, *types: EventType) -> list[JobEvent]:
        """The next ``len(types)`` events, asserted to have these types."""
        await self.wait_for(self._next + len(types))
        got = self.events[self._next : self._next + len(types)]
        self._next += len(types)
        assert [e.type for e in got] == list(types)
        return got


async def add(store: Store, *jobs: Job) -> list[Job]:
    out = []
    for job in jobs:
        stored, created = await store.add(job)
        assert created
        out.append(stored)
    return out


async def claim_one(store: Store, type_: str = "t", now: float = 1.0, worker: str = "w") -> Job:
    claimed = await store.claim(worker, types=[type_], limit=1, lease=LEASE, now=at(now))
    assert len(claimed) == 1
    return claimed[0]


def token(job: Job) -> str:
    assert job.lease is not None
    value: str = job.lease.token
    return value


async def running_job(store: Store, **kw: Any) -> Job:
    (job,) = await add(store, make_job(**kw))
    return await claim_one(store, job.type)


def counts(stats: Stats) -> dict[JobStatus, int]:
    return {s: n for s, n in stats.counts.items() if n}


async def all_ids(store: Store) -> list[str]:
    page = await store.list(limit=1000)
    return [j.id for j in page.jobs]


# -- add / get -----------------------------------------------------------------


async def test_add_stores_job_and_publishes_created(store: Store) -> None:
    log = EventLog(store)
    job = make_job(
        "report",
        params={"n": [1, 2, {"deep": "é"}]},
        tags=("a", "b"),
        owner="alice",
        key="k-1",
        retention=60.0,
        timeout=5.5,
        priority=3,
        max_attempts=4,
    )
    stored, created = await store.add(job)
    assert created
    assert stored == job
    assert await store.get(job.id) == job
    (event,) = await log.expect(E.CREATED)
    assert event.job == job
    assert event.seq > 0


async def test_add_scheduled_job(store: Store) -> None:
    (job,) = await add(store, make_job(delay=60))
    got = await store.get(job.id)
    assert got.status is S
    assert got.run_at == at(60)


async def test_get_unknown_raises_job_not_found(store: Store) -> None:
    with pytest.raises(JobNotFound):
        await store.get(new_ulid())


async def test_idempotency_key_returns_existing_and_changes_nothing(store: Store) -> None:
    log = EventLog(store)
    (first,) = await add(store, make_job(key="same", params={"v": 1}))
    await log.expect(E.CREATED)
    again = make_job(key="same", params={"v": 2}, priority=9)
    returned, created = await store.add(again)
    assert not created
    assert returned == first
    with pytest.raises(JobNotFound):
        await store.get(again.id)
    assert await all_ids(store) == [first.id]
    assert counts(await store.stats()) == {Q: 1}
    # No event for the duplicate: the next event is the next real change.
    await add(store, make_job(key="other"))
    (event,) = await log.expect(E.CREATED)
    assert event.job.idempotency_key == "other"


async def test_idempotency_key_holds_for_a_finished_job(store: Store) -> None:
    running = await running_job(store, key="once")
    await store.finish(running.id, token(running), Outcome(DONE, result=1), now=at(2))
    returned, created = await store.add(make_job(key="once"))
    assert not created
    assert returned.id == running.id
    assert returned.status is DONE


async def test_deleting_a_job_frees_its_idempotency_key(store: Store) -> None:
    running = await running_job(store, key="k")
    await store.finish(running.id, token(running), Outcome(DONE), now=at(2))
    await store.delete(running.id, now=at(3))
    fresh = make_job(key="k")
    returned, created = await store.add(fresh)
    assert created
    assert returned.id == fresh.id


async def test_idempotency_keys_are_unique_per_owner(store: Store) -> None:
    (a,) = await add(store, make_job(key="k", owner="tenant-a", params={"secret": "a"}))
    b, created = await store.add(make_job(key="k", owner="tenant-b", params={"mine": "b"}))
    assert created, "tenant B was handed tenant A's job"
    assert b.id != a.id and b.owner == "tenant-b" and b.params == {"mine": "b"}
    unowned, created = await store.add(make_job(key="k"))
    assert created and unowned.id not in (a.id, b.id)
    # Within one owner (and for no owner) the key still returns the first job.
    for owner, first in (("tenant-a", a), ("tenant-b", b), (None, unowned)):
        again, created = await store.add(make_job(key="k", owner=owner))
        assert not created and again.id == first.id
    # An owner whose name ends like another's key does not collide with it.
    odd, created = await store.add(make_job(key="k", owner="tenant-a\u2028"))
    assert created
    assert sorted(await all_ids(store)) == sorted([a.id, b.id, unowned.id, odd.id])


async def test_deleting_frees_the_key_of_its_owner_only(store: Store) -> None:
    for owner in ("x", "y"):
        running = await running_job(store, key="k", owner=owner)
        await store.finish(running.id, token(running), Outcome(DONE), now=at(2))
    (x_job,) = [j for j in (await store.list(owner="x")).jobs]
    await store.delete(x_job.id, now=at(3))
    fresh, created = await store.add(make_job(key="k", owner="x"))
    assert created and fresh.id != x_job.id
    _, created = await store.add(make_job(key="k", owner="y"))
    assert not created


@pytest.mark.parametrize(
    "bad",
    [
        {"params": {"x": "\ud800"}},
        {"params": {"x": "a\x00b"}},
        {"params": {"x": float("nan")}},
        {"params": {"x": 10**400}},
        {"params": {"\udc00": 1}},
        {"tags": ("\ud800",)},
        {"key": "k\x00"},
        {"owner": "\udfff"},
    ],
)
async def test_add_refuses_what_a_store_could_not_hold(store: Store, bad: dict[str, Any]) -> None:
    # The memory store refuses exactly what SQLite and PostgreSQL could not encode, so
    # a job one store accepts never breaks a later read on another.
    with pytest.raises(InvalidSubmission):
        await store.add(make_job(**bad))
    assert await all_ids(store) == []
    assert counts(await store.stats()) == {}


async def test_queue_full_counts_queued_and_scheduled(store: Store) -> None:
    await store.add(make_job(), max_queued=2)
    await store.add(make_job(delay=60), max_queued=2)
    with pytest.raises(QueueFull) as info:
        await store.add(make_job(), max_queued=2)
    assert info.value.limit == 2
    assert (await store.stats()).total == 2
    # A running job no longer waits: there is room again.
    await claim_one(store)
    await store.add(make_job(), max_queued=2)
    assert counts(await store.stats()) == {Q: 1, S: 1, R: 1}


async def test_queue_full_does_not_hide_an_idempotent_resubmission(store: Store) -> None:
    (first,) = await add(store, make_job(key="dup"))
    returned, created = await store.add(make_job(key="dup"), max_queued=1)
    assert (returned.id, created) == (first.id, False)


# -- list ----------------------------------------------------------------------


async def test_list_empty(store: Store) -> None:
    page = await store.list()
    assert page.jobs == []
    assert page.next_cursor is None


async def test_list_newest_first_with_filters(store: Store) -> None:
    a = make_job("alpha", owner="ann")
    b = make_job("beta", owner="bob")
    c = make_job("alpha", owner="bob", delay=60)
    d = make_job("gamma")
    await add(store, a, b, c, d)
    await claim_one(store, "beta")

    assert [j.id for j in (await store.list()).jobs] == [d.id, c.id, b.id, a.id]
    by_status = await store.list(statuses=[Q])
    assert [j.id for j in by_status.jobs] == [d.id, a.id]
    by_two = await store.list(statuses=[Q, R])
    assert [j.id for j in by_two.jobs] == [d.id, b.id, a.id]
    by_type = await store.list(types=["alpha"])
    assert [j.id for j in by_type.jobs] == [c.id, a.id]
    by_owner = await store.list(owner="bob")
    assert [j.id for j in by_owner.jobs] == [c.id, b.id]
    combined = await store.list(types=["alpha", "beta"], owner="bob", statuses=[S])
    assert [j.id for j in combined.jobs] == [c.id]
    assert (await store.list(types=["nope"])).jobs == []
    assert (await store.list(statuses=[DONE])).jobs == []


async def collect_pages(store: Store, limit: int, **filters: Any) -> list[list[str]]:
    pages: list[list[str]] = []
    cursor: str | None = None
    for _ in range(100):  # bounded: a store that loops forever fails here
        page = await store.list(cursor=cursor, limit=limit, **filters)
        assert len(page.jobs) <= limit
        pages.append([j.id for j in page.jobs])
        cursor = page.next_cursor
        if cursor is None:
            return pages
    raise AssertionError("list() never returned next_cursor=None")


@pytest.mark.parametrize("total", [7, 9])
async def test_list_cursor_pagination_has_no_gaps_or_duplicates(store: Store, total: int) -> None:
    jobs = [make_job() for _ in range(total)]
    await add(store, *jobs)
    pages = await collect_pages(store, limit=3)
    flat = [i for page in pages for i in page]
    assert flat == [j.id for j in reversed(jobs)]
    assert all(pages[:-1]), "only the last page may be empty"
    assert [len(p) for p in pages[: total // 3]] == [3] * (total // 3)


async def test_list_cursor_pagination_with_a_filter(store: Store) -> None:
    jobs = [make_job("even" if i % 2 == 0 else "odd") for i in range(11)]
    await add(store, *jobs)
    pages = await collect_pages(store, limit=2, types=["even"])
    flat = [i for page in pages for i in page]
    assert flat == [j.id for j in reversed(jobs) if j.type == "even"]


async def test_list_limit_smaller_than_matches_gives_a_cursor(store: Store) -> None:
    jobs = [make_job() for _ in range(3)]
    await add(store, *jobs)
    page = await store.list(limit=2)
    assert [j.id for j in page.jobs] == [jobs[2].id, jobs[1].id]
    assert page.next_cursor is not None
    rest = await store.list(limit=2, cursor=page.next_cursor)
    assert [j.id for j in rest.jobs] == [jobs[0].id]
    assert rest.next_cursor is None


async def test_list_cursor_survives_deletion_of_the_cursor_job(store: Store) -> None:
    jobs = await finished_jobs(store, [("t", DONE, i) for i in range(4)])
    page = await store.list(limit=2)
    assert page.next_cursor == jobs[2].id
    await store.delete(jobs[2].id, now=at(10))
    rest = await store.list(limit=2, cursor=page.next_cursor)
    assert [j.id for j in rest.jobs] == [jobs[1].id, jobs[0].id]


# -- stats -----------------------------------------------------------------------


async def test_stats_counts_per_status_and_type(store: Store) -> None:
    empty = await store.stats()
    assert set(empty.counts) == set(JobStatus)
    assert empty.total == 0
    await add(store, make_job("a"), make_job("a"), make_job("b"), make_job("b", delay=9))
    running = await claim_one(store, "a")
    await store.finish(running.id, token(running), Outcome(FAILED), now=at(2))
    await claim_one(store, "b")
    stats = await store.stats()
    assert set(stats.counts) == set(JobStatus)
    assert counts(stats) == {Q: 1, S: 1, R: 1, FAILED: 1}
    assert stats.total == 4
    by_type = {t: {s: n for s, n in c.items() if n} for t, c in stats.by_type.items()}
    assert {t: c for t, c in by_type.items() if c} == {"a": {Q: 1, FAILED: 1}, "b": {S: 1, R: 1}}


# -- claim -----------------------------------------------------------------------


async def test_claim_sets_running_state(store: Store) -> None:
    (job,) = await add(store, make_job(max_attempts=3))
    log = EventLog(store)
    (claimed,) = await store.claim("worker-1", types=["t"], limit=5, lease=LEASE, now=at(10))
    assert claimed.id == job.id
    assert claimed.status is R
    assert claimed.attempts == 1
    assert claimed.version == job.version + 1
    assert claimed.started_at == at(10)
    assert claimed.progress == 0.0
    assert claimed.message is None
    assert claimed.lease is not None
    assert claimed.lease.worker_id == "worker-1"
    assert claimed.lease.expires_at == at(10 + LEASE)
    assert await store.get(job.id) == claimed
    (event,) = await log.expect(E.STARTED)
    assert event.job == claimed


async def test_claim_orders_by_priority_then_fifo(store: Store) -> None:
    low1, high1, low2, high2, mid = (
        make_job(priority=0),
        make_job(priority=5),
        make_job(priority=0),
        make_job(priority=5),
        make_job(priority=2),
    )
    await add(store, low1, high1, low2, high2, mid)
    order = [(await claim_one(store)).id for _ in range(5)]
    assert order == [high1.id, high2.id, mid.id, low1.id, low2.id]
    assert await store.claim("w", types=["t"], limit=1, lease=LEASE, now=at(1)) == []


async def test_claim_batch_takes_the_best_jobs(store: Store) -> None:
    jobs = [make_job(priority=p) for p in (0, 3, 1, 3, 0, 2)]
    await add(store, *jobs)
    claimed = await store.claim("w", types=["t"], limit=3, lease=LEASE, now=at(1))
    assert {j.id for j in claimed} == {jobs[1].id, jobs[3].id, jobs[5].id}


async def test_claim_priority_and_fifo_across_types(store: Store) -> None:
    a1, b1, a2 = make_job("a"), make_job("b"), make_job("a", priority=1)
    await add(store, a1, b1, a2)
    order = []
    for _ in range(3):
        (job,) = await store.claim("w", types=["a", "b"], limit=1, lease=LEASE, now=at(1))
        order.append(job.id)
    assert order == [a2.id, a1.id, b1.id]


async def test_claim_respects_limit_and_types(store: Store) -> None:
    await add(store, *(make_job("a") for _ in range(4)), make_job("b"), make_job("a", delay=5))
    assert await store.claim("w", types=[], limit=10, lease=LEASE, now=at(1)) == []
    assert await store.claim("w", types=["zzz"], limit=10, lease=LEASE, now=at(1)) == []
    got = await store.claim("w", types=["a"], limit=3, lease=LEASE, now=at(1))
    assert len(got) == 3
    assert {j.type for j in got} == {"a"}
    got = await store.claim("w", types=["a"], limit=10, lease=LEASE, now=at(1))
    assert len(got) == 1  # the scheduled "a" is not claimable
    assert counts(await store.stats()) == {Q: 1, S: 1, R: 4}


async def test_claim_type_limits_hold_across_claimers(store_factory: StoreFactory) -> None:
    one, two = await store_factory(), await store_factory()
    await add(one, *(make_job("x") for _ in range(3)), make_job("y"))
    limits = {"x": 1}
    got1 = await one.claim(
        "w1", types=["x", "y"], limit=5, lease=LEASE, now=at(1), type_limits=limits
    )
    assert sorted(j.type for j in got1) == ["x", "y"]
    got2 = await two.claim(
        "w2", types=["x", "y"], limit=5, lease=LEASE, now=at(1), type_limits=limits
    )
    assert got2 == []
    x_job = next(j for j in got1 if j.type == "x")
    await one.finish(x_job.id, token(x_job), Outcome(DONE), now=at(2))
    got2 = await two.claim("w2", types=["x"], limit=5, lease=LEASE, now=at(3), type_limits=limits)
    assert [j.type for j in got2] == ["x"]
    limits2 = {"x": 3}
    got3 = await one.claim("w1", types=["x"], limit=5, lease=LEASE, now=at(3), type_limits=limits2)
    assert len(got3) == 1  # one x left, and 1 of 3 slots is taken


async def test_each_claim_gets_a_fresh_token(store: Store) -> None:
    (job,) = await add(store, make_job(max_attempts=5))
    seen = set()
    for i in range(3):
        claimed = await claim_one(store, now=i)
        assert token(claimed) not in seen
        seen.add(token(claimed))
        await store.finish(job.id, token(claimed), Outcome(Q), now=at(i))
    other = await running_job(store)
    assert token(other) not in seen


async def test_no_double_claim_between_instances(store_factory: StoreFactory) -> None:
    stores = [await store_factory(), await store_factory()]
    jobs = [make_job() for _ in range(20)]
    await add(stores[0], *jobs)

    async def claim(i: int) -> list[Job]:
        return await stores[i % 2].claim(f"w{i}", types=["t"], limit=3, lease=LEASE, now=at(1))

    with anyio.fail_after(30):
        results = await asyncio.gather(*(claim(i) for i in range(10)))
    claimed = [j.id for batch in results for j in batch]
    assert len(claimed) == len(set(claimed)) == 20
    assert counts(await stores[1].stats()) == {R: 20}


async def test_type_limits_hold_under_concurrent_claims(store_factory: StoreFactory) -> None:
    stores = [await store_factory(), await store_factory()]
    await add(stores[0], *(make_job("x") for _ in range(10)))

    async def claim(i: int) -> list[Job]:
        return await stores[i % 2].claim(
            f"w{i}", types=["x"], limit=2, lease=LEASE, now=at(1), type_limits={"x": 3}
        )

    with anyio.fail_after(30):
        results = await asyncio.gather(*(claim(i) for i in range(8)))
    assert sum(len(batch) for batch in results) == 3
    assert counts(await stores[1].stats()) == {Q: 7, R: 3}


async def test_idempotency_key_is_unique_under_concurrent_adds(
    store_factory: StoreFactory,
) -> None:
    stores = [await store_factory(), await store_factory()]
    jobs = [make_job(key="only-one", params={"i": i}) for i in range(8)]
    with anyio.fail_after(30):
        results = await asyncio.gather(*(stores[i % 2].add(job) for i, job in enumerate(jobs)))
    assert sum(created for _, created in results) == 1
    assert len({stored.id for stored, _ in results}) == 1
    assert len(await all_ids(stores[0])) == 1


async def test_times_keep_microseconds(store: Store) -> None:
    (job,) = await add(store, make_job(created=0.000001, delay=0.5))
    assert (await store.get(job.id)).run_at == at(0.500001)
    await store.promote_scheduled(now=at(0.500001))
    claimed = await claim_one(store, now=1.123457)
    assert claimed.started_at == at(1.123457)
    assert claimed.lease is not None
    assert claimed.lease.expires_at == at(1.123457 + LEASE)
    assert await store.get(job.id) == claimed


# -- renew -------------------------------------------------------------------------


async def test_renew_extends_the_lease_without_a_new_version(store: Store) -> None:
    job = await running_job(store)
    log = EventLog(store)
    renewed = await store.renew(job.id, token(job), lease=60, now=at(20))
    assert renewed.lease is not None
    assert renewed.lease.expires_at == at(80)
    assert token(renewed) == token(job)
    assert renewed.version == job.version
    assert not renewed.cancel_requested
    # The old expiry no longer counts: nothing is recovered at 1 + LEASE.
    assert await store.requeue_expired(now=at(1 + LEASE + 1)) == []
    assert (await store.get(job.id)).status is R
    # renew published nothing: the next event is the cancel request.
    await store.request_cancel(job.id, now=at(21))
    await log.expect(E.CANCEL_REQUESTED)
    renewed = await store.renew(job.id, token(job), lease=60, now=at(22))
    assert renewed.cancel_requested


async def test_renew_with_a_wrong_token_raises_lease_lost(store: Store) -> None:
    job = await running_job(store)
    with pytest.raises(LeaseLost):
        await store.renew(job.id, "not-the-token", lease=60, now=at(2))
    with pytest.raises(JobNotFound):
        await store.renew(new_ulid(), token(job), lease=60, now=at(2))
    await store.finish(job.id, token(job), Outcome(DONE), now=at(3))
    with pytest.raises(LeaseLost):
        await store.renew(job.id, token(job), lease=60, now=at(4))


async def test_cancel_request_from_another_instance_reaches_the_holder(
    store_factory: StoreFactory,
) -> None:
    holder, web = await store_factory(), await store_factory()
    job = await running_job(holder)
    await web.request_cancel(job.id, now=at(2))
    renewed = await holder.renew(job.id, token(job), lease=LEASE, now=at(3))
    assert renewed.cancel_requested


# -- set_progress ----------------------------------------------------------------------


async def test_set_progress(store: Store) -> None:
    job = await running_job(store)
    log = EventLog(store)
    third = 1 / 3  # not exact in single precision: the store must keep a double
    updated = await store.set_progress(job.id, token(job), third, "a third", now=at(5))
    assert (updated.progress, updated.message, updated.version) == (third, "a third", 3)
    assert updated.status is R
    assert await store.get(job.id) == updated
    (event,) = await log.expect(E.PROGRESS)
    assert event.job == updated
    assert event.at == at(5)
    updated = await store.set_progress(job.id, token(job), 1.0, None, now=at(6))
    assert (updated.progress, updated.message, updated.version) == (1.0, None, 4)


async def test_set_progress_is_fenced_and_range_checked(store: Store) -> None:
    job = await running_job(store)
    before = await store.get(job.id)
    with pytest.raises(LeaseLost):
        await store.set_progress(job.id, "stale", 0.5, None, now=at(2))
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="progress"):
            await store.set_progress(job.id, token(job), bad, None, now=at(2))
    with pytest.raises(JobNotFound):
        await store.set_progress(new_ulid(), token(job), 0.5, None, now=at(2))
    assert await store.get(job.id) == before
    (queued,) = await add(store, make_job("other"))
    with pytest.raises(LeaseLost):
        await store.set_progress(queued.id, token(job), 0.5, None, now=at(2))


# -- finish ----------------------------------------------------------------------------


async def test_finish_completed(store: Store) -> None:
    job = await running_job(store)
    await store.set_progress(job.id, token(job), 0.5, "half", now=at(2))
    log = EventLog(store)
    done = await store.finish(job.id, token(job), Outcome(DONE, result={"ok": [1]}), now=at(3))
    assert done.status is DONE
    assert done.result == {"ok": [1]}
    assert done.progress == 1.0
    assert done.finished_at == at(3)
    assert done.error is None
    assert done.lease is None
    assert done.version == 4
    assert await store.get(job.id) == done
    (event,) = await log.expect(E.COMPLETED)
    assert event.job == done


@pytest.mark.parametrize(("status", "event_type"), [(FAILED, E.FAILED), (CANCELLED, E.CANCELLED)])
async def test_finish_failed_or_cancelled(
    store: Store, status: JobStatus, event_type: EventType
) -> None:
    job = await running_job(store)
    log = EventLog(store)
    error = JobError("ValueError", "bad input", "Traceback ...")
    ended = await store.finish(job.id, token(job), Outcome(status, error=error), now=at(4))
    assert ended.status is status
    assert ended.error == error
    assert ended.finished_at == at(4)
    assert ended.lease is None
    assert await store.get(job.id) == ended
    await log.expect(event_type)


async def test_finish_scheduled_is_a_retry(store: Store) -> None:
    job = await running_job(store, max_attempts=3)
    log = EventLog(store)
    error = JobError("RuntimeError", "flaky")
    retry = await store.finish(
        job.id, token(job), Outcome(S, error=error, run_at=at(60)), now=at(5)
    )
    assert retry.status is S
    assert retry.run_at == at(60)
    assert retry.error == error
    assert retry.attempts == 1
    assert retry.finished_at is None
    assert retry.lease is None
    await log.expect(E.RETRYING)
    assert await store.claim("w", types=["t"], limit=1, lease=LEASE, now=at(59)) == []
    assert await store.promote_scheduled(now=at(59)) == []
    await store.promote_scheduled(now=at(60))
    again = await claim_one(store, now=61)
    assert again.attempts == 2


async def test_finish_scheduled_needs_run_at(store: Store) -> None:
    job = await running_job(store)
    with pytest.raises(ValueError, match="run_at"):
        await store.finish(job.id, token(job), Outcome(S), now=at(2))
    assert await store.get(job.id) == job


async def test_finish_queued_requeues_and_gives_the_attempt_back(store: Store) -> None:
    job = await running_job(store, max_attempts=2)
    log = EventLog(store)
    requeued = await store.finish(job.id, token(job), Outcome(Q), now=at(5))
    assert requeued.status is Q
    assert requeued.attempts == 0
    assert requeued.lease is None
    await log.expect(E.RETRYING)
    again = await claim_one(store, now=6)
    assert again.attempts == 1


async def test_finish_is_fenced(store: Store) -> None:
    job = await running_job(store)
    with pytest.raises(LeaseLost):
        await store.finish(job.id, "wrong", Outcome(DONE), now=at(2))
    with pytest.raises(JobNotFound):
        await store.finish(new_ulid(), token(job), Outcome(DONE), now=at(2))
    assert await store.get(job.id) == job
    await store.finish(job.id, token(job), Outcome(DONE), now=at(3))
    with pytest.raises(LeaseLost):
        await store.finish(job.id, token(job), Outcome(FAILED), now=at(4))
    assert (await store.get(job.id)).status is DONE


async def test_finish_as_running_is_illegal(store: Store) -> None:
    job = await running_job(store)
    with pytest.raises(IllegalTransition):
        await store.finish(job.id, token(job), Outcome(R), now=at(2))
    assert await store.get(job.id) == job


# -- request_cancel --------------------------------------------------------------------


@pytest.mark.parametrize("delay", [0, 60])
async def test_cancel_waiting_job_is_immediate(store: Store, delay: float) -> None:
    (job,) = await add(store, make_job(delay=delay))
    log = EventLog(store)
    cancelled = await store.request_cancel(job.id, now=at(3))
    assert cancelled.status is CANCELLED
    assert cancelled.finished_at == at(3)
    assert cancelled.version == 2
    assert await store.get(job.id) == cancelled
    await log.expect(E.CANCELLED)
    assert await store.promote_scheduled(now=at(100)) == []
    assert await store.claim("w", types=["t"], limit=1, lease=LEASE, now=at(100)) == []


async def test_cancel_running_job_flags_it_once(store: Store) -> None:
    job = await running_job(store)
    log = EventLog(store)
    flagged = await store.request_cancel(job.id, now=at(3))
    assert flagged.status is R
    assert flagged.cancel_requested
    assert flagged.version == job.version + 1
    await log.expect(E.CANCEL_REQUESTED)
    again = await store.request_cancel(job.id, now=at(4))
    assert again == flagged
    assert await store.get(job.id) == flagged
    # The holder's token still works; it ends the job as cancelled.
    ended = await store.finish(job.id, token(job), Outcome(CANCELLED), now=at(5))
    assert ended.status is CANCELLED
    await log.expect(E.CANCELLED)  # and nothing was published for the repeated request


@pytest.mark.parametrize("status", [S, Q])
async def test_a_cancel_request_wins_over_a_retry_or_requeue(
    store: Store, status: JobStatus
) -> None:
    # The handler failed (or its worker shut down) before the worker saw the request:
    # the job must end cancelled, never run again.
    job = await running_job(store, max_attempts=3)
    await store.request_cancel(job.id, now=at(2))
    log = EventLog(store)
    ended = await store.finish(job.id, token(job), Outcome(status, run_at=at(9)), now=at(3))
    assert ended.status is CANCELLED
    assert ended.finished_at == at(3)
    assert ended.lease is None
    assert await store.get(job.id) == ended
    await log.expect(E.CANCELLED)


@pytest.mark.parametrize("status", [DONE, FAILED, CANCELLED])
async def test_cancel_finished_job_is_illegal(store: Store, status: JobStatus) -> None:
    job = await running_job(store)
    ended = await store.finish(job.id, token(job), Outcome(status), now=at(2))
    with pytest.raises(IllegalTransition):
        await store.request_cancel(job.id, now=at(3))
    assert await store.get(job.id) == ended
    with pytest.raises(JobNotFound):
        await store.request_cancel(new_ulid(), now=at(3))


# -- delete ----------------------------------------------------------------------------


async def test_delete_finished_job(store: Store) -> None:
    job = await running_job(store)
    done = await store.finish(job.id, token(job), Outcome(DONE, result=7), now=at(2))
    log = EventLog(store)
    deleted = await store.delete(job.id, now=at(3))
    assert deleted == done
    (event,) = await log.expect(E.DELETED)
    assert event.job == done
    with pytest.raises(JobNotFound):
        await store.get(job.id)
    with pytest.raises(JobNotFound):
        await store.delete(job.id, now=at(4))
    assert await all_ids(store) == []
    assert (await store.stats()).total == 0


async def test_delete_live_job_is_illegal(store: Store) -> None:
    queued, scheduled = await add(store, make_job("q"), make_job("s", delay=60))
    running = await running_job(store)
    for job in (queued, scheduled, running):
        before = await store.get(job.id)
        with pytest.raises(IllegalTransition):
            await store.delete(job.id, now=at(3))
        assert await store.get(job.id) == before


# -- requeue_expired: leases and fencing --------------------------------------------------


async def test_expired_lease_with_attempts_left_is_requeued(store: Store) -> None:
    job = await running_job(store, max_attempts=2)
    assert await store.requeue_expired(now=at(1 + LEASE - 1)) == []
    log = EventLog(store)
    (requeued,) = await store.requeue_expired(now=at(1 + LEASE + 1))
    assert requeued.id == job.id
    assert requeued.status is Q
    assert requeued.error is not None
    assert requeued.error.type == "LeaseExpired"
    assert requeued.lease is None
    assert requeued.attempts == 1
    assert requeued.version == job.version + 1
    assert await store.get(job.id) == requeued
    await log.expect(E.RETRYING)
    again = await claim_one(store, now=40, worker="w2")
    assert again.attempts == 2


async def test_expired_lease_without_attempts_left_fails(store: Store) -> None:
    job = await running_job(store, max_attempts=1)
    log = EventLog(store)
    (failed,) = await store.requeue_expired(now=at(100))
    assert failed.status is FAILED
    assert failed.finished_at == at(100)
    assert failed.error is not None
    assert failed.error.type == "LeaseExpired"
    assert failed.lease is None
    await log.expect(E.FAILED)
    with pytest.raises(LeaseLost):
        await store.finish(job.id, token(job), Outcome(DONE), now=at(101))


async def test_expired_lease_with_cancel_request_is_cancelled(store: Store) -> None:
    job = await running_job(store, max_attempts=3)
    await store.request_cancel(job.id, now=at(2))
    log = EventLog(store)
    (cancelled,) = await store.requeue_expired(now=at(100))
    assert cancelled.status is CANCELLED
    assert cancelled.finished_at == at(100)
    await log.expect(E.CANCELLED)


async def test_expired_lease_after_progress_is_recovered(store: Store) -> None:
    job = await running_job(store, max_attempts=2)
    await store.set_progress(job.id, token(job), 0.5, None, now=at(2))
    (requeued,) = await store.requeue_expired(now=at(100))
    assert requeued.status is Q


async def test_stale_lease_holder_is_fenced_off(store: Store) -> None:
    job = await running_job(store, max_attempts=3)
    stale = token(job)
    await store.requeue_expired(now=at(100))
    with pytest.raises(LeaseLost):
        await store.finish(job.id, stale, Outcome(DONE), now=at(101))
    with pytest.raises(LeaseLost):
        await store.set_progress(job.id, stale, 0.9, None, now=at(101))
    with pytest.raises(LeaseLost):
        await store.renew(job.id, stale, lease=LEASE, now=at(101))
    second = await claim_one(store, now=102, worker="w2")
    assert token(second) != stale
    with pytest.raises(LeaseLost):
        await store.finish(job.id, stale, Outcome(DONE, result="stale"), now=at(103))
    done = await store.finish(job.id, token(second), Outcome(DONE, result="fresh"), now=at(104))
    assert done.result == "fresh"
    assert (await store.get(job.id)).result == "fresh"


# -- promote_scheduled -------------------------------------------------------------------


async def test_promote_scheduled_moves_due_jobs(store: Store) -> None:
    due, boundary, later = make_job(delay=10), make_job(delay=20), make_job(delay=30)
    await add(store, due, boundary, later)
    log = EventLog(store)
    promoted = await store.promote_scheduled(now=at(20))
    assert {j.id for j in promoted} == {due.id, boundary.id}
    for job in promoted:
        assert job.status is Q
        assert job.version == 2
        assert await store.get(job.id) == job
    events = await log.expect(E.QUEUED, E.QUEUED)
    assert {e.job.id for e in events} == {due.id, boundary.id}
    assert (await store.get(later.id)).status is S
    assert await store.promote_scheduled(now=at(20)) == []
    assert len(await store.claim("w", types=["t"], limit=5, lease=LEASE, now=at(21))) == 2


# -- purge -------------------------------------------------------------------------------


async def finished_jobs(
    store: Store, spec: Sequence[tuple[str, JobStatus, float]], retention: float | None = None
) -> list[Job]:
    """Jobs of ``(type, final status, finished at)``, in that order."""
    out = []
    for type_, status, when in spec:
        job = await running_job(store, type_=type_, retention=retention)
        out.append(await store.finish(job.id, token(job), Outcome(status), now=at(when)))
    return out


async def test_purge_rejects_live_statuses(store: Store) -> None:
    await finished_jobs(store, [("t", DONE, 1)])
    for statuses in ([Q], [R, DONE], [S]):
        with pytest.raises(ValueError, match="finished"):
            await store.purge(now=at(10), statuses=statuses)
    assert (await store.stats()).total == 1


async def test_purge_deletes_finished_jobs_only(store: Store) -> None:
    jobs = await finished_jobs(store, [("t", DONE, 1), ("t", FAILED, 2), ("t", CANCELLED, 3)])
    live = await add(store, make_job(), make_job(delay=60))
    running = await running_job(store, type_="r")
    log = EventLog(store)
    assert await store.purge(now=at(10)) == 3
    events = await log.expect(E.DELETED, E.DELETED, E.DELETED)
    assert {e.job.id for e in events} == {j.id for j in jobs}
    assert sorted(await all_ids(store)) == sorted([live[0].id, live[1].id, running.id])
    assert await store.purge(now=at(10)) == 0


async def test_purge_by_status_and_type(store: Store) -> None:
    _, a_failed, b_done = await finished_jobs(
        store, [("a", DONE, 1), ("a", FAILED, 1), ("b", DONE, 1)]
    )
    assert await store.purge(now=at(10), statuses=[DONE], types=["a"]) == 1
    assert sorted(await all_ids(store)) == sorted([a_failed.id, b_done.id])
    assert await store.purge(now=at(10), statuses=[DONE]) == 1
    assert await all_ids(store) == [a_failed.id]


async def test_purge_finished_before(store: Store) -> None:
    _, boundary, late = await finished_jobs(
        store, [("t", DONE, 5), ("t", DONE, 10), ("t", DONE, 15)]
    )
    assert await store.purge(now=at(100), finished_before=at(10)) == 1
    assert sorted(await all_ids(store)) == sorted([boundary.id, late.id])
    assert await store.purge(now=at(100), finished_before=at(10.5)) == 1
    assert await all_ids(store) == [late.id]


async def test_purge_expired_uses_retention(store: Store) -> None:
    (kept_forever,) = await finished_jobs(store, [("t", DONE, 0)], retention=None)
    short, long = (
        (await finished_jobs(store, [("t", DONE, 0)], retention=60))[0],
        (await finished_jobs(store, [("t", FAILED, 0)], retention=600))[0],
    )
    assert await store.purge(now=at(59), expired=True) == 0
    assert await store.purge(now=at(60), expired=True) == 1
    assert sorted(await all_ids(store)) == sorted([kept_forever.id, long.id])
    assert await store.purge(now=at(10_000), expired=True) == 1
    assert await all_ids(store) == [kept_forever.id]
    assert short.id not in await all_ids(store)


async def test_purge_limit(store: Store) -> None:
    jobs = await finished_jobs(store, [("t", DONE, i) for i in range(5)])
    assert await store.purge(now=at(10), limit=2) == 2
    assert len(await all_ids(store)) == 3
    assert await store.purge(now=at(10), limit=2) == 2
    assert await store.purge(now=at(10), limit=2) == 1
    assert await store.purge(now=at(10), limit=2) == 0
    assert await all_ids(store) == []
    assert len(jobs) == 5


# -- events and wake-ups ---------------------------------------------------------------


async def test_events_follow_a_job_through_its_life(store: Store) -> None:
    log = EventLog(store)
    (job,) = await add(store, make_job(delay=5, max_attempts=2))
    await store.promote_scheduled(now=at(5))
    first = await claim_one(store, now=6)
    await store.set_progress(job.id, token(first), 0.5, "half", now=at(7))
    await store.finish(job.id, token(first), Outcome(S, run_at=at(20)), now=at(8))
    await store.promote_scheduled(now=at(20))
    second = await claim_one(store, now=21)
    await store.request_cancel(job.id, now=at(22))
    await store.finish(job.id, token(second), Outcome(CANCELLED), now=at(23))
    await store.delete(job.id, now=at(24))
    events = await log.expect(
        E.CREATED,
        E.QUEUED,
        E.STARTED,
        E.PROGRESS,
        E.RETRYING,
        E.QUEUED,
        E.STARTED,
        E.CANCEL_REQUESTED,
        E.CANCELLED,
        E.DELETED,
    )
    seqs = [e.seq for e in events]
    assert seqs == sorted(set(seqs))
    # Each change's event carries the snapshot after it: versions 1..9, then the deleted
    # snapshot repeats the last one.
    assert [e.job.version for e in events] == [*range(1, 10), 9]
    assert [e.at for e in events] == [at(t) for t in (0, 5, 6, 7, 8, 20, 21, 22, 23, 24)]
    log.remove()
    await add(store, make_job())
    await anyio.sleep(0.05)
    assert len(log.events) == 10


async def test_a_failing_listener_does_not_undo_a_change(store: Store) -> None:
    def broken(event: JobEvent) -> None:
        raise RuntimeError("listener bug")

    store.add_listener(broken)
    log = EventLog(store)
    (job,) = await add(store, make_job())
    await log.expect(E.CREATED)
    assert await store.get(job.id) == job


async def test_events_reach_another_instance(store_factory: StoreFactory, backend: Backend) -> None:
    one, two = await store_factory(), await store_factory()
    log = EventLog(two)
    (job,) = await add(one, make_job())
    running = await claim_one(one)
    await one.set_progress(job.id, token(running), 0.5, "x", now=at(2))
    events = await log.expect(E.CREATED, E.STARTED, E.PROGRESS)
    assert events[-1].job == await one.get(job.id)
    assert [e.job.version for e in events] == [1, 2, 3]


async def test_wait_for_work_times_out(store: Store) -> None:
    with anyio.fail_after(5):
        await store.wait_for_work(0.05)


async def _wake_with(trigger: str, waiter: Store, actor: Store) -> None:
    """Wait on ``waiter`` while ``actor`` makes work claimable; fail unless woken early."""
    if trigger == "promote":
        await add(actor, make_job(delay=5))
    elif trigger in ("requeue", "finish"):
        job = await running_job(actor, max_attempts=2)

    async def act() -> None:
        await anyio.sleep(0.1)  # let the waiter start waiting first
        if trigger == "add":
            await add(actor, make_job())
        elif trigger == "promote":
            await actor.promote_scheduled(now=at(10))
        elif trigger == "requeue":
            await actor.requeue_expired(now=at(100))
        else:
            await actor.finish(job.id, token(job), Outcome(DONE), now=at(2))

    # The wait asks for 60 s; only a wake-up ends it inside the 10 s bound.
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(act)
            await waiter.wait_for_work(60)


@pytest.mark.parametrize("trigger", ["add", "promote", "requeue", "finish"])
async def test_wait_for_work_wakes_up(store: Store, trigger: str) -> None:
    await _wake_with(trigger, store, store)


@pytest.mark.parametrize("trigger", ["add", "finish"])
async def test_wait_for_work_wakes_up_across_instances(
    store_factory: StoreFactory, backend: Backend, trigger: str
) -> None:
    await _wake_with(trigger, await store_factory(), await store_factory())
