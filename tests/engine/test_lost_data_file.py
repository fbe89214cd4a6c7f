"""An actor's ``data.db`` that should exist and does not, or is empty, is a lost file: a typed
:class:`actors.CorruptFileError` (restored from the replica when there is one), never replaced
by an empty database that silently forgets the actor's state."""

from __future__ import annotations

from pathlib import Path

import pytest

import actors
from runtime.files.layout import DATA_FILE, actor_dir, actor_id
from tests.support.agents import Counter
from tests.support.replication import real_time


def _data(root: Path) -> Path:
    return actor_dir(root, actor_id("Counter", "c")) / DATA_FILE


def _drop(path: Path, how: str) -> None:
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    if how == "missing":
        path.unlink()
    else:
        path.write_bytes(b"")


@pytest.mark.parametrize("how", ["missing", "empty"])
async def test_a_lost_data_file_is_a_corrupt_file_error_not_a_new_actor(
    tmp_path: Path, how: str
) -> None:
    """An actor whose data.db vanished or was emptied raises CorruptFileError, and is not reset."""
    # Its file is not re-created empty, and the counter does not silently start again from zero.
    root = tmp_path / "rt"
    async with actors.open_runtime(root, types=[Counter]) as rt:
        assert await rt.ref(Counter, "c").ask(Counter.incr, 5) == 5
    _drop(_data(root), how)
    async with actors.open_runtime(root, types=[Counter]) as rt:
        with pytest.raises(actors.CorruptFileError):
            await rt.ref(Counter, "c").ask(Counter.incr, 1)
    assert _data(root).exists() == (how == "empty")
    if how == "empty":
        assert _data(root).stat().st_size == 0  # left as found, for whoever investigates


@pytest.mark.parametrize("how", ["missing", "empty"])
@real_time
async def test_a_lost_data_file_comes_back_from_the_replica(tmp_path: Path, how: str) -> None:
    """With a replica, a lost data.db is restored from it: the count goes on."""
    root = tmp_path / "rt"
    replica = actors.DirectoryStore(tmp_path / "replica")
    async with actors.open_runtime(root, types=[Counter], replica=replica) as rt:
        assert await rt.ref(Counter, "c").ask(Counter.incr, 5) == 5
    _drop(_data(root), how)
    async with actors.open_runtime(root, types=[Counter], replica=replica) as rt:
        assert await rt.ref(Counter, "c").ask(Counter.incr, 1) == 6
