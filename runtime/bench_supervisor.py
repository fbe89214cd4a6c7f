"""``torpor bench supervisor``: wake-ups, awake cost, mass hibernation and recovery, each beside
raw apsw doing the equivalent file work in the same run.

- Wake latency: a message to a hibernated actor, from the send until its handler starts
  (``RuntimeStatistics.wake_latency_*``), beside a raw open + query + close of one WAL file.
- Awake idle actor: file descriptors and memory (RSS, and SQLite's own allocation) per awake
  actor, beside one raw WAL connection with a query run.
- Mass creation: create N actors (one message each) and let them hibernate; time, disk and RSS
  per actor, beside raw apsw creating and closing two WAL files per actor.
- Recovery: N actors each with a message pending (as after a kill -9), from ``open_runtime``
  until every message is applied.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import apsw

from . import db
from .bench import Figure, percentile
from .layout import MAILBOX_FILE, actor_dir, actor_id


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _types() -> Any:
    from .actor import Actor

    class Agent(Actor, name="torpor.bench.Agent"):
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
    from .engine import open_runtime

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
    from .engine import open_runtime

    async with open_runtime(folder, types=[agent], max_awake=count + 10, idle_timeout=3600) as rt:
        for i in range(count):
            await rt.ref(agent, f"a{i}").ask(agent.hi)
        stats = rt.statistics()
    return stats.wake_latency_p50, stats.wake_latency_p99


async def _awake_cost(folder: Path, agent: Any, count: int) -> tuple[float, float, float]:
    from .engine import open_runtime

    async with open_runtime(folder, types=[agent], max_awake=count + 10, idle_timeout=3600) as rt:
        await rt.ref(agent, "warm").ask(agent.hi)  # imports, caches, the directory
        fds, rss, sqlite = _fds(), _rss(), apsw.memory_used()
        for i in range(count):
            await rt.ref(agent, f"a{i}").ask(agent.hi)
        return (
            (_fds() - fds) / count,
            (_rss() - rss) / count,
            (apsw.memory_used() - sqlite) / count,
        )


async def _recover(folder: Path, agent: Any, count: int) -> float:
    from .engine import open_runtime

    start = time.perf_counter()
    async with open_runtime(folder, types=[agent], idle_timeout=0) as rt:
        while rt.statistics().messages_applied < count:  # noqa: ASYNC110 (10 ms grain is fine)
            await anyio.sleep(0.01)
    return time.perf_counter() - start


def _leave_pending_work(folder: Path, agent_name: str, count: int) -> None:
    """One unapplied message in each actor's mailbox and the pending hint set, as a kill -9
    right after the sends were acknowledged would leave them."""
    from .codec import Codec

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


def _raw_open_query_close(folder: Path, count: int) -> list[float]:
    paths = []
    for i in range(count):
        conn = db.connect(folder / f"raw{i}.db")
        conn.execute(
            "CREATE TABLE t(k TEXT PRIMARY KEY, v) WITHOUT ROWID; INSERT INTO t VALUES ('n', 0)"
        ).fetchall()
        conn.close()
        paths.append(folder / f"raw{i}.db")
    out = []
    for path in paths:
        start = time.perf_counter()
        conn = db.connect(path)
        conn.execute("SELECT v FROM t WHERE k = 'n'").fetchall()
        conn.close()
        out.append(time.perf_counter() - start)
    return out


def _raw_connection_cost(folder: Path, count: int) -> tuple[float, float, float]:
    fds, rss, sqlite = _fds(), _rss(), apsw.memory_used()
    conns = []
    for i in range(count):
        conn = db.connect(folder / f"rawc{i}.db")
        conn.execute("CREATE TABLE IF NOT EXISTS t(x); SELECT * FROM t").fetchall()
        conns.append(conn)
    cost = ((_fds() - fds) / count, (_rss() - rss) / count, (apsw.memory_used() - sqlite) / count)
    for conn in conns:
        conn.close()
    return cost


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


def run(
    *,
    actors: int,
    awake: int,
    resume: int = 10_000,
    backend: str = "trio",
    progress: Any = print,
) -> list[Figure]:
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
        progress(f"waking {sample} hibernated actors")
        p50, p99 = anyio.run(_wake, root / "rt", agent, sample, backend=backend)
        raw = _raw_open_query_close(root / "raw", sample)
        figures.append(
            Figure("wake latency p50", (p50 or 0) * 1e6, percentile(raw, 50) * 1e6, "µs", False)
        )
        figures.append(
            Figure("wake latency p99", (p99 or 0) * 1e6, percentile(raw, 99) * 1e6, "µs", False)
        )

        progress(f"{sample} awake idle actors")
        fds, rss, sqlite = anyio.run(_awake_cost, root / "rt", agent, sample, backend=backend)
        raw_fds, raw_rss, raw_sqlite = _raw_connection_cost(root / "raw", sample)
        figures.append(Figure("fds per awake idle actor", fds, raw_fds, "fd", False))
        figures.append(Figure("RSS per awake idle actor", rss / 1024, raw_rss / 1024, "KiB", False))
        figures.append(
            Figure("SQLite memory per awake actor", sqlite / 1024, raw_sqlite / 1024, "KiB", False)
        )

        resume = min(resume, actors)
        progress(f"recovering {resume} actors with pending work")
        _leave_pending_work(root / "rt", agent.__torpor_spec__.name, resume)
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
    return figures
