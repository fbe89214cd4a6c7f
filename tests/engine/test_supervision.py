"""Supervision (DESIGN §4 failures, §5): restart intensity stops an actor that keeps failing,
its messages wait for Runtime.resume, and a parent hears durably about a stopped child."""

from __future__ import annotations

from pathlib import Path

import apsw
import pytest
import trio

import actors
from runtime.files.layout import actor_id

broken = {"on": True}


class Flaky(actors.Actor, name="Flaky"):
    retry = actors.Retry(max_attempts=1)
    restart_intensity = actors.RestartIntensity(max_failures=3, period=60)

    async def work(self, n: int) -> int:
        if broken["on"]:
            raise ConnectionError(f"upstream down ({n})")
        self.kv["done"] = [*self.kv.get("done", []), n]
        return n

    @actors.query
    async def done(self) -> list[int]:
        return list(self.kv.get("done", []))


class Parent(actors.Actor, name="Parent"):
    async def start_child(self, key: str) -> actors.Ref[Flaky]:
        return self.spawn(Flaky, key=key)

    async def start_then_fail(self, key: str) -> None:
        self.spawn(Flaky, key=key)
        raise RuntimeError("the spawn rolls back with this turn")

    async def on_child_failed(self, child: actors.Ref[Flaky], reason: str) -> None:
        self.kv["failed"] = [*self.kv.get("failed", []), [child.key, reason]]

    @actors.query
    async def failed_children(self) -> list[list[str]]:
        return list(self.kv.get("failed", []))


@pytest.fixture(autouse=True)
def _reset() -> None:
    broken["on"] = True


async def fail_n(ref: actors.Ref[Flaky], n: int) -> None:
    for i in range(n):
        with pytest.raises((actors.MessageFailedError, actors.ActorStoppedError)):
            await ref.ask(Flaky.work, i)


async def test_restart_intensity_stops_the_actor_and_keeps_messages(root: Path) -> None:
    """More failed turns than the intensity allows stop the actor; sends are kept for resume."""
    async with actors.open_runtime(root, types=[Flaky]) as rt:
        ref = rt.ref(Flaky, "f")
        await fail_n(ref, 4)
        stats = rt.statistics()
        assert stats.stopped == 1
        with pytest.raises(actors.ActorStoppedError, match="resume"):
            await ref.ask(Flaky.work, 10)
        with pytest.raises(actors.ActorStoppedError):
            await ref.ask(Flaky.done)
        await ref.send(Flaky.work, 11)  # stored, not run
        assert rt.statistics().awake == 0
        broken["on"] = False
        await rt.resume(ref)
        await ref.ask(Flaky.work, 12)
        # Message 3 (the one that tipped it over) stayed queued, then 11 and 12.
        assert await ref.ask(Flaky.done) == [3, 11, 12]
        assert rt.statistics().stopped == 0
        with pytest.raises(LookupError):
            await rt.resume(ref)


async def test_stopped_survives_a_restart(root: Path) -> None:
    """A stopped actor stays stopped across reopening; recovery does not wake it."""
    async with actors.open_runtime(root, types=[Flaky]) as rt:
        await fail_n(rt.ref(Flaky, "f"), 4)
    broken["on"] = False
    async with actors.open_runtime(root, types=[Flaky]) as rt:
        await trio.sleep(1)
        stats = rt.statistics()
        assert (stats.stopped, stats.awake) == (1, 0)
        await rt.resume(rt.ref(Flaky, "f"))
        await rt.ref(Flaky, "f").ask(Flaky.work, 99)  # runs after the kept message 3
        assert await rt.ref(Flaky, "f").ask(Flaky.done) == [3, 99]


async def test_failures_spread_out_do_not_stop(root: Path) -> None:
    """Failures further apart than the period never add up to a stop."""
    async with actors.open_runtime(root, types=[Flaky]) as rt:
        ref = rt.ref(Flaky, "f")
        for _ in range(10):
            await fail_n(ref, 2)
            await trio.sleep(61)
        assert rt.statistics().stopped == 0
        assert len(await rt.dead_letters(ref)) == 20


async def test_lifecycle_reports_the_stop(root: Path) -> None:
    """The stop is a lifecycle event: awake -> stopped on gave_up, with the reason."""
    async with actors.open_runtime(root, types=[Flaky]) as rt:  # noqa: SIM117
        async with rt.open_lifecycle_events() as events:
            await fail_n(rt.ref(Flaky, "f"), 4)
            seen = []
            with trio.move_on_after(1):
                async for event in events:
                    seen.append(event)
    stops = [e for e in seen if e.event == "gave_up"]
    assert [(e.previous, e.state) for e in stops] == [("awake", "stopped")]
    assert "upstream down" in (stops[0].detail or "")


async def test_parent_hears_about_a_stopped_child(root: Path) -> None:
    """A child made with self.spawn that gets stopped triggers the parent's on_child_failed."""
    async with actors.open_runtime(root, types=[Flaky, Parent]) as rt:
        parent = rt.ref(Parent, "p")
        child = await parent.ask(Parent.start_child, "kid")
        assert child == rt.ref(Flaky, "kid")
        await fail_n(child, 4)
        for _ in range(100):
            if await parent.ask(Parent.failed_children):
                break
            await trio.sleep(0.1)
        failed = await parent.ask(Parent.failed_children)
        assert [key for key, _ in failed] == ["kid"]
        assert "ConnectionError" in failed[0][1]


async def test_owed_notice_is_delivered_once_after_a_restart(root: Path) -> None:
    """A parent notice owed at a crash arrives at the next open, and never twice."""
    async with actors.open_runtime(root, types=[Flaky, Parent]) as rt:
        parent = rt.ref(Parent, "p")
        child = await parent.ask(Parent.start_child, "kid")
        await fail_n(child, 4)
        for _ in range(100):
            if await parent.ask(Parent.failed_children):
                break
            await trio.sleep(0.1)
    # Pretend the process died after delivering the notice but before marking it delivered:
    # the notice is owed again under the number it was delivered with.
    from runtime.files.layout import actor_dir

    child_id = actor_id("Flaky", "kid")
    parent_box = apsw.Connection(str(actor_dir(root, actor_id("Parent", "p")) / "mailbox.db"))
    (delivered,) = parent_box.execute(
        "SELECT last_seq FROM senders WHERE sender = ?", (f"child:{child_id}",)
    ).fetchall()[0]
    assert isinstance(delivered, int)
    parent_box.close()
    directory = apsw.Connection(str(root / "directory.db"))
    directory.execute("UPDATE actors SET notice = ? WHERE id = ?", (delivered, child_id))
    directory.close()
    async with actors.open_runtime(root, types=[Flaky, Parent]) as rt:
        await trio.sleep(1)
        assert len(await rt.ref(Parent, "p").ask(Parent.failed_children)) == 1
    # A notice never delivered (a crash right after the stop) arrives at the next open.
    directory = apsw.Connection(str(root / "directory.db"))
    directory.execute("UPDATE actors SET notice = ? WHERE id = ?", (delivered + 1, child_id))
    directory.close()
    async with actors.open_runtime(root, types=[Flaky, Parent]) as rt:
        await trio.sleep(1)
        assert len(await rt.ref(Parent, "p").ask(Parent.failed_children)) == 2
        assert rt._engine.directory.owed_notices() == []


async def test_spawn_rolls_back_with_the_turn(root: Path) -> None:
    """A child spawned in a turn that raises is never created."""
    async with actors.open_runtime(root, types=[Flaky, Parent]) as rt:
        with pytest.raises(actors.MessageFailedError):
            await rt.ref(Parent, "p").ask(Parent.start_then_fail, "ghost")
        await trio.sleep(1)
        assert rt._engine.directory.get(actor_id("Flaky", "ghost")) is None


def test_bad_restart_intensity_is_refused_at_definition() -> None:
    """restart_intensity must be an actors.RestartIntensity with sane numbers."""
    with pytest.raises(TypeError, match="RestartIntensity"):

        class Bad(actors.Actor):
            restart_intensity = 5  # type: ignore[assignment]

    with pytest.raises(ValueError, match="max_failures"):
        actors.RestartIntensity(max_failures=0)


async def test_a_failed_actor_is_counted_failed_and_not_hibernated(root: Path) -> None:
    """An actor whose on_create keeps failing is counted failed, not awake nor hibernated."""

    class Broken(actors.Actor, name="Broken"):
        retry = actors.Retry(max_attempts=1)

        async def on_create(self) -> None:
            raise RuntimeError("cannot start")

        async def hi(self) -> None:
            pass

    async with actors.open_runtime(root, types=[Broken]) as rt:
        with pytest.raises(actors.ActorFailedError):
            await rt.ref(Broken, "b").ask(Broken.hi)
        stats = rt.statistics()
        assert (stats.awake, stats.hibernated, stats.failed) == (0, 0, 1)
