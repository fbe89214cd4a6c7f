"""Failure semantics (DESIGN §10): terminal errors, retry policies per handler, durable backoff,
stable handler names and validators. Virtual time throughout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

import actors

pytestmark = pytest.mark.both_backends

START = 1_800_000_000.0


def clock() -> float:
    return START + anyio.current_time()


def runtime(root: Path, *types: type, **options: Any) -> Any:
    options.setdefault("clock", clock)
    return actors.open_runtime(root, types=list(types), **options)


class CardDeclined(actors.TerminalError):
    """A refusal no retry can change."""


# -- TerminalError ----------------------------------------------------------------------------


async def test_a_terminal_error_fails_the_message_at_once(root: Path) -> None:
    """A handler's TerminalError: no retry, the asker's cause, reason terminal, no intensity."""
    calls: list[int] = []

    class Shop(actors.Actor, name="Shop"):
        retry = actors.Retry(max_attempts=5, initial_delay=1)
        restart_intensity = actors.RestartIntensity(max_failures=1, period=3600)

        async def buy(self, n: int) -> str:
            calls.append(n)
            self.kv["bought"] = n  # rolled back
            raise CardDeclined(f"card declined for order {n}")

        @actors.query
        async def bought(self) -> int | None:
            value: int | None = self.kv.get("bought")
            return value

    async with runtime(root, Shop) as rt:
        ref = rt.ref(Shop, "s")
        for n in range(3):
            with pytest.raises(actors.MessageFailedError) as failed:
                await ref.ask(Shop.buy, n)
            assert isinstance(failed.value.__cause__, CardDeclined)
            assert failed.value.reason == "terminal"
            assert failed.value.attempts == 1
        assert calls == [0, 1, 2]  # one attempt each, no retry
        stats = rt.statistics()
        assert (stats.stopped, stats.retries) == (0, 0)  # the intensity (1) was never reached
        letters = await rt.dead_letters(ref)
        assert [(d.reason, d.attempts, d.error_type) for d in letters] == [
            ("terminal", 1, f"{__name__}.CardDeclined")
        ] * 3
        assert await ref.ask(Shop.bought) is None


async def test_an_ordinary_failure_is_recorded_as_exhausted(root: Path) -> None:
    """A message whose every allowed attempt failed is dead-lettered with reason "exhausted"."""

    class Flaky(actors.Actor, name="Flaky"):
        retry = actors.Retry(max_attempts=2, initial_delay=1)

        async def work(self) -> None:
            raise ConnectionError("upstream down")

    async with runtime(root, Flaky) as rt:
        ref = rt.ref(Flaky, "f")
        with pytest.raises(actors.MessageFailedError) as failed:
            await ref.ask(Flaky.work)
        assert (failed.value.reason, failed.value.attempts) == ("exhausted", 2)
        assert [d.reason for d in await rt.dead_letters(ref)] == ["exhausted"]


async def test_a_terminal_error_read_back_by_an_idempotent_ask_keeps_its_reason(
    root: Path,
) -> None:
    """Asking again with the same idempotency key raises the stored terminal failure."""

    class Shop(actors.Actor, name="Shop"):
        async def buy(self) -> None:
            raise actors.TerminalError("sold out")

    async with runtime(root, Shop) as rt:
        ref = rt.ref(Shop, "s").options(idempotency_key="order-1")
        for _ in range(2):
            with pytest.raises(actors.MessageFailedError) as failed:
                await ref.ask(Shop.buy)
            assert failed.value.reason == "terminal"
            assert "sold out" in str(failed.value.__cause__)


async def test_a_terminal_error_in_a_step_is_journaled_and_the_handler_compensates(
    root: Path,
) -> None:
    """A step's TerminalError is journaled at once; the handler compensates; replays agree."""
    calls: list[str] = []
    seen: list[str] = []

    async def charge(order: str) -> str:
        calls.append(f"charge {order}")
        raise CardDeclined(f"card declined for {order}")

    async def release(order: str) -> None:
        calls.append(f"release {order}")

    class Saga(actors.Actor, name="Saga"):
        async def order(self, order: str) -> str:
            try:
                await self.step("charge", actors.Retry(max_attempts=5), charge, order)
            except actors.TerminalError as exc:
                seen.append(f"{type(exc).__name__}: {exc}")
                await self.step("release", release, order)
                await self.sleep(3600)  # hibernates: the turn replays from its journal
                raise
            return "charged"

    async with runtime(root, Saga, idle_timeout=30) as rt:
        ref = rt.ref(Saga, "s")
        async with anyio.create_task_group() as tg:
            failures: list[BaseException] = []

            async def ask() -> None:
                try:
                    await ref.ask(Saga.order, "o-1")
                except actors.MessageFailedError as exc:
                    failures.append(exc)

            tg.start_soon(ask)
            await anyio.sleep(60)
            assert rt.statistics().awake == 0  # hibernated in the middle of the turn
            (turn,) = await rt.turns(ref)
            assert [(s.name, s.status, s.attempts) for s in turn.steps] == [
                ("charge", "failed", 1),
                ("release", "done", 1),
                ("sleep", "waiting", 0),
            ]
        (failed,) = failures
        assert isinstance(failed, actors.MessageFailedError)
        assert failed.reason == "terminal"
        assert isinstance(failed.__cause__, actors.TerminalError)
        assert [d.reason for d in await rt.dead_letters(ref)] == ["terminal"]
        assert rt.statistics().step_retries == 0
    assert calls == ["charge o-1", "release o-1"]  # each step ran once
    assert seen == ["TerminalError: CardDeclined: card declined for o-1"] * 2  # same on replay


async def test_a_terminal_failure_of_an_asked_actor_is_terminal_for_the_asker(
    root: Path,
) -> None:
    """self.ask of a message that fails terminally raises TerminalError in the asking turn."""

    class Bank(actors.Actor, name="Bank"):
        async def pay(self, amount: int) -> None:
            raise actors.TerminalError(f"no funds for {amount}")

    class Buyer(actors.Actor, name="Buyer"):
        async def buy(self) -> str:
            try:
                await self.ask(self.ref_to(Bank, "b"), Bank.pay, 5)
            except actors.TerminalError as exc:
                return f"refused: {exc}"
            return "paid"

    async with runtime(root, Bank, Buyer) as rt:
        assert await rt.ref(Buyer, "u").ask(Buyer.buy) == "refused: no funds for 5"


async def test_a_terminal_error_in_on_create_fails_the_actor_at_once(root: Path) -> None:
    """on_create raising TerminalError is not retried: the actor fails, its messages kept."""
    calls: list[int] = []

    class Account(actors.Actor, name="Account"):
        retry = actors.Retry(max_attempts=5, initial_delay=1)

        async def on_create(self, owner: str) -> None:
            calls.append(1)
            raise actors.TerminalError(f"{owner} is not allowed")

        async def get(self) -> int:
            return 1

    async with runtime(root, Account) as rt:
        ref = await rt.spawn(Account, "mallory", key="a")
        await anyio.sleep(100)  # the policy would allow 4 retries by now
        assert calls == [1]
        assert rt.statistics().failed == 1
        with pytest.raises(actors.ActorFailedError):
            await ref.ask(Account.get)  # (each wake-up tries on_create once more)


def test_a_mailbox_written_before_failure_reasons_opens_and_migrates(tmp_path: Path) -> None:
    """A mailbox.db of the previous schema opens: its messages and dead letters are kept."""
    import apsw

    from runtime.files import db, mailbox

    path = tmp_path / "mailbox.db"
    conn = apsw.Connection(str(path))
    db.migrate(conn, mailbox._MIGRATIONS[:2], lambda sql: db.execute_script(conn, sql), what="old")
    conn.execute(
        "INSERT INTO meta(name, value) VALUES ('type', 'T'), ('key', 'k');"
        "INSERT INTO inbox(method, payload, attempts, enqueued_at) VALUES ('go', x'90', 2, 1.0);"
        "INSERT INTO dead_letters(seq, method, payload, attempts, error_type, error_message, "
        "traceback, failed_at) VALUES (7, 'go', x'90', 3, 'E', 'm', '', 1.0)"
    )
    conn.close()
    box = mailbox.Mailbox(path, synchronous="NORMAL", type_name="T", key="k")
    try:
        (message,) = box.load(0, 10, recovered=True)
        assert (message.method, message.attempts, message.retry_at) == ("go", 2, None)
        assert [(d.seq, d.reason) for d in box.dead_letters()] == [(7, "unknown")]
    finally:
        box.close()
