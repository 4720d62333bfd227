"""Commits that arrive together go to Redis together: one script call for the batch.

A worker with many slots finishes many jobs at nearly the same moment. The changes that
queue up while the previous batch is in flight are written by one call of the commit
script (:data:`.scripts.COMMIT`): one round trip, one script run, and the batch's index
updates as one variadic command per index, while each change still lands or not on its
own (its version and lease are checked as if it came alone).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, final

__all__ = ["CommitBatcher"]

Change = Sequence[str]


@final
class CommitBatcher:
    """Runs ``send(changes) -> replies`` for the changes made while a batch is in flight.

    The batches are sent by a task the batcher owns, so a caller that is cancelled
    stops waiting for its reply without cancelling anybody else's. ``limit`` bounds a
    batch (the script blocks the server while it runs).
    """

    def __init__(
        self, send: Callable[[list[Change]], Awaitable[list[Any]]], *, limit: int = 500
    ) -> None:
        self._send = send
        self._limit = limit
        self._pending: list[tuple[Change, asyncio.Future[Any]]] = []
        self._task: asyncio.Task[None] | None = None

    async def call(self, change: Change) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((change, future))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._flush())
        # A caller cancelled here cancels only its own future (the batch goes on; its
        # reply for this change is dropped).
        return await future

    async def _flush(self) -> None:
        while self._pending:
            batch = self._pending[: self._limit]
            del self._pending[: self._limit]
            try:
                replies = await self._send([change for change, _ in batch])
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
