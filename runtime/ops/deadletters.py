"""An actor's dead letters on a closed runtime: list them, replay one, drop one.

Replaying and dropping write the actor's mailbox, so they hold the runtime's ``LOCK``
(:func:`runtime.ops.lock.runtime_lock`) and raise :class:`RuntimeLockedError` while a process has
the runtime open. Listing only reads (:func:`runtime.ops.inspect.dead_letters`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import attrs

from ..files.directory import Directory
from ..files.layout import DIRECTORY_FILE, MAILBOX_FILE, actor_dir, actor_id
from ..files.mailbox import Mailbox
from .inspect import DeadLetterView, applied_seq, dead_letters, find_actor
from .lock import runtime_lock

__all__ = ["DeadLetterView", "Replayed", "dead_letters", "drop_dead_letter", "replay_dead_letter"]

T = TypeVar("T")


@attrs.frozen
class Replayed:
    """A dead letter sent again: it is message ``seq`` of the actor's mailbox now."""

    dead_letter: int  #: the dead letter's sequence number
    seq: int  #: the new message's
    stopped: bool  #: the actor is stopped: the message runs once it is resumed


def drop_dead_letter(root: Path, type_name: str, key: str, seq: int) -> None:
    """Delete dead letter ``seq`` of the actor for good (:class:`LookupError` if it has none)."""
    with runtime_lock(root, "replay or drop dead letters"):
        find_actor(root, type_name, key)
        _check_has(root, type_name, key, seq)
        _with_mailbox(root, type_name, key, lambda mailbox: mailbox.drop_dead_letter(seq))


def replay_dead_letter(root: Path, type_name: str, key: str, seq: int) -> Replayed:
    """Send dead letter ``seq`` of the actor again, as a new message that runs when the runtime
    is next opened (or when the actor is resumed, if it is stopped); the actor is marked
    pending first, as the runtime does, so that a crash cannot leave the message unnoticed."""
    with runtime_lock(root, "replay or drop dead letters"):
        actor = find_actor(root, type_name, key)
        _check_has(root, type_name, key, seq)
        applied = applied_seq(root, type_name, key)
        directory = Directory(root / DIRECTORY_FILE, synchronous="FULL")
        try:
            directory.mark_pending(actor_id(type_name, key), type_name, key)
        finally:
            directory.close()

        def replay(mailbox: Mailbox) -> int:
            mailbox.ensure_seq_above(applied)
            message = mailbox.replay_dead_letter(seq)
            if message is None:
                raise LookupError(f"{type_name} {key!r} has no dead letter {seq}")
            return int(message.seq)

        new_seq = _with_mailbox(root, type_name, key, replay)
    return Replayed(dead_letter=seq, seq=new_seq, stopped=actor.status == "stopped")


def _check_has(root: Path, type_name: str, key: str, seq: int) -> None:
    if all(d.seq != seq for d in dead_letters(root, type_name, key)):
        raise LookupError(f"{type_name} {key!r} has no dead letter {seq}")


def _with_mailbox(root: Path, type_name: str, key: str, fn: Callable[[Mailbox], T]) -> T:
    """Run ``fn`` on the actor's mailbox opened as the runtime opens it (hold the LOCK)."""
    path = actor_dir(root, actor_id(type_name, key)) / MAILBOX_FILE
    mailbox = Mailbox(path, synchronous="FULL", type_name=type_name, key=key)
    try:
        return fn(mailbox)
    finally:
        mailbox.close()
