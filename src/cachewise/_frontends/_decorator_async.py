# unasync: async-only
"""What ``AsyncCache.cached`` and ``AsyncCache.invalidates`` return: the asyncio
flavour, and the source of ``_decorator_sync.py`` (see ``scripts/unasync.py``).
What both flavours share lives in ``_decorator``."""
# unasync: end
# unasync: sync-only
# """What ``Cache.cached`` and ``Cache.invalidates`` return: the threaded flavour."""
# unasync: end

from __future__ import annotations

import functools

# unasync: async-only
from collections.abc import Awaitable, Callable

# unasync: end
# unasync: sync-only
# from collections.abc import Callable
# unasync: end
from typing import TYPE_CHECKING

from cachewise._frontends._decorator import (
    AfterCommitHook,
    Invalidator,
    KeyBuilder,
    P,
    R,
    _Cached,
    after_failure,
    failed_after_failure,
)

if TYPE_CHECKING:
    from cachewise._frontends.aio import AsyncCache

__all__ = ["AsyncCachedFunction", "async_invalidating"]


class AsyncCachedFunction(_Cached[P, R]):
    """A function decorated with ``AsyncCache.cached``: calls go through ``get_or_load``."""

    def __init__(
        self,
        cache: AsyncCache,
        func: Callable[P, Awaitable[R]],
        keys: KeyBuilder,
        ttl: float | None,
    ) -> None:
        super().__init__(func, keys, ttl)
        self.cache = cache
        self.__wrapped__ = func

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        func = self.__wrapped__
        key, tags = self._keys.build(args, kwargs)
        if not self._keys.admit(key):
            return await func(*args, **kwargs)
        result: R = await self.cache.get_or_load(
            key, lambda: func(*args, **kwargs), ttl=self.ttl, tags=tags, type=self._value_type()
        )
        return result

    async def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> bool:
        """Delete the entry a call with these arguments would use."""
        return await self.cache.delete(self._keys(args, kwargs))


def async_invalidating(
    cache: AsyncCache,
    func: Callable[P, Awaitable[R]],
    invalidator: Invalidator,
    hook: AfterCommitHook | None = None,
) -> Callable[P, Awaitable[R]]:
    """``func``, invalidating its declared keys and tags after it returns, or, with
    a ``hook``, after the transaction it wrote in commits."""

    @functools.wraps(func)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        # Bad arguments, and keys or tags the cache would refuse, fail before the
        # write: after it, one bad name would leave the others stale.
        bound = invalidator.bind(args, kwargs)
        keys, tags = invalidator.fill(bound)
        cache._check_names(keys, tags)
        found = None if hook is None else hook.before(invalidator.values(bound))
        try:
            result = await func(*args, **kwargs)
        except BaseException as exc:
            # It may have written, or committed, before it raised (or, in asyncio,
            # was cancelled): see after_failure.
            if after_failure(hook, found, keys, tags):
                try:
                    await _invalidate(cache, keys, tags)
                except Exception as error:
                    failed_after_failure(invalidator, exc, error)
            raise
        if hook is None or hook.after(found, keys, tags):
            await _invalidate(cache, keys, tags)
        return result

    return wrapper


async def _invalidate(cache: AsyncCache, keys: list[str], tags: list[str]) -> None:
    if keys:
        await cache.delete_many(keys)
    if tags:
        await cache.invalidate_tags(*tags)
