"""JobRegistry and JobType on their own: registration, params parsing, backoff."""

from __future__ import annotations

import enum
import random
from typing import Any, Literal

import attrs
import pytest

from asyncjobs import Backoff, ConfigurationError, InvalidParams, JobRegistry, UnknownJobType
from asyncjobs.registry import DEFAULT_RETENTION, JobType


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@attrs.frozen
class Point:
    x: int = attrs.field(validator=attrs.validators.ge(0))
    label: str = "p"


@attrs.frozen
class Params:
    n: int = attrs.field(validator=[attrs.validators.ge(1), attrs.validators.le(10)])
    ratio: float = 0.5
    name: str = attrs.field(default="x", validator=attrs.validators.max_len(3))
    flag: bool = False
    maybe: int | None = None
    mode: Literal["fast", "slow"] = "fast"
    color: Color = Color.RED
    points: list[Point] = attrs.Factory(list)
    origin: Point = Point(0)
    weights: dict[str, int] = attrs.Factory(dict)
    labels: frozenset[str] = frozenset()


async def handler(ctx: Any, params: Params) -> None:
    """Does the thing.

    More text that is not the summary.
    """


def registry_with(**options: Any) -> tuple[JobRegistry, JobType]:
    registry = JobRegistry()
    job_type = registry.register("t", handler, **options)
    return registry, job_type


def errors_of(job_type: JobType, params: Any) -> list[dict[str, Any]]:
    with pytest.raises(InvalidParams) as info:
        job_type.parse(params)
    assert info.value.job_type == job_type.name
    return info.value.errors


# -- registration ---------------------------------------------------------------------


def test_decorator_registers_and_returns_the_function_unchanged() -> None:
    registry = JobRegistry()

    @registry.job_type("sum", timeout=5, max_attempts=2, priority=7, concurrency=1)
    async def summer(ctx: Any, params: Params) -> int:
        return params.n

    assert "sum" in registry
    assert registry.names() == ["sum"]
    assert len(registry) == 1
    job_type = registry.get("sum")
    assert job_type.handler is summer
    assert job_type.params_cls is Params
    assert (job_type.timeout, job_type.max_attempts, job_type.priority) == (5, 2, 7)
    assert job_type.concurrency == 1
    assert registry.concurrency_limits() == {"sum": 1}
    assert [t.name for t in registry] == ["sum"]


def test_decorator_defaults_the_name_and_the_description() -> None:
    registry = JobRegistry()
    registry.job_type()(handler)
    job_type = registry.get("handler")
    assert job_type.description == "Does the thing."
    assert job_type.retention == DEFAULT_RETENTION == 24 * 3600
    assert job_type.max_attempts == 3
    assert job_type.backoff == Backoff()


def test_register_on_its_own_with_explicit_params_class() -> None:
    def plain(ctx, params):  # type: ignore[no-untyped-def]
        return None

    registry = JobRegistry()
    job_type = registry.register("plain", plain, params=Point, description="explicit")
    assert job_type.params_cls is Point
    assert job_type.description == "explicit"
    assert job_type.parse({"x": 2}) == (Point(2), {"x": 2, "label": "p"})


def test_explicit_params_must_be_an_attrs_class() -> None:
    class NotAttrs:
        pass

    with pytest.raises(TypeError, match="not an attrs class"):
        JobRegistry().register("t", handler, params=NotAttrs)


def test_a_dict_annotation_or_none_means_plain_dict_params() -> None:
    registry = JobRegistry()

    @registry.job_type("d")
    async def with_dict(ctx: Any, params: dict[str, Any]) -> None: ...

    @registry.job_type("u")
    async def unannotated(ctx, params):  # type: ignore[no-untyped-def]
        return None

    for name in ("d", "u"):
        job_type = registry.get(name)
        assert job_type.params_cls is None
        assert job_type.parse({"a": [1, "b"]}) == ({"a": [1, "b"]}, {"a": [1, "b"]})
        assert job_type.parse(None) == ({}, {})
        assert job_type.schema() == {"type": "object", "additionalProperties": True}


def test_duplicate_names_are_rejected() -> None:
    registry, _ = registry_with()
    with pytest.raises(ValueError, match="registered already"):
        registry.register("t", handler)
    with pytest.raises(ValueError, match="registered already"):
        registry.job_type("t")(handler)
    assert len(registry) == 1


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": -1.5}, "timeout"),
        ({"concurrency": 0}, "concurrency"),
    ],
)
def test_bad_options_are_rejected(options: dict[str, Any], match: str) -> None:
    registry = JobRegistry()
    with pytest.raises(ValueError, match=match):
        registry.register("t", handler, **options)
    assert "t" not in registry


def test_bad_backoff_is_rejected() -> None:
    with pytest.raises(ValueError, match="factor"):
        Backoff(factor=0.5)
    with pytest.raises(ValueError, match="jitter"):
        Backoff(jitter=1.5)
    with pytest.raises(ValueError, match="base"):
        Backoff(base=-1)


def test_a_handler_must_take_ctx_and_params() -> None:
    async def one(ctx: Any) -> None: ...

    with pytest.raises(TypeError, match="must take"):
        JobRegistry().register("one", one)


def test_unknown_job_type_lists_the_known_names() -> None:
    registry = JobRegistry()
    registry.register("beta", handler)
    registry.register("alpha", handler)
    with pytest.raises(UnknownJobType) as info:
        registry.get("gamma")
    assert info.value.name == "gamma"
    assert set(info.value.known) == {"alpha", "beta"}
    assert "alpha, beta" in str(info.value)
    assert isinstance(info.value, LookupError)


def test_sync_and_async_handlers_are_told_apart() -> None:
    registry = JobRegistry()

    def sync(ctx: Any, params: dict[str, Any]) -> None: ...

    async def asynchronous(ctx: Any, params: dict[str, Any]) -> None: ...

    assert registry.register("sync", sync).is_async is False
    assert registry.register("async", asynchronous).is_async is True


def test_describe_lists_every_type_with_its_schema() -> None:
    registry, _ = registry_with(timeout=3.0, concurrency=2)
    [described] = registry.describe()
    assert described["name"] == "t"
    assert described["description"] == "Does the thing."
    assert described["params_schema"]["title"] == "Params"
    assert (described["timeout"], described["max_attempts"], described["concurrency"]) == (
        3.0,
        3,
        2,
    )
    assert described["priority"] == 0


# -- parse: good params ------------------------------------------------------------


def test_parse_fills_defaults_and_returns_structured_and_json() -> None:
    _, job_type = registry_with()
    structured, normalised = job_type.parse(
        {"n": 3, "points": [{"x": 1}], "color": "blue", "labels": ["a"]}
    )
    assert structured == Params(n=3, points=[Point(1)], color=Color.BLUE, labels=frozenset({"a"}))
    assert normalised == {
        "n": 3,
        "ratio": 0.5,
        "name": "x",
        "flag": False,
        "maybe": None,
        "mode": "fast",
        "color": "blue",
        "points": [{"x": 1, "label": "p"}],
        "origin": {"x": 0, "label": "p"},
        "weights": {},
        "labels": ["a"],  # JSON has no sets: stores must be able to dump this
    }
    # What is stored comes back as what the handler takes.
    assert job_type.structure(normalised) == structured


def test_an_int_is_accepted_as_a_float() -> None:
    _, job_type = registry_with()
    structured, normalised = job_type.parse({"n": 1, "ratio": 2})
    assert normalised["ratio"] == 2.0
    assert structured.ratio == 2.0
    assert isinstance(structured.ratio, float)


def test_params_must_be_an_object() -> None:
    _, job_type = registry_with()
    assert errors_of(job_type, [1, 2]) == [{"loc": [], "msg": "params must be a JSON object"}]
    assert errors_of(job_type, "n=3") == [{"loc": [], "msg": "params must be a JSON object"}]


# -- parse: field-level errors ---------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "msg"),
    [
        (True, "expected an integer, got a boolean"),
        (5.7, "expected an integer, got float"),
        (5.0, "expected an integer, got float"),
        ("5", "expected an integer, got str"),
        (None, "expected an integer, got NoneType"),
    ],
)
def test_strict_integers(value: Any, msg: str) -> None:
    _, job_type = registry_with()
    assert errors_of(job_type, {"n": value}) == [{"loc": ["n"], "msg": msg}]


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("ratio", "0.5", "expected a number"),
        ("ratio", False, "expected a number, got a boolean"),
        ("name", 7, "expected a string"),
        ("flag", 1, "expected a boolean"),
        ("flag", "true", "expected a boolean"),
        ("maybe", "x", "expected an integer"),
        ("mode", "medium", "medium"),
        ("color", "green", "green"),
        ("points", "abc", "expected an array, got str"),
        ("points", {"x": 1}, "expected an array, got dict"),
        ("labels", "ab", "expected an array, got str"),
        ("origin", 5, "expected an object, got int"),
        ("origin", [1], "expected an object, got list"),
        ("weights", "w", "expected an object, got str"),
    ],
)
def test_wrong_types_are_field_errors(field: str, value: Any, fragment: str) -> None:
    _, job_type = registry_with()
    [error] = errors_of(job_type, {"n": 1, field: value})
    assert error["loc"] == [field]
    assert fragment in error["msg"]


def test_missing_and_unknown_fields_are_all_reported() -> None:
    _, job_type = registry_with()
    errors = errors_of(job_type, {"zeta": 1, "alpha": 2})
    assert {"loc": ["n"], "msg": "field required"} in errors
    assert {"loc": ["alpha"], "msg": "unknown field"} in errors
    assert {"loc": ["zeta"], "msg": "unknown field"} in errors
    assert len(errors) == 3


@pytest.mark.parametrize(("n", "bound"), [(0, ">= 1"), (11, "<= 10"), (-5, ">= 1")])
def test_validator_bounds(n: int, bound: str) -> None:
    _, job_type = registry_with()
    [error] = errors_of(job_type, {"n": n})
    assert error["loc"] == ["n"]
    assert bound in error["msg"]


def test_length_validator() -> None:
    _, job_type = registry_with()
    [error] = errors_of(job_type, {"n": 1, "name": "four"})
    assert error["loc"] == ["name"]
    assert "<= 3" in error["msg"]


def test_nested_class_errors_carry_their_location() -> None:
    _, job_type = registry_with()
    errors = errors_of(
        job_type,
        {"n": 1, "origin": {"x": "no", "extra": 1}, "weights": {"a": 1, "b": "heavy"}},
    )
    assert {"loc": ["origin", "x"], "msg": "expected an integer, got str"} in errors
    assert {"loc": ["origin", "extra"], "msg": "unknown field"} in errors
    assert {"loc": ["weights", "b"], "msg": "expected an integer, got str"} in errors
    assert len(errors) == 3


def test_errors_inside_lists_carry_the_index() -> None:
    _, job_type = registry_with()
    errors = errors_of(
        job_type,
        {"n": 1, "points": [{"x": 1}, {"x": "q"}, {"label": "no x"}, {"x": 1, "y": 2}, 7]},
    )
    assert {"loc": ["points", 1, "x"], "msg": "expected an integer, got str"} in errors
    assert {"loc": ["points", 2, "x"], "msg": "field required"} in errors
    assert {"loc": ["points", 3, "y"], "msg": "unknown field"} in errors
    assert {"loc": ["points", 4], "msg": "expected an object, got int"} in errors
    assert len(errors) == 4


def test_validator_of_a_nested_class_in_a_list_is_reported_at_its_item() -> None:
    # cattrs builds the nested instance in one call, so the item (not the field inside
    # it) is the most precise location available.
    _, job_type = registry_with()
    [error] = errors_of(job_type, {"n": 1, "points": [{"x": 1}, {"x": -1}]})
    assert error["loc"][:2] == ["points", 1]
    assert ">= 0" in error["msg"]


def test_errors_of_several_fields_are_reported_together() -> None:
    _, job_type = registry_with()
    errors = errors_of(job_type, {"n": True, "ratio": "x", "flag": None})
    assert [e["loc"] for e in errors] == [["n"], ["ratio"], ["flag"]]
    message = str(InvalidParams("t", errors))
    assert "n: expected an integer" in message


def test_cross_field_check_in_post_init_is_a_params_error() -> None:
    @attrs.frozen
    class Range:
        low: int
        high: int

        def __attrs_post_init__(self) -> None:
            if self.low > self.high:
                raise ValueError("low must not exceed high")

    job_type = JobRegistry().register("r", handler, params=Range)
    assert errors_of(job_type, {"low": 2, "high": 1}) == [
        {"loc": [], "msg": "low must not exceed high"}
    ]


# -- backoff ---------------------------------------------------------------------------


def test_backoff_grows_exponentially_without_jitter() -> None:
    backoff = Backoff(base=1.0, factor=2.0, max=300.0, jitter=0.0)
    assert [backoff.delay(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 8.0, 16.0]


def test_backoff_is_capped() -> None:
    backoff = Backoff(base=1.0, factor=10.0, max=60.0, jitter=0.0)
    assert backoff.delay(2) == 10.0
    assert backoff.delay(3) == 60.0
    assert backoff.delay(50) == 60.0


def test_backoff_jitter_stays_within_bounds_and_varies() -> None:
    backoff = Backoff(base=2.0, factor=3.0, max=100.0, jitter=0.25)
    rng = random.Random(1234)
    for attempt in range(1, 8):
        raw = min(2.0 * 3.0 ** (attempt - 1), 100.0)
        delays = [backoff.delay(attempt, rng) for _ in range(200)]
        assert all(raw * 0.75 <= d <= raw * 1.25 for d in delays)
        assert len(set(delays)) > 100  # jitter really spreads the retries


def test_backoff_is_reproducible_with_a_seeded_random() -> None:
    backoff = Backoff()
    first = [backoff.delay(n, random.Random(7)) for n in range(1, 5)]
    second = [backoff.delay(n, random.Random(7)) for n in range(1, 5)]
    assert first == second


def test_backoff_of_zero_base_is_zero() -> None:
    assert Backoff(base=0.0).delay(3, random.Random(0)) == 0.0


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Tone(str, enum.Enum):
    WARM = "warm"


@attrs.frozen
class Shapes:
    level: Level = Level.LOW
    tone: Tone = Tone.WARM
    pair: tuple[int, str] = (1, "a")
    computed: int = attrs.field(init=False, default=0)


def test_int_and_str_mixin_enums_stay_enum_members() -> None:
    job_type = JobRegistry().register("s", handler, params=Shapes)
    structured, normalised = job_type.parse({"level": 2, "tone": "warm"})
    assert structured.level is Level.HIGH
    assert structured.tone is Tone.WARM
    assert normalised["level"] == 2
    assert errors_of(job_type, {"level": 3})[0]["loc"] == ["level"]
    assert errors_of(job_type, {"level": True})[0]["msg"] == "expected an integer, got a boolean"


def test_fixed_tuples_are_arrays_both_ways() -> None:
    job_type = JobRegistry().register("s", handler, params=Shapes)
    structured, normalised = job_type.parse({"pair": [2, "b"]})
    assert structured.pair == (2, "b")
    assert normalised["pair"] == [2, "b"]
    assert errors_of(job_type, {"pair": "ab"}) == [
        {"loc": ["pair"], "msg": "expected an array, got str"}
    ]
    assert errors_of(job_type, {"pair": ["x", "b"]})[0]["loc"] == ["pair", 0]


def test_init_false_fields_are_not_params() -> None:
    job_type = JobRegistry().register("s", handler, params=Shapes)
    assert errors_of(job_type, {"computed": 5}) == [{"loc": ["computed"], "msg": "unknown field"}]
    assert "computed" not in job_type.parse({})[1]


# -- structured once, validated as a whole (issue 10) ----------------------------------


def _doubling(calls: list[int]) -> Any:
    def double(value: int) -> int:
        calls.append(value)
        return value * 2

    return double


async def test_a_converter_runs_once_at_submit_and_once_for_the_handler() -> None:
    from asyncjobs import JobContext, Queue

    calls: list[int] = []

    @attrs.frozen
    class Doubled:
        n: int = attrs.field(converter=_doubling(calls))
        keep: int = 1

    queue = Queue()
    seen: list[int] = []

    async def run(ctx: JobContext, params: Any) -> None:
        seen.append(params.n)

    queue.job_type("d", params=Doubled)(run)
    structured, normalised = queue.registry.get("d").parse({"n": 3})
    assert structured.n == 6
    assert calls == [3]  # parse converted once
    assert normalised == {"n": 3, "keep": 1}  # stored as given, not converted
    async with queue:
        job = await queue.submit("d", {"n": 3})
        await queue.wait(job.id, timeout=10)
    assert seen == [6]  # the handler got 3 converted once, not 24
    assert job.params == {"n": 3, "keep": 1}


def test_a_cross_field_validator_sees_the_instance() -> None:
    def above_low(instance: Any, attribute: Any, value: int) -> None:
        if value < instance.low:
            raise ValueError(f"high must be >= low ({instance.low})")

    @attrs.frozen
    class Span:
        low: int
        high: int = attrs.field(validator=above_low)

    job_type = JobRegistry().register("s", handler, params=Span)
    assert job_type.parse({"low": 1, "high": 2})[0] == Span(1, 2)
    assert errors_of(job_type, {"low": 3, "high": 2}) == [
        {"loc": ["high"], "msg": "high must be >= low (3)"}
    ]


def test_a_validator_that_raises_anything_is_a_field_error_not_a_crash() -> None:
    def broken(instance: Any, attribute: Any, value: int) -> None:
        raise RuntimeError(f"checker crashed on {value}")

    @attrs.frozen
    class Odd:
        fine: int = 0
        n: int = attrs.field(default=0, validator=broken)

    job_type = JobRegistry().register("o", handler, params=Odd)
    assert errors_of(job_type, {"n": 5}) == [{"loc": ["n"], "msg": "checker crashed on 5"}]


def test_an_unresolvable_params_annotation_raises_at_registration() -> None:
    @attrs.frozen
    class Local:  # not visible to the module: the string annotation cannot resolve
        n: int = 1

    async def run(ctx: Any, params: Local) -> int:
        return params.n

    registry = JobRegistry()
    with pytest.raises(ConfigurationError, match=r"'Local'.*params=Local"):
        registry.register("l", run)
    assert "l" not in registry
    # Named explicitly, the same class works: the handler gets an instance, not a dict.
    job_type = registry.register("l", run, params=Local)
    assert job_type.params_cls is Local
    assert job_type.structure(job_type.parse({"n": 4})[1]) == Local(4)


def test_a_params_class_whose_own_annotations_cannot_resolve_is_refused() -> None:
    @attrs.frozen
    class Inner:
        x: int = 0

    @attrs.frozen
    class Outer:
        inner: Inner = Inner()

    with pytest.raises(ConfigurationError, match="Outer"):
        JobRegistry().register("o", handler, params=Outer)


def test_a_params_annotation_that_is_neither_attrs_nor_dict_is_refused() -> None:
    async def run(ctx: Any, params: list[int]) -> None: ...

    with pytest.raises(ConfigurationError, match="neither an attrs class nor a dict"):
        JobRegistry().register("x", run)


def test_validator_errors_are_reported_with_type_errors_of_other_fields() -> None:
    _, job_type = registry_with()
    errors = errors_of(job_type, {"n": 0, "name": "four", "ratio": "x"})
    assert [e["loc"] for e in errors] == [["ratio"], ["n"], ["name"]]
    # Two failing validators and no type error: both named in one response.
    assert [e["loc"] for e in errors_of(job_type, {"n": 0, "name": "four"})] == [["n"], ["name"]]
