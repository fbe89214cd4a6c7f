"""msgpack with an allow-list of types; never pickle.

The ext codes below are persisted in every mailbox and data file: never renumber them.

A value either comes back equal and of the same types, or is refused with
:class:`EncodingError`: subclasses of the builtins (other than registered enums), ``bytearray``
and ``memoryview`` (they would come back as other types), instances of classes this codec does
not know, and values nested more than :data:`MAX_DEPTH` levels deep (values that contain
themselves among them).

Classes travel by a stable registered name, so a value needs no annotation to come back as
itself (a step's result, an event, a kv value): enums by value, and dataclasses, attrs classes
and pydantic models as ``[name, {field: value}]``, each field value encoded in turn (a nested
instance carries its own name). cattrs makes the field mappings of dataclasses and attrs
classes and rebuilds them (missing fields take their defaults, removed fields are ignored);
pydantic models use pydantic's own ``model_validate``. A codec knows the classes it was given,
and those registered process-wide with :func:`register_type`.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import decimal
import enum
import functools
import uuid
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, overload

import attrs
import msgpack

from .errors import DecodingError, EncodingError
from .typecheck import is_pydantic_model, is_structured

T = TypeVar("T", bound=type)

# Persisted ext codes. Append only.
EXT_TUPLE = 1
EXT_SET = 2
EXT_FROZENSET = 3
EXT_DATETIME = 4
EXT_DATE = 5
EXT_TIME = 6
EXT_TIMEDELTA = 7
EXT_UUID = 8
EXT_ATTRS = 9  # [name, {field: value}]: attrs classes (its first users), dataclasses, pydantic
EXT_REF = 10
EXT_BIGINT = 11
EXT_DECIMAL = 12  # its exact text
EXT_ENUM = 13  # [name, value]

_CONTAINER_CODES = frozenset({EXT_TUPLE, EXT_SET, EXT_FROZENSET, EXT_ATTRS, EXT_ENUM})

# Classes registered process-wide with register_type: every codec knows them.
_REGISTERED: dict[type, str] = {}
_REGISTERED_NAMES: dict[str, type] = {}

_HOW_TO_REGISTER = (
    "name it in a handler's annotations, register it with actors.register_type({cls}), or "
    "pass it in open_runtime(message_types=[...])"
)


@overload
def register_type(cls: T, /, *, name: str | None = None) -> T: ...


@overload
def register_type(cls: None = None, /, *, name: str | None = None) -> Callable[[T], T]: ...


def register_type(cls: T | None = None, /, *, name: str | None = None) -> T | Callable[[T], T]:
    """Let messages, results, step values, events and kv values carry instances of ``cls``.

    ``cls`` is an enum, a dataclass, an attrs class or a pydantic model. Its values are
    stored under ``name`` (default: ``"module.QualifiedName"``), so give a name to keep stored
    values readable when the class moves or is renamed. Classes named in the annotations of a
    runtime's handlers (and in their fields) need no registration unless they need a name;
    register the others (a step's result type, an event's payload type) before
    ``open_runtime``. Returns ``cls``, so it works as a class decorator, with or without
    ``name``: ``@actors.register_type(name="shop.Order")``.

    Raises ``TypeError`` for another kind of class (or a field that ``__init__`` does not
    take: it could not be restored), and ``ValueError`` when the name belongs to another
    class, or ``cls`` was registered under another name.
    """
    if cls is None:
        return functools.partial(register_type, name=name)
    check_structured(cls, "register_type")
    chosen = name if name is not None else default_name(cls)
    if not isinstance(chosen, str) or not chosen or len(chosen) > 200:
        raise ValueError(
            f"a registered type name must be a non-empty str of at most 200 characters "
            f"(got {chosen!r})"
        )
    other = _REGISTERED_NAMES.get(chosen)
    if other is not None and other is not cls:
        raise ValueError(
            f"the registered type name {chosen!r} already belongs to "
            f"{other.__module__}.{other.__qualname__}"
        )
    known = _REGISTERED.get(cls)
    if known is not None and known != chosen:
        raise ValueError(f"{cls.__qualname__} is already registered as {known!r}")
    _REGISTERED[cls] = chosen
    _REGISTERED_NAMES[chosen] = cls
    return cls


def default_name(cls: type) -> str:
    """The name a class is stored under unless registered with another: its
    ``__torpor_name__`` if it has one, else ``"module.QualifiedName"``."""
    registered = _REGISTERED.get(cls)
    if registered is not None:
        return registered
    return getattr(cls, "__torpor_name__", None) or f"{cls.__module__}.{cls.__qualname__}"


def check_structured(cls: object, where: str) -> None:
    """``TypeError`` unless ``cls`` can travel by name (and be rebuilt from its fields)."""
    if not is_structured(cls):
        raise TypeError(
            f"{where} takes enums, dataclasses, attrs classes and pydantic models (got "
            f"{cls!r}); decorate it with @dataclasses.dataclass or @attrs.frozen"
        )
    assert isinstance(cls, type)
    if attrs.has(cls):
        hidden = [a.name for a in attrs.fields(cls) if not a.init]
    elif dataclasses.is_dataclass(cls):
        hidden = [f.name for f in dataclasses.fields(cls) if not f.init]
    else:
        hidden = []
    if hidden:
        raise TypeError(
            f"message type {cls.__qualname__} has a field {hidden[0]!r} with init=False, "
            "which could not be restored on decoding"
        )


def fields_of(obj: Any) -> dict[str, Any]:
    """The fields of an instance of a class that travels as its fields, as they are stored."""
    return _cached_field_functions(type(obj))[0](obj)


_FIELD_FUNCTIONS: dict[type, tuple[Callable[[Any], dict[str, Any]], Callable[[Any], Any]]] = {}


def _cached_field_functions(
    cls: type,
) -> tuple[Callable[[Any], dict[str, Any]], Callable[[Any], Any]]:
    found = _FIELD_FUNCTIONS.get(cls)
    if found is None:
        found = _FIELD_FUNCTIONS[cls] = _field_functions(cls)
    return found


@functools.cache
def _converter() -> Any:
    """The cattrs converter of field mappings, made at first use (``import actors`` does not
    import cattrs). Field values are left as they are: the codec encodes each by its own type,
    and decodes it back to that type before the class is rebuilt."""
    import cattrs

    converter = cattrs.Converter(use_alias=True, detailed_validation=False)
    converter.register_unstructure_hook_func(lambda _t: True, lambda value: value)
    converter.register_structure_hook_func(lambda _t: True, lambda value, _t: value)
    return converter


def _field_functions(cls: type) -> tuple[Callable[[Any], dict[str, Any]], Callable[[Any], Any]]:
    """``(to_fields, from_fields)`` of a class that travels as its fields."""
    if is_pydantic_model(cls):
        names = tuple(cls.model_fields)  # type: ignore[attr-defined]

        def to_fields(obj: Any) -> dict[str, Any]:
            extra = obj.__pydantic_extra__
            fields = {name: getattr(obj, name) for name in names}
            return {**fields, **extra} if extra else fields

        def from_fields(fields: Any) -> Any:
            return cls.model_validate(fields, by_name=True, by_alias=False)  # type: ignore[attr-defined]

        return to_fields, from_fields
    from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn

    converter = _converter()
    structure: Callable[[Any, type], Any] = make_dict_structure_fn(cls, converter)
    return make_dict_unstructure_fn(cls, converter), lambda fields: structure(fields, cls)


#: How deeply a value may nest: lists, dicts, tuples, sets, frozensets and instances of
#: registered classes each count one level (``[[1]]`` is two). Deeper values are refused when
#: encoded and when decoded, so anything encoded also decodes; a value that contains itself is
#: refused as too deep. Each level of tuple, set or class instance costs a nested msgpack call,
#: so an unbounded depth would overflow Python's recursion limit or the C stack (a crash).
MAX_DEPTH = 100

# Nested payloads this deep decode through a heap-allocated Unpacker: ``unpackb`` keeps about
# 40 KiB of state on the C stack per call: 100 nested calls would take half of an 8 MiB stack.
_UNPACKB_LEVELS = 8

# A ref in a message is (type name, key); the runtime turns it back into a live ref.
RefEncoder = Callable[[Any], "tuple[str, str] | None"]
RefDecoder = Callable[[str, str], Any]


class Codec:
    """Encodes and decodes message payloads, replies and kv values."""

    def __init__(
        self,
        message_types: Iterable[type] = (),
        *,
        named_types: Iterable[type] = (),
        ref_encoder: RefEncoder | None = None,
        ref_decoder: RefDecoder | None = None,
    ) -> None:
        """``message_types``: classes given by the user (each checked: ``TypeError`` if it
        cannot travel). ``named_types``: classes found in handler annotations (one that cannot
        travel is left out: a value of it is refused when sent, saying why)."""
        self._by_class: dict[type, str] = {}
        self._by_name: dict[str, type] = {}
        #: ``(to_fields, from_fields)`` of each known class that travels as its fields.
        self._fields: dict[type, tuple[Callable[[Any], dict[str, Any]], Callable[[Any], Any]]]
        self._fields = {}
        for cls in message_types:
            check_structured(cls, "message_types")
            self._add(cls)
        for cls in named_types:
            try:
                check_structured(cls, "named_types")
            except TypeError:
                continue
            self._add(cls)
        self._ref_encoder = ref_encoder
        self._ref_decoder = ref_decoder
        self._packer = msgpack.Packer(default=self._default, strict_types=True, use_bin_type=True)
        self._reset_walked()
        # The ext hook of each nesting level (the level is counted, never shared state).
        self._hooks = [functools.partial(self._ext_hook, d) for d in range(1, MAX_DEPTH + 3)]

    def _add(self, cls: type) -> str:
        name = default_name(cls)
        other = self._by_name.get(name)
        if other is not None and other is not cls:
            raise ValueError(
                f"two message types share the name {name!r}: {other!r} and {cls!r}; give one "
                "of them another with actors.register_type(cls, name=...)"
            )
        self._by_class[cls] = name
        self._by_name[name] = cls
        return name

    def _reset_walked(self) -> None:
        # Types the depth check looks inside (or refuses): containers, classes of fields.
        self._walked = frozenset({list, dict, tuple, set, frozenset, *self._fields})
        self._flagged = self._walked | {bytearray, memoryview}

    def _fields_of(self, cls: type) -> tuple[Callable[[Any], dict[str, Any]], Callable[[Any], Any]]:
        found = self._fields.get(cls)
        if found is None:
            found = self._fields[cls] = _cached_field_functions(cls)
            self._reset_walked()
        return found

    def _known_name(self, cls: type) -> str | None:
        """The name ``cls`` travels under, if this codec knows it (or it was registered
        process-wide since)."""
        name = self._by_class.get(cls)
        if name is None and cls in _REGISTERED:
            name = self._add(cls)
        return name

    def _known_class(self, name: str) -> type | None:
        cls = self._by_name.get(name)
        if cls is None:
            found = _REGISTERED_NAMES.get(name)
            if found is not None and self._by_class.get(found) is None:
                self._add(found)
                cls = found
        return cls

    # -- encoding -------------------------------------------------------------------------

    def encode(self, value: Any) -> bytes:
        """Encode ``value``; raise :class:`EncodingError` naming the first unencodable part."""
        try:
            if type(value) in self._flagged:
                self._walk(value, 1)
            return self._packer.pack(value)  # type: ignore[no-any-return]
        except EncodingError:
            self._packer.reset()
            raise
        except RecursionError:  # the caller's own stack was nearly full already
            self._packer.reset()
            raise EncodingError(
                f"cannot encode {_short(value)}: it nests too deeply for the stack left"
            ) from None
        except (TypeError, ValueError, OverflowError) as exc:
            self._packer.reset()
            raise EncodingError(f"cannot encode {_short(value)}: {exc}") from None

    def _walk(self, obj: Any, depth: int) -> None:
        """Refuse what msgpack would pack without asking ``_default`` but not give back
        (``bytearray``, ``memoryview``), and containers nested more than :data:`MAX_DEPTH`
        deep. ``obj`` is of a flagged type, ``depth`` levels deep."""
        if depth > MAX_DEPTH:
            raise EncodingError(
                f"cannot encode a value nested more than {MAX_DEPTH} levels deep, or that "
                f"contains itself (a {type(obj).__qualname__} at level {depth})"
            )
        kind = type(obj)
        flagged = self._flagged
        items: Any
        if kind is list or kind is tuple or kind is set or kind is frozenset:
            items = obj
        elif kind is dict:
            # Keys are seldom containers (a tuple, a frozenset); look at them in C first.
            if len(obj) < 8 or not flagged.isdisjoint(map(type, obj)):
                for key in obj:
                    if type(key) in flagged:
                        self._walk(key, depth + 1)
            items = obj.values()
        elif kind in self._walked:  # a class that travels as its fields
            items = list(self._fields[kind][0](obj).values())
        else:
            raise EncodingError(
                f"cannot encode a {kind.__qualname__} ({_short(obj)}): it would arrive as "
                "bytes; pass bytes(x) instead"
            )
        if len(items) >= 8 and flagged.isdisjoint(map(type, items)):
            return  # no container inside: the common case for long sequences, found in C
        for item in items:
            if type(item) in flagged:
                self._walk(item, depth + 1)

    def _default(self, obj: Any) -> Any:
        pack = self._pack_inner
        if isinstance(obj, tuple) and type(obj) is tuple:
            return msgpack.ExtType(EXT_TUPLE, pack(list(obj)))
        if type(obj) is set:
            return msgpack.ExtType(EXT_SET, pack(_sorted_if_possible(obj)))
        if type(obj) is frozenset:
            return msgpack.ExtType(EXT_FROZENSET, pack(_sorted_if_possible(obj)))
        if type(obj) is _dt.datetime:
            return msgpack.ExtType(EXT_DATETIME, obj.isoformat().encode())
        if type(obj) is _dt.date:
            return msgpack.ExtType(EXT_DATE, obj.isoformat().encode())
        if type(obj) is _dt.time:
            return msgpack.ExtType(EXT_TIME, obj.isoformat().encode())
        if type(obj) is _dt.timedelta:
            return msgpack.ExtType(EXT_TIMEDELTA, pack([obj.days, obj.seconds, obj.microseconds]))
        if type(obj) is uuid.UUID:
            return msgpack.ExtType(EXT_UUID, obj.bytes)
        if type(obj) is int:  # outside msgpack's 64-bit range
            size = (obj.bit_length() + 8) // 8
            return msgpack.ExtType(EXT_BIGINT, obj.to_bytes(size, "big", signed=True))
        if type(obj) is decimal.Decimal:
            return msgpack.ExtType(EXT_DECIMAL, str(obj).encode())
        return self._default_object(obj)

    def _default_object(self, obj: Any) -> Any:
        """An instance of a registered class, or a ref; refuse anything else."""
        pack = self._pack_inner
        # Subclasses of the plain containers lose their class on the way; refuse them rather
        # than silently changing the type.
        name = self._known_name(type(obj))
        if name is not None:
            if isinstance(obj, enum.Enum):
                return msgpack.ExtType(EXT_ENUM, pack([name, obj.value]))
            fields = self._fields_of(type(obj))[0](obj)
            return msgpack.ExtType(EXT_ATTRS, pack([name, fields]))
        if self._ref_encoder is not None:
            ref = self._ref_encoder(obj)
            if ref is not None:
                return msgpack.ExtType(EXT_REF, pack(list(ref)))
        if is_structured(type(obj)):
            raise EncodingError(
                f"{type(obj).__qualname__} is not registered as a message type of this runtime: "
                + _HOW_TO_REGISTER.format(cls=type(obj).__name__)
            )
        raise EncodingError(
            f"cannot encode a {type(obj).__qualname__} ({_short(obj)}); messages carry only "
            "builtins, bytes, datetime values, Decimal, UUID, refs, and registered enums, "
            "dataclasses, attrs classes and pydantic models"
        )

    def _pack_inner(self, value: Any) -> bytes:
        # A fresh packer: the outer one is mid-stream.
        packer = msgpack.Packer(default=self._default, strict_types=True, use_bin_type=True)
        return packer.pack(value)  # type: ignore[no-any-return]

    # -- decoding -------------------------------------------------------------------------

    def decode(self, data: bytes) -> Any:
        """Decode bytes made by :meth:`encode`; raise :class:`DecodingError` otherwise."""
        try:
            return self._unpack(data, 0)
        except DecodingError:
            raise
        except Exception as exc:
            raise DecodingError(f"cannot decode {len(data)} stored bytes: {exc}") from exc

    def _unpack(self, data: bytes, depth: int) -> Any:
        """Unpack ``data``, an ext payload nested ``depth`` levels deep (0: the whole value)."""
        hook = self._hooks[depth]
        if depth < _UNPACKB_LEVELS:
            return msgpack.unpackb(
                data, ext_hook=hook, raw=False, strict_map_key=False, use_list=True
            )
        unpacker = msgpack.Unpacker(
            ext_hook=hook,
            raw=False,
            strict_map_key=False,
            use_list=True,
            max_buffer_size=max(len(data), 1),
        )
        unpacker.feed(data)
        value = unpacker.unpack()
        if unpacker.tell() != len(data):
            raise DecodingError(f"extra bytes after a nested value of {len(data)} bytes")
        return value

    def _ext_hook(self, depth: int, code: int, data: bytes) -> Any:
        # A container counts one level; a leaf (a datetime, a timedelta...) may sit inside the
        # deepest one.
        if depth > MAX_DEPTH + 1 or (depth > MAX_DEPTH and code in _CONTAINER_CODES):
            raise DecodingError(f"stored value nests more than {MAX_DEPTH} levels deep")
        if code == EXT_TUPLE:
            return tuple(self._unpack(data, depth))
        if code == EXT_SET:
            return set(self._unpack(data, depth))
        if code == EXT_FROZENSET:
            return frozenset(self._unpack(data, depth))
        if code == EXT_DATETIME:
            text = data.decode()
            local, tz = _split_offset(text, text.find("T"))
            return _dt.datetime.fromisoformat(local).replace(tzinfo=tz)
        if code == EXT_DATE:
            return _dt.date.fromisoformat(data.decode())
        if code == EXT_TIME:
            local, tz = _split_offset(data.decode(), 0)
            return _dt.time.fromisoformat(local).replace(tzinfo=tz)
        if code == EXT_TIMEDELTA:
            days, seconds, micros = self._unpack(data, depth)
            return _dt.timedelta(days=days, seconds=seconds, microseconds=micros)
        if code == EXT_UUID:
            return uuid.UUID(bytes=data)
        if code == EXT_BIGINT:
            return int.from_bytes(data, "big", signed=True)
        if code == EXT_DECIMAL:
            return decimal.Decimal(data.decode())
        if code in (EXT_ATTRS, EXT_ENUM):
            return self._rebuild(code, self._unpack(data, depth))
        if code == EXT_REF:
            type_name, key = self._unpack(data, depth)
            if self._ref_decoder is None:
                return (type_name, key)
            return self._ref_decoder(type_name, key)
        raise DecodingError(f"unknown msgpack ext code {code}")

    def _rebuild(self, code: int, stored: Any) -> Any:
        """An instance of a registered class from its stored ``[name, value or fields]``."""
        name, value = stored
        cls = self._known_class(name)
        if cls is None:
            raise DecodingError(
                f"stored message type {name!r} is not registered: register the class under "
                f"that name (actors.register_type(cls, name={name!r})) or pass it in "
                "open_runtime(message_types=[...])"
            )
        try:
            if code == EXT_ENUM:
                return cls(value)
            return self._fields_of(cls)[1](value)
        except Exception as exc:
            raise DecodingError(
                f"stored {name} cannot be rebuilt as {cls.__qualname__}: {exc!r}"
            ) from exc


def _sorted_if_possible(items: Iterable[Any]) -> list[Any]:
    # Sets encode in a stable order where their items allow it, so equal sets give equal bytes.
    values = list(items)
    try:
        return sorted(values)
    except TypeError:
        return values


def _split_offset(text: str, start: int) -> tuple[str, _dt.timezone | None]:
    """``isoformat()`` text (of a datetime or time) without its UTC offset, and that offset.

    The offset is read here, exactly: ``fromisoformat`` of Python 3.11 reads an offset of less
    than a second (``+00:00:00.000001``) as UTC. ``start``: where the time of day begins.
    """
    sign_at = max(text.rfind("+"), text.rfind("-"))
    if sign_at <= start:
        return text, None
    hours, minutes, *rest = text[sign_at + 1 :].split(":")
    seconds, _, fraction = (rest[0] if rest else "0").partition(".")
    offset = _dt.timedelta(
        hours=int(hours),
        minutes=int(minutes),
        seconds=int(seconds),
        microseconds=int(fraction.ljust(6, "0")) if fraction else 0,
    )
    return text[:sign_at], _dt.timezone(-offset if text[sign_at] == "-" else offset)


def _short(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:  # too deep to show (RecursionError), or a __repr__ that raises
        text = f"<{type(value).__qualname__}>"
    return text if len(text) <= 80 else text[:77] + "..."
