"""JSON Schema (draft 2020-12) for attrs params classes.

Covers what forms and API docs need: JSON types, defaults, required fields, the bounds
of attrs' built-in validators (ge/gt/le/lt, min_len/max_len, in_, matches_re) and a
field's ``metadata={"description": ...}``.
"""

from __future__ import annotations

import enum
import types
import typing
from datetime import date, datetime
from typing import Any, Literal, Union

import attrs

__all__ = ["params_schema"]

_SCALARS: dict[Any, dict[str, Any]] = {
    int: {"type": "integer"},
    float: {"type": "number"},
    str: {"type": "string"},
    bool: {"type": "boolean"},
    type(None): {"type": "null"},
    # Params carry them as ISO 8601 strings (the registry's converter parses them).
    datetime: {"type": "string", "format": "date-time"},
    date: {"type": "string", "format": "date"},
}


def params_schema(cls: type) -> dict[str, Any]:
    """The JSON Schema of an attrs class's ``__init__`` arguments."""
    schema = _object_schema(cls)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = cls.__name__
    return schema


def _object_schema(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for field in attrs.fields(cls):
        if not field.init:
            continue
        prop = _type_schema(hints.get(field.name, Any))
        if field.validator is not None:
            _apply_validator(prop, field.validator)
        description = field.metadata.get("description")
        if description:
            prop["description"] = str(description)
        default = field.default
        if default is attrs.NOTHING:
            required.append(field.alias)
        elif isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            if not default.takes_self:
                prop["default"] = _jsonable(default.factory())
        else:
            prop["default"] = _jsonable(default)
        properties[field.alias] = prop
    out: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
    if required:
        out["required"] = required
    doc = cls.__doc__
    if doc and not doc.startswith(f"{cls.__name__}("):  # attrs' generated repr-like doc
        out["description"] = doc.strip().splitlines()[0]
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if attrs.has(type(value)):  # a default instance of a nested params class
        fields = attrs.fields(type(value))
        return {f.alias: _jsonable(getattr(value, f.name)) for f in fields if f.init}
    if isinstance(value, list | tuple | frozenset | set):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _type_schema(tp: Any) -> dict[str, Any]:
    if tp in _SCALARS:
        return dict(_SCALARS[tp])
    if tp is Any or tp is object:
        return {}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return {"enum": [m.value for m in tp]}
    if isinstance(tp, type) and attrs.has(tp):
        return _object_schema(tp)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        return {"enum": list(args)}
    if origin is Union or origin is types.UnionType:
        non_null = [a for a in args if a is not type(None)]
        options = [_type_schema(a) for a in non_null]
        if len(non_null) < len(args):
            options.append({"type": "null"})
        return {"anyOf": options}
    if origin in (list, set, frozenset, typing.Sequence) or tp in (list, set, frozenset):
        schema: dict[str, Any] = {"type": "array"}
        if args:
            schema["items"] = _type_schema(args[0])
        if origin in (set, frozenset):
            schema["uniqueItems"] = True
        return schema
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return {"type": "array", "items": _type_schema(args[0])}
        return {
            "type": "array",
            "prefixItems": [_type_schema(a) for a in args],
            "minItems": len(args),
            "maxItems": len(args),
        }
    if origin in (dict, typing.Mapping) or tp is dict:
        schema = {"type": "object"}
        if len(args) == 2:
            schema["additionalProperties"] = _type_schema(args[1])
        return schema
    return {}


_BOUND_KEYS = {
    ">=": "minimum",
    ">": "exclusiveMinimum",
    "<=": "maximum",
    "<": "exclusiveMaximum",
}


def _apply_validator(prop: dict[str, Any], validator: Any) -> None:
    # attrs' validators are private classes; read their public-ish attributes by duck
    # typing so a custom validator simply contributes nothing.
    inner = getattr(validator, "_validators", None) or getattr(validator, "validators", None)
    if isinstance(inner, tuple | list):
        for sub in inner:
            _apply_validator(prop, sub)
        return
    op = getattr(validator, "compare_op", None)
    if op in _BOUND_KEYS:
        prop[_BOUND_KEYS[op]] = validator.bound
        return
    if hasattr(validator, "min_length"):
        key = "minItems" if prop.get("type") == "array" else "minLength"
        prop[key] = validator.min_length
        return
    if hasattr(validator, "max_length"):
        key = "maxItems" if prop.get("type") == "array" else "maxLength"
        prop[key] = validator.max_length
        return
    options = getattr(validator, "options", None)
    if options is not None and type(validator).__name__ == "_InValidator":
        prop["enum"] = [_jsonable(o) for o in options]
        return
    pattern = getattr(validator, "pattern", None)
    if pattern is not None and hasattr(pattern, "pattern"):
        prop["pattern"] = pattern.pattern
