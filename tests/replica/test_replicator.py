"""The per-file replicator (``runtime.replica.replicator``), checked against SQLite itself.

The replica is written the way the runtime writes it (:class:`Writer`: ``prepare``, a log
object, ``shipped``, ``fold``; ``capture`` and ``upload`` for snapshots; the runtime's own
``TRUNCATE`` checkpoint, then ``mark_checkpointed``), one file and one round at a time.

The oracle is SQLite: the image a restore must reproduce at a round is what SQLite makes of the
source file and the WAL frames committed at that round (a copy, opened and checkpointed), as in
``tests/unit/test_wal.py``.
"""

from __future__ import annotations

import concurrent.futures
import random
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import apsw
import attrs
import pytest

from runtime.errors import (
    CorruptReplicaError,
    FencedError,
    ReplicaUnavailableError,
    RestorePointError,
)
from runtime.replica.directory_store import DirectoryStore
from runtime.replica.log import encode_log, log_key, scrub, session_prefix
from runtime.replica.replicator import (
    FileReplica,
    Manifest,
    Prepared,
    SnapshotNeeded,
    manifest_key,
    restore,
)
from runtime.replica.s3_store import S3Store
from runtime.replica.store import Data, ReplicaStore
from runtime.replica.wal import FRAME_HEADER_BYTES, WAL_HEADER_BYTES
from tests.support.s3server import S3Server

RESTART = apsw.SQLITE_CHECKPOINT_RESTART
TRUNCATE = apsw.SQLITE_CHECKPOINT_TRUNCATE
NOOP = apsw.SQLITE_CHECKPOINT_NOOP

NAME = "actors/a1/data.db"


class Source:
    """A WAL database written by a test, auto-checkpoint off (a wal hook)."""

    def __init__(self, path: Path, *, page_size: int = 1024, create: bool = True) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.conn = apsw.Connection(str(path))
        if create:
            self.conn.pragma("page_size", page_size)
        assert self.conn.pragma("journal_mode", "wal") == "wal"
        self.conn.pragma("cache_size", 8)  # small: big transactions spill frames
        self.conn.set_wal_hook(lambda conn, name, frames: apsw.SQLITE_OK)
        self.page_size = int(self.conn.pragma("page_size"))
        if create:
            self.conn.execute("create table t(k integer primary key, v)").fetchall()

    @property
    def wal(self) -> Path:
        return Path(f"{self.path}-wal")

    def committed_end(self) -> int:
        return int(self.conn.wal_checkpoint(mode=NOOP)[0])

    def image(self) -> bytes:
        """The database SQLite makes of the file and the WAL's committed frames."""
        end = self.committed_end()
        with tempfile.TemporaryDirectory(dir=self.path.parent) as tmp:
            copy = Path(tmp) / "copy.db"
            shutil.copyfile(self.path, copy)
            wal = self.wal.read_bytes() if self.wal.exists() else b""
            size = WAL_HEADER_BYTES + end * (FRAME_HEADER_BYTES + self.page_size)
            Path(f"{copy}-wal").write_bytes(wal[:size] if end else b"")
            conn = apsw.Connection(str(copy))
            conn.execute("select count(*) from sqlite_schema").fetchall()  # reads the WAL
            conn.wal_checkpoint(mode=TRUNCATE)
            conn.close()
            return copy.read_bytes()

    def commit(self, rng: random.Random, *, rollback: bool = False) -> None:
        """One transaction of random upserts, fills and deletes (rolled back if asked)."""

        class Rollback(Exception):
            pass

        try:
            with self.conn:
                for _ in range(rng.randint(1, 6)):
                    op, key = rng.random(), rng.randint(0, 60)
                    if op < 0.5:
                        size = rng.choice([10, 200, 3000])
                        self.conn.execute(
                            "insert or replace into t values(?, ?)", (key, rng.randbytes(size))
                        )
                    elif op < 0.7:
                        rows = [(k, f"row {k} ".encode() * 150) for k in range(key, key + 20)]
                        self.conn.executemany("insert or replace into t values(?, ?)", rows)
                    else:
                        self.conn.execute(
                            "delete from t where k between ? and ?", (key, key + rng.randint(0, 40))
                        )
                if rollback:
                    raise Rollback
        except Rollback:
            pass

    def insert(self, key: int, value: bytes = b"x" * 300) -> None:
        """One transaction that surely changes the file."""
        with self.conn:
            self.conn.execute("insert or replace into t values(?, ?)", (key, value))

    def close(self) -> None:
        self.conn.close()


class Clock:
    """A clock that advances one second a call: every round has its own time."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@attrs.frozen
class Round:
    """What one call of :class:`Writer` did."""

    #: WAL frames shipped in a segment (0 when only a snapshot was taken, or nothing).
    frames: int
    #: The txid the replica is at afterwards.
    txid: int
    #: Whether a snapshot was taken.
    snapshot: bool
    #: Requests the store saw (GET, PUT, DELETE, LIST).
    requests: int


def requests_of(store: ReplicaStore) -> int:
    s = store.statistics()
    return s.gets + s.puts + s.deletes + s.lists


class Writer:
    """One file's replica written as the runtime's rounds write it, one file per log object:
    ``prepare`` the committed frames, PUT them in a log object of this writer's session,
    ``shipped``, then ``fold`` (the manifest lists the segment, no log tail); a snapshot
    (``capture``, ``upload``) when the chain cannot go on (``SnapshotNeeded``)."""

    def __init__(
        self,
        store: ReplicaStore,
        name: str = NAME,
        *,
        writer: str | None = None,
        clock: Callable[[], float] = time.time,
        keep_generations: int = 0,
    ) -> None:
        self.store = store
        self.clock = clock
        self.replica = FileReplica(
            store, name, writer=writer, clock=clock, keep_generations=keep_generations
        )
        self.session = uuid.uuid4().hex[:16]
        self.prefix = session_prefix(writer or "test", self.session)
        self.seq = 0

    @property
    def manifest(self) -> Manifest | None:
        return self.replica.manifest

    @property
    def txid(self) -> int:
        return self.replica.txid

    def claim(self, epoch: int | None = None) -> int:
        return self.replica.claim(epoch)

    def ship(self, source: Source) -> Round:
        """Ship what ``source`` committed since the last round (a snapshot if needed)."""
        before = requests_of(self.store)
        try:
            prepared = self.replica.prepare(source.path, source.committed_end())
        except SnapshotNeeded:
            return self.snapshot(source)
        if prepared is None:
            return Round(0, self.txid, False, requests_of(self.store) - before)
        self.land(prepared)
        return Round(prepared.frames, self.txid, False, requests_of(self.store) - before)

    def land(self, prepared: Prepared) -> None:
        """PUT a prepared segment in a log object, record it, and write the manifest."""
        self.seq += 1
        at = self.clock()
        data, entries = encode_log(self.session, self.seq, at, [(prepared.meta, prepared.data)])
        key = log_key(self.prefix, self.seq)
        self.store.put(key, data, if_none_match=True)
        assert self.replica.shipped(prepared, key, entries[0].offset, at) is not None
        self.replica.fold(tail=None, tail_from=0)

    def snapshot(self, source: Source) -> Round:
        """Capture the whole file (a ``TRUNCATE`` checkpoint) and upload it: a new chain."""
        before = requests_of(self.store)
        self.replica.upload(self.replica.capture(source.conn, source.path))
        return Round(0, self.txid, True, requests_of(self.store) - before)

    def checkpoint(self, source: Source, *, carry: bool = False) -> Round:
        """The runtime's checkpoint: ship (or, ``carry``, only read the unshipped frames into
        a segment, shipped after the checkpoint), ``TRUNCATE``, then ``mark_checkpointed`` if
        it copied exactly the shipped frames."""
        before = requests_of(self.store)
        snapshot = False
        carried: Prepared | None = None
        if carry:
            try:
                carried = self.replica.prepare(source.path, source.committed_end())
            except SnapshotNeeded:
                return self.snapshot(source)
        else:
            snapshot = self.ship(source).snapshot
        frame = source.committed_end()
        if frame == 0:
            # An empty WAL: nothing to copy (the runtime checkpoints past checkpoint_frames).
            return Round(0, self.txid, snapshot, requests_of(self.store) - before)
        if source.conn.wal_checkpoint(mode=TRUNCATE) == (0, 0):
            if carried is not None:
                self.land(carried)
            self.replica.mark_checkpointed(frame)
        elif carried is not None:
            self.land(carried)
        frames = carried.frames if carried is not None else 0
        return Round(frames, self.txid, snapshot, requests_of(self.store) - before)


@pytest.fixture(params=["directory", "s3"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ReplicaStore]:
    """A fresh store: a directory, or a prefix of its own on the SeaweedFS server."""
    store: ReplicaStore
    if request.param == "directory":
        store = DirectoryStore(tmp_path / "replica")
    else:
        server: S3Server = request.getfixturevalue("s3_credentials")
        store = S3Store(
            server.bucket,
            prefix=f"test-{uuid.uuid4().hex[:12]}",
            endpoint_url=server.endpoint_url,
            region=server.region,
            path_style=True,
        )
    yield store
    store.close()


@pytest.fixture
def store(tmp_path: Path) -> DirectoryStore:
    """A fresh directory store."""
    return DirectoryStore(tmp_path / "replica")


def check_restores(
    store: ReplicaStore, tmp: Path, images: dict[int, bytes], times: dict[int, float]
) -> int:
    """Every retained txid restores to its image, by txid and by time; return how many."""
    got = store.get(manifest_key(NAME))
    assert got is not None
    manifest = Manifest.decode(got[0], key="m")
    assert manifest.snapshot is not None
    retained = [t for t in sorted(images) if t >= manifest.snapshot.txid]
    assert retained[-1] == manifest.txid
    dest = tmp / "restored.db"
    for txid in retained:
        result = restore(store, NAME, dest, at_txid=txid)
        assert result.txid == txid
        assert dest.read_bytes() == images[txid], f"txid {txid}"
        if txid in times:
            assert restore(store, NAME, dest, at_time=times[txid] + 0.5).txid == txid
            assert dest.read_bytes() == images[txid]
    assert restore(store, NAME, dest).txid == manifest.txid
    assert dest.read_bytes() == images[manifest.txid]
    return len(retained)


def run_program(store: ReplicaStore, folder: Path, seed: int, steps: int) -> dict[str, int]:
    rng = random.Random(seed)
    source = Source(folder / "src" / "data.db", page_size=rng.choice([512, 1024]))
    clock = Clock()
    replica = Writer(store, clock=clock)
    replica.claim()
    images: dict[int, bytes] = {}
    times: dict[int, float] = {}

    def record(txid: int, shipped: bool) -> None:
        image = source.image()
        if txid in images:
            assert images[txid] == image  # nothing new was committed
        images[txid] = image
        if shipped:
            times[txid] = clock.now

    kinds = {"segment": 0, "snapshot": 0, "continued": 0}
    for _ in range(steps):
        r = rng.random()
        if r < 0.5:
            source.commit(rng)
        elif r < 0.55:
            source.commit(rng, rollback=True)
        elif r < 0.58:
            source.conn.execute("vacuum").fetchall()
        elif r < 0.85:
            before = replica.manifest
            assert before is not None
            result = replica.ship(source)
            # Only the first round takes a snapshot: checkpoints keep the chain going.
            assert not result.snapshot or before.snapshot is None
            kinds["snapshot" if result.snapshot else "segment"] += bool(result.requests)
            if result.frames and before.position is not None:
                first = replica.manifest.segments[-1]  # type: ignore[union-attr]
                kinds["continued"] += first.salt1 != before.position.salt1
            record(result.txid, bool(result.requests))
        elif r < 0.95:
            before = replica.manifest
            assert before is not None
            result = replica.checkpoint(source, carry=rng.random() < 0.5)
            assert not result.snapshot or before.snapshot is None
            record(result.txid, bool(result.requests))
        else:
            result = replica.snapshot(source)
            assert result.snapshot
            record(result.txid, True)
    result = replica.ship(source)
    record(result.txid, bool(result.requests))
    source.close()
    assert check_restores(store, folder, images, times) >= 1
    return kinds


# -- Restore equals the source at every retained flush -------------------------------------------


@pytest.mark.parametrize("seed", range(8))
def test_random_rounds_restore_exactly(store: DirectoryStore, tmp_path: Path, seed: int) -> None:
    """Random commits, rollbacks, vacuums, rounds, checkpoints: every round restores exactly."""
    run_program(store, tmp_path, seed, steps=60)


def test_random_rounds_restore_exactly_on_s3(any_store: ReplicaStore, tmp_path: Path) -> None:
    """The same program restores exactly from a directory and from S3."""
    kinds = run_program(any_store, tmp_path, seed=101, steps=40)
    assert kinds["continued"] >= 1  # shipping went on into a new WAL generation


def test_checkpoint_after_shipping_continues_in_a_new_generation(
    store: DirectoryStore, tmp_path: Path
) -> None:
    """After the runtime's checkpoint, the next WAL generation ships from frame 0, no snapshot."""
    for carry in (False, True):
        source = Source(tmp_path / f"c{carry}" / "data.db")
        name = f"actors/c{carry}/data.db"
        replica = Writer(store, name)
        replica.claim()
        assert replica.ship(source).snapshot
        source.insert(1)
        first = replica.ship(source)
        assert first.frames and not first.snapshot
        source.insert(2)
        replica.checkpoint(source, carry=carry)
        assert source.committed_end() == 0
        source.insert(3)
        after = replica.ship(source)
        assert not after.snapshot and after.frames
        segments = replica.manifest.segments  # type: ignore[union-attr]
        assert segments[-1].first_frame == 0
        assert (segments[-1].salt1, segments[-1].salt2) != (segments[-2].salt1, segments[-2].salt2)
        image = source.image()
        dest = tmp_path / f"c{carry}.db"
        restore(store, name, dest)
        assert dest.read_bytes() == image
        source.close()


def test_a_checkpoint_by_someone_else_costs_a_snapshot(
    store: DirectoryStore, tmp_path: Path
) -> None:
    """A WAL restarted by a checkpoint the replicator did not run is answered by a snapshot."""
    rng = random.Random(8)
    source = Source(tmp_path / "data.db")
    replica = Writer(store)
    replica.claim()
    replica.ship(source)
    source.commit(rng)
    source.commit(rng)  # committed, never shipped: only a snapshot can carry it now
    source.conn.wal_checkpoint(mode=RESTART)
    source.commit(rng)
    result = replica.ship(source)
    assert result.snapshot
    dest = tmp_path / "restored.db"
    restore(store, NAME, dest)
    assert dest.read_bytes() == source.image()
    source.close()


# -- Requests ----------------------------------------------------------------------------------


def test_an_idle_file_makes_no_request(any_store: ReplicaStore, tmp_path: Path) -> None:
    """A round with no new commit makes zero requests, also after each kind of checkpoint."""
    rng = random.Random(3)
    source = Source(tmp_path / "data.db")
    replica = Writer(any_store)
    replica.claim()
    replica.ship(source)

    def idle() -> None:
        before = any_store.statistics()
        result = replica.ship(source)
        assert (result.requests, result.frames) == (0, 0)
        assert any_store.statistics() == before

    idle()
    source.commit(rng)
    shipped = replica.ship(source)
    assert shipped.requests == 2  # the log object and the manifest
    idle()
    for carry in (False, True, False):
        source.commit(rng)
        replica.checkpoint(source, carry=carry)
        idle()
        idle()
    source.close()


# -- Fencing -----------------------------------------------------------------------------------


def keys_of(store: ReplicaStore) -> list[str]:
    return [k for k in store.list(NAME + "/") if not k.endswith("/manifest")]


def epoch_of(key: str) -> int:
    return int(key.rsplit("/", 1)[1].split("-")[0])


def test_a_zombie_writer_is_fenced(any_store: ReplicaStore, tmp_path: Path) -> None:
    """A second writer claims a higher epoch; the first is fenced and makes no more requests."""
    rng = random.Random(5)
    a_src = Source(tmp_path / "a" / "data.db")
    a = Writer(any_store, writer="a")
    assert a.claim() == 1
    a.ship(a_src)
    a_src.commit(rng)
    a.ship(a_src)

    # The second runtime restores the file, claims it, and writes its own history.
    b_path = tmp_path / "b" / "data.db"
    b_path.parent.mkdir()
    restore(any_store, NAME, b_path)
    b_src = Source(b_path, create=False)
    b = Writer(any_store, writer="b")
    assert b.claim() == 2
    b_src.commit(rng)
    assert b.ship(b_src).snapshot  # its WAL is not the chain's

    a_src.commit(rng)
    with pytest.raises(FencedError, match="another writer claimed") as info:
        a.ship(a_src)
    assert (info.value.epoch, info.value.current_epoch) == (1, 2)
    orphan = log_key(a.prefix, a.seq)  # A's last segment: in A's log, named by no manifest
    before = any_store.statistics()
    with pytest.raises(FencedError, match="fenced out"):
        a.ship(a_src)
    with pytest.raises(FencedError):
        a.snapshot(a_src)
    assert any_store.statistics() == before  # a fenced writer makes no request at all

    b_src.commit(rng)
    assert b.ship(b_src).frames
    got = any_store.get(manifest_key(NAME))
    assert got is not None
    manifest = Manifest.decode(got[0], key="m")
    assert manifest.epoch == 2 and manifest.writer == "b"
    assert manifest.snapshot is not None and epoch_of(manifest.snapshot.key) == 2
    assert all(s.key.startswith(b.prefix + "/") for s in manifest.segments)
    assert orphan not in {s.key for s in manifest.segments}
    # A's snapshot went with A's generation (keep_generations=0): only B's objects are named.
    assert keys_of(any_store) == [manifest.snapshot.key]
    dest = tmp_path / "restored.db"
    restore(any_store, NAME, dest)
    assert dest.read_bytes() == b_src.image()
    a_src.close()
    b_src.close()


def test_a_takeover_on_the_same_wal_continues_the_chain(
    store: DirectoryStore, tmp_path: Path
) -> None:
    """A new writer on the same file continues the chain; the old one's history stops there."""
    rng = random.Random(6)
    source = Source(tmp_path / "data.db")
    a = Writer(store, writer="a")
    a.claim()
    a.ship(source)
    source.commit(rng)
    a.ship(source)
    b = Writer(store, writer="b")
    b.claim()
    taken_at = b.txid
    source.commit(rng)
    result = b.ship(source)
    assert not result.snapshot and result.frames
    source.commit(rng)
    with pytest.raises(FencedError):
        a.ship(source)
    assert b.ship(source).frames
    manifest = b.manifest
    assert manifest is not None
    assert all(s.key.startswith(b.prefix + "/") for s in manifest.segments if s.txid > taken_at)
    assert all(s.key.startswith(a.prefix + "/") for s in manifest.segments if s.txid <= taken_at)
    b.ship(source)
    dest = tmp_path / "restored.db"
    restore(store, NAME, dest)
    assert dest.read_bytes() == source.image()
    source.close()


def test_claim_refuses_an_epoch_not_above_the_manifest(store: DirectoryStore) -> None:
    """claim(epoch) at or below the current epoch raises FencedError; a higher one wins."""
    FileReplica(store, NAME, keep_generations=0).claim(5)
    with pytest.raises(FencedError, match="at epoch 5 already"):
        FileReplica(store, NAME, keep_generations=0).claim(5)
    assert FileReplica(store, NAME, keep_generations=0).claim() == 6
    with pytest.raises(RuntimeError, match="claim"):
        FileReplica(store, "other").prepare("x", 0)


# -- Bad replicas ------------------------------------------------------------------------------


def shipped_replica(store: ReplicaStore, tmp_path: Path) -> tuple[Manifest, dict[int, bytes]]:
    rng = random.Random(9)
    source = Source(tmp_path / "src" / "data.db")
    replica = Writer(store)
    replica.claim()
    images = {}
    for _ in range(4):
        source.commit(rng)
        images[replica.ship(source).txid] = source.image()
    source.close()
    assert replica.manifest is not None
    return replica.manifest, images


def test_a_corrupt_segment_fails_restore_clearly(any_store: ReplicaStore, tmp_path: Path) -> None:
    """A flipped byte in a stored segment: CorruptReplicaError naming it; earlier txids work."""
    manifest, images = shipped_replica(any_store, tmp_path)
    bad = manifest.segments[1]
    got = any_store.get(bad.key)
    assert got is not None
    damaged = bytearray(got[0])
    damaged[bad.offset + bad.length // 2] ^= 0x40  # in the segment, not the log index
    any_store.put(bad.key, bytes(damaged))
    dest = tmp_path / "restored.db"
    with pytest.raises(CorruptReplicaError, match="fails its checksum") as info:
        restore(any_store, NAME, dest)
    assert info.value.key == bad.key
    assert not dest.exists()
    assert list(tmp_path.glob(".restored.db*")) == []  # no temporary file left behind
    restore(any_store, NAME, dest, at_txid=bad.txid - 1)
    assert dest.read_bytes() == images[bad.txid - 1]


def test_a_swapped_or_missing_object_fails_restore(store: DirectoryStore, tmp_path: Path) -> None:
    """Another valid segment in a segment's place, a missing one, a bad snapshot: all refused."""
    manifest, _ = shipped_replica(store, tmp_path)
    first, second = manifest.segments[0], manifest.segments[1]
    second_bytes = store.get(second.key)
    assert second_bytes is not None
    store.put(first.key, second_bytes[0])
    dest = tmp_path / "restored.db"
    with pytest.raises(CorruptReplicaError, match="checksum"):
        restore(store, NAME, dest)
    store.delete(first.key)
    with pytest.raises(CorruptReplicaError, match="is missing"):
        restore(store, NAME, dest)
    assert manifest.snapshot is not None
    store.put(manifest.snapshot.key, b"not a snapshot")
    with pytest.raises(CorruptReplicaError, match=r"snapshot .* fails its checksum"):
        restore(store, NAME, dest)
    store.put(manifest_key(NAME), b"{not json")
    with pytest.raises(CorruptReplicaError, match="manifest"):
        restore(store, NAME, dest)
    assert not dest.exists()


def test_restore_points_out_of_range(store: DirectoryStore, tmp_path: Path) -> None:
    """No replica, a txid out of range, a time before the snapshot: RestorePointError."""
    dest = tmp_path / "restored.db"
    with pytest.raises(RestorePointError, match="no replica"):
        restore(store, NAME, dest)
    manifest, _ = shipped_replica(store, tmp_path)
    assert manifest.snapshot is not None
    with pytest.raises(RestorePointError, match="not retained"):
        restore(store, NAME, dest, at_txid=manifest.txid + 1)
    with pytest.raises(RestorePointError, match="not retained"):
        restore(store, NAME, dest, at_txid=manifest.snapshot.txid - 1)
    with pytest.raises(RestorePointError, match="at or before"):
        restore(store, NAME, dest, at_time=manifest.snapshot.created_at - 1)
    with pytest.raises(ValueError, match="at most one"):
        restore(store, NAME, dest, at_txid=1, at_time=1.0)


def test_snapshot_retires_the_old_chain(store: DirectoryStore, tmp_path: Path) -> None:
    """A snapshot starts a new chain and deletes the old snapshot (not the log), without listing."""
    source = Source(tmp_path / "data.db")
    replica = Writer(store)
    replica.claim()
    for key in range(3):
        source.insert(key)
        replica.ship(source)
    old = keys_of(store)
    assert len(old) == 1  # one snapshot (the first round took it), its segments in the log
    logs = list(store.list(replica.prefix + "/"))
    assert len(logs) == 2
    before = store.statistics()
    result = replica.snapshot(source)
    after = store.statistics()
    assert after.lists == before.lists
    assert result.requests == 2 + len(old)  # snapshot, manifest, one delete per old snapshot
    assert keys_of(store) == [replica.manifest.snapshot.key]  # type: ignore[union-attr]
    assert list(store.list(replica.prefix + "/")) == logs
    dest = tmp_path / "restored.db"
    restore(store, NAME, dest)
    assert dest.read_bytes() == source.image()
    source.close()


def test_a_restart_by_someone_else_after_our_checkpoint_costs_a_snapshot(
    store: DirectoryStore, tmp_path: Path
) -> None:
    """After our checkpoint, a second WAL restart by someone else costs a snapshot."""
    source = Source(tmp_path / "data.db")
    replica = Writer(store)
    replica.claim()
    replica.ship(source)
    source.insert(1)
    replica.checkpoint(source)
    source.insert(2)  # restarts the WAL: the generation the replicator expects
    source.insert(3)
    source.conn.wal_checkpoint(mode=TRUNCATE)  # folds 2 and 3 into the file, unshipped
    source.insert(4)
    assert replica.ship(source).snapshot
    dest = tmp_path / "restored.db"
    restore(store, NAME, dest)
    assert dest.read_bytes() == source.image()
    source.close()


class LostAnswers(DirectoryStore):
    """A directory store that loses the answer of chosen manifest writes."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.mode: str | None = None

    def put(
        self, key: str, data: Data, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        etag = super().put(key, data, if_match=if_match, if_none_match=if_none_match)
        mode, self.mode = (self.mode, None) if key.endswith("/manifest") else (None, self.mode)
        if mode == "unavailable":
            raise ReplicaUnavailableError("the answer was lost")
        if mode == "retried":  # as S3's retry of a conditional put whose answer was lost
            return super().put(key, data, if_match=if_match, if_none_match=if_none_match)
        return etag


def test_a_manifest_write_with_a_lost_answer_is_read_back(tmp_path: Path) -> None:
    """A manifest put whose answer was lost (or retried after landing) is adopted, not fenced."""
    store = LostAnswers(tmp_path / "replica")
    source = Source(tmp_path / "data.db")
    replica = Writer(store)
    replica.claim()
    replica.ship(source)
    source.insert(1)
    store.mode = "retried"
    assert replica.ship(source).frames  # the retry's 412 was our own write
    source.insert(2)
    store.mode = "unavailable"
    with pytest.raises(ReplicaUnavailableError):
        replica.ship(source)
    source.insert(3)
    result = replica.ship(source)  # reads the manifest back, goes on
    assert result.frames and not result.snapshot
    dest = tmp_path / "restored.db"
    restore(store, NAME, dest)
    assert dest.read_bytes() == source.image()
    # The writer kept its own chain: the segment shipped before the write with the lost answer
    # stays in it (txid 3), and the next one follows it (txid 4).
    assert [s.txid for s in replica.manifest.segments] == [2, 3, 4]  # type: ignore[union-attr]
    source.close()


def test_racing_claims_get_distinct_epochs(store: DirectoryStore) -> None:
    """Eight writers claim at once: the winners' epochs differ, the losers are fenced."""
    barrier = threading.Barrier(8)

    def claim(i: int) -> int | None:
        barrier.wait()
        try:
            return FileReplica(store, NAME, keep_generations=0, writer=str(i)).claim()
        except FencedError:
            return None

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        epochs = [e for e in pool.map(claim, range(8)) if e is not None]
    assert epochs and len(set(epochs)) == len(epochs)
    got = store.get(manifest_key(NAME))
    assert got is not None
    assert Manifest.decode(got[0], key="m").epoch == max(epochs)


def test_an_uncommitted_spill_is_never_shipped(store: DirectoryStore, tmp_path: Path) -> None:
    """Frames spilled by another connection's open transaction are not shipped nor restored."""
    source = Source(tmp_path / "data.db")
    replica = Writer(store)
    replica.claim()
    replica.ship(source)
    source.insert(1)
    other = apsw.Connection(str(source.path))
    other.pragma("cache_size", 4)
    other.execute("begin immediate").fetchall()
    other.executemany(
        "insert into t values(?, ?)", [(k, bytes([k % 251]) * 900) for k in range(100, 300)]
    )
    wal_frames = (source.wal.stat().st_size - WAL_HEADER_BYTES) // (FRAME_HEADER_BYTES + 1024)
    assert wal_frames > source.committed_end()  # spilled, uncommitted
    image = source.image()
    replica.ship(source)
    dest = tmp_path / "restored.db"
    restore(store, NAME, dest)
    assert dest.read_bytes() == image
    other.execute("commit").fetchall()
    replica.ship(source)
    restore(store, NAME, dest)
    assert dest.read_bytes() == source.image()
    other.close()
    source.close()


def test_restore_refuses_a_destination_with_a_wal(store: DirectoryStore, tmp_path: Path) -> None:
    """A -wal file beside the destination would corrupt the restored file: refused."""
    shipped_replica(store, tmp_path)
    dest = tmp_path / "restored.db"
    Path(f"{dest}-wal").write_bytes(b"old")
    with pytest.raises(FileExistsError, match="-wal exists"):
        restore(store, NAME, dest)


def test_scrub_zeroes_one_files_segments_and_keeps_the_rest_exact(tmp_path: Path) -> None:
    """scrub overwrites one file's segments with zeros; size, index, others' bytes unchanged."""
    store = DirectoryStore(tmp_path / "bucket")
    meta = {
        "epoch": 1,
        "checksum": "c",
        "salt1": 1,
        "salt2": 2,
        "first_frame": 0,
        "end_frame": 1,
        "db_size": 1,
    }
    parts = [({**meta, "name": "gone"}, b"secret pages"), ({**meta, "name": "kept"}, b"other")]
    data, entries = encode_log("s", 1, 0.0, parts)
    key = log_key(session_prefix("rt", "s"), 1)
    store.put(key, data, if_none_match=True)
    assert scrub(store, key, "gone")
    got = store.get(key)
    assert got is not None and len(got[0]) == len(data)
    gone, kept = entries
    assert got[0][gone.offset : gone.offset + gone.length] == bytes(gone.length)
    assert got[0][kept.offset : kept.offset + kept.length] == b"other"
    assert got[0][: gone.offset] == data[: gone.offset]  # (the index, as it was)
    assert not scrub(store, key, "gone")  # already done: no write
    assert not scrub(store, log_key(session_prefix("rt", "s"), 2), "gone")  # no such object
