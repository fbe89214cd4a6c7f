"""A restart during a store outage: service goes on from local disk, and once the store is back
everything catches up (issue 11, item 5).

The outage is a local directory store behind a switch (``FlakyStore``: every request fails with
``ReplicaUnavailableError`` while ``down``), so the test is deterministic about when the store is
reachable; each request also takes a few milliseconds, as one to S3 does (hibernations and
wake-ups that talk to the store take that long). Real clock: the store is called from worker
threads. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest
import trio

import actors
from tests.support.replication import FlakyStore

#: Rounds start soon after a commit.
FAST = actors.Replication(min_delay=0.005, max_delay=0.05)

#: Seconds allowed, once the store is back, for every message to be applied and replicated
#: (milliseconds of work; the round backoff after an outage is at most 5 s).
CATCH_UP = 30.0

#: A send that takes longer than this is taken for stuck, and traffic stops there (a send
#: appends to a file, after an eviction at most: milliseconds to a few hundred; a cancelled
#: send appended nothing, and is not expected).
SEND_BOUND = 1.0

SENDERS, INBOXES = 4, 6

#: Seconds each store request takes (S3 answers in tens of milliseconds).
LATENCY = 0.03


class OutageInbox(actors.Actor):
    async def put(self, n: int) -> None:
        self.sql.execute("CREATE TABLE IF NOT EXISTS got(n INTEGER PRIMARY KEY)")
        self.sql.execute("INSERT INTO got(n) VALUES (?)", (n,))

    @actors.query
    async def got(self) -> list[int]:
        try:
            return [row[0] for row in self.sql.execute("SELECT n FROM got ORDER BY n")]
        except Exception:
            return []


class OutageSender(actors.Actor):
    async def fan(self, n: int) -> None:
        self.send(self.ref_to(OutageInbox, f"in{n % INBOXES}"), OutageInbox.put, n)


TYPES = [OutageSender, OutageInbox]


class Traffic:
    """External sends to the senders, each relayed by a ``self.send`` to an inbox. Only sends
    that returned are expected to be applied (a send cancelled by its bound appended nothing:
    it never got past waking the sender)."""

    def __init__(self) -> None:
        self.next = 0
        self.acknowledged: list[int] = []
        self.stuck = 0

    async def run(self, rt: actors.Runtime, count: int, *, stop_when_stuck: bool) -> None:
        for _ in range(count):
            n = self.next
            self.next += 1
            with trio.move_on_after(SEND_BOUND) as bound:
                await rt.ref(OutageSender, f"s{n % SENDERS}").send(OutageSender.fan, n)
            if bound.cancelled_caught:
                self.stuck += 1
                if stop_when_stuck:
                    return
            else:
                self.acknowledged.append(n)
            await trio.sleep(0.01)


async def applied(rt: actors.Runtime) -> set[int]:
    got: set[int] = set()
    for k in range(INBOXES):
        with contextlib.suppress(actors.ActorNotFoundError):  # (nothing delivered to it yet)
            got.update(await rt.ref(OutageInbox, f"in{k}").ask(OutageInbox.got))
    return got


@pytest.mark.real_clock
async def test_a_restart_during_an_outage_catches_up_once_the_store_is_back(
    tmp_path: Path,
) -> None:
    """After a restart in an outage, every acked message applies and replicates once it ends."""
    # With actor-to-actor sends and a small max_awake; replicated() returns once the store is back.
    store = FlakyStore(actors.DirectoryStore(tmp_path / "replica"))
    store.latency = LATENCY
    root = tmp_path / "rt"
    traffic = Traffic()
    async with actors.open_runtime(
        root, types=TYPES, replica=store, replication=FAST, idle_timeout=0.3
    ) as rt:
        await traffic.run(rt, 20, stop_when_stuck=False)
        with trio.fail_after(CATCH_UP):
            while await applied(rt) != set(traffic.acknowledged):  # noqa: ASYNC110 (polls a query)
                await trio.sleep(0.01)
            await rt.replicated()
    assert traffic.stuck == 0

    store.down = True
    async with actors.open_runtime(
        root, types=TYPES, replica=store, replication=FAST, idle_timeout=0.3, max_awake=2
    ) as rt:
        # The outage: the restart's wake-ups and some traffic go on from local disk (until 10
        # sends, or one gets stuck).
        await traffic.run(rt, 10, stop_when_stuck=True)
        stats = rt.statistics()
        assert stats.replication is not None and stats.replication.errors > 0  # it was down
        during = (len(traffic.acknowledged), traffic.stuck, stats.messages_applied)

        # The store is back: traffic goes on (until 60 sends, or one gets stuck). With
        # max_awake 2 and four senders, each send here evicts a sender that holds its relayed
        # row until the replica has its turn (the output gate): about 0.3 s a send.
        store.down = False
        await traffic.run(rt, 60, stop_when_stuck=True)
        expected = set(traffic.acknowledged)
        started = time.monotonic()
        got: set[int] = set()
        replicated = False
        with trio.move_on_after(CATCH_UP):
            while True:
                got = await applied(rt)
                if got >= expected:
                    break
                await trio.sleep(0.05)
            await rt.replicated()
            replicated = True
        after = rt.statistics()
        assert after.replication is not None
        state = (
            f"outage: {during[0]} sends acknowledged, {during[1]} stuck, {during[2]} applied; "
            f"{time.monotonic() - started:.1f} s after the store came back: "
            f"{len(got & expected)}/{len(expected)} applied, {traffic.stuck} sends stuck, "
            f"awake={after.awake} (max_awake {after.max_awake}), "
            f"rounds={after.replication.rounds}, files_behind={after.replication.files_behind}, "
            f"last_error={after.replication.last_error!r}"
        )
        assert got >= expected, f"the runtime wedged: {state}"
        assert replicated, f"replicated() did not return: {state}"
        # Alone on its replica, it never took its own claims for a rival's.
        own = [r for r in rt.reports if "another runtime" in r]
        assert not own, f"the runtime fenced itself: {own[:3]}"
        assert after.stopped == 0 and after.replication.fenced == 0
