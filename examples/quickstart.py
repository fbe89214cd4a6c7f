"""torpor quickstart: durable agents that survive a restart and a kill -9.

    python examples/quickstart.py [DIR]

DIR (a new temporary folder if omitted) may be missing, empty, or a runtime an earlier run left:
the agents then go on from their state. Any other folder is refused, and nothing is deleted.

1. spawns a few agents, sends and asks them messages;
2. closes the runtime and opens it again: the state is still there;
3. starts a second process that sends messages, kills it with SIGKILL in the middle, and shows
   that every message it was told was stored is applied, once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import trio

import actors


class Agent(actors.Actor, name="quickstart.Agent"):
    """A toy agent: it keeps notes in its own SQLite table and a running total in kv."""

    migrations = ("CREATE TABLE notes(id INTEGER PRIMARY KEY, text TEXT NOT NULL)",)

    async def on_create(self, persona: str = "helpful") -> None:
        self.kv["persona"] = persona
        self.kv["tokens"] = 0

    async def note(self, text: str) -> int:
        """Remember a note; return how many notes this agent has."""
        self.sql.execute("INSERT INTO notes(text) VALUES (?)", (text,))
        self.kv["tokens"] += len(text.split())
        return int(self.sql.query_value("SELECT count(*) FROM notes"))

    @actors.query
    async def summary(self) -> dict[str, object]:
        notes = self.sql.query_value("SELECT count(*) FROM notes")
        return {"persona": self.kv["persona"], "notes": notes, "tokens": self.kv["tokens"]}


async def first_run(folder: Path) -> list[str]:
    async with actors.open_runtime(folder, types=[Agent]) as rt:
        alice = rt.ref(Agent, "alice")  # get-or-create: the first message creates it
        await alice.send(Agent.note, "read the paper on durable execution")
        print("alice has", await alice.ask(Agent.note, "summarise it in three bullets"), "notes")
        bob = await rt.spawn(Agent, "skeptical")  # explicit creation with a generated key
        await bob.ask(Agent.note, "check every claim twice")
        print("spawned", bob)
        return ["alice", bob.key]


async def second_run(folder: Path, keys: list[str]) -> None:
    async with actors.open_runtime(folder, types=[Agent]) as rt:
        for key in keys:
            print(f"  {key}: {await rt.ref(Agent, key).ask(Agent.summary)}")


async def child(folder: Path, key: str) -> None:
    """Runs in a separate process: send notes to agent ``key`` and report each acknowledgement."""
    async with actors.open_runtime(folder, types=[Agent]) as rt:
        carol = rt.ref(Agent, key)
        for i in range(100_000):
            await carol.options(idempotency_key=f"{key}-{i}").send(Agent.note, f"note {i}")
            print(i, flush=True)  # the send returned: the message is durable


def crash_run(folder: Path, key: str) -> int:
    """Start the child, kill it with SIGKILL after a while; return how many sends it had acked."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", str(folder), key], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    acked = -1
    deadline = time.monotonic() + 60
    for line in proc.stdout:
        acked = int(line)
        if acked >= 300 or time.monotonic() > deadline:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    for line in proc.stdout:  # acknowledgements printed before the kill landed
        if line.strip():
            acked = max(acked, int(line))
    return acked + 1


async def after_crash(folder: Path, key: str, acked: int) -> None:
    async with actors.open_runtime(folder, types=[Agent]) as rt:
        carol = rt.ref(Agent, key)
        # Messages stored before the kill are applied first; this ask runs after all of them.
        notes = await carol.ask(Agent.note, "after the crash") - 1
        print(f"  {key} has {notes} notes from before the kill; {acked} sends were acknowledged")
        assert notes >= acked, "an acknowledged send was lost"


def runtime_folder(arg: str | None) -> Path:
    """DIR, or a new temporary folder. Refuse a folder that holds anything but a runtime."""
    if arg is None:
        return Path(tempfile.mkdtemp()) / "torpor"
    folder = Path(arg)
    runtime = (folder / "directory.db").is_file()
    if folder.exists() and not runtime and (not folder.is_dir() or any(folder.iterdir())):
        sys.exit(f"{folder} is not empty and not a torpor runtime: give a new or empty folder")
    return folder


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        trio.run(child, Path(sys.argv[2]), sys.argv[3])
        return
    folder = runtime_folder(sys.argv[1] if len(sys.argv) > 1 else None)
    if (folder / "directory.db").is_file():
        print(f"runtime directory: {folder} (an earlier run's: its agents keep their state)")
    else:
        print(f"runtime directory: {folder}")
    print("1. spawn agents, send and ask")
    keys = trio.run(first_run, folder)
    print("2. reopen the runtime: the state is still there")
    trio.run(second_run, folder, keys)
    print("3. kill -9 a process in the middle of sending, then reopen")
    carol = f"carol-{uuid.uuid4().hex[:8]}"  # a new agent each run: its notes are this run's
    acked = crash_run(folder, carol)
    trio.run(after_crash, folder, carol, acked)
    print("done: nothing acknowledged was lost")


if __name__ == "__main__":
    main()
