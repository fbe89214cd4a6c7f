"""A replica store in a local directory: the embedded default, and what the demo uses.

Layout. Each key part is percent-encoded (every byte outside ``a-z 0-9 . _ -`` becomes ``%XX``),
so names mean the same on case-insensitive and Unicode-normalising file systems (macOS). A key's
last part is a file ending in ``~obj``; the parts before it are directories. ``~`` never appears
in an encoded part, so ``a`` and ``a/b`` can both be keys (files ``a~obj`` and ``a/b~obj``), and
the store's own entries (``~tmp/``, ``~locks/``) cannot collide with any key. A part whose
encoding is too long for one file name is split over directories ending in ``~+``.

Writes. Data goes to a temporary file in ``~tmp/``, is fsynced, then renamed over the key's file
and the directory is fsynced: a reader sees the old object or the new one, never a mix. Every
write and delete of a key holds an exclusive ``flock`` on one of :data:`LOCK_STRIPES` lock files
chosen by the key's hash while it checks its condition and renames, so of two threads or
processes racing on one key exactly one wins. The ETag is a hash of the content.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import secrets
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

from ..errors import PreconditionFailedError, ReplicaError, ReplicaUnavailableError
from .store import (
    LIST_PAGE_KEYS,
    Data,
    ReplicaStore,
    check_condition,
    check_data,
    check_key,
    check_list_prefix,
)

#: Lock files for conditional writes: enough that writers of different keys rarely wait for
#: each other, few enough that they are created once and never cleaned up.
LOCK_STRIPES = 64

#: Longest encoded piece of a key part in one file name: leaves room under the usual 255-byte
#: limit for the ``~obj`` and ``~+`` markers.
MAX_NAME_PIECE = 200

_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789._-")
_OBJECT = "~obj"
_PIECE = "~+"
_TMP = "~tmp"
_LOCKS = "~locks"
_PERMISSION = (errno.EACCES, errno.EPERM, errno.EROFS)


def _encode(part: str) -> list[str]:
    encoded = "".join(chr(b) if b in _SAFE else f"%{b:02X}" for b in part.encode())
    return [encoded[i : i + MAX_NAME_PIECE] for i in range(0, len(encoded), MAX_NAME_PIECE)]


def _pieces(part: str) -> list[str]:
    """The file names of one key part: all but the last end in the ``~+`` marker."""
    pieces = _encode(part)
    return [p + _PIECE for p in pieces[:-1]] + pieces[-1:]


def _decode(encoded: str) -> str:
    return urllib.parse.unquote_to_bytes(encoded).decode()


def _etag(data: Data) -> str:
    return '"' + hashlib.blake2b(data, digest_size=16).hexdigest() + '"'


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DirectoryStore(ReplicaStore):
    """A replica store in a local directory (created if absent): the embedded default.

    Writes are atomic (temporary file, fsync, rename, fsync of the directory) and conditional
    writes are atomic across threads and processes (an ``flock`` per key stripe), so it keeps
    the promises :class:`S3Store` keeps. File names are percent-encoded key parts; the ETag is a
    hash of the content. Put the directory on another disk, or sync it elsewhere, for it to
    survive the loss of the machine.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        self.path = Path(path)
        try:
            for sub in (_TMP, _LOCKS):
                (self.path / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._os_error(exc, "open", str(self.path)) from exc

    def __repr__(self) -> str:
        return f"DirectoryStore({str(self.path)!r})"

    def get(self, key: str) -> tuple[bytes, str] | None:
        """Return ``(data, etag)`` for ``key``, or ``None`` if there is no such key."""
        path = self._file(check_key(key))
        self._count("gets")
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._os_error(exc, "read", key) from exc
        return data, _etag(data)

    def put(
        self, key: str, data: Data, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        """Store ``data`` under ``key`` atomically and return its ETag (a content hash).

        ``if_none_match=True``: only if the key does not exist. ``if_match=etag``: only if the
        object has that ETag. Otherwise :class:`PreconditionFailedError`, and nothing changes.
        """
        path = self._file(check_key(key))
        check_data(data)
        check_condition(if_match, if_none_match)
        self._count("puts")
        etag = _etag(data)
        tmp = self.path / _TMP / f"{secrets.token_hex(8)}{_OBJECT}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                with os.fdopen(fd, "wb", closefd=False) as f:
                    f.write(data)
                os.fsync(fd)
            finally:
                os.close(fd)
            with self._locked(key):
                if if_none_match and path.exists():
                    raise PreconditionFailedError(
                        f"{key!r} already exists in {self!r}; it was not overwritten", key=key
                    )
                if if_match is not None:
                    current = self._current_etag(path)
                    if current != if_match:
                        found = "is missing" if current is None else f"has ETag {current}"
                        raise PreconditionFailedError(
                            f"{key!r} in {self!r} {found}, not {if_match}; it was not written",
                            key=key,
                        )
                self._make_dirs(path.parent)
                os.replace(tmp, path)
                _fsync_dir(path.parent)
        except OSError as exc:
            raise self._os_error(exc, "write", key) from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return etag

    def delete(self, key: str) -> None:
        """Remove ``key``; removing a missing key is not an error.

        Directories left empty are kept (removing them would race with writers of other keys).
        """
        path = self._file(check_key(key))
        self._count("deletes")
        try:
            with self._locked(key):
                try:
                    path.unlink()
                except FileNotFoundError:
                    return
                _fsync_dir(path.parent)
        except OSError as exc:
            raise self._os_error(exc, "delete", key) from exc

    def list(self, prefix: str = "") -> Iterator[str]:
        """Yield the keys starting with ``prefix``, in UTF-8 byte order (admin tools only).

        Reads the whole subtree under the prefix's last complete part before yielding.
        """
        check_list_prefix(prefix)
        parts = prefix.split("/")[:-1]
        if any(part in ("", ".", "..") for part in parts):
            self._count("lists")
            return iter(())  # no valid key starts with this prefix
        top = self.path
        for part in parts:
            top = top.joinpath(*_pieces(part))
        try:
            keys = sorted(k for k in self._walk(top, tuple(parts)) if k.startswith(prefix))
        except OSError as exc:
            raise self._os_error(exc, "list", prefix) from exc
        self._count("lists", max(1, -(-len(keys) // LIST_PAGE_KEYS)))
        return iter(keys)

    def _walk(self, top: Path, parts: tuple[str, ...], pending: str = "") -> Iterator[str]:
        try:
            entries = list(os.scandir(top))
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            name = entry.name
            if name.endswith(_PIECE) and entry.is_dir(follow_symlinks=False):
                yield from self._walk(Path(entry.path), parts, pending + name[: -len(_PIECE)])
            elif name.endswith(_OBJECT) and entry.is_file(follow_symlinks=False):
                yield "/".join([*parts, _decode(pending + name[: -len(_OBJECT)])])
            elif "~" not in name and entry.is_dir(follow_symlinks=False):
                yield from self._walk(Path(entry.path), (*parts, _decode(pending + name)))

    def _file(self, key: str) -> Path:
        *dirs, last = key.split("/")
        path = self.path
        for part in dirs:
            path = path.joinpath(*_pieces(part))
        pieces = _pieces(last)
        return path.joinpath(*pieces[:-1], pieces[-1] + _OBJECT)

    @contextlib.contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        stripe = hashlib.blake2b(key.encode(), digest_size=2).digest()[0] % LOCK_STRIPES
        fd = os.open(self.path / _LOCKS / f"{stripe:02x}", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    @staticmethod
    def _current_etag(path: Path) -> str | None:
        try:
            return _etag(path.read_bytes())
        except FileNotFoundError:
            return None

    def _make_dirs(self, path: Path) -> None:
        """Create ``path`` and its missing parents, each made durable in its parent."""
        missing = []
        while not path.is_dir():
            missing.append(path)
            path = path.parent
        for directory in reversed(missing):
            with contextlib.suppress(FileExistsError):
                directory.mkdir()
            _fsync_dir(directory.parent)

    def _os_error(self, exc: OSError, action: str, what: str) -> ReplicaError:
        if exc.errno in _PERMISSION:
            return ReplicaError(
                f"cannot {action} {what!r} in {self!r} ({exc}): check the directory's "
                "permissions and that its file system is writable"
            )
        return ReplicaUnavailableError(
            f"cannot {action} {what!r} in {self!r} ({exc}): disk full or failing; "
            "retry once space or the device is back"
        )
