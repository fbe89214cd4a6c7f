"""Durable steps inside a turn: journaled effects, values, waits and asks.

(For users: docs/explanation/turns.md, "Steps: effects that must not run twice".)

Every durable call of a handler (``self.step``, ``self.now``, ``self.sleep``, ``self.ask``, ...)
gets the next *step number* of its turn when it is called, not when it is awaited, so that steps
started together (``self.gather``) are numbered in the order the code wrote them. The journal in
``mailbox.db`` is keyed by (message, step number). A turn that runs again (after a crash, a
retry, a durable wait that let the actor hibernate, or a restart through the API) replays from
its start: ``data.db`` writes were rolled back, and journaled steps return their recorded
results without running again.

Journal writes are committed before the step's result is used, except for values
(``now``/``random``/``uuid``/``patched`` markers): those are written with the next journal write,
before any effect that could have observed them leaves the turn. If the turn commits first, the
message is applied and never replayed, so they need no write at all.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import math
import random
import traceback
import uuid
from collections.abc import Awaitable, Callable, Generator, Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import attrs

from . import context
from .errors import (
    ActorError,
    ActorFailedError,
    ActorStoppedError,
    MessageFailedError,
    NondeterminismError,
    NonRetryable,
    RuntimeClosedError,
    StepFailedError,
    StorageError,
    StoredError,
    TerminalError,
    WaitTimeoutError,
)
from .files.mailbox import JournalRow
from .spec import Retry

if TYPE_CHECKING:
    from .files.mailbox import Message
    from .host import ActorHost

T = TypeVar("T")

#: The retry policy of a step that names none.
DEFAULT_STEP_RETRY = Retry(max_attempts=3)


@attrs.frozen
class StepInfo:
    """What a step's function may know about itself (``actors.current_step()``).

    ``idempotency_key`` is the same on every attempt and every replay of this step, and
    different for every other step: pass it to external APIs that de-duplicate (payments,
    e-mail, LLM providers' request ids).
    """

    name: str
    number: int
    attempt: int
    idempotency_key: str
    #: The attempt's place in the actor's stream (what ``emit`` writes through); internal.
    _stream: object = attrs.field(default=None, repr=False, eq=False, alias="stream")

    def emit(self, topic: str, chunk: Any) -> None:
        """Append ``chunk`` to the actor's stream ``topic`` at once (not with the turn's commit),
        tagged with this step and attempt; thread-safe, so a sync step's function may call it.

        Chunks are committed in groups every few milliseconds and only then reach subscribers.
        If this attempt fails, is cancelled or the process dies, a ``reset`` entry follows so
        readers drop its chunks; a completed step's replay emits nothing again. After the
        attempt ended, this raises :class:`StepAttemptEndedError`."""
        stream: Any = self._stream
        if stream is None:
            raise RuntimeError("this StepInfo belongs to no running step: it cannot emit")
        stream.emit(topic, chunk)


CURRENT_STEP: ContextVar[StepInfo | None] = ContextVar("torpor_step", default=None)
#: Set in the tasks of ``self.gather`` that run something else than a step.
GATHER_CHILD: ContextVar[bool] = ContextVar("torpor_gather_child", default=False)
#: Set by the crash-testing kit (``runtime.testing``) for its runs: a fresh ``self.random()`` or
#: ``self.uuid()`` value then comes from a generator seeded with this string and the value's
#: place (actor, message, step number), so that every run of a scenario draws the same values,
#: wherever it crashed. Unset, values come from the process's sources of randomness.
VALUE_SEED: ContextVar[str | None] = ContextVar("torpor_value_seed", default=None)


def current_step() -> StepInfo:
    """The step whose function is running in this task or worker thread."""
    info = CURRENT_STEP.get()
    if info is None:
        raise RuntimeError("current_step() is available only inside a step's function")
    return info


class SplitBatch(BaseException):
    """A message batched behind others made its first durable call: the runtime commits the
    messages before it and runs this one again, first in a transaction of its own (so that a
    long step never holds the replies of messages that already finished)."""


class Suspended(BaseException):
    """The turn waits durably and the actor hibernates (or the runtime closes): the turn's
    transaction rolls back and the turn replays once the wait can end."""


class Interrupted(BaseException):
    """The turn was cancelled or restarted through the API."""


@attrs.define(eq=False)
class TurnState:
    """The durable-execution state of the message a handler runs."""

    activation: ActorHost
    message: Message
    first: bool  # first message of its transaction (only such a message may make steps)
    next_n: int = 0
    journal: dict[int, JournalRow] | None = None
    pending: list[JournalRow] = attrs.Factory(list)  # value records not yet written
    running: int = 0  # steps and asks executing now
    waits: int = 0  # durable waits in progress
    scopes: set[anyio.CancelScope] = attrs.Factory(set)  # durable waits in progress
    busy_scopes: set[anyio.CancelScope] = attrs.Factory(set)  # steps and asks in progress
    suspending: bool = False
    # Suspended inside a journaled durable wait: nothing but the wait's end (its deadline, or
    # its event) can move the turn on. A turn suspended anywhere else (a step or an ask that
    # finished within the close's grace, its next durable call refused) must run again at once.
    parked: bool = False
    interrupt: str | None = None  # "cancel" or "restart", set through the API
    broken: NondeterminismError | None = None  # raised once: the turn cannot go on

    @property
    def seq(self) -> int:
        return self.message.seq

    def rows(self) -> dict[int, JournalRow]:
        if self.journal is None:
            self.journal = self.activation.mailbox.journal(self.seq)
        return self.journal

    def describe(self) -> str:
        act = self.activation
        return f"{act.spec.name} {act.key!r}, message {self.seq} ({self.message.method})"

    def claim(self, kind: str, name: str) -> tuple[int, JournalRow | None]:
        """The next step number, and its journal row if a previous run recorded it."""
        self.check_can_continue()
        if GATHER_CHILD.get():
            raise RuntimeError(
                f"{self.describe()}: {kind} {name!r} was called inside a coroutine run by "
                "self.gather; its number would depend on the scheduling order. Create the "
                "steps in the handler and gather them (self.gather(self.step(...), "
                "self.ask(...), ...)), or await the helper coroutines one after another"
            )
        if not self.first:
            raise SplitBatch
        n = self.next_n
        self.next_n += 1
        row = self.rows().get(n)
        if row is not None and (row.kind != kind or row.name != name):
            self.broken = NondeterminismError(
                f"{self.describe()}: step {n} was recorded as {row.kind} {row.name!r}, but this "
                f"run called {kind} {name!r} at that position. Code between steps must be "
                "deterministic (same state, message and step results -> same steps in the same "
                "order). Put the change behind `if self.patched('<change-id>'):` so that turns "
                "already in flight keep their old path, or cancel or restart those turns "
                "(Runtime.cancel_turn, Runtime.restart_turn); then Runtime.resume the actor"
            )
            raise self.broken
        return n, row

    def check_can_continue(self) -> None:
        """After a suspension, an interrupt or a divergence, no durable call may go on (a
        ``finally`` block calling a step would run it for real, at a shifted number)."""
        if self.broken is not None:
            raise self.broken
        if self.suspending:
            raise Suspended
        if self.interrupt is not None:
            raise Interrupted

    def write(self, *rows: JournalRow) -> None:
        """Journal ``rows`` now, with any value records still pending before them."""
        batch = [*self.pending, *rows]
        self.pending.clear()
        if batch:
            # Journaling progress proves the turn is not what kills the process: forget its
            # starts, so that a long turn is not dead-lettered by unrelated crashes.
            progress = self.message.started > 0
            self.activation.mailbox.record(self.seq, batch, reset_start=progress)
            self.message.started = 0
            journal = self.rows()
            for row in batch:
                journal[row.n] = row

    def _clock(self) -> float:
        return self.activation.runtime.clock()

    def idempotency_key(self, n: int) -> str:
        """Unique to the actor's history (its lineage: kept by a restore on any machine, new
        for a fork), the message, a restart of the turn and the step."""
        act = self.activation
        key = f"torpor:{act.data.lineage}:{_message_id(self.message)}:{n}"
        restarts = self.message.restarts
        return key if not restarts else f"{key}:r{restarts}"

    # -- values ---------------------------------------------------------------------------

    def value(self, kind: str, make: Callable[[random.Random | None], Any]) -> Any:
        """Journal ``make(rng)``: ``rng`` is ``None``, or seeded for this place (``VALUE_SEED``)."""
        n, row = self.claim(kind, kind)
        codec = self.activation.runtime.codec
        if row is not None:
            assert row.value is not None
            return codec.decode(row.value)
        seed = VALUE_SEED.get()
        rng = None
        if seed is not None:
            act = self.activation
            place = (act.spec.name, act.key, _message_id(self.message), self.message.restarts, n)
            rng = random.Random(f"{seed}:{place!r}")
        value = make(rng)
        self.pending.append(
            JournalRow(n, kind, kind, "done", codec.encode(value), None, 0, self._clock())
        )
        return value

    def patched(self, change_id: str) -> bool:
        if not isinstance(change_id, str) or not change_id:
            raise TypeError(f"patched() takes a non-empty change id string (got {change_id!r})")
        if not self.first:
            raise SplitBatch
        row = self.rows().get(self.next_n)
        if row is None:  # new ground: record that this turn runs the patched code
            n = self.next_n
            self.next_n += 1
            self.pending.append(
                JournalRow(n, "patch", change_id, "done", None, None, 0, self._clock())
            )
            return True
        if row.kind == "patch" and row.name == change_id:
            self.next_n += 1
            return True
        return False  # a turn recorded by code without this change: keep the old path

    # -- steps ----------------------------------------------------------------------------

    def step(
        self,
        name: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        retry: Retry,
    ) -> StepCall[Any]:
        if not isinstance(name, str) or not name:
            raise TypeError(f"a step needs a non-empty name string (got {name!r})")
        if not callable(fn):
            raise TypeError(f"step {name!r}: fn must be callable (got {fn!r})")
        n, row = self.claim("step", name)
        return StepCall(functools.partial(self.run_step, n, row, name, fn, args, kwargs, retry))

    async def run_step(
        self,
        n: int,
        row: JournalRow | None,
        name: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        retry: Retry,
    ) -> Any:
        act = self.activation
        rt = act.runtime
        if row is not None and row.status != "retrying":
            return self._replayed(row)
        self.write()
        rt.crash_point("before step", self, n, name)
        self.running += 1
        act.turn_busy()
        try:
            with self.interruptible():
                return await self._attempts(n, name, fn, args, kwargs, retry, row)
        finally:
            self.running -= 1
            act.turn_maybe_idle()

    async def _attempts(
        self,
        n: int,
        name: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        retry: Retry,
        row: JournalRow | None,
    ) -> Any:
        """Run the step's attempts; ``row``: its journal row if it was retrying when its turn
        last ran (the attempts it made, and when the next may start), so that neither the
        count nor the backoff starts again after a crash or a hibernation."""
        rt = self.activation.runtime
        attempt = 0 if row is None else row.attempts
        next_at = None if row is None else row.until
        is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "__call__", None)  # noqa: B004 (an async callable object)
        )
        while True:
            if next_at is not None:
                await anyio.sleep(max(0.0, next_at - rt.clock()))
            attempt += 1
            key = self.idempotency_key(n)
            writer = self.activation.stream
            stream = writer.attempt(self.seq, n, attempt, name, key)
            info = StepInfo(name, n, attempt, key, stream=stream)
            rt.crash_point("step called", self, n, name)
            token = CURRENT_STEP.set(info)
            # The handler's context is not the step's: self.kv, self.sql, sends and durable
            # calls inside fn would be lost (or renumbered) when the step replays.
            handler = context.CURRENT.set(None)
            try:
                with _deadline(retry.deadline):
                    if is_async:
                        result = await fn(*args, **kwargs)
                    else:
                        result = await anyio.to_thread.run_sync(
                            functools.partial(fn, *args, **kwargs), abandon_on_cancel=True
                        )
                payload = rt.codec.encode(result)
            except Exception as exc:
                if stream.end(ok=False):  # its reset marker is durable before the outcome
                    await writer.durable()
                terminal = isinstance(exc, TerminalError)
                final = terminal or (
                    isinstance(exc, NonRetryable | ActorError)
                    and not isinstance(exc, StepDeadlineError)
                )
                if retry.exhausted(attempt) or final:
                    record = JournalRow(
                        n,
                        "step",
                        name,
                        "failed",
                        rt.codec.encode(_error_info(exc, terminal)),
                        None,
                        attempt,
                        self._clock(),
                    )
                    self.write(record)
                    rt.counters.steps += 1
                    rt.crash_point("after step", self, n, name)
                    raise _step_failed(self, record, exc) from exc
                rt.counters.step_retries += 1
                # The count and the next attempt's time are journaled (the row is replaced by
                # the step's outcome): a crash in the backoff waits out the rest of it.
                next_at = self._clock() + retry.delay(attempt)
                last = rt.codec.encode(_error_info(exc, False))
                self.write(
                    JournalRow(n, "step", name, "retrying", last, next_at, attempt, self._clock())
                )
                continue
            except BaseException:
                stream.end(ok=False)  # cancelled: its reset is written soon (or at the next wake)
                raise
            finally:
                context.CURRENT.reset(handler)
                CURRENT_STEP.reset(token)
            if stream.end(ok=True):  # its chunks are durable before its outcome is journaled
                await writer.durable()
                self.write(
                    JournalRow(n, "step", name, "done", payload, None, attempt, self._clock())
                )
                stream.forget()
            else:
                self.write(
                    JournalRow(n, "step", name, "done", payload, None, attempt, self._clock())
                )
            rt.counters.steps += 1
            rt.crash_point("after step", self, n, name)
            return rt.codec.decode(payload)

    def _replayed(self, row: JournalRow) -> Any:
        codec = self.activation.runtime.codec
        assert row.value is not None
        if row.status == "done":
            return codec.decode(row.value)
        type_name, message, text = codec.decode(row.value)[:3]
        raise _step_failed(self, row, None) from StoredError(type_name, message, text)

    # -- durable waits --------------------------------------------------------------------

    def wait(
        self,
        kind: str,
        name: str,
        until: float | None,
        event: str | None,
        *,
        check: Callable[[], bytes | None] | None = None,
        finish: Callable[[Any], Any] | None = None,
    ) -> StepCall[Any]:
        """A durable sleep (``event`` None) or event wait: numbered and journaled now, waited
        for when awaited. A new wait's deadline is journaled, so a replay keeps it.

        ``check``, for a wait on something outside this actor (a run's outcome): called when
        no event is there, it returns the encoded value that ends the wait, or ``None``.
        ``finish`` turns the journaled value into the wait's result (or raises)."""
        n, row = self.claim(kind, name)
        if row is None:
            row = JournalRow(n, kind, name, "waiting", None, until, 0, self._clock())
            self.write(row)
            self.activation.runtime.crash_point("before wait", self, n, name)
            self.activation.wait_changed(until)
        branch = Branch(n, row, event, check, finish, None)
        return StepCall(functools.partial(self._wait, row, event, check, finish), branch)

    def _wait_result(self, row: JournalRow, event: str | None, finish: Any) -> Any:
        """The result of a wait journaled as over (done, or failed at its deadline)."""
        if row.status == "failed":
            raise WaitTimeoutError(f"{self.describe()}: no {event!r} event before the deadline")
        value = None if row.value is None else self.activation.runtime.codec.decode(row.value)
        return value if finish is None else finish(value)

    def _poll(self, row: JournalRow, event: str | None, check: Any) -> bool:
        """Whether the wait of ``row`` is over now (then journaled: done, or failed at its
        deadline): an event taken, ``check``'s value, or its deadline passed."""
        act = self.activation
        rt = act.runtime
        if check is not None:  # (first: the latest state; the event is its doorbell)
            payload = check()
            if payload is not None:
                row.status, row.value = "done", payload
                self.write(row)
                act.timers_changed = row.until is not None
                rt.crash_point("after wait", self, row.n, row.name)
                return True
        if event is not None and act.mailbox.consume_event(self.seq, row, event) is not None:
            act.timers_changed = row.until is not None  # its deadline no longer wakes it
            rt.crash_point("after wait", self, row.n, row.name)
            return True
        if row.until is not None and rt.clock() >= row.until:
            row.status = "done" if event is None and check is None else "failed"
            self.write(row)
            rt.crash_point("after wait", self, row.n, row.name)
            return True
        return False

    async def _wait(
        self, row: JournalRow, event: str | None, check: Any = None, finish: Any = None
    ) -> Any:
        act = self.activation
        rt = act.runtime
        if row.status not in ("done", "failed"):
            while not self._poll(row, event, check):
                until = row.until
                await self._park(
                    [act.event_arrival(event)] if event is not None else [],
                    math.inf if until is None else until - rt.clock(),
                )
        return self._wait_result(row, event, finish)

    async def _park(self, arrivals: list[anyio.Event], delay: float) -> None:
        """Wait (idle: the actor may hibernate) until one of ``arrivals`` is set or ``delay``
        passes; :class:`Suspended` if the actor hibernates meanwhile."""
        act = self.activation
        self.waits += 1
        act.turn_maybe_idle()
        try:
            with anyio.CancelScope() as scope:
                self.scopes.add(scope)
                if self.suspending:
                    scope.cancel()
                with anyio.move_on_after(delay):
                    if len(arrivals) == 1:
                        await arrivals[0].wait()
                    elif not arrivals:
                        await anyio.sleep_forever()
                    else:
                        async with anyio.create_task_group() as tg:
                            for arrival in arrivals:
                                tg.start_soon(_set_then_cancel, arrival, tg.cancel_scope)
        finally:
            self.scopes.discard(scope)
            self.waits -= 1
            act.turn_busy()
        if self.suspending:
            self.parked = True
            raise Suspended
        if self.interrupt is not None:
            raise Interrupted

    def wait_any(self, calls: tuple[Awaitable[Any], ...]) -> StepCall[tuple[int, Any]]:
        """``self.wait_any``: the first of several durable waits to end, journaled (which one
        won is the row of a step of its own, numbered after theirs)."""
        branches: list[Branch] = []
        for i, call in enumerate(calls):
            if not isinstance(call, StepCall) or call.branch is None or call._awaited:
                raise TypeError(
                    f"wait_any takes durable waits not awaited yet (self.sleep, "
                    f"self.sleep_until, self.wait_for_event, self.ask, run.result(), "
                    f"run.wait_value()); argument {i} is {call!r}"
                )
            branches.append(call.branch)
        for call in calls:
            assert isinstance(call, StepCall)
            call._awaited = True
        n, row = self.claim("any", "wait_any")
        return StepCall(functools.partial(self._wait_any, n, row, branches))

    async def _wait_any(
        self, n: int, row: JournalRow | None, branches: list[Branch]
    ) -> tuple[int, Any]:
        if row is not None:
            assert row.value is not None
            index = int(self.activation.runtime.codec.decode(row.value))
            return index, self._branch_result(branches[index], None)
        self.write()
        slots: dict[int, tuple[bool, Any]] = {}
        ready = [anyio.Event()]
        async with anyio.create_task_group() as tg:
            for i, branch in enumerate(branches):
                if branch.ask is not None and self.rows().get(branch.n) is None:
                    tg.start_soon(_run_ask_branch, i, branch.ask, slots, ready)
            try:
                index = await self._first_to_end(n, branches, slots, ready)
            finally:
                tg.cancel_scope.cancel()
        return index, self._branch_result(branches[index], slots.get(index))

    async def _first_to_end(
        self,
        n: int,
        branches: list[Branch],
        slots: dict[int, tuple[bool, Any]],
        ready: list[anyio.Event],
    ) -> int:
        act = self.activation
        rt = act.runtime
        while True:
            index = self._ended(branches, slots)
            if index is None:
                for i, branch in enumerate(branches):
                    if branch.row is not None and self._poll(
                        branch.row, branch.event, branch.check
                    ):
                        index = i
                        break
            if index is not None:
                abandoned = []
                for i, branch in enumerate(branches):
                    if i != index and branch.row is not None and branch.row.status == "waiting":
                        branch.row.status = "abandoned"
                        abandoned.append(branch.row)
                won = JournalRow(
                    n, "any", "wait_any", "done", rt.codec.encode(index), None, 0, self._clock()
                )
                self.write(*abandoned, won)
                act.timers_changed = True
                rt.crash_point("after wait", self, n, "wait_any")
                return index
            for slot in slots.values():
                if not slot[0] and isinstance(slot[1], Suspended | Interrupted):
                    raise slot[1]
            ready[0] = anyio.Event()
            arrivals = [ready[0]]
            until = math.inf
            for branch in branches:
                if branch.row is None:
                    continue
                if branch.event is not None:
                    arrivals.append(act.event_arrival(branch.event))
                if branch.row.until is not None:
                    until = min(until, branch.row.until)
            await self._park(arrivals, until - rt.clock())

    def _ended(self, branches: list[Branch], slots: dict[int, tuple[bool, Any]]) -> int | None:
        """The first branch, in argument order, whose end is journaled already (an ask's reply,
        a wait ended before a crash) or whose ask has returned."""
        journal = self.rows()
        for i, branch in enumerate(branches):
            if i in slots and not isinstance(slots[i][1], Suspended | Interrupted):
                return i
            row = journal.get(branch.n)
            if row is not None and row.status in ("done", "failed"):
                return i
        return None

    def _branch_result(self, branch: Branch, slot: tuple[bool, Any] | None) -> Any:
        if slot is not None:
            ok, value = slot
            if not ok:
                raise value
            return value
        row = self.rows()[branch.n]
        if branch.ask is not None:
            return self._replayed(row)
        return self._wait_result(row, branch.event, branch.finish)

    def suspend(self) -> None:
        """Make every durable wait of this turn end in :class:`Suspended`."""
        self.suspending = True
        for scope in self.scopes:
            scope.cancel()

    def interrupt_with(self, what: str) -> None:
        """Cancel the turn (``"cancel"``) or run it again (``"restart"``): API requests. Its
        steps, asks and waits in progress are cancelled; otherwise it stops at its next
        durable call, or when its handler returns."""
        self.interrupt = what
        for scope in (*self.scopes, *self.busy_scopes):
            scope.cancel()

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """Around a step or an ask: an interrupt cancels it and raises :class:`Interrupted`.
        (A scope per step, not per message: messages without steps pay nothing.)"""
        with anyio.CancelScope() as scope:
            self.busy_scopes.add(scope)
            try:
                yield
            finally:
                self.busy_scopes.discard(scope)
        if scope.cancelled_caught:
            raise Interrupted

    @property
    def idle(self) -> bool:
        """Only durable waits are in progress: the actor may hibernate meanwhile."""
        return self.waits > 0 and self.running == 0

    # -- asks -----------------------------------------------------------------------------

    def ask(
        self, target: Any, method: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> StepCall[Any]:
        act = self.activation
        handler = target._spec.handler(method)
        # A bad call is refused here, like self.send's: before it is numbered or journaled.
        handler.check_arguments(target._spec.name, args, kwargs)
        name = f"{target.type_name}.{handler.name}"
        n, row = self.claim("ask", name)
        if row is not None:
            replayed = functools.partial(_returning, self._replayed, row)
            return StepCall(replayed, Branch(n, None, None, None, None, replayed))
        if target._spec is act.spec and target.key == act.key:
            raise RuntimeError(
                f"{self.describe()}: self.ask to the actor itself would wait for a turn that "
                "can only start after this one ends; call the method directly instead"
            )
        asking = functools.partial(self._ask, n, name, target, method, args, kwargs)
        return StepCall(asking, Branch(n, None, None, None, None, asking))

    async def _ask(
        self,
        n: int,
        name: str,
        target: Any,
        method: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        act = self.activation
        rt = act.runtime
        self.write()
        rt.crash_point("before step", self, n, name)
        self.running += 1
        act.turn_busy()
        try:
            try:
                # A child this turn spawned: made now, with its arguments (the ask leaves the
                # turn before its SPAWN row would).
                rt.create_spawned(act, target)
                with self.interruptible():
                    result = await rt.ask(
                        target._spec,
                        target.key,
                        method,
                        args,
                        kwargs,
                        self.idempotency_key(n),
                        from_turn=True,
                    )
                payload = rt.codec.encode(result)
            except (RuntimeClosedError, StorageError, ActorStoppedError, ActorFailedError):
                raise  # not the request's outcome: the turn rolls back and asks again later
            except ActorError as exc:
                # The asked message failed terminally: so does this ask (the handler may
                # catch the TerminalError, or let it fail its own message terminally).
                terminal = isinstance(exc, MessageFailedError) and exc.reason == "terminal"
                shown = exc.__cause__ if terminal and exc.__cause__ is not None else exc
                record = JournalRow(
                    n,
                    "ask",
                    name,
                    "failed",
                    rt.codec.encode(_error_info(shown, terminal)),
                    None,
                    1,
                    self._clock(),
                )
                self.write(record)
                rt.crash_point("after step", self, n, name)
                raise _step_failed(self, record, exc) from exc
            self.write(JournalRow(n, "ask", name, "done", payload, None, 1, self._clock()))
            rt.counters.steps += 1
            rt.crash_point("after step", self, n, name)
            return result
        finally:
            self.running -= 1
            act.turn_maybe_idle()


def _message_id(message: Message) -> str:
    """What names a message wherever its actor runs: the caller's idempotency key, or the
    sending actor's sequence number (a message delivered again after a restore keeps both),
    else its seq in the mailbox (kept by a restore of the mailbox)."""
    if message.idempotency_key is not None:
        digest = hashlib.blake2b(message.idempotency_key.encode(), digest_size=12).hexdigest()
        return f"k{digest}"
    if message.sender is not None and message.sender_seq is not None:
        digest = hashlib.blake2b(message.sender.encode(), digest_size=8).hexdigest()
        return f"s{digest}.{message.sender_seq}"
    return f"m{message.seq}"


async def _returning(fn: Callable[[JournalRow], Any], row: JournalRow) -> Any:
    return fn(row)


class StepDeadlineError(TimeoutError):
    """One attempt of a step took longer than its ``Retry.deadline`` (it is retried)."""


class _deadline:
    """``anyio.fail_after`` raising :class:`StepDeadlineError`, or nothing for ``None``."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.scope: anyio.CancelScope | None = None

    def __enter__(self) -> None:
        if self.seconds is not None:
            self.scope = anyio.move_on_after(self.seconds)
            self.scope.__enter__()

    def __exit__(self, *exc: Any) -> bool:
        if self.scope is None:
            return False
        swallowed = bool(self.scope.__exit__(*exc))
        if self.scope.cancelled_caught:
            raise StepDeadlineError(f"the attempt took longer than {self.seconds} s")
        return swallowed


@attrs.define(eq=False)
class Branch:
    """What ``self.wait_any`` needs to know of one of its durable waits: its step number, and
    either its journal row (a sleep or an event wait: ``event``, ``check`` and ``finish`` as
    for ``TurnState.wait``) or, for an ask, the coroutine function that runs it."""

    n: int
    row: JournalRow | None
    event: str | None
    check: Callable[[], bytes | None] | None
    finish: Callable[[Any], Any] | None
    ask: Callable[[], Awaitable[Any]] | None


async def _set_then_cancel(arrival: anyio.Event, scope: anyio.CancelScope) -> None:
    await arrival.wait()
    scope.cancel()


async def _run_ask_branch(
    i: int,
    ask: Callable[[], Awaitable[Any]],
    slots: dict[int, tuple[bool, Any]],
    ready: list[anyio.Event],
) -> None:
    """An ask of ``wait_any``, in a task of its own: its outcome goes to ``slots[i]``."""
    try:
        slots[i] = (True, await ask())
    except (Exception, Suspended, Interrupted) as exc:
        slots[i] = (False, exc)
    ready[0].set()


class StepCall(Awaitable[T]):
    """A step, numbered when created; await it once (alone, or in ``self.gather``)."""

    __slots__ = ("_awaited", "_run", "branch")

    def __init__(self, run: Callable[[], Awaitable[T]], branch: Branch | None = None) -> None:
        self._run = run
        self._awaited = False
        #: For a durable wait or an ask: what ``wait_any`` needs of it.
        self.branch = branch

    def __await__(self) -> Generator[Any, None, T]:
        if self._awaited:
            raise RuntimeError("a step can be awaited once; keep its result instead")
        self._awaited = True
        return self._run().__await__()


async def gather(*awaitables: Awaitable[Any]) -> list[Any]:
    """Await several steps (or any awaitables) at once; results in argument order. Every one
    runs to its end; then the first error, in argument order, is raised."""
    results: list[Any] = [None] * len(awaitables)
    errors: list[BaseException | None] = [None] * len(awaitables)

    async def one(i: int, awaitable: Awaitable[Any]) -> None:
        if not isinstance(awaitable, StepCall):
            GATHER_CHILD.set(True)  # (this task's own context)
        try:
            results[i] = await awaitable
        except (Exception, Suspended, Interrupted) as exc:
            errors[i] = exc

    async with anyio.create_task_group() as tg:
        for i, awaitable in enumerate(awaitables):
            tg.start_soon(one, i, awaitable)
    for error in errors:  # the runtime's own control flow first
        if isinstance(error, Suspended | Interrupted):
            raise error
    for error in errors:
        if error is not None:
            raise error
    return results


def _error_info(exc: BaseException, terminal: bool) -> list[Any]:
    """A step's final error as journaled: its type, message, traceback, and (only when true,
    so that journals written before terminal errors existed read the same) ``terminal``."""
    if isinstance(exc, StoredError):  # (read back from disk: keep the original's type)
        info: list[Any] = [exc.type_name, exc.message, exc.traceback]
    else:
        info = [type(exc).__qualname__, str(exc), "".join(traceback.format_exception(exc))]
    if terminal:
        info.append(True)
    return info


def _step_failed(
    turn: TurnState, row: JournalRow, exc: BaseException | None
) -> StepFailedError | TerminalError:
    """What the handler gets for a failed step: the same error, built from the journal row,
    on the first run and on every replay (a terminal failure is a :class:`TerminalError`)."""
    codec = turn.activation.runtime.codec
    assert row.value is not None
    type_name, message, _text, *more = codec.decode(row.value)
    if more and more[0]:
        plain = type_name == TerminalError.__qualname__
        return TerminalError(message if plain else f"{type_name}: {message}")
    return StepFailedError(
        f"{turn.describe()}: step {row.n} ({row.kind} {row.name!r}) failed after "
        f"{row.attempts} attempt(s): {type_name}: {message}",
        step=row.name,
        number=row.n,
        error_type=type_name,
        error_message=message,
        attempts=row.attempts,
    )


def new_random(rng: random.Random | None = None) -> float:
    return random.random() if rng is None else rng.random()


def new_uuid(rng: random.Random | None = None) -> uuid.UUID:
    if rng is None:
        return uuid.uuid4()
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def current_durable(instance: Any, what: str) -> TurnState:
    """The durable-step state of the message handler of ``instance`` running now."""
    ctx = context.current_turn(instance, what)
    if ctx.turn is None:
        raise RuntimeError(
            f"{what} is available in message handlers only (not in on_create, on_wake or "
            "on_hibernate, which have no message to journal against)"
        )
    turn: TurnState = ctx.turn
    return turn
