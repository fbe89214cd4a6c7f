"""Deterministic crash testing of users' actors (``actors.testing``).

:func:`check_crashes` runs a scenario under virtual time (on trio or on asyncio, see
:func:`run_virtual`) once without crashes, counting the crash points it passes: before and
after every step and ask, before and after every durable wait, before and after every turn's
commit. Then, for each point, it runs the scenario again in a fresh directory, crashes the
runtime at that point (in process: the turn's transaction rolls back, nothing else commits,
every in-memory object is dropped, as after ``kill -9``), reopens the runtime and runs the
scenario again from the top, as a client retrying would. Each run must end with the same actor
state and the same calls of step functions as the crash-free run.

Every run of a scenario draws the same fresh ``self.random()`` and ``self.uuid()`` values: each is
seeded with the scenario's seed and its place (actor, message, step number), so a value drawn
again after a crash (its turn rolled back before it was journaled) equals the crash-free one.

The scenario runs again after a crash, so it must be safe to repeat: give its sends, asks and
signals an ``idempotency_key``, as a real client retrying after a failure would.
"""

from __future__ import annotations

import asyncio
import collections
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import anyio
import apsw
import attrs
import trio
import trio.testing

from .files.layout import DATA_FILE, DIRECTORY_FILE, actor_dir
from .runtime import Runtime, open_runtime
from .steps import VALUE_SEED

#: Virtual epoch seconds at which every run starts.
START = 1_800_000_000.0

#: The async backends torpor runs on, and :func:`check_crashes` and :func:`run_virtual` accept.
BACKENDS = ("trio", "asyncio")

#: Resolution of asyncio's virtual clock. asyncio runs a timer when it is due within the loop's
#: clock resolution (1e-9 s by default); past 2**24 s (194 days) of virtual time that sum rounds
#: back to the time itself, a timer landed on exactly is never run, and the loop spins.
ASYNCIO_CLOCK_RESOLUTION = 1e-6

Backend = Literal["trio", "asyncio"]
T = TypeVar("T")


def run_virtual(fn: Callable[..., Awaitable[T]], *args: Any, backend: Backend = "trio") -> T:
    """Run ``fn(*args)`` on ``backend`` under virtual time, and return its result.

    Whenever every task waits, time jumps to the next deadline, so a run that sleeps for a year
    ends at once. On trio this is ``trio.testing.MockClock(autojump_threshold=0)``; on asyncio,
    an event loop from looptime (a test dependency: ``pip install looptime``) that does the
    same. On both, time starts at 0 and jumps even while a worker thread runs.
    """
    if backend == "trio":
        return trio.run(fn, *args, clock=trio.testing.MockClock(autojump_threshold=0))
    if backend == "asyncio":
        return anyio.run(
            fn, *args, backend="asyncio", backend_options={"loop_factory": _virtual_loop}
        )
    raise ValueError(f"backend must be one of {BACKENDS} (got {backend!r})")


def _virtual_loop() -> asyncio.AbstractEventLoop:
    try:
        import looptime
    except ImportError as exc:  # pragma: no cover (the test extra installs it)
        raise ImportError(
            "virtual time on asyncio needs looptime: pip install 'torpor[testing]'"
        ) from exc
    loop = looptime.new_event_loop()
    loop._clock_resolution = ASYNCIO_CLOCK_RESOLUTION  # type: ignore[attr-defined]
    return loop


class SimulatedCrash(BaseException):
    """Raised at a crash point: the runtime stops as if its process had been killed."""


@attrs.frozen
class CrashReport:
    """What :func:`check_crashes` checked.

    ``points``: the crash points of the crash-free run, each described as
    ``"<where> <actor type> <key> message <seq> step <n>"``; every one was crashed at once.
    ``calls``: the step functions called in the crash-free run, as
    ``(actor type, key, step name) -> count``. ``state``: the final state compared.
    """

    points: tuple[str, ...]
    calls: dict[tuple[str, str, str], int]
    state: Any


def check_crashes(
    scenario: Callable[[Runtime], Awaitable[Any]],
    *,
    types: Sequence[type],
    state: Callable[[Path], Any] | None = None,
    settle: float = 3600.0,
    points: Sequence[int] | None = None,
    seed: int | str | None = None,
    backend: Backend = "trio",
    **options: Any,
) -> CrashReport:
    """Crash ``scenario`` at every crash point and compare each run with a crash-free one.

    ``scenario(rt)`` drives the actors (sends, asks, signals; each with an idempotency key).
    After it returns, the runtime runs for ``settle`` more virtual seconds (timers, outbox
    deliveries), then closes. ``state(root)`` reads the final state from the runtime directory;
    the default is every actor's tables and key-value map. ``points``: crash only at these
    1-based point numbers (default: all). ``seed`` seeds the fresh values of ``self.random()``
    and ``self.uuid()``, the same in every run (default: the scenario's qualified name).
    ``backend``: ``"trio"`` or ``"asyncio"``, the event loop every run uses (see
    :func:`run_virtual`). Other keyword arguments go to ``open_runtime`` (``clock`` is the
    virtual clock, starting at :data:`START`).

    Raises ``AssertionError`` naming the crash point, with both states or call counts, at the
    first difference. Returns a :class:`CrashReport` of the crash-free run.
    """
    read_state = state or actor_state
    if seed is None:
        seed = f"{getattr(scenario, '__module__', '')}.{getattr(scenario, '__qualname__', '')}"
    value_seed = str(seed)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} (got {backend!r})")
    baseline = _run(scenario, types, None, settle, value_seed, backend, options)
    try:
        expected = read_state(baseline.root)
        wanted = points if points is not None else range(1, len(baseline.points) + 1)
        for point in wanted:
            if not 1 <= point <= len(baseline.points):
                raise ValueError(f"there are {len(baseline.points)} crash points (got {point})")
            run = _run(scenario, types, point, settle, value_seed, backend, options)
            try:
                _compare(run, baseline, point, read_state, expected)
            finally:
                run.holder.cleanup()
    finally:
        baseline.holder.cleanup()
    return CrashReport(tuple(baseline.points), dict(baseline.calls), expected)


def _compare(
    run: _Run, baseline: _Run, point: int, read_state: Callable[[Path], Any], expected: Any
) -> None:
    where = baseline.points[point - 1]
    if not run.crashed:
        raise AssertionError(f"crash point {point} ({where}) was not reached again")
    if run.calls != baseline.calls:
        raise AssertionError(
            f"after a crash at point {point} ({where}), the step functions were called "
            f"{_counts(run.calls)} instead of {_counts(baseline.calls)}"
        )
    got = read_state(run.root)
    if got != expected:
        raise AssertionError(
            f"after a crash at point {point} ({where}), the final state differs:\n"
            f"  crash-free: {expected!r}\n"
            f"  crashed:    {got!r}"
        )


@attrs.define
class _Run:
    holder: tempfile.TemporaryDirectory[str]
    root: Path
    points: list[str]
    calls: collections.Counter[tuple[str, str, str]]
    crashed: bool


def _run(
    scenario: Callable[[Runtime], Awaitable[Any]],
    types: Sequence[type],
    crash_at: int | None,
    settle: float,
    seed: str,
    backend: Backend,
    options: dict[str, Any],
) -> _Run:
    holder = tempfile.TemporaryDirectory(prefix="torpor-crashtest-")
    run = _Run(holder, Path(holder.name) / "rt", [], collections.Counter(), False)

    def hook(where: str, turn: Any, number: int, name: str) -> None:
        if where == "step called":
            act = turn.activation
            run.calls[(act.spec.name, act.key, name)] += 1
            return
        if turn is None:
            what = f"{where} ({name}, message {number})"
        else:
            act = turn.activation
            what = (
                f"{where} {name!r} ({act.spec.name} {act.key!r}, message {turn.seq}, step {number})"
            )
        run.points.append(what)
        if crash_at is not None and not run.crashed and len(run.points) == crash_at:
            run.crashed = True
            raise SimulatedCrash(what)

    async def main() -> None:
        settings = dict(options)
        clock = settings.pop("clock", None) or (lambda: START + anyio.current_time())
        VALUE_SEED.set(seed)  # for this run's tasks only: each run gives main a context copy
        for attempt in range(2):
            try:
                async with open_runtime(run.root, types=types, clock=clock, **settings) as rt:
                    rt._engine.crash_hook = hook
                    await scenario(rt)
                    await anyio.sleep(settle)
                return
            except BaseException as exc:
                if attempt == 0 and _is_crash(exc):
                    continue  # the process "restarts": run the scenario again
                raise

    try:
        run_virtual(main, backend=backend)
    except BaseException:
        holder.cleanup()
        raise
    return run


def _is_crash(exc: BaseException) -> bool:
    if isinstance(exc, SimulatedCrash):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_crash(e) for e in exc.exceptions)
    return False


def actor_state(root: Path) -> dict[tuple[str, str], dict[str, list[tuple[Any, ...]]]]:
    """Every actor's own tables and its key-value map, read from the closed runtime directory:
    ``(type, key) -> {table: sorted rows}``."""
    out: dict[tuple[str, str], dict[str, list[tuple[Any, ...]]]] = {}
    directory = _read_only(root / DIRECTORY_FILE)
    try:
        actors = list(directory.execute("SELECT id, type, key FROM actors ORDER BY type, key"))
    finally:
        directory.close()
    for aid, type_name, key in actors:
        path = actor_dir(root, aid) / DATA_FILE
        if not path.exists():
            continue
        conn = _read_only(path)
        try:
            tables = [
                name
                for (name,) in conn.execute(
                    "SELECT name FROM sqlite_schema WHERE type = 'table' AND "
                    "(name NOT LIKE '\\_torpor\\_%' ESCAPE '\\' OR name = '_torpor_kv') "
                    "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name"
                )
            ]
            out[(type_name, key)] = {
                table: sorted(
                    (tuple(row) for row in conn.execute(f'SELECT * FROM "{table}"')),
                    key=repr,
                )
                for table in tables
            }
        finally:
            conn.close()
    return out


def _read_only(path: Path) -> apsw.Connection:
    # unix-excl: the WAL index in memory, so reading leaves no -shm file behind
    return apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY, vfs="unix-excl")


def _counts(calls: collections.Counter[tuple[str, str, str]]) -> str:
    return repr(dict(sorted(calls.items())))
