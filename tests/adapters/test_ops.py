"""Retry in place and batch submit over real HTTP (uvicorn on a free port, httpx)."""

from __future__ import annotations

from typing import Any

import httpx
from asyncjobs.adapters.asgi import BearerTokens, JobsApp, Principal

from asyncjobs import Queue
from asyncjobs.job import JobStatus

from .conftest import Serve


async def _failed(client: httpx.AsyncClient, queue: Queue, type_: str = "fail") -> dict[str, Any]:
    response = await client.post("/jobs", json={"type": type_, "params": {}})
    assert response.status_code == 202
    job = await queue.wait(response.json()["id"], timeout=10)
    assert job.status is JobStatus.FAILED
    body: dict[str, Any] = (await client.get(f"/jobs/{job.id}")).json()
    return body


async def test_retry_one_job_in_place(client: httpx.AsyncClient, queue: Queue) -> None:
    failed = await _failed(client, queue)
    assert failed["history"] == []
    response = await client.post(f"/jobs/{failed['id']}/retry")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == failed["id"]
    assert body["status"] == "queued"
    assert body["attempts"] == 0
    assert body["version"] == failed["version"] + 1
    (run,) = body["history"]
    assert run["status"] == "failed"
    assert run["attempts"] == 1
    assert run["error"]["message"] == "this job always fails"
    # It runs (and fails) again under the same id; the history keeps both runs.
    again = await queue.wait(failed["id"], timeout=10)
    assert again.status is JobStatus.FAILED
    assert again.attempts == 1
    await client.post(f"/jobs/{failed['id']}/retry")
    third = await queue.wait(failed["id"], timeout=10)
    assert len(third.history) == 2
    assert (await client.get("/stats")).json()["counts"]["failed"] == 1


async def test_retry_refuses_live_completed_and_unknown_jobs(
    client: httpx.AsyncClient, queue: Queue
) -> None:
    done = (await client.post("/jobs?wait=10", json={"type": "echo", "params": {}})).json()
    assert done["status"] == "completed"
    response = await client.post(f"/jobs/{done['id']}/retry")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "illegal_transition"
    live = (await client.post("/jobs", json={"type": "block"})).json()
    assert (await client.post(f"/jobs/{live['id']}/retry")).status_code == 409
    await client.post(f"/jobs/{live['id']}/cancel")
    assert (await client.post("/jobs/01JDZZZZZZZZZZZZZZZZZZZZZZ/retry")).status_code == 404


async def test_retry_all_failed_of_a_type(client: httpx.AsyncClient, queue: Queue) -> None:
    ids = [(await _failed(client, queue))["id"] for _ in range(3)]
    other = (await client.post("/jobs", json={"type": "block", "delay": 60})).json()["id"]
    await client.post(f"/jobs/{other}/cancel")
    response = await client.post("/jobs/retry?status=failed&type=fail")
    assert response.status_code == 200
    assert response.json() == {"retried": 3}
    for job_id in ids:
        assert (await queue.wait(job_id, timeout=10)).history[0].status is JobStatus.FAILED
    assert (await queue.get(other)).history == ()
    assert (await client.post("/jobs/retry?status=completed")).status_code == 422
    assert (await client.post("/jobs/retry?bogus=1")).status_code == 422
    assert (await client.post("/jobs/retry?type=echo")).json() == {"retried": 0}
    assert (await client.post("/jobs/retry?status=cancelled")).json() == {"retried": 1}
    assert (await queue.get(other)).status in (JobStatus.QUEUED, JobStatus.RUNNING)
    await queue.cancel(other)
    assert (await queue.wait(other, timeout=10)).status is JobStatus.CANCELLED


async def test_batch_submit(client: httpx.AsyncClient, queue: Queue) -> None:
    body = {
        "jobs": [
            {"type": "echo", "params": {"n": 1}},
            {"type": "sleep", "params": {"seconds": 0.01}, "priority": 3},
            {"type": "echo", "params": {"n": 2}, "idempotency_key": "k"},
            {"type": "echo", "params": {"n": 3}, "idempotency_key": "k"},
        ]
    }
    response = await client.post("/jobs/batch", json=body)
    assert response.status_code == 202, response.text
    jobs = response.json()["jobs"]
    assert [j["type"] for j in jobs] == ["echo", "sleep", "echo", "echo"]
    assert jobs[1]["priority"] == 3
    assert jobs[2]["id"] == jobs[3]["id"]  # the key's first job
    assert len({j["id"] for j in jobs}) == 3
    for job in jobs:
        assert (await queue.wait(job["id"], timeout=10)).status is JobStatus.COMPLETED


async def test_batch_is_all_or_nothing_and_names_the_bad_index(
    client: httpx.AsyncClient, queue: Queue
) -> None:
    cases: list[tuple[Any, list[Any]]] = [
        ([{"type": "echo"}, {"type": "sleep", "params": {"seconds": -1}}], ["jobs", 1, "params"]),
        ([{"type": "echo"}, {"type": "nope"}], ["jobs", 1, "type"]),
        ([{"type": "echo"}, {"type": "echo", "priority": "high"}], ["jobs", 1, "priority"]),
        ([{"type": "echo"}, "not an object"], ["jobs", 1]),
    ]
    for jobs, loc in cases:
        response = await client.post("/jobs/batch", json={"jobs": jobs})
        assert response.status_code == 422, response.text
        details = response.json()["error"]["details"]
        assert any(d["loc"][: len(loc)] == loc for d in details), details
    for bad in ([], {"jobs": []}, {"jobs": {}}, {"jobs": [], "extra": 1}):
        assert (await client.post("/jobs/batch", json=bad)).status_code == 422
    assert (await queue.stats()).total == 0  # nothing was stored


async def test_retry_and_batch_respect_scopes_and_owners(serve: Serve, queue: Queue) -> None:
    tokens = BearerTokens(
        {
            "reader-token-0001": Principal("r", {"read"}),
            "alice-token-0001": Principal("alice", {"read", "submit"}, owner="alice"),
            "bob-token-00000001": Principal("bob", {"read", "submit"}, owner="bob"),
        }
    )
    url = await serve(JobsApp(queue, auth=tokens))

    def as_(token: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10
        )

    async with (
        as_("alice-token-0001") as alice,
        as_("bob-token-00000001") as bob,
        as_("reader-token-0001") as reader,
    ):
        made = await alice.post("/jobs/batch", json={"jobs": [{"type": "fail"}, {"type": "fail"}]})
        assert made.status_code == 202
        ids = [j["id"] for j in made.json()["jobs"]]
        for job_id in ids:
            job = await queue.wait(job_id, timeout=10)
            assert job.owner == "alice"
        assert (await reader.post(f"/jobs/{ids[0]}/retry")).status_code == 403
        assert (
            await reader.post("/jobs/batch", json={"jobs": [{"type": "echo"}]})
        ).status_code == 403
        assert (await bob.post(f"/jobs/{ids[0]}/retry")).status_code == 404
        assert (await bob.post("/jobs/retry")).json() == {"retried": 0}
        assert (await alice.post("/jobs/retry")).json() == {"retried": 2}


async def test_metrics_have_a_queue_wait_histogram(client: httpx.AsyncClient, queue: Queue) -> None:
    # Three slots, four jobs of 0.3 s: the fourth waits until a slot frees up.
    body = {"jobs": [{"type": "sleep", "params": {"seconds": 0.3}} for _ in range(4)]}
    jobs = (await client.post("/jobs/batch", json=body)).json()["jobs"]
    for job in jobs:
        await queue.wait(job["id"], timeout=20)
    text = (await client.get("/metrics")).text
    lines = dict(
        line.rsplit(" ", 1)
        for line in text.splitlines()
        if line.startswith("asyncjobs_job_queue_wait")
    )
    assert float(lines['asyncjobs_job_queue_wait_seconds_count{type="sleep"}']) == 4
    assert float(lines['asyncjobs_job_queue_wait_seconds_sum{type="sleep"}']) >= 0.3
