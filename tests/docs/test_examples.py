"""The examples in examples/ run end to end and do what their output claims."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def start_example(
    name: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def run_example(name: str, *args: str, env: dict[str, str] | None = None) -> str:
    done = start_example(name, *args, env=env)
    assert done.returncode == 0, f"{name} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def line_after(output: str, prefix: str) -> str:
    """The rest of the one output line that starts (after indentation) with ``prefix``."""
    lines = [line.strip() for line in output.splitlines()]
    found = [line[len(prefix) :].strip() for line in lines if line.startswith(prefix)]
    assert len(found) == 1, f"expected one line starting with {prefix!r} in:\n{output}"
    return found[0]


def test_research_agent_survives_kill_and_bills_once(tmp_path: Path) -> None:
    """research_agent: after a kill -9 mid-wait, no step runs again and approvals are honoured."""
    out = run_example("research_agent.py", str(tmp_path))
    calls = [json.loads(line) for line in (tmp_path / "outside.jsonl").read_text().splitlines()]
    llm = [call for call in calls if call["call"] == "llm"]

    # The child really waited for approval, with every step journaled, and was killed.
    assert "waiting for approval; message 1 (research) waiting" in out
    assert "exit status -9" in out
    # The reopened runtime replayed the turn (it woke and hibernated) without calling anything.
    woke = re.search(r"the agent woke (\d+) time", out)
    assert woke is not None and int(woke[1]) >= 1
    assert line_after(out, "calls the replay made outside:") == "0"
    # One LLM call per draft (three agents), each with its own idempotency key.
    assert len(llm) == 3 and len({call["idempotency_key"] for call in llm}) == 3
    first = llm[0]["tokens"]
    billed = re.search(r"tokens billed by the provider: (\d+) before the kill, (\d+) now", out)
    assert billed is not None and int(billed[1]) == int(billed[2]) == first
    assert int(line_after(out, "tokens the agent accounted for:")) == first
    # Each agent sent one review request; search and fetch ran once per agent.
    assert sorted(c["agent"] for c in calls if c["call"] == "review request") == [
        "agent-1",
        "agent-2",
        "agent-3",
    ]
    assert [c["call"] for c in calls].count("search") == 3
    assert [c["call"] for c in calls].count("fetch") == 6
    # The approval was honoured once (a repeated signal is refused), the rejection and the
    # missed deadline discarded their drafts.
    assert "approval signalled: True; the same signal again (a double click): False" in out
    assert [c["agent"] for c in calls if c["call"] == "publish"] == ["agent-1"]
    approved = ast.literal_eval(line_after(out, "result:"))
    assert approved["status"] == "published" and approved["by"] == "ann"
    rejected = ast.literal_eval(line_after(out, "agent-2:"))
    assert rejected["status"] == "discarded" and rejected["by"] == "bob"
    unanswered = ast.literal_eval(line_after(out, "agent-3:"))
    assert unanswered["status"] == "discarded" and "deadline" in unanswered["note"]
    assert "turns in flight: none" in out  # the research turn committed


def test_planner_fans_out_and_each_worker_runs_once(tmp_path: Path) -> None:
    """planner: the combined result covers every section, in order, and each worker ran once."""
    sections = load_example("planner").SECTIONS
    out = run_example("planner.py", str(tmp_path / "torpor"))
    first, second = (
        ast.literal_eval(line.strip().removeprefix("combined:").strip())
        for line in out.splitlines()
        if line.strip().startswith("combined:")
    )
    assert first["outline"] == [section.split()[0].capitalize() for section in sections]
    assert first["words"] == sum(len(section.split()) for section in sections)
    assert len(set(first["by"])) == len(sections)
    for worker in first["by"]:
        assert f"{worker} ran 1 time(s)" in out
    assert f"analyse() calls: {len(sections)};" in out
    # Asked again after a reopen with the same idempotency key: same result, nothing re-run.
    assert second == first
    assert f"worker runs: {[1] * len(sections)}; analyse() calls: {len(sections)}" in out


def unconfigured_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}


def test_openai_agent_without_configuration_exits_cleanly() -> None:
    """openai_agent with no OPENAI_* variables says it is not configured and exits with 0."""
    out = run_example("openai_agent.py", env=unconfigured_env())
    assert "not configured" in out and "OPENAI_API_KEY" in out


class FakeCompletions(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint that fails the first request with 503, then answers."""

    requests: list[dict[str, Any]]

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
        if len(self.requests) == 1:
            self.send_response(503)
            self.end_headers()
            return
        reply = json.dumps(
            {
                "model": body["model"],
                "choices": [{"message": {"role": "assistant", "content": "An actor is a box."}}],
                "usage": {"total_tokens": 21},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def fake_api() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    requests: list[dict[str, Any]] = []
    handler = type("Handler", (FakeCompletions,), {"requests": requests})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_openai_agent_retries_with_one_idempotency_key(
    fake_api: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    """openai_agent against a local endpoint: a 503 is retried with the same Idempotency-Key."""
    base_url, requests = fake_api
    env = {
        **unconfigured_env(),
        "OPENAI_BASE_URL": base_url,
        "OPENAI_API_KEY": "sk-test",
        "OPENAI_MODEL": "test-model",
    }
    out = run_example("openai_agent.py", "What is an actor?", str(tmp_path / "torpor"), env=env)
    assert "answer (test-model, 21 tokens): An actor is a box." in out
    assert "step retries: 1" in out
    assert len(requests) == 2
    keys = {request["headers"]["Idempotency-Key"] for request in requests}
    assert len(keys) == 1 and keys.pop().startswith("torpor:")
    for request in requests:
        assert request["path"] == "/v1/chat/completions"
        assert request["headers"]["Authorization"] == "Bearer sk-test"
        assert request["body"]["model"] == "test-model"
        assert request["body"]["messages"][-1] == {"role": "user", "content": "What is an actor?"}


@pytest.mark.skipif(not os.environ.get("OPENAI_BASE_URL"), reason="OPENAI_BASE_URL is not set")
def test_openai_agent_against_configured_api(tmp_path: Path) -> None:
    """openai_agent answers a question through the API named by OPENAI_BASE_URL."""
    out = run_example("openai_agent.py", "Reply with one word: hello.", str(tmp_path / "torpor"))
    assert line_after(out, "answer (")


def test_replication_restores_on_a_fresh_machine_and_forks_the_past(tmp_path: Path) -> None:
    """replication: a fresh machine gets alice's history from the replica; fork --at, her past."""
    # Machine A's directory is lost; machine B opens an empty directory with the same replica. The
    # fork made with --at has only the history before that time, and alice keeps hers.
    out = run_example("replication.py", str(tmp_path / "demo"))
    history = ["hello", "plan a trip", "make it Lisbon"]
    lines = [line.strip() for line in out.splitlines()]
    alice = [
        ast.literal_eval(line.removeprefix("alice:").strip())
        for line in lines
        if line.startswith("alice:")
    ]
    assert alice == [history, history]  # on machine B, before and after the fork
    assert ast.literal_eval(line_after(out, "alice-before:")) == history[:2]
    assert line_after(out, "restores from the replica:").startswith("2 ")
    assert "files behind: 0" in out
    assert not (tmp_path / "demo" / "machine-a").exists()
    assert "forked replication.Assistant 'alice' (the state at " in out


def test_asyncio_host_serves_http_and_closes_the_runtime(tmp_path: Path) -> None:
    """asyncio_host --demo serves JSON over HTTP, honours Idempotency-Key and closes the runtime."""
    # torpor runs on asyncio behind a stdlib HTTP endpoint; bad routes are refused, and the runtime
    # is closed before the program exits.
    out = run_example("asyncio_host.py", str(tmp_path / "torpor"), "--demo")
    answers = {
        line.split(" -> ", 1)[0]: line.split(" -> ", 1)[1]
        for line in (line.strip() for line in out.splitlines())
        if " -> " in line
    }
    assert answers["POST /agents/alice/note"] == '200 {"result": 1}'
    retried = "POST /agents/alice/note (Idempotency-Key req-2)"
    assert answers[retried] == '200 {"result": 2}'  # both requests with the key: applied once
    status, body = answers["GET /agents/alice/summary"].split(" ", 1)
    assert status == "200" and json.loads(body) == {"result": {"notes": 2, "words": 11}}
    assert answers["GET /agents/alice/note"].startswith("405 ")
    assert answers["POST /agents/alice/nope"].startswith("404 ")
    assert answers["8 concurrent POSTs to 8 agents"] == "[200]"
    assert out.index("server closed; closing the runtime") < out.index("runtime closed")
    assert out.rstrip().endswith("runtime closed")


def test_chat_agent_answers_with_tools_and_keeps_its_history(tmp_path: Path) -> None:
    """chat_agent runs each LLM round and tool call once and keeps its history across a reopen."""
    # The fake LLM calls the weather and calculator tools; the same say again with its idempotency
    # key returns the first answer without calling anything.
    out = run_example("chat_agent.py", str(tmp_path / "torpor"))
    answers = [line.strip().removeprefix("agent:").strip() for line in out.splitlines()]
    assert "Here you go: Lisbon: 22°C, sunny." in answers
    assert "Here you go: Oslo: -3°C, snow; (22 - -3) * 2 = 50." in answers
    assert "Here you go: 12 * (3 + 4) / 2 = 42." in answers
    assert "Here you go: 1 / 0 = error (division by zero)." in answers
    per_turn = re.findall(r"\(LLM calls: (\d+), tool calls: (\d+)\)", out)
    assert [(int(llm), int(tools)) for llm, tools in per_turn] == [
        (1, 0),
        (2, 1),
        (3, 2),
        (2, 1),
        (1, 0),
        (2, 1),
    ]
    assert "fake LLM calls: 11, tool calls: 5 {" in out
    assert "ana: 9 messages {'assistant': 3, 'tool': 3, 'user': 3}" in out
    assert "ben: 8 messages {'assistant': 3, 'tool': 2, 'user': 3}" in out
    assert "tool> Lisbon: 22°C, sunny" in out
    assert line_after(out, "calls it made:") == "0"
    assert out.rstrip().endswith("done: fake LLM calls: 11, tool calls: 5")


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def dir_arguments(name: str, folder: Path) -> list[str]:
    """The command-line arguments that make example ``name`` use ``folder`` as its DIR."""
    if name == "openai_agent.py":
        return ["What is an actor?", str(folder)]
    if name == "asyncio_host.py":
        return [str(folder), "--demo"]
    return [str(folder)]


@pytest.mark.parametrize("name", sorted(path.name for path in EXAMPLES.glob("[!_]*.py")))
def test_example_refuses_a_folder_that_is_not_a_runtime_and_deletes_nothing(
    name: str, tmp_path: Path
) -> None:
    """Each example refuses a non-empty folder that is not a runtime, says why, changes nothing."""
    # As ``python examples/quickstart.py .`` run in a checkout gives: nothing is deleted or added.
    folder = tmp_path / "mine"
    (folder / "src").mkdir(parents=True)
    (folder / "notes.txt").write_text("keep me")
    (folder / "src" / "app.py").write_text("print('mine')")
    before = files_under(folder)
    env = {
        **unconfigured_env(),
        "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",  # never reached: the folder is refused first
        "OPENAI_API_KEY": "sk-test",
    }
    done = start_example(name, *dir_arguments(name, folder), env=env)
    assert done.returncode != 0, f"{name} did not refuse:\n{done.stdout}\n{done.stderr}"
    assert f"{folder} is not empty" in done.stderr
    assert "give a new or empty folder" in done.stderr
    assert files_under(folder) == before
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt", "src"]


def test_quickstart_twice_on_one_folder_goes_on_from_the_first_run(tmp_path: Path) -> None:
    """The README's demo run twice on one folder reopens the first runtime and loses no ack."""
    # On the second run, alice keeps her notes.
    folder = tmp_path / "demo"
    first = run_example("quickstart.py", str(folder))
    second = run_example("quickstart.py", str(folder))
    assert "alice: {'persona': 'helpful', 'notes': 2, 'tokens': 11}" in first
    assert f"runtime directory: {folder} (an earlier run's: its agents keep their state)" in second
    assert "alice: {'persona': 'helpful', 'notes': 4, 'tokens': 22}" in second
    for out in first, second:
        assert out.rstrip().endswith("done: nothing acknowledged was lost")
        killed = re.search(
            r"has (\d+) notes from before the kill; (\d+) sends were acknowledged", out
        )
        assert killed is not None and int(killed[1]) >= int(killed[2]) > 0


def test_planner_twice_on_one_folder_refuses_and_keeps_the_first_run(tmp_path: Path) -> None:
    """An example that starts afresh refuses the folder its earlier run filled, and keeps it."""
    folder = tmp_path / "planner"
    run_example("planner.py", str(folder))
    before = files_under(folder)
    assert "directory.db" in before
    done = start_example("planner.py", str(folder))
    assert done.returncode != 0 and "give a new or empty folder" in done.stderr
    assert files_under(folder) == before


def test_support_agent_chats_while_a_refund_waits_and_pays_once(tmp_path: Path) -> None:
    """support_agent: the agent answers chat while the refund waits, and the refund is paid once."""
    # Approved, rejected and expired refunds each reach the customer once, through on_run_done.
    out = run_example("support_agent.py", str(tmp_path / "torpor"))
    lines = [line.strip() for line in out.splitlines()]
    wait = "run status: waiting for ('sleep', \"event 'approve'\", \"event 'reject'\")"
    parcel = "agent: Your parcel left the warehouse yesterday; it arrives on Friday."
    # The run was waiting before the chat, the chat was answered, and the run still waited.
    assert (
        lines.index(wait) < lines.index(parcel) < lines.index("still waiting; runs ana started: 1")
    )
    approved = ast.literal_eval(line_after(out, "kim approves: result"))
    assert approved == {"order": "A-17", "refunded": True, "receipt": "re_A-17_40", "by": "kim"}
    rejected = ast.literal_eval(line_after(out, "lee rejects: result"))
    assert rejected["refunded"] is False and "warranty" in rejected["why"]
    expired = ast.literal_eval(line_after(out, "nobody answers: result"))
    assert expired == {"order": "C-9", "refunded": False, "why": "nobody approved it in time"}
    assert line_after(out, "ana is told:") == "Good news: A-17 is refunded (re_A-17_40)."
    assert line_after(out, "ben is told:").startswith("Sorry, no refund on B-5: lee:")
    assert line_after(out, "cyd is told:") == "Sorry, no refund on C-9: nobody approved it in time."
    assert line_after(out, "final stages:") == "['refunded', 'rejected', 'expired']"
    assert lines.count("agent> Good news: A-17 is refunded (re_A-17_40).") == 1
    # Asked again, the same refund is the same run; another amount is refused.
    assert "agent: There is a refund on A-17 already (refund-A-17); wait for it." in lines
    assert out.rstrip().endswith("done: refunds asked: 3, tickets: 3, payments: 1, LLM calls: 6")


def test_checkout_publishes_its_order_id_and_keeps_the_stock_right(tmp_path: Path) -> None:
    """checkout: one run per idempotency id, the order id read while it waits, stock never off."""
    # The paid order ships once; the unpaid one is released when its payment window ends.
    out = run_example("checkout.py", str(tmp_path / "torpor"))
    assert "the same request again: same run True, same page True" in out
    assert "runs started: 1; orders: [" in out and "'awaiting payment')]" in out
    status = line_after(out, "run status: waiting for")
    assert status.startswith("(\"event 'paid'\", 'sleep'); steps [")
    assert re.findall(r"stock while it waits: (\d+)", out) == ["7", "3"]
    assert "payment webhook: True; delivered again: False" in out
    shipped, cancelled = re.findall(r"result: (order-\w+) (shipped|cancelled)", out)
    assert shipped[1] == "shipped" and cancelled[1] == "cancelled"
    orders = ast.literal_eval(line_after(out, "orders:"))
    assert [(qty, state) for _, _, qty, state in orders] == [(3, "shipped"), (4, "cancelled")]
    assert line_after(out, "the web handler answers:") == "sold out; result: sold out"
    assert "stock: 7; sold: 3; stock + sold = 10 of 10" in out
    assert out.rstrip().endswith("done: parcels shipped: 1")


def test_saga_compensates_in_reverse_once_and_fails_terminally(tmp_path: Path) -> None:
    """saga: a TerminalError runs each compensation once, in reverse, and fails the run for good."""
    # A transient timeout is retried by its step; the terminal error by neither step nor run.
    out = run_example("saga.py", str(tmp_path / "torpor"))
    assert "car bookings tried: 3 (two timeouts, retried by the step)" in out
    assert line_after(out, "step retries:") == "2"
    assert line_after(out, "the run failed:") == "TerminalError: NoRooms: no rooms at Oslo Grand"
    steps = ast.literal_eval(line_after(out, "steps:"))
    assert [name for name, _ in steps] == [
        "flight",
        "car",
        "hotel",
        "cancel hotel",
        "cancel car",
        "cancel flight",
    ]
    assert dict(steps)["hotel"] == "failed"
    assert (
        line_after(out, "run status:") == "failed, TerminalError: NoRooms: no rooms at Oslo Grand"
    )
    assert line_after(out, "dead letter:") == "run, reason terminal, 1 attempt(s)"
    calls = ast.literal_eval(line_after(out, "calls:"))
    assert calls["book hotel"] == 2  # one per trip: the terminal error was not retried
    assert calls["cancel flight"] == calls["cancel car"] == calls["cancel hotel"] == 1
    assert out.rstrip().endswith(
        "done: bookings held: ['car: compact', 'flight: TP 1350', 'hotel: Lisbon Palace']"
    )
