"""A planner agent that fans work out to worker agents and gathers their results.

    python examples/planner.py [DIR]

DIR must be a new or empty folder (a temporary one if omitted): the demo starts afresh, and
deletes nothing it did not create.

The planner's handler asks N workers at once with ``self.gather(*[self.ask(...), ...])``: each
ask is a step of the planner's turn (the request is sent exactly once, the reply journaled),
and each worker does its part in a step of its own. The script prints the combined result,
shows that every worker ran once, then asks the planner again with the same idempotency key
after reopening the runtime: the stored result comes back and no worker runs again.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

import actors

#: Every call of the (fake) expensive function, in this process: the proof that none repeats.
CALLS: list[str] = []


async def analyse(section: str) -> dict[str, Any]:
    """The expensive part (an LLM call, a tool run): a quarter of a second of fake work."""
    CALLS.append(section)
    await trio.sleep(0.25)
    words = section.split()
    return {"section": section, "words": len(words), "headline": words[0].capitalize()}


class Worker(actors.Actor, name="examples.Worker"):
    async def work(self, section: str) -> dict[str, Any]:
        result = await self.step("analyse", analyse, section)
        self.kv["runs"] = self.kv.get("runs", 0) + 1  # committed with the turn
        return {**result, "worker": self.key}

    @actors.query
    async def runs(self) -> int:
        return int(self.kv.get("runs", 0))


class Planner(actors.Actor, name="examples.Planner"):
    async def plan(self, goal: str, sections: list[str]) -> dict[str, Any]:
        workers = [self.ref_to(Worker, f"{self.key}-worker-{i}") for i in range(len(sections))]
        # Every ask is numbered now, in this order, so the journal is the same on a replay.
        asks = [self.ask(w, Worker.work, s) for w, s in zip(workers, sections, strict=True)]
        parts = await self.gather(*asks)  # all at once; results in argument order
        return {
            "goal": goal,
            "outline": [part["headline"] for part in parts],
            "words": sum(part["words"] for part in parts),
            "by": [part["worker"] for part in parts],
        }


SECTIONS = [
    "motivation why agents need durable state",
    "design one sqlite file per actor",
    "evaluation crash tests with kill -9",
    "related work workflow engines and actors",
]


async def first_run(folder: Path) -> None:
    async with actors.open_runtime(folder, types=[Planner, Worker]) as rt:
        planner = rt.ref(Planner, "paper")
        started = time.monotonic()
        result = await planner.options(idempotency_key="plan-1").ask(
            Planner.plan, "a paper", SECTIONS
        )
        elapsed = time.monotonic() - started
        print("  combined:", result)
        print(f"  {len(SECTIONS)} workers x 0.25 s of work took {elapsed:.2f} s: they ran at once")
        for key in result["by"]:
            print(f"  {key} ran {await rt.ref(Worker, key).ask(Worker.runs)} time(s)")
        print(f"  analyse() calls: {len(CALLS)}; steps run: {rt.statistics().steps}")


async def second_run(folder: Path) -> None:
    async with actors.open_runtime(folder, types=[Planner, Worker]) as rt:
        planner = rt.ref(Planner, "paper")
        result = await planner.options(idempotency_key="plan-1").ask(
            Planner.plan, "a paper", SECTIONS
        )
        print("  combined:", result)
        runs = [await rt.ref(Worker, key).ask(Worker.runs) for key in result["by"]]
        print(f"  worker runs: {runs}; analyse() calls: {len(CALLS)}")


def new_folder(arg: str | None) -> Path:
    """DIR, or a new temporary folder. Refuse a folder that is not empty: the demo starts afresh."""
    if arg is None:
        return Path(tempfile.mkdtemp()) / "torpor"
    folder = Path(arg)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        sys.exit(f"{folder} is not empty: this demo starts afresh; give a new or empty folder")
    return folder


def main() -> None:
    folder = new_folder(sys.argv[1] if len(sys.argv) > 1 else None)
    print(f"runtime directory: {folder}")
    print(f"1. the planner fans {len(SECTIONS)} sections out to {len(SECTIONS)} workers")
    trio.run(first_run, folder)
    print("2. reopen and ask again with the same idempotency key: the stored result")
    trio.run(second_run, folder)
    print("done: each worker ran once")


if __name__ == "__main__":
    main()
