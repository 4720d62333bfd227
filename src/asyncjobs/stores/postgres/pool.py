"""The connection pool of :class:`~asyncjobs.stores.postgres.PostgresStore`.

Every call runs on a pooled connection and is retried when the connection drops: at
once on a fresh connection, and, while the server cannot be reached (a restart, a
failover), with backoff for up to ``reconnect_timeout`` seconds. Workers and the
janitor thus wait out an outage instead of failing. A call that is retried must be safe
to repeat: its first attempt may have committed before its reply was lost.

One connection is kept out of the pool for calls made one at a time (an idle queue's
submit, claim, finish): asyncpg's acquire and release cost about as much client CPU as
the statement itself. A call that finds it in use takes a pooled one as before; a call
that fails on it hands it back to the pool, whose release cleans it up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, final

import anyio

from .schema import import_asyncpg

__all__ = ["Pool", "connection_errors"]

logger = logging.getLogger("asyncjobs.store.postgres")

T = TypeVar("T")


async def _keep_session(conn: Any) -> None:
    """The pool's reset: nothing to undo (see :meth:`Pool.open`)."""


def connection_errors() -> tuple[type[BaseException], ...]:
    """The errors that mean "the server cannot be reached now": worth a retry."""
    asyncpg = import_asyncpg()
    return (
        OSError,
        asyncpg.PostgresConnectionError,
        # Includes "the database system is shutting down" and "... starting up".
        asyncpg.exceptions.OperatorInterventionError,
        asyncpg.InterfaceError,
        # A connection the server terminated while idle (or while it was being set up:
        # "cannot switch to state 12") can be left in a state where the next query
        # fails this way before the socket reports closed.
        asyncpg.exceptions.InternalClientError,
    )


@final
class Pool:
    """An asyncpg pool that retries calls across dropped connections and outages."""

    def __init__(self, raw: Any, reconnect_timeout: float) -> None:
        self._raw = raw
        self._reconnect_timeout = reconnect_timeout
        self._closed = False
        # The connection kept for calls one at a time (None until the first such call,
        # or after one failed on it); never with a pool of one, which it would empty.
        self._own: Any = None
        self._own_busy = raw.get_max_size() < 2
        self._errors = connection_errors()
        # A statement past command_timeout leaves its connection mid-query too.
        self._broken: tuple[type[BaseException], ...] = (*self._errors, asyncio.TimeoutError)

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        name: str,
        min_size: int,
        max_size: int,
        reconnect_timeout: float,
        command_timeout: float | None = None,
    ) -> Pool:
        raw = await import_asyncpg().create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            command_timeout=command_timeout,
            server_settings={
                # Named so that operators see who holds a connection in pg_stat_activity.
                "application_name": name,
                # A queue table's statistics are nearly always wrong: taken while it
                # was empty, or never (a fresh schema). The planner then expects one
                # queued row and picks the head of the queue with a bitmap scan and a
                # sort of every queued job (O(depth): 9 ms at 6,000 deep) instead of
                # walking the claim index in order and stopping at the limit (0.3 ms).
                # No statement of the store needs a bitmap scan.
                "enable_bitmapscan": "off",
            },
            # asyncpg's default reset costs a round trip per release (UNLISTEN, RESET
            # ALL, advisory unlock): it doubled every call. This pool is the store's own
            # and leaves no session state (transaction-level locks only, LISTEN on a
            # connection of its own); asyncpg still rolls back a transaction left open
            # by a cancelled call, and ``run`` drops a connection that failed.
            reset=_keep_session,
        )
        return cls(raw, reconnect_timeout)

    async def close(self) -> None:
        self._closed = True
        own, self._own = self._own, None
        if own is not None and not self._own_busy:
            await self._raw.release(own)  # one in use is given back by its call
        try:
            await asyncio.wait_for(self._raw.close(), 5.0)
        except asyncio.TimeoutError:
            self._raw.terminate()

    async def run(
        self,
        op: Callable[[Any], Awaitable[T]],
        *,
        retry: bool = True,
        on_retry: Callable[[], None] | None = None,
    ) -> T:
        """Run ``op`` on a pooled connection; see the module docstring for retries.

        ``on_retry`` is called before each retry, e.g. so that ``op`` recomputes a time.
        """
        deadline: float | None = None
        backoff = 0.05
        # A server restart leaves every pooled connection dead, and each is found out
        # by a failed call: retry those at once (once per pooled connection); back off
        # only while no connection can be made.
        corpses = self._raw.get_max_size() + 1
        while True:
            in_op = False
            try:
                if not self._own_busy:
                    self._own_busy = True
                    try:
                        own = self._own
                        if own is None:
                            own = self._own = await self._raw.acquire()
                        in_op = True
                        return await self._run_own(own, op)
                    finally:
                        self._own_busy = False
                async with self._raw.acquire() as conn:
                    in_op = True
                    try:
                        return await op(conn)
                    except self._broken:
                        # Never hand it back: with no reset query on release, nothing
                        # else would notice a connection left in a broken state (a
                        # statement that hit command_timeout may still be running).
                        conn.terminate()
                        raise
            except self._errors as exc:
                if not retry or self._closed:
                    raise
                now = anyio.current_time()
                if deadline is None:
                    logger.warning("PostgreSQL connection error (%s); retrying", exc)
                    deadline = now + self._reconnect_timeout
                if now >= deadline:
                    raise
                if on_retry is not None:
                    on_retry()
                if in_op and corpses > 0:
                    corpses -= 1
                    continue
                logger.debug("PostgreSQL still unreachable (%s); retrying", exc)
                await anyio.sleep(min(backoff, deadline - now))
                backoff = min(backoff * 2, 1.0)

    async def _run_own(self, own: Any, op: Callable[[Any], Awaitable[T]]) -> T:
        try:
            result = await op(own)
        except BaseException as exc:
            # Whatever the state it was left in (mid-query after a cancellation, in a
            # failed transaction), the pool's release deals with it, or drops it.
            self._own = None
            if isinstance(exc, self._broken):
                own.terminate()
            await self._raw.release(own)
            raise
        if self._closed:
            self._own = None
            await self._raw.release(own)
        return result
