"""The operations part of :class:`~asyncjobs.queue.Queue`: batch submit, retry in place,
schedules and webhooks, as a mixin so that queue.py keeps the core API."""

from __future__ import annotations

import builtins
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import attrs

from . import tracing
from .errors import (
    ConfigurationError,
    FieldError,
    InvalidParams,
    InvalidSubmission,
    UnknownJobType,
)
from .job import Job, JobStatus
from .registry import JobRegistry
from .schedules import Missed, Schedule
from .stores.protocol import Store
from .stores.steps import RETRYABLE
from .webhooks.dispatcher import WebhookConfig, WebhookDispatcher
from .webhooks.model import Delivery, Webhook

__all__ = ["SUBMISSION_KEYS", "QueueOperations"]

#: The keys of one submission to :meth:`Queue.submit_many`.
SUBMISSION_KEYS = frozenset(
    {
        "type",
        "params",
        "priority",
        "delay",
        "run_at",
        "timeout",
        "max_attempts",
        "idempotency_key",
        "tags",
        "owner",
    }
)


def _statuses(value: JobStatus | str | Iterable[JobStatus | str] | None) -> list[JobStatus] | None:
    if value is None:
        return None
    if isinstance(value, str):  # JobStatus is a str too
        return [JobStatus(value)]
    return [JobStatus(v) for v in value]


def _names(value: str | Iterable[str] | None) -> list[str] | None:
    if value is None:
        return None
    return [value] if isinstance(value, str) else list(value)


class QueueOperations:
    """Batch submit, retry in place, schedules and webhooks (mixed into Queue)."""

    store: Store
    registry: JobRegistry
    clock: Callable[[], datetime]
    max_queued: int | None
    schedules: dict[str, Schedule]
    webhook_config: WebhookConfig
    dispatcher: WebhookDispatcher | None

    if TYPE_CHECKING:

        def _require_open(self) -> None: ...

        def _new_job(
            self,
            type: str,
            params: Any = None,
            *,
            priority: int | None = None,
            delay: float | timedelta | None = None,
            run_at: datetime | None = None,
            timeout: float | None = None,
            max_attempts: int | None = None,
            idempotency_key: str | None = None,
            tags: Collection[str] = (),
            owner: str | None = None,
        ) -> Job: ...

    # -- operations: batch submit and retry in place ---------------------------------

    async def submit_many(self, submissions: Sequence[Mapping[str, Any]]) -> builtins.list[Job]:
        """Validate and store many jobs at once, all or nothing, in one store round trip.

        Each submission is a mapping of :meth:`submit`'s arguments: ``{"type": "echo",
        "params": {...}, "priority": 2, ...}``. Results follow the input order; a
        submission whose idempotency key is taken gives the job that holds it.

        Raises:
            InvalidSubmission: one or more submissions are bad; every error's ``loc``
                starts with the submission's index. Nothing is stored.
            QueueFull: the batch would pass ``max_queued``. Nothing is stored.
        """
        self._require_open()
        names = {s.get("type") for s in submissions if isinstance(s, Mapping)}
        destination = str(names.pop()) if len(names) == 1 else "batch"
        with tracing.submit_span(destination, batch=len(submissions)):
            jobs: builtins.list[Job] = []
            errors: builtins.list[FieldError] = []
            for index, submission in enumerate(submissions):
                try:
                    jobs.append(self._batch_job(submission))
                except InvalidParams as exc:
                    errors += [
                        {"loc": [index, "params", *e["loc"]], "msg": e["msg"]} for e in exc.errors
                    ]
                except InvalidSubmission as exc:
                    errors += [{"loc": [index, *e["loc"]], "msg": e["msg"]} for e in exc.errors]
                except UnknownJobType as exc:
                    errors.append({"loc": [index, "type"], "msg": str(exc)})
            if errors:
                raise InvalidSubmission(errors, f"invalid batch: {_batch_summary(errors)}")
            if not jobs:
                return []
            added = await self.store.add_many(jobs, max_queued=self.max_queued)
        return [job for job, _ in added]

    def _batch_job(self, submission: Mapping[str, Any]) -> Job:
        if not isinstance(submission, Mapping):
            raise InvalidSubmission([{"loc": [], "msg": "must be a mapping of submit arguments"}])
        unknown = sorted(set(submission) - SUBMISSION_KEYS)
        if unknown:
            raise InvalidSubmission([{"loc": [k], "msg": "unknown field"} for k in unknown])
        options = dict(submission)
        type_ = options.pop("type", None)
        if not isinstance(type_, str):
            raise InvalidSubmission([{"loc": ["type"], "msg": "required: a job type's name"}])
        return self._new_job(type_, **options)

    async def retry(self, job_id: str) -> Job:
        """Re-queue a failed or cancelled job in place: same id, a fresh set of attempts;
        the run that ended (its attempts and error) is kept in ``job.history``.

        Raises: IllegalTransition (the job is not failed or cancelled), JobNotFound.
        """
        self._require_open()
        return await self.store.retry(job_id, now=self.clock())

    async def retry_many(
        self,
        *,
        status: JobStatus | str | Iterable[JobStatus | str] = JobStatus.FAILED,
        type: str | Iterable[str] | None = None,
        owner: str | None = None,
    ) -> builtins.list[Job]:
        """Retry in place every failed (or cancelled, with ``status``) job, optionally
        of some types only; return the jobs re-queued.

        Raises: InvalidSubmission when ``status`` names anything but failed or cancelled.
        """
        self._require_open()
        statuses = _statuses(status) or [JobStatus.FAILED]
        other = sorted(s.value for s in statuses if s not in RETRYABLE)
        if other:
            raise InvalidSubmission(
                [{"loc": ["status"], "msg": f"only failed or cancelled jobs retry, not {other}"}]
            )
        return await self.store.retry_many(
            now=self.clock(), statuses=statuses, types=_names(type), owner=owner
        )

    # -- operations: schedules -------------------------------------------------------

    def schedule(
        self,
        type: str,
        *,
        cron: str | None = None,
        every: float | timedelta | None = None,
        params: Any = None,
        name: str | None = None,
        missed: Missed = "skip",
    ) -> Schedule:
        """Run a job of ``type`` periodically: on a ``cron`` expression (UTC; a sixth
        field gives seconds) or ``every`` so many seconds (aligned to the epoch).

        Exactly one job per tick across every process that shares the store and
        declares the same schedule. ``missed``: ``"skip"`` ticks missed while no process
        ran, or ``"catch_up"`` the most recent of them once.

        Raises:
            UnknownJobType, InvalidParams: checked now, not at the first tick.
            ConfigurationError: bad cron/every, or the name is taken.
        """
        job_type = self.registry.get(type)
        if attrs.has(params.__class__):
            params = job_type.converter.unstructure(params)
        _, normalised = job_type.parse(params)
        if isinstance(every, timedelta):
            every = every.total_seconds()
        chosen = name or type
        if chosen in self.schedules:
            raise ConfigurationError(f"a schedule named {chosen!r} exists; pass name=")
        schedule = Schedule(
            name=chosen, type=type, params=normalised, cron=cron, every=every, missed=missed
        )
        self.schedules[chosen] = schedule
        return schedule

    # -- operations: webhooks ------------------------------------------------------

    async def add_webhook(self, hook: Webhook) -> Webhook:
        """Register a webhook in the store (every process sharing it sends for it).

        Raises: TargetRefused: its host is a private or loopback address not allowed by
            ``ASYNCJOBS_WEBHOOK_ALLOW``.
        """
        from .webhooks.dispatcher import check_target

        self._require_open()
        await check_target(hook.url, self.webhook_config.allowed_hosts())
        stored = await self.store.add_webhook(hook, now=self.clock())
        if self.dispatcher is not None:
            self.dispatcher.forget_webhooks()  # its ends wake the loop from now on
        return stored

    async def list_webhooks(self) -> builtins.list[Webhook]:
        """Every registered webhook, oldest first."""
        self._require_open()
        return await self.store.list_webhooks()

    async def delete_webhook(self, webhook_id: str) -> None:
        """Remove a webhook and its deliveries. Raises: WebhookNotFound."""
        self._require_open()
        await self.store.delete_webhook(webhook_id)

    async def deliveries(
        self, webhook_id: str, *, status: str | None = None, limit: int = 100
    ) -> builtins.list[Delivery]:
        """A webhook's deliveries, newest first (``status``: pending, delivered or dead)."""
        self._require_open()
        return await self.store.list_deliveries(webhook_id, status=status, limit=limit)


def _batch_summary(errors: list[FieldError]) -> str:
    return "; ".join(f"job {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors[:5])
