"""The circuit breaker (pure state machine and wrapper backends) and the degraded
modes, with an in-process flaky backend. Real-process faults: test_faults.py."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import pytest

from cachewise import MISSING, AsyncCache, Cache, Entry, MemoryBackend
from cachewise._core.breaker import Breaker, BreakerPolicy, State
from cachewise.backends._breaker import AsyncCircuitBreaker, CircuitBreaker, CircuitOpenError
from cachewise.serialization import SerializationError
from cachewise.testing import FakeClock
from tests.support.stores import Tagless

# -- the state machine ---------------------------------------------------------------


def test_opens_after_consecutive_failures_and_refuses_until_open_seconds_pass() -> None:
    breaker = Breaker(BreakerPolicy(failure_threshold=3, open_seconds=1.0))
    for _ in range(2):
        assert breaker.allow(0.0)
        assert breaker.failure(0.0) is None
    assert breaker.allow(0.0)
    assert breaker.failure(0.0) is State.OPEN
    assert not breaker.allow(0.5)
    assert breaker.allow(1.0)  # the half-open probe
    assert breaker.state is State.HALF_OPEN
    assert not breaker.allow(1.0)  # one probe at a time
    assert breaker.success(1.1) is State.CLOSED
    assert breaker.allow(1.1)
    assert breaker.opens == 1


def test_a_failed_probe_opens_again() -> None:
    breaker = Breaker(BreakerPolicy(failure_threshold=1, open_seconds=1.0))
    breaker.allow(0.0)
    breaker.failure(0.0)
    assert breaker.allow(1.0)
    assert breaker.failure(1.0) is State.OPEN
    assert not breaker.allow(1.5)
    assert breaker.allow(2.0)
    assert breaker.opens == 2


def test_opens_on_a_failure_ratio_within_the_window() -> None:
    policy = BreakerPolicy(failure_threshold=100, failure_ratio=0.5, min_calls=10, window=5.0)
    breaker = Breaker(policy)
    changes = []
    for i in range(12):  # alternate: never 100 in a row, but half of all calls fail
        breaker.allow(float(i) * 0.1)
        changes.append(breaker.failure(i * 0.1) if i % 2 else breaker.success(i * 0.1))
    # The first failure with at least min_calls in the window opens it: call 10 (i=9).
    assert changes.index(State.OPEN) == 9


def test_old_calls_leave_the_window() -> None:
    policy = BreakerPolicy(failure_threshold=100, failure_ratio=0.5, min_calls=4, window=1.0)
    breaker = Breaker(policy)
    for t in (0.0, 0.1, 0.2):
        breaker.failure(t)
    for t in (5.0, 5.1, 5.2):  # the old failures are out of the window by now
        breaker.success(t)
    assert breaker.failure(5.3) is None
    assert breaker.state is State.CLOSED


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("failure_threshold", 0),
        ("failure_ratio", 1.5),
        ("min_calls", 0),
        ("window", 0),
        ("open_seconds", -1),
    ],
)
def test_bad_breaker_policies_are_value_errors(option: str, value: float) -> None:
    with pytest.raises(ValueError, match=option):
        BreakerPolicy(**{option: value})  # type: ignore[arg-type]


# -- a backend that can go down -------------------------------------------------------


class Flaky:
    """A shared-style backend (it keeps what it had while "down")."""

    def __init__(self) -> None:
        self.inner = MemoryBackend()
        self.down = False
        self.calls = 0

    def _check(self) -> None:
        self.calls += 1
        if self.down:
            raise ConnectionError("backend down")

    def get(self, key: str) -> Entry | None:
        self._check()
        return self.inner.get(key)

    def get_many(self, keys: Sequence[str]) -> list[Entry | None]:
        self._check()
        return self.inner.get_many(keys)

    def set(self, key: str, entry: Entry) -> None:
        self._check()
        if isinstance(entry.value, set):
            raise SerializationError("cannot serialize a value of type set")
        self.inner.set(key, entry)

    def set_many(self, items: Sequence[tuple[str, Entry]]) -> None:
        self._check()
        self.inner.set_many(items)

    def delete(self, key: str) -> bool:
        self._check()
        return self.inner.delete(key)

    def delete_many(self, keys: Sequence[str]) -> int:
        self._check()
        return self.inner.delete_many(keys)

    def clear(self, prefix: str = "") -> int:
        self._check()
        return self.inner.clear(prefix)

    def tag_stamp(self, tags: Sequence[str]) -> Any:
        self._check()
        return self.inner.tag_stamp(tags)

    def invalidate_tags(self, tags: Sequence[str]) -> None:
        self._check()
        self.inner.invalidate_tags(tags)

    def get_tagged(self, key: str, tags: Sequence[str]) -> Entry | None:
        self._check()
        return self.inner.get_tagged(key, tags)

    def close(self) -> None:
        self.inner.close()


def test_the_breaker_opens_skips_the_backend_and_closes_when_it_is_back(caplog: Any) -> None:
    clock = FakeClock()
    flaky = Flaky()
    breaker = CircuitBreaker(
        flaky, BreakerPolicy(failure_threshold=3, open_seconds=1.0), clock=clock
    )
    loads = []
    with Cache(breaker) as cache, caplog.at_level(logging.WARNING, logger="cachewise"):
        cache.set("k", "cached")
        flaky.down = True
        for _ in range(10):
            assert cache.get_or_load("k", lambda: loads.append(1) or "from source") == "from source"
        stats = cache.stats()
        assert stats.breaker_state == "open"
        assert stats.breaker_opens == 1
        assert stats.backend_errors == 3  # the three that opened it
        assert stats.breaker_rejections >= 7  # the rest never reached the backend
        calls_while_open = flaky.calls
        cache.get_or_load("k", lambda: "from source")
        assert flaky.calls == calls_while_open  # no network wait: not even called
        flaky.down = False
        clock.advance(1.0)
        assert cache.get_or_load("k", lambda: "unused") == "cached"  # the probe succeeds
        assert cache.stats().breaker_state == "closed"
    messages = [r.getMessage() for r in caplog.records]
    assert any("opened" in m for m in messages)
    assert any("closed" in m for m in messages)


def test_serialization_errors_are_not_backend_failures() -> None:
    flaky = Flaky()
    breaker = CircuitBreaker(flaky, BreakerPolicy(failure_threshold=1))
    with Cache(breaker) as cache:
        for _ in range(3):
            with pytest.raises(SerializationError):
                cache.set("k", {1, 2})
        assert cache.stats().breaker_state == "closed"


def test_the_wrapper_keeps_the_backends_capabilities() -> None:
    from cachewise.backends import TagBackend

    breaker = CircuitBreaker(Flaky())
    assert isinstance(breaker, TagBackend)
    with Cache(breaker) as cache:
        cache.set("k", 1, tags=["t"])
        cache.invalidate_tags("t")
        assert cache.get("k") is MISSING


class _Bare(Tagless):
    """A sync backend with the required methods only (no tags, leases or stats),
    and a plain attribute of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.note = "plain attribute"


_CAPABILITY_NAMES = (
    "tag_stamp",
    "invalidate_tags",
    "get_tagged",
    "read_or_lease",
    "set_leased",
    "release",
    "wait",
    "wait_timeout",
    "wait_async",
    "discard",
    "evictions",
    "decode_errors",
    "lease_scope",
)


@pytest.mark.parametrize("make", [MemoryBackend, _Bare], ids=["memory", "bare"])
def test_a_breaker_has_exactly_the_capabilities_of_its_backend(make: Any) -> None:
    from cachewise.backends import (
        BackendStats,
        InProcessLeaseBackend,
        LeaseBackend,
        NonBlockingBackend,
        TagBackend,
    )

    backend = make()
    breaker = CircuitBreaker(backend)
    for name in _CAPABILITY_NAMES:
        assert hasattr(breaker, name) == hasattr(backend, name), name
    for protocol in (TagBackend, LeaseBackend, InProcessLeaseBackend, BackendStats):
        assert isinstance(breaker, protocol) == isinstance(backend, protocol), protocol
    # Non-blocking only if the backend is (the attack on issue 11 found every sync
    # breaker claiming the protocol).
    assert isinstance(breaker, NonBlockingBackend) == isinstance(backend, NonBlockingBackend)
    assert getattr(breaker, "nonblocking", False) == bool(getattr(backend, "nonblocking", False))
    assert isinstance(breaker, CircuitBreaker)
    assert type(breaker).__name__ == "CircuitBreaker"
    assert repr(breaker).startswith("CircuitBreaker(")


def test_a_breaker_on_a_bare_backend_reads_plain_attributes_through_and_caches() -> None:
    bare = _Bare()
    breaker = CircuitBreaker(bare)
    assert breaker.note == "plain attribute"
    with pytest.raises(AttributeError):
        breaker._private  # noqa: B018
    with pytest.raises(AttributeError):
        breaker.tag_stamp  # noqa: B018
    with Cache(breaker) as cache:
        assert cache.get_or_load("k", lambda: 1) == 1
        assert cache.get("k") == 1
        assert cache.stats().evictions == 0


def test_capability_calls_through_a_breaker_are_guarded_and_typed_ones_forward() -> None:
    clock = FakeClock()
    memory = MemoryBackend()
    breaker = CircuitBreaker(memory, BreakerPolicy(failure_threshold=1), clock=clock)
    reply = breaker.read_or_lease("k", "tok")
    assert reply.granted
    assert breaker.wait_timeout == memory.wait_timeout
    assert breaker.lease_scope is memory.lease_scope
    assert breaker.release("k", "tok")
    breaker._failed("get", TimeoutError("x"))  # opens it (threshold 1)
    with pytest.raises(CircuitOpenError):
        breaker.read_or_lease("k", "tok")
    with pytest.raises(CircuitOpenError):
        breaker.tag_stamp(["t"])
    breaker.invalidate_tags(["t"])  # an invalidation: sent even while open


def test_async_breaker_capabilities_follow_the_async_backend() -> None:
    from cachewise.backends import AsyncLeaseBackend, AsyncTagBackend

    class AsyncBare:
        async def get(self, key: str) -> Entry | None:
            return None

        async def get_many(self, keys: Sequence[str]) -> list[Entry | None]:
            return [None for _ in keys]

        async def set(self, key: str, entry: Entry) -> None:
            pass

        async def set_many(self, items: Sequence[tuple[str, Entry]]) -> None:
            pass

        async def delete(self, key: str) -> bool:
            return False

        async def delete_many(self, keys: Sequence[str]) -> int:
            return 0

        async def clear(self, prefix: str = "") -> int:
            return 0

        async def aclose(self) -> None:
            pass

    class AsyncTagged(AsyncBare):
        async def tag_stamp(self, tags: Sequence[str]) -> Any:
            return ("v",)

        async def invalidate_tags(self, tags: Sequence[str]) -> None:
            pass

        async def get_tagged(self, key: str, tags: Sequence[str]) -> Entry | None:
            return None

    bare = AsyncCircuitBreaker(AsyncBare())
    tagged = AsyncCircuitBreaker(AsyncTagged())
    assert not isinstance(bare, AsyncTagBackend)
    assert isinstance(tagged, AsyncTagBackend)
    assert not isinstance(tagged, AsyncLeaseBackend)
    assert isinstance(bare, AsyncCircuitBreaker)
    assert isinstance(tagged, AsyncCircuitBreaker)
    assert type(bare) is AsyncCircuitBreaker  # no capability: the class itself
    assert asyncio.run(tagged.tag_stamp(["t"])) == ("v",)


def test_a_write_error_returns_the_value_uncached() -> None:
    flaky = Flaky()
    with Cache(flaky) as cache:  # type: ignore[arg-type]
        original_set = flaky.set

        def failing_set(key: str, entry: Entry) -> None:
            raise TimeoutError("write timed out")

        flaky.set = failing_set  # type: ignore[method-assign]
        assert cache.get_or_load("k", lambda: "v") == "v"
        assert cache.stats().backend_errors == 1
        flaky.set = original_set  # type: ignore[method-assign]
        assert flaky.inner.get("k") is None


def test_a_read_error_goes_straight_to_the_loader_without_more_backend_calls() -> None:
    flaky = Flaky()
    with Cache(flaky) as cache:  # type: ignore[arg-type]
        flaky.down = True
        before = flaky.calls
        assert cache.get_or_load("k", lambda: "v", tags=["t"]) == "v"
        assert flaky.calls - before == 1  # the failed read only: no stamp, no write


# -- invalidations that do not reach the backend --------------------------------------


def test_a_failed_delete_is_held_read_around_and_applied_later() -> None:
    flaky = Flaky()
    source = {"k": "v1"}
    with Cache(flaky) as cache:  # type: ignore[arg-type]
        assert cache.get_or_load("k", lambda: source["k"]) == "v1"
        source["k"] = "v2"  # the write committed...
        real_delete = flaky.delete

        def failing_delete(key: str) -> bool:
            raise ConnectionError("partition")

        flaky.delete = failing_delete  # type: ignore[method-assign]
        real_delete_many = flaky.delete_many
        flaky.delete_many = lambda keys: failing_delete("")  # type: ignore[method-assign,assignment,misc]
        assert cache.delete("k") is False  # ...but the invalidation did not land
        assert flaky.inner.get("k") is not None  # the old value is still in the backend
        assert cache.stats().invalidations_pending == 1
        # Reads of that key do not trust the backend: they load from the source.
        assert cache.get_or_load("k", lambda: source["k"]) == "v2"
        assert cache.get("k") is MISSING
        flaky.delete = real_delete  # type: ignore[method-assign]
        flaky.delete_many = real_delete_many  # type: ignore[method-assign]
        import time

        time.sleep(0.25)  # real time: the retry is rate-limited (0.2 s)
        assert cache.get_or_load("k", lambda: source["k"]) == "v2"
        assert cache.stats().invalidations_pending == 0
        assert cache.get("k") == "v2"  # cached again, from the source


def test_a_failed_tag_invalidation_is_held_too() -> None:
    flaky = Flaky()
    with Cache(flaky) as cache:  # type: ignore[arg-type]
        cache.set("a", "old", tags=["t"])
        real = flaky.invalidate_tags

        def failing(tags: Sequence[str]) -> None:
            raise ConnectionError("partition")

        flaky.invalidate_tags = failing  # type: ignore[method-assign]
        cache.invalidate_tags("t")
        assert cache.get("a") is MISSING  # held: the tagged entry is not trusted
        flaky.invalidate_tags = real  # type: ignore[method-assign]
        import time

        time.sleep(0.25)
        cache.set("b", 1)  # writes retry what is held
        assert cache.stats().invalidations_pending == 0
        assert cache.get("a") is MISSING  # invalidated for real now


def test_async_breaker_and_held_invalidations() -> None:
    class AsyncFlaky:
        def __init__(self) -> None:
            self.sync = Flaky()

        def __getattr__(self, name: str) -> Any:
            method = getattr(self.sync, name)

            async def call(*args: Any) -> Any:
                return method(*args)

            return call

        async def get(self, key: str) -> Entry | None:
            return self.sync.get(key)

        async def aclose(self) -> None:
            self.sync.close()

    async def main() -> None:
        clock = FakeClock()
        flaky = AsyncFlaky()
        breaker = AsyncCircuitBreaker(flaky, BreakerPolicy(failure_threshold=2), clock=clock)
        cache = AsyncCache(breaker)

        async def source() -> str:
            return "fresh"

        await cache.set("k", "old")
        flaky.sync.down = True
        assert await cache.get_or_load("k", source) == "fresh"
        assert await cache.delete("k") is False
        assert cache.stats().breaker_state == "open"
        assert cache.stats().invalidations_pending == 1
        flaky.sync.down = False
        clock.advance(1.0)
        import time

        time.sleep(0.25)
        assert await cache.get_or_load("k", source) == "fresh"
        assert cache.stats().invalidations_pending == 0
        assert cache.stats().breaker_state == "closed"
        await cache.aclose()
        with pytest.raises(CircuitOpenError):
            raise CircuitOpenError("type check")

    asyncio.run(main())


def test_caches_sharing_a_server_read_around_each_others_held_invalidations() -> None:
    """A sync cache and an async cache of one process on one server and namespace
    (``from_url`` shares them by URL): a delete held by one is a miss for both."""
    import time

    flaky = Flaky()
    source = {"k": "v1"}

    async def load() -> str:
        return source["k"]

    writer = Cache(flaky)  # type: ignore[arg-type]
    reader = AsyncCache(flaky.inner)  # the same entries, on a route that works
    writer._share_held("redis:single://test:6379/0")
    reader._share_held("redis:single://test:6379/0")
    try:
        assert writer.get_or_load("k", lambda: source["k"]) == "v1"
        source["k"] = "v2"
        flaky.down = True
        writer.delete("k")  # held: the old value stays in the backend
        assert flaky.inner.get("k") is not None
        assert reader.stats().invalidations_pending == 1
        assert asyncio.run(reader.get_or_load("k", load)) == "v2"  # not the old "v1"
        flaky.down = False
        deadline = time.monotonic() + 5
        while writer.stats().invalidations_pending:  # the writer's settler applies it
            assert time.monotonic() < deadline, "the held delete was never applied"
            time.sleep(0.01)  # real time: the settler's retry period
        assert reader.stats().invalidations_pending == 0
        assert flaky.inner.get("k") is None
        assert asyncio.run(reader.get_or_load("k", load)) == "v2"
    finally:
        writer.close()
        asyncio.run(reader.aclose())


def test_caches_on_different_namespaces_or_servers_do_not_share_held_invalidations() -> None:
    flaky = Flaky()
    writer = Cache(flaky, namespace="a")  # type: ignore[arg-type]
    other_namespace = Cache(flaky.inner, namespace="b")
    other_server = Cache(flaky.inner, namespace="a")
    writer._share_held("redis:single://test:6379/0")
    other_namespace._share_held("redis:single://test:6379/0")
    other_server._share_held("redis:single://elsewhere:6379/0")
    try:
        flaky.down = True
        writer.delete("k")
        assert writer.stats().invalidations_pending == 1
        assert other_namespace.stats().invalidations_pending == 0
        assert other_server.stats().invalidations_pending == 0
    finally:
        flaky.down = False
        for cache in (writer, other_namespace, other_server):
            cache.close()


class _Timeouts:
    """An async backend whose every get times out; ``busy`` first blocks the event
    loop (as a loop too busy to run its callbacks on time would)."""

    def __init__(self, busy: float) -> None:
        self.busy = busy

    async def get(self, key: str) -> Entry | None:
        import time

        if self.busy:
            time.sleep(self.busy)  # the loop is stuck, not the server
            await asyncio.sleep(0)  # (the loop gets round to its overdue callbacks)
        else:
            await asyncio.sleep(0.001)
        raise TimeoutError("Timeout reading from socket")

    async def aclose(self) -> None:
        pass


def test_timeouts_while_the_event_loop_lags_do_not_open_the_breaker() -> None:
    async def main() -> tuple[str, int, int]:
        breaker = AsyncCircuitBreaker(_Timeouts(busy=0.1), BreakerPolicy(failure_threshold=3))
        for _ in range(8):
            with pytest.raises(TimeoutError):
                await breaker.get("k")
        state, lag = breaker.breaker_state, breaker.loop_lag_timeouts
        await breaker.aclose()
        return state, lag, breaker.breaker_opens

    state, lag_timeouts, opens = asyncio.run(main())
    assert (state, opens) == ("closed", 0)
    assert lag_timeouts == 8


def test_timeouts_on_a_punctual_event_loop_open_the_breaker() -> None:
    async def main() -> tuple[str, int]:
        breaker = AsyncCircuitBreaker(_Timeouts(busy=0.0), BreakerPolicy(failure_threshold=3))
        for _ in range(3):
            with pytest.raises(TimeoutError):
                await breaker.get("k")
        state, lag = breaker.breaker_state, breaker.loop_lag_timeouts
        await breaker.aclose()
        return state, lag

    assert asyncio.run(main()) == ("open", 0)


def test_backpressure_errors_do_not_count_against_the_backend() -> None:
    from cachewise._errors import BackpressureError

    class Busy:
        async def get(self, key: str) -> Entry | None:
            raise BackpressureError("queued too long")

        async def aclose(self) -> None:
            pass

    async def main() -> str:
        breaker = AsyncCircuitBreaker(Busy(), BreakerPolicy(failure_threshold=2))
        for _ in range(5):
            with pytest.raises(BackpressureError):
                await breaker.get("k")
        await breaker.aclose()
        return breaker.breaker_state

    assert asyncio.run(main()) == "closed"


def test_the_ratio_counts_every_call_in_the_window() -> None:
    policy = BreakerPolicy(failure_threshold=10**6, failure_ratio=0.5, min_calls=20, window=10.0)
    breaker = Breaker(policy)
    for i in range(10_000):  # a second of successes
        assert breaker.success(i * 1e-4) is None
    opened_at = None
    for j in range(10_001):
        if breaker.failure(1.0 + j * 1e-4) is State.OPEN:
            opened_at = j
            break
    assert opened_at == 9_999  # the 10,000th failure makes half of 20,000 calls


# -- the half-open probe ends without a verdict ----------------------------------------


def test_only_the_probe_itself_can_give_the_probe_back() -> None:
    from cachewise._core.breaker import PASS, REFUSED

    breaker = Breaker(BreakerPolicy(failure_threshold=1, open_seconds=1.0))
    assert breaker.admit(0.0) == PASS  # closed: an ordinary call
    breaker.failure(0.0)
    probe = breaker.admit(1.0)
    assert probe > 0
    assert breaker.admit(1.0) == REFUSED
    breaker.cancel_probe(PASS)  # an ordinary call that ended: not the probe
    breaker.cancel_probe(probe + 1)  # nor a number that is not the probe's
    assert breaker.admit(1.0) == REFUSED
    breaker.cancel_probe(probe)  # the probe itself: cancelled, interrupted
    again = breaker.admit(1.0)
    assert again > 0
    assert again != probe
    assert breaker.success(1.0) is State.CLOSED


def test_a_probe_outstanding_past_the_probe_timeout_lets_another_call_probe() -> None:
    policy = BreakerPolicy(failure_threshold=1, open_seconds=1.0, probe_timeout=5.0)
    breaker = Breaker(policy)
    breaker.failure(0.0)
    stuck = breaker.admit(1.0)  # this probe never reports back
    assert stuck > 0
    assert not breaker.allow(5.9)  # one probe at a time...
    second = breaker.admit(6.0)  # ...until it is overdue
    assert second > 0
    assert second != stuck
    assert not breaker.allow(6.0)
    breaker.cancel_probe(stuck)  # the stuck one ending late frees nothing
    assert not breaker.allow(6.1)
    assert breaker.success(6.2) is State.CLOSED


def test_the_probe_timeout_defaults_to_open_seconds() -> None:
    breaker = Breaker(BreakerPolicy(failure_threshold=1, open_seconds=2.0))
    assert breaker.policy.probe_deadline == 2.0
    breaker.failure(0.0)
    assert breaker.allow(2.0)
    assert not breaker.allow(3.9)
    assert breaker.allow(4.0)


class _Gated:
    """An async backend whose ``get`` of a key in ``blocked`` waits for ``release``;
    every other key is a hit, unless ``down``."""

    def __init__(self) -> None:
        self.blocked: set[str] = set()
        self.entered: dict[str, asyncio.Event] = {}
        self.release = asyncio.Event()
        self.down = False

    async def get(self, key: str) -> Entry | None:
        if key in self.blocked:
            self.entered.setdefault(key, asyncio.Event()).set()
            await self.release.wait()
        if self.down:
            raise ConnectionError("backend down")
        return None

    async def aclose(self) -> None:
        pass


async def _started(backend: _Gated, key: str, call: Any) -> asyncio.Task[Any]:
    """A task running ``call``, once it is blocked inside the backend on ``key``."""
    backend.blocked.add(key)
    entered = backend.entered.setdefault(key, asyncio.Event())
    task = asyncio.ensure_future(call)
    await entered.wait()
    return task


def test_a_cancelled_async_probe_lets_the_next_call_probe_and_close() -> None:
    async def main() -> None:
        clock = FakeClock()
        backend = _Gated()
        breaker = AsyncCircuitBreaker(
            backend, BreakerPolicy(failure_threshold=2, open_seconds=1.0), clock=clock
        )
        backend.down = True
        for _ in range(2):
            with pytest.raises(ConnectionError):
                await breaker.get("k")
        assert breaker.breaker_state == "open"
        backend.down = False
        clock.advance(1.0)
        probe = await _started(backend, "slow", breaker.get("slow"))
        assert breaker.breaker_state == "half_open"
        with pytest.raises(CircuitOpenError):  # one probe at a time
            await breaker.get("k")
        probe.cancel()  # a request timeout, a client that went away
        with pytest.raises(asyncio.CancelledError):
            await probe
        # No time passes: the next call probes because the probe was cancelled.
        assert await breaker.get("k") is None
        assert breaker.breaker_state == "closed"
        await breaker.aclose()

    asyncio.run(main())


def test_a_keyboard_interrupt_in_a_sync_probe_lets_the_next_call_probe_and_close() -> None:
    clock = FakeClock()
    flaky = Flaky()
    breaker = CircuitBreaker(flaky, BreakerPolicy(failure_threshold=2), clock=clock)
    flaky.down = True
    for _ in range(2):
        with pytest.raises(ConnectionError):
            breaker.get("k")
    assert breaker.breaker_state == "open"
    flaky.down = False
    clock.advance(1.0)
    real_get = flaky.get

    def interrupted(key: str) -> Entry | None:
        raise KeyboardInterrupt

    flaky.get = interrupted  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        breaker.get("k")  # the probe, interrupted
    flaky.get = real_get  # type: ignore[method-assign]
    assert breaker.get("k") is None  # the next call probes...
    assert breaker.breaker_state == "closed"  # ...and closes it


def test_a_call_that_is_not_the_probe_ending_does_not_free_the_probe() -> None:
    async def main() -> None:
        clock = FakeClock()
        backend = _Gated()
        breaker = AsyncCircuitBreaker(
            backend, BreakerPolicy(failure_threshold=1, open_seconds=1.0), clock=clock
        )
        early = await _started(backend, "early", breaker.get("early"))  # admitted closed
        backend.down = True
        with pytest.raises(ConnectionError):
            await breaker.get("k")
        backend.down = False
        clock.advance(1.0)
        probe = await _started(backend, "probe", breaker.get("probe"))
        early.cancel()  # not the probe: it must leave the probe alone
        with pytest.raises(asyncio.CancelledError):
            await early
        with pytest.raises(CircuitOpenError):
            await breaker.get("k")
        backend.release.set()  # the probe itself succeeds
        assert await probe is None
        assert breaker.breaker_state == "closed"
        await breaker.aclose()

    asyncio.run(main())


# -- waiting in this process is not a backend failure ----------------------------------


def test_pool_timeouts_do_not_count_against_the_backend_and_are_degraded_errors() -> None:
    from cachewise._errors import BackpressureError, PoolTimeoutError

    assert issubclass(PoolTimeoutError, BackpressureError)
    assert issubclass(PoolTimeoutError, Exception)  # the front ends degrade around it

    class Queued:
        async def get(self, key: str) -> Entry | None:
            raise PoolTimeoutError("no free connection in the pool within 3 s")

        async def aclose(self) -> None:
            pass

    async def main() -> tuple[str, object]:
        breaker = AsyncCircuitBreaker(Queued(), BreakerPolicy(failure_threshold=2))
        cache = AsyncCache(breaker)

        async def load() -> str:
            return "from source"

        values = [await cache.get_or_load("k", load) for _ in range(5)]
        await cache.aclose()
        return breaker.breaker_state, set(values)

    assert asyncio.run(main()) == ("closed", {"from source"})


def test_a_queued_call_passes_the_pool_gate_only_while_closed_or_as_the_probe() -> None:
    async def main() -> list[str]:
        clock = FakeClock()
        outcomes: list[str] = []

        class Pooled:
            """Every get waits in a (pretend) pool queue, then meets its gate."""

            gate: Any = None

            async def get(self, key: str) -> Entry | None:
                try:
                    self.gate()
                except CircuitOpenError:
                    outcomes.append(f"{key}: refused")
                    raise
                if key == "bad":
                    raise ConnectionError("down")
                outcomes.append(f"{key}: sent")
                return None

            async def aclose(self) -> None:
                pass

        backend = Pooled()
        breaker = AsyncCircuitBreaker(backend, BreakerPolicy(failure_threshold=1), clock=clock)
        backend.gate = breaker.admit_queued
        await breaker.get("a")  # closed: sent
        with pytest.raises(ConnectionError):
            await breaker.get("bad")  # opens it
        # A call admitted earlier and still queued meets the gate now: refused,
        # not counted as a failure, and counted as a rejection.
        with pytest.raises(CircuitOpenError):
            breaker.admit_queued()
        assert breaker.breaker_rejections == 1
        clock.advance(1.0)
        await breaker.get("probe")  # the half-open probe passes the gate, and closes
        assert breaker.breaker_state == "closed"
        await breaker.aclose()
        return outcomes

    assert asyncio.run(main()) == ["a: sent", "probe: sent"]
