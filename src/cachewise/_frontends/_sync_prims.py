"""What ``Cache`` does differently in kind from ``AsyncCache``: the threaded side
of ``_async_prims`` (same names, same shapes; see there)."""

from __future__ import annotations

import contextvars
import inspect
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any

from cachewise.backends._protocol import Backend, LeaseBackend, TagBackend, is_async_backend

__all__ = ["ASYNC", "Adopted", "Background", "Event", "Guard", "call_loader", "current_actor"]


#: What the constructor accepts, and what the cache then holds.
BackendArg = Backend
AnyBackend = Backend


#: What a flight's callers wait on, and the guard of a write without a lease.
Event = threading.Event
Guard = threading.Lock


def current_actor() -> object:
    """Who waits or loads here (for the loader-cycle check): the current thread."""
    return threading.get_ident()


def call_loader(loader: Callable[[], Any]) -> Any:
    """The result of ``loader()``, which runs in the caller's thread."""
    value = loader()
    if inspect.isawaitable(value):
        if inspect.iscoroutine(value):
            value.close()  # never awaited by anyone: close it quietly
        raise TypeError(
            f"the loader returned {type(value).__name__}, an awaitable; Cache "
            "needs a sync loader (use AsyncCache for async loaders)"
        )
    return value


class Background:
    """The bounded pool that runs refreshes and late lease releases, drained on
    close (loads run in their callers' threads)."""

    def __init__(self, workers: int = 4) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int):
            raise TypeError("refresh_workers must be an int")
        if workers < 1:
            raise ValueError(f"refresh_workers must be >= 1, got {workers}")
        self._workers = workers
        self._executor: ThreadPoolExecutor | None = None
        self._futures: set[Future[Any]] = set()
        self._lock = threading.Lock()

    def fresh(self) -> Background:
        return Background(self._workers)

    @property
    def pending(self) -> int:
        return len(self._futures)

    def start(
        self,
        work: Callable[..., Any],
        *args: Any,
        name: str,
        on_cancel: Callable[[], None] | None = None,
    ) -> None:
        """Run ``work(*args)`` on the pool, in the caller's context (a refresh reads
        with the caller's ``type=``; a pool thread has no context of its own). The
        cache calls it under its lock, which ``close()`` takes before draining: a
        start never races with the shutdown. (``name`` and ``on_cancel`` are for
        tasks: a thread is never cancelled.)"""
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    self._workers, thread_name_prefix="cachewise-refresh"
                )
            future = self._executor.submit(contextvars.copy_context().run, work, *args)
            self._futures.add(future)
        future.add_done_callback(self._forget)

    def _forget(self, future: Future[Any]) -> None:
        with self._lock:
            self._futures.discard(future)

    def wait(self, timeout: float | None) -> bool:
        """Wait for the work started so far; whether all of it finished."""
        with self._lock:
            pending = list(self._futures)
        _, not_done = wait_futures(pending, timeout=timeout)
        return not not_done

    def drain(self) -> None:
        with self._lock:
            executor = self._executor
        if executor is not None:
            executor.shutdown(wait=True)


class Adopted:
    """A backend as a front end uses it: ``store``, its optional capabilities,
    and ``local`` (every sync backend is called directly)."""

    def __init__(self, backend: object) -> None:
        if is_async_backend(backend) or not isinstance(backend, Backend):
            raise TypeError(
                f"Cache needs a sync Backend, got {type(backend).__name__}"
                + ("; use AsyncCache for an async backend" if is_async_backend(backend) else "")
            )
        self.local: Backend | None = backend
        self.store: Backend = backend
        self.tagger = backend if isinstance(backend, TagBackend) else None
        self.leases = backend if isinstance(backend, LeaseBackend) else None


#: This flavour's loaders and decorated functions are plain callables.
ASYNC = False


def wrong_flavour(func: object, decorator: str) -> str:
    """Why ``func`` cannot be decorated by this flavour's ``decorator``."""
    return (
        f"{getattr(func, '__qualname__', func)!s} is a coroutine function; "
        f"use an AsyncCache's {decorator}(), not a Cache's"
    )
