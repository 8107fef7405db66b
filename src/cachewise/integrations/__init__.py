"""Invalidate cached values after a database transaction commits, never before.

Deleting a cached value while the write that made it stale is still uncommitted
lets a concurrent reader load the old row and cache it again, for a whole TTL.
Deleting it after the commit, and only then, closes that window. Each submodule
ties invalidation to one kind of transaction:

- ``cachewise.integrations.sqlalchemy``: ``invalidate_after_commit(session, cache,
  keys=(), tags=())`` for a ``Session`` (``pip install 'cachewise[sqlalchemy]'``) or
  an ``AsyncSession`` (``pip install 'cachewise[sqlalchemy-async]'``).
- ``cachewise.integrations.django``: ``invalidate_on_commit(cache, keys=(),
  tags=(), using=None)`` (``pip install 'cachewise[django]'``).
- ``cachewise.integrations.dbapi``: ``transaction(connection, cache, ...)`` and
  ``async_transaction(...)``, context managers around a plain DB-API connection
  (sqlite3, psycopg, ...) that commit, then invalidate.

The same helpers carry out the declarative form,
``@cache.invalidates("user:{user_id}", after_commit="sqlalchemy" | "django" |
"dbapi")``: each call's keys and tags are registered with the transaction the
write ran in (its session or connection argument, or Django's current one), and
the invalidation map says "after commit" for it.

Common rules: keys and tags registered during one transaction are invalidated
together, de-duplicated, once, after it commits, and before the call that
committed returns; a rollback drops them. Every name is validated by the cache
itself when it is registered (``TypeError`` or ``ValueError`` from the registering
call, which then registers nothing), so no bad name surfaces after the commit. A
cache that fails during the invalidation never turns a committed write into an
error, and never keeps the rest of the batch from being invalidated: a batch call
that raises is retried name by name, and each name that still fails is logged at
ERROR on the ``cachewise`` logger and counted in ``invalidation_errors()`` (by the
cache's ``CacheGroup``), because the value it should have removed may now be
stale until it expires.

This package imports neither SQLAlchemy nor Django; each submodule imports its
own framework.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Generator, Iterable, Iterator
from typing import Any, TypeVar

from cachewise._frontends._group import CacheGroup
from cachewise._frontends.aio import AsyncCache
from cachewise._frontends.sync import Cache

__all__ = ["invalidation_errors"]

logger = logging.getLogger("cachewise")

T = TypeVar("T")


def invalidation_errors(group: CacheGroup | None = None) -> int:
    """How many after-commit invalidation calls failed so far, for the caches of
    ``group`` (default: ``CacheGroup.default``, every cache made without
    ``group=``); also ``group.invalidation_errors``.

    A batch call that fails is retried name by name, and each name that still
    fails counts once (and is logged at ERROR on the ``cachewise`` logger, naming
    it). Failures the cache degraded around itself (a backend error inside
    ``delete_many``) are counted in that cache's ``stats().backend_errors`` instead.
    """
    return (CacheGroup.default if group is None else group).invalidation_errors


def _failed(
    operation: str, cache: Cache | AsyncCache, names: tuple[str, ...], exc: BaseException
) -> None:
    """Count and log one failed invalidation call: ``names`` may now be stale."""
    cache.group._count_invalidation_error()
    logger.error(
        "cachewise: %s of %s on %r failed after the commit (%s: %s); "
        "those cached values may be stale until they expire",
        operation,
        _shown(names),
        cache,
        type(exc).__name__,
        exc,
        exc_info=exc,
    )


def _shown(names: tuple[str, ...], limit: int = 5) -> str:
    """``names`` for a log line, the first few of them."""
    shown = ", ".join(repr(name) for name in names[:limit])
    more = len(names) - limit
    return f"{shown} and {more} more" if more > 0 else shown


def _strs(values: Iterable[str], what: str) -> tuple[str, ...]:
    """``values`` as a tuple of non-empty str."""
    if isinstance(values, str):
        raise TypeError(f"{what} must be an iterable of str, not a str")
    checked = tuple(values)
    for value in checked:
        if not isinstance(value, str):
            raise TypeError(f"{what} must be str, not {type(value).__name__}")
        if not value:
            raise ValueError(f"{what} must be non-empty strings")
    return checked


def _keys(cache: Cache | AsyncCache, values: Iterable[str]) -> tuple[str, ...]:
    """``values`` as keys of ``cache``, validated now, at the registration: a key
    the cache would refuse raises here (``TypeError``/``ValueError``), not after the
    commit, where it would fail the whole batch."""
    keys = _strs(values, "keys")
    for key in keys:
        # The cache's own validation (the code delete_many runs on each key), so
        # what is accepted here cannot drift from what the cache accepts.
        cache._full_key(key)
    return keys


def _tags(cache: Cache | AsyncCache, values: Iterable[str]) -> tuple[str, ...]:
    """``values`` as tags of ``cache``, validated now (see ``_keys``)."""
    tags = _strs(values, "tags")
    # The cache's own validation, as invalidate_tags runs it. An iterator rather
    # than the tuple: _full_tags remembers the tuples and lists it is given for its
    # hot read path, and a one-off check has no business in that memo.
    cache._full_tags(iter(tags))
    # And the backend must have tags: refused here, before the commit, as
    # invalidates(tags=...) is at decoration (attack on issue 11: the row committed,
    # then the tag invalidation failed).
    cache._need_tags(tags)
    return tags


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


# One call of an invalidation: a cache method's name and its arguments.
_Step = tuple[str, tuple[Any, ...]]


def _steps(
    cache: Cache | AsyncCache, keys: tuple[str, ...], tags: tuple[str, ...]
) -> Generator[_Step, Exception | None, None]:
    """The invalidation of one cache's share of a batch, as the calls to make; the
    driver (``_Batch.run`` calls them, ``_Batch.arun`` awaits them) sends back
    each call's exception, or ``None``.

    One call for the keys (``delete_many``) and one for the tags
    (``invalidate_tags``). If a batch call raises, its names are invalidated one
    by one (``delete``, ``invalidate_tags``), so one bad name or one failing call
    never keeps the others from being invalidated; each name that still fails is
    counted and logged.
    """
    for batch_op, single_op, names in (
        ("delete_many", "delete", keys),
        ("invalidate_tags", "invalidate_tags", tags),
    ):
        if not names:
            continue
        args: tuple[Any, ...] = (names,) if batch_op == "delete_many" else names
        error = yield batch_op, args
        if error is None:
            continue
        # Not counted: what matters is whether each name gets invalidated, below.
        logger.warning(
            "cachewise: %s of %d name(s) on %r failed after the commit (%s: %s); "
            "invalidating them one by one",
            batch_op,
            len(names),
            cache,
            type(error).__name__,
            error,
        )
        for name in names:
            error = yield single_op, (name,)
            if error is not None:
                _failed(single_op, cache, (name,), error)


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
        """Register ``keys`` and ``tags`` of ``cache`` (already checked by ``_keys``
        and ``_tags``)."""
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
        if self.needs_await:
            raise TypeError("an AsyncCache needs arun()")
        for cache, keys, tags in self.items():
            steps = _steps(cache, keys, tags)
            error: Exception | None = None
            while True:
                try:
                    operation, args = steps.send(error)
                except StopIteration:
                    break
                try:
                    getattr(cache, operation)(*args)
                    error = None
                except Exception as exc:
                    error = exc

    async def arun(self) -> None:
        """Invalidate now, from async code; a ``Cache`` in the batch is called
        directly."""
        for cache, keys, tags in self.items():
            steps = _steps(cache, keys, tags)
            error: Exception | None = None
            while True:
                try:
                    operation, args = steps.send(error)
                except StopIteration:
                    break
                try:
                    result = getattr(cache, operation)(*args)
                    if isinstance(cache, AsyncCache):
                        await result
                    error = None
                except Exception as exc:
                    error = exc


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
