"""The WebSocket protocol through a real uvicorn server with the websockets client."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from websockets.asyncio.client import ClientConnection, connect

from asyncjobs import Queue

from .support import wait_until


class Client:
    """A thin test client: send a message, read messages until one matches."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def send(self, message: dict[str, Any] | str | bytes) -> None:
        await self.ws.send(message if isinstance(message, str | bytes) else json.dumps(message))

    async def receive(self) -> dict[str, Any]:
        with anyio.fail_after(5):
            message: dict[str, Any] = json.loads(await self.ws.recv())
        return message

    async def until(self, **fields: Any) -> dict[str, Any]:
        """The next message whose top-level fields equal ``fields``; skips the others."""
        while True:
            message = await self.receive()
            if message.get("type") == "ping" and fields.get("type") != "ping":
                continue
            if all(message.get(k) == v for k, v in fields.items()):
                return message

    async def reply(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send ``message`` and return its reply (matched by request_id)."""
        await self.send(message)
        while True:
            got = await self.receive()
            if got.get("request_id") == message["request_id"]:
                return got


@pytest.fixture
async def ws(base_url: str) -> AsyncIterator[Client]:
    async with connect(base_url.replace("http", "ws") + "/ws") as conn:
        yield Client(conn)


async def test_connect_sends_queue_state(base_url: str, queue: Queue) -> None:
    job = await queue.submit("echo", {"n": 1})
    await queue.wait(job.id, timeout=5)
    async with connect(base_url.replace("http", "ws") + "/ws") as conn:
        state = await Client(conn).receive()
    assert state["type"] == "queue_state"
    assert [j["id"] for j in state["jobs"]] == [job.id]
    assert state["stats"]["counts"]["completed"] == 1
    assert {t["name"] for t in state["job_types"]} == {"echo", "sleep", "fail", "block"}
    assert "params_schema" in state["job_types"][0]


async def test_create_job_replies_and_streams_its_events(ws: Client) -> None:
    await ws.until(type="queue_state")
    reply = await ws.reply(
        {
            "type": "create_job",
            "request_id": 7,
            "job_type": "sleep",
            "params": {"seconds": 0.1, "steps": 2},
            "tags": ["ws"],
        }
    )
    assert reply["type"] == "ack"
    assert reply["op"] == "create_job"
    job = reply["job"]
    assert job["tags"] == ["ws"]
    done = await ws.until(type="job_completed")
    assert done["job"]["id"] == job["id"]
    assert done["job"]["result"] == {"slept": 0.1}
    assert done["seq"] > 0


async def test_cancel_job(ws: Client, queue: Queue) -> None:
    await ws.until(type="queue_state")
    created = await ws.reply({"type": "create_job", "request_id": "c", "job_type": "block"})
    job_id = created["job"]["id"]
    await wait_until(lambda: queue.running_count() == 1)
    reply = await ws.reply({"type": "cancel_job", "request_id": "x", "job_id": job_id})
    assert reply["type"] == "ack"
    assert reply["op"] == "cancel_job"
    cancelled = await ws.until(type="job_cancelled")
    assert cancelled["job"]["id"] == job_id
    again = await ws.reply({"type": "cancel_job", "request_id": "y", "job_id": job_id})
    assert again["type"] == "error"
    assert again["error"]["code"] == "illegal_transition"


async def test_clear_completed_and_get_state(ws: Client, queue: Queue) -> None:
    await ws.until(type="queue_state")
    for _ in range(3):
        job = await queue.submit("echo", {})
        await queue.wait(job.id, timeout=5)
    live = await queue.submit("block")
    reply = await ws.reply({"type": "clear_completed", "request_id": 1})
    assert reply == {"type": "ack", "op": "clear_completed", "request_id": 1, "deleted": 3}
    state = await ws.reply({"type": "get_state", "request_id": 2})
    assert state["type"] == "queue_state"
    assert [j["id"] for j in state["jobs"]] == [live.id]
    await queue.cancel(live.id)


async def test_subscribe_filters_events(ws: Client, queue: Queue) -> None:
    await ws.until(type="queue_state")
    reply = await ws.reply({"type": "subscribe", "request_id": "s", "job_type": "sleep"})
    assert reply["filters"] == {"job_id": None, "job_type": "sleep", "status": None}
    await queue.submit("echo", {})
    slow = await queue.submit("sleep", {"seconds": 0})
    while True:
        event = await ws.receive()
        if event["type"] == "ping":
            continue
        assert event["job"]["type"] == "sleep"
        if event["type"] == "job_completed":
            assert event["job"]["id"] == slow.id
            break


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("not json", "malformed_json"),
        ("[1, 2]", "malformed_message"),
        ('{"no": "type"}', "unknown_message"),
        ('{"type": "launch_missiles"}', "unknown_message"),
        (b"\x00binary", "malformed_message"),
        ('{"type": "create_job", "job_type": "nope"}', "unknown_job_type"),
        (
            '{"type": "create_job", "job_type": "sleep", "params": {"seconds": "x"}}',
            "invalid_params",
        ),
        ('{"type": "create_job"}', "invalid_request"),
        ('{"type": "cancel_job", "job_id": "missing"}', "invalid_id"),
        ('{"type": "cancel_job", "job_id": "01ARZ3NDEKTSV4RRFFQ69G5FAV"}', "job_not_found"),
        ('{"type": "cancel_job"}', "invalid_request"),
        ('{"type": "get_state", "limit": 0}', "invalid_request"),
        ('{"type": "subscribe", "status": ["bogus"]}', "invalid_request"),
        ('{"type": "clear_completed", "status": "running"}', "invalid_request"),
    ],
)
async def test_malformed_messages_get_an_error_and_the_connection_stays(
    ws: Client, queue: Queue, message: str | bytes, code: str
) -> None:
    await ws.until(type="queue_state")
    await ws.send(message)
    error = await ws.until(type="error")
    assert error["error"]["code"] == code
    assert set(error["error"]) == {"code", "message", "details"}
    pong = await ws.reply({"type": "ping", "request_id": "still-there"})
    assert pong["type"] == "pong"
    assert (await queue.stats()).total == 0


async def test_server_pings(ws: Client) -> None:
    await ws.until(type="queue_state")
    await ws.until(type="ping")  # heartbeat=0.2 in the fixture
    await ws.send({"type": "pong"})  # answering a ping needs no reply
    assert (await ws.reply({"type": "ping", "request_id": 3}))["type"] == "pong"


async def test_disconnect_frees_the_subscription(base_url: str, queue: Queue) -> None:
    for _ in range(20):
        async with connect(base_url.replace("http", "ws") + "/ws") as conn:
            await Client(conn).until(type="queue_state")
            await wait_until(lambda: queue.bus.subscriber_count == 1)
    await wait_until(lambda: queue.bus.subscriber_count == 0)


async def test_an_event_is_encoded_once_for_every_connection(
    base_url: str, queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fan-out: K connections forward the same event; its JSON is built once, not K times.
    from asyncjobs.adapters.asgi import websocket as ws_module

    encoded: list[str] = []
    real = ws_module.event_to_wire

    def counting(event: Any) -> dict[str, Any]:
        encoded.append(event.job.id)
        return real(event)

    monkeypatch.setattr(ws_module, "event_to_wire", counting)
    url = base_url.replace("http", "ws") + "/ws"
    async with connect(url) as a, connect(url) as b, connect(url) as c:
        clients = [Client(a), Client(b), Client(c)]
        for client in clients:
            await client.until(type="queue_state")
        job = await queue.submit("echo", {"n": 1})
        for client in clients:
            done = await client.until(type="job_completed")
            assert done["job"]["id"] == job.id
    events_seen = {"job_created", "job_started", "job_completed"}
    # One encoding per event of the job (created, started, completed), for 3 clients.
    assert encoded.count(job.id) == len(events_seen)
