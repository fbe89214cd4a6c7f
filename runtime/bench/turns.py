"""``torpor bench``: torpor beside a raw apsw loop doing the same SQL, in one run.

Machines here are shared and noisy, so every figure is reported as a ratio to a raw loop measured
in the same process minutes apart, never as an absolute promise.

The raw loop is the mailbox pattern's ceiling: per message, one transaction inserts it into an
inbox table, a second reads it, updates a state row and deletes it, in one WAL file with the same
``synchronous`` level. It has no Python between statements beyond the loop itself.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import attrs

from ..files import db


@attrs.frozen
class Figure:
    name: str
    torpor: float
    raw: float
    unit: str
    higher_is_better: bool

    @property
    def ratio(self) -> float:
        return self.torpor / self.raw if self.raw else float("nan")


# -- the raw loop -------------------------------------------------------------------------


class _RawActor:
    def __init__(self, path: Path, synchronous: str) -> None:
        self.conn = db.connect(path, synchronous=synchronous)
        db.execute_script(
            self.conn,
            "CREATE TABLE IF NOT EXISTS inbox(seq INTEGER PRIMARY KEY AUTOINCREMENT, "
            "method TEXT, payload BLOB);"
            "CREATE TABLE IF NOT EXISTS state(k TEXT PRIMARY KEY, v) WITHOUT ROWID;"
            "INSERT OR IGNORE INTO state VALUES ('n', 0);",
        )

    def one_message(self, payload: bytes) -> None:
        conn = self.conn
        conn.execute("INSERT INTO inbox(method, payload) VALUES ('incr', ?)", (payload,))
        conn.execute("BEGIN IMMEDIATE")
        for seq, _ in conn.execute("SELECT seq, payload FROM inbox ORDER BY seq LIMIT 1"):
            conn.execute("UPDATE state SET v = v + 1 WHERE k = 'n'")
            conn.execute("DELETE FROM inbox WHERE seq = ?", (seq,))
        conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()


def raw_throughput(folder: Path, actors: int, messages: int, synchronous: str) -> float:
    raws = [_RawActor(folder / f"raw{i}.db", synchronous) for i in range(actors)]
    payload = b"\x92\x91\x01\x80"
    try:
        start = time.perf_counter()
        for i in range(messages):
            raws[i % actors].one_message(payload)
        return messages / (time.perf_counter() - start)
    finally:
        for raw in raws:
            raw.close()


def raw_latencies(folder: Path, messages: int, synchronous: str) -> list[float]:
    raw = _RawActor(folder / "raw-latency.db", synchronous)
    payload = b"\x92\x91\x01\x80"
    out = []
    try:
        for _ in range(messages):
            start = time.perf_counter()
            raw.one_message(payload)
            out.append(time.perf_counter() - start)
    finally:
        raw.close()
    return out


# -- the same through torpor --------------------------------------------------------------


def _bench_type() -> Any:
    # Defined here, not at import time, so that importing the engine builds no actor class.
    from ..actor import Actor

    class BenchCounter(Actor, name="torpor.bench.Counter"):
        async def incr(self, by: int = 1) -> int:
            n: int = self.kv.get("n", 0) + by
            self.kv["n"] = n
            return n

    return BenchCounter


async def torpor_throughput(folder: Path, actors: int, messages: int, synchronous: str) -> float:
    from ..runtime import open_runtime

    counter = _bench_type()
    # Every actor stays awake: this measures messages, not eviction churn under a low limit.
    async with open_runtime(
        folder, types=[counter], synchronous=synchronous, max_awake=actors + 10
    ) as rt:
        refs = [rt.ref(counter, f"a{i}") for i in range(actors)]
        for ref in refs:  # wake every actor first: this measures messages, not wake-ups
            await ref.ask(counter.incr, 0)
        start = time.perf_counter()
        for i in range(messages):
            await refs[i % actors].send(counter.incr, 1)
        for ref in refs:  # a barrier: asks are applied after every earlier send
            await ref.ask(counter.incr, 0)
        elapsed = time.perf_counter() - start
    return messages / elapsed


async def torpor_latencies(folder: Path, messages: int, synchronous: str) -> list[float]:
    from ..runtime import open_runtime

    counter = _bench_type()
    out = []
    async with open_runtime(folder, types=[counter], synchronous=synchronous) as rt:
        ref = rt.ref(counter, "latency")
        await ref.ask(counter.incr, 0)
        for _ in range(messages):
            start = time.perf_counter()
            await ref.ask(counter.incr, 1)
            out.append(time.perf_counter() - start)
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def run(
    *,
    quick: bool = False,
    synchronous: str = "NORMAL",
    backend: str = "trio",
    progress: Callable[[str], None] = lambda _: None,
) -> list[Figure]:
    """Measure everything in one process; return the figures."""
    n_one = 2_000 if quick else 50_000
    n_many = 2_000 if quick else 50_000
    many = 50 if quick else 1_000
    n_ask = 500 if quick else 10_000
    figures = []
    with tempfile.TemporaryDirectory(prefix="torpor-bench-") as tmp:
        root = Path(tmp)

        def fresh(name: str) -> Path:
            path = root / name
            path.mkdir()
            return path

        progress("one actor")
        raw = raw_throughput(fresh("raw1"), 1, n_one, synchronous)
        ours = anyio.run(torpor_throughput, fresh("t1"), 1, n_one, synchronous, backend=backend)
        figures.append(Figure("durable messages/s, one actor", ours, raw, "msg/s", True))

        progress(f"{many} actors")
        raw = raw_throughput(fresh("rawN"), many, n_many, synchronous)
        ours = anyio.run(torpor_throughput, fresh("tN"), many, n_many, synchronous, backend=backend)
        figures.append(Figure(f"durable messages/s, {many} actors", ours, raw, "msg/s", True))

        progress("ask latency")
        raw_lat = raw_latencies(fresh("rawL"), n_ask, synchronous)
        our_lat = anyio.run(torpor_latencies, fresh("tL"), n_ask, synchronous, backend=backend)
        for q in (50, 99):
            figures.append(
                Figure(
                    f"ask round trip p{q}",
                    percentile(our_lat, q) * 1e6,
                    percentile(raw_lat, q) * 1e6,
                    "µs",
                    False,
                )
            )
        figures.append(
            Figure(
                "ask round trip mean",
                statistics.fmean(our_lat) * 1e6,
                statistics.fmean(raw_lat) * 1e6,
                "µs",
                False,
            )
        )
    return figures


def format_table(figures: list[Figure], synchronous: str) -> str:
    lines = [
        f"torpor bench (synchronous={synchronous}); raw = apsw loop doing the same SQL, same run",
        f"{'measure':<42} {'torpor':>16} {'raw apsw':>16} {'ratio':>7}",
    ]
    for fig in figures:
        ratio = f"{fig.ratio:>6.2f}x" if fig.raw else "      -"
        lines.append(
            f"{fig.name:<42} {fig.torpor:>10.1f} {fig.unit:<5} {fig.raw:>10.1f} {fig.unit:<5} "
            f"{ratio}"
        )
    return "\n".join(lines)


def as_json(figures: list[Figure], synchronous: str) -> dict[str, Any]:
    return {
        "synchronous": synchronous,
        "figures": [
            {
                "name": f.name,
                "torpor": f.torpor,
                "raw": f.raw,
                "unit": f.unit,
                "ratio": f.ratio,
            }
            for f in figures
        ],
    }
