"""A chat agent backed by a real OpenAI-compatible chat-completions API (standard library only).

    OPENAI_API_KEY=... python examples/openai_agent.py ["your question"] [DIR]

With DIR, the conversation is kept there and goes on at each run; without, it starts afresh.
DIR may be missing, empty or a runtime; any other folder is refused.

Configuration, from the environment:

    OPENAI_BASE_URL  the API's base URL (default https://api.openai.com/v1; any server that
                     speaks POST {base}/chat/completions works: vLLM, Ollama, LiteLLM, ...)
    OPENAI_API_KEY   the bearer token (may be empty for a local server)
    OPENAI_MODEL     the model name (default gpt-4o-mini)

With neither OPENAI_BASE_URL nor OPENAI_API_KEY set, the script says so and exits with status 0.

The agent keeps its conversation in its own SQLite table. The LLM call is a step: it runs once
per question, is retried on rate limits, server errors and timeouts with the same
``Idempotency-Key`` header (``actors.current_step().idempotency_key``), and its answer is
journaled, so a replay of the turn never calls the API again.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import trio

import actors

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o-mini"
#: Seconds one HTTP attempt may take. The step's deadline is the same: a sync step runs in a
#: worker thread that cannot be interrupted, so the socket timeout is what really stops it.
REQUEST_TIMEOUT = 60.0
LLM_RETRY = actors.Retry(max_attempts=4, initial_delay=0.5, max_delay=8.0, deadline=REQUEST_TIMEOUT)
#: HTTP statuses worth another attempt; any other 4xx is our fault and is not retried.
RETRYABLE = {408, 409, 429, 500, 502, 503, 504}


def chat_completion(messages: list[dict[str, str]]) -> dict[str, Any]:
    """One POST {base}/chat/completions; returns the answer and the tokens billed."""
    base = os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
    body = {"model": os.environ.get("OPENAI_MODEL") or DEFAULT_MODEL, "messages": messages}
    headers = {
        "Content-Type": "application/json",
        # The same key on every attempt and replay of this step: a provider or gateway that
        # de-duplicates by it answers a retry without running (and billing) the call again.
        "Idempotency-Key": actors.current_step().idempotency_key,
    }
    if os.environ.get("OPENAI_API_KEY"):
        headers["Authorization"] = f"Bearer {os.environ['OPENAI_API_KEY']}"
    request = urllib.request.Request(
        base.rstrip("/") + "/chat/completions",
        data=json.dumps(body).encode(),
        headers=headers,
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
            reply = json.load(response)
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:500]
        if exc.code in RETRYABLE:
            raise  # the step is tried again after a backoff
        raise actors.NonRetryable(f"HTTP {exc.code} from {request.full_url}: {detail}") from exc
    usage = reply.get("usage") or {}
    return {
        "text": reply["choices"][0]["message"]["content"],
        "model": reply.get("model", body["model"]),
        "tokens": usage.get("total_tokens"),
    }


class ChatAgent(actors.Actor, name="examples.ChatAgent"):
    migrations = ("CREATE TABLE messages(id INTEGER PRIMARY KEY, role TEXT, content TEXT)",)

    async def on_create(self, system: str = "You are a concise assistant.") -> None:
        self.sql.execute("INSERT INTO messages(role, content) VALUES ('system', ?)", (system,))

    async def ask_llm(self, question: str) -> dict[str, Any]:
        self.sql.execute("INSERT INTO messages(role, content) VALUES ('user', ?)", (question,))
        history = [
            {"role": role, "content": content}
            for role, content in self.sql.query("SELECT role, content FROM messages ORDER BY id")
        ]
        answer = await self.step("chat completion", LLM_RETRY, chat_completion, history)
        self.sql.execute(
            "INSERT INTO messages(role, content) VALUES ('assistant', ?)", (answer["text"],)
        )
        return answer


async def run(question: str, folder: Path, conversation: str | None) -> None:
    async with actors.open_runtime(folder, types=[ChatAgent]) as rt:
        # Without a conversation name, each run is a new conversation (a generated key).
        if conversation is None:
            agent = await rt.spawn(ChatAgent)
        else:
            agent = rt.ref(ChatAgent, conversation)
        try:
            answer = await agent.ask(ChatAgent.ask_llm, question)
        except actors.MessageFailedError as exc:
            print(f"the LLM call failed: {exc.__cause__}", file=sys.stderr)
            raise SystemExit(1) from None
        print(f"question: {question}")
        print(f"answer ({answer['model']}, {answer['tokens']} tokens): {answer['text']}")
        stats = rt.statistics()
        print(f"steps run: {stats.steps}, step retries: {stats.step_retries}")


def runtime_folder(arg: str | None) -> Path:
    """DIR, or a new temporary folder. Refuse a folder that holds anything but a runtime."""
    if arg is None:
        return Path(tempfile.mkdtemp()) / "torpor"
    folder = Path(arg)
    runtime = (folder / "directory.db").is_file()
    if folder.exists() and not runtime and (not folder.is_dir() or any(folder.iterdir())):
        sys.exit(f"{folder} is not empty and not a torpor runtime: give a new or empty folder")
    return folder


def main() -> None:
    if not (os.environ.get("OPENAI_BASE_URL") or os.environ.get("OPENAI_API_KEY")):
        print(
            "openai_agent: not configured, nothing to do. Set OPENAI_API_KEY (and optionally "
            "OPENAI_BASE_URL and OPENAI_MODEL) to run it against an OpenAI-compatible API."
        )
        return
    question = sys.argv[1] if len(sys.argv) > 1 else "In one sentence: what is an actor?"
    folder = runtime_folder(sys.argv[2] if len(sys.argv) > 2 else None)
    # A directory of your own: the conversation goes on at each run; else a new one each time.
    trio.run(run, question, folder, "demo" if len(sys.argv) > 2 else None)


if __name__ == "__main__":
    main()
