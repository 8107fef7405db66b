"""Single-flight, delete-wins and background work for ``Cache``, with real threads.

Interleavings are forced with events and barriers; nothing here relies on a sleep
to order two threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from cachewise import MISSING, Cache
from cachewise.backends import MemoryBackend
from cachewise.testing import FakeClock

JOIN = 10.0  # generous upper bound for a thread join; never reached when correct


def run_threads(n: int, target: Callable[[int], Any]) -> list[Any]:
    """Run ``target(i)`` in n threads released together; results (or exceptions)."""
    barrier = threading.Barrier(n, timeout=JOIN)  # a thread that never starts: no hang
    results: list[Any] = [None] * n

    def body(i: int) -> None:
        barrier.wait()
        try:
            results[i] = target(i)
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN)
        assert not t.is_alive(), "a caller hung"
    return results


class BlockingLoader:
    """A loader whose calls block until released; records how many started."""

    def __init__(self) -> None:
        self.started = threading.Semaphore(0)
        self.release = threading.Event()
        self.calls = 0
        self.lock = threading.Lock()
        self.error: BaseException | None = None

    def __call__(self) -> str:
        with self.lock:
            self.calls += 1
            n = self.calls
        self.started.release()
        assert self.release.wait(JOIN)
        if self.error is not None:
            raise self.error
        return f"v{n}"


def wait_started(loader: BlockingLoader) -> None:
    assert loader.started.acquire(timeout=JOIN), "the loader never started"


def test_a_herd_of_200_threads_makes_one_load() -> None:
    with Cache() as cache:
        loader = BlockingLoader()
        gate = threading.Thread(target=lambda: (wait_started(loader), loader.release.set()))
        gate.start()
        results = run_threads(200, lambda i: cache.get_or_load("hot", loader))
        gate.join(JOIN)
        assert results == ["v1"] * 200
        assert loader.calls == 1
        stats = cache.stats()
        assert stats.loads == 1
        assert stats.coalesced + stats.hits == 199


def test_the_loader_exception_reaches_every_waiter_and_is_not_cached() -> None:
    with Cache() as cache:
        loader = BlockingLoader()
        loader.error = RuntimeError("boom")
        leader_errors: list[BaseException] = []

        def lead() -> None:
            try:
                cache.get_or_load("k", loader)
            except RuntimeError as exc:
                leader_errors.append(exc)

        leader = threading.Thread(target=lead)
        leader.start()
        wait_started(loader)
        # Join the flight in progress, then let it fail.
        joined = threading.Event()
        outcomes: list[Any] = []

        def waiter() -> None:
            joined.set()
            try:
                outcomes.append(cache.get_or_load("k", loader))
            except RuntimeError as exc:
                outcomes.append(exc)

        waiters = [threading.Thread(target=waiter) for _ in range(20)]
        for t in waiters:
            t.start()
        _wait_for(lambda: cache.stats().coalesced == 20)
        loader.release.set()
        for t in [leader, *waiters]:
            t.join(JOIN)
            assert not t.is_alive()
        assert len(outcomes) == 20
        assert len(leader_errors) == 1
        assert all(isinstance(o, RuntimeError) and str(o) == "boom" for o in outcomes)
        assert loader.calls == 1
        loader.error = None
        assert cache.get_or_load("k", loader) == "v2"  # the error was not cached


def test_a_delete_during_a_load_wins() -> None:
    with Cache() as cache:
        old = BlockingLoader()
        first: list[Any] = []
        t = threading.Thread(target=lambda: first.append(cache.get_or_load("k", old)))
        t.start()
        wait_started(old)  # the load read the old data and is still running
        assert cache.delete("k") is False
        # A caller arriving after the delete starts a fresh load, not the old one.
        assert cache.get_or_load("k", lambda: "new") == "new"
        old.release.set()
        t.join(JOIN)
        assert first == ["v1"]  # its own caller still gets what it loaded...
        assert cache.get("k") == "new"  # ...but it never overwrote the cache


def test_a_delete_during_a_load_keeps_the_old_result_out_of_the_cache() -> None:
    with Cache() as cache:
        old = BlockingLoader()
        t = threading.Thread(target=lambda: cache.get_or_load("k", old))
        t.start()
        wait_started(old)
        cache.delete("k")
        old.release.set()
        t.join(JOIN)
        assert cache.get("k") is MISSING


def test_a_set_during_a_load_is_not_overwritten() -> None:
    with Cache() as cache:
        old = BlockingLoader()
        t = threading.Thread(target=lambda: cache.get_or_load("k", old))
        t.start()
        wait_started(old)
        cache.set("k", "explicit")
        old.release.set()
        t.join(JOIN)
        assert cache.get("k") == "explicit"


def test_a_delete_waits_for_a_write_already_under_way() -> None:
    """The race the flight guard closes: the load passed its validity check and is
    writing when the delete arrives. The delete must land after the write."""
    writing = threading.Event()
    proceed = threading.Event()

    class SlowSetBackend:
        def __init__(self) -> None:
            from cachewise import MemoryBackend

            self.inner = MemoryBackend()

        def __getattr__(self, name: str) -> Any:
            # A lease-less backend: the flight guard is what orders the writes.
            if name in ("read_or_lease", "set_leased", "release", "wait", "wait_timeout"):
                raise AttributeError(name)
            return getattr(self.inner, name)

        def set(self, key: str, entry: Any) -> None:
            writing.set()
            assert proceed.wait(JOIN)
            self.inner.set(key, entry)

    backend = SlowSetBackend()
    cache = Cache(backend)  # type: ignore[arg-type]
    t = threading.Thread(target=lambda: cache.get_or_load("k", lambda: "old"))
    t.start()
    assert writing.wait(JOIN)
    deleted = threading.Event()
    d = threading.Thread(target=lambda: (cache.delete("k"), deleted.set()))
    d.start()
    assert not deleted.wait(0.05)  # the delete is held until the write is done
    proceed.set()
    t.join(JOIN)
    d.join(JOIN)
    assert deleted.is_set()
    assert cache.get("k") is MISSING
    cache.close()


def test_an_interrupted_leader_does_not_strand_its_waiters() -> None:
    with Cache() as cache:
        release = threading.Event()
        started = threading.Event()

        def interrupted() -> str:
            started.set()
            assert release.wait(JOIN)
            raise KeyboardInterrupt

        leader_outcome: list[BaseException] = []

        def leader() -> None:
            try:
                cache.get_or_load("k", interrupted)
            except KeyboardInterrupt as exc:
                leader_outcome.append(exc)

        lt = threading.Thread(target=leader)
        lt.start()
        assert started.wait(JOIN)
        got: list[str] = []
        w = threading.Thread(target=lambda: got.append(cache.get_or_load("k", lambda: "retry")))
        w.start()
        _wait_for(lambda: cache.stats().coalesced == 1)
        release.set()
        lt.join(JOIN)
        w.join(JOIN)
        assert len(leader_outcome) == 1
        assert got == ["retry"]  # the waiter retried as the new leader


def test_background_refreshes_run_on_the_owned_pool_and_close_drains_them() -> None:
    clock = FakeClock()
    cache = Cache(clock=clock, ttl=10, stale_ttl=60, jitter=0)
    cache.set("k", "old")
    clock.advance(11)
    loader = BlockingLoader()
    thread_names: list[str] = []

    def refresh() -> str:
        thread_names.append(threading.current_thread().name)
        return loader()

    assert cache.get_or_load("k", refresh) == "old"  # served stale at once
    wait_started(loader)
    closed = threading.Event()
    closer = threading.Thread(target=lambda: (cache.close(), closed.set()))
    closer.start()
    assert not closed.wait(0.05)  # close() waits for the refresh...
    loader.release.set()
    closer.join(JOIN)
    assert closed.is_set()  # ...and returns once it is done
    assert thread_names[0].startswith("cachewise-refresh")
    assert loader.calls == 1


def test_pending_refreshes_are_bounded() -> None:
    clock = FakeClock()
    cache = Cache(
        clock=clock, ttl=10, stale_ttl=60, jitter=0, max_pending_refreshes=2, refresh_workers=1
    )
    for i in range(5):
        cache.set(f"k{i}", i)
    clock.advance(11)
    loader = BlockingLoader()
    for i in range(5):
        assert cache.get_or_load(f"k{i}", loader) == i
    assert cache.stats().refreshes_dropped == 3
    loader.release.set()
    assert cache.wait_background(timeout=JOIN)
    assert loader.calls == 2
    cache.close()


def test_a_sync_loader_returning_a_coroutine_is_a_type_error() -> None:
    async def coro() -> int:
        return 1

    with Cache() as cache:
        with pytest.raises(TypeError, match="AsyncCache"):
            cache.get_or_load("k", coro)  # type: ignore[arg-type]
        assert cache.get("k") is MISSING


def test_a_closed_cache_refuses_loads_and_close_is_idempotent() -> None:
    from cachewise import CacheClosedError

    cache = Cache()
    cache.close()
    cache.close()
    with pytest.raises(CacheClosedError):
        cache.get_or_load("k", lambda: 1)
    with pytest.raises(CacheClosedError):
        cache.set("k", 1)


def test_counters_are_exact_under_thread_contention() -> None:
    with Cache() as cache:
        cache.set("k", 1)
        run_threads(8, lambda i: [cache.get_or_load("k", lambda: 2) for _ in range(5000)])
        assert cache.stats().hits == 40_000


def _wait_for(predicate: Callable[[], bool], timeout: float = JOIN) -> None:
    """Poll a condition that another thread will make true (no fixed sleeps)."""
    done = threading.Event()
    deadline = time.monotonic() + timeout  # wall time: a loaded machine oversleeps
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition never became true")
        done.wait(0.001)


def test_a_tag_invalidation_during_a_load_keeps_its_result_out() -> None:
    """The load read old data before the invalidation: its entry must not be
    served to anyone reading after the invalidation, and late callers must not
    join it."""
    with Cache() as cache:
        old = BlockingLoader()
        first: list[Any] = []
        t = threading.Thread(target=lambda: first.append(cache.get_or_load("k", old, tags=["t"])))
        t.start()
        wait_started(old)
        cache.invalidate_tags("t")
        assert cache.get_or_load("k", lambda: "new", tags=["t"]) == "new"  # did not join
        old.release.set()
        t.join(JOIN)
        assert first == ["v1"]
        assert cache.get("k") == "new"


def test_an_entry_stamped_before_an_invalidation_is_invalid_even_if_written_after() -> None:
    """Race without a flight: set() takes its stamp, then the invalidation lands,
    then the write: the entry is born invalid."""
    from cachewise import MemoryBackend

    backend = MemoryBackend()
    with Cache(backend) as cache:
        stamp = backend.tag_stamp(["t"])
        cache.invalidate_tags("t")
        from cachewise import Entry

        backend.set("k", Entry("old", 1e18, 1e18, 1e18, tags=("t",), stamp=stamp))
        assert cache.get("k") is MISSING


def test_a_hit_that_read_the_old_entry_does_not_refresh_again_after_a_refresh_landed() -> None:
    """A hit reads a stale entry and is preempted; meanwhile another hit's refresh
    loads and writes the new value. The first hit then asks for a refresh of an
    entry that is no longer there: it must not load a second time."""
    paused, resume = threading.Event(), threading.Event()
    slow_reader: list[threading.Thread] = []

    class PausingBackend(MemoryBackend):
        def get(self, key: str) -> Any:
            entry = super().get(key)
            if slow_reader and threading.current_thread() is slow_reader[0]:
                paused.set()  # the old entry is in hand; hold here
                assert resume.wait(JOIN)
            return entry

    clock = FakeClock()
    calls = 0

    def loader() -> str:
        nonlocal calls
        calls += 1
        return f"v{calls}"

    cache = Cache(PausingBackend(), ttl=10, jitter=0, stale_ttl=100, clock=clock)
    try:
        assert cache.get_or_load("k", loader) == "v1"
        clock.advance(20)  # expired, inside the stale window: every hit refreshes
        got: list[Any] = []
        slow_reader.append(
            threading.Thread(target=lambda: got.append(cache.get_or_load("k", loader)))
        )
        slow_reader[0].start()
        assert paused.wait(JOIN)
        assert cache.get_or_load("k", loader) == "v1"  # stale, and one refresh
        assert cache.wait_background(JOIN)
        assert calls == 2
        assert cache.get("k") == "v2"
        resume.set()
        slow_reader[0].join(JOIN)
        assert got == ["v1"]  # what it read, served stale
        assert cache.wait_background(JOIN)
        assert calls == 2, "the late hit refreshed an entry already refreshed"
        assert cache.get("k") == "v2"
    finally:
        resume.set()
        cache.close()
