"""What a run (DESIGN §9) keeps in its actor's own two files, beside the runtime's tables.

In ``mailbox.db`` (written outside the turn's transaction, each in a short one of its own):

- ``run_start``: the run's start, one row: the seq of the message that runs it (a restart moves
  it to a new message), a fingerprint of its arguments (a second start with the same id and
  other arguments is refused), and who started it (the actor the outcome goes to).
- ``run_values``: the latest value of each name that ``self.set_value`` recorded.

In ``data.db`` (inside the turn's transaction, so that "done" and the turn's effects commit
together): ``_torpor_run``, the run's outcome.

The tables are created when first needed: an actor that never runs or starts anything has none.
"""

from __future__ import annotations

from typing import Any

import apsw
import attrs

from .mailbox import JournalRow


def outcome_event(type_name: str, run_id: str) -> str:
    """The event that carries a run's outcome to its starter's mailbox."""
    return f"run:{type_name}:{run_id}"


def value_event(type_name: str, run_id: str, name: str = "") -> str:
    """The event that carries a run's value ``name`` to its starter's mailbox (without
    ``name``: the prefix of them all)."""
    return f"value:{type_name}:{run_id}:{name}"


def value_events_of(event: str) -> str | None:
    """For a run's outcome event, the prefix of that run's value events (its outcome ends the
    waits for values it never recorded); ``None`` for any other event."""
    if not event.startswith("run:"):
        return None
    return f"value:{event[4:]}:"


_MAILBOX_TABLES = """
CREATE TABLE IF NOT EXISTS run_start(
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    fingerprint BLOB NOT NULL,
    parent TEXT,
    started_at REAL NOT NULL,
    restarts INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS run_values(
    name TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    set_at REAL NOT NULL
) WITHOUT ROWID;
"""

_DATA_TABLE = """
CREATE TABLE IF NOT EXISTS _torpor_run(
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    status TEXT NOT NULL,
    value BLOB NOT NULL,
    finished_at REAL NOT NULL
)
"""

#: The idempotency key carried by a run's start message: marks it as a run's, and makes the
#: turn store its outcome. A restart's message carries ``<key>:r<n>``.
RUN_KEY_PREFIX = "torpor-run:"


@attrs.frozen
class Start:
    """A run's ``run_start`` row."""

    seq: int
    fingerprint: bytes
    parent: str | None
    started_at: float
    restarts: int


@attrs.frozen
class Outcome:
    """A run's ``_torpor_run`` row: ``status`` done, failed or cancelled; ``value`` the encoded
    result (done) or ``[type, message, traceback]`` (failed, cancelled)."""

    seq: int
    status: str
    value: bytes
    finished_at: float


def _has_table(conn: apsw.Connection, name: str) -> bool:
    return bool(
        conn.execute(
            "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?", (name,)
        ).fetchall()
    )


def ensure_mailbox_tables(conn: apsw.Connection) -> None:
    if not _has_table(conn, "run_values"):
        with conn:
            for statement in _MAILBOX_TABLES.split(";"):
                if statement.strip():
                    conn.execute(statement)


def read_start(conn: apsw.Connection) -> Start | None:
    if not _has_table(conn, "run_start"):
        return None
    for row in conn.execute(
        "SELECT seq, fingerprint, parent, started_at, restarts FROM run_start WHERE id = 1"
    ):
        return Start(int(row[0]), bytes(row[1]), row[2], float(row[3]), int(row[4]))
    return None


def append_start(
    conn: apsw.Connection,
    method: str,
    payload: bytes,
    fingerprint: bytes,
    parent: str | None,
    run_id: str,
    now: float,
) -> int:
    """Append the start message and the ``run_start`` row in one transaction; its seq."""
    ensure_mailbox_tables(conn)
    with conn:
        conn.execute(
            "INSERT INTO inbox(method, payload, idempotency_key, enqueued_at) VALUES (?, ?, ?, ?)",
            (method, payload, f"{RUN_KEY_PREFIX}{run_id}", now),
        )
        seq = int(conn.last_insert_rowid())
        conn.execute(
            "INSERT INTO run_start(id, seq, fingerprint, parent, started_at) "
            "VALUES (1, ?, ?, ?, ?)",
            (seq, fingerprint, parent, now),
        )
    return seq


def restart(
    conn: apsw.Connection, run_id: str, from_step: int, now: float
) -> tuple[int, str, bytes, str] | None:
    """Move a finished run's start message back into the inbox as a new message, with the
    journal rows before ``from_step``; its ``(seq, method, payload, idempotency key)``
    (``None``: no dead letter to restart)."""
    start = read_start(conn)
    if start is None:
        return None
    with conn:
        rows: list[Any] = conn.execute(
            "DELETE FROM dead_letters WHERE seq = ? RETURNING method, payload", (start.seq,)
        ).fetchall()
        if not rows:
            return None
        method, payload = rows[0]
        restarts = start.restarts + 1
        key = f"{RUN_KEY_PREFIX}{run_id}:r{restarts}"
        conn.execute(
            "INSERT INTO inbox(method, payload, idempotency_key, enqueued_at) VALUES (?, ?, ?, ?)",
            (method, payload, key, now),
        )
        seq = int(conn.last_insert_rowid())
        conn.execute(
            "INSERT INTO journal(seq, n, kind, name, status, value, until, attempts, "
            "recorded_at) SELECT ?, n, kind, name, status, value, until, attempts, recorded_at "
            "FROM journal WHERE seq = ? AND n < ? AND status != 'waiting'",
            (seq, start.seq, from_step),
        )
        conn.execute("DELETE FROM journal WHERE seq = ?", (start.seq,))
        conn.execute("UPDATE run_start SET seq = ?, restarts = ? WHERE id = 1", (seq, restarts))
    return seq, str(method), bytes(payload), key


def set_value(
    conn: apsw.Connection, seq: int, row: JournalRow, name: str, value: bytes, now: float
) -> None:
    """Record value ``name`` and the journal row that says it was recorded, in one
    transaction (a replay finds the row and records nothing again)."""
    ensure_mailbox_tables(conn)
    with conn:
        conn.execute(
            "INSERT INTO run_values(name, value, set_at) VALUES (?, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = excluded.value, set_at = excluded.set_at",
            (name, value, now),
        )
        conn.execute(
            "INSERT OR REPLACE INTO journal(seq, n, kind, name, status, value, until, attempts, "
            "recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (seq, row.n, row.kind, row.name, row.status, None, None, 0, now),
        )


def get_value(conn: apsw.Connection, name: str) -> bytes | None:
    if not _has_table(conn, "run_values"):
        return None
    for (value,) in conn.execute("SELECT value FROM run_values WHERE name = ?", (name,)):
        return bytes(value)
    return None


def drop_unconsumed_events(conn: apsw.Connection, name: str, prefix: str) -> None:
    """Delete the unconsumed events called ``name`` or starting with ``prefix``: a run's
    outcome and values, delivered to its starter as events for a turn that waits for them,
    once ``on_run_done`` has delivered the outcome (a later wait reads the run's files)."""
    conn.execute(
        "DELETE FROM events WHERE consumed_seq IS NULL AND idempotency_key LIKE '%#%' "
        "AND (name = ? OR substr(name, 1, ?) = ?)",
        (name, len(prefix), prefix),
    )


def record_outcome(execute: Any, seq: int, status: str, value: bytes, now: float) -> None:
    """Record the outcome inside the turn's transaction (``execute``: the data store's
    trusted ``_exec``, which may write ``_torpor_*`` tables)."""
    execute(_DATA_TABLE)
    execute(
        "INSERT OR REPLACE INTO _torpor_run(id, seq, status, value, finished_at) "
        "VALUES (1, ?, ?, ?, ?)",
        (seq, status, value, now),
    )


def has_outbox_rows(conn: apsw.Connection) -> bool:
    """Whether the run's ``data.db`` keeps outbox rows (delivered or not: they are deleted
    lazily), for a deletion that must let them leave first."""
    if not _has_table(conn, "_torpor_outbox"):
        return False
    return any(True for _row in conn.execute("SELECT 1 FROM _torpor_outbox LIMIT 1"))


def read_outcome(conn: apsw.Connection) -> Outcome | None:
    if not _has_table(conn, "_torpor_run"):
        return None
    for row in conn.execute("SELECT seq, status, value, finished_at FROM _torpor_run"):
        return Outcome(int(row[0]), str(row[1]), bytes(row[2]), float(row[3]))
    return None
