"""Breaks found by the outside attack on this release (beyond issue 9's list).

Each test failed before its fix:

- a stale-if-error fallback read by a leader reached a joiner that came after a
  delete through another front end;
- a read covered by a held delete joined a load (in another cache of the process)
  that had read the old row;
- a loader asking another cache on the same store for its own key waited
  ``wait_timeout`` on its own lease;
- a KeyboardInterrupt during the write left the key's flight in the table for good
  (every later call hung) and the store's lease held;
- ``MemoryBackend(wait_timeout=1e10)`` was accepted, and each lease wait then
  failed (OverflowError) as a backend error;
- on Redis with a short ``tag_ttl``, a load that spanned ``invalidate_tags`` wrote
  its entry, which outlived the tag's version record and came back as a hit.
"""

from __future__ import annotations

import _thread
import asyncio
import threading
import time
from typing import Any

import pytest
import redis

from cachewise import (
    MISSING,
    AsyncCache,
    Cache,
    LoaderCycleError,
    MemoryBackend,
    RedisBackend,
)

JOIN = 10.0


def _run_in_thread(fn: Any) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except Exception as exc:
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def test_a_joiner_never_falls_back_on_the_leaders_stale_value() -> None:
    store = MemoryBackend()
    options: dict[str, Any] = {
        "ttl": 10,
        "jitter": 0,
        "stale_ttl": 60,
        "serve_stale": False,
        "early_refresh": 0,
    }
    clock = [1000.0]
    a = Cache(store, clock=lambda: clock[0], **options)
    b = Cache(store, clock=lambda: clock[0], **options)
    a.set("k", "v0")
    clock[0] += 11  # stale: a read loads, with v0 as its fallback on error
    started, release = threading.Event(), threading.Event()

    def failing() -> str:
        started.set()
        assert release.wait(JOIN)
        raise RuntimeError("source hiccup")

    first, first_out = _run_in_thread(lambda: a.get_or_load("k", failing))
    assert started.wait(JOIN)
    b.delete("k")  # through the other front end, after the commit
    second, second_out = _run_in_thread(lambda: a.get_or_load("k", lambda: "v1"))
    deadline = time.monotonic() + JOIN
    while a.stats().coalesced < 1:  # the second caller joined the first's flight
        assert time.monotonic() < deadline
        time.sleep(0.001)
    release.set()
    first.join(JOIN)
    second.join(JOIN)
    assert first_out.get("value") == "v0"  # it started before the delete: fine
    assert second_out.get("value") != "v0", second_out  # never the deleted value


def test_a_read_covered_by_a_held_delete_never_joins_an_older_load(redis_url: str) -> None:
    a = Cache.from_url(redis_url, ttl=60)
    b = Cache.from_url(redis_url, ttl=60)  # same server and namespace: shares held deletes
    admin = redis.Redis.from_url(redis_url)
    source = {"k": "v0"}
    started, release = threading.Event(), threading.Event()

    def slow() -> str:
        value = source["k"]
        started.set()
        assert release.wait(JOIN)
        return value

    first, first_out = _run_in_thread(lambda: a.get_or_load("k", slow))
    assert started.wait(JOIN)
    clients = admin.info("clients")["connected_clients"]
    admin.config_set("maxclients", clients)  # b's invalidation client cannot connect
    try:
        source["k"] = "v1"
        b.delete("k")  # fails: held, shared with a
        assert a.stats().invalidations_pending == 1
        second, second_out = _run_in_thread(lambda: a.get_or_load("k", lambda: source["k"]))
        second.join(0.1)
        release.set()
        first.join(JOIN)
        second.join(JOIN)
    finally:
        admin.config_set("maxclients", 10000)
        release.set()
    assert first_out.get("value") == "v0"
    assert second_out.get("value") == "v1", second_out
    admin.close()
    a.close()
    b.close()


def test_a_loader_asking_another_cache_on_its_store_for_its_own_key_is_a_cycle() -> None:
    store = MemoryBackend(wait_timeout=30)
    a, b = Cache(store), Cache(store)
    started = time.monotonic()
    with pytest.raises(LoaderCycleError):
        a.get_or_load("k", lambda: b.get_or_load("k", lambda: 1))
    assert time.monotonic() - started < 5  # raised at once, not after wait_timeout
    assert a.get_or_load("k", lambda: 2) == 2  # nothing stuck


def test_an_async_loader_asking_another_cache_for_its_own_key_is_a_cycle() -> None:
    async def main() -> None:
        store = MemoryBackend(wait_timeout=30)
        a, b = AsyncCache(store), AsyncCache(store)

        async def inner() -> int:
            return 1

        async def outer() -> int:
            return await b.get_or_load("k", inner)

        with pytest.raises(LoaderCycleError):
            await asyncio.wait_for(a.get_or_load("k", outer), 5)

    asyncio.run(main())


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_an_interrupt_during_the_write_leaves_nothing_stuck(
    store: str, request: pytest.FixtureRequest
) -> None:
    if store == "memory":

        def slow_weigher(value: Any) -> int:
            time.sleep(0.5)  # the write is under way when the interrupt lands
            return 100

        shared: Any = MemoryBackend(weigher=slow_weigher, wait_timeout=5)
        cache, other = Cache(shared), Cache(shared)
    else:

        class SlowWrites(RedisBackend):
            def set_leased(self, key: str, entry: Any, token: str) -> bool:
                time.sleep(0.5)
                return super().set_leased(key, entry, token)

        url = request.getfixturevalue("redis_url")
        cache = Cache(SlowWrites(redis.Redis.from_url(url), owns_client=True, wait_timeout=5))
        other = Cache.from_url(url)
    timer = threading.Timer(0.2, _thread.interrupt_main)
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        cache.get_or_load("k", lambda: "v")
    timer.join()
    later, out = _run_in_thread(lambda: cache.get_or_load("k", lambda: "v2"))
    later.join(JOIN)
    assert not later.is_alive(), "the key stayed stuck in its flight"
    assert out.get("value") == "v2"
    started = time.monotonic()
    assert other.get_or_load("k2", lambda: "x") == "x"
    cache.delete("k")
    assert other.get_or_load("k", lambda: "v3") == "v3"
    assert time.monotonic() - started < 2, "another front end waited on a leftover lease"
    cache.close()
    other.close()


@pytest.mark.parametrize("option", ["wait_timeout", "lock_timeout"])
def test_a_wait_no_thread_can_make_is_refused_up_front(option: str, redis_url: str) -> None:
    with pytest.raises(ValueError, match=option):
        MemoryBackend(**{option: 1e10})
    client = redis.Redis.from_url(redis_url)
    with pytest.raises(ValueError, match=option):
        RedisBackend(client, **{option: 1e10})
    client.close()


def test_an_entry_never_outlives_the_record_of_an_invalidation_its_stamp_predates(
    redis_url: str,
) -> None:
    cache = Cache.from_url(f"{redis_url}?tag_ttl=1", ttl=60, jitter=0)
    other = Cache.from_url(f"{redis_url}?tag_ttl=1", ttl=60, jitter=0)
    source = {"k": "v0"}
    started, release = threading.Event(), threading.Event()

    def slow() -> str:
        value = source["k"]
        started.set()
        assert release.wait(JOIN)
        return value

    loader, _ = _run_in_thread(lambda: cache.get_or_load("k", slow, tags=["t"]))
    assert started.wait(JOIN)
    source["k"] = "v1"
    other.invalidate_tags("t")
    invalidated = time.monotonic()
    time.sleep(0.6)  # the old load writes 0.6 s after the invalidation
    release.set()
    loader.join(JOIN)
    assert cache.get("k") is MISSING
    time.sleep(max(0.0, invalidated + 1.2 - time.monotonic()))  # the tag record expired
    assert cache.get("k") is MISSING, "the old entry came back once the tag record expired"
    assert cache.get_or_load("k", lambda: source["k"], tags=["t"]) == "v1"
    cache.close()
    other.close()
