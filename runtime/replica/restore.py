"""Restore from the replica: an actor's two files, or a whole runtime directory.

An actor is restored by one operation, :func:`restore_actor`, whoever asks: a wake-up that finds
its files missing, corrupt or last written by another runtime (``handover.py``), ``torpor
restore --actor`` and ``torpor fork`` (:func:`restore_actor_files`), and ``torpor restore`` of a
whole runtime (:func:`restore_runtime`). Both files are rebuilt (``replicator.restore``, each
verified by its checksums) in a staging folder beside them, then swapped in together: a failure
half way leaves the folder as it was, never a restored ``data.db`` beside an old mailbox.

A runtime directory restored from a replica gets a runtime id of its own and records where it
came from (:data:`ORIGIN_FILE`): it is another writer than its origin, so their histories are
fenced apart, never merged.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import apsw

from ..errors import ReplicaUnavailableError, RestorePointError
from ..files.layout import DATA_FILE, DIRECTORY_FILE, MAILBOX_FILE, actor_dir
from .replicator import Manifest, manifest_key, read_tail, restore
from .store import ReplicaStore

T = TypeVar("T")

#: Store names of the replicated actor files: ``actors/<actor id>/<file>``.
ACTORS_PREFIX = "actors"

#: The two files of an actor, restored together.
ACTOR_FILES = (DATA_FILE, MAILBOX_FILE)

#: The file in an actor's folder that lets a later wake-up in the same process go on without
#: a request (written at hibernation; not replicated; a restore removes it, as it describes the
#: files replaced).
STATE_FILE = "replica.json"

#: Folders in an actor's folder where a restore puts its files before swapping them in.
STAGING_PREFIX = ".restore-"

#: Folders in an actor's folder where a wake-up's restore keeps the local files it replaced.
SUPERSEDED_PREFIX = "superseded-"

#: A runtime directory restored from a replica records where from (JSON: runtime, at).
ORIGIN_FILE = "REPLICA_ORIGIN"

#: Attempts of a store request made while a runtime opens (a flaky store is tried again,
#: with a growing pause, before the open gives up): about 3 s in all.
OPEN_ATTEMPTS = 6


def actor_file_name(aid: str, file: str) -> str:
    """The store name of one of an actor's files."""
    return f"{ACTORS_PREFIX}/{aid}/{file}"


def restore_actor(
    store: ReplicaStore,
    aid: str,
    folder: Path,
    *,
    manifests: Mapping[str, Manifest] | None = None,
    at_time: float | None = None,
    at_txid: int | None = None,
    supersede: bool = False,
) -> list[str]:
    """Restore an actor's ``data.db`` and ``mailbox.db`` into ``folder``, together; return the
    files restored.

    ``manifests`` (store name -> manifest, read by a wake-up's takeover): restore each file at
    that manifest's latest state, and skip a file whose manifest has no snapshot yet (never
    replicated: it starts empty). Without them, both files must be in the replica
    (:class:`RestorePointError` otherwise), at ``at_time`` or ``at_txid`` (``data.db``'s txid;
    ``mailbox.db`` is restored at that round's time) or the latest; an actor restored to an
    earlier point sends as a new incarnation. ``supersede``: move the local files aside into a
    ``superseded-*`` folder (kept for inspection) instead of replacing just the restored files
    and their ``-wal`` and ``-shm``.
    """
    if at_txid is not None and at_time is not None:
        raise ValueError("pass at most one of at_time= and at_txid=")
    if at_txid is not None:
        at_time = _flush_time(store, actor_file_name(aid, DATA_FILE), at_txid)
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / f"{STAGING_PREFIX}{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        restored = []
        for file in ACTOR_FILES:
            name = actor_file_name(aid, file)
            manifest = manifests.get(name) if manifests is not None else None
            if manifests is not None and (manifest is None or manifest.snapshot is None):
                continue
            txid = at_txid if file == DATA_FILE else None
            restore(
                store,
                name,
                staging / file,
                at_time=None if txid is not None else at_time,
                at_txid=txid,
                manifest=manifest,
            )
            restored.append(file)
        if at_time is not None or at_txid is not None:
            _new_incarnation(staging / DATA_FILE)
        if supersede:
            if any(
                not entry.startswith((SUPERSEDED_PREFIX, STAGING_PREFIX))
                for entry in os.listdir(folder)
            ):
                _move_aside(folder)  # (a -wal left alone would be replayed onto the copy)
        else:
            for file in restored:
                for suffix in ("-wal", "-shm"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(folder / f"{file}{suffix}")
        for file in restored:
            os.replace(staging / file, folder / file)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(folder / STATE_FILE)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return restored


def restore_actor_files(
    store: ReplicaStore,
    aid: str,
    folder: Path,
    *,
    at_time: float | None = None,
    at_txid: int | None = None,
) -> None:
    """Restore one actor's two files into ``folder`` (for ``torpor restore --actor`` and
    ``torpor fork``), replacing what is there only once both are restored and verified.
    ``at_txid`` is ``data.db``'s txid; ``mailbox.db`` is restored at that flush's time."""
    restore_actor(store, aid, folder, at_time=at_time, at_txid=at_txid)


def restore_runtime(
    store: ReplicaStore,
    root: Path,
    *,
    at_time: float | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """``torpor restore``: rebuild a whole runtime directory from the replica (``root`` must
    not hold one). Restores directory.db, then every actor it lists, at ``at_time`` or the
    latest. Returns counts."""
    from ..files.directory import Directory

    root.mkdir(parents=True, exist_ok=True)
    if (root / DIRECTORY_FILE).exists():
        raise FileExistsError(f"{root} already holds a runtime: restore into an empty directory")
    got = store.get(manifest_key(DIRECTORY_FILE))
    if got is None:
        raise RestorePointError(f"there is no replica of {DIRECTORY_FILE!r} in {store!r}")
    manifest = Manifest.decode(got[0], key=manifest_key(DIRECTORY_FILE))
    restore(store, DIRECTORY_FILE, root / DIRECTORY_FILE, at_time=at_time, manifest=manifest)
    become_restored_runtime(root, manifest.writer.split("/")[0], at_time=at_time)
    erased = forget_erased(store, root)
    directory = Directory(root / DIRECTORY_FILE, synchronous="NORMAL")
    try:
        aids = [row[0] for row in directory.conn.execute("SELECT id FROM actors")]
    finally:
        directory.close()
    restored = missing = 0
    for i, aid in enumerate(aids):
        folder = actor_dir(root, aid)
        folder.mkdir(parents=True, exist_ok=True)
        try:
            for file in ACTOR_FILES:
                restore(store, actor_file_name(aid, file), folder / file, at_time=at_time)
            restored += 1
        except RestorePointError:
            missing += 1  # never replicated (or not at that time): it wakes empty, or not at all
            for file in ACTOR_FILES:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(folder / file)
        if progress is not None:
            progress(i + 1, len(aids))
    return {
        "actors": len(aids),
        "restored": restored,
        "not_replicated": missing,
        "erased": erased,
    }


def forget_erased(store: ReplicaStore, root: Path) -> int:
    """In a ``directory.db`` just restored from the replica (at a point in time, or one that
    missed a deletion's last commit): delete the rows of actors deleted since (their
    ``data.db`` manifest is erased after the row was made), so that no restore brings a
    deleted actor back, not even its key and ``on_create`` arguments. One GET per actor.
    Returns how many rows went."""
    from ..files.directory import Directory

    directory = Directory(root / DIRECTORY_FILE, synchronous="NORMAL")
    try:
        rows: list[Any] = directory.conn.execute("SELECT id, created_at FROM actors").fetchall()
        gone = []
        for aid, created_at in rows:
            key = manifest_key(actor_file_name(aid, DATA_FILE))
            got = store.get(key)
            if got is None:
                continue
            manifest = Manifest.decode(got[0], key=key)
            if manifest.erased_at is not None and float(created_at) < manifest.erased_at:
                gone.append(str(aid))
        for aid in gone:
            directory.forget(aid)
    finally:
        directory.close()
    return len(gone)


def restore_directory_if_missing(store: ReplicaStore, root: Path) -> bool:
    """Before a runtime opens its directory: restore ``directory.db`` from the replica when it
    is missing here (a fresh machine) and the replica holds one. Returns whether it did."""
    path = root / DIRECTORY_FILE
    if path.exists():
        return False
    try:
        got = retrying(lambda: store.get(manifest_key(DIRECTORY_FILE)))
    except ReplicaUnavailableError as exc:
        # A new runtime, or a lost machine's to restore: starting empty in the second case
        # would answer from nothing and then be fenced as diverged. Refuse, clearly.
        raise ReplicaUnavailableError(
            f"{root} holds no runtime and the replica cannot be reached to find out whether "
            f"one should be restored from it ({exc}); open again once it is reachable"
        ) from exc
    if got is None:
        return False
    manifest = Manifest.decode(got[0], key=manifest_key(DIRECTORY_FILE))
    if manifest.snapshot is None:
        return False
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")
    try:
        retrying(lambda: restore(store, DIRECTORY_FILE, path, manifest=manifest))
    except ReplicaUnavailableError as exc:
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{path}{suffix}")
        raise ReplicaUnavailableError(
            f"{root} holds no runtime, the replica holds one, and it could not be read "
            f"to restore it ({exc}); open again once the store is reachable"
        ) from exc
    become_restored_runtime(root, manifest.writer.split("/")[0], at_time=None)
    return True


def become_restored_runtime(root: Path, origin: str, *, at_time: float | None) -> None:
    """Give a restored ``directory.db`` a runtime id of its own: a restored runtime is another
    writer than the one it came from (which may still run, or come back), so their histories
    are told apart and fenced, never merged. Record the origin for the ownership rules."""
    conn = apsw.Connection(str(root / DIRECTORY_FILE))
    try:
        conn.execute("UPDATE runtime SET runtime_id = lower(hex(randomblob(8))) WHERE id = 1")
    finally:
        conn.close()
    tmp = root / f".{ORIGIN_FILE}.new"
    tmp.write_text(json.dumps({"runtime": origin, "at": at_time}))
    os.replace(tmp, root / ORIGIN_FILE)


def read_origin(root: Path) -> dict[str, Any]:
    """Where a restored runtime directory came from (empty if it was not restored)."""
    try:
        origin = json.loads((root / ORIGIN_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return origin if isinstance(origin, dict) else {}


def retrying(fn: Callable[[], T]) -> T:
    """``fn()``, tried again while the store is unavailable, up to :data:`OPEN_ATTEMPTS`
    times (blocking: for the opening of a runtime, before its event loop work starts)."""
    delay = 0.1
    for attempt in range(OPEN_ATTEMPTS):
        try:
            return fn()
        except ReplicaUnavailableError:
            if attempt == OPEN_ATTEMPTS - 1:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
    raise AssertionError("unreachable")


def _move_aside(folder: Path) -> None:
    """Keep local files that the replica superseded, for inspection, out of the way."""
    aside = folder / f"{SUPERSEDED_PREFIX}{int(time.time())}-{uuid.uuid4().hex[:6]}"
    aside.mkdir()
    for name in os.listdir(folder):
        if name.startswith((SUPERSEDED_PREFIX, STAGING_PREFIX)):
            continue
        shutil.move(str(folder / name), str(aside / name))


def _new_incarnation(path: Path) -> None:
    """An actor restored to an earlier point numbers its outbox rows again from there: it
    sends as a new incarnation, so that receivers, whose cursors saw the later numbers, do
    not drop its new messages as repeats (a file from before incarnations gets the column
    when it is next opened: it is then at 0, and this bump is skipped)."""
    conn = apsw.Connection(str(path))
    try:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(_torpor_state)")]
        if "incarnation" in columns:
            with conn:
                conn.execute(
                    "UPDATE _torpor_state SET incarnation = incarnation + 1, incarnation_from = "
                    "(SELECT coalesce(max(seq), 0) + 1 FROM sqlite_sequence "
                    "WHERE name = '_torpor_outbox')"
                )
    finally:
        conn.close()


def _flush_time(store: ReplicaStore, name: str, txid: int) -> float:
    """When the round that made ``txid`` of ``name`` ran (for restoring a second file at the
    same moment)."""
    got = store.get(manifest_key(name))
    if got is None:
        raise RestorePointError(f"there is no replica of {name!r} in {store!r}")
    manifest = Manifest.decode(got[0], key=manifest_key(name))
    chain: list[Any] = []
    for generation in manifest.history:
        chain.append(generation.snapshot)
        chain.extend(generation.segments)
    if manifest.snapshot is not None:
        chain.append(manifest.snapshot)
    chain.extend(manifest.segments)
    chain.extend(read_tail(store, manifest))
    for item in chain:
        if item.txid == txid:
            return float(getattr(item, "flushed_at", None) or item.created_at)
    raise RestorePointError(f"txid {txid} of {name!r} is not retained")
