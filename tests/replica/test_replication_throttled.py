"""Service from local disk while the store fails slowly (throttling, an outage): wake-ups and
hibernations do not wait for it, only durable actors' replies do; everything catches up once
it answers again."""

from __future__ import annotations

from pathlib import Path

import actors
from tests.support.agents import Counter
from tests.support.replication import FlakyStore, real_time, replication, wait_until

FAST = actors.Replication(min_delay=0.005, max_delay=0.05)


def _requests(store: actors.ReplicaStore) -> int:
    s = store.statistics()
    return s.gets + s.puts + s.deletes + s.lists


@real_time
async def test_wakes_and_hibernations_do_not_wait_for_a_failing_store(tmp_path: Path) -> None:
    """While the store fails, actors keep waking and hibernating without asking it each time."""
    store = FlakyStore(actors.DirectoryStore(tmp_path / "replica"))
    store.failing_latency = 0.2  # a failing request takes the client's retries first
    keys = [f"c{i}" for i in range(6)]
    async with actors.open_runtime(
        tmp_path / "rt",
        types=[Counter],
        replica=store,
        replication=FAST,
        idle_timeout=0.01,
        max_awake=2,
    ) as rt:
        for key in keys:
            await rt.ref(Counter, key).ask(Counter.incr, 1)
        await rt.replicated()
        store.down = True
        await rt.ref(Counter, keys[0]).ask(Counter.incr, 1)
        await wait_until(lambda: replication(rt).errors > 0, "a failed round")
        before = _requests(store)
        for _ in range(10):
            for key in keys:  # two awake at most: each ask wakes one and hibernates another
                await rt.ref(Counter, key).ask(Counter.incr, 1)
        during = _requests(store) - before
        wakes = rt.statistics().wakes
        # Rounds and probes back off while it fails; wake-ups and hibernations ask nothing.
        assert during < 20, (during, wakes)
        store.down = False
        await wait_until(lambda: replication(rt).last_error is None, "a good round", within=20)
        await rt.replicated()
        values = [await rt.ref(Counter, key).ask(Counter.value) for key in keys]
    assert values == [12] + [11] * 5
    async with actors.open_runtime(
        tmp_path / "fresh", types=[Counter], replica=actors.DirectoryStore(tmp_path / "replica")
    ) as rt:
        assert [await rt.ref(Counter, key).ask(Counter.value) for key in keys] == values
