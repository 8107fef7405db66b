"""How values become bytes for shared backends: safe by default.

- ``JsonSerializer`` (the default; uses orjson when it is installed) and
  ``MsgpackSerializer`` (``pip install cachewise[msgpack]``).
- ``PickleSerializer(secret=...)``: only on request, and only signed. Every payload
  carries an HMAC-SHA256 over the whole envelope, checked with a constant-time
  compare before a single byte is unpickled. The algorithm is fixed here, never
  read from the payload.
- Compression above a size threshold: ``"zlib"``, or ``"zstd"`` when ``zstandard``
  is installed. Decompression is bounded by ``max_value_bytes``.

A value the serializer cannot represent raises ``SerializationError`` (a
``TypeError``) naming its type, and nothing is written. Bytes that fail to decode
for any reason are a miss, counted by the backend, never an exception to the caller.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
import json
import math
import pickle
import zlib
from collections.abc import Iterator
from typing import Any, Literal

from cachewise._core import envelope
from cachewise._core.entry import Entry
from cachewise._errors import CacheError

__all__ = [
    "DEFAULT_MAX_VALUE_BYTES",
    "Codec",
    "JsonSerializer",
    "MsgpackSerializer",
    "PickleSerializer",
    "SerializationError",
    "Serializer",
    "ValueTooLargeError",
    "ZlibCompressor",
    "ZstdCompressor",
    "make_serializer",
]

DEFAULT_MAX_VALUE_BYTES = 8 * 1024 * 1024
DEFAULT_COMPRESS_THRESHOLD = 1024


class SerializationError(CacheError, TypeError):
    """A value the configured serializer cannot represent. Nothing was written."""


class ValueTooLargeError(CacheError, ValueError):
    """A serialized value over ``max_value_bytes``. Nothing was written."""


class Serializer:
    """Base of the serializers: unsigned unless a subclass says otherwise."""

    wire_id = 0
    name = "?"
    signed = False

    def dumps(self, value: object) -> bytes:
        """Serialize, or raise ``SerializationError`` naming the value's type."""
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


class JsonSerializer(Serializer):
    """JSON: str, int, float, bool, None, lists and dicts with str keys.

    Tuples come back as lists and non-str dict keys as str, as with any JSON.
    Uses orjson when it is importable (the bytes are plain JSON either way, so
    processes with and without orjson read each other's entries).
    """

    wire_id = 1
    name = "json"

    def __init__(self) -> None:
        try:
            self._orjson: Any = importlib.import_module("orjson")
        except ImportError:
            self._orjson = None
        else:
            # Dates and dataclasses go to `default` (there is none, so they are
            # refused) as with stdlib json: what is accepted must not depend on
            # whether orjson is installed.
            self._options = (
                self._orjson.OPT_NON_STR_KEYS
                | self._orjson.OPT_PASSTHROUGH_DATETIME
                | self._orjson.OPT_PASSTHROUGH_DATACLASS
            )

    def dumps(self, value: object) -> bytes:
        try:
            if self._orjson is not None:
                result: bytes = self._orjson.dumps(value, option=self._options)
                # orjson writes NaN and infinities as null: a silently different value.
                if b"null" in result and _has_non_finite(value):
                    raise ValueError("NaN and infinities are not JSON")
                return result
            # Refuse what an orjson reader would misread, so the bytes mean the same
            # thing to every process: non-finite floats, ints beyond 64 bits.
            _check_json_numbers(value)
            return json.dumps(
                value, separators=(",", ":"), ensure_ascii=False, allow_nan=False
            ).encode()
        except Exception as exc:
            raise _unserializable("json", value, exc) from None

    def loads(self, data: bytes) -> object:
        if self._orjson is not None:
            return self._orjson.loads(data)
        return json.loads(data)


_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1


def _walk_numbers(value: object, depth: int = 0) -> Iterator[object]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        yield value
    elif depth < 500:
        if isinstance(value, dict):
            for item in value.values():
                yield from _walk_numbers(item, depth + 1)
        elif isinstance(value, (list, tuple)):
            for item in value:
                yield from _walk_numbers(item, depth + 1)


def _has_non_finite(value: object) -> bool:
    return any(isinstance(n, float) and not math.isfinite(n) for n in _walk_numbers(value))


def _check_json_numbers(value: object) -> None:
    for number in _walk_numbers(value):
        if isinstance(number, float):
            if not math.isfinite(number):
                raise ValueError("NaN and infinities are not JSON")
        elif not _INT_MIN <= number <= _INT_MAX:  # type: ignore[operator]
            raise ValueError(f"int {number} does not fit 64 bits; JSON readers would round it")


class MsgpackSerializer(Serializer):
    """MessagePack (needs ``msgpack``): like JSON plus bytes; tuples come back as lists."""

    wire_id = 2
    name = "msgpack"

    def __init__(self) -> None:
        try:
            self._msgpack: Any = importlib.import_module("msgpack")
        except ImportError:
            raise ImportError(
                "MsgpackSerializer needs msgpack: pip install 'cachewise[msgpack]'"
            ) from None

    def dumps(self, value: object) -> bytes:
        try:
            result: bytes = self._msgpack.packb(value, use_bin_type=True)
            return result
        except Exception as exc:
            raise _unserializable("msgpack", value, exc) from None

    def loads(self, data: bytes) -> object:
        return self._msgpack.unpackb(data, raw=False, strict_map_key=False)


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
            raise ImportError("zstd compression needs zstandard: pip install zstandard") from None
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

    def encode(self, entry: Entry) -> bytes:
        """The envelope for ``entry``."""
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
        return envelope.pack(entry, payload, serializer=self.serializer, compressor=compressor)

    def decode(self, data: bytes) -> Entry:
        """The entry in ``data``; raises ``envelope.DecodeError`` for anything else."""
        return envelope.unpack(
            data,
            serializer=self.serializer,
            compressors=self._compressors,
            max_size=self.max_value_bytes,
        )

    def __repr__(self) -> str:
        name = self.compressor.name if self.compressor else None
        return f"Codec({self.serializer!r}, compress={name!r})"
