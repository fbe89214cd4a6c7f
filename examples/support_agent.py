"""A support agent that keeps chatting while a refund waits for a human's approval.

    python examples/support_agent.py [DIR]

DIR must be a new or empty folder (a temporary one if omitted): the demo starts afresh, and
deletes nothing it did not create.

Each ``Support`` actor is one customer's conversation, kept in its own SQL table. A message
goes through the (fake) LLM, a step; when the customer asks for a refund, the agent starts a
``Refund`` run (``self.start(Refund.run, ..., id=f"refund-{order}")``) and answers at once. The
run files a ticket for a human, then waits for the first of three things: ``approve``,
``reject``, or the end of the approval window (``self.wait_any``). Approved, it refunds the
payment in a step. The run is an actor of its own, so the agent goes on chatting meanwhile; it
learns the outcome in ``on_run_done`` (exactly once) and tells the customer.

1. ana asks for a refund, then chats while it waits; a human approves it from outside
   (``run.signal("approve", ...)``); asking again for the same refund finds the same run, and
   for another amount, is refused (``actors.IdempotencyKeyReusedError``);
2. ben's refund is rejected;
3. cyd's desk gives a human half a second to approve; nobody does, and the refund expires.

``CALLS`` counts what the fake LLM, the ticket system and the payment provider were asked: one
refund was paid, once, for three refunds asked.
"""

from __future__ import annotations

import re
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

import actors

#: How long a human has to approve a refund, by default.
APPROVAL_WINDOW = 2 * 24 * 3600.0
#: What the fake LLM, the ticket system and the payment provider were asked, by name (steps run
#: in worker threads).
CALLS: Counter[str] = Counter()
_CALLS_LOCK = threading.Lock()


def count(name: str) -> None:
    with _CALLS_LOCK:
        CALLS[name] += 1


# -- the outside world (fakes: deterministic, offline) ---------------------------------------

_REFUND = re.compile(r"refund .*order (?P<order>[A-Z]-\d+) \(\$(?P<amount>\d+)\)")


def fake_llm(text: str) -> dict[str, Any]:
    """Answer the customer (``{"answer"}``), or ask for a refund (``{"refund", "amount"}``)."""
    count("llm")
    if match := _REFUND.search(text):
        return {"refund": match["order"], "amount": int(match["amount"])}
    if "parcel" in text:
        return {"answer": "Your parcel left the warehouse yesterday; it arrives on Friday."}
    if "refund" in text:
        return {"answer": "Which order, and how much? (say: refund order A-1 ($10))"}
    return {"answer": f"Thanks for writing! You said {text!r}."}


def open_ticket(case: str, order: str, amount: int) -> str:
    """Ask a human to approve the refund (a ticket, an e-mail, a chat message)."""
    count("ticket")
    return f"ticket for {case}: refund ${amount} on order {order}?"


def refund_payment(order: str, amount: int) -> str:
    """The payment provider's refund call: money moves, so it must run once."""
    count("payment")
    return f"re_{order}_{amount}"


# -- the refund run and the agent -------------------------------------------------------------


class Refund(actors.Workflow, name="examples.Refund"):
    """One refund: a ticket for a human, a wait for their answer, the payment if approved."""

    async def run(self, order: str, amount: int, approval_window: float) -> dict[str, Any]:
        await self.step("ticket", open_ticket, self.key, order, amount)
        await self.set_value("stage", "awaiting approval")
        index, answer = await self.wait_any(
            self.sleep(approval_window),
            self.wait_for_event("approve"),
            self.wait_for_event("reject"),
        )
        if index == 0:
            await self.set_value("stage", "expired")
            return {"order": order, "refunded": False, "why": "nobody approved it in time"}
        if index == 2:
            await self.set_value("stage", "rejected")
            return {"order": order, "refunded": False, "why": f"{answer['by']}: {answer['note']}"}
        receipt = await self.step("refund", refund_payment, order, amount)
        await self.set_value("stage", "refunded")
        return {"order": order, "refunded": True, "receipt": receipt, "by": answer["by"]}


class Support(actors.Actor, name="examples.Support"):
    """One customer's conversation: its messages in SQL, refunds as runs beside it."""

    migrations = (
        "CREATE TABLE messages(id INTEGER PRIMARY KEY, role TEXT NOT NULL, content TEXT NOT NULL)",
    )

    async def on_create(self, approval_window: float = APPROVAL_WINDOW) -> None:
        self.kv["approval_window"] = approval_window

    def _say(self, role: str, content: str) -> None:
        self.sql.execute("INSERT INTO messages(role, content) VALUES (?, ?)", (role, content))

    async def chat(self, text: str) -> str:
        self._say("customer", text)
        reply = await self.step("llm", fake_llm, text)
        if "refund" in reply:
            order, amount = reply["refund"], reply["amount"]
            window = float(self.kv["approval_window"])
            # The id makes the start idempotent: asking twice for one refund starts one run.
            try:
                run = self.start(Refund.run, order, amount, window, id=f"refund-{order}")
            except actors.IdempotencyKeyReusedError:  # the same id, another amount
                answer = f"There is a refund on {order} already (refund-{order}); wait for it."
            else:
                answer = f"I asked a colleague to approve a ${amount} refund on {order} ({run.id})."
        else:
            answer = str(reply["answer"])
        self._say("agent", answer)
        return answer

    async def on_run_done(self, run: actors.Run[Any], outcome: Any) -> None:
        if isinstance(outcome, actors.RunFailedError):
            self._say("agent", f"Sorry, {run.id} failed ({outcome.error_message}); I am on it.")
        elif outcome["refunded"]:
            self._say("agent", f"Good news: {outcome['order']} is refunded ({outcome['receipt']}).")
        else:
            self._say("agent", f"Sorry, no refund on {outcome['order']}: {outcome['why']}.")

    @actors.query
    async def history(self) -> list[tuple[str, str]]:
        """The conversation so far, as ``(role, content)`` pairs."""
        return list(self.sql.query("SELECT role, content FROM messages ORDER BY id"))


# -- the demo --------------------------------------------------------------------------------


async def wait_until(check: Callable[[], Awaitable[bool]], seconds: float = 10.0) -> None:
    """Poll ``check`` until it is true (a demo's way to watch the runtime from outside)."""
    with trio.fail_after(seconds):
        while True:
            if await check():
                return
            await trio.sleep(0.02)


async def told(agent: actors.Ref[Support], before: int) -> str:
    """The agent's next message after the first ``before`` ones (``on_run_done`` follows a run's
    outcome as a message of its own: wait for it)."""

    async def arrived() -> bool:
        return len(await agent.ask(Support.history)) > before

    await wait_until(arrived)
    _, content = (await agent.ask(Support.history))[before]
    return content


async def say(agent: actors.Ref[Support], text: str) -> None:
    answer = await agent.ask(Support.chat, text)
    print(f"  {agent.key}: {text}")
    print(f"  agent: {answer}")


async def demo(folder: Path) -> None:
    async with actors.open_runtime(folder, types=[Support, Refund]) as rt:
        print("1. ana's refund is approved while she chats")
        ana = await rt.spawn(Support, key="ana")
        await say(ana, "Hello, I want a refund for order A-17 ($40), it arrived broken")
        run = rt.run(Refund, "refund-A-17")
        print(f"  refund {run.id}: {await run.wait_value('stage')}")

        async def waiting() -> bool:
            return (await run.status()).state == "waiting"

        await wait_until(waiting)  # (it gets there at once)
        print(f"  run status: {(await run.status()).state} for {(await run.status()).waiting_for}")
        await say(ana, "Meanwhile: where is my parcel for order A-18?")
        await say(ana, "And please do refund order A-17 ($40) soon")
        await say(ana, "No wait, refund order A-17 ($400)!")
        print(f"  still {(await run.status()).state}; runs ana started: {len(rt.runs(ana))}")
        before = len(await ana.ask(Support.history))
        await run.signal("approve", {"by": "kim"}, idempotency_key="approve-A-17")
        print(f"  kim approves: result {await run.result()}")
        print(f"  ana is told: {await told(ana, before)}")

        print("2. ben's refund is rejected")
        ben = await rt.spawn(Support, key="ben")
        await say(ben, "I'd like a refund on order B-5 ($300)")
        rejected = rt.run(Refund, "refund-B-5")
        await rejected.wait_value("stage")
        before = len(await ben.ask(Support.history))
        await rejected.signal("reject", {"by": "lee", "note": "the warranty ended in May"})
        print(f"  lee rejects: result {await rejected.result()}")
        print(f"  ben is told: {await told(ben, before)}")

        print("3. cyd's desk gives a human half a second; nobody answers")
        cyd = await rt.spawn(Support, 0.5, key="cyd")
        await say(cyd, "refund my order C-9 ($15) please")
        before = len(await cyd.ask(Support.history))
        expired = rt.run(Refund, "refund-C-9")
        print(f"  nobody answers: result {await expired.result()}")
        print(f"  cyd is told: {await told(cyd, before)}")
        stages = [await r.get_value("stage") for r in (run, rejected, expired)]
        print(f"  final stages: {stages}")

        print("ana's conversation:")
        for role, content in await ana.ask(Support.history):
            print(f"  {role}> {content}")


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
    trio.run(demo, folder)
    print(
        f"done: refunds asked: 3, tickets: {CALLS['ticket']}, payments: {CALLS['payment']}, "
        f"LLM calls: {CALLS['llm']}"
    )


if __name__ == "__main__":
    main()
