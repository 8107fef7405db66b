"""Loader cycles raise instead of deadlocking (break 7); an async loader that raises
CancelledError itself fails its load instead of being retried forever (break 5);
cancelling the only waiter of a lease wait logs nothing (break 25)."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from typing import Any

import pytest

from cachewise import (
    AsyncCache,
    Cache,
    LoadCancelledError,
    LoaderCycleError,
    MemoryBackend,
)
from cachewise.testing import FakeClock

JOIN = 10.0


def _with_deadline(fn: Any) -> Any:
    """Run ``fn`` in a daemon thread: a deadlock fails the test instead of hanging it."""
    out: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(JOIN)
    assert not thread.is_alive(), "deadlocked"
    if errors:
        raise errors[0]
    return out[0]


# -- break 7: cycles ----------------------------------------------------------------


def test_a_loader_that_reads_its_own_key_raises_a_cycle_error() -> None:
    with Cache() as cache:

        def load_a() -> Any:
            return cache.get_or_load("a", load_a)

        with pytest.raises(LoaderCycleError, match="'a'"):
            _with_deadline(lambda: cache.get_or_load("a", load_a))
        # Nothing is poisoned: the next caller loads normally.
        assert _with_deadline(lambda: cache.get_or_load("a", lambda: 1)) == 1


def test_a_loads_b_loads_a_raises_a_cycle_error_in_both_loads() -> None:
    with Cache() as cache:
        seen: list[BaseException] = []

        def load_b() -> Any:
            try:
                return cache.get_or_load("a", load_a)
            except LoaderCycleError as exc:
                seen.append(exc)
                raise

        def load_a() -> Any:
            return cache.get_or_load("b", load_b)

        with pytest.raises(LoaderCycleError):
            _with_deadline(lambda: cache.get_or_load("a", load_a))
        assert len(seen) == 1
        assert _with_deadline(lambda: cache.get_or_load("a", lambda: "A")) == "A"
        assert _with_deadline(lambda: cache.get_or_load("b", lambda: "B")) == "B"


def test_a_cycle_across_two_caches_is_found() -> None:
    with Cache(namespace="one") as one, Cache(namespace="two") as two:

        def load_x() -> Any:
            return two.get_or_load("y", load_y)

        def load_y() -> Any:
            return one.get_or_load("x", load_x)

        with pytest.raises(LoaderCycleError):
            _with_deadline(lambda: one.get_or_load("x", load_x))


def test_an_async_loader_awaiting_its_own_key_raises_a_cycle_error() -> None:
    async def main() -> None:
        async with AsyncCache() as cache:

            async def load_a() -> Any:
                return await cache.get_or_load("a", load_a)

            with pytest.raises(LoaderCycleError):
                await asyncio.wait_for(cache.get_or_load("a", load_a), JOIN)

            async def one() -> int:
                return 1

            assert await asyncio.wait_for(cache.get_or_load("a", one), JOIN) == 1

    asyncio.run(main())


def test_async_a_loads_b_loads_a_raises_a_cycle_error() -> None:
    async def main() -> None:
        async with AsyncCache() as cache:

            async def load_a() -> Any:
                return await cache.get_or_load("b", load_b)

            async def load_b() -> Any:
                return await cache.get_or_load("a", load_a)

            with pytest.raises(LoaderCycleError):
                await asyncio.wait_for(cache.get_or_load("a", load_a), JOIN)

    asyncio.run(main())


def test_concurrent_callers_of_one_key_are_not_a_cycle() -> None:
    with Cache() as cache:
        started, go = threading.Event(), threading.Event()

        def slow() -> str:
            started.set()
            assert go.wait(JOIN)
            return "v"

        results: list[Any] = []
        threads = [
            threading.Thread(target=lambda: results.append(cache.get_or_load("k", slow)))
            for _ in range(5)
        ]
        for t in threads:
            t.start()
        assert started.wait(JOIN)
        go.set()
        for t in threads:
            t.join(JOIN)
        assert results == ["v"] * 5


# -- break 5: a loader raising CancelledError ---------------------------------------


def test_an_async_loader_raising_cancelled_error_fails_once_and_returns() -> None:
    calls = 0

    async def main() -> None:
        nonlocal calls
        async with AsyncCache() as cache:

            async def loader() -> str:
                nonlocal calls
                calls += 1
                raise asyncio.CancelledError  # awaited something that was cancelled

            waiters = [asyncio.create_task(cache.get_or_load("k", loader)) for _ in range(3)]
            done, pending = await asyncio.wait(waiters, timeout=JOIN)
            assert not pending, "get_or_load never returned"
            for task in done:
                assert isinstance(task.exception(), LoadCancelledError)
            assert cache.stats().load_errors == 1

    asyncio.run(main())
    assert calls == 1


def test_a_loader_raising_cancelled_error_serves_the_stale_value_in_the_grace_window() -> None:
    clock = FakeClock()

    async def main() -> None:
        async with AsyncCache(ttl=10, stale_ttl=60, serve_stale=False, clock=clock) as cache:
            await cache.set("k", "old")
            clock.advance(11)

            async def loader() -> str:
                raise asyncio.CancelledError

            assert await asyncio.wait_for(cache.get_or_load("k", loader), JOIN) == "old"

    asyncio.run(main())


def test_cancelling_the_caller_still_cancels_only_the_caller() -> None:
    async def main() -> None:
        async with AsyncCache() as cache:
            started, go = asyncio.Event(), asyncio.Event()

            async def loader() -> str:
                started.set()
                await go.wait()
                return "v"

            first = asyncio.create_task(cache.get_or_load("k", loader))
            second = asyncio.create_task(cache.get_or_load("k", loader))
            await started.wait()
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            go.set()
            assert await second == "v"

    asyncio.run(main())


# -- break 25: no "exception was never retrieved" ---------------------------------------


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_cancelling_the_only_waiter_of_a_lease_wait_logs_nothing_and_never_loads(
    store: str, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    """Another front end (memory) or process (Redis) holds the lease; the waiter
    here is cancelled while it reads or waits. Nothing may log "Future exception
    was never retrieved", and the cancelled waiter must really stop (on Redis,
    redis-py can swallow the cancellation: it then went on waiting, and loaded)."""
    if store == "memory":
        shared = MemoryBackend()
        holder = Cache(shared)
        make: Any = lambda: AsyncCache(shared)  # noqa: E731
    else:
        url = request.getfixturevalue("redis_url")
        holder = Cache.from_url(url)
        make = lambda: AsyncCache.from_url(url)  # noqa: E731
    started, go = threading.Event(), threading.Event()

    def slow() -> str:
        started.set()
        assert go.wait(JOIN)
        return "v"

    thread = threading.Thread(target=lambda: holder.get_or_load("k", slow), daemon=True)
    thread.start()
    assert started.wait(JOIN)

    async def main() -> None:
        cache = make()

        async def never() -> str:
            raise AssertionError("the waiter must not load")

        for i in range(30):
            task = asyncio.create_task(cache.get_or_load("k", never))
            await asyncio.sleep(0.002 * (i % 5))  # reading, or waiting on the lease
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        await cache.aclose()
        gc.collect()
        await asyncio.sleep(0)

    try:
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            asyncio.run(main())
            gc.collect()
    finally:
        go.set()
        thread.join(JOIN)
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
    assert holder.get("k") == "v"
    holder.close()
