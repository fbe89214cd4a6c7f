"""``data.db``: the actor's own tables plus the runtime tables that commit with them.

The runtime tables (``_torpor_*``) hold the applied-message cursor, the outbox and the stored
results of idempotent calls. Users' statements may read them but not change them: an authorizer
refuses writes to ``_torpor_*`` tables and any transaction control, because a turn is exactly one
transaction that the runtime opens and commits (docs/explanation/turns.md).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import apsw

from ..codec import Codec
from ..errors import CorruptFileError, SchemaError, SqlRefusedError
from . import db

# Runtime schema of data.db. Versioned in _torpor_state.schema (user_version belongs to the user).
_RUNTIME_MIGRATIONS = (
    """
    CREATE TABLE _torpor_state(
        id INTEGER PRIMARY KEY CHECK (id = 1),
        type TEXT NOT NULL,
        key TEXT NOT NULL,
        applied_seq INTEGER NOT NULL DEFAULT 0,
        created INTEGER NOT NULL DEFAULT 0,
        schema INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE _torpor_kv(key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
    CREATE TABLE _torpor_outbox(
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        target_type TEXT NOT NULL,
        target_key TEXT NOT NULL,
        method TEXT NOT NULL,
        payload BLOB NOT NULL
    );
    CREATE TABLE _torpor_results(
        seq INTEGER PRIMARY KEY,
        idempotency_key TEXT NOT NULL,
        ok INTEGER NOT NULL,
        payload BLOB NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX _torpor_results_age ON _torpor_results(created_at);
    """,
    """
    CREATE TABLE _torpor_timers(
        name TEXT PRIMARY KEY,
        method TEXT NOT NULL,
        payload BLOB NOT NULL,
        due_at REAL NOT NULL,
        every REAL,
        cron TEXT
    ) WITHOUT ROWID;
    CREATE INDEX _torpor_timers_due ON _torpor_timers(due_at);
    """,
    # Exactly-once whatever the mailbox holds: the last message applied from each sender, and
    # the idempotency keys of applied messages, commit with the turn (a mailbox restored behind
    # this file, or a message delivered again, cannot be applied twice). The lineage names the
    # actor's history: kept by a restore, new for a fork; step idempotency keys derive from it.
    """
    CREATE TABLE _torpor_senders(sender TEXT PRIMARY KEY, last_seq INTEGER NOT NULL) WITHOUT ROWID;
    CREATE INDEX _torpor_results_key ON _torpor_results(idempotency_key);
    ALTER TABLE _torpor_state ADD COLUMN lineage TEXT NOT NULL DEFAULT '';
    UPDATE _torpor_state SET lineage = lower(hex(randomblob(16)));
    ALTER TABLE _torpor_state ADD COLUMN incarnation INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE _torpor_state ADD COLUMN incarnation_from INTEGER NOT NULL DEFAULT 0;
    """,
    # Streams: items published in a turn, committed with it and relayed to the stream in
    # mailbox.db after the commit (runtime/streams.py), then deleted.
    """
    CREATE TABLE _torpor_published(
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        topic TEXT NOT NULL,
        item BLOB NOT NULL,
        at REAL NOT NULL
    );
    """,
)

#: A new lineage: a random id of 32 hex digits.
NEW_LINEAGE = "lower(hex(randomblob(16)))"
#: The first incarnation of a new data.db: a random number (46 bits, above 0), so that an actor
#: deleted and made again under the same key sends as another sender than its predecessor did
#: (receivers' cursors saw the predecessor's outbox numbers, and would drop the new ones).
NEW_INCARNATION = "(abs(random()) % 70368744177664) + 1"

_DENIED_ALWAYS = frozenset(
    {apsw.SQLITE_TRANSACTION, apsw.SQLITE_SAVEPOINT, apsw.SQLITE_ATTACH, apsw.SQLITE_DETACH}
)
_TABLE_WRITES = frozenset(
    {
        apsw.SQLITE_INSERT,
        apsw.SQLITE_UPDATE,
        apsw.SQLITE_DELETE,
        apsw.SQLITE_DROP_TABLE,
        apsw.SQLITE_ALTER_TABLE,
        apsw.SQLITE_CREATE_INDEX,
        apsw.SQLITE_DROP_INDEX,
        apsw.SQLITE_CREATE_TRIGGER,
    }
)
# Pragmas whose change would break the runtime's durability or transaction model.
_GUARDED_PRAGMAS = frozenset(
    {
        "journal_mode",
        "synchronous",
        "locking_mode",
        "wal_autocheckpoint",
        "wal_checkpoint",
        "writable_schema",
        "query_only",
        "user_version",
    }
)


_SCHEMA_TABLES = frozenset({"sqlite_master", "sqlite_temp_master", "sqlite_schema"})


def _operation(op: int, p1: str | None) -> str:
    """What a statement refused by the authorizer was doing, in words."""
    if op == apsw.SQLITE_TRANSACTION and p1:
        return p1  # BEGIN, COMMIT, ROLLBACK
    if p1 in _SCHEMA_TABLES:
        return "changing the schema"
    name = str(apsw.mapping_authorizer_function.get(op, op)).removeprefix("SQLITE_")
    name = name.replace("_", " ")
    return f"{name} {p1}" if p1 else name


class OutboxRow:
    __slots__ = ("id", "method", "payload", "target_key", "target_type")

    def __init__(
        self, id: int, target_type: str, target_key: str, method: str, payload: bytes
    ) -> None:
        self.id = id
        self.target_type = target_type
        self.target_key = target_key
        self.method = method
        self.payload = payload


@functools.cache
def image() -> bytes:
    """A new ``data.db`` with the runtime tables and an anonymous state row: new files are
    copies of it, given their actor's type and key when first opened."""

    def build(conn: apsw.Connection) -> None:
        with conn:
            for sql in _RUNTIME_MIGRATIONS:
                db.execute_script(conn, sql)
            conn.execute(
                "INSERT INTO _torpor_state(id, type, key, schema) VALUES (1, '', '', ?)",
                (len(_RUNTIME_MIGRATIONS),),
            )

    return db.image(build)


class DataStore:
    """The writer connection of one actor's ``data.db`` and the runtime's statements on it."""

    def __init__(
        self,
        path: Path,
        *,
        synchronous: str,
        type_name: str,
        key: str,
        image: Callable[[], bytes] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Open (creating if absent) an actor's ``data.db``; ``image``: create it as a copy
        of ``image()`` (called only when the file is absent); ``clock``: epoch seconds for the
        times it records.

        Private to this process while open (no ``-shm``: ``db.connect``), with a persistent
        ``-wal`` emptied at close: a hibernated actor's database is one file and an empty log.
        Re-creating those two files on every wake-up costs about 0.5 ms on this machine's file
        system; the empty log costs one WAL-header sync on the first commit after a wake-up
        (after the handler has started), and keeping the log's frames instead would add about
        16 KiB per hibernated actor.
        """
        self.path = path
        self._clock = clock
        if image is not None:
            db.create_from_image(path, image, durable=synchronous == "FULL")
        self.conn = conn = db.connect(path, synchronous=synchronous, persist_wal=True, private=True)
        self._trusted = True
        conn.authorizer = self._authorize
        # Only the runtime commits. A handler statement that ends the transaction anyway
        # (INSERT OR ROLLBACK, RAISE(ROLLBACK) in a trigger) leaves later statements in autocommit
        # mode; this hook vetoes those commits, so nothing a handler writes outside its turn's
        # transaction can persist.
        self._may_commit = True
        conn.set_commit_hook(self._commit_hook)
        try:
            with db.corruption_as_error(path):
                self._migrate_runtime(type_name, key)
                row: Any = conn.execute(
                    "SELECT type, key, applied_seq, created, lineage, incarnation, "
                    "incarnation_from FROM _torpor_state WHERE id = 1"
                ).fetchall()[0]
                if (row[0], row[1]) == ("", ""):
                    # A copy of the image not yet given its identity (and a lineage of its
                    # own): just created, or created right before a crash. Only this actor's
                    # path could hold it.
                    row = conn.execute(
                        f"UPDATE _torpor_state SET type = ?, key = ?, lineage = {NEW_LINEAGE}, "
                        f"incarnation = {NEW_INCARNATION} WHERE id = 1 RETURNING type, key, "
                        "applied_seq, created, lineage, incarnation, incarnation_from",
                        (type_name, key),
                    ).fetchall()[0]
        except BaseException:
            conn.close()
            raise
        if (row[0], row[1]) != (type_name, key):
            raise CorruptFileError(
                f"{path} belongs to actor {row[0]} {row[1]!r}, not {type_name} {key!r}",
                path=str(path),
            )
        self.applied_seq: int = row[2]
        self.created: bool = bool(row[3])
        #: The id of this actor's history: the same on every machine it is restored to.
        self.lineage: str = row[4]
        #: Random for a new file (a key deleted and used again is another sender), then bumped
        #: when the actor is restored to an earlier point: its outbox numbers start again from
        #: there, so it sends as a new sender (receivers would drop the repeats).
        self.incarnation: int = row[5]
        #: The first outbox row of this incarnation (earlier rows go as the previous one).
        self.incarnation_from: int = row[6]
        self._trusted = False
        self._may_commit = False

    def _commit_hook(self) -> bool:
        return not self._may_commit  # True vetoes the commit (it becomes a rollback)

    def _migrate_runtime(self, type_name: str, key: str) -> None:
        conn = self.conn
        try:  # the common case, every wake-up: one read, no transaction
            if db.scalar(conn, "SELECT schema FROM _torpor_state") == len(_RUNTIME_MIGRATIONS):
                return
        except apsw.SQLError:
            pass  # a new file
        with conn:
            exists = conn.execute(
                "SELECT 1 FROM sqlite_schema WHERE name = '_torpor_state'"
            ).fetchall()
            version = 0
            if exists:
                version = int(db.scalar(conn, "SELECT schema FROM _torpor_state"))
            if version > len(_RUNTIME_MIGRATIONS):
                raise SchemaError(
                    f"{self.path} was written by a newer torpor (runtime schema {version}, this "
                    f"version knows {len(_RUNTIME_MIGRATIONS)}): upgrade torpor to open it"
                )
            for sql in _RUNTIME_MIGRATIONS[version:]:
                db.execute_script(conn, sql)
            if not exists:
                conn.execute(
                    f"INSERT INTO _torpor_state(id, type, key, lineage, incarnation) VALUES "
                    f"(1, ?, ?, {NEW_LINEAGE}, {NEW_INCARNATION})",
                    (type_name, key),
                )
            conn.execute("UPDATE _torpor_state SET schema = ?", (len(_RUNTIME_MIGRATIONS),))

    def close(self) -> None:
        db.close(self.conn, self.path, keep_wal=False)

    # -- the authorizer -------------------------------------------------------------------

    # It raises SqlRefusedError inside SQLite's authorizer callback: apsw denies the statement
    # and raises that error from the execute() (or the iteration) that prepared it.

    def _authorize(
        self, op: int, p1: str | None, p2: str | None, _db: str | None, _trigger: str | None
    ) -> int:
        if self._trusted:
            return apsw.SQLITE_OK
        if op in _DENIED_ALWAYS:
            raise SqlRefusedError(
                f"{_operation(op, None)} is refused in a handler: the runtime runs each turn as "
                "one transaction of the actor's own data.db, and commits it"
            )
        if op in _TABLE_WRITES and p1 is not None and p1.startswith("_torpor_"):
            raise SqlRefusedError(
                f"{_operation(op, p1)} is refused: the runtime's _torpor_* tables may be read, "
                "not changed (Sql.tables() lists your own tables)"
            )
        if op == apsw.SQLITE_PRAGMA and p1 in _GUARDED_PRAGMAS and p2 is not None:
            how = " (set by the class's migrations)" if p1 == "user_version" else ""
            raise SqlRefusedError(
                f"PRAGMA {p1} = {p2} is refused in a handler: the runtime sets it{how}"
            )
        return apsw.SQLITE_OK

    def _exec(self, sql: str, params: tuple[Any, ...] = ()) -> apsw.Cursor:
        self._trusted = True
        try:
            return self.conn.execute(sql, params)
        finally:
            self._trusted = False

    # -- transactions ---------------------------------------------------------------------

    # The comments make these texts differ from anything a handler would write: apsw caches
    # prepared statements by text, and a cached statement is not authorized again.

    def begin(self) -> None:
        self._exec("BEGIN IMMEDIATE /* torpor turn */")

    def commit(self) -> None:
        self._may_commit = True
        try:
            self._exec("COMMIT /* torpor turn */")
        finally:
            self._may_commit = False

    def rollback(self) -> None:
        if self.conn.in_transaction:
            self._exec("ROLLBACK /* torpor turn */")

    def savepoint(self) -> None:
        self._exec("SAVEPOINT _torpor_message")

    def release(self) -> None:
        self._exec("RELEASE _torpor_message")

    def rollback_to_savepoint(self) -> None:
        self._exec("ROLLBACK TO _torpor_message")
        self._exec("RELEASE _torpor_message")

    @property
    def in_transaction(self) -> bool:
        return bool(self.conn.in_transaction)

    # -- runtime state --------------------------------------------------------------------

    def set_applied(self, seq: int) -> None:
        self._exec("UPDATE _torpor_state SET applied_seq = ?", (seq,))

    def set_created(self) -> None:
        self._exec("UPDATE _torpor_state SET created = 1")

    def add_outbox(self, target_type: str, target_key: str, method: str, payload: bytes) -> None:
        self._exec(
            "INSERT INTO _torpor_outbox(target_type, target_key, method, payload) "
            "VALUES (?, ?, ?, ?)",
            (target_type, target_key, method, payload),
        )

    def add_published(self, topic: str, item: bytes, at: float) -> None:
        """An item published in the turn (relayed to the stream after the commit)."""
        self._exec(
            "INSERT INTO _torpor_published(topic, item, at) VALUES (?, ?, ?)", (topic, item, at)
        )

    def published_after(self, after_id: int) -> list[tuple[int, str, bytes, float]]:
        """Committed published items not relayed yet: ``(id, topic, item, at)``."""
        return [
            (int(r[0]), r[1], bytes(r[2]), float(r[3]))
            for r in self.conn.execute(
                "SELECT id, topic, item, at FROM _torpor_published WHERE id > ? ORDER BY id",
                (after_id,),
            )
        ]

    def delete_published(self, upto_id: int) -> None:
        self._exec("DELETE FROM _torpor_published WHERE id <= ?", (upto_id,))

    def outbox_after(self, after_id: int) -> list[OutboxRow]:
        return [
            OutboxRow(*row)
            for row in self._exec(
                "SELECT id, target_type, target_key, method, payload FROM _torpor_outbox "
                "WHERE id > ? ORDER BY id",
                (after_id,),
            )
        ]

    def delete_outbox(self, upto_id: int) -> None:
        self._exec("DELETE FROM _torpor_outbox WHERE id <= ?", (upto_id,))

    def store_result(self, seq: int, idempotency_key: str, ok: bool, payload: bytes) -> None:
        self._exec(
            "INSERT OR REPLACE INTO _torpor_results(seq, idempotency_key, ok, payload, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (seq, idempotency_key, int(ok), payload, self._clock()),
        )

    def sender_cursor(self, sender: str) -> int:
        """The last sequence number applied from ``sender`` (0 if none)."""
        for (last,) in self._exec(
            "SELECT last_seq FROM _torpor_senders WHERE sender = ?", (sender,)
        ):
            return int(last)
        return 0

    def advance_senders(self, cursors: dict[str, int]) -> None:
        """Record, in the turn's transaction, the last message applied from each sender."""
        for sender, last in cursors.items():
            self._exec(
                "INSERT INTO _torpor_senders(sender, last_seq) VALUES (?, ?) "
                "ON CONFLICT(sender) DO UPDATE SET last_seq = max(last_seq, excluded.last_seq)",
                (sender, last),
            )

    def result_by_key(self, idempotency_key: str) -> tuple[bool, bytes] | None:
        """The stored outcome of the applied message that carried ``idempotency_key``."""
        for ok, payload in self._exec(
            "SELECT ok, payload FROM _torpor_results WHERE idempotency_key = ? LIMIT 1",
            (idempotency_key,),
        ):
            return bool(ok), payload
        return None

    def result(self, seq: int) -> tuple[bool, bytes] | None:
        for ok, payload in self._exec(
            "SELECT ok, payload FROM _torpor_results WHERE seq = ?", (seq,)
        ):
            return bool(ok), payload
        return None

    # -- timers ----------------------------------------------------------------------------

    def set_timer(
        self,
        name: str,
        method: str,
        payload: bytes,
        due_at: float,
        every: float | None,
        cron: str | None,
    ) -> None:
        self._exec(
            "INSERT OR REPLACE INTO _torpor_timers(name, method, payload, due_at, every, cron) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (name, method, payload, due_at, every, cron),
        )

    def delete_timer(self, name: str) -> bool:
        return bool(
            self._exec("DELETE FROM _torpor_timers WHERE name = ? RETURNING 1", (name,)).fetchall()
        )

    def timers(self, due_before: float | None = None) -> list[tuple[Any, ...]]:
        params: tuple[Any, ...] = ()
        if due_before is None:
            sql = "SELECT * FROM _torpor_timers ORDER BY due_at, name"
        else:
            sql = "SELECT * FROM _torpor_timers WHERE due_at <= ? ORDER BY due_at, name"
            params = (due_before,)
        rows: list[tuple[Any, ...]] = self._exec(sql, params).fetchall()
        return rows

    def next_due(self) -> float | None:
        value = db.scalar(self.conn, "SELECT min(due_at) FROM _torpor_timers")
        return None if value is None else float(value)

    def housekeeping(self, outbox_delivered_upto: int, results_before: float) -> None:
        """Between turns: drop delivered outbox rows and expired idempotent results."""
        self.begin()
        try:
            self.delete_outbox(outbox_delivered_upto)
            self._exec("DELETE FROM _torpor_results WHERE created_at < ?", (results_before,))
            self.commit()
        except BaseException:
            self.rollback()
            raise

    # -- the user's view ------------------------------------------------------------------

    def run_user_migrations(self, steps: tuple[Any, ...], sql: Sql, what: str) -> None:
        def run_step(step: Any) -> None:
            if isinstance(step, str):
                db.execute_script(self.conn, step)
            else:
                step(sql)

        conn = self.conn
        with db.corruption_as_error(self.path):
            # user_version is ours to set here; the user's statements run untrusted.
            self._trusted = True
            try:
                if conn.pragma("user_version") == len(steps):
                    return  # up to date: the common case, every wake-up
                conn.execute("BEGIN IMMEDIATE")
                version = conn.pragma("user_version")
            finally:
                self._trusted = False
            try:
                if version > len(steps):
                    raise SchemaError(
                        f"{what}: data.db is at schema version {version} but only {len(steps)} "
                        "migrations are defined; migrations may be appended, never removed or "
                        "reordered"
                    )
                for step in steps[version:]:
                    run_step(step)
                self._trusted = self._may_commit = True
                try:
                    if version != len(steps):
                        conn.pragma("user_version", len(steps))
                    conn.execute("COMMIT")
                finally:
                    self._trusted = self._may_commit = False
            except BaseException:
                self.rollback()
                raise


_READ_ONLY_OPS = frozenset(
    {apsw.SQLITE_SELECT, apsw.SQLITE_READ, apsw.SQLITE_FUNCTION, apsw.SQLITE_RECURSIVE}
)
# Pragmas whose argument names what to read (``PRAGMA table_info(t)``, and the table-valued
# ``pragma_table_info('t')``, which SQLite authorizes as that pragma), not a value to set.
_SCHEMA_PRAGMAS = frozenset(
    {
        "table_info",
        "table_xinfo",
        "table_list",
        "index_list",
        "index_info",
        "index_xinfo",
        "foreign_key_list",
        "foreign_key_check",
        "integrity_check",
        "quick_check",
    }
)
# Pragmas that act on the file even without a value.
_ACTING_PRAGMAS = frozenset({"incremental_vacuum", "optimize", "wal_checkpoint"})


def read_only_authorizer(
    op: int, p1: str | None, p2: str | None, _db: str | None, _trigger: str | None
) -> int:
    """For ``@query`` connections: reading is all there is. Pragmas run as reads: a setting
    without a value, or a schema pragma (``table_info``, ``index_list``...) naming what to read.
    Anything else raises :class:`SqlRefusedError`."""
    if op in _READ_ONLY_OPS:
        return apsw.SQLITE_OK
    if op == apsw.SQLITE_PRAGMA:
        name = (p1 or "").lower()
        if name in _SCHEMA_PRAGMAS or (p2 is None and name not in _ACTING_PRAGMAS):
            return apsw.SQLITE_OK
        shown = f"PRAGMA {p1}" if p2 is None else f"PRAGMA {p1} = {p2}"
        raise SqlRefusedError(f"{shown} is refused in a @query handler, which only reads")
    raise SqlRefusedError(f"{_operation(op, p1)} is refused in a @query handler, which only reads")


_USER_TABLES = "SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name"


class Sql:
    """An actor's SQL connection as its handlers see it: ``self.sql``.

    ``execute`` returns an apsw cursor: iterate it for rows. The runtime owns the transaction (a
    turn is one transaction), so ``BEGIN``, ``COMMIT``, ``SAVEPOINT`` and ``ATTACH`` are refused,
    as are writes to the runtime's ``_torpor_*`` tables. Inside a ``@query`` handler the
    connection is read-only (schema pragmas such as ``PRAGMA table_info(t)`` run). A refused
    statement raises ``SqlRefusedError`` (an ``ActorError`` and an ``apsw.AuthError``).
    """

    __slots__ = ("_conn",)

    def __init__(self, conn: apsw.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Any = None) -> apsw.Cursor:
        """Run a statement and return the cursor; iterate it for rows.

        apsw runs statements lazily: in ``"A; B"``, ``B`` runs only once ``A``'s rows have all
        been read. Prefer one statement per call.
        """
        return self._conn.execute(sql, params)

    def executemany(self, sql: str, seq_of_params: Any) -> apsw.Cursor:
        """Run ``sql`` once per parameter set."""
        return self._conn.executemany(sql, seq_of_params)

    def query(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        """Run a statement and return all its rows."""
        rows: list[tuple[Any, ...]] = self._conn.execute(sql, params).fetchall()
        return rows

    def query_value(self, sql: str, params: Any = None) -> Any:
        """The first column of the first row, or ``None`` if there is no row."""
        for row in self._conn.execute(sql, params):
            return row[0]
        return None

    def tables(self) -> list[str]:
        """The names of the actor's own tables, sorted: those of ``sqlite_schema`` without the
        runtime's ``_torpor_*`` tables and SQLite's ``sqlite_*`` ones."""
        return [
            name
            for (name,) in self._conn.execute(_USER_TABLES)
            if not name.startswith(("_torpor_", "sqlite_"))
        ]

    @property
    def changes(self) -> int:
        """Rows changed by the last INSERT, UPDATE or DELETE."""
        return int(self._conn.changes())

    @property
    def last_insert_rowid(self) -> int:
        """The rowid of the last row this actor's handler inserted (SQLite's
        ``last_insert_rowid()``)."""
        return int(self._conn.last_insert_rowid())


class KV(MutableMapping[str, Any]):
    """The actor's key-value map, ``self.kv``: str keys, message-encodable values.

    It lives in ``data.db`` and commits with the turn. Values are copies: mutate and assign back
    (``items = self.kv["items"]; items.append(x); self.kv["items"] = items``).
    """

    __slots__ = ("_codec", "_read", "_store")

    def __init__(self, store: DataStore | None, conn: apsw.Connection, codec: Codec) -> None:
        self._store = store  # None in a @query: read-only
        self._read = conn
        self._codec = codec

    def _cursor(self, sql: str, params: tuple[Any, ...]) -> apsw.Cursor:
        if self._store is not None:
            return self._store._exec(sql, params)
        return self._read.execute(sql, params)

    def _writer(self) -> DataStore:
        if self._store is None:
            raise RuntimeError("self.kv is read-only inside a @query handler")
        return self._store

    def __getitem__(self, key: str) -> Any:
        for (value,) in self._cursor("SELECT value FROM _torpor_kv WHERE key = ?", (key,)):
            return self._codec.decode(value)
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        for (value,) in self._cursor("SELECT value FROM _torpor_kv WHERE key = ?", (key,)):
            return self._codec.decode(value)
        return default

    def __contains__(self, key: object) -> bool:
        return bool(self._cursor("SELECT 1 FROM _torpor_kv WHERE key = ?", (key,)).fetchall())

    def __setitem__(self, key: str, value: Any) -> None:
        if not isinstance(key, str):
            raise TypeError(f"kv keys must be str (got {key!r} that is a {type(key).__name__})")
        encoded = self._codec.encode(value)
        self._writer()._exec(
            "INSERT INTO _torpor_kv(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, encoded),
        )

    def __delitem__(self, key: str) -> None:
        rows = (
            self._writer()
            ._exec("DELETE FROM _torpor_kv WHERE key = ? RETURNING 1", (key,))
            .fetchall()
        )
        if not rows:
            raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter([row[0] for row in self._cursor("SELECT key FROM _torpor_kv ORDER BY key", ())])

    def __len__(self) -> int:
        for (count,) in self._cursor("SELECT count(*) FROM _torpor_kv", ()):
            return int(count)
        return 0

    def __repr__(self) -> str:
        return f"<kv with {len(self)} keys>"
