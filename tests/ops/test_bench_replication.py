"""`torpor bench replication` runs end to end with tiny parameters against the SeaweedFS it
starts itself, reports every figure with its target, and stops the server it started."""

from __future__ import annotations

import json
import math
import os
import socket
from typing import Any
from urllib.parse import urlsplit

import pytest

from runtime.bench import replication as bench_replication
from runtime.bench.replication import CountingStore, _Book, _check_once, kind_of
from runtime.errors import PreconditionFailedError

TINY = [
    "--actors",
    "10",
    "--rate",
    "50",
    "--seconds",
    "2",
    "--warmup",
    "0.5",
    "--durable-asks",
    "5",
    "--hop-chains",
    "5",
    "--idle-actors",
    "20",
    "--idle-seconds",
    "1",
    "--restore-mb",
    "1",
    "--restore-repeats",
    "1",
    "--json",
]


def _figure(report: dict[str, Any], start: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [f for f in report["figures"] if f["name"].startswith(start)]
    assert len(found) == 1, (start, [f["name"] for f in report["figures"]])
    return found[0]


def test_tiny_run_reports_sane_figures_and_stops_its_server(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The default phases, tiny: every figure finite, with its target and verdict."""
    assert bench_replication.main(TINY) == 0
    report = json.loads(capsys.readouterr().out)

    for figure in report["figures"]:
        assert math.isfinite(figure["value"]) and figure["value"] >= 0, figure
        assert figure["status"] in ("PASS", "MISS", "-"), figure
        if figure["target"] is None:
            assert figure["status"] == "-", figure
        else:
            expected = "PASS" if figure["value"] <= figure["target"] else "MISS"
            assert figure["status"] == expected, figure
    assert report["targets_met"] == all(f["status"] != "MISS" for f in report["figures"])
    # The four targets are each reported against their number.
    assert _figure(report, "replication lag p99 (every commit")["target"] == 1000
    assert _figure(report, "PUTs per 1,000 turns")["target"] == 7
    assert _figure(report, "requests by 20 idle actors")["target"] == 0

    load = report["load"]
    # The paced load ran at about the asked rate, and every commit in the window was acked.
    assert 25 <= load["turns_per_second"] <= 75, load["turns_per_second"]
    assert load["errors"] == 0, load["last_error"]
    assert load["rounds"] >= 1 and load["lag_samples"] >= load["turns"]
    assert 0 < load["lag_p50"] <= load["lag_p99"] <= load["lag_max"] < 10
    # Steady state: one log object PUT and one fences GET per round; the figure is their rate.
    assert load["requests"]["put"]["log"]["requests"] == load["rounds"]
    assert load["requests"]["get"]["fences"]["requests"] == load["rounds"]
    assert load["puts"] == sum(row["requests"] for row in load["requests"]["put"].values())
    assert _figure(report, "PUTs per 1,000 turns")["value"] == pytest.approx(
        load["puts"] / load["turns"] * 1000
    )
    assert _figure(report, "  long run")["value"] >= _figure(report, "PUTs per 1,000")["value"]
    # The wrapper's count agrees with the replication engine's own.
    assert load["engine_puts"] == load["puts"]
    # A durable ask waits for a round trip to the store; a plain one does not.
    assert load["durable_ask_p50"] > load["plain_ask_p50"]
    durable = _figure(report, "durable ask p50")
    assert durable["raw"] == pytest.approx(load["plain_ask_p50"] * 1e3)

    # A hop between actors waits for the replica's acknowledgement; without a replica it does not.
    hops = report["hops"]
    assert hops["chains"] == 5 and hops["hops_per_chain"] == 2
    assert 0 < hops["local_p50"] < hops["replicated_p50"] <= hops["replicated_p99"]
    assert _figure(report, "actor-to-actor hop p50")["raw"] == pytest.approx(
        hops["local_p50"] * 1e3
    )

    idle = report["idle"]
    assert idle["hibernated"] == 20
    assert idle["requests"] == 0, idle["requests_by_kind"]
    assert idle["create_requests_per_actor"] > 0

    (restore,) = report["restore"]
    assert restore["db_bytes"] >= 1_000_000 and restore["rows"] > 0
    assert restore["snapshot_bytes"] == restore["db_bytes"]
    assert 0 < restore["snapshot_stored_bytes"] < restore["snapshot_bytes"]
    assert restore["restore_p50"] > 0 and restore["floor_p50"] > 0
    assert restore["fresh_machine_seconds"] > 0
    figure = _figure(report, "restore 1 MB actor")
    assert figure["value"] == restore["restore_p50"]
    assert figure["raw"] == restore["floor_p50"]

    # The printed table has every figure with its verdict.
    table = bench_replication.format_table(report).splitlines()
    for figure in report["figures"]:
        (line,) = [line for line in table if line.startswith(figure["name"])]
        assert line.rstrip().endswith(figure["status"]), line

    # The server the bench started is gone: its process, and its S3 port.
    server = report["server"]
    assert not os.path.exists(f"/proc/{server['pid']}/status") or _zombie(server["pid"])
    url = urlsplit(server["endpoint_url"])
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):
        s.connect((url.hostname, url.port))


def _zombie(pid: int) -> bool:
    with open(f"/proc/{pid}/status") as f:
        return any(line.startswith("State:\tZ") for line in f)


def test_directory_store_load_and_idle(capsys: pytest.CaptureFixture[str]) -> None:
    """``--store directory`` needs no server; idle actors make no request there either."""
    argv = ["--store", "directory", "--phases", "load,idle", *TINY, "--seconds", "1"]
    assert bench_replication.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert "server" not in report
    assert report["store"].startswith("directory ")
    assert report["load"]["requests"]["put"]["log"]["requests"] == report["load"]["rounds"]
    assert report["idle"]["requests"] == 0


def test_kinds_of_keys() -> None:
    """Replica keys are sorted into log, fences, manifest, snapshot and segment."""
    assert kind_of("runtimes/r1/s1/log/0000000000000007") == "log"
    assert kind_of("runtimes/r1/s1/fences") == "fences"
    assert kind_of("actors/a1/data.db/manifest") == "manifest"
    assert kind_of("directory.db/manifest") == "manifest"
    assert kind_of("actors/a1/data.db/snapshots/0000000001-0000000001") == "snapshot"
    assert kind_of("actors/a1/data.db/segments/0000000001-0000000002") == "segment"


def test_counting_store_counts_by_kind(tmp_path: Any) -> None:
    """The wrapper counts requests, bytes and failures by operation and kind of object."""
    from runtime.replica.directory_store import DirectoryStore

    store = CountingStore(DirectoryStore(tmp_path))
    store.put("x/manifest", b"abc", if_none_match=True)
    assert store.get("x/manifest") is not None
    assert store.get("runtimes/r/s/fences") is None
    store.delete("x/manifest")
    counts = store.snapshot()
    assert counts[("put", "manifest")][:2] == (1, 3)
    assert counts[("get", "manifest")][:2] == (1, 3)
    assert counts[("get", "fences")][:2] == (1, 0)
    assert counts[("delete", "manifest")][0] == 1
    stats = store.statistics()
    assert (stats.gets, stats.puts, stats.deletes, stats.lists) == (2, 1, 1, 0)
    assert not store.failures
    with pytest.raises(PreconditionFailedError):
        store.put("x/manifest", b"abc", if_match='"nope"')
    assert store.failures == {"PUT PreconditionFailedError": 1}


FAULTS = [
    "--phases",
    "faults",
    "--actors",
    "6",
    "--rate",
    "40",
    "--healthy-seconds",
    "0.5",
    "--fault-seconds",
    "2",
    "--outage-seconds",
    "1.5",
    "--throttle-seconds",
    "1.5",
    "--ask-rate",
    "10",
    "--ask-actors",
    "6",
    "--warmup",
    "0.5",
    "--json",
]


def test_fault_phase_reports_the_faults_survived(capsys: pytest.CaptureFixture[str]) -> None:
    """A short fault phase: faults injected by kind, no death, no fencing, exactly once."""
    assert bench_replication.main(FAULTS) == 0
    report = json.loads(capsys.readouterr().out)
    assert "load" not in report and "idle" not in report and "restore" not in report
    faults = report["faults"]
    assert faults["died"] is False, faults.get("traceback")
    assert faults["closed_while_running"] is False
    # The proxy's statistics, by kind: the outage and the throttling window did hit.
    assert set(faults["injected"]) >= {"error_before", "error_after", "reset", "cut_body"}
    assert faults["injected"]["outage"] > 0 and faults["injected"]["slow_down"] > 0
    assert {row["label"] for row in faults["windows"] if row["faults"]} >= {"outage", "throttling"}
    assert faults["injected_total"] == sum(faults["injected"].values())
    assert faults["fenced"] == 0 and faults["fence_reports"] == [], faults["reports"]
    assert faults["stopped"] == 0
    assert faults["replication_errors"] > 0  # the replication saw the outage...
    assert faults["replicated"] is True  # ...and caught up
    for after in ("outage", "throttling"):
        assert faults["catch_up"][after]["lag_under_target"] is not None, faults["catch_up"]
    for label in ("healthy", "mixed", "outage", "recovery", "throttling"):
        assert faults["service"][label]["seconds"] > 0, faults["service"]
    assert faults["service"]["healthy"]["asks_per_second"] > 0
    # Every acknowledged turn exactly once, in the runtime and restored into a fresh directory.
    assert faults["acknowledged_turns"] > 0
    for check in (faults["source"], faults["restored"]):
        assert (check["missing"], check["repeated"], check["unexpected"]) == (0, 0, 0), check
        assert check["rows"] >= faults["acknowledged_turns"]
    assert faults["restored_equals_source"] is True
    for name in ("runtime deaths", "actors fenced", "acknowledged turns lost"):
        assert _figure(report, f"faults: {name}")["status"] == "PASS"
    table = bench_replication.format_table(report)
    assert "faults: " in table and "restored: " in table


def test_exactly_once_check_finds_missing_repeated_and_unexpected_rows() -> None:
    """The exactly-once check tells a lost, a repeated and a stray row apart."""
    book = _Book()
    sent = book.new("send", "a", "b")  # a row at a, and its relay's at b
    asked = book.new("ask", "c", "")
    lost = book.new("send", "a", "")
    book.acked.update({sent, asked, lost})
    unacked = book.new("send", "a", "")
    good = {"a": [[sent, 0, 1], [unacked, 0, 1]], "b": [[sent, 1, 1]], "c": [[asked, 0, 1]]}
    check = _check_once(book, good)
    assert (check["missing"], check["repeated"], check["unexpected"]) == (1, 0, 0)
    assert check["unacknowledged_applied"] == 1
    bad = {"a": [[sent, 0, 2], [lost, 0, 1], [99, 0, 1]], "b": [], "c": [[asked, 1, 1]]}
    check = _check_once(book, bad)
    assert check["missing"] == 2  # the relay at b, the ask at c (its row is at the wrong hop)
    assert (check["repeated"], check["unexpected"]) == (1, 2)
    # An actor that could not be read: its rows are unchecked, not missing.
    check = _check_once(book, {"a": good["a"], "c": good["c"]}, unreadable=["b"])
    assert (check["missing"], check["unchecked"]) == (1, 1)


def test_fault_phase_needs_an_s3_store() -> None:
    """The fault proxy goes in front of an http:// S3 endpoint, not a directory store."""
    with pytest.raises(SystemExit):
        bench_replication.main(["--phases", "faults", "--store", "directory"])
    with pytest.raises(SystemExit):
        bench_replication.main(["--phases", "faults", "--bucket", "b"])
