"""The bounded in-memory backend: budgets, LRU order, weighing, thread safety."""

from __future__ import annotations

import gc
import random
import sys
import threading
import tracemalloc

import pytest

from cachewise import MISSING, Cache, Entry, MemoryBackend, WeigherError
from cachewise.backends import estimate_size
from cachewise.backends._weigh import ENTRY_OVERHEAD


def entry(value: object) -> Entry:
    return Entry(value, 1e18, 1e18, 1e18)


def test_entry_budget_evicts_least_recently_used_first() -> None:
    backend = MemoryBackend(max_entries=3)
    for key in "abc":
        backend.set(key, entry(key))
    assert backend.get("a") is not None  # a is now most recent
    backend.set("d", entry("d"))
    assert backend.get("b") is None  # b was least recently used
    assert [k for k in "acd" if backend.get(k) is not None] == ["a", "c", "d"]
    assert backend.evictions == 1
    assert len(backend) == 3


def test_overwriting_a_key_refreshes_its_recency() -> None:
    backend = MemoryBackend(max_entries=2)
    backend.set("a", entry(1))
    backend.set("b", entry(2))
    backend.set("a", entry(3))
    backend.set("c", entry(4))
    assert backend.get("b") is None
    assert backend.get("a").value == 3  # type: ignore[union-attr]


def test_byte_budget_is_enforced_with_a_custom_weigher() -> None:
    key_cost = ENTRY_OVERHEAD + sys.getsizeof("k0")
    backend = MemoryBackend(max_bytes=3 * (key_cost + 100), weigher=len)
    for i in range(3):
        backend.set(f"k{i}", entry("x" * 100))
    assert backend.size_bytes == 3 * (key_cost + 100)
    backend.set("k3", entry("x" * 100))
    assert len(backend) == 3
    assert backend.get("k0") is None
    backend.set("k4", entry("x" * 250))  # needs room of more than one victim
    assert backend.size_bytes <= backend.max_bytes
    assert backend.evictions == 3


def test_a_value_larger_than_the_budget_is_not_stored_and_drops_the_old_one() -> None:
    backend = MemoryBackend(max_bytes=2000, weigher=len)
    backend.set("k", entry("small"))
    backend.set("k", entry("x" * 5000))
    assert backend.get("k") is None
    assert backend.rejected == 1
    assert backend.size_bytes == 0


def test_a_weigher_returning_garbage_is_a_value_error() -> None:
    backend = MemoryBackend(weigher=lambda v: -1)
    with pytest.raises(ValueError, match="weigher"):
        backend.set("k", entry(1))


def test_a_failing_weigher_is_the_callers_error_and_nothing_is_written() -> None:
    def boom(value: object) -> int:
        raise RuntimeError("weigher bug")

    with Cache(MemoryBackend(weigher=boom)) as cache:
        with pytest.raises(WeigherError, match="weigher bug"):
            cache.get_or_load("k", lambda: 1)  # as an unserializable value would
        with pytest.raises(WeigherError):
            cache.set("k", 1)
        stats = cache.stats()
        assert (stats.backend_errors, stats.invalidations_pending) == (0, 0)
        assert cache.get("k") is MISSING


@pytest.mark.parametrize(
    ("option", "value"),
    [("max_entries", 0), ("max_entries", -5), ("max_bytes", 0), ("max_bytes", -1)],
)
def test_limits_must_be_positive(option: str, value: int) -> None:
    with pytest.raises(ValueError, match=option):
        MemoryBackend(**{option: value})  # type: ignore[arg-type]


def test_limits_must_be_ints() -> None:
    with pytest.raises(TypeError, match="max_bytes"):
        MemoryBackend(max_bytes=1.5)  # type: ignore[arg-type]


def test_clear_with_prefix_removes_only_matching_keys() -> None:
    backend = MemoryBackend()
    for key in ("a:1", "a:2", "b:1"):
        backend.set(key, entry(key))
    assert backend.clear("a:") == 2
    assert backend.get("b:1") is not None
    assert backend.clear() == 1
    assert backend.size_bytes == 0


def test_estimate_size_grows_with_content_and_samples_long_containers() -> None:
    assert estimate_size("x" * 1000) > estimate_size("x")
    # Distinct objects: one object referenced ten times is counted once.
    assert estimate_size([bytes([i]) * 100 for i in range(10)]) > 10 * 100
    nested = {"a": [{"b": "c" * 500}]}
    assert estimate_size(nested) > 500
    big = [str(i).rjust(100, "y") for i in range(10_000)]
    estimate = estimate_size(big)
    exact = sys.getsizeof(big) + sum(sys.getsizeof(s) for s in big)
    assert 0.9 * exact < estimate < 1.1 * exact

    class Obj:
        def __init__(self) -> None:
            self.payload = "z" * 2000

    assert estimate_size(Obj()) > 2000


def test_a_flood_of_distinct_keys_stays_inside_the_byte_budget() -> None:
    budget = 1024 * 1024
    backend = MemoryBackend(max_entries=10**9, max_bytes=budget)
    with Cache(backend) as cache:
        gc.collect()
        tracemalloc.start()
        try:
            base, _ = tracemalloc.get_traced_memory()
            for i in range(20_000):
                cache.get_or_load(f"flood:{i}", lambda: "v" * 200)
                if i % 2000 == 0:
                    assert backend.size_bytes <= budget
            gc.collect()
            current, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert backend.size_bytes <= budget
        assert backend.evictions > 15_000
        # What Python really holds for the cache stays within the budget: the
        # accounting over-estimates per entry rather than under-estimates.
        assert current - base < budget


def test_concurrent_writers_and_readers_keep_the_books_balanced() -> None:
    backend = MemoryBackend(max_entries=200, max_bytes=200_000)
    stop = threading.Event()
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            while not stop.is_set():
                key = f"k{rng.randrange(500)}"
                op = rng.random()
                if op < 0.5:
                    backend.get(key)
                elif op < 0.85:
                    backend.set(key, entry("x" * rng.randrange(2000)))
                elif op < 0.99:
                    backend.delete(key)
                else:
                    backend.clear("k1")
        except BaseException as exc:  # pragma: no cover - the assertion reports it
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    threading.Event().wait(0.5)  # real time is the thing under test: let them race
    stop.set()
    for t in threads:
        t.join(10)
    assert not errors
    assert len(backend) <= 200
    assert backend.size_bytes <= 200_000
    assert backend.size_bytes == sum(backend._weights.values())
    assert set(backend._weights) == set(backend._data)


def test_expired_entries_leave_lazily_when_found() -> None:
    from cachewise.testing import FakeClock

    clock = FakeClock()
    backend = MemoryBackend()
    with Cache(backend, clock=clock, ttl=1, jitter=0) as cache:
        cache.set("a", 1)
        cache.set("b", 2)
        clock.advance(1)
        assert len(backend) == 2  # nothing sweeps in the background...
        assert cache.get("a") is MISSING
        assert len(backend) == 1  # ...but an expired entry found is dropped
        assert backend.size_bytes == sum(backend._weights.values())


def test_discard_only_removes_the_same_entry() -> None:
    backend = MemoryBackend()
    old = entry(1)
    backend.set("k", old)
    backend.set("k", entry(2))
    assert backend.discard("k", old) is False
    assert backend.get("k").value == 2  # type: ignore[union-attr]


def test_evictions_are_counted_in_cache_stats() -> None:
    with Cache(MemoryBackend(max_entries=3)) as cache:
        for i in range(5):
            cache.set(f"k{i}", i)
        assert cache.stats().evictions == 2
        assert cache.get("k0") is MISSING
        assert cache.get("k4") == 4


def test_forgetting_old_tag_records_only_ever_adds_misses() -> None:
    backend = MemoryBackend(max_tags=2)
    with Cache(backend) as cache:
        cache.set("a", 1, tags=["a"])
        cache.invalidate_tags("x")
        cache.set("b", 2, tags=["b"])  # stamped after x's invalidation
        cache.invalidate_tags("y")
        cache.invalidate_tags("z")  # x is forgotten: the floor rises to x's sequence
        assert cache.get("a") is MISSING  # stamped before the floor: counted invalid
        assert cache.get("b") == 2  # stamped at or after it: still valid
        assert len(backend._tag_seq) == 2  # memory stays bounded
        cache.set("c", 3, tags=["x"])
        assert cache.get("c") == 3


def test_tags_on_a_backend_without_tags_are_a_type_error() -> None:
    class Plain:
        def __init__(self) -> None:
            self.inner = MemoryBackend()

        def __getattr__(self, name: str) -> object:
            if name in ("tag_stamp", "invalidate_tags", "get_tagged"):
                raise AttributeError(name)
            return getattr(self.inner, name)

        def get(self, key: str) -> object:
            return self.inner.get(key)

        def get_many(self, keys: object) -> object:
            return self.inner.get_many(keys)  # type: ignore[arg-type]

        def set(self, key: str, entry: Entry) -> None:
            self.inner.set(key, entry)

        def set_many(self, items: object) -> None:
            self.inner.set_many(items)  # type: ignore[arg-type]

        def delete(self, key: str) -> bool:
            return self.inner.delete(key)

        def delete_many(self, keys: object) -> int:
            return self.inner.delete_many(keys)  # type: ignore[arg-type]

        def clear(self, prefix: str = "") -> int:
            return self.inner.clear(prefix)

        def close(self) -> None:
            self.inner.close()

    with Cache(Plain()) as cache:  # type: ignore[arg-type]
        cache.set("k", 1)
        with pytest.raises(TypeError, match="tags"):
            cache.set("k", 1, tags=["t"])
        with pytest.raises(TypeError, match="tags"):
            cache.invalidate_tags("t")


def test_hits_through_get_or_load_mark_entries_recently_used() -> None:
    """The cache's hit path on a MemoryBackend keeps LRU order like ``get`` does."""

    with Cache(MemoryBackend(max_entries=2), ttl=60) as cache:
        cache.get_or_load("a", lambda: 1)
        cache.get_or_load("b", lambda: 2)
        assert cache.get_or_load("a", lambda: -1) == 1  # a hit: "a" is now the newest
        cache.get_or_load("c", lambda: 3)  # evicts the least recently used: "b"
        assert cache.get("a") == 1
        assert cache.get("b") is MISSING
        assert cache.get("c") == 3


def test_a_tagged_entry_invalidated_is_a_miss_on_the_hit_path() -> None:

    with Cache(MemoryBackend(), ttl=60) as cache:
        assert cache.get_or_load("k", lambda: "v1", tags=["t"]) == "v1"
        cache.invalidate_tags("t")
        assert cache.get_or_load("k", lambda: "v2") == "v2"  # untagged call, tagged entry
