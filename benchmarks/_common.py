"""Shared helpers for the benchmark modules: timing loops, calibration, formatting.

Every contender is timed by the same generated loop, ``for _ in range(n): fn(*args)``
with the arguments bound to locals (``await fn(...)`` inside one coroutine for async
contenders), with the garbage collector off and ``time.perf_counter_ns`` around the
whole loop. Nothing is subtracted from the figures; a no-op function timed the same
way is reported next to them as the loop's own cost.

Contenders are measured round-robin (round 1 of every contender, then round 2...)
so that slow drift on a shared machine hits all of them alike, and the minimum over
rounds is the figure: noise only ever adds time.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

SyncLoop = Callable[[Callable[..., Any], tuple[Any, ...], int], int]
AsyncLoop = Callable[[Callable[..., Awaitable[Any]], tuple[Any, ...], int], Awaitable[int]]

_LOOP_SOURCE = """\
{prefix}def loop(fn, args, n):
    {unpack}
    r = range(n)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = perf_counter_ns()
        for _ in r:
            {await_}fn({call})
        end = perf_counter_ns()
    finally:
        if was_enabled:
            gc.enable()
    return end - start
"""

_loops: dict[tuple[int, bool], Any] = {}


def _build_loop(nargs: int, is_async: bool) -> Any:
    """Compile the timing loop for ``nargs`` positional arguments (cached).

    The arguments are unpacked into locals once, before the clock starts, so each
    iteration is exactly one call (and one ``await`` for async) plus the loop step.
    """
    cached = _loops.get((nargs, is_async))
    if cached is not None:
        return cached
    names = [f"a{i}" for i in range(nargs)]
    unpack = f"({', '.join(names)},) = args" if names else "del args"
    source = _LOOP_SOURCE.format(
        prefix="async " if is_async else "",
        await_="await " if is_async else "",
        unpack=unpack,
        call=", ".join(names),
    )
    namespace: dict[str, Any] = {"gc": gc, "perf_counter_ns": time.perf_counter_ns}
    exec(compile(source, f"<timing loop {nargs} args>", "exec"), namespace)
    loop = namespace["loop"]
    _loops[(nargs, is_async)] = loop
    return loop


def sync_loop(nargs: int) -> SyncLoop:
    """The timing loop for a sync callable taking ``nargs`` positional arguments."""
    loop: SyncLoop = _build_loop(nargs, is_async=False)
    return loop


def async_loop(nargs: int) -> AsyncLoop:
    """The timing loop for an async callable taking ``nargs`` positional arguments."""
    loop: AsyncLoop = _build_loop(nargs, is_async=True)
    return loop


@dataclass
class Contender:
    """One thing to time: ``fn(*args)`` (awaited if ``is_async``)."""

    name: str
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    is_async: bool = False
    note: str = ""


@dataclass
class Timing:
    """Per-call figures of one contender, in nanoseconds."""

    name: str
    iterations: int
    samples: list[float]

    @property
    def best(self) -> float:
        """The minimum over rounds: the figure reported."""
        return min(self.samples)

    @property
    def median(self) -> float:
        """The median over rounds, to show how noisy the machine was."""
        return statistics.median(self.samples)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "ns": round(self.best, 2),
            "median_ns": round(self.median, 2),
            "iterations": self.iterations,
            "rounds": len(self.samples),
        }


# Calibration: grow n until one batch takes at least this long, then scale n so a
# batch takes about the budget.
_CALIBRATE_MIN_NS = 5_000_000
_MIN_ITERATIONS = 1_000
_MAX_ITERATIONS = 5_000_000


def _iterations_for(elapsed_ns: int, n: int, budget_ns: int) -> int:
    per_call = max(elapsed_ns / n, 1.0)
    return int(min(max(budget_ns / per_call, _MIN_ITERATIONS), _MAX_ITERATIONS))


def measure_sync(contenders: Sequence[Contender], rounds: int, budget_ns: int) -> list[Timing]:
    """Time sync contenders round-robin; ns per call for each."""
    plans: list[tuple[Contender, SyncLoop, int]] = []
    for contender in contenders:
        loop = sync_loop(len(contender.args))
        n = 100
        elapsed = loop(contender.fn, contender.args, n)
        while elapsed < _CALIBRATE_MIN_NS and n < _MAX_ITERATIONS:
            n *= 4
            elapsed = loop(contender.fn, contender.args, n)
        plans.append((contender, loop, _iterations_for(elapsed, n, budget_ns)))
    timings = [Timing(c.name, n, []) for c, _, n in plans]
    for _ in range(rounds):
        for (contender, loop, n), timing in zip(plans, timings, strict=True):
            timing.samples.append(loop(contender.fn, contender.args, n) / n)
    return timings


async def measure_async(
    contenders: Sequence[Contender], rounds: int, budget_ns: int
) -> list[Timing]:
    """Time async contenders round-robin inside the running loop; ns per call."""
    plans: list[tuple[Contender, AsyncLoop, int]] = []
    for contender in contenders:
        loop = async_loop(len(contender.args))
        n = 100
        elapsed = await loop(contender.fn, contender.args, n)
        while elapsed < _CALIBRATE_MIN_NS and n < _MAX_ITERATIONS:
            n *= 4
            elapsed = await loop(contender.fn, contender.args, n)
        plans.append((contender, loop, _iterations_for(elapsed, n, budget_ns)))
    timings = [Timing(c.name, n, []) for c, _, n in plans]
    for _ in range(rounds):
        for (contender, loop, n), timing in zip(plans, timings, strict=True):
            timing.samples.append(await loop(contender.fn, contender.args, n) / n)
    return timings


def verdict(ok: bool) -> str:
    """``PASS`` or ``FAIL``."""
    return "PASS" if ok else "FAIL"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> str:
    """A plain-text table; ``align`` has one ``<`` or ``>`` per column (default ``<``)."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    aligns = align or "<" * len(headers)

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            f"{cell:{a}{w}}" for cell, a, w in zip(cells, aligns, widths, strict=True)
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])
