"""What only a shared backend has: the wire format, server TTLs, URLs, leases across
processes, dead holders, Redis Cluster. Real servers, started by the test suite."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
from redis.cluster import RedisCluster

from cachewise import MISSING, AsyncCache, Cache
from cachewise.backends import AsyncRedisBackend, RedisBackend
from cachewise.serialization import Codec, PickleSerializer
from tests.support.redis_servers import RedisClusterProcess, RedisServer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def raw(redis_url: str) -> Any:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def all_keys_have_ttls(client: Any) -> list[bytes]:
    """The keys without a TTL (should be none)."""
    return [k for k in client.keys("*") if client.pttl(k) < 0]


# -- wire format and server TTLs ---------------------------------------------------


def test_sync_and_async_caches_read_each_others_entries(redis_url: str) -> None:
    sync = Cache.from_url(redis_url, namespace="shared")
    sync.set("from-sync", {"n": 1, "items": [1, "two", None]})

    async def main() -> Any:
        cache = AsyncCache.from_url(redis_url, namespace="shared")
        seen = await cache.get("from-sync")
        await cache.set("from-async", ["x"])
        await cache.aclose()
        return seen

    assert asyncio.run(main()) == {"n": 1, "items": [1, "two", None]}
    assert sync.get("from-async") == ["x"]
    sync.close()


def test_server_ttl_is_the_ttl_plus_the_stale_window_plus_a_margin(
    redis_url: str, raw: Any
) -> None:
    with Cache.from_url(redis_url, ttl=10, stale_ttl=5, jitter=0) as cache:
        cache.set("k", 1)
        cache.get_or_load("loaded", lambda: 2)
        for name in (b"{k}", b"{loaded}"):
            pttl = raw.pttl(name)
            assert 15_000 < pttl <= 16_000, (name, pttl)  # 10 + 5 + 1 s margin


def test_no_key_cachewise_writes_lacks_a_ttl(redis_url: str, raw: Any) -> None:
    """Values, leases, waiter counters and notify lists all expire."""
    holder = Cache.from_url(redis_url)
    waiter = Cache.from_url(redis_url)
    loading = threading.Event()
    release = threading.Event()
    checked: list[list[bytes]] = []

    def slow() -> str:
        loading.set()
        assert release.wait(10)
        return "v"

    t = threading.Thread(target=lambda: holder.get_or_load("k", slow))
    t.start()
    assert loading.wait(10)
    w = threading.Thread(target=lambda: waiter.get_or_load("k", lambda: "other"))
    w.start()
    deadline = time.time() + 5
    while not raw.exists(b"{k}:waiters") and time.time() < deadline:
        time.sleep(0.01)
    assert raw.exists(b"{k}:lease")
    assert raw.exists(b"{k}:waiters")
    checked.append(all_keys_have_ttls(raw))
    release.set()
    t.join(10)
    w.join(10)
    checked.append(all_keys_have_ttls(raw))
    holder.set("explicit", 1)
    holder.delete("k")
    checked.append(all_keys_have_ttls(raw))
    assert checked == [[], [], []]
    holder.close()
    waiter.close()


def test_corrupt_entries_are_misses_and_counted(redis_url: str, raw: Any) -> None:
    with Cache.from_url(redis_url) as cache:
        raw.set("{k}", b"\xc5\x09garbage")
        assert cache.get("k") is MISSING
        assert cache.stats().decode_errors == 1
        assert cache.get_or_load("k", lambda: "fresh") == "fresh"
        # Every read that met the bytes counts: the GET, and the re-read with the lease.
        assert cache.stats().decode_errors == 3
        assert cache.get("k") == "fresh"  # and the reload replaced them


def test_signed_pickle_round_trips_and_needs_the_same_secret(redis_url: str) -> None:
    secret = "0123456789abcdef-secret"
    with Cache.from_url(redis_url, serializer=PickleSerializer(secret)) as cache:
        cache.set("k", {1, 2, 3})  # a set: pickle only
        assert cache.get("k") == {1, 2, 3}
    other = Cache.from_url(redis_url, serializer=PickleSerializer("another-secret-0123456"))
    assert other.get("k") is MISSING
    assert other.stats().decode_errors == 1
    other.close()
    with Cache.from_url(redis_url) as json_reader:
        assert json_reader.get("k") is MISSING  # a JSON reader never unpickles


# -- URLs and clients --------------------------------------------------------------


def test_url_with_username_password_and_database() -> None:
    with RedisServer(username="app", password="s3cr3t pw") as server:
        url = server.url.rsplit("/", 1)[0] + "/3"
        with Cache.from_url(url) as cache:
            cache.set("k", 1)
            assert cache.get("k") == 1
        client = redis.Redis(
            host=server.host, port=server.port, username="app", password="s3cr3t pw", db=3
        )
        assert client.exists("{k}") == 1
        client.close()
        bad = url.replace("s3cr3t%20pw", "wrong")
        with Cache.from_url(bad) as cache:  # auth fails: degraded to misses, counted
            assert cache.get_or_load("k", lambda: "from source") == "from source"
            assert cache.stats().backend_errors >= 1


def test_rediss_builds_a_tls_client_and_options_parse() -> None:
    cache = Cache.from_url(
        "rediss://user:pw@127.0.0.1:1/2?lock_timeout=3&wait_timeout=4"
        "&socket_timeout=0.5&serializer=msgpack&compress=zlib"
    )
    backend = cache.backend.inner  # from_url wraps it in a circuit breaker
    assert isinstance(backend, RedisBackend)
    pool = backend.client.connection_pool
    assert pool.connection_class.__name__ == "SSLConnection"
    assert pool.connection_kwargs["username"] == "user"
    assert pool.connection_kwargs["db"] == 2
    assert pool.connection_kwargs["socket_timeout"] == 0.5
    assert (backend.lock_timeout, backend.wait_timeout) == (3.0, 4.0)
    assert backend.codec.serializer.name == "msgpack"
    cache.close()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://127.0.0.1:6399/0?serializer=pickle", "secret"),
        ("redis://127.0.0.1:6399/0?serializer=yaml", "yaml"),
        ("redis://127.0.0.1:6399/0?pool=3", "pool"),
        ("redis://127.0.0.1:6399/0?lock_timeout=-1", "lock_timeout"),
        ("redis://127.0.0.1:6399/0?compress=lz4", "lz4"),
        ("redis:///0", "host"),
        ("redis://127.0.0.1:99999/0", "port"),
        ("redis+cluster://127.0.0.1:6399/2", "databases"),
    ],
)
def test_bad_redis_urls_are_value_errors(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Cache.from_url(url)


def test_existing_clients_can_be_passed_in(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    with Cache(RedisBackend(client)) as cache:
        cache.set("k", 1)
    assert client.ping()  # not ours to close
    client.close()

    async def main() -> None:
        aclient = redis.asyncio.Redis.from_url(redis_url)
        async with AsyncCache(AsyncRedisBackend(aclient)) as cache:
            assert await cache.get("k") == 1
        assert await aclient.ping()
        await aclient.aclose()

    asyncio.run(main())


def test_a_client_of_the_wrong_flavour_is_a_type_error(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    with pytest.raises(TypeError, match="AsyncRedisBackend"):
        AsyncRedisBackend(client)
    aclient = redis.asyncio.Redis.from_url(redis_url)
    with pytest.raises(TypeError, match="RedisBackend"):
        RedisBackend(aclient)
    with pytest.raises(TypeError):
        Cache(AsyncRedisBackend(aclient))  # type: ignore[arg-type]
    client.close()
    asyncio.run(aclient.aclose())


# -- leases ------------------------------------------------------------------------


class Gate:
    """A sync loader that blocks until released."""

    def __init__(self, value: Any = "v") -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.calls = 0
        self.value = value

    def __call__(self) -> Any:
        self.calls += 1
        self.started.set()
        assert self.release.wait(10)
        return self.value


def test_a_delete_from_another_process_beats_an_in_flight_load(redis_url: str, raw: Any) -> None:
    """Two caches stand for two processes: their only shared state is Redis."""
    loader_cache = Cache.from_url(redis_url)
    writer_cache = Cache.from_url(redis_url)
    old = Gate("old")
    t = threading.Thread(target=lambda: loader_cache.get_or_load("k", old))
    t.start()
    assert old.started.wait(10)
    writer_cache.delete("k")  # the write committed; invalidate
    old.release.set()
    t.join(10)
    assert raw.exists("{k}") == 0  # the slow load's old value was not written
    assert writer_cache.get_or_load("k", lambda: "new") == "new"
    loader_cache.close()
    writer_cache.close()


def test_an_explicit_set_from_another_process_is_not_overwritten(redis_url: str) -> None:
    a = Cache.from_url(redis_url)
    b = Cache.from_url(redis_url)
    old = Gate("old")
    t = threading.Thread(target=lambda: a.get_or_load("k", old))
    t.start()
    assert old.started.wait(10)
    b.set("k", "explicit")
    old.release.set()
    t.join(10)
    assert b.get("k") == "explicit"
    a.close()
    b.close()


def test_waiters_in_another_process_get_the_holders_value_cheaply(redis_url: str, raw: Any) -> None:
    holder = Cache.from_url(redis_url)
    waiter = Cache.from_url(redis_url)
    gate = Gate("from holder")
    t = threading.Thread(target=lambda: holder.get_or_load("k", gate))
    t.start()
    assert gate.started.wait(10)
    raw.config_resetstat()
    got: list[Any] = []
    threads = [
        threading.Thread(target=lambda: got.append(waiter.get_or_load("k", lambda: "mine")))
        for _ in range(10)
    ]
    for w in threads:
        w.start()
    time.sleep(1.0)  # real time is the thing under test: how chatty is waiting?
    commands = _command_count(raw)
    gate.release.set()
    t.join(10)
    for w in threads:
        w.join(10)
    assert got == ["from holder"] * 10
    # Ten threads, one waiting process: one request per cycle of ~150 ms, not ten.
    assert commands <= 20, commands
    holder.close()
    waiter.close()


def _command_count(raw: Any) -> int:
    """Commands the waiting path sends: scripts and BLPOP (commandstats also counts
    the GET/SET calls scripts make inside, so those are left out)."""
    stats = raw.info("commandstats")
    sent = ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_blpop")
    return sum(stats.get(name, {}).get("calls", 0) for name in sent)


def test_a_dead_holders_lease_expires_and_another_loads(redis_url: str, raw: Any) -> None:
    cache = Cache.from_url(redis_url + "?lock_timeout=5")
    raw.set("{k}:lease", "someone-dead", px=600)  # a holder that died 0 s ago
    started = time.monotonic()
    assert cache.get_or_load("k", lambda: "taken over") == "taken over"
    elapsed = time.monotonic() - started
    assert 0.45 < elapsed < 1.5, elapsed
    assert cache.get("k") == "taken over"  # the new holder wrote it
    cache.close()


def test_waiters_fail_open_after_wait_timeout_without_writing(redis_url: str, raw: Any) -> None:
    cache = Cache.from_url(redis_url + "?lock_timeout=30&wait_timeout=0.3")
    raw.set("{k}:lease", "a-slow-holder", px=30_000)
    started = time.monotonic()
    assert cache.get_or_load("k", lambda: "own load") == "own load"
    assert 0.25 < time.monotonic() - started < 1.5
    assert raw.exists("{k}") == 0  # no lease, no write
    cache.close()


def test_a_loader_failure_releases_the_lease_for_the_next_caller(redis_url: str, raw: Any) -> None:
    cache = Cache.from_url(redis_url)

    def boom() -> str:
        raise ConnectionError("db down")

    with pytest.raises(ConnectionError):
        cache.get_or_load("k", boom)
    assert raw.exists("{k}:lease") == 0
    started = time.monotonic()
    assert cache.get_or_load("k", lambda: "ok") == "ok"
    assert time.monotonic() - started < 0.5  # nobody waited for a dead lease
    cache.close()


def test_one_lease_request_per_process_for_many_threads(redis_url: str, raw: Any) -> None:
    cache = Cache.from_url(redis_url)
    gate = Gate()
    barrier = threading.Barrier(20, timeout=30)
    raw.config_resetstat()

    def body() -> None:
        barrier.wait()
        cache.get_or_load("k", gate)

    threads = [threading.Thread(target=body) for _ in range(20)]
    for t in threads:
        t.start()
    assert gate.started.wait(10)
    time.sleep(0.1)  # let every thread arrive and join the in-process flight
    gate.release.set()
    for t in threads:
        t.join(10)
    stats = raw.info("commandstats")
    scripts = sum(
        stats.get(name, {}).get("calls", 0) for name in ("cmdstat_evalsha", "cmdstat_eval")
    )
    assert scripts == 2  # one read-with-lease, one guarded write
    assert gate.calls == 1
    cache.close()


def test_async_waiters_in_another_process_share_the_holders_load(redis_url: str) -> None:
    async def main() -> None:
        holder = AsyncCache.from_url(redis_url)
        waiter = AsyncCache.from_url(redis_url)
        started = asyncio.Event()
        release = asyncio.Event()
        calls = 0

        async def slow() -> str:
            nonlocal calls
            calls += 1
            started.set()
            await release.wait()
            return "from holder"

        first = asyncio.create_task(holder.get_or_load("k", slow))
        await started.wait()
        others = [asyncio.create_task(waiter.get_or_load("k", slow)) for _ in range(50)]
        await asyncio.sleep(0.2)
        release.set()
        assert await first == "from holder"
        assert await asyncio.gather(*others) == ["from holder"] * 50
        assert calls == 1
        await holder.aclose()
        await waiter.aclose()

    asyncio.run(main())


# -- real processes ----------------------------------------------------------------


def _worker(  # mirrors the worker command line
    url: str,
    key: str,
    threads: int,
    start_at: float,
    load: float,
    options: dict[str, Any] | None = None,
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.support.herd_worker",
            url,
            key,
            str(threads),
            repr(start_at),
            repr(load),
            json.dumps(options or {}),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@pytest.mark.slow
def test_a_herd_across_processes_and_threads_makes_exactly_one_load(
    redis_url: str, raw: Any
) -> None:
    start_at = time.time() + 3.0  # time for four interpreters to start
    procs = [_worker(redis_url, "hot", 10, start_at, 0.3) for _ in range(4)]
    try:
        outputs = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    finally:
        for p in procs:  # none outlives the test, whatever failed
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert all(p.returncode == 0 for p in procs)
    assert raw.get("loads:hot") == b"1"
    values = {r["value"] for out in outputs for r in out["results"]}
    assert len(values) == 1  # everybody got the one holder's value
    assert sum(len(out["results"]) for out in outputs) == 40


@pytest.mark.slow
def test_a_sigkilled_holder_delays_others_by_at_most_lock_timeout(redis_url: str, raw: Any) -> None:
    lock_timeout = 1.0
    holder = _worker(f"{redis_url}?lock_timeout={lock_timeout}", "k", 1, 0, 0, {"hold": True})
    deadline = time.time() + 20
    while raw.get("holding:k") is None:
        assert holder.poll() is None, "the holder process died early"
        assert time.time() < deadline, "the holder never took the lease"
        time.sleep(0.02)
    acquired = time.time()  # the lease was taken just before this
    cache = Cache.from_url(f"{redis_url}?lock_timeout=30")  # our side's option is moot
    got: list[Any] = []
    t = threading.Thread(target=lambda: got.append(cache.get_or_load("k", lambda: "taken over")))
    t.start()
    time.sleep(0.2)
    os.kill(holder.pid, signal.SIGKILL)
    holder.communicate(timeout=10)
    t.join(30)
    finished = time.time()
    if holder.poll() is None:  # (killed above; this only matters if that failed)
        holder.kill()
    assert got == ["taken over"]
    # The lease expires lock_timeout after the dead holder took it; then one
    # waiter takes it over and loads (instantly here). Allow for process noise.
    assert finished - acquired < lock_timeout + 0.5, finished - acquired
    cache.close()


# -- Redis Cluster -----------------------------------------------------------------


def test_a_key_and_its_helper_keys_share_one_slot(
    redis_cluster_url: str, redis_cluster: RedisClusterProcess
) -> None:
    client: RedisCluster = redis_cluster.client()
    for key in ("user:1", "a{b}c", "ns:x" * 10):
        base = "{" + key + "}"
        slots = {client.keyslot(base + suffix) for suffix in ("", ":lease", ":waiters", ":notify")}
        assert len(slots) == 1, key
    client.close()


def test_cluster_many_key_operations_span_slots(
    redis_cluster_url: str, redis_cluster: RedisClusterProcess
) -> None:
    keys = [f"user:{i}" for i in range(50)]
    client: RedisCluster = redis_cluster.client()
    assert len({client.keyslot("{" + k + "}") for k in keys}) > 10
    with Cache.from_url(redis_cluster_url) as cache:
        cache.set_many({k: i for i, k in enumerate(keys)})
        assert cache.get_many(keys) == {k: i for i, k in enumerate(keys)}
        nodes = {client.get_node_from_key("{" + k + "}").name for k in keys}
        assert len(nodes) == 3
        assert cache.delete_many(keys) == 50
        assert cache.get_many(keys) == {}
        assert cache.get_or_load("user:1", lambda: "loaded") == "loaded"
    client.close()


def test_codec_options_reach_the_backend(redis_url: str) -> None:
    backend = RedisBackend(
        redis.Redis.from_url(redis_url), codec=Codec(compress="zlib"), owns_client=True
    )
    with Cache(backend) as cache:
        cache.set("big", "x" * 10_000)
        assert cache.get("big") == "x" * 10_000
        assert backend.client.strlen("{big}") < 1_000
    backend.close()


def test_a_hit_is_one_round_trip(redis_url: str, raw: Any) -> None:
    with Cache.from_url(redis_url) as cache:
        cache.set("k", {"a": 1})
        raw.config_resetstat()
        assert cache.get_or_load("k", lambda: "unused") == {"a": 1}
        stats = raw.info("commandstats")
        sent = {
            k: v["calls"]
            for k, v in stats.items()
            if not k.startswith(("cmdstat_info", "cmdstat_config"))
        }
        assert sent == {"cmdstat_get": 1}  # a hit is one GET: no script, no lease
        raw.config_resetstat()
        assert cache.get("k") == {"a": 1}
        stats = raw.info("commandstats")
        assert stats["cmdstat_get"]["calls"] == 1
        sent = {
            k: v["calls"]
            for k, v in stats.items()
            if not k.startswith(("cmdstat_info", "cmdstat_config"))
        }
        assert sent == {"cmdstat_get": 1}


# -- tags and keys on Redis ----------------------------------------------------------


def test_a_tagged_hit_is_one_round_trip_on_standalone_redis(redis_url: str, raw: Any) -> None:
    with Cache.from_url(redis_url) as cache:
        cache.get_or_load("k", lambda: "v", tags=["user:1", "feed"])
        raw.config_resetstat()
        assert cache.get_or_load("k", lambda: "unused", tags=["user:1", "feed"]) == "v"
        stats = raw.info("commandstats")
        sent = {
            k: v["calls"]
            for k, v in stats.items()
            if not k.startswith(("cmdstat_info", "cmdstat_config"))
        }
        assert sent == {"cmdstat_mget": 1}  # the value and both tag versions, at once
        cache.invalidate_tags("feed")
        assert cache.get_or_load("k", lambda: "reloaded", tags=["user:1", "feed"]) == "reloaded"


def test_tag_versions_expire_and_cap_tagged_entries(redis_url: str, raw: Any) -> None:
    cache = Cache.from_url(redis_url + "?tag_ttl=60", ttl=3600, jitter=0)
    cache.set("tagged", 1, tags=["t"])
    cache.set("plain", 2)
    cache.invalidate_tags("t")
    assert 0 < raw.pttl("{t}:tag") <= 60_000
    assert 0 < raw.pttl("{tagged}") <= 60_000  # capped: never outlives the tag record
    assert raw.pttl("{plain}") > 3_600_000
    cache.close()


def test_no_key_name_over_250_bytes_reaches_redis(redis_url: str, raw: Any) -> None:
    with Cache.from_url(redis_url, namespace="ns" * 20) as cache:
        cache.set("x" * 1000, 1, tags=["t" * 600])
        cache.get_or_load("é" * 400, lambda: 2)
        cache.invalidate_tags("t" * 600)
        names = raw.keys("*")
        assert names
        assert max(len(n) for n in names) <= 250


def test_a_tag_invalidation_from_another_process_beats_an_in_flight_load(
    redis_url: str, raw: Any
) -> None:
    loader_cache = Cache.from_url(redis_url)
    writer_cache = Cache.from_url(redis_url)
    old = Gate("old")
    t = threading.Thread(target=lambda: loader_cache.get_or_load("k", old, tags=["t"]))
    t.start()
    assert old.started.wait(10)
    writer_cache.invalidate_tags("t")
    old.release.set()
    t.join(10)
    # The slow load wrote its entry, stamped before the invalidation: a miss.
    assert writer_cache.get("k") is MISSING
    assert writer_cache.get_or_load("k", lambda: "new", tags=["t"]) == "new"
    loader_cache.close()
    writer_cache.close()


def test_cluster_tags_work_across_slots(redis_cluster_url: str) -> None:
    with Cache.from_url(redis_cluster_url) as cache:
        for i in range(20):
            cache.set(f"user:{i}", i, tags=[f"group:{i % 3}", "all"])
        cache.invalidate_tags("group:1")
        got = cache.get_many([f"user:{i}" for i in range(20)])
        assert sorted(got) == sorted(f"user:{i}" for i in range(20) if i % 3 != 1)
        loads: list[int] = []
        cache.get_or_load("user:1", lambda: loads.append(1) or 1, tags=["group:1", "all"])
        assert cache.get_or_load("user:1", lambda: 99, tags=["group:1", "all"]) == 1
        cache.invalidate_tags("all")
        assert cache.get_many([f"user:{i}" for i in range(20)]) == {}


def test_a_caches_own_orphaned_lease_is_taken_over_at_once(redis_url: str, raw: Any) -> None:
    """A release that failed leaves this cache's lease behind; its next read of
    the key takes it over instead of waiting lock_timeout for it."""
    cache = Cache.from_url(redis_url + "?lock_timeout=5")
    raw.set("{k}:lease", cache._token_prefix + "999", px=5000)
    started = time.monotonic()
    assert cache.get_or_load("k", lambda: "v") == "v"
    assert time.monotonic() - started < 0.5
    assert cache.get("k") == "v"
    other = Cache.from_url(redis_url + "?lock_timeout=5&wait_timeout=0.3")
    raw.set("{j}:lease", cache._token_prefix + "1000", px=5000)  # another cache's lease
    started = time.monotonic()
    assert other.get_or_load("j", lambda: "own load") == "own load"
    assert time.monotonic() - started >= 0.25  # waited, as for any live holder
    cache.close()
    other.close()


# -- in-process joiners of a read that waited on another process's lease ----------


class CountingLeases:
    """A backend wrapper that counts lease reads (everything else passes through)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.reads = 0

    def read_or_lease(self, *args: Any) -> Any:
        self.reads += 1
        return self.inner.read_or_lease(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class AsyncCountingLeases(CountingLeases):
    async def read_or_lease(self, *args: Any) -> Any:  # type: ignore[override]
        self.reads += 1
        return await self.inner.read_or_lease(*args)


def _hold_a_lease(url: str, release: threading.Event) -> tuple[threading.Thread, Cache]:
    """Another "process" takes the lease on "k" and loads until ``release``."""
    loading = threading.Event()
    holder = Cache.from_url(url, ttl=60)

    def load() -> str:
        loading.set()
        assert release.wait(10)
        return "v"

    thread = threading.Thread(target=lambda: holder.get_or_load("k", load))
    thread.start()
    assert loading.wait(5)
    return thread, holder


def _wait_until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + 5
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)  # polling a condition another thread makes true


def test_joiners_take_a_value_their_leader_read_after_they_joined(redis_url: str, raw: Any) -> None:
    """Threads that joined while the leader waited on another process's lease take
    what the leader reads after the wait (a read sent after they joined is as fresh
    as their own): one lease read per wait, not one per thread."""
    release = threading.Event()
    thread, holder = _hold_a_lease(redis_url, release)
    counting = CountingLeases(RedisBackend(redis.Redis.from_url(redis_url), owns_client=True))
    cache = Cache(counting, ttl=60)  # type: ignore[arg-type]
    got: list[Any] = []
    readers = [
        threading.Thread(target=lambda: got.append(cache.get_or_load("k", lambda: "own")))
        for _ in range(6)
    ]
    try:
        readers[0].start()  # the leader: asks for the lease, then waits
        _wait_until(lambda: raw.get("{k}:waiters") is not None, "the leader to wait")
        for reader in readers[1:]:
            reader.start()
        _wait_until(lambda: cache.stats().coalesced == 5, "the joiners to join")
        release.set()
        for reader in readers:
            reader.join(10)
    finally:
        release.set()
        thread.join(10)
        holder.close()
        cache.close()
        counting.inner.close()
    assert got == ["v"] * 6
    # The lease request and the read after the wait; one more if the listener
    # reconnected meanwhile (a loaded machine: it wakes its waiters to read again,
    # since messages may have been lost). One read per joiner would be 7 or more.
    assert counting.reads in (2, 3), counting.reads


def test_async_joiners_take_a_value_their_leader_read_after_they_joined(
    redis_url: str, raw: Any
) -> None:
    release = threading.Event()
    thread, holder = _hold_a_lease(redis_url, release)

    async def own() -> str:
        return "own"

    async def scenario() -> tuple[list[Any], int]:
        counting = AsyncCountingLeases(
            AsyncRedisBackend(redis.asyncio.Redis.from_url(redis_url), owns_client=True)
        )
        cache = AsyncCache(counting, ttl=60)  # type: ignore[arg-type]
        try:
            leader = asyncio.create_task(cache.get_or_load("k", own))
            deadline = time.monotonic() + 5
            while raw.get("{k}:waiters") is None:  # the leader waits on the lease
                assert time.monotonic() < deadline
                await asyncio.sleep(0.002)
            joiners = [asyncio.create_task(cache.get_or_load("k", own)) for _ in range(5)]
            deadline = time.monotonic() + 5
            while cache.stats().coalesced < 5:
                assert time.monotonic() < deadline, "the joiners never joined"
                await asyncio.sleep(0.002)
            release.set()
            values = await asyncio.wait_for(asyncio.gather(leader, *joiners), 10)
            return list(values), counting.reads
        finally:
            release.set()  # before aclose(), which waits for the leader
            await cache.aclose()
            await counting.inner.aclose()

    try:
        values, reads = asyncio.run(scenario())
    finally:
        release.set()
        thread.join(10)
        holder.close()
    assert values == ["v"] * 6
    assert reads in (2, 3), reads  # (as in the sync test above)


def test_the_async_pool_bounds_connections_and_waits_for_a_free_one(
    redis_url: str, raw: Any
) -> None:
    """Many tasks on one AsyncCache share at most ``max_connections`` connections:
    past it they wait for a free one rather than fail."""

    async def scenario() -> tuple[list[Any], int, int]:
        cache = AsyncCache.from_url(f"{redis_url}?max_connections=4", ttl=60)
        try:
            await cache.set("k", 1)
            before = len(raw.client_list())
            values = await asyncio.gather(*(cache.get("k") for _ in range(300)))
            opened = len(raw.client_list()) - before
            return list(values), cache.stats().backend_errors, opened
        finally:
            await cache.aclose()

    values, errors, opened = asyncio.run(scenario())
    assert values == [1] * 300
    assert errors == 0
    assert opened <= 3  # four at most, one of which was already open


class SlowFailingWrites(CountingLeases):
    """Leased writes time out (after longer than a fast failure)."""

    def set_leased(self, *args: Any) -> bool:
        time.sleep(0.08)
        raise redis.TimeoutError("Timeout reading from socket")


class AsyncSlowFailingWrites(AsyncCountingLeases):
    async def set_leased(self, *args: Any) -> bool:
        await asyncio.sleep(0.08)
        raise redis.TimeoutError("Timeout reading from socket")


def test_a_lease_whose_write_timed_out_is_released_in_the_background(
    redis_url: str, raw: Any
) -> None:
    """Other processes' readers wait on a lease until it is released: after a write
    that timed out, the caller returns at once and the release follows off its path."""
    backend = SlowFailingWrites(RedisBackend(redis.Redis.from_url(redis_url), owns_client=True))
    with Cache(backend, ttl=60) as cache:  # type: ignore[arg-type]
        assert cache.get_or_load("k", lambda: "v") == "v"
        assert cache.wait_background(5)
        assert raw.get("{k}:lease") is None
    backend.inner.close()


def test_an_async_lease_whose_write_timed_out_is_released_in_the_background(
    redis_url: str, raw: Any
) -> None:
    async def load() -> str:
        return "v"

    async def scenario() -> Any:
        backend = AsyncSlowFailingWrites(
            AsyncRedisBackend(redis.asyncio.Redis.from_url(redis_url), owns_client=True)
        )
        cache = AsyncCache(backend, ttl=60)  # type: ignore[arg-type]
        try:
            assert await cache.get_or_load("k", load) == "v"
            assert await cache.wait_background(5)
            return raw.get("{k}:lease")
        finally:
            await cache.aclose()
            await backend.inner.aclose()

    assert asyncio.run(scenario()) is None


# -- AsyncRedisBackend's invalidations, sent from threads in batches ---------------


class CountingPipelines(redis.Redis):
    """A sync client that counts round trips: commands and pipelines."""

    round_trips = 0

    def execute_command(self, *args: Any, **options: Any) -> Any:
        type(self).round_trips += 1
        return super().execute_command(*args, **options)

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        pipe = super().pipeline(*args, **kwargs)
        execute = pipe.execute

        def counted(*a: Any, **k: Any) -> Any:
            type(self).round_trips += 1
            return execute(*a, **k)

        pipe.execute = counted
        return pipe


def test_async_deletes_from_many_tasks_go_out_in_batches(redis_url: str, raw: Any) -> None:
    async def scenario() -> tuple[list[bool], int]:
        backend = AsyncRedisBackend(
            redis.asyncio.Redis.from_url(redis_url),
            invalidation_client=CountingPipelines.from_url(redis_url),
            owns_client=True,
        )
        cache = AsyncCache(backend, ttl=60)
        try:
            for i in range(0, 200, 2):
                await cache.set(f"k{i}", i)  # every other key exists
            CountingPipelines.round_trips = 0
            results = await asyncio.gather(*(cache.delete(f"k{i}") for i in range(200)))
            assert cache.stats().invalidations_pending == 0
            return list(results), CountingPipelines.round_trips
        finally:
            await cache.aclose()
            await backend.aclose()

    results, round_trips = asyncio.run(scenario())
    assert results == [i % 2 == 0 for i in range(200)]  # whether each existed
    assert not raw.keys("{k*")
    assert round_trips < 20, round_trips  # far fewer than one per delete


def test_an_async_delete_whose_caller_is_cancelled_still_lands(redis_url: str, raw: Any) -> None:
    async def scenario() -> None:
        backend = AsyncRedisBackend(
            redis.asyncio.Redis.from_url(redis_url),
            invalidation_client=redis.Redis.from_url(redis_url),
            owns_client=True,
        )
        cache = AsyncCache(backend, ttl=60)
        # The sender thread is held at the door until the caller was cancelled:
        # watching the queue instead raced (on a busy machine the sender could
        # take the delete and finish before the test looked, and it waited forever).
        sender = backend._offloaded
        assert sender is not None
        sending, cancelled = threading.Event(), threading.Event()
        send = sender._delete_each

        def gated(keys: list[str]) -> list[bool]:
            sending.set()
            assert cancelled.wait(10)
            return send(keys)

        sender._delete_each = gated  # type: ignore[method-assign]
        try:
            await cache.set("k", "old")
            task = asyncio.create_task(cache.delete("k"))
            deadline = time.monotonic() + 10
            while not sending.is_set():  # until the sender has it (bounded)
                assert time.monotonic() < deadline, "the delete never reached the sender"
                await asyncio.sleep(0.001)
            task.cancel()
            cancelled.set()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            cancelled.set()
            await cache.aclose()
            await backend.aclose()  # waits for what was already queued

    asyncio.run(scenario())
    assert raw.get("{k}") is None


def test_a_hit_that_read_the_old_entry_does_not_refresh_again_on_redis(redis_url: str) -> None:
    """As in memory (test_concurrency_sync): a hit that read the stale entry before
    another hit's refresh landed asks for a refresh lease, sees the newer entry in
    the reply, gives the lease back and loads nothing."""
    from cachewise.testing import FakeClock

    paused, resume = threading.Event(), threading.Event()
    slow_reader: list[threading.Thread] = []

    class PausingBackend(RedisBackend):
        def get(self, key: str) -> Any:
            entry = super().get(key)
            if slow_reader and threading.current_thread() is slow_reader[0]:
                paused.set()
                assert resume.wait(10)
            return entry

    clock = FakeClock(1_000.0)
    calls = 0

    def loader() -> str:
        nonlocal calls
        calls += 1
        return f"v{calls}"

    backend = PausingBackend(redis.Redis.from_url(redis_url), owns_client=True)
    cache = Cache(backend, ttl=10, jitter=0, stale_ttl=100, clock=clock)
    try:
        assert cache.get_or_load("k", loader) == "v1"
        clock.advance(20)  # stale: every hit refreshes
        got: list[Any] = []
        slow_reader.append(
            threading.Thread(target=lambda: got.append(cache.get_or_load("k", loader)))
        )
        slow_reader[0].start()
        assert paused.wait(10)
        assert cache.get_or_load("k", loader) == "v1"
        assert cache.wait_background(10)
        assert calls == 2
        resume.set()
        slow_reader[0].join(10)
        assert got == ["v1"]
        assert cache.wait_background(10)
        assert calls == 2, "the late hit refreshed an entry already refreshed"
        assert cache.get("k") == "v2"
    finally:
        resume.set()
        cache.close()
        backend.close()
