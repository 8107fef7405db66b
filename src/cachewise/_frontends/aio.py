"""``AsyncCache``: the front end for asyncio code."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import random
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar, overload

from cachewise import _forksafe, _typed
from cachewise._core.entry import Entry
from cachewise._core.errors import ErrorKind, classify, retry_fast_failure
from cachewise._core.flights import Flight, FlightTable, LoadState
from cachewise._core.policy import Read, Seconds, decide_read, stale_servable, superseded
from cachewise._core.readflow import (
    LeaseReply,
    LoadStep,
    Observed,
    Outcome,
    ReadStep,
    Serve,
    leased_read,
)
from cachewise._errors import (
    CacheClosedError,
    LoadCancelledError,
    LoaderCycleError,
    TagsUnsupportedError,
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
    outside_loads,
)
from cachewise._frontends._decorator import (
    AfterCommitName,
    AsyncCachedFunction,
    Invalidator,
    OnMaxKeys,
    P,
    R,
    after_commit_hook,
    async_invalidating,
    check_not_generator,
    is_async_callable,
)
from cachewise._frontends._group import CacheGroup
from cachewise._frontends._held import HeldView
from cachewise._sentinel import MISSING
from cachewise.backends._memory import MemoryBackend
from cachewise.backends._protocol import (
    AsyncBackend,
    AsyncLeaseBackend,
    AsyncTagBackend,
    Backend,
    InProcessLeaseBackend,
    NonBlockingBackend,
    TagBackend,
)
from cachewise.invalidation import Registry
from cachewise.keys import SHORT_KEY_CHARS, check_key
from cachewise.serialization import SerializationError, Serializer, ValueTooLargeError

T = TypeVar("T")
D = TypeVar("D")


class _Task(LoadState):
    """The waiting side of one async flight."""

    __slots__ = ("future", "guard")

    def __init__(self) -> None:
        super().__init__()
        # What every caller awaits (shielded): the load task itself, or, for a
        # lease backend's read, a future the leading caller resolves.
        self.future: asyncio.Future[Any] | None = None
        # Lease-less remote backends only: held while the finished load checks
        # validity and writes; invalidation passes through it (see Cache._revoke).
        self.guard: asyncio.Lock | None = None


class _LocalLeases:
    """An in-process lease backend seen through the async lease interface: every
    call but ``wait`` completes without suspending (no await inside)."""

    __slots__ = ("_backend",)

    def __init__(self, backend: InProcessLeaseBackend) -> None:
        self._backend = backend

    @property
    def wait_timeout(self) -> float:
        return self._backend.wait_timeout

    async def read_or_lease(self, key: str, token: str, mode: str = "lease") -> LeaseReply:
        return self._backend.read_or_lease(key, token, mode)

    async def set_leased(self, key: str, entry: Entry, token: str) -> bool:
        return self._backend.set_leased(key, entry, token)

    async def release(self, key: str, token: str) -> bool:
        return self._backend.release(key, token)

    async def wait(self, key: str, timeout: float) -> bool:
        return await self._backend.wait_async(key, timeout)


# What _bcall returns when the backend call failed (and was counted).
_FAILED: Any = object()


class _Retry(Exception):
    """A flight ended without an outcome for its waiters: read again."""


# What a load's write may refuse and still hand its value to the callers: the
# codec's refusals. (A weigher's error is the application's bug: it is raised.)
_UNSTORABLE = (SerializationError, ValueTooLargeError)


def _copy_outcome(task: asyncio.Task[Any], future: asyncio.Future[Any]) -> None:
    if future.done():
        return
    if task.cancelled():
        future.set_exception(_Retry())
    elif task.exception() is not None:
        future.set_exception(task.exception())  # type: ignore[arg-type]
    else:
        future.set_result(task.result())
    # The future's exception is seen by the awaiting callers; mark it retrieved for
    # the case where every caller was cancelled.
    future.add_done_callback(lambda f: f.cancelled() or f.exception())


class AsyncCache(CacheBase):
    """A read-through cache for asyncio code: ``Cache``'s API, as coroutines.

    Loaders are zero-argument callables returning an awaitable. A shared load runs in
    its own task, so cancelling any waiter (the first included) never cancels it for
    the others. Background refreshes are tracked tasks that ``aclose()`` drains.

    The backend may be an ``AsyncBackend`` or a non-blocking sync backend such as
    ``MemoryBackend`` (the default), which is called directly, without an ``await``.
    Use one ``AsyncCache`` from one event loop at a time.
    """

    def __init__(
        self,
        backend: AsyncBackend | NonBlockingBackend | None = None,
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
        if backend is None:
            backend = MemoryBackend()
            self._owns_backend = True
        # Exactly one of _local / _remote is set. A local backend is called with no
        # await, which also makes "check the flight is valid, then write" atomic.
        self._local: Backend | None = None
        self._remote: AsyncBackend | None = None
        if inspect.iscoroutinefunction(getattr(backend, "get", None)) and isinstance(
            backend, AsyncBackend
        ):
            self._remote = backend
        elif isinstance(backend, Backend) and getattr(backend, "nonblocking", False):
            self._local = backend
        else:
            raise TypeError(
                f"AsyncCache needs an AsyncBackend or a non-blocking backend such as "
                f"MemoryBackend, got {type(backend).__name__}"
            )
        self._backend: AsyncBackend | Backend = backend
        self._stats_source = backend
        self._init_discard(backend)
        self._lget = self._local.get if self._local is not None else None
        # Tags: a local backend checks them inside get; a remote one may check them
        # in the same round trip when told which tags the caller expects.
        self._local_tagger: TagBackend | None = (
            self._local if isinstance(self._local, TagBackend) else None
        )
        self._remote_tagger: AsyncTagBackend | None = (
            self._remote if isinstance(self._remote, AsyncTagBackend) else None
        )
        # Shared backends with leases read through the in-process flight first; so
        # does an in-process one (MemoryBackend), whose leases coordinate this
        # cache with every other front end on it.
        self._leases: AsyncLeaseBackend | None = None
        # The store whose leases flights of this process hold (see _cycles).
        self._inproc: InProcessLeaseBackend | None = None
        if self._remote is not None and isinstance(backend, AsyncLeaseBackend):
            self._leases = backend
        elif isinstance(self._local, InProcessLeaseBackend):
            self._leases = _LocalLeases(self._local)
            self._inproc = self._local
        # See Cache: the store's name for the leases of this process's flights.
        self._scope = lease_scope(backend) if self._leases is not None else None
        self._flights: FlightTable[_Task] = FlightTable()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._settler: asyncio.Task[Any] | None = None
        # Settles from a thread while no loop runs the settler (_settle_loop).
        self._thread_settler: threading.Thread | None = None
        self._thread_settler_lock = threading.Lock()
        self._background = 0
        # The event loop the flights, tasks and settler belong to (_check_loop).
        self._loop: asyncio.AbstractEventLoop | None = None
        _forksafe.register(self)

    @classmethod
    def from_url(
        cls, url: str, *, serializer: Serializer | str | None = None, **options: Any
    ) -> AsyncCache:
        """An async cache on the backend ``url`` names, e.g. ``memory://?max_entries=1000``
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
    def backend(self) -> AsyncBackend | Backend:
        """The backend entries live in."""
        return self._backend

    # -- backend calls, local or remote ------------------------------------------

    async def _bread(self, full: str, tags: tuple[str, ...] = ()) -> Entry | None:
        """Read one entry (raising what the backend raises). A local backend checks
        an entry's tags itself; a remote one checks ``tags`` in the same round trip."""
        if self._lget is not None:
            return self._lget(full)
        if tags:
            if self._remote_tagger is None:
                raise TagsUnsupportedError(f"{type(self._backend).__name__} does not support tags")
            return await self._remote_tagger.get_tagged(full, tags)
        assert self._remote is not None
        return await self._remote.get(full)

    async def _stamp(self, tags: tuple[str, ...]) -> Any:
        """The backend's versions of ``tags``, taken before a value is loaded."""
        if not tags:
            return None
        if self._local_tagger is not None:
            return self._local_tagger.tag_stamp(tags)
        if self._remote_tagger is not None:
            return await self._remote_tagger.tag_stamp(tags)
        raise TagsUnsupportedError(f"{type(self._backend).__name__} does not support tags")

    async def _bcall(self, operation: str, *args: Any) -> Any:
        """Call a backend method by name; failures are counted and give ``None``."""
        try:
            if self._local is not None:
                return getattr(self._local, operation)(*args)
            return await getattr(self._remote, operation)(*args)
        except Exception as exc:
            if classify(exc) is ErrorKind.CALLER:
                raise  # an unserializable value is the caller's error, not a degraded call
            self._degraded(operation, exc)
            return _FAILED

    # -- reads --------------------------------------------------------------------

    @overload
    async def get(self, key: str, *, type: Any = None) -> Any: ...
    @overload
    async def get(self, key: str, default: D, *, type: Any = None) -> Any | D: ...

    async def get(self, key: str, default: Any = MISSING, *, type: Any = None) -> Any:
        """The fresh value under ``key``, or ``default`` (``MISSING``); ``type``
        as for ``Cache.get``."""
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
            self._start_settler()  # (after a loop change, it may need starting again)
        try:
            entry = self._lget(full) if self._lget is not None else await self._bread(full)
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
        self._check_loop()
        self._check_keys(keys)
        wanted = [check_key(key) for key in keys]
        view = self._held_view()
        entries = await self._bcall("get_many", [self._full_key(key) for key in wanted])
        return self._collect_fresh(wanted, None if entries is _FAILED else entries, view)

    async def get_or_load(
        self,
        key: str,
        loader: Callable[[], Awaitable[T]],
        *,
        ttl: Seconds | None = None,
        tags: Iterable[str] = (),
        type: Any = None,
    ) -> T:
        """The value under ``key``; on a miss, the awaited result of ``loader()``.

        Concurrent tasks on one key share one load; see ``Cache.get_or_load``
        (``type`` too).
        """
        if type is not None:
            token = _typed.expect(type)
            try:
                return await self.get_or_load(key, loader, ttl=ttl, tags=tags)
            finally:
                _typed.READ_TYPE.reset(token)
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
        lget = self._lget
        view = self._held_view() if self._unsettled else None
        try:
            # Local backend: the same hit path as Cache, with no await at all (a
            # local backend checks an entry's tags itself).
            entry = lget(full) if lget is not None else await self._bread(full, ftags)
        except Exception as exc:
            # Not answering: straight to the loader; no lease, no write (see Cache).
            self._check_miss(full)  # a bad key (say, a lone surrogate) is not a failure
            self._degraded("get", exc)
            unreached: T = await self._load_unreached(full, loader, ttl, ftags)
            return unreached
        if entry is not None and self._clock() < entry.refresh_at and view is None:
            counters = self._counters
            counters.hits += 1
            if entry.negative:
                counters.negative_hits += 1
            value: T = entry.value
            return value
        return await self._read_slow(full, loader, ttl, ftags, entry, view)

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
        self._check_loop()
        if self._unsettled:
            self._start_settler()  # (a no-op while it runs: held by a sibling, maybe)
        if (view is not None or self._unsettled) and self._covered(view, full, entry, tags):
            # Held invalidations are retried by the background settler, not here:
            # a miss must not wait on a backend that is failing.
            if self._unsettled and self._is_unsettled(full, entry, tags):
                pending: T = await self._load_unreached(full, loader, ttl, tags)
                return pending
            entry = None  # read before the invalidation just applied: not to be served
        now = self._clock()
        action = decide_read(entry, now, 1.0 - self._rng.random(), self._policy)
        if action is Read.LOAD or action is Read.LOAD_OR_STALE:
            self._check_miss(full)
            self._check_open()
            stale = entry if action is Read.LOAD_OR_STALE else None
            if self._leases is not None:
                # See Cache._read_slow: a miss goes through one lease read per process.
                self._drop_expired(full, entry, now)
                leased: T = await self._read_leased(full, loader, ttl, tags, entry, stale)
                return leased
            counters.misses += 1
            self._drop_expired(full, entry, now)
            result: T = await self._load(full, loader, ttl, tags, stale)
            return result
        assert entry is not None
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
        """Store ``value`` under ``key``; a load in flight will not overwrite it."""
        self._check_loop()
        self._check_value(value)
        full = self._full_key(key)
        ttl = check_ttl(ttl)
        ftags = self._entry_tags(tags)
        self._check_open()
        self._need_tags(ftags)
        await self._revoke([full])
        try:
            stamp = await self._stamp(ftags)
        except Exception as exc:
            self._degraded("tag_stamp", exc)
            self._unsettle(keys=[full])
            return
        entry = self._new_entry(value, self._clock(), ttl, 0.0, False, ftags, stamp)
        try:
            if entry is None:
                result = await self._bcall("delete", full)
            else:
                result = await self._bcall("set", full, entry)
        except asyncio.CancelledError:
            # Cancelled mid-write: the set may still land (on the wire). Held, so
            # the settler deletes the key again, fenced against that late set.
            self._unsettle(keys=[full])
            raise
        if result is _FAILED:
            self._unsettle(keys=[full])  # the old value may still be there

    async def set_many(
        self, items: Mapping[str, Any], *, ttl: Seconds | None = None, tags: Iterable[str] = ()
    ) -> None:
        """``set`` for several keys with one TTL (and the same tags)."""
        self._check_loop()
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
        await self._revoke(full_keys)
        try:
            stamp = await self._stamp(ftags)
        except Exception as exc:
            self._degraded("tag_stamp", exc)
            self._unsettle(keys=full_keys)
            return
        pairs, dropped = self._entries_for(items, ttl, ftags, stamp)
        try:
            failed = pairs and await self._bcall("set_many", pairs) is _FAILED
            if dropped and await self._bcall("delete_many", dropped) is _FAILED:
                failed = True
        except asyncio.CancelledError:
            self._unsettle(keys=full_keys)  # (see set)
            raise
        if failed:
            self._unsettle(keys=full_keys)

    async def delete(self, key: str) -> bool:
        """Remove ``key``; whether it was cached. A load in flight will not write."""
        self._check_loop()
        full = self._full_key(key)
        await self._revoke([full])
        result = await self._send_invalidation("delete", full)
        if result is _FAILED:
            self._unsettle(keys=[full])
            return False
        return bool(result)

    async def delete_many(self, keys: Iterable[str]) -> int:
        """``delete`` for several keys; how many were cached."""
        self._check_loop()
        self._check_keys(keys)
        full = [self._full_key(key) for key in keys]
        if not full:
            return 0
        await self._revoke(full)
        result = await self._send_invalidation("delete_many", full)
        if result is _FAILED:
            self._unsettle(keys=full)
            return 0
        return int(result or 0)

    async def invalidate_tags(self, *tags: str) -> None:
        """Invalidate every entry carrying any of ``tags``, in O(number of tags);
        loads in flight for them are revoked (see ``Cache.invalidate_tags``)."""
        self._check_loop()
        ftags = self._full_tags(tags)
        if not ftags:
            return
        if self._local_tagger is None and self._remote_tagger is None:
            raise TagsUnsupportedError(f"{type(self._backend).__name__} does not support tags")
        for flight in self._flights.invalidate_tagged(ftags):
            await self._pass_guard(flight)
        for attempt in (1, 2):  # a second try after a fast failure: see Cache
            started = time.monotonic()
            try:
                await self._invalidate(ftags)
                break
            except Exception as exc:
                self._degraded("invalidate_tags", exc)
                if not retry_fast_failure(time.monotonic() - started, attempt):
                    self._unsettle(tags=ftags)
                    break

    async def _send_invalidation(self, operation: str, *args: Any) -> Any:
        """A backend invalidation, tried again after a fast failure (see
        ``Cache._send_invalidation``); ``_FAILED`` if it did not land."""
        started = time.monotonic()
        result = await self._bcall(operation, *args)
        if result is _FAILED and retry_fast_failure(time.monotonic() - started, 1):
            result = await self._bcall(operation, *args)
        return result

    async def _invalidate(self, tags: Sequence[str]) -> None:
        if self._local_tagger is not None:
            self._local_tagger.invalidate_tags(tags)
        elif self._remote_tagger is not None:
            await self._remote_tagger.invalidate_tags(tags)

    def _need_tags(self, tags: tuple[str, ...]) -> None:
        if tags and self._local_tagger is None and self._remote_tagger is None:
            raise TagsUnsupportedError(f"{type(self._backend).__name__} does not support tags")

    async def _settle(self) -> None:
        """Retry the invalidations that did not reach the backend (the settler)."""
        applied = self._held_snapshot()
        keys, tags, everything = applied
        try:
            if everything:
                if self._local is not None:
                    self._local.clear(self._prefix)
                else:
                    assert self._remote is not None
                    await self._remote.clear(self._prefix)
            else:
                if keys:
                    if self._local is not None:
                        self._local.delete_many(list(keys))
                    else:
                        assert self._remote is not None
                        await self._remote.delete_many(list(keys))
                if tags:
                    await self._invalidate(list(tags))
        except Exception as exc:
            self._degraded("settle", exc)
            return
        self._settled(applied)

    def _loopless_backend(self) -> Any:
        """What held invalidations can be sent through without an event loop: the
        local backend, or the sync client a URL-built Redis backend sends
        invalidations with; None for a client you built."""
        if self._local is not None:
            return self._local
        remote = getattr(self._remote, "inner", self._remote)
        return getattr(remote, "_offloaded", None)

    def _settle_once(self) -> None:
        """Re-apply what is held without an event loop (at exit, or once the loop
        the settler ran on has ended). Without a loopless backend, nothing can be
        sent: it stays held."""
        backend = self._loopless_backend()
        if backend is None:
            return
        applied = self._held_snapshot()
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
        self._tasks.add(settler)
        settler.add_done_callback(self._task_done)
        # And a thread stands by: when this loop stops running (closed without
        # cancelling the settler, or just stopped), the thread settles instead.
        self._start_thread_settler()

    async def _settle_loop(self) -> None:
        me = asyncio.current_task()
        try:
            while self._unsettled and not self._closed:
                await self._settle()
                await asyncio.sleep(_SETTLE_EVERY)
        finally:
            if self._settler is me:  # (a later loop's settler may have replaced it)
                self._settler = None
            if self._unsettled and not self._closed:
                # Cancelled with its loop (asyncio.run ending, a loop closing): no
                # task runs here again until another loop uses this cache, which
                # may be never, while other processes read what this cache holds
                # deleted. Keep settling from a thread until a loop takes over.
                self._start_thread_settler()

    def _start_thread_settler(self) -> None:
        if self._loopless_backend() is None:
            return  # nothing to send through: held until a loop or the exit tries
        with self._thread_settler_lock:
            thread = self._thread_settler
            if self._closed or (thread is not None and thread.is_alive()):
                return
            thread = threading.Thread(
                target=self._thread_settle_loop, name="cachewise-settle", daemon=True
            )
            self._thread_settler = thread
        thread.start()

    def _thread_settle_loop(self) -> None:
        # Runs while anything is held; settles whenever no running loop runs the
        # settler task. Both may settle at once as a loop starts again: a delete
        # or a tag invalidation applied twice is still right.
        while self._unsettled and not self._closed:
            task = self._settler
            if task is None or task.done() or not task.get_loop().is_running():
                try:
                    self._settle_once()
                except Exception as exc:
                    self._degraded("settle", exc)
            if self._unsettled:
                time.sleep(_SETTLE_EVERY)

    async def clear(self) -> int:
        """Remove every entry of this cache's namespace; how many."""
        self._check_loop()
        for flight in self._flights.invalidate_all():
            await self._pass_guard(flight)
        result = await self._bcall("clear", self._prefix)
        if result is _FAILED:
            self._unsettle(everything=True)
            return 0
        return int(result or 0)

    async def _revoke(self, keys: list[str]) -> None:
        # Same order as Cache._revoke: revoke first, then touch the backend. No
        # await happens between a local flight's validity check and its write, so
        # only remote backends need the guard.
        for key in keys:
            flight = self._flights.invalidate(key)
            if flight is not None:
                await self._pass_guard(flight)

    @staticmethod
    async def _pass_guard(flight: Flight[_Task]) -> None:
        """Wait for a write already past its validity check (lease-less remotes)."""
        guard = flight.handle.guard
        if guard is not None:
            async with guard:
                pass

    # -- loading ------------------------------------------------------------------

    async def _load(
        self,
        full: str,
        loader: Callable[[], Awaitable[T]],
        ttl: float | None,
        tags: tuple[str, ...],
        stale: Entry | None,
    ) -> T:
        """Single-flight load (memory and lease-less backends)."""
        counters = self._counters
        while True:
            flight = self._flights.get(full)
            if flight is None:
                flight = self._start(full, self._run, loader, ttl, tags)
            else:
                flight.waiters += 1
                counters.coalesced += 1
            try:
                value: T = await self._await_flight(flight, stale)
                return value
            except _Retry:
                continue

    async def _await_flight(
        self, flight: Flight[_Task], stale: Entry | None, leader: bool = False
    ) -> Any:
        """The outcome of ``flight`` for this caller; ``_Retry`` if it gave none.
        Only the leader may fall back on the stale value the flight read: a joiner
        came later, maybe after a delete (see Cache._outcome)."""
        future = flight.handle.future
        assert future is not None
        me = asyncio.current_task()
        if not future.done():  # (a leader that read inline may await its own outcome)
            enter_wait(me, flight)  # LoaderCycleError rather than a deadlock
        try:
            # shield: cancelling this waiter must not cancel the shared work.
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            if future.cancelled() and not _cancelling():
                # The work itself was cancelled, not us: read again. The flight
                # leaves the table now, or the retry would find it again at once.
                self._end(flight)
                raise _Retry from None
            raise
        except _Retry:
            raise
        except Exception:
            if leader:
                stale = stale or flight.handle.stale
            if stale_servable(stale, self._clock()):
                assert stale is not None
                self._counters.stale_served += 1
                return stale.value
            raise
        finally:
            leave_wait(me)

    async def _load_unreached(
        self,
        full: str,
        loader: Callable[[], Awaitable[T]],
        ttl: float | None,
        tags: tuple[str, ...],
    ) -> T:
        """A miss while the backend is unreachable (or covered by a pending
        invalidation): single-flight the loader, write nothing."""
        self._check_miss(full)
        self._check_open()
        self._counters.misses += 1
        while True:
            flight = self._flights.get(full)
            if flight is not None and not flight.handle.unwritten:
                # Never join a flight that reads or writes the backend: see
                # Cache._join_or_lead. Revoked, its old value is neither written
                # nor handed to anyone after this.
                self._flights.invalidate(full)
                flight = None
            joined = flight is not None
            if flight is None:
                flight = self._start(full, self._run_unwritten, loader, ttl, tags)
                flight.handle.unwritten = True
            else:
                flight.waiters += 1
                self._counters.coalesced += 1
            handle = flight.handle
            point = handle.join_point()
            try:
                value: T = await self._await_flight(flight, None)
            except _Retry:
                continue
            if joined and self._leases is not None and not handle.safe_for(point):
                continue  # read again: the value may predate a delete elsewhere
            return value

    async def _run_unwritten(
        self, flight: Flight[_Task], loader: Callable[[], Awaitable[Any]], ttl: float | None
    ) -> Any:
        return await self._run(flight, loader, ttl, write=False)

    def _start(
        self,
        full: str,
        body: Callable[..., Coroutine[Any, Any, Any]],
        loader: Callable[[], Awaitable[Any]],
        ttl: float | None,
        tags: tuple[str, ...],
        *extra: Any,
    ) -> Flight[_Task]:
        """Register a flight whose work runs in its own task (``body(flight, loader,
        ttl, *extra)``)."""
        handle = _Task()
        if self._remote is not None and self._leases is None:
            handle.guard = asyncio.Lock()
        flight = self._flights.start(full, handle, tags)
        self._spawn(flight, body(flight, loader, ttl, *extra))
        return flight

    def _spawn(
        self, flight: Flight[_Task], coro: Coroutine[Any, Any, Any], token: str | None = None
    ) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=f"cachewise-load:{flight.key}")
        flight.leader = task  # the load runs in this task (see _cycles)
        if flight.handle.future is None:
            flight.handle.future = task
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        task.add_done_callback(lambda done: self._load_done(done, flight, token))
        return task

    def _load_done(self, task: asyncio.Task[Any], flight: Flight[_Task], token: str | None) -> None:
        """A load task that was cancelled, maybe before its first step (a shutdown
        that cancels every task): its own cleanup never ran. The flight must not
        stay in the table (callers would join a dead flight for good), nor its
        in-process lease stay held. (A Redis lease expires on its own.)"""
        if task.cancelled():
            self._end(flight)
            if self._inproc is not None and token is not None:
                self._release_soon(flight.key, token)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        # Mark the outcome as retrieved: waiters get it through shield(), and a
        # refresh nobody awaits must not log "exception was never retrieved".
        if not task.cancelled():
            task.exception()

    async def _run(
        self,
        flight: Flight[_Task],
        loader: Callable[[], Awaitable[Any]],
        ttl: float | None,
        *,
        token: str | None = None,
        write: bool = True,
    ) -> Any:
        """Load, write (guarded by the lease ``token`` if any; nothing when
        ``write=False``) and return the value; the flight ends either way."""
        counters = self._counters
        clock = self._clock
        counters.loads += 1
        handle = flight.handle
        try:
            stamp = None
            if flight.tags and (write or token is not None):
                # Stamp first: an invalidation during the load makes its entry a miss.
                try:
                    stamp = await self._stamp(flight.tags)
                except Exception as exc:
                    if classify(exc) is ErrorKind.CALLER:  # the backend has no tags
                        await self._release(flight.key, token)
                        raise
                    self._degraded("tag_stamp", exc)
                    write = False  # an unstamped entry must not be written
                    await self._release(flight.key, token)
                    token = None
            handle.started = True
            if not write and token is None:
                handle.confirmed = False  # nothing will be written: nothing confirms it
            entered = loading(flight)  # (see _cycles: tasks and calls inside the load)
            try:
                # The loader's own reads are its own: the caller's type= must not
                # reach them (see Cache._run).
                untyped = _typed.READ_TYPE.set(None)
                try:
                    start = clock()
                    try:
                        awaitable = loader()
                        if not inspect.isawaitable(awaitable):
                            raise TypeError(
                                f"the loader returned {type(awaitable).__name__}, not an "
                                "awaitable; AsyncCache needs an async loader (use Cache for "
                                "sync loaders)"
                            )
                        value = await awaitable
                    finally:
                        _typed.restore(untyped)
                    check_reusable(value)
                    negative = bool(self._policy.is_negative(value))
                    end = clock()
                except asyncio.CancelledError as exc:
                    if _cancelling():
                        raise  # this load task itself is being cancelled
                    # The loader (or is_negative) raised CancelledError of its own
                    # (it awaited, or read, something that was cancelled): a failed
                    # load, not a reason to retry it forever (break 5).
                    raise LoadCancelledError(
                        "the loader raised CancelledError although its load was not "
                        "cancelled (it awaited something that was cancelled)"
                    ) from exc
            except Exception:
                counters.load_errors += 1
                await self._release(flight.key, token)
                raise
            finally:
                done_loading(entered)
            entry = self._new_entry(
                value, end, ttl, max(end - start, 0.0), negative, flight.tags, stamp
            )
            handle.sealed = True  # who joins from now on reads again rather than wait
            try:
                if token is not None:
                    await self._write_leased(flight, entry, token)
                elif write:
                    await self._write_guarded(flight, entry)
            except _UNSTORABLE as exc:
                # Not storable: every waiter still gets the value, uncached.
                self._refused_write(exc)
            return value
        except BaseException as exc:
            if not isinstance(exc, Exception):
                # Cancelled (or interrupted) in the load or its write: the store's
                # lease must not outlive us. Released without awaiting here.
                self._release_soon(flight.key, token)
            raise
        finally:
            self._end(flight)

    async def _write_guarded(self, flight: Flight[_Task], entry: Entry | None) -> None:
        try:
            if self._local is not None:
                # No await between the validity check and the write: atomic.
                if flight.valid:
                    if entry is None:
                        self._local.delete(flight.key)
                    else:
                        self._local.set(flight.key, entry)
                return
            guard = flight.handle.guard
            assert guard is not None
            assert self._remote is not None
            async with guard:
                if flight.valid:
                    if entry is None:
                        await self._remote.delete(flight.key)
                    else:
                        await self._remote.set(flight.key, entry)
        except Exception as exc:
            if classify(exc) is ErrorKind.CALLER:
                raise
            self._degraded("set", exc)

    async def _write_leased(self, flight: Flight[_Task], entry: Entry | None, token: str) -> None:
        # The lease makes the write atomic with respect to deletes in any process.
        leases = self._leases
        assert leases is not None
        flight.handle.confirmed = False
        if entry is None or not flight.valid:
            await self._release(flight.key, token)
            return
        started = time.monotonic()
        try:
            # False: the lease was lost (deleted or expired) while loading.
            flight.handle.confirmed = await leases.set_leased(flight.key, entry, token)
        except Exception as exc:
            if classify(exc) is ErrorKind.CALLER:
                # Nothing written: if the lease was still ours, no delete happened
                # since it was granted, and the value may go to the joiners as a
                # written one would (see LoadState.safe_for).
                flight.handle.confirmed = await self._release(flight.key, token)
                raise
            self._degraded("set", exc)
            flight.handle.unreached = True
            if retry_fast_failure(time.monotonic() - started, 1):  # see Cache._write_leased
                await self._release(flight.key, token)
            else:
                self._release_later(flight.key, token)

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
            for flight in self._flights.invalidate_all():
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

    def _end(self, flight: Flight[_Task]) -> None:
        """The flight is over: out of the table (and of the lease-holder record)."""
        if self._scope is not None:
            lease_ended(self._scope, flight.key, flight)
        self._flights.finish(flight)

    def _release_soon(self, key: str, token: str | None) -> None:
        """Release a lease without awaiting (from a cancellation): at once on an
        in-process store, else in a tracked background task."""
        if token is None or self._leases is None:
            return
        if self._inproc is not None:
            try:
                self._inproc.release(key, token)
            except Exception as exc:
                self._degraded("release", exc)
        else:
            self._release_later(key, token)

    def _release_later(self, key: str, token: str) -> None:
        """Release a lease in a tracked task (see Cache._release_later)."""
        if self._closed or len(self._tasks) >= self._max_pending:
            return
        task = asyncio.get_running_loop().create_task(
            self._release(key, token), name=f"cachewise-release:{key}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

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

    async def _read_leased(
        self,
        full: str,
        loader: Callable[[], Awaitable[T]],
        ttl: float | None,
        tags: tuple[str, ...],
        found: Entry | None,
        stale: Entry | None,
    ) -> T:
        # Misses go through the in-process flight first: one lease request per key
        # from this process, however many tasks miss at once. The leader reads
        # inline; only a load gets its own task.
        counters = self._counters
        while True:
            flight = self._flights.get(full)
            leader = flight is None
            if flight is None:
                handle = _Task()
                handle.future = asyncio.get_running_loop().create_future()
                flight = self._flights.start(full, handle, tags)
                flight.leader = asyncio.current_task()  # reads inline; _spawn hands over
                await self._lead_leased(flight, loader, ttl, found, stale)
            else:
                handle = flight.handle
                point = handle.join_point()
                flight.waiters += 1
                counters.coalesced += 1
            try:
                value: T = await self._await_flight(flight, stale, leader)
            except _Retry:
                continue
            if not leader:
                # (A value reached this joiner: errors are raised above.)
                if not handle.safe_for(point):
                    if handle.unreached:
                        # Not from a backend that just failed (LoadState.unreached).
                        return await self._load_unreached(full, loader, ttl, tags)
                    continue  # read again: the value may predate a delete elsewhere
                self._count_served(handle.kind, handle.negative)
            return value

    async def _lead_leased(
        self,
        flight: Flight[_Task],
        loader: Callable[[], Awaitable[Any]],
        ttl: float | None,
        found: Entry | None,
        stale: Entry | None,
    ) -> None:
        """Run the lease flow; publish its outcome on the flight's future. Never
        raises but for this caller's own cancellation (then waiters retry)."""
        leases = self._leases
        assert leases is not None
        handle = flight.handle
        future = handle.future
        assert future is not None
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
                        reply = await leases.read_or_lease(full, token, step.mode)
                    except Exception as exc:
                        self._degraded("read", exc)  # load without a lease or a write
                        handle.unreached = True
                        outcome = LoadStep(leased=False, stale=None)
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
                        await self._release(full, dead)
                        step = flow.send(None)
                        continue
                    holder = lease_holder(self._scope, full) if self._scope is not None else None
                    me = asyncio.current_task()
                    if holder is not None:
                        try:
                            enter_wait(me, holder)  # the holder may be waiting for us
                        except LoaderCycleError as exc:
                            future.set_exception(exc)
                            self._end(flight)
                            return
                    try:
                        await leases.wait(full, step.seconds)
                    except Exception as exc:
                        # The backend went away while we waited: asking for the
                        # lease again would wait out a second timeout, so load
                        # now, without a lease and without writing.
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
            # Cancelled mid-read: the others read again without us, and a lease
            # granted to us must not stay held (release checks the token).
            self._release_soon(full, token)
            if not future.done():
                future.set_exception(_Retry())
                # Retrieved here: with no other waiter nobody awaits it, and asyncio
                # would log "Future exception was never retrieved" (break 25).
                future.exception()
            self._end(flight)
            raise
        if isinstance(outcome, Serve):
            entry = outcome.entry
            # Served from a read of ours, or from what the caller had read before.
            handle.served_read = handle.reads if entry is not found and entry is not stale else 0
            handle.kind = "stale" if outcome.stale else "hit"
            handle.negative = entry.negative
            self._count_served(handle.kind, handle.negative)
            future.set_result(entry.value)
            self._end(flight)
            # After finish: the refresh needs the key's flight slot to itself.
            if outcome.refresh:
                self._refresh_in_background(
                    full, loader, ttl, flight.tags, entry, early=not outcome.stale
                )
            return
        handle.kind = "load"
        handle.stale = outcome.stale
        self._count_served(handle.kind, handle.negative)
        if self._closed:
            await self._release(full, token if outcome.leased else None)
            future.set_exception(CacheClosedError("AsyncCache is closed"))
            self._end(flight)
            return
        task = self._spawn(
            flight,
            self._run(
                flight,
                loader,
                ttl,
                token=token if outcome.leased else None,
                write=outcome.leased,
            ),
            token if outcome.leased else None,
        )
        task.add_done_callback(lambda t: _copy_outcome(t, future))

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
        if self._closed or full in self._flights:
            return
        if self._background >= self._max_pending:
            self._counters.refreshes_dropped += 1
            return
        flight = self._start(full, self._run_background, loader, ttl, tags, trigger, early)
        assert flight.handle.future is not None
        self._background += 1
        flight.handle.future.add_done_callback(self._background_done)

    async def _run_background(
        self,
        flight: Flight[_Task],
        loader: Callable[[], Awaitable[Any]],
        ttl: float | None,
        trigger: Entry,
        early: bool,
    ) -> Any:
        outside_loads()  # (this task's own context: see _cycles)
        token = None
        if self._leases is not None:
            # Across processes, one refresh per key: only the lease holder runs it.
            token = new_token(self._token_prefix)
            try:
                reply = await self._leases.read_or_lease(flight.key, token, "refresh")
            except Exception as exc:
                self._degraded("read", exc)
                reply = None
            granted = reply is not None and reply.granted
            if granted and reply is not None and superseded(trigger, reply.entry):
                await self._release(flight.key, token)
                granted = False
            if granted and self._scope is not None:
                lease_taken(self._scope, flight.key, flight, token)
        else:
            try:
                current = await self._bread(flight.key)
            except Exception as exc:
                self._degraded("get", exc)
                current = None
            granted = not superseded(trigger, current)
        if not granted:
            self._end(flight)
            raise _Retry  # joiners (if any) read again
        if early:
            self._counters.early_refreshes += 1
        return await self._run(flight, loader, ttl, token=token)

    def _background_done(self, future: asyncio.Future[Any]) -> None:
        self._background -= 1
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None and not isinstance(exc, _Retry):
            self._refresh_failed(
                future.get_name() if isinstance(future, asyncio.Task) else "?", exc
            )

    async def wait_background(self, timeout: float | None = None) -> bool:
        """Wait for the load and refresh tasks (including any they start); whether
        all finished within ``timeout`` seconds (``None``: no limit)."""
        loop = asyncio.get_running_loop()
        self._check_loop(loop)
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            # The settler is not "background work started so far": it runs for as
            # long as invalidations are held (aclose stops it).
            pending = [t for t in self._tasks if t is not self._settler or self._closed]
            if not pending:
                return True
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return False
            # asyncio.wait never raises the tasks' exceptions; _task_done retrieves them.
            await asyncio.wait(pending, timeout=remaining)

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
        """Decorate a coroutine function so calls read through this cache; see
        ``Cache.cached``. ``.invalidate(...)`` is a coroutine."""
        if callable(key):
            return self.cached()(key)
        ttl = check_ttl(ttl)
        if key is not None and not isinstance(key, str):
            raise TypeError(f"key must be a template str, not {type(key).__name__}")

        def decorate(func: Callable[P, Awaitable[R]]) -> AsyncCachedFunction[P, R]:
            _check_async_callable(func, "cached")
            keys = self._key_builder(func, key, tags, max_keys, on_max_keys, ignore)
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
        """Declare what an async write invalidates, and invalidate it (awaited) when
        it returns, or when its transaction commits; see ``Cache.invalidates``.

        ``after_commit="sqlalchemy"`` follows an ``AsyncSession`` argument (needs
        ``cachewise[sqlalchemy-async]``), ``"dbapi"`` an ``async_transaction()``
        block. ``"django"`` is refused (``TypeError``): Django runs ``on_commit``
        callbacks synchronously, where an ``AsyncCache`` cannot be awaited.
        """

        def decorate(func: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
            _check_async_callable(func, "invalidates")
            invalidator = Invalidator(func, keys, tags)
            hook = after_commit_hook(after_commit, self, invalidator, is_async=True)
            wrapper = async_invalidating(self, func, invalidator, hook)
            self._declare_write(
                func, tuple(keys), tuple(tags), owner=wrapper, after_commit=after_commit
            )
            return wrapper

        return decorate

    # -- fork ---------------------------------------------------------------------

    def _fork_locks(self) -> list[threading.Lock]:
        return []

    def _after_fork_child(self) -> None:
        # The parent's tasks and loop are not the child's (see _forksafe).
        self._flights = FlightTable()
        self._tasks = set()
        self._settler = None
        self._thread_settler = None
        self._thread_settler_lock = threading.Lock()
        self._background = 0

    # -- lifecycle ----------------------------------------------------------------

    async def aclose(self) -> None:
        """Drain load and refresh tasks, then close the backend if the cache owns it.
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self.wait_background()
        if self._unsettled:  # one last try at held invalidations, or an ERROR
            try:
                await self._settle()
            except Exception as exc:
                self._degraded("settle", exc)
            self._last_settle(attempt=False)  # (logs what is still held)
        if self._owns_backend:
            if self._remote is not None:
                await self._remote.aclose()
            elif self._local is not None:
                self._local.close()

    async def close(self) -> None:
        """Same as ``aclose()``."""
        await self.aclose()

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


# A backend failure quicker than this was not a timeout.


def _check_async_callable(func: object, decorator: str) -> None:
    if not callable(func):
        raise TypeError(f"{decorator}() decorates callables, not {type(func).__name__}")
    check_not_generator(func, decorator)
    if not is_async_callable(func):
        raise TypeError(
            f"{getattr(func, '__qualname__', func)!s} is not a coroutine function; "
            f"use a Cache's {decorator}(), not an AsyncCache's"
        )


def _cancelling() -> bool:
    """Whether the current task has been asked to cancel (3.11+; assume yes before)."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return True if cancelling is None else bool(cancelling())
