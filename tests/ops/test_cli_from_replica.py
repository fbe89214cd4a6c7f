"""``torpor inspect --from-replica`` and ``torpor sql --from-replica``: a hibernated actor's
state read from the replica (latest, or ``--at`` a past time) without a runtime directory, and
without touching the local files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from tests.ops.test_cli_replica import Made, failed, make, ok, torpor

TYPE = "tests.Notebook"


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Made:
    return make(tmp_path_factory.mktemp("from-replica"))


def digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` (names and bytes)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def state(report: dict[str, Any]) -> tuple[Any, Any]:
    return report["kv"], [(t["name"], t["rows"], t["first_rows"]) for t in report["tables"]]


def test_inspect_from_replica_matches_local(made: Made) -> None:
    """inspect --from-replica shows the same state as the local inspect and changes nothing."""
    before, replica_before = digest(made.root), digest(made.replica)
    local = json.loads(ok(torpor("inspect", made.root, TYPE, "alice", "--json")))
    remote = json.loads(
        ok(torpor("inspect", TYPE, "alice", "--from-replica", "--replica", made.replica, "--json"))
    )
    assert state(remote) == state(local)
    assert remote["kv"]["count"] == 3
    assert remote["actor"]["key"] == "alice"
    assert str(made.replica) in remote["folder"]
    text = ok(torpor("inspect", "--from-replica", TYPE, "alice", "--replica", made.replica))
    assert "water the plants" in text
    assert digest(made.root) == before
    assert digest(made.replica) == replica_before


def test_inspect_from_replica_at_an_earlier_time(made: Made) -> None:
    """inspect --from-replica --at shows the actor's state at that earlier time."""
    before = digest(made.root)
    past = json.loads(
        ok(
            torpor(
                "inspect",
                TYPE,
                "alice",
                "--from-replica",
                "--replica",
                made.replica,
                "--at",
                str(made.middle),
                "--json",
            )
        )
    )
    assert past["kv"]["count"] == 2
    notes = {t["name"]: t for t in past["tables"]}["notes"]
    assert notes["rows"] == 2
    # bob did not exist yet then
    err = failed(
        torpor(
            "inspect",
            TYPE,
            "bob",
            "--from-replica",
            "--replica",
            made.replica,
            "--at",
            str(made.middle),
        ),
        1,
    )
    assert "bob" in err
    assert digest(made.root) == before


def test_sql_from_replica_every_actor(made: Made) -> None:
    """sql --from-replica runs the query on every actor of the type, as locally."""
    before = digest(made.root)
    query = "SELECT count(*) FROM notes"
    local = json.loads(ok(torpor("sql", made.root, query, "--type", TYPE, "--json")))
    remote = json.loads(
        ok(
            torpor(
                "sql", query, "--type", TYPE, "--from-replica", "--replica", made.replica, "--json"
            )
        )
    )
    assert remote["rows"] == local["rows"]
    assert [(r["key"], r["values"]) for r in remote["rows"]] == [("alice", [3]), ("bob", [1])]
    past = json.loads(
        ok(
            torpor(
                "sql",
                query,
                "--type",
                TYPE,
                "--from-replica",
                "--replica",
                made.replica,
                "--at",
                str(made.middle),
                "--json",
            )
        )
    )
    assert [(r["key"], r["values"]) for r in past["rows"]] == [("alice", [2])]
    only_bob = json.loads(
        ok(
            torpor(
                "sql",
                query,
                "--type",
                TYPE,
                "--prefix",
                "b",
                "--from-replica",
                "--replica",
                made.replica,
                "--json",
            )
        )
    )
    assert [r["key"] for r in only_bob["rows"]] == ["bob"]
    assert digest(made.root) == before


def test_misused_replica_options_are_usage_errors(made: Made, tmp_path: Path) -> None:
    # replica options without --from-replica: a usage error, not silently ignored
    """Replica options without --from-replica, or a replica without directory.db, are errors."""
    failed(torpor("inspect", made.root, TYPE, "alice", "--replica", made.replica), 2)
    # --from-replica without a replica
    failed(torpor("inspect", TYPE, "alice", "--from-replica"), 2)
    # a replica without directory.db
    empty = tmp_path / "empty"
    empty.mkdir()
    failed(torpor("sql", "SELECT 1", "--type", TYPE, "--from-replica", "--replica", empty), 1)
