"""Typed errors. Configuration mistakes are plain ``ValueError`` / ``TypeError``."""

from __future__ import annotations


class CacheError(Exception):
    """Base class of every error cachewise raises on its own account."""


class CacheClosedError(CacheError, RuntimeError):
    """The cache was used after ``close()`` / ``aclose()``."""


class BackendError(CacheError):
    """A backend call failed. The front ends catch it and degrade; backends raise it."""


class BackpressureError(BackendError):
    """The call was not sent: this process's own queue for it was too long (the
    process is busy, or the backend slow). It says nothing certain about the
    backend's health, so circuit breakers do not count it."""


class CircuitOpenError(BackendError):
    """The circuit breaker is open: the call was not sent to the backend."""


class PoolTimeoutError(BackpressureError):
    """No pooled connection became free within ``pool_timeout``: the call was not
    sent. Waiting for a connection is queueing in this process (many tasks, a busy
    event loop), not a sign of the backend's health, so circuit breakers do not
    count it; the front ends degrade around it like any failed backend call."""


class LoaderCycleError(CacheError, RuntimeError):
    """A loader needs, directly or through other loaders, the very key it is
    loading (``a`` loads ``b`` loads ``a``): waiting would deadlock, so the call
    that would wait raises this instead, and every load in the cycle ends with it."""


class LoadCancelledError(CacheError, RuntimeError):
    """An async loader raised ``CancelledError`` although its load was not
    cancelled (it awaited something that was). The load failed: callers get this
    error (or a stale value, within the grace window) rather than a retry."""


class WeigherError(CacheError, ValueError):
    """A ``MemoryBackend`` weigher raised, or returned something other than an int
    ``>= 0``. The weigher is the application's code: like an unserializable value,
    this is the caller's error, raised at the write, never a backend failure."""


class NotificationsLostError(BackendError):
    """A wait for another process's load gave up: the connection that tells this
    process when leases end went silent. The waiter loads on its own at once.
    Circuit breakers do not count it: the wait sent nothing to the backend, and
    the calls that do will tell whether it is down."""


class TagsUnsupportedError(CacheError, TypeError):
    """Tags were given to a cache whose backend has no tags: the caller's error,
    raised at the call (a ``TypeError``, as any misuse of an argument)."""
