"""cachewise: cache-aside done right, for sync and asyncio code.

    from cachewise import Cache

    cache = Cache(ttl=60)
    user = cache.get_or_load(f"user:{user_id}", lambda: db.load_user(user_id))
    ...
    db.update_user(user_id, ...)   # commit first,
    cache.delete(f"user:{user_id}")  # then delete: never update the cache on write

Nothing happens at import time: no default cache, no connection, no thread.
"""

from typing import Any

from cachewise._core.breaker import BreakerPolicy
from cachewise._core.entry import Entry
from cachewise._core.envelope import DecodeError
from cachewise._core.policy import Policy
from cachewise._errors import (
    BackendError,
    CacheClosedError,
    CacheError,
    LoadCancelledError,
    LoaderCycleError,
    NotificationsLostError,
    TagsUnsupportedError,
    WeigherError,
)
from cachewise._frontends._decorator import KeyCardinalityError
from cachewise._frontends._decorator_async import AsyncCachedFunction
from cachewise._frontends._decorator_sync import CachedFunction
from cachewise._frontends._group import CacheGroup
from cachewise._frontends.aio import AsyncCache
from cachewise._frontends.sync import Cache
from cachewise._sentinel import MISSING, MissingType
from cachewise._stats import CacheStats
from cachewise.backends import (
    AsyncBackend,
    AsyncCircuitBreaker,
    AsyncRedisBackend,
    Backend,
    CircuitBreaker,
    MemoryBackend,
    RedisBackend,
)
from cachewise.serialization import SerializationError, ValueTooLargeError

__version__ = "0.1.0"

__all__ = [
    "MISSING",
    "AsyncBackend",
    "AsyncCache",
    "AsyncCachedFunction",
    "AsyncCircuitBreaker",
    "AsyncRedisBackend",
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

# Errors that never reach a Cache user (the front ends degrade around them) live
# with the backends that raise them; the old names still resolve, with a warning.
_MOVED_TO_BACKENDS = frozenset({"BackpressureError", "CircuitOpenError", "PoolTimeoutError"})


def __getattr__(name: str) -> Any:
    if name in _MOVED_TO_BACKENDS:
        import warnings

        from cachewise import backends

        warnings.warn(
            f"cachewise.{name} moved to cachewise.backends.{name}",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(backends, name)
    raise AttributeError(f"module 'cachewise' has no attribute {name!r}")
