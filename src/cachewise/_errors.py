"""Typed errors. Configuration mistakes are plain ``ValueError`` / ``TypeError``."""

from __future__ import annotations


class CacheError(Exception):
    """Base class of every error cachewise raises on its own account."""


class CacheClosedError(CacheError, RuntimeError):
    """The cache was used after ``close()`` / ``aclose()``."""


class BackendError(CacheError):
    """A backend call failed. The front ends catch it and degrade; backends raise it."""
