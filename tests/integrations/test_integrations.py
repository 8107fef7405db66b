"""After-commit invalidation: SQLAlchemy (sync and async), Django, plain DB-API.

Every database test runs on SQLite and on PostgreSQL (a database the suite creates
and drops, see ``tests/support/postgres.py``). The caches are spies: at the moment
they are told to invalidate, they read the row through an independent connection,
which sees committed data only. Finding the new value there proves that the
invalidation ran after the commit, never before it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sqlite3
import subprocess
import sys
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, String, create_engine, event, text
from sqlalchemy.exc import IntegrityError, InvalidRequestError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from cachewise import MISSING, AsyncCache, Cache
from cachewise.integrations import invalidation_errors
from cachewise.integrations.dbapi import async_transaction, transaction
from cachewise.integrations.sqlalchemy import invalidate_after_commit
from tests.support.postgres import sqlalchemy_url, temporary_database

# -- databases ---------------------------------------------------------------------

SCHEMA = [
    "DROP TABLE IF EXISTS members",
    "DROP TABLE IF EXISTS teams",
    "DROP TABLE IF EXISTS users",
    "CREATE TABLE users (id INTEGER PRIMARY KEY, name VARCHAR(50) NOT NULL)",
    "CREATE TABLE teams (id INTEGER PRIMARY KEY)",
    # Checked at COMMIT: lets a test make a real commit fail.
    "CREATE TABLE members (id INTEGER PRIMARY KEY, "
    "team_id INTEGER NOT NULL REFERENCES teams (id) DEFERRABLE INITIALLY DEFERRED)",
    "INSERT INTO users (id, name) VALUES (1, 'ann'), (2, 'bob')",
]


class Database:
    """One test database: URLs for SQLAlchemy, DB-API connections, and a reader
    of committed data."""

    def __init__(self, kind: str, *, path: Path | None = None, conninfo: str = "") -> None:
        self.kind = kind
        self.path = path
        self.conninfo = conninfo
        self.ph = "?" if kind == "sqlite" else "%s"  # DB-API parameter style

    def connect(self) -> Any:
        """A DB-API connection, not in autocommit mode."""
        if self.kind == "sqlite":
            conn = sqlite3.connect(self.path or ":memory:")
            conn.execute("PRAGMA foreign_keys = ON")
            return conn
        import psycopg

        return psycopg.connect(self.conninfo)

    async def aconnect(self) -> Any:
        """An async DB-API connection, not in autocommit mode."""
        if self.kind == "sqlite":
            import aiosqlite

            conn = await aiosqlite.connect(self.path or ":memory:")
            await conn.execute("PRAGMA foreign_keys = ON")
            return conn
        import psycopg

        return await psycopg.AsyncConnection.connect(self.conninfo)

    def committed_name(self, user_id: int = 1) -> str | None:
        """The name of ``user_id`` as a brand-new connection sees it: committed data."""
        conn = self.connect()
        try:
            row = conn.execute(
                f"SELECT name FROM users WHERE id = {self.ph}", (user_id,)
            ).fetchone()
            conn.rollback()
        finally:
            conn.close()
        return None if row is None else str(row[0])

    def reset(self) -> None:
        conn = self.connect()
        try:
            for statement in SCHEMA:
                conn.execute(statement)
            conn.commit()
        finally:
            conn.close()

    def engine(self) -> Engine:
        if self.kind == "sqlite":
            engine = create_engine(f"sqlite:///{self.path}")
            _sqlite_transactions(engine)
            return engine
        return create_engine(sqlalchemy_url(self.conninfo))

    def async_engine(self) -> AsyncEngine:
        if self.kind == "sqlite":
            engine = create_async_engine(f"sqlite+aiosqlite:///{self.path}")
            _sqlite_transactions(engine.sync_engine)
            return engine
        return create_async_engine(sqlalchemy_url(self.conninfo))


def _sqlite_transactions(engine: Engine) -> None:
    """SQLAlchemy's recipe for real SAVEPOINTs on pysqlite/aiosqlite: let SQLAlchemy
    emit BEGIN itself instead of the driver's implicit one; and enforce FKs."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        dbapi_connection.execute("PRAGMA foreign_keys = ON")

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN")


@pytest.fixture(scope="session")
def pg_conninfo() -> Iterator[str]:
    """A PostgreSQL database of our own for the whole session, dropped at the end."""
    with temporary_database() as conninfo:
        yield conninfo


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    if request.param == "sqlite":
        database = Database("sqlite", path=tmp_path / "app.db")
    else:
        database = Database("postgres", conninfo=request.getfixturevalue("pg_conninfo"))
    database.reset()
    return database


@pytest.fixture
def engine(db: Database) -> Iterator[Engine]:
    engine = db.engine()
    yield engine
    engine.dispose()


# -- spy caches --------------------------------------------------------------------


class SpyCache(Cache):
    """A ``Cache`` that records each invalidation and what the database had committed
    for user 1 at that moment, then does the real invalidation."""

    def __init__(self, probe: Callable[[], str | None] = lambda: None) -> None:
        super().__init__(jitter=0.0)
        self.probe = probe
        self.calls: list[tuple[str, tuple[str, ...], str | None]] = []

    def delete_many(self, keys: Iterable[str]) -> int:
        keys = tuple(keys)
        self.calls.append(("delete_many", keys, self.probe()))
        return super().delete_many(keys)

    def invalidate_tags(self, *tags: str) -> None:
        self.calls.append(("invalidate_tags", tags, self.probe()))
        super().invalidate_tags(*tags)


class AsyncSpyCache(AsyncCache):
    """``SpyCache`` for asyncio; ``gate`` (if set) holds ``delete_many`` open."""

    def __init__(self, probe: Callable[[], str | None] = lambda: None) -> None:
        super().__init__(jitter=0.0)
        self.probe = probe
        self.calls: list[tuple[str, tuple[str, ...], str | None]] = []
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def delete_many(self, keys: Iterable[str]) -> int:
        keys = tuple(keys)
        self.calls.append(("delete_many", keys, self.probe()))
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        return await super().delete_many(keys)

    async def invalidate_tags(self, *tags: str) -> None:
        self.calls.append(("invalidate_tags", tags, self.probe()))
        await super().invalidate_tags(*tags)


class BrokenCache(Cache):
    """A ``Cache`` whose deletes raise instead of degrading (``delete_many`` and the
    one-key ``delete`` a failed batch falls back to)."""

    def delete_many(self, keys: Iterable[str]) -> int:
        raise ConnectionError("cache cluster on fire")

    def delete(self, key: str) -> bool:
        raise ConnectionError("cache cluster on fire")


class AsyncBrokenCache(AsyncCache):
    async def delete_many(self, keys: Iterable[str]) -> int:
        raise ConnectionError("cache cluster on fire")

    async def delete(self, key: str) -> bool:
        raise ConnectionError("cache cluster on fire")


@pytest.fixture
def cache(db: Database) -> Iterator[SpyCache]:
    spy = SpyCache(db.committed_name)
    spy.set("user:1", "ann")
    spy.set("user:2", "bob")
    yield spy
    spy.close()


@asynccontextmanager
async def async_cache(db: Database) -> AsyncIterator[AsyncSpyCache]:
    spy = AsyncSpyCache(db.committed_name)
    await spy.set("user:1", "ann")
    await spy.set("user:2", "bob")
    try:
        yield spy
    finally:
        await spy.aclose()


def rename(session: Session, user_id: int, name: str) -> None:
    session.execute(text("UPDATE users SET name = :n WHERE id = :i"), {"n": name, "i": user_id})


async def arename(session: AsyncSession, user_id: int, name: str) -> None:
    await session.execute(
        text("UPDATE users SET name = :n WHERE id = :i"), {"n": name, "i": user_id}
    )


def read_in_thread(fn: Callable[[], Any]) -> Any:
    """``fn()`` run by another thread: a concurrent reader."""
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(fn()))
    thread.start()
    thread.join(10)
    assert result, "the reader thread did not finish"
    return result[0]


# -- SQLAlchemy, sync --------------------------------------------------------------


def test_sqlalchemy_invalidates_after_the_commit_and_not_before(
    db: Database, engine: Engine, cache: SpyCache
) -> None:
    loads: list[str | None] = []

    def load() -> str | None:
        loads.append(db.committed_name(1))
        return loads[-1]

    with Session(engine) as session:
        rename(session, 1, "zed")
        invalidate_after_commit(session, cache, keys=["user:1"])
        # Inside the transaction: nothing invalidated, readers still hit the cache.
        assert cache.calls == []
        assert cache.get("user:1") == "ann"
        assert read_in_thread(lambda: cache.get_or_load("user:1", load)) == "ann"
        assert loads == []
        assert db.committed_name(1) == "ann"
        session.commit()
        # By the time commit() returned, the cache was invalidated, after the
        # database had committed (the spy read "zed" through another connection).
        assert cache.calls == [("delete_many", ("user:1",), "zed")]
        assert cache.get("user:1") is MISSING
    assert cache.get_or_load("user:1", load) == "zed"
    assert cache.get("user:2") == "bob"


@pytest.mark.parametrize(
    "how",
    [
        "rollback",
        "exception",
        "close",
        "savepoint-then-rollback",
        "released-savepoint-then-rollback",
    ],
)
def test_sqlalchemy_rollback_invalidates_nothing(
    db: Database, engine: Engine, cache: SpyCache, how: str
) -> None:
    with Session(engine) as session:
        if how == "rollback":
            rename(session, 1, "zed")
            invalidate_after_commit(session, cache, keys=["user:1"], tags=["users"])
            session.rollback()
        elif how == "exception":

            def fail() -> None:
                with session.begin():
                    rename(session, 1, "zed")
                    invalidate_after_commit(session, cache, keys=["user:1"], tags=["users"])
                    raise RuntimeError("boom")

            with pytest.raises(RuntimeError):
                fail()
        elif how == "close":
            rename(session, 1, "zed")
            invalidate_after_commit(session, cache, keys=["user:1"], tags=["users"])
            session.close()
        elif how == "savepoint-then-rollback":
            session.begin()
            with session.begin_nested():  # released: joins the root transaction
                rename(session, 1, "zed")
                invalidate_after_commit(session, cache, keys=["user:1"], tags=["users"])
            session.rollback()
        else:
            # Registered with the root; releasing a savepoint (before_commit fires
            # for it) does not make the root's later rollback a failed commit.
            rename(session, 1, "zed")
            invalidate_after_commit(session, cache, keys=["user:1"], tags=["users"])
            with session.begin_nested():
                session.execute(text("SELECT 1"))
            nested = session.begin_nested()
            nested.commit()
            session.rollback()
        # The session is reusable and a later commit does not resurrect the keys.
        rename(session, 2, "bea")
        session.commit()
    assert cache.calls == []
    assert db.committed_name(1) == "ann"
    assert db.committed_name(2) == "bea"
    assert cache.get("user:1") == "ann"
    assert cache.get("user:2") == "bob"


@pytest.mark.parametrize("savepoint", [False, True])
def test_sqlalchemy_dropped_registrations_are_not_retained(
    db: Database, engine: Engine, savepoint: bool
) -> None:
    cache = Cache()
    ref = weakref.ref(cache)
    with Session(engine) as session:
        session.begin()
        nested = session.begin_nested() if savepoint else None
        invalidate_after_commit(session, cache, keys=["user:1"])
        if nested is not None:
            nested.rollback()
        else:
            session.rollback()
        cache.close()
        del cache
        gc.collect()
        # The session no longer holds the rolled-back batch (nor its cache).
        assert ref() is None
        session.commit()


def test_sqlalchemy_batches_deduplicates_and_invalidates_once(
    db: Database, engine: Engine, cache: SpyCache
) -> None:
    cache.set("user:2", "bob", tags=["users"])  # needs Cache tags
    with Session(engine) as session:
        rename(session, 1, "zed")
        invalidate_after_commit(session, cache, keys=["user:1", "user:9"])
        invalidate_after_commit(session, cache, keys=["user:9", "user:1", "user:3"])
        invalidate_after_commit(session, cache, tags=["users"])
        invalidate_after_commit(session, cache, keys=("user:3",), tags=["users", "teams"])
        session.commit()
        expected = [
            ("delete_many", ("user:1", "user:9", "user:3"), "zed"),
            ("invalidate_tags", ("users", "teams"), "zed"),
        ]
        assert cache.calls == expected
        # Tag invalidation reached the entry registered only by tag.
        assert cache.get("user:2") is MISSING
        cache.set("user:1", "zed")
        rename(session, 2, "bea")
        session.commit()  # a second transaction with nothing registered
    assert cache.calls == expected
    assert cache.get("user:1") == "zed"


def test_sqlalchemy_several_caches_in_one_transaction(db: Database, engine: Engine) -> None:
    first, second = SpyCache(db.committed_name), SpyCache(db.committed_name)
    try:
        first.set("user:1", "ann")
        second.set("profile:1", "ann's profile")
        with Session(engine) as session, session.begin():
            rename(session, 1, "zed")
            invalidate_after_commit(session, first, keys=["user:1"])
            invalidate_after_commit(session, second, keys=["profile:1"])
        assert first.calls == [("delete_many", ("user:1",), "zed")]
        assert second.calls == [("delete_many", ("profile:1",), "zed")]
    finally:
        first.close()
        second.close()


def test_sqlalchemy_savepoints(db: Database, engine: Engine, cache: SpyCache) -> None:
    cache.set("user:3", "cid")
    with Session(engine) as session, session.begin():
        rename(session, 1, "zed")
        invalidate_after_commit(session, cache, keys=["user:1"])
        rolled_back = session.begin_nested()
        rename(session, 2, "bea")
        invalidate_after_commit(session, cache, keys=["user:2"], tags=["users"])
        rolled_back.rollback()
        with session.begin_nested():
            with session.begin_nested():  # two levels deep, both released
                invalidate_after_commit(session, cache, keys=["user:3"])
            invalidate_after_commit(session, cache, keys=["user:1"])
        # Releasing savepoints commits nothing: nothing invalidated yet.
        assert cache.calls == []
        assert cache.get("user:3") == "cid"
    assert cache.calls == [("delete_many", ("user:1", "user:3"), "zed")]
    assert db.committed_name(2) == "bob"
    assert cache.get("user:2") == "bob"  # registered in the rolled-back savepoint
    assert cache.get("user:1") is MISSING
    assert cache.get("user:3") is MISSING


def test_sqlalchemy_registering_first_begins_the_transaction(
    db: Database, engine: Engine, cache: SpyCache
) -> None:
    with Session(engine) as session:
        invalidate_after_commit(session, cache)  # nothing to register: no transaction
        assert not session.in_transaction()
        invalidate_after_commit(session, cache, keys=["user:1"])
        assert session.in_transaction()
        rename(session, 1, "zed")
        session.commit()
    assert cache.calls == [("delete_many", ("user:1",), "zed")]
    with Session(engine, autobegin=False) as session:
        with pytest.raises(InvalidRequestError, match=r"session\.begin"):
            invalidate_after_commit(session, cache, keys=["user:2"])
        with session.begin():
            invalidate_after_commit(session, cache, keys=["user:2"])
    assert cache.calls[1:] == [("delete_many", ("user:2",), "zed")]


def test_sqlalchemy_failed_commit_invalidates_anyway(
    db: Database, engine: Engine, cache: SpyCache
) -> None:
    """A commit that fails may have committed (a connection lost after the
    server's COMMIT): its registrations are invalidated when the transaction
    ends. An extra invalidation costs a miss; a missing one, a stale value."""
    with Session(engine) as session:
        rename(session, 1, "zed")
        session.execute(text("INSERT INTO members (id, team_id) VALUES (1, 404)"))
        invalidate_after_commit(session, cache, keys=["user:1"])
        with pytest.raises(IntegrityError):
            session.commit()  # the deferred foreign key fails at COMMIT
        session.rollback()
        assert cache.calls == [("delete_many", ("user:1",), "ann")]
        rename(session, 2, "bea")
        session.commit()  # registered nothing: invalidates nothing
    assert len(cache.calls) == 1
    assert db.committed_name(1) == "ann"


def test_sqlalchemy_failed_commit_with_a_savepoint_open_invalidates_anyway(
    db: Database, engine: Engine, cache: SpyCache
) -> None:
    """The root's commit() with a savepoint still open releases the savepoint
    first: a COMMIT that then fails is still a commit of unknown outcome."""
    with Session(engine) as session:
        root = session.begin()
        rename(session, 1, "zed")
        session.execute(text("INSERT INTO members (id, team_id) VALUES (1, 404)"))
        invalidate_after_commit(session, cache, keys=["user:1"])
        session.begin_nested()  # left open
        invalidate_after_commit(session, cache, keys=["user:2"])
        with pytest.raises(IntegrityError):
            root.commit()
        session.rollback()
        assert cache.calls == [("delete_many", ("user:1", "user:2"), "ann")]
    assert db.committed_name(1) == "ann"


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


def test_sqlalchemy_orm_changes_flushed_by_commit(
    db: Database, engine: Engine, cache: SpyCache
) -> None:
    with Session(engine) as session:
        user = session.get(User, 1)
        assert user is not None
        user.name = "zed"  # flushed by commit(), inside the transaction
        invalidate_after_commit(session, cache, keys=[f"user:{user.id}"])
        session.commit()
    assert cache.calls == [("delete_many", ("user:1",), "zed")]


def test_sqlalchemy_cache_failure_is_logged_and_counted_not_raised(
    db: Database, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    errors = invalidation_errors()
    with BrokenCache() as broken, caplog.at_level(logging.ERROR, logger="cachewise"):
        broken.set("user:1", "ann", tags=["users"])  # needs Cache tags
        with Session(engine) as session:
            rename(session, 1, "zed")
            invalidate_after_commit(session, broken, keys=["user:1"], tags=["users"])
            session.commit()  # committed: must not raise
        # The tag invalidation still ran after the failed delete_many.
        assert broken.get("user:1") is MISSING
    assert db.committed_name(1) == "zed"
    assert invalidation_errors() == errors + 1
    [record] = [r for r in caplog.records if r.name == "cachewise"]
    assert record.levelno == logging.ERROR
    assert "delete of 'user:1'" in record.getMessage()
    assert "stale" in record.getMessage()
    assert "cache cluster on fire" in record.getMessage()


def test_sqlalchemy_bad_arguments_fail_at_registration(db: Database, engine: Engine) -> None:
    with Session(engine) as session, Cache() as cache:
        with pytest.raises(TypeError, match="not a str"):
            invalidate_after_commit(session, cache, keys="user:1")
        with pytest.raises(TypeError, match="not a str"):
            invalidate_after_commit(session, cache, tags="users")
        with pytest.raises(TypeError, match="int"):
            invalidate_after_commit(session, cache, keys=[1])  # type: ignore[list-item]
        with pytest.raises(ValueError, match="non-empty"):
            invalidate_after_commit(session, cache, tags=[""])
        with pytest.raises(TypeError, match="Session"):
            invalidate_after_commit(object(), cache, keys=["k"])  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="AsyncCache"):
            invalidate_after_commit(session, AsyncCache(), keys=["k"])
        with pytest.raises(TypeError, match="dict"):
            invalidate_after_commit(session, {}, keys=["k"])  # type: ignore[arg-type]
        assert not session.in_transaction()


# -- SQLAlchemy, asyncio -----------------------------------------------------------


def test_async_sqlalchemy_invalidated_when_commit_returns(db: Database) -> None:
    async def main() -> None:
        engine = db.async_engine()
        try:
            async with async_cache(db) as cache, AsyncSession(engine) as session:
                await cache.set("user:2", "bob", tags=["users"])  # needs AsyncCache tags
                await arename(session, 1, "zed")
                invalidate_after_commit(session, cache, keys=["user:1"])
                invalidate_after_commit(session, cache, keys=["user:1"], tags=["users"])
                # A concurrent reader during the transaction still gets the cached value.
                assert await asyncio.create_task(cache.get("user:1")) == "ann"
                assert cache.calls == []
                await session.commit()
                # No await in between: commit() returned after the invalidation.
                assert cache.calls == [
                    ("delete_many", ("user:1",), "zed"),
                    ("invalidate_tags", ("users",), "zed"),
                ]
                assert await cache.get("user:1") is MISSING
                assert await cache.get("user:2") is MISSING  # by tag
                await cache.set("user:1", "zed")
                await arename(session, 2, "bea")
                await session.commit()  # nothing registered: nothing invalidated again
                assert len(cache.calls) == 2
                assert await cache.get("user:1") == "zed"
        finally:
            await engine.dispose()

    asyncio.run(main())


@pytest.mark.parametrize("how", ["rollback", "exception", "close", "savepoint"])
def test_async_sqlalchemy_rollback_invalidates_nothing(db: Database, how: str) -> None:
    async def main() -> None:
        engine = db.async_engine()
        try:
            async with async_cache(db) as cache:
                async with AsyncSession(engine) as session:
                    if how == "rollback":
                        await arename(session, 1, "zed")
                        invalidate_after_commit(session, cache, keys=["user:1"])
                        await session.rollback()
                    elif how == "exception":

                        async def fail() -> None:
                            async with session.begin():
                                await arename(session, 1, "zed")
                                invalidate_after_commit(session, cache, keys=["user:1"])
                                raise RuntimeError("boom")

                        with pytest.raises(RuntimeError):
                            await fail()
                    elif how == "close":
                        await arename(session, 1, "zed")
                        invalidate_after_commit(session, cache, keys=["user:1"])
                        await session.close()
                    else:
                        await arename(session, 2, "bea")
                        invalidate_after_commit(session, cache, keys=["user:2"])
                        savepoint = await session.begin_nested()
                        await arename(session, 1, "zed")
                        invalidate_after_commit(session, cache, keys=["user:1"])
                        await savepoint.rollback()
                        await session.commit()
                assert await cache.get("user:1") == "ann"
                assert [call[:2] for call in cache.calls] == (
                    [("delete_many", ("user:2",))] if how == "savepoint" else []
                )
        finally:
            await engine.dispose()
        assert db.committed_name(1) == "ann"

    asyncio.run(main())


def test_async_sqlalchemy_with_sync_cache_and_run_sync(db: Database) -> None:
    async def main() -> None:
        engine = db.async_engine()
        try:
            async with async_cache(db) as acache, AsyncSession(engine) as session:
                cache = SpyCache(db.committed_name)
                try:
                    cache.set("user:1", "ann")
                    await arename(session, 1, "zed")
                    invalidate_after_commit(session, cache, keys=["user:1"])
                    # The AsyncSession's own sync Session accepts an AsyncCache too.
                    await session.run_sync(
                        lambda sync: invalidate_after_commit(sync, acache, keys=["user:1"])
                    )
                    await session.commit()
                    assert cache.calls == [("delete_many", ("user:1",), "zed")]
                    assert acache.calls == [("delete_many", ("user:1",), "zed")]
                    assert cache.get("user:1") is MISSING
                    assert await acache.get("user:1") is MISSING
                finally:
                    cache.close()
        finally:
            await engine.dispose()

    asyncio.run(main())


def test_async_sqlalchemy_cancelled_during_invalidation_still_finishes_it(
    db: Database,
) -> None:
    async def main() -> None:
        engine = db.async_engine()
        try:
            async with async_cache(db) as cache, AsyncSession(engine) as session:
                cache.gate = asyncio.Event()
                await arename(session, 1, "zed")
                invalidate_after_commit(session, cache, keys=["user:1"])
                committing = asyncio.create_task(session.commit())
                await asyncio.wait_for(cache.entered.wait(), 10)
                committing.cancel()
                await asyncio.sleep(0)
                try:
                    assert not committing.done()  # waits for the invalidation
                finally:
                    cache.gate.set()  # never left waiting, whatever failed
                with pytest.raises(asyncio.CancelledError):
                    await committing
                assert await cache.get("user:1") is MISSING
                assert cache.calls == [("delete_many", ("user:1",), "zed")]
                # As after any cancelled commit, the session is closed, then reusable.
                await session.close()
                await arename(session, 2, "bea")
                await session.commit()
                assert len(cache.calls) == 1
        finally:
            await engine.dispose()
        assert db.committed_name(1) == "zed"

    asyncio.run(main())


def test_async_sqlalchemy_cache_failure_is_logged_not_raised(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        engine = db.async_engine()
        try:
            async with AsyncBrokenCache() as broken, AsyncSession(engine) as session:
                await arename(session, 1, "zed")
                invalidate_after_commit(session, broken, keys=["user:1"])
                await session.commit()
        finally:
            await engine.dispose()

    errors = invalidation_errors()
    with caplog.at_level(logging.ERROR, logger="cachewise"):
        asyncio.run(main())
    assert invalidation_errors() == errors + 1
    assert any("stale" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    assert db.committed_name(1) == "zed"


def test_async_cache_committed_outside_the_event_loop_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        engine = create_async_engine("sqlite+aiosqlite://")
        session = AsyncSession(engine)
        async with AsyncCache() as cache:
            await cache.set("k", 1)
            invalidate_after_commit(session, cache, keys=["k"])
            # Committing the underlying sync Session by hand bypasses the greenlet
            # the AsyncCache needs: no exception, no coroutine left unawaited.
            errors = invalidation_errors()
            with caplog.at_level(logging.ERROR, logger="cachewise"):
                session.sync_session.commit()
            assert invalidation_errors() == errors + 1
            assert "MissingGreenlet" in caplog.text
            assert await cache.get("k") == 1
        await session.close()
        await engine.dispose()

    asyncio.run(main())


# -- Django ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def django_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Django on a SQLite file, configured once per process."""
    pytest.importorskip("django")
    import django  # type: ignore[import-untyped]
    from django.conf import settings  # type: ignore[import-untyped]
    from django.db import connections  # type: ignore[import-untyped]

    if not settings.configured:
        settings.configure(
            DATABASES={
                "default": {
                    "ENGINE": "django.db.backends.sqlite3",
                    "NAME": str(tmp_path_factory.mktemp("django") / "app.db"),
                }
            },
            INSTALLED_APPS=[],
            USE_TZ=True,
        )
        django.setup()
    connection = connections["default"]
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS users")
        cursor.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
    yield connection
    connections.close_all()


@pytest.fixture
def django_cache(django_db: Any) -> Iterator[SpyCache]:
    with django_db.cursor() as cursor:
        cursor.execute("DELETE FROM users")
        cursor.execute("INSERT INTO users (id, name) VALUES (1, 'ann'), (2, 'bob')")
    spy = SpyCache(lambda: _django_committed_name(django_db))
    spy.set("user:1", "ann")
    spy.set("user:2", "bob")
    yield spy
    spy.close()


def _django_committed_name(connection: Any) -> str | None:
    # A separate sqlite3 connection to the same file: committed data only.
    conn = sqlite3.connect(connection.settings_dict["NAME"])
    try:
        row = conn.execute("SELECT name FROM users WHERE id = 1").fetchone()
    finally:
        conn.close()
    return None if row is None else str(row[0])


def _django_rename(connection: Any, user_id: int, name: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute("UPDATE users SET name = %s WHERE id = %s", [name, user_id])


def test_django_invalidates_after_the_atomic_block_commits(
    django_db: Any, django_cache: SpyCache
) -> None:
    from django.db import transaction

    from cachewise.integrations.django import invalidate_on_commit

    django_cache.set("user:2", "bob", tags=["users"])  # needs Cache tags
    with transaction.atomic():
        _django_rename(django_db, 1, "zed")
        invalidate_on_commit(django_cache, keys=["user:1"])
        invalidate_on_commit(django_cache, keys=["user:1", "user:3"], tags=["users"])
        assert django_cache.calls == []
        assert read_in_thread(lambda: django_cache.get("user:1")) == "ann"
        assert _django_committed_name(django_db) == "ann"
    assert django_cache.calls == [
        ("delete_many", ("user:1", "user:3"), "zed"),
        ("invalidate_tags", ("users",), "zed"),
    ]
    assert django_cache.get("user:1") is MISSING
    assert django_cache.get("user:2") is MISSING


def test_django_rollback_invalidates_nothing(django_db: Any, django_cache: SpyCache) -> None:
    from django.db import transaction

    from cachewise.integrations.django import invalidate_on_commit

    def fail() -> None:
        with transaction.atomic():
            _django_rename(django_db, 1, "zed")
            invalidate_on_commit(django_cache, keys=["user:1"], tags=["users"])
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        fail()
    with transaction.atomic():  # the next transaction does not inherit them
        _django_rename(django_db, 2, "bea")
    assert django_cache.calls == []
    assert _django_committed_name(django_db) == "ann"
    assert django_cache.get("user:1") == "ann"


def test_django_outside_atomic_invalidates_immediately(
    django_db: Any, django_cache: SpyCache
) -> None:
    from cachewise.integrations.django import invalidate_on_commit

    _django_rename(django_db, 1, "zed")  # autocommit: already committed
    invalidate_on_commit(django_cache, keys=["user:1"], using="default")
    assert django_cache.calls == [("delete_many", ("user:1",), "zed")]
    assert django_cache.get("user:1") is MISSING


def test_django_savepoints(django_db: Any, django_cache: SpyCache) -> None:
    from django.db import transaction

    from cachewise.integrations.django import invalidate_on_commit

    def fail_in_savepoint() -> None:
        with transaction.atomic():
            _django_rename(django_db, 2, "bea")
            invalidate_on_commit(django_cache, keys=["user:2"], tags=["users"])
            raise RuntimeError("savepoint rolled back")

    django_cache.set("user:3", "cid")
    with transaction.atomic():
        invalidate_on_commit(django_cache, keys=["user:1"])
        with pytest.raises(RuntimeError):
            fail_in_savepoint()
        with transaction.atomic():
            invalidate_on_commit(django_cache, keys=["user:3"])
            invalidate_on_commit(django_cache, keys=["user:3"])
        with transaction.atomic(savepoint=False):
            invalidate_on_commit(django_cache, keys=["user:1", "user:4"])
        _django_rename(django_db, 1, "zed")
    # One batch per savepoint level: the outer block's (the savepoint=False block
    # joins it), then the released savepoint's. The rolled-back one is gone.
    assert django_cache.calls == [
        ("delete_many", ("user:1", "user:4"), "zed"),
        ("delete_many", ("user:3",), "zed"),
    ]
    assert django_cache.get("user:2") == "bob"


def test_django_rejects_async_caches_and_logs_failures(
    django_db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from django.db import transaction

    from cachewise.integrations.django import invalidate_on_commit

    with pytest.raises(TypeError, match="AsyncCache"):
        invalidate_on_commit(AsyncCache(), keys=["k"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not a str"):
        invalidate_on_commit(Cache(), keys="k")
    errors = invalidation_errors()
    with BrokenCache() as broken, caplog.at_level(logging.ERROR, logger="cachewise"):
        with transaction.atomic():
            _django_rename(django_db, 1, "zed")
            invalidate_on_commit(broken, keys=["user:1"])
    assert invalidation_errors() == errors + 1
    assert "stale" in caplog.text
    assert _django_committed_name(django_db) == "zed"


# -- plain DB-API ------------------------------------------------------------------


def test_dbapi_commits_then_invalidates(db: Database, cache: SpyCache) -> None:
    cache.set("user:2", "bob", tags=["users"])  # needs Cache tags
    conn = db.connect()
    try:
        with transaction(conn, cache, keys=["user:1"]) as after_commit:
            conn.execute(f"UPDATE users SET name = 'zed' WHERE id = {db.ph}", (1,))
            after_commit.invalidate(keys=["user:1", "user:9"], tags=["users"])
            after_commit.invalidate(tags=["users"])
            assert after_commit.keys == ("user:1", "user:9")
            assert after_commit.tags == ("users",)
            assert cache.calls == []
            assert read_in_thread(lambda: cache.get("user:1")) == "ann"
            assert db.committed_name(1) == "ann"
        assert cache.calls == [
            ("delete_many", ("user:1", "user:9"), "zed"),
            ("invalidate_tags", ("users",), "zed"),
        ]
        assert cache.get("user:1") is MISSING
        assert cache.get("user:2") is MISSING
        with pytest.raises(RuntimeError, match="ended"):
            after_commit.invalidate(keys=["late"])
    finally:
        conn.close()


def test_dbapi_exception_rolls_back_and_a_failed_commit_invalidates_anyway(
    db: Database, cache: SpyCache
) -> None:
    conn = db.connect()

    def fail() -> None:
        with transaction(conn, cache, keys=["user:1"]):
            conn.execute(f"UPDATE users SET name = 'zed' WHERE id = {db.ph}", (1,))
            raise KeyError("boom")

    def fail_at_commit() -> None:
        with transaction(conn, cache, keys=["user:1"]):
            conn.execute(f"UPDATE users SET name = 'zed' WHERE id = {db.ph}", (1,))
            conn.execute("INSERT INTO members (id, team_id) VALUES (1, 404)")

    try:
        with pytest.raises(KeyError):
            fail()
        assert db.committed_name(1) == "ann"
        # The connection was rolled back, not left in a half-done transaction.
        assert conn.execute("SELECT name FROM users WHERE id = 1").fetchone()[0] == "ann"
        conn.rollback()
        assert cache.calls == []
        # A failing COMMIT (deferred foreign key) is rolled back, and invalidated
        # anyway: a commit that raised may have committed (a lost connection).
        with pytest.raises(Exception, match=r"(?i)foreign key"):
            fail_at_commit()
        assert db.committed_name(1) == "ann"
        assert [call[:2] for call in cache.calls] == [("delete_many", ("user:1",))]
        with transaction(conn, cache):  # the connection is usable again
            conn.execute(f"UPDATE users SET name = 'bea' WHERE id = {db.ph}", (2,))
        assert db.committed_name(2) == "bea"
    finally:
        conn.close()


def test_dbapi_refuses_autocommit_and_nesting(db: Database, cache: SpyCache) -> None:
    conn = db.connect()
    try:
        if db.kind == "sqlite":
            conn.isolation_level = None
        else:
            conn.autocommit = True
        with pytest.raises(ValueError, match="autocommit"), transaction(conn, cache):
            pass
        if db.kind == "sqlite":
            conn.isolation_level = ""
        else:
            conn.autocommit = False

        def nest() -> None:
            with transaction(conn, cache, keys=["user:1"]):
                conn.execute(f"UPDATE users SET name = 'zed' WHERE id = {db.ph}", (1,))
                with transaction(conn, cache, keys=["user:2"]):
                    pass

        with pytest.raises(RuntimeError, match="already open"):
            nest()
        assert db.committed_name(1) == "ann"
        assert cache.calls == []
        with pytest.raises(TypeError, match="AsyncCache"):
            with transaction(conn, AsyncCache()):  # type: ignore[arg-type]
                pass
    finally:
        conn.close()


def test_async_dbapi_commits_then_invalidates(db: Database) -> None:
    async def main() -> None:
        async with async_cache(db) as cache:
            await cache.set("user:2", "bob", tags=["users"])  # needs AsyncCache tags
            conn = await db.aconnect()
            try:
                async with async_transaction(conn, cache, keys=["user:1"]) as after_commit:
                    await conn.execute(f"UPDATE users SET name = 'zed' WHERE id = {db.ph}", (1,))
                    after_commit.invalidate(tags=["users"])
                    assert cache.calls == []
                    assert await cache.get("user:1") == "ann"
                assert cache.calls == [
                    ("delete_many", ("user:1",), "zed"),
                    ("invalidate_tags", ("users",), "zed"),
                ]
                assert await cache.get("user:1") is MISSING
                assert await cache.get("user:2") is MISSING

                async def fail() -> None:
                    async with async_transaction(conn, cache, keys=["user:1"]):
                        await conn.execute(
                            f"UPDATE users SET name = 'xavier' WHERE id = {db.ph}", (1,)
                        )
                        raise KeyError("boom")

                await cache.set("user:1", "zed")
                with pytest.raises(KeyError):
                    await fail()
                assert db.committed_name(1) == "zed"
                assert len(cache.calls) == 2
                assert await cache.get("user:1") == "zed"
            finally:
                await conn.close()

    asyncio.run(main())


# -- names validated at registration; batches that survive a failing call ----------

# Names the cache refuses, with the error delete_many / invalidate_tags would raise
# after the commit if they were let through: (bad key, its error, bad tag, its
# error). There is no length limit (long keys and tags are hashed), so the long
# rows are long names with a bad character past the part kept readable.
BAD_NAMES = [
    pytest.param("user 1", ValueError, "all users", ValueError, id="whitespace"),
    pytest.param("user:1\n", ValueError, "users\t", ValueError, id="newline-tab"),
    pytest.param("user:\x001", ValueError, "users\x7f", ValueError, id="control"),
    pytest.param("", ValueError, "", ValueError, id="empty"),
    pytest.param("k" * 300 + " x", ValueError, "t" * 300 + "\n", ValueError, id="long"),
    pytest.param(7, TypeError, None, TypeError, id="int-none"),
    pytest.param(b"user:1", TypeError, b"users", TypeError, id="bytes"),
]
LONG_KEY = "user:" + "x" * 1000  # valid: stored under a hashed name


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Database:
    database = Database("sqlite", path=tmp_path / "names.db")
    database.reset()
    return database


@pytest.fixture
def sqlite_conn(sqlite_db: Database) -> Iterator[sqlite3.Connection]:
    conn = sqlite_db.connect()
    yield conn
    conn.close()


def _bad_registrations(
    bad_key: object, key_error: type, bad_tag: object, tag_error: type
) -> list[tuple[list[Any], list[Any], type]]:
    """(keys, tags, expected error) for calls that each hold one bad name next to
    good ones."""
    return [
        (["user:1", bad_key], [], key_error),
        ([], ["users", bad_tag], tag_error),
        (["user:1"], ["users", bad_tag], tag_error),  # the good key registers neither
    ]


@pytest.mark.parametrize(("bad_key", "key_error", "bad_tag", "tag_error"), BAD_NAMES)
def test_sqlalchemy_refuses_names_the_cache_would_refuse_at_registration(
    sqlite_db: Database, bad_key: object, key_error: type, bad_tag: object, tag_error: type
) -> None:
    engine = sqlite_db.engine()
    try:
        cache = SpyCache()
        with cache, Session(engine) as session:
            cache.set("user:1", "ann")
            for keys, tags, error in _bad_registrations(bad_key, key_error, bad_tag, tag_error):
                with pytest.raises(error):
                    invalidate_after_commit(session, cache, keys=keys, tags=tags)
                assert not session.in_transaction()  # nothing registered, nothing begun
            # In an open transaction: the refused call registers nothing, the
            # earlier registrations stay.
            rename(session, 1, "zed")
            invalidate_after_commit(session, cache, keys=[LONG_KEY])
            for keys, tags, error in _bad_registrations(bad_key, key_error, bad_tag, tag_error):
                with pytest.raises(error):
                    invalidate_after_commit(session, cache, keys=keys, tags=tags)
            session.commit()
            assert cache.calls == [("delete_many", (LONG_KEY,), None)]
            assert cache.get("user:1") == "ann"
    finally:
        engine.dispose()


@pytest.mark.parametrize(("bad_key", "key_error", "bad_tag", "tag_error"), BAD_NAMES)
def test_dbapi_refuses_names_the_cache_would_refuse_at_registration(
    sqlite_conn: sqlite3.Connection,
    bad_key: object,
    key_error: type,
    bad_tag: object,
    tag_error: type,
) -> None:
    cache = SpyCache()
    with cache:
        cache.set("user:1", "ann")
        for keys, tags, error in _bad_registrations(bad_key, key_error, bad_tag, tag_error):
            # In the transaction() call: the block never starts.
            with pytest.raises(error), transaction(sqlite_conn, cache, keys=keys, tags=tags):
                raise AssertionError("the block ran")
        with transaction(sqlite_conn, cache, keys=[LONG_KEY]) as after_commit:
            sqlite_conn.execute("UPDATE users SET name = 'zed' WHERE id = 1")
            for keys, tags, error in _bad_registrations(bad_key, key_error, bad_tag, tag_error):
                # In AfterCommit.invalidate: that call registers nothing.
                with pytest.raises(error):
                    after_commit.invalidate(keys=keys, tags=tags)
            assert after_commit.keys == (LONG_KEY,)
            assert after_commit.tags == ()
        assert cache.calls == [("delete_many", (LONG_KEY,), None)]
        assert cache.get("user:1") == "ann"


@pytest.mark.parametrize(("bad_key", "key_error", "bad_tag", "tag_error"), BAD_NAMES)
def test_async_dbapi_refuses_names_the_cache_would_refuse_at_registration(
    sqlite_db: Database, bad_key: object, key_error: type, bad_tag: object, tag_error: type
) -> None:
    async def main() -> None:
        async with async_cache(sqlite_db) as cache:
            conn = await sqlite_db.aconnect()
            try:
                for keys, tags, error in _bad_registrations(bad_key, key_error, bad_tag, tag_error):
                    with pytest.raises(error):
                        async with async_transaction(conn, cache, keys=keys, tags=tags):
                            raise AssertionError("the block ran")
                async with async_transaction(conn, cache) as after_commit:
                    for keys, tags, error in _bad_registrations(
                        bad_key, key_error, bad_tag, tag_error
                    ):
                        with pytest.raises(error):
                            after_commit.invalidate(keys=keys, tags=tags)
                assert cache.calls == []
                assert await cache.get("user:1") == "ann"
            finally:
                await conn.close()

    asyncio.run(main())


@pytest.mark.parametrize(("bad_key", "key_error", "bad_tag", "tag_error"), BAD_NAMES)
def test_django_refuses_names_the_cache_would_refuse_at_registration(
    django_db: Any,
    django_cache: SpyCache,
    bad_key: object,
    key_error: type,
    bad_tag: object,
    tag_error: type,
) -> None:
    from django.db import transaction as django_transaction

    from cachewise.integrations.django import invalidate_on_commit

    with django_transaction.atomic():
        _django_rename(django_db, 1, "zed")
        invalidate_on_commit(django_cache, keys=[LONG_KEY])
        for keys, tags, error in _bad_registrations(bad_key, key_error, bad_tag, tag_error):
            with pytest.raises(error):
                invalidate_on_commit(django_cache, keys=keys, tags=tags)
    assert django_cache.calls == [("delete_many", (LONG_KEY,), "zed")]
    assert django_cache.get("user:1") == "ann"
    # Outside atomic() the invalidation would run at once: still refused first.
    for keys, tags, error in _bad_registrations(bad_key, key_error, bad_tag, tag_error):
        with pytest.raises(error):
            invalidate_on_commit(django_cache, keys=keys, tags=tags)
    assert django_cache.calls == [("delete_many", (LONG_KEY,), "zed")]


class FlakyBatchCache(SpyCache):
    """A ``Cache`` whose batch calls raise (as ``delete_many`` did for a batch
    holding one bad key), and whose one-name calls raise for ``bad`` only."""

    def __init__(self, bad: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self.bad = bad

    def delete_many(self, keys: Iterable[str]) -> int:
        keys = tuple(keys)
        self.calls.append(("delete_many", keys, None))
        raise ValueError("cache keys may not contain whitespace")

    def delete(self, key: str) -> bool:
        self.calls.append(("delete", (key,), None))
        if key in self.bad:
            raise ConnectionError(f"{key} is on fire")
        return super().delete(key)

    def invalidate_tags(self, *tags: str) -> None:
        self.calls.append(("invalidate_tags", tags, None))
        if len(tags) > 1 or set(tags) & self.bad:
            raise ValueError("tags on fire")
        Cache.invalidate_tags(self, *tags)


def _fill(cache: Cache) -> None:
    for i in range(1, 5):
        cache.set(f"user:{i}", i)
    cache.set("tagged:a", "a", tags=["t:a"])
    cache.set("tagged:b", "b", tags=["t:b"])
    cache.set("tagged:c", "c", tags=["t:c"])


def test_a_failing_batch_still_invalidates_every_other_name(
    sqlite_conn: sqlite3.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    errors = invalidation_errors()
    cache = FlakyBatchCache(bad=frozenset({"user:2", "t:b"}))
    with cache:
        _fill(cache)
        with caplog.at_level(logging.WARNING, logger="cachewise"):
            with transaction(
                sqlite_conn, cache, keys=["user:1", "user:2", "user:3"], tags=["t:a", "t:b", "t:c"]
            ):
                sqlite_conn.execute("UPDATE users SET name = 'zed' WHERE id = 1")
        # Every name but the two that fail on their own was invalidated.
        assert [cache.get(f"user:{i}") for i in range(1, 5)] == [MISSING, 2, MISSING, 4]
        assert [cache.get(f"tagged:{t}") for t in "abc"] == [MISSING, "b", MISSING]
        assert cache.calls == [
            ("delete_many", ("user:1", "user:2", "user:3"), None),
            ("delete", ("user:1",), None),
            ("delete", ("user:2",), None),
            ("delete", ("user:3",), None),
            ("invalidate_tags", ("t:a", "t:b", "t:c"), None),
            ("invalidate_tags", ("t:a",), None),
            ("invalidate_tags", ("t:b",), None),
            ("invalidate_tags", ("t:c",), None),
        ]
    assert invalidation_errors() == errors + 2  # user:2 and t:b, once each
    failures = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failures) == 2
    assert "delete of 'user:2'" in failures[0]
    assert "invalidate_tags of 't:b'" in failures[1]
    assert all("stale" in message for message in failures)


def test_a_failing_batch_in_sqlalchemy_still_invalidates_every_other_key(
    sqlite_db: Database,
) -> None:
    engine = sqlite_db.engine()
    errors = invalidation_errors()
    try:
        with FlakyBatchCache() as cache, Session(engine) as session:
            _fill(cache)
            rename(session, 1, "zed")
            invalidate_after_commit(session, cache, keys=["user:1", "user:3"], tags=["t:a"])
            invalidate_after_commit(session, cache, keys=["user:4"], tags=["t:c"])
            session.commit()
            assert [cache.get(f"user:{i}") for i in range(1, 5)] == [MISSING, 2, MISSING, MISSING]
            assert [cache.get(f"tagged:{t}") for t in "abc"] == [MISSING, "b", MISSING]
    finally:
        engine.dispose()
    assert invalidation_errors() == errors  # every name made it in the end


def test_a_failing_async_batch_still_invalidates_every_other_key(sqlite_db: Database) -> None:
    class FlakyAsyncCache(AsyncCache):
        async def delete_many(self, keys: Iterable[str]) -> int:
            raise ValueError("cache keys may not contain whitespace")

        async def delete(self, key: str) -> bool:
            if key == "user:2":
                raise ConnectionError("user:2 is on fire")
            return await super().delete(key)

    async def main() -> None:
        async with FlakyAsyncCache() as cache:
            for i in range(1, 4):
                await cache.set(f"user:{i}", i)
            conn = await sqlite_db.aconnect()
            try:
                async with async_transaction(conn, cache, keys=["user:1", "user:2", "user:3"]):
                    await conn.execute("UPDATE users SET name = 'zed' WHERE id = 1")
            finally:
                await conn.close()
            assert [await cache.get(f"user:{i}") for i in range(1, 4)] == [MISSING, 2, MISSING]

    errors = invalidation_errors()
    asyncio.run(main())
    assert invalidation_errors() == errors + 1


# -- @invalidates(after_commit=...) --------------------------------------------------


def test_invalidates_after_commit_sqlalchemy_runs_at_the_commit_and_not_on_rollback(
    db: Database, engine: Engine, cache: SpyCache
) -> None:
    @cache.invalidates("user:{user_id}", tags=["users"], after_commit="sqlalchemy")
    def rename_user(session: Session, user_id: int, name: str) -> None:
        rename(session, user_id, name)

    with Session(engine) as session:
        rename_user(session, 1, "bob")
        session.rollback()
    assert cache.calls == []
    assert cache.get("user:1") == "ann"
    with Session(engine) as session:
        rename_user(session, 1, "zed")
        assert cache.calls == []  # returned, not committed: nothing yet
        assert cache.get("user:1") == "ann"
        session.commit()
        # The spy read "zed" through another connection: after the commit.
        assert cache.calls == [
            ("delete_many", ("user:1",), "zed"),
            ("invalidate_tags", ("users",), "zed"),
        ]
    assert cache.get("user:1") is MISSING


def test_invalidates_after_commit_sqlalchemy_runs_at_once_when_the_write_committed(
    db: Database, engine: Engine, cache: SpyCache
) -> None:
    @cache.invalidates("user:{user_id}", after_commit="sqlalchemy")
    def rename_in_own_transaction(session: Session, user_id: int, name: str) -> None:
        with session.begin():
            rename(session, user_id, name)

    @cache.invalidates("user:{user_id}", after_commit="sqlalchemy")
    def rename_then_read(session: Session, user_id: int, name: str) -> None:
        rename(session, user_id, name)
        session.commit()
        session.execute(text("SELECT 1"))  # begins the next transaction

    with Session(engine) as session:
        rename_in_own_transaction(session, 1, "zed")
        assert cache.calls == [("delete_many", ("user:1",), "zed")]
        cache.set("user:1", "zed")
        rename_then_read(session, 1, "bea")
        # Committed during the call: at once, though a transaction is open again...
        assert cache.calls[1:] == [("delete_many", ("user:1",), "bea")]
        session.rollback()  # ...whose rollback cannot take the invalidation back
    assert len(cache.calls) == 2
    assert cache.get("user:1") is MISSING


def test_invalidates_after_commit_sqlalchemy_when_the_write_raises(
    db: Database, engine: Engine, cache: SpyCache
) -> None:
    """A write that raised may have written, or committed: registered with the
    transaction all the same (a rollback drops it), or run at once if the write
    committed."""

    @cache.invalidates("user:{user_id}", after_commit="sqlalchemy")
    def rename_then_fail(session: Session, user_id: int, name: str) -> None:
        rename(session, user_id, name)
        raise LookupError("audit step failed")

    @cache.invalidates("user:{user_id}", after_commit="sqlalchemy")
    def rename_commit_then_fail(session: Session, user_id: int, name: str) -> None:
        rename(session, user_id, name)
        session.commit()
        raise KeyError("notification failed")

    with Session(engine) as session:
        with pytest.raises(LookupError):
            rename_then_fail(session, 1, "bob")
        session.rollback()  # the caller rolls back: nothing to invalidate
    assert cache.calls == []
    with Session(engine) as session:
        with pytest.raises(LookupError):
            rename_then_fail(session, 1, "zed")
        assert cache.calls == []
        session.commit()  # the caller commits anyway: invalidated after the commit
    assert cache.calls == [("delete_many", ("user:1",), "zed")]
    cache.set("user:1", "zed")
    with Session(engine) as session:
        with pytest.raises(KeyError):
            rename_commit_then_fail(session, 1, "bea")
        assert cache.calls[1:] == [("delete_many", ("user:1",), "bea")]  # at once
    assert cache.get("user:1") is MISSING
    assert cache.get("user:2") == "bob"


def test_async_invalidates_after_commit_sqlalchemy_when_the_write_raises(
    sqlite_db: Database,
) -> None:
    async def main() -> None:
        engine = sqlite_db.async_engine()
        try:
            async with async_cache(sqlite_db) as cache:

                @cache.invalidates("user:{user_id}", after_commit="sqlalchemy")
                async def rename_then_fail(session: AsyncSession, user_id: int) -> None:
                    await arename(session, user_id, "zed")
                    raise LookupError("audit step failed")

                async with AsyncSession(engine) as session:
                    with pytest.raises(LookupError):
                        await rename_then_fail(session, 1)
                    await session.rollback()
                assert cache.calls == []
                async with AsyncSession(engine) as session:
                    with pytest.raises(LookupError):
                        await rename_then_fail(session, 1)
                    assert cache.calls == []
                    await session.commit()
                assert cache.calls == [("delete_many", ("user:1",), "zed")]
        finally:
            await engine.dispose()

    asyncio.run(main())


def test_invalidates_after_commit_sqlalchemy_needs_one_session_argument(
    db: Database, engine: Engine, cache: SpyCache
) -> None:
    written: list[int] = []

    @cache.invalidates("user:{user_id}", after_commit="sqlalchemy")
    def write(session: object, user_id: int, other: object = None) -> None:
        written.append(user_id)

    with Session(engine) as session, Session(engine) as second:
        with pytest.raises(TypeError, match="there is no"):
            write(object(), 1)
        with pytest.raises(TypeError, match="more than one"):
            write(session, 1, second)
        write(session, 1, session)  # the same session twice is one session
    assert written == [1]
    with pytest.raises(ValueError, match="after_commit must be one of"):
        cache.invalidates("user:{user_id}", after_commit="mongo")(write)  # type: ignore[arg-type]

    async def main() -> None:
        async with AsyncCache() as acache:

            @acache.invalidates("user:{user_id}", after_commit="sqlalchemy")
            async def awrite(session: Session, user_id: int) -> None:
                written.append(user_id)

            with Session(engine) as session, pytest.raises(TypeError, match="AsyncSession"):
                await awrite(session, 2)

    asyncio.run(main())
    assert written == [1]


def test_async_invalidates_after_commit_sqlalchemy_with_an_async_session(
    sqlite_db: Database,
) -> None:
    async def main() -> None:
        engine = sqlite_db.async_engine()
        try:
            async with async_cache(sqlite_db) as cache:

                @cache.invalidates("user:{user_id}", after_commit="sqlalchemy")
                async def rename_user(session: AsyncSession, user_id: int, name: str) -> None:
                    await arename(session, user_id, name)

                @cache.invalidates("user:{user_id}", after_commit="sqlalchemy")
                async def rename_committed(session: AsyncSession, user_id: int) -> None:
                    async with session.begin():
                        await arename(session, user_id, "bea")

                async with AsyncSession(engine) as session:
                    await rename_user(session, 1, "bob")
                    await session.rollback()
                assert cache.calls == []
                async with AsyncSession(engine) as session:
                    await rename_user(session, 1, "zed")
                    assert cache.calls == []
                    await session.commit()
                    assert cache.calls == [("delete_many", ("user:1",), "zed")]
                    await rename_committed(session, 2)  # no transaction left: at once
                    assert len(cache.calls) == 2
                assert await cache.get("user:1") is MISSING
                assert await cache.get("user:2") is MISSING
        finally:
            await engine.dispose()

    asyncio.run(main())


def test_invalidates_after_commit_django(django_db: Any, django_cache: SpyCache) -> None:
    from django.db import transaction as django_transaction

    @django_cache.invalidates("user:{user_id}", tags=["users"], after_commit="django")
    def rename_user(user_id: int, name: str) -> None:
        _django_rename(django_db, user_id, name)

    def rolled_back() -> None:
        with django_transaction.atomic():
            rename_user(1, "bob")
            raise LookupError

    with pytest.raises(LookupError):
        rolled_back()
    assert django_cache.calls == []
    with django_transaction.atomic():
        rename_user(1, "zed")
        assert django_cache.calls == []
        assert django_cache.get("user:1") == "ann"
    assert django_cache.calls == [
        ("delete_many", ("user:1",), "zed"),
        ("invalidate_tags", ("users",), "zed"),
    ]
    rename_user(1, "amy")  # autocommit, outside atomic(): at once
    assert django_cache.calls[2:] == [
        ("delete_many", ("user:1",), "amy"),
        ("invalidate_tags", ("users",), "amy"),
    ]
    with pytest.raises(TypeError, match="synchronously"):
        AsyncCache().invalidates("user:{user_id}", after_commit="django")(_async_noop)


def test_invalidates_after_commit_django_when_the_write_raises(
    django_db: Any, django_cache: SpyCache
) -> None:
    from django.db import transaction as django_transaction

    @django_cache.invalidates("user:{user_id}", after_commit="django")
    def rename_then_fail(user_id: int, name: str) -> None:
        _django_rename(django_db, user_id, name)
        raise LookupError("audit step failed")

    def rolled_back() -> None:
        with django_transaction.atomic():
            rename_then_fail(1, "bob")

    with pytest.raises(LookupError):
        rolled_back()
    assert django_cache.calls == []
    with django_transaction.atomic():
        with pytest.raises(LookupError):
            rename_then_fail(1, "zed")
        assert django_cache.calls == []
    # The block committed the UPDATE: invalidated after the commit.
    assert django_cache.calls == [("delete_many", ("user:1",), "zed")]
    assert django_cache.get("user:1") is MISSING


async def _async_noop(user_id: int) -> None:
    return None


def test_invalidates_after_commit_dbapi(db: Database, cache: SpyCache) -> None:
    @cache.invalidates("user:{user_id}", after_commit="dbapi")
    def rename_user(conn: Any, user_id: int, name: str, commit: bool = False) -> None:
        conn.execute(f"UPDATE users SET name = {db.ph} WHERE id = {db.ph}", (name, user_id))
        if commit:
            conn.commit()

    def rolled_back(conn: Any) -> None:
        with transaction(conn, cache):
            rename_user(conn, 1, "bob")
            raise LookupError

    conn = db.connect()
    try:
        with pytest.raises(LookupError):
            rolled_back(conn)
        assert cache.calls == []
        with transaction(conn, cache):
            rename_user(conn, 1, "zed")
            assert cache.calls == []
        assert cache.calls == [("delete_many", ("user:1",), "zed")]
        # No block: a write that committed itself is invalidated at once...
        rename_user(conn, 1, "amy", commit=True)
        assert cache.calls[1:] == [("delete_many", ("user:1",), "amy")]
        # ...one that left its transaction open is refused, nothing invalidated.
        with pytest.raises(RuntimeError, match="transaction open"):
            rename_user(conn, 1, "cid")
        conn.rollback()
        assert len(cache.calls) == 2
        with pytest.raises(TypeError, match="DB-API connection"):
            rename_user(None, 1, "dan")
    finally:
        conn.close()


def test_invalidates_after_commit_dbapi_when_the_write_raises(
    db: Database, cache: SpyCache
) -> None:
    @cache.invalidates("user:{user_id}", after_commit="dbapi")
    def rename_then_fail(conn: Any, user_id: int, name: str, commit: bool = False) -> None:
        conn.execute(f"UPDATE users SET name = {db.ph} WHERE id = {db.ph}", (name, user_id))
        if commit:
            conn.commit()
        raise LookupError("audit step failed")

    conn = db.connect()
    try:
        with pytest.raises(LookupError), transaction(conn, cache):
            rename_then_fail(conn, 1, "bob")  # the block rolls back: nothing
        assert cache.calls == []
        with transaction(conn, cache):
            with pytest.raises(LookupError):
                rename_then_fail(conn, 1, "zed")
            assert cache.calls == []
        assert cache.calls == [("delete_many", ("user:1",), "zed")]  # after the commit
        # No block, committed, then raised: at once.
        with pytest.raises(LookupError):
            rename_then_fail(conn, 1, "bea", commit=True)
        assert cache.calls[1:] == [("delete_many", ("user:1",), "bea")]
        # No block, a transaction left open: at once too (whatever the caller does
        # with it), and the write's own exception propagates, not a RuntimeError.
        with pytest.raises(LookupError):
            rename_then_fail(conn, 1, "cid")
        assert cache.calls[2:] == [("delete_many", ("user:1",), "bea")]
        conn.rollback()
        assert cache.get("user:2") == "bob"
    finally:
        conn.close()


def test_a_failing_invalidation_never_hides_the_writes_exception(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with BrokenCache() as broken:

        @broken.invalidates("user:{user_id}")
        def rename_then_fail(user_id: int) -> None:
            raise LookupError("audit step failed")

        with caplog.at_level(logging.ERROR, logger="cachewise"):
            with pytest.raises(LookupError):
                rename_then_fail(1)
        assert "stale" in caplog.text

    async def main() -> None:
        async with AsyncBrokenCache() as abroken:

            @abroken.invalidates("user:{user_id}")
            async def arename_then_fail(user_id: int) -> None:
                raise LookupError("audit step failed")

            with pytest.raises(LookupError):
                await arename_then_fail(1)

    asyncio.run(main())


def test_async_invalidates_after_commit_dbapi(sqlite_db: Database) -> None:
    async def main() -> None:
        async with async_cache(sqlite_db) as cache:

            @cache.invalidates("user:{user_id}", after_commit="dbapi")
            async def rename_user(conn: Any, user_id: int, name: str) -> None:
                await conn.execute("UPDATE users SET name = ? WHERE id = ?", (name, user_id))

            async def rolled_back(conn: Any) -> None:
                async with async_transaction(conn, cache):
                    await rename_user(conn, 1, "bob")
                    raise LookupError

            conn = await sqlite_db.aconnect()
            try:
                with pytest.raises(LookupError):
                    await rolled_back(conn)
                assert cache.calls == []
                async with async_transaction(conn, cache):
                    await rename_user(conn, 1, "zed")
                    assert cache.calls == []
                assert cache.calls == [("delete_many", ("user:1",), "zed")]
            finally:
                await conn.close()
            sync_conn = sqlite_db.connect()
            try:
                with transaction(sync_conn, Cache()), pytest.raises(TypeError, match="sync"):
                    await rename_user(sync_conn, 1, "amy")
            finally:
                sync_conn.close()
            assert len(cache.calls) == 1

    asyncio.run(main())


# -- packaging ---------------------------------------------------------------------


def test_the_package_imports_no_framework() -> None:
    code = (
        "import sys, cachewise.integrations, cachewise.integrations.dbapi\n"
        "assert 'sqlalchemy' not in sys.modules, 'sqlalchemy imported'\n"
        "assert 'django' not in sys.modules, 'django imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_missing_framework_names_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['sqlalchemy'] = None\n"
        "sys.modules['django'] = None\n"
        "for name, extra in [('sqlalchemy', 'sqlalchemy'), ('django', 'django')]:\n"
        "    try:\n"
        "        __import__('cachewise.integrations.' + name)\n"
        "    except ImportError as exc:\n"
        '        assert f"cachewise[{extra}]" in str(exc), exc\n'
        "    else:\n"
        "        raise AssertionError(name + ' imported')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_sqlalchemy_helper_works_for_plain_sessions_without_greenlet() -> None:
    """SQLAlchemy 2.1 no longer installs greenlet; its asyncio layer then cannot
    be imported. The helper must still serve plain Sessions."""
    program = """
import sys
sys.modules["greenlet"] = None  # as if it were not installed
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session
from cachewise import MISSING, Cache, MemoryBackend
from cachewise.integrations.sqlalchemy import invalidate_after_commit
engine = create_engine("sqlite://")
cache = Cache(MemoryBackend())
cache.set("k", 1)
with Session(engine) as session:
    session.execute(text("select 1"))
    invalidate_after_commit(session, cache, keys=["k"])
    assert cache.get("k") == 1
    session.commit()
assert cache.get("k") is MISSING
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", program], check=False, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
