"""Generate docs/reference.md from the docstrings of the public API (``actors.__all__``).

python tools/gen_reference.py          # rewrite docs/reference.md
python tools/gen_reference.py --check  # exit 1 if it is out of date (the tests do this)
"""

from __future__ import annotations

import abc
import ast
import inspect
import re
import sys
import typing
from pathlib import Path
from typing import Any, Generic

import attrs

import actors

DOCS = Path(__file__).resolve().parent.parent / "docs"
OUT = DOCS / "reference.md"
LIFECYCLE = DOCS / "explanation" / "lifecycle.md"

SECTIONS = [
    ("Opening a runtime", ["open_runtime", "Runtime", "RuntimeStatistics", "LifecycleEvent"]),
    (
        "Actors",
        ["Actor", "query", "Retry", "RestartIntensity", "Schedule", "Sql", "KV", "ActorInfo"],
    ),
    ("Messages", ["Ref", "RefOptions", "register_type", "DeadLetter"]),
    ("Durable steps", ["current_step", "StepInfo", "TurnInfo", "StepRecord", "NonRetryable"]),
    ("Failures", ["handler", "TerminalError"]),
    ("Runs", ["Workflow", "Run", "RunStatus"]),
    ("Streams", ["StreamEntry"]),
    (
        "Replication",
        [
            "Replication",
            "ReplicationStatistics",
            "ReplicaStore",
            "DirectoryStore",
            "S3Store",
            "ReplicaStatistics",
        ],
    ),
    ("Another process, over HTTP", ["connect", "Connection", "RemoteRef", "RemoteRun"]),
    ("Observability", ["serve_metrics", "MetricsEndpoint", "render_metrics", "log_lifecycle"]),
]

#: What each field of a public record holds, for the fields whose class has no ``#:`` comment
#: for them (a ``#:`` comment in the code wins). Every field must be described, here or there.
FIELDS: dict[str, dict[str, str]] = {
    "RuntimeStatistics": {
        "awake": "Actors awake now: files open, object built (waking and hibernating ones "
        "included).",
        "hibernated": "Actors known to the runtime that are not awake, stopped or failed.",
        "failed": "Actors that failed to open or crashed, their messages kept; the next "
        "wake-up tries again.",
        "stopped": "Actors stopped (restart intensity exceeded, a replay that diverged from "
        "its journal, or their replica taken over by another runtime) until ``rt.resume``.",
        "max_awake": "The most actors awake at once (``open_runtime(max_awake=)``, by default "
        "derived from the file-descriptor limit).",
        "messages_sent": "Messages stored in a mailbox since the runtime opened (send, ask, "
        "timers; duplicates not counted).",
        "turns": "Turns committed since the runtime opened (a turn may apply a batch of "
        "queued messages).",
        "messages_applied": "Messages whose handler ran and committed, since the runtime opened.",
        "retries": "Failed attempts of a message or ``on_create`` that will be retried, since "
        "the runtime opened.",
        "dead_letters": "Messages dead-lettered after their last attempt, since the runtime "
        "opened.",
        "wakes": "Actors woken (files opened, object built) since the runtime opened.",
        "hibernations": "Actors hibernated (files closed, object dropped) since the runtime "
        "opened.",
        "timers_fired": "Durable timer firings (each sends a message) since the runtime opened.",
        "actors_with_timers": "Actors with a durable timer or wait pending.",
        "steps": "Durable steps and asks journaled with their final result or error, since "
        "the runtime opened.",
        "step_retries": "Failed durable step attempts that were retried, since the runtime opened.",
        "wake_latency_p50": "The median wake latency (see above), seconds.",
        "wake_latency_p99": "The 99th percentile of the wake latency, seconds.",
        "unknown_types": "Type names found in ``directory.db`` that no registered class "
        "carries (see :class:`UnknownActorTypeError`).",
    },
    "LifecycleEvent": {
        "type_name": "The actor type's persisted name.",
        "key": "The actor's key.",
        "previous": "The state before: ``hibernated``, ``waking``, ``awake``, "
        "``hibernating``, ``failed`` or ``stopped``.",
        "state": "The state after (one of the same).",
        "event": "What happened: ``wake``, ``opened``, ``open_failed``, ``idle``, ``closed``, "
        "``crashed``, ``gave_up`` or ``resume``.",
        "at": "When, in seconds since the epoch (the runtime's ``clock``).",
        "detail": "Why the actor failed or stopped, else ``None``.",
    },
    "DeadLetter": {
        "seq": "The message's number in the actor's mailbox (for ``rt.replay_dead_letter`` "
        "and ``rt.drop_dead_letter``).",
        "method": "The handler's name.",
        "args": "The positional arguments, decoded; ``None`` if they can no longer be decoded.",
        "kwargs": "The keyword arguments, decoded; ``None`` if they can no longer be decoded.",
        "sender": "An opaque id of the actor that sent it (``self.send``, ``self.ask``, its "
        "own timers); ``None`` for a message sent from outside, through a ``Ref``.",
        "idempotency_key": "The key it was sent with, else ``None``.",
        "attempts": "How many attempts failed.",
        "error_type": "The qualified name of the last error's class.",
        "error_message": "``str()`` of the last error.",
        "traceback": "The last error's formatted traceback.",
        "failed_at": "When it was dead-lettered, in seconds since the epoch.",
        "reason": "Why it was given up on: ``terminal`` (it raised ``actors.TerminalError``: "
        "not retried), ``exhausted`` (every attempt its retry policy allows failed), "
        "``not_retryable`` (a failure no retry can fix: a step's journaled failure or a "
        "wait's timeout escaping the handler, arguments that no longer decode, a handler "
        "renamed away, a reply too large, a ``self.start`` whose run id names a run of other "
        "arguments, a call from the handler whose arguments are refused), ``cancelled`` "
        "(``rt.cancel_turn``), ``crashed`` "
        "(the process died while it ran, ``Retry.max_crashes`` times), or ``unknown`` "
        "(dead-lettered by a torpor that kept no reason).",
    },
    "StepRecord": {
        "number": "The step's position in its turn (0 for the first step called).",
        "kind": "What it is (see above).",
        "name": "The step's name (``self.step``'s first argument; for the other kinds, a "
        "name the runtime gives).",
        "status": "``done``, ``failed``, ``waiting``, or ``retrying`` (a step in backoff "
        "between attempts; ``until`` is when it tries again).",
        "attempts": "Attempts made.",
        "until": "The deadline of a durable wait, or when a retrying step tries again, in "
        "seconds since the epoch, else ``None``.",
        "recorded_at": "When its journal row was last written, in seconds since the epoch.",
    },
    "TurnInfo": {
        "seq": "The message's number in the mailbox (for ``rt.cancel_turn`` and "
        "``rt.restart_turn``).",
        "method": "The handler's name.",
        "status": "``running``, ``waiting`` or ``interrupted`` (see above).",
        "attempts": "Failed attempts so far.",
        "cancelled": "The reason given to ``rt.cancel_turn`` once the turn is being "
        "cancelled, else ``None``.",
        "steps": "Its journaled steps, as :class:`StepRecord`.",
    },
    "StepInfo": {
        "name": "The step's name (``self.step``'s first argument).",
        "number": "The step's position in its turn (0 for the first step called).",
        "attempt": "This attempt's number, from 1.",
        "idempotency_key": "The same on every attempt and replay of this step (see above).",
    },
    "Schedule": {
        "name": "The timer's name (``self.schedule``'s first argument).",
        "method": "The handler it sends to.",
        "next_at": "When it is next due, in seconds since the epoch.",
        "every": "A repeating timer's interval in seconds, else ``None``.",
        "cron": "A cron timer's expression, else ``None``.",
    },
    "Retry": {
        "max_attempts": "Attempts in all, the first included (at least 1).",
        "initial_delay": "Seconds to wait after the first failed attempt.",
        "max_delay": "The longest wait between two attempts, in seconds.",
        "multiplier": "How much the wait grows after each failed attempt (at least 1).",
        "jitter": "Each wait is spread by up to this fraction of itself, either way (0 to 1).",
    },
    "RestartIntensity": {
        "max_failures": "Failed turns allowed within ``period``: one more stops the actor.",
        "period": "The window, in seconds.",
    },
    "Replication": {
        "lag_target": "The commit-to-replica time aimed at under load, in seconds: the delay "
        "before a round is this minus the slowest of the last 20 rounds.",
        "max_delay": "The longest a commit waits for its round, in seconds.",
        "min_delay": "The delay when commits are rare (and for a durable turn's commits), in "
        "seconds.",
        "busy_rate": "Commits per second at which the delay reaches its load value.",
        "checkpoint_frames": "WAL frames after which a file is checkpointed, between turns.",
        "fold_interval": "Seconds after which the segments a file shipped are listed in its "
        "manifest (a restore then reads fewer log objects).",
        "fold_segments": "Segments after which they are listed, if that comes first.",
        "compact_segments": "Segments after which a file gets a new snapshot.",
        "retention": "Seconds of history kept for point-in-time restore.",
        "keep_generations": "Earlier snapshots kept per file, at most.",
    },
    "ReplicationStatistics": {
        "lag_p99": "The 99th percentile of the same.",
        "rounds": "Log objects written (one a round), since the runtime opened.",
        "segments": "File segments in those log objects.",
        "snapshots": "Whole-file uploads.",
        "manifests": "Manifest writes.",
        "requests": "Requests made to the store (what a provider bills).",
        "puts": "PUT requests among them.",
        "bytes_uploaded": "Bytes uploaded.",
        "errors": "Failed store requests.",
        "fenced": "Files taken over by another runtime.",
        "restores": "Actors (and ``directory.db``) restored from the replica.",
    },
    "ReplicaStatistics": {
        "gets": "GET requests.",
        "puts": "PUT requests.",
        "deletes": "DELETE requests.",
        "lists": "LIST requests (one a page of up to 1,000 keys).",
    },
    "MetricsEndpoint": {
        "host": "The address it is bound to (``serve_metrics``'s ``host``).",
        "port": "The port it is bound to.",
    },
}

#: Public attributes set on instances (not found on the class): (class, name, type, text).
ATTRIBUTES: list[tuple[str, str, str, str]] = [
    ("Ref", "key", "str", "The actor's key."),
    ("RefOptions", "ref", "Ref[A]", "The ref called."),
    (
        "RefOptions",
        "idempotency_key",
        "str | None",
        "Unique to one logical call: a retried call with the same key applies nothing twice "
        "and (``ask``) returns the first call's result.",
    ),
    (
        "Runtime",
        "reports",
        "collections.deque[str]",
        "Operational problems that had no caller to raise to, as text, oldest first (the "
        "last 1,000 are kept): for example an actor stopped, or taken over by another "
        "runtime; a corrupt file restored from the replica; a file no longer replicated; an "
        "actor that could not be woken or closed. Read it beside ``rt.statistics()``.",
    ),
]

#: Forms that still work but warn (``DeprecationWarning``), with their replacements.
DEPRECATED = [
    "Type checkers check the arguments of a call given a handler or step function (PEP 612), "
    "and know what it returns, only if no option sits among those arguments. So options come "
    "first now; the old spellings still work, with a `DeprecationWarning` naming the new one:",
    "",
    "- `ref.send(Counter.incr, 5, idempotency_key=k)` and `ref.ask(...)` the same: write "
    "`ref.options(idempotency_key=k).send(Counter.incr, 5)`. (With a handler's name, "
    '`ref.ask("incr", 5, idempotency_key=k)`, the keyword stays: a name is not type-checked '
    "anyway.)",
    '- `self.step("llm", call_llm, prompt, retry=policy)`: write '
    '`self.step("llm", policy, call_llm, prompt)`.',
]

#: The first line of public members whose code has no docstring.
MEMBER_DOCS: dict[str, str] = {
    "Ref.actor_type": "The actor's class.",
    "Sql.last_insert_rowid": "The rowid of the last row this connection inserted.",
}


#: Module prefixes left out of rendered types (``actors.Ref`` reads ``Ref`` on this page).
_MODULES = r"\b(runtime\.(\w+\.)+|actors\.|typing\.|collections\.abc\.|anyio\.abc\.)"


def _doc(obj: object) -> str:
    return inspect.cleandoc(inspect.getdoc(obj) or "(undocumented)")


def _signature(obj: object) -> str:
    for resolve in (True, False):
        try:
            text = str(inspect.signature(obj, eval_str=resolve))  # type: ignore[arg-type]
        except Exception:
            continue
        text = re.sub(
            r"<[\w.]*IgnoredTaskStatus object at 0x[0-9a-f]+>", "TASK_STATUS_IGNORED", text
        )
        text = re.sub(r" object at 0x[0-9a-f]+>", ">", text)  # no addresses: stable output
        text = re.sub(r"\bStepCall\[", "Awaitable[", text)  # a private class: what it is
        return re.sub(_MODULES + r"|~", "", text)
    return ""


def _members(cls: type) -> list[str]:
    lines = [
        f"- `{name}: {kind}` (attribute): {text}"
        for owner, name, kind, text in ATTRIBUTES
        if owner == cls.__name__
    ]
    for name, member in vars(cls).items():
        if name.startswith("_") or name in ("retry", "migrations"):
            continue
        where = f"{cls.__name__}.{name}"
        if isinstance(member, property):
            lines.append(f"- `{name}` (property): {_first_line(member, where)}")
        elif callable(member):
            # An overloaded method shows its typed forms, not its untyped implementation.
            forms = typing.get_overloads(member) or [member]
            shown = ", or ".join(f"`{name}{_signature(form)}`" for form in forms)
            lines.append(f"- {shown}: {_first_line(member, where)}")
    return lines


def _first_line(obj: object, where: str) -> str:
    if inspect.getdoc(obj) is None or where in MEMBER_DOCS:
        if where not in MEMBER_DOCS:
            raise SystemExit(f"{where} has no docstring: write one, or add it to MEMBER_DOCS")
        return MEMBER_DOCS[where]
    return _doc(obj).split("\n\n")[0].replace("\n", " ")


def _comments(cls: type) -> dict[str, str]:
    """The ``#:`` comments written above the fields in the class's source, by field name."""
    found: dict[str, str] = {}
    pending: list[str] = []
    for line in _class_source(cls).splitlines():
        text = line.strip()
        if text.startswith("#:"):
            pending.append(text[2:].strip())
            continue
        field = re.match(r"(\w+)\s*:", text)
        if field and pending:
            found[field[1]] = " ".join(pending)
        pending = []
    return found


def _class_source(cls: type) -> str:
    """The source of ``cls``. Public names say ``__module__ == "actors"``, which only
    re-exports them, so ``inspect.getsource`` cannot find them: look in the engine's modules
    for the one whose code defines the class."""
    for module in list(sys.modules.values()):
        name = getattr(module, "__name__", "")
        if not (name == "runtime" or name.startswith("runtime.")):
            continue
        if getattr(module, cls.__name__, None) is not cls:
            continue
        source = inspect.getsource(module)
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ClassDef) and node.name == cls.__name__:
                return ast.get_source_segment(source, node) or ""
    raise SystemExit(f"no module of runtime/ defines {cls.__qualname__}")


def _type_name(kind: Any) -> str:
    text = kind if isinstance(kind, str) else inspect.formatannotation(kind)
    text = re.sub(r"'(\w+)'", r"\1", text)  # a forward reference: the name
    return re.sub(_MODULES, "", text)


def _fields(cls: type) -> list[str]:
    """One line per field of an attrs record: name, type, default, what it holds."""
    comments = _comments(cls)
    described = FIELDS.get(cls.__name__, {})
    names = [field.name for field in attrs.fields(cls)]
    stale = sorted(set(described) - set(names))
    if stale:
        raise SystemExit(f"FIELDS[{cls.__name__!r}] describes fields it lacks: {stale}")
    lines = []
    for field in attrs.fields(cls):
        text = comments.get(field.name) or described.get(field.name)
        if text is None:
            raise SystemExit(
                f"{cls.__name__}.{field.name} is not described: add a #: comment above it, "
                "or an entry in FIELDS"
            )
        default = ""
        if field.default is not attrs.NOTHING and not hasattr(field.default, "factory"):
            default = f" = {field.default!r}"
        lines.append(f"- `{field.name}: {_type_name(field.type)}{default}`: {text}")
    return lines


def _heading(name: str, obj: object) -> str:
    if not isinstance(obj, type):
        return f"### `{name}{_signature(obj)}`"
    bases = [b for b in obj.__bases__ if b not in (object, Generic, abc.ABC)]
    if not bases:
        return f"### `{name}`"
    return f"### `{name}({', '.join(_type_name(b.__name__) for b in bases)})`"


def render() -> str:
    out = [
        "# Reference",
        "",
        "Generated from the docstrings by `tools/gen_reference.py`; do not edit by hand.",
        "Everything here is importable from `actors`.",
        "",
    ]
    done: set[str] = set()
    for title, names in SECTIONS:
        out += [f"## {title}", ""]
        for name in names:
            done.add(name)
            obj = getattr(actors, name)
            out += [_heading(name, obj), "", _doc(obj), ""]
            if isinstance(obj, type) and attrs.has(obj):
                out += ["Fields:", "", *_fields(obj), ""]
            members = _members(obj) if isinstance(obj, type) else []
            if members and attrs.has(obj):
                out += ["Properties and methods:", ""]
            out += [*members, ""] if members else []
    errors = sorted(n for n in actors.__all__ if n not in done)
    misfiled = [n for n in errors if not _is_error(getattr(actors, n))]
    if misfiled:
        raise SystemExit(f"not errors, yet in no section of SECTIONS: {misfiled}")
    out += ["## Deprecated forms", "", *DEPRECATED, ""]
    out += ["## Errors", ""]
    for name in errors:
        obj = getattr(actors, name)
        bases = ", ".join(b.__name__ for b in obj.__bases__)
        out += [f"### `{name}({bases})`", "", _doc(obj), ""]
    return "\n".join(out).rstrip() + "\n"


def _is_error(obj: object) -> bool:
    return isinstance(obj, type) and issubclass(obj, BaseException)


def render_lifecycle() -> str:
    from runtime import lifecycle

    doc = inspect.getdoc(lifecycle) or ""
    body = doc.split("::", 1)[0].strip()
    states = doc.split("::", 1)[1].split("\n\n", 2)[-1] if "::" in doc else ""
    return (
        "# The actor lifecycle\n\n"
        "Generated by `tools/gen_reference.py` from `runtime/lifecycle.py`, the one table the "
        "engine obeys for every change of an actor's state; do not edit by hand.\n\n"
        f"{body}\n\n```mermaid\n{lifecycle.mermaid()}\n```\n\n{states.strip()}\n"
    )


def main() -> int:
    pages = {OUT: render(), LIFECYCLE: render_lifecycle()}
    if "--check" in sys.argv:
        stale = [
            str(path)
            for path, text in pages.items()
            if not path.exists() or path.read_text() != text
        ]
        if stale:
            print(
                f"out of date: {', '.join(stale)}; run python tools/gen_reference.py",
                file=sys.stderr,
            )
            return 1
        return 0
    for path, text in pages.items():
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
