"""Tags: what ``invalidate_tags`` costs as the number of tagged keys grows, and what
tags add to a cache hit. Memory backend and Redis, side by side in one run.

Part 1, invalidation cost against N (the issue says it "should stay flat"). For N
in 1, 10, 100, 1,000, 10,000 and 100,000 (up to 1,000 with ``--quick``), every
subject gets N keys that all carry one fresh tag. For cachewise that is
``Cache.set_many(items, tags=[tag, A, B])`` in batches of 10,000, where A and B are
two more tags, plus 32 control keys that carry only A and B. Then two calls are
timed (``perf_counter_ns`` around each single call, gc off):

1. a control: ``invalidate_tags`` of a tag that no key carries. This is the first
   call after the write, so it shows what a cold first call costs at that N.
2. the measurement: ``invalidate_tags(tag)`` of the tag the N keys carry.

Each measurement is checked. Before it, a sample of 64 keys (first, middle, last,
the rest random) must hit. After it, every sampled key must read as MISSING
(``Cache.get`` and ``get_many``) and every control key must still hit. All of this
repeats with a fresh tag, re-populated each time: 7 times (5 at 10,000 and 3 at
100,000; 3 with ``--quick``), with the subjects interleaved. The figures are
medians in µs per call (min and max are shown too). "max/min" is the largest
median across N divided by the smallest, so flat is about 1.

Subjects: cachewise on memory and cachewise on Redis, then two peers on the same
Redis server for comparison, where a tag is a Redis SET of member keys. The memory
cache is ``Cache(MemoryBackend(max_entries=...))`` because the default 10,000-entry
budget would evict keys. cachewise on Redis is ``Cache.from_url`` on a private
``redis-server`` (see ``_redis_support``). The peers:

- "delete by set" by hand with redis-py: ``SMEMBERS``, then ``DEL`` of the members
  in chunks of 1,000 in one pipeline, then ``DEL`` of the set.
- cashews' ``delete_tags``: it loops ``SPOP`` of 100 members, ``UNLINK`` of those,
  and an ``SREM`` from its remove callback. The tag is registered with
  ``register_tag``, as cashews documents.

The peers' keys (one tag each) are written server-side by one Lua script, in the
layout that cashews' own ``set(..., tags=...)`` writes. That layout is checked
against a key cashews writes itself, and writing is not timed.

Part 2, the hit path with and without tags: ns per hit of
``get_or_load(key, loader)`` on a key stored without tags, against
``get_or_load(key, loader, tags=["t1", "t2"])`` on a key stored with those tags. It
runs for ``Cache`` and ``AsyncCache`` on memory, on standalone Redis and on a
3-master Redis Cluster (``tests.support.redis_servers.RedisClusterProcess``,
private, on free loopback ports). Each contender is a small function of the key
that calls the method. Tagged and untagged use the same wrapper shape, so their
ratio compares the hit paths only. A baseline row shows the wrapper's own cost.
Timing uses ``_common``'s loops (memory) and ``_redis_support``'s loops (Redis),
round-robin; the figure is the minimum over rounds and the median is shown.

Extra rows:

- Redis: the tagged entry read by ``get_or_load`` without ``tags=``, the tagged
  entry read by ``Cache.get`` (which takes no tags), and a raw redis-py ``GET``.
- breakdown rows that take the tagged hit apart:
  - memory: ``MemoryBackend.get`` and ``Cache._full_tags``;
  - standalone Redis: the tagged-read script sent by hand with ``EVALSHA``, and an
    ``MGET`` of the same three keys;
  - the cluster: redis-py's ``mget_nonatomic`` of the two tag keys.
- ``Cache.get_many`` of 64 keys stored with tags against 64 without, on standalone
  Redis (median of a few calls).

Commands per call, and the server µs per command, are counted afterwards from
``INFO commandstats``, on every node of the cluster. GETs run inside a script count
as GETs.

Targets, reported as PASS/FAIL and never asserted:

- ``invalidate_tags`` flat: max/min of the per-N medians <= 2.0 (memory; Redis)
- ``invalidate_tags`` correct: every check above passed (memory; Redis)
- standalone Redis, tagged ``get_or_load`` hit <= 1.25 x untagged (min over
  rounds; Cache; AsyncCache). Both take one round trip, with the tags' versions
  read in the same script.
"""

from __future__ import annotations

import asyncio
import gc
import json
import random
import statistics
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from _common import Contender, Timing, measure_async, measure_sync, table, verdict
from _redis_support import (
    OWN_COMMANDS,
    ROOT,
    measure_async_fixed,
    measure_sync_fixed,
    start_server,
)

NAME = "tags"

TTL = 300.0
VALUE: dict[str, Any] = {
    "id": 42,
    "name": "Ada Lovelace",
    "email": "ada@example.com",
    "active": True,
    "score": 98.5,
    "tags": ["math", "engines"],
    "created": "1843-07-10T00:00:00Z",
    "country": "GB",
    "plan": "pro",
    "logins": 1815,
}

# -- part 1 settings -------------------------------------------------------------

FULL_NS = (1, 10, 100, 1_000, 10_000, 100_000)
QUICK_NS = (1, 10, 100, 1_000)
OTHER_TAGS = ("inv-other-a", "inv-other-b")
CONTROL_KEYS = 32
SAMPLE = 64
BATCH = 10_000
DEL_CHUNK = 1_000
FLAT_LIMIT = 2.0

# -- part 2 settings -------------------------------------------------------------

HIT_TAGS = ["t1", "t2"]
KEY = "hit:plain"
TKEY = "hit:tagged"
RAW_KEY = "raw:hit"
HIT_LIMIT = 1.25
COUNT_CALLS = 50

#: Writes N keys and their tag SET server-side, in the layout cashews uses:
#: ``SET key value PX ttl`` and ``SADD set key``, then ``PEXPIRE set ttl``.
#: KEYS[1] = set; ARGV = first, last, key prefix, value, ttl ms.
_POPULATE_SET = """
local first, last = tonumber(ARGV[1]), tonumber(ARGV[2])
for i = first, last do
  local key = ARGV[3] .. i
  redis.call('SET', key, ARGV[4], 'PX', ARGV[5])
  redis.call('SADD', KEYS[1], key)
end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return last - first + 1
"""


def _loader() -> dict[str, Any]:
    return VALUE


async def _aloader() -> dict[str, Any]:
    return VALUE


def _reps(n: int, quick: bool) -> int:
    if quick:
        return 3
    return 7 if n <= 1_000 else 5 if n <= 10_000 else 3


def _sample(n: int) -> list[int]:
    """Indices of the keys checked: first, middle, last, and random others."""
    picked = {0, n // 2, n - 1}
    rest = [i for i in random.Random(n).sample(range(n), min(n, SAMPLE)) if i not in picked]
    return sorted(picked | set(rest[: SAMPLE - len(picked)]))


def _time_call(fn: Callable[[Any], object], arg: Any) -> int:
    """Nanoseconds of one ``fn(arg)``, gc off."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        fn(arg)
        return time.perf_counter_ns() - start
    finally:
        if enabled:
            gc.enable()


# =============================================================== part 1: subjects


class _Subject(ABC):
    """One way of invalidating a tag, populated and checked per measurement."""

    name: str = ""
    populate_ns: dict[int, list[int]]

    def __init__(self) -> None:
        self.populate_ns = {}

    def fill(self, n: int, tag: str) -> None:
        """Populate, recording how long it took (not part of the figures). The gc is
        off meanwhile: 100,000 fresh entries would set off full collections."""
        enabled = gc.isenabled()
        gc.disable()
        try:
            start = time.perf_counter_ns()
            self.populate(n, tag)
            self.populate_ns.setdefault(n, []).append(time.perf_counter_ns() - start)
        finally:
            if enabled:
                gc.enable()

    @abstractmethod
    def populate(self, n: int, tag: str) -> None:
        """Write N keys carrying ``tag``."""

    @abstractmethod
    def invalidate(self, tag: str) -> int:
        """Invalidate ``tag``; nanoseconds it took."""

    @abstractmethod
    def check(self, n: int, tag: str, invalidated: bool) -> list[str]:
        """What is wrong with the sampled keys and the control keys (empty: fine)."""

    def final(self) -> tuple[list[str], str]:
        """Problems seen over the whole run, and a one-line summary."""
        return [], ""

    @abstractmethod
    def close(self) -> None:
        """Release clients and loops."""


class _CachewiseSubject(_Subject):
    """cachewise ``Cache.invalidate_tags`` on one backend."""

    def __init__(self, name: str, cache: Any) -> None:
        super().__init__()
        self.name = name
        self.cache = cache
        self.keys: list[str] = []
        self.control = [f"inv-ctl:{i}" for i in range(CONTROL_KEYS)]
        cache.set_many(dict.fromkeys(self.control, VALUE), tags=list(OTHER_TAGS))

    def _keys(self, n: int) -> list[str]:
        while len(self.keys) < n:
            self.keys.append(f"inv:{len(self.keys)}")
        return self.keys[:n]

    def populate(self, n: int, tag: str) -> None:
        keys = self._keys(n)
        tags = [tag, *OTHER_TAGS]
        for start in range(0, n, BATCH):
            self.cache.set_many(dict.fromkeys(keys[start : start + BATCH], VALUE), tags=tags)

    def invalidate(self, tag: str) -> int:
        return _time_call(self.cache.invalidate_tags, tag)

    def check(self, n: int, tag: str, invalidated: bool) -> list[str]:
        from cachewise import MISSING

        keys = self._keys(n)
        sample = [keys[i] for i in _sample(n)]
        got = self.cache.get_many(sample)
        problems: list[str] = []
        if invalidated:
            if got:
                problems.append(f"{len(got)}/{len(sample)} sampled keys still hit after")
            for key in (keys[0], keys[-1]):
                if self.cache.get(key) is not MISSING:
                    problems.append(f"Cache.get({key!r}) is not MISSING after")
        else:
            wrong = sum(1 for key in sample if got.get(key) != VALUE)
            if wrong:
                problems.append(f"{wrong}/{len(sample)} sampled keys missed before")
        control = self.cache.get_many(self.control)
        lost = sum(1 for key in self.control if control.get(key) != VALUE)
        if lost:
            problems.append(f"{lost}/{len(self.control)} control keys (tags A, B) missed")
        return problems

    def final(self) -> tuple[list[str], str]:
        stats = self.cache.stats()
        problems: list[str] = []
        if stats.backend_errors or stats.decode_errors:
            problems.append(
                f"{stats.backend_errors} backend errors, {stats.decode_errors} decode errors"
            )
        backend = self.cache.backend
        line = f"{stats.backend_errors} backend errors"
        evictions = getattr(backend, "evictions", 0)
        if evictions:
            problems.append(f"{evictions} evictions: misses may not be invalidations")
        if hasattr(backend, "__len__"):
            line += f", {len(backend):,} entries still held (invalidated ones are dropped lazily)"
        return problems, line

    def close(self) -> None:
        self.cache.close()


class _SetSubject(_Subject):
    """A tag as a Redis SET of member keys, invalidated by hand: ``SMEMBERS``, then
    ``DEL`` of the members in chunks of ``DEL_CHUNK``, pipelined, and of the set."""

    name = "Redis SET: SMEMBERS + DEL"

    def __init__(self, url: str) -> None:
        import redis

        super().__init__()
        self.client: Any = redis.Redis.from_url(url)
        self.payload = json.dumps(VALUE).encode()
        self.px = int(TTL * 1000)
        # Control keys: a tag of their own, never invalidated.
        self.control = [f"{self._prefix('ctl')}{i}" for i in range(CONTROL_KEYS)]
        self._write(self._prefix("ctl"), self._set_key("ctl"), CONTROL_KEYS)

    def _write(self, prefix: str, set_key: str, n: int) -> None:
        for first in range(0, n, 20_000):
            last = min(first + 20_000, n) - 1
            self.client.eval(_POPULATE_SET, 1, set_key, first, last, prefix, self.payload, self.px)

    def _prefix(self, tag: str) -> str:
        return f"sk:{tag}:"

    def _set_key(self, tag: str) -> str:
        return f"tagset:{tag}"

    def populate(self, n: int, tag: str) -> None:
        self._write(self._prefix(tag), self._set_key(tag), n)

    def invalidate(self, tag: str) -> int:
        client = self.client
        set_key = self._set_key(tag)

        def delete_by_set(name: str) -> None:
            members = list(client.smembers(name))
            pipe = client.pipeline(transaction=False)
            for start in range(0, len(members), DEL_CHUNK):
                pipe.delete(*members[start : start + DEL_CHUNK])
            pipe.delete(name)
            pipe.execute()

        return _time_call(delete_by_set, set_key)

    def _existing(self, names: Sequence[str]) -> int:
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            pipe.exists(name)
        return sum(int(found) for found in pipe.execute())

    def check(self, n: int, tag: str, invalidated: bool) -> list[str]:
        prefix = self._prefix(tag)
        sample = [f"{prefix}{i}" for i in _sample(n)]
        found = self._existing(sample)
        problems: list[str] = []
        if invalidated and (found or self.client.exists(self._set_key(tag))):
            problems.append(f"{found}/{len(sample)} sampled keys (or the set) left after")
        if not invalidated and found != len(sample):
            problems.append(f"{len(sample) - found}/{len(sample)} sampled keys absent before")
        if self._existing(self.control) != len(self.control):
            problems.append("control keys lost")
        return problems

    def close(self) -> None:
        self.client.close()


class _CashewsSubject(_SetSubject):
    """cashews' ``delete_tags`` on its redis backend, on its own event loop."""

    name = "cashews delete_tags"

    def __init__(self, url: str) -> None:
        from cashews import Cache as CashewsCache

        super().__init__(url)
        self.loop = asyncio.new_event_loop()
        self.cashews: Any = CashewsCache()
        self.cashews.setup(url)
        # Keys cw:<group>:<id> carry the tag cwtag:<group>, as register_tag says.
        self.cashews.register_tag("cwtag:{grp}", "cw:{grp}:{id}")
        try:
            self.layout_note = self.loop.run_until_complete(self._check_layout())
        except BaseException:
            self.close()
            raise

    async def _check_layout(self) -> str:
        """Write one key the cashews way and compare with what ``_POPULATE_SET`` does."""
        key, tag = "cw:layout:1", "cwtag:layout"
        await self.cashews.set(key, VALUE, expire=TTL, tags=[tag])
        members = self.client.smembers("_tag:" + tag)
        kind = self.client.type(key)
        tags = self.cashews.get_key_tags(key)
        if members != {key.encode()} or kind != b"string" or tags != [tag]:
            raise RuntimeError(
                f"cashews' tag layout changed: members {members!r}, type {kind!r}, tags {tags!r}"
            )
        await self.cashews.delete_tags(tag)
        if self.client.exists(key, "_tag:" + tag):
            raise RuntimeError("cashews delete_tags left the layout check's keys behind")
        return "layout checked: a cashews-written key matches the bulk-written ones"

    def _prefix(self, tag: str) -> str:
        return f"cw:{tag}:"

    def _set_key(self, tag: str) -> str:
        return f"_tag:cwtag:{tag}"

    def invalidate(self, tag: str) -> int:
        async def timed() -> int:
            enabled = gc.isenabled()
            gc.disable()
            try:
                start = time.perf_counter_ns()
                await self.cashews.delete_tags("cwtag:" + tag)
                return time.perf_counter_ns() - start
            finally:
                if enabled:
                    gc.enable()

        return self.loop.run_until_complete(timed())

    def close(self) -> None:
        try:
            self.loop.run_until_complete(self.cashews.close())
            self.loop.close()
        finally:
            super().close()


def _build_subjects(url: str | None, max_n: int) -> tuple[list[_Subject], dict[str, str]]:
    from cachewise import Cache, MemoryBackend

    skipped: dict[str, str] = {}
    backend = MemoryBackend(max_entries=max_n + CONTROL_KEYS + 64, max_bytes=1 << 31)
    subjects: list[_Subject] = [_CachewiseSubject("cachewise memory", Cache(backend, ttl=TTL))]
    if url is None:
        return subjects, skipped
    subjects.append(_CachewiseSubject("cachewise Redis", Cache.from_url(url, ttl=TTL)))
    subjects.append(_SetSubject(url))
    try:
        subjects.append(_CashewsSubject(url))
    except Exception as exc:  # optional peer: missing or changed
        skipped[_CashewsSubject.name] = f"{type(exc).__name__}: {exc}"
    return subjects, skipped


def _part1(url: str | None, quick: bool) -> dict[str, Any]:
    ns = QUICK_NS if quick else FULL_NS
    subjects, skipped = _build_subjects(url, max(ns))
    samples: dict[str, dict[int, list[int]]] = {s.name: {} for s in subjects}
    cold: dict[str, dict[int, list[int]]] = {s.name: {} for s in subjects}
    problems: list[str] = []
    finals: dict[str, str] = {}
    try:
        for n in ns:
            for rep in range(_reps(n, quick)):
                tag = f"inv-n{n}-r{rep}"
                # Rotate who goes first, so none always runs right after a big write.
                shift = rep % len(subjects)
                for subject in subjects[shift:] + subjects[:shift]:
                    subject.fill(n, tag)
                    before = subject.check(n, tag, invalidated=False)
                    # The control: the first call after the write, on a tag no key
                    # carries. Then the measured call, on the tag the N keys carry.
                    first = subject.invalidate(tag + "-none")
                    elapsed = subject.invalidate(tag)
                    after = subject.check(n, tag, invalidated=True)
                    cold[subject.name].setdefault(n, []).append(first)
                    samples[subject.name].setdefault(n, []).append(elapsed)
                    problems += [f"{subject.name}, N={n:,}, rep {rep}: {p}" for p in before + after]
        for subject in subjects:
            trouble, line = subject.final()
            problems += [f"{subject.name}: {p}" for p in trouble]
            if line:
                finals[subject.name] = line
            if isinstance(subject, _CashewsSubject):
                finals[subject.name] = subject.layout_note
    finally:
        for subject in subjects:
            subject.close()
    populate = {s.name: s.populate_ns for s in subjects}
    return _report_part1(ns, quick, samples, cold, populate, problems, finals, skipped)


def _flat_ratio(per_n: dict[int, list[int]]) -> float | None:
    medians = [statistics.median(v) for v in per_n.values() if v]
    if not medians or min(medians) <= 0:
        return None
    return max(medians) / min(medians)


def _per_n_table(
    ns: Sequence[int], quick: bool, data: dict[str, dict[int, list[int]]]
) -> tuple[str, dict[str, Any]]:
    """A table of µs per call, median [min-max], one column per subject, with a
    max/min row; and the same figures for the JSON."""
    names = list(data)
    rows: list[list[str]] = []
    figures: dict[str, Any] = {name: {"per_n": {}} for name in names}
    for n in ns:
        row = [f"{n:,}", str(_reps(n, quick))]
        for name in names:
            values = [v / 1000 for v in data[name].get(n, [])]
            median = statistics.median(values)
            row.append(f"{median:,.1f} [{min(values):,.1f}-{max(values):,.1f}]")
            figures[name]["per_n"][str(n)] = {
                "median_us": round(median, 3),
                "min_us": round(min(values), 3),
                "max_us": round(max(values), 3),
                "samples_us": [round(v, 3) for v in values],
            }
        rows.append(row)
    ratio_row = ["max/min", ""]
    for name in names:
        ratio = _flat_ratio(data[name])
        figures[name]["max_over_min"] = ratio
        ratio_row.append("-" if ratio is None else f"{ratio:,.2f}")
    rows.append(ratio_row)
    return table(["N", "reps", *names], rows, "<>" + ">" * len(names)), figures


def _report_part1(
    ns: Sequence[int],
    quick: bool,
    samples: dict[str, dict[int, list[int]]],
    cold: dict[str, dict[int, list[int]]],
    populate: dict[str, dict[int, list[int]]],
    problems: list[str],
    finals: dict[str, str],
    skipped: dict[str, str],
) -> dict[str, Any]:
    print("part 1: invalidate_tags(tag) against the N keys carrying the tag")
    print("µs per call: median over reps [min-max]; one call timed per rep, gc off;")
    print("a fresh tag and a fresh population every rep, subjects interleaved.\n")
    text, figures = _per_n_table(ns, quick, samples)
    print(text)
    print("\ncontrol: the call just before, the first after populating, on a tag that")
    print("no key carries (same units). What grows here with N is not invalidation work:")
    print("the first call after writing N entries runs with cold CPU caches.\n")
    cold_text, cold_figures = _per_n_table(ns, quick, cold)
    print(cold_text)
    print("\npopulating (not part of the figures), µs per key at the largest N:")
    for name, per_n in populate.items():
        writes = statistics.median(per_n[ns[-1]]) / 1000 / ns[-1]
        figures[name]["populate_us_per_key"] = round(writes, 3)
        how = "Cache.set_many" if name.startswith("cachewise") else "one Lua script, server-side"
        print(f"  {name}: {writes:.2f} ({how})")
    for name, line in finals.items():
        print(f"  {name}: {line}")
    for name, why in skipped.items():
        print(f"  skipped {name}: {why}")
    if problems:
        print(f"\ncorrectness problems ({len(problems)}):")
        for problem in problems[:20]:
            print(f"  {problem}")
    else:
        print("\ncorrectness: every check passed (sampled keys hit before and read as")
        print("MISSING after; control keys kept).")
    return {
        "subjects": figures,
        "control_first_call": cold_figures,
        "problems": problems,
        "skipped": skipped,
        "notes": finals,
    }


# ================================================================ part 2: hit path


def _start_cluster() -> tuple[Any, str | None]:
    """A started 3-master ``RedisClusterProcess``, or ``(None, why not)``."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    try:
        from tests.support.redis_servers import RedisClusterProcess
    except ImportError as exc:
        return None, f"cannot import tests.support.redis_servers: {exc}"
    cluster = RedisClusterProcess()
    try:
        cluster.start()
    except Exception as exc:
        cluster.stop()
        return None, f"could not start a Redis Cluster: {type(exc).__name__}: {exc}"
    return cluster, None


class _Group:
    """Contenders compared against one untagged reference."""

    def __init__(self, title: str, admins: Sequence[Any] = ()) -> None:
        self.title = title
        self.admins = list(admins)
        self.contenders: list[Contender] = []
        self.untagged = ""
        self.tagged = ""
        self.counts: dict[str, dict[str, dict[str, float]]] = {}

    def add(self, name: str, fn: Callable[..., Any], is_async: bool = False) -> str:
        full = f"{self.title}: {name}"
        self.contenders.append(Contender(full, fn, (None,), is_async=is_async))
        return full


def _hit_fns(cache: Any) -> tuple[Callable[[Any], Any], Callable[[Any], Any], Callable[[Any], Any]]:
    """get_or_load of the plain key, of the tagged key with tags=, and of the tagged
    key without tags=: the same wrapper shape each."""
    gol = cache.get_or_load
    tags = HIT_TAGS

    def untagged(_: Any) -> Any:
        return gol(KEY, _loader)

    def tagged(_: Any) -> Any:
        return gol(TKEY, _loader, tags=tags)

    def tagged_no_tags(_: Any) -> Any:
        return gol(TKEY, _loader)

    return untagged, tagged, tagged_no_tags


def _ahit_fns(
    cache: Any,
) -> tuple[
    Callable[[Any], Awaitable[Any]],
    Callable[[Any], Awaitable[Any]],
    Callable[[Any], Awaitable[Any]],
]:
    """``_hit_fns`` for an AsyncCache."""
    gol = cache.get_or_load
    tags = HIT_TAGS

    async def untagged(_: Any) -> Any:
        return await gol(KEY, _aloader)

    async def tagged(_: Any) -> Any:
        return await gol(TKEY, _aloader, tags=tags)

    async def tagged_no_tags(_: Any) -> Any:
        return await gol(TKEY, _aloader)

    return untagged, tagged, tagged_no_tags


def _expect(name: str, got: Any, problems: list[str]) -> None:
    if got != VALUE:
        problems.append(f"{name}: gave {got!r}, not the value")


def _check_stats(title: str, cache: Any, problems: list[str]) -> str:
    stats = cache.stats()
    if stats.loads or stats.misses or stats.backend_errors or stats.decode_errors:
        problems.append(f"{title}: not only hits: {stats}")
    return f"{title}: {stats.hits:,} hits, {stats.loads} loads, {stats.misses} misses"


def _count_sync(fn: Callable[[Any], Any], admins: Sequence[Any]) -> dict[str, dict[str, float]]:
    for admin in admins:
        admin.config_resetstat()
    for _ in range(COUNT_CALLS):
        fn(None)
    return _sum_counts(admins)


async def _count_async(
    fn: Callable[[Any], Awaitable[Any]], admins: Sequence[Any]
) -> dict[str, dict[str, float]]:
    for admin in admins:
        admin.config_resetstat()
    for _ in range(COUNT_CALLS):
        await fn(None)
    return _sum_counts(admins)


def _sum_counts(admins: Sequence[Any], per: int = COUNT_CALLS) -> dict[str, dict[str, float]]:
    """``{command: {"per_call": commands per timed call, "server_us": server µs per
    command}}`` over every node, from ``INFO commandstats``."""
    calls: dict[str, int] = {}
    usec: dict[str, float] = {}
    for admin in admins:
        for name, fields in admin.info("commandstats").items():
            command = name.removeprefix("cmdstat_")
            if command in OWN_COMMANDS:
                continue
            calls[command] = calls.get(command, 0) + int(fields["calls"])
            usec[command] = usec.get(command, 0.0) + float(fields["usec"])
    return {
        command: {"per_call": n / per, "server_us": usec[command] / n}
        for command, n in calls.items()
        if n
    }


def _format_counts(counts: dict[str, dict[str, float]] | None) -> str:
    if not counts:
        return "-"
    ordered = sorted(counts.items(), key=lambda item: (-item[1]["per_call"], item[0]))
    return ", ".join(f"{name} {c['per_call']:g} ({c['server_us']:.1f} µs)" for name, c in ordered)


class _HitBench:
    """Builds every hit contender, grouped, and the clean-up and checks."""

    def __init__(self) -> None:
        self.closers: list[Callable[[], Any]] = []
        self.aclosers: list[Callable[[], Awaitable[Any]]] = []
        self.checks: list[Callable[[], str]] = []
        self.problems: list[str] = []
        self.notes: list[str] = []

    # -- memory -------------------------------------------------------------------

    def memory_sync(self) -> _Group:
        from cachewise import Cache

        cache = Cache(ttl=TTL)
        self.closers.append(cache.close)
        cache.set(KEY, VALUE)
        cache.set(TKEY, VALUE, tags=HIT_TAGS)
        group = _Group("memory Cache")
        untagged, tagged, _ = _hit_fns(cache)
        _expect("memory untagged", untagged(None), self.problems)
        _expect("memory tagged", tagged(None), self.problems)
        group.untagged = group.add("get_or_load, untagged", untagged)
        group.tagged = group.add('get_or_load, tags=["t1","t2"]', tagged)
        backend: Any = cache.backend
        full_tags = cache._full_tags  # private: breakdown only

        def noop(key: str, loader: Any, tags: Any = None) -> Any:
            return None

        def baseline(_: Any) -> Any:
            return noop(TKEY, _loader, tags=HIT_TAGS)

        def backend_plain(_: Any) -> Any:
            return backend.get(KEY)

        def backend_tagged(_: Any) -> Any:
            return backend.get(TKEY)

        def tags_only(_: Any) -> Any:
            return full_tags(HIT_TAGS)

        group.add("(baseline: the wrapper calling a no-op)", baseline)
        group.add("breakdown: MemoryBackend.get, untagged entry", backend_plain)
        group.add("breakdown: MemoryBackend.get, tagged entry", backend_tagged)
        group.add("breakdown: Cache._full_tags(tags) per call", tags_only)
        self.checks.append(lambda: _check_stats("memory Cache", cache, self.problems))
        return group

    async def memory_async(self) -> _Group:
        from cachewise import AsyncCache

        cache = AsyncCache(ttl=TTL)
        self.aclosers.append(cache.aclose)
        await cache.set(KEY, VALUE)
        await cache.set(TKEY, VALUE, tags=HIT_TAGS)
        group = _Group("memory AsyncCache")
        untagged, tagged, _ = _ahit_fns(cache)
        _expect("memory async untagged", await untagged(None), self.problems)
        _expect("memory async tagged", await tagged(None), self.problems)
        group.untagged = group.add("get_or_load, untagged", untagged, is_async=True)
        group.tagged = group.add('get_or_load, tags=["t1","t2"]', tagged, is_async=True)
        self.checks.append(lambda: _check_stats("memory AsyncCache", cache, self.problems))
        return group

    # -- Redis, sync --------------------------------------------------------------

    def redis_sync(self, url: str, title: str, admins: Sequence[Any], raw: Any) -> _Group:
        from cachewise import Cache

        cache = Cache.from_url(url, ttl=TTL)
        self.closers.insert(0, cache.close)
        cache.set(KEY, VALUE)
        cache.set(TKEY, VALUE, tags=HIT_TAGS)
        raw.set(RAW_KEY, json.dumps(VALUE), ex=int(TTL))
        group = _Group(title, admins)
        untagged, tagged, tagged_no_tags = _hit_fns(cache)
        _expect(f"{title} untagged", untagged(None), self.problems)
        _expect(f"{title} tagged", tagged(None), self.problems)
        _expect(f"{title} tagged, no tags=", tagged_no_tags(None), self.problems)
        group.untagged = group.add("get_or_load, untagged", untagged)
        group.tagged = group.add('get_or_load, tags=["t1","t2"]', tagged)
        group.add("get_or_load of the tagged entry, no tags=", tagged_no_tags)
        get = cache.get

        def get_tagged_entry(_: Any) -> Any:
            return get(TKEY)

        def raw_get(_: Any) -> Any:
            return json.loads(raw.get(RAW_KEY))

        _expect(f"{title} Cache.get tagged", get_tagged_entry(None), self.problems)
        group.add("Cache.get of the tagged entry", get_tagged_entry)
        group.add("(redis-py GET + json.loads)", raw_get)
        for name, fn in self._wire_breakdown(cache, raw):
            group.add(name, fn)
        self.checks.append(lambda: _check_stats(title, cache, self.problems))
        return group

    def _wire_breakdown(self, cache: Any, raw: Any) -> list[tuple[str, Callable[[Any], Any]]]:
        """The tags' wire cost alone, without cachewise. Standalone Redis: the
        tagged-read script by ``EVALSHA``, and an ``MGET`` of the same three keys
        (replies not decoded). Cluster: the ``mget_nonatomic`` of the tags' version
        keys that follows the ``GET``."""
        from cachewise.backends._redis import tag_key, value_key

        names = [value_key(TKEY), *(tag_key(t) for t in HIT_TAGS)]
        if type(raw).__name__ == "RedisCluster":
            tag_names = names[1:]

            def mget_tags(_: Any) -> Any:
                return raw.mget_nonatomic(tag_names)

            return [("breakdown: redis-py mget_nonatomic of the tag keys", mget_tags)]
        client = cache.backend.client

        def mget(_: Any) -> Any:
            return client.mget(names)

        return [("breakdown: redis-py MGET of the same 3 keys (what a tagged hit sends)", mget)]

    # -- Redis, async -------------------------------------------------------------

    async def redis_async(self, url: str, title: str, admins: Sequence[Any], raw: Any) -> _Group:
        from cachewise import AsyncCache

        cache = AsyncCache.from_url(url, ttl=TTL)
        self.aclosers.insert(0, cache.aclose)
        await cache.set(KEY, VALUE)
        await cache.set(TKEY, VALUE, tags=HIT_TAGS)
        group = _Group(title, admins)
        untagged, tagged, tagged_no_tags = _ahit_fns(cache)
        _expect(f"{title} untagged", await untagged(None), self.problems)
        _expect(f"{title} tagged", await tagged(None), self.problems)
        _expect(f"{title} tagged, no tags=", await tagged_no_tags(None), self.problems)
        group.untagged = group.add("get_or_load, untagged", untagged, is_async=True)
        group.tagged = group.add('get_or_load, tags=["t1","t2"]', tagged, is_async=True)
        group.add("get_or_load of the tagged entry, no tags=", tagged_no_tags, is_async=True)
        if raw is not None:
            await raw.set(RAW_KEY, json.dumps(VALUE), ex=int(TTL))

            async def raw_get(_: Any) -> Any:
                return json.loads(await raw.get(RAW_KEY))

            group.add("(redis.asyncio GET + json.loads)", raw_get, is_async=True)
        self.checks.append(lambda: _check_stats(title, cache, self.problems))
        return group


def _get_many_cost(url: str, admin: Any, quick: bool, problems: list[str]) -> dict[str, Any]:
    """``Cache.get_many`` of ``SAMPLE`` keys stored without tags, then with tags, on
    standalone Redis: median µs per call over a few calls, and commands per call."""
    from cachewise import Cache

    cache = Cache.from_url(url, ttl=TTL)
    figures: dict[str, Any] = {}
    try:
        for label, tags in (("untagged", None), ("tagged", HIT_TAGS)):
            keys = [f"gm:{label}:{i}" for i in range(SAMPLE)]
            cache.set_many(dict.fromkeys(keys, VALUE), tags=tags or ())
            if len(cache.get_many(keys)) != len(keys):
                problems.append(f"get_many of {label} keys: not every key hit")
            calls = [_time_call(cache.get_many, keys) for _ in range(3 if quick else 9)]
            admin.config_resetstat()
            cache.get_many(keys)
            figures[label] = {
                "median_us": statistics.median(calls) / 1000,
                "commands_per_call": _sum_counts([admin], per=1),
            }
    finally:
        cache.close()
    return figures


def _slot_note(raw_cluster: Any) -> str:
    """Which node holds the value key and each tag's version key."""
    from cachewise.backends._redis import tag_key, value_key

    names = [value_key(TKEY), *(tag_key(t) for t in HIT_TAGS)]
    parts = []
    for name in names:
        node = raw_cluster.get_node_from_key(name)
        parts.append(f"{name} -> :{node.port}")
    return "cluster key placement: " + ", ".join(parts)


def _part2(url: str | None, cluster: Any, quick: bool) -> dict[str, Any]:
    mem_rounds, mem_budget = (15, 1_000_000) if quick else (61, 5_000_000)
    rounds, sample_ns = (9, 5_000_000) if quick else (61, 10_000_000)
    bench = _HitBench()
    timings: list[Timing] = []
    sync_groups: list[_Group] = []
    async_groups: list[_Group] = []
    admins: list[Any] = []
    try:
        memory = bench.memory_sync()
        sync_groups.append(memory)
        timings += measure_sync(memory.contenders, mem_rounds, mem_budget)
        redis_groups: list[_Group] = []
        if url is not None:
            import redis

            admin = redis.Redis.from_url(url)
            admins.append(admin)
            raw = redis.Redis.from_url(url)
            bench.closers.append(raw.close)
            redis_groups.append(bench.redis_sync(url, "Redis Cache", [admin], raw))
        if cluster is not None:
            node_admins = [node.client() for node in cluster.nodes]
            admins += node_admins
            raw_cluster = cluster.client()
            bench.closers.append(raw_cluster.close)
            bench.notes.append(_slot_note(raw_cluster))
            redis_groups.append(
                bench.redis_sync(cluster.url, "Redis Cluster Cache", node_admins, raw_cluster)
            )
        if redis_groups:
            contenders = [c for g in redis_groups for c in g.contenders]
            timings += measure_sync_fixed(contenders, rounds, sample_ns)
            for group in redis_groups:
                for contender in group.contenders:
                    group.counts[contender.name] = _count_sync(contender.fn, group.admins)
        sync_groups += redis_groups
        get_many = _get_many_cost(url, admins[0], quick, bench.problems) if url else None
        async_groups = asyncio.run(
            _async_part2(
                bench, url, cluster, (mem_rounds, mem_budget), (rounds, sample_ns), timings
            )
        )
        checks = [check() for check in bench.checks]
    finally:
        for close in bench.closers:
            close()
        for admin in admins:
            admin.close()
    figures = _report_part2(
        sync_groups + async_groups, timings, checks, bench, quick, (rounds, sample_ns)
    )
    if get_many:
        print(f"\nCache.get_many of {SAMPLE} keys, standalone Redis (median µs per call):")
        for label, fig in get_many.items():
            print(
                f"  {label:8} {fig['median_us']:>10,.0f} µs   "
                f"commands: {_format_counts(fig['commands_per_call'])}"
            )
    figures["get_many"] = get_many
    return figures


async def _async_part2(
    bench: _HitBench,
    url: str | None,
    cluster: Any,
    memory_plan: tuple[int, int],
    redis_plan: tuple[int, int],
    timings: list[Timing],
) -> list[_Group]:
    groups: list[_Group] = []
    admins: list[Any] = []
    try:
        memory = await bench.memory_async()
        groups.append(memory)
        timings += await measure_async(memory.contenders, *memory_plan)
        redis_groups: list[_Group] = []
        if url is not None:
            import redis
            import redis.asyncio

            admin = redis.Redis.from_url(url)
            admins.append(admin)
            raw: Any = redis.asyncio.Redis.from_url(url)
            bench.aclosers.append(raw.aclose)
            redis_groups.append(await bench.redis_async(url, "Redis AsyncCache", [admin], raw))
        if cluster is not None:
            node_admins = [node.client() for node in cluster.nodes]
            admins += node_admins
            redis_groups.append(
                await bench.redis_async(cluster.url, "Redis Cluster AsyncCache", node_admins, None)
            )
        if redis_groups:
            contenders = [c for g in redis_groups for c in g.contenders]
            timings += await measure_async_fixed(contenders, *redis_plan)
            for group in redis_groups:
                for contender in group.contenders:
                    group.counts[contender.name] = await _count_async(contender.fn, group.admins)
        groups += redis_groups
    finally:
        for aclose in bench.aclosers:
            await aclose()
        for admin in admins:
            admin.close()
    return groups


def _report_part2(
    groups: list[_Group],
    timings: list[Timing],
    checks: list[str],
    bench: _HitBench,
    quick: bool,
    redis_plan: tuple[int, int],
) -> dict[str, Any]:
    by_name = {t.name: t for t in timings}
    rounds, sample_ns = redis_plan
    print("\npart 2: hit path, get_or_load with tags against without")
    print(
        "ns/hit = min over round-robin rounds of batch time / calls (median shown); gc off;"
        f" Redis: {rounds} rounds of ~{sample_ns / 1e6:.0f} ms batches."
    )
    print("ratio = this row / the untagged get_or_load row of its group.\n")
    headers = ["contender", "ns/hit (min)", "median", "ratio (min)", "ratio (median)", "commands"]
    rows: list[list[str]] = []
    figures: dict[str, Any] = {}
    ratios: dict[str, Any] = {}
    for group in groups:
        reference = by_name.get(group.untagged)
        for contender in group.contenders:
            timing = by_name[contender.name]
            ratio = timing.best / reference.best if reference else None
            median_ratio = timing.median / reference.median if reference else None
            counts = group.counts.get(contender.name)
            rows.append(
                [
                    contender.name,
                    f"{timing.best:,.0f}",
                    f"{timing.median:,.0f}",
                    "-" if ratio is None else f"{ratio:.3f}",
                    "-" if median_ratio is None else f"{median_ratio:.3f}",
                    _format_counts(counts) if group.admins else "",
                ]
            )
            figures[contender.name] = {
                **timing.as_dict(),
                "ratio": ratio,
                "median_ratio": median_ratio,
                "commands_per_call": counts,
            }
        tagged = by_name.get(group.tagged)
        if reference and tagged:
            ratios[group.title] = {
                "tagged_over_untagged": tagged.best / reference.best,
                "median": tagged.median / reference.median,
            }
    print(table(headers, rows, "<>>>><"))
    print("\ntagged / untagged get_or_load hit:")
    for title, ratio in ratios.items():
        print(f"  {title}: {ratio['tagged_over_untagged']:.3f} (median {ratio['median']:.3f})")
    for note in bench.notes:
        print(f"  {note}")
    print(f"\nsanity: {'; '.join(checks)}")
    if bench.problems:
        print(f"problems ({len(bench.problems)}):")
        for problem in bench.problems:
            print(f"  {problem}")
    return {
        "unit": "ns per hit",
        "quick": quick,
        "contenders": figures,
        "tagged_over_untagged": ratios,
        "problems": bench.problems,
        "notes": bench.notes,
    }


# ======================================================================= targets


def _target(subject: str, passed: bool | None, summary: str, **extra: Any) -> dict[str, Any]:
    label = "SKIPPED" if passed is None else verdict(passed)
    print(f"  {summary}  {label}")
    return {"subject": subject, "passed": passed, "summary": summary, **extra}


def _targets(part1: dict[str, Any], part2: dict[str, Any] | None) -> list[dict[str, Any]]:
    print("\ntargets:")
    targets: list[dict[str, Any]] = []
    subjects = part1["subjects"]
    for name in ("cachewise memory", "cachewise Redis"):
        figures = subjects.get(name)
        ratio = figures["max_over_min"] if figures else None
        subject = f"{name} invalidate_tags flat"
        if ratio is None:
            targets.append(_target(subject, None, f"{subject}: not measured"))
        else:
            summary = f"{subject}: max/min of medians across N = {ratio:.2f} (<= {FLAT_LIMIT})"
            targets.append(
                _target(subject, ratio <= FLAT_LIMIT, summary, ratio=ratio, limit=FLAT_LIMIT)
            )
        subject = f"{name} invalidate_tags correct"
        if figures is None:
            targets.append(_target(subject, None, f"{subject}: not measured"))
        else:
            wrong = [p for p in part1["problems"] if p.startswith(name)]
            summary = f"{subject}: {len(wrong)} failed checks"
            targets.append(_target(subject, not wrong, summary, failed_checks=len(wrong)))
    ratios = part2["tagged_over_untagged"] if part2 else {}
    for title in ("Redis Cache", "Redis AsyncCache"):
        subject = f"{title} tagged get_or_load hit <= {HIT_LIMIT} x untagged"
        ratio = ratios.get(title)
        if ratio is None:
            targets.append(_target(subject, None, f"{subject}: not measured"))
            continue
        value = ratio["tagged_over_untagged"]
        summary = f"{title} tagged/untagged get_or_load hit = {value:.3f} (<= {HIT_LIMIT})"
        targets.append(_target(subject, value <= HIT_LIMIT, summary, ratio=value, limit=HIT_LIMIT))
    return targets


def run(quick: bool) -> dict[str, Any]:
    """Measure invalidation against N, then the hit path; print tables and targets."""
    server, reason = start_server()
    if server is None:
        print(f"Redis skipped: {reason}")
    cluster: Any = None
    cluster_reason: str | None = None
    try:
        url: str | None = server.url if server is not None else None
        if url is not None:
            print(f"private redis-server on {url}")
        part1 = _part1(url, quick)
        if server is not None:
            cluster, cluster_reason = _start_cluster()
            if cluster is not None:
                print(f"\nprivate 3-master Redis Cluster on {cluster.url}")
            else:
                print(f"\nRedis Cluster skipped: {cluster_reason}")
        part2 = _part2(url, cluster, quick)
    finally:
        if cluster is not None:
            cluster.stop()
        if server is not None:
            server.stop()
    targets = _targets(part1, part2)
    return {
        "invalidate": part1,
        "hits": part2,
        "redis_skipped": reason,
        "cluster_skipped": cluster_reason,
        "targets": targets,
    }
