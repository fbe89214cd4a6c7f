"""An awake actor: its open files, its live object, its queue, its outbox, and its turn loop.

The loop (:meth:`Activation.run`) fires due timers, delivers committed outbox rows, loads
messages from ``mailbox.db`` when a backlog waits there, and hands the head of the queue to
``runtime/turn.py``, where one batch of messages is applied in one ``data.db`` transaction. It
waits for work in between; the runtime's residency decides when it hibernates.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Any

import anyio
import apsw

from . import turn
from .errors import (
    ActorError,
    ActorFailedError,
    ActorStoppedError,
    CorruptFileError,
    MessageTooLargeError,
    RuntimeClosedError,
    RuntimeInternalError,
    SchemaError,
    StorageError,
)
from .files import db, runstore, streamstore
from .files.datastore import KV, DataStore, Sql, read_only_authorizer
from .files.datastore import image as data_image
from .files.layout import DATA_FILE, MAILBOX_FILE, actor_dir, make_actor_dir
from .files.mailbox import Mailbox, Message
from .files.mailbox import image as mailbox_image
from .host import RuntimeHost, Waiter
from .lifecycle import Lifecycle, State
from .outbox import OUTBOX_RETRY_MIN, Outbox
from .replica.shipper import ActorReplica
from .steps import TurnState
from .streams import Writer, check_topic
from .turn import MAX_BATCH

if TYPE_CHECKING:
    from .ref import Ref
    from .spec import TypeSpec

#: Messages loaded from ``mailbox.db`` at a time when catching up on a backlog.
LOAD_CHUNK = 512
#: Messages held in memory per actor at most; beyond, they wait in ``mailbox.db`` only.
QUEUE_CAP = 1024
#: Applied inbox rows are deleted in batches of this many (the cleanup is batched).
CLEANUP_EVERY = 256


class Activation:
    def __init__(
        self,
        runtime: RuntimeHost,
        spec: TypeSpec,
        key: str,
        aid: str,
        ref: Ref[Any],
        init: bytes | None,
        lifecycle: Lifecycle,
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
        self.outbox = Outbox()
        # With a replica: (data.db commits, applied seq) after each turn's commit, and the
        # last applied message known to be in the replica.
        self.applied_marks: collections.deque[tuple[int, int]] = collections.deque()
        self.replicated_applied = 0
        self.batch_limit = MAX_BATCH
        self.waiters: dict[int, Waiter] = {}
        self.work = anyio.Event()
        self.created = anyio.Event()
        self.settled = anyio.Event()  # set once created, or once it can no longer be
        self.stopped = anyio.Event()
        self.scope = anyio.CancelScope()
        self.failed: BaseException | None = None
        self.closing = False  # the loop ends after the current batch (hibernating, or stopping)
        #: Being deleted (``Ref.delete``, or its ``self.destroy()`` committed): no more turns;
        #: its committed outbox rows leave, then it closes without ``on_hibernate``.
        self.deleting = False
        #: Its state (read ``state``); the runtime fires its events.
        self.lifecycle = lifecycle
        self.opened = anyio.Event()  # set once open() succeeded or failed
        self.open_error: BaseException | None = None
        self.closed = anyio.Event()  # set once the files are closed again
        self.waiting = False  # the loop waits for work
        self.files_open = False
        self.preparing = False  # its files are being claimed or restored from the replica
        self.queries = 0  # @query handlers running now
        self.wake_started: float | None = None
        self.wake_hint: float | None = None  # directory.db's wake_at for this actor, as written
        self.timers_due = False  # the supervisor saw a timer due: fire it before more work
        self.failure_times: collections.deque[float] = collections.deque()
        self.gave_up: BaseException | None = None  # restart intensity exceeded: stop
        self.timers_changed = False  # a turn set or cancelled timers: rewrite the hint
        self._reader: Any = None
        self.published = False  # the turn running now published: relay after its commit
        self.published_deleted = 0  # data.db's published rows are deleted up to this id
        self.turn: TurnState | None = None  # the durable state of the message running now
        self.suspended_seq: int | None = None  # a turn rolled back in a journaled wait
        self.arrivals: dict[str, anyio.Event] = {}  # event name -> set when one arrives
        #: Replication's own record of it (runtime/replica/tracking.py): its tracked files, and
        #: what waking and hibernating hand over.
        self.replica = ActorReplica()

    @property
    def state(self) -> State:
        return self.lifecycle.state

    @property
    def hibernating(self) -> bool:
        """Closing to hibernate (idle, evicted, or the runtime closing): ``on_hibernate`` runs
        after the current batch, unless it failed or stopped."""
        return self.lifecycle.state is State.HIBERNATING

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
            clock=rt.clock.wall,
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
                clock=rt.clock.wall,
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
        self._open_stream()
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

    def _open_stream(self) -> None:
        """Its stream's writer; what a died process left: reset markers for the step attempts
        in flight, published items committed and not relayed yet (runtime/streams.py)."""
        rt = self.runtime
        mailbox = self.mailbox  # (not self: the writer must not keep the activation alive)
        self.stream = Writer(
            self.aid,
            lambda: mailbox.conn,
            rt.feeds,
            rt.codec.encode,
            rt.codec.decode,
            rt.clock.wall,
            rt.task_group.start_soon,
            (self.spec.stream_max_entries, self.spec.stream_max_age),
            rt.report,
        )
        applied = self.data.applied_seq

        def completed(seq: int, n: int, attempt: int) -> bool:
            if seq <= applied:
                return True
            row = mailbox.journal(seq).get(n)
            return row is not None and row.status == "done" and row.attempts == attempt

        relayed = streamstore.relayed_upto(mailbox.conn)
        self.stream.relayed = self.published_deleted = relayed
        self.stream.recover(self.data.published_after(relayed), completed)

    def publish(self, topic: str, item: Any) -> None:
        """``self.publish`` in a turn: a row in the turn's transaction, relayed after it."""
        check_topic(topic)
        rt = self.runtime
        payload = rt.codec.encode(item)
        check_payload(rt, payload, f"the item published to {topic!r}")
        self.data.add_published(topic, payload, rt.clock.wall())
        self.published = True

    def relay_published(self) -> None:
        """After a commit in which the actor published: the committed items into the stream."""
        self.published = False
        self.stream.relay(self.data.published_after(self.stream.relayed))

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
        try:
            if hasattr(self, "stream") and not self.runtime.crashed:
                self.stream.close()
        except Exception as exc:
            self.runtime.report(f"{self.describe()}: its stream's last chunks: {exc!r}")
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
                    and not self.outbox.dirty
                    and self.failed is None
                ):
                    self._clear_pending()
                elif (
                    self.suspended_seq is not None
                    and self.queue
                    and self.queue[0].seq == self.suspended_seq
                    and not self.outbox.dirty
                    and self.failed is None
                ):
                    # Nothing can run before its durable wait ends: the wake-up hint (the
                    # wait's deadline) or an event wakes it, not every reopening of the runtime.
                    self._rewrite_wake_hint()
                    self._clear_pending()
                if self.outbox.dirty and self.failed is None and not self.runtime.closing.is_set():
                    # Rows its targets could not take yet (being restored, the store down):
                    # it stays pending, and is woken again to deliver them.
                    delay = max(self.outbox.retry_delay, OUTBOX_RETRY_MIN)
                    self.wait_changed(self.runtime.clock() + delay)
        finally:
            self._park_waiters()

    def _clear_pending(self) -> None:
        """Nothing left to run: clear the directory's pending mark, unless commits of its files
        are not in the replica yet (then the mark stays until hibernation has shipped them:
        a process killed meanwhile leaves it pending, so the next one wakes it and ships them)."""
        if self.replica.files and any(
            t.commits > t.acked or t.capture is not None for t in self.replica.files
        ):
            self.replica.clear_pending_when_shipped = True
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
            self.fail_waiters(self.stopped_error())
            return
        self.fail_waiters(RuntimeClosedError("the runtime closed before this was applied"))

    def stopped_error(self) -> ActorStoppedError:
        """What an asker of a stopped actor gets (its message is kept)."""
        assert self.gave_up is not None
        error = ActorStoppedError(
            f"{self.spec.name} {self.key!r} was stopped ({self.gave_up}); its messages are "
            "kept until Runtime.resume"
        )
        error.__cause__ = self.gave_up
        return error

    def fail_waiters(self, error: BaseException) -> None:
        for waiter in self.waiters.values():
            waiter.set_error(error)
        self.waiters.clear()

    # -- accepting messages ---------------------------------------------------------------

    def accept(self, message: Message) -> None:
        """A message was appended to ``mailbox.db``; queue it unless a backlog is unread."""
        if self.waiting:
            self.runtime.busy(self)
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
            turn.fill_from_store(self, waiter, seq)
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

    # -- the turn loop --------------------------------------------------------------------

    async def run(self) -> None:
        try:
            with self.scope:
                await self._turn_loop()
        except ActorError as exc:  # e.g. a file found corrupt mid-turn
            self.runtime.report(f"{self.spec.name} {self.key!r} stopped: {exc!r}")
            self.stop_failed(exc)
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
            self.runtime.report(str(full))
            self.stop_failed(full)
        except Exception as exc:
            # A bug in torpor: stop this actor (its messages stay), keep the others running.
            error = RuntimeInternalError(
                f"{self.spec.name} {self.key!r} stopped on an internal error: {exc!r}; please "
                "file a bug with this traceback"
            )
            error.__cause__ = exc
            self.runtime.report(str(error))
            self.stop_failed(error)
        finally:
            self.data.rollback()
            self.settled.set()
            self._park_waiters()
            self.stopped.set()

    def fail_from_outside(self, error: BaseException) -> None:
        """Stop the turn loop with ``error`` (a corrupt file found while snapshotting)."""
        if self.failed is None:
            self.stop_failed(error)
        self.closing = True
        self.work.set()

    def fence(self, error: BaseException) -> None:
        """Another runtime took this actor's replica over: stop, keep the files, report; its
        askers learn it at once (not when the turn loop ends)."""
        if self.gave_up is None:
            self.gave_up = error
        self.closing = True
        self.work.set()
        self.fail_waiters(self.stopped_error())

    def give_up(self, error: BaseException, stopped: ActorStoppedError) -> None:
        """Stop for good (until ``Runtime.resume``): failed turns beyond the restart intensity,
        or a replay that diverged. Its askers get ``stopped``; its messages are kept."""
        self.gave_up = error
        self.closing = True
        self.fail_waiters(stopped)

    def stop_failed(self, error: BaseException) -> None:
        """Stop the loop with ``error``: the actor cannot run turns (its messages are kept)."""
        self.failed = error
        self.settled.set()
        failure = ActorFailedError(
            f"{self.spec.name} {self.key!r} cannot run turns; its messages are kept"
        )
        failure.__cause__ = error
        self.fail_waiters(failure)

    async def _turn_loop(self) -> None:
        """``on_create`` (once), ``on_wake``, then turns until it closes, then ``on_hibernate``
        (unless it failed or stopped)."""
        if not await self._open_turns():
            return
        while not self.closing and self.failed is None:
            if (
                self.replica.due
                or self.timers_due
                or self.timers_changed
                or (self.outbox.dirty and self.outbox.retry_delay == 0)
            ):
                await self._between_turns()  # (most iterations have nothing to do there)
                if self.deleting:  # (its destroy() was among the rows just delivered)
                    break
            if not self.queue and self.backlog:
                self._load_more()
            if not self.queue:
                self._cleanup(force=False)
                self.work = anyio.Event()
                if self.closing:
                    break
                self.record_wake_latency()
                if self.timers_due or self.timers_changed:
                    continue
                self.waiting = True
                if self.is_idle():
                    self.runtime.idle(self)
                try:
                    if self.outbox.retry_delay:
                        await self._retry_outbox_meanwhile()
                    else:
                        await self.work.wait()
                finally:
                    self.waiting = False
                    self.runtime.busy(self)
                continue
            if self.spec.durable and not await self._lineage_replicated():
                break
            head = self.queue[0]  # (in backoff after a failure: it may have to wait first)
            if head.retry_at is None or await turn.backed_off(self, head):
                await turn.Batch(self).run()
                if self.published:
                    self.relay_published()
                if self.runtime.feeds.commits:  # someone watches an actor: is it this one?
                    self.runtime.feeds.committed(self.aid)
        await self._after_turns()

    async def _open_turns(self) -> bool:
        """``on_create`` (once) and ``on_wake``; whether turns may start."""
        if not self.created.is_set():
            await turn.create(self)
            if self.failed is not None or self.closing:
                return False
        if self.spec.has_on_wake:
            await turn.run_hook(self, "on_wake")
        if self.published:
            self.relay_published()
        due = self.data.next_due()
        if due is not None and due <= self.runtime.clock():
            self.timers_due = True
        return True

    async def _after_turns(self) -> None:
        """The loop ended: before deletion, the outbox leaves; before a hibernation,
        ``on_hibernate`` runs (unless it failed or stopped) and what it published and sent
        leaves."""
        if self.deleting:
            await self._deliver_before_deletion()
        elif self.hibernating and self.failed is None and self.gave_up is None:
            if self.spec.has_on_hibernate:
                await turn.run_hook(self, "on_hibernate")
            if self.published:
                self.relay_published()
            if self.outbox.dirty:  # sends made by on_hibernate
                await self.outbox.deliver(self)

    async def _deliver_before_deletion(self) -> None:
        """Its turns are over for good: the rows its committed turns sent (those of the turn
        that called ``self.destroy()`` included) leave before its files go, retried while a
        target cannot take them yet (unless the runtime closes: the deletion then finishes at
        the next open, and rows still here go with it)."""
        while self.outbox.dirty and not self.runtime.closing.is_set():
            self.work = anyio.Event()
            await self.outbox.deliver(self)
            if self.outbox.dirty:  # (held at the output gate: an acknowledgement sets work)
                with anyio.move_on_after(max(self.outbox.retry_delay, OUTBOX_RETRY_MIN)):
                    await self.work.wait()

    async def _between_turns(self) -> None:
        """What waits for a gap between turns: a replica capture, due timers, the wake-up hint,
        committed outbox rows."""
        rt = self.runtime
        if self.replica.due and rt.replication is not None:
            rt.replication.capture_due(self)
        if self.timers_due:
            self._fire_timers()
        if self.timers_changed:
            self._rewrite_wake_hint()
        if self.outbox.dirty and self.outbox.retry_delay == 0:
            await self.outbox.deliver(self)

    async def _retry_outbox_meanwhile(self) -> None:
        """Nothing queued and an outbox delivery failed: wait for work, but retry the
        delivery on time."""
        with anyio.move_on_after(self.outbox.retry_delay):
            await self.work.wait()
        await self.outbox.deliver(self)

    async def _lineage_replicated(self) -> bool:
        """For a durable type (the caller checks): its steps are keyed by its lineage, in
        data.db, which must be in the replica before a call goes out, or a machine lost now
        would retry the acknowledged message elsewhere under another key. Whether turns may go
        on."""
        rt = self.runtime
        if (
            rt.replication is not None
            and self.replica.files
            and not self.replica.files[0].baseline_shipped
        ):
            await rt.replication.wait_baseline(self)
            return not (self.closing or self.failed is not None)
        return True

    def is_idle(self) -> bool:
        """Waiting for work with nothing to do, or with a turn in durable waits only: the only
        states in which it may hibernate."""
        if self.queries or self.lifecycle.state is not State.AWAKE:
            return False
        if self.turn is not None:
            return self.turn.idle
        # An outbox waiting to retry, or for a replica that cannot take its commits now, does
        # not hold the actor awake: it is woken to deliver (after its hibernation shipped
        # them, or the store came back). Waiting for the next round's acknowledgement does.
        outbox_held = (
            self.outbox.dirty
            and not self.outbox.retry_delay
            and not (self.outbox.gated and self.outbox.gate_stuck(self))
        )
        return self.waiting and not self.work.is_set() and not self.queue and not outbox_held

    # -- durable steps (runtime/steps.py calls these) -------------------------------------

    def turn_maybe_idle(self) -> None:
        if self.turn is not None and self.is_idle():
            self.runtime.idle(self)

    def turn_busy(self) -> None:
        self.runtime.busy(self)

    def wait_changed(self, until: float | None) -> None:
        """A durable wait began: the wake-up hint must be no later than its deadline."""
        if until is not None and (self.wake_hint is None or until < self.wake_hint):
            self.runtime.directory.lower_wake_at(self.aid, until)
            self.runtime.actors_with_timers += self.wake_hint is None
            self.wake_hint = until
            self.runtime.timer_hint(until)

    def event_arrival(self, name: str) -> anyio.Event:
        arrival = self.arrivals.get(name)
        if arrival is None:
            arrival = self.arrivals[name] = anyio.Event()
        return arrival

    def event_arrived(self, name: str) -> None:
        arrival = self.arrivals.pop(name, None)
        if arrival is not None:
            arrival.set()
        values = runstore.value_events_of(name)
        if values is not None and self.arrivals:
            # A run's outcome also ends its starter's waits for values it never recorded.
            for other in [n for n in self.arrivals if n.startswith(values)]:
                self.arrivals.pop(other).set()

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
                self.runtime.counters.timers_fired += 1
                following = timers.due_again(due_at, now, every, cron)
                if following is None:
                    data.delete_timer(name)
                else:
                    data.set_timer(name, method, payload, following, every, cron)
            data.commit()
        except BaseException:
            data.rollback()
            raise
        self.outbox.dirty = True
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
            self.runtime.timer_hint(due)

    def record_wake_latency(self) -> None:
        if self.wake_started is not None:
            self.runtime.wake_latencies.append(self.runtime.clock.loop() - self.wake_started)
            self.wake_started = None

    def _load_more(self) -> None:
        rows = self.mailbox.load(self.loaded_upto, LOAD_CHUNK, recovered=True)
        for row in rows:
            row.recovered = row.seq <= self.recovered_upto
        self.queue.extend(rows)
        if rows:
            self.loaded_upto = rows[-1].seq
        if len(rows) < LOAD_CHUNK:
            self.backlog = False

    # -- the outbox -----------------------------------------------------------------------

    def outbox_add(self, target: Ref[Any], method: str, payload: bytes) -> None:
        self.outbox.add(self, target, method, payload)

    @property
    def outbox_gated(self) -> bool:
        """Committed rows wait at the output gate for the replica's acknowledgement."""
        return self.outbox.gated

    def replica_acked(self) -> None:
        """Replication acknowledged commits of its files: rows held at the gate may go."""
        if self.outbox.gated:
            self.work.set()

    def _replicated_applied(self) -> int:
        """The last applied message whose application is in the replica (without one: the
        last applied). Applied messages and their journals leave the mailbox only up to it:
        each file is restored to its own latest state, so a mailbox whose cleanup reached the
        replica before ``data.db``'s turns did would lose those messages in a restore."""
        if self.runtime.replication is None or not self.replica.files:
            return self.applied_seq
        data = self.replica.files[0]
        marks = self.applied_marks
        while marks and data.acked >= marks[0][0] and data.capture is None:
            if data.want_snapshot:
                break
            self.replicated_applied = marks.popleft()[1]
        return self.replicated_applied

    # -- batched housekeeping -------------------------------------------------------------

    def _cleanup(self, *, force: bool) -> None:
        upto = self._replicated_applied()
        if upto - self.cleaned_upto < (1 if force else CLEANUP_EVERY):
            return
        self.mailbox.remove_applied(upto, keep_journal=self.spec.workflow)
        self.cleaned_upto = upto
        cutoff = self.runtime.clock() - self.runtime.idempotency_ttl
        self.mailbox.prune_idempotency(cutoff, upto)
        deletable = self.outbox.deletable()
        self.data.housekeeping(deletable, cutoff)
        self.outbox.deleted_upto = deletable


def _sender_id(aid: str, incarnation: int) -> str:
    """Who an actor's outbox rows come from: its id and its incarnation (random for an actor
    made since incarnations were, so that a key deleted and used again is another sender; bumped
    when restored to an earlier point, its outbox numbers then starting again from there). An
    actor from before has incarnation 0 and sends as its id."""
    return aid if incarnation <= 0 else f"{aid}.{incarnation}"


def check_payload(runtime: RuntimeHost, payload: bytes, what: str) -> None:
    if len(payload) > runtime.max_message_bytes:
        raise MessageTooLargeError(
            f"{what} encodes to {len(payload)} bytes, over max_message_bytes="
            f"{runtime.max_message_bytes}; keep large data in the actor's tables"
        )
