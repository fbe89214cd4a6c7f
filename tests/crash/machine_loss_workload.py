"""The child program of the machine-loss soak (tests/crash/test_machine_loss.py), issue 11.

Usage (from the repository root)::

    python -m tests.crash.machine_loss_workload run <runtime_dir> <store_json> <acks_file> \
        <effects_file> <seed> <run_number> <per_client> <end>

``run`` opens the runtime at ``runtime_dir`` (maybe empty: a fresh machine restores from the
replica) with a replica (``store_json`` as in ``tests/crash/replication_workload.py``), a short
``idle_timeout`` and a small ``max_awake`` (hibernation churn), and runs a mixed workload:

- :data:`CLIENTS` client tasks; client ``c<i>`` sends ``push(src, n)`` for ``n = start, start+1,
  ...`` to its one entry actor, one at a time (odd ``n``: ``ref.send``, even ``n``: ``ref.ask``),
  always with the idempotency key ``<src>:<n>``. ``start`` is one more than the last ``n`` the
  acks file shows acknowledged for it (so the message in flight at a kill is sent again under
  its key). Half of the entry actors are durable. Every acknowledgement is appended to
  ``acks_file`` (one ``os.write`` on an ``O_APPEND`` descriptor, then ``fsync``) before the client
  goes on: ``acked <src> <n>``. Now and then a client pauses longer than the idle timeout.
- Each entry actor records ``(src, n)`` in a table without a unique constraint, runs a durable
  step for every third ``n`` (the step appends ``<tag> <token> <idempotency key>`` to
  ``effects_file``; the turn stores the token it got), and ``self.send``\\ s ``relay(src, n)`` to
  the relay of ``src``, which records it and sends ``sink(src, n)`` to the sink of ``src``, which
  records it: the chain entry -> relay -> sink, every hop visible, duplicates included.
- :data:`TICKERS` ticker actors armed with a tick limit: each tick is a durable timer firing a
  turn that counts, records and sends ``relay(ticker, count)`` into the same chain, then sets
  the next timer.
- A barrier task: every :data:`BARRIER_EVERY` seconds, ``barrier <i> begin``, ``await
  rt.replicated()``, ``barrier <i> end``. Everything acknowledged before a ``begin`` whose
  ``end`` is in the file was covered by the barrier. The last one runs once every client is
  done (mode ``end`` is ``close``: then the runtime closes cleanly, ``DONE``, exit 0).

With ``end`` ``kill`` the child never closes: it prints ``SENT`` once the clients are done and
waits to be killed. Lines on stdout: ``OPEN``, ``READY``, ``SENT``, ``DONE``. On stderr, as they
come: ``report: <text>`` for each of ``rt.reports`` (a killed run's too), and ``unavailable:
<what>: <error>`` when a send, an ask or an arming failed with ``ReplicaUnavailableError`` (its
target was not local while the store was down) and is tried again under the same key.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import trio

import actors
from runtime.files.layout import actor_id
from tests.support.crash_child import emit

#: Entry actors: the first :data:`DURABLE_ENTRIES` are durable (a reply or an acknowledged send
#: waits until it is in the replica), the others not.
ENTRIES = tuple(f"e{i}" for i in range(4))
DURABLE_ENTRIES = ENTRIES[:2]
RELAYS = tuple(f"r{i}" for i in range(3))
SINKS = tuple(f"s{i}" for i in range(3))
TICKERS = tuple(f"t{i}" for i in range(2))
CLIENTS = tuple(f"c{i}" for i in range(8))
#: Ticks per run (a ticker's limit grows by this much at each run).
TICKS = 15
TICK_EVERY = 0.02
#: Hibernation churn: short idle timeout, fewer awake slots than actors.
IDLE_TIMEOUT = 0.05
MAX_AWAKE = 4
PAUSE_CHANCE = 0.05
PAUSE = (IDLE_TIMEOUT * 1.5, IDLE_TIMEOUT * 4)
BARRIER_EVERY = 0.4
#: Replication with frequent rounds, checkpoints, folds and compaction snapshots.
REPLICATION = actors.Replication(
    max_delay=0.05,
    min_delay=0.002,
    busy_rate=200.0,
    checkpoint_frames=48,
    fold_segments=6,
    compact_segments=40,
)
#: A run that nobody kills gives up after this many seconds.
RUN_LIMIT = 120.0
#: Seconds between two tries of a message that failed with ReplicaUnavailableError.
RETRY_EVERY = 0.05
#: Seconds between two looks at ``rt.reports`` (printed on stderr as they come).
REPORTS_EVERY = 0.02
#: Every STEP_EVERY-th message of a client runs a durable step at its entry actor.
STEP_EVERY = 3

#: Where steps append their effects (set by :func:`configure`, in every process that may run a
#: step: the child, and the test's own fresh-machine runtime).
_EFFECTS: list[str] = []


def configure(effects: str | os.PathLike[str]) -> None:
    _EFFECTS[:] = [os.fspath(effects)]


def _index(src: str) -> int:
    """Clients ``c0..`` then tickers ``t0..``, numbered in one sequence."""
    n = int(src[1:])
    return n if src.startswith("c") else len(CLIENTS) + n


def entry_of(src: str) -> str:
    """The entry actor client ``src`` sends to (one per client: per-sender order holds)."""
    return ENTRIES[int(src[1:]) % len(ENTRIES)]


def relay_of(src: str) -> str:
    return RELAYS[_index(src) % len(RELAYS)]


def sink_of(src: str) -> str:
    return SINKS[_index(src) // len(RELAYS) % len(SINKS)]


def append_effect(tag: str) -> str:
    """A step's external effect: one line per run, in a side file (re-runs stay visible)."""
    token = uuid.uuid4().hex[:12]
    key = actors.current_step().idempotency_key
    line = f"{tag} {token} {key}\n".encode()
    fd = os.open(_EFFECTS[0], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        assert os.write(fd, line) == len(line)
    finally:
        os.close(fd)
    return token


class _Recorder:
    """A table of what an actor applied, without a unique constraint: duplicates show."""

    # (Typed as Actor.migrations is, which this mixin provides to its actor types.)
    migrations: ClassVar[Sequence[str | Callable[[actors.Sql], None]]] = (
        "CREATE TABLE got(src TEXT NOT NULL, n INTEGER NOT NULL, token TEXT);",
    )

    def record(self, src: str, n: int, token: str | None = None) -> None:
        self.sql.execute(  # type: ignore[attr-defined]
            "INSERT INTO got(src, n, token) VALUES (?, ?, ?)", (src, n, token)
        )

    @actors.query
    async def rows(self) -> list[list[Any]]:
        return [list(r) for r in self.sql.query("SELECT src, n, token FROM got ORDER BY rowid")]  # type: ignore[attr-defined]


class Sink(_Recorder, actors.Actor, name="ml_sink"):
    async def sink(self, src: str, n: int) -> None:
        self.record(src, n)


class Relay(_Recorder, actors.Actor, name="ml_relay"):
    async def relay(self, src: str, n: int) -> None:
        self.record(src, n)
        self.send(self.ref_to(Sink, sink_of(src)), Sink.sink, src, n)


class _Entry(_Recorder):
    async def push(self, src: str, n: int) -> int:
        token = None
        if n % STEP_EVERY == 0:
            token = await self.step("effect", append_effect, f"{self.key}:{src}:{n}")  # type: ignore[attr-defined]
        self.record(src, n, token)
        self.send(self.ref_to(Relay, relay_of(src)), Relay.relay, src, n)  # type: ignore[attr-defined]
        return n


class DurableEntry(_Entry, actors.Actor, name="ml_entry_durable"):
    durable = True


class LooseEntry(_Entry, actors.Actor, name="ml_entry"):
    pass


class Ticker(_Recorder, actors.Actor, name="ml_ticker"):
    async def arm(self, limit: int) -> None:
        if limit > self.kv.get("limit", 0):
            self.kv["limit"] = limit
        if self.kv.get("count", 0) < self.kv["limit"] and not self.schedules():
            self.schedule("tick", Ticker.tick, after=TICK_EVERY)

    async def tick(self) -> None:
        count = self.kv.get("count", 0) + 1
        self.kv["count"] = count
        self.record(self.key, count)
        self.send(self.ref_to(Relay, relay_of(self.key)), Relay.relay, self.key, count)
        if count < self.kv.get("limit", 0):
            self.schedule("tick", Ticker.tick, after=TICK_EVERY)

    @actors.query
    async def progress(self) -> list[int]:
        return [self.kv.get("count", 0), self.kv.get("limit", 0), len(self.schedules())]


TYPES = (Sink, Relay, DurableEntry, LooseEntry, Ticker)


def entry_type(key: str) -> type[_Entry]:
    return DurableEntry if key in DURABLE_ENTRIES else LooseEntry


def all_actors() -> list[tuple[type[Any], str]]:
    """(type, key) of every actor of the workload."""
    return [
        *((entry_type(k), k) for k in ENTRIES),
        *((Relay, k) for k in RELAYS),
        *((Sink, k) for k in SINKS),
        *((Ticker, k) for k in TICKERS),
    ]


def aid_of(kind: type[Any], key: str) -> str:
    return actor_id(kind.__torpor_spec__.name, key)


def open_store(spec: dict[str, Any]) -> actors.ReplicaStore:
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
    """One line per event, on disk before the writer goes on (one write: never cut)."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, line: str) -> None:
        data = (line + "\n").encode()
        assert os.write(self.fd, data) == len(data)
        os.fsync(self.fd)


def last_acked(acks: Path) -> dict[str, int]:
    """Per client, the highest ``n`` acknowledged so far (by any run)."""
    last: dict[str, int] = {}
    try:
        text = acks.read_text()
    except FileNotFoundError:
        return last
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "acked":
            last[parts[1]] = max(last.get(parts[1], 0), int(parts[2]))
    return last


async def retrying(what: str, call: Any, *args: Any, **kwargs: Any) -> Any:
    """``call(*args, **kwargs)``, again under the same idempotency key while it fails with
    ``ReplicaUnavailableError`` (an actor that is not local cannot be restored while the store
    is down: the next message tries again). Each failure is a line on stderr."""
    while True:
        try:
            return await call(*args, **kwargs)
        except actors.ReplicaUnavailableError as exc:
            print(f"unavailable: {what}: {exc}", file=sys.stderr)
            await trio.sleep(RETRY_EVERY)


class ReportPrinter:
    """Prints each of ``rt.reports`` on stderr once, as it comes (a killed run has no close to
    print them at): the test looks there for an actor stopped as fenced."""

    def __init__(self, rt: actors.Runtime) -> None:
        self.rt = rt
        self.last: str | None = None

    def flush(self) -> None:
        reports = list(self.rt.reports)
        # The reports after the last one printed (each is a str object of its own: found by
        # identity, however many the bounded deque has dropped since).
        start = next((i + 1 for i in range(len(reports) - 1, -1, -1) if reports[i] is self.last), 0)
        for report in reports[start:]:
            print(f"report: {report}", file=sys.stderr)
        if reports:
            self.last = reports[-1]

    async def run(self) -> None:
        while True:
            self.flush()
            await trio.sleep(REPORTS_EVERY)


async def client(
    rt: actors.Runtime, src: str, start: int, count: int, log: AckLog, rng: random.Random
) -> None:
    key = entry_of(src)
    kind: Any = entry_type(key)
    ref: Any = rt.ref(kind, key)
    for n in range(start, start + count):
        call = ref.options(idempotency_key=f"{src}:{n}")
        if n % 2:
            await retrying(f"{src} {n}", call.send, kind.push, src, n)
        else:
            got = await retrying(f"{src} {n}", call.ask, kind.push, src, n)
            if got != n:
                raise AssertionError(f"{src}: push({n}) returned {got}")
        log.write(f"acked {src} {n}")
        if rng.random() < PAUSE_CHANCE:
            await trio.sleep(rng.uniform(*PAUSE))  # long enough to hibernate


async def barrier(rt: actors.Runtime, log: AckLog, number: list[int]) -> None:
    number[0] += 1
    log.write(f"barrier {number[0]} begin")
    await rt.replicated()
    log.write(f"barrier {number[0]} end")


async def work(
    rt: actors.Runtime,
    log: AckLog,
    rng: random.Random,
    last: dict[str, int],
    run_number: int,
    per_client: int,
    end: str,
) -> None:
    """Arm the tickers, run the clients and the barriers, then a last barrier (and with ``end``
    ``kill``, wait for the kill)."""
    number = [0]
    with trio.move_on_after(RUN_LIMIT):
        for key in TICKERS:
            await retrying(
                f"arm {key}",
                rt.ref(Ticker, key).options(idempotency_key=f"arm:{key}:{run_number}").send,
                Ticker.arm,
                run_number * TICKS,
            )
        async with trio.open_nursery() as nursery:

            async def barriers() -> None:
                while True:
                    await trio.sleep(BARRIER_EVERY)
                    await barrier(rt, log, number)

            nursery.start_soon(barriers)
            async with trio.open_nursery() as clients:
                for src in CLIENTS:
                    clients.start_soon(
                        client,
                        rt,
                        src,
                        last.get(src, 0) + 1,
                        per_client,
                        log,
                        random.Random(rng.random()),
                    )
            nursery.cancel_scope.cancel()
        await barrier(rt, log, number)
        if end == "kill":
            emit("SENT")
            await trio.sleep_forever()


async def run(
    root: str,
    spec: dict[str, Any],
    acks: str,
    effects: str,
    seed: int,
    run_number: int,
    per_client: int,
    end: str,
) -> int:
    configure(effects)
    log = AckLog(Path(acks))
    rng = random.Random(seed)
    last = last_acked(Path(acks))
    store = open_store(spec)
    log.write(f"run {run_number} {root}")
    emit("OPEN")
    async with actors.open_runtime(
        root,
        types=TYPES,
        idle_timeout=IDLE_TIMEOUT,
        max_awake=MAX_AWAKE,
        replica=store,
        replication=REPLICATION,
    ) as rt:
        emit("READY")
        printer = ReportPrinter(rt)
        try:
            async with trio.open_nursery() as watch:
                watch.start_soon(printer.run)
                await work(rt, log, rng, last, run_number, per_client, end)
                watch.cancel_scope.cancel()
        finally:
            printer.flush()  # (a client that raised ends the run: what was reported shows)
        print(f"statistics: {rt.statistics()}", file=sys.stderr)
    printer.flush()  # with what closing reported
    emit("DONE")
    return 0


def main(argv: list[str]) -> int:
    if argv[1] != "run":
        raise SystemExit(f"unknown mode {argv[1]!r}")
    root, spec, acks, effects = argv[2], json.loads(argv[3]), argv[4], argv[5]
    seed, run_number, per_client, end = int(argv[6]), int(argv[7]), int(argv[8]), argv[9]
    started = time.monotonic()
    code = trio.run(run, root, spec, acks, effects, seed, run_number, per_client, end)
    print(f"ran {time.monotonic() - started:.2f}s", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
