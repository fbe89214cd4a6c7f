"""The child program of the replication crash harness (tests/crash/test_crash_replication.py).

Usage (from the repository root)::

    python -m tests.crash.replication_workload run <runtime_dir> <store_json> <acks_file> <seed>

``run`` opens the runtime at ``runtime_dir`` with a replica (``store_json`` says which:
``{"kind": "directory", "path": ...}`` or ``{"kind": "s3", "bucket": ..., "prefix": ...,
"endpoint_url": ..., "region": ...}``, the S3 credentials coming from the environment) and
replication options that make rounds, folds, checkpoints and snapshots frequent. The directory
may be empty: the runtime then restores ``directory.db`` from the replica and every actor on
its first wake-up (a new machine).

One driver task per actor asks ``append(n)`` with ``n = 1, 2, ...`` in order, one ask at a time,
with the idempotency key ``<key>:<n>``; it starts after the actor's current row count (asked
with the ``count`` turn, which runs after every message queued before it, so the ask in flight
at the last kill is re-sent under its key, or already applied). As soon as an ask returned, the
driver appends ``acked <key> <n>`` to ``acks_file`` (one ``os.write`` on an ``O_APPEND``
descriptor, then ``fsync``); before its first ask it appends ``start <key> <n>``, so the file
also bounds the numbers ever sent. The actors of :data:`DURABLE_KEYS` are durable: their asks return
only once the turn's commits are in the replica, so each of their acknowledged rows must
survive a restore. Those of :data:`LOOSE_KEYS` are not. Now and then a driver pauses longer than
the runtime's idle timeout, so actors hibernate (snapshots) and wake again (ownership taken,
files tracked anew) while the others keep committing.

The parent SIGKILLs the child at a random instant; the child never finishes on its own before
:data:`RUN_LIMIT` seconds (it then prints ``DONE`` and exits 0). Lines on stdout: ``OPEN``
(before the runtime opens), ``READY`` (once it is open).
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import trio

import actors
from runtime.files.layout import actor_id
from tests.support.crash_child import emit

#: The actors: durable ones (an ask returns once its commit is in the replica) and loose ones.
DURABLE_KEYS = tuple(f"d{i}" for i in range(8))
LOOSE_KEYS = ("l0", "l1")
#: An actor hibernates after this many idle seconds; a driver pauses now and then for longer.
IDLE_TIMEOUT = 0.05
PAUSE_CHANCE = 0.03
PAUSE = (IDLE_TIMEOUT * 1.5, IDLE_TIMEOUT * 5)
#: Replication tuned for many rounds, manifest folds, checkpoints (WAL generations) and
#: compaction snapshots in a run of a second.
REPLICATION = actors.Replication(
    max_delay=0.05,
    min_delay=0.002,
    busy_rate=200.0,
    checkpoint_frames=48,
    fold_segments=6,
    compact_segments=40,
)
#: A run that nobody kills stops after this many seconds.
RUN_LIMIT = 30.0


class _Rows:
    """The handlers both actor types share: a table of appended numbers."""

    # No unique constraint: a turn applied twice shows as a repeated number.
    # (Typed as Actor.migrations is, which this mixin provides to its actor types.)
    migrations: ClassVar[Sequence[str | Callable[[actors.Sql], None]]] = (
        "CREATE TABLE rows(n INTEGER NOT NULL, pad TEXT NOT NULL);",
        "CREATE INDEX rows_by_pad ON rows(pad);",  # more pages change per commit
    )

    async def append(self, n: int) -> int:
        sql: actors.Sql = self.sql  # type: ignore[attr-defined]
        sql.execute("INSERT INTO rows(n, pad) VALUES (?, ?)", (n, pad(n)))
        self.kv["last"] = n  # type: ignore[attr-defined]
        return n

    async def count(self) -> int:
        """A turn: it runs after every message queued before it."""
        return int(self.sql.query_value("SELECT count(*) FROM rows"))  # type: ignore[attr-defined]

    @actors.query
    async def rows(self) -> list[int]:
        return [r[0] for r in self.sql.query("SELECT n FROM rows ORDER BY rowid")]  # type: ignore[attr-defined]


class DurableRows(_Rows, actors.Actor, name="crash_rep_durable"):
    """Durable: a reply waits until the turn's commits are in the replica."""

    durable = True


class LooseRows(_Rows, actors.Actor, name="crash_rep_loose"):
    """Not durable: a reply is sent once the turn committed locally."""


TYPES = (DurableRows, LooseRows)


def pad(n: int) -> str:
    """Filler of a row: a few hundred bytes that differ from row to row."""
    return f"{n:08d}-" + "abcdefghij"[n % 10] * (100 + n * 37 % 300)


def actor_type(key: str) -> type[_Rows]:
    return DurableRows if key in DURABLE_KEYS else LooseRows


def all_keys() -> tuple[str, ...]:
    return DURABLE_KEYS + LOOSE_KEYS


def aid_of(key: str) -> str:
    """The actor id (folder and replica names) of the actor ``key``."""
    spec = actor_type(key).__torpor_spec__  # type: ignore[attr-defined]
    return actor_id(spec.name, key)


def open_store(spec: dict[str, Any]) -> actors.ReplicaStore:
    """The replica store ``spec`` describes (the JSON the parent passes on the command line)."""
    if spec["kind"] == "directory":
        return actors.DirectoryStore(spec["path"])
    if spec["kind"] == "s3":
        return actors.S3Store(
            spec["bucket"],
            prefix=spec["prefix"],
            endpoint_url=spec["endpoint_url"],
            region=spec["region"],
            path_style=True,
        )
    raise ValueError(f"unknown store kind {spec['kind']!r}")


class AckLog:
    """Appends one line per acknowledged ask, on disk before the driver goes on."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, what: str, key: str, n: int) -> None:
        line = f"{what} {key} {n}\n".encode()
        assert os.write(self.fd, line) == len(line)  # one write: a kill never cuts a line
        os.fsync(self.fd)


async def drive(rt: actors.Runtime, key: str, log: AckLog, rng: random.Random) -> None:
    kind = actor_type(key)
    ref: Any = rt.ref(kind, key)
    n = await ref.ask(kind.count) + 1
    log.write("start", key, n)
    while True:
        got = await ref.options(idempotency_key=f"{key}:{n}").ask(kind.append, n)
        if got != n:
            raise AssertionError(f"{key}: append({n}) returned {got}")
        log.write("acked", key, n)
        n += 1
        if rng.random() < PAUSE_CHANCE:
            await trio.sleep(rng.uniform(*PAUSE))  # long enough to hibernate


async def run(root: str, spec: dict[str, Any], acks: str, seed: int) -> int:
    log = AckLog(Path(acks))
    rng = random.Random(seed)
    store = open_store(spec)
    emit("OPEN")
    async with actors.open_runtime(
        root,
        types=TYPES,
        idle_timeout=IDLE_TIMEOUT,
        replica=store,
        replication=REPLICATION,
    ) as rt:
        emit("READY")
        with trio.move_on_after(RUN_LIMIT):
            async with trio.open_nursery() as nursery:
                for key in all_keys():
                    nursery.start_soon(drive, rt, key, log, random.Random(rng.random()))
        for report in rt.reports:
            print(f"report: {report}", file=sys.stderr)
    emit("DONE")
    return 0


def main(argv: list[str]) -> int:
    mode = argv[1]
    if mode != "run":
        raise SystemExit(f"unknown mode {mode!r}")
    root, spec, acks, seed = argv[2], json.loads(argv[3]), argv[4], int(argv[5])
    started = time.monotonic()
    code = trio.run(run, root, spec, acks, seed)
    print(f"ran {time.monotonic() - started:.2f}s", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
