"""``torpor bench gateway``: asks per second over HTTP beside the same asks in process, in one
run on one runtime.

The gateway (``actors.http.app``) is served by hypercorn on 127.0.0.1 (an ephemeral port) in
the same process and event loop as the runtime, and asked by httpx over keep-alive
connections: what a figure over HTTP adds to its in-process twin is the HTTP round trip (two
parsers, JSON both ways, the route and the typed conversion), not the runtime. As the client
then shares the server's one thread, each rate is measured again with the callers in a child
process (on a machine with a core to spare, that is the server's own rate). The same
``CONCURRENCY`` callers ask in both, each on its own actor, a handler that adds to a counter
in its table (one committed turn per ask). Also: sends answered 202 once durable, ``@query``
reads by GET, and the latency of one ask at a time (p50).

Stream fan-out: ``SUBSCRIBERS`` readers follow one actor's stream, over HTTP (server-sent
events) and in process (``Ref.open_stream``); a handler publishes the time it ran, and each
reader records how long the item took to reach it (p50 and p99 over every reader and item).
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

from .turns import percentile

#: Callers asking at once (each on its own actor).
CONCURRENCY = 16
#: Readers of one actor's stream in the fan-out figure.
SUBSCRIBERS = 100
COUNTER = "torpor.bench.HttpCounter"


def _types() -> Any:
    from ..actor import Actor, query

    class Counter(Actor, name=COUNTER):
        async def on_create(self) -> None:
            self.sql.execute("CREATE TABLE IF NOT EXISTS c (n INTEGER)")
            self.sql.execute("INSERT INTO c VALUES (0)")

        async def add(self, by: int) -> int:
            self.sql.execute("UPDATE c SET n = n + ?", (by,))
            return by

        async def tick(self) -> None:
            self.publish("ticks", time.perf_counter())  # (read in this process)

        @query
        async def total(self) -> int:
            (n,) = self.sql.execute("SELECT n FROM c").fetchone() or (0,)
            return int(n)

    return Counter


async def _rate(count: int, call: Callable[[int, int], Awaitable[Any]]) -> float:
    """Calls per second: ``CONCURRENCY`` callers, ``count`` calls in all."""
    each = max(1, count // CONCURRENCY)

    async def caller(who: int) -> None:
        for i in range(each):
            await call(who, i)

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for who in range(CONCURRENCY):
            tg.start_soon(caller, who)
    return each * CONCURRENCY / (time.perf_counter() - started)


async def _load(url: str, what: str, count: int) -> float:
    """``CONCURRENCY`` httpx callers making ``count`` calls of kind ``what`` in all: calls/s."""
    import httpx

    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=None))
            for _ in range(CONCURRENCY)
        ]

        async def call(who: int, _i: int) -> None:
            path = f"/actors/{COUNTER}/c{who}/"
            if what == "query":
                r = await clients[who].get(path + "total")
            else:
                async_ = {"Prefer": "respond-async"} if what == "send" else {}
                r = await clients[who].post(path + "add", json={"args": [1]}, headers=async_)
            assert r.status_code in (200, 202), r.text

        await _rate(CONCURRENCY * 4, call)  # warm-up: connections open
        return await _rate(count, call)


async def _load_elsewhere(url: str, what: str, count: int) -> float:
    """:func:`_load` in a child process: the server's figure without the client's CPU."""
    done = await anyio.run_process(
        [sys.executable, "-m", "runtime.bench.gateway", "load", url, what, str(count)]
    )
    return float(done.stdout.decode().strip())


async def _latency(count: int, call: Callable[[int, int], Awaitable[Any]]) -> list[float]:
    times = []
    for i in range(count):
        started = time.perf_counter()
        await call(0, i)
        times.append(time.perf_counter() - started)
    return times


async def _measure(folder: Path, count: int, progress: Callable[[str], None]) -> dict[str, Any]:
    import httpx

    from ..http.gateway import app
    from ..http.server import serving
    from ..runtime import open_runtime

    counter = _types()
    out: dict[str, Any] = {}
    async with (
        open_runtime(folder, types=[counter]) as rt,
        serving(app(rt)) as url,
        contextlib.AsyncExitStack() as stack,
    ):
        # One client (one keep-alive connection) per caller: httpx's pool scans its
        # connections on every request, which would be measured instead of the gateway.
        clients = [
            await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=None))
            for _ in range(CONCURRENCY)
        ]
        refs = [rt.ref(counter, f"c{who}") for who in range(CONCURRENCY)]
        for ref in refs:  # created and awake before anything is timed
            await ref.ask(counter.add, 0)

        async def ask_here(who: int, _i: int) -> Any:
            return await refs[who].ask(counter.add, 1)

        async def ask_http(who: int, _i: int) -> Any:
            r = await clients[who].post(f"/actors/{COUNTER}/c{who}/add", json={"args": [1]})
            assert r.status_code == 200, r.text
            return r.json()["result"]

        async def send_here(who: int, _i: int) -> None:
            await refs[who].send(counter.add, 1)

        async def send_http(who: int, _i: int) -> None:
            r = await clients[who].post(
                f"/actors/{COUNTER}/c{who}/add",
                json={"args": [1]},
                headers={"Prefer": "respond-async"},
            )
            assert r.status_code == 202, r.text

        async def query_here(who: int, _i: int) -> Any:
            return await refs[who].ask(counter.total)

        async def query_http(who: int, _i: int) -> Any:
            r = await clients[who].get(f"/actors/{COUNTER}/c{who}/total")
            assert r.status_code == 200, r.text

        for name, here, http in (
            ("ask", ask_here, ask_http),
            ("send", send_here, send_http),
            ("query", query_here, query_http),
        ):
            progress(f"{count} {name}s in process, then over HTTP ({CONCURRENCY} at once)")
            await _rate(count // 10, http)  # warm-up: connections open
            out[f"{name}_here"] = await _rate(count, here)
            out[f"{name}_http"] = await _rate(count, http)
        for name in ("ask", "send", "query"):
            progress(f"{count} {name}s over HTTP from a child process ({CONCURRENCY} at once)")
            out[f"{name}_remote"] = await _load_elsewhere(url, name, count)
        progress("one ask at a time: latency")
        out["latency_here"] = await _latency(min(count, 500), ask_here)
        out["latency_http"] = await _latency(min(count, 500), ask_http)
        rounds = 20 if count < 8000 else 100
        progress(f"stream fan-out: {rounds} items to {SUBSCRIBERS} readers, in process")
        out["fanout_here"] = await _fanout(rt.ref(counter, "fan-here"), counter, None, rounds)
        progress(f"stream fan-out: {rounds} items to {SUBSCRIBERS} readers over HTTP")
        out["fanout_http"] = await _fanout(rt.ref(counter, "fan-http"), counter, url, rounds)
    return out


async def _fanout(ref: Any, counter: Any, url: str | None, rounds: int) -> list[float]:
    """Seconds from ``tick`` to each reader, for ``rounds`` items and ``SUBSCRIBERS`` readers
    (over HTTP when ``url`` is given, else ``ref.open_stream``)."""
    import json

    import httpx

    await ref.ask(counter.add, 0)  # (created before the readers open)
    delays: list[float] = []
    ready = 0
    all_ready = anyio.Event()

    def arrived() -> None:
        nonlocal ready
        ready += 1
        if ready == SUBSCRIBERS:
            all_ready.set()

    async def here() -> None:
        async with ref.open_stream("ticks") as entries:
            arrived()
            seen = 0
            async for entry in entries:
                delays.append(time.perf_counter() - entry.item)
                seen += 1
                if seen == rounds:
                    return

    async def over_http(client: httpx.AsyncClient) -> None:
        path = f"/actors/{ref.type_name}/{ref.key}/streams/ticks"
        async with client.stream("GET", path) as r:
            arrived()
            seen = 0
            async for line in r.aiter_lines():
                if line.startswith("data:"):
                    delays.append(time.perf_counter() - json.loads(line[5:])["item"])
                    seen += 1
                    if seen == rounds:
                        return

    limits = httpx.Limits(max_connections=SUBSCRIBERS + 1)
    async with httpx.AsyncClient(base_url=url or "http://x", timeout=None, limits=limits) as c:
        with anyio.fail_after(120):  # (a bound on a bench that would hang, not a timing)
            async with anyio.create_task_group() as tg:
                for _ in range(SUBSCRIBERS):
                    if url is None:
                        tg.start_soon(here)
                    else:
                        tg.start_soon(over_http, c)
                await all_ready.wait()
                for _ in range(rounds):
                    await ref.ask(counter.tick)
                    await anyio.sleep(0.01)  # (paced: each item's delay, not a queue's)
    return delays


def run(
    *, quick: bool = False, backend: str = "trio", progress: Callable[[str], None] = lambda _: None
) -> list[tuple[str, float, float, str]]:
    """Measure; return ``(measure, over HTTP, in process, unit)`` rows."""
    count = 800 if quick else 8000
    with tempfile.TemporaryDirectory(prefix="torpor-bench-") as tmp:
        m = anyio.run(_measure, Path(tmp) / "rt", count, progress, backend=backend)
    return [
        ("asks/s, 16 callers", m["ask_http"], m["ask_here"], "/s"),
        ("asks/s, 16 callers in another process", m["ask_remote"], m["ask_here"], "/s"),
        ("sends/s (202 once durable), 16 callers", m["send_http"], m["send_here"], "/s"),
        ("sends/s, 16 callers in another process", m["send_remote"], m["send_here"], "/s"),
        ("@query reads/s (GET), 16 callers", m["query_http"], m["query_here"], "/s"),
        ("@query reads/s, another process", m["query_remote"], m["query_here"], "/s"),
        (
            "one ask at a time, p50",
            percentile(m["latency_http"], 50) * 1e6,
            percentile(m["latency_here"], 50) * 1e6,
            "µs",
        ),
        (
            "one ask at a time, mean",
            statistics.fmean(m["latency_http"]) * 1e6,
            statistics.fmean(m["latency_here"]) * 1e6,
            "µs",
        ),
        (
            f"stream fan-out to {SUBSCRIBERS} readers, p50",
            percentile(m["fanout_http"], 50) * 1e6,
            percentile(m["fanout_here"], 50) * 1e6,
            "µs",
        ),
        (
            f"stream fan-out to {SUBSCRIBERS} readers, p99",
            percentile(m["fanout_http"], 99) * 1e6,
            percentile(m["fanout_here"], 99) * 1e6,
            "µs",
        ),
    ]


def format_table(rows: list[tuple[str, float, float, str]]) -> str:
    """The rows as text: each measure over HTTP beside in process."""
    lines = [
        "torpor bench gateway: the same calls over HTTP (hypercorn + httpx, 127.0.0.1) and in "
        "process, same run",
        f"{'measure':<42} {'over HTTP':>14} {'in process':>14} {'ratio':>7}",
    ]
    for name, http, here, unit in rows:
        ratio = http / here if here else float("nan")
        lines.append(f"{name:<42} {http:>10.0f} {unit:<3} {here:>10.0f} {unit:<3} {ratio:>6.2f}x")
    return "\n".join(lines)


def as_json(rows: list[tuple[str, float, float, str]]) -> dict[str, Any]:
    """The rows as JSON."""
    return {
        "figures": [
            {"name": name, "http": http, "in_process": here, "unit": unit}
            for name, http, here, unit in rows
        ]
    }


if __name__ == "__main__":
    if sys.argv[1:2] == ["load"]:  # (the child process of _load_elsewhere)
        url, what, count = sys.argv[2], sys.argv[3], int(sys.argv[4])
        print(anyio.run(_load, url, what, count, backend="trio"))
    else:
        print(format_table(run(quick="--quick" in sys.argv, progress=print)))
