"""One pipelined connection for the store's script calls.

A call through redis-py's client takes a connection from the pool (a lock, a check that
the socket has nothing unread), wraps the command in its retry machinery, reads one
reply and gives the connection back: in a worker draining a queue, and in a loop of
submits, that was more Python time than the store's own work around the call. The
scripts are the store's hot path, so they go through a :class:`ScriptLine` instead:

* one connection, set up by the pool's own connection class and settings (password,
  TLS, database, client setup are the pool's), that every script call of the store
  shares; once set up, its transport is read by this module's protocol, which feeds
  what arrives to hiredis and hands each reply to its caller as the bytes come in (no
  reader task to wake per reply);
* a call writes its command at once, whatever is in flight (Redis answers in order):
  calls made together cost one round trip, not one each, and no call waits for a
  connection;
* a caller that is cancelled stops waiting; its reply is still read and dropped, so the
  replies of the others stay in step;
* when the connection breaks, every call in flight fails with ``ConnectionError`` and
  is sent again on a new connection (as redis-py's retry did: a script whose reply was
  lost may have run; the store's callers already tell their own landed write from
  another's), with redis-py's backoff, for as many tries as the pool's retry policy.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, final

__all__ = ["ScriptLine", "open_line"]

_RETRYABLE = (ConnectionError, TimeoutError, OSError)


@final
class _Replies(asyncio.Protocol):
    """Reads one connection's replies and hands them, in order, to the waiting calls."""

    def __init__(self, reader: Any, broken: Any) -> None:
        self.reader = reader  # a hiredis.Reader
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.transport: Any = None
        # Kept until the connection is gone: asyncio warns of a StreamWriter dropped
        # while its transport is open.
        self.writer: Any = None
        self.lost: BaseException | None = None  # set once: the connection is unusable
        self._broken = broken  # the error a lost connection raises in its callers

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        try:
            reply = reader.gets()
            while reply is not False:
                future = self.waiting.popleft()
                if not future.done():  # its caller may have been cancelled
                    if isinstance(reply, Exception):
                        future.set_exception(reply)
                    else:
                        future.set_result(reply)
                reply = reader.gets()
        except Exception as exc:  # a protocol error: nothing more can be read in step
            self.fail(self._broken(f"the Redis connection broke: {exc!r}"))
            self.transport.close()

    def eof_received(self) -> bool:
        self.fail(self._broken("Redis closed the connection"))
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(self._broken(f"the Redis connection was lost: {exc!r}"))

    def fail(self, error: BaseException) -> None:
        if self.lost is None:
            self.lost = error
        waiting, self.waiting = self.waiting, deque()
        for future in waiting:
            if not future.done():
                future.set_exception(error)


@final
class ScriptLine:
    """Script calls over one connection, pipelined. Made by :func:`open_line`."""

    def __init__(self, make: Any, pack: Any, reader_of: Any, errors: Any, retry: Any) -> None:
        self._make = make  # () -> a redis-py connection, not yet connected
        self._pack = pack  # args -> bytes (hiredis.pack_command)
        self._reader_of = reader_of  # connection -> a hiredis.Reader for its replies
        self._errors = errors  # the exception types of a broken connection
        self._backoff, self._tries = retry
        self._replies: _Replies | None = None
        self._connecting: asyncio.Lock | None = None
        self._closed = False

    async def call(self, *args: Any) -> Any:
        """Send one command and return its reply (a Redis error reply is raised)."""
        packed = self._pack(args)
        failures = 0
        while True:
            replies = self._replies
            if replies is None or replies.lost is not None:
                # Retries through an outage with the pool's own policy: its failure is final.
                replies = await self._connect()
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            # Appended and written in one step: replies come back in the order of writes.
            replies.waiting.append(future)
            replies.transport.write(packed)
            try:
                return await future
            except self._errors:
                if self._closed:
                    raise
                failures += 1
                if failures > self._tries:
                    raise
                await asyncio.sleep(self._backoff.compute(failures))

    async def _connect(self) -> _Replies:
        from redis.exceptions import ConnectionError as RedisConnectionError

        if self._closed:
            raise RedisConnectionError("the store closed")
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            replies = self._replies
            if replies is not None and replies.lost is None:
                return replies
            conn = self._make()
            await conn.connect()  # retries through an outage with the pool's policy
            writer = conn._writer
            transport = writer.transport
            # The handshake's replies were all read: from here on the socket is ours, and
            # redis-py's connection object no longer holds it.
            replies = _Replies(self._reader_of(conn), RedisConnectionError)
            replies.transport, replies.writer = transport, writer
            conn._parser.on_disconnect()
            conn._reader = conn._writer = None
            transport.set_protocol(replies)
            if self._closed:
                transport.close()
                raise RedisConnectionError("the store closed")
            self._replies = replies
            return replies

    async def close(self) -> None:
        from redis.exceptions import ConnectionError as RedisConnectionError

        self._closed = True
        replies, self._replies = self._replies, None
        if replies is not None:
            replies.fail(RedisConnectionError("the store closed"))
            replies.transport.close()


def open_line(client: Any, *, name: str) -> ScriptLine | None:
    """A :class:`ScriptLine` on ``client``'s pool settings (its retry policy included),
    its connection named ``name`` in ``CLIENT LIST``; None without hiredis (the store
    then calls through ``client``)."""
    try:
        import hiredis
    except ImportError:  # pragma: no cover (hiredis is part of asyncjobs[redis])
        return None
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import InvalidResponse
    from redis.exceptions import TimeoutError as RedisTimeoutError

    pool = client.connection_pool
    kwargs = dict(pool.connection_kwargs)
    retry = kwargs["retry"]
    kwargs["client_name"] = name

    def make() -> Any:
        return pool.connection_class(**kwargs)

    def reader_of(conn: Any) -> Any:
        # Errors as redis-py makes them (NoScriptError, ResponseError...); False, which
        # no reply decodes to (a false Redis reply is 0 or nil), when a reply is partial.
        return hiredis.Reader(
            protocolError=InvalidResponse, replyError=conn._parser.parse_error, notEnoughData=False
        )

    return ScriptLine(
        make,
        hiredis.pack_command,
        reader_of,
        (RedisConnectionError, RedisTimeoutError, *_RETRYABLE),
        (retry._backoff, retry._retries),
    )
