"""Hypothesis fuzzing of the wire decoder.

``Codec.decode`` is total: for any bytes it returns an ``Entry`` or raises
``envelope.DecodeError``, never anything else, for every serializer, with and
without compression. A signed pickle envelope is unpickled only when it is
byte-for-byte the one that was signed. And what is encoded decodes back equal,
value and metadata.
"""

from __future__ import annotations

import functools
import importlib.util
import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachewise._core import envelope
from cachewise._core.entry import Entry
from cachewise.serialization import (
    Codec,
    JsonSerializer,
    MsgpackSerializer,
    PickleSerializer,
    Serializer,
)

SECRET = b"fuzzing-secret-0123456789abcdef"

FUZZ = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# -- a pickle gadget: unpickling it has an observable side effect ---------------------

EXECUTED: list[str] = []


def _record(tag: str) -> str:
    EXECUTED.append(tag)
    return tag


class Gadget:
    def __reduce__(self) -> tuple[Callable[[str], str], tuple[str]]:
        return (_record, ("unpickled",))


# -- codecs under test -------------------------------------------------------------------


HAVE_ORJSON = importlib.util.find_spec("orjson") is not None
HAVE_MSGPACK = importlib.util.find_spec("msgpack") is not None
HAVE_ZSTD = importlib.util.find_spec("zstandard") is not None


def stdlib_json() -> JsonSerializer:
    serializer = JsonSerializer()
    serializer._orjson = None  # what a process without orjson runs
    return serializer


def orjson_json() -> JsonSerializer:
    serializer = JsonSerializer()
    assert serializer._orjson is not None
    return serializer


#: The serializers installed here (the dev extras install all of them).
SERIALIZERS: dict[str, Callable[[], Serializer]] = {
    "stdlib-json": stdlib_json,
    "pickle": lambda: PickleSerializer(SECRET),
}
if HAVE_ORJSON:
    SERIALIZERS["orjson"] = orjson_json
if HAVE_MSGPACK:
    SERIALIZERS["msgpack"] = MsgpackSerializer

COMPRESSORS: list[str | None] = [None, "zlib"]
if HAVE_ZSTD:
    COMPRESSORS.append("zstd")

#: Every (serializer, compress) pair; each example draws one. Compression is tried
#: on every payload (threshold 0), so "zlib" and "zstd" do compress what they can.
CONFIGS = st.sampled_from([(name, compress) for name in SERIALIZERS for compress in COMPRESSORS])


@functools.cache
def make_codec(name: str, compress: str | None = None) -> Codec:
    return Codec(SERIALIZERS[name](), compress=compress, compress_threshold=0)


def metadata(entry: Entry) -> tuple[float, float, float, float, float, bool]:
    return (
        entry.written_at,
        entry.expires_at,
        entry.stale_until,
        entry.refresh_at,
        entry.delta,
        entry.negative,
    )


def decode_or_refuse(codec: Codec, data: bytes) -> Entry | None:
    """The decoded entry, or ``None`` for a ``DecodeError``; any other exception fails."""
    try:
        return codec.decode(data)
    except envelope.DecodeError:
        return None


# -- strategies ----------------------------------------------------------------------------

#: What JSON round-trips exactly: no tuples, str keys only, finite floats, and ints
#: in the range orjson and msgpack encode (signed 64-bit up to unsigned 64-bit).
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=10), children, max_size=6)
    ),
    max_leaves=25,
)

TIMES = st.floats(min_value=0.0, max_value=1e10, allow_nan=False, allow_infinity=False)


@st.composite
def entries(draw: st.DrawFn, values: st.SearchStrategy[Any] = JSON_VALUES) -> Entry:
    """Entries whose times a reader accepts:
    refresh_at <= expires_at <= stale_until, written_at <= expires_at, delta >= 0."""
    refresh_at, expires_at, stale_until = sorted(draw(st.lists(TIMES, min_size=3, max_size=3)))
    written_at = draw(st.floats(min_value=0.0, max_value=expires_at))
    delta = draw(st.floats(min_value=0.0, max_value=3600.0))
    return Entry(
        draw(values),
        expires_at,
        stale_until,
        refresh_at,
        delta,
        draw(st.booleans()),
        written_at,
    )


@st.composite
def mutations(draw: st.DrawFn, original: bytes) -> bytes:
    """``original`` after 1 to 4 bit flips, truncations, insertions, byte
    replacements or deletions at random positions."""
    data = bytearray(original)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "replace", "delete"]))
        if kind == "truncate":
            del data[draw(st.integers(min_value=0, max_value=len(data))) :]
        elif kind == "insert":
            at = draw(st.integers(min_value=0, max_value=len(data)))
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif not data:
            continue
        elif kind == "flip":
            at = draw(st.integers(min_value=0, max_value=len(data) - 1))
            data[at] ^= 1 << draw(st.integers(min_value=0, max_value=7))
        elif kind == "replace":
            at = draw(st.integers(min_value=0, max_value=len(data) - 1))
            data[at] = draw(st.integers(min_value=0, max_value=255))
        else:
            at = draw(st.integers(min_value=0, max_value=len(data) - 1))
            del data[at : at + draw(st.integers(min_value=1, max_value=16))]
    return bytes(data)


_HEADER = struct.Struct(">BBBBB3sddddd")
ANY_FLOAT = st.floats(allow_nan=True, allow_infinity=True)


@st.composite
def header_like(draw: st.DrawFn) -> bytes:
    """Bytes that get past the first checks often: mostly-plausible header fields
    (valid magic and version, small ids, sometimes bad times) and a random body."""
    small = st.integers(min_value=0, max_value=4) | st.integers(min_value=0, max_value=255)
    header = _HEADER.pack(
        draw(st.sampled_from([envelope.MAGIC, envelope.MAGIC, 0x00])),
        draw(st.sampled_from([envelope.VERSION, envelope.VERSION, 2])),
        draw(small),
        draw(small),
        draw(small),
        draw(st.sampled_from([b"\0\0\0", b"\0\0\0", b"\0\1\0"])),
        *draw(st.lists(TIMES | ANY_FLOAT, min_size=5, max_size=5)),
    )
    return header + draw(st.binary(max_size=200))


# -- decoding is total ----------------------------------------------------------------------


@FUZZ
@given(config=CONFIGS, data=st.binary(max_size=300) | header_like())
def test_random_bytes_decode_or_raise_decode_error_only(
    config: tuple[str, str | None], data: bytes
) -> None:
    decode_or_refuse(make_codec(*config), data)


@FUZZ
@given(config=CONFIGS, entry=entries(), data=st.data())
def test_mutated_envelopes_decode_or_raise_decode_error_only(
    config: tuple[str, str | None], entry: Entry, data: st.DataObject
) -> None:
    codec = make_codec(*config)
    original = codec.encode(entry)
    decode_or_refuse(codec, data.draw(mutations(original), label="mutated"))


@pytest.mark.parametrize("compress", [None, "zlib"])
@FUZZ
@given(data=st.data())
def test_mutated_signed_pickle_envelopes_never_unpickle_anything(
    compress: str | None, data: st.DataObject
) -> None:
    codec = make_codec("pickle", compress)
    original = codec.encode(Entry([Gadget(), "padding " * 20], 60.0, 90.0, 45.0, 0.5, False, 1.0))
    assert bool(original[2] & envelope.FLAG_COMPRESSED) is (compress is not None)
    mutated = data.draw(mutations(original), label="mutated")
    EXECUTED.clear()
    try:
        decoded = decode_or_refuse(codec, mutated)
        if decoded is not None:
            # Only the very bytes that were signed are ever unpickled.
            assert mutated == original
            assert EXECUTED == ["unpickled"]
        else:
            assert EXECUTED == []
        # Readers configured for another format never unpickle, whatever the bytes say.
        EXECUTED.clear()
        for other in SERIALIZERS:
            if other != "pickle":
                decode_or_refuse(make_codec(other), mutated)
        assert EXECUTED == []
    finally:
        EXECUTED.clear()


def test_the_pickle_gadget_fires_when_its_envelope_is_genuine() -> None:
    """The control for the property above: unpickling the gadget is observable."""
    codec = make_codec("pickle")
    EXECUTED.clear()
    try:
        decoded = codec.decode(codec.encode(Entry([Gadget()], 60.0, 90.0, 45.0)))
        assert decoded.value == ["unpickled"]
        assert EXECUTED == ["unpickled"]
    finally:
        EXECUTED.clear()


# -- round trips -----------------------------------------------------------------------------


@FUZZ
@given(config=CONFIGS, entry=entries())
def test_encoded_entries_decode_to_equal_values_and_metadata(
    config: tuple[str, str | None], entry: Entry
) -> None:
    codec = make_codec(*config)
    decoded = codec.decode(codec.encode(entry))
    assert decoded.value == entry.value
    assert metadata(decoded) == metadata(entry)


@pytest.mark.skipif(not HAVE_ORJSON, reason="needs orjson")
@FUZZ
@given(
    direction=st.sampled_from([("orjson", "stdlib-json"), ("stdlib-json", "orjson")]),
    compress=st.sampled_from(COMPRESSORS),
    entry=entries(),
)
def test_json_with_and_without_orjson_read_each_others_envelopes(
    direction: tuple[str, str], compress: str | None, entry: Entry
) -> None:
    writer, reader = direction
    decoded = make_codec(reader).decode(make_codec(writer, compress).encode(entry))
    assert decoded.value == entry.value
    assert metadata(decoded) == metadata(entry)


@FUZZ
@given(
    name=st.sampled_from([name for name in SERIALIZERS if name in ("msgpack", "pickle")]),
    compress=st.sampled_from(COMPRESSORS),
    entry=entries(st.binary(max_size=2000) | st.text(max_size=2000)),
)
def test_bytes_and_long_text_round_trip_where_the_format_has_bytes(
    name: str, compress: str | None, entry: Entry
) -> None:
    codec = make_codec(name, compress)
    decoded = codec.decode(codec.encode(entry))
    assert decoded.value == entry.value
    assert metadata(decoded) == metadata(entry)
