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
