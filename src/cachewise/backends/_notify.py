"""Lease-release notifications over Redis pub/sub: one connection per backend,
multiplexing every key a process waits for.

Waiting used to be a ``BLPOP`` per waiting key on a pooled connection. With more
keys waited for than pooled connections, pool timeouts opened the breaker and
unrelated hot keys stopped hitting (break 11 of issue 9); and each poll bumped a
counter that left notify tokens behind, making the next wait spin (break 19).

Now a lease holder that finishes (writes, releases, or loses its lease to a delete)
``PUBLISH``es the key on one channel, from the same Lua script, when a waiter
flagged the key. One listener thread per backend holds the only subscribed
connection and wakes the local waiters of that key. Waiting holds no pooled
connection at all.

Pub/sub is lossy: a message sent while the listener is disconnected is gone. So a
wait only relies on it while the listener is subscribed; a (re)subscription wakes
every waiter (they read again), and without a live subscription a waiter sleeps a
short poll interval instead. A silent connection (a black hole) delivers nothing
and raises nothing, so the listener pings the server every ``_PING_EVERY`` seconds
and gives the connection up when no pong came within its socket timeout: waiters
are then woken as *failed* and load at once (one timeout, as a failed read would
cost), instead of waiting for a lease that may never be reported released.
Publishes to the channel also reach other processes and databases on the server:
a wake-up for a key nobody here waits for is dropped, and a spurious wake-up only
costs one read.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("cachewise")

#: The channel every lease-release notification goes to (message: the key).
CHANNEL = "cachewise:lease-released"

#: Reconnect backoff of the listener after a failure: first, then at most.
_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 1.0
#: How often the listener pings, and so how long one listen call blocks.
_PING_EVERY = 0.1

#: A waiter's wake-up: ``wake(failed)``; ``failed`` means the notifications are
#: gone (the connection died) rather than that the lease ended.
Waker = Callable[[bool], None]


class Notifier:
    """The listener of one backend: who waits for which key, and the thread that
    wakes them. Thread-safe; waiters may be threads or event-loop callbacks."""

    def __init__(
        self,
        connect: Callable[[], Any],
        *,
        timeout: float = 0.25,
        name: str = "cachewise-notify",
    ) -> None:
        """``connect()`` returns a sync redis-py ``PubSub`` (``client.pubsub()``);
        ``timeout`` is its socket timeout: no pong for that long means the
        connection is gone."""
        self._connect = connect
        self._timeout = max(timeout, 2 * _PING_EVERY)
        self._name = name
        self._lock = threading.Lock()
        self._waiters: dict[str, set[Waker]] = {}
        self._thread: threading.Thread | None = None
        self._closed = False
        # Invariant: live is True only while the listener is subscribed and has
        # been since the last (re)subscription woke every waiter. epoch counts
        # subscriptions, so a waiter can tell that messages may have been lost.
        self.live = False
        self.epoch = 0
        self._pid = os.getpid()

    # -- waiters -----------------------------------------------------------------

    def watch(self, key: str, wake: Waker) -> None:
        """Call ``wake(False)`` (from the listener thread) when ``key`` is released
        or notifications may have been lost, ``wake(True)`` when the connection
        died. Starts the listener if needed."""
        with self._lock:
            self._waiters.setdefault(key, set()).add(wake)
        self._ensure_running()

    def unwatch(self, key: str, wake: Waker) -> None:
        with self._lock:
            wakers = self._waiters.get(key)
            if wakers is not None:
                wakers.discard(wake)
                if not wakers:
                    del self._waiters[key]

    def _wake(self, key: str) -> None:
        with self._lock:
            wakers = list(self._waiters.get(key, ()))
        for wake in wakers:
            _call(wake, False)

    def _wake_everyone(self, failed: bool = False) -> None:
        with self._lock:
            wakers = [w for group in self._waiters.values() for w in group]
        for wake in wakers:
            _call(wake, failed)

    # -- the listener ----------------------------------------------------------------

    def _ensure_running(self) -> None:
        if self._pid != os.getpid():  # a forked child: the parent's thread is not here
            self._after_fork()
        thread = self._thread
        if self._closed or (thread is not None and thread.is_alive()):
            return
        with self._lock:
            if self._closed or (self._thread is not None and self._thread.is_alive()):
                return
            # A daemon: an application that never closes its cache must still exit.
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        backoff = _BACKOFF_FIRST
        while not self._closed:
            pubsub: Any = None
            failed = False
            try:
                pubsub = self._connect()
                pubsub.subscribe(CHANNEL)
                last_ping = last_pong = last_turn = time.monotonic()
                while not self._closed:
                    now = time.monotonic()
                    if now - last_turn > 2 * _PING_EVERY:
                        # This thread did not run for a while (the GIL held by a long
                        # C call, a busy process): the server was not silent, we were
                        # not listening. Give it a fresh ping's time before judging.
                        last_pong = now
                    last_turn = now
                    if now - last_pong > self._timeout:
                        raise TimeoutError("no pong from the server: the connection is gone")
                    if now - last_ping >= _PING_EVERY:
                        pubsub.ping()
                        last_ping = now
                    message = pubsub.get_message(timeout=_PING_EVERY)
                    if message is None:
                        continue
                    # Anything read proves the connection alive: on a busy channel
                    # (a fleet's releases for other keys) the pong waits in line
                    # behind them, and judging by pongs alone would call a live
                    # connection dead.
                    last_pong = time.monotonic()
                    kind = message.get("type")
                    if kind == "message":
                        data = message.get("data")
                        if isinstance(data, bytes):
                            data = data.decode("utf-8", "replace")
                        if isinstance(data, str):
                            self._wake(data)
                    elif kind == "subscribe":
                        self.epoch += 1
                        self.live = True
                        backoff = _BACKOFF_FIRST
                        # Anything published before now may have been missed.
                        self._wake_everyone()
            except Exception as exc:
                failed = True
                if not self._closed:
                    logger.debug("cachewise: lease notifications interrupted: %r", exc)
            finally:
                self.live = False
                # Waiters must not wait blind: a dead connection fails them (they
                # load now); a close lets them read again.
                self._wake_everyone(failed=failed)
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:
                        pass
            if not self._closed:
                time.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)

    def close(self) -> None:
        """Stop the listener (it notices within a listen interval) and wake every
        waiter."""
        self._closed = True
        self.live = False
        self._wake_everyone()

    def _after_fork(self) -> None:
        # In a forked child the listener thread does not exist and its connection
        # belongs to the parent: start afresh (lazily), with a new lock.
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._thread = None
        self.live = False
        self._waiters = {}


def _call(wake: Waker, failed: bool) -> None:
    try:
        wake(failed)
    except Exception:  # a waiter's loop closed: nobody waits there any more
        pass


class ThreadWaiter:
    """One waiting thread: an event the listener sets."""

    __slots__ = ("event", "failed")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.failed = False

    def __call__(self, failed: bool) -> None:
        self.failed = self.failed or failed
        self.event.set()


class LoopWaiter:
    """One waiting coroutine: a future on its event loop, resolved from the
    listener thread (its result says whether the notifications failed)."""

    __slots__ = ("future", "loop")

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.future: asyncio.Future[bool] = self.loop.create_future()

    def __call__(self, failed: bool) -> None:
        self.loop.call_soon_threadsafe(_resolve, self.future, failed)


def _resolve(future: asyncio.Future[bool], failed: bool) -> None:
    if not future.done():
        future.set_result(failed)
