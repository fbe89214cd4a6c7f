"""Durable steps at their edges: cancel or restart of a batched message, step calls in finally
blocks during a suspension, parked askers, signal keys after cleanup, graceful closes during long
steps, and the calls a step's function or a gathered helper may not make."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
import trio

import actors

START = 1_800_000_000.0


def clock() -> float:
    return START + trio.current_time()


def runtime(root: Path, *types: type, **options: Any) -> Any:
    options.setdefault("clock", clock)
    return actors.open_runtime(root, types=list(types), **options)


async def test_a_close_during_a_self_ask_does_not_dead_letter_the_asker(root: Path) -> None:
    """A graceful close while a handler awaits its ask of another actor dead-letters nothing."""

    class B(actors.Actor, name="B"):
        async def slow(self) -> str:
            await self.sleep(1000)
            return "done"

    class A(actors.Actor, name="A"):
        bref: ClassVar[actors.Ref[B]]  # set once the runtime is open

        async def go(self) -> str:
            return str(await self.ask(self.bref, B.slow))

    async with runtime(root, A, B, shutdown_grace=5, idle_timeout=10_000) as rt:
        A.bref = rt.ref(B, "b")
        await rt.ref(A, "a").send(A.go)
        await trio.sleep(10)
    async with runtime(root, A, B, idle_timeout=10_000) as rt:
        A.bref = rt.ref(B, "b")
        await trio.sleep(5)
        dead = await rt.dead_letters(rt.ref(A, "a"))
        assert dead == [], "A's message was dead-lettered only because the runtime closed"


async def test_a_signal_idempotency_key_outlives_the_cleanup_of_its_event(root: Path) -> None:
    """A signal's idempotency key still refuses a retry after its event was consumed and cleaned."""

    class Approval(actors.Actor, name="Approval"):
        async def wait(self) -> Any:
            return await self.wait_for_event("approved")

    async with runtime(root, Approval, idle_timeout=30) as rt:
        ref = rt.ref(Approval, "x")
        await ref.send(Approval.wait)
        assert await ref.signal("approved", 1, idempotency_key="req-1")
        await trio.sleep(1)
        assert await rt.turns(ref) == []
        await trio.sleep(100)  # hibernates: the batched cleanup runs
        # a webhook retried later with the same key
        added = await ref.signal("approved", 1, idempotency_key="req-1")
        assert not added, "the same idempotency key was accepted twice"


async def test_a_step_call_awaited_twice_is_refused_and_runs_once(root: Path) -> None:
    """Awaiting one StepCall twice raises RuntimeError; its function runs once."""
    calls: list[int] = []

    async def charge() -> int:
        calls.append(1)
        return len(calls)

    class Shop(actors.Actor, name="Shop"):
        async def buy(self) -> int:
            call = self.step("charge", charge)
            first = await call
            with pytest.raises(RuntimeError, match="awaited once"):
                await call
            return int(first)

    async with runtime(root, Shop) as rt:
        await rt.ref(Shop, "s").ask(Shop.buy)
    assert calls == [1], f"the step ran {len(calls)} times"


async def test_cancel_turn_of_an_applied_message_raises_lookup_error(root: Path) -> None:
    """cancel_turn of a message already applied raises LookupError, never reports success."""

    class C(actors.Actor, name="C"):
        async def go(self) -> int:
            self.kv["n"] = self.kv.get("n", 0) + 1
            return 1

    async with runtime(root, C) as rt:
        ref = rt.ref(C, "c")
        await ref.ask(C.go)
        with pytest.raises(LookupError):
            await rt.cancel_turn(ref, 1, "too late")


async def test_cancel_of_a_batched_message_keeps_the_acknowledged_ones_before(root: Path) -> None:
    """cancel_turn of a batched message keeps the acknowledged messages batched before it."""
    gate = trio.Event()
    replies: list[Any] = []

    class C(actors.Actor, name="C"):
        async def block(self) -> None:
            await gate.wait()

        async def write(self) -> str:
            self.kv["written"] = True
            return "written"

        async def slow(self) -> None:
            await trio.sleep(1000)  # not a durable wait: plain I/O in a handler

        @actors.query
        async def state(self) -> Any:
            return self.kv.get("written")

    async with runtime(root, C) as rt:
        ref = rt.ref(C, "c")
        await ref.send(C.block)
        await trio.sleep(1)
        async with trio.open_nursery() as nursery:

            async def ask_write() -> None:
                replies.append(await ref.ask(C.write))

            nursery.start_soon(ask_write)
            await trio.sleep(1)
            await ref.send(C.slow)
            await trio.sleep(1)
            gate.set()
            await trio.sleep(10)  # batch [write, slow] runs; slow sleeps
            (turn,) = await rt.turns(ref)
            assert turn.method == "slow"
            await rt.cancel_turn(ref, turn.seq, "stop")
            await trio.sleep(10)
        assert replies == ["written"]
        assert await ref.ask(C.state) is True, "the acknowledged write was rolled back"


async def test_cancel_turn_while_the_actor_hibernates_is_acted_on(root: Path) -> None:
    """cancel_turn while the actor is hibernating (on_hibernate awaits) still cancels the turn."""

    class W(actors.Actor, name="W"):
        async def on_hibernate(self) -> None:
            await trio.sleep(5)

        async def wait(self) -> Any:
            return await self.wait_for_event("never")

    async with runtime(root, W, idle_timeout=10) as rt:
        ref = rt.ref(W, "w")
        await ref.send(W.wait)
        await trio.sleep(12)  # idle at ~0, hibernation begins at 10, on_hibernate to 15
        (turn,) = await rt.turns(ref)
        await rt.cancel_turn(ref, turn.seq, "stop")
        await trio.sleep(1000)
        assert await rt.turns(ref) == []  # (turns() does not wake the actor)


async def test_graceful_closes_during_a_long_step_never_dead_letter_it(root: Path) -> None:
    """Graceful closes that interrupt a long step do not count as process deaths: no dead letter."""

    async def long() -> str:
        await trio.sleep(100)
        return "done"

    class L(actors.Actor, name="L"):
        async def go(self) -> str:
            return str(await self.step("long", long))

    async with runtime(root, L, shutdown_grace=1) as rt:
        await rt.ref(L, "l").send(L.go)
        await trio.sleep(10)
    for _ in range(7):
        async with runtime(root, L, shutdown_grace=1) as rt:
            await trio.sleep(10)
    async with runtime(root, L, shutdown_grace=1) as rt:
        dead = await rt.dead_letters(rt.ref(L, "l"))
        assert dead == [], [(d.error_type, d.error_message) for d in dead]


async def test_restart_of_a_batched_message_commits_the_answered_ones_before_it(root: Path) -> None:
    """restart_turn of a batched message commits the answered messages before it exactly once."""
    gate = trio.Event()
    replies: list[Any] = []

    class C(actors.Actor, name="C"):
        async def block(self) -> None:
            await gate.wait()

        async def write(self) -> str:
            self.kv["n"] = self.kv.get("n", 0) + 1
            return "written"

        async def slow(self) -> None:
            await trio.sleep(1000)

        async def noop(self) -> None:
            pass

        @actors.query
        async def state(self) -> Any:
            return self.kv.get("n")

    async with runtime(root, C) as rt:
        ref = rt.ref(C, "c")
        await ref.send(C.block)
        await trio.sleep(1)
        async with trio.open_nursery() as nursery:

            async def ask_write() -> None:
                replies.append(await ref.ask(C.write))

            nursery.start_soon(ask_write)
            await trio.sleep(1)
            await ref.send(C.slow)
            await trio.sleep(1)
            gate.set()
            await trio.sleep(10)
            (turn,) = await rt.turns(ref)
            await rt.restart_turn(ref, turn.seq)
            await trio.sleep(2000)
        await ref.send(C.noop)
        await trio.sleep(1)
        assert replies == ["written"]
        assert await ref.ask(C.state) == 1


async def test_cancelling_many_queued_messages_does_not_stop_the_actor(root: Path) -> None:
    """Cancelled queued messages do not count toward restart intensity: the actor goes on."""

    class C(actors.Actor, name="C"):
        async def wait(self) -> None:
            await self.wait_for_event("go")

        async def later(self) -> None:
            pass

    async with runtime(root, C) as rt:
        ref = rt.ref(C, "c")
        await ref.send(C.wait)
        for _ in range(12):
            await ref.send(C.later)
        await trio.sleep(1)
        for seq in range(2, 14):
            await rt.cancel_turn(ref, seq, "not needed")
        await ref.signal("go")
        await trio.sleep(10)
        await ref.send(C.later)
        assert await ref.ask(C.later) is None


def test_check_crashes_uses_the_callers_clock_in_every_run(tmp_path: Path) -> None:
    """check_crashes uses a caller's clock in the crash runs too, not only the crash-free one."""
    from actors.testing import check_crashes

    async def f() -> int:
        return 1

    class T(actors.Actor, name="T"):
        async def go(self) -> None:
            await self.step("f", f)
            self.kv["t"] = round(self.now().timestamp())

    async def scenario(rt: Any) -> None:
        await rt.ref(T, "t").options(idempotency_key="k").ask(T.go)

    check_crashes(scenario, types=[T], clock=lambda: 1000.0 + trio.current_time(), settle=1)


async def test_a_step_may_signal_an_actor(root: Path) -> None:
    """ref.signal inside a step is allowed (outside a step, the error suggests one)."""

    class A(actors.Actor, name="A"):
        async def poke(self) -> None:
            async def sig() -> bool:
                return await self.ref.signal("e", 1)

            await self.step("sig", sig)

        async def noop(self) -> None:
            pass

    async with runtime(root, A) as rt:
        await rt.ref(A, "a").ask(A.noop)
        await rt.ref(A, "a").ask(A.poke)


async def test_a_signal_to_a_new_actor_does_not_blame_on_create_arguments(root: Path) -> None:
    """A signal to a never-messaged actor does not fail with a misleading on_create error."""

    class A(actors.Actor, name="A"):
        async def wait(self) -> Any:
            return await self.wait_for_event("e")

    async with runtime(root, A) as rt:
        try:
            await rt.ref(A, "new").signal("e", 1)
        except actors.ActorNotFoundError as exc:
            assert "on_create needs arguments" not in str(exc), str(exc)


async def test_a_durable_wait_in_the_handlers_own_nursery_survives_hibernation(root: Path) -> None:
    """A durable wait inside a handler's own nursery survives hibernation and ends on its signal."""

    class W(actors.Actor, name="W"):
        async def go(self) -> Any:
            out: list[Any] = []

            async def one(name: str) -> None:
                out.append(await self.wait_for_event(name))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(one, "a")
            return out

    async with runtime(root, W, idle_timeout=10) as rt:
        ref = rt.ref(W, "w")
        await ref.send(W.go)
        await trio.sleep(100)  # hibernates
        await ref.signal("a", 1)
        await trio.sleep(10)
        assert await rt.turns(ref) == []


async def test_a_step_in_finally_around_a_durable_wait_runs_once_after_it(root: Path) -> None:
    """A step in a finally around a durable wait runs once, after the wait, not at hibernation."""
    calls: list[str] = []

    async def work() -> None:
        calls.append("work")

    async def cleanup() -> None:
        calls.append("cleanup")

    class W(actors.Actor, name="W"):
        async def go(self) -> None:
            try:
                await self.wait_for_event("go")
                await self.step("work", work)
            finally:
                await self.step("cleanup", cleanup)

    async with runtime(root, W, idle_timeout=10) as rt:
        ref = rt.ref(W, "w")
        await ref.send(W.go)
        await trio.sleep(100)  # hibernates: Suspended runs the finally
        await ref.signal("go")
        await trio.sleep(10)
        assert calls == ["work", "cleanup"]


async def test_a_parked_asker_gets_its_reply_after_a_failed_wake_up(
    root: Path, monkeypatch: Any
) -> None:
    """An asker parked on a hibernated actor gets its reply although one wake-up failed to open."""
    from runtime import activation as activation_module
    from runtime.errors import StorageError

    fail = [False]
    real_open = activation_module.Activation.open

    def flaky_open(self: Any) -> None:
        if fail[0]:
            fail[0] = False
            raise StorageError("transient", path="x")
        real_open(self)

    monkeypatch.setattr(activation_module.Activation, "open", flaky_open)

    class W(actors.Actor, name="W"):
        async def go(self) -> Any:
            return await self.wait_for_event("e")

    got: list[Any] = []
    async with runtime(root, W, idle_timeout=10) as rt:
        ref = rt.ref(W, "w")
        async with trio.open_nursery() as nursery:

            async def ask() -> None:
                got.append(await ref.ask(W.go))

            nursery.start_soon(ask)
            await trio.sleep(100)  # hibernated, asker parked
            fail[0] = True
            with pytest.raises(StorageError):
                await ref.signal("e", 1)
            await ref.signal("e", 2)
            await trio.sleep(5)
            with trio.fail_after(100):
                while not got:  # noqa: ASYNC110 (virtual time)
                    await trio.sleep(1)
            assert got == [2]


async def test_state_and_durable_calls_inside_a_step_function_are_refused(root: Path) -> None:
    """A step's function may not touch the actor's state nor make durable calls (self.now())."""

    class Shop(actors.Actor, name="Shop"):
        async def _charge(self) -> str:
            self.kv["charged"] = True  # lost on replay if it were allowed
            return "r"

        async def _stamp(self) -> str:
            return str(self.now())  # would shift the step numbers on replay

        async def buy(self, which: str) -> str:
            fn = self._charge if which == "kv" else self._stamp
            try:
                await self.step("charge", actors.Retry(max_attempts=1), fn)
            except actors.StepFailedError as exc:
                return exc.error_message
            return "allowed"

    async with runtime(root, Shop) as rt:
        ref = rt.ref(Shop, "s")
        assert "only while a handler" in await ref.ask(Shop.buy, "kv")
        assert "only while a handler" in await ref.ask(Shop.buy, "now")


async def test_durable_calls_in_gathered_helper_coroutines_are_refused(root: Path) -> None:
    """Durable calls in helper coroutines run by gather are refused; gathered steps are fine."""

    async def search(topic: str) -> str:
        return f"result for {topic}"

    class Agent(actors.Actor, name="Agent"):
        async def research(self, topic: str) -> str:
            return str(await self.step("search", search, topic))

        async def go(self) -> str:
            try:
                await self.gather(self.research("a"), self.research("b"))
            except RuntimeError as exc:
                return str(exc)
            return "allowed"

        async def fine(self) -> list[str]:
            return await self.gather(self.step("a", search, "a"), self.step("b", search, "b"))

    async with runtime(root, Agent) as rt:
        ref = rt.ref(Agent, "k")
        assert "scheduling order" in await ref.ask(Agent.go)
        assert await ref.ask(Agent.fine) == ["result for a", "result for b"]
