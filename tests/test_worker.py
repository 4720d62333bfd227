"""Worker behaviour through a real Queue on the memory store: cancel, timeout, retries,
priority, concurrency caps, thread handlers, leases and graceful shutdown."""

from __future__ import annotations

import threading
import time
from typing import Any

import anyio
import pytest

from asyncjobs import (
    Backoff,
    EventType,
    JanitorConfig,
    JobCancelled,
    JobContext,
    JobStatus,
    MemoryStore,
    Queue,
    ThreadJobContext,
    WorkerConfig,
)

FAST_RETRY = Backoff(base=0.01, factor=1.0, jitter=0.0)
FAST_JANITOR = JanitorConfig(interval=0.02)


async def test_cancel_running_job_cancels_the_handler_promptly() -> None:
    queue = Queue(janitor=FAST_JANITOR)
    started = anyio.Event()
    saw_cancel = []

    @queue.job_type("forever", max_attempts=1)
    async def forever(ctx: JobContext, params: dict[str, Any]) -> None:
        started.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            saw_cancel.append(True)
            raise

    async with queue:
        job = await queue.submit("forever")
        with anyio.fail_after(5):
            await started.wait()
        requested = await queue.cancel(job.id)
        assert requested.status is JobStatus.RUNNING and requested.cancel_requested
        t0 = anyio.current_time()
        done = await queue.wait(job.id, timeout=5)
        elapsed = anyio.current_time() - t0
        assert done.status is JobStatus.CANCELLED
        assert saw_cancel == [True]
        # Not a speed assertion: a generous bound that only a broken cancel path misses.
        assert elapsed < 2.0
        await anyio.sleep(0.05)
        assert (await queue.get(job.id)).status is JobStatus.CANCELLED


async def test_cancel_wins_even_if_the_handler_swallows_cancellation() -> None:
    queue = Queue(janitor=FAST_JANITOR)
    started = anyio.Event()

    @queue.job_type("stubborn", max_attempts=1)
    async def stubborn(ctx: JobContext, params: dict[str, Any]) -> str:
        started.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            pass  # a badly behaved handler
        return "finished anyway"

    async with queue:
        job = await queue.submit("stubborn")
        await started.wait()
        await queue.cancel(job.id)
        done = await queue.wait(job.id, timeout=5)
        assert done.status is JobStatus.CANCELLED
        assert done.result is None


async def test_cancel_queued_job_is_immediate_and_it_never_runs() -> None:
    queue = Queue(concurrency=1, janitor=FAST_JANITOR)
    gate = anyio.Event()
    ran: list[str] = []

    @queue.job_type("blocker")
    async def blocker(ctx: JobContext, params: dict[str, Any]) -> None:
        await gate.wait()

    @queue.job_type("victim")
    async def victim(ctx: JobContext, params: dict[str, Any]) -> None:
        ran.append(ctx.job_id)

    async with queue:
        await queue.submit("blocker")
        job = await queue.submit("victim")
        cancelled = await queue.cancel(job.id)
        assert cancelled.status is JobStatus.CANCELLED
        assert cancelled.finished_at is not None
        gate.set()
        await anyio.sleep(0.1)
    assert ran == []


async def test_timeout_fails_a_job_that_overruns_it() -> None:
    queue = Queue(janitor=FAST_JANITOR)

    @queue.job_type("slow", timeout=0.2, max_attempts=1)
    async def slow(ctx: JobContext, params: dict[str, Any]) -> str:
        await anyio.sleep(30)
        return "never"

    async with queue:
        job = await queue.submit("slow")
        done = await queue.wait(job.id, timeout=10)
    assert done.status is JobStatus.FAILED
    assert done.error is not None
    assert done.error.type == "JobTimeout"
    assert "0.2s" in done.error.message


async def test_per_job_timeout_overrides_the_type_default() -> None:
    queue = Queue(janitor=FAST_JANITOR)

    @queue.job_type("nap", timeout=30, max_attempts=1)
    async def nap(ctx: JobContext, params: dict[str, Any]) -> None:
        await anyio.sleep(5)

    async with queue:
        job = await queue.submit("nap", timeout=0.1)
        assert job.timeout == 0.1
        done = await queue.wait(job.id, timeout=10)
    assert done.status is JobStatus.FAILED
    assert done.error is not None and done.error.type == "JobTimeout"


async def test_retries_with_backoff_then_succeeds() -> None:
    queue = Queue(janitor=FAST_JANITOR)
    calls: list[int] = []

    @queue.job_type("flaky", max_attempts=3, backoff=FAST_RETRY)
    async def flaky(ctx: JobContext, params: dict[str, Any]) -> int:
        calls.append(ctx.attempt)
        if ctx.attempt < 3:
            raise ConnectionError(f"try {ctx.attempt} failed")
        return ctx.attempt

    async with queue:
        job = await queue.submit("flaky")
        types: list[EventType] = []
        async for event in queue.subscribe(job.id):
            types.append(event.type)
        done = await queue.get(job.id)
    assert calls == [1, 2, 3]
    assert done.status is JobStatus.COMPLETED
    assert done.result == 3
    assert done.attempts == 3
    assert types.count(EventType.RETRYING) == 2
    assert types[-1] is EventType.COMPLETED


async def test_exhausted_retries_keep_the_exception_type_message_and_traceback() -> None:
    queue = Queue(janitor=FAST_JANITOR)

    @queue.job_type("broken", max_attempts=2, backoff=FAST_RETRY)
    async def broken(ctx: JobContext, params: dict[str, Any]) -> None:
        raise KeyError(f"missing thing {ctx.attempt}")

    async with queue:
        job = await queue.submit("broken")
        done = await queue.wait(job.id, timeout=10)
    assert done.status is JobStatus.FAILED
    assert done.attempts == 2
    assert done.error is not None
    assert done.error.type == "KeyError"
    assert "missing thing 2" in done.error.message
    assert done.error.traceback is not None and "raise KeyError" in done.error.traceback


async def test_a_result_that_is_not_json_fails_the_job() -> None:
    queue = Queue(janitor=FAST_JANITOR)

    @queue.job_type("weird", max_attempts=1)
    async def weird(ctx: JobContext, params: dict[str, Any]) -> object:
        return object()

    async with queue:
        done = await queue.wait((await queue.submit("weird")).id, timeout=5)
    assert done.status is JobStatus.FAILED
    assert done.error is not None and done.error.type == "TypeError"


async def test_priority_then_fifo_order() -> None:
    queue = Queue(concurrency=1, janitor=FAST_JANITOR)
    gate = anyio.Event()
    order: list[str] = []

    @queue.job_type("gate")
    async def gate_job(ctx: JobContext, params: dict[str, Any]) -> None:
        await gate.wait()

    @queue.job_type("record")
    async def record(ctx: JobContext, params: dict[str, Any]) -> None:
        order.append(params["name"])

    async with queue:
        first = await queue.submit("gate")
        while (await queue.get(first.id)).status is not JobStatus.RUNNING:
            await anyio.sleep(0.01)
        for name, priority in [("a", 0), ("b", 5), ("c", 0), ("d", 5), ("e", -1)]:
            await queue.submit("record", {"name": name}, priority=priority)
        gate.set()
        with anyio.fail_after(5):
            while len(order) < 5:
                await anyio.sleep(0.01)
    assert order == ["b", "d", "a", "c", "e"]


async def test_global_concurrency_cap_is_never_exceeded() -> None:
    queue = Queue(concurrency=3, janitor=FAST_JANITOR)
    running = 0
    peak = 0

    @queue.job_type("work")
    async def work(ctx: JobContext, params: dict[str, Any]) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await anyio.sleep(0.02)
        running -= 1

    async with queue:
        jobs = [await queue.submit("work") for _ in range(15)]
        for job in jobs:
            assert (await queue.wait(job.id, timeout=10)).status is JobStatus.COMPLETED
    assert peak == 3


async def test_per_type_concurrency_limit() -> None:
    queue = Queue(concurrency=6, janitor=FAST_JANITOR)
    running = {"narrow": 0, "wide": 0}
    peak = {"narrow": 0, "wide": 0}

    async def body(kind: str) -> None:
        running[kind] += 1
        peak[kind] = max(peak[kind], running[kind])
        await anyio.sleep(0.03)
        running[kind] -= 1

    @queue.job_type("narrow", concurrency=2)
    async def narrow(ctx: JobContext, params: dict[str, Any]) -> None:
        await body("narrow")

    @queue.job_type("wide")
    async def wide(ctx: JobContext, params: dict[str, Any]) -> None:
        await body("wide")

    async with queue:
        jobs = [await queue.submit(t) for t in ["narrow"] * 8 + ["wide"] * 8]
        for job in jobs:
            await queue.wait(job.id, timeout=10)
    assert peak["narrow"] == 2
    assert peak["wide"] >= 3  # the free slots went to the other type


async def test_sync_handler_runs_in_a_thread_without_blocking_the_loop() -> None:
    queue = Queue(janitor=FAST_JANITOR)
    loop_thread = threading.get_ident()
    handler_threads: list[int] = []

    @queue.job_type("blocking", max_attempts=1)
    def blocking(ctx: ThreadJobContext, params: dict[str, Any]) -> str:
        handler_threads.append(threading.get_ident())
        for i in range(3):
            time.sleep(0.1)  # blocking I/O or CPU
            ctx.progress((i + 1) / 3, f"step {i + 1}")
        return "done"

    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await anyio.sleep(0.01)
            ticks += 1

    async with queue, anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        job = await queue.submit("blocking")
        progress: list[float] = []
        async for event in queue.subscribe(job.id):
            if event.type is EventType.PROGRESS:
                progress.append(event.job.progress)
        tg.cancel_scope.cancel()
    done = await queue_final(queue, job.id)
    assert done == "done"
    assert handler_threads and handler_threads[0] != loop_thread
    assert progress == pytest.approx([1 / 3, 2 / 3, 1.0])
    # The loop kept turning while the handler slept 0.3 s in its thread.
    assert ticks >= 10


async def queue_final(queue: Queue, job_id: str) -> Any:
    job = await queue.store.get(job_id)
    assert job.status is JobStatus.COMPLETED
    return job.result


async def test_sync_handler_learns_of_cancellation_through_its_context() -> None:
    queue = Queue(janitor=FAST_JANITOR)
    started = threading.Event()
    raised: list[type[BaseException]] = []

    @queue.job_type("spin", max_attempts=1)
    def spin(ctx: ThreadJobContext, params: dict[str, Any]) -> None:
        started.set()
        try:
            for _ in range(500):
                time.sleep(0.01)
                ctx.progress(0.5)
        except JobCancelled as exc:
            raised.append(type(exc))
            raise

    async with queue:
        job = await queue.submit("spin")
        await anyio.to_thread.run_sync(started.wait, 5)
        await queue.cancel(job.id)
        done = await queue.wait(job.id, timeout=5)
        assert done.status is JobStatus.CANCELLED
        with anyio.fail_after(5):
            while not raised:
                await anyio.sleep(0.01)
    assert raised == [JobCancelled]


async def test_leases_are_renewed_while_a_long_job_runs() -> None:
    worker = WorkerConfig(lease=0.3, heartbeat=0.05)
    queue = Queue(worker=worker, janitor=FAST_JANITOR)

    @queue.job_type("long", max_attempts=3)
    async def long(ctx: JobContext, params: dict[str, Any]) -> int:
        await anyio.sleep(1.0)  # > 3 leases
        return ctx.attempt

    async with queue:
        done = await queue.wait((await queue.submit("long")).id, timeout=10)
    assert done.status is JobStatus.COMPLETED
    assert done.result == 1
    assert done.attempts == 1


async def test_graceful_shutdown_lets_short_jobs_finish() -> None:
    queue = Queue(worker=WorkerConfig(shutdown_grace=5.0), janitor=FAST_JANITOR)
    started = anyio.Event()

    @queue.job_type("short")
    async def short(ctx: JobContext, params: dict[str, Any]) -> str:
        started.set()
        await anyio.sleep(0.2)
        return "ok"

    async with queue:
        job = await queue.submit("short")
        await started.wait()
    final = await queue.store.get(job.id)
    assert final.status is JobStatus.COMPLETED


async def test_graceful_shutdown_requeues_jobs_that_overrun_the_grace() -> None:
    store = MemoryStore()
    queue = Queue(store, worker=WorkerConfig(shutdown_grace=0.1), janitor=FAST_JANITOR)
    started = anyio.Event()

    @queue.job_type("endless")
    async def endless(ctx: JobContext, params: dict[str, Any]) -> None:
        started.set()
        await anyio.sleep_forever()

    async with queue:
        job = await queue.submit("endless")
        await started.wait()
    final = await store.get(job.id)
    assert final.status is JobStatus.QUEUED
    assert final.attempts == 0  # the interrupted attempt was given back
    assert final.lease is None


async def test_idle_worker_does_not_poll_the_store() -> None:
    store = MemoryStore()
    claims = 0
    real_claim = store.claim

    async def counting_claim(*args: Any, **kwargs: Any) -> Any:
        nonlocal claims
        claims += 1
        return await real_claim(*args, **kwargs)

    store.claim = counting_claim  # type: ignore[method-assign]
    queue = Queue(store, worker=WorkerConfig(idle_wait=30), janitor=FAST_JANITOR)

    @queue.job_type("noop")
    async def noop(ctx: JobContext, params: dict[str, Any]) -> None:
        return None

    async with queue:
        await anyio.sleep(0.5)
        idle_claims = claims
        job = await queue.submit("noop")
        done = await queue.wait(job.id, timeout=5)
    assert idle_claims <= 1
    assert done.status is JobStatus.COMPLETED


async def test_delayed_job_waits_then_runs() -> None:
    queue = Queue(janitor=FAST_JANITOR)
    started_at: list[float] = []

    @queue.job_type("later")
    async def later(ctx: JobContext, params: dict[str, Any]) -> None:
        started_at.append(anyio.current_time())

    async with queue:
        t0 = anyio.current_time()
        job = await queue.submit("later", delay=0.3)
        assert job.status is JobStatus.SCHEDULED
        done = await queue.wait(job.id, timeout=5)
    assert done.status is JobStatus.COMPLETED
    assert started_at[0] - t0 >= 0.29


async def test_queue_closed_from_outside_requeues_running_jobs() -> None:
    store = MemoryStore()
    queue = Queue(store, worker=WorkerConfig(shutdown_grace=30), janitor=FAST_JANITOR)
    started = anyio.Event()

    @queue.job_type("endless")
    async def endless(ctx: JobContext, params: dict[str, Any]) -> None:
        started.set()
        await anyio.sleep_forever()

    with anyio.move_on_after(5) as outer:
        async with queue:
            job = await queue.submit("endless")
            await started.wait()
            outer.cancel()  # the host itself is being cancelled
            await anyio.sleep_forever()
    final = await store.get(job.id)
    assert final.status is JobStatus.QUEUED


async def test_a_timeout_is_final_even_with_attempts_left() -> None:
    queue = Queue(janitor=FAST_JANITOR)
    calls = 0

    @queue.job_type("overrun", timeout=0.1, max_attempts=3, backoff=FAST_RETRY)
    async def overrun(ctx: JobContext, params: dict[str, Any]) -> None:
        nonlocal calls
        calls += 1
        await anyio.sleep(10)

    async with queue:
        done = await queue.wait((await queue.submit("overrun")).id, timeout=10)
    assert done.status is JobStatus.FAILED
    assert done.attempts == 1
    assert calls == 1
