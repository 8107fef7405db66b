"""What ``AsyncCache`` does differently in kind from ``Cache``: the asyncio side.

``aio.py`` is written against these names; the generated ``sync.py`` imports the
same names from ``_sync_prims``. Each is small: waiting for a flight, guarding a
write, calling a loader, tracking background work, and seeing a backend through
the async interface.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from cachewise._core.entry import Entry
from cachewise._core.readflow import LeaseReply
from cachewise._errors import LoadCancelledError
from cachewise.backends._protocol import (
    AsyncBackend,
    AsyncLeaseBackend,
    AsyncTagBackend,
    Backend,
    InProcessLeaseBackend,
    NonBlockingBackend,
    TagBackend,
    is_async_backend,
)

__all__ = ["ASYNC", "Adopted", "Background", "Event", "Guard", "call_loader", "current_actor"]


#: What the constructor accepts, and what the cache then holds.
BackendArg = AsyncBackend | NonBlockingBackend
AnyBackend = AsyncBackend | Backend


#: What a flight's callers wait on, and the guard of a write without a lease.
Event = asyncio.Event
Guard = asyncio.Lock


def current_actor() -> object:
    """Who waits or loads here (for the loader-cycle check): the current task."""
    return asyncio.current_task()


def cancelling() -> bool:
    """Whether the current task has been asked to cancel (3.11+; assume yes before)."""
    task = asyncio.current_task()
    probe = getattr(task, "cancelling", None)
    return True if probe is None else bool(probe())


async def call_loader(loader: Callable[[], Awaitable[Any]]) -> Any:
    """The awaited result of ``loader()``."""
    try:
        awaitable = loader()
        if not inspect.isawaitable(awaitable):
            raise TypeError(
                f"the loader returned {type(awaitable).__name__}, not an awaitable; "
                "AsyncCache needs an async loader (use Cache for sync loaders)"
            )
        return await awaitable
    except asyncio.CancelledError as exc:
        if cancelling():
            raise  # this load task itself is being cancelled
        # The loader raised CancelledError of its own (it awaited something that
        # was cancelled): a failed load, not a reason to retry it forever (break 5).
        raise LoadCancelledError(
            "the loader raised CancelledError although its load was not "
            "cancelled (it awaited something that was cancelled)"
        ) from exc


class Background:
    """The cache's tasks: loads, refreshes and lease releases, drained on close.
    Refreshes and releases are bounded (``pending``); loads are not."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[Any]] = set()
        self.pending = 0

    def fresh(self) -> Background:
        return Background()

    def start(
        self,
        work: Callable[..., Coroutine[Any, Any, Any]],
        *args: Any,
        name: str,
        on_cancel: Callable[[], None] | None = None,
    ) -> None:
        """Run ``work(*args)`` in a tracked task (in a copy of the caller's
        context, as every task is), counted as pending until it ends."""
        self.pending += 1
        task = self.spawn(work(*args), name, on_cancel)
        task.add_done_callback(self._unbind)

    def spawn(
        self,
        work: Coroutine[Any, Any, Any],
        name: str,
        on_cancel: Callable[[], None] | None = None,
    ) -> asyncio.Task[Any]:
        """Run ``work`` in a tracked task; ``on_cancel()`` if the task is cancelled
        (maybe before its first step, when its own cleanup never runs)."""
        task = asyncio.get_running_loop().create_task(work, name=name)
        self.tasks.add(task)
        task.add_done_callback(self._done)
        if on_cancel is not None:
            task.add_done_callback(lambda done: on_cancel() if done.cancelled() else None)
        return task

    def _unbind(self, task: asyncio.Task[Any]) -> None:
        self.pending -= 1

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        # Retrieved: waiters see outcomes through the flight, and a task nobody
        # awaits must not log "exception was never retrieved".
        if not task.cancelled():
            task.exception()

    async def wait(self, timeout: float | None) -> bool:
        """Wait for the tasks (including any they start); whether all finished."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while self.tasks:
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return False
            # asyncio.wait never raises the tasks' exceptions; _done retrieves them.
            await asyncio.wait(list(self.tasks), timeout=remaining)
        return True

    async def drain(self) -> None:
        await self.wait(None)


class Store:
    """A non-blocking sync backend (``MemoryBackend``) seen through the async
    interface: no call suspends (no await inside), so what a caller does between
    two calls stays atomic, as with the sync backend itself."""

    __slots__ = ("_backend", "_extras")

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._extras: Any = backend  # (its optional capabilities: tags, leases)

    @property
    def wait_timeout(self) -> float:
        return float(self._extras.wait_timeout)

    async def get(self, key: str) -> Entry | None:
        return self._backend.get(key)

    async def get_many(self, keys: Sequence[str]) -> list[Entry | None]:
        return self._backend.get_many(keys)

    async def set(self, key: str, entry: Entry) -> None:
        self._backend.set(key, entry)

    async def set_many(self, items: Sequence[tuple[str, Entry]]) -> None:
        self._backend.set_many(items)

    async def delete(self, key: str) -> bool:
        return self._backend.delete(key)

    async def delete_many(self, keys: Sequence[str]) -> int:
        return self._backend.delete_many(keys)

    async def clear(self, prefix: str = "") -> int:
        return self._backend.clear(prefix)

    async def aclose(self) -> None:
        self._backend.close()

    async def get_tagged(self, key: str, tags: Sequence[str]) -> Entry | None:
        return self._extras.get_tagged(key, tags)  # type: ignore[no-any-return]

    async def tag_stamp(self, tags: Sequence[str]) -> Any:
        return self._extras.tag_stamp(tags)

    async def invalidate_tags(self, tags: Sequence[str]) -> None:
        self._extras.invalidate_tags(tags)

    async def read_or_lease(self, key: str, token: str, mode: str = "lease") -> LeaseReply:
        return self._extras.read_or_lease(key, token, mode)  # type: ignore[no-any-return]

    async def set_leased(self, key: str, entry: Entry, token: str) -> bool:
        return bool(self._extras.set_leased(key, entry, token))

    async def release(self, key: str, token: str) -> bool:
        return bool(self._extras.release(key, token))

    async def wait(self, key: str, timeout: float) -> bool:
        return bool(await self._extras.wait_async(key, timeout))


class Adopted:
    """A backend as a front end uses it: ``store`` (called with ``await``), its
    optional capabilities, and ``local``: the backend if calls to it never block
    (then called directly on the hit path)."""

    def __init__(self, backend: object) -> None:
        self.local: Backend | None = None
        self.store: AsyncBackend
        self.tagger: AsyncTagBackend | None = None
        self.leases: AsyncLeaseBackend | None = None
        if is_async_backend(backend) and isinstance(backend, AsyncBackend):
            self.store = backend
            self.tagger = backend if isinstance(backend, AsyncTagBackend) else None
            self.leases = backend if isinstance(backend, AsyncLeaseBackend) else None
        elif isinstance(backend, Backend) and getattr(backend, "nonblocking", False):
            self.local = backend
            self.store = store = Store(backend)
            self.tagger = store if isinstance(backend, TagBackend) else None
            self.leases = store if isinstance(backend, InProcessLeaseBackend) else None
        else:
            raise TypeError(
                f"AsyncCache needs an AsyncBackend or a non-blocking backend such as "
                f"MemoryBackend, got {type(backend).__name__}"
            )


#: This flavour's loaders and decorated functions are coroutine functions.
ASYNC = True


def wrong_flavour(func: object, decorator: str) -> str:
    """Why ``func`` cannot be decorated by this flavour's ``decorator``."""
    return (
        f"{getattr(func, '__qualname__', func)!s} is not a coroutine function; "
        f"use a Cache's {decorator}(), not an AsyncCache's"
    )
