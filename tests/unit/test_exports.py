"""The public surface: the names users import, and the direction of imports."""

from __future__ import annotations

import ast
from pathlib import Path

import actors

ROOT = Path(__file__).resolve().parents[2]

PUBLIC = {
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
    "DeadLetter",
    "GatewayError",
    "RemoteRef",
    "RemoteRun",
    "connect",
    "DecodingError",
    "EncodingError",
    "IdempotencyKeyReusedError",
    "InvalidArgumentsError",
    "InvalidKeyError",
    "KV",
    "LifecycleEvent",
    "MessageFailedError",
    "MessageTooLargeError",
    "Ref",
    "RefOptions",
    "RestartIntensity",
    "Retry",
    "Runtime",
    "RuntimeClosedError",
    "RuntimeInternalError",
    "RuntimeLockedError",
    "RuntimeStatistics",
    "Schedule",
    "SchemaError",
    "SqlRefusedError",
    "Sql",
    "StorageError",
    "StoredError",
    "UnknownActorTypeError",
    "UnknownHandlerError",
    "handler",
    "open_runtime",
    "query",
    "register_type",
    # durable steps
    "NondeterminismError",
    "NonRetryable",
    "StepFailedError",
    "StepInfo",
    "StepRecord",
    "TerminalError",
    "TurnCancelledError",
    "TurnInfo",
    "WaitTimeoutError",
    "current_step",
    # streams
    "StepAttemptEndedError",
    "StreamEntry",
    # runs
    "Run",
    "RunCancelledError",
    "RunFailedError",
    "RunStateError",
    "RunStatus",
    "Workflow",
    # replication
    "DirectoryStore",
    "PreconditionFailedError",
    "ReplicaError",
    "ReplicaStatistics",
    "ReplicaStore",
    "ReplicaUnavailableError",
    "S3Store",
    # observability
    "MetricsEndpoint",
    "log_lifecycle",
    "render_metrics",
    "serve_metrics",
    "CorruptReplicaError",
    "FencedError",
    "RestorePointError",
    "ReplicaConflictError",
    "Replication",
    "ReplicationStatistics",
}


def test_public_names_snapshot() -> None:
    """actors exports exactly the documented names; changing them is a deliberate act."""
    assert set(actors.__all__) == PUBLIC
    for name in PUBLIC:
        assert getattr(actors, name) is not None


def test_runtime_never_imports_actors() -> None:
    """The engine does not depend on the public package (it is the other way round)."""
    for path in (ROOT / "runtime").rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            assert not any(n == "actors" or n.startswith("actors.") for n in names), path


def test_every_error_has_a_docstring_and_a_root() -> None:
    """Each public error says how it differs from its neighbours and derives from ActorError."""
    for name in PUBLIC:
        obj = getattr(actors, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert obj.__doc__, name
            if name not in (
                "RuntimeInternalError",
                "StoredError",
                "NonRetryable",
                "TerminalError",
            ):
                assert issubclass(obj, actors.ActorError), name


def test_the_version_is_the_installed_distributions() -> None:
    """actors.__version__ and `torpor --version` name the installed torpor's version."""
    import subprocess
    import sys
    from importlib import metadata

    assert actors.__version__ == metadata.version("torpor")
    done = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "--version"], capture_output=True, text=True
    )
    assert done.stdout.strip() == f"torpor {actors.__version__}", done


def test_public_names_belong_to_the_package_users_import() -> None:
    """Reprs, tracebacks and pickles name a public class or function as users import it."""
    import actors.http
    import actors.testing

    for package in (actors, actors.testing, actors.http):
        for name in package.__all__:
            obj = getattr(package, name)
            if isinstance(obj, type) or callable(obj):
                assert obj.__module__ == package.__name__, (package.__name__, name)
                assert getattr(package, obj.__qualname__) is obj, name


def test_public_errors_and_records_survive_pickling() -> None:
    """An error or a record crosses a process boundary (multiprocessing, a task queue) intact."""
    import pickle

    errors = [
        actors.ActorFailedError("actor failed"),
        actors.StepFailedError(
            "step failed",
            step="llm",
            number=0,
            error_type="ValueError",
            error_message="no",
            attempts=3,
        ),
        actors.StorageError("disk full", path="/x/data.db"),
        actors.FencedError("fenced", epoch=2, current_epoch=3),
        actors.StoredError("ValueError", "no", "Traceback ..."),
    ]
    for error in errors:
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and copy.args == error.args
        assert vars(copy) == vars(error)
    record = actors.Retry(max_attempts=5)
    assert pickle.loads(pickle.dumps(record)) == record


def test_public_records_resolve_their_type_hints() -> None:
    """typing.get_type_hints works on every public record (serializers such as cattrs use it)."""
    import typing

    import attrs

    for name in actors.__all__:
        obj = getattr(actors, name)
        if isinstance(obj, type) and attrs.has(obj):
            typing.get_type_hints(obj)


def test_runtime_and_ref_are_final_and_the_package_is_typed() -> None:
    """Runtime and Ref are final (type checkers refuse subclasses); actors ships py.typed."""
    assert getattr(actors.Runtime, "__final__", False) is True
    assert getattr(actors.Ref, "__final__", False) is True
    assert (ROOT / "actors" / "py.typed").is_file()


def test_every_public_name_and_member_has_a_docstring() -> None:
    """Each public name and public member of actors, actors.testing and actors.http has one."""
    # Each public class and function, and each public method and property of a public class; the
    # reference page is made of these docstrings.
    import inspect

    import actors.http
    import actors.testing

    missing = []
    for package in (actors, actors.testing, actors.http):
        for name in package.__all__:
            obj = getattr(package, name)
            if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            if not inspect.getdoc(obj):
                missing.append(f"{package.__name__}.{name}")
            if not inspect.isclass(obj) or issubclass(obj, BaseException):
                continue
            for member, value in vars(obj).items():
                if member.startswith("_"):
                    continue
                documented = isinstance(value, property | staticmethod | classmethod)
                if (documented or inspect.isfunction(value)) and not inspect.getdoc(value):
                    missing.append(f"{package.__name__}.{name}.{member}")
    assert missing == []
