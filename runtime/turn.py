"""One turn: a batch of an actor's messages applied in one ``data.db`` transaction.

This is the commit point (docs/explanation/turns.md, "A turn is one transaction"). :class:`Batch`
takes the queued messages in seq order, runs up to ``MAX_BATCH`` of them in one transaction (a
savepoint each but the first), and commits, with the user's writes, ``applied_seq``, the senders'
cursors, the outbox rows and stored results. Replies are released only after that commit (and, for a
durable type with a replica, once the commit is in the replica). A handler that raises rolls back
its savepoint; the message is retried with backoff (blocking the actor's later messages, to keep
per-sender order) and then dead-lettered (:func:`fail`).

Messages read back from ``mailbox.db`` at wake-up (rather than appended by this process) may have
been running when a previous process died. They run one per transaction, and each start is
counted durably first, so that a message that kills the process every time (a segfault in a
library, an out-of-memory kill) is dead-lettered after ``Retry.max_crashes`` deaths instead of
taking the runtime down forever.

``on_create`` (:func:`create`) and the ``on_wake``/``on_hibernate`` hooks (:func:`run_hook`) run
in transactions of their own. The actor is seen through :class:`TurnActor`; the
loop that calls these is ``runtime/activation.py``'s.
"""

from __future__ import annotations

import collections
import traceback
from typing import Any, Protocol

import anyio
import apsw

from . import context
from .errors import (
    ActorStoppedError,
    CorruptFileError,
    DecodingError,
    EncodingError,
    IdempotencyKeyReusedError,
    InvalidArgumentsError,
    MessageFailedError,
    MessageTooLargeError,
    NondeterminismError,
    RuntimeClosedError,
    RuntimeInternalError,
    StepFailedError,
    StoredError,
    TerminalError,
    TurnCancelledError,
    UnknownHandlerError,
    WaitTimeoutError,
)
from .files.datastore import KV, Sql
from .files.mailbox import Message
from .files.runstore import RUN_KEY_PREFIX
from .host import ActorHost, Waiter
from .outbox import Outbox
from .replica.shipper import ReplicatedActor
from .spec import HandlerSpec
from .steps import Interrupted, SplitBatch, Suspended, TurnState

#: Messages applied in one ``data.db`` transaction at most (group commit: docs/benchmarks.md).
MAX_BATCH = 128

#: Sender of the durable notice a parent gets when a child is stopped.
CHILD_SENDER = "child:"

#: Failures that cannot succeed on a retry: dead-letter at once.
#: A step's journaled failure (or a wait's timeout) is raised again by every replay; a
#: ``self.start`` whose id names a run of other arguments names it on every attempt, and a
#: ``self.send`` (``ask``, ``start``, ...) whose arguments the handler refuses is refused again.
_DETERMINISTIC = (
    DecodingError,
    IdempotencyKeyReusedError,
    InvalidArgumentsError,
    UnknownHandlerError,
    EncodingError,
    MessageTooLargeError,
    TurnCancelledError,
    StepFailedError,
    WaitTimeoutError,
)

#: A message that failed in this batch, and why.
Failure = tuple[Message, BaseException]


class TurnActor(ActorHost, ReplicatedActor, Protocol):
    """An awake actor, as ``runtime/turn.py`` sees it while applying a batch of its messages."""

    aid: str
    init: bytes | None
    sql: Sql
    kv: KV
    queue: collections.deque[Message]
    waiters: dict[int, Waiter]
    applied_seq: int
    applied_marks: collections.deque[tuple[int, int]]
    batch_limit: int
    turn: TurnState | None
    suspended_seq: int | None
    closing: bool
    failure_times: collections.deque[float]
    outbox: Outbox
    published: bool
    published_deleted: int
    created: anyio.Event
    settled: anyio.Event
    work: anyio.Event

    def record_wake_latency(self) -> None: ...

    def stop_failed(self, error: BaseException) -> None: ...

    def give_up(self, error: BaseException, stopped: ActorStoppedError) -> None: ...


class TransactionLostError(RuntimeError):
    """A handler's statement ended the turn's transaction (``INSERT OR ROLLBACK``, a trigger's
    ``RAISE(ROLLBACK)``). Everything the turn wrote was rolled back; the message is retried."""


class Batch:
    """The messages at the head of an actor's queue, applied in one transaction.

    ``done`` collects ``(message, reply)`` as each handler returns (``reply`` ``None`` for a
    message found applied already); ``failure`` is the message that failed and stops the batch
    (its retry or dead-lettering happens after the commit of the others); ``stop`` a replay that
    diverged from its journal (the actor stops).
    """

    def __init__(self, act: TurnActor) -> None:
        self.act = act
        self.messages = _take(act)
        self.done: list[tuple[Message, bytes | None]] = []
        self.failure: Failure | None = None
        self.stop: BaseException | None = None

    async def run(self) -> None:
        act = self.act
        rt = act.runtime
        data = act.data
        first = self.messages[0]
        act.record_wake_latency()
        if first.recovered or first.cancelled is not None:
            doomed = self._doomed(first)
            if doomed is not None:
                await fail(act, *doomed)
                return
        data.begin()
        try:
            deletable = act.outbox.deletable()
            if deletable > act.outbox.deleted_upto:
                data.delete_outbox(deletable)
                act.outbox.deleted_upto = deletable
            if act.published_deleted < act.stream.relayed:  # relayed to the stream
                act.published_deleted = act.stream.relayed
                data.delete_published(act.published_deleted)
            for message in self.messages:
                if not await self._apply(message):
                    break
            self._commit()
        except BaseException:
            data.rollback()
            if rt.closing.is_set() and not rt.crashed:
                act.mailbox.reset_start(first.seq)  # cut short by a graceful close, not a death
            raise
        if self.done:
            if rt.crash_hook is not None:  # (only tests set one: no name built per turn)
                rt.crash_point("after commit", None, self.done[-1][0].seq, act.describe())
            if act.spec.durable and rt.replication is not None:
                await rt.replication.wait_replicated(act)  # the output gate
            self._release()
        if self.stop is not None:
            stop_nondeterministic(act, self.stop)
        elif self.failure is not None:
            await fail(act, *self.failure)

    def _doomed(self, first: Message) -> tuple[Message, BaseException | None] | None:
        """A first message that fails without running: copied to the dead letters just before a
        crash, started too many times by processes that died, or cancelled."""
        act = self.act
        if first.recovered:
            if first.dead_lettered:  # copied to dead letters just before a crash: finish
                return (first, None)
            first.started = act.mailbox.record_start(first.seq)
            if first.started > act.spec.retry_for(first.method).max_crashes:
                return (first, _ProcessDied(first.started - 1))
        if first.cancelled is not None:
            return (first, _cancelled(first))
        return None

    def _other_handler(self, message: Message) -> HandlerSpec | None:
        """The handler of a message that names no handler of the type: the runtime's own
        ``on_child_failed`` from a child or ``on_run_done`` from a run (only the runtime writes
        such rows: neither is a handler a caller can name), else none (a query is no handler
        either)."""
        if message.method == "on_child_failed" and (message.sender or "").startswith(CHILD_SENDER):
            return self.act.spec.on_child_failed
        if message.method == "on_run_done" and message.sender is not None:
            return self.act.spec.on_run_done
        return None

    async def _apply(self, message: Message) -> bool:
        """Run one message's handler in the open transaction; whether the batch goes on."""
        act = self.act
        data = act.data
        if applied_before(act, message):
            self.done.append((message, None))  # delivered again: not applied twice
            return True
        handler = act.spec.handlers.get(message.method)
        if handler is None or handler.is_query:
            handler = self._other_handler(message)
        if handler is None:
            self.failure = (
                message,
                UnknownHandlerError(
                    f"stored message {message.seq} names {message.method!r}, which is not a "
                    f"handler of {act.spec.name} (was it renamed or removed?)"
                ),
            )
            return False
        if message.cancelled is not None:
            return False  # it runs first in the next batch, where it is dead-lettered
        # The first message needs no savepoint: if it fails, the whole (so far empty)
        # transaction rolls back. Most batches hold one message, so this saves two statements
        # per turn.
        nested = bool(self.done)
        if nested:
            data.savepoint()
        ctx = context.HandlerContext(act, context.TURN, message, act.sql, act.kv)
        turn = ctx.turn = act.turn = TurnState(act, message, not nested)
        token = context.CURRENT.set(ctx)
        try:
            reply = await self._call(handler, message, turn)
        except SplitBatch:
            # A batched message made its first durable call: commit the ones before it; it
            # runs again first in a transaction of its own.
            data.rollback_to_savepoint()
            act.batch_limit = 1
            return False
        except Suspended:
            data.rollback()  # (only a batch's first message makes durable calls)
            act.mailbox.reset_start(message.seq)
            # Only a turn parked in a journaled wait may sleep until the wait ends; one cut
            # short elsewhere by a close (inside a step, an ask) stays pending, and the next
            # open runs it again at once.
            act.suspended_seq = message.seq if turn.parked else None
            act.timers_changed = True
            return False
        except Interrupted:
            self.failure = self._interrupted(message, nested)
            return False
        except NondeterminismError as exc:
            data.rollback()
            self.stop = exc
            return False
        except Exception as exc:
            self._raised(message, nested, turn, exc)
            return False
        finally:
            ctx.active = False
            act.turn = None
            context.CURRENT.reset(token)
        if not data.in_transaction:
            self.failure = self._lost_at(message, None)
            return False
        if nested:
            data.release()
        if message.idempotency_key is not None:
            data.store_result(message.seq, message.idempotency_key, True, reply)
            if message.idempotency_key.startswith(RUN_KEY_PREFIX):
                act.runtime.runs.finished(act, message, "done", reply)
        self.done.append((message, reply))
        return True

    async def _call(self, handler: HandlerSpec, message: Message, turn: TurnState) -> bytes:
        """The handler's encoded reply (control flow raised in its task groups unwrapped)."""
        act = self.act
        codec = act.runtime.codec
        args, kwargs = codec.decode(message.payload)
        try:
            result = await handler.fn(act.instance, *args, **kwargs)
        except BaseExceptionGroup as group:
            control = _control_flow(group)
            if control is None:
                raise
            raise control from None
        if turn.interrupt is not None:
            raise Interrupted
        if turn.broken is not None:
            raise turn.broken  # the handler swallowed a NondeterminismError
        reply = codec.encode(result)
        limit = act.runtime.max_message_bytes
        if len(reply) > limit:
            raise MessageTooLargeError(
                f"the reply of {act.spec.name}.{handler.name} is {len(reply)} bytes, over "
                f"max_message_bytes={limit}"
            )
        return reply

    def _raised(self, message: Message, nested: bool, turn: TurnState, exc: Exception) -> None:
        """The handler raised: roll back what it wrote and note why the batch stops."""
        data = self.act.data
        if isinstance(exc, apsw.CorruptError | apsw.NotADBError):
            # Not the message's fault: stop the actor (its messages are kept); with a replica,
            # the next wake-up restores the files.
            data.rollback()
            mailbox = self.act.mailbox
            bad = mailbox.path if mailbox.found_corrupt is exc else data.path
            raise CorruptFileError(
                f"{self.act.describe()}: {bad.name}: {exc}; its messages are kept",
                path=str(bad),
            ) from exc
        if turn.interrupt is not None:  # cancelled inside a step or a wait
            self.failure = self._interrupted(message, nested)
        elif turn.broken is not None:
            data.rollback()
            self.stop = turn.broken
        elif not data.in_transaction:
            self.failure = self._lost_at(message, exc)
        else:
            if nested:
                data.rollback_to_savepoint()
            else:
                data.rollback()
            self.failure = (message, exc)

    def _interrupted(self, message: Message, nested: bool) -> Failure | None:
        """A turn cancelled or restarted through the API: roll it back (only it: messages
        before it in the batch still commit). A first message that was cancelled fails now;
        otherwise the message runs first in the next batch (dead-lettered there if cancelled)."""
        act = self.act
        if nested:
            act.data.rollback_to_savepoint()
            act.batch_limit = 1
            return None
        act.data.rollback()
        if message.cancelled is not None:
            return (message, _cancelled(message))
        act.batch_limit = 1
        return None

    def _lost_at(self, message: Message, cause: BaseException | None) -> Failure | None:
        """A handler ended the transaction, and with it every message of the batch. The
        culprit's failure counts only once it runs at the head of the queue; before that, the
        messages ahead of it commit on their own."""
        done, self.done = self.done, []
        if done:
            self.act.batch_limit = len(done)
            return None
        return (message, _lost(cause))

    def _commit(self) -> None:
        act = self.act
        data = act.data
        if not data.in_transaction:
            return
        done = self.done
        if done:
            cursors = {
                m.sender: m.sender_seq
                for m, _ in done
                if m.sender is not None and m.sender_seq is not None
            }
            if cursors:
                data.advance_senders(cursors)
            data.set_applied(done[-1][0].seq)
            if act.runtime.crash_hook is not None:
                act.runtime.crash_point("before commit", None, done[-1][0].seq, act.describe())
        data.commit()

    def _release(self) -> None:
        """After the commit and the output gate: the applied messages leave the queue and
        their askers get their replies."""
        act = self.act
        counters = act.runtime.counters
        done = self.done
        queue = act.queue
        waiters = act.waiters
        act.applied_seq = done[-1][0].seq
        for message, answer in done:
            queue.popleft()
            waiter = waiters.pop(message.seq, None)
            if waiter is None:
                continue
            if answer is None:  # a duplicate: the first application's outcome
                fill_from_store(act, waiter, message.seq)
            else:
                waiter.set_result(answer)
        if act.replica.files:
            act.applied_marks.append((act.replica.files[0].commits, act.applied_seq))
        counters.turns += 1
        counters.applied += len(done)


def _take(act: TurnActor) -> list[Message]:
    """The next batch: a message recovered from a died process alone, else up to the limit."""
    queue = act.queue
    if queue[0].recovered:
        return [queue[0]]
    limit, act.batch_limit = act.batch_limit, MAX_BATCH
    batch: list[Message] = []
    for message in queue:
        if len(batch) == limit or message.recovered:
            break
        batch.append(message)
    return batch


async def backed_off(act: TurnActor, head: Message) -> bool:
    """Whether the message at the head of the queue, in backoff after a failed attempt (in
    this process, or before a crash: its time is in the inbox), may run now. If not, wait
    until it may, or until the turn loop has something else to do (a cancel, a close, a due
    timer, a new message: they set ``work``); the loop then calls this again, and the rest of
    the delay is waited then (or, after a close, at the next open)."""
    delay = 0.0
    if head.retry_at is not None and not head.dead_lettered and head.cancelled is None:
        delay = head.retry_at - act.runtime.clock()
    if delay <= 0:
        head.retry_at = None
        return True
    act.work = anyio.Event()
    with anyio.move_on_after(delay) as waited:
        await act.work.wait()
    if waited.cancelled_caught:  # the delay is over (by the loop's clock: it paces waits)
        head.retry_at = None
        return True
    return False


def applied_before(act: TurnActor, message: Message) -> bool:
    """Whether ``message`` was applied already under another mailbox seq: a delivery from a
    sender at or below its cursor in ``data.db``, or a call whose idempotency key ``data.db``
    holds an outcome for (the mailbox, restored behind ``data.db`` or lost, accepted it again).
    Its outcome is copied to its own seq for whoever waits on it."""
    data = act.data
    if (
        message.sender is not None
        and message.sender_seq is not None
        and message.sender_seq <= data.sender_cursor(message.sender)
    ):
        return True
    if message.idempotency_key is not None:
        stored = data.result_by_key(message.idempotency_key)
        if stored is not None:
            data.store_result(message.seq, message.idempotency_key, stored[0], stored[1])
            return True
    return False


def fill_from_store(act: TurnActor, waiter: Waiter, seq: int) -> None:
    """Answer ``waiter`` with the stored outcome of applied message ``seq``."""
    stored = act.data.result(seq)
    if stored is None:
        waiter.set_error(RuntimeInternalError(f"no stored result for applied message {seq}"))
    elif stored[0]:
        waiter.set_result(stored[1])
    else:
        type_name, message, tb, attempts, *more = act.runtime.codec.decode(stored[1])
        reason = more[0] if more else "exhausted"
        error = MessageFailedError(
            f"{act.describe()} failed message {seq} after {attempts} attempts ({reason}): "
            f"{type_name}: {message}",
            seq=seq,
            attempts=attempts,
            reason=reason,
        )
        error.__cause__ = StoredError(type_name, message, tb)
        waiter.set_error(error)


async def fail(act: TurnActor, message: Message, error: BaseException | None) -> None:
    """Handle a failed attempt of the message at the head of the queue: retry it after the
    type's backoff, or dead-letter it (at once for a failure that cannot succeed on a retry,
    and for a :class:`TerminalError`, which does not count toward the restart intensity).

    ``error`` is ``None`` for a message already copied to the dead letters before a crash.
    """
    rt = act.runtime
    if isinstance(error, RuntimeClosedError) and rt.closing.is_set():
        return  # not the message's fault: it stays queued and runs at the next open
    reason = failure_reason(error)
    if error is not None:
        policy = act.spec.retry_for(message.method)

        def retry_at(attempts: int) -> float | None:
            if reason != "exhausted" or policy.exhausted(attempts):
                return None
            return rt.clock() + policy.delay(attempts)

        # The next attempt's time is durable with the count: a crash does not reset the
        # backoff (the turn loop waits it out: backed_off).
        message.attempts, message.retry_at = act.mailbox.record_failure(message.seq, retry_at)
        if reason not in ("terminal", "cancelled") and intensity_exceeded(act, error):
            return
        if message.retry_at is not None:
            rt.counters.retries += 1
            return
    # Dead-letter: keep a copy first, then advance applied_seq past it (in that order; a crash
    # in between is finished by the next wake, which sees the copy and skips the run).
    act.mailbox.dead_letter(message, error, reason)
    data = act.data
    data.begin()
    try:
        if message.sender is not None and message.sender_seq is not None:
            data.advance_senders({message.sender: message.sender_seq})
        data.set_applied(message.seq)
        if message.idempotency_key is not None:
            info = _error_info(error, message, reason)
            data.store_result(message.seq, message.idempotency_key, False, rt.codec.encode(info))
            if message.idempotency_key.startswith(RUN_KEY_PREFIX):  # a run ends in failure
                status = "cancelled" if isinstance(error, TurnCancelledError) else "failed"
                rt.runs.finished(act, message, status, rt.codec.encode(info[:3]))
        data.commit()
    except BaseException:
        data.rollback()
        raise
    act.queue.popleft()
    act.applied_seq = message.seq
    rt.counters.dead_letters += 1
    waiter = act.waiters.pop(message.seq, None)
    if waiter is not None:
        how = "terminally" if reason == "terminal" else f"after {message.attempts} attempt(s)"
        failed = MessageFailedError(
            f"{act.spec.name}.{message.method} failed {how} on {act.key!r} and was "
            f"dead-lettered: {error!r}",
            seq=message.seq,
            attempts=message.attempts,
            reason=reason,
        )
        failed.__cause__ = error
        waiter.set_error(failed)


def failure_reason(error: BaseException | None) -> str:
    """Why a failed message would be dead-lettered now (a :class:`DeadLetter`'s ``reason``);
    ``"exhausted"`` for an ordinary failure, which is retried while its policy allows."""
    if error is None:
        return "unknown"  # (copied to the dead letters, with its reason, before a crash)
    if isinstance(error, TerminalError):
        return "terminal"
    if isinstance(error, BaseExceptionGroup) and error.split(TerminalError)[1] is None:
        return "terminal"  # (raised in the handler's task group, every one of them terminal)
    if isinstance(error, TurnCancelledError):
        return "cancelled"
    if isinstance(error, _ProcessDied):
        return "crashed"
    if isinstance(error, _DETERMINISTIC):
        return "not_retryable"
    return "exhausted"


def intensity_exceeded(act: TurnActor, error: BaseException) -> bool:
    """Count a failed turn; past the type's restart intensity, stop the actor (its messages,
    this one included, stay in the mailbox)."""
    policy = act.spec.restart_intensity
    now = act.runtime.clock.loop()
    times = act.failure_times
    times.append(now)
    while times and times[0] < now - policy.period:
        times.popleft()
    if len(times) <= policy.max_failures:
        return False
    stopped = ActorStoppedError(
        f"{act.describe()} failed {len(times)} turns within {policy.period:g} s (restart "
        f"intensity {policy.max_failures}) and was stopped; its messages are kept until "
        "Runtime.resume"
    )
    stopped.__cause__ = error
    act.give_up(error, stopped)
    return True


def stop_nondeterministic(act: TurnActor, error: BaseException) -> None:
    """A replay diverged from its journal: retrying cannot help until the code changes. Stop
    the actor (its messages and journals stay) until ``Runtime.resume``."""
    stopped = ActorStoppedError(
        f"{act.describe()} was stopped: {error}; its messages and journals are kept until "
        "Runtime.resume"
    )
    stopped.__cause__ = error
    act.give_up(error, stopped)


async def create(act: TurnActor) -> None:
    """Run ``on_create`` once, as the actor's first turn, retrying per the type's policy."""
    rt = act.runtime
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    if act.init is not None:
        args, kwargs = rt.codec.decode(act.init)
    attempt = 0
    while True:
        attempt += 1
        act.data.begin()
        ctx = context.HandlerContext(act, context.TURN, None, act.sql, act.kv)
        token = context.CURRENT.set(ctx)
        try:
            await act.spec.on_create.fn(act.instance, *args, **kwargs)
            if not act.data.in_transaction:
                raise _lost(None)
            act.data.set_created()
            act.data.commit()
            break
        except Exception as exc:
            act.data.rollback()
            if isinstance(exc, RuntimeClosedError) and rt.closing.is_set():
                return  # not on_create's fault: it runs again at the next open
            if isinstance(exc, TerminalError):
                act.stop_failed(exc)  # final: no retry, and not the actor's ill health
                return
            if intensity_exceeded(act, exc):
                return
            if act.spec.retry.exhausted(attempt):
                act.stop_failed(exc)
                return
            rt.counters.retries += 1
            with anyio.move_on_after(act.spec.retry.delay(attempt)):
                await rt.closing.wait()
            if act.closing:
                return
        except BaseException:
            act.data.rollback()
            raise
        finally:
            ctx.active = False
            context.CURRENT.reset(token)
    if act.init is not None:
        rt.directory.clear_init(act.aid)
    act.created.set()
    act.settled.set()


async def run_hook(act: TurnActor, name: str) -> None:
    """Run ``on_wake`` or ``on_hibernate`` in a transaction of its own.

    A hook that raises is rolled back and reported; it does not stop the actor.
    """
    data = act.data
    data.begin()
    ctx = context.HandlerContext(act, context.TURN, None, act.sql, act.kv)
    token = context.CURRENT.set(ctx)
    try:
        await getattr(act.instance, name)()
        if data.in_transaction:
            data.commit()
    except Exception as exc:
        data.rollback()
        act.runtime.report(f"{act.describe()}: {name} raised {exc!r}")
    except BaseException:
        data.rollback()
        raise
    finally:
        ctx.active = False
        context.CURRENT.reset(token)


class _ProcessDied(Exception):
    """The process died while this message ran, too many times (see ``Retry.max_crashes``)."""

    def __init__(self, deaths: int) -> None:
        super().__init__(
            f"the process died at least {deaths} time(s) while this message was running; it "
            "was dead-lettered so that the actor can go on"
        )


def _lost(cause: BaseException | None) -> TransactionLostError:
    error = TransactionLostError(
        "a statement in the handler ended the turn's transaction (INSERT OR ROLLBACK, or a "
        "trigger's RAISE(ROLLBACK)); the turn was rolled back and the message will be retried. "
        "Use OR ABORT / OR IGNORE, or RAISE(ABORT), inside handlers"
    )
    error.__cause__ = cause
    return error


def _control_flow(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The runtime's own control flow (a durable wait suspended, a batch split, an interrupt)
    raised inside a task group of the handler, which wraps it in an exception group."""
    for kind in (Suspended, Interrupted, SplitBatch, NondeterminismError):
        found, _rest = group.split(kind)
        if found is not None:
            first: BaseException = found
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            return first
    return None


def _cancelled(message: Message) -> TurnCancelledError:
    return TurnCancelledError(
        f"message {message.seq} ({message.method}) was cancelled: {message.cancelled}"
    )


def _error_info(error: BaseException | None, message: Message, reason: str) -> list[Any]:
    if error is None:
        return ["DeadLetter", "dead-lettered before a crash", "", message.attempts, reason]
    text = "".join(traceback.format_exception(error))
    return [type(error).__qualname__, str(error), text, message.attempts, reason]
