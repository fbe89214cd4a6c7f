"""The ``torpor`` command: benchmarks, and operator tools pointed at a runtime directory.

The operator tools read ``directory.db`` and actor files without waking actors and without
the user's classes (see :mod:`runtime.inspect`). Replaying and dropping dead letters write an
actor's mailbox, so they take the runtime's ``LOCK`` as ``open_runtime`` does, and refuse
while a process has the runtime open.

Exit status: 0 on success, 1 for an error met in the runtime directory (missing, an unknown
actor, an actor awake in a running process, a runtime open elsewhere), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import fcntl
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import apsw
import attrs

from . import inspect as _inspect
from .directory import Directory
from .errors import ActorError, RuntimeLockedError
from .layout import DIRECTORY_FILE, LOCK_FILE, MAILBOX_FILE, actor_dir, actor_id
from .mailbox import Mailbox


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="torpor", description="Durable per-agent actors.")
    commands = parser.add_subparsers(dest="command", required=True)

    bench = commands.add_parser(
        "bench", help="measure torpor beside a raw apsw loop doing the same SQL"
    )
    bench.add_argument("--quick", action="store_true", help="small counts (a smoke run)")
    bench.add_argument("--synchronous", choices=["NORMAL", "FULL"], default="NORMAL")
    bench.add_argument("--backend", choices=["trio", "asyncio"], default="trio")
    bench.add_argument("--json", action="store_true", help="machine-readable output")
    bench.add_argument(
        "suite",
        nargs="?",
        choices=["core", "supervisor", "steps"],
        default="core",
        help="core: messages and asks (default); supervisor: wake-ups, hibernation, recovery; "
        "steps: journaled step overhead, resumption after a kill -9",
    )
    bench.add_argument("--actors", type=int, default=10_000, help="supervisor: actors to create")
    bench.add_argument("--awake", type=int, default=1_000, help="supervisor: actors to wake")
    bench.add_argument(
        "--resume", type=int, default=10_000, help="supervisor: actors to recover after a kill"
    )
    _add_operator_commands(commands)

    args = parser.parse_args(argv)
    if args.command == "bench":
        from . import bench as bench_module

        def progress(text: str) -> None:
            if not args.json:
                print(f"... {text}", file=sys.stderr, flush=True)

        if args.suite == "supervisor":
            from . import bench_supervisor

            actors = 500 if args.quick else args.actors
            awake = 200 if args.quick else args.awake
            figures = bench_supervisor.run(
                actors=actors,
                awake=awake,
                resume=500 if args.quick else args.resume,
                backend=args.backend,
                progress=progress,
            )
        elif args.suite == "steps":
            from . import bench_steps

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
    except _inspect.WriteRefusedError as exc:
        print(f"torpor {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (ActorError, LookupError, OSError, apsw.Error) as exc:
        print(f"torpor {args.command}: {_message(exc)}", file=sys.stderr)
        return 1


def _message(exc: BaseException) -> str:
    if isinstance(exc, apsw.Error):
        return f"SQLite: {exc}"
    if isinstance(exc, KeyError | LookupError) and exc.args and isinstance(exc.args[0], str):
        return exc.args[0]
    return str(exc)


# -- the command line ---------------------------------------------------------------------------


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (got {value})")
    return value


def _add_operator_commands(commands: Any) -> None:
    def command(name: str, run: Callable[[argparse.Namespace], int], text: str) -> Any:
        sub = commands.add_parser(name, help=text, description=text)
        sub.set_defaults(run=run)
        sub.add_argument("dir", type=Path, help="the runtime directory (open_runtime's path)")
        return sub

    ls = command("ls", _ls, "list actors from directory.db, without opening their files")
    ls.add_argument("--type", dest="type_name", metavar="TYPE", help="only this actor type")
    ls.add_argument("--status", choices=_inspect.STATUSES, help="only actors in this status")
    ls.add_argument("--prefix", metavar="KEYPREFIX", help="only keys starting with this")
    ls.add_argument(
        "--limit", type=_non_negative, default=1000, help="at most this many (0: all; 1000)"
    )
    ls.add_argument("--json", action="store_true", help="machine-readable output")

    ins = command("inspect", _inspect_command, "show one actor's state without waking it")
    ins.add_argument("type_name", metavar="TYPE")
    ins.add_argument("key", metavar="KEY")
    ins.add_argument("--rows", type=_non_negative, default=5, help="first rows shown per table (5)")
    ins.add_argument("--json", action="store_true", help="machine-readable output")

    sql = command("sql", _sql, "run a read-only query on every hibernated actor of a type")
    sql.add_argument("query", metavar="SQL", help='e.g. "SELECT count(*) FROM log"')
    sql.add_argument("--type", dest="type_name", metavar="TYPE", required=True)
    sql.add_argument("--prefix", metavar="KEYPREFIX", help="only keys starting with this")
    sql.add_argument("--json", action="store_true", help="machine-readable output")

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
    _inspect.check_root(args.dir)
    columns: tuple[str, ...] = ()
    rows: list[tuple[str, tuple[Any, ...]]] = []
    skipped: list[tuple[str, str]] = []
    errors: list[tuple[str, str]] = []
    for result in _inspect.query_actors(
        args.dir, args.query, type_name=args.type_name, prefix=args.prefix
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
def _runtime_lock(root: Path, what: str) -> Iterator[None]:
    """Hold the runtime's ``LOCK`` as ``open_runtime`` does (so no runtime opens meanwhile)."""
    _inspect.check_root(root)
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeLockedError(
                f"{root} is open in another process; {what} in that process (Runtime methods) "
                "or once it has closed"
            ) from None
        yield
    finally:
        os.close(fd)


if __name__ == "__main__":
    sys.exit(main())
