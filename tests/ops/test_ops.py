"""The offline operator functions of ``runtime.ops`` called directly, for what the ``torpor``
command does not show: their records, their callbacks, and checks the command makes first."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import actors
from runtime.errors import InvalidKeyError
from runtime.files.directory import Directory
from runtime.files.layout import DATA_FILE, DIRECTORY_FILE, MAILBOX_FILE, actor_dir, actor_id
from runtime.ops import fork, restore
from tests.ops.test_cli_replica import Made, make

NOTEBOOK = "tests.Notebook"


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Made:
    """A replicated runtime, closed: alice (a turn in flight, a timer) and bob."""
    return make(tmp_path_factory.mktemp("ops"))


def own_copy(made: Made, tmp_path: Path) -> Made:
    """A copy of the runtime directory and its replica, for a test that writes."""
    root, replica = tmp_path / "rt", tmp_path / "replica"
    shutil.copytree(made.root, root)
    shutil.copytree(made.replica, replica)
    return Made(root, replica, made.middle)


def test_restore_runtime_reports_its_counts_and_progress(made: Made, tmp_path: Path) -> None:
    """A whole restore says it starts once, reports each actor done, and returns its counts."""
    calls: list[object] = []
    store = actors.DirectoryStore(made.replica)
    try:
        done = restore.restore_runtime(
            store,
            tmp_path / "new",
            starting=lambda: calls.append("starting"),
            progress=lambda n, total: calls.append((n, total)),
        )
    finally:
        store.close()
    assert calls == ["starting", (1, 2), (2, 2)]
    assert (done.actors, done.restored, done.not_replicated, done.at) == (2, 2, 0, None)
    assert (tmp_path / "new" / DIRECTORY_FILE).is_file()


def test_restore_to_read_fetches_the_selected_actors_only(made: Made, tmp_path: Path) -> None:
    """A read from the replica fetches directory.db and the selected actors' files, nothing else."""
    # Selected: the actors of a type whose key has the prefix; each is announced before its fetch.
    seen: list[tuple[str, str, str]] = []
    store = actors.DirectoryStore(made.replica)
    try:
        chosen = restore.restore_to_read(
            store,
            tmp_path,
            type_name=NOTEBOOK,
            prefix="al",
            restoring=lambda aid, t, k: seen.append((aid, t, k)),
        )
    finally:
        store.close()
    alice, bob = actor_id(NOTEBOOK, "alice"), actor_id(NOTEBOOK, "bob")
    assert chosen == [(NOTEBOOK, "alice")]
    assert seen == [(alice, NOTEBOOK, "alice")]
    assert (tmp_path / DIRECTORY_FILE).is_file()
    assert (actor_dir(tmp_path, alice) / DATA_FILE).is_file()
    assert not actor_dir(tmp_path, bob).exists()


def test_restore_to_read_leaves_an_actor_without_a_replica_empty(
    made: Made, tmp_path: Path
) -> None:
    """An actor the replica has no files of is read as never woken: no files, no error."""
    store = actors.DirectoryStore(made.replica)
    try:
        restore.restore_to_read(store, tmp_path, actor=(NOTEBOOK, "nobody"))
    finally:
        store.close()
    folder = actor_dir(tmp_path, actor_id(NOTEBOOK, "nobody"))
    assert not (folder / DATA_FILE).exists() and not (folder / MAILBOX_FILE).exists()


def test_fork_actor_refuses_a_key_the_runtime_refuses(made: Made, tmp_path: Path) -> None:
    """fork_actor checks the new key as Runtime.ref does, before it writes anything."""
    mine = own_copy(made, tmp_path)
    store = actors.DirectoryStore(mine.replica)
    try:
        with pytest.raises(InvalidKeyError):
            fork.fork_actor(store, mine.root, NOTEBOOK, "alice", "x" * 9, max_key_bytes=8)
    finally:
        store.close()
    assert not actor_dir(mine.root, actor_id(NOTEBOOK, "x" * 9)).exists()


def test_fork_actor_returns_what_it_left_out(made: Made, tmp_path: Path) -> None:
    """A fork's record names the new actor and what it left out; the fork is not pending."""
    # Keeping none of the original's timers, it wakes for none of them.
    mine = own_copy(made, tmp_path)
    store = actors.DirectoryStore(mine.replica)
    try:
        forked = fork.fork_actor(store, mine.root, NOTEBOOK, "alice", "alice-2")
    finally:
        store.close()
    assert forked.new_id == actor_id(NOTEBOOK, "alice-2")
    assert forked.folder == actor_dir(mine.root, forked.new_id)
    assert forked.changes.timers_dropped == ["reminder"] and forked.changes.timers_kept == []
    assert len(forked.changes.dead_lettered) == 1  # the nap, in flight in the original
    directory = Directory(mine.root / DIRECTORY_FILE, synchronous="FULL")
    try:
        entry = directory.get(forked.new_id)
        assert entry is not None and not entry.pending and entry.wake_at is None
    finally:
        directory.close()
