"""A corrupt ``mailbox.db`` and a really full file system give typed errors and acknowledge
nothing they cannot keep (DESIGN §7.1 and §7.7)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import apsw
import pytest

import actors
from runtime.files import mailbox as mailboxes
from runtime.files.layout import MAILBOX_FILE, actor_dir, actor_id
from runtime.files.mailbox import Mailbox, Message


class Box(actors.Actor):
    async def on_create(self) -> None:
        self.sql.execute("CREATE TABLE IF NOT EXISTS got(x INTEGER)")

    async def put(self, x: int) -> int:
        self.sql.execute("INSERT INTO got VALUES (?)", (x,))
        return x

    async def fail(self) -> None:
        raise ValueError("kept as a dead letter")

    @actors.query
    async def got(self) -> list[int]:
        return [row[0] for row in self.sql.execute("SELECT x FROM got ORDER BY rowid")]


def _root_page(conn: apsw.Connection, table: str) -> int:
    """The offset of ``table``'s root page in the file."""
    ((rootpage,),) = conn.execute(
        "SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)
    ).fetchall()
    page_size = conn.pragma("page_size")
    assert isinstance(rootpage, int) and isinstance(page_size, int)
    return (rootpage - 1) * page_size


def _page_header(path: Path, table: str) -> tuple[int, bytes]:
    """The offset and bytes of the b-tree page header of ``table``'s root page."""
    conn = apsw.Connection(str(path))
    try:
        offset = _root_page(conn, table)
    finally:
        conn.close()
    return offset, path.read_bytes()[offset : offset + 8]


def _break_page(path: Path, table: str) -> tuple[int, bytes]:
    """Overwrite the b-tree page header of ``table``'s root page in a closed database; return
    where it was and what it held."""
    Path(f"{path}-wal").unlink(missing_ok=True)  # (closed cleanly: everything is in the file)
    offset, header = _page_header(path, table)
    _write_at(path, offset, b"\xff" * len(header))
    return offset, header


def _write_at(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(data)


@pytest.mark.parametrize("table", ["inbox", "dead_letters", "idempotency"])
async def test_a_send_into_a_corrupt_mailbox_is_refused_with_a_corrupt_file_error(
    root: Path, table: str
) -> None:
    """Sends and asks into a corrupt mailbox.db raise CorruptFileError naming it; none is stored."""
    # The bad page may be in whichever table the mailbox holds; other actors keep working.
    async with actors.open_runtime(root, types=[Box]) as rt:
        box = rt.ref(Box, "b")
        await box.options(idempotency_key="first").send(Box.put, 1)
        with pytest.raises(actors.MessageFailedError):
            await box.ask(Box.fail)
        assert await box.ask(Box.put, 2) == 2
    path = actor_dir(root, actor_id("Box", "b")) / MAILBOX_FILE
    offset, header = _break_page(path, table)

    async with actors.open_runtime(root, types=[Box]) as rt:
        box = rt.ref(Box, "b")
        with pytest.raises(actors.CorruptFileError) as sent:
            await box.send(Box.put, 3)
        assert sent.value.path == str(path)
        with pytest.raises(actors.CorruptFileError):
            await box.ask(Box.put, 4)
        assert await rt.ref(Box, "other").ask(Box.put, 5) == 5
        with pytest.raises(actors.CorruptFileError):
            await box.send(Box.put, 6)  # (still refused: nothing was written meanwhile)

    _write_at(path, offset, header)  # repaired: what the refused calls left in it would run now
    async with actors.open_runtime(root, types=[Box]) as rt:
        box = rt.ref(Box, "b")
        assert await box.ask(Box.put, 7) == 7
        assert await box.ask(Box.got) == [1, 2, 7]


def test_a_mailbox_found_corrupt_while_open_takes_no_new_message(tmp_path: Path) -> None:
    """A bad page met in an open mailbox is a CorruptFileError; then it takes no new message."""
    # Met by the turn loop, say; it is never a raw apsw error.
    path = tmp_path / MAILBOX_FILE
    box = Mailbox(path, synchronous="NORMAL", type_name="Box", key="b", image=mailboxes.image)
    try:
        seq = box.append("put", b"1")
        box.dead_letter(
            Message(seq, None, None, "put", b"1", None, 1), ValueError("no"), "exhausted"
        )
        box.conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
        _write_at(path, _root_page(box.conn, "dead_letters"), b"\xff" * 8)
        box.conn.release_memory()  # (read the page from the file again)
        with pytest.raises(actors.CorruptFileError) as read:
            box.dead_letters()
        assert read.value.path == str(path)
        with pytest.raises(actors.CorruptFileError, match="takes no new message"):
            box.append("put", b"2")  # (its inbox pages are sound: refused all the same)
        assert box.conn.execute("SELECT seq FROM inbox").fetchall() == [(seq,)]
        with pytest.raises(actors.CorruptFileError):
            box.load(0, 10, recovered=False)  # (what the turn loop reads meets the bad page)
    finally:
        box.close()


# -- a real full file system ------------------------------------------------------------------

#: The tmpfs the child fills, and the ballast it frees afterwards: more than half of it, so
#: that what filled the rest always fits again once checkpointed out of the logs.
TMPFS_KIB = 1024
BALLAST_KIB = 576

CHILD = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    import apsw, trio, actors

    class Sink(actors.Actor):
        async def on_create(self) -> None:
            self.sql.execute("CREATE TABLE IF NOT EXISTS applied(id INTEGER)")
            self.sql.execute("CREATE TABLE IF NOT EXISTS blobs(x BLOB)")

        async def put(self, n: int, pad: bytes) -> None:
            self.sql.execute("INSERT INTO applied VALUES (?)", (n,))

        async def grow(self, n: int, size: int) -> int:
            self.sql.execute("INSERT INTO applied VALUES (?)", (n,))
            self.sql.execute("INSERT INTO blobs VALUES (randomblob(?))", (size,))
            return n

        @actors.query
        async def ids(self) -> list[int]:
            return [r[0] for r in self.sql.execute("SELECT id FROM applied ORDER BY id")]

    def kind(exc):
        name = f"{type(exc).__module__}.{type(exc).__qualname__}"
        cause = exc.__cause__
        if isinstance(exc, actors.ActorFailedError) and cause is not None:
            name += f" <- {type(cause).__module__}.{type(cause).__qualname__}"
        return name

    async def main(mount, ballast_bytes):
        mount = Path(mount)
        root = mount / "rt"
        ballast = mount / "ballast"
        ballast.write_bytes(b"\\0" * ballast_bytes)
        calls = []  # [key, id, how, outcome]
        async with actors.open_runtime(root, types=[Sink]) as rt:
            await rt.ref(Sink, "q").ask(Sink.grow, 0, 10)  # hibernated when the disk is full
        async with actors.open_runtime(root, types=[Sink]) as rt:
            n, failures = 0, 0
            while failures < 12 and n < 500:
                n += 1
                how = "send" if n % 3 else "ask"
                try:
                    if how == "send":
                        await rt.ref(Sink, "s").send(Sink.put, n, b"p" * 3000)
                    else:
                        await rt.ref(Sink, "s").ask(Sink.grow, n, 8000)
                    calls.append(["s", n, how, "ok"])
                    failures = 0
                except Exception as exc:
                    calls.append(["s", n, how, kind(exc)])
                    failures += 1
            for how in ("send", "ask"):  # actors the full disk has never seen
                n += 1
                key = f"new-{how}"
                try:
                    if how == "send":
                        await rt.ref(Sink, key).send(Sink.put, n, b"")
                    else:
                        await rt.ref(Sink, key).ask(Sink.grow, n, 10)
                    calls.append([key, n, how, "ok"])
                except Exception as exc:
                    calls.append([key, n, how, kind(exc)])
            try:
                await rt.ref(Sink, "q").ask(Sink.ids)
                calls.append(["q", None, "query", "ok"])
            except Exception as exc:
                calls.append(["q", None, "query", kind(exc)])

            ballast.unlink()
            applied = {}
            for key in sorted({call[0] for call in calls}):
                n += 1
                await rt.ref(Sink, key).ask(Sink.grow, n, 10)  # after every kept message
                calls.append([key, n, "ask", "ok"])
                applied[key] = await rt.ref(Sink, key).ask(Sink.ids)
        integrity = {
            str(f.relative_to(root)): apsw.Connection(str(f))
            .execute("pragma integrity_check")
            .fetchall()[0][0]
            for f in sorted(root.rglob("*.db"))
        }
        print(json.dumps({"calls": calls, "applied": applied, "integrity": integrity}))

    trio.run(main, sys.argv[1], int(sys.argv[2]))
    """
)

_MOUNT = 'mount -t tmpfs -o size="$1" tmpfs "$2"'


def _unshare_or_skip(tmp_path: Path) -> None:
    """Skip unless a tmpfs can be mounted in a new user and mount namespace here."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) to mount a small tmpfs to fill")
    probe = tmp_path / "probe"
    probe.mkdir()
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", _MOUNT, "sh", "16k", str(probe)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(
            "cannot mount a tmpfs in a user namespace here (unshare -rm: "
            f"{done.stderr.strip() or done.returncode})"
        )


def test_a_really_full_disk_refuses_sends_with_storage_error_and_loses_nothing(
    tmp_path: Path,
) -> None:
    """A full disk refuses sends with StorageError; once freed, each acked send applies once."""
    # ENOSPC, not a file-size limit. Sends and asks are refused with StorageError, never a raw apsw
    # error; once space is free, no refused one is applied, and every file passes integrity_check.
    _unshare_or_skip(tmp_path)
    mount = tmp_path / "mnt"
    mount.mkdir()
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    done = subprocess.run(
        [
            "unshare",
            "-rm",
            "sh",
            "-c",
            _MOUNT + ' && exec "$3" "$4" "$2" "$5"',
            "sh",
            f"{TMPFS_KIB}k",
            str(mount),
            sys.executable,
            str(child),
            str(BALLAST_KIB * 1024),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    calls, applied = out["calls"], out["applied"]

    outcomes = {outcome for _, _, _, outcome in calls}
    storage = "actors.StorageError"
    kept = f"actors.ActorFailedError <- {storage}"  # stored, its turn could not commit
    assert outcomes <= {"ok", storage, kept}, outcomes
    sends = [call for call in calls if call[2] == "send"]
    assert any(call[3] == "ok" for call in sends) and any(call[3] == storage for call in sends)
    assert any(call[0].startswith("new-") and call[3] == storage for call in calls)

    for key, n, how, outcome in calls:
        if how == "query":
            continue
        times = applied[key].count(n)
        if outcome == storage:
            assert times == 0, f"refused {how} {n} to {key!r} was applied"
        else:
            assert times == 1, f"{how} {n} to {key!r} ({outcome}) applied {times} times"
    assert out["integrity"] and set(out["integrity"].values()) == {"ok"}, out["integrity"]


def test_the_runtime_remembers_a_bounded_number_of_checked_mailboxes(tmp_path: Path) -> None:
    """Memory for the mailboxes checked since the runtime opened stays bounded (oldest go)."""
    from runtime.files.db import CheckedFiles

    checked = CheckedFiles(limit=2)
    a, b, c = (tmp_path / name for name in "abc")
    checked.add(a)
    checked.add(b)
    assert a in checked  # (and now the most recently used)
    checked.add(c)
    assert a in checked and c in checked and b not in checked
    checked.discard(a)
    assert a not in checked


@pytest.mark.real_clock
async def test_an_awake_actor_whose_mailbox_turns_out_corrupt_is_restored_from_the_replica(
    tmp_path: Path,
) -> None:
    """An awake actor whose mailbox proves corrupt stops; its next message restores it."""
    # The bad page is met by a call on the awake actor (here: listing its dead letters), and the
    # next message wakes it restored from the replica; otherwise every send would be refused until
    # the actor happened to hibernate.
    root, replica = tmp_path / "rt", actors.DirectoryStore(tmp_path / "replica")
    fast = actors.Replication(min_delay=0.005, max_delay=0.05)
    async with actors.open_runtime(root, types=[Box], replica=replica, replication=fast) as rt:
        box = rt.ref(Box, "b")
        assert await box.ask(Box.put, 1) == 1
    async with actors.open_runtime(root, types=[Box], replica=replica, replication=fast) as rt:
        box = rt.ref(Box, "b")
        assert await box.ask(Box.put, 2) == 2  # awake, its mailbox found sound at its wake-up
        await rt.replicated()
        path = actor_dir(root, actor_id("Box", "b")) / MAILBOX_FILE
        _break_page(path, "dead_letters")  # damaged on disk under the open connection
        rt._engine.awake[actor_id("Box", "b")].mailbox.conn.release_memory()  # (not in its cache)
        with pytest.raises(actors.CorruptFileError):
            await rt.dead_letters(box)
        assert await box.ask(Box.put, 3) == 3  # woken again: restored from the replica
        assert await box.ask(Box.got) == [1, 2, 3]
