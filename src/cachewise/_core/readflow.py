"""The read-through flow on a shared backend with leases, as a sans-I/O generator.

``leased_read`` yields the I/O it needs (``ReadStep``: read the key and maybe take
its lease; ``WaitStep``: block until the lease holder signals) and receives the
results; it returns what to do next (``Serve`` or ``LoadStep``). The sync and the
async front end each drive it with a small loop (the shape of httpx's
``Auth.auth_flow``), so the lease protocol is written once, with no clock reads,
no I/O and no locks in here: the driver sends the times in.

The protocol, per process (the in-process single-flight is already in front):

1. Read the key; on a miss the same round trip asks for the lease.
2. A usable value (fresh, early-refresh, or stale-while-revalidate) is served.
3. An unusable one (past its grace window, or stale with ``serve_stale=False``)
   means reloading: ask for the lease regardless of the value ("take").
4. Lease granted: load, then write while the lease is still ours.
5. Lease held elsewhere: wait for its holder's signal, at most until the lease
   would expire, then read again. A dead holder's lease expires and the next
   read takes it over.
6. Past ``wait_timeout``: load without a lease and without writing (fail open).
"""

from __future__ import annotations

import enum
from collections.abc import Generator
from dataclasses import dataclass
from typing import NamedTuple

from cachewise._core.entry import Entry
from cachewise._core.policy import Policy, Read, decide_read


class LeaseReply(NamedTuple):
    """What a read (with or without a lease request) found."""

    entry: Entry | None
    granted: bool
    held_for: float  # seconds the other holder's lease still runs
    #: A value was there but could not be decoded (a corrupt entry: a miss).
    unreadable: bool = False


class LeaseMode(str, enum.Enum):
    """What a read asks of the key's lease; backends take the ``value``."""

    LEASE = "lease"  # the lease, on a miss
    TAKE = "take"  # the lease whatever the value (it is unusable)
    REFRESH = "refresh"  # a background refresh's lease, with the entry it replaces


@dataclass(frozen=True, slots=True)
class ReadStep:
    """Read the key, asking for its lease per ``mode`` (``LEASE`` or ``TAKE``)."""

    mode: LeaseMode


@dataclass(frozen=True, slots=True)
class WaitStep:
    """Block until the lease holder signals, at most ``seconds``."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Observed:
    """Sent back for a ``ReadStep``: the reply, the cache clock, a monotonic
    clock for waiting, and a uniform draw in (0, 1] for XFetch."""

    reply: LeaseReply
    now: float
    monotonic: float
    u: float


@dataclass(frozen=True, slots=True)
class Serve:
    """Done: serve ``entry``. ``stale`` says it is past its TTL; ``refresh`` asks for
    one background refresh (XFetch picked this hit, or stale-while-revalidate)."""

    entry: Entry
    stale: bool
    refresh: bool


@dataclass(frozen=True, slots=True)
class LoadStep:
    """Done reading: call the loader. ``leased``: this caller holds the lease and
    writes the result; otherwise (fail open) the result is not written. ``stale``
    may stand in for a failed load (stale-if-error)."""

    leased: bool
    stale: Entry | None


Step = ReadStep | WaitStep
Outcome = Serve | LoadStep


def leased_read(
    policy: Policy, wait_timeout: float, found: Entry | None = None, stale: Entry | None = None
) -> Generator[Step, Observed | None, Outcome]:
    """The flow described in the module docstring. Send an ``Observed`` after each
    ``ReadStep`` and ``None`` after each ``WaitStep``.

    ``found`` is an unusable entry the caller's own read already saw (expired, or
    stale with ``serve_stale=False``): the flow then asks for the lease at once
    ("take") instead of reading it again. ``stale`` may stand in for a failed load.
    """
    mode = LeaseMode.LEASE if found is None else LeaseMode.TAKE
    deadline: float | None = None
    while True:
        observed = yield ReadStep(mode)
        assert observed is not None
        reply = observed.reply
        if reply.entry is not None:  # only LEASE reads return a value
            action = decide_read(reply.entry, observed.now, observed.u, policy)
            if action is Read.HIT:
                return Serve(reply.entry, stale=False, refresh=False)
            if action is Read.HIT_REFRESH:
                return Serve(reply.entry, stale=False, refresh=True)
            if action is Read.STALE_REFRESH:
                return Serve(reply.entry, stale=True, refresh=True)
            if action is Read.LOAD_OR_STALE:
                stale = reply.entry
            mode = LeaseMode.TAKE  # unusable: ask for the lease whatever the value
            continue
        if reply.unreadable:
            mode = LeaseMode.TAKE  # a corrupt value is a miss: reload over it
            continue
        if reply.granted:
            return LoadStep(leased=True, stale=stale)
        if deadline is None:
            deadline = observed.monotonic + wait_timeout
        remaining = deadline - observed.monotonic
        if remaining <= 0.0:
            return LoadStep(leased=False, stale=stale)
        # Never past the holder's lease: once it expires the next read takes over.
        yield WaitStep(min(max(reply.held_for, 0.001), remaining))
        mode = LeaseMode.LEASE
