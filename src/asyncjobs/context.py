"""JobContext: what a handler is given besides its params."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, final

import anyio.from_thread

from .errors import JobCancelled
from .job import Job
from .jsonrules import clean_text

__all__ = ["JobContext", "ProcessJobContext", "ThreadJobContext"]

ProgressSink = Callable[[float, "str | None"], Awaitable[None]]


@final
class JobContext:
    """Handed to every handler: the job it runs, progress reporting, a logger.

    Cancellation reaches an async handler as ordinary anyio cancellation. Sync handlers
    get a :class:`ThreadJobContext` instead.
    """

    __slots__ = ("_base_logger", "_cancelled", "_logger", "_sink", "job")

    def __init__(self, job: Job, sink: ProgressSink, logger: logging.Logger | None = None) -> None:
        self.job = job
        self._sink = sink
        self._cancelled = False
        self._base_logger = logger
        self._logger: logging.LoggerAdapter[logging.Logger] | None = None

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger that tags each record with the job's id and type."""
        # Built on first use: getLogger takes a lock, and most no-op jobs never log.
        if self._logger is None:
            base = self._base_logger or logging.getLogger("asyncjobs.job")
            self._logger = logging.LoggerAdapter(
                base, {"job_id": self.job.id, "job_type": self.job.type}
            )
        return self._logger

    @property
    def job_id(self) -> str:
        return self.job.id

    @property
    def attempt(self) -> int:
        """1 for the first attempt, 2 for the first retry, ..."""
        return self.job.attempts

    @property
    def cancelled(self) -> bool:
        """True once the job was cancelled, timed out, or its worker is shutting down."""
        return self._cancelled

    async def progress(self, fraction: float, message: str | None = None) -> None:
        """Report progress: ``fraction`` from 0.0 to 1.0 and an optional message.

        Raises:
            ValueError: ``fraction`` is outside 0.0 to 1.0.
            LeaseLost: this worker no longer holds the job (its lease expired).
        """
        _check_fraction(fraction)
        # A message no store could encode (a lone surrogate, NUL) is kept, repaired.
        await self._sink(float(fraction), None if message is None else clean_text(str(message)))

    def _cancel(self) -> None:
        self._cancelled = True


@final
class ThreadJobContext:
    """The thread-safe context a sync handler (run in a worker thread) gets.

    Threads cannot be interrupted, so cancellation is cooperative: once the job is
    cancelled (or timed out, or its worker shuts down), :meth:`progress` raises
    :class:`~asyncjobs.errors.JobCancelled`, and :attr:`cancelled` turns true. The
    worker never abandons the thread: the job keeps its slot and its lease until the
    handler returns, so check :attr:`cancelled` in long loops that report no progress.
    """

    __slots__ = ("_ctx",)

    def __init__(self, ctx: JobContext) -> None:
        self._ctx = ctx

    @property
    def job(self) -> Job:
        return self._ctx.job

    @property
    def job_id(self) -> str:
        return self._ctx.job.id

    @property
    def attempt(self) -> int:
        return self._ctx.attempt

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        return self._ctx.logger

    @property
    def cancelled(self) -> bool:
        return self._ctx.cancelled

    def progress(self, fraction: float, message: str | None = None) -> None:
        """Report progress from the handler's thread (blocks until stored).

        Raises:
            JobCancelled: the job was cancelled; let the exception end the handler.
        """
        if self._ctx.cancelled:
            raise JobCancelled(f"job {self._ctx.job_id} was cancelled")
        anyio.from_thread.run(self._ctx.progress, fraction, message)


def _check_fraction(fraction: float) -> None:
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"progress must be between 0.0 and 1.0, got {fraction!r}")


@final
class ProcessJobContext:
    """The context a sync handler with ``executor="process"`` gets in its child process.

    Progress goes to the worker over a pipe and is stored from there; it does not
    wait for the store. Cancellation, a timeout or a shutdown terminate the child
    process, so there is nothing to check for it here.
    """

    __slots__ = ("_send", "job", "logger")

    def __init__(self, job: Job, send: Callable[[Any], None]) -> None:
        self.job = job
        self._send = send
        base = logging.getLogger("asyncjobs.job")
        self.logger = logging.LoggerAdapter(base, {"job_id": job.id, "job_type": job.type})

    @property
    def job_id(self) -> str:
        return self.job.id

    @property
    def attempt(self) -> int:
        return self.job.attempts

    def progress(self, fraction: float, message: str | None = None) -> None:
        """Report progress: ``fraction`` from 0.0 to 1.0 and an optional message.

        Raises:
            ValueError: ``fraction`` is outside 0.0 to 1.0.
        """
        _check_fraction(fraction)
        self._send(("progress", float(fraction), message))
