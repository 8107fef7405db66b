# unasync: async-only
"""``AsyncCache``: the front end for asyncio code, and the source of ``sync.py``."""
# unasync: end
# unasync: sync-only
# """``Cache``: the front end for threaded code."""
# unasync: end

# unasync: async-only
# The one hand-written source of both front ends: scripts/unasync.py generates
# sync.py (``Cache``) from this file. What differs in kind lives in _async_prims /
# _sync_prims (same names); the few lines that differ otherwise carry an
# ``# unasync:`` directive.
# unasync: end

from __future__ import annotations

import asyncio  # unasync: async-only
import contextlib  # unasync: async-only
import enum
import itertools
import random
import threading

# unasync: async-only
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence

# unasync: end
# unasync: sync-only
# from collections.abc import Callable, Iterable, Mapping, Sequence
# unasync: end
from types import TracebackType
from typing import Any, TypeVar, overload

from cachewise import _forksafe, _typed
from cachewise._core.entry import Entry
from cachewise._core.errors import ErrorKind, classify, retry_fast_failure
from cachewise._core.flights import (
    Flight,
    FlightTable,
    JoinPoint,
    LoadState,
    Next,
    Served,
    after_wait,
    refresh_granted,
)
from cachewise._core.policy import Read, Seconds, decide_read, stale_servable
from cachewise._core.readflow import (
    LeaseMode,
    LoadStep,
    Observed,
    Outcome,
    ReadStep,
    Serve,
    leased_read,
)
from cachewise._errors import (
    CacheClosedError,
    LoaderCycleError,
    TagsUnsupportedError,
    WeigherError,
)
from cachewise._frontends import _async_prims as prims
from cachewise._frontends._base import (
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
    outside_loads,
)
from cachewise._frontends._decorator import (
    AfterCommitName,
    Invalidator,
    OnMaxKeys,
    P,
    R,
    after_commit_hook,
    check_not_generator,
    is_async_callable,
)
from cachewise._frontends._decorator_async import AsyncCachedFunction, async_invalidating
from cachewise._frontends._group import CacheGroup
from cachewise._frontends._held import HeldView
from cachewise._sentinel import MISSING
from cachewise.backends._memory import MemoryBackend
from cachewise.backends._protocol import InProcessLeaseBackend
from cachewise.invalidation import Registry
from cachewise.keys import SHORT_KEY_CHARS, check_key
from cachewise.serialization import SerializationError, Serializer, ValueTooLargeError

T = TypeVar("T")
D = TypeVar("D")

# What a load's write may refuse and still hand its value to the callers: the
# codec's refusals. (A weigher's error is the application's bug: it is raised.)
_UNSTORABLE = (SerializationError, ValueTooLargeError)


class _Lead(enum.Enum):
    """How the leader of a flight loads."""

    LOAD = "load"  # call the loader, write the result (a backend without leases)
    LEASED = "leased"  # the lease flow first (readflow.leased_read), then maybe load
    UNWRITTEN = "unwritten"  # call the loader, read and write nothing
    # As UNWRITTEN, for a caller covered by a held invalidation: it first revokes
    # the key's flight that reads or writes the backend (which may hold, or be
    # about to write, what the invalidation removes).
    COVERED = "covered"


class _Handle(LoadState):
    """The waiting side of one flight: the event its callers wait on (created by
    the first one, under the cache's lock, which the flight's end takes too: no
    wake-up is lost), and the write guard of a backend without leases: held while
    the finished load checks its flight is still valid and writes; invalidation
    passes through it, so its delete lands after such a write."""

    __slots__ = ("event", "guard")

    def __init__(self, guarded: bool) -> None:
        super().__init__()
        self.event: prims.Event | None = None
        self.guard = prims.Guard() if guarded else None


class AsyncCache(CacheBase):
    # unasync: async-only
    """A read-through cache for asyncio code: ``Cache``'s API, as coroutines.

    Loaders are zero-argument callables returning an awaitable. A shared load runs in
    its own task, so cancelling any waiter (the first included) never cancels it for
    the others. Background refreshes are tracked tasks that ``aclose()`` drains.

    The backend may be an ``AsyncBackend`` or a non-blocking sync backend such as
    ``MemoryBackend`` (the default), which is called directly, without an ``await``.
    Use one ``AsyncCache`` from one event loop at a time.
    """

    # unasync: end
    # unasync: sync-only
    # """A read-through cache for threaded code.
    #
    # ``backend=None`` means a bounded ``MemoryBackend`` (10,000 entries, 64 MiB) that
    # the cache owns and closes. A backend you pass in stays yours to close.
    #
    # Options (all keyword-only, all validated):
    #
    # - ``namespace``: prefix of every key (``"ns:key"``).
    # - ``ttl``: default lifetime in seconds; each write draws its TTL uniformly from
    #   ``[ttl*(1-jitter), ttl*(1+jitter)]``. ``0`` stores nothing.
    # - ``stale_ttl``: grace window past the TTL in which a stale value is served
    #   while one refresh runs (stale-while-revalidate), and served instead of a
    #   load error (stale-if-error). ``serve_stale=False`` makes readers wait for the
    #   refresh instead, still falling back to the stale value on error.
    # - ``negative_ttl``: lifetime of a loader result for which ``is_negative(result)``
    #   holds (default: ``result is None``), capped by ``ttl``; ``0`` caches none.
    # - ``early_refresh``: XFetch's β; ``0`` turns probabilistic early refresh off.
    # - ``clock``: zero-argument callable returning seconds (default ``time.time``);
    #   ``rng``: a ``random.Random`` for jitter and XFetch draws.
    # - ``refresh_workers`` / ``max_pending_refreshes``: the bounded pool that runs
    #   background refreshes, drained by ``close()``.
    # """
    # unasync: end

    def __init__(
        self,
        backend: prims.BackendArg | None = None,
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
        # unasync: sync-only
        # refresh_workers: int = 4,
        # unasync: end
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
        # Background work: refreshes and late lease releases (and, in asyncio,
        # the tasks loads run in).
        work = prims.Background()  # unasync: sync=work = prims.Background(refresh_workers)
        if backend is None:
            backend = MemoryBackend()
            self._owns_backend = True
        adopted = prims.Adopted(backend)
        self._backend: prims.AnyBackend = backend
        self._stats_source = backend
        self._init_discard(backend)
        # The backend as this code calls it (with ``await``, in asyncio), and its
        # optional capabilities.
        self._store = adopted.store
        self._tagger = adopted.tagger
        # Backends with leases read through the in-process flight first; so does
        # an in-process one (MemoryBackend), whose leases coordinate this cache
        # with every other front end on it.
        self._leases = adopted.leases
        # A backend called directly, with no await (always, in threaded code):
        # bound once, so the hit path is one call into the backend.
        self._local = adopted.local
        self._local_get: Any = adopted.local.get if adopted.local is not None else None
        # The exact MemoryBackend's entries: its get is inlined on the hit path (a
        # subclass may override get, so it gets no such shortcut).
        self._memory_data = backend._table if type(backend) is MemoryBackend else None
        # An in-process store's leases are held by flights of this process: waits
        # on them join the loader-cycle check (see _cycles).
        local = self._local
        self._inproc = local if isinstance(local, InProcessLeaseBackend) else None
        # Leases of flights of this process are recorded under this name of the
        # store, shared by every cache on it (see _cycles: cycles through leases).
        self._scope = lease_scope(backend) if self._leases is not None else None
        # Guards the flight table and the pending-work bookkeeping. Never held
        # across a loader call, backend I/O or an await.
        self._lock = threading.Lock()
        self._flights: FlightTable[_Handle] = FlightTable()
        # Loads that neither read nor write the backend (see _join_or_lead).
        self._offline: FlightTable[_Handle] = FlightTable()
        # Calls entering single-flight and flights being made, in order (next() on
        # an itertools.count is atomic: no lock needed).
        self._sequence = itertools.count(1)
        self._work = work
        # unasync: async-only
        self._settler: asyncio.Task[Any] | None = None  # (the thread stands by: _held)
        # The event loop the flights, tasks and settler belong to (_check_loop).
        self._loop: asyncio.AbstractEventLoop | None = None
        # unasync: end
        _forksafe.register(self)

    @classmethod
    def from_url(
        cls, url: str, *, serializer: Serializer | str | None = None, **options: Any
    ) -> AsyncCache:
        """A cache on the backend ``url`` names, e.g. ``memory://?max_entries=1000``
        or ``redis://host:6379/0``. The cache owns the backend and closes it.

        Keywords are the cache's options (``ttl=``, ``namespace=``...) and the URL's
        query options (``socket_timeout=1.0``, ``lock_timeout=timedelta(seconds=2)``;
        a keyword wins over the query), plus ``secret=`` for
        ``serializer="pickle"``, ``client_options={...}`` passed to redis-py's
        clients and, for Sentinel URLs, ``sentinel_options={...}``. Any other name
        is a ``TypeError`` listing the accepted ones.
        """
        cache: AsyncCache = cache_from_url(cls, url, "async", serializer, options)
        return cache

    @property
    def backend(self) -> prims.AnyBackend:
        """The backend entries live in."""
        return self._backend

    # -- reads --------------------------------------------------------------------

    @overload
    async def get(self, key: str, *, type: Any = None) -> Any: ...
    @overload
    async def get(self, key: str, default: D, *, type: Any = None) -> Any | D: ...

    async def get(self, key: str, default: Any = MISSING, *, type: Any = None) -> Any:
        """The fresh value under ``key``, or ``default`` (``MISSING``).

        Never returns a stale value: with no loader there is nothing to revalidate.
        ``type``: what the value is (``User``, ``list[User]``, ``User | None``), for
        structured values on a shared backend: the reader's type rebuilds them
        (see ``cachewise.serialization``); an entry that does not fit is a miss.
        """
        if type is not None:
            token = _typed.expect(type)
            try:
                return await self.get(key, default)
            finally:
                _typed.READ_TYPE.reset(token)
        # (An empty key must not hit the entry named by the bare prefix: validated.)
        full = self._prefix + key if key.__class__ is str and key else ""
        if not 0 < len(full) <= SHORT_KEY_CHARS:
            full = self._hit_key(key)
        view = None
        if self._unsettled:
            view = self._held_view()
            # Held by another cache sharing ours, maybe one whose settler cannot
            # run; or, after a loop change, it may need starting again.
            self._start_settler()
        local_get = self._local_get
        try:
            entry = local_get(full) if local_get is not None else await self._store.get(full)
        except Exception as exc:
            self._check_miss(full)  # a bad key (say, a lone surrogate) is not a failure
            self._degraded("get", exc)
            entry = None
        counters = self._counters
        now = self._clock()
        if (view is not None or self._unsettled) and self._covered(view, full, entry):
            entry = None  # an invalidation of it has not reached the backend yet
        if entry is not None and now < entry.expires_at:  # policy.is_fresh, inlined
            counters.hits += 1
            if entry.negative:
                counters.negative_hits += 1
            return entry.value
        self._check_miss(full)  # a miss on a key no write could have made is an error
        counters.misses += 1
        self._drop_expired(full, entry, now)
        return default

    async def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """The fresh values among ``keys``, as ``{key: value}``; misses are left out."""
        self._check_loop()  # unasync: async-only
        self._check_keys(keys)
        wanted = [check_key(key) for key in keys]
        full = [self._full_key(key) for key in wanted]
        entries: list[Entry | None] | None
        view = self._held_view()
        if view is not None:
            self._start_settler()  # (held by a sibling, maybe: see get)
        try:
            entries = await self._store.get_many(full)
        except Exception as exc:
            self._degraded("get_many", exc)
            entries = None
        return self._collect_fresh(wanted, entries, view)

    async def get_or_load(
        self,
        key: str,
        loader: Callable[[], Awaitable[T]],
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
                return await self.get_or_load(key, loader, ttl=ttl, tags=tags)
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
            self._need_tags(ftags)
        view = self._held_view() if self._unsettled else None
        data = self._memory_data
        try:
            if data is None:
                # With tags, a shared backend checks their versions in the same round trip.
                entry = await self._read(full, ftags)
            else:
                # MemoryBackend.get, inlined (a call is a sixth of a hit's cost): an
                # untagged entry only needs marking as recently used; a tagged one
                # takes the backend's own checks. (Its get_tagged is its get.)
                entry = data.get(full)
                if entry is not None:
                    if entry.tags:
                        entry = self._local_get(full)
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
            unreached: T = await self._load_unreached(full, loader, ttl, ftags, covered=False)
            return unreached
        if entry is not None and self._clock() < entry.refresh_at and view is None:
            counters = self._counters
            counters.hits += 1
            if entry.negative:
                counters.negative_hits += 1
            value: T = entry.value
            return value
        return await self._read_slow(full, loader, ttl, ftags, entry, view)

    async def _read(self, full: str, tags: tuple[str, ...] = ()) -> Entry | None:
        """Read one entry (raising what the backend raises); with ``tags``, the
        backend checks them in the same round trip."""
        if tags:
            assert self._tagger is not None  # (checked by _need_tags)
            return await self._tagger.get_tagged(full, tags)
        return await self._store.get(full)

    async def _read_slow(
        self,
        full: str,
        loader: Callable[[], Awaitable[T]],
        ttl: float | None,
        tags: tuple[str, ...],
        entry: Entry | None,
        view: HeldView = None,
    ) -> T:
        counters = self._counters
        self._check_loop()  # unasync: async-only
        if self._unsettled:
            self._start_settler()  # (a no-op while it runs: held by a sibling, maybe)
        if (view is not None or self._unsettled) and self._covered(view, full, entry, tags):
            # Held invalidations are retried by the background settler, not here:
            # a miss must not wait on a backend that is failing.
            if self._unsettled and self._held.covers_now(full, entry, tags):
                pending: T = await self._load_unreached(full, loader, ttl, tags, covered=True)
                return pending
            entry = None  # read before the invalidation just applied: not to be served
        now = self._clock()
        action = decide_read(entry, now, 1.0 - self._rng.random(), self._policy)
        if action is Read.LOAD or action is Read.LOAD_OR_STALE:
            self._check_miss(full)
            self._check_open()
            stale = entry if action is Read.LOAD_OR_STALE else None
            self._drop_expired(full, entry, now)
            if self._leases is not None:
                # A hit was one GET; a miss goes through the in-process flight to
                # one read-with-lease per process (or per front end, on a shared
                # MemoryBackend). It counts its own outcome.
                leased: T = await self._load(full, loader, ttl, tags, stale, _Lead.LEASED, entry)
                return leased
            counters.misses += 1
            result: T = await self._load(full, loader, ttl, tags, stale, _Lead.LOAD)
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

    async def set(
        self, key: str, value: Any, *, ttl: Seconds | None = None, tags: Iterable[str] = ()
    ) -> None:
        """Store ``value`` under ``key``. A load in flight for ``key`` will not
        overwrite it. Prefer ``delete`` on write (cache-aside); ``set`` is for values
        you computed yourself. A value the backend cannot serialize raises
        ``SerializationError`` (a ``TypeError``) and nothing is written."""
        self._check_loop()  # unasync: async-only
        self._check_value(value)
        full = self._full_key(key)
        ttl = check_ttl(ttl)
        ftags = self._entry_tags(tags)
        self._check_open()
        self._need_tags(ftags)
        await self._revoke(keys=[full])
        with self._held_if_failed("set", [full]):
            stamp = await self._stamp(ftags)
            entry = self._new_entry(value, self._clock(), ttl, 0.0, False, ftags, stamp)
            if entry is None:
                await self._store.delete(full)
            else:
                await self._store.set(full, entry)

    async def set_many(
        self, items: Mapping[str, Any], *, ttl: Seconds | None = None, tags: Iterable[str] = ()
    ) -> None:
        """``set`` for several keys with one TTL (and the same tags)."""
        self._check_loop()  # unasync: async-only
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
        await self._revoke(keys=full_keys)
        with self._held_if_failed("set_many", full_keys):
            pairs, dropped = self._entries_for(items, ttl, ftags, await self._stamp(ftags))
            if pairs:
                await self._store.set_many(pairs)
            if dropped:
                await self._store.delete_many(dropped)

    async def delete(self, key: str) -> bool:
        """Remove ``key``; whether it was cached. A load in flight for it will not
        write its (possibly old) result, and later readers start a fresh load."""
        self._check_loop()  # unasync: async-only
        full = self._full_key(key)
        await self._revoke(keys=[full])
        return bool(await self._send_invalidation("delete", self._store.delete, full, keys=[full]))

    async def delete_many(self, keys: Iterable[str]) -> int:
        """``delete`` for several keys; how many were cached."""
        self._check_loop()  # unasync: async-only
        self._check_keys(keys)
        full = [self._full_key(key) for key in keys]
        if not full:
            return 0
        await self._revoke(keys=full)
        method = self._store.delete_many
        return int(await self._send_invalidation("delete_many", method, full, keys=full) or 0)

    async def invalidate_tags(self, *tags: str) -> None:
        """Invalidate every entry carrying any of ``tags``, in O(number of tags).

        Loads in flight for such entries are revoked too: a caller after this
        never joins a load that started before it.
        """
        self._check_loop()  # unasync: async-only
        ftags = self._full_tags(tags)
        if not ftags:
            return
        self._need_tags(ftags)
        assert self._tagger is not None
        await self._revoke(tags=ftags)
        method = self._tagger.invalidate_tags
        await self._send_invalidation("invalidate_tags", method, ftags, tags=ftags)

    async def clear(self) -> int:
        """Remove every entry of this cache's namespace (O(n)); how many."""
        self._check_loop()  # unasync: async-only
        await self._revoke(everything=True)
        try:
            return int(await self._store.clear(self._prefix) or 0)
        except Exception as exc:
            self._degraded("clear", exc)
            self._unsettle(everything=True)
            return 0

    async def _send_invalidation(
        self,
        operation: str,
        method: Callable[[Any], Awaitable[Any]],
        arg: Any,
        *,
        keys: Iterable[str] = (),
        tags: Iterable[str] = (),
    ) -> Any:
        """Send an invalidation (of ``keys`` or ``tags``): what the backend
        returned, or ``None`` if it did not land, and it is held. A failure that
        came fast (a connection that turned out dead) is worth one more try before
        that, a timeout is not (it already waited). Each failure is counted."""
        attempt = 1
        while True:
            started = self._monotonic()
            try:
                return await method(arg)
            except Exception as exc:
                self._degraded(operation, exc)
                if not retry_fast_failure(self._monotonic() - started, attempt):
                    self._unsettle(keys, tags)
                    return None
            attempt += 1

    async def _revoke(
        self, keys: Iterable[str] = (), tags: tuple[str, ...] = (), everything: bool = False
    ) -> None:
        """Revoke the loads in flight for ``keys``, ``tags`` or ``everything``, before
        touching the backend: once revoked, no load in flight can write; then our
        delete/set removes anything written before."""
        with self._lock:
            flights: list[Flight[_Handle]] = []
            # An offline load writes nothing, but it may have read the source
            # before the write this invalidation follows: nobody may join it now.
            for table in (self._flights, self._offline):
                if everything:
                    flights += table.invalidate_all()
                else:
                    flights += [f for f in map(table.invalidate, keys) if f is not None]
                    if tags:
                        flights += table.invalidate_tagged(tags)
        for flight in flights:
            # Wait for a write already past its validity check, so ours lands after it.
            guard = flight.handle.guard
            if guard is not None:
                async with guard:
                    pass

    def _need_tags(self, tags: tuple[str, ...]) -> None:
        # (The same TagsUnsupportedError in both front ends.)
        if tags and self._tagger is None:
            raise TagsUnsupportedError(f"{type(self._backend).__name__} does not support tags")

    async def _stamp(self, tags: tuple[str, ...]) -> Any:
        """The backend's versions of ``tags``, taken before a value is loaded."""
        if not tags:
            return None
        self._need_tags(tags)
        assert self._tagger is not None
        return await self._tagger.tag_stamp(tags)

    # -- held invalidations: the settler ------------------------------------------

    async def _settle(self) -> None:
        """Retry the invalidations that did not reach the backend (the settler)."""
        applied = self._held.snapshot()
        keys, tags, everything = applied
        try:
            if everything:
                await self._store.clear(self._prefix)
            else:
                if keys:
                    await self._store.delete_many(list(keys))
                if tags and self._tagger is not None:
                    await self._tagger.invalidate_tags(list(tags))
        except Exception as exc:
            self._degraded("settle", exc)
            return
        self._settled(applied)

    # unasync: sync-only
    # def _settle_once(self) -> None:
    #     self._settle()
    # unasync: end
    # unasync: async-only
    def _loopless_backend(self) -> Any:
        """What held invalidations can be sent through without an event loop: the
        local backend, or the sync client a URL-built Redis backend sends
        invalidations with; None for a client you built."""
        if self._local is not None:
            return self._local
        remote = getattr(self._store, "inner", self._store)
        return getattr(remote, "_offloaded", None)

    def _settle_once(self) -> None:
        """Re-apply what is held without an event loop (at exit, or once the loop
        the settler ran on has ended). Without a loopless backend, nothing can be
        sent: it stays held."""
        backend = self._loopless_backend()
        if backend is None:
            return
        applied = self._held.snapshot()
        if applied.everything:
            backend.clear(self._prefix)
        else:
            if applied.keys:
                backend.delete_many(list(applied.keys))
            if applied.tags:
                backend.invalidate_tags(list(applied.tags))
        self._settled(applied)

    def _start_settler(self) -> None:
        """Run the background settler as a tracked task (once at a time, on the
        running loop: a settler of a loop that ended, cancelled by asyncio.run or
        left pending on a closed loop, is replaced)."""
        if self._closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop running here: misses and writes retry instead
        self._check_loop(loop)
        settler = self._settler
        if settler is not None and not settler.done():
            return
        self._settler = settler = loop.create_task(self._settle_loop(), name="cachewise-settle")
        # A loop closed without cancelling its tasks (run_until_complete, then
        # close()) leaves this one pending for good: expected, not worth asyncio's
        # "Task was destroyed but it is pending" error when it is collected.
        with contextlib.suppress(AttributeError):
            settler._log_destroy_pending = False  # type: ignore[attr-defined]
        settler.add_done_callback(lambda task: task.cancelled() or task.exception())
        # And the settle thread stands by: when this loop stops running (closed
        # without cancelling the settler, or just stopped), it settles instead.
        self._start_settle_thread()

    async def _settle_loop(self) -> None:
        me = asyncio.current_task()
        try:
            while self._unsettled and not self._closed:
                await self._settle()
                await asyncio.sleep(self._settle_every)
        finally:
            if self._settler is me:  # (a later loop's settler may have replaced it)
                self._settler = None
            if self._unsettled and not self._closed:
                # Cancelled with its loop (asyncio.run ending, a loop closing): no
                # task runs here again until another loop uses this cache, which
                # may be never, while other processes read what this cache holds
                # deleted. Keep settling from the thread until a loop takes over.
                self._start_settle_thread()

    def _start_settle_thread(self) -> None:
        if self._loopless_backend() is not None:  # (else held until a loop or the exit tries)
            super()._start_settle_thread()

    def _loop_settles(self) -> bool:
        task = self._settler
        return task is not None and not task.done() and task.get_loop().is_running()

    async def _stop_settler(self) -> None:
        settler = self._settler
        if settler is not None and settler.get_loop() is asyncio.get_running_loop():
            await asyncio.wait([settler])  # it stops at its next turn

    def _check_loop(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """One event loop at a time, and then the next: when calls come from a new
        loop, what belonged to the old one (its load and settler tasks, the flights
        they ran) will never run again; forget it, as a fork does. A load left
        pending on a closed loop would otherwise poison its key for good, and a
        settler cancelled when asyncio.run ended would never retry what is held.
        Called on the slow paths only (the memory hit path has no per-loop state)."""
        if loop is None:
            loop = asyncio.get_running_loop()
        if loop is self._loop:
            return
        dead: list[tuple[str, str]] = []
        if self._loop is not None:
            for flight in self._flights.invalidate_all():  # (offline ones hold no lease)
                if self._scope is not None:
                    # A load of a closed loop still holding its lease never
                    # releases it: release it for it (after the reset below, so the
                    # release task is one of this loop's).
                    token = dead_lease(self._scope, flight.key)
                    if token is not None:
                        dead.append((flight.key, token))
                    lease_ended(self._scope, flight.key, flight)
            self._after_fork_child()  # (the same reset: nothing of before remains)
        self._loop = loop
        for key, token in dead:
            self._release_soon(key, token)
        if self._unsettled:
            self._start_settler()

    # unasync: end

    # -- single-flight ------------------------------------------------------------

    async def _load_unreached(
        self,
        full: str,
        loader: Callable[[], Awaitable[T]],
        ttl: float | None,
        tags: tuple[str, ...],
        *,
        covered: bool,
    ) -> T:
        """A miss while the backend is unreachable (or ``covered`` by a pending
        invalidation): single-flight the loader, write nothing."""
        self._check_miss(full)
        self._check_open()
        self._counters.misses += 1
        lead = _Lead.COVERED if covered else _Lead.UNWRITTEN
        value: T = await self._load(full, loader, ttl, tags, None, lead)
        return value

    async def _load(
        self,
        full: str,
        loader: Callable[[], Awaitable[Any]],
        ttl: float | None,
        tags: tuple[str, ...],
        stale: Entry | None,
        lead: _Lead,
        found: Entry | None = None,
    ) -> Any:
        """The single-flight loop: lead the flight for ``full`` or join it, wait for
        its end, and then do what ``after_wait`` says: take its outcome, read again,
        or load without the backend. (Misses go through the in-process flight
        first: one process sends one lease request per key, however many callers
        miss at once.)"""
        # Where this call stands on the sequence flights are born on (see
        # LoadState.join_point): a flight born later began after this call did.
        since = next(self._sequence)
        while True:
            flight, joined = self._join_or_lead(full, tags, lead, since)
            handle = flight.handle
            if joined is not None:
                self._counters.coalesced += 1
            elif lead is _Lead.LEASED:
                await self._lead_leased(flight, loader, ttl, found, stale)
            else:
                self._start_load(flight, loader, ttl, write=lead is _Lead.LOAD)
            await self._wait(flight)
            step = after_wait(handle, joined, self._leases is not None)
            if step is Next.RETRY:
                continue
            if step is Next.LOAD_UNWRITTEN:
                # Not from a backend that just failed (LoadState.unreached).
                if lead is not _Lead.UNWRITTEN and lead is not _Lead.COVERED:
                    self._check_open()
                    self._counters.misses += 1
                    lead = _Lead.UNWRITTEN
                continue
            if joined is not None and lead is _Lead.LEASED:
                # On a lease backend the outcome decides hit, stale or miss.
                self._count_served(handle.served, handle.negative)
            return self._outcome(handle, stale, leader=joined is None)

    def _join_or_lead(
        self, full: str, tags: tuple[str, ...], lead: _Lead, since: int
    ) -> tuple[Flight[_Handle], JoinPoint | None]:
        """The flight for ``full``, and where its load stood as the caller joined it
        (``LoadState.join_point``; ``None``: the caller leads it).

        Loads that neither read nor write the backend (callers cut off from it, or
        covered by a held invalidation) have a table of their own, ``_offline``:
        such a caller never joins a flight that waits on the backend (no second
        timeout), and never disturbs one either: revoking it for every failed read
        sent its joiners back to read again, and under a flaky backend a hot key's
        loads ran one after another (attack on issue 11: 34 loads, 2 s per call).
        Only a ``COVERED`` caller revokes the backend flight, whose old value must
        be neither written nor handed to anyone after the held invalidation."""
        unwritten = lead is _Lead.UNWRITTEN or lead is _Lead.COVERED
        table = self._offline if unwritten else self._flights
        with self._lock:
            if lead is _Lead.COVERED:
                self._flights.invalidate(full)
            flight = table.get(full)
            if flight is None:
                handle = _Handle(guarded=self._leases is None)
                handle.unwritten = unwritten
                handle.born = next(self._sequence)
                flight = table.start(full, handle, tags)
                flight.leader = prims.current_actor()  # (until a load task takes over)
                return flight, None
            flight.waiters += 1
            handle = flight.handle
            if handle.event is None:
                handle.event = prims.Event()
            return flight, handle.join_point(since)

    async def _wait(self, flight: Flight[_Handle]) -> None:
        """Wait for the flight to end (a thread's own load has, already)."""
        if flight.ended:
            return
        event = flight.handle.event
        if event is None:  # (an asyncio leader, waiting for its load's task)
            event = flight.handle.event = prims.Event()
        me = prims.current_actor()
        enter_wait(me, flight)  # LoaderCycleError rather than a deadlock
        try:
            # Not the load: a cancelled waiter leaves it running for the others.
            await event.wait()
        finally:
            leave_wait(me)

    def _finish(self, flight: Flight[_Handle]) -> None:
        """The flight is over: out of the table (and of the lease-holder record),
        then its waiters wake."""
        if self._scope is not None:
            lease_ended(self._scope, flight.key, flight)
        # Leave the table before waking waiters, so a woken caller that comes
        # straight back starts a new flight instead of joining this finished one.
        with self._lock:
            (self._offline if flight.handle.unwritten else self._flights).finish(flight)
            event = flight.handle.event
        if event is not None:
            event.set()

    def _outcome(self, handle: _Handle, stale: Entry | None, leader: bool) -> Any:
        """The value a finished flight gives this caller (stale-if-error included).
        A joiner falls back on a stale value only from its own read: the leader's
        was read before the joiner came, maybe before a delete the joiner saw."""
        if handle.error is None:
            return handle.value
        if leader:
            stale = stale or handle.stale
        if stale_servable(stale, self._clock()):
            assert stale is not None
            self._counters.stale_served += 1
            return stale.value
        raise handle.error

    def _start_load(
        self,
        flight: Flight[_Handle],
        loader: Callable[[], Awaitable[Any]],
        ttl: float | None,
        *,
        token: str | None = None,
        write: bool = True,
    ) -> None:
        """Run a flight's load (``_run``): in asyncio, in a tracked task of its own,
        so cancelling any caller, the first included, never cancels it for the
        others; in threaded code, in the caller's thread."""
        # unasync: sync-only
        # self._run(flight, loader, ttl, token=token, write=write)
        # unasync: end
        # unasync: async-only
        flight.leader = self._work.spawn(  # the load runs in this task (see _cycles)
            self._run(flight, loader, ttl, token=token, write=write),
            f"cachewise-load:{flight.key}",
            lambda: self._abandoned(flight, token),
        )

    def _abandoned(self, flight: Flight[_Handle], token: str | None) -> None:
        """A load task that was cancelled, maybe before its first step (a shutdown
        that cancels every task): its own cleanup never ran. The flight must not
        stay in the table (callers would join a dead flight for good), nor its
        in-process lease stay held. (A Redis lease expires on its own.)"""
        flight.handle.abandoned = True
        self._finish(flight)
        if self._inproc is not None and token is not None:
            self._release_soon(flight.key, token)
        # unasync: end

    async def _run(
        self,
        flight: Flight[_Handle],
        loader: Callable[[], Awaitable[Any]],
        ttl: float | None,
        *,
        token: str | None = None,
        write: bool = True,
    ) -> None:
        """Run one load to completion and publish its outcome to every waiter.

        With ``token`` the write is guarded by that lease; ``write=False`` (a load
        that gave up waiting for another process's lease) writes nothing. Never
        raises an ``Exception`` (it goes to ``handle.error``); a ``BaseException``
        (an interrupt, a cancelled load task) abandons the flight, so its waiters
        read again, and propagates.
        """
        handle = flight.handle
        counters = self._counters
        clock = self._clock
        counters.loads += 1
        try:
            stamp = None
            if flight.tags and (write or token is not None):
                # Stamp first: an invalidation during the load makes its entry a miss.
                try:
                    stamp = await self._stamp(flight.tags)
                except Exception as exc:
                    await self._release(flight.key, token)
                    if classify(exc) is ErrorKind.CALLER:  # the backend has no tags
                        handle.error = exc
                        return
                    self._degraded("tag_stamp", exc)
                    write = False  # an unstamped entry must not be written
                    token = None
            handle.started = True
            if not write and token is None:
                handle.confirmed = False  # nothing will be written: nothing confirms it
            entered = loading(flight)  # (see _cycles: tasks and calls inside the load)
            # The loader's own reads are its own: the caller's type= must not reach
            # them (a nested get() would decode with the outer call's type).
            untyped = _typed.READ_TYPE.set(None)
            try:
                start = clock()
                try:
                    value = await prims.call_loader(loader)
                finally:
                    _typed.restore(untyped)
                check_reusable(value)
                negative = bool(self._policy.is_negative(value))
                end = clock()
            except Exception as exc:
                counters.load_errors += 1
                handle.error = exc
                await self._release(flight.key, token)
                return
            finally:
                done_loading(entered)
            entry = self._new_entry(
                value, end, ttl, max(end - start, 0.0), negative, flight.tags, stamp
            )
            with self._lock:
                handle.sealed = True  # who joins from now on reads again rather than wait
            try:
                if token is not None:
                    await self._write_leased(flight, entry, token)
                elif write:
                    await self._write_guarded(flight, entry)
            except _UNSTORABLE as exc:
                # Not storable: every waiter still gets the value, uncached.
                self._refused_write(exc)
            except WeigherError as exc:
                handle.error = exc  # the application's weigher: every waiter gets it
            handle.value = value
        except BaseException:
            # Interrupted (KeyboardInterrupt, a cancelled task) anywhere in the load
            # or its write: the waiters read again rather than wait for good, and
            # the store's lease must not outlive us (other front ends would wait
            # on it).
            handle.abandoned = True
            self._release_soon(flight.key, token)
            raise
        finally:
            self._finish(flight)

    async def _write_guarded(self, flight: Flight[_Handle], entry: Entry | None) -> None:
        # (A local backend in asyncio: nothing here suspends, so the guard is only
        # ever taken by one at a time.)
        guard = flight.handle.guard
        assert guard is not None
        async with guard:
            if not flight.valid:
                return
            try:
                if entry is None:
                    # Not storable (ttl=0, or a negative result with negative_ttl=0):
                    # drop whatever older value is there rather than keep serving it.
                    await self._store.delete(flight.key)
                else:
                    await self._store.set(flight.key, entry)
            except Exception as exc:
                if classify(exc) is ErrorKind.CALLER:
                    raise
                self._degraded("set", exc)

    async def _write_leased(self, flight: Flight[_Handle], entry: Entry | None, token: str) -> None:
        # The lease makes the write atomic with respect to deletes in any process;
        # the local validity check only saves a round trip.
        leases = self._leases
        assert leases is not None
        handle = flight.handle
        handle.confirmed = False
        if entry is None or not flight.valid:
            await self._release(flight.key, token)
            return
        started = self._monotonic()
        try:
            # False: the lease was lost (deleted or expired) while loading.
            handle.confirmed = await leases.set_leased(flight.key, entry, token)
        except Exception as exc:
            if classify(exc) is ErrorKind.CALLER:
                # Nothing written: if the lease was still ours, no delete happened
                # since it was granted, and the value may go to the joiners as a
                # written one would (see LoadState.safe_for).
                handle.confirmed = await self._release(flight.key, token)
                raise
            self._degraded("set", exc)
            handle.unreached = True
            # After a fast failure, release now; after a timeout, in the
            # background: the caller must not wait out a second timeout, and other
            # processes' readers wait on the lease until it is released (or
            # expires). This cache takes its own orphaned lease over on its next read.
            if retry_fast_failure(self._monotonic() - started, 1):
                await self._release(flight.key, token)
            else:
                self._release_later(flight.key, token)

    def _release_soon(self, key: str, token: str | None) -> None:
        """Release a lease from where nothing can wait (an interruption, a
        cancellation): in asyncio, at once on an in-process store, else in a
        tracked background task."""
        if token is None or self._leases is None:
            return
        # unasync: sync-only
        # self._release(key, token)
        # unasync: end
        # unasync: async-only
        if self._inproc is None:
            self._release_later(key, token)
            return
        try:
            self._inproc.release(key, token)
        except Exception as exc:
            self._degraded("release", exc)
        # unasync: end

    def _release_later(self, key: str, token: str) -> None:
        """Release a lease in the background (bounded like refreshes: past the
        bound the lease is left to expire)."""
        with self._lock:
            if self._closed or self._work.pending >= self._max_pending:
                return
            self._work.start(self._release, key, token, name=f"cachewise-release:{key}")

    async def _release(self, key: str, token: str | None) -> bool:
        """Release the lease (errors degraded); whether it was still ours."""
        if token is None or self._leases is None:
            return False
        try:
            return bool(await self._leases.release(key, token))
        except Exception as exc:
            self._degraded("release", exc)
            return False

    # -- read-through on a shared backend with leases ------------------------------

    async def _lead_leased(
        self,
        flight: Flight[_Handle],
        loader: Callable[[], Awaitable[Any]],
        ttl: float | None,
        found: Entry | None,
        stale: Entry | None,
    ) -> None:
        """Run the lease flow (``readflow.leased_read``) in the caller's own task or
        thread; publish what it serves, or start the load. Never raises but for
        the caller's own interruption (then waiters retry)."""
        leases = self._leases
        assert leases is not None
        handle = flight.handle
        full = flight.key
        token = new_token(self._token_prefix)
        flow = leased_read(self._policy, leases.wait_timeout, found, stale)
        outcome: Outcome
        try:
            step = next(flow)
            while True:
                if isinstance(step, ReadStep):
                    handle.reads += 1  # before sending: see LoadState.reads
                    try:
                        reply = await leases.read_or_lease(full, token, step.mode.value)
                    except Exception as exc:
                        self._degraded("read", exc)  # load without a lease or a write
                        handle.unreached = True
                        outcome = LoadStep(leased=False, stale=None)
                        break
                    if reply.granted and self._scope is not None:
                        lease_taken(self._scope, full, flight, token)
                    u = 1.0 - self._rng.random()
                    step = flow.send(Observed(reply, self._clock(), self._monotonic(), u))
                    continue
                dead = dead_lease(self._scope, full) if self._scope is not None else None
                if dead is not None:
                    # Held by a load whose event loop was closed or stopped under
                    # it (see dead_lease). Release it, and read again.
                    await self._release(full, dead)
                    step = flow.send(None)
                    continue
                holder = lease_holder(self._scope, full) if self._scope is not None else None
                me = prims.current_actor()
                if holder is not None:
                    try:
                        enter_wait(me, holder)  # the holder may be waiting for us
                    except LoaderCycleError as exc:
                        handle.error = exc
                        self._finish(flight)
                        return
                try:
                    await leases.wait(full, step.seconds)
                except Exception as exc:
                    # The backend went away while we waited: asking for the lease
                    # again would wait out a second timeout, so load now, without
                    # a lease and without writing.
                    self._degraded("wait", exc)
                    handle.unreached = True
                    outcome = LoadStep(leased=False, stale=None)
                    break
                finally:
                    if holder is not None:
                        leave_wait(me)
                step = flow.send(None)
        except StopIteration as stop:
            outcome = stop.value
        except BaseException:
            # Interrupted mid-read: the others read again without us, and a lease
            # granted to us must not stay held (release checks the token).
            handle.abandoned = True
            self._release_soon(full, token)
            self._finish(flight)
            raise
        if isinstance(outcome, Serve):
            entry = outcome.entry
            # Served from a read of ours, or from what the caller had read before.
            handle.served_read = handle.reads if entry is not found and entry is not stale else 0
            handle.value = entry.value
            handle.negative = entry.negative
            handle.served = Served.STALE if outcome.stale else Served.HIT
            self._count_served(handle.served, handle.negative)
            self._finish(flight)
            # After _finish: the refresh needs the key's flight slot to itself.
            if outcome.refresh:
                self._refresh_in_background(
                    full, loader, ttl, flight.tags, entry, early=not outcome.stale
                )
            return
        handle.stale = outcome.stale
        self._count_served(Served.LOAD, handle.negative)
        leased = token if outcome.leased else None
        if self._closed:
            handle.error = CacheClosedError(f"{type(self).__name__} is closed")
            await self._release(full, leased)
            self._finish(flight)
            return
        self._start_load(flight, loader, ttl, token=leased, write=outcome.leased)

    # -- background refreshes -----------------------------------------------------

    def _refresh_in_background(
        self,
        full: str,
        loader: Callable[[], Awaitable[Any]],
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
            if self._work.pending >= self._max_pending:
                self._counters.refreshes_dropped += 1
                return
            handle = _Handle(guarded=self._leases is None)
            flight = self._flights.start(full, handle, tags)
            self._work.start(
                self._run_background,
                flight,
                loader,
                ttl,
                trigger,
                early,
                name=f"cachewise-refresh:{full}",
                on_cancel=lambda: self._abandoned(flight, None),  # unasync: async-only
            )

    async def _run_background(
        self,
        flight: Flight[_Handle],
        loader: Callable[[], Awaitable[Any]],
        ttl: float | None,
        trigger: Entry,
        early: bool,
    ) -> None:
        flight.leader = prims.current_actor()
        outside_loads()  # (this task's or thread's own context: see _cycles)
        token = None
        lease: bool | None = None  # (a backend without leases)
        current: Entry | None = None
        if self._leases is not None:
            # Across processes, one refresh per key: only the lease holder runs it.
            token = new_token(self._token_prefix)
            try:
                reply = await self._leases.read_or_lease(flight.key, token, LeaseMode.REFRESH.value)
                lease, current = reply.granted, reply.entry
            except Exception as exc:
                self._degraded("read", exc)
                lease = False
        else:
            try:
                current = await self._read(flight.key)
            except Exception as exc:
                self._degraded("get", exc)
        if not refresh_granted(trigger, current, lease):
            if lease:
                await self._release(flight.key, token)
            flight.handle.abandoned = True  # joiners (if any) read again
            self._finish(flight)
            return
        if lease and token is not None and self._scope is not None:
            lease_taken(self._scope, flight.key, flight, token)
        if early:
            self._counters.early_refreshes += 1
        await self._run(flight, loader, ttl, token=token)
        if flight.handle.error is not None:
            self._refresh_failed(flight.key, flight.handle.error)

    async def wait_background(self, timeout: float | None = None) -> bool:
        """Wait for the background work started so far (in asyncio, loads' tasks
        too); whether all of it finished within ``timeout`` seconds (``None``: no
        limit). (Not the settler: it runs for as long as invalidations are held.)"""
        self._check_loop()  # unasync: async-only
        return await self._work.wait(timeout)

    # -- decorator ----------------------------------------------------------------

    @overload
    def cached(self, key: Callable[P, Awaitable[R]], /) -> AsyncCachedFunction[P, R]: ...
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
    ) -> Callable[[Callable[P, Awaitable[R]]], AsyncCachedFunction[P, R]]: ...

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

        def decorate(func: Callable[P, Awaitable[R]]) -> AsyncCachedFunction[P, R]:
            _check_callable(func, "cached")
            keys = self._key_builder(func, key, tags, max_keys, on_max_keys, ignore)
            self._need_tags(tuple(tags))  # (at decoration, as invalidates does)
            cached = AsyncCachedFunction(self, func, keys, ttl)
            self._declare_read(func, keys, ttl, owner=cached)
            return cached

        return decorate

    def invalidates(
        self,
        *keys: str,
        tags: Sequence[str] = (),
        after_commit: AfterCommitName | None = None,
    ) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
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

        - ``"sqlalchemy"``: the ``Session`` (or ``AsyncSession``, with
          ``cachewise[sqlalchemy-async]``) among the write's arguments
          (``invalidate_after_commit``).
        - ``"django"``: Django's current transaction on the default database
          (``invalidate_on_commit``). Not for an ``AsyncCache`` (``TypeError``):
          Django runs ``on_commit`` callbacks synchronously.
        - ``"dbapi"``: the cachewise ``transaction()`` (``async_transaction()``)
          block open on the DB-API connection among the write's arguments.

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

        def decorate(func: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
            _check_callable(func, "invalidates")
            invalidator = Invalidator(func, keys, tags)
            # At decoration, not after the write ran (attack on issue 11: the write
            # ran, then the invalidation raised, and a retry wrote twice).
            self._need_tags(tuple(tags))
            hook = after_commit_hook(after_commit, self, invalidator, is_async=True)
            wrapper = async_invalidating(self, func, invalidator, hook)
            self._declare_write(
                func, tuple(keys), tuple(tags), owner=wrapper, after_commit=after_commit
            )
            return wrapper

        return decorate

    # -- fork ---------------------------------------------------------------------

    def _fork_locks(self) -> list[threading.Lock]:
        return [self._lock]

    def _after_fork_child(self) -> None:
        # See _forksafe: the parent's threads and tasks are not in the child. Their
        # flights would never end (joiners would hang), their pool runs nothing.
        self._lock = threading.Lock()
        self._flights = FlightTable()
        self._offline = FlightTable()
        self._work = self._work.fresh()
        self._init_settle_thread()
        self._settler = None  # unasync: async-only

    # -- lifecycle ----------------------------------------------------------------

    async def aclose(self) -> None:
        """Drain background work, then close the backend if the cache owns it.
        Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._check_loop()  # unasync: async-only
        await self._stop_settler()  # unasync: sync=self._stop_settle_thread()
        await self._work.drain()
        if self._unsettled:  # one last try at held invalidations, or an ERROR
            await self._settle()
            if self._unsettled and not self._hand_over_held():
                self._last_settle(attempt=False)  # (logs what is still held)
        if self._owns_backend:
            await self._store.aclose()

    # unasync: async-only
    async def close(self) -> None:
        """Same as ``aclose()``."""
        await self.aclose()

    # unasync: end
    async def __aenter__(self) -> AsyncCache:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"AsyncCache(backend={self._backend!r}, namespace={self._namespace!r})"


def _check_callable(func: object, decorator: str) -> None:
    if not callable(func):
        raise TypeError(f"{decorator}() decorates callables, not {type(func).__name__}")
    check_not_generator(func, decorator)
    if is_async_callable(func) is not prims.ASYNC:
        raise TypeError(prims.wrong_flavour(func, decorator))
