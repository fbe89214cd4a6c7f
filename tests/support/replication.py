"""Helpers for ``tests/replica/test_replication.py``: a fault-injecting store, real-time trio tests,
bounded waits, and reading actor files the way a user inspecting a restore would.

The replication tests run on trio's real clock, not the ``MockClock`` that ``tests/conftest.py``
gives ``async def`` tests: the store is called from worker threads, and a clock that jumps
whenever every task waits (as it does while a thread works) would fire the runtime's timeouts
and backoffs in the middle of a request. Every wait is bounded (``wait_until``).
"""

from __future__ import annotations

import functools
import shutil
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, ParamSpec

import apsw
import trio

import actors
from runtime.files.layout import actor_dir, actor_id
from runtime.replica.store import Data

P = ParamSpec("P")


def real_time(fn: Callable[P, Awaitable[None]]) -> Callable[P, None]:
    """Make an async test a plain one that runs under ``trio.run`` with the real clock.

    ``functools.wraps`` keeps the signature, so pytest still passes the fixtures."""

    @functools.wraps(fn)
    def test(*args: P.args, **kwargs: P.kwargs) -> None:
        async def main() -> None:
            await fn(*args, **kwargs)

        trio.run(main)

    return test


async def wait_until(
    condition: Callable[[], bool], what: str, *, within: float = 10.0, step: float = 0.01
) -> float:
    """Poll ``condition`` every ``step`` seconds until it holds; fail after ``within`` seconds
    (real time). Returns the seconds it took."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > within:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await trio.sleep(step)
    return time.monotonic() - start


def replication(rt: actors.Runtime) -> actors.ReplicationStatistics:
    stats = rt.statistics().replication
    assert stats is not None, "the runtime has no replica"
    return stats


async def caught_up(rt: actors.Runtime, *, within: float = 10.0) -> None:
    """Wait until every commit of the runtime is in the replica (files_behind == 0)."""
    await wait_until(
        lambda: replication(rt).files_behind == 0,
        "files_behind == 0",
        within=within,
    )


async def all_hibernated(rt: actors.Runtime, *, within: float = 10.0) -> None:
    """Wait until no actor is awake and the hibernation snapshots are in the replica."""
    await wait_until(
        lambda: rt.statistics().awake == 0 and replication(rt).files_behind == 0,
        "every actor hibernated and replicated",
        within=within,
    )


def folder_of(root: Path, type_name: str, key: str) -> Path:
    return actor_dir(root, actor_id(type_name, key))


def remove_actor_files(folder: Path) -> list[str]:
    """Delete everything in an actor's folder (databases, WALs, saved replica state, and any
    ``superseded-*`` folder), as a lost disk would; return the names removed."""
    removed = []
    for path in sorted(folder.iterdir()):
        removed.append(path.name)
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    return removed


def read_rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` run read-only on a database file (e.g. one just restored)."""
    conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return [tuple(row) for row in conn.execute(sql)]
    finally:
        conn.close()


class FlakyStore(actors.ReplicaStore):
    """A store that delegates to another one, counts every request it is asked for, and fails
    each with :class:`actors.ReplicaUnavailableError` while ``down`` is true (as an
    unreachable S3 does after the client's retries)."""

    #: Seconds every request takes (a remote store's latency), and the extra seconds a request
    #: takes to fail while ``down`` (a client's retries against a throttling store). Both run
    #: in the replication's worker thread that makes the request.
    latency = 0.0
    failing_latency = 0.0

    def __init__(self, inner: actors.ReplicaStore) -> None:
        super().__init__()
        self.inner = inner
        self.down = False

    def __repr__(self) -> str:
        return f"FlakyStore({self.inner!r}, down={self.down})"

    def _check(self, kind: str) -> None:
        time.sleep(self.latency + (self.failing_latency if self.down else 0.0))
        self._count(kind)
        if self.down:
            raise actors.ReplicaUnavailableError(f"injected: the store is down ({kind})")

    def get(self, key: str) -> tuple[bytes, str] | None:
        self._check("gets")
        return self.inner.get(key)

    def put(
        self, key: str, data: Data, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        self._check("puts")
        return self.inner.put(key, data, if_match=if_match, if_none_match=if_none_match)

    def delete(self, key: str) -> None:
        self._check("deletes")
        self.inner.delete(key)

    def list(self, prefix: str = "") -> Iterator[str]:
        self._check("lists")
        return self.inner.list(prefix)

    def close(self) -> None:
        self.inner.close()
