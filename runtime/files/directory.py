"""``directory.db``: one row per actor, so that a restarted runtime knows whom to resume.

The ``pending`` column is a hint that may be early but never late: it is set (and committed)
before a message can be acknowledged to an actor that was not known to be pending, and cleared
only when the actor is seen with an empty inbox and an empty outbox.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import apsw
import attrs

from ..errors import ActorExistsError
from . import db

_MIGRATIONS = (
    """
    CREATE TABLE actors(
        id TEXT PRIMARY KEY,
        type TEXT NOT NULL,
        key TEXT NOT NULL,
        pending INTEGER NOT NULL DEFAULT 0,
        wake_at REAL,
        init BLOB,
        parent TEXT,
        created_at REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX actors_pending ON actors(pending) WHERE pending = 1;
    CREATE INDEX actors_type_key ON actors(type, key);
    """,
    "CREATE INDEX actors_wake ON actors(wake_at) WHERE wake_at IS NOT NULL;",
    "ALTER TABLE actors ADD COLUMN stopped TEXT; ALTER TABLE actors ADD COLUMN notice INTEGER;",
    # This runtime's identity, mixed into step idempotency keys: two runtimes holding an actor
    # of the same type and key must never send an external API the same key for different
    # requests.
    """
    CREATE TABLE runtime(id INTEGER PRIMARY KEY CHECK (id = 1), runtime_id TEXT NOT NULL);
    INSERT INTO runtime(id, runtime_id) VALUES (1, lower(hex(randomblob(8))));
    """,
    # The children of an actor (its runs, listed by Runtime.runs), without a scan.
    "CREATE INDEX actors_parent ON actors(parent) WHERE parent IS NOT NULL;",
    # Listing (Runtime.actors) shows the last activity; a deletion is marked before the files
    # go, so that a crash half way finishes it at the next open instead of waking the actor.
    """
    ALTER TABLE actors ADD COLUMN active_at REAL;
    ALTER TABLE actors ADD COLUMN deleting INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX actors_deleting ON actors(deleting) WHERE deleting = 1;
    CREATE INDEX actors_stopped ON actors(type, key) WHERE stopped IS NOT NULL;
    """,
)

_COLUMNS = "id, type, key, pending, init, wake_at, stopped, parent, deleting, created_at, active_at"


@attrs.frozen
class Entry:
    id: str
    type: str
    key: str
    pending: bool
    init: bytes | None
    wake_at: float | None = None
    stopped: str | None = None
    parent: str | None = None
    #: A deletion began (``Ref.delete``) and has not finished (the store could not be reached).
    deleting: bool = False
    created_at: float = 0.0
    #: When work last came for it or it last ran out of work (seconds since the epoch): kept
    #: with the pending mark, without writes of its own.
    active_at: float | None = None


def _entry(row: Any) -> Entry:
    return Entry(
        id=row[0],
        type=row[1],
        key=row[2],
        pending=bool(row[3]),
        init=row[4],
        wake_at=row[5],
        stopped=row[6],
        parent=row[7],
        deleting=bool(row[8]),
        created_at=float(row[9]),
        active_at=row[10],
    )


class Directory:
    def __init__(
        self, path: Path, *, synchronous: str, clock: Callable[[], float] = time.time
    ) -> None:
        self.path = path
        self._clock = clock  # epoch seconds for the times it records
        self.conn = db.connect(path, synchronous=synchronous)
        # A deleted actor's row (its key, its on_create arguments) is overwritten, not left in
        # free pages: erasure (Ref.delete) must erase. Rows are deleted rarely; it costs little.
        self.conn.pragma("secure_delete", 1)
        with db.corruption_as_error(path):
            db.migrate(
                self.conn,
                _MIGRATIONS,
                lambda sql: db.execute_script(self.conn, sql),
                what=str(path),
            )

    def close(self) -> None:
        self.conn.close()

    def runtime_id(self) -> str:
        return str(db.scalar(self.conn, "SELECT runtime_id FROM runtime"))

    def get(self, aid: str) -> Entry | None:
        row: Any
        for row in self.conn.execute(f"SELECT {_COLUMNS} FROM actors WHERE id = ?", (aid,)):
            return _entry(row)
        return None

    def page(
        self, type_name: str, *, after: str | None, limit: int, stopped: bool | None = None
    ) -> list[Entry]:
        """Up to ``limit`` actors of ``type_name`` with a key above ``after``, in key order
        (an index on ``(type, key)``: a page costs the same at a million actors);
        ``stopped``: only stopped ones (True, their own partial index), only others at rest
        (False: neither stopped nor being deleted)."""
        where = "type = ? AND key > ?"
        if stopped is not None:
            where += (
                " AND stopped IS NOT NULL" if stopped else " AND stopped IS NULL AND deleting = 0"
            )
        rows: list[Any] = self.conn.execute(
            f"SELECT {_COLUMNS} FROM actors WHERE {where} ORDER BY key LIMIT ?",
            (type_name, "" if after is None else after, limit),
        ).fetchall()
        return [_entry(row) for row in rows]

    def mark_deleting(self, aid: str) -> None:
        """Record that the actor's deletion began (before anything of it is removed)."""
        self.conn.execute("UPDATE actors SET deleting = 1, pending = 0 WHERE id = ?", (aid,))

    def deletions(self) -> list[Entry]:
        """Actors whose deletion began and did not finish (a crash, an unreachable store)."""
        rows: list[Any] = self.conn.execute(
            f"SELECT {_COLUMNS} FROM actors WHERE deleting = 1"
        ).fetchall()
        return [_entry(row) for row in rows]

    def create(
        self, aid: str, type_name: str, key: str, init: bytes | None, parent: str | None = None
    ) -> None:
        """Insert a new actor (``spawn``); :class:`ActorExistsError` if the id is taken."""
        try:
            self.conn.execute(
                "INSERT INTO actors(id, type, key, pending, init, parent, created_at, active_at) "
                "VALUES (?, ?, ?, 1, ?, ?, ?, ?)",
                (aid, type_name, key, init, parent, self._clock(), self._clock()),
            )
        except apsw.ConstraintError:
            raise ActorExistsError(f"actor {type_name} {key!r} already exists") from None

    def mark_pending(self, aid: str, type_name: str, key: str) -> None:
        """Record (creating the row if needed) that the actor may have work."""
        now = self._clock()
        self.conn.execute(
            "INSERT INTO actors(id, type, key, pending, created_at, active_at) "
            "VALUES (?, ?, ?, 1, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET pending = 1, active_at = ? WHERE pending = 0",
            (aid, type_name, key, now, now, now),
        )

    def lower_wake_at(self, aid: str, at: float) -> None:
        """Make the wake-up hint no later than ``at`` (set before the timer's turn commits)."""
        self.conn.execute(
            "UPDATE actors SET wake_at = ? WHERE id = ? AND (wake_at IS NULL OR wake_at > ?)",
            (at, aid, at),
        )

    def set_wake_at(self, aid: str, at: float | None) -> None:
        """The exact next due timer, written after the turn that changed timers committed."""
        self.conn.execute("UPDATE actors SET wake_at = ? WHERE id = ?", (at, aid))

    def next_wake_at(self, after: float | None = None) -> float | None:
        """The earliest wake-up hint (later than ``after``, if given)."""
        value = db.scalar(
            self.conn,
            "SELECT min(wake_at) FROM actors WHERE wake_at IS NOT NULL AND wake_at > ?",
            (-math.inf if after is None else after,),
        )
        return None if value is None else float(value)

    def due(self, now: float) -> list[tuple[str, str, str]]:
        rows: list[Any] = self.conn.execute(
            "SELECT id, type, key FROM actors WHERE wake_at IS NOT NULL AND wake_at <= ? "
            "AND deleting = 0 ORDER BY wake_at",
            (now,),
        ).fetchall()
        return [(row[0], row[1], row[2]) for row in rows]

    def with_timers(self) -> int:
        return int(db.scalar(self.conn, "SELECT count(*) FROM actors WHERE wake_at IS NOT NULL"))

    def set_stopped(self, aid: str, reason: str | None, notice: int | None = None) -> None:
        """Mark (or unmark) an actor stopped; ``notice`` records a parent notice still owed."""
        self.conn.execute(
            "UPDATE actors SET stopped = ?, notice = ? WHERE id = ?", (reason, notice, aid)
        )

    def owed_notices(self) -> list[tuple[str, str, str, str, int]]:
        """(child id, child type, child key, parent id, notice) for notices not yet delivered."""
        rows: list[Any] = self.conn.execute(
            "SELECT id, type, key, parent, notice FROM actors WHERE notice IS NOT NULL"
        ).fetchall()
        return [(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    def clear_notice(self, aid: str, notice: int) -> None:
        """Mark notice number ``notice`` delivered (a newer one owed meanwhile stays)."""
        self.conn.execute(
            "UPDATE actors SET notice = NULL WHERE id = ? AND notice = ?", (aid, notice)
        )

    def children(self, parent: str) -> list[tuple[str, str, str]]:
        """(id, type, key) of the actors made by ``parent``, oldest first."""
        rows: list[Any] = self.conn.execute(
            "SELECT id, type, key FROM actors WHERE parent = ? ORDER BY created_at, id",
            (parent,),
        ).fetchall()
        return [(row[0], row[1], row[2]) for row in rows]

    def orphans(self, type_name: str) -> list[tuple[str, str, str]]:
        """(id, type, key) of the actors of ``type_name`` made by no actor, oldest first."""
        rows: list[Any] = self.conn.execute(
            "SELECT id, type, key FROM actors WHERE type = ? AND parent IS NULL "
            "ORDER BY created_at, id",
            (type_name,),
        ).fetchall()
        return [(row[0], row[1], row[2]) for row in rows]

    def of_type(self, type_name: str) -> list[tuple[str, str]]:
        """(id, key) of every actor of ``type_name``."""
        rows: list[Any] = self.conn.execute(
            "SELECT id, key FROM actors WHERE type = ?", (type_name,)
        ).fetchall()
        return [(row[0], row[1]) for row in rows]

    def stopped_count(self) -> int:
        return int(db.scalar(self.conn, "SELECT count(*) FROM actors WHERE stopped IS NOT NULL"))

    def forget(self, aid: str) -> None:
        """Delete the actor's row; its children (spawned, runs) have no parent from now on, so
        that a new actor under the key does not take them, or their notices, for its own."""
        with self.conn:
            self.conn.execute("DELETE FROM actors WHERE id = ?", (aid,))
            self.conn.execute(
                "UPDATE actors SET parent = NULL, notice = NULL "
                "WHERE parent = ? OR parent LIKE ? || '.%'",  # (older rows: a sender id)
                (aid, aid),
            )

    def clear_pending(self, aid: str) -> None:
        self.conn.execute(
            "UPDATE actors SET pending = 0, active_at = ? WHERE id = ? AND pending = 1",
            (self._clock(), aid),
        )

    def clear_init(self, aid: str) -> None:
        self.conn.execute("UPDATE actors SET init = NULL WHERE id = ? AND init IS NOT NULL", (aid,))

    def pending(self) -> Iterator[Entry]:
        rows: list[Any] = self.conn.execute(
            "SELECT id, type, key, pending, init FROM actors "
            "WHERE pending = 1 AND stopped IS NULL AND deleting = 0"
        ).fetchall()
        for row in rows:
            yield Entry(id=row[0], type=row[1], key=row[2], pending=True, init=row[4])

    def count(self) -> int:
        return int(db.scalar(self.conn, "SELECT count(*) FROM actors"))
