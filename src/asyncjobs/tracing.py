"""OpenTelemetry spans for submits and attempts (``pip install 'asyncjobs[otel]'``).

A submit runs in a PRODUCER span and stores the W3C trace context in the job
(``job.trace``); each attempt runs in a CONSUMER span whose parent is that context, so
a worker in another process continues the submitter's trace. Attributes follow the
OpenTelemetry messaging conventions (``messaging.system``, ``messaging.operation.*``,
``messaging.destination.name`` = the job type, ``messaging.message.id`` = the job id).

Without opentelemetry-api installed every function here does nothing, and nothing is
imported until the first submit.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, Final, TypeVar

if TYPE_CHECKING:
    from .job import Job
    from .stores.protocol import Outcome

__all__ = ["attempt_span", "enabled", "inject", "set_job", "submit_span"]

SYSTEM: Final = "asyncjobs"
T = TypeVar("T")


@functools.cache
def _otel() -> Any:
    """The opentelemetry API modules, or None when it is not installed (checked once)."""
    try:
        from opentelemetry import propagate, trace
    except ImportError:
        return None
    return (trace, propagate)


def enabled() -> bool:
    """Whether opentelemetry-api is installed (the worker skips :func:`attempt_span`'s
    extra coroutine per job when it is not)."""
    return _otel() is not None


def _tracer(trace: Any) -> Any:
    return trace.get_tracer("asyncjobs")


@contextlib.contextmanager
def submit_span(job_type: str, *, batch: int | None = None) -> Iterator[Any]:
    """A PRODUCER span around one submit (or one batch of ``batch`` jobs)."""
    otel = _otel()
    if otel is None:
        yield None
        return
    trace, _ = otel
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": "send",
        "messaging.operation.name": "submit",
        "messaging.destination.name": job_type,
    }
    if batch is not None:
        attributes["messaging.batch.message_count"] = batch
    name = f"send {job_type}"
    with _tracer(trace).start_as_current_span(
        name, kind=trace.SpanKind.PRODUCER, attributes=attributes
    ) as span:
        yield span


def inject() -> dict[str, str] | None:
    """The current trace context as a W3C carrier (``traceparent``...), or None."""
    otel = _otel()
    if otel is None:
        return None
    trace, propagate = otel
    if not trace.get_current_span().get_span_context().is_valid:
        return None  # no active trace (or no SDK): nothing to carry, skip the propagators
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier or None


def set_job(span: Any, job: Job) -> None:
    """Name the stored job on a submit span."""
    if span is not None:
        span.set_attribute("messaging.message.id", job.id)


async def attempt_span(job: Job, run: Callable[[], Awaitable[Outcome | None]]) -> Outcome | None:
    """Run one attempt inside a CONSUMER span continuing the submitter's trace."""
    otel = _otel()
    if otel is None:
        return await run()
    trace, propagate = otel
    if job.trace is None and isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        # No SDK installed (the API's proxy still stands in) and no context to carry on:
        # the span would be a no-op one, at a tenth of a no-op job's time.
        return await run()
    parent = propagate.extract(job.trace or {})
    attributes = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": job.type,
        "messaging.message.id": job.id,
        "asyncjobs.job.attempt": job.attempts,
    }
    with _tracer(trace).start_as_current_span(
        f"process {job.type}", context=parent, kind=trace.SpanKind.CONSUMER, attributes=attributes
    ) as span:
        outcome = await run()
        if outcome is not None:
            span.set_attribute("asyncjobs.job.outcome", outcome.status.value)
            if outcome.error is not None:
                span.set_status(trace.Status(trace.StatusCode.ERROR, outcome.error.message))
        return outcome
