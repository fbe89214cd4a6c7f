"""The runtime's ``LOCK``, held by an offline operation that writes a closed runtime's files."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from ..errors import RuntimeLockedError
from ..files.layout import LOCK_FILE
from .inspect import check_root


@contextlib.contextmanager
def runtime_lock(root: Path, what: str, *, check: bool = True) -> Iterator[None]:
    """Hold the runtime's ``LOCK`` as ``open_runtime`` does (so no runtime opens meanwhile),
    with this process's pid in it (a runtime refused meanwhile names this process, not the
    last one that held it).

    ``what`` says the operation in the :class:`RuntimeLockedError` raised when a process has
    the runtime open; ``check``: the directory must hold a runtime already
    (:class:`NotARuntimeError` if not).
    """
    from ..engine import _lock_holder  # the engine's reading of the pid its holder wrote

    if check:
        check_root(root)
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeLockedError(
                f"{root} is open in {_lock_holder(fd)}; {what} in that process (Runtime "
                "methods) or once it has closed"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
