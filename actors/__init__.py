"""torpor: durable per-agent actors on SQLite, inside your own Python process.

This package is the public API. It only re-exports names from the engine (``runtime``),
whose modules are private: import from ``actors``, never from ``runtime``. Each public class
and function says ``__module__ == "actors"`` (so reprs, tracebacks and pickles name it as
users import it); ``actors.testing`` does the same for its own names.
"""

from importlib import metadata as _metadata

from runtime.actor import Actor, handler, query
from runtime.codec import register_type
from runtime.errors import (
    ActorDeletedError,
    ActorError,
    ActorExistsError,
    ActorFailedError,
    ActorNotFoundError,
    ActorStoppedError,
    CorruptFileError,
    CorruptReplicaError,
    DecodingError,
    EncodingError,
    FencedError,
    GatewayError,
    IdempotencyKeyReusedError,
    InvalidArgumentsError,
    InvalidKeyError,
    MessageFailedError,
    MessageTooLargeError,
    NondeterminismError,
    NonRetryable,
    PreconditionFailedError,
    ReplicaConflictError,
    ReplicaError,
    ReplicaUnavailableError,
    RestorePointError,
    RunCancelledError,
    RunFailedError,
    RunStateError,
    RuntimeClosedError,
    RuntimeInternalError,
    RuntimeLockedError,
    SchemaError,
    SqlRefusedError,
    StepAttemptEndedError,
    StepFailedError,
    StorageError,
    StoredError,
    TerminalError,
    TurnCancelledError,
    UnknownActorTypeError,
    UnknownHandlerError,
    WaitTimeoutError,
)
from runtime.files.datastore import KV, Sql
from runtime.http.client import Connection, RemoteRef, RemoteRun, connect
from runtime.observe import MetricsEndpoint, log_lifecycle, render_metrics, serve_metrics
from runtime.records import (
    ActorInfo,
    DeadLetter,
    LifecycleEvent,
    ReplicationStatistics,
    RuntimeStatistics,
    StepRecord,
    StreamEntry,
    TurnInfo,
)
from runtime.ref import Ref, RefOptions
from runtime.replica import DirectoryStore, ReplicaStatistics, ReplicaStore, S3Store
from runtime.replica.shipper import Replication
from runtime.run import Run, RunStatus
from runtime.runtime import Runtime, open_runtime
from runtime.spec import RestartIntensity, Retry
from runtime.steps import StepInfo, current_step
from runtime.timers import Schedule
from runtime.workflow import Workflow

from ._public import publish as _publish

try:
    #: The installed torpor's version.
    __version__: str = _metadata.version("torpor")
except _metadata.PackageNotFoundError:  # (a checkout used without installing it)
    __version__ = "0+unknown"

__all__ = [
    "KV",
    "Actor",
    "ActorDeletedError",
    "ActorError",
    "ActorExistsError",
    "ActorFailedError",
    "ActorInfo",
    "ActorNotFoundError",
    "ActorStoppedError",
    "Connection",
    "CorruptFileError",
    "CorruptReplicaError",
    "DeadLetter",
    "DecodingError",
    "DirectoryStore",
    "EncodingError",
    "FencedError",
    "GatewayError",
    "IdempotencyKeyReusedError",
    "InvalidArgumentsError",
    "InvalidKeyError",
    "LifecycleEvent",
    "MessageFailedError",
    "MessageTooLargeError",
    "MetricsEndpoint",
    "NonRetryable",
    "NondeterminismError",
    "PreconditionFailedError",
    "Ref",
    "RefOptions",
    "RemoteRef",
    "RemoteRun",
    "ReplicaConflictError",
    "ReplicaError",
    "ReplicaStatistics",
    "ReplicaStore",
    "ReplicaUnavailableError",
    "Replication",
    "ReplicationStatistics",
    "RestartIntensity",
    "RestorePointError",
    "Retry",
    "Run",
    "RunCancelledError",
    "RunFailedError",
    "RunStateError",
    "RunStatus",
    "Runtime",
    "RuntimeClosedError",
    "RuntimeInternalError",
    "RuntimeLockedError",
    "RuntimeStatistics",
    "S3Store",
    "Schedule",
    "SchemaError",
    "Sql",
    "SqlRefusedError",
    "StepAttemptEndedError",
    "StepFailedError",
    "StepInfo",
    "StepRecord",
    "StorageError",
    "StoredError",
    "StreamEntry",
    "TerminalError",
    "TurnCancelledError",
    "TurnInfo",
    "UnknownActorTypeError",
    "UnknownHandlerError",
    "WaitTimeoutError",
    "Workflow",
    "connect",
    "current_step",
    "handler",
    "log_lifecycle",
    "open_runtime",
    "query",
    "register_type",
    "render_metrics",
    "serve_metrics",
]

_publish(__name__, globals(), __all__)
