"""One database file replicated to a store: a fenced manifest, a snapshot, ordered segments.

A :class:`FileReplica` is the writer of one SQLite file's replica (docs/explanation/replication.md);
the runtime's shipping rounds (``rounds.py``) drive it, and :func:`restore` rebuilds the file, byte
for byte, at any retained round.

**Objects in the store**, under the file's ``name`` (e.g. ``actors/<id>/data.db``)::

    <name>/manifest                    JSON, rewritten only with If-Match (or If-None-Match)
    <name>/snapshots/<epoch>-<seq>     the whole checkpointed database, zlib, checksummed

and the segments (committed WAL frames, ``wal.py``) in the writer's log objects (``log.py``),
many files' segments to an object. Snapshots are immutable and written with
``if_none_match=True`` under keys no other writer can use (the epoch is the writer's own, the
sequence counts its uploads). The manifest names the one snapshot and the ordered segments
after it, each with its ``txid`` (the snapshot's, then one more per segment), checksums, its
place in its log object and the time of the round that shipped it; then the log (``tail``)
where the chain goes on after the listed segments. It also holds the WAL position after the
last listed segment, so that a writer that takes over continues the chain when its WAL is the
same one (salts and checksum chain verify), and takes a snapshot otherwise.

**Writing.** :meth:`FileReplica.claim` (or :meth:`~FileReplica.adopt` of a manifest claimed
before) takes the replica. Then, per round: :meth:`~FileReplica.prepare` reads the committed
frames not shipped yet into a segment (no request; :class:`SnapshotNeeded` when the WAL does
not continue the chain), the caller stores it in a log object, :meth:`~FileReplica.shipped`
records it in memory, and :meth:`~FileReplica.fold` writes the manifest listing what was
shipped (one PUT). A snapshot is :meth:`~FileReplica.capture` (local: a ``TRUNCATE``
checkpoint and the file's bytes) then :meth:`~FileReplica.upload` (the snapshot, the manifest,
and a DELETE per snapshot that retention drops). Nothing ever lists.

**Fencing.** :meth:`FileReplica.claim` bumps the manifest's epoch with a conditional write. Every
later manifest write is conditional on the ETag this writer last wrote, so once another writer
has claimed, the old one's next write fails its condition: :class:`FencedError`, and that
replica refuses every later call. A snapshot it had just uploaded is deleted (no manifest names
it), so the history in the manifest is one writer's after a takeover, never a merge.

**Checkpoints.** The caller turns SQLite's auto-checkpoint off and checkpoints itself
(``TRUNCATE``) once the frames are shipped or read into a prepared segment, then calls
:meth:`FileReplica.mark_checkpointed`: the next generation of the WAL is shipped from its frame
0. Any other restart of the WAL (a checkpoint by someone else) costs a new snapshot: salt-1
then is not the one expected.

Concurrency: a :class:`FileReplica` is not thread-safe, except that :meth:`~FileReplica.shipped`
and :meth:`~FileReplica.fold` may run in different threads; the caller serialises commits on
the file with :meth:`~FileReplica.capture` (the runtime's one connection per actor file does).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import queue
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import apsw
import attrs

from ..errors import (
    CorruptReplicaError,
    CorruptSnapshotError,
    FencedError,
    PreconditionFailedError,
    ReplicaError,
    ReplicaUnavailableError,
    RestorePointError,
)
from .log import LogFormatError, decode_log, log_key, scrub
from .store import ReplicaStore, check_key
from .wal import (
    DEFAULT_CODEC,
    Segment,
    SegmentError,
    WalBatch,
    WalFormatError,
    WalPosition,
    WalRestartedError,
    apply_segment,
    committed_frames,
    decode_segment,
    encode_segment,
    read_header,
)

#: Version of the manifest's JSON layout; a reader refuses other versions instead of guessing.
MANIFEST_VERSION = 2

#: zlib level of snapshots: level 1, as for segments (``wal.py`` has the measurements); a
#: snapshot is taken rarely, but it is on the path of a round that found the WAL restarted.
SNAPSHOT_ZLIB_LEVEL = 1

#: ``next_salt1`` for :meth:`FileReplica.adopt` when the caller verified that the database file
#: is the snapshot's image and its WAL is empty (nothing touched them since): the WAL's next
#: generation, whatever its salts, continues the chain from its frame 0. (A connection that
#: reopens an emptied WAL picks new random salts, so the "one more than before" rule cannot
#: be used across a close.)
ANY_SALT = -1

#: Seconds of history kept for point-in-time restore (older generations are dropped, and the
#: log objects holding their segments may be deleted).
DEFAULT_RETENTION = 24 * 3600.0

#: Earlier generations (snapshot and segments) kept in a manifest at most.
DEFAULT_KEEP_GENERATIONS = 8

#: Digest of snapshots and of stored objects in the manifest: BLAKE2b of this many bytes.
DIGEST_BYTES = 16

_MANIFEST = "manifest"
_MASK = 0xFFFFFFFF
_TRUNCATE = apsw.SQLITE_CHECKPOINT_TRUNCATE


@attrs.frozen
class UploadResult:
    """What :meth:`FileReplica.upload` did."""

    #: Bytes uploaded (the snapshot object and the manifest).
    bytes: int
    #: Requests made to the store (GET, PUT, DELETE).
    requests: int
    #: The snapshot's txid.
    txid: int


class SnapshotNeeded(ReplicaError):
    """The chain cannot go on from the local WAL: the caller takes a snapshot
    (:meth:`FileReplica.capture` then :meth:`FileReplica.upload`)."""


@attrs.frozen
class Prepared:
    """A segment ready to ship, from :meth:`FileReplica.prepare`."""

    name: str
    #: The writer's chain counter when prepared (a capture since makes it stale).
    chain: int
    #: The log entry's description (without offset and length).
    meta: dict[str, Any]
    data: bytes
    start: WalPosition | None
    end: WalPosition
    frames: int
    pages: int


@attrs.define
class Captured:
    """A snapshot read, to upload, from :meth:`FileReplica.capture`; compressed and checked on
    the first :meth:`FileReplica.upload` attempt."""

    image: bytes
    image_bytes: int
    page_size: int
    next_salt1: int | None
    created_at: float
    data: bytes | None = None
    image_checksum: str = ""


@attrs.frozen
class RestoreResult:
    """What :func:`restore` wrote."""

    txid: int
    #: Segments applied onto the snapshot.
    segments: int
    #: Bytes of the restored file.
    bytes: int


# -- The manifest ------------------------------------------------------------------------------


@attrs.frozen
class SnapshotEntry:
    """The manifest's snapshot: a whole database file, zlib-compressed."""

    key: str
    txid: int
    #: BLAKE2b of the stored (compressed) bytes, hex.
    checksum: str
    #: BLAKE2b of the database image, hex.
    image_checksum: str
    page_size: int
    #: Bytes of the database image.
    image_bytes: int
    created_at: float


@attrs.frozen
class SegmentEntry:
    """One segment named by the manifest, in order."""

    key: str
    txid: int
    #: BLAKE2b of the stored segment bytes, hex.
    checksum: str
    stored_bytes: int
    salt1: int
    salt2: int
    first_frame: int
    end_frame: int
    #: Database size in pages after the segment.
    db_size: int
    #: When the round that shipped it ran: every commit in it happened at or before this time.
    flushed_at: float
    #: Where the segment's bytes are in the object ``key`` (a log object holds many files'
    #: segments); ``length`` -1 means the whole object.
    offset: int = 0
    length: int = -1


@attrs.frozen
class Generation:
    """An earlier snapshot and the segments after it, kept for point-in-time restore."""

    snapshot: SnapshotEntry
    segments: tuple[SegmentEntry, ...]
    #: After this time the segments' log objects may be deleted (retention): the generation
    #: can then be restored at its snapshot only.
    segments_expire_at: float


@attrs.frozen
class Manifest:
    """The state of one file's replica; only ever replaced with a conditional write."""

    name: str
    epoch: int
    writer: str
    snapshot: SnapshotEntry | None
    segments: tuple[SegmentEntry, ...]
    #: The WAL position after the last shipped frame, ``None`` right after a snapshot (the next
    #: frames are frame 0 of whatever generation follows).
    position: WalPosition | None
    #: Earlier generations, oldest first (retention bounds them).
    history: tuple[Generation, ...] = ()
    #: The writer's log (``log.py`` session prefix) where the chain may continue after the
    #: listed segments, from log object ``tail_from`` on; ``None`` when it does not.
    tail: str | None = None
    tail_from: int = 0
    #: When the actor was last deleted (``Ref.delete``): its history before that instant is
    #: erased, and no restore brings it back. A tombstone (no snapshot) until a new
    #: incarnation of the key claims the file; that one's history starts after it.
    erased_at: float | None = None
    #: A tombstone's list of the objects that held the erased history: its snapshots, and
    #: the log objects whose segments of this file are overwritten with zeros (kept so that a
    #: deletion cut short finishes them; a new incarnation's claim drops the list).
    erasing: tuple[str, ...] = ()

    @property
    def txid(self) -> int:
        """The txid of the latest state (0 before the first snapshot)."""
        if self.segments:
            return self.segments[-1].txid
        return self.snapshot.txid if self.snapshot else 0

    def encode(self) -> bytes:
        """The manifest as compact JSON."""
        doc: dict[str, Any] = {
            "version": MANIFEST_VERSION,
            "name": self.name,
            "epoch": self.epoch,
            "writer": self.writer,
            "snapshot": attrs.asdict(self.snapshot) if self.snapshot else None,
            "segments": [attrs.asdict(s) for s in self.segments],
            "history": [attrs.asdict(g) for g in self.history],
            "tail": self.tail,
            "tail_from": self.tail_from,
            "erased_at": self.erased_at,
            "erasing": list(self.erasing),
            "position": (
                {
                    "salt1": self.position.salt1,
                    "salt2": self.position.salt2,
                    "frame_count": self.position.frame_count,
                    "checksum": list(self.position.checksum),
                }
                if self.position
                else None
            ),
        }
        return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes, *, key: str) -> Manifest:
        """Parse a manifest; :class:`CorruptReplicaError` if it is not one."""
        try:
            doc = json.loads(data)
            if doc["version"] != MANIFEST_VERSION:
                newer = isinstance(doc["version"], int) and doc["version"] > MANIFEST_VERSION
                hint = (
                    "a newer torpor wrote it: upgrade torpor to read this replica"
                    if newer
                    else "restore it with the torpor version that wrote it"
                )
                raise CorruptReplicaError(
                    f"manifest {key!r} has format version {doc['version']!r} "
                    f"(this version reads {MANIFEST_VERSION}); {hint}",
                    key=key,
                )
            pos = doc["position"]
            return cls(
                name=doc["name"],
                epoch=int(doc["epoch"]),
                writer=doc["writer"],
                snapshot=SnapshotEntry(**doc["snapshot"]) if doc["snapshot"] else None,
                segments=tuple(SegmentEntry(**s) for s in doc["segments"]),
                position=(
                    WalPosition(
                        pos["salt1"], pos["salt2"], pos["frame_count"], tuple(pos["checksum"])
                    )
                    if pos
                    else None
                ),
                history=tuple(
                    Generation(
                        snapshot=SnapshotEntry(**g["snapshot"]),
                        segments=tuple(SegmentEntry(**s) for s in g["segments"]),
                        segments_expire_at=float(g["segments_expire_at"]),
                    )
                    for g in doc["history"]
                ),
                tail=doc["tail"],
                tail_from=int(doc["tail_from"]),
                erased_at=(float(doc["erased_at"]) if doc.get("erased_at") is not None else None),
                erasing=tuple(str(k) for k in doc.get("erasing", ())),
            )
        except (ValueError, KeyError, TypeError) as exc:
            if isinstance(exc, CorruptReplicaError):
                raise
            raise CorruptReplicaError(f"manifest {key!r} is not valid ({exc!r})", key=key) from exc


def _quick_check(image: bytes, name: str) -> None:
    conn = apsw.Connection(":memory:")
    # A WAL-mode header cannot be opened in memory: read it as legacy (one copy of the image).
    copy = image[:18] + b"\x01\x01" + image[20:]
    try:
        conn.deserialize("main", copy)
        rows = conn.execute("pragma quick_check").fetchall()
    except apsw.Error as exc:
        raise CorruptSnapshotError(f"{name!r} cannot be checked ({exc}): not uploaded") from exc
    finally:
        conn.close()
    if rows != [("ok",)]:
        raise CorruptSnapshotError(
            f"{name!r} fails quick_check ({rows[:3]}): not uploaded; the replica keeps its last "
            "good state"
        )


def manifest_key(name: str) -> str:
    """The store key of the manifest of the file replicated under ``name``."""
    return check_key(f"{name}/{_MANIFEST}")


def _digest(data: bytes | memoryview) -> str:
    return hashlib.blake2b(data, digest_size=DIGEST_BYTES).hexdigest()


# -- The writer --------------------------------------------------------------------------------


class FileReplica:
    """The writer of one file's replica in ``store`` under ``name`` (a key prefix).

    Call :meth:`claim` (or :meth:`adopt`) once, then per round :meth:`prepare`, store the
    segment, :meth:`shipped` and :meth:`fold`; :meth:`mark_checkpointed` after the caller's own
    checkpoint; :meth:`capture` and :meth:`upload` to start a new chain (the module docstring
    has the whole protocol). ``clock`` gives the snapshot times recorded for point-in-time
    restore (``time.time`` by default; segments get the round's time from the caller);
    ``writer`` names this writer in the manifest (a random id by default).
    """

    def __init__(
        self,
        store: ReplicaStore,
        name: str,
        *,
        writer: str | None = None,
        clock: Callable[[], float] = time.time,
        codec: int = DEFAULT_CODEC,
        retention: float = DEFAULT_RETENTION,
        keep_generations: int = DEFAULT_KEEP_GENERATIONS,
        sequence: Callable[[], int] | None = None,
    ) -> None:
        self.store = store
        #: Numbers the objects it writes (with the epoch); a writer whose files may be taken up
        #: again under the same epoch (the runtime, within one process) passes one shared
        #: counter, so that no two of its replicas of a file ever make the same key.
        self._shared_sequence = sequence
        self.retention = retention
        self.keep_generations = keep_generations
        #: A snapshot was captured and is being uploaded: nothing is prepared meanwhile.
        self._capture_pending = False
        #: Segments shipped through the log since the manifest was last written.
        self.unfolded = 0
        #: Bumped by every capture: a segment prepared before it is stale.
        self.chain = 0
        #: Guards the manifest between a manifest write (a worker thread) and ``shipped``.
        self._state_lock = threading.RLock()
        self.name = name
        self._manifest_key = manifest_key(name)
        self.writer = writer if writer is not None else uuid.uuid4().hex
        self._clock = clock
        self._codec = codec
        self._manifest: Manifest | None = None
        self._etag: str | None = None
        self._sequence = 0
        self._fenced: FencedError | None = None
        #: After a snapshot (the manifest's position is ``None``): the salt-1 the WAL's next
        #: generation must have for its frames to follow the snapshot; ``None`` if unknown.
        self._next_salt1: int | None = None
        #: The frame count the last checkpoint was checked to have copied, all shipped: when
        #: the WAL restarts from there, shipping goes on at frame 0 of the new generation.
        self._checkpointed_frame: int | None = None
        #: A manifest write may or may not have happened (unavailable store): read it back.
        self._uncertain = False
        self._requests = 0

    def __repr__(self) -> str:
        return f"FileReplica({self.store!r}, {self.name!r}, epoch={self.epoch})"

    @property
    def epoch(self) -> int | None:
        """The epoch this writer claimed, ``None`` before :meth:`claim`."""
        return self._manifest.epoch if self._manifest else None

    @property
    def txid(self) -> int:
        """The txid of the latest state in the replica, as this writer knows it."""
        return self._manifest.txid if self._manifest else 0

    @property
    def manifest(self) -> Manifest | None:
        """The manifest as this writer last wrote or read it."""
        return self._manifest

    def claim(self, epoch: int | None = None) -> int:
        """Take ownership of the replica: write the manifest with a higher epoch; return it.

        ``epoch`` defaults to one more than the manifest's (1 for a new replica); one not above
        the manifest's raises :class:`FencedError`, as does losing a race with another claim.
        The chain in the manifest is kept: the first :meth:`prepare` continues it if the WAL is
        the one it came from, and raises :class:`SnapshotNeeded` otherwise.
        """
        self._check_not_fenced()
        if epoch is not None and (not isinstance(epoch, int) or epoch < 1):
            raise ValueError(f"epoch must be an int of at least 1 (got {epoch!r})")
        got = self._get(self._manifest_key)
        current = Manifest.decode(got[0], key=self._manifest_key) if got else None
        current_epoch = current.epoch if current else 0
        new_epoch = current_epoch + 1 if epoch is None else epoch
        if new_epoch <= current_epoch:
            raise FencedError(
                f"cannot claim {self.name!r} at epoch {new_epoch}: the replica is at epoch "
                f"{current_epoch} already; claim a higher one",
                epoch=new_epoch,
                current_epoch=current_epoch,
            )
        if current is None:
            manifest = Manifest(self.name, new_epoch, self.writer, None, (), None)
        else:
            manifest = attrs.evolve(current, epoch=new_epoch, writer=self.writer)
        try:
            self._etag = self._put(
                self._manifest_key,
                manifest.encode(),
                if_match=got[1] if got else None,
                if_none_match=got is None,
            )
        except PreconditionFailedError as exc:
            raise FencedError(
                f"another writer claimed {self.name!r} at the same time; this one did not",
                epoch=new_epoch,
                current_epoch=None,
            ) from exc
        self._manifest = manifest
        self._sequence = 0
        self._next_salt1 = None
        self._checkpointed_frame = None
        self._uncertain = False
        return new_epoch

    # -- the runtime's split operations (log shipping) -------------------------------------------

    def adopt(
        self,
        manifest: Manifest,
        etag: str,
        *,
        next_salt1: int | None = None,
        checkpointed_frame: int | None = None,
        sequence: int = 0,
    ) -> None:
        """Take up a manifest this writer claimed or wrote earlier (a saved state), without a
        request; a wrong ``etag`` shows at the next manifest write (:class:`FencedError`)."""
        self._manifest, self._etag = manifest, etag
        self._next_salt1 = next_salt1
        self._checkpointed_frame = checkpointed_frame
        self._sequence = sequence
        self._uncertain = False
        self.unfolded = 0

    def saved_state(self) -> dict[str, Any] | None:
        """What :meth:`adopt` needs to go on later without a request (``None`` if unsafe:
        unfolded segments, an upload in flight, an uncertain manifest, fenced)."""
        if (
            self._manifest is None
            or self._etag is None
            or self.unfolded
            or self._capture_pending
            or self._uncertain
            or self._fenced is not None
        ):
            return None
        return {
            "manifest": json.loads(self._manifest.encode()),
            "etag": self._etag,
            "next_salt1": self._next_salt1,
            "checkpointed_frame": self._checkpointed_frame,
            "sequence": self._sequence,
        }

    @property
    def needs_snapshot(self) -> bool:
        """No snapshot yet: :meth:`prepare` would raise :class:`SnapshotNeeded`."""
        return self._manifest is not None and self._manifest.snapshot is None

    @property
    def fenced(self) -> FencedError | None:
        return self._fenced

    def prepare(self, path: str | os.PathLike[str], end: int) -> Prepared | None:
        """The committed frames up to ``end`` (the WAL hook's frame count) not shipped yet, as
        an encoded segment; ``None`` if there are none. No request. Raises
        :class:`SnapshotNeeded` when the chain cannot go on without a snapshot."""
        manifest = self._writable()
        if self._capture_pending:
            return None
        if manifest.snapshot is None:
            raise SnapshotNeeded(f"{self.name!r} has no snapshot yet")
        wal: str | bytes = f"{os.fspath(path)}-wal"
        if not os.path.exists(wal):
            wal = b""
        try:
            batch = self._batch(wal, end, manifest.position)
        except (WalFormatError, ValueError) as exc:
            raise SnapshotNeeded(
                f"the WAL of {self.name!r} does not continue the chain: {exc}"
            ) from exc
        if batch is None:
            return None
        segment = batch.segment()
        data = encode_segment(segment, codec=self._codec)
        meta = {
            "name": self.name,
            "epoch": manifest.epoch,
            "checksum": _digest(data),
            "salt1": segment.salt1,
            "salt2": segment.salt2,
            "first_frame": segment.first_frame,
            "end_frame": segment.end_frame,
            "db_size": segment.db_size,
        }
        return Prepared(
            name=self.name,
            chain=self.chain,
            meta=meta,
            data=data,
            start=manifest.position,
            end=batch.end,
            frames=len(batch.frames),
            pages=len(segment.pages),
        )

    def shipped(self, prepared: Prepared, key: str, offset: int, flushed_at: float) -> int | None:
        """Record that ``prepared`` is in the store at ``key`` (from ``offset``); return the
        txid it makes, or ``None`` if a snapshot was captured since it was prepared (its
        frames are in the snapshot; the entry stays unused in the log). The manifest is
        written later (:meth:`fold`)."""
        with self._state_lock:
            return self._shipped(prepared, key, offset, flushed_at)

    def _shipped(self, prepared: Prepared, key: str, offset: int, flushed_at: float) -> int | None:
        manifest = self._local()
        if prepared.chain != self.chain or self._capture_pending:
            return None
        if manifest.position != prepared.start:
            raise RuntimeError(
                f"{self.name!r}: a segment was shipped out of order (prepared from "
                f"{prepared.start}, the chain is at {manifest.position}; chain {self.chain}, "
                f"txid {manifest.txid}, unfolded {self.unfolded})"
            )
        meta = prepared.meta
        entry = SegmentEntry(
            key=key,
            txid=manifest.txid + 1,
            checksum=meta["checksum"],
            stored_bytes=len(prepared.data),
            salt1=meta["salt1"],
            salt2=meta["salt2"],
            first_frame=meta["first_frame"],
            end_frame=meta["end_frame"],
            db_size=meta["db_size"],
            flushed_at=flushed_at,
            offset=offset,
            length=len(prepared.data),
        )
        self._manifest = attrs.evolve(
            manifest, segments=(*manifest.segments, entry), position=prepared.end
        )
        self._checkpointed_frame = None
        self.unfolded += 1
        return entry.txid

    def fold(self, *, tail: str | None, tail_from: int) -> int:
        """Write the manifest with every shipped segment, its chain continuing in the log
        ``tail`` from object ``tail_from``; return the requests made. :class:`FencedError`
        if another writer claimed the file."""
        with self._state_lock:
            manifest = self._writable()
            listed = len(manifest.segments)
        self._requests = 0
        new = attrs.evolve(manifest, tail=tail, tail_from=tail_from)
        self._write_manifest(new, orphans=[], adopt=False)
        # Segments shipped while the manifest was written (by the caller's other thread)
        # stay in memory, after the listed ones: the written manifest is a prefix of it.
        with self._state_lock:
            current = self._manifest
            assert current is not None
            if current.snapshot == manifest.snapshot:
                self._manifest = attrs.evolve(current, tail=tail, tail_from=tail_from)
                self.unfolded = len(current.segments) - listed
        return self._requests

    def mark_checkpointed(self, frame: int) -> None:
        """The runtime's own ``TRUNCATE`` checkpoint copied exactly the shipped frames, up to
        ``frame``: the WAL's next generation is shipped from its frame 0. No request."""
        manifest = self._local()
        if manifest.position is not None and manifest.position.frame_count == frame:
            self._checkpointed_frame = frame

    def capture(
        self, conn: apsw.Connection, path: str | os.PathLike[str], *, owned: bool = False
    ) -> Captured:
        """The local half of a snapshot: checkpoint the whole WAL into the file (``TRUNCATE``)
        and read the file (compressed by :meth:`upload`, off the caller's thread). No request;
        commits may go on once this returns (they are shipped after :meth:`upload`, from frame
        0 of the WAL's next generation). ``owned``: the caller's connection is the only writer
        and nothing else checkpoints the file (the runtime, whose WAL hook sees every commit):
        any next generation continues the chain from its frame 0, even one whose salts cannot
        be predicted (a WAL that was empty on a fresh connection gets random ones)."""
        manifest = self._local()
        wal = f"{os.fspath(path)}-wal"
        try:
            before = read_header(wal) if os.path.exists(wal) else None
        except WalFormatError:
            before = None
        # The TRUNCATE below restarts the WAL (even an empty one): salt-1 goes one up from the
        # WAL's current salt-1, or from the one an empty WAL's next write would have used.
        # Never guess high (a later generation could then pass for the next one): unknown is
        # None, and the first generation seen will cost one more snapshot.
        position = manifest.position
        current: int | None = None
        if before is not None:
            current = before.salt1
        elif position is None:
            # ours, unless someone restarted it since: then low (ANY_SALT: unknown)
            current = None if self._next_salt1 == ANY_SALT else self._next_salt1
        elif self._checkpointed_frame == position.frame_count:
            current = position.salt1 + 1  # emptied by a TRUNCATE since: at least this
        next_salt1 = None if current is None else (current + 1) & _MASK
        if owned and next_salt1 is None:
            next_salt1 = ANY_SALT
        log, done = conn.wal_checkpoint(mode=_TRUNCATE)
        if (log, done) != (0, 0):
            raise ReplicaError(
                f"the TRUNCATE checkpoint of {os.fspath(path)!r} did not finish "
                f"({done} of {log} frames): cannot snapshot"
            )
        image = Path(path).read_bytes()
        if len(image) < 100 or not image.startswith(b"SQLite format 3\0"):
            raise ReplicaError(f"{os.fspath(path)!r} is not a SQLite database: cannot snapshot")
        (raw_page_size,) = struct.unpack_from(">H", image, 16)
        page_size = 65536 if raw_page_size == 1 else raw_page_size
        self._capture_pending = True
        self.chain += 1
        return Captured(
            image=image,
            image_bytes=len(image),
            page_size=page_size,
            next_salt1=next_salt1,
            created_at=self._clock(),
        )

    def upload(
        self,
        captured: Captured,
        *,
        tail: str | None = None,
        tail_from: int = 0,
        verify: bool = False,
    ) -> UploadResult:
        """The remote half of a snapshot: upload it, make it the start of a new generation in
        the manifest (the shipped chain becomes history), drop what retention no longer
        keeps. Raises :class:`FencedError` once another writer claimed the file; after
        :class:`ReplicaUnavailableError`, call again
        with the same ``captured``. ``tail``/``tail_from``: where the new chain goes on (the
        writer's log, from the next object: what it shipped before is in the snapshot), or
        ``None`` when nothing follows (hibernation, standalone use). ``verify``: run SQLite's
        ``quick_check`` on the image first (:class:`CorruptSnapshotError` if it fails: a corrupt
        local file is never uploaded over a good replica)."""
        manifest = self._writable()
        self._requests = 0
        if captured.data is None:
            if verify:
                _quick_check(captured.image, self.name)
            captured.image_checksum = _digest(captured.image)
            captured.data = zlib.compress(captured.image, SNAPSHOT_ZLIB_LEVEL)
        data = captured.data
        key = self._object_key("snapshots")
        self._put(key, data, if_none_match=True)
        entry = SnapshotEntry(
            key=key,
            txid=manifest.txid + 1,
            checksum=_digest(data),
            image_checksum=captured.image_checksum,
            page_size=captured.page_size,
            image_bytes=captured.image_bytes,
            created_at=captured.created_at,
        )
        history = list(manifest.history)
        if manifest.snapshot is not None:
            history.append(
                Generation(
                    manifest.snapshot,
                    manifest.segments,
                    # Log objects are deleted by age: the first segment's goes first.
                    segments_expire_at=(
                        manifest.segments[0].flushed_at
                        if manifest.segments
                        else captured.created_at
                    )
                    + self.retention,
                )
            )
        horizon = captured.created_at - self.retention
        kept = [g for g in history if g.snapshot.created_at >= horizon]
        kept = kept[-self.keep_generations :] if self.keep_generations > 0 else []
        dropped = [g for g in history if g not in kept]
        new = attrs.evolve(
            manifest,
            snapshot=entry,
            segments=(),
            position=None,
            history=tuple(kept),
            tail=tail,
            tail_from=tail_from,
        )
        sent = self._write_manifest(new, orphans=[key])
        self._next_salt1 = captured.next_salt1
        self._checkpointed_frame = None
        self._capture_pending = False
        self.unfolded = 0
        retired = []
        for g in dropped:
            retired.append(g.snapshot.key)
            # Segments in objects of their own (``length`` -1: none is written any more, but
            # a manifest may still name them) go with it; log objects are shared by many
            # files and deleted by their writer by age.
            retired.extend(s.key for s in g.segments if s.length < 0)
        for old in retired:
            with contextlib.suppress(ReplicaUnavailableError):
                self._requests += 1
                self.store.delete(old)
        return UploadResult(len(data) + sent, self._requests, entry.txid)

    def abandon_capture(self) -> None:
        """Give up an upload of a capture (the next prepare asks for a new snapshot)."""
        if self._capture_pending and self._manifest is not None:
            self._capture_pending = False
            self._manifest = attrs.evolve(self._manifest, position=None)
            self._next_salt1 = None

    # -- internals -----------------------------------------------------------------------------

    def _batch(self, wal: str | bytes, end: int, since: WalPosition | None) -> WalBatch | None:
        """The committed frames after the chain's end, or an error if the WAL does not continue
        the chain. A new generation of the WAL continues it only from frame 0, and only when
        its salt-1 is the one expected: SQLite adds one at each restart, so a restart by
        someone else in between (which may have folded unshipped frames into the file) shows.
        """
        if since is None:
            header = read_header(wal)
            if header is None:
                if end:
                    raise WalFormatError(f"the WAL is empty but SQLite reported {end} frames")
                return None
            if self._next_salt1 != ANY_SALT and header.salt1 != self._next_salt1:
                raise WalRestartedError(
                    f"the WAL generation after the snapshot has salt-1 {header.salt1:08x}, "
                    f"expected {self._next_salt1!r}",
                    header=header,
                )
            return committed_frames(wal, end)
        try:
            return committed_frames(wal, end, since=since)
        except WalRestartedError as exc:
            restarted_once = exc.header is None or exc.header.salt1 == (since.salt1 + 1) & _MASK
            if self._checkpointed_frame != since.frame_count or not restarted_once:
                raise
            # Our own checkpoint copied exactly the shipped frames: a new generation.
            return committed_frames(wal, end)

    def _check_not_fenced(self) -> None:
        if self._fenced is not None:
            raise FencedError(
                f"{self.name!r}: this writer was fenced out at epoch {self._fenced.epoch} "
                f"(the replica is at epoch {self._fenced.current_epoch}); it writes no more",
                epoch=self._fenced.epoch,
                current_epoch=self._fenced.current_epoch,
            )

    def _local(self) -> Manifest:
        """The manifest as this writer holds it, without a request (for the calls a caller
        makes on its event loop: an uncertain manifest is resolved by the next call that
        talks to the store anyway)."""
        self._check_not_fenced()
        if self._manifest is None:
            raise RuntimeError(f"call claim() before writing the replica of {self.name!r}")
        return self._manifest

    def _writable(self) -> Manifest:
        self._check_not_fenced()
        if self._manifest is None:
            raise RuntimeError(f"call claim() before writing the replica of {self.name!r}")
        if self._uncertain:
            self._resync()
        assert self._manifest is not None
        return self._manifest

    def _resync(self) -> None:
        """Read back the manifest after a write of unknown outcome, and adopt it if ours."""
        assert self._manifest is not None
        got = self._get(self._manifest_key)
        current = Manifest.decode(got[0], key=self._manifest_key) if got else None
        if (
            got is None
            or current is None
            or (current.epoch, current.writer)
            != (
                self._manifest.epoch,
                self.writer,
            )
        ):
            self._fence(current.epoch if current else None)
        assert got is not None and current is not None
        # Still ours: whether the write landed or not, what this writer holds in memory is
        # the chain (the stored manifest is the same or a prefix of it); only the ETag moves.
        self._etag = got[1]
        self._uncertain = False

    def _fence(self, current_epoch: int | None) -> None:
        epoch = self._manifest.epoch if self._manifest else 0
        self._fenced = FencedError(
            f"{self.name!r}: another writer claimed the replica (epoch {current_epoch}, this "
            f"writer's {epoch}); this writer must stop: restore and claim to write again",
            epoch=epoch,
            current_epoch=current_epoch,
        )
        raise self._fenced

    def _write_manifest(self, new: Manifest, *, orphans: list[str], adopt: bool = True) -> int:
        """Replace the manifest if nobody else did since our last write; return its bytes."""
        data = new.encode()
        try:
            self._etag = self._put(self._manifest_key, data, if_match=self._etag)
        except PreconditionFailedError:
            got = self._get(self._manifest_key)
            if got is not None and got[0] == data:
                # Our own put, applied by an attempt whose answer was lost (S3 retries).
                self._etag = got[1]
                if adopt:
                    self._manifest = new
                return len(data)
            current = Manifest.decode(got[0], key=self._manifest_key) if got else None
            for key in orphans:  # named by no manifest: ours failed, and keys are ours alone
                with contextlib.suppress(ReplicaUnavailableError):
                    self._requests += 1
                    self.store.delete(key)
            if current is not None and (current.epoch, current.writer) == (
                new.epoch,
                self.writer,
            ):
                # An earlier write of ours with an unknown outcome: read it back next call.
                self._uncertain = True
                raise ReplicaUnavailableError(
                    f"the manifest of {self.name!r} changed under this writer's own epoch "
                    "(an earlier write of unknown outcome landed): call again"
                ) from None
            self._fence(current.epoch if current else None)
        except ReplicaUnavailableError:
            self._uncertain = True
            raise
        if adopt:
            self._manifest = new
        return len(data)

    def _object_key(self, kind: str) -> str:
        assert self._manifest is not None
        if self._shared_sequence is not None:
            self._sequence = self._shared_sequence()
        else:
            self._sequence += 1
        return check_key(f"{self.name}/{kind}/{self._manifest.epoch:010d}-{self._sequence:010d}")

    def _get(self, key: str) -> tuple[bytes, str] | None:
        self._requests += 1
        return self.store.get(key)

    def _put(
        self, key: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        self._requests += 1
        return self.store.put(key, data, if_match=if_match, if_none_match=if_none_match)


# -- Restore -----------------------------------------------------------------------------------


def restore(
    store: ReplicaStore,
    name: str,
    dest_path: str | os.PathLike[str],
    *,
    at_txid: int | None = None,
    at_time: float | None = None,
    manifest: Manifest | None = None,
    now: float | None = None,
) -> RestoreResult:
    """Rebuild the file replicated under ``name`` at ``dest_path``, atomically.

    The latest state by default (the manifest's chain, then its tail in the writer's log);
    ``at_txid`` picks a state by txid, ``at_time`` the last round at or before that time (as
    the writer's clock recorded it), in the current generation or a retained earlier one.
    Every object is checked against the manifest's checksums and the segments' chain before
    the file is renamed into place: :class:`CorruptReplicaError` if one fails,
    :class:`RestorePointError` if there is no replica or the point is not retained.
    ``dest_path`` must not have a ``-wal`` file beside it. ``manifest``: use this one (read
    already, e.g. by a takeover) instead of reading it.
    """
    if at_txid is not None and at_time is not None:
        raise ValueError("pass at most one of at_txid= and at_time=")
    key = manifest_key(name)
    if manifest is None:
        got = store.get(key)
        if got is None:
            raise RestorePointError(f"there is no replica of {name!r} in {store!r}")
        manifest = Manifest.decode(got[0], key=key)
    erased = manifest.erased_at
    if erased is not None and (
        manifest.snapshot is None or (at_time is not None and at_time < erased)
    ):
        raise RestorePointError(
            f"{name!r} belongs to an actor deleted at {erased}: its history before that is "
            "erased, and no restore brings it back"
        )
    if manifest.snapshot is None:
        raise RestorePointError(f"the replica of {name!r} has no snapshot yet: nothing to restore")
    objects: dict[str, bytes] = {}
    current = list(manifest.segments)
    current.extend(read_tail(store, manifest, objects))
    generations = [(g.snapshot, list(g.segments), g.segments_expire_at) for g in manifest.history]
    generations.append((manifest.snapshot, current, math.inf))
    latest = current[-1].txid if current else manifest.snapshot.txid
    when = time.time() if now is None else now
    if at_txid is not None:
        chosen = [g for g in generations if g[0].txid <= at_txid]
        if not chosen or at_txid > latest:
            raise RestorePointError(
                f"txid {at_txid} of {name!r} is not retained (retained: "
                f"{generations[0][0].txid} to {latest})"
            )
        snap, segments, expire = chosen[-1]
        segments = [s for s in segments if s.txid <= at_txid]
    elif at_time is not None:
        chosen = [g for g in generations if g[0].created_at <= at_time]
        if not chosen:
            raise RestorePointError(
                f"no retained state of {name!r} at or before time {at_time} (the oldest "
                f"snapshot is from {generations[0][0].created_at})"
            )
        snap, segments, expire = chosen[-1]
        kept = []
        for s in segments:
            if s.flushed_at > at_time:
                break
            kept.append(s)
        segments = kept
    else:
        snap, segments, expire = generations[-1]
    if segments and expire <= when:
        raise RestorePointError(
            f"that point of {name!r} is in a generation whose segments are past retention "
            f"(since {expire}); its snapshot (txid {snap.txid}) is still restorable"
        )
    dest = Path(dest_path)
    if Path(f"{dest}-wal").exists():
        raise FileExistsError(f"{dest}-wal exists: remove it before restoring over {dest}")
    tmp = dest.with_name(f".{dest.name}.restore-{uuid.uuid4().hex[:8]}")
    try:
        _write_snapshot(store, snap, tmp)
        previous: SegmentEntry | None = None
        for entry in segments:
            segment = _fetch_segment(store, entry, snap.page_size, previous, objects)
            apply_segment(tmp, segment)
            previous = entry
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
            size = f.seek(0, os.SEEK_END)
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    fd = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    txid = segments[-1].txid if segments else snap.txid
    return RestoreResult(txid=txid, segments=len(segments), bytes=size)


def erase(store: ReplicaStore, name: str, *, erased_at: float, writer: str) -> int:
    """Erase the replica of the file ``name`` of a deleted actor (blocking). Its manifest
    becomes a tombstone (``erased_at``, no snapshot, no segments, no earlier generations, one
    epoch up so that any writer still holding it is fenced) listing the objects that held the
    history (``erasing``); then each is erased: its own objects (snapshots) are deleted, and
    in each log object, shared with other files, its segments are overwritten with zeros
    (``log.scrub``). Idempotent: a call on a tombstone finishes its list. Returns the objects
    deleted or rewritten.

    What this cannot reach: segments in log objects no manifest names any more (generations
    dropped by ``keep_generations``, what a fenced writer shipped after the take-over), and a
    log object still in its writer's memory, to be sent again once the store answers: those
    leave with their log objects (retention).
    """
    key = manifest_key(name)
    for _ in range(10):
        got = store.get(key)
        old = Manifest.decode(got[0], key=key) if got is not None else None
        erasing: tuple[str, ...] = ()
        if old is not None:  # (a tombstone already: its list, to finish)
            erasing = tuple(sorted(set(old.erasing) | set(_history_objects(store, old))))
        tombstone = Manifest(
            name,
            (old.epoch if old else 0) + 1,
            writer,
            None,
            (),
            None,
            erased_at=erased_at,
            erasing=erasing,
        )
        try:
            if got is None:
                store.put(key, tombstone.encode(), if_none_match=True)
            else:
                store.put(key, tombstone.encode(), if_match=got[1])
        except PreconditionFailedError:
            continue  # a writer changed it meanwhile: read it again
        break
    else:
        raise FencedError(
            f"could not erase {name!r}: other writers keep changing its manifest",
            epoch=0,
            current_epoch=None,
        )
    done = 0
    for obj in erasing:
        if obj.startswith(f"{name}/"):  # (its own: snapshots, a segment stored alone)
            store.delete(obj)
            done += 1
        elif scrub(store, obj, name):
            done += 1
    return done


def _history_objects(store: ReplicaStore, manifest: Manifest) -> list[str]:
    """Every object ``manifest`` names as holding its file's history: snapshots, and the log
    objects of its segments (listed, in earlier generations, and in its tail: those are read
    until one is missing)."""
    found = [g.snapshot.key for g in manifest.history]
    if manifest.snapshot is not None:
        found.append(manifest.snapshot.key)
    found += [s.key for s in manifest.segments]
    found += [s.key for g in manifest.history for s in g.segments]
    if manifest.tail is not None:
        seq = manifest.tail_from
        while store.get(log_key(manifest.tail, seq)) is not None:
            found.append(log_key(manifest.tail, seq))
            seq += 1
    return found


def read_tail(
    store: ReplicaStore,
    manifest: Manifest,
    objects: dict[str, bytes] | None = None,
    *,
    limit: int | None = None,
) -> list[SegmentEntry]:
    """The segments of ``manifest``'s file in its writer's log after the listed ones: log
    objects ``tail_from``, ``tail_from + 1``, ... until one is missing (no LIST), entries of
    the manifest's epoch only (a writer fenced out wrote under an older one). Fetched objects
    are kept in ``objects`` for the restore that follows."""
    if manifest.tail is None:
        return []
    found: list[SegmentEntry] = []
    txid = (
        manifest.segments[-1].txid
        if manifest.segments
        else (manifest.snapshot.txid if manifest.snapshot else 0)
    )
    seq = manifest.tail_from
    while limit is None or seq < manifest.tail_from + limit:
        lkey = log_key(manifest.tail, seq)
        got = store.get(lkey)
        if got is None:
            break
        data = got[0]
        try:
            index = decode_log(data)
        except LogFormatError as exc:
            raise CorruptReplicaError(f"log object {lkey!r}: {exc}", key=lkey) from exc
        for e in index.entries:
            if e.name != manifest.name or e.epoch != manifest.epoch:
                continue
            txid += 1
            found.append(
                SegmentEntry(
                    key=lkey,
                    txid=txid,
                    checksum=e.checksum,
                    stored_bytes=e.length,
                    salt1=e.salt1,
                    salt2=e.salt2,
                    first_frame=e.first_frame,
                    end_frame=e.end_frame,
                    db_size=e.db_size,
                    flushed_at=index.at,
                    offset=e.offset,
                    length=e.length,
                )
            )
            if objects is not None:
                objects[lkey] = data
        seq += 1
    return found


#: Bytes of database image decompressed at a time when restoring a snapshot.
_RESTORE_CHUNK = 4 << 20


def _write_snapshot(store: ReplicaStore, snap: SnapshotEntry, path: Path) -> None:
    """Download a snapshot and write its image to ``path``, verified: the stored bytes'
    checksum first, then the image's, computed while writing. Decompression (this thread)
    overlaps hashing and writing (another thread): zlib and hashlib release the GIL."""
    got = store.get(snap.key)
    if got is None:
        raise CorruptReplicaError(
            f"snapshot {snap.key!r} named by the manifest is missing", key=snap.key
        )
    data = got[0]
    if _digest(data) != snap.checksum:
        raise CorruptReplicaError(
            f"snapshot {snap.key!r} fails its checksum: damaged in the store or on the way",
            key=snap.key,
        )
    chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=4)
    digest = hashlib.blake2b(digest_size=DIGEST_BYTES)
    written = [0]
    failure: list[BaseException] = []

    def write() -> None:
        try:
            with open(path, "wb") as f:
                while (chunk := chunks.get()) is not None:
                    digest.update(chunk)
                    f.write(chunk)
                    written[0] += len(chunk)
        except BaseException as exc:  # reported by the caller
            failure.append(exc)
            while chunks.get() is not None:  # let the producer finish
                pass

    writer = threading.Thread(target=write, name="torpor restore writer", daemon=True)
    writer.start()
    try:
        inflater = zlib.decompressobj()
        view = memoryview(data)
        for start in range(0, len(view), _RESTORE_CHUNK):
            out = inflater.decompress(view[start : start + _RESTORE_CHUNK])
            if out:
                chunks.put(out)
        tail = inflater.flush()
        if tail:
            chunks.put(tail)
        if not inflater.eof:
            raise zlib.error("the compressed stream is cut short")
    except zlib.error as exc:
        raise CorruptReplicaError(
            f"snapshot {snap.key!r} does not decompress ({exc})", key=snap.key
        ) from exc
    finally:
        chunks.put(None)
        writer.join()
    if failure:
        raise failure[0]
    if written[0] != snap.image_bytes or digest.hexdigest() != snap.image_checksum:
        raise CorruptReplicaError(
            f"snapshot {snap.key!r} decompresses to another database than the manifest's",
            key=snap.key,
        )


def _fetch_segment(
    store: ReplicaStore,
    entry: SegmentEntry,
    page_size: int,
    previous: SegmentEntry | None,
    objects: dict[str, bytes] | None = None,
) -> Segment:
    key = entry.key
    whole = objects.get(key) if objects is not None else None
    if whole is None:
        got = store.get(key)
        if got is None:
            raise CorruptReplicaError(f"segment {key!r} named by the manifest is missing", key=key)
        whole = got[0]
        if objects is not None and entry.length >= 0:
            objects[key] = whole  # a log object: other segments may be in it
    data = whole if entry.length < 0 else whole[entry.offset : entry.offset + entry.length]
    if len(data) != entry.stored_bytes or _digest(data) != entry.checksum:
        raise CorruptReplicaError(
            f"segment {key!r} (txid {entry.txid}) fails its checksum: damaged in the store or on "
            f"the way; restore at_txid={entry.txid - 1} or earlier",
            key=key,
        )
    try:
        segment = decode_segment(data)
    except SegmentError as exc:
        raise CorruptReplicaError(f"segment {key!r} (txid {entry.txid}): {exc}", key=key) from exc
    described = (
        entry.salt1,
        entry.salt2,
        entry.first_frame,
        entry.end_frame,
        entry.db_size,
        page_size,
    )
    actual = (
        segment.salt1,
        segment.salt2,
        segment.first_frame,
        segment.end_frame,
        segment.db_size,
        segment.page_size,
    )
    if described != actual:
        raise CorruptReplicaError(
            f"segment {key!r} is not the one the manifest names ({actual} != {described})",
            key=key,
        )
    if previous is None or (previous.salt1, previous.salt2) != (entry.salt1, entry.salt2):
        expected_first = 0  # after the snapshot, or in a new generation of the WAL
    else:
        expected_first = previous.end_frame
    if entry.first_frame != expected_first:
        raise CorruptReplicaError(
            f"segment {key!r} starts at WAL frame {entry.first_frame}, expected "
            f"{expected_first}: the chain is broken",
            key=key,
        )
    return segment
