"""A stream across a real SIGKILL (DESIGN §7 item 9): entries subscribers saw before the kill
are all in the file after it with the same offsets, the attempt in flight gets a reset marker,
and a reader applying the resets sees every step's chunks exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.crash.streams_workload import CHUNKS, MESSAGES

ROOT = Path(__file__).resolve().parents[2]
#: The child is killed once a subscriber saw this chunk: in the middle of a step's attempt.
KILL_AT = "2:4"


def _child(mode: str, root: Path, backend: str) -> subprocess.Popen[str]:
    env = {**os.environ, "TORPOR_CRASH_BACKEND": backend}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.crash.streams_workload", mode, str(root)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _run_until_kill(root: Path, backend: str) -> list[dict[str, Any]]:
    """Run the workload, SIGKILL it once the chosen chunk was seen; the entries seen before."""
    child = _child("run", root, backend)
    seen: list[dict[str, Any]] = []
    assert child.stdout is not None
    try:
        for line in child.stdout:
            if line.startswith("ENTRY "):
                entry = json.loads(line[6:])
                seen.append(entry)
                if entry["item"] == KILL_AT:
                    child.send_signal(signal.SIGKILL)
                    break
            elif line.startswith("IDLE"):
                break
    finally:
        child.kill()
        _, err = child.communicate(timeout=60)
    assert seen and seen[-1]["item"] == KILL_AT, f"the child ended before the kill point: {err}"
    return seen


def _verify(root: Path, backend: str) -> list[dict[str, Any]]:
    child = _child("verify", root, backend)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    (state,) = [line[6:] for line in out.splitlines() if line.startswith("STATE ")]
    entries: list[dict[str, Any]] = json.loads(state)
    return entries


def _as_reader_sees(entries: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Each step's chunks once a reader dropped those of every reset attempt before its reset."""
    chunks: dict[tuple[str, int], list[str]] = {}
    for entry in entries:
        if entry["topic"] != "tokens":
            continue
        attempt = (entry["step_key"], entry["attempt"])
        if entry["kind"] == "reset":
            chunks.pop(attempt, None)
        else:
            chunks.setdefault(attempt, []).append(entry["item"])
    by_step: dict[str, list[str]] = {}
    for (step_key, _), items in chunks.items():
        assert step_key not in by_step, f"two surviving attempts of {step_key}"
        by_step[step_key] = items
    return by_step


def test_a_stream_survives_sigkill_with_offsets_unchanged_and_resets(
    tmp_path: Path, backend: str
) -> None:
    """Entries seen before a kill -9 keep their offsets; the attempt in flight gets a reset."""
    root = tmp_path / "rt"
    seen = _run_until_kill(root, backend)
    after = _verify(root, backend)
    by_offset = {e["offset"]: e for e in after}
    for entry in seen:  # durable before the kill: there, unchanged
        assert by_offset.get(entry["offset"]) == entry
    offsets = [e["offset"] for e in after]
    assert offsets == sorted(set(offsets))
    # The attempt in flight (message 2's) was reset after its chunks, then retried in full.
    killed = next(e for e in seen if e["item"] == KILL_AT)
    resets = [
        e
        for e in after
        if e["kind"] == "reset"
        and (e["step_key"], e["attempt"]) == (killed["step_key"], killed["attempt"])
    ]
    assert len(resets) == 1 and resets[0]["offset"] > killed["offset"]
    # A reader applying the resets gets each message's chunks once, complete and in order.
    steps = _as_reader_sees(after)
    assert sorted(steps.values()) == sorted(
        [f"{i}:{j}" for j in range(CHUNKS)] for i in range(MESSAGES)
    )
    # Each published item once, in commit order.
    done = [e["item"] for e in after if e["topic"] == "done"]
    assert done == list(range(MESSAGES))
