"""Which server a URL or a client names: one spelling per shared server, so that
caches of one process on one server and namespace share their held
invalidations, and a lease's scope is the server's. Also ``redact``, for logs."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Sequence
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit


def host_identity(base: str, host: str | None, port: int | None, database: int | None) -> str:
    """One spelling per server: the host as ``_host`` spells it (the spellings of
    one address merged, never two addresses), the default port and database
    filled in; ``database`` None for a cluster."""
    host = _host(host or "localhost")
    kind = "single" if database is not None else "cluster"
    tail = f"/{database}" if database is not None else ""
    return f"{base}:{kind}://{host}:{port or 6379}{tail}"


def unix_identity(base: str, path: str, database: int) -> str:
    """A Unix socket's identity: its resolved path (two spellings of one socket are
    one server, two sockets two servers, whatever their paths share)."""
    return f"{base}:unix://{os.path.realpath(path)}/{database}"


def sentinel_identity(
    base: str, service: str, sentinels: Sequence[tuple[str, int]], database: int
) -> str:
    """A Sentinel service's identity: its name and the set of Sentinels that
    manage it (in any order; each address spelled as ``_host`` does). Not its
    current master's address, which changes on failover while the data it serves
    stays the service's. A service named alike under other Sentinels is another
    deployment (every default setup calls its master ``mymaster``)."""
    addresses = sorted({f"{_host(host)}:{port}" for host, port in sentinels})
    return f"{base}:sentinel://{','.join(addresses)}/{quote(service, safe='')}/{database}"


def _host(host: str) -> str:
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
        return unix_identity(base, str(kwargs["path"]), database)
    manager = getattr(pool, "sentinel_manager", None)
    service = getattr(pool, "service_name", None)
    if manager is not None and isinstance(service, str):  # a Sentinel-managed master
        sentinels = []
        for sentinel in getattr(manager, "sentinels", ()):
            options = getattr(getattr(sentinel, "connection_pool", None), "connection_kwargs", {})
            sentinels.append((str(options.get("host")), int(options.get("port", 6379))))
        return sentinel_identity(base, service, sentinels, database)
    host, port = kwargs.get("host"), kwargs.get("port")
    if isinstance(port, str) and port.isascii() and port.isdigit():
        port = int(port)  # redis-py takes "6379" too
    if not isinstance(host, str) or not isinstance(port, (int, type(None))):
        return None
    return host_identity(base, host, port, database)


def redact(url: str) -> str:
    """``url`` with any password replaced, for logs and reprs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(":" + parts.password + "@", ":***@", 1)
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(parse_qsl(parts.query)), ""))
