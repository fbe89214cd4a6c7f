"""``Ref``: a handle on one actor, ``(type, key)``, and what it needs of the runtime."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, final

import anyio
import anyio.lowlevel

if TYPE_CHECKING:
    from .spec import TypeSpec

A = TypeVar("A")
R = TypeVar("R")


class RefHost(Protocol):
    """What a ``Ref``, and an actor through its own ref, reach of their runtime
    (``runtime/engine.py``'s ``Runtime``)."""

    def clock(self) -> float: ...

    def _refuse_inside_turn(self, what: str, instead: str) -> None: ...

    def ref(self, actor_type: type[A], key: str) -> Ref[A]: ...

    async def _send(
        self,
        spec: TypeSpec,
        key: str,
        method: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        idempotency_key: str | None,
        want_reply: bool = False,
    ) -> Any: ...

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
    ) -> Any: ...

    async def signal(
        self, ref: Ref[Any], name: str, payload: Any = None, *, idempotency_key: str | None = None
    ) -> bool: ...


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
        self._runtime._refuse_inside_turn("ref.send", "self.send(ref, ...)")
        await self._runtime._send(self._spec, self.key, method, args, kwargs, idempotency_key)
        await anyio.lowlevel.cancel_shielded_checkpoint()

    async def signal(
        self, name: str, payload: Any = None, *, idempotency_key: str | None = None
    ) -> bool:
        """Deliver event ``name`` to this actor: a turn waiting in
        ``self.wait_for_event(name)`` gets ``payload``; with no such turn, the event waits
        (oldest first) for the next one. Events never queue behind turns. Returns ``False``
        if ``idempotency_key`` was used already (the event was not stored twice)."""
        return await self._runtime.signal(self, name, payload, idempotency_key=idempotency_key)

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
