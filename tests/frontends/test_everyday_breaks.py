"""Breaks an outside attack on keys and values found (issue 10, sections 1 and 2),
one test each: wrong keys, values that came back different, hostile payloads."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import logging
import math
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Generic, TypeVar

import attrs
import pydantic
import pytest

from cachewise import MISSING, AsyncCache, Cache, _typed
from cachewise._core import envelope
from cachewise.keys import KeyTemplate
from cachewise.serialization import (
    JsonSerializer,
    MsgpackSerializer,
    SerializationError,
    register_enum,
)
from cachewise.testing import FakeClock
from tests.conftest import Facade
from tests.support import patient

# Patient client timeouts for this module's Redis tests (see support/patient.py).
redis_url = patient.redis_url
redis_cluster_url = patient.redis_cluster_url

SERIALIZERS = {"json": JsonSerializer, "msgpack": MsgpackSerializer}
WRITERS = pytest.mark.parametrize("writer", sorted(SERIALIZERS))
SHARED = pytest.mark.parametrize("backend_name", ["redis"])


def read_back(writer: str, value: Any, tp: Any = None) -> Any:
    serializer = SERIALIZERS[writer]()
    data = serializer.dumps(value)
    token = _typed.READ_TYPE.set(tp)
    try:
        return serializer.loads(data)
    finally:
        _typed.READ_TYPE.reset(token)


# -- keys ------------------------------------------------------------------------------


@pytest.mark.parametrize("template", ["user:{first}{last}", "item{shop}x{sku}", "{a}{b}"])
def test_a_template_whose_fields_can_split_two_ways_is_refused(template: str) -> None:
    """("ab", "c") and ("a", "bc") would fill "{first}{last}" alike (break 1)."""
    with pytest.raises(ValueError, match="punctuation"):
        KeyTemplate(template)


def test_a_template_field_over_an_object_with_the_default_repr_is_refused() -> None:
    """Its text holds a memory address the next object reuses: one user's entry
    would be served to another (break 3)."""

    class User:
        def __init__(self, uid: int) -> None:
            self.uid = uid

    with pytest.raises(TypeError, match="memory address"):
        KeyTemplate("profile:{user}").format({"user": User(1)})
    assert KeyTemplate("profile:{user.uid}").format({"user": User(1)}) == "profile:1"


def test_a_template_field_over_a_set_is_the_same_in_every_process() -> None:
    """str() of a set follows the hash seed (break 2)."""
    program = (
        "from cachewise.keys import KeyTemplate;"
        "print(KeyTemplate('r:{s}').format({'s': {'eu-west', 'us-east', 'ap-south', 'sa-x'}}))"
    )
    keys = {
        subprocess.run(
            [sys.executable, "-c", program],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": str(seed), "PATH": ""},
        ).stdout
        for seed in (1, 2, 3, 4)
    }
    assert len(keys) == 1


def test_ignore_applies_to_values_of_exactly_a_builtin_type() -> None:
    """The fast path for plain arguments skipped the filter (break 4)."""
    with Cache() as cache:

        @cache.cached(ignore=(dict, str))
        def score(user_id: int, context: Any = None, request_id: Any = None) -> int:
            return user_id

        assert score.key_for(1, {"a": 1}, "r1") == score.key_for(1, {"b": 2}, "r2")
        assert score.key_for(1) != score.key_for(2)


def test_more_framework_types_are_left_out() -> None:
    """Django's connection proxy and a LoggerAdapter were refused (break 5)."""
    from django.db import connection  # (a proxy: no settings needed to name its class)

    with Cache() as cache:

        @cache.cached()
        def report(x: int, conn: Any, log: Any) -> int:
            return x

        adapter = logging.LoggerAdapter(logging.getLogger("x"), {})
        assert report.key_for(1, connection, adapter).endswith("(x=1)")


def test_a_template_of_fields_alone_takes_empty_text() -> None:
    """ "{slug}" with "" raised (break 6)."""
    with Cache() as cache:

        @cache.cached("{slug}")
        def page(slug: str) -> str:
            return f"page {slug!r}"

        assert page("") == page("") == "page ''"
        assert cache.stats().hits == 1
        assert page.key_for("") != page.key_for("%")


def test_an_int_wider_than_4300_digits_makes_a_key() -> None:
    """int.__repr__ refuses it by default (break 18)."""
    big = 10**5000
    with Cache() as cache:

        @cache.cached()
        def f(n: int) -> int:
            return 1

        @cache.cached("n:{n}")
        def g(n: int) -> int:
            return 1

        assert f(big) == g(big) == 1
        assert f.key_for(big) != f.key_for(big + 1)
        assert g.key_for(big) != g.key_for(big + 1)


# -- the reader's type -------------------------------------------------------------------


@dataclasses.dataclass
class Settings:
    theme: str


def test_a_get_without_a_type_inside_a_typed_load_reads_plain_entries(redis_url: str) -> None:
    """The outer call's type leaked into the loader's own reads (break 7)."""
    with Cache.from_url(redis_url, namespace="b07") as cache:
        cache.set("plain", {"theme": "dark"})
        inner: list[Any] = []

        def load() -> Settings:
            inner.append(cache.get("plain", "MISS"))
            return Settings("dark")

        assert cache.get_or_load("s", load, type=Settings) == Settings("dark")
        assert inner == [{"theme": "dark"}]


def test_an_async_get_without_a_type_inside_a_typed_load_reads_plain_entries(
    redis_url: str,
) -> None:
    async def main() -> list[Any]:
        async with AsyncCache.from_url(redis_url, namespace="b07a") as cache:
            await cache.set("plain", {"theme": "dark"})
            inner: list[Any] = []

            async def load() -> Settings:
                inner.append(await cache.get("plain", "MISS"))
                return Settings("dark")

            assert await cache.get_or_load("s", load, type=Settings) == Settings("dark")
            return inner

    assert asyncio.run(main()) == [{"theme": "dark"}]


@dataclasses.dataclass
class Profile:
    n: int


def test_the_sync_background_refresh_reads_with_the_callers_type(redis_url: str) -> None:
    """A pool thread has no context: the refresh decoded untyped (break 20)."""
    clock = FakeClock(1000.0)
    with Cache.from_url(
        redis_url, namespace="b20", ttl=10, stale_ttl=100, jitter=0, early_refresh=0, clock=clock
    ) as cache:
        loads: list[int] = []

        @cache.cached("profile:{uid}")
        def profile(uid: int) -> Profile:
            loads.append(uid)
            return Profile(len(loads))

        profile(1)
        clock.advance(15)
        assert profile(1) == Profile(1)  # stale, refreshed in the background
        assert cache.wait_background(5)
        assert cache.stats().decode_errors == 0
        assert len(loads) == 2


# -- values that came back different -------------------------------------------------------


class Cat(pydantic.BaseModel):
    name: str


class Robot(pydantic.BaseModel):
    name: str


class Animal(pydantic.BaseModel):
    name: str


class Dog(Animal):
    breed: str


class Owner(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(populate_by_name=True)

    pet: Cat | Robot
    best: Animal
    secret: str = pydantic.Field(default="none", exclude=True)
    price: str
    display_name: str = pydantic.Field(serialization_alias="displayName")

    @pydantic.field_validator("price")
    @classmethod
    def add_currency(cls, value: str) -> str:
        return f"{value} EUR"


@WRITERS
def test_pydantic_models_read_back_as_they_were(writer: str) -> None:
    """A union member by its class, a subclass in a base-class field, an excluded
    field, a transforming validator not run again, serialization aliases
    (breaks 9 and 11)."""
    owner = Owner(
        pet=Robot(name="R2"),
        best=Dog(name="Rex", breed="lab"),
        secret="s3",
        price="10",
        display_name="Ann",
    )
    back = read_back(writer, owner, Owner)
    assert type(back.pet) is Robot
    assert type(back.best) is Dog
    assert back.best.breed == "lab"
    assert back.secret == "s3"
    assert back.price == "10 EUR"
    assert back == owner


class Ids(pydantic.RootModel[list[int]]):
    pass


@WRITERS
def test_a_pydantic_root_model_round_trips(writer: str) -> None:
    """It raised a non-codec error, counted as a backend failure (break 8)."""
    assert read_back(writer, Ids([1, 2]), Ids) == Ids([1, 2])


@dataclasses.dataclass
class Scaled:
    a: int
    factor: dataclasses.InitVar[int] = 3

    def __post_init__(self, factor: int) -> None:
        self.a *= factor


@dataclasses.dataclass
class Needs:
    a: int
    factor: dataclasses.InitVar[int]

    def __post_init__(self, factor: int) -> None:
        self.a *= factor


@attrs.define
class Path_:
    parts: list[str] = attrs.field(converter=lambda parts: ["root", *parts])


@WRITERS
def test_dataclasses_and_attrs_are_rebuilt_without_running_init_again(writer: str) -> None:
    """InitVar and converters ran again on every read (break 10)."""
    assert read_back(writer, Scaled(2, factor=5), Scaled) == Scaled(10, factor=1)
    assert read_back(writer, Scaled(2, factor=5), Scaled).a == 10
    assert read_back(writer, Needs(2, 5), Needs).a == 10
    assert read_back(writer, Path_(["a"]), Path_).parts == ["root", "a"]


@dataclasses.dataclass
class Report:
    title: str
    total: int = dataclasses.field(init=False)


@SHARED
def test_a_value_whose_fields_cannot_be_read_is_refused_not_a_backend_failure(
    make_cache: Any,
) -> None:
    """An unset init=False field (break 8)."""
    cache: Facade = make_cache()
    report = Report("q1")
    with pytest.raises(SerializationError, match="Report"):
        cache.set("r", report)
    assert cache.get_or_load("r", lambda: report) is report
    stats = cache.stats()
    assert (stats.encode_errors, stats.backend_errors, stats.invalidations_pending) == (1, 0, 0)


T = TypeVar("T")


@dataclasses.dataclass
class Page(Generic[T]):
    items: list[T]


@WRITERS
def test_a_generic_dataclass_reads_back_with_its_type_argument(writer: str) -> None:
    """Page[Profile] read items: list[T] with the bare TypeVar (break 21)."""
    page = Page([Profile(1), Profile(2)])
    assert read_back(writer, page, Page[Profile]) == page


def test_a_field_whose_annotation_does_not_resolve_leaves_the_others_typed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A TYPE_CHECKING-only import lost every field's type (break 22)."""
    (tmp_path / "b22models.py").write_text(
        textwrap.dedent(
            """
            from __future__ import annotations
            import dataclasses
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                from decimal import Decimal

            @dataclasses.dataclass
            class Address:
                city: str

            @dataclasses.dataclass
            class Customer:
                name: str
                address: Address
                balance: Decimal | None = None
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    from b22models import Address, Customer  # type: ignore[import-not-found]

    customer = Customer("Ann", Address("Oslo"))
    assert read_back("json", customer, Customer) == customer


@register_enum
class Limit(float, enum.Enum):
    NONE = math.nan


@register_enum
class Perm(enum.IntFlag):
    READ = 1
    WRITE = 2


@WRITERS
def test_what_could_not_be_read_back_is_refused_at_write(writer: str) -> None:
    """An int wider than the reader takes, an enum member whose value is NaN
    (break 17)."""
    with pytest.raises(SerializationError, match="400,000 bits"):
        SERIALIZERS[writer]().dumps(1 << 500_000)
    with pytest.raises(SerializationError, match="Limit"):
        SERIALIZERS[writer]().dumps(Limit.NONE)
    assert read_back(writer, Perm.READ | Perm.WRITE) == Perm.READ | Perm.WRITE


# -- hostile payloads -------------------------------------------------------------------------


def test_a_planted_set_of_colliding_ints_is_a_quick_miss() -> None:
    """Quadratic set building held the GIL for tens of seconds (break 12)."""
    p = 2**61 - 1
    items = [{"$cw": ["int", format((i + 8) * p, "x")]} for i in range(20_000)]
    data = b"~" + json.dumps({"$cw": ["set", items]}).encode()
    started = time.perf_counter()
    with pytest.raises(envelope.DecodeError, match="share one hash"):
        JsonSerializer().loads(data)
    assert time.perf_counter() - started < 5.0  # (quadratic: a minute and more)
    pairs = [[{"$cw": ["int", format((i + 8) * p, "x")]}, 1] for i in range(1000)]
    with pytest.raises(envelope.DecodeError, match="share one hash"):
        JsonSerializer().loads(b"~" + json.dumps({"$cw": ["dict", pairs]}).encode())


def test_msgpack_timestamps_and_ext_types_are_misses() -> None:
    """Types the codec never writes came back as hits (break 13)."""
    import msgpack

    serializer = MsgpackSerializer()
    for planted in (msgpack.Timestamp(1, 0), msgpack.ExtType(7, b"x"), {1: "int key"}):
        data = msgpack.packb([planted])
        with pytest.raises(Exception):  # (any exception: the envelope's DecodeError)
            serializer.loads(data)
        with pytest.raises(Exception):
            serializer.loads(b"\xc1" + data)


def test_a_planted_flag_value_with_unknown_bits_is_a_miss() -> None:
    """Each would stay in the class as a pseudo-member for good (break 23)."""
    before = len(Perm._value2member_map_)
    for bits in range(4, 2004):
        data = b"~" + json.dumps({"$cw": ["enum", _typed.class_path(Perm), bits]}).encode()
        with pytest.raises(envelope.DecodeError):
            JsonSerializer().loads(data)
    assert len(Perm._value2member_map_) <= before + 4


def test_planted_struct_names_do_not_grow_memory_or_the_log(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each new name was kept and logged whole, for good (break 15)."""
    monkeypatch.setattr(_typed, "_warned_untyped", set())  # (other tests log too)
    serializer = JsonSerializer()
    with caplog.at_level(logging.WARNING, logger="cachewise"):
        for index in range(_typed._WARNED_MAX + 50):
            name = f"x{index}." + "n" * 10_000
            data = b"~" + json.dumps({"$cw": ["struct", name, {}]}).encode()
            with pytest.raises(envelope.DecodeError):
                serializer.loads(data)
    assert len(_typed._warned_untyped) <= _typed._WARNED_MAX
    assert all(len(record.getMessage()) < 2_000 for record in caplog.records)


def test_a_planted_entry_header_is_the_envelope_format() -> None:
    """(The tests above plant payloads; this pins that a whole planted entry in the
    documented layout is what the reader decodes.)"""
    now = time.time()
    header = struct.pack(">BBBBB3xddddd", 0xC5, 1, 0, 1, 0, now, now + 60, now + 60, now + 60, 0)
    from cachewise.serialization import Codec

    entry = Codec().decode(header + b"[1]")
    assert entry.value == [1]
    assert MISSING is not entry.value


def test_a_signed_pickle_entry_copied_onto_another_key_does_not_verify(redis_url: str) -> None:
    """The signature covered the envelope, not where it was stored: anyone who can
    write to Redis could serve perms:1's entry as perms:2 (break 14)."""
    import redis

    from cachewise.backends._redis import value_key
    from cachewise.serialization import PickleSerializer

    secret = b"0123456789abcdef-secret"
    with Cache.from_url(redis_url, namespace="b14", serializer=PickleSerializer(secret)) as cache:
        cache.set("perms:1", {"admin": True})
        cache.set("perms:2", {"admin": False})
        assert cache.get("perms:1") == {"admin": True}
        client = redis.Redis.from_url(redis_url.partition("?")[0])  # (no cachewise options)
        try:
            planted = client.get(value_key("b14:perms:1"))
            client.set(value_key("b14:perms:2"), planted)
        finally:
            client.close()
        assert cache.get("perms:2") is MISSING
        assert cache.stats().decode_errors == 1


class Unstorable:
    pass


def test_every_concurrent_caller_gets_a_refused_value_from_one_load(redis_url: str) -> None:
    """Callers that joined after the load began read again and loaded again, in
    rounds: a refused write confirmed nothing (break 16). The lease, still held
    when released, confirms no delete happened meanwhile."""
    callers = 12
    value = Unstorable()
    with Cache.from_url(redis_url, namespace="b16") as cache:
        loads: list[int] = []

        def load() -> Unstorable:
            loads.append(1)
            deadline = time.monotonic() + 10
            while cache.stats().coalesced < callers - 1 and time.monotonic() < deadline:
                time.sleep(0.005)  # until every other caller has joined this load
            return value

        results: list[Any] = []
        threads = [
            threading.Thread(target=lambda: results.append(cache.get_or_load("k", load)))
            for _ in range(callers)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
        assert results == [value] * callers
        assert len(loads) == 1
        assert cache.stats().encode_errors == 1


def test_every_concurrent_task_gets_a_refused_value_from_one_load(redis_url: str) -> None:
    """The tasks join after the load began (early joiners were always served)."""
    callers = 12
    value = Unstorable()

    async def main() -> tuple[list[Any], int]:
        async with AsyncCache.from_url(redis_url, namespace="b16a") as cache:
            loads: list[int] = []
            started = asyncio.Event()

            async def load() -> Unstorable:
                loads.append(1)
                started.set()
                for _ in range(2000):
                    if cache.stats().coalesced >= callers - 1:
                        break
                    await asyncio.sleep(0.005)  # until every other task has joined
                return value

            first = asyncio.ensure_future(cache.get_or_load("k", load))
            await started.wait()
            rest = await asyncio.gather(*(cache.get_or_load("k", load) for _ in range(callers - 1)))
            return [await first, *rest], len(loads)

    results, loads = asyncio.run(main())
    assert results == [value] * callers
    assert loads == 1


# -- the second attack round ----------------------------------------------------------------


class Vault(pydantic.BaseModel):
    api_key: pydantic.SecretStr
    site: pydantic.HttpUrl
    anything: Any = None


@WRITERS
def test_a_secret_comes_back_as_the_secret_not_its_mask(writer: str) -> None:
    vault = Vault(api_key="sk-live-123", site="https://example.test/a")
    back = read_back(writer, vault, Vault)
    assert back.api_key.get_secret_value() == "sk-live-123"
    assert back == vault


@WRITERS
def test_a_value_pydantic_would_change_is_refused_not_changed(writer: str) -> None:
    """An IPv4Address in an Any field would come back a str."""
    import ipaddress

    with pytest.raises(SerializationError, match="IPv4Address"):
        SERIALIZERS[writer]().dumps(
            Vault(api_key="k", site="https://e.test", anything=ipaddress.ip_address("10.0.0.1"))
        )


class Price(pydantic.BaseModel):
    amount: Any = pydantic.Field(default=None, validation_alias="price")
    price: str = "?"
    _etag: str = "none"


@WRITERS
def test_a_model_whose_alias_names_another_field_keeps_both(writer: str) -> None:
    """model_construct matched aliases first; private attributes and the fields
    set were dropped (breaks C2, C10)."""
    price = Price(price="12.50")
    price.price = "€12.50"
    price._etag = "v17"
    back = read_back(writer, price, Price)
    assert (back.amount, back.price, back._etag) == ("12.50", "€12.50", "v17")
    assert back.model_fields_set == price.model_fields_set
    assert back == price


class Page2(pydantic.BaseModel, Generic[T]):
    items: list[T]


class Item(pydantic.BaseModel):
    id: int


@WRITERS
def test_a_bare_generic_model_reads_back_through_its_parametrization(writer: str) -> None:
    page = Page2(items=[Item(id=1)])
    assert read_back(writer, page, Page2[Item]) == page


@WRITERS
@pytest.mark.parametrize(
    ("value", "tp"),
    [
        ([{"id": 1}], list[Item]),
        ({"id": 1}, Item | None),
        ("seven", int),
        ({"a": "x"}, dict[str, int]),
    ],
)
def test_a_plain_entry_that_does_not_fit_the_readers_type_is_a_miss(
    writer: str, value: Any, tp: Any
) -> None:
    with pytest.raises(envelope.DecodeError):
        read_back(writer, value, tp)


def test_a_set_nested_in_a_template_field_is_canonical_or_refused() -> None:
    assert KeyTemplate("p:{p}").format({"p": (frozenset({"b", "a"}), 1)}) == 'p:[set{"a","b"},1]'

    @dataclasses.dataclass(frozen=True)
    class Filter:
        colors: frozenset[str]

    with pytest.raises(TypeError, match="hash seed"):
        KeyTemplate("s:{f}").format({"f": Filter(frozenset({"red"}))})


def test_everyday_path_parameters_make_default_keys() -> None:
    import datetime as dt
    import decimal
    import pathlib
    import uuid

    with Cache() as cache:

        @cache.cached()
        def f(x: Any) -> int:
            return 1

        ident = uuid.UUID(int=5)
        utc = dt.datetime(2024, 1, 2, 3, tzinfo=dt.timezone.utc)
        plus2 = dt.datetime(2024, 1, 2, 5, tzinfo=dt.timezone(dt.timedelta(hours=2)))
        assert f.key_for(ident).endswith(f"(x=uuid:{ident.hex})")
        assert f.key_for(utc) == f.key_for(plus2)  # one instant
        assert f.key_for(dt.date(2024, 1, 2)) != f.key_for(dt.datetime(2024, 1, 2))
        assert f.key_for(decimal.Decimal("1.50")) == f.key_for(decimal.Decimal("1.5"))
        assert f.key_for(decimal.Decimal("2.0")) == f.key_for(2)
        assert f.key_for(decimal.Decimal("0.1")) != f.key_for(0.1)
        assert f.key_for(pathlib.Path("a b")) != f.key_for("a b")
        for value in (ident, utc, dt.date(2024, 1, 2), decimal.Decimal("1.5"), pathlib.Path("x")):
            assert f(value) == 1


def test_a_return_type_resolves_when_a_parameter_annotation_does_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cachewise._frontends._decorator import return_type

    (tmp_path / "c01mod.py").write_text(
        textwrap.dedent(
            """
            from __future__ import annotations
            from typing import TYPE_CHECKING
            import dataclasses
            if TYPE_CHECKING:
                from sqlalchemy.orm import Session

            @dataclasses.dataclass
            class User:
                id: int

            def get_user(user_id: int, session: Session) -> User:
                return User(user_id)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import c01mod  # type: ignore[import-not-found]

    assert return_type(c01mod.get_user) is c01mod.User


def test_a_client_name_redis_would_refuse_is_refused_at_from_url() -> None:
    with pytest.raises(ValueError, match="client_name"):
        Cache.from_url("redis://127.0.0.1:1/0", client_options={"client_name": "orders api"})


def test_a_dbapi_write_that_commits_inside_a_block_is_invalidated_when_the_block_fails(
    tmp_path: Path,
) -> None:
    import sqlite3

    from cachewise.integrations.dbapi import transaction

    conn = sqlite3.connect(tmp_path / "c11.db")
    try:
        conn.execute("create table users(id int primary key, name text)")
        conn.execute("insert into users values (7, 'Bob')")
        conn.commit()
        with Cache(ttl=3600) as cache:

            def name() -> str:
                return str(conn.execute("select name from users where id = 7").fetchone()[0])

            @cache.cached("user:{uid}")
            def user(uid: int) -> str:
                return name()

            @cache.invalidates("user:{uid}", after_commit="dbapi")
            def rename(conn: sqlite3.Connection, uid: int, new: str) -> None:
                conn.execute("update users set name = ? where id = ?", (new, uid))
                conn.commit()  # the write commits its own work

            def fail_after_rename() -> None:
                with transaction(conn, cache):
                    rename(conn, 7, "Ann")
                    raise RuntimeError("a later step fails")

            def fail_after_commit() -> None:
                with transaction(conn, cache, keys=["user:7"]):
                    conn.execute("update users set name = 'Cid' where id = 7")
                    conn.commit()
                    raise RuntimeError("x")

            assert user(7) == "Bob"
            with pytest.raises(RuntimeError):
                fail_after_rename()
            assert user(7) == name() == "Ann"
            with pytest.raises(RuntimeError):
                fail_after_commit()
            assert user(7) == name() == "Cid"
    finally:
        conn.close()


@WRITERS
@pytest.mark.parametrize("tp", [Any, dict[str, Any], list[Any], Any | None])
def test_any_in_a_readers_type_takes_any_plain_value(writer: str, tp: Any) -> None:
    """(typing.Any is a class in 3.11: isinstance() of it raises.)"""
    value: Any = {"id": 1, "fmt": "json"} if "dict" in repr(tp) or tp is Any else [1, "a"]
    if "None" in repr(tp):
        value = {"id": 1}
    assert read_back(writer, value, tp) == value


# -- the third attack round -------------------------------------------------------------------


@dataclasses.dataclass
class Person:
    first: str
    last: str

    def __post_init__(self) -> None:
        self.full = f"{self.first} {self.last}"


@WRITERS
def test_attributes_post_init_set_beside_the_fields_read_back(writer: str) -> None:
    back = read_back(writer, Person("Ann", "Smith"), Person)
    assert back.full == "Ann Smith"


def test_a_huge_decimal_or_an_extreme_aware_datetime_makes_a_key_at_once() -> None:
    import datetime as dt
    import decimal

    from cachewise.keys import encode_arg

    started = time.perf_counter()
    assert encode_arg(decimal.Decimal("1e999999999")) == "decimal:1e999999999"
    assert time.perf_counter() - started < 1.0
    early = dt.datetime(1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=5)))
    assert encode_arg(early).startswith("datetime:")
    assert encode_arg(decimal.Decimal("1.50")) == encode_arg(decimal.Decimal("1.5"))


@dataclasses.dataclass
class OwnerV2:
    name: Profile
    count: int


@WRITERS
def test_an_entry_an_older_class_wrote_is_a_miss_not_a_wrong_object(writer: str) -> None:
    """Same class path, other field types (a rolling deploy)."""
    old = (
        b"~"
        + json.dumps(
            {"$cw": ["struct", _typed.class_path(OwnerV2), {"name": {"n": 1}, "count": "3"}]}
        ).encode()
    )
    serializer = JsonSerializer()
    token = _typed.READ_TYPE.set(OwnerV2)
    try:
        with pytest.raises(envelope.DecodeError):
            serializer.loads(old)
    finally:
        _typed.READ_TYPE.reset(token)


@dataclasses.dataclass
class ProfilePage(Page[Profile]):
    pass


@WRITERS
def test_a_subclass_that_binds_a_generic_reads_back(writer: str) -> None:
    page = ProfilePage([Profile(1)])
    assert read_back(writer, page, ProfilePage) == page


@WRITERS
def test_a_set_of_small_int_tuples_is_not_taken_for_planted_collisions(writer: str) -> None:
    import itertools

    offsets = set(itertools.product(range(-2, 3), repeat=4))
    assert read_back(writer, offsets, set[tuple[int, ...]]) == offsets


@SHARED
def test_a_model_returned_by_a_function_declared_otherwise_is_refused_at_write(
    make_cache: Any,
) -> None:
    """-> dict returning a model: every read would miss; refused at the write
    instead (returned uncached, counted, logged)."""
    cache: Facade = make_cache()

    @cache.cached("loose:{n}")
    def loose(n: int) -> dict[str, Any]:
        return Profile(n)  # type: ignore[return-value]

    assert cache.call(loose, 1) == Profile(1)
    assert cache.stats().encode_errors == 1


class Open(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow")
    a: int = 0


@WRITERS
def test_extras_stay_in_the_fields_set(writer: str) -> None:
    model = Open(a=1, x=2)
    assert read_back(writer, model, Open).model_fields_set == {"a", "x"}


def test_a_dict_in_a_template_field_is_the_same_in_any_order() -> None:
    template = KeyTemplate("k:{d}")
    assert template.format({"d": {"b": 1, "a": 2}}) == template.format({"d": {"a": 2, "b": 1}})


# -- the review's attack round ----------------------------------------------------------------


@dataclasses.dataclass
class Money:
    amount: float
    rate: complex = 0j


@WRITERS
def test_the_numeric_tower_as_type_checkers_read_it(writer: str) -> None:
    """A bool or an int where a float is declared, an int where a complex is."""
    value = Money(True, 1)
    assert read_back(writer, value, Money) == value
    assert read_back(writer, True, float) is True
    assert read_back(writer, 1, complex) == 1


def test_a_dict_in_a_list_in_a_template_field_is_the_same_in_any_order() -> None:
    template = KeyTemplate("q:{rows}")
    assert template.format({"rows": [{"b": 1, "a": 2}]}) == template.format(
        {"rows": [{"a": 2, "b": 1}]}
    )


@SHARED
def test_a_structured_value_from_a_function_declared_any_is_refused_at_the_write(
    make_cache: Any,
) -> None:
    """-> Any can never read a dataclass back: counted at the write, not missed on
    every read (as -> list[Any] was already)."""
    cache: Facade = make_cache()

    @cache.cached("any:{n}")
    def anything(n: int) -> Any:
        return Profile(n)

    assert cache.call(anything, 1) == Profile(1)
    stats = cache.stats()
    assert (stats.encode_errors, stats.decode_errors) == (1, 0)


def test_an_unresolvable_return_annotation_stands_for_any_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from cachewise._frontends._decorator import return_type

    def get_user(user_id: int) -> Unknown:  # type: ignore[name-defined]  # noqa: F821
        return None

    get_user.__annotations__["return"] = "Unknown"  # (as `from __future__` leaves it)
    with caplog.at_level(logging.WARNING, logger="cachewise"):
        assert return_type(get_user) is Any
    assert "does not resolve" in caplog.text
