"""Params: the cattrs converter, the mapping of its errors to field errors, and the
stored (normalised) form.

Params are structured with one cattrs call, so each attrs converter runs once and
validators see the whole instance (cross-field checks work). Everything that call
raises, including errors from user-written converters and validators, becomes a list
of field errors with ``loc`` paths; nothing escapes as a server error.
"""

from __future__ import annotations

import enum
import linecache
import re
import typing
from collections.abc import Callable, Mapping
from datetime import date, datetime
from typing import Any

import attrs
import cattrs
from cattrs import cols
from cattrs.errors import (
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
)

from .errors import FieldError

__all__ = ["field_errors", "make_params_converter", "normalise", "validator_errors"]


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


#: A converter or validator call in the ``__init__`` that attrs generates.
_GENERATED_STEP = re.compile(r"__attr_(?:converter|validator)_(\w+)\(")


def _failing_field(exc: BaseException) -> str | None:
    """The attribute whose converter or validator raised ``exc`` in an attrs
    ``__init__`` (attrs keeps the generated source in linecache), if any."""
    found = None
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name == "__init__" and code.co_filename.startswith("<attrs generated"):
            match = _GENERATED_STEP.search(linecache.getline(code.co_filename, tb.tb_lineno))
            found = match.group(1) if match else None
        tb = tb.tb_next
    return found


def _message(exc: BaseException) -> str:
    # attrs' instance_of and in_ raise with (message, attribute, ...) as their args.
    if len(exc.args) > 1 and isinstance(exc.args[0], str):
        return exc.args[0]
    return str(exc) or type(exc).__name__


def field_errors(exc: BaseException, loc: list[str | int]) -> list[FieldError]:
    if isinstance(exc, ForbiddenExtraKeysError):
        return [{"loc": [*loc, key], "msg": "unknown field"} for key in sorted(exc.extra_fields)]
    if isinstance(exc, ClassValidationError):
        noted, other = exc.group_exceptions()
        # Unknown keys first (as a reader scans the submission), then field by field.
        unknown = [sub for sub in other if isinstance(sub, ForbiddenExtraKeysError)]
        other = [sub for sub in other if not isinstance(sub, ForbiddenExtraKeysError)]
        out = [e for sub in unknown for e in field_errors(sub, loc)]
        out += [e for sub, note in noted for e in field_errors(sub, [*loc, note.name])]
        # Not structuring errors: the class's own __init__ raised (a converter, a
        # validator, __attrs_post_init__); point at the field where we can tell.
        aliases = {f.name: f.alias for f in attrs.fields(exc.cl)} if attrs.has(exc.cl) else {}
        for sub in other:
            name = _failing_field(sub)
            where = [*loc, aliases[name]] if name in aliases else loc
            out += field_errors(sub, where)
        return out
    if isinstance(exc, IterableValidationError):
        inoted, iother = exc.group_exceptions()
        out = [e for sub, inote in inoted for e in field_errors(sub, [*loc, inote.index])]
        return out + [e for sub in iother for e in field_errors(sub, loc)]
    if isinstance(exc, KeyError) and _failing_field(exc) is None:
        return [{"loc": loc, "msg": "field required"}]
    return [{"loc": loc, "msg": _message(exc)}]


def normalise(conv: cattrs.Converter, cls: type, raw: Any, value: Any) -> Any:
    """The stored form of params: what was given, structured by type, defaults filled.

    A field with an attrs converter is stored as given (structured by type only), not
    converted: the handler's params are structured from the stored form, and a
    converter that ran at submit time must not run on its own output again.
    """
    if not (attrs.has(cls) and isinstance(raw, Mapping) and attrs.has(type(value))):
        return conv.unstructure(value)
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for field in attrs.fields(cls):
        if not field.init:
            continue
        hint = hints.get(field.name, Any)
        given = field.alias in raw
        if field.converter is not None:
            if given:  # as given; the converter runs when the params are structured
                out[field.alias] = conv.unstructure(conv.structure(raw[field.alias], hint), hint)
            continue  # a default: applied (and converted) again when structured
        current = getattr(value, field.name)
        if given and attrs.has(hint):
            out[field.alias] = normalise(conv, hint, raw[field.alias], current)
        elif given and _is_list_of_attrs(hint) and isinstance(raw[field.alias], list | tuple):
            item = typing.get_args(hint)[0]
            out[field.alias] = [
                normalise(conv, item, r, v) for r, v in zip(raw[field.alias], current, strict=True)
            ]
        else:
            out[field.alias] = conv.unstructure(current, hint)
    return out


def _is_list_of_attrs(hint: Any) -> bool:
    args = typing.get_args(hint)
    return typing.get_origin(hint) in (list, tuple) and len(args) == 1 and attrs.has(args[0])


def validator_errors(
    conv: cattrs.Converter, cls: type, data: Mapping[str, Any], reported: set[str]
) -> list[FieldError]:
    """The validator errors of the fields not in ``reported``, when the class could not
    be built (another field failed): so that one response names every bad field.

    Only runs after a failed structuring, where no converter has run yet. Validators
    get an instance with the fields that could be built; one that reads a field that
    could not (an ``AttributeError``) is skipped rather than reported wrongly.
    """
    hints = typing.get_type_hints(cls)
    partial: Any = object.__new__(cls)
    built: list[tuple[attrs.Attribute[Any], Any]] = []
    for field in attrs.fields(cls):
        if not field.init or field.alias in reported:
            continue
        try:
            if field.alias in data:
                value = conv.structure(data[field.alias], hints.get(field.name, Any))
                if field.converter is not None:
                    if not callable(field.converter) or isinstance(
                        field.converter, attrs.Converter
                    ):
                        continue  # a converter that needs the instance: no partial answer
                    value = field.converter(value)
            elif isinstance(field.default, attrs.Factory):  # type: ignore[arg-type]
                if field.default.takes_self:
                    continue
                value = field.default.factory()
            elif field.default is not attrs.NOTHING:
                value = field.default
            else:
                continue
        except Exception:
            continue
        object.__setattr__(partial, field.name, value)
        built.append((field, value))
    errors: list[FieldError] = []
    for field, value in built:
        if field.validator is None or field.alias not in data:
            continue
        try:
            field.validator(partial, field, value)
        except AttributeError:
            continue  # a cross-field check on a field that could not be built
        except Exception as exc:  # user code: any error is that field's error
            errors.append({"loc": [field.alias], "msg": _message(exc)})
    return errors
