"""Turn semantics (DESIGN §4): one transaction per turn, replies, ordering, queries, failures."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anyio
import apsw
import pytest

import actors
from runtime.files.layout import actor_dir, actor_id
from tests.support.agents import Counter

pytestmark = pytest.mark.both_backends


def mailbox_rows(root: Path, type_name: str, key: str, table: str = "inbox") -> list[Any]:
    path = actor_dir(root, actor_id(type_name, key)) / "mailbox.db"
    conn = apsw.Connection(str(path))
    try:
        return conn.execute(f"SELECT * FROM {table}").fetchall()
    finally:
        conn.close()


async def test_quickstart_send_ask_spawn(root: Path) -> None:
    """The issue's example: send, ask and spawn, with on_create's argument applied first."""
    async with actors.open_runtime(root, types=[Counter]) as rt:
        ref = rt.ref(Counter, "user-42")
        await ref.send(Counter.incr, 1)
        assert await ref.ask(Counter.incr, 2) == 3
        other = await rt.spawn(Counter, 10)
        assert len(other.key) == 32
        assert await other.ask(Counter.value) == 10
        assert await other.ask(Counter.incr) == 11


async def test_state_survives_reopen(root: Path) -> None:
    """kv and the actor's own tables are still there after the runtime is closed and reopened."""
    async with actors.open_runtime(root, types=[Counter]) as rt:
        ref = rt.ref(Counter, "a")
        for by in (1, 2, 3):
            await ref.ask(Counter.incr, by)
    async with actors.open_runtime(root, types=[Counter]) as rt:
        ref = rt.ref(Counter, "a")
        assert await ref.ask(Counter.value) == 6
        assert await ref.ask(Counter.log) == [1, 2, 3]


async def test_sent_messages_run_after_reopen(root: Path) -> None:
    """A message acknowledged but not yet applied at close runs when the runtime reopens."""

    class Slow(actors.Actor, name="Slow"):
        async def put(self, value: int) -> None:
            self.kv.setdefault("values", [])
            self.kv["values"] = [*self.kv["values"], value]

        @actors.query
        async def values(self) -> list[int]:
            return list(self.kv.get("values", []))

    async with actors.open_runtime(root, types=[Slow]) as rt:
        ref = rt.ref(Slow, "s")
        for i in range(5):
            await ref.send(Slow.put, i)
        # Close at once: some of the five may not have been applied yet.
    async with actors.open_runtime(root, types=[Slow]) as rt:
        ref = rt.ref(Slow, "s")
        await ref.ask(Slow.put, 5)
        assert await ref.ask(Slow.values) == [0, 1, 2, 3, 4, 5]


async def test_spawn_with_taken_key_raises(root: Path) -> None:
    """spawn with a key that exists raises ActorExistsError and leaves the actor unchanged."""
    async with actors.open_runtime(root, types=[Counter]) as rt:
        ref = await rt.spawn(Counter, 5, key="k")
        with pytest.raises(actors.ActorExistsError):
            await rt.spawn(Counter, 7, key="k")
        assert await ref.ask(Counter.value) == 5


async def test_on_create_runs_once(root: Path) -> None:
    """on_create runs exactly once, before the first message, and not again on reopen."""

    class Made(actors.Actor, name="Made"):
        async def on_create(self) -> None:
            self.kv["created"] = self.kv.get("created", 0) + 1

        async def created(self) -> int:
            return int(self.kv["created"])

    for _ in range(2):
        async with actors.open_runtime(root, types=[Made]) as rt:
            assert await rt.ref(Made, "m").ask(Made.created) == 1


async def test_get_or_create_refuses_type_needing_arguments(root: Path) -> None:
    """A message to a missing actor whose on_create needs arguments raises ActorNotFoundError."""

    class Account(actors.Actor, name="Account"):
        async def on_create(self, owner: str) -> None:
            self.kv["owner"] = owner

        async def owner(self) -> str:
            return str(self.kv["owner"])

    async with actors.open_runtime(root, types=[Account]) as rt:
        with pytest.raises(actors.ActorNotFoundError, match=r"rt\.spawn"):
            await rt.ref(Account, "x").ask(Account.owner)
        assert rt._engine.directory.count() == 0  # nothing was created or stored
        assert not (root / "actors").exists()
        ref = await rt.spawn(Account, "ann", key="x")
        assert await ref.ask(Account.owner) == "ann"


async def test_order_per_sender_and_group_commit(root: Path) -> None:
    """Many sends from one task are applied in send order; queued ones several per transaction."""
    async with actors.open_runtime(root, types=[Counter]) as rt:
        ref = rt.ref(Counter, "o")
        for i in range(500):
            await ref.send(Counter.incr, i)
        await ref.ask(Counter.incr, 0)
        assert await ref.ask(Counter.log) == [*range(500), 0]
        assert rt.statistics().messages_applied == 501
    # Whether the actor keeps up with one sender, one message per turn, is up to the scheduler
    # (on asyncio it always does): queue the messages behind a turn to see them grouped.
    gate = anyio.Event()

    class Held(actors.Actor, name="Held"):
        async def hold(self) -> None:
            await gate.wait()

        async def add(self, i: int) -> None:
            self.kv["log"] = [*self.kv.get("log", []), i]

        @actors.query
        async def log(self) -> list[int]:
            return list(self.kv.get("log", []))

    async with actors.open_runtime(root.parent / "held", types=[Held]) as rt:
        held = rt.ref(Held, "h")
        await held.send(Held.hold)
        for i in range(500):
            await held.send(Held.add, i)
        gate.set()
        await held.ask(Held.add, 0)
        assert await held.ask(Held.log) == [*range(500), 0]
        stats = rt.statistics()
        assert stats.messages_applied == 502
        assert stats.turns < stats.messages_applied


async def test_concurrent_senders_each_in_order(root: Path) -> None:
    """Three tasks sending at once: each one's messages are applied in its own order."""

    class Log(actors.Actor, name="Log"):
        async def add(self, sender: int, i: int) -> None:
            self.kv[f"{sender}:{i}"] = len(self.kv)

        @actors.query
        async def order(self) -> dict[str, int]:
            return dict(self.kv.items())

    async with actors.open_runtime(root, types=[Log]) as rt:
        ref = rt.ref(Log, "l")

        async def sender(s: int) -> None:
            for i in range(50):
                await ref.send(Log.add, s, i)

        async with anyio.create_task_group() as tg:
            for s in range(3):
                tg.start_soon(sender, s)
        await ref.ask(Log.add, 9, 0)
        order = await ref.ask(Log.order)
        for s in range(3):
            positions = [order[f"{s}:{i}"] for i in range(50)]
            assert positions == sorted(positions)


async def test_query_runs_beside_a_turn_on_committed_state(root: Path) -> None:
    """A @query answers while a turn is in progress, and sees only committed state."""
    gate = anyio.Event()
    entered = anyio.Event()

    class Gated(actors.Actor, name="Gated"):
        async def bump(self) -> None:
            self.kv["n"] = self.kv.get("n", 0) + 1
            entered.set()
            await gate.wait()

        @actors.query
        async def n(self) -> int:
            return int(self.kv.get("n", 0))

    async with actors.open_runtime(root, types=[Gated]) as rt:
        ref = rt.ref(Gated, "g")
        async with anyio.create_task_group() as tg:
            tg.start_soon(ref.ask, Gated.bump)
            await entered.wait()
            assert await ref.ask(Gated.n) == 0  # the turn has written 1 but not committed
            gate.set()
        assert await ref.ask(Gated.n) == 1


async def test_query_is_read_only(root: Path) -> None:
    """Writes inside a @query are refused, for kv, SQL and sends."""

    class Sneaky(actors.Actor, name="Sneaky"):
        @actors.query
        async def kv_write(self) -> None:
            self.kv["x"] = 1

        @actors.query
        async def sql_write(self) -> None:
            self.sql.execute("CREATE TABLE t(x)")

        @actors.query
        async def send_from_query(self) -> None:
            self.send(self.ref, Sneaky.kv_write)

    async with actors.open_runtime(root, types=[Sneaky]) as rt:
        ref = await rt.spawn(Sneaky, key="s")  # (a query creates no actor)
        with pytest.raises(RuntimeError, match="read-only"):
            await ref.ask(Sneaky.kv_write)
        with pytest.raises(apsw.AuthError):
            await ref.ask(Sneaky.sql_write)
        with pytest.raises(RuntimeError, match="@query"):
            await ref.ask(Sneaky.send_from_query)
        with pytest.raises(TypeError, match="@query"):
            await ref.send(Sneaky.kv_write)


async def test_failed_turn_rolls_back_retries_then_dead_letters(root: Path) -> None:
    """A raising handler rolls back, is retried, then dead-lettered; the actor goes on."""
    attempts: list[int] = []

    class Flaky(actors.Actor, name="Flaky"):
        retry = actors.Retry(max_attempts=3, initial_delay=1.0)

        async def boom(self, tag: str) -> None:
            self.kv["dirty"] = tag
            self.sql.execute("CREATE TABLE IF NOT EXISTS t(x)")
            self.sql.execute("INSERT INTO t VALUES (1)")
            attempts.append(1)
            raise ValueError(f"boom {tag}")

        async def ok(self) -> str:
            return "fine"

        @actors.query
        async def dirty(self) -> Any:
            tables = self.sql.query("SELECT name FROM sqlite_schema WHERE name = 't'")
            return self.kv.get("dirty"), tables

    async with actors.open_runtime(root, types=[Flaky]) as rt:
        ref = rt.ref(Flaky, "f")
        start = anyio.current_time()
        with pytest.raises(actors.MessageFailedError) as info:
            await ref.ask(Flaky.boom, "x")
        assert isinstance(info.value.__cause__, ValueError)
        assert str(info.value.__cause__) == "boom x"
        assert info.value.attempts == 3
        assert len(attempts) == 3
        # Backoff 1 s then 2 s (±20% jitter), in virtual time.
        assert 2.4 <= anyio.current_time() - start <= 3.6
        assert await ref.ask(Flaky.dirty) == (None, [])
        assert await ref.ask(Flaky.ok) == "fine"
        letters = await rt.dead_letters(ref)
        assert [(d.method, d.args, d.attempts, d.error_type) for d in letters] == [
            ("boom", ("x",), 3, "ValueError")
        ]
        assert "boom x" in letters[0].traceback
        assert rt.statistics().dead_letters == 1
        assert rt.statistics().retries == 2


async def test_ask_raises_plain_error_not_group(root: Path) -> None:
    """ask() raises MessageFailedError itself, never an ExceptionGroup wrapping it."""

    class Bad(actors.Actor, name="Bad"):
        retry = actors.Retry(max_attempts=1)

        async def fail(self) -> None:
            raise KeyError("k")

    async with actors.open_runtime(root, types=[Bad]) as rt:
        try:
            await rt.ref(Bad, "b").ask(Bad.fail)
        except BaseException as exc:
            assert type(exc) is actors.MessageFailedError
            assert isinstance(exc.__cause__, KeyError)
        else:
            raise AssertionError("ask should have raised")


async def test_dead_letter_replay_and_drop(root: Path) -> None:
    """A dead letter can be replayed (runs again, now succeeding) or dropped."""
    broken = {"on": True}

    class Sometimes(actors.Actor, name="Sometimes"):
        retry = actors.Retry(max_attempts=1)

        async def put(self, value: int) -> None:
            if broken["on"]:
                raise RuntimeError("down")
            self.kv[str(value)] = value

        @actors.query
        async def keys(self) -> list[str]:
            return sorted(self.kv)

    async with actors.open_runtime(root, types=[Sometimes]) as rt:
        ref = rt.ref(Sometimes, "s")
        for value in (1, 2):
            with pytest.raises(actors.MessageFailedError):
                await ref.ask(Sometimes.put, value)
        letters = await rt.dead_letters(ref)
        assert [d.args for d in letters] == [(1,), (2,)]
    # Dead letters are durable.
    async with actors.open_runtime(root, types=[Sometimes]) as rt:
        ref = rt.ref(Sometimes, "s")
        letters = await rt.dead_letters(ref)
        assert len(letters) == 2
        broken["on"] = False
        await rt.replay_dead_letter(ref, letters[0].seq)
        await rt.drop_dead_letter(ref, letters[1].seq)
        await ref.ask(Sometimes.put, 3)
        assert await ref.ask(Sometimes.keys) == ["1", "3"]
        assert await rt.dead_letters(ref) == []
        with pytest.raises(LookupError):
            await rt.drop_dead_letter(ref, letters[1].seq)


async def test_idempotent_send_and_ask(root: Path) -> None:
    """A retried send or ask with the same key applies nothing twice, returns the first result."""
    async with actors.open_runtime(root, types=[Counter]) as rt:
        ref = rt.ref(Counter, "i")
        assert await ref.options(idempotency_key="pay-1").ask(Counter.incr, 5) == 5
        assert await ref.options(idempotency_key="pay-1").ask(Counter.incr, 5) == 5
        await ref.options(idempotency_key="pay-2").send(Counter.incr, 100)
        await ref.options(idempotency_key="pay-2").send(Counter.incr, 100)
        assert await ref.options(idempotency_key="pay-2").ask(Counter.incr, 100) == 105
        assert await ref.ask(Counter.value) == 105
    async with actors.open_runtime(root, types=[Counter]) as rt:
        ref = rt.ref(Counter, "i")
        assert await ref.options(idempotency_key="pay-1").ask(Counter.incr, 5) == 5
        assert await ref.ask(Counter.log) == [5, 100]


async def test_idempotent_ask_of_a_dead_letter_raises_again(root: Path) -> None:
    """Retrying a failed idempotent ask raises MessageFailedError again without re-running it."""
    runs: list[int] = []

    class Fails(actors.Actor, name="Fails"):
        retry = actors.Retry(max_attempts=1)

        async def charge(self) -> None:
            runs.append(1)
            raise ValueError("card declined")

    async with actors.open_runtime(root, types=[Fails]) as rt:
        ref = rt.ref(Fails, "f")
        with pytest.raises(actors.MessageFailedError):
            await ref.options(idempotency_key="c1").ask(Fails.charge)
    async with actors.open_runtime(root, types=[Fails]) as rt:
        ref = rt.ref(Fails, "f")
        with pytest.raises(actors.MessageFailedError) as info:
            await ref.options(idempotency_key="c1").ask(Fails.charge)
        cause = info.value.__cause__
        assert isinstance(cause, actors.StoredError)
        assert cause.type_name == "ValueError" and cause.message == "card declined"
    assert runs == [1]


async def test_actor_to_actor_send_is_exactly_once_and_ordered(root: Path) -> None:
    """self.send goes out only when the turn commits, once, in order."""

    class Sink(actors.Actor, name="Sink"):
        async def got(self, i: int) -> None:
            self.kv["got"] = [*self.kv.get("got", []), i]

        @actors.query
        async def items(self) -> list[int]:
            return list(self.kv.get("got", []))

    class Source(actors.Actor, name="Source"):
        retry = actors.Retry(max_attempts=1)

        async def emit(self, i: int, fail: bool = False) -> None:
            self.send(self.sink(), Sink.got, i)
            if fail:
                raise RuntimeError("rolled back, so the send never leaves")

        def sink(self) -> actors.Ref[Sink]:
            return self.ref_to(Sink, "sink")

    async with actors.open_runtime(root, types=[Source, Sink]) as rt:
        src = rt.ref(Source, "src")
        for i in range(20):
            await src.send(Source.emit, i, i % 5 == 4)
        await src.ask(Source.emit, 99)
        sink = rt.ref(Sink, "sink")
        # Delivery is asynchronous after the commit; wait for it through the sink's own queue.
        for _ in range(100):
            if (await sink.ask(Sink.items))[-1:] == [99]:
                break
            await anyio.sleep(0.01)
        assert await sink.ask(Sink.items) == [i for i in range(20) if i % 5 != 4] + [99]


async def test_handler_cannot_control_the_transaction(root: Path) -> None:
    """COMMIT, BEGIN, SAVEPOINT, ATTACH and writes to _torpor_ tables are refused in handlers."""

    class Rogue(actors.Actor, name="Rogue"):
        retry = actors.Retry(max_attempts=1)

        async def run(self, sql: str) -> None:
            self.sql.execute(sql)

    async with actors.open_runtime(root, types=[Rogue]) as rt:
        ref = rt.ref(Rogue, "r")
        for sql in (
            "COMMIT",
            "BEGIN",
            "SAVEPOINT x",
            "ATTACH ':memory:' AS other",
            "DELETE FROM _torpor_kv",
            "UPDATE _torpor_state SET applied_seq = 0",
            "DROP TABLE _torpor_outbox",
            "PRAGMA journal_mode = delete",
        ):
            with pytest.raises(actors.MessageFailedError) as info:
                await ref.ask(Rogue.run, sql)
            assert isinstance(info.value.__cause__, apsw.AuthError), sql


async def test_handler_context_outside_handler(root: Path) -> None:
    """self.sql outside a running handler raises a RuntimeError that says why."""

    class Leaky(actors.Actor, name="Leaky"):
        async def me(self) -> Any:
            return None

    async with actors.open_runtime(root, types=[Leaky]) as rt:
        ref = rt.ref(Leaky, "l")
        await ref.ask(Leaky.me)
        instance = rt._engine.awake[actor_id("Leaky", "l")].instance
        with pytest.raises(RuntimeError, match="only while a handler"):
            _ = instance.sql


async def test_refs_travel_in_messages(root: Path) -> None:
    """A ref passed as an argument arrives as a working ref of the same runtime."""

    class Relay(actors.Actor, name="Relay"):
        async def forward(self, target: actors.Ref[Counter], by: int) -> None:
            self.send(target, Counter.incr, by)

    async with actors.open_runtime(root, types=[Relay, Counter]) as rt:
        counter = rt.ref(Counter, "c")
        await rt.ref(Relay, "r").ask(Relay.forward, counter, 7)
        for _ in range(100):
            if await counter.ask(Counter.value) == 7:
                break
            await anyio.sleep(0.01)
        assert await counter.ask(Counter.value) == 7


async def test_second_process_is_locked_out(root: Path) -> None:
    """A runtime directory open in one runtime cannot be opened by another."""
    async with actors.open_runtime(root, types=[Counter]):
        with pytest.raises(actors.RuntimeLockedError, match=f"pid {os.getpid()}"):
            async with actors.open_runtime(root, types=[Counter]):
                pass


async def test_closed_runtime_refuses_sends(root: Path) -> None:
    """A ref used after its runtime closed raises RuntimeClosedError."""
    async with actors.open_runtime(root, types=[Counter]) as rt:
        ref = rt.ref(Counter, "c")
    with pytest.raises(actors.RuntimeClosedError):
        await ref.send(Counter.incr)


async def test_ref_calls_inside_a_turn_are_refused(root: Path) -> None:
    """ref.ask/ref.send inside a handler raise: they would escape the turn's transaction."""

    class Selfish(actors.Actor, name="Selfish"):
        retry = actors.Retry(max_attempts=1)

        async def loop(self) -> None:
            await self.ref.ask(Selfish.loop)

    async with actors.open_runtime(root, types=[Selfish]) as rt:
        with pytest.raises(actors.MessageFailedError) as info:
            await rt.ref(Selfish, "s").ask(Selfish.loop)
        assert isinstance(info.value.__cause__, RuntimeError)
        assert "self.ask" in str(info.value.__cause__)


async def test_failed_on_create_is_reported_and_keeps_messages(root: Path) -> None:
    """An actor whose on_create keeps failing raises ActorFailedError; its messages are kept."""
    healthy = {"on": False}

    class Fragile(actors.Actor, name="Fragile"):
        retry = actors.Retry(max_attempts=2, initial_delay=0.5)

        async def on_create(self) -> None:
            if not healthy["on"]:
                raise ConnectionError("model endpoint down")
            self.kv["ready"] = True

        async def work(self) -> str:
            return "done"

        @actors.query
        async def ready(self) -> bool:
            return bool(self.kv.get("ready"))

    async with actors.open_runtime(root, types=[Fragile]) as rt:
        ref = rt.ref(Fragile, "f")
        await ref.send(Fragile.work)
        with pytest.raises(actors.ActorFailedError) as info:
            await ref.ask(Fragile.ready)
        assert isinstance(info.value.__cause__, ConnectionError)
        with pytest.raises(actors.ActorFailedError):
            await ref.ask(Fragile.work)
    healthy["on"] = True
    async with actors.open_runtime(root, types=[Fragile]) as rt:
        ref = rt.ref(Fragile, "f")
        assert await ref.ask(Fragile.work) == "done"
        assert await ref.ask(Fragile.ready) is True


async def test_reading_dead_letters_creates_no_actor(root: Path) -> None:
    """Listing dead letters of an actor that never existed returns [] and creates nothing."""
    async with actors.open_runtime(root, types=[Counter]) as rt:
        ghost = rt.ref(Counter, "ghost")
        assert await rt.dead_letters(ghost) == []
        with pytest.raises(LookupError):
            await rt.replay_dead_letter(ghost, 1)
        assert rt._engine.directory.count() == 0
