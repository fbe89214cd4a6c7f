"""Handler annotations: checks of argument values, and the classes the annotations name.

A handler's annotations are compiled once, when its class is defined (or, for a name that is
not defined yet then, when a runtime opens), into a :data:`Check` per parameter: a tuple of
classes for one ``isinstance`` call, and a predicate for what lies inside (the items of a
``list[int]``, the members of a ``Literal``), or ``None`` when anything goes (no annotation,
``Any``, ``object``, a type variable, a name that cannot be resolved). A call then costs one
``isinstance`` per annotated argument of a plain class, and nothing for an unannotated handler.

The same walk finds the classes a runtime must know to decode values by their registered name:
enums, dataclasses, attrs classes and pydantic models named in annotations, and in their fields.
"""

from __future__ import annotations

import collections.abc as cabc
import dataclasses
import enum
import inspect
import itertools
import sys
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any

import attrs

#: ``(classes, inner)``: a value passes when ``isinstance(value, classes)`` and ``inner`` is
#: ``None`` or ``inner(value)`` is true.
Check = tuple[tuple[type, ...], Callable[[Any], bool] | None]

_UNION_ORIGINS: tuple[Any, ...] = (typing.Union, types.UnionType)
_SEQUENCES = frozenset(
    {
        list,
        set,
        frozenset,
        cabc.Sequence,
        cabc.MutableSequence,
        cabc.Set,
        cabc.MutableSet,
        cabc.Collection,
        cabc.Iterable,
    }
)
_MAPPINGS = frozenset({dict, cabc.Mapping, cabc.MutableMapping})
# What a type checker accepts for these annotations (PEP 484's numeric tower).
_WIDENED: dict[type, tuple[type, ...]] = {float: (float, int), complex: (complex, float, int)}


def compile_check(annotation: Any) -> Check | None:
    """The check of values for ``annotation``; ``None`` if any value passes."""
    try:
        return _compile(annotation)
    except Exception:  # an annotation of a shape this walk does not know: not checked
        return None


def _compile(annotation: Any) -> Check | None:
    if annotation is None or annotation is type(None):
        return (type(None),), None
    if annotation in (inspect.Parameter.empty, Any, object) or isinstance(
        annotation, str | typing.ForwardRef | typing.TypeVar
    ):
        return None
    supertype = getattr(annotation, "__supertype__", None)  # a NewType
    if supertype is not None:
        return _compile(supertype)
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _compile(args[0])
    if origin in _UNION_ORIGINS:
        return _union([_compile(arg) for arg in args])
    if origin is typing.Literal:
        allowed = tuple((type(v), v) for v in args)
        return tuple({kind for kind, _ in allowed}), lambda v: (type(v), v) in allowed
    if isinstance(annotation, type):
        if _is_unchecked_class(annotation):
            return None
        if typing.is_typeddict(annotation):
            return (dict,), None
        return _WIDENED.get(annotation, (annotation,)), None
    if not isinstance(origin, type) or _is_unchecked_class(origin):
        return None
    if origin is tuple:
        return (tuple,), _tuple_items(args)
    if origin in _SEQUENCES and len(args) == 1:
        return (origin,), _each(_compile(args[0]))
    if origin in _MAPPINGS and len(args) == 2:
        keys, values = _each(_compile(args[0])), _each(_compile(args[1]))
        if keys is None and values is None:
            return (origin,), None
        return (
            origin,
        ), lambda v: (keys is None or keys(v.keys())) and (values is None or values(v.values()))
    return (origin,), None  # another generic class (a Ref[Counter]): its class alone


def _each(check: Check | None) -> Callable[[Any], bool] | None:
    """A predicate on an iterable: each of its items passes ``check``."""
    if check is None:
        return None
    classes, inner = check
    if inner is None:  # the common case (list[int]), in C: no Python frame per item
        return lambda items: all(map(isinstance, items, itertools.repeat(classes)))
    return lambda items: all(_passes(check, x) for x in items)


def _is_unchecked_class(cls: type) -> bool:
    # A protocol that is not runtime-checkable cannot be asked isinstance; type[X] and the
    # like hold classes, which no message carries (the codec refuses them anyway).
    return bool(getattr(cls, "_is_protocol", False)) and not getattr(
        cls, "_is_runtime_protocol", False
    )


def _union(members: list[Check | None]) -> Check | None:
    if any(m is None for m in members):
        return None
    checks = [m for m in members if m is not None]
    classes = tuple(dict.fromkeys(c for m in checks for c in m[0]))
    if all(inner is None for _, inner in checks):
        return classes, None
    return classes, lambda v: any(_passes(m, v) for m in checks)


def _tuple_items(args: tuple[Any, ...]) -> Callable[[Any], bool] | None:
    if len(args) == 2 and args[1] is Ellipsis:
        return _each(_compile(args[0]))
    if args == ((),):  # tuple[()]
        return lambda v: len(v) == 0
    if not args:
        return None
    items = [_compile(a) for a in args]
    return lambda v: (
        len(v) == len(items)
        and all(c is None or _passes(c, x) for c, x in zip(items, v, strict=False))
    )


def _passes(check: Check, value: Any) -> bool:
    classes, inner = check
    return isinstance(value, classes) and (inner is None or inner(value))


def passes(check: Check | None, value: Any) -> bool:
    """Whether ``value`` passes ``check`` (``None`` passes anything)."""
    return check is None or _passes(check, value)


def explain(annotation: Any, value: Any) -> str:
    """Where ``value`` fails ``annotation``: ``"must be int (got 'x' that is a str)"``, or for
    an item inside, ``"item [2] must be int (got ...)"``."""
    path, expected, found = _first_failure(annotation, value, "")
    where = f"item {path} " if path else ""
    kind = _kind(found)
    article = "an" if kind[:1].lower() in "aeiou" else "a"
    return f"{where}must be {expected} (got {_short(found)} that is {article} {kind})"


def _first_failure(annotation: Any, value: Any, path: str) -> tuple[str, str, Any]:
    """The path to the first part of ``value`` that fails, what it must be, and that part."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _first_failure(args[0], value, path)
    check = compile_check(annotation)
    if check is not None and _passes((check[0], None), value) and isinstance(origin, type):
        inner: list[tuple[str, Any, Any]] = []
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            inner = [(f"[{i}]", args[0], x) for i, x in enumerate(value)]
        elif origin is tuple and args and args != ((),) and len(args) == len(value):
            inner = [(f"[{i}]", a, x) for i, (a, x) in enumerate(zip(args, value, strict=True))]
        elif origin in _SEQUENCES and len(args) == 1:
            seq = value if isinstance(value, cabc.Sequence) else list(value)
            inner = [(f"[{i}]", args[0], x) for i, x in enumerate(seq)]
        elif origin in _MAPPINGS and len(args) == 2:
            for k, x in value.items():
                inner += [(f"(key {_short(k)})", args[0], k), (f"[{_short(k)}]", args[1], x)]
        for step, part, item in inner:
            if not passes(compile_check(part), item):
                return _first_failure(part, item, path + step)
    return path, describe(annotation), value


def describe(annotation: Any) -> str:
    """An annotation as a reader writes it: ``list[int]``, ``Order | None``."""
    if annotation is None or annotation is type(None):
        return "None"
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__qualname__
    text = repr(annotation)
    for prefix in ("typing.", "collections.abc.", "datetime.", "decimal.", "uuid."):
        text = text.replace(prefix, "")
    return text


def _kind(value: Any) -> str:
    return type(value).__qualname__


def _short(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__qualname__}>"
    return text if len(text) <= 60 else text[:57] + "..."


# -- the classes annotations name ---------------------------------------------------------


def is_pydantic_model(cls: object) -> bool:
    """Whether ``cls`` is a pydantic model class, without importing pydantic: a process that
    never imported it has none."""
    pydantic = sys.modules.get("pydantic")
    if pydantic is None or not isinstance(cls, type):
        return False
    return issubclass(cls, pydantic.BaseModel)


def is_structured(cls: object) -> bool:
    """Whether values of ``cls`` travel as a registered class (enums, dataclasses, attrs
    classes, pydantic models)."""
    return isinstance(cls, type) and (
        issubclass(cls, enum.Enum)
        or dataclasses.is_dataclass(cls)
        or attrs.has(cls)
        or is_pydantic_model(cls)
    )


def classes_named(annotations: Iterable[Any]) -> list[type]:
    """The enums, dataclasses, attrs classes and pydantic models named in ``annotations``, in
    their fields, and in theirs (each once, in the order found)."""
    found: dict[type, None] = {}
    for annotation in annotations:
        _collect(annotation, found)
    return list(found)


def _collect(annotation: Any, found: dict[type, None]) -> None:
    if isinstance(annotation, str | typing.ForwardRef) or annotation is None:
        return
    supertype = getattr(annotation, "__supertype__", None)
    if supertype is not None:
        _collect(supertype, found)
        return
    for arg in typing.get_args(annotation):
        _collect(arg, found)
    if not isinstance(annotation, type) or typing.get_args(annotation):
        return
    if annotation in found or not is_structured(annotation):
        return
    found[annotation] = None
    for field_type in field_types(annotation):
        _collect(field_type, found)


def field_types(cls: type) -> list[Any]:
    """The resolved annotations of a structured class's fields (what cannot be resolved is
    left out: its values still travel by their own registered names)."""
    if issubclass(cls, enum.Enum):
        return []
    if is_pydantic_model(cls):
        return [f.annotation for f in cls.model_fields.values()]  # type: ignore[attr-defined]
    try:
        hints = typing.get_type_hints(cls)
    except Exception:
        return []
    if attrs.has(cls):
        return [hints[a.name] for a in attrs.fields(cls) if a.name in hints]
    return [hints[f.name] for f in dataclasses.fields(cls) if f.name in hints]  # type: ignore[arg-type]


def resolve(annotation: Any, fn: Callable[..., Any]) -> Any:
    """``annotation`` of ``fn``, evaluated if it is still text (``from __future__ import
    annotations``, or a class defined after ``fn``); the text itself if it still cannot be."""
    if not isinstance(annotation, str):
        return annotation
    namespace = getattr(fn, "__globals__", None)
    if namespace is None:
        return annotation
    try:
        return eval(annotation, namespace)  # (the code's own annotation, as typing does)
    except Exception:
        return annotation
