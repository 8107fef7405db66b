"""The wire codec: serializers, signed pickle, compression, size limits, and decoding
that is total (anything unreadable is a ``DecodeError``, served as a counted miss).

The serializers' rule: a value reads back equal with the same types all the way down,
or it is refused at write with a ``SerializationError`` naming the type and where it
is, by every JSON writer alike (with orjson or without) and by msgpack.

Unit tests drive ``Codec`` and ``envelope`` directly; the end-to-end tests go through
a real Redis (the ``redis_url`` fixture), since ``MemoryBackend`` stores values by
reference and never serializes.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import dataclasses
import datetime
import decimal
import enum
import hashlib
import hmac
import math
import random
import struct
import time
import tracemalloc
import uuid
import zlib
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachewise import MISSING, AsyncCache, Cache, SerializationError, ValueTooLargeError
from cachewise._core import envelope
from cachewise._core.entry import Entry
from cachewise._errors import CacheError
from cachewise.serialization import (
    Codec,
    JsonSerializer,
    MsgpackSerializer,
    PickleSerializer,
    Serializer,
    ZlibCompressor,
    ZstdCompressor,
    make_serializer,
)

SECRET = b"cachewise-test-secret-0123456789"
OTHER_SECRET = b"some-other-secret-9876543210-xyz"

# Header offsets (see the layout in cachewise._core.envelope).
FLAGS_AT = 2
SERIALIZER_AT = 3
COMPRESSOR_AT = 4
TIME_FIELDS = ("written_at", "expires_at", "stale_until", "refresh_at", "delta")
TIME_OFFSETS = {name: 8 + 8 * index for index, name in enumerate(TIME_FIELDS)}


# -- a pickle gadget: unpickling it has an observable side effect ---------------------

EXECUTED: list[str] = []


def _record(tag: str) -> str:
    """Called by pickle when a ``Gadget`` is unpickled."""
    EXECUTED.append(tag)
    return tag


class Gadget:
    """Pickles to "call _record('unpickled')": proof that bytes were unpickled."""

    def __reduce__(self) -> tuple[Callable[[str], str], tuple[str]]:
        return (_record, ("unpickled",))


class Point:
    """A plain class: pickle round-trips it, JSON cannot represent it."""

    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)

    __hash__ = None  # type: ignore[assignment]


@pytest.fixture
def executed() -> Iterator[list[str]]:
    EXECUTED.clear()
    yield EXECUTED
    EXECUTED.clear()


# -- helpers ---------------------------------------------------------------------------


def orjson_json() -> JsonSerializer:
    pytest.importorskip("orjson")
    serializer = JsonSerializer()
    assert serializer._orjson is not None
    return serializer


def stdlib_json() -> JsonSerializer:
    serializer = JsonSerializer()
    serializer._orjson = None  # what a process without orjson runs
    return serializer


def msgpack_serializer() -> MsgpackSerializer:
    pytest.importorskip("msgpack")
    return MsgpackSerializer()


def pickle_serializer(secret: bytes = SECRET) -> PickleSerializer:
    return PickleSerializer(secret)


SERIALIZERS: dict[str, Callable[[], Serializer]] = {
    "orjson": orjson_json,
    "stdlib-json": stdlib_json,
    "msgpack": msgpack_serializer,
    "pickle": pickle_serializer,
}


def compression(name: str | None) -> str | None:
    if name == "zstd":
        pytest.importorskip("zstandard")
    return name


def entry_of(value: Any, *, negative: bool = False, now: float = 1_700_000_000.0625) -> Entry:
    """An entry whose metadata fields are all distinct and not round numbers."""
    return Entry(
        value,
        expires_at=now + 60.25,
        stale_until=now + 90.5,
        refresh_at=now + 45.125,
        delta=0.375,
        negative=negative,
        written_at=now,
    )


def live_entry(value: Any) -> Entry:
    """An entry that is fresh right now on the real clock (what a Redis cache reads)."""
    return entry_of(value, now=time.time())


def metadata(entry: Entry) -> tuple[float, float, float, float, float, bool]:
    return (
        entry.written_at,
        entry.expires_at,
        entry.stale_until,
        entry.refresh_at,
        entry.delta,
        entry.negative,
    )


def with_byte(data: bytes, index: int, value: int) -> bytes:
    changed = bytearray(data)
    changed[index] = value
    return bytes(changed)


def with_time(data: bytes, field: str, value: float) -> bytes:
    changed = bytearray(data)
    struct.pack_into(">d", changed, TIME_OFFSETS[field], value)
    return bytes(changed)


def json_envelope() -> bytes:
    return Codec(JsonSerializer()).encode(entry_of({"a": [1, 2, 3]}))


def gadget_envelope(secret: bytes = SECRET, **codec_options: Any) -> bytes:
    return Codec(PickleSerializer(secret), **codec_options).encode(entry_of([Gadget(), "x"]))


def assert_refused(codec: Codec, data: Any) -> envelope.DecodeError:
    """``codec.decode(data)`` raises ``DecodeError`` and nothing else."""
    with pytest.raises(envelope.DecodeError) as info:
        codec.decode(data)
    return info.value


def decode_or_refuse(codec: Codec, data: bytes) -> Entry | None:
    """The decoded entry, or ``None`` for a ``DecodeError``; any other exception fails."""
    try:
        return codec.decode(data)
    except envelope.DecodeError:
        return None


# -- round trips -------------------------------------------------------------------------


VALUE = {
    "name": "Ada Lovelace \u00e9\u4e2d\U0001f600",
    "numbers": [0, -1, 2**63 - 1, -(2**63), 0.1, -0.0, 1e300, 5e-324],
    "flags": [True, False, None],
    "nested": {"empty_list": [], "empty_dict": {}, "quote": 'a "b" \\ c\n'},
    "blob": "compressible " * 300,
}


@pytest.mark.parametrize("negative", [False, True], ids=["positive", "negative"])
@pytest.mark.parametrize("compress", [None, "zlib", "zstd"])
@pytest.mark.parametrize("serializer_name", sorted(SERIALIZERS))
def test_entries_round_trip_value_and_all_metadata(
    serializer_name: str, compress: str | None, negative: bool
) -> None:
    codec = Codec(SERIALIZERS[serializer_name](), compress=compression(compress))
    entry = entry_of(VALUE, negative=negative)
    data = codec.encode(entry)
    assert bool(data[FLAGS_AT] & envelope.FLAG_COMPRESSED) is (compress is not None)
    decoded = codec.decode(data)
    assert decoded.value == VALUE
    assert metadata(decoded) == metadata(entry)


@pytest.mark.parametrize(
    ("writer", "reader"),
    [(orjson_json, stdlib_json), (stdlib_json, orjson_json)],
    ids=["orjson-writes-stdlib-reads", "stdlib-writes-orjson-reads"],
)
@pytest.mark.parametrize("compress", [None, "zlib"])
def test_json_written_with_or_without_orjson_is_read_by_the_other(
    writer: Callable[[], JsonSerializer],
    reader: Callable[[], JsonSerializer],
    compress: str | None,
) -> None:
    entry = entry_of(VALUE, negative=True)
    data = Codec(writer(), compress=compress).encode(entry)
    decoded = Codec(reader()).decode(data)
    assert decoded.value == VALUE
    assert metadata(decoded) == metadata(entry)


@pytest.mark.parametrize("value", [2**64 + 1, -(2**63) - 1], ids=["over-u64", "under-i64"])
def test_ints_beyond_64_bits_are_refused_with_and_without_orjson(value: int) -> None:
    """orjson would read such an int back as a float: a silently different value.
    So both writers refuse it, and nothing is written."""
    for writer in (stdlib_json(), orjson_json()):
        with pytest.raises(SerializationError, match="int"):
            Codec(writer).encode(entry_of(value))


# -- the rule: a value reads back equal with the same types, or is refused at write ------


def assert_identical(expected: Any, actual: Any, where: str = "value") -> None:
    """``actual`` equals ``expected`` with the same type at every level: dict keys
    in the same order and of the same types, ``True`` never read back as ``1``,
    ``-0.0`` as ``0.0``, a tuple as a list. NaN counts as equal to NaN."""
    assert type(actual) is type(expected), (
        f"{where}: {type(expected).__name__} read back as {type(actual).__name__}"
    )
    if type(expected) is dict:
        assert len(actual) == len(expected), f"{where}: {actual!r} for {expected!r}"
        for (key, item), (got_key, got_item) in zip(expected.items(), actual.items(), strict=True):
            assert_identical(key, got_key, f"{where} key {key!r}")
            assert_identical(item, got_item, f"{where}[{key!r}]")
    elif type(expected) is list:
        assert len(actual) == len(expected), f"{where}: {actual!r} for {expected!r}"
        for index, (item, got) in enumerate(zip(expected, actual, strict=True)):
            assert_identical(item, got, f"{where}[{index}]")
    elif type(expected) is float and math.isnan(expected):
        assert math.isnan(actual), f"{where}: {actual!r} for NaN"
    elif type(expected) is float:
        assert (actual, math.copysign(1.0, actual)) == (expected, math.copysign(1.0, expected))
    else:
        assert actual == expected, f"{where}: {actual!r} for {expected!r}"


@pytest.mark.parametrize(
    ("expected", "actual"),
    [
        ((1, 2), [1, 2]),
        ({1: "a"}, {"1": "a"}),
        ([True], [1]),
        ({"x": 1}, {"x": 1.0}),
        (-0.0, 0.0),
        ({"a": 1, "b": 2}, {"b": 2, "a": 1}),
        ([[uuid.UUID(int=1)]], [[str(uuid.UUID(int=1))]]),
    ],
    ids=["tuple", "int-key", "bool", "float", "negative-zero", "key-order", "nested-uuid"],
)
def test_assert_identical_catches_every_change_of_type_or_order(expected: Any, actual: Any) -> None:
    """The control for the round-trip tests: the helper is strict enough to fail."""
    with pytest.raises(AssertionError):
        assert_identical(expected, actual)


class Colour(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


class Mode(str, enum.Enum):
    """A StrEnum, spelled so that Python 3.10 has it too."""

    FAST = "fast"


class Name(str):
    pass


class Count(int):
    pass


class Ratio(float):
    pass


class Items(list):  # type: ignore[type-arg]
    pass


class Pair(NamedTuple):
    x: int
    y: int


@dataclasses.dataclass
class Row:
    id: int


def nested(depth: int) -> list[Any]:
    """A list inside a list ... ``depth`` containers in all, the innermost empty."""
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def self_containing_list() -> list[Any]:
    loop: list[Any] = [1]
    loop.append(loop)
    return loop


def dict_cycle() -> dict[str, Any]:
    outer: dict[str, Any] = {"a": [0]}
    outer["a"].append(outer)
    return outer


def wide_cycle() -> list[Any]:
    """Reached by 2**200 paths within the depth limit: a walk that followed them
    all would never end."""
    loop: list[Any] = []
    loop.extend([loop, loop])
    return loop


SHARED = [1, 2]

# Values JSON stores, and so msgpack too: each reads back identical from every writer.
JSON_ACCEPTED: dict[str, Any] = {
    "none": None,
    "true": True,
    "false": False,
    "zero": 0,
    "int64-min": -(2**63),
    "uint64-max": 2**64 - 1,
    "float": 0.1,
    "integral-float": 1e16,
    "float-one": 1.0,
    "negative-zero": -0.0,
    "smallest-float": 5e-324,
    "largest-float": 1.7976931348623157e308,
    "str": "Ada \u00e9\u4e2d\U0001f600",
    "empty-str": "",
    "escapes": 'a "b" \\ c\n\t\x00\u2028',
    "empty-list": [],
    "empty-dict": {},
    "bools-ints-floats": [True, 1, False, 0, 1.0, 0.0],
    "nested": {"items": [{"id": 1, "tags": ["a"], "score": None}], "meta": {"": [[], {}]}},
    "shared-sublist": {"a": SHARED, "b": SHARED},  # not a cycle: stored twice
    "deepest": nested(200),
    "wide": [{"id": index, "name": f"row {index}", "ok": index % 2 == 0} for index in range(200)],
}

# Values only msgpack stores: it reads them back identical; JSON refuses them.
MSGPACK_ONLY_ACCEPTED: dict[str, Any] = {
    "bytes": b"\x00\xff\x80",
    "empty-bytes": b"",
    "nan": math.nan,
    "infinity": math.inf,
    "minus-infinity": -math.inf,
    "int-and-str-keys": {1: "a", "1": "b"},
    "scalar-keys": {
        None: 0,
        True: 1,
        2: 2,
        2.5: 3,
        "s": 4,
        b"b": 5,
        -(2**63): 6,
        2**64 - 1: 7,
        math.inf: 8,
    },
    "bytes-inside": [b"x", {"k": b"y", b"k": [b""]}],
}

ALL_WRITERS = ("orjson", "stdlib-json", "msgpack")
JSON_WRITERS = ("orjson", "stdlib-json")


class Refused(NamedTuple):
    value: Any
    type_name: str  # the refused type, as the message must name it
    where: str  # where it is, as the message must spell it
    writers: tuple[str, ...] = ALL_WRITERS


REFUSED: dict[str, Refused] = {
    "uuid": Refused(uuid.UUID(int=1), "UUID", "at value"),
    "enum": Refused(Colour.RED, "Colour", "at value"),
    "int-enum": Refused(Level.HIGH, "Level", "at value"),
    "str-enum": Refused(Mode.FAST, "Mode", "at value"),
    "tuple": Refused((1, 2), "tuple", "at value"),
    "named-tuple": Refused(Pair(1, 2), "Pair", "at value"),
    "set": Refused({1, 2}, "set", "at value"),
    "frozenset": Refused(frozenset({1}), "frozenset", "at value"),
    "bytes": Refused(b"raw", "bytes", "at value", JSON_WRITERS),
    "bytearray": Refused(bytearray(b"raw"), "bytearray", "at value"),
    "memoryview": Refused(memoryview(b"raw"), "memoryview", "at value"),
    "decimal": Refused(decimal.Decimal("1.5"), "Decimal", "at value"),
    "datetime": Refused(datetime.datetime(2026, 1, 1), "datetime", "at value"),
    "date": Refused(datetime.date(2026, 1, 1), "date", "at value"),
    "time": Refused(datetime.time(12, 30), "time", "at value"),
    "timedelta": Refused(datetime.timedelta(seconds=1), "timedelta", "at value"),
    "dataclass": Refused(Row(1), "Row", "at value"),
    "object": Refused(object(), "object", "at value"),
    "missing-sentinel": Refused(MISSING, "_Missing", "at value"),
    "int-and-str-keys": Refused({1: "a", "1": "b"}, "int", "in value", JSON_WRITERS),
    "int-key": Refused({1: "a"}, "int", "in value", JSON_WRITERS),
    "float-key": Refused({"x": {1.5: "a"}}, "float", 'in value["x"]', JSON_WRITERS),
    "none-key": Refused({None: "a"}, "NoneType", "in value", JSON_WRITERS),
    "bool-key": Refused({True: "a"}, "bool", "in value", JSON_WRITERS),
    "ordered-dict": Refused(collections.OrderedDict(a=1), "OrderedDict", "at value"),
    "defaultdict": Refused(collections.defaultdict(list), "defaultdict", "at value"),
    "str-subclass": Refused(Name("x"), "Name", "at value"),
    "int-subclass": Refused(Count(1), "Count", "at value"),
    "float-subclass": Refused(Ratio(0.5), "Ratio", "at value"),
    "list-subclass": Refused(Items([1]), "Items", "at value"),
    "str-enum-key": Refused({Mode.FAST: 1}, "Mode", "in value"),
    "str-subclass-key": Refused({"a": {Name("k"): 1}}, "Name", 'in value["a"]'),
    "tuple-key": Refused({(1, 2): "a"}, "tuple", "in value"),
    "nan-key": Refused({math.nan: "a"}, "float", "in value"),
    "nan": Refused(math.nan, "float", "at value", JSON_WRITERS),
    "infinity": Refused([0.5, math.inf], "float", "at value[1]", JSON_WRITERS),
    "minus-infinity": Refused({"x": -math.inf}, "float", 'at value["x"]', JSON_WRITERS),
    "int-over-64-bits": Refused(2**64, "int", "at value"),
    "int-under-64-bits": Refused([-(2**63) - 1], "int", "at value[0]"),
    "huge-int": Refused(10**5000, "int", "at value"),
    "int-key-over-64-bits": Refused({2**64: "a"}, "int", "in value"),
    "lone-surrogate": Refused(["ok", "a\ud800b"], "str", "at value[1]"),
    "lone-surrogate-key": Refused({"\udc80": 1}, "str", "in value"),
    "tuple-deep-inside": Refused(
        {"a": [1, {"b": [0, 1, (2, 3)]}]}, "tuple", 'at value["a"][1]["b"][2]'
    ),
    "uuid-in-the-last-row": Refused(
        [{"id": 1}, {"id": 2}, {"id": uuid.UUID(int=3)}], "UUID", 'at value[2]["id"]'
    ),
    "set-after-a-nested-list": Refused([[1, [2]], {3}], "set", "at value[1]"),
    "cycle": Refused(self_containing_list(), "list", "at value[1]"),
    "dict-cycle": Refused(dict_cycle(), "dict", 'at value["a"][1]'),
    "wide-cycle": Refused(wide_cycle(), "list", "at value[0]"),
    "too-deep": Refused(nested(201), "list", "200"),
    "far-too-deep": Refused(nested(100_000), "list", "200"),  # never a RecursionError
}
if hasattr(enum, "StrEnum"):  # Python 3.11+
    Shade = enum.StrEnum("Shade", ["DARK"])
    REFUSED["std-str-enum"] = Refused(Shade.DARK, "Shade", "at value")
    REFUSED["std-str-enum-key"] = Refused({Shade.DARK: 1}, "Shade", "in value")


@pytest.mark.parametrize("writer", ALL_WRITERS)
@pytest.mark.parametrize("case", sorted(JSON_ACCEPTED))
def test_what_json_stores_reads_back_equal_with_the_same_types(writer: str, case: str) -> None:
    codec = Codec(SERIALIZERS[writer]())
    assert_identical(
        JSON_ACCEPTED[case], codec.decode(codec.encode(entry_of(JSON_ACCEPTED[case]))).value
    )


@pytest.mark.parametrize("case", sorted(MSGPACK_ONLY_ACCEPTED))
def test_what_only_msgpack_stores_reads_back_identical_there_and_json_refuses_it(
    case: str,
) -> None:
    value = MSGPACK_ONLY_ACCEPTED[case]
    codec = Codec(msgpack_serializer())
    assert_identical(value, codec.decode(codec.encode(entry_of(value))).value)
    for writer in JSON_WRITERS:
        with pytest.raises(SerializationError):
            Codec(SERIALIZERS[writer]()).encode(entry_of(value))


@pytest.mark.parametrize(
    ("writer", "case"),
    [
        pytest.param(writer, case, id=f"{writer}-{case}")
        for case in sorted(REFUSED)
        for writer in REFUSED[case].writers
    ],
)
def test_a_value_that_would_read_back_different_is_refused_naming_its_type_and_place(
    writer: str, case: str
) -> None:
    refused = REFUSED[case]
    with pytest.raises(SerializationError) as info:
        Codec(SERIALIZERS[writer]()).encode(entry_of(refused.value))
    message = str(info.value)
    assert isinstance(info.value, TypeError)
    assert refused.type_name in message
    assert refused.where in message


@pytest.mark.parametrize(
    "case", sorted(case for case, refused in REFUSED.items() if "msgpack" not in refused.writers)
)
def test_what_only_json_refuses_reads_back_identical_from_msgpack(case: str) -> None:
    value = REFUSED[case].value
    codec = Codec(msgpack_serializer())
    assert_identical(value, codec.decode(codec.encode(entry_of(value))).value)


@pytest.mark.parametrize("writer", ALL_WRITERS)
def test_a_value_is_refused_whole_and_nothing_is_returned_for_part_of_it(writer: str) -> None:
    codec = Codec(SERIALIZERS[writer]())
    good = [{"id": index} for index in range(1000)]
    with pytest.raises(SerializationError, match=r"at value\[1000\]"):
        codec.encode(entry_of([*good, (1, 2)]))
    assert_identical(good, codec.decode(codec.encode(entry_of(good))).value)


@pytest.mark.parametrize(
    ("value", "advice"),
    [
        ((1, 2), "would come back as a list; convert it with list(...)"),
        (Pair(1, 2), "_asdict()"),
        ({1: "a"}, "convert the keys with str(...), or use MsgpackSerializer"),
        (uuid.UUID(int=1), "store str(value)"),
        (Colour.RED, "store member.value"),
        (Level.HIGH, "store member.value"),
        (decimal.Decimal(1), "store str(value)"),
        (datetime.date(2026, 1, 1), "isoformat()"),
        (datetime.timedelta(seconds=1), "total_seconds()"),
        (Row(1), "dataclasses.asdict(value)"),
        (collections.OrderedDict(), "convert it with dict(...)"),
        (Name("x"), "convert it with str(...)"),
        ({1, 2}, "sorted(value)"),
        (b"raw", "MsgpackSerializer, which keeps bytes"),
        (math.nan, "JSON has no NaN"),
        (2**64, "64-bit range"),
        (self_containing_list(), "it contains itself (it is value)"),
        (MISSING, "MISSING marks a miss"),
    ],
    ids=[
        "tuple",
        "named-tuple",
        "int-key",
        "uuid",
        "enum",
        "int-enum",
        "decimal",
        "date",
        "timedelta",
        "dataclass",
        "ordered-dict",
        "str-subclass",
        "set",
        "bytes",
        "nan",
        "int-over-64-bits",
        "cycle",
        "missing-sentinel",
    ],
)
def test_a_json_refusal_says_what_to_store_instead(value: Any, advice: str) -> None:
    for writer in JSON_WRITERS:
        with pytest.raises(SerializationError) as info:
            SERIALIZERS[writer]().dumps(value)
        assert advice in str(info.value)


def test_msgpack_refusals_say_what_to_store_instead() -> None:
    serializer = msgpack_serializer()
    for value, advice in [
        (bytearray(b"x"), "would come back as bytes; convert it with bytes(...)"),
        ((1, 2), "would come back as a list"),
        ({math.nan: 1}, "NaN key"),
    ]:
        with pytest.raises(SerializationError) as info:
            serializer.dumps(value)
        assert advice in str(info.value)


def test_msgpack_refuses_its_own_extension_types() -> None:
    """They would read back as themselves, but the rule lists what msgpack stores."""
    msgpack = pytest.importorskip("msgpack")
    serializer = msgpack_serializer()
    for value in (msgpack.Timestamp(1), msgpack.ExtType(1, b"x")):
        with pytest.raises(SerializationError, match=type(value).__name__):
            serializer.dumps([value])


class _FailingEncoder:
    """Stands in for orjson or msgpack: refuses everything, for its own reasons."""

    OPT_PASSTHROUGH_SUBCLASS = OPT_PASSTHROUGH_DATETIME = OPT_PASSTHROUGH_DATACLASS = 0

    @staticmethod
    def dumps(value: object, **options: Any) -> bytes:
        raise ValueError("encoder says no")

    packb = dumps


@pytest.mark.parametrize("writer", ["orjson", "msgpack"])
def test_an_encoder_failure_the_rule_cannot_explain_is_a_serialization_error_too(
    writer: str,
) -> None:
    serializer = SERIALIZERS[writer]()
    setattr(serializer, "_orjson" if writer == "orjson" else "_msgpack", _FailingEncoder())
    with pytest.raises(SerializationError, match=r"the dict at value \(encoder says no\)"):
        serializer.dumps({"fine": [1, 2]})


@pytest.mark.parametrize("writer", ALL_WRITERS)
def test_200_levels_of_nesting_are_stored_and_201_refused(writer: str) -> None:
    codec = Codec(SERIALIZERS[writer]())
    deepest = {"a": nested(199)}
    assert_identical(deepest, codec.decode(codec.encode(entry_of(deepest))).value)
    with pytest.raises(SerializationError, match="nested more than 200"):
        codec.encode(entry_of({"a": nested(200)}))


@pytest.mark.parametrize("writer", JSON_WRITERS)
def test_json_refuses_tuples_and_int_keys_instead_of_changing_them(writer: str) -> None:
    """The old behaviour: a tuple came back as a list and the int key as "1"."""
    codec = Codec(SERIALIZERS[writer]())
    with pytest.raises(SerializationError, match="tuple"):
        codec.encode(entry_of({"t": (1, 2)}))
    with pytest.raises(SerializationError, match="int"):
        codec.encode(entry_of({"d": {1: "one"}}))


def test_orjson_refuses_uuids_enums_and_colliding_keys_like_the_stdlib() -> None:
    """With orjson they were accepted and read back as str, and ``{1: "a", "1": "b"}``
    lost an item; what is stored must not depend on whether orjson is installed."""
    for value in (uuid.UUID(int=1), Colour.RED, {1: "a", "1": "b"}):
        for writer in (orjson_json(), stdlib_json()):
            with pytest.raises(SerializationError):
                writer.dumps(value)


def test_msgpack_round_trips_bytes_and_scalar_keys_and_refuses_tuples() -> None:
    codec = Codec(msgpack_serializer())
    value = {"raw": b"\x00\xff\x80", 1: "int key", 2.5: "float key", b"k": None}
    assert_identical(value, codec.decode(codec.encode(entry_of(value))).value)
    with pytest.raises(SerializationError, match="tuple"):
        codec.encode(entry_of({"t": (1, 2)}))


# -- the rule, for arbitrary values --------------------------------------------------------

SCALARS_STORED = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
SCALARS_ANY = (
    SCALARS_STORED
    | st.integers()
    | st.floats()
    | st.binary(max_size=8)
    | st.text(st.characters(codec=None, categories=["Cs", "Ll"]), max_size=3)  # surrogates
)
REFUSED_LEAVES = st.sampled_from(
    [
        uuid.UUID(int=7),
        Colour.RED,
        Level.HIGH,
        Mode.FAST,
        decimal.Decimal("2.5"),
        datetime.date(2026, 1, 1),
        Row(1),
        Name("n"),
        Count(3),
        Ratio(0.25),
        bytearray(b"b"),
        frozenset({1}),
        collections.OrderedDict(a=1),
        Pair(1, 2),
    ]
) | st.tuples(SCALARS_STORED)
KEYS_ANY = (
    st.text(max_size=8)
    | st.integers()
    | st.floats()
    | st.booleans()
    | st.none()
    | st.binary(max_size=4)
    | st.text(st.characters(codec=None, categories=["Cs", "Ll"]), max_size=3)
    | st.sampled_from([Mode.FAST, Name("k"), (1, 2)])
)


def trees(leaves: st.SearchStrategy[Any], keys: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaves,
        lambda children: (
            st.lists(children, max_size=5) | st.dictionaries(keys, children, max_size=5)
        ),
        max_leaves=25,
    )


# Values JSON stores, values msgpack stores, and values mixing in everything else.
ARBITRARY_VALUES = st.one_of(
    trees(SCALARS_STORED, st.text(max_size=8)),
    trees(SCALARS_STORED | st.binary(max_size=8) | st.floats(), KEYS_ANY),
    trees(SCALARS_ANY | REFUSED_LEAVES, KEYS_ANY),
    trees(SCALARS_STORED | REFUSED_LEAVES, st.text(max_size=8)),
)
RULE = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def encode_or_refuse(codec: Codec, value: Any) -> bytes | None:
    """The envelope, or None for a ``SerializationError``; nothing else may escape."""
    try:
        return codec.encode(entry_of(value))
    except SerializationError as error:
        message = str(error)
    assert " cannot store the " in message  # the rule's own message, naming a type
    message.encode()  # printable, even when the value holds a lone surrogate
    return None


@RULE
@given(ARBITRARY_VALUES)
def test_json_reads_any_value_back_identical_or_refuses_it_with_or_without_orjson(
    value: Any,
) -> None:
    with_orjson, without = Codec(orjson_json()), Codec(stdlib_json())
    written = encode_or_refuse(with_orjson, value)
    written_without = encode_or_refuse(without, value)
    assert (written is None) == (written_without is None)  # the same values are stored
    if written is not None and written_without is not None:
        for data in (written, written_without):
            for reader in (with_orjson, without):
                assert_identical(value, reader.decode(data).value)


@RULE
@given(ARBITRARY_VALUES)
def test_msgpack_reads_any_value_back_identical_or_refuses_it(value: Any) -> None:
    codec = Codec(msgpack_serializer())
    written = encode_or_refuse(codec, value)
    if written is not None:
        assert_identical(value, codec.decode(written).value)


# -- pickle: opt-in, signed, never unpickled unless the signature checks out ------------


def test_the_default_codec_uses_json_never_pickle() -> None:
    assert isinstance(Codec().serializer, JsonSerializer)
    assert isinstance(make_serializer("json"), JsonSerializer)
    assert Codec().serializer.signed is False


def test_make_serializer_pickle_without_a_secret_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="secret"):
        make_serializer("pickle")


@pytest.mark.parametrize(
    "secret",
    [b"", b"x" * 15, "x" * 15, "\u00e9" * 7],
    ids=["empty", "15-bytes", "15-chars", "14-utf8"],
)
def test_pickle_secrets_shorter_than_16_bytes_are_value_errors(secret: bytes | str) -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        PickleSerializer(secret)
    with pytest.raises(ValueError, match="16 bytes"):
        make_serializer("pickle", secret=secret)


@pytest.mark.parametrize(
    "secret", [b"x" * 16, "x" * 16, "\u00e9" * 8], ids=["bytes", "str", "utf8"]
)
def test_pickle_secrets_of_16_bytes_are_accepted(secret: bytes | str) -> None:
    serializer = make_serializer("pickle", secret=secret)
    assert isinstance(serializer, PickleSerializer)
    codec = Codec(serializer)
    assert codec.decode(codec.encode(entry_of({1, 2}))).value == {1, 2}


def test_a_pickle_secret_that_is_not_bytes_or_str_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        PickleSerializer(1234567890123456789)  # type: ignore[arg-type]


def test_a_pickle_url_option_is_refused_because_secrets_do_not_belong_in_urls() -> None:
    # Refused while parsing the URL: no connection is ever attempted.
    with pytest.raises(ValueError, match="secret"):
        Cache.from_url("redis://127.0.0.1:1/0?serializer=pickle")


def test_the_pickle_repr_hides_the_secret() -> None:
    assert SECRET.decode() not in repr(PickleSerializer(SECRET))
    assert SECRET.decode() not in repr(Codec(PickleSerializer(SECRET)))


def test_pickle_envelopes_carry_an_hmac_sha256_of_header_and_payload() -> None:
    data = Codec(pickle_serializer()).encode(entry_of([1, 2, 3]))
    header = data[: envelope.HEADER_SIZE]
    mac = data[envelope.HEADER_SIZE : envelope.HEADER_SIZE + envelope.MAC_SIZE]
    payload = data[envelope.HEADER_SIZE + envelope.MAC_SIZE :]
    assert mac == hmac.new(SECRET, header + payload, hashlib.sha256).digest()
    assert data[SERIALIZER_AT] == PickleSerializer.wire_id


def test_pickle_signatures_are_checked_with_a_constant_time_compare(
    monkeypatch: pytest.MonkeyPatch, executed: list[str]
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real_compare = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((bytes(a), bytes(b)))
        return real_compare(a, b)

    monkeypatch.setattr("cachewise.serialization.hmac.compare_digest", spy)
    good = gadget_envelope()
    codec = Codec(pickle_serializer())
    codec.decode(good)
    assert len(calls) == 1
    assert executed == ["unpickled"]
    executed.clear()
    assert_refused(Codec(pickle_serializer(OTHER_SECRET)), good)
    assert len(calls) == 2
    assert executed == []


def test_a_genuine_gadget_envelope_is_unpickled(executed: list[str]) -> None:
    """The control for every "never unpickled" test below: the gadget does fire."""
    decoded = Codec(pickle_serializer()).decode(gadget_envelope())
    assert decoded.value == ["unpickled", "x"]
    assert executed == ["unpickled"]


def test_a_pickle_envelope_signed_with_another_secret_is_refused_and_never_unpickled(
    executed: list[str],
) -> None:
    data = gadget_envelope(OTHER_SECRET)
    error = assert_refused(Codec(pickle_serializer()), data)
    assert "signature" in str(error)
    assert executed == []


@pytest.mark.parametrize("compress", [None, "zlib"])
def test_every_bit_flip_of_a_pickle_envelope_is_refused_and_never_unpickled(
    executed: list[str], compress: str | None
) -> None:
    original = Codec(pickle_serializer(), compress=compress, compress_threshold=0).encode(
        entry_of([Gadget(), "padding " * 50])
    )
    assert bool(original[FLAGS_AT] & envelope.FLAG_COMPRESSED) is (compress is not None)
    codec = Codec(pickle_serializer())
    for index in range(len(original)):
        for bit in range(8):
            assert_refused(codec, with_byte(original, index, original[index] ^ (1 << bit)))
    assert executed == []


def test_every_truncation_of_a_pickle_envelope_is_refused_and_never_unpickled(
    executed: list[str],
) -> None:
    original = gadget_envelope()
    codec = Codec(pickle_serializer())
    for length in range(len(original)):
        assert_refused(codec, original[:length])
    assert executed == []


def test_bytes_appended_to_a_pickle_envelope_are_refused(executed: list[str]) -> None:
    original = gadget_envelope()
    codec = Codec(pickle_serializer())
    for suffix in (b"\x00", b".", b"\x80\x05N."):
        assert_refused(codec, original + suffix)
    assert executed == []


@pytest.mark.parametrize("reader_name", ["orjson", "stdlib-json", "msgpack"])
def test_json_and_msgpack_readers_refuse_pickle_envelopes_and_never_unpickle(
    executed: list[str], reader_name: str
) -> None:
    serializer = SERIALIZERS[reader_name]()
    codec = Codec(serializer)
    original = gadget_envelope()
    error = assert_refused(codec, original)
    assert "serializer" in str(error)
    # Even relabelled as the reader's own format, the bytes are only ever parsed
    # with the reader's serializer.
    assert_refused(codec, with_byte(original, SERIALIZER_AT, serializer.wire_id))
    assert executed == []


@pytest.mark.parametrize("writer_name", ["orjson", "stdlib-json", "msgpack"])
def test_a_pickle_reader_refuses_json_and_msgpack_envelopes(writer_name: str) -> None:
    data = Codec(SERIALIZERS[writer_name]()).encode(entry_of({"a": 1}))
    codec = Codec(pickle_serializer())
    assert "serializer" in str(assert_refused(codec, data))
    assert "signature" in str(
        assert_refused(codec, with_byte(data, SERIALIZER_AT, PickleSerializer.wire_id))
    )


class _UnsignedPickle(PickleSerializer):
    """An attacker's writer: claims the pickle wire id but signs nothing."""

    signed = False


def test_unsigned_or_forged_pickle_envelopes_are_refused_and_never_unpickled(
    executed: list[str],
) -> None:
    entry = entry_of([Gadget()])
    codec = Codec(pickle_serializer())
    unsigned = Codec(_UnsignedPickle(SECRET)).encode(entry)
    assert unsigned[SERIALIZER_AT] == PickleSerializer.wire_id
    assert_refused(codec, unsigned)

    signed = Codec(pickle_serializer()).encode(entry)
    header = signed[: envelope.HEADER_SIZE]
    payload = signed[envelope.HEADER_SIZE + envelope.MAC_SIZE :]
    forgeries = [
        b"\x00" * envelope.MAC_SIZE,  # an all-zero signature
        hashlib.sha256(header + payload).digest(),  # a hash, with no key
        hmac.new(SECRET, header + payload, hashlib.sha512).digest()[: envelope.MAC_SIZE],
        hmac.new(SECRET, payload, hashlib.sha256).digest(),  # payload only, not the header
        hmac.new(SECRET[:16], header + payload, hashlib.sha256).digest(),  # a prefix of the key
    ]
    for mac in forgeries:
        assert_refused(codec, header + mac + payload)
    assert executed == []


def test_a_refused_pickle_envelope_is_not_even_decompressed(
    monkeypatch: pytest.MonkeyPatch, executed: list[str]
) -> None:
    calls: list[int] = []
    real_decompress = ZlibCompressor.decompress

    def spy(self: ZlibCompressor, data: bytes, max_size: int) -> bytes:
        calls.append(len(data))
        return real_decompress(self, data, max_size)

    monkeypatch.setattr(ZlibCompressor, "decompress", spy)
    original = Codec(pickle_serializer(), compress="zlib", compress_threshold=0).encode(
        entry_of([Gadget(), "padding " * 50])
    )
    assert original[COMPRESSOR_AT] == ZlibCompressor.wire_id
    assert_refused(Codec(pickle_serializer(OTHER_SECRET)), original)
    assert_refused(Codec(pickle_serializer()), original[:-1])
    assert calls == []
    assert executed == []
    Codec(pickle_serializer()).decode(original)
    assert len(calls) == 1
    assert executed == ["unpickled"]


# -- compression -------------------------------------------------------------------------


@pytest.mark.parametrize("compress", ["zlib", "zstd"])
def test_payloads_below_the_threshold_stay_uncompressed(compress: str) -> None:
    codec = Codec(JsonSerializer(), compress=compression(compress), compress_threshold=1024)
    data = codec.encode(entry_of("a" * 1000))  # 1002 bytes of JSON
    assert data[FLAGS_AT] & envelope.FLAG_COMPRESSED == 0
    assert data[COMPRESSOR_AT] == 0
    assert data[envelope.HEADER_SIZE :] == b'"' + b"a" * 1000 + b'"'


@pytest.mark.parametrize(
    ("compress", "wire_id"), [("zlib", ZlibCompressor.wire_id), ("zstd", ZstdCompressor.wire_id)]
)
def test_large_compressible_payloads_are_compressed(compress: str, wire_id: int) -> None:
    value = {"rows": [{"id": i % 7, "name": "same old row"} for i in range(500)]}
    plain = Codec(JsonSerializer()).encode(entry_of(value))
    data = Codec(JsonSerializer(), compress=compression(compress)).encode(entry_of(value))
    assert data[FLAGS_AT] & envelope.FLAG_COMPRESSED
    assert data[COMPRESSOR_AT] == wire_id
    assert len(data) < len(plain) // 4
    assert Codec(JsonSerializer()).decode(data).value == value


@pytest.mark.parametrize("compress", ["zlib", "zstd"])
def test_the_threshold_is_inclusive(compress: str) -> None:
    codec = Codec(JsonSerializer(), compress=compression(compress), compress_threshold=2000)
    at = codec.encode(entry_of("a" * 1998))  # exactly 2000 bytes of JSON
    below = codec.encode(entry_of("a" * 1997))
    assert at[FLAGS_AT] & envelope.FLAG_COMPRESSED
    assert below[FLAGS_AT] & envelope.FLAG_COMPRESSED == 0


@pytest.mark.parametrize("compress", ["zlib", "zstd"])
def test_incompressible_payloads_are_stored_uncompressed(compress: str) -> None:
    noise = random.Random(7).randbytes(8192)
    codec = Codec(msgpack_serializer(), compress=compression(compress), compress_threshold=0)
    data = codec.encode(entry_of(noise))
    assert data[FLAGS_AT] & envelope.FLAG_COMPRESSED == 0
    assert data[COMPRESSOR_AT] == 0
    assert codec.decode(data).value == noise


@pytest.mark.parametrize(
    ("writer", "reader"),
    [("zlib", None), ("zstd", None), ("zstd", "zlib"), ("zlib", "zstd")],
    ids=["zlib-to-none", "zstd-to-none", "zstd-to-zlib", "zlib-to-zstd"],
)
def test_a_reader_reads_entries_compressed_with_any_installed_compressor(
    writer: str, reader: str | None
) -> None:
    value = "abc" * 2000
    data = Codec(JsonSerializer(), compress=compression(writer)).encode(entry_of(value))
    assert data[FLAGS_AT] & envelope.FLAG_COMPRESSED
    assert Codec(JsonSerializer(), compress=compression(reader)).decode(data).value == value


def test_a_zlib_bomb_is_refused_quickly_without_inflating_it() -> None:
    bomb = zlib.compress(b"\0" * (16 * 1024 * 1024), 9)  # 16 MiB of zeros...
    assert len(bomb) < 20_000  # ...in a few KB
    data = envelope.pack(
        entry_of(None), bomb, serializer=JsonSerializer(), compressor=ZlibCompressor()
    )
    codec = Codec(JsonSerializer(), max_value_bytes=1000)
    tracemalloc.start()
    try:
        started = time.perf_counter()
        error = assert_refused(codec, data)
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "size limit" in str(error)
    assert elapsed < 0.5
    assert peak < 256 * 1024


def test_a_zstd_bomb_is_refused_without_inflating_it() -> None:
    zstandard = pytest.importorskip("zstandard")
    bomb = zstandard.ZstdCompressor(level=19).compress(b"\0" * (32 * 1024 * 1024))
    assert len(bomb) < 20_000
    data = envelope.pack(
        entry_of(None), bomb, serializer=JsonSerializer(), compressor=ZstdCompressor()
    )
    codec = Codec(JsonSerializer(), max_value_bytes=1000)
    tracemalloc.start()
    try:
        assert_refused(codec, data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024


@pytest.mark.parametrize("compress", ["zlib", "zstd"])
def test_decompression_is_bounded_by_the_readers_max_value_bytes(compress: str) -> None:
    value = "z" * 4998  # 5000 bytes of JSON
    data = Codec(JsonSerializer(), compress=compression(compress)).encode(entry_of(value))
    assert data[FLAGS_AT] & envelope.FLAG_COMPRESSED
    assert Codec(JsonSerializer(), max_value_bytes=5000).decode(data).value == value
    assert "size limit" in str(assert_refused(Codec(JsonSerializer(), max_value_bytes=4999), data))


def test_uncompressed_payloads_over_the_readers_max_value_bytes_are_refused() -> None:
    data = Codec(JsonSerializer()).encode(entry_of("z" * 4998))
    assert Codec(JsonSerializer(), max_value_bytes=5000).decode(data).value == "z" * 4998
    assert_refused(Codec(JsonSerializer(), max_value_bytes=4999), data)


@pytest.mark.parametrize("compress", ["zlib", "zstd"])
def test_truncated_or_corrupt_compressed_payloads_are_refused(compress: str) -> None:
    data = Codec(JsonSerializer(), compress=compression(compress)).encode(entry_of(["abc"] * 1000))
    codec = Codec(JsonSerializer())
    for cut in (1, 2, 10, (len(data) - envelope.HEADER_SIZE) // 2):
        assert_refused(codec, data[:-cut])
    assert_refused(codec, data[: envelope.HEADER_SIZE] + b"not compressed at all")


def test_the_compressed_flag_with_an_unknown_compressor_is_refused() -> None:
    data = Codec(JsonSerializer(), compress="zlib").encode(entry_of("abc" * 2000))
    assert "compressor" in str(assert_refused(Codec(), with_byte(data, COMPRESSOR_AT, 9)))
    assert "compressor" in str(assert_refused(Codec(), with_byte(data, COMPRESSOR_AT, 0)))


# -- unserializable and oversized values ------------------------------------------------


@pytest.mark.parametrize(
    ("serializer_name", "value", "type_name"),
    [
        ("orjson", {"ids": {1, 2}}, "set"),
        ("stdlib-json", {"ids": {1, 2}}, "set"),
        ("orjson", [1, b"raw"], "bytes"),
        ("stdlib-json", [1, b"raw"], "bytes"),
        ("msgpack", object(), "object"),
        ("msgpack", {"o": object()}, "object"),
        ("pickle", lambda: 1, "function"),
    ],
    ids=[
        "orjson-set",
        "stdlib-set",
        "orjson-bytes",
        "stdlib-bytes",
        "msgpack",
        "msgpack-nested",
        "pickle",
    ],
)
def test_an_unserializable_value_raises_a_type_error_naming_its_type(
    serializer_name: str, value: Any, type_name: str
) -> None:
    codec = Codec(SERIALIZERS[serializer_name]())
    with pytest.raises(SerializationError) as info:
        codec.encode(entry_of(value))
    assert isinstance(info.value, TypeError)
    assert isinstance(info.value, CacheError)
    assert type_name in str(info.value)


@pytest.mark.parametrize("serializer_name", ["orjson", "stdlib-json", "msgpack"])
def test_a_circular_value_is_a_serialization_error(serializer_name: str) -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(SerializationError, match="list"):
        Codec(SERIALIZERS[serializer_name]()).encode(entry_of(loop))


def test_a_value_pickle_refuses_with_a_value_error_is_still_a_serialization_error() -> None:
    with pytest.raises(SerializationError, match="LP_c_int"):
        Codec(pickle_serializer()).encode(entry_of(ctypes.pointer(ctypes.c_int(1))))


@pytest.mark.parametrize("serializer_name", sorted(SERIALIZERS))
def test_values_over_max_value_bytes_raise_value_too_large_error(serializer_name: str) -> None:
    serializer = SERIALIZERS[serializer_name]()
    limit = len(serializer.dumps("x" * 500))
    codec = Codec(serializer, max_value_bytes=limit, compress="zlib", compress_threshold=0)
    assert codec.decode(codec.encode(entry_of("x" * 500))).value == "x" * 500
    with pytest.raises(ValueTooLargeError, match=str(limit)) as info:
        codec.encode(entry_of("x" * 501))  # the limit is on the uncompressed size
    assert isinstance(info.value, ValueError)


# -- decoding is total: DecodeError, never anything else --------------------------------


def _malformed_cases() -> dict[str, bytes | Any]:
    good = json_envelope()
    cases: dict[str, bytes | Any] = {
        "empty": b"",
        "garbage": b"garbage",
        "long-garbage": random.Random(3).randbytes(200),
        "header-only-garbage": b"\xc5\x01" + b"\xff" * 46,
        "one-byte-short-header": good[: envelope.HEADER_SIZE - 1],
        "wrong-magic": with_byte(good, 0, 0xC4),
        "zero-magic": with_byte(good, 0, 0),
        "version-0": with_byte(good, 1, 0),
        "version-2": with_byte(good, 1, 2),
        "version-255": with_byte(good, 1, 255),
        "compressor-without-flag": with_byte(good, COMPRESSOR_AT, ZlibCompressor.wire_id),
        "zstd-id-without-flag": with_byte(good, COMPRESSOR_AT, ZstdCompressor.wire_id),
        "serializer-0": with_byte(good, SERIALIZER_AT, 0),
        "serializer-msgpack": with_byte(good, SERIALIZER_AT, MsgpackSerializer.wire_id),
        "serializer-pickle": with_byte(good, SERIALIZER_AT, PickleSerializer.wire_id),
        "serializer-255": with_byte(good, SERIALIZER_AT, 255),
        "payload-not-json": good[: envelope.HEADER_SIZE] + b"{not json",
        "payload-trailing-data": good + b" [1]",
        "payload-empty": good[: envelope.HEADER_SIZE],
        "payload-invalid-utf8": good[: envelope.HEADER_SIZE] + b'"\xff\xfe"',
        "none": None,
        "str": good.decode("latin-1"),
        "int": 12345,
    }
    for bit in range(2, 8):
        cases[f"unknown-flag-0x{1 << bit:02x}"] = with_byte(good, FLAGS_AT, 1 << bit)
    for index in (5, 6, 7):
        cases[f"reserved-byte-{index}"] = with_byte(good, index, 1)
    for field in TIME_FIELDS:
        for name, bad in (("nan", math.nan), ("inf", math.inf), ("-inf", -math.inf)):
            cases[f"{field}-{name}"] = with_time(good, field, bad)
    return cases


MALFORMED = _malformed_cases()


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_envelopes_are_decode_errors_only(case: str) -> None:
    codec = Codec(JsonSerializer(), compress="zlib")
    assert codec.decode(json_envelope()).value == {"a": [1, 2, 3]}  # the control
    assert_refused(codec, MALFORMED[case])


@pytest.mark.parametrize(
    "times",
    [
        {"stale_until": 59.0},  # stale_until < expires_at
        {"refresh_at": 61.0},  # refresh_at > expires_at
        {"delta": -0.001},
        {"written_at": 60.5},  # written after it expired
    ],
    ids=["stale-before-expiry", "refresh-after-expiry", "negative-delta", "written-after-expiry"],
)
def test_entries_with_inconsistent_times_are_refused(times: dict[str, float]) -> None:
    fields = {"expires_at": 60.0, "stale_until": 90.0, "refresh_at": 45.0, "delta": 0.1}
    fields["written_at"] = 1.0
    fields.update(times)
    codec = Codec(JsonSerializer())
    data = codec.encode(Entry("v", **fields))  # the writer does not check...
    assert "inconsistent" in str(assert_refused(codec, data))  # ...the reader does


def test_entries_whose_times_all_coincide_are_accepted() -> None:
    codec = Codec(JsonSerializer())
    entry = Entry("v", 60.0, 60.0, 60.0, 0.0, False, 60.0)
    assert metadata(codec.decode(codec.encode(entry))) == metadata(entry)


@pytest.mark.parametrize("serializer_name", sorted(SERIALIZERS))
def test_every_strict_prefix_of_an_envelope_is_refused(serializer_name: str) -> None:
    codec = Codec(SERIALIZERS[serializer_name]())
    data = codec.encode(entry_of({"a": [1, 2, 3], "b": "text"}))
    for length in range(len(data)):
        assert_refused(codec, data[:length])


@pytest.mark.parametrize("compress", [None, "zlib", "zstd"])
@pytest.mark.parametrize("serializer_name", sorted(SERIALIZERS))
def test_every_single_byte_change_decodes_or_raises_decode_error_only(
    serializer_name: str, compress: str | None
) -> None:
    codec = Codec(SERIALIZERS[serializer_name](), compress=compression(compress))
    data = codec.encode(entry_of({"a": [1, 2.5, None], "b": "text " * 300}, negative=True))
    for index in range(len(data)):
        for change in (0x00, 0xFF, data[index] ^ 0x01, data[index] ^ 0x80):
            decode_or_refuse(codec, with_byte(data, index, change))


def test_bytearray_and_memoryview_inputs_decode_like_bytes() -> None:
    data = json_envelope()
    codec = Codec()
    assert codec.decode(bytearray(data)).value == {"a": [1, 2, 3]}  # type: ignore[arg-type]
    assert codec.decode(memoryview(data)).value == {"a": [1, 2, 3]}  # type: ignore[arg-type]


# -- end to end through Redis -------------------------------------------------------------


@pytest.fixture
def raw(redis_url: str) -> Iterator[Any]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def test_redis_set_of_an_unserializable_value_raises_and_writes_nothing(
    redis_url: str, raw: Any
) -> None:
    with Cache.from_url(redis_url) as cache:
        cache.set("k", "old")
        with pytest.raises(TypeError, match="set"):
            cache.set("k", {1, 2})
        # The failed set revoked nothing it should keep and wrote nothing new.
        assert cache.get("k") == "old"
        cache.delete("k")
        with pytest.raises(TypeError, match="set"):
            cache.set("k", {1, 2})
        assert cache.get("k") is MISSING
        assert raw.keys("*") == []


def test_redis_get_or_load_of_an_unserializable_value_raises_and_caches_nothing(
    redis_url: str, raw: Any
) -> None:
    with Cache.from_url(redis_url) as cache:
        with pytest.raises(TypeError, match="set"):
            cache.get_or_load("k", lambda: {1, 2})
        assert cache.get("k") is MISSING
        assert raw.exists("{k}", "{k}:lease") == 0  # no value, and the lease is released
        started = time.perf_counter()
        assert cache.get_or_load("k", lambda: [1, 2]) == [1, 2]
        assert time.perf_counter() - started < 1.0  # nobody waited on a stale lease
        assert cache.get("k") == [1, 2]


def test_redis_set_many_with_one_unserializable_value_writes_none_of_them(
    redis_url: str, raw: Any
) -> None:
    with Cache.from_url(redis_url) as cache:
        with pytest.raises(TypeError, match="set"):
            cache.set_many({"a": 1, "b": {1, 2}, "c": 3})
        assert cache.get_many(["a", "b", "c"]) == {}
    assert raw.keys("*") == []


def test_async_redis_unserializable_values_raise_and_write_nothing(
    redis_url: str, raw: Any
) -> None:
    async def loader() -> set[int]:
        return {1, 2}

    async def scenario() -> None:
        cache = AsyncCache.from_url(redis_url)
        try:
            with pytest.raises(TypeError, match="set"):
                await cache.set("k", {1, 2})
            assert await cache.get("k") is MISSING
            with pytest.raises(TypeError, match="set"):
                await cache.get_or_load("k", loader)
            assert await cache.get("k") is MISSING
        finally:
            await cache.aclose()

    asyncio.run(scenario())
    assert raw.exists("{k}", "{k}:lease") == 0


def test_redis_values_over_max_value_bytes_raise_value_too_large_and_write_nothing(
    redis_url: str, raw: Any
) -> None:
    with Cache.from_url(redis_url + "?max_value_bytes=1000") as cache:
        with pytest.raises(ValueTooLargeError) as info:
            cache.set("k", "x" * 2000)
        assert isinstance(info.value, ValueError)
        with pytest.raises(ValueError, match="max_value_bytes"):
            cache.get_or_load("k", lambda: "x" * 2000)
        assert cache.get("k") is MISSING
        assert raw.exists("{k}", "{k}:lease") == 0
        cache.set("k", "x" * 998)  # exactly 1000 bytes of JSON
        assert cache.get("k") == "x" * 998

    async def scenario() -> None:
        cache = AsyncCache.from_url(redis_url + "?max_value_bytes=1000")
        try:
            with pytest.raises(ValueTooLargeError):
                await cache.set("big", "x" * 2000)
            assert await cache.get("big") is MISSING
        finally:
            await cache.aclose()

    asyncio.run(scenario())
    assert raw.exists("{big}") == 0


def test_redis_set_of_a_value_pickle_refuses_with_a_value_error_raises(redis_url: str) -> None:
    with (
        Cache.from_url(redis_url, serializer=PickleSerializer(SECRET)) as cache,
        pytest.raises(TypeError),
    ):
        cache.set("k", ctypes.pointer(ctypes.c_int(1)))


def _corrupt_payloads() -> dict[str, Callable[[], bytes]]:
    def valid() -> bytes:
        return Codec().encode(live_entry("cached"))

    def inconsistent() -> bytes:
        entry = live_entry("cached")
        entry.stale_until = entry.expires_at - 1.0
        return Codec().encode(entry)

    return {
        "garbage": lambda: b"garbage",
        "wrong-magic": lambda: with_byte(valid(), 0, 0x00),
        "unknown-version": lambda: with_byte(valid(), 1, 2),
        "unknown-flags": lambda: with_byte(valid(), FLAGS_AT, 0x80),
        "reserved-byte": lambda: with_byte(valid(), 6, 1),
        "compressor-without-flag": lambda: with_byte(valid(), COMPRESSOR_AT, 1),
        "nan-time": lambda: with_time(valid(), "stale_until", math.nan),
        "inconsistent-times": inconsistent,
        "truncated": lambda: valid()[:-3],
        "pickle-envelope": lambda: Codec(pickle_serializer()).encode(live_entry("cached")),
    }


CORRUPT = _corrupt_payloads()


def test_a_valid_raw_envelope_is_a_hit(redis_url: str, raw: Any) -> None:
    """The control for the corrupt-entry tests: the unmodified bytes are served."""
    raw.set("{k}", Codec().encode(live_entry("cached")))
    with Cache.from_url(redis_url) as cache:
        assert cache.get("k") == "cached"
        assert cache.backend.decode_errors == 0


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_redis_corrupt_entries_are_counted_misses_and_reloaded(
    redis_url: str, raw: Any, case: str
) -> None:
    loads: list[str] = []

    def loader() -> str:
        loads.append("load")
        return "fresh"

    raw.set("{k}", CORRUPT[case]())
    with Cache.from_url(redis_url) as cache:
        assert cache.get("k") is MISSING
        assert cache.backend.decode_errors == 1
        assert cache.get_or_load("k", loader) == "fresh"
        assert loads == ["load"]
        # Each read that met the bytes counts: get_or_load's GET and its lease re-read.
        assert cache.backend.decode_errors == 3
        assert cache.stats().decode_errors == 3
        assert cache.get("k") == "fresh"  # the corrupt bytes were replaced


@pytest.mark.parametrize("case", ["garbage", "unknown-version", "truncated"])
def test_async_redis_corrupt_entries_are_counted_misses_and_reloaded(
    redis_url: str, raw: Any, case: str
) -> None:
    async def loader() -> str:
        return "fresh"

    async def scenario() -> None:
        cache = AsyncCache.from_url(redis_url)
        try:
            assert await cache.get("k") is MISSING
            assert cache.backend.decode_errors == 1
            assert await cache.get_or_load("k", loader) == "fresh"
            assert cache.backend.decode_errors == 3  # its GET and its lease re-read
            assert (await cache.get("k")) == "fresh"
        finally:
            await cache.aclose()

    raw.set("{k}", CORRUPT[case]())
    asyncio.run(scenario())


def test_redis_readers_never_unpickle_a_gadget_they_may_not_trust(
    redis_url: str, raw: Any, executed: list[str]
) -> None:
    raw.set("{forged}", Codec(pickle_serializer(OTHER_SECRET)).encode(live_entry([Gadget()])))
    raw.set("{genuine}", Codec(pickle_serializer()).encode(live_entry([Gadget()])))
    with Cache.from_url(redis_url, serializer=PickleSerializer(SECRET)) as cache:
        assert cache.get("forged") is MISSING
        assert cache.backend.decode_errors == 1
        assert executed == []
    with Cache.from_url(redis_url) as json_cache:
        assert json_cache.get("genuine") is MISSING
        assert json_cache.get("forged") is MISSING
        assert json_cache.backend.decode_errors == 2
        assert executed == []
    with Cache.from_url(redis_url, serializer=PickleSerializer(SECRET)) as cache:
        assert cache.get("genuine") == ["unpickled"]  # the control: the gadget works
        assert executed == ["unpickled"]


@pytest.mark.parametrize(
    "value",
    [datetime.datetime(2026, 1, 1), datetime.date(2026, 1, 1)],
    ids=["datetime", "date"],
)
def test_json_accepts_the_same_types_with_and_without_orjson(value: object) -> None:
    """orjson would turn dates into strings (a different type on the way back);
    both JSON writers refuse them, so what is cacheable never depends on orjson."""
    for writer in (stdlib_json(), orjson_json()):
        with pytest.raises(SerializationError, match="date"):
            Codec(writer).encode(entry_of(value))
