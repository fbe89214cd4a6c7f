"""The runtime: registry of actor types, refs, activations, sending and delivery.

All SQLite work happens on the event loop's thread, synchronously: a commit in WAL mode with
``synchronous=NORMAL`` costs microseconds, far less than a hop to a worker thread, and it keeps
every actor's state single-threaded like a Durable Object's.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, Generic, TypeVar

import anyio
import anyio.lowlevel
import attrs

from . import context
from .activation import Activation, Waiter, check_payload
from .codec import Codec
from .datastore import KV, Sql
from .directory import Directory
from .errors import (
    ActorFailedError,
    ActorNotFoundError,
    RuntimeClosedError,
    RuntimeLockedError,
    UnknownActorTypeError,
)
from .layout import DIRECTORY_FILE, LOCK_FILE, actor_id
from .mailbox import Message
from .spec import DEFAULT_MAX_KEY_BYTES, TypeSpec, check_key, index_types

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


@attrs.frozen
class RuntimeStatistics:
    """A snapshot of the runtime's counters, from :meth:`Runtime.statistics`."""

    awake: int
    messages_sent: int
    turns: int
    messages_applied: int
    retries: int
    dead_letters: int
    unknown_types: tuple[str, ...]


@attrs.frozen
class DeadLetter:
    """A message that failed on every allowed attempt, kept in the actor's mailbox."""

    seq: int
    method: str
    args: tuple[Any, ...] | None
    kwargs: dict[str, Any] | None
    sender: str | None
    idempotency_key: str | None
    attempts: int
    error_type: str
    error_message: str
    traceback: str
    failed_at: float


class Ref(Generic[A]):
    """A handle on one actor, ``(type, key)``. Creating or holding one costs no I/O."""

    __slots__ = ("_runtime", "_spec", "key")

    def __init__(self, runtime: Runtime, spec: TypeSpec, key: str) -> None:
        self._runtime = runtime
        self._spec = spec
        self.key = key

    @property
    def type_name(self) -> str:
        """The persisted name of the actor's type."""
        return self._spec.name

    @property
    def actor_type(self) -> type[A]:
        return self._spec.cls

    def __repr__(self) -> str:
        return f"Ref({self._spec.name}, {self.key!r})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Ref) and other._spec.name == self._spec.name and other.key == self.key
        )

    def __hash__(self) -> int:
        return hash((self._spec.name, self.key))

    async def send(
        self,
        method: Callable[..., Awaitable[Any]] | str,
        /,
        *args: Any,
        idempotency_key: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Send a message; return once it is durable in the actor's mailbox.

        With ``idempotency_key``, a retried send with the same key stores nothing new.
        """
        await anyio.lowlevel.checkpoint_if_cancelled()
        _refuse_inside_turn("ref.send", "self.send(ref, ...)")
        self._runtime._send(self._spec, self.key, method, args, kwargs, idempotency_key)
        await anyio.lowlevel.cancel_shielded_checkpoint()

    async def ask(
        self,
        method: Callable[..., Awaitable[R]] | str,
        /,
        *args: Any,
        idempotency_key: str | None = None,
        **kwargs: Any,
    ) -> R:
        """Send a message and return the handler's result (or raise its typed failure).

        With ``idempotency_key``, a retried ask with the same key applies nothing twice and
        returns the first call's result. A ``@query`` handler runs at once against committed
        state, beside any turn in progress.
        """
        return await self._runtime._ask(self._spec, self.key, method, args, kwargs, idempotency_key)  # type: ignore[no-any-return]


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
        self._task_group: Any = None
        self._lock_fd: int | None = None

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
        self.directory.create(aid, spec.name, ref.key, init)
        try:
            self._activate(spec, ref.key)
        except BaseException:
            self.directory.forget(aid)  # nothing was acknowledged: leave no half-made actor
            raise
        await anyio.lowlevel.cancel_shielded_checkpoint()
        return ref

    def statistics(self) -> RuntimeStatistics:
        """A frozen snapshot of the runtime's counters."""
        return RuntimeStatistics(
            awake=len(self.awake),
            messages_sent=self.stats_sent,
            turns=self.stats_turns,
            messages_applied=self.stats_applied,
            retries=self.stats_retries,
            dead_letters=self.stats_dead_letters,
            unknown_types=tuple(sorted(self.unknown_types)),
        )

    async def dead_letters(self, ref: Ref[Any]) -> list[DeadLetter]:
        """The dead letters kept in ``ref``'s mailbox, oldest first."""
        await anyio.lowlevel.checkpoint()
        act = self._existing(ref)
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
        act = self._existing(ref)
        message = act.mailbox.replay_dead_letter(seq) if act is not None else None
        if act is None or message is None:
            raise LookupError(f"{ref!r} has no dead letter {seq}")
        act.accept(message)

    async def drop_dead_letter(self, ref: Ref[Any], seq: int) -> None:
        """Delete dead letter ``seq`` for good."""
        await anyio.lowlevel.checkpoint()
        act = self._existing(ref)
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

    def _send(
        self,
        spec: TypeSpec,
        key: str,
        method: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        idempotency_key: str | None,
    ) -> tuple[Activation, int]:
        self._check_open()
        name, payload, is_query = self._encode_call(spec, method, args, kwargs)
        if is_query:
            raise TypeError(f"{spec.name}.{name} is a @query: ask it, do not send it")
        _check_idempotency_key(idempotency_key)
        act = self._activate(spec, key)
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
        return act, seq

    async def _ask(
        self,
        spec: TypeSpec,
        key: str,
        method: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        idempotency_key: str | None,
    ) -> Any:
        await anyio.lowlevel.checkpoint_if_cancelled()
        handler = spec.handler(method)
        if handler.is_query:
            self._check_open()
            _, payload, _ = self._encode_call(spec, method, args, kwargs)
            if idempotency_key is not None:
                raise TypeError(
                    f"{spec.name}.{handler.name} is a @query: it changes nothing, so an "
                    "idempotency_key does not apply"
                )
            return await self._run_query(spec, key, handler.name, payload)
        _refuse_inside_turn("ref.ask", "self.send(ref, ...) and a reply message")
        act, seq = self._send(spec, key, method, args, kwargs, idempotency_key)
        waiter: Waiter = act.waiter(seq)
        await waiter.event.wait()
        if waiter.error is not None:
            raise waiter.error
        assert waiter.payload is not None
        return self.codec.decode(waiter.payload)

    async def _run_query(self, spec: TypeSpec, key: str, name: str, payload: bytes) -> Any:
        act = self._activate(spec, key)
        await act.settled.wait()
        if act.failed is not None:
            error = ActorFailedError(f"{spec.name} {key!r} cannot run: {act.failed!r}")
            raise error from act.failed
        args, kwargs = self.codec.decode(payload)
        reader = act.reader()
        ctx = context.HandlerContext(
            act, context.QUERY, None, Sql(reader), KV(None, reader, self.codec)
        )
        token = context.CURRENT.set(ctx)
        try:
            result = await spec.handlers[name].fn(act.instance, *args, **kwargs)
        finally:
            ctx.active = False
            context.CURRENT.reset(token)
        return self.codec.decode(self.codec.encode(result))

    async def _deliver(
        self, spec: TypeSpec, key: str, method: str, payload: bytes, sender: str, sender_seq: int
    ) -> None:
        """Deliver one outbox row to its target's mailbox (deduplicated by sender cursor)."""
        act = self._activate(spec, key)
        seq, appended = act.mailbox.append_deduplicated(
            method, payload, sender=sender, sender_seq=sender_seq, idempotency_key=None
        )
        if appended and seq is not None:
            self.stats_sent += 1
            act.accept(_new_message(seq, sender, sender_seq, method, payload, None))
        await anyio.lowlevel.checkpoint()

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
            if aid not in self.awake and self.directory.get(aid) is None:
                raise _not_found(target._spec, target.key)
        ctx.activation.outbox_add(target, name, payload)

    # -- activations ----------------------------------------------------------------------

    def _activate(self, spec: TypeSpec, key: str) -> Activation:
        aid = actor_id(spec.name, key)
        act = self.awake.get(aid)
        if act is not None:
            return act
        self._check_open()
        entry = self.directory.get(aid)
        if entry is None:
            if spec.requires_create_arguments():
                raise _not_found(spec, key)
            self.directory.mark_pending(aid, spec.name, key)
        elif not entry.pending:
            self.directory.mark_pending(aid, spec.name, key)
        act = Activation(self, spec, key, aid, Ref(self, spec, key), entry.init if entry else None)
        act.open()
        self.awake[aid] = act
        self._task_group.start_soon(act.run, name=f"torpor actor {spec.name} {key!r}")
        return act

    def _existing(self, ref: Ref[Any]) -> Activation | None:
        """The activation of ``ref`` if the actor exists (waking it), else ``None``."""
        self._check_open()
        aid = actor_id(ref.type_name, ref.key)
        if aid not in self.awake and self.directory.get(aid) is None:
            return None
        return self._activate(ref._spec, ref.key)

    def _check_open(self) -> None:
        if self.closed or self.closing.is_set():
            raise RuntimeClosedError("the runtime is closed")

    def _report(self, text: str) -> None:
        """Record an operational problem that has no caller to raise to."""
        self.reports.append(text)

    # -- opening and closing --------------------------------------------------------------

    def _open_files(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RuntimeLockedError(
                f"{self.root} is open in another process; one runtime directory belongs to one "
                "process at a time"
            ) from None
        self._lock_fd = fd
        try:
            self.directory = Directory(self.root / DIRECTORY_FILE, synchronous=self.synchronous)
        except BaseException:
            self._release_lock()
            raise

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _recover(self) -> None:
        """Wake every actor that the directory says may have work."""
        for entry in self.directory.pending():
            spec = self.specs.get(entry.type)
            if spec is None:
                self.unknown_types.add(entry.type)
                continue
            try:
                self._activate(spec, entry.key)
            except Exception as exc:
                self._report(f"could not resume {entry.type} {entry.key!r}: {exc!r}")

    async def _shutdown(self) -> None:
        """Let turns in progress finish for up to ``shutdown_grace`` seconds, then cancel them
        (they roll back, and run again at the next open)."""
        self.closing.set()
        for act in list(self.awake.values()):
            act.closing = True
            act.work.set()
        with anyio.move_on_after(self.shutdown_grace):
            for act in list(self.awake.values()):
                await act.stopped.wait()
        for act in list(self.awake.values()):
            act.scope.cancel()
        for act in list(self.awake.values()):
            await act.stopped.wait()

    def _close_files(self) -> None:
        self.closed = True
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
) -> AsyncIterator[Runtime]:
    """Open (creating if needed) the runtime stored under ``path``; resume pending actors.

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
    )
    rt._open_files()
    body_error: BaseException | None = None
    try:
        async with anyio.create_task_group() as tg:
            rt._task_group = tg
            rt._recover()
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
                await rt._shutdown()
    finally:
        rt._close_files()
    if body_error is not None:
        raise body_error


def _new_message(
    seq: int,
    sender: str | None,
    sender_seq: int | None,
    method: str,
    payload: bytes,
    idempotency_key: str | None,
) -> Message:
    return Message(seq, sender, sender_seq, method, payload, idempotency_key)


def _refuse_inside_turn(what: str, instead: str) -> None:
    ctx = context.CURRENT.get()
    if ctx is not None and ctx.active and ctx.mode == context.TURN:
        raise RuntimeError(
            f"{what} inside a handler would take effect even if the turn rolled back, and again "
            f"on every retry; use {instead} instead"
        )


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
