"""After-commit invalidation for SQLAlchemy sessions.

``pip install 'cachewise[sqlalchemy]'`` is enough for ``Session``; ``AsyncSession``
needs SQLAlchemy's asyncio layer, which needs greenlet:
``pip install 'cachewise[sqlalchemy-async]'``.

::

    from cachewise.integrations.sqlalchemy import invalidate_after_commit

    with Session(engine) as session, session.begin():
        session.execute(update(User).where(User.id == 7).values(name="Ann"))
        invalidate_after_commit(session, cache, keys=["user:7"], tags=["users"])
    # the commit has happened, then "user:7" and the "users" tag were invalidated

    async with AsyncSession(async_engine) as session:
        await session.execute(...)
        invalidate_after_commit(session, async_cache, keys=["user:7"])
        await session.commit()  # returns once the AsyncCache invalidation is done
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

try:
    from sqlalchemy import event
    from sqlalchemy.exc import InvalidRequestError, MissingGreenlet
    from sqlalchemy.orm import Session, SessionTransaction
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "cachewise.integrations.sqlalchemy needs SQLAlchemy 2: pip install 'cachewise[sqlalchemy]'"
        " (or 'cachewise[sqlalchemy-async]' for AsyncSession)"
    ) from exc

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_session

    # Why SQLAlchemy's asyncio layer cannot be imported, if it cannot.
    _NO_ASYNCIO: ImportError | None
else:
    _NO_ASYNCIO = None
    try:
        from sqlalchemy.ext.asyncio import AsyncSession, async_session
    except ImportError as exc:
        # SQLAlchemy's asyncio layer needs greenlet, which SQLAlchemy 2.1 no longer
        # installs by default. Without it no AsyncSession can exist, so plain
        # Sessions keep working and nothing is an AsyncSession.
        _NO_ASYNCIO = exc

        class AsyncSession:
            pass

        def async_session(session: Any) -> None:
            return None


try:
    from sqlalchemy.util import await_ as _await  # SQLAlchemy 2.1+
except ImportError:  # pragma: no cover - SQLAlchemy 2.0
    from sqlalchemy.util import await_only as _await

from cachewise._frontends.aio import AsyncCache
from cachewise._frontends.sync import Cache
from cachewise.integrations import (
    _Batch,
    _check_cache,
    _failed,
    _keys,
    _run_to_completion,
    _tags,
)

__all__ = ["invalidate_after_commit"]

# session.info key: {SessionTransaction: _Batch} for the root transaction and each
# open savepoint that has registrations.
_PENDING = "cachewise.pending_invalidations"
# session.info key: the root transactions whose commit has begun (_before_commit).
_COMMITTING = "cachewise.committing"
# session.info key: the savepoints whose release has begun (_before_commit).
_RELEASING = "cachewise.releasing"
# session.info key: how many root transactions have committed since _listen().
_COMMITS = "cachewise.commits"


def invalidate_after_commit(
    session: Session | AsyncSession,
    cache: Cache | AsyncCache,
    keys: Iterable[str] = (),
    tags: Iterable[str] = (),
) -> None:
    """Invalidate ``keys`` and ``tags`` in ``cache`` once ``session``'s current
    transaction commits; never if it rolls back.

    - ``session`` is a ``Session`` or an ``AsyncSession``. ``cache`` is a ``Cache``,
      or, when the session is an ``AsyncSession`` (or the ``sync_session`` of one),
      an ``AsyncCache``. A ``Cache`` works with an ``AsyncSession`` too, called
      directly from the event loop.
    - Everything registered in one transaction, by any number of calls, is
      invalidated in one batch per cache (``delete_many`` for the keys,
      ``invalidate_tags`` for the tags), de-duplicated, right after the database
      COMMIT and before ``session.commit()`` (or ``await session.commit()``)
      returns: a read that starts after the commit returned cannot see the old
      value. A second commit does not invalidate again.
    - A rollback, or closing the session without committing, drops the
      registrations. Registrations inside a savepoint (``begin_nested()``) join the
      enclosing transaction when the savepoint is released, and are dropped if it
      is rolled back.
    - With no transaction in progress, this call begins one (``session.begin()``),
      as the session's first statement would; a later ``session.begin()`` on the
      same session then fails as it would after any statement. A session with
      ``autobegin=False`` must be begun first (``InvalidRequestError``).
    - A cache failing during the invalidation does not make the commit raise: it
      is logged at ERROR on the ``cachewise`` logger and counted in
      ``cachewise.integrations.invalidation_errors()``.

    Bad arguments fail here, before anything is registered: ``keys`` or ``tags``
    given as one str, non-str names (``TypeError``), names the cache would refuse
    (empty, whitespace or control characters: ``ValueError``, by the cache's own
    validation), an ``AsyncCache`` with a plain ``Session`` (``TypeError``).
    If the commit itself fails (a lost connection, a deferred constraint), its
    outcome may be unknown (the server may have committed before the connection
    failed), so the registrations are invalidated anyway when the transaction
    ends (its rollback or close): an extra invalidation costs one miss, a missing
    one a stale value for a whole TTL.

    With an ``AsyncCache``, a cancellation that arrives while the invalidation
    runs waits for it to finish, then propagates out of ``await session.commit()``;
    close the session then, as after any interrupted commit. A session joined to
    an outer transaction it does not commit (``Session(bind=connection)`` with
    ``join_transaction_mode``, the usual test recipe) invalidates at its own
    ``commit()``, before the outer transaction commits.
    """
    if isinstance(session, AsyncSession):
        sync_session = session.sync_session
        allow_async = True
    elif isinstance(session, Session):
        sync_session = session
        allow_async = async_session(session) is not None
    else:
        raise TypeError(
            f"invalidate_after_commit() needs a Session or an AsyncSession, "
            f"not {type(session).__name__}"
        )
    _check_cache(
        cache,
        allow_async=allow_async,
        context="invalidate_after_commit() with a plain Session",
        hint=" (an AsyncCache needs an AsyncSession)",
    )
    # Validated by the cache's own rules, now: after the commit a bad name would
    # fail the batch. Nothing is registered (and no transaction begun) if one is bad.
    key_names = _keys(cache, keys)
    tag_names = _tags(cache, tags)
    if not key_names and not tag_names:
        return
    transaction = _current(sync_session)
    _listen(sync_session)
    pending: dict[SessionTransaction, _Batch] = sync_session.info.setdefault(_PENDING, {})
    batch = pending.get(transaction)
    if batch is None:
        batch = pending[transaction] = _Batch()
    batch.add(cache, key_names, tag_names)


def _require_asyncio() -> None:
    """Raise ``ImportError`` naming the extra if ``AsyncSession`` is unavailable."""
    if _NO_ASYNCIO is not None:
        raise ImportError(
            "AsyncSession needs SQLAlchemy's asyncio layer, which needs greenlet: "
            "pip install 'cachewise[sqlalchemy-async]'"
        ) from _NO_ASYNCIO


def _current(session: Session) -> SessionTransaction:
    """The innermost savepoint in progress, else the root transaction (begun now
    if there is none)."""
    transaction = session.get_nested_transaction() or session.get_transaction()
    if transaction is not None:
        return transaction
    if not session.autobegin:
        raise InvalidRequestError(
            "invalidate_after_commit(): no transaction is in progress and autobegin is "
            "disabled on this Session; call session.begin() first"
        )
    return session.begin()


def _enclosing(transaction: SessionTransaction) -> SessionTransaction | None:
    """The savepoint or root transaction a released savepoint merges into."""
    parent = transaction.parent
    while parent is not None and not parent.nested and parent.parent is not None:
        parent = parent.parent  # skip internal subtransactions
    return parent


def _listen(session: Session) -> None:
    # Listeners on this one session object (not the class): other sessions pay nothing.
    if not event.contains(session, "after_commit", _after_commit):
        event.listen(session, "before_commit", _before_commit)
        event.listen(session, "after_commit", _after_commit)
        event.listen(session, "after_transaction_end", _after_transaction_end)


def _before_commit(session: Session) -> None:
    # The root's commit is under way: if it then fails, whether the database
    # committed is unknown (a connection lost after the server's COMMIT), so the
    # root's batch runs anyway when its transaction ends (_after_transaction_end).
    # Releasing a savepoint fires this event too, and must not mark the root: a
    # later rollback of the root is a rollback. The event does not say which
    # transaction commits. With no savepoint open, it is the root. With one open,
    # it is that savepoint (released on its own), or an enclosing transaction
    # whose commit releases the open savepoints first: then the event fires a
    # second time with the same savepoint innermost, and that marks the root (an
    # enclosing savepoint's release, with one inside it still open, is taken for
    # the root's commit too: an extra invalidation at most, never a missed one).
    root = session.get_transaction()
    if root is None:
        return
    savepoint = session.get_nested_transaction()
    if savepoint is not None:
        releasing: set[SessionTransaction] = session.info.setdefault(_RELEASING, set())
        if savepoint not in releasing:
            releasing.add(savepoint)
            return
    session.info.setdefault(_COMMITTING, set()).add(root)


def _after_commit(session: Session) -> None:
    # after_commit fires once the database COMMIT succeeded (after_commit is not
    # fired for a failed one) and before commit() returns: exactly the window that
    # makes "invalidated by the time commit() returns" hold. It also fires when a
    # savepoint is released; then nothing is committed yet.
    savepoint = session.get_nested_transaction()
    if savepoint is None:
        # Counted for _Hook: a write that committed during its call.
        session.info[_COMMITS] = session.info.get(_COMMITS, 0) + 1
    pending: dict[SessionTransaction, _Batch] | None = session.info.get(_PENDING)
    if not pending:
        return
    if savepoint is not None:
        # A released savepoint: its registrations now share the fate of the
        # enclosing transaction.
        released = pending.pop(savepoint, None)
        outer = _enclosing(savepoint)
        if released is not None and outer is not None:
            target = pending.get(outer)
            if target is None:
                target = pending[outer] = _Batch()
            target.absorb(released)
        return
    root = session.get_transaction()
    batch = pending.pop(root, None) if root is not None else None
    if batch:
        _run(batch)


def _run(batch: _Batch) -> None:
    """Invalidate what ``batch`` holds, before the commit call returns."""
    if not batch.needs_await:
        batch.run()
        return
    # An AsyncSession runs this sync Session inside SQLAlchemy's greenlet_spawn():
    # await_() hands the coroutine to the event loop driving that greenlet and
    # resumes here when it is done, so `await session.commit()` returns only after
    # the invalidation, and no task outlives the commit.
    try:
        _await(_run_to_completion(batch.arun))
    except MissingGreenlet as exc:
        # The session's commit was called from plain sync code, not through the
        # AsyncSession: the AsyncCache cannot be awaited here.
        for cache, keys, tags in batch.items():
            _failed("invalidation", cache, keys + tags, exc)


def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    # Every way a transaction or savepoint ends (commit, rollback, close) passes
    # here. A committed root or released savepoint was already popped by
    # _after_commit; anything still pending was rolled back or abandoned.
    releasing: set[SessionTransaction] | None = session.info.get(_RELEASING)
    if releasing:
        releasing.discard(transaction)
    pending: dict[SessionTransaction, _Batch] | None = session.info.get(_PENDING)
    batch = pending.pop(transaction, None) if pending else None
    committing: set[SessionTransaction] | None = session.info.get(_COMMITTING)
    if committing and transaction in committing:
        committing.discard(transaction)
        if batch:
            _run(batch)  # its commit failed midway: the outcome is unknown


class _Hook:
    """``@cache.invalidates(..., after_commit="sqlalchemy")``: the call's session
    argument, followed through ``invalidate_after_commit``."""

    __slots__ = ("_cache", "_function")

    def __init__(self, cache: Cache | AsyncCache, function: str) -> None:
        self._cache = cache
        self._function = function

    def before(self, arguments: list[Any]) -> tuple[Session | AsyncSession, int]:
        """The session among ``arguments``, and its commit count so far."""
        sessions = {
            id(value): value for value in arguments if isinstance(value, (Session, AsyncSession))
        }
        if len(sessions) != 1:
            found = "no" if not sessions else "more than one"
            raise TypeError(
                f"{self._function}(): @invalidates(after_commit='sqlalchemy') follows the "
                f"Session or AsyncSession among the call's arguments, and there is {found}"
            )
        (session,) = sessions.values()
        sync_session = session.sync_session if isinstance(session, AsyncSession) else session
        # The check invalidate_after_commit makes, made before the write.
        _check_cache(
            self._cache,
            allow_async=async_session(sync_session) is not None,
            context=f"{self._function}(): after_commit='sqlalchemy' with a plain Session",
            hint=" (an AsyncCache needs an AsyncSession)",
        )
        _listen(sync_session)  # from now on, its commits are counted
        return session, sync_session.info.get(_COMMITS, 0)

    def after(
        self, found: tuple[Session | AsyncSession, int], keys: list[str], tags: list[str]
    ) -> bool:
        """Register with the open transaction; ``True`` if the write (also)
        committed during the call, or no transaction is open."""
        session, commits = found
        sync_session = session.sync_session if isinstance(session, AsyncSession) else session
        now = int(sync_session.info.get(_COMMITS, 0)) != commits
        if sync_session.in_transaction():
            invalidate_after_commit(session, self._cache, keys, tags)
            return now
        return True


def _after_commit_hook(cache: Cache | AsyncCache, *, is_async: bool, function: str) -> _Hook:
    """The hook ``invalidates(after_commit="sqlalchemy")`` runs (see
    ``cachewise._frontends._decorator.AfterCommitHook``)."""
    if is_async:
        _require_asyncio()  # an async write's session is an AsyncSession
    return _Hook(cache, function)
