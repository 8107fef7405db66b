"""What only the async Redis backend has: the event loop its client belongs to,
invalidations sent on a sync client from threads of its own (deletes batched),
and a call that keeps the caller's cancellation. ``_flavour_sync`` is the sync
flavour's counterpart; ``_async`` (the hand-written source) builds on ``_Flavour``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from cachewise._errors import BackendError, BackpressureError
from cachewise.backends._notify import LoopWaiter, Notifier
from cachewise.backends._redis._common import (
    DEFAULT_LOCK_TIMEOUT,
    DEFAULT_MARGIN,
    DEFAULT_POLL_INTERVAL,
    DEFAULT_TAG_TTL,
    INVALIDATION_THREADS,
    _FenceTable,
    _looks_async_client,
    _RedisCommon,
    _sentinels_of,
    _socket_timeout,
)
from cachewise.backends._redis._sync import RedisBackend
from cachewise.serialization import Codec

_R = TypeVar("_R")

#: A lease-release waiter of this flavour: a future on the running loop.
Waiter = LoopWaiter


async def wait_woken(waiter: LoopWaiter, timeout: float) -> bool:
    """Whether the listener woke ``waiter`` within ``timeout`` seconds."""
    # asyncio.wait, not wait_for: it never swallows a cancellation.
    done, _ = await asyncio.wait({waiter.future}, timeout=timeout)
    return bool(done)


def rearm(notifier: Notifier, key: str, waiter: LoopWaiter) -> LoopWaiter:
    """A waiter not woken yet, watching ``key`` in place of ``waiter`` (a future
    cannot be reset; a release meanwhile is seen by the check that follows)."""
    notifier.unwatch(key, waiter)
    fresh = LoopWaiter()
    notifier.watch(key, fresh)
    return fresh


def lost(waiter: LoopWaiter) -> bool:
    """Whether the listener woke ``waiter`` because it lost its connection."""
    return waiter.future.done() and waiter.future.result()


async def close_sentinels(client: Any) -> None:
    """Close the Sentinel connections of a client this backend created."""
    for sentinel in _sentinels_of(client).sentinels:
        await sentinel.aclose()


class _Flavour(_RedisCommon):
    """The async backend's construction, event-loop binding and invalidation
    threads."""

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
        client_factory: Callable[[], Any] | None = None,
        lease_scope: object = None,
    ) -> None:
        """``client_factory`` (``from_url`` passes one) builds a fresh client: used
        when the cache moves to another event loop (see ``_prepare``)."""
        if not _looks_async_client(client):
            raise TypeError("AsyncRedisBackend needs a redis.asyncio client; use RedisBackend")
        # A sync invalidation client is used from threads of our own. On a busy
        # event loop an asyncio socket timeout fires when the loop comes back late,
        # not when the server is late: a delete that gave up for that reason would
        # leave the old value for every other process. A thread's socket timeout
        # measures the server alone (and a delete already sent still lands if the
        # caller is cancelled).
        offload = invalidation_client is not None and not _looks_async_client(invalidation_client)
        options: dict[str, Any] = {
            "lock_timeout": lock_timeout,
            "wait_timeout": wait_timeout,
            "poll_interval": poll_interval,
            "margin": margin,
            "owns_client": owns_client,
            "tag_ttl": tag_ttl,
        }
        super().__init__(
            client,
            codec=codec,
            invalidation_client=None if offload else invalidation_client,
            lease_scope=lease_scope,
            **options,
        )
        self._offloaded: RedisBackend | None = None
        self._factory = client_factory
        # The event loop the client's connections belong to (see _prepare), and
        # whether a cluster client still needs its one initialization on it.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._init_pending = False
        self._prepare_lock: asyncio.Lock | None = None
        self._pool: ThreadPoolExecutor | None = None
        # Deletes waiting for the drain thread: (key, queued at, future, its loop).
        self._batch: list[_Queued] = []
        self._batch_lock = threading.Lock()
        self._draining = False
        if offload:
            self._offloaded = RedisBackend(
                invalidation_client, codec=self.codec, lease_scope=lease_scope, **options
            )
            self._queue_limit = _socket_timeout(invalidation_client) / 2

    @property
    def _fences(self) -> _FenceTable:
        # One table with the sync backend that sends our invalidations: its deletes
        # must fence our sets.
        if self._offloaded is not None:
            return self._offloaded._fences
        return super()._fences

    def _after_fork_child(self) -> None:
        super()._after_fork_child()
        # The invalidation threads and whatever they had queued were the parent's.
        self._pool = None
        self._batch = []
        self._batch_lock = threading.Lock()
        self._draining = False

    def _listen_client(self) -> Any:
        # The sync invalidation client, when there is one (from_url builds it).
        return self._offloaded.client if self._offloaded is not None else None

    async def _stop_threads(self) -> None:
        """Let invalidations already sent land (at most one timeout each), then
        close the sync sender (and its client if we own it)."""
        if self._pool is not None:
            await asyncio.to_thread(self._pool.shutdown, True)
            self._pool = None
        if self._offloaded is not None:
            self._offloaded.close()

    async def _ready(self) -> Any:
        """The client, ready on the running event loop."""
        if self._loop is not asyncio.get_running_loop() or self._init_pending:
            await self._prepare()
        return self._client

    async def _prepare(self) -> None:
        """Bind the client to the running loop (once per loop).

        redis.asyncio connections belong to the loop that opened them: used from a
        second ``asyncio.run()`` they fail with "Event loop is closed", and every
        read would count against the backend (the breaker opens, hits stop). A
        client built by ``from_url`` is rebuilt for the new loop (the old one's
        sockets are closed when it is collected); one you passed in gets its pool
        reset. A cluster client is then initialized once, under a lock: concurrent
        first calls initializing it at once fail in redis-py (a connection used
        while another call replaces it).
        """
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._loop is not None:
                self._rebind()
            self._loop = loop
            self._prepare_lock = asyncio.Lock()
            self._init_pending = self._is_cluster() and hasattr(self._client, "initialize")
        if self._init_pending:
            assert self._prepare_lock is not None
            async with self._prepare_lock:
                if self._init_pending:
                    await _kept(self._client.initialize())
                    self._init_pending = False

    def _rebind(self) -> None:
        old = self._client
        _close_abandoned(old)
        if self._factory is not None:
            self._client = self._factory()
            if self._writer is old:
                self._writer = self._client
            return
        pool = getattr(old, "connection_pool", None)
        reset = getattr(pool, "reset", None)
        if callable(reset):
            reset()

    def _threads(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                INVALIDATION_THREADS, thread_name_prefix="cachewise-invalidate"
            )
        return self._pool

    async def _offload(self, method: Callable[..., _R], *args: Any) -> _R:
        """Run an invalidation on the sync client, in our threads."""
        queued = time.monotonic()
        limit = self._queue_limit

        def job() -> _R:
            # Bounded queueing: during an outage every thread waits out a timeout,
            # and a call queued behind them must not wait out several. It fails
            # instead, and the cache holds it until a retry lands.
            if time.monotonic() - queued > limit:
                raise BackpressureError("invalidation queued too long (not sent)")
            return method(*args)

        return await asyncio.get_running_loop().run_in_executor(self._threads(), job)

    async def _delete_batched(self, key: str) -> bool:
        """Queue a delete for the drain thread, which sends whatever is queued as
        one pipeline: under load one round trip carries many deletes, where one
        per thread could not keep up (and each that gave up would be held)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        with self._batch_lock:
            self._batch.append((key, time.monotonic(), future, loop))
            start = not self._draining
            self._draining = True
        if start:
            try:
                self._threads().submit(self._drain)
            except RuntimeError:  # shut down (closing): nothing will send it
                with self._batch_lock:
                    self._draining = False
                    pending, self._batch = self._batch, []
                for item in pending:
                    _settle(item, False, BackendError("the backend is closing"))
        return await future

    def _drain(self) -> None:
        """Send queued deletes until none is left (runs in one of our threads)."""
        sender = self._offloaded
        assert sender is not None
        batch: list[_Queued] = []
        try:
            while True:
                with self._batch_lock:
                    batch, self._batch = self._batch, []
                    if not batch:
                        self._draining = False
                        return
                now = time.monotonic()
                fresh: list[_Queued] = []
                for item in batch:
                    if now - item[1] > self._queue_limit:  # see _offload
                        _settle(item, False, BackpressureError("delete queued too long"))
                    else:
                        fresh.append(item)
                if not fresh:
                    continue
                try:
                    existed = sender._delete_each([item[0] for item in fresh])
                except Exception as exc:
                    for item in fresh:
                        _settle(item, False, exc)
                else:
                    for item, hit in zip(fresh, existed, strict=True):
                        _settle(item, hit, None)
        except BaseException:
            # Never leave _draining set with nobody draining, nor a caller without
            # an answer: they would wait forever. (Settling twice is a no-op.)
            with self._batch_lock:
                self._draining = False
                pending, self._batch = self._batch, []
            for item in batch + pending:
                _settle(item, False, BackendError("the invalidation sender failed"))
            raise


async def _kept(call: Awaitable[_R]) -> _R:
    """Await a redis.asyncio call without losing a cancellation of the caller.

    On Python 3.11, redis-py sends each command through ``asyncio.wait_for``, which
    returns the result and drops the cancellation when the send finishes in the
    same loop iteration the caller is cancelled (CPython gh-86296): measured here,
    185 of 200 cancellations of a task looping on ``GET`` were lost. A cancelled
    waiter then kept reading and finally loaded. The task's cancel count tells:
    if it grew during the call and no ``CancelledError`` came, raise it now.
    """
    task = asyncio.current_task()
    cancels = _cancels(task)
    result = await call
    if _cancels(task) > cancels:
        raise asyncio.CancelledError
    return result


def _cancels(task: asyncio.Task[Any] | None) -> int:
    """How many cancellations of ``task`` are pending (Python 3.11+; 0 before)."""
    cancelling = getattr(task, "cancelling", None)
    return int(cancelling()) if cancelling is not None else 0


def _close_abandoned(client: Any) -> None:
    """Close the sockets of a redis.asyncio client whose event loop is gone.

    Its transports cannot be closed the usual way (that needs their loop), and
    left to the collector each would leak until then and warn ("unclosed
    socket"). So each socket is closed by hand, and its transport told so.
    """
    for sentinel in _sentinels_of(client).sentinels:
        _close_abandoned(sentinel)  # (a Sentinel manager's connections: of that loop too)
    connections: list[Any] = []
    pool = getattr(client, "connection_pool", None)
    for name in ("_available_connections", "_in_use_connections"):
        connections += list(getattr(pool, name, None) or ())
    nodes = getattr(getattr(client, "nodes_manager", None), "nodes_cache", None)
    if isinstance(nodes, dict):  # a cluster client: each node's connections
        for node in nodes.values():
            connections += list(getattr(node, "_connections", None) or ())
    for connection in connections:
        transport = getattr(getattr(connection, "_writer", None), "transport", None)
        if transport is None:
            continue
        try:
            transport.abort()  # marks it closing; then fails to schedule on the dead loop
        except RuntimeError:
            pass
        sock = getattr(transport, "_sock", None)
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass
            transport._sock = None  # (closed by hand: its loop is gone)
        # redis-py's connection is closed now too (its own close needs the loop).
        connection._writer = connection._reader = None


_Queued = tuple[str, float, "asyncio.Future[bool]", asyncio.AbstractEventLoop]


def _settle(item: _Queued, result: bool, exc: BaseException | None) -> None:
    """Resolve a queued delete's future on its own loop (from any thread)."""
    future, loop = item[2], item[3]

    def resolve() -> None:
        if future.done():  # the caller was cancelled: the delete went out anyway
            return
        if exc is None:
            future.set_result(result)
        else:
            future.set_exception(exc)

    try:
        loop.call_soon_threadsafe(resolve)
    except RuntimeError:
        pass  # that loop is closed: nobody is waiting
