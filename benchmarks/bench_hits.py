"""Nanoseconds per cache hit: cachewise against its peers, side by side in one run.

Every contender holds one warm key with a long TTL (300 s) and is called on it once
per iteration of the same generated loop (see ``_common``): a plain ``for`` loop for
sync contenders, ``await`` in one coroutine on one event loop for async ones. The gc
is off while timing, contenders are measured round-robin, and the figure is the
minimum over rounds of (loop time / iterations). Nothing is subtracted; the cost of
the loop plus a no-op call of one argument is printed as a baseline row. The median
over rounds, and the ratio of medians, are printed too, as a check on noise.

Ratios are against ``cachetools.TTLCache.get`` (sync) and cashews ``mem://`` get
(async). Targets, reported as PASS/FAIL and never asserted:

- ``Cache.get_or_load`` hit <= 0.35 x ``cachetools.TTLCache.get``
- ``AsyncCache.get_or_load`` hit <= 0.2 x cashews ``mem://`` get
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from _common import Contender, Timing, measure_async, measure_sync, table, verdict

NAME = "hits"

KEY = "user:42"
VALUE: dict[str, Any] = {"id": 42, "name": "Ada"}
TTL = 300.0

SYNC_REF = "cachetools TTLCache.get"
ASYNC_REF = "cashews mem:// get"
SYNC_SUBJECT = "cachewise Cache.get_or_load"
ASYNC_SUBJECT = "cachewise AsyncCache.get_or_load"
SYNC_BASELINE = "(baseline: loop + no-op call)"
ASYNC_BASELINE = "(baseline: loop + await no-op)"

TARGETS = (
    (SYNC_SUBJECT, SYNC_REF, 0.35),
    (ASYNC_SUBJECT, ASYNC_REF, 0.2),
)


def _loader() -> dict[str, Any]:
    return VALUE


async def _aloader() -> dict[str, Any]:
    return VALUE


def _noop(key: str) -> None:
    return None


async def _anoop(key: str) -> None:
    return None


def _expect(name: str, got: Any, want: Any = VALUE) -> None:
    if got is not want and got != want:
        raise RuntimeError(f"{name}: the warm key gave {got!r}, not {want!r}")


class _Sync:
    """The sync contenders, warmed, plus what is needed to check them afterwards."""

    def __init__(self) -> None:
        self.contenders: list[Contender] = []
        self.closers: list[Callable[[], None]] = []
        self.checks: list[Callable[[], str]] = []
        self.skipped: dict[str, str] = {}

    def build(self) -> None:
        from cachewise import Cache

        cache = Cache(ttl=TTL)
        _expect("cachewise", cache.get_or_load(KEY, _loader))
        self.contenders.append(Contender(SYNC_SUBJECT, cache.get_or_load, (KEY, _loader)))
        self.contenders.append(Contender("cachewise Cache.get", cache.get, (KEY,)))
        self.closers.append(cache.close)

        def check_cachewise() -> str:
            stats = cache.stats()
            if stats.loads != 1 or stats.misses != 1 or stats.early_refreshes:
                raise RuntimeError(f"cachewise Cache did not only hit: {stats}")
            return f"Cache: {stats.hits:,} hits, {stats.loads} load"

        self.checks.append(check_cachewise)

        try:
            import cachetools
        except ImportError as exc:
            self.skipped[SYNC_REF] = str(exc)
        else:
            ttl_cache: Any = cachetools.TTLCache(maxsize=10_000, ttl=TTL)
            ttl_cache[KEY] = VALUE
            _expect("cachetools", ttl_cache.get(KEY))
            self.contenders.append(Contender(SYNC_REF, ttl_cache.get, (KEY,)))

        try:
            from theine import Cache as TheineCache
        except ImportError as exc:
            self.skipped["theine Cache.get"] = str(exc)
        else:
            theine: Any = TheineCache(10_000)
            theine.set(KEY, VALUE, timedelta(seconds=TTL))
            # theine 2.x: get() returns (value, found).
            _expect("theine", theine.get(KEY), (VALUE, True))
            self.contenders.append(
                Contender(
                    "theine Cache.get",
                    theine.get,
                    (KEY,),
                    note="theine 2.x get() returns a (value, found) tuple",
                )
            )
            self.closers.append(theine.close)

        try:
            from dogpile.cache import make_region
        except ImportError as exc:
            self.skipped["dogpile.cache region.get_or_create"] = str(exc)
        else:
            created: list[int] = []

            def creator() -> dict[str, Any]:
                created.append(1)
                return VALUE

            region = make_region().configure("dogpile.cache.memory", expiration_time=TTL)
            _expect("dogpile", region.get_or_create(KEY, creator))
            self.contenders.append(
                Contender(
                    "dogpile.cache region.get_or_create", region.get_or_create, (KEY, creator)
                )
            )
            self.checks.append(lambda: f"dogpile: {len(created)} creator call")

        @functools.lru_cache(maxsize=10_000)
        def lru(key: str) -> dict[str, Any]:
            return VALUE

        _expect("lru_cache", lru(KEY))
        self.contenders.append(Contender("functools.lru_cache call", lru, (KEY,)))
        self.checks.append(lambda: f"lru_cache: {lru.cache_info().misses} miss")
        self.contenders.append(Contender(SYNC_BASELINE, _noop, (KEY,)))


class _Async:
    """The async contenders; built inside the running event loop."""

    def __init__(self) -> None:
        self.contenders: list[Contender] = []
        self.closers: list[Callable[[], Awaitable[None]]] = []
        self.checks: list[Callable[[], str]] = []
        self.skipped: dict[str, str] = {}

    async def build(self) -> None:
        from cachewise import AsyncCache

        cache = AsyncCache(ttl=TTL)
        _expect("cachewise async", await cache.get_or_load(KEY, _aloader))
        self.contenders.append(
            Contender(ASYNC_SUBJECT, cache.get_or_load, (KEY, _aloader), is_async=True)
        )
        self.contenders.append(
            Contender("cachewise AsyncCache.get", cache.get, (KEY,), is_async=True)
        )
        self.closers.append(cache.aclose)

        def check_cachewise() -> str:
            stats = cache.stats()
            if stats.loads != 1 or stats.misses != 1 or stats.early_refreshes:
                raise RuntimeError(f"cachewise AsyncCache did not only hit: {stats}")
            return f"AsyncCache: {stats.hits:,} hits, {stats.loads} load"

        self.checks.append(check_cachewise)

        try:
            from cashews import Cache as CashewsCache
        except ImportError as exc:
            self.skipped[ASYNC_REF] = str(exc)
        else:
            cashews: Any = CashewsCache()
            cashews.setup("mem://")
            await cashews.set(KEY, VALUE, expire=TTL)
            _expect("cashews", await cashews.get(KEY))
            self.contenders.append(Contender(ASYNC_REF, cashews.get, (KEY,), is_async=True))
            self.closers.append(cashews.close)

        try:
            import aiocache
        except ImportError as exc:
            self.skipped["aiocache SimpleMemoryCache.get"] = str(exc)
        else:
            # aiocache 0.12 exports SimpleMemoryCache; older ones only the factory.
            simple = getattr(aiocache, "SimpleMemoryCache", None)
            aio: Any = simple() if simple is not None else aiocache.Cache(aiocache.Cache.MEMORY)
            await aio.set(KEY, VALUE, ttl=int(TTL))
            _expect("aiocache", await aio.get(KEY))
            self.contenders.append(
                Contender("aiocache SimpleMemoryCache.get", aio.get, (KEY,), is_async=True)
            )
            self.closers.append(aio.close)

        self.contenders.append(Contender(ASYNC_BASELINE, _anoop, (KEY,), is_async=True))


def _rows(timings: list[Timing], ref: str) -> tuple[list[list[str]], dict[str, Any]]:
    by_name = {t.name: t for t in timings}
    reference = by_name.get(ref)
    rows: list[list[str]] = []
    figures: dict[str, Any] = {}
    for timing in timings:
        ratio = timing.best / reference.best if reference else None
        median_ratio = timing.median / reference.median if reference else None
        rows.append(
            [
                timing.name,
                f"{timing.best:,.0f}",
                f"{timing.median:,.0f}",
                "-" if ratio is None else f"{ratio:.3f}",
                "-" if median_ratio is None else f"{median_ratio:.3f}",
            ]
        )
        figures[timing.name] = {**timing.as_dict(), "ratio": ratio, "median_ratio": median_ratio}
    return rows, figures


def _target(subject: str, ref: str, limit: float, timings: dict[str, Timing]) -> dict[str, Any]:
    if subject not in timings or ref not in timings:
        summary = f"{subject} <= {limit} x {ref}: a contender is missing"
        print(f"  {summary}  SKIPPED")
        return {
            "subject": subject,
            "reference": ref,
            "limit": limit,
            "passed": None,
            "summary": summary,
        }
    ratio = timings[subject].best / timings[ref].best
    passed = ratio <= limit
    summary = f"{subject} / {ref} = {ratio:.3f} (target <= {limit})"
    print(f"  {summary}  {verdict(passed)}")
    return {
        "subject": subject,
        "reference": ref,
        "limit": limit,
        "ratio": ratio,
        "passed": passed,
        "summary": summary,
    }


def run(quick: bool) -> dict[str, Any]:
    """Time every contender's hit; print the tables and the target checks."""
    # Many short rounds: on a shared machine a short round more often runs without
    # being preempted, and the minimum is what we report.
    rounds, budget_ns = (15, 1_000_000) if quick else (61, 5_000_000)
    headers = ["contender", "ns/hit (min)", "median", "ratio (min)", "ratio (median)"]

    sync = _Sync()
    sync.build()
    try:
        sync_timings = measure_sync(sync.contenders, rounds, budget_ns)
        sync_checks = [check() for check in sync.checks]
    finally:
        for close in sync.closers:
            close()

    aio = _Async()

    async def async_part() -> list[Timing]:
        await aio.build()
        try:
            return await measure_async(aio.contenders, rounds, budget_ns)
        finally:
            for aclose in aio.closers:
                await aclose()

    async_timings = asyncio.run(async_part())
    async_checks = [check() for check in aio.checks]

    print(f"{rounds} rounds per contender, round-robin, ~{budget_ns / 1e6:.0f} ms each; gc off.")
    print("ns/hit = min over rounds of loop time / iterations; nothing subtracted.")
    print("ratio (min) is the one checked against the targets.\n")
    sync_rows, sync_figures = _rows(sync_timings, SYNC_REF)
    print(f"sync hits (ratio vs {SYNC_REF}):")
    print(table(headers, sync_rows, "<>>>>"))
    print()
    async_rows, async_figures = _rows(async_timings, ASYNC_REF)
    print(f"async hits (ratio vs {ASYNC_REF}; one coroutine, await per iteration):")
    print(table(headers, async_rows, "<>>>>"))
    for contender in sync.contenders + aio.contenders:
        if contender.note:
            print(f"  note, {contender.name}: {contender.note}")
    for name, reason in {**sync.skipped, **aio.skipped}.items():
        print(f"  skipped {name}: {reason}")
    print(f"\nsanity: {'; '.join(sync_checks + async_checks)}")
    print("\ntargets:")
    targets = [
        _target(subject, ref, limit, {t.name: t for t in sync_timings + async_timings})
        for subject, ref, limit in TARGETS
    ]
    return {
        "unit": "ns per hit",
        "method": "min over round-robin rounds of loop time / iterations; "
        "nothing subtracted; gc disabled while timing",
        "rounds": rounds,
        "budget_ns_per_round": budget_ns,
        "sync_reference": SYNC_REF,
        "async_reference": ASYNC_REF,
        "sync": sync_figures,
        "async": async_figures,
        "skipped": {**sync.skipped, **aio.skipped},
        "targets": targets,
    }
