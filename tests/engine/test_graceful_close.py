"""A graceful close that interrupts a turn inside a step or an ask leaves it
for the next ``open_runtime`` to resume, at once and by itself (its completed step replayed,
not run again); only a turn parked in a journaled durable wait sleeps until that wait ends.

Each scenario knows the turn is inside its step through events, never by sleeping: the step
tells it entered, and finishes as soon as the runtime begins to close (within the grace). The
trio runs use virtual time; the asyncio runs use the real clock, every wait bounded."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import anyio
import trio
import trio.testing

import actors
from runtime.files.layout import actor_id

START = 1_800_000_000.0
#: Bounds each wait for the resumed turn (virtual seconds under trio, real ones under
#: asyncio), so that a turn left stranded fails the test instead of hanging it.
RESUME_BOUND = 30.0
ASYNCIO_RESUME_BOUND = 10.0


def clock() -> float:
    return START + anyio.current_time()


def runtime(root: Path, *types: type, **options: Any) -> Any:
    options.setdefault("clock", clock)
    options.setdefault("shutdown_grace", 10.0)
    return actors.open_runtime(root, types=list(types), **options)


def note(log: Path, line: str) -> None:
    """An external effect, counted in a file outside the runtime's directory."""
    with log.open("a") as f:
        f.write(line + "\n")


def effects(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


class Scene:
    """What a scenario's steps share with the test: their effects log and its events."""

    def __init__(self, root: Path) -> None:
        self.log = root.parent / "effects.log"
        self.entered = anyio.Event()  # the turn is inside its first step
        self.finished = anyio.Event()  # the turn ran its last step
        self.closing: anyio.Event | None = None  # the first runtime's close has begun
        self.finished_at: float | None = None

    async def charge(self, amount: int) -> str:
        """A step body that is still running when the close begins, and finishes within the
        grace."""
        note(self.log, f"charge {amount}")
        self.entered.set()
        assert self.closing is not None
        await self.closing.wait()
        return f"receipt-{amount}"

    async def confirm(self, receipt: str) -> None:
        note(self.log, f"confirm {receipt}")
        self.finished_at = clock()
        self.finished.set()


# -- scenarios (backend-agnostic) ---------------------------------------------------------------


async def close_during_step(root: Path, bound: float = RESUME_BOUND) -> None:
    scene = Scene(root)

    class Shop(actors.Actor, name="close.Shop"):
        async def buy(self, amount: int) -> str:
            receipt: str = await self.step("charge", scene.charge, amount)
            await self.step("confirm", scene.confirm, receipt)
            self.kv["receipts"] = [*self.kv.get("receipts", []), receipt]
            return receipt

        async def receipts(self) -> list[str]:
            return list(self.kv.get("receipts", []))

    async with runtime(root, Shop) as rt:
        scene.closing = rt._engine.closing
        await rt.ref(Shop, "s").send(Shop.buy, 30)
        await scene.entered.wait()
    # The step finished within the grace; the turn's next step was refused by the close.
    assert effects(scene.log) == ["charge 30"]
    async with runtime(root, Shop) as rt:
        with anyio.fail_after(bound):
            await scene.finished.wait()  # resumed by the open alone: nothing was sent
        # (A message queued behind the resumed turn: answered once that turn has committed.)
        assert await rt.ref(Shop, "s").ask(Shop.receipts) == ["receipt-30"]
    assert effects(scene.log) == ["charge 30", "confirm receipt-30"]


async def close_during_ask(root: Path, bound: float = RESUME_BOUND) -> None:
    scene = Scene(root)

    class Bank(actors.Actor, name="close.Bank"):
        async def pay(self, amount: int) -> str:
            receipt: str = await self.step("charge", scene.charge, amount)
            self.kv["paid"] = [*self.kv.get("paid", []), receipt]
            return receipt

        async def payments(self) -> list[str]:
            return list(self.kv.get("paid", []))

    class Shop(actors.Actor, name="close.AskingShop"):
        async def buy(self, amount: int) -> str:
            receipt: str = await self.ask(self.ref_to(Bank, "b"), Bank.pay, amount)
            await self.step("confirm", scene.confirm, receipt)
            self.kv["receipts"] = [*self.kv.get("receipts", []), receipt]
            return receipt

        async def receipts(self) -> list[str]:
            return list(self.kv.get("receipts", []))

    async with runtime(root, Shop, Bank) as rt:
        scene.closing = rt._engine.closing
        await rt.ref(Shop, "s").send(Shop.buy, 30)
        await scene.entered.wait()  # the shop's turn waits in its ask, the bank's in a step
    assert effects(scene.log) == ["charge 30"]
    async with runtime(root, Shop, Bank) as rt:
        with anyio.fail_after(bound):
            await scene.finished.wait()
        assert await rt.ref(Shop, "s").ask(Shop.receipts) == ["receipt-30"]
        assert await rt.ref(Bank, "b").ask(Bank.payments) == ["receipt-30"]
    assert effects(scene.log) == ["charge 30", "confirm receipt-30"]


# -- trio, virtual time ---------------------------------------------------------------------------


async def test_a_turn_closed_inside_a_step_resumes_at_the_next_open(root: Path) -> None:
    """A close during a step: the next open finishes the turn by itself, the step not rerun."""
    await close_during_step(root)


async def test_a_turn_closed_inside_an_ask_resumes_at_the_next_open(root: Path) -> None:
    """A close during self.ask: the next open finishes the turn by itself, the ask made once."""
    await close_during_ask(root)


async def test_a_turn_closed_in_a_durable_sleep_still_wakes_at_its_deadline(root: Path) -> None:
    """A close during a durable sleep: the next open runs the rest of the turn at its deadline."""
    scene = Scene(root)

    async def before() -> None:
        note(scene.log, "before")

    class Nap(actors.Actor, name="close.Nap"):
        async def nap(self) -> None:
            await self.step("before", before)
            await self.sleep(3600)
            await self.step("confirm", scene.confirm, "after")
            self.kv["naps"] = int(self.kv.get("naps", 0)) + 1

        async def naps(self) -> int:
            return int(self.kv.get("naps", 0))

    async with runtime(root, Nap) as rt:
        ref = rt.ref(Nap, "n")
        await ref.send(Nap.nap)
        await trio.testing.wait_all_tasks_blocked()
        [turn] = await rt.turns(ref)
        assert turn.status == "waiting"  # parked in its journaled sleep
    assert effects(scene.log) == ["before"]
    async with runtime(root, Nap) as rt:
        # (Its wait's deadline wakes it: not every open of the runtime.)
        entry = rt._engine.directory.get(actor_id("close.Nap", "n"))
        assert entry is not None and not entry.pending
        with trio.fail_after(3600 + RESUME_BOUND):
            await scene.finished.wait()
        assert scene.finished_at is not None and scene.finished_at >= START + 3600
        assert await rt.ref(Nap, "n").ask(Nap.naps) == 1
    assert effects(scene.log) == ["before", "confirm after"]


async def test_a_sleep_refused_by_the_close_begins_when_the_turn_resumes(root: Path) -> None:
    """A sleep refused by a close starts when its turn resumes, its deadline counted from then."""
    # The close comes during a step followed by a sleep; the next open resumes the turn at once, and
    # the sleep is journaled then.
    scene = Scene(root)

    class Reminder(actors.Actor, name="close.Reminder"):
        async def remind(self) -> None:
            await self.step("charge", scene.charge, 1)
            await self.sleep(3600)
            await self.step("confirm", scene.confirm, "reminded")

    async with runtime(root, Reminder) as rt:
        scene.closing = rt._engine.closing
        await rt.ref(Reminder, "r").send(Reminder.remind)
        await scene.entered.wait()
    assert effects(scene.log) == ["charge 1"]
    reopened_at = clock()
    async with runtime(root, Reminder) as rt:
        ref = rt.ref(Reminder, "r")
        await trio.testing.wait_all_tasks_blocked()
        [turn] = await rt.turns(ref)
        assert (turn.status, [s.kind for s in turn.steps]) == ("waiting", ["step", "sleep"])
        with trio.fail_after(3600 + RESUME_BOUND):
            await scene.finished.wait()
        assert scene.finished_at is not None and scene.finished_at >= reopened_at + 3600
    assert effects(scene.log) == ["charge 1", "confirm reminded"]


# -- asyncio, real time ---------------------------------------------------------------------------


def test_a_turn_closed_inside_a_step_resumes_at_the_next_open_under_asyncio(
    tmp_path: Path,
) -> None:
    """Under asyncio too, a close during a step leaves the turn for the next open to finish."""
    asyncio.run(close_during_step(tmp_path / "rt", ASYNCIO_RESUME_BOUND))


def test_a_turn_closed_inside_an_ask_resumes_at_the_next_open_under_asyncio(
    tmp_path: Path,
) -> None:
    """Under asyncio too, a close during self.ask leaves the turn for the next open to finish."""
    asyncio.run(close_during_ask(tmp_path / "rt", ASYNCIO_RESUME_BOUND))
