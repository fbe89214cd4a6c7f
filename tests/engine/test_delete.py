"""Listing and deleting actors (DESIGN §10): ``rt.actors`` reads the directory without waking
anyone; ``ref.delete()`` and ``self.destroy()`` remove an actor's files, row, queued messages and
timers, and a key used again is a new actor whose messages receivers do not drop as repeats.
Time is virtual."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import apsw
import pytest

import actors
from runtime.files.layout import DIRECTORY_FILE, actor_dir, actor_id
from tests.engine.test_steps import clock

pytestmark = pytest.mark.both_backends


class Note(actors.Actor, name="del.Note"):
    """Keeps notes in its kv; can wait for an event, send, and destroy itself."""

    async def add(self, text: str) -> list[str]:
        self.kv["notes"] = [*self.kv.get("notes", []), text]
        return list(self.kv["notes"])

    async def wait(self) -> Any:
        return await self.wait_for_event("go")

    async def tell(self, target: actors.Ref[Note], text: str) -> None:
        self.send(target, Note.add, text)

    async def remind(self, seconds: float) -> None:
        self.schedule("reminder", Note.add, "reminded", after=seconds)

    async def adopt(self, key: str) -> None:
        self.spawn(Other, key=key)

    async def forget_me(self, target: actors.Ref[Note], text: str, fail: bool) -> str:
        self.send(target, Note.add, f"before: {text}")
        self.destroy()
        self.send(target, Note.add, f"after: {text}")
        if fail:
            raise RuntimeError("rolled back: no destroy")
        return "bye"


class Other(actors.Actor, name="del.Other"):
    async def ping(self) -> str:
        return "pong"


def runtime(root: Path, **options: Any) -> Any:
    options.setdefault("clock", clock)
    return actors.open_runtime(root, types=[Note, Other], **options)


def folder(root: Path, key: str) -> Path:
    return actor_dir(root, actor_id("del.Note", key))


async def deleted(events: Any, key: str) -> None:
    """Return once the lifecycle events say that actor ``key`` was deleted."""
    async for event in events:
        if (event.key, event.state) == (key, "deleted"):
            return


def directory_row(root: Path, key: str) -> list[Any]:
    conn = apsw.Connection(str(root / DIRECTORY_FILE))
    try:
        return conn.execute(
            "SELECT key FROM actors WHERE id = ?", (actor_id("del.Note", key),)
        ).fetchall()
    finally:
        conn.close()


async def test_actors_lists_by_type_and_status_without_waking_any(root: Path) -> None:
    """rt.actors lists an actor type's keys and statuses in key order, waking none of them."""
    async with runtime(root, idle_timeout=10) as rt:
        for key in ("c", "a", "b"):
            await rt.ref(Note, key).ask(Note.add, key)
        await rt.ref(Other, "o").ask(Other.ping)
        await anyio.sleep(11)  # all hibernate
        assert rt.statistics().awake == 0
        listed = await rt.actors(Note)
        assert [(a.key, a.status, a.type_name) for a in listed] == [
            ("a", "hibernated", "del.Note"),
            ("b", "hibernated", "del.Note"),
            ("c", "hibernated", "del.Note"),
        ]
        assert all(a.created_at <= (a.active_at or 0) <= clock() for a in listed)
        assert rt.statistics().awake == 0 and not rt._engine.awake  # nobody was woken
        await rt.ref(Note, "b").ask(Note.add, "again")
        assert [a.key for a in await rt.actors(Note, "awake")] == ["b"]
        assert [a.key for a in await rt.actors(Note, "hibernated")] == ["a", "c"]
        assert await rt.actors(Note, "stopped") == []
        assert [a.key for a in await rt.actors(Other)] == ["o"]


async def test_actors_pages_with_limit_and_after(root: Path) -> None:
    """limit and after page through the keys in order, each key once."""
    async with runtime(root) as rt:
        for n in range(7):
            await rt.ref(Note, f"k{n}").send(Note.add, "x")
        seen: list[str] = []
        page = await rt.actors(Note, limit=3)
        while page:
            assert len(page) <= 3
            seen += [a.key for a in page]
            page = await rt.actors(Note, limit=3, after=page[-1].key)
        assert seen == [f"k{n}" for n in range(7)]
        assert [a.key for a in await rt.actors(Note, "awake", limit=2, after="k3")] == ["k4", "k5"]


async def test_actors_refuses_a_bad_status_limit_or_type(root: Path) -> None:
    """A bad status or limit is a ValueError naming what is allowed; an unknown type is typed."""

    class Unregistered(actors.Actor, name="del.Unregistered"):
        pass

    async with runtime(root) as rt:
        with pytest.raises(actors.UnknownActorTypeError, match="not registered"):
            await rt.actors(Unregistered)
        with pytest.raises(ValueError, match="status must be one of awake, hibernated"):
            await rt.actors(Note, "asleep")
        with pytest.raises(ValueError, match="limit must be an int from 1 to 10000"):
            await rt.actors(Note, limit=0)


async def test_delete_removes_files_row_and_state_and_the_key_starts_afresh(root: Path) -> None:
    """After ref.delete() the files and row are gone; a later message makes a new, empty actor."""
    async with runtime(root, idle_timeout=10) as rt:
        ref = rt.ref(Note, "n")
        assert await ref.ask(Note.add, "secret") == ["secret"]
        await anyio.sleep(11)  # hibernated
        async with rt.open_lifecycle_events() as events:
            await ref.delete()
            event = events.receive_nowait()
        assert (event.previous, event.event, event.state) == ("hibernated", "delete", "deleted")
        assert not folder(root, "n").exists()
        assert directory_row(root, "n") == []
        assert await rt.actors(Note) == []
        assert rt.statistics().hibernated == 0
        assert await ref.ask(Note.add, "fresh") == ["fresh"]  # nothing of the old one


async def test_delete_cancels_a_waiting_turn_and_its_askers_get_a_typed_error(root: Path) -> None:
    """Deleting an awake actor cancels its turn; it and the queued askers get ActorDeletedError."""
    async with runtime(root) as rt:
        ref = rt.ref(Note, "w")
        await ref.ask(Note.add, "x")
        errors: list[BaseException] = []

        async def ask(method: Any) -> None:
            try:
                await ref.ask(method) if method is Note.wait else await ref.ask(method, "queued")
            except actors.ActorDeletedError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(ask, Note.wait)
            await anyio.sleep(1)
            tg.start_soon(ask, Note.add)  # queued behind the waiting turn
            await anyio.sleep(1)
            await ref.delete()
        assert len(errors) == 2
        assert all("was deleted" in str(e) for e in errors)
        assert not folder(root, "w").exists()
        assert rt.statistics().awake == 0


async def test_delete_of_an_actor_that_does_not_exist_is_actor_not_found(root: Path) -> None:
    """Deleting a key no actor has raises ActorNotFoundError and creates nothing."""
    async with runtime(root) as rt:
        with pytest.raises(actors.ActorNotFoundError, match="nothing to delete"):
            await rt.ref(Note, "ghost").delete()
        assert await rt.actors(Note) == []


async def test_delete_inside_a_turn_is_refused(root: Path) -> None:
    """ref.delete() inside a handler is a RuntimeError pointing at self.destroy()."""

    class Deleter(actors.Actor, name="del.Deleter"):
        async def go(self, target: actors.Ref[Note]) -> None:
            await target.delete()

    async with actors.open_runtime(root, types=[Note, Deleter], clock=clock) as rt:
        await rt.ref(Note, "t").ask(Note.add, "x")
        with pytest.raises(actors.MessageFailedError) as info:
            await rt.ref(Deleter, "d").ask(Deleter.go, rt.ref(Note, "t"))
        assert "self.destroy()" in str(info.value.__cause__)


async def test_destroy_takes_effect_at_commit_after_its_sends(root: Path) -> None:
    """self.destroy() deletes the actor once its turn commits; the turn's sends still leave."""
    async with runtime(root) as rt, rt.open_lifecycle_events() as events:
        doomed, friend = rt.ref(Note, "doomed"), rt.ref(Note, "friend")
        await doomed.ask(Note.add, "private")
        assert await doomed.ask(Note.forget_me, friend, "x", False) == "bye"
        await deleted(events, "doomed")
        assert not folder(root, "doomed").exists()
        assert directory_row(root, "doomed") == []
        assert await friend.ask(Note.add, "end") == ["before: x", "after: x", "end"]


async def test_destroy_in_a_turn_that_rolls_back_does_nothing(root: Path) -> None:
    """A turn that calls self.destroy() and then fails deletes nothing."""
    async with runtime(root) as rt:
        ref, friend = rt.ref(Note, "keep"), rt.ref(Note, "friend")
        await ref.ask(Note.add, "kept")
        with pytest.raises(actors.MessageFailedError):
            await ref.ask(Note.forget_me, friend, "x", True)
        await anyio.sleep(1)
        assert await ref.ask(Note.add, "still") == ["kept", "still"]


async def test_timers_go_with_a_deleted_actor(root: Path) -> None:
    """A deleted actor's timer never fires and does not bring the actor back."""
    async with runtime(root, idle_timeout=10) as rt:
        ref = rt.ref(Note, "t")
        await ref.ask(Note.remind, 60)
        await ref.delete()
        await anyio.sleep(120)
        assert await rt.actors(Note) == []
        assert rt.statistics().actors_with_timers == 0
        assert not folder(root, "t").exists()


async def test_a_recreated_sender_is_not_dropped_as_a_repeat(root: Path) -> None:
    """A sender deleted and made again under its key is a new incarnation: its sends arrive."""
    async with runtime(root) as rt:
        sender, receiver = rt.ref(Note, "sender"), rt.ref(Note, "receiver")
        for text in ("1", "2", "3"):
            await sender.ask(Note.tell, receiver, f"old {text}")
        await sender.delete()
        for text in ("1", "2"):
            await sender.ask(Note.tell, receiver, f"new {text}")
        expected = ["old 1", "old 2", "old 3", "new 1", "new 2"]
        for _ in range(1000):
            got = await receiver.ask(Note.add, "probe")
            if [t for t in got if t != "probe"] == expected:
                break
            await anyio.sleep(0.01)
        assert [t for t in got if t != "probe"] == expected


async def test_a_deletion_cut_short_finishes_at_the_next_open(root: Path) -> None:
    """An actor left marked deleting by a stopped process is deleted at the next open, not woken."""
    async with runtime(root) as rt:
        await rt.ref(Note, "half").ask(Note.add, "x")
    conn = apsw.Connection(str(root / DIRECTORY_FILE))
    conn.execute("UPDATE actors SET deleting = 1, pending = 1")  # (as a crash would leave it)
    conn.close()
    async with runtime(root) as rt, rt.open_lifecycle_events() as events:
        await deleted(events, "half")
        assert directory_row(root, "half") == []
        assert not folder(root, "half").exists()
        assert rt.statistics().wakes == 0


async def test_a_committed_destroy_left_undelivered_takes_effect_at_the_next_open(
    root: Path,
) -> None:
    """A destroy() whose turn committed before the process stopped deletes at the next open."""
    async with runtime(root) as rt:
        await rt.ref(Note, "late").ask(Note.add, "x")
    # What a crash right after the destroying turn's commit leaves: its outbox row, pending.
    data = apsw.Connection(str(folder(root, "late") / "data.db"))
    data.execute(
        "INSERT INTO _torpor_outbox(target_type, target_key, method, payload) "
        "VALUES ('del.Note', 'late', '__destroy__', X'c0')"
    )
    data.close()
    conn = apsw.Connection(str(root / DIRECTORY_FILE))
    conn.execute("UPDATE actors SET pending = 1")
    conn.close()
    async with runtime(root) as rt, rt.open_lifecycle_events() as events:
        await deleted(events, "late")
        assert directory_row(root, "late") == []
        assert not folder(root, "late").exists()


async def test_a_message_sent_during_a_deletion_reaches_the_new_actor_after_it(root: Path) -> None:
    """A delivery to an actor being deleted waits in the sender's outbox, then makes a new one."""
    async with runtime(root, idle_timeout=10) as rt:
        sender, target = rt.ref(Note, "sender"), rt.ref(Note, "target")
        await target.ask(Note.add, "old")
        await anyio.sleep(11)  # hibernated
        # A deletion begun and not finished (as while the store cannot be reached):
        rt._engine.directory.mark_deleting(actor_id("del.Note", "target"))
        with pytest.raises(actors.ActorDeletedError, match="being deleted"):
            await target.ask(Note.add, "refused")
        await sender.ask(Note.tell, target, "during")  # its delivery is refused, and retried
        await target.delete()  # finished
        await anyio.sleep(60)  # the sender's outbox retries with backoff
        assert await target.ask(Note.add, "after") == ["during", "after"]


async def test_an_asker_of_a_hibernated_waiting_turn_gets_a_typed_error(root: Path) -> None:
    """An ask whose turn waits durably while the actor hibernates fails with ActorDeletedError."""
    async with runtime(root, idle_timeout=10) as rt:
        ref = rt.ref(Note, "h")
        await ref.ask(Note.add, "x")
        errors: list[BaseException] = []

        async def ask() -> None:
            try:
                await ref.ask(Note.wait)
            except actors.ActorDeletedError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(ask)
            await anyio.sleep(3600)  # the turn waits; the actor hibernates meanwhile
            assert rt.statistics().awake == 0
            await ref.delete()
        assert len(errors) == 1


async def test_a_wake_up_asked_before_a_deletion_does_not_make_the_actor_again(root: Path) -> None:
    """Recovery's list or a wake-later from before the deletion wakes nothing afterwards."""
    async with runtime(root) as rt:
        ref = rt.ref(Note, "x")
        await ref.ask(Note.add, "secret")
        await ref.delete()
        spec = rt._engine.specs["del.Note"]
        await rt._engine.residency.recover([(spec, "x")])  # (as if listed pending at open)
        rt._engine.wake_later(spec, "x")
        await anyio.sleep(1)
        assert await rt.actors(Note) == []
        assert not folder(root, "x").exists()
        assert await ref.ask(Note.add, "new") == ["new"]  # a message still makes a new one


async def test_two_deletes_at_once_both_return_once_it_is_gone(root: Path) -> None:
    """A delete() called while another deletion of the same actor is under way waits for it."""
    async with runtime(root) as rt:
        ref = rt.ref(Note, "twice")
        await ref.ask(Note.add, "x")
        async with anyio.create_task_group() as tg:
            tg.start_soon(ref.delete)
            tg.start_soon(ref.delete)
        assert await rt.actors(Note) == []
        assert not folder(root, "twice").exists()


async def test_actors_names_each_childs_parent(root: Path) -> None:
    """ActorInfo.parent is the (type, key) of the actor that spawned it, for finding children."""
    async with runtime(root) as rt:
        await rt.ref(Note, "mom").ask(Note.adopt, "kid")
        await rt.ref(Other, "stray").ask(Other.ping)
        for _ in range(1000):  # (the spawn is delivered from the outbox after the commit)
            listed = {a.key: a.parent for a in await rt.actors(Other)}
            if "kid" in listed:
                break
            await anyio.sleep(0.01)
        assert listed == {"kid": ("del.Note", "mom"), "stray": None}
        await rt.ref(Note, "mom").delete()  # (children are not deleted with their parent)
        assert {a.key: a.parent for a in await rt.actors(Other)} == {"kid": None, "stray": None}


class Shop(actors.Actor, name="del.Shop"):
    """Starts runs and records the outcomes that reach it."""

    async def order(self, order_id: str) -> str:
        return self.start(Order.run, id=order_id).id

    async def hello(self) -> str:
        return "hello"

    async def on_run_done(self, run: actors.Run[Any], outcome: Any) -> None:
        self.kv["done"] = [*self.kv.get("done", []), run.id]

    @actors.query
    async def done(self) -> list[str]:
        return list(self.kv.get("done", []))


class Order(actors.Workflow, name="del.Order"):
    async def run(self) -> str:
        return str(await self.wait_for_event("paid"))


async def test_a_new_actor_under_a_deleted_starters_key_does_not_inherit_its_runs(
    root: Path,
) -> None:
    """A starter deleted and made again neither lists the old one's runs nor gets their outcome."""
    # The new incarnation was taken for the old one's parent: rt.runs listed the old runs and
    # their on_run_done reached it, a message about a run it never started.
    async with actors.open_runtime(root, types=[Shop, Order], clock=clock) as rt:
        shop = rt.ref(Shop, "s")
        run = rt.run(Order, await shop.ask(Shop.order, "o"))
        await shop.delete()
        assert await shop.ask(Shop.hello) == "hello"  # a new actor under the key
        assert rt.runs(shop) == []
        await run.signal("paid", "yes")
        assert await run.result() == "yes"  # its outcome stays readable
        await anyio.sleep(10)
        assert await shop.ask(Shop.done) == []
        assert [info.parent for info in await rt.actors(Order)] == [None]


async def test_a_run_finishing_while_its_starter_is_deleted_does_not_make_it_again(
    root: Path,
) -> None:
    """A run's outcome for a starter deleted meanwhile is dropped, never making a new actor."""
    async with actors.open_runtime(
        root, types=[Shop, Order], clock=clock, run_retention=math.inf
    ) as rt:
        for n in range(5):  # (the outcome leaves just before, during, or after the deletion)
            shop = rt.ref(Shop, f"s{n}")
            run = rt.run(Order, await shop.ask(Shop.order, f"o{n}"))
            for _ in range(n):
                await anyio.lowlevel.checkpoint()
            async with anyio.create_task_group() as tg:
                tg.start_soon(run.signal, "paid", "yes")
                tg.start_soon(shop.delete)
            with anyio.fail_after(3600):
                assert await run.result() == "yes"
        await anyio.sleep(60)
        assert await rt.actors(Shop) == []
