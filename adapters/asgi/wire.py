"""Request parsing and response shapes shared by the REST routes and the WebSocket.

Jobs and events use :func:`asyncjobs.codec.job_to_wire` / ``event_to_wire``; this
module adds the shapes the adapter owns: stats, a submission, status filters.
Validation here is about the *shape* of a request (types, ranges); the queue still
validates the params against the job type and raises its own errors.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Final

from asyncjobs.codec import parse_time
from asyncjobs.errors import FieldError
from asyncjobs.job import TERMINAL, JobStatus
from asyncjobs.jsonrules import json_problems
from asyncjobs.stores.protocol import Stats

from .errors import ApiError

__all__ = [
    "MAX_DELAY",
    "MAX_TAGS",
    "MAX_TIMEOUT",
    "check_job_id",
    "check_unicode",
    "SUBMIT_FIELDS",
    "invalid",
    "loads",
    "parse_statuses",
    "parse_submission",
    "stats_to_wire",
]

#: Longest delay accepted on submit: ten years, well inside datetime's range.
MAX_DELAY: Final = 10 * 366 * 86400.0
#: Longest timeout accepted on submit (the same ten years).
MAX_TIMEOUT: Final = MAX_DELAY
MAX_TAGS: Final = 64
MAX_STRING: Final = 256
#: Priorities fit a signed 32-bit integer in every store.
PRIORITY_RANGE: Final = (-(2**31), 2**31 - 1)

SUBMIT_FIELDS: Final = frozenset(
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
    }
)


def invalid(errors: list[FieldError], message: str = "the request is not valid") -> ApiError:
    """A 422 ``invalid_request`` carrying field errors."""
    summary = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
    return ApiError(422, "invalid_request", f"{message}: {summary}", details=errors)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def loads(raw: bytes | str) -> Any:
    """Parse JSON strictly: no NaN or Infinity, and valid Unicode only.

    Raises:
        ApiError: 400 ``malformed_json``, or 400 ``invalid_unicode`` for a lone
            surrogate (``"\\ud800"``), which no store can encode.
    """
    if not raw:
        raise ApiError(400, "malformed_json", "the request body is empty; send a JSON object")
    try:
        value = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        # UnicodeDecodeError and JSONDecodeError are both ValueErrors.
        raise ApiError(
            400, "malformed_json", f"the request body is not valid JSON: {exc}"
        ) from None
    check_unicode(value)
    return value


def check_unicode(value: Any) -> None:
    """Refuse text that is not valid Unicode anywhere in ``value`` (a parsed JSON body).

    Raises:
        ApiError: 400 ``invalid_unicode`` naming where.
    """
    stack: list[tuple[Any, list[str | int]]] = [(value, [])]
    while stack:
        item, loc = stack.pop()
        if isinstance(item, str):
            bad = _surrogate(item)
        elif isinstance(item, dict):
            bad = any(_surrogate(k) for k in item)
            stack.extend((v, [*loc, k]) for k, v in item.items())
        elif isinstance(item, list):
            bad = False
            stack.extend((v, [*loc, i]) for i, v in enumerate(item))
        else:
            bad = False
        if bad:
            where = ".".join(ascii(p) if isinstance(p, str) else str(p) for p in loc) or "(body)"
            raise ApiError(
                400,
                "invalid_unicode",
                f"the JSON holds text that is not valid Unicode (a lone surrogate) at {where}",
                details=[{"loc": [ascii(p) if isinstance(p, str) else p for p in loc]}],
            )


def _surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


_JOB_ID: Final = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}", re.IGNORECASE)


def check_job_id(value: Any, loc: list[str | int] | None = None) -> str:
    """Return ``value`` if it looks like a job id (a 26-character ULID).

    Raises:
        ApiError: 400 ``invalid_id``; an id of the right shape that names no job is
            left to the queue (404).
    """
    if isinstance(value, str) and _JOB_ID.fullmatch(value):
        return value
    shown = value if isinstance(value, str) and len(value) <= 64 else "this value"
    raise ApiError(
        400,
        "invalid_id",
        f"{ascii(shown) if isinstance(shown, str) else shown} is not a job id; "
        "job ids are 26-character ULIDs (0-9 and A-Z without I, L, O, U)",
        details={"loc": loc or ["path", "job_id"]},
    )


def stats_to_wire(stats: Stats) -> dict[str, Any]:
    """``{"counts": {status: n}, "by_type": {type: {status: n}}, "total": n}``, zero-filled."""
    counts = {s.value: int(stats.counts.get(s, 0)) for s in JobStatus}
    by_type = {
        name: {s.value: int(per.get(s, 0)) for s in JobStatus}
        for name, per in sorted(stats.by_type.items())
    }
    return {"counts": counts, "by_type": by_type, "total": sum(counts.values())}


def parse_statuses(
    values: Iterable[str], *, loc: list[str | int], terminal_only: bool = False
) -> list[JobStatus] | None:
    """Statuses from repeated or comma-separated values; ``None`` when none given.

    Raises:
        ApiError: 422 naming the bad value.
    """
    out: list[JobStatus] = []
    allowed = sorted(s.value for s in (TERMINAL if terminal_only else JobStatus))
    for value in values:
        for part in value.split(","):
            part = part.strip()
            try:
                status = JobStatus(part)
            except ValueError:
                msg = f"unknown status {part!r}; use {allowed}"
                raise invalid([{"loc": loc, "msg": msg}]) from None
            if terminal_only and status not in TERMINAL:
                raise invalid(
                    [{"loc": loc, "msg": f"{part!r} is not a finished status; use {allowed}"}]
                )
            out.append(status)
    return out or None


def _number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True  # exact; math.isfinite would overflow on a 400-digit int
    return isinstance(value, float) and math.isfinite(value)


def _integer(value: Any, lo: int, hi: int, name: str, errors: list[FieldError]) -> int | None:
    # JSON Schema counts 3.0 as an integer, so accept whole floats too. Compare before
    # converting: int and float compare exactly, and int(1e300) is fine but pointless.
    if _number(value) and lo <= value <= hi and float(value).is_integer():
        return int(value)
    errors.append({"loc": [name], "msg": f"must be an integer in [{lo}, {hi}]"})
    return None


def _short_string(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_STRING and "\x00" not in value


def parse_submission(
    body: Any,
    *,
    type_key: str = "type",
    idempotency_key: str | None = None,
    ignore: frozenset[str] = frozenset(),
) -> tuple[str, dict[str, Any]]:
    """Check a submission's shape; return ``(job_type, keyword arguments for submit)``.

    Args:
        body: The decoded JSON.
        type_key: The key holding the job type (``"job_type"`` on the WebSocket, whose
            messages use ``type`` for the message kind).
        idempotency_key: From the ``Idempotency-Key`` header; the body's wins.
        ignore: Keys to skip (the WebSocket's ``type`` and ``request_id``).

    Raises:
        ApiError: 422 ``invalid_request`` with one field error per problem.
    """
    if not isinstance(body, Mapping):
        raise invalid([{"loc": [], "msg": "the body must be a JSON object"}])
    errors: list[FieldError] = []
    allowed = (SUBMIT_FIELDS - {"type"}) | {type_key}
    errors += [{"loc": [k], "msg": "unknown field"} for k in sorted(set(body) - allowed - ignore)]
    job_type = body.get(type_key)
    if not _short_string(job_type):
        errors.append({"loc": [type_key], "msg": "required: the name of a job type"})
    kwargs: dict[str, Any] = {}
    params = body.get("params")
    if params is not None and not isinstance(params, Mapping):
        errors.append({"loc": ["params"], "msg": "must be a JSON object"})
    elif params is not None:
        errors += json_problems(params, ["params"])  # what no store could hold
    kwargs["params"] = params
    if (priority := body.get("priority")) is not None:
        lo, hi = PRIORITY_RANGE
        kwargs["priority"] = _integer(priority, lo, hi, "priority", errors)
    if (delay := body.get("delay")) is not None:
        if not _number(delay) or not 0 <= delay <= MAX_DELAY:
            errors.append({"loc": ["delay"], "msg": f"must be seconds in [0, {MAX_DELAY:g}]"})
        kwargs["delay"] = delay
    if (run_at := body.get("run_at")) is not None:
        kwargs["run_at"] = _parse_run_at(run_at, errors)
    if (timeout := body.get("timeout")) is not None:
        if not _number(timeout) or not 0 < timeout <= MAX_TIMEOUT:
            errors.append({"loc": ["timeout"], "msg": f"must be seconds in (0, {MAX_TIMEOUT:g}]"})
        kwargs["timeout"] = timeout
    if (max_attempts := body.get("max_attempts")) is not None:
        kwargs["max_attempts"] = _integer(max_attempts, 1, 1000, "max_attempts", errors)
    if idempotency_key is not None and not _short_string(idempotency_key):
        errors.append(
            {"loc": ["header", "Idempotency-Key"], "msg": f"must be 1 to {MAX_STRING} characters"}
        )
    key = body.get("idempotency_key")
    if key is None:
        key = idempotency_key
    if key is not None:
        if not _short_string(key):
            errors.append(
                {"loc": ["idempotency_key"], "msg": f"must be 1 to {MAX_STRING} characters"}
            )
        kwargs["idempotency_key"] = key
    if (tags := body.get("tags")) is not None:
        if (
            not isinstance(tags, list)
            or len(tags) > MAX_TAGS
            or not all(_short_string(t) for t in tags)
        ):
            errors.append(
                {"loc": ["tags"], "msg": f"must be a list of at most {MAX_TAGS} short strings"}
            )
        kwargs["tags"] = tags
    if errors:
        raise invalid(errors, "the submission is not valid")
    assert isinstance(job_type, str)
    return job_type, kwargs


def _parse_run_at(value: Any, errors: list[FieldError]) -> datetime | None:
    if isinstance(value, str) and len(value) <= 64:
        try:
            return parse_time(value)
        except (ValueError, OverflowError):
            pass
    errors.append({"loc": ["run_at"], "msg": "must be an ISO 8601 date-time"})
    return None
