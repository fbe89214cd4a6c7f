"""Durable timers: when a timer is first due, and when it is due again after firing.

Times are epoch seconds from the runtime's clock. Cron expressions are evaluated in UTC by
cronsim (pure Python, no dependencies, maintained by the author of healthchecks.io, which runs
it against millions of real schedules; croniter was declared abandoned in 2025 before moving to
a new home, and a hand-written parser is what the issue asked us not to write).
"""

from __future__ import annotations

import datetime as dt
import math

import attrs
import cronsim


@attrs.frozen
class Schedule:
    """One durable timer of an actor, as ``Actor.schedules()`` lists it."""

    name: str
    method: str
    next_at: float
    every: float | None
    cron: str | None


def check_name(name: object) -> str:
    if not isinstance(name, str) or not name or len(name) > 200:
        raise ValueError(
            f"a timer name must be a non-empty str of at most 200 characters (got {name!r})"
        )
    return name


def first_due(
    now: float,
    *,
    at: float | dt.datetime | None,
    after: float | None,
    every: float | None,
    cron: str | None,
) -> float:
    """When a new timer is first due; ``ValueError`` for a combination that means nothing."""
    if cron is not None:
        if at is not None or after is not None or every is not None:
            raise ValueError("cron= cannot be combined with at=, after= or every=")
        return next_cron(cron, now)
    if at is not None and after is not None:
        raise ValueError("give at= or after=, not both")
    if every is not None and not (isinstance(every, int | float) and every > 0):
        raise ValueError(f"every= must be a positive number of seconds (got {every!r})")
    if at is not None:
        due = _epoch(at)
    elif after is not None:
        if not isinstance(after, int | float) or after < 0 or not math.isfinite(after):
            raise ValueError(f"after= must be a number of seconds >= 0 (got {after!r})")
        due = now + after
    elif every is not None:
        due = now + every
    else:
        raise ValueError("a timer needs at=, after=, every= or cron=")
    return due


def due_again(due_at: float, now: float, every: float | None, cron: str | None) -> float | None:
    """When a timer that fired (due at ``due_at``, fired at ``now``) is due next; ``None`` when
    it was a one-shot. Missed intervals or cron instants while the process was down collapse
    into the one firing that just happened."""
    if cron is not None:
        return next_cron(cron, max(now, due_at))
    if every is not None:
        missed = math.floor((now - due_at) / every) + 1
        return due_at + max(1, missed) * every
    return None


def next_cron(expression: str, after: float) -> float:
    start = dt.datetime.fromtimestamp(after, tz=dt.UTC)
    try:
        it = cronsim.CronSim(expression, start)
    except cronsim.CronSimError as exc:
        raise ValueError(f"bad cron expression {expression!r}: {exc}") from None
    return next(it).timestamp()


def _epoch(at: float | dt.datetime) -> float:
    if isinstance(at, dt.datetime):
        if at.tzinfo is None:
            raise ValueError(
                f"at= needs a timezone-aware datetime (got naive {at!r}); "
                "use datetime.now(timezone.utc) or attach a tzinfo"
            )
        return at.timestamp()
    if isinstance(at, int | float) and math.isfinite(at):
        return float(at)
    raise ValueError(f"at= must be an aware datetime or epoch seconds (got {at!r})")
