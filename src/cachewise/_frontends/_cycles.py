"""Loader cycles: ``a`` loads ``b`` loads ``a``, or an async loader awaiting its own
key. Each waiter would wait for a load that waits for it: a silent deadlock, with
the key poisoned for every later caller. A process-wide wait-for graph finds the
cycle at the call that would close it, which raises ``LoaderCycleError`` instead
of waiting; the error then ends every load in the cycle.

The graph: each flight knows its leader (the thread, or the asyncio task, running
its load); each actor that waits for a flight is recorded while it waits. Before
waiting, follow leader -> what that leader waits for -> its leader ... and if the
chain comes back to the caller, waiting would never end. Waits this module does not
see (a loader that hands work to a thread pool and blocks on it) cannot be
followed; those cycles still deadlock. Cost: a short global lock on the coalescing
path only (never on a hit, never for a leader).
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading
from typing import Any

from cachewise._core.flights import Flight
from cachewise._errors import LoaderCycleError

# Process-wide on purpose (issue 11 asked that every module-global be justified):
# this module keeps the waits-for graph of this process's threads and tasks, and
# a loader cycle can run through any caches, of any group, on any backend. One
# graph per process is the fact being modelled, not hidden sharing between caches.
_lock = threading.Lock()

# The loads this code runs inside of (innermost last): set around each loader call
# and inherited by every task the loader creates (asyncio copies the context), so
# a call from such a task for one of these keys is a cycle however the loader
# awaits the task (TaskGroup, asyncio.wait, a future: waits this module cannot
# follow). A task a loader starts and never awaits would wait harmlessly: it is
# refused too, the price of finding the cycles no graph here can see.
_loading: contextvars.ContextVar[tuple[Flight[Any], ...]] = contextvars.ContextVar(
    "cachewise_loading", default=()
)


def loading(flight: Flight[Any]) -> contextvars.Token[tuple[Flight[Any], ...]]:
    """Mark the code that runs from now on (a loader, and the tasks it creates) as
    running inside ``flight``'s load; give the token back to ``done_loading``."""
    return _loading.set((*_loading.get(), flight))


def done_loading(token: contextvars.Token[tuple[Flight[Any], ...]]) -> None:
    try:
        _loading.reset(token)
    except ValueError:
        # A load coroutine closed by the garbage collector (its loop was closed
        # with it pending) ends in another context: there is nothing to restore.
        pass


def outside_loads() -> None:
    """A background refresh is no part of the load that happened to start it: its
    task forgets the loads it was created inside of."""
    _loading.set(())


# actor (thread id or asyncio task) -> the flight it waits for right now.
_waiting: dict[object, Flight[Any]] = {}
# An event loop whose own thread is blocked in a wait (a sync Cache call made on
# it) -> that thread's actor: every task of the loop waits for it, in effect.
_loop_blocked_by: dict[asyncio.AbstractEventLoop, object] = {}


def enter_wait(actor: object, flight: Flight[Any]) -> None:
    """Record that ``actor`` is about to wait for ``flight``; raise
    ``LoaderCycleError`` if that wait could never end."""
    leader = flight.leader
    # A blocking call (a sync Cache) on an event loop's own thread: while it
    # blocks, no task of that loop runs, so it waits for none of them.
    running: asyncio.AbstractEventLoop | None = None
    if not isinstance(actor, asyncio.Task):
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
    if isinstance(leader, asyncio.Task) and running is not None and leader.get_loop() is running:
        raise LoaderCycleError(
            f"a blocking call on the event loop's thread would wait for {flight.key!r}, "
            "whose load runs on that loop: call the AsyncCache from async code, or "
            "the Cache from a worker thread (asyncio.to_thread)"
        )
    if flight in _loading.get():
        raise LoaderCycleError(
            f"loader cycle: this call runs inside the load of {flight.key!r} (in a task its "
            "loader started) and would wait for that very load; a loader may not need, "
            "directly or through other loaders or tasks, the key it is loading"
        )
    with _lock:
        if not flight.ended and _reaches(flight.leader, actor, running):
            raise LoaderCycleError(
                f"loader cycle: this call would wait for {flight.key!r}, whose load waits "
                "(directly or through other loads or tasks) for this call; a loader may "
                "not need, directly or through other loaders, the key it is loading"
            )
        _waiting[actor] = flight
        if running is not None:
            _loop_blocked_by[running] = actor


def _reaches(
    start: object, target: object, blocked_loop: asyncio.AbstractEventLoop | None = None
) -> bool:
    """Whether ``start`` waits, through any chain of waits this module can see,
    for ``target``; or for any task of ``blocked_loop``, the loop ``target``'s
    thread runs and would block (a thread's load waiting for a load on that
    loop). Caller holds _lock."""
    seen: set[int] = set()
    pending = [start]
    while pending:
        actor = pending.pop()
        if actor is None or id(actor) in seen:
            continue
        if actor is target or actor == target:
            return True
        if (
            blocked_loop is not None
            and isinstance(actor, asyncio.Task)
            and actor.get_loop() is blocked_loop
        ):
            return True
        seen.add(id(actor))
        pending.extend(_blocked_on(actor))
    return False


def _blocked_on(actor: object) -> list[object]:
    """What ``actor`` waits for right now: the leader of the flight it waits for
    (recorded here), and, for an asyncio task, the tasks its pending ``await`` is
    on: ``await task``, or ``asyncio.gather(...)``'s children (read from the
    task's ``_fut_waiter``, as asyncio's own debugging aids do). A loader that
    gathers a call for its own key is a cycle too."""
    found: list[object] = []
    flight = _waiting.get(actor)
    if flight is not None and not flight.ended:
        # (An ended flight's waiters are about to wake: its leader, now free to
        # do anything, even wait for us, is no part of a cycle through it.)
        found.append(flight.leader)
    if isinstance(actor, asyncio.Task):
        blocker = _loop_blocked_by.get(actor.get_loop())
        if blocker is not None:
            found.append(blocker)  # its loop's thread is blocked: it cannot run
    awaited = getattr(actor, "_fut_waiter", None)
    if awaited is not None:
        if isinstance(awaited, asyncio.Task):
            found.append(awaited)
        children = getattr(awaited, "_children", None)
        if isinstance(children, list):
            found.extend(child for child in children if isinstance(child, asyncio.Task))
    return found


def leave_wait(actor: object) -> None:
    """The wait of ``actor`` is over."""
    with _lock:
        _waiting.pop(actor, None)
        if not isinstance(actor, asyncio.Task):
            for loop, blocker in list(_loop_blocked_by.items()):
                if blocker == actor:
                    del _loop_blocked_by[loop]


# Leases held by flights of this process, by store: (the store's lease scope, key)
# -> the flight holding the key's lease there. A caller that would wait on such a
# lease waits, in effect, for that flight: two caches on one store (a MemoryBackend,
# or one Redis) close a cycle through it (a's loader asks the other cache for a's
# own key). A scope names the store the same way for every cache on it.
_lease_holders: dict[tuple[object, str], tuple[Flight[Any], str]] = {}


def lease_taken(scope: object, key: str, flight: Flight[Any], token: str) -> None:
    """``flight`` holds the lease on ``key`` in the store ``scope`` names, as
    ``token``."""
    with _lock:
        _lease_holders[(scope, key)] = (flight, token)


def lease_ended(scope: object, key: str, flight: Flight[Any]) -> None:
    """``flight`` no longer holds the lease (it wrote, released or finished)."""
    with _lock:
        held = _lease_holders.get((scope, key))
        if held is not None and held[0] is flight:
            del _lease_holders[(scope, key)]


def lease_holder(scope: object, key: str) -> Flight[Any] | None:
    """The flight of this process holding the lease on ``key`` in ``scope``."""
    held = _lease_holders.get((scope, key))
    return held[0] if held is not None else None


def dead_lease(scope: object, key: str) -> str | None:
    """The token of the lease on ``key`` if a load of this process holds it that
    cannot finish now: its task's event loop was closed under it (a loop closed
    with tasks pending), or has stopped (``run_until_complete`` returned with the
    load still pending). Nothing would write or release it until that loop runs
    again, maybe never; whoever would wait for it releases it instead (the record
    is dropped here), then reads again. Safe if the loop does run again: that
    load's write needs the lease it no longer holds, so it is not stored."""
    with _lock:
        held = _lease_holders.get((scope, key))
        if held is None:
            return None
        flight, token = held
        leader = flight.leader
        if isinstance(leader, asyncio.Task) and not leader.get_loop().is_running():
            del _lease_holders[(scope, key)]
            return token
        return None


def lease_scope(backend: object) -> object:
    """How ``backend``'s leases are named (its ``lease_scope``, else itself)."""
    scope = getattr(backend, "lease_scope", None)
    return backend if scope is None else scope


def _reset_after_fork() -> None:
    # The child has one thread: nobody in it waits, and the lock may have been
    # held by a thread that does not exist there.
    global _lock
    _lock = threading.Lock()
    _waiting.clear()
    _loop_blocked_by.clear()
    _lease_holders.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)
