"""The runtime: registry of actor types, refs, activations, sending and delivery.

All SQLite work happens on the event loop's thread, synchronously: a commit in WAL mode with
``synchronous=NORMAL`` costs microseconds, far less than a hop to a worker thread, and it keeps
every actor's state single-threaded like a Durable Object's.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import functools
import math
import os
import resource
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar, cast

import anyio
import anyio.lowlevel
import apsw

from . import context, timers
from .activation import Activation, check_payload
from .codec import Codec
from .context import refuse_inside_turn as _refuse_inside_turn
from .errors import (
    ActorFailedError,
    ActorNotFoundError,
    ActorStoppedError,
    CorruptFileError,
    FencedError,
    NondeterminismError,
    NotLocalError,
    RuntimeClosedError,
    RuntimeLockedError,
    UnknownActorTypeError,
)
from .files import db
from .files.datastore import KV, OutboxRow, Sql
from .files.directory import Directory
from .files.layout import (
    DATA_FILE,
    DIRECTORY_FILE,
    LOCK_FILE,
    MAILBOX_FILE,
    actor_dir,
    actor_id,
    make_actor_dir,
)
from .files.mailbox import Mailbox, Message
from .files.mailbox import image as mailbox_image
from .host import Waiter
from .lifecycle import Event, Lifecycle, State
from .records import (
    DeadLetter,
    LifecycleEvent,
    RuntimeStatistics,
    StepRecord,
    TurnInfo,
)
from .ref import Ref
from .replica.replicator import manifest_key
from .replica.shipper import Replication, ReplicationEngine
from .replica.store import ReplicaStore
from .spec import DEFAULT_MAX_KEY_BYTES, TypeSpec, check_durable_types, check_key, index_types
from .timers import Schedule
from .turn import CHILD_SENDER

A = TypeVar("A")
R = TypeVar("R")

#: Largest encoded message (arguments) or reply. Mailbox rows are read whole and held in memory
#: while queued; a megabyte keeps a backlog of thousands affordable. Large data belongs in the
#: actor's own tables.
DEFAULT_MAX_MESSAGE_BYTES = 1 << 20
#: How long the result of a call with an ``idempotency_key`` is kept for retries: a day, as
#: Stripe keeps its idempotency keys.
DEFAULT_IDEMPOTENCY_TTL = 24 * 3600.0
#: How long closing the runtime waits for turns in progress: long enough for an LLM call to
#: return, short enough for a deploy. A cancelled turn rolls back and runs again later.
DEFAULT_SHUTDOWN_GRACE = 30.0
#: Seconds without a turn, a query or a queued message before an actor hibernates. Long enough
#: to keep an agent awake through one run's burst of messages and the seconds between its LLM
#: calls (re-waking costs about a millisecond: two file opens); short enough that a
#: million mostly idle agents hold no descriptors and no memory.
DEFAULT_IDLE_TIMEOUT = 30.0
#: File descriptors budgeted per awake actor. Measured: four (data.db and mailbox.db with their
#: -wal files; the unix-excl VFS keeps the WAL index in memory, so no -shm), six once a @query
#: opened its read-only connection. Eight leaves room for SQLite's temporary files.
FDS_PER_AWAKE_ACTOR = 8


def default_max_awake() -> int:
    """How many actors may be awake at once, from this process's descriptor limit.

    A tenth of the limit (at least 64) is left to the application and to directory.db.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    spare = max(64, soft // 10)
    return max(1, (soft - spare) // FDS_PER_AWAKE_ACTOR)


class Runtime:
    """A torpor runtime: open it with ``open_runtime``."""

    def __init__(
        self,
        root: Path,
        types: Iterable[type],
        *,
        message_types: Iterable[type],
        synchronous: str,
        max_message_bytes: int,
        max_key_bytes: int,
        idempotency_ttl: float,
        shutdown_grace: float,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        max_awake: int | None = None,
        clock: Callable[[], float] = time.time,
        replica: ReplicaStore | None = None,
        replication: Replication | None = None,
    ) -> None:
        specs = []
        for cls in types:
            spec = getattr(cls, "__torpor_spec__", None)
            if not isinstance(spec, TypeSpec) or spec.cls is not cls:
                raise TypeError(f"types must be subclasses of actors.Actor (got {cls!r})")
            specs.append(spec)
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be 'NORMAL' or 'FULL' (got {synchronous!r})")
        if not isinstance(max_message_bytes, int) or max_message_bytes < 64:
            raise ValueError(f"max_message_bytes must be an int >= 64 (got {max_message_bytes!r})")
        self.root = root
        self.specs: dict[str, TypeSpec] = index_types(specs)
        self.synchronous = synchronous
        self.max_message_bytes = max_message_bytes
        self.max_key_bytes = max_key_bytes
        self.idempotency_ttl = idempotency_ttl
        self.shutdown_grace = shutdown_grace
        self.codec = Codec(message_types, ref_encoder=_ref_parts, ref_decoder=self.ref_by_name)
        self.awake: dict[str, Activation] = {}
        self.closing = anyio.Event()
        self.closed = False
        self.unknown_types: set[str] = set()
        self.reports: collections.deque[str] = collections.deque(maxlen=1000)
        self.stats_sent = 0
        self.stats_turns = 0
        self.stats_applied = 0
        self.stats_retries = 0
        self.stats_dead_letters = 0
        self.stats_wakes = 0
        #: Mailboxes checked for bad pages since the runtime opened (runtime/files/mailbox.py).
        self.sound_mailboxes = db.CheckedFiles()
        self.stats_timers_fired = 0
        self.stats_steps = 0
        self.parked_waiters: dict[str, dict[int, Waiter]] = {}  # askers of hibernated actors
        self.stats_step_retries = 0
        #: Test kit hook (actors.testing): called at each crash point of a turn.
        self.crash_hook: Callable[[str, Any, int, str], None] | None = None
        self.crashed = False
        self.runtime_id = ""  # from directory.db, at open
        self.clock = clock
        self.next_wake_at: float | None = None  # earliest timer hint in directory.db
        self.stats_hibernations = 0
        self.wake_latencies: collections.deque[float] = collections.deque(maxlen=1000)
        if max_awake is None:
            max_awake = default_max_awake()
        if not isinstance(max_awake, int) or max_awake < 1:
            raise ValueError(f"max_awake must be an int >= 1 (got {max_awake!r})")
        if not (isinstance(idle_timeout, int | float) and idle_timeout >= 0):
            raise ValueError(
                f"idle_timeout must be a number of seconds >= 0 (got {idle_timeout!r})"
            )
        self.max_awake = max_awake
        self.idle_timeout = float(idle_timeout)
        # Awake actors waiting for work, least recently used first: aid -> idle since.
        self.idle: collections.OrderedDict[str, float] = collections.OrderedDict()
        self.failed: dict[str, BaseException] = {}
        self.known_actors = 0
        self.stopped_actors = 0
        self.actors_with_timers = 0
        self._room = anyio.Event()  # set (and replaced) whenever an awake slot may have freed
        self.resident = 0  # activations with open files (what max_awake bounds)
        self._poke = anyio.Event()  # wakes the supervisor
        self._supervisor_wakes_at = -math.inf  # when the sleeping supervisor wakes by itself
        self._subscribers: list[Any] = []
        self.events_dropped = 0
        self._task_group: Any = None
        self._lock_fd: int | None = None
        if replica is not None and not isinstance(replica, ReplicaStore):
            raise TypeError(
                f"replica must be an actors.DirectoryStore or actors.S3Store (got {replica!r})"
            )
        if replication is not None and not isinstance(replication, Replication):
            raise TypeError(f"replication must be an actors.Replication (got {replication!r})")
        check_durable_types(self.specs.values(), has_replica=replica is not None)
        self.replication: ReplicationEngine | None = (
            ReplicationEngine(self, replica, replication or Replication())
            if replica is not None
            else None
        )

    # -- public API -----------------------------------------------------------------------

    @property
    def path(self) -> Path:
        """The runtime directory."""
        return self.root

    def ref(self, actor_type: type[A], key: str) -> Ref[A]:
        """A ref to the actor of ``actor_type`` with ``key``; it is created by its first message."""
        spec = getattr(actor_type, "__torpor_spec__", None)
        if not isinstance(spec, TypeSpec) or self.specs.get(spec.name) is not spec:
            raise UnknownActorTypeError(
                f"{getattr(actor_type, '__qualname__', actor_type)!s} is not registered with this "
                "runtime; pass it in open_runtime(types=[...])"
            )
        return Ref(self, spec, check_key(key, self.max_key_bytes))

    def ref_by_name(self, type_name: str, key: str) -> Ref[Any]:
        """A ref by persisted type name (for tools that do not import the class)."""
        spec = self.specs.get(type_name)
        if spec is None:
            known = ", ".join(sorted(self.specs)) or "none"
            raise UnknownActorTypeError(
                f"actor type {type_name!r} is not registered with this runtime (registered: "
                f"{known})"
            )
        return Ref(self, spec, check_key(key, self.max_key_bytes))

    async def spawn(
        self, actor_type: type[A], /, *args: Any, key: str | None = None, **kwargs: Any
    ) -> Ref[A]:
        """Create a new actor, run ``on_create(*args, **kwargs)`` as its first turn, return its ref.

        Without ``key`` a random one is generated. :class:`ActorExistsError` if ``key`` is taken.
        """
        await anyio.lowlevel.checkpoint_if_cancelled()
        _refuse_inside_turn("rt.spawn", "a message to a new key (get-or-create)")
        self._check_open()
        ref = self.ref(actor_type, uuid.uuid4().hex if key is None else key)
        spec = ref._spec
        spec.on_create.check_arguments(spec.name, args, kwargs)
        init = self.codec.encode([list(args), kwargs]) if (args or kwargs) else None
        if init is not None:
            check_payload(self, init, f"{spec.name}.on_create arguments")
        aid = actor_id(spec.name, ref.key)
        with db.full_disk_as_error(self.directory.path):
            self.directory.create(aid, spec.name, ref.key, init)
        self.known_actors += 1
        try:
            await self._activate(spec, ref.key)
        except BaseException:
            self.directory.forget(aid)  # nothing was acknowledged: leave no half-made actor
            self.known_actors -= 1
            raise
        await anyio.lowlevel.cancel_shielded_checkpoint()
        return ref

    def statistics(self) -> RuntimeStatistics:
        """A frozen snapshot of the runtime's counters (no I/O)."""
        latencies = sorted(self.wake_latencies)
        return RuntimeStatistics(
            awake=len(self.awake),
            hibernated=self.known_actors
            - len(self.awake)
            - self.stopped_actors
            - len(self.failed.keys() - self.awake.keys()),
            failed=len(self.failed),
            stopped=self.stopped_actors,
            max_awake=self.max_awake,
            wakes=self.stats_wakes,
            timers_fired=self.stats_timers_fired,
            actors_with_timers=self.actors_with_timers,
            steps=self.stats_steps,
            step_retries=self.stats_step_retries,
            hibernations=self.stats_hibernations,
            wake_latency_p50=_quantile(latencies, 0.50),
            wake_latency_p99=_quantile(latencies, 0.99),
            messages_sent=self.stats_sent,
            turns=self.stats_turns,
            messages_applied=self.stats_applied,
            retries=self.stats_retries,
            dead_letters=self.stats_dead_letters,
            unknown_types=tuple(sorted(self.unknown_types)),
            replication=self.replication.statistics() if self.replication else None,
        )

    async def replicated(self) -> None:
        """Return once every commit made so far is in the replica (``open_runtime(replica=)``):
        a barrier for tests, deployments and shutdown scripts. While the store cannot be
        reached this waits (bound it with ``anyio.move_on_after``); actors keep working."""
        self._check_open()
        if self.replication is None:
            raise RuntimeError("this runtime has no replica: open_runtime(replica=...)")
        await self.replication.wait_all()

    async def dead_letters(self, ref: Ref[Any]) -> list[DeadLetter]:
        """The dead letters kept in ``ref``'s mailbox, oldest first."""
        await anyio.lowlevel.checkpoint()
        act = await self._existing(ref)
        if act is None:
            return []
        letters = []
        for row in act.mailbox.dead_letters():
            try:
                args, kwargs = self.codec.decode(row.payload)
                decoded: tuple[tuple[Any, ...] | None, dict[str, Any] | None] = (
                    tuple(args),
                    kwargs,
                )
            except Exception:
                decoded = (None, None)
            letters.append(
                DeadLetter(
                    seq=row.seq,
                    method=row.method,
                    args=decoded[0],
                    kwargs=decoded[1],
                    sender=row.sender,
                    idempotency_key=row.idempotency_key,
                    attempts=row.attempts,
                    error_type=row.error_type,
                    error_message=row.error_message,
                    traceback=row.traceback,
                    failed_at=row.failed_at,
                )
            )
        return letters

    async def replay_dead_letter(self, ref: Ref[Any], seq: int) -> None:
        """Send dead letter ``seq`` again, as a new message at the end of the mailbox."""
        await anyio.lowlevel.checkpoint()
        act = await self._existing(ref)
        message = act.mailbox.replay_dead_letter(seq) if act is not None else None
        if act is None or message is None:
            raise LookupError(f"{ref!r} has no dead letter {seq}")
        act.accept(message)

    async def drop_dead_letter(self, ref: Ref[Any], seq: int) -> None:
        """Delete dead letter ``seq`` for good."""
        await anyio.lowlevel.checkpoint()
        act = await self._existing(ref)
        if act is None or not act.mailbox.drop_dead_letter(seq):
            raise LookupError(f"{ref!r} has no dead letter {seq}")

    # -- sending --------------------------------------------------------------------------

    def _encode_call(
        self, spec: TypeSpec, method: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[str, bytes, bool]:
        handler = spec.handler(method)
        handler.check_arguments(spec.name, args, kwargs)
        payload = self.codec.encode([list(args), kwargs])
        check_payload(self, payload, f"a message to {spec.name}.{handler.name}")
        return handler.name, payload, handler.is_query

    async def _send(
        self,
        spec: TypeSpec,
        key: str,
        method: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        idempotency_key: str | None,
        want_reply: bool = False,
    ) -> tuple[Activation | None, int, bool]:
        """Store a message; returns ``(act, seq, appended)``, ``appended`` False for a repeat of
        ``idempotency_key`` (nothing new stored)."""
        self._check_open()
        name, payload, is_query = self._encode_call(spec, method, args, kwargs)
        if is_query:
            raise TypeError(f"{spec.name}.{name} is a @query: ask it, do not send it")
        _check_idempotency_key(idempotency_key)
        try:
            act = await self._activate(spec, key)
        except ActorStoppedError:
            if want_reply:
                raise
            appended = self._store(
                spec,
                key,
                name,
                payload,
                sender=None,
                sender_seq=None,
                idempotency_key=idempotency_key,
            )
            return None, 0, appended
        if idempotency_key is None:
            seq = act.mailbox.append(name, payload)
            appended = True
        else:
            maybe_seq, appended = act.mailbox.append_deduplicated(
                name, payload, sender=None, sender_seq=None, idempotency_key=idempotency_key
            )
            assert maybe_seq is not None
            seq = maybe_seq
        if appended:
            self.stats_sent += 1
            act.accept(_new_message(seq, None, None, name, payload, idempotency_key))
        if not want_reply and spec.durable and self.replication is not None:
            # Durable mode: the acknowledgement of a send means "in the replica", with the
            # directory's record of the actor and its pending work (without it, a fresh machine
            # restored from the replica would not know the message waits to run).
            await self.replication.wait_token(self.replication.append_token(act.aid))
            await self.replication.wait_token(self.replication.directory_token())
        return act, seq, appended

    async def _ask(
        self,
        spec: TypeSpec,
        key: str,
        method: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        idempotency_key: str | None,
        *,
        from_turn: bool = False,
    ) -> Any:
        await anyio.lowlevel.checkpoint_if_cancelled()
        handler = spec.handler(method)
        if handler.is_query:
            self._check_open()
            _, payload, _ = self._encode_call(spec, method, args, kwargs)
            if idempotency_key is not None and not from_turn:  # (a step's key: journaled)
                raise TypeError(
                    f"{spec.name}.{handler.name} is a @query: it changes nothing, so an "
                    "idempotency_key does not apply"
                )
            return await self._run_query(spec, key, handler.name, payload)
        if not from_turn:
            _refuse_inside_turn("ref.ask", "await self.ask(ref, ...), a journaled step")
        act, seq, _ = await self._send(spec, key, method, args, kwargs, idempotency_key, True)
        assert act is not None
        waiter: Waiter = act.waiter(seq)
        if waiter.event.is_set() and spec.durable and self.replication is not None:
            # Answered from the stored outcome of an earlier application (a retried key): in
            # durable mode, that too is said only once it is in the replica.
            await self.replication.wait_replicated(act)
        await waiter.event.wait()
        if waiter.error is not None:
            raise waiter.error
        assert waiter.payload is not None
        return self.codec.decode(waiter.payload)

    async def _run_query(self, spec: TypeSpec, key: str, name: str, payload: bytes) -> Any:
        if not await self._exists(spec, key):
            await anyio.lowlevel.checkpoint()  # (a caller polling until it exists lets others run)
            raise ActorNotFoundError(
                f"{spec.name} {key!r} does not exist: a @query reads an actor created before "
                "(by a message or spawn) and creates none"
            )
        act = await self._activate(spec, key)
        act.queries += 1
        self._busy(act)
        try:
            return await self._query(act, spec, name, payload)
        finally:
            act.queries -= 1
            if act.queries == 0 and act.is_idle():
                self._idle(act)

    async def _query(self, act: Activation, spec: TypeSpec, name: str, payload: bytes) -> Any:
        await act.settled.wait()
        if act.failed is not None:
            error = ActorFailedError(f"{spec.name} {act.key!r} cannot run: {act.failed!r}")
            raise error from act.failed
        args, kwargs = self.codec.decode(payload)
        reader = act.reader()
        ctx = context.HandlerContext(
            act, context.QUERY, None, Sql(reader), KV(None, reader, self.codec)
        )
        token = context.CURRENT.set(ctx)
        try:
            result = await spec.handlers[name].fn(act.instance, *args, **kwargs)
        except (apsw.CorruptError, apsw.NotADBError) as exc:
            restored = "; it is restored from the replica at its next wake-up"
            corrupt = CorruptFileError(
                f"{spec.name} {act.key!r}: {exc}; its messages are kept"
                + (restored if self.replication else ""),
                path=str(act.data.path),
            )
            corrupt.__cause__ = exc
            act.fail_from_outside(corrupt)
            raise corrupt from exc
        finally:
            ctx.active = False
            context.CURRENT.reset(token)
        return self.codec.decode(self.codec.encode(result))

    async def _deliver(
        self, spec: TypeSpec, key: str, method: str, payload: bytes, sender: str, sender_seq: int
    ) -> Any:
        """Deliver one outbox row to its target's mailbox (deduplicated by sender cursor).

        With a replica, returns a token whose ``done()`` tells when the delivery is in the
        replica: only then may the sender delete the row (else a restore could lose it)."""
        rep = self.replication
        aid = actor_id(spec.name, key)
        if method == SPAWN:
            (init,) = self.codec.decode(payload)
            if self.directory.get(aid) is None:
                self.directory.create(aid, spec.name, key, init, parent=sender)
                self.known_actors += 1
                self._wake_later(spec, key)
            return (
                rep.directory_token() if rep else None
            )  # an existing child (a redelivery, or stopped since) needs nothing
        # A delivering actor is busy, so it must never wait for an awake slot: if the target
        # is not awake and no slot is free now, append to its file and wake it later.
        while True:
            act = self.awake.get(aid)
            if act is None or act.state is State.AWAKE:
                break
            if act.state is State.WAKING and not act.files_open and not act.preparing:
                break  # waiting for a slot: append to its files directly (if they are here)
            if act.state is State.HIBERNATING and act.files_open:
                # Closing (on_hibernate may be sending this very message, to itself or to an
                # actor that is sending to it): append through its open mailbox, keep it
                # pending, and wake it again once closed. Never wait for the close here.
                seq, appended = act.mailbox.append_deduplicated(
                    method, payload, sender=sender, sender_seq=sender_seq, idempotency_key=None
                )
                if appended:
                    self.stats_sent += 1
                    act.backlog = True
                    self._wake_later(spec, key)
                await anyio.lowlevel.checkpoint()
                return rep.append_token(aid) if rep else None
            await act.opened.wait()
        if act is None and self.resident < self.max_awake:
            # A slot is free now: wake it here. (Not by evicting an idle actor: another wake-up
            # may take the slot that frees, and this actor would then wait for one while
            # holding its own; two delivering actors did, for good, with max_awake 2.)
            try:
                act = await self._activate(spec, key)
            except ActorStoppedError:
                act = None
        if act is None or act.state is not State.AWAKE:
            try:
                self._store(spec, key, method, payload, sender=sender, sender_seq=sender_seq)
            except NotLocalError:
                await anyio.lowlevel.checkpoint()
                raise
            await anyio.lowlevel.checkpoint()
            return rep.append_token(aid) if rep else None
        seq, appended = act.mailbox.append_deduplicated(
            method, payload, sender=sender, sender_seq=sender_seq, idempotency_key=None
        )
        if appended and seq is not None:
            self.stats_sent += 1
            act.accept(_new_message(seq, sender, sender_seq, method, payload, None))
        await anyio.lowlevel.checkpoint()
        return rep.append_token(aid) if rep else None

    def _outbox_send(
        self,
        ctx: context.HandlerContext,
        target: Ref[Any],
        method: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        """``self.send`` inside a turn: validate, encode, and write the outbox row."""
        if not isinstance(target, Ref) or target._runtime is not self:
            raise TypeError(f"send needs a ref of this runtime (got {target!r})")
        name, payload, is_query = self._encode_call(target._spec, method, args, kwargs)
        if is_query:
            raise TypeError(f"{target.type_name}.{name} is a @query: it cannot be sent")
        if target._spec.requires_create_arguments():
            aid = actor_id(target.type_name, target.key)
            if (
                aid not in self.awake
                and self.directory.get(aid) is None
                and self._spawned_in_outbox(cast(Activation, ctx.activation), target) is None
            ):  # (a SPAWN row goes first, outbox rows go in order: the child is there by then)
                raise _not_found(target._spec, target.key)
        ctx.activation.outbox_add(target, name, payload)

    # -- activations ----------------------------------------------------------------------

    async def _activate(self, spec: TypeSpec, key: str, *, resuming: bool = False) -> Activation:
        """The awake activation of an actor, waking it if needed; concurrent callers share one
        wake-up. Makes room under ``max_awake`` by hibernating the least recently used idle
        actors, or waits for one to become idle."""
        aid = actor_id(spec.name, key)
        while True:
            act = self.awake.get(aid)
            if act is None:
                break
            if act.state is State.AWAKE:
                if act.failed is None and act.files_open and act.mailbox.found_corrupt:
                    # A bad page was met in its mailbox (by a call on it, or an append): stop
                    # it now (its messages are kept); with a replica, the wake-up below
                    # restores the files.
                    act.fail_from_outside(
                        CorruptFileError(
                            f"{act.describe()}: {act.mailbox.path.name} is corrupt "
                            f"({act.mailbox.found_corrupt}); its messages are kept",
                            path=str(act.mailbox.path),
                        )
                    )
                if act.failed is None:
                    return act
            if act.state is State.WAKING:
                await act.opened.wait()
                error = act.open_error
                if error is not None and not isinstance(error, anyio.get_cancelled_exc_class()):
                    raise error  # (the opener's own cancellation is not ours: try again)
                continue
            await act.closed.wait()  # hibernating, or failed: wake it again once it is closed
        self._check_open()
        entry = self.directory.get(aid)
        if entry is None and spec.requires_create_arguments():
            raise _not_found(spec, key)
        if entry is not None and entry.stopped is not None:
            raise ActorStoppedError(
                f"{spec.name} {key!r} is stopped ({entry.stopped}); its messages are kept "
                "until Runtime.resume"
            )
        started = anyio.current_time()
        previous = State.FAILED if aid in self.failed else State.HIBERNATED
        if resuming:
            previous = State.STOPPED
        lifecycle = Lifecycle(previous, functools.partial(self._lifecycle_changed, spec.name, key))
        init = entry.init if entry else None
        act = Activation(self, spec, key, aid, Ref(self, spec, key), init, lifecycle)
        act.wake_hint = entry.wake_at if entry else None
        self.awake[aid] = act  # reserve: a concurrent caller waits on act.opened
        lifecycle.fire(Event.RESUME if resuming else Event.WAKE)
        try:
            await self._make_room()
            self._check_open()
            with db.full_disk_as_error(self.directory.path):  # (a typed refusal, not apsw's)
                if entry is None:
                    self.directory.mark_pending(aid, spec.name, key)
                    self.known_actors += 1
                elif not entry.pending:
                    self.directory.mark_pending(aid, spec.name, key)
            if self.replication is not None:
                corrupt = self.replication.corrupt.pop(aid, None)
                # Deliveries wait for the files from here on (a restore may replace them).
                act.preparing = True
                try:
                    await self.replication.prepare_files(
                        act, known=entry is not None, force_restore=corrupt is not None
                    )
                    self._check_open()
                    try:
                        act.open(data_may_be_missing=act.restored)
                    except CorruptFileError as exc:
                        # Detected at open: the replica has the last replicated state.
                        self._report(f"{spec.name} {key!r}: {exc}; restoring it from the replica")
                        await self.replication.prepare_files(act, known=True, force_restore=True)
                        self._check_open()
                        act.open(data_may_be_missing=True)  # (the replica had none either)
                finally:
                    act.preparing = False
            else:
                act.open()
            self.resident += 1
            if self.replication is not None:
                try:
                    self.replication.attach(act)
                except BaseException:
                    self.resident -= 1
                    act.close_connections()
                    raise
        except BaseException as exc:
            del self.awake[aid]
            act.open_error = exc
            act.opened.set()
            act.closed.set()
            self._room_changed()
            if isinstance(exc, RuntimeClosedError | anyio.get_cancelled_exc_class()):
                lifecycle.fire(Event.CLOSED, "abandoned: " + repr(exc))  # (nothing ran)
            else:
                lifecycle.fire(Event.OPEN_FAILED, repr(exc))
            raise
        self.failed.pop(aid, None)
        lifecycle.fire(Event.OPENED)
        if self.closing.is_set():  # the runtime began closing while it woke: hibernate at once
            lifecycle.fire(Event.IDLE)
            act.closing = True
        act.wake_started = started
        self.stats_wakes += 1
        act.opened.set()
        self._task_group.start_soon(self._run_activation, act, name=f"torpor {spec.name} {key!r}")
        return act

    async def _make_room(self) -> None:
        """Return once an actor may open its files without exceeding ``max_awake``: hibernate
        the least recently used idle actor, or wait until one becomes idle or closes."""
        while self.resident >= self.max_awake:
            victim = next(iter(self.idle), None)
            if victim is not None:
                await self._hibernate(self.awake[victim])
            else:
                room = self._room
                await room.wait()
            self._check_open()

    def _room_changed(self) -> None:
        """Wake every task waiting for a slot; each re-checks (a broadcast, never lost)."""
        self._room.set()
        self._room = anyio.Event()

    async def _run_activation(self, act: Activation) -> None:
        """Run an actor's turn loop; when it ends (idle, closing, failed), close its files."""
        try:
            await act.run()
        finally:
            self.idle.pop(act.aid, None)
            try:
                # Closing checkpoints each WAL (fsyncs) on the loop's thread. A worker thread
                # would overlap those fsyncs with other actors' turns, but it would also let a
                # test's MockClock jump while the thread works; not yet.
                if self.replication is None:
                    act.close_files()
                else:
                    try:
                        act.tidy()
                        if not self.crashed:
                            await self.replication.detach(act)
                    finally:
                        act.close_connections()
                        self.replication.after_close(act)
            except Exception as exc:
                self._report(f"closing {act.spec.name} {act.key!r}: {exc!r}")
            finally:
                self.resident -= 1
                del self.awake[act.aid]
                if act.gave_up is not None:
                    self._stop(act)
                    # Askers parked by tidy() before a fence met during the hibernation.
                    for waiter in self.parked_waiters.pop(act.aid, {}).values():
                        waiter.set_error(act.stopped_error())
                elif act.failed is not None:
                    self.failed[act.aid] = act.failed
                    if self.replication is not None and (
                        isinstance(act.failed, CorruptFileError)
                        or isinstance(act.failed.__cause__, CorruptFileError)
                    ):
                        # Found corrupt in a turn: the next wake-up restores it.
                        self.replication.corrupt[act.aid] = act.failed
                    # Askers parked by tidy() before the hibernation found a file corrupt learn
                    # it now, as those of an actor failing awake do (their messages are kept).
                    for waiter in self.parked_waiters.pop(act.aid, {}).values():
                        failure = ActorFailedError(
                            f"{act.describe()} cannot run turns; the message is kept"
                        )
                        failure.__cause__ = act.failed
                        waiter.set_error(failure)
                    # (awake, or hibernating: its last snapshot found a file corrupt)
                    act.lifecycle.fire(Event.CRASHED, repr(act.failed))
                else:
                    if act.state is State.AWAKE:
                        act.lifecycle.fire(
                            Event.IDLE
                        )  # (its loop ended unasked: it closes all the same)
                    act.lifecycle.fire(Event.CLOSED)
                    self.stats_hibernations += 1
                act.closed.set()
                self._room_changed()

    def _stop(self, act: Activation) -> None:
        """Record that an actor exceeded its restart intensity, and owe its parent a notice."""
        reason = f"{type(act.gave_up).__qualname__}: {act.gave_up}"
        act.lifecycle.fire(Event.GAVE_UP, reason)  # (hibernating: a fence met)
        why = (
            "a replay diverged from its journal"
            if isinstance(act.gave_up, NondeterminismError)
            else "another runtime took its replica over"
            if isinstance(act.gave_up, FencedError)
            else "restart intensity exceeded"
        )
        self._report(f"{act.spec.name} {act.key!r} stopped: {why} ({reason})")
        entry = self.directory.get(act.aid)
        notice = time.time_ns() if entry is not None and entry.parent else None
        self.directory.set_stopped(act.aid, reason, notice)
        self.stopped_actors += 1
        if notice is not None and self._task_group is not None:
            self._task_group.start_soon(self._deliver_notices)

    async def _deliver_notices(self) -> None:
        """Tell parents about stopped children: ``on_child_failed(child, reason)`` arrives as a
        message, deduplicated by the notice's number, so a crash repeats it harmlessly."""
        for child_id, child_type, child_key, parent_id, notice in self.directory.owed_notices():
            parent = self.directory.get(parent_id)
            child_spec = self.specs.get(child_type)
            parent_spec = self.specs.get(parent.type) if parent is not None else None
            if parent is None or parent_spec is None or child_spec is None:
                continue
            child = self.directory.get(child_id)
            reason = child.stopped if child is not None and child.stopped else "stopped"
            payload = self.codec.encode([[Ref(self, child_spec, child_key), reason], {}])
            try:
                await self._deliver(
                    parent_spec,
                    parent.key,
                    "on_child_failed",
                    payload,
                    f"{CHILD_SENDER}{child_id}",
                    notice,
                )
            except RuntimeClosedError:
                return
            except Exception as exc:
                self._report(f"could not notify {parent.type} {parent.key!r}: {exc!r}")
                continue
            self.directory.clear_notice(child_id, notice)

    def _store(
        self,
        spec: TypeSpec,
        key: str,
        method: str,
        payload: bytes,
        *,
        sender: str | None,
        sender_seq: int | None,
        idempotency_key: str | None = None,
    ) -> bool:
        """Append to the mailbox of an actor whose files are not open (hibernated, stopped, or
        waiting for a slot), then have it woken later unless it is stopped. Sync: nothing can
        open its files meanwhile. Returns whether it appended (not a duplicate)."""
        aid = actor_id(spec.name, key)
        folder = actor_dir(self.root, aid)
        entry = self.directory.get(aid)
        if entry is None and spec.requires_create_arguments():
            raise _not_found(spec, key)
        if self.replication is not None and not self.replication.local_files_current(aid):
            # Its files are in the replica, not here (a fresh machine, or files to restore):
            # a mailbox written now would be set aside by the restore, and the message lost.
            # The actor is woken (restored); the delivery is made again after that.
            if entry is not None and entry.stopped is not None:
                raise ActorStoppedError(
                    f"{spec.name} {key!r} is stopped and its files are not restored on this "
                    "machine yet: Runtime.resume restores it, then send again"
                )
            if aid not in self.awake:
                self._wake_later(spec, key)
            raise NotLocalError(f"{spec.name} {key!r} is being restored from the replica")
        with db.full_disk_as_error(folder):
            make_actor_dir(folder)
        if entry is None:
            self.known_actors += 1
        if entry is None or not entry.pending:
            with db.full_disk_as_error(self.directory.path):
                self.directory.mark_pending(aid, spec.name, key)
        mailbox = Mailbox(
            folder / MAILBOX_FILE,
            synchronous=self.synchronous,
            type_name=spec.name,
            key=key,
            image=mailbox_image,
            known_sound=self.sound_mailboxes,
        )
        try:
            _, appended = mailbox.append_deduplicated(
                method,
                payload,
                sender=sender,
                sender_seq=sender_seq,
                idempotency_key=idempotency_key,
            )
        finally:
            mailbox.close()
        if appended:
            self.stats_sent += 1
        if (entry is None or entry.stopped is None) and aid not in self.awake:
            self._wake_later(spec, key)
        return appended

    def _wake_later(self, spec: TypeSpec, key: str) -> None:
        if self._task_group is not None and not self.closing.is_set():
            self._task_group.start_soon(self._wake_quietly, spec, key)

    async def _wake_quietly(self, spec: TypeSpec, key: str) -> None:
        try:
            await self._activate(spec, key)
        except Exception as exc:
            self._report(f"could not wake {spec.name} {key!r}: {exc!r}")

    async def resume(self, ref: Ref[Any]) -> None:
        """Start a stopped actor again: it runs its kept messages, oldest first."""
        await anyio.lowlevel.checkpoint()
        self._check_open()
        aid = actor_id(ref.type_name, ref.key)
        entry = self.directory.get(aid)
        if entry is None or entry.stopped is None:
            raise LookupError(f"{ref!r} is not stopped")
        self.directory.set_stopped(aid, None)
        self.stopped_actors -= 1
        await self._activate(ref._spec, ref.key, resuming=True)

    # -- durable steps: events and turns in flight ----------------------------------------

    async def signal(
        self, ref: Ref[Any], name: str, payload: Any = None, *, idempotency_key: str | None = None
    ) -> bool:
        """``ref.signal``: store an event durably in the actor's mailbox and wake it."""
        self._check_open()
        _refuse_inside_turn("ref.signal", "a step that signals (or self.send a message)")
        if not isinstance(name, str) or not name:
            raise TypeError(f"an event name must be a non-empty string (got {name!r})")
        _check_idempotency_key(idempotency_key)
        encoded = self.codec.encode(payload)
        check_payload(self, encoded, f"the payload of event {name!r}")
        spec, key = ref._spec, ref.key
        if not await self._exists(spec, key):
            raise ActorNotFoundError(
                f"{spec.name} {key!r} does not exist: an event goes to an actor created "
                "before (by a message or spawn), where a turn can wait for it"
            )
        try:
            act = await self._activate(spec, key)
        except ActorStoppedError:
            return bool(
                self._with_mailbox(
                    spec, key, lambda mb, _act: mb.add_event(name, encoded, idempotency_key)
                )
            )
        added = act.mailbox.add_event(name, encoded, idempotency_key)
        if added:
            act.event_arrived(name)
        return added

    async def turns(self, ref: Ref[Any]) -> list[TurnInfo]:
        """The actor's turns in flight with their journaled steps, without waking it."""
        await anyio.lowlevel.checkpoint()
        self._check_open()
        spec, key = ref._spec, ref.key

        def read(mailbox: Mailbox | None, act: Activation | None) -> list[TurnInfo]:
            if mailbox is None:
                return []
            applied = act.applied_seq if act is not None else self._applied_seq(spec, key)
            running = act.turn.seq if act is not None and act.turn is not None else None
            out = []
            for seq, method, attempts, cancelled, _at in mailbox.unapplied(applied):
                journal = mailbox.journal(seq)
                if not journal and seq != running:
                    continue
                steps = tuple(
                    StepRecord(r.n, r.kind, r.name, r.status, r.attempts, r.until, r.recorded_at)
                    for r in journal.values()
                )
                if seq == running:
                    status = "running"
                    if act is not None and act.turn is not None and act.turn.idle:
                        status = "waiting"
                elif any(step.status == "waiting" for step in steps):
                    status = "waiting"
                else:
                    status = "interrupted"
                out.append(TurnInfo(seq, method, status, attempts, cancelled, steps))
            return out

        return self._with_mailbox(spec, key, read)  # type: ignore[no-any-return]

    async def cancel_turn(self, ref: Ref[Any], seq: int, reason: str = "cancelled") -> None:
        """Cancel message ``seq``: its turn (running, waiting or not started) rolls back, the
        message is dead-lettered with :class:`TurnCancelledError`, and the actor moves on."""
        await anyio.lowlevel.checkpoint()
        self._check_open()
        spec, key = ref._spec, ref.key

        aid = actor_id(spec.name, key)
        self.directory.mark_pending(aid, spec.name, key)  # first: a crash must not lose it

        def mark(mailbox: Mailbox | None, act: Activation | None) -> bool:
            if mailbox is None:
                return False
            applied = act.applied_seq if act is not None else self._applied_seq(spec, key)
            if seq <= applied or not mailbox.cancel(seq, reason):
                return False
            if act is not None:
                for message in act.queue:
                    if message.seq == seq:
                        message.cancelled = reason
                if act.turn is not None and act.turn.seq == seq:
                    act.turn.interrupt_with("cancel")
                act.work.set()
            return True

        if not self._with_mailbox(spec, key, mark):
            raise LookupError(f"{ref!r} has no message {seq} waiting to be applied")
        self._wake_to_act(spec, key)

    async def restart_turn(self, ref: Ref[Any], seq: int, from_step: int = 0) -> int:
        """Run message ``seq``'s turn again from step number ``from_step``: journaled steps
        before it keep their results, later ones run again (Cloudflare Workflows' restart
        from a step). Returns how many journal rows were removed."""
        await anyio.lowlevel.checkpoint()
        self._check_open()
        if not isinstance(from_step, int) or from_step < 0:
            raise ValueError(f"from_step must be an int >= 0 (got {from_step!r})")
        spec, key = ref._spec, ref.key
        aid = actor_id(spec.name, key)
        self.directory.mark_pending(aid, spec.name, key)  # first: a crash must not lose it

        def rewind(mailbox: Mailbox | None, act: Activation | None) -> int | None:
            if mailbox is None:
                return None
            applied = act.applied_seq if act is not None else self._applied_seq(spec, key)
            if all(row[0] != seq for row in mailbox.unapplied(applied)):
                return None
            removed = mailbox.rewind(seq, from_step)
            if act is not None:
                for message in act.queue:
                    if message.seq == seq:
                        message.restarts += 1
                if act.turn is not None and act.turn.seq == seq:
                    act.turn.interrupt_with("restart")
            return removed

        removed = self._with_mailbox(spec, key, rewind)
        if removed is None:
            raise LookupError(f"{ref!r} has no message {seq} waiting to be applied")
        self._wake_to_act(spec, key)
        return int(removed)

    def _wake_to_act(self, spec: TypeSpec, key: str) -> None:
        """After a cancel or restart request: an actor that is not running its turn loop
        (hibernated, or closing now) is woken (again) to act on it."""
        aid = actor_id(spec.name, key)
        act = self.awake.get(aid)
        if act is None or act.closing or act.state is not State.AWAKE:
            entry = self.directory.get(aid)
            if entry is None or entry.stopped is None:  # a stopped one acts at resume
                self._wake_later(spec, key)

    def _with_mailbox(self, spec: TypeSpec, key: str, fn: Callable[[Any, Any], Any]) -> Any:
        """Run ``fn(mailbox, activation)`` on the actor's open mailbox, or on its file opened
        for the call (``fn(None, None)`` if it has none). Sync: nothing opens it meanwhile."""
        aid = actor_id(spec.name, key)
        act = self.awake.get(aid)
        if act is not None and act.files_open:
            return fn(act.mailbox, act)
        path = actor_dir(self.root, aid) / MAILBOX_FILE
        if not path.exists():
            return fn(None, None)
        mailbox = Mailbox(
            path,
            synchronous=self.synchronous,
            type_name=spec.name,
            key=key,
            known_sound=self.sound_mailboxes,
        )
        try:
            return fn(mailbox, None)
        finally:
            mailbox.close()

    def _applied_seq(self, spec: TypeSpec, key: str) -> int:
        """The applied-message cursor of a hibernated actor, read from its ``data.db``."""
        path = actor_dir(self.root, actor_id(spec.name, key)) / DATA_FILE
        if not path.exists():
            return 0
        conn = db.connect(path, synchronous=self.synchronous, private=True, persist_wal=True)
        try:
            return int(db.scalar(conn, "SELECT applied_seq FROM _torpor_state") or 0)
        finally:
            db.close(conn, path, keep_wal=False)

    def _crash_point(self, where: str, turn: Any, number: int, name: str = "") -> None:
        if self.crash_hook is not None:
            try:
                self.crash_hook(where, turn, number, name)
            except BaseException:
                self.crashed = True  # as after kill -9: nothing more is written
                raise

    async def _hibernate(self, act: Activation) -> None:
        """Hibernate an idle awake actor and wait until its files are closed."""
        self._begin_hibernation(act)
        await act.closed.wait()

    def _begin_hibernation(self, act: Activation) -> None:
        """Tell an idle awake actor's loop to run on_hibernate and end; do not wait for it."""
        if self.idle.pop(act.aid, None) is not None and act.state is State.AWAKE:
            self._close(act)

    def _close(self, act: Activation) -> None:
        """Hibernate an awake actor: a turn in durable waits rolls back, the loop ends after
        the current batch (on_hibernate then runs, unless it failed or stopped)."""
        self.idle.pop(act.aid, None)
        if act.state is State.AWAKE:  # (a waking one hibernates once open: see _activate)
            act.lifecycle.fire(Event.IDLE)
        act.closing = True
        act.suspend_turn()
        act.work.set()

    def _idle(self, act: Activation) -> None:
        now = anyio.current_time()
        self.idle[act.aid] = now
        self.idle.move_to_end(act.aid)
        if now + self.idle_timeout < self._supervisor_wakes_at:
            self._poke.set()  # the supervisor sleeps past this actor's deadline: wake it
        self._room_changed()  # a caller waiting for an awake slot may now evict this one

    def _busy(self, act: Activation) -> None:
        self.idle.pop(act.aid, None)

    async def _supervise(self) -> None:
        """Hibernate actors idle for ``idle_timeout`` and wake actors whose timers are due;
        sleeps until the next of those deadlines (or until poked)."""
        while True:
            now = anyio.current_time()
            while self.idle:
                aid, since = next(iter(self.idle.items()))
                if since + self.idle_timeout > now:
                    break
                self._begin_hibernation(self.awake[aid])
            if self.next_wake_at is not None and self.clock() >= self.next_wake_at:
                await self._wake_due()
            deadline = math.inf
            if self.idle:
                deadline = next(iter(self.idle.values())) + self.idle_timeout - now
            if self.next_wake_at is not None:
                deadline = min(deadline, max(0.0, self.next_wake_at - self.clock()))
            self._poke = anyio.Event()
            self._supervisor_wakes_at = anyio.current_time() + deadline
            with anyio.move_on_after(deadline):
                await self._poke.wait()
            self._supervisor_wakes_at = -math.inf  # awake: nobody needs to poke it

    async def _wake_due(self) -> None:
        """Wake every actor with a due timer hint and have it fire its due timers."""
        now = self.clock()
        self.next_wake_at = self.directory.next_wake_at(after=now)
        for _aid, type_name, key in self.directory.due(now):
            spec = self.specs.get(type_name)
            if spec is None:
                self.unknown_types.add(type_name)
                continue
            try:
                act = await self._activate(spec, key)
            except RuntimeClosedError:
                return
            except ActorStoppedError:
                continue  # its timers wait for resume
            except Exception as exc:
                self._report(f"could not wake {type_name} {key!r} for a timer: {exc!r}")
                retry = now + TIMER_WAKE_RETRY
                if self.next_wake_at is None or retry < self.next_wake_at:
                    self.next_wake_at = retry
                continue
            act.timers_due = True
            act.work.set()
            if act.waiting:
                self._busy(act)

    def _timer_hint(self, due: float | None) -> None:
        """An actor's next timer changed: wake the supervisor if it is now the soonest."""
        if due is not None and (self.next_wake_at is None or due < self.next_wake_at):
            self.next_wake_at = due
            self._poke.set()

    def _schedule(
        self,
        ctx: context.HandlerContext,
        name: str,
        method: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        at: Any,
        after: float | None,
        every: float | None,
        cron: str | None,
    ) -> Schedule:
        """``self.schedule`` inside a turn: validate, store with the turn, lower the hint now."""
        act = cast(Activation, ctx.activation)  # (this runtime's: an Activation)
        timer_name = timers.check_name(name)
        handler_name, payload, is_query = self._encode_call(act.spec, method, args, kwargs)
        if is_query:
            raise TypeError(f"{act.spec.name}.{handler_name} is a @query: a timer cannot send it")
        due = timers.first_due(self.clock(), at=at, after=after, every=every, cron=cron)
        act.data.set_timer(timer_name, handler_name, payload, due, every, cron)
        act.timers_changed = True
        if act.wake_hint is None or due < act.wake_hint:
            # Early, never late: the hint is written before the turn commits. If the turn
            # rolls back, the actor wakes for nothing, which is harmless.
            self.directory.lower_wake_at(act.aid, due)
            self.actors_with_timers += act.wake_hint is None
            act.wake_hint = due
        self._timer_hint(due)
        return Schedule(timer_name, handler_name, due, every, cron)

    def _lifecycle_changed(
        self,
        type_name: str,
        key: str,
        previous: State,
        event: Event,
        new: State,
        detail: str | None,
    ) -> None:
        """An actor's :class:`Lifecycle` changed: tell the subscribers (never waiting)."""
        if not self._subscribers:
            return
        record = LifecycleEvent(
            type_name=type_name,
            key=key,
            previous=previous.value,
            state=new.value,
            event=event.value,
            at=self.clock(),
            detail=detail,
        )
        for stream in list(self._subscribers):
            try:
                stream.send_nowait(record)
            except anyio.WouldBlock:
                self.events_dropped += 1
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._subscribers.remove(stream)

    @contextlib.asynccontextmanager
    async def open_lifecycle_events(self, buffer: int = 1024) -> AsyncIterator[Any]:
        """Subscribe to lifecycle transitions: ``async with rt.open_lifecycle_events() as
        events: async for event in events: ...`` yields :class:`LifecycleEvent` records.

        A subscriber that falls more than ``buffer`` events behind loses the newest ones (they
        are counted in ``events_dropped``); the runtime never waits for a subscriber.
        """
        send, receive = anyio.create_memory_object_stream[LifecycleEvent](buffer)
        self._subscribers.append(send)
        try:
            async with receive:
                yield receive
        finally:
            if send in self._subscribers:
                self._subscribers.remove(send)
            send.close()

    async def _existing(self, ref: Ref[Any]) -> Activation | None:
        """The activation of ``ref`` if the actor exists (waking it), else ``None``."""
        self._check_open()
        if not await self._exists(ref._spec, ref.key):
            return None
        return await self._activate(ref._spec, ref.key)

    async def _exists(self, spec: TypeSpec, key: str) -> bool:
        """Whether an actor exists, creating nothing: it is awake or in the directory (made by
        a message, or spawned), whatever its ``on_create`` takes. On a runtime restored from a
        replica, whose directory may predate the actor, also when the replica has its files.
        Otherwise a query or an event raises ActorNotFoundError, and its dead letters are [] (as
        its turns: ``turns`` reads the mailbox file, which such an actor does not have)."""
        aid = actor_id(spec.name, key)
        if aid in self.awake or self.directory.get(aid) is not None:
            return True
        rep = self.replication
        if rep is None or not rep.origin:
            return False
        name = manifest_key(rep.actor_name(aid, DATA_FILE))
        found = await anyio.to_thread.run_sync(rep._get, name)
        self._check_open()
        return found is not None or aid in self.awake or self.directory.get(aid) is not None

    def _spawned_in_outbox(self, act: Activation, target: Ref[Any]) -> OutboxRow | None:
        """The SPAWN row for ``target`` that ``act``'s outbox holds and has not delivered yet
        (``self.spawn`` earlier in this turn, or in a turn whose rows have not gone yet)."""
        for row in act.data.outbox_after(act.outbox_delivered_upto):
            if (
                row.method == SPAWN
                and row.target_type == target.type_name
                and row.target_key == target.key
            ):
                return row
        return None

    def _create_spawned(self, act: Activation, target: Ref[Any]) -> None:
        """Before ``self.ask`` reaches a child that ``act`` spawned and whose SPAWN row has not
        been delivered: create it now as that delivery would (with its ``on_create`` arguments
        and its parent), so that the ask does not get-or-create it bare. The row, delivered
        later, finds it and does nothing; a replay finds it too: it is made once."""
        aid = actor_id(target.type_name, target.key)
        if aid in self.awake or self.directory.get(aid) is not None:
            return
        row = self._spawned_in_outbox(act, target)
        if row is None:
            return
        (init,) = self.codec.decode(row.payload)
        sender = act.sender_id if row.id >= act.incarnation_from else act.earlier_sender_id
        self.directory.create(aid, target.type_name, target.key, init, parent=sender)
        self.known_actors += 1

    def _outbox_spawn(
        self,
        ctx: context.HandlerContext,
        actor_type: type[Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        key: str | None,
    ) -> Ref[Any]:
        """``self.spawn`` inside a turn: the child is created only if the turn commits."""
        ref = self.ref(actor_type, uuid.uuid4().hex if key is None else key)
        spec = ref._spec
        spec.on_create.check_arguments(spec.name, args, kwargs)
        init = self.codec.encode([list(args), kwargs]) if (args or kwargs) else None
        payload = self.codec.encode([init])
        check_payload(self, payload, f"{spec.name}.on_create arguments")
        ctx.activation.outbox_add(ref, SPAWN, payload)
        return ref

    def _check_open(self) -> None:
        if self.closed or self.closing.is_set():
            raise RuntimeClosedError("the runtime is closed")

    @staticmethod
    def _refuse_inside_turn(what: str, instead: str) -> None:
        """For a ``Ref``: refuse a call made inside a turn (it would not roll back with it)."""
        _refuse_inside_turn(what, instead)

    def _report(self, text: str) -> None:
        """Record an operational problem that has no caller to raise to."""
        self.reports.append(text)

    # -- opening and closing --------------------------------------------------------------

    def _open_files(self) -> None:
        self._open_lock_and_directory()
        self.runtime_id = self.directory.runtime_id()
        self.known_actors = self.directory.count()
        self.stopped_actors = self.directory.stopped_count()
        self.actors_with_timers = self.directory.with_timers()
        self.next_wake_at = self.directory.next_wake_at()

    def _open_lock_and_directory(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        # Inspection tools (torpor status, ls) take a shared lock for an instant to see whether
        # the runtime is open: retry briefly before concluding another runtime holds it.
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.005)
                    continue
                holder = _lock_holder(fd)
                os.close(fd)
                raise RuntimeLockedError(
                    f"{self.root} is open in {holder}; one runtime directory belongs to one "
                    "process at a time"
                ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # who holds it, for error messages
        self._lock_fd = fd
        try:
            if self.replication is not None:
                self.replication.restore_directory_if_missing(self.root)
            self.directory = Directory(self.root / DIRECTORY_FILE, synchronous=self.synchronous)
        except BaseException:
            self._release_lock()
            raise

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _pending_work(self) -> list[tuple[TypeSpec, str]]:
        """The actors the directory says may have work (of registered types)."""
        found = []
        for entry in self.directory.pending():
            spec = self.specs.get(entry.type)
            if spec is None:
                self.unknown_types.add(entry.type)
                continue
            found.append((spec, entry.key))
        return found

    async def _recover(self, pending: list[tuple[TypeSpec, str]]) -> None:
        """Wake every actor with pending work, at most ``max_awake`` at a time."""
        await self._deliver_notices()
        for spec, key in pending:
            if self.closing.is_set():
                return
            try:
                await self._activate(spec, key)
            except RuntimeClosedError:
                return
            except Exception as exc:
                self._report(f"could not resume {spec.name} {key!r}: {exc!r}")

    async def _shutdown(self) -> None:
        """Let turns in progress finish for up to ``shutdown_grace`` seconds, then cancel them
        (they roll back, and run again at the next open)."""
        self.closing.set()
        for act in list(self.awake.values()):
            self._close(act)
        self._room_changed()
        with anyio.move_on_after(self.shutdown_grace):
            for act in list(self.awake.values()):
                await act.closed.wait()
        for act in list(self.awake.values()):
            act.scope.cancel()
        for act in list(self.awake.values()):
            await act.closed.wait()

    def _close_files(self) -> None:
        self.closed = True
        for stream in self._subscribers:  # subscribers' loops end once they have read the rest
            stream.close()
        self._subscribers.clear()
        for waiters in self.parked_waiters.values():
            for waiter in waiters.values():
                waiter.set_error(RuntimeClosedError("the runtime closed before this was applied"))
        self.parked_waiters.clear()
        try:
            for act in self.awake.values():
                try:
                    act.close_files()
                except Exception as exc:  # close the others all the same
                    self._report(f"closing {act.spec.name} {act.key!r}: {exc!r}")
            self.awake.clear()
            self.directory.close()
        finally:
            self._release_lock()


@contextlib.asynccontextmanager
async def open_runtime(
    path: str | os.PathLike[str],
    *,
    types: Iterable[type],
    message_types: Iterable[type] = (),
    synchronous: str = "NORMAL",
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    max_key_bytes: int = DEFAULT_MAX_KEY_BYTES,
    idempotency_ttl: float = DEFAULT_IDEMPOTENCY_TTL,
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    max_awake: int | None = None,
    clock: Callable[[], float] = time.time,
    replica: ReplicaStore | None = None,
    replication: Replication | None = None,
) -> AsyncIterator[Runtime]:
    """Open (creating if needed) the runtime stored under ``path``; resume pending actors.

    An actor hibernates after ``idle_timeout`` seconds without work; at most ``max_awake`` are
    awake at once (by default, as many as this process's file-descriptor limit allows, see
    ``default_max_awake``), the least recently used idle ones hibernating to make room.

    ``clock`` gives epoch seconds for durable timers (``time.time``; tests pass a virtual one,
    e.g. ``lambda: start + anyio.current_time()`` under virtual time: trio's ``MockClock``, or
    a looptime event loop on asyncio, as ``actors.testing.check_crashes`` runs them).

    On exit, turns in progress get ``shutdown_grace`` seconds to finish; then they are cancelled
    and rolled back. Queued messages stay in their mailboxes and run when the runtime is next
    opened.
    """
    rt = Runtime(
        Path(path),
        types,
        message_types=message_types,
        synchronous=synchronous,
        max_message_bytes=max_message_bytes,
        max_key_bytes=max_key_bytes,
        idempotency_ttl=idempotency_ttl,
        shutdown_grace=shutdown_grace,
        idle_timeout=idle_timeout,
        max_awake=max_awake,
        clock=clock,
        replica=replica,
        replication=replication,
    )
    rt._open_files()
    if rt.replication is not None:
        try:
            rt.replication.start()
        except BaseException:
            rt._close_files()
            raise
    body_error: BaseException | None = None
    try:
        async with anyio.create_task_group() as tg:
            rt._task_group = tg
            supervisor = anyio.CancelScope()

            async def supervise() -> None:
                with supervisor:
                    await rt._supervise()

            tg.start_soon(supervise, name="torpor supervisor")
            replicator = anyio.CancelScope()
            if rt.replication is not None:
                engine = rt.replication

                async def replicate() -> None:
                    with replicator:
                        await engine.run()

                tg.start_soon(replicate, name="torpor replication")
            pending = rt._pending_work()
            if rt.replication is not None:
                # Pending actors may hold commits an earlier process did not ship (it died while
                # they hibernated): replicated() waits until they are woken and shipped.
                rt.replication.note_pending(pending)
            tg.start_soon(rt._recover, pending, name="torpor recovery")
            try:
                yield rt
            except anyio.get_cancelled_exc_class():
                raise
            except BaseException as exc:
                # Re-raised below, outside the task group, so that the caller sees its own
                # exception and not a one-element ExceptionGroup.
                body_error = exc
            finally:
                # Graceful: turns in progress finish. Under an outer cancellation this raises
                # at once, the task group cancels the turns, and they roll back.
                supervisor.cancel()
                await rt._shutdown()
                if rt.replication is not None:
                    if not rt.crashed:
                        await rt.replication.close()
                    replicator.cancel()
    finally:
        rt._close_files()
    if body_error is not None:
        raise body_error


#: Seconds before a timer wake-up that failed (a file briefly unopenable) is tried again.
TIMER_WAKE_RETRY = 1.0

#: The outbox method name of a child's creation (never a handler name: those cannot start
#: with an underscore).
SPAWN = "__spawn__"


#: Seconds to retry taking the runtime's LOCK before reporting it held.
LOCK_WAIT = 0.2


def _lock_holder(fd: int) -> str:
    """Who holds the runtime's ``LOCK``, from the pid its holder wrote there: "another process
    (pid N)", or, when N is this process's own pid, "this very process" (an ``open_runtime`` of
    the same directory not closed yet, or a process of another pid namespace with that pid)."""
    try:
        pid = os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        return "another process"
    if not pid.isdigit():
        return "another process"
    if int(pid) == os.getpid():
        return (
            f"this very process (pid {pid}, by an open_runtime not closed yet; or by a process "
            "of another container that has the same pid)"
        )
    return f"another process (pid {pid})"


def _quantile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _new_message(
    seq: int,
    sender: str | None,
    sender_seq: int | None,
    method: str,
    payload: bytes,
    idempotency_key: str | None,
) -> Message:
    return Message(seq, sender, sender_seq, method, payload, idempotency_key)


def _ref_parts(obj: Any) -> tuple[str, str] | None:
    if isinstance(obj, Ref):
        return (obj.type_name, obj.key)
    return None


def _check_idempotency_key(key: object) -> None:
    if key is None:
        return
    if not isinstance(key, str) or not key or len(key) > 512:
        raise ValueError(
            f"idempotency_key must be a non-empty str of at most 512 characters (got {key!r})"
        )


def _not_found(spec: TypeSpec, key: str) -> ActorNotFoundError:
    return ActorNotFoundError(
        f"{spec.name} {key!r} does not exist, and {spec.name}.on_create needs arguments; "
        f"create it with rt.spawn({spec.cls.__qualname__}, ..., key={key!r})"
    )
