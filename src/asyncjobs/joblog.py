"""Log lines for job attempts, and the text/JSON formats of the ``asyncjobs`` command.

The worker calls :func:`attempt_started` and :func:`attempt_ended` around each attempt.
Every record names the job id, type, attempt and duration in its message and carries the
same fields as attributes (``extra=``), so a JSON handler gets them as keys:

| event | level |
| --- | --- |
| started | DEBUG |
| completed | INFO |
| cancelled | INFO |
| retrying (failed, attempts left) | WARNING, with the traceback |
| failed for good, timed out | ERROR, with the traceback |
| requeued on shutdown, lease lost | WARNING |

Records go to the ``asyncjobs.jobs`` logger.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Final

from .job import JobStatus

if TYPE_CHECKING:
    from .job import Job
    from .stores.protocol import Outcome

__all__ = [
    "JOB_FIELDS",
    "QUIET_STATUSES",
    "JsonFormatter",
    "attempt_ended",
    "attempt_started",
    "configure_logging",
]

logger = logging.getLogger("asyncjobs.jobs")

#: The attributes every job record carries (``record.job_id`` and so on).
JOB_FIELDS: Final = ("job_id", "job_type", "attempt", "max_attempts", "duration", "status")


#: Ends logged at INFO: completed and cancelled. The worker skips the call to
#: :func:`attempt_ended` for these while INFO is off (the common end of a no-op job).
QUIET_STATUSES: Final = frozenset({JobStatus.COMPLETED, JobStatus.CANCELLED})


def _fields(job: Job, duration: float | None, status: str) -> dict[str, Any]:
    return {
        "job_id": job.id,
        "job_type": job.type,
        "attempt": job.attempts,
        "max_attempts": job.max_attempts,
        "duration": None if duration is None else round(duration, 6),
        "status": status,
    }


def attempt_started(job: Job) -> None:
    """Log (DEBUG) that an attempt of ``job`` (as claimed) starts."""
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug(
            "job %s (%s) attempt %d/%d started",
            job.id,
            job.type,
            job.attempts,
            job.max_attempts,
            extra=_fields(job, None, "running"),
        )


def attempt_ended(job: Job, outcome: Outcome | None, duration: float) -> None:
    """Log how an attempt of ``job`` ended.

    Args:
        job: The job as claimed (its ``attempts`` is this attempt's number).
        outcome: What the worker stored; ``None`` when the lease was lost.
        duration: Seconds the attempt ran.
    """
    if (
        outcome is not None
        and outcome.status in QUIET_STATUSES
        and not logger.isEnabledFor(logging.INFO)
    ):
        return  # the common end, not logged: build no message (twice as costly as a no-op job)
    head = f"job {job.id} ({job.type}) attempt {job.attempts}/{job.max_attempts}"
    took = f"after {duration:.3f}s"
    if outcome is None:
        fields = _fields(job, duration, "lease_lost")
        logger.warning("%s abandoned %s: the lease was lost", head, took, extra=fields)
        return
    status = outcome.status
    fields = _fields(job, duration, status.value)
    error = outcome.error
    if error is not None:
        fields.update(error_type=error.type, error_message=error.message)
    if status is JobStatus.COMPLETED:
        logger.info("%s completed in %.3fs", head, duration, extra=fields)
    elif status is JobStatus.CANCELLED:
        logger.info("%s cancelled %s", head, took, extra=fields)
    elif status is JobStatus.QUEUED:
        logger.warning("%s requeued %s (worker shutting down)", head, took, extra=fields)
    elif error is not None:
        trace = f"\n{error.traceback.rstrip()}" if error.traceback else ""
        what = f"{error.type}: {error.message}"
        if status is JobStatus.SCHEDULED:
            due = f" at {outcome.run_at.isoformat()}" if outcome.run_at else ""
            logger.warning(
                "%s failed %s, will retry%s: %s%s", head, took, due, what, trace, extra=fields
            )
        else:
            verb = "timed out" if error.type == "JobTimeout" else "failed"
            logger.error("%s %s %s: %s%s", head, verb, took, what, trace, extra=fields)
    else:
        logger.warning("%s ended %s %s", head, status.value, took, extra=fields)


# ---------------------------------------------------------------------------- formats

#: LogRecord attributes that are not ``extra=`` fields.
_STANDARD: Final = frozenset(
    {*vars(logging.LogRecord("", 0, "", 0, "", None, None)), "message", "asctime", "taskName"}
)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, plus every ``extra=`` field."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    """Send every log record (asyncjobs', uvicorn's) to stderr as text or JSON lines.

    Args:
        level: ``debug``, ``info``, ``warning`` or ``error``.
        fmt: ``text`` or ``json``.
    """
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
