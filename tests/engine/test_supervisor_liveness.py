"""Supervisor liveness: no deadlock or lost wake-up between outbox delivery, awake
slots (max_awake), queries, hibernation, timers and shutdown. Virtual time (MockClock) except
the asyncio variants; every wait is bounded, so a regression fails instead of hanging."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import anyio
import pytest
import trio

import actors
from runtime.files.layout import DATA_FILE, actor_dir, actor_id

#: Virtual seconds a whole test may take before it counts as hung.
HANG_LIMIT = 10_000
#: The virtual epoch for timers (as in test_timers.py).
START = dt.datetime(2026, 11, 23, tzinfo=dt.UTC).timestamp()


def clock() -> float:
    return START + trio.current_time()


async def outcome(call: Any, *args: Any) -> Any:
    """The call's result, or the exception it raised (a cancellation included)."""
    try:
        return await call(*args)
    except BaseException as exc:  # the test inspects what leaked, a cancellation included
        return exc


# -- 1. outbox delivery never waits for an awake slot -----------------------------------------


class Node(actors.Actor, name="LiveNode"):
    async def forward(self, to: str) -> None:
        self.send(self.ref_to(Node, to), Node.hit)

    async def hit(self) -> None:
        self.kv["hits"] = self.kv.get("hits", 0) + 1

    @actors.query
    async def hits(self) -> int:
        return int(self.kv.get("hits", 0))


@pytest.mark.parametrize("max_awake", [1, 4])
async def test_full_slots_of_senders_to_asleep_actors_do_not_deadlock(
    root: Path, max_awake: int
) -> None:
    """With max_awake=N and N awake actors all sending to new actors, every message is applied."""
    # The N awake actors all send at once; none may deadlock waiting for a slot.
    with trio.fail_after(HANG_LIMIT):
        async with actors.open_runtime(
            root, types=[Node], max_awake=max_awake, idle_timeout=5, shutdown_grace=1
        ) as rt:
            async with trio.open_nursery() as nursery:
                for i in range(max_awake):
                    nursery.start_soon(rt.ref(Node, f"a{i}").send, Node.forward, f"b{i}")
            await trio.sleep(60)
            assert rt.statistics().messages_applied == 2 * max_awake
            for i in range(max_awake):
                assert await rt.ref(Node, f"b{i}").ask(Node.hits) == 1


# -- 2. callers waiting for an awake slot ------------------------------------------------------


class Busy(actors.Actor, name="LiveBusy"):
    gate: Any = None

    async def work(self) -> str:
        await Busy.gate.wait()  # a long turn: this actor is not idle
        return "done"

    async def ping(self) -> str:
        return "pong"


async def callers_waiting_for_slots(root: Path, max_awake: int, release: bool) -> dict[str, Any]:
    """``max_awake`` busy turns hold every slot, two more callers wait for one; then the busy
    turns end (``release``) or the runtime closes. What each caller got."""
    Busy.gate = trio.Event()
    results: dict[str, Any] = {}
    async with (
        trio.open_nursery() as callers,  # outside the runtime: callers may outlive it
        actors.open_runtime(
            root, types=[Busy], max_awake=max_awake, idle_timeout=3600, shutdown_grace=5
        ) as rt,
    ):

        async def ask(key: str, method: Any) -> None:
            results[key] = await outcome(rt.ref(Busy, key).ask, method)

        for i in range(max_awake):
            callers.start_soon(ask, f"x{i}", Busy.work)
            await trio.sleep(0.1)
        for key in ("y0", "y1"):
            callers.start_soon(ask, key, Busy.ping)
            await trio.sleep(0.1)
        assert results == {}  # every slot is held by a busy turn
        if release:
            Busy.gate.set()
            await trio.sleep(1)
    return results


@pytest.mark.parametrize("max_awake", [1, 2])
async def test_callers_waiting_for_a_slot_all_get_through_and_close_does_not_hang(
    root: Path, max_awake: int
) -> None:
    """Callers waiting for an awake slot all get through, and a close ends their wait."""
    with trio.fail_after(HANG_LIMIT):
        results = await callers_waiting_for_slots(root / "released", max_awake, release=True)
    busy = {f"x{i}": "done" for i in range(max_awake)}
    assert results == {**busy, "y0": "pong", "y1": "pong"}

    with trio.fail_after(HANG_LIMIT):
        results = await callers_waiting_for_slots(root / "closed", max_awake, release=False)
    for key in ("y0", "y1"):
        assert isinstance(results[key], actors.RuntimeClosedError), results


# -- 3. a query does not idle a busy actor -----------------------------------------------------


async def query_while_queued(root: Path, idle_timeout: float) -> None:
    """Two @query handlers end right after a send woke the actor's loop, before the loop ran.

    Three tasks resume together: a query, the sender, a query. Trio runs them in this order
    or in reverse, asyncio in this order: either way a query ends after the send.
    """
    go = [anyio.Event() for _ in range(3)]  # one each: the order in which they resume
    started = anyio.Event()

    class Q(actors.Actor, name="LiveQ"):
        async def slow(self) -> None:
            started.set()
            await anyio.sleep(3 * idle_timeout)  # e.g. an LLM call in the turn

        async def inc(self) -> int:
            self.kv["n"] = self.kv.get("n", 0) + 1
            return int(self.kv["n"])

        @actors.query
        async def peek(self, gate: int) -> int:
            await go[gate].wait()
            return int(self.kv.get("n", 0))

    async with actors.open_runtime(root, types=[Q], idle_timeout=idle_timeout) as rt:
        ref = rt.ref(Q, "q")
        assert await ref.ask(Q.inc) == 1  # awake and idle
        out: dict[str, Any] = {}

        async def sender() -> None:
            await go[1].wait()
            await ref.send(Q.slow)
            await started.wait()
            out["inc"] = await outcome(ref.ask, Q.inc)  # queued behind slow

        async with anyio.create_task_group() as tg:
            tg.start_soon(ref.ask, Q.peek, 0)
            tg.start_soon(sender)
            tg.start_soon(ref.ask, Q.peek, 2)
            await anyio.sleep(idle_timeout / 100)
            for event in go:
                event.set()
        assert out["inc"] == 2
        assert rt.statistics().hibernations == 0


async def test_query_ending_while_a_message_is_queued_does_not_hibernate_the_actor(
    root: Path,
) -> None:
    """A @query ending while a message is queued does not hibernate the busy actor."""
    # The messages behind the query are applied.
    with trio.fail_after(HANG_LIMIT):
        await query_while_queued(root, idle_timeout=10)


def test_query_ending_while_a_message_is_queued_under_asyncio(root: Path) -> None:
    """On asyncio, a @query ending while a message is queued does not hibernate the busy actor."""
    asyncio.run(asyncio.wait_for(query_while_queued(root, idle_timeout=0.2), 30))


# -- 4. delivering to itself while hibernation begins -----------------------------------------


async def test_self_delivery_racing_hibernation_does_not_stall_the_supervisor(
    root: Path,
) -> None:
    """An actor's outbox delivery to itself racing hibernation does not deadlock the supervisor."""
    # An idle actor still hibernates afterwards.
    go = [trio.Event() for _ in range(3)]  # as in query_while_queued

    class Napper(actors.Actor, name="LiveNapper"):
        async def hit(self) -> None:
            pass

        async def on_hibernate(self) -> None:
            await trio.sleep(28)

    class Fan(actors.Actor, name="LiveFan"):
        async def noop(self) -> None:
            pass

        async def fan(self) -> None:
            self.send(self.ref_to(Napper, "b"), Napper.hit)
            self.send(self.ref, Fan.noop)

        @actors.query
        async def peek(self, gate: int) -> int:
            await go[gate].wait()
            return 0

    with trio.fail_after(HANG_LIMIT):
        async with actors.open_runtime(
            root, types=[Fan, Napper], idle_timeout=10, shutdown_grace=1
        ) as rt:
            fan = rt.ref(Fan, "a")
            await rt.ref(Napper, "b").send(Napper.hit)
            await fan.send(Fan.noop)
            await trio.sleep(11)  # b is hibernating until t=39

            async def sender() -> None:
                await go[1].wait()
                await fan.send(Fan.fan)  # while a query ends: it idled 'a' in its turn

            async with trio.open_nursery() as nursery:
                nursery.start_soon(fan.ask, Fan.peek, 0)
                nursery.start_soon(sender)
                nursery.start_soon(fan.ask, Fan.peek, 2)
                await trio.sleep(0.1)
                for event in go:
                    event.set()
            await trio.sleep(40)
            await rt.ref(Napper, "other").send(Napper.hit)  # idle from now on
            await trio.sleep(3600)
            stats = rt.statistics()
            assert stats.awake == 0  # 'other', and 'a' too, hibernated when idle
            assert stats.messages_applied == 6  # 2 hits and 2 noops, fan, other's hit


# -- 5. a failed outbox delivery is retried ----------------------------------------------------


class Relay(actors.Actor, name="LiveRelay"):
    async def forward(self) -> None:
        self.send(self.ref_to(Node, "b"), Node.hit)

    @actors.query
    async def look(self) -> int:
        return 0


async def test_failed_outbox_delivery_is_retried_after_a_query(root: Path) -> None:
    """A failed outbox delivery is retried and arrives even if a query ran on the sender since."""
    with trio.fail_after(HANG_LIMIT):
        async with actors.open_runtime(root, types=[Relay, Node], idle_timeout=10) as rt:
            target = await rt.spawn(Node, key="b")  # (a query creates no actor)
            assert await target.ask(Node.hits) == 0
            await trio.sleep(20)  # b hibernates
            data = actor_dir(root, actor_id("LiveNode", "b")) / DATA_FILE
            good = data.read_bytes()
            data.write_bytes(b"garbage" * 1000)  # b cannot be opened for now
            relay = rt.ref(Relay, "a")
            await relay.send(Relay.forward)
            await trio.sleep(1)
            assert await relay.ask(Relay.look) == 0  # a query while the delivery is retried
            await trio.sleep(15)
            data.write_bytes(good)  # b is fine again
            await trio.sleep(120)
            assert await target.ask(Node.hits) == 1


# -- 6. a cancelled caller's cancellation stays its own ----------------------------------------


async def shared_wake_with_a_cancelled_caller(root: Path, unit: float) -> dict[str, Any]:
    gate = anyio.Event()

    class Held(actors.Actor, name="LiveHeld"):
        async def work(self) -> str:
            await gate.wait()
            return "done"

        async def ping(self) -> str:
            return "pong"

    out: dict[str, Any] = {}
    async with actors.open_runtime(
        root, types=[Held], max_awake=1, idle_timeout=3600, shutdown_grace=1
    ) as rt:

        async def first() -> None:
            with anyio.move_on_after(4 * unit):  # gives up waiting for y's wake-up
                await rt.ref(Held, "y").ask(Held.ping)
            out["first"] = "gave up"

        async def second() -> None:
            out["second"] = await outcome(rt.ref(Held, "y").ask, Held.ping)

        async with anyio.create_task_group() as tg:
            tg.start_soon(rt.ref(Held, "x").ask, Held.work)  # holds the only slot
            await anyio.sleep(unit)
            tg.start_soon(first)  # opens y's wake-up, waits for a slot
            await anyio.sleep(unit)
            tg.start_soon(second)  # shares that wake-up
            await anyio.sleep(10 * unit)
            gate.set()
    return out


async def test_cancelled_caller_does_not_cancel_a_caller_sharing_its_wake_up(root: Path) -> None:
    """A caller sharing its wake-up with a cancelled caller gets its reply, not the cancellation."""
    with trio.fail_after(HANG_LIMIT):
        out = await shared_wake_with_a_cancelled_caller(root, unit=0.05)
    assert out == {"first": "gave up", "second": "pong"}


def test_cancelled_caller_does_not_cancel_a_caller_sharing_its_wake_up_asyncio(
    root: Path,
) -> None:
    """Under asyncio too, a caller sharing a wake-up with a cancelled caller gets its reply."""
    out = asyncio.run(asyncio.wait_for(shared_wake_with_a_cancelled_caller(root, unit=0.01), 30))
    assert out == {"first": "gave up", "second": "pong"}


# -- 7. a slow on_hibernate does not hold up the supervisor ------------------------------------


async def test_slow_on_hibernate_does_not_delay_another_actors_timer(root: Path) -> None:
    """A slow on_hibernate of one actor does not delay another actor's timer past its due time."""
    fired: list[float] = []

    class Flusher(actors.Actor, name="LiveFlusher"):
        async def hello(self) -> None:
            pass

        async def on_hibernate(self) -> None:
            await trio.sleep(600)  # flush a cache to a slow API, say

    class Bell(actors.Actor, name="LiveBell"):
        async def arm(self) -> None:
            self.schedule("t", Bell.ring, after=20)

        async def ring(self) -> None:
            fired.append(clock() - START)

    with trio.fail_after(HANG_LIMIT):
        async with actors.open_runtime(
            root, types=[Flusher, Bell], idle_timeout=10, clock=clock
        ) as rt:
            await rt.ref(Flusher, "s").send(Flusher.hello)  # hibernates, slowly, from t=10
            await rt.ref(Bell, "a").send(Bell.arm)  # due at t=20
            await trio.sleep(1000)
    assert len(fired) == 1
    assert 20 <= fired[0] < 21


# -- 8. a failed timer wake is retried ---------------------------------------------------------


async def test_timer_whose_wake_failed_fires_once_the_file_opens(root: Path) -> None:
    """A timer whose wake-up failed fires once its file opens again, without any new message."""
    # The file is briefly unopenable.
    fired: list[float] = []

    class Pager(actors.Actor, name="LivePager"):
        async def arm(self) -> None:
            self.schedule("t", Pager.ring, after=20)

        async def ring(self) -> None:
            fired.append(clock() - START)

    with trio.fail_after(HANG_LIMIT):
        async with actors.open_runtime(root, types=[Pager], idle_timeout=5, clock=clock) as rt:
            await rt.ref(Pager, "p").send(Pager.arm)
            await trio.sleep(10)  # hibernated, the timer due at t=20
            data = actor_dir(root, actor_id("LivePager", "p")) / DATA_FILE
            good = data.read_bytes()
            data.write_bytes(b"garbage" * 1000)  # unopenable when the timer comes due
            await trio.sleep(15)
            assert fired == []
            data.write_bytes(good)  # fine again at t=25
            await trio.sleep(3600)
    assert len(fired) == 1
    assert 25 <= fired[0] < 60


# -- 9. re-spawning a stopped child ------------------------------------------------------------


async def test_respawning_a_stopped_child_does_not_block_later_sends(root: Path) -> None:
    """Re-spawning a stopped child does not block the parent's later sends to other actors."""

    class Child(actors.Actor, name="LiveChild"):
        retry = actors.Retry(max_attempts=1)
        restart_intensity = actors.RestartIntensity(max_failures=1, period=60)

        async def boom(self) -> None:
            raise ValueError("boom")

    class Guardian(actors.Actor, name="LiveGuardian"):
        async def make(self) -> None:
            self.spawn(Child, key="c")

        async def remake_and_tell(self) -> None:
            self.spawn(Child, key="c")  # "ensure my worker exists"
            self.send(self.ref_to(Node, "o"), Node.hit)

    with trio.fail_after(HANG_LIMIT):
        async with actors.open_runtime(root, types=[Guardian, Child, Node]) as rt:
            parent = rt.ref(Guardian, "p")
            await parent.ask(Guardian.make)
            await trio.sleep(1)
            for _ in range(2):
                with pytest.raises((actors.MessageFailedError, actors.ActorStoppedError)):
                    await rt.ref(Child, "c").ask(Child.boom)
            await trio.sleep(1)
            assert rt.statistics().stopped == 1
            await parent.ask(Guardian.remake_and_tell)
            await trio.sleep(600)
            assert await rt.ref(Node, "o").ask(Node.hits) == 1
            assert rt.statistics().stopped == 1  # the child stays stopped


# -- 10. and 11. on_hibernate ------------------------------------------------------------------


async def test_message_sent_from_on_hibernate_is_delivered(root: Path) -> None:
    """A message sent from on_hibernate is delivered while the runtime runs (no restart)."""

    class Leaver(actors.Actor, name="LiveLeaver"):
        async def hello(self) -> None:
            pass

        async def on_hibernate(self) -> None:
            self.send(self.ref_to(Node, "b"), Node.hit)

    with trio.fail_after(HANG_LIMIT):
        async with actors.open_runtime(root, types=[Leaver, Node], idle_timeout=10) as rt:
            await rt.ref(Leaver, "a").send(Leaver.hello)
            await trio.sleep(3600)
            assert await rt.ref(Node, "b").ask(Node.hits) == 1


async def test_closing_the_runtime_runs_on_hibernate(root: Path) -> None:
    """Closing the runtime runs on_hibernate of the actors still awake."""
    calls: list[str] = []

    class Tidy(actors.Actor, name="LiveTidy"):
        async def hello(self) -> None:
            pass

        async def on_hibernate(self) -> None:
            calls.append(self.key)

    with trio.fail_after(HANG_LIMIT):
        async with actors.open_runtime(root, types=[Tidy], idle_timeout=3600) as rt:
            await rt.ref(Tidy, "a").ask(Tidy.hello)
            await rt.ref(Tidy, "b").ask(Tidy.hello)
            assert calls == []
    assert sorted(calls) == ["a", "b"]


async def test_message_to_itself_from_on_hibernate_is_applied(root: Path) -> None:
    """An actor that sends to itself from on_hibernate wakes again and applies the message."""

    class Echo(actors.Actor, name="EchoSelf"):
        async def on_hibernate(self) -> None:
            if not self.kv.get("sent"):
                self.kv["sent"] = True
                self.send(self.ref, Echo.note)

        async def note(self) -> None:
            self.kv["n"] = self.kv.get("n", 0) + 1

        async def hi(self) -> None:
            pass

        @actors.query
        async def n(self) -> int:
            return int(self.kv.get("n", 0))

    with trio.fail_after(HANG_LIMIT):
        async with actors.open_runtime(root, types=[Echo], idle_timeout=10) as rt:
            ref = rt.ref(Echo, "e")
            await ref.ask(Echo.hi)
            await trio.sleep(100)  # hibernates, sends to itself, wakes, applies, hibernates
            assert await ref.ask(Echo.n) == 1
            assert rt.statistics().hibernations >= 2
