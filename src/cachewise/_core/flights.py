"""Single-flight bookkeeping: which keys have a load in flight, and whether a
finished load may still write its result.

This is the in-process form of the leases in Facebook's memcache paper (NSDI 2013):
a flight is a lease on one key. ``invalidate`` (called by ``delete`` and ``set``)
takes the flight out of the table and revokes its right to write, so

- a load that read old data before a write can never store it after the write's
  delete (no stale sets), and
- callers arriving after the delete start a fresh load instead of joining the old one.

The table is plain data. The front ends hold their own lock around every call; the waiting primitive
(a ``threading.Event`` or an ``asyncio.Event``) is theirs too, stored in ``handle``.
"""

from __future__ import annotations

import enum
from typing import Any, Generic, NamedTuple, TypeVar

from cachewise._core.entry import Entry
from cachewise._core.policy import superseded

H = TypeVar("H")


class Flight(Generic[H]):
    """One in-flight load of one key."""

    __slots__ = ("ended", "handle", "key", "leader", "tags", "valid", "waiters")

    def __init__(self, key: str, handle: H, tags: tuple[str, ...] = ()) -> None:
        self.key = key
        self.handle = handle
        # Who runs the load (a thread id or an asyncio task), for the front ends'
        # loader-cycle check; None until it is known.
        self.leader: object = None
        # The tags the load's entry will carry: invalidating one revokes the flight.
        self.tags = tags
        # Cleared by invalidate(); once False, the load's result must not be written.
        self.valid = True
        # Callers that joined instead of loading (for stats and tests).
        self.waiters = 0
        # Set once the load is over (its outcome published): a wait recorded
        # against it ends soon, whatever its leader does next.
        self.ended = False


class FlightTable(Generic[H]):
    """The flights of one cache, by full key."""

    __slots__ = ("_flights",)

    def __init__(self) -> None:
        self._flights: dict[str, Flight[H]] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def __contains__(self, key: str) -> bool:
        return key in self._flights

    def get(self, key: str) -> Flight[H] | None:
        """The current flight for ``key``, to join."""
        return self._flights.get(key)

    def start(self, key: str, handle: H, tags: tuple[str, ...] = ()) -> Flight[H]:
        """Register a new flight; the caller must have checked there is none."""
        flight = Flight(key, handle, tags)
        self._flights[key] = flight
        return flight

    def invalidate(self, key: str) -> Flight[H] | None:
        """Detach the flight for ``key`` and revoke its write.

        Returns it so an async front end can wait for a write already under way.
        """
        flight = self._flights.pop(key, None)
        if flight is not None:
            flight.valid = False
        return flight

    def invalidate_tagged(self, tags: tuple[str, ...]) -> list[Flight[H]]:
        """Detach and revoke the flights whose entries would carry any of ``tags``:
        callers after a tag invalidation must not join a load that started before
        it (O(flights in progress), a handful)."""
        wanted = set(tags)
        doomed = [key for key, flight in self._flights.items() if wanted.intersection(flight.tags)]
        return [f for f in map(self.invalidate, doomed) if f is not None]

    def invalidate_all(self) -> list[Flight[H]]:
        """Detach and revoke every flight (``clear()``)."""
        flights = list(self._flights.values())
        self._flights.clear()
        for flight in flights:
            flight.valid = False
        return flights

    def finish(self, flight: Flight[H]) -> None:
        """Remove a completed flight, unless a newer one has already replaced it."""
        flight.ended = True
        if self._flights.get(flight.key) is flight:
            del self._flights[flight.key]


class Served(enum.Enum):
    """How a read-through's value was obtained, for the counters."""

    HIT = "hit"
    STALE = "stale"
    LOAD = "load"


class JoinPoint(NamedTuple):
    """Where a load stood when a caller joined it."""

    started: bool  # the loader had been called
    sealed: bool  # the write had been sent
    reads: int  # lease reads the leader had sent


#: Where a load stands as it is made: nothing started, sealed or read.
BORN = JoinPoint(started=False, sealed=False, reads=0)


class LoadState:
    """How one flight's load went, as its joiners need to know: its outcome and
    the bookkeeping ``after_wait`` decides on. The front ends' flight handles
    extend it with their waiting primitives.

    On a lease backend another process's delete cannot revoke a local flight, so a
    joiner takes the outcome only when no delete that finished before it joined
    can be missing from it (``safe_for``).
    """

    __slots__ = (
        "abandoned",
        "born",
        "confirmed",
        "error",
        "negative",
        "reads",
        "sealed",
        "served",
        "served_read",
        "stale",
        "started",
        "unreached",
        "unwritten",
        "value",
    )

    def __init__(self) -> None:
        # The outcome: a value, or the error every caller gets.
        self.value: Any = None
        self.error: BaseException | None = None
        # The leader died of a BaseException (KeyboardInterrupt, a cancelled load
        # task) or could not run the refresh it registered: waiters read again.
        self.abandoned = False
        # How the value was obtained, for joiners' counters.
        self.served = Served.LOAD
        self.negative = False
        # A stale entry that may stand in for a failed load (stale-if-error).
        self.stale: Entry | None = None
        # started: the loader was called; sealed: the write was sent; confirmed:
        # the write held its lease, so no delete can have happened since the lease
        # was granted.
        self.started = False
        self.sealed = False
        self.confirmed = True
        # The backend failed this flight (a read, a lease wait or the write): a
        # joiner that may not take its value loads from the source at once rather
        # than ask the backend again and wait out a second timeout.
        self.unreached = False
        # Lease reads the leader has sent, and which of them (1-based) gave the
        # entry it served (0: none). A read sent after a joiner arrived is as
        # fresh as one the joiner would send.
        self.reads = 0
        self.served_read = 0
        # A load that reads nothing and writes nothing (the backend is unreachable,
        # or a held invalidation covers the key). Callers covered by a held
        # invalidation join only such a flight: any other may have read, or be
        # about to write, what the invalidation removes.
        self.unwritten = False
        # When the flight was made, on the front end's sequence of calls and
        # flights (0: unknown, never treated as after anyone's call).
        self.born = 0

    def join_point(self, since: int = 0) -> JoinPoint:
        """Where the load stands now (taken as a caller joins it). ``since``: where
        the caller's call began on the same sequence as ``born``. A caller that
        comes back to a flight made after its call began (it waited out an earlier
        flight it could not take) joins it as at its birth: every read and load of
        this flight began after the caller's call did, so nothing it misses can
        have happened before that call (without this, callers that retry
        together never catch a thread's load before it starts, and are served
        one per load)."""
        if since and self.born > since:
            return BORN
        return JoinPoint(self.started, self.sealed, self.reads)

    def safe_for(self, joined: JoinPoint) -> bool:
        """Whether a value (not an error) this load produced may go to a joiner
        that joined at ``joined``: the write held its lease and the joiner came
        before it was sent; or nothing confirmed it but the joiner came before the
        load began; or the leader read it with a read sent after the joiner came."""
        if self.served is not Served.LOAD:
            return self.served_read > joined.reads
        return not joined.sealed if self.confirmed else not joined.started


class Next(enum.Enum):
    """What a caller does once the flight it led or joined is over."""

    TAKE = "take"  # its outcome: the value, or the error
    RETRY = "retry"  # read again, from the start of the single-flight loop
    LOAD_UNWRITTEN = "load unwritten"  # load at once, reading and writing nothing


def after_wait(state: LoadState, joined: JoinPoint | None, leased: bool) -> Next:
    """The one rule for a caller whose flight is over. ``joined`` is where the
    load stood when the caller joined it (``None``: the caller led it);
    ``leased``: the backend has leases, so a delete in another process may be
    missing from a value this process loaded.

    An abandoned flight gave no outcome: read again. Errors are shared. A value a
    delete may predate goes only to callers ``safe_for`` it; the others read
    again, or, when the backend just failed that flight, load without it rather
    than wait out a second timeout.
    """
    if state.abandoned:
        return Next.RETRY
    if joined is None or not leased or state.error is not None or state.safe_for(joined):
        return Next.TAKE
    return Next.LOAD_UNWRITTEN if state.unreached else Next.RETRY


def refresh_granted(trigger: Entry, current: Entry | None, lease: bool | None) -> bool:
    """Whether a background refresh started by a hit on ``trigger`` runs, now that
    the key reads ``current``. ``lease``: whether the backend granted the refresh
    its lease (``None``: a backend without leases). Only the lease holder
    refreshes (one per key across processes), and nobody refreshes an entry
    something newer has already replaced."""
    return lease is not False and not superseded(trigger, current)
