"""torpor replication: a replica, a lost machine, a restore, and a fork of the past.

    python examples/replication.py [DIR]

DIR must be a new or empty folder (a temporary one if omitted): the demo starts afresh, and
deletes nothing it did not create.

1. runs an agent on "machine A", replicated to a DirectoryStore (a folder standing in for an
   S3 bucket: ``actors.S3Store`` is used the same way);
2. loses machine A's runtime directory, then opens the runtime on an empty directory on
   "machine B" with the same replica: it restores ``directory.db`` at once, and each agent
   when it first wakes;
3. forks the agent as it was before its last message (``torpor fork --at``), into a new agent
   that answers with that past while the original keeps its present.
"""

from __future__ import annotations

import datetime as dt
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

import actors

# Short delays so that the demo's numbers settle quickly (the defaults suit production).
REPLICATION = actors.Replication(max_delay=0.05, min_delay=0.01)


class Assistant(actors.Actor, name="replication.Assistant"):
    """A toy chat agent: every message and its reply go into its own table."""

    migrations = ("CREATE TABLE chat(id INTEGER PRIMARY KEY, user TEXT, reply TEXT)",)

    async def say(self, text: str) -> str:
        reply = f"noted: {text}"
        self.sql.execute("INSERT INTO chat(user, reply) VALUES (?, ?)", (text, reply))
        return reply

    @actors.query
    async def history(self) -> list[str]:
        return [row[0] for row in self.sql.execute("SELECT user FROM chat ORDER BY id")]


async def machine_a(folder: Path, replica: actors.ReplicaStore, texts: list[str]) -> None:
    async with actors.open_runtime(
        folder, types=[Assistant], replica=replica, replication=REPLICATION
    ) as rt:
        alice = rt.ref(Assistant, "alice")
        for text in texts:
            await alice.ask(Assistant.say, text)
        await rt.replicated()  # every commit so far is in the replica
        stats = rt.statistics().replication
        assert stats is not None
        print(
            f"  replicated: {stats.rounds} rounds, {stats.snapshots} snapshots, "
            f"{stats.requests} requests, files behind: {stats.files_behind}"
        )
    # closing hibernated alice: each of her files was snapshotted into the replica


async def machine_b(folder: Path, replica: actors.ReplicaStore, keys: list[str]) -> int:
    """Ask each agent its history; return the restores from the replica."""
    async with actors.open_runtime(
        folder, types=[Assistant], replica=replica, replication=REPLICATION
    ) as rt:
        for key in keys:
            print(f"  {key}: {await rt.ref(Assistant, key).ask(Assistant.history)}")
        stats = rt.statistics().replication
        assert stats is not None
        return stats.restores


def torpor(*args: str | Path) -> None:
    """Run the ``torpor`` command (the console script beside this Python, when there is one)."""
    script = Path(sys.executable).with_name("torpor")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "runtime.cli"]
    print("  $ torpor " + " ".join(shlex.quote(str(a)) for a in args))
    done = subprocess.run([*command, *map(str, args)], capture_output=True, text=True)
    for line in done.stdout.splitlines():
        print("   ", line)
    if done.returncode != 0:
        sys.exit(f"torpor failed: {done.stderr}")


def new_folder(arg: str | None) -> Path:
    """DIR, or a new temporary folder. Refuse a folder that is not empty: the demo starts afresh."""
    if arg is None:
        return Path(tempfile.mkdtemp()) / "replication"
    folder = Path(arg)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        sys.exit(f"{folder} is not empty: this demo starts afresh; give a new or empty folder")
    return folder


def main() -> None:
    base = new_folder(sys.argv[1] if len(sys.argv) > 1 else None)
    a, b, bucket = base / "machine-a", base / "machine-b", base / "bucket"
    bucket.mkdir(parents=True)
    replica = actors.DirectoryStore(bucket)
    print(f"replica: {bucket}")

    print("1. machine A: alice plans a trip")
    trio.run(machine_a, a, replica, ["hello", "plan a trip"])
    before = time.time()  # a point in time between two conversations
    time.sleep(0.01)
    trio.run(machine_a, a, replica, ["make it Lisbon"])

    print("2. machine A is lost; machine B opens an empty directory with the same replica")
    shutil.rmtree(a)  # machine-a, made by this run in a folder that was new or empty
    restores = trio.run(machine_b, b, replica, ["alice"])
    print(f"  restores from the replica: {restores} (directory.db at open, alice when she woke)")

    print("3. fork alice as she was before Lisbon, into a new agent")
    at = dt.datetime.fromtimestamp(before, dt.UTC).isoformat(timespec="microseconds")
    at = at.replace("+00:00", "Z")
    torpor(
        "fork",
        b,
        "replication.Assistant",
        "alice",
        "--at",
        at,
        "--as",
        "alice-before",
        "--replica",
        bucket,
    )
    trio.run(machine_b, b, replica, ["alice", "alice-before"])


if __name__ == "__main__":
    main()
