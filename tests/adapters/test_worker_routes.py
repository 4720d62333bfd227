"""The remote-worker routes (/worker/*) through a real uvicorn server.

The queue runs no in-process worker (concurrency=0): every job here is run by a remote
worker over HTTP, one of them written with nothing but urllib in a thread.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
from asyncjobs.adapters.asgi import BearerTokens, JobsApp, Principal

from asyncjobs import JanitorConfig, Queue
from asyncjobs.job import JobStatus

from .conftest import Serve
from .support import build_queue, opened


@pytest.fixture
async def remote_queue() -> AsyncIterator[Queue]:
    """No in-process worker; a fast janitor so expired leases are recovered quickly."""
    queue = build_queue(concurrency=0, janitor=JanitorConfig(interval=0.05))
    async with opened(queue) as q:
        yield q


@pytest.fixture
async def api(serve: Serve, remote_queue: Queue) -> AsyncIterator[httpx.AsyncClient]:
    url = await serve(JobsApp(remote_queue))
    async with httpx.AsyncClient(base_url=url, timeout=20) as c:
        yield c


async def claim(api: httpx.AsyncClient, **body: Any) -> list[dict[str, Any]]:
    response = await api.post("/worker/claim", json={"worker": "w1", **body})
    assert response.status_code == 200, response.text
    jobs: list[dict[str, Any]] = response.json()["jobs"]
    return jobs


def urllib_worker(base: str, stop: threading.Event) -> None:
    """A remote worker with only the standard library: claim, progress, complete."""

    def post(path: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(
            base + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)

    while not stop.is_set():
        for claimed in post("/worker/claim", {"worker": "urllib", "wait": 1})["jobs"]:
            job, token = claimed["job"], claimed["token"]
            path = f"/worker/jobs/{job['id']}"
            post(path + "/progress", {"token": token, "progress": 0.5, "message": "half"})
            result = {"echo": job["params"], "attempt": job["attempts"]}
            post(path + "/complete", {"token": token, "result": result})


async def test_a_urllib_worker_answers_a_held_synchronous_submit(
    api: httpx.AsyncClient, serve: Serve, remote_queue: Queue
) -> None:
    stop = threading.Event()
    thread = threading.Thread(target=urllib_worker, args=(str(api.base_url), stop), daemon=True)
    thread.start()
    try:
        response = await api.post("/jobs?wait=20", json={"type": "echo", "params": {"n": 7}})
        assert response.status_code == 200, response.text
        job = response.json()
        assert job["status"] == "completed"
        assert job["result"] == {"echo": {"n": 7}, "attempt": 1}
        assert job["progress"] == 1.0
    finally:
        stop.set()
        await anyio.to_thread.run_sync(thread.join, 10)
    assert not thread.is_alive()


async def test_claim_long_polls_until_a_job_arrives(
    api: httpx.AsyncClient, remote_queue: Queue
) -> None:
    got: list[dict[str, Any]] = []

    async def poll() -> None:
        got.extend(await claim(api, wait=20, lease=5))

    async with anyio.create_task_group() as tg:
        tg.start_soon(poll)
        await anyio.sleep(0.3)
        assert not got  # still held: nothing was queued
        job = await remote_queue.submit("echo", {"a": 1})
    assert [c["job"]["id"] for c in got] == [job.id]
    assert got[0]["job"]["status"] == "running"
    assert got[0]["token"] and got[0]["lease_expires_at"]


async def test_an_empty_claim_returns_after_wait(api: httpx.AsyncClient) -> None:
    with anyio.fail_after(10):
        assert await claim(api, wait=0.2) == []
    assert await claim(api) == []


async def test_claim_honours_limit_and_types(api: httpx.AsyncClient, remote_queue: Queue) -> None:
    for _ in range(3):
        await remote_queue.submit("echo", {})
    sleeper = await remote_queue.submit("sleep", {})
    got = await claim(api, types=["sleep"], limit=5)
    assert [c["job"]["id"] for c in got] == [sleeper.id]
    got = await claim(api, limit=2)
    assert len(got) == 2 and {c["job"]["type"] for c in got} == {"echo"}


async def test_fencing_a_stale_token_gets_409_and_changes_nothing(
    api: httpx.AsyncClient, remote_queue: Queue
) -> None:
    job = await remote_queue.submit("echo", {}, max_attempts=3)
    (first,) = await claim(api, lease=0.3)
    # The first worker goes quiet; the janitor requeues the job after its lease.
    with anyio.fail_after(10):
        while (await remote_queue.get(job.id)).status is not JobStatus.QUEUED:
            await anyio.sleep(0.02)
    (second,) = await claim(api, lease=30)
    assert second["token"] != first["token"]
    assert second["job"]["attempts"] == 2
    before = await remote_queue.get(job.id)
    path = f"/worker/jobs/{job.id}"
    for verb, body in [
        ("heartbeat", {}),
        ("progress", {"progress": 0.5}),
        ("complete", {"result": "stale"}),
        ("fail", {"error": {"type": "E", "message": "stale"}}),
        ("release", {}),
    ]:
        for token in (first["token"], "forged-token"):
            response = await api.post(f"{path}/{verb}", json={"token": token, **body})
            assert response.status_code == 409, (verb, response.text)
            assert response.json()["error"]["code"] == "lease_lost"
    assert await remote_queue.get(job.id) == before
    response = await api.post(f"{path}/complete", json={"token": second["token"], "result": 1})
    assert response.status_code == 200
    assert response.json()["job"]["status"] == "completed"
    assert response.json()["job"]["result"] == 1


async def test_heartbeat_extends_the_lease(api: httpx.AsyncClient, remote_queue: Queue) -> None:
    job = await remote_queue.submit("echo", {})
    (claimed,) = await claim(api, lease=0.5)
    path = f"/worker/jobs/{job.id}/heartbeat"
    for _ in range(6):  # 1.2 s in all, well past the first lease
        response = await api.post(path, json={"token": claimed["token"], "lease": 0.5})
        assert response.status_code == 200
        assert response.json()["cancel_requested"] is False
        await anyio.sleep(0.2)
    assert (await remote_queue.get(job.id)).status is JobStatus.RUNNING
    assert response.json()["lease_expires_at"] > claimed["lease_expires_at"]


async def test_cancel_is_pushed_through_heartbeat_and_progress(
    api: httpx.AsyncClient, remote_queue: Queue
) -> None:
    job = await remote_queue.submit("echo", {}, max_attempts=3)
    (claimed,) = await claim(api)
    token = claimed["token"]
    path = f"/worker/jobs/{job.id}"
    beat = await api.post(f"{path}/heartbeat", json={"token": token})
    assert beat.json()["cancel_requested"] is False
    await remote_queue.cancel(job.id)
    beat = await api.post(f"{path}/heartbeat", json={"token": token})
    assert beat.json()["cancel_requested"] is True
    progress = await api.post(f"{path}/progress", json={"token": token, "progress": 0.2})
    assert progress.json()["cancel_requested"] is True
    # The worker stops and says so with fail: the job ends cancelled, not retried.
    failed = await api.post(
        f"{path}/fail", json={"token": token, "error": {"type": "Cancelled", "message": "stop"}}
    )
    assert failed.status_code == 200
    assert failed.json()["job"]["status"] == "cancelled"


async def test_a_cancelled_job_whose_worker_goes_quiet_ends_cancelled(
    api: httpx.AsyncClient, remote_queue: Queue
) -> None:
    job = await remote_queue.submit("echo", {}, max_attempts=5)
    await claim(api, lease=0.3)
    await remote_queue.cancel(job.id)
    done = await remote_queue.wait(job.id, timeout=10)
    assert done.status is JobStatus.CANCELLED
    assert done.attempts == 1
    assert await claim(api) == []  # never retried


async def test_fail_retries_while_attempts_are_left(
    api: httpx.AsyncClient, remote_queue: Queue
) -> None:
    job = await remote_queue.submit("echo", {}, max_attempts=2)
    (claimed,) = await claim(api)
    error = {"type": "ValueError", "message": "bad", "traceback": "Traceback..."}
    response = await api.post(
        f"/worker/jobs/{job.id}/fail", json={"token": claimed["token"], "error": error}
    )
    assert response.json()["job"]["status"] == "scheduled"
    assert response.json()["job"]["error"] == error
    (again,) = await claim(api, wait=15)
    response = await api.post(
        f"/worker/jobs/{job.id}/fail",
        json={"token": again["token"], "error": {"type": "ValueError", "message": "again"}},
    )
    assert response.json()["job"]["status"] == "failed"
    assert response.json()["job"]["attempts"] == 2


async def test_release_gives_the_job_back_without_counting_the_attempt(
    api: httpx.AsyncClient, remote_queue: Queue
) -> None:
    job = await remote_queue.submit("echo", {}, max_attempts=1)
    (claimed,) = await claim(api)
    response = await api.post(f"/worker/jobs/{job.id}/release", json={"token": claimed["token"]})
    assert response.json()["job"]["status"] == "queued"
    (again,) = await claim(api)
    assert again["job"]["attempts"] == 1


@pytest.mark.parametrize(
    ("path", "body", "loc"),
    [
        ("/worker/claim", {}, ["worker"]),
        ("/worker/claim", {"worker": "w", "limit": 0}, ["limit"]),
        ("/worker/claim", {"worker": "w", "limit": 1.5}, ["limit"]),
        ("/worker/claim", {"worker": "w", "wait": -1}, ["wait"]),
        ("/worker/claim", {"worker": "w", "lease": 0}, ["lease"]),
        ("/worker/claim", {"worker": "w", "types": "echo"}, ["types"]),
        ("/worker/claim", {"worker": "w", "bogus": 1}, ["bogus"]),
        ("/worker/jobs/X/heartbeat", {}, ["token"]),
        ("/worker/jobs/X/progress", {"token": "t"}, ["progress"]),
        ("/worker/jobs/X/progress", {"token": "t", "progress": 1.5}, ["progress"]),
        ("/worker/jobs/X/complete", {"token": "t", "extra": 1}, ["extra"]),
        ("/worker/jobs/X/fail", {"token": "t"}, ["error"]),
        ("/worker/jobs/X/fail", {"token": "t", "error": {"message": "m"}}, ["error", "type"]),
        (
            "/worker/jobs/X/fail",
            {"token": "t", "error": {"type": "E", "message": "", "x": 1}},
            ["error", "x"],
        ),
        (
            "/worker/jobs/X/fail",
            {"token": "t", "error": {"type": "E", "message": ""}, "retry": "no"},
            ["retry"],
        ),
    ],
)
async def test_bad_bodies_get_422_field_errors(
    api: httpx.AsyncClient, path: str, body: dict[str, Any], loc: list[str]
) -> None:
    response = await api.post(path, json=body)
    assert response.status_code == 422, response.text
    assert loc in [e["loc"] for e in response.json()["error"]["details"]]


async def test_unknown_type_unknown_job_and_malformed_json(api: httpx.AsyncClient) -> None:
    response = await api.post("/worker/claim", json={"worker": "w", "types": ["nope"]})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "unknown_job_type"
    response = await api.post(
        "/worker/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV/heartbeat", json={"token": "t"}
    )
    assert response.status_code == 404
    response = await api.post(
        "/worker/claim", content=b"{", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400


async def test_worker_routes_need_the_worker_scope(serve: Serve, remote_queue: Queue) -> None:
    auth = BearerTokens(
        {
            "worker-token": Principal("w", frozenset({"worker"})),
            "reader-token": Principal("r", frozenset({"read", "submit"})),
        }
    )
    url = await serve(JobsApp(remote_queue, auth=auth))
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        body = {"worker": "w"}
        assert (await c.post("/worker/claim", json=body)).status_code == 401
        headers = {"Authorization": "Bearer reader-token"}
        response = await c.post("/worker/claim", json=body, headers=headers)
        assert response.status_code == 403
        headers = {"Authorization": "Bearer worker-token"}
        response = await c.post("/worker/claim", json=body, headers=headers)
        assert response.status_code == 200


async def test_a_worker_that_hangs_up_during_the_long_poll_claims_nothing(
    api: httpx.AsyncClient, remote_queue: Queue
) -> None:
    async with httpx.AsyncClient(base_url=str(api.base_url), timeout=0.3) as impatient:
        with pytest.raises(httpx.ReadTimeout):
            await impatient.post("/worker/claim", json={"worker": "gone", "wait": 30})
    await anyio.sleep(0.3)  # let the server notice the disconnect
    job = await remote_queue.submit("echo", {})
    await anyio.sleep(0.5)
    # Without the disconnect watch the held claim would take it and sit on it until
    # its lease ran out.
    assert (await remote_queue.get(job.id)).status is JobStatus.QUEUED
    (claimed,) = await claim(api)
    assert claimed["job"]["id"] == job.id
