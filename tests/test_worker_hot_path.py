"""The worker's hot path: cancel scopes only where needed, claimed jobs handed to one
slot at a time (in priority order, still cancellable while they wait), tracing skipped
when nothing records it."""

from __future__ import annotations

import asyncio
import types
from datetime import datetime, timezone
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from asyncjobs import (
    JanitorConfig,
    JobContext,
    JobStatus,
    MemoryStore,
    Queue,
    WorkerConfig,
    _slots,
    tracing,
    worker,
)
from asyncjobs.stores.protocol import Outcome

QUIET = JanitorConfig(interval=0.05)
_T = datetime(2026, 12, 1, tzinfo=timezone.utc)


class _CountingAnyio(types.ModuleType):
    """anyio as the worker module sees it, counting the cancel scopes it makes."""

    def __init__(self) -> None:
        super().__init__("anyio")
        self.scopes = 0
        self.timers = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(anyio, name)

    def CancelScope(self, *args: Any, **kwargs: Any) -> anyio.CancelScope:
        self.scopes += 1
        return anyio.CancelScope(*args, **kwargs)

    def move_on_after(self, *args: Any, **kwargs: Any) -> anyio.CancelScope:
        self.timers += 1
        return anyio.move_on_after(*args, **kwargs)


async def _run_all(queue: Queue, submissions: list[dict[str, Any]]) -> list[Any]:
    async with queue:
        jobs = await queue.submit_many(submissions)
        return [await queue.wait(job.id, timeout=20) for job in jobs]


@pytest.mark.parametrize("suspend", [False, True])
async def test_jobs_without_a_timeout_enter_no_cancel_scope_of_their_own(
    monkeypatch: pytest.MonkeyPatch, suspend: bool
) -> None:
    counting = _CountingAnyio()
    monkeypatch.setattr(worker, "anyio", counting)
    monkeypatch.setattr(_slots, "anyio", counting)
    queue = Queue(MemoryStore(), concurrency=4, janitor=QUIET)

    @queue.job_type("noop")
    async def noop(ctx: JobContext, params: dict[str, Any]) -> None:
        if suspend:
            await anyio.lowlevel.checkpoint()

    @queue.job_type("timed", timeout=30)
    async def timed(ctx: JobContext, params: dict[str, Any]) -> None:
        if suspend:
            await anyio.lowlevel.checkpoint()

    done = await _run_all(queue, [{"type": "noop"} for _ in range(200)])
    assert all(job.status is JobStatus.COMPLETED for job in done)
    # One scope per slot (renewed only after a halt) and a few for the claim loop's
    # idle waits and the shutdown: none per job.
    assert counting.scopes < 50
    assert counting.timers <= 2  # the drain's grace and the unregister, not one per job

    counting.scopes = counting.timers = 0
    done = await _run_all(queue, [{"type": "timed"} for _ in range(50)])
    assert all(job.status is JobStatus.COMPLETED for job in done)
    assert 50 <= counting.timers <= 52  # the job's timeout is its own scope


class _HandleCounter:
    """Counts event-loop callbacks (task steps among them) while it is installed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        run = asyncio.events.Handle._run

        def counting_run(handle: asyncio.events.Handle) -> None:
            self.count += 1
            run(handle)

        monkeypatch.setattr(asyncio.events.Handle, "_run", counting_run)


async def test_a_claimed_batch_wakes_one_idle_slot_not_all_of_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A slot whose handler never suspends runs job after job; the other idle slots are
    # not all woken per batch to find nothing (10 slots: that was 10 task steps a batch).
    store = MemoryStore()
    async with Queue(store, concurrency=0, janitor=QUIET) as client:
        client.job_type("noop")(_noop)
        await client.submit_many([{"type": "noop"} for _ in range(2000)])
    queue = Queue(store, concurrency=10, janitor=JanitorConfig(enabled=False))
    queue.job_type("noop")(_noop)
    counter = _HandleCounter(monkeypatch)
    async with queue:
        with anyio.fail_after(20):
            while (await store.stats()).counts[JobStatus.COMPLETED] < 2000:
                await anyio.sleep(0.01)
    # Claims come 20 at a time (10 slots + 10 ahead): a few callbacks per batch.
    assert counter.count / 2000 < 0.4


async def _noop(ctx: JobContext, params: dict[str, Any]) -> None:
    return None


@pytest.mark.parametrize("concurrency", [1, 4])
async def test_jobs_start_in_priority_then_fifo_order_across_batches(concurrency: int) -> None:
    store = MemoryStore()
    started: list[str] = []
    submissions = [{"type": "rec", "priority": p % 5} for p in range(120)]
    async with Queue(store, concurrency=0, janitor=QUIET) as client:
        client.job_type("rec")(_noop)
        jobs = await client.submit_many(submissions)
    queue = Queue(store, concurrency=concurrency, janitor=QUIET)

    @queue.job_type("rec")
    async def rec(ctx: JobContext, params: dict[str, Any]) -> None:
        started.append(ctx.job_id)
        await anyio.lowlevel.checkpoint()

    async with queue:
        for job in jobs:
            assert (await queue.wait(job.id, timeout=20)).status is JobStatus.COMPLETED
    want = [j.id for j in sorted(jobs, key=lambda j: (-j.priority, j.id))]
    assert started == want


async def test_a_job_cancelled_while_it_waits_for_its_slot_never_runs() -> None:
    # One slot and room to claim ahead: jobs claimed behind a long one are running (and
    # leased) while they wait in the hand-off; a cancel then reaches them there.
    store = MemoryStore()
    queue = Queue(store, worker=WorkerConfig(concurrency=1, prefetch=3), janitor=QUIET)
    gate = anyio.Event()
    ran: list[str] = []

    @queue.job_type("quick")
    async def quick(ctx: JobContext, params: dict[str, Any]) -> None:
        ran.append(ctx.job_id)

    @queue.job_type("blocker")
    async def blocker(ctx: JobContext, params: dict[str, Any]) -> None:
        await gate.wait()

    async with queue:
        # Quick jobs first (higher priority) make the queue deep and the average short,
        # so the claims behind the blocker go ahead of the free slot.
        jobs = await queue.submit_many(
            [{"type": "quick", "priority": 9} for _ in range(30)]
            + [{"type": "blocker", "priority": 5}]
            + [{"type": "quick", "priority": 0} for _ in range(3)]
        )
        waiting = jobs[-3:]
        with anyio.fail_after(10):
            while (await queue.get(waiting[0].id)).status is not JobStatus.RUNNING:
                await anyio.sleep(0.005)
        assert waiting[0].id not in ran  # claimed, not started: the blocker holds the slot
        await queue.cancel(waiting[0].id)
        gate.set()
        ends = [await queue.wait(job.id, timeout=10) for job in jobs]
    assert ends[-3].status is JobStatus.CANCELLED
    assert waiting[0].id not in ran
    assert all(job.status is JobStatus.COMPLETED for job in ends[:-3] + ends[-2:])


@pytest.fixture
def spans_made(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every span asyncjobs starts, in a process with no OpenTelemetry SDK."""
    pytest.importorskip("opentelemetry")
    from opentelemetry import trace

    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        pytest.skip("an SDK tracer provider is installed in this process")
    made: list[str] = []
    real = tracing._tracer

    def tracer(module: Any) -> Any:
        made.append("span")
        return real(module)

    monkeypatch.setattr(tracing, "_tracer", tracer)
    return made


async def test_no_span_is_made_when_no_sdk_records_it_and_no_trace_is_carried(
    spans_made: list[str],
) -> None:
    from asyncjobs.job import Job

    outcome = Outcome(JobStatus.COMPLETED)

    async def run() -> Outcome:
        return outcome

    job = Job(id="j", type="t", params={}, status=JobStatus.RUNNING, created_at=_T, run_at=_T)
    assert await tracing.attempt_span(job, run) is outcome
    assert spans_made == []
    # A job that carries its submitter's context still gets its span (it passes the
    # context on to what the handler submits, even without an SDK here).
    carried = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    traced = Job(
        id="k",
        type="t",
        params={},
        status=JobStatus.RUNNING,
        created_at=_T,
        run_at=_T,
        trace={"traceparent": carried},
    )
    assert await tracing.attempt_span(traced, run) is outcome
    assert spans_made == ["span"]


def test_a_submit_makes_no_span_without_an_sdk_but_still_carries_the_current_trace(
    spans_made: list[str],
) -> None:
    from opentelemetry import propagate, trace

    with tracing.submit_span("t") as span:
        assert span is None
        assert tracing.inject() is None  # no trace anywhere: nothing to carry
    carried = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    parent = propagate.extract({"traceparent": carried})
    with trace.use_span(trace.get_current_span(parent)), tracing.submit_span("t"):
        assert tracing.inject() == {"traceparent": carried}
    assert spans_made == []
