"""Where handlers run: threads are never abandoned (slot and lease held until the thread
returns), and process handlers run in a child process that a cancel or a timeout ends."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

import process_handlers
from asyncjobs import (
    ConfigurationError,
    EventType,
    Executor,
    JanitorConfig,
    JobContext,
    JobStatus,
    MemoryStore,
    Queue,
    ThreadJobContext,
    WorkerConfig,
)

FAST_JANITOR = JanitorConfig(interval=0.05)


async def wait_until(condition: Any, timeout: float = 20.0) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.02)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Overlap:
    """Records how many bodies run at once (from any thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = 0
        self.peak = 0
        self.intervals: list[tuple[float, float]] = []

    def __enter__(self) -> float:
        with self._lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        return time.monotonic()

    def done(self, started: float) -> None:
        with self._lock:
            self.now -= 1
            self.intervals.append((started, time.monotonic()))

    def __exit__(self, *exc: object) -> None:
        pass


# -- threads -------------------------------------------------------------------------


async def test_concurrency_one_never_runs_two_sync_bodies_even_after_timeouts() -> None:
    queue = Queue(concurrency=1, janitor=FAST_JANITOR)
    overlap = Overlap()

    @queue.job_type("stubborn", timeout=0.1, max_attempts=1)
    def stubborn(ctx: ThreadJobContext, params: dict[str, Any]) -> str:
        with overlap as started:
            time.sleep(0.4)  # never looks at its context
            overlap.done(started)
        return "late"

    async with queue:
        jobs = [await queue.submit("stubborn") for _ in range(3)]
        done = [await queue.wait(job.id, timeout=20) for job in jobs]
    assert overlap.peak == 1
    assert [j.status for j in done] == [JobStatus.FAILED] * 3
    assert {j.error.type for j in done if j.error} == {"JobTimeout"}


async def test_a_timed_out_thread_learns_it_through_its_context() -> None:
    queue = Queue(concurrency=1, janitor=FAST_JANITOR)
    told: list[bool] = []

    @queue.job_type("polite", timeout=0.2, max_attempts=1)
    def polite(ctx: ThreadJobContext, params: dict[str, Any]) -> None:
        while not ctx.cancelled:
            time.sleep(0.01)
        told.append(True)

    async with queue:
        done = await queue.wait((await queue.submit("polite")).id, timeout=20)
    assert told == [True]
    assert done.error is not None and done.error.type == "JobTimeout"


@pytest.mark.slow
async def test_a_shutdown_keeps_a_sync_job_until_its_thread_returns(tmp_path: Path) -> None:
    """Two queues on one SQLite file: the one shutting down holds the job (and renews its
    lease) until its thread returns; only then can the other run it."""
    db = f"sqlite:///{tmp_path / 'jobs.db'}"
    overlap = Overlap()
    first_started = threading.Event()

    def body(ctx: ThreadJobContext, params: dict[str, Any]) -> str:
        with overlap as started:
            first_started.set()
            time.sleep(1.5)  # ignores the shutdown: a thread cannot be interrupted
            overlap.done(started)
        return "done"

    fast = WorkerConfig(concurrency=1, lease=0.6, heartbeat=0.1, idle_wait=0.1, shutdown_grace=0.1)
    a = Queue(db, worker=fast, janitor=FAST_JANITOR)
    b = Queue(db, worker=fast, janitor=FAST_JANITOR)
    for queue in (a, b):
        queue.job_type("body", max_attempts=3)(body)

    async with a:
        job = await a.submit("body")
        await anyio.to_thread.run_sync(first_started.wait, 20)  # a holds it (b is closed)
        async with b:
            await a.aclose()  # requeues the job only once the thread has returned
            done = await b.wait(job.id, timeout=30)
    assert done.status is JobStatus.COMPLETED
    assert overlap.peak == 1
    (_, first_end), (second_start, _) = sorted(overlap.intervals)
    assert second_start >= first_end


# -- processes -----------------------------------------------------------------------


def process_queue(**options: Any) -> Queue:
    queue = Queue(janitor=FAST_JANITOR, **options)
    # The timeout counts the child's start too: generous, for a loaded machine.
    queue.job_type("spin", executor="process", timeout=4.0, max_attempts=1)(process_handlers.spin)
    queue.job_type("spin_forever", executor="process", max_attempts=1)(process_handlers.spin)
    queue.job_type("steps", executor="process")(process_handlers.steps)
    queue.job_type("explode", executor=Executor.PROCESS, max_attempts=1)(process_handlers.explode)
    queue.job_type("async_steps", executor="process")(process_handlers.async_steps)
    return queue


@pytest.mark.slow
async def test_a_process_job_times_out_and_its_child_is_gone(tmp_path: Path) -> None:
    queue = process_queue()
    pid_file = tmp_path / "pid"
    async with queue:
        job = await queue.submit("spin", {"pid_file": str(pid_file)})
        done = await queue.wait(job.id, timeout=30)
    assert done.status is JobStatus.FAILED
    assert done.error is not None and done.error.type == "JobTimeout"
    assert pid_file.exists(), "the child did not start within the timeout"
    pid = int(pid_file.read_text())
    assert pid != os.getpid()
    assert not alive(pid)


@pytest.mark.slow
async def test_a_running_process_job_is_cancelled_and_its_child_ends(tmp_path: Path) -> None:
    queue = process_queue()
    pid_file = tmp_path / "pid"
    async with queue:
        job = await queue.submit("spin_forever", {"pid_file": str(pid_file)})
        await wait_until(lambda: pid_file.exists() and pid_file.read_text())
        pid = int(pid_file.read_text())
        assert alive(pid)
        await queue.cancel(job.id)
        done = await queue.wait(job.id, timeout=20)
        assert done.status is JobStatus.CANCELLED
        await wait_until(lambda: not alive(pid))


@pytest.mark.slow
async def test_a_shutdown_terminates_a_process_job_then_requeues_it(tmp_path: Path) -> None:
    store = MemoryStore()
    queue = process_queue(store=store, worker=WorkerConfig(shutdown_grace=0.1))
    pid_file = tmp_path / "pid"
    async with queue:
        job = await queue.submit("spin_forever", {"pid_file": str(pid_file)})
        await wait_until(lambda: pid_file.exists() and pid_file.read_text())
        pid = int(pid_file.read_text())
    assert not alive(pid)  # gone before the job was given back
    after = await store.get(job.id)
    assert after.status is JobStatus.QUEUED and after.attempts == 0


@pytest.mark.slow
async def test_progress_and_result_of_a_process_job_reach_subscribers() -> None:
    queue = process_queue()
    async with queue:
        job = await queue.submit("steps", {"n": 3})
        progress: list[tuple[float, str | None]] = []
        async for event in queue.subscribe(job.id):
            if event.type is EventType.PROGRESS:
                progress.append((event.job.progress, event.job.message))
        done = await queue.get(job.id)
    assert progress == [
        (pytest.approx(1 / 3), "step 1"),
        (pytest.approx(2 / 3), "step 2"),
        (1.0, "step 3"),
    ]
    assert done.status is JobStatus.COMPLETED
    assert done.result["n"] == 3 and done.result["job"] == job.id
    assert done.result["pid"] != os.getpid()


@pytest.mark.slow
async def test_a_process_handler_error_and_an_async_process_handler() -> None:
    queue = process_queue()
    async with queue:
        failed = await queue.wait((await queue.submit("explode", {"key": "k"})).id, timeout=30)
        async_done = await queue.wait((await queue.submit("async_steps", {"n": 2})).id, timeout=30)
    assert failed.status is JobStatus.FAILED
    assert failed.error is not None and failed.error.type == "KeyError"
    assert "process_handlers.py" in (failed.error.traceback or "")
    assert async_done.status is JobStatus.COMPLETED
    assert async_done.result != os.getpid()


def test_the_executor_must_fit_the_handler() -> None:
    queue = Queue()

    async def coro(ctx: JobContext, params: dict[str, Any]) -> None: ...

    def plain(ctx: ThreadJobContext, params: dict[str, Any]) -> None: ...

    assert queue.registry.register("a", coro).executor is Executor.LOOP
    assert queue.registry.register("b", plain).executor is Executor.THREAD
    with pytest.raises(ConfigurationError, match="not an async def"):
        queue.registry.register("c", plain, executor="loop")
    with pytest.raises(ConfigurationError, match="cannot run in a thread"):
        queue.registry.register("d", coro, executor="thread")
    with pytest.raises(ConfigurationError, match="top level of a module"):
        queue.registry.register("e", plain, executor="process")
    with pytest.raises(ConfigurationError, match="'loop', 'thread' or 'process'"):
        queue.registry.register("f", plain, executor="fork")


@pytest.mark.slow
async def test_the_demo_prime_runs_in_a_child_process_while_the_loop_turns() -> None:
    from asyncjobs.demo import build_demo_queue

    queue = build_demo_queue()
    assert queue.registry.get("prime").executor is Executor.PROCESS
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await anyio.sleep(0.01)
            ticks += 1

    async with queue, anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        job = await queue.submit("prime", {"limit": 2_000_000})
        progress = 0
        async for event in queue.subscribe(job.id):
            progress += event.type is EventType.PROGRESS
        tg.cancel_scope.cancel()
        done = await queue.get(job.id)
    assert done.status is JobStatus.COMPLETED, done.error
    assert progress >= 1
    assert ticks >= 10
