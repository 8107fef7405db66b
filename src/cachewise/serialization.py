"""How values become bytes for shared backends: safe by default, and never lossy.

- ``JsonSerializer`` (the default; uses orjson when it is installed) and
  ``MsgpackSerializer`` (``pip install cachewise[msgpack]``).
- ``PickleSerializer(secret=...)``: only on request, and only signed. Every payload
  carries an HMAC-SHA256 over the whole envelope, checked with a constant-time
  compare before a single byte is unpickled. The algorithm is fixed here, never
  read from the payload.
- Compression above a size threshold: ``"zlib"``, or ``"zstd"`` when ``zstandard``
  is installed (``pip install 'cachewise[zstd]'``). Decompression is bounded by ``max_value_bytes``.

The rule: a value either reads back equal, with the same types all the way down,
or it is refused at write with ``SerializationError`` (a ``TypeError``) that names
the offending type and where it is (``value["items"][3]``), and nothing is written.

- JSON (the default) and msgpack both round-trip ``None``, ``bool``, ``int`` (any
  size), ``float`` (NaN and the infinities too), ``str``, ``bytes``, ``list``,
  ``tuple``, ``dict`` (keys of any hashable kind here), ``set``, ``frozenset``,
  ``datetime`` (naive, or aware with ``datetime.timezone`` or
  ``zoneinfo.ZoneInfo``), ``date``, ``time``, ``timedelta``, ``Decimal``, ``UUID``
  and members of enums registered with ``register_enum``.
- Structured values (dataclasses, attrs classes, pydantic v2 models, NamedTuples,
  TypedDicts) are written as their fields and rebuilt by the reader's type
  (``get(key, type=User)``, a cached function's return annotation); read without
  one, they are a miss. The payload never names code to run.
- Values that are plain JSON (or plain msgpack) are written as such, byte for
  byte; the rest take the tagged form described in ``cachewise._typed``, marked by
  its first byte so that a reader that predates it reads a miss.
- Refused: other objects, subclasses of the types above (``OrderedDict``, a
  ``str`` subclass), ``bytearray``, unregistered enums, other tzinfos, NaN in a
  key or set item, cycles, and nesting deeper than 200 containers (100 for a value
  that needs the tagged form).
- What JSON accepts does not depend on whether orjson is installed, and the bytes
  are the same either way: processes with and without orjson share entries.
- Pickle round-trips what pickle round-trips.

Bytes that fail to decode for any reason are a miss, counted by the backend, never
an exception to the caller.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
import json
import pickle
import zlib
from collections.abc import Iterator
from itertools import chain
from typing import Any, Literal

from cachewise import _typed
from cachewise._core import envelope
from cachewise._core.entry import Entry
from cachewise._errors import CacheError

__all__ = [
    "DEFAULT_MAX_VALUE_BYTES",
    "Codec",
    "DecodeError",
    "JsonSerializer",
    "MsgpackSerializer",
    "PickleSerializer",
    "SerializationError",
    "Serializer",
    "ValueTooLargeError",
    "ZlibCompressor",
    "ZstdCompressor",
    "make_serializer",
    "register_enum",
]

register_enum = _typed.register_enum
#: What a serializer's ``loads`` raises for bytes it cannot read (a corrupted or
#: foreign entry): the front ends count it (``stats().decode_errors``) as a miss.
DecodeError = envelope.DecodeError

DEFAULT_MAX_VALUE_BYTES = 8 * 1024 * 1024
DEFAULT_COMPRESS_THRESHOLD = 1024


class SerializationError(CacheError, TypeError):
    """A value the configured serializer cannot represent. Nothing was written.

    ``kind`` is the refused value's type (the innermost one: the set inside the
    dict), or None when not known."""

    def __init__(self, message: str, kind: type | None = None) -> None:
        super().__init__(message)
        self.kind = kind


class ValueTooLargeError(CacheError, ValueError):
    """A serialized value over ``max_value_bytes``. Nothing was written."""


class Serializer:
    """Base of the serializers: unsigned unless a subclass says otherwise."""

    wire_id = 0
    name = "?"
    signed = False

    def dumps(self, value: object) -> bytes:
        """Serialize, or raise ``SerializationError`` naming the offending type."""
        raise NotImplementedError

    def loads(self, data: bytes) -> object:
        """Deserialize (any exception is treated as a corrupt entry)."""
        raise NotImplementedError

    def mac(self, data: bytes) -> bytes:
        """The signature of ``data`` (signed serializers only)."""
        raise NotImplementedError

    def verify(self, data: bytes, mac: bytes) -> bool:
        """Whether ``mac`` signs ``data`` (signed serializers only)."""
        return False

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _unserializable(name: str, value: object, exc: BaseException) -> SerializationError:
    # The serializer's own message names the innermost offending type (a set inside
    # a dict, say); ours names the value's type.
    return SerializationError(
        f"cannot serialize a value of type {type(value).__name__} with {name} ({exc})"
    )


# -- what JSON and msgpack store as they are ---------------------------------------------

# Both formats (and orjson's reader) hold integers in 64 bits, signed or unsigned.
_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1
_NoneType = type(None)
_TAG = _typed.TAG
# Plain values may nest this deep (the quick check's walk is iterative, and every
# encoder holds it); a value that needs the tagged form, _typed.MAX_DEPTH.
_MAX_DEPTH = 200

# What the fast walk passes without a look, per encoder: each encoder itself refuses
# the rest of what these types can hold (and the value then takes the tagged form).
# orjson refuses ints beyond 64 bits and every dict key that is not exactly str
# (with the options below), but writes NaN as null; the stdlib refuses NaN
# (allow_nan=False) but writes any int and converts int keys; msgpack refuses ints
# beyond 64 bits and keeps every float. All of them refuse a lone surrogate.
_ORJSON_PLAIN = frozenset({_NoneType, bool, int, str})
_STDLIB_JSON_PLAIN = frozenset({_NoneType, bool, float, str})
_MSGPACK_PLAIN = frozenset({_NoneType, bool, int, float, str, bytes})
_JSON_KEYS = frozenset({str})
_MSGPACK_KEYS = _typed.MSGPACK.keys

#: The first byte of a payload in the tagged form: JSON text never starts with
#: "~", and 0xC1 is the one byte msgpack never uses. Plain values keep the plain
#: form, byte for byte what the format writes; a reader that predates tags (or a
#: foreign one) fails on the marker and reads a miss, never a dict of tags.
_JSON_TAGGED = b"~"
_MSGPACK_TAGGED = b"\xc1"


def _quick_check(value: object, plain: frozenset[type], keys: frozenset[type] | None) -> bool:
    """True if ``value`` is surely storable in the plain form; False if it needs
    the tagged form (or is refused: ``_typed.lower`` decides).

    ``plain`` are the scalar types to pass unexamined (the encoder checks them);
    an ``int`` or ``float`` not among them is range- or finiteness-checked here.
    ``keys`` are the dict key types to allow, or None when the encoder checks keys.
    A dict with a ``"$cw"`` key needs the tagged form (it would read as a tag).

    This is the price every write pays, so it is one iterative walk that does the
    least it can per item.
    """
    # Iterators of the containers still being walked; `items` is the innermost.
    stack: list[Iterator[Any]] = []
    items: Iterator[Any] = iter((value,))
    while True:
        for item in items:
            kind = type(item)
            if kind in plain:
                continue
            if kind is int:
                if _INT_MIN <= item <= _INT_MAX:
                    continue
                return False
            if kind is float:
                if item - item == 0.0:  # NaN and the infinities give NaN
                    continue
                return False
            if kind is dict:
                if _TAG in item:
                    return False
                if keys is not None:
                    for key in item:
                        # `key != key` is true only of NaN, which msgpack would
                        # read back as a new key that no lookup finds.
                        if type(key) not in keys or key != key:  # noqa: PLR0124
                            return False
                children: Iterator[Any] = iter(item.values())
            elif kind is list:
                children = iter(item)
            else:
                return False
            # `item` sits inside len(stack) containers: deeper ones (and cycles,
            # which are infinitely deep) go to the reference walk.
            if len(stack) >= _MAX_DEPTH:
                return False
            # Check the container's scalars right here, which is most of the work
            # for the common shapes (a dict of scalars, a list of them). Only a
            # nested container goes back to the loop above, followed by its
            # unchecked siblings.
            for child in children:
                kind = type(child)
                if kind in plain:
                    continue
                if kind is int:
                    if _INT_MIN <= child <= _INT_MAX:
                        continue
                    return False
                if kind is float:
                    if child - child == 0.0:
                        continue
                    return False
                stack.append(items)
                items = chain((child,), children)
                break
            else:
                continue
            break
        else:
            if not stack:
                return True
            items = stack.pop()


def _lower(value: object, fmt: _typed.Format) -> Any:
    """The tagged tree for ``value``, or ``SerializationError`` naming the type
    refused and where it is (``value["items"][3]``)."""
    try:
        return _typed.lower(value, fmt)
    except _typed.Refused as exc:
        raise SerializationError(str(exc), exc.kind) from None
    except RecursionError:  # (a struct's own dump recursing, say)
        raise SerializationError(
            f"{fmt.name} cannot store the {type(value).__name__} at value: nested too deeply",
            type(value),
        ) from None


def _check_write(tree: Any, tagged: bool, fmt: _typed.Format) -> None:
    if _typed.READ_TYPE.get() is None:  # (the usual write: nothing declared)
        return
    try:
        _typed.check_write(tree, tagged, fmt)
    except _typed.Refused as exc:
        raise SerializationError(str(exc), exc.kind) from None


def _encoder_refused(value: object, fmt: _typed.Format, error: Exception) -> SerializationError:
    # The walk accepted it and the encoder did not (the value changed while
    # being written, say): the encoder's word.
    return SerializationError(
        f"{fmt.name} cannot store the {type(value).__name__} at value ({error})", type(value)
    )


def _lift(tree: Any, fmt: _typed.Format) -> object:
    value, needs_type = _typed.lift(tree, fmt)
    return _typed.finish(value, needs_type)


def _stdlib_json(tree: object) -> bytes:
    # The checks bound the depth, so the tree has no cycle to look for.
    text = json.dumps(
        tree, separators=(",", ":"), ensure_ascii=False, allow_nan=False, check_circular=False
    )
    return text.encode()


class JsonSerializer(Serializer):
    """JSON, and the default: every value in the table of the module docstring
    reads back equal and of the same type; anything else is refused with
    ``SerializationError``.

    Plain JSON values (``None``, ``bool``, 64-bit ``int``, finite ``float``,
    ``str``, ``list``, ``dict`` with ``str`` keys) are written as plain JSON; the
    rest in the tagged form (see ``cachewise._typed``). Uses orjson when it is
    importable: it accepts the same values, and the bytes are the same JSON either
    way, so processes with and without orjson read each other's entries.
    """

    wire_id = 1
    name = "json"

    def __init__(self) -> None:
        try:
            self._orjson: Any = importlib.import_module("orjson")
        except ImportError:
            self._orjson = None
        else:
            # No OPT_NON_STR_KEYS: orjson itself refuses a key that is not exactly
            # str, which the quick check relies on. The passthrough options send
            # subclasses, dates and dataclasses to `default`, which is unset, so
            # orjson refuses them too, should one ever get past the check.
            self._options = (
                self._orjson.OPT_PASSTHROUGH_SUBCLASS
                | self._orjson.OPT_PASSTHROUGH_DATETIME
                | self._orjson.OPT_PASSTHROUGH_DATACLASS
            )

    def _encode(self, tree: object) -> bytes:
        if self._orjson is not None:
            result: bytes = self._orjson.dumps(tree, option=self._options)
            return result
        return _stdlib_json(tree)

    def dumps(self, value: object) -> bytes:
        """JSON bytes, or ``SerializationError`` naming what is refused and where."""
        if self._orjson is not None:
            plain = _quick_check(value, _ORJSON_PLAIN, None)
        else:
            plain = _quick_check(value, _STDLIB_JSON_PLAIN, _JSON_KEYS)
        if plain:
            try:
                data = self._encode(value)
            except Exception:
                pass  # (a key orjson refuses, a lone surrogate): the walk decides
            else:
                _check_write(value, False, _typed.JSON)
                return data
        tree = _lower(value, _typed.JSON)
        _check_write(tree, True, _typed.JSON)
        try:
            return _JSON_TAGGED + self._encode(tree)
        except Exception as exc:
            if self._orjson is not None and "recursion" in str(exc).lower():
                # orjson stops at 254 levels, and the tagged tree of a value 100
                # containers deep may be 400: the stdlib writes the same JSON.
                try:
                    return _JSON_TAGGED + _stdlib_json(tree)
                except Exception:
                    pass
            raise _encoder_refused(value, _typed.JSON, exc) from None

    def loads(self, data: bytes) -> object:
        if data[:1] == _JSON_TAGGED:
            text = data[1:]
            try:
                tree = self._orjson.loads(text) if self._orjson is not None else json.loads(text)
            except Exception:
                tree = json.loads(text)  # (deeper than orjson reads: see dumps)
            return _lift(tree, _typed.JSON)
        parse = self._orjson.loads if self._orjson is not None else json.loads
        value = parse(data)
        # (the usual read declares no type: no call to finish on the hit path)
        return value if _typed.READ_TYPE.get() is None else _typed.finish(value, False)


def _no_ext(code: int, data: bytes) -> object:
    raise envelope.DecodeError(f"a msgpack ext type {code}")


class MsgpackSerializer(Serializer):
    """MessagePack (needs ``msgpack``): the same values as ``JsonSerializer``,
    in fewer bytes; bytes, NaN, the infinities and dict keys of scalar types are
    held natively.
    """

    wire_id = 2
    name = "msgpack"

    def __init__(self) -> None:
        try:
            self._msgpack: Any = importlib.import_module("msgpack")
        except ImportError:
            raise ImportError(
                "MsgpackSerializer needs msgpack: pip install 'cachewise[msgpack]'"
            ) from None

    def _encode(self, tree: object) -> bytes:
        # strict_types: no tuple packed as a list, no subclass as its base, in case
        # one ever got past the walk.
        result: bytes = self._msgpack.packb(tree, use_bin_type=True, strict_types=True)
        return result

    def dumps(self, value: object) -> bytes:
        """msgpack bytes, or ``SerializationError`` naming what is refused and where."""
        if _quick_check(value, _MSGPACK_PLAIN, _MSGPACK_KEYS):
            try:
                data = self._encode(value)
            except Exception:
                pass  # (a lone surrogate): the walk decides
            else:
                _check_write(value, False, _typed.MSGPACK)
                return data
        tree = _lower(value, _typed.MSGPACK)
        _check_write(tree, True, _typed.MSGPACK)
        try:
            return _MSGPACK_TAGGED + self._encode(tree)
        except Exception as exc:
            raise _encoder_refused(value, _typed.MSGPACK, exc) from None

    def loads(self, data: bytes) -> object:
        # strict_map_key: only str and bytes map keys (see _typed.MSGPACK); an ext
        # type is refused, and a Timestamp (which msgpack decodes on its own) is
        # caught by the checks below: neither is ever written.
        if data[:1] == _MSGPACK_TAGGED:
            tree = self._msgpack.unpackb(data[1:], raw=False, strict_map_key=True, ext_hook=_no_ext)
            return _lift(tree, _typed.MSGPACK)
        value = self._msgpack.unpackb(data, raw=False, strict_map_key=True, ext_hook=_no_ext)
        if not _quick_check(value, _MSGPACK_PLAIN, _MSGPACK_KEYS):
            raise envelope.DecodeError("a msgpack payload holding what is never written")
        return value if _typed.READ_TYPE.get() is None else _typed.finish(value, False)


class PickleSerializer(Serializer):
    """Pickle, signed with HMAC-SHA256 under ``secret``. Opt-in only.

    Anyone who can write to the cache server and knows the secret can run code in
    every reader: keep the secret secret, and prefer JSON or msgpack when you can.
    The secret must be at least 16 bytes.
    """

    wire_id = 3
    name = "pickle"
    signed = True

    def __init__(self, secret: bytes | str) -> None:
        key = secret.encode() if isinstance(secret, str) else secret
        if not isinstance(key, bytes):
            raise TypeError("secret must be bytes or str")
        if len(key) < 16:
            raise ValueError("secret must be at least 16 bytes for signed pickle")
        self._key = key

    def dumps(self, value: object) -> bytes:
        try:
            return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # __reduce__ may raise anything at all
            raise _unserializable("pickle", value, exc) from None

    def loads(self, data: bytes) -> object:
        # Reached only after verify() accepted the envelope's signature.
        return pickle.loads(data)

    def mac(self, data: bytes) -> bytes:
        return hmac.new(self._key, data, hashlib.sha256).digest()

    def verify(self, data: bytes, mac: bytes) -> bool:
        return hmac.compare_digest(self.mac(data), mac)

    def __repr__(self) -> str:
        return "PickleSerializer(secret=<hidden>)"


class ZlibCompressor:
    """zlib at a fast level; decompression bounded."""

    wire_id = 1
    name = "zlib"

    def __init__(self, level: int = 1) -> None:
        self._level = level

    def compress(self, data: bytes) -> bytes:
        return zlib.compress(data, self._level)

    def decompress(self, data: bytes, max_size: int) -> bytes:
        inflater = zlib.decompressobj()
        out = inflater.decompress(data, max_size + 1)
        if len(out) > max_size or inflater.unconsumed_tail:
            raise envelope.DecodeError("decompressed payload over the size limit")
        if not inflater.eof:
            raise envelope.DecodeError("truncated compressed payload")
        if inflater.unused_data:
            raise envelope.DecodeError("bytes after the compressed payload")
        return out


class ZstdCompressor:
    """Zstandard (needs ``zstandard``); decompression bounded."""

    wire_id = 2
    name = "zstd"

    def __init__(self, level: int = 3) -> None:
        try:
            self._zstd: Any = importlib.import_module("zstandard")
        except ImportError:
            raise ImportError(
                "zstd compression needs zstandard: pip install 'cachewise[zstd]'"
            ) from None
        self._level = level

    def compress(self, data: bytes) -> bytes:
        result: bytes = self._zstd.ZstdCompressor(level=self._level).compress(data)
        return result

    def decompress(self, data: bytes, max_size: int) -> bytes:
        # A frame may declare its size: refuse a big one before allocating it. A
        # frame that does not is inflated into a buffer of at most max_size. Either
        # way a truncated frame or trailing bytes are errors.
        declared = self._zstd.frame_content_size(data)
        if declared > max_size:
            raise envelope.DecodeError("decompressed payload over the size limit")
        out: bytes = self._zstd.ZstdDecompressor().decompress(
            data, max_output_size=max_size, allow_extra_data=False
        )
        if len(out) > max_size:
            raise envelope.DecodeError("decompressed payload over the size limit")
        return out


Compressor = ZlibCompressor | ZstdCompressor
SerializerName = Literal["json", "msgpack", "pickle"]


def make_serializer(name: str, secret: bytes | str | None = None) -> Serializer:
    """A serializer by name: ``json``, ``msgpack`` or ``pickle`` (needs ``secret``)."""
    if name == "json":
        return JsonSerializer()
    if name == "msgpack":
        return MsgpackSerializer()
    if name == "pickle":
        if secret is None:
            raise ValueError("serializer 'pickle' needs secret=...: pickle is only ever signed")
        return PickleSerializer(secret)
    raise ValueError(f"unknown serializer {name!r}; use json, msgpack or pickle")


def _make_compressor(name: str | None) -> Compressor | None:
    if name is None or name == "none":
        return None
    if name == "zlib":
        return ZlibCompressor()
    if name == "zstd":
        return ZstdCompressor()
    raise ValueError(f"unknown compress option {name!r}; use zlib, zstd or none")


def _available_compressors() -> dict[int, envelope.WireCompressor]:
    found: dict[int, envelope.WireCompressor] = {ZlibCompressor.wire_id: ZlibCompressor()}
    try:
        found[ZstdCompressor.wire_id] = ZstdCompressor()
    except ImportError:
        pass
    return found


class Codec:
    """Entry <-> bytes for one backend: serializer, compression and size limit.

    ``encode`` raises ``SerializationError`` or ``ValueTooLargeError`` and writes
    nothing; ``decode`` returns ``None`` for anything it may not read.
    """

    def __init__(
        self,
        serializer: Serializer | None = None,
        *,
        compress: str | None = None,
        compress_threshold: int = DEFAULT_COMPRESS_THRESHOLD,
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
    ) -> None:
        if serializer is not None and not isinstance(serializer, Serializer):
            raise TypeError("serializer must be a cachewise.serialization.Serializer")
        if isinstance(max_value_bytes, bool) or not isinstance(max_value_bytes, int):
            raise TypeError("max_value_bytes must be an int")
        if max_value_bytes <= 0:
            raise ValueError(f"max_value_bytes must be > 0, got {max_value_bytes}")
        if isinstance(compress_threshold, bool) or not isinstance(compress_threshold, int):
            raise TypeError("compress_threshold must be an int")
        if compress_threshold < 0:
            raise ValueError(f"compress_threshold must be >= 0, got {compress_threshold}")
        self.serializer = serializer or JsonSerializer()
        self.compressor = _make_compressor(compress)
        self.compress_threshold = compress_threshold
        self.max_value_bytes = max_value_bytes
        # Readers can inflate whatever is installed, so a cache that turns
        # compression on or off still reads what its peers wrote.
        self._compressors = _available_compressors()

    def encode(self, entry: Entry, key: str = "") -> bytes:
        """The envelope for ``entry``, to be stored under ``key`` (a signed
        envelope verifies only under the key it was written for)."""
        payload = self.serializer.dumps(entry.value)
        if len(payload) > self.max_value_bytes:
            raise ValueTooLargeError(
                f"serialized value is {len(payload)} bytes, over max_value_bytes="
                f"{self.max_value_bytes}"
            )
        compressor = None
        if self.compressor is not None and len(payload) >= self.compress_threshold:
            packed = self.compressor.compress(payload)
            if len(packed) < len(payload):
                payload, compressor = packed, self.compressor
        return envelope.pack(
            entry, payload, serializer=self.serializer, compressor=compressor, key=key
        )

    def decode(self, data: bytes, key: str = "") -> Entry:
        """The entry in ``data``, read under ``key``; raises
        ``envelope.DecodeError`` for anything else."""
        return envelope.unpack(
            data,
            serializer=self.serializer,
            compressors=self._compressors,
            max_size=self.max_value_bytes,
            key=key,
        )

    def __repr__(self) -> str:
        name = self.compressor.name if self.compressor else None
        return f"Codec({self.serializer!r}, compress={name!r})"
