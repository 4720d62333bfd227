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

from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Final, final

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from asyncjobs.codec import dumps, event_to_wire
from asyncjobs.errors import SubscriberOverflow
from asyncjobs.job import EventType, Job, JobEvent

if TYPE_CHECKING:
    from asyncjobs.queue import Queue

__all__ = [
    "SSE_HEADERS",
    "EventStream",
    "FrameCache",
    "encode_comment",
    "encode_event",
    "event_stream",
    "parse_last_event_id",
]

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


async def event_stream(
    queue: Queue,
    *,
    job_id: str | None = None,
    job_type: str | None = None,
    last_event_id: int | str | None = None,
    heartbeat: float = 15.0,
    visible: Callable[[Job], bool] | None = None,
    frames: FrameCache | None = None,
) -> AsyncIterator[bytes]:
    """Yield SSE frames for one job (``job_id``), one job type, or the whole queue.

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

    The subscription is released when the generator is closed (``aclose()``), which
    :class:`EventStream` does as soon as the client disconnects.
    """
    seen = (
        parse_last_event_id(last_event_id)
        if isinstance(last_event_id, str) or last_event_id is None
        else last_event_id
    )
    # A first frame at once, so clients and proxies see the stream open before any event.
    yield encode_comment("connected")
    # A resumed whole-queue stream also learns of the jobs that finished meanwhile.
    after = seen if job_id is None else None
    async with queue.subscribe(job_id=job_id, type=job_type, after_seq=after) as subscription:
        events = subscription.__aiter__()
        while True:
            event: JobEvent | None = None
            overflowed = False
            # Never yield inside the timeout scope: a cancel scope must not span a yield.
            with anyio.move_on_after(heartbeat):
                try:
                    event = await events.__anext__()
                except StopAsyncIteration:
                    return
                except SubscriberOverflow:
                    overflowed = True
            if overflowed:
                # The client reconnects and gets fresh snapshots: nothing is lost.
                yield encode_comment("overflow: reconnect")
                return
            if event is None:
                yield encode_comment("ping")
                continue
            if seen is not None and 0 < event.seq <= seen:
                continue
            if visible is not None and not visible(event.job):
                continue
            yield encode_event(event) if frames is None else frames.encode(event)
            if job_id is not None and (
                event.type.is_final or (event.type is EventType.SNAPSHOT and event.job.is_terminal)
            ):
                return


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
