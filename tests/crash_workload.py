"""The child program of the crash harness (tests/test_crash.py); the parent SIGKILLs it at will.

Usage::

    python tests/crash_workload.py run <runtime_dir> <end> <start_0> ... <start_{S-1}>
    python tests/crash_workload.py verify <runtime_dir>

``run``: sender task ``s`` sends messages ``i = start_s .. end`` in order, one at a time, each
``Worker.apply(sender, i)`` to the worker ``target(s, i)`` with ``idempotency_key="s:i"``, and
prints ``ACK s i`` (flushed) as soon as the ``await ref.send(...)`` returned. A worker that applies
a message logs it in its own table and forwards one message to the sink and one to the next worker
in the ring (``self.send``; both refs travel in the message). When every sender is done, the child waits until every worker has
applied everything sent to it and every forwarded message has been applied, prints ``DONE`` and
exits 0. The parent restarts a killed child with ``start_s = last acknowledged i + 1``: the
message in flight at the kill is sent again under the same idempotency key.

``verify``: prints ``STATE <json>`` with every actor's logs (read by ``@query`` handlers), its
dead letters and the runtime's reports, then exits 0.

Lines on stdout: ``READY`` (runtime open, recovery started), ``ACK s i``, ``DONE``, ``STATE ...``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import actors  # noqa: E402

#: Sender tasks and worker actors of the workload.
SENDERS = 3
WORKERS = 4
SINK_KEY = "sink"
#: How long the child waits for everything to be applied before giving up (exit 3).
DRAIN_TIMEOUT = 60.0


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
    async def counts(self) -> list[int]:
        """[messages applied, relayed messages received]."""
        applied = self.sql.query_value("SELECT count(*) FROM applied")
        relayed = self.sql.query_value("SELECT count(*) FROM relayed")
        return [int(applied), int(relayed)]

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
    async def dump(self) -> list[list[object]]:
        return self.sql.query("SELECT origin, idx, sender, i FROM got ORDER BY rowid")


def emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def sender_task(rt: actors.Runtime, sender: int, start: int, end: int) -> None:
    refs = [rt.ref(Worker, worker_key(w)) for w in range(WORKERS)]
    sink = rt.ref(Sink, SINK_KEY)
    for i in range(start, end + 1):
        w = target(sender, i)
        await refs[w].send(
            Worker.apply, sender, i, sink, refs[(w + 1) % WORKERS], idempotency_key=f"{sender}:{i}"
        )
        emit(f"ACK {sender} {i}")


async def drain(rt: actors.Runtime) -> None:
    """Wait until every worker applied its queue and every forwarded message was applied."""
    workers = [rt.ref(Worker, worker_key(w)) for w in range(WORKERS)]
    sink = rt.ref(Sink, SINK_KEY)
    applied = [await ref.ask(Worker.sync) for ref in workers]
    while True:
        complete = True
        for w, ref in enumerate(workers):
            origin = worker_key(w)
            nxt = workers[(w + 1) % WORKERS]
            if await sink.ask(Sink.count_from, origin) != applied[w]:
                complete = False
            if await nxt.ask(Worker.relayed_from, origin) != applied[w]:
                complete = False
        if complete:
            return
        await trio.sleep(0.005)


async def run(root: str, end: int, starts: list[int]) -> int:
    async with actors.open_runtime(root, types=[Worker, Sink]) as rt:
        emit("READY")
        async with trio.open_nursery() as nursery:
            for sender, start in enumerate(starts):
                nursery.start_soon(sender_task, rt, sender, start, end)
        with trio.move_on_after(DRAIN_TIMEOUT) as scope:
            await drain(rt)
        if scope.cancelled_caught:
            print(f"drain timed out; reports: {rt.reports}", file=sys.stderr)
            return 3
        for report in rt.reports:
            print(f"report: {report}", file=sys.stderr)
        emit("DONE")
    return 0


async def verify(root: str) -> int:
    async with actors.open_runtime(root, types=[Worker, Sink]) as rt:
        state: dict[str, object] = {"workers": {}, "dead_letters": {}, "reports": []}
        refs: list[actors.Ref[object]] = [rt.ref(Worker, worker_key(w)) for w in range(WORKERS)]
        refs.append(rt.ref(Sink, SINK_KEY))
        for ref in refs[:-1]:
            state["workers"][ref.key] = await ref.ask(Worker.dump)  # type: ignore[index]
        state["sink"] = await refs[-1].ask(Sink.dump)
        for ref in refs:
            letters = await rt.dead_letters(ref)
            state["dead_letters"][ref.key] = [  # type: ignore[index]
                f"{d.method}{d.args}: {d.error_type}: {d.error_message}" for d in letters
            ]
        state["reports"] = list(rt.reports)
        emit("STATE " + json.dumps(state))
    return 0


def main(argv: list[str]) -> int:
    mode, root = argv[1], argv[2]
    if mode == "run":
        end = int(argv[3])
        starts = [int(a) for a in argv[4:]]
        if len(starts) != SENDERS:
            raise SystemExit(f"need {SENDERS} start values, got {len(starts)}")
        return trio.run(run, root, end, starts)
    if mode == "verify":
        return trio.run(verify, root)
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
