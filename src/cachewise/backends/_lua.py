"""The Lua scripts behind the Redis backend. Each runs atomically on the server.

Keys of one logical key ``K`` share a hash tag, so on Redis Cluster they live in one
slot and one script can touch them all (``_redis.value_key`` escapes ``K`` so the
tag is never empty):

- ``{K}``          the value (an envelope)
- ``{K}:lease``    the lease: the owner's token, ``PX lock_timeout``
- ``{K}:waiters``  a flag: some process waits for this key's lease holder

A holder that finishes (writes, releases, or loses its lease to an explicit write)
``PUBLISH``es ``K`` on the notification channel when the flag is set, and clears
it; waiters listen on one pub/sub connection per process (``_notify``). Every key
a script writes gets a TTL.
"""

from __future__ import annotations

import hashlib

# Tell the waiters of a key, if any, that its lease ended. KEYS[w] is the waiters
# flag; the channel and the message (the logical key) come in ARGV.
_NOTIFY = """
local function notify(waiters_key, channel, message)
  if redis.call('GET', waiters_key) then
    redis.call('DEL', waiters_key)
    redis.call('PUBLISH', channel, message)
  end
end
"""

#: Read a key, and on a miss take the lease in the same round trip.
#: KEYS: value, lease, waiters. ARGV: token, lease_ms, mode.
#: mode "get":     read only.
#: mode "lease":   read; if absent, take the lease, or flag a waiter.
#: mode "take":    take the lease whatever the value (a reload of an expired value);
#:                 flag a waiter if it is held.
#: mode "refresh": take the lease whatever the value; never wait. A granted refresh
#:                 lease comes with the current value, so the refresher can see that
#:                 a refresh already replaced the entry it meant to refresh.
#: mode "check":   a waiter about to block: if the lease is still held, flag the
#:                 waiter again (a holder that finished since the read cleared the
#:                 flag) and return its pttl; else pttl 0.
#: A token is "<owner>:<n>". A lease held by the same owner (the same cache) is
#: orphaned: the cache reads through its own single-flight first, so it only asks
#: when none of its loads is in flight; the lease is left over from a release that
#: failed. It is taken over at once instead of waited out.
#: Returns {value or nil, granted 0/1, lease pttl in ms (when held)}.
READ = """
local mode = ARGV[3]
if mode == 'check' then
  local held = redis.call('PTTL', KEYS[2])
  if held == -2 then return {false, 0, 0} end
  redis.call('SET', KEYS[3], '1', 'PX', ARGV[2])
  return {false, 0, held}
end
if mode == 'get' or mode == 'lease' then
  local v = redis.call('GET', KEYS[1])
  if v or mode == 'get' then return {v, 0, 0} end
end
local current = false
if mode == 'refresh' then current = redis.call('GET', KEYS[1]) end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {current, 1, 0}
end
local owner = string.match(ARGV[1], '^(.*:)')
local holder = redis.call('GET', KEYS[2])
if owner and holder and string.sub(holder, 1, #owner) == owner then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
  return {current, 1, 0}
end
local pttl = redis.call('PTTL', KEYS[2])
if mode ~= 'refresh' then
  redis.call('SET', KEYS[3], '1', 'PX', ARGV[2])
end
return {false, 0, pttl}
"""

#: The lease holder's write: only while its lease is still the current one.
#: KEYS: value, lease, waiters. ARGV: token, payload, px, channel, message.
#: Returns 1 if written, 0 if the lease was lost (deleted, or expired).
SET_LEASED = (
    _NOTIFY
    + """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('DEL', KEYS[2])
notify(KEYS[3], ARGV[4], ARGV[5])
return 1
"""
)

#: The lease holder gives up (its load failed): drop the lease, wake the waiters.
#: KEYS: lease, waiters. ARGV: token, channel, message.
RELEASE = (
    _NOTIFY
    + """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  notify(KEYS[2], ARGV[2], ARGV[3])
  return 1
end
return 0
"""
)

#: A tag's version, for an entry about to be loaded: created (a fresh random version)
#: if the tag has no record, and its record kept alive at least tag_ttl from now.
#: A stamp is therefore never "no record": a record that later disappears (Redis
#: evicted it under maxmemory, or it expired) reads as a version no entry carries,
#: so every entry of that tag becomes a miss, never a hit again.
#: KEYS: the tag's key. ARGV: a new random version, tag_ttl in ms.
STAMP = """
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return v
"""

#: clear()'s first pass: revoke a lease whoever holds it, and wake its waiters.
#: KEYS: lease, waiters. ARGV: channel, message.
REVOKE = (
    _NOTIFY
    + """
local existed = redis.call('DEL', KEYS[1])
notify(KEYS[2], ARGV[1], ARGV[2])
return existed
"""
)

#: An explicit write or delete. Either way any lease dies with it, so a load in
#: flight anywhere can no longer write what it read before (no stale sets).
#: KEYS: value, lease, waiters. ARGV: mode ('set' | 'del'), payload, px, channel,
#: message. Returns 1 if the value existed (del) or was written (set).
WRITE = (
    _NOTIFY
    + """
-- KEYS: value, lease, waiters, fence. ARGV: 'set' or 'del', payload, px, channel,
-- key, then for a set its issue time (microseconds), for a delete the fence to
-- leave ('' for none), and the fence's lifetime (ms).
-- A set whose answer never came may still be on the wire (a lost packet, TCP
-- retransmitting it for seconds) when a later delete has returned: that delete
-- leaves a fence at the set's issue time, and a set issued no later is refused.
-- A refused set still deletes what it meant to replace (and revokes any load in
-- flight, below): a miss, never the value before it.
local result
if ARGV[1] == 'set' then
  local fence = redis.call('GET', KEYS[4])
  if fence and tonumber(fence) >= tonumber(ARGV[6]) then
    redis.call('DEL', KEYS[1])
    result = -1
  else
    redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
    result = 1
  end
else
  result = redis.call('DEL', KEYS[1])
  if ARGV[6] ~= '' then
    local old = redis.call('GET', KEYS[4])
    if not old or tonumber(old) < tonumber(ARGV[6]) then
      redis.call('SET', KEYS[4], ARGV[6], 'PX', ARGV[7])
    end
  end
end
redis.call('DEL', KEYS[2])
notify(KEYS[3], ARGV[4], ARGV[5])
return result
"""
)


def sha1(script: str) -> str:
    """The SHA1 digest Redis knows a script by (for EVALSHA)."""
    return hashlib.sha1(script.encode()).hexdigest()
