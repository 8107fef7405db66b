"""Invalidations that did not reach a shared backend, held in-process until a
background settler re-applies them.

A delete (or ``set``, tag invalidation, ``clear``) that failed leaves the old value
in the shared backend. Until it is applied, the caches of this process treat what
it covers as a miss and load from the source. Each held key or tag carries a
generation, so a settle only forgets what it applied: an invalidation that failed
again meanwhile stays held. Past ``MAX_LISTED`` names it stops listing them and
clears the namespace on recovery instead.

Readers never copy what is held (break 23 of issue 9: a copy per read cost 350 µs
with 9,000 held keys, and 500 MB with 1,000 concurrent async reads). A read takes
``view()``, one int, before it reads; after the read it asks ``covers(view, key,
entry)``: is the key (or one of the entry's tags) held now, or was it applied by a
settle that finished after the read began? In the second case the read may have
returned the value from before the invalidation landed, so it must not be served.
Settles are remembered in a bounded log; a read older than the log is treated as
covered (one more miss, never an old value).
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, NamedTuple

from cachewise import _forksafe
from cachewise._core.entry import Entry

if TYPE_CHECKING:
    from cachewise._frontends._base import CacheBase

#: How many held names are listed one by one before "everything" takes over.
MAX_LISTED = 10_000
#: How many settled names the log remembers for reads still in flight.
_LOG_SIZE = 4 * MAX_LISTED

HeldView = int | None
"""What a read takes before it reads: the settle count then (``None``: nothing was
held, and nothing held later can concern this read)."""


class HeldSnapshot(NamedTuple):
    """What the settler is about to re-apply: names with their generations."""

    keys: dict[str, int]
    tags: dict[str, int]
    #: The generation of a held clear() of the namespace (0: none).
    everything: int


class HeldInvalidations:
    """The held invalidations of one namespace on one server, shared by every
    cache of this process there (a ``Cache`` next to an ``AsyncCache`` reads
    around the other's held deletes). Each member keeps its own ``_unsettled``
    flag, the hit path's fast check; this object sets them all."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.keys: dict[str, int] = {}
        self.tags: dict[str, int] = {}
        # The generation of a held clear() (0: none): a clear held again while a
        # settle re-applies an earlier one must stay held after that settle.
        self.everything = 0
        self._gen = itertools.count(1)
        self.members: weakref.WeakSet[CacheBase] = weakref.WeakSet()
        # Invariant: seq counts finished settles; _settled_keys/_settled_tags map a
        # name to the seq of the settle that applied it (oldest first), and a read
        # whose view is below _floor may have missed a forgotten entry.
        self.seq = 0
        self._settled_keys: OrderedDict[str, int] = OrderedDict()
        self._settled_tags: OrderedDict[str, int] = OrderedDict()
        self._everything_seq = 0
        self._floor = 0
        _forksafe.register(self)

    def _fork_locks(self) -> list[threading.Lock]:
        return [self.lock]

    def _after_fork_child(self) -> None:
        self.lock = threading.Lock()

    @property
    def active(self) -> bool:
        """Whether anything is held."""
        return bool(self.everything or self.keys or self.tags)

    def pending(self) -> int:
        """How many names are held (-1: too many to list, the namespace is cleared
        on recovery)."""
        if self.everything:
            return -1
        return len(self.keys) + len(self.tags)

    def add_member(self, member: CacheBase) -> None:
        with self.lock:
            self.members.add(member)
            member._unsettled = self.active

    def remove_member(self, member: CacheBase) -> None:
        with self.lock:
            self.members.discard(member)

    def _publish(self) -> None:
        # Caller holds the lock.
        active = self.active
        for member in list(self.members):
            member._unsettled = active

    def hold(
        self, keys: Iterable[str] = (), tags: Iterable[str] = (), everything: bool = False
    ) -> None:
        """Hold an invalidation that did not reach the backend."""
        with self.lock:
            gen = next(self._gen)
            for key in keys:
                self.keys[key] = gen
            for tag in tags:
                self.tags[tag] = gen
            if everything or len(self.keys) + len(self.tags) > MAX_LISTED:
                self.everything = gen
                self.keys.clear()
                self.tags.clear()
            self._publish()

    def snapshot(self) -> HeldSnapshot:
        """A copy of what is held, for the settler (not for readers)."""
        with self.lock:
            return HeldSnapshot(dict(self.keys), dict(self.tags), self.everything)

    def settled(self, applied: HeldSnapshot) -> bool:
        """Forget what ``applied`` re-applied (anything held again since stays
        held); whether nothing is held any more."""
        with self.lock:
            was = self.active
            self.seq += 1
            seq = self.seq
            if applied.everything and self.everything == applied.everything:
                self.everything = 0
                self._everything_seq = seq
            for table, log, names in (
                (self.keys, self._settled_keys, applied.keys),
                (self.tags, self._settled_tags, applied.tags),
            ):
                for name, gen in names.items():
                    if table.get(name) == gen:
                        del table[name]
                        log[name] = seq
                        log.move_to_end(name)
                while len(log) > _LOG_SIZE:
                    _, forgotten = log.popitem(last=False)
                    self._floor = max(self._floor, forgotten)
            self._publish()
            return was and not self.active

    def covers_now(self, full: str, entry: Entry | None, tags: Sequence[str] = ()) -> bool:
        """Whether a held invalidation covers this key, or the entry's tags, or the
        tags the caller reads under, now. Lock-free: each lookup is one dict read,
        atomic under the GIL. (The caller's tags matter when there is no entry yet:
        a load of them in flight elsewhere may predate the held invalidation.)"""
        if self.everything or full in self.keys:
            return True
        held = self.tags
        if not held:
            return False
        if entry is not None and entry.tags and any(t in held for t in entry.tags):
            return True
        return any(t in held for t in tags)

    def covers(
        self, view: HeldView, full: str, entry: Entry | None, tags: Sequence[str] = ()
    ) -> bool:
        """Whether a read that took ``view`` before it read must not serve
        ``entry``: an invalidation of it is held now, or was applied while the
        read was in flight (the read may have returned the value from before)."""
        if self.covers_now(full, entry, tags):
            return True
        if view is None or view == self.seq:
            return False
        with self.lock:  # the log is reordered by settles: read it under the lock
            if view < self._floor or self._everything_seq > view:
                return True
            if self._settled_keys.get(full, 0) > view:
                return True
            log = self._settled_tags
            if entry is not None and entry.tags and any(log.get(t, 0) > view for t in entry.tags):
                return True
            return any(log.get(t, 0) > view for t in tags)
