"""What both Redis backends share: options, key layout, encoding, reply parsing.

Both flavours speak one wire format (``_core.envelope``) and one key layout
(``_lua``), so a sync and an async cache on one namespace read each other's
entries. Nothing here does I/O: ``_async`` (hand-written) and ``_sync``
(generated from it) make the calls.

Leases (Facebook's memcache paper, NSDI 2013): on a miss, exactly one caller across
all processes is granted a lease on the key (``SET NX PX`` with an owner token, in
the same script as the read, so a miss costs one round trip). Others wait on a list
the holder pushes to when it is done (``BLPOP``, a few commands per second at most)
and re-read. The holder writes only while its lease is current; ``delete`` and
``set`` drop the lease, so a load that read old data can never write it back.
"""

from __future__ import annotations

import math
import os
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any

from cachewise import _forksafe
from cachewise._core import envelope
from cachewise._core.entry import Entry
from cachewise._core.policy import MAX_SECONDS
from cachewise._core.readflow import LeaseReply
from cachewise._url import client_identity
from cachewise.backends import _lua
from cachewise.backends._notify import CHANNEL, Notifier
from cachewise.serialization import Codec

DEFAULT_LOCK_TIMEOUT = 5.0
#: How long a waiter sleeps before it reads again when lease notifications are not
#: available (the listener is reconnecting, or the backend has no sync client).
DEFAULT_POLL_INTERVAL = 0.15
#: Server TTL = (stale_until - written_at) + this margin, so Redis keeps an entry
#: a little past the point the front end stops serving it, never less.
DEFAULT_MARGIN = 1.0
#: Lifetime of a tag's version key, refreshed by every invalidation. A tagged
#: entry's server TTL is capped at it, so no entry outlives the record of an
#: invalidation it predates (else, the record gone, the entry would look valid).
DEFAULT_TAG_TTL = 30 * 24 * 3600.0
#: Threads that send an ``AsyncRedisBackend``'s invalidations on a sync client:
#: one drains the queue of deletes, a batch per round trip; one for the rest.
INVALIDATION_THREADS = 2


def _escape(text: str) -> str:
    """``text`` with ``%`` and ``}`` percent-encoded: reversible (so distinct keys
    keep distinct names), and no ``}`` left to end a hash tag early. A key starting
    with ``}`` would otherwise make the tag ``{}``, empty, so Redis Cluster would
    hash the whole name: the value and its lease in different slots, and every
    lease script failing with CROSSSLOT (break 10 of issue 9)."""
    if "%" in text or "}" in text:
        return text.replace("%", "%25").replace("}", "%7D")
    return text


def value_key(key: str) -> str:
    """The Redis key of a logical key: its hash tag is the whole (escaped) key."""
    if not key:
        raise ValueError("Redis backends need non-empty keys")
    return "{" + _escape(key) + "}"


def _keys(key: str) -> tuple[str, str, str]:
    base = value_key(key)
    return base, base + ":lease", base + ":waiters"


#: How long a delete's fence against a set that may still be on the wire lives:
#: longer than TCP keeps retransmitting a segment (about 15 minutes by default).
FENCE_MS = 3_600_000

# Where _write_args puts what _unanswered and _fenced read back: the operation,
# the key, and the set's issue time (or the delete's fence).
_OP, _KEY, _STAMP = 5, 9, 10


class _FenceTable(dict[str, int]):
    """Unanswered sets of one server: key -> issue time (µs). Pruned of entries
    past a fence's lifetime whenever it has doubled since the last pruning (so
    an outage's many entries cost amortized O(1) each, not a scan per set)."""

    prune_at = 10_000


# One table of unanswered sets per Redis server (see _RedisCommon._fences).
# Process-wide on purpose, not per CacheGroup: a set this process left on the
# wire can land after a delete from ANY cache of this process on that server, so
# every delete must fence what every backend of the process has unanswered there.
# Split by group, a delete in one group would miss another group's late set.
_fence_tables: dict[str, _FenceTable] = {}
_fence_tables_lock = threading.Lock()


def _fence_table(scope: str | None) -> _FenceTable:
    if scope is None:
        return _FenceTable()
    with _fence_tables_lock:
        return _fence_tables.setdefault(scope, _FenceTable())


def tag_key(tag: str) -> str:
    """The Redis key holding a tag's current version (its own hash slot)."""
    if not tag:
        raise ValueError("tags must be non-empty")
    return "{" + _escape(tag) + "}:tag"


class _Stamp(tuple[bytes, ...]):
    """Tag versions as read before a load, and when (``time.monotonic()``, taken
    before the read was sent): ``_px`` caps the entry's lifetime from then."""

    taken_at: float

    def __new__(cls, versions: tuple[bytes, ...], taken_at: float) -> _Stamp:
        stamp = super().__new__(cls, versions)
        stamp.taken_at = taken_at
        return stamp


def _unescape(text: str) -> str:
    """The inverse of ``_escape``."""
    if "%" in text:
        return text.replace("%7D", "}").replace("%25", "%")
    return text


def _is_value(name: bytes) -> bool:
    # Every unescaped "}" in a name is the end of its hash tag: a value's name
    # ends there, helper keys carry a suffix after it.
    return name.endswith(b"}")


def _is_lease(name: bytes) -> bool:
    return name.endswith(b"}:lease")


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


#: The longest wait (lease, wait and poll timeouts): a thread cannot block for
#: much longer (threading.TIMEOUT_MAX), and no load should hold a lease that long.
MAX_WAIT_SECONDS = 365 * 24 * 3600.0


def _check_seconds(name: str, value: float, limit: float = MAX_SECONDS) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    if value > limit:  # Redis takes milliseconds below 2**63; threads wait less
        raise ValueError(f"{name} must be at most {limit:g} seconds, got {value!r}")
    return float(value)


class _RedisCommon:
    """Options, key layout, encoding and reply parsing shared by both flavours."""

    def __init__(
        self,
        client: Any,
        *,
        codec: Codec | None,
        lock_timeout: float,
        wait_timeout: float | None,
        poll_interval: float,
        margin: float,
        owns_client: bool,
        tag_ttl: float = DEFAULT_TAG_TTL,
        invalidation_client: Any = None,
        lease_scope: object = None,
    ) -> None:
        if codec is not None and not isinstance(codec, Codec):
            raise TypeError("codec must be a cachewise.serialization.Codec")
        self._client = client
        # Invalidations may go through a client with a longer timeout: a delete
        # that gives up leaves the old value for every other process to read.
        self._writer = invalidation_client if invalidation_client is not None else client
        self.codec = codec or Codec()
        self.lock_timeout = _check_seconds("lock_timeout", lock_timeout, MAX_WAIT_SECONDS)
        # Waiters outlast the lease, so a dead holder is replaced before anyone
        # gives up and loads on its own.
        self.wait_timeout = (
            2.0 * self.lock_timeout
            if wait_timeout is None
            else _check_seconds("wait_timeout", wait_timeout, MAX_WAIT_SECONDS)
        )
        self.poll_interval = _check_seconds("poll_interval", poll_interval, MAX_WAIT_SECONDS)
        self.margin = _check_seconds("margin", margin)
        self.tag_ttl = _check_seconds("tag_ttl", tag_ttl)
        self._tag_ttl_ms = int(self.tag_ttl * 1000)
        self._owns_client = owns_client
        self._lease_ms = max(1, int(self.lock_timeout * 1000))
        # Lease-release notifications (see _notify): built on the first wait.
        self._notify: Notifier | None = None
        self._notify_unavailable = False
        self._notify_lock = threading.Lock()
        self._scope = lease_scope
        _forksafe.register(self)
        self._read_sha = _lua.sha1(_lua.READ)
        self._set_leased_sha = _lua.sha1(_lua.SET_LEASED)
        self._release_sha = _lua.sha1(_lua.RELEASE)
        self._write_sha = _lua.sha1(_lua.WRITE)
        self._decode_errors = 0
        # Keys whose set got no answer (timed out, cancelled): the set may land
        # later, after a delete. The next delete of such a key leaves a fence at
        # the set's issue time (see _lua.WRITE). key -> issue time (µs). Shared by
        # the backends of one server in this process: the caches on it share their
        # held invalidations, and whichever settles one must fence it.
        self._fence_table: _FenceTable | None = None  # (see _fences; found lazily)

    def _fork_locks(self) -> list[Any]:
        # redis-py's sync pools (see _forksafe): no thread may be resetting one, or
        # hold its connection lock, when the process forks. (A child resets an
        # inherited pool under _fork_lock, and reset() takes the old _lock first:
        # held by a parent thread at the fork, it would never be released.) The
        # order is redis-py's own: _fork_lock, then _lock.
        clients = [self._client, self._writer, self._listen_client()]
        locks: list[Any] = []
        for pool in _sync_pools(clients):
            locks += [pool._fork_lock, pool._lock]
        return locks

    def _after_fork_child(self) -> None:
        # The listener thread is the parent's; a new one starts on the first wait
        # (redis-py gives the child fresh connections: its pools check the pid).
        self._notify = None
        self._notify_lock = threading.Lock()

    @property
    def _fences(self) -> _FenceTable:
        # Found on first use: naming the server may build a lazy client (a cluster
        # URL's), which must not happen, nor fail, when the backend is made.
        if self._fence_table is None:
            try:
                scope = self.lease_scope
            except Exception:
                scope = None
            self._fence_table = _fence_table(scope if isinstance(scope, str) else None)
        return self._fence_table

    @property
    def lease_scope(self) -> object:
        """What names this server's leases for every cache of the process on it
        (``from_url`` passes the server's identity; else the client's address)."""
        if self._scope is not None:
            return self._scope
        # The same spelling from_url gives, so a cache on a client you built and
        # one from a URL see each other's leases (a cluster client: itself).
        identity = client_identity(self._client)
        return identity if identity is not None else self._client

    @property
    def client(self) -> Any:
        """The redis-py client in use."""
        return self._client

    @property
    def decode_errors(self) -> int:
        """Entries that failed to decode (garbage, unknown version, bad signature),
        each served as a miss."""
        return self._decode_errors

    @property
    def evictions(self) -> int:
        """Redis evicts on its own; nothing is counted here."""
        return 0

    def _decode(self, raw: object, key: str) -> Entry | None:
        if raw is None:
            return None
        try:
            return self.codec.decode(raw, key)  # type: ignore[arg-type]
        except envelope.DecodeError:
            self._decode_errors += 1
            return None

    def _px(self, entry: Entry) -> int:
        """The server TTL of a write, in ms; 0 if a tagged entry must not be written.

        A tagged entry must never outlive the record of an invalidation its stamp
        predates: once that record expires its version reads as "never
        invalidated", and an entry stamped before it would be valid again. The
        record of an invalidation after the stamp lives ``tag_ttl`` from then, so
        the entry may live at most ``tag_ttl`` from its stamp, not from its write:
        a load that spanned an invalidation and wrote (confirmed or not) would
        otherwise outlive the record and come back as a hit.
        """
        lifetime = max(entry.stale_until - entry.written_at, 0.0) + self.margin
        px = max(1, math.ceil(lifetime * 1000))
        if not entry.tags:
            return px
        cap = self._tag_ttl_ms
        stamp = entry.stamp
        if isinstance(stamp, _Stamp):
            cap -= math.ceil((time.monotonic() - stamp.taken_at) * 1000) + 1
        return max(0, min(px, cap))

    # -- tags: pure helpers ---------------------------------------------------------

    @staticmethod
    def _versions(raw: Sequence[bytes | None]) -> tuple[bytes, ...]:
        # A tag with no record reads as b"", a version no stamp carries (stamps
        # create the record: _lua.STAMP), so its entries are misses.
        return tuple(v or b"" for v in raw)

    def _tags_match(self, entry: Entry, tags: Sequence[str], raw: Sequence[bytes | None]) -> bool:
        current = dict(zip(tags, self._versions(raw), strict=True))
        stamp = entry.stamp if isinstance(entry.stamp, tuple) else ()
        if len(stamp) != len(entry.tags):
            return False
        return all(current.get(t) == v for t, v in zip(entry.tags, stamp, strict=True))

    def _stamp_calls(self, tags: Sequence[str]) -> list[list[Any]]:
        return [[1, tag_key(tag), os.urandom(8), self._tag_ttl_ms] for tag in tags]

    def _invalidate_args(self, tags: Sequence[str]) -> list[tuple[str, bytes]]:
        # A fresh random version per invalidation: versions never repeat, so a
        # record that expired and came back can never match an old stamp.
        return [(tag_key(tag), os.urandom(8)) for tag in tags]

    @staticmethod
    def _tags_of(entries: Sequence[Entry | None]) -> list[str]:
        """Every tag the entries carry, once (one MGET checks them all)."""
        return list(dict.fromkeys(t for e in entries if e is not None for t in e.tags))

    def _keep_valid(
        self, entries: list[Entry | None], tags: list[str], raw: Sequence[bytes | None]
    ) -> list[Entry | None]:
        if not tags:
            return entries
        return [
            e if e is None or not e.tags or self._tags_match(e, tags, raw) else None
            for e in entries
        ]

    def _covers(self, entry: Entry, tags: Sequence[str]) -> bool:
        return set(entry.tags) <= set(tags)

    def _read_args(self, key: str, token: str, mode: str) -> list[Any]:
        value, lease, waiters = _keys(key)
        return [3, value, lease, waiters, token, self._lease_ms, mode]

    def _parse_read(self, reply: Any, key: str) -> LeaseReply:
        raw, granted, pttl = reply
        entry = self._decode(raw, key)
        return LeaseReply(
            entry, bool(granted), max(int(pttl), 0) / 1000.0, raw is not None and entry is None
        )

    def _write_args(self, key: str, entry: Entry | None) -> list[Any]:
        value, lease, waiters = _keys(key)
        # (Positions _OP, _KEY and _STAMP of these lists are read back later.)
        keys = [4, value, lease, waiters, value + ":fence"]
        if entry is not None:
            payload = self.codec.encode(entry, key)  # raises before any I/O: nothing half-written
            px = self._px(entry)
            if px > 0:
                issued = time.time_ns() // 1000
                return [*keys, "set", payload, px, CHANNEL, key, issued, FENCE_MS]
            # (Stamped longer than tag_ttl ago: it may not be stored; see _px.)
        fence = self._fences.get(key)
        return [*keys, "del", "", 0, CHANNEL, key, "" if fence is None else fence, FENCE_MS]

    def _unanswered(self, calls: list[list[Any]]) -> None:
        """Sets sent without an answer (a timeout, a cancellation): remember their
        issue times, for the fence of the next delete of each key."""
        fences = self._fences
        for args in calls:
            if args[_OP] == "set":
                key, issued = args[_KEY], args[_STAMP]
                fences[key] = max(fences.get(key, 0), issued)
        if len(fences) > fences.prune_at:
            # Past a fence's lifetime a late set cannot arrive any more.
            oldest = time.time_ns() // 1000 - FENCE_MS * 1000
            for key, issued in list(fences.items()):
                if issued < oldest:
                    fences.pop(key, None)
            fences.prune_at = max(_FenceTable.prune_at, 2 * len(fences))

    def _fenced(self, calls: list[list[Any]]) -> None:
        """Deletes that landed: their fences are in Redis now."""
        for args in calls:
            key, fence = args[_KEY], args[_STAMP]
            if fence != "" and self._fences.get(key) == fence:
                self._fences.pop(key, None)

    def _set_leased_args(self, key: str, entry: Entry, token: str) -> list[Any] | None:
        """The lease holder's write, or ``None`` when the entry may not be stored
        (see ``_px``)."""
        value, lease, waiters = _keys(key)
        payload = self.codec.encode(entry, key)
        px = self._px(entry)
        if px <= 0:
            return None
        return [3, value, lease, waiters, token, payload, px, CHANNEL, key]

    def _release_args(self, key: str, token: str) -> list[Any]:
        _, lease, waiters = _keys(key)
        return [2, lease, waiters, token, CHANNEL, key]

    def _check_args(self, key: str) -> list[Any]:
        value, lease, waiters = _keys(key)
        return [3, value, lease, waiters, "", self._lease_ms, "check"]

    def _notifier(self) -> Notifier | None:
        """The lease-release listener (one connection for every waited key), or
        ``None`` when there is no sync client to listen with (waiters poll)."""
        notifier = self._notify
        if notifier is None and not self._notify_unavailable:
            client = self._listen_client()
            if client is None:
                self._notify_unavailable = True
                return None
            with self._notify_lock:
                if self._notify is None:
                    self._notify = Notifier(client.pubsub, timeout=_socket_timeout(client))
                    # A backend dropped without close() must not leave its listener
                    # (a thread and a connection) running for good.
                    weakref.finalize(self, self._notify.close)
                notifier = self._notify
        return notifier

    def _listen_client(self) -> Any:
        """A sync redis-py client to subscribe with, or ``None``."""
        return None if _looks_async_client(self._client) else self._client

    # clear() runs in two passes over SCAN. First it revokes every lease of the
    # namespace (waking their waiters): a load that began before clear() can then
    # never write after its key was scanned. SCAN returns every key that exists for
    # the whole scan, so each such lease is found; a value written before its lease
    # was revoked exists for the whole second pass, which deletes the values. Tag
    # versions are never deleted (break 2 of issue 9): a deleted version reads as
    # "never invalidated", so entries invalidated before clear() reached them would
    # come back as hits. They expire after tag_ttl like any tag record.

    @staticmethod
    def _clear_pattern(prefix: str) -> str:
        return "{" + _glob_escape(_escape(prefix)) + "*"

    @staticmethod
    def _revoke_args(lease_name: bytes) -> list[Any]:
        base = lease_name[: -len(b":lease")]
        key = _unescape(base[1:-1].decode())
        return [2, lease_name, base + b":waiters", CHANNEL, key]

    def _is_cluster(self) -> bool:
        client = self._client
        return (
            type(client).__name__ == "RedisCluster" or getattr(client, "is_cluster", False) is True
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._client!r})"


def _is_noscript(exc: BaseException) -> bool:
    return type(exc).__name__ == "NoScriptError"


class _NoSentinels:
    sentinels: tuple[Any, ...] = ()

    def close(self) -> None:
        pass


def _sentinels_of(client: Any) -> Any:
    """The Sentinel manager of a Sentinel-managed client (``from_url`` builds one
    per client; the client does not close it), or an empty stand-in."""
    # (From the instance's own attributes: a lazy cluster client must not be built
    # just to be asked.)
    pool = getattr(client, "__dict__", {}).get("connection_pool")
    manager = getattr(pool, "sentinel_manager", None)
    return _NoSentinels() if manager is None else manager


def _sync_pools(clients: list[Any]) -> list[Any]:
    """The redis-py sync connection pools behind ``clients`` (each once; none for
    async clients, or a cluster client not built yet)."""
    pools: dict[int, Any] = {}
    for client in clients:
        if client is None or _looks_async_client(client):
            continue
        built = getattr(client, "__dict__", {}).get("_client", client)  # _LazyClusterClient
        if built is None:
            continue
        candidates = [getattr(built, "connection_pool", None)]
        nodes = getattr(getattr(built, "nodes_manager", None), "nodes_cache", None)
        if isinstance(nodes, dict):
            for node in list(nodes.values()):
                connection = getattr(node, "redis_connection", None)
                candidates.append(getattr(connection, "connection_pool", None))
        for pool in candidates:
            if pool is not None and hasattr(pool, "_fork_lock") and hasattr(pool, "_lock"):
                pools[id(pool)] = pool
    return list(pools.values())


def _socket_timeout(client: Any) -> float:
    """A sync client's socket timeout (0.25 s if it has none we can read)."""
    timeout = getattr(client, "__dict__", {}).get("socket_timeout")  # a wrapper's (see _url)
    if timeout is None:
        kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", None)
        if kwargs is None:  # a cluster client: its nodes' options
            nodes = getattr(getattr(client, "nodes_manager", None), "connection_kwargs", None)
            kwargs = nodes or {}
        timeout = kwargs.get("socket_timeout")
    return float(timeout) if isinstance(timeout, (int, float)) and timeout > 0 else 0.25


def _looks_async_client(client: Any) -> bool:
    return type(client).__module__.startswith("redis.asyncio")
