"""Files of one actor (DESIGN §3): layout, WAL, synchronous level, keys kept inside the files."""

from __future__ import annotations

import collections
from pathlib import Path

import apsw
import pytest
from hypothesis import given, settings

import actors
from runtime.files.layout import actor_dir, actor_id
from tests.support.agents import Counter
from tests.support.strategies import keys


@given(keys)
def test_actor_ids_are_hex_and_distinct_from_keys(key: str) -> None:
    """File names come from a hash of (type, key): 32 hex digits, whatever the key holds."""
    aid = actor_id("Counter", key)
    assert len(aid) == 32 and all(c in "0123456789abcdef" for c in aid)
    assert aid != actor_id("Other", key)


def test_layout_is_sharded_two_levels() -> None:
    """Actors live under actors/ab/cd/<id>/ so that no folder holds more than a few thousand."""
    aid = actor_id("Counter", "user-42")
    assert actor_dir(Path("/r"), aid) == Path("/r/actors") / aid[:2] / aid[2:4] / aid


@pytest.mark.parametrize(("level", "expected"), [("NORMAL", 1), ("FULL", 2)])
async def test_every_file_is_wal_with_the_chosen_synchronous(
    root: Path, level: str, expected: int
) -> None:
    """directory.db, data.db and mailbox.db all run in WAL mode at the requested level."""
    async with actors.open_runtime(root, types=[Counter], synchronous=level) as rt:
        ref = rt.ref(Counter, "k")
        await ref.ask(Counter.incr)
        await ref.ask(Counter.value)  # opens the query connection too
        act = rt._engine.awake[actor_id("Counter", "k")]
        conns = [rt._engine.directory.conn, act.data.conn, act.mailbox.conn, act.reader()]
        for conn in conns:
            assert conn.pragma("journal_mode") == "wal"
            assert conn.pragma("synchronous") == expected


async def test_type_and_key_are_kept_inside_the_files(root: Path) -> None:
    """Each file records its actor's type and key, so a folder can be identified on its own."""
    key = "ann@example.com / ünïcode"
    async with actors.open_runtime(root, types=[Counter]) as rt:
        await rt.ref(Counter, key).ask(Counter.incr)
    folder = actor_dir(root, actor_id("Counter", key))
    data = apsw.Connection(str(folder / "data.db"))
    assert data.execute("SELECT type, key FROM _torpor_state").fetchall() == [("Counter", key)]
    mailbox = apsw.Connection(str(folder / "mailbox.db"))
    assert {name: value for name, value in mailbox.execute("SELECT name, value FROM meta")} == {
        "type": "Counter",
        "key": key,
        "data": 1,  # its data.db was created: from now on, a missing one is a lost file
    }
    directory = apsw.Connection(str(root / "directory.db"))
    assert directory.execute("SELECT type, key FROM actors").fetchall() == [("Counter", key)]


async def test_consumed_mailbox_rows_are_removed_in_batches(root: Path) -> None:
    """Applied inbox rows are deleted, not kept forever (in batches, and at close)."""
    async with actors.open_runtime(root, types=[Counter]) as rt:
        ref = rt.ref(Counter, "k")
        for _ in range(600):
            await ref.send(Counter.incr)
        await ref.ask(Counter.incr)
        act = rt._engine.awake[actor_id("Counter", "k")]
        ((remaining,),) = act.mailbox.conn.execute("SELECT count(*) FROM inbox").fetchall()
        assert isinstance(remaining, int) and remaining < 601
    conn = apsw.Connection(str(actor_dir(root, actor_id("Counter", "k")) / "mailbox.db"))
    assert conn.execute("SELECT count(*) FROM inbox").fetchall()[0][0] == 0


@settings(max_examples=20, deadline=None)
@given(keys)
def test_any_valid_key_round_trips(tmp_path_factory: pytest.TempPathFactory, key: str) -> None:
    """Any valid key (slashes, dots, emoji, spaces) names exactly one actor and comes back."""
    import trio

    root = tmp_path_factory.mktemp("keys")

    async def main() -> None:
        async with actors.open_runtime(root, types=[Counter]) as rt:
            assert await rt.ref(Counter, key).ask(Counter.incr, 3) == 3
            assert await rt.ref(Counter, key).ask(Counter.value) == 3

    trio.run(main)


async def test_a_file_recreated_from_the_image_ignores_a_stale_log(root: Path) -> None:
    """A mailbox re-created from the image never has the old file's stale -wal replayed onto it."""
    # A mailbox deleted by hand leaves its -wal (with valid frames of the old file) behind; the new
    # mailbox is a copy of the prebuilt image.

    class Agent(actors.Actor, name="Agent"):
        async def note(self, text: str) -> int:
            notes: list[str] = [*self.kv.get("notes", []), text]
            self.kv["notes"] = notes
            return len(notes)

    async with actors.open_runtime(root, types=[Agent], idle_timeout=0) as rt:
        for i in range(3):
            await rt.ref(Agent, "a").ask(Agent.note, f"n{i}")
    mailbox = next(root.rglob("mailbox.db"))  # noqa: ASYNC240 (between two runtimes)
    stale = mailbox.with_name("mailbox.db-wal")
    assert stale.stat().st_size > 0  # the kept log holds the old file's frames
    mailbox.unlink()
    async with actors.open_runtime(root, types=[Agent]) as rt:
        assert await rt.ref(Agent, "a").ask(Agent.note, "after") == 4
        assert rt.reports == collections.deque()


async def test_a_crash_between_copying_the_image_and_naming_the_actor_is_harmless(
    root: Path,
) -> None:
    """A kill -9 between copying the image and naming the actor leaves files the open identifies."""
    # A new actor's files are copies of an anonymous image, given the actor's type and key just
    # after; the kill leaves anonymous files.
    from runtime.files.datastore import image as data_image
    from runtime.files.mailbox import image as mailbox_image

    async with actors.open_runtime(root, types=[Counter]):
        pass
    folder = actor_dir(root, actor_id(Counter.__torpor_spec__.name, "c1"))
    folder.mkdir(parents=True)
    (folder / "data.db").write_bytes(data_image())
    (folder / "mailbox.db").write_bytes(mailbox_image())
    async with actors.open_runtime(root, types=[Counter]) as rt:
        assert await rt.ref(Counter, "c1").ask(Counter.incr, 2) == 2
    conn = apsw.Connection(str(folder / "mailbox.db"))
    try:
        assert dict(conn.execute("SELECT name, value FROM meta")) == {
            "type": Counter.__torpor_spec__.name,
            "key": "c1",
            "data": 1,
        }
    finally:
        conn.close()
