"""SSE fan-out: one write per wake-up, the hub's leader, slow clients, isolation."""

from __future__ import annotations

import asyncio
import itertools
import json
from datetime import datetime, timezone
from typing import Any

import anyio
import httpx
import pytest
from asyncjobs.adapters.asgi import (
    BearerTokens,
    EventStream,
    JobsApp,
    Principal,
    SseHub,
    encode_event,
    event_stream,
)
from asyncjobs.adapters.asgi.ssehub import _Room, direct_send
from httpx_sse import aconnect_sse
from starlette.types import Message

from asyncjobs import EventType, Job, JobEvent, JobStatus, Queue

from .conftest import Serve
from .support import wait_until

NOW = datetime(2026, 12, 1, tzinfo=timezone.utc)
CONNECTED = b": connected\n\n"


class Events:
    """Events with growing seqs (far above the queue's own) and per-job versions."""

    def __init__(self) -> None:
        self._seq = itertools.count(10_001)
        self._versions: dict[str, int] = {}

    def __call__(self, type: EventType, job_id: str, owner: str | None = None) -> JobEvent:
        version = self._versions[job_id] = self._versions.get(job_id, 0) + 1
        status = {
            EventType.COMPLETED: JobStatus.COMPLETED,
            EventType.CREATED: JobStatus.QUEUED,
        }.get(type, JobStatus.RUNNING)
        job = Job(
            id=job_id,
            type="echo",
            params={},
            status=status,
            created_at=NOW,
            run_at=NOW,
            version=version,
            progress=version / 1000,
            owner=owner,
        )
        return JobEvent(type=type, seq=next(self._seq), at=NOW, job=job)


class Recorder:
    """A fake ASGI ``send``: keeps body chunks; waits while its gate is closed."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, message: Message) -> None:
        await self.gate.wait()  # returns at once while open: the send completes at once
        if message["type"] == "http.response.body" and message.get("body"):
            self.bodies.append(message["body"])


async def never_disconnects() -> Message:
    await anyio.sleep_forever()
    raise AssertionError


def frames(*events: JobEvent) -> bytes:
    return b"".join(encode_event(e) for e in events)


def room_of(hub: SseHub) -> _Room:
    (room,) = hub._rooms.values()
    return room


async def test_pending_events_go_out_in_one_write_in_order_with_their_ids(
    queue: Queue,
) -> None:
    # A stream that is not under the hub (an unknown server's send) writes for itself.
    rec = Recorder()
    assert not direct_send(rec)
    make = Events()
    async with anyio.create_task_group() as tg:
        stream = EventStream(event_stream(queue, heartbeat=30))
        tg.start_soon(stream, {"type": "http", "method": "GET"}, never_disconnects, rec)
        await wait_until(lambda: rec.bodies == [CONNECTED] and queue.bus.subscriber_count == 1)
        await anyio.wait_all_tasks_blocked()
        sent = [make(EventType.CREATED, "a"), make(EventType.PROGRESS, "a")]
        sent.append(make(EventType.COMPLETED, "b"))
        for event in sent:  # no await in between: all three are pending at once
            queue.bus.publish(event)
        await wait_until(lambda: len(rec.bodies) == 2)
        await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()
    assert rec.bodies[1] == frames(*sent)
    ids = [line for line in rec.bodies[1].split(b"\n") if line.startswith(b"id:")]
    assert ids == [f"id: {e.seq}".encode() for e in sent]


async def test_the_hub_writes_each_event_once_per_connection_and_wakes_no_follower(
    queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    follows = 0
    real_follow = _Room._follow

    async def counting_follow(self: _Room, conn: Any) -> None:
        nonlocal follows
        follows += 1
        await real_follow(self, conn)

    monkeypatch.setattr(_Room, "_follow", counting_follow)
    hub = SseHub()
    recs = [Recorder() for _ in range(20)]
    make = Events()
    sent: list[JobEvent] = []
    async with anyio.create_task_group() as tg:
        for rec in recs:
            tg.start_soon(hub.serve, event_stream(queue, heartbeat=30), rec)
        await wait_until(lambda: queue.bus.subscriber_count == 20)
        await anyio.wait_all_tasks_blocked()
        joined = follows
        assert joined == 19  # every connection but the leader waits, once
        for i in range(10):
            sent.append(make(EventType.PROGRESS, "a"))
            queue.bus.publish(sent[-1])
            await wait_until(lambda: all(len(rec.bodies) == 2 + i for rec in recs))  # noqa: B023
        await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()
    # One write per connection per event, from the leader: no follower task was woken.
    assert follows == joined
    for rec in recs:
        assert rec.bodies == [CONNECTED, *[frames(e) for e in sent]]


async def test_a_slow_client_is_finished_by_its_own_task_and_gets_finals_and_newest_progress(
    queue: Queue,
) -> None:
    hub = SseHub()
    fast, slow, other = Recorder(), Recorder(), Recorder()
    make = Events()
    async with anyio.create_task_group() as tg:
        for i, rec in enumerate((fast, slow, other)):
            tg.start_soon(hub.serve, event_stream(queue, heartbeat=30), rec)
            await wait_until(lambda: queue.bus.subscriber_count == i + 1)  # noqa: B023
        await anyio.wait_all_tasks_blocked()
        assert room_of(hub).leader is not None
        slow.gate.clear()  # its client stops reading: its next send waits
        first = make(EventType.PROGRESS, "a")
        queue.bus.publish(first)
        behind = [
            make(EventType.PROGRESS, "a"),
            make(EventType.PROGRESS, "a"),
            make(EventType.COMPLETED, "b"),
            make(EventType.PROGRESS, "a"),
        ]
        for event in behind:
            await anyio.wait_all_tasks_blocked()
            queue.bus.publish(event)
        await wait_until(lambda: len(fast.bodies) == len(other.bodies) == 6)
        assert slow.bodies == [CONNECTED]  # its first send is still waiting
        slow.gate.set()
        await wait_until(lambda: len(slow.bodies) == 3)
        await anyio.wait_all_tasks_blocked()
        # Caught up, it is the leader's again.
        last = make(EventType.COMPLETED, "a")
        queue.bus.publish(last)
        await wait_until(lambda: all(len(r.bodies) in (4, 7) for r in (fast, slow, other)))
        await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()
    for rec in (fast, other):  # never behind: every event, one write each
        assert rec.bodies == [CONNECTED, *[frames(e) for e in [first, *behind, last]]]
    # Behind: the final event kept, the progress of job a coalesced to the newest, in order.
    assert slow.bodies == [CONNECTED, frames(first), frames(behind[2], behind[3]), frames(last)]


async def test_when_the_leader_leaves_another_connection_leads(queue: Queue) -> None:
    hub = SseHub()
    recs = [Recorder() for _ in range(3)]
    scopes = [anyio.CancelScope() for _ in recs]
    make = Events()

    async def serve(i: int) -> None:
        feed = event_stream(queue, heartbeat=30)
        with scopes[i]:
            try:
                await hub.serve(feed, recs[i])
            finally:
                await feed.aclose()  # as EventStream does

    async with anyio.create_task_group() as tg:
        for i in range(3):
            tg.start_soon(serve, i)
        await wait_until(lambda: queue.bus.subscriber_count == 3)
        await anyio.wait_all_tasks_blocked()
        room = room_of(hub)
        leader = room.leader
        assert leader is not None
        gone = [rec is leader.send for rec in recs].index(True)
        scopes[gone].cancel()  # the leader's client disconnects
        await wait_until(lambda: queue.bus.subscriber_count == 2)
        event = make(EventType.COMPLETED, "a")
        queue.bus.publish(event)
        stay = [rec for i, rec in enumerate(recs) if i != gone]
        await wait_until(lambda: all(rec.bodies[-1:] == [frames(event)] for rec in stay))
        assert room.leader is not None and room.leader is not leader
        tg.cancel_scope.cancel()
    assert hub._rooms == {}  # the last connection out drops the room


async def test_the_hub_pings_every_quiet_connection(queue: Queue) -> None:
    hub = SseHub()
    recs = [Recorder() for _ in range(3)]
    async with anyio.create_task_group() as tg:
        for rec in recs:
            tg.start_soon(hub.serve, event_stream(queue, heartbeat=0.05), rec)
        await wait_until(lambda: all(rec.bodies.count(b": ping\n\n") >= 2 for rec in recs))
        tg.cancel_scope.cancel()


async def test_a_stream_under_no_hub_pings_when_quiet(queue: Queue) -> None:
    rec = Recorder()
    async with anyio.create_task_group() as tg:
        stream = EventStream(event_stream(queue, heartbeat=0.05))
        tg.start_soon(stream, {"type": "http", "method": "GET"}, never_disconnects, rec)
        await wait_until(lambda: rec.bodies.count(b": ping\n\n") >= 2)
        tg.cancel_scope.cancel()


async def test_a_job_stream_under_the_hub_ends_after_the_final_event(queue: Queue) -> None:
    hub = SseHub()
    job = await queue.submit("block")
    rec = Recorder()
    async with anyio.create_task_group() as tg:
        tg.start_soon(hub.serve, event_stream(queue, job_id=job.id, heartbeat=30), rec)
        await wait_until(lambda: len(rec.bodies) == 2)  # connected, the snapshot
        await queue.cancel(job.id)
        await wait_until(lambda: hub.connections == 0)
    assert b"job_cancelled" in rec.bodies[-1]


TOKENS = BearerTokens(
    {
        "admin-token-0001": Principal("ops", {"admin"}),
        "alice-token-0001": Principal("alice", {"read", "submit"}, owner="alice"),
        "bob-token-00000001": Principal("bob", {"read", "submit"}, owner="bob"),
    }
)


async def test_under_uvicorn_owners_share_the_hub_and_see_only_their_jobs(
    serve: Serve, queue: Queue
) -> None:
    app = JobsApp(queue, auth=TOKENS, heartbeat=0.2)
    url = await serve(app)
    seen: dict[str, list[dict[str, Any]]] = {"alice": [], "bob": [], "ops": []}
    submitted: dict[str, str] = {}

    async def watch(name: str, token: str, client: httpx.AsyncClient) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        async with aconnect_sse(client, "GET", "/events", headers=headers) as source:
            async for sse in source.aiter_sse():
                event = json.loads(sse.data)
                seen[name].append(event)
                if event["type"] == "job_completed" and len(
                    [e for e in seen[name] if e["type"] == "job_completed"]
                ) == (2 if name == "ops" else 1):
                    return

    async with httpx.AsyncClient(base_url=url) as client, anyio.create_task_group() as tg:
        with anyio.fail_after(10):
            for name, token in [
                ("alice", "alice-token-0001"),
                ("bob", "bob-token-00000001"),
                ("ops", "admin-token-0001"),
            ]:
                tg.start_soon(watch, name, token, client)
            await wait_until(lambda: app.api.hub.connections == 3)
            for owner in ("alice", "bob"):
                submitted[owner] = (await queue.submit("echo", {}, owner=owner)).id
    for owner in ("alice", "bob"):
        assert {e["job"]["id"] for e in seen[owner]} == {submitted[owner]}
    assert {e["job"]["id"] for e in seen["ops"]} == set(submitted.values())
