"""A full disk gives a clear, typed error, loses nothing and corrupts nothing (DESIGN §7.7).

The child process lowers its file-size limit (RLIMIT_FSIZE, with SIGXFSZ ignored): writes past
it fail as on a full disk, without filling the machine's disk.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

CHILD = textwrap.dedent(
    """
    import json, resource, signal, sys
    from pathlib import Path
    import apsw, trio, actors

    class Blob(actors.Actor):
        async def add(self, n: int) -> int:
            self.sql.execute("CREATE TABLE IF NOT EXISTS b(x BLOB)")
            self.sql.execute("INSERT INTO b VALUES (randomblob(?))", (n,))
            return 1

        @actors.query
        async def count(self) -> int:
            return self.sql.execute("SELECT count(*) FROM b").fetchall()[0][0]

    async def main(root):
        out = {}
        async with actors.open_runtime(root, types=[Blob]) as rt:
            ref = rt.ref(Blob, "x")
            await ref.ask(Blob.add, 10)
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, resource.RLIM_INFINITY))
            ok = 0
            for _ in range(100):
                try:
                    await ref.ask(Blob.add, 20_000)
                    ok += 1
                except actors.ActorFailedError as exc:
                    out["error"] = type(exc.__cause__).__name__
                    out["message"] = str(exc.__cause__)
                    break
            out["ok"] = ok
            resource.setrlimit(
                resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
            )
            await ref.ask(Blob.add, 10)  # wakes it: the kept message runs first, then this one
            out["count"] = await ref.ask(Blob.count)
        files = sorted(Path(root).rglob("data.db"))
        out["integrity"] = [
            apsw.Connection(str(f)).execute("pragma integrity_check").fetchall()[0][0]
            for f in files
        ]
        print(json.dumps(out))

    trio.run(main, sys.argv[1])
    """
)


def test_a_full_disk_is_a_storage_error_and_loses_nothing(tmp_path: Path) -> None:
    """Writes past the file-size limit raise StorageError; every acknowledged send survives."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "rt")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["error"] == "StorageError"
    assert "disk full" in out["message"] and "messages are kept" in out["message"]
    assert out["ok"] >= 1
    # 1 before the limit, the ones that went through, the refused one (kept, run again), 1 after.
    assert out["count"] == 1 + out["ok"] + 1 + 1
    assert out["integrity"] == ["ok"]
