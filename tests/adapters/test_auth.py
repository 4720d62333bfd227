"""Bearer tokens, scopes, 401 vs 403, access_token, and per-owner isolation."""

from __future__ import annotations

import json
import logging
from typing import Any

import anyio
import httpx
import pytest
from asyncjobs.adapters.asgi import BearerTokens, JobsApp, Principal
from httpx_sse import aconnect_sse
from websockets.asyncio.client import connect

from asyncjobs import Queue

from .conftest import Serve
from .support import wait_until

ADMIN = "admin-token-0001"
READER = "reader-token-0001"
ALICE = "alice-token-0001"
BOB = "bob-token-00000001"

TOKENS = BearerTokens(
    {
        ADMIN: Principal("ops", {"admin"}),
        READER: Principal("dashboard", {"read"}),
        ALICE: Principal("alice", {"read", "submit", "cancel"}, owner="alice"),
        BOB: Principal("bob", {"read", "submit", "cancel"}, owner="bob"),
    }
)


@pytest.fixture
async def url(serve: Serve, queue: Queue) -> str:
    return await serve(JobsApp(queue, auth=TOKENS, heartbeat=0.2))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_no_token_is_401_with_a_challenge(url: str) -> None:
    async with httpx.AsyncClient(base_url=url) as client:
        response = await client.get("/jobs")
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == 'Bearer realm="asyncjobs"'
        assert response.json()["error"]["code"] == "unauthenticated"
        wrong = await client.get("/jobs", headers=bearer("not-a-real-token"))
        assert wrong.status_code == 401
        assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
        basic = await client.get("/jobs", headers={"Authorization": "Basic YWxhZGRpbjpvcGVu"})
        assert basic.status_code == 401


async def test_missing_scope_is_403_and_changes_nothing(url: str, queue: Queue) -> None:
    async with httpx.AsyncClient(base_url=url, headers=bearer(READER)) as client:
        assert (await client.get("/jobs")).status_code == 200
        refused = await client.post("/jobs", json={"type": "echo"})
        assert refused.status_code == 403
        assert refused.json()["error"]["details"]["needed"] == "submit"
        job = await queue.submit("block")
        assert (await client.post(f"/jobs/{job.id}/cancel")).status_code == 403
        assert (await client.delete("/jobs")).status_code == 403
    assert (await queue.get(job.id)).status.value in {"queued", "running"}
    assert (await queue.stats()).total == 1
    await queue.cancel(job.id)


async def test_health_and_openapi_need_no_token(url: str) -> None:
    async with httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/health")).status_code == 200
        document = (await client.get("/openapi.json")).json()
        assert document["security"] == [{"bearer": []}, {"accessToken": []}]


async def test_access_token_query_parameter_for_event_source(url: str, queue: Queue) -> None:
    job = await queue.submit("echo", {})
    await queue.wait(job.id, timeout=5)
    async with httpx.AsyncClient(base_url=url) as client:
        denied = await client.get(f"/jobs/{job.id}/events")
        assert denied.status_code == 401
        with anyio.fail_after(5):
            async with aconnect_sse(
                client, "GET", f"/jobs/{job.id}/events?access_token={READER}"
            ) as source:
                frames = [json.loads(sse.data) async for sse in source.aiter_sse()]
    assert frames[0]["job"]["status"] == "completed"


async def test_websocket_auth(url: str) -> None:
    ws_url = url.replace("http", "ws") + "/ws"
    async with connect(ws_url) as conn:
        error = json.loads(await conn.recv())
        assert error["error"]["code"] == "unauthenticated"
        await conn.wait_closed()
        assert conn.close_code == 4401
    async with connect(f"{ws_url}?access_token={READER}") as conn:
        assert json.loads(await conn.recv())["type"] == "queue_state"
        await conn.send(json.dumps({"type": "create_job", "job_type": "echo", "request_id": 1}))
        while (reply := json.loads(await conn.recv()))["type"] == "ping":
            pass
        assert reply["type"] == "error"
        assert reply["error"]["code"] == "forbidden"
        await conn.send(json.dumps({"type": "ping", "request_id": 2}))
        while (pong := json.loads(await conn.recv()))["type"] == "ping":
            pass
        assert pong == {"type": "pong", "request_id": 2}


async def test_owners_see_only_their_own_jobs(url: str, queue: Queue) -> None:
    async with (
        httpx.AsyncClient(base_url=url, headers=bearer(ALICE)) as alice,
        httpx.AsyncClient(base_url=url, headers=bearer(BOB)) as bob,
        httpx.AsyncClient(base_url=url, headers=bearer(ADMIN)) as admin,
    ):
        mine = (await alice.post("/jobs?wait=5", json={"type": "echo"})).json()
        theirs = (await bob.post("/jobs?wait=5", json={"type": "echo"})).json()
        assert (await queue.get(mine["id"])).owner == "alice"

        assert [j["id"] for j in (await alice.get("/jobs")).json()["jobs"]] == [mine["id"]]
        assert (await alice.get(f"/jobs/{theirs['id']}")).status_code == 404
        assert (await alice.post(f"/jobs/{theirs['id']}/cancel")).status_code == 404
        assert (await alice.delete(f"/jobs/{theirs['id']}")).status_code == 404
        assert (await alice.get(f"/jobs/{theirs['id']}/events")).status_code == 404
        assert len((await admin.get("/jobs")).json()["jobs"]) == 2

        assert (await alice.delete("/jobs")).json() == {"deleted": 1}
        assert (await bob.get(f"/jobs/{theirs['id']}")).status_code == 200


async def test_owner_isolation_on_the_streams(url: str, queue: Queue) -> None:
    seen: list[dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=url, headers=bearer(ALICE)) as alice:
        with anyio.fail_after(10):
            async with aconnect_sse(alice, "GET", "/events") as source:
                await wait_until(lambda: queue.bus.subscriber_count == 1)
                await queue.submit("echo", {}, owner="bob")
                last = await queue.submit("echo", {}, owner="alice")
                async for sse in source.aiter_sse():
                    seen.append(json.loads(sse.data))
                    if seen[-1]["type"] == "job_completed":
                        break
    assert {e["job"]["id"] for e in seen} == {last.id}

    ws_url = url.replace("http", "ws") + f"/ws?access_token={ALICE}"
    async with connect(ws_url) as conn:
        state = json.loads(await conn.recv())
        assert [j["id"] for j in state["jobs"]] == [last.id]
        await queue.submit("echo", {}, owner="bob")
        mine = await queue.submit("echo", {}, owner="alice")
        with anyio.fail_after(5):
            while True:
                event = json.loads(await conn.recv())
                if event["type"] == "ping":
                    continue
                assert event["job"]["id"] == mine.id
                if event["type"] == "job_completed":
                    break


async def test_no_auth_logs_one_warning(
    serve: Serve, queue: Queue, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="asyncjobs.adapters.asgi"):
        url = await serve(JobsApp(queue))
        async with httpx.AsyncClient(base_url=url) as client:
            for _ in range(3):
                await client.get("/health")
        secured = await serve(JobsApp(queue, auth=TOKENS))
        async with httpx.AsyncClient(base_url=secured) as client:
            await client.get("/health")
    warnings = [r for r in caplog.records if "no auth" in r.getMessage()]
    assert len(warnings) == 1


def test_tokens_and_principals_are_checked() -> None:
    with pytest.raises(ValueError, match="at least 8"):
        BearerTokens({"short": Principal("x")})
    with pytest.raises(ValueError, match="unknown scope"):
        Principal("x", {"reed"})
    assert Principal("x", {"admin"}).allows("cancel")
    assert Principal("x", {"admin"}, owner="o").isolated_owner is None
    assert Principal("x", {"read"}, owner="o").isolated_owner == "o"


async def test_idempotency_keys_are_per_owner_on_every_transport(url: str, queue: Queue) -> None:
    async with httpx.AsyncClient(base_url=url) as client:
        a = await client.post(
            "/jobs",
            json={"type": "echo", "params": {"secret": "alice"}, "idempotency_key": "k1"},
            headers=bearer(ALICE),
        )
        assert a.status_code == 202
        # Bob reuses Alice's key: in the body, then in the Idempotency-Key header.
        b_body = await client.post(
            "/jobs",
            json={"type": "echo", "params": {"mine": "bob"}, "idempotency_key": "k1"},
            headers=bearer(BOB),
        )
        b_header = await client.post(
            "/jobs",
            json={"type": "echo", "params": {"mine": "bob"}},
            headers={**bearer(BOB), "Idempotency-Key": "k1"},
        )
        assert b_body.json()["id"] != a.json()["id"]
        assert b_body.json()["params"] == {"mine": "bob"}
        assert b_header.json()["id"] == b_body.json()["id"]  # Bob's own key, Bob's job
        a_header = await client.post(
            "/jobs",
            json={"type": "echo"},
            headers={**bearer(ALICE), "Idempotency-Key": "k2"},
        )
    async with connect(url.replace("http", "ws") + f"/ws?access_token={BOB}") as ws:
        await ws.recv()  # queue_state
        await ws.send(
            json.dumps(
                {"type": "create_job", "request_id": 1, "job_type": "echo", "idempotency_key": "k2"}
            )
        )
        while (reply := json.loads(await ws.recv())).get("request_id") != 1:
            pass
    assert reply["type"] == "ack"
    assert reply["job"]["id"] != a_header.json()["id"]
    # And from Python: Queue.submit(owner=...).
    carol = await queue.submit("echo", {"carol": 1}, idempotency_key="k1", owner="carol")
    assert carol.id not in (a.json()["id"], b_body.json()["id"])
    assert carol.params == {"carol": 1}
    again = await queue.submit("echo", {}, idempotency_key="k1", owner="alice")
    assert again.id == a.json()["id"]


async def test_workers_need_the_read_scope(url: str, queue: Queue) -> None:
    async with httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/workers")).status_code == 401
        with anyio.fail_after(10):  # the worker registers on its first heartbeat step
            while not await queue.workers():
                await anyio.sleep(0.01)
        reply = await client.get("/workers", headers=bearer(READER))
        assert reply.status_code == 200
        workers = reply.json()["workers"]
        assert queue.worker is not None and [w["id"] for w in workers] == [queue.worker.id]
        assert set(workers[0]) == {
            "id", "host", "pid", "types", "slots", "running",
            "started_at", "last_heartbeat", "expires_at",
        }  # fmt: skip
