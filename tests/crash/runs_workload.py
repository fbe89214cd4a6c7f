"""The child program of the runs crash harness (test_crash_runs.py); SIGKILLed at will.

Usage (from the repository root)::

    python -m tests.crash.runs_workload run <runtime_dir> <end> <start_0> <start_1>
    python -m tests.crash.runs_workload verify <runtime_dir>

``run``: sender 0 asks a starter actor (``Starter.kick``, with ``idempotency_key=wid``) to
start run ``wid`` with ``self.start(Job.run, wid, id=wid)``; sender 1 starts run ``wid`` itself
with ``rt.start(Job.run, wid, id=wid)``. Each then signals the run ``go`` (idempotency key
``go:<wid>``) and prints ``ACK s i``. A sender restarted after a kill starts and signals its
unacknowledged run again: the same id, and the same signal key.

A run (``Job.run``) records value ``stage`` 1, runs one journaled step, sleeps durably for
longer than the idle timeout (it hibernates in its wait), waits for ``go`` or an hour's sleep
(``self.wait_any``: ``go`` must win), records ``stage`` 2,
inserts one row in its table (no unique constraint: a run applied twice shows twice) and
returns ``<wid>:<payload of go>``. A starter's ``on_run_done`` inserts a row per outcome in its
own table (no unique constraint either). When the senders are done, the child waits for every
run's result and for every starter's outcomes, prints ``DONE`` and exits 0 (3 if that takes
longer than ``DRAIN_TIMEOUT``).

``verify``: opens the runtime and prints ``STATE <json>``: every run's status, result, rows,
values and journaled value steps, the starters' outcomes, dead letters and reports.
"""

from __future__ import annotations

import sys
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio

import actors
from tests.support import crash_child
from tests.support.crash_child import emit

SENDERS = 2
STARTERS = 2
SLEEP = 0.04
IDLE_TIMEOUT = 0.02
EFFECT = 0.002
DRAIN_TIMEOUT = 25.0


def workflow_id(sender: int, i: int) -> str:
    return f"{sender}.{i}"


def starter_key(i: int) -> str:
    return f"s{i % STARTERS}"


async def work(wid: str) -> str:
    await anyio.sleep(EFFECT)
    return f"worked {wid}"


class Job(actors.Workflow, name="crash_runs_job"):
    migrations = ("CREATE TABLE finished(wid TEXT NOT NULL, go TEXT NOT NULL);",)

    async def run(self, wid: str) -> str:
        await self.set_value("stage", 1)
        await self.step("work", work, wid)
        await self.sleep(SLEEP)
        index, go = await self.wait_any(self.wait_for_event("go"), self.sleep(3600))
        if index != 0:
            go = f"wait_any chose {index}"
        await self.set_value("stage", 2)
        self.sql.execute("INSERT INTO finished(wid, go) VALUES (?, ?)", (wid, go))
        return f"{wid}:{go}"

    @actors.query
    async def rows(self) -> int:
        return int(self.sql.query_value("SELECT count(*) FROM finished"))


class Starter(actors.Actor, name="crash_runs_starter"):
    migrations = ("CREATE TABLE outcomes(wid TEXT NOT NULL, outcome TEXT NOT NULL);",)

    async def kick(self, wid: str) -> str:
        return self.start(Job.run, wid, id=wid).id

    async def on_run_done(self, run: actors.Run[Any], outcome: Any) -> None:
        self.sql.execute("INSERT INTO outcomes(wid, outcome) VALUES (?, ?)", (run.id, str(outcome)))

    @actors.query
    async def outcomes(self) -> list[list[str]]:
        return [list(r) for r in self.sql.query("SELECT wid, outcome FROM outcomes ORDER BY rowid")]


def open_runtime(root: str) -> AbstractAsyncContextManager[actors.Runtime]:
    return actors.open_runtime(root, types=[Job, Starter], idle_timeout=IDLE_TIMEOUT)


async def sender_task(rt: actors.Runtime, sender: int, start: int, end: int) -> None:
    for i in range(start, end + 1):
        wid = workflow_id(sender, i)
        if sender == 0:
            starter = rt.ref(Starter, starter_key(i))
            run_id = await starter.options(idempotency_key=wid).ask(Starter.kick, wid)
            run = rt.run(Job, run_id)
        else:
            run = await rt.start(Job.run, wid, id=wid)
        await run.signal("go", f"go-{wid}", idempotency_key=f"go:{wid}")
        emit(f"ACK {sender} {i}")


def _wids(rt: actors.Runtime) -> list[str]:
    return sorted(run.id for run in rt.runs(None)) + sorted(
        run.id for i in range(STARTERS) for run in rt.runs(rt.ref(Starter, starter_key(i)))
    )


async def settle(rt: actors.Runtime) -> bool:
    progress: list[str] = []
    with anyio.move_on_after(DRAIN_TIMEOUT) as scope:
        for wid in _wids(rt):
            progress[:] = [f"waiting for run {wid}"]
            await rt.run(Job, wid).result()
        expected = sum(len(rt.runs(rt.ref(Starter, starter_key(i)))) for i in range(STARTERS))
        while True:  # on_run_done messages leave the runs' outboxes after their commits
            progress[:] = [f"waiting for {expected} outcomes"]
            seen = 0
            for i in range(STARTERS):
                seen += len(await rt.ref(Starter, starter_key(i)).ask(Starter.outcomes))
            if seen >= expected:
                break
            await anyio.sleep(0.01)
    if scope.cancelled_caught:
        print(f"drain timed out: {progress}; reports: {rt.reports}", file=sys.stderr)
        return False
    return True


async def collect(rt: actors.Runtime) -> dict[str, Any]:
    runs: dict[str, Any] = {}
    for wid in _wids(rt):
        run = rt.run(Job, wid)
        status = await run.status()
        try:
            result: Any = await run.result()
        except actors.ActorError as exc:
            result = f"error {exc!r}"
        runs[wid] = {
            "state": status.state,
            "result": result,
            "rows": await run.ref.ask(Job.rows),
            "stage": await run.get_value("stage"),
            "value_steps": [s.name for s in status.steps if s.kind == "value"],
            "parent": None,
        }
    starters = {}
    for i in range(STARTERS):
        ref = rt.ref(Starter, starter_key(i))
        starters[ref.key] = await ref.ask(Starter.outcomes)
        for run in rt.runs(ref):
            runs[run.id]["parent"] = ref.key
    refs = [rt.ref(Starter, starter_key(i)) for i in range(STARTERS)]
    refs += [rt.run(Job, wid).ref for wid in runs]
    return {
        "runs": runs,
        "starters": starters,
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
