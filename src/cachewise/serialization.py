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

- JSON stores exactly ``None``, ``bool``, ``int`` (-2**63 to 2**64-1), finite
  ``float``, ``str``, ``list``, and ``dict`` with ``str`` keys, nested.
- msgpack stores the same, plus ``bytes``, NaN and the infinities, and dict keys of
  any of its scalar types: ``None``, ``bool``, ``int``, ``float`` (not NaN), ``str``
  and ``bytes``.
- Types are compared exactly, so everything else is refused: tuples (they would
  come back as lists), sets, ``bytearray``, UUIDs, Decimals, dates, dataclasses,
  Enum members (``IntEnum`` and ``StrEnum`` included) and every subclass of the
  types above (``OrderedDict``, ``defaultdict``, a ``NamedTuple``, a ``str``
  subclass). So are cycles and values nested more than 200 containers deep.
- What JSON accepts does not depend on whether orjson is installed, and the bytes
  are plain JSON either way: processes with and without orjson share entries.
- Pickle round-trips what pickle round-trips.

Bytes that fail to decode for any reason are a miss, counted by the backend, never
an exception to the caller.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import hmac
import importlib
import json
import math
import pickle
import zlib
from collections.abc import Iterator
from itertools import chain
from typing import Any, Literal

from cachewise._core import envelope
from cachewise._core.entry import Entry
from cachewise._errors import CacheError
from cachewise._sentinel import MISSING

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


# -- what JSON and msgpack store exactly ------------------------------------------------

# Both formats (and orjson's reader) hold integers in 64 bits, signed or unsigned.
_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1
# Containers nested deeper are refused: a cycle ends here, orjson refuses more than
# 254 levels, and the stdlib's encoder recurses on the caller's stack.
_MAX_DEPTH = 200
_NoneType = type(None)


class _Format:
    """What one wire format reads back exactly: the rule every write is held to."""

    __slots__ = ("accepted", "finite_floats", "keys", "name", "scalars")

    def __init__(
        self,
        name: str,
        *,
        scalars: frozenset[type],
        keys: frozenset[type],
        finite_floats: bool,
        accepted: str,
    ) -> None:
        self.name = name  # as messages spell it
        self.scalars = scalars  # exact types stored as values (besides list and dict)
        self.keys = keys  # exact types stored as dict keys
        self.finite_floats = finite_floats  # NaN and the infinities refused as values
        self.accepted = accepted  # the list above, for messages


_JSON = _Format(
    "JSON",
    scalars=frozenset({_NoneType, bool, int, float, str}),
    keys=frozenset({str}),
    finite_floats=True,
    accepted="None, bool, int, finite float, str, list, and dict with str keys",
)
_MSGPACK = _Format(
    "msgpack",
    scalars=frozenset({_NoneType, bool, int, float, str, bytes}),
    keys=frozenset({_NoneType, bool, int, float, str, bytes}),
    finite_floats=False,
    accepted="None, bool, int, float, str, bytes, list, and dict with keys of those scalar types "
    "(but NaN)",
)

# What the fast walk passes without a look, per encoder: each encoder itself refuses
# the rest of what these types can hold. orjson refuses ints beyond 64 bits and
# every dict key that is not exactly str (with the options below), but writes NaN as
# null; the stdlib refuses NaN (allow_nan=False) but writes any int and converts
# int keys; msgpack refuses ints beyond 64 bits and keeps every float. All of them
# refuse a str holding a lone surrogate.
_ORJSON_PLAIN = frozenset({_NoneType, bool, int, str})
_STDLIB_JSON_PLAIN = frozenset({_NoneType, bool, float, str})
_MSGPACK_PLAIN = frozenset({_NoneType, bool, int, float, str, bytes})


def _quick_check(value: object, plain: frozenset[type], keys: frozenset[type] | None) -> bool:
    """True if ``value`` is surely storable; False if ``_find_refusal`` must look.

    ``plain`` are the scalar types to pass unexamined (the encoder checks them);
    an ``int`` or ``float`` not among them is range- or finiteness-checked here.
    ``keys`` are the dict key types to allow, or None when the encoder checks keys.

    This is the price every write pays, so it is one iterative walk that does the
    least it can per item; ``_find_refusal`` is the readable reference it defers to.
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
            # which are infinitely deep) go to the reference check.
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


_ROOT = object()  # the first step of every path: the value itself


def _find_refusal(value: object, fmt: _Format) -> str | None:
    """Why ``fmt`` cannot store ``value``, naming the type and where it is; or None.

    The reference check for the rule: exact, iterative, and keeping the path to
    every item. It runs only when the quick check or the encoder has found
    something, so it is written to be read, not to be fast.
    """
    path: list[object] = []  # the keys and indexes down to the innermost open container
    open_containers: list[object] = []  # those containers, to spot a cycle
    frames: list[Iterator[tuple[object, object]]] = [iter([(_ROOT, value)])]
    while frames:
        for step, item in frames[-1]:
            where = [*path, step]
            if type(item) is list or type(item) is dict:
                for depth, outer in enumerate(open_containers):
                    if outer is item:
                        return _refusal(
                            fmt,
                            item,
                            where,
                            f"it contains itself (it is {_render(where[: depth + 1])}); "
                            "break the cycle",
                        )
                if len(open_containers) >= _MAX_DEPTH:
                    return _refusal(
                        fmt,
                        item,
                        where,
                        f"it is nested more than {_MAX_DEPTH} containers deep; flatten the value",
                    )
                if isinstance(item, dict):
                    for key in item:
                        problem = _problem(key, fmt, key=True)
                        if problem is not None:
                            return _refusal(fmt, key, where, problem, key=True)
                    frames.append(iter(item.items()))
                elif isinstance(item, list):
                    frames.append(enumerate(item))
                path.append(step)
                open_containers.append(item)
                break
            problem = _problem(item, fmt, key=False)
            if problem is not None:
                return _refusal(fmt, item, where, problem)
        else:
            frames.pop()
            if open_containers:
                path.pop()
                open_containers.pop()
    return None


def _problem(value: object, fmt: _Format, *, key: bool) -> str | None:
    """Why the scalar ``value`` (a dict key, if ``key``) cannot be stored, or None."""
    kind = type(value)
    if kind not in (fmt.keys if key else fmt.scalars):
        if key and kind in fmt.scalars:
            # Only JSON has value types that are not key types: int, float, ...
            return (
                "JSON keys are strings, so it would come back as a str; convert the "
                "keys with str(...), or use MsgpackSerializer, which keeps int keys"
            )
        return _advice(value, fmt)
    if isinstance(value, int) and not _INT_MIN <= value <= _INT_MAX:
        return (
            "it is outside the 64-bit range (-2**63 to 2**64-1) that every reader "
            "holds exactly; store it as a str"
        )
    if isinstance(value, float):
        if key and math.isnan(value):
            return "a NaN key reads back as a new NaN that no lookup finds; use another key"
        if fmt.finite_floats and not math.isfinite(value):
            return "JSON has no NaN or infinity; store None or a str instead"
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            return "it holds a lone surrogate, which UTF-8 cannot encode"
    return None


def _advice(value: object, fmt: _Format) -> str:
    """Why ``value``'s type is refused, and what to store instead."""
    if value is MISSING:
        return "MISSING marks a miss and is never cached; cache None or a marker of your own"
    if isinstance(value, enum.Enum):
        return (
            "an Enum member would come back as its plain value; store member.value "
            f"and rebuild it with {type(value).__name__}(value) on read"
        )
    if isinstance(value, tuple):
        if hasattr(value, "_fields"):  # a NamedTuple
            return "it would come back as a list; store value._asdict() and rebuild it on read"
        return (
            "a tuple would come back as a list; convert it with list(...), or use "
            "PickleSerializer, which keeps tuples"
        )
    if isinstance(value, (set, frozenset)):
        return f"{fmt.name} has no sets; store sorted(value) and rebuild the set on read"
    if isinstance(value, (bytes, bytearray, memoryview)):
        if bytes in fmt.scalars:
            return "it would come back as bytes; convert it with bytes(...)"
        return (
            "JSON has no bytes; decode it to str or base64-encode it, or use "
            "MsgpackSerializer, which keeps bytes"
        )
    for base in (*sorted(fmt.scalars, key=lambda t: t.__name__), list, dict):
        if isinstance(value, base):
            name = base.__name__
            return (
                f"a subclass of {name} would come back as a plain {name}; "
                f"convert it with {name}(...)"
            )
    module = type(value).__module__
    if module == "datetime":
        if type(value).__name__ == "timedelta":
            return "store value.total_seconds() and rebuild it with timedelta(seconds=...) on read"
        return "store value.isoformat() and rebuild it with fromisoformat() on read"
    if module in ("uuid", "decimal"):
        return f"store str(value) and rebuild it with {type(value).__name__}(...) on read"
    if dataclasses.is_dataclass(value):
        return "store dataclasses.asdict(value) and rebuild it on read"
    return f"{fmt.name} stores only {fmt.accepted}; convert it, or use PickleSerializer"


def _refusal(
    fmt: _Format, item: object, where: list[object], problem: str, *, key: bool = False
) -> str:
    """The message: what is refused, where it is, why, and what to do instead."""
    what = _type_name(type(item))
    place = f"at {_render(where)}"
    if key:  # a key has no path of its own: it is in the dict at `where`
        what, place = f"dict key {_short_repr(item)} ({what})", f"in {_render(where)}"
    elif type(item) is float:
        what = f"float {item!r}"
    return f"{fmt.name} cannot store the {what} {place}: {problem}"


def _type_name(kind: type) -> str:
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


def _render(where: list[object]) -> str:
    """A path as Python would spell it: ``value["items"][3]``."""
    steps = [_render_step(step) for step in where[1:]]  # where[0] is _ROOT
    if len(steps) > 12:  # a value refused for its depth
        steps[6:-6] = ["..."]
    return "value" + "".join(steps)


def _render_step(step: object) -> str:
    if type(step) is str:  # in double quotes, as the JSON it would become
        shown = step if len(step) <= 40 else step[:37] + "..."
        quoted = json.dumps(shown, ensure_ascii=False)
        # A lone surrogate would make the message itself unprintable: escape it.
        return f"[{quoted.encode('utf-8', 'backslashreplace').decode()}]"
    return f"[{_short_repr(step)}]"


def _short_repr(value: object) -> str:
    if type(value) is int and value.bit_length() > 64:
        return f"<int of {value.bit_length()} bits>"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _refuse_if_unstorable(value: object, fmt: _Format) -> None:
    """Raise ``SerializationError`` if ``fmt`` cannot store ``value``."""
    problem = _find_refusal(value, fmt)
    if problem is not None:
        raise SerializationError(problem)


def _encoder_refused(value: object, fmt: _Format, error: Exception) -> SerializationError:
    """The error for a value the encoder refused: the rule's own message, or, if the
    rule has nothing to say (the value changed while being written, say), the
    encoder's."""
    problem = _find_refusal(value, fmt)
    if problem is None:
        problem = f"{fmt.name} cannot store the {_type_name(type(value))} at value ({error})"
    return SerializationError(problem)


class JsonSerializer(Serializer):
    """JSON: ``None``, ``bool``, ``int`` (64-bit), finite ``float``, ``str``,
    ``list``, and ``dict`` with ``str`` keys, nested; exactly these types.

    Anything else, a tuple or a subclass of these included, is refused with
    ``SerializationError``, since it would come back as something else (see the
    module docstring). Uses orjson when it is importable: it accepts the same
    values, and the bytes are plain JSON either way, so processes with and without
    orjson read each other's entries.
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

    def dumps(self, value: object) -> bytes:
        """JSON bytes, or ``SerializationError`` naming what is refused and where."""
        orjson = self._orjson
        if orjson is not None:
            if not _quick_check(value, _ORJSON_PLAIN, None):
                _refuse_if_unstorable(value, _JSON)
            try:
                result: bytes = orjson.dumps(value, option=self._options)
            except Exception as exc:
                raise _encoder_refused(value, _JSON, exc) from None
            return result
        if not _quick_check(value, _STDLIB_JSON_PLAIN, _JSON.keys):
            _refuse_if_unstorable(value, _JSON)
        try:
            # Both checks above bound the depth, so the value has no cycle for the
            # encoder to look for.
            text = json.dumps(
                value,
                separators=(",", ":"),
                ensure_ascii=False,
                allow_nan=False,
                check_circular=False,
            )
            return text.encode()
        except Exception as exc:
            raise _encoder_refused(value, _JSON, exc) from None

    def loads(self, data: bytes) -> object:
        if self._orjson is not None:
            return self._orjson.loads(data)
        return json.loads(data)


class MsgpackSerializer(Serializer):
    """MessagePack (needs ``msgpack``): what JSON stores, plus ``bytes``, any
    ``float``, and dict keys of type ``None``, ``bool``, ``int``, ``float`` (not
    NaN), ``str`` or ``bytes``; exactly these types.

    Anything else, a tuple, a ``bytearray`` or a subclass included, is refused with
    ``SerializationError``, since it would come back as something else.
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

    def dumps(self, value: object) -> bytes:
        """msgpack bytes, or ``SerializationError`` naming what is refused and where."""
        if not _quick_check(value, _MSGPACK_PLAIN, _MSGPACK.keys):
            _refuse_if_unstorable(value, _MSGPACK)
        try:
            # strict_types: no tuple packed as a list, no subclass as its base, in
            # case one ever got past the check.
            result: bytes = self._msgpack.packb(value, use_bin_type=True, strict_types=True)
        except Exception as exc:
            raise _encoder_refused(value, _MSGPACK, exc) from None
        return result

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
