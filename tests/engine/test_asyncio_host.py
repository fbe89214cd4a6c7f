"""torpor is written against AnyIO: it runs inside an asyncio application too."""

from __future__ import annotations

import asyncio
from pathlib import Path

import actors
from tests.support.agents import Counter


def test_runtime_under_asyncio(tmp_path: Path) -> None:
    """Send, ask, spawn, a query and a failure, all under asyncio.run."""

    class Strict(actors.Actor, name="Strict"):
        retry = actors.Retry(max_attempts=2, initial_delay=0.01)

        async def check(self, n: int) -> int:
            if n < 0:
                raise ValueError("negative")
            return n

    async def main() -> None:
        async with actors.open_runtime(tmp_path / "rt", types=[Counter, Strict]) as rt:
            ref = rt.ref(Counter, "a")
            await ref.send(Counter.incr, 1)
            results = await asyncio.gather(*(ref.ask(Counter.incr, 1) for _ in range(10)))
            assert sorted(results) == list(range(2, 12))
            assert await ref.ask(Counter.value) == 11
            spawned = await rt.spawn(Counter, 5)
            assert await spawned.ask(Counter.value) == 5
            strict = rt.ref(Strict, "s")
            try:
                await strict.ask(Strict.check, -1)
            except actors.MessageFailedError as exc:
                assert isinstance(exc.__cause__, ValueError)
            else:
                raise AssertionError("expected MessageFailedError")
            assert await strict.ask(Strict.check, 4) == 4

    asyncio.run(main())
