"""Durable timers (DESIGN §4): set inside turns, fire as messages, wake hibernated actors,
survive restarts, fire at least once and never early. Virtual time throughout."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import anyio
import pytest

import actors

pytestmark = pytest.mark.both_backends

#: The virtual epoch: Monday 2026-11-23 00:00 UTC.
START = dt.datetime(2026, 11, 23, tzinfo=dt.UTC).timestamp()
fired: list[tuple[str, float]] = []


def clock() -> float:
    return START + anyio.current_time()


class Alarm(actors.Actor, name="Alarm"):
    async def set_after(self, name: str, seconds: float) -> None:
        self.schedule(name, Alarm.ring, name, after=seconds)

    async def set_every(self, name: str, seconds: float) -> None:
        self.schedule(name, Alarm.ring, name, every=seconds)

    async def set_cron(self, name: str, expression: str) -> None:
        self.schedule(name, Alarm.ring, name, cron=expression)

    async def set_at(self, name: str, when: dt.datetime) -> None:
        self.schedule(name, Alarm.ring, name, at=when)

    async def set_then_fail(self) -> None:
        self.schedule("doomed", Alarm.ring, "doomed", after=1)
        raise RuntimeError("the turn rolls back, and the timer with it")

    async def cancel(self, name: str) -> bool:
        return self.cancel_schedule(name)

    async def ring(self, name: str) -> None:
        fired.append((name, clock()))
        self.kv["rings"] = self.kv.get("rings", 0) + 1

    @actors.query
    async def listing(self) -> list[tuple[str, str, float]]:
        return [(s.name, s.method, s.next_at) for s in self.schedules()]


@pytest.fixture(autouse=True)
def _clear() -> None:
    fired.clear()


def runtime(root: Path, **options: Any) -> Any:
    return actors.open_runtime(root, types=[Alarm], clock=clock, **options)


async def test_timer_fires_once_and_never_early(root: Path) -> None:
    """A one-shot timer fires exactly once, at or after its due time."""
    async with runtime(root) as rt:
        alarm = rt.ref(Alarm, "a")
        due = clock() + 90
        await alarm.ask(Alarm.set_after, "tea", 90)
        assert rt.statistics().actors_with_timers == 1
        await anyio.sleep(89)
        assert fired == []
        await anyio.sleep(2)
        assert [name for name, _ in fired] == ["tea"]
        assert fired[0][1] >= due
        await anyio.sleep(1000)
        assert len(fired) == 1
        assert await alarm.ask(Alarm.listing) == []
        assert rt.statistics().actors_with_timers == 0


async def test_timer_a_year_ahead_wakes_a_hibernated_actor(root: Path) -> None:
    """A timer set a year ahead fires after the actor has long hibernated."""
    year = 365 * 86400.0
    async with runtime(root, idle_timeout=60) as rt:
        await rt.ref(Alarm, "a").ask(Alarm.set_after, "anniversary", year)
        await anyio.sleep(120)
        assert rt.statistics().awake == 0
        await anyio.sleep(year)
        assert [name for name, _ in fired] == ["anniversary"]
        assert fired[0][1] >= START + year


async def test_timers_survive_a_restart(root: Path) -> None:
    """A timer set before the runtime closed fires after it reopens (overdue: at once)."""
    async with runtime(root) as rt:
        await rt.ref(Alarm, "a").ask(Alarm.set_after, "later", 3600)
    await anyio.sleep(7200)  # the process is "down" past the due time
    assert fired == []
    async with runtime(root) as rt:
        await anyio.sleep(1)
        assert [name for name, _ in fired] == ["later"]


async def test_interval_timer_repeats_until_cancelled(root: Path) -> None:
    """every= fires every period; cancel_schedule stops it."""
    async with runtime(root) as rt:
        alarm = rt.ref(Alarm, "a")
        await alarm.ask(Alarm.set_every, "tick", 10)
        await anyio.sleep(35)
        assert [name for name, _ in fired] == ["tick"] * 3
        assert await alarm.ask(Alarm.cancel, "tick") is True
        await anyio.sleep(100)
        assert len(fired) == 3
        assert await alarm.ask(Alarm.cancel, "tick") is False


async def test_missed_intervals_collapse_into_one_firing(root: Path) -> None:
    """After downtime, an interval timer fires once (not once per missed period)."""
    async with runtime(root) as rt:
        await rt.ref(Alarm, "a").ask(Alarm.set_every, "tick", 10)
    await anyio.sleep(1000)
    async with runtime(root) as rt:
        await anyio.sleep(1)
        assert len(fired) == 1
        await anyio.sleep(10)
        assert len(fired) == 2


async def test_cron_timer(root: Path) -> None:
    """cron= fires at the next matching instant in UTC, then at the following ones."""
    async with runtime(root) as rt:
        await rt.ref(Alarm, "a").ask(Alarm.set_cron, "standup", "30 9 * * MON-FRI")
        await anyio.sleep(3 * 86400)
    times = [dt.datetime.fromtimestamp(t, dt.UTC) for _, t in fired]
    assert [(t.day, t.hour, t.minute) for t in times] == [(23, 9, 30), (24, 9, 30), (25, 9, 30)]


async def test_at_datetime(root: Path) -> None:
    """at= takes an aware datetime."""
    when = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
    async with runtime(root) as rt:
        await rt.ref(Alarm, "a").ask(Alarm.set_at, "noon", when)
        await anyio.sleep(13 * 3600)
    assert fired[0][0] == "noon"
    assert fired[0][1] >= when.timestamp()


async def test_timer_set_in_a_failed_turn_never_fires(root: Path) -> None:
    """A timer commits with its turn: a turn that raises leaves no timer."""
    async with runtime(root) as rt:
        alarm = rt.ref(Alarm, "a")
        with pytest.raises(actors.MessageFailedError):
            await alarm.ask(Alarm.set_then_fail)
        await anyio.sleep(3600)
        assert fired == []
        assert await alarm.ask(Alarm.listing) == []


async def test_many_named_timers_and_listing(root: Path) -> None:
    """An actor holds many named timers; setting a name again replaces it."""
    async with runtime(root) as rt:
        alarm = rt.ref(Alarm, "a")
        for i in range(50):
            await alarm.ask(Alarm.set_after, f"t{i}", 100 + i)
        await alarm.ask(Alarm.set_after, "t0", 1000)  # replaces t0
        listing = await alarm.ask(Alarm.listing)
        assert len(listing) == 50
        assert listing[0][0] == "t1"
        assert listing[-1][0] == "t0"
        await anyio.sleep(200)
        assert sorted(name for name, _ in fired) == sorted(f"t{i}" for i in range(1, 50))
        assert rt.statistics().timers_fired >= 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"at": dt.datetime(2030, 1, 1)}, "timezone-aware"),
        ({"cron": "every day"}, "bad cron"),
        ({"after": 5, "at": 1.0}, "not both"),
        ({"cron": "* * * * *", "every": 5}, "cannot be combined"),
        ({"every": 0}, "positive"),
        ({}, "needs at="),
    ],
)
async def test_bad_timer_arguments(root: Path, options: dict[str, Any], message: str) -> None:
    """Nonsense timer arguments raise ValueError inside the turn, which rolls back."""

    class Picky(actors.Actor, name="Picky"):
        retry = actors.Retry(max_attempts=1)

        async def go(self, opts: dict[str, Any]) -> None:
            self.schedule("x", Picky.go, opts, **opts)

    async with actors.open_runtime(root, types=[Picky], clock=clock, message_types=()) as rt:
        with pytest.raises(actors.MessageFailedError) as info:
            await rt.ref(Picky, "p").ask(Picky.go, options)
        assert isinstance(info.value.__cause__, ValueError)
        assert message in str(info.value.__cause__)
