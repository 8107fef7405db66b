"""After-commit invalidation around a plain DB-API connection (sqlite3, psycopg, ...).

::

    from cachewise.integrations.dbapi import transaction

    with transaction(conn, cache, keys=["user:7"]) as after_commit:
        conn.execute("UPDATE users SET name = ? WHERE id = ?", ("Ann", 7))
        after_commit.invalidate(tags=["users"])
    # committed, then "user:7" and the "users" tag were invalidated

    async with async_transaction(aconn, async_cache, keys=["user:7"]):
        await aconn.execute("UPDATE users SET name = %s WHERE id = %s", ("Ann", 7))

The block is the rest of the connection's current transaction: at its end the
connection is committed, then the cache invalidated. If the block raises, the
connection is rolled back, nothing is invalidated, and the exception propagates.
If the commit raises or is interrupted (a lost connection, a cancellation, a
KeyboardInterrupt), its outcome is unknown (the server may have committed before
the connection failed), so the connection is rolled back (best effort) and the
invalidation runs anyway before the exception propagates: an extra invalidation
costs one miss, a missing one a stale value for a whole TTL. The connection must
not be in autocommit mode (each statement would commit on its own, and a rollback
could not undo it): ``ValueError``. Blocks do not
nest on one connection (``RuntimeError``): the inner one would commit the outer
one's half-done work.

A cache failing during the invalidation does not raise out of the block: it is
logged at ERROR on the ``cachewise`` logger and counted in
``cachewise.integrations.invalidation_errors()``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Iterable, Iterator
from typing import Any, Protocol

from cachewise._frontends.aio import AsyncCache
from cachewise._frontends.sync import Cache
from cachewise.integrations import _Batch, _check_cache, _keys, _run_to_completion, _tags

__all__ = ["AfterCommit", "async_transaction", "transaction"]


class Connection(Protocol):
    """What ``transaction()`` needs of a DB-API connection."""

    def commit(self) -> Any: ...
    def rollback(self) -> Any: ...


class AsyncConnection(Protocol):
    """What ``async_transaction()`` needs: psycopg's ``AsyncConnection``,
    aiosqlite's ``Connection``..."""

    def commit(self) -> Awaitable[Any]: ...
    def rollback(self) -> Awaitable[Any]: ...


class AfterCommit:
    """What a ``transaction()`` block invalidates once it commits.

    ``invalidate(keys=(), tags=())`` adds to it, from anywhere inside the block.
    Registrations are de-duplicated and invalidated in one batch.
    """

    __slots__ = ("_async", "_batch", "_cache", "_open")

    def __init__(self, cache: Cache | AsyncCache, *, is_async: bool = False) -> None:
        self._cache = cache
        self._batch = _Batch()
        self._open = True
        self._async = is_async  # an async_transaction() block (it can await an AsyncCache)

    def invalidate(self, keys: Iterable[str] = (), tags: Iterable[str] = ()) -> None:
        """Invalidate ``keys`` and ``tags`` after the block's commit (not now).

        Each name is validated now, by the cache's own rules: a name the cache
        would refuse (not a str, empty, whitespace or control characters) is a
        ``TypeError`` or ``ValueError`` here, and nothing of this call is
        registered.
        """
        if not self._open:
            raise RuntimeError("this transaction block has ended; nothing more can be added")
        # Both checked before either is added: a bad tag registers no key either.
        key_names = _keys(self._cache, keys)
        tag_names = _tags(self._cache, tags)
        self._batch.add(self._cache, key_names, tag_names)

    @property
    def keys(self) -> tuple[str, ...]:
        """The keys registered so far."""
        return self._batch.pending(self._cache)[0]

    @property
    def tags(self) -> tuple[str, ...]:
        """The tags registered so far."""
        return self._batch.pending(self._cache)[1]

    def __repr__(self) -> str:
        return f"AfterCommit(keys={self.keys!r}, tags={self.tags!r})"


# Connections inside a block right now, by identity (a block keeps its connection
# alive, so an id is not reused while it is here), with the block's AfterCommit.
# Process-wide on purpose: it is a fact about connection objects (one block per
# connection, whatever caches the blocks invalidate), so no cache or group owns it.
_active: dict[int, AfterCommit] = {}


def _enter(connection: object, after: AfterCommit) -> None:
    if _autocommit(connection):
        raise ValueError(
            "the connection is in autocommit mode: every statement commits on its own "
            "and an error could not roll the block back; turn autocommit off"
        )
    if id(connection) in _active:
        raise RuntimeError(
            "a cachewise transaction block is already open on this connection; "
            "register more keys on that block instead of nesting a second one"
        )
    _active[id(connection)] = after


def _autocommit(connection: object) -> bool:
    """Whether ``connection`` commits each statement by itself, as far as can be told."""
    autocommit = getattr(connection, "autocommit", None)
    if isinstance(autocommit, bool):  # psycopg, psycopg2, sqlite3 (3.12+ mode)
        return autocommit
    # sqlite3 / aiosqlite legacy transaction control: isolation_level None is
    # autocommit. Only read it where autocommit told us nothing (psycopg also has
    # an isolation_level, with None meaning the server default).
    return getattr(connection, "isolation_level", "") is None


def _in_transaction(connection: object) -> bool | None:
    """Whether ``connection`` has a transaction open; ``None`` if it cannot tell."""
    state = getattr(connection, "in_transaction", None)
    if isinstance(state, bool):  # sqlite3, aiosqlite
        return state
    status = getattr(getattr(connection, "info", None), "transaction_status", None)
    if status is not None:  # psycopg 3: a pq.TransactionStatus
        return getattr(status, "name", "") != "IDLE"
    get_status = getattr(connection, "get_transaction_status", None)
    if callable(get_status):  # psycopg2: 0 is TRANSACTION_STATUS_IDLE
        return bool(get_status() != 0)
    return None


class _Hook:
    """``@cache.invalidates(..., after_commit="dbapi")``: the cachewise block open
    on the connection among the call's arguments; with no block, a connection with
    no transaction open once the write returns (it committed, or autocommits)."""

    __slots__ = ("_cache", "_function")

    def __init__(self, cache: Cache | AsyncCache, function: str) -> None:
        self._cache = cache
        self._function = function

    def before(self, arguments: list[Any]) -> AfterCommit | object:
        """The open block on a connection among ``arguments`` (with the
        connection), else the connection."""
        blocks = {
            id(value): (_active[id(value)], value) for value in arguments if id(value) in _active
        }
        if len(blocks) == 1:
            (found,) = blocks.values()
            if isinstance(self._cache, AsyncCache) and not found[0]._async:
                raise TypeError(
                    f"{self._function}(): an AsyncCache cannot be invalidated by a sync "
                    "transaction() block; use async_transaction()"
                )
            return found
        connections = {
            id(value): value
            for value in arguments
            if callable(getattr(value, "commit", None))
            and callable(getattr(value, "rollback", None))
        }
        if len(blocks) > 1 or len(connections) != 1:
            raise TypeError(
                f"{self._function}(): @invalidates(after_commit='dbapi') follows the one "
                "DB-API connection among the call's arguments, and there is "
                f"{'no' if not connections else 'more than one'}"
            )
        connection: object = next(iter(connections.values()))
        if not _autocommit(connection) and _in_transaction(connection) is None:
            raise TypeError(
                f"{self._function}(): cannot tell when {type(connection).__name__} commits; "
                "call it inside cachewise.integrations.dbapi.transaction(connection, cache)"
            )
        return connection

    def after(self, found: AfterCommit | object, keys: list[str], tags: list[str]) -> bool:
        """Registered with the block, else ``True`` (invalidate now) if nothing is
        left uncommitted; ``RuntimeError`` if the write left a transaction open
        that no block will commit."""
        if isinstance(found, tuple):
            block, connection = found
            block._batch.add(self._cache, _keys(self._cache, keys), _tags(self._cache, tags))
            # A write that committed its own work inside the block (nothing left
            # open on the connection): invalidate now too. The block's rollback
            # would otherwise drop an invalidation of what is already committed.
            return _in_transaction(connection) is False
        if _autocommit(found) or not _in_transaction(found):
            return True
        raise RuntimeError(
            f"{self._function}() returned with a transaction open on its connection and "
            "no cachewise transaction() block to invalidate when it commits: nothing was "
            "invalidated. Commit inside the function, or call it inside "
            "cachewise.integrations.dbapi.transaction(connection, cache)"
        )


def _after_commit_hook(cache: Cache | AsyncCache, *, is_async: bool, function: str) -> _Hook:
    """The hook ``invalidates(after_commit="dbapi")`` runs (see
    ``cachewise._frontends._decorator.AfterCommitHook``)."""
    return _Hook(cache, function)


@contextlib.contextmanager
def transaction(
    connection: Connection,
    cache: Cache,
    keys: Iterable[str] = (),
    tags: Iterable[str] = (),
) -> Iterator[AfterCommit]:
    """Run the block as one transaction on ``connection``; after it commits,
    invalidate ``keys``, ``tags`` and whatever the yielded ``AfterCommit`` got.

    On an exception the connection is rolled back, nothing is invalidated, and the
    exception propagates; unless the block left nothing open to roll back (its
    work was committed inside it, by ``connection.commit()``): then the
    invalidation runs, since what it covers may be committed already. A bad name
    in ``keys`` or ``tags`` raises before the block starts. See the module
    documentation for the rules.
    """
    _check_cache(cache, allow_async=False, context="transaction()")
    after = AfterCommit(cache)
    after.invalidate(keys, tags)
    _enter(connection, after)
    interrupted: BaseException | None = None
    try:
        try:
            yield after
        except BaseException:
            committed = _in_transaction(connection) is False  # (see the docstring)
            connection.rollback()
            if committed:
                after._batch.run()
            raise
        try:
            connection.commit()
        except Exception as exc:
            # See async_transaction: the outcome is unknown, invalidate anyway.
            with contextlib.suppress(Exception):
                connection.rollback()
            interrupted = exc
        except BaseException as exc:
            interrupted = exc
    finally:
        after._open = False
        _active.pop(id(connection), None)
    after._batch.run()
    if interrupted is not None:
        raise interrupted


@contextlib.asynccontextmanager
async def async_transaction(
    connection: AsyncConnection,
    cache: AsyncCache | Cache,
    keys: Iterable[str] = (),
    tags: Iterable[str] = (),
) -> AsyncIterator[AfterCommit]:
    """``transaction()`` for an async connection whose ``commit()`` and
    ``rollback()`` are coroutines (psycopg's ``AsyncConnection``, aiosqlite).

    ``cache`` is an ``AsyncCache`` (or a ``Cache``, called directly). The block
    exits only once the invalidation is done; a cancellation arriving during the
    invalidation waits for it to finish, then propagates.
    """
    _check_cache(cache, allow_async=True, context="async_transaction()")
    after = AfterCommit(cache, is_async=True)
    after.invalidate(keys, tags)
    _enter(connection, after)
    interrupted: BaseException | None = None
    try:
        try:
            yield after
        except BaseException:
            committed = _in_transaction(connection) is False  # (see transaction())
            await connection.rollback()
            if committed and after._batch:
                await _run_to_completion(after._batch.arun)
            raise
        try:
            await connection.commit()
        except Exception as exc:
            # A commit that raised may have committed all the same (the server
            # committed, then the connection was lost): the outcome is unknown.
            with contextlib.suppress(Exception):
                await connection.rollback()
            interrupted = exc
        except BaseException as exc:
            # Cancelled (a request timeout) or interrupted while committing: the
            # outcome is unknown, and the commit may well finish anyway (aiosqlite's
            # thread, or the server, completes it). Invalidate as if it committed:
            # an extra invalidation costs one miss, a missing one a stale value for
            # a whole TTL. Then the interruption propagates.
            interrupted = exc
    finally:
        after._open = False
        _active.pop(id(connection), None)
    if after._batch:
        await _run_to_completion(after._batch.arun)
    if interrupted is not None:
        raise interrupted
