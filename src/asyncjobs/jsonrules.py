"""The JSON rules every store applies, so that no stored value can break a later read.

One rule on the way in and the way out: text is valid Unicode without NUL (PostgreSQL
text and jsonb refuse NUL; a lone surrogate cannot be encoded as UTF-8), numbers are
finite and within a double's range, nesting is at most :data:`MAX_DEPTH` deep, and
only JSON types appear. A submission that breaks it is refused
(:func:`check_storable`, called by every store's ``add``); free text a job produces is
repaired instead (:func:`clean_text`).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from typing import Any, Final

from .errors import InvalidSubmission
from .job import Job

__all__ = ["MAX_DEPTH", "check_storable", "clean_text", "json_problems", "text_problem"]

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
    params = job.params
    # Most jobs carry no params and no tags: nothing to walk (the walk's ABC checks are
    # a tenth of a submit's own Python time).
    errors = [] if type(params) is dict and not params else json_problems(params, ["params"])
    if job.tags:
        errors += json_problems(list(job.tags), ["tags"])
    for name in ("type", "idempotency_key", "owner"):
        value = getattr(job, name)
        if isinstance(value, str) and (problem := text_problem(value)) is not None:
            errors.append({"loc": [name], "msg": problem})
    if errors:
        raise InvalidSubmission(errors)
