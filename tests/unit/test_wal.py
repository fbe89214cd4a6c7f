"""WAL frames to segments (``runtime.replica.wal``), checked against SQLite itself.

The oracle is SQLite: the image a segment must reproduce is what SQLite makes of the same WAL
frames (a copy of the database and of the first frames of the WAL, opened and checkpointed).
"""

from __future__ import annotations

import os
import random
import shutil
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import attrs
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from runtime.replica.wal import (
    CODEC_LZMA,
    CODEC_NONE,
    CODEC_ZLIB,
    FRAME_HEADER_BYTES,
    WAL_HEADER_BYTES,
    WAL_MAGIC_BIG_ENDIAN,
    SegmentError,
    WalBatch,
    WalFormatError,
    WalPosition,
    WalRestartedError,
    apply_segment,
    committed_frames,
    decode_segment,
    encode_segment,
    iter_frames,
    parse_header,
    read_header,
    wal_checksum,
)

TRUNCATE = apsw.SQLITE_CHECKPOINT_TRUNCATE
RESTART = apsw.SQLITE_CHECKPOINT_RESTART
NOOP = apsw.SQLITE_CHECKPOINT_NOOP


class Source:
    """A WAL database written by a test, with the frame count SQLite reports at each commit."""

    def __init__(
        self, folder: Path, *, page_size: int = 1024, auto_vacuum: int = 0, cache_pages: int = 8
    ) -> None:
        self.folder = folder
        self.path = folder / "data.db"
        self.conn = apsw.Connection(str(self.path))
        self.conn.pragma("page_size", page_size)
        self.conn.pragma("auto_vacuum", auto_vacuum)
        assert self.conn.pragma("journal_mode", "wal") == "wal"
        self.conn.pragma("cache_size", cache_pages)  # small: big transactions spill frames
        self.page_size = page_size
        self.ends: list[int] = []
        self.conn.set_wal_hook(self._hook)  # also turns SQLite's auto-checkpoint off
        self.conn.execute("create table t(k integer primary key, v)").fetchall()
        self.conn.wal_checkpoint(mode=TRUNCATE)

    def _hook(self, conn: apsw.Connection, name: str, frames: int) -> int:
        self.ends.append(frames)
        return apsw.SQLITE_OK

    @property
    def wal(self) -> Path:
        return Path(f"{self.path}-wal")

    def committed_end(self) -> int:
        """The committed end of the WAL in frames, as SQLite reports it."""
        return int(self.conn.wal_checkpoint(mode=NOOP)[0])

    def wal_bytes(self) -> bytes:
        return self.wal.read_bytes() if self.wal.exists() else b""

    def image_at(self, end: int) -> bytes:
        """The database SQLite makes of the file and the WAL's first ``end`` frames."""
        with tempfile.TemporaryDirectory(dir=self.folder) as tmp:
            copy = Path(tmp) / "copy.db"
            shutil.copyfile(self.path, copy)
            wal = self.wal_bytes()[: WAL_HEADER_BYTES + end * (FRAME_HEADER_BYTES + self.page_size)]
            Path(f"{copy}-wal").write_bytes(wal if end else b"")
            conn = apsw.Connection(str(copy))
            conn.execute("select count(*) from sqlite_schema").fetchall()  # reads the WAL
            conn.wal_checkpoint(mode=TRUNCATE)
            conn.close()
            return copy.read_bytes()

    def snapshot(self) -> bytes:
        """Checkpoint everything and return the database file."""
        self.conn.wal_checkpoint(mode=TRUNCATE)
        return self.path.read_bytes()

    def commit(self, rows: list[tuple[int, Any]]) -> int:
        """Upsert ``rows`` in one transaction; return the frame count SQLite reported."""
        with self.conn:
            self.conn.executemany("insert or replace into t values(?, ?)", rows)
        return self.ends[-1]


@pytest.fixture
def source(tmp_path: Path) -> Iterator[Source]:
    src = Source(tmp_path)
    yield src
    src.conn.close()


def ship(
    source: Source, replica: bytearray, since: WalPosition | None, end: int | None = None
) -> WalPosition:
    """Ship the committed frames after ``since`` onto ``replica`` through an encoded segment."""
    end = source.committed_end() if end is None else end
    batch = committed_frames(source.wal, end, since=since)
    assert batch is not None
    apply_segment(replica, encode_segment(batch.segment()))
    return batch.end


def batch_of(wal: Any, end: int, *, since: WalPosition | None = None) -> WalBatch:
    batch = committed_frames(wal, end, since=since)
    assert batch is not None
    return batch


# -- Random transactions, shipped in batches, against SQLite's own checkpoint ----------------

keys = st.integers(0, 60)
values = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300),
    st.integers(-(2**63), 2**63 - 1),
    st.none(),
    # Large values: overflow pages, spills past the page cache, and a file that can shrink.
    st.builds(lambda n, byte: bytes([byte]) * n, st.integers(500, 6000), st.integers(0, 255)),
)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), keys, values),
        st.tuples(st.just("delete"), keys, st.integers(0, 60)),
        st.tuples(st.just("fill"), keys, st.integers(1, 30)),
    ),
    min_size=1,
    max_size=8,
)
actions = st.lists(
    st.one_of(
        st.tuples(st.just("commit"), ops),
        st.tuples(st.just("commit"), ops),
        st.tuples(st.just("commit"), ops),
        st.tuples(st.just("rollback"), ops),
        st.tuples(st.just("ship"), st.just(None)),
        st.tuples(st.just("checkpoint"), st.sampled_from([RESTART, TRUNCATE])),
        st.tuples(st.just("vacuum"), st.just(None)),
    ),
    max_size=25,
)


def run_ops(conn: apsw.Connection, program: list[tuple[str, Any, Any]]) -> None:
    for op, key, arg in program:
        if op == "put":
            conn.execute("insert or replace into t values(?, ?)", (key, arg))
        elif op == "fill":
            rows = [(k, f"row {k} ".encode() * 150) for k in range(key, key + arg)]
            conn.executemany("insert or replace into t values(?, ?)", rows)
        else:
            conn.execute("delete from t where k between ? and ?", (key, key + arg))


class Rollback(Exception):
    pass


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions=actions, auto_vacuum=st.sampled_from([0, 1]), page_size=st.sampled_from([512, 1024]))
def test_segments_reproduce_every_commit(
    actions: list[tuple[str, Any]], auto_vacuum: int, page_size: int
) -> None:
    """Snapshot plus segments equals SQLite's checkpointed file at every commit, in batches."""
    with tempfile.TemporaryDirectory(prefix="wal-test-") as tmp:
        folder = Path(tmp)
        source = Source(folder, page_size=page_size, auto_vacuum=auto_vacuum)
        snapshot = source.path.read_bytes()
        replica = bytearray(snapshot)
        replica_file = folder / "replica.db"
        replica_file.write_bytes(snapshot)
        position: WalPosition | None = None
        checkpointed = False  # whether the runtime checkpointed everything up to position
        pending: list[tuple[int, bytes]] = []  # commits not shipped yet: (end, image)

        def ship_pending() -> None:
            nonlocal position, checkpointed
            end = source.committed_end()
            try:
                batch = committed_frames(source.wal, end, since=position)
            except WalRestartedError:
                # Only the runtime's own checkpoints, after shipping, restart the WAL here.
                assert checkpointed
                position, checkpointed = None, False
                batch = committed_frames(source.wal, end)
                event("shipping went on into a new WAL generation")
            if batch is None:
                assert not pending
                return
            assert end == pending[-1][0]
            # Point in time: a batch ending at any commit reproduces that commit.
            for commit_end, image in pending:
                partial = batch_of(source.wal_bytes(), commit_end, since=position)
                trial = bytearray(replica)
                apply_segment(trial, decode_segment(encode_segment(partial.segment())))
                assert trial == image
            if batch.db_size * page_size < len(replica):
                event("the database shrank")
            data = encode_segment(batch.segment())
            apply_segment(replica, data)
            apply_segment(replica_file, data)
            assert decode_segment(data).end == batch.end
            position = batch.end
            pending.clear()

        for action, arg in actions:
            calls = len(source.ends)
            if action in ("commit", "rollback"):
                try:
                    with source.conn:
                        run_ops(source.conn, arg)
                        if action == "rollback":
                            raise Rollback
                except Rollback:
                    frames = (len(source.wal_bytes()) - WAL_HEADER_BYTES) // (page_size + 24)
                    if frames > source.committed_end():
                        event("a rolled-back transaction left frames in the WAL")
            elif action == "vacuum":
                source.conn.execute("vacuum").fetchall()
            elif action == "ship":
                ship_pending()
            else:
                ship_pending()  # the runtime checkpoints only what is in the replica
                log, done = source.conn.wal_checkpoint(mode=arg)
                shipped = position.frame_count if position and arg == RESTART else 0
                assert done == log == shipped  # TRUNCATE reports the emptied log
                assert replica == source.path.read_bytes()
                checkpointed = True  # the next writer starts a new generation
            if len(source.ends) > calls:
                assert action in ("commit", "vacuum")
                pending.append((source.ends[-1], source.image_at(source.ends[-1])))
        ship_pending()
        final = source.snapshot()
        source.conn.close()
        assert replica == final
        assert replica_file.read_bytes() == final


# -- What must never be shipped, and what must be refused --------------------------------------


def test_uncommitted_spill_is_never_shipped(source: Source) -> None:
    """Frames spilled by an open transaction are valid but past the committed end: not shipped."""
    replica = bytearray(source.path.read_bytes())
    for i in range(3):
        source.commit([(i, f"row {i}")])
    committed = source.committed_end()
    source.conn.execute("begin")
    source.conn.executemany(
        "insert into t values(?, ?)", [(100 + i, os.urandom(900)) for i in range(400)]
    )
    frames_in_file = (len(source.wal_bytes()) - WAL_HEADER_BYTES) // (FRAME_HEADER_BYTES + 1024)
    assert frames_in_file > committed + 100  # the spill is in the file
    observer = apsw.Connection(str(source.path))
    observer.execute("select count(*) from t").fetchall()  # opens the WAL
    assert observer.wal_checkpoint(mode=NOOP)[0] == committed == source.ends[-1]
    # Spilled frames are valid up to where SQLite rewrote one in place (it fixes the checksums
    # at commit), but none is a commit frame.
    valid = len(list(iter_frames(source.wal)))
    assert valid > committed + 100
    with pytest.raises(WalFormatError, match="not a commit frame"):
        committed_frames(source.wal, valid)
    with pytest.raises(WalFormatError):
        committed_frames(source.wal, frames_in_file)

    position = ship(source, replica, None, end=committed)  # a write transaction is open
    assert position.frame_count == committed
    assert replica == source.image_at(committed)

    source.conn.execute("rollback")
    end = source.commit([(7, "after the rollback")])
    assert end < frames_in_file  # the new commit overwrote the spill
    ship(source, replica, position)
    observer.close()
    assert replica == source.snapshot()


def _wal_with_commits(source: Source, n: int) -> tuple[bytes, int]:
    rng = random.Random(n)
    for _ in range(n):
        source.commit([(rng.randrange(30), rng.randbytes(rng.randrange(1500)))])
    end = source.committed_end()
    return source.wal_bytes(), end


def test_a_flipped_byte_in_committed_frames_is_detected(source: Source) -> None:
    """Any byte changed in the header or a committed frame raises WalFormatError."""
    wal, end = _wal_with_commits(source, 6)
    frame_bytes = FRAME_HEADER_BYTES + 1024
    committed_bytes = WAL_HEADER_BYTES + end * frame_bytes
    committed_frames(wal, end)  # intact
    rng = random.Random(1)
    positions = set(range(WAL_HEADER_BYTES))  # every byte of the header
    for frame in (0, end // 2, end - 1):  # every byte of some frame headers, the last page byte
        start = WAL_HEADER_BYTES + frame * frame_bytes
        positions |= set(range(start, start + FRAME_HEADER_BYTES)) | {start + frame_bytes - 1}
    positions |= {rng.randrange(committed_bytes) for _ in range(150)}
    for at in sorted(positions):
        damaged = bytearray(wal)
        damaged[at] ^= rng.randrange(1, 256)
        with pytest.raises(WalFormatError):
            committed_frames(damaged, end)


def test_salts_changed_in_a_frame_is_a_restart(source: Source) -> None:
    """A committed frame with other salts than the header's raises WalRestartedError."""
    wal, end = _wal_with_commits(source, 3)
    damaged = bytearray(wal)
    damaged[WAL_HEADER_BYTES + 8] ^= 1  # salt-1 of frame 0
    with pytest.raises(WalRestartedError) as info:
        committed_frames(damaged, end)
    assert info.value.header == parse_header(wal)


@pytest.mark.parametrize("mode", [RESTART, TRUNCATE])
def test_wal_restarted_by_a_checkpoint_raises(source: Source, mode: int) -> None:
    """After a checkpoint restarts the WAL, the old position raises WalRestartedError."""
    replica = bytearray(source.path.read_bytes())
    for i in range(4):
        source.commit([(i, "x" * 2000)])
    position = ship(source, replica, None)
    source.conn.wal_checkpoint(mode=mode)
    if mode == TRUNCATE:
        assert read_header(source.wal) is None
        with pytest.raises(WalRestartedError, match="no header") as info:
            committed_frames(source.wal, 1, since=position)
        assert info.value.header is None
    end = source.commit([(50, "new generation")])
    assert end < position.frame_count
    with pytest.raises(WalRestartedError, match="restarted by a checkpoint") as info:
        committed_frames(source.wal, end, since=position)
    assert info.value.header is not None and info.value.header.salts != position.salts
    if mode == RESTART:  # frames of the old generation remain past the new end, invalid now
        assert len(source.wal_bytes()) > WAL_HEADER_BYTES + (end + 1) * (FRAME_HEADER_BYTES + 1024)
        assert len(list(iter_frames(source.wal))) == end
    with pytest.raises(WalRestartedError):
        list(iter_frames(source.wal, since=position))
    # The runtime checkpointed only shipped frames: go on from the new generation's start.
    ship(source, replica, None)
    assert replica == source.snapshot()


def test_short_wal_or_wrong_end_is_refused(source: Source) -> None:
    """A WAL shorter than the committed end, or an empty range, is refused with a clear error."""
    wal, end = _wal_with_commits(source, 3)
    with pytest.raises(WalFormatError, match="ends before frame"):
        committed_frames(wal, end + 1)
    with pytest.raises(WalFormatError, match="cut short"):
        committed_frames(wal[:-1], end)
    with pytest.raises(WalFormatError, match="WAL is empty"):
        committed_frames(b"", 1)
    batch = batch_of(wal, end)
    assert committed_frames(wal, end, since=batch.end) is None  # nothing new
    with pytest.raises(ValueError, match="before the start frame"):
        committed_frames(wal, end - 1, since=batch.end)
    assert committed_frames(b"", 0) is None


def test_header_fields_and_bad_headers(source: Source) -> None:
    """The header is parsed from SQLite's own WAL, and bad headers are refused."""
    wal, _ = _wal_with_commits(source, 1)
    header = parse_header(wal)
    assert header.page_size == 1024 and header.format_version == 3007000
    assert header.checksum == wal_checksum(wal[:24], big_endian=header.big_endian)
    assert read_header(wal) == header and read_header(b"") is None
    for at, value, match in [
        (0, 0, "not a WAL file"),
        (4, 0, "format version"),
        (8, 1000, "page size"),
        (12, 99, "checksum mismatch"),
    ]:
        damaged = bytearray(wal)
        struct.pack_into(">I", damaged, at, value)
        with pytest.raises(WalFormatError, match=match):
            parse_header(bytes(damaged))
    with pytest.raises(WalFormatError, match="32 bytes"):
        parse_header(wal[:31])


def _rewrite_big_endian(wal: bytes, page_size: int) -> bytes:
    """The same WAL with checksums over big-endian words (magic 0x377f0683)."""
    out = bytearray(wal)
    struct.pack_into(">I", out, 0, WAL_MAGIC_BIG_ENDIAN)
    chain = wal_checksum(bytes(out[:24]), big_endian=True)
    struct.pack_into(">2I", out, 24, *chain)
    frame_bytes = FRAME_HEADER_BYTES + page_size
    for start in range(WAL_HEADER_BYTES, len(out) - frame_bytes + 1, frame_bytes):
        chain = wal_checksum(bytes(out[start : start + 8]), chain, big_endian=True)
        chain = wal_checksum(
            bytes(out[start + FRAME_HEADER_BYTES : start + frame_bytes]), chain, big_endian=True
        )
        struct.pack_into(">2I", out, start + 16, *chain)
    return bytes(out)


def test_big_endian_checksums_agree_with_sqlite(source: Source, tmp_path: Path) -> None:
    """A WAL with big-endian checksums, which SQLite accepts, ships to the same image."""
    snapshot = source.path.read_bytes()
    wal, end = _wal_with_commits(source, 5)
    big = _rewrite_big_endian(wal, 1024)
    assert parse_header(big).big_endian
    copy = tmp_path / "copy.db"
    copy.write_bytes(snapshot)
    Path(f"{copy}-wal").write_bytes(big)
    conn = apsw.Connection(str(copy))
    ((count,),) = conn.execute("select count(*) from t").fetchall()
    assert isinstance(count, int) and count > 0  # SQLite read the frames
    conn.wal_checkpoint(mode=TRUNCATE)
    conn.close()
    replica = bytearray(snapshot)
    apply_segment(replica, encode_segment(batch_of(big, end).segment()))
    assert replica == copy.read_bytes() == source.image_at(end)


# -- Segments --------------------------------------------------------------------------------


def test_segment_dedups_pages_and_round_trips(source: Source) -> None:
    """A segment keeps the last version of each page, and every codec decodes to it."""
    for i in range(5):
        source.commit([(1, f"version {i} " * 50)])
    batch = batch_of(source.wal, source.committed_end())
    segment = batch.segment()
    numbers = [n for n, _ in segment.pages]
    assert numbers == sorted(set(numbers)) and len(numbers) < len(batch.frames)
    latest = {f.page_number: f.page for f in batch.frames}
    assert all(page == latest[n] for n, page in segment.pages)
    assert segment.db_size == batch.frames[-1].db_size
    assert (segment.first_frame, segment.end) == (0, batch.end)
    sizes = {}
    for codec in (CODEC_NONE, CODEC_ZLIB, CODEC_LZMA):
        data = encode_segment(segment, codec=codec)
        assert data[6] == codec
        sizes[codec] = len(data)
        assert decode_segment(data) == segment
    assert sizes[CODEC_ZLIB] < sizes[CODEC_NONE] and sizes[CODEC_LZMA] < sizes[CODEC_NONE]


def test_incompressible_segment_is_stored_raw(source: Source) -> None:
    """A body that compression does not shrink is stored uncompressed."""
    source.commit([(1, os.urandom(3000))])
    segment = batch_of(source.wal, source.committed_end()).segment()
    big = [(n, os.urandom(len(p))) for n, p in segment.pages]
    noisy = attrs.evolve(segment, pages=tuple(big))
    data = encode_segment(noisy)
    assert data[6] == CODEC_NONE and decode_segment(data) == noisy


@pytest.mark.parametrize("codec", [CODEC_NONE, CODEC_ZLIB, CODEC_LZMA])
def test_a_damaged_segment_fails_decode(source: Source, codec: int) -> None:
    """Every flipped byte, a cut and an extra byte make decode_segment raise SegmentError."""
    source.commit([(1, "payload " * 100)])
    data = encode_segment(batch_of(source.wal, source.committed_end()).segment(), codec=codec)
    for at in range(len(data)):
        damaged = bytearray(data)
        damaged[at] ^= 0x40
        with pytest.raises(SegmentError):
            decode_segment(damaged)
    for bad in (data[:-1], data + b"\0", data[:10], b"XXXX" + data[4:]):
        with pytest.raises(SegmentError):
            decode_segment(bad)
    replica = bytearray(source.path.read_bytes())
    damaged = bytearray(data)
    damaged[-1] ^= 1
    with pytest.raises(SegmentError):
        apply_segment(replica, damaged)
    assert replica == source.path.read_bytes()  # nothing applied


def test_apply_segment_refuses_a_mismatched_image(source: Source) -> None:
    """Applying onto an image of another page size, or not whole pages, is a ValueError."""
    source.commit([(1, "x")])
    segment = batch_of(source.wal, source.committed_end()).segment()
    with pytest.raises(ValueError, match="whole pages"):
        apply_segment(bytearray(1000), segment)
    other = bytearray(source.path.read_bytes())
    struct.pack_into(">H", other, 16, 4096)
    with pytest.raises(ValueError, match="pages of 4096 bytes"):
        apply_segment(other, segment)
    with pytest.raises(TypeError, match="bytearray or a path"):
        apply_segment(b"bytes", segment)  # type: ignore[arg-type]
