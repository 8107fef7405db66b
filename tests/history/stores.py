"""The source of truth: per key an integer version, raised by one on every write.

``MemoryStore`` serves the threads and tasks of one process (a forked child gets
its own copy, as it gets its own copy of an in-memory cache). ``SqliteStore`` is a
file in WAL mode that every process of a run shares; the after-commit workloads
write to it through the DB-API and SQLAlchemy integrations, in a transaction.
``RedisStore`` is for a parent and the child it forks while its threads write:
SQLite must not cross a fork at all (its in-process lock bookkeeping is copied
with the parent's locks in it, and the child's writers then wait on them).
"""

from __future__ import annotations

import sqlite3
import threading

__all__ = ["UPDATE_RETURNING", "MemoryStore", "RedisStore", "SqliteStore", "Store"]

#: Raise a key's version inside the caller's transaction; returns the new version.
UPDATE_RETURNING = "UPDATE versions SET version = version + 1 WHERE key = ? RETURNING version"


class Store:
    """What the workloads need of the source of truth."""

    def read(self, key: str) -> int:
        """The last committed version of ``key``."""
        raise NotImplementedError

    def write(self, key: str) -> int:
        """Commit the next version of ``key`` and return it."""
        raise NotImplementedError

    def after_fork(self) -> None:
        """Make the store usable in a freshly forked child."""

    def close(self) -> None:
        """Release what this process opened."""


class MemoryStore(Store):
    """A dict behind a lock: one process's source of truth."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self._versions = dict.fromkeys(keys, 0)
        self._lock = threading.Lock()

    def read(self, key: str) -> int:
        return self._versions[key]

    def write(self, key: str) -> int:
        with self._lock:
            version = self._versions[key] + 1
            self._versions[key] = version
        return version

    def after_fork(self) -> None:
        # A thread of the parent may have held the lock at the fork; the dict itself
        # is consistent (the GIL), so a new lock is all the child needs.
        self._lock = threading.Lock()


class SqliteStore(Store):
    """A WAL-mode SQLite file: every process and thread opens its own connection.

    Reads are single autocommit statements, so each sees the last commit; writes
    take the write lock (``timeout`` seconds of busy waiting at most).
    """

    def __init__(self, path: str, keys: tuple[str, ...] = (), *, create: bool = False) -> None:
        self.path = path
        self._local = threading.local()
        self._opened: list[sqlite3.Connection] = []
        if create:
            with self._new() as conn:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS versions (key TEXT PRIMARY KEY, version INTEGER)"
                )
                conn.executemany(
                    "INSERT OR IGNORE INTO versions VALUES (?, 0)", [(k,) for k in keys]
                )

    def _new(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        # Durability is not under test: no fsync per commit.
        conn.execute("PRAGMA synchronous=OFF")
        return conn

    def connect(self) -> sqlite3.Connection:
        """A new connection for a DB-API transaction (the caller closes it)."""
        return self._new()

    @property
    def sqlalchemy_url(self) -> str:
        return f"sqlite:///{self.path}"

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._new()
            self._local.conn = conn
            self._opened.append(conn)
        return conn

    def read(self, key: str) -> int:
        row = self._conn().execute("SELECT version FROM versions WHERE key = ?", (key,)).fetchone()
        return int(row[0])

    def write(self, key: str) -> int:
        conn = self._conn()
        with conn:  # commits on success
            row = conn.execute(UPDATE_RETURNING, (key,)).fetchone()
        return int(row[0])

    def after_fork(self) -> None:
        # SQLite connections must not cross a fork: forget (never use, never close)
        # the parent's, and open new ones on demand.
        self._local = threading.local()
        self._opened = []

    def close(self) -> None:
        for conn in self._opened:
            conn.close()
        self._opened = []


class RedisStore(Store):
    """Versions as counters in a database of the run's own Redis server (``INCR``
    commits a version); shared by a parent and its forked children."""

    def __init__(self, url: str, keys: tuple[str, ...], *, create: bool = False) -> None:
        import redis

        self._url = url
        self._redis = redis
        self._client = redis.Redis.from_url(url)
        if create:
            self._client.delete(*(self._name(key) for key in keys))

    @staticmethod
    def _name(key: str) -> str:
        return f"history:version:{key}"

    def read(self, key: str) -> int:
        return int(self._client.get(self._name(key)) or 0)

    def write(self, key: str) -> int:
        return int(self._client.incr(self._name(key)))

    def after_fork(self) -> None:
        # A client of the child's own: the parent's pool (and its locks) stay there.
        self._client = self._redis.Redis.from_url(self._url)

    def close(self) -> None:
        self._client.close()
