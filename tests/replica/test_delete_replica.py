"""Deletion with a replica (DESIGN §10): a deleted actor's manifests become tombstones, its
snapshots go and its segments in shared log objects become zeros at once; no restore, at the
latest state or at a point in time, brings it back; and a key used again replicates as a new
actor. Real clock: the store is called from worker threads."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest

import actors
from runtime.files.directory import Directory
from runtime.files.layout import DATA_FILE, DIRECTORY_FILE, MAILBOX_FILE, actor_dir, actor_id
from runtime.replica.log import decode_log
from runtime.replica.replicator import Manifest, manifest_key
from runtime.replica.restore import actor_file_name
from runtime.replica.shipper import restore_actor_files, restore_runtime
from tests.support.replication import FlakyStore, read_rows

pytestmark = [pytest.mark.both_backends, pytest.mark.real_clock]


class Diary(actors.Actor, name="del.Diary"):
    """A user's private notes."""

    async def write(self, text: str) -> list[str]:
        self.kv["notes"] = [*self.kv.get("notes", []), text]
        return list(self.kv["notes"])


def keys_of(root: Path) -> list[str]:
    directory = Directory(root / DIRECTORY_FILE, synchronous="NORMAL")
    try:
        return sorted(str(row[0]) for row in directory.conn.execute("SELECT key FROM actors"))
    finally:
        directory.close()


def manifest(store: actors.ReplicaStore, aid: str, file: str) -> Manifest:
    key = manifest_key(actor_file_name(aid, file))
    got = store.get(key)
    assert got is not None
    return Manifest.decode(got[0], key=key)


async def test_no_restore_brings_a_deleted_actor_back(tmp_path: Path) -> None:
    """After delete, the actor's snapshots are gone and restores (latest, at a time) omit it."""
    store = actors.DirectoryStore(tmp_path / "bucket")
    aid = actor_id("del.Diary", "ann")
    async with actors.open_runtime(tmp_path / "rt", types=[Diary], replica=store) as rt:
        await rt.ref(Diary, "ann").ask(Diary.write, "ann's secret")
        await rt.ref(Diary, "bob").ask(Diary.write, "bob's note")
        await rt.replicated()
        assert any("/snapshots/" in k for k in store.list(f"actors/{aid}/"))
        before = time.time()
        await anyio.sleep(0.05)
        await rt.ref(Diary, "ann").delete()
        # Only the two tombstones are left under its name: no snapshot, no history.
        assert sorted(store.list(f"actors/{aid}/")) == [
            f"actors/{aid}/data.db/manifest",
            f"actors/{aid}/mailbox.db/manifest",
        ]
        for file in (DATA_FILE, MAILBOX_FILE):
            tomb = manifest(store, aid, file)
            assert tomb.erased_at is not None and tomb.erased_at > before
            assert (tomb.snapshot, tomb.segments, tomb.history) == (None, (), ())
    latest = restore_runtime(store, tmp_path / "latest")
    assert keys_of(tmp_path / "latest") == ["bob"]
    assert latest["erased"] == 0  # (its deletion reached the replica's directory.db)
    past = restore_runtime(store, tmp_path / "past", at_time=before)
    assert keys_of(tmp_path / "past") == ["bob"]
    assert past["erased"] == 1  # (the directory of that time listed it: dropped)
    assert not actor_dir(tmp_path / "past", aid).exists()
    with pytest.raises(actors.RestorePointError, match="deleted at"):
        restore_actor_files(store, aid, tmp_path / "one", at_time=before)


async def test_a_deleted_key_used_again_replicates_as_a_new_actor(tmp_path: Path) -> None:
    """A key deleted and used again is restored as the new actor only, never with the old data."""
    store = actors.DirectoryStore(tmp_path / "bucket")
    aid = actor_id("del.Diary", "ann")
    async with actors.open_runtime(tmp_path / "rt", types=[Diary], replica=store) as rt:
        ref = rt.ref(Diary, "ann")
        await ref.ask(Diary.write, "old secret")
        await rt.replicated()
        before = time.time()
        await anyio.sleep(0.05)
        await ref.delete()
        assert await ref.ask(Diary.write, "new life") == ["new life"]
        await rt.replicated()
    assert manifest(store, aid, DATA_FILE).snapshot is not None  # the new incarnation's
    restore_runtime(store, tmp_path / "latest")
    data = actor_dir(tmp_path / "latest", aid) / DATA_FILE
    notes = read_rows(data, "SELECT value FROM _torpor_kv WHERE key = 'notes'")
    assert len(notes) == 1 and b"new life" in notes[0][0] and b"old secret" not in notes[0][0]
    restore_runtime(store, tmp_path / "past", at_time=before)
    assert keys_of(tmp_path / "past") == []


def deleted_segments(store: actors.ReplicaStore, names: set[str]) -> tuple[int, int]:
    """(segments of the files ``names`` in the store's log objects, those not all zeros)."""
    total = live = 0
    for key in store.list("runtimes/"):
        got = store.get(key) if "/log/" in key else None
        if got is None:
            continue
        for entry in decode_log(got[0]).entries:
            if entry.name in names:
                total += 1
                live += any(got[0][entry.offset : entry.offset + entry.length])
    return total, live


async def test_a_deleted_actors_segments_in_shared_log_objects_are_zeroed(tmp_path: Path) -> None:
    """At deletion, its segments in log objects shared with others become zeros; theirs stay."""
    store = actors.DirectoryStore(tmp_path / "bucket")
    aid = actor_id("del.Diary", "ann")
    names = {actor_file_name(aid, DATA_FILE), actor_file_name(aid, MAILBOX_FILE)}
    async with actors.open_runtime(
        tmp_path / "rt", types=[Diary], replica=store, idle_timeout=3600
    ) as rt:
        ann, bob = rt.ref(Diary, "ann"), rt.ref(Diary, "bob")
        for n in range(3):  # (the same rounds carry both actors' segments)
            await ann.ask(Diary.write, f"ann's secret {n}")
            await bob.ask(Diary.write, f"bob's note {n}")
        await rt.replicated()
        total, live = deleted_segments(store, names)
        assert total > 0 and live == total
        before = time.time()
        await ann.delete()
        assert deleted_segments(store, names) == (total, 0)
        await bob.ask(Diary.write, "bob's last note")
        await rt.replicated()
    restore_runtime(store, tmp_path / "latest")  # (bob's segments, checksummed, are intact)
    bob_data = actor_dir(tmp_path / "latest", actor_id("del.Diary", "bob")) / DATA_FILE
    (notes,) = read_rows(bob_data, "SELECT value FROM _torpor_kv WHERE key = 'notes'")
    assert b"bob's last note" in notes[0]
    restore_runtime(store, tmp_path / "past", at_time=before)
    assert keys_of(tmp_path / "past") == ["bob"]


async def test_a_deletion_the_store_refuses_is_finished_by_a_later_call(tmp_path: Path) -> None:
    """With the store down, delete raises and the actor stays 'deleting', refusing messages."""
    store = FlakyStore(actors.DirectoryStore(tmp_path / "bucket"))
    aid = actor_id("del.Diary", "ann")
    async with actors.open_runtime(
        tmp_path / "rt", types=[Diary], replica=store, idle_timeout=0.5
    ) as rt:
        ann = rt.ref(Diary, "ann")
        async with rt.open_lifecycle_events() as events:
            await ann.ask(Diary.write, "secret")
            async for event in events:  # hibernated: the deletion finds it at rest
                if event.state == "hibernated":
                    break
        store.down = True
        with pytest.raises(actors.ReplicaUnavailableError):
            await ann.delete()
        assert not actor_dir(tmp_path / "rt", aid).exists()
        assert [(a.key, a.status) for a in await rt.actors(Diary)] == [("ann", "deleting")]
        with pytest.raises(actors.ActorDeletedError, match="being deleted"):
            await ann.ask(Diary.write, "too late")
        store.down = False
        await ann.delete()
        assert await rt.actors(Diary) == []
        assert manifest(store, aid, DATA_FILE).erased_at is not None


async def test_deletion_against_a_real_s3_server(tmp_path: Path, s3_credentials: Any) -> None:
    """On S3 (SeaweedFS, conditional writes), a deleted actor leaves tombstones and no restore."""
    store = actors.S3Store(
        s3_credentials.bucket,
        prefix=f"test-{uuid.uuid4().hex[:12]}",
        endpoint_url=s3_credentials.endpoint_url,
        region=s3_credentials.region,
        path_style=True,
    )
    aid = actor_id("del.Diary", "ann")
    try:
        async with actors.open_runtime(tmp_path / "rt", types=[Diary], replica=store) as rt:
            ann = rt.ref(Diary, "ann")
            await ann.ask(Diary.write, "secret")
            await rt.replicated()
            before = time.time()
            await anyio.sleep(0.05)
            names = {actor_file_name(aid, DATA_FILE), actor_file_name(aid, MAILBOX_FILE)}
            total, _ = deleted_segments(store, names)
            await ann.delete()
            assert sorted(store.list(f"actors/{aid}/")) == [
                f"actors/{aid}/data.db/manifest",
                f"actors/{aid}/mailbox.db/manifest",
            ]
            assert total > 0 and deleted_segments(store, names) == (total, 0)
            assert await ann.ask(Diary.write, "new") == ["new"]
            await rt.replicated()
        restore_runtime(store, tmp_path / "past", at_time=before)
        assert keys_of(tmp_path / "past") == []
        restore_runtime(store, tmp_path / "latest")
        assert keys_of(tmp_path / "latest") == ["ann"]
    finally:
        store.close()
