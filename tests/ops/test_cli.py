"""The operator commands of ``torpor`` (ls, inspect, sql, dead-letters, status), run as a
subprocess against a runtime directory made by real actors."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import apsw
import pytest
import trio
import trio.testing

import actors
from tests.support.agents import Counter, Point

ROOT = Path(__file__).resolve().parents[2]
START = 1_900_000_000.0


class Picky(actors.Actor):
    """Refuses negative numbers unless allowed: a message that dead-letters, then succeeds."""

    allow_negative = False  # flipped by a test between runs
    retry = actors.Retry(max_attempts=1)

    async def take(self, x: int, note: Point | None = None) -> int:
        if x < 0 and not Picky.allow_negative:
            raise ValueError(f"negative: {x}")
        self.kv["last"] = x
        return x

    async def last(self) -> int | None:
        value: int | None = self.kv.get("last")
        return value


class Sleeper(actors.Actor):
    """A turn suspended in a durable sleep, with a timer set."""

    async def nap(self, seconds: float) -> str:
        await self.step("fetch", _fetch, "page")
        await self.sleep(seconds)
        return "rested"

    async def remind(self, text: str) -> None:
        self.schedule("reminder", Sleeper.ping, text, after=7200)

    async def ping(self, text: str) -> None:
        self.kv["pinged"] = text


async def _fetch(what: str) -> str:
    return f"<{what}>"


TYPES = [Counter, Picky, Sleeper]


def torpor(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runtime.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` with a digest of its bytes."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def populate(root: Path) -> None:
    async def main() -> None:
        async with actors.open_runtime(
            root, types=TYPES, message_types=[Point], idle_timeout=1, clock=lambda: START
        ) as rt:
            await rt.ref(Counter, "alice").ask(Counter.incr, 5)
            await rt.ref(Counter, "alice").ask(Counter.incr, 2)
            await rt.ref(Counter, "bob").ask(Counter.incr, 1)
            await rt.ref(Counter, "carol").ask(Counter.echo, Point(1, 2))
            with pytest.raises(actors.MessageFailedError):
                await rt.ref(Picky, "p1").ask(Picky.take, -3, note=Point(3, 4))
            await rt.ref(Sleeper, "s1").ask(Sleeper.remind, "water the plants")
            await rt.ref(Sleeper, "s1").send(Sleeper.nap, 3600)
            await trio.sleep(60)  # virtual: everyone hibernates, the nap waits on disk

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A runtime directory with hibernated actors (shared: the tests here only read it)."""
    root = tmp_path_factory.mktemp("cli") / "rt"
    populate(root)
    return root


@pytest.fixture
def fresh(tmp_path: Path) -> Path:
    """A runtime directory of one's own (for tests that write)."""
    root = tmp_path / "rt"
    populate(root)
    return root


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return done.stdout


def failed(done: subprocess.CompletedProcess[str], code: int) -> str:
    assert done.returncode == code, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    assert done.stderr.strip()
    return done.stderr


# -- ls -------------------------------------------------------------------------------------


def test_ls_lists_every_actor_with_its_status(made: Path) -> None:
    """ls prints one aligned row per actor, in (type, key) order, all hibernated here."""
    lines = ok(torpor("ls", made)).splitlines()
    assert lines[0].split() == ["TYPE", "KEY", "STATUS", "PENDING", "NEXT", "WAKE-UP", "CREATED"]
    rows = [line.split()[:4] for line in lines[1:]]
    assert rows == [
        ["Counter", "alice", "hibernated", "no"],
        ["Counter", "bob", "hibernated", "no"],
        ["Counter", "carol", "hibernated", "no"],
        ["Picky", "p1", "hibernated", "no"],
        ["Sleeper", "s1", "hibernated", "no"],
    ]
    # aligned: every row's STATUS column starts where its header does
    column = lines[0].index("STATUS")
    assert all(line[column - 2 : column] == "  " for line in lines[1:])


def test_ls_json_and_filters(made: Path) -> None:
    """--json gives every directory field; --type, --prefix and --status filter."""
    listing = json.loads(ok(torpor("ls", made, "--json")))
    assert listing["more"] is False
    s1 = next(a for a in listing["actors"] if a["key"] == "s1")
    assert s1["type"] == "Sleeper"
    # the earliest timer or durable wait: the hour-long nap wakes before the two-hour reminder
    assert s1["wake_at"] == pytest.approx(START + 3600)
    assert isinstance(s1["created_at"], float)
    keys = [
        a["key"]
        for a in json.loads(ok(torpor("ls", made, "--type", "Counter", "--json")))["actors"]
    ]
    assert keys == ["alice", "bob", "carol"]
    prefixed = json.loads(ok(torpor("ls", made, "--prefix", "ca", "--json")))["actors"]
    assert [a["key"] for a in prefixed] == ["carol"]
    assert json.loads(ok(torpor("ls", made, "--status", "awake", "--json")))["actors"] == []
    limited = json.loads(ok(torpor("ls", made, "--limit", "2", "--json")))
    assert len(limited["actors"]) == 2 and limited["more"] is True
    assert "--limit 0 lists all" in ok(torpor("ls", made, "--limit", "2"))


def test_ls_shows_a_deletion_left_unfinished(fresh: Path) -> None:
    """An actor whose deletion waits (for the store, or the next open) is listed as deleting."""
    conn = apsw.Connection(str(fresh / "directory.db"))
    conn.execute("UPDATE actors SET deleting = 1 WHERE key = 'bob'")
    conn.close()
    listing = json.loads(ok(torpor("ls", fresh, "--status", "deleting", "--json")))
    assert [(a["key"], a["status"]) for a in listing["actors"]] == [("bob", "deleting")]


# -- inspect ----------------------------------------------------------------------------------


def test_inspect_does_not_wake_or_touch_files(made: Path) -> None:
    """inspect, ls, sql, dead-letters and status leave every file byte for byte and create none."""
    # Not even a -shm or a -wal.
    before = snapshot(made)
    ok(torpor("inspect", made, "Counter", "alice"))
    ok(torpor("inspect", made, "Sleeper", "s1", "--json"))
    ok(torpor("ls", made))
    ok(torpor("status", made))
    ok(torpor("sql", made, "SELECT count(*) FROM log", "--type", "Counter"))
    ok(torpor("dead-letters", made, "Picky", "p1"))
    after = snapshot(made)
    assert after == before
    assert not [name for name in after if name.endswith("-shm")]


def test_inspect_shows_tables_kv_and_dead_letters(made: Path) -> None:
    """inspect prints user tables with their first rows, decoded kv values and dead letters."""
    text = ok(torpor("inspect", made, "Counter", "alice"))
    assert text.splitlines()[0] == "Counter 'alice'  hibernated"
    assert "log: 2 rows" in text
    assert re.search(r"^KV \(1\)\n  KEY  VALUE\n  n    7$", text, re.M)
    assert "replication   no state saved" in text
    report = json.loads(ok(torpor("inspect", made, "Counter", "alice", "--json")))
    assert report["tables"] == [
        {"name": "log", "rows": 2, "columns": ["by"], "first_rows": [[5], [2]]}
    ]
    assert report["kv"] == {"n": 7}
    assert report["applied_seq"] == 2
    assert report["inbox"] == [] and report["turns"] == [] and report["dead_letters"] == []

    picky = json.loads(ok(torpor("inspect", made, "Picky", "p1", "--json")))
    [letter] = picky["dead_letters"]
    assert letter["method"] == "take"
    assert letter["args"] == [-3]
    assert letter["kwargs"] == {
        "note": {"$type": "tests.support.agents.Point", "fields": {"x": 3, "y": 4}}
    }
    assert letter["error_type"] == "ValueError"
    assert letter["reason"] == "exhausted"
    assert letter["error_message"] == "negative: -3"
    assert "Traceback" in letter["traceback"]
    text = ok(torpor("inspect", made, "Picky", "p1"))
    assert "take(-3, note=Point(x=3, y=4))" in text
    assert "ValueError: negative: -3" in text


def test_inspect_shows_the_turn_in_flight_and_timers(made: Path) -> None:
    """inspect shows a turn in a durable sleep with its journaled steps, and timers decoded."""
    report = json.loads(ok(torpor("inspect", made, "Sleeper", "s1", "--json")))
    [message] = report["inbox"]
    assert (message["method"], message["args"]) == ("nap", [3600])
    [turn] = report["turns"]
    assert (turn["seq"], turn["method"], turn["status"]) == (message["seq"], "nap", "waiting")
    steps = [(s["number"], s["name"], s["status"]) for s in turn["steps"]]
    assert steps[0] == (0, "fetch", "done")
    assert turn["steps"][0]["value"] == "<page>"
    assert steps[1][2] == "waiting"
    assert turn["steps"][1]["until"] == pytest.approx(START + 3600)
    [timer] = report["timers"]
    assert timer["name"] == "reminder"
    assert (timer["method"], timer["args"]) == ("ping", ["water the plants"])
    assert timer["due_at"] == pytest.approx(START + 7200)
    text = ok(torpor("inspect", made, "Sleeper", "s1"))
    assert "Turns in flight (1)" in text
    assert "ping('water the plants')" in text


def test_inspect_unknown_actor_is_a_one_line_error(made: Path, tmp_path: Path) -> None:
    """An unknown actor or a path that is no runtime gives one line on stderr and status 1."""
    err = failed(torpor("inspect", made, "Counter", "nobody"), 1)
    assert err == f"torpor inspect: no actor Counter 'nobody' in {made}\n"
    err = failed(torpor("inspect", made, "Nope", "x"), 1)
    assert "types here: Counter, Picky, Sleeper" in err
    err = failed(torpor("ls", tmp_path / "missing"), 1)
    assert "is not a torpor runtime directory (does not exist)" in err
    assert not (tmp_path / "missing").exists()
    failed(torpor("inspect", made, "Counter"), 2)  # usage: KEY missing
    failed(torpor("ls", made, "--status", "asleep"), 2)


# -- sql --------------------------------------------------------------------------------------


def test_sql_runs_across_actors(made: Path) -> None:
    """sql runs one query on each actor of the type and prefixes its rows with the key."""
    lines = ok(torpor("sql", made, "SELECT count(*) AS n, sum(by) FROM log", "--type", "Counter"))
    assert [line.split() for line in lines.splitlines()] == [
        ["KEY", "n", "sum(by)"],
        ["alice", "2", "7"],
        ["bob", "1", "1"],
        ["carol", "0", "NULL"],
    ]
    result = json.loads(
        ok(torpor("sql", made, "SELECT by FROM log", "--type", "Counter", "--json"))
    )
    assert result["columns"] == ["by"]
    assert result["rows"] == [
        {"key": "alice", "values": [5]},
        {"key": "alice", "values": [2]},
        {"key": "bob", "values": [1]},
    ]
    only = json.loads(
        ok(
            torpor(
                "sql", made, "SELECT by FROM log", "--type", "Counter", "--prefix", "b", "--json"
            )
        )
    )
    assert only["rows"] == [{"key": "bob", "values": [1]}]


@pytest.mark.parametrize(
    "statement",
    [
        "DELETE FROM log",
        "INSERT INTO log VALUES (9)",
        "DROP TABLE log",
        "UPDATE _torpor_kv SET value = x'00'",
        "CREATE TABLE other(x)",
        "ATTACH 'elsewhere.db' AS other",
        "PRAGMA user_version = 7",
        "SELECT 1; DELETE FROM log",
    ],
)
def test_sql_refuses_writes(fresh: Path, statement: str) -> None:
    """A statement that would write is refused (status 2) and nothing changes."""
    before = snapshot(fresh)
    err = failed(torpor("sql", fresh, statement, "--type", "Counter"), 2)
    assert "only read-only queries run here" in err
    assert snapshot(fresh) == before
    assert not (fresh / "elsewhere.db").exists() and not Path("elsewhere.db").exists()


def test_sql_reports_actors_it_could_not_query(made: Path) -> None:
    """A query that fails on every actor says so once on stderr, with status 1."""
    done = torpor("sql", made, "SELECT * FROM nowhere", "--type", "Counter")
    err = failed(done, 1)
    assert err == "torpor sql: no such table: nowhere (in all 3 actors)\n"
    done = torpor("sql", made, "SELECT by FROM log WHERE by > 4", "--type", "Counter")
    assert done.returncode == 0 and done.stdout.split() == ["KEY", "by", "alice", "5"]


# -- dead letters ------------------------------------------------------------------------------


def test_dead_letter_replay_runs_at_the_next_open(fresh: Path) -> None:
    """--replay moves the dead letter back into the inbox; the next runtime runs it."""
    listing = json.loads(ok(torpor("dead-letters", fresh, "Picky", "p1", "--json")))
    [letter] = listing
    seq = letter["seq"]
    out = ok(torpor("dead-letters", fresh, "Picky", "p1", "--replay", str(seq)))
    assert f"replayed dead letter {seq} of Picky 'p1' as message" in out
    assert json.loads(ok(torpor("dead-letters", fresh, "Picky", "p1", "--json"))) == []
    pending = json.loads(ok(torpor("ls", fresh, "--status", "pending", "--json")))["actors"]
    assert [(a["type"], a["key"]) for a in pending] == [("Picky", "p1")]
    failed(torpor("dead-letters", fresh, "Picky", "p1", "--replay", str(seq)), 1)

    async def reopen() -> Any:
        Picky.allow_negative = True
        try:
            async with actors.open_runtime(fresh, types=TYPES, message_types=[Point]) as rt:
                return await rt.ref(Picky, "p1").ask(Picky.last)
        finally:
            Picky.allow_negative = False

    assert trio.run(reopen) == -3


def test_dead_letter_drop(fresh: Path) -> None:
    """--drop deletes the dead letter for good; an unknown seq is a one-line error."""
    [letter] = json.loads(ok(torpor("dead-letters", fresh, "Picky", "p1", "--json")))
    err = failed(torpor("dead-letters", fresh, "Picky", "p1", "--drop", "999"), 1)
    assert err == "torpor dead-letters: Picky 'p1' has no dead letter 999\n"
    assert json.loads(
        ok(torpor("dead-letters", fresh, "Picky", "p1", "--drop", str(letter["seq"]), "--json"))
    ) == {"dropped": letter["seq"]}
    assert "has no dead letters" in ok(torpor("dead-letters", fresh, "Picky", "p1"))


# -- status ------------------------------------------------------------------------------------


def test_status_counts(made: Path) -> None:
    """status counts actors by type from directory.db and reports the runtime closed."""
    s = json.loads(ok(torpor("status", made, "--json")))
    assert (s["actors"], s["pending"], s["stopped"], s["with_timers"]) == (5, 0, 0, 1)
    assert s["open"] is False
    assert s["replication"].startswith("no restore recorded")
    assert [(t["type"], t["actors"]) for t in s["by_type"]] == [
        ("Counter", 3),
        ("Picky", 1),
        ("Sleeper", 1),
    ]
    assert s["actor_folders"] == 5
    assert s["disk_bytes"] >= sum(p.stat().st_size for p in made.rglob("*.db"))
    text = ok(torpor("status", made))
    assert "open          no" in text
    assert "actors        5  (pending 0, stopped 0, with timers 1)" in text


# -- a runtime open in another process ----------------------------------------------------------

HOLDER = """
import sys, trio, actors
from tests.support.agents import Counter

async def main():
    async with actors.open_runtime(sys.argv[1], types=[Counter], idle_timeout=3600) as rt:
        await rt.ref(Counter, "alice").ask(Counter.incr, 1)
        print("ready", flush=True)
        await trio.to_thread.run_sync(sys.stdin.read)

trio.run(main)
"""


def test_commands_against_a_running_runtime(fresh: Path, tmp_path: Path) -> None:
    """Against a runtime open elsewhere, inspect, ls, status and sql work and replay refuses."""
    # alice is awake in the other runtime: inspect says so in one line, ls and status see her, sql
    # skips her, and replay refuses because that runtime holds LOCK.
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen(
        [sys.executable, str(script), str(fresh)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    ) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
            err = failed(torpor("inspect", fresh, "Counter", "alice"), 1)
            assert err == (
                "torpor inspect: Counter 'alice' is awake in a running runtime; "
                "try again when it hibernates\n"
            )
            ok(torpor("inspect", fresh, "Counter", "bob"))  # hibernated: readable meanwhile
            awake = json.loads(ok(torpor("ls", fresh, "--status", "awake", "--json")))["actors"]
            assert [(a["type"], a["key"]) for a in awake] == [("Counter", "alice")]
            assert json.loads(ok(torpor("status", fresh, "--json")))["open"] is True
            done = torpor("sql", fresh, "SELECT count(*) FROM log", "--type", "Counter")
            assert [line.split() for line in ok(done).splitlines()] == [
                ["KEY", "count(*)"],
                ["bob", "1"],
                ["carol", "0"],
            ]
            assert "skipped Counter 'alice': awake in a running runtime" in done.stderr
            err = failed(torpor("dead-letters", fresh, "Picky", "p1", "--drop", "1"), 1)
            assert "is open in another process" in err
        finally:
            holder.communicate("", timeout=60)
    assert holder.returncode == 0
    assert json.loads(ok(torpor("inspect", fresh, "Counter", "alice", "--json")))["kv"] == {"n": 8}


# -- the how-to page ------------------------------------------------------------------------------

PAGE = ROOT / "docs" / "howto" / "cli.md"


def _blocks(kind: str) -> list[str]:
    return re.findall(rf"^```{kind}\n(.*?)^```", PAGE.read_text(), re.S | re.M)


def test_howto_commands_run(tmp_path: Path) -> None:
    """Each command in docs/howto/replication.md's sh blocks runs in order and does as it says."""
    # They run after the page's first program, with the time it printed.
    [program] = _blocks("python")
    (tmp_path / "make_agents.py").write_text(program)
    done = subprocess.run(
        [sys.executable, "make_agents.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    commands = [
        line
        for block in _blocks("sh")
        for line in textwrap.dedent(block).splitlines()
        if line.startswith("torpor ")
    ]
    assert len(commands) >= 6
    for command in commands:
        args = shlex.split(command)[1:]
        done = torpor(*args, cwd=tmp_path)
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
