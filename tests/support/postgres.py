"""A throwaway PostgreSQL database for tests, created and dropped by the test-suite.

The server is the one at ``CACHEWISE_TEST_POSTGRES`` (a libpq conninfo for an
administrative database; default ``host=127.0.0.1 port=5432 user=postgres
dbname=postgres``). ``temporary_database()`` creates a database with a name of its
own (``cachewise_test_<pid>_<random>``), hands out its conninfo, and drops it on
exit after terminating any connection still open on it. No other database is
read or written.

When the server cannot be reached, ``temporary_database()`` calls ``pytest.skip``;
``tests/conftest.py`` turns such skips into failures when ``CI=true``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

ADMIN_CONNINFO = os.environ.get(
    "CACHEWISE_TEST_POSTGRES", "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
)
CONNECT_TIMEOUT = 3


@contextmanager
def temporary_database() -> Iterator[str]:
    """Create a uniquely named database, yield its conninfo, drop it afterwards."""
    try:
        import psycopg
        from psycopg import sql
    except ImportError:
        pytest.skip("psycopg is not installed (pip install 'psycopg[binary]')")
    try:
        admin = psycopg.connect(ADMIN_CONNINFO, autocommit=True, connect_timeout=CONNECT_TIMEOUT)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL is unreachable at {ADMIN_CONNINFO!r}: {exc}".strip())
    name = f"cachewise_test_{os.getpid()}_{secrets.token_hex(4)}"
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            info = psycopg.conninfo.conninfo_to_dict(ADMIN_CONNINFO)
            info["dbname"] = name
            yield psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items()})
        finally:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


def sqlalchemy_url(conninfo: str) -> str:
    """A ``postgresql+psycopg://`` URL for ``conninfo`` (host, port, user, dbname;
    a password too if there is one)."""
    from urllib.parse import quote

    import psycopg

    info = psycopg.conninfo.conninfo_to_dict(conninfo)
    user = quote(str(info.get("user", "postgres")), safe="")
    password = info.get("password")
    auth = f"{user}:{quote(str(password), safe='')}" if password else user
    host = info.get("host", "127.0.0.1")
    port = info.get("port", 5432)
    return f"postgresql+psycopg://{auth}@{host}:{port}/{info['dbname']}"
