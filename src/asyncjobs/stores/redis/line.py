"""One pipelined connection for the store's script calls.

A call through redis-py's client takes a connection from the pool (a lock, a check that
the socket has nothing unread), wraps the command in its retry machinery, reads one
reply and gives the connection back: in a worker draining a queue, and in a loop of
submits, that was more Python time than the store's own work around the call. The
scripts are the store's hot path, so they go through a :class:`ScriptLine` instead:

* one connection, made by the pool's own connection class and settings (password, TLS,
  database, client setup are the pool's), that every script call of the store shares;
* a call writes its command at once, whatever is in flight (Redis answers in order), and
  one reader task hands each reply to its caller: calls made together cost one round
  trip, not one each, and no call waits for a connection;
* a caller that is cancelled stops waiting; its reply is still read and dropped, so the
  replies of the others stay in step;
* when the connection breaks, every call in flight fails with ``ConnectionError`` and
  is sent again on a new connection (as redis-py's retry did: a script whose reply was
  lost may have run; the store's callers already tell their own landed write from
  another's), with redis-py's backoff, for up to ``reconnect_timeout`` seconds.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, final

__all__ = ["ScriptLine", "open_line"]

_RETRYABLE = (ConnectionError, TimeoutError, OSError)


@final
class ScriptLine:
    """Script calls over one connection, pipelined. Made by :func:`open_line`."""

    def __init__(self, make: Any, pack: Any, reader_of: Any, errors: Any, backoff: Any) -> None:
        self._make = make  # () -> a redis-py connection, not yet connected
        self._pack = pack  # args -> bytes (hiredis.pack_command)
        self._reader_of = reader_of  # connection -> a hiredis.Reader for its replies
        self._errors = errors  # the redis-py exception types a broken connection raises
        self._backoff, self._tries = backoff
        self._conn: Any = None
        self._writer: Any = None
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self._reading: asyncio.Task[None] | None = None
        self._connecting: asyncio.Lock | None = None
        self._closed = False

    async def call(self, *args: Any) -> Any:
        """Send one command and return its reply (a Redis error reply is raised)."""
        packed = self._pack(args)
        failures = 0
        while True:
            if self._writer is None:
                # Retries through an outage with the pool's own policy: its failure is final.
                await self._connect()
            try:
                return await self._send(packed)
            except self._errors:
                if self._closed:
                    raise
                failures += 1
                if failures > self._tries:
                    raise
                await asyncio.sleep(self._backoff.compute(failures))

    async def _send(self, packed: bytes) -> Any:
        if self._writer is None:  # broke since the caller looked: counts as a failure
            raise ConnectionError("the Redis connection broke")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        # Appended and written in one step: replies come back in the order of writes.
        self._waiting.append(future)
        self._writer.write(packed)
        return await future

    async def _connect(self) -> None:
        from redis.exceptions import ConnectionError as RedisConnectionError

        if self._closed:
            raise RedisConnectionError("the store closed")
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._writer is not None:
                return
            conn = self._make()
            await conn.connect()  # retries through an outage with the pool's policy
            if self._closed:
                await conn.disconnect()
                raise RedisConnectionError("the store closed")
            self._conn, self._writer = conn, conn._writer
            self._reading = asyncio.get_running_loop().create_task(
                self._read(conn, self._reader_of(conn), self._waiting)
            )

    async def _read(self, conn: Any, reader: Any, waiting: deque[asyncio.Future[Any]]) -> None:
        from redis.exceptions import ConnectionError as RedisConnectionError

        stream = conn._reader
        error: BaseException
        try:
            while True:
                data = await stream.read(65536)
                if not data:
                    raise RedisConnectionError("Redis closed the connection")
                reader.feed(data)
                reply = reader.gets()
                while reply is not False:
                    future = waiting.popleft()
                    if not future.done():  # its caller may have been cancelled
                        if isinstance(reply, Exception):
                            future.set_exception(reply)
                        else:
                            future.set_result(reply)
                    reply = reader.gets()
        except asyncio.CancelledError:
            error = RedisConnectionError("the store closed")
            raise
        except RedisConnectionError as exc:
            error = exc
        except Exception as exc:  # an OSError, a protocol error: the line is unusable
            error = RedisConnectionError(f"the Redis connection broke: {exc!r}")
        finally:
            # Nothing more can be read from this connection: whoever still waits on it
            # is told now (and sends again on a new one), never left hanging.
            if self._conn is conn:
                self._conn = self._writer = self._reading = None
                self._waiting = deque()
            for future in waiting:
                if not future.done():
                    future.set_exception(error)
            waiting.clear()
            await conn.disconnect(nowait=True)

    async def close(self) -> None:
        self._closed = True
        task = self._reading
        if task is not None:
            task.cancel()
            await asyncio.wait({task}, timeout=5.0)
        elif self._conn is not None:
            await self._conn.disconnect(nowait=True)


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
