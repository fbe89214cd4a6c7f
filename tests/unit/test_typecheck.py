"""Arguments checked against a handler's annotations (DESIGN §10), compiled once per handler."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import uuid
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, NewType, Optional, TypeVar

import pytest

import actors
from runtime.spec import HandlerSpec

T = TypeVar("T")
UserId = NewType("UserId", str)


class Color(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Item:
    sku: str


def spec_of(annotation: Any) -> HandlerSpec:
    """The handler spec of ``async def h(self, x: annotation)``."""

    async def h(self: Any, x: Any) -> None:
        pass

    h.__annotations__ = {"x": annotation}

    class Holder(actors.Actor, name=f"holder-{id(annotation)}"):
        pass

    setattr(Holder, "h", h)  # noqa: B010 (a handler added after the class, for the table below)
    from runtime.spec import build_type_spec

    return build_type_spec(Holder, None, actors.Actor).handlers["h"]


CASES: list[tuple[Any, list[Any], list[Any]]] = [
    (str, ["", "text"], [123, b"x", None]),
    (int, [1, True], [1.0, "1", None]),
    (float, [1.5, 2], ["1.5", None]),
    (bool, [True], [1]),
    (bytes, [b""], ["", bytearray()]),
    (Optional[int], [None, 3], ["3"]),  # noqa: UP045 (Optional is one of the spellings checked)
    (int | str, [1, "a"], [1.5, None]),
    (list[int], [[], [1, 2]], [[1, "2"], (1,), None]),
    (dict[str, list[int]], [{}, {"a": [1]}], [{"a": ["x"]}, {1: [1]}, []]),
    (tuple[int, str], [(1, "a")], [(1,), (1, 2), [1, "a"]]),
    (tuple[int, ...], [(), (1, 2, 3)], [(1, "x")]),
    (set[str], [{"a"}], [{1}, ["a"]]),
    (frozenset[Color], [frozenset({Color.RED})], [frozenset({"red"})]),
    (Sequence[int], [[1], (1,)], [{1}]),
    (Mapping[str, Any], [{"a": object()}], [[("a", 1)]]),
    (Literal["a", 1], ["a", 1], ["b", True, 2]),
    (Color, [Color.RED], ["red"]),
    (Item, [Item("a")], [{"sku": "a"}]),
    (dt.datetime, [dt.datetime(2026, 1, 1)], [dt.date(2026, 1, 1), "2026-01-01"]),
    (decimal.Decimal, [decimal.Decimal("1.5")], [1.5, "1.5"]),
    (uuid.UUID, [uuid.UUID(int=1)], [str(uuid.UUID(int=1))]),
    (Annotated[int, "meta"], [1], ["1"]),
    (UserId, ["u"], [1]),
    (list[Item | None], [[Item("a"), None]], [[Item("a"), "b"]]),
]


@pytest.mark.parametrize(("annotation", "good", "bad"), CASES)
def test_values_are_checked_against_the_annotation(
    annotation: Any, good: list[Any], bad: list[Any]
) -> None:
    """Each annotation accepts what a type checker accepts and refuses the rest."""
    spec = spec_of(annotation)
    for value in good:
        spec.check_arguments("Holder", (value,), {})
        spec.check_arguments("Holder", (), {"x": value})
    for value in bad:
        with pytest.raises(actors.InvalidArgumentsError, match="argument 'x'"):
            spec.check_arguments("Holder", (value,), {})
        with pytest.raises(actors.InvalidArgumentsError, match="argument 'x'"):
            spec.check_arguments("Holder", (), {"x": value})


@pytest.mark.parametrize("annotation", [Any, object, T, "NotDefinedAnywhere"])
def test_what_takes_anything_costs_nothing(annotation: Any) -> None:
    """Any, object, a type variable or an unresolvable name take any value, with no check."""
    spec = spec_of(annotation)
    assert spec.positional_checks is None
    spec.check_arguments("Holder", (object(),), {})


def test_the_error_says_which_argument_what_it_must_be_and_what_it_got() -> None:
    """The message names the handler, the argument, the expected type and the value given."""
    spec = spec_of(dict[str, list[int]])
    with pytest.raises(actors.InvalidArgumentsError) as caught:
        spec.check_arguments("Agent", ({"a": [1, "two"]},), {})
    assert str(caught.value).endswith(
        "argument 'x' item ['a'][1] must be int (got 'two' that is a str)"
    )
    assert str(caught.value).startswith("Agent.h(x: dict[str, list[int]])")


def test_variadic_parameters_check_each_value() -> None:
    """*args and **kwargs annotations apply to each of their values."""

    class Many(actors.Actor, name="typecheck-many"):
        async def h(self, *numbers: int, **labels: str) -> None:
            pass

    spec = Many.__torpor_spec__.handlers["h"]
    spec.check_arguments("Many", (1, 2, 3), {"a": "x"})
    with pytest.raises(actors.InvalidArgumentsError, match=r"'numbers\[2\]' must be int"):
        spec.check_arguments("Many", (1, 2, "3"), {})
    with pytest.raises(actors.InvalidArgumentsError, match="'b' must be str"):
        spec.check_arguments("Many", (), {"b": 2})


def test_a_name_defined_after_the_class_is_checked_once_a_runtime_resolves_it() -> None:
    """An annotation naming a class defined later is resolved again when a runtime opens."""
    spec = Later.__torpor_spec__
    handler = spec.handlers["h"]
    assert handler.unresolved
    assert DefinedLater in spec.named_classes()  # what the runtime calls when it opens
    assert not handler.unresolved
    with pytest.raises(actors.InvalidArgumentsError, match="must be DefinedLater"):
        handler.check_arguments("Later", ("not it",), {})


class Later(actors.Actor, name="typecheck-later"):
    async def h(self, x: DefinedLater) -> None:
        pass


@dataclasses.dataclass
class DefinedLater:
    n: int


def test_unchecked_extra_positional_arguments_still_bind() -> None:
    """Before an unannotated *args, extra arguments pass and the checked one is checked."""

    class Loose(actors.Actor, name="typecheck-loose"):
        async def h(self, first: int, *rest, **options) -> None:  # type: ignore[no-untyped-def]
            pass

    spec = Loose.__torpor_spec__.handlers["h"]
    spec.check_arguments("Loose", (1, "a", b"b"), {"k": object()})
    with pytest.raises(actors.InvalidArgumentsError, match="'first' must be int"):
        spec.check_arguments("Loose", ("1", "a"), {})
    with pytest.raises(actors.InvalidArgumentsError, match="missing a required argument"):
        spec.check_arguments("Loose", (), {})
