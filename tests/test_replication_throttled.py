"""Service from local disk while the store fails slowly (throttling, an outage): wake-ups and
hibernations do not wait for it, only durable actors' replies do; everything catches up once
it answers again."""

from __future__ import annotations

from pathlib import Path

import anyio

import actors
from runtime.files.layout import actor_id
from tests.agents import Counter
from tests.replication_helpers import FlakyStore, real_time, replication, wait_until

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


class _SlowClaims(FlakyStore):
    """A healthy store whose answers to the reads of a claim (GET of a manifest) wait until
    released: a store that is slow, not failing."""

    def __init__(self, inner: actors.ReplicaStore, aid: str) -> None:
        super().__init__(inner)
        import threading

        self.aid = aid
        self.release = threading.Event()
        self.held = 0

    def get(self, key: str) -> tuple[bytes, str] | None:
        if self.aid in key and key.endswith("manifest") and not self.release.is_set():
            self.held += 1
            self.release.wait(30)
        return super().get(key)


@real_time
async def test_a_send_does_not_wait_for_a_wake_up_that_waits_for_the_store(tmp_path: Path) -> None:
    """ref.send to a hibernated actor is acknowledged from the local disk at once, even when
    waking it means asking a slow store first; the message is applied once it answers."""
    replica = actors.DirectoryStore(tmp_path / "replica")
    async with actors.open_runtime(
        tmp_path / "rt", types=[Counter], replica=replica, replication=FAST
    ) as rt:
        await rt.ref(Counter, "c").ask(Counter.incr, 1)
    store = _SlowClaims(replica, actor_id("Counter", "c"))
    async with actors.open_runtime(
        tmp_path / "rt", types=[Counter], replica=store, replication=FAST
    ) as rt:  # a new session: its first wake-up of "c" claims the files from the store
        ref = rt.ref(Counter, "c")
        with anyio.fail_after(10):
            await ref.send(Counter.incr, 10)  # returns while the claim waits
        await wait_until(lambda: store.held >= 1, "the wake-up's claim waiting for the store")
        assert rt.statistics().messages_applied == 0  # (the actor is not awake yet)
        store.release.set()
        assert await ref.ask(Counter.value) == 11
