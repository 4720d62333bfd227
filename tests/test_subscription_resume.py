"""Resumed whole-queue streams (SSE ``Last-Event-ID``) and resync of subscriptions."""

from __future__ import annotations

from typing import Any

import anyio
from asyncjobs.adapters.asgi.sse import event_stream

from asyncjobs import Queue
from asyncjobs.job import EventType


async def _queue() -> Queue:
    queue = Queue(concurrency=2)

    @queue.job_type("echo")
    async def echo(ctx: Any, params: Any) -> Any:
        return params

    return queue


async def test_a_resumed_stream_lists_jobs_that_finished_while_it_was_away() -> None:
    queue = await _queue()
    async with queue:
        first = await queue.submit("echo", {"n": 0})
        await queue.wait(first.id, timeout=10)
        last_seq = max(seq for seq, _ in queue._recent)  # the client's Last-Event-ID
        later = [await queue.submit("echo", {"n": i}) for i in range(1, 4)]
        for job in later:
            await queue.wait(job.id, timeout=10)
        live = await queue.submit("echo", {"n": 9}, delay=60)  # still scheduled
        async with queue.subscribe(after_seq=last_seq) as events:
            got = []
            with anyio.fail_after(5):
                for _ in range(4):
                    got.append(await events.__anext__())
        ends = {e.job.id for e in got if e.type is EventType.COMPLETED}
        assert ends == {j.id for j in later}  # not `first`: it ended before last_seq
        assert [e.job.id for e in got if e.type is EventType.SNAPSHOT] == [live.id]
        # Without after_seq only live jobs are in the snapshot.
        async with queue.subscribe() as events:
            with anyio.fail_after(5):
                snapshot = await events.__anext__()
        assert snapshot.job.id == live.id


async def test_sse_resumed_with_last_event_id_sends_the_missed_ends() -> None:
    queue = await _queue()
    async with queue:
        first = await queue.submit("echo", {})
        await queue.wait(first.id, timeout=10)
        last_seq = max(seq for seq, _ in queue._recent)
        missed = await queue.submit("echo", {"missed": True})
        await queue.wait(missed.id, timeout=10)
        frames = event_stream(queue, last_event_id=str(last_seq), heartbeat=0.2)
        body = b""
        with anyio.fail_after(5):
            async for frame in frames:
                body += frame
                if b"ping" in frame:
                    break
        await frames.aclose()  # type: ignore[attr-defined]
        assert missed.id.encode() in body and b"job_completed" in body
        assert first.id.encode() not in body


async def test_a_resync_sends_what_changed_to_a_whole_queue_subscription() -> None:
    queue = await _queue()
    async with queue:
        gone = await queue.submit("echo", {}, delay=60)
        async with queue.subscribe() as events:
            with anyio.fail_after(5):
                assert (await events.__anext__()).job.id == gone.id  # the snapshot
            # Changes the subscription never hears of (as if the notifier missed them):
            await queue.store.request_cancel(gone.id, now=queue.clock())
            pending = events._sub
            assert pending is not None
            while pending.pending:  # drop what was delivered, as a lost NOTIFY would
                await pending.get()
            queue.bus.resync()
            with anyio.fail_after(5):
                event = await events.__anext__()
            assert event.type is EventType.CANCELLED and event.job.id == gone.id
            assert event.seq == 0
