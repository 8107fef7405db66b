"""The bounded in-process backend: entry and byte budgets, LRU eviction, O(1),
and the same lease protocol as the Redis backend.

Leases (Facebook's memcache paper, NSDI 2013) live here, in the store, not in a
front end: a ``Cache`` and an ``AsyncCache`` (or two caches of either kind) on one
``MemoryBackend`` coordinate through it, the way processes coordinate through
Redis. A miss takes the key's lease; the holder writes only while its lease is
current (``set_leased``); ``delete``, ``set`` and ``clear`` revoke it, so a load
that read old data can never write it back after a delete through any front end;
callers of other front ends wait for the holder (``wait`` in a thread,
``wait_async`` on an event loop) and then read its value.
"""

from __future__ import annotations

import asyncio
import math
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from cachewise import _forksafe
from cachewise._core.entry import Entry
from cachewise._core.readflow import LeaseReply
from cachewise._errors import WeigherError
from cachewise.backends._weigh import ENTRY_OVERHEAD, Weigher, estimate_size

DEFAULT_MAX_ENTRIES = 10_000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
#: How many invalidated tags are remembered one by one (see invalidate_tags).
DEFAULT_MAX_TAGS = 100_000
#: How long a caller waits for another front end's load of the same key before it
#: loads on its own (without writing).
DEFAULT_WAIT_TIMEOUT = 10.0
#: How long a lease holds against other front ends. In-process holders do not die
#: silently (a load ends by writing or releasing, interrupted or not), so this is
#: only a safety net: past it, another front end may take the lease over (the
#: holder's write is then refused). If nobody does, the holder still writes.
DEFAULT_LOCK_TIMEOUT = 30.0
#: The longest wait or lease (a thread cannot block much longer than this).
MAX_WAIT_SECONDS = 365 * 24 * 3600.0


def _owner(token: str) -> str:
    # A token is "<owner>:<n>" (see _frontends._base.new_token).
    return token.rpartition(":")[0]


def _check_wait(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds")
    if not math.isfinite(value) or not 0 < value <= MAX_WAIT_SECONDS:
        raise ValueError(f"{name} must be > 0 and at most one year, got {value!r}")
    return float(value)


def _wake_all(wakers: list[Callable[[], None]]) -> None:
    for wake in wakers:
        wake()


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

    Every call is O(1) (``clear`` is O(n)) and non-blocking but ``wait`` (a thread
    waiting for another front end's load; ``wait_async`` for a coroutine), so the
    same backend can serve several ``Cache``s and ``AsyncCache``s in one process.
    They coordinate through its leases (see the module docstring): a caller waits
    at most ``wait_timeout`` seconds for another front end's load of a key, then
    loads on its own without writing; a lease held longer than ``lock_timeout``
    may be taken over (its holder's write is then refused).
    """

    def __init__(
        self,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        *,
        weigher: Weigher | None = None,
        max_tags: int = DEFAULT_MAX_TAGS,
        wait_timeout: float = DEFAULT_WAIT_TIMEOUT,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    ) -> None:
        self._max_entries = _check_limit("max_entries", max_entries)
        self._wait_timeout = _check_wait("wait_timeout", wait_timeout)
        self._lock_timeout = _check_wait("lock_timeout", lock_timeout)
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
        # Leases: key -> (the holder's token, when it was granted: monotonic).
        # Revoked (removed) by every delete, set and clear of the key; the holder's
        # set_leased then writes nothing.
        self._leases: dict[str, tuple[str, float]] = {}
        # Callers waiting for a key's lease holder: key -> wake-up callbacks.
        self._wakers: dict[str, list[Callable[[], None]]] = {}
        # Serialises writers: a write is several steps (weights, bytes, eviction).
        # Never held while calling out (weighers, wake-ups run outside it).
        self._lock = threading.Lock()
        _forksafe.register(self)

    def _fork_locks(self) -> list[threading.Lock]:
        return [self._lock]

    def _after_fork_child(self) -> None:
        # The entries stay (a child of a preloaded server starts warm); the leases
        # and waiters were the parent's threads': no one here would end them.
        self._lock = threading.Lock()
        self._leases.clear()
        self._wakers.clear()

    # -- capabilities -------------------------------------------------------------

    @property
    def nonblocking(self) -> bool:
        """Always ``True``: no call waits on I/O."""
        return True

    @property
    def lease_scope(self) -> object:
        """What names this store's leases for every cache on it: the store itself."""
        return self

    @property
    def wait_timeout(self) -> float:
        """Seconds a caller waits for another front end's load of a key before it
        loads on its own (and does not write)."""
        return self._wait_timeout

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
        try:
            weight = self._weigher(entry.value)
        except Exception as exc:
            raise WeigherError(f"the weigher raised {type(exc).__name__}: {exc}") from exc
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
            raise WeigherError(f"weigher returned {weight!r}; it must return an int >= 0")
        return ENTRY_OVERHEAD + sys.getsizeof(key) + weight

    def set(self, key: str, entry: Entry) -> None:
        """Store ``entry``, evicting least-recently-used entries past the budgets.
        Revokes any lease on ``key``: a load in flight will not overwrite it."""
        # Weigh outside the lock: it may walk a large value.
        weight = self._weigh(key, entry)
        with self._lock:
            self._store(key, entry, weight)
            wakers = self._revoke(key) if self._leases or self._wakers else None
        if wakers:
            _wake_all(wakers)

    def set_many(self, items: Sequence[tuple[str, Entry]]) -> None:
        """``set`` for several keys."""
        weighed = [(key, entry, self._weigh(key, entry)) for key, entry in items]
        wakers: list[Callable[[], None]] = []
        with self._lock:
            for key, entry, weight in weighed:
                self._store(key, entry, weight)
                if self._leases or self._wakers:
                    wakers += self._revoke(key)
        _wake_all(wakers)

    def _revoke(self, key: str) -> list[Callable[[], None]]:
        """Drop the lease on ``key`` (its holder's write is refused from now on);
        the callers waiting on it, to wake once the lock is released. Caller holds
        self._lock."""
        self._leases.pop(key, None)
        return self._wakers.pop(key, [])

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
        """Remove ``key``; whether it was there. Revokes any lease on it."""
        with self._lock:
            existed = self._remove(key)
            wakers = self._revoke(key) if self._leases or self._wakers else None
        if wakers:
            _wake_all(wakers)
        return existed

    def discard(self, key: str, entry: Entry) -> bool:
        """Remove ``key`` only if it still holds this very ``entry`` (compare-and-delete).

        The front ends call it for entries they found past their grace window, so an
        expired entry leaves at once without racing a writer that just replaced it.
        It is housekeeping, not an invalidation: leases stand.
        """
        with self._lock:
            if self._data.get(key) is not entry:
                return False
            return self._remove(key)

    def delete_many(self, keys: Sequence[str]) -> int:
        """Remove several keys; how many were there. Revokes their leases."""
        wakers: list[Callable[[], None]] = []
        with self._lock:
            count = 0
            for key in keys:
                count += self._remove(key)
                if self._leases or self._wakers:
                    wakers += self._revoke(key)
        _wake_all(wakers)
        return count

    def _remove(self, key: str) -> bool:
        # Caller holds self._lock.
        if self._data.pop(key, None) is None:
            return False
        self._bytes -= self._weights.pop(key)
        return True

    def clear(self, prefix: str = "") -> int:
        """Remove every key starting with ``prefix`` (O(n)), and revoke their
        leases; how many entries."""
        wakers: list[Callable[[], None]] = []
        with self._lock:
            for key in [k for k in self._leases if k.startswith(prefix)]:
                del self._leases[key]
            for key in [k for k in self._wakers if k.startswith(prefix)]:
                wakers += self._wakers.pop(key)
            if not prefix:
                count = len(self._data)
                self._data.clear()
                self._weights.clear()
                self._bytes = 0
            else:
                # list() copies the keys in one C call, so lock-free readers
                # reordering the dict cannot break the iteration.
                doomed = [key for key in list(self._data) if key.startswith(prefix)]
                count = sum(self._remove(key) for key in doomed)
        _wake_all(wakers)
        return count

    # -- leases -------------------------------------------------------------------

    def read_or_lease(self, key: str, token: str, mode: str = "lease") -> LeaseReply:
        """Read ``key`` and maybe take its lease for ``token``, atomically.

        Modes as ``RedisBackend.read_or_lease``: ``"lease"`` returns the entry if
        there is one, else takes the lease (or reports it held); ``"take"`` takes
        the lease whatever the value; ``"refresh"`` too, and comes with the current
        entry. A lease held by another token of the same owner (the same cache) is
        an orphan and is taken over: a cache asks only when no load of its own is
        in flight for the key. A lease held by someone else for longer than
        ``lock_timeout`` is taken over too.
        """
        if mode not in ("lease", "take", "refresh"):
            raise ValueError(f"unknown lease mode {mode!r}")
        with self._lock:
            entry = self._data.get(key)
            if entry is not None and entry.tags and not self._tags_valid(entry):
                self._remove(key)  # invalidated: a miss
                entry = None
            if mode == "lease" and entry is not None:
                self._data.move_to_end(key)
                return LeaseReply(entry, False, 0.0)
            now = time.monotonic()
            lease = self._leases.get(key)
            if lease is not None:
                holder, granted_at = lease
                held_for = granted_at + self._lock_timeout - now
                if held_for > 0 and _owner(holder) != _owner(token):
                    return LeaseReply(None, False, held_for)
                # An orphan of this very cache (it asks only when none of its
                # loads is in flight), or past lock_timeout: taken over.
            self._leases[key] = (token, now)
            return LeaseReply(entry if mode == "refresh" else None, True, 0.0)

    def set_leased(self, key: str, entry: Entry, token: str) -> bool:
        """Write ``entry`` only while ``token`` holds the lease and, for a tagged
        entry, none of its tags was invalidated since its stamp; whether it was
        written. The lease ends either way and waiters wake."""
        weight = self._weigh(key, entry)
        with self._lock:
            lease = self._leases.get(key)
            if lease is None or lease[0] != token:
                return False  # revoked by a delete, set or clear (or taken over)
            del self._leases[key]
            wakers = self._wakers.pop(key, [])
            # Checked under the lock, with the write: a tag invalidation that
            # returned before this point makes the entry a miss, so it is not
            # written, and joiners of this load (who may have come after that
            # invalidation) are told it was not confirmed.
            written = not entry.tags or self._tags_valid(entry)
            if written:
                self._store(key, entry, weight)
        _wake_all(wakers)
        return written

    def release(self, key: str, token: str) -> bool:
        """Give ``token``'s lease up (its load failed or was not written) and wake
        the waiters; whether it was still ``token``'s."""
        with self._lock:
            lease = self._leases.get(key)
            if lease is None or lease[0] != token:
                return False
            del self._leases[key]
            wakers = self._wakers.pop(key, [])
        _wake_all(wakers)
        return True

    def wait(self, key: str, timeout: float) -> bool:
        """Block the calling thread until the lease on ``key`` ends (written,
        released or revoked) or ``timeout`` seconds pass; whether it ended."""
        event = threading.Event()
        wake = event.set
        with self._lock:
            if key not in self._leases:
                return True  # ended between the caller's read and now
            self._wakers.setdefault(key, []).append(wake)
        try:
            return event.wait(timeout)
        finally:
            if not event.is_set():
                self._unwait(key, wake)

    async def wait_async(self, key: str, timeout: float) -> bool:
        """``wait`` for a coroutine: suspends instead of blocking the event loop.
        The lease may end in any thread; the wake-up is handed to this loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            try:
                loop.call_soon_threadsafe(_resolve, future)
            except RuntimeError:
                pass  # that loop is closed: nobody waits any more

        with self._lock:
            if key not in self._leases:
                return True
            self._wakers.setdefault(key, []).append(wake)
        try:
            # asyncio.wait, not wait_for: it never swallows a cancellation.
            done, _ = await asyncio.wait({future}, timeout=timeout)
            return bool(done)
        finally:
            if not future.done():
                self._unwait(key, wake)

    def _unwait(self, key: str, wake: Callable[[], None]) -> None:
        with self._lock:
            wakers = self._wakers.get(key)
            if wakers is not None:
                try:
                    wakers.remove(wake)
                except ValueError:
                    pass  # already popped by the holder: nothing to undo
                if not wakers:
                    del self._wakers[key]

    @property
    def leases_held(self) -> int:
        """How many keys have a load in flight holding their lease (for tests and
        monitoring)."""
        return len(self._leases)

    def close(self) -> None:
        """Drop every entry."""
        self.clear()

    def __repr__(self) -> str:
        return (
            f"MemoryBackend(entries={len(self._data)}/{self._max_entries}, "
            f"bytes={self._bytes}/{self._max_bytes})"
        )


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
