"""Install each extra alone into a fresh venv, then smoke-test what it enables.

    python scripts/smoke_extras.py            # every extra, two venvs at a time
    python scripts/smoke_extras.py redis zstd # just these
    python scripts/smoke_extras.py --keep     # keep the venvs (their path is printed)

The project is built into a wheel once; each venv installs ``wheel[extra]`` and
nothing else, so a missing dependency of an extra fails here, as it would for a
user. Each extra's program runs from a scratch directory outside the source tree
(and without PYTHONPATH), so it can only import what the install put there.
Programs run in ``[all]`` too, without their "alone" checks (that a package an
extra must not need is absent). pip's cache is reused between venvs and runs.

``make smoke-extras`` runs this; ``.ci/run`` runs that after ``make test``.
Needs ``redis-server`` on PATH (the redis program starts one on a free loopback
port), as the test suite does.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Started by the programs that need Redis; `port` is a free loopback port.
REDIS = """
import socket, subprocess, threading

def start_redis():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"],
        stdout=subprocess.PIPE, text=True,
    )
    # Ready once it says so (an event, not a sleep); then keep its pipe drained.
    for line in server.stdout:
        if "Ready to accept connections" in line:
            break
    else:
        raise SystemExit(f"redis-server exited ({server.wait()}) before it was ready")
    threading.Thread(target=server.stdout.read, daemon=True).start()
    return server, port
"""

# Each program runs with ALONE = True in the venv of its extra, False in [all].
PROGRAMS: dict[str, str] = {
    # No extra: the core works, and every optional feature names the extra it needs.
    "base": """
import subprocess, sys, sysconfig
from pathlib import Path
import cachewise
from cachewise import MISSING, Cache
from cachewise import serialization

cache = Cache(ttl=60)
assert cache.get_or_load("k", lambda: {"v": 1}) == {"v": 1}
cache.delete("k")
assert cache.get("k") is MISSING

def error(call):
    try:
        call()
    except ImportError as exc:
        return str(exc)
    raise AssertionError(f"{call} did not raise ImportError")

for text, extra in [
    (error(lambda: Cache.from_url("redis://127.0.0.1:1/0")), "redis"),
    (error(serialization.MsgpackSerializer), "msgpack"),
    (error(serialization.ZstdCompressor), "zstd"),
    (error(lambda: __import__("cachewise.integrations.sqlalchemy")), "sqlalchemy"),
    (error(lambda: __import__("cachewise.integrations.django")), "django"),
]:
    assert f"pip install 'cachewise[{extra}]'" in text, text

# DB-API after-commit invalidation needs no extra (sqlite3 is in the standard library).
import sqlite3
from cachewise.integrations.dbapi import transaction

conn = sqlite3.connect(":memory:")
conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
conn.execute("INSERT INTO users VALUES (1, 'ann')")
conn.commit()

@cache.invalidates("user:{user_id}", after_commit="dbapi")
def rename(conn, user_id, name):
    conn.execute("UPDATE users SET name = ? WHERE id = ?", (name, user_id))

cache.set("user:1", "ann")
with transaction(conn, cache):
    rename(conn, 1, "zed")
    assert cache.get("user:1") == "ann"  # not before the commit
assert cache.get("user:1") is MISSING

script = Path(sysconfig.get_path("scripts")) / "cachewise"
out = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=True)
assert out.stdout.strip() == f"cachewise {cachewise.__version__}", out.stdout
""",
    "redis": REDIS
    + """
import asyncio
from cachewise import MISSING, AsyncCache, Cache

server, port = start_redis()
try:
    url = f"redis://127.0.0.1:{port}/0"
    cache = Cache.from_url(url, ttl=60)
    other = Cache.from_url(url, ttl=60)  # a second client: the value is in Redis
    loads = []
    def load():
        loads.append(1)
        return {"name": "ann", "ids": [1, 2]}
    assert cache.get_or_load("user:1", load) == {"name": "ann", "ids": [1, 2]}
    assert other.get("user:1") == {"name": "ann", "ids": [1, 2]}
    assert cache.get_or_load("user:1", load) == {"name": "ann", "ids": [1, 2]}
    assert loads == [1]
    cache.set("post:1", "hi", tags=["posts"])
    other.invalidate_tags("posts")
    assert cache.get("post:1") is MISSING
    assert cache.stats().backend_errors == 0 and other.stats().backend_errors == 0
    cache.close()
    other.close()

    async def main():
        async with AsyncCache.from_url(url, ttl=60) as acache:
            await acache.set("a", [1, "b"])
            assert await acache.get("a") == [1, "b"]
            assert acache.stats().backend_errors == 0
    asyncio.run(main())
    import hiredis  # the extra brings redis-py's fast parser
finally:
    server.terminate()
    server.wait()
""",
    "msgpack": """
from cachewise.serialization import MsgpackSerializer, make_serializer
value = {"bytes": b"\\x00\\xff", "list": [1, 2.5, None, True], "nan": float("inf")}
for serializer in (MsgpackSerializer(), make_serializer("msgpack")):
    assert serializer.loads(serializer.dumps(value)) == value
""",
    "orjson": """
import sys
from cachewise.serialization import JsonSerializer
serializer = JsonSerializer()
assert "orjson" in sys.modules, "JsonSerializer did not pick up orjson"
value = {"name": "ann", "ids": [1, 2, 3], "score": 2.5, "none": None}
assert serializer.loads(serializer.dumps(value)) == value
""",
    "zstd": """
from cachewise.serialization import ZstdCompressor
data = b"cachewise " * 1000
compressor = ZstdCompressor()
packed = compressor.compress(data)
assert len(packed) < len(data)
assert compressor.decompress(packed, max_size=len(data)) == data
""",
    # Sync Sessions with SQLAlchemy alone: no greenlet.
    "sqlalchemy": """
import importlib.util
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session
from cachewise import MISSING, Cache
from cachewise.integrations.sqlalchemy import invalidate_after_commit

if ALONE:
    assert importlib.util.find_spec("greenlet") is None, "[sqlalchemy] brought greenlet"
engine = create_engine("sqlite://")
with engine.begin() as conn:
    conn.execute(text("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)"))
    conn.execute(text("INSERT INTO users VALUES (1, 'ann')"))
cache = Cache(ttl=60)

@cache.cached("user:{user_id}")
def name(user_id):
    with Session(engine) as session:
        return session.execute(
            text("SELECT name FROM users WHERE id = :i"), {"i": user_id}
        ).scalar_one()

def rename(session, user_id, new):
    session.execute(text("UPDATE users SET name = :n WHERE id = :i"), {"n": new, "i": user_id})
    invalidate_after_commit(session, cache, keys=[f"user:{user_id}"])

assert name(1) == "ann"
with Session(engine) as session:
    rename(session, 1, "bob")
    session.rollback()  # dropped with the rollback
assert cache.get("user:1") == "ann"
with Session(engine) as session:
    rename(session, 1, "zed")
    assert cache.get("user:1") == "ann"  # not before the commit
    session.commit()
assert cache.get("user:1") is MISSING
assert name(1) == "zed"

@cache.invalidates("user:{user_id}", after_commit="sqlalchemy")
def rename_user(session, user_id, new):
    session.execute(text("UPDATE users SET name = :n WHERE id = :i"), {"n": new, "i": user_id})

with Session(engine) as session:
    rename_user(session, 1, "amy")
    assert cache.get("user:1") == "zed"  # not before the commit
    session.commit()
assert name(1) == "amy"

if ALONE:  # an async write names the extra it needs
    from cachewise import AsyncCache
    async def arename(session, user_id): ...
    try:
        AsyncCache().invalidates("user:{user_id}", after_commit="sqlalchemy")(arename)
    except ImportError as exc:
        assert "pip install 'cachewise[sqlalchemy-async]'" in str(exc), exc
    else:
        raise AssertionError("an async after-commit write without greenlet was accepted")
""",
    # AsyncSession: the extra brings greenlet; the app brings its driver (aiosqlite).
    "sqlalchemy-async": """
import asyncio, os, tempfile
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from cachewise import MISSING, AsyncCache
from cachewise.integrations.sqlalchemy import invalidate_after_commit

async def main():
    path = os.path.join(tempfile.mkdtemp(), "app.db")
    engine = create_async_engine(f"sqlite+aiosqlite:///{path}")
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)"))
        await conn.execute(text("INSERT INTO users VALUES (1, 'ann')"))
    async with AsyncCache(ttl=60) as cache:
        await cache.set("user:1", "ann")
        async with AsyncSession(engine) as session:
            await session.execute(text("UPDATE users SET name = 'bob' WHERE id = 1"))
            invalidate_after_commit(session, cache, keys=["user:1"])
            await session.rollback()
        assert await cache.get("user:1") == "ann"
        async with AsyncSession(engine) as session:
            await session.execute(text("UPDATE users SET name = 'zed' WHERE id = 1"))
            invalidate_after_commit(session, cache, keys=["user:1"])
            assert await cache.get("user:1") == "ann"
            await session.commit()
        assert await cache.get("user:1") is MISSING

        @cache.invalidates("user:{user_id}", after_commit="sqlalchemy")
        async def rename(session, user_id, name):
            await session.execute(
                text("UPDATE users SET name = :n WHERE id = :i"), {"n": name, "i": user_id}
            )

        await cache.set("user:1", "zed")
        async with AsyncSession(engine) as session:
            await rename(session, 1, "amy")
            assert await cache.get("user:1") == "zed"  # not before the commit
            await session.commit()
        assert await cache.get("user:1") is MISSING
    await engine.dispose()

asyncio.run(main())
""",
    "django": """
import django
from django.conf import settings

settings.configure(
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    INSTALLED_APPS=[],
    USE_TZ=True,
)
django.setup()
from django.db import connection, transaction
from cachewise import MISSING, Cache
from cachewise.integrations.django import invalidate_on_commit

with connection.cursor() as cursor:
    cursor.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    cursor.execute("INSERT INTO users VALUES (1, 'ann')")
cache = Cache(ttl=60)

def rename(new):
    with connection.cursor() as cursor:
        cursor.execute("UPDATE users SET name = %s WHERE id = 1", [new])
    invalidate_on_commit(cache, keys=["user:1"])

cache.set("user:1", "ann")
try:
    with transaction.atomic():
        rename("bob")
        raise LookupError
except LookupError:
    pass
assert cache.get("user:1") == "ann"  # dropped with the rollback
with transaction.atomic():
    rename("zed")
    assert cache.get("user:1") == "ann"  # not before the commit
assert cache.get("user:1") is MISSING

@cache.invalidates("user:{user_id}", after_commit="django")
def rename_user(user_id, name):
    with connection.cursor() as cursor:
        cursor.execute("UPDATE users SET name = %s WHERE id = %s", [name, user_id])

cache.set("user:1", "zed")
with transaction.atomic():
    rename_user(1, "amy")
    assert cache.get("user:1") == "zed"  # not before the commit
assert cache.get("user:1") is MISSING
""",
    # Everything together: Redis with msgpack and zstd on the wire.
    "all": REDIS
    + """
from cachewise import Cache

server, port = start_redis()
try:
    url = f"redis://127.0.0.1:{port}/0?serializer=msgpack&compress=zstd&compress_threshold=0"
    with Cache.from_url(url) as writer, Cache.from_url(url) as reader:
        value = {"blob": b"\\x00" * 4096, "n": [1, 2.5, None]}
        writer.set("k", value)
        assert reader.get("k") == value
        assert writer.stats().backend_errors == 0
finally:
    server.terminate()
    server.wait()
""",
}

# What a program needs that its extra rightly does not bring (the app's choice),
# installed after the extra alone was imported.
DRIVERS: dict[str, list[str]] = {"sqlalchemy-async": ["aiosqlite"]}


@dataclass
class Outcome:
    extra: str
    ok: bool
    seconds: float
    log: str


def run(
    command: list[str],
    log: list[str],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 300,
) -> bool:
    """Run ``command``, appending what it printed to ``log``; whether it succeeded
    (in time: a hung install or program fails its extra, not the whole run)."""
    # A program passed with -c is long and shown by name, not in full.
    shown = [*command[:2], "<program>"] if command[1:2] == ["-c"] else command
    log.append("$ " + " ".join(shown))
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, check=False, cwd=cwd, env=env, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        log.append(f"timed out after {timeout:g} s")
        return False
    # pip's notes about unused index locations are noise here.
    output = "\n".join(
        line
        for line in (done.stdout + done.stderr).splitlines()
        if "is ignored: it is neither a file nor a directory" not in line
    )
    if output:
        log.append(output)
    return done.returncode == 0


def smoke(extra: str, wheel: Path, work: Path) -> Outcome:
    """A fresh venv with ``wheel[extra]``, then its programs."""
    started = time.monotonic()
    log: list[str] = []
    venv = work / f"venv-{extra}"
    python = venv / "bin" / "python"
    scratch = work / f"run-{extra}"
    scratch.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    pip = [str(python), "-m", "pip", "--disable-pip-version-check", "--no-input", "install"]
    requirement = str(wheel) if extra == "base" else f"{wheel}[{extra}]"
    ok = run([sys.executable, "-m", "venv", str(venv)], log) and run(
        [*pip, "--quiet", requirement], log, env=env
    )
    if ok:
        ok = run([str(python), "-c", "import cachewise"], log, cwd=scratch, env=env)
    if ok and DRIVERS.get(extra):
        ok = run([*pip, "--quiet", *DRIVERS[extra]], log, env=env)
    programs = [extra] if extra != "all" else [e for e in PROGRAMS if e != "base"]
    if extra == "all":
        # Every driver a program needs, as the app would bring it.
        drivers = sorted({d for ds in DRIVERS.values() for d in ds})
        ok = ok and run([*pip, "--quiet", *drivers], log, env=env)
    for name in programs:
        if not ok:
            break
        code = f"ALONE = {extra != 'all'}\n" + textwrap.dedent(PROGRAMS[name])
        log.append(f"# program for [{name}]")
        ok = run([str(python), "-c", code], log, cwd=scratch, env=env)
    return Outcome(extra, ok, time.monotonic() - started, "\n".join(log))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("extras", nargs="*", help=f"default: {' '.join(PROGRAMS)}")
    parser.add_argument("--jobs", type=int, default=2, help="venvs at a time (default 2)")
    parser.add_argument("--keep", action="store_true", help="keep the venvs")
    args = parser.parse_args()
    unknown = sorted(set(args.extras) - set(PROGRAMS))
    if unknown:
        parser.error(f"no smoke program for {', '.join(unknown)}; known: {', '.join(PROGRAMS)}")
    if shutil.which("redis-server") is None:
        print("smoke-extras: redis-server is not on PATH", file=sys.stderr)
        return 2
    extras = args.extras or list(PROGRAMS)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="cachewise-smoke-"))
    try:
        log: list[str] = []
        dist = work / "dist"
        if not run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--quiet",
                "--no-deps",
                "-w",
                str(dist),
                str(ROOT),
            ],
            log,
        ):
            print("\n".join(log), file=sys.stderr)
            return 1
        (wheel,) = dist.glob("cachewise-*.whl")
        print(f"smoke-extras: built {wheel.name} in {time.monotonic() - started:.1f} s", flush=True)
        failed: list[Outcome] = []
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            for outcome in pool.map(lambda extra: smoke(extra, wheel, work), extras):
                status = "ok" if outcome.ok else "FAILED"
                print(f"  [{outcome.extra}] {status} ({outcome.seconds:.1f} s)", flush=True)
                if not outcome.ok:
                    failed.append(outcome)
        for outcome in failed:
            print(f"\n---- [{outcome.extra}] ----\n{outcome.log}", file=sys.stderr)
        total = time.monotonic() - started
        print(f"smoke-extras: {len(extras) - len(failed)}/{len(extras)} passed in {total:.1f} s")
        return 1 if failed else 0
    finally:
        if args.keep:
            print(f"smoke-extras: venvs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
