"""Several front ends on one MemoryBackend coordinate through the store's leases.

Break 1 of issue 9: with two front ends on one ``MemoryBackend`` (two ``Cache``s,
or an ``AsyncCache`` loading while a sync ``Cache`` deletes, as a Django app pairs
them), a delete through one did not revoke the other's load in flight, and the
old value was written after the delete. The leases now live in the store.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest

from cachewise import MISSING, AsyncCache, Cache, MemoryBackend

JOIN = 10.0


class Gate:
    """A loader that reports it started, then waits to be let go."""

    def __init__(self, value: Any) -> None:
        self.value = value
        self.started = threading.Event()
        self.go = threading.Event()
        self.calls = 0

    def __call__(self) -> Any:
        self.calls += 1
        self.started.set()
        assert self.go.wait(JOIN)
        return self.value


def _in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    return thread, out


@pytest.mark.parametrize(
    "invalidate",
    [
        lambda cache: cache.delete("k"),
        lambda cache: cache.delete_many(["k"]),
        lambda cache: cache.set("k", "new"),
        lambda cache: cache.clear(),
    ],
    ids=["delete", "delete_many", "set", "clear"],
)
def test_an_invalidation_through_one_cache_revokes_a_load_in_flight_in_another(
    invalidate: Callable[[Cache], Any],
) -> None:
    store = MemoryBackend()
    loading, deleting = Cache(store), Cache(store)
    gate = Gate("old")
    thread, out = _in_thread(lambda: loading.get_or_load("k", gate))
    assert gate.started.wait(JOIN)
    invalidate(deleting)
    gate.go.set()
    thread.join(JOIN)
    assert out == ["old"]  # the caller that started first gets what it loaded
    # ... but it was not written over the invalidation:
    assert deleting.get("k") in (MISSING, "new")
    assert loading.get("k") in (MISSING, "new")
    assert loading.get_or_load("k", lambda: "fresh") in ("fresh", "new")


def test_an_async_load_is_revoked_by_a_sync_delete_on_the_same_store() -> None:
    store = MemoryBackend()
    sync_cache = Cache(store)

    async def main() -> None:
        async_cache = AsyncCache(store)
        started, go = asyncio.Event(), asyncio.Event()

        async def loader() -> str:
            started.set()
            await go.wait()
            return "old"

        task = asyncio.create_task(async_cache.get_or_load("k", loader))
        await started.wait()
        # A sync view deletes after its commit, from a worker thread.
        await asyncio.to_thread(sync_cache.delete, "k")
        go.set()
        assert await task == "old"
        assert await async_cache.get("k") is MISSING
        assert sync_cache.get("k") is MISSING
        await async_cache.aclose()

    asyncio.run(main())


def test_a_sync_load_is_revoked_by_an_async_delete_on_the_same_store() -> None:
    store = MemoryBackend()
    sync_cache = Cache(store)
    gate = Gate("old")
    thread, out = _in_thread(lambda: sync_cache.get_or_load("k", gate))
    assert gate.started.wait(JOIN)

    async def main() -> None:
        async with AsyncCache(store) as async_cache:
            await async_cache.delete("k")

    asyncio.run(main())
    gate.go.set()
    thread.join(JOIN)
    assert out == ["old"]
    assert sync_cache.get("k") is MISSING


def test_a_tag_invalidation_through_one_cache_keeps_the_other_loads_result_out() -> None:
    store = MemoryBackend()
    loading, writing = Cache(store), Cache(store)
    gate = Gate("old")
    thread, _ = _in_thread(lambda: loading.get_or_load("k", gate, tags=["t"]))
    assert gate.started.wait(JOIN)
    writing.invalidate_tags("t")
    gate.go.set()
    thread.join(JOIN)
    assert writing.get("k") is MISSING
    assert store.leases_held == 0


def test_two_caches_on_one_store_share_one_load() -> None:
    store = MemoryBackend()
    first, second = Cache(store), Cache(store)
    gate = Gate("v")
    leader, lead_out = _in_thread(lambda: first.get_or_load("k", gate))
    assert gate.started.wait(JOIN)
    other_calls: list[int] = []
    joiner, join_out = _in_thread(lambda: second.get_or_load("k", lambda: other_calls.append(1)))
    # The second cache waits on the store's lease rather than loading.
    joiner.join(0.05)
    assert joiner.is_alive()
    gate.go.set()
    leader.join(JOIN)
    joiner.join(JOIN)
    assert lead_out == join_out == ["v"]
    assert gate.calls == 1
    assert other_calls == []


def test_an_async_and_a_sync_cache_on_one_store_share_one_load() -> None:
    store = MemoryBackend()
    sync_cache = Cache(store)
    gate = Gate("v")
    leader, lead_out = _in_thread(lambda: sync_cache.get_or_load("k", gate))
    assert gate.started.wait(JOIN)
    calls: list[int] = []

    async def main() -> Any:
        async with AsyncCache(store) as async_cache:

            async def loader() -> str:
                calls.append(1)
                return "other"

            waiting = asyncio.create_task(async_cache.get_or_load("k", loader))
            await asyncio.sleep(0.05)
            assert not waiting.done()  # waiting on the lease, without blocking the loop
            gate.go.set()
            return await waiting

    assert asyncio.run(main()) == "v"
    leader.join(JOIN)
    assert lead_out == ["v"]
    assert calls == []


def test_a_waiter_on_another_caches_lease_gives_up_after_wait_timeout() -> None:
    store = MemoryBackend(wait_timeout=0.1)
    first, second = Cache(store), Cache(store)
    gate = Gate("slow")
    leader, _ = _in_thread(lambda: first.get_or_load("k", gate))
    assert gate.started.wait(JOIN)
    # Fail open: load on its own, without writing over the holder's lease.
    assert second.get_or_load("k", lambda: "own") == "own"
    gate.go.set()
    leader.join(JOIN)
    assert first.get("k") == "slow"  # the holder's write still lands


def test_a_failed_load_releases_the_lease_and_wakes_the_other_cache() -> None:
    store = MemoryBackend()
    first, second = Cache(store), Cache(store)
    started, go = threading.Event(), threading.Event()

    def failing() -> str:
        started.set()
        assert go.wait(JOIN)
        raise RuntimeError("source down")

    def lead() -> None:
        with pytest.raises(RuntimeError):
            first.get_or_load("k", failing)

    leader, _ = _in_thread(lead)
    assert started.wait(JOIN)
    joiner, out = _in_thread(lambda: second.get_or_load("k", lambda: "second"))
    go.set()
    leader.join(JOIN)
    joiner.join(JOIN)
    assert out == ["second"]
    assert store.leases_held == 0
