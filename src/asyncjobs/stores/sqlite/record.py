"""A job's stored record, encoded and decoded by hand: the store thread's hottest code.

:func:`asyncjobs.codec.job_to_record` and :func:`~asyncjobs.codec.job_from_record` go
through cattrs, which looks up a hook for every field of every job; a drain encodes two
records and decodes one per job, on the one thread every store call waits for. These
functions write the same JSON text (byte for byte) and read it back to an equal job in
about a third of the time. A record that is not in exactly this shape (one written by
an older release, say) is decoded by the codec instead. If ``Job`` or one of its parts
gains a field, importing this module fails, so the two can never drift apart silently.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, Final

import attrs

from ...codec import job_from_record, parse_time
from ...job import Job, JobError, JobStatus, Lease, Run

__all__ = ["decode", "encode"]

_FIELDS: Final = {
    Job: (
        "id",
        "type",
        "params",
        "status",
        "created_at",
        "run_at",
        "priority",
        "progress",
        "message",
        "result",
        "error",
        "attempts",
        "max_attempts",
        "started_at",
        "finished_at",
        "timeout",
        "retention",
        "idempotency_key",
        "owner",
        "tags",
        "cancel_requested",
        "history",
        "trace",
        "version",
        "lease",
    ),
    JobError: ("type", "message", "traceback"),
    Lease: ("worker_id", "token", "expires_at"),
    Run: ("status", "attempts", "error", "started_at", "finished_at"),
}
for _cls, _names in _FIELDS.items():
    if tuple(a.name for a in attrs.fields(_cls)) != _names:  # pragma: no cover
        raise RuntimeError(f"{_cls.__name__} changed: update stores/sqlite/record.py")
_KEYS: Final = frozenset(_FIELDS[Job])

_UTC: Final = timezone.utc
_STATUS: Final = {s.value: s for s in JobStatus}
_loads: Final = json.loads
_fromiso: Final = datetime.fromisoformat


def _encoder() -> Callable[[Any], str]:
    """``codec.dumps``: compact, not ASCII-only. ``json.dumps`` and ``JSONEncoder.encode``
    build a new C encoder on every call; this one is built once."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover (an interpreter without the C accelerator)
        return json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    refuse = json.JSONEncoder().default  # the TypeError json.dumps raises
    chunks = make(None, refuse, json.encoder.encode_basestring, None, ":", ",", False, False, True)
    return lambda value: "".join(chunks(value, 0))


_dumps: Final = _encoder()


#: Times as written, by the instant they name. ``isoformat`` goes through printf and is
#: a tenth of a drain's work without this: a job's times are written again at each of
#: its writes, and every job of a claim starts at the same instant.
_TEXT: dict[datetime, str] = {}
_TEXT_LIMIT: Final = 4096


def _iso(value: datetime) -> str:
    """``codec.format_time``: the instant in UTC, ISO 8601."""
    text = _TEXT.get(value)
    if text is None:
        text = (value if value.tzinfo is _UTC else value.astimezone(_UTC)).isoformat()
        _remember(value, text)
    return text


def _remember(value: datetime, text: str) -> None:
    if len(_TEXT) >= _TEXT_LIMIT:
        _TEXT.clear()
    _TEXT[value] = text


def _time(value: datetime | None) -> str | None:
    return None if value is None else _iso(value)


def _error(error: JobError) -> dict[str, Any]:
    return {"type": error.type, "message": error.message, "traceback": error.traceback}


def _run(run: Run) -> dict[str, Any]:
    return {
        "status": run.status.value,
        "attempts": run.attempts,
        "error": None if run.error is None else _error(run.error),
        "started_at": _time(run.started_at),
        "finished_at": _time(run.finished_at),
    }


def encode(job: Job) -> str:
    """``codec.dumps(codec.job_to_record(job))``, the same text, faster."""
    lease = job.lease
    started, finished = job.started_at, job.finished_at
    return _dumps(
        {
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
            "started_at": None if started is None else _iso(started),
            "finished_at": None if finished is None else _iso(finished),
            "timeout": job.timeout,
            "retention": job.retention,
            "idempotency_key": job.idempotency_key,
            "owner": job.owner,
            "tags": list(job.tags),
            "cancel_requested": job.cancel_requested,
            "history": [_run(run) for run in job.history] if job.history else [],
            "trace": job.trace,
            "version": job.version,
            "lease": None
            if lease is None
            else {
                "worker_id": lease.worker_id,
                "token": lease.token,
                "expires_at": _iso(lease.expires_at),
            },
        }
    )


def _when(value: str) -> datetime:
    """``codec.parse_time``, faster for a time :func:`_iso` wrote (which it remembers)."""
    if len(value) == 32 and value[10] == "T" and value.endswith("+00:00"):
        # Exactly what isoformat writes for a UTC time with microseconds.
        parsed = _fromiso(value)
        if parsed.microsecond:
            _remember(parsed, value)
        return parsed
    return parse_time(value)


def _parse(value: str | None) -> datetime | None:
    return None if value is None else _when(value)


def _float(value: float | None) -> float | None:
    return None if value is None else float(value)


def _job_error(value: dict[str, Any] | None) -> JobError | None:
    if value is None:
        return None
    return JobError(str(value["type"]), str(value["message"]), value.get("traceback"))


def decode(text: str) -> Job:
    """``codec.job_from_record(json.loads(text))``: an equal job, faster."""
    d = _loads(text)
    if d.keys() != _KEYS:  # not this release's shape: let the codec decide
        return job_from_record(d)
    lease = d["lease"]
    history = d["history"]
    return Job(
        id=d["id"],
        type=d["type"],
        params=d["params"],
        status=_STATUS[d["status"]],
        created_at=_when(d["created_at"]),
        run_at=_when(d["run_at"]),
        priority=int(d["priority"]),
        progress=float(d["progress"]),
        message=d["message"],
        result=d["result"],
        error=None if d["error"] is None else _job_error(d["error"]),
        attempts=int(d["attempts"]),
        max_attempts=int(d["max_attempts"]),
        started_at=_parse(d["started_at"]),
        finished_at=_parse(d["finished_at"]),
        timeout=_float(d["timeout"]),
        retention=_float(d["retention"]),
        idempotency_key=d["idempotency_key"],
        owner=d["owner"],
        tags=tuple(d["tags"]),
        cancel_requested=bool(d["cancel_requested"]),
        history=tuple(
            Run(
                _STATUS[r["status"]],
                int(r["attempts"]),
                _job_error(r["error"]),
                _parse(r["started_at"]),
                _parse(r["finished_at"]),
            )
            for r in history
        )
        if history
        else (),
        trace=d["trace"],
        version=int(d["version"]),
        lease=None
        if lease is None
        else Lease(lease["worker_id"], lease["token"], _when(lease["expires_at"])),
    )
