"""Parsing: a ``from_url`` URL and its keywords into one typed, frozen options
object, ``MemoryOptions`` or ``RedisOptions``. Every default is a field's default
and every check that needs no redis-py is made here, before anything is built;
nothing here depends on the flavour (``_build`` turns the options into a sync or
an async backend)."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from cachewise._url._identity import host_identity, redact, sentinel_identity, unix_identity
from cachewise.backends._memory import DEFAULT_MAX_BYTES, DEFAULT_MAX_ENTRIES

# Each client's pool size, and how long a call queues for one of its connections.
from cachewise.backends._pool import DEFAULT_MAX_CONNECTIONS, DEFAULT_POOL_TIMEOUT
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
Kind = Literal["single", "unix", "cluster", "sentinel"]

#: Default per-operation and connect timeouts for clients cachewise creates.
DEFAULT_SOCKET_TIMEOUT = 0.25
DEFAULT_CONNECT_TIMEOUT = 0.25
#: The per-operation timeout of invalidations (deletes, tag invalidations).
DEFAULT_INVALIDATION_TIMEOUT = 0.25
#: Where a Sentinel listens unless its address says otherwise.
DEFAULT_SENTINEL_PORT = 26379
#: The serializer unless a query or a keyword names one.
DEFAULT_SERIALIZER = "json"

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
# Redis numbers its databases 0 to `databases - 1` (a signed int in its config).
_MAX_DATABASE = 2**31 - 1

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

#: Options that name credentials: given both in the URL and in client_options,
#: one of them would be dropped (or redis-py would refuse the pair).
_CREDENTIAL_OPTIONS = ("username", "password", "credential_provider")

_NO_OPTIONS: Mapping[str, Any] = MappingProxyType({})


# -- the options objects ----------------------------------------------------------------


@dataclass(frozen=True)
class MemoryOptions:
    """A ``memory://`` URL's options."""

    max_entries: int = DEFAULT_MAX_ENTRIES
    max_bytes: int = DEFAULT_MAX_BYTES


@dataclass(frozen=True)
class Target:
    """Where a Redis URL points, credentials included: what clients connect to."""

    kind: Kind
    tls: bool
    database: int = 0
    #: What redis-py's ``from_url`` reads (single servers, sockets, clusters).
    client_url: str = ""
    #: A Unix socket's path.
    path: str = ""
    #: A Sentinel-managed master's service name and its Sentinels.
    service: str = ""
    sentinels: tuple[tuple[str, int], ...] = ()
    username: str | None = None
    password: str | None = None

    def identity(self) -> str:
        """This target's ``server_identity``."""
        base = "rediss" if self.tls else "redis"
        if self.kind == "unix":
            return unix_identity(base, self.path, self.database)
        if self.kind == "sentinel":
            return sentinel_identity(base, self.service, self.sentinels, self.database)
        parts = urlsplit(self.client_url)
        return host_identity(
            base, parts.hostname, parts.port, None if self.kind == "cluster" else self.database
        )


@dataclass(frozen=True)
class RedisOptions:
    """A Redis URL's options (any Redis scheme), checked; the same for both
    flavours. ``None`` for a lease option is the backend's default. Whether
    redis-py takes each of ``client_options`` depends on the classes a flavour
    builds: its builder checks that (``_checks``) before it builds any."""

    target: Target
    #: The URL without its query or password: the circuit breaker's name.
    name: str
    codec: Codec = field(default_factory=Codec)
    socket_timeout: float = DEFAULT_SOCKET_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    # Invalidations get a longer timeout of their own (a second client): one that
    # gives up leaves the old value for every other process to read, and under
    # load a short timeout fires on a busy client, not on a dead server.
    invalidation_timeout: float = DEFAULT_INVALIDATION_TIMEOUT
    lock_timeout: float | None = None
    wait_timeout: float | None = None
    tag_ttl: float | None = None
    breaker: bool = True
    # (The sync flavour does not use the pool's options, but checks them: a URL
    # means the same for both.)
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    pool_timeout: float = DEFAULT_POOL_TIMEOUT
    client_options: Mapping[str, Any] = field(default_factory=lambda: _NO_OPTIONS)
    sentinel_options: Mapping[str, Any] = field(default_factory=lambda: _NO_OPTIONS)

    def lease_options(self) -> dict[str, float]:
        """The lease options given, as the backends' keywords."""
        given = {
            "lock_timeout": self.lock_timeout,
            "wait_timeout": self.wait_timeout,
            "tag_ttl": self.tag_ttl,
        }
        return {name: value for name, value in given.items() if value is not None}


# -- parsing ------------------------------------------------------------------------------


def parse(
    url: str, keywords: Mapping[str, Any], serializer: Serializer | str | None = None
) -> MemoryOptions | RedisOptions:
    """``url``'s options, the ``keywords`` winning over its query; ``serializer``
    is ``from_url``'s own keyword (a name or a ``Serializer``)."""
    scheme, query = split_url(url)
    options = merged_options(url, scheme, query, keywords)
    if scheme == "memory":
        if serializer is not None:
            raise ValueError("memory:// stores values by reference; it takes no serializer")
        return _memory(url, options)
    return _redis(url, scheme, options, serializer)


def split_url(url: str) -> tuple[str, dict[str, str]]:
    """``url``'s scheme (lowercase, one of ``SCHEMES``) and query options."""
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
    scheme, _ = split_url(url)
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
            scheme, _ = split_url(url)
            raise TypeError(
                f"from_url() got an unexpected keyword argument {name!r}; it takes the "
                f"cache's options ({', '.join(sorted(cache_options))}) and, for {scheme}:// "
                f"URLs, serializer and {', '.join(n for n in backend_names if n != 'serializer')}"
            )
    return backend, cache


def merged_options(
    url: str, scheme: str, query: dict[str, str], keywords: Mapping[str, Any]
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


def _memory(url: str, options: dict[str, Any]) -> MemoryOptions:
    parts = urlsplit(url)
    if parts.netloc or parts.path not in ("", "/"):
        raise ValueError(f"memory:// URLs take no host or path, got {url!r}")
    # (Their bounds are MemoryBackend's to check.)
    return MemoryOptions(**{n: _int_option(n, options[n]) for n in _MEMORY_OPTIONS if n in options})


def _redis(
    url: str, scheme: str, options: dict[str, Any], serializer: Serializer | str | None
) -> RedisOptions:
    target = parse_target(url, scheme, options)
    codec = _codec(options, serializer)
    # In this order, as they have always been checked: with two bad options, the
    # error names the same one.
    given = {name: read(name, options[name]) for name, read in _READERS.items() if name in options}
    parts = urlsplit(url)
    return RedisOptions(
        target=target,
        name=redact(urlunsplit((scheme, parts.netloc, parts.path, "", ""))),
        codec=codec,
        client_options=_client_options(target, options.get("client_options"), "client_options"),
        sentinel_options=_client_options(
            target, options.get("sentinel_options"), "sentinel_options"
        ),
        **given,
    )


def _codec(options: dict[str, Any], serializer: Serializer | str | None) -> Codec:
    """The serializer (``from_url``'s keyword, else the query's or keyword's
    name), compression and size limit."""
    secret = options.get("secret")
    if serializer is None:
        serializer = options.get("serializer", DEFAULT_SERIALIZER)
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
    return Codec(
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


def parse_target(url: str, scheme: str, options: Mapping[str, Any]) -> Target:
    """Where a Redis URL points (``options`` for a socket's ``db``)."""
    kind, tls = _kind(scheme)
    parts = urlsplit(url)
    if kind == "sentinel":
        return _sentinel_target(url, tls)
    if kind == "unix":
        if parts.hostname or parts.port:
            raise ValueError(
                f"unix:// URLs name a socket path, not a host: unix:///path/to/redis.sock, "
                f"got {url!r}"
            )
        if parts.path in ("", "/"):
            raise ValueError(f"unix:// URLs need a socket path, got {url!r}")
        database = _int_option("db", options.get("db", 0), low=0, high=_MAX_DATABASE)
        username, password = _credentials(parts.username, parts.password)
        return Target(
            kind,
            tls,
            database,
            # (By hand: urlunsplit drops the "//" of an empty host.)
            client_url=f"unix://{parts.netloc}{parts.path}?db={database}",
            path=unquote(parts.path),
            username=username,
            password=password,
        )
    if not parts.hostname:
        raise ValueError(f"{scheme}:// URLs need a host, got {url!r}")
    username, password = _credentials(parts.username, parts.password)
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"invalid port in {url!r}") from None
    if port == 0:  # redis-py would read it as "no port" and connect to 6379
        raise ValueError(f"invalid port in {url!r}: ports are 1 to 65535")
    cluster = kind == "cluster"
    database = _database(url, parts.path, cluster)
    base = "rediss" if tls else "redis"
    client_url = urlunsplit((base, parts.netloc, "" if cluster else f"/{database}", "", ""))
    return Target(kind, tls, database, client_url=client_url, username=username, password=password)


def _credentials(username: str | None, password: str | None) -> tuple[str | None, str | None]:
    """A URL's user and password, as redis-py reads them (an empty user is none)."""
    return (
        unquote(username) if username else None,
        unquote(password) if password is not None else None,
    )


def _sentinel_target(url: str, tls: bool) -> Target:
    """``[[user:]password@]host[:port][,host[:port]...]/service[/db]``."""
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) if colon and user else None
        password = unquote(secret if colon else user)
    sentinels = []
    for item in hosts.split(","):
        try:
            probe = urlsplit("//" + item)
            host, port = probe.hostname, probe.port
        except ValueError:
            raise ValueError(f"invalid Sentinel address {item!r} in {url!r}") from None
        if not host or port == 0:
            raise ValueError(f"invalid Sentinel address {item!r} in {url!r}")
        sentinels.append((host, port or DEFAULT_SENTINEL_PORT))
    segments = parts.path.split("/")[1:] if parts.path.startswith("/") else []
    if not segments or not segments[0] or len(segments) > 2:
        raise ValueError(
            f"{parts.scheme}:// URLs name the service: "
            f"{parts.scheme}://host:port[,host:port]/service_name[/db], got {url!r}"
        )
    return Target(
        "sentinel",
        tls,
        _database(url, "/" + (segments[1] if len(segments) > 1 else ""), False),
        service=unquote(segments[0]),
        sentinels=tuple(sentinels),
        username=username,
        password=password,
    )


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


def _client_options(target: Target, options: object, name: str) -> Mapping[str, Any]:
    """``client_options`` (or ``sentinel_options``) as far as no redis-py is needed:
    a dict of str names, none that cachewise sets itself, no credentials the URL
    gives already. What redis-py takes is checked when a flavour is built
    (``_checks``)."""
    if options is None:
        return _NO_OPTIONS
    if not isinstance(options, Mapping):
        raise TypeError(f"{name} must be a dict of redis-py options, not {type(options).__name__}")
    for option in options:
        if not isinstance(option, str):
            raise TypeError(f"{name} keys must be str, got {option!r}")
        reason = _RESERVED_CLIENT_OPTIONS.get(option)
        if reason is not None:
            raise ValueError(f"{name} may not set {option!r}: {reason}")
        if name == "client_options" and option in _CREDENTIAL_OPTIONS:
            _check_credentials(target, option)
    return MappingProxyType(dict(options))


def _check_credentials(target: Target, option: str) -> None:
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


# -- values -----------------------------------------------------------------------------


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


def _switch_option(name: str, raw: object) -> bool:
    """``on`` or ``off`` (a bool as a keyword)."""
    if isinstance(raw, bool):
        return raw
    if not isinstance(raw, str) or raw not in ("on", "off"):
        raise ValueError(f"option {name} must be one of on, off, got {raw!r}")
    return raw == "on"


def _connections_option(name: str, raw: object) -> int:
    return _int_option(name, raw, low=1, high=MAX_CONNECTIONS)


#: How each of RedisOptions' plain fields is read from a query or a keyword, in
#: the order they are checked.
_READERS: dict[str, Callable[[str, object], Any]] = {
    "socket_timeout": _seconds_option,
    "connect_timeout": _seconds_option,
    "lock_timeout": _seconds_option,
    "wait_timeout": _seconds_option,
    "tag_ttl": _seconds_option,
    "breaker": _switch_option,
    "max_connections": _connections_option,
    "pool_timeout": _seconds_option,
    "invalidation_timeout": _seconds_option,
}
