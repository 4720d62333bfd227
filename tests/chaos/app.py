"""The Queue of the chaos tests, run by ``asyncjobs worker chaos.app:worker`` processes.

Every execution of a job writes a start and an end record to a journal, and the store
is wrapped so that each ``finish`` and ``renew`` call writes its outcome there too. The
test reads the journals of all processes afterwards and works out what happened:
which executions overlapped, which finish calls the store accepted, under which token.

Journals are append-only files, one per process (``<dir>/<pid>.jsonl``), written with
one ``write(2)`` per record on an ``O_APPEND`` descriptor. A record is in the kernel's
page cache when ``write`` returns, so it survives a ``kill -9`` of the process (only a
machine crash would need fsync, and fsync would block the event loop the heartbeats
run on). Times are ``time.time()``: one clock for every process, and the clock that
lease expiry is computed from.

The environment says where: ``ASYNCJOBS_CHAOS_URL`` (the store), ``ASYNCJOBS_CHAOS_LOG``
(the journal directory), ``ASYNCJOBS_CHAOS_CONCURRENCY``, ``ASYNCJOBS_CHAOS_LEASE``.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime
from typing import Any

import anyio

from asyncjobs import JanitorConfig, JobContext, Queue, WorkerConfig
from asyncjobs.errors import JobNotFound, LeaseLost
from asyncjobs.job import Job
from asyncjobs.stores.protocol import Outcome, Store

#: Enough attempts that no job runs out of them however often its worker is killed.
MAX_ATTEMPTS = 25


class Journal:
    """Append-only JSON lines, one file per process, opened on first use."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._fd: int | None = None

    def write(self, kind: str, **fields: Any) -> None:
        if self._fd is None:
            path = os.path.join(self.directory, f"{os.getpid()}.jsonl")
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        record = {"e": kind, "pid": os.getpid(), "t": time.time(), **fields}
        os.write(self._fd, (json.dumps(record) + "\n").encode())


class RecordingStore:
    """A store that journals the outcome of every ``finish`` and ``renew`` call and
    passes everything else through unchanged."""

    def __init__(self, inner: Store, journal: Journal) -> None:
        self._inner = inner
        self._journal = journal

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def open(self) -> None:
        await self._inner.open()
        self._journal.write("open")  # the test waits for this before it breaks things

    async def finish(self, job_id: str, token: str, outcome: Outcome, *, now: datetime) -> Job:
        began = time.time()
        try:
            job = await self._inner.finish(job_id, token, outcome, now=now)
        except (LeaseLost, JobNotFound) as exc:
            self._journal.write(
                "finish", job=job_id, token=token, status=outcome.status.value,
                ok=False, error=type(exc).__name__, began=began,
            )  # fmt: skip
            raise
        self._journal.write(
            "finish", job=job_id, token=token, status=outcome.status.value, ok=True, began=began
        )
        return job

    async def renew(self, job_id: str, token: str, *, lease: float, now: datetime) -> Job:
        job = await self._inner.renew(job_id, token, lease=lease, now=now)
        assert job.lease is not None
        self._journal.write(
            "renew", job=job_id, token=token, expires=job.lease.expires_at.timestamp()
        )
        return job


def build(url: str, journal_dir: str, *, concurrency: int, janitor: bool = True) -> Queue:
    """The chaos queue on ``url``, journaling into ``journal_dir``."""
    lease = float(os.environ.get("ASYNCJOBS_CHAOS_LEASE", "1.5"))
    queue = Queue(
        url,
        concurrency=concurrency,
        worker=WorkerConfig(lease=lease, heartbeat=lease / 3, idle_wait=0.25, shutdown_grace=2.0),
        janitor=JanitorConfig(enabled=janitor, interval=0.25),
    )
    journal = Journal(journal_dir)
    # Instrument the store the queue built from the URL (and still closes with itself).
    queue.store = RecordingStore(queue.store, journal)  # type: ignore[assignment]

    @queue.job_type("chaos", max_attempts=MAX_ATTEMPTS)
    async def chaos(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
        lease = ctx.job.lease
        assert lease is not None
        journal.write(
            "start", job=ctx.job_id, token=lease.token, attempt=ctx.attempt,
            expires=lease.expires_at.timestamp(),
        )  # fmt: skip
        how = "error"
        try:
            pauses = params["pauses"]
            for i, pause in enumerate(pauses):
                await anyio.sleep(pause)
                await ctx.progress((i + 1) / len(pauses), f"step {i + 1}")
            how = "ok"
            # The result names the execution whose finish the store accepted.
            return {"token": lease.token, "attempt": ctx.attempt, "pid": os.getpid()}
        except LeaseLost:
            how = "lost"
            raise
        except anyio.get_cancelled_exc_class():
            how = "cancelled"
            raise
        finally:
            journal.write("end", job=ctx.job_id, token=lease.token, how=how)

    return queue


def worker() -> Queue:
    """A worker process's queue (``asyncjobs worker chaos.app:worker``)."""
    concurrency = int(os.environ.get("ASYNCJOBS_CHAOS_CONCURRENCY", "2"))
    return build(
        os.environ["ASYNCJOBS_CHAOS_URL"],
        os.environ["ASYNCJOBS_CHAOS_LOG"],
        concurrency=concurrency,
    )


def web() -> Queue:
    """A web process's queue, running no jobs (``asyncjobs serve chaos.app:web``)."""
    return build(
        os.environ["ASYNCJOBS_CHAOS_URL"], os.environ["ASYNCJOBS_CHAOS_LOG"], concurrency=0
    )
