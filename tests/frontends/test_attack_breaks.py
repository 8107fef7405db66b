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
import enum
import functools
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis

from cachewise import (
    MISSING,
    AsyncCache,
    Cache,
    LoadCancelledError,
    LoaderCycleError,
    MemoryBackend,
    RedisBackend,
)

JOIN = 10.0


class SlowRead:
    """A loader that reads the source, says it has, and returns what it read once
    let go: a load that read the old row and writes after an invalidation."""

    def __init__(self, source: dict[str, str], key: str = "k") -> None:
        self.source, self.key = source, key
        self.started, self.release = threading.Event(), threading.Event()

    def __call__(self) -> str:
        value = self.source[self.key]
        self.started.set()
        assert self.release.wait(JOIN)
        return value


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


_interrupted: list[bool] = []


def interrupt_once() -> None:
    """A Ctrl-C that lands here, in the middle of the write: raised in the main
    thread (by its next bytecode) wherever the write has got to. Raised from the
    write itself rather than by a timer, which a loaded machine may run late, once
    the call has returned and pytest itself would get the KeyboardInterrupt."""
    if not _interrupted and threading.current_thread() is threading.main_thread():
        _interrupted.append(True)
        _thread.interrupt_main()
        time.sleep(0.01)


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_an_interrupt_during_the_write_leaves_nothing_stuck(
    store: str, request: pytest.FixtureRequest
) -> None:
    _interrupted.clear()
    if store == "memory":

        def slow_weigher(value: Any) -> int:
            interrupt_once()  # the write is under way when the interrupt lands
            return 100

        shared: Any = MemoryBackend(weigher=slow_weigher, wait_timeout=5)
        cache, other = Cache(shared), Cache(shared)
    else:

        class SlowWrites(RedisBackend):
            def set_leased(self, key: str, entry: Any, token: str) -> bool:
                interrupt_once()
                return super().set_leased(key, entry, token)

        url = request.getfixturevalue("redis_url")
        cache = Cache(SlowWrites(redis.Redis.from_url(url), owns_client=True, wait_timeout=5))
        other = Cache.from_url(url)
    with pytest.raises(KeyboardInterrupt):
        cache.get_or_load("k", lambda: "v")
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
    slow = SlowRead(source)
    started, release = slow.started, slow.release

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


# -- the second round of the attack ---------------------------------------------------


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_a_load_task_cancelled_before_its_first_step_leaves_nothing_stuck(
    store: str, request: pytest.FixtureRequest
) -> None:
    """A shutdown idiom cancels every task: a load task that never ran its first
    step never ran its own cleanup either; callers then spun on the dead flight."""
    shared = MemoryBackend()
    url = request.getfixturevalue("redis_url") if store == "redis" else None

    async def main() -> None:
        cache = AsyncCache.from_url(url) if url else AsyncCache(shared)

        async def loader() -> str:
            return "v"

        leader = asyncio.create_task(cache.get_or_load("k", loader))
        await asyncio.sleep(0)  # the leader spawned the load task; it has not run
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()
        await asyncio.sleep(0)
        assert leader.done()
        assert await asyncio.wait_for(cache.get_or_load("k", loader), 5) == "v"
        await cache.aclose()

    asyncio.run(main())
    assert shared.leases_held == 0


def test_an_async_loader_raising_cancelled_error_before_awaiting_fails_once() -> None:
    calls = []

    async def main() -> None:
        async with AsyncCache() as cache:

            def loader() -> Any:
                calls.append(1)
                raise asyncio.CancelledError  # e.g. cancelled_future.result()

            with pytest.raises(LoadCancelledError):
                await asyncio.wait_for(cache.get_or_load("k", loader), 5)

    asyncio.run(main())
    assert calls == [1]


@pytest.mark.parametrize("how", ["gather", "create_task"])
def test_a_loader_gathering_its_own_key_is_a_cycle(how: str) -> None:
    async def main() -> None:
        async with AsyncCache() as cache:

            async def inner() -> int:
                return 1

            async def loader() -> int:
                call = cache.get_or_load("k", inner)
                if how == "gather":
                    (value,) = await asyncio.gather(call)
                    return int(value)
                return await asyncio.create_task(call)

            with pytest.raises(LoaderCycleError):
                await asyncio.wait_for(cache.get_or_load("k", loader), 5)
            assert await asyncio.wait_for(cache.get_or_load("k", inner), 5) == 1

    asyncio.run(main())


@pytest.mark.parametrize("by", ["delete", "tag"])
def test_a_read_covered_by_a_held_invalidation_never_joins_an_older_load(
    by: str, redis_url: str
) -> None:
    """A sibling cache's invalidation cannot reach Redis and is held (shared by the
    caches of the process); a read after it must not join this cache's load that
    read the old row, whose write would be confirmed."""
    a = Cache.from_url(redis_url, ttl=60)
    b = Cache.from_url(redis_url, ttl=60)  # same server and namespace: shares held ones
    admin = redis.Redis.from_url(redis_url)
    source = {"k": "v0"}
    tags = ["t"] if by == "tag" else []
    slow = SlowRead(source)
    first, first_out = _run_in_thread(lambda: a.get_or_load("k", slow, tags=tags))
    assert slow.started.wait(JOIN)
    admin.config_set("maxclients", admin.info("clients")["connected_clients"])
    try:
        source["k"] = "v1"
        if by == "tag":
            b.invalidate_tags("t")  # fails: held
        else:
            b.delete("k")
        assert a.stats().invalidations_pending == 1
        second, second_out = _run_in_thread(
            lambda: a.get_or_load("k", lambda: source["k"], tags=tags)
        )
        second.join(0.1)
        slow.release.set()
        first.join(JOIN)
        second.join(JOIN)
    finally:
        admin.config_set("maxclients", 10000)
        slow.release.set()
    assert first_out.get("value") == "v0"
    assert second_out.get("value") == "v1", second_out
    admin.close()
    a.close()
    b.close()


def test_an_evicted_tag_record_makes_its_entries_misses_not_hits(redis_url: str) -> None:
    """Redis under maxmemory may evict a tag's version record (LFU evicts young,
    rarely read keys first): a missing record must not read as "never
    invalidated" for entries stamped before an invalidation."""
    cache = Cache.from_url(redis_url, ttl=600, namespace="app")
    admin = redis.Redis.from_url(redis_url)
    cache.get_or_load("k", lambda: "old", tags=["t"])
    cache.invalidate_tags("t")
    assert cache.get("k") is MISSING
    admin.delete("{app:t}:tag")  # evicted
    assert cache.get("k") is MISSING
    assert cache.get_or_load("k", lambda: "new", tags=["t"]) == "new"
    admin.close()
    cache.close()


def test_a_commit_cancelled_midway_is_invalidated_anyway() -> None:
    from cachewise.integrations.dbapi import async_transaction

    class SlowCommit:
        """A connection whose commit completes even if its caller is cancelled
        (aiosqlite's thread, or the server, finishes it)."""

        autocommit = False

        def __init__(self) -> None:
            self.committed = asyncio.Event()
            self.started = asyncio.Event()

        async def _commit(self) -> None:
            self.started.set()
            await asyncio.sleep(0.05)
            self.committed.set()

        async def commit(self) -> None:
            await asyncio.shield(self._commit())

        async def rollback(self) -> None:
            pass

    async def main() -> None:
        async with AsyncCache() as cache:
            await cache.set("k", "old")
            connection = SlowCommit()

            async def handler() -> None:
                async with async_transaction(connection, cache, keys=["k"]):  # type: ignore[arg-type]
                    pass

            task = asyncio.create_task(handler())
            await connection.started.wait()
            task.cancel()  # a request timeout, during COMMIT
            with pytest.raises(asyncio.CancelledError):
                await task
            await connection.committed.wait()
            assert await cache.get("k") is MISSING

    asyncio.run(main())


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_close_applies_held_invalidations_once_more(flavour: str, fresh_redis_server: Any) -> None:
    url = fresh_redis_server.url
    admin = redis.Redis.from_url(url)
    if flavour == "sync":
        cache = Cache.from_url(url, ttl=600)
        cache.set("k", "old")
        fresh_redis_server.pause()
        cache.delete("k")  # held: Redis does not answer
        fresh_redis_server.resume()
        assert cache.stats().invalidations_pending == 1
        cache.close()
    else:

        async def main() -> None:
            cache = AsyncCache.from_url(url, ttl=600)
            await cache.set("k", "old")
            fresh_redis_server.pause()
            await cache.delete("k")
            fresh_redis_server.resume()
            assert cache.stats().invalidations_pending == 1
            await cache.aclose()

        asyncio.run(main())
    assert admin.get("{k}") is None, "close() left the old value in Redis"
    admin.close()


def test_an_async_program_that_exits_without_aclose_applies_what_it_held(
    fresh_redis_server: Any,
) -> None:
    import subprocess
    import sys
    import textwrap

    url = fresh_redis_server.url
    admin = redis.Redis.from_url(url)
    script = textwrap.dedent(
        f"""
        import asyncio, os, signal
        from cachewise import AsyncCache
        async def main():
            cache = AsyncCache.from_url("{url}", ttl=600)
            await cache.set("k", "old")
            os.kill({fresh_redis_server.pid}, signal.SIGSTOP)
            await cache.delete("k")
            os.kill({fresh_redis_server.pid}, signal.SIGCONT)
            assert cache.stats().invalidations_pending == 1
        asyncio.run(main())
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert admin.get("{k}") is None, "exit left the old value in Redis"
    admin.close()


def test_an_async_cache_works_again_from_a_second_asyncio_run(redis_url: str) -> None:
    cache = AsyncCache.from_url(redis_url, ttl=60)

    async def use(tag: str) -> tuple[list[str], Any]:
        async def load() -> str:
            return tag

        before = cache.stats()
        got = await asyncio.gather(*(cache.get_or_load(f"k{i}", load) for i in range(20)))
        return got, cache.stats() - before

    first, _ = asyncio.run(use("run1"))
    second, delta = asyncio.run(use("run2"))
    assert first == second == ["run1"] * 20
    assert (delta.hits, delta.backend_errors, delta.breaker_opens) == (20, 0, 0)
    asyncio.run(cache.aclose())


def test_concurrent_first_calls_on_an_async_cluster_cache_fail_nothing(
    redis_cluster_url: str,
) -> None:
    async def main() -> Any:
        cache = AsyncCache.from_url(redis_cluster_url, ttl=60)

        async def load() -> int:
            await asyncio.sleep(0.001)
            return 1

        await asyncio.gather(*(cache.get_or_load(f"k{i}", load) for i in range(30)))
        stats = cache.stats()
        await cache.aclose()
        return stats

    stats = asyncio.run(main())
    assert (stats.backend_errors, stats.breaker_opens) == (0, 0)


def test_a_periodic_layout_does_not_fool_the_weigher() -> None:
    from cachewise.backends import estimate_size

    for n in (36_000, 45_000):
        value = [f"k{i}" if i % 2 == 0 else "v" * 4096 + str(i) for i in range(n)]
        exact = sys.getsizeof(value) + sum(sys.getsizeof(item) for item in value)
        assert 0.9 * exact < estimate_size(value) < 1.1 * exact, n


def test_functions_sharing_a_qualname_get_distinct_default_keys() -> None:
    with Cache() as cache:

        def make_getter(table: str) -> Any:
            @cache.cached
            def get(row: int) -> str:
                return f"{table} {row}"

            return get

        users, orders = make_getter("users"), make_getter("orders")
        assert users(1) == "users 1"
        assert orders(1) == "orders 1"
        double = cache.cached(lambda x: x * 2)
        square = cache.cached(lambda x: x**2)
        assert double(3) == 6
        assert square(3) == 9


def test_urls_naming_one_database_share_held_invalidations() -> None:
    from cachewise._url import server_identity

    same = [
        "redis://127.0.0.1:7000",
        "redis://127.0.0.1:7000/",
        "redis://127.0.0.1:7000/0",
        "redis://localhost:7000/0",
    ]
    assert len({server_identity(url) for url in same}) == 1
    assert server_identity("redis://127.0.0.1:7000/1") != server_identity(same[0])


def test_a_sync_call_on_the_loop_thread_waiting_for_that_loops_load_raises() -> None:
    store = MemoryBackend(wait_timeout=30)
    sync_cache = Cache(store)

    async def main() -> None:
        async_cache = AsyncCache(store)
        started, release = asyncio.Event(), asyncio.Event()

        async def slow() -> str:
            started.set()
            await release.wait()
            return "v"

        task = asyncio.create_task(async_cache.get_or_load("k", slow))
        await started.wait()
        began = time.monotonic()
        with pytest.raises(LoaderCycleError, match="event loop"):
            sync_cache.get_or_load("k", lambda: "sync")  # blocks the loop: misuse
        assert time.monotonic() - began < 5
        release.set()
        assert await task == "v"

    asyncio.run(main())


def test_a_hung_cluster_node_costs_one_timeout_per_call() -> None:
    from tests.support.redis_servers import RedisClusterProcess

    with RedisClusterProcess() as cluster:
        cache = Cache.from_url(cluster.url + "?breaker=off", ttl=60)
        for i in range(30):
            cache.set(f"k{i}", i)
        victim = cluster.nodes[0]
        victim.pause()
        try:
            slowest = 0.0
            for i in range(30):
                began = time.monotonic()
                cache.get_or_load(f"k{i}", lambda: -1)
                slowest = max(slowest, time.monotonic() - began)
        finally:
            victim.resume()
            cache.close()
    assert slowest < 0.25 + 0.2, f"a call took {slowest:.3f} s (more than one timeout)"


# -- the third round of the attack ----------------------------------------------------


def _a_held_delete(server: Any) -> tuple[AsyncCache, Any, Callable[[], Awaitable[None]]]:
    """An AsyncCache on ``server``, a raw client, and a coroutine function that
    writes user:1 and deletes it while the server is paused: the delete is held."""
    cache = AsyncCache.from_url(server.url, ttl=600)
    admin = redis.Redis.from_url(server.url)

    async def hold() -> None:
        await cache.set("user:1", "old")
        server.pause()
        await cache.delete("user:1")  # held
        server.resume()
        assert cache.stats().invalidations_pending == 1

    return cache, admin, hold


def _assert_settled(cache: AsyncCache, admin: Any, wait: bool) -> None:
    """The held delete was applied (``wait``: within JOIN seconds); then closes both."""
    deadline = time.monotonic() + (JOIN if wait else 0)
    while cache.stats().invalidations_pending and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cache.stats().invalidations_pending == 0
    assert admin.get("{user:1}") is None
    asyncio.run(cache.aclose())
    admin.close()


def test_a_delete_held_in_one_asyncio_run_is_retried_in_the_next(
    fresh_redis_server: Any,
) -> None:
    """asyncio.run cancels the settler when its run ends: the next run must start
    it again, not leave the delete held (and other processes reading the old
    value) until a read of that very key comes."""
    cache, admin, hold = _a_held_delete(fresh_redis_server)
    asyncio.run(hold())

    async def later() -> None:
        async def load() -> str:
            return "x"

        for _ in range(40):
            await cache.get_or_load("other", load)
            if not cache.stats().invalidations_pending:
                return
            await asyncio.sleep(0.05)

    asyncio.run(later())
    _assert_settled(cache, admin, wait=False)


def test_a_load_left_on_a_closed_loop_does_not_poison_its_key() -> None:
    import warnings

    cache = AsyncCache(ttl=60)
    gate = asyncio.Event()
    left: list[Any] = []

    async def stuck() -> str:
        await gate.wait()
        return "never"

    async def start() -> None:
        left.append(asyncio.ensure_future(cache.get_or_load("k", stuck)))
        await asyncio.sleep(0.01)

    loop = asyncio.new_event_loop()
    loop.run_until_complete(start())
    loop.close()  # its pending tasks are never run again, nor cancelled

    async def next_loop() -> str:
        async def fresh() -> str:
            return "new"

        value = await asyncio.wait_for(cache.get_or_load("k", fresh), 5)
        await asyncio.wait_for(cache.aclose(), 5)
        return str(value)

    # (The closed loop's task is destroyed pending when collected: the point of
    # the test, not its failure.)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert asyncio.run(next_loop()) == "new"
        left.clear()


def test_a_clear_held_again_while_an_earlier_one_settles_stays_held() -> None:
    """A held clear() had no generation: one held again while the settler was
    re-applying an earlier one was forgotten when that settle finished, and a
    load that read the old row (another front end's) stayed in the cache."""

    class SlowFlakyClear(MemoryBackend):
        fail_next = 0
        cleared = threading.Event()
        go_on = threading.Event()

        def clear(self, prefix: str = "") -> int:
            if self.fail_next:
                self.fail_next -= 1
                raise ConnectionError("transient")
            count = super().clear(prefix)
            if not self.cleared.is_set():
                self.cleared.set()
                assert self.go_on.wait(JOIN)  # the rest of a long SCAN
            return count

    store = SlowFlakyClear()
    a, b = Cache(store, ttl=60, namespace="n"), Cache(store, ttl=60, namespace="n")
    source = {"k": "1"}
    store.fail_next = 1
    a.clear()  # held; the settler re-applies it
    assert store.cleared.wait(JOIN)  # ... and is in the middle of it
    slow = SlowRead(source)
    loader, _ = _run_in_thread(lambda: b.get_or_load("k", slow))
    assert slow.started.wait(JOIN)
    source["k"] = "2"
    store.fail_next = 1
    a.clear()  # fails again: held again, after the settle began
    slow.release.set()
    loader.join(JOIN)  # b writes "1": its lease was never revoked (clear failed)
    store.go_on.set()  # the first settle finishes
    deadline = time.monotonic() + JOIN
    while a.stats().invalidations_pending and time.monotonic() < deadline:
        time.sleep(0.01)  # the settler re-applies the second clear() too
    assert a.get("k") in (MISSING, "2")
    a.close()
    b.close()


@pytest.mark.parametrize("how", ["taskgroup", "wait"])
def test_a_loader_awaiting_its_own_key_through_any_task_is_a_cycle(how: str) -> None:
    async def main() -> None:
        async with AsyncCache() as cache:

            async def inner() -> int:
                return 1

            async def loader() -> int:
                if how == "taskgroup":
                    async with asyncio.TaskGroup() as group:
                        task = group.create_task(cache.get_or_load("a", inner))
                    return task.result()
                task = asyncio.ensure_future(cache.get_or_load("a", inner))
                await asyncio.wait({task})
                return task.result()

            group = ExceptionGroup  # noqa: F821 (Python 3.11+, as TaskGroup)
            with pytest.raises((LoaderCycleError, group)) as raised:
                await asyncio.wait_for(cache.get_or_load("a", loader), 5)
            if isinstance(raised.value, group):
                assert raised.value.subgroup(LoaderCycleError) is not None
            assert await asyncio.wait_for(cache.get_or_load("a", inner), 5) == 1

    asyncio.run(main())


def test_a_cycle_through_two_caches_on_one_redis_raises_at_once(redis_url: str) -> None:
    one, two = Cache.from_url(redis_url), Cache.from_url(redis_url)
    began = time.monotonic()
    with pytest.raises(LoaderCycleError):
        one.get_or_load("a", lambda: two.get_or_load("a", lambda: 1))
    assert time.monotonic() - began < 2  # not after lock_timeout
    one.close()
    two.close()


def test_a_stalled_process_does_not_fail_its_lease_waiters(redis_url: str) -> None:
    """The listener thread could not run while the GIL was held by a long C call:
    it took the server's silence for a dead connection and failed every waiter
    (each a backend error: the breaker opened)."""
    holder = Cache.from_url(redis_url, ttl=60)
    waiter = Cache.from_url(redis_url, ttl=60)
    slow = SlowRead({"k": "v"})
    lead, _ = _run_in_thread(lambda: holder.get_or_load("k", slow))
    assert slow.started.wait(JOIN)
    waiting, out = _run_in_thread(lambda: waiter.get_or_load("k", lambda: "own"))
    time.sleep(0.3)  # the waiter waits on the holder's lease
    import json

    body = json.dumps([{"i": i, "s": "x" * 20} for i in range(300_000)])
    json.loads(body)  # about half a second inside one C call, holding the GIL
    slow.release.set()
    lead.join(JOIN)
    waiting.join(JOIN)
    assert out.get("value") == "v"
    stats = waiter.stats()
    assert (stats.backend_errors, stats.breaker_opens, stats.loads) == (0, 0, 0)
    holder.close()
    waiter.close()


def test_default_keys_tell_apart_lambdas_on_one_line_partials_and_instances() -> None:
    import functools

    with Cache() as cache:
        square, negate = cache.cached(lambda x: x * x), cache.cached(lambda x: -x)
        assert square(3) == 9
        assert negate(3) == -3

        def load(table: str, row: int) -> str:
            return f"{table}:{row}"

        users = cache.cached(functools.partial(load, "users"))
        orders = cache.cached(functools.partial(load, "orders"))
        assert users(row=1) == "users:1"
        assert orders(row=1) == "orders:1"

        class Repo:
            def __init__(self, table: str) -> None:
                self.table = table

            def get(self, row: int) -> str:
                return f"{self.table}:{row}"

        with pytest.raises(TypeError, match="__cache_key__"):
            cache.cached(Repo("users").get)


def test_an_entry_with_more_tags_than_the_wire_holds_is_refused_at_the_call(
    redis_url: str,
) -> None:
    with Cache.from_url(redis_url) as cache:
        tags = [f"t{i}" for i in range(70_000)]
        with pytest.raises(ValueError, match="at most"):
            cache.set("k", 1, tags=tags)
        with pytest.raises(ValueError, match="at most"):
            cache.get_or_load("k", lambda: 1, tags=tags)
        stats = cache.stats()
        assert (stats.backend_errors, stats.invalidations_pending) == (0, 0)


# -- the fourth round of the attack ---------------------------------------------------


def test_functions_a_factory_makes_never_share_default_keys() -> None:
    """A closure over an object, a function, a table or a big or nested tuple got
    the factory's bare name: every function it made read the others' entries."""
    with Cache() as cache:

        class Table:  # no __cache_key__: nothing tells two of them apart
            def __init__(self, name: str) -> None:
                self.name = name

        def over_object(table: Table) -> Any:
            @cache.cached
            def get(uid: int) -> str:
                return f"{table.name}:{uid}"

            return get

        with pytest.raises(TypeError, match="__cache_key__"):
            over_object(Table("users"))  # two would share every entry: refused

        def wrap(fn: Any) -> Any:
            @cache.cached
            def wrapped(x: int) -> Any:
                return fn(x)

            return wrapped

        def as_a(x: int) -> str:
            return f"A{x}"

        def as_b(x: int) -> str:
            return f"B{x}"

        assert (wrap(as_a)(1), wrap(as_b)(1)) == ("A1", "B1")

        def lookup(table: Any) -> Any:
            @cache.cached
            def look(k: int) -> Any:
                return table[k] if not isinstance(table, tuple) else table[0]

            return look

        assert (lookup(("one", "one"))(1), lookup(("uno", "uno"))(1)) == ("one", "uno")
        big_a, big_b = tuple(f"a{i}" for i in range(40)), tuple(f"b{i}" for i in range(40))
        assert (lookup(big_a)(1), lookup(big_b)(1)) == ("a0", "b0")
        assert (lookup((("x",),))(1), lookup((("y",),))(1)) == (("x",), ("y",))

        def recursive() -> Any:
            @cache.cached
            def countdown(n: int) -> int:  # captures itself: no endless naming
                return 0 if n == 0 else countdown(n - 1)

            return countdown

        assert recursive()(3) == 0


def test_a_cycle_across_a_url_cache_and_a_client_cache_on_one_redis_raises(
    redis_url: str,
) -> None:
    """A client spelled `localhost` and a URL spelled `127.0.0.1` name one server:
    the cycle between their caches waited lock_timeout instead of raising."""
    from urllib.parse import urlsplit

    port = urlsplit(redis_url).port
    by_url = Cache.from_url(f"redis://127.0.0.1:{port}/0")
    client = redis.Redis(host="localhost", port=port, socket_timeout=1)
    by_client = Cache(RedisBackend(client))
    began = time.monotonic()
    with pytest.raises(LoaderCycleError):
        by_url.get_or_load("a", lambda: by_client.get_or_load("a", lambda: 1))
    assert time.monotonic() - began < 2  # not after lock_timeout
    by_url.close()
    by_client.close()
    client.close()


def test_a_busy_release_channel_does_not_fail_lease_waiters(redis_url: str) -> None:
    """Other processes' releases fill the channel; the pong waits behind them. The
    listener took the late pong for a dead connection and failed every waiter
    (NotificationsLostError: each loaded on its own, a backend error apiece)."""
    import subprocess

    spam = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import redis, sys, time\n"
            "r = redis.Redis.from_url(sys.argv[1])\n"
            "end = time.monotonic() + 6\n"
            "while time.monotonic() < end:\n"
            "    p = r.pipeline(transaction=False)\n"
            "    for i in range(200): p.publish('cachewise:lease-released', f'x:{i}')\n"
            "    p.execute()\n",
            redis_url,
        ]
    )
    holder = Cache.from_url(redis_url, ttl=60)
    waiter = Cache.from_url(redis_url, ttl=60)
    stop = threading.Event()

    def burn() -> None:  # ordinary CPU work in the waiting process
        x = 0
        while not stop.is_set():
            for i in range(1000):
                x += i * i

    keys = [f"k{i}" for i in range(8)]
    try:
        time.sleep(0.5)  # the channel is busy
        loads = [SlowRead({k: f"held:{k}"}, k) for k in keys]
        leads = [_run_in_thread(lambda s=s: holder.get_or_load(s.key, s)) for s in loads]
        assert all(s.started.wait(JOIN) for s in loads)
        burners = [threading.Thread(target=burn, daemon=True) for _ in range(2)]
        for b in burners:
            b.start()
        waits = [_run_in_thread(lambda k=k: waiter.get_or_load(k, lambda: "own")) for k in keys]
        time.sleep(2.0)  # the waiters wait on the holder's leases, on a busy channel
        for s in loads:
            s.release.set()
        for thread, _ in leads + waits:
            thread.join(JOIN)
        stop.set()
        assert [out.get("value") for _, out in waits] == [f"held:{k}" for k in keys]
        stats = waiter.stats()
        assert (stats.backend_errors, stats.loads) == (0, 0)
    finally:
        stop.set()
        spam.kill()
        spam.wait()
        holder.close()
        waiter.close()


def test_a_delete_held_by_an_async_cache_is_applied_after_its_run_ends(
    fresh_redis_server: Any,
) -> None:
    """asyncio.run ended with a delete held; the program went on without another
    loop: nothing ever re-applied it, and other processes read the old value."""
    cache, admin, write = _a_held_delete(fresh_redis_server)
    asyncio.run(write())
    _assert_settled(cache, admin, wait=True)


def test_a_sync_call_on_the_loop_thread_waiting_through_another_thread_raises() -> None:
    """The loop's thread waits for a thread's load, which waits for a load on that
    loop: no task of the loop can run, so it waited out wait_timeout (10 s)."""
    store = MemoryBackend()
    acache, cache = AsyncCache(store), Cache(store)

    from cachewise._frontends import _cycles

    release_a = asyncio.Event()
    a_loading = threading.Event()

    async def slow_a() -> str:
        a_loading.set()
        await asyncio.wait_for(release_a.wait(), JOIN)
        return "a"

    async def main() -> None:
        first = asyncio.create_task(acache.get_or_load("a", slow_a))
        while not a_loading.is_set():
            await asyncio.sleep(0.001)
        worker, _ = _run_in_thread(
            lambda: cache.get_or_load("b", lambda: "b+" + cache.get_or_load("a", lambda: "?"))
        )
        # Until the worker leads "b" and waits for "a" (bounded; no fixed sleep).
        deadline = time.monotonic() + JOIN
        while worker.ident not in _cycles._waiting:
            assert time.monotonic() < deadline, "the worker never waited for 'a'"
            time.sleep(0.001)  # (the loop's thread: nothing of it needs to run)
        began = time.monotonic()
        try:
            with pytest.raises(LoaderCycleError):
                cache.get_or_load("b", lambda: "direct")  # blocks the loop's thread
            assert time.monotonic() - began < 2
        finally:
            release_a.set()
        assert await first == "a"
        worker.join(JOIN)

    asyncio.run(main())


@pytest.mark.parametrize(
    "path", ["/-1", "/abc", "/0/1", "/%EF%BC%90", "/\u0663", "/99999999999", "/1.0"]
)
def test_a_redis_url_naming_no_database_is_refused(path: str) -> None:
    """redis-py read these its own way (db -1, db 0, db 1...): backend errors and
    held invalidations, or the wrong database."""
    from cachewise._url import server_identity

    url = f"redis://127.0.0.1:6399{path}"
    with pytest.raises(ValueError, match="database"):
        Cache.from_url(url)
    with pytest.raises(ValueError, match="database"):
        server_identity(url)


def test_redis_urls_and_clients_naming_one_database_have_one_identity() -> None:
    from cachewise._url import client_identity, server_identity

    same = {
        server_identity(u)
        for u in ["redis://localhost", "redis://127.0.0.1:6379/", "redis://LOCALHOST/00"]
    }
    same.add(client_identity(redis.Redis(host="localhost")))
    assert len(same) == 1
    assert server_identity("redis://h/1") != server_identity("redis://h/2")


def test_a_commit_that_raises_after_committing_is_invalidated() -> None:
    """The server committed, then the connection was lost: commit() raised, and
    the block took it for a rollback, leaving the old value cached."""
    import sqlite3
    import tempfile

    from cachewise.integrations.dbapi import transaction

    class LostAfterCommit:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self._conn = conn

        def __getattr__(self, name: str) -> Any:
            return getattr(self._conn, name)

        def commit(self) -> None:
            self._conn.commit()
            raise sqlite3.OperationalError("connection lost")

    with tempfile.TemporaryDirectory() as tmp:
        conn = sqlite3.connect(f"{tmp}/db.sqlite")
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO users VALUES (1, 'old')")
        conn.commit()
        with Cache() as cache:
            cache.set("user:1", "old")
            lossy = LostAfterCommit(conn)
            with (
                pytest.raises(sqlite3.OperationalError),
                transaction(lossy, cache, keys=["user:1"]),
            ):
                conn.execute("UPDATE users SET name = 'new' WHERE id = 1")
            assert conn.execute("SELECT name FROM users").fetchone() == ("new",)
            assert cache.get("user:1") is MISSING
        conn.close()


def test_a_lease_left_by_a_load_on_a_closed_loop_is_released_by_its_waiter() -> None:
    """A loop closed with a load pending (run_until_complete(wait_for(...)), then
    close()): its lease in the shared store was never released, so a sync Cache
    waited wait_timeout (10 s) and could not write for lock_timeout (30 s)."""
    import gc
    import warnings

    store = MemoryBackend()
    acache, cache = AsyncCache(store), Cache(store)

    async def forever() -> str:
        await asyncio.sleep(3600)
        return "never"

    def abandon(key: str) -> None:
        loop = asyncio.new_event_loop()
        with pytest.raises(asyncio.TimeoutError):
            loop.run_until_complete(asyncio.wait_for(acache.get_or_load(key, forever), 0.05))
        loop.close()  # the load task is still pending on it

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        abandon("k")
        began = time.monotonic()
        assert cache.get_or_load("k", lambda: "sync") == "sync"
        assert time.monotonic() - began < 2
        assert cache.get("k") == "sync"  # and written: the lease was released

        abandon("k2")

        async def fresh() -> str:
            return "async"

        began = time.monotonic()
        assert asyncio.run(acache.get_or_load("k2", fresh)) == "async"
        assert time.monotonic() - began < 2
        assert cache.get("k2") == "async"
        gc.collect()


# ----------------------------------------------------------------- fifth round


def test_default_keys_refuse_what_cannot_tell_two_closures_apart() -> None:
    """Each of these made two functions share one default key, so one returned the
    other's value (a tenant's data served to another): a builtin bound method
    named without its instance, a helper's defaults ignored, a helper not yet
    bound at decoration dropped, classes a factory makes sharing one name, a
    captured table filled after decoration keyed as it was then."""
    import sqlite3

    with Cache() as cache:

        def over_execute(conn: Any) -> Any:
            execute = conn.execute

            @cache.cached
            def name(uid: int) -> Any:
                return execute("select ?", (uid,)).fetchone()[0]

            return name

        conn = sqlite3.connect(":memory:")
        with pytest.raises(TypeError, match="Connection"):
            over_execute(conn)
        conn.close()
        with pytest.raises(TypeError, match="dict"):
            cache.cached({"a": 1}.get)  # a builtin bound method, decorated itself

        def with_default(table: Any) -> Any:
            def lookup(i: int, _table: Any = table) -> Any:
                return _table[i]

            @cache.cached
            def get(i: int) -> Any:
                return lookup(i)

            return get

        assert (with_default(("u",))(0), with_default(("o",))(0)) == ("u", "o")
        with pytest.raises(TypeError, match="dict"):
            with_default({0: "user"})

        def late_helper(table: tuple[str, ...]) -> Any:
            @cache.cached
            def get(i: int) -> Any:
                return lookup(i)

            def lookup(i: int) -> Any:
                return table[i]

            return get

        with pytest.raises(TypeError, match="not yet bound"):
            late_helper(("u",))

        def local_class(table: tuple[str, ...]) -> Any:
            class Repo:
                rows = table

            @cache.cached
            def get(i: int) -> Any:
                return Repo.rows[i]

            return get

        with pytest.raises(TypeError, match="inside a function"):
            local_class(("u",))

        def over_table(table: dict[str, str]) -> Any:
            @cache.cached
            def get(key: str) -> Any:
                return table[key]

            return get

        with pytest.raises(TypeError, match="can change after decoration"):
            over_table({})
        with pytest.raises(TypeError, match="can change after decoration"):
            cache.cached(functools.partial(lambda t, k: t[k], {"a": 1}))

        def recursive() -> Any:
            @cache.cached
            def countdown(n: int) -> int:  # its own cell is empty at decoration: fine
                return 0 if n == 0 else countdown(n - 1)

            return countdown

        assert recursive()(3) == 0


def test_default_keys_tell_apart_closures_over_caches_and_modules() -> None:
    """A captured cache (a tenant's) and a captured module were left out of the key."""
    import json
    import pickle

    with Cache() as front, Cache(namespace="acme") as acme, Cache(namespace="globex") as globex:
        acme.set("plan", "gold")
        globex.set("plan", "free")

        def reader(tenant: Any) -> Any:
            @front.cached
            def setting(name: str) -> Any:
                return tenant.get(name)

            return setting

        assert (reader(acme)("plan"), reader(globex)("plan")) == ("gold", "free")

        def dumper(module: Any) -> Any:
            @front.cached
            def name() -> str:
                return str(module.__name__)

            return name

        assert (dumper(json)(), dumper(pickle)()) == ("json", "pickle")


def test_a_self_holding_argument_is_a_type_error_not_a_recursion_error() -> None:
    with Cache() as cache:

        @cache.cached
        def f(items: list[Any]) -> int:
            return len(items)

        loop: list[Any] = []
        loop.append(loop)
        with pytest.raises(TypeError, match="nested too deeply"):
            f(loop)


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_generators_are_refused_not_cached_exhausted(flavour: str) -> None:
    """A cached generator came back empty from the second call on."""
    if flavour == "sync":
        with Cache() as cache:
            with pytest.raises(TypeError, match="generator"):

                @cache.cached
                def rows(n: int) -> Any:
                    yield from range(n)

            with pytest.raises(TypeError, match="only once"):
                cache.get_or_load("k", lambda: iter([1, 2]))
            with pytest.raises(TypeError, match="only once"):
                cache.set("k", (i for i in range(3)))
            assert cache.get_or_load("k", lambda: [1, 2]) == [1, 2]  # the key is fine
        return

    async def main() -> None:
        cache = AsyncCache()
        with pytest.raises(TypeError, match="generator"):

            @cache.cached
            async def rows(n: int) -> Any:
                for i in range(n):
                    yield i

        async def gen() -> Any:
            return (i for i in range(3))

        with pytest.raises(TypeError, match="only once"):
            await cache.get_or_load("k", gen)

        async def fine() -> list[int]:
            return [1]

        assert await cache.get_or_load("k", fine) == [1]
        await cache.aclose()

    asyncio.run(main())


def test_every_spelling_of_one_address_is_one_server() -> None:
    """127.0.0.1, 127.1 and 0.0.0.0 got identities of their own: a delete held by
    one cache was not seen by another on the same server, which served the old
    value. And two addresses stay two servers (round 6): merged, a held delete
    settled through one server counted for the other, which kept the old value."""
    from cachewise._url import client_identity, server_identity

    spellings = ["127.0.0.1", "127.1", "0.0.0.0", "localhost", "[::ffff:127.0.0.1]"]
    same = {server_identity(f"redis://{host}:7001/2") for host in spellings}
    same.add(client_identity(redis.Redis(host="127.0.0.1", port="7001", db=2)))  # type: ignore[arg-type]
    assert len(same) == 1
    assert server_identity("redis://[::1]:7001") == server_identity("redis://[0:0::1]:7001")
    assert server_identity("redis://[::1]:7001") != server_identity("redis://127.0.0.1:7001")
    assert server_identity("redis://127.0.0.2:7001") != server_identity("redis://127.0.0.1:7001")
    assert server_identity("redis://10.0.0.1:7001") != server_identity("redis://10.0.0.2:7001")
    assert server_identity("redis://10.0.0.1:7001") == server_identity("redis://10.00.0.1:7001")


def test_a_delete_held_for_one_server_is_not_settled_through_another() -> None:
    """Two servers on one port of 127.0.0.1 and 127.0.0.2, caches with one
    namespace: the second cache's settler applied the first's held delete to its
    own server and forgot it; the first server kept the old value for good."""
    import subprocess

    from tests.support.redis_servers import RedisServer, find_binary

    binary = find_binary("redis-server")
    assert binary is not None
    with RedisServer() as x:
        # The second server: same port, another loopback address (not 127.0.0.1,
        # where the RedisServer helper checks its own).
        argv = [binary, "--port", str(x.port), "--bind", "127.0.0.2", "--save", ""]
        y = subprocess.Popen([*argv, "--appendonly", "no"], stdout=subprocess.DEVNULL)
        try:
            probe = redis.Redis(host="127.0.0.2", port=x.port)
            deadline = time.monotonic() + JOIN
            while True:
                try:
                    probe.ping()
                    break
                except redis.ConnectionError:
                    assert time.monotonic() < deadline, "the second server never started"
                    time.sleep(0.02)
            probe.close()
            a = Cache.from_url(f"redis://127.0.0.1:{x.port}", namespace="app")
            b = Cache.from_url(f"redis://127.0.0.2:{x.port}", namespace="app")
            a.set("k", "old")
            x.pause()
            try:
                a.delete("k")  # held
                assert a.stats().invalidations_pending == 1
                b.get("k")  # b's settler runs on the healthy server
                b.wait_background(1)
                time.sleep(0.3)  # (several settle periods)
                assert a.stats().invalidations_pending == 1
            finally:
                x.resume()
            deadline = time.monotonic() + JOIN
            while a.stats().invalidations_pending and time.monotonic() < deadline:
                time.sleep(0.05)
            assert a.get("k") is MISSING
            a.close()
            b.close()
        finally:
            y.kill()
            y.wait()


def test_port_zero_is_refused_not_read_as_the_default_port() -> None:
    """redis-py reads port 0 as "no port" and talks to 6379: another server."""
    with pytest.raises(ValueError, match="port"):
        Cache.from_url("redis://127.0.0.1:0")


def test_a_delete_held_on_a_loop_closed_without_cancelling_is_applied(
    fresh_redis_server: Any,
) -> None:
    """run_until_complete, then loop.close(): the settler task stayed pending on
    the closed loop and nothing re-applied the held delete."""
    import warnings

    cache, admin, write = _a_held_delete(fresh_redis_server)
    loop = asyncio.new_event_loop()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nor any "Task was destroyed" noise
        loop.run_until_complete(write())
        loop.close()
    _assert_settled(cache, admin, wait=True)


def test_an_empty_key_in_a_namespace_is_refused_on_the_hit_path_too() -> None:
    """ "ns" + "" is the raw key "ns:", which the raw namespace may hold: the empty
    key hit that entry instead of raising ValueError."""
    store = MemoryBackend()
    Cache(store).set("ns:", "raw")
    cache, acache = Cache(store, namespace="ns"), AsyncCache(store, namespace="ns")
    for call in (lambda: cache.get(""), lambda: cache.get_or_load("", lambda: "x")):
        with pytest.raises(ValueError, match="non-empty"):
            call()

    async def loader() -> str:
        return "x"

    async def main() -> None:
        with pytest.raises(ValueError, match="non-empty"):
            await acache.get("")
        with pytest.raises(ValueError, match="non-empty"):
            await acache.get_or_load("", loader)

    asyncio.run(main())


# ----------------------------------------------------------------- sixth round


def test_two_live_functions_with_one_default_name_and_different_code_are_refused() -> None:
    """Defined under an if in a factory, or two functools.wraps wrappers of one
    function: one name, different code, and each read the other's entries."""
    with Cache() as cache:

        def make_direct(kind: str) -> Any:
            if kind == "a":

                @cache.cached
                def get(x: str) -> str:
                    return "A" + x
            else:

                @cache.cached
                def get(x: str) -> str:
                    return "B" + x

            return get

        first = make_direct("a")
        assert make_direct("a")("1") == "A1"  # the same code again: fine
        with pytest.raises(TypeError, match="different code"):
            make_direct("b")

        def as_upper(fn: Any) -> Any:
            @functools.wraps(fn)
            def wrapper(name: str) -> str:
                return str(fn(name)).upper()

            return wrapper

        def as_lower(fn: Any) -> Any:
            @functools.wraps(fn)
            def wrapper(name: str) -> str:
                return str(fn(name)).lower()

            return wrapper

        def greeting(name: str) -> str:
            return "Hello " + name

        loud = cache.cached(as_upper(greeting))
        with pytest.raises(TypeError, match="different code"):
            cache.cached(as_lower(greeting))
        assert loud("Ann") == "HELLO ANN"
        del first


def test_a_captured_name_rebound_before_the_first_call_counts_as_then() -> None:
    """A placeholder set below the decorated function: every function the factory
    made was keyed by the placeholder (None), and all shared one entry."""
    with Cache() as cache:

        def make_repo(table_name: str) -> Any:
            table = None  # set below

            @cache.cached
            def get(i: int) -> str:
                return f"{table}:{i}"

            table = table_name
            return get

        users, orders = make_repo("users"), make_repo("orders")
        assert (users(1), orders(1)) == ("users:1", "orders:1")
        assert users.key_for(1) != orders.key_for(1)


def test_local_classes_are_refused_through_classmethods_too() -> None:
    with Cache() as cache:

        def make_repo(table: str) -> Any:
            class Repo:
                TABLE = table

                @classmethod
                def fetch(cls, i: int) -> str:
                    return f"{cls.TABLE}:{i}"

            return cache.cached(Repo.fetch)

        with pytest.raises(TypeError, match="inside a function"):
            make_repo("users")


def test_captured_caches_on_two_stores_do_not_share_default_keys() -> None:
    with Cache() as front, Cache(MemoryBackend()) as eu, Cache(MemoryBackend()) as us:
        eu.set("price", "EUR 10")
        us.set("price", "USD 12")

        def make_price(region: Any) -> Any:
            @front.cached
            def price(k: str) -> Any:
                return region.get(k)

            return price

        assert (make_price(eu)("price"), make_price(us)("price")) == ("EUR 10", "USD 12")


class Region(enum.Enum):
    EU = "eu"
    US = "us"


class Repo:
    @classmethod
    def table(cls) -> str:
        return cls.__name__


def test_everyday_captures_and_decorators_are_not_refused() -> None:
    """Refused before: a cached function calling another in an app factory, a
    captured logger, enum member or lru_cache function, a staticmethod under
    cached, a classmethod over cached (its cls argument)."""
    import logging

    with Cache() as cache:

        def create_app() -> Any:
            log = logging.getLogger("app")

            @cache.cached
            def user(uid: int) -> dict[str, int]:
                log.debug("loading %s", uid)
                return {"id": uid}

            @cache.cached
            def profile(uid: int) -> Any:
                return user(uid)

            return profile

        assert create_app()(1) == {"id": 1}

        def price_in(region: Region) -> Any:
            @cache.cached
            def price(sku: str) -> tuple[str, str]:
                return (region.value, sku)

            return price

        assert (price_in(Region.EU)("x"), price_in(Region.US)("x")) == (("eu", "x"), ("us", "x"))

        @functools.lru_cache
        def rate(currency: str) -> float:
            return 1.5 if currency == "EUR" else 1.0

        def converter() -> Any:
            r = rate

            @cache.cached
            def convert(x: int) -> float:
                return x * r("EUR")

            return convert

        assert converter()(2) == 3.0

        class Holder:
            @cache.cached
            @staticmethod
            def get(i: int) -> int:
                return i * 2

        assert Holder.get(2) == 4

        @cache.cached
        def by_class(cls: type, region: Region) -> str:
            return f"{cls.__name__}:{region.value}"

        assert by_class(Repo, Region.EU) == "Repo:eu"
        assert by_class.key_for(Repo, Region.EU) != by_class.key_for(Repo, Region.US)


def test_closures_nested_too_deeply_are_a_type_error_and_shared_helpers_are_named_once() -> None:
    with Cache() as cache:

        def chain(n: int) -> Any:
            def wrap(g: Any) -> Any:
                return lambda x: g(x)  # noqa: PLW0108 - a closure per level

            f: Any = abs
            for _ in range(n):
                f = wrap(f)
            return f

        with pytest.raises(TypeError, match="nested too deeply"):
            cache.cached(chain(2000))

        def both(f: Any, g: Any) -> Any:
            return lambda x: f(x) + g(x)

        h: Any = lambda x: 1  # noqa: E731
        for _ in range(40):  # 2**40 paths: named once per helper, not per path
            h = both(h, h)
        began = time.monotonic()
        cache.cached(h)
        assert time.monotonic() - began < 2


def test_a_lease_left_by_a_load_on_a_stopped_loop_is_released_and_its_write_refused() -> None:
    """run_until_complete returned with a load still pending on the loop (stopped,
    not closed): every sync call waited wait_timeout (10 s) for it, for up to
    lock_timeout (30 s). Released now; and when the loop runs again, that load's
    late write does not replace the newer value."""
    store = MemoryBackend()
    acache, cache = AsyncCache(store), Cache(store)
    loop = asyncio.new_event_loop()
    finish = asyncio.Event()

    async def slow() -> str:
        await finish.wait()
        return "late"

    async def start() -> Any:
        task = asyncio.ensure_future(acache.get_or_load("k", slow))
        await asyncio.sleep(0.01)  # the load has its lease
        return task

    try:
        task = loop.run_until_complete(start())
        began = time.monotonic()
        assert cache.get_or_load("k", lambda: "fresh") == "fresh"
        assert time.monotonic() - began < 2
        finish.set()
        assert loop.run_until_complete(asyncio.wait_for(task, JOIN)) == "late"
        assert cache.get("k") == "fresh"
    finally:
        loop.close()


# --------------------------------------------------------------- seventh round


def test_a_placeholder_a_captured_helper_uses_counts_as_at_the_first_call() -> None:
    with Cache() as cache:

        def make(table: str) -> Any:
            lookup: Any = None  # a placeholder, bound below

            def inner(x: int) -> str:
                return str(lookup(x))

            @cache.cached
            def get(x: int) -> str:
                return inner(x)

            def lookup(x: int) -> str:  # noqa: F811 - the placeholder's value
                return f"{table}:{x}"

            return get

        users, orders = make("users"), make("orders")
        assert (users(1), orders(1)) == ("users:1", "orders:1")


def test_a_wrapper_passing_its_function_as_a_default_keeps_it_in_the_key() -> None:
    with Cache() as cache:

        def logged(fn: Any) -> Any:
            @functools.wraps(fn)
            def wrapper(*args: Any, _fn: Any = fn, **kwargs: Any) -> Any:
                return _fn(*args, **kwargs)

            return wrapper

        def make(table: str) -> Any:
            @cache.cached
            @logged
            def get(x: int) -> str:
                return f"{table}:{x}"

            return get

        assert (make("users")(1), make("orders")(1)) == ("users:1", "orders:1")


def test_a_class_based_decorator_is_named_by_its_instance_like_any_callable_object() -> None:
    with Cache() as cache:

        class Scaled:
            def __init__(self, fn: Any, factor: int) -> None:
                self.factor = factor
                functools.update_wrapper(self, fn)

            def __call__(self, x: int) -> int:
                return int(self.__wrapped__(x)) * self.factor  # type: ignore[attr-defined]

        def price(x: int) -> int:
            return x

        with pytest.raises(TypeError, match="Scaled"):
            cache.cached(Scaled(price, 2))

        def make(factor: int) -> Any:
            scaled = Scaled(price, factor)

            @cache.cached
            def get(x: int) -> int:
                return scaled(x)

            return get

        with pytest.raises(TypeError, match="Scaled"):
            make(2)


def test_a_local_cache_captured_by_a_shared_cache_is_named_alike_in_every_process(
    redis_url: str,
) -> None:
    """Named by its id in this process: another process computed another key, and
    its invalidate() missed the entry this one read."""
    shared = Cache.from_url(redis_url, namespace="app")

    def make_profile(l1: Cache) -> Any:
        @shared.cached
        def profile(uid: int) -> Any:
            return l1.get(f"name:{uid}")

        return profile

    # Two local caches stand for the one each process has.
    here, there = Cache(namespace="l1"), Cache(namespace="l1")
    assert make_profile(here).key_for(1) == make_profile(there).key_for(1)
    shared.close()


def test_the_default_name_registry_forgets_dropped_functions() -> None:
    import gc

    from cachewise import keys

    with Cache() as cache:
        before = len(keys._claimed)

        def make(i: int) -> Any:
            @cache.cached
            def get(x: int) -> int:
                return x + i

            return get

        for i in range(500):
            make(i)(1)
        gc.collect()
        assert len(keys._claimed) <= before + 1


def test_a_name_replaced_at_the_first_call_is_not_held_against_others() -> None:
    with Cache() as cache:

        def make(kind: str, table: str) -> Any:
            fmt: Any = None  # a placeholder, bound below
            if kind == "loud":

                @cache.cached
                def get(x: int) -> str:
                    return str(fmt(x)) + "!"
            else:

                @cache.cached
                def get(x: int) -> str:
                    return str(fmt(x)) + "."

            def fmt(x: int) -> str:  # noqa: F811
                return f"{table}:{x}"

            return get

        loud = make("loud", "users")
        assert loud(1) == "users:1!"
        quiet = make("quiet", "orders")  # its final name differs: not refused
        assert quiet(1) == "orders:1."


def test_enum_member_names_are_quoted_in_keys() -> None:
    region = enum.Enum("Region", ["eu", "eu,2", "in progress"], module=__name__)  # type: ignore[misc]
    with Cache() as cache:

        @cache.cached
        def f(items: Any) -> str:
            return repr(items)

        assert f((region["eu"], 2)) != f((region["eu,2"],))
        assert "in progress" in f(region["in progress"])


# ---------------------------------------------------------------- eighth round


@pytest.mark.parametrize("flavour", ["sync", "async", "sync-clear"])
def test_a_set_that_got_no_answer_cannot_land_after_a_later_delete(
    fresh_redis_server: Any, flavour: str
) -> None:
    """set() timed out (its request held up on the wire: a lost packet TCP
    retransmits late), then delete() returned and the held invalidation settled;
    the late SET landed afterwards and the old value was served for the TTL."""
    from tests.support.faults import LatencyProxy

    raw = redis.Redis(port=fresh_redis_server.port)
    with LatencyProxy(fresh_redis_server.port) as proxy:
        proxy.hold_requests(b"ZOMBIE", 1.0)
        url = proxy.url + "?socket_timeout=0.25"
        if flavour.startswith("sync"):
            cache = Cache.from_url(url, ttl=60)
            cache.set("item", "ZOMBIE-v1")  # no answer: held, maybe still on the wire
            if flavour == "sync-clear":
                cache.clear()
            else:
                cache.delete("item")  # the write that followed it
        else:
            acache = AsyncCache.from_url(url, ttl=60)

            async def write() -> None:
                await acache.set("item", "ZOMBIE-v1")
                await acache.delete("item")

            asyncio.run(write())
        stats: Any = cache.stats if flavour.startswith("sync") else acache.stats
        deadline = time.monotonic() + JOIN
        while stats().invalidations_pending and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stats().invalidations_pending == 0
        # The held-up SET reaches Redis about a second after it was sent.
        watch_until = time.monotonic() + 3.0
        while time.monotonic() < watch_until:
            assert raw.get("{item}") is None, "a set older than the delete landed"
            time.sleep(0.05)
        if flavour.startswith("sync"):
            cache.close()
        else:
            asyncio.run(acache.aclose())
    raw.close()


# ----------------------------------------------------------------- ninth round


def test_a_cancelled_async_set_cannot_land_after_another_front_ends_delete(
    fresh_redis_server: Any,
) -> None:
    """A cancelled AsyncCache.set was not held, and only its own backend knew of
    it: a sync Cache's delete (how Django pairs them) carried no fence, and the
    late set landed for the TTL."""
    from tests.support.faults import LatencyProxy

    raw = redis.Redis(port=fresh_redis_server.port)
    with LatencyProxy(fresh_redis_server.port) as proxy:
        proxy.hold_requests(b"ZOMBIE", 1.0)
        acache = AsyncCache.from_url(proxy.url, ttl=600)
        cache = Cache.from_url(proxy.url, ttl=600)

        async def write() -> None:
            await acache.set("item", "warm")
            task = asyncio.create_task(acache.set("item", "ZOMBIE-old"))
            await asyncio.sleep(0.1)  # sent, held on the wire
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            cache.delete("item")  # the other front end's write
            await asyncio.sleep(1.5)  # the held-up set arrives meanwhile

        asyncio.run(write())
        assert raw.get("{item}") is None, "a cancelled set older than the delete landed"
        cache.close()
        asyncio.run(acache.aclose())
    raw.close()


def test_backends_of_one_server_fence_each_others_unanswered_sets(
    fresh_redis_server: Any,
) -> None:
    """Caches on one server share held invalidations, so a sibling may apply one:
    its delete carried no fence (the fences were per backend)."""
    from cachewise.backends import RedisBackend
    from tests.support.faults import LatencyProxy

    raw = redis.Redis(port=fresh_redis_server.port)
    with LatencyProxy(fresh_redis_server.port) as proxy:
        proxy.hold_requests(b"ZOMBIE", 1.0)
        # Both name the server 127.0.0.1:<port>: one through the proxy.
        slow = RedisBackend(
            redis.Redis(port=proxy.port, socket_timeout=0.25),
            owns_client=True,
            lease_scope=f"test:{fresh_redis_server.port}",
        )
        other = RedisBackend(
            redis.Redis(port=fresh_redis_server.port),
            owns_client=True,
            lease_scope=f"test:{fresh_redis_server.port}",
        )
        with Cache(other) as sibling:
            entry = sibling._new_entry("ZOMBIE-old", sibling._clock(), 600, 0.0, False)
            with pytest.raises(redis.TimeoutError):
                slow.set("item", entry)  # no answer (and no front end to hold it)
            other.delete("item")  # the sibling settles it: fenced
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                assert raw.get("{item}") is None, "the late set landed"
                time.sleep(0.05)
            assert sibling.get("item") is MISSING
        slow.close()
    raw.close()


def test_a_set_refused_by_a_fence_leaves_a_miss_not_the_old_value(redis_url: str) -> None:
    """The refused set kept the old value (and any load's lease): a stale hit."""
    raw = redis.Redis.from_url(redis_url)
    with Cache.from_url(redis_url, ttl=600) as cache:
        cache.set("k", "old")
        future = (time.time_ns() // 1000) + 60_000_000  # a fence a minute ahead
        raw.set("{k}:fence", future)  # (as left by a delete fencing a set issued then)
        cache.set("k", "new")  # issued before that fence: refused
        assert cache.get("k") is MISSING
        raw.delete("{k}:fence")
    raw.close()
