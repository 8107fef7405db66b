"""Test helpers: a fake clock you advance by hand, and the backend conformance suite.

clock = FakeClock()
cache = Cache(clock=clock, jitter=0)
cache.set("k", 1, ttl=10)
clock.advance(11)
assert cache.get("k") is MISSING

``BackendConformance`` and ``AsyncBackendConformance`` (in
``cachewise.testing.conformance``) test a backend against the backend protocol;
subclass one in a pytest module. They are imported on first use, so this module
imports without pytest, which is not a dependency of cachewise.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cachewise.testing.conformance import AsyncBackendConformance, BackendConformance

__all__ = ["AsyncBackendConformance", "BackendConformance", "FakeClock"]

_SUITES = frozenset({"AsyncBackendConformance", "BackendConformance"})


def __getattr__(name: str) -> Any:
    # The suites need pytest: import them only when asked for.
    if name in _SUITES:
        try:
            from cachewise.testing import conformance
        except ImportError as exc:
            raise ImportError(f"cachewise.testing.{name} needs pytest: {exc}") from exc
        return getattr(conformance, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
