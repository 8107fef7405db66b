"""Zero stale reads, measured against real databases.

Writers update a row, commit, and invalidate after the commit (the DB-API
integration). Readers read through ``get_or_load`` from the database, on a slow
path that widens the race window. A read that starts after a write's commit
returned must never see an older version. Run on PostgreSQL (a database of the
test's own) and on SQLite in WAL mode, with the memory and the Redis backend.

A control run with the classic mistake (invalidate before the commit) shows the
harness does see stale reads when they happen.
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cachewise import Cache
from cachewise.integrations.dbapi import transaction
from tests.support.postgres import temporary_database

ROWS = 8
READERS = 4
WRITERS = 2
SECONDS = 1.5


@pytest.fixture(scope="module")
def pg_conninfo() -> Iterator[str]:
    with temporary_database() as conninfo:
        yield conninfo


class Database:
    """Connections per thread to one of the two databases, and the row table."""

    def __init__(self, kind: str, target: str) -> None:
        self.kind = kind
        self.target = target
        self._local = threading.local()
        self._all: list[Any] = []
        self._lock = threading.Lock()
        with self.connect() as setup:
            setup.execute("DROP TABLE IF EXISTS rows")
            setup.execute("CREATE TABLE rows (id INTEGER PRIMARY KEY, version INTEGER NOT NULL)")
            for i in range(ROWS):
                setup.execute(f"INSERT INTO rows VALUES ({i}, 0)")
            setup.commit()

    def connect(self) -> Any:
        if self.kind == "sqlite":
            conn = sqlite3.connect(self.target, timeout=10, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=10000")
            return conn
        import psycopg

        return psycopg.connect(self.target)

    def conn(self, role: str) -> Any:
        conn = getattr(self._local, role, None)
        if conn is None:
            conn = self.connect()
            if self.kind == "postgres" and role == "reader":
                conn.autocommit = True  # each SELECT sees the latest commit
            setattr(self._local, role, conn)
            with self._lock:
                self._all.append(conn)
        return conn

    def read(self, row: int) -> int:
        cur = self.conn("reader").execute(
            "SELECT version FROM rows WHERE id = %s"
            if self.kind == "postgres"
            else "SELECT version FROM rows WHERE id = ?",
            (row,),
        )
        (version,) = cur.fetchone()
        if self.kind == "sqlite":
            self.conn("reader").commit()  # end the read transaction (WAL snapshot)
        return int(version)

    def bump(self, conn: Any, row: int) -> int:
        mark = "%s" if self.kind == "postgres" else "?"
        conn.execute(f"UPDATE rows SET version = version + 1 WHERE id = {mark}", (row,))
        (version,) = conn.execute(f"SELECT version FROM rows WHERE id = {mark}", (row,)).fetchone()
        return int(version)

    def close(self) -> None:
        for conn in self._all:
            conn.close()


def run_race(
    db: Database, cache: Cache, write: Callable[[Database, Cache, int], int]
) -> dict[str, int]:
    """Readers and writers for SECONDS; counts of reads, writes, loads, stale reads."""
    committed = [0] * ROWS  # highest version whose write (commit + invalidation) returned
    committed_lock = threading.Lock()
    stop = threading.Event()
    counts = {"reads": 0, "writes": 0, "stale": 0}
    errors: list[BaseException] = []

    def slow_load(row: int) -> Callable[[], int]:
        def load() -> int:
            version = db.read(row)
            time.sleep(random.random() * 0.003)  # the slow path: widen the race window
            return version

        return load

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        try:
            while not stop.is_set():
                row = rng.randrange(ROWS)
                floor = committed[row]  # read started after this version committed
                seen = cache.get_or_load(f"row:{row}", slow_load(row))
                counts["reads"] += 1
                if seen < floor:
                    counts["stale"] += 1
        except BaseException as exc:  # pragma: no cover - reported by the assertion
            errors.append(exc)

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        try:
            while not stop.is_set():
                row = rng.randrange(ROWS)
                version = write(db, cache, row)
                with committed_lock:
                    committed[row] = max(committed[row], version)
                counts["writes"] += 1
                time.sleep(0.001)
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(READERS)]
    threads += [threading.Thread(target=writer, args=(100 + i,)) for i in range(WRITERS)]
    for t in threads:
        t.start()
    stop.wait(SECONDS)  # real time is the thing under test: let them race
    stop.set()
    for t in threads:
        t.join(30)
    assert not errors, errors
    counts["loads"] = cache.stats().loads
    return counts


def write_after_commit(db: Database, cache: Cache, row: int) -> int:
    """The right way: commit, then invalidate (the integration does both)."""
    conn = db.conn("writer")
    with transaction(conn, cache, keys=[f"row:{row}"]):
        return db.bump(conn, row)


def write_invalidating_first(db: Database, cache: Cache, row: int) -> int:
    """The classic mistake: invalidate, then commit. A reader in between loads
    the old row and caches it after the invalidation."""
    conn = db.conn("writer")
    version = db.bump(conn, row)
    cache.delete(f"row:{row}")
    time.sleep(0.002)  # the commit takes a moment
    conn.commit()
    return version


@pytest.fixture(params=["sqlite-wal", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite-wal":
        db = Database("sqlite", str(tmp_path / "race.db"))
    else:
        db = Database("postgres", request.getfixturevalue("pg_conninfo"))
    yield db
    db.close()


@pytest.fixture(params=["memory", "redis"])
def cache(request: pytest.FixtureRequest) -> Iterator[Cache]:
    if request.param == "memory":
        made = Cache(ttl=60, jitter=0)
    else:
        made = Cache.from_url(
            request.getfixturevalue("redis_url") + "?socket_timeout=2", ttl=60, jitter=0
        )
    yield made
    made.close()


@pytest.mark.slow
def test_no_read_after_a_commit_sees_an_older_version(database: Database, cache: Cache) -> None:
    counts = run_race(database, cache, write_after_commit)
    assert counts["stale"] == 0, counts
    # The race really ran: plenty of reads, writes, and reloads after invalidations.
    assert counts["reads"] > 200, counts
    assert counts["writes"] > 50, counts
    assert counts["loads"] > 20, counts


@pytest.mark.slow
def test_the_harness_catches_invalidation_before_commit(tmp_path: Path) -> None:
    db = Database("sqlite", str(tmp_path / "control.db"))
    cache = Cache(ttl=60, jitter=0)
    try:
        stale = 0
        for _ in range(5):  # a race: usually the first run shows it
            stale += run_race(db, cache, write_invalidating_first)["stale"]
            if stale:
                break
        assert stale > 0
    finally:
        cache.close()
        db.close()
