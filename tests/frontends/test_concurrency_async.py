"""Single-flight, cancellation, delete-wins and background tasks for ``AsyncCache``."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from cachewise import MISSING, AsyncCache, Cache
from cachewise.testing import FakeClock


class Gate:
    """An async loader that blocks until released and counts its calls."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.calls = 0
        self.error: BaseException | None = None

    async def __call__(self) -> str:
        self.calls += 1
        n = self.calls
        self.started.set()
        # Bounded: a test that fails before releasing must not leave the cache's
        # aclose() waiting for this load forever.
        await asyncio.wait_for(self.release.wait(), 30)
        if self.error is not None:
            raise self.error
        return f"v{n}"


async def settle() -> None:
    """Let every ready task run until it blocks (no wall-clock sleeps)."""
    for _ in range(10):
        await asyncio.sleep(0)


def test_a_herd_of_1000_tasks_makes_one_load() -> None:
    async def main() -> None:
        async with AsyncCache() as cache:
            gate = Gate()
            tasks = [asyncio.create_task(cache.get_or_load("hot", gate)) for _ in range(1000)]
            await settle()
            assert gate.calls == 1
            gate.release.set()
            assert await asyncio.gather(*tasks) == ["v1"] * 1000
            stats = cache.stats()
            assert (stats.loads, stats.coalesced) == (1, 999)

    asyncio.run(main())


@pytest.mark.parametrize("cancel", ["first", "middle", "all"])
def test_cancelling_waiters_never_cancels_the_shared_load(cancel: str) -> None:
    async def main() -> None:
        async with AsyncCache() as cache:
            gate = Gate()
            tasks = [asyncio.create_task(cache.get_or_load("k", gate)) for _ in range(5)]
            await settle()
            doomed = {"first": tasks[:1], "middle": tasks[2:3], "all": tasks}[cancel]
            for t in doomed:
                t.cancel()
            await settle()
            gate.release.set()
            for t in tasks:
                if t in doomed:
                    with pytest.raises(asyncio.CancelledError):
                        await t
                else:
                    assert await t == "v1"
            await cache.wait_background()
            assert gate.calls == 1
            assert await cache.get("k") == "v1"  # the load finished and was cached

    asyncio.run(main())


def test_the_loader_exception_reaches_every_waiter_and_is_not_cached() -> None:
    async def main() -> None:
        async with AsyncCache() as cache:
            gate = Gate()
            gate.error = ValueError("bad row")
            tasks = [asyncio.create_task(cache.get_or_load("k", gate)) for _ in range(10)]
            await settle()
            gate.release.set()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            assert all(isinstance(r, ValueError) for r in results)
            assert gate.calls == 1
            gate.error = None
            assert await cache.get_or_load("k", gate) == "v2"

    asyncio.run(main())


def test_a_delete_during_a_load_wins() -> None:
    async def main() -> None:
        async with AsyncCache() as cache:
            old = Gate()
            first = asyncio.create_task(cache.get_or_load("k", old))
            await old.started.wait()
            assert await cache.delete("k") is False

            async def fresh() -> str:
                return "new"

            assert await cache.get_or_load("k", fresh) == "new"  # did not join the old load
            old.release.set()
            assert await first == "v1"
            assert await cache.get("k") == "new"

    asyncio.run(main())


def test_a_delete_during_a_load_keeps_the_old_result_out() -> None:
    async def main() -> None:
        async with AsyncCache() as cache:
            old = Gate()
            first = asyncio.create_task(cache.get_or_load("k", old))
            await old.started.wait()
            await cache.delete("k")
            old.release.set()
            await first
            assert await cache.get("k") is MISSING

    asyncio.run(main())


def test_a_sync_loader_is_a_type_error_for_every_waiter() -> None:
    async def main() -> None:
        async with AsyncCache() as cache:
            with pytest.raises(TypeError, match="awaitable"):
                await cache.get_or_load("k", lambda: 1)  # type: ignore[arg-type,return-value]
            assert await cache.get("k") is MISSING

    asyncio.run(main())


def test_aclose_drains_background_refreshes() -> None:
    async def main() -> None:
        clock = FakeClock()
        cache = AsyncCache(clock=clock, ttl=10, stale_ttl=60, jitter=0)
        await cache.set("k", "old")
        clock.advance(11)
        gate = Gate()
        assert await cache.get_or_load("k", gate) == "old"
        await gate.started.wait()
        closing = asyncio.create_task(cache.aclose())
        await settle()
        assert not closing.done()  # waiting for the refresh
        gate.release.set()
        await closing
        assert gate.calls == 1

    asyncio.run(main())


def test_a_failed_background_refresh_is_retrieved_and_logged(caplog: Any) -> None:
    async def main() -> None:
        clock = FakeClock()
        async with AsyncCache(clock=clock, ttl=10, stale_ttl=60, jitter=0) as cache:
            await cache.set("k", "old")
            clock.advance(11)
            gate = Gate()
            gate.error = OSError("db gone")
            gate.release.set()
            assert await cache.get_or_load("k", gate) == "old"
            await cache.wait_background()
            assert cache.stats().load_errors == 1

    with caplog.at_level(logging.DEBUG, logger="cachewise"):
        asyncio.run(main())  # filterwarnings=error: an unretrieved exception would fail
    assert any("refresh" in r.getMessage() for r in caplog.records)


def test_one_memory_backend_serves_a_cache_and_an_async_cache() -> None:
    from cachewise import MemoryBackend

    backend = MemoryBackend()
    sync = Cache(backend)
    sync.set("shared", {"n": 1})

    async def main() -> Any:
        cache = AsyncCache(backend)
        value = await cache.get("shared")
        await cache.set("from-async", 2)
        await cache.aclose()
        return value

    assert asyncio.run(main()) == {"n": 1}
    assert sync.get("from-async") == 2
    sync.close()


def test_async_cached_requires_a_coroutine_function_and_the_reverse() -> None:
    async def main() -> None:
        async with AsyncCache() as cache:
            with pytest.raises(TypeError, match="Cache"):

                @cache.cached()
                def sync_fn() -> int:
                    return 1

    asyncio.run(main())
    with Cache() as cache:
        with pytest.raises(TypeError, match="AsyncCache"):

            @cache.cached()
            async def async_fn() -> int:
                return 1


def test_async_cached_method_binds_self_for_calls_and_invalidate() -> None:
    async def main() -> None:
        async with AsyncCache() as cache:

            class Repo:
                calls = 0

                @cache.cached("user:{uid}")
                async def user(self, uid: int) -> dict[str, int]:
                    Repo.calls += 1
                    return {"uid": uid}

            repo = Repo()
            assert await repo.user(1) == {"uid": 1}
            assert await repo.user(uid=1) == {"uid": 1}
            assert Repo.calls == 1
            assert await repo.user.invalidate(1) is True
            await repo.user(1)
            assert Repo.calls == 2

    asyncio.run(main())


def test_a_tag_invalidation_during_a_load_keeps_its_result_out() -> None:
    async def main() -> None:
        async with AsyncCache() as cache:
            old = Gate()
            first = asyncio.create_task(cache.get_or_load("k", old, tags=["t"]))
            await old.started.wait()
            await cache.invalidate_tags("t")

            async def fresh() -> str:
                return "new"

            assert await cache.get_or_load("k", fresh, tags=["t"]) == "new"
            old.release.set()
            assert await first == "v1"
            assert await cache.get("k") == "new"

    asyncio.run(main())
