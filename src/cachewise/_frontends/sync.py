"""``Cache``: the front end for threaded code."""

from __future__ import annotations

import contextvars
import inspect
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from types import TracebackType
from typing import Any, TypeVar, overload

from cachewise import _forksafe, _typed
from cachewise._core.entry import Entry
from cachewise._core.errors import ErrorKind, classify, retry_fast_failure
from cachewise._core.flights import Flight, FlightTable, JoinPoint, LoadState
from cachewise._core.policy import Read, Seconds, decide_read, stale_servable, superseded
from cachewise._core.readflow import LoadStep, Observed, Outcome, ReadStep, Serve, leased_read
from cachewise._errors import (
    CacheClosedError,
    LoaderCycleError,
    TagsUnsupportedError,
    WeigherError,
)
from cachewise._frontends._base import (
    _SETTLE_EVERY,
    CacheBase,
    Clock,
    cache_from_url,
    check_loader,
    check_reusable,
    check_ttl,
    new_token,
)
from cachewise._frontends._cycles import (
    dead_lease,
    done_loading,
    enter_wait,
    lease_ended,
    lease_holder,
    lease_scope,
    lease_taken,
    leave_wait,
    loading,
)
from cachewise._frontends._decorator import (
    AfterCommitName,
    CachedFunction,
    Invalidator,
    OnMaxKeys,
    P,
    R,
    after_commit_hook,
    check_not_generator,
    invalidating,
    is_async_callable,
)
from cachewise._frontends._group import CacheGroup
from cachewise._frontends._held import HeldView
from cachewise._sentinel import MISSING
from cachewise.backends._memory import MemoryBackend
from cachewise.backends._protocol import (
    Backend,
    InProcessLeaseBackend,
    LeaseBackend,
    TagBackend,
)
from cachewise.invalidation import Registry
from cachewise.keys import SHORT_KEY_CHARS, check_key
from cachewise.serialization import SerializationError, Serializer, ValueTooLargeError

logger = logging.getLogger("cachewise")

T = TypeVar("T")
D = TypeVar("D")


class _Call(LoadState):
    """The waiting side of one sync flight."""

    __slots__ = ("abandoned", "done", "error", "guard", "value")

    def __init__(self, guarded: bool = True) -> None:
        super().__init__()
        # Created by the first caller that joins (most flights have none).
        self.done: threading.Event | None = None
        # Held while the finished load checks its flight is still valid and writes;
        # invalidation passes through it so its delete lands after such a write.
        # Lease backends need none: the server checks the lease atomically.
        self.guard = threading.Lock() if guarded else None
        self.value: Any = None
        self.error: BaseException | None = None
        # The leader died of a BaseException (KeyboardInterrupt...) or could not
        # run the refresh it registered: waiters retry.
        self.abandoned = False


def _pass_guard(flight: Flight[_Call]) -> None:
    """Wait for a write already past its validity check, so ours lands after it."""
    guard = flight.handle.guard
    if guard is not None:
        with guard:
            pass


# What a load's write may refuse and still hand its value to the callers: the
# codec's refusals. (A weigher's error is the application's bug: it is raised.)
_UNSTORABLE = (SerializationError, ValueTooLargeError)


class Cache(CacheBase):
    """A read-through cache for threaded code.

    ``backend=None`` means a bounded ``MemoryBackend`` (10,000 entries, 64 MiB) that
    the cache owns and closes. A backend you pass in stays yours to close.

    Options (all keyword-only, all validated):

    - ``namespace``: prefix of every key (``"ns:key"``).
    - ``ttl``: default lifetime in seconds; each write draws its TTL uniformly from
      ``[ttl*(1-jitter), ttl*(1+jitter)]``. ``0`` stores nothing.
    - ``stale_ttl``: grace window past the TTL in which a stale value is served
      while one refresh runs (stale-while-revalidate), and served instead of a
      load error (stale-if-error). ``serve_stale=False`` makes readers wait for the
      refresh instead, still falling back to the stale value on error.
    - ``negative_ttl``: lifetime of a loader result for which ``is_negative(result)``
      holds (default: ``result is None``), capped by ``ttl``; ``0`` caches none.
    - ``early_refresh``: XFetch's β; ``0`` turns probabilistic early refresh off.
    - ``clock``: zero-argument callable returning seconds (default ``time.time``);
      ``rng``: a ``random.Random`` for jitter and XFetch draws.
    - ``refresh_workers`` / ``max_pending_refreshes``: the bounded pool that runs
      background refreshes, drained by ``close()``.
    """

    def __init__(
        self,
        backend: Backend | None = None,
        *,
        namespace: str = "",
        ttl: Seconds = 300.0,
        jitter: float = 0.1,
        stale_ttl: Seconds = 0.0,
        negative_ttl: Seconds = 30.0,
        early_refresh: float = 1.0,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        serve_stale: bool = True,
        is_negative: Callable[[Any], bool] | None = None,
        refresh_workers: int = 4,
        max_pending_refreshes: int = 256,
        version: int | str | None = None,
        group: CacheGroup | None = None,
        registry: Registry | None = None,
    ) -> None:
        super().__init__(
            namespace=namespace,
            ttl=ttl,
            jitter=jitter,
            stale_ttl=stale_ttl,
            negative_ttl=negative_ttl,
            early_refresh=early_refresh,
            clock=clock,
            rng=rng,
            serve_stale=serve_stale,
            is_negative=is_negative,
            max_pending_refreshes=max_pending_refreshes,
            version=version,
            group=group,
            registry=registry,
        )
        if isinstance(refresh_workers, bool) or not isinstance(refresh_workers, int):
            raise TypeError("refresh_workers must be an int")
        if refresh_workers < 1:
            raise ValueError(f"refresh_workers must be >= 1, got {refresh_workers}")
        if backend is None:
            backend = MemoryBackend()
            self._owns_backend = True
        elif not isinstance(backend, Backend) or inspect.iscoroutinefunction(backend.get):
            raise TypeError(
                f"Cache needs a sync Backend, got {type(backend).__name__}"
                + ("; use AsyncCache for an async backend" if _looks_async(backend) else "")
            )
        self._backend: Backend = backend
        self._stats_source = backend
        self._init_discard(backend)
        self._bget = backend.get  # bound once: the hit path is one call into the backend
        # The exact MemoryBackend: its get is inlined on the hit path (a subclass
        # may override get, so it gets no such shortcut).
        self._mdata = backend._table if type(backend) is MemoryBackend else None
        self._tagger: TagBackend | None = backend if isinstance(backend, TagBackend) else None
        # With tags, a backend that knows them checks them while reading.
        self._bget_tagged: Callable[[str, tuple[str, ...]], Entry | None] = (
            self._tagger.get_tagged if self._tagger is not None else _untagged(backend)
        )
        # Shared backends with leases read through the in-process flight first.
        self._leases: LeaseBackend | None = backend if isinstance(backend, LeaseBackend) else None
        # An in-process store's leases are held by flights of this process: waits
        # on them join the loader-cycle check (see _cycles).
        self._inproc = isinstance(backend, InProcessLeaseBackend)
        # Leases of flights of this process are recorded under this name of the
        # store, shared by every cache on it (see _cycles: cycles through leases).
        self._scope = lease_scope(backend) if self._leases is not None else None
        self._refresh_workers = refresh_workers
        # Guards the flight table, the executor and the pending-refresh bookkeeping.
        # Never held across a loader call or backend I/O.
        self._lock = threading.Lock()
        self._flights: FlightTable[_Call] = FlightTable()
        self._executor: ThreadPoolExecutor | None = None
        self._futures: set[Future[None]] = set()
        self._settler: threading.Thread | None = None
        self._settle_wake = threading.Event()  # set by close() to stop the settler
        _forksafe.register(self)

    @classmethod
    def from_url(
        cls, url: str, *, serializer: Serializer | str | None = None, **options: Any
    ) -> Cache:
        """A cache on the backend ``url`` names, e.g. ``memory://?max_entries=1000``
        or ``redis://host:6379/0``. The cache owns the backend and closes it.

        Keywords are the cache's options (``ttl=``, ``namespace=``...) and the URL's
        query options (``socket_timeout=1.0``, ``lock_timeout=timedelta(seconds=2)``;
        a keyword wins over the query), plus ``secret=`` for
        ``serializer="pickle"``, ``client_options={...}`` passed to redis-py's
        clients and, for Sentinel URLs, ``sentinel_options={...}``. Any other name
        is a ``TypeError`` listing the accepted ones.
        """
        cache: Cache = cache_from_url(cls, url, "sync", serializer, options)
        return cache

    @property
    def backend(self) -> Backend:
        """The backend entries live in."""
        return self._backend

    # -- reads --------------------------------------------------------------------

    @overload
    def get(self, key: str, *, type: Any = None) -> Any: ...
    @overload
    def get(self, key: str, default: D, *, type: Any = None) -> Any | D: ...

    def get(self, key: str, default: Any = MISSING, *, type: Any = None) -> Any:
        """The fresh value under ``key``, or ``default`` (``MISSING``).

        Never returns a stale value: with no loader there is nothing to revalidate.
        ``type``: what the value is (``User``, ``list[User]``, ``User | None``), for
        structured values on a shared backend: the reader's type rebuilds them
        (see ``cachewise.serialization``); an entry that does not fit is a miss.
        """
        if type is not None:
            token = _typed.expect(type)
            try:
                return self.get(key, default)
            finally:
                _typed.READ_TYPE.reset(token)
        # (An empty key must not hit the entry named by the bare prefix: validated.)
        full = self._prefix + key if key.__class__ is str and key else ""
        if not 0 < len(full) <= SHORT_KEY_CHARS:
            full = self._hit_key(key)
        view = self._held_view() if self._unsettled else None
        try:
            entry = self._bget(full)
        except Exception as exc:
            self._check_miss(full)  # a bad key (say, a lone surrogate) is not a failure
            self._degraded("get", exc)
            entry = None
        counters = self._counters
        now = self._clock()
        if (view is not None or self._unsettled) and self._covered(view, full, entry):
            entry = None  # an invalidation of it has not reached the backend yet
            if self._unsettled and self._settler is None:
                # Held by another cache sharing ours, maybe one whose settler cannot
                # run (an AsyncCache whose loop ended): settle it from here.
                self._start_settler()
        if entry is not None and now < entry.expires_at:  # policy.is_fresh, inlined
            counters.hits += 1
            if entry.negative:
                counters.negative_hits += 1
            return entry.value
        self._check_miss(full)  # a miss on a key no write could have made is an error
        counters.misses += 1
        self._drop_expired(full, entry, now)
        return default

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """The fresh values among ``keys``, as ``{key: value}``; misses are left out."""
        self._check_keys(keys)
        wanted = [check_key(key) for key in keys]
        full = [self._full_key(key) for key in wanted]
        entries: list[Entry | None] | None
        view = self._held_view()
        if view is not None and self._settler is None:
            self._start_settler()  # (held by a sibling, maybe: see get)
        try:
            entries = self._backend.get_many(full)
        except Exception as exc:
            self._degraded("get_many", exc)
            entries = None
        return self._collect_fresh(wanted, entries, view)

    def get_or_load(
        self,
        key: str,
        loader: Callable[[], T],
        *,
        ttl: Seconds | None = None,
        tags: Iterable[str] = (),
        type: Any = None,
    ) -> T:
        """The value under ``key``; on a miss, ``loader()``'s result, cached.

        Concurrent callers on one key share one ``loader`` call and get its result or
        its exception. Stale and early-refresh handling follow the cache's options.
        ``tags``: the entry is invalidated by ``invalidate_tags`` of any of them.
        ``type``: what the value is, as for ``get``. A value the codec refuses is
        returned uncached (``stats().encode_errors``).
        """
        if type is not None:
            token = _typed.expect(type)
            try:
                return self.get_or_load(key, loader, ttl=ttl, tags=tags)
            finally:
                _typed.READ_TYPE.reset(token)
        # The hit path, kept to one backend call, one clock read and one comparison.
        # refresh_at is the instant before which the entry is certainly fresh and
        # needs no XFetch draw; everything else goes to the decision core.
        # (An empty key must not hit the entry named by the bare prefix: validated.)
        full = self._prefix + key if key.__class__ is str and key else ""
        if not 0 < len(full) <= SHORT_KEY_CHARS:
            full = self._hit_key(key)
        if not callable(loader):
            check_loader(loader)
        if ttl is not None:
            ttl = check_ttl(ttl)
        ftags = self._entry_tags(tags) if tags else ()
        if ftags:
            self._need_tags(ftags)  # (the same TagsUnsupportedError in both front ends)
        view = self._held_view() if self._unsettled else None
        data = self._mdata
        try:
            if ftags or data is None:
                # With tags, a shared backend checks their versions in the same round trip.
                entry = self._bget_tagged(full, ftags) if ftags else self._bget(full)
            else:
                # MemoryBackend.get, inlined (a call is a sixth of a hit's cost): an
                # untagged entry only needs marking as recently used; a tagged one
                # takes the backend's own checks.
                entry = data.get(full)
                if entry is not None:
                    if entry.tags:
                        entry = self._bget(full)
                    else:
                        try:
                            data.move_to_end(full)
                        except KeyError:
                            pass  # removed meanwhile: this read is ordered before that
        except Exception as exc:
            # The backend is not answering: straight to the loader, no more waiting
            # on it in this call (no lease, no write).
            self._check_miss(full)  # a bad key (say, a lone surrogate) is not a failure
            self._degraded("get", exc)
            return self._load_unreached(full, loader, ttl, ftags)
        if entry is not None and self._clock() < entry.refresh_at and view is None:
            counters = self._counters
            counters.hits += 1
            if entry.negative:
                counters.negative_hits += 1
            value: T = entry.value
            return value
        return self._read_slow(full, loader, ttl, ftags, entry, view)

    def _read_slow(
        self,
        full: str,
        loader: Callable[[], T],
        ttl: float | None,
        tags: tuple[str, ...],
        entry: Entry | None,
        view: HeldView = None,
    ) -> T:
        counters = self._counters
        if (view is not None or self._unsettled) and self._covered(view, full, entry, tags):
            # Held invalidations are retried by the background settler, not here:
            # a miss must not wait on a backend that is failing.
            if self._unsettled and self._is_unsettled(full, entry, tags):
                if self._settler is None:
                    self._start_settler()  # held by another cache sharing ours, maybe
                return self._load_unreached(full, loader, ttl, tags)
            entry = None  # read before the invalidation just applied: not to be served
        now = self._clock()
        action = decide_read(entry, now, 1.0 - self._rng.random(), self._policy)
        if action is Read.LOAD or action is Read.LOAD_OR_STALE:
            self._check_miss(full)
            self._check_open()
            stale = entry if action is Read.LOAD_OR_STALE else None
            if self._leases is not None:
                # A hit was one GET; a miss goes through the in-process flight to
                # one read-with-lease per process (or per front end, on a shared
                # MemoryBackend). It counts its own outcome.
                self._drop_expired(full, entry, now)
                leased: T = self._read_leased(full, loader, ttl, tags, entry, stale)
                return leased
            counters.misses += 1
            self._drop_expired(full, entry, now)
            result: T = self._load(full, loader, ttl, tags, stale)
            return result
        assert entry is not None  # decide_read only loads on a missing entry
        if action is Read.HIT:
            counters.hits += 1
            if entry.negative:
                counters.negative_hits += 1
        elif action is Read.HIT_REFRESH:
            counters.hits += 1
            self._refresh_in_background(full, loader, ttl, tags, entry, early=True)
        else:  # Read.STALE_REFRESH
            counters.stale_served += 1
            self._refresh_in_background(full, loader, ttl, tags, entry, early=False)
        value: T = entry.value
        return value

    # -- writes -------------------------------------------------------------------

    def set(
        self, key: str, value: Any, *, ttl: Seconds | None = None, tags: Iterable[str] = ()
    ) -> None:
        """Store ``value`` under ``key``. A load in flight for ``key`` will not
        overwrite it. Prefer ``delete`` on write (cache-aside); ``set`` is for values
        you computed yourself. A value the backend cannot serialize raises
        ``SerializationError`` (a ``TypeError``) and nothing is written."""
        self._check_value(value)
        full = self._full_key(key)
        ttl = check_ttl(ttl)
        ftags = self._entry_tags(tags)
        self._check_open()
        self._need_tags(ftags)
        self._revoke([full])
        try:
            entry = self._new_entry(
                value, self._clock(), ttl, 0.0, False, ftags, self._stamp(ftags)
            )
            if entry is None:
                self._backend.delete(full)
            else:
                self._backend.set(full, entry)
        except Exception as exc:
            if classify(exc) is ErrorKind.CALLER:
                raise
            self._degraded("set", exc)
            self._unsettle(keys=[full])  # the old value may still be there

    def set_many(
        self, items: Mapping[str, Any], *, ttl: Seconds | None = None, tags: Iterable[str] = ()
    ) -> None:
        """``set`` for several keys with one TTL (and the same tags)."""
        if not isinstance(items, Mapping):
            raise TypeError(
                f"set_many takes a mapping of keys to values, not {type(items).__name__}"
            )
        for value in items.values():
            self._check_value(value)
        ttl = check_ttl(ttl)
        ftags = self._entry_tags(tags)
        self._check_open()
        self._need_tags(ftags)
        full_keys = [self._full_key(key) for key in items]
        self._revoke(full_keys)
        try:
            pairs, dropped = self._entries_for(items, ttl, ftags, self._stamp(ftags))
            if pairs:
                self._backend.set_many(pairs)
            if dropped:
                self._backend.delete_many(dropped)
        except Exception as exc:
            if classify(exc) is ErrorKind.CALLER:
                raise
            self._degraded("set_many", exc)
            self._unsettle(keys=full_keys)

    def delete(self, key: str) -> bool:
        """Remove ``key``; whether it was cached. A load in flight for it will not
        write its (possibly old) result, and later readers start a fresh load."""
        full = self._full_key(key)
        self._revoke([full])
        try:
            return bool(self._send_invalidation("delete", self._backend.delete, full))
        except Exception:
            self._unsettle(keys=[full])
            return False

    def delete_many(self, keys: Iterable[str]) -> int:
        """``delete`` for several keys; how many were cached."""
        self._check_keys(keys)
        full = [self._full_key(key) for key in keys]
        if not full:
            return 0
        self._revoke(full)
        try:
            return int(self._send_invalidation("delete_many", self._backend.delete_many, full))
        except Exception:
            self._unsettle(keys=full)
            return 0

    def invalidate_tags(self, *tags: str) -> None:
        """Invalidate every entry carrying any of ``tags``, in O(number of tags).

        Loads in flight for such entries are revoked too: a caller after this
        never joins a load that started before it.
        """
        ftags = self._full_tags(tags)
        if not ftags:
            return
        if self._tagger is None:
            raise TagsUnsupportedError(f"{type(self._backend).__name__} does not support tags")
        with self._lock:
            flights = self._flights.invalidate_tagged(ftags)
        for flight in flights:
            _pass_guard(flight)
        try:
            self._send_invalidation("invalidate_tags", self._tagger.invalidate_tags, ftags)
        except Exception:
            self._unsettle(tags=ftags)

    def _send_invalidation(self, operation: str, method: Callable[..., Any], *args: Any) -> Any:
        """Send an invalidation; a failure that came fast (a connection that turned
        out dead) is worth one more try before the invalidation is held, a timeout
        is not (it already waited). Each failure is counted; the last one raised."""
        started = time.monotonic()
        try:
            return method(*args)
        except Exception as exc:
            self._degraded(operation, exc)
            if not retry_fast_failure(time.monotonic() - started, 1):
                raise
        try:
            return method(*args)
        except Exception as exc:
            self._degraded(operation, exc)
            raise

    def _need_tags(self, tags: tuple[str, ...]) -> None:
        if tags and self._tagger is None:
            raise TagsUnsupportedError(f"{type(self._backend).__name__} does not support tags")

    def _stamp(self, tags: tuple[str, ...]) -> Any:
        """The backend's versions of ``tags``, taken before a value is loaded."""
        if not tags:
            return None
        self._need_tags(tags)
        assert self._tagger is not None
        return self._tagger.tag_stamp(tags)

    def _settle(self) -> None:
        """Retry the invalidations that did not reach the backend (the settler)."""
        applied = self._held_snapshot()
        keys, tags, everything = applied
        try:
            if everything:
                self._backend.clear(self._prefix)
            else:
                if keys:
                    self._backend.delete_many(list(keys))
                if tags and self._tagger is not None:
                    self._tagger.invalidate_tags(list(tags))
        except Exception as exc:
            self._degraded("settle", exc)
            return
        self._settled(applied)

    def _settle_once(self) -> None:
        self._settle()

    def _start_settler(self) -> None:
        """Run the background settler (once at a time) on a daemon thread of its
        own: not on the refresh pool, whose threads the interpreter joins at exit
        (a program that ends without ``close()`` while Redis is down must still
        exit: break 6 of issue 9). ``close()`` and the interpreter's exit make one
        last attempt (``CacheBase._last_settle``)."""
        with self._lock:
            if self._closed or self._settler is not None:
                return
            self._settler = threading.Thread(
                target=self._settle_loop, name="cachewise-settle", daemon=True
            )
        self._settler.start()

    def _settle_loop(self) -> None:
        try:
            while self._unsettled and not self._closed:
                self._settle()
                self._settle_wake.wait(_SETTLE_EVERY)
        finally:
            with self._lock:
                self._settler = None
            if self._unsettled and not self._closed:
                self._start_settler()  # held again as we left: keep going

    def clear(self) -> int:
        """Remove every entry of this cache's namespace (O(n)); how many."""
        with self._lock:
            flights = self._flights.invalidate_all()
        for flight in flights:
            _pass_guard(flight)
        try:
            return self._backend.clear(self._prefix)
        except Exception as exc:
            self._degraded("clear", exc)
            self._unsettle(everything=True)
            return 0

    def _revoke(self, keys: list[str]) -> None:
        # Invalidate before touching the backend: once revoked, no load in flight
        # can write; then our delete/set removes anything written before.
        with self._lock:
            flights = [f for f in map(self._flights.invalidate, keys) if f is not None]
        for flight in flights:
            _pass_guard(flight)

    # -- single-flight ------------------------------------------------------------

    def _join_or_lead(
        self, full: str, tags: tuple[str, ...], unwritten: bool = False
    ) -> tuple[Flight[_Call], bool, JoinPoint]:
        """The flight for ``full``; whether the caller leads it; and where its load
        stood as the caller joined (``LoadState.join_point``). An ``unwritten``
        caller (covered by a held invalidation, or cut off from the backend) never
        joins a flight that reads or writes the backend: it revokes it instead, so
        its old value is neither written nor handed to anyone after this."""
        with self._lock:
            flight = self._flights.get(full)
            if flight is not None and unwritten and not flight.handle.unwritten:
                self._flights.invalidate(full)
                flight = None
            if flight is None:
                call = _Call(guarded=self._leases is None)
                call.unwritten = unwritten
                flight = self._flights.start(full, call, tags)
                flight.leader = threading.get_ident()  # the leader loads in this thread
                return flight, True, call.join_point()
            flight.waiters += 1
            call = flight.handle
            if call.done is None:
                # Created under the lock that _finish takes, so no wake-up is lost.
                call.done = threading.Event()
            return flight, False, call.join_point()

    def _finish(self, flight: Flight[_Call]) -> None:
        if self._scope is not None:
            lease_ended(self._scope, flight.key, flight)
        # Leave the table before waking waiters, so a woken caller that comes
        # straight back starts a new flight instead of joining this finished one.
        with self._lock:
            self._flights.finish(flight)
            done = flight.handle.done
        if done is not None:
            done.set()

    def _await_call(self, call: _Call) -> None:
        done = call.done
        assert done is not None
        done.wait()

    def _load(
        self,
        full: str,
        loader: Callable[[], T],
        ttl: float | None,
        tags: tuple[str, ...],
        stale: Entry | None,
    ) -> T:
        """Single-flight load (memory and lease-less backends)."""
        value: T = self._single_flight(full, tags, lambda f: self._run(f, loader, ttl), stale)
        return value

    def _load_unreached(
        self, full: str, loader: Callable[[], T], ttl: float | None, tags: tuple[str, ...]
    ) -> T:
        """A miss while the backend is unreachable (or covered by a pending
        invalidation): single-flight the loader, write nothing."""
        self._check_miss(full)
        self._check_open()
        self._counters.misses += 1
        value: T = self._single_flight(
            full, tags, lambda f: self._run(f, loader, ttl, write=False), None, unwritten=True
        )
        return value

    def _single_flight(
        self,
        full: str,
        tags: tuple[str, ...],
        lead: Callable[[Flight[_Call]], None],
        stale: Entry | None,
        unreached: Callable[[Flight[_Call]], None] | None = None,
        unwritten: bool = False,
    ) -> Any:
        """Lead the flight for ``full`` (``lead(flight)``) or join it; its outcome.
        A joiner that may not take the outcome of a flight the backend failed leads
        with ``unreached`` (a load that neither reads nor writes) instead."""
        while True:
            flight, leader, joined = self._join_or_lead(full, tags, unwritten)
            call = flight.handle
            if leader:
                lead(flight)
            else:
                self._counters.coalesced += 1
                me = threading.get_ident()
                enter_wait(me, flight)  # LoaderCycleError rather than a deadlock
                try:
                    self._await_call(call)
                finally:
                    leave_wait(me)
                if call.abandoned:
                    continue  # the leader was interrupted; try again (maybe as leader)
                if self._leases is not None:
                    # Errors are shared; a value only when it is safe (LoadState).
                    if call.error is None and not call.safe_for(joined):
                        # Read again: the value may predate a delete elsewhere;
                        # but not from a backend that just failed (LoadState.unreached).
                        if call.unreached and unreached is not None:
                            lead, unwritten = unreached, True
                        continue
                    # On a lease backend the outcome decides hit, stale or miss.
                    self._count_served(call.kind, call.negative)
            if call.abandoned:
                continue
            return self._outcome(call, stale, leader)

    def _outcome(self, call: _Call, stale: Entry | None, leader: bool) -> Any:
        """The value a finished flight gives this caller (stale-if-error included).
        A joiner falls back on a stale value only from its own read: the leader's
        was read before the joiner came, maybe before a delete the joiner saw."""
        if call.error is None:
            return call.value
        if leader:
            stale = stale or call.stale
        if stale_servable(stale, self._clock()):
            assert stale is not None
            self._counters.stale_served += 1
            return stale.value
        raise call.error

    def _run(
        self,
        flight: Flight[_Call],
        loader: Callable[[], Any],
        ttl: float | None,
        *,
        token: str | None = None,
        write: bool = True,
    ) -> None:
        """Run one load to completion and publish its outcome to every waiter.

        With ``token`` the write is guarded by that lease; ``write=False`` (a load
        that gave up waiting for another process's lease) writes nothing. Never
        raises an ``Exception`` (it goes to ``call.error``); a ``BaseException`` is
        re-raised after waking the waiters.
        """
        call = flight.handle
        counters = self._counters
        clock = self._clock
        counters.loads += 1
        try:
            stamp = None
            if flight.tags and (write or token is not None):
                # Stamp first: an invalidation during the load makes its entry a miss.
                try:
                    stamp = self._stamp(flight.tags)
                except Exception as exc:
                    if classify(exc) is ErrorKind.CALLER:  # the backend has no tags
                        call.error = exc
                        self._release(flight.key, token)
                        return
                    self._degraded("tag_stamp", exc)
                    write = False  # an unstamped entry must not be written
                    self._release(flight.key, token)
                    token = None
            call.started = True
            if not write and token is None:
                call.confirmed = False  # nothing will be written: nothing confirms it
            entered = loading(flight)  # (see _cycles: tasks and calls inside the load)
            # The loader's own reads are its own: the caller's type= must not reach
            # them (a nested get() would decode with the outer call's type).
            untyped = _typed.READ_TYPE.set(None)
            try:
                start = clock()
                try:
                    value = loader()
                finally:
                    _typed.restore(untyped)
                if inspect.isawaitable(value):
                    if inspect.iscoroutine(value):
                        value.close()  # never awaited by anyone: close it quietly
                    raise TypeError(
                        f"the loader returned {type(value).__name__}, an awaitable; Cache "
                        "needs a sync loader (use AsyncCache for async loaders)"
                    )
                check_reusable(value)
                negative = bool(self._policy.is_negative(value))
                end = clock()
            except Exception as exc:
                counters.load_errors += 1
                call.error = exc
                self._release(flight.key, token)
                return
            finally:
                done_loading(entered)
            entry = self._new_entry(
                value, end, ttl, max(end - start, 0.0), negative, flight.tags, stamp
            )
            with self._lock:
                call.sealed = True  # who joins from now on reads again rather than wait
            try:
                if token is not None:
                    self._write_leased(flight, entry, token)
                elif write:
                    self._write_guarded(flight, entry)
            except _UNSTORABLE as exc:
                # Not storable: every waiter still gets the value, uncached.
                self._refused_write(exc)
            except WeigherError as exc:
                call.error = exc  # the application's weigher: every waiter gets it
            call.value = value
        except BaseException:
            # A KeyboardInterrupt (or any BaseException) anywhere in the load or its
            # write: the waiters read again rather than wait for good, and the
            # store's lease must not outlive us (other front ends would wait on it).
            call.abandoned = True
            self._release(flight.key, token)
            raise
        finally:
            self._finish(flight)

    def _write_guarded(self, flight: Flight[_Call], entry: Entry | None) -> None:
        guard = flight.handle.guard
        assert guard is not None
        with guard:
            if not flight.valid:
                return
            try:
                if entry is None:
                    # Not storable (ttl=0, or a negative result with negative_ttl=0):
                    # drop whatever older value is there rather than keep serving it.
                    self._backend.delete(flight.key)
                else:
                    self._backend.set(flight.key, entry)
            except Exception as exc:
                if classify(exc) is ErrorKind.CALLER:
                    raise
                self._degraded("set", exc)

    def _write_leased(self, flight: Flight[_Call], entry: Entry | None, token: str) -> None:
        # The lease makes the write atomic with respect to deletes in any process;
        # the local validity check only saves a round trip.
        leases = self._leases
        assert leases is not None
        call = flight.handle
        call.confirmed = False
        if entry is None or not flight.valid:
            self._release(flight.key, token)
            return
        started = time.monotonic()
        try:
            # False: the lease was lost (deleted or expired) while loading.
            call.confirmed = leases.set_leased(flight.key, entry, token)
        except Exception as exc:
            if classify(exc) is ErrorKind.CALLER:
                # Nothing written: if the lease was still ours, no delete happened
                # since it was granted, and the value may go to the joiners as a
                # written one would (see LoadState.safe_for).
                call.confirmed = self._release(flight.key, token)
                raise
            self._degraded("set", exc)
            call.unreached = True
            # After a fast failure, release now; after a timeout, in the
            # background: the caller must not wait out a second timeout, and other
            # processes' readers wait on the lease until it is released (or
            # expires). This cache takes its own orphaned lease over on its next read.
            if retry_fast_failure(time.monotonic() - started, 1):
                self._release(flight.key, token)
            else:
                self._release_later(flight.key, token)

    def _release_later(self, key: str, token: str) -> None:
        """Release a lease on the owned pool (bounded like refreshes: past the
        bound the lease is left to expire)."""
        with self._lock:
            if self._closed or len(self._futures) >= self._max_pending:
                return
            future = self._pool().submit(self._release_quietly, key, token)
            self._futures.add(future)
        future.add_done_callback(self._forget_future)

    def _release_quietly(self, key: str, token: str) -> None:
        self._release(key, token)

    def _release(self, key: str, token: str | None) -> bool:
        """Release the lease (errors degraded); whether it was still ours."""
        if token is None or self._leases is None:
            return False
        try:
            return bool(self._leases.release(key, token))
        except Exception as exc:
            self._degraded("release", exc)
            return False

    # -- read-through on a shared backend with leases ------------------------------

    def _read_leased(
        self,
        full: str,
        loader: Callable[[], T],
        ttl: float | None,
        tags: tuple[str, ...],
        found: Entry | None,
        stale: Entry | None,
    ) -> T:
        # Misses go through the in-process flight first, so one process sends one
        # lease request per key, however many threads miss at once.
        value: T = self._single_flight(
            full,
            tags,
            lambda f: self._lead_leased(f, loader, ttl, found, stale),
            stale,
            lambda f: self._run(f, loader, ttl, write=False),
        )
        return value

    def _lead_leased(
        self,
        flight: Flight[_Call],
        loader: Callable[[], Any],
        ttl: float | None,
        found: Entry | None,
        stale: Entry | None,
    ) -> None:
        leases = self._leases
        assert leases is not None
        call = flight.handle
        full = flight.key
        token = new_token(self._token_prefix)
        flow = leased_read(self._policy, leases.wait_timeout, found, stale)
        try:
            step = next(flow)
            while True:
                if isinstance(step, ReadStep):
                    call.reads += 1  # before sending: see LoadState.reads
                    try:
                        reply = leases.read_or_lease(full, token, step.mode)
                    except Exception as exc:
                        # Degraded: load without a lease (and without writing).
                        self._degraded("read", exc)
                        call.unreached = True
                        outcome: Outcome = LoadStep(leased=False, stale=None)
                        break
                    if reply.granted and self._scope is not None:
                        lease_taken(self._scope, full, flight, token)
                    step = flow.send(
                        Observed(reply, self._clock(), time.monotonic(), 1.0 - self._rng.random())
                    )
                else:
                    dead = dead_lease(self._scope, full) if self._scope is not None else None
                    if dead is not None:
                        # Held by a load whose event loop was closed or stopped
                        # under it (see dead_lease). Release it, and read again.
                        self._release(full, dead)
                        step = flow.send(None)
                        continue
                    holder = lease_holder(self._scope, full) if self._scope is not None else None
                    me = threading.get_ident()
                    if holder is not None:
                        try:
                            enter_wait(me, holder)  # the holder may be waiting for us
                        except LoaderCycleError as exc:
                            call.error = exc
                            self._finish(flight)
                            return
                    try:
                        leases.wait(full, step.seconds)
                    except Exception as exc:
                        # The backend went away while we waited: asking for the
                        # lease again would wait out a second timeout, so load
                        # now, without a lease and without writing.
                        self._degraded("wait", exc)
                        call.unreached = True
                        outcome = LoadStep(leased=False, stale=None)
                        break
                    finally:
                        if holder is not None:
                            leave_wait(me)
                    step = flow.send(None)
        except StopIteration as stop:
            outcome = stop.value
        except BaseException:
            # Interrupted between reads: a lease granted to us must not stay held
            # (release checks the token: harmless if we never had it).
            call.abandoned = True
            self._release(full, token)
            self._finish(flight)
            raise
        if isinstance(outcome, Serve):
            entry = outcome.entry
            # Served from a read of ours, or from what the caller had read before.
            call.served_read = call.reads if entry is not found and entry is not stale else 0
            call.value = entry.value
            call.negative = entry.negative
            call.kind = "stale" if outcome.stale else "hit"
            self._count_served(call.kind, call.negative)
            self._finish(flight)
            # After _finish: the refresh needs the key's flight slot to itself.
            if outcome.refresh:
                self._refresh_in_background(
                    full, loader, ttl, flight.tags, entry, early=not outcome.stale
                )
            return
        call.kind = "load"
        call.stale = outcome.stale
        self._count_served(call.kind, call.negative)
        if self._closed:
            call.error = CacheClosedError("Cache is closed")
            self._release(full, token if outcome.leased else None)
            self._finish(flight)
            return
        self._run(
            flight, loader, ttl, token=token if outcome.leased else None, write=outcome.leased
        )

    # -- background refreshes -----------------------------------------------------

    def _refresh_in_background(
        self,
        full: str,
        loader: Callable[[], Any],
        ttl: float | None,
        tags: tuple[str, ...],
        trigger: Entry,
        *,
        early: bool,
    ) -> None:
        """Start one background refresh of ``full`` (the hit read ``trigger``) unless
        one is in flight."""
        with self._lock:
            if self._closed or full in self._flights:
                return
            if len(self._futures) >= self._max_pending:
                self._counters.refreshes_dropped += 1
                return
            executor = self._pool()
            flight = self._flights.start(full, _Call(guarded=self._leases is None), tags)
            # Submit under the lock: close() takes it before shutting the pool
            # down, so submit never races with shutdown.
            # In the caller's context: the refresh reads the stale entry with the
            # caller's type= (a pool thread has no context of its own).
            context = contextvars.copy_context()
            future = executor.submit(
                context.run, self._run_background, flight, loader, ttl, trigger, early
            )
            self._futures.add(future)
        future.add_done_callback(self._forget_future)

    def _pool(self) -> ThreadPoolExecutor:
        # Caller holds self._lock.
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                self._refresh_workers, thread_name_prefix="cachewise-refresh"
            )
        return self._executor

    def _run_background(
        self,
        flight: Flight[_Call],
        loader: Callable[[], Any],
        ttl: float | None,
        trigger: Entry,
        early: bool,
    ) -> None:
        flight.leader = threading.get_ident()
        token = None
        if self._leases is not None:
            # Across processes, one refresh per key: only the lease holder runs it.
            token = new_token(self._token_prefix)
            try:
                reply = self._leases.read_or_lease(flight.key, token, "refresh")
                granted, current = reply.granted, reply.entry
            except Exception as exc:
                self._degraded("read", exc)
                granted, current = False, None
            if granted and self._scope is not None:
                lease_taken(self._scope, flight.key, flight, token)
            if granted and superseded(trigger, current):
                self._release(flight.key, token)
                granted = False
        else:
            try:
                current = self._bget(flight.key)
            except Exception as exc:
                self._degraded("get", exc)
                current = None
            granted = not superseded(trigger, current)
        if not granted:
            flight.handle.abandoned = True  # joiners (if any) read again
            self._finish(flight)
            return
        if early:
            self._counters.early_refreshes += 1
        self._run(flight, loader, ttl, token=token)
        if flight.handle.error is not None:
            self._refresh_failed(flight.key, flight.handle.error)

    def _forget_future(self, future: Future[None]) -> None:
        with self._lock:
            self._futures.discard(future)

    def wait_background(self, timeout: float | None = None) -> bool:
        """Wait for the background refreshes started so far; whether all finished.
        (Not the settler: it runs for as long as invalidations are held.)"""
        with self._lock:
            pending = list(self._futures)
        _, not_done = wait_futures(pending, timeout=timeout)
        return not not_done

    # -- decorator ----------------------------------------------------------------

    @overload
    def cached(self, key: Callable[P, R], /) -> CachedFunction[P, R]: ...
    @overload
    def cached(
        self,
        key: str | None = None,
        ttl: Seconds | None = None,
        *,
        tags: Sequence[str] = (),
        max_keys: int | None = None,
        on_max_keys: OnMaxKeys = "warn",
        ignore: Iterable[str | type] = (),
    ) -> Callable[[Callable[P, R]], CachedFunction[P, R]]: ...

    def cached(
        self,
        key: Any = None,
        ttl: Seconds | None = None,
        *,
        tags: Sequence[str] = (),
        max_keys: int | None = None,
        on_max_keys: OnMaxKeys = "warn",
        ignore: Iterable[str | type] = (),
    ) -> Any:
        """Decorate a function so calls read through this cache.

        ``key`` is a template filled from the call's bound arguments, defaults
        applied (``"user:{user_id}:profile"``); without one, a stable key from the
        function's qualified name and arguments. ``tags`` are templates too. The
        decorated function gains ``.invalidate(*args, **kwargs)`` and
        ``.key_for(*args, **kwargs)``. ``max_keys`` guards the template's
        cardinality (see ``KeyBuilder``). The read joins the invalidation map.

        ``ignore``: parameters left out of default keys, by name or by type
        (``ignore=("db", Request)``), besides the framework types that never are
        data (sessions, connections, requests, background tasks: see
        ``cachewise.keys.ArgFilter``). A shared backend rebuilds structured
        values with the function's return annotation.
        """
        if callable(key):  # used bare: @cache.cached
            return self.cached()(key)
        ttl = check_ttl(ttl)
        if key is not None and not isinstance(key, str):
            raise TypeError(f"key must be a template str, not {type(key).__name__}")

        def decorate(func: Callable[P, R]) -> CachedFunction[P, R]:
            _check_sync_callable(func, "cached")
            keys = self._key_builder(func, key, tags, max_keys, on_max_keys, ignore)
            cached = CachedFunction(self, func, keys, ttl)
            self._declare_read(func, keys, ttl, owner=cached)
            return cached

        return decorate

    def invalidates(
        self,
        *keys: str,
        tags: Sequence[str] = (),
        after_commit: AfterCommitName | None = None,
    ) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Declare what a write invalidates, and invalidate it when it returns, or
        when the transaction it wrote in commits.

        ``keys`` and ``tags`` are templates over the write's arguments::

            @cache.invalidates("user:{user_id}:profile", tags=["user:{user_id}"])
            def rename_user(user_id: int, name: str) -> None:
                ...  # update and commit

        Without ``after_commit`` the write must have committed when it returns. With
        it, the invalidation goes through that integration's after-commit helper
        (``cachewise.integrations``), so it runs once the surrounding transaction
        commits, and is dropped if it rolls back:

        - ``"sqlalchemy"``: the ``Session`` (or ``AsyncSession``) among the write's
          arguments (``invalidate_after_commit``).
        - ``"django"``: Django's current transaction on the default database
          (``invalidate_on_commit``).
        - ``"dbapi"``: the cachewise ``transaction()`` block open on the DB-API
          connection among the write's arguments.

        If no transaction is open when the write returns (it committed its own,
        or the connection autocommits), the invalidation runs at once; so it does,
        too, when a commit happened during the call (that part of the write is
        committed already). A SQLAlchemy or DB-API write whose arguments hold no
        session or connection is a ``TypeError`` before it runs, as is a DB-API
        connection whose commits cannot be followed (no cachewise block on it and
        no way to tell whether a transaction is open).

        If the write raises, it may have written (or committed) first, so it is
        invalidated all the same: at once, or registered with the transaction (a
        rollback drops it; with ``"dbapi"`` and a transaction left open outside a
        block, at once), and its exception propagates. The declaration, with when
        it invalidates, joins the invalidation map (``cachewise invalidation-map``).
        """

        def decorate(func: Callable[P, R]) -> Callable[P, R]:
            _check_sync_callable(func, "invalidates")
            invalidator = Invalidator(func, keys, tags)
            hook = after_commit_hook(after_commit, self, invalidator, is_async=False)
            wrapper = invalidating(self, func, invalidator, hook)
            self._declare_write(
                func, tuple(keys), tuple(tags), owner=wrapper, after_commit=after_commit
            )
            return wrapper

        return decorate

    # -- fork ---------------------------------------------------------------------

    def _fork_locks(self) -> list[threading.Lock]:
        return [self._lock]

    def _after_fork_child(self) -> None:
        # See _forksafe: the parent's threads are not in the child. Their flights
        # would never end (joiners would hang), their pool runs nothing.
        self._lock = threading.Lock()
        self._flights = FlightTable()
        self._executor = None
        self._futures = set()
        self._settler = None
        self._settle_wake = threading.Event()

    # -- lifecycle ----------------------------------------------------------------

    def close(self) -> None:
        """Drain background refreshes, then close the backend if the cache owns it.
        Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            executor = self._executor
        self._settle_wake.set()
        settler = self._settler
        if settler is not None:
            settler.join(_SETTLER_JOIN)  # it stops at its next turn (one timeout at most)
        if executor is not None:
            executor.shutdown(wait=True)
        self._last_settle()  # held invalidations get one last try, or an ERROR
        if self._owns_backend:
            self._backend.close()

    def __enter__(self) -> Cache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Cache(backend={self._backend!r}, namespace={self._namespace!r})"


# A backend failure quicker than this was not a timeout.
# How long close() waits for the settler to stop.
_SETTLER_JOIN = 2.0


def _check_sync_callable(func: object, decorator: str) -> None:
    if not callable(func):
        raise TypeError(f"{decorator}() decorates callables, not {type(func).__name__}")
    check_not_generator(func, decorator)
    if is_async_callable(func):
        raise TypeError(
            f"{getattr(func, '__qualname__', func)!s} is a coroutine function; "
            f"use an AsyncCache's {decorator}(), not a Cache's"
        )


def _untagged(backend: Backend) -> Callable[[str, tuple[str, ...]], Entry | None]:
    def get(key: str, tags: tuple[str, ...]) -> Entry | None:
        raise TagsUnsupportedError(f"{type(backend).__name__} does not support tags")

    return get


def _looks_async(backend: object) -> bool:
    return inspect.iscoroutinefunction(getattr(backend, "get", None))
