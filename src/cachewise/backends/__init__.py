"""Backends: where entries live. The front ends (``Cache``, ``AsyncCache``) decide."""

from cachewise._core.readflow import LeaseReply
from cachewise._errors import BackpressureError, CircuitOpenError, PoolTimeoutError
from cachewise.backends._breaker import AsyncCircuitBreaker, CircuitBreaker
from cachewise.backends._memory import DEFAULT_MAX_BYTES, DEFAULT_MAX_ENTRIES, MemoryBackend
from cachewise.backends._protocol import (
    AsyncBackend,
    AsyncLeaseBackend,
    AsyncTagBackend,
    Backend,
    BackendStats,
    InProcessLeaseBackend,
    LeaseBackend,
    NonBlockingBackend,
    TagBackend,
)
from cachewise.backends._redis import AsyncRedisBackend, RedisBackend
from cachewise.backends._weigh import Weigher, estimate_size

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_ENTRIES",
    "AsyncBackend",
    "AsyncCircuitBreaker",
    "AsyncLeaseBackend",
    "AsyncRedisBackend",
    "AsyncTagBackend",
    "Backend",
    "BackendStats",
    "BackpressureError",
    "CircuitBreaker",
    "CircuitOpenError",
    "InProcessLeaseBackend",
    "LeaseBackend",
    "LeaseReply",
    "MemoryBackend",
    "NonBlockingBackend",
    "PoolTimeoutError",
    "RedisBackend",
    "TagBackend",
    "Weigher",
    "estimate_size",
]
