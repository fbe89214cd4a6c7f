"""The ``torpor`` command."""

from __future__ import annotations

import argparse
import json
import sys


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


if __name__ == "__main__":
    sys.exit(main())
