"""A replica written by another torpor version is refused with a hint, never misread."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import actors
from runtime.errors import CorruptReplicaError
from runtime.replica.replicator import manifest_key
from tests.support.agents import Counter
from tests.support.replication import real_time


@real_time
async def test_a_replica_from_a_newer_torpor_is_refused_with_a_hint(tmp_path: Path) -> None:
    """Opening a fresh machine on a newer replica format says to upgrade, and writes nothing."""
    store = actors.DirectoryStore(tmp_path / "replica")
    async with actors.open_runtime(tmp_path / "m1", types=[Counter], replica=store) as rt:
        await rt.ref(Counter, "c").ask(Counter.incr, 1)
        await rt.replicated()
    key = manifest_key("directory.db")
    got = store.get(key)
    assert got is not None
    doc = json.loads(got[0])
    doc["version"] = 99
    store.put(key, json.dumps(doc).encode(), if_match=got[1])
    with pytest.raises(CorruptReplicaError, match=r"newer torpor.*upgrade torpor"):
        async with actors.open_runtime(tmp_path / "m2", types=[Counter], replica=store):
            pass
    assert not (tmp_path / "m2" / "directory.db").exists()
