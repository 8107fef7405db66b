"""The workloads: threads on a ``Cache`` and tasks on an ``AsyncCache`` that read and
write a few hot keys at random until the run ends, recording every call.

A read is ``get_or_load`` (most), ``get``, a ``cached`` function or ``get_many``;
it records the version it returned. A write commits the next version of a key to
the store, then invalidates the cache (by key, tag, version bump, ``set``,
``clear``, or through an after-commit helper) and records both. The loader reads
the store with a short random pause before and after, so a load that read old data
is still on its way when the write's invalidation runs: the race every guarantee is
about.

One process runs one ``World``; a forked child gets a copy of it, a spawned peer
builds its own. Every call runs under the world's watchdog.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import math
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from cachewise import MISSING, AsyncCache, Cache, MemoryBackend
from tests.history.configs import Config
from tests.history.recorder import Pending, Recorder, Watchdog, now
from tests.history.stores import UPDATE_RETURNING, SqliteStore, Store

__all__ = ["KEYS", "Env", "World", "run_world"]

#: The hot keys every actor reads and writes, one much hotter than the others (the
#: races need two callers on one key at one moment).
KEYS = tuple(f"item:{n}" for n in range(4))
KEY_WEIGHTS = (4, 2, 1, 1)
#: The tag every entry carries besides its own ``k:<key>`` (in tagged configs).
ALL_TAG = "all"
#: The cold groups (mix configs): filled with set_many() while their tags have no
#: version yet, written together and invalidated by their tags, then read with
#: get_many() while a clear() runs. The shape of break 2; ten groups, so that some
#: tag is deleted in an earlier SCAN batch than some of its entries.
COLD = tuple(f"cold:{n}" for n in range(100))
COLD_GROUPS = tuple(f"group:{g}" for g in range(10))
#: Seconds between two rounds of the cold group (actor 0 of mix configs).
COLD_EVERY = 0.05
#: Share of an actor's calls that are writes.
WRITE_SHARE = 0.25
#: Longest pauses a loader takes before and after reading the store: the second is
#: the longer, as the value it read ages on its way to the cache (the window that
#: every "a delete wins" guarantee is about).
PAUSE_BEFORE = 0.001
PAUSE_AFTER = 0.008
#: Version bumps per world at most (each makes a cache).
MAX_BUMPS = 40
#: Entries written before a clear() on Redis, so that it takes several SCAN batches
#: (the window in which a clear used to resurrect tag-invalidated entries). A
#: cluster's clear goes node by node and slot by slot: it needs none.
FILLER = {"memory": 0, "redis": 3000, "cluster": 0}
#: Every Redis URL gets these: a lease outlives no load here, and a waiter gives up
#: well inside the harness's deadline.
REDIS_OPTIONS = "lock_timeout=1&wait_timeout=2"
#: How often each process samples its pending invalidations.
SAMPLE_EVERY = 0.01

#: Reads: (how, weight).
READS = (("get_or_load", 70), ("cached", 15), ("get", 10), ("get_many", 5))

# Actors per world, by front end: (threads on a Cache, tasks on an AsyncCache).
ACTORS = {
    "sync": (4, 0),
    "async": (0, 8),
    "both": (4, 4),
    "procs": (8, 0),  # and the spawned peer runs PEER_ACTORS
    "fork": (3, 0),  # and so does the forked child, on the inherited Cache
}
PEER_ACTORS = (0, 8)


@dataclass(frozen=True)
class Env:
    """Where a run happens: the Redis URL (``None`` for memory), a private temporary
    directory, the per-call deadline, the seed, and the file that says when the
    workload started (the fault injector waits for it)."""

    url: str | None
    tmpdir: str
    deadline: float = 5.0
    seed: int = 0
    seconds: float = 0.6
    ready_file: str | None = None

    @property
    def db_path(self) -> str:
        return os.path.join(self.tmpdir, "store.sqlite")


def redis_url(url: str) -> str:
    """``url`` with the harness's Redis options."""
    return url + ("&" if "?" in url else "?") + REDIS_OPTIONS


def cache_options(config: Config, seed: str) -> dict[str, Any]:
    """Options of every cache of a run: a long TTL (a stale entry stays to be seen),
    or short ones with stale-while-revalidate and XFetch switched on."""
    options: dict[str, Any] = {"ttl": 30.0, "rng": random.Random(seed)}
    if config.swr:
        options.update(ttl=0.05, stale_ttl=1.0, early_refresh=0.0)
    if config.early:
        options.update(ttl=0.1, early_refresh=20.0)
    return options


def item_number(key: str) -> int:
    return int(key.removeprefix("item:"))


class World:
    """What the actors of one process share: config, store, caches, recorder,
    watchdog, and when to stop."""

    def __init__(
        self,
        config: Config,
        env: Env,
        store: Store,
        recorder: Recorder,
        watchdog: Watchdog,
        *,
        label: str = "main",
        actors: tuple[int, int] | None = None,
    ) -> None:
        self.config = config
        self.env = env
        self.store = store
        self.recorder = recorder
        self.watchdog = watchdog
        self.label = label
        self.sync_actors, self.async_actors = actors or ACTORS[config.frontend]
        self.seconds = env.seconds
        self.end_at = math.inf
        self.rng = random.Random(f"{env.seed}:{label}")
        self.memory = MemoryBackend() if config.backend == "memory" else None
        self.url = redis_url(env.url) if env.url is not None else None
        self.caches: list[Cache | AsyncCache] = []  # every cache made, owners first
        self.sync_cache: Cache | None = None
        self.async_cache: AsyncCache | None = None
        self.sync_fn: Any = None  # the cached function on sync_cache
        self.async_fn: Any = None
        self.versions = itertools.count(2)  # versioned caches start at 1
        self.bumps = 0
        self.bump_lock = threading.Lock()
        # Writers of one key take turns where set() is mixed in (see SyncActor.write).
        self.key_locks = {key: threading.Lock() for key in KEYS}
        self.async_key_locks: dict[str, asyncio.Lock] = {}  # made in the world's loop
        self.loop_ready = threading.Event()
        self.release = threading.Event()  # lets the "hang" loader of a self-test go
        self.worlds: list[Recorder] = []  # forked memory children: worlds of their own
        self.children: list[Callable[[], None]] = []  # joins of child processes
        self._engine: Any = None
        self._preload()

    def _preload(self) -> None:
        """Import what the writes need now: an import in the middle of the run holds
        the import lock for a while and skews it (SQLAlchemy takes half a second)."""
        if self.config.invalidation == "dbapi":
            import cachewise.integrations.dbapi

            if self.async_actors:
                import aiosqlite  # noqa: F401
        if self.config.invalidation == "sqlalchemy":
            import cachewise.integrations.sqlalchemy  # noqa: F401

            self.engine()

    # -- time ------------------------------------------------------------------------

    def done(self) -> bool:
        return now() >= self.end_at or self.watchdog.tripped.is_set()

    # -- what reads and writes need ----------------------------------------------------

    def tags(self, key: str) -> list[str]:
        return [f"k:{key}", ALL_TAG] if self.config.tagged else []

    def load(self, key: str, rng: random.Random) -> int:
        """A loader's body (sync): pause, read the store, pause (the value ages)."""
        if self.config.broken == "hang":
            self.release.wait(60)
        time.sleep(rng.random() * PAUSE_BEFORE)
        version = self.store.read(key)
        time.sleep(rng.random() * PAUSE_AFTER)
        return version

    async def aload(self, key: str, rng: random.Random) -> int:
        if self.config.broken == "hang":
            limit = now() + 60
            while not self.release.is_set() and now() < limit:
                await asyncio.sleep(0.01)
        await asyncio.sleep(rng.random() * PAUSE_BEFORE)
        version = self.store.read(key)
        await asyncio.sleep(rng.random() * PAUSE_AFTER)
        return version

    def filler(self) -> dict[str, int]:
        return {f"fill:{i}": i for i in range(FILLER[self.config.backend])}

    def held(self) -> bool:
        """Whether any cache of this process holds invalidations it could not send."""
        return any(cache.stats().invalidations_pending != 0 for cache in list(self.caches))

    def engine(self) -> Any:
        if self._engine is None:
            from sqlalchemy import create_engine, event

            assert isinstance(self.store, SqliteStore)
            engine = create_engine(self.store.sqlalchemy_url, connect_args={"timeout": 30})
            event.listen(engine, "connect", lambda conn, _: conn.execute("PRAGMA synchronous=OFF"))
            self._engine = engine
        return self._engine

    # -- caches ------------------------------------------------------------------------

    def _options(self, flavour: str) -> dict[str, Any]:
        options = cache_options(self.config, f"{self.env.seed}:{self.label}:{flavour}")
        if self.config.invalidation == "versions":
            options["version"] = 1
        return options

    def new_sync_cache(self, version: int | None = None) -> Cache:
        cache: Cache = self._new_cache(Cache, "sync", version)
        return cache

    def new_async_cache(self, version: int | None = None) -> AsyncCache:
        """Called in the world's event loop."""
        cache: AsyncCache = self._new_cache(AsyncCache, "async", version)
        return cache

    def _new_cache(self, cls: Any, flavour: str, version: int | None) -> Any:
        options = self._options(flavour)
        owner = next((c for c in self.caches if isinstance(c, cls)), None)
        if version is not None:
            options["version"] = version
        if self.memory is not None:
            cache = cls(self.memory, **options)
        elif owner is not None:  # a version bump: the new cache shares the backend
            cache = cls(owner.backend, **options)
        else:
            assert self.url is not None
            cache = cls.from_url(self.url, **options)
        self.caches.append(cache)
        return cache

    def decorate_sync(self, cache: Cache) -> Any:
        rng = random.Random(f"{self.env.seed}:{self.label}:cached")

        def item(n: int) -> int:
            return self.load(f"item:{n}", rng)

        tags = ["k:item:{n}", ALL_TAG] if self.config.tagged else []
        fn = cache.cached("item:{n}", tags=tags)(item)
        assert fn.key_for(3) == "item:3"  # the same entry get_or_load reads
        return fn

    def decorate_async(self, cache: AsyncCache) -> Any:
        rng = random.Random(f"{self.env.seed}:{self.label}:acached")

        async def item(n: int) -> int:
            return await self.aload(f"item:{n}", rng)

        tags = ["k:item:{n}", ALL_TAG] if self.config.tagged else []
        fn = cache.cached("item:{n}", tags=tags)(item)
        assert fn.key_for(3) == "item:3"
        return fn

    def can_bump(self) -> bool:
        return self.config.invalidation == "versions" and self.bumps < MAX_BUMPS

    def bump_sync(self) -> None:
        """Move to a new cache version; readers that start after this returns use it."""
        with self.bump_lock:
            self.bumps += 1
            self.sync_cache = self.new_sync_cache(next(self.versions))

    def bump_async(self) -> None:
        # No await inside: atomic for the other tasks of the loop.
        self.bumps += 1
        self.async_cache = self.new_async_cache(next(self.versions))

    # -- forks -----------------------------------------------------------------------

    def forked(self, recorder: Recorder, watchdog: Watchdog) -> World:
        """This world as a freshly forked child continues it: the same caches and
        store, new locks and events (a parent thread may have held the old ones)."""
        child = copy.copy(self)
        child.recorder, child.watchdog, child.label = recorder, watchdog, "child"
        child.seconds = max(self.end_at - now(), 0.2)
        child.end_at = math.inf
        child.rng = random.Random(f"{self.env.seed}:child")
        child.bump_lock = threading.Lock()
        child.key_locks = {key: threading.Lock() for key in KEYS}
        child.async_key_locks = {}
        child.loop_ready, child.release = threading.Event(), threading.Event()
        child.worlds, child.children, child._engine = [], [], None
        child.env = Env(**{**asdict(self.env), "ready_file": None})
        return child


# -- sync actors ---------------------------------------------------------------------------


class SyncActor:
    """A thread's loop of random reads and writes on the world's ``Cache``."""

    def __init__(self, world: World, index: int) -> None:
        self.w = world
        self.rng = random.Random(f"{world.env.seed}:{world.label}:sync:{index}")
        self.conn: Any = None  # the DB-API connection of after-commit writes
        self.next_cold = now() if index == 0 and world.config.mix else math.inf

    def run(self) -> None:
        w = self.w
        try:
            while not w.done():
                key = self.rng.choices(KEYS, KEY_WEIGHTS)[0]
                roll = self.rng.random()
                what = "write" if roll < WRITE_SHARE else "read"
                try:
                    if now() >= self.next_cold:
                        what = "cold group"
                        self.cold_group()
                        self.next_cold = now() + COLD_EVERY
                    elif roll < WRITE_SHARE:
                        self.write(key)
                    elif w.config.mix and roll > 0.995:
                        what = "clear"
                        self.plain_clear()
                    else:
                        self.read(key)
                except Exception as exc:
                    w.recorder.error(f"{what}({key!r})", exc)
        finally:
            if self.conn is not None:
                self.conn.close()

    def read(self, key: str) -> None:
        w, rec = self.w, self.w.recorder
        how = self.rng.choices([r[0] for r in READS], [r[1] for r in READS])[0]
        if (how == "cached" and w.sync_fn is None) or (how == "get_many" and not w.config.mix):
            how = "get_or_load"
        start = now()
        cache = w.sync_cache  # taken after start: a version bump that returned is seen
        assert cache is not None
        value: Any
        with w.watchdog.call(f"{how}({key!r})"):
            if how == "get_or_load":
                rng = self.rng
                value = cache.get_or_load(key, lambda: w.load(key, rng), tags=w.tags(key))
            elif how == "cached":
                value = w.sync_fn(item_number(key))
            elif how == "get":
                value = cache.get(key)
            else:
                keys = self.rng.sample(KEYS, 3)
                for got, version in cache.get_many(keys).items():
                    rec.read(got, version, start, how)
                return
        if value is MISSING:
            rec.other("get (a miss)", start)
        else:
            rec.read(key, value, start, how)

    def write(self, key: str) -> None:
        w, config = self.w, self.w.config
        lock = w.key_locks[key] if config.mix else contextlib.nullcontext()
        # set() writes the version it read: writers of one key take turns, or an
        # older set could land after a newer write (a harness race, not the cache's).
        with lock, w.watchdog.call(f"write({key!r})"):
            if config.broken == "invalidate-first":
                start = now()
                how, _ = self.invalidate(key, 0)
                time.sleep(PAUSE_AFTER)  # a slow commit: loads meanwhile read the old version
                version = w.store.write(key)
                w.recorder.write(key, version, now(), start, f"{how}, then commit")
            elif config.broken == "no-invalidate":
                version = w.store.write(key)
                w.recorder.write(key, version, now(), now(), "nothing")
            elif config.invalidation in ("dbapi", "sqlalchemy"):
                self.write_after_commit(key)
            else:
                version = w.store.write(key)
                committed = now()
                how, version = self.invalidate(key, version)
                w.recorder.write(key, version, committed, committed, how, held=w.held())

    def invalidate(self, key: str, version: int) -> tuple[str, int]:
        """Invalidate ``key`` after its commit, one way or another; what was done, and
        the version the write stands for (``set`` stores the one it read)."""
        w, cache, roll = self.w, self.w.sync_cache, self.rng.random()
        assert cache is not None
        if w.config.mix and roll < 0.15:
            value = w.store.read(key)
            cache.set(key, value, tags=w.tags(key))
            return "set", value
        if w.config.mix and roll < 0.2:
            cache.clear()
            return "clear", version
        if w.config.invalidation == "tags":
            tag = ALL_TAG if roll > 0.9 else f"k:{key}"
            cache.invalidate_tags(tag)
            return f"invalidate_tags({tag})", version
        if w.can_bump() and roll < 0.3:
            w.bump_sync()
            return "version bump", version
        if roll < 0.25:
            cache.delete_many([key])
            return "delete_many", version
        if roll < 0.45 and w.sync_fn is not None:
            w.sync_fn.invalidate(item_number(key))
            return "cached.invalidate", version
        cache.delete(key)
        return "delete", version

    def write_after_commit(self, key: str) -> None:
        w = self.w
        by_tag = w.config.tagged and self.rng.random() < 0.4
        keys, tags = ([], [f"k:{key}"]) if by_tag else ([key], [])
        how = f"{w.config.invalidation} after commit ({'tag' if by_tag else 'key'})"
        cache = w.sync_cache
        assert cache is not None
        if w.config.invalidation == "dbapi":
            from cachewise.integrations.dbapi import transaction

            assert isinstance(w.store, SqliteStore)
            if self.conn is None:
                self.conn = w.store.connect()
            with transaction(self.conn, cache, keys=keys, tags=tags):
                version = self.conn.execute(UPDATE_RETURNING, (key,)).fetchone()[0]
                start = now()  # the commit, then the invalidation, as the block exits
        else:
            from sqlalchemy import text
            from sqlalchemy.orm import Session

            from cachewise.integrations.sqlalchemy import invalidate_after_commit

            statement = text(UPDATE_RETURNING.replace("?", ":key"))
            with Session(w.engine()) as session, session.begin():
                version = session.execute(statement, {"key": key}).scalar_one()
                invalidate_after_commit(session, cache, keys=keys, tags=tags)
                start = now()
        w.recorder.write(key, int(version), start, start, how, held=w.held())

    def cold_group(self) -> None:
        """Fill the cold groups, write them all and invalidate their tags, then clear
        while a second thread reads them with get_many()."""
        w, cache = self.w, self.w.sync_cache
        assert cache is not None
        with w.watchdog.call("cold groups: fill"):
            for index, tag in enumerate(COLD_GROUPS):
                group = COLD[index :: len(COLD_GROUPS)]
                cache.set_many({key: w.store.read(key) for key in group}, tags=[tag])
            cache.set_many(w.filler())  # enough keys for the clear to take several batches
        with w.watchdog.call("cold groups: write"):
            versions = {key: w.store.write(key) for key in COLD}
            committed = now()
            cache.invalidate_tags(*COLD_GROUPS)
            _record_cold_writes(w, versions, committed)
        stop = threading.Event()
        reader = threading.Thread(
            target=self.read_cold, args=(cache, stop), name=f"{w.label}-cold", daemon=True
        )
        reader.start()
        time.sleep(0.001)  # the reader is under way before the clear starts
        with w.watchdog.call("cold groups: clear"):
            start = now()
            cache.clear()
            w.recorder.other("clear()", start)
            stop.set()
            reader.join()

    def read_cold(self, cache: Cache, stop: threading.Event) -> None:
        """get_many() over the group, again and again (no reload: an invalidated
        entry stays as it was)."""
        w = self.w
        with w.watchdog.call("get_many() over the cold group"):
            while not stop.is_set():
                start = now()
                for key, value in cache.get_many(COLD).items():
                    w.recorder.read(key, value, start, "get_many")

    def plain_clear(self) -> None:
        """A clear() that is no write: on Redis, after enough entries to take several
        SCAN batches."""
        w = self.w
        assert w.sync_cache is not None
        with w.watchdog.call("clear()"):
            w.sync_cache.set_many(w.filler())
            start = now()
            w.sync_cache.clear()
        w.recorder.other("clear()", start)


def _record_cold_writes(world: World, versions: dict[str, int], committed: float) -> None:
    for key, version in versions.items():
        world.recorder.write(key, version, committed, committed, "invalidate_tags(group)")


# -- async actors --------------------------------------------------------------------------


class AsyncActor:
    """A task's loop of random reads and writes on the world's ``AsyncCache``."""

    def __init__(self, world: World, index: int) -> None:
        self.w = world
        self.rng = random.Random(f"{world.env.seed}:{world.label}:async:{index}")
        self.conn: Any = None  # aiosqlite connection of after-commit writes
        self.next_cold = now() if index == 0 and world.config.mix else math.inf

    async def run(self) -> None:
        w = self.w
        try:
            while not w.done():
                key = self.rng.choices(KEYS, KEY_WEIGHTS)[0]
                roll = self.rng.random()
                what = "write" if roll < WRITE_SHARE else "read"
                try:
                    if now() >= self.next_cold:
                        what = "cold group"
                        await self.cold_group()
                        self.next_cold = now() + COLD_EVERY
                    elif roll < WRITE_SHARE:
                        await self.write(key)
                    elif w.config.mix and roll > 0.995:
                        what = "clear"
                        await self.plain_clear()
                    else:
                        await self.read(key)
                except Exception as exc:
                    w.recorder.error(f"{what}({key!r})", exc)
                await asyncio.sleep(0)  # a hit path that never yields must not starve others
        finally:
            if self.conn is not None:
                await self.conn.close()

    async def read(self, key: str) -> None:
        w = self.w
        how = self.rng.choices([r[0] for r in READS], [r[1] for r in READS])[0]
        if (how == "cached" and w.async_fn is None) or (how == "get_many" and not w.config.mix):
            how = "get_or_load"
        if w.config.cancel and how == "get_or_load" and self.rng.random() < 0.5:
            await self.cancelled_read(key)
        else:
            await self.read_once(key, how)

    async def read_once(self, key: str, how: str) -> None:
        w, rec = self.w, self.w.recorder
        start = now()
        cache = w.async_cache  # taken after start: a version bump that returned is seen
        assert cache is not None
        value: Any
        with w.watchdog.call(f"{how}({key!r})"):
            if how == "get_or_load":
                rng = self.rng
                value = await cache.get_or_load(key, lambda: w.aload(key, rng), tags=w.tags(key))
            elif how == "cached":
                value = await w.async_fn(item_number(key))
            elif how == "get":
                value = await cache.get(key)
            else:
                keys = self.rng.sample(KEYS, 3)
                for got, version in (await cache.get_many(keys)).items():
                    rec.read(got, version, start, how)
                return
        if value is MISSING:
            rec.other("get (a miss)", start)
        else:
            rec.read(key, value, start, how)

    async def cancelled_read(self, key: str) -> None:
        """A waiter cancelled at a random moment (a request timeout, a client gone):
        the read is recorded only if it finished first."""
        start = now()
        name = f"{asyncio.current_task().get_name()}-cancellable"  # type: ignore[union-attr]
        task = asyncio.create_task(self.read_once(key, "get_or_load"), name=name)
        # Cancelled at once (in its first backend call), a little later, or in the load.
        await asyncio.sleep(self.rng.random() * self.rng.choice((0.0, 0.001, PAUSE_AFTER)))
        task.cancel()
        with self.w.watchdog.call(f"cancelled get_or_load({key!r})"):
            try:
                await task
            except asyncio.CancelledError:
                # Our own task is never cancelled, so this is the read's cancellation.
                self.w.recorder.other("get_or_load (cancelled)", start)

    async def write(self, key: str) -> None:
        w, config = self.w, self.w.config
        lock = w.async_key_locks.setdefault(key, asyncio.Lock()) if config.mix else None
        async with lock if lock is not None else contextlib.nullcontext():
            with w.watchdog.call(f"write({key!r})"):
                if config.broken == "invalidate-first":
                    start = now()
                    how, _ = await self.invalidate(key, 0)
                    await asyncio.sleep(PAUSE_AFTER)
                    version = w.store.write(key)
                    w.recorder.write(key, version, now(), start, f"{how}, then commit")
                elif config.broken == "no-invalidate":
                    version = w.store.write(key)
                    w.recorder.write(key, version, now(), now(), "nothing")
                elif config.invalidation == "dbapi":
                    await self.write_after_commit(key)
                else:
                    version = w.store.write(key)
                    committed = now()
                    how, version = await self.invalidate(key, version)
                    w.recorder.write(key, version, committed, committed, how, held=w.held())

    async def invalidate(self, key: str, version: int) -> tuple[str, int]:
        """As ``SyncActor.invalidate``."""
        w, cache, roll = self.w, self.w.async_cache, self.rng.random()
        assert cache is not None
        if w.config.mix and roll < 0.15:
            value = w.store.read(key)
            await cache.set(key, value, tags=w.tags(key))
            return "set", value
        if w.config.mix and roll < 0.2:
            await cache.clear()
            return "clear", version
        if w.config.invalidation == "tags":
            tag = ALL_TAG if roll > 0.9 else f"k:{key}"
            await cache.invalidate_tags(tag)
            return f"invalidate_tags({tag})", version
        if w.can_bump() and roll < 0.3:
            w.bump_async()
            return "version bump", version
        if roll < 0.25:
            await cache.delete_many([key])
            return "delete_many", version
        if roll < 0.45 and w.async_fn is not None:
            await w.async_fn.invalidate(item_number(key))
            return "cached.invalidate", version
        await cache.delete(key)
        return "delete", version

    async def write_after_commit(self, key: str) -> None:
        import aiosqlite

        from cachewise.integrations.dbapi import async_transaction

        w = self.w
        assert isinstance(w.store, SqliteStore)
        by_tag = self.rng.random() < 0.4
        keys, tags = ([], [f"k:{key}"]) if by_tag else ([key], [])
        if self.conn is None:
            self.conn = await aiosqlite.connect(w.store.path, timeout=30)
        assert w.async_cache is not None
        async with async_transaction(self.conn, w.async_cache, keys=keys, tags=tags):
            cursor = await self.conn.execute(UPDATE_RETURNING, (key,))
            row = await cursor.fetchone()
            await cursor.close()
            start = now()  # the commit, then the invalidation, as the block exits
        assert row is not None
        how = f"dbapi after commit ({'tag' if by_tag else 'key'})"
        w.recorder.write(key, int(row[0]), start, start, how, held=w.held())

    async def cold_group(self) -> None:
        """As ``SyncActor.cold_group``, the groups read by a second task."""
        w, cache = self.w, self.w.async_cache
        assert cache is not None
        with w.watchdog.call("cold groups: fill"):
            for index, tag in enumerate(COLD_GROUPS):
                group = COLD[index :: len(COLD_GROUPS)]
                await cache.set_many({key: w.store.read(key) for key in group}, tags=[tag])
            await cache.set_many(w.filler())
        with w.watchdog.call("cold groups: write"):
            versions = {key: w.store.write(key) for key in COLD}
            committed = now()
            await cache.invalidate_tags(*COLD_GROUPS)
            _record_cold_writes(w, versions, committed)
        stop = asyncio.Event()
        reader = asyncio.create_task(self.read_cold(cache, stop), name=f"{w.label}-cold")
        await asyncio.sleep(0.001)
        with w.watchdog.call("cold groups: clear"):
            start = now()
            await cache.clear()
            w.recorder.other("clear()", start)
            stop.set()
            await reader

    async def read_cold(self, cache: AsyncCache, stop: asyncio.Event) -> None:
        w = self.w
        with w.watchdog.call("get_many() over the cold group"):
            while not stop.is_set():
                start = now()
                for key, value in (await cache.get_many(COLD)).items():
                    w.recorder.read(key, value, start, "get_many")
                await asyncio.sleep(0)

    async def plain_clear(self) -> None:
        w = self.w
        assert w.async_cache is not None
        with w.watchdog.call("clear()"):
            await w.async_cache.set_many(w.filler())
            start = now()
            await w.async_cache.clear()
        w.recorder.other("clear()", start)


# -- running a world -----------------------------------------------------------------------


def _async_main(world: World) -> None:
    """The world's event loop thread: build the async cache, run the tasks, tear down."""
    loop = asyncio.new_event_loop()
    world.watchdog.watch_loop(loop)

    def unhandled(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # "Task exception was never retrieved" and the like: asyncio logs them at
        # ERROR; here they fail the run (a cache must not leave them behind).
        exc = context.get("exception")
        detail = f": {exc!r}" if exc is not None else ""
        world.recorder.errors.append(f"asyncio: {context.get('message')}{detail}")

    loop.set_exception_handler(unhandled)

    async def main() -> None:
        world.async_cache = world.new_async_cache()
        if world.config.invalidation != "versions":
            world.async_fn = world.decorate_async(world.async_cache)
        world.loop_ready.set()
        actors = [
            asyncio.create_task(AsyncActor(world, i).run(), name=f"{world.label}-task-{i}")
            for i in range(world.async_actors)
        ]
        await asyncio.gather(*actors)
        if not world.watchdog.tripped.is_set():
            await _teardown_async(world)

    try:
        loop.run_until_complete(main())
    except BaseException as exc:
        world.recorder.error("the event loop", exc)
    finally:
        world.loop_ready.set()
        loop.close()


async def _teardown_async(world: World) -> None:
    caches = [c for c in world.caches if isinstance(c, AsyncCache)]
    for cache in caches:
        with world.watchdog.call("AsyncCache.wait_background()"):
            if not await cache.wait_background(timeout=world.env.deadline):
                world.watchdog.trip(
                    f"AsyncCache.wait_background() did not finish in {world.env.deadline} s"
                )
    limit = now() + world.env.deadline
    while world.held() and now() < limit:
        await asyncio.sleep(0.01)
    _check_settled(world)
    for cache in reversed(caches):  # owners of a shared backend last
        with world.watchdog.call("AsyncCache.aclose()"):
            await cache.aclose()


def _teardown_sync(world: World) -> None:
    caches = [c for c in world.caches if isinstance(c, Cache)]
    for cache in caches:
        with world.watchdog.call("Cache.wait_background()"):
            if not cache.wait_background(timeout=world.env.deadline):
                world.watchdog.trip(
                    f"Cache.wait_background() did not finish in {world.env.deadline} s"
                )
    limit = now() + world.env.deadline
    while world.held() and now() < limit:
        time.sleep(0.01)
    _check_settled(world)
    for cache in reversed(caches):
        with world.watchdog.call("Cache.close()"):
            cache.close()


def _check_settled(world: World) -> None:
    """Held invalidations must settle once the backend is reachable: otherwise the
    exemption the checker grants them would hide an invalidation lost for good."""
    if world.held():
        world.watchdog.trip(f"held invalidations did not settle within {world.env.deadline} s")


def _sample_pending(world: World, stop: threading.Event) -> None:
    pid = os.getpid()
    while not stop.wait(SAMPLE_EVERY):
        held = 0
        for cache in list(world.caches):
            held += abs(cache.stats().invalidations_pending)
        world.recorder.pending.append(Pending(pid, now(), held))


def run_world(
    world: World,
    *,
    before: Callable[[], None] | None = None,
    on_start: Callable[[], None] | None = None,
) -> None:
    """Run the world's actors until its end, then tear its caches down and join its
    child processes. ``before`` runs once the caches exist, before the clock starts
    (a peer process starts there); ``on_start`` once the actors run (the fork
    happens there). A hang is recorded by the watchdog and ends the run early (the
    hung threads are daemons, left behind)."""
    w = world
    if w.sync_actors and w.sync_cache is None:
        w.sync_cache = w.new_sync_cache()
        if w.config.invalidation != "versions":
            w.sync_fn = w.decorate_sync(w.sync_cache)
    actors = [
        threading.Thread(target=SyncActor(w, i).run, name=f"{w.label}-sync-{i}", daemon=True)
        for i in range(w.sync_actors)
    ]
    threads = list(actors)
    if w.async_actors:
        # The loop builds its AsyncCache and starts its tasks at once.
        loop_thread = threading.Thread(
            target=_async_main, args=(w,), name=f"{w.label}-loop", daemon=True
        )
        loop_thread.start()
        w.loop_ready.wait(w.env.deadline)
        threads.append(loop_thread)
    if before is not None:
        before()
    w.end_at = now() + w.seconds
    stop_sampling = threading.Event()
    sampler = threading.Thread(
        target=_sample_pending, args=(w, stop_sampling), name=f"{w.label}-sampler", daemon=True
    )
    sampler.start()
    for thread in actors:
        thread.start()
    if on_start is not None:
        on_start()
    # Past this, something hangs that no call deadline covers (each teardown step
    # has a deadline of its own).
    hard_end = w.end_at + 3 * w.env.deadline + 1.0
    while any(t.is_alive() for t in threads) and not w.watchdog.tripped.is_set():
        if now() > hard_end:
            alive = [t.name for t in threads if t.is_alive()]
            w.watchdog.trip(f"{alive} did not stop within the deadline")
            break
        time.sleep(0.01)
    if not w.watchdog.tripped.is_set() and w.sync_actors:
        _teardown_sync(w)
    stop_sampling.set()
    sampler.join(timeout=1)
    w.release.set()
    for join in w.children:
        join()
    if w.memory is not None and not w.watchdog.tripped.is_set():
        w.memory.close()
    if w._engine is not None:
        w._engine.dispose()
