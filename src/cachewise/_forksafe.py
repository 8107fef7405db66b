"""Surviving ``fork()``: gunicorn ``--preload``, Celery prefork, multiprocessing.

A forked child has one thread, the one that called ``fork()``. Everything else of
the parent's threads is gone from it, but their state is copied: locks they held
stay held forever, thread pools look alive but run nothing, loads in flight never
finish, and leases they held in a ``MemoryBackend`` are never released. Breaks 21
and 22 of issue 9: children hung in ``_join_or_lead`` (``with self._lock``), and a
child that inherited a refresh pool never ran a refresh nor settled a held delete.

So every object of cachewise with such state registers here, and
``os.register_at_fork`` calls:

- before the fork, ``_fork_locks()`` of each: the locks guarding multi-step state
  (a flight table, a store's budgets) are taken, so no other thread is halfway
  through changing it when the child is copied (each with a timeout: a lock that
  cannot be had in time is simply replaced in the child);
- after it, in the parent, those locks are released;
- in the child, the same locks are released, then ``_after_fork_child()`` of
  each runs: fresh locks, no pools, no threads, no flights, no leases or waiters
  of the parent's threads. Threads and pools start again lazily on first use.

The locks may include redis-py's: a sync connection pool resets itself in a child
under its ``_fork_lock``, and a child forked while another thread held that lock
(resetting its own inherited pool) would wait five seconds on it and then fail
every call with ``ChildDeadlockedError``.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any, Protocol

#: How long the fork waits for one lock before giving up on it (the child then
#: gets a fresh lock and whatever state the holder had left).
_LOCK_WAIT = 1.0


class ForkAware(Protocol):
    def _fork_locks(self) -> list[Any]: ...
    def _after_fork_child(self) -> None: ...


_objects: weakref.WeakSet[ForkAware] = weakref.WeakSet()
# The locks each forking thread took before its fork, by thread: two threads may
# fork at once (their hooks interleave whenever one waits for a lock), and each
# must release exactly what it took.
_held: dict[int, list[Any]] = {}


def register(obj: ForkAware) -> None:
    """Reset ``obj`` in forked children (and hold its locks across the fork)."""
    _objects.add(obj)


def _before() -> None:
    taken: list[Any] = []
    _held[threading.get_ident()] = taken
    for obj in list(_objects):
        for lock in obj._fork_locks():
            if lock.acquire(timeout=_LOCK_WAIT):
                taken.append(lock)


def _after_in_parent() -> None:
    taken = _held.pop(threading.get_ident(), [])
    while taken:
        taken.pop().release()


def _after_in_child() -> None:
    # The locks this thread took before the fork are held by it in the child too:
    # give them back (ours are then replaced anyway; redis-py's pools keep theirs).
    # Whatever other threads had taken for forks of their own is theirs, in the
    # parent: the child only forgets it.
    taken = _held.pop(threading.get_ident(), [])
    _held.clear()
    while taken:
        taken.pop().release()
    for obj in list(_objects):
        obj._after_fork_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before, after_in_parent=_after_in_parent, after_in_child=_after_in_child
    )
