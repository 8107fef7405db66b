"""Invalidate cached values after a database transaction commits, never before.

Deleting a cached value while the write that made it stale is still uncommitted
lets a concurrent reader load the old row and cache it again, for a whole TTL.
Deleting it after the commit, and only then, closes that window. Each submodule
ties invalidation to one kind of transaction:

- ``cachewise.integrations.sqlalchemy``: ``invalidate_after_commit(session, cache,
  keys=(), tags=())`` for a ``Session`` or an ``AsyncSession``
  (``pip install 'cachewise[sqlalchemy]'``).
- ``cachewise.integrations.django``: ``invalidate_on_commit(cache, keys=(),
  tags=(), using=None)`` (``pip install 'cachewise[django]'``).
- ``cachewise.integrations.dbapi``: ``transaction(connection, cache, ...)`` and
  ``async_transaction(...)``, context managers around a plain DB-API connection
  (sqlite3, psycopg, ...) that commit, then invalidate.

Common rules: keys and tags registered during one transaction are invalidated
together, de-duplicated, once, after it commits, and before the call that
committed returns; a rollback drops them. A cache that fails during the
invalidation never turns a committed write into an error: the failure is logged
at ERROR on the ``cachewise`` logger and counted in ``invalidation_errors()``,
because the values it should have removed may now be stale until they expire.

This package imports neither SQLAlchemy nor Django; each submodule imports its
own framework.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Coroutine, Iterable, Iterator
from typing import Any, TypeVar

from cachewise._frontends.aio import AsyncCache
from cachewise._frontends.sync import Cache

__all__ = ["invalidation_errors"]

logger = logging.getLogger("cachewise")

T = TypeVar("T")

_errors = 0
_errors_lock = threading.Lock()


def invalidation_errors() -> int:
    """How many after-commit invalidations failed in this process so far.

    Each failure is also logged at ERROR on the ``cachewise`` logger. Failures the
    cache degraded around itself (a backend error inside ``delete_many``) are
    counted in that cache's ``stats().backend_errors`` instead.
    """
    return _errors


def _failed(operation: str, cache: Cache | AsyncCache, count: int, exc: BaseException) -> None:
    global _errors
    with _errors_lock:
        _errors += 1
    logger.error(
        "cachewise: %s of %d name(s) on %r failed after the commit (%s: %s); "
        "those cached values may be stale until they expire",
        operation,
        count,
        cache,
        type(exc).__name__,
        exc,
        exc_info=exc,
    )


def _names(values: Iterable[str], what: str) -> tuple[str, ...]:
    """``values`` as a tuple of str, checked now so that bad input fails at the
    registration, not later, after the commit."""
    if isinstance(values, str):
        raise TypeError(f"{what} must be an iterable of str, not a str")
    checked = tuple(values)
    for value in checked:
        if not isinstance(value, str):
            raise TypeError(f"{what} must be str, not {type(value).__name__}")
        if not value:
            raise ValueError(f"{what} must be non-empty strings")
    return checked


def _check_cache(cache: object, *, allow_async: bool, context: str, hint: str = "") -> None:
    """Raise ``TypeError`` unless ``cache`` is a ``Cache`` (or, where the commit
    happens in async code, an ``AsyncCache``)."""
    if isinstance(cache, Cache):
        return
    if isinstance(cache, AsyncCache):
        if allow_async:
            return
        raise TypeError(f"{context} needs a sync Cache, not an AsyncCache{hint}")
    kinds = "a Cache or an AsyncCache" if allow_async else "a Cache"
    raise TypeError(f"{context} needs {kinds}, not {type(cache).__name__}")


class _Work:
    """One cache's share of a batch: keys and tags, de-duplicated, in order."""

    __slots__ = ("cache", "keys", "tags")

    def __init__(self, cache: Cache | AsyncCache) -> None:
        self.cache = cache
        # dicts rather than sets: de-duplicated, and invalidated in registration order.
        self.keys: dict[str, None] = {}
        self.tags: dict[str, None] = {}


class _Batch:
    """What to invalidate after one transaction commits, per cache.

    Not thread-safe: a batch belongs to one transaction, used by one thread (or
    one task) at a time, like the session or connection it hangs off.
    """

    __slots__ = ("_works",)

    def __init__(self) -> None:
        self._works: dict[int, _Work] = {}

    def add(self, cache: Cache | AsyncCache, keys: Iterable[str], tags: Iterable[str]) -> None:
        """Register ``keys`` and ``tags`` of ``cache`` (already checked)."""
        work = self._works.get(id(cache))
        if work is None:
            # Keyed by identity: the work item keeps the cache alive, so the id
            # cannot be reused while the batch exists.
            work = self._works[id(cache)] = _Work(cache)
        work.keys.update(dict.fromkeys(keys))
        work.tags.update(dict.fromkeys(tags))

    def absorb(self, other: _Batch) -> None:
        """Add everything ``other`` holds (a released savepoint's batch)."""
        for work in other._works.values():
            self.add(work.cache, work.keys, work.tags)

    def pending(self, cache: Cache | AsyncCache) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The keys and tags registered for ``cache`` so far."""
        work = self._works.get(id(cache))
        if work is None:
            return (), ()
        return tuple(work.keys), tuple(work.tags)

    def items(self) -> Iterator[tuple[Cache | AsyncCache, tuple[str, ...], tuple[str, ...]]]:
        """(cache, keys, tags) for each cache in the batch."""
        for work in self._works.values():
            yield work.cache, tuple(work.keys), tuple(work.tags)

    def __bool__(self) -> bool:
        return any(work.keys or work.tags for work in self._works.values())

    @property
    def needs_await(self) -> bool:
        """Whether any cache in the batch is an ``AsyncCache``."""
        return any(isinstance(work.cache, AsyncCache) for work in self._works.values())

    def run(self) -> None:
        """Invalidate now, from sync code. Every cache must be a ``Cache``."""
        for work in self._works.values():
            cache = work.cache
            if not isinstance(cache, Cache):
                raise TypeError("an AsyncCache needs arun()")
            if work.keys:
                try:
                    cache.delete_many(work.keys)
                except Exception as exc:
                    _failed("delete_many", cache, len(work.keys), exc)
            if work.tags:
                try:
                    cache.invalidate_tags(*work.tags)
                except Exception as exc:
                    _failed("invalidate_tags", cache, len(work.tags), exc)

    async def arun(self) -> None:
        """Invalidate now, from async code; a ``Cache`` in the batch is called
        directly."""
        for work in self._works.values():
            cache = work.cache
            if work.keys:
                try:
                    if isinstance(cache, AsyncCache):
                        await cache.delete_many(work.keys)
                    else:
                        cache.delete_many(work.keys)
                except Exception as exc:
                    _failed("delete_many", cache, len(work.keys), exc)
            if work.tags:
                try:
                    if isinstance(cache, AsyncCache):
                        await cache.invalidate_tags(*work.tags)
                    else:
                        cache.invalidate_tags(*work.tags)
                except Exception as exc:
                    _failed("invalidate_tags", cache, len(work.tags), exc)


async def _run_to_completion(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Await ``make()`` to its end even if the awaiting task is cancelled meanwhile,
    then re-raise the cancellation.

    The invalidation follows a commit that already happened: stopping it halfway
    would leave stale values behind. The task is awaited here, never left to run
    on its own.
    """
    task = asyncio.ensure_future(make())
    cancelled = False
    while not task.done():
        try:
            # asyncio.wait never cancels what it waits for.
            await asyncio.wait((task,))
        except asyncio.CancelledError:
            cancelled = True
    if cancelled and task.exception() is None:
        raise asyncio.CancelledError
    return task.result()  # the result, or the coroutine's own exception
