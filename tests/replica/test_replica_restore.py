"""Restore of an actor's two files (``runtime.replica.restore.restore_actor``), both or neither."""

from __future__ import annotations

from pathlib import Path

import apsw
import pytest

from runtime.errors import CorruptReplicaError, RestorePointError
from runtime.files.layout import DATA_FILE, MAILBOX_FILE
from runtime.replica.directory_store import DirectoryStore
from runtime.replica.replicator import FileReplica, Manifest
from runtime.replica.restore import (
    STAGING_PREFIX,
    STATE_FILE,
    SUPERSEDED_PREFIX,
    actor_file_name,
    restore_actor,
)

AID = "a" * 32


def replicate(store: DirectoryStore, folder: Path, text: str) -> dict[str, Manifest]:
    """Write both files of an actor holding ``text`` and snapshot each into ``store``."""
    folder.mkdir(parents=True, exist_ok=True)
    manifests = {}
    for file in (DATA_FILE, MAILBOX_FILE):
        conn = apsw.Connection(str(folder / file))
        conn.pragma("journal_mode", "wal")
        conn.set_wal_hook(lambda conn, name, frames: apsw.SQLITE_OK)
        with conn:
            conn.execute("create table if not exists t(v)")
            conn.execute("insert into t values(?)", (f"{file}: {text}",))
        replica = FileReplica(store, actor_file_name(AID, file))
        replica.claim()
        replica.upload(replica.capture(conn, folder / file))
        conn.close()
        assert replica.manifest is not None
        manifests[replica.name] = replica.manifest
    return manifests


def rows(path: Path) -> list[str]:
    conn = apsw.Connection(str(path))
    try:
        return [row[0] for row in conn.execute("select v from t")]
    finally:
        conn.close()


def test_a_restore_that_fails_half_way_leaves_the_folder_as_it_was(tmp_path: Path) -> None:
    """A mailbox that cannot be restored leaves the local data.db in place, and no staging."""
    store = DirectoryStore(tmp_path / "replica")
    manifests = replicate(store, tmp_path / "source", "replicated")
    local = tmp_path / "local"
    replicate(DirectoryStore(tmp_path / "other"), local, "local")
    mailbox = manifests[actor_file_name(AID, MAILBOX_FILE)]
    assert mailbox.snapshot is not None
    store.put(mailbox.snapshot.key, b"damaged")
    for supersede in (False, True):
        with pytest.raises(CorruptReplicaError):
            restore_actor(store, AID, local, manifests=manifests, supersede=supersede)
        assert rows(local / DATA_FILE) == [f"{DATA_FILE}: local"]
        assert not [p for p in local.iterdir() if p.name.startswith(STAGING_PREFIX)]
        assert not [p for p in local.iterdir() if p.name.startswith(SUPERSEDED_PREFIX)]


def test_a_wake_up_restore_keeps_the_local_files_aside(tmp_path: Path) -> None:
    """supersede=True swaps both files in and moves every local file into superseded-*."""
    store = DirectoryStore(tmp_path / "replica")
    manifests = replicate(store, tmp_path / "source", "replicated")
    local = tmp_path / "local"
    replicate(DirectoryStore(tmp_path / "other"), local, "local")
    (local / STATE_FILE).write_text("{}")
    restored = restore_actor(store, AID, local, manifests=manifests, supersede=True)
    assert sorted(restored) == sorted([DATA_FILE, MAILBOX_FILE])
    for file in (DATA_FILE, MAILBOX_FILE):
        assert rows(local / file) == [f"{file}: replicated"]
    (aside,) = [p for p in local.iterdir() if p.name.startswith(SUPERSEDED_PREFIX)]
    assert rows(aside / DATA_FILE) == [f"{DATA_FILE}: local"]
    assert (aside / STATE_FILE).exists() and not (local / STATE_FILE).exists()


def test_an_operator_restore_needs_both_files_in_the_replica(tmp_path: Path) -> None:
    """Without manifests, a file missing from the replica is a RestorePointError, nothing moved."""
    store = DirectoryStore(tmp_path / "replica")
    local = tmp_path / "local"
    replicate(DirectoryStore(tmp_path / "other"), local, "local")
    with pytest.raises(RestorePointError, match="no replica"):
        restore_actor(store, AID, local)
    assert rows(local / DATA_FILE) == [f"{DATA_FILE}: local"]
    with pytest.raises(ValueError, match="at most one"):
        restore_actor(store, AID, local, at_time=1.0, at_txid=1)
