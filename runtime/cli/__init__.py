"""The ``torpor`` command: benchmarks, and operator tools pointed at a runtime directory.

This package is argparse and rendering only: what the operator tools do is in
:mod:`runtime.ops` (records in, records out, typed errors), and this package says it in words
or JSON. The operator tools read ``directory.db`` and actor files without waking actors and
without the user's classes (see :mod:`runtime.ops.inspect`). Replaying and dropping dead
letters write an actor's mailbox, so they take the runtime's ``LOCK`` as ``open_runtime`` does,
and refuse while a process has the runtime open (:mod:`runtime.ops.deadletters`).

``restore`` and ``fork`` read a replica (``--replica DIR`` or ``--s3-bucket``): ``restore``
rebuilds a whole runtime directory, or one actor's files (``--actor``, runtime closed);
``fork`` copies an actor's state, at a past time or its latest, into a new actor
(:mod:`runtime.ops.restore`, :mod:`runtime.ops.fork`). ``inspect`` and ``sql`` with
``--from-replica`` (and no DIR) read the replica instead of a runtime directory, at
``--at TIME`` or its latest, through a temporary directory.

``serve`` opens a runtime and serves it over HTTP (:mod:`runtime.http`, :mod:`.serve`).

Exit status: 0 on success, 1 for an error met in the runtime directory (missing, an unknown
actor, an actor awake in a running process, a runtime open elsewhere), 2 for a usage error.

The modules: :mod:`.parser` (the commands and their options), :mod:`.options` (argument types
and the replica options), :mod:`.commands` (the operator commands), :mod:`.call` (``send`` and
``ask``, made by :mod:`runtime.ops.call`), :mod:`.bench` and :mod:`.render` (text and JSON).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

import apsw

from ..errors import ActorError, WriteRefusedError
from .bench import replication_argv, run_bench
from .parser import build_parser
from .render import error_text, user_terms

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run ``torpor`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    args_list = sys.argv[1:] if argv is None else list(argv)
    replication = replication_argv(args_list)
    if replication is not None:
        # Its own options (a store to start or point at, load, phases): see --help.
        from ..bench import replication as bench_replication

        return bench_replication.main(replication)
    args = build_parser(args_list).parse_args(args_list)
    # Names in error messages to say in the user's terms (set by the commands that know them):
    # raw text to replace, and actors by id.
    args.error_names = {}
    args.error_actors = {}
    if args.command == "bench":
        return run_bench(args)
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
        text = user_terms(error_text(exc), args.error_names, args.error_actors)
        print(f"torpor {args.command}: {text}", file=sys.stderr)
        return 1
