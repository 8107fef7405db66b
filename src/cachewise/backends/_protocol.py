"""What a backend must do, sync and async. Small on purpose.

A backend stores ``Entry`` objects under full keys (namespace already applied). It
makes no freshness decisions: expired entries may be returned and the front end
treats them as misses. Optional capabilities (leases, tags, broadcast) are separate
protocols added by later backends.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from cachewise._core.entry import Entry
from cachewise._core.readflow import LeaseReply


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
class TagBackend(Protocol):
    """A sync backend with tag invalidation in O(number of tags).

    The front end takes ``tag_stamp(tags)`` before it loads a value and stores it
    on the entry (``Entry.stamp``); ``get`` and ``get_tagged`` treat an entry whose
    tags were invalidated since its stamp as missing.
    """

    def tag_stamp(self, tags: Sequence[str]) -> Any:
        """The current versions of ``tags``, to record on an entry."""

    def invalidate_tags(self, tags: Sequence[str]) -> None:
        """Invalidate every entry recorded with any of ``tags``."""

    def get_tagged(self, key: str, tags: Sequence[str]) -> Entry | None:
        """``get``, given the tags the caller expects (lets Redis check them in the
        same round trip)."""


@runtime_checkable
class AsyncTagBackend(Protocol):
    """``TagBackend`` for ``AsyncCache``."""

    async def tag_stamp(self, tags: Sequence[str]) -> Any:
        """The current versions of ``tags``, to record on an entry."""

    async def invalidate_tags(self, tags: Sequence[str]) -> None:
        """Invalidate every entry recorded with any of ``tags``."""

    async def get_tagged(self, key: str, tags: Sequence[str]) -> Entry | None:
        """``get``, given the tags the caller expects."""


@runtime_checkable
class BackendStats(Protocol):
    """A backend that counts its own evictions and size."""

    @property
    def evictions(self) -> int:
        """Entries removed to stay inside the budget."""


@runtime_checkable
class LeaseBackend(Backend, Protocol):
    """A shared sync backend with leases: one load per key across processes.

    ``read_or_lease`` modes: ``"lease"`` (read; on a miss take the lease or register
    as a waiter), ``"take"`` (take the lease whatever the value, or register),
    ``"refresh"`` (take the lease whatever the value; never register).
    """

    @property
    def wait_timeout(self) -> float:
        """Seconds a waiter waits for another holder before loading on its own."""

    def read_or_lease(self, key: str, token: str, mode: str = "lease") -> LeaseReply:
        """Read ``key`` and maybe take its lease for ``token``, in one round trip."""

    def set_leased(self, key: str, entry: Entry, token: str) -> bool:
        """Write only while ``token`` still holds the lease; whether it did."""

    def release(self, key: str, token: str) -> bool:
        """Give up ``token``'s lease and wake the waiters; whether it was still
        ``token``'s (no delete, set or clear revoked it since it was granted)."""

    def wait(self, key: str, timeout: float) -> bool:
        """Block until the lease holder signals, or ``timeout``; whether it did."""


@runtime_checkable
class AsyncLeaseBackend(AsyncBackend, Protocol):
    """``LeaseBackend`` for ``AsyncCache``."""

    @property
    def wait_timeout(self) -> float:
        """Seconds a waiter waits for another holder before loading on its own."""

    async def read_or_lease(self, key: str, token: str, mode: str = "lease") -> LeaseReply:
        """Read ``key`` and maybe take its lease for ``token``, in one round trip."""

    async def set_leased(self, key: str, entry: Entry, token: str) -> bool:
        """Write only while ``token`` still holds the lease; whether it did."""

    async def release(self, key: str, token: str) -> bool:
        """Give up ``token``'s lease and wake the waiters; whether it was still
        ``token``'s."""

    async def wait(self, key: str, timeout: float) -> bool:
        """Block until the lease holder signals, or ``timeout``; whether it did."""


@runtime_checkable
class InProcessLeaseBackend(LeaseBackend, Protocol):
    """A ``LeaseBackend`` in this process (``MemoryBackend``): every call but
    ``wait`` returns without blocking, and ``wait_async`` waits on an event loop.

    ``Cache`` uses ``wait`` (it blocks the calling thread); ``AsyncCache`` uses
    ``wait_async``. Front ends of both kinds on one such backend coordinate
    through its leases.
    """

    async def wait_async(self, key: str, timeout: float) -> bool:
        """``wait`` for a coroutine: suspends until the lease on ``key`` ends, or
        ``timeout``; whether it ended."""


def is_async_backend(backend: object) -> bool:
    """Whether ``backend``'s calls are awaited (its ``get`` is a coroutine
    function): the one test of a backend's flavour, for the front ends and the
    circuit breakers alike."""
    return inspect.iscoroutinefunction(getattr(backend, "get", None))
