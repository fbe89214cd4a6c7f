"""An actor whose files turn out corrupt while it hibernates fails alone: its lifecycle goes
hibernating -> failed, its askers learn it, the runtime keeps serving the other actors and closes
cleanly, and its next message restores it from the replica.

The hibernation here is an eviction (``max_awake=1``: waking a second actor hibernates the first),
so nothing waits on time. The runtime has a replica: the hibernation's snapshot is what reads the
corrupt file (SQLite's ``quick_check`` on it fails, so it is never uploaded). These tests run on
the real clock, as every replication test does (the store is called from worker threads, which a
``MockClock`` would jump over); every wait is on an event (a reply, ``rt.replicated()``, the
lifecycle events), none on a duration.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
import trio

import actors
from runtime.files.layout import DATA_FILE, actor_dir, actor_id

PAGE = 4096

#: Seconds after which a wait that should end at once is called a hang (it takes milliseconds).
HANG = 10.0

#: Set by ``Notebook.bump_when`` as its turn starts waiting (a test-only signal, not state).
WAITING: dict[str, trio.Event] = {}


class Notebook(actors.Actor, name="Issue12Notebook"):
    """Notes written once at creation (a page no later turn rewrites), and a counter in kv."""

    async def on_create(self) -> None:
        self.sql.execute("CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)")
        for i in range(20):
            self.sql.execute("INSERT INTO notes(body) VALUES (?)", (f"note {i}",))

    async def bump(self) -> int:
        n: int = self.kv.get("n", 0) + 1
        self.kv["n"] = n
        return n

    async def bump_when(self, event: str) -> int:
        WAITING.setdefault(event, trio.Event()).set()
        await self.wait_for_event(event)
        n: int = self.kv.get("n", 0) + 1
        self.kv["n"] = n
        return n

    async def notes_page(self) -> int:
        (row,) = self.sql.execute("SELECT rootpage FROM sqlite_master WHERE name = 'notes'")
        return int(row[0])

    @actors.query
    async def notes(self) -> int:
        return len(list(self.sql.execute("SELECT id FROM notes")))


def open_rt(tmp_path: Path) -> contextlib.AbstractAsyncContextManager[actors.Runtime]:
    replica = actors.DirectoryStore(tmp_path / "replica")
    return actors.open_runtime(tmp_path / "rt", types=[Notebook], replica=replica, max_awake=1)


async def corrupt_while_awake(rt: actors.Runtime, tmp_path: Path) -> None:
    """Leave "bad" awake, with a change for its next hibernation to snapshot, and the notes page
    of its data.db corrupt on disk (as a failing disk would leave it)."""
    bad, good = rt.ref(Notebook, "bad"), rt.ref(Notebook, "good")
    page = await bad.ask(Notebook.notes_page)
    # "good" evicts "bad", whose hibernation checkpoints the notes page into data.db; woken again,
    # "bad" commits a change (not to that page), which is in the replica once replicated().
    assert await good.ask(Notebook.bump) == 1
    assert await bad.ask(Notebook.bump) == 1
    await rt.replicated()
    with (actor_dir(tmp_path / "rt", actor_id("Issue12Notebook", "bad")) / DATA_FILE).open(
        "r+b"
    ) as file:
        file.seek((page - 1) * PAGE)
        file.write(b"\xff" * 8)  # the page's b-tree header


async def transitions_of(events: Any, key: str) -> list[tuple[str, str, str]]:
    """The lifecycle transitions of actor ``key`` up to its first at rest (hibernated, failed)."""
    seen = []
    async for event in events:
        if event.key == key:
            seen.append((event.previous, event.event, event.state))
            if event.state in ("hibernated", "failed", "stopped"):
                return seen
    raise AssertionError(f"the events ended before {key!r} came to rest: {seen}")


@pytest.mark.real_clock
async def test_files_found_corrupt_at_hibernation_fail_that_actor_only(tmp_path: Path) -> None:
    """A data.db found corrupt by its actor's hibernation fails that actor only; the rest go on."""
    async with open_rt(tmp_path) as rt:
        bad, good = rt.ref(Notebook, "bad"), rt.ref(Notebook, "good")
        await corrupt_while_awake(rt, tmp_path)
        async with rt.open_lifecycle_events() as events:
            assert await good.ask(Notebook.bump) == 2  # wakes "good", evicting "bad"
            assert await transitions_of(events, "bad") == [
                ("awake", "idle", "hibernating"),
                ("hibernating", "crashed", "failed"),
            ]
        assert rt.statistics().failed == 1
        assert any(
            "Issue12Notebook 'bad'" in report and "restored from the replica" in report
            for report in rt.reports
        )

        assert await good.ask(Notebook.bump) == 3
        assert await bad.ask(Notebook.bump) == 2  # restored: the replicated count goes on
        assert await bad.ask(Notebook.notes) == 20
        assert rt.statistics().failed == 0


@pytest.mark.real_clock
async def test_an_asker_learns_that_the_hibernation_failed(tmp_path: Path) -> None:
    """An asker whose turn waits when hibernation finds a corrupt file gets ActorFailedError."""
    WAITING.clear()
    async with open_rt(tmp_path) as rt:
        bad, good = rt.ref(Notebook, "bad"), rt.ref(Notebook, "good")
        await corrupt_while_awake(rt, tmp_path)
        outcome: list[BaseException] = []

        async def ask_bump_when() -> None:
            try:
                await bad.ask(Notebook.bump_when, "go")
            except actors.ActorFailedError as exc:
                outcome.append(exc)

        # (a bound on a hang, not a timing: the asker used to wait for good)
        with trio.fail_after(HANG):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ask_bump_when)
                await WAITING.setdefault("go", trio.Event()).wait()
                assert await good.ask(Notebook.bump) == 2  # evicts "bad" once its turn waits
        (error,) = outcome
        assert "Issue12Notebook 'bad' cannot run turns" in str(error)
        assert isinstance(error.__cause__, actors.CorruptFileError)
        assert error.__cause__.path.endswith(DATA_FILE)

        assert await bad.signal("go")
        assert await bad.ask(Notebook.bump) == 3  # 1, then the kept bump_when, then this one
