"""Counters: every decision the front ends make is counted here."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True, slots=True)
class CacheStats:
    """A snapshot of one cache's counters (``Cache.stats()``).

    - ``hits``: reads served a fresh value (negative ones included).
    - ``misses``: reads that found nothing servable (``get`` returned the default,
      or ``get_or_load`` waited for a load, its own or a shared one).
    - ``loads``: loader calls, background refreshes included.
    - ``load_errors``: loader calls that raised.
    - ``coalesced``: ``get_or_load`` callers that joined a load already in flight.
    - ``stale_served``: stale values served (stale-while-revalidate, stale-if-error).
    - ``early_refreshes``: background refreshes started by XFetch.
    - ``negative_hits``: hits on a cached "not found" (a subset of ``hits``).
    - ``evictions``: entries the backend removed to stay inside its budgets.
    - ``backend_errors``: backend calls that failed and were degraded around.
    - ``refreshes_dropped``: background refreshes not started because too many were
      pending (the value was still served).
    - ``decode_errors``: entries a shared backend could not decode (garbage, an
      unknown format version, a bad signature), each served as a miss.
    - ``encode_errors``: loaded values the codec (or the memory backend's weigher)
      refused to store; each was returned to its callers, not cached (and logged
      once per type at WARNING).
    - ``breaker_state``: ``"closed"``, ``"open"``, ``"half_open"`` (``"none"``
      without a circuit breaker); ``breaker_opens``: how often it opened;
      ``breaker_rejections``: calls it refused (they went to the loader).
    - ``invalidations_pending``: keys and tags whose invalidation did not reach the
      backend yet (read from the source meanwhile); -1 means "too many to list:
      the namespace is cleared on recovery".
    """

    hits: int = 0
    misses: int = 0
    loads: int = 0
    load_errors: int = 0
    coalesced: int = 0
    stale_served: int = 0
    early_refreshes: int = 0
    negative_hits: int = 0
    evictions: int = 0
    backend_errors: int = 0
    refreshes_dropped: int = 0
    decode_errors: int = 0
    encode_errors: int = 0
    breaker_state: str = "none"
    breaker_opens: int = 0
    breaker_rejections: int = 0
    invalidations_pending: int = 0

    @property
    def hit_ratio(self) -> float:
        """Hits (stale ones included) over all reads; 0.0 before any read."""
        served = self.hits + self.stale_served
        total = served + self.misses
        return served / total if total else 0.0

    def __sub__(self, other: CacheStats) -> CacheStats:
        """The counts between two snapshots: ``after - before``."""
        if not isinstance(other, CacheStats):
            return NotImplemented
        # Counters subtract; the state and the pending gauge are the newer ones.
        gauges = ("breaker_state", "invalidations_pending")
        return CacheStats(
            **{
                f.name: getattr(self, f.name)
                if f.name in gauges
                else getattr(self, f.name) - getattr(other, f.name)
                for f in fields(self)
            }
        )

    def as_dict(self) -> dict[str, int | str]:
        """The counters as a plain dict (for logs and metrics exporters)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


class Counters:
    """The live, mutable counters behind ``CacheStats``.

    Increments are plain ``+=`` on slots. On CPython with the GIL a thread switch
    cannot happen inside ``obj.n += 1`` on an int (no call, no backward jump), so no
    count is lost. The cost of a lock here would double the cost of a hit.
    """

    __slots__ = (
        "backend_errors",
        "coalesced",
        "early_refreshes",
        "encode_errors",
        "hits",
        "invalidations_pending",
        "load_errors",
        "loads",
        "misses",
        "negative_hits",
        "refreshes_dropped",
        "stale_served",
    )

    def __init__(self) -> None:
        self.hits = 0
        self.misses = 0
        self.loads = 0
        self.load_errors = 0
        self.coalesced = 0
        self.stale_served = 0
        self.early_refreshes = 0
        self.negative_hits = 0
        self.backend_errors = 0
        self.refreshes_dropped = 0
        self.encode_errors = 0
        self.invalidations_pending = 0

    def snapshot(
        self,
        evictions: int,
        decode_errors: int = 0,
        *,
        breaker_state: str = "none",
        breaker_opens: int = 0,
        breaker_rejections: int = 0,
    ) -> CacheStats:
        """Freeze the counters, adding the backend's own counts."""
        return CacheStats(
            hits=self.hits,
            misses=self.misses,
            loads=self.loads,
            load_errors=self.load_errors,
            coalesced=self.coalesced,
            stale_served=self.stale_served,
            early_refreshes=self.early_refreshes,
            negative_hits=self.negative_hits,
            evictions=evictions,
            backend_errors=self.backend_errors,
            refreshes_dropped=self.refreshes_dropped,
            decode_errors=decode_errors,
            encode_errors=self.encode_errors,
            breaker_state=breaker_state,
            breaker_opens=breaker_opens,
            breaker_rejections=breaker_rejections,
            invalidations_pending=self.invalidations_pending,
        )
