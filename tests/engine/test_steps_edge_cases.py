"""Regression tests from a review of durable steps: each names the defect it pins down
(cancel or restart of a batched message, step calls in finally blocks during a suspension,
parked askers, signal keys after cleanup, graceful closes during long steps, ...)."""

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


# R3: graceful close while self.ask waits journals a permanent failure ---------------------
async def test_r3_close_during_self_ask_dead_letters_the_asker(root: Path) -> None:
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


# R4: a signal's idempotency key is forgotten once the event is consumed and cleaned --------
async def test_r4_signal_idempotency_forgotten_after_cleanup(root: Path) -> None:
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


# R7: awaiting one StepCall twice runs its function twice ------------------------------------
async def test_r7_step_awaited_twice_runs_twice(root: Path) -> None:
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


# R8: cancel_turn of an applied message reports success ---------------------------------------
async def test_r8_cancel_turn_of_applied_message(root: Path) -> None:
    class C(actors.Actor, name="C"):
        async def go(self) -> int:
            self.kv["n"] = self.kv.get("n", 0) + 1
            return 1

    async with runtime(root, C) as rt:
        ref = rt.ref(C, "c")
        await ref.ask(C.go)
        with pytest.raises(LookupError):
            await rt.cancel_turn(ref, 1, "too late")


# R9: cancel_turn of a batched (nested) message rolls back the messages before it -----------
async def test_r9_cancel_nested_message_loses_earlier_acknowledged_messages(root: Path) -> None:
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


# R10: cancel_turn while the actor is closing (on_hibernate awaits) is never acted on -------
async def test_r10_cancel_during_hibernation_window(root: Path) -> None:
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


# R11: a long step interrupted by graceful closes counts as process deaths -----------------
async def test_r11_graceful_closes_during_a_long_step_dead_letter_it(root: Path) -> None:
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


# R9b: restart_turn of a nested message: earlier messages answered but never committed ------
async def test_r9b_restart_nested_message(root: Path) -> None:
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


# R12: cancelling queued messages counts toward restart intensity and stops the actor ------
async def test_r12_cancel_many_stops_actor(root: Path) -> None:
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


# R15: check_crashes ignores a caller's clock after the crash-free run -----------------------
def test_r15_check_crashes_clock_only_for_baseline(tmp_path: Path) -> None:
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


# R16: the error for ref.signal inside a turn suggests "a step that signals": allowed there ----
async def test_r16_signal_inside_step(root: Path) -> None:
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


# R17: signal to a never-messaged actor: misleading ActorNotFoundError ------------------------
async def test_r17_signal_unknown_actor_message(root: Path) -> None:
    class A(actors.Actor, name="A"):
        async def wait(self) -> Any:
            return await self.wait_for_event("e")

    async with runtime(root, A) as rt:
        try:
            await rt.ref(A, "new").signal("e", 1)
        except actors.ActorNotFoundError as exc:
            assert "on_create needs arguments" not in str(exc), str(exc)


# R19: a durable wait inside the user's own nursery: hibernation crashes the runtime --------
async def test_r19_wait_in_user_nursery_then_hibernate(root: Path) -> None:
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


# R20: a step in `finally` around a durable wait runs at hibernation, then breaks replay ------
async def test_r20_step_in_finally_runs_on_suspension(root: Path) -> None:
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


# R21: parked askers are dropped when a wake-up fails to open the files ------------------
async def test_r21_parked_waiter_lost_on_failed_open(root: Path, monkeypatch: Any) -> None:
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


# State and durable calls inside a step's function are refused -----------------------------
async def test_state_and_durable_calls_inside_a_step_function_are_refused(root: Path) -> None:
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


# Durable calls inside helper coroutines run by gather are refused (scheduling order) ----------
async def test_durable_calls_in_gathered_helper_coroutines_are_refused(root: Path) -> None:
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
