"""Where a handler runs: on the event loop, in a worker thread, or in a child process.

A thread or a process running a handler is awaited, never abandoned: the job keeps its
worker slot (and the worker keeps renewing its lease) until the body has returned, so
a job is never handed to anyone else while its body still runs in this process.

* ``loop``: an ``async def`` handler, cancelled by ordinary anyio cancellation.
* ``thread``: a sync handler on a per-queue :class:`anyio.CapacityLimiter`. Threads
  cannot be interrupted: on a cancel, a timeout or a shutdown the handler's
  :class:`~asyncjobs.ThreadJobContext` turns ``cancelled`` and its next ``progress``
  raises :class:`~asyncjobs.errors.JobCancelled`.
* ``process``: the handler runs in a child process of its own (``forkserver`` where
  the platform has it, else ``spawn``; never ``fork``, which copies the running loop
  and its locks). Params and the result cross the boundary as JSON, progress as
  messages on a pipe; a cancel, a timeout or a shutdown terminate the child.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import multiprocessing
import signal
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from typing import Any, Final

import anyio

from .context import JobContext, ProcessJobContext, ThreadJobContext
from .job import Job, JobError

__all__ = ["Executor", "HandlerFailed", "run_in_process", "run_in_thread"]

logger = logging.getLogger("asyncjobs.worker")

#: Seconds a terminated child gets to exit before it is killed.
TERMINATE_GRACE: Final = 2.0


class Executor(str, enum.Enum):
    """Where a job type's handler runs (``job_type(..., executor=...)``)."""

    LOOP = "loop"
    THREAD = "thread"
    PROCESS = "process"


class HandlerFailed(Exception):
    """A handler in a child process raised; ``error`` is what it raised, as data."""

    def __init__(self, error: JobError) -> None:
        super().__init__(error.message)
        self.error = error


def _error_of(exc: BaseException) -> JobError:
    return JobError(
        type=type(exc).__qualname__,
        message=str(exc),
        traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
    )


# -- threads -------------------------------------------------------------------------


async def run_in_thread(
    handler: Callable[..., Any], ctx: JobContext, params: Any, limiter: anyio.CapacityLimiter
) -> Any:
    """Run a sync handler in a worker thread and wait for it, however it is cancelled.

    A cancellation of the caller (a cancel request, the timeout, a shutdown) is passed
    to the thread through its context; the call still returns only once the thread
    has, and then the caller's cancellation takes its course.
    """
    thread_ctx = ThreadJobContext(ctx)
    returned = False

    async def tell_on_cancel() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            if not returned:
                ctx._cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(tell_on_cancel)
        try:
            # Not abandon_on_cancel: the slot is held until the thread returns.
            return await anyio.to_thread.run_sync(handler, thread_ctx, params, limiter=limiter)
        finally:
            returned = True
            tg.cancel_scope.cancel()


# -- processes -----------------------------------------------------------------------


def process_context() -> BaseContext:
    """The multiprocessing context process handlers start in."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def _child_main(
    conn: Connection,
    handler: Callable[..., Any],
    params_cls: type | None,
    record: dict[str, Any],
) -> None:
    """The child's side: structure the params, run the handler, send the outcome."""
    from .codec import job_from_record
    from .params import make_params_converter

    # Ctrl-C reaches the whole process group: the worker decides whether this child
    # ends (its shutdown grace, then terminate), not the terminal.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        job = job_from_record(record)
        params: Any = dict(job.params)
        if params_cls is not None:
            params = make_params_converter().structure(params, params_cls)
        if asyncio.iscoroutinefunction(handler):

            async def sink(fraction: float, message: str | None) -> None:
                conn.send(("progress", fraction, message))

            result = asyncio.run(handler(JobContext(job, sink), params))
        else:
            result = handler(ProcessJobContext(job, conn.send), params)
        conn.send(("result", json.dumps(result)))
    except BaseException as exc:  # the child's job boundary: report, then exit
        error = _error_of(exc)
        conn.send(("error", error.type, error.message, error.traceback))
    finally:
        conn.close()


async def _receive(conn: Connection) -> Any:
    """The child's next message, or None once it has closed its end."""
    await anyio.wait_readable(conn.fileno())
    try:
        # Readable means a message is arriving; a large one may take a moment.
        return await anyio.to_thread.run_sync(conn.recv)
    except EOFError:
        return None


async def _wait_exit(process: Any, timeout: float) -> bool:
    with anyio.move_on_after(timeout):
        await anyio.wait_readable(process.sentinel)
        return True
    return False


async def _end(process: Any) -> None:
    """Make sure the child is gone: terminate it, then kill it if it lingers."""
    if process.exitcode is None:
        process.terminate()
        if not await _wait_exit(process, TERMINATE_GRACE):
            logger.warning("process %s ignored SIGTERM; killing it", process.pid)
            process.kill()
            await _wait_exit(process, TERMINATE_GRACE)
    process.join(0)
    if process.exitcode is not None:
        process.close()


async def run_in_process(
    handler: Callable[..., Any],
    ctx: JobContext,
    job: Job,
    params_cls: type | None,
    mp_context: BaseContext,
) -> Any:
    """Run a handler in a child process of its own and return its result.

    Raises:
        HandlerFailed: the handler raised, or its process died without an answer.
    """
    from .codec import job_to_record

    reader, writer = mp_context.Pipe(duplex=False)
    process: Any = mp_context.Process(  # type: ignore[attr-defined]
        target=_child_main,
        args=(writer, handler, params_cls, job_to_record(job)),
        name=f"asyncjobs-{job.type}-{job.id}",
        daemon=True,
    )
    try:
        # Starting writes the spawn preparation data: a blocking call.
        await anyio.to_thread.run_sync(process.start)
        writer.close()  # our copy: the child's exit must read as EOF
        while True:
            message = await _receive(reader)
            if message is None:
                break
            kind = message[0]
            if kind == "progress":
                await ctx.progress(message[1], message[2])
            elif kind == "result":
                return json.loads(message[1])
            elif kind == "error":
                raise HandlerFailed(
                    JobError(type=message[1], message=message[2], traceback=message[3])
                )
        with anyio.move_on_after(TERMINATE_GRACE, shield=True):
            await _wait_exit(process, TERMINATE_GRACE)
        raise HandlerFailed(
            JobError(
                type="ProcessDied",
                message=f"the handler's process exited with code {process.exitcode} "
                "without a result",
                traceback=None,
            )
        )
    finally:
        writer.close()
        with anyio.move_on_after(3 * TERMINATE_GRACE, shield=True):
            if process.pid is not None or process.exitcode is not None:
                await _end(process)
        reader.close()
