"""The cached entry: a value plus the metadata every freshness decision needs."""

from __future__ import annotations

from typing import Any


class Entry:
    """One cached value and its freshness metadata.

    All times are absolute seconds on the owning cache's clock.

    - ``expires_at``: end of the fresh period (the jittered TTL).
    - ``stale_until``: end of the grace window (``expires_at + stale_ttl``); past it
      the entry is garbage.
    - ``refresh_at``: before this instant a hit is certainly fresh and needs no random
      draw for early refresh (see ``policy.refresh_horizon``), computed by the writer.
    - ``delta``: how long the load that produced the value took (XFetch's Δ).
    - ``negative``: the value is a cached "not found".
    - ``written_at``: when it was written; shared backends derive the server-side
      TTL from it (``stale_until - written_at`` plus a margin).
    - ``tags``: full tag names (namespace applied) the entry depends on.
    - ``stamp``: the backend's record of those tags' versions, taken before the
      value was loaded; an entry whose tags were invalidated since is a miss. Its
      form is the backend's business (memory: an int; Redis: one version per tag).
    """

    __slots__ = (
        "delta",
        "expires_at",
        "negative",
        "refresh_at",
        "stale_until",
        "stamp",
        "tags",
        "value",
        "written_at",
    )

    def __init__(  # positional on purpose: built on every write
        self,
        value: Any,
        expires_at: float,
        stale_until: float,
        refresh_at: float,
        delta: float = 0.0,
        negative: bool = False,
        written_at: float = 0.0,
        tags: tuple[str, ...] = (),
        stamp: Any = None,
    ) -> None:
        self.value = value
        self.expires_at = expires_at
        self.stale_until = stale_until
        self.refresh_at = refresh_at
        self.delta = delta
        self.negative = negative
        self.written_at = written_at
        self.tags = tags
        self.stamp = stamp

    def __repr__(self) -> str:
        return (
            f"Entry(value={self.value!r}, expires_at={self.expires_at!r}, "
            f"stale_until={self.stale_until!r}, delta={self.delta!r}, "
            f"negative={self.negative!r}, tags={self.tags!r})"
        )
