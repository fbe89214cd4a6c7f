"""Fork: copy an actor's state from a replica, at a past time or its latest, into a new actor
of its type in a closed runtime.

The fork is a history of its own (a new lineage) that runs none of the original's queued work
by surprise: see :func:`quiet_fork` for what it leaves out, reported in :class:`Forked`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import attrs

from ..errors import ActorExistsError
from ..files import db as _db
from ..files.directory import Directory
from ..files.layout import DATA_FILE, DIRECTORY_FILE, MAILBOX_FILE, actor_dir, actor_id
from ..replica import ReplicaStore
from ..spec import DEFAULT_MAX_KEY_BYTES, check_key
from .lock import runtime_lock
from .restore import other_writer, restore_files

#: The error type of a fork's dead letters: messages queued in the original, not run by the fork.
FORKED_ERROR = "torpor.NotRunInFork"


@attrs.define
class ForkChanges:
    """What a fork left out of the original's state (see :func:`quiet_fork`)."""

    #: the messages queued in the original, dead letters of the fork (their sequence numbers)
    dead_lettered: list[int] = attrs.Factory(list)
    #: messages the original had yet to send to other actors, left to it
    outbox_dropped: int = 0
    timers_dropped: list[str] = attrs.Factory(list)
    timers_kept: list[str] = attrs.Factory(list)
    next_timer: float | None = None  #: when the first kept timer is due


@attrs.frozen
class Forked:
    """An actor forked into a new one (:func:`fork_actor`)."""

    type_name: str
    key: str  #: the original's
    id: str
    new_key: str
    new_id: str
    at: float | None  #: the point in time copied, or ``None`` for the latest state
    folder: Path  #: the new actor's
    changes: ForkChanges


def fork_actor(
    store: ReplicaStore,
    root: Path,
    type_name: str,
    key: str,
    new_key: str,
    *,
    at: float | None = None,
    keep_timers: bool = False,
    max_key_bytes: int = DEFAULT_MAX_KEY_BYTES,
) -> Forked:
    """Copy actor ``type_name`` ``key``'s state from ``store`` (at ``at``, or its latest) into
    a new actor ``new_key`` of the closed runtime at ``root``. The new actor is not pending:
    nothing wakes it until it is sent a message or a timer it kept falls due.

    Raises :class:`InvalidKeyError` for a ``new_key`` the runtime would refuse (it checks
    keys against ``max_key_bytes``), :class:`ActorExistsError` when ``new_key`` is taken (in
    ``directory.db``, by files in its folder, or in the replica), and :class:`LookupError`
    when the replica has no such point for the original.
    """
    check_key(new_key, max_key_bytes)  # as Runtime.ref: a fork under any other is unreachable
    aid, new_aid = actor_id(type_name, key), actor_id(type_name, new_key)
    folder = actor_dir(root, new_aid)
    with runtime_lock(root, "fork an actor"):
        directory = Directory(root / DIRECTORY_FILE, synchronous="FULL")
        try:
            if directory.get(new_aid) is not None:
                raise ActorExistsError(f"actor {type_name} {new_key!r} already exists")
            if (folder / DATA_FILE).exists() or (folder / MAILBOX_FILE).exists():
                raise ActorExistsError(
                    f"{folder} already holds files for {type_name} {new_key!r} (an "
                    "interrupted fork?): remove that folder, or choose another key"
                )
            writer = other_writer(store, root, new_aid)
            if writer is not None:
                raise ActorExistsError(
                    f"the replica holds files of {type_name} {new_key!r}, written by "
                    f"runtime {writer}: choose another key"
                )
            original = directory.get(aid)
            changes = ForkChanges()

            def adjust(staging: Path) -> None:
                rename_actor(staging, type_name, new_key)
                quiet_fork(staging, type_name, key, changes, keep_timers=keep_timers)

            restore_files(store, aid, folder, type_name, key, at, adjust)
            directory.create(
                new_aid, type_name, new_key, original.init if original is not None else None
            )
            directory.clear_pending(new_aid)
            if changes.next_timer is not None:
                directory.set_wake_at(new_aid, changes.next_timer)
        finally:
            directory.close()
    return Forked(
        type_name=type_name,
        key=key,
        id=aid,
        new_key=new_key,
        new_id=new_aid,
        at=at,
        folder=folder,
        changes=changes,
    )


@contextlib.contextmanager
def _edit(path: Path) -> Iterator[apsw.Connection]:
    """A connection to a restored (closed, WAL-mode) actor file, closed with the WAL folded."""
    conn = _db.connect(path, synchronous="FULL", exclusive=True)
    try:
        with conn:
            yield conn
    finally:
        _db.close(conn, path, keep_wal=False)


def rename_actor(folder: Path, type_name: str, key: str) -> None:
    """Give the files in ``folder`` another actor's identity (it is kept inside the files,
    and checked when they are opened)."""
    with _edit(folder / DATA_FILE) as conn:
        conn.execute("UPDATE _torpor_state SET type = ?, key = ? WHERE id = 1", (type_name, key))
        # A fork is a history of its own: a new lineage (its steps' idempotency keys differ).
        # (A file from before lineages gets one when it is first opened.)
        if any(row[1] == "lineage" for row in conn.execute("PRAGMA table_info(_torpor_state)")):
            conn.execute("UPDATE _torpor_state SET lineage = lower(hex(randomblob(16)))")
    with _edit(folder / MAILBOX_FILE) as conn:
        conn.execute("UPDATE meta SET value = ? WHERE name = 'type'", (type_name,))
        conn.execute("UPDATE meta SET value = ? WHERE name = 'key'", (key,))


def quiet_fork(
    folder: Path, type_name: str, key: str, changes: ForkChanges, *, keep_timers: bool
) -> None:
    """Leave out of a fork the work the original had queued, so that none of it runs twice by
    surprise: messages not yet applied become dead letters (with the journals of their turns
    in flight gone, and the events those turns had consumed given back), messages the original
    had yet to send stay the original's to send (a timer's firing, addressed to itself, becomes
    a dead letter too), and timers are dropped unless ``keep_timers``. ``folder`` holds the
    copied files of ``type_name`` ``key``; ``changes`` is filled in."""
    with _edit(folder / DATA_FILE) as data:
        applied = int(_db.scalar(data, "SELECT applied_seq FROM _torpor_state WHERE id = 1"))
        outbox: list[Any] = data.execute(
            "SELECT id, target_type, target_key, method, payload FROM _torpor_outbox ORDER BY id"
        ).fetchall()
        data.execute("DELETE FROM _torpor_outbox")
        timers: list[Any] = data.execute(
            "SELECT name, due_at FROM _torpor_timers ORDER BY due_at, name"
        ).fetchall()
        if keep_timers:
            changes.timers_kept = [name for name, _ in timers]
            changes.next_timer = timers[0][1] if timers else None
        else:
            changes.timers_dropped = [name for name, _ in timers]
            data.execute("DELETE FROM _torpor_timers")
    now = time.time()
    with _edit(folder / MAILBOX_FILE) as mailbox:
        for _, target_type, target_key, method, payload in outbox:
            if (target_type, target_key) == (type_name, key):
                mailbox.execute(
                    "INSERT INTO inbox(method, payload, enqueued_at) VALUES (?, ?, ?)",
                    (method, payload, now),
                )
            else:
                changes.outbox_dropped += 1
        note = f"queued in {key!r} when it was forked; not run (replay it to run it)"
        rows: list[Any] = mailbox.execute(
            "INSERT OR IGNORE INTO dead_letters(seq, sender, sender_seq, method, payload, "
            "idempotency_key, attempts, error_type, error_message, traceback, failed_at) "
            "SELECT seq, sender, sender_seq, method, payload, idempotency_key, attempts, ?, ?, "
            "'', ? FROM inbox WHERE seq > ? ORDER BY seq RETURNING seq",
            (FORKED_ERROR, note, now, applied),
        ).fetchall()
        changes.dead_lettered = sorted(int(seq) for (seq,) in rows)
        mailbox.execute(
            "UPDATE events SET consumed_seq = NULL, consumed_n = NULL WHERE consumed_seq > ?",
            (applied,),
        )
        # Everything left in the inbox goes: the unapplied messages are dead letters now, and
        # applied ones may still be there (they leave the mailbox only once their turn is in
        # the replica, and the fork copies a moment before that).
        mailbox.execute("DELETE FROM journal")
        mailbox.execute("DELETE FROM inbox")
