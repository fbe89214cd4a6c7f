"""``torpor bench replication``: what replicating a runtime to S3 costs, against one local S3
server (SeaweedFS ``weed mini`` on 127.0.0.1, started here unless ``--endpoint-url`` and
``--bucket`` name another; ``--store directory`` uses a :class:`DirectoryStore` instead).

Every request the runtime makes goes through :class:`CountingStore`, a wrapper that counts
GET/PUT/DELETE/LIST, bytes and seconds by kind of object (log object, fences, manifest,
snapshot, segment). Measured, each with its target where it has one:

- **Steady load.** ``--actors`` awake actors receive ``--rate`` messages per second in total
  (paced sends, round robin), for ``--seconds`` after a warm-up (every actor woken, snapshotted
  and its manifest pointed at this session's log). Replication lag (commit -> acknowledged by
  the replica): every commit's lag in the window (from the replication engine's own samples)
  and ``rt.statistics().replication.lag_p50/_p99`` (its last 1,000 commits) at the end; the
  oldest unacknowledged commit's age, polled. Requests, PUTs and bytes per 1,000 turns, with a
  per-round breakdown (log objects, manifests, snapshots, fences). Manifest folds happen every
  ``fold_interval`` seconds (or ``fold_segments`` segments) of a file, so a short window misses
  them: the long-run figure adds them, and compactions, at the measured rates.
- **Durable asks** under the same load: a ``durable = True`` actor's ask latency beside a
  plain actor's, alternating (the difference is the wait for the replica).
- **Hops.** ``--hop-chains`` chains of three actors (A sends to B with ``self.send``, B to C)
  in a replicated runtime, alternating with the same chains in a runtime without a replica
  (the raw figure): with a replica a send leaves only once the commit that wrote it is
  acknowledged, so each hop waits for about one round.
- **Idle.** ``--idle-actors`` actors created and hibernated, then the runtime left open for
  ``--idle-seconds``: the requests made meanwhile (target: none).
- **Restore** of an actor whose ``data.db`` holds ``--restore-mb`` MB of text rows:
  ``restore_actor_files`` beside the floor (one GET of the snapshot object, zlib decompress,
  write, fsync), and a fresh machine's ``open_runtime`` + first ask (directory.db restored,
  then the actor restored on wake).
- **Faults** (``--phases faults``, not by default: about two minutes). The load's paced sends
  (every ``--relay-every``-th relayed by its receiver to another actor with ``self.send``) and
  ``--ask-rate`` asks to actors that hibernate between two asks, every message numbered, through
  a :class:`~runtime.faultproxy.FaultProxy` in front of the S3 server: windows of health, mixed
  faults (errors before and after forwarding, resets, bodies cut, throttling answers, delays),
  an outage (every connection refused) and 503 throttling of everything. Reported: the faults
  injected by kind, whether the runtime died, actors fenced (statistics and reports), the
  replication's failed rounds and the store calls that raised, the time to catch up after the
  outage and the throttling (lag back under the target), asks and sends per second in each
  window, lag and PUTs; then, after ``rt.replicated()``, every acknowledged message's rows
  exactly once in the runtime and in a fresh directory restored from the replica.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
import traceback
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import apsw
import attrs

from ..faultproxy import Fault, FaultProxy
from ..files.layout import DATA_FILE, actor_id
from ..records import ReplicationStatistics
from ..replica.store import Data, ReplicaStatistics, ReplicaStore
from . import s3server
from .s3server import S3Server
from .turns import percentile

#: Targets (a figure must be at most its target).
TARGET_LAG_P99 = 1.0  # seconds
TARGET_PUTS_PER_1000 = 7.0  # at 200 turns/s
TARGET_IDLE_REQUESTS = 0
TARGET_RESTORE_100MB = 1.0  # seconds

COUNTER = "torpor.bench.ReplicatedCounter"
DURABLE = "torpor.bench.DurableCounter"
BULK = "torpor.bench.Bulk"
LEDGER = "torpor.bench.Ledger"

#: Longest wait for the replica to catch up (all files acknowledged) before giving up.
SETTLE_TIMEOUT = 300.0

#: Bytes of rows a Bulk actor inserts per turn.
FILL_CHUNK = 4 << 20


# -- counting requests --------------------------------------------------------------------------


def kind_of(key: str) -> str:
    """The kind of object a replica key names (see ``replica/log.py`` and ``replicator.py``)."""
    parts = key.split("/")
    if parts[0] == "runtimes":
        if len(parts) >= 2 and parts[-2] == "log":
            return "log"
        if parts[-1] == "fences":
            return "fences"
        return "other"
    if parts[-1] == "manifest":
        return "manifest"
    if len(parts) >= 2 and parts[-2] == "snapshots":
        return "snapshot"
    if len(parts) >= 2 and parts[-2] == "segments":
        return "segment"
    return "other"


class CountingStore(ReplicaStore):
    """A replica store that forwards to ``inner`` and counts every request by operation and
    kind of object: count, bytes (sent for PUT, received for GET) and seconds."""

    def __init__(self, inner: ReplicaStore) -> None:
        super().__init__()
        self.inner = inner
        self._lock = threading.Lock()
        #: (op, kind) -> [requests, bytes, seconds]
        self._table: dict[tuple[str, str], list[float]] = collections.defaultdict(
            lambda: [0, 0, 0.0]
        )
        #: "<op> <exception type>" -> calls that raised it (the error, as the runtime saw it)
        self.failures: collections.Counter[str] = collections.Counter()

    def __repr__(self) -> str:
        return f"CountingStore({self.inner!r})"

    def _note(self, op: str, key: str, size: int, seconds: float) -> None:
        with self._lock:
            row = self._table[(op, kind_of(key))]
            row[0] += 1
            row[1] += size
            row[2] += seconds
        self._count({"get": "gets", "put": "puts", "delete": "deletes", "list": "lists"}[op])

    def _failed(self, op: str, exc: Exception) -> None:
        with self._lock:
            self.failures[f"{op.upper()} {type(exc).__name__}"] += 1

    def get(self, key: str) -> tuple[bytes, str] | None:
        start = time.perf_counter()
        try:
            got = self.inner.get(key)
        except Exception as exc:
            self._failed("get", exc)
            raise
        finally:
            seconds = time.perf_counter() - start
        self._note("get", key, len(got[0]) if got else 0, seconds)
        return got

    def put(
        self, key: str, data: Data, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        start = time.perf_counter()
        try:
            return self.inner.put(key, data, if_match=if_match, if_none_match=if_none_match)
        except Exception as exc:
            self._failed("put", exc)
            raise
        finally:
            self._note("put", key, len(memoryview(data)), time.perf_counter() - start)

    def delete(self, key: str) -> None:
        start = time.perf_counter()
        try:
            self.inner.delete(key)
        except Exception as exc:
            self._failed("delete", exc)
            raise
        finally:
            self._note("delete", key, 0, time.perf_counter() - start)

    def list(self, prefix: str = "") -> Iterator[str]:
        self._note("list", prefix or "-", 0, 0.0)
        return self.inner.list(prefix)

    def statistics(self) -> ReplicaStatistics:
        return super().statistics()

    def close(self) -> None:
        self.inner.close()

    def snapshot(self) -> dict[tuple[str, str], tuple[int, int, float]]:
        """The counts so far (subtract two snapshots for a window)."""
        with self._lock:
            return {k: (int(v[0]), int(v[1]), float(v[2])) for k, v in self._table.items()}


def diff(
    after: dict[tuple[str, str], tuple[int, int, float]],
    before: dict[tuple[str, str], tuple[int, int, float]],
) -> dict[tuple[str, str], tuple[int, int, float]]:
    out = {}
    for key, (n, size, seconds) in after.items():
        n0, size0, seconds0 = before.get(key, (0, 0, 0.0))
        if n - n0:
            out[key] = (n - n0, size - size0, seconds - seconds0)
    return out


def total(counts: dict[tuple[str, str], tuple[int, int, float]], op: str | None = None) -> int:
    return sum(n for (o, _), (n, _, _) in counts.items() if op is None or o == op)


def by_kind(counts: dict[tuple[str, str], tuple[int, int, float]]) -> dict[str, Any]:
    """``{op: {kind: {"requests", "bytes", "mean_ms"}}}`` for JSON and the breakdown."""
    out: dict[str, Any] = {}
    for (op, kind), (n, size, seconds) in sorted(counts.items()):
        out.setdefault(op, {})[kind] = {
            "requests": n,
            "bytes": size,
            "mean_ms": seconds / n * 1e3 if n else 0.0,
        }
    return out


# -- the S3 server ------------------------------------------------------------------------------

# (runtime/bench/s3server.py starts and stops it, as for the tests.)


@contextlib.contextmanager
def _identity(own: S3Server | None) -> Iterator[None]:
    """While an :class:`S3Store` is made: the identity of the server we started (``own``) in
    the environment, where boto3's standard chain finds it (the store reads its credentials
    when it makes its client); with no ``own``, the chain as it is."""
    if own is None:
        yield
        return
    names = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")
    saved = {name: os.environ.get(name) for name in names}
    os.environ["AWS_ACCESS_KEY_ID"] = own.access_key
    os.environ["AWS_SECRET_ACCESS_KEY"] = own.secret_key
    os.environ.pop("AWS_SESSION_TOKEN", None)
    os.environ.pop("AWS_PROFILE", None)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class Stores:
    """Makes one fresh counting store per phase (its own prefix or directory).

    S3 stores are :class:`S3Store` as the runtime makes them (their own client, timeouts and
    retries), credentials from boto3's chain, or the identity of the server started here."""

    def __init__(self, args: argparse.Namespace, tmp: Path, server: S3Server | None) -> None:
        self.kind = args.store
        self.tmp = tmp
        self.made: list[tuple[CountingStore, bool]] = []  # (store, reaches the bench's endpoint)
        self.prefix = args.prefix or f"torpor-bench/{uuid.uuid4().hex[:12]}"
        self.own: S3Server | None = None
        self.region: str | None = None
        if self.kind == "directory":
            self.where = f"directory {tmp / 'replica'}"
            self.bucket = ""
            return
        if server is not None:
            self.endpoint_url, self.bucket, self.own = server.endpoint_url, server.bucket, server
            self.path_style = True
            self.region = server.region
            self.where = f"SeaweedFS started here at {server.endpoint_url}"
        else:
            self.endpoint_url, self.bucket, self.own = args.endpoint_url, args.bucket, None
            self.path_style = args.path_style
            self.where = f"{args.endpoint_url or 'AWS S3'} bucket {args.bucket}"

    def make(self, phase: str, *, endpoint_url: str | None = None) -> CountingStore:
        """A store under the phase's prefix (the same prefix for the same phase); S3 requests
        go to ``endpoint_url`` if given (a fault proxy), else to the bench's endpoint."""
        from ..replica.directory_store import DirectoryStore
        from ..replica.s3_store import S3Store

        inner: ReplicaStore
        if self.kind == "directory":
            inner = DirectoryStore(self.tmp / "replica" / phase)
        else:
            with _identity(self.own):
                inner = S3Store(
                    self.bucket,
                    prefix=f"{self.prefix}/{phase}",
                    endpoint_url=endpoint_url or self.endpoint_url,
                    region=self.region,
                    path_style=self.path_style,
                )
        store = CountingStore(inner)
        self.made.append((store, endpoint_url is None))
        return store

    def clean(self) -> None:
        """Remove the objects the bench wrote (not counted: the inner stores list and delete),
        through the stores that reach the bench's endpoint (a proxy may be gone by now)."""
        for store, direct in self.made:
            if self.kind == "s3" and direct:
                with contextlib.suppress(Exception):
                    for key in list(store.inner.list()):
                        store.inner.delete(key)
            store.close()


# -- actor types --------------------------------------------------------------------------------


def _types() -> tuple[Any, Any, Any]:
    from ..actor import Actor

    class Counter(Actor, name=COUNTER):
        async def incr(self, note: str = "") -> int:
            n: int = self.kv.get("n", 0) + 1
            self.kv["n"] = n
            if note:
                self.kv["note"] = note
            return n

    class Durable(Actor, name=DURABLE):
        durable = True

        async def incr(self, note: str = "") -> int:
            n: int = self.kv.get("n", 0) + 1
            self.kv["n"] = n
            if note:
                self.kv["note"] = note
            return n

    class Bulk(Actor, name=BULK):
        migrations = (
            "CREATE TABLE notes(id INTEGER PRIMARY KEY, author TEXT NOT NULL, "
            "tag TEXT NOT NULL, body TEXT NOT NULL)",
        )

        async def fill(self, seed: int, nbytes: int) -> list[int]:
            """Insert about ``nbytes`` of text rows; return [rows, database bytes]."""
            self.sql.executemany(
                "INSERT INTO notes(author, tag, body) VALUES (?, ?, ?)", _rows(seed, nbytes)
            )
            rows = self.sql.query_value("SELECT count(*) FROM notes")
            pages = self.sql.query_value("PRAGMA page_count")
            size = self.sql.query_value("PRAGMA page_size")
            return [int(rows), int(pages) * int(size)]

        async def count(self) -> int:
            return int(self.sql.query_value("SELECT count(*) FROM notes"))

    return Counter, Durable, Bulk


_CORPUS: list[str] = []


def _corpus() -> str:
    """About 1.5 MB of words drawn from a 5,000-word made-up vocabulary (compresses roughly
    like prose); rows are random slices of it."""
    if not _CORPUS:
        rng = random.Random(7)
        letters = "abcdefghijklmnopqrstuvwxyz"
        vocab = ["".join(rng.choices(letters, k=rng.randint(2, 11))) for _ in range(5000)]
        weights = [1 / (i + 1) for i in range(len(vocab))]  # Zipf-like, as in text
        _CORPUS.append(" ".join(rng.choices(vocab, weights, k=250_000)))
    return _CORPUS[0]


def _rows(seed: int, nbytes: int) -> list[tuple[str, str, str]]:
    corpus = _corpus()
    rng = random.Random(seed)
    out = []
    made = 0
    while made < nbytes:
        length = rng.randint(80, 600)
        start = rng.randrange(0, len(corpus) - length)
        body = corpus[start : start + length]
        author = f"user{rng.randrange(100_000)}"
        tag = rng.randbytes(8).hex()
        out.append((author, tag, body))
        made += length + len(author) + len(tag) + 12
    return out


# -- results ------------------------------------------------------------------------------------


@attrs.frozen
class Result:
    """One figure: torpor's value, the raw floor beside it (same unit), and a target."""

    name: str
    value: float
    unit: str
    raw: float | None = None
    target: float | None = None  # the value must be at most this

    @property
    def status(self) -> str:
        if self.target is None:
            return "-"
        return "PASS" if self.value <= self.target else "MISS"


def _num(value: float) -> str:
    """Three significant digits or so, without exponents."""
    size = abs(value)
    if size >= 100 or value == int(value):
        return f"{value:.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.0f} ms"


def format_table(report: dict[str, Any]) -> str:
    p = report["parameters"]
    lines = [
        f"torpor bench replication; store: {report['store']}",
        f"load: {p['actors']} actors, {p['rate']:g} msg/s for {p['seconds']:g} s; idle: "
        f"{p['idle_actors']} actors for {p['idle_seconds']:g} s; restore: "
        f"{', '.join(f'{m:g}' for m in p['restore_mb'])} MB x{p['restore_repeats']}",
    ]
    if "faults" in p:
        f = p["faults"]
        relayed = f"every {f['relay_every']}th relayed" if f["relay_every"] else "none relayed"
        lines.append(
            f"faults: the load's {p['actors']} actors and {p['rate']:g} msg/s ({relayed}), "
            f"{f['ask_rate']:g} asks/s over {f['ask_actors']} "
            f"more actors (each hibernated between asks), through a fault proxy (seed "
            f"{f['seed']}): healthy "
            f"{f['healthy_seconds']:g} s, mixed {f['fault_seconds']:g} s, outage "
            f"{f['outage_seconds']:g} s, throttling {f['throttle_seconds']:g} s"
        )
    if p["options"]:
        lines.append(f"Replication options overridden: {', '.join(p['options'])}")
    lines += [
        "raw = the floor measured beside it in the same run; target: at most this",
        "",
        f"{'measure':<50} {'torpor':>14} {'raw/floor':>14} {'target':>9} {'':>4}",
    ]
    for r in report["figures"]:
        value = f"{_num(r['value']):>8} {r['unit']:<5}"
        raw = f"{_num(r['raw']):>8} {r['unit']:<5}" if r["raw"] is not None else f"{'-':>8}{'':6}"
        target = f"<= {r['target']:g}" if r["target"] is not None else "-"
        lines.append(f"{r['name']:<50} {value} {raw} {target:>9} {r['status']:>4}")
    load = report.get("load")
    if load:
        rounds = max(1, load["rounds"])
        lines += [
            "",
            f"load window: {load['turns']} turns ({load['turns_per_second']:.0f}/s), "
            f"{load['rounds']} rounds ({load['rounds'] / load['seconds']:.2f}/s), "
            f"{load['segments']} segments ({load['segments_per_round']:.1f}/round), "
            f"{load['lag_samples']} commits acknowledged",
            f"  rounds took {_ms(load['round_seconds_p50'])} p50, "
            f"{_ms(load['round_seconds_p99'])} p99, {_ms(load['round_seconds_max'])} max; "
            f"started every {_ms(load['round_period_p50'])} p50, "
            f"{_ms(load['round_period_max'])} max",
            f"  worst second: {load['worst_second_puts']} PUTs; seconds with a commit older "
            f"than {TARGET_LAG_P99:g} s unacknowledged: {load['seconds_over_target']}",
            "  requests by kind:",
        ]
        for op, kinds in load["requests"].items():
            for kind, row in kinds.items():
                lines.append(
                    f"    {op.upper():<6} {kind:<9} {row['requests']:>7} "
                    f"{row['requests'] / rounds:7.2f}/round "
                    f"{row['requests'] / max(1, load['turns']) * 1000:7.2f}/1000 turns "
                    f"{row['bytes'] / 1024:>9.0f} KiB  mean {row['mean_ms']:6.1f} ms"
                )
        lines.append(
            f"  durable asks: {load['durable_phase_puts']} PUTs for "
            f"{load['durable_phase_turns']} turns while they ran"
        )
    idle = report.get("idle")
    if idle:
        per = ", ".join(
            f"{op.upper()} {kind} {row['requests'] / idle['actors']:.2f}"
            for op, kinds in idle["create_requests"].items()
            for kind, row in kinds.items()
        )
        lines += [
            "",
            f"idle: {idle['actors']} actors created and hibernated in "
            f"{idle['create_seconds']:.1f} s; requests per actor: {per}",
        ]
    for r in report.get("restore", ()):
        floor = r["floor"][0]
        lines.append(
            f"restore {r['mb']:g} MB: {r['rows']} rows, data.db {r['db_bytes'] / 1e6:.1f} MB, "
            f"snapshot {r['snapshot_stored_bytes'] / 1e6:.1f} MB stored; "
            f"{r['restore_requests'][0]} requests; floor: GET {floor['get']:.3f} s, "
            f"unzip {floor['decompress']:.3f} s, write {floor['write']:.3f} s, "
            f"fsync {floor['fsync']:.3f} s"
        )
    if report.get("faults"):
        lines += _fault_lines(report["faults"], p.get("faults", {}))
    return "\n".join(lines)


def _fault_lines(f: dict[str, Any], params: dict[str, Any]) -> list[str]:  # noqa: C901 (one optional line per fault counter)
    """The fault phase's details, as far as it got."""
    injected = ", ".join(f"{kind} {n}" for kind, n in f.get("injected", {}).items() if n)
    lines = [
        "",
        f"faults: {f.get('injected_total', 0)} injected ({injected or 'none'}) in "
        f"{f.get('proxy_requests', 0)} requests to the proxy, "
        f"{f.get('proxy_forwarded', 0)} forwarded",
        f"  mixed window's rules: {', '.join(params.get('mixed', ()))}",
    ]
    if f["died"]:
        lines.append(f"  THE RUNTIME DIED: {f['error']}")
    if f.get("bench_error"):
        lines.append(f"  the phase stopped early: {f['bench_error']}")
    if "reports" not in f:
        return lines
    rounds = "a round has succeeded since" if f["last_error"] is None else "still failing"
    alive = "CLOSED by itself" if f["closed_while_running"] else "open all along"
    lines.append(
        f"  the runtime: {alive}; fenced {f['fenced']}, stopped {f['stopped']}, "
        f"failed {f['failed']}; {len(f['reports'])} reports"
    )
    for text in f["reports"][:3]:
        lines.append(f"    report: {_short(text, 300)}")
    lines.append(
        f"  replication: {f['replication_errors']} failed rounds ({rounds}); store calls that "
        "raised: "
        + (", ".join(f"{k} {n}" for k, n in sorted(f["store_failures"].items())) or "none")
        + (
            f"; {f['http_attempts']} HTTP attempts for {f['calls']} calls in the windows"
            if "calls" in f
            else ""
        )
    )
    for text, polls in sorted(f["watched_errors"].items(), key=lambda kv: -kv[1])[:5]:
        lines.append(f"    last_error for {polls * FAULT_POLL:.1f} s: {text}")
    for after, c in f["catch_up"].items():
        good, caught = c["first_good_round"], c["lag_under_target"]
        lines.append(
            f"  after the {after}: first good round in "
            + (f"{good:.2f} s" if good is not None else "(none yet)")
            + f", lag < {TARGET_LAG_P99:g} s in "
            + (f"{caught:.2f} s" if caught is not None else f"more than {CATCH_UP_LIMIT:g} s")
        )
    lines.append(
        f"  {'window':<11} {'seconds':>7} {'faults':>6} {'asks/s':>7} {'ask p50':>8} "
        f"{'ask p99':>8} {'sends/s':>8} {'lag max':>8}"
    )
    for row in f["windows"]:
        lines.append(
            f"  {row['label']:<11} {row['seconds']:7.1f} {row['faults']:>6} "
            f"{row['asks_per_second']:7.1f} {_ms(row['ask_p50']):>8} {_ms(row['ask_p99']):>8} "
            f"{row['sends_per_second']:8.0f} {_ms(row['lag_max']):>8}"
        )
    if "turns" in f:
        lines.append(
            f"  lag, every commit: p50 {_ms(f['lag_p50'])}, p99 {_ms(f['lag_p99'])}, "
            f"max {_ms(f['lag_max'])}; in the mixed window p50 {_ms(f['mixed_lag_p50'])}, "
            f"p99 {_ms(f['mixed_lag_p99'])}"
        )
        lines.append(f"  {f['turns']} turns ({f['turns_per_second']:.0f}/s), {f['puts']} PUTs")
    stuck = ", ".join(f"{k} {n}" for k, n in {**f["stuck"], **f["call_failures"]}.items())
    lines.append(
        f"  {f['sends_acknowledged']} sends and {f['asks_acknowledged']} asks acknowledged of "
        f"{f['messages']}; stuck or failed calls: {stuck or 'none'}"
    )
    if "drain_seconds" in f:
        lines.append(
            f"  drained in {f['drain_seconds']:.1f} s (rt.replicated() returned: "
            f"{'yes' if f['replicated'] else 'NO'})"
        )
    for key, why in list(f["unreadable"].items())[:3]:
        lines.append(f"  actor {key} unreadable: {why}")
    for held in f.get("held", [])[:5]:
        lines.append(f"  outbox not delivered after the drain: {held}")
    lines.append(f"  exactly once, {f['acknowledged_turns']} acknowledged turns:")
    for name, check in (("in the runtime", f.get("source")), ("restored", f.get("restored"))):
        if check is None:
            why = f.get("restore_error") or "the runtime did not close with everything replicated"
            lines.append(f"    {name}: NOT CHECKED ({why})")
            continue
        lines.append(
            f"    {name}: {check['rows']} rows, missing {check['missing']}, repeated "
            f"{check['repeated']}, unexpected {check['unexpected']}, unchecked "
            f"{check['unchecked']}; unacknowledged but applied {check['unacknowledged_applied']}"
            + (f"; e.g. {'; '.join(check['examples'])}" if check["examples"] else "")
        )
        for key, m in list(check.get("missing_by_actor", {}).items())[:3]:
            lines.append(
                f"      {key} misses {m['missing']} rows, n {m['n'][0]}-{m['n'][1]}, "
                f"acknowledged at {m['acked_at'][0]:.1f}-{m['acked_at'][1]:.1f} s"
            )
    if f.get("restored") is not None:
        lines.append(
            f"    a fresh directory restored in {f['restore_seconds']:.1f} s has the runtime's "
            f"rows: {'yes' if f['restored_equals_source'] else 'NO'}"
        )
    return lines


# -- phase 1: steady load and durable asks ------------------------------------------------------


class _Recorder(collections.deque):  # type: ignore[type-arg]
    """The engine's lag samples (its last 1,000, for ``statistics()``), and every sample
    copied into ``into``: the window's whole distribution, sorted once at the end."""

    def __init__(self, into: list[float]) -> None:
        super().__init__(maxlen=1000)
        self.into = into

    def append(self, value: float) -> None:
        self.into.append(value)
        super().append(value)


class _RoundTimer:
    """Times the replication engine's rounds (start to end, and start to next start) by
    wrapping its ``round`` method on the instance until :meth:`stop`."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.durations: list[float] = []
        self.periods: list[float] = []
        self.last_start: float | None = None
        inner = engine.round

        async def timed() -> Any:
            start = time.perf_counter()
            if self.last_start is not None:
                self.periods.append(start - self.last_start)
            self.last_start = start
            try:
                return await inner()
            finally:
                self.durations.append(time.perf_counter() - start)

        engine.round = timed

    def stop(self) -> None:
        with contextlib.suppress(AttributeError):
            del self.engine.round  # the class's method again


class _Load:
    """Paced sends, round robin over ``refs``, at ``rate`` per second until stopped."""

    def __init__(self, refs: list[Any], method: Any, rate: float, note: str) -> None:
        self.refs, self.method, self.rate, self.note = refs, method, rate, note
        self.sent = 0
        self.behind_max = 0.0
        self.scope = anyio.CancelScope()

    async def run(self) -> None:
        with self.scope:
            start = time.perf_counter()
            i = 0
            while True:
                due = start + i / self.rate
                now = time.perf_counter()
                if due > now:
                    await anyio.sleep(due - now)
                else:
                    self.behind_max = max(self.behind_max, now - due)
                await self.refs[i % len(self.refs)].send(self.method, self.note)
                self.sent += 1
                i += 1


async def _settle(rt: Any, limit: float = SETTLE_TIMEOUT) -> float:
    """Wait until every commit so far is acknowledged by the replica (``rt.replicated()``,
    bounded); return the seconds."""
    start = time.perf_counter()
    with anyio.move_on_after(limit):
        await rt.replicated()
        return time.perf_counter() - start
    raise RuntimeError(
        f"bench replication: the replica did not catch up in {limit:.0f} s ({_rep(rt)})"
    )


def _rep(rt: Any) -> ReplicationStatistics:
    return _of(rt.statistics())


def _of(stats: Any) -> ReplicationStatistics:
    rep = stats.replication
    assert isinstance(rep, ReplicationStatistics)
    return rep


async def _load_phase(
    root: Path, store: CountingStore, args: argparse.Namespace, progress: Callable[[str], None]
) -> dict[str, Any]:
    from ..runtime import open_runtime

    counter, durable, _ = _types()
    note = "x" * args.note_bytes
    out: dict[str, Any] = {}
    async with open_runtime(
        root,
        types=[counter, durable],
        replica=store,
        replication=args.replication,
        max_awake=args.actors + 10,
        idle_timeout=3600,
    ) as rt:
        engine = rt._engine.replication
        assert engine is not None
        refs = [rt.ref(counter, f"a{i}") for i in range(args.actors)]
        start = time.perf_counter()
        for ref in refs:
            await ref.ask(counter.incr)  # wake: takeover, snapshot of both files
        await _settle(rt)
        out["wake_all_seconds"] = time.perf_counter() - start
        out["wake_all_requests"] = store.statistics()

        async with anyio.create_task_group() as tg:
            load = _Load(refs, counter.incr, args.rate, note)
            tg.start_soon(load.run)

            # Warm-up: until every actor file's manifest points at this session's log (its
            # first segment after the wake-up snapshot folded), and at least --warmup seconds.
            progress(f"  warm-up ({args.warmup:g} s at least)")
            warm_start = time.perf_counter()
            for _ in range(int(120 / 0.05)):
                await anyio.sleep(0.05)
                files = [t for t in engine.tracking.files.values() if t.act is not None]
                if time.perf_counter() - warm_start >= args.warmup and all(
                    t.tail_set for t in files
                ):
                    break
            out["warmup_seconds"] = time.perf_counter() - warm_start

            # The measured window: every commit's lag, the requests, the turns.
            progress(f"  measuring {args.seconds:g} s at {args.rate:g} msg/s")
            samples: list[float] = []
            engine.tracking.lags = _Recorder(samples)  # every commit's lag in the window
            timer = _RoundTimer(engine.rounds)
            counts0, stats0, sent0 = store.snapshot(), rt.statistics(), load.sent
            t0 = time.perf_counter()
            staleness: list[float] = []
            timeline: list[dict[str, Any]] = []  # per second: PUTs by kind, worst staleness
            second_counts, second_worst, second_at = counts0, 0.0, t0
            while time.perf_counter() - t0 < args.seconds:
                await anyio.sleep(0.05)
                lag = _rep(rt).lag
                staleness.append(lag)
                second_worst = max(second_worst, lag)
                if time.perf_counter() - second_at >= 1.0:
                    now_counts = store.snapshot()
                    puts = {
                        kind: n
                        for (op, kind), (n, _, _) in diff(now_counts, second_counts).items()
                        if op == "put"
                    }
                    timeline.append(
                        {"t": round(second_at - t0, 2), "puts": puts, "staleness": second_worst}
                    )
                    second_counts, second_worst, second_at = now_counts, 0.0, time.perf_counter()
            counts1, stats1, sent1 = store.snapshot(), rt.statistics(), load.sent
            window = time.perf_counter() - t0
            lags = sorted(samples)
            samples = []
            engine.tracking.lags.into = samples
            timer.stop()

            # Durable asks, under the same load.
            pairs = args.durable_asks
            progress(f"  {pairs} durable asks beside {pairs} plain asks, under the load")
            dref, pref = rt.ref(durable, "probe"), rt.ref(counter, "probe")
            await dref.ask(durable.incr)
            await pref.ask(counter.incr)
            counts2, stats2 = store.snapshot(), rt.statistics()
            d_lat: list[float] = []
            p_lat: list[float] = []
            for i in range(pairs):
                first, second = (dref, d_lat), (pref, p_lat)
                order = (first, second) if i % 2 == 0 else (second, first)
                for ref, into in order:
                    method = durable.incr if ref is dref else counter.incr
                    begin = time.perf_counter()
                    await ref.ask(method, note)
                    into.append(time.perf_counter() - begin)
                await anyio.sleep(0.02)
            counts3, stats3 = store.snapshot(), rt.statistics()
            load.scope.cancel()
        out["load_behind_max"] = load.behind_max
        out["drain_seconds"] = await _settle(rt)
        end_stats = _rep(rt)

    rep0, rep1 = _of(stats0), _of(stats1)
    window_counts = diff(counts1, counts0)
    turns = stats1.messages_applied - stats0.messages_applied
    rounds = rep1.rounds - rep0.rounds
    segments = rep1.segments - rep0.segments
    durable_counts = diff(counts3, counts2)
    durable_turns = stats3.messages_applied - stats2.messages_applied
    out.update(
        seconds=window,
        sent=sent1 - sent0,
        turns=turns,
        turns_per_second=turns / window,
        runtime_turns=stats1.turns - stats0.turns,
        rounds=rounds,
        segments=segments,
        segments_per_round=segments / max(1, rounds),
        lag_samples=len(lags),
        lag_p50=percentile(lags, 50) if lags else None,
        lag_p99=percentile(lags, 99) if lags else None,
        lag_max=lags[-1] if lags else None,
        stats_lag_p50=rep1.lag_p50,
        stats_lag_p99=rep1.lag_p99,
        staleness_max=max(staleness, default=0.0),
        timeline=timeline,
        round_seconds_p50=percentile(timer.durations, 50) if timer.durations else None,
        round_seconds_p99=percentile(timer.durations, 99) if timer.durations else None,
        round_seconds_max=max(timer.durations, default=None),
        round_period_p50=percentile(timer.periods, 50) if timer.periods else None,
        round_period_max=max(timer.periods, default=None),
        worst_second_puts=max((sum(t["puts"].values()) for t in timeline), default=0),
        seconds_over_target=sum(1 for t in timeline if t["staleness"] > TARGET_LAG_P99),
        requests=by_kind(window_counts),
        requests_total=total(window_counts),
        puts=total(window_counts, "put"),
        put_bytes=sum(b for (o, _), (_, b, _) in window_counts.items() if o == "put"),
        engine_puts=rep1.puts - rep0.puts,
        engine_bytes=rep1.bytes_uploaded - rep0.bytes_uploaded,
        errors=end_stats.errors,
        last_error=end_stats.last_error,
        durable_ask_p50=percentile(d_lat, 50) if d_lat else None,
        durable_ask_p99=percentile(d_lat, 99) if d_lat else None,
        plain_ask_p50=percentile(p_lat, 50) if p_lat else None,
        plain_ask_p99=percentile(p_lat, 99) if p_lat else None,
        durable_phase_puts=total(durable_counts, "put"),
        durable_phase_turns=durable_turns,
        durable_phase_requests=by_kind(durable_counts),
    )
    wake = out["wake_all_requests"]
    out["wake_all_requests"] = {
        "gets": wake.gets,
        "puts": wake.puts,
        "deletes": wake.deletes,
        "lists": wake.lists,
    }
    return out


# -- phase 2: idle ------------------------------------------------------------------------------


async def _idle_phase(
    root: Path, store: CountingStore, args: argparse.Namespace, progress: Callable[[str], None]
) -> dict[str, Any]:
    from ..runtime import open_runtime

    counter, _, _ = _types()
    n = args.idle_actors
    async with open_runtime(
        root, types=[counter], replica=store, replication=args.replication, idle_timeout=0
    ) as rt:
        start = time.perf_counter()
        for i in range(n):
            await rt.ref(counter, f"i{i}").send(counter.incr)
        for _ in range(int(SETTLE_TIMEOUT / 0.01)):
            s = rt.statistics()
            if s.messages_applied >= n and s.awake == 0 and _rep(rt).files_behind == 0:
                break
            await anyio.sleep(0.01)
        else:
            raise RuntimeError(f"bench replication: {n} actors did not hibernate ({s})")
        created = time.perf_counter() - start
        created_counts = store.snapshot()
        progress(f"  {n} actors hibernated in {created:.1f} s; idle for {args.idle_seconds:g} s")
        before = store.snapshot()
        t0 = time.perf_counter()
        await anyio.sleep(args.idle_seconds)
        idle = diff(store.snapshot(), before)
        seconds = time.perf_counter() - t0
        stats = rt.statistics()
    return {
        "actors": n,
        "hibernated": stats.hibernated,
        "create_seconds": created,
        "create_requests": by_kind(created_counts),
        "create_requests_per_actor": total(created_counts) / n,
        "create_puts_per_actor": total(created_counts, "put") / n,
        "seconds": seconds,
        "requests": total(idle),
        "requests_by_kind": by_kind(idle),
    }


# -- phase: actor-to-actor hops -----------------------------------------------------------------

HOP = "torpor.bench.Hop"

#: Per chain: when each actor's turn began (perf_counter), and the event its last actor sets.
_HOP_TIMES: dict[tuple[str, int], list[float]] = {}
_HOP_DONE: dict[tuple[str, int], anyio.Event] = {}


def _hop_type() -> Any:
    from ..actor import Actor

    class Hop(Actor, name=HOP):
        async def relay(self, run: str, chain: int, left: int) -> None:
            _HOP_TIMES.setdefault((run, chain), []).append(time.perf_counter())
            self.kv["seen"] = int(self.kv.get("seen", 0)) + 1  # a commit, as a real turn makes
            if left:
                nxt = self.ref_to(Hop, f"{run}-{chain % 4}-{left - 1}")
                self.send(nxt, Hop.relay, run, chain, left - 1)
            else:
                _HOP_DONE[(run, chain)].set()

    return Hop


async def _hop_phase(
    root: Path, store: CountingStore, args: argparse.Namespace, progress: Callable[[str], None]
) -> dict[str, Any]:
    """Chains of three actors (A sends to B with ``self.send``, B to C), alternating between a
    replicated runtime and one without a replica, both open in this process: a hop's latency is
    (C's turn began - A's turn began) / 2. With a replica, a send leaves only once the commit
    that wrote it is acknowledged (the output gate), so a hop costs about one round."""
    from ..runtime import open_runtime

    hop = _hop_type()
    hops_per_chain = 2
    samples: dict[str, list[float]] = {"replicated": [], "local": []}
    async with (
        open_runtime(
            root / "replicated", types=[hop], replica=store, replication=args.replication
        ) as replicated,
        open_runtime(root / "local", types=[hop]) as local,
    ):
        for chain in range(args.hop_chains + 4):  # the first four wake every actor: not counted
            for run, rt in (("replicated", replicated), ("local", local)):
                key = (run, chain)
                _HOP_DONE[key] = anyio.Event()
                first = rt.ref(hop, f"{run}-{chain % 4}-{hops_per_chain}")
                await first.send(hop.relay, run, chain, hops_per_chain)
                with anyio.fail_after(SETTLE_TIMEOUT):
                    await _HOP_DONE[key].wait()
                times = _HOP_TIMES.pop(key)
                del _HOP_DONE[key]
                if chain >= 4:
                    samples[run].append((times[-1] - times[0]) / hops_per_chain)
        progress(f"  {args.hop_chains} chains of {hops_per_chain} hops in each runtime")
    out: dict[str, Any] = {"chains": args.hop_chains, "hops_per_chain": hops_per_chain}
    for run, values in samples.items():
        values.sort()
        out[f"{run}_p50"] = percentile(values, 50)
        out[f"{run}_p99"] = percentile(values, 99)
    return out


# -- phase 3: restore ---------------------------------------------------------------------------


async def _fill(root: Path, store: CountingStore, nbytes: int) -> tuple[str, int, int]:
    """An actor whose data.db holds about ``nbytes``, hibernated into the replica by closing
    the runtime (with time enough for the snapshot upload). Returns (aid, rows, bytes)."""
    from ..replica.shipper import Replication
    from ..runtime import open_runtime

    _, _, bulk = _types()
    rows = size = 0
    async with open_runtime(root, types=[bulk], replica=store, replication=Replication()) as rt:
        ref = rt.ref(bulk, "big")
        seed = 0
        while size < nbytes:
            rows, size = await ref.ask(bulk.fill, seed, min(FILL_CHUNK, nbytes - size + 65536))
            seed += 1
        await _settle(rt)
    return actor_id(BULK, "big"), rows, size


def _floor(store: ReplicaStore, snapshot_key: str, dest: Path) -> dict[str, float]:
    """The raw floor of a restore: GET the snapshot, decompress, write, fsync; seconds each."""
    t0 = time.perf_counter()
    got = store.get(snapshot_key)
    assert got is not None
    t1 = time.perf_counter()
    image = zlib.decompress(got[0])
    t2 = time.perf_counter()
    with open(dest, "wb") as f:
        f.write(image)
        f.flush()
        t3 = time.perf_counter()
        os.fsync(f.fileno())
    t4 = time.perf_counter()
    return {
        "get": t1 - t0,
        "decompress": t2 - t1,
        "write": t3 - t2,
        "fsync": t4 - t3,
        "total": t4 - t0,
    }


def _restore_once(store: CountingStore, aid: str, folder: Path) -> tuple[float, int]:
    from ..replica.shipper import restore_actor_files

    before = store.snapshot()
    start = time.perf_counter()
    restore_actor_files(store, aid, folder)
    seconds = time.perf_counter() - start
    return seconds, total(diff(store.snapshot(), before))


async def _fresh_machine(root: Path, store: CountingStore) -> tuple[float, int]:
    """``open_runtime`` on an empty directory (restores directory.db), then a first ask to the
    big actor (restored on wake). Seconds to the answer, and rows seen."""
    from ..replica.shipper import Replication
    from ..runtime import open_runtime

    _, _, bulk = _types()
    start = time.perf_counter()
    async with open_runtime(root, types=[bulk], replica=store, replication=Replication()) as rt:
        rows = await rt.ref(bulk, "big").ask(bulk.count)
        seconds = time.perf_counter() - start
    return seconds, int(rows)


def _restore_phase(
    tmp: Path,
    stores: Stores,
    mb: float,
    args: argparse.Namespace,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    from ..replica.replicator import Manifest, manifest_key
    from ..replica.shipper import ReplicationEngine

    label = f"restore{mb:g}mb"
    store = stores.make(label)
    base = tmp / label
    progress(f"  filling a {mb:g} MB actor")
    start = time.perf_counter()
    aid, rows, size = anyio.run(_fill, base / "source", store, int(mb * 1e6), backend=args.backend)
    fill_seconds = time.perf_counter() - start
    name = ReplicationEngine.actor_name(aid, DATA_FILE)
    got = store.inner.get(manifest_key(name))
    if got is None:
        raise RuntimeError(f"bench replication: no manifest for {name} after the fill")
    manifest = Manifest.decode(got[0], key=name)
    if manifest.snapshot is None or manifest.segments or manifest.tail is not None:
        raise RuntimeError(
            f"bench replication: hibernation left {name} without a lone snapshot ({manifest})"
        )
    snap = manifest.snapshot
    progress(
        f"  restoring it {args.restore_repeats} times, beside the raw floor "
        f"(snapshot {snap.image_bytes / 1e6:.1f} MB, {stored_size(store, snap.key) / 1e6:.1f} "
        "MB compressed)"
    )
    restores: list[float] = []
    requests: list[int] = []
    floors: list[dict[str, float]] = []
    for rep in range(args.restore_repeats):
        folder = base / f"restored{rep}"
        (base / f"raw{rep}").mkdir(parents=True)
        if rep % 2:
            floors.append(_floor(store.inner, snap.key, base / f"raw{rep}" / DATA_FILE))
        seconds, n = _restore_once(store, aid, folder)
        restores.append(seconds)
        requests.append(n)
        if rep % 2 == 0:
            floors.append(_floor(store.inner, snap.key, base / f"raw{rep}" / DATA_FILE))
        check = apsw.Connection(str(folder / DATA_FILE))
        try:
            restored_rows = check.execute("SELECT count(*) FROM notes").fetchall()[0][0]
        finally:
            check.close()
        if restored_rows != rows:
            raise RuntimeError(f"bench replication: restored {restored_rows} rows, not {rows}")
        shutil.rmtree(folder)
        shutil.rmtree(base / f"raw{rep}")
    progress("  a fresh machine: open_runtime + first ask (restore on wake)")
    fresh, fresh_rows = anyio.run(_fresh_machine, base / "fresh", store, backend=args.backend)
    if fresh_rows != rows:
        raise RuntimeError(f"bench replication: the fresh machine saw {fresh_rows} rows")
    with contextlib.suppress(OSError):
        shutil.rmtree(base)
    return {
        "mb": mb,
        "rows": rows,
        "db_bytes": size,
        "snapshot_bytes": snap.image_bytes,
        "snapshot_stored_bytes": stored_size(store, snap.key),
        "fill_seconds": fill_seconds,
        "restore_seconds": restores,
        "restore_p50": statistics.median(restores),
        "restore_requests": requests,
        "floor": floors,
        "floor_p50": statistics.median(f["total"] for f in floors),
        "fresh_machine_seconds": fresh,
    }


def stored_size(store: CountingStore, key: str) -> int:
    cache = getattr(store, "_sizes", None)
    if cache is None:
        cache = {}
        store._sizes = cache  # type: ignore[attr-defined]
    if key not in cache:
        got = store.inner.get(key)
        cache[key] = len(got[0]) if got else 0
    return int(cache[key])


# -- phase 4: faults ----------------------------------------------------------------------------

#: Seconds after which a send or an ask of the fault phase is given up (counted as stuck; what
#: it carried may or may not be applied). A send appends to a file, an ask of an awake actor
#: answers in milliseconds: seconds mean something waits on the store.
FAULT_CALL_BOUND = 10.0

#: Seconds after which a fresh machine's query of an actor (restored on wake) is given up.
RESTORE_CALL_BOUND = 60.0

#: Longest wait, after an outage or a throttling window, for the lag to be back under target.
CATCH_UP_LIMIT = 120.0

#: Longest wait, once the traffic stops, for every acknowledged message (and its relay) to be
#: applied, and then for the replica to acknowledge every commit.
DRAIN_LIMIT = 60.0

#: Seconds between polls of the replication's statistics.
FAULT_POLL = 0.05


def fault_idle_timeout(args: argparse.Namespace) -> float:
    """The fault phase's ``idle_timeout``: half the time between two asks to one actor, so that
    every ask wakes a hibernated actor (and it hibernates again after); the load's actors,
    messaged more often by default, stay awake."""
    return float(args.ask_actors / args.ask_rate / 2)


def _mixed_faults() -> tuple[Fault, ...]:
    """The mixed-fault window's rules, drawn in order for every request (seeded): about one
    request in five is hit."""
    return (
        Fault("error_before", probability=0.04, status=500),
        Fault("error_after", probability=0.03, status=503),
        Fault("reset", probability=0.03),
        Fault("reset_after", probability=0.03),
        Fault("cut_body", probability=0.04),
        Fault("slow_down", probability=0.02),
        Fault("delay", probability=0.05, delay=0.5),
    )


def _ledger_type() -> Any:
    from ..actor import Actor, query

    class Ledger(Actor, name=LEDGER):
        """Records the number of every message it applies, with no unique constraint (a
        repeat shows as a second row)."""

        migrations = ("CREATE TABLE got(n INTEGER NOT NULL, hop INTEGER NOT NULL)",)

        async def add(self, n: int, note: str = "", relay: str = "") -> int:
            self.sql.execute("INSERT INTO got(n, hop) VALUES (?, 0)", (n,))
            if note:
                self.kv["note"] = note
            if relay:
                self.send(self.ref_to(Ledger, relay), Ledger.relayed, n)
            return n

        async def relayed(self, n: int) -> None:
            self.sql.execute("INSERT INTO got(n, hop) VALUES (?, 1)", (n,))

        @query
        async def seen(self) -> list[list[int]]:
            rows = self.sql.query("SELECT n, hop, count(*) FROM got GROUP BY n, hop")
            return [[int(n), int(hop), int(count)] for n, hop, count in rows]

    return Ledger


class _Book:
    """The numbered messages of the fault phase: where each must leave a row (its receiver,
    hop 0, and its relay's receiver, hop 1), and whether its send or ask was acknowledged."""

    def __init__(self) -> None:
        self.rows: dict[int, list[tuple[str, int]]] = {}
        self.acked: set[int] = set()
        self.kinds: dict[int, str] = {}
        self.origin = time.perf_counter()  # acknowledgement times are reported from here
        self.acked_at: dict[int, float] = {}  # (perf_counter)

    def ack(self, n: int) -> None:
        self.acked.add(n)
        self.acked_at[n] = time.perf_counter()

    def new(self, kind: str, key: str, relay: str) -> int:
        n = len(self.rows)
        self.rows[n] = [(key, 0)] + ([(relay, 1)] if relay else [])
        self.kinds[n] = kind
        return n

    def expected_turns(self) -> int:
        return sum(len(self.rows[n]) for n in self.acked)


def _held_outboxes(rt: Any) -> list[str]:
    """Awake actors with outbox rows not delivered, and what their output gate waits for (a
    diagnostic for a drain that did not finish)."""
    held = []
    for act in list(rt._engine.awake.values()):
        if not act.files_open or not act.outbox.dirty:
            continue
        rows = act.data.outbox_after(act.outbox.delivered_upto)
        if not rows:
            continue
        data = act.replica.files[0] if act.replica.files else None
        gate = (
            "no replica file"
            if data is None
            else f"data.db claimed={data.claimed} baseline={data.baseline_shipped} "
            f"want_snapshot={data.want_snapshot} capture={data.capture is not None} "
            f"acked={data.acked}/{data.commits} fenced={data.fenced is not None}"
        )
        held.append(
            f"{act.key}: {len(rows)} rows from {rows[0].id}, gated={act.outbox.gated}, "
            f"retry in {act.outbox.retry_delay:.2f} s, marks {list(act.outbox.marks)[:3]}, "
            f"gate at {act.outbox.gate_upto}; {gate}"
        )
    return held


def _check_once(
    book: _Book, seen: dict[str, list[list[int]]], unreadable: Iterable[str] = ()
) -> dict[str, Any]:
    """Every acknowledged message's rows present exactly once, where they belong; the others
    at most once; nothing else. Rows due at ``unreadable`` actors are counted as unchecked."""
    skip = set(unreadable)
    where: dict[tuple[int, int], tuple[str, int]] = {}
    unexpected: list[str] = []
    for key, rows in seen.items():
        for n, hop, count in rows:
            if (n, hop) in where or (key, hop) not in book.rows.get(n, ()):
                unexpected.append(f"{key}: n={n} hop={hop} x{count}")
                continue
            where[(n, hop)] = (key, count)
    missing: list[str] = []
    repeated: list[str] = []
    by_actor: dict[str, list[float]] = {}  # key -> [missing, first n, last n, first t, last t]
    unacked_applied = unchecked = 0
    for n, places in book.rows.items():
        for key, hop in places:
            if key in skip:
                unchecked += n in book.acked
                continue
            count = where.get((n, hop), (key, 0))[1]
            if count > 1:
                repeated.append(f"{key}: n={n} hop={hop} x{count}")
            elif count == 0 and n in book.acked:
                missing.append(f"{key}: n={n} hop={hop} ({book.kinds[n]})")
                at = book.acked_at.get(n, book.origin) - book.origin
                row = by_actor.setdefault(key, [0, n, n, at, at])
                row[0] += 1
                row[1], row[2] = min(row[1], n), max(row[2], n)
                row[3], row[4] = min(row[3], at), max(row[4], at)
            elif count == 1 and n not in book.acked:
                unacked_applied += 1
    return {
        "rows": sum(count for _, count in where.values()),
        "missing": len(missing),
        "repeated": len(repeated),
        "unexpected": len(unexpected),
        "unchecked": unchecked,
        "unreadable": sorted(skip),
        "unacknowledged_applied": unacked_applied,
        "examples": (missing + repeated + unexpected)[:5],
        # The actors with missing rows (most first): how many, their numbers' range, and when
        # they were acknowledged (seconds from the start of the windows).
        "missing_by_actor": {
            key: {"missing": int(m), "n": [int(a), int(b)], "acked_at": [round(t, 2), round(u, 2)]}
            for key, (m, a, b, t, u) in sorted(by_actor.items(), key=lambda kv: -kv[1][0])[:10]
        },
    }


async def _seen(
    rt: Any, ledger: Any, keys: list[str], bound: float = FAULT_CALL_BOUND
) -> tuple[dict[str, list[list[int]]], dict[str, str]]:
    """Every actor's rows (a query each, given up after ``bound`` seconds), and the actors
    that could not be read, with why."""
    seen: dict[str, list[list[int]]] = {}
    errors: dict[str, str] = {}
    for key in keys:
        try:
            with anyio.fail_after(bound):
                seen[key] = await rt.ref(ledger, key).ask(ledger.seen)
        except Exception as exc:
            errors[key] = _short(f"{type(exc).__name__}: {exc}", 400)
    return seen, errors


class _FaultTraffic:
    """The fault phase's traffic, each call bounded by :data:`FAULT_CALL_BOUND`: the load
    phase's paced sends (round robin over ``keys``, every ``relay_every``-th relayed by its
    receiver to the next actor with ``self.send``), and paced asks, one at a time, round robin
    over ``ask_keys`` (an ask late on its schedule is not made up for: no burst after a stall)."""

    def __init__(
        self, rt: Any, ledger: Any, keys: list[str], ask_keys: list[str], args: argparse.Namespace
    ) -> None:
        self.rt, self.ledger, self.keys, self.ask_keys = rt, ledger, keys, ask_keys
        self.rate, self.ask_rate, self.relay_every = args.rate, args.ask_rate, args.relay_every
        self.note = "x" * args.note_bytes
        self.book = _Book()
        self.sends: list[float] = []  # completion times (perf_counter)
        self.asks: list[tuple[float, float]] = []  # (completion time, latency)
        self.stuck: collections.Counter[str] = collections.Counter()
        self.failures: collections.Counter[str] = collections.Counter()
        self.scope = anyio.CancelScope()

    async def _call(self, kind: str, n: int, call: Callable[..., Any], *args: Any) -> float | None:
        """Make one bounded call, ``call(*args)``; its latency if acknowledged, else None."""
        began = time.perf_counter()
        try:
            with anyio.move_on_after(FAULT_CALL_BOUND) as bound:
                await call(*args)
        except Exception as exc:
            self.failures[f"{kind} {type(exc).__name__}"] += 1
            return None
        if bound.cancelled_caught:
            self.stuck[kind] += 1
            return None
        self.book.ack(n)
        return time.perf_counter() - began

    async def run(self) -> None:
        with self.scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._send_loop)
                tg.start_soon(self._ask_loop)

    async def _send_loop(self) -> None:
        start = time.perf_counter()
        i = 0
        while True:
            due = start + i / self.rate
            now = time.perf_counter()
            if due > now:
                await anyio.sleep(due - now)
            k = i % len(self.keys)
            relay = ""
            if self.relay_every and i % self.relay_every == 0 and len(self.keys) > 1:
                relay = self.keys[(k + 1) % len(self.keys)]
            n = self.book.new("send", self.keys[k], relay)
            ref = self.rt.ref(self.ledger, self.keys[k])
            if await self._call("send", n, ref.send, self.ledger.add, n, self.note, relay):
                self.sends.append(time.perf_counter())
            i += 1

    async def _ask_loop(self) -> None:
        interval = 1 / self.ask_rate
        due = time.perf_counter()
        i = 0
        while True:
            now = time.perf_counter()
            if due > now:
                await anyio.sleep(due - now)
            key = self.ask_keys[i % len(self.ask_keys)]
            n = self.book.new("ask", key, "")
            ref = self.rt.ref(self.ledger, key)
            latency = await self._call("ask", n, ref.ask, self.ledger.add, n, self.note)
            if latency is not None:
                self.asks.append((time.perf_counter(), latency))
            due = max(due + interval, time.perf_counter())
            i += 1


class _Watch:
    """Polls the replication's statistics every :data:`FAULT_POLL` seconds: the worst lag per
    window, the distinct errors it reported, and whether the runtime is still open."""

    def __init__(self, rt: Any, t0: float) -> None:
        self.rt, self.t0 = rt, t0
        self.label = "warm-up"
        self.lag_max: dict[str, float] = collections.defaultdict(float)
        self.window_lag_max = 0.0  # since the current window started
        self.errors: dict[str, int] = {}  # distinct last_error texts (shortened) -> polls seen
        self.closed_while_running = False
        #: Once a second, from the start of the warm-up: the runtime's and the replication's
        #: state (in the JSON report only, for diagnosis).
        self.timeline: list[dict[str, Any]] = []

    async def run(self) -> None:
        next_second = self.t0
        while True:
            await anyio.sleep(FAULT_POLL)
            if self.rt._engine.closing.is_set():
                self.closed_while_running = True
            stats = self.rt.statistics()
            rep = _of(stats)
            now = time.perf_counter()
            if now >= next_second:
                next_second = now + 1.0
                self.timeline.append(
                    {
                        "t": round(now - self.t0, 2),
                        "window": self.label,
                        "lag": round(rep.lag, 3),
                        "files_behind": rep.files_behind,
                        "rounds": rep.rounds,
                        "errors": rep.errors,
                        "puts": rep.puts,
                        "snapshots": rep.snapshots,
                        "manifests": rep.manifests,
                        "applied": stats.messages_applied,
                        "awake": stats.awake,
                        "wakes": stats.wakes,
                        "hibernations": stats.hibernations,
                        "last_error": _error_kind(rep.last_error) if rep.last_error else None,
                    }
                )
            self.lag_max[self.label] = max(self.lag_max[self.label], rep.lag)
            self.window_lag_max = max(self.window_lag_max, rep.lag)
            if rep.last_error:
                text = _error_kind(rep.last_error)
                if text in self.errors or len(self.errors) < 20:
                    self.errors[text] = self.errors.get(text, 0) + 1


def _error_kind(text: str) -> str:
    """An error of the replication without what varies (the key, the prefix, the attempts):
    ``ReplicaUnavailableError: PUT log failed after 3 attempt(s) (503 SlowDown: ...)``."""
    found = re.match(r"(\w+): (GET|PUT|DELETE|LIST) '([^']*)' in \S+ (.*)", text, re.S)
    if found is None:
        return _short(text)
    name, op, key, rest = found.groups()
    return _short(f"{name}: {op} {kind_of(key)} {rest.split('; ')[0]}")


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _FaultRun:
    """The fault phase against one open runtime: warm-up, the windows, the drain. Each step
    leaves what it measured here, so that a failure part-way still reports the rest."""

    def __init__(
        self,
        rt: Any,
        ledger: Any,
        store: CountingStore,
        proxy: Any,
        args: argparse.Namespace,
        progress: Callable[[str], None],
    ) -> None:
        self.rt, self.ledger, self.store, self.proxy = rt, ledger, store, proxy
        self.args, self.progress = args, progress
        self.keys = [f"f{i}" for i in range(args.actors)]
        self.ask_keys = [f"q{i}" for i in range(args.ask_actors)]
        self.traffic = _FaultTraffic(rt, ledger, self.keys, self.ask_keys, args)
        self.t0 = time.perf_counter()
        self.watch = _Watch(rt, self.t0)
        self.windows: list[dict[str, Any]] = []
        self.lag_samples: dict[str, list[float]] = collections.defaultdict(list)
        self.catch_up: dict[str, dict[str, float | None]] = {}
        self.out: dict[str, Any] = {"replicated": False}
        self.seen: dict[str, list[list[int]]] = {}
        self.unreadable: dict[str, str] = {}
        self.before: tuple[Any, ...] | None = None  # (counts, statistics, HTTP attempts)
        self.after: tuple[Any, ...] | None = None

    def _mark(self) -> tuple[Any, ...]:
        return self.store.snapshot(), self.rt.statistics(), self.store.inner.statistics()

    async def drive(self) -> None:
        rt, ledger, args = self.rt, self.ledger, self.args
        engine = rt._engine.replication
        assert engine is not None
        self.progress(f"  waking {len(self.keys) + len(self.ask_keys)} actors (no faults yet)")
        for key in self.keys + self.ask_keys:
            n = self.traffic.book.new("ask", key, "")
            await rt.ref(ledger, key).ask(ledger.add, n)
            self.traffic.book.ack(n)
        await _settle(rt)
        engine.tracking.lags = _Recorder(self.lag_samples["warm-up"])
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.traffic.run)
            tg.start_soon(self.watch.run)
            # Warm-up under the traffic, no faults: at least --warmup seconds, and until the
            # lag is under target (the asked actors have hibernated, the others woken again).
            self.progress(f"  warm-up under the traffic ({args.warmup:g} s at least)")
            began = time.perf_counter()
            await anyio.sleep(args.warmup)
            with anyio.move_on_after(CATCH_UP_LIMIT):
                while True:
                    if _rep(rt).lag <= TARGET_LAG_P99:
                        break
                    await anyio.sleep(FAULT_POLL)
            self.out["warmup_seconds"] = time.perf_counter() - began
            self.before = self._mark()
            self.t0 = self.traffic.book.origin = time.perf_counter()
            healthy = args.healthy_seconds
            self.progress(
                f"  healthy {healthy:g} s, then mixed faults for {args.fault_seconds:g} s"
            )
            await self._window("healthy", healthy)
            await self._window("mixed", args.fault_seconds, *_mixed_faults())
            await self._window("healthy", healthy)
            self.progress(f"  outage (every connection refused) for {args.outage_seconds:g} s")
            await self._window("outage", args.outage_seconds, Fault("outage"))
            await self._recover("outage")
            await self._window("healthy", healthy)
            self.progress(
                f"  throttling (503 SlowDown to everything) for {args.throttle_seconds:g} s"
            )
            await self._window("throttling", args.throttle_seconds, Fault("slow_down"))
            await self._recover("throttling")
            await self._window("healthy", healthy)
            self.traffic.scope.cancel()
            self.out["seconds"] = time.perf_counter() - self.t0
            self.after = self._mark()

            # Drain: every acknowledged message and its relay applied, then all replicated.
            self.progress("  draining: every acknowledged message applied, then rt.replicated()")
            self.watch.label = "drain"
            began = time.perf_counter()
            keys = self.keys + self.ask_keys
            applied = False
            with anyio.move_on_after(DRAIN_LIMIT):
                while True:
                    self.seen, self.unreadable = await _seen(rt, ledger, keys)
                    if not _check_once(self.traffic.book, self.seen, self.unreadable)["missing"]:
                        applied = True
                        break
                    await anyio.sleep(0.5)
            self.out["apply_seconds"] = time.perf_counter() - began
            # (rows a sender woke with are sent again, deduplicated: listed only if some
            # message is still missing, they say where it waits)
            self.out["held"] = [] if applied else _held_outboxes(rt)
            with anyio.move_on_after(DRAIN_LIMIT):
                await rt.replicated()
                self.out["replicated"] = True
            self.out["drain_seconds"] = time.perf_counter() - began
            self.seen, self.unreadable = await _seen(rt, ledger, keys)
            tg.cancel_scope.cancel()

    async def _window(self, label: str, seconds: float, *faults: Any) -> None:
        self.watch.label, self.watch.window_lag_max = label, 0.0
        self._lags_into(label)
        before = self.proxy.statistics()
        start = time.perf_counter()
        self.proxy.set_faults(*faults)
        try:
            await anyio.sleep(seconds)
        finally:
            self.proxy.clear_faults()
        self._close_window(label, start, before)

    async def _recover(self, after: str) -> None:
        """Until the lag is back under target (bounded): the catch-up."""
        self.watch.label, self.watch.window_lag_max = "recovery", 0.0
        self._lags_into("recovery")
        before = self.proxy.statistics()
        start = time.perf_counter()
        first_good: float | None = None
        caught: float | None = None
        while time.perf_counter() - start < CATCH_UP_LIMIT:
            rep = _rep(self.rt)
            now = time.perf_counter()
            if first_good is None and rep.last_error is None:
                first_good = now - start
            if rep.lag <= TARGET_LAG_P99:
                caught = now - start
                break
            await anyio.sleep(FAULT_POLL)
        self.catch_up[after] = {"first_good_round": first_good, "lag_under_target": caught}
        self._close_window("recovery", start, before)

    def _lags_into(self, label: str) -> None:
        engine = self.rt._engine.replication
        if isinstance(engine.tracking.lags, _Recorder):
            engine.tracking.lags.into = self.lag_samples[label]

    def _close_window(self, label: str, start: float, before: Any) -> None:
        after = self.proxy.statistics()
        end = time.perf_counter()
        row = {
            "label": label,
            "start": start,
            "end": end,
            "seconds": end - start,
            "faults": after.faults - before.faults,
            "proxy_requests": after.requests - before.requests,
            "lag_max": self.watch.window_lag_max,
        }
        row.update(_service(self.traffic, row))
        self.windows.append(row)

    def report(self) -> dict[str, Any]:
        """What was measured, as far as it got."""
        rt, out = self.rt, self.out
        end = rt.statistics()
        rep_end = _of(end)
        out.update(
            reports=list(rt.reports),
            closed_while_running=self.watch.closed_while_running,
            watched_errors=self.watch.errors,
            timeline=self.watch.timeline,
            windows=self.windows,
            service=_service_by_label(self.windows),
            catch_up=self.catch_up,
            fenced=rep_end.fenced,
            stopped=end.stopped,
            failed=end.failed,
            replication_errors=rep_end.errors,
            last_error=rep_end.last_error,
            store_failures=dict(self.store.failures),
        )
        out["fence_reports"] = [
            r for r in out["reports"] if "another runtime" in r or "fenced" in r
        ]
        book = self.traffic.book
        out.update(
            sends_acknowledged=sum(1 for n in book.acked if book.kinds[n] == "send"),
            asks_acknowledged=sum(1 for n in book.acked if book.kinds[n] == "ask"),
            acknowledged_turns=book.expected_turns(),
            messages=len(book.rows),
            stuck=dict(self.traffic.stuck),
            call_failures=dict(self.traffic.failures),
            unreadable=self.unreadable,
        )
        if self.before is not None and self.after is not None:
            (counts0, stats0, http0), (counts1, stats1, http1) = self.before, self.after
            counts = diff(counts1, counts0)
            turns = stats1.messages_applied - stats0.messages_applied
            every = sorted(
                x for label, xs in self.lag_samples.items() if label != "warm-up" for x in xs
            )
            mixed = sorted(self.lag_samples.get("mixed", []))
            out.update(
                turns=turns,
                turns_per_second=turns / max(1e-9, out["seconds"]),
                calls=total(counts),
                http_attempts=_requests(http1) - _requests(http0),
                requests=by_kind(counts),
                puts=total(counts, "put"),
                lag_p50=percentile(every, 50) if every else None,
                lag_p99=percentile(every, 99) if every else None,
                lag_max=every[-1] if every else None,
                mixed_lag_p50=percentile(mixed, 50) if mixed else None,
                mixed_lag_p99=percentile(mixed, 99) if mixed else None,
            )
        return out


async def _fault_phase(
    root: Path,
    store: CountingStore,
    direct: CountingStore,
    proxy: Any,
    args: argparse.Namespace,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """The load's workload through the fault proxy (mixed faults, an outage, throttling), then
    exactly-once checked in the runtime and in a fresh directory restored from the replica.

    ``died``: the runtime ended by itself (an exception out of ``open_runtime``); an exception
    of the bench's own code (``bench_error``) ends the phase early but is no death."""
    from ..runtime import open_runtime

    ledger = _ledger_type()
    out: dict[str, Any] = {"died": False, "error": None, "bench_error": None}
    run: _FaultRun | None = None
    try:
        async with open_runtime(
            root,
            types=[ledger],
            replica=store,
            replication=args.replication,
            max_awake=args.actors + args.ask_actors + 10,
            idle_timeout=fault_idle_timeout(args),
        ) as rt:
            run = _FaultRun(rt, ledger, store, proxy, args, progress)
            try:
                await run.drive()
            except Exception as exc:
                out["bench_error"] = _short(f"{type(exc).__name__}: {exc}", 400)
                out["bench_traceback"] = traceback.format_exc()
            out.update(run.report())
    except Exception as exc:
        out["died"] = True
        out["error"] = _short(f"{type(exc).__name__}: {exc}", 400)
        out["traceback"] = traceback.format_exc()
        if run is not None and "reports" not in out:
            with contextlib.suppress(Exception):
                out.update(run.report())
    injected = proxy.statistics()
    out.update(
        injected=dict(injected.injected),
        injected_total=injected.faults,
        proxy_requests=injected.requests,
        proxy_forwarded=injected.forwarded,
        proxy_upstream_failures=injected.upstream_failures,
    )
    if run is None or out["died"] or not out["replicated"]:
        # What it had acknowledged need not all be in the replica: no restore check.
        out["source"] = _check_once(run.traffic.book, run.seen, run.unreadable) if run else None
        out["restored"] = None
        out["restored_equals_source"] = False
        return out
    out["source"] = _check_once(run.traffic.book, run.seen, run.unreadable)

    # A fresh machine: an empty directory, the same replica (no proxy), every actor asked.
    progress("  restoring into a fresh directory (no faults) and checking every row")
    began = time.perf_counter()
    restored: dict[str, list[list[int]]] = {}
    unreadable: dict[str, str] = {}
    out["restore_error"] = None
    try:
        async with open_runtime(
            root.parent / "faults-fresh", types=[ledger], replica=direct
        ) as fresh:
            keys = run.keys + run.ask_keys
            restored, unreadable = await _seen(fresh, ledger, keys, RESTORE_CALL_BOUND)
    except Exception as exc:
        out["restore_error"] = _short(f"{type(exc).__name__}: {exc}", 400)
    out["restore_seconds"] = time.perf_counter() - began
    out["restore_unreadable"] = unreadable
    out["restored"] = (
        _check_once(run.traffic.book, restored, unreadable)
        if out["restore_error"] is None
        else None
    )
    out["restored_equals_source"] = (
        out["restored"] is not None
        and not unreadable
        and not run.unreadable
        and _canonical(restored) == _canonical(run.seen)
    )
    return out


def _canonical(seen: dict[str, list[list[int]]]) -> dict[str, list[tuple[int, ...]]]:
    return {key: sorted(tuple(row) for row in rows) for key, rows in seen.items()}


def _requests(stats: ReplicaStatistics) -> int:
    return stats.gets + stats.puts + stats.deletes + stats.lists


def _service(traffic: _FaultTraffic, row: dict[str, Any]) -> dict[str, Any]:
    """Asks and sends completed inside a window, per second; its asks' latencies."""
    start, end = row["start"], row["end"]
    latencies = sorted(lat for at, lat in traffic.asks if start <= at < end)
    sends = sum(1 for at in traffic.sends if start <= at < end)
    seconds = max(1e-9, end - start)
    return {
        "asks": len(latencies),
        "asks_per_second": len(latencies) / seconds,
        "ask_p50": percentile(latencies, 50) if latencies else None,
        "ask_p99": percentile(latencies, 99) if latencies else None,
        "sends_per_second": sends / seconds,
    }


def _service_by_label(windows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Asks and sends per second over all the windows of each label."""
    out: dict[str, dict[str, float]] = {}
    for label in dict.fromkeys(row["label"] for row in windows):
        rows = [row for row in windows if row["label"] == label]
        seconds = max(1e-9, sum(row["seconds"] for row in rows))
        out[label] = {
            "seconds": seconds,
            "asks_per_second": sum(row["asks"] for row in rows) / seconds,
            "sends_per_second": sum(row["sends_per_second"] * row["seconds"] for row in rows)
            / seconds,
        }
    return out


# -- the suite ----------------------------------------------------------------------------------


def run(args: argparse.Namespace, progress: Callable[[str], None]) -> dict[str, Any]:
    """Run the phases asked for; return the report (figures, breakdowns, parameters)."""
    figures: list[Result] = []
    report: dict[str, Any] = {}
    server: S3Server | None = None
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="torpor-bench-")))
        if args.keep:
            stack.pop_all()
            progress(f"keeping {tmp}")
        if args.store == "s3" and not args.endpoint_url and not args.bucket:
            progress("starting SeaweedFS (weed mini) on 127.0.0.1")
            weed = s3server.find_weed()
            if weed is None:
                raise RuntimeError(s3server.missing_message())
            server = s3server.start(weed, tmp / "s3", bucket="torpor-bench")
            stack.callback(s3server.stop, server)
            report["server"] = {"endpoint_url": server.endpoint_url, "pid": server.process.pid}
        stores = Stores(args, tmp, server)
        if not args.keep:
            stack.callback(stores.clean)
        report["store"] = stores.where
        report["prefix"] = stores.prefix if args.store == "s3" else None
        phases = set(args.phases.split(","))
        report["phase_seconds"] = {}

        if "load" in phases:
            began = time.perf_counter()
            progress(f"steady load: {args.actors} actors, {args.rate:g} msg/s, {args.seconds:g} s")
            load = anyio.run(
                _load_phase,
                tmp / "load",
                stores.make("load"),
                args,
                progress,
                backend=args.backend,
            )
            report["load"] = load
            per_1000 = 1000 / max(1, load["turns"])
            figures += [
                Result(
                    "replication lag p50 (every commit in the window)",
                    (load["lag_p50"] or 0) * 1e3,
                    "ms",
                ),
                Result(
                    "replication lag p99 (every commit in the window)",
                    (load["lag_p99"] or 0) * 1e3,
                    "ms",
                    target=TARGET_LAG_P99 * 1e3,
                ),
                Result(
                    "replication lag p99 (statistics, last 1,000)",
                    (load["stats_lag_p99"] or 0) * 1e3,
                    "ms",
                    target=TARGET_LAG_P99 * 1e3,
                ),
                Result(
                    "oldest unacknowledged commit, max (polled)",
                    load["staleness_max"] * 1e3,
                    "ms",
                ),
                Result(
                    f"PUTs per 1,000 turns at {load['turns_per_second']:.0f} turns/s",
                    load["puts"] * per_1000,
                    "PUT",
                    target=TARGET_PUTS_PER_1000,
                ),
                Result(
                    "  long run, with manifest folds and compactions",
                    long_run_puts(load, args) * per_1000,
                    "PUT",
                    target=TARGET_PUTS_PER_1000,
                ),
                Result("requests per 1,000 turns", load["requests_total"] * per_1000, "req"),
                Result(
                    "bytes uploaded per 1,000 turns", load["put_bytes"] * per_1000 / 1024, "KiB"
                ),
            ]
            if load["durable_ask_p50"] is not None:
                figures += [
                    Result(
                        "durable ask p50 (raw: plain ask), under load",
                        load["durable_ask_p50"] * 1e3,
                        "ms",
                        raw=load["plain_ask_p50"] * 1e3,
                    ),
                    Result(
                        "durable ask p99 (raw: plain ask), under load",
                        load["durable_ask_p99"] * 1e3,
                        "ms",
                        raw=load["plain_ask_p99"] * 1e3,
                    ),
                ]
            report["phase_seconds"]["load"] = time.perf_counter() - began

        if "hops" in phases:
            began = time.perf_counter()
            progress(f"hops: {args.hop_chains} chains of three actors, with and without a replica")
            hops = anyio.run(
                _hop_phase, tmp / "hops", stores.make("hops"), args, progress, backend=args.backend
            )
            report["hops"] = hops
            figures += [
                Result(
                    "actor-to-actor hop p50 (raw: no replica)",
                    hops["replicated_p50"] * 1e3,
                    "ms",
                    raw=hops["local_p50"] * 1e3,
                ),
                Result(
                    "actor-to-actor hop p99 (raw: no replica)",
                    hops["replicated_p99"] * 1e3,
                    "ms",
                    raw=hops["local_p99"] * 1e3,
                ),
            ]
            report["phase_seconds"]["hops"] = time.perf_counter() - began

        if "idle" in phases:
            began = time.perf_counter()
            progress(f"idle: {args.idle_actors} hibernated actors for {args.idle_seconds:g} s")
            idle = anyio.run(
                _idle_phase, tmp / "idle", stores.make("idle"), args, progress, backend=args.backend
            )
            report["idle"] = idle
            figures += [
                Result(
                    f"requests by {idle['actors']} idle actors in {idle['seconds']:.0f} s",
                    idle["requests"],
                    "req",
                    target=TARGET_IDLE_REQUESTS,
                ),
                Result(
                    "requests per actor created and hibernated",
                    idle["create_requests_per_actor"],
                    "req",
                ),
            ]
            report["phase_seconds"]["idle"] = time.perf_counter() - began

        if "restore" in phases:
            began = time.perf_counter()
            report["restore"] = []
            for mb in args.restore_mb:
                progress(f"restore: a {mb:g} MB actor")
                r = _restore_phase(tmp, stores, mb, args, progress)
                report["restore"].append(r)
                figures += [
                    Result(
                        f"restore {mb:g} MB actor (raw: GET+unzip+write+fsync)",
                        r["restore_p50"],
                        "s",
                        raw=r["floor_p50"],
                        target=TARGET_RESTORE_100MB if mb >= 100 else None,
                    ),
                    Result(
                        f"  fresh machine: open + first ask, {mb:g} MB",
                        r["fresh_machine_seconds"],
                        "s",
                    ),
                ]
            report["phase_seconds"]["restore"] = time.perf_counter() - began

        if "faults" in phases:
            began = time.perf_counter()
            progress(
                f"faults: {args.actors} actors, {args.rate:g} msg/s, through a fault proxy "
                f"in front of {stores.endpoint_url}"
            )
            with FaultProxy(stores.endpoint_url, seed=args.fault_seed) as proxy:
                through, direct = (
                    stores.make("faults", endpoint_url=proxy.url),
                    stores.make("faults"),
                )
                faults = anyio.run(
                    _fault_phase,
                    tmp / "faults",
                    through,
                    direct,
                    proxy,
                    args,
                    progress,
                    backend=args.backend,
                )
            report["faults"] = faults
            figures += fault_figures(faults, args)
            report["phase_seconds"]["faults"] = time.perf_counter() - began
    report["figures"] = [
        {
            "name": f.name,
            "value": f.value,
            "unit": f.unit,
            "raw": f.raw,
            "target": f.target,
            "status": f.status,
        }
        for f in figures
    ]
    report["parameters"] = {
        "store": args.store,
        "actors": args.actors,
        "rate": args.rate,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "durable_asks": args.durable_asks,
        "hop_chains": args.hop_chains,
        "idle_actors": args.idle_actors,
        "idle_seconds": args.idle_seconds,
        "restore_mb": args.restore_mb,
        "restore_repeats": args.restore_repeats,
        "phases": args.phases,
        "options": args.option,
        "replication": attrs.asdict(args.replication),
    }
    if "faults" in phases:
        report["parameters"]["faults"] = {
            "healthy_seconds": args.healthy_seconds,
            "fault_seconds": args.fault_seconds,
            "outage_seconds": args.outage_seconds,
            "throttle_seconds": args.throttle_seconds,
            "ask_rate": args.ask_rate,
            "ask_actors": args.ask_actors,
            "relay_every": args.relay_every,
            "seed": args.fault_seed,
            "mixed": [_describe(f) for f in _mixed_faults()],
        }
    report["targets_met"] = all(f.status != "MISS" for f in figures)
    return report


def fault_figures(faults: dict[str, Any], args: argparse.Namespace) -> list[Result]:
    """The fault phase's figures: what it survived (targets: no death, no actor fenced, every
    acknowledged turn once), how fast it caught up, how it served meanwhile. Lag and PUTs
    under faults have no target."""
    died = bool(faults["died"]) or bool(faults.get("closed_while_running"))
    out = [
        Result("faults: injected by the proxy (all kinds)", faults.get("injected_total", 0), ""),
        Result("faults: runtime deaths", 1 if died else 0, "", target=0),
    ]
    if "fenced" in faults:
        fenced = max(faults["fenced"], len(faults["fence_reports"]))
        out.append(Result("faults: actors fenced (statistics and reports)", fenced, "", target=0))
    checks = [c for c in (faults.get("source"), faults.get("restored")) if c is not None]
    wrong = max(
        (c["missing"] + c["repeated"] + c["unexpected"] + c["unchecked"] for c in checks),
        default=0,
    )
    if faults.get("restored") is None:  # not restored: nothing vouched for
        wrong = max(wrong, faults.get("acknowledged_turns", 1))
    out.append(Result("faults: acknowledged turns lost/repeated/unchecked", wrong, "", target=0))
    for after, seconds in (("outage", args.outage_seconds), ("throttling", args.throttle_seconds)):
        if after in faults.get("catch_up", {}):
            caught = faults["catch_up"][after]["lag_under_target"]
            out.append(
                Result(
                    f"faults: catch-up after {seconds:g} s of {after} (lag < {TARGET_LAG_P99:g} s)",
                    CATCH_UP_LIMIT if caught is None else caught,
                    "s",
                )
            )
    service = faults.get("service", {})
    healthy = service.get("healthy", {}).get("asks_per_second")
    for label in ("outage", "throttling"):
        if label in service:
            out.append(
                Result(
                    f"faults: asks/s in the {label} (raw: healthy)",
                    service[label]["asks_per_second"],
                    "ask/s",
                    raw=healthy,
                )
            )
    if "turns" in faults:
        out += [
            Result(
                "faults: replication lag p99, mixed faults",
                (faults["mixed_lag_p99"] or 0) * 1e3,
                "ms",
            ),
            Result(
                "faults: PUTs per 1,000 turns, whole phase",
                faults["puts"] * 1000 / max(1, faults["turns"]),
                "PUT",
            ),
        ]
    return out


def _describe(fault: Any) -> str:
    """A fault rule in a few words: ``reset p=0.03``."""
    text = f"{fault.kind.value} p={fault.probability:g}"
    if fault.kind.value in ("error_before", "error_after"):
        text += f" {fault.status}"
    if fault.delay:
        text += f" {fault.delay:g}s"
    return text


def long_run_puts(load: dict[str, Any], args: argparse.Namespace) -> float:
    """PUTs in the window plus those a longer run adds at the same rate (the window's own
    folds and snapshots, if any, are counted already): a manifest per shipping file every
    ``fold_interval`` seconds or ``fold_segments`` segments, whichever comes first, and a
    snapshot and a manifest every ``compact_segments`` segments. The engine spreads each
    threshold per file by a random factor: 0.75-1.25 for folds (mean 1), 0.75-1 for
    compactions (mean 0.875)."""
    options = args.replication
    put = load["requests"].get("put", {})
    seen_manifests = put.get("manifest", {}).get("requests", 0)
    seen_snapshots = put.get("snapshot", {}).get("requests", 0)
    seconds = max(1e-9, float(load["seconds"]))
    files = max(1.0, float(load["segments_per_round"]))  # each busy file ships every round
    per_file = load["segments"] / files  # segments of one file in the window
    fold_rate = max(1 / options.fold_interval, per_file / seconds / options.fold_segments)
    folds = files * seconds * fold_rate
    compactions = load["segments"] / (options.compact_segments * 0.875)
    extra = max(0.0, folds + compactions - seen_manifests) + max(0.0, compactions - seen_snapshots)
    return float(load["puts"] + extra)


def _replication(options: list[str]) -> Any:
    """``Replication()`` with ``NAME=VALUE`` overrides (ints and floats as the defaults are)."""
    from ..replica.shipper import Replication

    defaults = Replication()
    changes: dict[str, Any] = {}
    for option in options:
        name, sep, value = option.partition("=")
        if not sep or not hasattr(defaults, name) or name.startswith("_"):
            raise ValueError(f"expected NAME=VALUE with a Replication option name (got {option!r})")
        kind = type(getattr(defaults, name))
        changes[name] = kind(float(value)) if kind is int else kind(value)
    return attrs.evolve(defaults, **changes)


def _mb_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"a comma-separated list of MB (got {text!r})") from None
    if any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"sizes must be > 0 (got {text!r})")
    return values


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0 (got {text})")
        return value

    return parse


def _non_negative(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0 (got {text})")
        return value

    return parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="torpor bench replication",
        description="Replication to S3: lag and requests under load, idle requests, restore "
        "time; each beside its floor and its target.",
    )
    p.add_argument("--store", choices=["s3", "directory"], default="s3")
    p.add_argument("--endpoint-url", help="an S3 endpoint (default: start SeaweedFS on 127.0.0.1)")
    p.add_argument("--bucket", help="the bucket at --endpoint-url (credentials: boto3's chain)")
    p.add_argument("--prefix", help="key prefix in the bucket (default: torpor-bench/<random>)")
    p.add_argument("--path-style", action="store_true", help="path-style bucket addressing")
    p.add_argument("--actors", type=_positive(int), default=100, help="actors under load")
    p.add_argument("--rate", type=_positive(float), default=200.0, help="messages per second")
    p.add_argument("--seconds", type=_positive(float), default=30.0, help="measured load window")
    p.add_argument("--warmup", type=_non_negative(float), default=3.0, help="load before it")
    p.add_argument("--note-bytes", type=_non_negative(int), default=100, help="text per turn")
    p.add_argument("--durable-asks", type=_non_negative(int), default=50)
    p.add_argument(
        "--hop-chains",
        type=_positive(int),
        default=50,
        help="chains of three actors timed in the hops phase, in each runtime",
    )
    p.add_argument("--idle-actors", type=_positive(int), default=1000)
    p.add_argument("--idle-seconds", type=_non_negative(float), default=60.0)
    p.add_argument("--restore-mb", type=_mb_list, default=[10.0, 100.0], help="e.g. 10,100")
    p.add_argument("--restore-repeats", type=_positive(int), default=3)
    p.add_argument(
        "--phases",
        default="load,hops,idle,restore",
        help="which phases (comma-separated): load, hops, idle, restore, and faults (not by "
        "default: the load through a fault proxy, about two minutes)",
    )
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a Replication option in the load, idle and faults phases, for profiling "
        "(e.g. checkpoint_frames=1000000); the targets are for the defaults",
    )
    f = p.add_argument_group(
        "faults phase",
        "--actors, --rate, --note-bytes and --warmup as for the load; windows in this order: "
        "healthy, mixed faults, healthy, outage, catch-up, healthy, throttling, catch-up, healthy",
    )
    f.add_argument(
        "--healthy-seconds", type=_positive(float), default=5.0, help="each healthy window"
    )
    f.add_argument("--fault-seconds", type=_positive(float), default=20.0, help="mixed faults")
    f.add_argument(
        "--outage-seconds", type=_positive(float), default=5.0, help="every connection refused"
    )
    f.add_argument(
        "--throttle-seconds", type=_positive(float), default=5.0, help="503 SlowDown to everything"
    )
    f.add_argument("--ask-rate", type=_positive(float), default=5.0, help="asks per second")
    f.add_argument(
        "--ask-actors",
        type=_positive(int),
        default=10,
        help="actors asked round robin, each hibernated between two asks (idle_timeout: "
        "half the time between them)",
    )
    f.add_argument(
        "--relay-every",
        type=_non_negative(int),
        default=4,
        help="every Nth send is relayed by its receiver to another actor (0: none)",
    )
    f.add_argument("--fault-seed", type=int, default=1, help="seeds the proxy's draws")
    p.add_argument("--backend", choices=["trio", "asyncio"], default="trio")
    p.add_argument("--keep", action="store_true", help="keep the temp directory and objects")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if (args.endpoint_url or args.bucket) and args.store == "directory":
        p.error("--endpoint-url/--bucket are for --store s3")
    if args.endpoint_url and not args.bucket:
        p.error("--endpoint-url needs --bucket")
    try:
        args.replication = _replication(args.option)
    except (ValueError, TypeError) as exc:
        p.error(f"--option: {exc}")
    phases = set(args.phases.split(","))
    unknown = phases - {"load", "hops", "idle", "restore", "faults"}
    if unknown:
        p.error(f"unknown phases {sorted(unknown)} (load, hops, idle, restore, faults)")
    if "faults" in phases:
        if args.store != "s3":
            p.error("the faults phase is for --store s3 (a fault proxy in front of the S3 server)")
        if args.bucket and not (args.endpoint_url or "").startswith("http://"):
            p.error(
                "the faults phase needs an http:// --endpoint-url (the proxy relays plain HTTP)"
            )

    def progress(text: str) -> None:
        if not args.json:
            print(f"... {text}", file=sys.stderr, flush=True)

    report = run(args, progress)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(format_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
