"""Typed calls and typed values in a runtime (DESIGN §10): calls checked in the sender, and
dataclasses, attrs classes, pydantic models, enums and Decimal back as the same types."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import attrs
import pydantic
import pytest

import actors
from tests.engine.test_bad_input import directory_rows, stored_messages

pytestmark = pytest.mark.both_backends

START = 1_800_000_000.0


def clock() -> float:
    return START + anyio.current_time()


class Size(enum.Enum):
    SMALL = "s"
    LARGE = "l"


@dataclasses.dataclass(frozen=True)
class Line:
    sku: str
    size: Size
    price: Decimal


@dataclasses.dataclass
class Order:
    lines: list[Line]
    placed_at: dt.datetime
    note: str | None = None


class Customer(pydantic.BaseModel):
    name: str
    credit: Decimal


@attrs.frozen
class Receipt:
    total: Decimal
    customer: Customer
    sizes: frozenset[Size]


@actors.register_type(name="tests.typed.Shipment")
@dataclasses.dataclass
class Shipment:
    """Named in no annotation: a step returns it, so it is registered."""

    carrier: str
    weight: Decimal


class Shop(actors.Actor, name="TypedShop"):
    async def on_create(self, currency: str = "EUR") -> None:
        self.kv["currency"] = currency

    async def place(self, order: Order, customer: Customer) -> Receipt:
        assert type(order.lines[0]) is Line and type(order.lines[0].size) is Size
        self.kv["last"] = order  # kv values are typed values too
        total = sum((line.price for line in order.lines), Decimal(0))
        return Receipt(total, customer, frozenset(line.size for line in order.lines))

    async def chat(self, text: str) -> str:
        return text.upper()

    async def record(self, size: Size, amount: Decimal) -> None:
        self.kv["recorded"] = [size, amount]

    @actors.query
    async def read(self, name: str) -> Any:
        return self.kv.get(name)


ORDER = Order(
    [Line("tea", Size.SMALL, Decimal("3.50")), Line("pot", Size.LARGE, Decimal("21.05"))],
    dt.datetime(2026, 12, 8, 9, 30, 0, 123456, tzinfo=dt.UTC),
)
ADA = Customer(name="Ada", credit=Decimal("100.00"))


async def test_typed_arguments_and_results_come_back_as_the_same_types(root: Path) -> None:
    """Handler and asker get dataclasses, enums, pydantic and attrs instances, Decimals as such."""
    async with actors.open_runtime(root, types=[Shop], clock=clock) as rt:
        ref = rt.ref(Shop, "s")
        receipt = await ref.ask(Shop.place, ORDER, ADA)
        assert receipt == Receipt(Decimal("24.55"), ADA, frozenset({Size.SMALL, Size.LARGE}))
        assert type(receipt) is Receipt and type(receipt.customer) is Customer
        assert str(receipt.total) == "24.55"  # exact, not a float
        assert await ref.ask(Shop.read, "last") == ORDER
    async with actors.open_runtime(root, types=[Shop], clock=clock) as rt:
        stored = await rt.ref(Shop, "s").ask(Shop.read, "last")  # read back from data.db
        assert stored == ORDER and type(stored.lines[1].size) is Size


async def test_a_bad_call_is_refused_in_the_sender_and_nothing_is_stored(root: Path) -> None:
    """A send, ask or spawn the annotations refuse is InvalidArgumentsError; nothing is stored."""
    async with actors.open_runtime(root, types=[Shop], clock=clock) as rt:
        ref = rt.ref(Shop, "s")
        with pytest.raises(actors.InvalidArgumentsError, match="'text' must be str"):
            await ref.send(Shop.chat, 123)  # type: ignore[call-overload]
        with pytest.raises(actors.InvalidArgumentsError, match="'text' must be str"):
            await ref.ask(Shop.chat, b"bytes")  # type: ignore[call-overload]
        with pytest.raises(actors.InvalidArgumentsError, match="'order' must be Order"):
            await ref.send(Shop.place, [ORDER], ADA)  # type: ignore[call-overload]
        with pytest.raises(actors.InvalidArgumentsError, match="'customer' must be Customer"):
            await ref.send(Shop.place, ORDER, {"name": "Ada"})  # type: ignore[call-overload]
        with pytest.raises(actors.InvalidArgumentsError, match="'currency' must be str"):
            await rt.spawn(Shop, 978, key="spawned")
        with pytest.raises(actors.InvalidArgumentsError, match="'amount' must be Decimal"):
            await ref.send(Shop.record, Size.SMALL, 1.5)  # type: ignore[call-overload]
        assert stored_messages(root) == 0
        assert directory_rows(root) == 0  # no actor was made
        assert await ref.ask(Shop.chat, "fine") == "FINE"


class Caller(actors.Actor, name="TypedCaller"):
    async def misuse(self, shop: actors.Ref[Shop]) -> list[str]:
        refused = []
        attempts: list[Callable[[], object]] = [
            lambda: self.send(shop, Shop.chat, 1),  # type: ignore[call-overload]
            lambda: self.ask(shop, Shop.chat, 2),  # type: ignore[call-overload]
            lambda: self.spawn(Shop, 3, key="child"),
            lambda: self.schedule("later", Caller.ping, "not an int", after=60),
        ]
        for attempt in attempts:
            try:
                attempt()
            except actors.InvalidArgumentsError as exc:
                refused.append(str(exc).partition("(")[0])
        return refused

    async def ping(self, n: int) -> None:
        self.kv["pinged"] = n

    @actors.query
    async def timers(self) -> list[str]:
        return [s.name for s in self.schedules()]


async def test_calls_made_inside_a_turn_are_checked_at_the_call(root: Path) -> None:
    """self.send, ask, spawn and schedule refuse a bad call where it is made; nothing leaves."""
    async with actors.open_runtime(root, types=[Shop, Caller], clock=clock) as rt:
        shop = rt.ref(Shop, "s")
        await shop.ask(Shop.chat, "exists")
        caller = rt.ref(Caller, "c")
        refused = await caller.ask(Caller.misuse, shop)
        assert refused == [
            "TypedShop.chat",
            "TypedShop.chat",
            "TypedShop.on_create",
            "TypedCaller.ping",
        ]
        await anyio.sleep(120)
        assert await caller.ask(Caller.timers) == []
        assert directory_rows(root) == 2  # the shop and the caller: no child
        assert stored_messages(root) == 0


async def test_timer_arguments_keep_their_types(root: Path) -> None:
    """A timer set with an enum and a Decimal delivers them as the same types."""

    class Clerk(actors.Actor, name="TypedClerk"):
        async def begin(self) -> None:
            self.schedule("t", Shop.record, Size.LARGE, Decimal("0.30"), after=10)

        record = Shop.record
        read = Shop.read

    async with actors.open_runtime(root, types=[Clerk], clock=clock) as rt:
        ref = rt.ref(Clerk, "c")
        await ref.ask(Clerk.begin)
        await anyio.sleep(20)
        recorded = await ref.ask("read", "recorded")
        assert recorded == [Size.LARGE, Decimal("0.30")] and type(recorded[0]) is Size


FETCHES: list[str] = []


async def fetch(carrier: str) -> Shipment:
    FETCHES.append(carrier)
    return Shipment(carrier, Decimal("1.250"))


class Courier(actors.Actor, name="TypedCourier"):
    async def deliver(self, carrier: str) -> list[Any]:
        shipment = await self.step("fetch", fetch, carrier)
        approver = await self.wait_for_event("approved")
        return [shipment, approver, type(shipment).__name__, type(approver).__name__]


async def test_step_values_and_event_payloads_come_back_as_their_types(root: Path) -> None:
    """A step's result replayed from the journal, and an event's payload, keep their types."""
    FETCHES.clear()
    # Customer is named by no annotation of Courier: the event's payload type is given here.
    async with actors.open_runtime(
        root, types=[Courier], message_types=[Customer], clock=clock, idle_timeout=30
    ) as rt:
        ref = rt.ref(Courier, "c")
        async with anyio.create_task_group() as tg:
            results: list[Any] = []

            async def deliver() -> None:
                results.append(await ref.ask(Courier.deliver, "postal"))

            tg.start_soon(deliver)
            await anyio.sleep(300)  # the turn waits; the actor hibernates meanwhile
            assert rt.statistics().awake == 0  # hibernated
            assert await ref.signal("approved", ADA)
    shipment, approver, *names = results[0]
    assert names == ["Shipment", "Customer"]
    assert shipment == Shipment("postal", Decimal("1.250")) and str(shipment.weight) == "1.250"
    assert approver == ADA
    assert FETCHES == ["postal"]  # the step ran once; the replay read its journaled value


async def test_an_unregistered_class_is_refused_in_the_sender(root: Path) -> None:
    """A dataclass no annotation names and nobody registered is refused, saying how to fix it."""

    @dataclasses.dataclass
    class Stray:
        x: int

    class Echo(actors.Actor, name="TypedEcho"):
        async def echo(self, value: Any) -> Any:
            return value

    async with actors.open_runtime(root, types=[Echo], clock=clock) as rt:
        with pytest.raises(actors.EncodingError, match=r"actors.register_type\(Stray\)"):
            await rt.ref(Echo, "e").send(Echo.echo, [Stray(1)])
        assert stored_messages(root) == 0
