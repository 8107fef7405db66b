"""cachewise: cache-aside done right, for sync and asyncio code.

    from cachewise import Cache

    cache = Cache(ttl=60)
    user = cache.get_or_load(f"user:{user_id}", lambda: db.load_user(user_id))
    ...
    db.update_user(user_id, ...)   # commit first,
    cache.delete(f"user:{user_id}")  # then delete: never update the cache on write

Nothing happens at import time: no default cache, no connection, no thread.
"""

from cachewise._core.breaker import BreakerPolicy
from cachewise._core.entry import Entry
from cachewise._core.policy import Policy
from cachewise._errors import (
    BackendError,
    BackpressureError,
    CacheClosedError,
    CacheError,
    LoadCancelledError,
    LoaderCycleError,
    NotificationsLostError,
    PoolTimeoutError,
    WeigherError,
)
from cachewise._frontends._decorator import AsyncCachedFunction, CachedFunction
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
    CircuitOpenError,
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
    "BackpressureError",
    "BreakerPolicy",
    "Cache",
    "CacheClosedError",
    "CacheError",
    "CacheStats",
    "CachedFunction",
    "CircuitBreaker",
    "CircuitOpenError",
    "Entry",
    "LoadCancelledError",
    "LoaderCycleError",
    "MemoryBackend",
    "MissingType",
    "NotificationsLostError",
    "Policy",
    "PoolTimeoutError",
    "RedisBackend",
    "SerializationError",
    "ValueTooLargeError",
    "WeigherError",
    "__version__",
]
