"""The runtime's one clock (runtime/clock.py): the injected wall clock is the time of everything
the runtime stores and compares, the loop's clock the time of durations."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

import actors
from runtime.clock import Clock

pytestmark = pytest.mark.both_backends


class Pay(actors.Actor, name="clock.Pay"):
    async def charge(self, cents: int) -> None:
        self.kv["charged"] = self.kv.get("charged", 0) + cents

    @actors.query
    async def charged(self) -> int:
        return int(self.kv.get("charged", 0))


async def test_idempotency_keys_expire_by_the_runtimes_clock(root: Path) -> None:
    """A retried call is a no-op only until idempotency_ttl passes on the runtime's clock."""
    # The runtime's clock is the one given to open_runtime, not the machine's; once the ttl has
    # passed, the call is applied again.
    now = [2_000_000_000.0]
    options = {"types": [Pay], "idempotency_ttl": 100.0, "clock": lambda: now[0]}
    async with actors.open_runtime(root, **options) as rt:  # type: ignore[arg-type]
        ref = rt.ref(Pay, "p")
        await ref.options(idempotency_key="order-1").ask(Pay.charge, 5)
        now[0] += 50  # within the ttl: the retry is answered from the stored outcome
        await ref.options(idempotency_key="order-1").ask(Pay.charge, 5)
        assert await ref.ask(Pay.charged) == 5
        now[0] += 100  # past the ttl: closing the runtime prunes the key
    async with actors.open_runtime(root, **options) as rt:  # type: ignore[arg-type]
        ref = rt.ref(Pay, "p")
        await ref.options(idempotency_key="order-1").ask(Pay.charge, 5)
        assert await ref.ask(Pay.charged) == 10


async def test_a_clock_gives_wall_time_from_what_it_wraps_and_loop_time_from_the_loop() -> None:
    """Clock.now() and Clock() are the injected wall clock; Clock.loop() the event loop's."""
    clock = Clock(lambda: 42.0)
    assert clock.now() == clock() == 42.0
    before = anyio.current_time()
    await anyio.sleep(5)  # virtual time: the loop's clock jumps, the wall clock does not move
    assert clock.loop() - before >= 5
    assert clock.now() == 42.0


def test_a_clock_that_is_not_callable_is_refused() -> None:
    """open_runtime(clock=...) must be a callable returning epoch seconds."""
    with pytest.raises(TypeError, match="clock must be a callable"):
        Clock(12.0)  # type: ignore[arg-type]
