"""The adapter's public names, and the one status per core error."""

from __future__ import annotations

import inspect

import asyncjobs.adapters.asgi as asgi
import pytest
from asyncjobs.adapters.asgi.errors import STATUS_BY_ERROR, error_payload, status_for

from asyncjobs import errors


def test_all_is_sorted_and_importable() -> None:
    assert asgi.__all__ == sorted(asgi.__all__)
    for name in asgi.__all__:
        assert hasattr(asgi, name), name


def test_every_core_error_a_request_can_raise_has_a_status() -> None:
    raised_by_requests = {
        errors.JobNotFound: 404,
        errors.UnknownJobType: 422,
        errors.InvalidParams: 422,
        errors.InvalidSubmission: 422,
        errors.IllegalTransition: 409,
        errors.QueueFull: 429,
        errors.LeaseLost: 409,
        errors.ConfigurationError: 503,
    }
    for cls, status in raised_by_requests.items():
        assert cls in STATUS_BY_ERROR or any(c in STATUS_BY_ERROR for c in cls.__mro__)
        sample = _sample(cls)
        assert status_for(sample) == status, cls
        body = error_payload(sample)["error"]
        assert body["code"] == cls.code
        assert body["message"] == str(sample)


def test_unexpected_errors_hide_their_text() -> None:
    body = error_payload(RuntimeError("password=hunter2"))["error"]
    assert status_for(RuntimeError()) == 500
    assert body["code"] == "internal_error"
    assert "hunter2" not in body["message"]


def _sample(cls: type[errors.AsyncJobsError]) -> errors.AsyncJobsError:
    arguments = {
        "job_id": "01J",
        "name": "nope",
        "job_type": "t",
        "errors": [{"loc": ["x"], "msg": "bad"}],
        "from_status": "completed",
        "to_status": "cancelled",
        "limit": 3,
    }
    try:
        parameters = inspect.signature(cls).parameters
    except ValueError:  # no __init__ of its own: it takes a message
        return cls("the queue is not open")
    try:
        return cls(**{k: v for k, v in arguments.items() if k in parameters})
    except TypeError:
        pytest.fail(f"cannot build a sample {cls.__name__}")
