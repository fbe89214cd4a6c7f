"""A chat agent with tools: one durable actor per conversation.

    python examples/chat_agent.py [DIR]

DIR must be a new or empty folder (a temporary one if omitted): the demo starts afresh, and
deletes nothing it did not create.

Each ``Chat`` actor keeps its conversation in its own SQL table. ``say(text)`` runs the usual
agent loop: ask the LLM what to do; while it asks for a tool (at most ``MAX_TOOL_ROUNDS``
times), run the tool and show the LLM the result; then store and return the final answer.
The LLM call and every tool call are steps: each runs once, and its result is journaled, so
a turn that runs again (after a crash, say) does not call the LLM or the tools a second time.

1. two conversations, a few messages each: the transcript;
2. the runtime is closed and opened again: the history is still there, and the same ``say``
   sent again with its idempotency key returns the first answer without running anything.

The LLM is a fake: a pure function that decides from the conversation whether to call a tool.
``CALLS`` counts what it and the tools were asked, to show each ran once per round.
"""

from __future__ import annotations

import ast
import operator
import re
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import trio

import actors

#: How many tool calls one turn may make before the agent must answer.
MAX_TOOL_ROUNDS = 3
#: What the fake LLM and the tools were asked, by name (steps run in worker threads).
CALLS: Counter[str] = Counter()
_CALLS_LOCK = threading.Lock()


def count(name: str) -> None:
    with _CALLS_LOCK:
        CALLS[name] += 1


# -- the tools (fakes: deterministic, offline) -----------------------------------------------

FORECASTS = {
    "paris": "14°C, light rain",
    "lisbon": "22°C, sunny",
    "oslo": "-3°C, snow",
}


def weather(city: str) -> str:
    count("tool:weather")
    return f"{city}: {FORECASTS.get(city.lower(), 'no forecast')}"


_OPERATORS: dict[type, Any] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


def evaluate(expr: str) -> float | int:
    """Arithmetic only: numbers, + - * / // % ** and parentheses (no names, no calls, no eval)."""

    def walk(node: ast.AST) -> float | int:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            if isinstance(node.value, bool):
                raise ValueError("not a number: a boolean")
            return node.value
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
            value: float | int = _OPERATORS[type(node.op)](walk(node.operand))
            return value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > 100:
                raise ValueError("exponent too large")
            result: float | int = _OPERATORS[type(node.op)](left, right)
            return result
        raise ValueError(f"not arithmetic: {ast.dump(node)}")

    return walk(ast.parse(expr, mode="eval"))


def calculator(expr: str) -> str:
    count("tool:calculator")
    try:
        value = evaluate(expr)
    except (ValueError, SyntaxError, ZeroDivisionError) as error:
        return f"{expr} = error ({error})"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"{expr} = {value}"


TOOLS = {"weather": weather, "calculator": calculator}


# -- the LLM (a fake: a pure function of the conversation) -----------------------------------

_WEATHER = re.compile(r"weather in ([A-Z][a-zA-Z]+)")
_ARITHMETIC = re.compile(r"[\d(][\d\s.+\-*/%()]*[\d)]")


def wanted_tools(text: str) -> list[dict[str, str]]:
    """The tool calls a user's message calls for, in order."""
    calls = [{"tool": "weather", "arg": city} for city in _WEATHER.findall(text)]
    for match in _ARITHMETIC.findall(text):
        expr = match.strip()
        if re.search(r"\d\s*[-+*/%]", expr):
            calls.append({"tool": "calculator", "arg": expr})
    return calls


def fake_llm(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """Given the conversation, call a tool (``{"tool", "arg"}``) or answer (``{"answer"}``)."""
    count("llm")
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
    text = messages[last_user]["content"]
    results = [m["content"] for m in messages[last_user + 1 :] if m["role"] == "tool"]
    wanted = wanted_tools(text)
    if len(results) < len(wanted):
        return wanted[len(results)]
    if results:
        return {"answer": "Here you go: " + "; ".join(results) + "."}
    if re.search(r"\b(hi|hello)\b", text, re.IGNORECASE):
        return {"answer": "Hello! Ask me about the weather, or give me a sum."}
    return {"answer": f"You said {text!r}; I have no tool for that."}


# -- the agent -------------------------------------------------------------------------------


class Chat(actors.Actor, name="examples.Chat"):
    """One conversation: its messages in SQL, one LLM-and-tools loop per user message."""

    migrations = (
        "CREATE TABLE messages(id INTEGER PRIMARY KEY, role TEXT NOT NULL, content TEXT NOT NULL)",
    )

    def _messages(self) -> list[dict[str, Any]]:
        rows = self.sql.query("SELECT role, content FROM messages ORDER BY id")
        return [{"role": role, "content": content} for role, content in rows]

    def _append(self, role: str, content: str) -> None:
        self.sql.execute("INSERT INTO messages(role, content) VALUES (?, ?)", (role, content))

    async def say(self, text: str) -> str:
        self._append("user", text)
        for round_ in range(MAX_TOOL_ROUNDS + 1):
            reply = await self.step("llm", fake_llm, self._messages())
            if "answer" in reply or round_ == MAX_TOOL_ROUNDS:
                answer = str(reply.get("answer", "Sorry, that needs too many tools."))
                break
            name, arg = reply["tool"], reply["arg"]
            result = await self.step(f"tool:{name}", TOOLS[name], arg)
            self._append("tool", result)
        self._append("assistant", answer)
        return answer

    @actors.query
    async def history(self) -> list[tuple[str, str]]:
        """The conversation so far, as ``(role, content)`` pairs (tool results included)."""
        return [(m["role"], m["content"]) for m in self._messages()]


# -- the demo --------------------------------------------------------------------------------

CONVERSATIONS = {
    "ana": [
        "Hello there",
        "What's the weather in Lisbon?",
        "And the weather in Oslo, and what is (22 - -3) * 2?",
    ],
    "ben": [
        "What is 12 * (3 + 4) / 2?",
        "Tell me a joke",
        "What is 1 / 0?",
    ],
}


async def first_run(folder: Path) -> None:
    async with actors.open_runtime(folder, types=[Chat]) as rt:
        for key, lines in CONVERSATIONS.items():
            chat = rt.ref(Chat, key)
            print(f"  conversation {key!r}")
            for i, text in enumerate(lines):
                before = CALLS.copy()
                answer = await chat.options(idempotency_key=f"{key}-{i}").ask(Chat.say, text)
                used = CALLS - before
                tools = sum(n for name, n in used.items() if name.startswith("tool:"))
                print(f"    user: {text}")
                print(f"    agent: {answer}")
                print(f"      (LLM calls: {used['llm']}, tool calls: {tools})")


async def second_run(folder: Path) -> None:
    async with actors.open_runtime(folder, types=[Chat]) as rt:
        for key in CONVERSATIONS:
            history = await rt.ref(Chat, key).ask(Chat.history)
            roles = Counter(role for role, _ in history)
            print(f"  {key}: {len(history)} messages {dict(sorted(roles.items()))}")
            for role, content in history:
                print(f"    {role}> {content}")
        before = CALLS.copy()
        key, i = "ana", len(CONVERSATIONS["ana"]) - 1
        again = (
            await rt.ref(Chat, key)
            .options(idempotency_key=f"{key}-{i}")
            .ask(Chat.say, CONVERSATIONS[key][i])
        )
        print(f"  the last 'say' again, same idempotency key: {again}")
        print(f"  calls it made: {sum((CALLS - before).values())}")


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
    print("1. two conversations")
    trio.run(first_run, folder)
    tools = sum(n for name, n in CALLS.items() if name.startswith("tool:"))
    print(f"fake LLM calls: {CALLS['llm']}, tool calls: {tools} {dict(sorted(CALLS.items()))}")
    print("2. reopen the runtime: the history is still there")
    trio.run(second_run, folder)
    tools = sum(n for name, n in CALLS.items() if name.startswith("tool:"))
    print(f"done: fake LLM calls: {CALLS['llm']}, tool calls: {tools}")


if __name__ == "__main__":
    main()
