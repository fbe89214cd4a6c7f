"""The ``torpor`` command: benchmarks, and operator tools pointed at a runtime directory.

The operator tools read ``directory.db`` and actor files without waking actors and without
the user's classes (see :mod:`runtime.ops.inspect`). Replaying and dropping dead letters write an
actor's mailbox, so they take the runtime's ``LOCK`` as ``open_runtime`` does, and refuse
while a process has the runtime open.

``restore`` and ``fork`` read a replica (``--replica DIR`` or ``--s3-bucket``): ``restore``
rebuilds a whole runtime directory, or one actor's files (``--actor``, runtime closed);
``fork`` copies an actor's state, at a past time or its latest, into a new actor.
``inspect`` and ``sql`` with ``--from-replica`` (and no DIR) read the replica instead of a
runtime directory, at ``--at TIME`` or its latest, through a temporary directory.

Exit status: 0 on success, 1 for an error met in the runtime directory (missing, an unknown
actor, an actor awake in a running process, a runtime open elsewhere), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import fcntl
import json
import math
import os
import re
import shlex
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import apsw
import attrs

from .errors import (
    ActorError,
    ActorExistsError,
    InvalidKeyError,
    RestorePointError,
    RestoreRefusedError,
    RuntimeLockedError,
    WriteRefusedError,
)
from .files import db as _db
from .files.directory import Directory
from .files.layout import DATA_FILE, DIRECTORY_FILE, LOCK_FILE, MAILBOX_FILE, actor_dir, actor_id
from .files.mailbox import Mailbox
from .ops import inspect as _inspect
from .replica import DirectoryStore, ReplicaStore, S3Store
from .replica.replicator import Manifest, manifest_key
from .replica.shipper import (
    ACTORS_PREFIX,
    ORIGIN_FILE,
    STATE_FILE,
    ReplicationEngine,
    restore_actor_files,
    restore_runtime,
)
from .spec import DEFAULT_MAX_KEY_BYTES, check_key


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("torpor")
    except metadata.PackageNotFoundError:
        return "0+unknown"


#: The suites of ``torpor bench``.
BENCH_SUITES = ("core", "supervisor", "steps", "replication")
#: ``torpor bench replication --quick``: small counts for a smoke run (options given after
#: them win).
REPLICATION_QUICK = (
    *("--actors", "10", "--rate", "50", "--seconds", "2", "--warmup", "0.5"),
    *("--durable-asks", "5", "--hop-chains", "5", "--idle-actors", "20", "--idle-seconds", "1"),
    *("--restore-mb", "1", "--restore-repeats", "1"),
)


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else list(argv)
    if args_list[:1] == ["bench"]:
        at = _bench_suite_at(args_list)
        if at is not None and args_list[at] == "replication":
            # Its own options (a store to start or point at, load, phases): see --help.
            from .bench import replication as bench_replication

            rest = args_list[1:at] + args_list[at + 1 :]
            if "--quick" in rest:
                rest = [*REPLICATION_QUICK, *(arg for arg in rest if arg != "--quick")]
            return bench_replication.main(rest)
    parser = argparse.ArgumentParser(prog="torpor", description="Durable per-agent actors.")
    parser.add_argument("--version", action="version", version=f"torpor {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    bench = commands.add_parser(
        "bench", help="measure torpor beside a raw apsw loop doing the same SQL"
    )
    bench.add_argument(
        "--quick", action="store_true", help="small counts (a smoke run), for every suite"
    )
    bench.add_argument(
        "--synchronous", choices=["NORMAL", "FULL"], default="NORMAL", help="core and steps"
    )
    bench.add_argument("--backend", choices=["trio", "asyncio"], default="trio")
    bench.add_argument("--json", action="store_true", help="machine-readable output")
    bench.add_argument(
        "suite",
        nargs="?",
        choices=BENCH_SUITES,
        default="core",
        help="core: messages and asks (default); supervisor: wake-ups, hibernation, recovery; "
        "steps: journaled step overhead, resumption after a kill -9; replication: lag, "
        "requests and restore time against a local S3 server (own options: "
        "torpor bench replication --help)",
    )
    bench.add_argument("--actors", type=int, default=10_000, help="supervisor: actors to create")
    bench.add_argument("--awake", type=int, default=1_000, help="supervisor: actors to wake")
    bench.add_argument(
        "--resume", type=int, default=10_000, help="supervisor: actors to recover after a kill"
    )
    # ``inspect`` and ``sql`` with --from-replica read a replica, not a runtime directory: they
    # take no DIR. Their local form keeps DIR a plain positional (parsed as it always was).
    from_replica = args_list[:1] in (["inspect"], ["sql"]) and "--from-replica" in args_list
    _add_operator_commands(commands, from_replica=from_replica)

    args = parser.parse_args(args_list)
    # Names in error messages to say in the user's terms (set by the commands that know them):
    # raw text to replace, and actors by id.
    args.error_names = {}
    args.error_actors = {}
    if args.command == "bench":
        from .bench import turns as bench_module

        def progress(text: str) -> None:
            if not args.json:
                print(f"... {text}", file=sys.stderr, flush=True)

        if args.suite == "supervisor":
            from .bench import supervisor as bench_supervisor

            actors = 500 if args.quick else args.actors
            awake = 200 if args.quick else args.awake
            if actors < 2 or not 1 <= awake < actors:
                bench.error(  # (one actor more than --awake: the fresh process's warm-up wake)
                    f"supervisor: --actors must be at least 2 and --awake between 1 and "
                    f"--actors - 1 (got --actors {actors}, --awake {awake})"
                )
            report = bench_supervisor.run(
                actors=actors,
                awake=awake,
                resume=500 if args.quick else args.resume,
                backend=args.backend,
                progress=progress,
            )
            if args.json:
                document = bench_module.as_json(report.figures, "NORMAL")
                print(json.dumps({**document, **report.as_json()}, indent=2))
            else:
                print(bench_module.format_table(report.figures, "NORMAL"))
                print("\n".join(report.lines()))
            return 0
        elif args.suite == "steps":
            from .bench import steps as bench_steps

            figures = bench_steps.run(
                quick=args.quick,
                synchronous=args.synchronous,
                backend=args.backend,
                progress=progress,
            )
        else:
            figures = bench_module.run(
                quick=args.quick,
                synchronous=args.synchronous,
                backend=args.backend,
                progress=progress,
            )
        if args.json:
            print(json.dumps(bench_module.as_json(figures, args.synchronous), indent=2))
        else:
            print(bench_module.format_table(figures, args.synchronous))
        return 0
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except BrokenPipeError:  # the reader went away (``torpor ls DIR | head``)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except WriteRefusedError as exc:
        print(f"torpor {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (ActorError, LookupError, OSError, apsw.Error) as exc:
        text = _user_terms(_message(exc), args.error_names, args.error_actors)
        print(f"torpor {args.command}: {text}", file=sys.stderr)
        return 1


def _bench_suite_at(args: list[str]) -> int | None:
    """Where the suite is in ``torpor bench ...`` (before or after options), or ``None``: the
    first suite name that is not the value of an option."""
    flags = {"-h", "--help", "--quick", "--json"}  # the options that take no value
    if "replication" in args:
        from .bench import replication as bench_replication

        for action in bench_replication.parser()._actions:
            if action.nargs == 0:
                flags.update(action.option_strings)
    for i, arg in enumerate(args[1:], start=1):
        if arg == "--":
            following = args[i + 1 : i + 2]
            return i + 1 if following and following[0] in BENCH_SUITES else None
        before = args[i - 1]
        value = before.startswith("-") and "=" not in before and before not in flags
        if arg in BENCH_SUITES and (i == 1 or not value):
            return i
    return None


#: An instant as a message from the replica says it, in epoch seconds.
_EPOCH_SECONDS = re.compile(r"\b(time|from|since) (\d+\.\d+)\b")
#: A replica's name of an actor's file (or of an object of it), quoted or not.
_ACTOR_NAME = re.compile(
    rf"(?P<quote>'?)\b{ACTORS_PREFIX}/(?P<aid>[0-9a-f]{{32}})/(?P<rest>[^'\s]*)(?P=quote)"
)


def _user_terms(text: str, names: dict[str, str], actors: dict[str, str] | None = None) -> str:
    """``text`` in the user's terms: each raw name in ``names`` (a temporary directory, a
    store's repr), quoted or not, replaced by what the user knows it as; a replica's names of
    the files of ``actors`` (by id) by ``data.db of TYPE 'KEY'``; and instants given in epoch
    seconds written as ISO-8601 times."""
    for raw in sorted(names, key=len, reverse=True):
        text = text.replace(repr(raw), names[raw]).replace(raw, names[raw])

    def actor_file(m: re.Match[str]) -> str:
        said = (actors or {}).get(m["aid"])
        if said is None:
            return m[0]
        return f"{m['rest']} of {said}" if m["rest"] else said

    text = _ACTOR_NAME.sub(actor_file, text)
    return _EPOCH_SECONDS.sub(lambda m: f"{m[1]} {_iso(float(m[2]))}", text)


def _iso(at: float) -> str:
    """An instant as ISO 8601 in UTC (what ``--at`` takes), to the microsecond, rounded up so
    that ``--at`` given it back includes that instant."""
    if not math.isfinite(at):
        return str(at)
    micros = math.ceil(at * 1_000_000)
    when = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC) + _dt.timedelta(microseconds=micros)
    spec = "microseconds" if when.microsecond else "seconds"
    return when.isoformat(timespec=spec).replace("+00:00", "Z")


def _actor_names(args: argparse.Namespace, aid: str, type_name: str, key: str) -> None:
    """Have errors say the replica's names of an actor's files as the user knows the actor."""
    args.error_actors[aid] = f"{type_name} {key!r}"


def _name_actors_in(args: argparse.Namespace, text: str, root: Path) -> None:
    """:func:`_actor_names` for the actors whose files ``text`` names, found in ``root``'s
    ``directory.db`` (if there is one to read)."""
    aids = sorted({m["aid"] for m in _ACTOR_NAME.finditer(text)} - args.error_actors.keys())
    if not aids:
        return
    with contextlib.suppress(Exception), _inspect.reading_directory(root) as conn:
        for aid, type_name, key in conn.execute(
            f"SELECT id, type, key FROM actors WHERE id IN ({', '.join('?' * len(aids))})", aids
        ):
            _actor_names(args, aid, type_name, key)


def _message(exc: BaseException) -> str:
    if isinstance(exc, apsw.Error):
        return f"SQLite: {exc}"
    if isinstance(exc, KeyError | LookupError) and exc.args and isinstance(exc.args[0], str):
        return exc.args[0]
    return str(exc)


# -- the command line ---------------------------------------------------------------------------


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0 (got {text})")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (got {value})")
    return value


_FROM_REPLICA_EPILOG = (
    "From a replica: %(prog)s ... --from-replica (--replica DIR | --s3-bucket BUCKET ...) "
    "[--at TIME], and no runtime DIR: the files are restored into a temporary directory, read "
    "there and deleted; nothing local is read or changed, and no actor wakes."
)


def _add_operator_commands(commands: Any, *, from_replica: bool = False) -> None:
    def command(
        name: str, run: Callable[[argparse.Namespace], int], text: str, *, replica: bool = False
    ) -> Any:
        epilog = _FROM_REPLICA_EPILOG if replica else None
        sub = commands.add_parser(name, help=text, description=text, epilog=epilog)
        sub.set_defaults(run=run)
        if not (from_replica and replica):
            sub.add_argument("dir", type=Path, help="the runtime directory (open_runtime's path)")
        return sub

    def replica_source(sub: Any) -> None:
        sub.add_argument(
            "--from-replica",
            action="store_true",
            help="read the replica (its options below) instead of a runtime DIR (then give none)",
        )
        sub.add_argument("--at", type=_point_in_time, metavar="TIME", help=_AT_HELP)
        _add_replica_options(sub)

    ls = command("ls", _ls, "list actors from directory.db, without opening their files")
    ls.add_argument("--type", dest="type_name", metavar="TYPE", help="only this actor type")
    ls.add_argument("--status", choices=_inspect.STATUSES, help="only actors in this status")
    ls.add_argument("--prefix", metavar="KEYPREFIX", help="only keys starting with this")
    ls.add_argument(
        "--limit", type=_non_negative, default=1000, help="at most this many (0: all; 1000)"
    )
    ls.add_argument("--json", action="store_true", help="machine-readable output")

    ins = command(
        "inspect",
        _inspect_command,
        "show one actor's state without waking it",
        replica=True,
    )
    ins.add_argument("type_name", metavar="TYPE")
    ins.add_argument("key", metavar="KEY")
    ins.add_argument("--rows", type=_non_negative, default=5, help="first rows shown per table (5)")
    ins.add_argument("--json", action="store_true", help="machine-readable output")
    replica_source(ins)

    sql = command(
        "sql",
        _sql,
        "run a read-only query on every hibernated actor of a type",
        replica=True,
    )
    sql.add_argument("query", metavar="SQL", help='e.g. "SELECT count(*) FROM log"')
    sql.add_argument("--type", dest="type_name", metavar="TYPE", required=True)
    sql.add_argument("--prefix", metavar="KEYPREFIX", help="only keys starting with this")
    sql.add_argument("--json", action="store_true", help="machine-readable output")
    replica_source(sql)

    dead = command(
        "dead-letters",
        _dead_letters,
        "list an actor's dead letters; replay or drop one (with the runtime closed)",
    )
    dead.add_argument("type_name", metavar="TYPE")
    dead.add_argument("key", metavar="KEY")
    action = dead.add_mutually_exclusive_group()
    action.add_argument(
        "--replay", type=int, metavar="SEQ", help="send it again (it runs at the next open)"
    )
    action.add_argument("--drop", type=int, metavar="SEQ", help="delete it for good")
    dead.add_argument("--json", action="store_true", help="machine-readable output")

    status = command("status", _status, "counts, whether the runtime is open, disk usage")
    status.add_argument("--json", action="store_true", help="machine-readable output")

    for name, text in (
        ("send", "send a message to an actor (the runtime must be closed: this opens it)"),
        ("ask", "ask an actor and print its reply (the runtime must be closed: this opens it)"),
    ):
        call = command(name, _call, text)
        call.add_argument("type_name", metavar="TYPE")
        call.add_argument("key", metavar="KEY")
        call.add_argument("handler", metavar="HANDLER")
        call.add_argument(
            "--types",
            required=True,
            metavar="MODULE:NAME[,...]",
            help="your actor classes (a class, or a list of them), e.g. myapp.agents:Chat; "
            "the current directory is importable",
        )
        call.add_argument("--args", default="[]", metavar="JSON", help="positional, a JSON list")
        call.add_argument("--kwargs", default="{}", metavar="JSON", help="keyword, a JSON object")
        call.add_argument("--idempotency-key", metavar="KEY", help="a retried call is a no-op")
        if name == "ask":
            call.add_argument(
                "--timeout",
                type=_positive_seconds,
                metavar="SECONDS",
                help="give up waiting for the reply after this long, saying what the actor waits "
                "for (the message stays queued; default: wait for as long as it takes)",
            )
        call.add_argument("--json", action="store_true", help="machine-readable output")
        _add_replica_options(call)  # the runtime's replica, as its program opens it (optional)

    _add_replica_commands(command)


def _load_types(spec: str) -> list[type]:
    """``module:Name`` items, comma-separated; a name may be a class or a list of classes."""
    import importlib

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    found: list[type] = []
    for item in (part.strip() for part in spec.split(",")):
        module_name, sep, attr = item.partition(":")
        if not sep or not module_name or not attr:
            raise LookupError(f"--types: {item!r} is not MODULE:NAME")
        try:
            value: Any = importlib.import_module(module_name)
        except ImportError as exc:
            raise LookupError(f"--types: cannot import {module_name!r} ({exc})") from exc
        for part in attr.split("."):
            if not hasattr(value, part):
                raise LookupError(f"--types: {module_name} has no {attr!r}")
            value = getattr(value, part)
        found.extend(value if isinstance(value, list | tuple) else [value])
    return found


def _call(args: argparse.Namespace) -> int:
    """``torpor send`` / ``torpor ask``: open the runtime with the user's classes (its pending
    actors of those types resume, as at any open), make the call, close gracefully."""
    import anyio

    from .engine import open_runtime

    root = _inspect.check_root(args.dir)
    try:
        positional = json.loads(args.args)
        keywords = json.loads(args.kwargs)
    except ValueError as exc:
        raise WriteRefusedError(f"--args/--kwargs must be JSON ({exc})") from exc
    if not isinstance(positional, list) or not isinstance(keywords, dict):
        raise WriteRefusedError("--args must be a JSON list and --kwargs a JSON object")
    types = _load_types(args.types)
    by_name: dict[str, type] = {}
    durable: list[str] = []
    for t in types:
        spec = getattr(t, "__torpor_spec__", None)
        if spec is None:
            raise LookupError(f"--types: {t!r} is not an actors.Actor class")
        by_name[spec.name] = t
        if spec.durable:
            durable.append(spec.name)
    if args.type_name not in by_name:
        raise LookupError(
            f"{args.type_name!r} is not among --types ({', '.join(sorted(map(str, by_name)))})"
        )
    actor_type = by_name[args.type_name]
    replica = None
    if args.replica is not None or args.s3_bucket is not None:
        replica = _replica_store(args)
    elif durable:
        raise WriteRefusedError(
            f"{', '.join(map(repr, sorted(durable)))} {'are' if len(durable) > 1 else 'is'} "
            "durable = True: replies wait for the replica, so give the runtime's replica as its "
            "program opens it (--replica DIR, or --s3-bucket BUCKET and its options)"
        )

    async def run() -> Any:
        async with open_runtime(root, types=types, replica=replica) as rt:
            ref: Any = rt.ref(actor_type, args.key)
            if args.command == "ask":
                return await _ask(args, rt, ref, positional, keywords)
            # Ref.send, saying whether the idempotency key made it a repeat (nothing stored).
            _, seq, stored = await rt._send(
                ref._spec, ref.key, args.handler, tuple(positional), keywords, args.idempotency_key
            )
            return seq, stored

    result = anyio.run(run)
    if args.command == "ask":
        if args.json:
            _print_json({"reply": _inspect.to_json(result)})
        else:
            print(json.dumps(_inspect.to_json(result), ensure_ascii=False))
        return 0
    seq, stored = result
    if args.json:
        _print_json({"sent": stored, "duplicate": not stored})
    elif stored:
        print(f"sent {args.type_name} {args.key!r} {args.handler}")
    else:
        first = f" (message {seq})" if seq else ""
        print(
            f"not sent again: a duplicate of the call sent with --idempotency-key "
            f"{args.idempotency_key!r}{first}; nothing new was stored"
        )
    return 0


class _NoReplyError(ActorError):
    """``torpor ask --timeout``: no reply in time."""


#: How often ``torpor ask`` looks whether the actor's turn waits (to say so once).
ASK_LOOK_EVERY = 0.5


async def _ask(
    args: argparse.Namespace, rt: Any, ref: Any, positional: list[Any], keywords: dict[str, Any]
) -> Any:
    """``ref.ask``, giving up after ``--timeout`` (:class:`_NoReplyError`, saying what the
    actor waits for). Meanwhile, says once on stderr when the actor has a turn waiting durably
    (for an event, or in a sleep): no reply comes before that wait ends."""
    import anyio

    async def look() -> None:
        with contextlib.suppress(Exception):  # only a note
            while True:
                waits = _waits(await rt.turns(ref))
                if waits:
                    break
                await anyio.sleep(ASK_LOOK_EVERY)
            give_up = "" if args.timeout else " (--timeout SECONDS gives up waiting)"
            print(
                f"torpor ask: {args.type_name} {args.key!r} is waiting: {'; '.join(waits)}; "
                f"no reply until then{give_up}",
                file=sys.stderr,
                flush=True,
            )

    outcome: list[Any] = []
    with anyio.move_on_after(args.timeout):
        async with anyio.create_task_group() as group:
            group.start_soon(look)
            try:
                outcome.append(await ref.ask(args.handler, *positional, **keywords, **_key(args)))
            except Exception as exc:  # raised below, outside the task group (not in a group)
                outcome.append(exc)
            group.cancel_scope.cancel()
    if outcome:
        if isinstance(outcome[0], Exception):
            raise outcome[0]
        return outcome[0]
    turns = await rt.turns(ref)
    what = "; ".join(_waits(turns) or [f"{_turn(t)} is {t.status}" for t in turns])
    events = [s.name for t in turns for s in t.steps if s.status == "waiting" and s.kind == "event"]
    signal = "".join(
        f" (ref.signal({name!r}, ...) sends it, from a program that opens the runtime)"
        for name in events[:1]
    )
    again = (
        f"ask again with --idempotency-key {args.idempotency_key} for its reply"
        if args.idempotency_key
        else "with an --idempotency-key, asking again with the same key gives its reply"
    )
    raise _NoReplyError(
        f"no reply from {args.type_name} {args.key!r} within {args.timeout:g} s: "
        + (f"{what}{signal}, and later messages wait behind it" if what else "no turn has started")
        + f". The message stays queued: its turn goes on when the runtime is next opened "
        f"({again})"
    )


def _turn(t: Any) -> str:
    return f"{t.method} (message {t.seq})"


def _waits(turns: Sequence[Any]) -> list[str]:
    """What the turns in flight (``Runtime.turns``) wait for durably, one line each."""
    out = []
    for t in turns:
        step = next((s for s in reversed(t.steps) if s.status == "waiting"), None)
        if step is None:
            continue
        if step.kind == "event":
            what = f"event {step.name!r}" + (
                f" (or its deadline, {_iso(step.until)})" if step.until is not None else ""
            )
        elif step.kind == "sleep" and step.until is not None:
            what = f"the end of a durable sleep, at {_iso(step.until)}"
        else:
            what = f"{step.kind} {step.name!r}"
        out.append(f"{_turn(t)} waits for {what}")
    return out


def _key(args: argparse.Namespace) -> dict[str, Any]:
    return {"idempotency_key": args.idempotency_key} if args.idempotency_key else {}


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def _when(at: float | None) -> str:
    if at is None:
        return "-"
    return _dt.datetime.fromtimestamp(at, _dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024  # type: ignore[assignment]
    raise AssertionError("unreachable")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


# -- ls --------------------------------------------------------------------------------------


def _ls(args: argparse.Namespace) -> int:
    rows, more = _inspect.list_actors(
        args.dir,
        type_name=args.type_name,
        prefix=args.prefix,
        status=args.status,
        limit=args.limit or None,
    )
    if args.json:
        _print_json({"actors": [attrs.asdict(r) for r in rows], "more": more})
        return 0
    if not rows:
        print("no actors" + (" match" if args.type_name or args.prefix or args.status else ""))
        return 0
    print(
        _table(
            ["TYPE", "KEY", "STATUS", "PENDING", "NEXT WAKE-UP", "CREATED"],
            [
                [
                    r.type,
                    r.key,
                    r.status,
                    "yes" if r.pending else "no",
                    _when(r.wake_at),
                    _when(r.created_at),
                ]
                for r in rows
            ],
        )
    )
    if more:
        print(f"(first {len(rows)} shown; --limit 0 lists all)")
    return 0


# -- status ------------------------------------------------------------------------------------


def _status(args: argparse.Namespace) -> int:
    s = _inspect.summary(args.dir)
    if args.json:
        _print_json(attrs.asdict(s))
        return 0
    print(f"runtime       {s.path}")
    print(
        "open          "
        + ("yes, by a running process (it holds LOCK)" if s.open else "no (no process holds LOCK)")
    )
    print(f"runtime id    {s.runtime_id or '-'}")
    print(
        f"actors        {s.actors}  (pending {s.pending}, stopped {s.stopped}, "
        f"with timers {s.with_timers})"
    )
    print(f"next wake-up  {_when(s.next_wake_at)}")
    print(
        f"disk          {_size(s.disk_bytes)}  (directory.db {_size(s.directory_bytes)}, "
        f"{_plural(s.actor_folders, 'actor folder')})"
    )
    print(f"replication   {s.replication}")
    if s.by_type:
        print()
        print(
            _table(
                ["TYPE", "ACTORS", "PENDING", "STOPPED", "WITH TIMERS"],
                [[t.type, t.actors, t.pending, t.stopped, t.with_timers] for t in s.by_type],
            )
        )
    return 0


# -- inspect -----------------------------------------------------------------------------------


def _inspect_command(args: argparse.Namespace) -> int:
    if _reads_replica(args):
        with _from_replica(args, actor=(args.type_name, args.key)) as root:
            report = _inspect.inspect_actor(root, args.type_name, args.key, rows=args.rows)
        report = attrs.evolve(
            report,
            folder=f"none (read from {_replica_text(args)})",
            replication=f"read from the replica: {_at_text(args.at)}",
        )
    else:
        report = _inspect.inspect_actor(args.dir, args.type_name, args.key, rows=args.rows)
    if args.json:
        _print_json(_report_json(report))
    else:
        print(_report_text(report))
    return 0


def _report_json(r: _inspect.ActorReport) -> dict[str, Any]:
    j = _inspect.to_json
    return {
        "actor": attrs.asdict(r.actor),
        "folder": r.folder,
        "files": r.files,
        "applied_seq": r.applied_seq,
        "created": r.created,
        "user_version": r.user_version,
        "tables": [
            {
                "name": t.name,
                "rows": t.rows,
                "columns": list(t.columns),
                "first_rows": j(t.first_rows),
            }
            for t in r.tables
        ],
        "kv": {k: j(v) for k, v in r.kv},
        "kv_count": r.kv_count,
        "inbox": [
            {
                "seq": m.seq,
                **_inspect.call_json(m.method, m.payload),
                "sender": m.sender,
                "attempts": m.attempts,
                "cancelled": m.cancelled,
                "enqueued_at": m.enqueued_at,
            }
            for m in r.inbox
        ],
        "turns": [
            {
                "seq": t.seq,
                "method": t.method,
                "status": t.status,
                "attempts": t.attempts,
                "cancelled": t.cancelled,
                "steps": [{**attrs.asdict(s), "value": j(s.value)} for s in t.steps],
            }
            for t in r.turns
        ],
        "events": [
            {
                "id": e.id,
                "name": e.name,
                "payload": j(_inspect.decode(e.payload)),
                "sent_at": e.sent_at,
            }
            for e in r.events
        ],
        "timers": [
            {
                "name": t.name,
                **_inspect.call_json(t.method, t.payload),
                "due_at": t.due_at,
                "every": t.every,
                "cron": t.cron,
            }
            for t in r.timers
        ],
        "dead_letters": [_dead_letter_json(d) for d in r.dead_letters],
        "replication": r.replication,
    }


def _dead_letter_json(d: _inspect.DeadLetterView) -> dict[str, Any]:
    return {
        "seq": d.seq,
        **_inspect.call_json(d.method, d.payload),
        "sender": d.sender,
        "idempotency_key": d.idempotency_key,
        "attempts": d.attempts,
        "error_type": d.error_type,
        "error_message": d.error_message,
        "traceback": d.traceback,
        "failed_at": d.failed_at,
    }


def _report_text(r: _inspect.ActorReport) -> str:
    a = r.actor
    out = [f"{a.type} {a.key!r}  {a.status}" + (f" ({a.stopped})" if a.stopped else "")]
    files = ", ".join(f"{name} {_size(size)}" for name, size in r.files.items()) or "none yet"
    fields = [
        ("folder", r.folder),
        ("files", files),
        ("created", _when(a.created_at) + ("" if r.created else "  (on_create not run yet)")),
        ("pending", "yes" if a.pending else "no"),
        ("next wake-up", _when(a.wake_at)),
        ("applied up to", f"message {r.applied_seq}"),
        ("schema", f"user_version {r.user_version}"),
        ("replication", r.replication),
    ]
    if a.parent:
        fields.insert(0, ("parent", a.parent))
    out += [f"  {name:<14}{value}" for name, value in fields]

    def section(title: str, count: int, body: list[str]) -> None:
        out.append("")
        out.append(f"{title} ({count})" if count else f"{title}: none")
        out.extend("  " + line for text in body for line in text.splitlines())

    section(
        "Tables",
        len(r.tables),
        [
            f"{t.name}: {_plural(t.rows, 'row')}"
            + (
                "\n"
                + _indent(
                    _table(t.columns, [[_inspect.show(v, 40) for v in row] for row in t.first_rows])
                )
                if t.first_rows
                else f"  ({', '.join(t.columns)})"
            )
            + (f"\n  ... {t.rows - len(t.first_rows)} more" if t.rows > len(t.first_rows) else "")
            for t in r.tables
        ],
    )
    kv_body = [_table(["KEY", "VALUE"], [[k, _inspect.show(v)] for k, v in r.kv])] if r.kv else []
    if r.kv_count > len(r.kv):
        kv_body.append(f"... {r.kv_count - len(r.kv)} more (--json shows the same first ones)")
    section("KV", r.kv_count, kv_body)
    section(
        "Inbox, not yet applied",
        len(r.inbox),
        [
            _table(
                ["SEQ", "CALL", "SENDER", "ATTEMPTS", "ENQUEUED"],
                [
                    [
                        m.seq,
                        _inspect.show_call(m.method, m.payload),
                        m.sender or "-",
                        f"{m.attempts} (cancelled)" if m.cancelled else m.attempts,
                        _when(m.enqueued_at),
                    ]
                    for m in r.inbox
                ],
            )
        ]
        if r.inbox
        else [],
    )
    turn_body = []
    for t in r.turns:
        turn_body.append(
            f"message {t.seq} {t.method}: {t.status}, {_plural(t.attempts, 'failed attempt')}"
        )
        turn_body.append(
            _indent(
                _table(
                    ["STEP", "KIND", "NAME", "STATUS", "ATTEMPTS", "UNTIL", "RESULT"],
                    [
                        [
                            s.number,
                            s.kind,
                            s.name,
                            s.status,
                            s.attempts,
                            _when(s.until),
                            _inspect.show(s.value, 40),
                        ]
                        for s in t.steps
                    ],
                )
            )
        )
    section("Turns in flight", len(r.turns), turn_body)
    section(
        "Events not yet consumed",
        len(r.events),
        [
            _table(
                ["ID", "NAME", "PAYLOAD", "SENT"],
                [
                    [e.id, e.name, _inspect.show(_inspect.decode(e.payload)), _when(e.sent_at)]
                    for e in r.events
                ],
            )
        ]
        if r.events
        else [],
    )
    section(
        "Timers",
        len(r.timers),
        [
            _table(
                ["NAME", "CALL", "DUE", "EVERY", "CRON"],
                [
                    [
                        t.name,
                        _inspect.show_call(t.method, t.payload),
                        _when(t.due_at),
                        "-" if t.every is None else f"{t.every:g} s",
                        t.cron or "-",
                    ]
                    for t in r.timers
                ],
            )
        ]
        if r.timers
        else [],
    )
    section(
        "Dead letters",
        len(r.dead_letters),
        [_dead_letters_table(r.dead_letters)] if r.dead_letters else [],
    )
    return "\n".join(out)


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def _dead_letters_table(letters: Sequence[_inspect.DeadLetterView]) -> str:
    return _table(
        ["SEQ", "CALL", "ATTEMPTS", "ERROR", "FAILED"],
        [
            [
                d.seq,
                _inspect.show_call(d.method, d.payload, 40),
                d.attempts,
                _short(f"{d.error_type.rpartition('.')[2]}: {d.error_message}"),
                _when(d.failed_at),
            ]
            for d in letters
        ],
    )


def _short(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


# -- sql ---------------------------------------------------------------------------------------


def _sql(args: argparse.Namespace) -> int:
    if _reads_replica(args):
        with _from_replica(args, prefix=args.prefix) as root:
            return _sql_in(args, root)
    return _sql_in(args, args.dir)


def _sql_in(args: argparse.Namespace, root: Path) -> int:
    _inspect.check_root(root)
    columns: tuple[str, ...] = ()
    rows: list[tuple[str, tuple[Any, ...]]] = []
    skipped: list[tuple[str, str]] = []
    errors: list[tuple[str, str]] = []
    for result in _inspect.query_actors(
        root, args.query, type_name=args.type_name, prefix=args.prefix
    ):
        if result.skipped is not None:
            skipped.append((result.key, result.skipped))
        elif result.error is not None:
            errors.append((result.key, result.error))
        else:
            columns = columns or result.columns
            rows += [(result.key, row) for row in result.rows]
    if args.json:
        _print_json(
            {
                "columns": list(columns),
                "rows": [{"key": key, "values": _inspect.to_json(list(row))} for key, row in rows],
                "skipped": [{"key": k, "reason": why} for k, why in skipped],
                "errors": [{"key": k, "error": e} for k, e in errors],
            }
        )
    elif rows:
        width = max(len(row) for _, row in rows)
        headers = ["KEY", *(columns or [f"column {i + 1}" for i in range(width)])]
        print(_table(headers, [[key, *(_cell(v) for v in row)] for key, row in rows]))
    elif not errors:
        print("no rows")
    for key, why in skipped:
        print(f"torpor sql: skipped {args.type_name} {key!r}: {why}", file=sys.stderr)
    if errors and not rows and len({e for _, e in errors}) == 1:
        # The same error everywhere (a syntax error, a table no actor has): say it once.
        print(f"torpor sql: {errors[0][1]} (in all {len(errors)} actors)", file=sys.stderr)
    else:
        for key, error in errors:
            print(f"torpor sql: {args.type_name} {key!r}: {error}", file=sys.stderr)
    return 1 if errors else 0


# -- inspect and sql --from-replica ---------------------------------------------------------------


def _reads_replica(args: argparse.Namespace) -> bool:
    """Whether ``inspect``/``sql`` read a replica (``--from-replica``); the replica options
    without it are a usage error rather than silently ignored."""
    if args.from_replica:
        return True
    given = [
        flag
        for flag, value in (
            ("--at", args.at),
            ("--replica", args.replica),
            ("--s3-bucket", args.s3_bucket),
            ("--s3-prefix", args.s3_prefix),
            ("--s3-endpoint-url", args.s3_endpoint_url),
            ("--s3-region", args.s3_region),
            ("--s3-path-style", args.s3_path_style),
        )
        if value
    ]
    if given:
        args.replica_parser.error(
            f"{given[0]} reads a replica: add --from-replica (and give no runtime DIR)"
        )
    return False


def _replica_text(args: argparse.Namespace) -> str:
    if args.replica is not None:
        return f"the replica {args.replica}"
    return f"the replica s3://{args.s3_bucket}/{args.s3_prefix}"


@contextlib.contextmanager
def _from_replica(
    args: argparse.Namespace,
    *,
    actor: tuple[str, str] | None = None,
    prefix: str | None = None,
) -> Iterator[Path]:
    """A temporary runtime directory holding ``directory.db`` and, from the replica at
    ``args.at`` (or its latest), the files of ``actor``, or of every actor of
    ``args.type_name`` whose key starts with ``prefix``; deleted on exit. An actor without a
    replica at that point is left without files (read as never woken)."""
    import tempfile

    from .replica.replicator import restore

    store = _replica_store(args)
    source = _replica_text(args)
    args.error_names[repr(store)] = source
    try:
        with tempfile.TemporaryDirectory(prefix="torpor-from-replica-") as tmp:
            root = Path(tmp)
            # Errors name the replica, never this directory (deleted by the time they print).
            args.error_names[tmp] = source + ("" if args.at is None else f" at {_iso(args.at)}")
            got = store.get(manifest_key(DIRECTORY_FILE))
            if got is None:
                raise RestorePointError(f"there is no replica of {DIRECTORY_FILE!r} in {store!r}")
            manifest = Manifest.decode(got[0], key=manifest_key(DIRECTORY_FILE))
            restore(
                store, DIRECTORY_FILE, root / DIRECTORY_FILE, at_time=args.at, manifest=manifest
            )
            if actor is not None:
                actors = [actor]
            else:
                with _inspect.reading_directory(root) as conn:
                    actors = [
                        (args.type_name, str(key))
                        for (key,) in conn.execute(
                            "SELECT key FROM actors WHERE type = ?", (args.type_name,)
                        )
                        if prefix is None or str(key).startswith(prefix)
                    ]
            for type_name, key in actors:
                aid = actor_id(type_name, key)
                _actor_names(args, aid, type_name, key)
                args.error_names[str(actor_dir(root, aid))] = f"the folder of {type_name} {key!r}"
                with contextlib.suppress(RestorePointError):
                    restore_actor_files(store, aid, actor_dir(root, aid), at_time=args.at)
            yield root
    finally:
        store.close()


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return str(value)


# -- dead letters ------------------------------------------------------------------------------


def _dead_letters(args: argparse.Namespace) -> int:
    root, type_name, key = args.dir, args.type_name, args.key
    if args.replay is None and args.drop is None:
        letters = _inspect.dead_letters(root, type_name, key)
        if args.json:
            _print_json([_dead_letter_json(d) for d in letters])
        elif letters:
            print(_dead_letters_table(letters))
        else:
            print(f"{type_name} {key!r} has no dead letters")
        return 0
    seq = args.replay if args.replay is not None else args.drop
    with _runtime_lock(root, "replay or drop dead letters"):
        actor = _inspect.find_actor(root, type_name, key)
        if all(d.seq != seq for d in _inspect.dead_letters(root, type_name, key)):
            raise LookupError(f"{type_name} {key!r} has no dead letter {seq}")
        if args.drop is not None:
            _open_mailbox(root, type_name, key, lambda mailbox: mailbox.drop_dead_letter(seq))
            if args.json:
                _print_json({"dropped": seq})
            else:
                print(f"dropped dead letter {seq} of {type_name} {key!r}")
            return 0
        applied = _inspect.applied_seq(root, type_name, key)
        directory = Directory(root / DIRECTORY_FILE, synchronous="FULL")
        try:  # first, as the runtime does: a crash must not leave the message unnoticed
            directory.mark_pending(actor_id(type_name, key), type_name, key)
        finally:
            directory.close()

        def replay(mailbox: Mailbox) -> int:
            mailbox.ensure_seq_above(applied)
            message = mailbox.replay_dead_letter(seq)
            if message is None:
                raise LookupError(f"{type_name} {key!r} has no dead letter {seq}")
            return int(message.seq)

        new_seq = _open_mailbox(root, type_name, key, replay)
    if args.json:
        _print_json({"replayed": seq, "seq": new_seq})
    else:
        when = (
            "when it is resumed (it is stopped)"
            if actor.status == "stopped"
            else "when the runtime is next opened"
        )
        print(
            f"replayed dead letter {seq} of {type_name} {key!r} as message {new_seq}; "
            f"it runs {when}"
        )
    return 0


def _open_mailbox(root: Path, type_name: str, key: str, fn: Callable[[Mailbox], Any]) -> Any:
    """Run ``fn`` on the actor's mailbox opened as the runtime opens it (hold the LOCK)."""
    path = actor_dir(root, actor_id(type_name, key)) / MAILBOX_FILE
    mailbox = Mailbox(path, synchronous="FULL", type_name=type_name, key=key)
    try:
        return fn(mailbox)
    finally:
        mailbox.close()


@contextlib.contextmanager
def _runtime_lock(root: Path, what: str, *, check: bool = True) -> Iterator[None]:
    """Hold the runtime's ``LOCK`` as ``open_runtime`` does (so no runtime opens meanwhile),
    with this process's pid in it (a runtime refused meanwhile names this process, not the
    last one that held it); ``check``: the directory must hold a runtime already."""
    from .engine import _lock_holder

    if check:
        _inspect.check_root(root)
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeLockedError(
                f"{root} is open in {_lock_holder(fd)}; {what} in that process (Runtime "
                "methods) or once it has closed"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


# -- restore and fork: from a replica ------------------------------------------------------------


def _add_replica_commands(command: Callable[..., Any]) -> None:
    restore = command(
        "restore",
        _restore,
        "rebuild a runtime directory from its replica (or one actor's files, with --actor)",
    )
    restore.add_argument(
        "--actor",
        nargs=2,
        metavar=("TYPE", "KEY"),
        help="restore only this actor's files into the existing runtime DIR (closed)",
    )
    restore.add_argument("--at", type=_point_in_time, metavar="TIME", help=_AT_HELP)
    restore.add_argument("--json", action="store_true", help="machine-readable output")
    _add_replica_options(restore)

    fork = command(
        "fork",
        _fork,
        "copy an actor's state (at a past time, or its latest) into a new actor of its type",
    )
    fork.add_argument("type_name", metavar="TYPE")
    fork.add_argument("key", metavar="KEY")
    fork.add_argument(
        "--as", dest="new_key", metavar="NEWKEY", required=True, help="the new actor's key"
    )
    fork.add_argument(
        "--max-key-bytes",
        type=_non_negative,
        default=DEFAULT_MAX_KEY_BYTES,
        metavar="N",
        help=f"the runtime's open_runtime(max_key_bytes=...), which NEWKEY must fit "
        f"({DEFAULT_MAX_KEY_BYTES})",
    )
    fork.add_argument("--at", type=_point_in_time, metavar="TIME", help=_AT_HELP)
    fork.add_argument(
        "--keep-timers",
        action="store_true",
        help="keep the actor's timers in the fork (they fire for it, one past due at once)",
    )
    fork.add_argument("--json", action="store_true", help="machine-readable output")
    _add_replica_options(fork)


_AT_HELP = (
    "the point in time: ISO-8601 with a zone (2026-11-25T10:00:00Z) or epoch seconds "
    "(default: the latest state)"
)


def _point_in_time(text: str) -> float:
    """``--at``: epoch seconds, or an ISO-8601 date and time with its zone."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = _dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither epoch seconds nor an ISO-8601 time (2026-11-25T10:00:00Z)"
        ) from None
    if when.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} has no time zone: add Z for UTC (2026-11-25T10:00:00Z) or an offset"
        )
    return when.timestamp()


def _add_replica_options(sub: Any) -> None:
    """The options naming a replica store, shared by the commands that read one."""
    group = sub.add_argument_group(
        "replica", "where the replica is: --replica DIR, or --s3-bucket with its options"
    )
    group.add_argument("--replica", type=Path, metavar="DIR", help="a DirectoryStore's folder")
    group.add_argument("--s3-bucket", metavar="BUCKET", help="an S3Store's bucket")
    group.add_argument("--s3-prefix", metavar="PREFIX", default="", help="key prefix in it")
    group.add_argument(
        "--s3-endpoint-url", metavar="URL", help="an S3-compatible store (MinIO, R2, ...)"
    )
    group.add_argument("--s3-region", metavar="REGION", help="the bucket's region")
    group.add_argument(
        "--s3-path-style", action="store_true", help="address buckets as endpoint/bucket/key"
    )
    sub.set_defaults(replica_parser=sub)


def _replica_store(args: argparse.Namespace) -> ReplicaStore:
    """The store named by the replica options (a usage error, exit status 2, if none or both).

    Credentials for S3 come from boto3's chain (``AWS_PROFILE``, ``AWS_ACCESS_KEY_ID``, ...),
    never from the command line."""
    parser: argparse.ArgumentParser = args.replica_parser
    s3_only = [
        flag
        for flag, value in (
            ("--s3-prefix", args.s3_prefix),
            ("--s3-endpoint-url", args.s3_endpoint_url),
            ("--s3-region", args.s3_region),
            ("--s3-path-style", args.s3_path_style),
        )
        if value
    ]
    if args.replica is not None and args.s3_bucket is not None:
        parser.error("give either --replica DIR or --s3-bucket BUCKET, not both")
    if args.replica is not None:
        if s3_only:
            parser.error(f"{s3_only[0]} goes with --s3-bucket, not with --replica")
        if not args.replica.is_dir():
            raise FileNotFoundError(f"replica {args.replica} is not a directory")
        return DirectoryStore(args.replica)
    if args.s3_bucket is None:
        parser.error("say where the replica is: --replica DIR or --s3-bucket BUCKET")
    try:
        return S3Store(
            args.s3_bucket,
            prefix=args.s3_prefix,
            endpoint_url=args.s3_endpoint_url,
            region=args.s3_region,
            path_style=args.s3_path_style,
        )
    except ValueError as exc:
        parser.error(str(exc))


def _at_text(at: float | None) -> str:
    if at is None:
        return "the latest state"
    when = _dt.datetime.fromtimestamp(at, _dt.UTC)
    return f"the state at {when.strftime('%Y-%m-%d %H:%M:%S')}.{when.microsecond // 1000:03d}Z"


class _Progress:
    """A progress bar on stderr, redrawn in place with ``\\r``, only when stderr is a terminal."""

    WIDTH = 30

    def __init__(self, label: str) -> None:
        self.label = label
        self.tty = sys.stderr.isatty()
        self.drawn = 0  # characters on the line
        self.last = 0.0

    def note(self, text: str) -> None:
        if self.tty:
            line = f"{self.label}: {text}"
            sys.stderr.write(f"\r{line.ljust(self.drawn)}")  # spaces cover a longer line
            sys.stderr.flush()
            self.drawn = len(line)

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.tty or (done < total and now - self.last < 0.1):
            return
        self.last = now
        filled = self.WIDTH * done // total if total else self.WIDTH
        self.note(f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {done}/{total} actors")

    def finish(self) -> None:
        if self.drawn:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self.drawn = 0


def _restore(args: argparse.Namespace) -> int:
    store = _replica_store(args)
    args.error_names[repr(store)] = _replica_text(args)
    try:
        if args.actor is not None:
            return _restore_actor(args, store, *args.actor)
        return _restore_runtime(args, store)
    finally:
        store.close()


def _restore_runtime(args: argparse.Namespace, store: ReplicaStore) -> int:
    root: Path = args.dir
    if (root / DIRECTORY_FILE).exists():
        raise FileExistsError(
            f"{root} already holds a runtime ({DIRECTORY_FILE}): restore into a new or empty "
            "directory, or restore one actor into it with --actor TYPE KEY"
        )
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"{root} is not a directory")
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty: restore into a new or empty directory")
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    progress = _Progress(f"restoring {root}")
    started = time.monotonic()
    try:
        with _runtime_lock(root, "restore", check=False):
            progress.note(f"{DIRECTORY_FILE} ...")
            counts = restore_runtime(store, root, at_time=args.at, progress=progress)
    except BaseException as exc:
        progress.finish()
        _name_actors_in(args, str(exc), root)  # from directory.db, before it goes
        # Nothing was there before: leave nothing half restored behind.
        if created:
            shutil.rmtree(root, ignore_errors=True)
        else:
            for child in root.iterdir():
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        raise
    progress.finish()
    seconds = time.monotonic() - started
    if args.json:
        _print_json(
            {
                "dir": str(root),
                "at": args.at,
                "actors": counts["actors"],
                "restored": counts["restored"],
                "not_replicated": counts["not_replicated"],
                "seconds": round(seconds, 3),
            }
        )
        return 0
    missing = counts["not_replicated"]
    print(
        f"restored {root} ({_at_text(args.at)}): {_plural(counts['restored'], 'actor')}"
        + (f", {missing} without a replica at that point (they start empty)" if missing else "")
        + f", in {seconds:.1f} s"
    )
    return 0


def _restore_actor(args: argparse.Namespace, store: ReplicaStore, type_name: str, key: str) -> int:
    root: Path = args.dir
    aid = actor_id(type_name, key)
    folder = actor_dir(root, aid)
    _actor_names(args, aid, type_name, key)
    with _runtime_lock(root, "restore an actor"):
        if args.at is not None:
            writer = _other_writer(store, root, aid)
            if writer is not None:
                raise RestoreRefusedError(
                    f"the replica of {type_name} {key!r} was last written by runtime {writer}, "
                    f"not by this one: when this runtime next wakes {key!r}, it would fetch "
                    "that writer's latest state over the restored past. Fork it to a new key "
                    "instead (torpor fork ... --at TIME --as NEWKEY), or restore the whole "
                    "runtime into a new directory with --at"
                )
        superseded = _restore_files(store, aid, folder, type_name, key, args.at)
        directory = Directory(root / DIRECTORY_FILE, synchronous="FULL")
        try:
            # Pending: the restored mailbox may hold work; the next open wakes it to look.
            directory.mark_pending(aid, type_name, key)
            entry = directory.get(aid)
        finally:
            directory.close()
    stopped = entry.stopped if entry is not None else None
    if args.json:
        _print_json(
            {
                "actor": {"type": type_name, "key": key, "id": aid},
                "at": args.at,
                "folder": str(folder),
                "superseded": None if superseded is None else str(superseded),
                "pending": True,
                "stopped": stopped,
            }
        )
        return 0
    print(f"restored {type_name} {key!r} ({_at_text(args.at)}) into {folder}")
    if superseded is not None:
        print(f"its previous files are in {superseded} (delete them when no longer needed)")
    if stopped is not None:
        print(f"it is stopped ({stopped}): Runtime.resume(ref) lets it run again")
    else:
        print("it wakes when the runtime is next opened")
    return 0


def _restore_files(
    store: ReplicaStore,
    aid: str,
    folder: Path,
    type_name: str,
    key: str,
    at: float | None,
    adjust: Callable[[Path], None] | None = None,
) -> Path | None:
    """Restore an actor's two files into ``folder``: first into a staging folder beside them
    (so that a restore that fails leaves the files here as they were), then ``adjust`` them,
    then move the files found in ``folder`` aside into ``superseded-*`` and the restored ones
    in. Returns the folder the previous files went to (``None`` if there were none)."""
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / f".restore-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        try:
            restore_actor_files(store, aid, staging, at_time=at)
        except RestorePointError as exc:
            files = (DATA_FILE, MAILBOX_FILE)
            its = {ReplicationEngine.actor_name(aid, f): f"its {f}" for f in files}
            text = _user_terms(str(exc), its)
            raise LookupError(f"cannot restore {type_name} {key!r}: {text}") from None
        if adjust is not None:
            adjust(staging)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(folder / STATE_FILE)  # the saved replication state of the old files
        previous = [
            name
            for name in sorted(os.listdir(folder))
            if not name.startswith((".restore-", "superseded-"))
        ]
        superseded = None
        if previous:
            stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
            superseded = folder / f"superseded-{stamp}-{uuid.uuid4().hex[:6]}"
            superseded.mkdir()
            for name in previous:
                os.replace(folder / name, superseded / name)
        for name in (DATA_FILE, MAILBOX_FILE):
            os.replace(staging / name, folder / name)
        _fsync_dir(folder)
        return superseded
    except BaseException:
        if created:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _other_writer(store: ReplicaStore, root: Path, aid: str) -> str | None:
    """The runtime id of the writer of ``aid``'s replica when it is not this runtime's own
    history, else ``None``. At its next wake-up the runtime keeps local files only when their
    replica is its own (or its origin's, for a runtime restored at a point in time), and
    fetches the replica's latest state otherwise (``ReplicationEngine._ours``)."""
    directory = Directory(root / DIRECTORY_FILE, synchronous="FULL")
    try:
        runtime_id = directory.runtime_id()
    finally:
        directory.close()
    try:
        origin = json.loads((root / ORIGIN_FILE).read_text())
    except (OSError, ValueError):
        origin = {}
    if not isinstance(origin, dict):
        origin = {}
    for file in (DATA_FILE, MAILBOX_FILE):
        key = manifest_key(ReplicationEngine.actor_name(aid, file))
        got = store.get(key)
        if got is None:
            continue
        writer = Manifest.decode(got[0], key=key).writer.split("/")[0]
        if writer == runtime_id:
            continue
        if writer == origin.get("runtime") and origin.get("at") is not None:
            continue
        return writer
    return None


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- fork --------------------------------------------------------------------------------------

#: The error type of a fork's dead letters: messages queued in the original, not run by the fork.
FORKED_ERROR = "torpor.NotRunInFork"


@attrs.define
class _ForkChanges:
    """What a fork left out of the original's state (see :func:`_quiet_fork`)."""

    dead_lettered: list[int] = attrs.Factory(list)
    outbox_dropped: int = 0
    timers_dropped: list[str] = attrs.Factory(list)
    timers_kept: list[str] = attrs.Factory(list)
    next_timer: float | None = None


def _fork(args: argparse.Namespace) -> int:
    root: Path = args.dir
    type_name, key, new_key = args.type_name, args.key, args.new_key
    try:  # as the runtime checks a key (Runtime.ref): a fork under any other is unreachable
        check_key(new_key, args.max_key_bytes)
    except InvalidKeyError as exc:
        args.replica_parser.error(f"--as: {exc}")
    aid, new_aid = actor_id(type_name, key), actor_id(type_name, new_key)
    folder = actor_dir(root, new_aid)
    store = _replica_store(args)
    args.error_names[repr(store)] = _replica_text(args)
    _actor_names(args, aid, type_name, key)
    _actor_names(args, new_aid, type_name, new_key)
    try:
        with _runtime_lock(root, "fork an actor"):
            directory = Directory(root / DIRECTORY_FILE, synchronous="FULL")
            try:
                if directory.get(new_aid) is not None:
                    raise ActorExistsError(f"actor {type_name} {new_key!r} already exists")
                if (folder / DATA_FILE).exists() or (folder / MAILBOX_FILE).exists():
                    raise ActorExistsError(
                        f"{folder} already holds files for {type_name} {new_key!r} (an "
                        "interrupted fork?): remove that folder, or choose another key"
                    )
                writer = _other_writer(store, root, new_aid)
                if writer is not None:
                    raise ActorExistsError(
                        f"the replica holds files of {type_name} {new_key!r}, written by "
                        f"runtime {writer}: choose another key"
                    )
                original = directory.get(aid)
                changes = _ForkChanges()

                def adjust(staging: Path) -> None:
                    _rename_actor(staging, type_name, new_key)
                    _quiet_fork(staging, type_name, key, changes, keep_timers=args.keep_timers)

                _restore_files(store, aid, folder, type_name, key, args.at, adjust)
                # Not pending: the fork has no queued work (it was made its dead letters), so
                # nothing wakes it until it is sent a message or a timer it kept falls due.
                directory.create(
                    new_aid, type_name, new_key, original.init if original is not None else None
                )
                directory.clear_pending(new_aid)
                if changes.next_timer is not None:
                    directory.set_wake_at(new_aid, changes.next_timer)
            finally:
                directory.close()
    finally:
        store.close()
    if args.json:
        _print_json(
            {
                "from": {"type": type_name, "key": key, "id": aid},
                "to": {"type": type_name, "key": new_key, "id": new_aid},
                "at": args.at,
                "folder": str(folder),
                "dead_letters": changes.dead_lettered,
                "outbox_dropped": changes.outbox_dropped,
                "timers_dropped": changes.timers_dropped,
                "timers_kept": changes.timers_kept,
            }
        )
        return 0
    print(f"forked {type_name} {key!r} ({_at_text(args.at)}) into {type_name} {new_key!r}")
    if changes.dead_lettered:
        count = len(changes.dead_lettered)
        print(
            f"{_plural(count, 'message')} queued in {key!r} did not run: "
            + ("it is a dead letter" if count == 1 else "they are dead letters")
            + f" of {new_key!r} (torpor dead-letters {shlex.quote(str(root))} {type_name} "
            f"{shlex.quote(new_key)} lists them; --replay SEQ runs one)"
        )
    if changes.outbox_dropped:
        print(
            f"{_plural(changes.outbox_dropped, 'message')} {key!r} had yet to send "
            f"{'is' if changes.outbox_dropped == 1 else 'are'} left to {key!r}"
        )
    if changes.timers_dropped:
        print(
            f"{_plural(len(changes.timers_dropped), 'timer')} not kept: "
            f"{', '.join(changes.timers_dropped)} (--keep-timers keeps them)"
        )
    if changes.timers_kept:
        print(
            f"{_plural(len(changes.timers_kept), 'timer')} kept: "
            f"{', '.join(changes.timers_kept)}; the next is due at {_when(changes.next_timer)}"
        )
    return 0


def _edit(path: Path) -> contextlib.AbstractContextManager[apsw.Connection]:
    """A connection to a restored (closed, WAL-mode) actor file, closed with the WAL folded."""

    @contextlib.contextmanager
    def opened() -> Iterator[apsw.Connection]:
        conn = _db.connect(path, synchronous="FULL", exclusive=True)
        try:
            with conn:
                yield conn
        finally:
            _db.close(conn, path, keep_wal=False)

    return opened()


def _rename_actor(folder: Path, type_name: str, key: str) -> None:
    """Give the files in ``folder`` another actor's identity (it is kept inside the files,
    and checked when they are opened)."""
    with _edit(folder / DATA_FILE) as conn:
        conn.execute("UPDATE _torpor_state SET type = ?, key = ? WHERE id = 1", (type_name, key))
        # A fork is a history of its own: a new lineage (its steps' idempotency keys differ).
        # (A file from before lineages gets one when it is first opened.)
        if any(row[1] == "lineage" for row in conn.execute("PRAGMA table_info(_torpor_state)")):
            conn.execute("UPDATE _torpor_state SET lineage = lower(hex(randomblob(16)))")
    with _edit(folder / MAILBOX_FILE) as conn:
        conn.execute("UPDATE meta SET value = ? WHERE name = 'type'", (type_name,))
        conn.execute("UPDATE meta SET value = ? WHERE name = 'key'", (key,))


def _quiet_fork(
    folder: Path, type_name: str, key: str, changes: _ForkChanges, *, keep_timers: bool
) -> None:
    """Leave out of a fork the work the original had queued, so that none of it runs twice by
    surprise: messages not yet applied become dead letters (with the journals of their turns
    in flight gone, and the events those turns had consumed given back), messages the original
    had yet to send stay the original's to send (a timer's firing, addressed to itself, becomes
    a dead letter too), and timers are dropped unless ``keep_timers``."""
    with _edit(folder / DATA_FILE) as data:
        applied = int(_db.scalar(data, "SELECT applied_seq FROM _torpor_state WHERE id = 1"))
        outbox: list[Any] = data.execute(
            "SELECT id, target_type, target_key, method, payload FROM _torpor_outbox ORDER BY id"
        ).fetchall()
        data.execute("DELETE FROM _torpor_outbox")
        timers: list[Any] = data.execute(
            "SELECT name, due_at FROM _torpor_timers ORDER BY due_at, name"
        ).fetchall()
        if keep_timers:
            changes.timers_kept = [name for name, _ in timers]
            changes.next_timer = timers[0][1] if timers else None
        else:
            changes.timers_dropped = [name for name, _ in timers]
            data.execute("DELETE FROM _torpor_timers")
    now = time.time()
    with _edit(folder / MAILBOX_FILE) as mailbox:
        for _, target_type, target_key, method, payload in outbox:
            if (target_type, target_key) == (type_name, key):
                mailbox.execute(
                    "INSERT INTO inbox(method, payload, enqueued_at) VALUES (?, ?, ?)",
                    (method, payload, now),
                )
            else:
                changes.outbox_dropped += 1
        note = f"queued in {key!r} when it was forked; not run (replay it to run it)"
        rows: list[Any] = mailbox.execute(
            "INSERT OR IGNORE INTO dead_letters(seq, sender, sender_seq, method, payload, "
            "idempotency_key, attempts, error_type, error_message, traceback, failed_at) "
            "SELECT seq, sender, sender_seq, method, payload, idempotency_key, attempts, ?, ?, "
            "'', ? FROM inbox WHERE seq > ? ORDER BY seq RETURNING seq",
            (FORKED_ERROR, note, now, applied),
        ).fetchall()
        changes.dead_lettered = sorted(int(seq) for (seq,) in rows)
        mailbox.execute(
            "UPDATE events SET consumed_seq = NULL, consumed_n = NULL WHERE consumed_seq > ?",
            (applied,),
        )
        # Everything left in the inbox goes: the unapplied messages are dead letters now, and
        # applied ones may still be there (they leave the mailbox only once their turn is in
        # the replica, and the fork copies a moment before that).
        mailbox.execute("DELETE FROM journal")
        mailbox.execute("DELETE FROM inbox")


if __name__ == "__main__":
    sys.exit(main())
