"""The runtime's replication log: one immutable object per flush round, for every file at once.

A runtime ships the committed WAL frames of all its dirty files (every awake actor's
``data.db`` and ``mailbox.db``, and ``directory.db``) together: one round, one object, one PUT,
however many actors changed. A manifest per file (``replicator.py``) would cost a PUT per file
per flush, which is what makes per-database replication expensive across many small databases.

**Objects**, under the writer's session prefix ``runtimes/<runtime id>/<session>``::

    <session>/log/<seq, 16 digits>   one round: an index, then the encoded segments
    <session>/fences                 JSON: the files other writers took from this session

Log objects are written with ``If-None-Match: *`` at consecutive sequence numbers from 1, so a
reader finds them without listing: it reads ``seq``, ``seq + 1``, ... until one is missing. A
file's manifest says from which sequence number its chain continues in its writer's log
(``Manifest.tail``); a restore follows that tail.

**Fencing.** A writer that takes a file over (a higher epoch in its manifest) first adds the file
to the previous writer's ``fences`` object, then reads that writer's log to its end. The previous
writer reads its ``fences`` after each round's PUT and acknowledges nothing of a fenced file, so
anything it acknowledged is in the log before the newcomer's read, and anything after that read
is unacknowledged and ignored (the newcomer's manifest closes the chain where it read it).
"""

from __future__ import annotations

import contextlib
import json
import struct
from collections.abc import Sequence
from typing import Any

import attrs

from ..errors import PreconditionFailedError
from .store import ReplicaStore, check_key

LOG_MAGIC = b"TPLG"
LOG_VERSION = 1
_HEAD = struct.Struct(">4sHI")  # magic, version, index length

#: Attempts at adding a fence before giving up (each one is a GET and a conditional PUT).
FENCE_ATTEMPTS = 20


class LogFormatError(ValueError):
    """Bytes that are not a log object of this version."""


@attrs.frozen
class LogEntry:
    """One file's segment in a log object: where it is, and what the manifest needs of it."""

    name: str
    epoch: int
    offset: int
    length: int
    checksum: str
    salt1: int
    salt2: int
    first_frame: int
    end_frame: int
    db_size: int


@attrs.frozen
class LogObject:
    """The index of one round: who wrote it, when, and the segments in it."""

    session: str
    seq: int
    at: float
    entries: tuple[LogEntry, ...]


def session_prefix(runtime_id: str, session: str) -> str:
    return check_key(f"runtimes/{runtime_id}/{session}")


def log_key(prefix: str, seq: int) -> str:
    return check_key(f"{prefix}/log/{seq:016d}")


def fences_key(prefix: str) -> str:
    return check_key(f"{prefix}/fences")


def encode_log(
    session: str, seq: int, at: float, parts: Sequence[tuple[dict[str, Any], bytes]]
) -> tuple[bytes, list[LogEntry]]:
    """The bytes of a log object holding ``parts`` (a segment's description without offset and
    length, and its encoded bytes), and the entries with their offsets in the object."""
    body_offsets = []
    offset = 0
    for _, data in parts:
        body_offsets.append(offset)
        offset += len(data)
    described = [
        {**meta, "offset": off, "length": len(data)}
        for (meta, data), off in zip(parts, body_offsets, strict=True)
    ]
    index = json.dumps(
        {"session": session, "seq": seq, "at": at, "entries": described},
        separators=(",", ":"),
        sort_keys=True,
    ).encode()
    head = _HEAD.pack(LOG_MAGIC, LOG_VERSION, len(index)) + index
    entries = [LogEntry(**{**d, "offset": d["offset"] + len(head)}) for d in described]
    return b"".join([head, *(data for _, data in parts)]), entries


def decode_log(data: bytes) -> LogObject:
    """The index of a log object (entries' offsets are from the start of ``data``)."""
    if len(data) < _HEAD.size:
        raise LogFormatError(f"a log object of {len(data)} bytes is too short")
    magic, version, length = _HEAD.unpack_from(data)
    if magic != LOG_MAGIC:
        raise LogFormatError("not a torpor log object (bad magic)")
    if version != LOG_VERSION:
        hint = "upgrade torpor to read it" if version > LOG_VERSION else "an older torpor wrote it"
        raise LogFormatError(
            f"log object version {version} (this version reads {LOG_VERSION}): {hint}"
        )
    start = _HEAD.size + length
    try:
        doc = json.loads(data[_HEAD.size : start])
        entries = tuple(LogEntry(**{**e, "offset": e["offset"] + start}) for e in doc["entries"])
        return LogObject(str(doc["session"]), int(doc["seq"]), float(doc["at"]), entries)
    except (ValueError, KeyError, TypeError) as exc:
        raise LogFormatError(f"the index of a log object is not valid ({exc!r})") from exc


def scrub(store: ReplicaStore, key: str, name: str) -> bool:
    """Overwrite with zeros, in log object ``key``, the bytes of every segment of the file
    ``name`` (a deleted actor's file), keeping the object's size, index and every other
    file's bytes exactly as they were (their manifests' offsets and checksums stay true).
    Conditional on the ETag read (an object deleted or changed meanwhile is left alone).
    Returns whether it wrote; a missing object, or one already scrubbed, needs no write."""
    got = store.get(key)
    if got is None:
        return False
    data, etag = got
    try:
        index = decode_log(data)
    except LogFormatError:
        return False  # (not a log object: nothing of this format to scrub)
    scrubbed = bytearray(data)
    for entry in index.entries:
        if entry.name == name:
            scrubbed[entry.offset : entry.offset + entry.length] = bytes(entry.length)
    if scrubbed == data:
        return False
    with contextlib.suppress(PreconditionFailedError):
        store.put(key, bytes(scrubbed), if_match=etag)
        return True
    return False


def read_fences(store: ReplicaStore, prefix: str) -> dict[str, int]:
    """The files fenced out of the session under ``prefix``: name -> the newcomer's epoch."""
    got = store.get(fences_key(prefix))
    if got is None:
        return {}
    return _decode_fences(got[0])


def add_fence(store: ReplicaStore, prefix: str, name: str, epoch: int) -> None:
    """Record that ``name`` was taken from the session under ``prefix`` at ``epoch``."""
    key = fences_key(prefix)
    for _ in range(FENCE_ATTEMPTS):
        got = store.get(key)
        fences = _decode_fences(got[0]) if got else {}
        if fences.get(name, 0) >= epoch:
            return
        fences[name] = epoch
        body = json.dumps(fences, separators=(",", ":"), sort_keys=True).encode()
        with contextlib.suppress(PreconditionFailedError):
            store.put(key, body, if_match=got[1] if got else None, if_none_match=got is None)
            return
    raise PreconditionFailedError(
        f"could not add a fence to {key!r} in {FENCE_ATTEMPTS} attempts (too many writers)",
        key=key,
    )


def _decode_fences(data: bytes) -> dict[str, int]:
    try:
        doc = json.loads(data)
        return {str(k): int(v) for k, v in doc.items()}
    except (ValueError, AttributeError, TypeError) as exc:
        raise LogFormatError(f"a fences object is not valid ({exc!r})") from exc
