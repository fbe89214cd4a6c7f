"""Exactly-once when an actor's mailbox comes back behind its ``data.db`` (a restore from the
replica, or a mailbox lost alone): a message delivered again, by a sender's outbox or by a
caller retrying with its idempotency key, is not applied twice, and new messages still are.

``data.db`` holds what decides it, in the turn's transaction: the last message applied from
each sending actor, and the outcome of each applied idempotent call. The mailbox's own cursors
only save work; a mailbox behind ``data.db`` accepts the delivery again, and the turn skips it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import apsw
import pytest
import trio

import actors
from runtime.files import db
from runtime.files.layout import DATA_FILE, MAILBOX_FILE, actor_dir, actor_id
from runtime.replica.shipper import restore_actor_files
from tests.support.agents import Counter
from tests.support.replication import FlakyStore, real_time, replication, wait_until

#: Rounds start soon after a commit: the tests wait on conditions, never on these delays.
FAST = actors.Replication(min_delay=0.005, max_delay=0.05)


class Inbox(actors.Actor, name="EoInbox"):
    """Records every message it applies (no unique constraint: a repeat shows)."""

    async def on_create(self) -> None:
        self.sql.execute("CREATE TABLE IF NOT EXISTS got(n INTEGER NOT NULL)")

    async def record(self, n: int) -> int:
        self.sql.execute("INSERT INTO got(n) VALUES (?)", (n,))
        return int(self.sql.query_value("SELECT count(*) FROM got"))

    @actors.query
    async def got(self) -> list[int]:
        return [row[0] for row in self.sql.execute("SELECT n FROM got ORDER BY rowid")]


class Relay(actors.Actor, name="EoRelay"):
    """Sends to an inbox from its own turns (through its outbox)."""

    async def fire(self, key: str, n: int) -> None:
        self.send(self.ref_to(Inbox, key), Inbox.record, n)


def _mailbox(root: Path, key: str) -> Path:
    return actor_dir(root, actor_id("EoInbox", key)) / MAILBOX_FILE


def _sender(root: Path, type_name: str, key: str) -> str:
    """The sender id an actor's outbox rows carry: its id and its incarnation."""
    aid = actor_id(type_name, key)
    conn = apsw.Connection(str(actor_dir(root, aid) / DATA_FILE))
    try:
        incarnation = int(db.scalar(conn, "SELECT incarnation FROM _torpor_state") or 0)
    finally:
        conn.close()
    return aid if incarnation <= 0 else f"{aid}.{incarnation}"


def _keep_copy(path: Path, into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal"):
        if Path(f"{path}{suffix}").exists():
            shutil.copy(f"{path}{suffix}", into / f"{path.name}{suffix}")


def _put_back(copy: Path, path: Path) -> None:
    for suffix in ("", "-wal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
        if (copy / f"{path.name}{suffix}").exists():
            shutil.copy(copy / f"{path.name}{suffix}", f"{path}{suffix}")


async def _wait_for(inbox: actors.Ref[Inbox], count: int) -> list[int]:
    """What the inbox applied, once it applied ``count`` messages (a bounded poll, in
    virtual time)."""
    for _ in range(1000):
        got = await inbox.ask(Inbox.got)
        if len(got) >= count:
            return got
        await trio.sleep(0.01)
    raise AssertionError(f"the inbox applied {got}, not {count} messages")


async def test_redelivery_into_a_mailbox_behind_data_is_not_applied_again(
    root: Path, tmp_path: Path
) -> None:
    """A sender's message delivered again into a mailbox that lost its cursor is not reapplied."""
    async with actors.open_runtime(root, types=[Inbox, Relay]) as rt:
        await rt.spawn(Inbox, key="b")  # created, nothing received
    _keep_copy(_mailbox(root, "b"), tmp_path / "before")
    async with actors.open_runtime(root, types=[Inbox, Relay]) as rt:
        for n in (1, 2, 3):
            await rt.ref(Relay, "a").ask(Relay.fire, "b", n)
        assert await _wait_for(rt.ref(Inbox, "b"), 3) == [1, 2, 3]
    # The mailbox comes back as it was before the deliveries (as a restore behind data.db
    # would bring it), and the sender's three outbox rows are delivered again.
    _put_back(tmp_path / "before", _mailbox(root, "b"))
    async with actors.open_runtime(root, types=[Inbox, Relay]) as rt:
        spec = rt._engine.specs["EoInbox"]
        sender = _sender(root, "EoRelay", "a")
        for seq, n in enumerate((1, 2, 3), start=1):
            await rt._engine.deliver(
                spec, "b", "record", rt._engine.codec.encode([[n], {}]), sender, seq
            )
        await rt.ref(Relay, "a").ask(Relay.fire, "b", 4)
        assert await _wait_for(rt.ref(Inbox, "b"), 4) == [1, 2, 3, 4]


async def test_idempotent_retry_into_a_mailbox_behind_data_returns_the_first_outcome(
    root: Path, tmp_path: Path
) -> None:
    """A call retried with its idempotency key after the mailbox lost the key runs once."""
    async with actors.open_runtime(root, types=[Inbox, Relay]) as rt:
        await rt.spawn(Inbox, key="b")
    _keep_copy(_mailbox(root, "b"), tmp_path / "before")
    async with actors.open_runtime(root, types=[Inbox, Relay]) as rt:
        inbox = rt.ref(Inbox, "b")
        assert await inbox.options(idempotency_key="pay-7").ask(Inbox.record, 7) == 1
    _put_back(tmp_path / "before", _mailbox(root, "b"))
    async with actors.open_runtime(root, types=[Inbox, Relay]) as rt:
        inbox = rt.ref(Inbox, "b")
        assert await inbox.options(idempotency_key="pay-7").ask(Inbox.record, 7) == 1
        await inbox.options(idempotency_key="pay-7").send(Inbox.record, 7)
        assert await inbox.ask(Inbox.record, 8) == 2
        assert await inbox.ask(Inbox.got) == [7, 8]


#: The child of the step-key test: a durable actor whose step records its idempotency key in
#: a file, then blocks until the process is killed (a machine lost in the middle of a call).
_CHILD = """
import sys, trio, actors

class Payer(actors.Actor, name="EoPayer"):
    durable = True

    async def pay(self, amount: int) -> str:
        return await self.step("charge", charge, amount)

async def charge(amount: int) -> str:
    key = actors.current_step().idempotency_key
    with open(sys.argv[3], "a") as f:
        f.write(key + "\\n")
    if sys.argv[4] == "block":
        print("CALLED", flush=True)
        await trio.sleep_forever()
    return key

async def main() -> None:
    store = actors.DirectoryStore(sys.argv[2])
    async with actors.open_runtime(sys.argv[1], types=[Payer], replica=store) as rt:
        ref = rt.ref(Payer, "alice")
        if sys.argv[4] == "block":
            await ref.send(Payer.pay, 5)  # durable: returns once in the replica
            print("SENT", flush=True)
            await trio.sleep_forever()
        # (bounded by the parent's timeout) until the restored turn has made its call again
        while len(open(sys.argv[3]).read().split()) < 2 or await rt.turns(ref):
            await trio.sleep(0.01)
        print("DONE", flush=True)

trio.run(main)
"""


def test_a_step_in_flight_keeps_its_idempotency_key_on_a_restored_machine(tmp_path: Path) -> None:
    """A call cut by a machine loss runs again elsewhere with the same idempotency key."""
    child = tmp_path / "child.py"
    child.write_text(_CHILD)
    keys = tmp_path / "keys.txt"
    replica = tmp_path / "replica"
    proc = subprocess.Popen(
        [sys.executable, str(child), str(tmp_path / "m1"), str(replica), str(keys), "block"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        # (bounded: the child prints both once the send is acknowledged and the call began)
        lines = {proc.stdout.readline().strip(), proc.stdout.readline().strip()}
        assert lines == {"CALLED", "SENT"}, lines
    finally:
        proc.kill()  # SIGKILL: the machine is gone, its directory with it
        proc.communicate()
    done = subprocess.run(
        [sys.executable, str(child), str(tmp_path / "m2"), str(replica), str(keys), "finish"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "DONE" in done.stdout, done.stderr
    first, second = keys.read_text().split()
    assert first == second


@real_time
async def test_a_delivery_to_an_actor_not_yet_restored_waits_for_its_files(
    tmp_path: Path,
) -> None:
    """A message sent to an actor whose files are still only in the replica is kept, once."""
    replica = actors.DirectoryStore(tmp_path / "replica")
    async with actors.open_runtime(
        tmp_path / "m1", types=[Inbox, Relay], replica=replica, replication=FAST
    ) as rt:
        for n in (1, 2):
            await rt.ref(Relay, "a").ask(Relay.fire, "b", n)
        assert await _poll(rt.ref(Inbox, "b"), 2) == [1, 2]
        await rt.replicated()
    # A fresh machine, one actor awake at a time: the relay's delivery cannot wake the inbox
    # (the relay holds the slot), so it meets the inbox's files only in the replica.
    async with actors.open_runtime(
        tmp_path / "m2", types=[Inbox, Relay], replica=replica, replication=FAST, max_awake=1
    ) as rt:
        await rt.ref(Relay, "a").ask(Relay.fire, "b", 3)
        assert await _poll(rt.ref(Inbox, "b"), 3) == [1, 2, 3]
    folder = actor_dir(tmp_path / "m2", actor_id("EoInbox", "b"))
    assert not list(folder.glob("superseded-*"))  # nothing was written before the restore


async def _poll(inbox: actors.Ref[Inbox], count: int, within: float = 10.0) -> list[int]:
    """What the inbox applied, once it applied ``count`` messages or ``within`` real seconds
    passed."""
    deadline = trio.current_time() + within
    got = await _got(inbox)
    while len(got) < count and trio.current_time() < deadline:
        await trio.sleep(0.02)
        got = await _got(inbox)
    return got


async def _got(inbox: actors.Ref[Inbox]) -> list[int]:
    try:
        return await inbox.ask(Inbox.got)
    except actors.ActorNotFoundError:
        return []  # no delivery created it yet (a query creates no actor)


#: The child of the unshipped-commit test: a counter whose hibernation snapshot hangs in the
#: store (every PUT does, once armed) until the process is killed.
_HIBERNATING_CHILD = """
import sys, threading, trio, actors
from tests.support.agents import Counter
from tests.support.replication import FlakyStore

class HangingStore(FlakyStore):
    armed = False

    def put(self, key, data, **kw):
        if self.armed:
            print("HANGING", flush=True)
            threading.Event().wait()  # until SIGKILL
        return super().put(key, data, **kw)

async def main() -> None:
    store = HangingStore(actors.DirectoryStore(sys.argv[2]))
    fast = actors.Replication(min_delay=0.005, max_delay=0.05)
    async with actors.open_runtime(
        sys.argv[1], types=[Counter], replica=store, replication=fast, idle_timeout=0.2
    ) as rt:
        ref = rt.ref(Counter, "c")
        await ref.ask(Counter.incr, 1)
        await rt.replicated()
        store.armed = True
        await ref.ask(Counter.incr, 10)  # committed here; its shipping and hibernation hang
        await trio.sleep_forever()

trio.run(main)
"""


def test_reopening_ships_commits_a_killed_hibernation_left_behind(tmp_path: Path) -> None:
    """A commit whose hibernation was killed mid-upload is shipped once the runtime reopens."""
    child = tmp_path / "child.py"
    child.write_text(_HIBERNATING_CHILD)
    replica = tmp_path / "replica"
    proc = subprocess.Popen(
        [sys.executable, str(child), str(tmp_path / "m1"), str(replica)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "HANGING"  # (bounded: the child prints it)
    finally:
        proc.kill()
        proc.communicate()

    async def reopen_then_lose_the_machine() -> int:
        store = actors.DirectoryStore(replica)
        async with actors.open_runtime(
            tmp_path / "m1", types=[Counter], replica=store, replication=FAST
        ) as rt:
            with trio.fail_after(30):
                await rt.replicated()
        async with actors.open_runtime(
            tmp_path / "m2", types=[Counter], replica=store, replication=FAST
        ) as rt:
            value: int = await rt.ref(Counter, "c").ask(Counter.value)
            return value

    assert trio.run(reopen_then_lose_the_machine) == 11


class _FailingFirst(FlakyStore):
    """Fails the first ``failures`` requests (a store that is flaky while a machine opens)."""

    def __init__(self, inner: actors.ReplicaStore, failures: int) -> None:
        super().__init__(inner)
        self.failures = failures

    def _check(self, kind: str) -> None:
        self._count(kind)
        if self.failures > 0:
            self.failures -= 1
            raise actors.ReplicaUnavailableError(f"injected: a flaky store ({kind})")


@real_time
async def test_a_fresh_machine_opens_through_a_flaky_store(tmp_path: Path) -> None:
    """Opening on an empty directory retries a flaky store instead of failing at once."""
    replica = actors.DirectoryStore(tmp_path / "replica")
    async with actors.open_runtime(
        tmp_path / "m1", types=[Counter], replica=replica, replication=FAST
    ) as rt:
        await rt.ref(Counter, "c").ask(Counter.incr, 5)
        await rt.replicated()
    flaky = _FailingFirst(replica, failures=4)
    async with actors.open_runtime(
        tmp_path / "m2", types=[Counter], replica=flaky, replication=FAST
    ) as rt:
        assert await rt.ref(Counter, "c").ask(Counter.value) == 5
    assert flaky.failures == 0


@real_time
async def test_an_actor_restored_to_an_earlier_point_is_heard_by_its_receivers(
    tmp_path: Path,
) -> None:
    """After restoring a sender to the past, its new messages arrive and old ones do not repeat."""
    store = actors.DirectoryStore(tmp_path / "replica")
    root = tmp_path / "rt"
    async with actors.open_runtime(
        root, types=[Inbox, Relay], replica=store, replication=FAST
    ) as rt:
        await rt.ref(Relay, "a").ask(Relay.fire, "b", 1)
        assert await _poll(rt.ref(Inbox, "b"), 1) == [1]
        await rt.replicated()
        at = time.time()
        for n in (2, 3):
            await rt.ref(Relay, "a").ask(Relay.fire, "b", n)
        assert await _poll(rt.ref(Inbox, "b"), 3) == [1, 2, 3]
        await rt.replicated()
    aid = actor_id("EoRelay", "a")
    restore_actor_files(store, aid, actor_dir(root, aid), at_time=at)
    async with actors.open_runtime(
        root, types=[Inbox, Relay], replica=store, replication=FAST
    ) as rt:
        await rt.ref(Relay, "a").ask(Relay.fire, "b", 4)  # its outbox numbers start again
        assert await _poll(rt.ref(Inbox, "b"), 4) == [1, 2, 3, 4]


class _StuckFor(FlakyStore):
    """Every write under the ``stuck`` prefixes fails (those files' snapshots never land)."""

    def __init__(self, inner: actors.ReplicaStore, stuck: set[str]) -> None:
        super().__init__(inner)
        self.stuck = stuck
        self.refused = 0

    def put(self, key: str, data: Any, **kw: Any) -> str:
        if any(key.startswith(prefix) for prefix in self.stuck):
            self._count("puts")
            self.refused += 1
            raise actors.ReplicaUnavailableError(f"injected: {key} cannot be written")
        return super().put(key, data, **kw)


@real_time
async def test_a_send_leaves_only_once_its_turn_is_in_the_replica(tmp_path: Path) -> None:
    """A message an actor sends is delivered only once the turn that sent it is in the replica."""
    # So a machine lost meanwhile never leaves a receiver holding a message its sender lost.
    replica = actors.DirectoryStore(tmp_path / "replica")
    lost, late = (f"actors/{actor_id('EoRelay', k)}/data.db" for k in ("a", "c"))
    store = _StuckFor(replica, {lost, late})  # neither relay's data.db reaches the store
    async with actors.open_runtime(
        tmp_path / "m1", types=[Inbox, Relay], replica=store, replication=FAST, shutdown_grace=0.5
    ) as rt:
        inbox = rt.ref(Inbox, "b")
        await rt.spawn(Inbox, key="b")  # the inbox exists and replicates
        await rt.ref(Relay, "a").ask(Relay.fire, "b", 1)
        await rt.ref(Relay, "c").ask(Relay.fire, "b", 2)
        await wait_until(lambda: store.refused >= 4, "the relays' writes refused")
        await wait_until(lambda: replication(rt).files_behind <= 2, "only the relays behind")
        assert await inbox.ask(Inbox.got) == []  # both held at their relay's gate
        store.stuck.discard(late)  # the store takes the second relay's turn now: 2 goes
        assert await _poll(inbox, 1) == [2]
        await wait_until(lambda: replication(rt).files_behind <= 1, "only relay a behind")
    # The machine is lost: a fresh one restores both from the replica. 1 was sent by a turn
    # the replica never had: its receiver does not hold it either.
    async with actors.open_runtime(
        tmp_path / "m2", types=[Inbox, Relay], replica=replica, replication=FAST
    ) as rt:
        assert await rt.ref(Inbox, "b").ask(Inbox.got) == [2]


@real_time
async def test_a_restored_machine_does_not_open_an_unknown_actor_empty_while_the_store_is_down(
    tmp_path: Path,
) -> None:
    """While the store is down, a message to an actor unknown here fails with a typed error."""
    # On a machine restored from the replica, an actor not here cannot be told apart from one only
    # in the replica while the store is down; once the store is back, it opens with its replicated
    # state.
    replica = actors.DirectoryStore(tmp_path / "replica")
    async with actors.open_runtime(
        tmp_path / "m1", types=[Inbox, Relay], replica=replica, replication=FAST
    ) as rt:
        assert await rt.ref(Inbox, "b").ask(Inbox.record, 1) == 1
        await rt.replicated()
    flaky = FlakyStore(replica)
    async with actors.open_runtime(
        tmp_path / "m2", types=[Inbox, Relay], replica=flaky, replication=FAST
    ) as rt:
        await rt.replicated()
        flaky.down = True
        with pytest.raises(actors.ReplicaUnavailableError):
            await rt.ref(Inbox, "new").ask(Inbox.record, 7)
        flaky.down = False
        assert await rt.ref(Inbox, "new").ask(Inbox.record, 7) == 1
        assert await rt.ref(Inbox, "b").ask(Inbox.got) == [1]
