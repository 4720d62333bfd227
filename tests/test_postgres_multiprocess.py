"""Several ``asyncjobs worker`` processes share one PostgreSQL queue with this process.

This test process plays the web process: a ``Queue(concurrency=0)`` that submits jobs
and streams every event. The workers are real ``asyncjobs worker`` processes (the CLI)
running ``tests/pg_worker_app.py``. One worker is killed with SIGKILL mid-job; another
is frozen with SIGSTOP past its lease and then resumed, so it wakes up as a stale lease
holder. Every job must still complete exactly under its last lease: the ``pid`` in its
result is the process that the last ``job_started`` event named.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import anyio
import asyncpg
import pytest

from asyncjobs import Job, JobEvent, JobStatus, Queue
from asyncjobs.job import EventType

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.timeout(180)]

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
from pg_worker_app import build  # noqa: E402


def _pid_of(job: Job) -> int:
    assert job.lease is not None
    return int(job.lease.worker_id.split(":")[-2])  # "host:pid:suffix"


@pytest.fixture
async def url(postgres_url: str) -> AsyncIterator[str]:
    schema = f"aj_mp_{uuid.uuid4().hex[:16]}"
    yield f"{postgres_url}?schema={schema}"
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@contextmanager
def workers(
    url: str, count: int, tmp_path: Path, *, lease: float
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start ``count`` worker processes; SIGTERM (then SIGKILL) them on the way out."""
    env = {**os.environ, "ASYNCJOBS_MP_URL": url, "ASYNCJOBS_MP_LEASE": str(lease)}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(count):
            log = (tmp_path / f"worker{i}.log").open("wb")
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "asyncjobs", "worker", "pg_worker_app:build"],
                    cwd=TESTS,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
            log.close()
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@asynccontextmanager
async def web(url: str) -> AsyncIterator[tuple[Queue, list[JobEvent]]]:
    """The submitting process's queue, streaming every event into a list."""
    queue = build(concurrency=0, url=url)
    events: list[JobEvent] = []
    async with queue, anyio.create_task_group() as tg:
        ready = anyio.Event()

        async def stream() -> None:
            async with queue.subscribe(snapshot=False) as sub:
                ready.set()
                async for event in sub:
                    events.append(event)

        tg.start_soon(stream)
        await ready.wait()
        yield queue, events
        tg.cancel_scope.cancel()


async def until(condition: Callable[[], object], within: float, what: str) -> None:
    with anyio.fail_after(within):
        while not condition():
            await anyio.sleep(0.05)


def running_by_pid(events: list[JobEvent]) -> dict[int, set[str]]:
    """Jobs each worker process holds now, as the event stream tells it."""
    holder: dict[str, int] = {}
    for event in events:
        if event.type is EventType.STARTED:
            holder[event.job.id] = _pid_of(event.job)
        elif event.job.status is not JobStatus.RUNNING:
            holder.pop(event.job.id, None)
    out: dict[int, set[str]] = {}
    for job_id, pid in holder.items():
        out.setdefault(pid, set()).add(job_id)
    return out


async def test_killed_and_frozen_workers_lose_no_job_and_finish_none_stale(
    url: str, tmp_path: Path
) -> None:
    lease = 2.0
    async with web(url) as (queue, events):
        with workers(url, 3, tmp_path, lease=lease) as procs:
            pids = {p.pid for p in procs}
            jobs = [await queue.submit("steps", {"steps": 20, "pause": 0.1}) for _ in range(30)]
            # Every worker is up and running jobs.
            await until(lambda: set(running_by_pid(events)) == pids, 60, "all workers busy")

            victim = procs[0]
            killed_jobs = running_by_pid(events)[victim.pid]
            os.kill(victim.pid, signal.SIGKILL)

            frozen = procs[1]
            frozen_jobs = running_by_pid(events).get(frozen.pid, set())
            os.kill(frozen.pid, signal.SIGSTOP)
            await anyio.sleep(lease * 2.5)  # its leases expire; others take its jobs
            os.kill(frozen.pid, signal.SIGCONT)

            with anyio.fail_after(120):
                done = [await queue.wait(job.id) for job in jobs]
            await until(
                lambda: sum(e.type is EventType.COMPLETED for e in events) >= len(jobs),
                10,
                "every completion streamed",
            )

    assert [job.status for job in done] == [JobStatus.COMPLETED] * len(jobs)
    last_holder: dict[str, int] = {}
    for event in events:
        if event.type is EventType.STARTED:
            last_holder[event.job.id] = _pid_of(event.job)
    # Fencing: each job was finished by the process holding its last lease.
    for job in done:
        assert job.result["pid"] == last_holder[job.id], job.id
        assert job.result["attempt"] == job.attempts
    # The killed worker's jobs were requeued after the lease and done elsewhere.
    assert killed_jobs
    for job in done:
        if job.id in killed_jobs:
            assert job.attempts >= 2
            assert job.result["pid"] != victim.pid
    # The frozen worker woke up as a stale holder and was fenced off (it says so).
    if frozen_jobs:
        assert any(job.attempts >= 2 for job in done if job.id in frozen_jobs)
        log = (tmp_path / "worker1.log").read_text()
        # Its handler hears LeaseLost from ctx.progress, or its heartbeat hears it first.
        fenced = {
            job_id
            for job_id in frozen_jobs
            if f"fenced off job {job_id}" in log or f"lost the lease on job {job_id}" in log
        }
        assert fenced, log[-2000:]
    # The event stream of this (web) process saw every job end.
    completed = {e.job.id for e in events if e.type is EventType.COMPLETED}
    assert completed == {job.id for job in jobs}


async def test_cancel_from_the_web_process_stops_a_handler_in_a_worker(
    url: str, tmp_path: Path
) -> None:
    # A long lease: heartbeats (lease / 3) are too rare to deliver the cancel in time;
    # only the job_cancel_requested event over NOTIFY can.
    async with web(url) as (queue, events):
        with workers(url, 1, tmp_path, lease=60.0):
            job = await queue.submit("steps", {"steps": 600, "pause": 0.1})
            await until(lambda: running_by_pid(events), 60, "the job started")
            await queue.cancel(job.id)
            with anyio.fail_after(5):
                cancelled = await queue.wait(job.id)
    assert cancelled.status is JobStatus.CANCELLED
    assert [e.type for e in events if e.job.id == job.id][-2:] == [
        EventType.CANCEL_REQUESTED,
        EventType.CANCELLED,
    ]
