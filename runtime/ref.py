"""``Ref``: a handle on one actor, ``(type, key)``, its calls with options (``RefOptions``),
and what it needs of the runtime."""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import (
    TYPE_CHECKING,
    Any,
    Concatenate,
    Generic,
    ParamSpec,
    Protocol,
    TypeVar,
    final,
    overload,
)

import anyio
import anyio.lowlevel

if TYPE_CHECKING:
    from .clock import Clock
    from .records import StreamEntry
    from .spec import TypeSpec

A = TypeVar("A")
R = TypeVar("R")
P = ParamSpec("P")


class RefHost(Protocol):
    """What a ``Ref``, and an actor through its own ref, reach of their runtime
    (``runtime/engine.py``'s ``Engine``)."""

    clock: Clock

    def refuse_inside_turn(self, what: str, instead: str) -> None: ...

    def ref(self, actor_type: type[A], key: str) -> Ref[A]: ...

    async def send(
        self,
        spec: TypeSpec,
        key: str,
        method: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        idempotency_key: str | None,
        want_reply: bool = False,
    ) -> Any: ...

    async def ask(
        self,
        spec: TypeSpec,
        key: str,
        method: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        idempotency_key: str | None,
        *,
        from_turn: bool = False,
    ) -> Any: ...

    async def signal(
        self, ref: Ref[Any], name: str, payload: Any = None, *, idempotency_key: str | None = None
    ) -> bool: ...

    async def delete(self, ref: Ref[Any]) -> None: ...

    def open_stream(
        self, spec: TypeSpec, key: str, topic: str, after: int
    ) -> AbstractAsyncContextManager[Any]: ...

    def open_watch(
        self, spec: TypeSpec, key: str, method: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> AbstractAsyncContextManager[Any]: ...


@final
class Ref(Generic[A]):
    """A handle on one actor, ``(type, key)``. Creating or holding one costs no I/O."""

    __slots__ = ("_runtime", "_spec", "key")

    def __init__(self, runtime: RefHost, spec: TypeSpec, key: str) -> None:
        self._runtime = runtime
        self._spec = spec
        self.key = key

    @property
    def type_name(self) -> str:
        """The persisted name of the actor's type."""
        return self._spec.name

    @property
    def actor_type(self) -> type[A]:
        """The actor's class (an ``Actor`` subclass registered with the runtime)."""
        return self._spec.cls

    def __repr__(self) -> str:
        return f"Ref({self._spec.name}, {self.key!r})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Ref) and other._spec.name == self._spec.name and other.key == self.key
        )

    def __hash__(self) -> int:
        return hash((self._spec.name, self.key))

    # A handler is named by its function (``Counter.incr``: type checkers then check the
    # arguments and know what ``ask`` returns) or by its name (a string, for tools). PEP 612
    # allows no keyword option between ``*args`` and ``**kwargs``, so options come first:
    # ``ref.options(idempotency_key=...).send(...)``.

    @overload
    async def send(
        self,
        method: Callable[Concatenate[A, P], Awaitable[Any]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> None: ...

    @overload
    async def send(
        self, method: str, /, *args: Any, idempotency_key: str | None = None, **kwargs: Any
    ) -> None: ...

    async def send(self, method: Any, /, *args: Any, **kwargs: Any) -> None:
        """Send a message; return once it is durable in the actor's mailbox.

        ``method`` is the handler (``Counter.incr``) or its name; ``args`` and ``kwargs`` are
        its arguments. ``ref.options(idempotency_key=...).send(...)`` makes a retried send a
        no-op. (Deprecated: ``idempotency_key=`` among the arguments of a handler function.)
        """
        key = _idempotency_key_argument(method, kwargs, "send") if kwargs else None
        # (the body of _deliver, inlined: a send is the hottest path there is)
        await anyio.lowlevel.checkpoint_if_cancelled()
        self._runtime.refuse_inside_turn("ref.send", "self.send(ref, ...)")
        await self._runtime.send(self._spec, self.key, method, args, kwargs, key)
        await anyio.lowlevel.cancel_shielded_checkpoint()

    @overload
    async def ask(
        self,
        method: Callable[Concatenate[A, P], Awaitable[R]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> R: ...

    @overload
    async def ask(
        self, method: str, /, *args: Any, idempotency_key: str | None = None, **kwargs: Any
    ) -> Any: ...

    async def ask(self, method: Any, /, *args: Any, **kwargs: Any) -> Any:
        """Send a message and return the handler's result (or raise its typed failure).

        ``ref.options(idempotency_key=...).ask(...)`` makes a retried ask apply nothing twice
        and return the first call's result. A ``@query`` handler runs at once against
        committed state, beside any turn in progress. (Deprecated: ``idempotency_key=`` among
        the arguments of a handler function.)
        """
        key = _idempotency_key_argument(method, kwargs, "ask") if kwargs else None
        return await self._runtime.ask(self._spec, self.key, method, args, kwargs, key)

    def options(self, *, idempotency_key: str | None = None) -> RefOptions[A]:
        """This ref's ``send`` and ``ask`` with options: ``idempotency_key``, unique to one
        logical call (a retried call with the same key applies nothing twice)."""
        return RefOptions(self, idempotency_key)

    async def signal(
        self, name: str, payload: Any = None, *, idempotency_key: str | None = None
    ) -> bool:
        """Deliver event ``name`` to this actor: a turn waiting in
        ``self.wait_for_event(name)`` gets ``payload``; with no such turn, the event waits
        (oldest first) for the next one. Events never queue behind turns. Returns ``False``
        if ``idempotency_key`` was used already (the event was not stored twice)."""
        return await self._runtime.signal(self, name, payload, idempotency_key=idempotency_key)

    async def delete(self) -> None:
        """Delete this actor: its files, its directory row, its queued messages (their askers
        get :class:`ActorDeletedError`), its timers and, with a replica, its history there. A
        turn in progress is cancelled (it rolls back). Returns once it is gone (with a replica:
        once the store has its tombstone and no longer lists it). :class:`ActorNotFoundError`
        if there is no such actor. The key may be used again: a new actor, with nothing of
        this one. Inside a turn, use ``self.destroy()`` (for itself) instead. A run (an actor
        of a workflow) that has not finished is cancelled first: its starter gets its outcome
        (:class:`RunCancelledError`) before it goes.
        """
        await anyio.lowlevel.checkpoint_if_cancelled()
        self._runtime.refuse_inside_turn("ref.delete", "self.destroy() for the actor itself")
        await self._runtime.delete(self)

    def open_stream(
        self, topic: str, *, after: int = 0
    ) -> AbstractAsyncContextManager[AsyncIterator[StreamEntry]]:
        """Read this actor's stream ``topic`` from after offset ``after``, then follow it live::

            async with ref.open_stream("tokens", after=last_seen) as entries:
                async for entry in entries:
                    last_seen = entry.offset

        ``after=0`` starts at the oldest entry kept (retention: ``Actor.stream_max_entries``,
        ``Actor.stream_max_age``). Only committed entries are yielded, each once and in offset
        order, so reopening with the last offset seen misses nothing and repeats nothing. Reading
        does not wake a hibernated actor. Entries are :class:`StreamEntry` records; a ``reset``
        entry says to drop the chunks of a step attempt that did not complete. The stream of
        an actor not created yet is empty until it is (opening it creates nothing)."""
        return self._runtime.open_stream(self._spec, self.key, topic, after)

    @overload
    def open_watch(
        self,
        method: Callable[Concatenate[A, P], Awaitable[R]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> AbstractAsyncContextManager[AsyncIterator[R]]: ...

    @overload
    def open_watch(
        self, method: str, /, *args: Any, **kwargs: Any
    ) -> AbstractAsyncContextManager[AsyncIterator[Any]]: ...

    def open_watch(
        self, method: Any, /, *args: Any, **kwargs: Any
    ) -> AbstractAsyncContextManager[AsyncIterator[Any]]:
        """Watch a ``@query``'s result: now, then after each commit of this actor that changed
        it (equal results are not repeated)::

            async with ref.open_watch(Chat.summary) as values:
                async for summary in values: ...

        Each look is an ordinary query (it wakes the actor, which may hibernate again between
        commits: a watch alone does not keep it awake). A message handler is a ``TypeError``."""
        return self._runtime.open_watch(self._spec, self.key, method, args, kwargs)

    async def _deliver(
        self, method: Any, args: tuple[Any, ...], kwargs: dict[str, Any], key: str | None
    ) -> None:
        await anyio.lowlevel.checkpoint_if_cancelled()
        self._runtime.refuse_inside_turn("ref.send", "self.send(ref, ...)")
        await self._runtime.send(self._spec, self.key, method, args, kwargs, key)
        await anyio.lowlevel.cancel_shielded_checkpoint()

    async def _request(
        self, method: Any, args: tuple[Any, ...], kwargs: dict[str, Any], key: str | None
    ) -> Any:
        return await self._runtime.ask(self._spec, self.key, method, args, kwargs, key)


@final
class RefOptions(Generic[A]):
    """A ref's calls with options, from :meth:`Ref.options`::

        await ref.options(idempotency_key="deposit-0001").ask(Wallet.deposit, 500)

    Every keyword argument of ``send`` and ``ask`` here goes to the handler.
    """

    __slots__ = ("idempotency_key", "ref")

    def __init__(self, ref: Ref[A], idempotency_key: str | None) -> None:
        self.ref = ref
        self.idempotency_key = idempotency_key

    def __repr__(self) -> str:
        return f"{self.ref!r}.options(idempotency_key={self.idempotency_key!r})"

    @overload
    async def send(
        self,
        method: Callable[Concatenate[A, P], Awaitable[Any]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> None: ...

    @overload
    async def send(self, method: str, /, *args: Any, **kwargs: Any) -> None: ...

    async def send(self, method: Any, /, *args: Any, **kwargs: Any) -> None:
        """:meth:`Ref.send` with these options."""
        await self.ref._deliver(method, args, kwargs, self.idempotency_key)

    @overload
    async def ask(
        self,
        method: Callable[Concatenate[A, P], Awaitable[R]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> R: ...

    @overload
    async def ask(self, method: str, /, *args: Any, **kwargs: Any) -> Any: ...

    async def ask(self, method: Any, /, *args: Any, **kwargs: Any) -> Any:
        """:meth:`Ref.ask` with these options."""
        return await self.ref._request(method, args, kwargs, self.idempotency_key)


def _idempotency_key_argument(method: Any, kwargs: dict[str, Any], what: str) -> str | None:
    """Take the ``idempotency_key=`` keyword of a ``send`` or ``ask`` out of ``kwargs``.

    With a handler's name (a string: untyped anyway) it is the plain form. With a handler
    function it is deprecated, as type checkers cannot check such a call.
    """
    if "idempotency_key" not in kwargs:
        return None
    key: str | None = kwargs.pop("idempotency_key")
    if not isinstance(method, str):
        name = getattr(method, "__qualname__", "method")
        warnings.warn(
            f"ref.{what}({name}, ..., idempotency_key=...) is deprecated: write "
            f"ref.options(idempotency_key=...).{what}({name}, ...), whose arguments a type "
            "checker can check",
            DeprecationWarning,
            stacklevel=3,
        )
    return key
