"""Job records for :class:`~.store.PostgresStore`, written and read without cattrs.

The store's hot path turns every claimed row into a :class:`~asyncjobs.job.Job` and
every change into JSON. :func:`asyncjobs.codec.job_to_record` and
:func:`~asyncjobs.codec.job_from_record` go through cattrs' generic (un)structuring, which
cost more than the rest of a no-op job's client time. These functions make the same
records field by field; the tests check them against the codec on every field, and that
they know every field ``Job`` has (a new field fails the test, not the data).

A change is written as a patch: the fields that differ between the snapshot a step
started from and the one it made, merged into the stored record (``record || patch``)
by a write fenced on the version the patch was computed from. The server then builds
the event's payload from the merged record, so the client never encodes a whole job
for a change.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, Final

import attrs

from ...codec import format_time, parse_time
from ...job import Job, JobError, JobStatus, Lease, Run

__all__ = ["KNOWN_FIELDS", "job_of", "patch_of", "record_of"]


def _iso(value: datetime) -> str:
    # format_time converts to UTC first: a datetime in UTC already skips that.
    return value.isoformat() if value.tzinfo is timezone.utc else format_time(value)


def _time(value: datetime | None) -> str | None:
    return None if value is None else _iso(value)


def _error(error: JobError | None) -> dict[str, Any] | None:
    if error is None:
        return None
    return {"type": error.type, "message": error.message, "traceback": error.traceback}


def _lease(lease: Lease | None) -> dict[str, Any] | None:
    if lease is None:
        return None
    return {
        "worker_id": lease.worker_id,
        "token": lease.token,
        "expires_at": _iso(lease.expires_at),
    }


def _history(runs: tuple[Run, ...]) -> list[dict[str, Any]]:
    return [
        {
            "status": run.status.value,
            "attempts": run.attempts,
            "error": _error(run.error),
            "started_at": _time(run.started_at),
            "finished_at": _time(run.finished_at),
        }
        for run in runs
    ]


def _same(value: Any) -> Any:
    return value


#: How each field of ``Job`` becomes JSON, in the order of ``job_to_record``.
_ENCODE: Final[dict[str, Callable[[Any], Any]]] = {
    "id": _same,
    "type": _same,
    "params": _same,
    "status": lambda status: status.value,
    "created_at": _iso,
    "run_at": _iso,
    "priority": _same,
    "progress": _same,
    "message": _same,
    "result": _same,
    "error": _error,
    "attempts": _same,
    "max_attempts": _same,
    "started_at": _time,
    "finished_at": _time,
    "timeout": _same,
    "retention": _same,
    "idempotency_key": _same,
    "owner": _same,
    "tags": list,
    "cancel_requested": _same,
    "history": _history,
    "trace": _same,
    "version": _same,
    "lease": _lease,
}
KNOWN_FIELDS: Final = frozenset(_ENCODE)
_NAMES: Final = tuple(a.name for a in attrs.fields(Job))


def record_of(job: Job) -> dict[str, Any]:
    """The record of ``job``: what ``codec.job_to_record`` returns."""
    return {
        "id": job.id,
        "type": job.type,
        "params": job.params,
        "status": job.status.value,
        "created_at": _iso(job.created_at),
        "run_at": _iso(job.run_at),
        "priority": job.priority,
        "progress": job.progress,
        "message": job.message,
        "result": job.result,
        "error": None if job.error is None else _error(job.error),
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "started_at": None if job.started_at is None else _iso(job.started_at),
        "finished_at": None if job.finished_at is None else _iso(job.finished_at),
        "timeout": job.timeout,
        "retention": job.retention,
        "idempotency_key": job.idempotency_key,
        "owner": job.owner,
        "tags": list(job.tags),
        "cancel_requested": job.cancel_requested,
        "history": _history(job.history) if job.history else [],
        "trace": job.trace,
        "version": job.version,
        "lease": None if job.lease is None else _lease(job.lease),
    }


def _make_patcher() -> Callable[[Job, Job], dict[str, Any]]:
    """Build ``patch_of``: one comparison per field, straight-line (a loop over the
    fields with ``getattr`` cost more than the rest of writing a change)."""
    lines = ["def patch_of(before, after):", "    patch = {}"]
    for name in _NAMES:
        lines += [
            f"    new = after.{name}",
            f"    if new is not before.{name} and new != before.{name}:",
            f"        patch[{name!r}] = _encode[{name!r}](new)",
        ]
    lines += ["    return patch"]
    namespace: dict[str, Any] = {"_encode": _ENCODE}
    exec("\n".join(lines), namespace)  # the source is built from field names only
    patcher: Callable[[Job, Job], dict[str, Any]] = namespace["patch_of"]
    patcher.__doc__ = "The fields of ``after`` that differ from ``before``, as record JSON."
    return patcher


patch_of: Final = _make_patcher()


def _parse(value: str) -> datetime:
    # What parse_time returns, with its conversions only when the text needs them.
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:  # "Z" before Python 3.11
        return parse_time(value)
    return parsed if parsed.tzinfo is timezone.utc else parse_time(value)


def _opt_time(value: str | None) -> datetime | None:
    return None if value is None else _parse(value)


def _opt_float(value: float | None) -> float | None:
    return None if value is None else float(value)


def _job_error(data: dict[str, Any] | None) -> JobError | None:
    if data is None:
        return None
    return JobError(str(data["type"]), str(data["message"]), data.get("traceback"))


def _run(data: dict[str, Any]) -> Run:
    return Run(
        JobStatus(data["status"]),
        int(data["attempts"]),
        _job_error(data.get("error")),
        _opt_time(data.get("started_at")),
        _opt_time(data.get("finished_at")),
    )


def job_of(record: dict[str, Any]) -> Job:
    """The ``Job`` a record describes: what ``codec.job_from_record`` returns."""
    get = record.get
    lease = get("lease")
    history = get("history")
    trace = get("trace")
    return Job(
        id=str(record["id"]),
        type=str(record["type"]),
        params=record["params"],
        status=JobStatus(record["status"]),
        created_at=_parse(record["created_at"]),
        run_at=_parse(record["run_at"]),
        priority=int(get("priority", 0)),
        progress=float(get("progress", 0.0)),
        message=get("message"),
        result=get("result"),
        error=_job_error(get("error")),
        attempts=int(get("attempts", 0)),
        max_attempts=int(get("max_attempts", 1)),
        started_at=_opt_time(get("started_at")),
        finished_at=_opt_time(get("finished_at")),
        timeout=_opt_float(get("timeout")),
        retention=_opt_float(get("retention")),
        idempotency_key=get("idempotency_key"),
        owner=get("owner"),
        tags=tuple(get("tags", ())),
        cancel_requested=bool(get("cancel_requested", False)),
        history=() if not history else tuple(_run(run) for run in history),
        trace=None if trace is None else dict(trace),
        version=int(get("version", 1)),
        lease=None
        if lease is None
        else Lease(str(lease["worker_id"]), str(lease["token"]), _parse(lease["expires_at"])),
    )
