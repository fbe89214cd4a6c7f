"""``torpor bench runs``: how many runs start and finish per second, and what reading a run
costs, each beside raw apsw doing the file work underneath in the same run.

- Runs from outside: ``rt.start`` of ``count`` runs (a workflow of one journaled step), in
  batches of ``BATCH`` started together, each awaited with ``run.result()``. A run is a new
  actor: its two files are created, its start message appended, its turn run and committed,
  its outcome recorded. Beside it: raw apsw creating one WAL file per run, inserting a message
  and applying it in a second transaction (the mailbox pattern, in a new file each time).
- Runs from a handler: an actor's turn starts ``BATCH`` runs with ``self.start``; the figure
  counts until every outcome reached its ``on_run_done`` (the outbox delivery of the outcome
  and one more turn of the starter per run). Same raw comparator.
- ``run.status()`` and ``run.result()`` of a finished, hibernated run, p50: read from its files
  without waking it. Beside them: raw apsw opening the run's files and running one query.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

from ..files import db
from ..files.layout import DATA_FILE, MAILBOX_FILE, actor_dir, actor_id
from .turns import Figure, percentile

#: Runs started together (and, from a handler, by one turn).
BATCH = 50
WORKFLOW = "torpor.bench.Run"
STARTER = "torpor.bench.Starter"


async def _work(i: int) -> int:
    return i + 1


#: ``on_run_done`` of the bench's starter sets the event once this many outcomes arrived.
_ALL_DONE: list[Any] = [0, None]


def _types() -> tuple[Any, Any]:
    # Defined here, not at import time, so that importing the engine builds no actor class.
    from ..actor import Actor
    from ..run import Run
    from ..workflow import Workflow

    class Job(Workflow, name=WORKFLOW):
        async def run(self, i: int) -> int:
            return int(await self.step("work", _work, i))

    class Starter(Actor, name=STARTER):
        async def start_many(self, first: int, count: int) -> None:
            for i in range(first, first + count):
                self.start(Job.run, i, id=f"h{i}")

        async def on_run_done(self, run: Run[Any], outcome: Any) -> None:
            done = int(self.kv.get("done", 0)) + 1
            self.kv["done"] = done
            if done >= _ALL_DONE[0]:
                _ALL_DONE[1].set()

        async def done(self) -> int:
            return int(self.kv.get("done", 0))

    return Job, Starter


async def _measure(folder: Path, count: int, synchronous: str) -> dict[str, Any]:
    from ..runtime import open_runtime

    job, starter_type = _types()
    out: dict[str, Any] = {}
    async with open_runtime(
        folder, types=[job, starter_type], synchronous=synchronous, idle_timeout=0.05
    ) as rt:
        await (await rt.start(job.run, -1, id="warm-up")).result()

        began = time.perf_counter()
        for first in range(0, count, BATCH):
            runs = [
                await rt.start(job.run, i, id=f"o{i}")
                for i in range(first, min(count, first + BATCH))
            ]
            for run in runs:
                await run.result()
        out["outside"] = count / (time.perf_counter() - began)

        starter = rt.ref(starter_type, "s")
        await starter.ask(starter_type.done)
        _ALL_DONE[:] = [count, anyio.Event()]
        began = time.perf_counter()
        for first in range(0, count, BATCH):
            await starter.ask(starter_type.start_many, first, min(BATCH, count - first))
        await _ALL_DONE[1].wait()  # (set by on_run_done: an outcome's turn committing next)
        out["handler"] = count / (time.perf_counter() - began)

        await anyio.sleep(0.5)  # finished runs hibernate
        status: list[float] = []
        result: list[float] = []
        for i in range(min(count, 200)):
            run = rt.run(job, f"o{i}")
            start = time.perf_counter()
            await run.status()
            status.append(time.perf_counter() - start)
            start = time.perf_counter()
            await run.result()
            result.append(time.perf_counter() - start)
        out["status"], out["result"] = status, result
    return out


def _raw_runs(folder: Path, count: int, synchronous: str) -> float:
    """Runs per second of raw apsw doing a new actor's mailbox pattern in a new file each."""
    began = time.perf_counter()
    for i in range(count):
        path = folder / f"run{i}.db"
        conn = db.connect(path, synchronous=synchronous)
        conn.execute(
            "CREATE TABLE inbox(seq INTEGER PRIMARY KEY, method TEXT, payload BLOB);"
            "CREATE TABLE state(k TEXT PRIMARY KEY, v) WITHOUT ROWID;"
        )
        conn.execute("INSERT INTO inbox(method, payload) VALUES ('run', ?)", (b"\x91\x01",))
        conn.execute("BEGIN IMMEDIATE")
        for (seq,) in conn.execute("SELECT seq FROM inbox ORDER BY seq LIMIT 1"):
            conn.execute("INSERT INTO state VALUES ('result', ?)", (seq,))
            conn.execute("DELETE FROM inbox WHERE seq = ?", (seq,))
        conn.execute("COMMIT")
        conn.close()
    return count / (time.perf_counter() - began)


def _raw_reads(root: Path, count: int, synchronous: str) -> list[float]:
    """Seconds to open a finished run's two files (copies) and run one query on each."""
    copies = root / "raw-copies"
    copies.mkdir()
    times = []
    for i in range(count):
        folder = actor_dir(root / "rt", actor_id(WORKFLOW, f"o{i}"))
        target = copies / str(i)
        shutil.copytree(folder, target)
        start = time.perf_counter()
        for name in (MAILBOX_FILE, DATA_FILE):
            conn = db.connect(target / name, synchronous=synchronous, private=True)
            conn.execute("SELECT count(*) FROM sqlite_schema").fetchall()
            conn.close()
        times.append(time.perf_counter() - start)
    return times


def run(
    *,
    quick: bool = False,
    synchronous: str = "NORMAL",
    backend: str = "trio",
    progress: Callable[[str], None] = lambda _: None,
) -> list[Figure]:
    """Measure everything; return the figures."""
    count = 200 if quick else 2000
    with tempfile.TemporaryDirectory(prefix="torpor-bench-") as tmp:
        root = Path(tmp)
        progress(f"{count} runs from outside, then {count} from a handler")
        measured = anyio.run(_measure, root / "rt", count, synchronous, backend=backend)
        (root / "raw").mkdir()
        progress(f"raw apsw: {count} new files, one message applied in each")
        raw = _raw_runs(root / "raw", count, synchronous)
        reads = _raw_reads(root, min(count, 200), synchronous)
    return [
        Figure("runs started and finished, rt.start", measured["outside"], raw, "runs/s", True),
        Figure(
            "runs started by a handler, to on_run_done", measured["handler"], raw, "runs/s", True
        ),
        Figure(
            "run.status() of a hibernated run, p50",
            percentile(measured["status"], 50) * 1e6,
            percentile(reads, 50) * 1e6,
            "µs",
            False,
        ),
        Figure(
            "run.result() of a finished run, mean",
            statistics.fmean(measured["result"]) * 1e6,
            statistics.fmean(reads) * 1e6,
            "µs",
            False,
        ),
    ]


if __name__ == "__main__":
    for figure in run(quick="--quick" in sys.argv, progress=print):
        print(figure)
