"""Deadlines and timings read the cache's monotonic clock (``_monotonic``), so a
fake clock drives them: here, the fast-failure rule (a failed invalidation that
came back sooner than any network wait could gets one immediate second try)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from cachewise import AsyncCache, Cache
from cachewise.backends import MemoryBackend
from cachewise.testing import FakeClock


class _Down(MemoryBackend):
    """Deletes fail; each failure takes ``delay`` seconds of ``clock``."""

    def __init__(self, clock: FakeClock, delay: float) -> None:
        super().__init__()
        self.clock = clock
        self.delay = delay
        self.deletes = 0

    def delete(self, key: str) -> bool:
        self.deletes += 1
        self.clock.advance(self.delay)
        raise ConnectionError("down")

    def delete_many(self, keys: Sequence[str]) -> int:  # (the settler's retries)
        raise ConnectionError("down")


@pytest.mark.parametrize(("delay", "tries"), [(0.0, 2), (1.0, 1)])
def test_a_sync_delete_is_tried_again_only_after_a_fast_failure(delay: float, tries: int) -> None:
    clock = FakeClock()
    backend = _Down(clock, delay)
    cache = Cache(backend)
    cache._monotonic = clock
    try:
        assert cache.delete("k") is False
        assert backend.deletes == tries
    finally:
        cache.close()


@pytest.mark.parametrize(("delay", "tries"), [(0.0, 2), (1.0, 1)])
def test_an_async_delete_is_tried_again_only_after_a_fast_failure(delay: float, tries: int) -> None:
    clock = FakeClock()
    backend = _Down(clock, delay)

    async def main() -> None:
        cache = AsyncCache(backend)
        cache._monotonic = clock
        try:
            assert await cache.delete("k") is False
            assert backend.deletes == tries
        finally:
            await cache.aclose()

    asyncio.run(main())
