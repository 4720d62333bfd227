"""RemoteWorker: runs a registry's job types against a remote JobsApp over HTTP.

It holds no store credentials: it claims jobs from ``POST /worker/claim`` with a lease,
renews the lease while the handler runs, and ends each attempt with complete, fail or
release, every call fenced by the lease's token. Handlers get the same
:class:`~asyncjobs.context.JobContext` as in-process (progress, cancellation, attempt).

httpx comes from the ``cli`` extra and is imported only when a worker runs.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import socket
import traceback
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, final

import anyio
import attrs

from ._ulid import new_ulid
from .codec import job_from_record
from .context import JobContext, ThreadJobContext
from .errors import ConfigurationError, JobCancelled, LeaseLost
from .job import Job
from .registry import JobRegistry, JobType

if TYPE_CHECKING:
    import httpx

__all__ = ["RemoteWorker", "RemoteWorkerConfig"]

logger = logging.getLogger("asyncjobs.remote")


@attrs.frozen
class RemoteWorkerConfig:
    """How a remote worker runs jobs.

    Attributes:
        concurrency: Jobs run at once.
        lease: Seconds each claim and renewal lasts; a dead worker's jobs are requeued
            this long after its last heartbeat.
        heartbeat: Seconds between lease renewals (default ``lease / 3``).
        poll: Seconds one claim long-polls the server (the server may cut it).
        shutdown_grace: Seconds running jobs get to finish on shutdown before they are
            cancelled and given back (released) to the server.
        max_backoff: The longest pause between reconnection attempts.
    """

    concurrency: int = attrs.field(default=3, validator=attrs.validators.ge(1))
    lease: float = attrs.field(default=30.0, validator=attrs.validators.gt(0))
    heartbeat: float | None = None
    poll: float = attrs.field(default=30.0, validator=attrs.validators.ge(0))
    shutdown_grace: float = attrs.field(default=10.0, validator=attrs.validators.ge(0))
    max_backoff: float = attrs.field(default=5.0, validator=attrs.validators.gt(0))

    @property
    def heartbeat_interval(self) -> float:
        return self.heartbeat if self.heartbeat is not None else self.lease / 3


class _Stop(enum.Enum):
    CANCEL = "cancel"
    SHUTDOWN = "shutdown"
    LOST = "lost"


@attrs.define(eq=False)
class _Running:
    job: Job
    token: str
    ctx: JobContext
    scope: anyio.CancelScope = attrs.field(factory=anyio.CancelScope)
    stop: _Stop | None = None
    finishing: bool = False


class _Unavailable(Exception):
    """The server cannot be reached or answered 5xx: back off and try again."""


def _httpx() -> Any:
    try:
        import httpx
    except ImportError:
        raise ConfigurationError("RemoteWorker needs httpx: pip install 'asyncjobs[cli]'") from None
    return httpx


@final
class RemoteWorker:
    """Runs the job types of ``registry`` for the JobsApp at ``url``.

    Args:
        url: The JobsApp mount URL (``http://host:8000/`` or ``https://host/queue/``).
        registry: The job types to run (a ``Queue``'s ``registry`` works).
        token: A bearer token with the ``worker`` scope, if the server needs one.
        config: Concurrency, lease, heartbeat, long-poll and shutdown settings.
        types: Only these job types (default: every type in ``registry``).
        worker_id: How the server names this worker (default host:pid:random).

    Example::

        worker = RemoteWorker("http://jobs:8000/", queue.registry, token=os.environ["T"])
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            ...
            worker.stop()  # stop claiming, let running jobs finish within the grace
    """

    def __init__(
        self,
        url: str,
        registry: JobRegistry,
        *,
        token: str | None = None,
        config: RemoteWorkerConfig | None = None,
        types: Sequence[str] | None = None,
        worker_id: str | None = None,
    ) -> None:
        self.url = url.rstrip("/") + "/"
        self.registry = registry
        self.token = token
        self.config = config or RemoteWorkerConfig()
        self.types = list(types) if types else registry.names()
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{new_ulid()[-8:]}"
        self._running: dict[str, _Running] = {}
        self._stopping = False
        self._changed = anyio.Event()
        self._claim_scope: anyio.CancelScope | None = None
        self._client: httpx.AsyncClient | None = None

    @property
    def running_count(self) -> int:
        return len(self._running)

    def stop(self) -> None:
        """Stop claiming; :meth:`run` then drains the running jobs and returns."""
        self._stopping = True
        if self._claim_scope is not None:
            self._claim_scope.cancel()
        self._changed.set()

    async def _wait_changed(self) -> None:
        if self._changed.is_set():
            self._changed = anyio.Event()
        await self._changed.wait()

    # -- transport ---------------------------------------------------------------------

    async def _post(self, path: str, body: dict[str, Any], *, timeout: float = 30.0) -> Any:
        """POST JSON; the decoded reply.

        Raises:
            LeaseLost: 409 (or 404: the job is gone).
            _Unavailable: the server is down, restarting, or answered 5xx.
            ConfigurationError: 401, 403 or 422 (a wrong token or types: fix and restart).
        """
        httpx = _httpx()
        assert self._client is not None
        try:
            response = await self._client.post(path, json=body, timeout=timeout)
        except httpx.TransportError as exc:
            raise _Unavailable(f"{type(exc).__name__}: {exc}") from None
        if response.status_code == 409 or (response.status_code == 404 and "/jobs/" in path):
            raise LeaseLost(response.text)
        if response.status_code >= 500:
            raise _Unavailable(f"HTTP {response.status_code}")
        if response.status_code >= 400:
            raise ConfigurationError(
                f"the server refused {path} with HTTP {response.status_code}: {response.text}"
            )
        return response.json()

    # -- main loop ---------------------------------------------------------------------

    async def run(self) -> None:
        """Claim and run jobs until :meth:`stop`, then drain gracefully and return.

        Raises:
            ConfigurationError: the server refused the claim (401, 403, 404, 422): a
                wrong URL, token or job types. Running jobs are drained first.
        """
        httpx = _httpx()
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        async with httpx.AsyncClient(base_url=self.url, headers=headers) as client:
            self._client = client
            fatal: ConfigurationError | None = None
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._heartbeat_loop)
                    try:
                        await self._claim_loop(tg)
                    except ConfigurationError as exc:
                        fatal = exc  # a wrong token or URL: drain, then say so
                    await self._drain()
                    tg.cancel_scope.cancel()
            finally:
                self._client = None
            if fatal is not None:
                raise fatal

    async def _claim_loop(self, tg: anyio.abc.TaskGroup) -> None:
        cfg = self.config
        backoff = 0.1
        while not self._stopping:
            free = cfg.concurrency - len(self._running)
            if free <= 0:
                await self._wait_changed()
                continue
            body = {
                "worker": self.id,
                "types": self.types,
                "limit": free,
                "wait": cfg.poll,
                "lease": cfg.lease,
            }
            reply: Any = None
            with anyio.CancelScope() as self._claim_scope:
                try:
                    reply = await self._post("/worker/claim", body, timeout=cfg.poll + 30)
                except _Unavailable as exc:
                    logger.warning(
                        "cannot claim from %s (%s); retrying in %.1fs", self.url, exc, backoff
                    )
                    await anyio.sleep(backoff)
                    backoff = min(backoff * 2, cfg.max_backoff)
                    continue
                finally:
                    self._claim_scope = None
            if reply is None:
                continue  # stop() cut the long-poll
            backoff = 0.1
            for claimed in reply["jobs"]:
                job = job_from_record(claimed["job"])
                token = claimed["token"]
                stale = self._running.get(job.id)
                if stale is not None and stale.stop is None:
                    # We still run it under a lease that ran out (heartbeats stalled): the
                    # server handed it out again, so that run is fenced off.
                    self._halt(stale, _Stop.LOST)
                ctx = JobContext(job, self._progress_sink(job.id, token))
                running = _Running(job, token, ctx)
                self._running[job.id] = running
                tg.start_soon(self._run_job, running)

    async def _drain(self) -> None:
        with anyio.move_on_after(self.config.shutdown_grace):
            while self._running:
                await self._wait_changed()
        for running in list(self._running.values()):
            if running.stop is None:
                self._halt(running, _Stop.SHUTDOWN)
        while self._running:
            await self._wait_changed()

    def _halt(self, running: _Running, why: _Stop) -> None:
        running.stop = why
        running.ctx._cancel()
        running.scope.cancel()

    def _lease_reply(self, running: _Running, reply: Any) -> None:
        if reply.get("cancel_requested") and running.stop is None:
            self._halt(running, _Stop.CANCEL)

    def _progress_sink(self, job_id: str, token: str) -> Callable[[float, str | None], Any]:
        async def sink(fraction: float, message: str | None) -> None:
            body = {"token": token, "progress": fraction, "message": message}
            body["lease"] = self.config.lease
            try:
                reply = await self._post(f"/worker/jobs/{job_id}/progress", body)
            except _Unavailable as exc:
                # Progress is advisory: the job goes on; the heartbeat keeps the lease.
                logger.info("progress of job %s not delivered: %s", job_id, exc)
                return
            running = self._running.get(job_id)
            if running is not None and running.token == token:  # not a later claim's run
                self._lease_reply(running, reply)

        return sink

    async def _heartbeat_loop(self) -> None:
        while True:
            await anyio.sleep(self.config.heartbeat_interval)
            for running in list(self._running.values()):
                if running.stop is not None or running.finishing:
                    continue
                body = {"token": running.token, "lease": self.config.lease}
                try:
                    reply = await self._post(f"/worker/jobs/{running.job.id}/heartbeat", body)
                except _Unavailable as exc:
                    logger.warning("heartbeat for job %s failed (%s)", running.job.id, exc)
                    continue
                except LeaseLost:
                    if not running.finishing:
                        logger.warning("lost the lease on job %s; abandoning it", running.job.id)
                        self._halt(running, _Stop.LOST)
                    continue
                self._lease_reply(running, reply)

    # -- one job -----------------------------------------------------------------------

    async def _run_job(self, running: _Running) -> None:
        job = running.job
        path, body = None, None
        try:
            with running.scope:
                path, body = await self._attempt(self.registry.get(job.type), running)
            if running.stop is _Stop.CANCEL:
                path, body = "fail", {"error": {"type": "JobCancelled", "message": "cancelled"}}
            elif running.stop is _Stop.SHUTDOWN:
                path, body = "release", {}
            elif running.stop is _Stop.LOST:
                path = None
        finally:
            running.finishing = True
            if path is None and running.stop is None:
                path, body = "release", {}  # cancelled from outside: give it back
            with anyio.CancelScope(shield=True):
                if path is not None:
                    await self._finish(running, path, body or {})
                if self._running.get(job.id) is running:  # not a later claim's entry
                    del self._running[job.id]
                self._changed.set()

    async def _attempt(
        self, job_type: JobType, running: _Running
    ) -> tuple[str | None, dict[str, Any] | None]:
        job = running.job
        try:
            params = job_type.structure(job.params)
            if job.timeout is None:
                result = await self._call(job_type, running, params)
            else:
                with anyio.move_on_after(job.timeout) as timer:
                    result = await self._call(job_type, running, params)
                if timer.cancelled_caught:
                    running.ctx._cancel()
                    error = {
                        "type": "JobTimeout",
                        "message": f"job {job.id} exceeded its timeout of {job.timeout:g}s",
                    }
                    return "fail", {"error": error, "retry": False}
            json.dumps(result)  # fail here, with the handler's name on it, not in the transport
            return "complete", {"result": result}
        except LeaseLost:
            running.stop = _Stop.LOST
            return None, None
        except JobCancelled:
            return "fail", {"error": {"type": "JobCancelled", "message": "cancelled"}}
        except Exception as exc:  # the job boundary: any handler error fails the attempt
            if running.stop is not None:
                return None, None
            trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            error = {"type": type(exc).__qualname__, "message": str(exc), "traceback": trace}
            return "fail", {"error": error}

    async def _call(self, job_type: JobType, running: _Running, params: Any) -> Any:
        if job_type.is_async:
            return await job_type.handler(running.ctx, params)
        thread_ctx = ThreadJobContext(running.ctx)
        return await anyio.to_thread.run_sync(
            job_type.handler, thread_ctx, params, abandon_on_cancel=True
        )

    async def _finish(self, running: _Running, verb: str, body: dict[str, Any]) -> None:
        """Report the end; across a server restart, retry until the lease would be gone."""
        path = f"/worker/jobs/{running.job.id}/{verb}"
        backoff = 0.1
        with anyio.move_on_after(self.config.lease):
            while True:
                try:
                    await self._post(path, {"token": running.token, **body})
                    return
                except LeaseLost:
                    logger.warning(
                        "job %s ended (%s) after this worker lost its lease", running.job.id, verb
                    )
                    return
                except _Unavailable as exc:
                    logger.warning("cannot report job %s (%s); retrying", running.job.id, exc)
                except ConfigurationError as exc:
                    logger.error("the server refused the end of job %s: %s", running.job.id, exc)
                    return
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, self.config.max_backoff)
        logger.warning("gave up reporting job %s; its lease will expire", running.job.id)
