"""Backends: where entries live. The front ends (``Cache``, ``AsyncCache``) decide."""

from cachewise.backends._memory import DEFAULT_MAX_BYTES, DEFAULT_MAX_ENTRIES, MemoryBackend
from cachewise.backends._protocol import (
    AsyncBackend,
    AsyncLeaseBackend,
    Backend,
    BackendStats,
    LeaseBackend,
    NonBlockingBackend,
)
from cachewise.backends._redis import AsyncRedisBackend, RedisBackend
from cachewise.backends._weigh import Weigher, estimate_size

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_ENTRIES",
    "AsyncBackend",
    "AsyncLeaseBackend",
    "AsyncRedisBackend",
    "Backend",
    "BackendStats",
    "LeaseBackend",
    "MemoryBackend",
    "NonBlockingBackend",
    "RedisBackend",
    "Weigher",
    "estimate_size",
]
