"""``cachewise demo``: one application, three ways, against a slow database.

The application reads users from SQLite. Every SELECT sleeps inside the database
(a Python function registered with SQLite), standing in for a slow query. Each mode
gets a fresh database with the same rows and runs two phases:

1. thundering herd: ``HERD`` threads, released together by a barrier, read one
   cold, hot key (20 ms queries);
2. mixed workload: reader threads draw user ids from a Zipf distribution while
   writers bump a row's version, commit, then invalidate that user's cache key
   (3 ms queries).

The modes are: no cache; a naive cache-aside, written the way it usually is by hand
(get; on a miss query, then set with a fixed TTL; on write commit, then delete);
and cachewise.

A read is *stale* when it returns a version older than one whose write (commit and
invalidation) had fully returned before the read started: the application did
everything right, and still got old data.
"""

from __future__ import annotations

import bisect
import itertools
import math
import os
import random
import sqlite3
import sys
import tempfile
import threading
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol, TextIO

from cachewise import Cache

#: Rows in the ``users`` table.
USERS = 2_000
#: How long each SELECT takes inside the database, in seconds.
QUERY_DELAY = 0.003
#: Threads in the thundering herd.
HERD = 100
#: How long each SELECT takes during the herd. Python releases 100 threads from a
#: barrier over ~10 ms (each needs the GIL in turn), longer than a 3 ms query; with
#: a slower query the whole herd arrives while the first load runs, as it does in
#: production when a hot key's expensive query meets a burst of traffic.
HERD_QUERY_DELAY = 0.020
#: The herd's key: the hottest id of the Zipf distribution.
HOT_ID = 1
#: Cache TTL in seconds: short, so that entries expire during the mixed phase.
TTL = 2.0
#: Zipf exponent of the read (and write) mix: id 1 gets ~17% of the draws.
ZIPF_S = 1.1
#: Writer threads in the mixed phase.
WRITERS = 2
#: A writer's pause between two writes, in seconds.
WRITE_PAUSE = 0.002
#: A reader's pause between two reads: the rest of the request's work. It also
#: releases the GIL, so that threads back from the database are not starved by
#: readers spinning on cache hits.
THINK_TIME = 0.0005


@dataclass(frozen=True, slots=True)
class User:
    """One row of the ``users`` table."""

    id: int
    name: str
    version: int


@dataclass(frozen=True, slots=True)
class ModeResult:
    """What one mode measured.

    ``reads``, ``db_queries``, the latencies, ``hit_ratio`` and ``stale_reads`` are
    for the mixed phase; ``herd_queries`` is the SELECTs the herd of ``herd_size``
    threads caused. ``hit_ratio`` is ``None`` for the mode without a cache.
    """

    mode: str
    reads: int
    writes: int
    db_queries: int
    herd_size: int
    herd_queries: int
    p50_ms: float
    p99_ms: float
    hit_ratio: float | None
    stale_reads: int


# -- the database -----------------------------------------------------------------


class Database:
    """A SQLite file with a ``users`` table: slow reads, one connection per thread."""

    def __init__(self, path: str, users: int = USERS, query_delay: float = QUERY_DELAY) -> None:
        self.path = path
        self.users = users
        self.query_delay = query_delay  # read by every query: the herd changes it
        self._local = threading.local()
        self._lock = threading.Lock()  # guards _connections and queries
        self._connections: list[sqlite3.Connection] = []
        self.queries = 0
        conn = self.connection()
        try:
            # WAL: readers never block the writers, nor the writers the readers.
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(
                "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                "version INTEGER NOT NULL)"
            )
            with conn:
                conn.executemany(
                    "INSERT INTO users (id, name, version) VALUES (?, ?, 0)",
                    ((i, f"user-{i}") for i in range(1, users + 1)),
                )
        except BaseException:
            self.close()
            raise

    def connection(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            # check_same_thread=False only so that close() can close every connection
            # from the main thread: each one is used by the thread that opened it.
            # timeout= is SQLite's busy_timeout: the two writers queue, not fail.
            conn = sqlite3.connect(self.path, timeout=5.0, check_same_thread=False)
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.create_function("pause", 1, self._pause)
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def _pause(self, value: int) -> int:
        # Runs inside the SELECT, after SQLite has read the row: the query returns
        # the row as it was when it started, query_delay later, like a slow query.
        time.sleep(self.query_delay)
        return value

    def read_user(self, user_id: int) -> User:
        """The user row, the slow way (one counted query)."""
        with self._lock:
            self.queries += 1
        row = (
            self.connection()
            .execute("SELECT id, name, pause(version) FROM users WHERE id = ?", (user_id,))
            .fetchone()
        )
        if row is None:
            raise LookupError(f"no user {user_id}")
        return User(row[0], row[1], row[2])

    def bump_version(self, user_id: int) -> int:
        """Increment the user's version and commit; the committed version."""
        conn = self.connection()
        with conn:  # commits on success, rolls back on error
            conn.execute("UPDATE users SET version = version + 1 WHERE id = ?", (user_id,))
            (version,) = conn.execute(
                "SELECT version FROM users WHERE id = ?", (user_id,)
            ).fetchone()
        return int(version)

    def close(self) -> None:
        """Close every connection. Call once no thread uses the database any more."""
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()


# -- the workload -----------------------------------------------------------------


class ZipfSampler:
    """Draws ids ``1..n`` with ``P(k)`` proportional to ``1 / k**s``: id 1 is hottest."""

    def __init__(self, n: int, s: float = ZIPF_S) -> None:
        self._n = n
        self._cumulative = list(itertools.accumulate(k**-s for k in range(1, n + 1)))
        self._total = self._cumulative[-1]

    def sample(self, rng: random.Random) -> int:
        """One id, drawn with ``rng``."""
        index = bisect.bisect_right(self._cumulative, rng.random() * self._total)
        # min(): random() * total can round up to total itself.
        return min(index + 1, self._n)


class _Committed:
    """Per id, the newest version whose write (commit, then invalidation) returned."""

    def __init__(self, users: int) -> None:
        self._versions = [0] * (users + 1)
        self._lock = threading.Lock()

    def floor(self, user_id: int) -> int:
        """The oldest version a read starting now may return without being stale."""
        return self._versions[user_id]  # one list read: atomic, no lock needed

    def advance(self, user_id: int, version: int) -> None:
        """Record a finished write."""
        # Two writers may finish out of order on one id: keep the newest.
        with self._lock:
            self._versions[user_id] = max(self._versions[user_id], version)


# -- the three modes --------------------------------------------------------------


class _Mode(Protocol):
    @property
    def label(self) -> str: ...

    def read(self, user_id: int) -> User:
        """The user, through the cache if there is one."""

    def invalidate(self, user_id: int) -> None:
        """Called after each committed write."""

    def counts(self) -> tuple[int, int] | None:
        """``(hits, lookups)`` so far; ``None`` without a cache."""

    def close(self) -> None:
        """Release the cache."""


class _NoCache:
    label = "no cache"

    def __init__(self, db: Database) -> None:
        self._db = db

    def read(self, user_id: int) -> User:
        return self._db.read_user(user_id)

    def invalidate(self, user_id: int) -> None:
        pass

    def counts(self) -> tuple[int, int] | None:
        return None

    def close(self) -> None:
        pass


class _NaiveCacheAside:
    """Cache-aside as it is usually written by hand: a dict, a fixed TTL, no lock.

    Two bugs hide in it:

    - stampedes: every reader that misses queries the database, so a cold or just
      expired hot key sends all of its readers there at once;
    - stale sets: a reader that queried before a write can set its old row *after*
      the writer's delete, and that old row is then served until the TTL ends.
    """

    label = "naive cache-aside"

    def __init__(self, db: Database, ttl: float) -> None:
        self._db = db
        self._ttl = ttl
        self._entries: dict[int, tuple[float, User]] = {}  # id -> (expires at, user)
        self._lock = threading.Lock()  # guards the two counters only
        self._hits = 0
        self._lookups = 0

    def read(self, user_id: int) -> User:
        entry = self._entries.get(user_id)
        if entry is not None and time.monotonic() < entry[0]:
            self._count(hit=True)
            return entry[1]
        self._count(hit=False)
        user = self._db.read_user(user_id)
        # The race: a write may have committed and deleted this key while we were
        # querying. This set then puts the old row back, for a whole TTL.
        self._entries[user_id] = (time.monotonic() + self._ttl, user)
        return user

    def _count(self, hit: bool) -> None:
        with self._lock:
            self._lookups += 1
            self._hits += hit

    def invalidate(self, user_id: int) -> None:
        self._entries.pop(user_id, None)

    def counts(self) -> tuple[int, int] | None:
        with self._lock:
            return self._hits, self._lookups

    def close(self) -> None:
        self._entries.clear()


def user_store(
    db: Database | None, ttl: float = TTL
) -> tuple[Cache, Callable[[int], User], Callable[[int], None]]:
    """The demo application's data access with cachewise: a cached read and a
    declared invalidation, both part of the invalidation map."""
    cache = Cache(namespace="demo", ttl=ttl, jitter=0.1)

    @cache.cached("user:{user_id}", tags=["user:{user_id}"])
    def get_user(user_id: int) -> User:
        """One user row. Concurrent misses on one key share one load."""
        assert db is not None
        return db.read_user(user_id)

    @cache.invalidates("user:{user_id}", tags=["user:{user_id}"])
    def user_changed(user_id: int) -> None:
        """Called after a user's row was updated and committed. Also revokes a load
        in flight for the key: the old row it read reaches its own callers (they
        started before the write) but is never cached."""

    return cache, get_user, user_changed


def invalidation_map_app() -> None:
    """Declare the demo's reads and writes (for ``cachewise invalidation-map``)."""
    cache, _, _ = user_store(None)
    cache.close()


class _Cachewise:
    """The same pattern with ``cachewise.Cache``: read through, invalidate on write."""

    label = "cachewise"

    def __init__(self, db: Database, ttl: float) -> None:
        self._db = db
        self._cache, self.read, self.invalidate = user_store(db, ttl)

    def counts(self) -> tuple[int, int] | None:
        stats = self._cache.stats()
        served = stats.hits + stats.stale_served
        return served, served + stats.misses

    def close(self) -> None:
        # Drains background refreshes, which use the database: close it after this.
        self._cache.close()


# -- threads and progress ---------------------------------------------------------


class _Workers:
    """Threads whose first exception ``join`` re-raises in the calling thread."""

    def __init__(self, on_error: Callable[[], None]) -> None:
        self._on_error = on_error  # tells the other threads to give up
        self._threads: list[threading.Thread] = []
        self._errors: list[BaseException] = []

    def start(self, target: Callable[[], None], name: str) -> None:
        def run() -> None:
            try:
                target()
            except BaseException as exc:
                self._errors.append(exc)
                self._on_error()

        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def join(self) -> None:
        for thread in self._threads:
            thread.join()
        if self._errors:
            raise self._errors[0]


class Progress:
    """A one-line progress bar on stderr.

    On a terminal it redraws in place; elsewhere (a pipe, CI logs) it prints one line
    per phase and no bar. Disabled, it prints nothing.
    """

    WIDTH = 30

    def __init__(self, enabled: bool = True, stream: TextIO | None = None) -> None:
        self._stream = sys.stderr if stream is None else stream
        self._enabled = enabled
        self._tty = enabled and self._stream.isatty()
        self._label = ""
        self._start = 0.0  # the whole run's fraction done when the phase began
        self._span = 0.0  # the phase's share of the whole run
        self._drawn = 0  # length of the line on screen

    def phase(self, label: str, start: float, span: float) -> None:
        """Begin a phase covering ``[start, start + span]`` of the whole run."""
        self._label, self._start, self._span = label, start, span
        if self._tty:
            self.update(0.0)
        elif self._enabled:
            print(f"{label} ...", file=self._stream, flush=True)

    def update(self, fraction: float) -> None:
        """Redraw with the current phase ``fraction`` done."""
        if not self._tty:
            return
        done = min(max(self._start + self._span * fraction, 0.0), 1.0)
        filled = round(done * self.WIDTH)
        line = f"[{'#' * filled}{'-' * (self.WIDTH - filled)}] {done:4.0%}  {self._label}"
        # ljust: wipe the tail of a longer previous line.
        self._stream.write("\r" + line.ljust(self._drawn))
        self._stream.flush()
        self._drawn = len(line)

    def finish(self) -> None:
        """Erase the bar, so that what follows starts on a clean line."""
        if self._tty and self._drawn:
            self._stream.write("\r" + " " * self._drawn + "\r")
            self._stream.flush()
            self._drawn = 0


# -- the phases -------------------------------------------------------------------


def _herd(db: Database, mode: _Mode, size: int) -> int:
    """Release ``size`` threads at once on the cold hot key; the queries they caused."""
    barrier = threading.Barrier(size, timeout=30.0)
    normal_delay, db.query_delay = db.query_delay, HERD_QUERY_DELAY

    def member() -> None:
        db.connection()  # open it now: connecting must not stagger the herd
        barrier.wait()
        mode.read(HOT_ID)

    before = db.queries
    workers = _Workers(on_error=barrier.abort)
    try:
        for i in range(size):
            workers.start(member, f"herd-{i}")
    finally:
        workers.join()
        db.query_delay = normal_delay
    return db.queries - before


@dataclass(frozen=True, slots=True)
class _Mixed:
    reads: int
    writes: int
    queries: int
    p50_ms: float
    p99_ms: float
    hit_ratio: float | None
    stale_reads: int


def _percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (0.0 if empty)."""
    if not ordered:
        return 0.0
    return ordered[max(math.ceil(q * len(ordered)) - 1, 0)]


def _mixed(
    db: Database,
    mode: _Mode,
    *,
    seconds: float,
    threads: int,
    writers: int,
    seed: int,
    tick: Callable[[float], None],
) -> _Mixed:
    """Zipf reads from ``threads`` threads and ``writers`` writers for ``seconds``."""
    zipf = ZipfSampler(db.users)
    committed = _Committed(db.users)
    stop = threading.Event()
    # Each thread fills its own tallies and appends them once, when it stops.
    latencies: list[array[float]] = []
    stale: list[int] = []
    writes: list[int] = []

    def reader(rng: random.Random) -> None:
        mine: array[float] = array("d")
        stale_reads = 0
        clock = time.perf_counter
        while not stop.is_set():
            user_id = zipf.sample(rng)
            # Read the floor before the read starts: every write that has returned
            # by now must be visible to it.
            floor = committed.floor(user_id)
            start = clock()
            user = mode.read(user_id)
            mine.append(clock() - start)
            if user.version < floor:
                stale_reads += 1
            time.sleep(THINK_TIME)
        latencies.append(mine)
        stale.append(stale_reads)

    def writer(rng: random.Random) -> None:
        done = 0
        while not stop.is_set():
            # Writes follow the read mix too, so hot keys see the races.
            user_id = zipf.sample(rng)
            version = db.bump_version(user_id)  # committed,
            mode.invalidate(user_id)  # then invalidated,
            committed.advance(user_id, version)  # and only now "done"
            done += 1
            time.sleep(WRITE_PAUSE)
        writes.append(done)

    queries_before = db.queries
    counts_before = mode.counts()
    seeds = random.Random(seed)  # one independent stream per thread
    workers = _Workers(on_error=stop.set)
    try:
        for i in range(threads):
            workers.start(partial(reader, random.Random(seeds.getrandbits(64))), f"reader-{i}")
        for i in range(writers):
            workers.start(partial(writer, random.Random(seeds.getrandbits(64))), f"writer-{i}")
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if stop.wait(min(left, 0.1)):
                break  # a worker failed: join() below raises its error
            tick(1.0 - max(deadline - time.monotonic(), 0.0) / seconds)
    finally:
        stop.set()
        workers.join()
    queries = db.queries - queries_before
    counts_after = mode.counts()

    hit_ratio = None
    if counts_before is not None and counts_after is not None:
        hits = counts_after[0] - counts_before[0]
        lookups = counts_after[1] - counts_before[1]
        hit_ratio = hits / lookups if lookups else 0.0
    ordered = sorted(itertools.chain.from_iterable(latencies))
    return _Mixed(
        reads=len(ordered),
        writes=sum(writes),
        queries=queries,
        p50_ms=_percentile(ordered, 0.50) * 1000.0,
        p99_ms=_percentile(ordered, 0.99) * 1000.0,
        hit_ratio=hit_ratio,
        stale_reads=sum(stale),
    )


# -- running and reporting --------------------------------------------------------


def _run_mode(
    make_mode: Callable[[Database], _Mode],
    db: Database,
    *,
    seconds: float,
    threads: int,
    herd: int,
    writers: int,
    seed: int,
    progress: Progress,
    start: float,
    share: float,
) -> ModeResult:
    """Both phases in one mode; ``[start, start + share]`` of the progress bar."""
    mode = make_mode(db)
    try:
        progress.phase(f"{mode.label}: thundering herd ({herd} threads)", start, 0.1 * share)
        herd_queries = _herd(db, mode, herd)
        progress.phase(
            f"{mode.label}: mixed workload ({seconds:g} s)", start + 0.1 * share, 0.9 * share
        )
        mixed = _mixed(
            db,
            mode,
            seconds=seconds,
            threads=threads,
            writers=writers,
            seed=seed,
            tick=progress.update,
        )
    finally:
        mode.close()
    return ModeResult(
        mode=mode.label,
        reads=mixed.reads,
        writes=mixed.writes,
        db_queries=mixed.queries,
        herd_size=herd,
        herd_queries=herd_queries,
        p50_ms=mixed.p50_ms,
        p99_ms=mixed.p99_ms,
        hit_ratio=mixed.hit_ratio,
        stale_reads=mixed.stale_reads,
    )


def run_modes(
    seconds: float,
    threads: int,
    *,
    herd: int = HERD,
    users: int = USERS,
    writers: int = WRITERS,
    ttl: float = TTL,
    seed: int = 0,
    progress: Progress | None = None,
) -> list[ModeResult]:
    """Run the herd and the mixed workload in each mode; one result per mode.

    Modes run one after the other, in this order: no cache, naive cache-aside,
    cachewise. Each gets a fresh database with the same rows and the same random
    seed, so the same read and write mix.
    """
    if progress is None:
        progress = Progress(enabled=False)
    make_modes: list[Callable[[Database], _Mode]] = [
        _NoCache,
        partial(_NaiveCacheAside, ttl=ttl),
        partial(_Cachewise, ttl=ttl),
    ]
    share = 1.0 / len(make_modes)
    results: list[ModeResult] = []
    try:
        with tempfile.TemporaryDirectory(prefix="cachewise-demo-") as tmp:
            for index, make_mode in enumerate(make_modes):
                db = Database(os.path.join(tmp, f"mode{index}.sqlite3"), users=users)
                try:
                    result = _run_mode(
                        make_mode,
                        db,
                        seconds=seconds,
                        threads=threads,
                        herd=herd,
                        writers=writers,
                        seed=seed,
                        progress=progress,
                        start=index * share,
                        share=share,
                    )
                finally:
                    # After mode.close(): cachewise's background refreshes use the db.
                    db.close()
                results.append(result)
    finally:
        progress.finish()
    return results


HEADERS = (
    "mode",
    "reads",
    "writes",
    "DB queries",
    "herd queries",
    "p50 ms",
    "p99 ms",
    "hit ratio",
    "stale reads",
)


def format_table(results: Sequence[ModeResult]) -> str:
    """The results as a plain-text table, one row per mode."""
    rows = [
        (
            r.mode,
            f"{r.reads:,}",
            f"{r.writes:,}",
            f"{r.db_queries:,}",
            f"{r.herd_queries:,}",
            f"{r.p50_ms:.3f}",
            f"{r.p99_ms:.3f}",
            "-" if r.hit_ratio is None else f"{r.hit_ratio:.1%}",
            f"{r.stale_reads:,}",
        )
        for r in results
    ]
    widths = [max(map(len, column)) for column in zip(HEADERS, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        # The mode name is left-aligned, the numbers right-aligned.
        first, *rest = zip(cells, widths, strict=True)
        parts = [first[0].ljust(first[1])] + [cell.rjust(width) for cell, width in rest]
        return "  ".join(parts)

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(HEADERS), rule, *map(line, rows)])


def verdict(results: Sequence[ModeResult]) -> list[str]:
    """Three lines comparing cachewise with the other modes."""
    by_mode = {r.mode: r for r in results}
    cw = by_mode.get(_Cachewise.label)
    naive = by_mode.get(_NaiveCacheAside.label)
    none = by_mode.get(_NoCache.label)
    if cw is None or naive is None or none is None:
        return []

    def per_query(r: ModeResult) -> str:
        return f"{r.reads / max(r.db_queries, 1):.1f}"

    query_word = "query" if cw.herd_queries == 1 else "queries"
    return [
        f"cachewise: {cw.herd_queries} DB {query_word} for a {cw.herd_size}-thread herd "
        f"(naive: {naive.herd_queries}, no cache: {none.herd_queries}).",
        f"cachewise: {cw.stale_reads:,} stale reads (naive: {naive.stale_reads:,}): "
        "its delete also revokes loads in flight.",
        f"cachewise: {per_query(cw)} reads per DB query (naive: {per_query(naive)}, "
        f"no cache: {per_query(none)}); median read {cw.p50_ms:.3f} ms "
        f"(no cache: {none.p50_ms:.3f} ms).",
    ]


def run_demo(seconds: float, threads: int, progress: bool) -> int:
    """``cachewise demo``: run the three modes, print the table and a verdict; 0.

    ``seconds`` is the mixed phase's length per mode, ``threads`` its reader count;
    ``progress`` shows a progress bar on stderr.
    """
    if not seconds > 0 or threads < 1:
        print("cachewise demo: --seconds must be > 0 and --threads >= 1", file=sys.stderr)
        return 2
    print(
        f"cachewise demo: an app reads {USERS:,} users from SQLite, three ways: no cache,\n"
        "a naive cache-aside (no stampede protection, no jitter), and cachewise. Each way:\n"
        f"  1. thundering herd: {HERD} threads read one cold key at once "
        f"({HERD_QUERY_DELAY * 1000:g} ms query);\n"
        f"  2. {seconds:g} s of Zipf({ZIPF_S:g}) reads from {threads} threads "
        f"({QUERY_DELAY * 1000:g} ms per query) while {WRITERS}\n"
        f"     writers update rows, commit, then invalidate them (cache TTL {TTL:g} s).\n",
        flush=True,
    )
    try:
        results = run_modes(seconds, threads, progress=Progress(enabled=progress))
    except KeyboardInterrupt:
        # run_modes has stopped its threads and removed its files by now.
        print("cachewise demo: interrupted", file=sys.stderr)
        return 130
    print(format_table(results))
    print(
        "\nDB queries and herd queries count SELECTs. A read that waited for another "
        "thread's load\ncounts as a miss. A stale read returned a version older than one "
        "whose write (commit,\nthen invalidation) had returned before the read began.\n"
    )
    for sentence in verdict(results):
        print(sentence)
    return 0
