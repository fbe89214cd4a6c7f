"""The error hierarchy. ``actors`` re-exports every public class here.

One root, :class:`ActorError`, with precise subclasses. Each subclass also derives from the builtin
that matches the kind of mistake (``ValueError`` for a bad value, ``TypeError`` for a bad type,
``LookupError`` for a missing name), so callers can catch either.
"""

from __future__ import annotations


class ActorError(Exception):
    """Root of every error torpor raises on purpose.

    An error that is not a subclass of this one (and not ``RuntimeInternalError``) came from your
    own code or from a library torpor called on your behalf.
    """


class InvalidKeyError(ActorError, ValueError):
    """An actor key is not a non-empty string of at most ``max_key_bytes`` UTF-8 bytes free of NUL.

    Raised in the sender before anything is stored.
    """


class UnknownActorTypeError(ActorError, LookupError):
    """An actor type is not registered with this runtime.

    Either the class was not passed in ``open_runtime(types=[...])``, or an actor found in
    ``directory.db`` has a type name that no registered class carries (it was renamed without
    keeping its persisted ``name=``, or this process registers only some types). Its files and
    messages are left untouched.
    """


class UnknownHandlerError(ActorError, LookupError):
    """The method named in a send or ask is not a handler of the target actor type.

    Handlers are the public ``async def`` methods of the class (names not starting with ``_``),
    other than the lifecycle hooks such as ``on_create``.
    """


class InvalidArgumentsError(ActorError, TypeError):
    """The arguments of a send, ask or spawn do not fit the handler's signature.

    Checked in the sender, against ``inspect.signature`` of the handler, before anything is stored.
    """


class EncodingError(ActorError, TypeError):
    """A value cannot be encoded as a message.

    Messages are msgpack with an allow-list: ``None``, ``bool``, ``int``, ``float``, ``str``,
    ``bytes``, ``list``, ``tuple``, ``dict``, ``set``, ``frozenset``, ``datetime``, ``date``,
    ``time``, ``timedelta``, ``UUID``, refs, and attrs classes registered with
    ``open_runtime(message_types=[...])``. Never pickle.
    """


class DecodingError(ActorError, ValueError):
    """Stored bytes cannot be decoded: a message type no longer registered, or corrupt bytes."""


class MessageTooLargeError(ActorError, ValueError):
    """An encoded message is larger than the runtime's ``max_message_bytes``.

    Nothing is stored. Keep large blobs in the actor's own tables and send references to them.
    """


class ActorExistsError(ActorError):
    """``spawn`` was given a key that already belongs to an actor of that type."""


class ActorNotFoundError(ActorError, LookupError):
    """A message would create an actor whose ``on_create`` needs arguments, or a ``@query`` or
    an event is for an actor that does not exist.

    Get-or-create works only for types whose ``on_create`` takes no required arguments; create
    the others with ``Runtime.spawn``. A query or an event creates no actor: one that no message
    or spawn created is not found, whatever its ``on_create`` takes (its dead letters and turns
    in flight are empty lists).
    """


class MessageFailedError(ActorError):
    """The handler raised on every attempt allowed by the actor type's retry policy.

    The message was dead-lettered: it is kept in the actor's mailbox, where
    ``Runtime.dead_letters`` lists it and ``Runtime.replay_dead_letter`` sends it again. The
    original exception is this error's ``__cause__`` (a :class:`StoredError` when the failure is
    read back from disk, for example by a retried ask with the same idempotency key).
    """

    def __init__(self, message: str, *, seq: int, attempts: int) -> None:
        super().__init__(message)
        self.seq = seq
        self.attempts = attempts


class StoredError(Exception):
    """An exception read back from disk: its type name, message and formatted traceback."""

    def __init__(self, type_name: str, message: str, traceback: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.traceback = traceback


class ActorFailedError(ActorError):
    """The actor cannot run turns: its ``on_create`` or a schema migration kept failing.

    Its messages are kept. The cause is the last error.
    """


class ActorStoppedError(ActorError):
    """The actor failed more turns than its ``restart_intensity`` allows and was stopped.

    Its messages are kept, and ``send`` still stores new ones; nothing runs until
    ``Runtime.resume(ref)``. ``ask`` and queries raise this error instead of waiting.
    """


class CorruptFileError(ActorError):
    """A database file of an actor or of the runtime is not a valid SQLite database.

    Nothing was written to it. Recover it from a backup or the replica; the path is in ``path``.
    """

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class StorageError(ActorError, OSError):
    """A file could not be opened or written: too many open files, disk full, no permission.

    Nothing was applied; what was acknowledged before stays durable. Retry once resources free.
    """

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class IdempotencyKeyReusedError(ActorError, ValueError):
    """An ``idempotency_key`` was used again for a different call (other handler or arguments).

    A key names one call; reusing it for another would silently return the wrong result.
    """


class SchemaError(ActorError):
    """An actor's ``data.db`` is at a schema version its class's ``migrations`` do not reach.

    Usually a migration was removed or reordered; migrations may only be appended.
    """


class RuntimeClosedError(ActorError):
    """The runtime was closed (or is closing) and takes no more messages."""


class RuntimeLockedError(ActorError):
    """Another process holds this runtime directory open.

    One runtime directory belongs to one process at a time.
    """


class RuntimeInternalError(Exception):
    """A bug in torpor itself, not in your code. Please file an issue with the traceback."""


class NonRetryable(Exception):
    """Raise it (or a subclass) inside a step's function to stop retrying: the step fails at
    once with this error, which is journaled as the step's final error."""


class StepFailedError(ActorError):
    """A step failed on every attempt allowed (or raised :class:`NonRetryable`).

    The failure is journaled, so a replay of the turn raises this same error again without
    running the step. ``error_type`` and ``error_message`` name the step's last exception, which
    is the ``__cause__`` (a :class:`StoredError` when the failure is read back from the journal).
    """

    def __init__(
        self,
        message: str,
        *,
        step: str,
        number: int,
        error_type: str,
        error_message: str,
        attempts: int,
    ) -> None:
        super().__init__(message)
        self.step = step
        self.number = number
        self.error_type = error_type
        self.error_message = error_message
        self.attempts = attempts


class NondeterminismError(ActorError):
    """A replayed turn called a different step than its journal recorded at that position.

    Code between steps must be deterministic given the actor's state, the message and the step
    results. The actor is stopped (its messages and journals are kept); deploy a fix, for
    example the new code behind ``if self.patched("change-id"):``, then ``Runtime.resume``.
    """


class WaitTimeoutError(ActorError, TimeoutError):
    """``wait_for_event`` reached its durable deadline before the event arrived."""


class TurnCancelledError(ActorError):
    """The turn was cancelled through ``Runtime.cancel_turn``: its writes were rolled back and
    its message was dead-lettered (``Runtime.replay_dead_letter`` sends it again)."""


class NotLocalError(ActorError):
    """Internal: a delivery found its target's files in the replica, not on this machine (it is
    being restored); the sender keeps the message and delivers it again after the restore."""
