"""The child program of the timer crash harness (test_crash_timers.py); SIGKILLed at will.

Usage::

    python -m tests.crash.timers_workload run <runtime_dir> <end> <start_0> ... <start_{S-1}>
    python -m tests.crash.timers_workload verify <runtime_dir>

``run``: opens the runtime with a tiny ``idle_timeout`` and ``max_awake`` (so that the actors
hibernate and wake all the time) and the default wall clock. Sender task ``s`` sends messages
``i = start_s .. end`` in order, ``Timed.arm(s, i, timers)`` to the actor ``plan(s, i)`` names,
with ``idempotency_key="s:i"``, and prints ``ACK s i`` (flushed) as soon as ``await ref.send``
returned. The turn that applies the message logs it, sets its one-shot (``after=``) and interval
(``every=``) timers, and records in the same transaction each timer's requested due time
(``time.time() + after`` read just before ``self.schedule``) and the due time the engine stored.
A timer rings ``Timed.ring(name)``, which logs ``(name, time.time())`` first thing; an interval
timer cancels itself in the turn of its ``INTERVAL_RINGS``-th ring. When the senders are done,
the child waits until every actor applied its queue and every recorded timer rang (one-shots at
least once, intervals ``INTERVAL_RINGS`` times), bounded by the last due time plus
``FINAL_GRACE``; then it prints ``DONE`` and exits 0 (exit 3 on timeout, with the progress on
stderr).

``verify``: prints ``STATE <json>``: every actor's logs and remaining timers (read by ``@query``
handlers), its dead letters, and the runtime's reports.

Lines on stdout: ``OPEN``, ``READY``, ``ACK s i``, ``DONE``, ``STATE ...``.
"""

from __future__ import annotations

import random
import sys
import time
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio

import actors
from tests.support import crash_child
from tests.support.crash_child import emit

#: Sender tasks and timer actors of the workload.
SENDERS = 3
ACTORS = 10
#: Hibernation churn: an actor idle for 50 ms hibernates; at most three are awake at once.
IDLE_TIMEOUT = 0.05
MAX_AWAKE = 3
#: One-shot timers are due up to this many seconds after the turn that sets them.
MAX_AFTER = 3.0
#: Interval timers: period bounds in seconds, and rings after which one cancels itself.
PERIOD = (0.2, 0.8)
INTERVAL_RINGS = 3
#: The final wait: every timer must have rung by the last due time plus this many seconds.
FINAL_GRACE = 5.0
#: Waiting for every actor to apply its queue (the ``sync`` asks) at most this long.
DRAIN_TIMEOUT = 20.0
#: Pause after each acknowledged send (spreads sends, and due times, over the run).
PACE = (0.0, 0.03)


def actor_key(a: int) -> str:
    return f"a{a}"


def plan(sender: int, i: int) -> tuple[int, list[list[Any]]]:
    """Message ``i`` of ``sender``: its actor and its timers ``[name, after, every]``.

    Deterministic (a string seed is hashed with SHA-512, not with ``hash``), so that a restarted
    child sends the same message again under the same idempotency key. A one-shot has
    ``every=None``; an interval timer has ``after=None`` (first due one period after the turn).
    """
    rng = random.Random(f"timers:{sender}:{i}")
    actor = rng.randrange(ACTORS)
    timers: list[list[Any]] = []
    for j in range(rng.choice((0, 1, 1, 2, 3))):
        after = 0.0 if rng.random() < 0.1 else round(rng.uniform(0.0, MAX_AFTER), 4)
        timers.append([f"t{sender}.{i}.{j}", after, None])
    if rng.random() < 0.1:
        timers.append([f"e{sender}.{i}", None, round(rng.uniform(*PERIOD), 4)])
    return actor, timers


class Timed(actors.Actor, name="crash_timed"):
    """Sets timers in turns that log the message and the timers' due times; logs every ring."""

    # No unique constraint anywhere: a message applied twice or a timer rung twice shows.
    migrations = (
        "CREATE TABLE applied(idx INTEGER NOT NULL, sender INTEGER NOT NULL, i INTEGER NOT NULL);"
        "CREATE TABLE armed(name TEXT NOT NULL, sender INTEGER NOT NULL, i INTEGER NOT NULL, "
        "after REAL, every REAL, requested REAL NOT NULL, stored REAL NOT NULL);"
        "CREATE TABLE rings(name TEXT NOT NULL, at REAL NOT NULL);"
        "CREATE INDEX rings_name ON rings(name);",
    )

    async def arm(self, sender: int, i: int, timers: list[list[Any]]) -> int:
        idx = int(self.kv.get("n", 0)) + 1
        self.kv["n"] = idx
        self.sql.execute("INSERT INTO applied(idx, sender, i) VALUES (?, ?, ?)", (idx, sender, i))
        for name, after, every in timers:
            requested = time.time() + (after if every is None else every)
            if every is None:
                schedule = self.schedule(name, Timed.ring, name, after=after)
            else:
                schedule = self.schedule(name, Timed.ring, name, every=every)
            self.sql.execute(
                "INSERT INTO armed(name, sender, i, after, every, requested, stored) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (name, sender, i, after, every, requested, schedule.next_at),
            )
        return idx

    async def ring(self, name: str) -> None:
        at = time.time()
        self.sql.execute("INSERT INTO rings(name, at) VALUES (?, ?)", (name, at))
        if name.startswith("e"):
            rung = self.sql.query_value("SELECT count(*) FROM rings WHERE name = ?", (name,))
            if rung >= INTERVAL_RINGS:
                self.cancel_schedule(name)

    async def on_wake(self) -> None:
        self.kv["wakes"] = int(self.kv.get("wakes", 0)) + 1

    async def sync(self) -> int:
        """A turn: it runs after every message queued before it."""
        return int(self.kv.get("n", 0))

    @actors.query
    async def progress(self) -> dict[str, Any]:
        """What is still to ring: one-shots never rung, intervals rung too few times."""
        unrung = self.sql.query_value(
            "SELECT count(*) FROM armed a WHERE every IS NULL AND NOT EXISTS "
            "(SELECT 1 FROM rings r WHERE r.name = a.name)"
        )
        short = self.sql.query_value(
            "SELECT count(*) FROM armed a WHERE every IS NOT NULL AND "
            "(SELECT count(*) FROM rings r WHERE r.name = a.name) < ?",
            (INTERVAL_RINGS,),
        )
        last_due = self.sql.query_value("SELECT max(max(requested, stored)) FROM armed")
        return {"unrung": unrung, "short": short, "last_due": last_due}

    @actors.query
    async def dump(self) -> dict[str, Any]:
        return {
            "n": self.kv.get("n", 0),
            "wakes": self.kv.get("wakes", 0),
            "applied": self.sql.query("SELECT idx, sender, i FROM applied ORDER BY rowid"),
            "armed": self.sql.query(
                "SELECT name, sender, i, after, every, requested, stored FROM armed ORDER BY rowid"
            ),
            "rings": self.sql.query("SELECT name, at FROM rings ORDER BY rowid"),
            "schedules": [[s.name, s.next_at, s.every] for s in self.schedules()],
        }


def open_runtime(root: str) -> AbstractAsyncContextManager[actors.Runtime]:
    return actors.open_runtime(root, types=[Timed], idle_timeout=IDLE_TIMEOUT, max_awake=MAX_AWAKE)


async def sender_task(rt: actors.Runtime, sender: int, start: int, end: int) -> None:
    refs = [rt.ref(Timed, actor_key(a)) for a in range(ACTORS)]
    pace = random.Random(f"pace:{sender}:{start}")
    for i in range(start, end + 1):
        actor, timers = plan(sender, i)
        await (
            refs[actor].options(idempotency_key=f"{sender}:{i}").send(Timed.arm, sender, i, timers)
        )
        emit(f"ACK {sender} {i}")
        await anyio.sleep(pace.uniform(*PACE))


async def wait_for_rings(refs: list[actors.Ref[Timed]], progress: list[str]) -> bool:
    """Poll until every recorded timer rang enough; False once past the last due + grace."""
    while True:
        pending = 0
        last_due = 0.0
        progress.clear()
        for ref in refs:
            p = await ref.ask(Timed.progress)
            pending += p["unrung"] + p["short"]
            last_due = max(last_due, p["last_due"] or 0.0)
            if p["unrung"] or p["short"]:
                progress.append(f"{ref.key}: {p['unrung']} unrung, {p['short']} short")
        if not pending:
            return True
        if time.time() > last_due + FINAL_GRACE:
            progress.append(f"{time.time() - last_due:.2f}s after the last due time")
            return False
        await anyio.sleep(0.1)


async def settle(rt: actors.Runtime) -> bool:
    refs = [rt.ref(Timed, actor_key(a)) for a in range(ACTORS)]
    progress: list[str] = []
    with anyio.move_on_after(DRAIN_TIMEOUT) as scope:
        await crash_child.sync_all(refs, Timed.sync, progress)
    if scope.cancelled_caught:
        print(f"drain timed out: {progress}; reports: {list(rt.reports)}", file=sys.stderr)
        return False
    if not await wait_for_rings(refs, progress):
        print(f"timers still pending: {progress}; reports: {list(rt.reports)}", file=sys.stderr)
        return False
    print(f"statistics: {rt.statistics()}", file=sys.stderr)
    return True


async def collect(rt: actors.Runtime) -> dict[str, Any]:
    refs = [rt.ref(Timed, actor_key(a)) for a in range(ACTORS)]
    return {
        "actors": {ref.key: await ref.ask(Timed.dump) for ref in refs},
        "dead_letters": await crash_child.dead_letters(rt, refs),
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
