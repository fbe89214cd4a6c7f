"""What the CLI tells its user: ``torpor ask --timeout`` and duplicate sends, ``torpor bench``'s
suite wherever it stands, ``fork --as`` keys, a runtime open in this very process, ``sql`` of
an unknown type, and ``--from-replica``/restore errors in the user's terms."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import trio

import actors
from runtime import cli
from runtime.bench import replication as bench_replication
from runtime.bench import turns as bench
from runtime.files.layout import actor_id
from tests.ops.test_cli import TYPES, populate
from tests.ops.test_cli_replica import Made, failed, make, ok, torpor
from tests.support.agents import Counter

ROOT = Path(__file__).resolve().parents[2]
COUNTER = "tests.support.agents:Counter"
GATE = "tests.ops.test_cli_diagnostics:Gate"
NOTEBOOK = "tests.Notebook"


class Gate(actors.Actor, name="tests.Gate"):
    """A turn that waits for an event (``approve``), and one that replies at once."""

    async def approve(self, what: str) -> str:
        answer = await self.wait_for_event("approval")
        return f"{what}: {answer}"

    async def hello(self) -> str:
        return "hi"


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Made:
    """A replicated runtime, closed (the tests only read it, or copies of it)."""
    return make(tmp_path_factory.mktemp("diagnostics"))


def copy_of(made: Made, tmp_path: Path) -> Made:
    """A runtime and replica of one's own, for a command that may write."""
    root, replica = tmp_path / "rt", tmp_path / "replica"
    shutil.copytree(made.root, root)
    shutil.copytree(made.replica, replica)
    return Made(root, replica, made.middle)


def counter_runtime(root: Path) -> Path:
    async def build() -> None:
        async with actors.open_runtime(root, types=[Counter]) as rt:
            await rt.ref(Counter, "alice").ask(Counter.incr, 1)

    trio.run(build)
    return root


# -- 16: ask --timeout, and a duplicate send ------------------------------------------------------


def test_ask_timeout_says_what_the_actor_waits_for(tmp_path: Path) -> None:
    """torpor ask --timeout gives up on an actor whose turn waits for an event, naming it."""
    root = tmp_path / "rt"

    async def wait_on_disk() -> None:
        async with actors.open_runtime(root, types=[Gate]) as rt:
            gate = rt.ref(Gate, "g1")
            await gate.send(Gate.approve, "deploy")
            for _ in range(3000):  # until the turn waits on disk
                if [t.status for t in await rt.turns(gate)] == ["waiting"]:
                    break
                await trio.sleep(0.01)
            else:
                raise AssertionError("the turn did not start waiting")

    trio.run(wait_on_disk)  # closed with the turn's wait journaled
    done = torpor(
        "ask", root, "tests.Gate", "g1", "hello", "--types", GATE, "--timeout", "0.5", cwd=ROOT
    )
    err = failed(done, 1)
    assert "no reply from tests.Gate 'g1' within 0.5 s" in err
    assert "approve (message 1) waits for event 'approval'" in err
    assert "later messages wait behind it" in err


def test_a_repeated_send_with_the_same_key_says_it_was_a_duplicate(tmp_path: Path) -> None:
    """A retried torpor send --idempotency-key says the call was a duplicate, stored once."""
    root = counter_runtime(tmp_path / "rt")
    call = ("send", root, "Counter", "alice", "incr", "--types", COUNTER)
    assert ok(torpor(*call, "--idempotency-key", "k1")) == "sent Counter 'alice' incr\n"
    again = ok(torpor(*call, "--idempotency-key", "k1"))
    assert again.startswith("not sent again: a duplicate") and "'k1'" in again
    assert json.loads(ok(torpor(*call, "--idempotency-key", "k1", "--json"))) == {
        "sent": False,
        "duplicate": True,
    }
    assert ok(torpor("ask", root, "Counter", "alice", "value", "--types", COUNTER)) == "2\n"


class Ledger(actors.Actor, name="tests.Ledger"):
    """A durable type: its replies wait until the turn's commits are in the replica."""

    durable = True

    async def add(self, n: int) -> int:
        total = int(self.kv.get("total", 0)) + n
        self.kv["total"] = total
        return total


LEDGER = "tests.ops.test_cli_diagnostics:Ledger"


def test_send_and_ask_to_a_durable_type_take_the_runtimes_replica(tmp_path: Path) -> None:
    """torpor send/ask to a durable type refuse without a replica (no traceback), work with one."""
    root, replica = tmp_path / "rt", tmp_path / "replica"
    replica.mkdir()

    async def build() -> None:
        async with actors.open_runtime(
            root, types=[Ledger], replica=actors.DirectoryStore(replica)
        ) as rt:
            await rt.ref(Ledger, "l1").ask(Ledger.add, 1)

    trio.run(build)
    call = ("ask", root, "tests.Ledger", "l1", "add", "--args", "[2]", "--types", LEDGER)
    err = failed(torpor(*call, cwd=ROOT), 2)
    assert "'tests.Ledger' is durable = True" in err and "--replica DIR" in err
    sent = torpor("send", *call[1:], "--replica", replica, cwd=ROOT)
    assert ok(sent) == "sent tests.Ledger 'l1' add\n"
    assert ok(torpor(*call, "--replica", replica, cwd=ROOT)) == "5\n"


# -- 17: torpor bench's replication suite ---------------------------------------------------------


def test_bench_quick_replication_runs_the_replication_suite_quickly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--quick before or after `replication` runs the replication bench, with small counts."""
    given: list[list[str]] = []

    def replication_main(argv: list[str]) -> int:
        given.append(argv)
        return 0

    def core_run(**_: Any) -> Any:
        raise AssertionError("the core bench ran")

    monkeypatch.setattr(bench_replication, "main", replication_main)
    monkeypatch.setattr(bench, "run", core_run)
    assert cli.main(["bench", "--quick", "replication", "--json"]) == 0
    assert cli.main(["bench", "replication", "--quick", "--store", "directory"]) == 0
    assert cli.main(["bench", "--backend", "trio", "replication", "--prefix", "replication"]) == 0
    for argv in given:
        assert "--quick" not in argv and "replication" not in argv[:1]
        bench_replication.parser().parse_args(argv)  # accepted, not refused
    quick = bench_replication.parser().parse_args(given[1])
    assert (quick.seconds, quick.idle_actors, quick.store) == (2.0, 20, "directory")
    assert given[2] == ["--backend", "trio", "--prefix", "replication"]


# -- 18: fork --as --------------------------------------------------------------------------------


def test_fork_refuses_keys_the_api_refuses(made: Made, tmp_path: Path) -> None:
    """fork --as refuses an empty or over-long key (as Runtime.ref does) and forks nothing."""
    mine = copy_of(made, tmp_path)
    fork = ("fork", mine.root, NOTEBOOK, "alice", "--replica", mine.replica, "--as")
    assert "an actor key must not be empty" in failed(torpor(*fork, ""), 2)
    err = failed(torpor(*fork, "k" * 2000), 2)
    assert "at most 1024 UTF-8 bytes (got 2000 bytes)" in err
    assert "k" * 100 not in err
    keys = [a["key"] for a in json.loads(ok(torpor("ls", mine.root, "--json")))["actors"]]
    assert keys == ["alice", "bob"]
    ok(torpor(*fork, "k" * 2000, "--max-key-bytes", "4096"))  # a runtime allowing longer keys


# -- 19: a runtime open in this very process ------------------------------------------------------


def test_a_runtime_open_in_this_very_process_is_said_so(tmp_path: Path) -> None:
    """When the pid holding the runtime is the caller's own, the error says so."""
    root = tmp_path / "rt"
    populate(root)

    async def hold() -> list[str]:
        async with actors.open_runtime(root, types=TYPES):
            errors = []
            for argv in (
                ["send", str(root), "Counter", "alice", "incr", "--types", COUNTER],
                ["dead-letters", str(root), "Picky", "p1", "--drop", "1"],
            ):
                code, err = await trio.to_thread.run_sync(functools.partial(run_main, argv))
                assert code == 1, err
                errors.append(err)
            return errors

    for err in trio.run(hold):
        assert f"is open in this very process (pid {os.getpid()}" in err, err
        assert "another process" not in err.split(";")[0]


def run_main(argv: list[str]) -> tuple[int, str]:
    """``cli.main`` in this process, with its stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, err.getvalue()


def test_a_torpor_command_holding_the_lock_names_its_own_pid(tmp_path: Path) -> None:
    """While torpor holds LOCK, it names torpor's pid there (not a stale one) for others."""
    root = tmp_path / "rt"
    populate(root)
    (root / "LOCK").write_text("999999999\n")  # a pid left by an earlier process
    assert run_main(["dead-letters", str(root), "Picky", "p1", "--drop", "1"])[0] == 0
    assert (root / "LOCK").read_text() == f"{os.getpid()}\n"


# -- 20: sql of an unknown type -------------------------------------------------------------------


def test_sql_of_a_type_no_actor_has_is_refused(made: Made) -> None:
    """sql --type TYPE with no actor of that type fails as inspect does, naming the types."""
    err = failed(torpor("sql", made.root, "SELECT 1", "--type", "Nope"), 1)
    assert err == f"torpor sql: no actor of type Nope in {made.root} (types here: {NOTEBOOK})\n"
    # A known type whose keys match nothing is an empty answer, not an error.
    assert ok(torpor("sql", made.root, "SELECT 1", "--type", NOTEBOOK, "--prefix", "zz")) == (
        "no rows\n"
    )


# -- 21: errors in the user's terms ---------------------------------------------------------------

#: An instant printed as raw epoch seconds.
EPOCH = re.compile(r"\b\d{9,}\.\d+\b")


def test_from_replica_errors_name_the_replica_not_a_temporary_directory(made: Made) -> None:
    """inspect/sql --from-replica errors name the replica, never its temporary directory."""
    replica = ("--from-replica", "--replica", made.replica)
    errors = [
        failed(torpor("inspect", NOTEBOOK, "bob", *replica, "--at", str(made.middle)), 1),
        failed(torpor("inspect", "Nope", "x", *replica), 1),
        failed(torpor("sql", "SELECT 1", "--type", "Nope", *replica), 1),
    ]
    for err in errors:
        assert "torpor-from-replica-" not in err, err  # the temporary directory's name
        assert f"in the replica {made.replica}" in err, err
    assert errors[0].startswith(f"torpor inspect: no actor {NOTEBOOK} 'bob' in the replica")
    assert "(types here: tests.Notebook)" in errors[2]


def test_restore_errors_print_iso_times_and_the_users_names(made: Made, tmp_path: Path) -> None:
    """Restore/fork errors say ISO times (that --at takes back) and actors by type and key."""
    mine = copy_of(made, tmp_path)
    at = ("--replica", mine.replica, "--at", "1000")
    alice = actor_id(NOTEBOOK, "alice")
    errors = [
        failed(torpor("restore", tmp_path / "new", *at), 1),
        failed(torpor("restore", mine.root, "--actor", NOTEBOOK, "alice", *at), 1),
        failed(torpor("fork", mine.root, NOTEBOOK, "alice", "--as", "a2", *at), 1),
        failed(
            torpor("restore", mine.root, "--actor", NOTEBOOK, "zed", "--replica", mine.replica), 1
        ),
    ]
    for err in errors:
        assert not EPOCH.search(err) and "1000.0" not in err, err
        assert alice not in err and actor_id(NOTEBOOK, "zed") not in err, err
    assert "at or before time 1970-01-01T00:16:40Z" in errors[0]
    assert "cannot restore tests.Notebook 'alice': no retained state of its data.db" in errors[1]
    assert "no retained state of its data.db" in errors[2]
    assert f"there is no replica of its data.db in the replica {mine.replica}" in errors[3]
    # The oldest time said is one --at accepts and finds.
    oldest = re.search(r"the oldest snapshot is from (\S+)\)", errors[0])
    assert oldest is not None
    ok(torpor("restore", tmp_path / "oldest", "--replica", mine.replica, "--at", oldest[1]))


def test_a_damaged_actor_in_a_whole_restore_is_named_by_type_and_key(
    made: Made, tmp_path: Path
) -> None:
    """A whole restore failing on one actor's damaged replica names her by type and key."""
    mine = copy_of(made, tmp_path)
    alice = actor_id(NOTEBOOK, "alice")
    for snapshot in (mine.replica / "actors" / alice / "data.db" / "snapshots").iterdir():
        damaged = bytearray(snapshot.read_bytes())
        damaged[len(damaged) // 2] ^= 0xFF
        snapshot.write_bytes(bytes(damaged))
    err = failed(torpor("restore", tmp_path / "new", "--replica", mine.replica), 1)
    assert "of tests.Notebook 'alice'" in err and "checksum" in err, err
    assert alice not in err
    assert not (tmp_path / "new").exists()
