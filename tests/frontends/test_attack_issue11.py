"""Breaks an outside attack found after issue 11 (the one-source restructuring),
each pinned for both front ends."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from typing import Any

import pytest

from cachewise import AsyncCache, Cache, Entry, TagsUnsupportedError
from cachewise.backends import MemoryBackend
from tests.support.stores import AsyncTagless, Tagless

JOIN = 10.0


class FlakyReads(MemoryBackend):
    """Every third ``get`` fails (deterministic): a hot key's callers split into
    those whose read failed (they load without the backend) and the rest."""

    def __init__(self) -> None:
        super().__init__()
        self._gets = itertools.count(1)

    def get(self, key: str) -> Entry | None:
        if next(self._gets) % 3 == 0:
            raise ConnectionError("read failed")
        return super().get(key)


LOAD_SECONDS = 0.1  # long enough that every caller arrives while the first load runs


def test_failed_reads_on_a_lease_backend_keep_single_flight_sync() -> None:
    """100 threads miss one key; a third of their reads fail. Those callers share
    loads that write nothing; the others share the leased load. Before the fix
    each failed read revoked the leased flight and late joiners were served one
    per load: 34 loads, 2 s per call. Now: a handful of loads."""
    cache = Cache(FlakyReads(), ttl=60)
    calls = itertools.count()
    barrier = threading.Barrier(100, timeout=JOIN)
    results: list[Any] = []

    def loader() -> str:
        next(calls)
        time.sleep(LOAD_SECONDS)  # real time: the herd must arrive during the load
        return "v"

    def caller() -> None:
        barrier.wait()
        results.append(cache.get_or_load("hot", loader))

    threads = [threading.Thread(target=caller) for _ in range(100)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN)
    assert results == ["v"] * 100
    loads = next(calls)
    assert loads <= 4, f"{loads} loads for one hot key ({cache.stats()})"
    assert cache.stats().backend_errors >= 30  # the reads did fail
    cache.close()


def test_failed_reads_on_a_lease_backend_keep_single_flight_async() -> None:
    async def scenario() -> tuple[list[Any], int]:
        cache = AsyncCache(FlakyReads(), ttl=60)
        calls = itertools.count()

        async def loader() -> str:
            next(calls)
            await asyncio.sleep(LOAD_SECONDS)
            return "v"

        results = await asyncio.gather(*(cache.get_or_load("hot", loader) for _ in range(100)))
        await cache.aclose()
        return list(results), next(calls)

    results, loads = asyncio.run(scenario())
    assert results == ["v"] * 100
    assert loads <= 3, loads


def test_more_threads_than_pooled_connections_queue_and_share_one_load(redis_url: str) -> None:
    """300 threads miss one cold key on a from_url cache. redis-py's sync pool
    used to raise past 100 connections in use; the breaker took that for a dead
    server and the herd went to the source (155 loads, calls of 20 s). Threads now
    queue for a connection (max_connections, pool_timeout), as tasks do."""
    cache = Cache.from_url(redis_url, namespace="herd300", ttl=60)
    try:
        cache.get("warm")  # connected first
        calls = itertools.count()
        barrier = threading.Barrier(300, timeout=JOIN)
        results: list[Any] = []

        def loader() -> str:
            next(calls)
            time.sleep(0.2)  # real time: the whole herd arrives during the load
            return "v"

        def caller() -> None:
            barrier.wait()
            results.append(cache.get_or_load("cold", loader))

        threads = [threading.Thread(target=caller) for _ in range(300)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(JOIN * 3)
        stats = cache.stats()
        assert results == ["v"] * 300
        assert next(calls) == 1, stats
        assert stats.backend_errors == 0, stats
        assert stats.breaker_opens == 0, stats
    finally:
        cache.clear()
        cache.close()


def test_the_pool_limit_of_redis_py_is_not_the_servers_fault() -> None:
    from redis.exceptions import MaxConnectionsError

    from cachewise._core.errors import ErrorKind, classify

    assert classify(MaxConnectionsError("Too many connections")) is ErrorKind.NOT_SENT


def test_tags_on_a_tagless_backend_are_refused_at_decoration_before_any_write() -> None:
    """Before: the decorated write ran, then its invalidation raised; a caller
    retrying on that error wrote twice."""
    cache = Cache(Tagless())  # type: ignore[arg-type]
    with pytest.raises(TagsUnsupportedError):

        @cache.invalidates("user:{uid}", tags=["users"])
        def rename(uid: int) -> None:
            raise AssertionError("never decorated, never run")

    with pytest.raises(TagsUnsupportedError):

        @cache.cached("user:{uid}", tags=["users"])
        def load(uid: int) -> int:
            raise AssertionError("never decorated, never run")

    async def scenario() -> None:
        acache = AsyncCache(AsyncTagless())  # type: ignore[arg-type]
        with pytest.raises(TagsUnsupportedError):

            @acache.invalidates("user:{uid}", tags=["users"])
            async def arename(uid: int) -> None:
                raise AssertionError("never decorated, never run")

        with pytest.raises(TagsUnsupportedError):

            @acache.cached("user:{uid}", tags=["users"])
            async def aload(uid: int) -> int:
                raise AssertionError("never decorated, never run")

        await acache.aclose()

    asyncio.run(scenario())
    cache.close()


def test_a_breaker_refuses_a_backend_of_the_other_flavour() -> None:
    """Wrapped in a breaker, a backend of the wrong flavour got past the front
    ends' check: Cache then raised AttributeError on a coroutine, and AsyncCache
    silently never cached."""
    from cachewise.backends import AsyncCircuitBreaker, CircuitBreaker

    with pytest.raises(TypeError, match="wraps a sync backend"):
        CircuitBreaker(AsyncTagless())
    with pytest.raises(TypeError, match="wraps an async backend"):
        AsyncCircuitBreaker(Tagless())
    # The right flavours still wrap.
    assert CircuitBreaker(Tagless()).inner is not None
    assert AsyncCircuitBreaker(AsyncTagless()).inner is not None


def test_a_sync_breaker_is_nonblocking_only_if_its_backend_is() -> None:
    from cachewise.backends import CircuitBreaker, NonBlockingBackend

    assert not isinstance(CircuitBreaker(Tagless()), NonBlockingBackend)
    wrapped = CircuitBreaker(MemoryBackend())
    assert isinstance(wrapped, NonBlockingBackend)
    assert wrapped.nonblocking is MemoryBackend().nonblocking


def test_threads_queued_for_a_connection_fail_at_once_when_the_breaker_opens(
    fresh_redis_server: Any,
) -> None:
    """Second attack on issue 11: sync threads queued for a pooled connection were
    not stopped when the breaker opened, and each waited out a timeout on the dead
    server in turn (p50 5 s with 10 connections); tasks already were. Now the
    sync pool passes the breaker's gate after a wait, as the async one does."""
    from tests.support.faults import LatencyProxy

    with LatencyProxy(fresh_redis_server.port) as proxy:
        cache = Cache.from_url(proxy.url, ttl=60, max_connections=10)
        try:
            cache.get("warm")  # connected first
            proxy.blackhole()  # nothing comes back: each call waits out its timeout
            durations: list[float] = []
            barrier = threading.Barrier(200, timeout=JOIN)

            def caller(i: int) -> None:
                barrier.wait()
                started = time.monotonic()
                assert cache.get_or_load(f"k{i}", lambda: i) == i
                durations.append(time.monotonic() - started)

            threads = [threading.Thread(target=caller, args=(i,)) for i in range(200)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(JOIN * 2)
            stats = cache.stats()
            assert len(durations) == 200
            assert stats.breaker_opens >= 1, stats
            assert stats.breaker_rejections >= 100, stats  # the queued ones, at once
            # Without the gate: 20 rounds of 10 connections, 0.25 s each (or the
            # 5 s pool timeout). With it: a timeout or two, plus scheduling.
            assert max(durations) < 2.0, sorted(durations)[-5:]
        finally:
            proxy.forward()
            cache.close()


def test_a_delete_held_by_a_closed_cache_is_settled_by_its_open_sibling(
    fresh_redis_server: Any,
) -> None:
    """Third attack on issue 11: two caches of one group on one server share what
    they hold; the one that held a delete closed, and its sibling never retried it
    (nor at exit) while other processes read the old value. The sibling now takes
    it over."""
    import redis

    from cachewise import CacheGroup
    from tests.support.faults import LatencyProxy

    group = CacheGroup("siblings")
    raw = redis.Redis(port=fresh_redis_server.port)
    with LatencyProxy(fresh_redis_server.port) as proxy:
        first = Cache.from_url(proxy.url, namespace="sib", ttl=600, group=group)
        sibling = Cache.from_url(proxy.url, namespace="sib", ttl=600, group=group)
        try:
            first.set("k", "old")
            assert raw.exists("{sib:k}")
            proxy.blackhole()  # the delete cannot land: it is held
            first.delete("k")
            assert sibling.stats().invalidations_pending == 1
            first.close()  # its last try fails too
            proxy.forward()
            deadline = time.monotonic() + JOIN
            while sibling.stats().invalidations_pending and time.monotonic() < deadline:
                time.sleep(0.02)  # real time: the sibling's settle thread, on its own
            assert sibling.stats().invalidations_pending == 0
            assert not raw.exists("{sib:k}")
        finally:
            proxy.forward()
            sibling.close()
            raw.close()


def test_after_commit_tags_on_a_tagless_backend_are_refused_before_the_commit() -> None:
    """Third attack on issue 11: transaction(..., tags=...) on a tag-less cache
    let the block commit, then the tag invalidation failed after it."""
    import sqlite3

    from cachewise.integrations.dbapi import transaction

    cache = Cache(Tagless())  # type: ignore[arg-type]
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute("create table t (x int)")
        conn.commit()
        with pytest.raises(TagsUnsupportedError), transaction(conn, cache, keys=["k"], tags=["u"]):
            conn.execute("insert into t values (1)")
        assert conn.execute("select count(*) from t").fetchone() == (0,)
    finally:
        conn.close()
        cache.close()
