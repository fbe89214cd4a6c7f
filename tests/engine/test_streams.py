"""Streams and watches (DESIGN §11): published items commit with their turn, step chunks are
tagged with their attempt and reset when it fails, subscribers resume by offset and follow live,
retention by count and age, watches of a @query. Time is virtual."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import anyio
import pytest

import actors
from runtime import streams
from tests.engine.test_steps import runtime

pytestmark = pytest.mark.both_backends


class Talker(actors.Actor, name="tests.streams.Talker"):
    """Publishes in turns, emits in steps, and counts in its kv."""

    async def say(self, *items: Any) -> int:
        for item in items:
            self.publish("chat", item)
        self.kv["said"] = self.kv.get("said", 0) + len(items)
        return len(items)

    async def say_then_fail(self, item: Any) -> None:
        self.publish("chat", item)
        raise actors.TerminalError("no")

    async def generate(self, words: list[str], fail_first: bool = False) -> str:
        attempts: list[int] = []

        async def tokens() -> str:
            step = actors.current_step()
            attempts.append(step.attempt)
            for word in words:
                step.emit("tokens", word)
                await anyio.sleep(0.001)
            if fail_first and step.attempt == 1:
                raise RuntimeError("provider hiccup")
            return " ".join(words)

        return await self.step("tokens", actors.Retry(max_attempts=3, initial_delay=0), tokens)

    async def generate_sync(self, words: list[str]) -> str:
        def tokens() -> str:
            step = actors.current_step()
            for word in words:
                step.emit("tokens", word)
            return " ".join(words)

        return await self.step("tokens", tokens)

    @actors.query
    async def said(self) -> int:
        return int(self.kv.get("said", 0))


class Retained(Talker, name="tests.streams.Retained"):
    """A talker whose topics keep 3 entries for at most an hour."""

    stream_max_entries = 3
    stream_max_age = 3600.0


def mailboxes(root: Path) -> list[Path]:
    return list(root.rglob("mailbox.db"))


async def collect(ref: actors.Ref[Any], topic: str, count: int, after: int = 0) -> list[Any]:
    got: list[actors.StreamEntry] = []
    async with ref.open_stream(topic, after=after) as entries:
        async for entry in entries:
            got.append(entry)
            if len(got) == count:
                break
    return got


async def test_published_items_commit_with_the_turn_and_resume_by_offset(root: Path) -> None:
    """Published items of committed turns read in order; resuming after an offset misses none."""
    async with runtime(root, Talker) as rt:
        ref = rt.ref(Talker, "t")
        await ref.ask(Talker.say, "a", "b")
        with pytest.raises(actors.MessageFailedError):
            await ref.ask(Talker.say_then_fail, "rolled back")
        await ref.ask(Talker.say, "c")
        first = await collect(ref, "chat", 3)
        assert [e.item for e in first] == ["a", "b", "c"]
        assert {e.kind for e in first} == {"item"}
        assert [e.offset for e in first] == sorted({e.offset for e in first})
        await ref.ask(Talker.say, "d", "e")
        rest = await collect(ref, "chat", 3, after=first[1].offset)
        assert [e.item for e in rest] == ["c", "d", "e"]
        assert rest[0].offset == first[2].offset  # the same offset for the same entry


async def test_a_subscriber_follows_live_entries(root: Path) -> None:
    """An open stream yields entries committed after it opened, as they commit."""
    async with runtime(root, Talker) as rt:
        ref = rt.ref(Talker, "t")
        await ref.ask(Talker.say, "old")
        got: list[Any] = []
        async with ref.open_stream("chat") as entries, anyio.create_task_group() as tg:

            async def talk() -> None:
                for word in ("x", "y", "z"):
                    await ref.ask(Talker.say, word)
                    await anyio.sleep(1)

            tg.start_soon(talk)
            async for entry in entries:
                got.append(entry.item)
                if len(got) == 4:
                    break
        assert got == ["old", "x", "y", "z"]


async def test_many_subscribers_share_one_feed_and_each_sees_everything(root: Path) -> None:
    """Several subscribers of one actor each get every entry once, in order."""
    async with runtime(root, Talker) as rt:
        ref = rt.ref(Talker, "t")
        await ref.ask(Talker.say, 0)
        results: list[list[Any]] = []

        async def subscriber() -> None:
            results.append([e.item for e in await collect(ref, "chat", 50)])

        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(subscriber)
            await anyio.sleep(0.1)
            assert len(rt._engine.feeds.feeds) == 1
            for i in range(1, 50, 7):
                await ref.ask(Talker.say, *range(i, min(i + 7, 50)))
        assert results == [list(range(50))] * 10
        assert rt._engine.feeds.feeds == {}


async def test_a_slow_subscriber_catches_up_from_the_file(root: Path) -> None:
    """A subscriber far behind the in-memory ring reads the file by offset and misses nothing."""
    async with runtime(root, Talker) as rt:
        ref = rt.ref(Talker, "t")
        total = streams.RING_ENTRIES * 2 + 10
        await ref.ask(Talker.say)
        async with ref.open_stream("chat") as entries:
            for i in range(0, total, 100):
                await ref.ask(Talker.say, *range(i, min(i + 100, total)))
            got = []
            async for entry in entries:
                got.append(entry.item)
                if len(got) == total:
                    break
        assert got == list(range(total))


async def test_step_chunks_are_tagged_and_a_failed_attempt_is_reset(root: Path) -> None:
    """Chunks carry step and attempt; a failed attempt's chunks are followed by a reset."""
    async with runtime(root, Talker) as rt:
        ref = rt.ref(Talker, "t")
        assert await ref.ask(Talker.generate, ["hello", "world"], True) == "hello world"
        got = await collect(ref, "tokens", 5)
        assert [(e.kind, e.item, e.attempt) for e in got] == [
            ("chunk", "hello", 1),
            ("chunk", "world", 1),
            ("reset", None, 1),
            ("chunk", "hello", 2),
            ("chunk", "world", 2),
        ]
        assert {e.step for e in got} == {"tokens"}
        assert len({e.step_key for e in got}) == 1


async def test_sync_step_emits_from_its_worker_thread(root: Path) -> None:
    """A sync step's function emits from its worker thread; the chunks arrive in order."""
    async with runtime(root, Talker) as rt:
        ref = rt.ref(Talker, "t")
        words = [f"w{i}" for i in range(20)]
        assert await ref.ask(Talker.generate_sync, words) == " ".join(words)
        got = await collect(ref, "tokens", 20)
        assert [e.item for e in got] == words
        assert all(e.kind == "chunk" and e.attempt == 1 for e in got)


async def test_an_ended_attempt_cannot_emit(root: Path) -> None:
    """Emitting through the StepInfo of an attempt that has ended raises StepAttemptEndedError."""
    kept: list[actors.StepInfo] = []

    class Keeper(actors.Actor, name="tests.streams.Keeper"):
        async def go(self) -> None:
            async def fn() -> None:
                kept.append(actors.current_step())
                actors.current_step().emit("t", 1)

            await self.step("fn", fn)

    async with runtime(root, Keeper) as rt:
        await rt.ref(Keeper, "k").ask(Keeper.go)
        with pytest.raises(actors.StepAttemptEndedError, match="has ended"):
            kept[0].emit("t", 2)
        with pytest.raises(TypeError, match="non-empty str"):
            kept[0].emit("", 2)


async def test_a_completed_steps_replay_emits_nothing(root: Path) -> None:
    """A turn replayed after a durable wait does not emit its completed step's chunks again."""

    class Waiter(actors.Actor, name="tests.streams.Waiter"):
        async def go(self) -> str:
            async def fn() -> str:
                actors.current_step().emit("t", "once")
                return "done"

            result: str = await self.step("fn", fn)
            await self.sleep(3600)  # long: the actor hibernates, the turn replays
            return result

    async with runtime(root, Waiter, idle_timeout=60) as rt:
        ref = rt.ref(Waiter, "w")
        assert await ref.ask(Waiter.go) == "done"
        assert rt.statistics().hibernations >= 1
        got = await collect(ref, "t", 1)
        assert [e.item for e in got] == ["once"]
        with anyio.move_on_after(10):
            await collect(ref, "t", 2, after=got[0].offset)
            raise AssertionError("a second chunk")


async def test_a_hibernated_actors_stream_is_read_without_waking_it(root: Path) -> None:
    """A hibernated actor's stream is read without waking it, then followed live once it wakes."""
    async with runtime(root, Talker, idle_timeout=10) as rt:
        ref = rt.ref(Talker, "t")
        await ref.ask(Talker.say, "a", "b")
        await anyio.sleep(20)
        assert rt.statistics().awake == 0
        wakes = rt.statistics().wakes
        async with ref.open_stream("chat") as entries:
            got = []
            async for entry in entries:
                got.append(entry.item)
                if len(got) == 2:
                    break
            assert rt.statistics().wakes == wakes
            assert rt.statistics().awake == 0
            await ref.ask(Talker.say, "c")
            async for entry in entries:
                got.append(entry.item)
                break
        assert got == ["a", "b", "c"]


async def test_retention_by_count_and_age(root: Path) -> None:
    """Each topic keeps its newest stream_max_entries entries and none older than stream_max_age."""
    async with runtime(root, Retained, idle_timeout=10) as rt:
        ref = rt.ref(Retained, "r")
        for i in range(streams.PRUNE_EVERY):  # pruning runs every PRUNE_EVERY entries written
            await ref.ask(Retained.say, i)
        got = await collect(ref, "chat", 3)
        assert [e.item for e in got] == [streams.PRUNE_EVERY - 3 + i for i in range(3)]
        await anyio.sleep(7200)  # older than an hour; hibernated meanwhile
        await ref.ask(Retained.say, "new")  # the wake-up prunes
        got2 = await collect(ref, "chat", 1)
        assert [e.item for e in got2] == ["new"]
        assert got2[0].offset > got[-1].offset


async def test_defaults_are_documented_constants() -> None:
    """The retention defaults an actor type inherits are the named constants."""
    assert actors.Actor.stream_max_entries == streams.DEFAULT_MAX_ENTRIES == 10_000
    assert actors.Actor.stream_max_age == streams.DEFAULT_MAX_AGE == 7 * 24 * 3600.0


async def test_bad_stream_arguments_are_typed_errors(root: Path) -> None:
    """A bad topic, offset, watched method or item is refused with a clear typed error."""
    async with runtime(root, Talker) as rt:
        ref = rt.ref(Talker, "t")
        await ref.ask(Talker.say, "a")
        with pytest.raises(TypeError, match="non-empty str"):
            async with ref.open_stream(""):
                pass
        with pytest.raises(ValueError, match="offset"):
            async with ref.open_stream("chat", after=-1):
                pass
        with pytest.raises(TypeError, match="@query"):
            async with ref.open_watch(Talker.say, "x"):
                pass
        with pytest.raises(actors.EncodingError):
            await ref.ask(Talker.say, object())


async def test_watch_yields_the_query_now_and_after_each_change(root: Path) -> None:
    """A watch yields the query's value at once, then after each commit that changed it."""
    async with runtime(root, Talker, idle_timeout=10) as rt:
        ref = rt.ref(Talker, "t")
        await ref.ask(Talker.say, "a")
        seen: list[int] = []
        async with ref.open_watch(Talker.said) as values, anyio.create_task_group() as tg:

            async def talk() -> None:
                await ref.ask(Talker.say, "b")
                await anyio.sleep(30)  # hibernates: the watch does not keep it awake
                assert rt.statistics().awake == 0
                await ref.ask(Talker.say, "c", "d")

            async for value in values:
                seen.append(value)
                if len(seen) == 1:
                    tg.start_soon(talk)
                if value == 4:
                    break
        assert seen in ([1, 2, 4],)


async def test_a_stream_opened_before_the_actor_exists_follows_it(root: Path) -> None:
    """A stream opened before its actor exists creates nothing, then follows it once created."""
    async with runtime(root, Talker) as rt:
        ref = rt.ref(Talker, "later")
        async with ref.open_stream("chat") as entries:
            assert rt.statistics().awake == 0
            assert not mailboxes(root)
            await ref.ask(Talker.say, "first")
            async for entry in entries:
                assert entry.item == "first"
                break


async def test_a_sync_step_abandoned_by_a_cancel_cannot_emit_after_its_reset(root: Path) -> None:
    """A sync step's thread left running after its turn was cancelled gets StepAttemptEndedError."""
    emitted, go_on, finished = threading.Event(), threading.Event(), threading.Event()
    errors: list[BaseException] = []

    class Slow(actors.Actor, name="tests.streams.Slow"):
        async def go(self) -> None:
            def fn() -> None:
                step = actors.current_step()
                step.emit("t", "before")
                emitted.set()
                go_on.wait()
                try:
                    step.emit("t", "after")
                except actors.StepAttemptEndedError as exc:
                    errors.append(exc)
                finished.set()

            await self.step("slow", fn)

        async def after(self) -> None:
            """Runs once the cancelled turn ended."""

    async with runtime(root, Slow) as rt:
        ref = rt.ref(Slow, "s")
        await ref.send(Slow.go)
        await anyio.to_thread.run_sync(emitted.wait)
        (turn,) = await rt.turns(ref)
        await rt.cancel_turn(ref, turn.seq)
        await ref.ask(Slow.after)
        go_on.set()
        await anyio.to_thread.run_sync(finished.wait)
        assert len(errors) == 1
        got = await collect(ref, "t", 2)
        assert [(e.kind, e.item) for e in got] == [("chunk", "before"), ("reset", None)]
