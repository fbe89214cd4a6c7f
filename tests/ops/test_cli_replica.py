"""``torpor restore`` and ``torpor fork``: a runtime replicated to a DirectoryStore, rebuilt
from it (whole, at a point in time, one actor) and forked, by the command run as a subprocess."""

from __future__ import annotations

import datetime as dt
import json
import os
import pty
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import apsw
import attrs
import msgpack
import pytest
import trio

import actors
from runtime.files.layout import actor_dir, actor_id
from runtime.ops.fork import ForkChanges, quiet_fork
from runtime.replica.shipper import restore_actor_files
from tests.support.s3server import S3Server

ROOT = Path(__file__).resolve().parents[2]
ENTRY_POINT = Path(sys.executable).with_name("torpor")  # the venv's console script


class Notebook(actors.Actor, name="tests.Notebook"):
    """Notes in a table and a count in kv; a durable nap (a turn in flight) and a reminder."""

    migrations = ["CREATE TABLE notes(text TEXT NOT NULL)"]

    async def add(self, text: str) -> int:
        self.sql.execute("INSERT INTO notes(text) VALUES (?)", (text,))
        count = int(self.kv.get("count", 0)) + 1
        self.kv["count"] = count
        return count

    async def nap(self, seconds: float) -> str:
        await self.sleep(seconds)
        self.kv["napped"] = True
        return "rested"

    async def remind(self, text: str, after: float) -> None:
        self.schedule("reminder", Notebook.ring, text, after=after)

    async def ring(self, text: str) -> None:
        self.kv["rang"] = text

    @actors.query
    async def notes(self) -> list[str]:
        return [row[0] for row in self.sql.execute("SELECT text FROM notes ORDER BY rowid")]

    @actors.query
    async def state(self) -> dict[str, Any]:
        return {"count": self.kv.get("count", 0), "napped": self.kv.get("napped", False)}


FAST = actors.Replication(max_delay=0.05, min_delay=0.01)


def torpor(*args: str | Path, **kw: Any) -> subprocess.CompletedProcess[str]:
    command = [str(ENTRY_POINT)] if ENTRY_POINT.exists() else [sys.executable, "-m", "runtime.cli"]
    streams = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **kw}
    return subprocess.run([*command, *map(str, args)], text=True, timeout=60, **streams)


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    return done.stdout


def failed(done: subprocess.CompletedProcess[str], code: int) -> str:
    assert done.returncode == code, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    assert done.stderr.strip()
    return done.stderr


def run(root: Path, replica: Path, fn: Callable[[actors.Runtime], Awaitable[Any]]) -> Any:
    """Open the runtime at ``root`` replicated to ``replica``, run ``fn``, close."""

    async def main() -> Any:
        async with actors.open_runtime(
            root, types=[Notebook], replica=actors.DirectoryStore(replica), replication=FAST
        ) as rt:
            return await fn(rt)

    return trio.run(main)


def book(rt: actors.Runtime, key: str) -> actors.Ref[Notebook]:
    return rt.ref(Notebook, key)


@attrs.frozen
class Made:
    root: Path
    replica: Path
    middle: float  # a time between the two halves of the history


def make(tmp_path: Path) -> Made:
    """alice writes two notes, then (after ``middle``) a third, naps with a turn in flight and
    sets a reminder; bob exists only after ``middle``."""
    root, replica = tmp_path / "rt", tmp_path / "replica"
    replica.mkdir()

    async def first(rt: actors.Runtime) -> None:
        alice = book(rt, "alice")
        await alice.ask(Notebook.add, "buy milk")
        await alice.ask(Notebook.add, "call Bob")

    run(root, replica, first)  # closing snapshots every file into the replica
    middle = time.time()
    time.sleep(0.01)  # what follows is stamped later

    async def second(rt: actors.Runtime) -> None:
        alice = book(rt, "alice")
        await alice.ask(Notebook.add, "water the plants")
        await book(rt, "bob").ask(Notebook.add, "hello")
        await alice.ask(Notebook.remind, "standup", after=3600)
        await alice.send(Notebook.nap, 3600)
        for _ in range(1000):  # the nap waits on disk: a turn in flight
            if [t.status for t in await rt.turns(alice)] == ["waiting"]:
                break
            await trio.sleep(0.01)
        else:
            raise AssertionError("the nap did not start")

    run(root, replica, second)
    return Made(root, replica, middle)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Made:
    """A replicated runtime, closed (shared: tests only read it and its replica, or a copy)."""
    return make(tmp_path_factory.mktemp("made"))


def replica_copy(made: Made, tmp_path: Path) -> Path:
    """A copy of the shared replica, for a test that opens a runtime on it (which writes)."""
    copy = tmp_path / "replica-copy"
    shutil.copytree(made.replica, copy)
    return copy


@pytest.fixture
def fresh(tmp_path: Path) -> Made:
    """A replicated runtime of one's own (for tests that write into it)."""
    return make(tmp_path)


def inspect_json(root: Path, key: str, type_name: str = "tests.Notebook") -> dict[str, Any]:
    report: dict[str, Any] = json.loads(ok(torpor("inspect", root, type_name, key, "--json")))
    return report


# -- restoring a whole runtime -------------------------------------------------------------------


def test_restore_rebuilds_the_runtime_and_it_opens(made: Made, tmp_path: Path) -> None:
    """restore into a new directory rebuilds every actor, and the runtime opens there up to date."""
    # The runtime has the latest state, with the turn in flight still waiting.
    target, replica = tmp_path / "restored", replica_copy(made, tmp_path)
    out = ok(torpor("restore", target, "--replica", replica))
    assert out.startswith(f"restored {target} (the latest state): 2 actors")
    assert [a["key"] for a in json.loads(ok(torpor("ls", target, "--json")))["actors"]] == [
        "alice",
        "bob",
    ]

    async def check(rt: actors.Runtime) -> Any:
        alice = book(rt, "alice")
        return (
            await alice.ask(Notebook.notes),
            await book(rt, "bob").ask(Notebook.notes),
            [(t.method, t.status) for t in await rt.turns(alice)],
        )

    notes, bob, turns = run(target, replica, check)
    assert notes == ["buy milk", "call Bob", "water the plants"]
    assert bob == ["hello"]
    assert turns == [("nap", "waiting")]


def test_restore_at_a_point_in_time(made: Made, tmp_path: Path) -> None:
    """restore --at (epoch seconds or ISO-8601) restores the state as it was at that time."""
    # Then, bob did not exist yet and alice had two notes.
    iso = dt.datetime.fromtimestamp(made.middle, dt.UTC).isoformat().replace("+00:00", "Z")
    for at in (str(made.middle), iso):
        target = tmp_path / f"at-{len(at)}"
        summary = json.loads(
            ok(torpor("restore", target, "--replica", made.replica, "--at", at, "--json"))
        )
        assert summary["at"] == pytest.approx(made.middle)
        assert (summary["actors"], summary["restored"], summary["not_replicated"]) == (1, 1, 0)
        report = inspect_json(target, "alice")
        assert report["kv"] == {"count": 2}
        assert report["tables"][0]["rows"] == 2
        assert report["inbox"] == [] and report["timers"] == []


def test_restore_refuses_a_target_that_is_not_empty(made: Made, tmp_path: Path) -> None:
    """restore refuses a non-empty target, a missing replica or a time before the history."""
    # A target holding a runtime, or anything, is left as it was, and nothing is left behind.
    err = failed(torpor("restore", made.root, "--replica", made.replica), 1)
    assert "already holds a runtime (directory.db)" in err and "--actor TYPE KEY" in err
    cluttered = tmp_path / "cluttered"
    cluttered.mkdir()
    (cluttered / "notes.txt").write_text("mine")
    err = failed(torpor("restore", cluttered, "--replica", made.replica), 1)
    assert "is not empty" in err
    assert [p.name for p in cluttered.iterdir()] == ["notes.txt"]

    target = tmp_path / "target"
    err = failed(torpor("restore", target, "--replica", made.replica, "--at", "1000000000"), 1)
    assert "no retained state of 'directory.db'" in err
    assert not target.exists()
    empty = tmp_path / "empty-replica"
    empty.mkdir()
    err = failed(torpor("restore", target, "--replica", empty), 1)
    assert "there is no replica of 'directory.db'" in err
    assert not target.exists()


def test_replica_options_are_checked(made: Made, tmp_path: Path) -> None:
    """Missing, doubled or mixed replica options, or a zoneless time, are usage errors (exit 2)."""
    # No replica, two replicas, an S3 option with a directory, or a time without its zone.
    target = tmp_path / "t"
    assert "--replica DIR or --s3-bucket" in failed(torpor("restore", target), 2)
    both = torpor("restore", target, "--replica", made.replica, "--s3-bucket", "b")
    assert "not both" in failed(both, 2)
    prefixed = torpor("restore", target, "--replica", made.replica, "--s3-prefix", "p")
    assert "--s3-prefix goes with --s3-bucket" in failed(prefixed, 2)
    naive = torpor("restore", target, "--replica", made.replica, "--at", "2026-11-25T10:00:00")
    assert "has no time zone" in failed(naive, 2)
    assert "neither epoch seconds" in failed(
        torpor("restore", target, "--replica", made.replica, "--at", "yesterday"), 2
    )
    assert not target.exists()


def test_progress_bar_only_on_a_terminal(made: Made, tmp_path: Path) -> None:
    """The progress bar is drawn only on a terminal; the summary line is printed either way."""
    # On a terminal the bar is redrawn with \r; piped, stderr stays empty.
    done = torpor("restore", tmp_path / "piped", "--replica", made.replica)
    assert ok(done).startswith("restored ") and done.stderr == ""

    controller, terminal = pty.openpty()
    try:
        done = torpor("restore", tmp_path / "tty", "--replica", made.replica, stderr=terminal)
        os.close(terminal)
        terminal = -1
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: the terminal's other end is closed
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(controller)
        if terminal != -1:
            os.close(terminal)
    assert done.returncode == 0 and done.stdout.startswith("restored ")
    text = shown.decode()
    assert "\r" in text and "2/2 actors" in text and "#" * 30 in text


# -- one actor -------------------------------------------------------------------------------------


def test_restore_one_actor_into_the_closed_runtime(fresh: Made) -> None:
    """restore --actor --at puts alice back as she was at that time, and leaves bob untouched."""
    # Her previous files are kept aside, and she is pending so that she wakes.
    out = ok(
        torpor(
            "restore",
            fresh.root,
            "--replica",
            fresh.replica,
            "--actor",
            "tests.Notebook",
            "alice",
            "--at",
            str(fresh.middle),
        )
    )
    assert "restored tests.Notebook 'alice' (the state at " in out
    folder = actor_dir(fresh.root, actor_id("tests.Notebook", "alice"))
    [aside] = [p for p in folder.iterdir() if p.name.startswith("superseded-")]
    assert f"its previous files are in {aside}" in out
    assert (aside / "data.db").exists() and not (folder / "replica.json").exists()
    assert [a["key"] for a in json.loads(ok(torpor("ls", fresh.root, "--json")))["actors"]] == [
        "alice",
        "bob",
    ]
    assert inspect_json(fresh.root, "alice")["actor"]["pending"] is True

    async def check(rt: actors.Runtime) -> Any:
        return (
            await book(rt, "alice").ask(Notebook.notes),
            await book(rt, "bob").ask(Notebook.notes),
        )

    assert run(fresh.root, fresh.replica, check) == (["buy milk", "call Bob"], ["hello"])

    # The latest again (what the runtime replicated since, i.e. the state it just had).
    done = torpor(
        "restore",
        fresh.root,
        "--replica",
        fresh.replica,
        "--actor",
        "tests.Notebook",
        "alice",
        "--json",
    )
    summary = json.loads(ok(done))
    assert summary["actor"] == {
        "type": "tests.Notebook",
        "key": "alice",
        "id": actor_id("tests.Notebook", "alice"),
    }
    assert summary["at"] is None and summary["pending"] is True
    assert inspect_json(fresh.root, "alice")["kv"] == {"count": 2}


def test_restore_of_an_actor_the_replica_lacks(fresh: Made) -> None:
    """An actor with no replica is a one-line error and its folder is not created."""
    err = failed(
        torpor(
            "restore",
            fresh.root,
            "--replica",
            fresh.replica,
            "--actor",
            "tests.Notebook",
            "nobody",
        ),
        1,
    )
    assert err.startswith("torpor restore: cannot restore tests.Notebook 'nobody': ")
    assert not actor_dir(fresh.root, actor_id("tests.Notebook", "nobody")).exists()


def test_restore_and_fork_refuse_while_the_runtime_is_open(fresh: Made) -> None:
    """restore --actor and fork refuse and change nothing while the runtime is open."""
    # The open runtime holds LOCK.

    async def attempt(rt: actors.Runtime) -> list[subprocess.CompletedProcess[str]]:
        await book(rt, "bob").ask(Notebook.add, "again")
        args = ("--replica", fresh.replica)
        return [
            await trio.to_thread.run_sync(
                lambda: torpor("restore", fresh.root, *args, "--actor", "tests.Notebook", "alice")
            ),
            await trio.to_thread.run_sync(
                lambda: torpor("fork", fresh.root, "tests.Notebook", "alice", "--as", "a2", *args)
            ),
        ]

    for done in run(fresh.root, fresh.replica, attempt):
        assert "is open in another process" in failed(done, 1)
    folder = actor_dir(fresh.root, actor_id("tests.Notebook", "alice"))
    assert not [p for p in folder.iterdir() if p.name.startswith("superseded-")]
    assert [a["key"] for a in json.loads(ok(torpor("ls", fresh.root, "--json")))["actors"]] == [
        "alice",
        "bob",
    ]


# -- fork ------------------------------------------------------------------------------------------


def test_fork_at_a_point_in_time(fresh: Made) -> None:
    """fork --at makes a new actor with alice's past state, while alice keeps her current state."""
    # Once the runtime is open, the fork answers with that past state.
    out = ok(
        torpor(
            "fork",
            fresh.root,
            "tests.Notebook",
            "alice",
            "--at",
            str(fresh.middle),
            "--as",
            "alice-then",
            "--replica",
            fresh.replica,
        )
    )
    assert out.startswith("forked tests.Notebook 'alice' (the state at ")
    assert "into tests.Notebook 'alice-then'" in out
    listed = json.loads(ok(torpor("ls", fresh.root, "--json")))["actors"]
    fork = next(a for a in listed if a["key"] == "alice-then")
    assert (fork["status"], fork["pending"], fork["wake_at"]) == ("hibernated", False, None)

    async def check(rt: actors.Runtime) -> Any:
        then, now = book(rt, "alice-then"), book(rt, "alice")
        answers = (await then.ask(Notebook.notes), await now.ask(Notebook.notes))
        await then.ask(Notebook.add, "a new path")
        return (*answers, await then.ask(Notebook.notes), await now.ask(Notebook.notes))

    then, now, then_after, now_after = run(fresh.root, fresh.replica, check)
    assert then == ["buy milk", "call Bob"]
    assert now == now_after == ["buy milk", "call Bob", "water the plants"]
    assert then_after == ["buy milk", "call Bob", "a new path"]


def test_fork_does_not_run_the_originals_queued_work(fresh: Made) -> None:
    """A fork of the latest state has the original's turn in flight as a dead letter, not a run."""
    # Here alice's nap in flight: it does not run by surprise, replaying the dead letter runs it,
    # and her reminder is not kept.
    report = json.loads(
        ok(
            torpor(
                "fork",
                fresh.root,
                "tests.Notebook",
                "alice",
                "--as",
                "alice-2",
                "--replica",
                fresh.replica,
                "--json",
            )
        )
    )
    assert report["from"]["key"] == "alice" and report["to"]["key"] == "alice-2"
    assert report["to"]["id"] == actor_id("tests.Notebook", "alice-2")
    assert report["timers_dropped"] == ["reminder"] and report["timers_kept"] == []
    [seq] = report["dead_letters"]
    forked = inspect_json(fresh.root, "alice-2")
    assert forked["kv"] == {"count": 3}
    assert forked["inbox"] == [] and forked["turns"] == [] and forked["timers"] == []
    [letter] = forked["dead_letters"]
    assert (letter["seq"], letter["method"], letter["args"]) == (seq, "nap", [3600])
    assert letter["error_type"] == "torpor.NotRunInFork"
    assert (
        letter["error_message"]
        == "queued in 'alice' when it was forked; not run (replay it to run it)"
    )
    original = inspect_json(fresh.root, "alice")  # unchanged
    assert [t["method"] for t in original["turns"]] == ["nap"]
    assert [t["name"] for t in original["timers"]] == ["reminder"]

    err = failed(
        torpor(
            "fork",
            fresh.root,
            "tests.Notebook",
            "bob",
            "--as",
            "alice-2",
            "--replica",
            fresh.replica,
        ),
        1,
    )
    assert err == "torpor fork: actor tests.Notebook 'alice-2' already exists\n"

    ok(torpor("dead-letters", fresh.root, "tests.Notebook", "alice-2", "--replay", str(seq)))

    async def check(rt: actors.Runtime) -> Any:
        fork = book(rt, "alice-2")
        for _ in range(1000):
            if [t.status for t in await rt.turns(fork)] == ["waiting"]:
                break
            await trio.sleep(0.01)
        return await fork.ask(Notebook.state), [t.method for t in await rt.turns(fork)]

    state, turns = run(fresh.root, fresh.replica, check)
    assert state == {"count": 3, "napped": False}
    assert turns == ["nap"]  # replayed: now it is the fork's own turn, sleeping


def test_fork_keep_timers(fresh: Made) -> None:
    """--keep-timers keeps the reminder, due when alice's is; the directory knows when."""
    out = ok(
        torpor(
            "fork",
            fresh.root,
            "tests.Notebook",
            "alice",
            "--as",
            "alice-3",
            "--keep-timers",
            "--replica",
            fresh.replica,
        )
    )
    assert "1 message queued in 'alice' did not run: it is a dead letter of 'alice-3'" in out
    assert "1 timer kept: reminder" in out
    forked = inspect_json(fresh.root, "alice-3")
    original = inspect_json(fresh.root, "alice")
    [timer] = forked["timers"]
    assert timer["due_at"] == original["timers"][0]["due_at"]
    assert forked["actor"]["wake_at"] == pytest.approx(timer["due_at"])


def test_fork_leaves_unsent_messages_to_the_original(made: Made, tmp_path: Path) -> None:
    """A fork sends none of the original's unsent messages: they stay hers or are dead letters."""
    # One to another actor stays the original's to send; one to herself (a timer's firing) becomes a
    # dead letter of the fork.
    folder = tmp_path / "fork"
    restore_actor_files(
        actors.DirectoryStore(made.replica), actor_id("tests.Notebook", "alice"), folder
    )
    payload = msgpack.packb([["standup"], {}])
    data = apsw.Connection(str(folder / "data.db"))
    with data:
        data.execute(
            "INSERT INTO _torpor_outbox(target_type, target_key, method, payload) "
            "VALUES ('tests.Notebook', 'bob', 'add', ?), ('tests.Notebook', 'alice', 'ring', ?)",
            (payload, payload),
        )
    data.close()
    changes = ForkChanges()
    quiet_fork(folder, "tests.Notebook", "alice", changes, keep_timers=False)

    assert changes.outbox_dropped == 1 and changes.timers_dropped == ["reminder"]
    data = apsw.Connection(str(folder / "data.db"))
    assert data.execute("SELECT count(*) FROM _torpor_outbox").fetchall() == [(0,)]
    mailbox = apsw.Connection(str(folder / "mailbox.db"))
    letters = mailbox.execute("SELECT seq, method FROM dead_letters ORDER BY seq").fetchall()
    assert [method for _, method in letters] == ["nap", "ring"]
    assert [seq for seq, _ in letters] == changes.dead_lettered
    assert mailbox.execute("SELECT count(*) FROM inbox").fetchall() == [(0,)]
    data.close()
    mailbox.close()


# -- S3 -------------------------------------------------------------------------------------------


def test_restore_from_s3(s3_credentials: S3Server, tmp_path: Path) -> None:
    """The --s3-* options name an S3Store: a runtime replicated to SeaweedFS is restored from it."""
    # Credentials come from the environment, as boto3 finds them.
    server, prefix = s3_credentials, f"cli-{uuid.uuid4().hex[:12]}"
    store = actors.S3Store(
        server.bucket,
        prefix=prefix,
        endpoint_url=server.endpoint_url,
        region=server.region,
        path_style=True,
    )

    async def write() -> None:
        async with actors.open_runtime(tmp_path / "rt", types=[Notebook], replica=store) as rt:
            await book(rt, "alice").ask(Notebook.add, "in the bucket")

    try:
        trio.run(write)
    finally:
        store.close()
    target = tmp_path / "restored"
    s3 = [
        "--s3-bucket",
        server.bucket,
        "--s3-endpoint-url",
        server.endpoint_url,
        "--s3-region",
        server.region,
        "--s3-path-style",
    ]
    summary = json.loads(ok(torpor("restore", target, *s3, "--s3-prefix", prefix, "--json")))
    assert (summary["actors"], summary["restored"]) == (1, 1)
    assert inspect_json(target, "alice")["kv"] == {"count": 1}
    err = failed(torpor("restore", tmp_path / "other", *s3, "--s3-prefix", "nothing-here"), 1)
    assert "there is no replica of 'directory.db'" in err


def test_restore_of_an_actor_another_runtime_wrote_is_refused(made: Made, tmp_path: Path) -> None:
    """In a runtime restored elsewhere, restore --at of an actor's past is refused; fork works."""
    # Here alice, in a runtime with its own runtime id: the next wake-up would fetch the original's
    # latest over the restored past. Forking her past into a new key works there.
    target, replica = tmp_path / "elsewhere", replica_copy(made, tmp_path)
    ok(torpor("restore", target, "--replica", replica))
    args = ("--replica", replica, "--at", str(made.middle))
    err = failed(torpor("restore", target, "--actor", "tests.Notebook", "alice", *args), 1)
    assert "was last written by runtime" in err and "Fork it to a new key instead" in err
    folder = actor_dir(target, actor_id("tests.Notebook", "alice"))
    assert not [p for p in folder.iterdir() if p.name.startswith(("superseded-", ".restore-"))]
    ok(torpor("fork", target, "tests.Notebook", "alice", "--as", "alice-then", *args))

    async def check(rt: actors.Runtime) -> Any:
        return (
            await book(rt, "alice-then").ask(Notebook.notes),
            await book(rt, "alice").ask(Notebook.notes),
        )

    assert run(target, replica, check) == (
        ["buy milk", "call Bob"],
        ["buy milk", "call Bob", "water the plants"],
    )


# -- the how-to page -------------------------------------------------------------------------------

PAGE = ROOT / "docs" / "howto" / "replication.md"
#: The time the page's commands show; the test uses the one its program printed instead.
PAGE_TIME = "2026-11-25T10:00:00Z"


def _blocks(kind: str) -> list[str]:
    return re.findall(rf"^```{kind}\n(.*?)^```", PAGE.read_text(), re.S | re.M)


def test_howto_commands_run(tmp_path: Path) -> None:
    """Each command in docs/howto/replication.md's sh blocks runs in order and does as it says."""
    # They run after the page's first program, with the time it printed.
    program = _blocks("python")[0]
    (tmp_path / "assistant.py").write_text(program)
    done = subprocess.run(
        [sys.executable, "assistant.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    [before] = [
        line.removeprefix("before Lisbon:").strip()
        for line in done.stdout.splitlines()
        if line.startswith("before Lisbon:")
    ]
    commands = [
        line.replace(PAGE_TIME, before)
        for block in _blocks("sh")
        for line in textwrap.dedent(block).splitlines()
        if line.startswith("torpor ")
    ]
    assert len(commands) >= 6 and any(before in c for c in commands)
    for command in commands:
        done = torpor(*shlex.split(command)[1:], cwd=tmp_path)
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"

    def chat(root: str, key: str) -> Any:
        return inspect_json(tmp_path / root, key, "howto.Assistant")["tables"][0]["first_rows"]

    lisbon = [[1, "hello"], [2, "plan a trip"], [3, "make it Lisbon"]]
    assert chat("restored-rt", "alice") == lisbon
    assert chat("before-rt", "alice") == lisbon[:2]
    assert chat("agents-rt", "alice") == lisbon[:2]  # restored in place
    assert chat("agents-rt", "alice-before") == lisbon[:2]
