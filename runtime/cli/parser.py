"""The ``torpor`` command line: its commands and their options (argparse only)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..ops import inspect as _inspect
from ..spec import DEFAULT_MAX_KEY_BYTES
from .bench import add_bench_command
from .call import run_call
from .commands import (
    run_dead_letters,
    run_fork,
    run_inspect,
    run_ls,
    run_restore,
    run_sql,
    run_status,
)
from .options import AT_HELP, add_replica_options, non_negative, point_in_time, positive_seconds
from .serve import add_serve_command


def version() -> str:
    from importlib import metadata

    try:
        return metadata.version("torpor")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """The parser of ``torpor``, for the command line ``argv`` (``inspect`` and ``sql`` with
    ``--from-replica`` take no runtime DIR)."""
    parser = argparse.ArgumentParser(prog="torpor", description="Durable per-agent actors.")
    parser.add_argument("--version", action="version", version=f"torpor {version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    add_bench_command(commands)
    # ``inspect`` and ``sql`` with --from-replica read a replica, not a runtime directory: they
    # take no DIR. Their local form keeps DIR a plain positional (parsed as it always was).
    from_replica = argv[:1] in (["inspect"], ["sql"]) and "--from-replica" in argv
    add_operator_commands(commands, from_replica=from_replica)
    return parser


FROM_REPLICA_EPILOG = (
    "From a replica: %(prog)s ... --from-replica (--replica DIR | --s3-bucket BUCKET ...) "
    "[--at TIME], and no runtime DIR: the files are restored into a temporary directory, read "
    "there and deleted; nothing local is read or changed, and no actor wakes."
)


def add_operator_commands(commands: Any, *, from_replica: bool = False) -> None:
    def command(
        name: str, run: Callable[[argparse.Namespace], int], text: str, *, replica: bool = False
    ) -> Any:
        epilog = FROM_REPLICA_EPILOG if replica else None
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
        sub.add_argument("--at", type=point_in_time, metavar="TIME", help=AT_HELP)
        add_replica_options(sub)

    ls = command("ls", run_ls, "list actors from directory.db, without opening their files")
    ls.add_argument("--type", dest="type_name", metavar="TYPE", help="only this actor type")
    ls.add_argument("--status", choices=_inspect.STATUSES, help="only actors in this status")
    ls.add_argument("--prefix", metavar="KEYPREFIX", help="only keys starting with this")
    ls.add_argument(
        "--limit", type=non_negative, default=1000, help="at most this many (0: all; 1000)"
    )
    ls.add_argument("--json", action="store_true", help="machine-readable output")

    ins = command(
        "inspect",
        run_inspect,
        "show one actor's state without waking it",
        replica=True,
    )
    ins.add_argument("type_name", metavar="TYPE")
    ins.add_argument("key", metavar="KEY")
    ins.add_argument("--rows", type=non_negative, default=5, help="first rows shown per table (5)")
    ins.add_argument("--json", action="store_true", help="machine-readable output")
    replica_source(ins)

    sql = command(
        "sql",
        run_sql,
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
        run_dead_letters,
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

    status = command("status", run_status, "counts, whether the runtime is open, disk usage")
    status.add_argument("--json", action="store_true", help="machine-readable output")

    for name, text in (
        ("send", "send a message to an actor (the runtime must be closed: this opens it)"),
        ("ask", "ask an actor and print its reply (the runtime must be closed: this opens it)"),
    ):
        call = command(name, run_call, text)
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
                type=positive_seconds,
                metavar="SECONDS",
                help="give up waiting for the reply after this long, saying what the actor waits "
                "for (the message stays queued; default: wait for as long as it takes)",
            )
        call.add_argument("--json", action="store_true", help="machine-readable output")
        add_replica_options(call)  # the runtime's replica, as its program opens it (optional)

    add_replica_commands(command)
    add_serve_command(commands)


def add_replica_commands(command: Callable[..., Any]) -> None:
    restore = command(
        "restore",
        run_restore,
        "rebuild a runtime directory from its replica (or one actor's files, with --actor)",
    )
    restore.add_argument(
        "--actor",
        nargs=2,
        metavar=("TYPE", "KEY"),
        help="restore only this actor's files into the existing runtime DIR (closed)",
    )
    restore.add_argument("--at", type=point_in_time, metavar="TIME", help=AT_HELP)
    restore.add_argument("--json", action="store_true", help="machine-readable output")
    add_replica_options(restore)

    fork = command(
        "fork",
        run_fork,
        "copy an actor's state (at a past time, or its latest) into a new actor of its type",
    )
    fork.add_argument("type_name", metavar="TYPE")
    fork.add_argument("key", metavar="KEY")
    fork.add_argument(
        "--as", dest="new_key", metavar="NEWKEY", required=True, help="the new actor's key"
    )
    fork.add_argument(
        "--max-key-bytes",
        type=non_negative,
        default=DEFAULT_MAX_KEY_BYTES,
        metavar="N",
        help=f"the runtime's open_runtime(max_key_bytes=...), which NEWKEY must fit "
        f"({DEFAULT_MAX_KEY_BYTES})",
    )
    fork.add_argument("--at", type=point_in_time, metavar="TIME", help=AT_HELP)
    fork.add_argument(
        "--keep-timers",
        action="store_true",
        help="keep the actor's timers in the fork (they fire for it, one past due at once)",
    )
    fork.add_argument("--json", action="store_true", help="machine-readable output")
    add_replica_options(fork)
