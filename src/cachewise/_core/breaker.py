"""The circuit breaker's state machine: pure, with the time passed in.

CLOSED: calls go through; failures are counted. It opens when the last
``failure_threshold`` calls all failed, or when at least ``min_calls`` of the calls
in the last ``window`` seconds were made and ``failure_ratio`` of them failed. The
window is kept as ten buckets of counts (so it is exact to a tenth of its length,
and each call costs O(1) time and memory, however many calls a second there are).

OPEN: calls are refused at once (the front end goes straight to the loader) until
``open_seconds`` have passed.

HALF_OPEN: one probe call at a time is let through. Its success closes the
breaker; its failure opens it again for another ``open_seconds``. A probe that ends
without a verdict (cancelled, interrupted, or refused as bad input) frees the way
for the next call to probe; only that probe can, so ``admit`` numbers each probe.
And a probe still outstanding after ``probe_timeout`` no longer blocks the next
one (a call that hangs, or whose end was never reported, must not keep the
breaker half-open, and the cache bypassed, for good).
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass

#: The window's resolution: it is kept as this many buckets of counts.
_BUCKETS = 10


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


_HALF_OPEN = State.HALF_OPEN  # (a module global: cheaper than the class attribute)

#: What ``Breaker.admit`` answers for a refused call, and for an ordinary call
#: (closed); a probe gets its number, which is > 0.
REFUSED = -1
PASS = 0


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When to open and for how long. The defaults close within about a second
    (and well inside three) of the backend coming back."""

    failure_threshold: int = 5
    failure_ratio: float = 0.5
    min_calls: int = 20
    window: float = 10.0
    open_seconds: float = 1.0
    #: How long a half-open probe may be outstanding before another call may
    #: probe; ``None``: ``open_seconds`` (at most one probe per open period).
    probe_timeout: float | None = None

    def __post_init__(self) -> None:
        for name in ("failure_threshold", "min_calls"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if isinstance(self.failure_ratio, bool) or not isinstance(self.failure_ratio, (int, float)):
            raise TypeError("failure_ratio must be a number")
        if not 0.0 < self.failure_ratio <= 1.0:
            raise ValueError(f"failure_ratio must be in (0, 1], got {self.failure_ratio!r}")
        _positive("window", self.window)
        _positive("open_seconds", self.open_seconds)
        if self.probe_timeout is not None:
            _positive("probe_timeout", self.probe_timeout)

    @property
    def probe_deadline(self) -> float:
        """``probe_timeout``, or ``open_seconds`` when it is ``None``."""
        return self.open_seconds if self.probe_timeout is None else self.probe_timeout


class Breaker:
    """The state machine. Not thread-safe: the wrapper holds a lock around it."""

    __slots__ = (
        "_buckets",
        "_calls",
        "_consecutive",
        "_failed",
        "_opened_at",
        "_probe",
        "_probe_since",
        "_probes",
        "_width",
        "opens",
        "policy",
        "state",
    )

    def __init__(self, policy: BreakerPolicy | None = None) -> None:
        self.policy = policy or BreakerPolicy()
        self.state = State.CLOSED
        self.opens = 0  # how many times it opened
        self._consecutive = 0
        # The window: [start, calls, failures] per bucket, oldest first, and the
        # totals over them (invariant: the sums of the buckets' counts).
        self._buckets: deque[list[float]] = deque()
        self._width = self.policy.window / _BUCKETS
        self._calls = 0
        self._failed = 0
        self._opened_at = 0.0
        # The outstanding half-open probe's number (0: none), when it started, and
        # the last number handed out.
        self._probe = 0
        self._probe_since = 0.0
        self._probes = 0

    def allow(self, now: float) -> bool:
        """Whether a call may go to the backend now (a probe, when half-open)."""
        return self.admit(now) != REFUSED

    def admit(self, now: float) -> int:
        """Whether a call may go to the backend now: ``REFUSED``, ``PASS`` (closed),
        or, half-open, the number of the probe this call is (> 0), which only that
        call may give back (``cancel_probe``)."""
        if self.state is State.CLOSED:
            return PASS
        if self.state is State.OPEN:
            if now - self._opened_at < self.policy.open_seconds:
                return REFUSED
            self.state = State.HALF_OPEN
            self._probe = 0
        elif self._probe and now - self._probe_since < self.policy.probe_deadline:
            return REFUSED  # one probe at a time
        # No probe outstanding, or it is overdue: this call probes. (An overdue
        # probe's verdict still counts if it comes; its cancel_probe no longer
        # frees anything.)
        self._probes += 1
        self._probe = self._probes
        self._probe_since = now
        return self._probe

    def success(self, now: float) -> State | None:
        """Record a successful call; the new state if it changed."""
        self._consecutive = 0
        if self.state is _HALF_OPEN:
            self._reset()
            self._probe = 0
            self.state = State.CLOSED
            return State.CLOSED
        # _record's common case, inlined: this runs on every call that succeeds.
        buckets = self._buckets
        if buckets and now < buckets[-1][0] + self._width:
            buckets[-1][1] += 1
            self._calls += 1
        else:
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
        if self._calls >= policy.min_calls and self._failed >= policy.failure_ratio * self._calls:
            return self._open(now)
        return None

    def cancel_probe(self, probe: int) -> None:
        """Probe ``probe`` ended without a verdict (cancelled, interrupted, bad
        input): let the next call probe. A no-op for any other number (0, or a probe
        that was overtaken): a call that is not the probe cannot free the probe."""
        if probe > 0 and probe == self._probe:
            self._probe = 0

    def _record(self, now: float, *, failed: bool) -> None:
        buckets = self._buckets
        width = self._width
        if not buckets or now >= buckets[-1][0] + width:
            buckets.append([math.floor(now / width) * width, 0, 0])
            horizon = now - self.policy.window
            while buckets[0][0] + width <= horizon:  # wholly out of the window
                _, calls, failures = buckets.popleft()
                self._calls -= int(calls)
                self._failed -= int(failures)
        last = buckets[-1]  # (a clock that went back counts in the newest bucket)
        last[1] += 1
        self._calls += 1
        if failed:
            last[2] += 1
            self._failed += 1

    def _open(self, now: float) -> State:
        self.state = State.OPEN
        self._opened_at = now
        self._probe = 0
        self.opens += 1
        self._reset()
        return State.OPEN

    def _reset(self) -> None:
        self._consecutive = 0
        self._buckets.clear()
        self._calls = 0
        self._failed = 0
