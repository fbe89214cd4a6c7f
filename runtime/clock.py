"""The runtime's one clock.

Two kinds of time, from one object:

- **wall** (:meth:`Clock.now`): epoch seconds, for what is stored and compared across processes:
  timers' due times, durable sleeps' deadlines, the time a message was enqueued or a result
  stored, the expiry of idempotency keys, lifecycle events' ``at``. It is the ``clock`` given to
  ``open_runtime`` (``time.time`` by default; tests give a virtual one).
- **loop** (:meth:`Clock.loop`): the event loop's seconds (``anyio.current_time()``), for
  durations inside one process: idle timeouts, restart intensity windows, wake-up latency.
  Under virtual time (trio's ``MockClock``, or looptime on asyncio) it jumps with the test.

A ``Clock`` is also callable, as the ``clock`` it wraps: ``clock()`` is ``clock.now()``.
Offline tools (``ops/``) and the files' own defaults use ``time.time``. Replication paces its
rounds against the store with ``time.monotonic``: those are real network round trips.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio


class Clock:
    """Wall time (injectable) and loop time, for one runtime."""

    __slots__ = ("wall",)

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        if not callable(wall):
            raise TypeError(f"clock must be a callable returning epoch seconds (got {wall!r})")
        #: The injected wall clock itself (what the files call for the times they record).
        self.wall = wall

    def now(self) -> float:
        """Epoch seconds, from the injected wall clock."""
        return self.wall()

    def __call__(self) -> float:
        return self.wall()

    #: The event loop's clock, in seconds (virtual under a test clock): anyio's own function,
    #: with no frame of ours around it.
    loop = staticmethod(anyio.current_time)
