"""Nanoseconds per hit over many keys: 10,000 warm keys read in random order.

One warm key flatters every cache (its dict slot, its entry and its value stay in
the CPU cache). Here every contender holds the same 10,000 keys with a long TTL,
and each timed loop walks the same pre-drawn random sequence of 65,536 of those
keys, so each call looks up a different key. Contenders are measured round-robin;
the figure is the minimum over rounds of (loop time / calls); the cost of the loop
plus a no-op call with the same arguments is printed as a baseline row.

Ratios are against ``cachetools.TTLCache.get`` (sync) and cashews ``mem://`` get
(async). Targets, reported as PASS/FAIL and never asserted:

- ``Cache.get_or_load`` hit <= 0.35 x ``cachetools.TTLCache.get``
- ``AsyncCache.get_or_load`` hit <= 0.2 x cashews ``mem://`` get
"""

from __future__ import annotations

import asyncio
import functools
import gc
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from _common import table, verdict

NAME = "hits_many"

KEYS = [f"user:{i}" for i in range(10_000)]
TTL = 300.0
SEQUENCE_LENGTH = 65_536

SYNC_REF = "cachetools TTLCache.get"
ASYNC_REF = "cashews mem:// get"
SYNC_SUBJECT = "cachewise Cache.get_or_load"
ASYNC_SUBJECT = "cachewise AsyncCache.get_or_load"
TARGETS = ((SYNC_SUBJECT, SYNC_REF, 0.35), (ASYNC_SUBJECT, ASYNC_REF, 0.2))


def _value(key: str) -> dict[str, Any]:
    return {"id": key, "name": "Ada"}


VALUES = {key: _value(key) for key in KEYS}


def _sequence(seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [KEYS[rng.randrange(len(KEYS))] for _ in range(SEQUENCE_LENGTH)]


def _time_sync(fn: Callable[..., Any], extra: tuple[Any, ...], keys: list[str]) -> float:
    was = gc.isenabled()
    gc.disable()
    try:
        if extra:
            (a,) = extra
            start = time.perf_counter_ns()
            for k in keys:
                fn(k, a)
            end = time.perf_counter_ns()
        else:
            start = time.perf_counter_ns()
            for k in keys:
                fn(k)
            end = time.perf_counter_ns()
    finally:
        if was:
            gc.enable()
    return (end - start) / len(keys)


async def _time_async(
    fn: Callable[..., Awaitable[Any]], extra: tuple[Any, ...], keys: list[str]
) -> float:
    was = gc.isenabled()
    gc.disable()
    try:
        if extra:
            (a,) = extra
            start = time.perf_counter_ns()
            for k in keys:
                await fn(k, a)
            end = time.perf_counter_ns()
        else:
            start = time.perf_counter_ns()
            for k in keys:
                await fn(k)
            end = time.perf_counter_ns()
    finally:
        if was:
            gc.enable()
    return (end - start) / len(keys)


def _loader_for() -> Callable[[], Any]:
    def loader() -> Any:
        raise RuntimeError("a warm key was missed")

    return loader


async def _aloader() -> Any:
    raise RuntimeError("a warm key was missed")


def _sync_contenders() -> tuple[list[tuple[str, Callable[..., Any], tuple[Any, ...]]], list[Any]]:
    from cachewise import Cache

    found: list[tuple[str, Callable[..., Any], tuple[Any, ...]]] = []
    closers: list[Any] = []
    cache = Cache(ttl=TTL, early_refresh=0)
    for key in KEYS:
        cache.set(key, VALUES[key])
    found.append((SYNC_SUBJECT, cache.get_or_load, (_loader_for(),)))
    found.append(("cachewise Cache.get", cache.get, ()))
    closers.append(cache.close)
    try:
        import cachetools
    except ImportError:
        pass
    else:
        ttl_cache: Any = cachetools.TTLCache(maxsize=20_000, ttl=TTL)
        for key in KEYS:
            ttl_cache[key] = VALUES[key]
        found.append((SYNC_REF, ttl_cache.get, ()))
    try:
        from theine import Cache as TheineCache
    except ImportError:
        pass
    else:
        theine: Any = TheineCache(20_000)
        for key in KEYS:
            theine.set(key, VALUES[key], timedelta(seconds=TTL))
        found.append(("theine Cache.get", theine.get, ()))
        closers.append(theine.close)

    @functools.lru_cache(maxsize=20_000)
    def lru(key: str) -> Any:
        return VALUES[key]

    for key in KEYS:
        lru(key)
    found.append(("functools.lru_cache call", lru, ()))
    found.append(("plain dict.get", VALUES.get, ()))

    def noop(key: str) -> None:
        return None

    found.append(("(baseline: loop + no-op call)", noop, ()))
    return found, closers


async def _async_contenders() -> tuple[
    list[tuple[str, Callable[..., Awaitable[Any]], tuple[Any, ...]]], list[Any]
]:
    from cachewise import AsyncCache

    found: list[tuple[str, Callable[..., Awaitable[Any]], tuple[Any, ...]]] = []
    closers: list[Any] = []
    cache = AsyncCache(ttl=TTL, early_refresh=0)
    for key in KEYS:
        await cache.set(key, VALUES[key])
    found.append((ASYNC_SUBJECT, cache.get_or_load, (_aloader,)))
    found.append(("cachewise AsyncCache.get", cache.get, ()))
    closers.append(cache.aclose)
    try:
        from cashews import Cache as CashewsCache
    except ImportError:
        pass
    else:
        cashews: Any = CashewsCache()
        cashews.setup("mem://", size=20_000)
        for key in KEYS:
            await cashews.set(key, VALUES[key], expire=TTL)
        found.append((ASYNC_REF, cashews.get, ()))
        closers.append(cashews.close)

    async def anoop(key: str) -> None:
        return None

    found.append(("(baseline: loop + await no-op)", anoop, ()))
    return found, closers


def _rows(samples: dict[str, list[float]], ref: str) -> tuple[list[list[str]], dict[str, Any]]:
    rows: list[list[str]] = []
    figures: dict[str, Any] = {}
    reference = min(samples[ref]) if ref in samples else None
    reference_median = statistics.median(samples[ref]) if ref in samples else None
    for name, values in samples.items():
        best, median = min(values), statistics.median(values)
        ratio = best / reference if reference else None
        median_ratio = median / reference_median if reference_median else None
        rows.append(
            [
                name,
                f"{best:,.0f}",
                f"{median:,.0f}",
                "-" if ratio is None else f"{ratio:.3f}",
                "-" if median_ratio is None else f"{median_ratio:.3f}",
            ]
        )
        figures[name] = {
            "ns": round(best, 1),
            "median_ns": round(median, 1),
            "ratio": ratio,
            "median_ratio": median_ratio,
        }
    return rows, figures


def run(quick: bool) -> dict[str, Any]:
    """Time every contender's hits over 10,000 keys in random order."""
    rounds = 7 if quick else 31
    keys = _sequence()
    sync, closers = _sync_contenders()
    sync_samples: dict[str, list[float]] = {name: [] for name, _, _ in sync}
    try:
        for _ in range(rounds):
            for name, fn, extra in sync:
                sync_samples[name].append(_time_sync(fn, extra, keys))
    finally:
        for close in closers:
            close()

    async def async_part() -> dict[str, list[float]]:
        contenders, aclosers = await _async_contenders()
        samples: dict[str, list[float]] = {name: [] for name, _, _ in contenders}
        try:
            for _ in range(rounds):
                for name, fn, extra in contenders:
                    samples[name].append(await _time_async(fn, extra, keys))
        finally:
            for aclose in aclosers:
                await aclose()
        return samples

    async_samples = asyncio.run(async_part())
    headers = ["contender", "ns/hit (min)", "median", "ratio (min)", "ratio (median)"]
    print(
        f"{len(KEYS):,} warm keys, {len(keys):,} random reads per round, {rounds} rounds "
        "round-robin; gc off; nothing subtracted."
    )
    sync_rows, sync_figures = _rows(sync_samples, SYNC_REF)
    print(f"\nsync hits (ratio vs {SYNC_REF}):")
    print(table(headers, sync_rows, "<>>>>"))
    async_rows, async_figures = _rows(async_samples, ASYNC_REF)
    print(f"\nasync hits (ratio vs {ASYNC_REF}):")
    print(table(headers, async_rows, "<>>>>"))
    print("\ntargets:")
    targets = []
    merged = {**sync_figures, **async_figures}
    for subject, ref, limit in TARGETS:
        if subject not in merged or ref not in merged:
            targets.append({"subject": subject, "reference": ref, "passed": None})
            continue
        ratio = merged[subject]["ratio"]
        passed = ratio <= limit
        summary = f"{subject} / {ref} = {ratio:.3f} over 10,000 random keys (target <= {limit})"
        print(f"  {summary}  {verdict(passed)}")
        targets.append(
            {
                "subject": subject,
                "reference": ref,
                "limit": limit,
                "ratio": ratio,
                "passed": passed,
                "summary": summary,
            }
        )
    return {
        "unit": "ns per hit, 10,000 keys, random order",
        "rounds": rounds,
        "sync": sync_figures,
        "async": async_figures,
        "targets": targets,
    }


if __name__ == "__main__":
    run(quick=False)
