"""torpor: durable per-agent actors on SQLite, inside your own Python process.

This package is the public API. It only re-exports names from the engine (``runtime``),
whose modules are private: import from ``actors``, never from ``runtime``.
"""

from runtime.actor import Actor, query
from runtime.datastore import KV, Sql
from runtime.engine import (
    DeadLetter,
    LifecycleEvent,
    Ref,
    Runtime,
    RuntimeStatistics,
    open_runtime,
)
from runtime.errors import (
    ActorError,
    ActorExistsError,
    ActorFailedError,
    ActorNotFoundError,
    ActorStoppedError,
    CorruptFileError,
    DecodingError,
    EncodingError,
    IdempotencyKeyReusedError,
    InvalidArgumentsError,
    InvalidKeyError,
    MessageFailedError,
    MessageTooLargeError,
    RuntimeClosedError,
    RuntimeInternalError,
    RuntimeLockedError,
    SchemaError,
    StorageError,
    StoredError,
    UnknownActorTypeError,
    UnknownHandlerError,
)
from runtime.spec import RestartIntensity, Retry
from runtime.timers import Schedule

__all__ = [
    "KV",
    "Actor",
    "ActorError",
    "ActorExistsError",
    "ActorFailedError",
    "ActorNotFoundError",
    "ActorStoppedError",
    "CorruptFileError",
    "DeadLetter",
    "DecodingError",
    "EncodingError",
    "IdempotencyKeyReusedError",
    "InvalidArgumentsError",
    "InvalidKeyError",
    "LifecycleEvent",
    "MessageFailedError",
    "MessageTooLargeError",
    "Ref",
    "RestartIntensity",
    "Retry",
    "Runtime",
    "RuntimeClosedError",
    "RuntimeInternalError",
    "RuntimeLockedError",
    "RuntimeStatistics",
    "Schedule",
    "SchemaError",
    "Sql",
    "StorageError",
    "StoredError",
    "UnknownActorTypeError",
    "UnknownHandlerError",
    "open_runtime",
    "query",
]
