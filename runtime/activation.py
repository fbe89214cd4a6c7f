"""An awake actor: its open files, its live object, its queue, and its turn loop.

The turn loop is the heart of DESIGN §4. It takes the queued messages in seq order, runs up to
``MAX_BATCH`` of them in one ``data.db`` transaction (a savepoint each), and commits, with the
user's writes, ``applied_seq``, the outbox rows and stored results. Replies and outbox deliveries
are released only after that commit. A handler that raises rolls back its savepoint; the message
is retried with backoff (blocking the actor's later messages, to keep per-sender order) and then
dead-lettered.

Messages read back from ``mailbox.db`` at wake-up (rather than appended by this process) may have
been running when a previous process died. They run one per transaction, and each start is
counted durably first, so that a message that kills the process every time (a segfault in a
library, an out-of-memory kill) is dead-lettered after ``Retry.max_crashes`` deaths instead of
taking the runtime down forever.
"""

from __future__ import annotations

import collections
import time
import traceback
from typing import TYPE_CHECKING, Any

import anyio
import apsw

from . import context
from .errors import (
    ActorError,
    ActorFailedError,
    ActorStoppedError,
    CorruptFileError,
    DecodingError,
    EncodingError,
    MessageFailedError,
    MessageTooLargeError,
    NondeterminismError,
    NotLocalError,
    RuntimeClosedError,
    RuntimeInternalError,
    SchemaError,
    StepFailedError,
    StorageError,
    StoredError,
    TurnCancelledError,
    UnknownHandlerError,
    WaitTimeoutError,
)
from .files import db
from .files.datastore import KV, DataStore, Sql, read_only_authorizer
from .files.datastore import image as data_image
from .files.layout import DATA_FILE, MAILBOX_FILE, actor_dir, make_actor_dir
from .files.mailbox import Mailbox, Message
from .files.mailbox import image as mailbox_image
from .host import RuntimeHost, Waiter
from .lifecycle import State
from .steps import Interrupted, SplitBatch, Suspended, TurnState

if TYPE_CHECKING:
    from .ref import Ref
    from .spec import TypeSpec

#: Messages applied in one ``data.db`` transaction at most (group commit, DESIGN §8).
MAX_BATCH = 128
#: Messages loaded from ``mailbox.db`` at a time when catching up on a backlog.
LOAD_CHUNK = 512
#: Messages held in memory per actor at most; beyond, they wait in ``mailbox.db`` only.
QUEUE_CAP = 1024
#: Applied inbox rows are deleted in batches of this many (DESIGN §8: batch the cleanup).
CLEANUP_EVERY = 256
#: Backoff bounds for retrying an outbox delivery that failed (target unopenable, EMFILE).
OUTBOX_RETRY_MIN = 0.05
OUTBOX_RETRY_MAX = 30.0

#: Sender of the durable notice a parent gets when a child is stopped.
CHILD_SENDER = "child:"

#: Failures that cannot succeed on a retry: dead-letter at once.
#: A step's journaled failure (or a wait's timeout) is raised again by every replay.
_DETERMINISTIC = (
    DecodingError,
    UnknownHandlerError,
    EncodingError,
    MessageTooLargeError,
    TurnCancelledError,
    StepFailedError,
    WaitTimeoutError,
)


class TransactionLostError(RuntimeError):
    """A handler's statement ended the turn's transaction (``INSERT OR ROLLBACK``, a trigger's
    ``RAISE(ROLLBACK)``). Everything the turn wrote was rolled back; the message is retried."""


class Activation:
    def __init__(
        self,
        runtime: RuntimeHost,
        spec: TypeSpec,
        key: str,
        aid: str,
        ref: Ref[Any],
        init: bytes | None,
    ) -> None:
        self.runtime = runtime
        self.spec = spec
        self.key = key
        self.aid = aid
        self.ref = ref
        self.init = init
        self.queue: collections.deque[Message] = collections.deque()
        self.backlog = True  # unapplied messages may exist in mailbox.db beyond the queue
        self.loaded_upto = 0
        self.recovered_upto = 0  # messages at or below this seq were in the file at wake-up
        self.applied_seq = 0
        self.cleaned_upto = 0
        self.outbox_delivered_upto = 0
        self.outbox_deleted_upto = 0
        # With a replica: delivered rows wait here until their delivery is in the replica.
        self.outbox_tokens: collections.deque[tuple[int, Any]] = collections.deque()
        self.outbox_safe_upto = 0
        # With a replica: (data.db commits, applied seq) after each turn's commit, and the
        # last applied message known to be in the replica.
        self.applied_marks: collections.deque[tuple[int, int]] = collections.deque()
        self.replicated_applied = 0
        self.outbox_dirty = True  # rows may wait in the outbox (true at wake: recovery)
        self.outbox_retry_delay = 0.0
        # With a replica, the output gate: a row leaves only once the commit that wrote it is
        # in the replica (else a machine lost could restore this actor before a send whose
        # effects its receiver kept). (data.db commits, last row id) as rows are seen, the
        # last row that may go, and whether rows wait for the replica now.
        self.outbox_marks: collections.deque[tuple[int, int]] = collections.deque()
        self.outbox_gate_upto = 0
        self.outbox_gated = False
        self.batch_limit = MAX_BATCH
        self.waiters: dict[int, Waiter] = {}
        self.work = anyio.Event()
        self.created = anyio.Event()
        self.settled = anyio.Event()  # set once created, or once it can no longer be
        self.stopped = anyio.Event()
        self.scope = anyio.CancelScope()
        self.failed: BaseException | None = None
        self.closing = False  # the loop ends after the current batch (runtime closing)
        self.hibernating = False  # ... and runs on_hibernate first
        self.state = State.WAKING
        self.opened = anyio.Event()  # set once open() succeeded or failed
        self.open_error: BaseException | None = None
        self.closed = anyio.Event()  # set once the files are closed again
        self.waiting = False  # the loop waits for work
        self.files_open = False
        self.preparing = False  # its files are being claimed or restored from the replica
        self.restored = False  # its files were just restored from the replica
        self.queries = 0  # @query handlers running now
        self.wake_started: float | None = None
        self.wake_hint: float | None = None  # directory.db's wake_at for this actor, as written
        self.timers_due = False  # the supervisor saw a timer due: fire it before more work
        self.failure_times: collections.deque[float] = collections.deque()
        self.gave_up: BaseException | None = None  # restart intensity exceeded: stop
        self.timers_changed = False  # a turn set or cancelled timers: rewrite the hint
        self._reader: Any = None
        self.turn: TurnState | None = None  # the durable state of the message running now
        self.suspended_seq: int | None = None  # a turn rolled back in a journaled wait
        self.arrivals: dict[str, anyio.Event] = {}  # event name -> set when one arrives
        # Replication (runtime/replica/shipper.py): the tracked files, and what waking or
        # hibernating hands over.
        self.replication_due = False  # a snapshot or checkpoint waits for a gap between turns
        self.replica_files: list[Any] = []
        self.replica_plan: Any = None
        self.replica_saved: Any = None
        self.clear_pending_when_shipped = False

    # -- opening and closing ---------------------------------------------------------------

    def open(self, *, data_may_be_missing: bool = False) -> None:
        """Open its files (creating them for a new actor). A ``data.db`` that was created
        and is gone is a :class:`CorruptFileError`, not a new actor, unless
        ``data_may_be_missing`` (the replica was just asked for it and had none)."""
        rt = self.runtime
        folder = actor_dir(rt.root, self.aid)
        try:
            make_actor_dir(folder)
        except OSError as exc:
            from .errors import StorageError

            raise StorageError(f"cannot create {folder}: {exc!r}", path=str(folder)) from exc
        self.mailbox = Mailbox(
            folder / MAILBOX_FILE,
            synchronous=rt.synchronous,
            type_name=self.spec.name,
            key=self.key,
            image=mailbox_image,
            known_sound=rt.sound_mailboxes,
        )
        try:
            data_path = folder / DATA_FILE
            data_known = self.mailbox.data_was_created()
            if data_known and not data_may_be_missing and not data_path.exists():
                raise CorruptFileError(
                    f"{self.describe()}: {data_path} is missing, though the actor's state was "
                    "created there; restore it from a replica or backup (its messages are kept)",
                    path=str(data_path),
                )
            self.data = DataStore(
                data_path,
                synchronous=rt.synchronous,
                type_name=self.spec.name,
                key=self.key,
                image=data_image,
            )
            try:
                self.sql = Sql(self.data.conn)
                self.kv = KV(self.data, self.data.conn, rt.codec)
                if self.spec.migrations:
                    try:
                        self.data.run_user_migrations(
                            self.spec.migrations, self.sql, f"{self.spec.name} {self.key!r}"
                        )
                    except SchemaError:
                        raise
                    except Exception as exc:
                        raise SchemaError(
                            f"a migration of {self.spec.name} failed on {self.key!r}: {exc!r}; "
                            "nothing was changed"
                        ) from exc
                self.mailbox.ensure_seq_above(self.data.applied_seq)
                if not data_known:
                    self.mailbox.note_data_created()
                self.instance = self._instantiate()
            except BaseException:
                self.data.close()
                raise
        except BaseException:
            self.mailbox.close()
            raise
        self.files_open = True
        # Askers of messages not applied yet, kept by the runtime while the actor hibernated.
        self.waiters.update(rt.parked_waiters.pop(self.aid, {}))
        self.applied_seq = self.loaded_upto = self.cleaned_upto = self.data.applied_seq
        #: Who its outbox rows come from, for the receivers' cursors.
        incarnation = self.data.incarnation
        self.sender_id = _sender_id(self.aid, incarnation)
        self.earlier_sender_id = _sender_id(self.aid, incarnation - 1)
        self.incarnation_from = self.data.incarnation_from
        self.applied_marks.append((0, self.applied_seq))  # in the replica once attached
        last = db.scalar(self.mailbox.conn, "SELECT max(seq) FROM inbox")
        self.recovered_upto = int(last) if last is not None else 0
        if self.data.created:
            self.created.set()
            self.settled.set()

    def _instantiate(self) -> Any:
        cls = self.spec.cls
        instance: Any = object.__new__(cls)
        instance._torpor_key = self.key
        instance._torpor_ref = self.ref
        instance.__init__()
        return instance

    def reader(self) -> Any:
        """A read-only connection for ``@query`` handlers, opened on first use."""
        if self._reader is None:
            reader = db.connect(
                self.data.path, synchronous=self.runtime.synchronous, query_only=True, private=True
            )
            reader.authorizer = read_only_authorizer
            self._reader = reader
        return self._reader

    def close_files(self) -> None:
        """Tidy the files and close every connection, on this thread. The loop has ended."""
        try:
            self.tidy()
        finally:
            self.close_connections()

    def close_connections(self) -> None:
        """Close every connection (closing the last one to a WAL file checkpoints it)."""
        self.files_open = False
        if self._reader is not None:
            self._reader.close()
        self.data.close()
        self.mailbox.close()

    def describe(self) -> str:
        return f"{self.spec.name} {self.key!r}"

    def tidy(self) -> None:
        """The batched cleanup, the pending hint, the waiters. Sync; the loop has ended."""
        try:
            if not self.data.in_transaction and not self.runtime.crashed:
                self._cleanup(force=True)
                if (
                    not self.queue
                    and not self.backlog
                    and not self.outbox_dirty
                    and self.failed is None
                ):
                    self._clear_pending()
                elif (
                    self.suspended_seq is not None
                    and self.queue
                    and self.queue[0].seq == self.suspended_seq
                    and not self.outbox_dirty
                    and self.failed is None
                ):
                    # Nothing can run before its durable wait ends: the wake-up hint (the
                    # wait's deadline) or an event wakes it, not every reopening of the runtime.
                    self._rewrite_wake_hint()
                    self._clear_pending()
                if self.outbox_dirty and self.failed is None and not self.runtime.closing.is_set():
                    # Rows its targets could not take yet (being restored, the store down):
                    # it stays pending, and is woken again to deliver them.
                    delay = max(self.outbox_retry_delay, OUTBOX_RETRY_MIN)
                    self.wait_changed(self.runtime.clock() + delay)
        finally:
            self._park_waiters()

    def _clear_pending(self) -> None:
        """Nothing left to run: clear the directory's pending mark, unless commits of its files
        are not in the replica yet (then the mark stays until hibernation has shipped them:
        a process killed meanwhile leaves it pending, so the next one wakes it and ships them)."""
        if self.replica_files and any(
            t.commits > t.acked or t.capture is not None for t in self.replica_files
        ):
            self.clear_pending_when_shipped = True
            return
        self.runtime.directory.clear_pending(self.aid)

    def _park_waiters(self) -> None:
        """Closing: askers keep waiting while the actor hibernates (a turn in a durable wait
        resumes later), and fail only if the runtime closes or the actor cannot run."""
        rt = self.runtime
        if self.waiters and not rt.closing.is_set() and self.failed is None and not self.gave_up:
            rt.parked_waiters.setdefault(self.aid, {}).update(self.waiters)
            self.waiters.clear()
            return
        if self.gave_up is not None:
            self._fail_waiters(self.stopped_error())
            return
        self._fail_waiters(RuntimeClosedError("the runtime closed before this was applied"))

    def stopped_error(self) -> ActorStoppedError:
        """What an asker of a stopped actor gets (its message is kept)."""
        assert self.gave_up is not None
        error = ActorStoppedError(
            f"{self.spec.name} {self.key!r} was stopped ({self.gave_up}); its messages are "
            "kept until Runtime.resume"
        )
        error.__cause__ = self.gave_up
        return error

    def _fail_waiters(self, error: BaseException) -> None:
        for waiter in self.waiters.values():
            waiter.set_error(error)
        self.waiters.clear()

    # -- accepting messages ---------------------------------------------------------------

    def accept(self, message: Message) -> None:
        """A message was appended to ``mailbox.db``; queue it unless a backlog is unread."""
        if self.waiting:
            self.runtime._busy(self)
        if not self.backlog:
            if len(self.queue) < QUEUE_CAP:
                self.queue.append(message)
                self.loaded_upto = message.seq
            else:
                self.backlog = True  # read it back from the file when the queue drains
        self.work.set()

    def waiter(self, seq: int) -> Waiter:
        """The reply slot for message ``seq``, filled at once if it was applied already."""
        existing = self.waiters.get(seq)
        if existing is not None:
            return existing
        waiter = Waiter()
        if seq <= self.applied_seq:
            self._fill_from_store(waiter, seq)
            return waiter
        if self.gave_up is not None:  # stopped (fenced, or too many failures): nobody answers
            waiter.set_error(self.stopped_error())
            return waiter
        if self.failed is not None:
            failure = ActorFailedError(
                f"{self.spec.name} {self.key!r} cannot run turns; the message is kept"
            )
            failure.__cause__ = self.failed
            waiter.set_error(failure)
            return waiter
        self.waiters[seq] = waiter
        return waiter

    def _fill_from_store(self, waiter: Waiter, seq: int) -> None:
        """Answer ``waiter`` with the stored outcome of applied message ``seq``."""
        stored = self.data.result(seq)
        if stored is None:
            waiter.set_error(RuntimeInternalError(f"no stored result for applied message {seq}"))
        elif stored[0]:
            waiter.set_result(stored[1])
        else:
            type_name, message, tb, attempts = self.runtime.codec.decode(stored[1])
            error = MessageFailedError(
                f"{self.spec.name} {self.key!r} failed message {seq} after {attempts} "
                f"attempts: {type_name}: {message}",
                seq=seq,
                attempts=attempts,
            )
            error.__cause__ = StoredError(type_name, message, tb)
            waiter.set_error(error)

    def _applied_before(self, message: Message) -> bool:
        """Whether ``message`` was applied already under another mailbox seq: a delivery
        from a sender at or below its cursor in ``data.db``, or a call whose idempotency key
        ``data.db`` holds an outcome for (the mailbox, restored behind ``data.db`` or lost,
        accepted it again). Its outcome is copied to its own seq for whoever waits on it."""
        data = self.data
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

    # -- the turn loop --------------------------------------------------------------------

    async def run(self) -> None:
        try:
            with self.scope:
                await self._turn_loop()
        except ActorError as exc:  # e.g. a file found corrupt mid-turn
            self.runtime._report(f"{self.spec.name} {self.key!r} stopped: {exc!r}")
            self._stop_failed(exc)
        except (apsw.FullError, apsw.IOError) as exc:
            # Disk full (or failing, or a file-size limit): the transaction rolled back, the
            # message stays in the mailbox, and the next message wakes the actor to retry.
            full = StorageError(
                f"{self.spec.name} {self.key!r}: cannot write its files ({exc}): disk full or "
                "failing; nothing was applied, its messages are kept and run again at the next "
                "message once space is free",
                path=str(self.data.path),
            )
            full.__cause__ = exc
            self.runtime._report(str(full))
            self._stop_failed(full)
        except Exception as exc:
            # A bug in torpor: stop this actor (its messages stay), keep the others running.
            error = RuntimeInternalError(
                f"{self.spec.name} {self.key!r} stopped on an internal error: {exc!r}; please "
                "file a bug with this traceback"
            )
            error.__cause__ = exc
            self.runtime._report(str(error))
            self._stop_failed(error)
        finally:
            self.data.rollback()
            self.settled.set()
            self._park_waiters()
            self.stopped.set()

    def fail_from_outside(self, error: BaseException) -> None:
        """Stop the turn loop with ``error`` (a corrupt file found while snapshotting)."""
        if self.failed is None:
            self._stop_failed(error)
        self.closing = True
        self.work.set()

    def fence(self, error: BaseException) -> None:
        """Another runtime took this actor's replica over: stop, keep the files, report; its
        askers learn it at once (not when the turn loop ends)."""
        if self.gave_up is None:
            self.gave_up = error
        self.closing = True
        self.work.set()
        self._fail_waiters(self.stopped_error())

    def _stop_failed(self, error: BaseException) -> None:
        self.failed = error
        self.settled.set()
        failure = ActorFailedError(
            f"{self.spec.name} {self.key!r} cannot run turns; its messages are kept"
        )
        failure.__cause__ = error
        self._fail_waiters(failure)

    async def _turn_loop(self) -> None:
        rt = self.runtime
        if not self.created.is_set():
            await self._create()
            if self.failed is not None or self.closing:
                return
        if self.spec.has_on_wake:
            await self._hook("on_wake")
        due = self.data.next_due()
        if due is not None and due <= self.runtime.clock():
            self.timers_due = True
        while not self.closing and self.failed is None:
            if self.replication_due and rt.replication is not None:
                rt.replication.capture_due(self)
            if self.timers_due:
                self._fire_timers()
            if self.timers_changed:
                self._rewrite_wake_hint()
            if self.outbox_dirty and self.outbox_retry_delay == 0:
                await self._deliver_outbox()
            if not self.queue and self.backlog:
                self._load_more()
            if not self.queue:
                self._cleanup(force=False)
                self.work = anyio.Event()
                if self.closing:
                    break
                self._record_wake_latency()
                if self.timers_due or self.timers_changed:
                    continue
                self.waiting = True
                if self.is_idle():
                    self.runtime._idle(self)
                try:
                    if self.outbox_retry_delay:
                        with anyio.move_on_after(self.outbox_retry_delay):
                            await self.work.wait()
                        await self._deliver_outbox()
                    else:
                        await self.work.wait()
                finally:
                    self.waiting = False
                    self.runtime._busy(self)
                continue
            if (
                self.spec.durable
                and rt.replication is not None
                and self.replica_files
                and not self.replica_files[0].baseline_shipped
            ):
                # A durable actor's steps are keyed by its lineage, in data.db: that must be
                # in the replica before a call goes out, or a machine lost now would retry the
                # acknowledged message elsewhere under another key.
                await rt.replication.wait_baseline(self)
                if self.closing or self.failed is not None:
                    break
            await self._run_batch()
        if self.hibernating and self.failed is None and self.gave_up is None:
            if self.spec.has_on_hibernate:
                await self._hook("on_hibernate")
            if self.outbox_dirty:  # sends made by on_hibernate
                await self._deliver_outbox()

    def is_idle(self) -> bool:
        """Waiting for work with nothing to do, or with a turn in durable waits only: the only
        states in which it may hibernate."""
        if self.queries or self.state is not State.AWAKE:
            return False
        if self.turn is not None:
            return self.turn.idle
        # An outbox waiting to retry, or for a replica that cannot take its commits now, does
        # not hold the actor awake: it is woken to deliver (after its hibernation shipped
        # them, or the store came back). Waiting for the next round's acknowledgement does.
        outbox_held = (
            self.outbox_dirty
            and not self.outbox_retry_delay
            and not (self.outbox_gated and self._gate_stuck())
        )
        return self.waiting and not self.work.is_set() and not self.queue and not outbox_held

    # -- durable steps (runtime/steps.py calls these) -------------------------------------

    def turn_maybe_idle(self) -> None:
        if self.turn is not None and self.is_idle():
            self.runtime._idle(self)

    def turn_busy(self) -> None:
        self.runtime._busy(self)

    def wait_changed(self, until: float | None) -> None:
        """A durable wait began: the wake-up hint must be no later than its deadline."""
        if until is not None and (self.wake_hint is None or until < self.wake_hint):
            self.runtime.directory.lower_wake_at(self.aid, until)
            self.runtime.actors_with_timers += self.wake_hint is None
            self.wake_hint = until
            self.runtime._timer_hint(until)

    def event_arrival(self, name: str) -> anyio.Event:
        arrival = self.arrivals.get(name)
        if arrival is None:
            arrival = self.arrivals[name] = anyio.Event()
        return arrival

    def event_arrived(self, name: str) -> None:
        arrival = self.arrivals.pop(name, None)
        if arrival is not None:
            arrival.set()

    def suspend_turn(self) -> None:
        """Hibernating or closing: a turn in durable waits rolls back, to replay later."""
        if self.turn is not None:
            self.turn.suspend()

    def _fire_timers(self) -> None:
        """Turn every due timer into an outbox message to this actor, in one transaction with
        the timers' next due times: each due instant is delivered once."""
        from . import timers

        self.timers_due = False
        now = self.runtime.clock()
        data = self.data
        data.begin()
        try:
            for name, method, payload, due_at, every, cron in data.timers(due_before=now):
                data.add_outbox(self.spec.name, self.key, method, payload)
                self.runtime.stats_timers_fired += 1
                following = timers.due_again(due_at, now, every, cron)
                if following is None:
                    data.delete_timer(name)
                else:
                    data.set_timer(name, method, payload, following, every, cron)
            data.commit()
        except BaseException:
            data.rollback()
            raise
        self.outbox_dirty = True
        self.timers_changed = True

    def _rewrite_wake_hint(self) -> None:
        """After a commit that changed timers: the directory's hint becomes the exact next due."""
        self.timers_changed = False
        due = self.data.next_due()
        wait = self.mailbox.next_wait()
        if wait is not None and (due is None or wait < due):
            due = wait
        if due != self.wake_hint:
            self.runtime.directory.set_wake_at(self.aid, due)
            self.runtime.actors_with_timers += (due is not None) - (self.wake_hint is not None)
            self.wake_hint = due
            self.runtime._timer_hint(due)

    def _record_wake_latency(self) -> None:
        if self.wake_started is not None:
            self.runtime.wake_latencies.append(anyio.current_time() - self.wake_started)
            self.wake_started = None

    async def _hook(self, name: str) -> None:
        """Run ``on_wake`` or ``on_hibernate`` in a transaction of its own.

        A hook that raises is rolled back and reported; it does not stop the actor.
        """
        data = self.data
        data.begin()
        ctx = context.HandlerContext(self, context.TURN, None, self.sql, self.kv)
        token = context.CURRENT.set(ctx)
        try:
            await getattr(self.instance, name)()
            if data.in_transaction:
                data.commit()
        except Exception as exc:
            data.rollback()
            self.runtime._report(f"{self.spec.name} {self.key!r}: {name} raised {exc!r}")
        except BaseException:
            data.rollback()
            raise
        finally:
            ctx.active = False
            context.CURRENT.reset(token)

    def _load_more(self) -> None:
        rows = self.mailbox.load(self.loaded_upto, LOAD_CHUNK, recovered=True)
        for row in rows:
            row.recovered = row.seq <= self.recovered_upto
        self.queue.extend(rows)
        if rows:
            self.loaded_upto = rows[-1].seq
        if len(rows) < LOAD_CHUNK:
            self.backlog = False

    def _take_batch(self) -> list[Message]:
        queue = self.queue
        if queue[0].recovered:
            return [queue[0]]
        limit, self.batch_limit = self.batch_limit, MAX_BATCH
        batch: list[Message] = []
        for message in queue:
            if len(batch) == limit or message.recovered:
                break
            batch.append(message)
        return batch

    async def _run_batch(self) -> None:
        rt = self.runtime
        codec = rt.codec
        data = self.data
        instance = self.instance
        handlers = self.spec.handlers
        batch = self._take_batch()
        first = batch[0]
        self._record_wake_latency()
        if first.recovered:
            if first.dead_lettered:  # copied to dead letters just before a crash: finish
                await self._fail(first, None)
                return
            first.started = self.mailbox.record_start(first.seq)
            if first.started > self.spec.retry.max_crashes:
                await self._fail(first, _ProcessDied(first.started - 1))
                return
        if first.cancelled is not None:
            await self._fail(first, _cancelled(first))
            return
        done: list[tuple[Message, bytes | None]] = []
        failure: tuple[Message, BaseException] | None = None
        stop: BaseException | None = None
        data.begin()
        try:
            deletable = self._outbox_deletable()
            if deletable > self.outbox_deleted_upto:
                data.delete_outbox(deletable)
                self.outbox_deleted_upto = deletable
            for message in batch:
                if self._applied_before(message):
                    done.append((message, None))  # delivered again: not applied twice
                    continue
                handler = handlers.get(message.method)
                if (
                    handler is None
                    and message.method == "on_child_failed"
                    and (message.sender or "").startswith(CHILD_SENDER)
                ):
                    handler = self.spec.on_child_failed
                if handler is None or handler.is_query:
                    failure = (
                        message,
                        UnknownHandlerError(
                            f"stored message {message.seq} names {message.method!r}, which is "
                            f"not a handler of {self.spec.name} (was it renamed or removed?)"
                        ),
                    )
                    break
                if message.cancelled is not None:
                    break  # it runs first in the next batch, where it is dead-lettered
                # The first message needs no savepoint: if it fails, the whole (so far empty)
                # transaction rolls back. Most batches hold one message, so this saves two
                # statements per turn.
                nested = bool(done)
                if nested:
                    data.savepoint()
                ctx = context.HandlerContext(self, context.TURN, message, self.sql, self.kv)
                turn = ctx.turn = self.turn = TurnState(self, message, not nested)
                token = context.CURRENT.set(ctx)
                try:
                    args, kwargs = codec.decode(message.payload)
                    try:
                        result = await handler.fn(instance, *args, **kwargs)
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
                    if len(reply) > rt.max_message_bytes:
                        raise MessageTooLargeError(
                            f"the reply of {self.spec.name}.{handler.name} is {len(reply)} bytes, "
                            f"over max_message_bytes={rt.max_message_bytes}"
                        )
                except SplitBatch:
                    # A batched message made its first durable call: commit the ones before it;
                    # it runs again first in a transaction of its own.
                    data.rollback_to_savepoint()
                    self.batch_limit = 1
                    break
                except Suspended:
                    data.rollback()  # (only a batch's first message makes durable calls)
                    self.mailbox.reset_start(message.seq)
                    # Only a turn parked in a journaled wait may sleep until the wait ends; one
                    # cut short elsewhere by a close (inside a step, an ask) stays pending, and
                    # the next open runs it again at once.
                    self.suspended_seq = message.seq if turn.parked else None
                    self.timers_changed = True
                    break
                except Interrupted:
                    failure = self._interrupted(message, nested)
                    break
                except NondeterminismError as exc:
                    data.rollback()
                    stop = exc
                    break
                except Exception as exc:
                    if isinstance(exc, apsw.CorruptError | apsw.NotADBError):
                        # Not the message's fault: stop the actor (its messages are kept); with
                        # a replica, the next wake-up restores the files.
                        data.rollback()
                        bad = self.mailbox.path if self.mailbox.found_corrupt is exc else data.path
                        raise CorruptFileError(
                            f"{self.describe()}: {bad.name}: {exc}; its messages are kept",
                            path=str(bad),
                        ) from exc
                    if turn.interrupt is not None:  # cancelled inside a step or a wait
                        failure = self._interrupted(message, nested)
                        break
                    if turn.broken is not None:
                        data.rollback()
                        stop = turn.broken
                        break
                    if not data.in_transaction:
                        failure = self._lost_at(done, message, exc)
                        done = []  # the whole transaction is gone, earlier messages included
                        break
                    if nested:
                        data.rollback_to_savepoint()
                    else:
                        data.rollback()
                    failure = (message, exc)
                    break
                finally:
                    ctx.active = False
                    self.turn = None
                    context.CURRENT.reset(token)
                if not data.in_transaction:
                    failure = self._lost_at(done, message, None)
                    done = []
                    break
                if nested:
                    data.release()
                if message.idempotency_key is not None:
                    data.store_result(message.seq, message.idempotency_key, True, reply)
                done.append((message, reply))
            if data.in_transaction:
                if done:
                    cursors = {
                        m.sender: m.sender_seq
                        for m, _ in done
                        if m.sender is not None and m.sender_seq is not None
                    }
                    if cursors:
                        data.advance_senders(cursors)
                    data.set_applied(done[-1][0].seq)
                    rt._crash_point("before commit", None, done[-1][0].seq, self.describe())
                data.commit()
        except BaseException:
            data.rollback()
            if rt.closing.is_set() and not rt.crashed:
                self.mailbox.reset_start(first.seq)  # cut short by a graceful close, not a death
            raise
        if done:
            rt._crash_point("after commit", None, done[-1][0].seq, self.describe())
        if done and self.spec.durable and rt.replication is not None:
            await rt.replication.wait_replicated(self)  # the output gate
        if done:
            queue = self.queue
            waiters = self.waiters
            self.applied_seq = done[-1][0].seq
            for message, answer in done:
                queue.popleft()
                waiter = waiters.pop(message.seq, None)
                if waiter is None:
                    continue
                if answer is None:  # a duplicate: the first application's outcome
                    self._fill_from_store(waiter, message.seq)
                else:
                    waiter.set_result(answer)
            if self.replica_files:
                self.applied_marks.append((self.replica_files[0].commits, self.applied_seq))
            rt.stats_turns += 1
            rt.stats_applied += len(done)
        if stop is not None:
            self._stop_nondeterministic(stop)
        elif failure is not None:
            await self._fail(*failure)

    def _intensity_exceeded(self, error: BaseException) -> bool:
        """Count a failed turn; past the type's restart intensity, stop the actor (its
        messages, this one included, stay in the mailbox)."""
        policy = self.spec.restart_intensity
        now = anyio.current_time()
        times = self.failure_times
        times.append(now)
        while times and times[0] < now - policy.period:
            times.popleft()
        if len(times) <= policy.max_failures:
            return False
        self.gave_up = error
        self.closing = True
        stopped = ActorStoppedError(
            f"{self.spec.name} {self.key!r} failed {len(times)} turns within "
            f"{policy.period:g} s (restart intensity {policy.max_failures}) and was stopped; "
            "its messages are kept until Runtime.resume"
        )
        stopped.__cause__ = error
        self._fail_waiters(stopped)
        return True

    def _interrupted(self, message: Message, nested: bool) -> tuple[Message, BaseException] | None:
        """A turn cancelled or restarted through the API: roll it back (only it: messages
        before it in the batch still commit). A first message that was cancelled fails now;
        otherwise the message runs first in the next batch (dead-lettered there if cancelled)."""
        if nested:
            self.data.rollback_to_savepoint()
            self.batch_limit = 1
            return None
        self.data.rollback()
        if message.cancelled is not None:
            return (message, _cancelled(message))
        self.batch_limit = 1
        return None

    def _stop_nondeterministic(self, error: BaseException) -> None:
        """A replay diverged from its journal: retrying cannot help until the code changes.
        Stop the actor (its messages and journals stay) until ``Runtime.resume``."""
        self.gave_up = error
        self.closing = True
        stopped = ActorStoppedError(
            f"{self.spec.name} {self.key!r} was stopped: {error}; its messages and journals "
            "are kept until Runtime.resume"
        )
        stopped.__cause__ = error
        self._fail_waiters(stopped)

    def _lost_at(
        self,
        done: list[tuple[Message, bytes | None]],
        message: Message,
        cause: BaseException | None,
    ) -> tuple[Message, BaseException] | None:
        """A handler ended the transaction. The culprit's failure counts only once it runs at
        the head of the queue; before that, the messages ahead of it commit on their own."""
        if done:
            self.batch_limit = len(done)
            return None
        return (message, _lost(cause))

    async def _fail(self, message: Message, error: BaseException | None) -> None:
        """Handle a failed attempt of the message at the head of the queue.

        ``error`` is ``None`` for a message already copied to the dead letters before a crash.
        """
        rt = self.runtime
        if isinstance(error, RuntimeClosedError) and rt.closing.is_set():
            return  # not the message's fault: it stays queued and runs at the next open
        if error is not None:
            attempts = self.mailbox.record_failure(message.seq)
            message.attempts = attempts
            if not isinstance(error, TurnCancelledError) and self._intensity_exceeded(error):
                return
            retryable = not isinstance(error, (*_DETERMINISTIC, _ProcessDied))
            if retryable and attempts < self.spec.retry.max_attempts:
                rt.stats_retries += 1
                with anyio.move_on_after(self.spec.retry.delay(attempts)):
                    await rt.closing.wait()
                return
        # Dead-letter: keep a copy first, then advance applied_seq past it (in that order; a
        # crash in between is finished by the next wake, which sees the copy and skips the run).
        self.mailbox.dead_letter(message, error)
        data = self.data
        data.begin()
        try:
            if message.sender is not None and message.sender_seq is not None:
                data.advance_senders({message.sender: message.sender_seq})
            data.set_applied(message.seq)
            if message.idempotency_key is not None:
                info = _error_info(error, message)
                data.store_result(
                    message.seq, message.idempotency_key, False, rt.codec.encode(info)
                )
            data.commit()
        except BaseException:
            data.rollback()
            raise
        self.queue.popleft()
        self.applied_seq = message.seq
        rt.stats_dead_letters += 1
        waiter = self.waiters.pop(message.seq, None)
        if waiter is not None:
            failed = MessageFailedError(
                f"{self.spec.name}.{message.method} failed on {self.key!r} after "
                f"{message.attempts} attempt(s) and was dead-lettered: {error!r}",
                seq=message.seq,
                attempts=message.attempts,
            )
            failed.__cause__ = error
            waiter.set_error(failed)

    async def _create(self) -> None:
        """Run ``on_create`` once, as the actor's first turn, retrying per the type's policy."""
        rt = self.runtime
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        if self.init is not None:
            args, kwargs = rt.codec.decode(self.init)
        attempt = 0
        while True:
            attempt += 1
            self.data.begin()
            ctx = context.HandlerContext(self, context.TURN, None, self.sql, self.kv)
            token = context.CURRENT.set(ctx)
            try:
                await self.spec.on_create.fn(self.instance, *args, **kwargs)
                if not self.data.in_transaction:
                    raise _lost(None)
                self.data.set_created()
                self.data.commit()
                break
            except Exception as exc:
                self.data.rollback()
                if isinstance(exc, RuntimeClosedError) and rt.closing.is_set():
                    return  # not on_create's fault: it runs again at the next open
                if self._intensity_exceeded(exc):
                    return
                if attempt >= self.spec.retry.max_attempts:
                    self._stop_failed(exc)
                    return
                rt.stats_retries += 1
                with anyio.move_on_after(self.spec.retry.delay(attempt)):
                    await rt.closing.wait()
                if self.closing:
                    return
            except BaseException:
                self.data.rollback()
                raise
            finally:
                ctx.active = False
                context.CURRENT.reset(token)
        if self.init is not None:
            rt.directory.clear_init(self.aid)
        self.created.set()
        self.settled.set()

    # -- the outbox -----------------------------------------------------------------------

    def outbox_add(self, target: Ref[Any], method: str, payload: bytes) -> None:
        self.data.add_outbox(target.type_name, target.key, method, payload)
        self.outbox_dirty = True

    async def _deliver_outbox(self) -> None:
        """Deliver committed outbox rows in order; a row that cannot go yet stays, with the rest,
        and delivery is retried with backoff.

        Delivery is at-least-once; the receiver's per-sender cursor makes it exactly-once.
        """
        rt = self.runtime
        rows = self.data.outbox_after(self.outbox_delivered_upto)
        gate = self._outbox_gate(rows[-1].id if rows else 0)
        self.outbox_gated = False
        for row in rows:
            if gate is not None and row.id > gate:
                gate = self._outbox_gate(0)  # (again: acknowledged while rows were delivered?)
            if gate is not None and row.id > gate:
                # Its turn's commit is not in the replica yet: it goes once it is (an
                # acknowledgement wakes the loop; a hibernation ships it, then a wake-up).
                self.outbox_gated = True
                assert rt.replication is not None
                rt.replication.hurry()
                return
            spec = rt.specs.get(row.target_type)
            try:
                if spec is None:
                    raise LookupError(f"type {row.target_type!r} is not registered")
                token = await rt._deliver(
                    spec,
                    row.target_key,
                    row.method,
                    row.payload,
                    # (rows from before a restore to an earlier point go as they were first)
                    self.sender_id if row.id >= self.incarnation_from else self.earlier_sender_id,
                    row.id,
                )
            except RuntimeClosedError:
                return
            except NotLocalError:
                # Its target is being restored (and was woken for it): try again soon, quietly.
                delay = self.outbox_retry_delay
                self.outbox_retry_delay = min(1.0, max(OUTBOX_RETRY_MIN, delay * 2))
                return
            except Exception as exc:
                delay = self.outbox_retry_delay
                self.outbox_retry_delay = min(OUTBOX_RETRY_MAX, max(OUTBOX_RETRY_MIN, delay * 2))
                rt._report(
                    f"{self.spec.name} {self.key!r}: outbox row {row.id} to {row.target_type} "
                    f"{row.target_key!r} not delivered yet, retrying in "
                    f"{self.outbox_retry_delay:.2f} s: {exc!r}"
                )
                return
            self.outbox_delivered_upto = row.id
            if token is not None:
                self.outbox_tokens.append((row.id, token))
        self.outbox_dirty = False
        self.outbox_retry_delay = 0.0

    def _outbox_gate(self, last_row: int) -> int | None:
        """The last outbox row whose commit is in the replica (``None``: no replica, no gate).
        Rows present when the actor woke count as committed before its files were attached:
        they wait until the files' state then is known to be in the replica."""
        if self.runtime.replication is None or not self.replica_files:
            return None
        data = self.replica_files[0]
        marks = self.outbox_marks
        if last_row > (marks[-1][1] if marks else self.outbox_gate_upto):
            marks.append((data.commits, last_row))  # (written at or before this commit)
        if data.claimed and data.baseline_shipped and not data.want_snapshot:
            while marks and data.acked >= marks[0][0]:
                self.outbox_gate_upto = marks.popleft()[1]
        return self.outbox_gate_upto

    def _gate_stuck(self) -> bool:
        """Rows at the output gate cannot expect an acknowledgement soon."""
        rep = self.runtime.replication
        if rep is None or rep.unavailable or not self.replica_files:
            return True
        data = self.replica_files[0]
        return not data.claimed or data.fenced is not None

    def replica_acked(self) -> None:
        """Replication acknowledged commits of its files: rows held at the gate may go."""
        if self.outbox_gated:
            self.work.set()

    def _replicated_applied(self) -> int:
        """The last applied message whose application is in the replica (without one: the
        last applied). Applied messages and their journals leave the mailbox only up to it:
        each file is restored to its own latest state, so a mailbox whose cleanup reached the
        replica before ``data.db``'s turns did would lose those messages in a restore."""
        if self.runtime.replication is None or not self.replica_files:
            return self.applied_seq
        data = self.replica_files[0]
        marks = self.applied_marks
        while marks and data.acked >= marks[0][0] and data.capture is None:
            if data.want_snapshot:
                break
            self.replicated_applied = marks.popleft()[1]
        return self.replicated_applied

    def _outbox_deletable(self) -> int:
        """The last outbox row that may be deleted: delivered and, with a replica, delivered
        into the replica (a row deleted earlier could be lost by a restore from it)."""
        tokens = self.outbox_tokens
        while tokens and tokens[0][1].done():
            self.outbox_safe_upto = tokens.popleft()[0]
        if not tokens:
            return self.outbox_delivered_upto
        return self.outbox_safe_upto

    # -- batched housekeeping -------------------------------------------------------------

    def _cleanup(self, *, force: bool) -> None:
        upto = self._replicated_applied()
        if upto - self.cleaned_upto < (1 if force else CLEANUP_EVERY):
            return
        self.mailbox.remove_applied(upto)
        self.cleaned_upto = upto
        cutoff = time.time() - self.runtime.idempotency_ttl
        self.mailbox.prune_idempotency(cutoff, upto)
        deletable = self._outbox_deletable()
        self.data.housekeeping(deletable, cutoff)
        self.outbox_deleted_upto = deletable


class _ProcessDied(Exception):
    """The process died while this message ran, too many times (see ``Retry.max_crashes``)."""

    def __init__(self, deaths: int) -> None:
        super().__init__(
            f"the process died at least {deaths} time(s) while this message was running; it "
            "was dead-lettered so that the actor can go on"
        )


def _sender_id(aid: str, incarnation: int) -> str:
    """Who an actor's outbox rows come from: its id, and its incarnation once it was
    restored to an earlier point (its outbox numbers then start again from there)."""
    return aid if incarnation <= 0 else f"{aid}.{incarnation}"


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


def _error_info(error: BaseException | None, message: Message) -> list[Any]:
    if error is None:
        return ["DeadLetter", "dead-lettered before a crash", "", message.attempts]
    text = "".join(traceback.format_exception(error))
    return [type(error).__qualname__, str(error), text, message.attempts]


def check_payload(runtime: RuntimeHost, payload: bytes, what: str) -> None:
    if len(payload) > runtime.max_message_bytes:
        raise MessageTooLargeError(
            f"{what} encodes to {len(payload)} bytes, over max_message_bytes="
            f"{runtime.max_message_bytes}; keep large data in the actor's tables"
        )
