"""A partial outage (some requests fail, others not) never takes the runtime down."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

import actors
from tests.support.agents import Counter


class ScriptedStore(actors.ReplicaStore):
    """A directory store whose ``rule(kind, key)`` decides which requests fail."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.inner = actors.DirectoryStore(path)
        self.rule: Callable[[str, str], bool] = lambda kind, key: False
        self.landed_logs = 0

    def _check(self, kind: str, key: str) -> None:
        if self.rule(kind, key):
            raise actors.ReplicaUnavailableError(f"injected ({kind} {key})")
        if kind == "put" and "/log/" in key:
            self.landed_logs += 1

    def get(self, key: str) -> tuple[bytes, str] | None:
        self._check("get", key)
        return self.inner.get(key)

    def put(
        self, key: str, data: Any, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        self._check("put", key)
        return self.inner.put(key, data, if_match=if_match, if_none_match=if_none_match)

    def delete(self, key: str) -> None:
        self._check("delete", key)
        self.inner.delete(key)

    def list(self, prefix: str = "") -> Iterator[str]:
        self._check("list", prefix)
        return self.inner.list(prefix)


async def until(condition: Callable[[], bool], what: str, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await trio.sleep(0.01)


@pytest.mark.real_clock
async def test_a_log_object_landing_while_manifests_fail(tmp_path: Path) -> None:
    """A log object landing while manifests fail leaves the runtime up, and every write ships."""
    # The log object was left pending by an outage, and lands while manifest requests still fail (S3
    # throttles per prefix), with one of its files' manifests in doubt. The retry of a half-recorded
    # log object once raised 'shipped out of order' and took the runtime down.
    store = ScriptedStore(tmp_path / "replica")
    options = actors.Replication(min_delay=0.3, max_delay=0.3)
    async with actors.open_runtime(
        tmp_path / "rt", types=[Counter], replica=store, replication=options, idle_timeout=1.0
    ) as rt:
        engine = rt._engine.replication
        assert engine is not None
        a, b = rt.ref(Counter, "a"), rt.ref(Counter, "b")
        await a.ask(Counter.incr, 1)
        await b.ask(Counter.incr, 1)
        await rt.replicated()
        store.rule = lambda kind, key: True  # all down
        await a.ask(Counter.incr, 1)
        await b.ask(Counter.incr, 1)
        await until(lambda: engine.rounds.pending is not None, "a log object left pending")
        store.rule = lambda kind, key: "/snapshots/" not in key  # b's hibernation: in doubt

        async def keep_a_busy() -> None:
            while True:
                await a.ask(Counter.incr, 0)
                await trio.sleep(0.1)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep_a_busy)
            await until(lambda: len(engine.tracking.behind) == 1, "b hibernated behind")
            store.rule = lambda kind, key: key.endswith("/manifest")
            landed = store.landed_logs
            await until(lambda: store.landed_logs > landed, "the pending log object landing")
            store.rule = lambda kind, key: False
            await rt.replicated()
            nursery.cancel_scope.cancel()
        assert await a.ask(Counter.value) == 2
    async with actors.open_runtime(tmp_path / "fresh", types=[Counter], replica=store) as rt2:
        assert await rt2.ref(Counter, "a").ask(Counter.value) == 2
        assert await rt2.ref(Counter, "b").ask(Counter.value) == 2
