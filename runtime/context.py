"""The handler context: which actor, which message, which connection, for the running handler.

It lives in a ``ContextVar`` so that ``self.sql`` in a turn and ``self.sql`` in a ``@query``
running beside it (another task) reach different connections of the same actor.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from .files.datastore import KV, Sql

if TYPE_CHECKING:
    from .files.mailbox import Message
    from .host import ActorHost

TURN = "turn"
QUERY = "query"


class HandlerContext:
    __slots__ = ("activation", "active", "instance", "kv", "message", "mode", "sql", "turn")

    def __init__(
        self,
        activation: ActorHost,
        mode: str,
        message: Message | None,
        sql: Sql,
        kv: KV,
    ) -> None:
        self.activation = activation
        self.instance = activation.instance
        self.mode = mode
        self.message = message
        self.sql = sql
        self.kv = kv
        self.active = True  # false once the handler returned (tasks it started keep the var)
        # The durable steps of a message handler: a steps.TurnState (steps.current_durable
        # gives it typed; this module is below steps).
        self.turn: Any = None


CURRENT: ContextVar[HandlerContext | None] = ContextVar("torpor_handler", default=None)


def current(instance: Any, what: str) -> HandlerContext:
    """The context of the handler of ``instance`` running in this task, or a clear error."""
    ctx = CURRENT.get()
    if ctx is None or ctx.instance is not instance or not ctx.active:
        raise RuntimeError(
            f"{what} is available only while a handler of this actor runs (inside one of its "
            "async methods, in the task the runtime runs it in)"
        )
    return ctx


def current_turn(instance: Any, what: str) -> HandlerContext:
    ctx = current(instance, what)
    if ctx.mode != TURN:
        raise RuntimeError(f"{what} is not allowed inside a @query handler: queries are read-only")
    return ctx


def refuse_inside_turn(what: str, instead: str) -> None:
    """Refuse a call that must not run inside a turn (it would not roll back with it)."""
    ctx = CURRENT.get()
    if ctx is not None and ctx.active and ctx.mode == TURN:
        raise RuntimeError(
            f"{what} inside a handler would take effect even if the turn rolled back, and again "
            f"on every retry; use {instead} instead"
        )
