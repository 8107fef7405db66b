"""Shared fixtures: one conformance facade over every backend and both flavours.

The conformance tests talk to a ``Facade``, a small sync interface that drives either
a ``Cache`` directly or an ``AsyncCache`` on a private event loop. The same test
body therefore pins the same behaviour for both front ends and every backend.
Concurrency tests that depend on threads or tasks live in their own modules.
"""

from __future__ import annotations

import asyncio
import faulthandler
import os
import random
import typing
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from cachewise import AsyncCache, Cache, MemoryBackend
from cachewise.testing import FakeClock
from cachewise.testing.conformance import CAPABILITY_ABSENT
from tests.support.redis_servers import (
    fresh_redis_server,
    redis_cluster,
    redis_cluster_url,
    redis_server,
    redis_url,
)

# Fixtures shared with every test module (pytest finds them by name here).
__all__ = ["fresh_redis_server", "redis_cluster", "redis_cluster_url", "redis_server", "redis_url"]

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


#: The last line of defence against a hang. pytest-timeout (120 s per test, the
#: signal method) fails a stuck test, but a test whose clean-up then waits
#: forever, or that swallows the timeout, is beyond it: this watchdog dumps every
#: thread's stack and ends the run, so CI fails in minutes instead of hanging.
HARD_LIMIT = float(os.environ.get("CACHEWISE_TEST_HARD_LIMIT", "420"))
_watchdog_file: Any = None


def pytest_configure(config: pytest.Config) -> None:
    global _watchdog_file
    # A duplicate of the real stderr: pytest's capturing replaces fd 2 per test.
    _watchdog_file = os.fdopen(os.dup(2), "w")


def pytest_unconfigure(config: pytest.Config) -> None:
    global _watchdog_file
    if _watchdog_file is not None:  # closed here, not by the collector (a ResourceWarning)
        _watchdog_file.close()
        _watchdog_file = None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    if _watchdog_file is not None:
        faulthandler.dump_traceback_later(HARD_LIMIT, exit=True, file=_watchdog_file)
    try:
        return (yield)
    finally:
        faulthandler.cancel_dump_traceback_later()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """In CI nothing may skip silently: a skipped test (a missing service, a missing
    binary) is reported as a failure there. Locally it stays a visible skip. (The
    conformance suite's skips for a capability a backend lacks are by design.)"""
    report = yield
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        if str(reason).endswith(CAPABILITY_ABSENT):
            return report
        report.outcome = "failed"
        report.longrepr = f"CI=true: this test may not skip ({reason})"
    return report


class Facade:
    """Synchronous view of a cache for the conformance suite."""

    flavour: str

    def __init__(self, cache: Any) -> None:
        self.cache = cache

    def stats(self) -> Any:
        return self.cache.stats()


class SyncFacade(Facade):
    flavour = "sync"

    def get(self, key: Any, *default: Any, **kw: Any) -> Any:
        return self.cache.get(key, *default, **kw)

    def get_many(self, keys: list[str]) -> dict[str, Any]:
        return self.cache.get_many(keys)

    def set(self, key: Any, value: Any, **kw: Any) -> None:
        self.cache.set(key, value, **kw)

    def set_many(self, items: dict[str, Any], **kw: Any) -> None:
        self.cache.set_many(items, **kw)

    def delete(self, key: Any) -> bool:
        return self.cache.delete(key)

    def delete_many(self, keys: list[str]) -> int:
        return self.cache.delete_many(keys)

    def clear(self) -> int:
        return self.cache.clear()

    def get_or_load(self, key: Any, loader: Callable[[], Any], **kw: Any) -> Any:
        return self.cache.get_or_load(key, loader, **kw)

    def cached(self, *args: Any, **kw: Any) -> Callable[[Callable[..., Any]], Any]:
        deco = self.cache.cached(*args, **kw)

        def wrap(func: Callable[..., Any]) -> Any:
            return deco(func)

        return wrap

    def invalidates(self, *args: Any, **kw: Any) -> Callable[[Callable[..., Any]], Any]:
        deco = self.cache.invalidates(*args, **kw)

        def wrap(func: Callable[..., Any]) -> Any:
            return deco(func)

        return wrap

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    def wait_background(self) -> None:
        assert self.cache.wait_background(timeout=10)

    def raw_entry(self, full_key: str) -> Any:
        return self.cache.backend.get(full_key)

    def close(self) -> None:
        self.cache.close()


class AsyncFacade(Facade):
    flavour = "async"

    def __init__(self, cache: Any, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(cache)
        self.loop = loop

    def _run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def get(self, key: Any, *default: Any, **kw: Any) -> Any:
        return self._run(self.cache.get(key, *default, **kw))

    def get_many(self, keys: list[str]) -> dict[str, Any]:
        return self._run(self.cache.get_many(keys))

    def set(self, key: Any, value: Any, **kw: Any) -> None:
        self._run(self.cache.set(key, value, **kw))

    def set_many(self, items: dict[str, Any], **kw: Any) -> None:
        self._run(self.cache.set_many(items, **kw))

    def delete(self, key: Any) -> bool:
        return self._run(self.cache.delete(key))

    def delete_many(self, keys: list[str]) -> int:
        return self._run(self.cache.delete_many(keys))

    def clear(self) -> int:
        return self._run(self.cache.clear())

    def get_or_load(self, key: Any, loader: Callable[[], Any], **kw: Any) -> Any:
        async def aloader() -> Any:
            return loader()

        return self._run(self.cache.get_or_load(key, aloader, **kw))

    def cached(self, *args: Any, **kw: Any) -> Callable[[Callable[..., Any]], Any]:
        deco = self.cache.cached(*args, **kw)

        def wrap(func: Callable[..., Any]) -> Any:
            # Same signature as func, so key templates still see its parameters.
            async def afunc(*a: Any, **k: Any) -> Any:
                return func(*a, **k)

            afunc.__signature__ = __import__("inspect").signature(func)  # type: ignore[attr-defined]
            afunc.__qualname__ = func.__qualname__
            afunc.__module__ = func.__module__
            try:  # the return annotation, resolved where func was written
                afunc.__annotations__ = typing.get_type_hints(func)
            except Exception:
                pass
            return deco(afunc)

        return wrap

    def invalidates(self, *args: Any, **kw: Any) -> Callable[[Callable[..., Any]], Any]:
        deco = self.cache.invalidates(*args, **kw)

        def wrap(func: Callable[..., Any]) -> Any:
            async def afunc(*a: Any, **k: Any) -> Any:
                return func(*a, **k)

            afunc.__signature__ = __import__("inspect").signature(func)  # type: ignore[attr-defined]
            afunc.__qualname__ = func.__qualname__
            afunc.__module__ = func.__module__
            return deco(afunc)

        return wrap

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        result = fn(*args, **kwargs)
        return self._run(result) if asyncio.iscoroutine(result) else result

    def wait_background(self) -> None:
        assert self._run(self.cache.wait_background(timeout=10))

    def raw_entry(self, full_key: str) -> Any:
        result = self.cache.backend.get(full_key)
        return self._run(result) if asyncio.iscoroutine(result) else result

    def close(self) -> None:
        self._run(self.cache.aclose())


def _memory_backend(request: pytest.FixtureRequest, flavour: str, **options: Any) -> Any:
    return MemoryBackend(**options)


def _redis_backend(url_fixture: str) -> Callable[..., Any]:
    def make(request: pytest.FixtureRequest, flavour: str, **options: Any) -> Any:
        from cachewise._url import backend_from_url

        url = request.getfixturevalue(url_fixture)
        return backend_from_url(url, "sync" if flavour == "sync" else "async", **options)

    return make


#: backend name -> factory(request, flavour, **backend_options).
BACKENDS: dict[str, Callable[..., Any]] = {
    "memory": _memory_backend,
    "redis": _redis_backend("redis_url"),
    "redis-cluster": _redis_backend("redis_cluster_url"),
}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["sync", "async"])
def flavour(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=sorted(BACKENDS))
def backend_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_cache(
    request: pytest.FixtureRequest, flavour: str, backend_name: str, clock: FakeClock
) -> Iterator[Callable[..., Facade]]:
    """``make_cache(**cache_options)``: a facade over a fresh cache of the current
    flavour and backend, on the fake clock, with a seeded RNG and (unless given)
    no jitter, so expiry instants are exact."""
    made: list[Facade] = []
    backends: list[Any] = []
    loop = asyncio.new_event_loop() if flavour == "async" else None

    def factory(
        backend_options: dict[str, Any] | None = None,
        *,
        share_backend_of: Facade | None = None,
        **options: Any,
    ) -> Facade:
        options.setdefault("clock", clock)
        options.setdefault("jitter", 0.0)
        options.setdefault("rng", random.Random(1234))
        if share_backend_of is not None:
            backend = share_backend_of.cache.backend
        else:
            backend = BACKENDS[backend_name](request, flavour, **(backend_options or {}))
            backends.append(backend)
        facade: Facade
        if loop is None:
            facade = SyncFacade(Cache(backend, **options))
        else:
            facade = AsyncFacade(AsyncCache(backend, **options), loop)
        made.append(facade)
        return facade

    yield factory
    for facade in made:
        facade.close()
    for backend in backends:
        if loop is not None and hasattr(backend, "aclose"):
            loop.run_until_complete(backend.aclose())
        else:
            backend.close()
    if loop is not None:
        loop.close()
