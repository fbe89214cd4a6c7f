"""How the runtime replicates: :class:`Replication`, the options given to
``open_runtime(replica=..., replication=...)``."""

from __future__ import annotations

import math

import attrs


@attrs.frozen
class Replication:
    """How the runtime replicates (``open_runtime(replica=..., replication=...)``).

    ``lag_target``: the replication lag aimed at (commit to acknowledgement), seconds: under
    load the delay before a round is this minus the time recent rounds took (their slowest),
    so rounds are as few as the target allows, and more frequent when the store is slow;
    ``max_delay`` bounds that delay; ``min_delay``: the delay when commits are rare;
    ``busy_rate``: commits per second at which the delay reaches its load value (it grows
    linearly with the observed rate up to there). A durable turn's commits go at
    ``min_delay``. ``checkpoint_frames``: WAL frames after which a file is checkpointed
    (between turns). ``fold_interval``: seconds after which a file's shipped segments are
    listed in its manifest (a restore then reads fewer log objects), or after
    ``fold_segments`` segments; ``compact_segments``: segments after which a file gets a new
    snapshot (each threshold is spread by a random factor per file, so that many busy files
    do not all rewrite their manifests in one round).
    ``retention``: seconds of history kept for point-in-time restore; ``keep_generations``:
    earlier snapshots kept at most.
    """

    lag_target: float = 0.9
    max_delay: float = 0.85
    min_delay: float = 0.02
    busy_rate: float = 100.0
    checkpoint_frames: int = 1000
    fold_interval: float = 3600.0
    fold_segments: int = 4096
    compact_segments: int = 6144
    retention: float = 24 * 3600.0
    keep_generations: int = 8

    def __attrs_post_init__(self) -> None:
        for name in (
            "lag_target",
            "max_delay",
            "min_delay",
            "busy_rate",
            "retention",
            "fold_interval",
        ):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value < 0 or math.isnan(value):
                raise ValueError(f"Replication.{name} must be a number >= 0 (got {value!r})")
        for name in ("checkpoint_frames", "fold_segments", "compact_segments"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Replication.{name} must be an int >= 1 (got {value!r})")
        if not isinstance(self.keep_generations, int) or self.keep_generations < 0:
            raise ValueError(
                f"Replication.keep_generations must be an int >= 0 (got {self.keep_generations!r})"
            )
        if self.min_delay > self.max_delay:
            raise ValueError("Replication.min_delay must not be above max_delay")
