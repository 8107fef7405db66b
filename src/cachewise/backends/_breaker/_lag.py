"""Whether the event loop runs late: the async breaker's excuse for a timeout.

Used by ``AsyncCircuitBreaker`` only (a sync call's socket timeout measures the
server alone).
"""

from __future__ import annotations

import asyncio
import weakref

#: How often the event-loop heartbeat runs, how late it must run to count as the
#: loop lagging, and how long that verdict lasts (a socket timeout and some).
_BEAT = 0.02
_LAG = 0.05
_LAG_MEMORY = 0.5


class _LoopLag:
    """Whether the running event loop has been late lately.

    An asyncio socket timeout fires when the loop gets round to it: on a loop too
    busy to run its callbacks on time, a call times out although the server
    answered. Such a timeout says nothing about the backend, so it must not open
    the breaker (the call still fails, and the cache degrades around it). A
    heartbeat callback every ``_BEAT`` seconds measures how late the loop runs.
    """

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._expected = 0.0
        self._lagging_until = float("-inf")

    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run the heartbeat on ``loop`` (the one calls run on now)."""
        if loop is self.loop:
            return
        self.stop()
        self.loop = loop
        self._schedule(loop)

    def watch_running(self) -> None:
        """Watch the running loop if the watched one is gone (``asyncio.run`` again)."""
        loop = self.loop
        if loop is None or loop.is_closed():
            self.watch(asyncio.get_running_loop())

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        self._expected = loop.time() + _BEAT
        # A weak reference: the heartbeat must not keep its owner alive.
        self._handle = loop.call_at(self._expected, _beat, weakref.ref(self))

    def beat(self) -> None:
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        now = loop.time()
        if now - self._expected > _LAG:
            self._lagging_until = now + _LAG_MEMORY
        self._schedule(loop)

    def lagging(self) -> bool:
        """Whether the loop ran late within the last ``_LAG_MEMORY`` seconds, or
        is late now (a heartbeat overdue: a task woken by its timeout can run
        before a heartbeat that was due earlier)."""
        loop = self.loop
        if loop is None:
            return False
        now = loop.time()
        return now <= self._lagging_until or now - self._expected > _LAG

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = None
        self.loop = None


def _beat(ref: weakref.ref[_LoopLag]) -> None:
    lag = ref()
    if lag is not None:
        lag.beat()


def _is_timeout(exc: BaseException) -> bool:
    # redis-py's TimeoutError is not the builtin one: match on the name.
    return any(cls.__name__ == "TimeoutError" for cls in type(exc).__mro__)
