"""RemoteWorker against a real uvicorn server: in-process, and as ``asyncjobs worker
--url`` subprocesses (progress over SSE, kill -9 mid-job)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import uvicorn
from asyncjobs.adapters.asgi import BearerTokens, JobsApp, Principal

from asyncjobs import Queue
from asyncjobs.errors import ConfigurationError
from asyncjobs.job import JobStatus
from asyncjobs.remote import RemoteWorker, RemoteWorkerConfig

from . import remote_app
from .conftest import Serve
from .support import opened

HERE = Path(__file__).parent
TOKEN = "worker-token-123"


@pytest.fixture
async def server_queue() -> AsyncIterator[Queue]:
    async with opened(remote_app.build(concurrency=0)) as q:
        yield q


@pytest.fixture
async def url(serve: Serve, server_queue: Queue) -> str:
    auth = BearerTokens(
        {
            TOKEN: Principal("worker", frozenset({"worker"})),
            "reader-token": Principal("r", frozenset({"read", "submit", "cancel"})),
        }
    )
    return await serve(JobsApp(server_queue, auth=auth, heartbeat=0.2))


def remote(url: str, **config: Any) -> RemoteWorker:
    return RemoteWorker(
        url,
        remote_app.build().registry,
        token=TOKEN,
        config=RemoteWorkerConfig(**{"lease": 2.0, "poll": 1.0, **config}),
    )


async def test_runs_jobs_with_progress_attempt_and_failures(url: str, server_queue: Queue) -> None:
    worker = remote(url)
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        job = await server_queue.submit("steps", {"n": 3})
        bad = await server_queue.submit("boom", {})
        done = await server_queue.wait(job.id, timeout=20)
        failed = await server_queue.wait(bad.id, timeout=20)
        worker.stop()
    assert done.status is JobStatus.COMPLETED
    assert done.result == {"pid": os.getpid(), "attempt": 1}
    assert failed.status is JobStatus.FAILED
    assert failed.error is not None and failed.error.type == "ValueError"
    assert "boom" in (failed.error.traceback or "")


async def test_renews_the_lease_of_a_job_that_outlives_it(url: str, server_queue: Queue) -> None:
    worker = remote(url, lease=0.6)  # the job runs 1.5 s: 2.5 leases
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        job = await server_queue.submit("steps", {"n": 1, "pause": 1.5})
        done = await server_queue.wait(job.id, timeout=20)
        worker.stop()
    assert done.status is JobStatus.COMPLETED
    assert done.attempts == 1  # never requeued by the janitor


async def test_cancel_reaches_the_handler_through_the_heartbeat(
    url: str, server_queue: Queue
) -> None:
    worker = remote(url, lease=0.6)  # heartbeat every 0.2 s
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        job = await server_queue.submit("steps", {"n": 1, "pause": 60})
        with anyio.fail_after(20):
            while (await server_queue.get(job.id)).status is not JobStatus.RUNNING:
                await anyio.sleep(0.02)
        await server_queue.cancel(job.id)
        done = await server_queue.wait(job.id, timeout=20)
        worker.stop()
    assert done.status is JobStatus.CANCELLED
    assert done.attempts == 1


async def test_shutdown_gives_running_jobs_back(url: str, server_queue: Queue) -> None:
    worker = remote(url, shutdown_grace=0.2)
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        job = await server_queue.submit("steps", {"n": 1, "pause": 60})
        with anyio.fail_after(20):
            while (await server_queue.get(job.id)).status is not JobStatus.RUNNING:
                await anyio.sleep(0.02)
        worker.stop()
    back = await server_queue.get(job.id)
    assert back.status is JobStatus.QUEUED
    assert back.attempts == 0  # the interrupted attempt is not counted


async def test_a_wrong_token_stops_the_worker_with_a_clear_error(url: str) -> None:
    worker = RemoteWorker(url, remote_app.build().registry, token="reader-token")
    with anyio.fail_after(20), pytest.raises(ConfigurationError, match="403"):
        await worker.run()


async def test_reconnects_after_the_server_restarts(server_queue: Queue) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()

    async def serve_until(stop: anyio.Event) -> None:
        config = uvicorn.Config(
            JobsApp(server_queue), host="127.0.0.1", port=port, lifespan="off", log_level="error"
        )
        server = uvicorn.Server(config)
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve)
            await stop.wait()
            server.should_exit = True

    worker = remote(f"http://127.0.0.1:{port}/", max_backoff=0.2)
    async with anyio.create_task_group() as tg:
        first = anyio.Event()
        tg.start_soon(serve_until, first)
        tg.start_soon(worker.run)
        job = await server_queue.submit("steps", {"n": 1})
        assert (await server_queue.wait(job.id, timeout=20)).status is JobStatus.COMPLETED
        first.set()
        await anyio.sleep(1.0)  # the worker sees connection errors and backs off
        job = await server_queue.submit("steps", {"n": 1})
        second = anyio.Event()
        tg.start_soon(serve_until, second)
        assert (await server_queue.wait(job.id, timeout=30)).status is JobStatus.COMPLETED
        worker.stop()
        second.set()


# -- subprocesses ----------------------------------------------------------------------


@contextmanager
def worker_process(url: str, *extra: str) -> Iterator[subprocess.Popen[bytes]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCJOBS_")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "asyncjobs",
            "worker",
            "remote_app:queue",
            "--url",
            url,
            "--token",
            TOKEN,
            "--lease",
            "1",
            *extra,
        ],
        cwd=HERE,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.mark.slow
async def test_a_worker_process_reports_progress_seen_over_sse(url: str) -> None:
    headers = {"Authorization": "Bearer reader-token"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
        response = await client.post(
            "/jobs", json={"type": "steps", "params": {"n": 4, "pause": 0.1}}
        )
        job_id = response.json()["id"]
        with worker_process(url):
            events: list[dict[str, Any]] = []
            with anyio.fail_after(40):
                async with client.stream("GET", f"/jobs/{job_id}/events") as stream:
                    async for line in stream.aiter_lines():
                        if line.startswith("data:"):
                            events.append(json.loads(line[5:]))
    progress = [e["job"]["progress"] for e in events if e["type"] == "job_progress"]
    messages = [e["job"]["message"] for e in events if e["type"] == "job_progress"]
    assert progress == sorted(progress) and len(progress) >= 3
    assert "step 4 of 4" in messages
    assert events[-1]["type"] == "job_completed"
    assert events[-1]["job"]["result"]["attempt"] == 1


@pytest.mark.slow
async def test_kill_9_mid_job_requeues_it_for_another_worker(
    url: str, server_queue: Queue, tmp_path: Path
) -> None:
    mark = tmp_path / "started"
    params = {"n": 1, "first_pause": 60, "pause": 0.05, "mark": str(mark)}
    job = await server_queue.submit("steps", params)

    async def started_by() -> tuple[int, int]:
        with anyio.fail_after(40):
            while not mark.exists() or not mark.read_text():
                await anyio.sleep(0.05)
        pid, attempt = map(int, mark.read_text().split())
        return pid, attempt

    with worker_process(url) as first:
        assert await started_by() == (first.pid, 1)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
    mark.unlink()
    # Its lease (1 s) runs out, the janitor requeues the job, and another worker runs it.
    with worker_process(url) as second:
        assert await started_by() == (second.pid, 2)
        done = await server_queue.wait(job.id, timeout=30)
    assert done.status is JobStatus.COMPLETED
    assert done.result == {"pid": second.pid, "attempt": 2}


@pytest.mark.slow
async def test_the_worker_command_exits_4_on_a_refused_token(url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCJOBS_")}
    argv = [sys.executable, "-m", "asyncjobs", "worker", "remote_app:queue", "--url", url]
    with anyio.fail_after(40):
        done = await anyio.run_process(
            [*argv, "--token", "not-a-known-token"], cwd=HERE, env=env, check=False
        )
    assert done.returncode == 4
    assert b"401" in done.stderr
