"""``Workflow``: the base class of workflow types, whose actors are runs (DESIGN §9)."""

from __future__ import annotations

import inspect
from typing import Any

import attrs

from .actor import Actor


class Workflow(Actor):
    """Base class of workflow types: long work that runs beside its starter's mailbox.

    Each run is one actor of the type, keyed by its run id, started by
    ``self.start(Flow.run, ...)`` in a handler or ``await rt.start(Flow.run, ...)``; its one
    turn is ``run``, with all of a turn's durable machinery (steps, sleeps, events, asks,
    ``self.set_value``), and it hibernates, wakes and recovers like any actor::

        class Refund(actors.Workflow, name="refund"):
            async def run(self, order: str, amount: int) -> str:
                await self.set_value("stage", "awaiting approval")
                verdict = await self.wait_for_event("approval")
                ...

    ``run`` is its only message handler; other public methods must be ``@actors.query``
    (a message would wait behind the run's turn). Signals go in with ``run.signal``.
    """

    def __init_subclass__(cls, *, name: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(name=name, **kwargs)
        spec = cls.__torpor_spec__
        run = spec.handlers.get("run")
        renamed = [h.name for h in spec.handlers.values() if h.attribute == "run"]
        if run is None and renamed:
            raise TypeError(
                f"{cls.__qualname__}.run is renamed {renamed[0]!r} by @actors.handler(name=...), "
                "but a workflow's entry keeps the name 'run' (its starts are stored under it); "
                "drop name= (retry= and validator= are fine)"
            )
        if run is None or run.is_query:
            raise TypeError(
                f"workflow {cls.__qualname__} needs an `async def run(self, ...)`: its one turn"
            )
        if "id" in run.signature.parameters:
            raise TypeError(
                f"{cls.__qualname__}.run takes a parameter named 'id', which start(..., id=...) "
                "keeps for the run id; rename it"
            )
        for handler in spec.handlers.values():
            if handler.name != "run" and not handler.is_query:
                raise TypeError(
                    f"{cls.__qualname__}.{handler.name} is a message handler, but a run's one "
                    "turn is `run`: a message would wait behind it. Send it in as an event "
                    "(run.signal + self.wait_for_event), or mark it @actors.query"
                )
        if spec.requires_create_arguments() or _own_on_create(cls):
            raise TypeError(
                f"{cls.__qualname__}.on_create: a run gets its arguments in `run`; a workflow "
                "does not define on_create"
            )
        cls.__torpor_spec__ = attrs.evolve(spec, workflow=True)


def _own_on_create(cls: type) -> bool:
    mine = inspect.getattr_static(cls, "on_create", None)
    return mine is not inspect.getattr_static(Actor, "on_create", None)
