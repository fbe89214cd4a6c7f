"""Read-only views of a runtime directory for operators (the ``torpor`` command).

Nothing here wakes an actor, and files are left as they were found: no new files, no changed
bytes. Measured with apsw 3.54.1: a connection opened with ``SQLITE_OPEN_READONLY`` on a WAL
database creates a ``-shm`` (and a missing ``-wal``) that it cannot remove at close, even through
the ``unix-excl`` VFS (that VFS keeps the WAL index in memory only for writable connections).
So files are opened read-write but ``query_only``, never created (no ``SQLITE_OPEN_CREATE``),
and without the checkpoint at close when they came with a ``-wal`` (``NO_CKPT_ON_CLOSE``): a log
is left byte for byte as found, and a log SQLite had to create is empty and removed at close.

Actor files are opened through ``unix-excl``, as the runtime opens them, so that an actor
awake in a running runtime (whose files that runtime holds locked) is reported as such
(:class:`ActorAwakeError`) rather than read mid-turn. While a reader holds a hibernated actor's
files (a few milliseconds), a runtime waking it waits (its busy timeout is seconds).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import decimal
import enum
import fcntl
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import attrs
import msgpack

from .. import codec
from ..errors import (
    ActorAwakeError,
    ActorError,
    NoSuchActorError,
    NotARuntimeError,
    WriteRefusedError,
)
from ..files.datastore import read_only_authorizer
from ..files.layout import DATA_FILE, DIRECTORY_FILE, LOCK_FILE, MAILBOX_FILE, actor_dir, actor_id
from ..typecheck import is_structured

#: How long a reader waits for an actor's files before calling it awake: the runtime holds
#: them for as long as the actor is awake, so waiting longer would not help.
ACTOR_BUSY_TIMEOUT_MS = 100
#: How long a reader waits for ``directory.db`` (the runtime writes it in short transactions).
DIRECTORY_BUSY_TIMEOUT_MS = 5_000
#: The byte range SQLite's unix VFS locks for readers (``SHARED_FIRST``, ``SHARED_SIZE``);
#: ``unix-excl`` holds a write lock on it for as long as a file is open.
_SHARED_FIRST = 0x40000000 + 2
_SHARED_SIZE = 510

STATUSES = ("awake", "hibernated", "stopped", "pending", "deleting")


# -- opening files quietly -------------------------------------------------------------------


@contextlib.contextmanager
def reading(path: Path, *, private: bool, busy_timeout_ms: int) -> Iterator[apsw.Connection]:
    """A ``query_only`` connection to an existing database that leaves its files as found.

    ``private``: open through ``unix-excl`` (actor files); ``SQLITE_BUSY`` on the first read
    then means another process holds the file open.
    """
    wal_existed = os.path.exists(f"{path}-wal")
    try:
        conn = apsw.Connection(
            str(path), flags=apsw.SQLITE_OPEN_READWRITE, vfs="unix-excl" if private else None
        )
    except apsw.CantOpenError as exc:
        raise FileNotFoundError(f"cannot open {path}: {exc}") from None
    try:
        conn.set_busy_timeout(busy_timeout_ms)
        conn.pragma("query_only", 1)
        if wal_existed:
            conn.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
        conn.execute("SELECT count(*) FROM sqlite_schema").fetchall()  # take the locks now
        yield conn
    finally:
        conn.close()


def _all(conn: apsw.Connection, sql: str, params: Any = None) -> list[Any]:
    """Every row of ``sql`` (typed ``Any``: the columns' types are the schema's)."""
    rows: list[Any] = conn.execute(sql, params).fetchall()
    return rows


def _actor_file(root: Path, type_name: str, key: str, name: str) -> Path:
    return actor_dir(root, actor_id(type_name, key)) / name


@contextlib.contextmanager
def _reading_actor(path: Path, type_name: str, key: str) -> Iterator[apsw.Connection]:
    try:
        with reading(path, private=True, busy_timeout_ms=ACTOR_BUSY_TIMEOUT_MS) as conn:
            yield conn
    except apsw.BusyError:
        raise ActorAwakeError(
            f"{type_name} {key!r} is awake in a running runtime; try again when it hibernates"
        ) from None


def check_root(root: Path) -> Path:
    if not (root / DIRECTORY_FILE).is_file():
        what = "does not exist" if not root.exists() else f"has no {DIRECTORY_FILE}"
        raise NotARuntimeError(f"{root} is not a torpor runtime directory ({what})")
    return root


@contextlib.contextmanager
def reading_directory(root: Path) -> Iterator[apsw.Connection]:
    check_root(root)
    with reading(
        root / DIRECTORY_FILE, private=False, busy_timeout_ms=DIRECTORY_BUSY_TIMEOUT_MS
    ) as conn:
        yield conn


def runtime_is_open(root: Path) -> bool:
    """Whether a process holds the runtime open (its ``LOCK``); the probe holds the lock for
    an instant only."""
    try:
        fd = os.open(root / LOCK_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases the lock
    return False


def actor_is_awake(root: Path, type_name: str, key: str) -> bool:
    """Whether another process holds the actor's ``data.db`` open through ``unix-excl`` (the
    runtime does while the actor is awake). Opens a descriptor, never SQLite."""
    try:
        fd = os.open(_actor_file(root, type_name, key, DATA_FILE), os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB, _SHARED_SIZE, _SHARED_FIRST)
    except OSError:  # EAGAIN or EACCES: a conflicting lock
        return True
    finally:
        os.close(fd)
    return False


# -- decoding stored values without the user's classes ---------------------------------------


@attrs.frozen
class StoredObject:
    """An instance of a registered class (attrs class, dataclass, pydantic model), read back
    without its class: its registered name and fields."""

    type_name: str
    fields: dict[str, Any]


@attrs.frozen
class StoredEnum:
    """A registered enum's member, read back without its class: its type's name and value."""

    type_name: str
    value: Any


@attrs.frozen
class StoredRef:
    """A ref stored in a message or a kv value."""

    type_name: str
    key: str


@attrs.frozen
class Undecodable:
    size: int
    error: str


def _ext(code: int, data: bytes) -> Any:
    if code == codec.EXT_TUPLE:
        return tuple(_unpack(data))
    if code == codec.EXT_SET:
        return set(_unpack(data))
    if code == codec.EXT_FROZENSET:
        return frozenset(_unpack(data))
    if code == codec.EXT_DATETIME:
        return _dt.datetime.fromisoformat(data.decode())
    if code == codec.EXT_DATE:
        return _dt.date.fromisoformat(data.decode())
    if code == codec.EXT_TIME:
        return _dt.time.fromisoformat(data.decode())
    if code == codec.EXT_TIMEDELTA:
        days, seconds, micros = _unpack(data)
        return _dt.timedelta(days=days, seconds=seconds, microseconds=micros)
    if code == codec.EXT_UUID:
        return uuid.UUID(bytes=data)
    if code == codec.EXT_BIGINT:
        return int.from_bytes(data, "big", signed=True)
    if code == codec.EXT_ATTRS:
        name, fields = _unpack(data)
        return StoredObject(name, fields)
    if code == codec.EXT_DECIMAL:
        return decimal.Decimal(data.decode())
    if code == codec.EXT_ENUM:
        name, value = _unpack(data)
        return StoredEnum(name, value)
    if code == codec.EXT_REF:
        type_name, key = _unpack(data)
        return StoredRef(type_name, key)
    return msgpack.ExtType(code, data)


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, ext_hook=_ext, raw=False, strict_map_key=False, use_list=True)


def decode(data: bytes | None) -> Any:
    """A stored payload, reply or kv value as plain Python values (:class:`StoredObject` for
    registered classes, :class:`StoredEnum` for enums, :class:`StoredRef` for refs);
    :class:`Undecodable` if it is not one."""
    if data is None:
        return None
    try:
        return _unpack(data)
    except Exception as exc:
        return Undecodable(len(data), str(exc))


def decode_call(payload: bytes) -> tuple[list[Any], dict[str, Any]] | Undecodable:
    """A message payload as ``(args, kwargs)``."""
    value = decode(payload)
    if isinstance(value, list) and len(value) == 2 and isinstance(value[1], dict):
        return list(value[0]), value[1]
    return value if isinstance(value, Undecodable) else Undecodable(len(payload), "not a call")


def to_json(value: Any) -> Any:
    """A decoded value as JSON data (bytes as base64, instants as ISO 8601)."""
    if type(value) in (bool, int, float, str) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, set | frozenset):
        return [to_json(v) for v in sorted(value, key=repr)]
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode()}
    if isinstance(value, _dt.datetime | _dt.date | _dt.time):
        return value.isoformat()
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, decimal.Decimal):
        return str(value)
    return _object_json(value)


def _object_json(value: Any) -> Any:
    """An instance of a class (stored, or live in a reply) as JSON data."""
    if isinstance(value, StoredObject):
        return {"$type": value.type_name, "fields": to_json(value.fields)}
    if isinstance(value, StoredEnum):
        return {"$enum": value.type_name, "value": to_json(value.value)}
    if isinstance(value, StoredRef):
        return {"$ref": [value.type_name, value.key]}
    if isinstance(value, Undecodable):
        return {"$undecodable": value.size, "error": value.error}
    if isinstance(value, enum.Enum):  # a live value (a reply), shown as a stored one
        return {"$enum": codec.default_name(type(value)), "value": to_json(value.value)}
    if is_structured(type(value)):
        fields = to_json(codec.fields_of(value))
        return {"$type": codec.default_name(type(value)), "fields": fields}
    if isinstance(value, bool | int | float | str):  # another subclass of a builtin
        return value
    return repr(value)


def show(value: Any, width: int = 60) -> str:
    """A decoded value as short text for a table cell."""
    text = _show(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _show(value: Any) -> str:
    if isinstance(value, StoredObject):
        inner = ", ".join(f"{k}={_show(v)}" for k, v in value.fields.items())
        return f"{value.type_name.rpartition('.')[2]}({inner})"
    if isinstance(value, StoredEnum):
        return f"{value.type_name.rpartition('.')[2]}({_show(value.value)})"
    if isinstance(value, StoredRef):
        return f"ref({value.type_name}, {value.key!r})"
    if isinstance(value, Undecodable):
        return f"<{value.size} undecodable bytes>"
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, tuple):
        return "(" + ", ".join(_show(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_show(k)}: {_show(v)}" for k, v in value.items()) + "}"
    if isinstance(value, _dt.datetime | _dt.date | _dt.time):
        return value.isoformat()
    return repr(value)


def show_call(method: str, payload: bytes, width: int = 60) -> str:
    call = decode_call(payload)
    if isinstance(call, Undecodable):
        text = f"{method}(<{call.size} undecodable bytes>)"
    else:
        args, kwargs = call
        parts = [_show(a) for a in args] + [f"{k}={_show(v)}" for k, v in kwargs.items()]
        text = f"{method}({', '.join(parts)})"
    return text if len(text) <= width else text[: width - 4] + "...)"


def call_json(method: str, payload: bytes) -> dict[str, Any]:
    call = decode_call(payload)
    if isinstance(call, Undecodable):
        return {"method": method, "args": None, "kwargs": None, "payload": to_json(call)}
    return {"method": method, "args": to_json(call[0]), "kwargs": to_json(call[1])}


# -- the directory ----------------------------------------------------------------------------


@attrs.frozen
class ActorRow:
    """One actor as ``directory.db`` knows it."""

    type: str
    key: str
    status: str  # awake | hibernated | stopped | pending | deleting (Ref.delete not finished)
    pending: bool
    wake_at: float | None
    created_at: float
    stopped: str | None
    parent: str | None


def list_actors(
    root: Path,
    *,
    type_name: str | None = None,
    prefix: str | None = None,
    status: str | None = None,
    limit: int | None = None,
) -> tuple[list[ActorRow], bool]:
    """Actors in ``(type, key)`` order, filtered; returns ``(rows, more)``, ``more`` telling
    whether ``limit`` cut the list. ``awake`` is known only while the runtime is open (by a
    lock probe on each listed actor's ``data.db``; SQLite never opens it)."""
    where, params = _filters(type_name, prefix)
    if status == "stopped":
        where.append("stopped IS NOT NULL")
    elif status is not None and status != "deleting":
        where.append("stopped IS NULL")
        if status == "pending":
            where.append("pending = 1")
    probe = runtime_is_open(root)
    rows: list[ActorRow] = []
    with reading_directory(root) as conn:
        sql = (
            f"SELECT type, key, pending, wake_at, created_at, stopped, parent, "
            f"{_deleting(conn)} FROM actors"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY type, key"
        )
        cursor: Any = conn.execute(sql, params)  # lazily: the directory may be large
        for type_, key, pending, wake_at, created_at, stopped, parent, deleting in cursor:
            if deleting:
                state = "deleting"
            elif stopped is not None:
                state = "stopped"
            elif probe and actor_is_awake(root, type_, key):
                state = "awake"
            else:
                state = "pending" if pending else "hibernated"
            if status is not None and state != status:
                continue
            if limit is not None and len(rows) == limit:
                return rows, True
            rows.append(
                ActorRow(type_, key, state, bool(pending), wake_at, created_at, stopped, parent)
            )
    return rows, False


def _deleting(conn: Any) -> str:
    """The directory's ``deleting`` column, or 0 in a directory from before deletion."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(actors)")}
    return "deleting" if "deleting" in columns else "0"


def _filters(type_name: str | None, prefix: str | None) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    if type_name is not None:
        where.append("type = ?")
        params.append(type_name)
    if prefix:
        where.append("substr(key, 1, ?) = ?")
        params += [len(prefix), prefix]
    return where, params


def find_actor(root: Path, type_name: str, key: str) -> ActorRow:
    """The directory's row for one actor; :class:`NoSuchActorError` if it has none."""
    with reading_directory(root) as conn:
        found = _all(
            conn,
            f"SELECT type, key, pending, wake_at, created_at, stopped, parent, {_deleting(conn)} "
            "FROM actors WHERE id = ?",
            (actor_id(type_name, key),),
        )
        known = [t for (t,) in conn.execute("SELECT DISTINCT type FROM actors ORDER BY type")]
    if not found:
        hint = "" if type_name in known else f" (types here: {', '.join(known) or 'none'})"
        raise NoSuchActorError(f"no actor {type_name} {key!r} in {root}{hint}")
    type_, key_, pending, wake_at, created_at, stopped, parent, deleting = found[0]
    if deleting:
        state = "deleting"
    elif stopped is not None:
        state = "stopped"
    elif runtime_is_open(root) and actor_is_awake(root, type_, key_):
        state = "awake"
    else:
        state = "pending" if pending else "hibernated"
    return ActorRow(type_, key_, state, bool(pending), wake_at, created_at, stopped, parent)


@attrs.frozen
class TypeCounts:
    type: str
    actors: int
    pending: int
    stopped: int
    with_timers: int


@attrs.frozen
class Summary:
    """What ``torpor status`` reports."""

    path: str
    open: bool
    runtime_id: str | None
    actors: int
    pending: int
    stopped: int
    with_timers: int
    next_wake_at: float | None
    by_type: tuple[TypeCounts, ...]
    disk_bytes: int
    directory_bytes: int
    actor_folders: int
    #: What the folder says of replication: the state the last hibernation saved.
    replication: str = "no state saved"


def summary(root: Path) -> Summary:
    """Counts from ``directory.db``, whether the runtime is open, and disk usage."""
    with reading_directory(root) as conn:
        by_type = tuple(
            TypeCounts(*row)
            for row in conn.execute(
                "SELECT type, count(*), sum(pending = 1 AND stopped IS NULL), "
                "sum(stopped IS NOT NULL), sum(wake_at IS NOT NULL) FROM actors "
                "GROUP BY type ORDER BY type"
            )
        )
        next_wake_at = _all(conn, "SELECT min(wake_at) FROM actors")[0][0]
        runtime_id: str | None = None
        with contextlib.suppress(apsw.SQLError):  # a directory from before runtime ids
            ids = _all(conn, "SELECT runtime_id FROM runtime")
            runtime_id = ids[0][0] if ids else None
    disk = directory_bytes = folders = 0
    for folder, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                size = os.stat(os.path.join(folder, name)).st_blocks * 512
                disk += size
                if name.startswith(DIRECTORY_FILE):
                    directory_bytes += size
        if DATA_FILE in files or MAILBOX_FILE in files:
            folders += 1
    return Summary(
        path=str(root),
        open=runtime_is_open(root),
        runtime_id=runtime_id,
        actors=sum(t.actors for t in by_type),
        pending=sum(t.pending for t in by_type),
        stopped=sum(t.stopped for t in by_type),
        with_timers=sum(t.with_timers for t in by_type),
        next_wake_at=next_wake_at,
        by_type=by_type,
        disk_bytes=disk,
        directory_bytes=directory_bytes,
        actor_folders=folders,
        replication=_runtime_replication(root),
    )


# -- one actor ---------------------------------------------------------------------------------


@attrs.frozen
class TableView:
    name: str
    rows: int
    columns: tuple[str, ...]
    first_rows: tuple[tuple[Any, ...], ...]


@attrs.frozen
class PendingMessage:
    seq: int
    method: str
    payload: bytes
    sender: str | None
    attempts: int
    cancelled: str | None
    enqueued_at: float


@attrs.frozen
class StepView:
    number: int
    kind: str
    name: str
    status: str
    attempts: int
    until: float | None
    recorded_at: float
    value: Any


@attrs.frozen
class TurnView:
    seq: int
    method: str
    status: str  # waiting | interrupted
    attempts: int
    cancelled: str | None
    steps: tuple[StepView, ...]


@attrs.frozen
class TimerView:
    name: str
    method: str
    payload: bytes
    due_at: float
    every: float | None
    cron: str | None


@attrs.frozen
class EventView:
    id: int
    name: str
    payload: bytes
    sent_at: float


@attrs.frozen
class DeadLetterView:
    seq: int
    method: str
    payload: bytes
    sender: str | None
    idempotency_key: str | None
    attempts: int
    error_type: str
    error_message: str
    traceback: str
    failed_at: float
    #: Why it was given up on (``DeadLetter.reason``); ``unknown`` in a file written before
    #: reasons were kept.
    reason: str = "unknown"


@attrs.frozen
class ActorReport:
    """What ``torpor inspect`` shows of one hibernated actor."""

    actor: ActorRow
    folder: str
    files: dict[str, int]
    applied_seq: int
    created: bool
    user_version: int
    tables: tuple[TableView, ...]
    kv: tuple[tuple[str, Any], ...]
    kv_count: int
    inbox: tuple[PendingMessage, ...]
    turns: tuple[TurnView, ...]
    events: tuple[EventView, ...]
    timers: tuple[TimerView, ...]
    dead_letters: tuple[DeadLetterView, ...]
    #: What the folder says of replication: the state the last hibernation saved.
    replication: str = "no state saved"


def inspect_actor(root: Path, type_name: str, key: str, *, rows: int = 5) -> ActorReport:
    """Read one actor's files without waking it; :class:`ActorAwakeError` if a running
    runtime has it awake."""
    actor = find_actor(root, type_name, key)
    folder = actor_dir(root, actor_id(type_name, key))
    data_path, mailbox_path = folder / DATA_FILE, folder / MAILBOX_FILE
    files = {}
    if folder.is_dir():
        files = {p.name: p.stat().st_size for p in sorted(folder.iterdir())}
    applied_seq, created, user_version = 0, False, 0
    tables: list[TableView] = []
    kv: list[tuple[str, Any]] = []
    kv_count = 0
    timers: list[TimerView] = []
    if data_path.exists():
        with _reading_actor(data_path, type_name, key) as conn:
            state = _all(conn, "SELECT type, key, applied_seq, created FROM _torpor_state")
            for stored_type, stored_key, applied_seq, created in state:  # noqa: B007 (one row)
                if (stored_type, stored_key) not in ((type_name, key), ("", "")):
                    raise ActorError(
                        f"{data_path} belongs to actor {stored_type} {stored_key!r}, not "
                        f"{type_name} {key!r}"
                    )
            user_version = int(conn.pragma("user_version"))
            names = [
                name
                for (name,) in conn.execute(
                    "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE "
                    "'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE '\\_torpor\\_%' ESCAPE '\\' "
                    "ORDER BY name"
                )
            ]
            for name in names:
                quoted = '"' + name.replace('"', '""') + '"'
                count = _all(conn, f"SELECT count(*) FROM {quoted}")[0][0]
                cursor = conn.execute(f"SELECT * FROM {quoted} LIMIT ?", (rows,))
                first = tuple(tuple(r) for r in cursor)
                columns = tuple(
                    c for (c,) in conn.execute("SELECT name FROM pragma_table_info(?)", (name,))
                )
                tables.append(TableView(name, count, columns, first))
            kv_count = _all(conn, "SELECT count(*) FROM _torpor_kv")[0][0]
            kv = [
                (k, decode(v))
                for k, v in conn.execute(
                    "SELECT key, value FROM _torpor_kv ORDER BY key LIMIT ?", (max(rows, 100),)
                )
            ]
            timers = [
                TimerView(*row)
                for row in conn.execute(
                    "SELECT name, method, payload, due_at, every, cron FROM _torpor_timers "
                    "ORDER BY due_at, name"
                )
            ]
    inbox: list[PendingMessage] = []
    turns: list[TurnView] = []
    events: list[EventView] = []
    letters: tuple[DeadLetterView, ...] = ()
    if mailbox_path.exists():
        with _reading_actor(mailbox_path, type_name, key) as conn:
            for row in _all(
                conn,
                "SELECT seq, method, payload, sender, attempts, cancelled, enqueued_at FROM inbox "
                "WHERE seq > ? AND NOT EXISTS (SELECT 1 FROM dead_letters d WHERE d.seq = "
                "inbox.seq) ORDER BY seq",
                (applied_seq,),
            ):
                message = PendingMessage(*row)
                inbox.append(message)
                steps = tuple(
                    StepView(n, kind, name, status, attempts, until, at, _step_value(status, v))
                    for n, kind, name, status, v, until, attempts, at in conn.execute(
                        "SELECT n, kind, name, status, value, until, attempts, recorded_at "
                        "FROM journal WHERE seq = ? ORDER BY n",
                        (message.seq,),
                    )
                )
                if steps:
                    waiting = any(s.status == "waiting" for s in steps)
                    turns.append(
                        TurnView(
                            message.seq,
                            message.method,
                            "waiting" if waiting else "interrupted",
                            message.attempts,
                            message.cancelled,
                            steps,
                        )
                    )
            events = [
                EventView(*row)
                for row in conn.execute(
                    "SELECT id, name, payload, sent_at FROM events WHERE consumed_seq IS NULL "
                    "ORDER BY id"
                )
            ]
            letters = _dead_letters(conn)
    return ActorReport(
        actor=actor,
        folder=str(folder),
        files=files,
        applied_seq=applied_seq,
        created=bool(created),
        user_version=user_version,
        tables=tuple(tables),
        kv=tuple(kv),
        kv_count=kv_count,
        inbox=tuple(inbox),
        turns=tuple(turns),
        events=tuple(events),
        timers=tuple(timers),
        dead_letters=letters,
        replication=_replication_status(folder),
    )


def _runtime_replication(root: Path) -> str:
    """What the runtime directory says of replication (no request): where it was restored
    from, if it was; an actor's state is in ``torpor inspect``."""
    import json

    try:
        origin = json.loads((root / "REPLICA_ORIGIN").read_text())
    except (OSError, ValueError):
        return "no restore recorded (an actor's state: torpor inspect)"
    at = origin.get("at") if isinstance(origin, dict) else None
    when = (
        time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at)) + "Z"
        if isinstance(at, int | float)
        else "its latest state"
    )
    source = origin.get("runtime") if isinstance(origin, dict) else "?"
    return f"restored from runtime {source} at {when}"


def _replication_status(folder: Path) -> str:
    """What the actor's folder says of its replication (no request to the store): the state
    its last hibernation saved, and copies superseded by a restore."""
    import json

    parts = []
    try:
        state = json.loads((folder / "replica.json").read_text())
    except (OSError, ValueError):
        state = None
    if isinstance(state, dict) and isinstance(state.get("files"), dict):
        for name, saved in sorted(state["files"].items()):
            manifest = saved.get("manifest") or {}
            snap = manifest.get("snapshot") or {}
            when = snap.get("created_at")
            stamp = (
                time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(when)) + "Z"
                if isinstance(when, int | float)
                else "?"
            )
            parts.append(
                f"{name.rsplit('/', 1)[-1]}: epoch {manifest.get('epoch')}, snapshot txid "
                f"{snap.get('txid')} at {stamp}, {len(manifest.get('history') or [])} earlier "
                "generation(s)"
            )
    superseded = sorted(p.name for p in folder.glob("superseded-*"))
    if superseded:
        parts.append(f"{len(superseded)} superseded local copy(ies) kept: {', '.join(superseded)}")
    if not parts:
        return "no state saved"  # not replicated, or not by this process since it woke
    return "; ".join(parts)


def _step_value(status: str, value: bytes | None) -> Any:
    decoded = decode(value)
    if status in ("failed", "retrying") and isinstance(decoded, list) and len(decoded) >= 3:
        # (a fourth item marks a terminal failure)
        shown = {"error_type": decoded[0], "error_message": decoded[1]}
        return {**shown, "terminal": True} if decoded[3:] == [True] else shown
    return decoded


def _dead_letters(conn: apsw.Connection) -> tuple[DeadLetterView, ...]:
    # (read-only: a file the runtime has not opened since reasons were kept has no column)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(dead_letters)")}
    reason = "reason" if "reason" in columns else "'unknown'"
    return tuple(
        DeadLetterView(*row)
        for row in conn.execute(
            "SELECT seq, method, payload, sender, idempotency_key, attempts, error_type, "
            f"error_message, traceback, failed_at, {reason} FROM dead_letters ORDER BY seq"
        )
    )


def dead_letters(root: Path, type_name: str, key: str) -> tuple[DeadLetterView, ...]:
    """An actor's dead letters, oldest first, read without waking it."""
    find_actor(root, type_name, key)
    path = _actor_file(root, type_name, key, MAILBOX_FILE)
    if not path.exists():
        return ()
    with _reading_actor(path, type_name, key) as conn:
        return _dead_letters(conn)


def applied_seq(root: Path, type_name: str, key: str) -> int:
    """The actor's applied-message cursor (0 if it has no ``data.db`` yet)."""
    path = _actor_file(root, type_name, key, DATA_FILE)
    if not path.exists():
        return 0
    with _reading_actor(path, type_name, key) as conn:
        return int(_all(conn, "SELECT applied_seq FROM _torpor_state")[0][0])


# -- ad-hoc SQL across actors -------------------------------------------------------------------


@attrs.frozen
class QueryResult:
    """One actor's rows, or why it was skipped."""

    key: str
    columns: tuple[str, ...] = ()
    rows: tuple[tuple[Any, ...], ...] = ()
    skipped: str | None = None
    error: str | None = None


def query_actors(
    root: Path, sql: str, *, type_name: str, prefix: str | None = None
) -> Iterator[QueryResult]:
    """Run ``sql`` read-only against the ``data.db`` of every hibernated actor of
    ``type_name`` (whose key starts with ``prefix``), in key order. Awake actors and actors
    without a ``data.db`` yet are skipped; an actor whose query fails (a table it lacks) gives
    its error; a statement that would write raises :class:`WriteRefusedError`, and a type no
    actor has :class:`NoSuchActorError`."""
    where, params = _filters(type_name, prefix)
    with reading_directory(root) as conn:
        keys = [
            key
            for (key,) in conn.execute(
                "SELECT key FROM actors WHERE " + " AND ".join(where) + " ORDER BY key", params
            )
        ]
        if not keys and not _all(conn, "SELECT 1 FROM actors WHERE type = ?", (type_name,)):
            known = [t for (t,) in conn.execute("SELECT DISTINCT type FROM actors ORDER BY type")]
            raise NoSuchActorError(
                f"no actor of type {type_name} in {root} (types here: {', '.join(known) or 'none'})"
            )
    for key in keys:
        path = _actor_file(root, type_name, key, DATA_FILE)
        if not path.exists():
            yield QueryResult(key, skipped="no data.db yet (never woken)")
            continue
        try:
            with _reading_actor(path, type_name, key) as actor_conn:
                actor_conn.authorizer = read_only_authorizer
                cursor = actor_conn.execute(sql)
                try:
                    columns = tuple(c[0] for c in cursor.description)
                except apsw.ExecutionCompleteError:  # no rows (columns unknown then)
                    columns = ()
                found = tuple(tuple(r) for r in cursor)
            yield QueryResult(key, columns, found)
        except ActorAwakeError:
            yield QueryResult(key, skipped="awake in a running runtime")
        except apsw.AuthError:
            raise WriteRefusedError(
                f"only read-only queries run here, and this statement writes, attaches or "
                f"controls transactions: {sql!r}"
            ) from None
        except apsw.ReadOnlyError:
            raise WriteRefusedError(
                f"only read-only queries run here, and this statement writes: {sql!r}"
            ) from None
        except apsw.SQLError as exc:
            yield QueryResult(key, error=str(exc))
