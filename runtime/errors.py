"""The error hierarchy. ``actors`` re-exports every public class here.

One root, :class:`ActorError`, with precise subclasses. Each subclass also derives from the builtin
that matches the kind of mistake (``ValueError`` for a bad value, ``TypeError`` for a bad type,
``LookupError`` for a missing name), so callers can catch either.
"""

from __future__ import annotations

from typing import Any

import apsw


def _rebuild(cls: type[BaseException], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    """Unpickle an error whose ``__init__`` takes other arguments than its ``args``."""
    error = cls.__new__(cls, *args)
    error.args = args
    error.__dict__.update(state)
    return error


class ActorError(Exception):
    """Root of every error torpor raises on purpose.

    An error that is not a subclass of this one (and not ``RuntimeInternalError``) came from your
    own code or from a library torpor called on your behalf.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        # Subclasses take keyword-only fields (seq=, path=, ...) that args does not hold.
        return (_rebuild, (type(self), self.args, self.__dict__))


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
    """The arguments of a send, ask, spawn or timer do not fit the handler's signature.

    Checked in the sender before anything is stored: their number and names against the
    handler's signature, and their values against its annotations (builtins, containers,
    ``Optional`` and unions, ``Literal``, enums, dataclasses, attrs classes, pydantic models,
    datetimes, ``Decimal``, ``UUID``, refs; an unannotated or ``Any`` parameter takes anything,
    and an instance of a class is not checked field by field). Unlike :class:`EncodingError`,
    the value may be encodable: it is not what the handler declares.
    """


class EncodingError(ActorError, TypeError):
    """A value cannot be encoded as a message.

    Messages are msgpack with an allow-list: ``None``, ``bool``, ``int``, ``float``, ``str``,
    ``bytes``, ``list``, ``tuple``, ``dict``, ``set``, ``frozenset``, ``datetime``, ``date``,
    ``time``, ``timedelta``, ``Decimal``, ``UUID``, refs, and the enums, dataclasses, attrs
    classes and pydantic models the runtime knows by name: named in its handlers' annotations,
    registered with ``actors.register_type``, or given in ``open_runtime(message_types=[...])``.
    Subclasses of the builtins (other than such enums) are refused: they would come back as
    their base class. Never pickle.
    """


class DecodingError(ActorError, ValueError):
    """Stored bytes cannot be decoded: a class name no runtime class is registered under (the
    class was renamed or moved without keeping its name), a stored instance its class no
    longer accepts, or corrupt bytes."""


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


class ActorDeletedError(ActorError):
    """The actor was deleted (``Ref.delete``, ``Actor.destroy``) while this call waited for it,
    or it is being deleted now.

    Unlike :class:`ActorNotFoundError` (no such actor, nothing happened), this says that the
    call's message was dropped with the actor's mailbox: it never ran, and never will. A later
    message to the same key creates a new actor (a new incarnation, with empty state).
    """


class MessageFailedError(ActorError):
    """The message failed for good: its handler raised on every attempt its retry policy
    allows, raised :class:`TerminalError`, or failed in a way no retry can fix.

    The message was dead-lettered: it is kept in the actor's mailbox, where
    ``Runtime.dead_letters`` lists it and ``Runtime.replay_dead_letter`` sends it again. The
    original exception is this error's ``__cause__`` (a :class:`StoredError` when the failure is
    read back from disk, for example by a retried ask with the same idempotency key).
    ``reason`` is the dead letter's (``"terminal"``, ``"exhausted"``, ...: see
    :class:`DeadLetter`).
    """

    def __init__(self, message: str, *, seq: int, attempts: int, reason: str = "exhausted") -> None:
        super().__init__(message)
        self.seq = seq
        self.attempts = attempts
        self.reason = reason


class StoredError(Exception):
    """An exception read back from disk: its type name, message and formatted traceback."""

    def __init__(self, type_name: str, message: str, traceback: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.traceback = traceback

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.args, self.__dict__))


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


class GatewayError(ActorError):
    """A runtime's HTTP gateway (``actors.connect``) refused a request with an error torpor
    has no class of its own for: authentication (401), a rate limit (429), a route not served
    (501), a failure of the server. Errors that have a class (an unknown handler, arguments
    that do not fit) come back as that class instead. ``status`` is the HTTP status, ``kind``
    the error's type as the gateway named it."""

    def __init__(self, message: str, *, status: int, kind: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


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


class TerminalError(Exception):
    """Raise it (or a subclass) in a handler or a step's function to fail the *message* at once.

    Unlike :class:`NonRetryable`, which only ends a step's retries and lets the handler decide,
    a terminal error is final for the whole message: no retry, no backoff; the message is
    dead-lettered with reason ``"terminal"``; an asker gets :class:`MessageFailedError` with
    this error as its ``__cause__``; and it does not count toward the actor's restart
    intensity (the actor is healthy: the request was refused). Raised in a step's function, it
    ends the step at once and is journaled as the step's failure; the handler then gets a
    ``TerminalError`` (the same on every replay) that it may catch to compensate, as a saga
    does, or let escape to fail the message.
    """


class StepAttemptEndedError(ActorError, RuntimeError):
    """``current_step().emit`` was called after the step's attempt ended (it failed, was
    cancelled or timed out, and its reset marker is written; or it returned): a chunk after the
    reset would pass for the retry's. Unlike :class:`StepFailedError`, it is raised in the
    step's own function (a thread a timed-out sync step left running), not to the turn."""


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


class RunFailedError(ActorError):
    """A run (``self.start``, ``Runtime.start``) ended in failure: its ``run`` handler raised on
    every attempt its type's retry policy allows (or a step's failure was not caught).

    ``await run.result()`` raises it, and ``on_run_done`` gets it as the outcome. ``run_id``
    names the run; ``error_type`` and ``error_message`` name the handler's last exception, which
    is the ``__cause__`` (a :class:`StoredError`: it was read back from the run's files).
    Unlike :class:`MessageFailedError` (one message of an actor), the run itself is finished;
    ``run.restart()`` runs it again.
    """

    def __init__(self, message: str, *, run_id: str, error_type: str, error_message: str) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.error_type = error_type
        self.error_message = error_message


class RunCancelledError(RunFailedError):
    """A run was cancelled (``run.cancel()``, or the cancel of a run that started it) before
    it finished. Its writes of the interrupted turn were rolled back; ``run.restart()`` runs it
    again."""


class RunStateError(ActorError, RuntimeError):
    """A run cannot do what was asked in its present state: ``run.restart()`` of a run that is
    done (a done run keeps its one outcome) or still going. Nothing was changed."""


class NotLocalError(ActorError):
    """Internal: a delivery found its target's files in the replica, not on this machine (it is
    being restored); the sender keeps the message and delivers it again after the restore."""


# -- handlers' SQL -----------------------------------------------------------------------------


class SqlRefusedError(ActorError, apsw.AuthError):
    """A handler's SQL statement was refused before it ran.

    The runtime owns the transaction (a turn is one transaction), so ``BEGIN``, ``COMMIT``,
    ``SAVEPOINT`` and ``ATTACH`` are refused, as are writes to the runtime's ``_torpor_*``
    tables and changes to the pragmas its durability depends on. Inside a ``@query`` handler
    only reads run (schema pragmas such as ``PRAGMA table_info(t)`` included). It is also an
    ``apsw.AuthError``, the error SQLite's authorizer gives.
    """


# -- the replica -------------------------------------------------------------------------------


class ReplicaError(ActorError):
    """A replica store refused a request, and retrying the same request will not help.

    Raised as such for configuration mistakes: the bucket does not exist, the credentials are
    missing, rejected or lack a permission, the bucket is in another region. The message has the
    store's answer (for S3, the HTTP status and error code) and what to fix. The two subclasses
    are the errors a caller handles at run time: :class:`PreconditionFailedError` and
    :class:`ReplicaUnavailableError`.
    """


class PreconditionFailedError(ReplicaError):
    """A conditional ``put`` did not hold: nothing was written.

    Either ``if_none_match=True`` and the key already exists, or ``if_match=etag`` and the object
    is missing or has another ETag (someone wrote it since you read it). For a manifest this
    means another writer got there first: this one is fenced out and must stop, or read the new
    version and decide again. S3's ``409 ConditionalRequestConflict`` (two conditional writes
    racing on one key) is reported as this error too. ``key`` is the key, relative to the store.
    """

    def __init__(self, message: str, *, key: str) -> None:
        super().__init__(message)
        self.key = key


class ReplicaUnavailableError(ReplicaError, OSError):
    """The replica store could not be reached or could not serve the request, after retries.

    For S3: connection refused or reset, timeouts, throttling, 5xx answers, a body cut short.
    For a directory: the disk is full or failing. The request may succeed later. A ``put`` or
    ``delete`` that raised this may or may not have been applied: read the key back before
    deciding (a conditional put retried after an unknown outcome can fail its condition against
    its own earlier write).
    """


class FencedError(ReplicaError):
    """Another writer has claimed this file's replica: this one must stop writing it.

    Raised when a manifest write fails its condition because a later epoch was claimed (or when
    a claim loses a race). Nothing this writer uploaded is named by the manifest; the replica
    refuses every later call. Unlike :class:`PreconditionFailedError`, which is one refused
    request, this is a verdict on the writer: to write the file again, restore it from the
    replica and :meth:`FileReplica.claim` anew. ``epoch`` is this writer's, ``current_epoch``
    the manifest's (``None`` if unknown).
    """

    def __init__(self, message: str, *, epoch: int, current_epoch: int | None) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.current_epoch = current_epoch


class CorruptReplicaError(ReplicaError, ValueError):
    """An object of the replica is missing, damaged, or contradicts the manifest: restore stops.

    Raised by :func:`restore` before the destination is touched. ``key`` names the object. A
    damaged segment breaks the history from that segment on: restore an earlier ``at_txid``,
    and take a new snapshot of the source if it is alive. Unlike
    :class:`~runtime.replica.wal.SegmentError` (bytes that are not a valid segment), this also
    covers a valid segment that is not the one the manifest names.
    """

    def __init__(self, message: str, *, key: str) -> None:
        super().__init__(message)
        self.key = key


class RestorePointError(ReplicaError, LookupError):
    """There is no replica under that name, or the requested point is not retained.

    Retention keeps the latest snapshot and the segments after it: ``at_txid`` and ``at_time``
    must fall in that range (:class:`RestoreResult` of a plain restore tells the latest txid).
    """


class CorruptSnapshotError(ReplicaError, ValueError):
    """The local file to snapshot fails SQLite's ``quick_check``: it was not uploaded (the
    replica keeps its last good state, to restore from)."""


class ReplicaConflictError(ActorError):
    """The replica prefix holds another runtime's files and this runtime has files of its own.

    Point each runtime at its own prefix, or restore from that replica into an empty directory
    (``torpor restore``) to take it over.
    """


class RestoreRefusedError(ActorError):
    """A restore that the runtime would undo at the actor's next wake-up."""


# -- offline tools (inspect, sql, restore, fork) ------------------------------------------------


class NotARuntimeError(ActorError, FileNotFoundError):
    """The path is not a runtime directory (it has no ``directory.db``)."""


class NoSuchActorError(ActorError, LookupError):
    """No actor of that type and key is in the runtime's ``directory.db``."""


class ActorAwakeError(ActorError):
    """The actor is awake in a running runtime, which holds its files; read it once it
    hibernates (or from that process, with ``Runtime`` methods)."""


class WriteRefusedError(ActorError, ValueError):
    """``torpor sql`` runs read-only statements; this one would write or control transactions."""
