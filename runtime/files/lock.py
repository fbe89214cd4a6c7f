"""The runtime directory's ``LOCK``: one process at a time has a runtime open, or writes a
closed runtime's files offline (``torpor restore``, ``fork``, ``dead-letters replay``).

The holder takes an exclusive ``flock`` on ``<root>/LOCK`` and writes its pid there, so that a
process refused names the holder. Inspection tools (``torpor status``, ``ls``) only probe it
with a shared lock for an instant (``runtime/ops/inspect.py``); an opening runtime retries for
``LOCK_WAIT`` before concluding another process holds it.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from ..errors import RuntimeLockedError
from .layout import LOCK_FILE

#: Seconds to retry taking the runtime's LOCK before reporting it held (an inspection's shared
#: probe holds it for an instant).
LOCK_WAIT = 0.2


def take(root: Path, refusal: str, *, wait: float = 0.0) -> int:
    """Hold ``root``'s ``LOCK`` (retrying for ``wait`` seconds) with this process's pid in it;
    returns the descriptor to :func:`release`. :class:`RuntimeLockedError` if another holds it:
    "<root> is open in <holder>; <refusal>"."""
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() < deadline:
                time.sleep(0.005)
                continue
            who = holder(fd)
            os.close(fd)
            raise RuntimeLockedError(f"{root} is open in {who}; {refusal}") from None
        except BaseException:
            os.close(fd)
            raise
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # who holds it, for error messages
    except BaseException:
        os.close(fd)
        raise
    return fd


def release(fd: int) -> None:
    """Let go of the ``LOCK`` taken by :func:`take`."""
    os.close(fd)


def holder(fd: int) -> str:
    """Who holds the runtime's ``LOCK``, from the pid its holder wrote there: "another process
    (pid N)", or, when N is this process's own pid, "this very process" (an ``open_runtime`` of
    the same directory not closed yet, or a process of another pid namespace with that pid)."""
    try:
        pid = os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        return "another process"
    if not pid.isdigit():
        return "another process"
    if int(pid) == os.getpid():
        return (
            f"this very process (pid {pid}, by an open_runtime not closed yet; or by a process "
            "of another container that has the same pid)"
        )
    return f"another process (pid {pid})"
