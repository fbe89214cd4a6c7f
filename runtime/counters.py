"""The runtime's counters, as the engine's rooms increment them.

One mutable object per runtime (``Engine.counters``); ``Runtime.statistics()`` copies it into
the frozen ``RuntimeStatistics`` users get. Each field counts since the runtime opened.
"""

from __future__ import annotations

import attrs


@attrs.define
class Counters:
    """What the runtime did since it opened: messages, turns, steps, timers, hibernations."""

    sent: int = 0  # messages stored in a mailbox (not a repeat of an idempotency key)
    turns: int = 0  # committed batches
    applied: int = 0  # messages applied by those turns
    retries: int = 0  # failed attempts that will be tried again
    dead_letters: int = 0
    timers_fired: int = 0
    steps: int = 0  # journaled steps that ran (not replayed)
    step_retries: int = 0
    hibernations: int = 0
