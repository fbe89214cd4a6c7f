"""Replication and actor-to-actor messages: a sender deletes a delivered outbox row only once the
delivery is in the replica, so a restore from the replica never loses a message (DESIGN §7.1)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

import actors
from runtime.files.layout import actor_id


class Inbox(actors.Actor):
    async def put(self, n: int) -> None:
        self.sql.execute("CREATE TABLE IF NOT EXISTS got(n INTEGER PRIMARY KEY)")
        self.sql.execute("INSERT INTO got(n) VALUES (?)", (n,))

    @actors.query
    async def got(self) -> list[int]:
        try:
            return [row[0] for row in self.sql.execute("SELECT n FROM got ORDER BY n")]
        except Exception:
            return []


class Sender(actors.Actor):
    async def fan(self, start: int, count: int) -> None:
        for n in range(start, start + count):
            self.send(self.ref_to(Inbox, f"in{n % 3}"), Inbox.put, n)


async def test_messages_between_actors_survive_a_restore(tmp_path: Path) -> None:
    """A machine restored from the replica has every message between actors, once each."""
    store = actors.DirectoryStore(tmp_path / "replica")
    async with actors.open_runtime(
        tmp_path / "a", types=[Sender, Inbox], replica=store, idle_timeout=5.0
    ) as rt:
        sender = rt.ref(Sender, "s")
        for batch in range(5):
            await sender.ask(Sender.fan, batch * 10, 10)
        sent: list[int] = []
        for _ in range(100):  # bounded: until the sender's outbox is delivered
            await rt.replicated()
            sent = await received(rt)
            if len(sent) == 50:
                break
    assert sent == list(range(50))
    # A fresh machine: the directory and then each actor come back from the replica.
    async with actors.open_runtime(tmp_path / "b", types=[Sender, Inbox], replica=store) as rt2:
        restored = await received(rt2)
    assert restored == list(range(50))


async def received(rt: actors.Runtime) -> list[int]:
    got: list[int] = []
    for k in range(3):
        with contextlib.suppress(actors.ActorNotFoundError):  # (no delivery created it yet)
            got.extend(await rt.ref(Inbox, f"in{k}").ask(Inbox.got))
    return sorted(got)


class Flaky(actors.ReplicaStore):
    """A directory store whose writes under the ``stuck`` key prefixes fail (those files'
    claims and snapshots never land) with ReplicaUnavailableError."""

    def __init__(self, path: Path) -> None:
        self.inner = actors.DirectoryStore(path)
        self.stuck: set[str] = set()

    def get(self, key: str) -> tuple[bytes, str] | None:
        return self.inner.get(key)

    def put(
        self, key: str, data: Any, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        if any(key.startswith(prefix) for prefix in self.stuck):
            raise actors.ReplicaUnavailableError(f"{key} is stuck for the test")
        return self.inner.put(key, data, if_match=if_match, if_none_match=if_none_match)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def list(self, prefix: str = "") -> Iterator[str]:
        return self.inner.list(prefix)


def outbox_rows(rt: actors.Runtime, ref: actors.Ref[Any]) -> int:
    act = rt._engine.awake.get(actor_id(ref.type_name, ref.key))
    assert act is not None, (list(rt.reports), rt.statistics())
    ((count,),) = act.data.conn.execute("SELECT count(*) FROM _torpor_outbox").fetchall()
    assert isinstance(count, int)
    return count


@pytest.mark.real_clock
async def test_an_outbox_row_stays_until_its_delivery_is_replicated(tmp_path: Path) -> None:
    """A sender keeps a delivered outbox row until the receiver's copy is in the replica."""
    # So a restore from the replica then never loses the message.
    store = Flaky(tmp_path / "replica")
    # The receivers' files cannot be claimed or snapshotted: what they receive stays local.
    store.stuck = {f"actors/{actor_id('Inbox', f'in{k}')}/" for k in range(3)}
    async with actors.open_runtime(
        tmp_path / "a", types=[Sender, Inbox], replica=store, idle_timeout=60.0
    ) as rt:
        sender = rt.ref(Sender, "s")
        await sender.ask(Sender.fan, 0, 3)
        for _ in range(200):  # bounded: until the sender's rows are delivered
            if len(await received(rt)) == 3:
                break
            await trio.sleep(0.01)
        for _ in range(5):  # later turns of the sender would delete delivered rows
            await sender.ask(Sender.fan, 100, 0)
        assert len(await received(rt)) == 3
        assert outbox_rows(rt, sender) == 3  # kept: a restore now must not lose them
        store.stuck = set()
        await rt.replicated()
        for _ in range(5):
            await sender.ask(Sender.fan, 100, 0)
        assert outbox_rows(rt, sender) == 0
