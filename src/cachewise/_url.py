"""``from_url``: turn a URL into a backend. Each scheme lists the query options it
takes; anything else is a ``ValueError`` naming it.

- ``memory://?max_entries=N&max_bytes=N``
- ``redis://[user:password@]host[:port][/db]`` and ``rediss://`` (TLS)
- ``redis+cluster://host:port`` and ``rediss+cluster://`` (Redis Cluster; any node)

Redis query options: ``serializer`` (json, msgpack), ``compress`` (zlib, zstd,
none), ``compress_threshold``, ``max_value_bytes``, ``lock_timeout``,
``wait_timeout``, ``tag_ttl``, ``breaker`` (on, off; default on: a circuit
breaker wraps the backend), ``max_connections`` (async pool, default 50: tasks
queue for a free connection), ``pool_timeout`` (5 s: how long a task queues for a
free connection before it gives up and loads from the source; the wait is
queueing in this process, so it never counts against Redis in the breaker, and
when the breaker opens, queued calls fail at once rather than each waiting on a
dead server in turn), ``socket_timeout``, ``connect_timeout`` (0.25 s by
default; redis-py retries only a dead connection, once, never a timeout), and
``invalidation_timeout`` (0.25 s: deletes and tag invalidations go through a second
client with this timeout; raise it when a delete that gives up under load, and is
held in-process until a retry lands, is worse for you than a longer wait).
Signed pickle needs a secret, which does not belong in a URL: pass
``serializer=PickleSerializer(secret)``.

Every number is checked here, so a value that would be accepted but unusable (a
pool of no connections, a lease Redis cannot store, a timeout nothing can meet)
is a ``ValueError`` naming the option: counts are integers (``max_connections``
1 to 65,535, the most one host can open to one server port; ``max_value_bytes``
1 to 512 MiB, Redis' largest string; ``compress_threshold`` >= 0); durations are
finite seconds from 0.001 (Redis stores expiries in whole milliseconds) to one
year.
"""

from __future__ import annotations

import importlib
import ipaddress
import math
import os
import socket
import threading
import weakref
from collections.abc import Callable
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from cachewise import _forksafe
from cachewise.backends._breaker import AsyncCircuitBreaker, CircuitBreaker
from cachewise.backends._memory import DEFAULT_MAX_BYTES, DEFAULT_MAX_ENTRIES, MemoryBackend
from cachewise.backends._pool import DEFAULT_POOL_TIMEOUT, bounded_pool_class
from cachewise.serialization import (
    DEFAULT_COMPRESS_THRESHOLD,
    DEFAULT_MAX_VALUE_BYTES,
    Codec,
    Serializer,
    make_serializer,
)

SCHEMES = ("memory", "redis", "rediss", "redis+cluster", "rediss+cluster")
Flavour = Literal["sync", "async"]

#: Default per-operation and connect timeouts for clients cachewise creates.
DEFAULT_SOCKET_TIMEOUT = 0.25
DEFAULT_CONNECT_TIMEOUT = 0.25
#: The per-operation timeout of invalidations (deletes, tag invalidations).
DEFAULT_INVALIDATION_TIMEOUT = 0.25
#: The async pool's size; how long a call queues for one of its connections is
#: DEFAULT_POOL_TIMEOUT (see _pool).
DEFAULT_MAX_CONNECTIONS = 50

#: Bounds of the numeric options: a value outside is accepted by nothing useful.
#: One client host opens at most this many TCP connections to one server port.
MAX_CONNECTIONS = 65_535
#: Redis' largest string (``proto-max-bulk-len``'s default).
MAX_VALUE_BYTES = 512 * 1024 * 1024
#: Redis stores expiries (leases, tag versions) in whole milliseconds; and no
#: timeout or lifetime of a cache's helpers is usefully longer than a year (larger
#: ones overflow what Redis or a socket timeout can hold).
MIN_SECONDS = 0.001
MAX_SECONDS = 365 * 24 * 3600.0

_REDIS_OPTIONS = (
    "serializer",
    "compress",
    "compress_threshold",
    "max_value_bytes",
    "lock_timeout",
    "wait_timeout",
    "tag_ttl",
    "breaker",
    "max_connections",
    "pool_timeout",
    "invalidation_timeout",
    "socket_timeout",
    "connect_timeout",
)


def _parse(url: str) -> tuple[str, dict[str, str]]:
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, not {type(url).__name__}")
    scheme = urlsplit(url).scheme.lower()
    if not scheme or "://" not in url:
        raise ValueError(f"invalid cache URL {url!r}: expected scheme://..., e.g. memory://")
    if scheme not in SCHEMES:
        raise ValueError(
            f"unknown cache URL scheme {scheme!r} in {url!r}; supported: "
            + ", ".join(f"{s}://" for s in SCHEMES)
        )
    query_text = urlsplit(url).query
    try:
        pairs = parse_qsl(query_text, keep_blank_values=True, strict_parsing=bool(query_text))
    except ValueError:
        raise ValueError(f"invalid query string in cache URL {url!r}") from None
    query: dict[str, str] = {}
    for name, value in pairs:
        if name in query:
            raise ValueError(f"query option {name!r} given twice in {url!r}")
        query[name] = value
    return scheme, query


def _int_option(name: str, raw: str, low: int | None = None, high: int | None = None) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"query option {name} must be an integer, got {raw!r}") from None
    if low is not None and value < low:
        raise ValueError(f"query option {name} must be >= {low}, got {raw!r}")
    if high is not None and value > high:
        raise ValueError(f"query option {name} must be <= {high}, got {raw!r}")
    return value


def _seconds_option(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"query option {name} must be a number of seconds, got {raw!r}") from None
    if not math.isfinite(value) or not MIN_SECONDS <= value <= MAX_SECONDS:
        raise ValueError(
            f"query option {name} must be a number of seconds from {MIN_SECONDS:g} "
            f"to {MAX_SECONDS:g}, got {raw!r}"
        )
    return value


def _memory(url: str, query: dict[str, str]) -> MemoryBackend:
    parts = urlsplit(url)
    if parts.netloc or parts.path not in ("", "/"):
        raise ValueError(f"memory:// URLs take no host or path, got {url!r}")
    for name in query:
        if name not in ("max_entries", "max_bytes"):
            raise ValueError(
                f"unknown query option {name!r} for memory://; supported: max_entries, max_bytes"
            )
    return MemoryBackend(
        max_entries=_int_option("max_entries", query.get("max_entries", str(DEFAULT_MAX_ENTRIES))),
        max_bytes=_int_option("max_bytes", query.get("max_bytes", str(DEFAULT_MAX_BYTES))),
    )


def _redis_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ImportError("Redis URLs need redis-py: pip install 'cachewise[redis]'") from None


def _redis(
    url: str,
    scheme: str,
    query: dict[str, str],
    flavour: Flavour,
    serializer: Serializer | None,
) -> Any:
    from cachewise.backends._redis import AsyncRedisBackend, RedisBackend

    for name in query:
        if name not in _REDIS_OPTIONS:
            raise ValueError(
                f"unknown query option {name!r} for {scheme}://; supported: "
                + ", ".join(_REDIS_OPTIONS)
            )
    parts = urlsplit(url)
    if not parts.hostname:
        raise ValueError(f"{scheme}:// URLs need a host, got {url!r}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"invalid port in {url!r}") from None
    if port == 0:  # redis-py would read it as "no port" and connect to 6379
        raise ValueError(f"invalid port in {url!r}: ports are 1 to 65535")
    cluster = scheme.endswith("+cluster")
    database = _database(url, parts.path, cluster)
    if serializer is None:
        name = query.get("serializer", "json")
        if name == "pickle":
            raise ValueError(
                "serializer=pickle needs a secret, which does not belong in a URL: "
                "pass serializer=PickleSerializer(secret) to from_url"
            )
        serializer = make_serializer(name)
    compress = query.get("compress", "none")
    codec = Codec(
        serializer,
        compress=None if compress == "none" else compress,
        compress_threshold=_int_option(
            "compress_threshold",
            query.get("compress_threshold", str(DEFAULT_COMPRESS_THRESHOLD)),
            low=0,
        ),
        max_value_bytes=_int_option(
            "max_value_bytes",
            query.get("max_value_bytes", str(DEFAULT_MAX_VALUE_BYTES)),
            low=1,
            high=MAX_VALUE_BYTES,
        ),
    )
    timeouts = {
        "socket_timeout": _seconds_option(
            "socket_timeout", query.get("socket_timeout", str(DEFAULT_SOCKET_TIMEOUT))
        ),
        "socket_connect_timeout": _seconds_option(
            "connect_timeout", query.get("connect_timeout", str(DEFAULT_CONNECT_TIMEOUT))
        ),
    }
    lease_options: dict[str, Any] = {}
    for name in ("lock_timeout", "wait_timeout", "tag_ttl"):
        if name in query:
            lease_options[name] = _seconds_option(name, query[name])
    breaker = query.get("breaker", "on")
    if breaker not in ("on", "off"):
        raise ValueError(f"query option breaker must be on or off, got {breaker!r}")
    base_scheme = "rediss" if scheme.startswith("rediss") else "redis"
    client_url = urlunsplit((base_scheme, parts.netloc, "" if cluster else f"/{database}", "", ""))
    name = redact(urlunsplit((scheme, parts.netloc, parts.path, "", "")))
    # One retry, and only for a connection that turned out dead (a pooled
    # connection after a server restart): never for a timeout, so a dead or hung
    # server costs one timeout. The breaker stops calling one that keeps failing.
    no_backoff = _redis_module("redis.backoff").NoBackoff()
    # A cluster client retries every connection error and timeout itself (after
    # refreshing its slot table), whatever the Retry's error list says: one retry
    # there would be two timeouts on a hung node. The next call reaches the new
    # topology anyway.
    retries = 0 if cluster else 1
    connection_error = _redis_module("redis.exceptions").ConnectionError
    # (Checked for the sync flavour too, which does not use it: a URL means the
    # same for both.)
    max_connections = _int_option(
        "max_connections",
        query.get("max_connections", str(DEFAULT_MAX_CONNECTIONS)),
        low=1,
        high=MAX_CONNECTIONS,
    )
    pool_timeout = _seconds_option(
        "pool_timeout", query.get("pool_timeout", str(DEFAULT_POOL_TIMEOUT))
    )
    # Invalidations get a longer timeout of their own (a second client): one that
    # gives up leaves the old value for every other process to read, and under
    # load a short timeout fires on a busy client, not on a dead server.
    invalidation_timeout = _seconds_option(
        "invalidation_timeout",
        query.get("invalidation_timeout", str(DEFAULT_INVALIDATION_TIMEOUT)),
    )
    # Connecting too: a new connection after a restart, on a busy client.
    slow = {"socket_timeout": invalidation_timeout, "socket_connect_timeout": invalidation_timeout}
    if flavour == "sync":
        module = _redis_module("redis.cluster" if cluster else "redis")
        factory = module.RedisCluster if cluster else module.Redis

        def sync_client(options: dict[str, float]) -> Any:
            retry = _redis_module("redis.retry").Retry(no_backoff, retries, (connection_error,))
            if cluster:  # it connects when built: see _LazyClusterClient
                return _LazyClusterClient(
                    lambda: factory.from_url(client_url, retry=retry, **options)
                )
            return factory.from_url(client_url, retry=retry, **options)

        backend: Any = RedisBackend(
            sync_client(timeouts),
            codec=codec,
            owns_client=True,
            invalidation_client=sync_client(slow),
            lease_scope=server_identity(url),
            **lease_options,
        )
        return CircuitBreaker(backend, name=name) if breaker == "on" else backend
    module = _redis_module("redis.asyncio.cluster" if cluster else "redis.asyncio")
    # The breaker's gate for calls queued on the pool (set once the breaker
    # exists); every pool built, for each event loop the cache runs on, gets it.
    gate: list[Callable[[], None] | None] = [None]

    def async_client() -> Any:
        retry = _redis_module("redis.asyncio.retry").Retry(no_backoff, retries, (connection_error,))
        if cluster:
            return module.RedisCluster.from_url(client_url, retry=retry, **timeouts)
        # redis.asyncio's default pool raises once 100 connections are in use;
        # with many tasks, queue for a free one instead (for pool_timeout: under
        # load that wait is queueing, not the server being slow), without its
        # BlockingConnectionPool's cost on every call (see _pool).
        pool = bounded_pool_class().from_url(
            client_url,
            max_connections=max_connections,
            timeout=pool_timeout,
            retry=retry,
            **timeouts,
        )
        pool.gate = gate[0]
        return module.Redis.from_pool(pool)  # the client owns (and closes) the pool

    # Invalidations go through a sync client on threads of the backend's own:
    # see AsyncRedisBackend (a busy event loop must not make a delete give up).
    sync_module = _redis_module("redis.cluster" if cluster else "redis")
    sync_factory = sync_module.RedisCluster if cluster else sync_module.Redis
    sync_retry = _redis_module("redis.retry").Retry(no_backoff, retries, (connection_error,))
    invalidation_client: Any
    if cluster:  # it connects when built: see _LazyClusterClient
        invalidation_client = _LazyClusterClient(
            lambda: sync_factory.from_url(client_url, retry=sync_retry, **slow), slow
        )
    else:
        invalidation_client = sync_factory.from_url(client_url, retry=sync_retry, **slow)
    backend = AsyncRedisBackend(
        async_client(),
        codec=codec,
        owns_client=True,
        invalidation_client=invalidation_client,
        client_factory=async_client,  # a fresh client for each new event loop
        lease_scope=server_identity(url),
        **lease_options,
    )
    if breaker == "off":
        return backend
    guarded = AsyncCircuitBreaker(backend, name=name)
    # Calls queued for a connection when the breaker opens fail at once when
    # their turn comes. (A weak reference: the pool, which the breaker owns
    # through the client, must not keep the breaker alive.)
    gate[0] = _pool_gate(weakref.ref(guarded))
    pool = getattr(backend.client, "connection_pool", None)
    if pool is not None and hasattr(pool, "gate"):
        pool.gate = gate[0]
    return guarded


def _pool_gate(ref: weakref.ref[AsyncCircuitBreaker]) -> Callable[[], None]:
    def gate() -> None:
        breaker = ref()
        if breaker is not None:
            breaker.admit_queued()

    return gate


def backend_from_url(
    url: str, flavour: Flavour = "sync", *, serializer: Serializer | None = None
) -> Any:
    """The backend a URL names, for a ``Cache`` (``"sync"``) or an ``AsyncCache``."""
    scheme, query = _parse(url)
    if scheme == "memory":
        if serializer is not None:
            raise ValueError("memory:// stores values by reference; it takes no serializer")
        return _memory(url, query)
    return _redis(url, scheme, query, flavour, serializer)


class _LazyClusterClient:
    """A sync client built on first use. ``redis.cluster.RedisCluster`` connects to
    the cluster as it is built and raises if no node answers: built eagerly, a
    cluster that is down would make ``from_url`` fail, and the application with it.
    Built lazily, the first calls fail like any other backend call (a miss, then
    the breaker) and a later one builds it once the cluster is back."""

    is_cluster = True  # what RedisBackend asks (it cannot see the type)

    def __init__(self, build: Callable[[], Any], options: dict[str, float] | None = None) -> None:
        self._build = build
        self._client: Any = None
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


def server_identity(url: str) -> str | None:
    """Which shared server ``url`` names (scheme, host, port, database; no options,
    no password), or ``None`` for a process-local backend. Caches of one process
    on one server and namespace share their held invalidations."""
    scheme, _ = _parse(url)
    if scheme == "memory":
        return None
    parts = urlsplit(url)
    base = "rediss" if scheme.startswith("rediss") else "redis"
    cluster = scheme.endswith("+cluster")
    database = _database(url, parts.path, cluster)  # validated for a cluster too
    return _identity(base, parts.hostname, parts.port, None if cluster else database)


def _identity(base: str, host: str | None, port: int | None, database: int | None) -> str:
    """One spelling per server: the host as ``_host_identity`` spells it (the
    spellings of one address merged, never two addresses), the default port and
    database filled in; ``database`` None for a cluster."""
    host = _host_identity(host or "localhost")
    kind = "single" if database is not None else "cluster"
    tail = f"/{database}" if database is not None else ""
    return f"{base}:{kind}://{host}:{port or 6379}{tail}"


def _host_identity(host: str) -> str:
    """A host as the identity spells it: only spellings of one address are merged,
    never two addresses (two servers may listen on one port of 127.0.0.1 and
    127.0.0.2, or of 127.0.0.1 and ::1, and a held delete settled through one must
    not count for the other). ``localhost`` is 127.0.0.1 (the hosts file's rule);
    ``127.1`` is 127.0.0.1; ``0.0.0.0`` and ``::`` connect to the loopback
    (127.0.0.1, ::1); IPv6 in any spelling, IPv4-mapped as IPv4. Other names are
    not resolved: a server reached by two names is two servers to us."""
    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost":
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        try:  # the short IPv4 forms the resolver accepts too (127.1, 2130706433)
            address = ipaddress.ip_address(socket.inet_aton(host))
        except OSError:
            return host
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:
        address = mapped
    if address.is_unspecified:  # a connect to "any" reaches the loopback
        return "127.0.0.1" if address.version == 4 else "::1"
    return address.compressed


def client_identity(client: object) -> str | None:
    """The ``server_identity`` of what a redis-py client (sync or asyncio, not a
    cluster) connects to, from its pool's connection settings; None if unknown."""
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None)
    if not isinstance(kwargs, dict):
        return None
    database = kwargs.get("db", 0)
    if not isinstance(database, int) or isinstance(database, bool):
        try:
            database = int(database)
        except (TypeError, ValueError):
            return None
    connection_class = getattr(pool, "connection_class", None)
    tls = "SSL" in getattr(connection_class, "__name__", "")
    if kwargs.get("path"):  # a Unix socket
        path = os.path.realpath(str(kwargs["path"]))
        return f"{'rediss' if tls else 'redis'}:unix://{path}/{database}"
    host, port = kwargs.get("host"), kwargs.get("port")
    if isinstance(port, str) and port.isascii() and port.isdigit():
        port = int(port)  # redis-py takes "6379" too
    if not isinstance(host, str) or not isinstance(port, (int, type(None))):
        return None
    return _identity("rediss" if tls else "redis", host, port, database)


# Redis numbers its databases 0 to `databases - 1` (a signed int in its config).
_MAX_DATABASE = 2**31 - 1


def _database(url: str, path: str, cluster: bool) -> int:
    """The database a Redis URL's path names: "", "/" and "/N" with N in ASCII
    digits; anything else (a sign, letters, other digits, more segments) is a
    ValueError, not left for redis-py to read its own way."""
    text = path[1:] if path.startswith("/") else path
    if text == "":
        return 0
    if cluster:
        if text == "0":
            return 0
        raise ValueError(f"Redis Cluster has no databases; drop the path in {url!r}")
    if not (text.isascii() and text.isdigit()) or int(text) > _MAX_DATABASE:
        raise ValueError(
            f"invalid database in {url!r}: the path must be /N with N a number from 0 "
            f"to {_MAX_DATABASE}"
        )
    return int(text)


def redact(url: str) -> str:
    """``url`` with any password replaced, for logs and reprs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(":" + parts.password + "@", ":***@", 1)
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(parse_qsl(parts.query)), ""))
