"""The circuit breaker's state machine: pure, with the time passed in.

CLOSED: calls go through; failures are counted. It opens when the last
``failure_threshold`` calls all failed, or when at least ``min_calls`` of the calls
in the last ``window`` seconds were made and ``failure_ratio`` of them failed.

OPEN: calls are refused at once (the front end goes straight to the loader) until
``open_seconds`` have passed.

HALF_OPEN: one probe call at a time is let through. Its success closes the
breaker; its failure opens it again for another ``open_seconds``.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass


class State(enum.Enum):
    """Where the breaker is."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When to open and for how long. The defaults close within about a second
    (and well inside three) of the backend coming back."""

    failure_threshold: int = 5
    failure_ratio: float = 0.5
    min_calls: int = 20
    window: float = 10.0
    open_seconds: float = 1.0

    def __post_init__(self) -> None:
        for name in ("failure_threshold", "min_calls"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not 0.0 < self.failure_ratio <= 1.0:
            raise ValueError(f"failure_ratio must be in (0, 1], got {self.failure_ratio!r}")
        _positive("window", self.window)
        _positive("open_seconds", self.open_seconds)


class Breaker:
    """The state machine. Not thread-safe: the wrapper holds a lock around it."""

    __slots__ = ("_calls", "_consecutive", "_opened_at", "_probing", "opens", "policy", "state")

    def __init__(self, policy: BreakerPolicy | None = None) -> None:
        self.policy = policy or BreakerPolicy()
        self.state = State.CLOSED
        self.opens = 0  # how many times it opened
        self._consecutive = 0
        self._calls: deque[tuple[float, bool]] = deque()  # (when, failed) in the window
        self._opened_at = 0.0
        self._probing = False

    def allow(self, now: float) -> bool:
        """Whether a call may go to the backend now (a probe, when half-open)."""
        if self.state is State.CLOSED:
            return True
        if self.state is State.OPEN:
            if now - self._opened_at < self.policy.open_seconds:
                return False
            self.state = State.HALF_OPEN
            self._probing = False
        if self._probing:
            return False  # one probe at a time
        self._probing = True
        return True

    def success(self, now: float) -> State | None:
        """Record a successful call; the new state if it changed."""
        self._consecutive = 0
        if self.state is State.HALF_OPEN:
            self._reset()
            self.state = State.CLOSED
            return State.CLOSED
        self._record(now, failed=False)
        return None

    def failure(self, now: float) -> State | None:
        """Record a failed call; the new state if it changed."""
        if self.state is State.HALF_OPEN:
            return self._open(now)
        if self.state is State.OPEN:
            return None
        self._consecutive += 1
        self._record(now, failed=True)
        policy = self.policy
        if self._consecutive >= policy.failure_threshold:
            return self._open(now)
        if len(self._calls) >= policy.min_calls:
            failed = sum(1 for _, bad in self._calls if bad)
            if failed >= policy.failure_ratio * len(self._calls):
                return self._open(now)
        return None

    def cancel_probe(self) -> None:
        """The probe never reached the backend (bad input): let another call probe."""
        self._probing = False

    def _record(self, now: float, *, failed: bool) -> None:
        calls = self._calls
        calls.append((now, failed))
        horizon = now - self.policy.window
        while calls and calls[0][0] < horizon:
            calls.popleft()

    def _open(self, now: float) -> State:
        self.state = State.OPEN
        self._opened_at = now
        self._probing = False
        self.opens += 1
        self._reset()
        return State.OPEN

    def _reset(self) -> None:
        self._consecutive = 0
        self._calls.clear()
