"""Restore from a replica, offline: a whole runtime directory, one actor's files into a closed
runtime, or the files a reader needs into a scratch directory.

Each operation takes a :class:`ReplicaStore` (the caller closes it), holds the runtime's ``LOCK``
while it writes a runtime directory, and returns a record of what it did. Nothing here prints:
:mod:`runtime.cli` says the records in words.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import attrs

from ..errors import RestorePointError, RestoreRefusedError
from ..files.directory import Directory
from ..files.layout import DATA_FILE, DIRECTORY_FILE, MAILBOX_FILE, actor_dir, actor_id
from ..replica import ReplicaStore
from ..replica import shipper as _shipper
from ..replica.replicator import Manifest, manifest_key
from ..replica.replicator import restore as _restore_file
from .inspect import reading_directory
from .lock import runtime_lock

#: Called as ``progress(done, total)`` while a runtime's actors are restored.
Progress = Callable[[int, int], None]


@attrs.frozen
class RuntimeRestored:
    """A runtime directory rebuilt from its replica (:func:`restore_runtime`)."""

    root: Path
    at: float | None  #: the point in time restored, or ``None`` for the latest state
    actors: int  #: actors in the restored ``directory.db``
    restored: int  #: of them, those whose files were restored
    not_replicated: int  #: those without a replica at that point (they start empty)
    #: rows dropped from the restored ``directory.db``: actors deleted since (``Ref.delete``)
    erased: int
    seconds: float  #: how long it took


@attrs.frozen
class ActorRestored:
    """One actor's files restored into a closed runtime (:func:`restore_actor`)."""

    type_name: str
    key: str
    id: str
    at: float | None
    folder: Path
    #: where the files found in ``folder`` were moved (``None`` if there were none)
    superseded: Path | None
    #: why the actor is stopped (``None`` if it is not): the restored actor stays stopped
    stopped: str | None


def restore_runtime(
    store: ReplicaStore,
    root: Path,
    *,
    at: float | None = None,
    starting: Callable[[], None] | None = None,
    progress: Progress | None = None,
    failed: Callable[[BaseException], None] | None = None,
) -> RuntimeRestored:
    """Rebuild a whole runtime directory at ``root`` (new or empty) from ``store``, at ``at``
    (epoch seconds) or the latest state.

    Raises :class:`FileExistsError` if ``root`` holds a runtime or anything else, and
    :class:`NotADirectoryError` if it is a file. A restore that fails leaves ``root`` as it
    was (nothing in it, or no ``root``); ``failed`` is called with the error first, while the
    partial ``directory.db`` is still there to read (to name the actors the error names).
    ``starting`` is called once ``root`` is found fit, before ``directory.db`` is fetched;
    ``progress(done, total)`` after each actor.
    """
    if (root / DIRECTORY_FILE).exists():
        raise FileExistsError(
            f"{root} already holds a runtime ({DIRECTORY_FILE}): restore into a new or empty "
            "directory, or restore one actor into it with --actor TYPE KEY"
        )
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"{root} is not a directory")
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty: restore into a new or empty directory")
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        with runtime_lock(root, "restore", check=False):
            if starting is not None:
                starting()
            counts = _shipper.restore_runtime(store, root, at_time=at, progress=progress)
    except BaseException as exc:
        if failed is not None:
            failed(exc)
        # Nothing was there before: leave nothing half restored behind.
        if created:
            shutil.rmtree(root, ignore_errors=True)
        else:
            for child in root.iterdir():
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        raise
    return RuntimeRestored(
        root=root,
        at=at,
        actors=counts["actors"],
        restored=counts["restored"],
        not_replicated=counts["not_replicated"],
        erased=counts["erased"],
        seconds=time.monotonic() - started,
    )


def restore_actor(
    store: ReplicaStore, root: Path, type_name: str, key: str, *, at: float | None = None
) -> ActorRestored:
    """Restore one actor's files from ``store`` into the closed runtime at ``root``, at ``at``
    or the latest state; the files found there are kept aside (``superseded``), and the
    actor is marked pending (its restored mailbox may hold work).

    Raises :class:`RestoreRefusedError` for a point in time when the replica was last written
    by another runtime (this runtime would fetch that writer's latest state over the restored
    past at the actor's next wake-up), and :class:`LookupError` when the replica has no such
    point for the actor.
    """
    aid = actor_id(type_name, key)
    folder = actor_dir(root, aid)
    with runtime_lock(root, "restore an actor"):
        if at is not None:
            writer = other_writer(store, root, aid)
            if writer is not None:
                raise RestoreRefusedError(
                    f"the replica of {type_name} {key!r} was last written by runtime {writer}, "
                    f"not by this one: when this runtime next wakes {key!r}, it would fetch "
                    "that writer's latest state over the restored past. Fork it to a new key "
                    "instead (torpor fork ... --at TIME --as NEWKEY), or restore the whole "
                    "runtime into a new directory with --at"
                )
        superseded = restore_files(store, aid, folder, type_name, key, at)
        directory = Directory(root / DIRECTORY_FILE, synchronous="FULL")
        try:
            # Pending: the restored mailbox may hold work; the next open wakes it to look.
            directory.mark_pending(aid, type_name, key)
            entry = directory.get(aid)
        finally:
            directory.close()
    return ActorRestored(
        type_name=type_name,
        key=key,
        id=aid,
        at=at,
        folder=folder,
        superseded=superseded,
        stopped=entry.stopped if entry is not None else None,
    )


def restore_to_read(
    store: ReplicaStore,
    root: Path,
    *,
    at: float | None = None,
    actor: tuple[str, str] | None = None,
    type_name: str | None = None,
    prefix: str | None = None,
    restoring: Callable[[str, str, str], None] | None = None,
) -> list[tuple[str, str]]:
    """Fill the empty directory ``root`` with ``directory.db`` and, from ``store`` at ``at`` (or
    its latest), the files of ``actor`` (a type and key), or else of every actor of
    ``type_name`` whose key starts with ``prefix``, for the read-only tools of
    :mod:`runtime.ops.inspect` to read. An actor without a replica at that point is left
    without files (read as never woken). ``restoring(id, type, key)`` is called before each
    actor's files are fetched. Returns the actors, as (type, key) pairs.

    Raises :class:`RestorePointError` when the replica holds no ``directory.db``.
    """
    got = store.get(manifest_key(DIRECTORY_FILE))
    if got is None:
        raise RestorePointError(f"there is no replica of {DIRECTORY_FILE!r} in {store!r}")
    manifest = Manifest.decode(got[0], key=manifest_key(DIRECTORY_FILE))
    _restore_file(store, DIRECTORY_FILE, root / DIRECTORY_FILE, at_time=at, manifest=manifest)
    if actor is None:
        _shipper.forget_erased(store, root)  # (deleted since: not shown, as not restored)
    if actor is not None:
        actors = [actor]
    else:
        with reading_directory(root) as conn:
            actors = [
                (str(type_name), str(key))
                for (key,) in conn.execute("SELECT key FROM actors WHERE type = ?", (type_name,))
                if prefix is None or str(key).startswith(prefix)
            ]
    for actor_type, key in actors:
        aid = actor_id(actor_type, key)
        if restoring is not None:
            restoring(aid, actor_type, key)
        with contextlib.suppress(RestorePointError):
            _shipper.restore_actor_files(store, aid, actor_dir(root, aid), at_time=at)
    return actors


def restore_files(
    store: ReplicaStore,
    aid: str,
    folder: Path,
    type_name: str,
    key: str,
    at: float | None,
    adjust: Callable[[Path], None] | None = None,
) -> Path | None:
    """Restore an actor's two files into ``folder``: first into a staging folder beside them
    (so that a restore that fails leaves the files here as they were), then ``adjust`` them,
    then move the files found in ``folder`` aside into ``superseded-*`` and the restored ones
    in. Returns the folder the previous files went to (``None`` if there were none).

    Raises :class:`LookupError` when the replica has no such point for the actor."""
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / f".restore-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        try:
            _shipper.restore_actor_files(store, aid, staging, at_time=at)
        except RestorePointError as exc:
            text = str(exc)
            for file in (DATA_FILE, MAILBOX_FILE):
                raw = _shipper.ReplicationEngine.actor_name(aid, file)
                text = text.replace(repr(raw), f"its {file}").replace(raw, f"its {file}")
            raise LookupError(f"cannot restore {type_name} {key!r}: {text}") from None
        if adjust is not None:
            adjust(staging)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(folder / _shipper.STATE_FILE)  # the saved replication state of the old files
        previous = [
            name
            for name in sorted(os.listdir(folder))
            if not name.startswith((".restore-", "superseded-"))
        ]
        superseded = None
        if previous:
            stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
            superseded = folder / f"superseded-{stamp}-{uuid.uuid4().hex[:6]}"
            superseded.mkdir()
            for name in previous:
                os.replace(folder / name, superseded / name)
        for name in (DATA_FILE, MAILBOX_FILE):
            os.replace(staging / name, folder / name)
        _fsync_dir(folder)
        return superseded
    except BaseException:
        if created:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def other_writer(store: ReplicaStore, root: Path, aid: str) -> str | None:
    """The runtime id of the writer of ``aid``'s replica when it is not this runtime's own
    history, else ``None``. At its next wake-up the runtime keeps local files only when their
    replica is its own (or its origin's, for a runtime restored at a point in time), and
    fetches the replica's latest state otherwise (``ReplicationEngine._ours``)."""
    directory = Directory(root / DIRECTORY_FILE, synchronous="FULL")
    try:
        runtime_id = directory.runtime_id()
    finally:
        directory.close()
    try:
        origin = json.loads((root / _shipper.ORIGIN_FILE).read_text())
    except (OSError, ValueError):
        origin = {}
    if not isinstance(origin, dict):
        origin = {}
    for file in (DATA_FILE, MAILBOX_FILE):
        key = manifest_key(_shipper.ReplicationEngine.actor_name(aid, file))
        got = store.get(key)
        if got is None:
            continue
        writer = Manifest.decode(got[0], key=key).writer.split("/")[0]
        if writer == runtime_id:
            continue
        if writer == origin.get("runtime") and origin.get("at") is not None:
            continue
        return writer
    return None


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
