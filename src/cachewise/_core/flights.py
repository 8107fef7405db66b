"""Single-flight bookkeeping: which keys have a load in flight, and whether a
finished load may still write its result.

This is the in-process form of the leases in Facebook's memcache paper (NSDI 2013):
a flight is a lease on one key. ``invalidate`` (called by ``delete`` and ``set``)
takes the flight out of the table and revokes its right to write, so

- a load that read old data before a write can never store it after the write's
  delete (no stale sets), and
- callers arriving after the delete start a fresh load instead of joining the old one.

The table is plain data. The front ends hold their own lock (or, for asyncio, rely
on there being no ``await`` in between) around every call; the waiting primitive
(a ``threading.Event`` or an ``asyncio.Task``) is theirs too, stored in ``handle``.
"""

from __future__ import annotations

from typing import Generic, TypeVar

H = TypeVar("H")


class Flight(Generic[H]):
    """One in-flight load of one key."""

    __slots__ = ("handle", "key", "tags", "valid", "waiters")

    def __init__(self, key: str, handle: H, tags: tuple[str, ...] = ()) -> None:
        self.key = key
        self.handle = handle
        # The tags the load's entry will carry: invalidating one revokes the flight.
        self.tags = tags
        # Cleared by invalidate(); once False, the load's result must not be written.
        self.valid = True
        # Callers that joined instead of loading (for stats and tests).
        self.waiters = 0


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
        if self._flights.get(flight.key) is flight:
            del self._flights[flight.key]
