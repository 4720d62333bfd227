"""Job types: a name, a handler, a params class, and per-type defaults.

Params are validated and structured at submit time, so a bad submission fails with
field-level errors before anything is stored. The stored form of params is the
normalised JSON (defaults filled in); the handler gets the structured object.
"""

from __future__ import annotations

import enum
import inspect
import random
import typing
from collections.abc import Callable, Iterator, Mapping
from datetime import date, datetime
from typing import Any, TypeVar, final

import attrs
import cattrs
from cattrs import cols
from cattrs.errors import (
    CattrsError,
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
)

from .errors import FieldError, InvalidParams, UnknownJobType
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


def _strict(kind: type, accept: tuple[type, ...]) -> Callable[[Any, Any], Any]:
    name = {int: "an integer", float: "a number", str: "a string", bool: "a boolean"}[kind]

    def hook(value: Any, tp: Any) -> Any:
        # bool is an int subclass: never let true/false pass as a number, or 5.7 become 5.
        if isinstance(value, bool) and kind is not bool:
            raise TypeError(f"expected {name}, got a boolean")
        if tp is not kind and isinstance(tp, type) and issubclass(tp, enum.Enum):
            # singledispatch sends IntEnum and str-mixin enums here by their base class.
            return tp(value)
        if not isinstance(value, accept):
            raise TypeError(f"expected {name}, got {type(value).__name__}")
        return kind(value)

    return hook


def _register_time_hooks(conv: cattrs.Converter) -> None:
    # JSON has no dates: ISO 8601 text in (a trailing "Z" included), ISO 8601 text out.
    def hook(kind: type[date]) -> Callable[[Any, Any], Any]:
        def structure(value: Any, tp: Any) -> Any:
            if not isinstance(value, str):
                raise TypeError(f"expected an ISO 8601 string, got {type(value).__name__}")
            return kind.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)

        return structure

    for kind in (datetime, date):
        conv.register_structure_hook(kind, hook(kind))
        conv.register_unstructure_hook(kind, lambda value: value.isoformat())


def make_params_converter() -> cattrs.Converter:
    """The cattrs converter used for params: strict scalars, unknown keys rejected."""
    conv = cattrs.Converter(forbid_extra_keys=True)
    conv.register_structure_hook(int, _strict(int, (int,)))
    conv.register_structure_hook(float, _strict(float, (int, float)))
    conv.register_structure_hook(str, _strict(str, (str,)))
    conv.register_structure_hook(bool, _strict(bool, (bool,)))
    _register_time_hooks(conv)
    # cattrs' defaults iterate whatever they get: "abc" would pass as ["a", "b", "c"] and
    # a string for a dict would escape as AttributeError. JSON shapes are checked first.
    conv.register_structure_hook_factory(cols.is_any_set, lambda tp: _set_hook(tp, conv))
    conv.register_structure_hook_factory(cols.is_sequence, lambda tp: _array_hook(tp, conv))
    conv.register_structure_hook_factory(
        _is_fixed_tuple,
        lambda tp: _shaped("an array", (list, tuple), conv.gen_structure_hetero_tuple(tp)),
    )
    conv.register_structure_hook_factory(
        cols.is_mapping,
        lambda tp: _shaped("an object", Mapping, cols.mapping_structure_factory(tp, conv)),
    )
    conv.register_structure_hook_factory(
        attrs.has, lambda tp: _shaped("an object", Mapping, conv.gen_structure_attrs_fromdict(tp))
    )
    # Normalised params are stored as JSON, which has no sets.
    conv.register_unstructure_hook_factory(
        cols.is_any_set, lambda tp: cols.iterable_unstructure_factory(tp, conv, list)
    )
    conv.register_unstructure_hook_factory(
        _is_fixed_tuple, lambda tp: lambda value: [conv.unstructure(v) for v in value]
    )
    return conv


def _is_fixed_tuple(tp: Any) -> bool:
    args = typing.get_args(tp)
    return typing.get_origin(tp) is tuple and not (len(args) == 2 and args[1] is Ellipsis)


def _shaped(
    what: str, accept: type | tuple[type, ...], inner: Callable[[Any, Any], Any]
) -> Callable[[Any, Any], Any]:
    def hook(value: Any, tp: Any) -> Any:
        if isinstance(value, str) or not isinstance(value, accept):
            raise TypeError(f"expected {what}, got {type(value).__name__}")
        return inner(value, tp)

    return hook


def _array_hook(tp: Any, conv: cattrs.Converter) -> Callable[[Any, Any], Any]:
    if tp is tuple or typing.get_origin(tp) is tuple:
        return _shaped("an array", (list, tuple), cols.homogenous_tuple_structure_factory(tp, conv))
    return _shaped("an array", (list, tuple), cols.list_structure_factory(tp, conv))


def _set_hook(tp: Any, conv: cattrs.Converter) -> Callable[[Any, Any], Any]:
    args = typing.get_args(tp)
    as_list = list[args[0]] if args else list  # type: ignore[valid-type]
    items = cols.list_structure_factory(as_list, conv)
    kind = frozenset if cols.is_frozenset(tp) else set
    return _shaped("an array", (list, tuple, set, frozenset), lambda v, _: kind(items(v, as_list)))


def _walk(exc: BaseException, loc: list[str | int]) -> list[FieldError]:
    if isinstance(exc, ForbiddenExtraKeysError):
        return [{"loc": [*loc, key], "msg": "unknown field"} for key in sorted(exc.extra_fields)]
    if isinstance(exc, ClassValidationError):
        noted, other = exc.group_exceptions()
        out = [e for sub, note in noted for e in _walk(sub, [*loc, note.name])]
        return out + [e for sub in other for e in _walk(sub, loc)]
    if isinstance(exc, IterableValidationError):
        inoted, iother = exc.group_exceptions()
        out = [e for sub, inote in inoted for e in _walk(sub, [*loc, inote.index])]
        return out + [e for sub in iother for e in _walk(sub, loc)]
    if isinstance(exc, KeyError):
        return [{"loc": loc, "msg": "field required"}]
    return [{"loc": loc, "msg": str(exc)}]


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

    #: The handler is a coroutine function (runs on the loop) rather than sync (runs in
    #: a worker thread). Derived once: the worker asks for every job.
    is_async: bool = attrs.field(init=False)

    @is_async.default
    def _is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.handler)

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
        structured = self._structure_checked(dict(params))
        normalised: dict[str, Any] = self.converter.unstructure(structured)
        return structured, normalised

    def structure(self, params: dict[str, Any]) -> Any:
        """Turn stored (already validated) params back into what the handler takes."""
        if self.params_cls is None:
            return dict(params)
        return self.converter.structure(params, self.params_cls)

    def _structure_checked(self, data: dict[str, Any]) -> Any:
        cls = self.params_cls
        assert cls is not None
        errors: list[FieldError] = []
        values: dict[str, Any] = {}
        fields = attrs.fields(cls)
        known = {f.alias for f in fields if f.init}  # init=False fields are not params
        errors += [{"loc": [k], "msg": "unknown field"} for k in sorted(set(data) - known)]
        hints = typing.get_type_hints(cls)
        for field in fields:
            if not field.init:
                continue
            if field.alias not in data:
                if field.default is attrs.NOTHING:
                    errors.append({"loc": [field.alias], "msg": "field required"})
                continue
            try:
                value = self.converter.structure(data[field.alias], hints.get(field.name, Any))
                if field.converter is not None and callable(field.converter):
                    value = field.converter(value)
                if field.validator is not None:
                    field.validator(None, field, value)
            except (ValueError, TypeError, KeyError, CattrsError) as exc:
                # CattrsError: nested lists/dicts of classes (BaseValidationError), a
                # Literal mismatch and unknown keys all raise subclasses of it.
                errors += _walk(exc, [field.alias])
                continue
            values[field.alias] = value
        if errors:
            raise InvalidParams(self.name, errors)
        try:
            return cls(**values)
        except (ValueError, TypeError) as exc:  # cross-field checks in __attrs_post_init__
            raise InvalidParams(self.name, [{"loc": [], "msg": str(exc)}]) from None

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


def _params_cls_of(handler: Handler) -> type | None:
    try:
        hints = typing.get_type_hints(handler)
    except (NameError, TypeError):
        hints = {}
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
    annotation = hints.get(positional[1].name)
    if annotation is not None and attrs.has(annotation):
        return typing.cast(type, annotation)
    return None


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
        if params_cls is not None and not attrs.has(params_cls):
            raise TypeError(f"params class {params_cls!r} is not an attrs class")
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
