"""How ``actors`` and its public submodules present the engine's names as their own."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def publish(module: str, namespace: dict[str, Any], names: Iterable[str]) -> None:
    """Set ``__module__`` to ``module`` on the classes and functions in ``names``.

    Only objects defined in the engine (``runtime``) are renamed, each once (the first public
    module to publish a name keeps it). A renamed class still pickles: ``module`` exports it
    under the same name.
    """
    for name in names:
        obj = namespace[name]
        if not (isinstance(obj, type) or callable(obj)):
            continue  # a constant (actors.testing.START): it has no __module__ of its own
        current = getattr(obj, "__module__", None)
        if not isinstance(current, str) or not current.startswith("runtime."):
            continue
        if getattr(obj, "__qualname__", name) != name:
            raise RuntimeError(f"{module}.{name} is {obj.__qualname__}: publish it by that name")
        try:
            obj.__module__ = module
        except (AttributeError, TypeError):  # pragma: no cover (a builtin-like object)
            continue
