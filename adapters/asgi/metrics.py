"""Prometheus metrics for one queue, in a registry of their own.

Counters and the run-time histogram are fed by the store's events (a plain listener,
so no task is needed); the gauges are read from ``queue.stats()`` at scrape time.
Each :class:`QueueMetrics` has its own ``CollectorRegistry``: two apps in one process
never collide, and the global registry is left to the host.

With a shared store (PostgreSQL, Redis) the store delivers every process's events, so
the counters of each web process count the whole queue's jobs: scrape one web process,
or aggregate with ``max`` rather than ``sum``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final, final

from asyncjobs.job import EventType, JobEvent, JobStatus

if TYPE_CHECKING:
    from asyncjobs.queue import Queue

__all__ = ["CONTENT_TYPE", "QueueMetrics"]

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

_OUTCOMES: Final = {
    EventType.COMPLETED: "completed",
    EventType.FAILED: "failed",
    EventType.CANCELLED: "cancelled",
}

#: Run-time buckets in seconds: from sub-second handlers to hour-long ones.
_BUCKETS: Final = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, float("inf"))


@final
class QueueMetrics:
    """Counters, a histogram and gauges describing one queue.

    Args:
        queue: The queue to describe.
        namespace: The metric name prefix.
    """

    def __init__(self, queue: Queue, *, namespace: str = "asyncjobs") -> None:
        try:
            from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        except ImportError as exc:  # pragma: no cover - the asgi extra installs it
            raise ImportError(
                "metrics need prometheus-client: pip install 'asyncjobs[asgi]'"
            ) from exc
        self.queue = queue
        self.registry = CollectorRegistry(auto_describe=True)
        self.submitted = Counter(
            "jobs_submitted",
            "Jobs created, per type.",
            ["type"],
            namespace=namespace,
            registry=self.registry,
        )
        self.finished = Counter(
            "jobs_finished",
            "Jobs that reached a final state, per type and outcome.",
            ["type", "outcome"],
            namespace=namespace,
            registry=self.registry,
        )
        self.retried = Counter(
            "jobs_retried",
            "Attempts that ended in a retry or requeue, per type.",
            ["type"],
            namespace=namespace,
            registry=self.registry,
        )
        self.run_seconds = Histogram(
            "job_run_seconds",
            "Seconds from the last start to the end of finished jobs.",
            ["type", "outcome"],
            namespace=namespace,
            registry=self.registry,
            buckets=_BUCKETS,
        )
        self.jobs = Gauge(
            "jobs",
            "Jobs in the store, per status.",
            ["status"],
            namespace=namespace,
            registry=self.registry,
        )
        self.queued = Gauge(
            "jobs_queued",
            "Jobs waiting to run (queued).",
            namespace=namespace,
            registry=self.registry,
        )
        self.running = Gauge(
            "jobs_running",
            "Jobs running on any worker.",
            namespace=namespace,
            registry=self.registry,
        )
        self.running_here = Gauge(
            "jobs_running_here",
            "Jobs running in this process.",
            namespace=namespace,
            registry=self.registry,
        )
        self.slots = Gauge(
            "worker_slots",
            "Worker slots in this process (the queue's concurrency).",
            namespace=namespace,
            registry=self.registry,
        )
        self.healthy = Gauge(
            "healthy",
            "1 while every background loop of this queue works, 0 while one fails.",
            namespace=namespace,
            registry=self.registry,
        )
        self.loop_failing = Gauge(
            "loop_failing",
            "1 while a background loop (claim, heartbeat, finish, janitor...) fails.",
            ["loop"],
            namespace=namespace,
            registry=self.registry,
        )
        self.store_errors = Counter(
            "store_errors",
            "Failed store calls of the background loops, per loop.",
            ["loop"],
            namespace=namespace,
            registry=self.registry,
        )
        self._counted: dict[str, int] = {}
        self._remove: Callable[[], None] | None = None

    def attach(self) -> None:
        """Start counting the store's events (idempotent)."""
        if self._remove is None:
            self._remove = self.queue.store.add_listener(self.observe)

    def detach(self) -> None:
        """Stop counting (idempotent)."""
        remove, self._remove = self._remove, None
        if remove is not None:
            remove()

    def observe(self, event: JobEvent) -> None:
        """Count one event (a store listener: sync, never blocks)."""
        job = event.job
        if event.type is EventType.CREATED:
            self.submitted.labels(job.type).inc()
        elif event.type is EventType.RETRYING:
            self.retried.labels(job.type).inc()
        elif (outcome := _OUTCOMES.get(event.type)) is not None:
            self.finished.labels(job.type, outcome).inc()
            if job.started_at is not None and job.finished_at is not None:
                seconds = (job.finished_at - job.started_at).total_seconds()
                self.run_seconds.labels(job.type, outcome).observe(max(seconds, 0.0))

    async def render(self) -> bytes:
        """Refresh the gauges from the queue's stats and return the text exposition."""
        from prometheus_client import generate_latest

        self._refresh_health()
        try:
            stats = await self.queue.stats()
        except Exception:  # the store is down: the health metrics say so; keep the rest
            stats = None
        if stats is not None:
            for status in JobStatus:
                self.jobs.labels(status.value).set(stats.counts.get(status, 0))
            self.queued.set(stats.counts.get(JobStatus.QUEUED, 0))
            self.running.set(stats.counts.get(JobStatus.RUNNING, 0))
        self.running_here.set(self.queue.running_count())
        self.slots.set(self.queue.concurrency)
        return generate_latest(self.registry)

    def _refresh_health(self) -> None:
        health = self.queue.health()
        self.healthy.set(1 if health.ok else 0)
        failing = {p.loop for p in health.problems}
        errors = self.queue.supervisor.errors
        for loop in set(errors) | failing | set(self._counted):
            self.loop_failing.labels(loop).set(1 if loop in failing else 0)
        for loop, total in errors.items():
            new = total - self._counted.get(loop, 0)
            if new > 0:
                self.store_errors.labels(loop).inc(new)
            self._counted[loop] = total
