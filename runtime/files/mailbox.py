"""``mailbox.db``: an actor's pending messages, sender cursors, idempotency keys, dead letters.

It is a file of its own so that senders can append at any time while a turn holds its write
transaction on ``data.db`` (docs/explanation/turns.md, "The files of one actor"). Whether a message
was applied is not recorded here but in ``data.db`` (``applied_seq``), atomically with the turn's
effects; inbox rows at or below that cursor are garbage, removed in batches.
"""

from __future__ import annotations

import functools
import hashlib
import time
import traceback as _traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import attrs

from ..errors import CorruptFileError, IdempotencyKeyReusedError
from . import db

_MIGRATIONS = (
    """
    CREATE TABLE meta(name TEXT PRIMARY KEY, value) WITHOUT ROWID;
    CREATE TABLE inbox(
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        sender TEXT,
        sender_seq INTEGER,
        method TEXT NOT NULL,
        payload BLOB NOT NULL,
        idempotency_key TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        started INTEGER NOT NULL DEFAULT 0,
        enqueued_at REAL NOT NULL
    );
    CREATE TABLE senders(sender TEXT PRIMARY KEY, last_seq INTEGER NOT NULL) WITHOUT ROWID;
    CREATE TABLE idempotency(
        key TEXT PRIMARY KEY,
        seq INTEGER NOT NULL,
        fingerprint BLOB NOT NULL,
        created_at REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX idempotency_age ON idempotency(created_at);
    CREATE TABLE dead_letters(
        seq INTEGER PRIMARY KEY,
        sender TEXT,
        sender_seq INTEGER,
        method TEXT NOT NULL,
        payload BLOB NOT NULL,
        idempotency_key TEXT,
        attempts INTEGER NOT NULL,
        error_type TEXT NOT NULL,
        error_message TEXT NOT NULL,
        traceback TEXT NOT NULL,
        failed_at REAL NOT NULL
    );
    """,
    # Durable steps (docs/explanation/turns.md, "Steps"): the journal of the turns in flight, keyed
    # by (message, step number), the events (signals) delivered to the actor, and a turn cancelled
    # through the API.
    """
    CREATE TABLE journal(
        seq INTEGER NOT NULL,
        n INTEGER NOT NULL,
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        status TEXT NOT NULL,
        value BLOB,
        until REAL,
        attempts INTEGER NOT NULL DEFAULT 0,
        recorded_at REAL NOT NULL,
        PRIMARY KEY (seq, n)
    );
    CREATE INDEX journal_waits ON journal(until) WHERE status = 'waiting';
    CREATE TABLE events(
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        payload BLOB NOT NULL,
        idempotency_key TEXT UNIQUE,
        consumed_seq INTEGER,
        consumed_n INTEGER,
        sent_at REAL NOT NULL
    );
    CREATE INDEX events_unconsumed ON events(name, id) WHERE consumed_seq IS NULL;
    ALTER TABLE inbox ADD COLUMN cancelled TEXT;
    ALTER TABLE inbox ADD COLUMN restarts INTEGER NOT NULL DEFAULT 0;
    """,
    # Failure semantics (docs/howto/failures-and-retries.md): when a message in backoff may run
    # again (epoch seconds; NULL: at once), so that a crash does not reset its backoff; and why
    # a dead letter was given up on ('unknown' for those recorded before this column).
    """
    ALTER TABLE inbox ADD COLUMN retry_at REAL;
    ALTER TABLE dead_letters ADD COLUMN reason TEXT NOT NULL DEFAULT 'unknown';
    """,
    # Streams (docs/howto/streams.md, runtime/files/streamstore.py): the actor's stream entries
    # by offset, and the step attempts that emitted chunks and have not ended yet.
    """
    CREATE TABLE stream(
        "offset" INTEGER PRIMARY KEY AUTOINCREMENT,
        topic TEXT NOT NULL,
        kind TEXT NOT NULL,
        step TEXT,
        step_key TEXT,
        attempt INTEGER,
        item BLOB,
        at REAL NOT NULL
    );
    CREATE INDEX stream_topic ON stream(topic, "offset");
    CREATE TABLE stream_attempts(
        seq INTEGER NOT NULL,
        n INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        topic TEXT NOT NULL,
        step TEXT NOT NULL,
        step_key TEXT NOT NULL,
        PRIMARY KEY (seq, n, attempt, topic)
    ) WITHOUT ROWID;
    """,
)

_MESSAGE_COLUMNS = (
    "seq, sender, sender_seq, method, payload, idempotency_key, attempts, started, "
    "EXISTS (SELECT 1 FROM dead_letters d WHERE d.seq = inbox.seq), cancelled, restarts, "
    "retry_at"
)


@attrs.define(slots=True)
class JournalRow:
    """One journaled step of a turn: its result, final error, wait deadline or marker."""

    n: int
    kind: str
    name: str
    status: str  # done | failed | waiting
    value: bytes | None
    until: float | None
    attempts: int
    recorded_at: float


@attrs.define(slots=True)
class Message:
    """One inbox row.

    ``recovered`` marks a row read back from the file rather than appended by this process:
    it may have been running when a previous process died, so it runs alone and counts the
    start (``started``), to find a message that kills the process.
    """

    seq: int
    sender: str | None
    sender_seq: int | None
    method: str
    payload: bytes
    idempotency_key: str | None
    attempts: int = 0
    started: int = 0
    dead_lettered: bool = False
    recovered: bool = False
    cancelled: str | None = None
    restarts: int = 0  # Runtime.restart_turn calls: part of the steps' idempotency keys
    retry_at: float | None = None  # in backoff after a failed attempt: not to run before this


@attrs.frozen
class StoredDeadLetter:
    seq: int
    sender: str | None
    method: str
    payload: bytes
    idempotency_key: str | None
    attempts: int
    error_type: str
    error_message: str
    traceback: str
    failed_at: float
    reason: str


#: Page size of new mailboxes: their rows are small and short-lived, so small pages keep a
#: hibernated mailbox at about 8 KiB and each append's WAL frames small.
PAGE_SIZE = 1024


@functools.cache
def image() -> bytes:
    """A new, empty mailbox file (without its ``meta`` rows): new mailboxes are copies of it."""

    def build(conn: Any) -> None:
        db.migrate(conn, _MIGRATIONS, lambda sql: db.execute_script(conn, sql), what="image")

    return db.image(build, page_size=PAGE_SIZE)


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _typed_errors(
    method: Callable[Concatenate[Mailbox, _P], _R],
) -> Callable[Concatenate[Mailbox, _P], _R]:
    """Raise SQLite's corruption errors met by ``method`` as :class:`CorruptFileError` (and
    remember them: the mailbox takes no new message from then on), and a write the disk refused
    as :class:`StorageError`, never as raw apsw errors."""

    @functools.wraps(method)
    def typed(self: Mailbox, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(self, *args, **kwargs)
        except db.CORRUPT_ERRORS as exc:
            self._note_corrupt(exc)
            raise db.corrupt_file_error(self.path, exc) from exc
        except db.REFUSED_WRITE_ERRORS as exc:
            raise db.refused_write_error(self.path, exc) from exc

    return typed


def _corruption_noted(
    method: Callable[Concatenate[Mailbox, _P], _R],
) -> Callable[Concatenate[Mailbox, _P], _R]:
    """For the step journal, read and written inside a turn: remember a bad page met (the
    mailbox takes no new message from then on) but raise SQLite's own error, which the turn
    loop turns into a :class:`CorruptFileError` that stops the actor (a torpor error raised
    inside a turn would count as the message's failure instead)."""

    @functools.wraps(method)
    def noted(self: Mailbox, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(self, *args, **kwargs)
        except db.CORRUPT_ERRORS as exc:
            self._note_corrupt(exc)
            raise

    return noted


class Mailbox:
    def __init__(
        self,
        path: Path,
        *,
        synchronous: str,
        type_name: str,
        key: str,
        image: Callable[[], bytes] | None = None,
        known_sound: db.CheckedFiles | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Open (creating if absent) an actor's mailbox; ``image``: create it as a copy
        of ``image()`` (called only when the file is absent). An existing file is checked for
        bad pages unless it is in ``known_sound`` (the runtime's set of the files it checked
        since it opened: it wrote them alone since; a bad page met later takes one out).
        ``clock``: epoch seconds for the times it records (the runtime's wall clock)."""
        self.path = path
        self._clock = clock
        self._known_sound = known_sound
        #: SQLite's error for the first bad page met: the mailbox takes no new message then.
        self.found_corrupt: BaseException | None = None
        created = image is not None and db.create_from_image(
            path, image, durable=synchronous == "FULL"
        )
        # Only this runtime's own connection ever opens a mailbox while the actor is awake.
        self.conn = db.connect(path, synchronous=synchronous, private=True, persist_wal=True)
        try:
            with db.corruption_as_error(path), db.full_disk_as_error(path):
                if not created and (known_sound is None or path not in known_sound):
                    # A send is acknowledged once it is in this file: never into a file with a
                    # bad page, wherever the page is (the turn loop would meet it later).
                    db.check_sound(self.conn, path)
                if known_sound is not None:
                    known_sound.add(path)

                def create(sql: str) -> None:
                    db.execute_script(self.conn, sql)
                    if sql is _MIGRATIONS[0]:
                        self._identify(type_name, key)

                db.migrate(self.conn, _MIGRATIONS, create, what=str(path))
                if created or db.scalar(self.conn, "SELECT count(*) FROM meta") == 0:
                    # A copy of the image not yet identified (a crash may fall in between).
                    self._identify(type_name, key)
        except BaseException:
            self.conn.close()
            raise

    @_typed_errors
    def data_was_created(self) -> bool:
        """Whether the actor's ``data.db`` was created beside this mailbox (from then on, a
        missing ``data.db`` is a lost file, not a new actor)."""
        return bool(db.scalar(self.conn, "SELECT count(*) FROM meta WHERE name = 'data'"))

    @_typed_errors
    def note_data_created(self) -> None:
        self.conn.execute("INSERT OR IGNORE INTO meta(name, value) VALUES ('data', 1)")

    def _identify(self, type_name: str, key: str) -> None:
        self.conn.execute(
            "INSERT INTO meta(name, value) VALUES ('type', ?), ('key', ?)", (type_name, key)
        )

    def close(self) -> None:
        db.close(self.conn, self.path, keep_wal=True)

    def _note_corrupt(self, exc: BaseException) -> None:
        if self.found_corrupt is None:
            self.found_corrupt = exc
        if self._known_sound is not None:
            self._known_sound.discard(self.path)

    def _refuse_if_corrupt(self) -> None:
        """A mailbox found corrupt acknowledges no new message: it may not keep it."""
        if self.found_corrupt is not None:
            raise CorruptFileError(
                f"{self.path} is corrupt ({self.found_corrupt}, met earlier): it takes no new "
                "message; restore it from a replica or backup",
                path=str(self.path),
            ) from self.found_corrupt

    # -- appending ------------------------------------------------------------------------

    @_typed_errors
    def append(self, method: str, payload: bytes) -> int:
        """Append a message with no sender cursor and no idempotency key; return its seq."""
        self._refuse_if_corrupt()
        self.conn.execute(
            "INSERT INTO inbox(method, payload, enqueued_at) VALUES (?, ?, ?)",
            (method, payload, self._clock()),
        )
        return int(self.conn.last_insert_rowid())

    @_typed_errors
    def append_deduplicated(
        self,
        method: str,
        payload: bytes,
        *,
        sender: str | None,
        sender_seq: int | None,
        idempotency_key: str | None,
    ) -> tuple[int | None, bool]:
        """Append unless a duplicate; return ``(seq, appended)``.

        A duplicate by idempotency key returns the first message's seq; a duplicate by sender
        cursor (a redelivered outbox row) returns ``None``.
        """
        self._refuse_if_corrupt()
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            fingerprint = b""
            if idempotency_key is not None:
                fingerprint = hashlib.blake2b(
                    method.encode() + b"\0" + payload, digest_size=16
                ).digest()
                for seq, first in conn.execute(
                    "SELECT seq, fingerprint FROM idempotency WHERE key = ?", (idempotency_key,)
                ):
                    conn.execute("COMMIT")
                    if first != fingerprint:
                        raise IdempotencyKeyReusedError(
                            f"idempotency_key {idempotency_key!r} was first used for another "
                            f"call (message {seq}); a key names exactly one call"
                        )
                    return int(seq), False
            if sender is not None:
                for (last,) in conn.execute(
                    "SELECT last_seq FROM senders WHERE sender = ?", (sender,)
                ):
                    if sender_seq is not None and sender_seq <= last:
                        conn.execute("COMMIT")
                        return None, False
            now = self._clock()
            conn.execute(
                "INSERT INTO inbox(sender, sender_seq, method, payload, idempotency_key, "
                "enqueued_at) VALUES (?, ?, ?, ?, ?, ?)",
                (sender, sender_seq, method, payload, idempotency_key, now),
            )
            seq = int(conn.last_insert_rowid())
            if idempotency_key is not None:
                conn.execute(
                    "INSERT INTO idempotency(key, seq, fingerprint, created_at) "
                    "VALUES (?, ?, ?, ?)",
                    (idempotency_key, seq, fingerprint, now),
                )
            if sender is not None:
                conn.execute(
                    "INSERT INTO senders(sender, last_seq) VALUES (?, ?) "
                    "ON CONFLICT(sender) DO UPDATE SET last_seq = excluded.last_seq",
                    (sender, sender_seq),
                )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return seq, True

    @_typed_errors
    def ensure_seq_above(self, applied_seq: int) -> None:
        """Never hand out a seq at or below ``applied_seq`` (a mailbox restored or lost alone
        would otherwise restart at 1, and new messages would pass for applied ones)."""
        last = db.scalar(self.conn, "SELECT seq FROM sqlite_sequence WHERE name = 'inbox'")
        if last is None or last < applied_seq:
            with self.conn:
                self.conn.execute("DELETE FROM sqlite_sequence WHERE name = 'inbox'")
                self.conn.execute(
                    "INSERT INTO sqlite_sequence(name, seq) VALUES ('inbox', ?)", (applied_seq,)
                )

    @_typed_errors
    def load(self, after_seq: int, limit: int, *, recovered: bool) -> list[Message]:
        rows: list[Any] = self.conn.execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM inbox WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        ).fetchall()
        return [
            Message(
                seq=row[0],
                sender=row[1],
                sender_seq=row[2],
                method=row[3],
                payload=row[4],
                idempotency_key=row[5],
                attempts=row[6],
                started=row[7],
                dead_lettered=bool(row[8]),
                recovered=recovered,
                cancelled=row[9],
                restarts=row[10],
                retry_at=row[11],
            )
            for row in rows
        ]

    @_typed_errors
    def record_start(self, seq: int) -> int:
        """Count durably that message ``seq`` is about to run; return the starts so far."""
        for (started,) in self.conn.execute(
            "UPDATE inbox SET started = started + 1 WHERE seq = ? RETURNING started", (seq,)
        ):
            return int(started)
        return 1

    @_typed_errors
    def record_failure(
        self, seq: int, retry_at: Callable[[int], float | None] = lambda _attempts: None
    ) -> tuple[int, float | None]:
        """Count one failed attempt of message ``seq`` durably, with the time it may run again
        (``retry_at(attempts)``, epoch seconds; ``None``: not again, or at once), in one
        transaction; return the attempts so far and that time."""
        with self.conn:
            attempts = 1
            for (count,) in self.conn.execute(
                "UPDATE inbox SET attempts = attempts + 1 WHERE seq = ? RETURNING attempts", (seq,)
            ):
                attempts = int(count)
            when = retry_at(attempts)
            if when is not None:
                self.conn.execute("UPDATE inbox SET retry_at = ? WHERE seq = ?", (when, seq))
        return attempts, when

    @_typed_errors
    def dead_letter(self, message: Message, error: BaseException | None, reason: str) -> None:
        """Keep a copy of a message given up on, and why (``reason``; idempotent by seq)."""
        if error is None:
            return  # the copy was made before a crash; INSERT OR IGNORE would keep it anyway
        text = "".join(_traceback.format_exception(error))
        self.conn.execute(
            "INSERT OR IGNORE INTO dead_letters(seq, sender, sender_seq, method, payload, "
            "idempotency_key, attempts, error_type, error_message, traceback, failed_at, "
            "reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                message.seq,
                message.sender,
                message.sender_seq,
                message.method,
                message.payload,
                message.idempotency_key,
                message.attempts,
                _qualified_name(type(error)),
                str(error),
                text,
                self._clock(),
                reason,
            ),
        )

    @_typed_errors
    def remove_applied(self, upto_seq: int, *, keep_journal: bool = False) -> None:
        """Delete inbox rows whose effects ``data.db`` has committed, with their journals
        (unless ``keep_journal``: a run's, read by its status and its restart) and the events
        their turns consumed."""
        with self.conn:
            self.conn.execute("DELETE FROM inbox WHERE seq <= ?", (upto_seq,))
            if not keep_journal:
                self.conn.execute("DELETE FROM journal WHERE seq <= ?", (upto_seq,))
            # A consumed event's idempotency key stays (without its payload) until
            # prune_idempotency, so that a retried signal is still recognised.
            self.conn.execute(
                "DELETE FROM events WHERE consumed_seq <= ? AND idempotency_key IS NULL",
                (upto_seq,),
            )
            self.conn.execute(
                "UPDATE events SET payload = x'' WHERE consumed_seq <= ? AND payload != x''",
                (upto_seq,),
            )

    # -- the step journal -----------------------------------------------------------------

    @_corruption_noted
    def journal(self, seq: int) -> dict[int, JournalRow]:
        """The journal of message ``seq``: step number -> row."""
        return {
            row[0]: JournalRow(*row)
            for row in self.conn.execute(
                "SELECT n, kind, name, status, value, until, attempts, recorded_at FROM journal "
                "WHERE seq = ? ORDER BY n",
                (seq,),
            )
        }

    @_corruption_noted
    def record(self, seq: int, rows: list[JournalRow], *, reset_start: bool = False) -> None:
        """Write journal rows (new, or replacing a waiting row) in one transaction;
        ``reset_start``: also forget the message's counted starts (it made progress)."""
        with self.conn:
            if reset_start:
                self.conn.execute("UPDATE inbox SET started = 0 WHERE seq = ?", (seq,))
            self.conn.executemany(
                "INSERT OR REPLACE INTO journal(seq, n, kind, name, status, value, until, "
                "attempts, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        seq,
                        r.n,
                        r.kind,
                        r.name,
                        r.status,
                        r.value,
                        r.until,
                        r.attempts,
                        r.recorded_at,
                    )
                    for r in rows
                ],
            )

    @_corruption_noted
    def consume_event(self, seq: int, row: JournalRow, name: str) -> bytes | None:
        """Take the oldest unconsumed event called ``name`` for step ``row`` of message
        ``seq`` and journal it as the step's result, in one transaction; ``None`` if none."""
        conn = self.conn
        with conn:
            found: list[Any] = conn.execute(
                "SELECT id, payload FROM events WHERE name = ? AND consumed_seq IS NULL "
                "ORDER BY id LIMIT 1",
                (name,),
            ).fetchall()
            for event_id, payload in found:
                conn.execute(
                    "UPDATE events SET consumed_seq = ?, consumed_n = ? WHERE id = ?",
                    (seq, row.n, event_id),
                )
                row.status, row.value = "done", payload
                conn.execute(
                    "INSERT OR REPLACE INTO journal(seq, n, kind, name, status, value, until, "
                    "attempts, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        seq,
                        row.n,
                        row.kind,
                        row.name,
                        row.status,
                        row.value,
                        row.until,
                        row.attempts,
                        self._clock(),
                    ),
                )
                return bytes(payload)
        return None

    @_typed_errors
    def add_event(self, name: str, payload: bytes, idempotency_key: str | None) -> bool:
        """Store an event (a signal); ``False`` if its idempotency key was seen already."""
        self._refuse_if_corrupt()
        cursor = self.conn.execute(
            "INSERT INTO events(name, payload, idempotency_key, sent_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(idempotency_key) DO NOTHING RETURNING id",
            (name, payload, idempotency_key, self._clock()),
        )
        return bool(cursor.fetchall())

    @_typed_errors
    def rewind(self, seq: int, from_n: int) -> int:
        """Forget the journal of message ``seq`` from step ``from_n`` on (events those steps
        consumed become unconsumed again); return the rows removed."""
        conn = self.conn
        with conn:
            conn.execute(
                "UPDATE events SET consumed_seq = NULL, consumed_n = NULL "
                "WHERE consumed_seq = ? AND consumed_n >= ?",
                (seq, from_n),
            )
            removed = conn.execute(
                "DELETE FROM journal WHERE seq = ? AND n >= ? RETURNING n", (seq, from_n)
            ).fetchall()
            conn.execute(
                "UPDATE inbox SET started = 0, attempts = 0, retry_at = NULL, "
                "restarts = restarts + 1 WHERE seq = ?",
                (seq,),
            )
        return len(removed)

    @_typed_errors
    def cancel(self, seq: int, reason: str) -> bool:
        """Mark message ``seq`` cancelled (durably); ``False`` if it is not in the inbox."""
        return bool(
            self.conn.execute(
                "UPDATE inbox SET cancelled = ? WHERE seq = ? RETURNING seq", (reason, seq)
            ).fetchall()
        )

    @_typed_errors
    def reset_start(self, seq: int) -> None:
        """A turn suspended in a durable wait did not kill the process: forget its starts."""
        self.conn.execute("UPDATE inbox SET started = 0 WHERE seq = ? AND started > 0", (seq,))

    @_typed_errors
    def next_wait(self) -> float | None:
        """The earliest deadline of a journaled durable wait (sleep, or an event's timeout)."""
        value = db.scalar(self.conn, "SELECT min(until) FROM journal WHERE status = 'waiting'")
        return None if value is None else float(value)

    @_typed_errors
    def unapplied(self, applied_seq: int) -> list[tuple[int, str, int, str | None, float]]:
        """``(seq, method, attempts, cancelled, enqueued_at)`` of messages not yet applied."""
        return [
            (int(r[0]), r[1], int(r[2]), r[3], float(r[4]))
            for r in self.conn.execute(
                "SELECT seq, method, attempts, cancelled, enqueued_at FROM inbox WHERE seq > ? "
                "AND NOT EXISTS (SELECT 1 FROM dead_letters d WHERE d.seq = inbox.seq) "
                "ORDER BY seq",
                (applied_seq,),
            )
        ]

    @_typed_errors
    def prune_idempotency(self, before: float, applied_seq: int) -> None:
        """Forget keys older than ``before`` whose message was applied (never a pending one)."""
        self.conn.execute(
            "DELETE FROM idempotency WHERE created_at < ? AND seq <= ?", (before, applied_seq)
        )
        self.conn.execute(
            "DELETE FROM events WHERE sent_at < ? AND consumed_seq <= ?", (before, applied_seq)
        )

    @_typed_errors
    def dead_letters(self) -> list[StoredDeadLetter]:
        return [
            StoredDeadLetter(*row)
            for row in self.conn.execute(
                "SELECT seq, sender, method, payload, idempotency_key, attempts, error_type, "
                "error_message, traceback, failed_at, reason FROM dead_letters ORDER BY seq"
            )
        ]

    @_typed_errors
    def replay_dead_letter(self, seq: int) -> Message | None:
        """Move a dead letter back into the inbox as a new message (new seq, no sender)."""
        conn = self.conn
        with conn:
            rows: list[Any] = conn.execute(
                "DELETE FROM dead_letters WHERE seq = ? RETURNING method, payload", (seq,)
            ).fetchall()
            if not rows:
                return None
            method, payload = rows[0]
            new_seq = self.append(method, payload)
        return Message(new_seq, None, None, method, payload, None, 0)

    @_typed_errors
    def drop_dead_letter(self, seq: int) -> bool:
        with self.conn:
            rows = self.conn.execute(
                "DELETE FROM dead_letters WHERE seq = ? RETURNING seq", (seq,)
            ).fetchall()
        return bool(rows)


def _qualified_name(cls: type) -> str:
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"
