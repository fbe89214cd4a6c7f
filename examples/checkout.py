"""A widget store's checkout: a run that publishes its order id while it waits for payment.

    python examples/checkout.py [DIR]

DIR must be a new or empty folder (a temporary one if omitted): the demo starts afresh, and
deletes nothing it did not create.

This is DBOS's widget store on torpor. The ``Store`` actor keeps stock and orders in its SQL
tables. A ``Checkout`` run reserves the widgets and creates the order (one ask to the store:
one transaction, exactly once), publishes the order id at once with
``self.set_value("order_id", ...)``, then waits for the payment or for the end of the payment
window (``self.wait_any``). Paid, it ships (a step); not paid in time, it releases the widgets.

The "web handler" starts the run with the client's idempotency key as its id
(``rt.start(Checkout.run, ..., id=f"checkout-{key}")``), reads the order id with
``run.wait_value("order_id")`` while the run goes on, and returns a payment link; the payment
provider's webhook signals ``paid``.

1. a checkout, submitted twice (a double click): one run, one order; it is paid and shipped;
2. an abandoned cart: nobody pays within the window (half a second here), the widgets go back;
3. a checkout for more widgets than the stock: the run publishes no order, and ends.

``CALLS`` counts the shipping service's calls; the stock is checked against the orders.
"""

from __future__ import annotations

import sys
import tempfile
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

import actors

#: How long a customer has to pay before the order is cancelled.
PAYMENT_WINDOW = 15 * 60.0
#: Widgets in stock when the store opens.
STOCK = 10
#: What the shipping service was asked.
CALLS: Counter[str] = Counter()


def ship(order_id: str, qty: int) -> str:
    """The shipping service: a parcel leaves the warehouse, so it must run once."""
    CALLS["ship"] += 1
    return f"parcel {order_id} ({qty} widgets)"


class Store(actors.Actor, name="examples.Store"):
    """The stock and the orders of one store, in its own SQL tables."""

    migrations = (
        "CREATE TABLE stock(item TEXT PRIMARY KEY, available INTEGER CHECK (available >= 0))",
        "CREATE TABLE orders(id TEXT PRIMARY KEY, item TEXT, qty INTEGER, status TEXT)",
    )

    async def on_create(self, item: str, available: int) -> None:
        self.sql.execute("INSERT INTO stock VALUES (?, ?)", (item, available))

    async def reserve(self, order_id: str, item: str, qty: int) -> bool:
        """Take ``qty`` widgets from the stock for a new order: both or neither (one turn)."""
        (available,) = self.sql.query("SELECT available FROM stock WHERE item = ?", (item,))[0]
        if available < qty:
            return False
        self.sql.execute("UPDATE stock SET available = available - ? WHERE item = ?", (qty, item))
        self.sql.execute(
            "INSERT INTO orders VALUES (?, ?, ?, 'awaiting payment')", (order_id, item, qty)
        )
        return True

    async def set_status(self, order_id: str, status: str) -> None:
        self.sql.execute("UPDATE orders SET status = ? WHERE id = ?", (status, order_id))

    async def release(self, order_id: str) -> None:
        """Put an unpaid order's widgets back, and cancel it."""
        ((item, qty, status),) = self.sql.query(
            "SELECT item, qty, status FROM orders WHERE id = ?", (order_id,)
        )
        if status == "awaiting payment":
            self.sql.execute(
                "UPDATE stock SET available = available + ? WHERE item = ?", (qty, item)
            )
            self.sql.execute("UPDATE orders SET status = 'cancelled' WHERE id = ?", (order_id,))

    @actors.query
    async def available(self, item: str) -> int:
        ((available,),) = self.sql.query("SELECT available FROM stock WHERE item = ?", (item,))
        return int(available)

    @actors.query
    async def orders(self) -> list[tuple[str, str, int, str]]:
        return list(self.sql.query("SELECT id, item, qty, status FROM orders ORDER BY rowid"))


class Checkout(actors.Workflow, name="examples.Checkout"):
    """One checkout: reserve, publish the order id, wait for the payment, ship or release."""

    async def run(self, store: str, item: str, qty: int, payment_window: float) -> str:
        shop = self.ref_to(Store, store)
        order_id = f"order-{self.uuid().hex[:8]}"  # journaled: a replay makes the same id
        if not await self.ask(shop, Store.reserve, order_id, item, qty):
            await self.set_value("order_id", None)  # the web handler answers "sold out"
            return "sold out"
        await self.set_value("order_id", order_id)  # readable now, while the run goes on
        index, payment = await self.wait_any(
            self.wait_for_event("paid"), self.sleep(payment_window)
        )
        if index == 1:
            await self.ask(shop, Store.release, order_id)
            return f"{order_id} cancelled: not paid within {payment_window:g} s"
        await self.ask(shop, Store.set_status, order_id, "paid")
        parcel = await self.step("ship", ship, order_id, qty)
        await self.ask(shop, Store.set_status, order_id, "shipped")
        return f"{order_id} shipped: {parcel}, paid by {payment['card']}"


# -- the web handlers and the demo ------------------------------------------------------------


async def checkout(
    rt: actors.Runtime, key: str, qty: int, payment_window: float = PAYMENT_WINDOW
) -> tuple[actors.Run[str], str]:
    """POST /checkout with the client's Idempotency-Key: the run, and the page to pay on."""
    run = await rt.start(
        Checkout.run, "widgets", "widget", qty, payment_window, id=f"checkout-{key}"
    )
    order_id = await run.wait_value("order_id")  # as soon as the run has it, not when it ends
    if order_id is None:
        return run, "sold out"
    return run, f"https://pay.example.com/{order_id}"


async def wait_until(check: Callable[[], Awaitable[bool]], seconds: float = 10.0) -> None:
    """Poll ``check`` until it is true (a demo's way to watch the runtime from outside)."""
    with trio.fail_after(seconds):
        while True:
            if await check():
                return
            await trio.sleep(0.02)


async def demo(folder: Path) -> None:
    async with actors.open_runtime(folder, types=[Store, Checkout]) as rt:
        store = await rt.spawn(Store, "widget", STOCK, key="widgets")
        print(f"  stock: {await store.ask(Store.available, 'widget')}")

        print("1. a checkout for 3 widgets, submitted twice, then paid")
        run, page = await checkout(rt, "c-1", 3)
        again, page_again = await checkout(rt, "c-1", 3)  # the double click
        print(f"  pay at: {page}")
        print(f"  the same request again: same run {again == run}, same page {page_again == page}")
        print(f"  runs started: {len(rt.runs())}; orders: {await store.ask(Store.orders)}")

        async def waiting() -> bool:
            return (await run.status()).state == "waiting"

        await wait_until(waiting)  # (it gets there at once)
        status = await run.status()
        steps = [step.name for step in status.steps]
        print(f"  run status: {status.state} for {status.waiting_for}; steps {steps}")
        print(f"  stock while it waits: {await store.ask(Store.available, 'widget')}")
        order_id = await run.get_value("order_id")
        paid = await run.signal("paid", {"card": "visa-4242"}, idempotency_key=f"pay-{order_id}")
        twice = await run.signal("paid", {"card": "visa-4242"}, idempotency_key=f"pay-{order_id}")
        print(f"  payment webhook: {paid}; delivered again: {twice}")
        print(f"  result: {await run.result()}")
        print(f"  run status: {(await run.status()).state}")

        print("2. an abandoned cart: 4 widgets, nobody pays within half a second")
        abandoned, page = await checkout(rt, "c-2", 4, payment_window=0.5)
        print(f"  pay at: {page}")
        print(f"  stock while it waits: {await store.ask(Store.available, 'widget')}")
        print(f"  result: {await abandoned.result()}")

        print("3. a checkout for 20 widgets: more than the stock")
        greedy, page = await checkout(rt, "c-3", 20)
        print(f"  the web handler answers: {page}; result: {await greedy.result()}")

        available = await store.ask(Store.available, "widget")
        orders = await store.ask(Store.orders)
        sold = sum(qty for _, _, qty, status in orders if status != "cancelled")
        print(f"  orders: {orders}")
        print(f"  stock: {available}; sold: {sold}; stock + sold = {available + sold} of {STOCK}")


def new_folder(arg: str | None) -> Path:
    """DIR, or a new temporary folder. Refuse a folder that is not empty: the demo starts afresh."""
    if arg is None:
        return Path(tempfile.mkdtemp()) / "torpor"
    folder = Path(arg)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        sys.exit(f"{folder} is not empty: this demo starts afresh; give a new or empty folder")
    return folder


def main() -> None:
    folder = new_folder(sys.argv[1] if len(sys.argv) > 1 else None)
    print(f"runtime directory: {folder}")
    trio.run(demo, folder)
    print(f"done: parcels shipped: {CALLS['ship']}")


if __name__ == "__main__":
    main()
