"""Bad input to the operations routes: a clear error, the documented status, nothing
stored or changed (real HTTP: uvicorn on a free port, httpx)."""

from __future__ import annotations

import httpx
import pytest
from asyncjobs.adapters.asgi import JobsApp

from asyncjobs import Queue
from asyncjobs.job import JobStatus

from .conftest import Serve
from .support import build_queue, opened


async def test_a_refused_retry_changes_nothing(client: httpx.AsyncClient, queue: Queue) -> None:
    live = (await client.post("/jobs", json={"type": "block"})).json()
    for _ in range(200):
        if (await queue.get(live["id"])).status is JobStatus.RUNNING:
            break
        await queue.wait_for_work(0.05)
    before = await queue.get(live["id"])
    assert before.status is JobStatus.RUNNING
    response = await client.post(f"/jobs/{live['id']}/retry")
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "illegal_transition"
    assert live["id"] in error["message"]
    after = await queue.get(live["id"])
    assert (after.status, after.version, after.history) == (JobStatus.RUNNING, before.version, ())
    await queue.cancel(live["id"])


async def test_retry_of_an_unknown_id_is_404_and_of_a_malformed_one_400(
    client: httpx.AsyncClient,
) -> None:
    unknown = await client.post("/jobs/01JDZZZZZZZZZZZZZZZZZZZZZZ/retry")
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "job_not_found"
    # The same rule as GET /jobs/{id}: an id that is not a ULID is 400 invalid_id.
    for bad in ("not-an-id", "%20", "a" * 300, "01JDOESNOTEXIST0000000000A"):
        for method, route in (("GET", f"/jobs/{bad}"), ("POST", f"/jobs/{bad}/retry")):
            response = await client.request(method, route)
            assert response.status_code == 400, (route, response.text)
            assert response.json()["error"]["code"] == "invalid_id"


async def test_ops_routes_refuse_unknown_query_parameters(
    client: httpx.AsyncClient, queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ASYNCJOBS_WEBHOOK_ALLOW", "127.0.0.1")
    hook = (await client.post("/webhooks", json={"url": "http://127.0.0.1:9/"})).json()
    for method, route, body in [
        ("POST", "/jobs/batch?wait=1", {"jobs": [{"type": "echo"}]}),
        ("POST", "/jobs/01JDZZZZZZZZZZZZZZZZZZZZZZ/retry?force=1", None),
        ("POST", "/jobs/retry?statuss=failed", None),
        ("GET", "/schedules?all=1", None),
        ("GET", "/webhooks?limit=1", None),
        ("POST", "/webhooks?x=1", {"url": "http://127.0.0.1:9/other"}),
        ("DELETE", f"/webhooks/{hook['id']}?x=1", None),
        ("GET", f"/webhooks/{hook['id']}/deliveries?page=2", None),
    ]:
        response = await client.request(method, route, json=body)
        assert response.status_code == 422, (route, response.text)
        assert response.json()["error"]["details"][0]["loc"][0] == "query"
    assert (await queue.stats()).total == 0
    assert [h.id for h in await queue.list_webhooks()] == [hook["id"]]


async def test_other_methods_on_batch_and_retry_are_405_not_a_job_id(
    client: httpx.AsyncClient,
) -> None:
    for route in ("/jobs/batch", "/jobs/retry"):
        for method in ("GET", "DELETE", "PUT", "OPTIONS"):
            response = await client.request(method, route)
            assert response.status_code == 405, (method, route, response.text)
            assert response.headers["allow"] == "POST"
            assert response.json()["error"]["code"] == "method_not_allowed"


async def test_batch_and_webhook_bodies_must_be_json(client: httpx.AsyncClient) -> None:
    for route in ("/jobs/batch", "/webhooks"):
        response = await client.post(
            route, content=b"jobs=1", headers={"content-type": "text/plain"}
        )
        assert response.status_code == 415, route


async def test_bad_batch_bodies_store_nothing(client: httpx.AsyncClient, queue: Queue) -> None:
    bad_json = await client.post(
        "/jobs/batch", content=b'{"jobs": [', headers={"content-type": "application/json"}
    )
    assert bad_json.status_code == 400
    assert bad_json.json()["error"]["code"] == "malformed_json"
    many = {"jobs": [{"type": "echo"}] * 1001}
    too_many = await client.post("/jobs/batch", json=many)
    assert too_many.status_code == 422
    assert "1000" in too_many.json()["error"]["details"][0]["msg"]
    # The last of three is bad: the first two are not stored either.
    mixed = {"jobs": [{"type": "echo"}, {"type": "echo"}, {"type": "echo", "delay": -1}]}
    response = await client.post("/jobs/batch", json=mixed)
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["loc"][:2] == ["jobs", 2]
    assert (await queue.stats()).total == 0


async def test_a_batch_over_max_body_is_413(serve: Serve) -> None:
    async with opened(build_queue()) as queue:
        url = await serve(JobsApp(queue, max_body=200))
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            body = {"jobs": [{"type": "echo", "params": {"n": i}} for i in range(20)]}
            response = await client.post("/jobs/batch", json=body)
            assert response.status_code == 413
            assert response.json()["error"]["code"] == "body_too_large"
        assert (await queue.stats()).total == 0


async def test_a_batch_that_overfills_the_queue_is_429_and_stores_nothing(serve: Serve) -> None:
    async with opened(build_queue(max_queued=3, concurrency=1)) as queue:
        url = await serve(JobsApp(queue))
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            body = {"jobs": [{"type": "echo", "delay": 60} for _ in range(5)]}
            response = await client.post("/jobs/batch", json=body)
            assert response.status_code == 429, response.text
            assert response.json()["error"]["code"] == "queue_full"
        assert (await queue.stats()).total == 0


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://[::1/hook", "not a valid URL"),  # urlsplit's ValueError was a 500
        ("http://localhost:9/hook", "ASYNCJOBS_WEBHOOK_ALLOW"),
        ("http://10.0.0.1/hook", "ASYNCJOBS_WEBHOOK_ALLOW"),
        ("http:///hook", "no host"),
        ("ftp://example.com/", "http"),
    ],
)
async def test_a_refused_webhook_is_422_and_not_stored(
    client: httpx.AsyncClient, queue: Queue, url: str, why: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Allowing one loopback host must not allow the others.
    monkeypatch.setenv("ASYNCJOBS_WEBHOOK_ALLOW", "127.0.0.1")
    response = await client.post("/webhooks", json={"url": url})
    assert response.status_code == 422, response.text
    assert why in response.text
    assert await queue.list_webhooks() == []
    assert (await client.post("/webhooks", json={"url": "http://127.0.0.1:9/"})).status_code == 201


async def test_bad_webhook_secret_and_deliveries_queries(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ASYNCJOBS_WEBHOOK_ALLOW", "127.0.0.1")
    bad_secret = await client.post(
        "/webhooks", json={"url": "http://127.0.0.1:9/", "secret": "whsec_!!!not base64"}
    )
    assert bad_secret.status_code == 422
    assert "base64" in bad_secret.text
    hook = (await client.post("/webhooks", json={"url": "http://127.0.0.1:9/"})).json()
    log = f"/webhooks/{hook['id']}/deliveries"
    for query in ({"limit": "0"}, {"limit": "501"}, {"limit": "x"}, {"status": "sent"}):
        response = await client.get(log, params=query)
        assert response.status_code == 422, query
        assert response.json()["error"]["details"][0]["loc"][0] == "query"
    assert (await client.get(log)).json() == {"deliveries": []}
