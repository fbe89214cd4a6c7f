"""The hand-over of an actor's files at wake-up and hibernation (:class:`Handover`).

Waking: take up the state the last hibernation in this process saved (no request), or take
the files' replicas over, restoring the files (``restore.py``) when they are missing here,
were last written by another runtime, or are corrupt; then track the opened files. Hibernating:
snapshot each changed file (the mailbox first) and write its manifest without a log tail, one
attempt each; if the store cannot be reached, the actor is left behind (marked pending) and
woken to catch up once a round succeeds; then save what the next wake-up needs in
``replica.json``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from ..errors import (
    ReplicaUnavailableError,
)
from ..files.layout import DATA_FILE, MAILBOX_FILE, actor_dir
from .replicator import (
    ANY_SALT,
    FileReplica,
    Manifest,
)
from .restore import STATE_FILE, actor_file_name, restore_actor
from .state import Event, State
from .tracking import ReplicatedActor, TrackedFile, Tracking
from .writes import Writes

#: Passes of a hibernation over an actor's files (a delivery into the closing mailbox makes
#: one more pass: its snapshot again, then data.db's).
DETACH_PASSES = 3


class Handover:
    """The hand-over of actors' files at wake-up and hibernation (module docstring)."""

    def __init__(self, tracking: Tracking, writes: Writes) -> None:
        self.tracking = tracking
        self.writes = writes
        self.rt = tracking.rt
        self.store = tracking.store
        self.options = tracking.options
        self.limiter = tracking.limiter

    def local_files_current(self, aid: str) -> bool:
        """Whether an actor's local files are the ones its next wake-up opens, so that a
        message may be appended to its mailbox without waking it: its ``data.db`` is here,
        not corrupt, and no restore can replace it (this directory was not restored from
        another runtime, or the actor was claimed since)."""
        if aid in self.tracking.corrupt:
            return False
        if not (actor_dir(self.rt.root, aid) / DATA_FILE).exists():
            return False
        return not self.tracking.origin or aid in self.tracking.claimed

    async def prepare_files(
        self, act: ReplicatedActor, known: bool, *, force_restore: bool = False
    ) -> None:
        """Before an actor's files are opened: take up the state saved at its last hibernation
        in this process (per file, when nothing touched the file since: no request), or take
        ownership of its replica, restoring the files when they are missing here, were last
        written by another runtime, or ``force_restore`` (a corrupt local file)."""
        folder = actor_dir(self.rt.root, act.aid)
        state = _read_state(folder / STATE_FILE)
        if state is None or state.get("session") != self.tracking.session or force_restore:
            state = None
        now = _stat(folder)
        plan: list[tuple[str, str, Any]] = []
        to_claim: list[FileReplica] = []
        for file in (DATA_FILE, MAILBOX_FILE):
            name = actor_file_name(act.aid, file)
            saved = state["files"].get(name) if state is not None else None
            if saved is not None and state is not None and _unchanged(file, now, state["stat"]):
                plan.append((name, "state", saved))
            else:
                replica = self.tracking.replica(name)
                to_claim.append(replica)
                plan.append((name, "claimed", replica))
        act.replica.plan = plan
        if not to_claim:
            return
        local = (folder / DATA_FILE).exists() and not force_restore
        if self.tracking.unavailable and local:
            # The store is failing: the wake-up does not wait for it. The files open
            # unclaimed, and a round claims them once the store answers again.
            act.replica.plan = [(name, "unclaimed", None) for name, _, _ in plan]
            return

        def claim_all() -> list[Manifest | None]:
            return [self.writes.takeover(r) for r in to_claim]

        try:
            async with self.limiter:
                previous = await anyio.to_thread.run_sync(claim_all)
        except ReplicaUnavailableError as exc:
            self.tracking.error(exc)
            # Not here, and known to the directory, or this runtime was restored from the
            # replica (whose directory may predate the actor): its files may be only in the
            # replica. Opened empty, it would diverge from them.
            if force_restore or (not local and (known or bool(self.tracking.origin))):
                raise ReplicaUnavailableError(
                    f"{act.describe()} has no usable files here and the replica cannot be "
                    f"reached to restore them ({exc}); it is tried again at the next message"
                ) from exc
            act.replica.plan = [(name, "unclaimed", None) for name, _, _ in plan]
            return
        restore_needed = force_restore or any(
            p is not None and p.snapshot is not None and (not local or not self.writes.ours(p))
            for p in previous
        )
        if not restore_needed:
            return
        # Every file comes from the replica (a mix of local and restored files would not be
        # one state): claim the ones taken up from state too.
        rest = [self.tracking.replica(name) for name, mode, _ in plan if mode == "state"]
        if rest:
            async with self.limiter:
                await anyio.to_thread.run_sync(lambda: [self.writes.takeover(r) for r in rest])
        replicas = [*to_claim, *rest]
        manifests: dict[str, Manifest] = {}
        for r in replicas:
            assert r.manifest is not None
            manifests[r.name] = r.manifest
        # Both files, or neither: a data.db restored beside a mailbox that is not would lose
        # the mailbox's work. The local files are kept aside, in a superseded-* folder.
        restore_all = functools.partial(
            restore_actor, self.store, act.aid, folder, manifests=manifests, supersede=True
        )
        async with self.limiter:
            await anyio.to_thread.run_sync(restore_all)
        self.tracking.stats["restores"] += 1
        act.replica.restored = (
            True  # (what the replica has is the state: a data.db it lacks is new)
        )
        by_name = {r.name: r for r in replicas}
        act.replica.plan = [(name, "claimed", by_name[name]) for name, _, _ in plan]

    def attach(self, act: ReplicatedActor) -> None:
        """After an actor's files are opened: track them (a snapshot is taken when the chain
        cannot go on from the local files)."""
        folder = actor_dir(self.rt.root, act.aid)
        conns = {
            actor_file_name(act.aid, DATA_FILE): (act.data.path, act.data.conn),
            actor_file_name(act.aid, MAILBOX_FILE): (act.mailbox.path, act.mailbox.conn),
        }
        plan = act.replica.plan or [(name, "unclaimed", None) for name in conns]
        act.replica.files = []
        for name, mode, payload in plan:
            path, conn = conns[name]
            if mode == "state":
                replica = self.tracking.replica(name)
                replica.adopt(
                    Manifest.decode(json.dumps(payload["manifest"]).encode(), key=name),
                    payload["etag"],
                    # Nothing touched the file since it was checkpointed and closed.
                    next_salt1=ANY_SALT,
                    checkpointed_frame=payload["checkpointed_frame"],
                    sequence=payload["sequence"],
                )
                tracked = TrackedFile(name, path, conn, replica, act, State.SHIPPING)
                snapshot = replica.needs_snapshot
                tracked.baseline_shipped = not snapshot
            elif mode == "claimed":
                # A new session: the WAL cannot be trusted to go on.
                tracked = TrackedFile(name, path, conn, payload, act, State.SNAPSHOT_DUE)
                snapshot = True
            else:
                tracked = TrackedFile(
                    name, path, conn, self.tracking.replica(name), act, State.UNCLAIMED
                )
                self.tracking.unclaimed[name] = tracked
                snapshot = False  # decided once claimed
            act.replica.files.append(tracked)
            self.tracking.track(tracked)
            if name.endswith(MAILBOX_FILE):
                for token in self.tracking.waiting_appends.pop(act.aid, ()):
                    token.file, token.after_snapshot = tracked, True
            if snapshot:
                self.tracking.want_snapshot(tracked)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(folder / STATE_FILE)
        if self.tracking.origin and all(t.claimed for t in act.replica.files):
            self.tracking.claimed.add(act.aid)
        self.tracking.behind.pop(act.aid, None)  # tracked again: counted through its files
        act.replica.plan = None
        self.writes.capture_due(act)

    async def detach(self, act: ReplicatedActor) -> None:
        """Before an actor's connections close: snapshot each changed file and write its
        manifest without a log tail, one attempt each (the store client retries inside); if
        the store cannot be reached, the actor is left behind and woken to catch up once a
        round succeeds."""
        files = list(act.replica.files)
        if not files:
            return
        with anyio.CancelScope(shield=True):
            for tracked in files:
                tracked.closing = True
            # The mailbox first: data.db must never be in the replica ahead of it. A delivery
            # into the closing mailbox after its snapshot holds data.db's upload back: the
            # mailbox is snapshotted again (a few passes at most, then it is left behind).
            for _ in range(DETACH_PASSES):
                complete = await self._detach_pass(files)
                if complete or not _mailbox_moved_on(files):
                    break
        for tracked in files:
            tracked.final_commits = tracked.commits
        if not complete and not any(t.fenced for t in files):
            for tracked in files:
                tracked.replica.abandon_capture()
                tracked.abandoned = True
            act.replica.saved = None
            self.tracking.behind[act.aid] = (act.spec, act.key)
            self.rt.directory.mark_pending(act.aid, act.spec.name, act.key)
            return
        if act.replica.clear_pending_when_shipped and not any(t.fenced for t in files):
            act.replica.clear_pending_when_shipped = False
            if all(t.commits == t.acked for t in files):
                self.rt.directory.clear_pending(act.aid)
        saved = {}
        for tracked in files:
            state = tracked.replica.saved_state()
            if state is None or tracked.fenced is not None:
                act.replica.saved = None
                return
            saved[tracked.name] = state
        act.replica.saved = {"session": self.tracking.session, "files": saved}

    async def _detach_pass(self, files: list[TrackedFile]) -> bool:
        """One pass of :meth:`detach` over an actor's files; whether all are in the replica
        (not tried while the store is failing: the actor is left behind at once)."""
        if self.tracking.unavailable:
            return False
        complete = True
        for tracked in reversed(files):
            if not complete:
                break
            await tracked.quiet()
            if tracked.fenced is not None:
                continue
            if not tracked.claimed:
                await self.writes.claim_later(tracked)
                if not tracked.claimed or tracked.fenced is not None:
                    complete = False
                    continue
            if tracked.capture is not None and tracked.commits > tracked.capture_commits:
                # A snapshot taken earlier and not uploaded yet (its upload waited, then
                # stopped for the closing): commits came since, so take it again.
                tracked.capture = None
                tracked.advance(Event.DROPPED)
                tracked.replica.abandon_capture()
            if tracked.capture is None and (
                tracked.changed_since_snapshot or tracked.want_snapshot
            ):
                self.writes.capture(tracked, upload=False)
            if tracked.capture is not None:
                await self.writes.upload(tracked, final=True)
            if tracked.capture is not None:
                complete = False
                continue
            if (tracked.tail_set or tracked.replica.unfolded) and not await self.writes.fold(
                tracked, tail=None, tail_from=0
            ):
                complete = False
                continue
        return complete

    def after_close(self, act: ReplicatedActor) -> None:
        """After an actor's connections closed: save what the next wake-up needs (unless a
        commit came after the final snapshot: a delivery while it closed)."""
        saved = act.replica.saved
        files: list[TrackedFile] = act.replica.files
        act.replica.files = []
        for tracked in files:
            self.tracking.untrack(tracked)
            if tracked.commits != tracked.final_commits:
                saved = None
        if saved is None:
            return
        folder = actor_dir(self.rt.root, act.aid)
        saved["stat"] = _stat(folder)
        tmp = folder / f".{STATE_FILE}.new"
        with contextlib.suppress(OSError):
            tmp.write_text(json.dumps(saved, separators=(",", ":")))
            os.replace(tmp, folder / STATE_FILE)


def _mailbox_moved_on(files: list[TrackedFile]) -> bool:
    """Whether a hibernation pass left ``data.db``'s snapshot waiting only because its mailbox
    took a delivery after the mailbox's own snapshot (another pass then completes)."""
    if len(files) != 2:
        return False
    data, mailbox = files
    return (
        data.capture is not None
        and data.fenced is None
        and mailbox.capture is None
        and mailbox.fenced is None
        and mailbox.commits > mailbox.acked
    )


def _read_state(path: Path) -> dict[str, Any] | None:
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _stat(folder: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in (DATA_FILE, MAILBOX_FILE):
        try:
            st = os.stat(folder / name)
            out[name] = [st.st_size, st.st_mtime_ns]
        except FileNotFoundError:
            out[name] = None
        try:
            out[name + "-wal"] = os.stat(folder / f"{name}-wal").st_size
        except FileNotFoundError:
            out[name + "-wal"] = 0
    return out


def _unchanged(file: str, now: dict[str, Any], then: dict[str, Any] | None) -> bool:
    """Whether ``file`` is as hibernation left it, its WAL empty (nothing wrote it since: a
    message appended to a hibernated actor's mailbox makes its next wake-up claim and
    snapshot the mailbox)."""
    if not then or then.get(file) is None:
        return False
    return (
        now.get(file) == then.get(file) and now.get(f"{file}-wal") == then.get(f"{file}-wal") == 0
    )
