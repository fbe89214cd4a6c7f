"""Offline operator logic, on a closed runtime directory or a replica: :mod:`.inspect` (read-only
views and SQL), :mod:`.deadletters` (replay, drop), :mod:`.restore` (a runtime, an actor, or
files to read), :mod:`.fork`, :mod:`.lock` (the runtime's ``LOCK`` while writing); and
:mod:`.call`, one send or ask into a closed runtime, opened for that call.

No argparse and no printing: functions take paths, a ``ReplicaStore`` and keys, return records,
raise the typed errors of :mod:`runtime.errors`, and take callbacks for progress. Only
:mod:`runtime.cli` imports this package; the engine never does."""
