"""The runtime's ``LOCK``, held by an offline operation that writes a closed runtime's files."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from ..files import lock
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
    if check:
        check_root(root)
    fd = lock.take(root, f"{what} in that process (Runtime methods) or once it has closed")
    try:
        yield
    finally:
        lock.release(fd)
