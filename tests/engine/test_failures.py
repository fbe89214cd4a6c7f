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


# -- retry policies and durable backoff --------------------------------------------------------


async def test_max_attempts_none_retries_a_message_and_a_step_forever(root: Path) -> None:
    """Retry(max_attempts=None) retries a failing message and a failing step until they pass."""
    step_calls: list[int] = []
    turn_calls: list[float] = []

    async def flaky() -> int:
        step_calls.append(actors.current_step().attempt)
        if len(step_calls) < 40:
            raise ConnectionError("still down")
        return len(step_calls)

    class Patient(actors.Actor, name="Patient"):
        retry = actors.Retry(max_attempts=None, initial_delay=1, max_delay=60, jitter=0)
        restart_intensity = actors.RestartIntensity(max_failures=1000, period=60)

        async def go(self) -> int:
            turn_calls.append(clock())
            if len(turn_calls) < 30:
                raise ConnectionError("not yet")
            forever = actors.Retry(max_attempts=None, initial_delay=1, max_delay=60, jitter=0)
            result: int = await self.step("flaky", forever, flaky)
            return result

    async with runtime(root, Patient) as rt:
        assert await rt.ref(Patient, "p").ask(Patient.go) == 40
        assert step_calls == list(range(1, 41))
        assert len(turn_calls) == 30
        assert turn_calls[-1] - turn_calls[-2] == pytest.approx(60)  # capped by max_delay
        assert rt.statistics().retries == 29


async def test_a_message_in_backoff_waits_out_the_rest_after_a_reopen(root: Path) -> None:
    """Closing in a message's backoff neither resets its attempt count nor its delay."""
    attempts: list[float] = []

    class Slow(actors.Actor, name="Slow"):
        retry = actors.Retry(max_attempts=3, initial_delay=1000, max_delay=5000, jitter=0)

        async def go(self) -> None:
            attempts.append(clock())
            raise ConnectionError("down")

    async with runtime(root, Slow) as rt:
        await rt.ref(Slow, "s").send(Slow.go)
        await anyio.sleep(100)  # attempt 1 failed; 900 s of backoff remain
        assert len(attempts) == 1
    async with runtime(root, Slow) as rt:
        await anyio.sleep(5000)
        letters = await rt.dead_letters(rt.ref(Slow, "s"))
    assert [round(t - attempts[0]) for t in attempts] == [0, 1000, 3000]
    assert [(d.attempts, d.reason) for d in letters] == [(3, "exhausted")]


async def test_a_step_in_backoff_keeps_its_attempt_count_and_delay_after_a_reopen(
    root: Path,
) -> None:
    """Closing in a step's backoff: after a reopen the step goes on at its next attempt, on time."""
    attempts: list[tuple[int, float]] = []

    async def call_llm() -> str:
        attempts.append((actors.current_step().attempt, clock()))
        if len(attempts) < 3:
            raise ConnectionError("503")
        return "answer"

    class Agent(actors.Actor, name="Agent"):
        async def go(self) -> None:
            slow = actors.Retry(max_attempts=5, initial_delay=1000, max_delay=5000, jitter=0)
            self.kv["answer"] = await self.step("llm", slow, call_llm)

        @actors.query
        async def answer(self) -> str | None:
            value: str | None = self.kv.get("answer")
            return value

    async with runtime(root, Agent, shutdown_grace=1) as rt:
        ref = rt.ref(Agent, "a")
        await ref.send(Agent.go)
        await anyio.sleep(100)  # attempt 1 failed; the step waits 900 s more
        (turn,) = await rt.turns(ref)
        (step,) = turn.steps
        assert (step.status, step.attempts) == ("retrying", 1)
        assert step.until == pytest.approx(attempts[0][1] + 1000)
    async with runtime(root, Agent) as rt:
        await anyio.sleep(5000)
        assert await rt.ref(Agent, "a").ask(Agent.answer) == "answer"
    assert [(n, round(t - attempts[0][1])) for n, t in attempts] == [(1, 0), (2, 1000), (3, 3000)]


# -- @actors.handler ---------------------------------------------------------------------------


async def test_a_handlers_own_retry_policy_overrides_the_types(root: Path) -> None:
    """@actors.handler(retry=...) sets one handler's attempts; the others keep the type's."""
    calls: list[str] = []

    class Mixed(actors.Actor, name="Mixed"):
        retry = actors.Retry(max_attempts=1)

        @actors.handler(retry=actors.Retry(max_attempts=4, initial_delay=1))
        async def patient(self) -> None:
            calls.append("patient")
            raise ConnectionError("down")

        async def hasty(self) -> None:
            calls.append("hasty")
            raise ConnectionError("down")

    async with runtime(root, Mixed) as rt:
        ref = rt.ref(Mixed, "m")
        with pytest.raises(actors.MessageFailedError) as patient:
            await ref.ask(Mixed.patient)
        with pytest.raises(actors.MessageFailedError) as hasty:
            await ref.ask(Mixed.hasty)
    assert (patient.value.attempts, hasty.value.attempts) == (4, 1)
    assert calls == ["patient"] * 4 + ["hasty"]


def agent_v1() -> type[actors.Actor]:
    class Agent(actors.Actor, name="Agent"):
        async def hold(self) -> None:
            await self.sleep(3600)  # the messages after it stay queued

        async def chat(self, text: str) -> str:
            raise AssertionError("the old code never runs them")

    return Agent


def agent_v2() -> type[actors.Actor]:
    class Agent(actors.Actor, name="Agent"):
        async def hold(self) -> None:
            await self.sleep(3600)

        @actors.handler(name="chat")
        async def reply(self, text: str) -> str:
            self.kv["said"] = [*self.kv.get("said", []), text]
            return text.upper()

        @actors.query
        async def said(self) -> list[str]:
            return list(self.kv.get("said", []))

    return Agent


async def test_renaming_a_method_with_a_stable_name_keeps_queued_messages(root: Path) -> None:
    """Messages queued under the old method name run on the renamed method that keeps it."""
    old = agent_v1()
    async with runtime(root, old, shutdown_grace=0) as rt:
        ref = rt.ref(old, "a")
        await ref.send(old.hold)  # type: ignore[attr-defined]
        await ref.send(old.chat, "one")  # type: ignore[attr-defined]
        await ref.send("chat", "two")
        await anyio.sleep(10)
    new = agent_v2()
    async with runtime(root, new) as rt:
        ref = rt.ref(new, "a")
        await anyio.sleep(3700)
        assert await ref.ask(new.reply, "three") == "THREE"  # type: ignore[attr-defined]
        assert await ref.ask("chat", "four") == "FOUR"
        assert await ref.ask("reply", "five") == "FIVE"  # the method's name resolves too
        assert await ref.ask(new.said) == ["one", "two", "three", "four", "five"]  # type: ignore[attr-defined]
        assert await rt.dead_letters(ref) == []


def test_handler_definitions_are_checked_when_the_class_is_defined() -> None:
    """Shared persisted names, async validators and misplaced options fail at definition."""
    with pytest.raises(TypeError, match="share the persisted handler name 'chat'"):

        class Twice(actors.Actor):
            @actors.handler(name="chat")
            async def a(self) -> None: ...

            @actors.handler(name="chat")
            async def b(self) -> None: ...

    with pytest.raises(TypeError, match="ambiguous"):

        class Crossed(actors.Actor):
            @actors.handler(name="b")
            async def a(self) -> None: ...

            @actors.handler(name="c")
            async def b(self) -> None: ...

    async def check(text: str) -> bool:
        return True

    with pytest.raises(TypeError, match="must be a plain def"):
        actors.handler(validator=check)
    with pytest.raises(TypeError, match="never retried"):

        class Reader(actors.Actor):
            @actors.handler(retry=actors.Retry())
            @actors.query
            async def read(self) -> None: ...

    with pytest.raises(TypeError, match="async method"):
        actors.handler(lambda self: None)  # type: ignore[type-var]
    with pytest.raises(ValueError, match="handler's name"):
        actors.handler(name="_private")
    with pytest.raises(ValueError, match="lifecycle hook"):
        actors.handler(name="on_create")
    with pytest.raises(TypeError, match="drop the leading underscore"):

        class Hidden(actors.Actor):
            @actors.handler
            async def _secret(self) -> None: ...

    with pytest.raises(TypeError, match=r"actors\.Retry"):
        actors.handler(retry=3)  # type: ignore[call-overload]


async def test_a_validator_refuses_a_call_in_the_sender_and_stores_nothing(root: Path) -> None:
    """A validator's refusal is an InvalidArgumentsError at the sender; nothing is stored."""
    ran: list[str] = []

    def positive(amount: int, *, note: str = "") -> bool:
        if amount == 0:
            raise ValueError("the amount must not be zero")
        return amount > 0

    class Wallet(actors.Actor, name="Wallet"):
        @actors.handler(validator=positive)
        async def pay(self, amount: int, *, note: str = "") -> int:
            ran.append(f"pay {amount}")
            return amount

        @actors.query
        @actors.handler(validator=lambda n: n < 10)
        async def peek(self, n: int) -> int:
            return n

        async def relay(self, amount: int) -> None:
            self.send(self.ref, Wallet.pay, amount)  # refused: this turn fails

    async with runtime(root, Wallet) as rt:
        ref = rt.ref(Wallet, "w")
        with pytest.raises(actors.InvalidArgumentsError, match="must not be zero") as raised:
            await ref.send(Wallet.pay, 0)
        assert isinstance(raised.value.__cause__, ValueError)
        with pytest.raises(actors.InvalidArgumentsError, match="returned False"):
            await ref.ask(Wallet.pay, -5, note="refund")
        stats = rt.statistics()
        assert (stats.messages_sent, stats.awake, stats.hibernated) == (0, 0, 0)
        assert await ref.ask(Wallet.pay, 5) == 5
        with pytest.raises(actors.InvalidArgumentsError, match="returned False"):
            await ref.ask(Wallet.peek, 12)
        assert await ref.ask(Wallet.peek, 3) == 3
        with pytest.raises(actors.MessageFailedError) as relayed:
            await ref.ask(Wallet.relay, -1)
        assert isinstance(relayed.value.__cause__, actors.InvalidArgumentsError)
        # The same arguments are refused on every attempt: not retried, as an EncodingError.
        assert (relayed.value.reason, relayed.value.attempts) == ("not_retryable", 1)
    assert ran == ["pay 5"]


async def test_terminal_errors_from_a_handlers_task_group_are_terminal(root: Path) -> None:
    """A group of only TerminalErrors from the handler's own task group fails terminally."""
    calls: list[int] = []

    class Fanout(actors.Actor, name="Fanout"):
        retry = actors.Retry(max_attempts=3, initial_delay=1)

        async def go(self) -> None:
            calls.append(1)

            async def refuse(what: str) -> None:
                raise actors.TerminalError(f"{what} refused")

            async with anyio.create_task_group() as tg:
                tg.start_soon(refuse, "a")
                tg.start_soon(refuse, "b")

    async with runtime(root, Fanout) as rt:
        with pytest.raises(actors.MessageFailedError) as failed:
            await rt.ref(Fanout, "f").ask(Fanout.go)
    assert failed.value.reason == "terminal"
    assert calls == [1]


async def test_a_message_in_backoff_can_be_cancelled_at_once(root: Path) -> None:
    """Cancelling a message in a long backoff dead-letters it now, not when the delay ends."""
    calls: list[float] = []

    class Stuck(actors.Actor, name="Stuck"):
        retry = actors.Retry(max_attempts=None, initial_delay=3600, jitter=0)

        async def go(self) -> None:
            calls.append(clock())
            raise ConnectionError("down")

        async def ping(self) -> str:
            return "pong"

    async with runtime(root, Stuck) as rt:
        ref = rt.ref(Stuck, "s")
        async with anyio.create_task_group() as tg:
            outcome: list[BaseException] = []

            async def ask() -> None:
                try:
                    await ref.ask(Stuck.go)
                except actors.MessageFailedError as exc:
                    outcome.append(exc)

            tg.start_soon(ask)
            await anyio.sleep(10)
            await ref.send(Stuck.ping)  # arrives during the backoff: it waits behind
            await anyio.sleep(10)
            assert len(calls) == 1 and not outcome
            cancelled_at = clock()
            await rt.cancel_turn(ref, 1)  # (the actor's first message)
        assert [e.reason for e in outcome if isinstance(e, actors.MessageFailedError)] == [
            "cancelled"
        ]
        assert clock() - cancelled_at < 1
        assert await ref.ask(Stuck.ping) == "pong"
    assert len(calls) == 1
