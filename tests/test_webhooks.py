"""Webhooks end to end: a real queue, the delivery loop, and a real HTTP receiver that
verifies each signature with its own code."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from asyncjobs import JobContext, Queue
from asyncjobs.webhooks import Delivery, Webhook, WebhookConfig
from webhook_receiver import receiver

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
FAST = WebhookConfig(poll=0.1, backoff=0.05, max_backoff=0.2, timeout=2.0)


@pytest.fixture
def allow_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASYNCJOBS_WEBHOOK_ALLOW", "127.0.0.1")


@pytest.fixture(
    params=[
        "memory",
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("redis", marks=pytest.mark.redis),
    ]
)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}"
    if request.param == "redis":
        redis_url: str = request.getfixturevalue("redis_url")
        return f"{redis_url}?prefix=aj_hook_{uuid.uuid4().hex[:12]}"
    base: str = request.getfixturevalue("postgres_url")
    return f"{base}{'&' if '?' in base else '?'}schema=aj_hook_{uuid.uuid4().hex[:12]}"


async def _drop_schema(url: str) -> None:
    if url.startswith("redis"):
        from stores.conftest import destroy_redis_prefix

        base, _, prefix = url.partition("?prefix=")
        await destroy_redis_prefix(base, prefix)  # SCAN + DEL of this prefix only
        return
    if not url.startswith("postgres"):
        return
    import asyncpg

    from asyncjobs.stores.postgres.schema import split_url

    dsn, schema = split_url(url)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def build(url: str, hook: Webhook, config: WebhookConfig = FAST) -> Queue:
    queue = Queue(url, webhooks=[hook], webhook_config=config)

    @queue.job_type("echo")
    async def echo(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
        return params

    @queue.job_type("boom")
    async def boom(ctx: JobContext, params: dict[str, Any]) -> None:
        raise RuntimeError("kaboom")

    return queue


async def wait_delivery(queue: Queue, hook: Webhook, status: str) -> Delivery:
    with anyio.fail_after(20):
        while True:
            found = await queue.deliveries(hook.id, status=status)
            if found:
                return found[0]
            await anyio.sleep(0.05)


@pytest.fixture
async def cleanup(store_url: str) -> AsyncIterator[None]:
    yield
    await _drop_schema(store_url)


@pytest.mark.usefixtures("allow_loopback", "cleanup")
async def test_a_job_end_is_delivered_signed_and_retried_with_one_id(store_url: str) -> None:
    async with receiver(SECRET, statuses=[500]) as rx:
        hook = Webhook(url=rx.url, events=["job_completed", "job_failed"], secret=SECRET)
        async with build(store_url, hook) as queue:
            job = await queue.submit("echo", {"n": 1})
            done = await queue.wait(job.id, timeout=20)
            first, second = await rx.wait_for(2)
            delivery = await wait_delivery(queue, hook, "delivered")
            failing = await queue.submit("boom")
            await queue.wait(failing.id, timeout=20)
            third = (await rx.wait_for(3))[2]
    assert first.valid and second.valid and third.valid
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == delivery.id
    assert first.body == second.body  # the same bytes on every retry
    assert first.json["type"] == "job_completed"
    assert first.json["data"]["id"] == job.id
    assert first.json["data"]["status"] == "completed"
    assert first.json["data"]["result"] == {"n": 1}
    assert first.json["data"]["version"] == done.version
    assert "lease" not in first.json["data"]
    assert first.headers["content-type"] == "application/json"
    assert (delivery.attempts, delivery.last_error) == (2, None)
    assert third.json["type"] == "job_failed"
    assert third.json["data"]["error"]["message"] == "kaboom"


@pytest.mark.usefixtures("allow_loopback")
async def test_a_failing_target_is_retried_with_backoff_then_dead() -> None:
    config = WebhookConfig(poll=0.1, backoff=0.05, max_backoff=0.2, max_attempts=3)
    async with receiver(SECRET, statuses=[500, 503, 500, 500]) as rx:
        hook = Webhook(url=rx.url, secret=SECRET)
        async with build("memory://", hook, config) as queue:
            job = await queue.submit("echo")
            await queue.wait(job.id, timeout=20)
            dead = await wait_delivery(queue, hook, "dead")
            await anyio.sleep(0.5)
    assert len(rx.received) == 3
    assert (dead.attempts, dead.last_error) == (3, "HTTP 500")


@pytest.mark.usefixtures("allow_loopback")
async def test_redirects_are_not_followed_and_slow_targets_time_out() -> None:
    config = WebhookConfig(poll=0.1, max_attempts=1, timeout=0.3)
    async with receiver(SECRET, statuses=[307]) as rx:
        hook = Webhook(url=rx.url, secret=SECRET)
        async with build("memory://", hook, config) as queue:
            await queue.wait((await queue.submit("echo")).id, timeout=20)
            dead = await wait_delivery(queue, hook, "dead")
    assert [r.path for r in rx.received] == ["/hook"]  # never /elsewhere
    assert dead.last_error == "HTTP 307"
    async with receiver(SECRET, delay=2.0) as rx:
        hook = Webhook(url=rx.url, secret=SECRET)
        async with build("memory://", hook, config) as queue:
            await queue.wait((await queue.submit("echo")).id, timeout=20)
            dead = await wait_delivery(queue, hook, "dead")
    assert dead.last_error is not None
    assert "Timeout" in dead.last_error


async def test_loopback_targets_are_refused_unless_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ASYNCJOBS_WEBHOOK_ALLOW", raising=False)
    async with receiver(SECRET) as rx:
        hook = Webhook(url=rx.url, secret=SECRET)
        async with build("memory://", hook) as queue:
            await queue.wait((await queue.submit("echo")).id, timeout=20)
            dead = await wait_delivery(queue, hook, "dead")
            from asyncjobs.webhooks.dispatcher import TargetRefused

            for url in ("http://10.1.2.3/x", "http://[::1]/x", "http://169.254.169.254/x"):
                with pytest.raises(TargetRefused):
                    await queue.add_webhook(Webhook(url=url))
    assert rx.received == []
    assert dead.last_error is not None
    assert "ASYNCJOBS_WEBHOOK_ALLOW=127.0.0.1" in dead.last_error


class _CountingStore:
    """Counts the outbox looks of a MemoryStore (claim_deliveries calls)."""

    def __init__(self) -> None:
        from asyncjobs import MemoryStore

        self.store = MemoryStore()
        self.looks = 0
        claim = self.store.claim_deliveries

        async def counting(**kwargs: Any) -> Any:
            self.looks += 1
            return await claim(**kwargs)

        self.store.claim_deliveries = counting  # type: ignore[method-assign]


async def test_ends_no_webhook_wants_do_not_wake_the_delivery_loop() -> None:
    counting = _CountingStore()
    queue = Queue(counting.store, concurrency=1, webhook_config=WebhookConfig(poll=30))

    @queue.job_type("noop")
    async def noop(ctx: JobContext, params: dict[str, Any]) -> None:
        return None

    async with queue:
        await anyio.sleep(0.05)  # the loop's first look, with no webhook registered
        before = counting.looks
        for _ in range(20):  # one at a time: every end comes alone
            job = await queue.submit("noop")
            await queue.wait(job.id, timeout=10)
        await anyio.sleep(0.05)
        assert counting.looks == before  # 20 ends, nobody asked for them: no look


@pytest.mark.usefixtures("allow_loopback")
async def test_a_webhook_registered_elsewhere_is_served_within_the_poll() -> None:
    counting = _CountingStore()
    config = WebhookConfig(poll=0.2, timeout=2.0)
    worker = Queue(counting.store, concurrency=1, webhook_config=config)

    @worker.job_type("echo")
    async def echo(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
        return params

    async with receiver(SECRET) as rx, worker:
        # Registered straight in the shared store, as another process would.
        hook = Webhook(url=rx.url, events=["job_completed"], secret=SECRET)
        await counting.store.add_webhook(hook, now=worker.clock())
        job = await worker.submit("echo", {"n": 2})
        await worker.wait(job.id, timeout=10)
        (got,) = await rx.wait_for(1)
        assert got.valid and got.json["data"]["id"] == job.id
        # Once seen, every wanted end wakes the loop at once (no wait for the poll).
        looks = counting.looks
        again = await worker.submit("echo", {"n": 3})
        await worker.wait(again.id, timeout=10)
        await rx.wait_for(2)
        assert counting.looks > looks


@pytest.mark.usefixtures("allow_loopback")
async def test_a_webhook_added_through_the_queue_wakes_the_loop_for_its_first_end() -> None:
    counting = _CountingStore()
    queue = Queue(counting.store, concurrency=1, webhook_config=WebhookConfig(poll=30))

    @queue.job_type("echo")
    async def echo(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
        return params

    async with receiver(SECRET) as rx, queue:
        await anyio.sleep(0.05)  # the loop has looked: no webhooks
        await queue.add_webhook(Webhook(url=rx.url, events=["job_completed"], secret=SECRET))
        job = await queue.submit("echo", {"n": 1})
        with anyio.fail_after(10):  # far less than the 30 s poll
            (got,) = await rx.wait_for(1)
        assert got.json["data"]["id"] == job.id
