"""The exception tree of asyncjobs.

Every error the library raises on purpose derives from :class:`AsyncJobsError`::

    AsyncJobsError
     +-- JobNotFound           (LookupError)   no job with that id         -> HTTP 404
     +-- UnknownJobType        (LookupError)   no job type with that name  -> HTTP 422
     +-- InvalidSubmission     (ValueError)    bad submit options          -> HTTP 422
     |    +-- InvalidParams                    params failed validation    -> HTTP 422
     +-- IllegalTransition                     e.g. cancel a finished job  -> HTTP 409
     +-- QueueFull                             max_queued reached          -> HTTP 429
     +-- LeaseLost                             a stale worker's token      -> HTTP 409
     +-- WaitTimeout           (TimeoutError)  queue.wait() gave up        -> HTTP 202
     +-- JobTimeout            (TimeoutError)  a handler overran its limit
     +-- JobCancelled                          raised inside a thread handler after cancel
     +-- SubscriberOverflow                    a subscriber fell too far behind
     +-- ConfigurationError    (ValueError)    bad store URL, missing extra, closed queue

Messages say what to do next; the adapters map each class to one HTTP status.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "AsyncJobsError",
    "ConfigurationError",
    "FieldError",
    "IllegalTransition",
    "InvalidParams",
    "InvalidSubmission",
    "JobCancelled",
    "JobNotFound",
    "JobTimeout",
    "LeaseLost",
    "QueueFull",
    "SubscriberOverflow",
    "UnknownJobType",
    "WaitTimeout",
]

#: One field-level validation problem: ``{"loc": ["field", 0], "msg": "..."}``.
FieldError = dict[str, Any]


class AsyncJobsError(Exception):
    """Root of every exception asyncjobs raises on purpose."""

    code: str = "error"


class JobNotFound(AsyncJobsError, LookupError):
    """No job has this id (it never existed, or it was deleted or purged)."""

    code = "job_not_found"

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job with id {job_id!r}; it may have been deleted or purged")
        self.job_id = job_id


class UnknownJobType(AsyncJobsError, LookupError):
    """No job type is registered under this name."""

    code = "unknown_job_type"

    def __init__(self, name: str, known: Sequence[str] = ()) -> None:
        hint = f"; registered types: {', '.join(sorted(known))}" if known else ""
        super().__init__(f"unknown job type {name!r}{hint}")
        self.name = name
        self.known = tuple(known)


def _summary(errors: Sequence[FieldError], whole: str) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or whole}: {e['msg']}" for e in errors)


class InvalidSubmission(AsyncJobsError, ValueError):
    """A submission's options (delay, timeout, ...) are invalid; nothing was stored.

    ``errors`` lists ``{"loc": [option, ...], "msg": ...}``.
    """

    code = "invalid_submission"

    def __init__(self, errors: Sequence[FieldError], message: str | None = None) -> None:
        super().__init__(message or f"invalid submission: {_summary(errors, '(submission)')}")
        self.errors = list(errors)


class InvalidParams(InvalidSubmission):
    """The params of a submission failed validation; nothing was stored.

    ``errors`` lists ``{"loc": [field, ...], "msg": ...}``, locations inside the params.
    """

    code = "invalid_params"

    def __init__(self, job_type: str, errors: Sequence[FieldError]) -> None:
        super().__init__(
            errors, f"invalid params for job type {job_type!r}: {_summary(errors, '(params)')}"
        )
        self.job_type = job_type


class IllegalTransition(AsyncJobsError):
    """A state change the job lifecycle does not allow (for example, cancel a finished job)."""

    code = "illegal_transition"

    def __init__(self, job_id: str, from_status: str, to_status: str) -> None:
        super().__init__(f"job {job_id} cannot go from {from_status!r} to {to_status!r}")
        self.job_id = job_id
        self.from_status = from_status
        self.to_status = to_status


class QueueFull(AsyncJobsError):
    """The queue holds ``max_queued`` waiting jobs already; try again later."""

    code = "queue_full"

    def __init__(self, limit: int, retry_after: float = 1.0) -> None:
        super().__init__(f"the queue is full ({limit} jobs waiting); retry later")
        self.limit = limit
        self.retry_after = retry_after


class LeaseLost(AsyncJobsError):
    """A worker's lease token is no longer current: another worker owns the job now."""

    code = "lease_lost"

    def __init__(self, job_id: str) -> None:
        super().__init__(
            f"the lease on job {job_id} is no longer held by this worker "
            "(it expired and the job was requeued, or the job ended)"
        )
        self.job_id = job_id


class WaitTimeout(AsyncJobsError, TimeoutError):
    """``Queue.wait`` gave up before the job reached a terminal state."""

    code = "wait_timeout"

    def __init__(self, job_id: str, timeout: float) -> None:
        super().__init__(f"job {job_id} did not finish within {timeout:g}s; it is still live")
        self.job_id = job_id
        self.timeout = timeout


class JobTimeout(AsyncJobsError, TimeoutError):
    """A handler ran longer than its job's timeout and was cancelled."""

    code = "job_timeout"


class JobCancelled(AsyncJobsError):
    """Raised by ``ctx.progress`` in a thread handler once its job was cancelled."""

    code = "job_cancelled"


class SubscriberOverflow(AsyncJobsError):
    """An event subscriber fell so far behind that it was disconnected; resubscribe."""

    code = "subscriber_overflow"


class ConfigurationError(AsyncJobsError, ValueError):
    """Bad configuration: an unknown store URL, a missing optional extra, a closed queue."""

    code = "configuration_error"
