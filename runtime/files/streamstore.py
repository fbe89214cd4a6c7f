"""What an actor's stream keeps in its ``mailbox.db``: entries by offset, and open attempts.

The stream lives in ``mailbox.db``, never in ``data.db``: a turn holds ``data.db``'s write
transaction for its whole duration, and a rollback there would drop the chunks a step emitted.
``mailbox.db`` takes short transactions at any time, is replicated with the actor, and can be
read while the actor hibernates. ``runtime/streams.py`` is the only writer, one transaction per
group commit; readers read committed pages by offset and keep no transaction open.
"""

from __future__ import annotations

from typing import Any

import apsw

#: One stored entry: ``(offset, topic, kind, step, step_key, attempt, item, at)``.
Row = tuple[int, str, str, str | None, str | None, int | None, bytes | None, float]

#: A write to make: ``(topic, kind, step, step_key, attempt, item, at)``.
NewRow = tuple[str, str, str | None, str | None, int | None, bytes | None, float]

#: An attempt that emitted into a topic: ``(seq, n, attempt, topic, step, step_key)``.
Attempt = tuple[int, int, int, str, str, str]

_COLUMNS = '"offset", topic, kind, step, step_key, attempt, item, at'


def write(
    conn: apsw.Connection,
    rows: list[NewRow],
    opened: list[Attempt],
    closed: list[tuple[int, int, int]],
    published_upto: int | None,
) -> list[Row]:
    """Append ``rows``, note the attempts ``opened`` and forget the ``closed`` ones
    ``(seq, n, attempt)``, and record the last relayed published item, in one transaction;
    return the rows as stored (with their offsets)."""
    stored: list[Row] = []
    with conn:
        for row in rows:
            conn.execute(
                "INSERT INTO stream(topic, kind, step, step_key, attempt, item, at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                row,
            )
            stored.append((int(conn.last_insert_rowid()), *row))
        if opened:
            conn.executemany(
                "INSERT OR IGNORE INTO stream_attempts(seq, n, attempt, topic, step, step_key) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                opened,
            )
        if closed:
            conn.executemany(
                "DELETE FROM stream_attempts WHERE seq = ? AND n = ? AND attempt = ?", closed
            )
        if published_upto is not None:
            conn.execute(
                "INSERT OR REPLACE INTO meta(name, value) VALUES ('published', ?)",
                (published_upto,),
            )
    return stored


def relayed_upto(conn: apsw.Connection) -> int:
    """The last published item of ``data.db`` relayed into the stream (0: none)."""
    for (value,) in conn.execute("SELECT value FROM meta WHERE name = 'published'"):
        return int(value)
    return 0


def open_attempts(conn: apsw.Connection) -> list[Attempt]:
    """Attempts that emitted chunks and whose end was not recorded (a process died)."""
    rows: list[Any] = conn.execute(
        "SELECT seq, n, attempt, topic, step, step_key FROM stream_attempts ORDER BY seq, n"
    ).fetchall()
    return [tuple(r) for r in rows]


def read(conn: apsw.Connection, topic: str, after: int, upto: int | None, limit: int) -> list[Row]:
    """Entries of ``topic`` with ``after < offset <= upto`` (no bound if ``None``), oldest
    first, at most ``limit``."""
    if upto is None:
        rows: list[Any] = conn.execute(
            f'SELECT {_COLUMNS} FROM stream WHERE topic = ? AND "offset" > ? '
            'ORDER BY "offset" LIMIT ?',
            (topic, after, limit),
        ).fetchall()
    else:
        rows = conn.execute(
            f'SELECT {_COLUMNS} FROM stream WHERE topic = ? AND "offset" > ? AND "offset" <= ? '
            'ORDER BY "offset" LIMIT ?',
            (topic, after, upto, limit),
        ).fetchall()
    return [tuple(r) for r in rows]


def last_offset(conn: apsw.Connection) -> int:
    """The last offset ever given (0: none): offsets are never given twice, even once pruned."""
    for (value,) in conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'stream'"):
        return int(value)
    return 0


def prune(conn: apsw.Connection, topics: set[str], max_entries: int, before: float) -> int:
    """Keep the newest ``max_entries`` of each of ``topics`` and drop entries older than
    ``before`` (epoch seconds; the oldest first, as offsets follow time); return the count."""
    removed = 0
    with conn:
        for topic in topics:
            for (cut,) in conn.execute(
                'SELECT "offset" FROM stream WHERE topic = ? ORDER BY "offset" DESC '
                "LIMIT 1 OFFSET ?",
                (topic, max_entries),
            ):
                removed += len(
                    conn.execute(
                        'DELETE FROM stream WHERE topic = ? AND "offset" <= ? RETURNING 1',
                        (topic, cut),
                    ).fetchall()
                )
        old = conn.execute(
            'SELECT max("offset") FROM (SELECT "offset", at FROM stream ORDER BY "offset" '
            "LIMIT 1024) WHERE at < ?",
            (before,),
        ).fetchall()
        if old and old[0][0] is not None:
            removed += len(
                conn.execute(
                    'DELETE FROM stream WHERE "offset" <= ? AND at < ? RETURNING 1',
                    (old[0][0], before),
                ).fetchall()
            )
    return removed
