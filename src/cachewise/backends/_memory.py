"""The bounded in-process backend: entry and byte budgets, LRU eviction, O(1)."""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from collections.abc import Sequence

from cachewise._core.entry import Entry
from cachewise.backends._weigh import ENTRY_OVERHEAD, Weigher, estimate_size

DEFAULT_MAX_ENTRIES = 10_000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
#: How many invalidated tags are remembered one by one (see invalidate_tags).
DEFAULT_MAX_TAGS = 100_000


def _check_limit(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return value


class MemoryBackend:
    """A bounded, thread-safe, in-process store with LRU eviction.

    ``max_entries`` and ``max_bytes`` are hard budgets: a write that would exceed
    either evicts least-recently-used entries first, and a single value larger than
    ``max_bytes`` is not stored at all. Bytes are what ``weigher(value)`` says (by
    default a cheap estimate, see ``estimate_size``) plus the key and a fixed
    per-entry overhead.

    Values are stored by reference, not copied: mutating a value you got from the
    cache mutates the cached value (as with ``functools.lru_cache`` and cachetools).

    Every call is O(1) (``clear`` is O(n)) and non-blocking, so the same backend can
    serve a ``Cache`` and an ``AsyncCache`` in one process.
    """

    def __init__(
        self,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        *,
        weigher: Weigher | None = None,
        max_tags: int = DEFAULT_MAX_TAGS,
    ) -> None:
        self._max_entries = _check_limit("max_entries", max_entries)
        self._max_tags = _check_limit("max_tags", max_tags)
        self._max_bytes = _check_limit("max_bytes", max_bytes)
        if weigher is not None and not callable(weigher):
            raise TypeError("weigher must be callable")
        self._weigher: Weigher = weigher or estimate_size
        # Recency order: least recently used first. Reads do not take the lock (see get).
        self._data: OrderedDict[str, Entry] = OrderedDict()
        self._weights: dict[str, int] = {}
        self._bytes = 0
        self._evictions = 0
        self._rejected = 0
        # Tags. Every invalidation takes the next sequence number and records it
        # for its tags; an entry's stamp is the sequence number when its load
        # started. The entry is valid while none of its tags was invalidated after
        # that. Only the last max_tags invalidated tags are remembered; forgetting
        # one raises the floor, below which every tagged entry counts as invalid:
        # bounded memory, and never a stale hit (only a few extra misses).
        self._seq = 0
        self._tag_seq: OrderedDict[str, int] = OrderedDict()
        self._tag_floor = 0
        # Serialises writers: a write is several steps (weights, bytes, eviction).
        self._lock = threading.Lock()

    # -- capabilities -------------------------------------------------------------

    @property
    def nonblocking(self) -> bool:
        """Always ``True``: no call waits on I/O."""
        return True

    @property
    def max_entries(self) -> int:
        """The entry budget."""
        return self._max_entries

    @property
    def max_bytes(self) -> int:
        """The byte budget."""
        return self._max_bytes

    @property
    def evictions(self) -> int:
        """Entries removed to stay inside the budgets."""
        return self._evictions

    @property
    def rejected(self) -> int:
        """Writes not stored because the one value exceeded ``max_bytes``."""
        return self._rejected

    @property
    def size_bytes(self) -> int:
        """Bytes currently accounted to stored entries."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._data)

    # -- reads --------------------------------------------------------------------

    @property
    def _table(self) -> OrderedDict[str, Entry]:
        """The entries, for ``Cache``'s inlined hit path, which must do what ``get``
        does: leave tagged entries to ``get``, mark untagged ones recently used."""
        return self._data

    def get(self, key: str) -> Entry | None:
        """The entry under ``key`` (expired or not), marking it recently used."""
        # Lock-free on purpose: OrderedDict.get and move_to_end are single C calls,
        # atomic under the GIL, and str keys run no Python code while hashing. If a
        # writer removes the key between the two calls, move_to_end raises KeyError
        # and the read is simply ordered before that removal.
        entry = self._data.get(key)
        if entry is not None:
            if entry.tags and not self._tags_valid(entry):
                # A tag was invalidated after this value was loaded: a miss, and the
                # entry goes now rather than hold budget until LRU reaches it.
                self.discard(key, entry)
                return None
            try:
                self._data.move_to_end(key)
            except KeyError:
                pass
        return entry

    def get_tagged(self, key: str, tags: Sequence[str]) -> Entry | None:
        """``get``: entries carry their tags, so the tags the caller expects add
        nothing here."""
        return self.get(key)

    # -- tags ---------------------------------------------------------------------

    def tag_stamp(self, tags: Sequence[str]) -> int:
        """The stamp for a value about to be loaded (take it before loading)."""
        return self._seq

    def invalidate_tags(self, tags: Sequence[str]) -> None:
        """Invalidate every entry stamped before now with any of ``tags``: O(tags)."""
        with self._lock:
            self._seq += 1
            seq = self._seq
            recorded = self._tag_seq
            for tag in tags:
                recorded[tag] = seq
                recorded.move_to_end(tag)
            while len(recorded) > self._max_tags:
                _, forgotten = recorded.popitem(last=False)
                self._tag_floor = max(self._tag_floor, forgotten)

    def _tags_valid(self, entry: Entry) -> bool:
        stamp = entry.stamp
        if not isinstance(stamp, int) or stamp < self._tag_floor:
            return False
        seen = self._tag_seq.get
        for tag in entry.tags:
            invalidated = seen(tag)
            if invalidated is not None and invalidated > stamp:
                return False
        return True

    def get_many(self, keys: Sequence[str]) -> list[Entry | None]:
        """``get`` for several keys, in order."""
        return [self.get(key) for key in keys]

    # -- writes -------------------------------------------------------------------

    def _weigh(self, key: str, entry: Entry) -> int:
        weight = self._weigher(entry.value)
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
            raise ValueError(f"weigher returned {weight!r}; it must return an int >= 0")
        return ENTRY_OVERHEAD + sys.getsizeof(key) + weight

    def set(self, key: str, entry: Entry) -> None:
        """Store ``entry``, evicting least-recently-used entries past the budgets."""
        # Weigh outside the lock: it may walk a large value.
        weight = self._weigh(key, entry)
        with self._lock:
            self._store(key, entry, weight)

    def set_many(self, items: Sequence[tuple[str, Entry]]) -> None:
        """``set`` for several keys."""
        weighed = [(key, entry, self._weigh(key, entry)) for key, entry in items]
        with self._lock:
            for key, entry, weight in weighed:
                self._store(key, entry, weight)

    def _store(self, key: str, entry: Entry, weight: int) -> None:
        # Caller holds self._lock.
        old = self._weights.pop(key, None)
        if old is not None:
            self._bytes -= old
        if weight > self._max_bytes:
            # Too big to ever fit. Dropping the old value too keeps "set replaces".
            self._data.pop(key, None)
            self._rejected += 1
            return
        data = self._data
        data[key] = entry
        data.move_to_end(key)
        self._weights[key] = weight
        self._bytes += weight
        while len(data) > self._max_entries or self._bytes > self._max_bytes:
            # The new key is most recent, and alone it fits, so it is never the victim.
            victim, _ = data.popitem(last=False)
            self._bytes -= self._weights.pop(victim)
            self._evictions += 1

    def delete(self, key: str) -> bool:
        """Remove ``key``; whether it was there."""
        with self._lock:
            return self._remove(key)

    def discard(self, key: str, entry: Entry) -> bool:
        """Remove ``key`` only if it still holds this very ``entry`` (compare-and-delete).

        The front ends call it for entries they found past their grace window, so an
        expired entry leaves at once without racing a writer that just replaced it.
        """
        with self._lock:
            if self._data.get(key) is not entry:
                return False
            return self._remove(key)

    def delete_many(self, keys: Sequence[str]) -> int:
        """Remove several keys; how many were there."""
        with self._lock:
            return sum(self._remove(key) for key in keys)

    def _remove(self, key: str) -> bool:
        # Caller holds self._lock.
        if self._data.pop(key, None) is None:
            return False
        self._bytes -= self._weights.pop(key)
        return True

    def clear(self, prefix: str = "") -> int:
        """Remove every key starting with ``prefix`` (O(n)); how many."""
        with self._lock:
            if not prefix:
                count = len(self._data)
                self._data.clear()
                self._weights.clear()
                self._bytes = 0
                return count
            # list() copies the keys in one C call, so lock-free readers reordering
            # the dict cannot break the iteration.
            doomed = [key for key in list(self._data) if key.startswith(prefix)]
            return sum(self._remove(key) for key in doomed)

    def close(self) -> None:
        """Drop every entry."""
        self.clear()

    def __repr__(self) -> str:
        return (
            f"MemoryBackend(entries={len(self._data)}/{self._max_entries}, "
            f"bytes={self._bytes}/{self._max_bytes})"
        )
