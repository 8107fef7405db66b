"""After-commit invalidation for Django (``pip install 'cachewise[django]'``).

::

    from cachewise.integrations.django import invalidate_on_commit

    with transaction.atomic():
        User.objects.filter(pk=7).update(name="Ann")
        invalidate_on_commit(cache, keys=["user:7"], tags=["users"])
    # committed, then invalidated, before atomic() exited
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

try:
    from django.db import transaction  # type: ignore[import-untyped]  # no stubs shipped
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "cachewise.integrations.django needs Django: pip install 'cachewise[django]'"
    ) from exc

from cachewise._frontends.aio import AsyncCache
from cachewise._frontends.sync import Cache
from cachewise.integrations import _Batch, _check_cache, _keys, _tags

__all__ = ["invalidate_on_commit"]


def invalidate_on_commit(
    cache: Cache,
    keys: Iterable[str] = (),
    tags: Iterable[str] = (),
    using: str | None = None,
) -> None:
    """Invalidate ``keys`` and ``tags`` in ``cache`` when the current transaction
    on database ``using`` commits, through ``django.db.transaction.on_commit``.

    - Inside ``atomic()``: the invalidation runs after the outermost block commits,
      before it exits; a rollback drops it. Calls made at the same savepoint level
      share one ``on_commit`` callback, so their keys and tags are invalidated in
      one batch per cache, de-duplicated. A nested ``atomic()`` that creates a
      savepoint gets its own batch, which Django drops if that savepoint is rolled
      back.
    - Outside any atomic block, in autocommit mode, each statement has already
      committed: the invalidation runs immediately (Django's ``on_commit``
      behaviour). With autocommit turned off by hand, Django raises
      ``TransactionManagementError``.
    - Names are validated here, by the cache's own rules: a name the cache would
      refuse is a ``TypeError`` or ``ValueError`` from this call, which then
      registers nothing.
    - A cache failing during the invalidation does not raise out of the commit:
      it is logged at ERROR on the ``cachewise`` logger and counted in
      ``cachewise.integrations.invalidation_errors()``.

    Only a sync ``Cache``: Django runs ``on_commit`` callbacks synchronously, where
    an ``AsyncCache`` cannot be awaited. Async code can pair an ``AsyncCache`` with
    a ``Cache`` on the same backend (a shared ``MemoryBackend``, or the same Redis)
    and register the ``Cache`` here.
    """
    _check_cache(
        cache,
        allow_async=False,
        context="invalidate_on_commit()",
        hint=" (Django runs on_commit callbacks synchronously)",
    )
    # Validated by the cache's own rules, now: in the on_commit callback a bad name
    # would fail the batch. Nothing is registered if one is bad.
    key_names = _keys(cache, keys)
    tag_names = _tags(cache, tags)
    if not key_names and not tag_names:
        return
    connection = transaction.get_connection(using)
    if connection.in_atomic_block:
        flush = _pending_flush(connection)
        if flush is not None:
            flush.batch.add(cache, key_names, tag_names)
            return
    batch = _Batch()
    batch.add(cache, key_names, tag_names)
    transaction.on_commit(_Flush(batch), using=using)


class _Flush:
    """The ``on_commit`` callback: invalidates its batch."""

    __slots__ = ("batch",)

    def __init__(self, batch: _Batch) -> None:
        self.batch = batch

    def __call__(self) -> None:
        self.batch.run()

    def __repr__(self) -> str:
        return f"<cachewise invalidation {[(keys, tags) for _, keys, tags in self.batch.items()]}>"


def _savepoints(sids: Iterable[str | None]) -> frozenset[str]:
    # None marks an atomic block without a savepoint: it cannot be rolled back
    # on its own, so it does not separate batches.
    return frozenset(sid for sid in sids if sid is not None)


def _pending_flush(connection: Any) -> _Flush | None:
    """Our callback already registered in this transaction at the current savepoint
    level, if any.

    Django keeps the transaction's callbacks in ``connection.run_on_commit`` as
    ``(savepoint ids, callback, robust)``, drops those of a savepoint that rolls
    back, and empties the list at commit and rollback (``TestCase.
    captureOnCommitCallbacks`` reads it the same way). Adding to a callback found
    there therefore gives the registration exactly that callback's fate.
    """
    current = _savepoints(connection.savepoint_ids)
    for entry in reversed(getattr(connection, "run_on_commit", ())):
        callback = entry[1]
        if isinstance(callback, _Flush) and _savepoints(entry[0]) == current:
            return callback
    return None


class _Hook:
    """``@cache.invalidates(..., after_commit="django")``: Django's current
    transaction on the default database, through ``invalidate_on_commit`` (which
    runs the invalidation at once outside ``atomic()``)."""

    __slots__ = ("_cache",)

    def __init__(self, cache: Cache) -> None:
        self._cache = cache

    def before(self, arguments: list[Any]) -> None:
        """Nothing to find: the transaction is the thread's own connection's."""
        return

    def after(self, found: None, keys: list[str], tags: list[str]) -> bool:
        """Registered with ``on_commit``, which also covers "no transaction"."""
        invalidate_on_commit(self._cache, keys, tags)
        return False


def _after_commit_hook(cache: Cache | AsyncCache, *, is_async: bool, function: str) -> _Hook:
    """The hook ``invalidates(after_commit="django")`` runs (see
    ``cachewise._frontends._decorator.AfterCommitHook``)."""
    _check_cache(
        cache,
        allow_async=False,
        context=f"{function}(): after_commit='django'",
        hint=" (Django runs on_commit callbacks synchronously)",
    )
    assert isinstance(cache, Cache)  # (for the type checker: _check_cache said so)
    return _Hook(cache)
