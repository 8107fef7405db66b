"""Fork and exit (breaks 6, 21, 22 of issue 9).

- A child forked while other threads use the cache (or while cachewise's own
  threads hold its locks) must not hang: gunicorn --preload and Celery prefork
  fork a process that already served requests.
- A child forked after a background refresh must run refreshes and settle held
  invalidations: it inherits a refresh pool whose threads are not there.
- A program that ends without close() while a delete is held must still exit.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable

import pytest

from cachewise import AsyncCache, Cache, MemoryBackend
from tests.support.redis_servers import free_port
from tests.support.stores import Unreachable

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")

CHILD_DEADLINE = 10.0


def _fork_and_check(work: Callable[[], None]) -> int:
    """Fork; run ``work`` in the child under an alarm; the child's exit status
    (0: done, 1: failed, SIGALRM: hung)."""
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            signal.alarm(int(CHILD_DEADLINE))
            work()
            code = 0
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    deadline = time.monotonic() + CHILD_DEADLINE + 5
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.01)  # a child process: polling its exit is the only way
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return -1


def _fork_under_load(
    cache: Cache,
    busy: Callable[[threading.Event, int], None],
    child: Callable[[], None],
    forks: int,
) -> list[int]:
    """Fork ``forks`` children while four threads run ``busy`` on ``cache``; each
    child runs ``child``. Their exit statuses."""
    stop = threading.Event()
    threads = [threading.Thread(target=busy, args=(stop, n * 1000), daemon=True) for n in range(4)]
    for thread in threads:
        thread.start()
    try:
        statuses = []
        for _ in range(forks):
            time.sleep(0.002)
            statuses.append(_fork_and_check(child))
    finally:
        stop.set()
        for thread in threads:
            thread.join(5)
        cache.close()
    return statuses


def test_forks_while_application_threads_use_the_cache_never_hang() -> None:
    cache = Cache(MemoryBackend(max_entries=500), ttl=0.01, stale_ttl=0.05)

    def busy(stop: threading.Event, i: int) -> None:
        while not stop.is_set():
            i += 1
            key = f"k{i % 50}"
            cache.get_or_load(key, lambda n=i: time.sleep(0.0002) or n)
            if i % 7 == 0:
                cache.delete(key)
            if i % 11 == 0:
                cache.set(key, i)

    def child() -> None:
        for n in range(200):
            key = f"k{n % 50}"
            assert cache.get_or_load(key, lambda: "child") is not None
            cache.delete(key)
            cache.set(key, n)
            cache.get(key)
        assert cache.wait_background(timeout=5)
        cache.close()

    statuses = _fork_under_load(cache, busy, child, forks=40)
    assert statuses == [0] * 40, statuses


def test_forks_while_threads_use_a_redis_cache_never_hang(redis_url: str) -> None:
    """Found by the history checker: redis-py resets an inherited connection pool
    in the child under the pool's lock; a child forked while a parent thread held
    that lock waited five seconds, then failed every call (ChildDeadlockedError)."""
    cache = Cache.from_url(redis_url, ttl=0.05, stale_ttl=0.2)

    def busy(stop: threading.Event, i: int) -> None:
        while not stop.is_set():
            i += 1
            key = f"k{i % 20}"
            cache.get_or_load(key, lambda n=i: n)
            if i % 5 == 0:
                cache.delete(key)

    def child() -> None:
        for n in range(20):
            key = f"k{n}"
            cache.get_or_load(key, lambda: "child")
            cache.delete(key)
        assert cache.stats().backend_errors == 0, cache.stats()
        cache.close()

    statuses = _fork_under_load(cache, busy, child, forks=25)
    assert statuses == [0] * 25, statuses


def test_a_child_forked_after_a_background_refresh_refreshes_and_settles() -> None:
    store = Unreachable()
    cache = Cache(store, ttl=0.05, stale_ttl=60)
    cache.get_or_load("k", lambda: "v1")
    time.sleep(0.06)  # stale: the next hit refreshes in the background
    assert cache.get_or_load("k", lambda: "v2") == "v1"
    assert cache.wait_background(timeout=5)  # the refresh pool now has threads

    def child() -> None:
        time.sleep(0.06)
        assert cache.get_or_load("k", lambda: "child") in ("v2", "child")
        assert cache.wait_background(timeout=5), "the child's refresh never ran"
        assert cache.get("k") == "child"
        store.down = True
        cache.delete("k")  # held: the store is "down"
        assert cache.stats().invalidations_pending == 1
        store.down = False
        deadline = time.monotonic() + 5
        while cache.stats().invalidations_pending:
            assert time.monotonic() < deadline, "the child's settler never ran"
            time.sleep(0.01)
        cache.close()

    assert _fork_and_check(child) == 0
    cache.close()


def test_a_child_forked_while_a_load_is_in_flight_does_not_wait_for_it() -> None:
    store = MemoryBackend()
    cache = Cache(store)
    started, release = threading.Event(), threading.Event()

    def slow() -> str:
        started.set()
        assert release.wait(30)
        return "parent"

    loader = threading.Thread(target=lambda: cache.get_or_load("k", slow), daemon=True)
    loader.start()
    assert started.wait(5)
    try:

        def child() -> None:
            # The parent's loading thread is not here: its flight and its lease
            # must not make the child wait.
            assert cache.get_or_load("k", lambda: "child") == "child"
            other = Cache(store)  # another front end on the same store
            assert other.get_or_load("k2", lambda: "x") == "x"

        assert _fork_and_check(child) == 0
    finally:
        release.set()
        loader.join(5)
        cache.close()


def test_a_child_forked_from_a_process_with_an_async_cache_works() -> None:
    import asyncio

    async def warm() -> AsyncCache:
        cache = AsyncCache(ttl=60)

        async def one() -> int:
            return 1

        assert await cache.get_or_load("k", one) == 1
        return cache

    cache = asyncio.run(warm())

    def child() -> None:
        async def use() -> None:
            async def two() -> int:
                return 2

            assert await cache.get_or_load("k", two) == 1
            assert await cache.get_or_load("k2", two) == 2
            await cache.aclose()

        asyncio.run(use())

    assert _fork_and_check(child) == 0


def test_a_program_that_ends_without_close_while_a_delete_is_held_exits() -> None:
    port = free_port()  # nothing listens there: Redis is down
    script = textwrap.dedent(
        f"""
        import time
        from cachewise import Cache
        cache = Cache.from_url("redis://127.0.0.1:{port}/0")
        cache.delete("k")
        assert cache.stats().invalidations_pending == 1
        time.sleep(0.2)  # the settler is retrying
        print("done")
        """
    )
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert "done" in result.stdout
    assert took < 10, f"the program took {took:.1f} s to exit"
    assert "never reached the backend" in result.stderr  # said so on the way out


def test_the_last_tries_at_exit_run_side_by_side() -> None:
    """A cache per tenant, each holding a delete, the server a black hole: the
    exit tried them one after another, a socket timeout each (10 s for 40)."""
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(128)  # connections complete in the backlog; nothing ever answers
    port = hole.getsockname()[1]
    script = textwrap.dedent(
        f"""
        import atexit, asyncio, time
        # Registered first, so it runs after cachewise's exit hook (LIFO).
        atexit.register(lambda: print("exit", time.monotonic(), flush=True))
        from cachewise import AsyncCache
        url = "redis://127.0.0.1:{port}/0?socket_timeout=0.25"
        caches = [AsyncCache.from_url(url, namespace=f"t{{i}}") for i in range(20)]

        async def main():
            await asyncio.gather(*(c.delete("k") for c in caches))

        asyncio.run(main())
        assert sum(c.stats().invalidations_pending for c in caches) == 20
        print("main", time.monotonic(), flush=True)
        """
    )
    try:
        result = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
        )
    finally:
        hole.close()
    assert result.returncode == 0, result.stderr
    marks = dict(line.split() for line in result.stdout.splitlines())
    took = float(marks["exit"]) - float(marks["main"])
    assert took < 2.5, f"the exit took {took:.2f} s (one after another: >= 5 s)"


@pytest.mark.parametrize("threads", ["allowed", "refused"])
def test_the_exit_limit_cuts_the_last_tries_off_and_names_what_was_held(threads: str) -> None:
    """Past the limit the exit went on waiting (where the interpreter refuses new
    threads at exit, 3.12+: each cache's timeout in turn), or ended without the
    ERROR naming what was never applied (a try cut off died silently)."""
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(128)  # nothing ever answers
    port = hole.getsockname()[1]
    refuse = threads == "refused"
    script = textwrap.dedent(
        f"""
        import atexit, threading, time
        atexit.register(lambda: print("exit", time.monotonic(), flush=True))
        from cachewise import Cache
        from cachewise._frontends import _group
        _group.EXIT_SETTLE_LIMIT = 0.5
        url = "redis://127.0.0.1:{port}/0?invalidation_timeout=1.0&breaker=off"
        caches = [Cache.from_url(url, namespace=f"t{{i}}") for i in range(3)]
        for c in caches:
            c.delete("k")

        def refuse_threads(*args, **kwargs):
            raise RuntimeError("can't create new thread at interpreter shutdown")

        if {refuse!r}:  # runs before cachewise's exit hook (registered after it)
            atexit.register(lambda: setattr(threading.Thread, "start", refuse_threads))
        print("main", time.monotonic(), flush=True)
        """
    )
    try:
        result = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
        )
    finally:
        hole.close()
    assert result.returncode == 0, result.stderr
    marks = dict(line.split() for line in result.stdout.splitlines())
    took = float(marks["exit"]) - float(marks["main"])
    assert took < 2.5, f"the exit took {took:.2f} s past a 0.5 s limit"
    assert result.stderr.count("never reached the backend") == 3, result.stderr


def test_two_threads_forking_at_once_leave_no_lock_held() -> None:
    """Found by the attack: the locks held across a fork were kept in one list for
    the process; two threads forking at once (multiprocessing from two request
    threads) mixed them up, and the parent kept some held for good: the next
    write hung. (concurrent.futures, imported first as apps do, does not
    serialise forks then: its fork hook runs after ours.)"""
    script = textwrap.dedent(
        """
        from concurrent.futures import ThreadPoolExecutor  # first, as most apps do
        import os, threading, time
        from cachewise import Cache, MemoryBackend, _forksafe

        stores = [MemoryBackend(max_entries=200_000) for _ in range(4)]
        caches = [Cache(store, namespace="big") for store in stores]
        for cache in caches:
            cache.set_many({f"k{i}": i for i in range(60_000)})
        stop = threading.Event()

        def clearer(store):
            while not stop.is_set():
                store.clear("other:")  # O(n) under the store's lock, removes nothing
                time.sleep(0.002)

        def forker():
            for _ in range(4):
                pid = os.fork()
                if pid == 0:
                    os._exit(0)
                os.waitpid(pid, 0)

        helpers = [threading.Thread(target=clearer, args=(s,), daemon=True) for s in stores]
        forkers = [threading.Thread(target=forker, daemon=True) for _ in range(2)]
        for thread in helpers + forkers:
            thread.start()
        for thread in forkers:
            thread.join(30)
        stop.set()
        for thread in helpers:
            thread.join(5)
        held = [o for o in list(_forksafe._objects) for lock in o._fork_locks() if lock.locked()]
        assert not held, held
        done = threading.Event()
        threading.Thread(
            target=lambda: ([c.set("k1", 1) for c in caches], done.set()), daemon=True
        ).start()
        assert done.wait(5), "a write hung on a lock held for good"
        print("ok")
        os._exit(0)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ok" in result.stdout
