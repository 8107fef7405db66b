"""The value table: what apps return goes in and comes out equal, with the same
types all the way down, on every backend (memory, Redis, Redis Cluster) and both
flavours. Structured values need the reader's type (``type=``, or the cached
function's return annotation); everything the codec cannot round-trip is refused
at ``set`` and returned uncached by ``get_or_load``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import logging
import uuid
import zoneinfo
from typing import Any, NamedTuple, TypedDict

import attrs
import pydantic
import pytest

from cachewise import MISSING
from cachewise.serialization import SerializationError, register_enum
from tests.conftest import Facade
from tests.support import patient

# Patient client timeouts for this module's Redis tests (see support/patient.py).
redis_url = patient.redis_url
redis_cluster_url = patient.redis_cluster_url


@register_enum
class Color(enum.Enum):
    RED = "red"
    BLUE = 2


@register_enum
class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


@dataclasses.dataclass
class Point:
    x: int
    y: float = 0.0
    label: str | None = None


@dataclasses.dataclass(frozen=True)
class Order:
    id: uuid.UUID
    total: decimal.Decimal
    placed: dt.datetime
    items: tuple[str, ...] = ()
    where: Point | None = None
    count: int = dataclasses.field(init=False, default=0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "count", len(self.items))


@attrs.define
class Account:
    _secret: str
    color: Color
    tags: frozenset[str] = frozenset()


class Pair(NamedTuple):
    left: Point
    right: int


class Movie(TypedDict):
    title: str
    released: dt.date
    poster: Point


class User(pydantic.BaseModel):
    id: uuid.UUID
    name: str
    joined: dt.datetime
    balance: decimal.Decimal
    roles: set[str]
    home: Point
    level: Level = Level.LOW


class Page(pydantic.BaseModel):
    users: list[User]
    next_cursor: str | None = None


PARIS = zoneinfo.ZoneInfo("Europe/Paris")
NEW_YORK = zoneinfo.ZoneInfo("America/New_York")
ID = uuid.UUID("12345678-1234-5678-1234-567812345678")
WHEN = dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.timezone.utc)
ALICE = User(
    id=ID,
    name="Alice",
    joined=WHEN,
    balance=decimal.Decimal("10.50"),
    roles={"admin", "staff"},
    home=Point(1, 2.5, "home"),
)

#: id -> (value, the reader's type or None). The closing note lists these rows.
TABLE: dict[str, tuple[Any, Any]] = {
    "none": (None, None),
    "bool": (True, None),
    "int": (-7, None),
    "int-beyond-64-bits": (2**100, None),
    "float": (2.5, None),
    "float-inf": (float("-inf"), None),
    "str-unicode": ("grüße, 世界 🙂", None),
    "bytes": (b"\x00\xffbin", None),
    "list": ([1, "a", None], None),
    "tuple": ((1, "a", (2.0,)), None),
    "empty-tuple": ((), None),
    "dict-str-keys": ({"a": 1, "b": [2]}, None),
    "dict-int-keys": ({1: "a", 2: "b"}, None),
    "dict-tuple-keys": ({(1, 2): "x", ("a",): "y"}, None),
    "dict-mixed-keys": ({1: "int", "1": "str", None: "none", 2.5: "float"}, None),
    "dict-with-a-$cw-key": ({"$cw": ["tuple", [1]]}, None),
    "set": ({1, 2, 3}, None),
    "frozenset": (frozenset({"a", (1, 2)}), None),
    "empty-set": (set(), None),
    "datetime-naive": (dt.datetime(2024, 1, 2, 3, 4, 5, 6), None),
    "datetime-utc": (WHEN, None),
    "datetime-fixed-offset": (
        dt.datetime(2024, 1, 2, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30), "IST")),
        None,
    ),
    "datetime-zoneinfo": (dt.datetime(2024, 7, 1, 12, tzinfo=PARIS), None),
    "datetime-zoneinfo-fold": (dt.datetime(2024, 11, 3, 1, 30, tzinfo=NEW_YORK, fold=1), None),
    "date": (dt.date(2024, 2, 29), None),
    "time": (dt.time(23, 59, 59, 999999), None),
    "time-aware": (dt.time(8, 0, tzinfo=dt.timezone.utc), None),
    "timedelta": (dt.timedelta(days=-2, seconds=5, microseconds=7), None),
    "decimal": (decimal.Decimal("1.10"), None),
    "decimal-negative-zero": (decimal.Decimal("-0.000"), None),
    "uuid": (ID, None),
    "enum": (Color.RED, None),
    "int-enum": (Level.HIGH, None),
    "nested-mix": ({"when": [WHEN, dt.date(2020, 1, 1)], "ids": {ID}, "c": (Color.BLUE,)}, None),
    "dataclass": (Point(1, 2.5, "p"), Point),
    "frozen-dataclass-init-false": (
        Order(ID, decimal.Decimal("9.99"), WHEN, ("a", "b"), Point(3)),
        Order,
    ),
    "attrs-private-field": (Account("s3cret", Color.BLUE, frozenset({"x"})), Account),
    "namedtuple": (Pair(Point(0), 5), Pair),
    "typeddict": (Movie(title="Up", released=dt.date(2009, 5, 29), poster=Point(1)), Movie),
    "pydantic-model": (ALICE, User),
    "pydantic-nested": (Page(users=[ALICE], next_cursor="n1"), Page),
    "list-of-models": ([ALICE, ALICE], list[User]),
    "optional-model-none": (None, User | None),
    "optional-model": (ALICE, User | None),
    "dict-of-dataclasses": ({"a": Point(1), "b": Point(2)}, dict[str, Point]),
}


def assert_identical(expected: Any, actual: Any, where: str = "value") -> None:
    """Equal, and of the same type all the way down (and zones and folds kept)."""
    assert type(actual) is type(expected), f"{where}: {type(actual)} is not {type(expected)}"
    assert actual == expected, f"{where}: {actual!r} != {expected!r}"
    if isinstance(expected, (dt.datetime, dt.time)):
        assert actual.tzinfo == expected.tzinfo or actual.utcoffset() == expected.utcoffset()
        assert actual.fold == expected.fold
        if isinstance(expected.tzinfo, zoneinfo.ZoneInfo):
            assert actual.tzinfo is expected.tzinfo
    if isinstance(expected, dict):
        for key in expected:
            (match,) = [k for k in actual if k == key]
            assert_identical(key, match, f"{where} key {key!r}")
            assert_identical(expected[key], actual[key], f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        for index, (e, a) in enumerate(zip(expected, actual, strict=True)):
            assert_identical(e, a, f"{where}[{index}]")
    elif isinstance(expected, pydantic.BaseModel):
        for name in type(expected).model_fields:
            assert_identical(getattr(expected, name), getattr(actual, name), f"{where}.{name}")
    elif dataclasses.is_dataclass(expected):
        for field in dataclasses.fields(expected):
            assert_identical(
                getattr(expected, field.name), getattr(actual, field.name), f"{where}.{field.name}"
            )


ROWS = [pytest.param(value, tp, id=row) for row, (value, tp) in TABLE.items()]


@pytest.mark.parametrize(("value", "tp"), ROWS)
def test_a_value_set_reads_back_identical(make_cache: Any, value: Any, tp: Any) -> None:
    cache: Facade = make_cache()
    cache.set("k", value)
    assert_identical(value, cache.get("k", type=tp) if tp is not None else cache.get("k"))
    assert cache.stats().decode_errors == 0


@pytest.mark.parametrize(("value", "tp"), ROWS)
def test_a_loaded_value_reads_back_identical_through_get_or_load(
    make_cache: Any, value: Any, tp: Any
) -> None:
    cache: Facade = make_cache()
    calls = []

    def load() -> Any:
        calls.append(1)
        return value

    assert_identical(value, cache.get_or_load("k", load, type=tp))
    assert_identical(value, cache.get_or_load("k", load, type=tp))
    assert len(calls) == 1, "the second read must hit"
    stats = cache.stats()
    assert (stats.encode_errors, stats.decode_errors) == (0, 0)


def test_a_cached_function_rebuilds_its_value_from_its_return_annotation(
    make_cache: Any,
) -> None:
    cache: Facade = make_cache()
    calls = []

    @cache.cached("user:{user_id}")
    def get_user(user_id: int) -> User:
        calls.append(user_id)
        return ALICE

    @cache.cached("users:{n}")
    def list_users(n: int) -> list[User] | None:
        calls.append(n)
        return [ALICE] * n

    for _ in range(2):
        assert_identical(ALICE, cache.call(get_user, 1))
        assert_identical([ALICE, ALICE], cache.call(list_users, 2))
    assert calls == [1, 2]


def test_a_structured_value_read_without_its_type_is_a_miss_on_a_shared_store(
    make_cache: Any, backend_name: str
) -> None:
    cache: Facade = make_cache()
    cache.set("k", ALICE)
    if backend_name == "memory":
        assert cache.get("k") is ALICE  # in-process: the object itself
        return
    assert cache.get("k") is MISSING
    assert cache.stats().decode_errors == 1
    assert cache.get("k", type=User) == ALICE
    # Another class is not this one: a miss, never a wrong object.
    assert cache.get("k", type=Point) is MISSING


REFUSED = [
    pytest.param(object(), "object", id="object"),
    pytest.param(bytearray(b"x"), "bytearray", id="bytearray"),
    pytest.param({"a": [1, {2: object()}]}, "object", id="nested-object"),
    pytest.param(enum.Enum("Unregistered", "A B").A, "Unregistered", id="unregistered-enum"),
]


#: The memory backend stores objects themselves: it has no codec to refuse them.
SHARED = pytest.mark.parametrize("backend_name", ["redis", "redis-cluster"])


@SHARED
@pytest.mark.parametrize(("value", "name"), REFUSED)
def test_a_direct_set_of_what_the_codec_refuses_raises_naming_the_type(
    make_cache: Any, value: Any, name: str
) -> None:
    cache: Facade = make_cache()
    with pytest.raises(SerializationError, match=name):
        cache.set("k", value)
    assert cache.get("k") is MISSING


@SHARED
@pytest.mark.parametrize(("value", "name"), REFUSED)
def test_get_or_load_returns_what_the_codec_refuses_uncached_counted_and_logged_once(
    make_cache: Any, value: Any, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    cache: Facade = make_cache()
    calls = []

    def load() -> Any:
        calls.append(1)
        return value

    with caplog.at_level(logging.WARNING, logger="cachewise"):
        assert cache.get_or_load("k", load) is value
        assert cache.get_or_load("k", load) is value
        assert cache.get_or_load("k2", load) is value
    assert len(calls) == 3, "nothing was cached"
    stats = cache.stats()
    assert (stats.encode_errors, stats.load_errors, stats.backend_errors) == (3, 0, 0)
    warnings = [r for r in caplog.records if "not cached" in r.getMessage()]
    assert len(warnings) == 1, "logged once per type"
    assert name in warnings[0].getMessage()


def test_a_decorated_function_returning_what_the_codec_refuses_still_answers(
    make_cache: Any,
) -> None:
    cache: Facade = make_cache()
    marker = object()

    @cache.cached("compute:{x}")
    def compute(x: int) -> Any:
        return marker

    assert cache.call(compute, 1) is marker
    assert cache.call(compute, 1) is marker


def test_none_from_a_function_declared_to_return_a_model_is_still_a_cached_negative(
    make_cache: Any,
) -> None:
    cache: Facade = make_cache()
    calls = []

    @cache.cached("user:{user_id}")
    def get_user(user_id: int) -> User:  # (returns None for "not found" all the same)
        calls.append(user_id)
        return None  # type: ignore[return-value]

    assert cache.call(get_user, 404) is None
    assert cache.call(get_user, 404) is None
    assert calls == [404], "the negative entry must hit, not reload"
    assert cache.stats().decode_errors == 0


@pytest.mark.parametrize("backend_name", ["redis"])
def test_an_entry_that_does_not_fit_the_readers_type_is_a_miss_logged_once(
    make_cache: Any, caplog: pytest.LogCaptureFixture
) -> None:
    cache: Facade = make_cache()
    cache.set("k", Point(1))
    with caplog.at_level(logging.WARNING, logger="cachewise"):
        assert cache.get("k", type=Order) is MISSING
        assert cache.get("k", type=Order) is MISSING
    assert cache.stats().decode_errors == 2
    assert len([r for r in caplog.records if "does not fit" in r.getMessage()]) <= 1
