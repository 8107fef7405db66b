"""Held invalidations: readers check them without copying them (break 23), and a
read in flight while a settle applies one never serves the old value."""

from __future__ import annotations

import asyncio
import threading
import tracemalloc
from typing import Any

import pytest

from cachewise import MISSING, AsyncCache, Cache, CacheGroup, Entry
from tests.support.stores import Unreachable

HELD = 9_000


def _hold_many(cache: Cache, backend: Unreachable) -> None:
    backend.down = True
    cache.delete_many([f"held:{i}" for i in range(HELD)])
    assert cache.stats().invalidations_pending == HELD


def test_reads_while_thousands_are_held_do_not_copy_them() -> None:
    backend = Unreachable()
    with Cache(backend, ttl=60) as cache:
        for i in range(100):
            cache.set(f"k{i}", i)
        _hold_many(cache, backend)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            for i in range(100):
                assert cache.get_or_load(f"k{i}", lambda: -1) == i
                assert cache.get(f"k{i}") == i
            peak = tracemalloc.get_traced_memory()[1] - before
        finally:
            tracemalloc.stop()
        # A copy of 9,000 held keys is hundreds of KB per read; a read now
        # allocates a few hundred bytes at most.
        assert peak < 64 * 1024, peak


def test_concurrent_async_reads_while_held_stay_small() -> None:
    backend = Unreachable()

    async def main() -> int:
        async with AsyncCache(backend, ttl=60) as cache:
            backend.down = True
            await cache.delete_many([f"held:{i}" for i in range(HELD)])
            gate = asyncio.Event()

            async def slow() -> int:
                await gate.wait()
                return 1

            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                tasks = [asyncio.create_task(cache.get_or_load(f"k{i}", slow)) for i in range(1000)]
                await asyncio.sleep(0)
                await asyncio.sleep(0)
                gate.set()
                await asyncio.gather(*tasks)
                peak = tracemalloc.get_traced_memory()[1] - before
            finally:
                tracemalloc.stop()
            return peak

    peak = asyncio.run(main())
    # 1,000 waiting reads each holding a copy of 9,000 keys was 500 MB; now the
    # tasks themselves dominate (a few KB each).
    assert peak < 20 * 1024 * 1024, peak


def test_a_read_in_flight_while_its_invalidation_settles_is_not_served() -> None:
    """The read began while the delete was held; the settle lands while the read
    is in flight; what the read found predates the delete."""
    backend = Unreachable()
    reading, release = threading.Event(), threading.Event()
    seen: list[Entry | None] = []
    original_get = backend.get
    slow = False

    def slow_get(key: str) -> Entry | None:
        entry = original_get(key)  # the old value, read before the settle
        if slow:
            seen.append(entry)
            reading.set()
            assert release.wait(10)
        return entry

    backend.get = slow_get  # type: ignore[method-assign]
    with Cache(backend, ttl=60) as cache:
        cache.set("k", "old")
        backend.down = True
        cache.delete("k")  # held
        slow = True
        out: list[Any] = []
        reader = threading.Thread(target=lambda: out.append(cache.get("k")))
        reader.start()
        assert reading.wait(10)
        backend.down = False
        cache._settle()  # the settler's retry lands now, mid-read
        assert cache.stats().invalidations_pending == 0
        release.set()
        reader.join(10)
        assert seen
        assert seen[0] is not None
        assert seen[0].value == "old"
        assert out == [MISSING]


# -- groups: which caches share what they hold -------------------------------------

SERVER = "redis:single://test:6379/0"


def _held_delete(writer: Cache, backend: Unreachable) -> None:
    backend.down = True
    writer.delete("k")  # held: the old value stays in the backend
    assert writer.stats().invalidations_pending == 1


def test_caches_of_one_group_on_one_server_share_held_invalidations() -> None:
    group = CacheGroup("tenant")
    backend = Unreachable()
    writer = Cache(backend, group=group)
    reader = Cache(backend, group=group)
    writer._share_held(SERVER)
    reader._share_held(SERVER)
    try:
        reader.set("k", "old")
        _held_delete(writer, backend)
        assert reader.stats().invalidations_pending == 1
        assert reader.get("k") is MISSING  # the old value is not served
    finally:
        backend.down = False
        writer.close()
        reader.close()


def test_caches_of_different_groups_do_not_share_held_invalidations() -> None:
    backend = Unreachable()
    writer = Cache(backend, group=CacheGroup("one"))
    reader = Cache(backend, group=CacheGroup("two"))
    writer._share_held(SERVER)
    reader._share_held(SERVER)
    try:
        reader.set("k", "old")
        _held_delete(writer, backend)
        assert reader.stats().invalidations_pending == 0
        assert reader.get("k") == "old"  # its group holds nothing
    finally:
        backend.down = False
        writer.close()
        reader.close()


def test_a_cache_without_a_group_joins_the_default_group() -> None:
    other = AsyncCache()
    assert other.group is CacheGroup.default
    asyncio.run(other.aclose())
    with Cache() as cache:
        assert cache.group is CacheGroup.default
    group = CacheGroup()
    with Cache(group=group) as cache:
        assert cache.group is group


def test_a_group_is_a_cache_group_not_a_name() -> None:
    with pytest.raises(TypeError, match="CacheGroup"):
        Cache(group="default")  # type: ignore[arg-type]


def test_a_group_keeps_no_dropped_cache_alive() -> None:
    import gc
    import weakref

    group = CacheGroup()
    cache = Cache(group=group)
    cache._share_held(SERVER)
    # Held as a failed delete holds it (a real failure's log record would keep the
    # cache's frames alive through its exception): the group lists it for the
    # exit's last try.
    cache._unsettle(keys=[cache._full_key("k")])
    assert group._holders() == [cache]
    cache.close()
    assert group._holders() == []  # a closed cache gets no last try
    gone = weakref.ref(cache)
    del cache
    gc.collect()
    assert gone() is None
    assert list(group._holding) == []


def test_the_default_group_shares_held_invalidations_by_server_as_before() -> None:
    backend = Unreachable()
    writer = Cache(backend, namespace="default-group")
    reader = Cache(backend, namespace="default-group")
    writer._share_held(SERVER)
    reader._share_held(SERVER)
    try:
        _held_delete(writer, backend)
        assert reader.stats().invalidations_pending == 1
    finally:
        backend.down = False
        writer.close()
        reader.close()


def test_from_url_takes_a_group() -> None:
    group = CacheGroup()
    with Cache.from_url("memory://", group=group) as cache:
        assert cache.group is group
    other = AsyncCache.from_url("memory://", group=group)
    assert other.group is group
    asyncio.run(other.aclose())
