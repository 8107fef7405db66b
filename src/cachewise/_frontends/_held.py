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

``HeldInvalidations`` is the state (shared by the caches of one ``CacheGroup`` on
one server and namespace, see ``_group``); ``HeldMixin`` is what a cache does with
it (hold, check, settle, give up), inherited by ``CacheBase``.
"""

from __future__ import annotations

import itertools
import logging
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, NamedTuple

from cachewise import _forksafe
from cachewise._core.entry import Entry
from cachewise.backends._failover import existing_watch

if TYPE_CHECKING:
    from cachewise._frontends._group import CacheGroup

logger = logging.getLogger("cachewise")

#: How many held names are listed one by one before "everything" takes over.
MAX_LISTED = 10_000
#: How many settled names the log remembers for reads still in flight.
_LOG_SIZE = 4 * MAX_LISTED
#: At most one ERROR per this many seconds per cache for invalidations it holds.
_LOG_EVERY = 10.0
#: How long ``Cache.close()`` waits for the settle thread to stop.
_SETTLER_JOIN = 2.0

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
        self.members: weakref.WeakSet[HeldMixin] = weakref.WeakSet()
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

    def add_member(self, member: HeldMixin) -> None:
        with self.lock:
            self.members.add(member)
            member._unsettled = self.active

    def remove_member(self, member: HeldMixin) -> None:
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


class HeldMixin:
    """The held-invalidation side of a cache (``CacheBase`` inherits it): what a
    failed invalidation covers is a miss here until the background settler (owned
    by the front end) re-applies it. Nothing else waits on it.

    The hit path reads one flag, ``_unsettled`` (set by ``HeldInvalidations``);
    the rest runs only while something is held."""

    #: How often held invalidations are retried (by the settle thread or task).
    _settle_every = 0.05

    # Set by _init_held; the others by CacheBase.
    _held: HeldInvalidations
    _unsettled: bool
    _group: CacheGroup
    _last_unsettle_log: float
    _monotonic: Callable[[], float]  # (CacheBase: the injected monotonic clock)
    _closed: bool
    _namespace: str
    _prefix: str

    def _init_held(self, group: CacheGroup) -> None:
        self._group = group
        self._unsettled = False  # the fast check on the hit path (set by _held)
        self._held = HeldInvalidations()
        self._held.add_member(self)
        self._last_unsettle_log = float("-inf")
        self._init_settle_thread()

    def _degraded(self, operation: str, exc: BaseException) -> None:
        raise NotImplementedError  # (CacheBase: count and log a backend failure)

    def _settle_once(self) -> None:
        """Re-apply what is held, once, synchronously (the shells implement it)."""

    # -- the settle thread ----------------------------------------------------------

    def _init_settle_thread(self) -> None:
        # (Also the reset after a fork: the parent's thread is not in the child.)
        self._settle_thread: threading.Thread | None = None
        self._settle_thread_lock = threading.Lock()
        self._settle_wake = threading.Event()  # set to stop the thread early

    def _loop_settles(self) -> bool:
        """Whether a running event loop settles instead (``AsyncCache``'s settler
        task): the thread then only stands by."""
        return False

    def _start_settler(self) -> None:
        """Make sure the background settler runs: the settle thread here;
        ``AsyncCache`` settles in a task, with the thread standing by for when no
        event loop runs it."""
        self._start_settle_thread()

    def _start_settle_thread(self) -> None:
        """Run the settle thread (once at a time), a daemon thread of its own:
        not on the refresh pool, whose threads the interpreter joins at exit (a
        program that ends without ``close()`` while Redis is down must still exit:
        break 6 of issue 9). ``close()`` and the interpreter's exit make one last
        attempt (``_last_settle``)."""
        with self._settle_thread_lock:
            if self._closed or self._settle_thread is not None:
                return
            thread = self._settle_thread = threading.Thread(
                target=self._settle_thread_loop, name="cachewise-settle", daemon=True
            )
        thread.start()

    def _settle_thread_loop(self) -> None:
        # Runs while anything is held. With an event loop settling too (as it
        # starts again), both may settle at once: a delete or a tag invalidation
        # applied twice is still right.
        try:
            while self._unsettled and not self._closed:
                if not self._loop_settles():
                    try:
                        self._settle_once()
                    except Exception as exc:
                        self._degraded("settle", exc)
                self._settle_wake.wait(self._settle_every)
        finally:
            with self._settle_thread_lock:
                self._settle_thread = None
            if self._unsettled and not self._closed:
                self._start_settle_thread()  # held again as we left: keep going

    def _hand_over_held(self) -> bool:
        """At close, with something still held: an open sibling sharing it (same
        group, server and namespace) settles it from now on, and gets the exit's
        last try; whether there was one. (Attack on issue 11: closing the cache
        that held a delete left it to siblings that never retried it, at run time
        or at exit, while other processes read the old value.) The settle thread,
        not ``_start_settler``: an ``AsyncCache`` sibling's loop is not ours."""
        for sibling in list(self._held.members):
            if sibling is not self and not sibling._closed:
                self._group._holds(sibling)
                sibling._start_settle_thread()
                return True
        return False

    def _stop_settle_thread(self, timeout: float = _SETTLER_JOIN) -> None:
        self._settle_wake.set()
        thread = self._settle_thread
        if thread is not None:
            thread.join(timeout)  # it stops at its next turn (one backend timeout at most)

    def _share_held(self, server: str) -> None:
        """Share held invalidations with every cache of this cache's group on
        ``server`` (an identity of the backend, such as its URL without options)
        and the same namespace. ``from_url`` calls it; call it before any traffic."""
        held = self._group._shared_held(server, self._prefix, self._held)
        if held is not self._held:
            self._held.remove_member(self)
            self._held = held
            held.add_member(self)
        watch = existing_watch(server)
        if watch is not None:  # a Sentinel service: see _failed_over
            watch.subscribe(self._failed_over)

    def _failed_over(self) -> None:
        """The Sentinels named a new master. Writes the old one took after the
        promotion are lost (replication is asynchronous), deletes included, so
        what they removed may be back: hold a clear of the namespace (reads are
        misses) until it has landed on the new master."""
        if self._closed:
            return
        logger.warning(
            "cachewise: the Redis master moved; namespace %r is cleared on the new master "
            "(writes the old master took after the failover are lost)",
            self._namespace,
        )
        self._held.hold((), (), True)
        self._group._holds(self)
        self._start_settler()

    def _unsettle(
        self,
        keys: Iterable[str] = (),
        tags: Iterable[str] = (),
        *,
        everything: bool = False,
    ) -> None:
        """Hold an invalidation that did not reach the backend, and settle it in
        the background."""
        self._held.hold(keys, tags, everything)
        self._group._holds(self)  # the interpreter's exit gives it one last try
        now = self._monotonic()
        if now - self._last_unsettle_log >= _LOG_EVERY:
            self._last_unsettle_log = now
            logger.error(
                "cachewise: an invalidation did not reach the backend; the keys it covers "
                "are read from the source until it is applied (stats().invalidations_pending)"
            )
        self._start_settler()

    def _held_view(self) -> HeldView:
        """Taken *before* a read (one int, never a copy): an entry read while its
        invalidation was held must not be served even if the invalidation is
        applied before the read returns (it is the old value)."""
        return self._held.seq if self._unsettled else None

    def _covered(
        self, view: HeldView, full: str, entry: Entry | None, tags: Sequence[str] = ()
    ) -> bool:
        """Whether a held invalidation (then or now) covers this key or entry, or
        the tags the caller reads it under."""
        if view is None and not self._unsettled:
            return False
        return self._held.covers(view, full, entry, tags)

    def _settled(self, applied: HeldSnapshot) -> None:
        """Forget what was just applied; anything held again since stays held."""
        if self._held.settled(applied):
            logger.warning("cachewise: held invalidations applied; reading from the cache again")

    def _last_settle(self, attempt: bool = True) -> None:
        """One last try at held invalidations (at close, at exit; ``attempt=False``
        when the caller just made it), then an ERROR naming what never reached the
        backend: other processes may read those old values until they expire.
        Never raises."""
        if not self._unsettled:
            return
        if attempt:
            try:
                self._settle_once()
            except Exception as exc:
                self._degraded("settle", exc)
        if self._unsettled:
            pending = self._held.pending()
            logger.error(
                "cachewise: %s (namespace %r) gives up %s invalidation(s) that never reached "
                "the backend; other processes may read the old values until they expire",
                type(self).__name__,
                self._namespace,
                "some" if pending < 0 else pending,
            )
