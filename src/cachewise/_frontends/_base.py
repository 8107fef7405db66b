"""What ``Cache`` and ``AsyncCache`` share that involves no I/O and no waiting."""

from __future__ import annotations

import contextlib
import inspect
import itertools
import logging
import os
import random
import time
from collections.abc import (
    AsyncIterator,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from typing import Any

from cachewise import _typed
from cachewise._core.entry import Entry
from cachewise._core.errors import ErrorKind, classify
from cachewise._core.flights import Served
from cachewise._core.policy import Policy, Seconds, check_seconds, is_fresh, make_entry
from cachewise._errors import CacheClosedError, CircuitOpenError
from cachewise._frontends._decorator import KeyBuilder, OnMaxKeys
from cachewise._frontends._group import CacheGroup
from cachewise._frontends._held import HeldMixin, HeldView
from cachewise._sentinel import MISSING
from cachewise._stats import CacheStats, Counters
from cachewise.backends._memory import MemoryBackend
from cachewise.backends._protocol import BackendStats
from cachewise.invalidation import REGISTRY, ReadSpec, Registry, WriteSpec
from cachewise.keys import (
    SHORT_KEY_CHARS,
    check_key,
    check_key_text,
    check_namespace,
    check_version,
    function_name,
    key_prefix,
    normalize_key,
)

logger = logging.getLogger("cachewise")

Clock = Callable[[], float]

# How many distinct tag tuples _full_tags remembers.
_TAG_MEMO = 4096
#: The most tags one entry may carry.
MAX_ENTRY_TAGS = 1000

# At most one warning per this many seconds per cache for degraded backend calls;
# every failure is still counted.
_WARN_EVERY = 10.0


# Lease tokens: unique per process (random prefix) and per lease (a counter), with
# no system call per lease. next() on itertools.count is atomic under the GIL.
# Process facts, not shared state: what tells this process (and each cache in it,
# _cache_ids) apart from the others; a forked child draws a new prefix.
_token_prefix = os.urandom(8).hex()
_token_counter = itertools.count()
_cache_ids = itertools.count()


def check_reusable(value: object) -> None:
    """Refuse a value that can be used only once (a generator, an iterator, an
    un-awaited coroutine): the first reader would consume it, every later hit
    would get it exhausted. Cheap for the common values (one type check)."""
    if type(value) in _PLAIN_VALUES:
        return
    if isinstance(value, (Iterator, AsyncIterator, Coroutine)):
        if inspect.iscoroutine(value):
            value.close()  # never awaited by anyone: close it quietly
        raise TypeError(
            f"a {type(value).__name__} can be used only once, so it cannot be cached "
            "(every hit after the first would get it exhausted); cache a list of its "
            "items instead"
        )


_PLAIN_VALUES = frozenset({str, bytes, int, float, bool, type(None), list, dict, tuple, set})


def _new_token_prefix() -> None:
    # A forked child must not reuse its parent's tokens: it would own its leases.
    global _token_prefix
    _token_prefix = os.urandom(8).hex()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_token_prefix)


def new_token(prefix: str = "") -> str:
    """A lease owner token no other process or lease will use. With a cache's
    ``prefix`` (``_token_prefix`` of the cache), the token says which cache owns it:
    a lease of our own with no load of ours in flight is orphaned (its release
    failed) and the next read may take it over."""
    return f"{prefix or _token_prefix + ':'}{next(_token_counter)}"


def check_ttl(ttl: Seconds | None) -> float | None:
    """Validate a per-call ``ttl`` (``None`` means the cache's default)."""
    return None if ttl is None else check_seconds("ttl", ttl)


def constructor_options(cls: type) -> frozenset[str]:
    """The options a front end's constructor takes by name, ``backend`` aside:
    ``from_url`` hands these to the cache and the rest to the backend."""
    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return frozenset(
        name
        for name, parameter in inspect.signature(cls).parameters.items()
        if name != "backend" and parameter.kind in kinds
    )


def check_loader(loader: object) -> None:
    """Raise ``TypeError`` if ``loader`` is not callable."""
    if not callable(loader):
        raise TypeError(f"loader must be a zero-argument callable, not {type(loader).__name__}")


def cache_from_url(
    cls: Any, url: str, flavour: Any, serializer: Any, options: dict[str, Any]
) -> Any:
    """``from_url`` of both front ends: the keywords split between the backend and
    the cache, the cache owning its backend, and held invalidations shared with
    the other caches of the same server."""
    from cachewise._url import backend_from_url, server_identity, split_options

    backend_options, cache_options = split_options(url, options, constructor_options(cls))
    backend = backend_from_url(url, flavour, serializer=serializer, **backend_options)
    cache = cls(backend, **cache_options)
    cache._owns_backend = True
    server = server_identity(url, **backend_options)
    if server is not None:
        cache._share_held(server)
    return cache


class CacheBase(HeldMixin):
    """Options, keys, entry creation and counters, shared by both front ends
    (held invalidations: ``HeldMixin``)."""

    _backend: Any  # (set by each front end)

    def __init__(
        self,
        *,
        namespace: str = "",
        ttl: Seconds = 300.0,
        jitter: float = 0.1,
        stale_ttl: Seconds = 0.0,
        negative_ttl: Seconds = 30.0,
        early_refresh: float = 1.0,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        serve_stale: bool = True,
        is_negative: Callable[[Any], bool] | None = None,
        max_pending_refreshes: int = 256,
        version: int | str | None = None,
        group: CacheGroup | None = None,
        registry: Registry | None = None,
    ) -> None:
        check_namespace(namespace)
        version_text = check_version(version)
        if clock is not None and not callable(clock):
            raise TypeError("clock must be a zero-argument callable returning seconds")
        if rng is not None and not isinstance(rng, random.Random):
            raise TypeError("rng must be a random.Random instance")
        if isinstance(max_pending_refreshes, bool) or not isinstance(max_pending_refreshes, int):
            raise TypeError("max_pending_refreshes must be an int")
        if max_pending_refreshes < 0:
            raise ValueError(f"max_pending_refreshes must be >= 0, got {max_pending_refreshes}")
        if group is not None and not isinstance(group, CacheGroup):
            raise TypeError(f"group must be a CacheGroup, not {type(group).__name__}")
        if registry is not None and not isinstance(registry, Registry):
            raise TypeError(f"registry must be a Registry, not {type(registry).__name__}")
        extra = {} if is_negative is None else {"is_negative": is_negative}
        self._policy = Policy(
            ttl=check_seconds("ttl", ttl),  # (a timedelta becomes seconds here)
            jitter=jitter,
            stale_ttl=check_seconds("stale_ttl", stale_ttl),
            negative_ttl=check_seconds("negative_ttl", negative_ttl),
            early_refresh=early_refresh,
            serve_stale=bool(serve_stale),
            **extra,
        )
        self._namespace = namespace
        self._version = version
        # "ns:", or "ns@v2:" when versioned: bumping the version moves every key (and
        # tag) of the cache to new names at once, in O(1); old entries age out by
        # TTL. Unambiguous (see keys.key_prefix): no two caches share a name.
        self._prefix = key_prefix(namespace, version_text)
        self._clock: Clock = clock or time.time
        # Deadlines and timings (lease waits, fast-failure retries, log rate limits)
        # read this clock: a test may swap it for a fake one.
        self._monotonic: Clock = time.monotonic
        self._rng = rng or random.Random()
        self._counters = Counters()
        self._max_pending = max_pending_refreshes
        self._closed = False
        self._owns_backend = False
        self._stats_source: object = None
        self._last_warning = float("-inf")
        self._encode_warned: set[str] = set()  # refused types already logged
        self._tag_memo: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._registry = REGISTRY if registry is None else registry
        self._init_held(CacheGroup.default if group is None else group)
        self._cache_id = next(_cache_ids)

    # -- public, read-only --------------------------------------------------------

    @property
    def namespace(self) -> str:
        """The namespace every key of this cache is prefixed with."""
        return self._namespace

    @property
    def policy(self) -> Policy:
        """The validated freshness options."""
        return self._policy

    @property
    def group(self) -> CacheGroup:
        """The group this cache shares held invalidations and counts with
        (``CacheGroup.default`` unless given ``group=``)."""
        return self._group

    @property
    def registry(self) -> Registry:
        """The invalidation map this cache's ``cached`` and ``invalidates``
        declarations join (``cachewise.invalidation.REGISTRY`` unless given
        ``registry=``)."""
        return self._registry

    @property
    def closed(self) -> bool:
        """Whether ``close()`` / ``aclose()`` was called."""
        return self._closed

    def stats(self) -> CacheStats:
        """A snapshot of every counter (see ``CacheStats``)."""
        source = self._stats_source
        evictions = source.evictions if isinstance(source, BackendStats) else 0
        decode_errors = getattr(source, "decode_errors", 0)
        self._counters.invalidations_pending = self._held.pending() if self._unsettled else 0
        return self._counters.snapshot(
            evictions,
            decode_errors if isinstance(decode_errors, int) else 0,
            breaker_state=str(getattr(source, "breaker_state", "none")),
            breaker_opens=int(getattr(source, "breaker_opens", 0)),
            breaker_rejections=int(getattr(source, "breaker_rejections", 0)),
        )

    # -- helpers for the shells ---------------------------------------------------

    @property
    def version(self) -> int | str | None:
        """The key version (``None``: unversioned)."""
        return self._version

    def _full_key(self, key: object) -> str:
        """Validate, namespace and (if long) hash a key: ``TypeError`` for a
        non-str, ``ValueError`` for an empty key or one with whitespace or control
        characters (the whole key is checked, before any hashing)."""
        return normalize_key(self._prefix + check_key(key))

    def _full_tags(self, tags: Iterable[str]) -> tuple[str, ...]:
        """Namespace and validate tags (de-duplicated, order kept).

        Lists and tuples are remembered, so a hot tagged read does not redo the work
        on every hit.
        """
        # Lists and tuples of str are remembered by value (str elements hash).
        key = tags if tags.__class__ is tuple else tuple(tags) if tags.__class__ is list else None
        if key is not None:
            try:
                known = self._tag_memo.get(key)
            except TypeError:  # an unhashable element: not a tag; _build_tags says so
                key = known = None
            if known is not None:
                return known
        full = self._build_tags(tags)
        if key is not None:
            if len(self._tag_memo) >= _TAG_MEMO:
                self._tag_memo.clear()  # bounded; a hit rate that low is not worth more
            self._tag_memo[key] = full
        return full

    def _entry_tags(self, tags: Iterable[str]) -> tuple[str, ...]:
        """``_full_tags`` for the tags an entry will carry: at most
        ``MAX_ENTRY_TAGS`` of them (each is checked on every read of the entry,
        and the wire envelope counts them in 16 bits)."""
        full = self._full_tags(tags)
        if len(full) > MAX_ENTRY_TAGS:
            raise ValueError(
                f"an entry may carry at most {MAX_ENTRY_TAGS} tags, got {len(full)}; "
                "tag it with a broader tag instead"
            )
        return full

    def _build_tags(self, tags: Iterable[str]) -> tuple[str, ...]:
        if isinstance(tags, str):
            raise TypeError("tags must be a list of str, not a str")
        full: dict[str, None] = {}
        for tag in tags:
            if not isinstance(tag, str):
                raise TypeError(f"tags must be str, not {type(tag).__name__}")
            if not tag:
                raise ValueError("tags must be non-empty")
            full[normalize_key(check_key_text(self._prefix + tag))] = None
        return tuple(full)

    def _new_entry(
        self,
        value: Any,
        now: float,
        ttl: float | None,
        delta: float,
        negative: bool,
        tags: tuple[str, ...] = (),
        stamp: Any = None,
    ) -> Entry | None:
        if value is MISSING:  # a loader that returned the miss marker: not stored
            return None
        return make_entry(
            value,
            now=now,
            ttl=ttl,
            delta=delta,
            policy=self._policy,
            u=self._rng.random(),
            negative=negative,
            tags=tags,
            stamp=stamp,
        )

    def _init_discard(self, backend: object) -> None:
        # Optional capability: compare-and-delete of an entry seen past its grace window.
        discard = getattr(backend, "discard", None)
        self._discard: Callable[[str, Entry], bool] | None = (
            discard if getattr(backend, "nonblocking", False) and callable(discard) else None
        )

    def _drop_expired(self, full: str, entry: Entry | None, now: float) -> None:
        """Lazy expiry: remove an entry found past its grace window (memory only)."""
        if self._discard is not None and entry is not None and now >= entry.stale_until:
            try:
                self._discard(full, entry)
            except Exception as exc:
                self._degraded("discard", exc)

    def _count_served(self, served: Served, negative: bool) -> None:
        """Count one read-through by how its value came."""
        counters = self._counters
        if served is Served.HIT:
            counters.hits += 1
            if negative:
                counters.negative_hits += 1
        elif served is Served.STALE:
            counters.stale_served += 1
        else:
            counters.misses += 1

    def _collect_fresh(
        self,
        keys: list[str],
        entries: Sequence[Entry | None] | None,
        view: HeldView = None,
    ) -> dict[str, Any]:
        """``get_many``'s answer: the fresh values among ``entries`` (read for
        ``keys``; ``None`` if the read failed), counted."""
        if entries is None:
            entries = [None] * len(keys)
        now = self._clock()
        found: dict[str, Any] = {}
        for key, entry in zip(keys, entries, strict=True):
            pending = self._covered(view, self._full_key(key), entry)
            if entry is not None and not pending and is_fresh(entry, now):
                self._count_served(Served.HIT, entry.negative)
                found[key] = entry.value
            else:
                self._counters.misses += 1
        return found

    def _entries_for(
        self,
        items: Mapping[str, Any],
        ttl: float | None,
        tags: tuple[str, ...] = (),
        stamp: Any = None,
    ) -> tuple[list[tuple[str, Entry]], list[str]]:
        """``set_many``'s writes: (full key, entry) pairs, and the full keys whose
        lifetime is zero (to delete instead)."""
        now = self._clock()
        pairs: list[tuple[str, Entry]] = []
        dropped: list[str] = []
        for key, value in items.items():
            self._check_value(value)
            full = self._full_key(key)
            entry = self._new_entry(value, now, ttl, 0.0, False, tags, stamp)
            if entry is None:
                dropped.append(full)
            else:
                pairs.append((full, entry))
        return pairs, dropped

    def _hit_key(self, key: object) -> str:
        """The full key when the hit path's shortcut does not apply (a long key, an
        empty one, a str subclass or not a str at all): fully validated, as
        ``_full_key``. (A short key is only namespaced on the hit path; its text is
        checked on the miss path by ``_check_miss``: such a key was never written,
        so it can only miss.)"""
        return self._full_key(key)

    def _check_miss(self, full: str) -> None:
        """On a miss (or a failed read), reject a key no write could have made,
        before any loading: an empty key (``full`` is the bare prefix) or
        whitespace, control characters or lone surrogates (``ValueError``). Only
        short keys need it: longer ones were checked whole by ``_full_key``."""
        if len(full) > SHORT_KEY_CHARS:
            return
        if full == self._prefix:
            raise ValueError("cache keys must be non-empty strings")
        check_key_text(full)

    def _check_names(self, keys: Iterable[str], tags: Iterable[str]) -> None:
        """Raise ``TypeError``/``ValueError`` now for any key or tag this cache
        would refuse (used before a write whose invalidation must not fail)."""
        for key in keys:
            self._full_key(key)
        self._build_tags(tags)

    def _key_builder(
        self,
        func: Callable[..., Any],
        key: str | None,
        tags: Sequence[str],
        max_keys: int | None,
        on_max_keys: OnMaxKeys,
        ignore: Iterable[str | type] = (),
    ) -> KeyBuilder:
        """The keys of a ``cached`` function of this cache. Entries in a store other
        processes share need default keys every process spells alike."""
        shared = not isinstance(self._backend, MemoryBackend)
        return KeyBuilder(func, key, tags, max_keys, on_max_keys, shared, ignore)

    @staticmethod
    def _check_value(value: object) -> None:
        if value is MISSING:
            raise TypeError("MISSING marks a miss; it cannot be stored as a value")
        check_reusable(value)

    @staticmethod
    def _check_keys(keys: object, what: str = "keys") -> None:
        if isinstance(keys, (str, bytes)):
            raise TypeError(
                f"{what} must be an iterable of str, not a single {type(keys).__name__}"
            )

    def _declare_read(
        self, func: Callable[..., Any], keys: Any, ttl: float | None, owner: object = None
    ) -> None:
        """Record a ``cached`` read in the invalidation map, for as long as
        ``owner`` (the decorated function) lives."""
        policy = self._policy
        self._registry.add_read(
            ReadSpec(
                function=function_name(func),
                namespace=self._prefix.rstrip(":"),
                key=keys.template,
                tags=keys.tag_templates,
                ttl=policy.ttl if ttl is None else ttl,
                stale_ttl=policy.stale_ttl,
                negative_ttl=policy.negative_ttl,
            ),
            owner=owner,
        )

    def _declare_write(
        self,
        func: Callable[..., Any],
        keys: tuple[str, ...],
        tags: tuple[str, ...],
        owner: object = None,
        after_commit: str | None = None,
    ) -> None:
        """Record an ``invalidates`` write in the invalidation map, for as long as
        ``owner`` (the wrapper) lives."""
        # The docstring's first paragraph, on one line.
        summary = " ".join((func.__doc__ or "").strip().split("\n\n")[0].split())
        self._registry.add_write(
            WriteSpec(
                function=function_name(func),
                namespace=self._prefix.rstrip(":"),
                keys=keys,
                tags=tags,
                summary=summary,
                after_commit=after_commit or "",
            ),
            owner=owner,
        )

    @contextlib.contextmanager
    def _held_if_failed(self, operation: str, keys: list[str]) -> Iterator[None]:
        """Around a ``set``: a backend failure is counted (not raised) and the keys'
        invalidation held, since the old values may still be there. Interrupted
        mid-write, the write may still land (on the wire): held too, so the settler
        deletes the keys again, fenced against that late write."""
        try:
            yield
        except Exception as exc:
            if classify(exc) is ErrorKind.CALLER:
                raise
            self._degraded(operation, exc)
            self._unsettle(keys=keys)
        except BaseException:
            self._unsettle(keys=keys)
            raise

    def _check_open(self) -> None:
        if self._closed:
            raise CacheClosedError(f"{type(self).__name__} is closed")

    def _refused_write(self, exc: Exception) -> None:
        """A loaded value the codec (or weigher) refused: its callers still get it,
        uncached. Counted, and logged once per refused type: a cache problem
        never turns a working function into an error."""
        self._counters.encode_errors += 1
        kind = getattr(exc, "kind", None)
        name = _typed.class_path(kind) if isinstance(kind, type) else type(exc).__name__
        if name not in self._encode_warned:
            self._encode_warned.add(name)
            logger.warning(
                "cachewise: a loaded value was returned but not cached (%s); see "
                "stats().encode_errors",
                exc,
            )

    def _degraded(self, operation: str, exc: BaseException) -> None:
        """Count a backend failure we are degrading around, and log it (rate-limited).
        Calls an open circuit breaker refused are its own count, not errors."""
        if isinstance(exc, CircuitOpenError):
            return
        self._counters.backend_errors += 1
        now = self._monotonic()
        if now - self._last_warning >= _WARN_EVERY:
            self._last_warning = now
            logger.warning(
                "cachewise: backend %s failed (%s: %s); degrading, see stats().backend_errors",
                operation,
                type(exc).__name__,
                exc,
            )

    @property
    def _token_prefix(self) -> str:
        # Lease tokens of this cache: another cache (or process) is someone else.
        # Read at each use, so a forked child never reuses its parent's prefix.
        return f"{_token_prefix}.{self._cache_id}:"

    def _refresh_failed(self, key: str, exc: BaseException) -> None:
        logger.debug("cachewise: background refresh of %r failed: %r", key, exc)
