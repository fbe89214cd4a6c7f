"""The engine at its edges: crash windows, shutdown, bounds, key reuse."""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import apsw
import attrs
import pytest
import trio

import actors
from runtime.activation import QUEUE_CAP
from runtime.codec import Codec
from runtime.files.layout import DIRECTORY_FILE, actor_dir, actor_id
from runtime.files.mailbox import Mailbox
from tests.support.agents import Counter

#: Virtual seconds after which a test that waits on the engine fails instead of hanging.
HANG_LIMIT = 3600

# -- helpers ---------------------------------------------------------------------------------


def open_file(root: Path, type_name: str, key: str, name: str) -> apsw.Connection:
    """A direct connection to one of an actor's files (only while the runtime is closed)."""
    return apsw.Connection(str(actor_dir(root, actor_id(type_name, key)) / name))


def query_all(root: Path, type_name: str, key: str, name: str, sql: str) -> list[Any]:
    conn = open_file(root, type_name, key, name)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def block_folder(root: Path, type_name: str, key: str) -> Path:
    """Put a regular file where the actor's folder goes, so that its files cannot be opened."""
    path = actor_dir(root, actor_id(type_name, key))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a folder")
    return path


@attrs.frozen
class Secret:
    id: int
    _secret: int


@attrs.define
class Derived:
    x: int
    y: int = attrs.field(init=False, default=0)


# -- 1. dead-letter copy made just before a crash ---------------------------------------------


async def test_message_already_dead_lettered_is_not_run_again(root: Path) -> None:
    """A message whose dead-letter copy was kept before a crash is not run again at reopen."""
    async with actors.open_runtime(root, types=[Counter]) as rt:
        assert await rt.ref(Counter, "c").ask(Counter.incr, 1) == 1

    # Simulate the crash window: the message is still in the inbox (data.db never advanced
    # applied_seq past it), but its dead-letter copy was committed to mailbox.db.
    payload = Codec().encode([[100], {}])
    mailbox = open_file(root, "Counter", "c", "mailbox.db")
    try:
        mailbox.execute(
            "INSERT INTO inbox(method, payload, enqueued_at) VALUES ('incr', ?, ?)",
            (payload, time.time()),
        )
        seq = mailbox.last_insert_rowid()
        mailbox.execute(
            "INSERT INTO dead_letters(seq, sender, sender_seq, method, payload, "
            "idempotency_key, attempts, error_type, error_message, traceback, failed_at) "
            "VALUES (?, NULL, NULL, 'incr', ?, NULL, 3, 'ValueError', 'boom', 'tb', ?)",
            (seq, payload, time.time()),
        )
    finally:
        mailbox.close()
    directory = apsw.Connection(str(root / DIRECTORY_FILE))
    try:
        directory.execute("UPDATE actors SET pending = 1 WHERE id = ?", (actor_id("Counter", "c"),))
    finally:
        directory.close()
    assert query_all(root, "Counter", "c", "data.db", "SELECT applied_seq FROM _torpor_state") == [
        (seq - 1,)
    ]

    async with actors.open_runtime(root, types=[Counter]) as rt:
        ref = rt.ref(Counter, "c")
        assert await ref.ask(Counter.incr, 10) == 11  # 1 + 10: the dead letter's +100 never ran
        assert await ref.ask(Counter.log) == [1, 10]
        letters = await rt.dead_letters(ref)
        assert [(d.seq, d.method, d.args, d.error_type) for d in letters] == [
            (seq, "incr", (100,), "ValueError")
        ]
    applied = query_all(root, "Counter", "c", "data.db", "SELECT applied_seq FROM _torpor_state")
    assert applied[0][0] > seq
    # And it stays done: a further reopen runs nothing again.
    async with actors.open_runtime(root, types=[Counter]) as rt:
        ref = rt.ref(Counter, "c")
        assert await ref.ask(Counter.incr, 0) == 11
        assert len(await rt.dead_letters(ref)) == 1


# -- 2. INSERT OR ROLLBACK in a handler --------------------------------------------------------


async def test_insert_or_rollback_rolls_back_whole_turn_and_retries(root: Path) -> None:
    """A handler whose SQL ends the transaction persists nothing, is retried, then dead-lettered."""
    # The messages batched before it are applied exactly once.
    gate = trio.Event()
    entered = trio.Event()
    culprit_errors: list[str] = []

    class Inventory(actors.Actor, name="Inventory"):
        retry = actors.Retry(max_attempts=2, initial_delay=0.01)
        migrations = (
            "CREATE TABLE seen(id INTEGER PRIMARY KEY); INSERT INTO seen VALUES (1); "
            "CREATE TABLE log(i INTEGER);",
        )

        async def hold(self) -> None:
            entered.set()
            await gate.wait()

        async def add(self, i: int) -> None:
            self.sql.execute("INSERT INTO log VALUES (?)", (i,))

        async def culprit(self) -> str:
            self.sql.execute("INSERT INTO log VALUES (-1)")
            # "Already seen": the user believes swallowing this is harmless.
            with contextlib.suppress(apsw.ConstraintError):
                self.sql.execute("INSERT OR ROLLBACK INTO seen VALUES (1)")
            # The transaction is gone; these writes must not persist (in autocommit or later).
            for write in (
                lambda: self.sql.execute("INSERT INTO log VALUES (-2)"),
                lambda: self.kv.__setitem__("culprit", True),
            ):
                try:
                    write()
                except apsw.Error as exc:
                    culprit_errors.append(type(exc).__name__)
            return "swallowed everything"

        @actors.query
        async def state(self) -> Any:
            return (
                [row[0] for row in self.sql.execute("SELECT i FROM log ORDER BY rowid")],
                self.sql.query_value("SELECT count(*) FROM seen"),
                self.kv.get("culprit"),
            )

    with trio.fail_after(HANG_LIMIT):
        async with actors.open_runtime(root, types=[Inventory]) as rt:
            ref = rt.ref(Inventory, "i")
            await ref.send(Inventory.hold)
            await entered.wait()
            for i in range(5):
                await ref.send(Inventory.add, i)
            await ref.send(Inventory.culprit)
            await ref.send(Inventory.add, 5)
            gate.set()
            await ref.ask(Inventory.add, 99)  # applied after the culprit was dead-lettered
            assert await ref.ask(Inventory.state) == ([0, 1, 2, 3, 4, 5, 99], 1, None)
            letters = await rt.dead_letters(ref)
            assert [(d.method, d.attempts) for d in letters] == [("culprit", 2)]
            assert "TransactionLostError" in letters[0].error_type
            assert rt.statistics().retries >= 1
            assert culprit_errors  # the later writes failed rather than autocommitting
    # Durable, too: nothing of the culprit reached data.db.
    rows = query_all(root, "Inventory", "i", "data.db", "SELECT i FROM log ORDER BY rowid")
    assert [r[0] for r in rows] == [0, 1, 2, 3, 4, 5, 99]


# -- 3. idempotency keys are not pruned before their message is applied ---------------------


def test_prune_idempotency_keeps_keys_of_unapplied_messages(tmp_path: Path) -> None:
    """Pruning forgets only keys of applied messages; a retried send with a kept key is deduped."""
    mailbox = Mailbox(tmp_path / "mailbox.db", synchronous="NORMAL", type_name="T", key="k")
    try:
        seqs = []
        for key in ("k1", "k2", "k3"):
            seq, appended = mailbox.append_deduplicated(
                "m", key.encode(), sender=None, sender_seq=None, idempotency_key=key
            )
            assert appended and seq is not None
            seqs.append(seq)

        def kept(key: str) -> int | None:
            rows = mailbox.conn.execute(
                "SELECT seq FROM idempotency WHERE key = ?", (key,)
            ).fetchall()
            if not rows:
                return None
            (seq,) = rows[0]
            assert isinstance(seq, int)
            return seq

        # Old enough for every key, but only the first message was applied.
        mailbox.prune_idempotency(time.time() + 3600, seqs[0])
        assert kept("k1") is None
        assert kept("k2") == seqs[1]
        assert kept("k3") == seqs[2]
        # Not old enough: nothing goes, even if applied.
        mailbox.prune_idempotency(0.0, seqs[2])
        assert kept("k2") == seqs[1]
        # A retried send with a kept key stores nothing new.
        assert mailbox.append_deduplicated(
            "m", b"k2", sender=None, sender_seq=None, idempotency_key="k2"
        ) == (seqs[1], False)
        assert mailbox.conn.execute("SELECT count(*) FROM inbox").fetchall()[0][0] == 3
    finally:
        mailbox.close()


async def test_idempotency_key_of_queued_message_survives_close(root: Path) -> None:
    """A keyed send still queued at close is deduplicated when retried after reopen."""
    blocking = {"on": True}
    entered = trio.Event()

    class Pay(actors.Actor, name="Pay"):
        async def slow(self) -> None:
            if blocking["on"]:
                entered.set()
                await trio.sleep_forever()

        async def charge(self, cents: int) -> None:
            self.kv["charged"] = self.kv.get("charged", 0) + cents

        @actors.query
        async def charged(self) -> int:
            return int(self.kv.get("charged", 0))

    options: dict[str, Any] = {"types": [Pay], "idempotency_ttl": 0.0, "shutdown_grace": 1}
    with trio.fail_after(HANG_LIMIT):
        async with actors.open_runtime(root, **options) as rt:
            ref = rt.ref(Pay, "p")
            await ref.ask(Pay.charge, 1)  # something applied, so closing runs the cleanup
            await ref.send(Pay.slow)
            await entered.wait()
            await ref.options(idempotency_key="order-1").send(Pay.charge, 500)  # queued behind slow
    blocking["on"] = False
    with trio.fail_after(HANG_LIMIT):
        async with actors.open_runtime(root, **options) as rt:
            ref = rt.ref(Pay, "p")
            await ref.options(idempotency_key="order-1").ask(Pay.charge, 500)  # the client's retry
            assert await ref.ask(Pay.charged) == 501


# -- 4. RuntimeClosedError from a handler -----------------------------------------------------


async def test_runtime_closed_error_in_handler_keeps_message_queued(root: Path) -> None:
    """RuntimeClosedError from a handler at close burns no attempt; the message runs next open."""
    # Nor is the message dead-lettered.
    closed_once = {"raise": True}
    entered = trio.Event()

    class Job(actors.Actor, name="Job"):
        retry = actors.Retry(max_attempts=1)

        async def run(self) -> None:
            self.kv["runs"] = self.kv.get("runs", 0) + 1
            if closed_once["raise"]:
                closed_once["raise"] = False
                entered.set()
                await trio.sleep(1)  # e.g. a call to a service that the shutdown closes
                raise actors.RuntimeClosedError("the service closed during shutdown")

        @actors.query
        async def runs(self) -> int:
            return int(self.kv.get("runs", 0))

    with trio.fail_after(HANG_LIMIT):
        async with actors.open_runtime(root, types=[Job]) as rt:
            ref = rt.ref(Job, "j")
            await ref.send(Job.run)
            await entered.wait()
    assert query_all(root, "Job", "j", "mailbox.db", "SELECT method, attempts FROM inbox") == [
        ("run", 0)
    ]
    assert query_all(root, "Job", "j", "mailbox.db", "SELECT seq FROM dead_letters") == []
    assert query_all(root, "Job", "j", "data.db", "SELECT key FROM _torpor_kv") == []

    with trio.fail_after(HANG_LIMIT):
        async with actors.open_runtime(root, types=[Job]) as rt:
            ref = rt.ref(Job, "j")
            await ref.ask(Job.run)  # queued behind the first one, which now succeeds
            assert await ref.ask(Job.runs) == 2
            assert await rt.dead_letters(ref) == []
            assert rt.statistics().dead_letters == 0


async def test_runtime_closed_error_while_open_does_not_spin(root: Path) -> None:
    """A handler raising RuntimeClosedError while open is not re-run in a loop that never yields."""
    times: list[float] = []

    class Spin(actors.Actor, name="Spin"):
        retry = actors.Retry(max_attempts=1)

        async def work(self) -> None:
            times.append(trio.current_time())
            if len(times) < 50:  # bounded, so that the bug fails the test instead of hanging it
                raise actors.RuntimeClosedError("another runtime this handler used was closed")

    async with actors.open_runtime(root, types=[Spin], shutdown_grace=1) as rt:
        # Dead-lettered, retried with backoff, or kept for the next open: any is fine, as long
        # as each re-run waits (with the bug all 50 runs happen at one virtual instant).
        with trio.move_on_after(600), contextlib.suppress(actors.MessageFailedError):
            await rt.ref(Spin, "s").ask(Spin.work)
    assert times
    assert all(later > earlier for earlier, later in itertools.pairwise(times)), times[:5]


# -- 5. mailbox.db lost while data.db kept applied_seq ----------------------------------------


async def test_new_sends_after_mailbox_loss_are_applied(root: Path) -> None:
    """With mailbox.db deleted while closed, new sends are applied, not taken for old ones."""
    async with actors.open_runtime(root, types=[Counter]) as rt:
        ref = rt.ref(Counter, "c")
        for _ in range(5):
            await ref.ask(Counter.incr)
    assert query_all(root, "Counter", "c", "data.db", "SELECT applied_seq FROM _torpor_state") == [
        (5,)
    ]
    folder = actor_dir(root, actor_id("Counter", "c"))
    removed = [p for p in folder.iterdir() if p.name.startswith("mailbox.db")]
    assert removed
    for path in removed:
        path.unlink()

    async with actors.open_runtime(root, types=[Counter]) as rt:
        ref = rt.ref(Counter, "c")
        for _ in range(3):
            await ref.send(Counter.incr)
        assert await ref.ask(Counter.incr) == 9
        assert await ref.ask(Counter.value) == 9
        assert await ref.ask(Counter.log) == [1] * 9


# -- 6. shutdown grace ------------------------------------------------------------------------


async def test_shutdown_grace_cancels_a_stuck_turn(root: Path) -> None:
    """A stuck turn delays close by shutdown_grace only, rolls back, and runs at the next open."""
    stuck = {"on": True}
    entered = trio.Event()

    class Hang(actors.Actor, name="Hang"):
        async def work(self) -> None:
            self.kv["written"] = self.kv.get("written", 0) + 1
            if stuck["on"]:
                stuck["on"] = False
                entered.set()
                await trio.sleep_forever()

        @actors.query
        async def written(self) -> int:
            return int(self.kv.get("written", 0))

    with trio.fail_after(HANG_LIMIT):
        async with actors.open_runtime(root, types=[Hang], shutdown_grace=5) as rt:
            await rt.ref(Hang, "h").send(Hang.work)
            await entered.wait()
            start = trio.current_time()
        elapsed = trio.current_time() - start
    assert 5 <= elapsed < 6
    assert query_all(root, "Hang", "h", "data.db", "SELECT key FROM _torpor_kv") == []

    async with actors.open_runtime(root, types=[Hang], shutdown_grace=5) as rt:
        ref = rt.ref(Hang, "h")
        await ref.ask(Hang.work)  # after the recovered one
        assert await ref.ask(Hang.written) == 2
        assert await rt.dead_letters(ref) == []


# -- 7. outbox delivery retried with backoff --------------------------------------------------


async def test_outbox_delivery_retried_with_backoff(root: Path) -> None:
    """A failed delivery is retried with growing delays until the target opens, unprompted."""
    # The delivery arrives without any new message to the sender.

    class Target(actors.Actor, name="Target"):
        async def got(self) -> None:
            self.kv["n"] = self.kv.get("n", 0) + 1

        @actors.query
        async def n(self) -> int:
            return int(self.kv.get("n", 0))

    class Sender(actors.Actor, name="Sender"):
        async def fire(self, target: actors.Ref[Target]) -> None:
            self.send(target, Target.got)

    async with actors.open_runtime(root, types=[Sender, Target]) as rt:
        blocker = block_folder(root, "Target", "t")
        target = rt.ref(Target, "t")
        await rt.ref(Sender, "s").ask(Sender.fire, target)

        def delays() -> list[float]:
            found = [re.search(r"retrying in ([0-9.]+) s", r) for r in rt.reports]
            return [float(m.group(1)) for m in found if m is not None]

        for _ in range(100):
            if delays():
                break
            await trio.sleep(0.01)
        assert delays(), list(rt.reports)
        await trio.sleep(2)
        seen = delays()
        # Backoff, not a hot loop: a few attempts in two seconds, each waiting longer.
        assert 3 <= len(seen) <= 10, seen
        assert seen == sorted(seen) and seen[-1] > seen[0]

        blocker.unlink()
        for _ in range(120):
            await trio.sleep(1)
            if await target.ask(Target.n) == 1:
                break
        assert await target.ask(Target.n) == 1
        await trio.sleep(60)
        assert await target.ask(Target.n) == 1  # delivered once, not again


# -- 8. a message that kills the process ------------------------------------------------------

POISON_CHILD = """
import json, os, signal, sys

import trio

import actors


class Parser(actors.Actor, name="Parser"):
    retry = actors.Retry(max_attempts=3, max_crashes=2)

    async def parse(self, doc: str) -> None:
        if doc == "bad":
            os.kill(os.getpid(), signal.SIGKILL)  # stands in for a segfault or an OOM kill
        self.sql.execute("CREATE TABLE IF NOT EXISTS docs(doc TEXT)")
        self.sql.execute("INSERT INTO docs VALUES (?)", (doc,))

    async def hold(self) -> None:
        await GATE.wait()

    async def ping(self) -> None:
        pass

    @actors.query
    async def docs(self) -> list:
        if not self.sql.query_value("SELECT 1 FROM sqlite_schema WHERE name = 'docs'"):
            return []
        return [r[0] for r in self.sql.execute("SELECT doc FROM docs ORDER BY rowid")]


async def main(root, mode):
    global GATE
    GATE = trio.Event()
    if mode != "send":
        GATE.set()
    async with actors.open_runtime(root, types=[Parser]) as rt:
        ref = rt.ref(Parser, "p")
        if mode == "send":
            await ref.send(Parser.hold)  # keeps the actor busy until both are queued
            await ref.send(Parser.parse, "bad")
            await ref.send(Parser.parse, "good")
            GATE.set()
            await ref.ask(Parser.ping)
            sys.exit(3)  # the poison should have killed us
        await ref.ask(Parser.ping)  # runs after everything queued before it
        letters = [
            [d.method, list(d.args), d.error_type, d.error_message]
            for d in await rt.dead_letters(ref)
        ]
        print(json.dumps({"letters": letters, "docs": await ref.ask(Parser.docs)}))


trio.run(main, sys.argv[1], sys.argv[2])
"""


def test_poison_message_is_dead_lettered_after_max_crashes(tmp_path: Path) -> None:
    """A message killing the process every time is dead-lettered after max_crashes deaths."""
    # The messages after it run.
    script = tmp_path / "poison_child.py"
    script.write_text(textwrap.dedent(POISON_CHILD))
    root = tmp_path / "rt"
    codes: list[int] = []
    final: dict[str, Any] | None = None
    for run in range(6):
        proc = subprocess.run(
            [sys.executable, str(script), str(root), "send" if run == 0 else "open"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        codes.append(proc.returncode)
        if proc.returncode != -9:
            assert proc.returncode == 0, (codes, proc.stderr)
            final = json.loads(proc.stdout)
            break
    assert final is not None, codes
    max_crashes = 2
    deaths = codes.count(-9)
    # The first death (in a batch with other messages) cannot be pinned on one message yet.
    assert max_crashes <= deaths <= max_crashes + 1, codes
    assert codes == [-9] * deaths + [0]
    assert len(final["letters"]) == 1, final
    method, args, error_type, error_message = final["letters"][0]
    assert (method, args) == ("parse", ["bad"])
    assert "ProcessDied" in error_type
    assert "process died" in error_message
    assert final["docs"] == ["good"]


# -- 9. the in-memory queue is bounded --------------------------------------------------------


async def test_in_memory_queue_is_bounded(root: Path) -> None:
    """A blocked actor holds at most QUEUE_CAP messages in memory; all are applied in order."""
    gate = trio.Event()
    entered = trio.Event()

    class Slow(actors.Actor, name="Slow"):
        migrations = ("CREATE TABLE log(i INTEGER)",)

        async def work(self, i: int) -> None:
            if not gate.is_set():
                entered.set()
                await gate.wait()
            self.sql.execute("INSERT INTO log VALUES (?)", (i,))

        @actors.query
        async def log(self) -> list[int]:
            return [row[0] for row in self.sql.execute("SELECT i FROM log ORDER BY rowid")]

    total = 3000
    with trio.fail_after(HANG_LIMIT):
        async with actors.open_runtime(root, types=[Slow]) as rt:
            ref = rt.ref(Slow, "s")
            await ref.send(Slow.work, 0)
            await entered.wait()
            activation = rt._engine.awake[actor_id("Slow", "s")]
            peak = 0
            for i in range(1, total):
                await ref.send(Slow.work, i)
                peak = max(peak, len(activation.queue))
            assert 0 < peak <= QUEUE_CAP
            assert len(activation.queue) <= QUEUE_CAP
            gate.set()
            await ref.ask(Slow.work, total)
            assert await ref.ask(Slow.log) == list(range(total + 1))


# -- 10. attrs message types ------------------------------------------------------------------


async def test_attrs_private_field_round_trips_and_init_false_is_refused(root: Path) -> None:
    """An attrs private field round-trips; an init=False field makes open_runtime a TypeError."""

    class Vault(actors.Actor, name="Vault"):
        async def keep(self, item: Secret) -> Secret:
            self.kv["secret"] = item._secret
            return Secret(item.id + 1, item._secret * 2)

        @actors.query
        async def kept(self) -> int:
            return int(self.kv["secret"])

    async with actors.open_runtime(root, types=[Vault], message_types=[Secret]) as rt:
        ref = rt.ref(Vault, "v")
        await ref.send(Vault.keep, Secret(1, 7))
        assert await ref.ask(Vault.keep, Secret(2, 21)) == Secret(3, 42)
        assert await ref.ask(Vault.kept) == 21
        assert await rt.dead_letters(ref) == []

    other = root.parent / "other"
    with pytest.raises(TypeError, match="init=False"):
        async with actors.open_runtime(other, types=[Vault], message_types=[Derived]):
            pass
    assert not other.exists()


# -- 11. spawn is atomic ----------------------------------------------------------------------


async def test_spawn_that_cannot_open_files_leaves_no_actor(root: Path) -> None:
    """A spawn whose files cannot open raises StorageError and leaves no actor behind."""
    # A retried spawn with the same key then succeeds with its own arguments.

    class Agent(actors.Actor, name="Agent"):
        async def on_create(self, model: str) -> None:
            self.kv["model"] = model
            self.kv["creations"] = self.kv.get("creations", 0) + 1

        @actors.query
        async def model(self) -> tuple[str, int]:
            return self.kv["model"], self.kv["creations"]

    async with actors.open_runtime(root, types=[Agent]) as rt:
        blocker = block_folder(root, "Agent", "a1")
        with pytest.raises(actors.StorageError):
            await rt.spawn(Agent, "gpt", key="a1")
        blocker.unlink()
        ref = await rt.spawn(Agent, "claude", key="a1")
        assert await ref.ask(Agent.model) == ("claude", 1)
    async with actors.open_runtime(root, types=[Agent]) as rt:
        assert await rt.ref(Agent, "a1").ask(Agent.model) == ("claude", 1)


# -- 12. async migrations ---------------------------------------------------------------------


def test_async_migration_is_refused_at_definition() -> None:
    """An async def migration raises TypeError when the class is defined."""

    async def add_table(sql: actors.Sql) -> None:
        sql.execute("CREATE TABLE notes(t TEXT)")

    with pytest.raises(TypeError, match=r"migrations\[1\].*async"):

        class Notes(actors.Actor, name="Notes"):
            migrations = ("CREATE TABLE x(a)", add_table)  # type: ignore[assignment]  # async


# -- 13. tasks that outlive their handler -----------------------------------------------------


async def test_task_outliving_handler_cannot_touch_state(root: Path) -> None:
    """A task outliving its handler gets RuntimeError on self.kv and self.sql; it writes nothing."""
    # Also while a later turn is running.
    shared: dict[str, Any] = {}
    go = trio.Event()
    tried = trio.Event()
    hold_entered = trio.Event()
    hold_gate = trio.Event()
    outcomes: list[BaseException | None] = []

    class Leaky(actors.Actor, name="Leaky"):
        async def begin(self) -> None:
            async def later() -> None:
                await go.wait()
                for write in (
                    lambda: self.kv.__setitem__("late", 1),
                    lambda: self.sql.execute("CREATE TABLE late(x)"),
                ):
                    try:
                        write()
                    except BaseException as exc:
                        outcomes.append(exc)
                    else:
                        outcomes.append(None)
                tried.set()

            shared["nursery"].start_soon(later)

        async def hold(self) -> None:
            self.kv["held"] = True
            hold_entered.set()
            await hold_gate.wait()

        @actors.query
        async def state(self) -> Any:
            tables = self.sql.query("SELECT name FROM sqlite_schema WHERE name = 'late'")
            return sorted(self.kv), tables

    with trio.fail_after(HANG_LIMIT):
        async with trio.open_nursery() as nursery:
            shared["nursery"] = nursery
            async with actors.open_runtime(root, types=[Leaky]) as rt:
                ref = rt.ref(Leaky, "l")
                await ref.ask(Leaky.begin)
                await ref.send(Leaky.hold)  # a later turn is in progress while the task tries
                await hold_entered.wait()
                go.set()
                await tried.wait()
                hold_gate.set()
                await ref.ask(Leaky.hold)
                assert await ref.ask(Leaky.state) == (["held"], [])
    assert len(outcomes) == 2
    for outcome in outcomes:
        assert isinstance(outcome, RuntimeError), outcome
        assert "only while a handler" in str(outcome)


# -- 14. @query and PRAGMA query_only ---------------------------------------------------------


async def test_query_cannot_turn_query_only_off(root: Path) -> None:
    """A @query that sets PRAGMA query_only = 0 gets apsw.AuthError and writes nothing."""

    class Sneaky(actors.Actor, name="Sneaky"):
        async def touch(self) -> None:
            self.kv["x"] = 1

        @actors.query
        async def unlock(self) -> None:
            self.sql.execute("PRAGMA query_only = 0")
            self.sql.execute("CREATE TABLE t(x)")
            self.sql.execute("INSERT INTO t VALUES (1)")

        @actors.query
        async def unlock_and_ignore(self) -> None:
            with contextlib.suppress(apsw.AuthError):
                self.sql.execute("PRAGMA query_only = 0")
            self.sql.execute("CREATE TABLE t(x)")

        @actors.query
        async def state(self) -> Any:
            return (
                self.sql.query_value("PRAGMA query_only"),
                self.sql.query("SELECT name FROM sqlite_schema WHERE name = 't'"),
            )

    async with actors.open_runtime(root, types=[Sneaky]) as rt:
        ref = rt.ref(Sneaky, "s")
        await ref.ask(Sneaky.touch)
        with pytest.raises(apsw.AuthError):
            await ref.ask(Sneaky.unlock)
        with pytest.raises(apsw.Error):
            await ref.ask(Sneaky.unlock_and_ignore)
        assert await ref.ask(Sneaky.state) == (1, [])
    tables = query_all(root, "Sneaky", "s", "data.db", "SELECT name FROM sqlite_schema")
    assert ("t",) not in tables


# -- 15. dead-letter API after close ----------------------------------------------------------


async def test_dead_letter_api_after_close_raises_runtime_closed(root: Path) -> None:
    """The dead-letter calls raise RuntimeClosedError after the runtime closed."""
    # dead_letters, replay_dead_letter and drop_dead_letter.
    async with actors.open_runtime(root, types=[Counter]) as rt:
        ref = rt.ref(Counter, "c")
        await ref.ask(Counter.incr)
        assert await rt.dead_letters(ref) == []
    with pytest.raises(actors.RuntimeClosedError):
        await rt.dead_letters(ref)
    with pytest.raises(actors.RuntimeClosedError):
        await rt.replay_dead_letter(ref, 1)
    with pytest.raises(actors.RuntimeClosedError):
        await rt.drop_dead_letter(ref, 1)


# -- 16. idempotency key reuse ----------------------------------------------------------------


async def test_idempotency_key_reused_for_another_call_raises(root: Path) -> None:
    """A key reused for another call raises IdempotencyKeyReusedError and stores nothing."""
    # The same call with the same key is still deduplicated.
    async with actors.open_runtime(root, types=[Counter]) as rt:
        ref = rt.ref(Counter, "c")
        assert await ref.options(idempotency_key="req-7").ask(Counter.incr, 5) == 5
        with pytest.raises(actors.IdempotencyKeyReusedError):
            await ref.options(idempotency_key="req-7").ask(Counter.incr, 6)
        with pytest.raises(actors.IdempotencyKeyReusedError):
            await ref.options(idempotency_key="req-7").send(Counter.echo, 5)
        assert await ref.options(idempotency_key="req-7").ask(Counter.incr, 5) == 5
        assert rt.statistics().messages_sent == 1
        assert await ref.ask(Counter.log) == [5]
        assert await ref.ask(Counter.value) == 5
    rows = query_all(root, "Counter", "c", "mailbox.db", "SELECT key, seq FROM idempotency")
    assert rows == [("req-7", 1)]


# -- 17. handler names that clash with the Actor API ------------------------------------------


@pytest.mark.parametrize("name", ["send", "kv", "sql", "key", "ref"])
def test_handler_named_like_actor_api_is_refused(name: str) -> None:
    """A handler named like the Actor API raises TypeError when the class is defined."""

    async def handler(self: Any, to: str) -> None:
        pass

    with pytest.raises(TypeError, match=f"{name} would override the Actor API"):
        type(f"Clash_{name}", (actors.Actor,), {name: handler, "__module__": __name__})


def test_retry_and_migrations_attributes_are_allowed() -> None:
    """Setting retry and migrations on a subclass configures it instead of being refused."""

    class Configured(actors.Actor, name="Configured"):
        retry = actors.Retry(max_attempts=7)
        migrations = ("CREATE TABLE x(a)",)

        async def go(self) -> None:
            pass

    spec = Configured.__torpor_spec__
    assert spec.retry.max_attempts == 7
    assert spec.migrations == ("CREATE TABLE x(a)",)
    assert sorted(spec.handlers) == ["go"]
