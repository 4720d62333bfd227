"""The background tasks of one store, in one task group the store owns.

A store is opened and closed by plain calls (``open()``/``close()``), not an ``async
with`` in the caller's task, so its task group runs in a task of its own: the one place
where a store starts a task. Every background loop (LISTEN keeper, event tailer, finish
batcher) is started with :meth:`BackgroundTasks.start_soon` and stopped with the handle
it returns, or all together by :meth:`BackgroundTasks.aclose`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, final

import anyio
import anyio.abc

__all__ = ["BackgroundTasks", "TaskHandle"]

logger = logging.getLogger("asyncjobs.store")


@final
class TaskHandle:
    """One background task: :meth:`stop` cancels it and waits until it has ended."""

    __slots__ = ("_done", "name", "scope")

    def __init__(self, name: str) -> None:
        self.name = name
        self.scope = anyio.CancelScope()
        self._done = anyio.Event()

    async def stop(self) -> None:
        self.scope.cancel()
        await self._done.wait()


@final
class BackgroundTasks:
    """A task group in a task of its own; see the module docstring."""

    __slots__ = ("_name", "_runner", "_tg")

    def __init__(self, name: str) -> None:
        self._name = name
        self._tg: anyio.abc.TaskGroup | None = None
        self._runner: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._tg is not None

    async def start(self) -> None:
        """Start the task group (idempotent)."""
        if self._runner is not None:
            return
        ready = anyio.Event()

        async def hold() -> None:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                ready.set()
                await anyio.sleep_forever()

        self._runner = asyncio.get_running_loop().create_task(hold(), name=self._name)
        await ready.wait()

    def start_soon(self, fn: Callable[[], Awaitable[Any]], name: str) -> TaskHandle:
        """Run ``fn()`` in the group; a crash is logged and ends only that task."""
        if self._tg is None:
            raise RuntimeError(f"{self._name}: start() the background tasks first")
        handle = TaskHandle(name)

        async def body() -> None:
            try:
                with handle.scope:
                    await fn()
            except Exception:  # a crashed loop must not take the store's others down
                logger.exception("store background task %s crashed", name)
            finally:
                handle._done.set()

        self._tg.start_soon(body, name=name)
        return handle

    async def aclose(self) -> None:
        """Cancel every task and wait until they have ended (idempotent)."""
        runner, self._runner = self._runner, None
        self._tg = None
        if runner is None:
            return
        runner.cancel()
        # asyncio.wait, not await: the runner's CancelledError is ours and must not be
        # mistaken for a cancellation of the caller (which asyncio.wait still raises).
        await asyncio.wait([runner])
