"""msgpack with an allow-list of types; never pickle.

The ext codes below are persisted in every mailbox and data file: never renumber them.
"""

from __future__ import annotations

import datetime as _dt
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

    # -- encoding -------------------------------------------------------------------------

    def encode(self, value: Any) -> bytes:
        """Encode ``value``; raise :class:`EncodingError` naming the first unencodable part."""
        try:
            return self._packer.pack(value)  # type: ignore[no-any-return]
        except EncodingError:
            self._packer.reset()
            raise
        except (TypeError, ValueError, OverflowError) as exc:
            self._packer.reset()
            raise EncodingError(f"cannot encode {_short(value)}: {exc}") from None

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
            return msgpack.unpackb(
                data, ext_hook=self._ext_hook, raw=False, strict_map_key=False, use_list=True
            )
        except DecodingError:
            raise
        except Exception as exc:
            raise DecodingError(f"cannot decode {len(data)} stored bytes: {exc}") from exc

    def _ext_hook(self, code: int, data: bytes) -> Any:
        if code == EXT_TUPLE:
            return tuple(self.decode(data))
        if code == EXT_SET:
            return set(self.decode(data))
        if code == EXT_FROZENSET:
            return frozenset(self.decode(data))
        if code == EXT_DATETIME:
            return _dt.datetime.fromisoformat(data.decode())
        if code == EXT_DATE:
            return _dt.date.fromisoformat(data.decode())
        if code == EXT_TIME:
            return _dt.time.fromisoformat(data.decode())
        if code == EXT_TIMEDELTA:
            days, seconds, micros = self.decode(data)
            return _dt.timedelta(days=days, seconds=seconds, microseconds=micros)
        if code == EXT_UUID:
            return uuid.UUID(bytes=data)
        if code == EXT_BIGINT:
            return int.from_bytes(data, "big", signed=True)
        if code == EXT_ATTRS:
            name, fields = self.decode(data)
            cls = self._by_name.get(name)
            if cls is None:
                raise DecodingError(
                    f"stored message type {name!r} is not registered; "
                    "pass it in open_runtime(message_types=[...])"
                )
            return cls(**fields)
        if code == EXT_REF:
            type_name, key = self.decode(data)
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


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
