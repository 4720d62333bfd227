"""Commits that arrive together go to Redis together: one pipeline, one round trip.

A worker with many slots finishes many jobs at nearly the same moment. Each finish is
its own atomic script call (a pipeline is not a transaction), but sending the calls
that queued up while the previous batch was in flight as one pipeline saves a round
trip, a pooled connection and a socket write per call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, final

__all__ = ["CommitBatcher"]

Call = tuple[str, Sequence[Any]]


@final
class CommitBatcher:
    """Runs ``send(calls) -> replies`` for batches of calls made while one is in flight.

    The batches are sent by a task the batcher owns, so a caller that is cancelled
    stops waiting for its reply without cancelling anybody else's.
    """

    def __init__(self, send: Callable[[list[Call]], Awaitable[list[Any]]]) -> None:
        self._send = send
        self._pending: list[tuple[Call, asyncio.Future[Any]]] = []
        self._task: asyncio.Task[None] | None = None

    async def call(self, key: str, args: Sequence[Any]) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append(((key, args), future))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._flush())
        return await asyncio.shield(future)

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                replies = await self._send([call for call, _ in batch])
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            except BaseException as exc:  # cancelled (the store closes): nobody hangs
                for _, future in batch + self._pending:
                    if not future.done():
                        future.set_exception(ConnectionError("the store closed"))
                self._pending = []
                raise exc
            for (_, future), reply in zip(batch, replies, strict=True):
                if not future.done():
                    future.set_result(reply)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=5.0)
