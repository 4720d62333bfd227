"""The LISTEN connection of :class:`~asyncjobs.stores.postgres.PostgresStore`.

LISTEN needs a connection of its own: a pooled connection is handed to other queries
and reset between uses, which would drop the subscription. This one connection lives
as long as the store is open. If it drops (the server restarted, an admin terminated
it, the network broke), it reconnects with capped exponential backoff and then calls
``on_reconnect``: notifications sent while nobody listened are lost, so the store
resyncs (subscriptions re-read their jobs, idle workers wake and claim).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from ..tasks import BackgroundTasks, TaskHandle

__all__ = ["Listener"]

logger = logging.getLogger("asyncjobs.store.postgres")


class Listener:
    """One dedicated connection that LISTENs on ``channel`` and survives disconnects."""

    def __init__(
        self,
        dsn: str,
        channel: str,
        on_payload: Callable[[str], None],
        on_reconnect: Callable[[], None],
        *,
        ping_interval: float = 5.0,
        max_backoff: float = 5.0,
    ) -> None:
        self._dsn = dsn
        self._channel = channel
        self._on_payload = on_payload
        self._on_reconnect = on_reconnect
        self._ping_interval = ping_interval
        self._max_backoff = max_backoff
        self._conn: Any = None
        self._lost = asyncio.Event()
        self._task: TaskHandle | None = None
        #: How many times the connection was re-established (tests and metrics read it).
        self.reconnects = 0

    @property
    def backend_pid(self) -> int | None:
        """The server process id of the LISTEN connection (None while disconnected)."""
        conn = self._conn
        return None if conn is None or conn.is_closed() else int(conn.get_server_pid())

    async def start(self, tasks: BackgroundTasks) -> None:
        """Connect once (errors propagate to ``open()``), then watch the connection."""
        await self._connect()
        self._task = tasks.start_soon(self._watch, f"asyncjobs-listen-{self._channel}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await task.stop()
        await self._drop()

    async def _connect(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(
            self._dsn, server_settings={"application_name": f"{self._channel}:listen"[:63]}
        )
        try:
            self._lost = asyncio.Event()
            conn.add_termination_listener(self._terminated)
            await conn.add_listener(self._channel, self._notified)
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        conn.remove_termination_listener(self._terminated)
        if not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), 2.0)
            except Exception:  # closing a broken socket can fail in many ways: drop it
                conn.terminate()

    def _terminated(self, conn: Any) -> None:
        if conn is self._conn:
            self._lost.set()

    def _notified(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        try:
            self._on_payload(payload)
        except Exception:  # one bad payload must not kill the subscription
            logger.exception("failed to handle a notification on %s", channel)

    async def _watch(self) -> None:
        while True:
            await self._wait_until_lost()
            logger.warning("LISTEN connection on %s lost; reconnecting", self._channel)
            await self._drop()
            backoff = 0.05
            while True:
                try:
                    await self._connect()
                    break
                except Exception as exc:  # any failure to connect: back off, try again
                    logger.warning("reconnect failed (%s); retrying in %.2fs", exc, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self._max_backoff)
            self.reconnects += 1
            logger.info("LISTEN connection on %s restored", self._channel)
            self._on_reconnect()

    async def _wait_until_lost(self) -> None:
        """Return when the connection dropped, or stopped answering pings."""
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._lost.wait(), self._ping_interval)
            if self._lost.is_set() or self._conn is None or self._conn.is_closed():
                return
            try:  # a half-open TCP connection never reports itself: ask it
                await self._conn.fetchval("SELECT 1", timeout=self._ping_interval)
            except Exception:  # no answer, or a broken connection: reconnect
                return
