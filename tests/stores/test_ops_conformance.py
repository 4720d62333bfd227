"""Conformance of the operations store methods (batch add, retry in place), every store.

Kept beside ``test_conformance.py`` (whose helpers it uses) so each suite stays readable.
"""

from __future__ import annotations

import anyio
import pytest

from asyncjobs.errors import IllegalTransition, InvalidSubmission, JobNotFound, QueueFull
from asyncjobs.job import JobError, Run
from asyncjobs.stores import Outcome, Store

from .conftest import Backend, StoreFactory
from .test_conformance import (
    CANCELLED,
    DONE,
    FAILED,
    LEASE,
    E,
    EventLog,
    Q,
    S,
    add,
    all_ids,
    at,
    claim_one,
    counts,
    make_job,
    running_job,
    token,
)

# -- add_many ----------------------------------------------------------------------


async def test_add_many_stores_all_in_order_with_one_event_each(store: Store) -> None:
    log = EventLog(store)
    jobs = [make_job(), make_job(delay=10), make_job("u", priority=3)]
    results = await store.add_many(jobs)
    assert results == [(j, True) for j in jobs]
    for job in jobs:
        assert await store.get(job.id) == job
    events = await log.expect(E.CREATED, E.CREATED, E.CREATED)
    assert [e.job for e in events] == jobs
    assert events[0].seq < events[1].seq < events[2].seq
    assert counts(await store.stats()) == {Q: 2, S: 1}


async def test_add_many_empty_is_a_no_op(store: Store) -> None:
    assert await store.add_many([]) == []
    assert await all_ids(store) == []


async def test_add_many_honours_idempotency_keys(store: Store) -> None:
    (held,) = await add(store, make_job(key="k1"))
    first, again, other = make_job(key="k2"), make_job(key="k2"), make_job(key="k1")
    plain = make_job()
    log = EventLog(store)
    results = await store.add_many([first, again, other, plain])
    assert results == [(first, True), (first, False), (held, False), (plain, True)]
    assert sorted(await all_ids(store)) == sorted([held.id, first.id, plain.id])
    await log.expect(E.CREATED, E.CREATED)
    await anyio.sleep(0.1)
    assert len(log.events) == 2  # no event for a resubmission


async def test_add_many_scopes_idempotency_keys_by_owner(store: Store) -> None:
    (a,) = await add(store, make_job(key="k", owner="tenant-a", params={"secret": "a"}))
    b, b_again = make_job(key="k", owner="tenant-b"), make_job(key="k", owner="tenant-b")
    unowned, a_again = make_job(key="k"), make_job(key="k", owner="tenant-a")
    results = await store.add_many([b, b_again, unowned, a_again])
    # Another tenant's key never hands back tenant A's job; within one owner it does.
    assert results == [(b, True), (b, False), (unowned, True), (a, False)]
    assert sorted(await all_ids(store)) == sorted([a.id, b.id, unowned.id])


async def test_add_many_refuses_what_no_store_can_hold(store: Store) -> None:
    log = EventLog(store)
    with pytest.raises(InvalidSubmission):
        await store.add_many([make_job(), make_job(params={"bad": "\ud800"})])
    assert await all_ids(store) == []  # all or nothing
    await anyio.sleep(0.05)
    assert log.events == []


async def test_add_many_is_all_or_nothing_on_queue_full(store: Store) -> None:
    await add(store, make_job(), make_job())
    log = EventLog(store)
    with pytest.raises(QueueFull):
        await store.add_many([make_job(), make_job()], max_queued=3)
    assert len(await all_ids(store)) == 2
    # Exactly at the limit is fine.
    results = await store.add_many([make_job()], max_queued=3)
    assert [created for _, created in results] == [True]
    await log.expect(E.CREATED)


async def test_add_many_is_all_or_nothing_on_a_duplicate_id(store: Store) -> None:
    (existing,) = await add(store, make_job())
    fresh = make_job()
    with pytest.raises(ValueError, match="exists already"):
        await store.add_many([fresh, existing])
    assert await all_ids(store) == [existing.id]
    with pytest.raises(JobNotFound):
        await store.get(fresh.id)


async def test_add_many_jobs_are_claimable(store: Store) -> None:
    jobs = [make_job(priority=p) for p in (0, 2, 1)]
    await store.add_many(jobs)
    claimed = await store.claim("w", types=["t"], limit=3, lease=LEASE, now=at(1))
    assert [j.priority for j in claimed] == [2, 1, 0]


async def test_add_many_wakes_a_waiting_worker(store: Store) -> None:
    async def act() -> None:
        await anyio.sleep(0.1)
        await store.add_many([make_job()])

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(act)
            await store.wait_for_work(60)


# -- retry in place ----------------------------------------------------------------


async def _failed(store: Store, type_: str = "t", **kw: object) -> tuple[str, JobError]:
    job = await running_job(store, type_=type_, **kw)  # type: ignore[arg-type]
    error = JobError("ValueError", f"bad {job.id}", "Traceback ...")
    await store.finish(job.id, token(job), Outcome(FAILED, error=error), now=at(3))
    return job.id, error


async def test_retry_requeues_a_failed_job_in_place(store: Store) -> None:
    job_id, error = await _failed(store, max_attempts=2)
    failed = await store.get(job_id)
    log = EventLog(store)
    queued = await store.retry(job_id, now=at(10))
    assert queued.id == job_id
    assert queued.status is Q
    assert queued.version == failed.version + 1
    assert queued.attempts == 0
    assert queued.max_attempts == 2
    assert (queued.error, queued.result, queued.finished_at, queued.started_at) == (
        None,
        None,
        None,
        None,
    )
    assert queued.run_at == at(10)
    assert queued.history == (Run(FAILED, 1, error, at(1), at(3)),)
    assert await store.get(job_id) == queued
    (event,) = await log.expect(E.RETRYING)
    assert event.job == queued
    assert counts(await store.stats()) == {Q: 1}
    # It runs again, under a new lease, and its history keeps growing.
    again = await claim_one(store, now=11)
    assert (again.id, again.attempts) == (job_id, 1)
    await store.finish(again.id, token(again), Outcome(CANCELLED), now=at(12))
    twice = await store.retry(job_id, now=at(13))
    assert [run.status for run in twice.history] == [FAILED, CANCELLED]
    assert twice.history[1].started_at == at(11)


async def test_retry_of_a_live_or_completed_job_is_illegal(store: Store) -> None:
    running = await running_job(store)
    (waiting,) = await add(store, make_job())
    done = await running_job(store, type_="u")
    await store.finish(done.id, token(done), Outcome(DONE, result=1), now=at(2))
    for job_id in (running.id, waiting.id, done.id):
        before = await store.get(job_id)
        with pytest.raises(IllegalTransition):
            await store.retry(job_id, now=at(5))
        assert await store.get(job_id) == before
    with pytest.raises(JobNotFound):
        await store.retry("01JDOESNOTEXIST0000000000A", now=at(5))


async def test_retry_of_a_cancelled_waiting_job(store: Store) -> None:
    (job,) = await add(store, make_job(delay=30))
    await store.request_cancel(job.id, now=at(1))
    queued = await store.retry(job.id, now=at(2))
    assert queued.status is Q
    assert queued.cancel_requested is False
    assert queued.history == (Run(CANCELLED, 0, None, None, at(1)),)


async def test_a_stale_token_cannot_touch_a_retried_job(store: Store) -> None:
    job = await running_job(store)
    old = token(job)
    await store.finish(job.id, old, Outcome(FAILED), now=at(2))
    await store.retry(job.id, now=at(3))
    await claim_one(store, now=4)
    from asyncjobs.errors import LeaseLost

    with pytest.raises(LeaseLost):
        await store.finish(job.id, old, Outcome(DONE), now=at(5))


async def test_retry_many_filters_by_status_and_type(store: Store) -> None:
    a1, _ = await _failed(store, "a")
    a2, _ = await _failed(store, "a")
    b1, _ = await _failed(store, "b")
    (cancelled,) = await add(store, make_job("a"))
    await store.request_cancel(cancelled.id, now=at(1))
    done = await running_job(store, type_="a")
    await store.finish(done.id, token(done), Outcome(DONE), now=at(2))
    log = EventLog(store)
    retried = await store.retry_many(now=at(9), types=["a"])
    assert [j.id for j in retried] == [a1, a2]
    assert all(j.status is Q for j in retried)
    await log.expect(E.RETRYING, E.RETRYING)
    assert (await store.get(b1)).status is FAILED
    assert (await store.get(cancelled.id)).status is CANCELLED
    both = await store.retry_many(now=at(10), statuses=[FAILED, CANCELLED])
    assert sorted(j.id for j in both) == sorted([b1, cancelled.id])
    assert (await store.get(done.id)).status is DONE
    assert await store.retry_many(now=at(11)) == []


async def test_retry_many_by_owner_and_refuses_other_statuses(store: Store) -> None:
    mine = await running_job(store, owner="alice")
    theirs = await running_job(store, owner="bob")
    for job in (mine, theirs):
        await store.finish(job.id, token(job), Outcome(FAILED), now=at(2))
    retried = await store.retry_many(now=at(3), owner="alice")
    assert [j.id for j in retried] == [mine.id]
    with pytest.raises(ValueError, match="only failed or cancelled"):
        await store.retry_many(now=at(3), statuses=[DONE])


async def test_retry_wakes_a_worker_in_another_instance(
    store_factory: StoreFactory, backend: Backend
) -> None:
    actor, waiter = await store_factory(), await store_factory()
    job_id, _ = await _failed(actor)

    async def act() -> None:
        await anyio.sleep(0.1)
        await actor.retry(job_id, now=at(5))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(act)
            await waiter.wait_for_work(60)
