"""`torpor serve` in a child process: it binds 127.0.0.1, needs a token elsewhere, serves the
gateway, and what it acknowledged survives a kill -9 of the server."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
TYPES = "tests.http.served:TYPES"


@contextlib.contextmanager
def served(root: Path, *options: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`torpor serve` on a free port of 127.0.0.1; yields the process and its URL."""
    argv = [sys.executable, "-m", "runtime.cli", "serve", str(root), "--types", TYPES]
    child = subprocess.Popen(
        [*argv, "--port", "0", *options],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        ready, _, _ = select.select([child.stdout], [], [], 60)
        line = child.stdout.readline() if ready else ""
        assert line.startswith("torpor serve: http://127.0.0.1:"), (line, child.poll())
        yield child, line.split()[2]
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        for stream in (child.stdout, child.stderr):
            if stream is not None:
                stream.close()


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_serve_answers_and_stops_on_sigterm(tmp_path: Path, backend: str) -> None:
    """torpor serve serves the gateway on 127.0.0.1 and closes the runtime cleanly on SIGTERM."""
    with served(tmp_path / "rt", "--backend", backend) as (child, url):
        r = httpx.post(f"{url}/actors/Tally/t/add", json={"args": [2]}, timeout=30)
        assert r.json() == {"result": 2}
        assert httpx.get(f"{url}/actors/Tally/t/total", timeout=30).json() == {"result": 2}
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=30) == 0


def test_a_send_acknowledged_survives_a_kill_9_of_the_server(tmp_path: Path) -> None:
    """Sends answered 202 before a kill -9 all apply once the runtime is served again."""
    with served(tmp_path / "rt") as (child, url):
        for i in range(20):
            r = httpx.post(
                f"{url}/actors/Tally/t/add",
                json={"args": [1]},
                headers={"Prefer": "respond-async", "Idempotency-Key": f"k{i}"},
                timeout=30,
            )
            assert r.status_code == 202
        os.kill(child.pid, signal.SIGKILL)
    with served(tmp_path / "rt") as (_, url):
        for i in range(20):  # retried after the crash: applied once
            r = httpx.post(
                f"{url}/actors/Tally/t/add",
                json={"args": [1]},
                headers={"Prefer": "respond-async", "Idempotency-Key": f"k{i}"},
                timeout=30,
            )
        r = httpx.post(f"{url}/actors/Tally/t/add", json={"args": [0]}, timeout=30)
        assert r.json() == {"result": 20}


def read_events(url: str, after: int | None, count: int) -> list[tuple[int, int]]:
    """The next ``count`` (offset, value) entries of Tally t's stream "adds" over SSE."""
    headers = {} if after is None else {"Last-Event-ID": str(after)}
    got: list[tuple[int, int]] = []
    with httpx.stream(
        "GET", f"{url}/actors/Tally/t/streams/adds", headers=headers, timeout=30
    ) as r:
        for line in r.iter_lines():
            if line.startswith("data:"):
                entry = json.loads(line[5:])
                got.append((entry["offset"], entry["item"]))
                if len(got) == count:
                    break
    return got


def test_a_stream_reader_resumes_across_a_kill_9_of_the_server(tmp_path: Path) -> None:
    """An SSE reader that reconnects with its last offset after a kill -9 misses nothing."""

    def add(url: str, value: int) -> None:
        r = httpx.post(f"{url}/actors/Tally/t/add", json={"args": [value]}, timeout=30)
        assert r.status_code == 200

    with served(tmp_path / "rt") as (child, url):
        for value in range(1, 6):
            add(url, value)
        seen = read_events(url, None, 5)
        os.kill(child.pid, signal.SIGKILL)
    with served(tmp_path / "rt") as (_, url):
        for value in range(6, 9):
            add(url, value)
        seen += read_events(url, seen[-1][0], 3)
    assert [value for _, value in seen] == list(range(1, 9))
    offsets = [offset for offset, _ in seen]
    assert offsets == sorted(set(offsets))


def test_serve_needs_a_token_to_bind_another_address(tmp_path: Path) -> None:
    """Binding an address other than loopback without --token is refused before anything opens."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "runtime.cli",
            "serve",
            str(tmp_path / "rt"),
            "--types",
            TYPES,
            "--host",
            "0.0.0.0",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "give --token" in done.stderr
    assert not (tmp_path / "rt").exists()


def test_serve_with_a_token_refuses_requests_without_it(tmp_path: Path) -> None:
    """With --token, a request needs Authorization: Bearer TOKEN."""
    with served(tmp_path / "rt", "--token", "t0k") as (_, url):
        assert httpx.get(f"{url}/actors/Tally/t/total", timeout=30).status_code == 401
        auth = {"Authorization": "Bearer t0k"}
        r = httpx.get(f"{url}/actors/Tally/t/total", headers=auth, timeout=30)
        assert r.status_code == 404
