"""JSON Schema of params classes: shapes, defaults, bounds, and agreement with parse()."""

from __future__ import annotations

import enum
from typing import Any, Literal, Optional

import attrs
import jsonschema
import pytest

from asyncjobs import InvalidParams, JobRegistry
from asyncjobs.schema import params_schema

V = attrs.validators


class Size(enum.Enum):
    SMALL = "s"
    LARGE = "l"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


@attrs.frozen
class Leaf:
    """A nested class."""

    depth: int = attrs.field(validator=V.gt(0))
    note: str | None = None


@attrs.frozen
class Everything:
    """Every supported shape in one class."""

    count: int
    ratio: float = 0.5
    name: str = "n"
    on: bool = True
    maybe: Optional[int] = None  # noqa: UP045 - the old spelling must work too
    mode: Literal["a", "b"] = "a"
    size: Size = Size.SMALL
    level: Level = Level.LOW
    items: list[int] = attrs.Factory(list)
    tags: frozenset[str] = frozenset()
    pair: tuple[int, str] = (1, "x")
    many: tuple[float, ...] = ()
    scores: dict[str, float] = attrs.Factory(dict)
    raw: dict = attrs.Factory(dict)  # type: ignore[type-arg]
    leaf: Leaf = Leaf(1)
    leaves: list[Leaf] = attrs.Factory(lambda: [Leaf(2)])
    anything: Any = None


@attrs.frozen
class Bounded:
    ge: int = attrs.field(default=0, validator=V.ge(0))
    gt: float = attrs.field(default=1.0, validator=V.gt(0))
    le: int = attrs.field(default=0, validator=V.le(10))
    lt: float = attrs.field(default=0.0, validator=V.lt(1))
    both: int = attrs.field(default=5, validator=[V.ge(1), V.le(9)])
    text: str = attrs.field(default="ab", validator=[V.min_len(1), V.max_len(4)])
    many: list[int] = attrs.field(default=attrs.Factory(lambda: [1]), validator=V.min_len(1))
    few: list[int] = attrs.Factory(list)
    choice: str = attrs.field(default="x", validator=V.in_(["x", "y"]))
    code: str = attrs.field(default="A1", validator=V.matches_re(r"[A-Z][0-9]"))
    custom: int = attrs.field(default=0, validator=lambda *_: None)


@attrs.frozen
class Described:
    seconds: int = attrs.field(metadata={"description": "How long to count."})
    plain: int = 0
    hidden: int = attrs.field(init=False, default=3)
    stamp: list[int] = attrs.field(factory=list)
    derived: str = attrs.field(default=attrs.Factory(lambda self: str(self.plain), takes_self=True))


@attrs.frozen
class Aliased:
    _private: int = attrs.field(default=0, alias="private")


def props(cls: type) -> dict[str, Any]:
    return params_schema(cls)["properties"]  # type: ignore[no-any-return]


# -- shapes ----------------------------------------------------------------------------


def test_scalars() -> None:
    p = props(Everything)
    assert p["count"] == {"type": "integer"}
    assert p["ratio"] == {"type": "number", "default": 0.5}
    assert p["name"] == {"type": "string", "default": "n"}
    assert p["on"] == {"type": "boolean", "default": True}


def test_optional_and_unions() -> None:
    @attrs.frozen
    class Unions:
        either: int | str = 1

    assert props(Everything)["maybe"] == {
        "anyOf": [{"type": "integer"}, {"type": "null"}],
        "default": None,
    }
    assert props(Unions)["either"] == {
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "default": 1,
    }


def test_literal_and_enums() -> None:
    p = props(Everything)
    assert p["mode"] == {"enum": ["a", "b"], "default": "a"}
    assert p["size"] == {"enum": ["s", "l"], "default": "s"}
    assert p["level"] == {"enum": [1, 2], "default": 1}


def test_collections() -> None:
    p = props(Everything)
    assert p["items"] == {"type": "array", "items": {"type": "integer"}, "default": []}
    assert p["tags"] == {
        "type": "array",
        "items": {"type": "string"},
        "uniqueItems": True,
        "default": [],
    }
    assert p["pair"] == {
        "type": "array",
        "prefixItems": [{"type": "integer"}, {"type": "string"}],
        "minItems": 2,
        "maxItems": 2,
        "default": [1, "x"],
    }
    assert p["many"] == {"type": "array", "items": {"type": "number"}, "default": []}
    assert p["scores"] == {
        "type": "object",
        "additionalProperties": {"type": "number"},
        "default": {},
    }
    assert p["raw"] == {"type": "object", "default": {}}
    assert p["anything"] == {"default": None}


def test_nested_classes_and_their_defaults() -> None:
    p = props(Everything)
    leaf_schema = {
        "type": "object",
        "description": "A nested class.",
        "properties": {
            "depth": {"type": "integer", "exclusiveMinimum": 0},
            "note": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
        },
        "required": ["depth"],
        "additionalProperties": False,
    }
    assert p["leaf"] == {**leaf_schema, "default": {"depth": 1, "note": None}}
    assert p["leaves"] == {
        "type": "array",
        "items": leaf_schema,
        "default": [{"depth": 2, "note": None}],
    }


def test_top_level_keywords() -> None:
    schema = params_schema(Everything)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] == "Everything"
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["count"]
    assert schema["description"] == "Every supported shape in one class."
    assert "description" not in params_schema(Bounded)  # attrs' generated doc is not one


def test_bounds_from_validators() -> None:
    p = props(Bounded)
    assert p["ge"]["minimum"] == 0
    assert p["gt"]["exclusiveMinimum"] == 0
    assert p["le"]["maximum"] == 10
    assert p["lt"]["exclusiveMaximum"] == 1
    assert (p["both"]["minimum"], p["both"]["maximum"]) == (1, 9)
    assert (p["text"]["minLength"], p["text"]["maxLength"]) == (1, 4)
    assert p["many"]["minItems"] == 1
    assert "minItems" not in p["few"]
    assert p["choice"]["enum"] == ["x", "y"]
    assert p["code"]["pattern"] == "[A-Z][0-9]"
    assert p["custom"] == {"type": "integer", "default": 0}  # contributes nothing


def test_required_defaults_factories_descriptions_and_aliases() -> None:
    schema = params_schema(Described)
    p = schema["properties"]
    assert schema["required"] == ["seconds"]
    assert p["seconds"] == {"type": "integer", "description": "How long to count."}
    assert p["plain"] == {"type": "integer", "default": 0}
    assert "private" in props(Aliased)  # the __init__ name, which clients send
    assert "_private" not in props(Aliased)
    assert "hidden" not in p  # init=False: clients cannot set it
    assert p["stamp"]["default"] == []
    assert "default" not in p["derived"]  # depends on other fields: no static default


def test_a_job_types_schema_is_the_params_schema() -> None:
    registry = JobRegistry()
    job_type = registry.register("b", lambda ctx, params: None, params=Bounded)
    assert job_type.schema() == params_schema(Bounded)


# -- agreement with jsonschema and with parse() ----------------------------------------

CLASSES = [Everything, Bounded, Described, Leaf]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_schema_is_a_valid_draft_2020_12_schema(cls: type) -> None:
    jsonschema.Draft202012Validator.check_schema(params_schema(cls))


GOOD: list[tuple[type, dict[str, Any]]] = [
    (Everything, {"count": 1}),
    (
        Everything,
        {
            "count": 2,
            "maybe": 3,
            "mode": "b",
            "size": "l",
            "level": 2,
            "items": [1, 2],
            "tags": ["x", "y"],
            "pair": [5, "five"],
            "many": [1.5, 2],
            "scores": {"a": 1.0},
            "raw": {"k": [1, {"z": None}]},
            "leaf": {"depth": 3, "note": "n"},
            "leaves": [],
            "anything": {"free": "form"},
        },
    ),
    (Bounded, {}),
    (Bounded, {"both": 9, "text": "abcd", "many": [1, 2], "choice": "y", "code": "Z9"}),
    (Described, {"seconds": 5, "plain": 2}),
]


@pytest.mark.parametrize(("cls", "params"), GOOD)
def test_normalised_params_validate_against_the_schema(cls: type, params: dict[str, Any]) -> None:
    job_type = JobRegistry().register("t", lambda ctx, params: None, params=cls)
    _, normalised = job_type.parse(params)
    validator = jsonschema.Draft202012Validator(job_type.schema())
    assert list(validator.iter_errors(normalised)) == []
    assert list(validator.iter_errors(params)) == []


BAD: list[tuple[type, dict[str, Any]]] = [
    (Everything, {}),
    (Everything, {"count": "1"}),
    (Everything, {"count": 1.5}),
    (Everything, {"count": True}),
    (Everything, {"count": 1, "unknown": 1}),
    (Everything, {"count": 1, "mode": "c"}),
    (Everything, {"count": 1, "size": "m"}),
    (Everything, {"count": 1, "items": "12"}),
    (Everything, {"count": 1, "pair": [1, 2]}),
    (Everything, {"count": 1, "leaf": {"depth": 0}}),
    (Everything, {"count": 1, "leaf": {"depth": 1, "extra": 0}}),
    (Everything, {"count": 1, "leaves": [{"note": "no depth"}]}),
    (Everything, {"count": 1, "scores": {"a": "high"}}),
    (Bounded, {"ge": -1}),
    (Bounded, {"gt": 0}),
    (Bounded, {"le": 11}),
    (Bounded, {"lt": 1}),
    (Bounded, {"both": 10}),
    (Bounded, {"text": ""}),
    (Bounded, {"text": "abcde"}),
    (Bounded, {"many": []}),
    (Bounded, {"choice": "z"}),
    (Bounded, {"code": "a1"}),
    (Described, {"plain": 1}),
    (Described, {"seconds": 1, "hidden": 1}),
]


@pytest.mark.parametrize(("cls", "params"), BAD)
def test_bad_params_are_rejected_by_both_schema_and_parse(
    cls: type, params: dict[str, Any]
) -> None:
    job_type = JobRegistry().register("t", lambda ctx, params: None, params=cls)
    validator = jsonschema.Draft202012Validator(job_type.schema())
    assert list(validator.iter_errors(params)), "the schema accepted bad params"
    with pytest.raises(InvalidParams):
        job_type.parse(params)
