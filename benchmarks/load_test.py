"""Load test: threads and asyncio tasks read and write through cachewise while the
Redis server under them keeps failing.

One private ``redis-server`` (127.0.0.1, a free port: the test-suite's
``tests.support.redis_servers.RedisServer``; a Redis on the default port is never
touched). In one process:

- 32 threads share one ``Cache.from_url(url)``;
- an event loop in another thread runs 500 tasks sharing one ``AsyncCache.from_url(url)``;
- every worker loops over 1,000 keys (Zipf-like by default): mostly reads through
  ``get_or_load(key, loader)``, sometimes (5 %) a write, done the cache-aside way:
  bump the key's version in the source of truth, then ``delete(key)``;
- a flapper thread breaks the server every ``flap_every`` seconds for ``down_for``
  seconds: ``kill`` (SIGKILL, then a restart on the same port, empty: calls fail
  fast), ``pause`` (SIGSTOP then SIGCONT: the data stays, calls time out), or
  ``both``, alternating. No flap starts in the last ``settle_for`` seconds, so the
  run ends on a healthy server and the caches have time to recover.

The source of truth stands in for a database: key -> version, and a load costs
about a millisecond (``time.sleep`` in sync loaders, ``asyncio.sleep`` in async
ones) and returns ``"<key>:<version>"``.

What is counted:

- errors: any exception that escapes a cache call (``get_or_load``, ``delete``);
- wrong values: a read that returns a version older than the newest version whose
  write (bump + delete) had returned before the read began (the key's floor, taken
  before the read, as in ``tests/system/test_consistency.py``), or anything that is not
  ``"<that key>:<a version the source has had>"``.

Both must be 0. Wrong values are also split, for diagnosis: a stale read is
"explained" when the delete of every newer version up to the floor had not reached
Redis (it was held as a pending invalidation, per the caches' private bookkeeping)
and was issued by the other cache: only the cache that holds an invalidation reads
around it, so the other one (think: another process) may still see the old entry.
Any other wrong value is "unexplained": a guarantee broke even by that measure.

Also reported: operations, throughput, p50/p99/max latency of the cache calls (all,
sync, async; writes included, the source's bump not), the flaps (with how long the
server was really down), each cache's ``stats()`` at the end, and what cachewise
logged (counted, kept off the terminal).

    python benchmarks/load_test.py --seconds 20
    python benchmarks/load_test.py --seconds 10 --mode pause --url-query socket_timeout=0.1

It exits non-zero only if it crashes: it is a benchmark, and prints whether errors
and wrong values are 0. ``run_load(...)`` returns the figures as a dict.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import collections
import itertools
import json
import logging
import math
import random
import sys
import threading
import time
from array import array
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from cachewise import AsyncCache, Cache

NAME = "load_test"

ROOT = Path(__file__).resolve().parent.parent

MODES = ("kill", "pause", "both")
DISTRIBUTIONS = ("zipf", "uniform")

#: Simulated cost of one load from the source of truth, in seconds.
LOAD_COST = 0.001
#: Zipf exponent for the "zipf" key distribution.
ZIPF_S = 1.0
#: How many examples of errors and wrong values the report keeps.
SAMPLES = 10
#: How long to wait for a worker to finish its last call once asked to stop.
JOIN_TIMEOUT = 30.0


# ---------------------------------------------------------------- source of truth


class Source:
    """The database stand-in: each key's version, and each key's floor (the newest
    version whose write, bump + delete, has returned). Thread-safe."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._lock = threading.Lock()
        self._versions = dict.fromkeys(keys, 0)
        self._floors = dict(self._versions)
        # Per key and version: which side ("sync", "async") wrote it, and whether its
        # delete reached Redis before the write returned.
        self._writes: dict[str, dict[int, tuple[str, bool]]] = {key: {} for key in self._versions}
        self.loads = 0

    def version(self, key: str) -> int:
        """The key's current version (what a load reads)."""
        with self._lock:
            self.loads += 1
            return self._versions[key]

    def bump(self, key: str) -> int:
        """Commit a write: the key's new version."""
        with self._lock:
            version = self._versions[key] + 1
            self._versions[key] = version
            return version

    def written(self, key: str, version: int, side: str, landed: bool) -> None:
        """The write of ``version`` (bump, then delete) by ``side`` has returned;
        ``landed``: its delete reached Redis (no invalidation of the key is left
        pending in that side's cache)."""
        with self._lock:
            self._writes[key][version] = (side, landed)
            self._floors[key] = max(self._floors[key], version)

    def floor(self, key: str) -> int:
        """The newest version a read starting now must see, at least."""
        return self._floors[key]  # one dict read: atomic

    def problem(self, key: str, value: object, floor: int, side: str) -> tuple[str, bool] | None:
        """Why ``value``, read for ``key`` with ``floor`` by ``side``, is wrong, and
        whether a pending invalidation explains it; ``None`` if it is right.

        A stale read is "explained" when the delete of every newer version up to
        the floor had not reached Redis when its write returned, and was issued by
        the other side's cache: the old entry can still be there, and only the
        cache holding the pending invalidation reads around it. One delete that
        landed removes the old entry (and revokes the lease of any load that could
        write it back), and a cache never serves what its own pending invalidation
        covers, so any other stale read is a broken guarantee.
        """
        if not isinstance(value, str):
            return f"{key}: not a str: {value!r}", False
        name, _, tail = value.rpartition(":")
        if name != key or not tail.isdigit():
            return f"{key}: not a value the loader makes: {value!r}", False
        version = int(tail)
        with self._lock:
            newest = self._versions[key]
            # Versions bumped but whose write has not returned yet are left out.
            record = self._writes[key]
            writes = [(v, *record[v]) for v in range(version + 1, floor + 1) if v in record]
        if version < floor:
            explained = all(w_side != side and not landed for _, w_side, landed in writes)
            why = "behind other side's pending invalidations" if explained else "unexplained"
            history = ", ".join(
                f"{v} by {w_side} {'landed' if landed else 'pending'}"
                for v, w_side, landed in writes[-4:]
            )
            return (
                f"{key}: {side} read version {version} < floor {floor} ({why}; writes: {history})",
                explained,
            )
        if version > newest:
            return f"{key}: version {version} was never written (newest {newest})", False
        return None

    def sync_loader(self, key: str) -> Callable[[], str]:
        """A loader for ``Cache``: read the version, pay the load cost, return."""

        def load() -> str:
            version = self.version(key)
            time.sleep(LOAD_COST)
            return f"{key}:{version}"

        return load

    def async_loader(self, key: str) -> Callable[[], Any]:
        """A loader for ``AsyncCache``: the same, with ``asyncio.sleep``."""

        async def load() -> str:
            version = self.version(key)
            await asyncio.sleep(LOAD_COST)
            return f"{key}:{version}"

        return load


# ------------------------------------------------------------------------ workers


class Tally:
    """One worker's counts and latencies (each worker has its own: no locks)."""

    __slots__ = (
        "error_samples",
        "errors",
        "latencies",
        "reads",
        "writes",
        "wrong",
        "wrong_explained",
        "wrong_samples",
    )

    def __init__(self) -> None:
        self.latencies = array("d")  # seconds, one per cache call
        self.reads = 0
        self.writes = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self.wrong = 0
        self.wrong_explained = 0
        self.error_samples: list[str] = []
        self.wrong_samples: list[str] = []

    def error(self, operation: str, exc: BaseException) -> None:
        self.errors[f"{operation}: {type(exc).__name__}"] += 1
        if len(self.error_samples) < SAMPLES:
            self.error_samples.append(f"{operation}: {type(exc).__name__}: {exc}")

    def wrong_value(self, problem: str, explained: bool) -> None:
        self.wrong += 1
        self.wrong_explained += explained
        if len(self.wrong_samples) < SAMPLES and (not explained or len(self.wrong_samples) < 2):
            self.wrong_samples.append(problem)  # the unexplained ones first of all


def pending_check(cache: Cache | AsyncCache) -> Callable[[str], bool]:
    """Whether an invalidation of a key is pending in ``cache`` (its delete did not
    reach Redis; the cache reads around it and retries). This reads the caches'
    private bookkeeping, for the report only; without it, nothing is pending."""
    prefix = f"{cache.namespace}:" if cache.namespace else ""

    def pending(key: str) -> bool:
        keys = getattr(cache, "_unsettled_keys", None)
        if not isinstance(keys, (set, dict)):
            return False
        return bool(getattr(cache, "_unsettled_all", False)) or prefix + key in keys

    return pending


def key_picker(keys: list[str], distribution: str) -> Callable[[random.Random], str]:
    """A function drawing a key: Zipf-like (rank r has weight 1/r^s) or uniform."""
    if distribution == "uniform":
        return lambda rng: rng.choice(keys)
    cumulative = list(
        itertools.accumulate(1.0 / (rank**ZIPF_S) for rank in range(1, len(keys) + 1))
    )
    total = cumulative[-1]
    last = len(keys) - 1

    def pick(rng: random.Random) -> str:
        return keys[min(bisect.bisect_left(cumulative, rng.random() * total), last)]

    return pick


class Workload:
    """What every worker shares: the source, the keys, the mix, the stop signal."""

    def __init__(
        self, keys: int, distribution: str, write_ratio: float, stop: threading.Event
    ) -> None:
        self.keys = [f"item:{i}" for i in range(keys)]
        self.source = Source(self.keys)
        self.pick = key_picker(self.keys, distribution)
        self.write_ratio = write_ratio
        self.stop = stop
        self.sync_loaders = {key: self.source.sync_loader(key) for key in self.keys}
        self.async_loaders = {key: self.source.async_loader(key) for key in self.keys}


def sync_worker(cache: Cache, work: Workload, seed: int, tally: Tally) -> None:
    """Loop until stopped: reads through ``get_or_load``, sometimes a write."""
    rng = random.Random(seed)
    source = work.source
    loaders = work.sync_loaders
    pick = work.pick
    write_ratio = work.write_ratio
    stop = work.stop
    latencies = tally.latencies
    clock = time.perf_counter
    pending = pending_check(cache)
    side = "sync"
    while not stop.is_set():
        key = pick(rng)
        if rng.random() < write_ratio:
            version = source.bump(key)  # "commit" first,
            start = clock()
            try:
                cache.delete(key)  # then invalidate
            except Exception as exc:
                tally.error("delete", exc)
            latencies.append(clock() - start)
            source.written(key, version, side, not pending(key))
            tally.writes += 1
            continue
        floor = source.floor(key)
        start = clock()
        try:
            value = cache.get_or_load(key, loaders[key])
        except Exception as exc:
            latencies.append(clock() - start)
            tally.error("get_or_load", exc)
            continue
        latencies.append(clock() - start)
        tally.reads += 1
        problem = source.problem(key, value, floor, side)
        if problem is not None:
            tally.wrong_value(*problem)


async def async_worker(cache: AsyncCache, work: Workload, seed: int, tally: Tally) -> None:
    """``sync_worker`` for a task."""
    rng = random.Random(seed)
    source = work.source
    loaders = work.async_loaders
    pick = work.pick
    write_ratio = work.write_ratio
    stop = work.stop
    latencies = tally.latencies
    clock = time.perf_counter
    pending = pending_check(cache)
    side = "async"
    while not stop.is_set():
        key = pick(rng)
        if rng.random() < write_ratio:
            version = source.bump(key)
            start = clock()
            try:
                await cache.delete(key)
            except Exception as exc:
                tally.error("delete", exc)
            latencies.append(clock() - start)
            source.written(key, version, side, not pending(key))
            tally.writes += 1
            continue
        floor = source.floor(key)
        start = clock()
        try:
            value = await cache.get_or_load(key, loaders[key])
        except Exception as exc:
            latencies.append(clock() - start)
            tally.error("get_or_load", exc)
            continue
        latencies.append(clock() - start)
        tally.reads += 1
        problem = source.problem(key, value, floor, side)
        if problem is not None:
            tally.wrong_value(*problem)


class AsyncSide:
    """The event loop thread: one ``AsyncCache`` and its tasks."""

    def __init__(self, url: str, work: Workload, tasks: int, seed: int, options: dict[str, Any]):
        self.url = url
        self.work = work
        self.tallies = [Tally() for _ in range(tasks)]
        self.seed = seed
        self.options = options
        self.ready = threading.Event()
        self.failure: BaseException | None = None
        self.stats: dict[str, Any] = {}
        self.stuck = 0
        self.loop_errors: list[str] = []
        self.thread = threading.Thread(target=self._main, name="load-asyncio", daemon=True)

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        loop.set_exception_handler(self._loop_error)
        try:
            loop.run_until_complete(self._run())
        except BaseException as exc:
            self.failure = exc
        finally:
            self.ready.set()  # never leave the main thread waiting
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                loop.close()

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # "Task exception was never retrieved" and the like: a finding, not noise.
        exc = context.get("exception")
        text = str(context.get("message", ""))
        if exc is not None:
            text += f": {type(exc).__name__}: {exc}"
        self.loop_errors.append(text)

    async def _run(self) -> None:
        cache = AsyncCache.from_url(self.url, **self.options)
        try:
            tasks = [
                asyncio.create_task(
                    async_worker(cache, self.work, self.seed + i, tally), name=f"load-task-{i}"
                )
                for i, tally in enumerate(self.tallies)
            ]
            self.ready.set()
            while not self.work.stop.is_set():
                await asyncio.sleep(0.02)
            _, pending = await asyncio.wait(tasks, timeout=JOIN_TIMEOUT)
            self.stuck = len(pending)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for task in tasks:
                if not task.cancelled() and task.exception() is not None:
                    raise RuntimeError("a load task crashed") from task.exception()
            self.stats = cache.stats().as_dict()
        finally:
            await cache.aclose()


# ------------------------------------------------------------------------ flapper


class Flapper:
    """Breaks the server every ``flap_every`` seconds for ``down_for`` seconds, and
    always leaves it running."""

    def __init__(
        self,
        server: Any,
        mode: str,
        flap_every: float,
        down_for: float,
        last_end: float,
        stop: threading.Event,
    ) -> None:
        self.server = server
        self.kinds = (
            itertools.cycle(("kill", "pause")) if mode == "both" else itertools.repeat(mode)
        )
        self.flap_every = flap_every
        self.down_for = down_for
        self.last_end = last_end  # monotonic instant no flap may outlast
        self.stop = stop
        self.log: list[dict[str, Any]] = []
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._main, name="load-flapper", daemon=True)

    def _main(self) -> None:
        started = time.monotonic()
        due = started + self.flap_every
        try:
            while not self.stop.wait(max(0.0, due - time.monotonic())):
                now = time.monotonic()
                if now + self.down_for > self.last_end:
                    break
                kind = next(self.kinds)
                self._flap(kind)
                self.log.append(
                    {
                        "kind": kind,
                        "at": round(now - started, 3),
                        "down": round(time.monotonic() - now, 3),
                    }
                )
                due = max(due + self.flap_every, time.monotonic())
        except BaseException as exc:
            self.failure = exc
        finally:
            self._heal()

    def _flap(self, kind: str) -> None:
        server = self.server
        if kind == "kill":
            server.kill()
            time.sleep(self.down_for)
            server.restart()  # same port, empty
        else:
            server.pause()
            try:
                time.sleep(self.down_for)
            finally:
                server.resume()

    def _heal(self) -> None:
        try:
            if self.server.paused:
                self.server.resume()
            if not self.server.running:
                self.server.restart()
        except BaseException as exc:
            if self.failure is None:
                self.failure = exc


# ----------------------------------------------------------------------- the run


class LogCounter(logging.Handler):
    """Counts what cachewise logs during the run (and keeps it off the terminal)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.counts: collections.Counter[str] = collections.Counter()

    def emit(self, record: logging.LogRecord) -> None:
        # The message template, cut at its first "(" or ";": one line per kind.
        head = str(record.msg).split("(")[0].split(";")[0].strip()
        self.counts[f"{record.levelname} {head}"] += 1


def latency_summary(samples: Iterable[array]) -> dict[str, Any]:
    """Count, p50, p99 and max (milliseconds) of the merged samples."""
    merged = sorted(itertools.chain.from_iterable(samples))
    count = len(merged)
    if not count:
        return {"count": 0, "p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}

    def rank(q: float) -> float:
        return merged[min(count - 1, max(0, math.ceil(q * count) - 1))] * 1000.0

    return {
        "count": count,
        "p50_ms": round(rank(0.50), 3),
        "p99_ms": round(rank(0.99), 3),
        "max_ms": round(merged[-1] * 1000.0, 3),
    }


def _side_figures(tallies: list[Tally], elapsed: float) -> dict[str, Any]:
    errors: collections.Counter[str] = collections.Counter()
    for tally in tallies:
        errors.update(tally.errors)
    operations = sum(len(t.latencies) for t in tallies)
    return {
        "workers": len(tallies),
        "operations": operations,
        "reads": sum(t.reads for t in tallies),
        "writes": sum(t.writes for t in tallies),
        "throughput": round(operations / elapsed, 1) if elapsed > 0 else 0.0,
        "latency": latency_summary(t.latencies for t in tallies),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "wrong": sum(t.wrong for t in tallies),
        "wrong_explained": sum(t.wrong_explained for t in tallies),
        "error_samples": [s for t in tallies for s in t.error_samples][:SAMPLES],
        "wrong_samples": sorted(
            (s for t in tallies for s in t.wrong_samples), key=lambda s: "unexplained" not in s
        )[:SAMPLES],
    }


def _redis_server_class() -> Any:
    """``tests.support.redis_servers.RedisServer`` (needs the repository root on
    ``sys.path``)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.support.redis_servers import RedisServer

    return RedisServer


def run_load(
    seconds: float,
    threads: int = 32,
    tasks: int = 500,
    keys: int = 1000,
    flap_every: float = 3.0,
    down_for: float = 1.0,
    url_query: str = "",
    *,
    mode: str = "both",
    write_ratio: float = 0.05,
    distribution: str = "zipf",
    settle_for: float = 1.5,
    ttl: float = 30.0,
    seed: int = 1,
    report: bool = True,
) -> dict[str, Any]:
    """Run the load test for ``seconds``; print a table (unless ``report=False``)
    and return the figures.

    ``url_query`` is appended to the server's URL (``socket_timeout=0.1&...``).
    ``mode``: ``kill``, ``pause`` or ``both`` (alternating). ``settle_for``: no flap
    may end later than this many seconds before the end of the run.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {', '.join(DISTRIBUTIONS)}")
    if seconds <= 0 or threads < 0 or tasks < 0 or keys < 1 or not 0 <= write_ratio <= 1:
        raise ValueError("seconds > 0, threads >= 0, tasks >= 0, keys >= 1, write_ratio in [0, 1]")
    if flap_every <= 0 or down_for <= 0:
        raise ValueError("flap_every and down_for must be > 0")
    server = _redis_server_class()()
    server.start()
    url = server.url + (f"?{url_query.lstrip('?')}" if url_query else "")
    options: dict[str, Any] = {"namespace": "load", "ttl": ttl}
    stop = threading.Event()
    work = Workload(keys, distribution, write_ratio, stop)
    log_counter = LogCounter()
    cachewise_logger = logging.getLogger("cachewise")
    cachewise_logger.addHandler(log_counter)
    propagate = cachewise_logger.propagate
    cachewise_logger.propagate = False
    sync_tallies = [Tally() for _ in range(threads)]
    sync_cache: Cache | None = None
    async_side: AsyncSide | None = None
    flapper: Flapper | None = None
    workers: list[threading.Thread] = []
    sync_stats: dict[str, Any] = {}
    elapsed = 0.0
    try:
        sync_cache = Cache.from_url(url, **options)
        if tasks:
            async_side = AsyncSide(url, work, tasks, seed + 100_000, options)
            async_side.thread.start()
            async_side.ready.wait()
            if async_side.failure is not None:
                raise RuntimeError("the asyncio side did not start") from async_side.failure
        workers = [
            threading.Thread(
                target=sync_worker,
                args=(sync_cache, work, seed + i, tally),
                name=f"load-thread-{i}",
                daemon=True,
            )
            for i, tally in enumerate(sync_tallies)
        ]
        started = time.monotonic()
        for worker in workers:
            worker.start()
        flapper = Flapper(server, mode, flap_every, down_for, started + seconds - settle_for, stop)
        flapper.thread.start()
        stop.wait(seconds)  # the run itself: real time under load is what is measured
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        if flapper is not None:
            flapper.thread.join()
        deadline = time.monotonic() + JOIN_TIMEOUT
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        stuck_threads = sum(worker.is_alive() for worker in workers)
        if async_side is not None:
            async_side.thread.join(JOIN_TIMEOUT + 5.0)
        if sync_cache is not None:
            sync_stats = sync_cache.stats().as_dict()
            sync_cache.close()
        server.stop()
        cachewise_logger.removeHandler(log_counter)
        cachewise_logger.propagate = propagate
    if flapper is not None and flapper.failure is not None:
        raise RuntimeError("the flapper failed") from flapper.failure
    if async_side is not None and async_side.failure is not None:
        raise RuntimeError("the asyncio side failed") from async_side.failure
    if async_side is not None and async_side.thread.is_alive():
        raise RuntimeError("the asyncio side did not stop")

    sync_side = _side_figures(sync_tallies, elapsed)
    async_figures = _side_figures(async_side.tallies if async_side else [], elapsed)
    everything = _side_figures(sync_tallies + (async_side.tallies if async_side else []), elapsed)
    flaps = flapper.log if flapper is not None else []
    result: dict[str, Any] = {
        "config": {
            "seconds": seconds,
            "threads": threads,
            "tasks": tasks,
            "keys": keys,
            "flap_every": flap_every,
            "down_for": down_for,
            "mode": mode,
            "url_query": url_query,
            "write_ratio": write_ratio,
            "distribution": distribution,
            "ttl": ttl,
        },
        "elapsed": round(elapsed, 3),
        "operations": everything["operations"],
        "reads": everything["reads"],
        "writes": everything["writes"],
        "throughput": everything["throughput"],
        "latency": {
            "all": everything["latency"],
            "sync": sync_side["latency"],
            "async": async_figures["latency"],
        },
        "errors": everything["errors"],
        "wrong": everything["wrong"],
        "wrong_explained": everything["wrong_explained"],
        "sync": sync_side,
        "async": async_figures,
        "flaps": len(flaps),
        "flap_log": flaps,
        "source_loads": work.source.loads,
        "stats": {"sync": sync_stats, "async": async_side.stats if async_side else {}},
        "stuck_workers": stuck_threads + (async_side.stuck if async_side else 0),
        "loop_errors": async_side.loop_errors if async_side else [],
        "log_counts": dict(log_counter.counts),
    }
    if report:
        print_report(result)
    return result


# ------------------------------------------------------------------------ report

_STAT_COLUMNS = (
    "hits",
    "misses",
    "loads",
    "coalesced",
    "backend_errors",
    "breaker_opens",
    "breaker_rejections",
    "invalidations_pending",
    "breaker_state",
)


def print_report(result: dict[str, Any]) -> None:
    """The figures as small tables, and the verdict on errors and wrong values."""
    config = result["config"]
    kinds = collections.Counter(flap["kind"] for flap in result["flap_log"])
    print(
        f"load test: {result['elapsed']:.1f} s, {config['threads']} threads + "
        f"{config['tasks']} asyncio tasks, {config['keys']:,} keys ({config['distribution']}), "
        f"{config['write_ratio']:.0%} writes; Redis flapping ({config['mode']}) every "
        f"{config['flap_every']:g} s for {config['down_for']:g} s"
        + (f"; URL query {config['url_query']!r}" if config["url_query"] else "")
    )
    header = (
        f"{'':6} {'ops':>10} {'ops/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>9} "
        f"{'errors':>7} {'wrong':>6} {'unexpl.':>7}"
    )
    print(header)
    print("-" * len(header))
    for name, side in (("sync", result["sync"]), ("async", result["async"]), ("all", result)):
        latency = result["latency"][name]
        print(
            f"{name:6} {side['operations']:>10,} {side['throughput']:>10,.0f} "
            f"{latency['p50_ms']:>8.3f} {latency['p99_ms']:>8.3f} {latency['max_ms']:>9.1f} "
            f"{side['errors']:>7} {side['wrong']:>6} "
            f"{side['wrong'] - side['wrong_explained']:>7}"
        )
    print(
        f"reads {result['reads']:,}, writes {result['writes']:,}, source loads "
        f"{result['source_loads']:,}; flaps {result['flaps']} ("
        + ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items()))
        + ")"
    )
    print()
    widths = [max(len(column), 9) for column in _STAT_COLUMNS]
    print(
        f"{'stats':6} " + " ".join(f"{c:>{w}}" for c, w in zip(_STAT_COLUMNS, widths, strict=True))
    )
    for name in ("sync", "async"):
        stats = result["stats"][name]
        if stats:
            cells = (
                f"{stats.get(c, '')!s:>{w}}" for c, w in zip(_STAT_COLUMNS, widths, strict=True)
            )
            print(f"{name:6} " + " ".join(cells))
    for name in ("sync", "async"):
        for sample in result[name]["error_samples"][:3]:
            print(f"  {name} error: {sample}")
        for sample in result[name]["wrong_samples"][:3]:
            print(f"  {name} wrong value: {sample}")
    for text in result["loop_errors"][:3]:
        print(f"  event loop error: {text}")
    if result["stuck_workers"]:
        print(f"  {result['stuck_workers']} workers did not stop within {JOIN_TIMEOUT:g} s")
    if result["log_counts"]:
        print(
            "cachewise log records: "
            + "; ".join(f"{count} x {what}" for what, count in sorted(result["log_counts"].items()))
        )
    ok = result["errors"] == 0 and result["wrong"] == 0
    print()
    if result["wrong"]:
        print(
            f"of the {result['wrong']} wrong values, {result['wrong_explained']} were read behind "
            "invalidations whose deletes had not reached Redis (pending in the cache that "
            f"issued them); {result['wrong'] - result['wrong_explained']} are unexplained"
        )
    print(
        f"errors: {result['errors']}, wrong values: {result['wrong']} -> "
        + ("OK (both 0)" if ok else "NOT OK (both must be 0)")
    )


def run(quick: bool) -> dict[str, Any]:
    """``benchmarks/run.py`` entry point: 5 s when quick, else 20 s."""
    return run_load(5.0 if quick else 20.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--flap-every", type=float, default=3.0)
    parser.add_argument("--down-for", type=float, default=1.0)
    parser.add_argument("--mode", choices=MODES, default="both")
    parser.add_argument("--url-query", default="", help="e.g. socket_timeout=0.1&breaker=off")
    parser.add_argument("--write-ratio", type=float, default=0.05)
    parser.add_argument("--distribution", choices=DISTRIBUTIONS, default="zipf")
    parser.add_argument("--settle-for", type=float, default=1.5)
    parser.add_argument("--ttl", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args(argv)
    result = run_load(
        args.seconds,
        args.threads,
        args.tasks,
        args.keys,
        args.flap_every,
        args.down_for,
        args.url_query,
        mode=args.mode,
        write_ratio=args.write_ratio,
        distribution=args.distribution,
        settle_for=args.settle_for,
        ttl=args.ttl,
        seed=args.seed,
    )
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
