"""The operator commands of ``torpor``: each reads its options, calls :mod:`runtime.ops`,
and says the result in text or JSON."""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

from ..errors import InvalidKeyError
from ..files.layout import DIRECTORY_FILE, actor_dir, actor_id
from ..ops import deadletters as _deadletters
from ..ops import fork as _fork
from ..ops import inspect as _inspect
from ..ops import restore as _restore
from ..replica import ReplicaStore
from ..spec import check_key
from .options import reads_replica, replica_store, replica_text
from .render import (
    ACTOR_NAME,
    Progress,
    at_text,
    cell,
    dead_letter_json,
    dead_letters_table,
    iso,
    moment,
    plural,
    print_json,
    report_json,
    report_text,
    size_text,
    table,
)


def actor_names(args: argparse.Namespace, aid: str, type_name: str, key: str) -> None:
    """Have errors say the replica's names of an actor's files as the user knows the actor."""
    args.error_actors[aid] = f"{type_name} {key!r}"


def name_actors_in(args: argparse.Namespace, text: str, root: Path) -> None:
    """:func:`actor_names` for the actors whose files ``text`` names, found in ``root``'s
    ``directory.db`` (if there is one to read)."""
    aids = sorted({m["aid"] for m in ACTOR_NAME.finditer(text)} - args.error_actors.keys())
    if not aids:
        return
    with contextlib.suppress(Exception), _inspect.reading_directory(root) as conn:
        for aid, type_name, key in conn.execute(
            f"SELECT id, type, key FROM actors WHERE id IN ({', '.join('?' * len(aids))})", aids
        ):
            actor_names(args, aid, type_name, key)


def run_ls(args: argparse.Namespace) -> int:
    rows, more = _inspect.list_actors(
        args.dir,
        type_name=args.type_name,
        prefix=args.prefix,
        status=args.status,
        limit=args.limit or None,
    )
    if args.json:
        print_json({"actors": [attrs.asdict(r) for r in rows], "more": more})
        return 0
    if not rows:
        print("no actors" + (" match" if args.type_name or args.prefix or args.status else ""))
        return 0
    print(
        table(
            ["TYPE", "KEY", "STATUS", "PENDING", "NEXT WAKE-UP", "CREATED"],
            [
                [
                    r.type,
                    r.key,
                    r.status,
                    "yes" if r.pending else "no",
                    moment(r.wake_at),
                    moment(r.created_at),
                ]
                for r in rows
            ],
        )
    )
    if more:
        print(f"(first {len(rows)} shown; --limit 0 lists all)")
    return 0


def run_status(args: argparse.Namespace) -> int:
    s = _inspect.summary(args.dir)
    if args.json:
        print_json(attrs.asdict(s))
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
    print(f"next wake-up  {moment(s.next_wake_at)}")
    print(
        f"disk          {size_text(s.disk_bytes)}  (directory.db {size_text(s.directory_bytes)}, "
        f"{plural(s.actor_folders, 'actor folder')})"
    )
    print(f"replication   {s.replication}")
    if s.by_type:
        print()
        print(
            table(
                ["TYPE", "ACTORS", "PENDING", "STOPPED", "WITH TIMERS"],
                [[t.type, t.actors, t.pending, t.stopped, t.with_timers] for t in s.by_type],
            )
        )
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    if reads_replica(args):
        with from_replica(args, actor=(args.type_name, args.key)) as root:
            report = _inspect.inspect_actor(root, args.type_name, args.key, rows=args.rows)
        report = attrs.evolve(
            report,
            folder=f"none (read from {replica_text(args)})",
            replication=f"read from the replica: {at_text(args.at)}",
        )
    else:
        report = _inspect.inspect_actor(args.dir, args.type_name, args.key, rows=args.rows)
    if args.json:
        print_json(report_json(report))
    else:
        print(report_text(report))
    return 0


def run_sql(args: argparse.Namespace) -> int:
    if reads_replica(args):
        with from_replica(args, prefix=args.prefix) as root:
            return sql_in(args, root)
    return sql_in(args, args.dir)


def sql_in(args: argparse.Namespace, root: Path) -> int:
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
        print_json(
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
        print(table(headers, [[key, *(cell(v) for v in row)] for key, row in rows]))
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


@contextlib.contextmanager
def from_replica(
    args: argparse.Namespace,
    *,
    actor: tuple[str, str] | None = None,
    prefix: str | None = None,
) -> Iterator[Path]:
    """A temporary runtime directory holding ``directory.db`` and, from the replica at
    ``args.at`` (or its latest), the files of ``actor``, or of every actor of
    ``args.type_name`` whose key starts with ``prefix``; deleted on exit
    (:func:`runtime.ops.restore.restore_to_read`)."""
    store = replica_store(args)
    source = replica_text(args)
    args.error_names[repr(store)] = source
    try:
        with tempfile.TemporaryDirectory(prefix="torpor-from-replica-") as tmp:
            root = Path(tmp)
            # Errors name the replica, never this directory (deleted by the time they print).
            args.error_names[tmp] = source + ("" if args.at is None else f" at {iso(args.at)}")

            def restoring(aid: str, type_name: str, key: str) -> None:
                actor_names(args, aid, type_name, key)
                args.error_names[str(actor_dir(root, aid))] = f"the folder of {type_name} {key!r}"

            _restore.restore_to_read(
                store,
                root,
                at=args.at,
                actor=actor,
                type_name=args.type_name,
                prefix=prefix,
                restoring=restoring,
            )
            yield root
    finally:
        store.close()


def run_dead_letters(args: argparse.Namespace) -> int:
    root, type_name, key = args.dir, args.type_name, args.key
    if args.replay is None and args.drop is None:
        letters = _deadletters.dead_letters(root, type_name, key)
        if args.json:
            print_json([dead_letter_json(d) for d in letters])
        elif letters:
            print(dead_letters_table(letters))
        else:
            print(f"{type_name} {key!r} has no dead letters")
        return 0
    if args.drop is not None:
        _deadletters.drop_dead_letter(root, type_name, key, args.drop)
        if args.json:
            print_json({"dropped": args.drop})
        else:
            print(f"dropped dead letter {args.drop} of {type_name} {key!r}")
        return 0
    replayed = _deadletters.replay_dead_letter(root, type_name, key, args.replay)
    seq, new_seq = replayed.dead_letter, replayed.seq
    if args.json:
        print_json({"replayed": seq, "seq": new_seq})
    else:
        when = (
            "when it is resumed (it is stopped)"
            if replayed.stopped
            else "when the runtime is next opened"
        )
        print(
            f"replayed dead letter {seq} of {type_name} {key!r} as message {new_seq}; "
            f"it runs {when}"
        )
    return 0


def run_restore(args: argparse.Namespace) -> int:
    store = replica_store(args)
    args.error_names[repr(store)] = replica_text(args)
    try:
        if args.actor is not None:
            return restore_one(args, store, *args.actor)
        return restore_whole(args, store)
    finally:
        store.close()


def restore_whole(args: argparse.Namespace, store: ReplicaStore) -> int:
    root: Path = args.dir
    progress = Progress(f"restoring {root}")

    def failed(exc: BaseException) -> None:
        progress.finish()
        name_actors_in(args, str(exc), root)  # from directory.db, before it goes

    done = _restore.restore_runtime(
        store,
        root,
        at=args.at,
        starting=lambda: progress.note(f"{DIRECTORY_FILE} ..."),
        progress=progress,
        failed=failed,
    )
    progress.finish()
    if args.json:
        print_json(
            {
                "dir": str(root),
                "at": args.at,
                "actors": done.actors,
                "restored": done.restored,
                "not_replicated": done.not_replicated,
                "erased": done.erased,
                "seconds": round(done.seconds, 3),
            }
        )
        return 0
    missing = done.not_replicated
    print(
        f"restored {root} ({at_text(args.at)}): {plural(done.restored, 'actor')}"
        + (f", {missing} without a replica at that point (they start empty)" if missing else "")
        + (f", {done.erased} deleted since (left out)" if done.erased else "")
        + f", in {done.seconds:.1f} s"
    )
    return 0


def restore_one(args: argparse.Namespace, store: ReplicaStore, type_name: str, key: str) -> int:
    actor_names(args, actor_id(type_name, key), type_name, key)
    done = _restore.restore_actor(store, args.dir, type_name, key, at=args.at)
    if args.json:
        print_json(
            {
                "actor": {"type": type_name, "key": key, "id": done.id},
                "at": args.at,
                "folder": str(done.folder),
                "superseded": None if done.superseded is None else str(done.superseded),
                "pending": True,
                "stopped": done.stopped,
            }
        )
        return 0
    print(f"restored {type_name} {key!r} ({at_text(args.at)}) into {done.folder}")
    if done.superseded is not None:
        print(f"its previous files are in {done.superseded} (delete them when no longer needed)")
    if done.stopped is not None:
        print(f"it is stopped ({done.stopped}): Runtime.resume(ref) lets it run again")
    else:
        print("it wakes when the runtime is next opened")
    return 0


def run_fork(args: argparse.Namespace) -> int:
    root: Path = args.dir
    type_name, key, new_key = args.type_name, args.key, args.new_key
    try:  # a usage error, before the replica options are looked at
        check_key(new_key, args.max_key_bytes)
    except InvalidKeyError as exc:
        args.replica_parser.error(f"--as: {exc}")
    store = replica_store(args)
    args.error_names[repr(store)] = replica_text(args)
    actor_names(args, actor_id(type_name, key), type_name, key)
    actor_names(args, actor_id(type_name, new_key), type_name, new_key)
    try:
        forked = _fork.fork_actor(
            store,
            root,
            type_name,
            key,
            new_key,
            at=args.at,
            keep_timers=args.keep_timers,
            max_key_bytes=args.max_key_bytes,
        )
    finally:
        store.close()
    changes = forked.changes
    if args.json:
        print_json(
            {
                "from": {"type": type_name, "key": key, "id": forked.id},
                "to": {"type": type_name, "key": new_key, "id": forked.new_id},
                "at": args.at,
                "folder": str(forked.folder),
                "dead_letters": changes.dead_lettered,
                "outbox_dropped": changes.outbox_dropped,
                "timers_dropped": changes.timers_dropped,
                "timers_kept": changes.timers_kept,
            }
        )
        return 0
    print(f"forked {type_name} {key!r} ({at_text(args.at)}) into {type_name} {new_key!r}")
    if changes.dead_lettered:
        count = len(changes.dead_lettered)
        print(
            f"{plural(count, 'message')} queued in {key!r} did not run: "
            + ("it is a dead letter" if count == 1 else "they are dead letters")
            + f" of {new_key!r} (torpor dead-letters {shlex.quote(str(root))} {type_name} "
            f"{shlex.quote(new_key)} lists them; --replay SEQ runs one)"
        )
    if changes.outbox_dropped:
        print(
            f"{plural(changes.outbox_dropped, 'message')} {key!r} had yet to send "
            f"{'is' if changes.outbox_dropped == 1 else 'are'} left to {key!r}"
        )
    if changes.timers_dropped:
        print(
            f"{plural(len(changes.timers_dropped), 'timer')} not kept: "
            f"{', '.join(changes.timers_dropped)} (--keep-timers keeps them)"
        )
    if changes.timers_kept:
        print(
            f"{plural(len(changes.timers_kept), 'timer')} kept: "
            f"{', '.join(changes.timers_kept)}; the next is due at {moment(changes.next_timer)}"
        )
    return 0
