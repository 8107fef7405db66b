"""Many asyncio tasks on a small connection pool, against a real redis-server.

Waiting for a pooled connection is queueing in this process, not a backend
failure: under load every call on a warm key still hits, and the breaker stays
closed. And a long wait for a connection must not turn a hung server into a long
hang: when the breaker opens, the calls queued behind the ones stuck on the
server fail at once instead of each being sent to it in turn.

(The full-size load run, with timings, is ``benchmarks/load_pool.py``.)
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest

from cachewise import AsyncCache
from cachewise._url import DEFAULT_SOCKET_TIMEOUT
from tests.support.redis_servers import RedisServer

KEYS = [f"item:{i}" for i in range(50)]
#: CPU per request, as a real handler spends around its cache call (a busy loop:
#: the same on a fast or a slow machine).
WORK = 0.0002
#: Scheduling slack for a loaded 2-core machine (as in test_faults.py).
SLACK = 0.3
#: The longest call on a hung server: one socket timeout for the calls sent
#: first, and one more on a machine so busy that the event loop runs late: their
#: timeouts are then not held against the server (see _LoopLag in _breaker.py),
#: so a second wave is sent before the breaker opens (and, with other processes
#: on both cores, a third: 0.85 s was seen). Queued calls sent in turn would take
#: 12 s (or the 5 s checkout bound).
HUNG_BUDGET = 3 * DEFAULT_SOCKET_TIMEOUT + SLACK


def work() -> None:
    end = time.perf_counter() + WORK
    while time.perf_counter() < end:
        pass


def pool_of(cache: AsyncCache) -> Any:
    return cache.backend.inner.client.connection_pool


async def warm(cache: AsyncCache) -> None:
    await cache.set_many({key: f"cached {key}" for key in KEYS})


def test_many_tasks_on_a_small_pool_all_hit_and_never_open_the_breaker(redis_url: str) -> None:
    """400 tasks on 4 connections, with CPU work between calls. To start, all 4
    connections stay busy for two socket timeouts (the old checkout bound was one)
    while the tasks queue: a long wait, and none of it is a failure."""

    async def main() -> tuple[Any, int, int, float]:
        cache = AsyncCache.from_url(f"{redis_url}?max_connections=4", ttl=60, jitter=0)
        loads = 0
        slowest = 0.0
        try:
            await warm(cache)

            async def load() -> str:
                nonlocal loads
                loads += 1
                return "from source"

            async def task(seed: int) -> int:
                nonlocal slowest
                rng = random.Random(seed)
                wrong = 0
                for _ in range(4):
                    key = rng.choice(KEYS)
                    start = time.monotonic()
                    wrong += await cache.get_or_load(key, load) != f"cached {key}"
                    slowest = max(slowest, time.monotonic() - start)
                    work()
                return wrong

            pool = pool_of(cache)
            busy = [await pool.get_connection() for _ in range(4)]
            tasks = [asyncio.ensure_future(task(seed)) for seed in range(400)]
            await asyncio.sleep(2 * DEFAULT_SOCKET_TIMEOUT)  # real time: the wait under test
            for connection in busy:
                await pool.release(connection)
            wrong = sum(await asyncio.gather(*tasks))
            return cache.stats(), loads, wrong, slowest
        finally:
            await cache.aclose()

    stats, loads, wrong, slowest = asyncio.run(main())
    assert slowest > DEFAULT_SOCKET_TIMEOUT  # (the test's premise)
    assert (stats.breaker_opens, stats.breaker_rejections) == (0, 0), stats
    assert stats.backend_errors == 0, stats
    assert (loads, wrong) == (0, 0)
    assert stats.hits == 1600, stats


def test_pool_timeouts_degrade_but_never_open_the_breaker(redis_url: str) -> None:
    """With a checkout bound far too short for the load, calls give up waiting and
    load from the source (counted as degraded calls), but the breaker, which
    judges Redis, stays closed: Redis answered every call it was sent."""

    async def main() -> tuple[Any, set[str]]:
        cache = AsyncCache.from_url(
            f"{redis_url}?max_connections=1&pool_timeout=0.001", ttl=60, jitter=0
        )
        try:
            await warm(cache)

            async def load() -> str:
                return "from source"

            async def task(key: str) -> str:
                value: str = await cache.get_or_load(key, load)
                work()
                return value

            values = await asyncio.gather(*(task(KEYS[i % len(KEYS)]) for i in range(300)))
            return cache.stats(), set(values)
        finally:
            await cache.aclose()

    stats, values = asyncio.run(main())
    assert stats.backend_errors > 0, "no checkout timed out: the test tests nothing"
    assert (stats.breaker_opens, stats.breaker_state) == (0, "closed"), stats
    assert values <= {"from source", *(f"cached {key}" for key in KEYS)}


def test_cancelled_waiters_give_their_slots_back(redis_url: str) -> None:
    async def main() -> tuple[int, int, int]:
        cache = AsyncCache.from_url(f"{redis_url}?max_connections=3", ttl=60)
        try:
            await warm(cache)
            pool = pool_of(cache)

            async def load() -> str:
                return "from source"

            rng = random.Random(7)
            for _ in range(5):  # cancel queued (and some running) calls at random points
                tasks = [
                    asyncio.ensure_future(cache.get_or_load(rng.choice(KEYS), load))
                    for _ in range(60)
                ]
                for _ in range(rng.randrange(1, 4)):
                    await asyncio.sleep(0)
                for task in rng.sample(tasks, 30):
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            live = sum(not waiter.done() for waiter in pool._waiters)
            return pool._free, live, len(pool._holding)
        finally:
            await cache.aclose()

    assert asyncio.run(main()) == (3, 0, 0)


@pytest.mark.slow
def test_calls_queued_on_a_hung_server_fail_within_about_one_timeout(
    fresh_redis_server: RedisServer,
) -> None:
    """400 tasks on 8 connections, the server paused (SIGSTOP: it accepts and never
    answers). The first 8 calls wait out one socket timeout and open the breaker;
    the 392 queued behind them are refused when their turn comes, not sent to the
    hung server 8 at a time (which would take 12 s, or the checkout bound, 5 s)."""
    server = fresh_redis_server

    async def main() -> tuple[list[float], set[str], Any]:
        cache = AsyncCache.from_url(f"{server.url}?max_connections=8", ttl=60, jitter=0)
        try:
            await asyncio.gather(*(cache.get(key) for key in KEYS[:8]))  # (connected)
            await asyncio.to_thread(server.pause)

            async def load() -> str:
                return "from source"

            async def timed(key: str) -> tuple[float, str]:
                start = time.monotonic()
                value: str = await cache.get_or_load(key, load)
                return time.monotonic() - start, value

            # 400 different keys: no call joins another's load, each one reads.
            results = await asyncio.gather(*(timed(f"other:{i}") for i in range(400)))
            return [r[0] for r in results], {r[1] for r in results}, cache.stats()
        finally:
            if server.paused:
                server.resume()
            await cache.aclose()

    durations, values, stats = asyncio.run(main())
    assert values == {"from source"}
    assert max(durations) <= HUNG_BUDGET, (max(durations), stats)
    assert stats.breaker_opens >= 1, stats
    assert stats.breaker_rejections >= 300, stats  # the queued calls, refused
