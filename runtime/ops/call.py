"""One call into a closed runtime from outside its program (``torpor send`` and ``ask``).

Each opens the runtime with the user's actor classes (its pending actors of those types resume,
as at any open), makes the call through the runtime's API, and closes gracefully (turns in
progress get the runtime's shutdown grace; queued messages stay for its next open). The runtime
must be closed: :class:`RuntimeLockedError` otherwise.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from ..records import TurnInfo
from ..replica import ReplicaStore

#: Seconds between two looks of :func:`ask` at whether the actor's turn waits durably.
LOOK_EVERY = 0.5


@attrs.frozen
class Sent:
    """A message sent (:func:`send`)."""

    #: ``False``: a repeat of a call sent with the same idempotency key; nothing was stored
    stored: bool
    #: the message's sequence number in the actor's mailbox (for a repeat, the first one's, or
    #: 0 when it is gone)
    seq: int


@attrs.frozen
class Asked:
    """The outcome of :func:`ask`: its reply, or none within the timeout."""

    replied: bool
    reply: Any = None
    #: without a reply: the actor's turns in flight when the timeout passed (the message stays
    #: queued, and its turn goes on when the runtime is next opened)
    turns: tuple[TurnInfo, ...] = ()


def send(
    root: Path,
    types: Sequence[type],
    actor_type: type,
    key: str,
    handler: str,
    args: Sequence[Any] = (),
    kwargs: dict[str, Any] | None = None,
    *,
    idempotency_key: str | None = None,
    replica: ReplicaStore | None = None,
) -> Sent:
    """Send ``handler(*args, **kwargs)`` to the actor ``actor_type`` ``key`` of the runtime at
    ``root``, opened with ``types`` (and ``replica``, as its program opens it)."""
    import anyio

    from ..runtime import open_runtime

    async def run() -> Sent:
        async with open_runtime(root, types=types, replica=replica) as rt:
            ref: Any = rt.ref(actor_type, key)
            # Ref.send, saying whether the idempotency key made it a repeat (nothing stored).
            _, seq, stored = await rt._engine.send(
                ref._spec, ref.key, handler, tuple(args), dict(kwargs or {}), idempotency_key
            )
            return Sent(stored=stored, seq=seq)

    return anyio.run(run)


def ask(
    root: Path,
    types: Sequence[type],
    actor_type: type,
    key: str,
    handler: str,
    args: Sequence[Any] = (),
    kwargs: dict[str, Any] | None = None,
    *,
    idempotency_key: str | None = None,
    replica: ReplicaStore | None = None,
    timeout: float | None = None,
    waiting: Callable[[Sequence[TurnInfo]], None] | None = None,
) -> Asked:
    """Ask ``handler(*args, **kwargs)`` of the actor, as :func:`send` sends it, and wait for
    its reply for at most ``timeout`` seconds (``None``: for as long as it takes). The handler's
    exception is raised as ``Ref.ask`` raises it.

    Meanwhile, ``waiting(turns)`` is called once, the first time one of the actor's turns in
    flight waits durably (a step waiting for an event, or in a sleep): no reply comes before
    that wait ends. An error in it is ignored (it is only a note)."""
    import anyio

    from ..runtime import open_runtime

    options = {"idempotency_key": idempotency_key} if idempotency_key else {}

    async def run() -> Asked:
        async with open_runtime(root, types=types, replica=replica) as rt:
            ref: Any = rt.ref(actor_type, key)

            async def look() -> None:
                with contextlib.suppress(Exception):  # only a note
                    while True:
                        turns = await rt.turns(ref)
                        if any(s.status == "waiting" for t in turns for s in t.steps):
                            break
                        await anyio.sleep(LOOK_EVERY)
                    if waiting is not None:
                        waiting(turns)

            outcome: list[Any] = []
            with anyio.move_on_after(timeout):
                async with anyio.create_task_group() as group:
                    group.start_soon(look)
                    try:
                        outcome.append(
                            await ref.ask(handler, *args, **dict(kwargs or {}), **options)
                        )
                    except Exception as exc:  # raised below, outside the task group
                        outcome.append(exc)
                    group.cancel_scope.cancel()
            if outcome:
                if isinstance(outcome[0], Exception):
                    raise outcome[0]
                return Asked(replied=True, reply=outcome[0])
            return Asked(replied=False, turns=tuple(await rt.turns(ref)))

    return anyio.run(run)
