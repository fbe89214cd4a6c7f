"""Spawn-then-message in one turn, asking a ``@query`` from a
handler, and a ``@query`` (or event, dead letters, turns) on an actor that does not exist."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import apsw
import pytest
import trio

import actors
from actors.testing import actor_state, check_crashes
from runtime.files.layout import DIRECTORY_FILE, actor_id
from tests.engine.test_steps import runtime
from tests.support.agents import Counter
from tests.support.replication import real_time


async def eventually(read: Callable[[], Awaitable[Any]], expected: Any) -> None:
    """Poll ``read()`` (virtual time) until it returns ``expected``: outbox deliveries are
    asynchronous after the commit, and the actor read may not exist before they arrive."""
    got: Any = None
    with trio.move_on_after(600):
        while True:
            try:
                got = await read()
            except actors.ActorNotFoundError:
                got = None
            if got == expected:
                return
            await trio.sleep(0.01)
    raise AssertionError(f"still {got!r}, expected {expected!r}")


class Account(actors.Actor, name="spawn.Account"):
    """A child whose ``on_create`` needs an argument."""

    async def on_create(self, owner: str, level: int = 1) -> None:
        self.kv["owner"] = owner
        self.kv["level"] = level

    async def describe(self) -> tuple[str, int]:
        return (str(self.kv["owner"]), int(self.kv["level"]))

    async def note(self, text: str) -> None:
        self.kv["notes"] = [*self.kv.get("notes", []), text]

    @actors.query
    async def notes(self) -> tuple[str, list[str]]:
        return (str(self.kv["owner"]), list(self.kv.get("notes", [])))


class Profile(actors.Actor, name="spawn.Profile"):
    """A child whose ``on_create`` arguments all have defaults."""

    async def on_create(self, owner: str = "nobody") -> None:
        self.kv["owner"] = owner

    async def describe(self) -> str:
        return str(self.kv["owner"])


class Parent(actors.Actor, name="spawn.Parent"):
    retry = actors.Retry(max_attempts=1)

    async def spawn_and_ask(self) -> list[Any]:
        account = self.spawn(Account, "ann", level=3, key="a")
        profile = self.spawn(Profile, "bob", key="p")
        return [
            await self.ask(account, Account.describe),
            await self.ask(profile, Profile.describe),
        ]

    async def spawn_and_send(self) -> None:
        account = self.spawn(Account, "ann", key="a")
        self.send(account, Account.note, "hello")


# -- item 7: spawn, then message the child in the same turn ------------------------------------


async def test_spawn_then_ask_in_one_turn_creates_the_child_with_its_arguments(root: Path) -> None:
    """A child spawned and asked in one turn gets its spawn arguments and the spawner as parent."""
    # on_create runs with the spawn arguments before the ask.
    async with runtime(root, Parent, Account, Profile) as rt:
        parent = rt.ref(Parent, "boss")
        assert await parent.ask(Parent.spawn_and_ask) == [("ann", 3), "bob"]
        for type_name, key in (("spawn.Account", "a"), ("spawn.Profile", "p")):
            entry = rt._engine.directory.get(actor_id(type_name, key))
            assert entry is not None and entry.parent == actor_id("spawn.Parent", "boss")
        assert await rt.dead_letters(parent) == []


async def test_spawn_then_send_in_one_turn_reaches_a_child_needing_arguments(root: Path) -> None:
    """A send to a child spawned earlier in the turn arrives after on_create ran with its args."""
    # self.send is accepted even when the child's on_create needs arguments.
    async with runtime(root, Parent, Account) as rt:
        parent = rt.ref(Parent, "boss")
        await parent.ask(Parent.spawn_and_send)
        account = rt.ref(Account, "a")
        await eventually(lambda: account.ask(Account.notes), ("ann", ["hello"]))
        entry = rt._engine.directory.get(actor_id("spawn.Account", "a"))
        assert entry is not None and entry.parent == actor_id("spawn.Parent", "boss")
        assert await rt.dead_letters(parent) == []


def _state_and_parents(root: Path) -> Any:
    conn = apsw.Connection(str(root / DIRECTORY_FILE), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        parents = sorted(conn.execute("SELECT type, key, parent FROM actors"))
    finally:
        conn.close()
    return actor_state(root), parents


async def _spawn_and_ask_scenario(rt: actors.Runtime) -> None:
    result = await rt.ref(Parent, "boss").options(idempotency_key="run-1").ask(Parent.spawn_and_ask)
    assert result == [("ann", 3), "bob"]


def test_spawn_then_ask_creates_the_child_once_whatever_the_crash_point() -> None:
    """A crash anywhere in a spawn-then-ask turn still ends with the child created exactly once."""
    # With its spawn arguments and its parent, as without a crash.
    report = check_crashes(
        _spawn_and_ask_scenario, types=[Parent, Account, Profile], state=_state_and_parents
    )
    state, parents = report.state
    assert state[("spawn.Account", "a")]["_torpor_kv"]
    assert ("spawn.Account", "a", actor_id("spawn.Parent", "boss")) in parents
    assert len(report.points) > 4  # the asks' crash points and the commit's


# -- item 8: asking a @query from a handler -------------------------------------------------------


class Auditor(actors.Actor, name="spawn.Auditor"):
    retry = actors.Retry(max_attempts=1)

    async def audit(self, counter: actors.Ref[Counter]) -> int:
        value: int = await self.ask(counter, Counter.value)
        await self.wait_for_event("go")
        return value


async def test_a_handler_can_ask_a_query_as_a_journaled_step(root: Path) -> None:
    """self.ask(other, Other.some_query) returns the query's result, journaled as an ask step."""
    async with runtime(root, Auditor, Counter) as rt:
        counter = rt.ref(Counter, "c")
        await counter.ask(Counter.incr, 5)
        auditor = rt.ref(Auditor, "a")
        results: list[int] = []

        async def audit() -> None:
            results.append(await auditor.ask(Auditor.audit, counter))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(audit)
            await eventually(
                lambda: _step_statuses(rt, auditor),
                [("ask", "Counter.value", "done"), ("event", "go", "waiting")],
            )
            await auditor.signal("go")
        assert results == [5]
        assert await rt.dead_letters(auditor) == []


async def _step_statuses(rt: actors.Runtime, ref: actors.Ref[Any]) -> list[tuple[str, ...]]:
    return [(s.kind, s.name, s.status) for turn in await rt.turns(ref) for s in turn.steps]


# -- item 10: a @query on an actor that does not exist --------------------------------------------


async def test_a_query_on_a_missing_actor_raises_and_creates_nothing(root: Path) -> None:
    """A @query on a never-created actor raises ActorNotFoundError and creates nothing."""
    # Like an event; its dead letters and turns are empty lists, whatever on_create takes.
    async with runtime(root, Counter, Account) as rt:
        for ref, query in (
            (rt.ref(Counter, "ghost"), Counter.value),
            (rt.ref(Account, "ghost"), Account.notes),
        ):
            with pytest.raises(actors.ActorNotFoundError, match="does not exist"):
                await ref.ask(query)
            with pytest.raises(actors.ActorNotFoundError, match="does not exist"):
                await ref.signal("e")
            assert await rt.dead_letters(ref) == []
            assert await rt.turns(ref) == []
        assert rt._engine.directory.count() == 0
        assert not (root / "actors").exists()
        assert rt.statistics().awake == 0
        counter = rt.ref(Counter, "ghost")
        await counter.send(Counter.incr, 2)  # a message creates a get-or-create actor
        assert await counter.ask(Counter.value) == 2


@real_time
async def test_a_query_finds_an_actor_known_only_to_the_replica(tmp_path: Path) -> None:
    """A @query finds an actor known only to the replica; one the replica lacks too is not found."""
    # The runtime is restored from a replica whose directory predates the actor.
    store = actors.DirectoryStore(tmp_path / "replica")
    source, target = tmp_path / "source", tmp_path / "target"
    async with actors.open_runtime(source, types=[Counter], replica=store) as rt:
        await rt.ref(Counter, "c").ask(Counter.incr, 7)
    async with actors.open_runtime(target, types=[Counter], replica=store) as rt:
        pass  # a fresh machine: directory.db restored from the replica
    conn = apsw.Connection(str(target / DIRECTORY_FILE))
    conn.execute("DELETE FROM actors")  # as if the replica's directory predated the actor
    conn.close()
    async with actors.open_runtime(target, types=[Counter], replica=store) as rt:
        assert await rt.ref(Counter, "c").ask(Counter.value) == 7
        with pytest.raises(actors.ActorNotFoundError):
            await rt.ref(Counter, "ghost").ask(Counter.value)
        assert rt._engine.directory.get(actor_id("Counter", "ghost")) is None
