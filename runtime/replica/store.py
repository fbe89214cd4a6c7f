"""The replica store interface: a small sync key-value API over object storage.

Replication (docs/explanation/replication.md) needs four requests and two conditions: ``get``,
``put`` (plain, create-only, or compare-and-swap on an ETag), ``delete``, and ``list`` for admin
tools only. Every implementation (:class:`~runtime.replica.directory_store.DirectoryStore`,
:class:`~runtime.replica.s3_store.S3Store`) passes the same conformance suite
(``tests/replica/test_replica_store.py``), so the replicator can be tested on either.

The calls block (boto3 is synchronous); the runtime makes them from worker threads, so every
store is safe to share between threads.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Iterator

import attrs

#: The longest key in bytes of UTF-8, the store's prefix included: S3's own limit, applied to
#: every store so that a key accepted by one is accepted by all.
MAX_KEY_BYTES = 1024

#: The longest part of a key between two ``/``, in bytes of UTF-8: S3-compatible stores that keep
#: objects as files (SeaweedFS, MinIO) refuse longer parts, as file systems refuse longer names.
MAX_KEY_PART_BYTES = 255

#: Keys listed per LIST request: S3 answers at most 1,000 keys a page, and the directory store
#: counts its listings the same way, so request counts compare across stores.
LIST_PAGE_KEYS = 1000

#: What ``put`` accepts as data.
Data = bytes | bytearray | memoryview


def check_key(key: object, *, prefix_bytes: int = 0) -> str:
    """Return ``key`` if it is a valid store key, else raise ``TypeError`` / ``ValueError``.

    A key is a non-empty ``/``-separated path of non-empty parts other than ``.`` and ``..``,
    each of at most :data:`MAX_KEY_PART_BYTES`, without control characters nor ``\\``, of at most
    :data:`MAX_KEY_BYTES` UTF-8 bytes together with the store's prefix (``prefix_bytes``, the
    separator included).
    """
    if not isinstance(key, str):
        raise TypeError(f"key must be a str (got {key!r} that is a {type(key).__name__})")
    problem = _key_problem(key)
    if problem is None:
        size = len(key.encode()) + prefix_bytes
        if size > MAX_KEY_BYTES:
            problem = f"is {size} bytes of UTF-8 with the store's prefix (at most {MAX_KEY_BYTES})"
    if problem is not None:
        raise ValueError(f"key {problem} (got {key!r})")
    return key


def check_prefix(prefix: object, *, what: str = "prefix") -> str:
    """Return a store's ``prefix`` without its trailing ``/``; ``""`` means the whole bucket."""
    if not isinstance(prefix, str):
        raise TypeError(f"{what} must be a str (got {prefix!r} that is a {type(prefix).__name__})")
    stripped = prefix.rstrip("/") if prefix.strip("/") else ""
    if stripped:
        problem = _key_problem(stripped)
        if problem is not None:
            raise ValueError(f"{what} {problem} (got {prefix!r})")
    return stripped


def check_list_prefix(prefix: object) -> str:
    """Return ``prefix`` if it can start keys: a string prefix, not a whole key."""
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str (got {prefix!r} that is a {type(prefix).__name__})")
    if prefix.startswith("/") or _has_bad_char(prefix):
        raise ValueError(
            f"prefix must not start with '/' nor hold control characters (got {prefix!r})"
        )
    return prefix


def _has_bad_char(text: str) -> bool:
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return True
    return False


def _key_problem(key: str) -> str | None:
    if not key:
        return "must not be empty"
    if _has_bad_char(key):
        return "must be valid UTF-8 text without control characters"
    if "\\" in key:
        return "must not contain '\\' (SeaweedFS, for one, reads it as '/')"
    parts = key.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return (
            "must be '/'-separated non-empty parts other than '.' and '..' "
            "(no leading, trailing or doubled '/')"
        )
    if any(len(part.encode()) > MAX_KEY_PART_BYTES for part in parts):
        return f"must not have a part between '/' longer than {MAX_KEY_PART_BYTES} bytes of UTF-8"
    return None


@attrs.frozen
class ReplicaStatistics:
    """Requests a replica store has made, by kind, from :meth:`ReplicaStore.statistics`.

    For S3 these are HTTP requests, retries included: what the provider bills. The directory
    store counts its calls the same way (one LIST per page of up to 1,000 keys).
    """

    gets: int
    puts: int
    deletes: int
    lists: int


class ReplicaStore(abc.ABC):
    """Where replicas live: keys, each holding bytes and an ETag; the interface of all stores.

    Two implementations ship, :class:`DirectoryStore` and :class:`S3Store`, and both pass one
    conformance suite. Keys are relative to the store's prefix and compare as text: ``a`` and
    ``a/b`` are two unrelated keys, as in S3. Every object has an ETag, an opaque string that
    changes when the content changes: compare ETags only for equality.

    Calls block; the runtime makes them from worker threads, and a store is safe to share
    between threads. :meth:`list` is for admin and retention tools: replication never lists in
    steady state.
    """

    def __init__(self) -> None:
        self._counts_lock = threading.Lock()
        self._counts = {"gets": 0, "puts": 0, "deletes": 0, "lists": 0}

    @abc.abstractmethod
    def get(self, key: str) -> tuple[bytes, str] | None:
        """Return ``(data, etag)`` for ``key``, or ``None`` if there is no such key."""

    @abc.abstractmethod
    def put(
        self, key: str, data: Data, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        """Store ``data`` under ``key`` and return its new ETag.

        ``if_none_match=True``: only if the key does not exist yet (create-only, for immutable
        segments). ``if_match=etag``: only if the object exists with that ETag (compare-and-swap,
        for manifests). When the condition does not hold, raise
        :class:`PreconditionFailedError` and change nothing. At most one of the two.
        """

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; removing a missing key is not an error (as in S3)."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Yield the keys starting with ``prefix`` (a string prefix), in UTF-8 byte order.

        For admin and retention tools only: a LIST costs more than a GET, scans a whole
        subtree, and replication never needs one in steady state.
        """

    def statistics(self) -> ReplicaStatistics:
        """The requests made so far, by kind."""
        with self._counts_lock:
            return ReplicaStatistics(**self._counts)

    def close(self) -> None:  # noqa: B027 (a store without resources needs no close)
        """Release connections and other resources; the store is not used afterwards."""

    def _count(self, kind: str, n: int = 1) -> None:
        with self._counts_lock:
            self._counts[kind] += n


def check_condition(if_match: object, if_none_match: object) -> None:
    """Raise ``TypeError`` / ``ValueError`` unless the conditions of a ``put`` make sense."""
    if if_match is not None and not isinstance(if_match, str):
        raise TypeError(
            f"if_match must be an ETag str or None "
            f"(got {if_match!r} that is a {type(if_match).__name__})"
        )
    if not isinstance(if_none_match, bool):
        raise TypeError(
            f"if_none_match must be a bool "
            f"(got {if_none_match!r} that is a {type(if_none_match).__name__})"
        )
    if if_match is not None and if_none_match:
        raise ValueError("pass at most one of if_match= and if_none_match=True")


def check_data(data: object) -> None:
    """Raise ``TypeError`` unless ``data`` is bytes-like."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(
            f"data must be bytes, bytearray or memoryview "
            f"(got {data!r:.40} that is a {type(data).__name__})"
        )
