"""``torpor bench supervisor``: wake-ups, awake cost, mass hibernation and recovery, each beside
raw apsw doing the equivalent file work in the same run.

- Wake latency: a message to a hibernated actor, from the send until its handler starts
  (``RuntimeStatistics.wake_latency_*``), beside raw apsw opening the same actors' two files
  (``data.db`` and ``mailbox.db``) with the runtime's connection settings and reading one row
  from each.
- Awake idle actor: file descriptors and memory (RSS, and SQLite's own allocation) per awake
  actor, measured in a fresh process that opens the runtime created below and wakes N actors
  (in the process that created and hibernated thousands, freed memory is reused and the figure
  looks far smaller), beside another fresh process holding the same two files of N actors open
  with the same settings.
- Mass creation: create N actors (one message each) and let them hibernate; time, disk and RSS
  per actor, beside raw apsw creating and closing two WAL files per actor.
- Recovery: N actors each with a message pending (as after a kill -9), from ``open_runtime``
  until every message is applied.

Each target is printed as met or missed after the table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import apsw
import attrs

from ..files import db
from ..files.layout import DATA_FILE, MAILBOX_FILE, actor_dir, actor_id
from .turns import Figure, percentile

#: The actor type of this bench (its persisted name).
AGENT_NAME = "torpor.bench.Agent"

#: Targets (the values must be at most these).
TARGET_WAKE_P50 = 1e-3  # seconds
TARGET_WAKE_P99 = 5e-3  # seconds
TARGET_AWAKE_BYTES = 256 * 1024  # memory per awake idle actor

#: How the runtime opens an actor's ``data.db`` and ``mailbox.db`` on a wake-up
#: (``DataStore`` and ``Mailbox``), for the raw side: ``unix-excl`` (WAL index in memory, no
#: ``-shm``) and a persistent ``-wal``; ``db.connect`` adds WAL mode and the busy timeout.
#: ``tests/ops/test_bench.py`` checks that both files end up with the runtime's own settings.
WAKE_OPEN_SETTINGS: dict[str, Any] = {"private": True, "persist_wal": True}


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _types() -> Any:
    from ..actor import Actor

    class Agent(Actor, name=AGENT_NAME):
        async def hi(self, n: int = 1) -> int:
            total: int = self.kv.get("n", 0) + n
            self.kv["n"] = total
            return total

    return Agent


async def _create(
    folder: Path, agent: Any, count: int, max_awake: int, progress: Any = None
) -> tuple[float, float]:
    """Seconds to create and hibernate ``count`` actors, and RSS bytes gained per actor
    between the first tenth and the end (the slope, free of start-up costs)."""
    from ..runtime import open_runtime

    start = time.perf_counter()
    tenth = max(1, count // 10)
    rss_at_tenth = 0
    async with open_runtime(folder, types=[agent], idle_timeout=0, max_awake=max_awake) as rt:
        for i in range(count):
            if i == tenth:
                rss_at_tenth = _rss()
            if i and i % tenth == 0 and progress is not None:
                progress(
                    f"  {i} created, {time.perf_counter() - start:.0f} s, "
                    f"RSS {_rss() / 2**20:.1f} MiB"
                )
            await rt.ref(agent, f"a{i}").send(agent.hi)
        await rt.ref(agent, f"a{count - 1}").ask(agent.hi, 0)
        slope = (_rss() - rss_at_tenth) / max(1, count - tenth)
    return time.perf_counter() - start, slope


async def _wake(folder: Path, agent: Any, count: int) -> tuple[float | None, float | None]:
    from ..runtime import open_runtime

    async with open_runtime(folder, types=[agent], max_awake=count + 10, idle_timeout=3600) as rt:
        for i in range(count):
            await rt.ref(agent, f"a{i}").ask(agent.hi)
        stats = rt.statistics()
    return stats.wake_latency_p50, stats.wake_latency_p99


def _usage() -> tuple[int, int, int]:
    """Open file descriptors, RSS bytes and SQLite's allocated bytes of this process."""
    return _fds(), _rss(), apsw.memory_used()


def _per_actor(before: tuple[int, int, int], count: int) -> dict[str, float]:
    fds, rss, sqlite = (after - first for after, first in zip(_usage(), before, strict=True))
    return {"fds": fds / count, "rss": rss / count, "sqlite": sqlite / count}


async def _awake_cost(folder: Path, count: int) -> dict[str, float]:
    """Per awake idle actor: what waking ``a0`` .. ``a{count-1}`` adds to this process. Run
    in a fresh process (``_fresh_process``), after one wake-up (of ``a{count}``) has imported
    and cached what every wake-up shares."""
    from ..runtime import open_runtime

    agent = _types()
    async with open_runtime(folder, types=[agent], max_awake=count + 10, idle_timeout=3600) as rt:
        await rt.ref(agent, f"a{count}").ask(agent.hi)
        before = _usage()
        for i in range(count):
            await rt.ref(agent, f"a{i}").ask(agent.hi)
        return _per_actor(before, count)


async def _recover(folder: Path, agent: Any, count: int) -> float:
    from ..runtime import open_runtime

    start = time.perf_counter()
    async with open_runtime(folder, types=[agent], idle_timeout=0) as rt:
        while rt.statistics().messages_applied < count:  # noqa: ASYNC110 (10 ms grain is fine)
            await anyio.sleep(0.01)
    return time.perf_counter() - start


def _leave_pending_work(folder: Path, agent_name: str, count: int) -> None:
    """One unapplied message in each actor's mailbox and the pending hint set, as a kill -9
    right after the sends were acknowledged would leave them."""
    from ..codec import Codec

    payload = Codec().encode([[1], {}])
    ids = []
    for i in range(count):
        aid = actor_id(agent_name, f"a{i}")
        ids.append((aid,))
        conn = apsw.Connection(str(actor_dir(folder, aid) / MAILBOX_FILE))
        conn.pragma("locking_mode", "exclusive")
        conn.execute(
            "INSERT INTO inbox(method, payload, enqueued_at) VALUES ('hi', ?, 0)", (payload,)
        )
        conn.close()
    directory = apsw.Connection(str(folder / "directory.db"))
    with directory:
        directory.executemany("UPDATE actors SET pending = 1 WHERE id = ?", ids)
    directory.close()


def _open_as_a_wake(folder: Path, key: str) -> list[tuple[apsw.Connection, Path]]:
    """Raw apsw: open an actor's ``mailbox.db`` and ``data.db`` as a wake-up opens them
    (:data:`WAKE_OPEN_SETTINGS`, synchronous NORMAL) and read one row from each (its last
    message number, its applied-message cursor)."""
    files = actor_dir(folder, actor_id(AGENT_NAME, key))
    mailbox = db.connect(files / MAILBOX_FILE, synchronous="NORMAL", **WAKE_OPEN_SETTINGS)
    db.scalar(mailbox, "SELECT max(seq) FROM inbox")
    data = db.connect(files / DATA_FILE, synchronous="NORMAL", **WAKE_OPEN_SETTINGS)
    db.scalar(data, "SELECT applied_seq FROM _torpor_state")
    return [(mailbox, files / MAILBOX_FILE), (data, files / DATA_FILE)]


def _close_as_a_hibernation(opened: list[tuple[apsw.Connection, Path]]) -> None:
    (mailbox, mailbox_path), (data, data_path) = opened
    db.close(mailbox, mailbox_path, keep_wal=True)  # as Mailbox.close and DataStore.close
    db.close(data, data_path, keep_wal=False)


def _raw_wake(folder: Path, count: int) -> tuple[list[float], list[float]]:
    """Seconds to open the two files of each of ``a0`` .. ``a{count-1}`` (hibernated) and
    read a row from each, and seconds to close them again (not part of a wake-up)."""
    opens, closes = [], []
    for i in range(count):
        start = time.perf_counter()
        opened = _open_as_a_wake(folder, f"a{i}")
        opens.append(time.perf_counter() - start)
        start = time.perf_counter()
        _close_as_a_hibernation(opened)
        closes.append(time.perf_counter() - start)
    return opens, closes


def _raw_awake_cost(folder: Path, count: int) -> dict[str, float]:
    """Per actor: what holding the two files of ``a0`` .. ``a{count-1}`` open (as a wake-up
    opens them) adds to this process; a fresh one, after ``a{count}``'s files were opened."""
    held = [_open_as_a_wake(folder, f"a{count}")]
    before = _usage()
    for i in range(count):
        held.append(_open_as_a_wake(folder, f"a{i}"))
    cost = _per_actor(before, count)
    for opened in held:
        _close_as_a_hibernation(opened)
    return cost


def _fresh_process(side: str, folder: Path, count: int, backend: str) -> dict[str, float]:
    """Run ``_awake_cost`` (side ``torpor``) or ``_raw_awake_cost`` (``raw``) in a new Python
    process, on the runtime directory ``folder`` (closed by this process meanwhile)."""
    package_parent = str(Path(__file__).resolve().parents[2])  # (the folder holding runtime/)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", __name__, side, str(folder), str(count), backend],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the fresh {side} process failed:\n{done.stderr}")
    result: dict[str, float] = json.loads(done.stdout)
    return result


def _raw_create(folder: Path, count: int) -> float:
    start = time.perf_counter()
    for i in range(count):
        for name in ("d", "m"):
            conn = db.connect(folder / f"{name}{i}.db")
            conn.execute(
                "CREATE TABLE t(k TEXT PRIMARY KEY, v); INSERT INTO t VALUES ('n', 1)"
            ).fetchall()
            conn.close()
    return time.perf_counter() - start


def _disk(folder: Path) -> int:
    """Bytes allocated to the files and folders under ``folder`` (what ``du`` counts)."""
    total = 0
    for parent, dirs, files in os.walk(folder):
        for name in (*dirs, *files):
            total += os.lstat(os.path.join(parent, name)).st_blocks * 512
    return total


@attrs.frozen
class Target:
    """One target and this run's verdict on it (``met`` is ``None`` when the run cannot
    judge it)."""

    what: str
    measured: str
    met: bool | None

    def line(self) -> str:
        verdict = {True: "met", False: "MISSED", None: "not judged"}[self.met]
        return f"  {verdict:<10} {self.what}: {self.measured}"


@attrs.frozen
class Report:
    """The figures of a run, the targets met or missed, and what each raw side did."""

    figures: list[Figure]
    targets: list[Target]
    notes: list[str]

    def lines(self) -> list[str]:
        missed = [target.what for target in self.targets if target.met is False]
        return [
            "",
            "targets:",
            *(target.line() for target in self.targets),
            f"targets missed: {'; '.join(missed)}" if missed else "targets missed: none",
            "",
            *self.notes,
        ]

    def as_json(self) -> dict[str, Any]:
        return {
            "targets": [attrs.asdict(target) for target in self.targets],
            "notes": self.notes,
        }


def run(
    *,
    actors: int,
    awake: int,
    resume: int = 10_000,
    backend: str = "trio",
    progress: Any = print,
) -> Report:
    if actors < 2:
        raise ValueError(f"actors must be at least 2 (got {actors})")
    agent = _types()
    figures = []
    with tempfile.TemporaryDirectory(prefix="torpor-bench-") as tmp:
        root = Path(tmp)
        (root / "raw").mkdir()

        progress(f"creating and hibernating {actors} actors")
        seconds, slope = anyio.run(
            _create, root / "rt", agent, actors, 64, progress, backend=backend
        )
        raw_seconds = _raw_create(root / "raw", min(actors, 2000)) / min(actors, 2000)
        figures.append(
            Figure(
                f"create+hibernate, per actor ({actors})",
                seconds / actors * 1e3,
                raw_seconds * 1e3,
                "ms",
                False,
            )
        )
        figures.append(
            Figure(
                "disk per hibernated actor",
                _disk(root / "rt") / actors / 1024,
                _disk(root / "raw") / min(actors, 2000) / 1024,
                "KiB",
                False,
            )
        )
        figures.append(Figure("RSS growth per hibernated actor", slope, 0.0, "B", False))

        sample = min(actors, awake)
        progress(f"waking {sample} hibernated actors, then opening their files with raw apsw")
        p50, p99 = anyio.run(_wake, root / "rt", agent, sample, backend=backend)
        p50, p99 = p50 or 0.0, p99 or 0.0
        raw_opens, raw_closes = _raw_wake(root / "rt", sample)
        figures.append(
            Figure("wake latency p50", p50 * 1e6, percentile(raw_opens, 50) * 1e6, "µs", False)
        )
        figures.append(
            Figure("wake latency p99", p99 * 1e6, percentile(raw_opens, 99) * 1e6, "µs", False)
        )

        held = min(awake, actors - 1)  # one more actor is woken first, as a warm-up
        progress(f"{held} awake idle actors, in a fresh process; raw, in another")
        ours = _fresh_process("torpor", root / "rt", held, backend)
        raw = _fresh_process("raw", root / "rt", held, backend)
        figures.append(
            Figure("fds per awake actor, fresh process", ours["fds"], raw["fds"], "fd", False)
        )
        figures.append(
            Figure(
                "RSS per awake actor, fresh process",
                ours["rss"] / 1024,
                raw["rss"] / 1024,
                "KiB",
                False,
            )
        )
        figures.append(
            Figure(
                "SQLite heap per awake actor, fresh process",
                ours["sqlite"] / 1024,
                raw["sqlite"] / 1024,
                "KiB",
                False,
            )
        )

        resume = min(resume, actors)
        progress(f"recovering {resume} actors with pending work")
        _leave_pending_work(root / "rt", AGENT_NAME, resume)
        seconds = anyio.run(_recover, root / "rt", agent, resume, backend=backend)
        figures.append(
            Figure(
                f"resume {resume} actors with pending work",
                seconds,
                raw_seconds * resume,
                "s",
                False,
            )
        )
    targets = [
        Target(
            f"wake latency p50 ≤ {TARGET_WAKE_P50 * 1e3:g} ms (files in the page cache)",
            f"{p50 * 1e3:.2f} ms",
            p50 <= TARGET_WAKE_P50,
        ),
        Target(
            f"wake latency p99 ≤ {TARGET_WAKE_P99 * 1e3:g} ms (files in the page cache)",
            f"{p99 * 1e3:.2f} ms",
            p99 <= TARGET_WAKE_P99,
        ),
        Target(
            f"memory per awake idle actor ≤ {TARGET_AWAKE_BYTES // 1024} KiB (RSS, fresh process)",
            f"{ours['rss'] / 1024:.0f} KiB (SQLite's own accounting: "
            f"{ours['sqlite'] / 1024:.0f} KiB)",
            ours["rss"] <= TARGET_AWAKE_BYTES,
        ),
        Target(
            "no RSS growth per hibernated actor",
            f"{slope:.0f} B per actor from the first tenth to the last of {actors} actors, "
            "bounded caches filling included (65,536 actor ids, 2 MB of directory pages); "
            "the RSS in the progress lines shows whether it levels off",
            None,
        ),
    ]
    notes = [
        f"wake latency, raw: open data.db and mailbox.db of the same {sample} hibernated "
        "actors with the runtime's settings (unix-excl VFS, WAL, persistent -wal, "
        "synchronous=NORMAL) and read one row from each; closing them again (not part of a "
        f"wake-up) took p50 {percentile(raw_closes, 50) * 1e6:.0f} µs more",
        f"per awake actor: a fresh process opens the runtime and wakes {held} hibernated "
        "actors after one warm-up wake; raw: another fresh process holds the same two files "
        f"of {held} actors open with the same settings, a row read from each",
    ]
    return Report(figures, targets, notes)


def _main(argv: list[str]) -> int:
    """The fresh process of :func:`_fresh_process`: ``SIDE FOLDER COUNT BACKEND``; prints the
    cost per actor as JSON."""
    side, folder, count, backend = argv
    if side == "torpor":
        cost = anyio.run(_awake_cost, Path(folder), int(count), backend=backend)
    else:
        cost = _raw_awake_cost(Path(folder), int(count))
    print(json.dumps(cost))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
