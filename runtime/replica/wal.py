"""Committed WAL frames as segments: read SQLite's WAL, keep what committed, pack it, apply it.

The building block of replication (docs/explanation/replication.md), free of I/O to the replica: the
replicator asks SQLite how many frames are committed, calls :func:`committed_frames` for the frames
it has not shipped yet (``None`` when there are none), writes ``encode_segment(batch.segment())`` to
the store, and remembers ``batch.end`` (a :class:`WalPosition`) to continue the checksum chain next
time. Restore is ``apply_segment`` of every segment, in order, onto a copy of the snapshot.

**The WAL file** (https://sqlite.org/fileformat2.html#walformat). A 32-byte header: magic
``0x377f0682`` or ``0x377f0683`` (its low bit says whether checksums read the file as big-endian
32-bit words), format version 3007000, page size, checkpoint sequence, two salts, and a checksum
of the first 24 bytes. Then frames: a 24-byte header (page number; the database size in pages
after the commit for the last frame of a transaction, else 0; the two salts of the header; a
checksum) and one page. The checksum of a frame covers its first 8 header bytes and its page and
continues from the previous frame's (the first frame's from the header's): a chain. A frame is
valid when its salts are the header's, its page number is not 0 and the chain holds; SQLite
itself reads frames up to the first invalid one and keeps them up to the last commit frame.

**Why the committed end comes from SQLite**: a transaction larger than the page cache
spills frames into the WAL before it commits, and those frames are valid (right salts, right
chain, until SQLite rewrites one in place: it repairs the chain at commit) but not committed; a
rolled-back spill stays in the file until overwritten. So the end is
a frame count SQLite reports (the ``wal_hook``'s frame count after a commit, or a ``NOOP``
checkpoint's log size), and :func:`committed_frames` insists that it falls on a commit frame.

**Generations.** A checkpoint that copied every frame into the database lets the next writer
restart the WAL from frame 0 with new salts (salt-1 plus one, a random salt-2). Frames of the old
generation left past the new end no longer match the header, which is how they stop being
valid. Salts that changed under a :class:`WalPosition` mean frames were checkpointed and
overwritten, maybe before they were shipped: :class:`WalRestartedError`, take a new snapshot
(unless the runtime itself checkpointed only what it had shipped: then go on from the start of
the new generation, ``since=None``). A checkpoint copies every committed frame, shipped or not:
the runtime must check that its checkpoint's log size equals the shipped end (no commit slipped
in between), or ship the rest before a writer restarts the WAL (a ``TRUNCATE`` checkpoint
empties it at once).

**Segments.** A batch keeps the last version of each page (pages past the final database size
are dropped: the truncation removes them) and the database size after its last commit, so that
``snapshot + segments`` equals, byte for byte, the database SQLite would have after a checkpoint
of the same frames (a checkpoint copies frames verbatim and sets the file to the size of the
last commit). Layout, big-endian, :data:`SEGMENT_HEADER_BYTES` of header then the stored body::

    0  4  magic b"TPWS"                  24 4  first frame (index in the WAL generation)
    4  2  format version (1)             28 4  end frame (exclusive)
    6  1  codec (0 none, 1 zlib, 2 lzma) 32 8  WAL checksum chain after the last frame
    7  1  0                              40 4  number of pages
    8  4  page size                      44 4  stored body bytes
    12 4  database size in pages         48 16 BLAKE2b-128 of bytes 0-47 and the stored body
    16 8  salt-1, salt-2 of the WAL

The body, once decompressed, is the page numbers (ascending 32-bit words) then the pages in that
order (numbers first compress better than numbers between pages). The digest covers the stored
bytes, so a damaged segment is refused before it is decompressed; the decompressed length is
known from the header and enforced.

**Compression: zlib level 1** (:data:`DEFAULT_CODEC`). Measured here (2 cores) on the pages of an
agent's ``data.db`` (4.9 MB: chat messages and tool results as JSON text, a key-value table of
JSON blobs, LLM step results, documents; English from a Markov chain over the stdlib's
docstrings; 4 KiB pages), bodies of consecutive pages, ratio and MB/s of uncompressed bytes
through compress then decompress:

=========  ==================  ==================  ==================
codec      16 KiB (one turn)   256 KiB             2 MiB
=========  ==================  ==================  ==================
zlib 1     2.35x  62 MB/s      2.73x  78 MB/s      2.74x  78 MB/s
zlib 6     2.51x  41 MB/s      3.20x  27 MB/s      3.24x  27 MB/s
zlib 9     2.51x  38 MB/s      3.21x  23 MB/s      3.25x  24 MB/s
lzma 0     2.51x  13 MB/s      3.58x  17 MB/s      4.04x  21 MB/s
lzma 6     2.66x   4 MB/s      4.68x   4 MB/s      8.27x   4 MB/s
=========  ==================  ==================  ==================

Segments are on the hot path: a durable reply waits for its segment, and every actor of a process
shares two cores. S3 bills per request; the bytes of a small segment barely matter, and
compaction (which rewrites old segments into snapshots, off the hot path) is where a slower,
tighter codec pays. At the sizes of a flush (one turn to a few hundred KiB), zlib 1 is 1.5-3x
faster than zlib 6 for 6-15 % more bytes, and lzma buys 6-45 % fewer bytes for 5-20x the CPU.
Every codec stays readable (the codec is in the header), and a body that does not shrink is
stored as is. For scale, verifying the WAL checksum chain in Python costs about 80 µs per 4 KiB
page (about 50 MB/s), the same order as compressing it with zlib 1.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import lzma
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from typing import BinaryIO

import attrs

from ..errors import ActorError

#: Bytes of the WAL header.
WAL_HEADER_BYTES = 32

#: Bytes of a frame header (a frame is this plus one page).
FRAME_HEADER_BYTES = 24

#: WAL magic numbers: checksums over little-endian words, and over big-endian words.
WAL_MAGIC_LITTLE_ENDIAN = 0x377F0682
WAL_MAGIC_BIG_ENDIAN = 0x377F0683

#: The only WAL format version SQLite has written (since 3.7.0).
WAL_FORMAT_VERSION = 3007000

#: Segment magic and format version; a decoder refuses other versions instead of guessing.
SEGMENT_MAGIC = b"TPWS"
SEGMENT_VERSION = 1

#: Bytes of a segment's header, digest included.
SEGMENT_HEADER_BYTES = 64

#: Codec ids stored in a segment header.
CODEC_NONE = 0
CODEC_ZLIB = 1
CODEC_LZMA = 2

#: The codec of new segments, and its level: see the module docstring for the measurements.
DEFAULT_CODEC = CODEC_ZLIB
ZLIB_LEVEL = 1
LZMA_PRESET = 6

#: What a WAL can be read from: its bytes, its path, or a file opened in binary mode.
WalSource = bytes | bytearray | memoryview | str | os.PathLike[str] | BinaryIO

_MASK = 0xFFFFFFFF
_SEGMENT_FIELDS = struct.Struct(">4sHBBIIIIIIIIII")  # the 48 bytes before the digest
_DIGEST_BYTES = SEGMENT_HEADER_BYTES - _SEGMENT_FIELDS.size
_DIGEST_PERSON = b"torpor-segment"
_CODECS = {CODEC_NONE: "none", CODEC_ZLIB: "zlib", CODEC_LZMA: "lzma"}


class WalFormatError(ActorError, ValueError):
    """WAL bytes are not what SQLite said they are: the frames cannot be shipped.

    Raised for a header that is not a WAL header (magic, version, page size or checksum), a
    frame inside the committed range that fails its checksum or has page number 0, a file
    shorter than the committed range, or a range that does not end on a commit frame (the end
    must be a count reported by SQLite, never one derived from the file size). The replica
    cannot be continued from this WAL: take a new snapshot. Nothing was returned; the WAL was
    only read. :class:`WalRestartedError` is the case of changed salts.
    """


class WalRestartedError(WalFormatError):
    """The WAL was restarted by a checkpoint: its salts are not those of the frames expected.

    Either the header's salts differ from the :class:`WalPosition` given (or the header is
    gone, after a ``TRUNCATE`` checkpoint), or a frame inside the committed range carries
    other salts (left from an earlier generation, or overwritten while being read). Frames
    were copied into the database and may have been overwritten before being shipped: take a
    new snapshot, unless the runtime checkpointed only frames it had shipped, in which case go
    on from the start of the new generation (``since=None``). ``header`` is the WAL's current
    header, ``None`` if it has none.
    """

    def __init__(self, message: str, *, header: WalHeader | None) -> None:
        super().__init__(message)
        self.header = header


class SegmentError(ActorError, ValueError):
    """Bytes are not a valid segment: wrong magic or version, digest mismatch, cut short, or
    contents that contradict the header.

    The segment was damaged in the store or on the way (or is not a segment at all); nothing was
    applied. Segments are immutable, so the replica's history is broken from this segment on:
    restore to an instant before it, and take a new snapshot of the source if it is alive.
    """


@attrs.frozen
class WalHeader:
    """The 32-byte header of a WAL file, validated by :func:`parse_header`."""

    #: Whether checksums read the file as big-endian words (magic ``0x377f0683``).
    big_endian: bool
    format_version: int
    page_size: int
    #: Checkpoints so far, as counted in the file (incremented at each restart).
    checkpoint_seq: int
    salt1: int
    salt2: int
    #: The header's own checksum, which is also the seed of the frames' checksum chain.
    checksum: tuple[int, int]

    @property
    def salts(self) -> tuple[int, int]:
        """``(salt1, salt2)``: together they identify one generation of the WAL."""
        return (self.salt1, self.salt2)

    @property
    def frame_bytes(self) -> int:
        """Bytes of one frame: its header and one page."""
        return FRAME_HEADER_BYTES + self.page_size

    def start(self) -> WalPosition:
        """The position before the first frame of this generation."""
        return WalPosition(self.salt1, self.salt2, 0, self.checksum)


@attrs.frozen
class WalPosition:
    """A point in one generation of a WAL: after ``frame_count`` frames, with the checksum
    chain there, so that the next batch is verified without re-reading the frames before it.
    """

    salt1: int
    salt2: int
    frame_count: int
    checksum: tuple[int, int]

    @property
    def salts(self) -> tuple[int, int]:
        """``(salt1, salt2)`` of the generation."""
        return (self.salt1, self.salt2)


@attrs.frozen
class WalFrame:
    """One valid frame of a WAL."""

    #: Position of the frame in its generation, from 0.
    index: int
    page_number: int
    #: The database size in pages after the commit, for a commit frame; 0 for the others.
    db_size: int
    #: The checksum chain after this frame.
    checksum: tuple[int, int]
    page: bytes

    @property
    def is_commit(self) -> bool:
        """Whether this frame is the last of a transaction."""
        return self.db_size != 0


@attrs.frozen
class Segment:
    """The last version of each page changed by a batch of committed frames, and the database
    size after it: what :func:`apply_segment` writes onto a database image.

    ``pages`` is sorted by page number, each number at most ``db_size``. ``first_frame`` and
    ``end_frame`` (exclusive) locate the batch in the WAL generation named by the salts;
    ``checksum`` is the WAL's checksum chain after frame ``end_frame - 1``, so that
    :attr:`end` lets a replicator that restarted go on verifying from the last segment.
    """

    page_size: int
    db_size: int
    salt1: int
    salt2: int
    first_frame: int
    end_frame: int
    checksum: tuple[int, int]
    pages: tuple[tuple[int, bytes], ...]

    @property
    def end(self) -> WalPosition:
        """The WAL position after the batch."""
        return WalPosition(self.salt1, self.salt2, self.end_frame, self.checksum)


@attrs.frozen
class WalBatch:
    """Committed frames ``[start.frame_count, end.frame_count)`` of one WAL generation, from
    :func:`committed_frames`; the last one is a commit frame.
    """

    header: WalHeader
    start: WalPosition
    end: WalPosition
    frames: tuple[WalFrame, ...]

    @property
    def db_size(self) -> int:
        """The database size in pages after the batch's last commit."""
        return self.frames[-1].db_size

    def segment(self) -> Segment:
        """The batch de-duplicated: the last version of each page within the final size."""
        latest: dict[int, bytes] = {}
        for frame in self.frames:
            latest[frame.page_number] = frame.page
        size = self.db_size
        pages = tuple(sorted((n, page) for n, page in latest.items() if n <= size))
        return Segment(
            page_size=self.header.page_size,
            db_size=size,
            salt1=self.end.salt1,
            salt2=self.end.salt2,
            first_frame=self.start.frame_count,
            end_frame=self.end.frame_count,
            checksum=self.end.checksum,
            pages=pages,
        )


def wal_checksum(
    data: bytes | memoryview, seed: tuple[int, int] = (0, 0), *, big_endian: bool
) -> tuple[int, int]:
    """SQLite's WAL checksum of ``data`` (a multiple of 8 bytes), continuing from ``seed``.

    Over 32-bit words ``x`` read in the given byte order, two by two:
    ``s0 += x[i] + s1; s1 += x[i+1] + s0``, modulo 2**32.
    """
    if len(data) % 8:
        raise ValueError(f"data must be a multiple of 8 bytes (got {len(data)} bytes)")
    words = struct.unpack(f"{'>' if big_endian else '<'}{len(data) // 4}I", data)
    s0, s1 = seed
    it = iter(words)
    if len(words) % 8 == 0:
        # Eight words a round, reduced once a round: about 20 % faster than word pairs.
        for a, b, c, d, e, f, g, h in zip(it, it, it, it, it, it, it, it, strict=True):
            s0 += a + s1
            s1 += b + s0
            s0 += c + s1
            s1 += d + s0
            s0 += e + s1
            s1 += f + s0
            s0 = (s0 + g + s1) & _MASK
            s1 = (s1 + h + s0) & _MASK
    else:
        for a, b in zip(it, it, strict=True):
            s0 = (s0 + a + s1) & _MASK
            s1 = (s1 + b + s0) & _MASK
    return (s0, s1)


def parse_header(data: bytes | memoryview) -> WalHeader:
    """Parse and validate the first 32 bytes of ``data`` as a WAL header.

    Raises :class:`WalFormatError` for a short input, an unknown magic or version, a page size
    that is not a power of two from 512 to 65536, or a checksum mismatch.
    """
    if len(data) < WAL_HEADER_BYTES:
        raise WalFormatError(f"a WAL header is {WAL_HEADER_BYTES} bytes (got {len(data)})")
    magic, version, page_size, seq, salt1, salt2, c1, c2 = struct.unpack_from(">8I", data)
    if magic not in (WAL_MAGIC_LITTLE_ENDIAN, WAL_MAGIC_BIG_ENDIAN):
        raise WalFormatError(f"not a WAL file: magic 0x{magic:08x}")
    if version != WAL_FORMAT_VERSION:
        raise WalFormatError(f"unknown WAL format version {version} (expected 3007000)")
    if not 512 <= page_size <= 65536 or page_size & (page_size - 1):
        raise WalFormatError(f"invalid WAL page size {page_size}")
    big_endian = magic == WAL_MAGIC_BIG_ENDIAN
    computed = wal_checksum(memoryview(data)[:24], big_endian=big_endian)
    if computed != (c1, c2):
        raise WalFormatError(
            f"WAL header checksum mismatch (stored {c1:08x} {c2:08x}, "
            f"computed {computed[0]:08x} {computed[1]:08x})"
        )
    return WalHeader(big_endian, version, page_size, seq, salt1, salt2, (c1, c2))


class _FrameScan:
    """Valid frames from a position, up to ``limit``; ``problem`` says why the scan stopped
    early (``None`` at ``limit`` or at the end of the file).
    """

    def __init__(
        self, read: Callable[[int, int], bytes], header: WalHeader, since: WalPosition, limit: int
    ) -> None:
        self._read = read
        self._header = header
        self._since = since
        self._limit = limit
        self.problem: str | None = None
        self.salts_changed = False

    def __iter__(self) -> Iterator[WalFrame]:
        header = self._header
        size = header.frame_bytes
        chain = self._since.checksum
        index = self._since.frame_count
        while index < self._limit:
            raw = self._read(WAL_HEADER_BYTES + index * size, size)
            if len(raw) < size:
                if raw:
                    self.problem = f"frame {index} is cut short ({len(raw)} of {size} bytes)"
                else:
                    self.problem = f"the file ends before frame {index}"
                return
            page_number, db_size, salt1, salt2, c1, c2 = struct.unpack_from(">6I", raw)
            if (salt1, salt2) != header.salts:
                self.problem = (
                    f"frame {index} has salts {salt1:08x} {salt2:08x}, the header "
                    f"{header.salt1:08x} {header.salt2:08x}"
                )
                self.salts_changed = True
                return
            if page_number == 0:
                self.problem = f"frame {index} has page number 0"
                return
            view = memoryview(raw)
            chain = wal_checksum(view[:8], chain, big_endian=header.big_endian)
            chain = wal_checksum(view[FRAME_HEADER_BYTES:], chain, big_endian=header.big_endian)
            if chain != (c1, c2):
                self.problem = f"frame {index} fails its checksum"
                return
            yield WalFrame(index, page_number, db_size, chain, raw[FRAME_HEADER_BYTES:])
            index += 1


@contextlib.contextmanager
def _reader(wal: WalSource) -> Iterator[Callable[[int, int], bytes]]:
    if isinstance(wal, bytes | bytearray | memoryview):
        view = memoryview(wal)
        yield lambda offset, size: bytes(view[offset : offset + size])
    elif isinstance(wal, str | os.PathLike):
        with open(wal, "rb") as file:
            yield _file_reader(file)
    else:
        yield _file_reader(wal)


def _file_reader(file: BinaryIO) -> Callable[[int, int], bytes]:
    def read(offset: int, size: int) -> bytes:
        file.seek(offset)
        return file.read(size)

    return read


def _current_header(
    read: Callable[[int, int], bytes], since: WalPosition | None
) -> WalHeader | None:
    raw = read(0, WAL_HEADER_BYTES)
    if not raw and (since is None or since.frame_count == 0):
        return None
    if len(raw) < WAL_HEADER_BYTES and since is not None:
        raise WalRestartedError(
            "the WAL has no header (truncated by a checkpoint) but frames were expected in the "
            f"generation of salts {since.salt1:08x} {since.salt2:08x}: take a new snapshot",
            header=None,
        )
    header = parse_header(raw)
    if since is not None and header.salts != since.salts:
        raise WalRestartedError(
            f"the WAL was restarted by a checkpoint: its salts are {header.salt1:08x} "
            f"{header.salt2:08x}, the position's {since.salt1:08x} {since.salt2:08x}; take a new "
            "snapshot unless the frames checkpointed had all been shipped",
            header=header,
        )
    return header


def read_header(wal: WalSource) -> WalHeader | None:
    """The validated header of ``wal``, or ``None`` for an empty WAL (no frame ever written,
    or truncated by a ``TRUNCATE`` checkpoint). Raises :class:`WalFormatError` otherwise.
    """
    with _reader(wal) as read:
        return _current_header(read, None)


def iter_frames(wal: WalSource, *, since: WalPosition | None = None) -> Iterator[WalFrame]:
    """Yield the valid frames of ``wal`` from ``since`` (or from frame 0), up to the first
    invalid one: a frame whose salts are not the header's, with page number 0, failing the
    checksum chain, or cut short.

    Valid is not committed: frames spilled by a transaction still open, or rolled back, are
    valid. Use :func:`committed_frames` to ship. Raises :class:`WalRestartedError` if ``since``
    belongs to another generation than the file's, :class:`WalFormatError` for a bad header.
    """
    with _reader(wal) as read:
        header = _current_header(read, since)
        if header is None:
            return
        yield from _FrameScan(read, header, since or header.start(), 2**32)


def committed_frames(
    wal: WalSource, end_frame: int, *, since: WalPosition | None = None
) -> WalBatch | None:
    """The frames from ``since`` (or from frame 0 of the file's generation) to ``end_frame``,
    verified, as a :class:`WalBatch`; ``None`` if there is none.

    ``end_frame`` is the committed end as SQLite reports it (the ``wal_hook``'s frame count, or
    the log size of a ``NOOP`` checkpoint), never a count derived from the file size. ``since``
    is the previous batch's ``end`` (or ``segment.end`` of the last segment shipped); ``None``
    starts at frame 0 of whatever generation the file holds, which is right only when the
    database file already holds every frame before it (a snapshot was just taken, or the
    runtime checkpointed frames it had shipped).

    The generation is checked before the counts: after a restart, the new generation may have
    as many frames as ``since`` and still hold new commits. So call this at every flush rather
    than comparing ``end_frame`` with ``since.frame_count`` first.

    Raises :class:`WalRestartedError` if the salts changed (take a new snapshot, or go on with
    ``since=None`` if the runtime checkpointed only frames it had shipped),
    :class:`WalFormatError` if a frame in the range is invalid, the file is too short, or the
    last frame is not a commit frame, and ``ValueError`` if ``end_frame`` is before ``since``
    in the same generation.
    """
    start = since.frame_count if since is not None else 0
    with _reader(wal) as read:
        header = _current_header(read, since)
        if end_frame == start:
            return None
        if end_frame < start:
            raise ValueError(
                f"end_frame must not be before the start frame {start} (got {end_frame})"
            )
        if header is None:
            raise WalFormatError(f"the WAL is empty but SQLite reported {end_frame} frames")
        origin = since or header.start()
        # One read for the whole range, then a scan of those bytes.
        size = header.frame_bytes
        offset = WAL_HEADER_BYTES + start * size
        chunk = read(offset, (end_frame - start) * size)

    def read_chunk(at: int, n: int) -> bytes:
        return chunk[at - offset : at - offset + n]

    scan = _FrameScan(read_chunk, header, origin, end_frame)
    frames = tuple(scan)
    if scan.problem is not None:
        message = (
            f"cannot ship WAL frames {start}-{end_frame - 1}: {scan.problem}; take a new snapshot"
        )
        if scan.salts_changed:
            raise WalRestartedError(message, header=header)
        raise WalFormatError(message)
    last = frames[-1]
    if not last.is_commit:
        raise WalFormatError(
            f"WAL frame {last.index} is not a commit frame: the committed end must be a frame "
            f"count reported by SQLite (wal_hook, NOOP checkpoint), not {end_frame}"
        )
    end = WalPosition(header.salt1, header.salt2, end_frame, last.checksum)
    return WalBatch(header=header, start=origin, end=end, frames=frames)


def encode_segment(segment: Segment, *, codec: int = DEFAULT_CODEC) -> bytes:
    """The bytes of ``segment`` in the format of the module docstring, compressed with
    ``codec`` (stored uncompressed if that does not make it smaller).
    """
    if codec not in _CODECS:
        raise ValueError(f"codec must be one of {sorted(_CODECS)} (got {codec!r})")
    numbers = [n for n, _ in segment.pages]
    for n, page in segment.pages:
        if len(page) != segment.page_size:
            raise ValueError(f"page {n} is {len(page)} bytes (page size {segment.page_size})")
    body = struct.pack(f">{len(numbers)}I", *numbers) + b"".join(p for _, p in segment.pages)
    stored = body
    if codec == CODEC_ZLIB:
        stored = zlib.compress(body, ZLIB_LEVEL)
    elif codec == CODEC_LZMA:
        stored = lzma.compress(
            body, format=lzma.FORMAT_XZ, check=lzma.CHECK_NONE, preset=LZMA_PRESET
        )
    if len(stored) >= len(body):
        codec, stored = CODEC_NONE, body
    fields = _SEGMENT_FIELDS.pack(
        SEGMENT_MAGIC,
        SEGMENT_VERSION,
        codec,
        0,
        segment.page_size,
        segment.db_size,
        segment.salt1,
        segment.salt2,
        segment.first_frame,
        segment.end_frame,
        segment.checksum[0],
        segment.checksum[1],
        len(numbers),
        len(stored),
    )
    return fields + _digest(fields, stored) + stored


def _digest(fields: bytes | memoryview, stored: bytes | memoryview) -> bytes:
    h = hashlib.blake2b(digest_size=_DIGEST_BYTES, person=_DIGEST_PERSON)
    h.update(fields)
    h.update(stored)
    return h.digest()


def decode_segment(data: bytes | bytearray | memoryview) -> Segment:
    """The :class:`Segment` encoded in ``data``; :class:`SegmentError` unless every check holds
    (magic, version, digest, lengths, codec, page numbers ascending within the database size).
    """
    view = memoryview(data)
    if len(view) < SEGMENT_HEADER_BYTES:
        raise SegmentError(f"a segment is at least {SEGMENT_HEADER_BYTES} bytes (got {len(view)})")
    (
        magic,
        version,
        codec,
        reserved,
        page_size,
        db_size,
        salt1,
        salt2,
        first_frame,
        end_frame,
        c1,
        c2,
        count,
        stored_bytes,
    ) = _SEGMENT_FIELDS.unpack_from(view)
    if magic != SEGMENT_MAGIC:
        raise SegmentError(f"not a segment: magic {magic!r}")
    if version != SEGMENT_VERSION:
        raise SegmentError(f"unknown segment format version {version} (expected 1)")
    if len(view) != SEGMENT_HEADER_BYTES + stored_bytes:
        raise SegmentError(
            f"segment is {len(view)} bytes, its header says {SEGMENT_HEADER_BYTES + stored_bytes}"
        )
    stored = view[SEGMENT_HEADER_BYTES:]
    expected = _digest(view[: _SEGMENT_FIELDS.size], stored)
    if view[_SEGMENT_FIELDS.size : SEGMENT_HEADER_BYTES] != expected:
        raise SegmentError("segment digest mismatch: damaged in the store or on the way")
    # The digest held, so what follows catches an encoder's bug, not damage.
    if reserved != 0 or codec not in _CODECS:
        raise SegmentError(f"unknown segment codec {codec} (flags {reserved})")
    if not 512 <= page_size <= 65536 or page_size & (page_size - 1):
        raise SegmentError(f"invalid segment page size {page_size}")
    if end_frame <= first_frame or count > end_frame - first_frame or db_size == 0:
        raise SegmentError(
            f"segment of frames {first_frame}-{end_frame} with {count} pages and database "
            f"size {db_size} is inconsistent"
        )
    body_bytes = count * (4 + page_size)
    body = _decompress(codec, stored, body_bytes)
    numbers = struct.unpack_from(f">{count}I", body)
    if any(not 0 < n <= db_size for n in numbers) or any(
        a >= b for a, b in itertools.pairwise(numbers)
    ):
        raise SegmentError("segment page numbers are not ascending within the database size")
    base = 4 * count
    pages = tuple(
        (n, body[base + i * page_size : base + (i + 1) * page_size]) for i, n in enumerate(numbers)
    )
    return Segment(page_size, db_size, salt1, salt2, first_frame, end_frame, (c1, c2), pages)


def _decompress(codec: int, stored: memoryview, size: int) -> bytes:
    try:
        if codec == CODEC_NONE:
            body = bytes(stored)
            rest = b""
        elif codec == CODEC_ZLIB:
            z = zlib.decompressobj()
            body = z.decompress(stored, size)
            rest = z.unconsumed_tail + z.unused_data + (b"" if z.eof else b"?")
        else:
            x = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
            body = x.decompress(stored, size)
            rest = x.unused_data + (b"" if x.eof else b"?")
    except (zlib.error, lzma.LZMAError) as exc:
        raise SegmentError(f"segment body does not decompress ({exc})") from exc
    if len(body) != size or rest:
        raise SegmentError(f"segment body is not {size} bytes once decompressed")
    return body


def apply_segment(
    target: bytearray | str | os.PathLike[str], segment: Segment | bytes | bytearray | memoryview
) -> None:
    """Write ``segment``'s pages into a database image and set its size to the segment's
    database size (truncating, or extending with zeros as SQLite's checkpoint does).

    ``target`` is a ``bytearray`` (changed in place) or the path of a database file (written in
    place, not synced: sync it once after the last segment). Encoded bytes are decoded first
    (:class:`SegmentError`). The image must be whole pages of the segment's page size, else
    ``ValueError``. Applying a snapshot's segments in order reproduces the database byte for
    byte at the end of each segment.
    """
    if not isinstance(segment, Segment):
        segment = decode_segment(segment)
    size = segment.page_size
    if isinstance(target, bytearray):
        _check_image(bytes(target[:100]), len(target), size)
        new_length = segment.db_size * size
        if len(target) < new_length:
            target.extend(bytes(new_length - len(target)))
        for n, page in segment.pages:
            target[(n - 1) * size : n * size] = page
        del target[new_length:]
        return
    if not isinstance(target, str | os.PathLike):
        raise TypeError(
            f"target must be a bytearray or a path "
            f"(got {target!r:.40} that is a {type(target).__name__})"
        )
    with open(target, "r+b") as file:
        length = file.seek(0, os.SEEK_END)
        file.seek(0)
        _check_image(file.read(100), length, size)
        for n, page in segment.pages:
            file.seek((n - 1) * size)
            file.write(page)
        file.truncate(segment.db_size * size)


def _check_image(head: bytes, length: int, page_size: int) -> None:
    if length % page_size:
        raise ValueError(
            f"the database image is {length} bytes, not whole pages of {page_size} bytes"
        )
    if len(head) >= 18 and head.startswith(b"SQLite format 3\0"):
        (stored,) = struct.unpack_from(">H", head, 16)
        image_page_size = 65536 if stored == 1 else stored
        if image_page_size != page_size:
            raise ValueError(
                f"the database image has pages of {image_page_size} bytes, the segment {page_size}"
            )
