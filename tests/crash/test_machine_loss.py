"""Machine-loss soak (issue 11): lose the machine, open on an empty directory, nothing twice.

The child program is ``machine_loss_workload.py``: a runtime with a replica, a short idle
timeout and fewer awake slots than actors (hibernation churn), clients sending and asking entry
actors with idempotency keys (half of them durable), actor-to-actor chains entry -> relay ->
sink, durable steps with a visible external effect, tickers on durable timers feeding the same
chains, and ``rt.replicated()`` barriers. It logs every acknowledgement and barrier to an
fsynced side file.

A campaign runs children (each closed cleanly, or SIGKILLed at a random instant), sometimes on
a new empty directory (a lost machine). Then a *fresh machine*: a runtime opened by this test on
an empty directory with the same replica, which resumes the pending work and is polled (with
queries) until every chain has drained, with a bound. Checks:

- every message is applied at most once at every hop (no duplicate row), in per-sender order;
- every acknowledged message covered by durable mode or by a completed barrier of its own run
  is applied at its entry, its relay and its sink; every tick a ticker counted reached its
  relay and sink;
- no step whose result a turn committed ran again after that result (the effect file shows
  each run of a step); with no kill, each step ran once;
- after a clean close, each actor's ``data.db`` restored from the replica equals the source
  byte for byte, and its restored ``mailbox.db`` holds every message ``data.db`` applied;
- every file of the fresh machine passes ``integrity_check``; no dead letters, no reports.

Under the fault proxy (``runtime/faultproxy.py``, run by this process so that it outlives the
children), the children reach SeaweedFS through seeded faults (errors before and after
forwarding, resets, cut bodies, delays), one outage of 1-2 s and one window of 503 throttling,
each inside a run; the faults stop before the fresh machine. The same checks, and: no child
exits but by our SIGKILL or its clean close, no run reports an actor stopped as fenced, the
clients of non-durable entries get answers during the storms (service from the local disk), and
the proxy injected faults of every kind configured.

The seed is fixed and printed on failure; ``TORPOR_CRASH_SEED`` tries another.
"""

from __future__ import annotations

import collections
import json
import random
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import apsw
import attrs
import pytest
import trio

import actors
from runtime.faultproxy import Fault, FaultKind, FaultProxy, FaultStatistics
from runtime.files.layout import DATA_FILE, MAILBOX_FILE, actor_dir
from runtime.replica.replicator import restore
from runtime.replica.shipper import ReplicationEngine
from tests.crash import machine_loss_workload as workload
from tests.support import crash_harness as support
from tests.support.s3server import S3Server

PROGRAM = Path(__file__).resolve().parent / "machine_loss_workload.py"
DEFAULT_SEED = 20_260_611
#: A child gets READY within this many seconds, and finishes its sends within RUN_TIMEOUT.
READY_TIMEOUT = 30.0
RUN_TIMEOUT = 120.0
#: The fresh machine drains every chain within this many seconds (about one when all is well).
DRAIN_TIMEOUT = 20.0
POLL = 0.05
#: The child, on the one crash harness: acknowledgements are ``acked`` lines of the side file.
HARNESS = support.SideFileHarness(
    PROGRAM,
    ready_timeout=READY_TIMEOUT,
    work_timeout=RUN_TIMEOUT,
    ack_marker=b"acked ",
    poll=0.005,
)
#: How often the next child of a campaign starts on a new, empty directory.
FRESH_CHANCE = 0.4
no_orphans = support.no_orphans


# -- the side files ---------------------------------------------------------------------------


@attrs.define
class Acks:
    """What the children acknowledged, and which of it a barrier or durable mode covers."""

    acked: dict[str, list[int]] = attrs.Factory(dict)  # client -> n acknowledged, in order
    covered: set[tuple[str, int]] = attrs.Factory(set)
    barriers: int = 0

    def count(self) -> int:
        return sum(len(v) for v in self.acked.values())


def read_acks(text: str) -> Acks:
    acks = Acks()
    run_lines: list[tuple[str, int]] = []  # this run's acks not covered yet
    begun: dict[str, int] = {}  # barrier id -> how many of run_lines its begin covers
    for line in text.splitlines():
        parts = line.split()
        if parts[0] == "run":
            run_lines, begun = [], {}
        elif parts[0] == "acked":
            src, n = parts[1], int(parts[2])
            acks.acked.setdefault(src, []).append(n)
            if workload.entry_of(src) in workload.DURABLE_ENTRIES:
                acks.covered.add((src, n))
            else:
                run_lines.append((src, n))
        elif parts[0] == "barrier" and parts[2] == "begin":
            begun[parts[1]] = len(run_lines)
        elif parts[0] == "barrier" and parts[2] == "end":
            acks.barriers += 1
            acks.covered.update(run_lines[: begun.pop(parts[1])])
    return acks


def read_effects(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Step tag -> (token, idempotency key) of each run of that step, in order."""
    runs: dict[str, list[tuple[str, str]]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            tag, token, key = line.split(" ")
            runs.setdefault(tag, []).append((token, key))
    return runs


# -- the fresh machine ------------------------------------------------------------------------


async def _collect(rt: actors.Runtime) -> tuple[dict[str, Any], list[str]]:
    rows: dict[str, Any] = {}
    errors: list[str] = []
    for kind, key in workload.all_actors():
        ref: Any = rt.ref(kind, key)
        try:
            rows[key] = await ref.ask(kind.rows)
            if kind is workload.Ticker:
                rows[f"{key}/progress"] = await ref.ask(kind.progress)
        except actors.ActorNotFoundError as exc:
            if kind is workload.Ticker:
                errors.append(f"{key}: {exc!r}")
            else:
                # Made by its first message: none reached the replica before the kill (a
                # covered message missing here is counted as lost by the checks).
                rows[key] = []
        except Exception as exc:
            errors.append(f"{key}: {exc!r}")
    return rows, errors


def drained(rows: dict[str, Any]) -> list[str]:
    """What has not reached the end of its chain yet (empty once drained)."""
    if any(key not in rows for _, key in workload.all_actors()):
        return ["not every actor answered"]
    seen: dict[str, dict[str, set[int]]] = {}
    for key in [*workload.ENTRIES, *workload.RELAYS, *workload.SINKS, *workload.TICKERS]:
        for src, n, _ in rows[key]:
            seen.setdefault(key, {}).setdefault(src, set()).add(n)
    behind = []
    sources = {src for by_src in seen.values() for src in by_src}
    for src in sorted(sources):
        first = workload.entry_of(src) if src.startswith("c") else src
        at = [seen.get(k, {}).get(src, set()) for k in (first, workload.relay_of(src))]
        at.append(seen.get(workload.sink_of(src), {}).get(src, set()))
        if not at[0] <= at[1] or not at[1] <= at[2]:
            behind.append(
                f"{src}: {len(at[0])} at {first}, {len(at[1])} relayed, {len(at[2])} sunk"
            )
    for key in workload.TICKERS:
        count, limit, timers = rows[f"{key}/progress"]
        if count < limit or timers:
            behind.append(f"{key}: {count} ticks of {limit}, {timers} timers")
    return behind


async def _fresh_machine(root: Path, store: actors.ReplicaStore, effects: Path) -> dict[str, Any]:
    workload.configure(effects)
    state: dict[str, Any] = {"query_errors": [], "behind": []}
    async with actors.open_runtime(
        root,
        types=workload.TYPES,
        idle_timeout=workload.IDLE_TIMEOUT,
        max_awake=workload.MAX_AWAKE,
        replica=store,
        replication=workload.REPLICATION,
        shutdown_grace=2.0,
    ) as rt:
        deadline = trio.current_time() + DRAIN_TIMEOUT
        while True:
            rows, errors = await _collect(rt)
            behind = drained(rows)
            if not behind and not errors:
                break
            if trio.current_time() > deadline:
                state["query_errors"], state["behind"] = errors[:10], behind[:10]
                break
            await trio.sleep(POLL)
        state["rows"] = rows
        state["dead_letters"] = {}
        for kind, key in workload.all_actors():
            try:
                letters = await rt.dead_letters(rt.ref(kind, key))
            except Exception as exc:
                state["dead_letters"][key] = [repr(exc)]
                continue
            state["dead_letters"][key] = [f"{d.method}: {d.error_message}" for d in letters]
        state["statistics"] = str(rt.statistics())
        state["reports"] = list(rt.reports)
    return state


def fresh_machine(root: Path, store: actors.ReplicaStore, effects: Path) -> dict[str, Any]:
    return trio.run(_fresh_machine, root, store, effects)


# -- the checks ---------------------------------------------------------------------------------


@attrs.define
class Tally:
    duplicates: dict[str, int] = attrs.Factory(dict)  # hop -> rows applied more than once
    lost: dict[str, int] = attrs.Factory(dict)  # hop -> covered messages missing
    order: int = 0
    step_reruns: int = 0
    integrity: int = 0

    def __str__(self) -> str:
        return (
            f"duplicates {self.duplicates}, lost {self.lost}, order {self.order}, "
            f"journaled steps re-run {self.step_reruns}, files failing integrity {self.integrity}"
        )


def check_state(
    state: dict[str, Any], acks: Acks, effects: Path, *, killed: bool, tally: Tally
) -> list[str]:
    errors: list[str] = []
    rows: dict[str, list[list[Any]]] = state["rows"]
    if state["behind"] or state["query_errors"]:
        errors.append(
            f"the fresh machine did not drain in {DRAIN_TIMEOUT}s: behind {state['behind']}, "
            f"query errors {state['query_errors']}"
        )
    hops = {
        "entry": workload.ENTRIES,
        "relay": workload.RELAYS,
        "sink": workload.SINKS,
        "ticker": workload.TICKERS,
    }
    applied: dict[str, collections.Counter[tuple[str, int]]] = {}
    for hop, keys in hops.items():
        counter: collections.Counter[tuple[str, int]] = collections.Counter()
        for key in keys:
            last: dict[str, int] = {}
            for src, n, _ in rows.get(key, []):
                # (a repeated message is a duplicate, counted below, not an order violation)
                if (src, n) not in counter and src in last and n < last[src]:
                    tally.order += 1
                    errors.append(
                        f"invariant 3 (order): {key} applied ({src}, {n}) after {last[src]}"
                    )
                last[src] = max(n, last.get(src, 0))
                counter[(src, n)] += 1
        applied[hop] = counter
        twice = {m: c for m, c in counter.items() if c > 1}
        if twice:
            tally.duplicates[hop] = tally.duplicates.get(hop, 0) + sum(
                c - 1 for c in twice.values()
            )
            sample = sorted(twice.items())[:6]
            errors.append(
                f"invariant 2 (exactly once): at the {hop} actors, {len(twice)} messages were "
                f"applied more than once ({sum(twice.values())} rows), e.g. {sample}"
            )
    # Losses: covered acknowledged messages at every hop; counted ticks down the chain.
    for hop in ("entry", "relay", "sink"):
        missing = sorted(m for m in acks.covered if m not in applied[hop])
        if missing:
            tally.lost[hop] = tally.lost.get(hop, 0) + len(missing)
            errors.append(
                f"invariant 1 (no loss): {len(missing)} acknowledged messages covered by durable "
                f"mode or a barrier are not applied at the {hop}: {missing[:6]}"
            )
    for key in workload.TICKERS:
        count = state["rows"].get(f"{key}/progress", [0])[0]
        for hop in ("relay", "sink"):
            unreached = [n for n in range(1, count + 1) if (key, n) not in applied[hop]]
            if unreached:
                tally.lost[hop] = tally.lost.get(hop, 0) + len(unreached)
                errors.append(
                    f"{key} counted {count} ticks; {unreached[:6]} never reached the {hop}"
                )
    # Steps: a run after the one whose result a turn committed is a journaled step run again.
    runs = read_effects(effects)
    for key in workload.ENTRIES:
        for src, n, token in rows.get(key, []):
            if token is None:
                continue
            tag = f"{key}:{src}:{n}"
            tokens = [t for t, _ in runs.get(tag, [])]
            if token not in tokens:
                errors.append(f"step {tag}: the committed result {token} is no run of the step")
                continue
            after = len(tokens) - 1 - tokens.index(token)
            if after:
                tally.step_reruns += after
                errors.append(
                    f"invariant 2 (no step twice): step {tag} ran {after} more time(s) after the "
                    f"run whose result was committed ({runs[tag]})"
                )
            elif len(tokens) > 1 and not killed:
                tally.step_reruns += len(tokens) - 1
                errors.append(f"step {tag} ran {len(tokens)} times with no kill: {runs[tag]}")
    for key, letters in state["dead_letters"].items():
        if letters:
            errors.append(f"{key} has dead letters: {letters[:3]}")
    if state["reports"]:
        errors.append(f"the fresh machine reported {state['reports'][:4]}")
    support.invariants_first(errors)
    return errors


def check_integrity(root: Path, tally: Tally) -> list[str]:
    errors = []
    for path in sorted(root.rglob("*.db")):
        try:
            conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
            try:
                result = [r[0] for r in conn.execute("PRAGMA integrity_check")]
            finally:
                conn.close()
        except apsw.Error as exc:
            result = [repr(exc)]
        if result != ["ok"]:
            tally.integrity += 1
            errors.append(f"{path.relative_to(root)}: integrity_check says {result[:3]}")
    return errors


def check_restored_equal(store: actors.ReplicaStore, source: Path, work: Path) -> list[str]:
    """After a clean close: each actor's data.db restored from the replica is the source file
    byte for byte, and its restored mailbox.db holds every message that data.db applied."""
    errors = []
    for kind, key in workload.all_actors():
        aid = workload.aid_of(kind, key)
        folder = actor_dir(source, aid)
        if not (folder / DATA_FILE).exists():
            continue
        dest = work / aid
        dest.mkdir(parents=True)
        for file in (DATA_FILE, MAILBOX_FILE):
            try:
                restore(store, ReplicationEngine.actor_name(aid, file), dest / file)
            except Exception as exc:
                errors.append(f"{key}/{file}: restore failed: {exc!r}")
        restored = dest / DATA_FILE
        if restored.exists() and restored.read_bytes() != (folder / DATA_FILE).read_bytes():
            errors.append(
                f"invariant 5 (byte-exact): {key}: data.db restored from the replica after "
                f"a clean close differs from the source ({_rows(dest / DATA_FILE)} rows "
                f"restored, {_rows(folder / DATA_FILE)} in the source)"
            )
        if (dest / MAILBOX_FILE).exists() and (dest / DATA_FILE).exists():
            applied = _value(dest / DATA_FILE, "SELECT applied_seq FROM _torpor_state")
            last = _value(dest / MAILBOX_FILE, "SELECT seq FROM sqlite_sequence WHERE name='inbox'")
            if (last or 0) < applied:
                errors.append(
                    f"{key}: the replica's data.db applied message {applied}, but its mailbox.db "
                    f"ends at message {last}: the two files are not at one consistent point"
                )
    return errors


def _rows(path: Path) -> int:
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        ((count,),) = conn.execute("SELECT count(*) FROM got").fetchall()
        assert isinstance(count, int)
        return count
    finally:
        conn.close()


def _value(path: Path, sql: str) -> Any:
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        rows = conn.execute(sql).fetchall()
        return rows[0][0] if rows else None
    finally:
        conn.close()


# -- the children -------------------------------------------------------------------------------


Run = support.SideFileRun


class Hooks:
    """What a campaign lets a variant do around its children (here: nothing)."""

    def started(self, run: Run, acks: Path) -> None:
        """Run ``run`` is about to start; ``acks`` holds every acknowledgement so far."""

    def ready(self, run: Run) -> None:
        """Run ``run`` printed READY."""

    def may_kill(self) -> bool:
        """Whether the child due to be killed may be killed now (else: soon, asked again)."""
        return True

    def before_fresh(self) -> None:
        """Every child is done; the fresh machine is next."""

    def check(self, tmp: Path, history: list[Run]) -> tuple[list[str], str]:
        """Failures of the variant's own checks, and a line for the summary."""
        return [], ""


def run_child(
    tmp: Path,
    run: Run,
    spec: dict[str, Any],
    acks: Path,
    effects: Path,
    seed: int,
    per_client: int,
    hooks: Hooks,
) -> None:
    """One child on ``run.root``: let it close cleanly (mode "close"), or SIGKILL it once it
    acknowledged ``run.param`` messages (or finished sending) and ``hooks`` let it."""
    hooks.started(run, acks)
    end = "close" if run.mode == "close" else "kill"
    args = ["run", str(run.root), json.dumps(spec), str(acks), str(effects), str(seed)]
    args += [str(run.number), str(per_client), end]
    support.run_side_file_child(
        HARNESS, tmp, run, args, acks, may_kill=hooks.may_kill, on_ready=lambda: hooks.ready(run)
    )


def campaign(
    tmp: Path,
    spec: dict[str, Any],
    *,
    kills: int,
    per_client: int,
    seed: int,
    last_end: str = "close",
    hooks: Hooks | None = None,
) -> str:
    """``kills`` killed children (a lost machine now and then), then one that ends with
    ``last_end``, then the fresh machine and every check; return a summary, raise on failure."""
    hooks = hooks or Hooks()
    rng = random.Random(seed)
    acks, effects = tmp / "acks.log", tmp / "effects.log"
    history: list[Run] = []
    root = tmp / "rt-0"
    for number in range(1, kills + 2):
        if number > 1 and rng.random() < FRESH_CHANCE:
            root = tmp / f"rt-{number}"  # a lost machine: the next run starts from the replica
        mode = "acks" if number <= kills or last_end == "kill" else "close"
        run = Run(number, root, mode, rng.randint(5, per_client * len(workload.CLIENTS)))
        history.append(run)
        run_child(tmp, run, spec, acks, effects, rng.randrange(1 << 30), per_client, hooks)
    hooks.before_fresh()
    store = workload.open_store(spec)
    tally = Tally()
    errors: list[str] = []
    try:
        if history[-1].done:
            errors += check_restored_equal(store, history[-1].root, tmp / "restored")
        fresh = tmp / "fresh"
        state = fresh_machine(fresh, store, effects)
        acks_read = read_acks(acks.read_text())
        errors += check_state(state, acks_read, effects, killed=kills > 0, tally=tally)
        errors += check_integrity(fresh, tally)
        variant_errors, variant_summary = hooks.check(tmp, history)
        errors += variant_errors
    finally:
        if hasattr(store, "close"):
            store.close()
    summary = (
        f"seed {seed}, store {spec['kind']}: {len(history)} runs "
        f"({sum(r.killed for r in history)} killed, "
        f"{len({r.root for r in history})} machines), {acks_read.count()} acks "
        f"({len(acks_read.covered)} covered, {acks_read.barriers} barriers); {tally}\n"
        f"fresh machine: {state['statistics']}"
        + (f"\n{variant_summary}" if variant_summary else "")
    )
    if errors:
        raise AssertionError(
            f"{len(errors)} failure(s):\n"
            + "\n".join(errors[:25])
            + f"\n{summary}\nruns:\n"
            + "\n".join(str(r) for r in history)
            + f"\nside files {acks}, {effects}"
        )
    return summary


def directory_spec(tmp: Path) -> dict[str, Any]:
    return {"kind": "directory", "path": str(tmp / "replica")}


def s3_spec(server: S3Server) -> dict[str, Any]:
    return {
        "kind": "s3",
        "bucket": server.bucket,
        "prefix": f"machine-loss-{uuid.uuid4().hex[:12]}",
        "endpoint_url": server.endpoint_url,
        "region": server.region,
    }


# -- under the fault proxy ------------------------------------------------------------------

#: The weather while the children run: each request to the store has a small chance of each of
#: these faults (tried in order, the first that fires decides).
WEATHER = (
    Fault("error_before", probability=0.02),
    Fault("error_after", probability=0.02),  # the write happened, the client is told it failed
    Fault("reset", probability=0.02),
    Fault("reset_after", probability=0.01),
    Fault("cut_body", probability=0.02),
    Fault("delay", probability=0.03, delay=0.15),
)
#: The storms, one of each per campaign: (kind, shortest and longest seconds it lasts). Under
#: throttling the first failure takes up to 1.5 s to come (S3Store's waits between attempts
#: after a 503), and wake-ups wait for the store until one came: the window is longer, so that
#: local service has a second to show.
STORMS = ((FaultKind.OUTAGE, 1.0, 2.0), (FaultKind.SLOW_DOWN, 2.5, 3.5))
#: A storm begins this many seconds after the run's first answer to a client of a non-durable
#: entry (waited for at most STORM_WAIT seconds after READY): service from the local disk is
#: under way.
STORM_AFTER = (0.0, 0.3)
STORM_WAIT = 5.0
#: What a report of a runtime that stopped replicating something as fenced says.
FENCED = ("another runtime owns it", "is no longer replicated")


@attrs.define
class Storm:
    """One window of refuse-everything (``outage``) or 503-to-everything (``slow_down``) inside
    a run; a run with a storm is not killed before the storm is over."""

    kind: FaultKind
    run: int
    after: float
    seconds: float
    #: Acknowledgements during the storm by the clients of entries that are not durable (their
    #: replies come from the local disk), and whether one of those clients had sends left while
    #: its entry was known to be local (the run's directory is not new, or it acknowledged in
    #: this run before the storm).
    loose_acks: int = 0
    loose_expected: bool = False
    faults: int = 0  # faults the proxy injected during the storm

    def __str__(self) -> str:
        return (
            f"{self.kind.value} of {self.seconds:.1f}s in run {self.run}: {self.faults} requests "
            f"refused, {self.loose_acks} non-durable acks meanwhile"
            + ("" if self.loose_expected else " (none expected)")
        )


def _loose_acks(text: str) -> dict[str, int]:
    """Per client of a non-durable entry, how many acknowledgements ``text`` holds."""
    counts: dict[str, int] = collections.Counter()
    for line in text.splitlines():
        parts = line.split()
        if parts[0] == "acked" and workload.entry_of(parts[1]) not in workload.DURABLE_ENTRIES:
            counts[parts[1]] += 1
    return counts


class FaultWeather(Hooks):
    """The children reach the store through a fault proxy that lives in this (the parent)
    process, so it outlives every SIGKILL: :data:`WEATHER` all along, and one storm of each of
    :data:`STORMS` inside a killed run. The faults stop before the fresh machine opens."""

    def __init__(self, proxy: FaultProxy, rng: random.Random, *, kills: int, per_client: int):
        self.proxy = proxy
        self.per_client = per_client
        runs = rng.sample(range(1, kills + 1), len(STORMS)) if kills >= len(STORMS) else [1, 1]
        self.storms = [
            Storm(kind, run, rng.uniform(*STORM_AFTER), rng.uniform(shortest, longest))
            for (kind, shortest, longest), run in zip(STORMS, runs, strict=True)
        ]
        self.threads: list[threading.Thread] = []
        self.calm = threading.Event()
        self.calm.set()
        self.failures: list[str] = []
        self.acks = Path()
        self.offset = 0
        self.roots: set[Path] = set()
        self.reused = False  # the current run's directory is one an earlier run used
        self.targets: dict[str, int] = {}  # per client, its last n in the current run
        self.statistics: FaultStatistics | None = None

    def started(self, run: Run, acks: Path) -> None:
        self.proxy.set_faults(*WEATHER)
        self.reused = run.root in self.roots
        self.roots.add(run.root)
        self.acks, self.offset = acks, acks.stat().st_size if acks.exists() else 0
        last = workload.last_acked(acks)
        self.targets = {src: last.get(src, 0) + self.per_client for src in workload.CLIENTS}

    def ready(self, run: Run) -> None:
        storms = [storm for storm in self.storms if storm.run == run.number]
        if storms:
            self.calm.clear()
            thread = threading.Thread(target=self._blow, args=(storms,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _this_run(self) -> str:
        with self.acks.open("rb") as f:
            f.seek(self.offset)
            return f.read().decode()

    def _blow(self, storms: list[Storm]) -> None:
        try:
            deadline = time.monotonic() + STORM_WAIT
            while not _loose_acks(self._this_run()) and time.monotonic() < deadline:
                time.sleep(0.01)
            for storm in storms:
                time.sleep(storm.after)
                before = _loose_acks(self._this_run())
                last = workload.last_acked(self.acks)
                storm.loose_expected = any(
                    (self.reused or before[src]) and last.get(src, 0) < self.targets[src]
                    for src in self.targets
                    if workload.entry_of(src) not in workload.DURABLE_ENTRIES
                )
                faults = self.proxy.statistics().injected[storm.kind.value]
                self.proxy.set_faults(Fault(storm.kind))
                time.sleep(storm.seconds)
                self.proxy.set_faults(*WEATHER)
                storm.faults = self.proxy.statistics().injected[storm.kind.value] - faults
                storm.loose_acks = sum(_loose_acks(self._this_run()).values()) - sum(
                    before.values()
                )
        except Exception as exc:  # a harness failure: reported, and the kill not held back
            self.failures.append(f"the storm thread failed: {exc!r}")
        finally:
            self.calm.set()

    def may_kill(self) -> bool:
        return self.calm.is_set()

    def before_fresh(self) -> None:
        for thread in self.threads:
            thread.join(timeout=STORM_WAIT + sum(s.after + s.seconds for s in self.storms) + 5)
        self.proxy.clear_faults()
        self.statistics = self.proxy.statistics()

    def check(self, tmp: Path, history: list[Run]) -> tuple[list[str], str]:
        errors = list(self.failures)
        for run in history:
            if run.returncode != (0 if run.mode == "close" else -signal.SIGKILL):
                errors.append(f"child run {run.number} died on its own: {run}")
        fenced: list[str] = []
        unavailable = 0
        for run in history:
            for line in (tmp / f"stderr-{run.number}.txt").read_text(errors="replace").splitlines():
                if line.startswith("report: ") and any(f in line for f in FENCED):
                    fenced.append(f"run {run.number}: {line}")
                unavailable += line.startswith("unavailable: ")
        if fenced:
            errors.append(f"a runtime fenced itself ({len(fenced)} reports): {fenced[:4]}")
        assert self.statistics is not None
        injected = self.statistics.injected
        configured = {fault.kind.value for fault in WEATHER} | {k.value for k, *_ in STORMS}
        for kind in sorted(configured):
            if not injected[kind]:
                errors.append(f"the proxy injected no {kind!r} fault")
        for storm in self.storms:
            if storm.loose_expected and not storm.loose_acks:
                errors.append(
                    f"service stopped during a storm ({storm}): no client of a non-durable "
                    f"entry known to be local, with sends left, got an answer"
                )
        summary = (
            f"proxy: {self.statistics.requests} requests, {self.statistics.faults} faults "
            f"{dict((k, v) for k, v in injected.items() if v)}; "
            + "; ".join(map(str, self.storms))
            + f"; {unavailable} sends tried again after ReplicaUnavailableError"
        )
        return errors, summary


def weather_campaign(tmp: Path, server: S3Server, *, kills: int, per_client: int, seed: int) -> str:
    """:func:`campaign` against SeaweedFS through a fault proxy of this process."""
    with FaultProxy(server.endpoint_url, seed=seed) as proxy:
        spec = {**s3_spec(server), "endpoint_url": proxy.url}
        weather = FaultWeather(proxy, random.Random(seed), kills=kills, per_client=per_client)
        return campaign(tmp, spec, kills=kills, per_client=per_client, seed=seed, hooks=weather)


# -- the tests ----------------------------------------------------------------------------------


def test_fresh_machine_after_a_clean_close(tmp_path: Path, no_orphans: None) -> None:
    """A closed runtime reopened on an empty machine from its replica applies each message once."""
    # The runtime is closed cleanly first. No actor-to-actor message is applied twice, nothing is
    # lost, and every file is sound.
    print(
        campaign(
            tmp_path,
            directory_spec(tmp_path),
            kills=0,
            per_client=16,
            seed=support.seed(DEFAULT_SEED),
        )
    )


def test_fresh_machine_after_a_kill(tmp_path: Path, no_orphans: None) -> None:
    """A runtime killed at random, reopened on an empty machine, keeps each covered ack once."""
    # The empty machine has only the replica; acknowledgements stay in order, and no finished step
    # runs again.
    seed = support.seed(DEFAULT_SEED) + 1
    print(
        campaign(
            tmp_path, directory_spec(tmp_path), kills=1, per_client=12, seed=seed, last_end="kill"
        )
    )


def test_machines_lost_and_replaced(tmp_path: Path, no_orphans: None) -> None:
    """Machines killed and replaced by empty ones apply each covered ack once, in order."""
    # The scenario: kills, machines thrown away and replaced by empty directories, a clean last run,
    # then a fresh machine; nothing is applied twice.
    seed = support.seed(DEFAULT_SEED) + 2
    print(campaign(tmp_path, directory_spec(tmp_path), kills=3, per_client=6, seed=seed))


def test_fresh_machine_on_s3(tmp_path: Path, s3_credentials: S3Server, no_orphans: None) -> None:
    """The same clean close and fresh machine against a real S3 server (SeaweedFS)."""
    seed = support.seed(DEFAULT_SEED) + 3
    print(campaign(tmp_path, s3_spec(s3_credentials), kills=0, per_client=8, seed=seed))


# Fails today, about two runs in three (kept out of the default run until it holds): under
# faults, with machines lost, a sink applied some messages twice, a few covered messages were
# lost, and once a data.db restored after a clean close lacked the last turn. Open in issue 11.
@pytest.mark.slow
def test_machines_lost_under_s3_faults(
    tmp_path: Path, s3_credentials: S3Server, no_orphans: None
) -> None:
    """S3 faults, an outage and throttling neither stop, kill nor fence a runtime; nothing twice."""
    seed = support.seed(DEFAULT_SEED) + 6
    print(weather_campaign(tmp_path, s3_credentials, kills=1, per_client=8, seed=seed))


@pytest.mark.slow
def test_machine_loss_soak(tmp_path: Path, no_orphans: None) -> None:
    """Thirty kills with lost machines never apply a message twice nor lose a covered one."""
    # The last fresh machine drains every chain.
    seed = support.seed(DEFAULT_SEED) + 4
    print(campaign(tmp_path, directory_spec(tmp_path), kills=30, per_client=40, seed=seed))


@pytest.mark.slow
def test_machine_loss_soak_on_s3(
    tmp_path: Path, s3_credentials: S3Server, no_orphans: None
) -> None:
    """Ten kills and lost machines against SeaweedFS, then a fresh machine: nothing twice."""
    seed = support.seed(DEFAULT_SEED) + 5
    print(campaign(tmp_path, s3_spec(s3_credentials), kills=10, per_client=30, seed=seed))


@pytest.mark.slow
def test_machine_loss_soak_under_s3_faults(
    tmp_path: Path, s3_credentials: S3Server, no_orphans: None
) -> None:
    """Ten kills and lost machines under S3 faults and storms: no death, no fence, nothing twice."""
    seed = support.seed(DEFAULT_SEED) + 7
    print(weather_campaign(tmp_path, s3_credentials, kills=10, per_client=30, seed=seed))
