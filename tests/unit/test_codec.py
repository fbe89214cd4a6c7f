"""The message codec: msgpack with an allow-list, exact round trips, never pickle."""

from __future__ import annotations

import datetime as dt
import decimal
import pickle
from typing import Any

import attrs
import pytest
from hypothesis import given

import actors
from runtime.codec import Codec
from tests.support.agents import Mood, Point, Tag
from tests.support.strategies import message_values


def same(a: Any, b: Any) -> bool:
    """Equal and of the same types all the way down."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, Tag):
        return same(a.label, b.label) and same(a.weight, b.weight) and same(a.extra, b.extra)
    if isinstance(a, decimal.Decimal):
        return str(a) == str(b)  # exactly: 1.50 stays 1.50, -0 stays -0
    return bool(a == b)


@given(message_values)
def test_round_trip_is_exact(value: Any) -> None:
    """Every allowed value decodes to an equal value of the same type."""
    codec = Codec([Point, Mood, Tag])
    assert same(codec.decode(codec.encode(value)), value)


def test_equal_sets_encode_to_equal_bytes() -> None:
    """Sets are written in a stable order."""
    codec = Codec()
    assert codec.encode({3, 1, 2}) == codec.encode({2, 3, 1})


@pytest.mark.parametrize(
    "value",
    [object(), dt.UTC, type, pickle, 1j, [1, {2: object()}], range(3)],
)
def test_values_outside_the_allow_list_are_refused(value: Any) -> None:
    """Anything not allowed raises EncodingError, never falls back to pickle."""
    with pytest.raises(actors.EncodingError):
        Codec().encode(value)


def test_unregistered_attrs_class_names_the_fix() -> None:
    """An attrs instance of an unregistered class says how to register it."""
    with pytest.raises(actors.EncodingError, match="message_types"):
        Codec().encode(Point(1, 2))


def test_subclasses_of_containers_are_refused() -> None:
    """A dict subclass would come back as a plain dict, so it is refused."""

    class Tagged(dict[str, int]):
        pass

    with pytest.raises(actors.EncodingError):
        Codec().encode(Tagged(a=1))


def test_stored_type_no_longer_registered_is_a_decoding_error() -> None:
    """Bytes naming an attrs class that is no longer registered raise DecodingError."""
    data = Codec([Point]).encode(Point(1, 2))
    with pytest.raises(actors.DecodingError, match="not registered"):
        Codec().decode(data)


def test_corrupt_bytes_are_a_decoding_error() -> None:
    """Garbage raises DecodingError, not a msgpack internal error."""
    with pytest.raises(actors.DecodingError):
        Codec().decode(b"\xc1\xff\x00")


def test_message_types_must_be_attrs() -> None:
    """Registering a plain class as a message type is refused at open time."""

    class Plain:
        pass

    with pytest.raises(TypeError, match="attrs"):
        Codec([Plain])


def test_registered_name_is_stable_across_renames() -> None:
    """A class may carry __torpor_name__ so that renaming it keeps stored messages readable."""

    @attrs.frozen
    class Old:
        x: int

    Old.__torpor_name__ = "shapes.Thing"  # type: ignore[attr-defined]

    @attrs.frozen
    class New:
        x: int

    New.__torpor_name__ = "shapes.Thing"  # type: ignore[attr-defined]
    assert Codec([New]).decode(Codec([Old]).encode(Old(3))) == New(3)
