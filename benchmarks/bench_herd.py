"""A thundering herd on one cold key: how many loads, and how long everyone waits.

- threads: 200 threads wait on a ``threading.Barrier``; its action stamps the start
  and releases them all into ``Cache.get_or_load`` on a cold key whose loader sleeps
  200 ms and counts its calls.
- asyncio: 1,000 tasks wait on an ``asyncio.Event``; setting it stamps the start and
  releases them into ``AsyncCache.get_or_load`` with a loader that awaits
  ``asyncio.sleep(0.2)``.

Wall time runs from the release until the last caller has its value (each caller
stamps ``perf_counter_ns`` when its call returns); it is divided by the loader's own
time, measured inside the loader. Wall is split into lead (release -> the load
starts) and tail (the load ends -> the last caller has its value).

For comparison the same herds run against a bare single-flight (threads: one Lock and
one Event; asyncio: every task awaits one shared task), which shows what releasing
and waking the callers costs on this machine, a naive dict cache-aside (check, load,
store: one load per caller), and a dogpile.cache memory region (its dogpile lock).
Scenarios run round-robin for several rounds, each on a fresh cache, gc off.

Targets, reported as PASS/FAIL and never asserted: a cachewise herd makes exactly one
load in every round, and its wall time is at most 1.2 x the loader's own time (median
over rounds; the worst round is shown too).
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from _common import table, verdict

NAME = "herd"

THREADS = 200
TASKS = 1_000
LOAD_SECONDS = 0.2
KEY = "report:cold"
WALL_LIMIT = 1.2


@dataclass
class _Loader:
    """A loader that counts its calls and records how long each took."""

    value: object = field(default_factory=object)
    starts_ns: list[int] = field(default_factory=list)
    ends_ns: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self) -> object:
        start = time.perf_counter_ns()
        time.sleep(LOAD_SECONDS)
        end = time.perf_counter_ns()
        with self.lock:
            self.starts_ns.append(start)
            self.ends_ns.append(end)
        return self.value

    async def aload(self) -> object:
        start = time.perf_counter_ns()
        await asyncio.sleep(LOAD_SECONDS)
        self.starts_ns.append(start)
        self.ends_ns.append(time.perf_counter_ns())
        return self.value


@dataclass
class _Round:
    """One herd. ``lead_ns``: release -> first load starts; ``tail_ns``: last load
    ends -> last caller has its value. Wall is about lead + loader + tail."""

    callers: int
    loads: int
    loader_ns: float
    wall_ns: int
    lead_ns: int
    tail_ns: int
    wrong: int

    @property
    def ratio(self) -> float:
        return self.wall_ns / self.loader_ns if self.loader_ns else float("inf")


def _finish_round(loader: _Loader, callers: int, start: int, ends: list[int]) -> _Round:
    """Callers that got no value, or the wrong one, are ``wrong``; they have no end."""
    durations = [e - s for s, e in zip(loader.starts_ns, loader.ends_ns, strict=True)]
    last = max(ends) if ends else start
    return _Round(
        callers=callers,
        loads=len(durations),
        loader_ns=statistics.fmean(durations) if durations else 0.0,
        wall_ns=last - start,
        lead_ns=min(loader.starts_ns) - start if durations else 0,
        tail_ns=last - max(loader.ends_ns) if durations else 0,
        wrong=callers - len(ends),
    )


# -- threads ------------------------------------------------------------------------

SyncGet = Callable[[str, Callable[[], object]], object]


def _thread_round(make: Callable[[], tuple[SyncGet, Callable[[], None]]]) -> _Round:
    """One herd of THREADS threads on a fresh cache from ``make()``."""
    get_or_load, close = make()
    loader = _Loader()
    ends: list[int] = []
    start = 0
    guard = threading.Lock()

    def stamp_start() -> None:
        nonlocal start
        start = time.perf_counter_ns()

    barrier = threading.Barrier(THREADS, action=stamp_start)

    def caller() -> None:
        barrier.wait()
        try:
            value = get_or_load(KEY, loader)
        except Exception:
            value = None
        end = time.perf_counter_ns()
        if value is loader.value:
            with guard:
                ends.append(end)

    threads = [threading.Thread(target=caller) for _ in range(THREADS)]
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        if was_enabled:
            gc.enable()
        close()
    return _finish_round(loader, THREADS, start, ends)


def _cachewise_sync() -> tuple[SyncGet, Callable[[], None]]:
    from cachewise import Cache

    cache = Cache(ttl=300.0)
    return cache.get_or_load, cache.close


def _naive_sync() -> tuple[SyncGet, Callable[[], None]]:
    store: dict[str, object] = {}

    def get_or_load(key: str, loader: Callable[[], object]) -> object:
        value = store.get(key)
        if value is None:
            value = loader()
            store[key] = value
        return value

    return get_or_load, store.clear


def _dogpile_sync() -> tuple[SyncGet, Callable[[], None]]:
    from dogpile.cache import make_region

    region = make_region().configure("dogpile.cache.memory", expiration_time=300)
    return region.get_or_create, lambda: None


def _floor_sync() -> tuple[SyncGet, Callable[[], None]]:
    """The least a thread single-flight can do: one lock, one Event, no cache logic.

    It shows what releasing and waking the threads costs on this machine."""
    lock = threading.Lock()
    events: dict[str, threading.Event] = {}
    values: dict[str, object] = {}

    def get_or_load(key: str, loader: Callable[[], object]) -> object:
        with lock:
            event = events.get(key)
            leader = event is None
            if event is None:
                event = events[key] = threading.Event()
        if leader:
            values[key] = loader()
            event.set()
        else:
            event.wait()
        return values[key]

    return get_or_load, values.clear


# -- asyncio ------------------------------------------------------------------------

AsyncGet = Callable[[str, Callable[[], Awaitable[object]]], Awaitable[object]]


async def _task_round(make: Callable[[], tuple[AsyncGet, Callable[[], Awaitable[None]]]]) -> _Round:
    """One herd of TASKS tasks on a fresh cache from ``make()``."""
    get_or_load, aclose = make()
    loader = _Loader()
    gate = asyncio.Event()
    ends: list[int] = []

    async def caller() -> None:
        await gate.wait()
        try:
            value = await get_or_load(KEY, loader.aload)
        except Exception:
            value = None
        if value is loader.value:
            ends.append(time.perf_counter_ns())

    was_enabled = gc.isenabled()
    gc.disable()
    try:
        tasks = [asyncio.create_task(caller()) for _ in range(TASKS)]
        await asyncio.sleep(0)  # let every task reach the gate
        start = time.perf_counter_ns()
        gate.set()
        await asyncio.gather(*tasks)
    finally:
        if was_enabled:
            gc.enable()
        await aclose()
    return _finish_round(loader, TASKS, start, ends)


def _cachewise_async() -> tuple[AsyncGet, Callable[[], Awaitable[None]]]:
    from cachewise import AsyncCache

    cache = AsyncCache(ttl=300.0)
    return cache.get_or_load, cache.aclose


def _naive_async() -> tuple[AsyncGet, Callable[[], Awaitable[None]]]:
    store: dict[str, object] = {}

    async def get_or_load(key: str, loader: Callable[[], Awaitable[object]]) -> object:
        value = store.get(key)
        if value is None:
            value = await loader()
            store[key] = value
        return value

    async def aclose() -> None:
        store.clear()

    return get_or_load, aclose


def _floor_async() -> tuple[AsyncGet, Callable[[], Awaitable[None]]]:
    """The least an asyncio single-flight can do: every task awaits one shared task
    (no shield, no cache logic)."""
    flights: dict[str, asyncio.Task[object]] = {}

    async def get_or_load(key: str, loader: Callable[[], Awaitable[object]]) -> object:
        task = flights.get(key)
        if task is None:

            async def load() -> object:
                return await loader()

            task = flights[key] = asyncio.ensure_future(load())
        return await task

    async def aclose() -> None:
        flights.clear()

    return get_or_load, aclose


# -- report -------------------------------------------------------------------------


@dataclass
class _Scenario:
    label: str
    rounds: list[_Round]
    targeted: bool

    def median(self, attr: str) -> float:
        """The median over rounds of one ``_Round`` figure."""
        return float(statistics.median(getattr(r, attr) for r in self.rounds))

    def worst(self, attr: str) -> float:
        """The largest value over rounds of one ``_Round`` figure."""
        return float(max(getattr(r, attr) for r in self.rounds))

    @property
    def loads(self) -> list[int]:
        return [r.loads for r in self.rounds]

    def as_dict(self) -> dict[str, Any]:
        return {
            "callers": self.rounds[0].callers,
            "loads": self.loads,
            "loader_ms": [round(r.loader_ns / 1e6, 2) for r in self.rounds],
            "wall_ms": [round(r.wall_ns / 1e6, 2) for r in self.rounds],
            "lead_ms": [round(r.lead_ns / 1e6, 2) for r in self.rounds],
            "tail_ms": [round(r.tail_ns / 1e6, 2) for r in self.rounds],
            "ratio": [round(r.ratio, 4) for r in self.rounds],
            "median_ratio": round(self.median("ratio"), 4),
            "worst_ratio": round(self.worst("ratio"), 4),
            "wrong_results": sum(r.wrong for r in self.rounds),
            "targeted": self.targeted,
        }


def _row(scenario: _Scenario) -> list[str]:
    loads = scenario.loads
    return [
        scenario.label,
        str(scenario.rounds[0].callers),
        str(loads[0]) if len(set(loads)) == 1 else f"{min(loads)}..{max(loads)}",
        f"{scenario.median('loader_ns') / 1e6:.1f}",
        f"{scenario.median('lead_ns') / 1e6:.1f}",
        f"{scenario.median('tail_ns') / 1e6:.1f}",
        f"{scenario.median('wall_ns') / 1e6:.1f}",
        f"{scenario.median('ratio'):.3f}",
        f"{scenario.worst('ratio'):.3f}",
        str(sum(r.wrong for r in scenario.rounds)),
    ]


def _target(scenario: _Scenario) -> dict[str, Any]:
    loads_ok = all(n == 1 for n in scenario.loads)
    ratio = scenario.median("ratio")
    worst = scenario.worst("ratio")
    correct = all(r.wrong == 0 for r in scenario.rounds)
    passed = loads_ok and ratio <= WALL_LIMIT and correct
    summary = (
        f"{scenario.label}: loads per round {scenario.loads} (target 1), "
        f"wall/loader median {ratio:.3f}, worst {worst:.3f} (target <= {WALL_LIMIT})"
    )
    print(f"  {summary}  {verdict(passed)}")
    return {
        "subject": scenario.label,
        "loads": scenario.loads,
        "median_ratio": ratio,
        "worst_ratio": worst,
        "limit": WALL_LIMIT,
        "passed": passed,
        "summary": summary,
    }


def run(quick: bool) -> dict[str, Any]:
    """Run each herd scenario; print the table and the target checks."""
    rounds = 1 if quick else 7
    warmup = not quick
    scenarios: list[_Scenario] = []

    thread_cases: list[tuple[str, Callable[[], tuple[SyncGet, Callable[[], None]]], bool]] = [
        (f"cachewise Cache, {THREADS} threads", _cachewise_sync, True),
        (f"bare Lock+Event single-flight, {THREADS} threads", _floor_sync, False),
        (f"naive dict, {THREADS} threads", _naive_sync, False),
    ]
    try:
        import dogpile.cache  # noqa: F401
    except ImportError:
        pass
    else:
        thread_cases.append((f"dogpile.cache region, {THREADS} threads", _dogpile_sync, False))
    # Round-robin (round 1 of every scenario, then round 2...), so that a burst of
    # load from elsewhere on the machine hits every scenario alike.
    thread_scenarios = [_Scenario(label, [], targeted) for label, _, targeted in thread_cases]
    if warmup:
        for _, make, _ in thread_cases:
            _thread_round(make)
    for _ in range(rounds):
        for (_, make, _), scenario in zip(thread_cases, thread_scenarios, strict=True):
            scenario.rounds.append(_thread_round(make))
    scenarios.extend(thread_scenarios)

    async_cases: list[
        tuple[str, Callable[[], tuple[AsyncGet, Callable[[], Awaitable[None]]]], bool]
    ] = [
        (f"cachewise AsyncCache, {TASKS} tasks", _cachewise_async, True),
        (f"bare shared-task single-flight, {TASKS} tasks", _floor_async, False),
        (f"naive dict, {TASKS} tasks", _naive_async, False),
    ]

    async def async_part() -> None:
        task_scenarios = [_Scenario(label, [], targeted) for label, _, targeted in async_cases]
        if warmup:
            for _, make, _ in async_cases:
                await _task_round(make)
        for _ in range(rounds):
            for (_, make, _), scenario in zip(async_cases, task_scenarios, strict=True):
                scenario.rounds.append(await _task_round(make))
        scenarios.extend(task_scenarios)

    asyncio.run(async_part())

    print(
        f"one cold key, loader sleeps {LOAD_SECONDS * 1000:.0f} ms; {rounds} round(s) per "
        f"scenario, round-robin, fresh cache each"
        f"{', after one warm-up round' if warmup else ''}; gc off."
    )
    print(
        "wall = release -> last caller has its value; lead = release -> load starts; "
        "tail = load ends -> last caller has its value (medians over rounds)."
    )
    headers = [
        "scenario",
        "callers",
        "loads",
        "loader ms",
        "lead ms",
        "tail ms",
        "wall ms",
        "wall/loader",
        "worst",
        "wrong",
    ]
    print(table(headers, [_row(s) for s in scenarios], "<>>>>>>>>>"))
    print("\ntargets (loads: every round; wall/loader: median over rounds):")
    targets = [_target(s) for s in scenarios if s.targeted]
    return {
        "load_seconds": LOAD_SECONDS,
        "rounds": rounds,
        "wall_limit": WALL_LIMIT,
        "scenarios": {s.label: s.as_dict() for s in scenarios},
        "targets": targets,
    }
