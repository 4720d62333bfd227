"""Conformance of the webhook registry and outbox, on every store.

The rule under test: a job's end and its outbox rows are one atomic step, so the
delivery is there as soon as the end is (whichever operation ended the job).
"""

from __future__ import annotations

import pytest

from asyncjobs.job import JobError
from asyncjobs.stores import Outcome, Store
from asyncjobs.webhooks import Webhook, WebhookNotFound, message_id

from .conftest import StoreFactory
from .test_conformance import CANCELLED, DONE, FAILED, add, at, make_job, running_job, token

ALL = Webhook(url="https://hooks.example.com/all", secret="whsec_c2VjcmV0")
FAILS = Webhook(url="https://hooks.example.com/fails", events=["job_failed"], secret="s")


async def test_webhooks_are_upserted_listed_and_deleted(store: Store) -> None:
    assert await store.list_webhooks() == []
    first = await store.add_webhook(ALL, now=at(1))
    assert first.created_at == at(1)
    assert (first.url, first.events, first.secret) == (ALL.url, ALL.events, ALL.secret)
    again = await store.add_webhook(ALL, now=at(5))  # every process registers it: once
    assert again.created_at == at(1)
    await store.add_webhook(FAILS, now=at(2))
    assert [h.id for h in await store.list_webhooks()] == [ALL.id, FAILS.id]
    await store.delete_webhook(ALL.id)
    assert [h.id for h in await store.list_webhooks()] == [FAILS.id]
    with pytest.raises(WebhookNotFound):
        await store.delete_webhook(ALL.id)
    with pytest.raises(WebhookNotFound):
        await store.list_deliveries(ALL.id)


async def test_a_job_end_writes_its_deliveries_atomically(store: Store) -> None:
    await store.add_webhook(ALL, now=at(0))
    await store.add_webhook(FAILS, now=at(0))
    done = await running_job(store)
    assert await store.list_deliveries(ALL.id) == []  # nothing for a live job
    ended = await store.finish(done.id, token(done), Outcome(DONE, result=7), now=at(3))
    (delivery,) = await store.list_deliveries(ALL.id)
    assert delivery.id == message_id(ended, ALL.id)
    assert (delivery.event, delivery.job, delivery.at, delivery.status) == (
        "job_completed",
        ended,
        at(3),
        "pending",
    )
    assert await store.list_deliveries(FAILS.id) == []
    failed = await running_job(store, type_="u")
    error = JobError("ValueError", "no")
    await store.finish(failed.id, token(failed), Outcome(FAILED, error=error), now=at(4))
    (fail,) = await store.list_deliveries(FAILS.id)
    assert (fail.event, fail.job.error) == ("job_failed", error)
    assert [d.event for d in await store.list_deliveries(ALL.id)] == [
        "job_failed",
        "job_completed",
    ]


async def test_cancel_expiry_and_retry_in_place_each_write_deliveries(store: Store) -> None:
    await store.add_webhook(ALL, now=at(0))
    (waiting,) = await add(store, make_job())
    await store.request_cancel(waiting.id, now=at(2))
    lost = await running_job(store, type_="u")
    await store.requeue_expired(now=at(100))  # max_attempts=1: it fails
    events = sorted((d.job.id, d.event) for d in await store.list_deliveries(ALL.id))
    assert events == sorted([(waiting.id, "job_cancelled"), (lost.id, "job_failed")])
    # A job retried in place and ended again is a new message with a new id.
    await store.retry(waiting.id, now=at(101))
    await store.request_cancel(waiting.id, now=at(102))
    ids = [d.id for d in await store.list_deliveries(ALL.id) if d.job.id == waiting.id]
    assert len(ids) == len(set(ids)) == 2


async def test_claim_hides_deliveries_for_a_lease_and_finish_records_attempts(
    store_factory: StoreFactory,
) -> None:
    one, two = await store_factory(), await store_factory()
    await one.add_webhook(ALL, now=at(0))
    for _ in range(3):
        job = await running_job(one)
        await one.finish(job.id, token(job), Outcome(CANCELLED), now=at(2))
    assert await one.claim_deliveries(now=at(1), limit=10, lease=30) == []  # not due yet
    first = await one.claim_deliveries(now=at(5), limit=2, lease=30)
    assert len(first) == 2
    assert all(hook.secret == ALL.secret for _, hook in first)
    rest = await two.claim_deliveries(now=at(6), limit=10, lease=30)
    assert len(rest) == 1
    assert {d.id for d, _ in first}.isdisjoint({d.id for d, _ in rest})
    assert await two.claim_deliveries(now=at(7), limit=10, lease=30) == []
    ok, retry, dead = first[0][0], first[1][0], rest[0][0]
    await one.finish_delivery(ok.id, now=at(8), ok=True)
    await one.finish_delivery(retry.id, now=at(8), ok=False, error="HTTP 500", retry_at=at(20))
    await one.finish_delivery(dead.id, now=at(8), ok=False, error="refused")
    by_id = {d.id: d for d in await two.list_deliveries(ALL.id)}
    assert (by_id[ok.id].status, by_id[ok.id].delivered_at, by_id[ok.id].attempts) == (
        "delivered",
        at(8),
        1,
    )
    assert (by_id[retry.id].status, by_id[retry.id].last_error) == ("pending", "HTTP 500")
    assert by_id[dead.id].status == "dead"
    assert [d.id for d in await two.list_deliveries(ALL.id, status="dead")] == [dead.id]
    assert await one.claim_deliveries(now=at(19), limit=10, lease=30) == []
    (again,) = await one.claim_deliveries(now=at(20), limit=10, lease=30)
    assert (again[0].id, again[0].attempts) == (retry.id, 1)
    # A sender that dies leaves its delivery to be claimed again after the lease.
    (late,) = await two.claim_deliveries(now=at(51), limit=10, lease=30)
    assert late[0].id == retry.id


@pytest.mark.parametrize(
    "backend",
    [
        "memory",
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("redis", marks=pytest.mark.redis),
    ],
    indirect=True,
)
async def test_finished_deliveries_past_retention_are_purged(store: Store) -> None:
    await store.add_webhook(ALL, now=at(0))
    for _ in range(4):
        job = await running_job(store)
        await store.finish(job.id, token(job), Outcome(CANCELLED), now=at(2))
    taken = [d for d, _ in await store.claim_deliveries(now=at(5), limit=10, lease=30)]
    ok, dead, pending, late = sorted(taken, key=lambda d: d.id)
    await store.finish_delivery(ok.id, now=at(10), ok=True)
    await store.finish_delivery(dead.id, now=at(10), ok=False, error="refused")
    await store.finish_delivery(pending.id, now=at(10), ok=False, error="500", retry_at=at(90))
    await store.finish_delivery(late.id, now=at(50), ok=True)  # delivered later
    assert await store.purge_deliveries(before=at(2), limit=10) == 0  # none that old
    # Delivered at 10 and dead (its job ended at 2) go, one per call here (the limit);
    # delivered at 50 and pending stay.
    assert await store.purge_deliveries(before=at(20), limit=1) == 1
    assert await store.purge_deliveries(before=at(20), limit=10) == 1
    left = {d.id: d.status for d in await store.list_deliveries(ALL.id)}
    assert left == {pending.id: "pending", late.id: "delivered"}
    assert await store.purge_deliveries(before=at(1000), limit=10) == 1  # never pending
    assert [d.id for d in await store.list_deliveries(ALL.id)] == [pending.id]
