"""Retention never deletes history a restore still needs, and a failed restore keeps the files."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

import actors
from runtime.files.layout import DATA_FILE, actor_dir, actor_id
from runtime.replica.shipper import restore_actor_files, restore_runtime


class A(actors.Actor, name="A"):
    async def incr(self) -> int:
        self.kv["n"] = self.kv.get("n", 0) + 1
        return int(self.kv["n"])


@pytest.mark.real_clock
async def test_log_retention_keeps_what_the_directory_chain_needs(tmp_path: Path) -> None:
    """Retention deletes old log objects, but not while a file's current chain still names them."""
    # directory.db never hibernates, so its chain is snapshotted first; every actor created over a
    # run longer than the retention restores.
    store = actors.DirectoryStore(tmp_path / "bucket")
    options = actors.Replication(retention=0.6, max_delay=0.05, min_delay=0.01)
    async with actors.open_runtime(
        tmp_path / "rt", types=[A], replica=store, idle_timeout=3600, replication=options
    ) as rt:
        for k in range(6):
            await rt.ref(A, f"a{k}").ask(A.incr)
            await trio.sleep(0.25)
        await rt.replicated()
        stats = rt.statistics().replication
        assert stats is not None and stats.snapshots > 6  # compactions happened
    assert restore_runtime(store, tmp_path / "restored") == {
        "actors": 6,
        "restored": 6,
        "not_replicated": 0,
        "erased": 0,
    }


async def test_a_failed_actor_restore_leaves_the_local_files(tmp_path: Path) -> None:
    """A restore to a point the replica cannot reach raises and leaves the actor's files as is."""
    # No staging folder is left behind.
    store = actors.DirectoryStore(tmp_path / "bucket")
    async with actors.open_runtime(tmp_path / "rt", types=[A], replica=store) as rt:
        await rt.ref(A, "x").ask(A.incr)
    folder = actor_dir(tmp_path / "rt", actor_id("A", "x"))
    before = (folder / DATA_FILE).read_bytes()
    with pytest.raises(actors.RestorePointError):
        restore_actor_files(store, actor_id("A", "x"), folder, at_time=1_000_000_000)
    assert (folder / DATA_FILE).read_bytes() == before
    assert not list(folder.glob(".restore-*"))
