"""Following a Sentinel failover without serving what the old master lost.

Redis replicates asynchronously. When Sentinel promotes a replica, the old master
goes on taking writes until Sentinel reconfigures it (about ten seconds later,
measured), and those writes are then lost: a delete among them brings the value
it removed back. redis-py only leaves the old master when it refuses a write.

So each Sentinel service has one ``MasterWatch`` in the process, shared by every
client cachewise builds for it (sync and async, reads and invalidations). Every
connection asks the watch before it sends: at most every ``WATCH_EVERY`` seconds
one sender asks the Sentinels which master is current; a connection to any other
address is dropped and reconnects through the Sentinels. Every connection to a
master reports it (``observe``) before it is used, so the first sign of a new
master, whoever sees it, reaches the watch before anything is sent there. The
watch then tells the caches on the service (``subscribe``): each holds a
``clear()`` of its namespace (reads are misses until it has landed on the new
master), which removes whatever the lost writes would have left stale.
"""

from __future__ import annotations

import functools
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from cachewise import _forksafe

#: How often the Sentinels are asked which master is current (per process and
#: service, by whichever connection sends first once it is due).
WATCH_EVERY = 0.1

Address = tuple[str, int]


class MasterWatch:
    """The master of one Sentinel service as this process last saw it."""

    def __init__(self, identity: str) -> None:
        self.identity = identity
        self._master: Address | None = None
        self._checked = float("-inf")
        self._lock = threading.Lock()
        self._asking = False  # one sender asks the Sentinels at a time
        self._subscribers: list[weakref.WeakMethod[Callable[[], None]]] = []
        _forksafe.register(self)

    def _fork_locks(self) -> list[threading.Lock]:
        return []  # (held only for a few assignments: replaced in the child)

    def _after_fork_child(self) -> None:
        self._lock = threading.Lock()
        self._asking = False  # (an asking thread of the parent is not in the child)

    @property
    def master(self) -> Address | None:
        return self._master

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (a bound method, held weakly) when the master changes."""
        with self._lock:
            self._subscribers = [ref for ref in self._subscribers if ref() is not None]
            self._subscribers.append(weakref.WeakMethod(callback))

    def due(self) -> bool:
        """Whether a sender should ask the Sentinels now (and it is the one to)."""
        if time.monotonic() - self._checked < WATCH_EVERY or self._asking:
            return False
        with self._lock:
            if self._asking:
                return False
            self._asking = True
        return True

    def asked(self, address: Any) -> None:
        """The Sentinels' answer (None: none answered) after ``due()`` said ask."""
        self._checked = time.monotonic()
        self._asking = False
        if address is not None:
            self.observe(address)

    def observe(self, address: Any) -> None:
        """A master address seen (named by the Sentinels, about to be connected to)."""
        seen = (str(address[0]), int(address[1]))
        with self._lock:
            old = self._master
            self._checked = time.monotonic()
            if old is None:
                self._master = seen
            callbacks = [ref() for ref in self._subscribers] if old not in (None, seen) else []
        if not callbacks and old is not None:
            return
        # The caches hold their clears before the new master is published: until
        # then every other connection (a concurrent reconnect too) still finds the
        # old one current, or sees the change itself and runs these first. Published
        # first, a read on another thread could reach the new master, and return
        # what the lost writes left there, before its cache held anything.
        for callback in callbacks:  # outside the lock: they take locks of their own
            if callback is not None:
                callback()
        with self._lock:
            self._master = seen

    def is_current(self, host: Any, port: Any) -> bool:
        master = self._master
        return master is None or (str(host), int(port)) == master


# Process-wide on purpose: one watch per Sentinel service records which master
# this process's connections last saw. Every connection of the process to that
# service must agree on it (a failover seen by one must reach every cache on it),
# so it is a fact about the process's view of the service, not any cache's state.
_watches: dict[str, MasterWatch] = {}
_watches_lock = threading.Lock()


def _fresh_lock_in_child() -> None:
    global _watches_lock
    _watches_lock = threading.Lock()  # (a parent's thread may have held it)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fresh_lock_in_child)


def master_watch(identity: str) -> MasterWatch:
    """The process' watch of the Sentinel service ``identity`` names."""
    with _watches_lock:
        watch = _watches.get(identity)
        if watch is None:
            watch = _watches[identity] = MasterWatch(identity)
        return watch


def existing_watch(identity: str) -> MasterWatch | None:
    with _watches_lock:
        return _watches.get(identity)


@functools.cache
def connection_classes() -> dict[tuple[str, bool], type[Any]]:
    """redis-py's Sentinel-managed connections (sync and async, plain and TLS) that
    check the watch before each send: {(flavour, tls): class}. Built on first use
    (redis-py is optional)."""
    from redis import sentinel
    from redis.asyncio import sentinel as asentinel
    from redis.exceptions import ConnectionError

    moved = "the Sentinels name another master now: reconnecting through them"

    class Watched(sentinel.SentinelManagedConnection):
        def __init__(self, **kwargs: Any) -> None:
            self.watch: MasterWatch = kwargs.pop("watch")
            super().__init__(**kwargs)  # type: ignore[no-untyped-call]

        def connect_to(self, address: Any) -> None:
            self.watch.observe(address)
            super().connect_to(address)  # type: ignore[no-untyped-call]

        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            watch = self.watch
            if watch.due():
                address = None
                try:
                    pool = self.connection_pool
                    address = pool.sentinel_manager.discover_master(pool.service_name)
                except Exception:  # no Sentinel answered: keep what we know
                    pass
                finally:
                    watch.asked(address)
            if self._sock is not None and not watch.is_current(self.host, self.port):
                self.disconnect()
                raise ConnectionError(moved)
            super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]

    class WatchedSSL(Watched, sentinel.SentinelManagedSSLConnection):
        pass

    class AsyncWatched(asentinel.SentinelManagedConnection):
        def __init__(self, **kwargs: Any) -> None:
            self.watch: MasterWatch = kwargs.pop("watch")
            super().__init__(**kwargs)  # type: ignore[no-untyped-call]

        async def connect_to(self, address: Any) -> None:
            self.watch.observe(address)
            await super().connect_to(address)  # type: ignore[no-untyped-call]

        async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            watch = self.watch
            if watch.due():
                address = None
                try:
                    pool = self.connection_pool
                    address = await pool.sentinel_manager.discover_master(pool.service_name)
                except Exception:  # no Sentinel answered: keep what we know
                    pass
                finally:
                    watch.asked(address)
            if self._reader is not None and not watch.is_current(self.host, self.port):
                await self.disconnect()
                raise ConnectionError(moved)
            await super().send_packed_command(command, check_health)

    class AsyncWatchedSSL(AsyncWatched, asentinel.SentinelManagedSSLConnection):
        pass

    return {
        ("sync", False): Watched,
        ("sync", True): WatchedSSL,
        ("async", False): AsyncWatched,
        ("async", True): AsyncWatchedSSL,
    }
