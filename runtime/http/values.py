"""Values over HTTP: JSON turned into a handler's annotated types, and results back to JSON.

Both ways go through one cattrs converter (cattrs is already the codec's structuring library):
JSON into the annotations of a handler's parameters (``structure_call``), and any value a
handler returns into JSON (``to_json``). Scalars are strict (``"3"`` is no ``int``, ``true``
is no ``int``); ``bytes`` travel as base64 text, ``Decimal`` as its exact text, datetimes,
dates and times as ISO 8601, ``timedelta`` as seconds, ``UUID`` as text, enums by value,
dataclasses and attrs classes as objects of their fields, pydantic models by their own JSON
mode, tuples and sets as lists, and a ``Ref`` as ``{"type": ..., "key": ...}``.

An annotation cattrs has no hook for (a union of two scalar types, say) leaves the JSON value
as it is: the engine's own check of the call (``spec.py``) then accepts or refuses it.

This module imports neither starlette nor httpx: the client (``client.py``) shares it.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import decimal
import enum
import functools
import inspect
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import InvalidArgumentsError
from ..ref import Ref
from ..typecheck import describe, is_pydantic_model, resolve

if TYPE_CHECKING:
    import cattrs

    from ..spec import HandlerSpec


def _strict(cls: type, accepted: tuple[type, ...]) -> Callable[[Any, Any], Any]:
    def structure(value: Any, _type: Any) -> Any:
        if type(value) not in accepted:
            raise TypeError(f"must be {cls.__name__} (got {_short(value)})")
        return cls(value)

    return structure


def _text_of(cls: type, parse: Callable[[str], Any]) -> Callable[[Any, Any], Any]:
    def structure(value: Any, _type: Any) -> Any:
        if not isinstance(value, str):
            raise TypeError(f"must be {cls.__name__} as text (got {_short(value)})")
        try:
            return parse(value)
        except (ValueError, ArithmeticError, binascii.Error) as exc:
            raise ValueError(
                f"must be {cls.__name__} as text (got {_short(value)}: {exc})"
            ) from None

    return structure


def _decimal(value: Any, _type: Any) -> decimal.Decimal:
    if type(value) is int:
        return decimal.Decimal(value)
    return _text_of(decimal.Decimal, decimal.Decimal)(value, _type)  # type: ignore[no-any-return]


def _timedelta(value: Any, _type: Any) -> _dt.timedelta:
    if type(value) not in (int, float):
        raise TypeError(f"must be timedelta as seconds (got {_short(value)})")
    return _dt.timedelta(seconds=value)


@functools.cache
def converter() -> cattrs.Converter:
    """The converter between JSON values and typed ones (made at first use)."""
    import cattrs
    from cattrs.strategies import configure_union_passthrough

    c = cattrs.Converter(detailed_validation=True)
    # A union of JSON scalars (``int | str``, in a field too) takes a value of one of them.
    configure_union_passthrough(str | int | float | bool | None, c)
    c.register_structure_hook(int, _strict(int, (int,)))
    c.register_structure_hook(float, _strict(float, (int, float)))
    c.register_structure_hook(str, _strict(str, (str,)))
    c.register_structure_hook(bool, _strict(bool, (bool,)))
    c.register_structure_hook(bytes, _text_of(bytes, lambda s: base64.b64decode(s, validate=True)))
    c.register_structure_hook(decimal.Decimal, _decimal)
    c.register_structure_hook(_dt.datetime, _text_of(_dt.datetime, _dt.datetime.fromisoformat))
    c.register_structure_hook(_dt.date, _text_of(_dt.date, _dt.date.fromisoformat))
    c.register_structure_hook(_dt.time, _text_of(_dt.time, _dt.time.fromisoformat))
    c.register_structure_hook(_dt.timedelta, _timedelta)
    c.register_structure_hook(uuid.UUID, _text_of(uuid.UUID, uuid.UUID))
    c.register_structure_hook_func(is_pydantic_model, lambda v, t: t.model_validate(v))
    c.register_unstructure_hook(bytes, lambda b: base64.b64encode(b).decode("ascii"))
    c.register_unstructure_hook(decimal.Decimal, str)
    for moment in (_dt.datetime, _dt.date, _dt.time):
        c.register_unstructure_hook(moment, lambda m: m.isoformat())
    c.register_unstructure_hook(_dt.timedelta, lambda d: d.total_seconds())
    c.register_unstructure_hook(uuid.UUID, str)
    c.register_unstructure_hook_func(is_pydantic_model, lambda m: m.model_dump(mode="json"))
    c.register_unstructure_hook(Ref, lambda r: {"type": r.type_name, "key": r.key})
    for collection in (set, frozenset, tuple):
        c.register_unstructure_hook(collection, lambda items: [c.unstructure(i) for i in items])
    return c


def to_json(value: Any) -> Any:
    """``value`` (a handler's result, a run's value) as a JSON-able value."""
    if isinstance(value, enum.Enum):
        return to_json(value.value)
    return converter().unstructure(value)


def from_json(annotation: Any, value: Any) -> Any:
    """The JSON ``value`` as ``annotation`` says (unchanged where it says nothing)."""
    if annotation in (inspect.Parameter.empty, Any, object) or isinstance(annotation, str):
        return value
    import cattrs

    try:
        return converter().structure(value, annotation)
    except cattrs.errors.StructureHandlerNotFoundError:
        return value


def structure_call(
    type_name: str, handler: HandlerSpec, args: list[Any], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A call's JSON ``args`` and ``kwargs`` as the handler's annotated types, or
    :class:`InvalidArgumentsError` saying which argument does not fit and why."""
    try:
        bound = handler.signature.bind(None, *args, **kwargs)
    except TypeError as exc:
        raise InvalidArgumentsError(f"{type_name}.{handler.name}: {exc}") from None
    kinds = inspect.Parameter
    for name, value in list(bound.arguments.items())[1:]:
        param = handler.signature.parameters[name]
        annotation = resolve(param.annotation, handler.fn)
        if param.kind == kinds.VAR_POSITIONAL:
            items = [(f"{name}[{i}]", i, v) for i, v in enumerate(value)]
            bound.arguments[name] = tuple(_one(type_name, handler, annotation, items))
        elif param.kind == kinds.VAR_KEYWORD:
            items = [(k, k, v) for k, v in value.items()]
            bound.arguments[name] = dict(
                zip(value, _one(type_name, handler, annotation, items), strict=True)
            )
        else:
            (bound.arguments[name],) = _one(type_name, handler, annotation, [(name, 0, value)])
    return tuple(bound.args[1:]), dict(bound.kwargs)


def _one(
    type_name: str, handler: HandlerSpec, annotation: Any, items: list[tuple[str, Any, Any]]
) -> list[Any]:
    import cattrs

    converted = []
    for label, _, value in items:
        try:
            converted.append(from_json(annotation, value))
        except (cattrs.errors.CattrsError, TypeError, ValueError) as exc:
            if isinstance(exc, cattrs.BaseValidationError):
                why = "; ".join(cattrs.transform_error(exc, path="value"))
            else:
                why = str(exc)
            raise InvalidArgumentsError(
                f"{type_name}.{handler.name}: argument {label!r} must be "
                f"{describe(annotation)} ({why})"
            ) from None
    return converted


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
