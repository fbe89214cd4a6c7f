"""Crash harness for replication: DESIGN §7 invariants 1, 2 and 5 across real SIGKILLs.

The child program is ``tests/crash/replication_workload.py``: a runtime with a replica, ten
actors (eight durable, two not) each appending the numbers 1, 2, 3, ... to a table, one ask at a
time, and an fsynced side file of every acknowledged ask. Replication is tuned so that a run of
a second has many rounds, manifest folds, checkpoints (new WAL generations) and snapshots
(compaction, hibernation), and actors hibernate and wake again while others commit.

The parent SIGKILLs the child at a random instant: a random delay after its start (while it
opens and takes its files over) or after READY (first wake-ups, then rounds, folds,
checkpoints, hibernations), or once it acknowledged a random number of asks (whatever the
store's speed). Then, with the child dead, it restores from the replica onto empty directories,
three ways, and checks each:

1. ``restore`` of every replicated file on its own (read-only). For each actor's ``data.db``:
   the rows are ``1..k`` in order (no turn applied twice, none lost in between), ``k`` is at
   least the last acknowledged number of a durable actor (invariant 1 for data that reached the
   replica) and at most the largest number ever sent. Every restored file passes SQLite's
   ``integrity_check``. And the file is byte-exact at its restored transaction (invariant 5),
   checked without our replay code: when the killed source's WAL is still the generation of
   the last shipped segment, SQLite itself (unix VFS) opens a copy of the source file with its
   WAL cut after that segment's last frame and runs a ``TRUNCATE`` checkpoint; the bytes must
   equal the restored file's. The harness counts how often that applied and asserts it did.
2. ``restore_runtime`` (``torpor restore``) onto an empty directory: the same row checks for
   every actor it restores, and every actor with acknowledged durable turns is restored.
3. ``open_runtime`` on an empty directory with the replica: ``directory.db`` is restored at
   open, each actor on its first wake-up; its rows (a query), then its ``count`` turn (which
   runs any message the restored mailbox still held), then its rows again pass the same checks;
   no dead letters, no runtime reports. This runtime takes the actors over, so it runs on an
   :class:`OverlayStore` that keeps its writes to itself: the replica stays as the child left
   it, and the next child goes on with it.

Then the next child starts, usually on the killed child's directory (it takes the files over
from the killed session), sometimes on a new empty one (a lost machine: it restores everything
from the replica and goes on). The seed is fixed and printed on failure; set
``TORPOR_CRASH_SEED`` to try another one. Timing is not deterministic, so a seed reproduces the
kill schedule, not the exact kill instants.
"""

from __future__ import annotations

import collections
import itertools
import json
import random
import shutil
import struct
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import attrs
import pytest
import trio

import actors
from runtime.errors import PreconditionFailedError, RestorePointError
from runtime.files.layout import DATA_FILE, DIRECTORY_FILE, MAILBOX_FILE, actor_dir
from runtime.replica.replicator import Manifest, SegmentEntry, manifest_key, read_tail, restore
from runtime.replica.shipper import ReplicationEngine, restore_runtime
from runtime.replica.store import Data, ReplicaStore, check_condition, check_data, check_key
from tests.crash import replication_workload as workload
from tests.support import crash_harness as support
from tests.support.s3server import S3Server

PROGRAM = Path(__file__).resolve().parent / "replication_workload.py"
DEFAULT_SEED = 20_260_505
DEFAULT_KILLS = 10
SLOW_KILLS = 200
S3_KILLS = 3
#: A child must print READY within this many seconds of its start, and acknowledge the asks a
#: kill waits for within ACKS_TIMEOUT of READY (hundreds a second when nothing is wrong).
READY_TIMEOUT = 30.0
ACKS_TIMEOUT = 20.0
#: The child, on the one crash harness: acknowledgements are ``acked`` lines of the side file.
HARNESS = support.SideFileHarness(
    PROGRAM, ready_timeout=READY_TIMEOUT, work_timeout=ACKS_TIMEOUT, ack_marker=b"acked "
)
#: How often the next child starts on a new, empty directory (a lost machine).
FRESH_CHANCE = 0.12
#: A turn of each actor of a runtime opened on a restored directory finishes within this many
#: seconds (a few milliseconds when nothing is wrong), and the whole check within CHECK_TIMEOUT.
TURN_TIMEOUT = 10.0
CHECK_TIMEOUT = 60.0
no_orphans = support.no_orphans

_WAL_HEADER = struct.Struct(">8I")  # magic, version, page size, checkpoint seq, salts, checksum
_FRAME_HEADER = struct.Struct(">6I")  # page, db size after a commit, salts, checksum
_WAL_MAGICS = (0x377F0682, 0x377F0683)


# -- what the children acknowledged ---------------------------------------------------------


@attrs.define
class Acks:
    """The side file: per actor, the numbers acknowledged and those a run started from."""

    acked: dict[str, list[int]] = attrs.Factory(dict)
    starts: dict[str, list[int]] = attrs.Factory(dict)

    def last(self, key: str) -> int:
        """The highest number acknowledged for ``key`` (0 if none)."""
        return max(self.acked.get(key, ()), default=0)

    def bound(self, key: str) -> int:
        """The highest number ever sent to ``key``: one ask is in flight per actor, the one
        after its last acknowledgement or the one its last run started with."""
        return max(self.last(key) + 1, max(self.starts.get(key, ()), default=1))


def read_acks(text: str) -> tuple[Acks, list[str]]:
    """Parse the side file; an error for each bad line, and for a durable actor whose run
    started at or below a number acknowledged before (the child found acknowledged rows gone)."""
    acks = Acks()
    errors: list[str] = []
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    elif lines:
        errors.append(f"the side file ends with a cut line {lines[-1]!r} (one write per line?)")
        lines.pop()
    for number, line in enumerate(lines, 1):
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] not in ("acked", "start") or not parts[2].isdigit():
            errors.append(f"side file line {number} does not parse: {line!r}")
            continue
        what, key, n = parts[0], parts[1], int(parts[2])
        durable = key in workload.DURABLE_KEYS
        if what == "start":
            if durable and n <= acks.last(key):
                errors.append(
                    f"invariant 1 (no loss): side file line {number}: a run found {n - 1} rows "
                    f"in {key}, after {acks.last(key)} were acknowledged"
                )
            acks.starts.setdefault(key, []).append(n)
        else:
            seen = acks.acked.setdefault(key, [])
            if durable and seen and n <= seen[-1]:
                errors.append(f"side file line {number}: {key} acknowledged {n} after {seen[-1]}")
            seen.append(n)
    return acks, errors


def check_rows(key: str, rows: list[int], acks: Acks, where: str) -> list[str]:
    """An actor's restored rows: ``1..k`` in order, every acknowledged durable one there, none
    that was never sent."""
    errors: list[str] = []
    present = collections.Counter(rows)
    if key in workload.DURABLE_KEYS:
        missing = [n for n in range(1, acks.last(key) + 1) if n not in present]
        if missing:
            errors.append(
                f"invariant 1 (no loss): {where}: durable {key} acknowledged 1..{acks.last(key)},"
                f" but {len(missing)} of them are not restored: {missing[:5]}"
            )
    twice = sorted(n for n, times in present.items() if times > 1)
    if twice:
        errors.append(
            f"invariant 2 (exactly once): {where}: {key} holds {twice[:5]} more than once "
            f"({len(rows)} rows)"
        )
    expected = list(range(1, len(rows) + 1))
    if rows != expected:
        bad = next(i for i, (a, b) in enumerate(zip(rows, expected, strict=True)) if a != b)
        errors.append(
            f"{where}: {key}'s rows are not 1..{len(rows)} in order: row {bad + 1} is "
            f"{rows[bad]} (rows {rows[max(0, bad - 2) : bad + 3]})"
        )
    if len(rows) > acks.bound(key):
        errors.append(
            f"{where}: {key} has {len(rows)} rows, more than the {acks.bound(key)} ever sent"
        )
    return errors


# -- a store that leaves the replica alone ----------------------------------------------------


class OverlayStore(ReplicaStore):
    """Reads through to ``base``; keeps its own writes and deletes, never changing ``base``.

    A runtime opened on a restored directory takes every actor over (a new epoch in each
    manifest, a fence on the killed session): on an overlay, the replica stays as the killed
    child left it for the next child. ETags of its own writes are its own.
    """

    def __init__(self, base: ReplicaStore) -> None:
        super().__init__()
        self.base = base
        self._lock = threading.Lock()
        self._own: dict[str, tuple[bytes, str] | None] = {}  # None: deleted here
        self._etags = itertools.count(1)

    def _current(self, key: str) -> tuple[bytes, str] | None:
        if key in self._own:
            return self._own[key]
        return self.base.get(key)

    def get(self, key: str) -> tuple[bytes, str] | None:
        self._count("gets")
        with self._lock:
            return self._current(check_key(key))

    def put(
        self, key: str, data: Data, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        check_key(key)
        check_condition(if_match, if_none_match)
        check_data(data)
        self._count("puts")
        with self._lock:
            current = self._current(key)
            if if_none_match and current is not None:
                raise PreconditionFailedError(f"{key!r} exists", key=key)
            if if_match is not None and (current is None or current[1] != if_match):
                raise PreconditionFailedError(f"{key!r} does not have ETag {if_match}", key=key)
            etag = f"overlay-{next(self._etags)}"
            self._own[key] = (bytes(data), etag)
            return etag

    def delete(self, key: str) -> None:
        self._count("deletes")
        with self._lock:
            self._own[check_key(key)] = None

    def list(self, prefix: str = "") -> Iterator[str]:
        self._count("lists")
        with self._lock:
            keys = set(self.base.list(prefix))
            for key, value in self._own.items():
                if not key.startswith(prefix):
                    continue
                if value is None:
                    keys.discard(key)
                else:
                    keys.add(key)
        yield from sorted(keys, key=str.encode)


# -- what SQLite itself makes of the killed source --------------------------------------------


@attrs.frozen
class WalHeader:
    page_size: int
    salts: tuple[int, int]


def read_wal_header(wal: bytes) -> WalHeader | None:
    """The header of a WAL file's bytes, ``None`` if it has none (empty, truncated)."""
    if len(wal) < _WAL_HEADER.size:
        return None
    magic, version, page_size, _, salt1, salt2, _, _ = _WAL_HEADER.unpack_from(wal)
    if magic not in _WAL_MAGICS or version != 3007000:
        return None
    return WalHeader(page_size, (salt1, salt2))


def sqlite_image(db: bytes, wal: bytes, end_frame: int, work: Path) -> bytes:
    """The database SQLite makes of ``db`` and the first ``end_frame`` frames of its WAL: a copy
    opened with the unix VFS (WAL recovery), then a ``TRUNCATE`` checkpoint; its bytes."""
    header = read_wal_header(wal)
    assert header is not None
    work.mkdir(parents=True, exist_ok=True)
    path = work / "expected.db"
    path.write_bytes(db)
    Path(f"{path}-wal").write_bytes(wal[: _WAL_HEADER.size + end_frame * (24 + header.page_size)])
    conn = apsw.Connection(str(path), vfs="unix")
    try:
        conn.execute("SELECT count(*) FROM sqlite_schema").fetchall()  # reads the WAL
        frames, _ = conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_NOOP)
        if frames != end_frame:
            raise AssertionError(
                f"SQLite recovered {frames} frames from the source's WAL cut after frame "
                f"{end_frame}: the shipped end is not a commit of that WAL"
            )
        done = conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
        assert done == (0, 0), f"the TRUNCATE checkpoint did not finish: {done}"
    finally:
        conn.close()
    return path.read_bytes()


def later_pages(wal: bytes, header: WalHeader, end_frame: int) -> dict[int, list[bytes]]:
    """Page number -> its images in the WAL's frames from ``end_frame`` on (this generation)."""
    size = _FRAME_HEADER.size + header.page_size
    found: dict[int, list[bytes]] = {}
    offset = _WAL_HEADER.size + end_frame * size
    while offset + size <= len(wal):
        page, _, salt1, salt2, _, _ = _FRAME_HEADER.unpack_from(wal, offset)
        if (salt1, salt2) != header.salts:
            break
        start = offset + _FRAME_HEADER.size
        found.setdefault(page, []).append(wal[start : start + header.page_size])
        offset += size
    return found


def differing_pages(a: bytes, b: bytes, page_size: int) -> list[int]:
    """The 1-based numbers of the pages where ``a`` and ``b`` differ (lengths equal)."""
    return [
        i // page_size + 1
        for i in range(0, len(a), page_size)
        if a[i : i + page_size] != b[i : i + page_size]
    ]


def copied_unshipped_frames(db: bytes, wal: bytes, header: WalHeader, end_frame: int) -> bool:
    """Whether some page of the database file is the image of a WAL frame after ``end_frame``
    (and of none before it): a checkpoint copied frames past the shipped end into the file."""
    ps = header.page_size
    earlier = later_pages(wal, header, 0)
    for page, images in later_pages(wal, header, end_frame).items():
        current = db[(page - 1) * ps : page * ps]
        shipped = earlier[page][: len(earlier[page]) - len(images)]
        if current in images and current not in shipped:
            return True
    return False


def checkpoint_in_flight(
    expected: bytes, restored: bytes, wal: bytes, header: WalHeader, end_frame: int
) -> bool:
    """Whether the difference is a checkpoint that was copying the WAL, frames not shipped yet
    included, when the child died (a snapshot's): every page where SQLite's image differs
    from the restored one is, in the source file, the image of a frame after ``end_frame``."""
    if len(expected) != len(restored):
        return False
    later = later_pages(wal, header, end_frame)
    ps = header.page_size
    pages = differing_pages(expected, restored, ps)
    return bool(pages) and all(expected[(p - 1) * ps : p * ps] in later.get(p, []) for p in pages)


# -- the checks after a kill ------------------------------------------------------------------


@attrs.define
class Tally:
    """What the campaign exercised."""

    runs: int = 0
    kills: int = 0
    fresh: int = 0  # runs started on a new, empty directory
    phases: dict[str, int] = attrs.Factory(dict)
    files: int = 0  # files restored and checked on their own
    exact: int = 0  # byte-exact comparisons with SQLite's own image that ran (and held)
    skipped: dict[str, int] = attrs.Factory(dict)  # why the comparison could not run
    acked: int = 0  # durable acknowledgements checked, summed over the kills
    wake_restores: int = 0  # actors restored by a runtime opened on an empty directory

    def skip(self, why: str) -> None:
        self.skipped[why] = self.skipped.get(why, 0) + 1

    def summary(self) -> str:
        return (
            f"{self.kills} kills {self.phases} in {self.runs} runs ({self.fresh} on a new "
            f"directory), {self.files} files restored, {self.exact} byte-exact against SQLite's "
            f"own checkpoint (skipped: {self.skipped}), {self.acked} durable acks checked, "
            f"{self.wake_restores} restores on wake"
        )


def replicated_files(root: Path) -> list[tuple[str, Path, str | None]]:
    """(store name, source path, actor key or None) of every file the runtime replicates."""
    files: list[tuple[str, Path, str | None]] = [(DIRECTORY_FILE, root / DIRECTORY_FILE, None)]
    for key in workload.all_keys():
        aid = workload.aid_of(key)
        for file in (DATA_FILE, MAILBOX_FILE):
            name = ReplicationEngine.actor_name(aid, file)
            files.append((name, actor_dir(root, aid) / file, key))
    return files


def chain(store: ReplicaStore, name: str) -> tuple[Manifest, list[SegmentEntry]] | None:
    """The manifest of ``name`` and its segments after the snapshot (the log tail included)."""
    got = store.get(manifest_key(name))
    if got is None:
        return None
    manifest = Manifest.decode(got[0], key=manifest_key(name))
    return manifest, [*manifest.segments, *read_tail(store, manifest)]


def read_rows(path: Path) -> list[int]:
    conn = apsw.Connection(str(path))
    try:
        return [row[0] for row in conn.execute("SELECT n FROM rows ORDER BY rowid")]
    finally:
        conn.close()


def integrity(path: Path, name: str) -> list[str]:
    conn = apsw.Connection(str(path))
    try:
        result = [row[0] for row in conn.execute("PRAGMA integrity_check")]
    finally:
        conn.close()
    return [] if result == ["ok"] else [f"restored {name}: integrity_check says {result[:5]}"]


def check_exact(
    name: str,
    segments: list[SegmentEntry],
    txid: int,
    source: Path,
    restored: Path,
    work: Path,
    tally: Tally,
) -> list[str]:
    """Invariant 5 for one restored file, against SQLite's own image of the killed source at
    the last shipped segment, when the source's WAL still is that segment's generation."""
    if not segments:
        tally.skip("no segment after the snapshot")
        return []
    last = segments[-1]
    if last.txid != txid:
        return [f"restored {name} at txid {txid}, but its chain ends at txid {last.txid}"]
    wal_path = Path(f"{source}-wal")
    wal = wal_path.read_bytes() if wal_path.exists() else b""
    header = read_wal_header(wal)
    if header is None:
        tally.skip("the source WAL is empty")
        return []
    if header.salts != (last.salt1, last.salt2):
        tally.skip("the source WAL is a later generation")
        return []
    needed = _WAL_HEADER.size + last.end_frame * (_FRAME_HEADER.size + header.page_size)
    if len(wal) < needed:
        return [
            f"{name}: the source WAL of the last shipped segment's generation has "
            f"{len(wal)} bytes, fewer than its {last.end_frame} shipped frames ({needed})"
        ]
    source_bytes = source.read_bytes()
    try:
        expected = sqlite_image(source_bytes, wal, last.end_frame, work / "sqlite")
    except apsw.Error as exc:
        if copied_unshipped_frames(source_bytes, wal, header, last.end_frame):
            # The database file already holds pages of frames after the shipped end (a
            # checkpoint ran past it before the kill): that file plus the WAL cut at the
            # shipped end is no state SQLite ever had, so there is no reference to compare.
            tally.skip("a checkpoint had copied unshipped frames into the source file")
            return []
        # SQLite cannot read the source's file with its WAL cut at the shipped end. Keep the
        # bytes it was given, to look at, and say so.
        kept = work / "sqlite-input"
        kept.mkdir(parents=True, exist_ok=True)
        (kept / "source.db").write_bytes(source_bytes)
        (kept / "source.db-wal").write_bytes(wal)
        return [
            f"SQLite's image of {source} at end frame {last.end_frame} of its WAL (salts "
            f"{last.salt1:08x}/{last.salt2:08x}, {len(wal)} bytes) raised {exc!r}; its input is "
            f"kept in {kept}; restored {name} is {restored}"
        ]
    image = restored.read_bytes()
    if expected == image:
        tally.exact += 1
        return []
    if checkpoint_in_flight(expected, image, wal, header, last.end_frame):
        tally.skip("a checkpoint was copying unshipped frames at the kill")
        return []
    if len(expected) != len(image):
        what = f"{len(image)} bytes restored, {len(expected)} in SQLite's image"
    else:
        pages = differing_pages(expected, image, header.page_size)
        what = f"pages {pages[:10]} differ ({len(pages)} pages)"
    return [
        f"invariant 5 (byte-exact): restored {name} at txid {txid} (WAL salts "
        f"{last.salt1:08x}/{last.salt2:08x}, end frame {last.end_frame}) is not what SQLite "
        f"makes of the source file and WAL at that frame: {what}; source {source}, restored "
        f"{restored}, SQLite's image {work / 'sqlite' / 'expected.db'}"
    ]


def check_files(
    store: ReplicaStore, source_root: Path, acks: Acks, work: Path, tally: Tally
) -> tuple[list[str], dict[str, list[int]]]:
    """Restore every replicated file on its own and check it; return the errors and each
    actor's restored rows."""
    errors: list[str] = []
    rows: dict[str, list[int]] = {}
    for i, (name, source, key) in enumerate(replicated_files(source_root)):
        found = chain(store, name)
        if found is None or found[0].snapshot is None:
            if key in workload.DURABLE_KEYS and acks.last(key):
                errors.append(
                    f"invariant 1 (no loss): {name} ({key}, acknowledged up to "
                    f"{acks.last(key)}) has no snapshot in the replica"
                )
            continue
        _, segments = found
        dest = work / "files" / str(i) / Path(name).name
        dest.parent.mkdir(parents=True)
        result = restore(store, name, dest)
        tally.files += 1
        errors += check_exact(name, segments, result.txid, source, dest, dest.parent, tally)
        errors += integrity(dest, name)
        if key is not None and name.endswith(DATA_FILE):
            rows[key] = read_rows(dest)
            errors += check_rows(key, rows[key], acks, "restore()")
    return errors, rows


def check_restore_runtime(
    store: ReplicaStore, acks: Acks, work: Path, restored: dict[str, list[int]]
) -> list[str]:
    """``restore_runtime`` onto an empty directory restores every actor with acknowledged
    durable turns, each with the rows of a plain restore."""
    root = work / "restore-runtime"
    try:
        restore_runtime(store, root)
    except RestorePointError as exc:
        if any(acks.last(k) for k in workload.DURABLE_KEYS):
            return [f"invariant 1 (no loss): restore_runtime failed ({exc})"]
        return []
    errors: list[str] = []
    for key in workload.all_keys():
        path = actor_dir(root, workload.aid_of(key)) / DATA_FILE
        if not path.exists():
            if key in workload.DURABLE_KEYS and acks.last(key):
                alone = len(restored.get(key, []))
                errors.append(
                    f"invariant 1 (no loss): restore_runtime did not restore {key} (acknowledged "
                    f"up to {acks.last(key)}; its data.db alone restores {alone} rows)"
                )
            continue
        rows = read_rows(path)
        errors += check_rows(key, rows, acks, "restore_runtime")
        if rows != restored.get(key):
            errors.append(
                f"restore_runtime: {key} has {len(rows)} rows, restore() "
                f"{len(restored.get(key, []))}"
            )
    return errors


async def _opened_state(root: Path, store: ReplicaStore) -> dict[str, Any]:
    state: dict[str, Any] = {"actors": {}, "dead_letters": {}}
    with trio.fail_after(CHECK_TIMEOUT):
        async with actors.open_runtime(
            root,
            types=workload.TYPES,
            replica=store,
            replication=actors.Replication(max_delay=0.01, min_delay=0.001),
            shutdown_grace=1.0,
        ) as rt:
            refs: dict[str, Any] = {}
            for key in workload.all_keys():
                kind: Any = workload.actor_type(key)
                refs[key] = rt.ref(kind, key)
                state["actors"][key] = {"first": await refs[key].ask(kind.rows)}

            async def turn(key: str) -> None:
                kind: Any = workload.actor_type(key)
                count = await refs[key].ask(kind.count)
                state["actors"][key]["count"] = count
                state["actors"][key]["after"] = await refs[key].ask(kind.rows)

            with trio.move_on_after(TURN_TIMEOUT):
                async with trio.open_nursery() as nursery:
                    for key in workload.all_keys():
                        nursery.start_soon(turn, key)
            state["replication"] = rt.statistics().replication
            for key, ref in refs.items():
                state["dead_letters"][key] = [
                    f"{d.method}: {d.error_type}: {d.error_message}"
                    for d in await rt.dead_letters(ref)
                ]
            state["reports"] = list(rt.reports)
    return state


def check_opened(
    store: ReplicaStore, acks: Acks, work: Path, restored: dict[str, list[int]], tally: Tally
) -> list[str]:
    """A runtime opened on an empty directory with the replica restores every actor on wake,
    with (at least) the rows of a plain restore, and goes on from there: a turn of each
    actor finishes (a durable one once it is in the replica) and sees ``1..k`` still."""
    state = trio.run(_opened_state, work / "opened", OverlayStore(store))
    stats = state["replication"]
    tally.wake_restores += stats.restores if stats else 0
    errors: list[str] = []
    hung = [key for key, got in state["actors"].items() if "after" not in got]
    if hung:
        errors.append(
            f"open_runtime: after the restore onto an empty directory, the first turn of "
            f"{hung} did not finish in {TURN_TIMEOUT}s (replication: {stats})"
        )
    for key, got in state["actors"].items():
        first = got["first"]
        errors += check_rows(key, first, acks, "open_runtime (first query)")
        plain = restored.get(key, [])
        if first[: len(plain)] != plain:
            errors.append(
                f"open_runtime: {key}: the first query has {len(first)} rows, not starting "
                f"with the {len(plain)} of restore()"
            )
        if "after" in got:
            after = got["after"]
            errors += check_rows(key, after, acks, "open_runtime (after a turn)")
            if after[: len(first)] != first or got["count"] != len(after):
                errors.append(
                    f"open_runtime: {key}: the first query gave {len(first)} rows, then "
                    f"count {got['count']}, then the query {len(after)}"
                )
        if state["dead_letters"][key]:
            errors.append(f"open_runtime: {key} has dead letters {state['dead_letters'][key][:3]}")
    if state["reports"]:
        errors.append(f"open_runtime: runtime reports {state['reports'][:3]}")
    return errors


def check_replica(
    store: ReplicaStore, source_root: Path, acks_path: Path, work: Path, tally: Tally
) -> list[str]:
    """Everything checked after one kill (the child is dead: the replica holds still)."""
    acks, errors = read_acks(acks_path.read_text() if acks_path.exists() else "")
    tally.acked += sum(acks.last(k) for k in workload.DURABLE_KEYS)
    file_errors, restored = check_files(store, source_root, acks, work, tally)
    errors += file_errors
    errors += check_restore_runtime(store, acks, work, restored)
    errors += check_opened(store, acks, work, restored, tally)
    support.invariants_first(errors)
    return errors


# -- the campaign -----------------------------------------------------------------------------


def plan_kill(rng: random.Random) -> tuple[str, float]:
    """When to kill the next child: seconds after its start or after READY, or once it
    acknowledged so many more asks (whatever the store's speed)."""
    roll = rng.random()
    if roll < 0.1:
        return "startup", rng.uniform(0.1, 0.6)  # imports, opening: the directory's takeover
    if roll < 0.25:
        return "ready", rng.uniform(0.0, 0.1)  # first wake-ups: takeovers, restores, snapshots
    if roll < 0.6:
        return "ready", rng.uniform(0.1, 1.2)  # rounds, folds, checkpoints, hibernations
    return "acks", rng.randint(1, 400)


def run_child(
    tmp: Path, run: support.SideFileRun, spec: dict[str, Any], acks: Path, seed: int
) -> None:
    """Start one child on ``run.root`` and SIGKILL it per the run's plan."""
    args = ["run", str(run.root), json.dumps(spec), str(acks), str(seed)]
    support.run_side_file_child(HARNESS, tmp, run, args, acks)


def campaign(
    tmp: Path,
    spec: dict[str, Any],
    store: ReplicaStore,
    kills: int,
    seed: int,
    *,
    mid_work_every: int = 0,
) -> str:
    """Kill ``kills`` children, checking the restores after each; return a summary.

    With ``mid_work_every`` n, every n-th run is killed once it acknowledged some asks,
    whatever the plan's roll (a short campaign then surely kills in the middle of work).
    Raises AssertionError with the seed and the last runs on any violation."""
    rng = random.Random(seed)
    acks = tmp / "acks.log"
    tally = Tally()
    history: list[support.SideFileRun] = []
    root = tmp / "rt-0"
    while tally.kills < kills:
        if tally.runs and rng.random() < FRESH_CHANCE:
            root = tmp / f"rt-{tally.runs}"  # a lost machine: start over from the replica
            tally.fresh += 1
        tally.runs += 1
        plan = plan_kill(rng)
        if mid_work_every and tally.runs % mid_work_every == 1 % mid_work_every:
            plan = ("acks", rng.randint(20, 400))
        run = support.SideFileRun(tally.runs, root, *plan)
        history.append(run)
        errors: list[str] = []
        try:
            run_child(tmp, run, spec, acks, rng.randrange(1 << 30))
        except AssertionError as exc:
            errors.append(str(exc))
        if not errors:
            tally.kills += 1
            tally.phases[run.phase] = tally.phases.get(run.phase, 0) + 1
            work = tmp / f"check-{run.number}"
            try:
                errors = check_replica(store, root, acks, work, tally)
            except Exception as exc:
                errors = [f"checking after run {run.number} raised {exc!r}"]
        if errors:
            recent = "\n".join(str(r) for r in history[-6:])
            raise AssertionError(
                f"{len(errors)} failure(s) after run {run.number}:\n"
                + "\n".join(errors[:30])
                + f"\n{tally.summary()}\nseed={seed} (TORPOR_CRASH_SEED), store {spec}, "
                f"side file {acks}\nlast runs:\n{recent}"
            )
        shutil.rmtree(work)
    assert tally.exact > 0, f"no byte-exact comparison could run: {tally.summary()}"
    assert tally.acked > 0, f"no durable ask was acknowledged: {tally.summary()}"
    return f"seed {seed}: {tally.summary()}"


def test_crash_replication_restores_every_acknowledged_turn(
    tmp_path: Path, request: pytest.FixtureRequest, no_orphans: None
) -> None:
    """A restore after a SIGKILL mid-replication has every acked durable turn once, in order."""
    # The restore goes onto an empty directory; each file is byte-exact at its restored transaction.
    kills = support.kills_option(request, DEFAULT_KILLS)
    spec = {"kind": "directory", "path": str(tmp_path / "replica")}
    store = workload.open_store(spec)
    print(campaign(tmp_path, spec, store, kills, support.seed(DEFAULT_SEED)))


@pytest.mark.slow
def test_crash_replication_many_kills(tmp_path: Path, no_orphans: None) -> None:
    """Two hundred SIGKILLs in a row never lose an acknowledged durable turn from the replica."""
    spec = {"kind": "directory", "path": str(tmp_path / "replica")}
    store = workload.open_store(spec)
    print(campaign(tmp_path, spec, store, SLOW_KILLS, support.seed(DEFAULT_SEED) + 1))


def test_crash_replication_on_s3(
    tmp_path: Path, s3_credentials: S3Server, no_orphans: None
) -> None:
    """The same on a real S3 server (SeaweedFS): the child replicates to it, and is killed."""
    spec = {
        "kind": "s3",
        "bucket": s3_credentials.bucket,
        "prefix": f"crash-replication-{uuid.uuid4().hex[:12]}",
        "endpoint_url": s3_credentials.endpoint_url,
        "region": s3_credentials.region,
    }
    store = workload.open_store(spec)
    try:
        seed = support.seed(DEFAULT_SEED) + 2
        print(campaign(tmp_path, spec, store, S3_KILLS, seed, mid_work_every=2))
    finally:
        store.close()


# -- the checker can fail -----------------------------------------------------------------------


def test_checker_catches_lost_duplicated_and_phantom_rows() -> None:
    """The row check reports lost, doubled, gapped and never-sent rows, and no legitimate one."""
    # Legitimate: an unacknowledged tail, and a loose actor behind its acknowledgements.
    acks, errors = read_acks("start d0 1\nacked d0 1\nacked d0 2\nstart l0 1\nacked l0 1\n")
    assert errors == []
    assert check_rows("d0", [1, 2], acks, "x") == []
    assert check_rows("d0", [1, 2, 3], acks, "x") == []  # the ask in flight, applied
    assert check_rows("l0", [], acks, "x") == []  # not durable: may be behind its acks
    assert any(e.startswith("invariant 1") for e in check_rows("d0", [1], acks, "x"))
    assert any(e.startswith("invariant 2") for e in check_rows("d0", [1, 2, 2], acks, "x"))
    assert any("not 1..3 in order" in e for e in check_rows("d0", [1, 3, 2], acks, "x"))
    assert any("more than the 3 ever sent" in e for e in check_rows("d0", [1, 2, 3, 4], acks, "x"))
    _, errors = read_acks("acked d0 1\nacked d0 2\nstart d0 2\n")
    assert any(e.startswith("invariant 1") for e in errors)
    _, errors = read_acks("acked d0 1\nacked d")
    assert any("cut line" in e for e in errors)


def test_sqlite_image_is_the_database_at_that_frame(tmp_path: Path) -> None:
    """The independent image is the database as SQLite saw it at the given commit frame."""
    # A difference left by a checkpoint cut short is told apart from any other.
    path = tmp_path / "a.db"
    conn = apsw.Connection(str(path))
    conn.pragma("journal_mode", "wal")
    conn.pragma("wal_autocheckpoint", 0)
    conn.execute("CREATE TABLE t(n INTEGER, pad TEXT)")
    for n in range(3):
        conn.execute("INSERT INTO t VALUES (?, ?)", (n, "x" * 3000))
    assert conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE) == (0, 0)
    conn.execute("CREATE TABLE u(n INTEGER)")
    conn.execute("INSERT INTO u VALUES (7)")
    frames, _ = conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_NOOP)
    conn.execute("UPDATE t SET pad = 'y' WHERE n = 0")  # a page no earlier frame holds
    full_frames, _ = conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_NOOP)
    db, wal = path.read_bytes(), Path(f"{path}-wal").read_bytes()
    conn.close()
    image = sqlite_image(db, wal, frames, tmp_path / "at")
    full = sqlite_image(db, wal, full_frames, tmp_path / "full")
    assert image != full
    check = apsw.Connection(str(tmp_path / "at" / "expected.db"))
    assert check.execute("SELECT group_concat(pad) FROM t WHERE n = 0").fetchall() == [
        ("x" * 3000,)
    ]
    assert check.execute("SELECT n FROM u").fetchall() == [(7,)]
    check.close()
    header = read_wal_header(wal)
    assert header is not None
    # A checkpoint cut short by the kill: the source file holds the later frame's page already.
    cut_short = sqlite_image(full, wal, frames, tmp_path / "cut")
    assert cut_short != image
    assert checkpoint_in_flight(cut_short, image, wal, header, frames)
    flipped = bytearray(image)
    flipped[len(flipped) - 10] ^= 1
    assert not checkpoint_in_flight(image, bytes(flipped), wal, header, frames)
    # A file that holds a later frame's page is no reference for the shipped end; one that
    # holds only shipped frames' pages is.
    assert copied_unshipped_frames(full, wal, header, frames)
    assert not copied_unshipped_frames(image, wal, header, frames)
    assert not copied_unshipped_frames(db, wal, header, frames)


def test_overlay_store_leaves_the_base_alone(tmp_path: Path) -> None:
    """Writes to the overlay keep their conditions and never reach the base store."""
    base = actors.DirectoryStore(tmp_path / "base")
    etag = base.put("k", b"base")
    overlay = OverlayStore(base)
    with pytest.raises(PreconditionFailedError):
        overlay.put("k", b"x", if_none_match=True)
    with pytest.raises(PreconditionFailedError):
        overlay.put("k", b"x", if_match="other")
    mine = overlay.put("k", b"mine", if_match=etag)
    assert overlay.get("k") == (b"mine", mine)
    overlay.put("new", b"n", if_none_match=True)
    overlay.delete("k")
    assert overlay.get("k") is None
    assert list(overlay.list()) == ["new"]
    assert base.get("k") == (b"base", etag)
    assert base.get("new") is None
