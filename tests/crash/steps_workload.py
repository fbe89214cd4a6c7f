"""The child program of the steps crash harness (test_crash_steps.py); SIGKILLed at will.

Usage (from the repository root)::

    python -m tests.crash.steps_workload run <runtime_dir> <end> <start_0> ... <start_{S-1}>
    python -m tests.crash.steps_workload verify <runtime_dir>

``run``: sender task ``s`` sends messages ``i = start_s .. end`` in order, each
``Flow.run(wid)`` with the workflow id ``wid = workflow_id(s, i)`` to the actor
``target(s, i)``, with ``idempotency_key=wid``, and prints ``ACK s i`` (flushed) as soon as
``await ref.send(...)`` returned. The turn runs one workflow: ``BEFORE`` journaled steps, then
``self.uuid()`` and ``self.now()``, a durable ``self.sleep(SLEEP)`` (longer than the runtime's
``IDLE_TIMEOUT``, so the actor hibernates in the middle of the turn and replays it when the
sleep ends), then the remaining steps up to ``STEPS``; then it records the workflow's result in
its own table and in ``self.kv``, both committed with the turn. Step functions alternate between
sync (run in a worker thread) and async (run in the event loop).

Each step function appends one line ``pid key wid n acc tag`` to the step log (``step_log``,
next to the runtime directory), with ``os.write`` on an ``O_APPEND`` descriptor and ``fsync``,
*before* it does anything else; then it waits ``EFFECT`` seconds (the external call a real
step makes) and returns ``[advance(acc, n), pid]``. ``acc`` is the previous step's journaled
result (``initial(wid)`` for step 0), ``tag`` is ``-`` before the ``uuid``/``now`` values and
``<uuid hex>@<now timestamp>`` after them. When the senders are done, the child asks every
actor's ``sync`` (a turn that runs after every workflow queued before it), prints ``DONE`` and
exits 0 (3 if that takes longer than ``DRAIN_TIMEOUT``).

``verify``: opens the runtime and prints ``STATE <json>``: every actor's finished workflows
(table rows and ``self.kv`` entries, read by ``@query`` handlers), its dead letters and the
runtime's reports.

Lines on stdout: ``OPEN``, ``READY``, ``ACK s i``, ``DONE``, ``STATE ...``.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio

import actors
from tests.support import crash_child
from tests.support.crash_child import emit

#: Sender tasks and workflow actors.
SENDERS = 3
ACTORS = 4
#: Steps per workflow, and how many of them come before the uuid/now values and the sleep.
STEPS = 12
BEFORE = 5
#: The durable sleep in the middle of every workflow, and the idle time after which an actor
#: hibernates (shorter: the actor hibernates while its turn sleeps, and replays it after).
SLEEP = 0.04
IDLE_TIMEOUT = 0.02
#: Seconds each step function spends after logging its line (the external call it stands for),
#: so that kills often land while a step is in flight.
EFFECT = 0.002
#: Waiting for every actor to finish its queued workflows at most this long.
DRAIN_TIMEOUT = 20.0
MODULUS = 1_000_000_007


def actor_key(a: int) -> str:
    return f"f{a}"


def workflow_id(sender: int, i: int) -> str:
    return f"{sender}.{i}"


def target(sender: int, i: int) -> int:
    """The actor that workflow ``i`` of ``sender`` runs on: deterministic, mixing senders."""
    return (sender * 5 + i * 3 + i // 3) % ACTORS


def initial(wid: str) -> int:
    """The value step 0 of workflow ``wid`` starts from."""
    sender, i = wid.split(".")
    return int(sender) * 100_003 + int(i)


def advance(acc: int, n: int) -> int:
    """Step ``n``'s result from its input ``acc``."""
    return (acc * 31 + n + 7) % MODULUS


def expected_inputs(wid: str) -> list[int]:
    """The input of each step of workflow ``wid``, as journaled results chain them."""
    inputs = [initial(wid)]
    for n in range(STEPS - 1):
        inputs.append(advance(inputs[-1], n))
    return inputs


def expected_result(wid: str) -> int:
    return advance(expected_inputs(wid)[-1], STEPS - 1)


def step_log(root: str | Path) -> Path:
    """The step log of the runtime directory ``root`` (a file beside it, kept across runs)."""
    path = Path(root)
    return path.parent / f"{path.name}-steps.log"


class StepLog:
    """Appends one line per step call, flushed to the disk before the step goes on."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.pid = os.getpid()

    def write(self, key: str, wid: str, n: int, acc: int, tag: str) -> None:
        line = f"{self.pid} {key} {wid} {n} {acc} {tag}\n".encode()
        assert os.write(self.fd, line) == len(line)  # one write: a kill never cuts a line
        os.fsync(self.fd)


LOG: StepLog | None = None


def _log() -> StepLog:
    assert LOG is not None, "the step log is opened by main()"
    return LOG


def step_sync(key: str, wid: str, n: int, acc: int, tag: str) -> list[int]:
    log = _log()
    log.write(key, wid, n, acc, tag)
    time.sleep(EFFECT)
    return [advance(acc, n), log.pid]


async def step_async(key: str, wid: str, n: int, acc: int, tag: str) -> list[int]:
    log = _log()
    log.write(key, wid, n, acc, tag)
    await anyio.sleep(EFFECT)
    return [advance(acc, n), log.pid]


class Flow(actors.Actor, name="crash_steps_flow"):
    """Runs one many-step workflow per message."""

    # A workflow may be in flight at many kills in a row; since each run journals new steps,
    # the default Retry.max_crashes (deaths without progress) never dead-letters it.
    # No unique constraint: a workflow whose state effects were applied twice shows twice.
    migrations = (
        "CREATE TABLE finished(wid TEXT NOT NULL, acc INTEGER NOT NULL, tag TEXT NOT NULL, "
        "pids TEXT NOT NULL);",
    )

    async def run(self, wid: str) -> int:
        acc = initial(wid)
        pids: list[int] = []
        tag = "-"
        for n in range(STEPS):
            if n == BEFORE:
                tag = f"{self.uuid().hex}@{self.now().timestamp()!r}"
                await self.sleep(SLEEP)
            if n % 2 == 0:
                acc, pid = await self.step(f"s{n}", step_sync, self.key, wid, n, acc, tag)
            else:
                acc, pid = await self.step(f"s{n}", step_async, self.key, wid, n, acc, tag)
            pids.append(pid)
        self.sql.execute(
            "INSERT INTO finished(wid, acc, tag, pids) VALUES (?, ?, ?, ?)",
            (wid, acc, tag, " ".join(map(str, pids))),
        )
        self.kv[f"wf:{wid}"] = acc
        return acc

    async def sync(self) -> int:
        """A turn: it runs after every workflow queued before it."""
        return int(self.sql.query_value("SELECT count(*) FROM finished"))

    @actors.query
    async def dump(self) -> dict[str, Any]:
        return {
            "finished": self.sql.query("SELECT wid, acc, tag, pids FROM finished ORDER BY rowid"),
            "kv": {k: self.kv[k] for k in self.kv if k.startswith("wf:")},
        }


def open_runtime(root: str) -> AbstractAsyncContextManager[actors.Runtime]:
    return actors.open_runtime(root, types=[Flow], idle_timeout=IDLE_TIMEOUT)


async def sender_task(rt: actors.Runtime, sender: int, start: int, end: int) -> None:
    refs = [rt.ref(Flow, actor_key(a)) for a in range(ACTORS)]
    for i in range(start, end + 1):
        wid = workflow_id(sender, i)
        await refs[target(sender, i)].options(idempotency_key=wid).send(Flow.run, wid)
        emit(f"ACK {sender} {i}")


async def settle(rt: actors.Runtime) -> bool:
    progress: list[str] = []
    refs = [rt.ref(Flow, actor_key(a)) for a in range(ACTORS)]
    with anyio.move_on_after(DRAIN_TIMEOUT) as scope:
        await crash_child.sync_all(refs, Flow.sync, progress)
    if scope.cancelled_caught:
        print(f"drain timed out: {progress}; reports: {rt.reports}", file=sys.stderr)
        return False
    return True


async def collect(rt: actors.Runtime) -> dict[str, Any]:
    refs = [rt.ref(Flow, actor_key(a)) for a in range(ACTORS)]
    return {
        "actors": {ref.key: await ref.ask(Flow.dump) for ref in refs},
        "dead_letters": await crash_child.dead_letters(rt, refs),
        "reports": list(rt.reports),
    }


def main(argv: list[str]) -> int:
    global LOG
    LOG = StepLog(step_log(argv[2]))
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
