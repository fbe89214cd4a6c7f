"""Where a runtime's files live.

::

    <root>/directory.db                every actor's identity, status and wake-up hints
    <root>/LOCK                        held (flock) by the one process that has the runtime open
    <root>/actors/ab/cd/<id>/data.db   the actor's own database
    <root>/actors/ab/cd/<id>/mailbox.db

``<id>`` is the first 32 hex digits of SHA-256 over ``type NUL key``: keys are never used as file
names (they may hold any character), and the two levels of 256 shards keep a million actors at
about fifteen per folder. The type and key are kept inside the files themselves.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

DIRECTORY_FILE = "directory.db"
LOCK_FILE = "LOCK"
ACTORS_DIR = "actors"
DATA_FILE = "data.db"
MAILBOX_FILE = "mailbox.db"


@functools.lru_cache(maxsize=1 << 16)
def actor_id(type_name: str, key: str) -> str:
    """The stable file-system id of an actor: 32 hex digits (128 bits) of SHA-256."""
    digest = hashlib.sha256(type_name.encode() + b"\0" + key.encode())
    return digest.hexdigest()[:32]


def actor_dir(root: Path, aid: str) -> Path:
    return root / ACTORS_DIR / aid[0:2] / aid[2:4] / aid


def make_actor_dir(folder: Path) -> None:
    """Create an actor's folder if absent: one ``mkdir`` when its shard exists (the common
    case), which is cheaper than ``mkdir(parents=True)`` walking up first."""
    try:
        os.mkdir(folder)
    except FileExistsError:
        pass
    except FileNotFoundError:
        folder.mkdir(parents=True, exist_ok=True)
