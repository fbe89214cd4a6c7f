"""``torpor bench steps``: what a durable step costs, and how fast a workflow resumes after a
``kill -9``, each beside raw apsw doing the file work underneath in the same run.

- Step overhead: one actor answers asks whose handler awaits ``per_turn`` journaled steps of a
  trivial async function, alternating with asks whose handler awaits the same function directly.
  The difference in time, divided by the number of steps, is the cost of journaling a step
  (numbering, encoding its result, one ``mailbox.db`` transaction, the journal's cleanup after
  the turn). Beside it: one raw apsw ``INSERT`` + commit into a WAL table shaped like the
  journal, at the same ``synchronous`` level.
- Resumption: a child process runs a workflow of ``RESUME_STEPS`` steps and is SIGKILLed while
  step ``KILL_AT`` runs (the steps before it are journaled). A fresh child then measures from
  just before ``open_runtime`` to the moment step ``KILL_AT``'s function starts again: opening
  the runtime, finding the actor through ``directory.db``, waking it, and replaying the journaled
  steps. Beside it: raw apsw opening copies of the killed actor's two files (WAL recovery
  included) and running a first query on each.

Usage of the children (the parent runs them with this interpreter)::

    python -m runtime.bench.steps crash <runtime_dir> <synchronous> <backend>
    python -m runtime.bench.steps resume <runtime_dir> <synchronous> <backend>
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

from ..files import db
from ..files.layout import DATA_FILE, MAILBOX_FILE, actor_dir, actor_id
from .turns import Figure, percentile

#: Steps per turn in the overhead measurement (a workflow of typical length).
PER_TURN = 20
#: The resumed workflow: its length, and the step in flight when the child is killed.
RESUME_STEPS = 20
KILL_AT = 10
#: A child that has not reached its step (or finished) after this many seconds is a failure.
CHILD_TIMEOUT = 60.0
TYPE_NAME = "torpor.bench.Workflow"
KEY = "wf"


async def _noop(i: int) -> int:
    return i


class _Child:
    """What a child's step function needs to know (set by ``child_main``)."""

    mode = ""
    first_n: int | None = None
    first_at = 0.0


async def _work(n: int) -> int:
    """The resumed workflow's step: ``crash`` blocks in step ``KILL_AT`` until killed;
    ``resume`` notes when and where the first step function ran."""
    if _Child.first_n is None:
        _Child.first_at = time.perf_counter()
        _Child.first_n = n
    if _Child.mode == "crash" and n == KILL_AT:
        sys.stdout.write("IN_STEP\n")
        sys.stdout.flush()
        await anyio.sleep_forever()
    return n


def _types() -> Any:
    # Defined here, not at import time, so that importing the engine builds no actor class.
    from ..actor import Actor

    class Workflow(Actor, name=TYPE_NAME):
        async def steps(self, count: int) -> int:
            total = 0
            for i in range(count):
                total += await self.step("noop", _noop, i)
            return total

        async def direct(self, count: int) -> int:
            total = 0
            for i in range(count):
                total += await _noop(i)
            return total

        async def run(self, count: int) -> int:
            total = 0
            for n in range(count):
                total += await self.step(f"s{n}", _work, n)
            return total

    return Workflow


# -- step overhead --------------------------------------------------------------------------


async def _step_overhead(
    folder: Path, turns: int, per_turn: int, synchronous: str
) -> tuple[list[float], list[float]]:
    """Seconds per ask of ``per_turn`` journaled steps, and of the same calls made directly."""
    from ..runtime import open_runtime

    workflow = _types()
    with_steps: list[float] = []
    direct: list[float] = []
    async with open_runtime(folder, types=[workflow], synchronous=synchronous) as rt:
        ref = rt.ref(workflow, "overhead")
        await ref.ask(workflow.direct, per_turn)  # wake the actor, warm both paths
        await ref.ask(workflow.steps, per_turn)
        for _ in range(turns):
            start = time.perf_counter()
            await ref.ask(workflow.steps, per_turn)
            with_steps.append(time.perf_counter() - start)
            start = time.perf_counter()
            await ref.ask(workflow.direct, per_turn)
            direct.append(time.perf_counter() - start)
    return with_steps, direct


def _raw_journal_inserts(folder: Path, count: int, synchronous: str) -> list[float]:
    """Seconds per raw ``INSERT`` + commit of a journal-shaped row into a WAL table."""
    conn = db.connect(folder / "raw-journal.db", synchronous=synchronous)
    conn.execute(
        "CREATE TABLE journal(seq INTEGER NOT NULL, n INTEGER NOT NULL, kind TEXT NOT NULL, "
        "name TEXT NOT NULL, status TEXT NOT NULL, value BLOB, until REAL, "
        "attempts INTEGER NOT NULL DEFAULT 0, recorded_at REAL NOT NULL, PRIMARY KEY (seq, n))"
    ).fetchall()
    value = b"\x05"
    out = []
    try:
        for i in range(count):
            start = time.perf_counter()
            with conn:
                conn.execute(
                    "INSERT INTO journal(seq, n, kind, name, status, value, until, attempts, "
                    "recorded_at) VALUES (?, ?, 'step', 'noop', 'done', ?, NULL, 1, ?)",
                    (i // PER_TURN, i % PER_TURN, value, time.time()),
                )
            out.append(time.perf_counter() - start)
    finally:
        conn.close()
    return out


# -- resumption after kill -9 -----------------------------------------------------------------


def _child(mode: str, folder: Path, synchronous: str, backend: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "runtime.bench.steps", mode, str(folder), synchronous, backend],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _kill_in_step(folder: Path, synchronous: str, backend: str) -> None:
    """Run the workflow in a child and SIGKILL it while step ``KILL_AT`` runs."""
    child = _child("crash", folder, synchronous, backend)
    watchdog = threading.Timer(CHILD_TIMEOUT, child.kill)
    watchdog.start()
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        if line != b"IN_STEP\n":
            child.kill()
            _, err = child.communicate()
            raise RuntimeError(
                f"bench steps: the crash child printed {line!r} instead of IN_STEP; stderr:\n"
                f"{err.decode(errors='replace')[-2000:]}"
            )
        os.kill(child.pid, signal.SIGKILL)
        child.communicate()
    finally:
        watchdog.cancel()
        if child.poll() is None:
            child.kill()
            child.wait()


def _resume(folder: Path, synchronous: str, backend: str) -> float:
    """Seconds from just before ``open_runtime`` to the first step that runs again."""
    child = _child("resume", folder, synchronous, backend)
    try:
        out, err = child.communicate(timeout=CHILD_TIMEOUT)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    words = out.decode().split()
    if child.returncode != 0 or len(words) != 3 or words[0] != "FIRST_STEP":
        raise RuntimeError(
            f"bench steps: the resume child exited {child.returncode} printing {out!r}; "
            f"stderr:\n{err.decode(errors='replace')[-2000:]}"
        )
    if int(words[1]) != KILL_AT:
        raise RuntimeError(
            f"bench steps: the resumed workflow ran step {words[1]} first, not step {KILL_AT} "
            "(the one in flight at the kill): journaled steps ran again, or the journal is lost"
        )
    return float(words[2])


def _raw_open_two(files: Path, synchronous: str) -> float:
    """Seconds to open ``data.db`` and ``mailbox.db`` under ``files`` and query each once."""
    start = time.perf_counter()
    conns = [
        db.connect(files / name, synchronous=synchronous, private=True)
        for name in (DATA_FILE, MAILBOX_FILE)
    ]
    for conn in conns:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
    seconds = time.perf_counter() - start
    for conn in conns:
        conn.close()
    return seconds


def _resumptions(
    root: Path, repeats: int, synchronous: str, backend: str, progress: Callable[[str], None]
) -> tuple[list[float], list[float]]:
    """Kill a workflow mid-step and resume it ``repeats`` times, each in a fresh runtime
    directory; seconds to the first resumed step, and raw seconds to open the killed files."""
    resumed: list[float] = []
    raw: list[float] = []
    for rep in range(repeats):
        progress(f"  kill -9 and resume {rep + 1}/{repeats}")
        folder = root / f"resume{rep}"
        _kill_in_step(folder, synchronous, backend)
        killed = actor_dir(folder, actor_id(TYPE_NAME, KEY))
        copy = root / f"raw-resume{rep}"
        copy.mkdir()
        for path in killed.iterdir():  # as the kill left them, WAL files included
            shutil.copyfile(path, copy / path.name)
        raw.append(_raw_open_two(copy, synchronous))
        resumed.append(_resume(folder, synchronous, backend))
    return resumed, raw


async def _crash_child(folder: Path, synchronous: str) -> None:
    from ..runtime import open_runtime

    workflow = _types()
    async with open_runtime(folder, types=[workflow], synchronous=synchronous) as rt:
        await rt.ref(workflow, KEY).send(workflow.run, RESUME_STEPS)
        await anyio.sleep_forever()  # step KILL_AT blocks until the parent kills this process


async def _resume_child(folder: Path, synchronous: str) -> None:
    from ..runtime import open_runtime

    workflow = _types()
    start = time.perf_counter()
    async with open_runtime(folder, types=[workflow], synchronous=synchronous) as rt:
        while rt.statistics().messages_applied < 1:  # noqa: ASYNC110 (polling is fine here)
            await anyio.sleep(0.005)
    print(f"FIRST_STEP {_Child.first_n} {_Child.first_at - start!r}", flush=True)


def child_main(argv: list[str]) -> int:
    mode, folder, synchronous, backend = argv
    _Child.mode = mode
    if mode == "crash":
        anyio.run(_crash_child, Path(folder), synchronous, backend=backend)
    elif mode == "resume":
        anyio.run(_resume_child, Path(folder), synchronous, backend=backend)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    return 0


# -- the suite --------------------------------------------------------------------------------


def run(
    *,
    quick: bool = False,
    synchronous: str = "NORMAL",
    backend: str = "trio",
    progress: Callable[[str], None] = lambda _: None,
) -> list[Figure]:
    """Measure everything; return the figures."""
    turns = 50 if quick else 500
    repeats = 3 if quick else 9
    figures = []
    with tempfile.TemporaryDirectory(prefix="torpor-bench-") as tmp:
        root = Path(tmp)
        progress(f"step overhead: {turns} turns of {PER_TURN} steps, and without steps")
        with_steps, direct = anyio.run(
            _step_overhead, root / "overhead", turns, PER_TURN, synchronous, backend=backend
        )
        (root / "raw").mkdir()
        raw = _raw_journal_inserts(root / "raw", turns * PER_TURN, synchronous)
        mean = (sum(with_steps) - sum(direct)) / (turns * PER_TURN)
        figures.append(
            Figure(
                "journaled step overhead, mean",
                mean * 1e6,
                statistics.fmean(raw) * 1e6,
                "µs",
                False,
            )
        )
        p50 = (percentile(with_steps, 50) - percentile(direct, 50)) / PER_TURN
        figures.append(
            Figure(
                "journaled step overhead, p50 turn",
                p50 * 1e6,
                percentile(raw, 50) * 1e6,
                "µs",
                False,
            )
        )

        progress(f"resumption after kill -9, {repeats} times")
        resumed, raw_open = _resumptions(root, repeats, synchronous, backend, progress)
        figures.append(
            Figure(
                "kill -9 -> first resumed step, p50",
                percentile(resumed, 50) * 1e3,
                percentile(raw_open, 50) * 1e3,
                "ms",
                False,
            )
        )
        figures.append(
            Figure(
                "kill -9 -> first resumed step, max",
                max(resumed) * 1e3,
                max(raw_open) * 1e3,
                "ms",
                False,
            )
        )
    return figures


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
