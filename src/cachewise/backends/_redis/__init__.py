"""Redis backends: ``RedisBackend`` (redis-py) and ``AsyncRedisBackend`` (redis.asyncio).

One hand-written source, ``_async``; ``_sync`` is generated from it by
``scripts/unasync.py`` (``make generate``; ``make lint`` fails when it is stale).
``_common`` holds what is not I/O (options, key layout, encoding, reply parsing,
fences); ``_flavour_async`` and ``_flavour_sync`` hold what differs in kind between the
flavours, under the same names: construction, how a waiter waits, and, for the
async flavour only, binding the client to the running event loop and sending
invalidations on a sync client from threads of its own (the few lines of
``_async`` that use those are marked async-only).
"""

from cachewise.backends._redis._async import AsyncRedisBackend
from cachewise.backends._redis._common import (
    DEFAULT_LOCK_TIMEOUT,
    DEFAULT_MARGIN,
    DEFAULT_POLL_INTERVAL,
    DEFAULT_TAG_TTL,
    FENCE_MS,
    INVALIDATION_THREADS,
    MAX_WAIT_SECONDS,
    tag_key,
    value_key,
)
from cachewise.backends._redis._sync import RedisBackend

__all__ = [
    "DEFAULT_LOCK_TIMEOUT",
    "DEFAULT_MARGIN",
    "DEFAULT_POLL_INTERVAL",
    "DEFAULT_TAG_TTL",
    "FENCE_MS",
    "INVALIDATION_THREADS",
    "MAX_WAIT_SECONDS",
    "AsyncRedisBackend",
    "RedisBackend",
    "tag_key",
    "value_key",
]
