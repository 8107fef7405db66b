"""What happened, and whether anything hung: the recorder and the watchdog.

Every operation is recorded with its start and end on ``time.monotonic()``. On Linux
that is ``CLOCK_MONOTONIC``, one clock for the whole machine, so the threads, tasks
and child processes of a run record on one timeline and their histories merge.

Records are named tuples: picklable, so a child process sends its own back as they
are. Appending to a list is atomic under the GIL, so neither the recorder nor the
watchdog's table of calls takes a lock: a process forked while other threads record
inherits consistent lists, and no lock that a thread which no longer exists holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import NamedTuple

__all__ = [
    "Other",
    "Pending",
    "Read",
    "Recorder",
    "Watchdog",
    "Write",
    "actor_name",
    "dump_stacks",
    "now",
]

#: The run's one clock (system-wide on Linux: child processes share it).
now = time.monotonic


class Read(NamedTuple):
    """A read that returned a value: ``version`` is what it returned."""

    key: str
    version: int
    start: float
    end: float
    via: str  # get_or_load, get, cached, get_many
    actor: str
    proc: int


class Write(NamedTuple):
    """A write: ``version`` committed to the store (at ``committed``), then the
    cache invalidated between ``start`` and ``end``. ``held``: the cache still had
    invalidations pending right after it (see the checker for what that exempts)."""

    key: str
    version: int
    committed: float
    start: float
    end: float
    via: str  # delete, delete_many, invalidate, tags, set, clear, version, dbapi, ...
    actor: str
    proc: int
    held: bool = False


class Pending(NamedTuple):
    """A sample of one process's ``stats().invalidations_pending`` (summed over its
    caches): when its held invalidations settled."""

    proc: int
    at: float
    held: int  # invalidations pending (-1: too many to list)


class Other(NamedTuple):
    """Any other call (a ``get`` miss, a cancelled read, a plain ``clear``): counted,
    and kept for the timeline around a violation."""

    what: str
    start: float
    end: float
    actor: str
    proc: int


#: A recorder's lists, as a child process sends them back.
State = tuple[list[Read], list[Write], list[Other], list[Pending], list[str], list[str]]


def actor_name() -> str:
    """The current asyncio task's name, else the current thread's."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no running loop in this thread
        task = None
    return task.get_name() if task is not None else threading.current_thread().name


class Recorder:
    """The history of one process (or one forked world): plain lists, appended to by
    any thread or task, read once the run is over."""

    def __init__(self) -> None:
        self.reads: list[Read] = []
        self.writes: list[Write] = []
        self.others: list[Other] = []
        self.pending: list[Pending] = []
        self.errors: list[str] = []  # exceptions a cache call raised: never allowed
        self.hangs: list[str] = []  # liveness failures, each with a dump

    def read(self, key: str, version: object, start: float, via: str) -> None:
        """A read that started at ``start``, ends now, and returned ``version`` (a
        value that is no version is an error: nothing else is ever cached)."""
        if not isinstance(version, int):
            self.errors.append(f"{via}({key!r}) returned {version!r}, not a version")
            return
        self.reads.append(Read(key, version, start, now(), via, actor_name(), os.getpid()))

    def write(
        self,
        key: str,
        version: int,
        committed: float,
        start: float,
        via: str,
        *,
        held: bool = False,
    ) -> None:
        """A write: ``version`` committed at ``committed``, its invalidation started
        at ``start`` and ends now."""
        self.writes.append(
            Write(key, version, committed, start, now(), via, actor_name(), os.getpid(), held)
        )

    def other(self, what: str, start: float) -> None:
        """Any other call, from ``start`` to now."""
        self.others.append(Other(what, start, now(), actor_name(), os.getpid()))

    def error(self, what: str, exc: BaseException) -> None:
        """A call that raised: a cache degrades, it never raises at its caller."""
        self.errors.append(
            f"{what} by {actor_name()} (pid {os.getpid()}) raised "
            + "".join(traceback.format_exception_only(exc)).strip()
        )

    @property
    def operations(self) -> int:
        return len(self.reads) + len(self.writes) + len(self.others)

    def extend(self, other: Recorder) -> None:
        """Add another process's history to this one (same world)."""
        self.reads += other.reads
        self.writes += other.writes
        self.others += other.others
        self.pending += other.pending
        self.errors += other.errors
        self.hangs += other.hangs

    def state(self) -> State:
        """A picklable snapshot (for a child process to send back)."""
        return (
            list(self.reads),
            list(self.writes),
            list(self.others),
            list(self.pending),
            list(self.errors),
            list(self.hangs),
        )

    @classmethod
    def from_state(cls, state: State) -> Recorder:
        recorder = cls()
        (
            recorder.reads,
            recorder.writes,
            recorder.others,
            recorder.pending,
            recorder.errors,
            recorder.hangs,
        ) = state
        return recorder


def dump_stacks(loops: list[asyncio.AbstractEventLoop]) -> str:
    """Every thread's stack, then every unfinished task of ``loops`` with its stack.

    Called from the watchdog thread while the others run (or hang): both
    ``sys._current_frames()`` and ``asyncio.all_tasks(loop)`` are safe to read from
    another thread, and a task's stack is only formatted, never resumed.
    """
    out = io.StringIO()
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        out.write(f"--- thread {names.get(ident, '?')} ({ident})\n")
        frames = [f for f in traceback.extract_stack(frame) if not _plumbing(f)]
        out.write("".join(traceback.format_list(frames)))
    for loop in loops:
        try:
            tasks = asyncio.all_tasks(loop)
        except RuntimeError as exc:  # the loop's task set changed too often
            out.write(f"--- tasks of {loop!r}: {exc}\n")
            continue
        for task in sorted(tasks, key=lambda t: t.get_name()):
            out.write(f"--- task {task.get_name()}\n{_await_chain(task)}")
    return out.getvalue()


def _await_chain(task: asyncio.Task[object]) -> str:
    """Where a task is suspended: its coroutine, then each coroutine it awaits, down
    to the future it waits for. (``Task.print_stack`` shows only the outermost frame
    of a suspended task.)"""
    lines: list[str] = []
    awaitable: object = task.get_coro()
    while awaitable is not None:
        frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "gi_frame", None)
        if frame is None:
            if not hasattr(awaitable, "cr_code") and not hasattr(awaitable, "gi_code"):
                lines.append(f"  awaiting {awaitable!r}")
            break
        code = frame.f_code
        lines.append(f'  File "{code.co_filename}", line {frame.f_lineno}, in {code.co_name}')
        awaitable = getattr(awaitable, "cr_await", None) or getattr(awaitable, "gi_yieldfrom", None)
    return "".join(line + "\n" for line in lines)


def _plumbing(frame: traceback.FrameSummary) -> bool:
    """A frame of threading's own start-up, the same in every thread's stack."""
    return frame.filename == threading.__file__ and frame.name in _THREAD_STARTUP


_THREAD_STARTUP = frozenset({"_bootstrap", "_bootstrap_inner", "run"})


class Watchdog:
    """A deadline for every call: a daemon thread checks the calls in progress every
    ``poll`` seconds, and the first to overrun ``deadline`` trips it.

    Tripping records one hang (the late calls, then every thread's and task's
    stack) into ``recorder.hangs`` and sets ``tripped``, which tells the run to
    stop. If the run has not finished ``grace`` seconds later (its own main thread
    hangs too), ``on_stuck`` is called from the watchdog thread: in a worker
    process it reports what it has and ends the process, so a hang never hangs
    the caller.
    """

    def __init__(
        self,
        recorder: Recorder,
        deadline: float,
        *,
        poll: float = 0.05,
        grace: float = 3.0,
        on_stuck: Callable[[], None] | None = None,
    ) -> None:
        self.recorder = recorder
        self.deadline = deadline
        self.poll = poll
        self.grace = grace
        self.on_stuck = on_stuck
        self.tripped = threading.Event()
        self.finished = threading.Event()  # set by the run when it is over
        self._calls: dict[int, tuple[str, str, float]] = {}
        self._ids = itertools.count()
        self._loops: list[asyncio.AbstractEventLoop] = []
        self._thread: threading.Thread | None = None

    def start(self) -> Watchdog:
        self._thread = threading.Thread(target=self._run, name="history-watchdog", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.finished.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def watch_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Include ``loop``'s tasks in dumps."""
        self._loops.append(loop)

    @contextlib.contextmanager
    def call(self, what: str, deadline: float | None = None) -> Iterator[None]:
        """Time the block as one call named ``what`` (sync or inside a task)."""
        ident = next(self._ids)
        limit = self.deadline if deadline is None else deadline
        self._calls[ident] = (f"{what} by {actor_name()}", f"{limit:g}", now() + limit)
        try:
            yield
        finally:
            del self._calls[ident]

    def trip(self, why: str) -> None:
        """Record a hang now (also for waits the harness times itself); the first
        one comes with every thread's and task's stack."""
        why = f"pid {os.getpid()}: {why}"
        if self.tripped.is_set():
            self.recorder.hangs.append(why)
            return
        dump = dump_stacks(list(self._loops))
        self.recorder.hangs.append(f"{why}\n{dump}")
        self.tripped.set()  # after the append: whoever stops on it finds the dump

    def _run(self) -> None:
        while not self.finished.wait(self.poll):
            moment = now()
            late = [
                f"{what} overran its {limit} s deadline by {moment - due:.2f} s"
                for what, limit, due in list(self._calls.values())
                if moment > due
            ]
            if late:
                self.trip("; ".join(late))
            if self.tripped.is_set():
                break
        if self.finished.wait(self.grace):
            return
        if self.on_stuck is not None:
            self.on_stuck()
