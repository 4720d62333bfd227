"""SseHub: one task writes the live frames of every SSE connection of an app.

With a task per connection, every event wakes K tasks: K futures and K loop callbacks
that live until each task's turn, which at thousands of connections keeps the garbage
collector busy (the objects outlive the young generations and trigger full
collections of a heap that grows with K). The hub instead has one connection's task,
the *leader*, wait for the bus and then, for each connection in turn, take its pending
events (the connection's own subscriber still filters, coalesces and bounds them),
encode them (once per event, shared) and start its ``send``. A ``send`` that completes
at once (the socket took the bytes) costs no task switch; one that has to wait (a
client slow to read) is handed to the connection's own task to finish, and that
connection writes for itself until it has caught up. The connection's own task also
does what may read the store: the start (snapshots), a resync, the end of the stream.

The hub only drives a ``send`` it knows to be task-agnostic: uvicorn's own (see
:func:`direct_send`), which reads neither the current task nor context variables, so a
send started in the leader's task may finish in the connection's own. Any other ``send``
(another server, a host's middleware) is written by the connection's own task, as
before. Leadership passes to another connection when the leader's stream ends, its
client leaves, or its own ``send`` has to wait; no task outlives the connections, so
nothing needs the app's lifespan.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Generator
from typing import TYPE_CHECKING, Any, Final, final

import anyio
from starlette.types import Message, Send

if TYPE_CHECKING:
    from .sse import SseFeed

__all__ = ["SseHub", "direct_send"]

#: The modules whose ``RequestResponseCycle.send`` the hub may start in one task and
#: finish in another: it awaits nothing but flow control (an ``asyncio.Event``) and
#: reads neither the current task nor context variables.
_TASK_AGNOSTIC = frozenset(
    {"uvicorn.protocols.http.httptools_impl", "uvicorn.protocols.http.h11_impl"}
)


def direct_send(send: Send) -> bool:
    """Whether ``send`` is an ASGI server's own, which the hub may drive from any task."""
    owner = getattr(send, "__self__", None)
    return (
        owner is not None
        and getattr(send, "__name__", "") == "send"
        and type(owner).__module__ in _TASK_AGNOSTIC
    )


@final
class _Resume:
    """Finishes, in the awaiting task, a ``send`` another task started and that waits."""

    __slots__ = ("_first", "_steps")

    def __init__(self, steps: Generator[Any, Any, Any], first: Any) -> None:
        self._steps = steps
        self._first = first

    def __await__(self) -> Generator[Any, Any, None]:
        value = self._first  # what the send is waiting on (a future, or None: a yield)
        steps = self._steps
        while True:
            try:
                sent = yield value
            except BaseException as exc:  # cancellation (the client left) goes in too
                try:
                    value = steps.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    value = steps.send(sent)
                except StopIteration:
                    return


@final
class _Conn:
    """One connection: its feed, its ``send``, and what its own task must do."""

    __slots__ = (
        "error",
        "feed",
        "first",
        "heartbeat",
        "last",
        "lead",
        "own",
        "send",
        "steps",
        "waiter",
    )

    def __init__(self, feed: SseFeed, send: Send) -> None:
        self.feed = feed
        self.send = send
        self.heartbeat = feed.heartbeat
        self.last = time.monotonic()
        # True while the connection's own task writes (the leader skips it then).
        self.own = True
        self.lead = False  # elected: its task is to lead
        self.steps: Generator[Any, Any, Any] | None = None  # a send the leader started
        self.first: Any = None
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None

    def signal(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def start_send(self, body: bytes, now: float) -> bool:
        """Start writing ``body``; True when done at once, False when it waits or failed."""
        message: Message = {"type": "http.response.body", "body": body, "more_body": True}
        try:
            steps = self.send(message).__await__()
            first = steps.send(None)
        except StopIteration:
            self.last = now
            return True
        except Exception as exc:  # the client went away (OSError) or the server refused
            self.error = exc
            return False
        self.steps, self.first = steps, first
        return False

    async def write(self, body: bytes) -> None:
        """Write ``body`` from the connection's own task."""
        await self.send({"type": "http.response.body", "body": body, "more_body": True})
        self.last = time.monotonic()


_CONNECTED: Final = b": connected\n\n"
_PING: Final = b": ping\n\n"


@final
class SseHub:
    """The SSE connections of one app, in rooms whose frames one leader task writes.

    A room holds the streams with one bus filter (the whole queue, one job type, one
    job): its leader waits on its own subscriber, whose filter group the bus wakes for
    every event any stream of the room may want.
    """

    __slots__ = ("_rooms",)

    def __init__(self) -> None:
        self._rooms: dict[tuple[str | None, str | None], _Room] = {}

    @property
    def connections(self) -> int:
        """The streams being served."""
        return sum(len(room.conns) for room in self._rooms.values())

    async def serve(self, feed: SseFeed, send: Send) -> None:
        """Write ``feed`` to ``send`` (a :func:`direct_send`) until the stream ends.

        It returns when the stream ended or the client went away (the server raised
        :class:`OSError`); the caller sends the last message.
        """
        key = feed.filter_key
        room = self._rooms.get(key)
        if room is None:
            room = self._rooms[key] = _Room()
        try:
            await room.serve(feed, send)
        finally:
            if not room.conns and self._rooms.get(key) is room:
                del self._rooms[key]


@final
class _Room:
    __slots__ = ("conns", "leader", "shortest")

    def __init__(self) -> None:
        self.conns: dict[_Conn, None] = {}  # insertion-ordered: a stable pass order
        self.leader: _Conn | None = None
        self.shortest = 3600.0  # the shortest heartbeat of any stream that joined

    async def serve(self, feed: SseFeed, send: Send) -> None:
        conn = _Conn(feed, send)
        self.conns[conn] = None
        self.shortest = min(self.shortest, conn.heartbeat)
        try:
            await conn.write(_CONNECTED)
            while not feed.closed:
                if conn.error is not None:
                    raise conn.error
                if conn.own:
                    await self._catch_up(conn)
                elif conn.lead or self.leader is None:
                    await self._lead(conn)
                else:
                    await self._follow(conn)
        except OSError:  # the client went away mid-write (ASGI 2.4 servers raise this)
            pass
        finally:
            del self.conns[conn]
            if self.leader is conn:
                self.leader = None
                self._elect()

    async def _follow(self, conn: _Conn) -> None:
        """Wait until the leader hands this connection something to do."""
        conn.waiter = asyncio.get_running_loop().create_future()
        try:
            await conn.waiter
        finally:
            conn.waiter = None

    async def _catch_up(self, conn: _Conn) -> None:
        """Write from the connection's own task until nothing is pending, then rejoin."""
        feed = conn.feed
        if conn.steps is not None:
            steps, first = conn.steps, conn.first
            conn.steps = conn.first = None
            await _Resume(steps, first)
            conn.last = time.monotonic()
        while not feed.closed:
            chunk = await feed.poll_chunk()
            if not chunk:
                break
            await conn.write(chunk)
        conn.own = False  # no await since the last poll: nothing pending is missed

    async def _lead(self, me: _Conn) -> None:
        """Write every connection's frames until this connection has to write its own."""
        self.leader = me
        me.lead = False
        try:
            deadline = self._pass()
            while self.leader is me and not me.own and not me.feed.closed:
                # Its own subscriber's group is the room's: every event wakes it.
                with anyio.move_on_after(max(0.0, deadline - time.monotonic())):
                    await me.feed.wait()
                deadline = self._pass()
        finally:
            if self.leader is me:
                self.leader = None
                self._elect()

    def _pass(self) -> float:
        """Write each connection's pending frames; returns the next heartbeat deadline."""
        now = time.monotonic()
        deadline = now + 3600.0
        for conn in self.conns:
            if conn.own:
                continue
            feed = conn.feed
            chunk = feed.take_chunk()
            if chunk is None:  # the start, a resync or the end: its own task reads the store
                conn.own = True
                conn.signal()
                continue
            if not chunk:
                due = conn.last + conn.heartbeat
                if due > now:
                    if due < deadline:
                        deadline = due
                    continue
                chunk = _PING
            if conn.start_send(chunk, now) and not feed.closed:
                continue
            conn.own = True  # it waits on its client, failed, or its stream ended
            conn.signal()
        # Sends stamp `now`: a connection written in this pass is due a ping one
        # heartbeat after it (the shortest heartbeat in the room bounds the wait).
        return min(deadline, now + self.shortest)

    def _elect(self) -> None:
        """Hand leadership to a connection whose task is free."""
        for conn in self.conns:
            if not conn.own:
                self.leader = conn
                conn.lead = True
                conn.signal()
                return
