"""``AsyncCache``: the front end for asyncio code."""

from __future__ import annotations

import asyncio
import inspect
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, TypeVar, overload

from cachewise._core.entry import Entry
from cachewise._core.flights import Flight, FlightTable
from cachewise._core.policy import Read, decide_read, is_fresh, stale_servable
from cachewise._frontends._base import CacheBase, Clock, check_key, check_loader, check_ttl
from cachewise._frontends._decorator import AsyncCachedFunction, P, R, is_async_callable
from cachewise._sentinel import MISSING
from cachewise._url import backend_from_url
from cachewise.backends._memory import MemoryBackend
from cachewise.backends._protocol import AsyncBackend, Backend, NonBlockingBackend

T = TypeVar("T")
D = TypeVar("D")


class _Task:
    """The waiting side of one async flight: the task that runs the load."""

    __slots__ = ("guard", "task")

    def __init__(self) -> None:
        self.task: asyncio.Task[Any] | None = None
        # Remote backends only: held while the finished load checks validity and
        # writes; invalidation passes through it (see Cache._revoke).
        self.guard: asyncio.Lock | None = None


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
        ttl: float = 300.0,
        jitter: float = 0.1,
        stale_ttl: float = 0.0,
        negative_ttl: float = 30.0,
        early_refresh: float = 1.0,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        serve_stale: bool = True,
        is_negative: Callable[[Any], bool] | None = None,
        max_pending_refreshes: int = 256,
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
        self._flights: FlightTable[_Task] = FlightTable()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._background = 0

    @classmethod
    def from_url(cls, url: str, **options: Any) -> AsyncCache:
        """An async cache on the backend ``url`` names, e.g. ``memory://``. The cache
        owns the backend and closes it."""
        cache = cls(backend_from_url(url), **options)
        cache._owns_backend = True
        return cache

    @property
    def backend(self) -> AsyncBackend | Backend:
        """The backend entries live in."""
        return self._backend

    # -- backend calls, local or remote ------------------------------------------

    async def _bget(self, full: str) -> Entry | None:
        try:
            if self._lget is not None:
                return self._lget(full)
            assert self._remote is not None
            return await self._remote.get(full)
        except Exception as exc:
            self._degraded("get", exc)
            return None

    async def _bcall(self, operation: str, *args: Any) -> Any:
        """Call a backend method by name; failures are counted and give ``None``."""
        try:
            if self._local is not None:
                return getattr(self._local, operation)(*args)
            return await getattr(self._remote, operation)(*args)
        except Exception as exc:
            self._degraded(operation, exc)
            return None

    # -- reads --------------------------------------------------------------------

    @overload
    async def get(self, key: str) -> Any: ...
    @overload
    async def get(self, key: str, default: D) -> Any | D: ...

    async def get(self, key: str, default: Any = MISSING) -> Any:
        """The fresh value under ``key``, or ``default`` (``MISSING``)."""
        full = self._prefix + key if key.__class__ is str else self._full_key(key)
        lget = self._lget
        if lget is not None:
            try:
                entry = lget(full)
            except Exception as exc:
                self._degraded("get", exc)
                entry = None
        else:
            entry = await self._bget(full)
        counters = self._counters
        now = self._clock()
        if entry is not None and now < entry.expires_at:  # policy.is_fresh, inlined
            counters.hits += 1
            if entry.negative:
                counters.negative_hits += 1
            return entry.value
        counters.misses += 1
        self._drop_expired(full, entry, now)
        return default

    async def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """The fresh values among ``keys``, as ``{key: value}``; misses are left out."""
        wanted = [check_key(key) for key in keys]
        entries = await self._bcall("get_many", [self._prefix + key for key in wanted])
        if entries is None:
            entries = [None] * len(wanted)
        now = self._clock()
        found: dict[str, Any] = {}
        counters = self._counters
        for key, entry in zip(wanted, entries, strict=True):
            if entry is not None and is_fresh(entry, now):
                counters.hits += 1
                if entry.negative:
                    counters.negative_hits += 1
                found[key] = entry.value
            else:
                counters.misses += 1
        return found

    async def get_or_load(
        self, key: str, loader: Callable[[], Awaitable[T]], *, ttl: float | None = None
    ) -> T:
        """The value under ``key``; on a miss, the awaited result of ``loader()``.

        Concurrent tasks on one key share one load; see ``Cache.get_or_load``.
        """
        full = self._prefix + key if key.__class__ is str else self._full_key(key)
        if not callable(loader):
            check_loader(loader)
        if ttl is not None:
            ttl = check_ttl(ttl)
        lget = self._lget
        if lget is not None:
            # Local backend: the same hit path as Cache, with no await at all.
            try:
                entry = lget(full)
            except Exception as exc:
                self._degraded("get", exc)
                entry = None
        else:
            entry = await self._bget(full)
        if entry is not None and self._clock() < entry.refresh_at:
            counters = self._counters
            counters.hits += 1
            if entry.negative:
                counters.negative_hits += 1
            value: T = entry.value
            return value
        return await self._read_slow(full, loader, ttl, entry)

    async def _read_slow(
        self,
        full: str,
        loader: Callable[[], Awaitable[T]],
        ttl: float | None,
        entry: Entry | None,
    ) -> T:
        counters = self._counters
        now = self._clock()
        action = decide_read(entry, now, 1.0 - self._rng.random(), self._policy)
        if action is Read.LOAD or action is Read.LOAD_OR_STALE:
            self._check_open()
            counters.misses += 1
            self._drop_expired(full, entry, now)
            stale = entry if action is Read.LOAD_OR_STALE else None
            result: T = await self._load(full, loader, ttl, stale)
            return result
        assert entry is not None
        if action is Read.HIT:
            counters.hits += 1
            if entry.negative:
                counters.negative_hits += 1
        elif action is Read.HIT_REFRESH:
            counters.hits += 1
            if self._refresh_in_background(full, loader, ttl):
                counters.early_refreshes += 1
        else:  # Read.STALE_REFRESH
            counters.stale_served += 1
            self._refresh_in_background(full, loader, ttl)
        value: T = entry.value
        return value

    # -- writes -------------------------------------------------------------------

    async def set(self, key: str, value: Any, *, ttl: float | None = None) -> None:
        """Store ``value`` under ``key``; a load in flight will not overwrite it."""
        full = self._full_key(key)
        ttl = check_ttl(ttl)
        self._check_open()
        entry = self._new_entry(value, self._clock(), ttl, 0.0, False)
        await self._revoke([full])
        if entry is None:
            await self._bcall("delete", full)
        else:
            await self._bcall("set", full, entry)

    async def set_many(self, items: Mapping[str, Any], *, ttl: float | None = None) -> None:
        """``set`` for several keys with one TTL."""
        ttl = check_ttl(ttl)
        self._check_open()
        now = self._clock()
        pairs: list[tuple[str, Entry]] = []
        dropped: list[str] = []
        for key, value in items.items():
            full = self._full_key(key)
            entry = self._new_entry(value, now, ttl, 0.0, False)
            if entry is None:
                dropped.append(full)
            else:
                pairs.append((full, entry))
        await self._revoke([full for full, _ in pairs] + dropped)
        if pairs:
            await self._bcall("set_many", pairs)
        if dropped:
            await self._bcall("delete_many", dropped)

    async def delete(self, key: str) -> bool:
        """Remove ``key``; whether it was cached. A load in flight will not write."""
        full = self._full_key(key)
        await self._revoke([full])
        return bool(await self._bcall("delete", full))

    async def delete_many(self, keys: Iterable[str]) -> int:
        """``delete`` for several keys; how many were cached."""
        full = [self._full_key(key) for key in keys]
        if not full:
            return 0
        await self._revoke(full)
        return int(await self._bcall("delete_many", full) or 0)

    async def clear(self) -> int:
        """Remove every entry of this cache's namespace; how many."""
        for flight in self._flights.invalidate_all():
            await self._pass_guard(flight)
        return int(await self._bcall("clear", self._prefix) or 0)

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
        stale: Entry | None,
    ) -> T:
        counters = self._counters
        while True:
            flight = self._flights.get(full)
            if flight is None:
                flight = self._start(full, loader, ttl)
            else:
                flight.waiters += 1
                counters.coalesced += 1
            task = flight.handle.task
            assert task is not None
            try:
                # shield: cancelling this waiter must not cancel the shared load.
                value: T = await asyncio.shield(task)
                return value
            except asyncio.CancelledError:
                if task.cancelled() and not _cancelling():
                    continue  # the load itself was cancelled, not us: retry
                raise
            except Exception:
                if stale_servable(stale, self._clock()):
                    assert stale is not None
                    counters.stale_served += 1
                    stale_value: T = stale.value
                    return stale_value
                raise

    def _start(
        self, full: str, loader: Callable[[], Awaitable[Any]], ttl: float | None
    ) -> Flight[_Task]:
        handle = _Task()
        if self._remote is not None:
            handle.guard = asyncio.Lock()
        flight = self._flights.start(full, handle)
        task = asyncio.get_running_loop().create_task(
            self._run(flight, loader, ttl), name=f"cachewise-load:{full}"
        )
        handle.task = task
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return flight

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        # Mark the outcome as retrieved: waiters get it through shield(), and a
        # refresh nobody awaits must not log "exception was never retrieved".
        if not task.cancelled():
            task.exception()

    async def _run(
        self, flight: Flight[_Task], loader: Callable[[], Awaitable[Any]], ttl: float | None
    ) -> Any:
        counters = self._counters
        clock = self._clock
        counters.loads += 1
        try:
            start = clock()
            awaitable = loader()
            if not inspect.isawaitable(awaitable):
                raise TypeError(
                    f"the loader returned {type(awaitable).__name__}, not an awaitable; "
                    "AsyncCache needs an async loader (use Cache for sync loaders)"
                )
            value = await awaitable
            negative = bool(self._policy.is_negative(value))
            end = clock()
        except Exception:
            counters.load_errors += 1
            self._flights.finish(flight)
            raise
        except BaseException:
            self._flights.finish(flight)
            raise
        entry = self._new_entry(value, end, ttl, max(end - start, 0.0), negative)
        try:
            if self._local is not None:
                # No await between the validity check and the write: atomic.
                if flight.valid:
                    if entry is None:
                        self._local.delete(flight.key)
                    else:
                        self._local.set(flight.key, entry)
            else:
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
            self._degraded("set", exc)
        finally:
            self._flights.finish(flight)
        return value

    def _refresh_in_background(
        self, full: str, loader: Callable[[], Awaitable[Any]], ttl: float | None
    ) -> bool:
        if self._closed or full in self._flights:
            return False
        if self._background >= self._max_pending:
            self._counters.refreshes_dropped += 1
            return False
        flight = self._start(full, loader, ttl)
        assert flight.handle.task is not None
        self._background += 1
        flight.handle.task.add_done_callback(self._background_done)
        return True

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        self._background -= 1
        if not task.cancelled() and task.exception() is not None:
            self._refresh_failed(task.get_name(), task.exception())  # type: ignore[arg-type]

    async def wait_background(self, timeout: float | None = None) -> bool:
        """Wait for the load and refresh tasks (including any they start); whether
        all finished within ``timeout`` seconds (``None``: no limit)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while self._tasks:
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return False
            # asyncio.wait never raises the tasks' exceptions; _task_done retrieves them.
            await asyncio.wait(list(self._tasks), timeout=remaining)
        return True

    # -- decorator ----------------------------------------------------------------

    @overload
    def cached(self, key: Callable[P, Awaitable[R]], /) -> AsyncCachedFunction[P, R]: ...
    @overload
    def cached(
        self, key: str | None = None, ttl: float | None = None
    ) -> Callable[[Callable[P, Awaitable[R]]], AsyncCachedFunction[P, R]]: ...

    def cached(self, key: Any = None, ttl: float | None = None) -> Any:
        """Decorate a coroutine function so calls read through this cache; see
        ``Cache.cached``. ``.invalidate(...)`` is a coroutine."""
        if callable(key):
            return self.cached()(key)
        ttl = check_ttl(ttl)
        if key is not None and not isinstance(key, str):
            raise TypeError(f"key must be a template str, not {type(key).__name__}")

        def decorate(func: Callable[P, Awaitable[R]]) -> AsyncCachedFunction[P, R]:
            if not callable(func):
                raise TypeError(f"cached() decorates callables, not {type(func).__name__}")
            if not is_async_callable(func):
                raise TypeError(
                    f"{getattr(func, '__qualname__', func)!s} is not a coroutine function; "
                    "decorate it with a Cache, not an AsyncCache"
                )
            return AsyncCachedFunction(self, func, key, ttl)

        return decorate

    # -- lifecycle ----------------------------------------------------------------

    async def aclose(self) -> None:
        """Drain load and refresh tasks, then close the backend if the cache owns it.
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self.wait_background()
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


def _cancelling() -> bool:
    """Whether the current task has been asked to cancel (3.11+; assume yes before)."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return True if cancelling is None else bool(cancelling())
