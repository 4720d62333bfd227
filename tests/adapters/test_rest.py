"""The REST routes through a real uvicorn server with httpx."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import anyio
import httpx
import pytest
from asyncjobs.adapters.asgi import JobsApp

from asyncjobs import Queue
from asyncjobs.job import JobStatus

from .conftest import Serve
from .support import build_queue, opened, wait_until


async def submit(
    client: httpx.AsyncClient, job_type: str, params: object = None, **extra: object
) -> dict:
    response = await client.post("/jobs", json={"type": job_type, "params": params, **extra})
    assert response.status_code == 202, response.text
    return response.json()


async def test_submit_answers_202_with_the_job_and_its_location(
    client: httpx.AsyncClient, queue: Queue
) -> None:
    response = await client.post("/jobs", json={"type": "echo", "params": {"x": 1}, "tags": ["a"]})
    assert response.status_code == 202
    job = response.json()
    assert response.headers["location"] == f"/jobs/{job['id']}"
    assert job["type"] == "echo"
    assert job["params"] == {"x": 1}
    assert job["tags"] == ["a"]
    assert job["status"] in {"queued", "running", "completed"}
    for hidden in ("lease", "owner", "idempotency_key"):
        assert hidden not in job
    done = await queue.wait(job["id"], timeout=5)
    assert done.result == {"x": 1}
    fetched = (await client.get(response.headers["location"])).json()
    assert fetched["status"] == "completed"
    assert fetched["result"] == {"x": 1}


async def test_wait_returns_the_finished_job_with_200(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/jobs?wait=10", json={"type": "sleep", "params": {"seconds": 0.1, "steps": 2}}
    )
    assert response.status_code == 200
    assert response.json()["status"] == "completed"
    assert response.json()["result"] == {"slept": 0.1}


async def test_wait_answers_202_when_the_job_outlives_it(
    client: httpx.AsyncClient, queue: Queue
) -> None:
    response = await client.post("/jobs?wait=0.2", json={"type": "block"})
    assert response.status_code == 202
    job = response.json()
    assert job["status"] in {"queued", "running"}
    await queue.cancel(job["id"])


async def test_wait_is_capped(client: httpx.AsyncClient, queue: Queue) -> None:
    """An absurd wait is clamped (to 60 s), not refused and not unbounded."""
    with anyio.fail_after(5):
        response = await client.post("/jobs?wait=1e9", json={"type": "echo", "params": {}})
    assert response.status_code == 200


async def test_a_client_that_leaves_while_waiting_leaves_the_job_running(
    base_url: str, queue: Queue
) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=0.3) as impatient:
        with pytest.raises(httpx.ReadTimeout):
            await impatient.post(
                "/jobs?wait=30", json={"type": "sleep", "params": {"seconds": 0.6}}
            )
    page = await queue.list(type="sleep")
    [job] = page.jobs
    assert not job.is_terminal
    done = await queue.wait(job.id, timeout=5)
    assert done.status is JobStatus.COMPLETED


async def test_get_list_filters_and_cursor_pagination(
    client: httpx.AsyncClient, queue: Queue
) -> None:
    ids = [(await submit(client, "echo", {"i": i}))["id"] for i in range(5)]
    failed = await submit(client, "fail")
    for job_id in [*ids, failed["id"]]:
        await queue.wait(job_id, timeout=5)

    first = (await client.get("/jobs", params={"type": "echo", "limit": 2})).json()
    assert [j["id"] for j in first["jobs"]] == ids[::-1][:2]  # newest first
    assert first["next"] == f"/jobs?type=echo&limit=2&cursor={first['next_cursor']}"
    second = (await client.get(first["next"])).json()
    assert [j["id"] for j in second["jobs"]] == ids[::-1][2:4]
    third = (await client.get(second["next"])).json()
    assert [j["id"] for j in third["jobs"]] == ids[:1]
    assert third["next_cursor"] is None
    assert third["next"] is None

    only_failed = (await client.get("/jobs?status=failed")).json()["jobs"]
    assert [j["id"] for j in only_failed] == [failed["id"]]
    assert only_failed[0]["error"]["type"] == "RuntimeError"
    both = (await client.get("/jobs?status=failed,completed&limit=100")).json()["jobs"]
    assert len(both) == 6


async def test_cancel_then_cancel_again_is_409(client: httpx.AsyncClient, queue: Queue) -> None:
    job = await submit(client, "block")
    await wait_until(lambda: queue.running_count() == 1)
    response = await client.post(f"/jobs/{job['id']}/cancel")
    assert response.status_code == 200
    done = await queue.wait(job["id"], timeout=5)
    assert done.status is JobStatus.CANCELLED
    again = await client.post(f"/jobs/{job['id']}/cancel")
    assert again.status_code == 409
    error = again.json()["error"]
    assert error["code"] == "illegal_transition"
    assert error["details"]["from"] == "cancelled"


async def test_delete_a_live_job_cancels_and_deletes_it(
    client: httpx.AsyncClient, queue: Queue
) -> None:
    job = await submit(client, "block")
    await wait_until(lambda: queue.running_count() == 1)
    response = await client.delete(f"/jobs/{job['id']}")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert (await client.get(f"/jobs/{job['id']}")).status_code == 404


async def test_clear_finished_jobs_by_status(client: httpx.AsyncClient, queue: Queue) -> None:
    ok = await submit(client, "echo", {})
    bad = await submit(client, "fail")
    live = await submit(client, "block")
    for job_id in (ok["id"], bad["id"]):
        await queue.wait(job_id, timeout=5)
    response = await client.delete("/jobs?status=failed")
    assert response.json() == {"deleted": 1}
    assert (await client.get(f"/jobs/{bad['id']}")).status_code == 404
    assert (await client.delete("/jobs")).json() == {"deleted": 1}
    assert (await client.get(f"/jobs/{live['id']}")).status_code == 200
    refused = await client.delete("/jobs?status=running")
    assert refused.status_code == 422
    await queue.cancel(live["id"])


async def test_job_types_stats_health(client: httpx.AsyncClient, queue: Queue) -> None:
    types = (await client.get("/job-types")).json()["job_types"]
    by_name = {t["name"]: t for t in types}
    assert set(by_name) == {"echo", "sleep", "fail", "block"}
    schema = by_name["sleep"]["params_schema"]
    assert schema["properties"]["seconds"]["maximum"] == 30
    await queue.wait((await submit(client, "echo", {}))["id"], timeout=5)
    stats = (await client.get("/stats")).json()
    assert stats["counts"]["completed"] == 1
    assert stats["by_type"]["echo"]["completed"] == 1
    assert stats["total"] == 1
    assert stats["concurrency"] == 3
    assert (await client.get("/health")).json() == {"status": "ok"}


async def test_health_is_503_while_the_queue_is_closed(serve: Serve) -> None:
    closed = build_queue()
    url = await serve(JobsApp(closed))
    async with httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/health")).status_code == 503
        response = await client.get("/jobs")
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "configuration_error"


async def test_served_alone_the_app_opens_the_queue_from_its_lifespan(serve: Serve) -> None:
    queue = build_queue()
    url = await serve(JobsApp(queue), lifespan="on")
    assert queue.is_open
    async with httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/jobs?wait=5", json={"type": "echo", "params": {"a": 1}})
        assert response.status_code == 200


# -- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "malformed_json"),
        (b"", 400, "malformed_json"),
        (b'{"type": "echo", "params": NaN}', 400, "malformed_json"),
        (b"\xff\xfe", 400, "malformed_json"),
        (b"[1, 2]", 422, "invalid_request"),
        (b'{"type": "nope"}', 422, "unknown_job_type"),
        (b'{"type": "echo", "params": [1]}', 422, "invalid_request"),
        (b'{"type": "echo", "priority": "high"}', 422, "invalid_request"),
        (b'{"type": "echo", "surprise": 1}', 422, "invalid_request"),
        (
            b'{"type": "echo", "delay": 1, "run_at": "2030-01-01T00:00:00Z"}',
            422,
            "invalid_submission",
        ),
        (b'{"type": "sleep", "params": {"seconds": 99}}', 422, "invalid_params"),
    ],
)
async def test_bad_submissions_change_nothing(
    client: httpx.AsyncClient, queue: Queue, body: bytes, status: int, code: str
) -> None:
    response = await client.post(
        "/jobs", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert set(error) == {"code", "message", "details"}
    assert (await queue.stats()).total == 0


async def test_field_errors_name_the_field(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/jobs", json={"type": "sleep", "params": {"seconds": -1, "steps": "x", "extra": 1}}
    )
    assert response.status_code == 422
    locs = {tuple(e["loc"]) for e in response.json()["error"]["details"]}
    assert locs == {("seconds",), ("steps",), ("extra",)}


UNKNOWN_ID = "01ARZ3NDEKTSV4RRFFQ69G5FAV"  # a well-formed ULID that names no job


async def test_unknown_id_is_404_everywhere(client: httpx.AsyncClient) -> None:
    for method, path in [
        ("GET", f"/jobs/{UNKNOWN_ID}"),
        ("POST", f"/jobs/{UNKNOWN_ID}/cancel"),
        ("DELETE", f"/jobs/{UNKNOWN_ID}"),
        ("GET", f"/jobs/{UNKNOWN_ID}/events"),
        ("GET", "/no/such/route"),
    ]:
        response = await client.request(method, path)
        assert response.status_code == 404, (method, path)
        assert response.json()["error"]["code"] in {"job_not_found", "not_found"}


async def test_malformed_id_is_400_invalid_id_everywhere(client: httpx.AsyncClient) -> None:
    for bad in ("nope", UNKNOWN_ID[:-1], UNKNOWN_ID + "0", "01ARZ3NDEKTSV4RRFFQ69G5FAU"):
        for method, path in [
            ("GET", f"/jobs/{bad}"),
            ("POST", f"/jobs/{bad}/cancel"),
            ("DELETE", f"/jobs/{bad}"),
            ("GET", f"/jobs/{bad}/events"),
        ]:
            response = await client.request(method, path)
            assert response.status_code == 400, (method, path)
            assert response.json()["error"]["code"] == "invalid_id"


async def test_unknown_query_parameters_are_422_on_every_route(
    client: httpx.AsyncClient, queue: Queue
) -> None:
    job = await queue.submit("echo")
    for method, path in [
        ("GET", "/jobs?stauts=queued"),
        ("POST", "/jobs?wiat=5"),
        ("DELETE", "/jobs?statuss=completed"),
        ("GET", f"/jobs/{job.id}?x=1"),
        ("POST", f"/jobs/{job.id}/cancel?force=1"),
        ("DELETE", f"/jobs/{job.id}?x=1"),
        ("GET", f"/jobs/{job.id}/events?x=1"),
        ("GET", "/events?typ=echo"),
        ("GET", "/job-types?x=1"),
        ("GET", "/stats?x=1"),
        ("GET", "/health?x=1"),
        ("GET", "/metrics?x=1"),
    ]:
        kwargs = {"json": {"type": "echo"}} if method == "POST" else {}
        response = await client.request(method, path, **kwargs)  # type: ignore[arg-type]
        assert response.status_code == 422, (method, path, response.text)
        (error,) = response.json()["error"]["details"]
        assert error["loc"][0] == "query" and error["msg"] == "unknown query parameter"
    assert (await queue.stats()).total == 1
    assert (await client.get("/jobs?status=queued&type=echo&limit=5")).status_code == 200
    assert (await client.get("/jobs?access_token=x")).status_code == 200
    bad_cursor = await client.get("/jobs?cursor=zzz")
    assert bad_cursor.status_code == 422


async def test_list_counts_every_match_beside_the_page(
    client: httpx.AsyncClient, queue: Queue
) -> None:
    for i in range(7):
        await queue.wait((await queue.submit("echo", {"i": i})).id, timeout=5)
    await queue.wait((await queue.submit("fail")).id, timeout=5)
    page = (await client.get("/jobs?limit=3")).json()
    assert len(page["jobs"]) == 3 and page["count"] == 8
    done = (await client.get("/jobs?status=completed&limit=2")).json()
    assert done["count"] == 7
    assert (await client.get("/jobs?type=fail")).json()["count"] == 1
    assert (await client.get("/jobs?type=echo&status=failed")).json()["count"] == 0
    following = (await client.get(done["next"])).json()
    assert following["count"] == 7


async def test_queue_list_returns_a_page_that_iterates_and_has_len(queue: Queue) -> None:
    jobs = [await queue.submit("echo", {"i": i}) for i in range(3)]
    page = await queue.list(limit=2)
    assert len(page) == 2
    assert [j.id for j in page] == [jobs[2].id, jobs[1].id]
    rest = await queue.list(cursor=page.next_cursor)
    assert len(rest) == 1 and list(rest) == rest.jobs


async def test_wrong_method_is_405_in_the_error_shape(client: httpx.AsyncClient) -> None:
    response = await client.put("/jobs")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize(
    "query", ["limit=0", "limit=501", "limit=x", "status=bogus", "wait=-1", "wait=nan"]
)
async def test_bad_query_parameters_are_422(client: httpx.AsyncClient, query: str) -> None:
    method = "POST" if query.startswith("wait") else "GET"
    response = await client.request(method, f"/jobs?{query}", json={"type": "echo"})
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["loc"][0] == "query"


@pytest.fixture
async def small_app(serve: Serve) -> AsyncIterator[tuple[str, Queue]]:
    async with opened(build_queue(max_queued=2, concurrency=0)) as queue:
        yield await serve(JobsApp(queue, max_body=1000)), queue


async def test_body_over_the_limit_is_413_even_when_chunked(
    small_app: tuple[str, Queue],
) -> None:
    url, queue = small_app
    big = json.dumps({"type": "echo", "params": {"blob": "x" * 5000}}).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(big), 100):
            yield big[i : i + 100]

    async with httpx.AsyncClient(base_url=url) as client:
        declared = await client.post(
            "/jobs", content=big, headers={"content-type": "application/json"}
        )
        assert declared.status_code == 413
        assert declared.json()["error"]["details"] == {"max_body": 1000}
        streamed = await client.post(
            "/jobs", content=chunks(), headers={"content-type": "application/json"}
        )
        assert streamed.status_code == 413
    assert (await queue.stats()).total == 0


async def test_full_queue_is_429_with_retry_after(small_app: tuple[str, Queue]) -> None:
    url, queue = small_app
    async with httpx.AsyncClient(base_url=url) as client:
        for _ in range(2):
            assert (await client.post("/jobs", json={"type": "echo"})).status_code == 202
        full = await client.post("/jobs", json={"type": "echo"})
    assert full.status_code == 429
    assert int(full.headers["retry-after"]) >= 1
    assert full.json()["error"]["code"] == "queue_full"
    assert (await queue.stats()).total == 2


async def test_idempotency_key_header_returns_the_first_job(client: httpx.AsyncClient) -> None:
    headers = {"Idempotency-Key": "order-17"}
    first = await client.post("/jobs", json={"type": "echo"}, headers=headers)
    second = await client.post("/jobs", json={"type": "echo"}, headers=headers)
    assert first.json()["id"] == second.json()["id"]


async def test_metrics_count_per_type_and_outcome(client: httpx.AsyncClient, queue: Queue) -> None:
    for job_type in ("echo", "echo", "fail"):
        await queue.wait((await submit(client, job_type, {}))["id"], timeout=5)
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'asyncjobs_jobs_finished_total{outcome="completed",type="echo"} 2.0' in text
    assert 'asyncjobs_jobs_finished_total{outcome="failed",type="fail"} 1.0' in text
    assert 'asyncjobs_jobs_submitted_total{type="echo"} 2.0' in text
    assert 'asyncjobs_job_run_seconds_count{outcome="completed",type="echo"} 2.0' in text
    assert "asyncjobs_jobs_queued 0.0" in text
    assert 'asyncjobs_jobs{status="completed"} 2.0' in text


async def test_two_apps_keep_separate_metric_registries(serve: Serve, queue: Queue) -> None:
    one, two = JobsApp(queue), JobsApp(queue)
    assert one.metrics.registry is not two.metrics.registry
