"""``torpor bench``: its options, and the suites it runs (:mod:`runtime.bench`)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

#: The suites of ``torpor bench``.
BENCH_SUITES = ("core", "supervisor", "steps", "runs", "replication", "gateway")


#: ``torpor bench replication --quick``: small counts for a smoke run (options given after
#: them win).
REPLICATION_QUICK = (
    *("--actors", "10", "--rate", "50", "--seconds", "2", "--warmup", "0.5"),
    *("--durable-asks", "5", "--hop-chains", "5", "--idle-actors", "20", "--idle-seconds", "1"),
    *("--restore-mb", "1", "--restore-repeats", "1"),
)


def bench_suite_at(args: list[str]) -> int | None:
    """Where the suite is in ``torpor bench ...`` (before or after options), or ``None``: the
    first suite name that is not the value of an option."""
    flags = {"-h", "--help", "--quick", "--json"}  # the options that take no value
    if "replication" in args:
        from ..bench import replication as bench_replication

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


def replication_argv(argv: list[str]) -> list[str] | None:
    """The options of ``torpor bench ... replication ...`` for the replication bench's own
    parser (with ``--quick`` made its small counts; options given after them win), or ``None``
    if ``argv`` runs another suite or another command."""
    if argv[:1] != ["bench"]:
        return None
    at = bench_suite_at(argv)
    if at is None or argv[at] != "replication":
        return None
    rest = argv[1:at] + argv[at + 1 :]
    if "--quick" in rest:
        rest = [*REPLICATION_QUICK, *(arg for arg in rest if arg != "--quick")]
    return rest


def add_bench_command(commands: Any) -> argparse.ArgumentParser:
    bench: argparse.ArgumentParser = commands.add_parser(
        "bench", help="measure torpor beside a raw apsw loop doing the same SQL"
    )
    bench.add_argument(
        "--quick", action="store_true", help="small counts (a smoke run), for every suite"
    )
    bench.add_argument(
        "--synchronous",
        choices=["NORMAL", "FULL"],
        default="NORMAL",
        help="core, steps and runs",
    )
    bench.add_argument("--backend", choices=["trio", "asyncio"], default="trio")
    bench.add_argument("--json", action="store_true", help="machine-readable output")
    bench.add_argument(
        "suite",
        nargs="?",
        choices=BENCH_SUITES,
        default="core",
        help="core: messages and asks (default); supervisor: wake-ups, hibernation, recovery; "
        "steps: journaled step overhead, resumption after a kill -9; runs: runs started and "
        "finished per second, reading a run; gateway: asks per second over HTTP beside in "
        "process (needs torpor[http]); replication: lag, "
        "requests and restore time against a local S3 server (own options: "
        "torpor bench replication --help)",
    )
    bench.add_argument("--actors", type=int, default=10_000, help="supervisor: actors to create")
    bench.add_argument("--awake", type=int, default=1_000, help="supervisor: actors to wake")
    bench.add_argument(
        "--resume", type=int, default=10_000, help="supervisor: actors to recover after a kill"
    )
    bench.set_defaults(bench_parser=bench)
    return bench


def run_bench(args: argparse.Namespace) -> int:
    from ..bench import turns as bench_module

    bench: argparse.ArgumentParser = args.bench_parser

    def progress(text: str) -> None:
        if not args.json:
            print(f"... {text}", file=sys.stderr, flush=True)

    if args.suite == "supervisor":
        from ..bench import supervisor as bench_supervisor

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
    elif args.suite == "gateway":
        from ..bench import gateway as bench_gateway

        rows = bench_gateway.run(quick=args.quick, backend=args.backend, progress=progress)
        if args.json:
            print(json.dumps(bench_gateway.as_json(rows), indent=2))
        else:
            print(bench_gateway.format_table(rows))
        return 0
    elif args.suite == "steps":
        from ..bench import steps as bench_steps

        figures = bench_steps.run(
            quick=args.quick,
            synchronous=args.synchronous,
            backend=args.backend,
            progress=progress,
        )
    elif args.suite == "runs":
        from ..bench import runs as bench_runs

        figures = bench_runs.run(
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
