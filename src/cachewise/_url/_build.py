"""Building: parsed options (``_options``) into a backend, one small builder per
flavour, each wrapping its backend in the circuit breaker unless ``breaker=off``.

Both flavours' invalidations go through a sync client of their own, with the
longer ``invalidation_timeout``; the async backend's reads and writes go through
an asyncio client built once per event loop the cache runs on."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from cachewise import _forksafe
from cachewise._url._checks import check_client_options, redis_module
from cachewise._url._options import MemoryOptions, RedisOptions, Target
from cachewise.backends._breaker import AsyncCircuitBreaker, CircuitBreaker
from cachewise.backends._failover import connection_classes, master_watch
from cachewise.backends._memory import MemoryBackend
from cachewise.backends._pool import bounded_pool_class, queued_pool_class


def build_memory(options: MemoryOptions) -> MemoryBackend:
    """The memory backend (one for both flavours)."""
    return MemoryBackend(max_entries=options.max_entries, max_bytes=options.max_bytes)


def build_sync(options: RedisOptions) -> Any:
    """A ``RedisBackend``, in a ``CircuitBreaker`` unless ``breaker=off``."""
    from cachewise.backends._redis import RedisBackend

    check_client_options(options, "sync")
    identity = options.target.identity()
    backend = RedisBackend(
        _sync_client(options, identity, _timeouts(options)),
        codec=options.codec,
        owns_client=True,
        invalidation_client=_sync_client(options, identity, _invalidation_timeouts(options)),
        lease_scope=identity,
        **options.lease_options(),
    )
    if not options.breaker:
        return backend
    guarded = CircuitBreaker(backend, name=options.name)
    # Threads queued for a connection when the breaker opens fail at once when
    # their turn comes (a weak reference, as for the async flavour).
    # (Not a cluster's: its client is built on first use, and its node pools are
    # redis-py's own.)
    pool = None if options.target.kind == "cluster" else backend.client.connection_pool
    if pool is not None and hasattr(pool, "gate"):
        pool.gate = _pool_gate(weakref.ref(guarded))
    return guarded


def build_async(options: RedisOptions) -> Any:
    """An ``AsyncRedisBackend``, in an ``AsyncCircuitBreaker`` unless
    ``breaker=off``; calls queued for a pooled connection pass the breaker's gate."""
    from cachewise.backends._redis import AsyncRedisBackend

    check_client_options(options, "async")
    identity = options.target.identity()
    clients = _AsyncClients(options, identity)
    # Invalidations go through a sync client on threads of the backend's own:
    # see AsyncRedisBackend (a busy event loop must not make a delete give up).
    backend = AsyncRedisBackend(
        clients(),
        codec=options.codec,
        owns_client=True,
        invalidation_client=_sync_client(options, identity, _invalidation_timeouts(options)),
        client_factory=clients,  # a fresh client for each new event loop
        lease_scope=identity,
        **options.lease_options(),
    )
    if not options.breaker:
        return backend
    guarded = AsyncCircuitBreaker(backend, name=options.name)
    # Calls queued for a connection when the breaker opens fail at once when
    # their turn comes. (A weak reference: the pool, which the breaker owns
    # through the client, must not keep the breaker alive.)
    clients.gate = _pool_gate(weakref.ref(guarded))
    pool = getattr(backend.client, "connection_pool", None)
    if pool is not None and hasattr(pool, "gate"):
        pool.gate = clients.gate
    return guarded


def _timeouts(options: RedisOptions) -> dict[str, float]:
    """The per-operation and connect timeouts, as redis-py's keywords."""
    return {
        "socket_timeout": options.socket_timeout,
        "socket_connect_timeout": options.connect_timeout,
    }


def _invalidation_timeouts(options: RedisOptions) -> dict[str, float]:
    """The invalidation client's: connecting too (a new connection after a
    restart, on a busy client)."""
    return {
        "socket_timeout": options.invalidation_timeout,
        "socket_connect_timeout": options.invalidation_timeout,
    }


def _retry(target: Target, module: str) -> Any:
    """One retry, and only for a connection that turned out dead (a pooled
    connection after a server restart): never for a timeout, so a dead or hung
    server costs one timeout. The breaker stops calling one that keeps failing.

    A cluster client retries every connection error and timeout itself (after
    refreshing its slot table), whatever the Retry's error list says: one retry
    there would be two timeouts on a hung node, so none. The next call reaches
    the new topology anyway."""
    retries = 0 if target.kind == "cluster" else 1
    no_backoff = redis_module("redis.backoff").NoBackoff()
    connection_error = redis_module("redis.exceptions").ConnectionError
    return redis_module(module).Retry(no_backoff, retries, (connection_error,))


def _sync_client(options: RedisOptions, identity: str, socket_options: dict[str, float]) -> Any:
    """A sync client with these timeouts (both flavours' invalidations use one)."""
    target = options.target
    kwargs = {"retry": _retry(target, "redis.retry"), **socket_options, **options.client_options}
    # Threads queue for a free connection (see _pool.queued_pool_class): redis-py's
    # default pool raises past 100 connections in use.
    pooling = {"max_connections": options.max_connections, "timeout": options.pool_timeout}
    if target.kind == "sentinel":
        sentinel = redis_module("redis.sentinel")
        manager = sentinel.Sentinel(
            target.sentinels,
            sentinel_kwargs=_sentinel_kwargs(options, socket_options, "redis.retry"),
        )
        return manager.master_for(
            target.service,
            connection_pool_class=queued_pool_class(sentinel.SentinelConnectionPool),
            connection_class=connection_classes()[("sync", target.tls)],
            watch=master_watch(identity),  # (see _failover: followed failovers)
            **_master_kwargs(target),
            **pooling,
            **kwargs,
        )
    if target.kind == "cluster":  # it connects when built: see _LazyClusterClient
        factory = redis_module("redis.cluster").RedisCluster
        return _LazyClusterClient(
            lambda: factory.from_url(target.client_url, **kwargs), socket_options
        )
    pool = queued_pool_class().from_url(target.client_url, **pooling, **kwargs)
    return redis_module("redis").Redis.from_pool(pool)  # the client owns (and closes) it


class _AsyncClients:
    """Builds the asyncio client: the backend's ``client_factory``, called for each
    event loop the cache runs on. Every pool it builds gets ``gate``, the breaker's
    (set once the breaker exists)."""

    def __init__(self, options: RedisOptions, identity: str) -> None:
        self._options = options
        self._identity = identity
        cluster = options.target.kind == "cluster"
        self._module = redis_module("redis.asyncio.cluster" if cluster else "redis.asyncio")
        self.gate: Callable[[], None] | None = None

    def __call__(self) -> Any:
        options, target = self._options, self._options.target
        retry = _retry(target, "redis.asyncio.retry")
        timeouts = _timeouts(options)
        if target.kind == "cluster":
            return self._module.RedisCluster.from_url(
                target.client_url, retry=retry, **timeouts, **options.client_options
            )
        # redis.asyncio's default pool raises once 100 connections are in use;
        # with many tasks, queue for a free one instead (for pool_timeout: under
        # load that wait is queueing, not the server being slow), without its
        # BlockingConnectionPool's cost on every call (see _pool).
        kwargs = {
            "max_connections": options.max_connections,
            "timeout": options.pool_timeout,
            "retry": retry,
            **timeouts,
            **options.client_options,
        }
        if target.kind == "sentinel":
            # A Sentinel manager of this loop's own (its connections to the
            # Sentinels belong to the loop too), and redis-py's Sentinel pool
            # made bounded like the plain one.
            sentinel = redis_module("redis.asyncio.sentinel")
            manager = sentinel.Sentinel(
                target.sentinels,
                sentinel_kwargs=_sentinel_kwargs(options, timeouts, "redis.asyncio.retry"),
            )
            pool = bounded_pool_class(sentinel.SentinelConnectionPool)(
                service_name=target.service,
                sentinel_manager=manager,
                connection_class=connection_classes()[("async", target.tls)],
                watch=master_watch(self._identity),
                **_master_kwargs(target),
                **kwargs,
            )
        else:
            pool = bounded_pool_class().from_url(target.client_url, **kwargs)
        pool.gate = self.gate
        return self._module.Redis.from_pool(pool)  # the client owns (and closes) the pool


def _master_kwargs(target: Target) -> dict[str, Any]:
    """The master's database and credentials (from the URL), for a Sentinel pool."""
    kwargs: dict[str, Any] = {"db": target.database}
    if target.username is not None:
        kwargs["username"] = target.username
    if target.password is not None:
        kwargs["password"] = target.password
    return kwargs


def _sentinel_kwargs(
    options: RedisOptions, socket_options: Mapping[str, float], retry_module: str
) -> dict[str, Any]:
    """How to reach the Sentinels themselves: our timeouts, TLS as the scheme says,
    and ``sentinel_options`` (their own password, for one). Never retried: an
    unreachable Sentinel is skipped for the next one."""
    kwargs: dict[str, Any] = dict(socket_options)
    no_backoff = redis_module("redis.backoff").NoBackoff()
    kwargs["retry"] = redis_module(retry_module).Retry(no_backoff, 0)
    if options.target.tls:
        kwargs["ssl"] = True
    kwargs.update(options.sentinel_options)
    return kwargs


def _pool_gate(ref: weakref.ref[Any]) -> Callable[[], None]:
    def gate() -> None:
        breaker = ref()
        if breaker is not None:
            breaker.admit_queued()

    return gate


class _LazyClusterClient:
    """A sync client built on first use. ``redis.cluster.RedisCluster`` connects to
    the cluster as it is built and raises if no node answers: built eagerly, a
    cluster that is down would make ``from_url`` fail, and the application with it.
    Built lazily, the first calls fail like any other backend call (a miss, then
    the breaker) and a later one builds it once the cluster is back."""

    is_cluster = True  # what RedisBackend asks (it cannot see the type)

    def __init__(self, build: Callable[[], Any], options: dict[str, float] | None = None) -> None:
        self._build = build
        self._client: Any = None  # (backends._redis reads it: see its client timeout)
        self._lock = threading.Lock()
        # Readable without building the client (AsyncRedisBackend's queue limit).
        self.socket_timeout = (options or {}).get("socket_timeout")
        _forksafe.register(self)

    def _fork_locks(self) -> list[threading.Lock]:
        return []

    def _after_fork_child(self) -> None:
        self._lock = threading.Lock()

    def _get(self) -> Any:
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._build()
                client = self._client
        return client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._get(), name)

    def close(self) -> None:
        """Close the client, if it was ever built."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()
