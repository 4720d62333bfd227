"""Job types: a name, a handler, a params class, and per-type defaults.

Params are validated and structured at submit time, so a bad submission fails with
field-level errors before anything is stored. The stored form of params is the
normalised JSON (see :mod:`asyncjobs.params`); the handler gets the structured object.
"""

from __future__ import annotations

import inspect
import random
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar, final

import attrs
import cattrs

from .errors import ConfigurationError, InvalidParams, UnknownJobType
from .executors import Executor
from .params import field_errors, make_params_converter, normalise, validator_errors
from .schema import params_schema

__all__ = ["Backoff", "Handler", "JobRegistry", "JobType"]

Handler = Callable[..., Any]
H = TypeVar("H", bound=Handler)

DEFAULT_RETENTION = 24 * 3600.0


@attrs.frozen
class Backoff:
    """Exponential backoff with jitter between attempts: ``base * factor**(n-1)``,
    capped at ``max``, then spread by up to ``jitter`` (a fraction) either way."""

    base: float = attrs.field(default=1.0, validator=attrs.validators.ge(0))
    factor: float = attrs.field(default=2.0, validator=attrs.validators.ge(1))
    max: float = attrs.field(default=300.0, validator=attrs.validators.ge(0))
    jitter: float = attrs.field(
        default=0.1, validator=[attrs.validators.ge(0), attrs.validators.le(1)]
    )

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (``attempt`` >= 1 failed)."""
        raw = min(self.base * self.factor ** max(attempt - 1, 0), self.max)
        spread = raw * self.jitter
        return max(0.0, raw + (rng or random).uniform(-spread, spread))


@final
@attrs.frozen(eq=False)
class JobType:
    """One registered kind of job. Build through :meth:`JobRegistry.job_type`."""

    name: str
    handler: Handler
    params_cls: type | None
    converter: cattrs.Converter = attrs.field(repr=False)
    timeout: float | None = None
    max_attempts: int = 3
    backoff: Backoff = Backoff()
    priority: int = 0
    concurrency: int | None = None
    retention: float | None = DEFAULT_RETENTION
    description: str | None = None
    #: Where the handler runs (see :mod:`asyncjobs.executors`).
    executor: Executor = Executor.LOOP

    #: The handler is a coroutine function. Derived once: the worker asks for every job.
    is_async: bool = attrs.field(init=False)

    @is_async.default
    def _is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.handler)

    def __attrs_post_init__(self) -> None:
        _check_executor(self)

    def parse(self, params: Any) -> tuple[Any, dict[str, Any]]:
        """Validate submitted params; return ``(structured, normalised_json)``.

        Raises:
            InvalidParams: with one entry per bad field.
        """
        if params is None:
            params = {}
        if not isinstance(params, Mapping):
            raise InvalidParams(self.name, [{"loc": [], "msg": "params must be a JSON object"}])
        if self.params_cls is None:
            data = dict(params)
            return data, data
        data = dict(params)
        try:
            # One cattrs call builds the instance the way the handler will get it:
            # each attrs converter runs once, validators see the whole instance.
            structured: Any = self.converter.structure(data, self.params_cls)
        except Exception as exc:  # user code (converters, validators) may raise anything
            errors = field_errors(exc, [])
            reported = {str(e["loc"][0]) for e in errors if e["loc"]}
            more = validator_errors(self.converter, self.params_cls, data, reported)
            raise InvalidParams(self.name, errors + more) from None
        normalised = normalise(self.converter, self.params_cls, data, structured)
        return structured, normalised

    def structure(self, params: dict[str, Any]) -> Any:
        """Turn stored (already validated) params back into what the handler takes."""
        if self.params_cls is None:
            return dict(params)
        return self.converter.structure(params, self.params_cls)

    def schema(self) -> dict[str, Any]:
        """The JSON Schema (draft 2020-12) of this type's params."""
        if self.params_cls is None:
            return {"type": "object", "additionalProperties": True}
        return params_schema(self.params_cls)

    def describe(self) -> dict[str, Any]:
        """A JSON-able description for ``GET /job-types`` and the dashboard."""
        return {
            "name": self.name,
            "description": self.description,
            "params_schema": self.schema(),
            "timeout": self.timeout,
            "max_attempts": self.max_attempts,
            "priority": self.priority,
            "concurrency": self.concurrency,
        }


def _executor(value: Executor | str | None, handler: Handler) -> Executor:
    if value is None:  # inferred: async on the loop, sync in a thread
        return Executor.LOOP if inspect.iscoroutinefunction(handler) else Executor.THREAD
    try:
        return Executor(value)
    except ValueError:
        raise ConfigurationError(
            f"executor must be 'loop', 'thread' or 'process', not {value!r}"
        ) from None


def _check_executor(job_type: JobType) -> None:
    handler, executor = job_type.handler, job_type.executor
    name = getattr(handler, "__qualname__", repr(handler))
    if executor is Executor.LOOP and not job_type.is_async:
        raise ConfigurationError(
            f"handler {name} runs on the event loop (executor='loop') but is not an "
            "async def; make it async, or use executor='thread'"
        )
    if executor is Executor.THREAD and job_type.is_async:
        raise ConfigurationError(
            f"handler {name} is an async def and cannot run in a thread; drop "
            "executor='thread' (it runs on the loop)"
        )
    if executor is Executor.PROCESS and (
        "<locals>" in name or "<lambda>" in name or not hasattr(handler, "__module__")
    ):
        raise ConfigurationError(
            f"handler {name} runs in a child process, which imports it by name: define "
            "it at the top level of a module"
        )


#: Annotations of the params parameter that mean "a plain dict".
_DICT_LIKE = (dict, Mapping, typing.Mapping, typing.Dict, Any, object)  # noqa: UP006


def _params_cls_of(handler: Handler) -> type | None:
    positional = [
        p
        for p in inspect.signature(handler).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if len(positional) < 2:
        raise TypeError(
            f"handler {handler.__qualname__} must take (ctx, params); it takes "
            f"{len(positional)} positional parameter(s)"
        )
    param = positional[1]
    raw = param.annotation
    if raw is inspect.Parameter.empty:
        return None
    if isinstance(raw, str):  # `from __future__ import annotations`: resolve it now
        try:
            annotation = eval(raw, getattr(handler, "__globals__", {}))  # what get_type_hints does
        except Exception as exc:
            raise ConfigurationError(
                f"cannot resolve the annotation {raw!r} of the params parameter of handler "
                f"{handler.__qualname__} ({type(exc).__name__}: {exc}); define the class "
                f"at module level, or name it explicitly: job_type(..., params={raw})"
            ) from None
    else:
        annotation = raw
    if attrs.has(annotation):
        return typing.cast(type, annotation)
    if (
        annotation in _DICT_LIKE
        or typing.get_origin(annotation) in (dict, Mapping)
        or (isinstance(annotation, type) and issubclass(annotation, dict))  # a TypedDict
    ):
        return None
    raise ConfigurationError(
        f"the params of handler {handler.__qualname__} are annotated {annotation!r}, which "
        "is neither an attrs class nor a dict; use an attrs class, dict[str, Any], or "
        "job_type(..., params=Cls)"
    )


def _check_params_cls(cls: type, seen: set[type] | None = None) -> None:
    """Resolve the annotations of the params class (and the attrs classes it uses)
    now, at registration, rather than fail at the first submit."""
    if not attrs.has(cls):
        raise TypeError(f"params class {cls!r} is not an attrs class")
    seen = seen if seen is not None else set()
    seen.add(cls)
    try:
        hints = typing.get_type_hints(cls)
    except NameError as exc:
        raise ConfigurationError(
            f"cannot resolve the annotations of params class {cls.__qualname__} ({exc}); "
            "define the classes it names at module level (a class defined inside a "
            "function cannot be found under `from __future__ import annotations`)"
        ) from None
    pending = list(hints.values())
    while pending:
        hint = pending.pop()
        pending.extend(typing.get_args(hint))
        if isinstance(hint, type) and attrs.has(hint) and hint not in seen:
            _check_params_cls(hint, seen)


@final
class JobRegistry:
    """The job types a queue knows; usable on its own and shared between processes.

    A web process and a worker process that import the same registry agree on names,
    params and defaults.
    """

    __slots__ = ("_converter", "_types")

    def __init__(self, converter: cattrs.Converter | None = None) -> None:
        self._types: dict[str, JobType] = {}
        self._converter = converter or make_params_converter()

    def job_type(
        self,
        name: str | None = None,
        *,
        params: type | None = None,
        timeout: float | None = None,
        max_attempts: int = 3,
        backoff: Backoff | None = None,
        priority: int = 0,
        concurrency: int | None = None,
        retention: float | None = DEFAULT_RETENTION,
        description: str | None = None,
        executor: Executor | str | None = None,
    ) -> Callable[[H], H]:
        """Register the decorated function as a job type.

        Args:
            name: The type name clients submit; defaults to the function's name.
            params: The attrs class of the params; defaults to the annotation of the
                handler's second parameter, or a plain ``dict`` when it is not an attrs
                class.
            timeout: Seconds an attempt may run before it is cancelled and fails.
            max_attempts: Attempts before a failing job stays failed (1 = no retry).
            backoff: Delay between attempts.
            priority: Default priority; higher runs first.
            concurrency: At most this many jobs of this type run at once, across all
                workers sharing the store.
            retention: Seconds a finished job is kept; ``None`` keeps it until purged.
            description: Shown in ``GET /job-types`` and the dashboard; defaults to the
                handler's docstring.
            executor: Where the handler runs: ``"loop"`` (an ``async def``, the
                default for one), ``"thread"`` (a sync function, the default for one)
                or ``"process"`` (a child process per job, for CPU-bound work; the
                handler must be a module-level function, its params and result JSON).

        Raises:
            ConfigurationError: the params annotation cannot be resolved, or the
                executor does not fit the handler.
        """

        def decorate(handler: H) -> H:
            self.register(
                name or handler.__name__,
                handler,
                params=params,
                timeout=timeout,
                max_attempts=max_attempts,
                backoff=backoff,
                priority=priority,
                concurrency=concurrency,
                retention=retention,
                description=description,
                executor=executor,
            )
            return handler

        return decorate

    def register(
        self,
        name: str,
        handler: Handler,
        *,
        params: type | None = None,
        timeout: float | None = None,
        max_attempts: int = 3,
        backoff: Backoff | None = None,
        priority: int = 0,
        concurrency: int | None = None,
        retention: float | None = DEFAULT_RETENTION,
        description: str | None = None,
        executor: Executor | str | None = None,
    ) -> JobType:
        """Register ``handler`` under ``name``; see :meth:`job_type` for the arguments."""
        if name in self._types:
            raise ValueError(f"job type {name!r} is registered already")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be positive")
        if concurrency is not None and concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        params_cls = params if params is not None else _params_cls_of(handler)
        if params_cls is not None:
            _check_params_cls(params_cls)
        doc = inspect.getdoc(handler)
        job_type = JobType(
            name=name,
            handler=handler,
            params_cls=params_cls,
            converter=self._converter,
            timeout=timeout,
            max_attempts=max_attempts,
            backoff=backoff or Backoff(),
            priority=priority,
            concurrency=concurrency,
            retention=retention,
            description=description or (doc.splitlines()[0] if doc else None),
            executor=_executor(executor, handler),
        )
        self._types[name] = job_type
        return job_type

    def get(self, name: str) -> JobType:
        """Raises: UnknownJobType."""
        try:
            return self._types[name]
        except KeyError:
            raise UnknownJobType(name, list(self._types)) from None

    def names(self) -> list[str]:
        return list(self._types)

    def concurrency_limits(self) -> dict[str, int]:
        """Per-type limits, for :meth:`Store.claim`."""
        return {t.name: t.concurrency for t in self._types.values() if t.concurrency is not None}

    def describe(self) -> list[dict[str, Any]]:
        return [t.describe() for t in self._types.values()]

    def __contains__(self, name: object) -> bool:
        return name in self._types

    def __iter__(self) -> Iterator[JobType]:
        return iter(list(self._types.values()))

    def __len__(self) -> int:
        return len(self._types)
