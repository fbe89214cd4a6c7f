"""msgpack with an allow-list of types; never pickle.

The ext codes below are persisted in every mailbox and data file: never renumber them.

A value either comes back equal and of the same types, or is refused with
:class:`EncodingError`: subclasses of the builtins, ``bytearray`` and ``memoryview`` (they
would come back as other types), and values nested more than :data:`MAX_DEPTH` levels deep
(values that contain themselves among them).
"""

from __future__ import annotations

import datetime as _dt
import functools
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import msgpack

from .errors import DecodingError, EncodingError

# Persisted ext codes. Append only.
EXT_TUPLE = 1
EXT_SET = 2
EXT_FROZENSET = 3
EXT_DATETIME = 4
EXT_DATE = 5
EXT_TIME = 6
EXT_TIMEDELTA = 7
EXT_UUID = 8
EXT_ATTRS = 9
EXT_REF = 10
EXT_BIGINT = 11

_CONTAINER_CODES = frozenset({EXT_TUPLE, EXT_SET, EXT_FROZENSET, EXT_ATTRS})

#: How deeply a value may nest: lists, dicts, tuples, sets, frozensets and registered attrs
#: instances each count one level (``[[1]]`` is two). Deeper values are refused when encoded
#: and when decoded, so anything encoded also decodes; a value that contains itself is refused
#: as too deep. Each level of tuple, set or attrs instance costs a nested msgpack call, so an
#: unbounded depth would overflow Python's recursion limit or the C stack (a crash).
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
        ref_encoder: RefEncoder | None = None,
        ref_decoder: RefDecoder | None = None,
    ) -> None:
        self._by_class: dict[type, str] = {}
        self._by_name: dict[str, type] = {}
        for cls in message_types:
            if not attrs.has(cls):
                raise TypeError(
                    f"message_types must be attrs classes (got {cls!r}); "
                    "decorate it with @attrs.define or @attrs.frozen"
                )
            name = getattr(cls, "__torpor_name__", None) or f"{cls.__module__}.{cls.__qualname__}"
            if name in self._by_name and self._by_name[name] is not cls:
                raise ValueError(f"two message types share the name {name!r}")
            for field in attrs.fields(cls):
                if not field.init:
                    raise TypeError(
                        f"message type {cls.__qualname__} has a field {field.name!r} with "
                        "init=False, which could not be restored on decoding"
                    )
            self._by_class[cls] = name
            self._by_name[name] = cls
        self._ref_encoder = ref_encoder
        self._ref_decoder = ref_decoder
        self._packer = msgpack.Packer(default=self._default, strict_types=True, use_bin_type=True)
        # Types the depth check looks inside (or refuses): containers, registered attrs classes.
        self._walked = frozenset({list, dict, tuple, set, frozenset, *self._by_class})
        self._flagged = self._walked | {bytearray, memoryview}
        # The ext hook of each nesting level (the level is counted, never shared state).
        self._hooks = [functools.partial(self._ext_hook, d) for d in range(1, MAX_DEPTH + 3)]

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
        elif kind in self._walked:  # a registered attrs class
            items = [getattr(obj, a.name) for a in attrs.fields(kind)]
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
        # Subclasses of the plain containers lose their class on the way; refuse them rather
        # than silently changing the type.
        name = self._by_class.get(type(obj))
        if name is not None:
            fields = {a.alias: getattr(obj, a.name) for a in attrs.fields(type(obj))}
            return msgpack.ExtType(EXT_ATTRS, pack([name, fields]))
        if self._ref_encoder is not None:
            ref = self._ref_encoder(obj)
            if ref is not None:
                return msgpack.ExtType(EXT_REF, pack(list(ref)))
        if attrs.has(type(obj)):
            raise EncodingError(
                f"{type(obj).__qualname__} is an attrs class that is not registered as a "
                "message type; pass it in open_runtime(message_types=[...])"
            )
        raise EncodingError(
            f"cannot encode a {type(obj).__qualname__} ({_short(obj)}); messages carry only "
            "builtins, bytes, datetime values, UUIDs, refs and registered attrs classes"
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
        if code == EXT_ATTRS:
            name, fields = self._unpack(data, depth)
            cls = self._by_name.get(name)
            if cls is None:
                raise DecodingError(
                    f"stored message type {name!r} is not registered; "
                    "pass it in open_runtime(message_types=[...])"
                )
            return cls(**fields)
        if code == EXT_REF:
            type_name, key = self._unpack(data, depth)
            if self._ref_decoder is None:
                return (type_name, key)
            return self._ref_decoder(type_name, key)
        raise DecodingError(f"unknown msgpack ext code {code}")


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
