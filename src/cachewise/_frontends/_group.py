"""``CacheGroup``: the state caches of one process share, as an object you can see.

Caches of one process do not live alone. A ``Cache`` and an ``AsyncCache`` on one
Redis server and namespace must read around each other's held invalidations (a
delete that failed in one leaves the old value for both); the interpreter's exit
gives every cache still holding one a last try; and the after-commit helpers of
``cachewise.integrations`` count the invalidations that failed. All of that
belongs to a group: ``CacheGroup.default`` unless a cache is given ``group=``.
"""

from __future__ import annotations

import atexit
import threading
import time
import weakref
from typing import ClassVar

from cachewise import _forksafe
from cachewise._frontends._held import HeldInvalidations, HeldMixin

__all__ = ["CacheGroup"]

#: How long the interpreter's exit waits for the last tries, all caches together.
EXIT_SETTLE_LIMIT = 5.0


class CacheGroup:
    """Caches that share in-process state with each other.

    - Held invalidations: caches of a group made by ``from_url`` on one server
      and namespace share what they hold (an invalidation one of them could not
      deliver is a miss in all of them until it lands).
    - The exit: at interpreter exit, every open cache of every group that still
      holds an invalidation gets one last try at it.
    - ``invalidation_errors``: after-commit invalidations of its caches that
      failed (``cachewise.integrations``).

    A cache joins with ``Cache(..., group=...)`` (or ``from_url(..., group=...)``);
    without one it joins ``CacheGroup.default``, the process-wide group. A group of
    its own isolates a set of caches: tests, or tenants that must not see each
    other's failures. A group holds its caches weakly: a dropped cache leaves it.
    """

    #: The process-wide group of every cache made without ``group=``.
    default: ClassVar[CacheGroup]

    def __init__(self, name: str = "") -> None:
        """``name`` is for ``repr`` only."""
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__}")
        self.name = name
        self._lock = threading.Lock()
        # (server, key prefix) -> the held invalidations its caches share; alive as
        # long as a cache references them.
        self._held: weakref.WeakValueDictionary[tuple[str, str], HeldInvalidations] = (
            weakref.WeakValueDictionary()
        )
        # Caches that held an invalidation: the exit gives each one last try (its
        # settler is a daemon thread and dies with the interpreter).
        self._holding: weakref.WeakSet[HeldMixin] = weakref.WeakSet()
        self._invalidation_errors = 0
        _forksafe.register(self)
        _groups.add(self)

    def __repr__(self) -> str:
        name = f" {self.name!r}" if self.name else ""
        return f"<CacheGroup{name} at {id(self):#x}>"

    @property
    def invalidation_errors(self) -> int:
        """How many after-commit invalidation calls of this group's caches failed
        (see ``cachewise.integrations.invalidation_errors``)."""
        return self._invalidation_errors

    # -- for the caches and the integrations --------------------------------------

    def _shared_held(self, server: str, prefix: str, own: HeldInvalidations) -> HeldInvalidations:
        """The held invalidations of the caches on ``server`` under ``prefix``:
        ``own`` if it is the first cache there."""
        with self._lock:
            held = self._held.get((server, prefix))
            if held is None:
                self._held[(server, prefix)] = held = own
            return held

    def _holds(self, cache: HeldMixin) -> None:
        """``cache`` held an invalidation: it gets one last try at exit."""
        with self._lock:
            self._holding.add(cache)

    def _holders(self) -> list[HeldMixin]:
        with self._lock:
            return [cache for cache in self._holding if not cache._closed]

    def _count_invalidation_error(self) -> None:
        with self._lock:
            self._invalidation_errors += 1

    # -- fork ------------------------------------------------------------------------

    def _fork_locks(self) -> list[threading.Lock]:
        return [self._lock]

    def _after_fork_child(self) -> None:
        self._lock = threading.Lock()


# Every live group, for the exit. A process fact: the interpreter exits once for all
# of them, and one deadline bounds the last tries of all their caches together.
_groups: weakref.WeakSet[CacheGroup] = weakref.WeakSet()

CacheGroup.default = CacheGroup("default")


def _settle_at_exit() -> None:
    # The last tries run side by side: while the server is down each waits out
    # its socket timeout, and one after another, a cache per tenant would hold the
    # exit for seconds. Where the interpreter refuses new threads this late
    # (3.12+), one after another it is.
    # Past the limit nothing more is tried, and whatever is still held is named in
    # an ERROR (a try cut off at the limit dies with its daemon thread, silently).
    deadline = time.monotonic() + EXIT_SETTLE_LIMIT
    caches = [cache for group in list(_groups) for cache in group._holders()]
    started: list[tuple[HeldMixin, threading.Thread]] = []
    for cache in caches:
        thread = threading.Thread(target=cache._last_settle, daemon=True)
        try:
            thread.start()
        except RuntimeError:
            cache._last_settle(attempt=time.monotonic() < deadline)
        else:
            started.append((cache, thread))
    for cache, thread in started:
        thread.join(max(deadline - time.monotonic(), 0.0))
        if thread.is_alive():
            cache._last_settle(attempt=False)  # (only logs what it still holds)


atexit.register(_settle_at_exit)
