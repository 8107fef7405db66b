"""A bounded ``redis.asyncio`` connection pool with a cheap uncontended path.

redis.asyncio's plain pool raises "Too many connections" past its limit, so 500
tasks on one client fail; its ``BlockingConnectionPool`` waits instead, but every
checkout goes through an ``asyncio.Condition`` and a timeout context (about 12 µs
on a call that takes 100 µs), and it is not first come, first served: under load
some tasks wait ten seconds while others go round many times.

Here a count of free slots bounds the connections in use. While one is free,
taking it costs no suspension at all. When none is, the caller queues (first come,
first served: a freed slot is handed straight to the oldest waiter) for up to
``timeout`` seconds, then gets a ``PoolTimeoutError``. Waiting for a connection is
queueing in this process, not a sign of the server's health: that error is a
``BackpressureError``, which circuit breakers do not count (the front ends degrade
around it like any failed backend call).

``gate``, when set, is called after a wait, before the connection is used (never
on the uncontended path); it raises to refuse the call. ``from_url`` sets it to
the circuit breaker's check, so that calls queued behind calls to a dead server
fail at once once the breaker opens, instead of each being sent in turn.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from cachewise._errors import PoolTimeoutError

#: How long a checkout waits for a free connection by default. Much longer than
#: a socket timeout: under load the wait is queueing, and it grows with the tasks
#: in flight and shrinks with the CPU the process gets (benchmarks/load_pool.py,
#: 50 connections, 200 µs of work per call: the longest call took 0.8 s with
#: 1,000 tasks, 1.5 s with 2,000 and 1.8 s with 3,000 on an idle 2-core machine;
#: 2.9 s with 2,000 tasks while other work kept both cores busy). Giving up sooner
#: would only send those calls to the source, adding load where there is too much.
DEFAULT_POOL_TIMEOUT = 5.0


#: Connections a pool holds at most by default (``from_url``'s max_connections).
DEFAULT_MAX_CONNECTIONS = 50


def _timed_out(pool: Any) -> PoolTimeoutError:
    """What a call gets after queueing ``pool.timeout`` seconds (both flavours)."""
    return PoolTimeoutError(
        f"no free connection in the pool within {pool.timeout:g} s ({pool.max_connections} in use)"
    )


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)  # no slot in time


@functools.cache
def bounded_pool_class(base: type[Any] | None = None) -> type[Any]:
    """The pool class (built on first use: redis-py is an optional dependency),
    over ``base``: redis.asyncio's ``ConnectionPool`` or a subclass of it (the
    Sentinel pool, whose connections find the master through the Sentinels)."""
    if base is None:
        from redis.asyncio.connection import ConnectionPool

        base = ConnectionPool

    class BoundedConnectionPool(base):  # type: ignore[valid-type,misc]
        """``ConnectionPool`` that queues (up to ``timeout``) for a free connection."""

        def __init__(
            self,
            *,
            max_connections: int = DEFAULT_MAX_CONNECTIONS,
            timeout: float = DEFAULT_POOL_TIMEOUT,
            gate: Callable[[], None] | None = None,
            **kwargs: Any,
        ):
            super().__init__(max_connections=max_connections, **kwargs)
            self.timeout = timeout
            self.gate = gate
            # Invariants: a slot is free (counted in _free), or held by a caller
            # between its checkout and its release, or handed to a waiter whose
            # future holds True. While _free > 0 every waiter in _waiters is done
            # (slots go to waiters before they go back to _free), so a caller that
            # finds a free slot passes nobody who was waiting.
            self._free = max_connections
            self._waiters: deque[asyncio.Future[bool]] = deque()
            # A connection in _holding holds one slot, given back when it is
            # released. (redis-py releases a connection itself when it fails to
            # connect, before get_connection returns: that release must not give
            # the slot back a second time.)
            self._holding: set[Any] = set()

        async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
            if self._free > 0:
                self._free -= 1  # the uncontended path: no suspension, no gate
            else:
                await self._queue()
            try:
                connection = await super().get_connection(*args, **kwargs)
            except BaseException:
                self._give_back()
                raise
            self._holding.add(connection)
            return connection

        async def _queue(self) -> None:
            """Wait for a slot (it is then ours), then pass the gate."""
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[bool] = loop.create_future()
            self._waiters.append(waiter)
            timer = loop.call_later(self.timeout, _expire, waiter)
            try:
                granted = await waiter
            except BaseException:
                # Cancelled while queued. The slot may have been handed over just
                # before (the future done, this task not resumed yet): pass it on.
                if waiter.done() and not waiter.cancelled() and waiter.result():
                    self._give_back()
                raise
            finally:
                timer.cancel()
            if not granted:
                raise _timed_out(self)
            gate = self.gate
            if gate is not None:
                try:
                    gate()
                except BaseException:
                    self._give_back()
                    raise

        def _give_back(self) -> None:
            """Free one slot: to the oldest live waiter, else to the free count."""
            waiters = self._waiters
            while waiters:
                waiter = waiters.popleft()
                if not waiter.done():  # (timed out and cancelled waiters are done)
                    waiter.set_result(True)
                    return
            self._free += 1

        async def release(self, connection: Any) -> None:
            try:
                await super().release(connection)
            finally:
                if connection in self._holding:
                    self._holding.discard(connection)
                    self._give_back()

    return BoundedConnectionPool


class _Slots:
    """A count of free connection slots, for threads: taking one while one is free
    costs a C lock's acquire and release (``threading.Semaphore`` is written in
    Python and cost 2.4 µs per checkout, on a Redis hit of about 30 µs)."""

    __slots__ = ("_cond", "_free", "_lock", "_waiting")

    def __init__(self, count: int) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._free = count
        self._waiting = 0  # threads in take(): give() notifies only if there are

    def take_now(self) -> bool:
        with self._lock:
            if self._free > 0:
                self._free -= 1
                return True
            return False

    def take(self, timeout: float) -> bool:
        with self._lock:
            self._waiting += 1
            try:
                if not self._cond.wait_for(lambda: self._free > 0, timeout):
                    return False
            finally:
                self._waiting -= 1
            self._free -= 1
            return True

    def give(self) -> None:
        with self._lock:
            self._free += 1
            if self._waiting:
                self._cond.notify()


@functools.cache
def queued_pool_class(base: type[Any] | None = None) -> type[Any]:
    """The sync counterpart, over redis-py's ``ConnectionPool`` (or ``base``, the
    Sentinel pool): threads queue for a free connection for up to ``timeout``
    seconds, then get a ``PoolTimeoutError`` (not sent: circuit breakers do not
    count it). redis-py's plain pool raises ``MaxConnectionsError`` once 100
    connections are in use, which a herd of threads reached and the breaker took
    for a dead server (attack on issue 11: 200 threads, one cold key, 155 loads).

    ``gate``, as for the async pool, is called after a wait (never on the
    uncontended path): threads queued behind calls to a dead server fail at once
    when the breaker opens, instead of each waiting out a timeout in turn."""
    if base is None:
        from redis.connection import ConnectionPool

        base = ConnectionPool

    class QueuedConnectionPool(base):  # type: ignore[valid-type,misc]
        """``ConnectionPool`` whose threads wait (up to ``timeout``) for a slot."""

        def __init__(
            self,
            *args: Any,  # (the Sentinel pool takes its service and manager so)
            max_connections: int = DEFAULT_MAX_CONNECTIONS,
            timeout: float = DEFAULT_POOL_TIMEOUT,
            gate: Callable[[], None] | None = None,
            **kwargs: Any,
        ):
            self.timeout = timeout
            self.gate = gate
            super().__init__(*args, max_connections=max_connections, **kwargs)

        def reset(self) -> None:
            # Called by __init__ and, in a forked child, by redis-py on first use.
            # A connection remembers the semaphore it took its slot from, and gives
            # the slot back there: one taken in the parent, or just before a reset,
            # never inflates the fresh semaphore.
            super().reset()
            self._slots = _Slots(self.max_connections)
            self._holding: dict[Any, _Slots] = {}

        def get_connection(self, *args: Any, **kwargs: Any) -> Any:
            slots = self._slots
            if not slots.take_now():  # the uncontended path: no wait, no gate
                if not slots.take(self.timeout):
                    raise _timed_out(self)
                gate = self.gate
                if gate is not None:
                    try:
                        gate()
                    except BaseException:
                        slots.give()
                        raise
            try:
                connection = super().get_connection(*args, **kwargs)
            except BaseException:
                slots.give()
                raise
            self._holding[connection] = slots
            return connection

        def release(self, connection: Any) -> None:
            try:
                super().release(connection)
            finally:
                # (A connection that failed to connect was released by redis-py
                # already, inside get_connection: its slot goes back once.)
                slots = self._holding.pop(connection, None)
                if slots is not None:
                    slots.give()

    return QueuedConnectionPool
