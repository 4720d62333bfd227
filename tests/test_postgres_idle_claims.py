"""An idle worker's claims that cannot find anything are answered without a statement
(PostgreSQL store, issue 15 item 2), and every way a job can become claimable (a new or
requeued job here or in another process, a resync, a timed-out wait) voids that."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from asyncjobs.job import JobStatus
from asyncjobs.stores import Outcome
from asyncjobs.stores.postgres import PostgresStore
from stores.test_conformance import DONE, LEASE, add, at, make_job, token
from stores.test_postgres import Factory, schema, stores  # noqa: F401 (fixtures)

pytestmark = pytest.mark.postgres


class Statements:
    """Counts the claim statements a store sends."""

    def __init__(self, store: PostgresStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sent = 0
        real = store._sql.claim

        async def claim(*args: object, **kwargs: object) -> object:
            self.sent += 1
            return await real(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(store._sql, "claim", claim)


async def _claim(store: PostgresStore, worker: str = "w") -> list[str]:
    jobs = await store.claim(worker, types=["t"], limit=5, lease=LEASE, now=at(1))
    return [job.id for job in jobs]


async def _unheard_job(one: PostgresStore, two: PostgresStore) -> str:
    """``one`` claims short, then ``two`` adds a job whose notification ``one`` loses."""
    assert await _claim(one) == []
    one._remote._wake_for = lambda type_: None
    (job,) = await add(two, make_job())
    await asyncio.sleep(0.1)
    return job.id


async def _heard(store: PostgresStore, generation: int) -> None:
    with anyio.fail_after(5):
        while store.work_generation() == generation:
            await asyncio.sleep(0.005)


async def test_a_claim_after_a_short_one_sends_nothing_until_a_job_may_have_come(
    stores: Factory,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    one, two = await stores(), await stores()
    sent = Statements(one, monkeypatch)
    assert await _claim(one) == [] and sent.sent == 1
    assert await _claim(one) == [] and sent.sent == 1  # a slot freed up: nothing new
    assert await _claim(one, "other") == [] and sent.sent == 2  # per worker
    # A job that ends elsewhere wakes the worker (it may free a per-type slot) but
    # queues nothing.
    generation = one.work_generation()
    (job,) = await add(two, make_job("u"))
    await _heard(one, generation)
    assert await _claim(one) == [] and sent.sent == 3  # any new job: looked again
    (running,) = await two.claim("w2", types=["u"], limit=1, lease=LEASE, now=at(1))
    generation = one.work_generation()
    await two.finish(job.id, token(running), Outcome(DONE), now=at(2))
    await _heard(one, generation)
    assert await _claim(one) == [] and sent.sent == 3
    # A job queued in another process: heard, and the next claim takes it.
    generation = one.work_generation()
    (queued,) = await add(two, make_job())
    await _heard(one, generation)
    assert await _claim(one) == [queued.id] and sent.sent == 4


async def test_a_claim_with_limits_always_goes_to_the_server(
    stores: Factory,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    one = await stores()
    sent = Statements(one, monkeypatch)
    for _ in range(2):
        await one.claim("w", types=["t"], limit=5, lease=LEASE, now=at(1))
    limits = {"t": 2}
    for _ in range(2):
        await one.claim("w", types=["t"], limit=5, lease=LEASE, now=at(1), type_limits=limits)
    assert sent.sent == 1  # the limited claims used claim_limited
    assert await _claim(one) == [] and sent.sent == 2  # and voided what was known


async def test_a_claim_after_a_timed_out_wait_goes_to_the_server(
    stores: Factory,  # noqa: F811
) -> None:
    """The safety net for a lost notification: the wait times out, the claim goes out."""
    one, two = await stores(), await stores()
    job_id = await _unheard_job(one, two)  # its notifications are lost
    assert await _claim(one) == []  # not heard of, and not looked for
    generation = one.work_generation()
    await one.wait_for_work(0.05, since=generation)
    assert await _claim(one) == [job_id]


async def test_a_claim_after_a_failed_wait_goes_to_the_server(
    stores: Factory,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker whose wait fails claims on a timer: those claims reach the server."""
    one, two = await stores(), await stores()
    job_id = await _unheard_job(one, two)

    async def broken(self: object, timeout: float, *, since: int | None = None) -> None:
        raise RuntimeError("the notifier is down")

    monkeypatch.setattr(type(one._notifier), "wait_for_work", broken)
    with pytest.raises(RuntimeError):
        await one.wait_for_work(60)
    assert await _claim(one) == [job_id]


async def test_a_resync_voids_what_was_known(
    stores: Factory,  # noqa: F811
) -> None:
    one, two = await stores(), await stores()
    job_id = await _unheard_job(one, two)
    one._resync()  # what the LISTEN connection does when it reconnects
    assert await _claim(one) == [job_id]


async def test_after_a_hand_off_the_next_claim_sends_nothing_and_a_new_job_is_found(
    stores: Factory,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    one, two = await stores(), await stores()
    generation = one.work_generation()
    assert await _claim(one) == []
    waiting = asyncio.create_task(one.wait_for_work(60, since=generation))
    await asyncio.sleep(0.01)  # parked
    job, _ = await one.add(make_job())
    await asyncio.wait_for(waiting, 5)
    sent = Statements(one, monkeypatch)
    (running,) = await one.claim("w", types=["t"], limit=5, lease=LEASE, now=at(1))
    assert running.id == job.id and running.status is JobStatus.RUNNING
    assert await _claim(one) == [] and sent.sent == 0
    await one.finish(job.id, token(running), Outcome(DONE), now=at(2))
    assert await _claim(one) == [] and sent.sent == 0  # its slot freed up: still nothing
    generation = one.work_generation()
    (queued,) = await add(two, make_job())
    await _heard(one, generation)
    assert await _claim(one) == [queued.id] and sent.sent == 1
