"""A research agent that waits for a human, survives a kill -9 and bills no token twice.

    python examples/research_agent.py [DIR]

DIR must be a new or empty folder (a temporary one if omitted): the demo starts afresh, and
deletes nothing it did not create.

The agent's handler searches the web, fetches two pages, asks an LLM for a draft, sends the
draft to a reviewer, then waits (durably, for days if need be) for the reviewer's "approval"
event: approved, it publishes the draft; rejected, or not answered in time, it discards it.
Each call to the outside world is a step: it runs once, and its result is journaled.

1. A child process starts a research and is killed with SIGKILL while the agent waits.
2. A new runtime replays the turn from its journal: search, fetch, LLM and reviewer are not
   called again. The actor hibernates while it waits; the reviewer approves; the result comes
   back to the same (idempotent) ask.
3. Two more topics: one draft is rejected, one gets no answer before its deadline.

The LLM, search and fetch are fakes, deterministic and offline. Every call they get is
appended to DIR/outside.jsonl, a stand-in for your LLM provider's bill and your tools' logs:
that file survives the kill, and is how this script shows what ran, and how often.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

import actors

TOPIC = "durable execution for AI agents"
#: The client's idempotency key for the research call: asking again with it after the crash
#: attaches to the same call instead of starting a second research.
CALL_KEY = "research-0001"
#: How often a failing LLM call is tried, the backoff between attempts, and the time one attempt
#: may take before it counts as failed.
LLM_RETRY = actors.Retry(max_attempts=3, initial_delay=0.2, deadline=30.0)


class OutsideWorld:
    """The services the agent calls, as seen from outside: one JSON line per call, on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def record(self, **entry: Any) -> None:
        with self.path.open("a") as out:
            out.write(json.dumps(entry) + "\n")
            out.flush()
            os.fsync(out.fileno())  # like a provider's invoice, it outlives our process

    def calls(self, kind: str | None = None) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        entries = [json.loads(line) for line in self.path.read_text().splitlines()]
        return [e for e in entries if kind is None or e["call"] == kind]


WORLD = OutsideWorld(Path("outside.jsonl"))  # main() points it into DIR


# -- the tools and the LLM (fakes: deterministic, offline) -----------------------------------


def web_search(query: str) -> list[str]:
    """A blocking client, as most SDKs are: a sync step function runs in a worker thread."""
    WORLD.record(call="search", query=query)
    slug = query.lower().replace(" ", "-")
    return [f"https://example.org/{slug}/overview", f"https://example.org/{slug}/pitfalls"]


async def fetch_page(url: str) -> str:
    """An async client: an async step function runs in the event loop."""
    WORLD.record(call="fetch", url=url)
    await trio.sleep(0.01)
    return f"{url.rsplit('/', 1)[-1]}: journal every side effect; replay the rest"


def call_llm(prompt: str) -> dict[str, Any]:
    """A chat completion. The provider bills every call it gets; we must not call it twice."""
    step = actors.current_step()  # stable across retries and replays: send it as a header
    answer = f"Draft: {prompt.splitlines()[0]}. Key idea: journal every side effect."
    tokens = len(prompt.split()) + len(answer.split())
    WORLD.record(call="llm", tokens=tokens, idempotency_key=step.idempotency_key)
    print(f"    LLM called: {tokens} tokens billed", flush=True)
    return {"text": answer, "tokens": tokens}


def request_review(agent: str, draft: str) -> None:
    """Tell a human there is something to approve (an e-mail, a ticket, a chat message)."""
    WORLD.record(call="review request", agent=agent, draft=draft)


def publish(agent: str, text: str) -> str:
    WORLD.record(call="publish", agent=agent, text=text)
    return f"https://blog.example.org/{agent}"


# -- the agent -------------------------------------------------------------------------------


class ResearchAgent(actors.Actor, name="examples.ResearchAgent"):
    """One research task: search, read, draft, wait for a reviewer, publish or discard."""

    migrations = (
        "CREATE TABLE reports(topic TEXT, status TEXT, url TEXT, tokens INTEGER, decided_at TEXT)",
    )

    async def research(
        self, topic: str, approval_timeout: float = 7 * 24 * 3600.0
    ) -> dict[str, Any]:
        urls = await self.step("search", web_search, topic)
        fetches = [self.step(f"fetch {i}", fetch_page, url) for i, url in enumerate(urls)]
        pages = await self.gather(*fetches)  # both fetches at once, journaled in this order
        prompt = "\n".join([f"Summarise {topic}", *pages])
        draft = await self.step("draft", LLM_RETRY, call_llm, prompt)
        await self.step("request review", request_review, self.key, draft["text"])
        # The turn waits here; the actor hibernates after idle_timeout and the turn replays
        # from its journal when the event (or the deadline) comes.
        try:
            decision = await self.wait_for_event("approval", timeout=approval_timeout)
        except actors.WaitTimeoutError:
            decision = {"approved": False, "by": None, "note": "no answer before the deadline"}
        url = None
        if decision["approved"]:
            url = await self.step("publish", publish, self.key, draft["text"])
        status = "published" if url else "discarded"
        decided_at = self.now().isoformat(timespec="seconds")  # journaled: replays the same
        self.sql.execute(
            "INSERT INTO reports VALUES (?, ?, ?, ?, ?)",
            (topic, status, url, draft["tokens"], decided_at),
        )
        self.kv["tokens_billed"] = self.kv.get("tokens_billed", 0) + draft["tokens"]
        return {"status": status, "url": url, "by": decision["by"], "note": decision["note"]}

    @actors.query
    async def tokens_billed(self) -> int:
        return int(self.kv.get("tokens_billed", 0))


# -- the demo --------------------------------------------------------------------------------


async def wait_until(check: Callable[[], Awaitable[bool]], seconds: float = 10.0) -> None:
    """Poll ``check`` until it is true (a demo's way to watch the runtime from outside)."""
    with trio.fail_after(seconds):
        while True:
            if await check():
                return
            await trio.sleep(0.02)


def describe(turns: list[actors.TurnInfo]) -> str:
    if not turns:
        return "none"
    return "; ".join(
        f"message {t.seq} ({t.method}) {t.status}, steps "
        + ", ".join(f"{s.number} {s.name!r} {s.status}" for s in t.steps)
        for t in turns
    )


async def child(workdir: Path) -> None:
    """Runs in a separate process: start the research, say when the agent waits, then hang."""
    async with actors.open_runtime(workdir / "torpor", types=[ResearchAgent]) as rt:
        agent = rt.ref(ResearchAgent, "agent-1")
        await agent.options(idempotency_key=CALL_KEY).send(ResearchAgent.research, TOPIC)

        async def waiting() -> bool:
            return any(turn.status == "waiting" for turn in await rt.turns(agent))

        await wait_until(waiting, 60)
        print("waiting for approval;", describe(await rt.turns(agent)), flush=True)
        await trio.sleep_forever()


def crash_run(workdir: Path) -> None:
    """Start the child; SIGKILL it once the agent waits for its reviewer."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", str(workdir)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    for line in proc.stdout:
        print("  child:", line.rstrip())
        if line.startswith("waiting") or time.monotonic() > deadline:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    print(f"  child killed with SIGKILL (exit status {proc.returncode})")


async def after_crash(workdir: Path) -> None:
    calls_before = len(WORLD.calls())
    billed_before = sum(call["tokens"] for call in WORLD.calls("llm"))
    # A short idle_timeout, so that the waiting agent hibernates within the demo.
    async with actors.open_runtime(
        workdir / "torpor", types=[ResearchAgent], idle_timeout=0.3
    ) as rt:
        agent = rt.ref(ResearchAgent, "agent-1")
        print("  turns in flight:", describe(await rt.turns(agent)))

        async def hibernated() -> bool:
            return rt.statistics().hibernations > 0 and rt.statistics().awake == 0

        await wait_until(hibernated)
        stats = rt.statistics()
        print(
            f"  the agent woke {stats.wakes} time(s), replayed its turn up to the wait and "
            f"hibernated {stats.hibernations} time(s); {stats.awake} actors awake now"
        )
        print(f"  calls the replay made outside: {len(WORLD.calls()) - calls_before}")

        (review,) = WORLD.calls("review request")
        print(f"  the reviewer reads: {review['draft']!r}")
        decision = {"approved": True, "by": "ann", "note": "ship it"}
        sent = await agent.signal("approval", decision, idempotency_key="review-agent-1")
        again = await agent.signal("approval", decision, idempotency_key="review-agent-1")
        print(f"  approval signalled: {sent}; the same signal again (a double click): {again}")

        # The client reconnects: the same call with the same key returns the first call's result.
        result = await agent.options(idempotency_key=CALL_KEY).ask(ResearchAgent.research, TOPIC)
        print("  result:", result)
        print("  turns in flight:", describe(await rt.turns(agent)))
        tokens = await agent.ask(ResearchAgent.tokens_billed)
    billed = sum(call["tokens"] for call in WORLD.calls("llm"))
    print(f"  tokens billed by the provider: {billed_before} before the kill, {billed} now")
    print(f"  tokens the agent accounted for: {tokens}")


async def other_outcomes(workdir: Path) -> None:
    async with actors.open_runtime(workdir / "torpor", types=[ResearchAgent]) as rt:
        rejected = rt.ref(ResearchAgent, "agent-2")
        unanswered = rt.ref(ResearchAgent, "agent-3")
        async with trio.open_nursery() as nursery:

            async def run(agent: actors.Ref[ResearchAgent], topic: str, patience: float) -> None:
                result = await agent.ask(ResearchAgent.research, topic, patience)
                print(f"  {agent.key}: {result}")

            nursery.start_soon(run, rejected, "vector databases", 60.0)
            nursery.start_soon(run, unanswered, "prompt caching", 0.5)

            async def started() -> bool:
                return bool(await rt.turns(rejected))

            await wait_until(started)
            decision = {"approved": False, "by": "bob", "note": "needs sources"}
            await rejected.signal("approval", decision)


def new_folder(arg: str | None) -> Path:
    """DIR, or a new temporary folder. Refuse a folder that is not empty: the demo starts afresh."""
    if arg is None:
        return Path(tempfile.mkdtemp())
    folder = Path(arg)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        sys.exit(f"{folder} is not empty: this demo starts afresh; give a new or empty folder")
    return folder


def main() -> None:
    global WORLD
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        WORLD = OutsideWorld(Path(sys.argv[2]) / "outside.jsonl")
        trio.run(child, Path(sys.argv[2]))
        return
    workdir = new_folder(sys.argv[1] if len(sys.argv) > 1 else None)
    workdir.mkdir(parents=True, exist_ok=True)
    WORLD = OutsideWorld(workdir / "outside.jsonl")
    print(f"runtime directory: {workdir / 'torpor'}; outside calls: {WORLD.path}")
    print("1. start a research in a child process; kill -9 it while the agent waits")
    crash_run(workdir)
    print("2. reopen: the turn replays from its journal; the reviewer approves")
    trio.run(after_crash, workdir)
    print("3. a draft the reviewer rejects, and one nobody answers before the deadline")
    trio.run(other_outcomes, workdir)
    counts: dict[str, int] = {}
    for call in WORLD.calls():
        counts[call["call"]] = counts.get(call["call"], 0) + 1
    print("calls the outside world got:", counts)
    llm_keys = [call["idempotency_key"] for call in WORLD.calls("llm")]
    print(f"done: {len(llm_keys)} LLM calls for 3 drafts, {len(set(llm_keys))} idempotency keys")


if __name__ == "__main__":
    main()
