"""Web and worker processes on one store behave live, on SQLite exactly as on PostgreSQL.

An ``asyncjobs serve`` process with concurrency 0 (the web process) and two ``asyncjobs
worker`` processes share one store; the test drives the web process over HTTP, SSE and
WebSocket, runs ``asyncjobs watch`` against it, and observes with a ``Queue`` of its own
(a fourth process on the store). Nothing here polls the jobs table: every live view
rides on the store's notifier (SQLite: the events table each process tails).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import websockets
from httpx_sse import aconnect_sse

from asyncjobs import JanitorConfig, Queue
from cli_server import cli_server, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

TESTS = Path(__file__).parent
#: Leases (and so heartbeats, every lease/3) far longer than any bound below: a cancel
#: or an end must arrive by the notifier, not by a heartbeat or a poll.
LEASE = 30.0


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'jobs.db'}"
        return
    import asyncpg

    postgres_url: str = request.getfixturevalue("postgres_url")
    schema = f"aj_live_{uuid.uuid4().hex[:16]}"
    yield f"{postgres_url}?schema={schema}"
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def _env(url: str, concurrency: int) -> dict[str, str]:
    return {
        "ASYNCJOBS_MP_URL": url,
        "ASYNCJOBS_MP_LEASE": str(LEASE),
        "ASYNCJOBS_MP_CONCURRENCY": str(concurrency),
        "PYTHONPATH": str(TESTS) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }


@contextmanager
def cluster(url: str, tmp_path: Path, *, web: int = 1) -> Iterator[list[str]]:
    """``web`` serve processes (concurrency 0) and two worker processes on ``url``."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(2):
            log = (tmp_path / f"worker{i}.log").open("wb")
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "asyncjobs", "worker", "pg_worker_app:build"],
                    cwd=TESTS,
                    env={**os.environ, **_env(url, 2)},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
            log.close()
        with contextlib.ExitStack() as stack:
            urls = [
                stack.enter_context(
                    cli_server(
                        ["serve", "pg_worker_app:build"],
                        cwd=TESTS,
                        env=_env(url, 0),
                        log=tmp_path / f"web{i}.log",
                    )
                )
                for i in range(web)
            ]
            yield urls
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def _until(predicate: Any, within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await anyio.sleep(0.1)


async def _sse_types(client: httpx.AsyncClient, path: str, within: float) -> list[dict[str, Any]]:
    """Events of an SSE stream that ends by itself (a one-job stream)."""
    events: list[dict[str, Any]] = []
    with anyio.fail_after(within):
        async with aconnect_sse(client, "GET", path) as source:
            async for sse in source.aiter_sse():
                if sse.data:
                    events.append(json.loads(sse.data))
    return events


async def test_web_and_workers_in_separate_processes_are_live(
    store_url: str, tmp_path: Path
) -> None:
    with cluster(store_url, tmp_path) as (base,):
        async with httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(60.0)) as client:

            async def two_workers() -> list[dict[str, Any]] | None:
                workers = (await client.get("workers")).json()["workers"]
                return workers if len(workers) == 2 else None

            workers = await _until(two_workers, 60, "two registered workers")
            assert {w["slots"] for w in workers} == {2}
            assert all(w["types"] == ["steps"] and w["pid"] > 0 for w in workers)

            ws_url = base.replace("http://", "ws://") + "ws"
            async with websockets.connect(ws_url) as ws:
                state = json.loads(await ws.recv())
                assert state["type"] == "queue_state"
                assert len(state["workers"]) == 2

                # Sync submit: answered when the job ends, not when ?wait= runs out.
                begun = time.monotonic()
                reply = await client.post(
                    "jobs?wait=60", json={"type": "steps", "params": {"steps": 2, "pause": 0.15}}
                )
                assert reply.status_code == 200, reply.text
                synced = reply.json()
                assert synced["status"] == "completed"
                assert time.monotonic() - begun < 30

                # SSE of a job a worker process runs: progress, then the end.
                job = (
                    await client.post(
                        "jobs", json={"type": "steps", "params": {"steps": 4, "pause": 0.2}}
                    )
                ).json()
                events = await _sse_types(client, f"jobs/{job['id']}/events", 30)
                types = [e["type"] for e in events]
                assert "job_progress" in types and types[-1] == "job_completed", types

                # queue.wait() in yet another process on the store.
                observer = Queue(store_url, concurrency=0, janitor=JanitorConfig(enabled=False))
                async with observer:
                    third = (
                        await client.post(
                            "jobs", json={"type": "steps", "params": {"steps": 2, "pause": 0.1}}
                        )
                    ).json()
                    with anyio.fail_after(30):
                        done = await observer.wait(third["id"], timeout=30)
                    assert done.status.value == "completed"

                # The WebSocket saw every end.
                wanted = {synced["id"], job["id"], third["id"]}
                with anyio.fail_after(30):
                    while wanted:
                        message = json.loads(await ws.recv())
                        if message["type"] == "job_completed":
                            wanted.discard(message["job"]["id"])

            # Cancel from the web process reaches the worker process holding the job.
            long = (
                await client.post(
                    "jobs", json={"type": "steps", "params": {"steps": 300, "pause": 0.1}}
                )
            ).json()

            async def running() -> bool:
                got = (await client.get(f"jobs/{long['id']}")).json()
                return bool(got["status"] == "running" and got["progress"] > 0)

            await _until(running, 30, "the long job to run")
            begun = time.monotonic()
            assert (await client.post(f"jobs/{long['id']}/cancel")).status_code == 200
            events = await _sse_types(client, f"jobs/{long['id']}/events", 30)
            # The stream ends with the cancel (or opens on it, if it landed first).
            assert events[-1]["job"]["status"] == "cancelled", [e["type"] for e in events]
            assert events[-1]["type"] in ("job_cancelled", "job_snapshot")
            # The heartbeat comes every LEASE/3 = 10 s; the cancel came by event.
            assert time.monotonic() - begun < LEASE / 3

            # `asyncjobs watch` follows a job run by a worker process to its end.
            job = (
                await client.post(
                    "jobs", json={"type": "steps", "params": {"steps": 3, "pause": 0.2}}
                )
            ).json()
            result = await anyio.to_thread.run_sync(
                lambda: run_cli("watch", job["id"], env={"ASYNCJOBS_URL": base}, timeout=60)
            )
            assert result.returncode == 0, result.stdout + result.stderr
            assert "completed" in (result.stdout + result.stderr)


@contextmanager
def uvicorn_workers(url: str, tmp_path: Path, count: int) -> Iterator[str]:
    """``uvicorn mp_web_app:app --workers count`` on a free port; yields its URL."""
    from cli_server import free_port

    port = free_port()
    log = (tmp_path / "uvicorn.log").open("wb")
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "uvicorn", "mp_web_app:app", "--workers", str(count)),
            *("--port", str(port), "--lifespan", "on", "--timeout-graceful-shutdown", "2"),
        ],
        cwd=TESTS,
        env={**os.environ, **_env(url, 0)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    base = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "uvicorn.log").read_text()
            try:
                if httpx.get(base + "health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def test_every_web_process_streams_every_event(store_url: str, tmp_path: Path) -> None:
    """``uvicorn --workers 2`` in front of the store: each web process's /events stream
    sees the end of every job, whichever process took the submit."""
    with cluster(store_url, tmp_path, web=0), uvicorn_workers(store_url, tmp_path, 2) as base:
        limits = httpx.Limits(max_connections=40, max_keepalive_connections=0)
        async with httpx.AsyncClient(
            base_url=base, timeout=httpx.Timeout(60.0), limits=limits
        ) as client:
            seen: dict[str, set[str]] = {}  # stream key -> ids of completed jobs
            pids: dict[str, str] = {}
            ready = anyio.Event()
            opened = 0

            async def stream(key: str) -> None:
                nonlocal opened
                async with aconnect_sse(client, "GET", "events") as source:
                    pids[key] = source.response.headers["x-served-by"]
                    seen[key] = set()
                    opened += 1
                    if len(set(pids.values())) >= 2:
                        ready.set()
                    async for sse in source.aiter_sse():
                        if sse.data:
                            event = json.loads(sse.data)
                            if event["type"] == "job_completed":
                                seen[key].add(event["job"]["id"])

            async with anyio.create_task_group() as tg:
                # New connections land on either process; open streams until both have.
                with anyio.fail_after(60):
                    for i in range(30):
                        tg.start_soon(stream, f"s{i}")
                        await anyio.sleep(0.1)
                        if ready.is_set():
                            break
                    await ready.wait()
                await anyio.sleep(0.5)  # every open stream is subscribed
                ids = []
                for _ in range(6):
                    reply = await client.post(
                        "jobs", json={"type": "steps", "params": {"steps": 1, "pause": 0.05}}
                    )
                    ids.append(reply.json()["id"])
                with anyio.fail_after(60):
                    while not all(set(ids) <= got for got in seen.values()):
                        await anyio.sleep(0.1)
                tg.cancel_scope.cancel()
            assert len(set(pids.values())) == 2
