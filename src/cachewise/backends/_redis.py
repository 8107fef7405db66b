"""Redis backends: ``RedisBackend`` (redis-py) and ``AsyncRedisBackend`` (redis.asyncio).

Both speak one wire format (``_core.envelope``) and one key layout (``_lua``), so a
sync and an async cache on one namespace read each other's entries. Everything that
is not the I/O call itself lives in ``_RedisCommon``; the two classes only differ
in whether they ``await``.

Leases (Facebook's memcache paper, NSDI 2013): on a miss, exactly one caller across
all processes is granted a lease on the key (``SET NX PX`` with an owner token, in
the same script as the read, so a miss costs one round trip). Others wait on a list
the holder pushes to when it is done (``BLPOP``, a few commands per second at most)
and re-read. The holder writes only while its lease is current; ``delete`` and
``set`` drop the lease, so a load that read old data can never write it back.
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from cachewise import _forksafe
from cachewise._core import envelope
from cachewise._core.entry import Entry
from cachewise._core.policy import MAX_SECONDS
from cachewise._core.readflow import LeaseReply
from cachewise._errors import BackendError, BackpressureError, NotificationsLostError
from cachewise._url import client_identity
from cachewise.backends import _lua
from cachewise.backends._notify import CHANNEL, LoopWaiter, Notifier, ThreadWaiter
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

_R = TypeVar("_R")


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


class RedisBackend(_RedisCommon):
    """A Redis (or Redis Cluster) backend for ``Cache``, on a redis-py client.

    Pass a ``redis.Redis`` or ``redis.cluster.RedisCluster``, or use
    ``Cache.from_url("redis://...")``. ``lock_timeout`` bounds how long a lease
    holder may take before others take over (make it longer than your slowest
    load: a load that outlives its lease is not written); ``wait_timeout`` is how
    long waiters wait before loading on their own (default twice ``lock_timeout``).
    """

    def __init__(
        self,
        client: Any,
        *,
        codec: Codec | None = None,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        wait_timeout: float | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        margin: float = DEFAULT_MARGIN,
        owns_client: bool = False,
        tag_ttl: float = DEFAULT_TAG_TTL,
        invalidation_client: Any = None,
        lease_scope: object = None,
    ) -> None:
        if _looks_async_client(client):
            raise TypeError("RedisBackend needs a sync redis-py client; use AsyncRedisBackend")
        super().__init__(
            client,
            codec=codec,
            lock_timeout=lock_timeout,
            wait_timeout=wait_timeout,
            poll_interval=poll_interval,
            margin=margin,
            owns_client=owns_client,
            tag_ttl=tag_ttl,
            invalidation_client=invalidation_client,
            lease_scope=lease_scope,
        )

    def _script(self, script: str, sha: str, args: list[Any], client: Any = None) -> Any:
        client = client or self._client
        try:
            return client.execute_command("EVALSHA", sha, *args)
        except Exception as exc:
            if not _is_noscript(exc):
                raise
            # Not cached on this node yet (or after a restart): EVAL caches it.
            return client.execute_command("EVAL", script, *args)

    def _pipeline_scripts(
        self, script: str, calls: list[list[Any]], client: Any = None
    ) -> list[Any]:
        pipe = (client or self._client).pipeline(transaction=False)
        for args in calls:
            pipe.execute_command("EVAL", script, *args)
        result: list[Any] = pipe.execute()
        return result

    def _delete_each(self, keys: Sequence[str]) -> list[bool]:
        """``delete`` for several keys, pipelined; for each, whether it existed."""
        calls = [self._write_args(k, None) for k in keys]
        replies = self._pipeline_scripts(_lua.WRITE, calls, self._writer)
        self._fenced(calls)
        return [bool(r) for r in replies]

    # -- Backend ------------------------------------------------------------------

    def get(self, key: str) -> Entry | None:
        """One ``GET`` (plus an ``MGET`` of its tags' versions if it has tags); an
        undecodable or invalidated entry is a miss."""
        return self._check_tags(self._decode(self._client.get(value_key(key)), key))

    def _mget(self, names: list[str]) -> list[Any]:
        if self._is_cluster():
            result: list[Any] = self._client.mget_nonatomic(names)
        else:
            result = self._client.mget(names)
        return result

    def _check_tags(self, entry: Entry | None) -> Entry | None:
        if entry is None or not entry.tags:
            return entry
        raw = self._mget([tag_key(t) for t in entry.tags])
        return entry if self._tags_match(entry, entry.tags, raw) else None

    def get_tagged(self, key: str, tags: Sequence[str]) -> Entry | None:
        """A read that checks ``tags`` in the same round trip on standalone Redis
        (one ``MGET`` of the value and the tag versions: atomic, and far cheaper on
        the server than a script). On a cluster, where tags live in other slots, it
        is a ``GET`` and then an ``MGET`` of the tags, grouped by slot."""
        if not tags or self._is_cluster():
            return self.get(key)
        reply = self._client.mget([value_key(key), *map(tag_key, tags)])
        entry = self._decode(reply[0], key)
        if entry is None or not entry.tags:
            return entry
        if self._covers(entry, tags):
            return entry if self._tags_match(entry, tags, reply[1:]) else None
        return self._check_tags(entry)

    def tag_stamp(self, tags: Sequence[str]) -> tuple[bytes, ...]:
        """The tags' current versions, to record on an entry before loading it
        (each tag gets a record if it has none: see ``_lua.STAMP``)."""
        if not tags:
            return ()
        taken_at = time.monotonic()  # before the read: an upper bound on its age
        replies = self._pipeline_scripts(_lua.STAMP, self._stamp_calls(tags))
        return _Stamp(self._versions(replies), taken_at)

    def invalidate_tags(self, tags: Sequence[str]) -> None:
        """Give each tag a new version: O(number of tags), whatever the number of
        entries carrying them."""
        if not tags:
            return
        pipe = self._writer.pipeline(transaction=False)
        for name, version in self._invalidate_args(tags):
            pipe.set(name, version, px=self._tag_ttl_ms)
        pipe.execute()

    def get_many(self, keys: Sequence[str]) -> list[Entry | None]:
        """``MGET`` (grouped by slot on a cluster)."""
        if not keys:
            return []
        raws = self._mget([value_key(key) for key in keys])
        entries = [self._decode(raw, key) for raw, key in zip(raws, keys, strict=True)]
        tags = self._tags_of(entries)
        return self._keep_valid(entries, tags, self._mget(list(map(tag_key, tags))) if tags else [])

    def set(self, key: str, entry: Entry) -> None:
        """Write the entry and drop any lease on the key (refused if a later
        delete fenced it: see ``_lua.WRITE``)."""
        args = self._write_args(key, entry)
        try:
            self._script(_lua.WRITE, self._write_sha, args)
        except BaseException:
            self._unanswered([args])
            raise

    def set_many(self, items: Sequence[tuple[str, Entry]]) -> None:
        """``set`` for several keys, pipelined."""
        if items:
            calls = [self._write_args(k, e) for k, e in items]
            try:
                self._pipeline_scripts(_lua.WRITE, calls)
            except BaseException:
                self._unanswered(calls)
                raise

    def delete(self, key: str) -> bool:
        """Delete the value and its lease; whether the value existed."""
        args = self._write_args(key, None)
        existed = bool(self._script(_lua.WRITE, self._write_sha, args, self._writer))
        self._fenced([args])
        return existed

    def delete_many(self, keys: Sequence[str]) -> int:
        """``delete`` for several keys, pipelined; how many existed."""
        if not keys:
            return 0
        calls = [self._write_args(k, None) for k in keys]
        replies = self._pipeline_scripts(_lua.WRITE, calls, self._writer)
        self._fenced(calls)
        return sum(int(r) for r in replies)

    def clear(self, prefix: str = "") -> int:
        """Delete every value of ``prefix`` with ``SCAN``, revoking their leases
        first; how many values. See ``_RedisCommon`` for why in two passes and why
        tag versions stay."""
        pattern = self._clear_pattern(prefix)
        leases = [n for n in self._client.scan_iter(match=pattern, count=1000) if _is_lease(n)]
        for start in range(0, len(leases), 500):
            calls = [self._revoke_args(name) for name in leases[start : start + 500]]
            self._pipeline_scripts(_lua.REVOKE, calls, self._writer)
        count = 0
        batch: list[bytes] = []
        for name in self._client.scan_iter(match=pattern, count=1000):
            if _is_value(name):
                batch.append(name)
                if len(batch) >= 500:
                    count += self._writer.delete(*batch)
                    batch = []
        if batch:
            count += self._writer.delete(*batch)
        fenced = [key for key in list(self._fences) if key.startswith(prefix)]
        if fenced:  # sets of this prefix that got no answer: fence them too
            self._delete_each(fenced)
        return int(count)

    def close(self) -> None:
        """Stop the lease listener; close the client(s) if this backend created them."""
        if self._notify is not None:
            self._notify.close()
        if self._owns_client:
            self._client.close()
            _sentinels_of(self._client).close()
            if self._writer is not self._client:
                self._writer.close()

    # -- leases -------------------------------------------------------------------

    def read_or_lease(self, key: str, token: str, mode: str = "lease") -> LeaseReply:
        """Read ``key`` and, per ``mode`` (see ``_lua.READ``), take its lease."""
        reply = self._parse_read(
            self._script(_lua.READ, self._read_sha, self._read_args(key, token, mode)), key
        )
        if reply.entry is not None and reply.entry.tags:
            checked = self._check_tags(reply.entry)
            if checked is None:  # invalidated: a miss, to be reloaded over
                return reply._replace(entry=None, unreadable=True)
        return reply

    def set_leased(self, key: str, entry: Entry, token: str) -> bool:
        """Write only while ``token`` holds the lease; whether it did, and, for a
        tagged entry, whether its tags were still current after the write."""
        args = self._set_leased_args(key, entry, token)
        if args is None:
            self.release(key, token)
            return False
        written = bool(self._script(_lua.SET_LEASED, self._set_leased_sha, args))
        if written and entry.tags:
            # A tag invalidation that returned before the write (in any process)
            # left the entry a miss for readers; the load's joiners must not take
            # its value either (break 3 of issue 9): tell them it is unconfirmed.
            raw = self._mget([tag_key(t) for t in entry.tags])
            return self._tags_match(entry, entry.tags, raw)
        return written

    def release(self, key: str, token: str) -> bool:
        """Give the lease up (the load failed) and wake the waiters; whether it was
        still ``token``'s."""
        return bool(self._script(_lua.RELEASE, self._release_sha, self._release_args(key, token)))

    def wait(self, key: str, timeout: float) -> bool:
        """Block until the lease on ``key`` ends (the holder's script publishes it)
        or ``timeout``; whether it ended. Holds no pooled connection while it
        waits: one listener connection serves every waiting key (see _notify)."""
        notifier = self._notifier()
        if notifier is None:
            time.sleep(min(timeout, self.poll_interval))
            return False
        waiter = ThreadWaiter()
        notifier.watch(key, waiter)  # before the check: no release can slip between
        try:
            if not notifier.live:
                # Not subscribed yet (or reconnecting): a subscription wakes every
                # waiter; if none comes within a poll interval, read again.
                waiter.event.wait(min(timeout, self.poll_interval))
                if not notifier.live:
                    return False
                waiter.event.clear()  # (a release meanwhile is seen by the check)
            if not self._still_held(key):
                return True
            ended = waiter.event.wait(timeout)
            if waiter.failed:
                # The listener lost its connection: this process cannot hear the
                # release. Load now (one timeout), rather than wait it out blind.
                raise NotificationsLostError("lease notifications lost: the connection died")
            return ended
        finally:
            notifier.unwatch(key, waiter)

    def _still_held(self, key: str) -> bool:
        reply = self._script(_lua.READ, self._read_sha, self._check_args(key))
        return int(reply[2]) != 0


class AsyncRedisBackend(_RedisCommon):
    """``RedisBackend`` for ``AsyncCache``, on a ``redis.asyncio`` client."""

    def __init__(
        self,
        client: Any,
        *,
        codec: Codec | None = None,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        wait_timeout: float | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        margin: float = DEFAULT_MARGIN,
        owns_client: bool = False,
        tag_ttl: float = DEFAULT_TAG_TTL,
        invalidation_client: Any = None,
        client_factory: Callable[[], Any] | None = None,
        lease_scope: object = None,
    ) -> None:
        """``client_factory`` (``from_url`` passes one) builds a fresh client: used
        when the cache moves to another event loop (see ``_prepare``)."""
        if not _looks_async_client(client):
            raise TypeError("AsyncRedisBackend needs a redis.asyncio client; use RedisBackend")
        # A sync invalidation client is used from threads of our own. On a busy
        # event loop an asyncio socket timeout fires when the loop comes back late,
        # not when the server is late: a delete that gave up for that reason would
        # leave the old value for every other process. A thread's socket timeout
        # measures the server alone (and a delete already sent still lands if the
        # caller is cancelled).
        offload = invalidation_client is not None and not _looks_async_client(invalidation_client)
        options: dict[str, Any] = {
            "lock_timeout": lock_timeout,
            "wait_timeout": wait_timeout,
            "poll_interval": poll_interval,
            "margin": margin,
            "owns_client": owns_client,
            "tag_ttl": tag_ttl,
        }
        super().__init__(
            client,
            codec=codec,
            invalidation_client=None if offload else invalidation_client,
            lease_scope=lease_scope,
            **options,
        )
        self._offloaded: RedisBackend | None = None
        self._factory = client_factory
        # The event loop the client's connections belong to (see _prepare), and
        # whether a cluster client still needs its one initialization on it.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._init_pending = False
        self._prepare_lock: asyncio.Lock | None = None
        self._pool: ThreadPoolExecutor | None = None
        # Deletes waiting for the drain thread: (key, queued at, future, its loop).
        self._batch: list[_Queued] = []
        self._batch_lock = threading.Lock()
        self._draining = False
        if offload:
            self._offloaded = RedisBackend(
                invalidation_client, codec=self.codec, lease_scope=lease_scope, **options
            )
            self._queue_limit = _socket_timeout(invalidation_client) / 2

    @property
    def _fences(self) -> _FenceTable:
        # One table with the sync backend that sends our invalidations: its deletes
        # must fence our sets.
        if self._offloaded is not None:
            return self._offloaded._fences
        return super()._fences

    def _after_fork_child(self) -> None:
        super()._after_fork_child()
        # The invalidation threads and whatever they had queued were the parent's.
        self._pool = None
        self._batch = []
        self._batch_lock = threading.Lock()
        self._draining = False

    async def _ready(self) -> Any:
        """The client, ready on the running event loop."""
        if self._loop is not asyncio.get_running_loop() or self._init_pending:
            await self._prepare()
        return self._client

    async def _prepare(self) -> None:
        """Bind the client to the running loop (once per loop).

        redis.asyncio connections belong to the loop that opened them: used from a
        second ``asyncio.run()`` they fail with "Event loop is closed", and every
        read would count against the backend (the breaker opens, hits stop). A
        client built by ``from_url`` is rebuilt for the new loop (the old one's
        sockets are closed when it is collected); one you passed in gets its pool
        reset. A cluster client is then initialized once, under a lock: concurrent
        first calls initializing it at once fail in redis-py (a connection used
        while another call replaces it).
        """
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._loop is not None:
                self._rebind()
            self._loop = loop
            self._prepare_lock = asyncio.Lock()
            self._init_pending = self._is_cluster() and hasattr(self._client, "initialize")
        if self._init_pending:
            assert self._prepare_lock is not None
            async with self._prepare_lock:
                if self._init_pending:
                    await _kept(self._client.initialize())
                    self._init_pending = False

    def _rebind(self) -> None:
        old = self._client
        _close_abandoned(old)
        if self._factory is not None:
            self._client = self._factory()
            if self._writer is old:
                self._writer = self._client
            return
        pool = getattr(old, "connection_pool", None)
        reset = getattr(pool, "reset", None)
        if callable(reset):
            reset()

    def _threads(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                INVALIDATION_THREADS, thread_name_prefix="cachewise-invalidate"
            )
        return self._pool

    async def _offload(self, method: Callable[..., _R], *args: Any) -> _R:
        """Run an invalidation on the sync client, in our threads."""
        queued = time.monotonic()
        limit = self._queue_limit

        def job() -> _R:
            # Bounded queueing: during an outage every thread waits out a timeout,
            # and a call queued behind them must not wait out several. It fails
            # instead, and the cache holds it until a retry lands.
            if time.monotonic() - queued > limit:
                raise BackpressureError("invalidation queued too long (not sent)")
            return method(*args)

        return await asyncio.get_running_loop().run_in_executor(self._threads(), job)

    async def _delete_batched(self, key: str) -> bool:
        """Queue a delete for the drain thread, which sends whatever is queued as
        one pipeline: under load one round trip carries many deletes, where one
        per thread could not keep up (and each that gave up would be held)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        with self._batch_lock:
            self._batch.append((key, time.monotonic(), future, loop))
            start = not self._draining
            self._draining = True
        if start:
            try:
                self._threads().submit(self._drain)
            except RuntimeError:  # shut down (closing): nothing will send it
                with self._batch_lock:
                    self._draining = False
                    pending, self._batch = self._batch, []
                for item in pending:
                    _settle(item, False, BackendError("the backend is closing"))
        return await future

    def _drain(self) -> None:
        """Send queued deletes until none is left (runs in one of our threads)."""
        sender = self._offloaded
        assert sender is not None
        batch: list[_Queued] = []
        try:
            while True:
                with self._batch_lock:
                    batch, self._batch = self._batch, []
                    if not batch:
                        self._draining = False
                        return
                now = time.monotonic()
                fresh: list[_Queued] = []
                for item in batch:
                    if now - item[1] > self._queue_limit:  # see _offload
                        _settle(item, False, BackpressureError("delete queued too long"))
                    else:
                        fresh.append(item)
                if not fresh:
                    continue
                try:
                    existed = sender._delete_each([item[0] for item in fresh])
                except Exception as exc:
                    for item in fresh:
                        _settle(item, False, exc)
                else:
                    for item, hit in zip(fresh, existed, strict=True):
                        _settle(item, hit, None)
        except BaseException:
            # Never leave _draining set with nobody draining, nor a caller without
            # an answer: they would wait forever. (Settling twice is a no-op.)
            with self._batch_lock:
                self._draining = False
                pending, self._batch = self._batch, []
            for item in batch + pending:
                _settle(item, False, BackendError("the invalidation sender failed"))
            raise

    async def _script(self, script: str, sha: str, args: list[Any], client: Any = None) -> Any:
        client = client or await self._ready()
        try:
            return await _kept(client.execute_command("EVALSHA", sha, *args))
        except Exception as exc:
            if not _is_noscript(exc):
                raise
            return await _kept(client.execute_command("EVAL", script, *args))

    async def _pipeline_scripts(
        self, script: str, calls: list[list[Any]], client: Any = None
    ) -> list[Any]:
        pipe = (client or await self._ready()).pipeline(transaction=False)
        for args in calls:
            pipe.execute_command("EVAL", script, *args)
        result: list[Any] = await _kept(pipe.execute())
        return result

    async def get(self, key: str) -> Entry | None:
        """One ``GET`` (plus an ``MGET`` of its tags' versions if it has tags); an
        undecodable or invalidated entry is a miss."""
        task = asyncio.current_task()
        cancels = _cancels(task)
        if self._loop is not asyncio.get_running_loop() or self._init_pending:
            await self._prepare()  # (the hit path: inlined _ready)
        raw = await self._client.get(value_key(key))
        if _cancels(task) > cancels:
            raise asyncio.CancelledError  # see _kept: swallowed inside redis-py
        return await self._check_tags(self._decode(raw, key))

    async def _mget(self, names: list[str]) -> list[Any]:
        if self._is_cluster():
            client = await self._ready()
            result: list[Any] = await _kept(client.mget_nonatomic(names))
        else:
            result = await _kept((await self._ready()).mget(names))
        return result

    async def _check_tags(self, entry: Entry | None) -> Entry | None:
        if entry is None or not entry.tags:
            return entry
        raw = await self._mget([tag_key(t) for t in entry.tags])
        return entry if self._tags_match(entry, entry.tags, raw) else None

    async def get_tagged(self, key: str, tags: Sequence[str]) -> Entry | None:
        """See ``RedisBackend.get_tagged``."""
        if not tags or self._is_cluster():
            return await self.get(key)
        client = await self._ready()
        reply = await _kept(client.mget([value_key(key), *map(tag_key, tags)]))
        entry = self._decode(reply[0], key)
        if entry is None or not entry.tags:
            return entry
        if self._covers(entry, tags):
            return entry if self._tags_match(entry, tags, reply[1:]) else None
        return await self._check_tags(entry)

    async def tag_stamp(self, tags: Sequence[str]) -> tuple[bytes, ...]:
        """The tags' current versions (see ``RedisBackend.tag_stamp``)."""
        if not tags:
            return ()
        taken_at = time.monotonic()
        replies = await self._pipeline_scripts(_lua.STAMP, self._stamp_calls(tags))
        return _Stamp(self._versions(replies), taken_at)

    async def invalidate_tags(self, tags: Sequence[str]) -> None:
        """Give each tag a new version: O(number of tags)."""
        if not tags:
            return
        if self._offloaded is not None:
            await self._offload(self._offloaded.invalidate_tags, list(tags))
            return
        await self._ready()
        pipe = self._writer.pipeline(transaction=False)
        for name, version in self._invalidate_args(tags):
            pipe.set(name, version, px=self._tag_ttl_ms)
        await _kept(pipe.execute())

    async def get_many(self, keys: Sequence[str]) -> list[Entry | None]:
        """``MGET`` (grouped by slot on a cluster)."""
        if not keys:
            return []
        raws = await self._mget([value_key(key) for key in keys])
        entries = [self._decode(raw, key) for raw, key in zip(raws, keys, strict=True)]
        tags = self._tags_of(entries)
        versions = await self._mget(list(map(tag_key, tags))) if tags else []
        return self._keep_valid(entries, tags, versions)

    async def set(self, key: str, entry: Entry) -> None:
        """Write the entry and drop any lease on the key (see ``RedisBackend.set``)."""
        args = self._write_args(key, entry)
        try:
            await self._script(_lua.WRITE, self._write_sha, args)
        except BaseException:  # a cancelled set may be on the wire too
            self._unanswered([args])
            raise

    async def set_many(self, items: Sequence[tuple[str, Entry]]) -> None:
        """``set`` for several keys, pipelined."""
        if items:
            calls = [self._write_args(k, e) for k, e in items]
            try:
                await self._pipeline_scripts(_lua.WRITE, calls)
            except BaseException:
                self._unanswered(calls)
                raise

    async def delete(self, key: str) -> bool:
        """Delete the value and its lease; whether the value existed."""
        if self._offloaded is not None:
            return await self._delete_batched(key)
        args = self._write_args(key, None)
        await self._ready()
        existed = bool(await self._script(_lua.WRITE, self._write_sha, args, self._writer))
        self._fenced([args])
        return existed

    async def delete_many(self, keys: Sequence[str]) -> int:
        """``delete`` for several keys, pipelined; how many existed."""
        if not keys:
            return 0
        if self._offloaded is not None:
            return await self._offload(self._offloaded.delete_many, list(keys))
        calls = [self._write_args(k, None) for k in keys]
        await self._ready()
        replies = await self._pipeline_scripts(_lua.WRITE, calls, self._writer)
        self._fenced(calls)
        return sum(int(r) for r in replies)

    async def clear(self, prefix: str = "") -> int:
        """Delete every value of ``prefix``, revoking their leases first (see
        ``RedisBackend.clear``)."""
        if self._offloaded is not None:
            return await self._offload(self._offloaded.clear, prefix)
        pattern = self._clear_pattern(prefix)
        client = await self._ready()
        names = [name async for name in client.scan_iter(match=pattern, count=1000)]
        leases = [n for n in names if _is_lease(n)]
        for start in range(0, len(leases), 500):
            calls = [self._revoke_args(name) for name in leases[start : start + 500]]
            await self._pipeline_scripts(_lua.REVOKE, calls, self._writer)
        values = [n async for n in client.scan_iter(match=pattern, count=1000) if _is_value(n)]
        count = 0
        for start in range(0, len(values), 500):
            count += await _kept(self._writer.delete(*values[start : start + 500]))
        fenced = [key for key in list(self._fences) if key.startswith(prefix)]
        if fenced:  # (see RedisBackend.clear)
            await self.delete_many(fenced)
        return int(count)

    async def aclose(self) -> None:
        """Stop the lease listener; close the client(s) if this backend created them."""
        if self._notify is not None:
            self._notify.close()
        if self._pool is not None:
            # Let invalidations already sent land; at most one timeout each.
            await asyncio.to_thread(self._pool.shutdown, True)
            self._pool = None
        if self._offloaded is not None:
            self._offloaded.close()  # closes the sync client if we own it
        if self._owns_client:
            if self._loop is not None and self._loop is not asyncio.get_running_loop():
                # Connections of an event loop that is gone (see _prepare).
                _close_abandoned(self._client)
                return
            await self._client.aclose()
            for sentinel in _sentinels_of(self._client).sentinels:
                await sentinel.aclose()
            if self._writer is not self._client:
                await self._writer.aclose()

    async def read_or_lease(self, key: str, token: str, mode: str = "lease") -> LeaseReply:
        """Read ``key`` and, per ``mode``, take its lease."""
        reply = self._parse_read(
            await self._script(_lua.READ, self._read_sha, self._read_args(key, token, mode)),
            key,
        )
        if reply.entry is not None and reply.entry.tags:
            checked = await self._check_tags(reply.entry)
            if checked is None:  # invalidated: a miss, to be reloaded over
                return reply._replace(entry=None, unreadable=True)
        return reply

    async def set_leased(self, key: str, entry: Entry, token: str) -> bool:
        """Write only while ``token`` holds the lease; see ``RedisBackend.set_leased``."""
        args = self._set_leased_args(key, entry, token)
        if args is None:
            await self.release(key, token)
            return False
        written = bool(await self._script(_lua.SET_LEASED, self._set_leased_sha, args))
        if written and entry.tags:  # see RedisBackend.set_leased (break 3)
            raw = await self._mget([tag_key(t) for t in entry.tags])
            return self._tags_match(entry, entry.tags, raw)
        return written

    async def release(self, key: str, token: str) -> bool:
        """Give the lease up and wake the waiters; whether it was still ``token``'s."""
        return bool(
            await self._script(_lua.RELEASE, self._release_sha, self._release_args(key, token))
        )

    async def wait(self, key: str, timeout: float) -> bool:
        """Wait until the lease on ``key`` ends, or ``timeout``; whether it ended.
        See ``RedisBackend.wait``: no pooled connection is held while waiting."""
        notifier = self._notifier()
        if notifier is None:
            await asyncio.sleep(min(timeout, self.poll_interval))
            return False
        waiter = LoopWaiter()
        notifier.watch(key, waiter)
        try:
            if not notifier.live:  # see RedisBackend.wait
                # asyncio.wait, not wait_for: it never swallows a cancellation.
                await asyncio.wait({waiter.future}, timeout=min(timeout, self.poll_interval))
                if not notifier.live:
                    return False
                notifier.unwatch(key, waiter)
                waiter = LoopWaiter()
                notifier.watch(key, waiter)
            reply = await self._script(_lua.READ, self._read_sha, self._check_args(key))
            if int(reply[2]) == 0:
                return True
            done, _ = await asyncio.wait({waiter.future}, timeout=timeout)
            if done and waiter.future.result():  # see RedisBackend.wait
                raise NotificationsLostError("lease notifications lost: the connection died")
            return bool(done)
        finally:
            notifier.unwatch(key, waiter)

    def _listen_client(self) -> Any:
        # The sync invalidation client, when there is one (from_url builds it).
        return self._offloaded.client if self._offloaded is not None else None


async def _kept(call: Awaitable[_R]) -> _R:
    """Await a redis.asyncio call without losing a cancellation of the caller.

    On Python 3.11, redis-py sends each command through ``asyncio.wait_for``, which
    returns the result and drops the cancellation when the send finishes in the
    same loop iteration the caller is cancelled (CPython gh-86296): measured here,
    185 of 200 cancellations of a task looping on ``GET`` were lost. A cancelled
    waiter then kept reading and finally loaded. The task's cancel count tells:
    if it grew during the call and no ``CancelledError`` came, raise it now.
    """
    task = asyncio.current_task()
    cancels = _cancels(task)
    result = await call
    if _cancels(task) > cancels:
        raise asyncio.CancelledError
    return result


def _cancels(task: asyncio.Task[Any] | None) -> int:
    """How many cancellations of ``task`` are pending (Python 3.11+; 0 before)."""
    cancelling = getattr(task, "cancelling", None)
    return int(cancelling()) if cancelling is not None else 0


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


def _close_abandoned(client: Any) -> None:
    """Close the sockets of a redis.asyncio client whose event loop is gone.

    Its transports cannot be closed the usual way (that needs their loop), and
    left to the collector each would leak until then and warn ("unclosed
    socket"). So each socket is closed by hand, and its transport told so.
    """
    for sentinel in _sentinels_of(client).sentinels:
        _close_abandoned(sentinel)  # (a Sentinel manager's connections: of that loop too)
    connections: list[Any] = []
    pool = getattr(client, "connection_pool", None)
    for name in ("_available_connections", "_in_use_connections"):
        connections += list(getattr(pool, name, None) or ())
    nodes = getattr(getattr(client, "nodes_manager", None), "nodes_cache", None)
    if isinstance(nodes, dict):  # a cluster client: each node's connections
        for node in nodes.values():
            connections += list(getattr(node, "_connections", None) or ())
    for connection in connections:
        transport = getattr(getattr(connection, "_writer", None), "transport", None)
        if transport is None:
            continue
        try:
            transport.abort()  # marks it closing; then fails to schedule on the dead loop
        except RuntimeError:
            pass
        sock = getattr(transport, "_sock", None)
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass
            transport._sock = None  # (closed by hand: its loop is gone)
        # redis-py's connection is closed now too (its own close needs the loop).
        connection._writer = connection._reader = None


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


_Queued = tuple[str, float, "asyncio.Future[bool]", asyncio.AbstractEventLoop]


def _settle(item: _Queued, result: bool, exc: BaseException | None) -> None:
    """Resolve a queued delete's future on its own loop (from any thread)."""
    future, loop = item[2], item[3]

    def resolve() -> None:
        if future.done():  # the caller was cancelled: the delete went out anyway
            return
        if exc is None:
            future.set_result(result)
        else:
            future.set_exception(exc)

    try:
        loop.call_soon_threadsafe(resolve)
    except RuntimeError:
        pass  # that loop is closed: nobody is waiting


def _looks_async_client(client: Any) -> bool:
    return type(client).__module__.startswith("redis.asyncio")
