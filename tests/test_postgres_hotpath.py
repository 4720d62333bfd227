"""The PostgreSQL store's hot path (issue 15, item 2): what it saves, and that the
savings keep the store's rules (fencing, an event per change to every process, claims
that never overlap, all-or-nothing batches)."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from typing import Any

import anyio
import pytest

from asyncjobs.errors import LeaseLost
from asyncjobs.job import EventType, Job, JobStatus
from asyncjobs.stores import Outcome
from asyncjobs.stores.postgres import PostgresStore, events
from asyncjobs.stores.postgres import store as store_module
from asyncjobs.webhooks.model import Webhook
from stores.test_conformance import DONE, LEASE, EventLog, add, at, claim_one, make_job, token
from stores.test_postgres import Factory, schema, stores  # noqa: F401 (fixtures)

pytestmark = pytest.mark.postgres

E = EventType


async def test_own_notifications_are_skipped_without_decoding_them(
    stores: Factory,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    one, two = await stores(), await stores()
    decoded: list[str] = []

    class CountingJson:
        @staticmethod
        def loads(text: str) -> Any:
            decoded.append(text)
            return json.loads(text)

    monkeypatch.setattr(events, "json", CountingJson)
    log, heard = EventLog(one), EventLog(two)
    (job,) = await add(one, make_job())
    running = await claim_one(one)
    await one.finish(job.id, token(running), Outcome(DONE), now=at(2))
    # NOTIFY delivers in commit order: once two's event has reached one, so have the
    # echoes of one's own three changes before it.
    await add(two, make_job())
    await log.expect(E.CREATED, E.STARTED, E.COMPLETED, E.CREATED)
    await heard.wait_for(4)
    sources = Counter(json.loads(text)["src"] for text in decoded)
    # Each instance decodes only the other's notifications.
    assert sources == {one._instance: 3, two._instance: 1}


async def test_a_claim_walks_the_claim_index_of_a_deep_queue_never_analyzed(
    stores: Factory,  # noqa: F811
) -> None:
    store = await stores()
    await store.add_many([make_job() for _ in range(3000)])
    sql = store._sql
    args = (["t"], 50, "w", at(1), "a", "b", sql.channel, sql.prefix, "h", "n")

    async def explain(conn: Any) -> str:
        rows = await conn.fetch("EXPLAIN " + sql.claim_sql, *args)
        return "\n".join(row[0] for row in rows)

    plan = await store._run(explain)
    picked = plan.split("CTE claimed")[0]
    # Not a bitmap scan of every queued job and a sort of them: O(depth) per claim.
    assert "Index Scan using jobs_claim" in picked, plan
    assert "Sort" not in picked, plan


async def test_progress_reports_of_the_moment_share_statements_fenced_and_announced(
    stores: Factory,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    one, two = await stores(), await stores()
    (lost,) = await add(one, make_job("short", max_attempts=2))
    stale = (await one.claim("w", types=["short"], limit=1, lease=1.0, now=at(1)))[0]
    await one.add_many([make_job() for _ in range(20)])
    running = await one.claim("w", types=["t"], limit=20, lease=LEASE, now=at(1))
    assert len(running) == 20
    assert [j.id for j in await two.requeue_expired(now=at(5))] == [lost.id]
    taken = await claim_one(two, "short", now=6, worker="w2")  # one's lease on it is gone
    log = EventLog(two)
    batches: list[int] = []
    real = one._sql.write

    async def write(conn: object, changes: list[object], *args: object) -> object:
        batches.append(len(changes))
        return await real(conn, changes, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(one._sql, "write", write)
    reports = [
        one.set_progress(j.id, token(j), 0.5, f"at {i}", now=at(7)) for i, j in enumerate(running)
    ]
    stale_report = one.set_progress(lost.id, token(stale), 0.9, "stale", now=at(7))
    *reported, refused = await asyncio.gather(*reports, stale_report, return_exceptions=True)
    assert 0 < len(batches) < 20  # shared statements (the stale one: missed, then read)
    assert isinstance(refused, LeaseLost)
    assert await two.get(lost.id) == taken  # fenced off: untouched
    await log.wait_for(20)
    assert sorted(e.job.id for e in log.events) == sorted(j.id for j in running)
    assert {e.type for e in log.events} == {E.PROGRESS}
    by_id = {j.id: j for j in reported if isinstance(j, Job)}
    for event in log.events:
        assert event.job == by_id[event.job.id] == await two.get(event.job.id)
        assert event.job.progress == 0.5


# -- hand-off to a parked worker ----------------------------------------------------


async def _parked(
    store: PostgresStore, types: tuple[str, ...] = ("t", "u"), **limits: int
) -> asyncio.Task[None]:
    """Worker ``w`` claims (nothing there) and parks in wait_for_work, as workers do."""
    generation = store.work_generation()
    got = await store.claim("w", types=types, limit=5, lease=LEASE, now=at(1), type_limits=limits)
    assert got == []
    waiting = asyncio.create_task(store.wait_for_work(60, since=generation))
    await asyncio.sleep(0.01)  # parked
    return waiting


def _no_claims(store: PostgresStore, monkeypatch: pytest.MonkeyPatch) -> None:
    async def claim(*args: object, **kwargs: object) -> object:
        raise AssertionError("a claim statement was sent")

    monkeypatch.setattr(store._sql, "claim", claim)


async def test_a_job_submitted_to_a_parked_worker_is_handed_to_it(
    stores: Factory,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    one, two = await stores(), await stores()
    log = EventLog(two)
    waiting = await _parked(one)
    job, created = await one.add(make_job())
    assert created and job.status is JobStatus.QUEUED
    await asyncio.wait_for(waiting, 5)  # the submit woke the worker
    assert await two.claim("w2", types=["t"], limit=5, lease=LEASE, now=at(2)) == []
    _no_claims(one, monkeypatch)
    (running,) = await one.claim("w", types=["t", "u"], limit=5, lease=LEASE, now=at(2))
    assert running.status is JobStatus.RUNNING and running.attempts == 1
    assert running.lease is not None and running.lease.worker_id == "w"
    assert running == await two.get(job.id)
    created_event, started = await log.expect(E.CREATED, E.STARTED)
    assert created_event.job == job and started.job == running
    assert created_event.seq < started.seq
    done = await one.finish(job.id, token(running), Outcome(DONE), now=at(3))
    assert done.status is DONE and done == await two.get(job.id)


async def test_no_hand_off_without_a_parked_worker_or_for_a_limited_type(
    stores: Factory,  # noqa: F811
) -> None:
    one, two = await stores(), await stores()
    assert await one.claim("w", types=["t"], limit=5, lease=LEASE, now=at(1)) == []
    (plain,) = await add(one, make_job())  # short claim, but nobody waits
    waiting = await _parked(one, ("u", "v"), u=1)
    (limited,) = await add(one, make_job("u"))  # counted across processes: never handed
    delayed, _ = await one.add(make_job("v", delay=5))
    waiting.cancel()
    for job in (plain, limited, delayed):
        assert (await two.get(job.id)).status in (JobStatus.QUEUED, JobStatus.SCHEDULED)
    got = await two.claim("w2", types=["t", "u"], limit=5, lease=LEASE, now=at(2))
    assert {j.id for j in got} == {plain.id, limited.id}


@pytest.mark.parametrize("how", ["unregister", "close"])
async def test_a_handed_job_its_worker_never_took_is_given_back(
    stores: Factory,  # noqa: F811
    how: str,
) -> None:
    one, two = await stores(), await stores()
    waiting = await _parked(one)
    job, _ = await one.add(make_job())
    waiting.cancel()  # the worker stops instead of claiming
    assert (await two.get(job.id)).status is JobStatus.RUNNING
    if how == "unregister":
        await one.remove_worker("w")
    else:
        await one.close()
    back = await two.get(job.id)
    assert back.status is JobStatus.QUEUED and back.attempts == 0  # its attempt returned
    (again,) = await two.claim("w2", types=["t"], limit=5, lease=LEASE, now=at(2))
    assert again.id == job.id and again.attempts == 1


async def test_an_idempotent_resubmit_to_a_parked_worker_returns_the_stored_job(
    stores: Factory,  # noqa: F811
) -> None:
    one = await stores()
    await one.add(make_job(key="k"))
    first = await claim_one(one, worker="w0")
    waiting = await _parked(one)
    again, created = await one.add(make_job(key="k"))
    assert not created and again == first
    assert not waiting.done()  # nothing new: the worker still waits
    waiting.cancel()


async def test_the_columns_follow_the_record_through_patches(
    stores: Factory,  # noqa: F811
) -> None:
    store = await stores()
    query = (
        "SELECT status, priority, run_at, finished_at, lease_token, lease_expires_at"
        f' FROM "{store.schema}".jobs WHERE id = $1'
    )

    async def columns(job_id: str) -> tuple[object, ...]:
        row = await store._run(lambda conn: conn.fetchrow(query, job_id))
        return tuple(row)

    def expected(job: Job) -> tuple[object, ...]:
        lease = job.lease
        return (
            job.status.value,
            job.priority,
            job.run_at,
            job.finished_at,
            None if lease is None else lease.token,
            None if lease is None else lease.expires_at,
        )

    (job,) = await add(store, make_job(priority=3, max_attempts=3))
    running = await claim_one(store)
    assert await columns(job.id) == expected(running)
    halfway = await store.set_progress(job.id, token(running), 0.5, None, now=at(2))
    assert await columns(job.id) == expected(halfway)
    retry = Outcome(JobStatus.SCHEDULED, run_at=at(60))
    waiting = await store.finish(job.id, token(running), retry, now=at(3))
    assert await columns(job.id) == expected(waiting)  # run_at moved, the lease gone
    (due,) = await store.promote_scheduled(now=at(61))
    again = await claim_one(store, now=62)
    failed = await store.finish(job.id, token(again), Outcome(JobStatus.FAILED), now=at(63))
    assert await columns(job.id) == expected(failed)  # finished_at set
    requeued = await store.retry(job.id, now=at(64))
    assert await columns(job.id) == expected(requeued)  # finished_at cleared
    assert due.status is JobStatus.QUEUED


# -- the webhook outbox of a queue without webhooks ----------------------------------


async def test_without_webhooks_the_outbox_is_not_read_after_every_batch_of_ends(
    stores: Factory,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    one, two = await stores(), await stores()
    sent: list[str] = []
    real = one._run

    async def run(op: Any, **kw: Any) -> Any:
        sent.append(getattr(op, "__qualname__", ""))
        return await real(op, **kw)

    monkeypatch.setattr(one, "_run", run)
    assert await one.claim_deliveries(now=at(1), limit=10, lease=30) == []
    assert await one.claim_deliveries(now=at(1), limit=10, lease=30) == []
    assert len(sent) == 1  # the second look was spared: no webhook exists
    # A webhook added through this instance counts at once; one added through another
    # instance once the "no webhooks" answer is older than _HOOKS_FOR.
    hook = await two.add_webhook(Webhook(url="https://example.com/hook", secret="s"), now=at(1))
    (job,) = await add(two, make_job())
    running = await claim_one(two)
    await two.finish(job.id, token(running), Outcome(DONE), now=at(2))
    assert await one.claim_deliveries(now=at(3), limit=10, lease=30) == []  # still spared
    monkeypatch.setattr(store_module, "_HOOKS_FOR", 0.0)
    one._hooks_known = (False, 0.0)  # the answer has aged
    (taken,) = await one.claim_deliveries(now=at(3), limit=10, lease=30)
    assert taken[0].job.id == job.id and taken[1].id == hook.id
    one._hooks_known = (False, time.monotonic() + 60)
    await one.add_webhook(Webhook(url="https://example.com/other", secret="s"), now=at(4))
    looks = len(sent)
    await one.claim_deliveries(now=at(100), limit=10, lease=30)
    assert len(sent) == looks + 1


async def test_prefetching_claims_from_two_instances_never_hand_a_job_to_both(
    stores: Factory,  # noqa: F811
) -> None:
    one, two = await stores(), await stores()
    jobs = [make_job(priority=i % 4) for i in range(400)]
    await one.add_many(jobs)
    claimed: Counter[str] = Counter()

    async def claimer(store: PostgresStore, name: str) -> None:
        while got := await store.claim(name, types=["t"], limit=40, lease=LEASE, now=at(1)):
            claimed.update(j.id for j in got)
            for job in got[::2]:  # finishes interleave with the claims, as in a drain
                await store.finish(job.id, token(job), Outcome(DONE), now=at(2))

    with anyio.fail_after(60):
        await asyncio.gather(
            *(claimer(s, f"{n}-{i}") for s, n in ((one, "one"), (two, "two")) for i in range(3))
        )
    assert set(claimed) == {j.id for j in jobs}
    assert max(claimed.values()) == 1
