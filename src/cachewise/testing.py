"""Test helpers: a fake clock you advance by hand.

clock = FakeClock()
cache = Cache(clock=clock, jitter=0)
cache.set("k", 1, ttl=10)
clock.advance(11)
assert cache.get("k") is MISSING
"""

from __future__ import annotations

import threading

__all__ = ["FakeClock"]


class FakeClock:
    """A clock that only moves when told to. Pass it as ``clock=`` to a cache.

    Thread-safe: loaders running in other threads may advance it to simulate a slow
    load (the cache measures load time with the same clock).
    """

    __slots__ = ("_lock", "_now")

    def __init__(self, start: float = 1_000_000.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self._now

    def now(self) -> float:
        """The current fake time, in seconds."""
        return self._now

    def advance(self, seconds: float) -> float:
        """Move time forward by ``seconds`` (``>= 0``) and return the new time."""
        if seconds < 0:
            raise ValueError(f"a clock only moves forward; got advance({seconds!r})")
        with self._lock:
            self._now += seconds
            return self._now

    def set(self, when: float) -> None:
        """Jump to an absolute time, forward only."""
        with self._lock:
            if when < self._now:
                raise ValueError(f"a clock only moves forward; {when!r} < {self._now!r}")
            self._now = float(when)

    def __repr__(self) -> str:
        return f"FakeClock({self._now!r})"
