"""Hibernation (DESIGN §5): idle actors close their files and drop their objects; messages wake
them. Time is virtual, so idle timeouts of minutes pass at once."""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

import anyio
import apsw
import pytest

import actors
from runtime.engine import FDS_PER_AWAKE_ACTOR, default_max_awake
from runtime.files.layout import actor_id
from tests.support.agents import Counter

pytestmark = pytest.mark.both_backends


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class Sleepy(actors.Actor, name="Sleepy"):
    """Counts its wake-ups and hibernations in its own kv."""

    async def on_wake(self) -> None:
        self.kv["wakes"] = self.kv.get("wakes", 0) + 1

    async def on_hibernate(self) -> None:
        self.kv["naps"] = self.kv.get("naps", 0) + 1

    async def poke(self) -> tuple[int, int]:
        return self.kv.get("wakes", 0), self.kv.get("naps", 0)


async def test_idle_actor_hibernates_after_idle_timeout(root: Path) -> None:
    """After idle_timeout without work the actor's files close; a message wakes it again."""
    baseline = open_fds()
    async with actors.open_runtime(root, types=[Sleepy], idle_timeout=60) as rt:
        ref = rt.ref(Sleepy, "s")
        assert await ref.ask(Sleepy.poke) == (1, 0)
        assert rt.statistics().awake == 1
        await anyio.sleep(59)
        assert rt.statistics().awake == 1
        await anyio.sleep(2)
        stats = rt.statistics()
        assert (stats.awake, stats.hibernated, stats.hibernations) == (0, 1, 1)
        assert open_fds() == baseline + 4  # LOCK and directory.db (3): nothing of the actor
        assert await ref.ask(Sleepy.poke) == (2, 1)  # on_hibernate ran, then on_wake again
        assert rt.statistics().wakes == 2


async def test_activity_postpones_hibernation(root: Path) -> None:
    """Each message restarts the idle clock."""
    async with actors.open_runtime(root, types=[Sleepy], idle_timeout=10) as rt:
        ref = rt.ref(Sleepy, "s")
        for _ in range(5):
            await ref.ask(Sleepy.poke)
            await anyio.sleep(8)
        assert rt.statistics().hibernations == 0
        await anyio.sleep(3)
        assert rt.statistics().hibernations == 1


async def test_max_awake_evicts_least_recently_used(root: Path) -> None:
    """With max_awake=2, waking a third actor hibernates the least recently used idle one."""
    async with actors.open_runtime(root, types=[Sleepy], idle_timeout=3600, max_awake=2) as rt:
        a, b, c = (rt.ref(Sleepy, k) for k in "abc")
        await a.ask(Sleepy.poke)
        await b.ask(Sleepy.poke)
        await a.ask(Sleepy.poke)  # a is now more recently used than b
        await c.ask(Sleepy.poke)
        awake = {act.key for act in rt._engine.awake.values()}
        assert awake == {"a", "c"}
        assert rt.statistics().awake == 2
        assert await b.ask(Sleepy.poke) == (2, 1)  # b slept and was woken again
        assert {act.key for act in rt._engine.awake.values()} == {"b", "c"}


async def test_concurrent_messages_wake_once(root: Path) -> None:
    """Many messages sent at once to a hibernated actor wake it exactly once."""
    async with actors.open_runtime(root, types=[Sleepy], idle_timeout=1) as rt:
        ref = rt.ref(Sleepy, "s")
        await ref.ask(Sleepy.poke)
        await anyio.sleep(5)
        assert rt.statistics().awake == 0
        wakes_before = rt.statistics().wakes
        results = []

        async def ask() -> None:
            results.append(await ref.ask(Sleepy.poke))

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(ask)
        assert rt.statistics().wakes == wakes_before + 1
        assert set(results) == {(2, 1)}


async def test_a_busy_actor_is_never_hibernated(root: Path) -> None:
    """An actor in the middle of a turn stays awake past idle_timeout."""
    gate = anyio.Event()

    class Busy(actors.Actor, name="Busy"):
        async def work(self) -> str:
            await gate.wait()
            return "done"

    async with actors.open_runtime(root, types=[Busy], idle_timeout=1) as rt:
        async with anyio.create_task_group() as tg:
            ref = rt.ref(Busy, "b")
            tg.start_soon(ref.ask, Busy.work)
            await anyio.sleep(100)
            assert rt.statistics().awake == 1
            gate.set()
        await anyio.sleep(2)
        assert rt.statistics().awake == 0


async def test_lifecycle_events_are_observable(root: Path) -> None:
    """open_lifecycle_events yields each transition: wake, opened, idle, closed."""
    async with actors.open_runtime(root, types=[Sleepy], idle_timeout=5) as rt:  # noqa: SIM117
        async with rt.open_lifecycle_events() as events:
            await rt.ref(Sleepy, "s").ask(Sleepy.poke)
            await anyio.sleep(10)
            seen: list[tuple[str, str, str]] = []
            while len(seen) < 4:
                with anyio.fail_after(1):
                    event = await events.receive()
                seen.append((event.previous, event.event, event.state))
    assert seen == [
        ("hibernated", "wake", "waking"),
        ("waking", "opened", "awake"),
        ("awake", "idle", "hibernating"),
        ("hibernating", "closed", "hibernated"),
    ]


async def test_messages_to_a_hibernating_actor_are_kept_and_wake_it(root: Path) -> None:
    """A message arriving while on_hibernate runs waits, then wakes the actor again."""
    napping = anyio.Event()
    resume = anyio.Event()

    class Slowpoke(actors.Actor, name="Slowpoke"):
        async def on_hibernate(self) -> None:
            napping.set()
            await resume.wait()

        async def hi(self) -> int:
            self.kv["n"] = self.kv.get("n", 0) + 1
            return int(self.kv["n"])

    async with actors.open_runtime(root, types=[Slowpoke], idle_timeout=1) as rt:
        ref = rt.ref(Slowpoke, "s")
        assert await ref.ask(Slowpoke.hi) == 1
        async with anyio.create_task_group() as tg:
            await napping.wait()
            result: list[int] = []

            async def ask() -> None:
                result.append(await ref.ask(Slowpoke.hi))

            tg.start_soon(ask)
            await anyio.sleep(0.1)
            resume.set()
        assert result == [2]


async def test_hibernated_actors_cost_nothing(root: Path) -> None:
    """100,000 hibernated actors add no descriptors, no tasks and no per-actor memory at open."""
    async with actors.open_runtime(root, types=[Counter], idle_timeout=0, max_awake=8) as rt:
        for i in range(200):  # real actors, with files, hibernated
            await rt.ref(Counter, f"real-{i}").ask(Counter.incr, i)
    # 99,800 more directory rows: at rest, an actor is a row and files the runtime never reads.
    directory = apsw.Connection(str(root / "directory.db"))
    with directory:
        directory.executemany(
            "INSERT INTO actors(id, type, key, pending, created_at) VALUES (?, 'Counter', ?, 0, 0)",
            ((actor_id("Counter", f"idle-{i}"), f"idle-{i}") for i in range(99_800)),
        )
    directory.close()

    async def measure() -> tuple[int, int, int]:
        async with actors.open_runtime(root, types=[Counter]) as rt:
            await anyio.sleep(1)
            stats = rt.statistics()
            assert (stats.awake, stats.hibernated) == (0, 100_000)
            tasks = len(anyio.get_running_tasks())
            return open_fds(), tasks, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    fds, tasks, _ = await measure()
    empty = root.parent / "empty"
    async with actors.open_runtime(empty, types=[Counter]) as rt:
        await anyio.sleep(1)
        assert open_fds() == fds
        assert len(anyio.get_running_tasks()) == tasks
    async with actors.open_runtime(root, types=[Counter]) as rt:
        assert await rt.ref(Counter, "real-7").ask(Counter.value) == 7  # they are real


def test_default_max_awake_fits_the_descriptor_limit() -> None:
    """The default max_awake keeps awake actors' descriptors under 90% of RLIMIT_NOFILE."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    budget = default_max_awake() * FDS_PER_AWAKE_ACTOR
    assert budget <= soft * 0.9
    assert default_max_awake() >= 1


@pytest.mark.parametrize("bad", [0, -1, 1.5])
async def test_bad_max_awake_is_refused(root: Path, bad: object) -> None:
    """max_awake must be a positive int."""
    with pytest.raises(ValueError, match="max_awake"):
        async with actors.open_runtime(root, types=[Counter], max_awake=bad):  # type: ignore[arg-type]
            pass


async def test_wall_clock_not_used_for_idle_time(root: Path) -> None:
    """Idle time is measured on the event loop's clock (virtual in tests), not time.time()."""
    start = time.time()
    async with actors.open_runtime(root, types=[Sleepy], idle_timeout=86_400) as rt:
        await rt.ref(Sleepy, "s").ask(Sleepy.poke)
        await anyio.sleep(86_401)
        assert rt.statistics().awake == 0
    assert time.time() - start < 60


async def test_a_hibernated_actor_is_freed_at_once_not_by_the_cycle_collector(root: Path) -> None:
    """A closed activation holds no reference cycle, so its memory returns when it hibernates."""
    import gc

    from runtime.activation import Activation

    async with actors.open_runtime(root, types=[Counter], idle_timeout=0) as rt:
        gc.collect()
        gc.disable()  # only reference counting frees objects from here on
        try:
            for i in range(50):
                await rt.ref(Counter, f"c{i}").ask(Counter.incr, 1)
            for _ in range(100):  # bounded: idle_timeout=0 hibernates them at the next tick
                if rt.statistics().awake == 0:
                    break
                await anyio.sleep(1)
            assert rt.statistics().awake == 0
            assert sum(isinstance(o, Activation) for o in gc.get_objects()) == 0
        finally:
            gc.enable()
