"""Typed values in the codec (DESIGN §10): enums, dataclasses, attrs classes, pydantic models,
``Decimal``; each comes back as the same type, by a stable registered name, never pickled."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import subprocess
import sys
import uuid
from typing import Any

import attrs
import pydantic
import pytest

import actors
from runtime.codec import Codec
from runtime.ops import inspect as ops_inspect


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Priority(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Mode(enum.StrEnum):
    FAST = "fast"


class Perm(enum.Flag):
    READ = 1
    WRITE = 2


@dataclasses.dataclass(frozen=True)
class Item:
    sku: str
    price: decimal.Decimal
    qty: int = 1


@dataclasses.dataclass
class Order:
    id: uuid.UUID
    items: list[Item]
    color: Color
    placed_at: dt.datetime
    note: str | None = None
    extra: Any = None


@attrs.frozen
class Receipt:
    _number: int
    total: decimal.Decimal
    tags: frozenset[str] = frozenset()


class Address(pydantic.BaseModel):
    city: str


class Customer(pydantic.BaseModel):
    name: str
    address: Address
    since: dt.date
    balance: decimal.Decimal


ALL = [Color, Priority, Mode, Perm, Item, Order, Receipt, Address, Customer]


def codec() -> Codec:
    return Codec(ALL)


def same(a: Any, b: Any) -> bool:
    """Equal and of the same types all the way down."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        return all(same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    if isinstance(a, decimal.Decimal) and a.is_nan():
        return b.is_nan() and str(a) == str(b)
    return bool(a == b) and (not isinstance(a, decimal.Decimal) or str(a) == str(b))


ORDER = Order(
    id=uuid.UUID(int=7),
    items=[Item("tea", decimal.Decimal("3.50")), Item("cup", decimal.Decimal("12"), qty=2)],
    color=Color.BLUE,
    placed_at=dt.datetime(2026, 12, 8, 1, 2, 3, 456789, tzinfo=dt.timezone(dt.timedelta(hours=2))),
    extra=Receipt(1, decimal.Decimal("0.10")),
)


@pytest.mark.parametrize(
    "value",
    [
        decimal.Decimal("1.50"),
        decimal.Decimal("-0"),
        decimal.Decimal("1E+400"),
        decimal.Decimal("NaN"),
        decimal.Decimal("-Infinity"),
        Color.RED,
        Priority.HIGH,
        Mode.FAST,
        Perm.READ | Perm.WRITE,
        Item("tea", decimal.Decimal("3.5")),
        ORDER,
        Receipt(42, decimal.Decimal("99.99"), frozenset({"paid"})),
        Customer(
            name="Ada",
            address=Address(city="Paris"),
            since=dt.date(2020, 1, 1),
            balance=decimal.Decimal("10.00"),
        ),
    ],
)
def test_each_supported_type_comes_back_as_itself(value: Any) -> None:
    """Decimals, enums, dataclasses, attrs classes and pydantic models round trip exactly."""
    c = codec()
    assert same(c.decode(c.encode(value)), value)


def test_typed_values_nested_in_containers_come_back_as_themselves() -> None:
    """Typed values inside lists, tuples, sets, dict keys and values, and fields typed Any."""
    value = {
        Color.RED: [ORDER, (Priority.LOW, decimal.Decimal("2"))],
        "set": {Item("a", decimal.Decimal("1"))},
        "deep": [[{"k": Receipt(2, decimal.Decimal("1E-7"))}]],
    }
    c = codec()
    back = c.decode(c.encode(value))
    assert same(back, value)
    assert type(back[Color.RED][0].extra) is Receipt  # a field typed Any keeps its class


def test_the_stored_bytes_carry_the_registered_name() -> None:
    """A registered name is what is stored, so a value decodes without its annotation."""
    data = codec().encode(Item("tea", decimal.Decimal("1")))
    stored = ops_inspect.decode(data)
    assert isinstance(stored, ops_inspect.StoredObject)
    assert stored.type_name == f"{__name__}.Item"
    assert stored.fields == {"sku": "tea", "price": decimal.Decimal("1"), "qty": 1}
    assert ops_inspect.to_json(ops_inspect.decode(codec().encode(Color.RED))) == {
        "$enum": f"{__name__}.Color",
        "value": "red",
    }


def test_register_type_names_a_class_for_every_codec() -> None:
    """register_type(name=...) stores values under that name; every codec then knows the class."""

    @actors.register_type(name="tests.typed_codec.Shipment")
    @dataclasses.dataclass
    class Shipment:
        to: str

    data = Codec().encode(Shipment("Lyon"))
    assert ops_inspect.decode(data) == ops_inspect.StoredObject(
        "tests.typed_codec.Shipment", {"to": "Lyon"}
    )
    assert Codec().decode(data) == Shipment("Lyon")
    assert (
        actors.register_type(Shipment, name="tests.typed_codec.Shipment") is Shipment
    )  # again: ok


def test_register_type_refuses_a_taken_name_and_other_classes() -> None:
    """A name belongs to one class; a class keeps its name; only structured classes register."""

    @dataclasses.dataclass
    class One:
        x: int

    @dataclasses.dataclass
    class Two:
        x: int

    actors.register_type(One, name="tests.typed.taken")
    with pytest.raises(ValueError, match="already belongs"):
        actors.register_type(Two, name="tests.typed.taken")
    with pytest.raises(ValueError, match="already registered"):
        actors.register_type(One, name="tests.typed.other")
    with pytest.raises(TypeError, match="dataclass"):
        actors.register_type(dict)

    @dataclasses.dataclass
    class Hidden:
        x: int
        y: int = dataclasses.field(init=False, default=0)

    with pytest.raises(TypeError, match="init=False"):
        actors.register_type(Hidden)


def test_unknown_classes_are_refused_when_encoded() -> None:
    """An unregistered class, a subclass of a registered one, and builtin subclasses are refused."""

    @dataclasses.dataclass
    class Loose:
        x: int

    class SpecialItem(Item):
        pass

    class UserId(str):
        pass

    with pytest.raises(actors.EncodingError, match=r"register_type\(Loose\)"):
        codec().encode([Loose(1)])
    with pytest.raises(actors.EncodingError, match="SpecialItem is not registered"):
        codec().encode(SpecialItem("a", decimal.Decimal(1)))
    for value in (UserId("u1"), type("D", (decimal.Decimal,), {})("1")):
        with pytest.raises(actors.EncodingError):
            codec().encode(value)


def test_an_unknown_name_is_a_decoding_error() -> None:
    """Bytes naming a class no codec knows raise DecodingError saying how to register it."""
    data = codec().encode([Color.RED])
    with pytest.raises(actors.DecodingError, match=r"register_type\(cls, name="):
        Codec().decode(data)
    with pytest.raises(actors.DecodingError, match="not registered"):
        Codec().decode(codec().encode(ORDER))


def test_a_stored_value_no_longer_valid_is_a_decoding_error() -> None:
    """A stored enum value its class no longer has raises DecodingError naming the class."""

    class Color(enum.Enum):  # the same name, without "blue"
        RED = "red"

    Color.__torpor_name__ = f"{__name__}.Color"  # type: ignore[attr-defined]
    with pytest.raises(actors.DecodingError, match=r"cannot be rebuilt as .*Color: ValueError"):
        Codec([Color]).decode(codec().encode(globals()["Color"].BLUE))


def test_payloads_stored_before_typed_messages_still_decode() -> None:
    """Bytes written by the codec before this change (attrs classes by name) decode the same."""

    @attrs.frozen
    class Point:
        x: int
        y: int

    @attrs.frozen
    class Tagged:
        _secret: str
        when: dt.datetime
        tags: frozenset[str]

    Point.__torpor_name__ = "tests.Point"  # type: ignore[attr-defined]
    Tagged.__torpor_name__ = "tests.Tagged"  # type: ignore[attr-defined]
    old = bytes.fromhex(
        "9292c7140992ab74657374732e506f696e7482a17801a17902c74b0992ac74657374732e546167676564"
        "83a6736563726574a173a47768656ec72004323032362d30312d30325430333a30343a30352e30303030"
        "30362b30303a3030a474616773c7030391a16181a170c7180191c7140992ab74657374732e506f696e74"
        "82a17803a17904"
    )
    when = dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC)
    expected = [[Point(1, 2), Tagged("s", when, frozenset({"a"}))], {"p": (Point(3, 4),)}]
    c = Codec([Point, Tagged])
    assert c.decode(old) == expected
    assert c.encode(expected) == old  # and the same bytes are written today


def test_fields_added_or_removed_since_a_value_was_stored() -> None:
    """A stored value missing a field takes its default; a field removed since is ignored."""

    @dataclasses.dataclass
    class V1:
        a: int
        gone: str

    @dataclasses.dataclass
    class V2:
        a: int
        added: list[int] = dataclasses.field(default_factory=list)

    V1.__torpor_name__ = V2.__torpor_name__ = "tests.typed.Versioned"  # type: ignore[attr-defined]
    assert Codec([V2]).decode(Codec([V1]).encode(V1(1, "x"))) == V2(1, [])


def test_message_types_refuse_classes_that_cannot_travel() -> None:
    """message_types accepts enums, dataclasses, attrs classes and pydantic models only."""
    with pytest.raises(TypeError, match="pydantic"):
        Codec([int])


def test_importing_actors_imports_neither_cattrs_nor_pydantic() -> None:
    """import actors stays fast: cattrs and pydantic load only when a typed value needs them."""
    code = "import sys, actors; print(sorted({'cattrs', 'pydantic'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_typed_replies_show_as_json_like_stored_values() -> None:
    """torpor ask shows a typed reply as it shows the stored value: by registered name."""
    item = Item("tea", decimal.Decimal("3.50"))
    stored = ops_inspect.to_json(ops_inspect.decode(codec().encode([item, Priority.HIGH])))
    live = ops_inspect.to_json([item, Priority.HIGH])
    expected = [
        {"$type": f"{__name__}.Item", "fields": {"sku": "tea", "price": "3.50", "qty": 1}},
        {"$enum": f"{__name__}.Priority", "value": 2},
    ]
    assert live == stored == expected


def test_an_instance_that_contains_itself_is_refused() -> None:
    """A dataclass holding itself is an EncodingError, the first time and every time after."""

    @dataclasses.dataclass
    class Node:
        next: Any = None

    node = Node()
    node.next = node
    c = Codec([Node])
    for _ in range(2):
        with pytest.raises(actors.EncodingError, match="deep"):
            c.encode(node)
    assert c.decode(c.encode(Node(Node()))) == Node(Node())
