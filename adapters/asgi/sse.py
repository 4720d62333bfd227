"""Server-Sent Events: the frame encoder, the event stream, and its ASGI response.

A stream starts with a ``: connected`` comment, then the current snapshot(s) of the watched
job(s) (``type: job_snapshot``, no ``id:`` line), then each live event as one frame::

    id: 42
    data: {"type":"job_progress","seq":42,"at":"...","job":{...}}

A comment line (``: ping``) goes out every ``heartbeat`` seconds so that proxies and
clients see a live connection. ``id:`` is the event's ``seq``; a reconnecting client
sends it back as ``Last-Event-ID`` and the stream skips live events it has seen (it
still gets fresh snapshots first, so it misses nothing). A per-job stream ends after
the job's final event. A host can serve the same stream from its own route::

    @app.get("/my/jobs/{job_id}/events")
    async def events(job_id: str, request: Request) -> EventStream:
        return EventStream(event_stream(queue, job_id=job_id,
                                        last_event_id=request.headers.get("last-event-id")))
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Final, final

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from asyncjobs.codec import dumps, event_to_wire
from asyncjobs.errors import SubscriberOverflow
from asyncjobs.job import EventType, Job, JobEvent

from .ssehub import SseHub, direct_send

if TYPE_CHECKING:
    from asyncjobs.queue import Queue
    from asyncjobs.subscription import Subscription

__all__ = [
    "SSE_HEADERS",
    "EventStream",
    "FrameCache",
    "SseFeed",
    "encode_comment",
    "encode_event",
    "event_stream",
    "parse_last_event_id",
]

#: The scope key under which :class:`~asyncjobs.adapters.asgi.JobsApp` keeps the ``send`` it
#: was called with, before its own wrappers (Starlette's error handling, the security
#: headers). They act on ``http.response.start`` alone, so an event stream sends its
#: start through them and its body messages, one per wake-up per connection, past them.
BODY_SEND: Final = "asyncjobs.body_send"

#: Headers every SSE response carries: no caching, and no buffering in nginx-like proxies.
SSE_HEADERS: Final[Mapping[str, str]] = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


def encode_event(event: JobEvent) -> bytes:
    """One SSE frame for ``event``: ``id:`` is its seq (none for snapshots), ``data:`` its JSON."""
    data = dumps(event_to_wire(event))
    # The JSON is one line (dumps escapes newlines inside strings), so one data: line.
    head = f"id: {event.seq}\n" if event.seq > 0 else ""
    return f"{head}data: {data}\n\n".encode()


@final
class FrameCache:
    """Encodes each event once, however many streams send it.

    The bus hands the same :class:`JobEvent` object to every subscriber, so frames are
    keyed by identity; the cache holds the event itself, so its id cannot be reused
    while the entry lives. With K streams open this turns K JSON encodings per event
    into one.
    """

    __slots__ = ("_frames", "_size")

    def __init__(self, size: int = 1024) -> None:
        self._frames: OrderedDict[int, tuple[JobEvent, bytes]] = OrderedDict()
        self._size = size

    def encode(self, event: JobEvent) -> bytes:
        hit = self._frames.get(id(event))
        if hit is not None and hit[0] is event:
            return hit[1]
        frame = encode_event(event)
        self._frames[id(event)] = (event, frame)
        if len(self._frames) > self._size:
            self._frames.popitem(last=False)
        return frame


def encode_comment(text: str = "ping") -> bytes:
    """An SSE comment frame; clients ignore it, proxies see traffic."""
    return "".join(f": {line}\n" for line in text.splitlines() or [""]).encode() + b"\n"


def parse_last_event_id(value: str | None) -> int | None:
    """The seq in a ``Last-Event-ID`` header, or ``None`` when absent or not a number."""
    if value is None:
        return None
    try:
        seq = int(value.strip())
    except ValueError:
        return None
    return seq if seq >= 0 else None


def event_stream(
    queue: Queue,
    *,
    job_id: str | None = None,
    job_type: str | None = None,
    last_event_id: int | str | None = None,
    heartbeat: float = 15.0,
    visible: Callable[[Job], bool] | None = None,
    frames: FrameCache | None = None,
    hub: SseHub | None = None,
) -> AsyncIterator[bytes]:
    """SSE frames for one job (``job_id``), one job type, or the whole queue.

    Args:
        queue: The queue to watch.
        job_id: Watch one job; the stream ends after its final event.
        job_type: Watch jobs of one type.
        last_event_id: The client's ``Last-Event-ID``; live events with ``seq`` at or
            below it are skipped.
        heartbeat: Seconds between comment frames when nothing else is sent.
        visible: A filter on the job snapshot (owner isolation); hidden jobs are skipped.
        frames: A cache shared by the streams of one app, so each event is encoded
            once for all of them.
        hub: The app's :class:`~asyncjobs.adapters.asgi.ssehub.SseHub`: under a server
            whose ``send`` it knows (uvicorn), :class:`EventStream` lets one task write
            the live frames of every stream of the hub.

    Returns:
        An async iterator of bytes: each item is every frame that was ready at once
        (one write for a client that fell behind, not one per event). The subscription
        is released by ``aclose()``, which :class:`EventStream` calls as soon as the
        client disconnects; :class:`EventStream` also drives it without an iterator step
        per frame (see :class:`SseFeed`).
    """
    seen = (
        parse_last_event_id(last_event_id)
        if isinstance(last_event_id, str) or last_event_id is None
        else last_event_id
    )
    return SseFeed(
        queue,
        job_id=job_id,
        job_type=job_type,
        seen=seen,
        heartbeat=heartbeat,
        visible=visible,
        frames=frames if frames is not None else FrameCache(),
        hub=hub,
    )


_CONNECTED: Final = encode_comment("connected")
_PING: Final = encode_comment("ping")
_OVERFLOW: Final = encode_comment("overflow: reconnect")


@final
class SseFeed:
    """The frames of one SSE stream: what :func:`event_stream` returns.

    Iterated, it yields a ``: connected`` comment, then one chunk per wake-up (every
    frame that was ready, joined), and a ``: ping`` after ``heartbeat`` quiet seconds.
    :class:`EventStream` instead calls :meth:`pump`, which writes the same chunks to
    the ASGI ``send`` and keeps the heartbeat on a timer of its own, so a connection
    costs one wake-up and one ``send`` per chunk and no cancel scope per wait.
    """

    __slots__ = (
        "_closed",
        "_frames",
        "_heartbeat",
        "_hub",
        "_job_id",
        "_job_type",
        "_queue",
        "_seen",
        "_started",
        "_subscription",
        "_visible",
    )

    def __init__(
        self,
        queue: Queue,
        *,
        job_id: str | None,
        job_type: str | None,
        seen: int | None,
        heartbeat: float,
        visible: Callable[[Job], bool] | None,
        frames: FrameCache,
        hub: SseHub | None = None,
    ) -> None:
        self._queue = queue
        self._hub = hub
        self._job_id = job_id
        self._job_type = job_type
        self._seen = seen
        self._heartbeat = heartbeat
        self._visible = visible
        self._frames = frames
        self._subscription: Subscription | None = None
        self._started = False
        self._closed = False

    def __aiter__(self) -> SseFeed:
        return self

    async def __anext__(self) -> bytes:
        if not self._started:
            # A first frame at once: clients and proxies see the stream open.
            self._started = True
            return _CONNECTED
        while not self._closed:
            chunk: bytes | None = None
            # Never hand out a chunk inside the timeout scope: it must not span a yield.
            with anyio.move_on_after(self._heartbeat):
                chunk = await self.next_chunk()
            if chunk is None:
                return _PING
            if chunk:
                return chunk
        await self.aclose()
        raise StopAsyncIteration

    async def next_chunk(self) -> bytes:
        """Every frame ready now, joined (waits for at least one event).

        Returns ``b""`` when the events it woke for are not for this client (hidden,
        or seen before ``Last-Event-ID``) or when the stream has ended.
        """
        while True:
            chunk = await self.poll_chunk()
            if chunk or self._closed:
                return chunk
            assert self._subscription is not None
            await self._subscription.wait()

    def take_chunk(self) -> bytes | None:
        """The frames of the live events pending now, joined, without waiting.

        ``b""`` when there are none for this client; ``None`` when only
        :meth:`poll_chunk` can go on (the start, snapshots, a resync, the end).
        """
        subscription = self._subscription
        if subscription is None:
            return None
        batch = subscription.take_ready()
        if batch is None:
            return None
        return self._encode(batch) if batch else b""

    async def poll_chunk(self) -> bytes:
        """The frames ready now, joined (``b""`` for none), without waiting for events."""
        subscription = self._subscription
        if subscription is None:
            # A resumed whole-queue stream also learns of the jobs that finished meanwhile.
            after = self._seen if self._job_id is None else None
            subscription = self._queue.subscribe(
                job_id=self._job_id, type=self._job_type, after_seq=after
            )
            self._subscription = subscription
        try:
            batch = await subscription.poll()
        except StopAsyncIteration:
            self._closed = True
            return b""
        except SubscriberOverflow:
            # The client reconnects and gets fresh snapshots: nothing is lost.
            self._closed = True
            return _OVERFLOW
        return self._encode(batch) if batch else b""

    def wait(self) -> Awaitable[None]:
        """Wait until events may be pending (after :meth:`take_chunk` returned ``b""``)."""
        assert self._subscription is not None
        return self._subscription.wait()

    @property
    def filter_key(self) -> tuple[str | None, str | None]:
        """The bus filter group of this stream: (job id, or else job type)."""
        return (self._job_id, None if self._job_id is not None else self._job_type)

    @property
    def heartbeat(self) -> float:
        """Seconds of quiet before a ``: ping``."""
        return self._heartbeat

    def _encode(self, batch: list[JobEvent]) -> bytes:
        """The frames of ``batch`` this client sees, joined (``b""`` for none)."""
        seen, visible, encode = self._seen, self._visible, self._frames.encode
        if len(batch) == 1 and (seen is None or batch[0].seq > seen) and visible is None:
            event = batch[0]  # the usual case: one event, everyone sees it
            if self._job_id is not None and _ends_job_stream(event):
                self._closed = True
            return encode(event)
        out: list[bytes] = []
        for event in batch:
            if seen is not None and 0 < event.seq <= seen:
                continue
            if visible is not None and not visible(event.job):
                continue
            out.append(encode(event))
            if self._job_id is not None and _ends_job_stream(event):
                self._closed = True
                break
        return b"".join(out)

    @property
    def closed(self) -> bool:
        """Whether the stream has ended (a job stream after the job's final event)."""
        return self._closed

    async def pump(self, send: Send) -> None:
        """Write the stream to ``send`` as body messages until it ends.

        Each wake-up becomes one ``http.response.body`` message; a ``: ping`` goes out
        when nothing was written for ``heartbeat`` seconds. ``send`` is never called by
        two tasks at once. It returns when the stream ended or the client went away
        (the ASGI server raised :class:`OSError`); the caller sends the last message.
        """
        writer = _Writer(send)
        self._started = True
        async with anyio.create_task_group() as tg:
            tg.start_soon(writer.heartbeats, self._heartbeat)
            try:
                await writer.write(_CONNECTED)
                while not self._closed:
                    # The fast path takes what is pending without a coroutine per layer;
                    # poll_chunk() handles the rest (start, snapshots, resync, the end).
                    chunk = self.take_chunk()
                    if chunk is None:
                        chunk = await self.poll_chunk()
                    if chunk:
                        await writer.write(chunk)
                    elif not self._closed:
                        assert self._subscription is not None
                        await self._subscription.wait()
                await writer.idle()
            except OSError:  # the client went away mid-write (ASGI 2.4 servers raise this)
                self._closed = True
            tg.cancel_scope.cancel()

    async def aclose(self) -> None:
        """Release the subscription (idempotent)."""
        self._closed = True
        if self._subscription is not None:
            await self._subscription.aclose()


def _ends_job_stream(event: JobEvent) -> bool:
    return event.type.is_final or (event.type is EventType.SNAPSHOT and event.job.is_terminal)


@final
class _Writer:
    """One connection's ``send``, shared by its stream and its heartbeat, one at a time."""

    __slots__ = ("_busy", "_done", "_send", "last")

    def __init__(self, send: Send) -> None:
        self._send = send
        self._busy = False
        self._done: anyio.Event | None = None  # made only when the two writers meet
        self.last = time.monotonic()

    async def write(self, body: bytes) -> None:
        if self._busy:
            await self.idle()
        self._busy = True
        try:
            await self._send({"type": "http.response.body", "body": body, "more_body": True})
        finally:
            self._busy = False
            self.last = time.monotonic()
            done, self._done = self._done, None
            if done is not None:
                done.set()

    async def idle(self) -> None:
        """Wait until no write is in progress (the other writer met backpressure)."""
        while self._busy:
            if self._done is None:
                self._done = anyio.Event()
            await self._done.wait()

    async def heartbeats(self, every: float) -> None:
        """Write a ping whenever nothing was written for ``every`` seconds."""
        with contextlib.suppress(OSError):  # the stream's own write will see it too
            while True:
                await anyio.sleep(self.last + every - time.monotonic())
                if time.monotonic() - self.last >= every and not self._busy:
                    await self.write(_PING)


class EventStream(StreamingResponse):
    """A ``text/event-stream`` response that stops its stream when the client leaves.

    Unlike a plain streaming response, it always listens for the client's disconnect
    while the stream is idle (between heartbeats), so a closed tab frees its
    subscription at once rather than at the next failed write.

    Args:
        stream: SSE frames, usually from :func:`event_stream`.
        headers: Extra headers; :data:`SSE_HEADERS` are always set.
    """

    def __init__(
        self,
        stream: AsyncIterable[bytes],
        *,
        headers: Mapping[str, str] | None = None,
        status_code: int = 200,
    ) -> None:
        merged = dict(SSE_HEADERS)
        merged.update(headers or {})
        super().__init__(
            stream, status_code=status_code, headers=merged, media_type="text/event-stream"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("method") == "HEAD":  # headers only: never start an endless stream
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()
            return

        async def watch_disconnect(cancel: anyio.CancelScope) -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    cancel.cancel()
                    return

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_disconnect, tg.cancel_scope)
            try:
                await send(
                    {
                        "type": "http.response.start",
                        "status": self.status_code,
                        "headers": self.raw_headers,
                    }
                )
                feed = self.body_iterator
                if isinstance(feed, SseFeed):
                    body_send = scope.get(BODY_SEND, send)
                    if feed._hub is not None and direct_send(body_send):
                        await feed._hub.serve(feed, body_send)
                    else:
                        # A task of its own: each wake-up then resumes the pump alone,
                        # not the dozen coroutines of the routing and middleware above.
                        async with anyio.create_task_group() as pumping:
                            pumping.start_soon(feed.pump, body_send)
                else:
                    async for chunk in self.body_iterator:
                        if not isinstance(chunk, bytes | memoryview):
                            chunk = chunk.encode(self.charset)
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            except OSError:
                pass  # the client went away mid-write (ASGI 2.4 servers raise this)
            finally:
                aclose = getattr(self.body_iterator, "aclose", None)
                if aclose is not None:
                    with anyio.CancelScope(shield=True):
                        await aclose()
            tg.cancel_scope.cancel()
