"""Replication through the runtime API (DESIGN §6, §7): what a user of ``open_runtime(replica=)``
relies on.

Round trips onto an empty directory (byte for byte), restore of lost or corrupt actor files on
wake, point-in-time restore, fencing of a zombie writer (invariant 6), an unreachable store
(actors go on, statistics show it, everything catches up), durable mode, and idle actors costing
no request. Tests marked with ``make_store`` run on the directory store and on SeaweedFS S3
(``tests/support/s3_fixtures.py``).

They run on trio's real clock (``tests.support.replication.real_time``): the store is called from
worker threads, which a ``MockClock`` would not wait for. Every wait is a bounded poll.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

import actors
from runtime.files.layout import DATA_FILE, actor_id
from runtime.replica.replicator import Manifest, manifest_key, read_tail, restore
from runtime.replica.shipper import ReplicationEngine, restore_actor_files
from tests.support.agents import Counter
from tests.support.replication import (
    FlakyStore,
    all_hibernated,
    caught_up,
    folder_of,
    read_rows,
    real_time,
    remove_actor_files,
    replication,
    wait_until,
)
from tests.support.s3server import S3Server

MakeStore = Callable[[str], actors.ReplicaStore]

#: Rounds start soon after a commit: the tests wait on conditions, never on these delays.
FAST = actors.Replication(min_delay=0.005, max_delay=0.05)

#: How long a test waits for replication to catch up, in seconds (it takes milliseconds here;
#: after an outage, the round backoff adds up to about a second).
CATCH_UP = 10.0

#: How long the tests of once-known bugs wait before they call it a hang.
BUG_WAIT = 3.0


class Notes(actors.Actor, name="ReplNotes"):
    """State in a table of its own (rows big enough to span pages), and in kv."""

    async def on_create(self) -> None:
        self.sql.execute("CREATE TABLE IF NOT EXISTS notes(id INTEGER PRIMARY KEY, body TEXT)")

    async def add(self, body: str) -> int:
        self.sql.execute("INSERT INTO notes(body) VALUES (?)", (body,))
        count: int = self.kv.get("count", 0) + 1
        self.kv["count"] = count
        return count

    @actors.query
    async def bodies(self) -> list[str]:
        return [row[0] for row in self.sql.execute("SELECT body FROM notes ORDER BY id")]


class Durable(actors.Actor, name="ReplDurable"):
    """Replies only once the turn's commits are in the replica."""

    durable = True

    async def incr(self, by: int = 1) -> int:
        n: int = self.kv.get("n", 0) + by
        self.kv["n"] = n
        return n

    @actors.query
    async def value(self) -> int:
        return int(self.kv.get("n", 0))


TYPES = [Counter, Notes, Durable]


def open_rt(
    root: Path,
    store: actors.ReplicaStore,
    *,
    idle_timeout: float = 60.0,
    clock: Callable[[], float] = time.time,
    shutdown_grace: float = 5.0,
) -> contextlib.AbstractAsyncContextManager[actors.Runtime]:
    return actors.open_runtime(
        root,
        types=TYPES,
        replica=store,
        replication=FAST,
        idle_timeout=idle_timeout,
        clock=clock,
        shutdown_grace=shutdown_grace,
    )


def counter_log(db: Path) -> list[int]:
    """The ``log`` table of a Counter's data.db file (every increment, in order)."""
    return [row[0] for row in read_rows(db, "SELECT by FROM log ORDER BY rowid")]


def data_name(type_name: str, key: str) -> str:
    return ReplicationEngine.actor_name(actor_id(type_name, key), DATA_FILE)


def reports_text(rt: actors.Runtime) -> str:
    return "\n".join(rt.reports)


# -- stores ---------------------------------------------------------------------------------


@pytest.fixture(params=["directory", "s3"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeStore]:
    """Make store objects by name; one name is one replica (a directory, or an S3 prefix of
    this test's own). Two calls with one name give two clients of the same replica, as two
    machines would have."""
    made: list[actors.ReplicaStore] = []
    base = f"test-{uuid.uuid4().hex[:12]}"

    def make(name: str) -> actors.ReplicaStore:
        store: actors.ReplicaStore
        if request.param == "directory":
            store = actors.DirectoryStore(tmp_path / name)
        else:
            server: S3Server = request.getfixturevalue("s3_credentials")
            store = actors.S3Store(
                server.bucket,
                prefix=f"{base}/{name}",
                endpoint_url=server.endpoint_url,
                region=server.region,
                path_style=True,
            )
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


@pytest.fixture
def store(tmp_path: Path) -> actors.DirectoryStore:
    return actors.DirectoryStore(tmp_path / "replica")


# -- 1. round trip onto an empty directory ------------------------------------------------


COUNTERS = {"a": [1, 2, 3], "b": [10], "c": [5, 5, 5, 5, 5, 5, 5, 5]}
NOTES = {"n1": ["hello", "w\u00f6rld"], "n2": ["x" * 5000, "y" * 9000]}


@real_time
async def test_round_trip_onto_an_empty_directory(make_store: MakeStore, tmp_path: Path) -> None:
    """An empty directory on a closed runtime's replica gets every actor's state, byte for byte."""
    # The source runtime is closed gracefully; every actor's state is there, and each restored
    # data.db is the source's byte for byte.
    source, target = tmp_path / "source", tmp_path / "target"
    expected: dict[tuple[str, str], object] = {}
    async with open_rt(source, make_store("replica")) as rt:
        for key, steps in COUNTERS.items():
            for by in steps:
                await rt.ref(Counter, key).ask(Counter.incr, by)
        for key, bodies in NOTES.items():
            for body in bodies:
                await rt.ref(Notes, key).ask(Notes.add, body)
        for key in COUNTERS:
            ref = rt.ref(Counter, key)
            expected["Counter", key] = (await ref.ask(Counter.value), await ref.ask(Counter.log))
        for key in NOTES:
            expected["ReplNotes", key] = await rt.ref(Notes, key).ask(Notes.bodies)
    assert expected["Counter", "c"] == (40, [5] * 8)
    source_bytes = {
        (t, k): (folder_of(source, t, k) / DATA_FILE).read_bytes() for (t, k) in expected
    }

    # Another machine: a fresh directory and its own client of the replica.
    async with open_rt(target, make_store("replica")) as rt:
        assert (target / "directory.db").exists()
        for key in COUNTERS:
            ref = rt.ref(Counter, key)
            got = (await ref.ask(Counter.value), await ref.ask(Counter.log))
            assert got == expected["Counter", key], key
        for key in NOTES:
            assert await rt.ref(Notes, key).ask(Notes.bodies) == expected["ReplNotes", key]
        stats = replication(rt)
        assert stats.restores >= 1 + len(expected)  # directory.db, then each actor on wake
        assert stats.errors == 0, stats.last_error
        # The restored actors go on from there.
        assert await rt.ref(Counter, "a").ask(Counter.incr, 100) == 106
    for (type_name, key), data in source_bytes.items():
        if (type_name, key) == ("Counter", "a"):
            continue  # written since
        restored = (folder_of(target, type_name, key) / DATA_FILE).read_bytes()
        assert restored == data, (type_name, key)

    # A plain restore of the files gives the same bytes too (the replica's latest state is
    # the target's now, which changed only Counter 'a').
    for (type_name, key), data in source_bytes.items():
        folder = tmp_path / "plain" / type_name / key
        restore_actor_files(make_store("replica"), actor_id(type_name, key), folder)
        if (type_name, key) == ("Counter", "a"):
            assert counter_log(folder / DATA_FILE) == [1, 2, 3, 100]
        else:
            assert (folder / DATA_FILE).read_bytes() == data, (type_name, key)


# -- 2. lost files are restored on the next message ---------------------------------------


@real_time
async def test_lost_actor_files_are_restored_on_the_next_message(
    store: actors.DirectoryStore, tmp_path: Path
) -> None:
    """An actor whose folder was emptied while closed is restored from the replica when messaged."""
    # It has its state and goes on; the other actors are untouched.
    root = tmp_path / "rt"
    async with open_rt(root, store, idle_timeout=0.2) as rt:
        for key in "xyz":
            for by in (1, 2, 3):
                await rt.ref(Counter, key).ask(Counter.incr, by)
        await all_hibernated(rt)
    removed = remove_actor_files(folder_of(root, "Counter", "y"))
    assert {"data.db", "mailbox.db"} <= set(removed)

    async with open_rt(root, store, idle_timeout=0.2) as rt:
        y = rt.ref(Counter, "y")
        assert await y.ask(Counter.value) == 6
        assert await y.ask(Counter.log) == [1, 2, 3]
        assert (folder_of(root, "Counter", "y") / DATA_FILE).exists()
        assert replication(rt).restores == 1  # y only: x and z had their files
        assert await rt.ref(Counter, "x").ask(Counter.log) == [1, 2, 3]
        assert await y.ask(Counter.incr, 4) == 10
        await all_hibernated(rt)
    folder = tmp_path / "check"
    restore_actor_files(store, actor_id("Counter", "y"), folder)
    assert counter_log(folder / DATA_FILE) == [1, 2, 3, 4]


# -- 3. point-in-time restore ---------------------------------------------------------------


BATCHES = [[1, 2], [3], [4, 5, 6], [7]]


@real_time
async def test_point_in_time_restore(make_store: MakeStore, tmp_path: Path) -> None:
    """A restore at a noted time or txid gives exactly the state after that batch of writes."""
    # Time and txid are noted between batches of writes. Checked while the runtime runs (the chain's
    # tail is in its log) and after it closed (an earlier generation).
    store = make_store("replica")
    start = time.time()
    offset = [0.0]  # the runtime's clock: wall time, moved on by hand between batches

    def clock() -> float:
        return start + offset[0]

    aid = actor_id("Counter", "p")
    name = data_name("Counter", "p")
    points: list[tuple[float, int, list[int]]] = []  # (time, txid, log) after each batch
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    async with open_rt(tmp_path / "rt", store, clock=clock) as rt:
        ref = rt.ref(Counter, "p")
        log: list[int] = []
        for i, batch in enumerate(BATCHES):
            offset[0] = 10.0 * (i + 1)
            for by in batch:
                await ref.ask(Counter.incr, by)
                log.append(by)
            await caught_up(rt, within=CATCH_UP)
            latest = restore(store, name, scratch / f"latest-{i}.db")
            assert counter_log(scratch / f"latest-{i}.db") == log
            points.append((clock() + 5.0, latest.txid, list(log)))
        assert [p[1] for p in points] == sorted({p[1] for p in points})  # txids increase

        for i, (at, txid, expected) in enumerate(points):
            folder = scratch / f"live-time-{i}"
            restore_actor_files(store, aid, folder, at_time=at)
            assert counter_log(folder / DATA_FILE) == expected, f"at_time after batch {i}"
            result = restore(store, name, scratch / f"live-txid-{i}.db", at_txid=txid)
            assert result.txid == txid
            assert counter_log(scratch / f"live-txid-{i}.db") == expected

    # Closed: hibernation took a new snapshot, the batches are now an earlier generation.
    got = store.get(manifest_key(name))
    assert got is not None
    manifest = Manifest.decode(got[0], key=manifest_key(name))
    assert manifest.history, "the hibernation snapshot starts a new generation"
    assert read_tail(store, manifest) == []
    for i, (at, txid, expected) in enumerate(points):
        folder = scratch / f"closed-time-{i}"
        restore_actor_files(store, aid, folder, at_time=at)
        assert counter_log(folder / DATA_FILE) == expected, f"at_time after batch {i}"
        folder = scratch / f"closed-txid-{i}"
        restore_actor_files(store, aid, folder, at_txid=txid)
        assert counter_log(folder / DATA_FILE) == expected, f"at_txid after batch {i}"
    with pytest.raises(actors.RestorePointError):
        restore(store, name, scratch / "future.db", at_txid=manifest.txid + 1)


# -- 4. a zombie writer is fenced (DESIGN §7 invariant 6) --------------------------------


@pytest.mark.parametrize("a_state", ["awake", "hibernated"])
@real_time
async def test_zombie_writer_is_fenced(make_store: MakeStore, tmp_path: Path, a_state: str) -> None:
    """When runtime B takes an actor over from A, A's next write is fenced; B's history is kept."""
    # Both runtimes are open on one replica; B restores A's replicated state; A's next write stops
    # the actor in A (fenced, reported), and the replica keeps B's history only.
    a_idle = 60.0 if a_state == "awake" else 0.2
    async with open_rt(tmp_path / "a", make_store("replica"), idle_timeout=a_idle) as rt_a:
        xa = rt_a.ref(Counter, "x")
        for _ in range(3):
            await xa.ask(Counter.incr, 1)
        if a_state == "awake":
            await caught_up(rt_a, within=CATCH_UP)
            assert rt_a.statistics().awake == 1
        else:
            await all_hibernated(rt_a, within=CATCH_UP)

        # B: another directory, no files of X: takes X over and restores it.
        async with open_rt(tmp_path / "b", make_store("replica"), idle_timeout=0.2) as rt_b:
            xb = rt_b.ref(Counter, "x")
            assert await xb.ask(Counter.log) == [1, 1, 1]  # A's acknowledged state
            assert await xb.ask(Counter.incr, 10) == 13
            await all_hibernated(rt_b, within=CATCH_UP)

            # A's X gets another message: A must stop X, not write the replica.
            with contextlib.suppress(actors.ActorStoppedError):
                await xa.ask(Counter.incr, 100)  # applied locally at most (not durable)
            await wait_until(
                lambda: rt_a.statistics().stopped == 1, "X stopped in A", within=CATCH_UP
            )
            assert "Counter 'x' stopped: another runtime" in reports_text(rt_a)
            assert replication(rt_a).fenced >= 1
            with pytest.raises(actors.ActorStoppedError):
                await xa.ask(Counter.value)
            with pytest.raises(actors.ActorStoppedError):
                await xa.ask(Counter.incr, 1000)

            # B goes on as the owner.
            assert await xb.ask(Counter.incr, 20) == 33
            await all_hibernated(rt_b, within=CATCH_UP)
            assert replication(rt_b).fenced == 0
            assert "another runtime" not in reports_text(rt_b)

    # The replica holds B's history, never A's writes after the takeover.
    folder = tmp_path / "restored"
    restore_actor_files(make_store("replica"), actor_id("Counter", "x"), folder)
    assert counter_log(folder / DATA_FILE) == [1, 1, 1, 10, 20]
    async with open_rt(tmp_path / "c", make_store("replica")) as rt_c:
        xc = rt_c.ref(Counter, "x")
        assert await xc.ask(Counter.log) == [1, 1, 1, 10, 20]
        assert await xc.ask(Counter.value) == 33


@real_time
async def test_an_old_directory_reopened_does_not_override_newer_replica(
    store: actors.DirectoryStore, tmp_path: Path
) -> None:
    """An old directory reopened never loses a write that another machine has since acknowledged."""
    # Machine A closes; B restores from the replica and acknowledges a write; A's directory opened
    # again either restores the newer state or refuses with a clear error.
    async with open_rt(tmp_path / "a", store, idle_timeout=0.2) as rt:
        assert await rt.ref(Counter, "x").ask(Counter.incr, 1) == 1
    async with open_rt(tmp_path / "b", store, idle_timeout=0.2) as rt:
        assert await rt.ref(Counter, "x").ask(Counter.incr, 10) == 11
    try:
        async with open_rt(tmp_path / "a", store, idle_timeout=0.2) as rt:
            value = await rt.ref(Counter, "x").ask(Counter.value)
            assert value == 11, "A went on from its stale local copy"
    except actors.ActorError:
        pass  # a clear refusal is fine too
    folder = tmp_path / "restored"
    restore_actor_files(store, actor_id("Counter", "x"), folder)
    assert 10 in counter_log(folder / DATA_FILE), "B's acknowledged write is gone"


# -- 5. the store goes down, and comes back -----------------------------------------------


@pytest.mark.parametrize(
    "idle_timeout",
    [
        pytest.param(
            60.0,
            id="awake",
        ),
        pytest.param(0.2, id="hibernating"),
    ],
)
@real_time
async def test_store_down_then_back(
    store: actors.DirectoryStore, tmp_path: Path, idle_timeout: float
) -> None:
    """Actors keep answering in a store outage, which statistics show, and catch up after it."""
    # Statistics show errors, files behind and a growing lag; afterwards a fresh restore has every
    # write. With a short idle timeout, actors also hibernate during the outage.
    flaky = FlakyStore(store)
    async with open_rt(tmp_path / "rt", flaky, idle_timeout=idle_timeout) as rt:
        old = rt.ref(Counter, "old")
        assert await old.ask(Counter.incr, 1) == 1
        await caught_up(rt, within=CATCH_UP)

        flaky.down = True
        assert await old.ask(Counter.incr, 2) == 3
        new = rt.ref(Counter, "new")  # first woken while the store is down
        assert await new.ask(Counter.incr, 5) == 5
        await rt.ref(Notes, "n").ask(Notes.add, "written during the outage")
        await wait_until(lambda: replication(rt).errors > 0, "errors > 0", within=CATCH_UP)
        stats = replication(rt)
        assert stats.files_behind > 0
        assert stats.last_error is not None and "injected" in stats.last_error
        lag = stats.lag
        assert lag > 0
        await trio.sleep(0.3)  # the outage goes on: the lag grows with it
        assert replication(rt).lag >= lag + 0.25
        if idle_timeout < 1:
            # Actors hibernate during the outage: their snapshots cannot be stored, they stay
            # behind (and are woken to catch up once the store is back).
            await wait_until(lambda: rt.statistics().awake == 0, "hibernation", within=CATCH_UP)
            assert replication(rt).files_behind >= 3
        assert await old.ask(Counter.incr, 3) == 6  # still answering
        assert await old.ask(Counter.log) == [1, 2, 3]

        flaky.down = False
        await wait_until(
            lambda: replication(rt).files_behind == 0,
            "catching up",
            within=CATCH_UP if idle_timeout < 1 else BUG_WAIT,
        )
        stats = replication(rt)
        assert stats.lag == 0.0
        assert stats.last_error is None
        assert stats.lag_p99 is not None and stats.lag_p99 >= 0.3  # the outage's commits

    async with open_rt(tmp_path / "fresh", store) as rt:
        assert await rt.ref(Counter, "old").ask(Counter.log) == [1, 2, 3]
        assert await rt.ref(Counter, "new").ask(Counter.log) == [5]
        assert await rt.ref(Notes, "n").ask(Notes.bodies) == ["written during the outage"]


# -- 6. durable mode ------------------------------------------------------------------------


@real_time
async def test_durable_reply_waits_for_the_replica(
    store: actors.DirectoryStore, tmp_path: Path
) -> None:
    """A durable actor's reply waits out a store outage; a non-durable actor answers meanwhile."""
    flaky = FlakyStore(store)
    async with open_rt(tmp_path / "rt", flaky) as rt:
        d = rt.ref(Durable, "d")
        assert await d.ask(Durable.incr) == 1
        await caught_up(rt, within=CATCH_UP)

        flaky.down = True
        with trio.move_on_after(1.0) as scope:
            await d.ask(Durable.incr)
        assert scope.cancelled_caught, "a durable reply came while the store was down"
        assert await rt.ref(Counter, "c").ask(Counter.incr, 7) == 7  # not durable: answers

        flaky.down = False
        with trio.move_on_after(CATCH_UP) as scope:
            # The message of the ask given up above was sent (it is in the mailbox): it ran.
            assert await d.ask(Durable.incr) == 3
        assert not scope.cancelled_caught, "the durable reply never came"
    async with open_rt(tmp_path / "fresh", store) as rt:
        assert await rt.ref(Durable, "d").ask(Durable.value) == 3


@pytest.mark.parametrize("how", ["restarted", "woken while down"])
@real_time
async def test_durable_reply_comes_after_a_restart_or_outage(
    store: actors.DirectoryStore, tmp_path: Path, how: str
) -> None:
    """A durable actor answers once its commit is replicated, after a reopen or an outage wake."""
    # The two cases: its first message after the runtime was reopened, and its first wake-up while
    # the store was down.
    flaky = FlakyStore(store)
    root = tmp_path / "rt"
    if how == "restarted":
        async with open_rt(root, flaky) as rt:
            assert await rt.ref(Durable, "d").ask(Durable.incr) == 1
    async with open_rt(root, flaky, shutdown_grace=0.5) as rt:
        d = rt.ref(Durable, "d")
        if how == "woken while down":
            flaky.down = True
            with trio.move_on_after(1.0):
                await d.ask(Durable.incr)
            flaky.down = False
        with trio.move_on_after(BUG_WAIT) as scope:
            assert await d.ask(Durable.incr) == 2
        assert not scope.cancelled_caught, "the durable reply never came"


@pytest.mark.parametrize("call", ["send", "ask"])
@real_time
async def test_a_durable_retry_after_a_restart_is_acknowledged_once_replicated(
    store: actors.DirectoryStore, tmp_path: Path, call: str
) -> None:
    """A durable retry after a restart is acked only once the first one is in the replica."""
    # A send or an ask retried with its idempotency key: the local files alone never acknowledge it.
    flaky = FlakyStore(store)
    root = tmp_path / "rt"

    async def call_it(rt: actors.Runtime) -> Any:
        d = rt.ref(Durable, "d")
        if call == "send":
            return await d.options(idempotency_key="k").send(Durable.incr)
        return await d.options(idempotency_key="k").ask(Durable.incr)

    async with open_rt(root, flaky, shutdown_grace=0.2) as rt:
        await rt.replicated()
        flaky.down = True
        with trio.move_on_after(0.5) as scope:
            await call_it(rt)  # applied (or stored) here, not replicated: no acknowledgement
        assert scope.cancelled_caught
    async with open_rt(root, flaky, shutdown_grace=0.2) as rt:
        with trio.move_on_after(0.5) as scope:
            await call_it(rt)  # the retry: still only on this machine
        assert scope.cancelled_caught, "acknowledged while nothing was in the replica"
        flaky.down = False
        with trio.move_on_after(BUG_WAIT) as scope:
            answer = await call_it(rt)
        assert not scope.cancelled_caught, "the retry was never acknowledged"
        if call == "ask":
            assert answer == 1
    async with open_rt(tmp_path / "fresh", store) as rt:
        assert await rt.ref(Durable, "d").ask(Durable.value) == 1


@real_time
async def test_writes_after_a_restore_replicate_while_the_actor_stays_awake(
    store: actors.DirectoryStore, tmp_path: Path
) -> None:
    """After a reopen or restore, an awake actor's writes reach the replica within the delay."""
    # Not only when it hibernates; a restore onto a fresh directory is checked as well as a reopen.
    async with open_rt(tmp_path / "a", store) as rt:
        assert await rt.ref(Counter, "x").ask(Counter.incr, 1) == 1
    async with open_rt(tmp_path / "b", store) as rt:
        assert await rt.ref(Counter, "x").ask(Counter.incr, 2) == 3
        await caught_up(rt, within=BUG_WAIT)


# -- 7. idle actors cost nothing --------------------------------------------------------------


@real_time
async def test_idle_actors_make_no_requests(store: actors.DirectoryStore, tmp_path: Path) -> None:
    """Once actors hibernated and everything is replicated, time passing costs no request."""
    counting = FlakyStore(store)
    async with open_rt(tmp_path / "rt", counting, idle_timeout=0.2) as rt:
        for key in "abcde":
            await rt.ref(Counter, key).ask(Counter.incr, 1)
        await rt.ref(Notes, "n").ask(Notes.add, "x")
        await all_hibernated(rt, within=CATCH_UP)
        assert rt.statistics().hibernations >= 6
        before, engine_before = counting.statistics(), replication(rt).requests
        await trio.sleep(2.0)
        assert counting.statistics() == before
        assert replication(rt).requests == engine_before
        assert replication(rt).files_behind == 0


# -- 8. a corrupt local file -------------------------------------------------------------------


def corrupt(db: Path, where: str) -> None:
    data = bytearray(db.read_bytes())
    page = 4096
    assert len(data) >= 4 * page
    if where == "header":
        data[0:100] = b"\xff" * 100
    else:  # every page but the first, from the middle to the end
        for start in range(page, len(data), page):
            data[start + page // 2 : start + page] = b"\xa5" * (page // 2)
    db.write_bytes(bytes(data))


@pytest.mark.parametrize("where", ["header", "pages"])
@real_time
async def test_corrupt_local_file(store: actors.DirectoryStore, tmp_path: Path, where: str) -> None:
    """A hibernated actor's corrupt or deleted data.db is restored from the replica."""
    # Corrupted on disk while the runtime was closed, the next message may get a typed
    # CorruptFileError or the restored actor (what this runtime does: it reports it). With its files
    # deleted, the next message restores its last replicated state.
    root = tmp_path / "rt"
    async with open_rt(root, store, idle_timeout=0.2) as rt:
        for by in (1, 2, 3):
            await rt.ref(Counter, "x").ask(Counter.incr, by)
        await all_hibernated(rt)
    folder = folder_of(root, "Counter", "x")
    corrupt(folder / DATA_FILE, where)

    async with open_rt(root, store, idle_timeout=0.2) as rt:
        x = rt.ref(Counter, "x")
        try:
            log = await x.ask(Counter.log)
        except actors.CorruptFileError as exc:
            # A clear, typed refusal; nothing was written.
            assert exc.path.endswith(DATA_FILE)
            with pytest.raises(actors.CorruptFileError):
                await x.ask(Counter.incr, 4)
            last = [1, 2, 3]
        else:
            # Restored from the replica at once (this runtime does that), and reported.
            assert log == [1, 2, 3]
            assert "restoring it from the replica" in reports_text(rt)
            assert replication(rt).restores == 1
            assert await x.ask(Counter.incr, 4) == 10
            last = [1, 2, 3, 4]
        await all_hibernated(rt)

        # Files lost while the runtime is open (the actor hibernated): restored on the next
        # message, at the last replicated state.
        remove_actor_files(folder)
        assert await x.ask(Counter.log) == last
        assert await x.ask(Counter.value) == sum(last)


@real_time
async def test_corruption_found_by_a_handler(store: actors.DirectoryStore, tmp_path: Path) -> None:
    """Corruption a handler meets raises CorruptFileError to its caller; the replica stays sound."""
    # The bad page is one only a handler reads; the caller may instead get the replicated state.
    root = tmp_path / "rt"
    async with open_rt(root, store, idle_timeout=0.2) as rt:
        for by in (1, 2, 3):
            await rt.ref(Counter, "x").ask(Counter.incr, by)
        await all_hibernated(rt)
    db = folder_of(root, "Counter", "x") / DATA_FILE
    ((rootpage,),) = read_rows(db, "SELECT rootpage FROM sqlite_master WHERE name = 'log'")
    data = bytearray(db.read_bytes())
    start = (rootpage - 1) * 4096
    data[start : start + 8] = b"\xff" * 8  # the b-tree page header of the log table
    db.write_bytes(bytes(data))

    async with open_rt(root, store, idle_timeout=0.2) as rt:
        with contextlib.suppress(actors.CorruptFileError):
            assert await rt.ref(Counter, "x").ask(Counter.log) == [1, 2, 3]
        await all_hibernated(rt)
    folder = tmp_path / "restored"
    restore_actor_files(store, actor_id("Counter", "x"), folder)
    assert read_rows(folder / DATA_FILE, "PRAGMA integrity_check") == [("ok",)]
    assert counter_log(folder / DATA_FILE) == [1, 2, 3]
