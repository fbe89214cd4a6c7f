"""Deterministic crash testing of your actors, under virtual time.

    from actors.testing import check_crashes

    report = check_crashes(scenario, types=[MyAgent])

runs ``scenario(rt)`` once without crashes, then once per crash point (before and after every
step, ask, durable wait and commit), crashing the runtime there, reopening it and running the
scenario again; each run must end with the same state and the same step-function calls.
"""

from runtime.testing import START, CrashReport, SimulatedCrash, actor_state, check_crashes

from ._public import publish as _publish

__all__ = ["START", "CrashReport", "SimulatedCrash", "actor_state", "check_crashes"]

_publish(__name__, globals(), __all__)
