"""Backends: where entries live. The front ends (``Cache``, ``AsyncCache``) decide."""

from cachewise.backends._memory import DEFAULT_MAX_BYTES, DEFAULT_MAX_ENTRIES, MemoryBackend
from cachewise.backends._protocol import AsyncBackend, Backend, BackendStats, NonBlockingBackend
from cachewise.backends._weigh import Weigher, estimate_size

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_ENTRIES",
    "AsyncBackend",
    "Backend",
    "BackendStats",
    "MemoryBackend",
    "NonBlockingBackend",
    "Weigher",
    "estimate_size",
]
