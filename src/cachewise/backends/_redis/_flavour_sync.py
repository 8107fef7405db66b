"""What only the sync Redis backend has: its construction, and the lease-release
waits of a thread. ``_flavour_async`` is the async flavour's counterpart (same names)."""

from __future__ import annotations

from typing import Any

from cachewise.backends._notify import Notifier, ThreadWaiter
from cachewise.backends._redis._common import (
    DEFAULT_LOCK_TIMEOUT,
    DEFAULT_MARGIN,
    DEFAULT_POLL_INTERVAL,
    DEFAULT_TAG_TTL,
    _looks_async_client,
    _RedisCommon,
    _sentinels_of,
)
from cachewise.serialization import Codec

#: A lease-release waiter of this flavour: an event the listener sets.
Waiter = ThreadWaiter


def wait_woken(waiter: ThreadWaiter, timeout: float) -> bool:
    """Whether the listener woke ``waiter`` within ``timeout`` seconds."""
    return waiter.event.wait(timeout)


def rearm(notifier: Notifier, key: str, waiter: ThreadWaiter) -> ThreadWaiter:
    """``waiter``, not woken any more (a release meanwhile is seen by the check
    that follows)."""
    waiter.event.clear()
    return waiter


def lost(waiter: ThreadWaiter) -> bool:
    """Whether the listener woke ``waiter`` because it lost its connection."""
    return waiter.failed


def close_sentinels(client: Any) -> None:
    """Close the Sentinel connections of a client this backend created."""
    _sentinels_of(client).close()


class _Flavour(_RedisCommon):
    """The sync backend's construction."""

    def __init__(
        self,
        client: Any,
        *,
        codec: Codec | None = None,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        wait_timeout: float | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        margin: float = DEFAULT_MARGIN,
        owns_client: bool = False,
        tag_ttl: float = DEFAULT_TAG_TTL,
        invalidation_client: Any = None,
        lease_scope: object = None,
    ) -> None:
        if _looks_async_client(client):
            raise TypeError("RedisBackend needs a sync redis-py client; use AsyncRedisBackend")
        super().__init__(
            client,
            codec=codec,
            lock_timeout=lock_timeout,
            wait_timeout=wait_timeout,
            poll_interval=poll_interval,
            margin=margin,
            owns_client=owns_client,
            tag_ttl=tag_ttl,
            invalidation_client=invalidation_client,
            lease_scope=lease_scope,
        )
