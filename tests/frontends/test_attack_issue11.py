"""Breaks an outside attack found after issue 11 (the one-source restructuring),
each pinned for both front ends."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from typing import Any

from cachewise import AsyncCache, Cache, Entry
from cachewise.backends import MemoryBackend

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
