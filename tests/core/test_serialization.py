"""The wire codec: serializers, signed pickle, compression, size limits, and decoding
that is total (anything unreadable is a ``DecodeError``, served as a counted miss).

The default serializers' rule: a value reads back equal with the same types all the
way down, or it is refused at write with a ``SerializationError`` naming the type and
where it is, by every JSON writer alike (with orjson or without) and by msgpack. What
reads back: ``None``, ``bool``, ``int`` of any size, ``float`` (NaN and the infinities
too), ``str``, ``bytes``, ``list``, ``tuple``, ``dict`` (keys of any of these hashable
kinds), ``set``, ``frozenset``, ``datetime`` (naive, or with a ``timezone`` or a
``ZoneInfo``; ``fold`` kept), ``date``, ``time``, ``timedelta``, ``Decimal``, ``UUID``
and members of registered enums. Structured values (dataclasses, attrs classes,
pydantic models, NamedTuples) read back only with the reader's type
(``_typed.READ_TYPE``); without it, or with another class, they are a miss.

Plain JSON (msgpack) values keep the plain wire form byte for byte; the others are
written in a tagged form that starts with a marker byte no plain reader accepts.

Unit tests drive ``Codec`` and the serializers directly; the end-to-end tests go
through a real Redis (the ``redis_url`` fixture), since ``MemoryBackend`` stores values
by reference and never serializes.
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
import json
import logging
import math
import random
import struct
import time
import tracemalloc
import uuid
import zlib
import zoneinfo
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, TypedDict

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachewise import MISSING, AsyncCache, Cache, SerializationError, ValueTooLargeError, _typed
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
    register_enum,
)

try:
    import attrs
except ImportError:  # pragma: no cover - attrs is optional
    attrs = None  # type: ignore[assignment]
try:
    import pydantic
except ImportError:  # pragma: no cover - pydantic is optional
    pydantic = None  # type: ignore[assignment]

#: This module's import name, as type names in messages spell it.
HERE = __name__
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


@pytest.mark.parametrize(
    "value",
    [2**64, 2**64 + 1, -(2**63) - 1, 10**5000, -(10**5000)],
    ids=["u64-max-plus-one", "over-u64", "under-i64", "huge", "huge-negative"],
)
def test_ints_beyond_64_bits_round_trip_with_and_without_orjson(value: int) -> None:
    """Neither format holds them natively (orjson would read one back as a float):
    they take the tagged form, and every JSON reader reads back the same int."""
    writers = (stdlib_json(), orjson_json())
    payloads = [writer.dumps(value) for writer in writers]
    assert payloads[0] == payloads[1]  # the same bytes, with or without orjson
    assert payloads[0][:1] == b"~"
    for data in payloads:
        for reader in writers:
            assert_identical(value, reader.loads(data))
    packed = msgpack_serializer().dumps(value)
    assert packed[:1] == b"\xc1"
    assert_identical(value, msgpack_serializer().loads(packed))


# -- the rule: a value reads back equal with the same types, or is refused at write ------


def struct_fields(value: Any) -> dict[str, Any] | None:
    """The fields of a dataclass, attrs instance, NamedTuple or pydantic model."""
    kind = type(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: getattr(value, field.name) for field in dataclasses.fields(value)}
    if getattr(kind, "__attrs_attrs__", None) is not None:
        return {a.name: getattr(value, a.name) for a in kind.__attrs_attrs__}
    if isinstance(value, tuple) and isinstance(getattr(kind, "_fields", None), tuple):
        return dict(zip(kind._fields, value, strict=True))
    if pydantic is not None and isinstance(value, pydantic.BaseModel):
        return {name: getattr(value, name) for name in kind.model_fields}
    return None


def zone(tzinfo: datetime.tzinfo | None) -> tuple[Any, ...]:
    """What tells zones apart: their type, and a ZoneInfo's key or a timezone's offset
    and name. (An unnamed ``timezone`` and one named as ``tzname()`` spells it
    behave alike: only their reprs differ.)"""
    if isinstance(tzinfo, zoneinfo.ZoneInfo):
        return (type(tzinfo), tzinfo.key)
    if tzinfo is None:
        return (None,)
    return (type(tzinfo), tzinfo.utcoffset(None), tzinfo.tzname(None))


def assert_identical(expected: Any, actual: Any, where: str = "value") -> None:
    """``actual`` equals ``expected`` with the same type at every level: dict keys
    in the same order and of the same types, ``True`` never read back as ``1``,
    ``-0.0`` as ``0.0``, a tuple as a list, a frozenset as a set, ``Decimal("1.50")``
    as ``Decimal("1.5")``, a datetime in another zone, zone name or fold, and every
    field of a structured value alike. NaN counts as equal to NaN."""
    kind = type(expected)
    assert type(actual) is kind, f"{where}: {kind.__name__} read back as {type(actual).__name__}"
    if kind is dict:
        assert len(actual) == len(expected), f"{where}: {actual!r} for {expected!r}"
        for (key, item), (got_key, got_item) in zip(expected.items(), actual.items(), strict=True):
            assert_identical(key, got_key, f"{where} key {key!r}")
            assert_identical(item, got_item, f"{where}[{key!r}]")
    elif kind is list or kind is tuple:
        assert len(actual) == len(expected), f"{where}: {actual!r} for {expected!r}"
        for index, (item, got) in enumerate(zip(expected, actual, strict=True)):
            assert_identical(item, got, f"{where}[{index}]")
    elif kind is set or kind is frozenset:
        assert len(actual) == len(expected), f"{where}: {actual!r} for {expected!r}"
        found = {item: item for item in actual}
        for item in expected:
            assert item in found, f"{where}: {item!r} is missing from {actual!r}"
            assert_identical(item, found[item], f"{where} item {item!r}")
    elif kind is float and math.isnan(expected):
        assert math.isnan(actual), f"{where}: {actual!r} for NaN"
    elif kind is float:
        assert (actual, math.copysign(1.0, actual)) == (expected, math.copysign(1.0, expected))
    elif kind is decimal.Decimal:  # (exponent, sign and NaN kind included; never compared)
        assert str(actual) == str(expected), f"{where}: {actual!r} for {expected!r}"
    elif kind is datetime.datetime or kind is datetime.time:
        naive = (actual.replace(tzinfo=None), actual.fold)
        assert naive == (expected.replace(tzinfo=None), expected.fold), f"{where}: {actual!r}"
        assert zone(actual.tzinfo) == zone(expected.tzinfo), f"{where}: {actual!r}"
    elif (fields := struct_fields(expected)) is not None:
        for name, item in fields.items():
            assert_identical(item, getattr(actual, name), f"{where}.{name}")
    else:
        assert actual == expected, f"{where}: {actual!r} for {expected!r}"


def read_back(serializer: Serializer, value: Any, tp: Any = None) -> Any:
    """``value`` written by ``serializer`` and read back through a ``Codec`` (with the
    reader's type ``tp``, as ``get(..., type=tp)`` would set it)."""
    codec = Codec(serializer)
    data = codec.encode(entry_of(value))
    token = _typed.READ_TYPE.set(tp)
    try:
        return codec.decode(data).value
    finally:
        _typed.READ_TYPE.reset(token)


def loads_with_type(serializer: Serializer, data: bytes, tp: Any) -> Any:
    token = _typed.READ_TYPE.set(tp)
    try:
        return serializer.loads(data)
    finally:
        _typed.READ_TYPE.reset(token)


PARIS = zoneinfo.ZoneInfo("Europe/Paris")


class ForeignZone(datetime.tzinfo):
    """A tzinfo that is neither ``timezone`` nor ``ZoneInfo``: no reader could rebuild it."""

    def utcoffset(self, dt: datetime.datetime | None) -> datetime.timedelta:
        return datetime.timedelta(hours=1)

    def dst(self, dt: datetime.datetime | None) -> datetime.timedelta:
        return datetime.timedelta(0)

    def tzname(self, dt: datetime.datetime | None) -> str:
        return "FZ"


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    HIGH = 3


class Mode(str, enum.Enum):
    """A StrEnum, spelled so that Python 3.10 has it too."""

    FAST = "fast"


for _registered in (Colour, Level, Mode):
    register_enum(_registered)


class Unlisted(enum.Enum):
    """Never registered: its members are refused."""

    X = "x"


class UnlistedLevel(enum.IntEnum):
    LOW = 1


class Name(str):
    pass


class Count(int):
    pass


class Ratio(float):
    pass


class Items(list):  # type: ignore[type-arg]
    pass


class Moment(datetime.datetime):
    pass


class Pair(NamedTuple):
    x: int
    y: int


class Span(NamedTuple):
    start: datetime.datetime
    end: datetime.datetime | None = None


@dataclasses.dataclass
class Row:
    id: int


@dataclasses.dataclass
class Twin:
    """Row's fields under another class name: a Row must not read back as one."""

    id: int


@dataclasses.dataclass
class Profile:
    name: str
    count: int = 0
    tags: list[str] = dataclasses.field(default_factory=list)
    slug: str = dataclasses.field(init=False, default="")

    def __post_init__(self) -> None:
        self.slug = self.name.lower().replace(" ", "-")


@dataclasses.dataclass(frozen=True)
class Version:
    major: int
    released: datetime.date
    build: uuid.UUID
    flags: frozenset[str] = frozenset()


@dataclasses.dataclass
class Node:
    name: str
    children: list[Any] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Box:
    """Holds any value: ``Any`` lets only values that need no type through."""

    value: Any


class Bundle(TypedDict):
    row: Row
    count: int


if attrs is not None:

    @attrs.define
    class Account:
        owner: str
        _balance: decimal.Decimal
        history: tuple[int, ...] = ()


if pydantic is not None:

    class Order(pydantic.BaseModel):
        id: uuid.UUID
        placed_at: datetime.datetime
        total: decimal.Decimal
        line: Row
        labels: set[str]
        note: str | None = None


def local_dataclass_instance() -> Any:
    @dataclasses.dataclass
    class Local:
        x: int

    return Local(1)


LOCAL = local_dataclass_instance()


@dataclasses.dataclass
class Chain:
    """Nests itself: each link is one more container."""

    next: Chain | int


@dataclasses.dataclass
class Unread:
    """Written, then read without a type, by one test only."""

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


def tuple_cycle() -> tuple[Any, ...]:
    inner: list[Any] = []
    outer = (inner,)
    inner.append(outer)
    return outer


def struct_cycle() -> Node:
    node = Node("root")
    node.children.append(node)
    return node


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
        ({1, 2}, frozenset({1, 2})),
        ({1}, {True}),
        ({0.0}, {-0.0}),
        ((1,), (True,)),
        (decimal.Decimal("1.50"), decimal.Decimal("1.5")),
        (
            datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone(datetime.timedelta(hours=1))),
            datetime.datetime(
                2026, 1, 1, tzinfo=datetime.timezone(datetime.timedelta(hours=1), "A")
            ),
        ),
        (
            datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc),
            datetime.datetime(2026, 1, 1, tzinfo=zoneinfo.ZoneInfo("UTC")),
        ),
        (
            datetime.datetime(2026, 1, 1, 1, tzinfo=datetime.timezone.utc),
            datetime.datetime(2026, 1, 1, 2, tzinfo=datetime.timezone(datetime.timedelta(hours=1))),
        ),
        (datetime.datetime(2026, 10, 25, 2, 30, fold=1), datetime.datetime(2026, 10, 25, 2, 30)),
        (Pair(1, 2), (1, 2)),
        (Row(True), Row(1)),
        (
            Span(datetime.datetime(2026, 1, 1)),
            Span(datetime.datetime(2026, 1, 1), None)._replace(end=datetime.datetime(2026, 1, 1)),
        ),
    ],
    ids=[
        "tuple",
        "int-key",
        "bool",
        "float",
        "negative-zero",
        "key-order",
        "nested-uuid",
        "set-frozenset",
        "set-item-type",
        "set-item-zero-sign",
        "tuple-item-type",
        "decimal-exponent",
        "zone-name",
        "zone-type",
        "same-instant-other-zone",
        "fold",
        "named-tuple",
        "dataclass-field-type",
        "named-tuple-field",
    ],
)
def test_assert_identical_catches_every_change_of_type_or_order(expected: Any, actual: Any) -> None:
    """The control for the round-trip tests: the helper is strict enough to fail."""
    with pytest.raises(AssertionError):
        assert_identical(expected, actual)


def test_assert_identical_sees_a_field_that_init_does_not_set() -> None:
    changed = Profile("Ada Lovelace")
    changed.slug = "custom"
    assert_identical(Profile("Ada Lovelace"), Profile("Ada Lovelace"))
    with pytest.raises(AssertionError):
        assert_identical(Profile("Ada Lovelace"), changed)


SHARED = [1, 2]

# Plain values: every writer stores them as they are (no marker), and every one reads
# them back identical.
PLAIN: dict[str, Any] = {
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
    "tag-like-str": "~$cw",
    "escapes": 'a "b" \\ c\n\t\x00\u2028',
    "empty-list": [],
    "empty-dict": {},
    "bools-ints-floats": [True, 1, False, 0, 1.0, 0.0],
    "nested": {"items": [{"id": 1, "tags": ["a"], "score": None}], "meta": {"": [[], {}]}},
    "tag-key-lookalike": {"$cwx": 1, "cw": [{"$CW": 2}]},
    "shared-sublist": {"a": SHARED, "b": SHARED},  # not a cycle: stored twice
    "deepest": nested(200),
    "wide": [{"id": index, "name": f"row {index}", "ok": index % 2 == 0} for index in range(200)],
}

# Plain for msgpack, which holds them natively; tagged in JSON, which does not.
MSGPACK_PLAIN: dict[str, Any] = {
    "bytes": b"\x00\xff\x80",
    "empty-bytes": b"",
    "nan": math.nan,
    "infinity": math.inf,
    "minus-infinity": -math.inf,
    "nan-in-a-list": [0.5, math.nan, {"x": -math.inf}],
    "bytes-inside": [b"x", {"k": b"y", b"k": [b""]}],
}

# Tagged in both formats. (msgpack's own maps take only str and bytes keys, whose
# hashes are salted: other keys take the pair form, whose reader checks spread.)
TAGGED: dict[str, Any] = {
    "int-key": {1: "a"},
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
        -0.0: 9,
    },
    "tuple": (1, "a", None),
    "empty-tuple": (),
    "nested-tuples": ((1, (2.5, ())), [(), {"t": (True,)}]),
    "tuple-of-lists": ([1], [2]),
    "set": {1, 2, 3},
    "empty-set": set(),
    "frozenset": frozenset({"a", b"b", (1, 2)}),
    "empty-frozenset": frozenset(),
    "set-of-frozensets": {frozenset({1}), frozenset()},
    "mixed-set": {None, True, 2, 2.5, "s", b"b", -0.0, (1, "x")},
    "tuple-keys": {(1, 2): "a", (): "b", ("x", (None,)): "c"},
    "frozenset-key": {frozenset({1, 2}): [1]},
    "rich-keys": {
        datetime.date(2026, 1, 1): 1,
        datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc): 2,
        uuid.UUID(int=2): 3,
        decimal.Decimal("1.50"): 4,
        Colour.RED: 5,
        Mode.FAST: 6,
        Level.HIGH: 7,
        datetime.timedelta(seconds=1): 8,
        2**100: 9,
    },
    "tag-key": {"$cw": ["tuple", [1]]},
    "tag-key-deep-inside": {"a": [{"$cw": 1, "b": 2}]},
    "tag-key-with-int-keys": {"$cw": 1, 2: 3},
    "big-int": 2**64,
    "under-i64": [-(2**63) - 1],
    "huge-int": 10**5000,
    "datetime-naive": datetime.datetime(2026, 3, 29, 2, 30, 0, 123456),
    "datetime-utc": datetime.datetime(2026, 1, 1, 12, tzinfo=datetime.timezone.utc),
    "datetime-fixed-offset": datetime.datetime(
        2026, 1, 1, tzinfo=datetime.timezone(datetime.timedelta(hours=-5, minutes=-30))
    ),
    "datetime-named-offset": datetime.datetime(
        2026, 1, 1, tzinfo=datetime.timezone(datetime.timedelta(hours=1), "CET")
    ),
    "datetime-named-utc": datetime.datetime(
        2026, 1, 1, tzinfo=datetime.timezone(datetime.timedelta(0), "Z")
    ),
    "datetime-odd-offset": datetime.datetime(
        2026, 1, 1, tzinfo=datetime.timezone(datetime.timedelta(seconds=3723, microseconds=5))
    ),
    "datetime-zoneinfo": datetime.datetime(2026, 7, 1, 12, 0, 0, 7, tzinfo=PARIS),
    "datetime-zoneinfo-fold": datetime.datetime(2026, 10, 25, 2, 30, tzinfo=PARIS, fold=1),
    "datetime-zoneinfo-no-fold": datetime.datetime(2026, 10, 25, 2, 30, tzinfo=PARIS),
    "datetime-zoneinfo-utc": datetime.datetime(2026, 1, 1, tzinfo=zoneinfo.ZoneInfo("UTC")),
    "datetime-naive-fold": datetime.datetime(2026, 10, 25, 2, 30, fold=1),
    "datetime-min": datetime.datetime.min,
    "datetime-max": datetime.datetime.max,
    "date": datetime.date(2026, 1, 1),
    "date-min": datetime.date.min,
    "time": datetime.time(12, 30, 15, 5),
    "time-aware": datetime.time(23, 59, tzinfo=datetime.timezone(datetime.timedelta(hours=2), "X")),
    "time-zoneinfo": datetime.time(8, tzinfo=PARIS),
    "time-fold": datetime.time(1, fold=1),
    "timedelta": datetime.timedelta(days=-1, seconds=5, microseconds=7),
    "timedelta-max": datetime.timedelta.max,
    "timedelta-min": datetime.timedelta.min,
    "decimal": decimal.Decimal("1.50"),
    "decimal-exponent": decimal.Decimal("-1E+30"),
    "decimal-negative-zero": decimal.Decimal("-0.00"),
    "decimal-nan": decimal.Decimal("NaN"),
    "decimal-signalling-nan": decimal.Decimal("-sNaN7"),
    "decimal-infinity": decimal.Decimal("-Infinity"),
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "uuid-max": uuid.UUID(int=2**128 - 1),
    "enum": Colour.RED,
    "int-enum": Level.HIGH,
    "str-enum": Mode.FAST,
    "enums-inside": [Colour.BLUE, (Level.HIGH,), {"m": Mode.FAST}],
    "everything": {
        "when": datetime.datetime(2026, 1, 1, tzinfo=PARIS),
        "ids": {uuid.UUID(int=1), uuid.UUID(int=2)},
        "price": decimal.Decimal("9.99"),
        "pair": (1, b"x", math.nan),
        7: [math.inf, 2**70, frozenset({"a"})],
    },
}
if hasattr(enum, "StrEnum"):  # Python 3.11+
    Shade = register_enum(enum.StrEnum("Shade", ["DARK"]))
    TAGGED["std-str-enum"] = Shade.DARK
    TAGGED["std-str-enum-key"] = {Shade.DARK: 1}

STORED: dict[str, Any] = {**PLAIN, **MSGPACK_PLAIN, **TAGGED}

ALL_WRITERS = ("orjson", "stdlib-json", "msgpack")
JSON_WRITERS = ("orjson", "stdlib-json")


def raw_orjson() -> Any:
    return pytest.importorskip("orjson")


def raw_msgpack() -> Any:
    return pytest.importorskip("msgpack")


@pytest.mark.parametrize("writer", ALL_WRITERS)
@pytest.mark.parametrize("case", sorted(STORED))
def test_every_stored_value_reads_back_equal_with_the_same_types(writer: str, case: str) -> None:
    value = STORED[case]
    assert_identical(value, read_back(SERIALIZERS[writer](), value))


@pytest.mark.parametrize("case", sorted(STORED))
def test_json_with_and_without_orjson_writes_the_same_bytes_and_reads_the_others(
    case: str,
) -> None:
    value = STORED[case]
    writers = (orjson_json(), stdlib_json())
    payloads = [writer.dumps(value) for writer in writers]
    if case not in ("integral-float", "largest-float"):  # 1e16 is "1e+16" in the stdlib
        assert payloads[0] == payloads[1]
    for data in payloads:
        for reader in writers:
            assert_identical(value, reader.loads(data))


@pytest.mark.parametrize("case", sorted(PLAIN))
def test_plain_values_keep_the_plain_json_form_byte_for_byte(case: str) -> None:
    """No marker, and exactly the bytes the JSON encoders write: readers that predate
    the tagged form (or know nothing of cachewise) read them as before."""
    value = PLAIN[case]
    with_orjson, without = orjson_json().dumps(value), stdlib_json().dumps(value)
    assert with_orjson == raw_orjson().dumps(value)
    assert without == json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    for payload in (with_orjson, without):
        assert payload[:1] != b"~"
        assert_identical(value, json.loads(payload))


@pytest.mark.parametrize("case", sorted({**PLAIN, **MSGPACK_PLAIN}))
def test_plain_values_keep_the_plain_msgpack_form_byte_for_byte(case: str) -> None:
    msgpack = raw_msgpack()
    value = {**PLAIN, **MSGPACK_PLAIN}[case]
    payload = msgpack_serializer().dumps(value)
    assert payload == msgpack.packb(value, use_bin_type=True)
    assert payload[:1] != b"\xc1"
    assert_identical(value, msgpack.unpackb(payload, raw=False, strict_map_key=False))


@pytest.mark.parametrize("case", sorted({**MSGPACK_PLAIN, **TAGGED}))
def test_tagged_json_starts_with_the_marker_and_plain_json_readers_fail_on_it(case: str) -> None:
    """A reader that does not know the marker reads a miss, never a dict of tags."""
    value = {**MSGPACK_PLAIN, **TAGGED}[case]
    for writer in (orjson_json(), stdlib_json()):
        payload = writer.dumps(value)
        assert payload[:1] == b"~"
        with pytest.raises(ValueError):
            json.loads(payload)
        with pytest.raises(ValueError):
            raw_orjson().loads(payload)


@pytest.mark.parametrize("case", sorted(TAGGED))
def test_tagged_msgpack_starts_with_the_marker_and_plain_msgpack_readers_fail_on_it(
    case: str,
) -> None:
    msgpack = raw_msgpack()
    payload = msgpack_serializer().dumps(TAGGED[case])
    assert payload[:1] == b"\xc1"
    with pytest.raises(ValueError):
        msgpack.unpackb(payload, raw=False, strict_map_key=False)


class Refused(NamedTuple):
    value: Any
    kind: type  # the refused type: the error's ``kind``
    type_name: str  # as the message must name it
    where: str  # where it is, as the message must spell it


# Where the walk gives up on a value too deep for the plain form: at the tagged
# form's limit (100 containers).
DEEPEST_PATH = "value" + "[0]" * 100

REFUSED: dict[str, Refused] = {
    "object": Refused(object(), object, "object", "value"),
    "plain-class": Refused(Point(1, 2), Point, f"{HERE}.Point", "value"),
    "object-deep-inside": Refused(
        {"a": [1, {"b": [0, 1, object()]}]}, object, "object", 'value["a"][1]["b"][2]'
    ),
    "in-the-last-row": Refused(
        [{"id": 1}, {"id": 2}, {"id": Point(3, 4)}],
        Point,
        f"{HERE}.Point",
        'value[2]["id"]',
    ),
    "after-a-nested-list": Refused([[1, [2]], bytearray(b"x")], bytearray, "bytearray", "value[1]"),
    "in-a-tuple": Refused((1, (2, object())), object, "object", "value[1][1]"),
    "in-a-set": Refused([{1}, {Name("n")}], Name, f"{HERE}.Name", "value[1] item"),
    "in-a-tuple-key": Refused({(1, Name("k")): 1}, Name, f"{HERE}.Name", "value key [(1, 'k')][1]"),
    "in-a-dataclass-field": Refused(Row(object()), object, "object", "value.id"),  # type: ignore[arg-type]
    "in-a-named-tuple": Refused(Pair(1, object()), object, "object", "value.y"),  # type: ignore[arg-type]
    "ordered-dict": Refused(
        collections.OrderedDict(a=1), collections.OrderedDict, "collections.OrderedDict", "value"
    ),
    "defaultdict": Refused(
        {"d": collections.defaultdict(list)},
        collections.defaultdict,
        "collections.defaultdict",
        'value["d"]',
    ),
    "str-subclass": Refused(Name("x"), Name, f"{HERE}.Name", "value"),
    "int-subclass": Refused(Count(1), Count, f"{HERE}.Count", "value"),
    "float-subclass": Refused(Ratio(0.5), Ratio, f"{HERE}.Ratio", "value"),
    "list-subclass": Refused(Items([1]), Items, f"{HERE}.Items", "value"),
    "datetime-subclass": Refused(Moment(2026, 1, 1), Moment, f"{HERE}.Moment", "value"),
    "str-subclass-key": Refused(
        {"a": {Name("k"): 1}}, Name, f"{HERE}.Name", "value[\"a\"] key ['k']"
    ),
    "bytearray": Refused(bytearray(b"raw"), bytearray, "bytearray", "value"),
    "memoryview": Refused(memoryview(b"raw"), memoryview, "memoryview", "value"),
    "unregistered-enum": Refused(Unlisted.X, Unlisted, f"{HERE}.Unlisted", "value"),
    "unregistered-int-enum": Refused(
        [UnlistedLevel.LOW],
        UnlistedLevel,
        f"{HERE}.UnlistedLevel",
        "value[0]",
    ),
    "unregistered-enum-key": Refused(
        {Unlisted.X: 1},
        Unlisted,
        f"{HERE}.Unlisted",
        "value key [<Unlisted.X: 'x'>]",
    ),
    "datetime-foreign-zone": Refused(
        datetime.datetime(2026, 1, 1, tzinfo=ForeignZone()),
        datetime.datetime,
        "datetime.datetime",
        "value",
    ),
    "time-foreign-zone": Refused(
        {"t": datetime.time(1, tzinfo=ForeignZone())}, datetime.time, "datetime.time", 'value["t"]'
    ),
    "nan-key": Refused({math.nan: "a"}, float, "float", "value key [nan]"),
    "nan-set-item": Refused({math.nan}, float, "float", "value item"),
    "decimal-nan-key": Refused(
        {decimal.Decimal("NaN"): 1},
        decimal.Decimal,
        "decimal.Decimal",
        "value key [Decimal('NaN')]",
    ),
    "nan-in-a-frozenset-key": Refused(
        {frozenset({math.nan}): 1}, frozenset, "frozenset", "value key [frozenset({nan})]"
    ),
    "struct-key": Refused(
        {Version(1, datetime.date(2026, 1, 1), uuid.UUID(int=1)): 1},
        Version,
        f"{HERE}.Version",
        "value key [Version(",
    ),
    "struct-set-item": Refused({Pair(1, 2)}, Pair, f"{HERE}.Pair", "value item"),
    "local-class": Refused(
        [LOCAL],
        type(LOCAL),
        f"{HERE}.local_dataclass_instance.<locals>.Local",
        "value[0]",
    ),
    "cycle": Refused(self_containing_list(), list, "list", "value[1]"),
    "dict-cycle": Refused(dict_cycle(), dict, "dict", 'value["a"][1]'),
    "wide-cycle": Refused(wide_cycle(), list, "list", "value[0]"),
    "tuple-cycle": Refused(tuple_cycle(), tuple, "tuple", "value[0][0]"),
    "struct-cycle": Refused(struct_cycle(), Node, f"{HERE}.Node", "value.children[0]"),
    "too-deep": Refused(nested(201), list, "list", DEEPEST_PATH),
    "far-too-deep": Refused(nested(100_000), list, "list", DEEPEST_PATH),  # no RecursionError
    "lone-surrogate": Refused(["ok", "a\ud800b"], str, "str", "value[1]"),
    "lone-surrogate-in-a-tuple": Refused(("\ud800",), str, "str", "value[0]"),
    "missing-sentinel": Refused(MISSING, type(MISSING), "cachewise._sentinel._Missing", "value"),
}


@pytest.mark.parametrize(
    ("writer", "case"),
    [
        pytest.param(writer, case, id=f"{writer}-{case}")
        for case in sorted(REFUSED)
        for writer in ALL_WRITERS
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
    assert isinstance(info.value, CacheError)
    assert info.value.kind is refused.kind
    assert f"cannot store the {refused.type_name}" in message
    assert f" at {refused.where}" in message
    message.encode()  # printable, even for a lone surrogate


@pytest.mark.parametrize(
    "writer",
    [
        "orjson",
        "stdlib-json",
        "msgpack",
    ],
)
def test_int_keys_beyond_64_bits_round_trip(writer: str) -> None:
    value = {"n": {2**100: "a", -(2**100): "b", 1: "c"}}
    assert_identical(value, read_back(SERIALIZERS[writer](), value))


@pytest.mark.parametrize("writer", ALL_WRITERS)
@pytest.mark.parametrize("value", [{"\udc80": 1}, {"a": [{"k\ud800": None}]}], ids=["top", "deep"])
def test_a_key_with_a_lone_surrogate_is_refused(writer: str, value: Any) -> None:
    with pytest.raises(SerializationError):
        SERIALIZERS[writer]().dumps(value)


@pytest.mark.parametrize("writer", ALL_WRITERS)
def test_a_key_with_a_lone_surrogate_is_named_with_its_path(writer: str) -> None:
    with pytest.raises(SerializationError) as info:
        SERIALIZERS[writer]().dumps({"a": {"\udc80": 1}})
    assert info.value.kind is str
    assert 'cannot store the str at value["a"] key ["\\udc80"]' in str(info.value)


@pytest.mark.parametrize("writer", ALL_WRITERS)
@pytest.mark.parametrize(
    "value", [{(math.nan,)}, {(1, math.nan): "a"}], ids=["set-item", "dict-key"]
)
def test_a_nan_inside_a_tuple_key_or_set_item_is_refused(writer: str, value: Any) -> None:
    with pytest.raises(SerializationError, match="NaN"):
        SERIALIZERS[writer]().dumps(value)


@pytest.mark.parametrize("writer", ALL_WRITERS)
def test_a_value_is_refused_whole_and_nothing_is_returned_for_part_of_it(writer: str) -> None:
    codec = Codec(SERIALIZERS[writer]())
    good = [{"id": index, "at": datetime.date(2026, 1, 1 + index % 28)} for index in range(1000)]
    with pytest.raises(SerializationError, match=r"at value\[1000\]"):
        codec.encode(entry_of([*good, object()]))
    assert_identical(good, codec.decode(codec.encode(entry_of(good))).value)


ADVICE: dict[str, tuple[Any, str]] = {
    "ordered-dict": (collections.OrderedDict(), "convert it with dict(...)"),
    "str-subclass": (Name("x"), "convert it with str(...)"),
    "int-subclass": (Count(1), "convert it with int(...)"),
    "bytearray": (bytearray(b"x"), "it would come back as bytes; convert it with bytes(...)"),
    "datetime-subclass": (Moment(2026, 1, 1), "a subclass would come back as its base class"),
    "unregistered-enum": (Unlisted.X, "register_enum(Unlisted)"),
    "foreign-zone": (
        datetime.datetime(2026, 1, 1, tzinfo=ForeignZone()),
        "use zoneinfo.ZoneInfo or datetime.timezone",
    ),
    "local-class": (LOCAL, "define it at module level"),
    "nan-key": ({math.nan: 1}, "a NaN key or set item"),
    "struct-key": ({Pair(1, 2): 1}, "a structured value cannot be a dict key or a set item"),
    "lone-surrogate": ("\ud800", "lone surrogate"),
    "cycle": (self_containing_list(), "it contains itself"),
    "too-deep": (nested(201), "nested more than 100 containers deep"),
    "object": (object(), "PickleSerializer(secret=...)"),
}


@pytest.mark.parametrize("writer", ALL_WRITERS)
@pytest.mark.parametrize("case", sorted(ADVICE))
def test_a_refusal_says_what_to_store_instead(writer: str, case: str) -> None:
    value, advice = ADVICE[case]
    with pytest.raises(SerializationError) as info:
        SERIALIZERS[writer]().dumps(value)
    assert advice in str(info.value)


@pytest.mark.parametrize("writer", ALL_WRITERS)
def test_a_refusal_of_missing_says_that_missing_is_never_cached(writer: str) -> None:
    with pytest.raises(SerializationError) as info:
        SERIALIZERS[writer]().dumps(MISSING)
    assert "MISSING marks a miss" in str(info.value)


def test_msgpack_extension_types_are_never_written_as_extensions() -> None:
    """A Timestamp is refused; an ExtType is a named tuple, so it is written as a
    struct (tagged, never as a msgpack extension) that reads back only with its type."""
    msgpack = raw_msgpack()
    serializer = msgpack_serializer()
    with pytest.raises(SerializationError, match=r"msgpack\.ext\.Timestamp at value\[0\]"):
        serializer.dumps([msgpack.Timestamp(1)])
    ext = msgpack.ExtType(1, b"x")
    payload = serializer.dumps(ext)
    assert payload[:1] == b"\xc1"
    with pytest.raises(envelope.DecodeError):
        serializer.loads(payload)
    assert_identical(ext, loads_with_type(serializer, payload, msgpack.ExtType))


class _FailingEncoder:
    """Stands in for orjson or msgpack: refuses everything, for its own reasons."""

    OPT_PASSTHROUGH_SUBCLASS = OPT_PASSTHROUGH_DATETIME = OPT_PASSTHROUGH_DATACLASS = 0

    @staticmethod
    def dumps(value: object, **options: Any) -> bytes:
        raise ValueError("encoder says no")

    packb = dumps


@pytest.mark.parametrize("writer", ["orjson", "msgpack"])
@pytest.mark.parametrize("value", [{"fine": [1, 2]}, {"fine": (1, 2)}], ids=["plain", "tagged"])
def test_an_encoder_failure_the_rule_cannot_explain_is_a_serialization_error_too(
    writer: str, value: Any
) -> None:
    serializer = SERIALIZERS[writer]()
    setattr(serializer, "_orjson" if writer == "orjson" else "_msgpack", _FailingEncoder())
    with pytest.raises(SerializationError, match=r"the dict at value \(encoder says no\)"):
        serializer.dumps(value)


@pytest.mark.parametrize("writer", ALL_WRITERS)
def test_200_levels_of_nesting_are_stored_and_201_refused(writer: str) -> None:
    codec = Codec(SERIALIZERS[writer]())
    deepest = {"a": nested(199)}
    assert_identical(deepest, codec.decode(codec.encode(entry_of(deepest))).value)
    with pytest.raises(SerializationError, match="nested more than 100"):
        codec.encode(entry_of({"a": nested(200)}))


def nest(depth: int, wrap: Callable[[Any], Any]) -> Any:
    """``depth`` containers made by ``wrap``, one inside the other, around ``0``."""
    value: Any = 0
    for _ in range(depth):
        value = wrap(value)
    return value


# How to wrap a value in one more container, and the type to read it back with.
NESTINGS: dict[str, tuple[Callable[[Any], Any], Any]] = {
    "tuple": (lambda inner: (inner,), None),
    "frozenset": (lambda inner: frozenset({inner}), None),
    "int-key-dict": (lambda inner: {1: inner}, None),
    "tag-key-dict": (lambda inner: {"$cw": inner}, None),
    "dataclass": (Chain, Chain),
}


# A value that needs the tagged form may nest 100 containers (a plain one 200).
@pytest.mark.parametrize("writer", ALL_WRITERS)
@pytest.mark.parametrize("kind", sorted(NESTINGS))
def test_100_levels_of_any_tagged_container_read_back_and_101_are_refused(
    writer: str, kind: str
) -> None:
    """The limit counts the value's containers, whatever the form they are written in."""
    serializer = SERIALIZERS[writer]()
    wrap, tp = NESTINGS[kind]
    limit = 100
    with pytest.raises(SerializationError, match="nested more than 100"):
        serializer.dumps(nest(limit + 1, wrap))
    deepest = nest(limit, wrap)
    assert_identical(deepest, loads_with_type(serializer, serializer.dumps(deepest), tp))


@pytest.mark.parametrize("writer", JSON_WRITERS)
def test_json_keeps_tuples_and_int_keys_instead_of_changing_them(writer: str) -> None:
    """The old behaviour: a tuple came back as a list and the int key as "1"."""
    codec = Codec(SERIALIZERS[writer]())
    value = {"t": (1, 2), "d": {1: "one", "1": "the str"}, "s": {"x"}}
    assert_identical(value, codec.decode(codec.encode(entry_of(value))).value)


def test_orjson_and_the_stdlib_write_uuids_enums_and_colliding_keys_alike() -> None:
    """What is stored, and how, must not depend on whether orjson is installed: with
    orjson these were once read back as str, and ``{1: "a", "1": "b"}`` lost an item."""
    for value in (uuid.UUID(int=1), Colour.RED, {1: "a", "1": "b"}, datetime.date(2026, 1, 1)):
        with_orjson, without = orjson_json().dumps(value), stdlib_json().dumps(value)
        assert with_orjson == without
        for reader in (orjson_json(), stdlib_json()):
            assert_identical(value, reader.loads(with_orjson))


def test_msgpack_round_trips_bytes_scalar_keys_and_tuples() -> None:
    codec = Codec(msgpack_serializer())
    value = {"raw": b"\x00\xff\x80", 1: "int key", 2.5: "float key", b"k": None, "t": (1, 2)}
    assert_identical(value, codec.decode(codec.encode(entry_of(value))).value)


def test_members_of_a_registered_enum_are_stored_by_class_and_value() -> None:
    """The payload names the class and holds the value, not the member's name."""
    payload = stdlib_json().dumps(Colour.RED)
    assert json.loads(payload[1:]) == {"$cw": ["enum", f"{HERE}.Colour", "red"]}


def test_register_enum_refuses_what_is_not_an_enum_class() -> None:
    for thing in (Row, Colour.RED, "Colour", 1):
        with pytest.raises(TypeError, match="Enum class"):
            register_enum(thing)  # type: ignore[arg-type]


def test_register_enum_refuses_a_second_class_under_the_same_name() -> None:
    first = enum.Enum("Clash", ["A"], module=__name__)
    second = enum.Enum("Clash", ["A"], module=__name__)
    register_enum(first)
    register_enum(first)  # the same class again is fine
    with pytest.raises(TypeError, match="two enum classes are named"):
        register_enum(second)


# -- structured values: read back with the reader's type, a miss without ---------------


def struct_cases() -> dict[str, tuple[Any, Any]]:
    """(value, the reader's type) for each kind of structured value."""
    customised = Profile("Ada Lovelace", 3, ["math"])
    customised.slug = "countess"  # not what __post_init__ would compute: it is stored
    version = Version(2, datetime.date(2026, 1, 1), uuid.UUID(int=9), frozenset({"lts"}))
    cases: dict[str, tuple[Any, Any]] = {
        "dataclass": (Row(1), Row),
        "dataclass-with-defaults": (Profile("Bo"), Profile),
        "dataclass-init-false-field": (customised, Profile),
        "frozen-dataclass": (version, Version),
        "named-tuple": (Pair(1, 2), Pair),
        "named-tuple-with-datetimes": (
            Span(datetime.datetime(2026, 1, 1, tzinfo=PARIS), datetime.datetime(2026, 1, 2)),
            Span,
        ),
        "named-tuple-default": (Span(datetime.datetime(2026, 1, 1)), Span),
        "typed-dict": ({"row": Row(1), "count": 2}, Bundle),
        "list-of-structs": ([Row(1), Row(2)], list[Row]),
        "optional-struct": (version, Version | None),
        "optional-struct-none": (None, Version | None),
        "dict-of-structs": ({"a": Row(1), "b": Row(2)}, dict[str, Row]),
        "tuple-of-structs": ((Row(1), Pair(3, 4)), tuple[Row, Pair]),
        "struct-in-any-field": (Box({"k": (1, {2})}), Box),
    }
    if attrs is not None:
        cases["attrs-private-attribute"] = (
            Account("ada", decimal.Decimal("10.50"), (1, 2)),
            Account,
        )
    if pydantic is not None:
        order = Order(
            id=uuid.UUID(int=5),
            placed_at=datetime.datetime(2026, 10, 25, 2, 30, tzinfo=PARIS, fold=1),
            total=decimal.Decimal("10.50"),
            line=Row(7),
            labels={"gift", "express"},
        )
        cases["pydantic-model"] = (order, Order)
        cases["list-of-models"] = ([order, order.model_copy(update={"note": "x"})], list[Order])
        cases["optional-model"] = (order, Order | None)
        cases["optional-model-none"] = (None, Order | None)
        cases["dict-of-models"] = ({"o": order}, dict[str, Order])
    return cases


STRUCTS = struct_cases()


@pytest.mark.parametrize("writer", ALL_WRITERS)
@pytest.mark.parametrize("case", sorted(STRUCTS))
def test_structured_values_read_back_identical_with_the_readers_type(
    writer: str, case: str
) -> None:
    value, tp = STRUCTS[case]
    assert_identical(value, read_back(SERIALIZERS[writer](), value, tp))


@pytest.mark.parametrize("writer", ALL_WRITERS)
@pytest.mark.parametrize("case", sorted(case for case in STRUCTS if not case.endswith("-none")))
def test_structured_values_read_without_a_type_are_a_miss(writer: str, case: str) -> None:
    serializer = SERIALIZERS[writer]()
    value, tp = STRUCTS[case]
    data = Codec(serializer).encode(entry_of(value))
    assert_refused(Codec(serializer), data)
    assert_identical(value, read_back(serializer, value, tp))  # the control


def test_a_structured_value_is_written_as_a_struct_tag_naming_its_class() -> None:
    payload = stdlib_json().dumps(Profile("Bo"))
    assert json.loads(payload[1:]) == {
        "$cw": [
            "struct",
            f"{HERE}.Profile",
            {"name": "Bo", "count": 0, "tags": [], "slug": "bo"},
        ]
    }


OTHER_TYPES: dict[str, tuple[Any, Any]] = {
    "another-dataclass-with-the-same-fields": (Row(1), Twin),
    "a-scalar-type": (Row(1), int),
    "a-list-of-it": (Row(1), list[Row]),
    "the-item-type-for-a-list": ([Row(1)], Row),
    "a-list-of-another-class": ([Row(1)], list[Twin]),
    "a-dict-of-another-class": ({"a": Row(1)}, dict[str, Twin]),
    "an-optional-other-class": (Row(1), Twin | None),
    "a-named-tuple-as-another": (Pair(1, 2), Span),
    "any": (Row(1), Any),
    "a-plain-value-for-a-struct": ({"id": 1}, Row),
    "a-typed-dict-for-a-list": ([Row(1)], Bundle),
}
if pydantic is not None:
    OTHER_TYPES["a-model-as-a-dataclass"] = (
        Order(
            id=uuid.UUID(int=1),
            placed_at=datetime.datetime(2026, 1, 1),
            total=decimal.Decimal(1),
            line=Row(1),
            labels=set(),
        ),
        Row,
    )
    OTHER_TYPES["a-dataclass-as-a-model"] = (Row(1), Order)


@pytest.mark.parametrize("writer", ALL_WRITERS)
@pytest.mark.parametrize("case", sorted(OTHER_TYPES))
def test_structured_values_read_with_another_type_are_a_miss(writer: str, case: str) -> None:
    serializer = SERIALIZERS[writer]()
    value, tp = OTHER_TYPES[case]
    data = serializer.dumps(value)
    with pytest.raises(envelope.DecodeError):
        loads_with_type(serializer, data, tp)


def struct_payload(writer: str, cls: type, fields: dict[str, Any]) -> bytes:
    """A struct payload as another version of ``cls`` would have written it."""
    tree = {"$cw": ["struct", _typed.class_path(cls), fields]}
    if writer == "msgpack":
        return b"\xc1" + raw_msgpack().packb(tree, use_bin_type=True)
    return b"~" + json.dumps(tree).encode()


# (the class, the fields it has, other sets of stored fields)
SCHEMAS: dict[str, tuple[type, dict[str, Any], list[dict[str, Any]]]] = {
    "dataclass": (Row, {"id": 1}, [{}, {"id": 1, "extra": 2}, {"ident": 1}]),
    "dataclass-init-false": (
        Profile,
        {"name": "Bo", "count": 0, "tags": [], "slug": "bo"},
        [{"name": "Bo", "count": 0, "tags": []}, {"name": "Bo"}],
    ),
    "named-tuple": (Pair, {"x": 1, "y": 2}, [{"x": 1}, {"x": 1, "y": 2, "z": 3}]),
}
if attrs is not None:
    SCHEMAS["attrs"] = (
        Account,
        {"owner": "ada", "_balance": {"$cw": ["decimal", "1"]}, "history": {"$cw": ["tuple", []]}},
        [
            {"owner": "ada", "balance": {"$cw": ["decimal", "1"]}, "history": []},
            {"owner": "ada", "_balance": {"$cw": ["decimal", "1"]}},
        ],
    )
if pydantic is not None:
    SCHEMAS["pydantic"] = (
        Order,
        {
            "id": {"$cw": ["uuid", uuid.UUID(int=1).hex]},
            "placed_at": {"$cw": ["datetime", "2026-01-01T00:00:00", None, 0]},
            "total": {"$cw": ["decimal", "1"]},
            "line": {"$cw": ["struct", f"{__name__}.Row", {"id": 1}]},
            "labels": {"$cw": ["set", []]},
            "note": None,
        },
        # (the model's attributes are stored, not its validation input: a str is
        # not the UUID field it would validate to)
        [{"id": {"$cw": ["uuid", uuid.UUID(int=1).hex]}}, {"id": str(uuid.UUID(int=1))}],
    )


@pytest.mark.parametrize("writer", ALL_WRITERS)
@pytest.mark.parametrize("case", sorted(SCHEMAS))
def test_a_struct_whose_stored_fields_differ_from_the_class_is_a_miss(
    writer: str, case: str
) -> None:
    cls, fields, others = SCHEMAS[case]
    serializer = SERIALIZERS[writer]()
    assert type(loads_with_type(serializer, struct_payload(writer, cls, fields), cls)) is cls
    for stored in others:
        with pytest.raises(envelope.DecodeError):
            loads_with_type(serializer, struct_payload(writer, cls, stored), cls)


# Fields a reader's class lacks, or lacks a value for, that the class would fill in
# with a default: the struct still reads back, which the contract says is a miss.
FIELD_BUGS: dict[str, tuple[type, dict[str, Any]]] = {
    "named-tuple-missing-a-defaulted-field": (
        Span,
        {"start": {"$cw": ["datetime", "2026-01-01T00:00:00", None, 0]}},
    ),
}
if pydantic is not None:
    _order_fields = SCHEMAS["pydantic"][1]
    FIELD_BUGS["pydantic-missing-a-defaulted-field"] = (
        Order,
        {k: v for k, v in _order_fields.items() if k != "note"},
    )
    FIELD_BUGS["pydantic-with-an-extra-field"] = (Order, {**_order_fields, "legacy": 1})


@pytest.mark.parametrize("writer", ALL_WRITERS)
@pytest.mark.parametrize("case", sorted(FIELD_BUGS))
def test_a_struct_with_a_field_the_class_would_default_or_drop_is_a_miss(
    writer: str, case: str
) -> None:
    cls, stored = FIELD_BUGS[case]
    serializer = SERIALIZERS[writer]()
    with pytest.raises(envelope.DecodeError):
        loads_with_type(serializer, struct_payload(writer, cls, stored), cls)


def test_a_struct_read_without_a_type_is_logged_once_per_class(
    caplog: pytest.LogCaptureFixture,
) -> None:
    serializer = stdlib_json()
    data = serializer.dumps([Unread(1)])
    with caplog.at_level(logging.WARNING, logger="cachewise"):
        for _ in range(3):
            with pytest.raises(envelope.DecodeError, match="Unread"):
                serializer.loads(data)
    logged = [r for r in caplog.records if f"{HERE}.Unread" in r.getMessage()]
    assert len(logged) == 1
    assert "type=Unread" in logged[0].getMessage()


# -- the rule, for arbitrary values --------------------------------------------------------

PLAIN_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
PLAIN_KEYS = st.text(max_size=8).filter(lambda key: key != "$cw")
OFFSETS = st.timedeltas(
    min_value=datetime.timedelta(hours=-23, minutes=-59),
    max_value=datetime.timedelta(hours=23, minutes=59),
)
ZONES = (
    st.none()
    | st.just(datetime.timezone.utc)
    | st.builds(datetime.timezone, OFFSETS)
    | st.builds(datetime.timezone, OFFSETS, st.text("ABCXYZ+-:09", min_size=1, max_size=5))
    | st.timezones()
)
# (Years far from the ends of the range: an aware datetime's hash must not overflow.)
DATETIMES = st.builds(
    lambda moment, fold: moment.replace(fold=fold),
    st.datetimes(
        min_value=datetime.datetime(1000, 1, 1),
        max_value=datetime.datetime(9000, 1, 1),
        timezones=ZONES,
    ),
    st.sampled_from([0, 1]),
)
TIMES = st.builds(
    lambda moment, fold: moment.replace(fold=fold),
    st.times(timezones=ZONES),
    st.sampled_from([0, 1]),
)
ENUM_MEMBERS = st.sampled_from([Colour.RED, Colour.BLUE, Level.HIGH, Mode.FAST])
# Hashable: dict keys and set items. (NaN, refused as a key, is added below: see
# test_a_nan_inside_a_tuple_key_or_set_item_is_refused for NaN inside a tuple key.)
HASHABLE_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=8)
    | st.dates()
    | DATETIMES
    | TIMES
    | st.timedeltas()
    | st.decimals(allow_nan=False)
    | st.uuids()
    | ENUM_MEMBERS
)
STORED_KEYS = st.recursive(
    HASHABLE_SCALARS,
    lambda children: (
        st.lists(children, max_size=3).map(tuple) | st.frozensets(children, max_size=3)
    ),
    max_leaves=6,
) | st.just(math.nan)
STORED_LEAVES = HASHABLE_SCALARS | st.floats() | st.decimals()  # (NaN, signalling NaN too)
REFUSED_LEAVES = st.sampled_from(
    [
        Unlisted.X,
        UnlistedLevel.LOW,
        Name("n"),
        Count(3),
        Ratio(0.25),
        Items([1]),
        bytearray(b"b"),
        collections.OrderedDict(a=1),
        Moment(2026, 1, 1),
        datetime.datetime(2026, 1, 1, tzinfo=ForeignZone()),
        Point(1, 2),
        MISSING,
    ]
) | st.text(st.characters(codec=None, categories=["Cs", "Ll"]), min_size=1, max_size=3)
REFUSED_KEYS = st.sampled_from(
    [Name("k"), Unlisted.X, Pair(1, 2), Version(1, datetime.date(2026, 1, 1), uuid.UUID(int=1))]
)


def trees(leaves: st.SearchStrategy[Any], keys: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaves,
        lambda children: (
            st.lists(children, max_size=5)
            | st.lists(children, max_size=5).map(tuple)
            | st.dictionaries(keys, children, max_size=5)
            | st.sets(keys, max_size=4)
            | st.frozensets(keys, max_size=4)
        ),
        max_leaves=25,
    )


def plain_trees() -> st.SearchStrategy[Any]:
    return st.recursive(
        PLAIN_SCALARS,
        lambda children: (
            st.lists(children, max_size=5) | st.dictionaries(PLAIN_KEYS, children, max_size=5)
        ),
        max_leaves=25,
    )


# Plain values, values every writer stores, and values mixing in what is refused.
ARBITRARY_VALUES = st.one_of(
    plain_trees(),
    trees(STORED_LEAVES, STORED_KEYS),
    trees(STORED_LEAVES | REFUSED_LEAVES, STORED_KEYS | REFUSED_KEYS),
    trees(PLAIN_SCALARS | REFUSED_LEAVES, PLAIN_KEYS | REFUSED_KEYS),
)
RULE = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def encode_or_refuse(codec: Codec, value: Any) -> bytes | None:
    """The envelope, or None for a ``SerializationError``; nothing else may escape."""
    try:
        return codec.encode(entry_of(value))
    except SerializationError as error:
        message, kind = str(error), error.kind
    assert isinstance(kind, type)  # the refused type, for callers that branch on it
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


@RULE
@given(ARBITRARY_VALUES, st.sampled_from(ALL_WRITERS))
def test_any_value_inside_a_dataclass_reads_back_identical_with_its_type_or_is_refused(
    value: Any, writer: str
) -> None:
    serializer = SERIALIZERS[writer]()
    written = encode_or_refuse(Codec(serializer), Box(value))
    if written is not None:
        token = _typed.READ_TYPE.set(Box)
        try:
            assert_identical(Box(value), Codec(serializer).decode(written).value)
        finally:
            _typed.READ_TYPE.reset(token)


@RULE
@given(plain_trees())
def test_plain_values_are_always_written_in_the_plain_form(value: Any) -> None:
    msgpack = raw_msgpack()
    for writer in (orjson_json(), stdlib_json()):
        payload = writer.dumps(value)
        assert payload[:1] != b"~"
        assert_identical(value, json.loads(payload))
    payload = msgpack_serializer().dumps(value)
    assert payload == msgpack.packb(value, use_bin_type=True)
    assert_identical(value, msgpack.unpackb(payload, raw=False, strict_map_key=False))


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


def test_pickle_envelopes_carry_an_hmac_sha256_of_key_header_and_payload() -> None:
    codec = Codec(pickle_serializer())
    data = codec.encode(entry_of([1, 2, 3]), "ns:perms:1")
    header = data[: envelope.HEADER_SIZE]
    mac = data[envelope.HEADER_SIZE : envelope.HEADER_SIZE + envelope.MAC_SIZE]
    payload = data[envelope.HEADER_SIZE + envelope.MAC_SIZE :]
    bound = len(b"ns:perms:1").to_bytes(4, "big") + b"ns:perms:1"
    assert mac == hmac.new(SECRET, bound + header + payload, hashlib.sha256).digest()
    assert data[SERIALIZER_AT] == PickleSerializer.wire_id
    assert codec.decode(data, "ns:perms:1").value == [1, 2, 3]
    with pytest.raises(envelope.DecodeError, match="signature"):
        codec.decode(data, "ns:perms:2")  # the same bytes under another key


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
        ("orjson", {"ids": {1, object()}}, "object"),
        ("stdlib-json", {"ids": {1, object()}}, "object"),
        ("orjson", [1, bytearray(b"raw")], "bytearray"),
        ("stdlib-json", [1, bytearray(b"raw")], "bytearray"),
        ("msgpack", object(), "object"),
        ("msgpack", {"o": object()}, "object"),
        ("pickle", lambda: 1, "function"),
    ],
    ids=[
        "orjson-set",
        "stdlib-set",
        "orjson-bytearray",
        "stdlib-bytearray",
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
    with pytest.raises(SerializationError, match="list") as info:
        Codec(SERIALIZERS[serializer_name]()).encode(entry_of(loop))
    assert info.value.kind is list


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


@pytest.mark.parametrize("serializer_name", ["orjson", "stdlib-json", "msgpack"])
def test_the_size_limit_counts_the_tagged_form_too(serializer_name: str) -> None:
    serializer = SERIALIZERS[serializer_name]()
    value = ("x" * 500,)
    limit = len(serializer.dumps(value))
    codec = Codec(serializer, max_value_bytes=limit)
    assert_identical(value, codec.decode(codec.encode(entry_of(value))).value)
    with pytest.raises(ValueTooLargeError):
        codec.encode(entry_of(("x" * 501,)))


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


UNSTORABLE = {"p": [0, Point(1, 2)]}  # refused at value["p"][1]


def test_redis_set_of_an_unserializable_value_raises_and_writes_nothing(
    redis_url: str, raw: Any
) -> None:
    with Cache.from_url(redis_url) as cache:
        cache.set("k", "old")
        with pytest.raises(SerializationError, match=r'Point at value\["p"\]\[1\]') as info:
            cache.set("k", UNSTORABLE)
        assert isinstance(info.value, TypeError)
        assert info.value.kind is Point
        # The failed set revoked nothing it should keep and wrote nothing new.
        assert cache.get("k") == "old"
        cache.delete("k")
        with pytest.raises(SerializationError, match="Point"):
            cache.set("k", UNSTORABLE)
        assert cache.get("k") is MISSING
        assert raw.keys("*") == []
        assert cache.stats().encode_errors == 0  # raised to the caller, not counted


def test_redis_set_stores_what_the_new_codec_keeps(redis_url: str, raw: Any) -> None:
    """The control for the refusals: the values once refused are written and read."""
    value = {"t": (1, 2), "s": {datetime.date(2026, 1, 1)}, 3: decimal.Decimal("1.50")}
    with Cache.from_url(redis_url) as cache:
        cache.set("k", value)
        assert raw.exists("{k}") == 1
        assert_identical(value, cache.get("k"))


def test_redis_get_or_load_of_an_unserializable_value_returns_it_and_writes_nothing(
    redis_url: str, raw: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with Cache.from_url(redis_url) as cache, caplog.at_level(logging.WARNING, logger="cachewise"):
        assert cache.get_or_load("k", lambda: UNSTORABLE) is UNSTORABLE
        assert cache.stats().encode_errors == 1
        assert cache.get("k") is MISSING
        assert raw.exists("{k}", "{k}:lease") == 0  # no value, and the lease is released
        assert raw.keys("*") == []
        # Nothing was cached, so the next call loads again: counted again, but the
        # warning is once per refused type.
        assert cache.get_or_load("k", lambda: [Point(3, 4)]) == [Point(3, 4)]
        assert cache.get_or_load("k", lambda: bytearray(b"x")) == bytearray(b"x")
        assert cache.stats().encode_errors == 3
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len([r for r in warnings if "Point" in r.getMessage()]) == 1
        assert len([r for r in warnings if "bytearray" in r.getMessage()]) == 1
        started = time.perf_counter()
        assert cache.get_or_load("k", lambda: [1, 2]) == [1, 2]
        assert time.perf_counter() - started < 1.0  # nobody waited on a stale lease
        assert cache.get("k") == [1, 2]
        assert cache.stats().encode_errors == 3


LOCATED: list[int] = []


def locate(n: int) -> Point:
    """A function to cache whose values the codec refuses."""
    LOCATED.append(n)
    return Point(n, n)


def test_redis_a_cached_function_returning_an_unserializable_value_returns_it_uncached(
    redis_url: str, raw: Any
) -> None:
    LOCATED.clear()
    with Cache.from_url(redis_url) as cache:
        cached_locate = cache.cached(ttl=60)(locate)
        assert cached_locate(1) == Point(1, 1)
        assert cached_locate(1) == Point(1, 1)
        assert LOCATED == [1, 1]  # never cached, so loaded each time
        assert cache.stats().encode_errors == 2
        assert raw.keys("*") == []


def test_redis_set_many_with_one_unserializable_value_writes_none_of_them(
    redis_url: str, raw: Any
) -> None:
    with Cache.from_url(redis_url) as cache:
        with pytest.raises(SerializationError, match="Point"):
            cache.set_many({"a": 1, "b": UNSTORABLE, "c": 3})
        assert cache.get_many(["a", "b", "c"]) == {}
    assert raw.keys("*") == []


def test_async_redis_unserializable_values_raise_at_set_and_are_returned_by_get_or_load(
    redis_url: str, raw: Any
) -> None:
    async def loader() -> dict[str, Any]:
        return UNSTORABLE

    async def scenario() -> None:
        cache = AsyncCache.from_url(redis_url)
        try:
            with pytest.raises(SerializationError, match="Point"):
                await cache.set("k", UNSTORABLE)
            assert await cache.get("k") is MISSING
            assert cache.stats().encode_errors == 0
            assert await cache.get_or_load("k", loader) is UNSTORABLE
            assert cache.stats().encode_errors == 1
            assert await cache.get("k") is MISSING
        finally:
            await cache.aclose()

    asyncio.run(scenario())
    assert raw.exists("{k}", "{k}:lease") == 0
    assert raw.keys("*") == []


def test_redis_values_over_max_value_bytes_raise_at_set_and_are_returned_by_get_or_load(
    redis_url: str, raw: Any
) -> None:
    with Cache.from_url(redis_url + "?max_value_bytes=1000") as cache:
        with pytest.raises(ValueTooLargeError) as info:
            cache.set("k", "x" * 2000)
        assert isinstance(info.value, ValueError)
        assert cache.stats().encode_errors == 0
        assert cache.get_or_load("k", lambda: "x" * 2000) == "x" * 2000
        assert cache.stats().encode_errors == 1
        assert cache.get("k") is MISSING
        assert raw.exists("{k}", "{k}:lease") == 0
        cache.set("k", "x" * 998)  # exactly 1000 bytes of JSON
        assert cache.get("k") == "x" * 998

    async def big() -> str:
        return "x" * 2000

    async def scenario() -> None:
        cache = AsyncCache.from_url(redis_url + "?max_value_bytes=1000")
        try:
            with pytest.raises(ValueTooLargeError):
                await cache.set("big", "x" * 2000)
            assert await cache.get("big") is MISSING
            assert await cache.get_or_load("big", big) == "x" * 2000
            assert cache.stats().encode_errors == 1
            assert await cache.get("big") is MISSING
        finally:
            await cache.aclose()

    asyncio.run(scenario())
    assert raw.exists("{big}", "{big}:lease") == 0


def test_redis_structured_values_read_back_only_with_the_readers_type(
    redis_url: str, raw: Any
) -> None:
    version = Version(3, datetime.date(2026, 1, 1), uuid.UUID(int=3), frozenset({"lts"}))
    with Cache.from_url(redis_url) as cache:
        cache.set("k", version)
        assert raw.exists("{k}") == 1
        assert cache.get("k") is MISSING  # no type: a counted miss
        assert cache.backend.decode_errors == 1
        assert cache.get("k", type=Row) is MISSING  # another class: a miss too
        assert_identical(version, cache.get("k", type=Version))
        assert_identical(
            [version], cache.get_or_load("list", lambda: [version], type=list[Version])
        )
        assert_identical([version], cache.get("list", type=list[Version]))


def test_async_redis_structured_values_read_back_only_with_the_readers_type(
    redis_url: str,
) -> None:
    version = Version(3, datetime.date(2026, 1, 1), uuid.UUID(int=3))

    async def load() -> Version:
        return version

    async def scenario() -> None:
        cache = AsyncCache.from_url(redis_url)
        try:
            assert_identical(version, await cache.get_or_load("k", load, type=Version))
            assert await cache.get("k") is MISSING
            assert_identical(version, await cache.get("k", type=Version | None))
        finally:
            await cache.aclose()

    asyncio.run(scenario())


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
    raw.set("{genuine}", Codec(pickle_serializer()).encode(live_entry([Gadget()]), "genuine"))
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
    [
        datetime.datetime(2026, 1, 1),
        datetime.datetime(2026, 1, 1, tzinfo=PARIS),
        datetime.date(2026, 1, 1),
        datetime.time(12),
        uuid.UUID(int=1),
    ],
    ids=["datetime", "aware-datetime", "date", "time", "uuid"],
)
def test_json_stores_dates_alike_with_and_without_orjson(value: object) -> None:
    """orjson would turn dates into strings (a different type on the way back); both
    JSON writers write the same tagged bytes, and each reads the other's back."""
    with_orjson, without = Codec(orjson_json()), Codec(stdlib_json())
    data = with_orjson.encode(entry_of(value))
    assert data == without.encode(entry_of(value))
    for reader in (with_orjson, without):
        assert_identical(value, reader.decode(data).value)
