"""JSON shapes of jobs and events: the wire format and the stored record.

The wire format (what HTTP, SSE and WebSocket clients see) omits the lease, the owner
and the idempotency key; the stored record keeps everything. Times are ISO 8601 UTC
strings (``2026-11-22T12:00:00.123456+00:00``). Never pickle.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Final

import attrs
import cattrs

from .job import EventType, Job, JobError, JobEvent, JobStatus, Lease, Run, _JobDraft
from .stores.protocol import WorkerInfo

if TYPE_CHECKING:
    from .supervision import Problem

__all__ = [
    "RECORD_FIELDS",
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
    "loads",
    "parse_time",
    "record_text",
    "problem_to_wire",
]

_WIRE_HIDDEN = frozenset({"lease", "idempotency_key", "owner", "retention", "trace"})


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

# -- job records, field by field ----------------------------------------------------
#
# Every store encodes a record per change and decodes one per job it reads: through
# cattrs' generic (un)structuring that cost more than the rest of a no-op job's client
# time. These functions make the same records by hand (tests/test_codec.py checks them
# against cattrs on every field), and importing this module fails if Job or one of its
# parts gains a field they do not know.

_UTC: Final = timezone.utc
_STATUS: Final = {s.value: s for s in JobStatus}
_fromiso: Final = datetime.fromisoformat
_new: Final = object.__new__

#: Times as written, by the instant they name: a job's times are written again at
#: each of its changes, and every job of a claim starts at the same instant, so the
#: same few instants are formatted over and over. Bounded: cleared when full.
_TEXT: dict[datetime, str] = {}
_TEXT_LIMIT: Final = 4096


def _iso(value: datetime) -> str:
    """``format_time``, remembered."""
    text = _TEXT.get(value)
    if text is None:
        text = (value if value.tzinfo is _UTC else value.astimezone(_UTC)).isoformat()
        if len(_TEXT) >= _TEXT_LIMIT:
            _TEXT.clear()
        _TEXT[value] = text
    return text


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


#: How each field of ``Job`` becomes record JSON, in the record's order (a store that
#: writes only the changed fields of a job encodes them with these).
RECORD_FIELDS: Final[Mapping[str, Callable[[Any], Any]]] = {
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
_PARTS: Final = {
    Job: tuple(RECORD_FIELDS),
    JobError: ("type", "message", "traceback"),
    Lease: ("worker_id", "token", "expires_at"),
    Run: ("status", "attempts", "error", "started_at", "finished_at"),
}
for _cls, _names in _PARTS.items():
    if tuple(a.name for a in attrs.fields(_cls)) != _names:  # pragma: no cover
        raise RuntimeError(f"{_cls.__name__} changed: update codec.RECORD_FIELDS and its readers")


def job_to_record(job: Job) -> dict[str, Any]:
    """The full JSON-able record of a job, lease included (for stores)."""
    lease = job.lease
    started, finished = job.started_at, job.finished_at
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
        "started_at": None if started is None else _iso(started),
        "finished_at": None if finished is None else _iso(finished),
        "timeout": job.timeout,
        "retention": job.retention,
        "idempotency_key": job.idempotency_key,
        "owner": job.owner,
        "tags": list(job.tags),
        "cancel_requested": job.cancel_requested,
        "history": _history(job.history) if job.history else [],
        "trace": job.trace,
        "version": job.version,
        "lease": None if lease is None else _lease(lease),
    }


def _when(value: str) -> datetime:
    """``parse_time``, with its conversions only when the text needs them."""
    try:
        parsed = _fromiso(value)
    except ValueError:  # "Z" before Python 3.11
        return parse_time(value)
    return parsed if parsed.tzinfo is _UTC else parse_time(value)


def _opt_time(value: str | None) -> datetime | None:
    return None if value is None else _when(value)


def _opt_float(value: float | None) -> float | None:
    return None if value is None else float(value)


def _job_error(data: dict[str, Any] | None) -> JobError | None:
    if data is None:
        return None
    return JobError(str(data["type"]), str(data["message"]), data.get("traceback"))


def _run(data: dict[str, Any]) -> Run:
    return Run(
        _STATUS[data["status"]],
        int(data["attempts"]),
        _job_error(data.get("error")),
        _opt_time(data.get("started_at")),
        _opt_time(data.get("finished_at")),
    )


def job_from_record(record: dict[str, Any]) -> Job:
    """Rebuild a :class:`Job` from :func:`job_to_record` output (or the wire shape:
    missing fields take their defaults)."""
    # Filled in as a draft (see job._draft_of): Job(**25 keywords) spent most of this
    # function's time taking its keywords apart. Each field is what the keyword was:
    # the conversions are skipped only for values that already have the type.
    get = record.get
    job = _new(_JobDraft)
    value = record["id"]
    job.id = value if type(value) is str else str(value)
    value = record["type"]
    job.type = value if type(value) is str else str(value)
    job.params = record["params"]
    job.status = _STATUS[record["status"]]
    created, run_at = record["created_at"], record["run_at"]
    job.created_at = created_at = _when(created)
    job.run_at = created_at if run_at == created else _when(run_at)
    value = get("priority", 0)
    job.priority = value if type(value) is int else int(value)
    value = get("progress", 0.0)
    job.progress = value if type(value) is float else float(value)
    job.message = get("message")
    job.result = get("result")
    value = get("error")
    job.error = None if value is None else _job_error(value)
    value = get("attempts", 0)
    job.attempts = value if type(value) is int else int(value)
    value = get("max_attempts", 1)
    job.max_attempts = value if type(value) is int else int(value)
    value = get("started_at")
    job.started_at = None if value is None else _when(value)
    value = get("finished_at")
    job.finished_at = None if value is None else _when(value)
    value = get("timeout")
    job.timeout = None if value is None else float(value)
    value = get("retention")
    job.retention = None if value is None else float(value)
    job.idempotency_key = get("idempotency_key")
    job.owner = get("owner")
    job.tags = tuple(get("tags", ()))
    job.cancel_requested = bool(get("cancel_requested", False))
    value = get("history")
    job.history = () if not value else tuple(_run(run) for run in value)
    value = get("trace")
    job.trace = None if value is None else dict(value)
    value = get("version", 1)
    job.version = value if type(value) is int else int(value)
    value = get("lease")
    job.lease = (
        None
        if value is None
        else Lease(str(value["worker_id"]), str(value["token"]), _when(value["expires_at"]))
    )
    job.__class__ = Job
    return job  # type: ignore[no-any-return]


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


def _encoder() -> Callable[[Any], str]:
    """Compact JSON, not ASCII-only: ``json.dumps`` builds a new C encoder on every call;
    this one is built once."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover (an interpreter without the C accelerator)
        return json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    refuse = json.JSONEncoder().default  # the TypeError json.dumps raises
    chunks = make(None, refuse, json.encoder.encode_basestring, None, ":", ",", False, False, True)
    return lambda value: "".join(chunks(value, 0))


_dumps: Final = _encoder()


def dumps(value: Any) -> str:
    """Compact JSON, as used on the wire and in stores."""
    return _dumps(value)


#: The C scanner of a decoder configured as json.loads' own.
_scan: Final[Callable[[str, int], tuple[Any, int]]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def loads(text: bytes | str) -> Any:
    """``json.loads(text)``, without its steps that compact JSON never needs.

    For a stored record (a JSON object, UTF-8 with no BOM nor whitespace around it)
    json.loads spends a third of its time guessing the encoding and skipping blanks
    around the value; anything else goes to json.loads, which also raises its errors.
    """
    if isinstance(text, str):
        chars = text
    elif isinstance(text, (bytes, bytearray)) and text[:2] == b'{"':
        chars = text.decode("utf-8", "surrogatepass")  # what json.loads finds and does
    else:
        return json.loads(text)
    if chars[:2] == '{"':
        try:
            value, end = _scan(chars, 0)
        except StopIteration:  # not a value at all: json.loads raises its error
            pass
        else:
            if end == len(chars):
                return value
    return json.loads(text)


_STATUS_JSON: Final = {status: f'"{status.value}"' for status in JobStatus}
_finite: Final = math.isfinite
_str: Final = json.encoder.encode_basestring  # what the encoder above writes a str with


def _value(value: Any) -> str:
    """``dumps(value)``; the scalars a record holds written without the encoder."""
    if value is None:
        return "null"
    kind = type(value)
    if kind is str:
        return _str(value)
    if kind is int:
        return int.__repr__(value)
    if kind is float and _finite(value):  # the encoder writes NaN, Infinity
        return float.__repr__(value)
    if value is True:
        return "true"
    if value is False:
        return "false"
    return _dumps(value)


def record_text(job: Job) -> str:
    """``dumps(job_to_record(job))``, the same text, written without the record dict.

    The encoder writes a record of mostly scalars key by key (a call per key, a chunk
    per key and value): several times the cost of formatting the one string directly.
    Each field is written as the encoder writes it; values that are not the plain
    scalars a record usually holds go through the encoder itself.
    """
    # The common values inline (an int or a finite float formats as the encoder writes
    # it, x - x == 0.0 only for a finite x; None is null); anything else through _value.
    params, tags, history, lease = job.params, job.tags, job.history, job.lease
    id_, type_, message, result = job.id, job.type, job.message, job.result
    priority, prog, attempts, most = job.priority, job.progress, job.attempts, job.max_attempts
    started, finished, cancel = job.started_at, job.finished_at, job.cancel_requested
    timeout, keep, key, owner = job.timeout, job.retention, job.idempotency_key, job.owner
    trace, version, status = job.trace, job.version, job.status
    # An _iso text never needs escaping (digits, "-", ":", ".", "+", "T").
    started_text = "null" if started is None else f'"{_iso(started)}"'
    finished_text = "null" if finished is None else f'"{_iso(finished)}"'
    return (
        f'{{"id":{_str(id_) if type(id_) is str else _value(id_)},'
        f'"type":{_str(type_) if type(type_) is str else _value(type_)},'
        f'"params":{"{}" if type(params) is dict and not params else _dumps(params)},'
        f'"status":{_STATUS_JSON[status] if type(status) is JobStatus else _str(status.value)},'
        f'"created_at":"{_iso(job.created_at)}","run_at":"{_iso(job.run_at)}",'
        f'"priority":{priority if type(priority) is int else _value(priority)},'
        f'"progress":{prog if type(prog) is float and prog - prog == 0.0 else _value(prog)},'
        f'"message":{"null" if message is None else _value(message)},'
        f'"result":{"null" if result is None else _value(result)},'
        f'"error":{"null" if job.error is None else _dumps(_error(job.error))},'
        f'"attempts":{attempts if type(attempts) is int else _value(attempts)},'
        f'"max_attempts":{most if type(most) is int else _value(most)},'
        f'"started_at":{started_text},"finished_at":{finished_text},'
        f'"timeout":{"null" if timeout is None else _value(timeout)},'
        f'"retention":{keep if type(keep) is float and keep - keep == 0.0 else _value(keep)},'
        f'"idempotency_key":{"null" if key is None else _value(key)},'
        f'"owner":{"null" if owner is None else _value(owner)},'
        f'"tags":{"[]" if tags == () else _dumps(list(tags))},'
        f'"cancel_requested":{"false" if cancel is False else _value(cancel)},'
        f'"history":{"[]" if not history else _dumps(_history(history))},'
        f'"trace":{"null" if trace is None else _value(trace)},'
        f'"version":{version if type(version) is int else _value(version)},'
        f'"lease":{"null" if lease is None else _lease_text(lease)}}}'
    )


def _lease_text(lease: Lease) -> str:
    return (
        f'{{"worker_id":{_value(lease.worker_id)},"token":{_value(lease.token)},'
        f'"expires_at":"{_iso(lease.expires_at)}"}}'
    )


def problem_to_wire(problem: Problem) -> dict[str, Any]:
    """A failing loop as ``GET /health`` shows it: ``{loop, reason, since, failures}``."""
    return {
        "loop": problem.loop,
        "reason": problem.reason,
        "since": format_time(problem.since),
        "failures": problem.failures,
    }
