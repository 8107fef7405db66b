"""The public surface: names, signatures and the sync/async symmetry are the contract."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

import cachewise
from cachewise import MISSING, AsyncCache, Cache


def test_all_is_pinned() -> None:
    assert sorted(cachewise.__all__) == sorted(
        [
            "MISSING",
            "AsyncBackend",
            "AsyncCache",
            "AsyncRedisBackend",
            "AsyncCachedFunction",
            "AsyncCircuitBreaker",
            "Backend",
            "BackendError",
            "BreakerPolicy",
            "Cache",
            "CacheClosedError",
            "CacheError",
            "CacheGroup",
            "CacheStats",
            "CachedFunction",
            "CircuitBreaker",
            "DecodeError",
            "Entry",
            "KeyCardinalityError",
            "LoadCancelledError",
            "LoaderCycleError",
            "MemoryBackend",
            "MissingType",
            "NotificationsLostError",
            "Policy",
            "RedisBackend",
            "SerializationError",
            "TagsUnsupportedError",
            "ValueTooLargeError",
            "WeigherError",
            "__version__",
        ]
    )
    for name in cachewise.__all__:
        assert hasattr(cachewise, name), name


def test_contract_constructor_options_and_defaults() -> None:
    for cls in (Cache, AsyncCache):
        params = inspect.signature(cls).parameters
        assert next(iter(params)) == "backend"
        assert params["backend"].default is None
        expected = {
            "namespace": "",
            "ttl": 300.0,
            "jitter": 0.1,
            "stale_ttl": 0.0,
            "negative_ttl": 30.0,
            "early_refresh": 1.0,
            "clock": None,
        }
        for name, default in expected.items():
            assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, name
            assert params[name].default == default, name


def test_cache_and_async_cache_share_constructor_options() -> None:
    sync = dict(inspect.signature(Cache).parameters)
    aio = dict(inspect.signature(AsyncCache).parameters)
    sync.pop("refresh_workers")  # threads only: AsyncCache runs refreshes as tasks
    assert list(sync) == list(aio)
    for name, param in sync.items():
        assert param.default == aio[name].default, name


def _public_methods(cls: type) -> dict[str, object]:
    return {
        name: member
        for name, member in vars(cls).items()
        if not name.startswith("_") and callable(member)
    }


def test_async_cache_has_the_same_methods_as_coroutines() -> None:
    sync = _public_methods(Cache)
    aio = _public_methods(AsyncCache)
    sync_only = {"close", "from_url", "cached", "invalidates"}  # decorators stay sync
    for name in sync:
        assert name in aio, name
        if name not in sync_only:
            assert inspect.iscoroutinefunction(aio[name]), name
            assert list(inspect.signature(sync[name]).parameters) == list(  # type: ignore[arg-type]
                inspect.signature(aio[name]).parameters  # type: ignore[arg-type]
            ), name
    assert inspect.iscoroutinefunction(AsyncCache.close)
    assert inspect.iscoroutinefunction(AsyncCache.aclose)
    for name in ("get", "set", "delete", "delete_many", "get_or_load", "cached", "stats"):
        assert callable(getattr(Cache, name)), name
        assert callable(getattr(AsyncCache, name)), name


def test_missing_is_a_falsy_singleton_distinct_from_none() -> None:
    import copy
    import pickle

    assert MISSING is not None
    assert not MISSING
    assert repr(MISSING) == "MISSING"
    assert copy.deepcopy(MISSING) is MISSING
    assert pickle.loads(pickle.dumps(MISSING)) is MISSING


def test_importing_does_no_work() -> None:
    """No default cache, no thread, no connection at import time."""
    code = (
        "import threading, cachewise, cachewise.testing, cachewise.keys, cachewise.backends;"
        "assert threading.active_count() == 1, threading.enumerate();"
        "assert not any(isinstance(v, (cachewise.Cache, cachewise.AsyncCache))"
        " for v in vars(cachewise).values())"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_py_typed_is_shipped() -> None:
    from importlib.resources import files

    assert files("cachewise").joinpath("py.typed").is_file()


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"ttl": -1}, "ttl"),
        ({"jitter": 1}, "jitter"),
        ({"jitter": -0.01}, "jitter"),
        ({"stale_ttl": -1}, "stale_ttl"),
        ({"negative_ttl": -1}, "negative_ttl"),
        ({"early_refresh": -0.5}, "early_refresh"),
        ({"max_pending_refreshes": -1}, "max_pending_refreshes"),
    ],
)
def test_invalid_constructor_options_are_value_errors_naming_the_option(
    options: dict[str, float], name: str
) -> None:
    for cls in (Cache, AsyncCache):
        with pytest.raises(ValueError, match=name):
            cls(**options)  # type: ignore[arg-type]


def test_wrong_backend_flavour_is_a_clear_type_error() -> None:
    class AsyncOnly:
        async def get(self, key: str) -> None: ...
        async def get_many(self, keys: list[str]) -> list[None]: ...
        async def set(self, key: str, entry: object) -> None: ...
        async def set_many(self, items: object) -> None: ...
        async def delete(self, key: str) -> bool: ...
        async def delete_many(self, keys: object) -> int: ...
        async def clear(self, prefix: str = "") -> int: ...
        async def aclose(self) -> None: ...
        def close(self) -> None: ...

    with pytest.raises(TypeError, match="AsyncCache"):
        Cache(AsyncOnly())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="AsyncBackend"):
        AsyncCache(object())  # type: ignore[arg-type]
