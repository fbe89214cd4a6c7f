"""torpor hosted inside an asyncio application, behind a tiny HTTP endpoint (stdlib only).

    python examples/asyncio_host.py [DIR] [--port PORT]   # serve until Ctrl-C or SIGTERM
    python examples/asyncio_host.py [DIR] --demo          # serve, call itself, print, exit

``asyncio.run(main())`` opens the runtime with ``actors.open_runtime`` (torpor is written against
AnyIO, so it runs on the asyncio loop it finds) and, beside it, an ``asyncio.start_server``
endpoint on 127.0.0.1 that turns requests into asks:

    POST /agents/<key>/<handler>   body: a JSON list (arguments) or object (keyword arguments);
                                   an ``Idempotency-Key`` header is passed on to the ask
    GET  /agents/<key>/<handler>   a read-only query, no arguments

and answers with JSON. On shutdown the server stops taking connections, the requests in flight
finish, and then the runtime closes gracefully (turns in progress get ``shutdown_grace``).

DIR may be missing, empty, or a runtime (an earlier run's: its agents keep their state); any other
folder is refused. Without DIR, a new temporary folder is used.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import actors


def count_words(text: str) -> int:
    """Blocking work (think: a tokenizer, an HTTP client): a step runs it in a worker thread."""
    time.sleep(0.01)
    return len(text.split())


class Agent(actors.Actor, name="asyncio_host.Agent"):
    """A toy agent: notes in its own SQLite table, a word count in kv."""

    migrations = ("CREATE TABLE notes(id INTEGER PRIMARY KEY, text TEXT NOT NULL)",)

    async def on_create(self) -> None:
        self.kv["words"] = 0

    async def note(self, text: str) -> int:
        """Remember a note; return how many notes this agent has."""
        words = await self.step("count words", count_words, text)
        self.sql.execute("INSERT INTO notes(text) VALUES (?)", (text,))
        self.kv["words"] += words
        return int(self.sql.query_value("SELECT count(*) FROM notes"))

    @actors.query
    async def summary(self) -> dict[str, Any]:
        notes = self.sql.query_value("SELECT count(*) FROM notes")
        return {"notes": notes, "words": self.kv["words"]}


#: The handlers a GET may call: read-only queries.
GET_HANDLERS = {"summary"}
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}
REASONS |= {500: "Internal Server Error", 503: "Service Unavailable"}


async def call_agent(
    rt: actors.Runtime, method: str, path: str, headers: dict[str, str], body: bytes
) -> tuple[int, Any]:
    """Route one request to an ask; return (status, JSON-able answer)."""
    parts = path.split("?", 1)[0].strip("/").split("/")
    if len(parts) != 3 or parts[0] != "agents":
        return 404, {"error": "use /agents/<key>/<handler>"}
    _, key, handler = parts
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    if method == "GET":
        if handler not in GET_HANDLERS:
            return 405, {"error": f"GET serves {sorted(GET_HANDLERS)}; POST to call {handler!r}"}
    elif method == "POST":
        try:
            payload = json.loads(body or b"[]")
        except ValueError as exc:
            return 400, {"error": f"the body is not JSON: {exc}"}
        if isinstance(payload, list):
            args = payload
        elif isinstance(payload, dict):
            kwargs = payload
        else:
            return 400, {"error": "the body is a JSON list (arguments) or object (keywords)"}
    else:
        return 405, {"error": f"{method} is not served"}
    try:
        result: Any = (
            await rt.ref(Agent, key)
            .options(idempotency_key=headers.get("idempotency-key"))
            .ask(handler, *args, **kwargs)
        )
    except (actors.UnknownHandlerError, actors.InvalidKeyError) as exc:
        return 404, {"error": str(exc)}
    except actors.InvalidArgumentsError as exc:
        return 400, {"error": str(exc)}
    except actors.RuntimeClosedError as exc:
        return 503, {"error": str(exc)}
    except actors.ActorError as exc:  # the handler failed: MessageFailedError and its kin
        return 500, {"error": f"{type(exc).__name__}: {exc}"}
    return 200, {"result": result}


def serve_connection(rt: actors.Runtime, active: set[asyncio.Task[Any]]) -> Any:
    """The ``asyncio.start_server`` callback: one request per connection, then close."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        active.add(task)
        try:
            status, answer = await read_and_answer(rt, reader)
            data = json.dumps(answer).encode()
            writer.write(
                f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + data
            )
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away
        finally:
            writer.close()
            active.discard(task)

    return handle


async def read_and_answer(rt: actors.Runtime, reader: asyncio.StreamReader) -> tuple[int, Any]:
    head = await reader.readuntil(b"\r\n\r\n")
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    try:
        method, path, _version = request_line.split(" ")
    except ValueError:
        return 400, {"error": "malformed request line"}
    headers = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return await call_agent(rt, method, path, headers, body)


def http(port: int, method: str, path: str, body: Any = None, key: str | None = None) -> Any:
    """A blocking stdlib client (the demo runs it in a thread, off the event loop)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if key is not None:
        request.add_header("Idempotency-Key", key)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def demo(port: int) -> None:
    """Make a few requests to our own server, as any HTTP client would."""
    calls: list[tuple[str, str, Any, str | None]] = [
        ("POST", "/agents/alice/note", ["read the paper on durable execution"], None),
        ("POST", "/agents/alice/note", {"text": "summarise it in three bullets"}, "req-2"),
        ("POST", "/agents/alice/note", {"text": "summarise it in three bullets"}, "req-2"),
        ("GET", "/agents/alice/summary", None, None),
        ("GET", "/agents/alice/note", None, None),
        ("POST", "/agents/alice/nope", [], None),
    ]
    for method, path, body, key in calls:
        status, answer = await asyncio.to_thread(http, port, method, path, body, key)
        retry = f" (Idempotency-Key {key})" if key else ""
        print(f"  {method} {path}{retry} -> {status} {json.dumps(answer)}")
    # Many agents at once: the asks run concurrently on the one event loop.
    answers = await asyncio.gather(
        *(
            asyncio.to_thread(http, port, "POST", f"/agents/user-{i}/note", [f"hello from {i}"])
            for i in range(8)
        )
    )
    print(f"  8 concurrent POSTs to 8 agents -> {sorted({status for status, _ in answers})}")


async def main(folder: Path, port: int, run_demo: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    active: set[asyncio.Task[Any]] = set()
    async with actors.open_runtime(folder, types=[Agent], shutdown_grace=5.0) as rt:
        server = await asyncio.start_server(serve_connection(rt, active), "127.0.0.1", port)
        port = server.sockets[0].getsockname()[1]
        print(f"serving on http://127.0.0.1:{port} (runtime directory: {folder})", flush=True)
        try:
            if run_demo:
                await demo(port)
            else:
                await stop.wait()
        finally:
            # Stop taking connections, let the requests in flight finish, then close the runtime
            # (leaving the `async with`): turns in progress get shutdown_grace seconds.
            server.close()
            await server.wait_closed()
            if active:
                await asyncio.wait(active, timeout=10)
            print("server closed; closing the runtime", flush=True)
    print("runtime closed", flush=True)


def runtime_folder(arg: Path | None) -> Path:
    """DIR, or a new temporary folder. Refuse a folder that holds anything but a runtime."""
    if arg is None:
        return Path(tempfile.mkdtemp()) / "torpor"
    folder = Path(arg)
    runtime = (folder / "directory.db").is_file()
    if folder.exists() and not runtime and (not folder.is_dir() or any(folder.iterdir())):
        sys.exit(f"{folder} is not empty and not a torpor runtime: give a new or empty folder")
    return folder


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", nargs="?", type=Path, help="runtime directory (default: a temp one)")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free one)")
    parser.add_argument("--demo", action="store_true", help="make a few requests, print, exit")
    options = parser.parse_args()
    folder = runtime_folder(options.dir)
    asyncio.run(main(folder, options.port, options.demo))
