"""``from_url``: the memory:// scheme and its options; clear errors otherwise."""

from __future__ import annotations

import asyncio

import pytest

from cachewise import AsyncCache, Cache, MemoryBackend


def test_memory_url_with_options_and_cache_keywords() -> None:
    cache = Cache.from_url("memory://?max_entries=1000&max_bytes=4096", ttl=5, namespace="ns")
    backend = cache.backend
    assert isinstance(backend, MemoryBackend)
    assert (backend.max_entries, backend.max_bytes) == (1000, 4096)
    assert cache.policy.ttl == 5
    assert cache.namespace == "ns"
    cache.set("k", 1)
    cache.close()
    assert len(backend) == 0  # the cache owned the backend and closed it


def test_memory_url_defaults() -> None:
    with Cache.from_url("memory://") as cache:
        assert isinstance(cache.backend, MemoryBackend)


def test_async_from_url() -> None:
    async def main() -> None:
        cache = AsyncCache.from_url("memory://?max_entries=10", jitter=0)
        await cache.set("k", 1)
        assert await cache.get("k") == 1
        await cache.aclose()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("memcached://localhost", "scheme"),
        ("nonsense", "scheme"),
        ("memory://?max_items=3", "max_items"),
        ("memory://?max_entries=lots", "max_entries"),
        ("memory://?max_entries=0", "max_entries"),
        ("memory://?max_bytes=-1", "max_bytes"),
        ("memory://?max_entries=1&max_entries=2", "max_entries"),
        ("memory://somehost", "host"),
    ],
)
def test_bad_urls_are_value_errors_naming_the_problem(url: str, message: str) -> None:
    for cls in (Cache, AsyncCache):
        with pytest.raises(ValueError, match=message):
            cls.from_url(url)


def test_a_non_str_url_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        Cache.from_url(42)  # type: ignore[arg-type]


def test_server_identity_names_the_server_not_the_options_or_the_password() -> None:
    from cachewise._url import server_identity

    assert server_identity("memory://?max_entries=10") is None
    plain = server_identity("redis://127.0.0.1:6379/0")
    assert plain is not None
    assert server_identity("redis://:secret@127.0.0.1:6379/0?socket_timeout=1") == plain
    assert server_identity("redis://127.0.0.1") == plain  # the default port and database
    assert "secret" not in str(server_identity("redis://user:secret@127.0.0.1/0"))
    assert server_identity("redis://127.0.0.1/1") != plain
    assert server_identity("redis://127.0.0.1:6380/0") != plain
    assert server_identity("rediss://127.0.0.1:6379/0") != plain
    assert server_identity("redis+cluster://127.0.0.1:6379") != plain


# -- numeric options: accepted means usable ---------------------------------------------

#: Nothing listens here: from_url never connects, so no server is needed.
NOWHERE = "redis://127.0.0.1:1/0"

_COUNTS = ("max_connections", "max_value_bytes")
_SECONDS = (
    "lock_timeout",
    "wait_timeout",
    "tag_ttl",
    "pool_timeout",
    "socket_timeout",
    "connect_timeout",
    "invalidation_timeout",
)
_NOT_NUMBERS = ("", "lots", "nan", "inf", "-inf", "1.5e", "0x10")
_BAD_COUNTS = ("0", "-1", "1.5", "1e3", *_NOT_NUMBERS)
_BAD_SECONDS = ("0", "-0", "-1", "0.0001", "1e-300", "1e17", "1e400", "31536001", *_NOT_NUMBERS)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        *((name, value) for name in _COUNTS for value in _BAD_COUNTS),
        ("max_connections", "65536"),  # more than one host can open to one port
        ("max_connections", str(10**20)),
        ("max_value_bytes", str(512 * 1024 * 1024 + 1)),  # over Redis' largest string
        ("compress_threshold", "-1"),
        ("compress_threshold", "nan"),
        ("compress_threshold", "0.5"),
        *((name, value) for name in _SECONDS for value in _BAD_SECONDS),
    ],
)
def test_unusable_numeric_redis_options_are_value_errors_naming_the_option(
    option: str, value: str
) -> None:
    for cls in (Cache, AsyncCache):
        with pytest.raises(ValueError, match=option):
            cls.from_url(f"{NOWHERE}?{option}={value}")


@pytest.mark.parametrize(
    "query",
    [
        "max_connections=1",
        "max_connections=65535",
        "max_value_bytes=1",
        "max_value_bytes=536870912",
        "compress_threshold=0",
        "compress_threshold=1000000000000",  # never compress: usable
        *(f"{name}={value}" for name in _SECONDS for value in ("0.001", "2.5", "31536000")),
    ],
)
def test_usable_numeric_redis_options_are_accepted(query: str) -> None:
    Cache.from_url(f"{NOWHERE}?{query}").close()

    async def main() -> None:
        await AsyncCache.from_url(f"{NOWHERE}?{query}").aclose()

    asyncio.run(main())


def test_the_async_pool_gets_its_size_and_checkout_timeout_and_the_breakers_gate() -> None:
    from cachewise._errors import PoolTimeoutError
    from cachewise.backends._breaker import CircuitOpenError

    async def main() -> None:
        cache = AsyncCache.from_url(f"{NOWHERE}?max_connections=3&pool_timeout=1.5")
        try:
            pool = cache.backend.inner.client.connection_pool
            assert (pool.max_connections, pool.timeout) == (3, 1.5)
            # The checkout wait is its own bound: not the socket timeout.
            assert pool.connection_kwargs["socket_timeout"] == 0.25
            pool.gate()  # closed: a queued call goes through
            breaker = cache.backend
            for _ in range(breaker.policy.failure_threshold):
                breaker._failed("get", ConnectionError("down"))
            with pytest.raises(CircuitOpenError):
                pool.gate()  # open: a queued call is refused when its turn comes
        finally:
            await cache.aclose()
        default = AsyncCache.from_url(NOWHERE)
        try:
            pool = default.backend.inner.client.connection_pool
            assert pool.max_connections == 50
            assert pool.timeout > pool.connection_kwargs["socket_timeout"]
        finally:
            await default.aclose()
        unguarded = AsyncCache.from_url(f"{NOWHERE}?breaker=off")
        try:
            assert unguarded.backend.client.connection_pool.gate is None
        finally:
            await unguarded.aclose()
        assert issubclass(PoolTimeoutError, Exception)

    asyncio.run(main())


# -- the parse step: a URL and keywords in, one typed options object out ----------------


def test_parse_reads_the_url_and_keywords_into_one_frozen_options_object() -> None:
    from dataclasses import FrozenInstanceError
    from datetime import timedelta

    from cachewise._url import DEFAULT_CONNECT_TIMEOUT, RedisOptions, Target, parse
    from cachewise.serialization import MsgpackSerializer

    options = parse(
        "rediss://user:pw@cache.example:6380/2?socket_timeout=1&lock_timeout=3&breaker=off"
        "&serializer=msgpack",
        {
            "socket_timeout": timedelta(seconds=2),  # a keyword wins over the query
            "max_connections": 9,
            "client_options": {"client_name": "app"},
        },
    )
    assert isinstance(options, RedisOptions)
    assert options.target == Target(
        "single",
        True,
        2,
        client_url="rediss://user:pw@cache.example:6380/2",
        username="user",
        password="pw",
    )
    assert (options.socket_timeout, options.lock_timeout, options.breaker) == (2.0, 3.0, False)
    assert (options.max_connections, options.connect_timeout) == (9, DEFAULT_CONNECT_TIMEOUT)
    assert options.lease_options() == {"lock_timeout": 3.0}  # the rest: the backend's
    assert isinstance(options.codec.serializer, MsgpackSerializer)
    assert dict(options.client_options) == {"client_name": "app"}
    assert options.name == "rediss://user:***@cache.example:6380/2"  # no query, no password
    with pytest.raises(FrozenInstanceError):
        options.breaker = True  # type: ignore[misc]
    with pytest.raises(TypeError):
        options.client_options["db"] = 1  # type: ignore[index]


def test_parse_gives_each_scheme_its_target_and_memory_its_own_options() -> None:
    from cachewise._url import MemoryOptions, Target, parse

    assert parse("memory://", {}) == MemoryOptions()
    assert parse("memory://?max_entries=5", {"max_bytes": 4096}) == MemoryOptions(5, 4096)
    unix = parse("unix:///tmp/r.sock", {"db": 3})
    assert not isinstance(unix, MemoryOptions)
    assert unix.target == Target(
        "unix", False, 3, client_url="unix:///tmp/r.sock?db=3", path="/tmp/r.sock"
    )
    sentinel = parse("valkeys+sentinel://pw@s1,s2:5000/svc/1", {})
    assert not isinstance(sentinel, MemoryOptions)
    assert sentinel.target == Target(
        "sentinel", True, 1, service="svc", sentinels=(("s1", 26379), ("s2", 5000)), password="pw"
    )
    cluster = parse("redis+cluster://127.0.0.1:7000", {})
    assert not isinstance(cluster, MemoryOptions)
    assert cluster.target == Target("cluster", False, 0, client_url="redis://127.0.0.1:7000")


@pytest.mark.parametrize(
    ("url", "keywords"),
    [
        ("memory://somehost", {}),
        ("memory://?max_entries=lots", {}),
        ("redis://127.0.0.1:0/0", {}),
        ("redis+cluster://127.0.0.1:1/1", {}),
        ("unix://host/redis.sock", {}),
        ("redis+sentinel://127.0.0.1/", {}),
        (f"{NOWHERE}?serializer=pickle", {}),
        (f"{NOWHERE}?socket_timeout=0", {}),
        (NOWHERE, {"max_connections": "0"}),
        (NOWHERE, {"breaker": "maybe"}),
        (NOWHERE, {"serializer": "pickle"}),
        (NOWHERE, {"compress": "gzip"}),
        (NOWHERE, {"client_options": {"db": 1}}),
        ("redis://:pw@127.0.0.1:1/0", {"client_options": {"password": "other"}}),
    ],
)
def test_parse_refuses_bad_input_with_the_error_from_url_gives(
    url: str, keywords: dict[str, object]
) -> None:
    from cachewise._url import parse

    with pytest.raises((ValueError, TypeError)) as parsed:
        parse(url, keywords)
    for cls in (Cache, AsyncCache):
        with pytest.raises((ValueError, TypeError)) as built:
            cls.from_url(url, **keywords)
        assert (type(built.value), str(built.value)) == (type(parsed.value), str(parsed.value))


def test_what_redis_py_takes_is_checked_by_each_flavours_builder() -> None:
    """Parsing needs no redis-py; each builder checks ``client_options`` against the
    redis-py classes it builds, before it builds any."""
    from cachewise._url import RedisOptions, parse
    from cachewise._url._build import build_async, build_sync

    options = parse(NOWHERE, {"client_options": {"bogus": 1}})
    assert isinstance(options, RedisOptions)
    for build in (build_sync, build_async):
        with pytest.raises(TypeError, match="takes no option 'bogus'"):
            build(options)
