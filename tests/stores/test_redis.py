"""The Redis store across real processes and a real server restart.

* two ``asyncjobs worker`` processes share one queue; one is killed with SIGKILL mid-run:
  every job still completes, each finished by the holder of its last lease;
* a private ``redis-server`` (AOF, ``appendfsync always``) restarts under a live queue:
  nothing it acknowledged is lost, and workers and subscribers carry on by themselves;
* a web process (``asyncjobs serve``) and a worker process: the web process's SSE stream
  sees the worker's progress and the completion;
* the stream trimmed past what a store has seen makes it signal resync.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import httpx
import pytest
from httpx_sse import aconnect_sse

from asyncjobs import Job, JobStatus, Queue
from asyncjobs.job import EventType
from asyncjobs.stores import open_store
from asyncjobs.stores.redis import RedisStore

from .conftest import destroy_redis_prefix

pytestmark = [pytest.mark.redis]

TESTS = Path(__file__).parent.parent
sys.path.insert(0, str(TESTS))
from cli_server import cli_server  # noqa: E402
from pg_worker_app import build  # noqa: E402
from servers import own_redis  # noqa: E402
from test_postgres_multiprocess import _pid_of, running_by_pid, until, web  # noqa: E402


@pytest.fixture
async def url(redis_url: str) -> AsyncIterator[str]:
    prefix = f"aj_mp_{uuid.uuid4().hex[:16]}"
    yield f"{redis_url}?prefix={prefix}"
    await destroy_redis_prefix(redis_url, prefix)


@contextmanager
def workers(
    url: str, count: int, tmp_path: Path, lease: float
) -> Iterator[list[subprocess.Popen[bytes]]]:
    env = {**os.environ, "ASYNCJOBS_MP_URL": url, "ASYNCJOBS_MP_LEASE": str(lease)}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(count):
            with (tmp_path / f"worker{i}.log").open("wb") as log:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "asyncjobs", "worker", "redis_apps:build"],
                        cwd=TESTS,
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_open_store_reads_the_prefix() -> None:
    store = open_store("redis://127.0.0.1:6379/2?prefix=billing")
    assert isinstance(store, RedisStore)
    assert store.prefix == "billing"
    assert store.redis_url == "redis://127.0.0.1:6379/2"
    assert isinstance(open_store("rediss://h:6380/0"), RedisStore)


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_a_killed_worker_loses_no_job_and_finishes_none_stale(
    url: str, tmp_path: Path
) -> None:
    lease = 2.0
    async with web(url) as (queue, events):
        with workers(url, 2, tmp_path, lease) as procs:
            pids = {p.pid for p in procs}
            jobs = [await queue.submit("steps", {"steps": 10, "pause": 0.1}) for _ in range(16)]
            await until(lambda: set(running_by_pid(events)) == pids, 60, "both workers busy")
            victim = procs[0]
            killed_jobs = running_by_pid(events)[victim.pid]
            os.kill(victim.pid, signal.SIGKILL)
            with anyio.fail_after(90):
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
    for job in done:  # fencing: finished by the holder of its last lease
        assert job.result["pid"] == last_holder[job.id], job.id
        assert job.result["attempt"] == job.attempts
    assert killed_jobs
    for job in done:
        if job.id in killed_jobs:
            assert job.attempts >= 2
            assert job.result["pid"] != victim.pid


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_a_redis_restart_loses_nothing_and_everyone_carries_on(tmp_path: Path) -> None:
    with own_redis() as server:
        url = server.url + "?prefix=restart"
        queue = build(concurrency=2, url=url)
        async with queue:
            before = [await queue.submit("steps", {"steps": 3, "pause": 0.05}) for _ in range(4)]
            for job in before:
                assert (await queue.wait(job.id, timeout=30)).status is JobStatus.COMPLETED
            waiting = await queue.submit("steps", {"steps": 2, "pause": 0.05}, delay=2.0)
            await anyio.to_thread.run_sync(lambda: server.restart(down_for=1.0))
            # Acknowledged before the restart: still there (AOF), and nothing was redone.
            for job in before:
                got = await queue.get(job.id)
                assert (got.status, got.attempts) == (JobStatus.COMPLETED, 1)
            # The worker, the janitor and the event stream reconnect by themselves.
            after = await queue.submit("steps", {"steps": 3, "pause": 0.05})
            with anyio.fail_after(30):
                done = await queue.wait(after.id)
                promoted = await queue.wait(waiting.id)
            assert done.status is JobStatus.COMPLETED
            assert promoted.status is JobStatus.COMPLETED
            stats = await queue.stats()
            assert stats.counts[JobStatus.COMPLETED] == 6


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sse_in_the_web_process_sees_a_worker_process_progress(url: str, tmp_path: Path) -> None:
    env = {"ASYNCJOBS_MP_URL": url, "ASYNCJOBS_MP_LEASE": "5"}
    with (
        workers(url, 1, tmp_path, 5.0),
        cli_server(
            ["serve", "redis_apps:web"], cwd=TESTS, env=env, log=tmp_path / "web.log"
        ) as base,
    ):

        async def watch() -> list[dict[str, object]]:
            async with httpx.AsyncClient(base_url=base, timeout=30) as client:
                reply = await client.post(
                    "/jobs", json={"type": "steps", "params": {"steps": 4, "pause": 0.1}}
                )
                assert reply.status_code in (201, 202), reply.text
                job_id = reply.json()["id"]
                with anyio.fail_after(60):
                    async with aconnect_sse(client, "GET", f"/jobs/{job_id}/events") as source:
                        return [json.loads(sse.data) async for sse in source.aiter_sse()]

        events = anyio.run(watch)
    types = [e["type"] for e in events]
    assert "job_progress" in types, types
    assert types[-1] == "job_completed", types
    final = events[-1]["job"]
    assert isinstance(final, dict)
    assert final["status"] == "completed"
    assert final["result"]["attempt"] == 1  # type: ignore[index]


async def test_a_trimmed_stream_makes_the_store_resync(redis_url: str) -> None:
    prefix = f"aj_trim_{uuid.uuid4().hex[:12]}"
    reader = RedisStore(redis_url, prefix=prefix, stream_maxlen=10)
    writer = RedisStore(redis_url, prefix=prefix, stream_maxlen=10)
    resyncs: list[int] = []
    try:
        await reader.open()
        await writer.open()
        reader.add_resync_listener(lambda: resyncs.append(1))
        queue = Queue(writer, concurrency=0)
        queue.registry.job_type("t")(_noop)
        # The reader's tail is stopped while far more than maxlen events are written.
        tail = reader._tail
        assert tail is not None
        await tail.stop()
        async with queue:
            for _ in range(300):
                await queue.submit("t", {})
        assert resyncs == []
        await tail.start()
        await queue_event(writer)
        await until(lambda: resyncs, 10, "a resync")
    finally:
        await reader.close()
        await writer.close()
        await destroy_redis_prefix(redis_url, prefix)


async def _noop(ctx: object, params: dict[str, object]) -> None:
    return None


async def queue_event(store: RedisStore) -> Job:
    queue = Queue(store, concurrency=0)
    queue.registry.job_type("t")(_noop)
    async with queue:
        return await queue.submit("t", {})


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_demo_runs_on_redis(url: str) -> None:
    with cli_server(["demo", "--store", url]) as base:
        reply = httpx.post(
            base + "jobs?wait=20", json={"type": "echo", "params": {"message": "hi"}}
        )
        assert reply.status_code in (200, 201, 202), reply.text
        job = reply.json()
        assert job["status"] == "completed", job
        # The job is in Redis under the URL's prefix, not in memory.
        stats = httpx.get(base + "stats").json()
        assert stats["counts"]["completed"] >= 1, stats


async def test_idempotency_keys_are_unique_per_owner(redis_url: str) -> None:
    from datetime import datetime, timezone

    from asyncjobs._ulid import new_ulid

    prefix = f"aj_idem_{uuid.uuid4().hex[:12]}"
    store = RedisStore(redis_url, prefix=prefix)
    now = datetime.now(timezone.utc)

    def job(owner: str) -> Job:
        return Job(
            id=new_ulid(), type="t", params={}, status=JobStatus.QUEUED, created_at=now,
            run_at=now, idempotency_key="same", owner=owner,
        )  # fmt: skip

    try:
        await store.open()
        a, created_a = await store.add(job("ann"))
        b, created_b = await store.add(job("bob"))
        again, created_again = await store.add(job("ann"))
        assert (created_a, created_b, created_again) == (True, True, False)
        assert b.id != a.id
        assert again.id == a.id
    finally:
        await store.close()
        await destroy_redis_prefix(redis_url, prefix)
