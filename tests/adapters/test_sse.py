"""Server-Sent Events through a real uvicorn server with httpx-sse."""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx
import pytest
from asyncjobs.adapters.asgi import FrameCache, encode_comment, encode_event
from asyncjobs.adapters.asgi.sse import parse_last_event_id
from httpx_sse import ServerSentEvent, aconnect_sse

from asyncjobs import Queue
from asyncjobs.job import EventType

from .support import wait_until


async def collect(client: httpx.AsyncClient, url: str, **kwargs: Any) -> list[ServerSentEvent]:
    """Every event of a stream that ends by itself (bounded)."""
    with anyio.fail_after(10):
        async with aconnect_sse(client, "GET", url, **kwargs) as source:
            return [sse async for sse in source.aiter_sse()]


async def test_job_stream_sends_the_snapshot_then_events_and_ends(
    client: httpx.AsyncClient, queue: Queue
) -> None:
    job = await queue.submit("sleep", {"seconds": 0.3, "steps": 3})
    frames = await collect(client, f"/jobs/{job.id}/events")
    events = [json.loads(f.data) for f in frames]
    assert events[0]["type"] == "job_snapshot"
    assert events[0]["seq"] == 0
    assert frames[0].id == ""  # a snapshot carries no id: it is not a point to resume from
    assert events[-1]["type"] == "job_completed"
    assert events[-1]["job"]["result"] == {"slept": 0.3}
    assert "job_progress" in [e["type"] for e in events]
    for frame, event in zip(frames[1:], events[1:], strict=True):
        assert frame.id == str(event["seq"])
    seqs = [e["seq"] for e in events[1:]]
    assert seqs == sorted(seqs)
    versions = [e["job"]["version"] for e in events]
    assert versions == sorted(set(versions))


async def test_the_stream_of_a_finished_job_is_its_snapshot(
    client: httpx.AsyncClient, queue: Queue
) -> None:
    job = await queue.submit("echo", {"a": 1})
    await queue.wait(job.id, timeout=5)
    frames = await collect(client, f"/jobs/{job.id}/events")
    assert [json.loads(f.data)["type"] for f in frames] == ["job_snapshot"]
    assert json.loads(frames[0].data)["job"]["status"] == "completed"


async def test_headers_are_proxy_safe(client: httpx.AsyncClient, queue: Queue) -> None:
    job = await queue.submit("echo", {})
    async with client.stream("GET", f"/jobs/{job.id}/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"


async def test_queue_stream_sends_live_events_and_heartbeats(
    client: httpx.AsyncClient, queue: Queue
) -> None:
    seen: list[str] = []
    with anyio.fail_after(10):
        async with client.stream("GET", "/events") as response:
            lines = response.aiter_lines()
            async for line in lines:
                seen.append(line)
                if line == ": ping":
                    break  # heartbeat=0.2 in the fixture
            await queue.submit("echo", {"n": 1})
            async for line in lines:
                if line.startswith("data:") and json.loads(line[5:])["type"] == "job_completed":
                    break
    assert seen[0] == ": connected"


async def test_queue_stream_filters_by_type(client: httpx.AsyncClient, queue: Queue) -> None:
    types: list[str] = []
    with anyio.fail_after(10):
        async with aconnect_sse(client, "GET", "/events?type=sleep") as source:
            await queue.submit("echo", {})
            await queue.submit("sleep", {"seconds": 0})
            async for sse in source.aiter_sse():
                event = json.loads(sse.data)
                types.append(event["job"]["type"])
                if event["type"] == "job_completed":
                    break
    assert set(types) == {"sleep"}


async def test_last_event_id_skips_live_events_already_seen(
    client: httpx.AsyncClient, queue: Queue
) -> None:
    done: dict[str, Any] = {}
    with anyio.fail_after(10):
        async with aconnect_sse(client, "GET", "/events") as source:
            await wait_until(lambda: queue.bus.subscriber_count == 1)
            first = await queue.submit("echo", {})
            async for sse in source.aiter_sse():
                event = json.loads(sse.data)
                if event["type"] == "job_completed" and event["job"]["id"] == first.id:
                    done = event
                    break
    await wait_until(lambda: queue.bus.subscriber_count == 0)
    # The next job's first two events get seqs done+1 and done+2; claim to have seen them.
    skip = done["seq"] + 2
    seqs: list[int] = []
    with anyio.fail_after(10):
        headers = {"Last-Event-ID": str(skip)}
        async with aconnect_sse(client, "GET", "/events", headers=headers) as source:
            await wait_until(lambda: queue.bus.subscriber_count == 1)
            second = await queue.submit("echo", {})
            async for sse in source.aiter_sse():
                event = json.loads(sse.data)
                assert sse.id == str(event["seq"])
                seqs.append(event["seq"])
                if event["type"] == "job_completed" and event["job"]["id"] == second.id:
                    break
    assert seqs[0] == skip + 1


@pytest.mark.timeout(180)
async def test_a_thousand_disconnects_leave_no_subscriber(
    client: httpx.AsyncClient, queue: Queue
) -> None:
    job = await queue.submit("block")
    for _ in range(1000):
        async with client.stream("GET", f"/jobs/{job.id}/events") as response:
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    break  # the snapshot: the subscription exists now
            assert queue.bus.subscriber_count >= 1
    await wait_until(lambda: queue.bus.subscriber_count == 0)
    await queue.cancel(job.id)


def test_frames() -> None:
    assert encode_comment("ping") == b": ping\n\n"
    assert encode_comment("a\nb") == b": a\n: b\n\n"
    assert parse_last_event_id(" 42 ") == 42
    assert parse_last_event_id("x") is None
    assert parse_last_event_id("-3") is None
    assert parse_last_event_id(None) is None


async def test_event_frame_shape(queue: Queue) -> None:
    job = await queue.submit("echo", {"text": "line\nbreak"})
    async with queue.subscribe(job_id=job.id) as events:
        async for event in events:
            frame = encode_event(event).decode()
            if event.type is EventType.SNAPSHOT:
                assert frame.startswith("data: ")
            else:
                assert frame.startswith(f"id: {event.seq}\ndata: ")
            assert frame.endswith("\n\n")
            assert frame.count("\n") == (2 if event.type is EventType.SNAPSHOT else 3)


def test_frame_cache_encodes_each_event_object_once() -> None:
    from datetime import datetime, timezone

    from asyncjobs.job import Job, JobEvent, JobStatus

    now = datetime.now(timezone.utc)
    job = Job(id="01J", type="t", params={}, status=JobStatus.QUEUED, created_at=now, run_at=now)
    first = JobEvent(EventType.CREATED, 1, now, job)
    twin = JobEvent(EventType.CREATED, 1, now, job)  # equal, but another object
    cache = FrameCache(size=2)
    frame = cache.encode(first)
    assert frame == encode_event(first)
    assert cache.encode(first) is frame  # shared, not re-encoded
    assert cache.encode(twin) is not frame
    cache.encode(JobEvent(EventType.CREATED, 2, now, job))  # evicts `first`
    assert cache.encode(first) is not frame
    assert cache.encode(first) == frame
