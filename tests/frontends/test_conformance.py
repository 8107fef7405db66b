"""The conformance suite: the same behaviour for every backend and both flavours.

Every test here runs once per (flavour, backend) through the ``make_cache`` facade.
Time is a ``FakeClock``; randomness is a seeded ``random.Random``.
"""

from __future__ import annotations

from typing import Any

import pytest

from cachewise import MISSING, CacheStats
from cachewise.testing import FakeClock
from tests.conftest import Facade


class Counter:
    """A loader that counts its calls and returns a fresh value each time."""

    def __init__(self, value: Any = "v", *, advance: tuple[FakeClock, float] | None = None):
        self.calls = 0
        self.value = value
        self.advance = advance
        self.fail: BaseException | None = None

    def __call__(self) -> Any:
        self.calls += 1
        if self.advance is not None:
            clock, seconds = self.advance
            clock.advance(seconds)  # a load that takes `seconds` on the cache's clock
        if self.fail is not None:
            raise self.fail
        return self.value if self.value is None else f"{self.value}{self.calls}"


# -- basics --------------------------------------------------------------------


def test_miss_returns_missing_or_the_given_default(make_cache: Any) -> None:
    cache: Facade = make_cache()
    assert cache.get("nope") is MISSING
    assert cache.get("nope", 42) == 42
    assert cache.stats().misses == 2


def test_set_then_get_and_none_is_an_ordinary_value(make_cache: Any) -> None:
    cache = make_cache()
    cache.set("a", {"x": [1, 2]})
    cache.set("n", None)
    assert cache.get("a") == {"x": [1, 2]}
    assert cache.get("n") is None
    assert cache.get("n", "default") is None
    assert cache.stats().hits == 3


def test_get_or_load_calls_the_loader_once_then_hits(make_cache: Any) -> None:
    cache = make_cache()
    loader = Counter()
    assert cache.get_or_load("k", loader) == "v1"
    assert cache.get_or_load("k", loader) == "v1"
    assert cache.get("k") == "v1"
    assert loader.calls == 1
    stats = cache.stats()
    assert (stats.loads, stats.misses, stats.hits) == (1, 1, 2)


def test_delete_removes_the_entry_and_says_whether_it_was_there(make_cache: Any) -> None:
    cache = make_cache()
    cache.set("k", 1)
    assert cache.delete("k") is True
    assert cache.delete("k") is False
    assert cache.get("k") is MISSING


def test_many_key_forms(make_cache: Any) -> None:
    cache = make_cache()
    cache.set_many({"a": 1, "b": 2, "c": None})
    assert cache.get_many(["a", "b", "c", "d"]) == {"a": 1, "b": 2, "c": None}
    assert cache.delete_many(["a", "b", "x"]) == 2
    assert cache.delete_many([]) == 0
    assert cache.get_many(["a", "b", "c"]) == {"c": None}


def test_namespaces_isolate_keys_on_a_shared_backend(make_cache: Any) -> None:
    one = make_cache(namespace="one")
    two = make_cache(namespace="two", share_backend_of=one)
    one.set("k", "from one")
    two.set("k", "from two")
    assert one.get("k") == "from one"
    assert two.get("k") == "from two"
    assert one.clear() == 1
    assert one.get("k") is MISSING
    assert two.get("k") == "from two"


def test_loader_exceptions_propagate_and_are_not_cached(make_cache: Any) -> None:
    cache = make_cache()
    loader = Counter()
    loader.fail = LookupError("db down")
    with pytest.raises(LookupError, match="db down"):
        cache.get_or_load("k", loader)
    loader.fail = None
    assert cache.get_or_load("k", loader) == "v2"
    stats = cache.stats()
    assert (stats.loads, stats.load_errors) == (2, 1)


# -- TTL and jitter ------------------------------------------------------------


def test_entry_expires_exactly_at_its_ttl_without_jitter(make_cache: Any, clock: FakeClock) -> None:
    cache = make_cache(ttl=10)
    cache.set("k", 1)
    clock.advance(9.999)
    assert cache.get("k") == 1
    clock.advance(0.001)
    assert cache.get("k") is MISSING


def test_per_call_ttl_overrides_the_default(make_cache: Any, clock: FakeClock) -> None:
    cache = make_cache(ttl=100)
    cache.set("short", 1, ttl=1)
    cache.get_or_load("loaded", Counter(), ttl=2)
    clock.advance(1)
    assert cache.get("short") is MISSING
    assert cache.get("loaded") == "v1"
    clock.advance(1)
    assert cache.get("loaded") is MISSING


def test_ttl_zero_stores_nothing(make_cache: Any) -> None:
    cache = make_cache()
    cache.set("k", 1, ttl=0)
    assert cache.get("k") is MISSING
    loader = Counter()
    cache.get_or_load("j", loader, ttl=0)
    cache.get_or_load("j", loader, ttl=0)
    assert loader.calls == 2


def test_jitter_spreads_expiry_uniformly_over_the_window(make_cache: Any, clock: FakeClock) -> None:
    ttl, jitter, n = 100.0, 0.2, 400
    cache = make_cache(ttl=ttl, jitter=jitter)
    keys = [f"k{i}" for i in range(n)]
    cache.set_many(dict.fromkeys(keys, 1))

    def alive() -> int:
        return len(cache.get_many(keys))

    clock.advance(ttl * (1 - jitter) - 0.01)
    assert alive() == n  # nobody expires before ttl*(1-jitter)
    clock.advance(ttl * jitter)  # now at ttl - 0.01: about half are gone
    assert 0.35 * n < alive() < 0.65 * n
    clock.advance(ttl * jitter / 2)  # three quarters of the window
    assert 0.12 * n < alive() < 0.38 * n
    clock.advance(ttl * jitter / 2 + 0.011)  # past ttl*(1+jitter)
    assert alive() == 0


def test_jitter_zero_expires_keys_written_together_together(
    make_cache: Any, clock: FakeClock
) -> None:
    cache = make_cache(ttl=50, jitter=0)
    cache.set_many({f"k{i}": i for i in range(50)})
    clock.advance(49.99)
    assert len(cache.get_many([f"k{i}" for i in range(50)])) == 50
    clock.advance(0.01)
    assert cache.get_many([f"k{i}" for i in range(50)]) == {}


# -- negative caching ----------------------------------------------------------


def test_none_results_are_cached_for_negative_ttl(make_cache: Any, clock: FakeClock) -> None:
    cache = make_cache(ttl=300, negative_ttl=5)
    loader = Counter(value=None)
    assert cache.get_or_load("missing-user", loader) is None
    clock.advance(4.9)
    assert cache.get_or_load("missing-user", loader) is None
    assert loader.calls == 1
    assert cache.stats().negative_hits == 1
    clock.advance(0.1)
    assert cache.get_or_load("missing-user", loader) is None
    assert loader.calls == 2


def test_negative_ttl_is_capped_by_ttl(make_cache: Any, clock: FakeClock) -> None:
    cache = make_cache(ttl=2, negative_ttl=30)
    loader = Counter(value=None)
    cache.get_or_load("k", loader)
    clock.advance(2)
    cache.get_or_load("k", loader)
    assert loader.calls == 2


def test_negative_ttl_zero_turns_negative_caching_off(make_cache: Any) -> None:
    cache = make_cache(negative_ttl=0)
    loader = Counter(value=None)
    for _ in range(3):
        assert cache.get_or_load("k", loader) is None
    assert loader.calls == 3
    assert cache.stats().negative_hits == 0


def test_custom_is_negative(make_cache: Any, clock: FakeClock) -> None:
    cache = make_cache(ttl=100, negative_ttl=1, is_negative=lambda r: r == [])
    cache.get_or_load("empty", list)
    cache.get_or_load("none", lambda: None)
    clock.advance(1)
    assert cache.get("empty") is MISSING  # negative: short TTL
    assert cache.get("none") is None  # None is an ordinary value here


# -- stale-while-revalidate and stale-if-error --------------------------------


def test_stale_value_is_served_at_once_and_refreshed_once(
    make_cache: Any, clock: FakeClock
) -> None:
    cache = make_cache(ttl=10, stale_ttl=20)
    loader = Counter()
    assert cache.get_or_load("k", loader) == "v1"
    clock.advance(15)  # past the TTL, inside the grace window
    assert cache.get_or_load("k", loader) == "v1"
    cache.wait_background()
    assert loader.calls == 2
    assert cache.get_or_load("k", loader) == "v2"
    stats = cache.stats()
    assert stats.stale_served == 1
    assert stats.loads == 2


def test_plain_get_never_returns_a_stale_value(make_cache: Any, clock: FakeClock) -> None:
    cache = make_cache(ttl=10, stale_ttl=20)
    cache.set("k", 1)
    clock.advance(10)
    assert cache.get("k") is MISSING


def test_past_the_grace_window_readers_wait_for_the_load(make_cache: Any, clock: FakeClock) -> None:
    cache = make_cache(ttl=10, stale_ttl=5)
    loader = Counter()
    cache.get_or_load("k", loader)
    clock.advance(15)
    assert cache.get_or_load("k", loader) == "v2"
    assert cache.stats().stale_served == 0


def test_stale_if_error_serves_the_stale_value_when_the_load_fails(
    make_cache: Any, clock: FakeClock
) -> None:
    cache = make_cache(ttl=10, stale_ttl=20, serve_stale=False)
    loader = Counter()
    cache.get_or_load("k", loader)
    clock.advance(15)
    loader.fail = ConnectionError("db down")
    assert cache.get_or_load("k", loader) == "v1"
    stats = cache.stats()
    assert (stats.stale_served, stats.load_errors) == (1, 1)
    clock.advance(20)  # past the grace window: the error propagates
    with pytest.raises(ConnectionError):
        cache.get_or_load("k", loader)


def test_serve_stale_false_waits_for_the_refresh(make_cache: Any, clock: FakeClock) -> None:
    cache = make_cache(ttl=10, stale_ttl=20, serve_stale=False)
    loader = Counter()
    cache.get_or_load("k", loader)
    clock.advance(15)
    assert cache.get_or_load("k", loader) == "v2"


def test_failed_background_refresh_keeps_serving_stale(make_cache: Any, clock: FakeClock) -> None:
    cache = make_cache(ttl=10, stale_ttl=20)
    loader = Counter()
    cache.get_or_load("k", loader)
    clock.advance(12)
    loader.fail = TimeoutError("slow db")
    assert cache.get_or_load("k", loader) == "v1"
    cache.wait_background()
    assert cache.get_or_load("k", loader) == "v1"
    cache.wait_background()
    stats = cache.stats()
    assert stats.stale_served == 2
    assert stats.load_errors == 2
    clock.advance(20)
    with pytest.raises(TimeoutError):
        cache.get_or_load("k", loader)


def test_without_a_grace_window_a_failed_load_raises(make_cache: Any, clock: FakeClock) -> None:
    cache = make_cache(ttl=10, stale_ttl=0, serve_stale=False)
    loader = Counter()
    cache.get_or_load("k", loader)
    clock.advance(10)
    loader.fail = ConnectionError("down")
    with pytest.raises(ConnectionError):
        cache.get_or_load("k", loader)


# -- probabilistic early refresh (XFetch) --------------------------------------


def test_load_duration_is_measured_on_the_injected_clock(make_cache: Any, clock: FakeClock) -> None:
    cache = make_cache(ttl=100)
    cache.get_or_load("k", Counter(advance=(clock, 2.5)))
    entry = cache.raw_entry("k")
    assert entry.delta == pytest.approx(2.5)


def test_far_from_expiry_hits_never_refresh_early(make_cache: Any, clock: FakeClock) -> None:
    cache = make_cache(ttl=100, early_refresh=1.0)
    loader = Counter(advance=(clock, 1.0))
    cache.get_or_load("k", loader)
    clock.advance(60)  # 39 s before expiry = 39 load times: e^-39 chance per hit
    for _ in range(1000):
        cache.get_or_load("k", loader)
    cache.wait_background()
    assert loader.calls == 1
    assert cache.stats().early_refreshes == 0


def test_hits_near_expiry_refresh_early_in_the_background(
    make_cache: Any, clock: FakeClock
) -> None:
    cache = make_cache(ttl=100, early_refresh=1.0)
    loader = Counter(advance=(clock, 1.0))
    cache.get_or_load("k", loader)
    clock.advance(98.5)  # 0.5 s before expiry, Δ = 1 s: each hit refreshes w.p. e^-0.5
    values = {cache.get_or_load("k", loader) for _ in range(20)}
    assert values <= {"v1", "v2"}  # hits never wait for the refresh
    cache.wait_background()
    stats = cache.stats()
    assert stats.early_refreshes == 1  # one refresh, however many hits picked it
    assert loader.calls == 2
    assert cache.get_or_load("k", loader) == "v2"


def test_early_refresh_zero_turns_xfetch_off(make_cache: Any, clock: FakeClock) -> None:
    cache = make_cache(ttl=100, early_refresh=0)
    loader = Counter(advance=(clock, 50.0))
    cache.get_or_load("k", loader)
    clock.advance(99.9)
    for _ in range(200):
        cache.get_or_load("k", loader)
    cache.wait_background()
    assert loader.calls == 1
    assert cache.stats().early_refreshes == 0


# -- decorator -----------------------------------------------------------------


def test_cached_fills_the_template_with_defaults_applied(make_cache: Any) -> None:
    cache = make_cache()
    calls: list[tuple[int, str]] = []

    @cache.cached("user:{user_id}:{fmt}")
    def profile(user_id: int, fmt: str = "json") -> dict[str, Any]:
        calls.append((user_id, fmt))
        return {"id": user_id, "fmt": fmt}

    assert cache.call(profile, 1) == {"id": 1, "fmt": "json"}
    assert cache.call(profile, user_id=1) == {"id": 1, "fmt": "json"}
    assert cache.call(profile, 1, "json") == {"id": 1, "fmt": "json"}
    assert calls == [(1, "json")]
    assert cache.get("user:1:json") == {"id": 1, "fmt": "json"}
    assert cache.call(profile.invalidate, 1) is True
    assert cache.get("user:1:json") is MISSING
    cache.call(profile, 1)
    assert len(calls) == 2


def test_cached_without_template_uses_a_stable_key(make_cache: Any) -> None:
    cache = make_cache()
    loads = 0

    @cache.cached()
    def add(a: int, b: int = 2) -> int:
        nonlocal loads
        loads += 1
        return a + b

    assert cache.call(add, 1) == 3
    assert cache.call(add, a=1) == 3
    assert cache.call(add, 1, 2) == 3
    assert cache.call(add, 1, 3) == 4
    assert loads == 2
    key = add.key_for(1)
    # The closure captures `loads` (0 at decoration): part of its name, for good.
    # (The async facade wraps it: then it is a captured helper, defaults and all.)
    assert key.endswith(("[loads=0](a=1,b=2)", "[loads=0,*0=2]](a=1,b=2)")), key
    assert ".add[" in key
    assert "test_conformance" in key
    assert cache.call(add.invalidate, a=1, b=2) is True


def test_cached_ttl_applies(make_cache: Any, clock: FakeClock) -> None:
    cache = make_cache(ttl=100)
    calls = []

    @cache.cached("x:{x}", ttl=1)
    def f(x: int) -> int:
        calls.append(x)
        return x

    cache.call(f, 1)
    clock.advance(1)
    cache.call(f, 1)
    assert calls == [1, 1]


def test_cached_rejects_a_template_field_the_function_lacks(make_cache: Any) -> None:
    cache = make_cache()
    with pytest.raises(ValueError, match="user_id"):

        @cache.cached("user:{user_id}")
        def f(uid: int) -> int:
            return uid


def test_cached_default_key_refuses_unstable_arguments(make_cache: Any) -> None:
    cache = make_cache()

    @cache.cached()
    def f(obj: object) -> int:
        return 1

    with pytest.raises(TypeError, match="stable cache key"):
        cache.call(f, object())


# -- stats ---------------------------------------------------------------------


def test_stats_is_a_snapshot_with_every_counter(make_cache: Any) -> None:
    cache = make_cache()
    cache.get_or_load("k", Counter())
    stats = cache.stats()
    assert isinstance(stats, CacheStats)
    for name in (
        "hits",
        "misses",
        "loads",
        "load_errors",
        "coalesced",
        "stale_served",
        "early_refreshes",
        "negative_hits",
        "evictions",
        "backend_errors",
    ):
        assert isinstance(getattr(stats, name), int), name
    cache.get("k")
    assert stats.hits == 0  # a snapshot does not move
    assert cache.stats().hits == 1
    assert cache.stats().hit_ratio == pytest.approx(0.5)


# -- bad input -----------------------------------------------------------------


@pytest.mark.parametrize("key", [1, None, b"bytes", ("t",)])
def test_non_str_keys_are_a_type_error(make_cache: Any, key: Any) -> None:
    cache = make_cache()
    with pytest.raises(TypeError, match="str"):
        cache.get(key)
    with pytest.raises(TypeError, match="str"):
        cache.set(key, 1)
    with pytest.raises(TypeError, match="str"):
        cache.delete(key)
    with pytest.raises(TypeError, match="str"):
        cache.get_or_load(key, Counter())


def test_str_subclass_keys_are_converted(make_cache: Any) -> None:
    class Key(str):
        pass

    cache = make_cache()
    cache.set(Key("k"), 1)
    assert cache.get("k") == 1


def test_a_loader_that_is_not_callable_is_a_type_error(make_cache: Any) -> None:
    cache = make_cache()
    with pytest.raises(TypeError, match="callable"):
        cache.cache.get_or_load("k", 42) if cache.flavour == "sync" else cache._run(
            cache.cache.get_or_load("k", 42)
        )


@pytest.mark.parametrize("ttl", [-1, float("nan"), float("inf")])
def test_a_bad_per_call_ttl_is_a_value_error(make_cache: Any, ttl: float) -> None:
    cache = make_cache()
    with pytest.raises(ValueError, match="ttl"):
        cache.set("k", 1, ttl=ttl)
    with pytest.raises(ValueError, match="ttl"):
        cache.get_or_load("k", Counter(), ttl=ttl)


def test_stats_snapshots_subtract(make_cache: Any) -> None:
    cache = make_cache()
    before = cache.stats()
    cache.get_or_load("k", Counter())
    cache.get("k")
    delta = cache.stats() - before
    assert (delta.hits, delta.misses, delta.loads) == (1, 1, 1)


# -- tags, versions, keys (the explicit-invalidation issue) ----------------------


def test_invalidate_tags_invalidates_every_entry_carrying_a_tag(make_cache: Any) -> None:
    cache = make_cache()
    cache.set("user:1:profile", "p1", tags=["user:1"])
    cache.set("user:1:posts", "posts1", tags=["user:1", "feed"])
    cache.set("user:2:profile", "p2", tags=["user:2"])
    cache.set("untagged", "u")
    cache.call(cache.cache.invalidate_tags, "user:1")
    assert cache.get("user:1:profile") is MISSING
    assert cache.get("user:1:posts") is MISSING
    assert cache.get("user:2:profile") == "p2"
    assert cache.get("untagged") == "u"
    cache.call(cache.cache.invalidate_tags, "feed", "nothing-carries-this")
    assert cache.get("user:2:profile") == "p2"


def test_get_or_load_with_tags_reloads_after_invalidation(make_cache: Any) -> None:
    cache = make_cache()
    loader = Counter()
    assert cache.get_or_load("k", loader, tags=["t"]) == "v1"
    assert cache.get_or_load("k", loader, tags=["t"]) == "v1"
    cache.call(cache.cache.invalidate_tags, "t")
    assert cache.get_or_load("k", loader, tags=["t"]) == "v2"
    assert cache.get_or_load("k", loader, tags=["t"]) == "v2"
    assert loader.calls == 2


def test_tag_invalidation_is_right_whatever_the_entries_ttls(
    make_cache: Any, clock: FakeClock
) -> None:
    """A peer keeps a tag as a set expiring with its newest member: once the
    short-lived members expire, invalidation misses the long-lived ones."""
    cache = make_cache(ttl=3600)
    cache.set("long", "L", ttl=3600, tags=["t"])
    for i in range(5):
        cache.set(f"short{i}", i, ttl=1, tags=["t"])
    clock.advance(10)  # the short ones are long gone
    assert cache.get("long") == "L"
    cache.call(cache.cache.invalidate_tags, "t")
    assert cache.get("long") is MISSING
    cache.set("long", "L2", ttl=3600, tags=["t"])  # written after: valid
    assert cache.get("long") == "L2"


def test_tags_are_namespaced(make_cache: Any) -> None:
    one = make_cache(namespace="one")
    two = make_cache(namespace="two", share_backend_of=one)
    one.set("k", 1, tags=["t"])
    two.set("k", 2, tags=["t"])
    one.call(one.cache.invalidate_tags, "t")
    assert one.get("k") is MISSING
    assert two.get("k") == 2


def test_cached_fills_tag_templates(make_cache: Any) -> None:
    cache = make_cache()
    calls: list[int] = []

    @cache.cached("user:{user_id}:profile", tags=["user:{user_id}", "profiles"])
    def profile(user_id: int) -> dict[str, int]:
        calls.append(user_id)
        return {"id": user_id}

    cache.call(profile, 1)
    cache.call(profile, 2)
    cache.call(cache.cache.invalidate_tags, "user:1")
    cache.call(profile, 1)
    cache.call(profile, 2)
    assert calls == [1, 2, 1]
    cache.call(cache.cache.invalidate_tags, "profiles")
    cache.call(profile, 2)
    assert calls == [1, 2, 1, 2]


def test_invalidates_decorator_invalidates_after_the_write_returns(make_cache: Any) -> None:
    cache = make_cache()
    cache.set("user:7:profile", "old", tags=["user:7"])
    cache.set("user:7:posts", "old posts", tags=["user:7"])
    cache.set("user:8:profile", "other")
    seen_during: list[Any] = []

    @cache.invalidates("user:{user_id}:profile", tags=["user:{user_id}"])
    def rename(user_id: int, name: str) -> str:
        if cache.flavour == "sync":  # (the async facade cannot read from inside)
            seen_during.append(cache.get(f"user:{user_id}:profile"))  # not yet invalidated
        return name

    assert cache.call(rename, 7, "Ada") == "Ada"
    assert seen_during == (["old"] if cache.flavour == "sync" else [])
    assert cache.get("user:7:profile") is MISSING
    assert cache.get("user:7:posts") is MISSING  # via the tag
    assert cache.get("user:8:profile") == "other"


def test_invalidates_also_when_the_write_fails(make_cache: Any) -> None:
    """A write that raises may have written (and committed) before it did: its
    keys and tags are invalidated too (a needless delete costs one miss, a missed
    one a stale value), and its exception propagates unchanged."""
    cache = make_cache()
    cache.set("user:7:profile", "old", tags=["user:7"])
    cache.set("user:7:posts", "old posts", tags=["user:7"])
    cache.set("user:8:profile", "other")

    @cache.invalidates("user:{user_id}:profile", tags=["user:{user_id}"])
    def failing(user_id: int) -> None:
        raise RuntimeError("written, then failed")

    with pytest.raises(RuntimeError, match="written, then failed"):
        cache.call(failing, 7)
    assert cache.get("user:7:profile") is MISSING
    assert cache.get("user:7:posts") is MISSING
    assert cache.get("user:8:profile") == "other"


def test_bumping_the_version_moves_every_key(make_cache: Any) -> None:
    v1 = make_cache(namespace="app", version=1)
    v2 = make_cache(namespace="app", version=2, share_backend_of=v1)
    v1.set("k", "old")
    assert v2.get("k") is MISSING
    v2.set("k", "new")
    assert v1.get("k") == "old"
    assert v2.get("k") == "new"


def test_long_keys_are_hashed_behind_a_readable_prefix(make_cache: Any) -> None:
    cache = make_cache()
    long_a = "report:" + "a" * 500
    long_b = "report:" + "a" * 499 + "b"
    cache.set(long_a, 1)
    cache.set(long_b, 2)
    assert cache.get(long_a) == 1
    assert cache.get(long_b) == 2
    loader = Counter()
    cache.get_or_load("é" * 300, loader)
    cache.get_or_load("é" * 300, loader)
    assert loader.calls == 1


@pytest.mark.parametrize("key", ["has space", "tab\there", "new\nline", "nul\x00", "nbsp\xa0"])
def test_keys_with_whitespace_or_control_characters_are_rejected(make_cache: Any, key: str) -> None:
    cache = make_cache()
    with pytest.raises(ValueError, match="whitespace or control"):
        cache.set(key, 1)
    with pytest.raises(ValueError, match="whitespace or control"):
        cache.get(key)
    with pytest.raises(ValueError, match="whitespace or control"):
        cache.get_or_load(key, Counter())
    with pytest.raises(ValueError, match="whitespace or control"):
        cache.delete(key)
