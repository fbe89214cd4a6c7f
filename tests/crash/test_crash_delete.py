"""SIGKILL during deletions (DESIGN §10): a deletion cut short finishes at the next open and never
wakes its actor half deleted; a key whose delete() returned never comes back, locally or from
the replica; its segments in the store's log objects end up zeros; the actors not deleted keep
their data.

The child is ``tests/crash/delete_workload.py``: it makes eight actors holding a secret each,
deletes the even ones and checks the odd ones. The parent kills it after a random number of its
protocol lines (and a random fraction of a line's time), restarts it, and after the last, unkilled
run checks the files and a restore of the replica, at the latest state and at every instant a
deletion returned."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runtime.files.directory import Directory
from runtime.files.layout import DATA_FILE, DIRECTORY_FILE, MAILBOX_FILE, actor_dir, actor_id
from runtime.replica.directory_store import DirectoryStore
from runtime.replica.log import decode_log
from runtime.replica.restore import actor_file_name
from runtime.replica.shipper import restore_runtime
from tests.support import crash_harness as support

ROOT = Path(__file__).resolve().parents[2]
ACTORS = 8
KILLS = 8
SEED = 20_261_208
no_orphans = support.no_orphans


def start(root: Path, store: Path, backend: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.crash.delete_workload", str(root), str(store), str(ACTORS)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TORPOR_CRASH_BACKEND": backend},
    )


def keys_of(root: Path) -> set[str]:
    directory = Directory(root / DIRECTORY_FILE, synchronous="NORMAL")
    try:
        return {str(row[0]) for row in directory.conn.execute("SELECT key FROM actors")}
    finally:
        directory.close()


def test_kills_during_deletions_never_bring_an_actor_back(
    tmp_path: Path, backend: str, no_orphans: None
) -> None:
    """Killed mid-deletion, a restart finishes it; a deleted key never returns, not by restore."""
    rng = random.Random(support.seed(SEED))
    root, store_dir = tmp_path / "rt", tmp_path / "bucket"
    returned: dict[int, float] = {}  # even actor -> when its delete() had returned
    for run in range(KILLS + 1):
        child = start(root, store_dir, backend)
        assert child.stdout is not None
        kill_after = rng.randint(1, 2 + ACTORS + ACTORS // 2) if run < KILLS else None
        killed = False
        for lines, line in enumerate(child.stdout, start=1):
            word, _, rest = line.strip().partition(" ")
            if word == "STATUS":
                listed = json.loads(rest)
                for n in returned:  # a delete() that returned is never undone
                    assert listed.get(f"k{n}") in (None, "deleting"), (run, n, listed)
            elif word == "DELETED":
                returned.setdefault(int(rest), time.time())
            elif word == "WRONG":
                raise AssertionError(f"run {run}: an actor lost its data: {rest}")
            if kill_after is not None and lines >= kill_after:
                time.sleep(rng.uniform(0, 0.02))  # (somewhere inside the next step)
                child.send_signal(signal.SIGKILL)
                killed = True
                break
        code = child.wait(timeout=120)
        stderr = child.stderr.read() if child.stderr else ""
        child.stdout.close()
        if child.stderr:
            child.stderr.close()
        # (a run with little left to do may finish before its kill point, or as it comes)
        assert code in ((0, -signal.SIGKILL) if killed else (0,)), stderr
    # (a delete() whose DELETED line a kill cut off is skipped by the next run: not in returned)
    assert set(returned) <= set(range(0, ACTORS, 2))
    assert keys_of(root) == {f"k{n}" for n in range(1, ACTORS, 2)}
    for n in range(0, ACTORS, 2):
        assert not actor_dir(root, actor_id("crash.Vault", f"k{n}")).exists()
    store = DirectoryStore(store_dir)
    gone = {
        actor_file_name(actor_id("crash.Vault", f"k{n}"), file)
        for n in range(0, ACTORS, 2)
        for file in (DATA_FILE, MAILBOX_FILE)
    }
    for key in store.list("runtimes/"):  # every segment of a deleted actor is zeros now
        got = store.get(key) if "/log/" in key else None
        data = got[0] if got is not None else None
        for entry in decode_log(data).entries if data is not None else ():
            if entry.name in gone and data is not None:
                assert not any(data[entry.offset : entry.offset + entry.length]), key
    restore_runtime(store, tmp_path / "latest")
    assert keys_of(tmp_path / "latest") == {f"k{n}" for n in range(1, ACTORS, 2)}
    for n, at in sorted(returned.items()):
        into = tmp_path / f"at-{n}"
        restore_runtime(store, into, at_time=at)
        assert not {f"k{m}" for m in returned if returned[m] <= at} & keys_of(into), n


@pytest.mark.parametrize("backend", ["trio"])
def test_the_workload_alone_deletes_the_even_actors(tmp_path: Path, backend: str) -> None:
    """Unkilled, the child makes the actors, deletes the even ones and keeps the odd ones."""
    child = start(tmp_path / "rt", tmp_path / "bucket", backend)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    assert out.splitlines()[-1] == "DONE"
    assert keys_of(tmp_path / "rt") == {f"k{n}" for n in range(1, ACTORS, 2)}
