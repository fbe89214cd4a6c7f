"""Bad input (DESIGN §7.7): a clear, typed error in the sender, and nothing stored."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import apsw
import pytest

import actors
from runtime.files.layout import actor_dir, actor_id
from tests.support.agents import Counter, Point


def stored_messages(root: Path) -> int:
    """Every inbox row of every actor under ``root``."""
    total = 0
    for path in root.rglob("mailbox.db"):
        conn = apsw.Connection(str(path))
        try:
            ((count,),) = conn.execute("SELECT count(*) FROM inbox").fetchall()
            assert isinstance(count, int)
            total += count
        finally:
            conn.close()
    return total


def directory_rows(root: Path) -> int:
    conn = apsw.Connection(str(root / "directory.db"))
    try:
        ((count,),) = conn.execute("SELECT count(*) FROM actors").fetchall()
        assert isinstance(count, int)
        return count
    finally:
        conn.close()


@asynccontextmanager
async def runtime_with_one_actor(root: Path, **options: object) -> AsyncIterator[actors.Runtime]:
    """A runtime whose only actor, Counter 'c', exists and has an empty inbox."""
    async with actors.open_runtime(root, types=[Counter], **options) as rt:  # type: ignore[arg-type]
        await rt.ref(Counter, "c").ask(Counter.incr, 1)
        yield rt


def assert_nothing_stored(root: Path) -> None:
    assert stored_messages(root) == 0
    assert directory_rows(root) == 1


async def test_unencodable_argument(root: Path) -> None:
    """An argument outside the allow-list raises EncodingError naming its type."""
    async with runtime_with_one_actor(root) as rt:
        ref = rt.ref(Counter, "c")
        with pytest.raises(actors.EncodingError, match="object"):
            await ref.send(Counter.echo, object())
        with pytest.raises(actors.EncodingError, match="not registered as a message type"):
            await ref.send(Counter.echo, Point(1, 2))
        with pytest.raises(actors.EncodingError):
            await ref.ask(Counter.echo, {"nested": [1, {2, 3}, lambda: 0]})
        with pytest.raises(actors.EncodingError):
            await rt.ref(Counter, "new").send(Counter.echo, object())
    assert_nothing_stored(root)


async def test_unknown_handler(root: Path) -> None:
    """A method that is not a handler of the type raises UnknownHandlerError."""

    class Other(actors.Actor, name="Other"):
        async def elsewhere(self) -> None:
            pass

        def helper(self) -> None:
            pass

    async with runtime_with_one_actor(root) as rt:
        ref = rt.ref(Counter, "c")
        for method in (Other.elsewhere, "nope", "on_create", "_private", Other.helper):
            with pytest.raises(actors.UnknownHandlerError, match="not a handler of actor type"):
                await ref.send(method)  # type: ignore[arg-type]  # no handler of Counter
        with pytest.raises(actors.UnknownHandlerError):
            await ref.ask("nope")
    assert_nothing_stored(root)


async def test_wrong_arguments(root: Path) -> None:
    """Arguments that do not fit the handler's signature raise InvalidArgumentsError."""
    async with runtime_with_one_actor(root) as rt:
        ref = rt.ref(Counter, "c")
        with pytest.raises(actors.InvalidArgumentsError, match=r"Counter.incr\(by: int = 1\)"):
            await ref.send(Counter.incr, 1, 2)  # type: ignore[call-overload]  # on purpose
        with pytest.raises(actors.InvalidArgumentsError, match="unexpected keyword"):
            await ref.ask(Counter.incr, step=2)  # type: ignore[call-overload]  # on purpose
        with pytest.raises(actors.InvalidArgumentsError):
            await rt.spawn(Counter, 1, 2, 3)
    assert_nothing_stored(root)


async def test_oversized_message(root: Path) -> None:
    """A message over max_message_bytes raises MessageTooLargeError with both sizes."""
    async with runtime_with_one_actor(root, max_message_bytes=1000) as rt:
        ref = rt.ref(Counter, "c")
        await ref.send(Counter.echo, b"x" * 900)
        await ref.ask(Counter.echo, None)  # applies the one that fits
        with pytest.raises(actors.MessageTooLargeError, match="over max_message_bytes=1000"):
            await ref.send(Counter.echo, b"x" * 1000)
        with pytest.raises(actors.MessageTooLargeError, match="on_create arguments"):
            await rt.spawn(Counter, 2**8000, key="big")  # (an int: on_create takes one)
    assert_nothing_stored(root)


async def test_invalid_key(root: Path) -> None:
    """Empty, too long, NUL-containing and non-str keys raise InvalidKeyError."""
    async with runtime_with_one_actor(root) as rt:
        for key in ("", "a\0b", "k" * 1025, "é" * 513, 42, None, b"bytes"):
            with pytest.raises(actors.InvalidKeyError):
                rt.ref(Counter, key)  # type: ignore[arg-type]
            if key is not None:  # spawn(key=None) generates a key
                with pytest.raises(actors.InvalidKeyError):
                    await rt.spawn(Counter, key=key)  # type: ignore[arg-type]
        assert rt.ref(Counter, "k" * 1024).key == "k" * 1024
        assert rt.ref(Counter, "emoji 🚀 and spaces / slashes").key
    assert_nothing_stored(root)


async def test_unregistered_type_found_in_directory(root: Path) -> None:
    """A type in directory.db but not registered raises UnknownActorTypeError; its mail is kept."""

    class Chat(actors.Actor, name="Chat"):
        async def post(self, text: str) -> None:
            self.kv["last"] = text

    async with actors.open_runtime(root, types=[Chat, Counter]) as rt:
        await rt.ref(Chat, "room").send(Chat.post, "hello")
        await rt.ref(Chat, "room").ask(Chat.post, "kept")
    async with actors.open_runtime(root, types=[Counter]) as rt:
        with pytest.raises(actors.UnknownActorTypeError, match="'Chat' is not registered"):
            rt.ref_by_name("Chat", "room")
        with pytest.raises(actors.UnknownActorTypeError, match="open_runtime"):
            rt.ref(Chat, "room")
        assert rt.statistics().awake == 0
    async with actors.open_runtime(root, types=[Chat, Counter]) as rt:
        ref = rt.ref(Chat, "room")
        await ref.ask(Chat.post, "again")


async def test_unregistered_type_keeps_pending_messages(root: Path) -> None:
    """Messages of an actor whose type is not registered wait, untouched, until it is."""

    class Inbox(actors.Actor, name="Inbox"):
        async def on_create(self) -> None:
            self.kv["n"] = 0

        async def add(self) -> None:
            self.kv["n"] += 1

        @actors.query
        async def n(self) -> int:
            return int(self.kv["n"])

    # Write a pending message without running it: store it, then close before any turn.
    async with actors.open_runtime(root, types=[Inbox]) as rt:
        ref = rt.ref(Inbox, "i")
        await ref.ask(Inbox.add)
    aid = actor_id("Inbox", "i")
    conn = apsw.Connection(str(actor_dir(root, aid) / "mailbox.db"))
    conn.execute(
        "INSERT INTO inbox(method, payload, enqueued_at) VALUES ('add', ?, 0)", (b"\x92\x90\x80",)
    )
    conn.close()
    conn = apsw.Connection(str(root / "directory.db"))
    conn.execute("UPDATE actors SET pending = 1")
    conn.close()
    async with actors.open_runtime(root, types=[Counter]) as rt:
        assert rt.statistics().unknown_types == ("Inbox",)
    assert stored_messages(root) == 1
    async with actors.open_runtime(root, types=[Inbox]) as rt:
        await rt.ref(Inbox, "i").ask(Inbox.add)  # applied after the kept message
        assert await rt.ref(Inbox, "i").ask(Inbox.n) == 3


async def test_corrupt_file(root: Path) -> None:
    """A corrupt data.db raises CorruptFileError naming the file; the mailbox is untouched."""
    async with runtime_with_one_actor(root) as rt:
        pass
    data = actor_dir(root, actor_id("Counter", "c")) / "data.db"
    for suffix in ("-wal", "-shm"):
        data.with_name("data.db" + suffix).unlink(missing_ok=True)
    data.write_bytes(b"this is not a database" * 100)
    async with actors.open_runtime(root, types=[Counter]) as rt:
        with pytest.raises(actors.CorruptFileError) as info:
            await rt.ref(Counter, "c").send(Counter.incr, 1)
        assert info.value.path == str(data)
        # Other actors keep working.
        assert await rt.ref(Counter, "d").ask(Counter.incr, 2) == 2
    assert stored_messages(root) == 0


async def test_bad_definitions_fail_at_class_creation() -> None:
    """Mistakes in an actor class raise at definition time with a message saying what to fix."""
    with pytest.raises(TypeError, match="must be an async def"):

        class SyncQuery(actors.Actor):
            @actors.query  # type: ignore[type-var]  # a sync query, on purpose
            def value(self) -> int:
                return 1

    with pytest.raises(TypeError, match=r"must be an actors\.Retry"):

        class BadRetry(actors.Actor):
            retry = 3  # type: ignore[assignment]

    with pytest.raises(ValueError, match="type name"):

        class BadName(actors.Actor, name=""):
            pass

    with pytest.raises(TypeError, match="migrations"):

        class BadMigration(actors.Actor):
            migrations = (42,)  # type: ignore[assignment]

    with pytest.raises(ValueError, match="max_attempts"):
        actors.Retry(max_attempts=0)


async def test_duplicate_type_names_refused(root: Path) -> None:
    """Two registered classes with one persisted name are refused by open_runtime."""

    class A(actors.Actor, name="Same"):
        pass

    class B(actors.Actor, name="Same"):
        pass

    with pytest.raises(ValueError, match="share the persisted name 'Same'"):
        async with actors.open_runtime(root, types=[A, B]):
            pass


async def test_bad_idempotency_key(root: Path) -> None:
    """An idempotency_key that is not a short non-empty str raises ValueError."""
    async with runtime_with_one_actor(root) as rt:
        ref = rt.ref(Counter, "c")
        for key in ("", "k" * 513, 5):
            with pytest.raises(ValueError, match="idempotency_key"):
                await ref.options(idempotency_key=key).send(Counter.incr)  # type: ignore[arg-type]
    assert_nothing_stored(root)


async def test_reply_that_cannot_be_encoded_fails_the_message(root: Path) -> None:
    """A handler returning an unencodable value fails with EncodingError as the cause, once."""

    class Leaks(actors.Actor, name="Leaks"):
        async def give(self) -> object:
            self.kv["touched"] = True
            return dt.UTC  # not on the allow-list

        @actors.query
        async def touched(self) -> bool:
            return bool(self.kv.get("touched", False))

    async with actors.open_runtime(root, types=[Leaks]) as rt:
        ref = rt.ref(Leaks, "l")
        with pytest.raises(actors.MessageFailedError) as info:
            await ref.ask(Leaks.give)
        assert isinstance(info.value.__cause__, actors.EncodingError)
        assert info.value.attempts == 1  # deterministic: not retried
        assert await ref.ask(Leaks.touched) is False
