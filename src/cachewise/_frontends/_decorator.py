"""``cached``: the decorator both front ends return."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from cachewise.keys import KeyTemplate, function_key, function_name

if TYPE_CHECKING:
    from cachewise._frontends.aio import AsyncCache
    from cachewise._frontends.sync import Cache

P = ParamSpec("P")
R = TypeVar("R")


class KeyBuilder:
    """Builds the key for one call of a decorated function."""

    __slots__ = ("_name", "_signature", "_template")

    def __init__(self, func: Callable[..., Any], key: str | None) -> None:
        self._signature = inspect.signature(func)
        self._name = function_name(func)
        self._template = None if key is None else KeyTemplate(key)
        if self._template is not None:
            self._template.check_names(list(self._signature.parameters), self._name)

    def __call__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        # bind() raises the same TypeError the function would for a bad call.
        bound = self._signature.bind(*args, **kwargs)
        # Defaults applied, so f(1) and f(user_id=1) and f() with user_id=1 agree.
        bound.apply_defaults()
        if self._template is not None:
            return self._template.format(bound.arguments)
        return function_key(self._name, bound)


class _Cached(Generic[P, R]):
    """What both decorated flavours share: the key builder and method binding."""

    def __init__(self, func: Callable[P, Any], key: str | None, ttl: float | None) -> None:
        self.ttl = ttl
        self._keys = KeyBuilder(func, key)
        # Name, docstring, module and __wrapped__ of the decorated function.
        functools.update_wrapper(self, func)  # type: ignore[arg-type]

    def key_for(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """The cache key (without namespace) a call with these arguments uses."""
        return self._keys(args, kwargs)

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        # Decorating a method: bind like a function would, so that
        # obj.method(x) and obj.method.invalidate(x) both pass obj as self.
        if instance is None:
            return self
        return _BoundCached(self, instance)


class CachedFunction(_Cached[P, R]):
    """A function decorated with ``Cache.cached``: calls go through ``get_or_load``."""

    def __init__(
        self, cache: Cache, func: Callable[P, R], key: str | None, ttl: float | None
    ) -> None:
        super().__init__(func, key, ttl)
        self.cache = cache
        self.__wrapped__ = func

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        func = self.__wrapped__
        result: R = self.cache.get_or_load(
            self._keys(args, kwargs), lambda: func(*args, **kwargs), ttl=self.ttl
        )
        return result

    def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> bool:
        """Delete the entry a call with these arguments would use."""
        return self.cache.delete(self._keys(args, kwargs))


class AsyncCachedFunction(_Cached[P, R]):
    """A coroutine function decorated with ``AsyncCache.cached``."""

    def __init__(
        self,
        cache: AsyncCache,
        func: Callable[P, Awaitable[R]],
        key: str | None,
        ttl: float | None,
    ) -> None:
        super().__init__(func, key, ttl)
        self.cache = cache
        self.__wrapped__ = func

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        func = self.__wrapped__
        result: R = await self.cache.get_or_load(
            self._keys(args, kwargs), lambda: func(*args, **kwargs), ttl=self.ttl
        )
        return result

    async def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> bool:
        """Delete the entry a call with these arguments would use."""
        return await self.cache.delete(self._keys(args, kwargs))


class _BoundCached:
    """A cached function bound to an instance (the method form)."""

    __slots__ = ("_func", "_instance")

    def __init__(self, func: _Cached[Any, Any], instance: object) -> None:
        self._func = func
        self._instance = instance

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._func(self._instance, *args, **kwargs)  # type: ignore[operator]

    def invalidate(self, *args: Any, **kwargs: Any) -> Any:
        """Delete the entry this bound call would use."""
        return self._func.invalidate(self._instance, *args, **kwargs)  # type: ignore[attr-defined]

    def key_for(self, *args: Any, **kwargs: Any) -> str:
        """The key this bound call would use."""
        return self._func.key_for(self._instance, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._func, name)


def is_async_callable(func: object) -> bool:
    """Whether calling ``func`` gives a coroutine (functions, partials, callables)."""
    if inspect.iscoroutinefunction(func):
        return True
    call = getattr(func, "__call__", None)  # noqa: B004 - we want the method itself
    return call is not None and inspect.iscoroutinefunction(call)
