"""Freshness policy: TTL jitter, negative caching, XFetch early refresh, stale windows.

Every function here is pure. Times are seconds on the caller's clock; ``u`` is a
uniform random number the caller draws.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from cachewise._core.entry import Entry

#: A hit earlier than ``expires_at - EARLY_HORIZON * delta * beta`` skips the random
#: draw. XFetch refreshes when ``delta * beta * -ln(u) >= expires_at - now``; the left
#: side is ``delta * beta`` times an Exp(1) variable, which exceeds 25 with
#: probability e^-25 ~ 1.4e-11. Truncating there changes nothing measurable and keeps
#: the common hit to one comparison.
EARLY_HORIZON = 25.0


def _is_none(value: Any) -> bool:
    return value is None


#: What a duration option or per-call TTL may be: seconds, or a ``timedelta``.
Seconds = float | timedelta


def _real(name: str, value: object) -> float:
    # bool is an int subclass; ttl=True is a mistake, not one second.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    result = float(value)
    if not math.isfinite(result):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return result


#: The longest duration any option or per-call TTL may have (about 31 million
#: years). Every backend can store it: Redis takes expiries in milliseconds up to
#: 2**63, and a lifetime is at most twice the TTL (jitter) plus the grace window
#: plus a margin. A longer one is a ``ValueError`` at the call, never a write that
#: the backend refuses later.
MAX_SECONDS = 1e15


def check_seconds(name: str, value: object) -> float:
    """Validate a duration option: a finite number of seconds, or a ``timedelta``,
    in ``[0, MAX_SECONDS]``; the seconds as a float."""
    if isinstance(value, timedelta):
        result = value.total_seconds()  # (always finite)
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{name} must be a number of seconds or a timedelta, not {type(value).__name__}"
        )
    else:
        result = _real(name, value)
    shown = f"{value!r} ({result:g} s)" if isinstance(value, timedelta) else repr(value)
    if result < 0:
        raise ValueError(f"{name} must be >= 0, got {shown}")
    if result > MAX_SECONDS:
        raise ValueError(
            f"{name} must be at most {MAX_SECONDS:g} seconds (no backend stores a longer "
            f"lifetime), got {shown}"
        )
    return result


@dataclass(frozen=True, slots=True)
class Policy:
    """The validated freshness options of one cache."""

    ttl: float = 300.0
    jitter: float = 0.1
    stale_ttl: float = 0.0
    negative_ttl: float = 30.0
    early_refresh: float = 1.0
    serve_stale: bool = True
    is_negative: Callable[[Any], bool] = _is_none

    def __post_init__(self) -> None:
        # frozen: assign through object.__setattr__ after normalising.
        for name in ("ttl", "stale_ttl", "negative_ttl"):
            object.__setattr__(self, name, check_seconds(name, getattr(self, name)))
        # XFetch's beta is a factor, not a duration: no timedelta.
        _real("early_refresh", self.early_refresh)
        object.__setattr__(
            self, "early_refresh", check_seconds("early_refresh", self.early_refresh)
        )
        jitter = _real("jitter", self.jitter)
        if not 0.0 <= jitter < 1.0:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter!r}")
        object.__setattr__(self, "jitter", jitter)
        if not callable(self.is_negative):
            raise TypeError("is_negative must be callable")

    def base_ttl(self, ttl: float | None, negative: bool) -> float:
        """The un-jittered lifetime of a write: per-call ``ttl`` or the default, and
        for a negative result ``negative_ttl`` capped by it."""
        base = self.ttl if ttl is None else ttl
        return min(self.negative_ttl, base) if negative else base


def jittered(ttl: float, jitter: float, u: float) -> float:
    """Spread ``ttl`` uniformly over ``[ttl*(1-jitter), ttl*(1+jitter)]``; ``u`` in [0, 1)."""
    return ttl * (1.0 - jitter + 2.0 * jitter * u)


def refresh_horizon(expires_at: float, delta: float, beta: float) -> float:
    """The instant before which a hit needs no early-refresh draw (see EARLY_HORIZON)."""
    if beta <= 0.0 or delta <= 0.0:
        return expires_at
    return expires_at - EARLY_HORIZON * delta * beta


def make_entry(
    value: Any,
    *,
    now: float,
    ttl: float | None,
    delta: float,
    policy: Policy,
    u: float,
    negative: bool = False,
    tags: tuple[str, ...] = (),
    stamp: Any = None,
) -> Entry | None:
    """Build the entry for a write at ``now``, or ``None`` when it must not be stored
    (a lifetime of zero: ``ttl=0``, or ``negative_ttl=0`` for a negative result).

    Negative entries get no grace window and no early refresh: "not found" is cached
    briefly and then asked again, never served stale.
    """
    base = policy.base_ttl(ttl, negative)
    if base <= 0.0:
        return None
    expires_at = now + jittered(base, policy.jitter, u)
    if negative:
        return Entry(value, expires_at, expires_at, expires_at, delta, True, now, tags, stamp)
    return Entry(
        value,
        expires_at,
        expires_at + policy.stale_ttl,
        refresh_horizon(expires_at, delta, policy.early_refresh),
        delta,
        False,
        now,
        tags,
        stamp,
    )


class Freshness(enum.IntEnum):
    """What an entry is worth at a given instant."""

    FRESH = 0
    EARLY = 1  # fresh, and XFetch picked this hit to refresh it early
    STALE = 2  # past its TTL, inside the grace window
    EXPIRED = 3


def classify(entry: Entry, now: float, beta: float, u: float) -> Freshness:
    """XFetch (Vattani, Chierichetti, Lowenstein, VLDB 2015): refresh early when
    ``now - delta * beta * ln(u) >= expires_at``, with ``u`` uniform in (0, 1]."""
    if now < entry.expires_at:
        if (
            now >= entry.refresh_at
            and beta > 0.0
            and entry.delta > 0.0
            and now - entry.delta * beta * math.log(u) >= entry.expires_at
        ):
            return Freshness.EARLY
        return Freshness.FRESH
    if now < entry.stale_until:
        return Freshness.STALE
    return Freshness.EXPIRED


class Read(enum.IntEnum):
    """The action a read-through (``get_or_load``) takes for an entry."""

    HIT = 0  # serve the value
    HIT_REFRESH = 1  # serve it and start one early refresh in the background
    STALE_REFRESH = 2  # serve the stale value and start one background refresh
    LOAD_OR_STALE = 3  # load and wait; if the load fails, serve the stale value
    LOAD = 4  # a miss: load and wait


def decide_read(entry: Entry | None, now: float, u: float, policy: Policy) -> Read:
    """Decide what ``get_or_load`` does with what the backend returned."""
    if entry is None:
        return Read.LOAD
    fresh = classify(entry, now, policy.early_refresh, u)
    if fresh is Freshness.FRESH:
        return Read.HIT
    if fresh is Freshness.EARLY:
        return Read.HIT_REFRESH
    if fresh is Freshness.STALE:
        return Read.STALE_REFRESH if policy.serve_stale else Read.LOAD_OR_STALE
    return Read.LOAD


def is_fresh(entry: Entry, now: float) -> bool:
    """Whether a plain ``get`` may return the entry (no loader, so never stale)."""
    return now < entry.expires_at


def stale_servable(entry: Entry | None, now: float) -> bool:
    """Stale-if-error: whether ``entry`` may stand in for a failed load at ``now``."""
    return entry is not None and not entry.negative and now < entry.stale_until


def superseded(trigger: Entry, current: Entry | None) -> bool:
    """Whether ``current`` (read now) is a newer write than ``trigger`` (the entry a
    hit decided to refresh). A hit may read the old entry just before an earlier
    refresh lands and then start its own: this check lets that second refresh stand
    down. A missing entry (deleted, evicted) is not newer: the refresh goes on."""
    if current is None:
        return False
    return (current.written_at, current.expires_at) != (trigger.written_at, trigger.expires_at)
