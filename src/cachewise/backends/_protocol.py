"""What a backend must do, sync and async. Small on purpose.

A backend stores ``Entry`` objects under full keys (namespace already applied). It
makes no freshness decisions: expired entries may be returned and the front end
treats them as misses. Optional capabilities (leases, tags, broadcast) are separate
protocols added by later backends.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from cachewise._core.entry import Entry


@runtime_checkable
class Backend(Protocol):
    """A synchronous backend, for ``Cache``."""

    def get(self, key: str) -> Entry | None:
        """The entry stored under ``key``, or ``None``."""

    def get_many(self, keys: Sequence[str]) -> list[Entry | None]:
        """``get`` for several keys, in order."""

    def set(self, key: str, entry: Entry) -> None:
        """Store ``entry`` under ``key``, replacing what was there."""

    def set_many(self, items: Sequence[tuple[str, Entry]]) -> None:
        """``set`` for several keys."""

    def delete(self, key: str) -> bool:
        """Remove ``key``; whether it was there."""

    def delete_many(self, keys: Sequence[str]) -> int:
        """Remove several keys; how many were there."""

    def clear(self, prefix: str = "") -> int:
        """Remove every key starting with ``prefix``; how many."""

    def close(self) -> None:
        """Release connections and memory."""


@runtime_checkable
class AsyncBackend(Protocol):
    """An asyncio backend, for ``AsyncCache``. Same contract as ``Backend``."""

    async def get(self, key: str) -> Entry | None:
        """The entry stored under ``key``, or ``None``."""

    async def get_many(self, keys: Sequence[str]) -> list[Entry | None]:
        """``get`` for several keys, in order."""

    async def set(self, key: str, entry: Entry) -> None:
        """Store ``entry`` under ``key``, replacing what was there."""

    async def set_many(self, items: Sequence[tuple[str, Entry]]) -> None:
        """``set`` for several keys."""

    async def delete(self, key: str) -> bool:
        """Remove ``key``; whether it was there."""

    async def delete_many(self, keys: Sequence[str]) -> int:
        """Remove several keys; how many were there."""

    async def clear(self, prefix: str = "") -> int:
        """Remove every key starting with ``prefix``; how many."""

    async def aclose(self) -> None:
        """Release connections and memory."""


@runtime_checkable
class NonBlockingBackend(Backend, Protocol):
    """A sync backend whose calls never block on I/O (in-process memory).

    ``AsyncCache`` calls such a backend directly, with no ``await`` in between, so
    one in-process store can serve a ``Cache`` and an ``AsyncCache`` at once.
    """

    @property
    def nonblocking(self) -> bool:
        """Always ``True``: calls finish without I/O."""


@runtime_checkable
class BackendStats(Protocol):
    """A backend that counts its own evictions and size."""

    @property
    def evictions(self) -> int:
        """Entries removed to stay inside the budget."""
