"""JSON shapes of jobs and events: the wire format and the stored record.

The wire format (what HTTP, SSE and WebSocket clients see) omits the lease, the owner
and the idempotency key; the stored record keeps everything. Times are ISO 8601 UTC
strings (``2026-11-22T12:00:00.123456+00:00``). Never pickle.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Final

import cattrs

from .errors import InvalidSubmission
from .job import EventType, Job, JobEvent, JobStatus

if TYPE_CHECKING:
    from .supervision import Problem

__all__ = [
    "MAX_DEPTH",
    "dumps",
    "event_from_record",
    "event_to_record",
    "event_to_wire",
    "format_time",
    "job_from_record",
    "job_to_record",
    "job_to_wire",
    "check_storable",
    "clean_text",
    "json_problems",
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


def dumps(value: Any) -> str:
    """Compact JSON, as used on the wire and in stores."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


#: How deeply params and results may nest (objects and arrays).
MAX_DEPTH: Final = 64
# Lone surrogates cannot be encoded as UTF-8; NUL is refused by PostgreSQL text and jsonb.
_BAD_TEXT: Final = re.compile("[\ud800-\udfff\x00]")
_MAX_NUMBER: Final = sys.float_info.max


def text_problem(value: str) -> str | None:
    """Why a string cannot be stored (every store holds UTF-8 text without NUL), or None."""
    found = _BAD_TEXT.search(value)
    if found is None:
        return None
    if found.group() == "\x00":
        return "must not contain NUL characters"
    return "must be valid Unicode (it holds a lone surrogate)"


def clean_text(value: str) -> str:
    """``value`` with each lone surrogate and NUL replaced by U+FFFD, so any store holds it.

    For free text a job produces (progress messages, error messages, tracebacks), which
    should be kept rather than refused.
    """
    return value if _BAD_TEXT.search(value) is None else _BAD_TEXT.sub("\ufffd", value)


def json_problems(value: Any, loc: list[str | int]) -> list[dict[str, Any]]:
    """Field errors for what no store can hold or no JSON client can read back.

    The rules every store applies, so that a value one store accepts never breaks a
    read from another: strings are valid Unicode without NUL (keys too), numbers are
    finite and within a double's range, nesting is at most :data:`MAX_DEPTH` deep, and
    only JSON types (dict with string keys, list, str, int, float, bool, None) appear.
    """
    errors: list[dict[str, Any]] = []
    _walk(value, loc, 0, errors)
    return errors


def _walk(value: Any, loc: list[str | int], depth: int, errors: list[dict[str, Any]]) -> None:
    if len(errors) >= 20:  # enough to say what is wrong; a huge value stays cheap
        return
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, str):
        problem = text_problem(value)
        if problem is not None:
            errors.append({"loc": loc, "msg": problem})
        return
    if isinstance(value, int | float):
        # Ints compare exactly with floats, so a 400-digit int is caught without overflow.
        if not -_MAX_NUMBER <= value <= _MAX_NUMBER:  # NaN fails both comparisons too
            errors.append({"loc": loc, "msg": "number out of range (finite doubles only)"})
        return
    if isinstance(value, Mapping | list | tuple) and depth >= MAX_DEPTH:
        errors.append({"loc": loc, "msg": f"nested more than {MAX_DEPTH} levels deep"})
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                errors.append({"loc": loc, "msg": f"object keys must be strings, not {key!r}"})
                continue
            problem = text_problem(key)
            if problem is not None:
                errors.append({"loc": [*loc, ascii(key)], "msg": f"key {problem}"})
                continue
            _walk(item, [*loc, key], depth + 1, errors)
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _walk(item, [*loc, index], depth + 1, errors)
        return
    errors.append({"loc": loc, "msg": f"not a JSON value ({type(value).__name__})"})


def check_storable(job: Job) -> None:
    """Refuse a new job that some store could not hold (every store calls it in ``add``).

    Raises:
        InvalidSubmission: naming each bad field (``params.x``, ``tags.0``, ...).
    """
    errors = json_problems(job.params, ["params"])
    errors += json_problems(list(job.tags), ["tags"])
    for name in ("type", "idempotency_key", "owner"):
        value = getattr(job, name)
        if isinstance(value, str) and (problem := text_problem(value)) is not None:
            errors.append({"loc": [name], "msg": problem})
    if errors:
        raise InvalidSubmission(errors)


def problem_to_wire(problem: Problem) -> dict[str, Any]:
    """A failing loop as ``GET /health`` shows it: ``{loop, reason, since, failures}``."""
    return {
        "loop": problem.loop,
        "reason": problem.reason,
        "since": format_time(problem.since),
        "failures": problem.failures,
    }
