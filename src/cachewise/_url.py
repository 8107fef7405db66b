"""``from_url``: turn a URL into a backend. Each scheme lists the query options it
takes; anything else is a ``ValueError`` naming it. ``from_url`` takes each of
them as a keyword too (a keyword wins), and a name no scheme option nor the cache
takes is a ``TypeError`` listing the accepted ones (``split_options``).

- ``memory://?max_entries=N&max_bytes=N``
- ``redis://[user:password@]host[:port][/db]`` and ``rediss://`` (TLS);
  ``valkey://`` and ``valkeys://`` are the same protocol
- ``unix://[user:password@]/path/to/redis.sock[?db=N]`` (a Unix socket)
- ``redis+cluster://host:port`` and ``rediss+cluster://`` (Redis Cluster; any node)
- ``redis+sentinel://[[user:]password@]host:port[,host:port...]/service[/db]`` and
  ``rediss+sentinel://`` (a Sentinel-managed master; see ``backends._failover``)

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
``serializer="pickle", secret=...`` or ``serializer=PickleSerializer(secret)``.
A query's ``serializer=pickle`` is refused even when ``secret`` is a keyword.
Keywords only: ``secret``, ``client_options`` (redis-py client options, checked
here: names against redis-py's connection class and, for a cluster, what its
clients pass on; values by the kinds redis-py's signatures give; credentials
against the URL's) and ``sentinel_options`` (for the connections to the Sentinels).

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
import inspect
import ipaddress
import math
import os
import socket
import threading
import weakref
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import timedelta
from typing import Any, Literal
from urllib.parse import (
    SplitResult,
    parse_qsl,
    quote,
    unquote,
    urlencode,
    urlsplit,
    urlunsplit,
)

from cachewise import _forksafe
from cachewise.backends._breaker import AsyncCircuitBreaker, CircuitBreaker
from cachewise.backends._failover import connection_classes, master_watch
from cachewise.backends._memory import DEFAULT_MAX_BYTES, DEFAULT_MAX_ENTRIES, MemoryBackend
from cachewise.backends._pool import DEFAULT_POOL_TIMEOUT, bounded_pool_class
from cachewise.serialization import (
    DEFAULT_COMPRESS_THRESHOLD,
    DEFAULT_MAX_VALUE_BYTES,
    Codec,
    Serializer,
    make_serializer,
)

#: Every scheme ``from_url`` takes. ``valkey`` is Redis' protocol under another
#: name; ``unix`` is a Unix socket; ``+cluster`` is Redis Cluster; ``+sentinel`` is
#: a Sentinel-managed master.
SCHEMES = (
    "memory",
    "redis",
    "rediss",
    "valkey",
    "valkeys",
    "unix",
    "redis+cluster",
    "rediss+cluster",
    "valkey+cluster",
    "valkeys+cluster",
    "redis+sentinel",
    "rediss+sentinel",
    "valkey+sentinel",
    "valkeys+sentinel",
)
Flavour = Literal["sync", "async"]
Kind = Literal["single", "unix", "cluster", "sentinel"]

#: Default per-operation and connect timeouts for clients cachewise creates.
DEFAULT_SOCKET_TIMEOUT = 0.25
DEFAULT_CONNECT_TIMEOUT = 0.25
#: The per-operation timeout of invalidations (deletes, tag invalidations).
DEFAULT_INVALIDATION_TIMEOUT = 0.25
#: The async pool's size; how long a call queues for one of its connections is
#: DEFAULT_POOL_TIMEOUT (see _pool).
DEFAULT_MAX_CONNECTIONS = 50
#: Where a Sentinel listens unless its address says otherwise.
DEFAULT_SENTINEL_PORT = 26379

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

_MEMORY_OPTIONS = ("max_entries", "max_bytes")
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
#: The serializers a URL's query may name (pickle only by keyword).
_QUERY_SERIALIZERS = ("json", "msgpack")
#: Options only a keyword gives (a secret or a dict does not belong in a URL).
_REDIS_KEYWORDS = ("secret", "client_options")

#: redis-py client options cachewise sets itself, and why they are not
#: ``client_options``.
_RESERVED_CLIENT_OPTIONS = {
    "decode_responses": "cachewise reads bytes",
    "encoding": "cachewise reads bytes",
    "encoding_errors": "cachewise reads bytes",
    "protocol": "cachewise parses RESP2 replies",
    "retry": "cachewise retries a dead connection once and never a timeout",
    "retry_on_timeout": "cachewise never retries a timeout",
    "retry_on_error": "cachewise retries a dead connection once and never a timeout",
    "socket_timeout": "use the socket_timeout option",
    "socket_connect_timeout": "use the connect_timeout option",
    "max_connections": "use the max_connections option",
    "db": "the database is part of the URL",
    "host": "the address is part of the URL",
    "port": "the address is part of the URL",
    "path": "the socket path is part of the URL",
    "unix_socket_path": "the socket path is part of the URL",
    "url": "the address is part of the URL",
    "connection_pool": "cachewise builds the pool",
    "connection_class": "cachewise builds the pool",
    "single_connection_client": "cachewise builds the pool",
    "startup_nodes": "the address is part of the URL",
    "cache": "client-side caching needs RESP3, and cachewise parses RESP2 replies",
    "cache_config": "client-side caching needs RESP3, and cachewise parses RESP2 replies",
    "maint_notifications_config": "maintenance notifications need RESP3, "
    "and cachewise parses RESP2 replies",
    "read_from_replicas": "cachewise reads the primaries: a replica may still serve "
    "what a delete removed",
    "load_balancing_strategy": "cachewise reads the primaries: a replica may still serve "
    "what a delete removed",
    "cluster_error_retry_attempts": "cachewise sets the cluster client's retries "
    "(a timeout is never retried)",
}

#: Options of Redis Cluster's clients (sync and asyncio alike) that are not
#: connection options, with the kind of value each takes (see _option_kind). Any
#: other name a cluster URL takes is a connection option its clients pass on.
_CLUSTER_OPTIONS = {
    "require_full_coverage": "bool",
    "reinitialize_steps": "number",
    "dynamic_startup_nodes": "bool",
    "address_remap": "callable",
}

#: Options that take a mapping, where redis-py's signatures do not say so.
_MAPPING_OPTIONS = ("socket_keepalive_options",)

#: Options that name credentials: given both in the URL and in client_options,
#: one of them would be dropped (or redis-py would refuse the pair).
_CREDENTIAL_OPTIONS = ("username", "password", "credential_provider")


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


def _kind(scheme: str) -> tuple[Kind, bool]:
    """What a (known) scheme names, and whether it speaks TLS."""
    base, _, suffix = scheme.partition("+")
    tls = base in ("rediss", "valkeys")
    if base == "unix":
        return "unix", False
    if suffix == "cluster":
        return "cluster", tls
    if suffix == "sentinel":
        return "sentinel", tls
    return "single", tls


def url_keywords(url: str) -> tuple[str, ...]:
    """The backend options ``from_url`` takes as keywords for ``url``'s scheme:
    every query option, plus the ones only a keyword gives."""
    scheme, _ = _parse(url)
    if scheme == "memory":
        return _MEMORY_OPTIONS
    kind, _ = _kind(scheme)
    extra = ("db",) if kind == "unix" else ("sentinel_options",) if kind == "sentinel" else ()
    return _REDIS_OPTIONS + extra + _REDIS_KEYWORDS


def split_options(
    url: str, options: dict[str, Any], cache_options: Collection[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``from_url``'s keywords as (backend options, cache options). A name neither
    takes is a ``TypeError`` listing what is accepted."""
    backend_names = url_keywords(url)
    backend: dict[str, Any] = {}
    cache: dict[str, Any] = {}
    for name, value in options.items():
        if name in cache_options:
            cache[name] = value
        elif name in backend_names:
            backend[name] = value
        else:
            scheme, _ = _parse(url)
            raise TypeError(
                f"from_url() got an unexpected keyword argument {name!r}; it takes the "
                f"cache's options ({', '.join(sorted(cache_options))}) and, for {scheme}:// "
                f"URLs, serializer and {', '.join(n for n in backend_names if n != 'serializer')}"
            )
    return backend, cache


def _int_option(name: str, raw: object, low: int | None = None, high: int | None = None) -> int:
    """A count from a query string or a keyword (an int, not a bool)."""
    if isinstance(raw, str):
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"option {name} must be an integer, got {raw!r}") from None
    elif isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    else:
        raise TypeError(f"option {name} must be an int, not {type(raw).__name__}")
    if low is not None and value < low:
        raise ValueError(f"option {name} must be >= {low}, got {raw!r}")
    if high is not None and value > high:
        raise ValueError(f"option {name} must be <= {high}, got {raw!r}")
    return value


def _seconds_option(name: str, raw: object) -> float:
    """A duration from a query string or a keyword (seconds or a ``timedelta``)."""
    if isinstance(raw, str):
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"option {name} must be a number of seconds, got {raw!r}") from None
    elif isinstance(raw, timedelta):
        value = raw.total_seconds()
    elif isinstance(raw, (int, float)) and not isinstance(raw, bool):
        value = float(raw)
    else:
        raise TypeError(
            f"option {name} must be a number of seconds or a timedelta, not {type(raw).__name__}"
        )
    if not math.isfinite(value) or not MIN_SECONDS <= value <= MAX_SECONDS:
        raise ValueError(
            f"option {name} must be a number of seconds from {MIN_SECONDS:g} "
            f"to {MAX_SECONDS:g}, got {raw!r}"
        )
    return value


def _choice_option(name: str, raw: object, choices: tuple[str, ...]) -> str:
    if not isinstance(raw, str) or raw not in choices:
        raise ValueError(f"option {name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw


def _merged(
    url: str, scheme: str, query: dict[str, str], keywords: dict[str, Any]
) -> dict[str, Any]:
    """The query's options overridden by the keywords; a name the scheme does not
    take is a ``ValueError`` in the query, a ``TypeError`` as a keyword."""
    accepted = url_keywords(url)
    for name in query:
        if name in _REDIS_KEYWORDS or name == "sentinel_options":
            raise ValueError(
                f"query option {name!r} does not belong in a URL; pass {name}=... to from_url"
            )
        if name not in accepted:
            raise ValueError(
                f"unknown query option {name!r} for {scheme}://; supported: "
                + ", ".join(n for n in accepted if n not in _REDIS_KEYWORDS)
            )
    serializer = query.get("serializer")
    if serializer is not None and serializer not in _QUERY_SERIALIZERS:
        # Signed pickle runs code from what it reads: a URL from configuration may
        # not choose it, even when the code passes a secret.
        hint = (
            "; pickle is chosen in code only: pass serializer='pickle' (with secret=...) "
            "to from_url"
            if serializer == "pickle"
            else ""
        )
        raise ValueError(
            f"query option serializer={serializer} is not allowed in a URL: "
            f"use {' or '.join(_QUERY_SERIALIZERS)}{hint}"
        )
    for name in keywords:
        if name not in accepted:
            raise TypeError(
                f"unknown option {name!r} for {scheme}:// URLs; supported: " + ", ".join(accepted)
            )
    return {**query, **keywords}


def _memory(url: str, options: dict[str, Any]) -> MemoryBackend:
    parts = urlsplit(url)
    if parts.netloc or parts.path not in ("", "/"):
        raise ValueError(f"memory:// URLs take no host or path, got {url!r}")
    return MemoryBackend(
        max_entries=_int_option("max_entries", options.get("max_entries", DEFAULT_MAX_ENTRIES)),
        max_bytes=_int_option("max_bytes", options.get("max_bytes", DEFAULT_MAX_BYTES)),
    )


def _redis_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ImportError("Redis URLs need redis-py: pip install 'cachewise[redis]'") from None


class _Target:
    """Where a Redis URL points: what ``_redis`` needs to build clients."""

    def __init__(self, url: str, scheme: str, options: dict[str, Any]) -> None:
        self.kind, self.tls = _kind(scheme)
        parts = urlsplit(url)
        self.sentinels: list[tuple[str, int]] = []
        self.service = ""
        self.path = ""
        self.username: str | None = None
        self.password: str | None = None
        self.database = 0
        if self.kind == "sentinel":
            self._sentinel(url, parts)
            return
        if self.kind == "unix":
            if parts.hostname or parts.port:
                raise ValueError(
                    f"unix:// URLs name a socket path, not a host: unix:///path/to/redis.sock, "
                    f"got {url!r}"
                )
            if parts.path in ("", "/"):
                raise ValueError(f"unix:// URLs need a socket path, got {url!r}")
            self.path = unquote(parts.path)
            self.username = unquote(parts.username) if parts.username else None
            self.password = unquote(parts.password) if parts.password is not None else None
            self.database = _int_option("db", options.get("db", 0), low=0, high=_MAX_DATABASE)
            # (By hand: urlunsplit drops the "//" of an empty host.)
            self.client_url = f"unix://{parts.netloc}{parts.path}?db={self.database}"
            return
        if not parts.hostname:
            raise ValueError(f"{scheme}:// URLs need a host, got {url!r}")
        # (As redis-py reads them: an empty user is none.)
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password is not None else None
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"invalid port in {url!r}") from None
        if port == 0:  # redis-py would read it as "no port" and connect to 6379
            raise ValueError(f"invalid port in {url!r}: ports are 1 to 65535")
        cluster = self.kind == "cluster"
        self.database = _database(url, parts.path, cluster)
        base = "rediss" if self.tls else "redis"
        self.client_url = urlunsplit(
            (base, parts.netloc, "" if cluster else f"/{self.database}", "", "")
        )

    def _sentinel(self, url: str, parts: SplitResult) -> None:
        """``[[user:]password@]host[:port][,host[:port]...]/service[/db]``."""
        netloc = parts.netloc
        userinfo, _, hosts = netloc.rpartition("@")
        if userinfo:
            user, colon, password = userinfo.partition(":")
            self.username = unquote(user) if colon and user else None
            self.password = unquote(password if colon else user)
        for item in hosts.split(","):
            try:
                probe = urlsplit("//" + item)
                host, port = probe.hostname, probe.port
            except ValueError:
                raise ValueError(f"invalid Sentinel address {item!r} in {url!r}") from None
            if not host or port == 0:
                raise ValueError(f"invalid Sentinel address {item!r} in {url!r}")
            self.sentinels.append((host, port or DEFAULT_SENTINEL_PORT))
        segments = parts.path.split("/")[1:] if parts.path.startswith("/") else []
        if not segments or not segments[0] or len(segments) > 2:
            raise ValueError(
                f"{parts.scheme}:// URLs name the service: "
                f"{parts.scheme}://host:port[,host:port]/service_name[/db], got {url!r}"
            )
        self.service = unquote(segments[0])
        self.database = _database(url, "/" + (segments[1] if len(segments) > 1 else ""), False)

    def identity(self) -> str:
        """This target's ``server_identity``."""
        base = "rediss" if self.tls else "redis"
        if self.kind == "unix":
            return _unix_identity(base, self.path, self.database)
        if self.kind == "sentinel":
            return _sentinel_identity(base, self.service, self.sentinels, self.database)
        parts = urlsplit(self.client_url)
        return _identity(
            base, parts.hostname, parts.port, None if self.kind == "cluster" else self.database
        )


def _check_client_options(
    target: _Target, options: object, flavour: Flavour, name: str = "client_options"
) -> dict[str, Any]:
    """``client_options`` checked now, not at the first connection: a name cachewise
    sets itself, one redis-py's connection class does not take (or a cluster
    client would not pass on), credentials the URL gives already, and a value of
    the wrong kind are errors here. redis-py would only raise once a connection is
    made (every call a backend failure from then on), and a cluster client would
    silently drop what it does not pass on."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise TypeError(f"{name} must be a dict of redis-py options, not {type(options).__name__}")
    result = dict(options)
    module_names = (
        ["redis.connection"]
        if flavour == "sync"
        else ["redis.connection", "redis.asyncio.connection"]
    )
    connection_classes_ = []
    for module_name in module_names:
        module = _redis_module(module_name)
        connection_classes_.append(
            module.UnixDomainSocketConnection
            if target.kind == "unix"
            else module.SSLConnection
            if target.tls
            else module.Connection
        )
    cluster = target.kind == "cluster" and name == "client_options"
    for option, value in result.items():
        if not isinstance(option, str):
            raise TypeError(f"{name} keys must be str, got {option!r}")
        reason = _RESERVED_CLIENT_OPTIONS.get(option)
        if reason is not None:
            raise ValueError(f"{name} may not set {option!r}: {reason}")
        if name == "client_options" and option in _CREDENTIAL_OPTIONS:
            _check_credentials(target, option)
        if cluster and option in _CLUSTER_OPTIONS:
            _check_value(name, option, value, _CLUSTER_OPTIONS[option])
            continue
        if cluster:
            _check_cluster_passes_on(option, flavour)
        # Before the connection is built: redis-py checks few values there.
        _check_value(name, option, value, _option_kind(option, connection_classes_))
        for connection_class in connection_classes_:
            try:
                connection_class(**{option: value})  # built, never connected
            except TypeError as exc:
                if "unexpected keyword" not in str(exc):
                    raise TypeError(f"{name}[{option!r}]: {exc}") from None
                hint = " (TLS options need a rediss:// URL)" if option.startswith("ssl") else ""
                raise TypeError(
                    f"{name}: redis-py's {connection_class.__name__} takes no option "
                    f"{option!r}{hint}"
                ) from None
    return result


def _check_credentials(target: _Target, option: str) -> None:
    """Refuse credentials in ``client_options`` when the URL has its own: redis-py
    would drop one of them (the URL wins) or refuse the pair at the first call."""
    given = {"username": target.username, "password": target.password}
    if option in given:
        clash = given[option] is not None
    else:  # a credential_provider replaces both
        clash = target.username is not None or target.password is not None
    if clash and option in given:
        raise ValueError(
            f"the {option} is given twice, in the URL and in client_options[{option!r}]: "
            "give it in one place"
        )
    if clash:
        raise ValueError(
            f"{option} conflicts with the credentials in the URL: give them in the URL "
            "or in client_options, not both"
        )


def _check_cluster_passes_on(option: str, flavour: Flavour) -> None:
    """Refuse a connection option a Redis Cluster client would drop (the sync one
    keeps a list of what it passes on to its connections) or refuse (the asyncio
    one takes a fixed set of keywords)."""
    sync_allowed = getattr(_redis_module("redis.cluster"), "REDIS_ALLOWED_KEYS", None)
    if sync_allowed is not None and option not in sync_allowed:
        raise TypeError(
            f"client_options: redis-py's RedisCluster does not pass option {option!r} "
            "on to its connections"
        )
    if flavour == "async":
        init = _redis_module("redis.asyncio.cluster").RedisCluster.__init__
        if option not in inspect.signature(init).parameters:
            raise TypeError(
                f"client_options: redis-py's asyncio RedisCluster takes no option {option!r}"
            )


def _option_kind(option: str, classes: Sequence[Any]) -> str | None:
    """What a redis-py option takes, from the signatures of ``classes`` (and their
    bases): ``"bool"`` where the default is a bool, ``"number"`` where it is a
    number, ``"mapping"`` and ``"callable"`` where the annotation says so; None
    when they do not tell."""
    if option in _MAPPING_OPTIONS:
        return "mapping"
    for cls in classes:
        for klass in cls.__mro__:
            init = vars(klass).get("__init__")
            if init is None:
                continue
            try:
                parameter = inspect.signature(init).parameters.get(option)
            except (TypeError, ValueError):  # pragma: no cover - a C signature
                continue
            if parameter is None or parameter.kind not in _NAMED_PARAMETERS:
                continue
            default, annotation = parameter.default, str(parameter.annotation)
            if isinstance(default, bool):
                return "bool"
            if isinstance(default, (int, float)):
                return "number"
            if "Mapping" in annotation:
                return "mapping"
            if "Callable" in annotation:
                return "callable"
    return None


_NAMED_PARAMETERS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def _check_value(name: str, option: str, value: object, kind: str | None) -> None:
    """``value`` is of the ``kind`` ``option`` takes (see ``_option_kind``)."""
    label = f"{name}[{option!r}]"
    if kind == "bool" and not isinstance(value, bool):
        raise TypeError(f"{label} must be a bool, not {type(value).__name__}")
    if kind == "number":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise TypeError(f"{label} must be a number, not {type(value).__name__}")
        if not math.isfinite(value):
            raise ValueError(f"{label} must be a finite number, got {value!r}")
    if kind == "callable" and value is not None and not callable(value):
        raise TypeError(f"{label} must be callable, not {type(value).__name__}")
    if option == "client_name" and value is not None:
        # CLIENT SETNAME refuses spaces and unprintable characters: every
        # connection would fail to open.
        if not isinstance(value, str):
            raise TypeError(f"{label} must be a str, not {type(value).__name__}")
        if not value.isprintable() or " " in value:
            raise ValueError(f"{label} may not contain spaces or control characters")
    if option == "socket_type" and value not in (0, socket.SOCK_STREAM):
        raise ValueError(f"{label} must be 0 or socket.SOCK_STREAM, got {value!r}")
    if kind == "mapping" and value is not None:
        if not isinstance(value, Mapping):
            raise TypeError(f"{label} must be a dict, not {type(value).__name__}")
        if option == "socket_keepalive_options":  # setsockopt(level, int, int | bytes)
            for key, item in value.items():
                if not isinstance(key, int) or isinstance(key, bool):
                    raise TypeError(f"{label} keys must be socket option numbers, got {key!r}")
                if not isinstance(item, (int, bytes)) or isinstance(item, bool):
                    raise TypeError(f"{label} values must be ints or bytes, got {item!r}")


def _redis(
    url: str,
    scheme: str,
    options: dict[str, Any],
    flavour: Flavour,
    serializer: Serializer | str | None,
) -> Any:
    from cachewise.backends._redis import AsyncRedisBackend, RedisBackend

    target = _Target(url, scheme, options)
    cluster = target.kind == "cluster"
    secret = options.get("secret")
    if serializer is None:
        serializer = options.get("serializer", "json")
    if isinstance(serializer, str):
        if serializer == "pickle" and secret is None:
            raise ValueError(
                "serializer=pickle needs a secret, which does not belong in a URL: "
                "pass secret=... (or serializer=PickleSerializer(secret)) to from_url"
            )
        if secret is not None and serializer != "pickle":
            raise ValueError("secret= is only for serializer='pickle'")
        serializer = make_serializer(serializer, secret)
    elif not isinstance(serializer, Serializer):
        raise TypeError(
            f"serializer must be a name (json, msgpack, pickle) or a Serializer, "
            f"not {type(serializer).__name__}"
        )
    elif secret is not None:
        raise ValueError("secret= is only for serializer='pickle', not a Serializer object")
    compress = options.get("compress", "none")
    codec = Codec(
        serializer,
        compress=None if compress in ("none", None) else compress,
        compress_threshold=_int_option(
            "compress_threshold",
            options.get("compress_threshold", DEFAULT_COMPRESS_THRESHOLD),
            low=0,
        ),
        max_value_bytes=_int_option(
            "max_value_bytes",
            options.get("max_value_bytes", DEFAULT_MAX_VALUE_BYTES),
            low=1,
            high=MAX_VALUE_BYTES,
        ),
    )
    timeouts: dict[str, Any] = {
        "socket_timeout": _seconds_option(
            "socket_timeout", options.get("socket_timeout", DEFAULT_SOCKET_TIMEOUT)
        ),
        "socket_connect_timeout": _seconds_option(
            "connect_timeout", options.get("connect_timeout", DEFAULT_CONNECT_TIMEOUT)
        ),
    }
    lease_options: dict[str, Any] = {}
    for name in ("lock_timeout", "wait_timeout", "tag_ttl"):
        if name in options:
            lease_options[name] = _seconds_option(name, options[name])
    breaker = options.get("breaker", "on")
    if isinstance(breaker, bool):
        breaker = "on" if breaker else "off"
    breaker = _choice_option("breaker", breaker, ("on", "off"))
    # (Checked for the sync flavour too, which does not use them: a URL means the
    # same for both.)
    max_connections = _int_option(
        "max_connections",
        options.get("max_connections", DEFAULT_MAX_CONNECTIONS),
        low=1,
        high=MAX_CONNECTIONS,
    )
    pool_timeout = _seconds_option(
        "pool_timeout", options.get("pool_timeout", DEFAULT_POOL_TIMEOUT)
    )
    # Invalidations get a longer timeout of their own (a second client): one that
    # gives up leaves the old value for every other process to read, and under
    # load a short timeout fires on a busy client, not on a dead server.
    invalidation_timeout = _seconds_option(
        "invalidation_timeout", options.get("invalidation_timeout", DEFAULT_INVALIDATION_TIMEOUT)
    )
    client_options = _check_client_options(target, options.get("client_options"), flavour)
    sentinel_options = _check_client_options(
        target, options.get("sentinel_options"), "sync", "sentinel_options"
    )
    name = redact(urlunsplit((scheme, urlsplit(url).netloc, urlsplit(url).path, "", "")))
    identity = target.identity()
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
    # Connecting too: a new connection after a restart, on a busy client.
    slow = {"socket_timeout": invalidation_timeout, "socket_connect_timeout": invalidation_timeout}

    def sync_client(socket_options: dict[str, float]) -> Any:
        retry = _redis_module("redis.retry").Retry(no_backoff, retries, (connection_error,))
        kwargs = {"retry": retry, **socket_options, **client_options}
        if target.kind == "sentinel":
            manager = _redis_module("redis.sentinel").Sentinel(
                target.sentinels,
                sentinel_kwargs=_sentinel_kwargs(target, socket_options, sentinel_options),
            )
            return manager.master_for(
                target.service,
                connection_class=connection_classes()[("sync", target.tls)],
                watch=master_watch(identity),  # (see _failover: followed failovers)
                **_master_kwargs(target),
                **kwargs,
            )
        module = _redis_module("redis.cluster" if cluster else "redis")
        factory = module.RedisCluster if cluster else module.Redis
        if cluster:  # it connects when built: see _LazyClusterClient
            return _LazyClusterClient(
                lambda: factory.from_url(target.client_url, **kwargs), socket_options
            )
        return factory.from_url(target.client_url, **kwargs)

    if flavour == "sync":
        backend: Any = RedisBackend(
            sync_client(timeouts),
            codec=codec,
            owns_client=True,
            invalidation_client=sync_client(slow),
            lease_scope=identity,
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
            return module.RedisCluster.from_url(
                target.client_url, retry=retry, **timeouts, **client_options
            )
        # redis.asyncio's default pool raises once 100 connections are in use;
        # with many tasks, queue for a free one instead (for pool_timeout: under
        # load that wait is queueing, not the server being slow), without its
        # BlockingConnectionPool's cost on every call (see _pool).
        kwargs = {
            "max_connections": max_connections,
            "timeout": pool_timeout,
            "retry": retry,
            **timeouts,
            **client_options,
        }
        if target.kind == "sentinel":
            # A Sentinel manager of this loop's own (its connections to the
            # Sentinels belong to the loop too), and redis-py's Sentinel pool
            # made bounded like the plain one.
            sentinel = _redis_module("redis.asyncio.sentinel")
            manager = sentinel.Sentinel(
                target.sentinels,
                sentinel_kwargs=_sentinel_kwargs(
                    target, timeouts, sentinel_options, "redis.asyncio.retry"
                ),
            )
            pool = bounded_pool_class(sentinel.SentinelConnectionPool)(
                service_name=target.service,
                sentinel_manager=manager,
                connection_class=connection_classes()[("async", target.tls)],
                watch=master_watch(identity),
                **_master_kwargs(target),
                **kwargs,
            )
        else:
            pool = bounded_pool_class().from_url(target.client_url, **kwargs)
        pool.gate = gate[0]
        return module.Redis.from_pool(pool)  # the client owns (and closes) the pool

    # Invalidations go through a sync client on threads of the backend's own:
    # see AsyncRedisBackend (a busy event loop must not make a delete give up).
    backend = AsyncRedisBackend(
        async_client(),
        codec=codec,
        owns_client=True,
        invalidation_client=sync_client(slow),
        client_factory=async_client,  # a fresh client for each new event loop
        lease_scope=identity,
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


def _master_kwargs(target: _Target) -> dict[str, Any]:
    """The master's database and credentials (from the URL), for a Sentinel pool."""
    kwargs: dict[str, Any] = {"db": target.database}
    if target.username is not None:
        kwargs["username"] = target.username
    if target.password is not None:
        kwargs["password"] = target.password
    return kwargs


def _sentinel_kwargs(
    target: _Target,
    socket_options: dict[str, float],
    options: dict[str, Any],
    retry_module: str = "redis.retry",
) -> dict[str, Any]:
    """How to reach the Sentinels themselves: our timeouts, TLS as the scheme says,
    and ``sentinel_options`` (their own password, for one). Never retried: an
    unreachable Sentinel is skipped for the next one."""
    kwargs: dict[str, Any] = dict(socket_options)
    no_backoff = _redis_module("redis.backoff").NoBackoff()
    kwargs["retry"] = _redis_module(retry_module).Retry(no_backoff, 0)
    if target.tls:
        kwargs["ssl"] = True
    kwargs.update(options)
    return kwargs


def _pool_gate(ref: weakref.ref[AsyncCircuitBreaker]) -> Callable[[], None]:
    def gate() -> None:
        breaker = ref()
        if breaker is not None:
            breaker.admit_queued()

    return gate


def backend_from_url(
    url: str,
    flavour: Flavour = "sync",
    *,
    serializer: Serializer | str | None = None,
    **options: Any,
) -> Any:
    """The backend a URL names, for a ``Cache`` (``"sync"``) or an ``AsyncCache``.
    ``options`` are the URL's query options as keywords (they win over the query),
    plus ``secret``, ``client_options`` and ``sentinel_options``."""
    scheme, query = _parse(url)
    merged = _merged(url, scheme, query, options)
    if scheme == "memory":
        if serializer is not None:
            raise ValueError("memory:// stores values by reference; it takes no serializer")
        return _memory(url, merged)
    return _redis(url, scheme, merged, flavour, serializer)


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


def server_identity(url: str, **options: Any) -> str | None:
    """Which shared server ``url`` names (scheme, host, port, database; a socket's
    path; a Sentinel service and its Sentinels; no options, no password), or
    ``None`` for a process-local backend. Caches of one process on one server and
    namespace share their held invalidations.

    ``options`` are ``from_url``'s backend keywords: they win over the query here
    as they do when the backend is built (``unix://...`` with ``db=2`` is database
    2), so the identity is the one the backend's lease scope has."""
    scheme, query = _parse(url)
    if scheme == "memory":
        return None
    return _Target(url, scheme, _merged(url, scheme, query, options)).identity()


def _identity(base: str, host: str | None, port: int | None, database: int | None) -> str:
    """One spelling per server: the host as ``_host_identity`` spells it (the
    spellings of one address merged, never two addresses), the default port and
    database filled in; ``database`` None for a cluster."""
    host = _host_identity(host or "localhost")
    kind = "single" if database is not None else "cluster"
    tail = f"/{database}" if database is not None else ""
    return f"{base}:{kind}://{host}:{port or 6379}{tail}"


def _unix_identity(base: str, path: str, database: int) -> str:
    """A Unix socket's identity: its resolved path (two spellings of one socket are
    one server, two sockets two servers, whatever their paths share)."""
    return f"{base}:unix://{os.path.realpath(path)}/{database}"


def _sentinel_identity(
    base: str, service: str, sentinels: Sequence[tuple[str, int]], database: int
) -> str:
    """A Sentinel service's identity: its name and the set of Sentinels that
    manage it (in any order; each address spelled as ``_host_identity`` does). Not
    its current master's address, which changes on failover while the data it
    serves stays the service's. A service named alike under other Sentinels is
    another deployment (every default setup calls its master ``mymaster``)."""
    addresses = sorted({f"{_host_identity(host)}:{port}" for host, port in sentinels})
    return f"{base}:sentinel://{','.join(addresses)}/{quote(service, safe='')}/{database}"


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
    base = "rediss" if tls else "redis"
    if kwargs.get("path"):  # a Unix socket
        return _unix_identity(base, str(kwargs["path"]), database)
    manager = getattr(pool, "sentinel_manager", None)
    service = getattr(pool, "service_name", None)
    if manager is not None and isinstance(service, str):  # a Sentinel-managed master
        sentinels = []
        for sentinel in getattr(manager, "sentinels", ()):
            options = getattr(getattr(sentinel, "connection_pool", None), "connection_kwargs", {})
            sentinels.append((str(options.get("host")), int(options.get("port", 6379))))
        return _sentinel_identity(base, service, sentinels, database)
    host, port = kwargs.get("host"), kwargs.get("port")
    if isinstance(port, str) and port.isascii() and port.isdigit():
        port = int(port)  # redis-py takes "6379" too
    if not isinstance(host, str) or not isinstance(port, (int, type(None))):
        return None
    return _identity(base, host, port, database)


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
