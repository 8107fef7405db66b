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
breaker wraps the backend), ``max_connections`` (each client's pool, default 50:
tasks and threads queue for a free connection), ``pool_timeout`` (5 s: how long a call queues for a
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

The work is split in three: ``_options`` parses a URL and its keywords into one
typed, frozen options object (every default and every check in one place, the
same for both flavours); ``_build`` turns it into a sync or an async backend;
``_identity`` names the server a URL or a client points at.
"""

from __future__ import annotations

from typing import Any

from cachewise._url._build import build_async, build_memory, build_sync
from cachewise._url._checks import Flavour
from cachewise._url._identity import client_identity, redact
from cachewise._url._options import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_INVALIDATION_TIMEOUT,
    DEFAULT_SOCKET_TIMEOUT,
    MemoryOptions,
    RedisOptions,
    Target,
    merged_options,
    parse,
    parse_target,
    split_options,
    split_url,
)
from cachewise.serialization import Serializer

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_INVALIDATION_TIMEOUT",
    "DEFAULT_SOCKET_TIMEOUT",
    "Flavour",
    "MemoryOptions",
    "RedisOptions",
    "Target",
    "backend_from_url",
    "client_identity",
    "parse",
    "redact",
    "server_identity",
    "split_options",
]


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
    parsed = parse(url, options, serializer)
    if isinstance(parsed, MemoryOptions):
        return build_memory(parsed)
    return build_sync(parsed) if flavour == "sync" else build_async(parsed)


def server_identity(url: str, **options: Any) -> str | None:
    """Which shared server ``url`` names (scheme, host, port, database; a socket's
    path; a Sentinel service and its Sentinels; no options, no password), or
    ``None`` for a process-local backend. Caches of one process on one server and
    namespace share their held invalidations.

    ``options`` are ``from_url``'s backend keywords: they win over the query here
    as they do when the backend is built (``unix://...`` with ``db=2`` is database
    2), so the identity is the one the backend's lease scope has."""
    scheme, query = split_url(url)
    if scheme == "memory":
        return None
    return parse_target(url, scheme, merged_options(url, scheme, query, options)).identity()
