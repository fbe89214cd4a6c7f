"""JSON into a handler's annotated types and results back to JSON (runtime/http/values.py)."""

from __future__ import annotations

import datetime
import decimal
import enum
import subprocess
import sys
import uuid
from typing import Any, Literal

import attrs
import pydantic
import pytest

import actors
from runtime.http.values import from_json, structure_call, to_json


class Color(enum.Enum):
    RED = 1


@attrs.frozen
class Point:
    x: int
    y: int = 0


@attrs.frozen
class Tagged:
    tag: int | str
    note: str | None = None


class Model(pydantic.BaseModel):
    name: str
    at: datetime.date


class Typed(actors.Actor, name="TypedValues"):
    async def call(
        self, p: Point, *rest: Color, mode: Literal["a", "b"] = "a", **extra: bytes
    ) -> None: ...

    async def loose(self, anything, maybe: int | None = None, either: int | str = 0) -> None: ...  # type: ignore[no-untyped-def]


def test_json_becomes_the_annotated_types_positional_variadic_and_keyword() -> None:
    """Objects become attrs classes, values enums, base64 text bytes; *args and **kwargs too."""
    handler = Typed.__torpor_spec__.handlers["call"]
    args, kwargs = structure_call("T", handler, [{"x": 1}, 1, 1], {"mode": "b", "k": "aGk="})
    assert args == (Point(1), Color.RED, Color.RED)
    assert kwargs == {"mode": "b", "k": b"hi"}


@pytest.mark.parametrize(
    ("args", "kwargs", "where"),
    [
        ([{"x": "1"}], {}, "'p'"),
        ([{"x": 1}, 2], {}, r"'rest\[0\]'"),
        ([{"x": 1}], {"mode": "c"}, "'mode'"),
        ([{"x": 1}], {"k": "not base64!"}, "'k'"),
        ([], {}, "missing a required argument"),
    ],
)
def test_a_value_that_does_not_fit_names_its_argument(
    args: list[Any], kwargs: dict[str, Any], where: str
) -> None:
    """A refused argument is an InvalidArgumentsError naming it and saying what it must be."""
    handler = Typed.__torpor_spec__.handlers["call"]
    with pytest.raises(actors.InvalidArgumentsError, match=where):
        structure_call("T", handler, args, kwargs)


def test_unannotated_optional_and_unions_of_scalars() -> None:
    """No annotation passes JSON as is; Optional accepts null; int | str is left to the check."""
    handler = Typed.__torpor_spec__.handlers["loose"]
    found = structure_call("T", handler, [[1, {"a": None}]], {"maybe": None, "either": "x"})
    assert found == (([1, {"a": None}], None, "x"), {})  # (bound as the signature says)


def test_a_union_of_scalars_in_a_field_takes_either() -> None:
    """A field annotated int | str takes an int or a str from JSON, and refuses a list."""
    assert from_json(Tagged, {"tag": 1}) == Tagged(1)
    assert from_json(Tagged, {"tag": "a", "note": None}) == Tagged("a")
    with pytest.raises(Exception, match="Tagged"):
        from_json(Tagged, {"tag": [1]})


def test_scalars_are_strict_and_text_types_parse() -> None:
    """A str is no int, nor a bool; Decimal, datetime, UUID and timedelta come from their JSON."""
    for value, annotation in (("3", int), (True, int), (1, str), (1.5, decimal.Decimal)):
        with pytest.raises((TypeError, ValueError)):
            from_json(annotation, value)
    assert from_json(float, 3) == 3.0 and type(from_json(float, 3)) is float
    assert from_json(decimal.Decimal, "1.10") == decimal.Decimal("1.10")
    assert from_json(datetime.timedelta, 1.5) == datetime.timedelta(seconds=1.5)
    u = uuid.uuid4()
    assert from_json(uuid.UUID, str(u)) == u
    assert from_json(Model, {"name": "a", "at": "2026-01-02"}) == Model(
        name="a", at=datetime.date(2026, 1, 2)
    )


def test_results_become_json() -> None:
    """Results go back as JSON: Decimal text, ISO times, base64 bytes, enums by value, lists."""
    value = {
        "d": decimal.Decimal("0.1"),
        "t": datetime.datetime(2026, 1, 2, 3, 4, 5),
        "b": b"hi",
        "e": Color.RED,
        "p": Point(1, 2),
        "m": Model(name="a", at=datetime.date(2026, 1, 2)),
        "s": frozenset({1}),
        "u": (1, (2,)),
    }
    assert to_json(value) == {
        "d": "0.1",
        "t": "2026-01-02T03:04:05",
        "b": "aGk=",
        "e": 1,
        "p": {"x": 1, "y": 2},
        "m": {"name": "a", "at": "2026-01-02"},
        "s": [1],
        "u": [1, [2]],
    }
    assert to_json(Color.RED) == 1


def test_import_actors_imports_no_http_library() -> None:
    """import actors imports neither httpx, starlette nor hypercorn (the http extra is optional)."""
    code = (
        "import sys, actors; "
        "print(sorted(m for m in ('httpx', 'starlette', 'hypercorn', 'httpx_sse') "
        "if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stderr
