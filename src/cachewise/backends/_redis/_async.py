"""Async Redis backend (the source of ``_sync``)."""  # unasync: sync="""Sync Redis backend."""

from __future__ import annotations

import asyncio  # unasync: async-only
import time
from collections.abc import Sequence
from typing import Any

from cachewise._core.entry import Entry
from cachewise._core.readflow import LeaseReply
from cachewise._errors import NotificationsLostError
from cachewise.backends import _lua
from cachewise.backends._redis._common import (
    _is_lease,
    _is_noscript,
    _is_value,
    _Stamp,
    tag_key,
    value_key,
)
from cachewise.backends._redis._flavour_async import (
    Waiter,
    _cancels,  # unasync: async-only
    _close_abandoned,  # unasync: async-only
    _Flavour,
    _kept,  # unasync: async-only
    close_sentinels,
    lost,
    rearm,
    wait_woken,
)


class AsyncRedisBackend(_Flavour):
    """A Redis (or Redis Cluster) backend for ``AsyncCache``, on a redis.asyncio client.

    Pass a ``redis.asyncio.Redis`` or ``redis.asyncio.cluster.RedisCluster``, or use
    ``AsyncCache.from_url("redis://...")``. ``lock_timeout`` bounds how long a lease
    holder may take before others take over (make it longer than your slowest
    load: a load that outlives its lease is not written); ``wait_timeout`` is how
    long waiters wait before loading on their own (default twice ``lock_timeout``).
    """

    async def _script(self, script: str, sha: str, args: list[Any], client: Any = None) -> Any:
        client = client or await self._ready()
        try:
            return await _kept(client.execute_command("EVALSHA", sha, *args))
        except Exception as exc:
            if not _is_noscript(exc):
                raise
            # Not cached on this node yet (or after a restart): EVAL caches it.
            return await _kept(client.execute_command("EVAL", script, *args))

    async def _pipeline_scripts(
        self, script: str, calls: list[list[Any]], client: Any = None
    ) -> list[Any]:
        pipe = (client or await self._ready()).pipeline(transaction=False)
        for args in calls:
            pipe.execute_command("EVAL", script, *args)
        result: list[Any] = await _kept(pipe.execute())
        return result

    async def _delete_each(self, keys: Sequence[str]) -> list[bool]:
        """``delete`` for several keys, pipelined; for each, whether it existed."""
        calls = [self._write_args(k, None) for k in keys]
        await self._ready()  # (the writer may be the client)  # unasync: async-only
        replies = await self._pipeline_scripts(_lua.WRITE, calls, self._writer)
        self._fenced(calls)
        return [bool(r) for r in replies]

    # -- Backend ------------------------------------------------------------------

    async def get(self, key: str) -> Entry | None:
        """One ``GET`` (plus an ``MGET`` of its tags' versions if it has tags); an
        undecodable or invalidated entry is a miss."""
        # unasync: async-only
        # The client bound to this event loop, and redis-py's lost cancellations
        # caught (_kept inlined: this is the hit path). A sync client has neither.
        task = asyncio.current_task()
        cancels = _cancels(task)
        if self._loop is not asyncio.get_running_loop() or self._init_pending:
            await self._prepare()  # (the hit path: _ready inlined)
        # unasync: end
        raw = await self._client.get(value_key(key))
        # unasync: async-only
        if _cancels(task) > cancels:
            raise asyncio.CancelledError  # see _kept: swallowed inside redis-py
        # unasync: end
        return await self._check_tags(self._decode(raw, key))

    async def _mget(self, names: list[str]) -> list[Any]:
        client = await self._ready()
        if self._is_cluster():
            result: list[Any] = await _kept(client.mget_nonatomic(names))
        else:
            result = await _kept(client.mget(names))
        return result

    async def _check_tags(self, entry: Entry | None) -> Entry | None:
        if entry is None or not entry.tags:
            return entry
        raw = await self._mget([tag_key(t) for t in entry.tags])
        return entry if self._tags_match(entry, entry.tags, raw) else None

    async def get_tagged(self, key: str, tags: Sequence[str]) -> Entry | None:
        """A read that checks ``tags`` in the same round trip on standalone Redis
        (one ``MGET`` of the value and the tag versions: atomic, and far cheaper on
        the server than a script). On a cluster, where tags live in other slots, it
        is a ``GET`` and then an ``MGET`` of the tags, grouped by slot."""
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
        """The tags' current versions, to record on an entry before loading it
        (each tag gets a record if it has none: see ``_lua.STAMP``)."""
        if not tags:
            return ()
        taken_at = time.monotonic()  # before the read: an upper bound on its age
        replies = await self._pipeline_scripts(_lua.STAMP, self._stamp_calls(tags))
        return _Stamp(self._versions(replies), taken_at)

    async def invalidate_tags(self, tags: Sequence[str]) -> None:
        """Give each tag a new version: O(number of tags), whatever the number of
        entries carrying them."""
        if not tags:
            return
        # unasync: async-only
        # A URL-built async backend sends its invalidations on a sync client, from
        # threads of its own (see _flavour_async); so do delete, delete_many, clear.
        if self._offloaded is not None:
            await self._offload(self._offloaded.invalidate_tags, list(tags))
            return
        await self._ready()
        # unasync: end
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
        """Write the entry and drop any lease on the key (refused if a later
        delete fenced it: see ``_lua.WRITE``)."""
        args = self._write_args(key, entry)
        try:
            await self._script(_lua.WRITE, self._write_sha, args)
        except BaseException:  # (a cancelled set may be on the wire too)
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
        if self._offloaded is not None:  # unasync: async-only
            return await self._delete_batched(key)  # unasync: async-only
        args = self._write_args(key, None)
        await self._ready()  # unasync: async-only
        existed = bool(await self._script(_lua.WRITE, self._write_sha, args, self._writer))
        self._fenced([args])
        return existed

    async def delete_many(self, keys: Sequence[str]) -> int:
        """``delete`` for several keys, pipelined; how many existed."""
        if not keys:
            return 0
        # unasync: async-only
        if self._offloaded is not None:
            return await self._offload(self._offloaded.delete_many, list(keys))
        # unasync: end
        return sum(await self._delete_each(keys))

    async def clear(self, prefix: str = "") -> int:
        """Delete every value of ``prefix`` with ``SCAN``, revoking their leases
        first; how many values. See ``_RedisCommon`` for why in two passes and why
        tag versions stay."""
        if self._offloaded is not None:  # unasync: async-only
            return await self._offload(self._offloaded.clear, prefix)  # unasync: async-only
        pattern = self._clear_pattern(prefix)
        client = await self._ready()
        leases = [n async for n in client.scan_iter(match=pattern, count=1000) if _is_lease(n)]
        for start in range(0, len(leases), 500):
            calls = [self._revoke_args(name) for name in leases[start : start + 500]]
            await self._pipeline_scripts(_lua.REVOKE, calls, self._writer)
        count = 0
        batch: list[bytes] = []
        async for name in client.scan_iter(match=pattern, count=1000):
            if _is_value(name):
                batch.append(name)
                if len(batch) >= 500:
                    count += await _kept(self._writer.delete(*batch))
                    batch = []
        if batch:
            count += await _kept(self._writer.delete(*batch))
        fenced = [key for key in list(self._fences) if key.startswith(prefix)]
        if fenced:  # sets of this prefix that got no answer: fence them too
            await self._delete_each(fenced)
        return int(count)

    async def aclose(self) -> None:
        """Stop the lease listener; close the client(s) if this backend created them."""
        if self._notify is not None:
            self._notify.close()
        await self._stop_threads()  # unasync: async-only
        if self._owns_client:
            # unasync: async-only
            if self._loop is not None and self._loop is not asyncio.get_running_loop():
                # Connections of an event loop that is gone (see _prepare).
                _close_abandoned(self._client)
                return
            # unasync: end
            await self._client.aclose()
            await close_sentinels(self._client)
            if self._writer is not self._client:
                await self._writer.aclose()

    # -- leases -------------------------------------------------------------------

    async def read_or_lease(self, key: str, token: str, mode: str = "lease") -> LeaseReply:
        """Read ``key`` and, per ``mode`` (see ``_lua.READ``), take its lease."""
        reply = self._parse_read(
            await self._script(_lua.READ, self._read_sha, self._read_args(key, token, mode)), key
        )
        if reply.entry is not None and reply.entry.tags:
            checked = await self._check_tags(reply.entry)
            if checked is None:  # invalidated: a miss, to be reloaded over
                return reply._replace(entry=None, unreadable=True)
        return reply

    async def set_leased(self, key: str, entry: Entry, token: str) -> bool:
        """Write only while ``token`` holds the lease; whether it did, and, for a
        tagged entry, whether its tags were still current after the write."""
        args = self._set_leased_args(key, entry, token)
        if args is None:
            await self.release(key, token)
            return False
        written = bool(await self._script(_lua.SET_LEASED, self._set_leased_sha, args))
        if written and entry.tags:
            # A tag invalidation that returned before the write (in any process)
            # left the entry a miss for readers; the load's joiners must not take
            # its value either (break 3 of issue 9): tell them it is unconfirmed.
            raw = await self._mget([tag_key(t) for t in entry.tags])
            return self._tags_match(entry, entry.tags, raw)
        return written

    async def release(self, key: str, token: str) -> bool:
        """Give the lease up (the load failed) and wake the waiters; whether it was
        still ``token``'s."""
        return bool(
            await self._script(_lua.RELEASE, self._release_sha, self._release_args(key, token))
        )

    async def wait(self, key: str, timeout: float) -> bool:
        """Wait until the lease on ``key`` ends (the holder's script publishes it)
        or ``timeout``; whether it ended. Holds no pooled connection while it
        waits: one listener connection serves every waiting key (see _notify)."""
        notifier = self._notifier()
        if notifier is None:
            await asyncio.sleep(min(timeout, self.poll_interval))
            return False
        waiter = Waiter()
        notifier.watch(key, waiter)  # before the check: no release can slip between
        try:
            if not notifier.live:
                # Not subscribed yet (or reconnecting): a subscription wakes every
                # waiter; if none comes within a poll interval, read again.
                await wait_woken(waiter, min(timeout, self.poll_interval))
                if not notifier.live:
                    return False
                waiter = rearm(notifier, key, waiter)
            if not await self._still_held(key):
                return True
            ended = await wait_woken(waiter, timeout)
            if lost(waiter):
                # The listener lost its connection: this process cannot hear the
                # release. Load now (one timeout), rather than wait it out blind.
                raise NotificationsLostError("lease notifications lost: the connection died")
            return ended
        finally:
            notifier.unwatch(key, waiter)

    async def _still_held(self, key: str) -> bool:
        reply = await self._script(_lua.READ, self._read_sha, self._check_args(key))
        return int(reply[2]) != 0
