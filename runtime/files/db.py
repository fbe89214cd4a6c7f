"""Opening SQLite files the way every torpor file is opened, and schema versions.

apsw runs statements lazily: settings go through ``Connection.pragma`` one at a time,
and each one is read back, so a setting that did not take effect is an error, not a surprise.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import errno
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import apsw

from ..errors import CorruptFileError, SchemaError, StorageError

#: ``synchronous`` levels offered by ``open_runtime``. NORMAL: a commit survives a process crash,
#: and the replica (not fsync) is the durability point for power loss. FULL: fsync every commit.
SYNCHRONOUS_LEVELS = {"NORMAL": 1, "FULL": 2}

#: Bytes of a persistent ``-wal`` kept when a file closes: writing into already allocated space
#: is what makes the first commit after a wake-up cheap (a few small commits' worth of frames).
WAL_SIZE_KEPT = 64 * 1024

#: Lock waits are short: each file has one writer (its actor) in one process.
BUSY_TIMEOUT_MS = 5_000

#: SQLite's errors for a file that is not a sound database.
CORRUPT_ERRORS = (apsw.NotADBError, apsw.CorruptError)

#: SQLite's errors for a write the disk refused: full (or a file-size limit), or failing. The
#: statement or transaction that met one rolled back.
REFUSED_WRITE_ERRORS = (apsw.FullError, apsw.IOError)

#: ``errno`` values of an ``OSError`` saying the disk (or a quota, or a file-size limit) is full.
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def connect(
    path: Path,
    *,
    synchronous: str = "NORMAL",
    query_only: bool = False,
    exclusive: bool = False,
    persist_wal: bool = False,
    private: bool = False,
) -> apsw.Connection:
    """Open ``path`` in WAL mode with the given ``synchronous`` level, creating it if absent.

    ``exclusive``: this connection is the file's only user (no ``-shm`` file, two descriptors
    instead of three). ``persist_wal``: closing leaves an empty ``-wal`` behind, which saves
    re-creating it (about 350 µs here) on the first write after the next open. ``private``:
    only this process opens the file while it is open, through any number of connections
    (SQLite's ``unix-excl`` VFS: the WAL index lives in memory, so there is no ``-shm`` file
    to create, map and keep on disk; other processes get ``SQLITE_BUSY`` meanwhile).
    """
    level = SYNCHRONOUS_LEVELS[synchronous]
    try:
        conn = (
            apsw.Connection(str(path), vfs="unix-excl") if private else apsw.Connection(str(path))
        )
        conn.set_busy_timeout(BUSY_TIMEOUT_MS)
        if persist_wal:
            flag = ctypes.c_int(1)
            conn.file_control("main", apsw.SQLITE_FCNTL_PERSIST_WAL, ctypes.addressof(flag))
            conn.pragma("journal_size_limit", WAL_SIZE_KEPT)
        if exclusive:
            conn.pragma("locking_mode", "exclusive")
        mode = conn.pragma("journal_mode", "wal")
        if mode != "wal":
            raise CorruptFileError(
                f"{path} refused WAL mode (journal_mode={mode!r})", path=str(path)
            )
        conn.pragma("synchronous", level)
        if conn.pragma("synchronous") != level:
            raise CorruptFileError(f"{path} refused synchronous={synchronous}", path=str(path))
        if query_only:
            conn.pragma("query_only", 1)
    except CORRUPT_ERRORS as exc:
        raise CorruptFileError(
            f"{path} is not a valid SQLite database ({exc}); restore it from a replica or backup",
            path=str(path),
        ) from exc
    except (apsw.CantOpenError, apsw.FullError, apsw.IOError, OSError) as exc:
        raise StorageError(
            f"cannot open {path} ({exc!r}): out of file descriptors, disk full, or no permission",
            path=str(path),
        ) from exc
    return conn


@contextlib.contextmanager
def corruption_as_error(path: Path) -> Iterator[None]:
    """Turn SQLite's corruption errors met inside the block into :class:`CorruptFileError`."""
    try:
        yield
    except CORRUPT_ERRORS as exc:
        raise corrupt_file_error(path, exc) from exc


def corrupt_file_error(path: Path, exc: BaseException) -> CorruptFileError:
    """What SQLite's corruption error ``exc`` met in ``path`` is raised as."""
    return CorruptFileError(
        f"{path} is corrupt ({exc}); restore it from a replica or backup", path=str(path)
    )


@contextlib.contextmanager
def full_disk_as_error(path: Path) -> Iterator[None]:
    """Turn a write the disk refused inside the block (SQLite's ``FullError`` or ``IOError``, or
    an ``OSError`` saying the disk is full) into :class:`StorageError`."""
    try:
        yield
    except StorageError:
        raise
    except REFUSED_WRITE_ERRORS as exc:
        raise refused_write_error(path, exc) from exc
    except OSError as exc:
        if exc.errno not in _FULL_ERRNOS:
            raise
        raise refused_write_error(path, exc) from exc


def refused_write_error(path: Path, exc: BaseException) -> StorageError:
    """What a write the disk refused (``exc``, met writing ``path``) is raised as: the write
    rolled back, so nothing of it was stored, and what was committed before is kept."""
    return StorageError(
        f"cannot write {path} ({exc}): disk full or failing; nothing was stored by this call "
        "and what was acknowledged before is kept; retry once space is free",
        path=str(path),
    )


class CheckedFiles:
    """The files a runtime checked for bad pages since it opened (it wrote them alone since,
    so they need no second check), the most recent :data:`CHECKED_FILES_KEPT` of them: a file
    forgotten is only checked again."""

    def __init__(self, limit: int = 0) -> None:
        self.limit = limit or CHECKED_FILES_KEPT
        self._paths: collections.OrderedDict[str, None] = collections.OrderedDict()

    def __contains__(self, path: Path) -> bool:
        key = str(path)
        if key in self._paths:
            self._paths.move_to_end(key)
            return True
        return False

    def add(self, path: Path) -> None:
        self._paths[str(path)] = None
        self._paths.move_to_end(str(path))
        if len(self._paths) > self.limit:
            self._paths.popitem(last=False)

    def discard(self, path: Path) -> None:
        self._paths.pop(str(path), None)


#: How many checked files a runtime remembers (about 200 bytes each): enough for the actors
#: that receive messages while hibernated in a busy minute, bounded for a million actors.
CHECKED_FILES_KEPT = 10_000


def check_sound(conn: apsw.Connection, path: Path) -> None:
    """Raise :class:`CorruptFileError` unless ``PRAGMA quick_check`` finds ``conn``'s file sound.

    It reads every page (about 20 µs for an empty mailbox here, 1 ms per 10,000 rows of small
    messages): for files that stay small, never for an actor's ``data.db``.
    """
    with corruption_as_error(path):
        problems = [str(row[0]) for row in conn.execute("PRAGMA quick_check(3)")]
    conn.release_memory()  # (the check read every page into the cache: an awake actor's RSS)
    if problems != ["ok"]:
        raise CorruptFileError(
            f"{path} is corrupt ({'; '.join(problems)}); restore it from a replica or backup",
            path=str(path),
        )


def image(build: Callable[[apsw.Connection], None], *, page_size: int = 4096) -> bytes:
    """The bytes of a new WAL-mode database built by ``build``, to copy when creating files.

    Copying an image costs a small write; building each new file instead (switching it to WAL,
    then creating its tables) costs a rollback-journal commit with its fsyncs, then the DDL.
    """
    with tempfile.TemporaryDirectory(prefix="torpor-image-") as tmp:
        path = Path(tmp) / "image.db"
        conn = apsw.Connection(str(path))
        conn.pragma("page_size", page_size)
        conn.pragma("journal_mode", "wal")
        build(conn)
        conn.close()  # checkpoints everything into the file and removes the WAL
        return path.read_bytes()


def create_from_image(path: Path, image: Callable[[], bytes], *, durable: bool) -> bool:
    """Create ``path`` as a copy of ``image()`` unless it exists; return whether it was
    created (``image`` is called only then: recovering an existing actor builds nothing).

    Written under a temporary name and renamed, so a crash never leaves half a file. A ``-wal``
    or ``-shm`` left by an earlier file of that name is removed first: its frames would
    otherwise be replayed onto the new file. ``durable``: fsync the file and its folder.
    """
    try:
        size = path.stat().st_size
    except OSError:
        pass  # absent (or unreachable: creating it says why)
    else:
        if size == 0:
            # Files are created whole from an image: an empty one lost its contents (a copy
            # cut short, a disk that lied), and SQLite would take it for a new database.
            raise CorruptFileError(
                f"{path} is empty (0 bytes): its contents are lost; restore it from a replica "
                "or backup",
                path=str(path),
            )
        return False
    data = image()
    partial = path.with_name(path.name + ".new")
    try:
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{path}{suffix}")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(partial, path)
        if durable:
            folder = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
    except OSError as exc:
        raise StorageError(
            f"cannot create {path} ({exc!r}): disk full, or no permission", path=str(path)
        ) from exc
    return True


def close(conn: apsw.Connection, path: Path, *, keep_wal: bool) -> None:
    """Close ``conn`` (closing the last connection checkpoints the file).

    ``keep_wal`` (for a connection opened with ``persist_wal``): leave the ``-wal`` at its size
    when it is at most :data:`WAL_SIZE_KEPT`, so that the first commit after the next open
    writes into allocated space instead of re-creating the log and syncing its header (about
    200 µs here); a larger log is truncated to nothing.
    """
    if keep_wal:
        try:
            size = os.stat(f"{path}-wal").st_size
        except FileNotFoundError:
            size = 0
        if size <= WAL_SIZE_KEPT:
            conn.pragma("journal_size_limit", -1)
    conn.close()


def migrate(
    conn: apsw.Connection,
    steps: Sequence[Any],
    run_step: Callable[[Any], None],
    *,
    what: str,
) -> int:
    """Bring ``conn`` to ``len(steps)`` by ``pragma user_version``, one transaction in all.

    Steps may only ever be appended. Returns the version reached. A file already at the last
    version costs one read, no transaction (the common case: every wake-up).
    """
    if conn.pragma("user_version") == len(steps):
        return len(steps)
    with conn:
        version = conn.pragma("user_version")
        if version > len(steps):
            raise SchemaError(
                f"{what} is at schema version {version} but only {len(steps)} migrations are "
                "defined; migrations may be appended, never removed or reordered"
            )
        for step in steps[version:]:
            run_step(step)
        if version != len(steps):
            conn.pragma("user_version", len(steps))
    return len(steps)


def scalar(conn: apsw.Connection, sql: str, params: Any = None) -> Any:
    """The first column of the first row of ``sql`` (``None`` if it returns no row)."""
    for row in conn.execute(sql, params):
        return row[0]
    return None


def execute_script(conn: apsw.Connection, sql: str) -> None:
    """Run every statement of ``sql`` (draining the cursor, since apsw is lazy)."""
    conn.execute(sql).fetchall()
