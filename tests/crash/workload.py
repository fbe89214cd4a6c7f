"""The child program of the crash harness (test_crash.py); the parent SIGKILLs it at will.

Usage::

    python -m tests.crash.workload run <runtime_dir> <end> <start_0> ... <start_{S-1}>
    python -m tests.crash.workload verify <runtime_dir>

``run``: sender task ``s`` sends messages ``i = start_s .. end`` in order, one at a time, each
``Worker.apply(sender, i, ...)`` to the worker ``target(s, i)`` with ``idempotency_key="s:i"``,
and prints ``ACK s i`` (flushed) as soon as the ``await ref.send(...)`` returned. A worker that
applies a message logs it in its own table and forwards one message to the sink and one to the
next worker in the ring (``self.send``; both refs travel in the message). When every sender is
done, the child waits until every worker has applied everything sent to it and every forwarded
message has been applied, prints ``DONE`` and exits 0. The parent restarts a killed child with
``start_s = last acknowledged i + 1``: the message in flight at the kill is sent again under the
same idempotency key.

``verify``: prints ``STATE <json>`` with every actor's logs (read by ``@query`` handlers), its
dead letters and the runtime's reports, then exits 0.

Lines on stdout: ``OPEN`` (about to open the runtime), ``READY`` (runtime open, recovery
started), ``ACK s i``, ``DONE``, ``STATE ...``.
"""

from __future__ import annotations

import sys
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio

import actors
from tests.support import crash_child
from tests.support.crash_child import emit

#: Sender tasks and worker actors of the workload.
SENDERS = 3
WORKERS = 4
SINK_KEY = "sink"
#: How long the child waits for everything to be applied before giving up (exit 3).
DRAIN_TIMEOUT = 20.0


def worker_key(w: int) -> str:
    return f"w{w}"


def target(sender: int, i: int) -> int:
    """The worker that message ``i`` of ``sender`` goes to: deterministic, mixing senders."""
    return (sender * 7 + i * 3 + i // 4) % WORKERS


class Worker(actors.Actor, name="crash_worker"):
    """Applies external messages; forwards each one to the sink and to the next worker."""

    # No unique constraint anywhere: a message applied twice shows as two rows.
    migrations = (
        "CREATE TABLE applied(idx INTEGER NOT NULL, sender INTEGER NOT NULL, i INTEGER NOT NULL);"
        "CREATE TABLE relayed(origin TEXT NOT NULL, idx INTEGER NOT NULL);",
    )

    async def apply(
        self, sender: int, i: int, sink: actors.Ref[Sink], nxt: actors.Ref[Worker]
    ) -> int:
        idx = int(self.kv.get("n", 0)) + 1
        self.kv["n"] = idx
        self.sql.execute("INSERT INTO applied(idx, sender, i) VALUES (?, ?, ?)", (idx, sender, i))
        self.send(sink, Sink.record, self.key, idx, sender, i)
        self.send(nxt, Worker.relay, self.key, idx)
        return idx

    async def relay(self, origin: str, idx: int) -> None:
        self.sql.execute("INSERT INTO relayed(origin, idx) VALUES (?, ?)", (origin, idx))

    async def sync(self) -> int:
        """A turn: it runs after every message queued before it."""
        return int(self.kv.get("n", 0))

    @actors.query
    async def relayed_from(self, origin: str) -> int:
        return int(self.sql.query_value("SELECT count(*) FROM relayed WHERE origin = ?", (origin,)))

    @actors.query
    async def dump(self) -> dict[str, object]:
        return {
            "n": self.kv.get("n", 0),
            "applied": self.sql.query("SELECT idx, sender, i FROM applied ORDER BY rowid"),
            "relayed": self.sql.query("SELECT origin, idx FROM relayed ORDER BY rowid"),
        }


class Sink(actors.Actor, name="crash_sink"):
    """Receives one forwarded message per message applied by any worker."""

    migrations = (
        "CREATE TABLE got(origin TEXT NOT NULL, idx INTEGER NOT NULL, sender INTEGER NOT NULL, "
        "i INTEGER NOT NULL);",
    )

    async def record(self, origin: str, idx: int, sender: int, i: int) -> None:
        self.sql.execute(
            "INSERT INTO got(origin, idx, sender, i) VALUES (?, ?, ?, ?)", (origin, idx, sender, i)
        )

    @actors.query
    async def count_from(self, origin: str) -> int:
        return int(self.sql.query_value("SELECT count(*) FROM got WHERE origin = ?", (origin,)))

    @actors.query
    async def dump(self) -> list[tuple[object, ...]]:
        return self.sql.query("SELECT origin, idx, sender, i FROM got ORDER BY rowid")


def open_runtime(root: str) -> AbstractAsyncContextManager[actors.Runtime]:
    return actors.open_runtime(root, types=[Worker, Sink])


async def sender_task(rt: actors.Runtime, sender: int, start: int, end: int) -> None:
    refs = [rt.ref(Worker, worker_key(w)) for w in range(WORKERS)]
    sink = rt.ref(Sink, SINK_KEY)
    for i in range(start, end + 1):
        w = target(sender, i)
        await (
            refs[w]
            .options(idempotency_key=f"{sender}:{i}")
            .send(Worker.apply, sender, i, sink, refs[(w + 1) % WORKERS])
        )
        emit(f"ACK {sender} {i}")


async def drain(rt: actors.Runtime, progress: list[str]) -> None:
    """Wait until every worker applied its queue and every forwarded message was applied.

    Waits for at least as many forwarded messages as applied ones (a duplicate must not hang the
    run: the verifier reports it). ``progress`` gets the last counts seen, for a timeout report.
    """
    workers = [rt.ref(Worker, worker_key(w)) for w in range(WORKERS)]
    sink = rt.ref(Sink, SINK_KEY)
    applied = await crash_child.sync_all(workers, Worker.sync, progress)
    while True:
        complete = True
        progress.clear()
        for w in range(WORKERS):
            origin = worker_key(w)
            nxt = workers[(w + 1) % WORKERS]
            at_sink = await sink.ask(Sink.count_from, origin)
            relayed = await nxt.ask(Worker.relayed_from, origin)
            progress.append(f"{origin}: applied {applied[w]}, sink {at_sink}, relayed {relayed}")
            if at_sink < applied[w] or relayed < applied[w]:
                complete = False
        if complete:
            return
        await anyio.sleep(0.005)


async def settle(rt: actors.Runtime) -> bool:
    progress: list[str] = []
    with anyio.move_on_after(DRAIN_TIMEOUT) as scope:
        await drain(rt, progress)
    if scope.cancelled_caught:
        print(f"drain timed out: {progress}; reports: {rt.reports}", file=sys.stderr)
        return False
    return True


async def collect(rt: actors.Runtime) -> dict[str, Any]:
    workers = [rt.ref(Worker, worker_key(w)) for w in range(WORKERS)]
    sink = rt.ref(Sink, SINK_KEY)
    everyone: list[actors.Ref[Any]] = [*workers, sink]
    dead_letters = await crash_child.dead_letters(rt, everyone)
    return {
        "workers": {ref.key: await ref.ask(Worker.dump) for ref in workers},
        "sink": await sink.ask(Sink.dump),
        "dead_letters": dead_letters,
        "reports": list(rt.reports),
    }


def main(argv: list[str]) -> int:
    return crash_child.main(
        argv,
        senders=SENDERS,
        open_runtime=open_runtime,
        sender_task=sender_task,
        settle=settle,
        collect=collect,
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv))
