"""JSON shapes of jobs and events: the wire format and the stored record.

The wire format (what HTTP, SSE and WebSocket clients see) omits the lease, the owner
and the idempotency key; the stored record keeps everything. Times are ISO 8601 UTC
strings (``2026-11-22T12:00:00.123456+00:00``). Never pickle.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import cattrs

from .job import EventType, Job, JobEvent, JobStatus
from .stores.protocol import WorkerInfo

if TYPE_CHECKING:
    from .supervision import Problem

__all__ = [
    "dumps",
    "event_from_record",
    "event_to_record",
    "worker_from_record",
    "worker_to_record",
    "event_to_wire",
    "format_time",
    "job_from_record",
    "job_to_record",
    "job_to_wire",
    "parse_time",
    "problem_to_wire",
]

_WIRE_HIDDEN = frozenset({"lease", "idempotency_key", "owner", "retention"})


def format_time(value: datetime) -> str:
    return value.astimezone(timezone.utc).isoformat()


def parse_time(value: str | datetime) -> datetime:
    if isinstance(value, datetime):
        parsed = value
    else:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter()
    conv.register_unstructure_hook(datetime, format_time)
    conv.register_structure_hook(datetime, lambda v, _: parse_time(v))
    conv.register_unstructure_hook(JobStatus, lambda s: s.value)
    # params and result are arbitrary JSON: pass them through untouched.
    conv.register_structure_hook_func(lambda t: t is Any, lambda v, _: v)
    return conv


_conv = _make_converter()


def job_to_record(job: Job) -> dict[str, Any]:
    """The full JSON-able record of a job, lease included (for stores)."""
    out: dict[str, Any] = _conv.unstructure(job)
    out["tags"] = list(job.tags)
    return out


def job_from_record(record: dict[str, Any]) -> Job:
    """Rebuild a :class:`Job` from :func:`job_to_record` output."""
    return _conv.structure(record, Job)


def job_to_wire(job: Job) -> dict[str, Any]:
    """The public JSON shape of a job (no lease, owner or idempotency key)."""
    record = job_to_record(job)
    for key in _WIRE_HIDDEN:
        record.pop(key, None)
    return record


def event_to_wire(event: JobEvent) -> dict[str, Any]:
    """The public JSON shape of an event: ``{type, seq, at, job}``."""
    return {
        "type": event.type.value,
        "seq": event.seq,
        "at": format_time(event.at),
        "job": job_to_wire(event.job),
    }


def event_to_record(event: JobEvent) -> dict[str, Any]:
    """An event with the full job record (for stores that carry events between processes)."""
    return {
        "type": event.type.value,
        "seq": event.seq,
        "at": format_time(event.at),
        "job": job_to_record(event.job),
    }


def event_from_record(record: dict[str, Any]) -> JobEvent:
    return JobEvent(
        type=EventType(record["type"]),
        seq=int(record["seq"]),
        at=parse_time(record["at"]),
        job=job_from_record(record["job"]),
    )


def worker_to_record(info: WorkerInfo) -> dict[str, Any]:
    """The JSON record of a worker registry entry (for stores and the wire)."""
    out: dict[str, Any] = _conv.unstructure(info)
    return out


def worker_from_record(record: dict[str, Any]) -> WorkerInfo:
    return _conv.structure(record, WorkerInfo)


def dumps(value: Any) -> str:
    """Compact JSON, as used on the wire and in stores."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def problem_to_wire(problem: Problem) -> dict[str, Any]:
    """A failing loop as ``GET /health`` shows it: ``{loop, reason, since, failures}``."""
    return {
        "loop": problem.loop,
        "reason": problem.reason,
        "since": format_time(problem.since),
        "failures": problem.failures,
    }
