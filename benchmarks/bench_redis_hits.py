"""Nanoseconds per cache hit on Redis: cachewise against a raw GET and its peers.

One private ``redis-server`` (127.0.0.1, a free port; see ``_redis_support``) holds
one warm key per contender, all with the same small JSON value (a dict of 10
fields) and long TTLs. Each contender reads its key once per iteration of
``_common``'s generated loop (``await`` in one coroutine for async ones), gc off.
Contenders run round-robin in many short batches (~15 ms, a few hundred round
trips) and the figure is the minimum over rounds of (batch time / calls); the
median is printed too. Nothing is subtracted: a loopback round trip (tens of µs to
~150 µs here) dominates every figure.

The reference is what cache-aside by hand costs: redis-py ``GET`` of a key holding
plain JSON, then ``json.loads`` (sync), and the same on ``redis.asyncio`` (async);
both clients are plain ``Redis.from_url(url)``. Peers: dogpile.cache's
``dogpile.cache.redis`` region ``get_or_create`` (sync), cashews
``Cache().setup("redis://...")`` ``get`` and aiocache ``RedisCache.get`` (async),
each storing the value its own way (pickle, pickle, JSON).

"breakdown" rows take cachewise's hit apart, layer by layer, in the same run: the
bare ``GET``; ``GET`` + orjson (cachewise's JSON codec uses orjson when installed);
``GET`` + ``json.loads`` on a client with cachewise's 0.25 s socket timeout; the
backend's ``get`` (``GET`` + envelope decode); a bare ``EVALSHA`` of the lease-read
Lua script that ``get_or_load`` sends; and the backend's ``read_or_lease`` (that
script + decode). Server-side microseconds per command, from ``INFO commandstats``,
are printed below the tables.

Targets, reported as PASS/FAIL and never asserted (minimum over rounds):

- ``Cache.get_or_load`` and ``Cache.get`` hit <= 1.10 x redis-py GET + json.loads
- ``AsyncCache.get_or_load`` and ``AsyncCache.get`` hit <= 1.10 x redis.asyncio
  GET + json.loads
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from _common import Contender, Timing, table, verdict
from _redis_support import (
    measure_async_fixed,
    measure_sync_fixed,
    server_usec_per_call,
    start_server,
)

NAME = "redis_hits"

TTL = 300.0
LIMIT = 1.10
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
KEY = "user:42"
RAW_KEY = "raw:user:42"

SYNC_REF = "redis-py GET + json.loads"
ASYNC_REF = "redis.asyncio GET + json.loads"
SYNC_GOL = "cachewise Cache.get_or_load"
SYNC_GET = "cachewise Cache.get"
ASYNC_GOL = "cachewise AsyncCache.get_or_load"
ASYNC_GET = "cachewise AsyncCache.get"
BREAKDOWN = "breakdown: "

TARGETS = (
    (SYNC_GOL, SYNC_REF),
    (SYNC_GET, SYNC_REF),
    (ASYNC_GOL, ASYNC_REF),
    (ASYNC_GET, ASYNC_REF),
)


def _loader() -> dict[str, Any]:
    return VALUE


async def _aloader() -> dict[str, Any]:
    return VALUE


def _expect(name: str, got: Any) -> None:
    if got != VALUE:
        raise RuntimeError(f"{name}: the warm key gave {got!r}, not the value")


def _read_script_call(key: str) -> tuple[str, list[Any]]:
    """``EVALSHA`` arguments of the lease-read script, as ``RedisBackend`` sends them
    for a hit (keys layout and script from cachewise's Redis backend)."""
    from cachewise.backends import _lua

    base = "{" + key + "}"
    keys = [base, base + ":lease", base + ":waiters"]
    return hashlib.sha1(_lua.READ.encode()).hexdigest(), [3, *keys, secrets.token_hex(8), 5000]


class _Sync:
    """The sync contenders, warmed, plus their sanity checks and clean-up."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.contenders: list[Contender] = []
        self.closers: list[Callable[[], None]] = []
        self.checks: list[Callable[[], str]] = []
        self.skipped: dict[str, str] = {}

    def build(self) -> None:
        import redis

        from cachewise import Cache

        url = self.url
        raw: Any = redis.Redis.from_url(url)
        self.closers.append(raw.close)
        raw.set(RAW_KEY, json.dumps(VALUE), ex=int(TTL))

        def raw_get_json(key: str) -> Any:
            return json.loads(raw.get(key))

        _expect("raw", raw_get_json(RAW_KEY))

        cache = Cache.from_url(url, ttl=TTL)
        self.closers.insert(0, cache.close)
        _expect("cachewise", cache.get_or_load(KEY, _loader))
        _expect("cachewise get", cache.get(KEY))
        self.contenders += [
            Contender(SYNC_GOL, cache.get_or_load, (KEY, _loader)),
            Contender(SYNC_GET, cache.get, (KEY,)),
            Contender(SYNC_REF, raw_get_json, (RAW_KEY,)),
        ]

        def check_cachewise() -> str:
            stats = cache.stats()
            if stats.loads > 1 or stats.early_refreshes or stats.backend_errors:
                raise RuntimeError(f"cachewise Cache did not only hit: {stats}")
            return f"Cache: {stats.hits:,} hits, {stats.loads} load"

        self.checks.append(check_cachewise)
        self._dogpile(url)
        self._breakdown(raw, cache)

    def _dogpile(self, url: str) -> None:
        name = "dogpile.cache.redis region.get_or_create"
        try:
            from dogpile.cache import make_region
        except ImportError as exc:
            self.skipped[name] = str(exc)
            return
        created: list[int] = []

        def creator() -> dict[str, Any]:
            created.append(1)
            return VALUE

        region: Any = make_region().configure(
            "dogpile.cache.redis", expiration_time=TTL, arguments={"url": url}
        )
        _expect("dogpile", region.get_or_create("dogpile:" + KEY, creator))
        self.contenders.append(
            Contender(
                name,
                region.get_or_create,
                ("dogpile:" + KEY, creator),
                note="stores a pickled CachedValue (value + metadata)",
            )
        )
        self.checks.append(lambda: f"dogpile: {len(created)} creator call")
        self.closers.append(region.backend.writer_client.close)

    def _breakdown(self, raw: Any, cache: Any) -> None:
        import redis

        backend = cache.backend
        client = backend.client
        timed: Any = redis.Redis.from_url(
            self.url, socket_timeout=0.25, socket_connect_timeout=0.25
        )
        self.closers.append(timed.close)

        def get_only(key: str) -> Any:
            return raw.get(key)

        def get_json_timeout(key: str) -> Any:
            return json.loads(timed.get(key))

        sha, args = _read_script_call(KEY)

        def evalsha_read(mode: str) -> Any:
            return client.execute_command("EVALSHA", sha, *args, mode)

        token = secrets.token_hex(8)

        def read_or_lease(key: str) -> Any:
            return backend.read_or_lease(key, token, "lease")

        _expect("breakdown read_or_lease", read_or_lease(KEY).entry.value)
        if evalsha_read("lease")[0] is None:
            raise RuntimeError("the lease-read script found no value: key layout changed?")
        self.contenders.append(
            Contender(BREAKDOWN + "redis-py GET (no decode)", get_only, (RAW_KEY,))
        )
        orjson_name = BREAKDOWN + "redis-py GET + orjson.loads"
        try:
            import orjson
        except ImportError as exc:
            self.skipped[orjson_name] = str(exc)
        else:
            loads = orjson.loads

            def get_orjson(key: str) -> Any:
                return loads(raw.get(key))

            _expect("breakdown get+orjson", get_orjson(RAW_KEY))
            self.contenders.append(Contender(orjson_name, get_orjson, (RAW_KEY,)))
        self.contenders += [
            Contender(
                BREAKDOWN + "redis-py GET + json.loads, 0.25 s socket timeout",
                get_json_timeout,
                (RAW_KEY,),
            ),
            Contender(BREAKDOWN + "RedisBackend.get (GET + envelope decode)", backend.get, (KEY,)),
            Contender(
                BREAKDOWN + "EVALSHA lease-read script (no decode)", evalsha_read, ("lease",)
            ),
            Contender(
                BREAKDOWN + "RedisBackend.read_or_lease (script + decode)", read_or_lease, (KEY,)
            ),
        ]


class _Async:
    """The async contenders; built inside the running event loop."""

    def __init__(self, url: str, port: int) -> None:
        self.url = url
        self.port = port
        self.contenders: list[Contender] = []
        self.closers: list[Callable[[], Awaitable[Any]]] = []
        self.checks: list[Callable[[], str]] = []
        self.skipped: dict[str, str] = {}

    async def build(self) -> None:
        import redis.asyncio

        from cachewise import AsyncCache

        url = self.url
        raw: Any = redis.asyncio.Redis.from_url(url)
        self.closers.append(raw.aclose)

        async def raw_get_json(key: str) -> Any:
            return json.loads(await raw.get(key))

        async def raw_get(key: str) -> Any:
            return await raw.get(key)

        _expect("raw async", await raw_get_json(RAW_KEY))

        cache = AsyncCache.from_url(url, ttl=TTL)
        self.closers.insert(0, cache.aclose)
        _expect("cachewise async", await cache.get_or_load(KEY, _aloader))
        _expect("cachewise async get", await cache.get(KEY))
        backend: Any = cache.backend
        token = secrets.token_hex(8)

        async def read_or_lease(key: str) -> Any:
            return await backend.read_or_lease(key, token, "lease")

        _expect("async read_or_lease", (await read_or_lease(KEY)).entry.value)
        self.contenders += [
            Contender(ASYNC_GOL, cache.get_or_load, (KEY, _aloader), is_async=True),
            Contender(ASYNC_GET, cache.get, (KEY,), is_async=True),
            Contender(ASYNC_REF, raw_get_json, (RAW_KEY,), is_async=True),
        ]

        def check_cachewise() -> str:
            stats = cache.stats()
            if stats.loads > 1 or stats.early_refreshes or stats.backend_errors:
                raise RuntimeError(f"cachewise AsyncCache did not only hit: {stats}")
            return (
                f"AsyncCache: {stats.hits:,} hits, {stats.loads} loads (the sync run wrote the key)"
            )

        self.checks.append(check_cachewise)
        await self._cashews()
        await self._aiocache()
        self.contenders += [
            Contender(
                BREAKDOWN + "redis.asyncio GET (no decode)", raw_get, (RAW_KEY,), is_async=True
            ),
            Contender(
                BREAKDOWN + "AsyncRedisBackend.read_or_lease (script + decode)",
                read_or_lease,
                (KEY,),
                is_async=True,
            ),
        ]

    async def _cashews(self) -> None:
        name = "cashews redis:// get"
        try:
            from cashews import Cache as CashewsCache
        except ImportError as exc:
            self.skipped[name] = str(exc)
            return
        cashews: Any = CashewsCache()
        cashews.setup(self.url)
        await cashews.set("cashews:" + KEY, VALUE, expire=TTL)
        _expect("cashews", await cashews.get("cashews:" + KEY))
        self.contenders.append(
            Contender(
                name,
                cashews.get,
                ("cashews:" + KEY,),
                is_async=True,
                note="cashews pickles values by default",
            )
        )
        self.closers.append(cashews.close)

    async def _aiocache(self) -> None:
        name = "aiocache RedisCache.get"
        try:
            from aiocache import RedisCache  # type: ignore[import-untyped]
        except ImportError as exc:
            self.skipped[name] = str(exc)
            return
        aio: Any = RedisCache(endpoint="127.0.0.1", port=self.port)
        await aio.set("aiocache:" + KEY, VALUE, ttl=int(TTL))
        _expect("aiocache", await aio.get("aiocache:" + KEY))
        self.contenders.append(
            Contender(
                name,
                aio.get,
                ("aiocache:" + KEY,),
                is_async=True,
                note="aiocache's default JsonSerializer (json.loads), plus its timeout wrapper",
            )
        )
        self.closers.append(aio.close)


def _rows(timings: list[Timing], ref: str) -> tuple[list[list[str]], dict[str, Any]]:
    by_name = {t.name: t for t in timings}
    reference = by_name.get(ref)
    rows: list[list[str]] = []
    figures: dict[str, Any] = {}
    for timing in timings:
        ratio = timing.best / reference.best if reference else None
        median_ratio = timing.median / reference.median if reference else None
        extra = timing.best - reference.best if reference else None
        rows.append(
            [
                timing.name,
                f"{timing.best:,.0f}",
                f"{timing.median:,.0f}",
                "-" if extra is None else f"{extra:+,.0f}",
                "-" if ratio is None else f"{ratio:.3f}",
                "-" if median_ratio is None else f"{median_ratio:.3f}",
            ]
        )
        figures[timing.name] = {
            **timing.as_dict(),
            "ratio": ratio,
            "median_ratio": median_ratio,
            "extra_ns": extra,
        }
    return rows, figures


def _target(subject: str, ref: str, timings: dict[str, Timing]) -> dict[str, Any]:
    if subject not in timings or ref not in timings:
        summary = f"{subject} <= {LIMIT} x {ref}: a contender is missing"
        print(f"  {summary}  SKIPPED")
        return {
            "subject": subject,
            "reference": ref,
            "limit": LIMIT,
            "passed": None,
            "summary": summary,
        }
    ratio = timings[subject].best / timings[ref].best
    median_ratio = timings[subject].median / timings[ref].median
    passed = ratio <= LIMIT
    summary = f"{subject} / {ref} = {ratio:.3f} (median {median_ratio:.3f}; target <= {LIMIT})"
    print(f"  {summary}  {verdict(passed)}")
    return {
        "subject": subject,
        "reference": ref,
        "limit": LIMIT,
        "ratio": ratio,
        "median_ratio": median_ratio,
        "passed": passed,
        "summary": summary,
    }


def _skipped_result(reason: str) -> dict[str, Any]:
    print(f"skipped: {reason}")
    targets = [
        {
            "subject": subject,
            "reference": ref,
            "limit": LIMIT,
            "passed": None,
            "summary": f"{subject} <= {LIMIT} x {ref}: skipped ({reason})",
        }
        for subject, ref in TARGETS
    ]
    return {"skipped": reason, "targets": targets}


def _server_line(label: str, usec: dict[str, float]) -> str:
    parts = [f"{name} {usec[name]:.2f}" for name in ("get", "evalsha") if name in usec]
    return f"  {label}: " + ", ".join(parts) + " µs per call (a script's inner GET counts as a GET)"


def run(quick: bool) -> dict[str, Any]:
    """Time every contender's hit on a private Redis; print tables and targets."""
    rounds, sample_ns = (9, 5_000_000) if quick else (81, 15_000_000)
    server, reason = start_server()
    if server is None:
        return _skipped_result(reason or "no Redis server")
    try:
        return _run(server, rounds, sample_ns)
    finally:
        server.stop()


def _run(server: Any, rounds: int, sample_ns: int) -> dict[str, Any]:
    url: str = server.url
    admin: Any = server.client()
    headers = ["contender", "ns/hit (min)", "median", "+ns vs ref", "ratio (min)", "ratio (median)"]

    sync = _Sync(url)
    try:
        sync.build()
        admin.config_resetstat()
        sync_timings = measure_sync_fixed(sync.contenders, rounds, sample_ns)
        sync_server = server_usec_per_call(admin.info("commandstats"))
        sync_checks = [check() for check in sync.checks]
    finally:
        for close in sync.closers:
            close()

    aio = _Async(url, server.port)

    async def async_part() -> list[Timing]:
        try:
            await aio.build()
            admin.config_resetstat()
            return await measure_async_fixed(aio.contenders, rounds, sample_ns)
        finally:
            for aclose in aio.closers:
                await aclose()

    async_timings = asyncio.run(async_part())
    async_server = server_usec_per_call(admin.info("commandstats"))
    async_checks = [check() for check in aio.checks]
    admin.close()

    print(
        f"private redis-server on {url}; {rounds} rounds per contender, round-robin, "
        f"~{sample_ns / 1e6:.0f} ms batches; gc off."
    )
    print("ns/hit = min over rounds of batch time / calls (a loopback round trip included).")
    print("ratio (min) is the one checked against the targets.\n")
    sync_rows, sync_figures = _rows(sync_timings, SYNC_REF)
    print(f"sync hits (vs {SYNC_REF}):")
    print(table(headers, sync_rows, "<>>>>>"))
    print()
    async_rows, async_figures = _rows(async_timings, ASYNC_REF)
    print(f"async hits (vs {ASYNC_REF}; one coroutine, await per call):")
    print(table(headers, async_rows, "<>>>>>"))
    print("\nserver time (INFO commandstats over each phase):")
    print(_server_line("sync phase", sync_server))
    print(_server_line("async phase", async_server))
    for contender in sync.contenders + aio.contenders:
        if contender.note:
            print(f"  note, {contender.name}: {contender.note}")
    for name, why in {**sync.skipped, **aio.skipped}.items():
        print(f"  skipped {name}: {why}")
    print(f"\nsanity: {'; '.join(sync_checks + async_checks)}")
    print("\ntargets (min over rounds):")
    by_name = {t.name: t for t in sync_timings + async_timings}
    targets = [_target(subject, ref, by_name) for subject, ref in TARGETS]
    return {
        "unit": "ns per hit",
        "method": "min over round-robin rounds of batch time / calls; fixed batch per "
        "contender; nothing subtracted; gc disabled while timing",
        "rounds": rounds,
        "sample_ns": sample_ns,
        "value_fields": len(VALUE),
        "sync_reference": SYNC_REF,
        "async_reference": ASYNC_REF,
        "sync": sync_figures,
        "async": async_figures,
        "server_usec_per_call": {"sync": sync_server, "async": async_server},
        "skipped": {**sync.skipped, **aio.skipped},
        "targets": targets,
    }
