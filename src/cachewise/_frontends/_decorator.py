"""What ``cached`` and ``invalidates`` of both front ends share: keys, invalidation
templates, after-commit hooks. The flavours' own pieces are in ``_decorator_async``
(and ``_decorator_sync``, generated from it)."""

from __future__ import annotations

import collections.abc
import functools
import importlib
import inspect
import logging
import threading
import typing
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Generic, Literal, ParamSpec, Protocol, TypeVar

from cachewise import _forksafe
from cachewise._errors import CacheError
from cachewise.backends._memory import MemoryBackend
from cachewise.invalidation import AFTER_COMMIT
from cachewise.keys import (
    ArgFilter,
    KeyTemplate,
    claim_default_name,
    default_key_naming,
    function_key,
    function_name,
)

if TYPE_CHECKING:
    from cachewise._frontends.aio import AsyncCache
    from cachewise._frontends.sync import Cache

P = ParamSpec("P")
R = TypeVar("R")

logger = logging.getLogger("cachewise")


OnMaxKeys = Literal["warn", "bypass", "raise"]


class KeyCardinalityError(CacheError, RuntimeError):
    """A key template produced more distinct keys than its ``max_keys``."""


class KeyBuilder:
    """Builds the key (and tags) for one call of a decorated function.

    ``max_keys`` (opt-in) guards the template's cardinality: past that many distinct
    keys, ``on_max_keys`` decides: ``"warn"`` logs once and keeps caching,
    ``"bypass"`` calls through without caching new keys, ``"raise"`` raises
    ``KeyCardinalityError``. Only ``max_keys`` keys are remembered.
    """

    __slots__ = (
        "__weakref__",
        "_filter",
        "_first_call_pending",
        "_func",
        "_key_name",
        "_lock",
        "_max_keys",
        "_name",
        "_on_max_keys",
        "_seen",
        "_shared",
        "_signature",
        "_tags",
        "_template",
        "_unclaim",
        "_warned",
    )

    def __init__(
        self,
        func: Callable[..., Any],
        key: str | None,
        tags: Sequence[str] = (),
        max_keys: int | None = None,
        on_max_keys: OnMaxKeys = "warn",
        shared: bool = False,
        ignore: Iterable[str | type] = (),
    ) -> None:
        self._signature = inspect.signature(func)
        self._filter = ArgFilter(ignore, self._signature.parameters)
        self._name = function_name(func)
        self._func = func
        # Default keys start with a name that tells apart functions sharing a
        # qualname (lambdas, closures of one factory): see default_key_name.
        self._key_name = self._name
        # Named at decoration (so that what cannot be named fails there), and again
        # at the first call: a name the closure (or a helper it captures) uses may
        # be bound only after decoration (a placeholder set below it).
        self._shared = shared
        self._unclaim: Callable[[], Any] | None = None
        self._first_call_pending = key is None
        if key is None:
            self._key_name = self._claim()
        params = list(self._signature.parameters)
        self._template = None if key is None else KeyTemplate(key)
        if self._template is not None:
            self._template.check_names(params, self._name)
        if isinstance(tags, str):
            raise TypeError("tags must be a list of templates, not a str")
        self._tags = tuple(KeyTemplate(tag) for tag in tags)
        for template in self._tags:
            template.check_names(params, self._name)
        if max_keys is not None and (isinstance(max_keys, bool) or not isinstance(max_keys, int)):
            raise TypeError("max_keys must be an int")
        if max_keys is not None and max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {max_keys}")
        if on_max_keys not in ("warn", "bypass", "raise"):
            raise ValueError(f"on_max_keys must be warn, bypass or raise, not {on_max_keys!r}")
        self._max_keys = max_keys
        self._on_max_keys = on_max_keys
        self._seen: set[str] = set()
        self._warned = False
        self._lock = threading.Lock()
        _forksafe.register(self)

    def _claim(self) -> str:
        name, fingerprint = default_key_naming(self._func, self._shared)
        if self._unclaim is not None and name == self._key_name:
            return name  # (claimed already)
        unclaim = claim_default_name(name, fingerprint, self)
        if self._unclaim is not None:
            self._unclaim()  # the name taken at decoration, now replaced
        self._unclaim = unclaim
        return name

    def _first_call(self) -> None:
        with self._lock:  # (concurrent first calls: every one gets the final name)
            if self._first_call_pending:
                self._key_name = self._claim()
                self._first_call_pending = False

    def _fork_locks(self) -> list[threading.Lock]:
        return []

    def _after_fork_child(self) -> None:
        self._lock = threading.Lock()

    @property
    def template(self) -> str:
        """The key template, or a description of the default key."""
        return self._template.template if self._template is not None else f"{self._name}(...)"

    @property
    def tag_templates(self) -> tuple[str, ...]:
        """The tag templates."""
        return tuple(t.template for t in self._tags)

    def build(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
        """The key and the tags for a call."""
        # bind() raises the same TypeError the function would for a bad call.
        bound = self._signature.bind(*args, **kwargs)
        # Defaults applied, so f(1) and f(user_id=1) and f() with user_id=1 agree.
        bound.apply_defaults()
        values = bound.arguments
        if self._template is not None:
            key = self._template.format(values)
        else:
            if self._first_call_pending:
                self._first_call()
            key = function_key(self._key_name, bound, self._filter)
        return key, tuple(t.format(values) for t in self._tags)

    def __call__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        return self.build(args, kwargs)[0]

    def admit(self, key: str) -> bool:
        """Whether to cache this key (the cardinality guard; always, without one)."""
        limit = self._max_keys
        if limit is None or key in self._seen:
            return True
        with self._lock:
            if len(self._seen) < limit:
                self._seen.add(key)
                return True
            if self._on_max_keys == "raise":
                raise KeyCardinalityError(
                    f"key template {self.template!r} of {self._name} produced more than "
                    f"{limit} distinct keys (max_keys)"
                )
            if not self._warned:
                self._warned = True
                logger.warning(
                    "cachewise: key template %r of %s produced more than %d distinct keys; %s",
                    self.template,
                    self._name,
                    limit,
                    "new keys bypass the cache" if self._on_max_keys == "bypass" else "check it",
                )
            return self._on_max_keys == "warn"


_UNRESOLVED: Any = object()


def return_type(func: Callable[..., Any]) -> Any:
    """What ``func`` declares it returns (an ``async def``'s awaited value), or
    None when it declares nothing (no annotation, or ``None``). ``Any`` stands
    for ``Any`` and for an annotation that does not resolve (a class imported only
    under ``TYPE_CHECKING``): a structured value is then refused at the write
    (counted, logged), rather than written and missed on every read."""
    try:
        declared = typing.get_type_hints(func).get("return")
    except Exception:
        # Another annotation does not resolve (a parameter's type imported only
        # under TYPE_CHECKING): the return annotation alone may still.
        declared = getattr(func, "__annotations__", {}).get("return")
        if isinstance(declared, str):
            try:
                declared = eval(declared, getattr(func, "__globals__", {}))
            except Exception:
                logger.warning(
                    "cachewise: the return annotation %r of %s does not resolve at run "
                    "time (imported only under TYPE_CHECKING?); structured values it "
                    "returns cannot be read back from a shared store, and are not cached",
                    declared,
                    function_name(func),
                )
                return typing.Any
    if typing.get_origin(declared) in (collections.abc.Awaitable, collections.abc.Coroutine):
        declared = typing.get_args(declared)[-1]  # (a callable declared -> Awaitable[T])
    if declared is None or declared is type(None):
        return None
    return declared


class _Cached(Generic[P, R]):
    """What both decorated flavours share: the key builder and method binding."""

    def __init__(self, func: Callable[P, Any], keys: KeyBuilder, ttl: float | None) -> None:
        self.ttl = ttl
        self._keys = keys
        # The return annotation is what a shared backend rebuilds values with;
        # resolved at the first call (it may name a class defined below).
        self._type: Any = _UNRESOLVED
        # Name, docstring, module and __wrapped__ of the decorated function.
        functools.update_wrapper(self, func)  # type: ignore[arg-type]

    def key_for(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """The cache key (without namespace) a call with these arguments uses."""
        return self._keys(args, kwargs)

    def _value_type(self) -> Any:
        declared = self._type
        if declared is _UNRESOLVED:
            # Only a store that decodes needs it (the memory backend keeps the
            # objects themselves): on memory, the typed path's cost is saved.
            cache: Any = self.cache  # type: ignore[attr-defined]
            decodes = not isinstance(cache.backend, MemoryBackend)
            wrapped = self.__wrapped__  # type: ignore[attr-defined]
            declared = self._type = return_type(wrapped) if decodes else None
        return declared

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        # Decorating a method: bind like a function would, so that
        # obj.method(x) and obj.method.invalidate(x) both pass obj as self.
        if instance is None:
            return self
        return _BoundCached(self, instance)


class Invalidator:
    """The templates of an ``invalidates`` declaration, filled per call."""

    __slots__ = ("_keys", "_name", "_signature", "_tags", "name")

    def __init__(self, func: Callable[..., Any], keys: Sequence[str], tags: Sequence[str]) -> None:
        if isinstance(tags, str):
            raise TypeError("tags must be a list of templates, not a str")
        if not keys and not tags:
            raise ValueError("invalidates() needs at least one key or tag template")
        self._signature = inspect.signature(func)
        self._name = self.name = function_name(func)
        params = list(self._signature.parameters)
        self._keys = tuple(KeyTemplate(k) for k in keys)
        self._tags = tuple(KeyTemplate(t) for t in tags)
        for template in (*self._keys, *self._tags):
            template.check_names(params, self._name)

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> inspect.BoundArguments:
        """A call's arguments by parameter, defaults applied (``TypeError`` for a
        call the function would refuse)."""
        bound = self._signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return bound

    def fill(self, bound: inspect.BoundArguments) -> tuple[list[str], list[str]]:
        """The keys and tags a call invalidates."""
        values = bound.arguments
        return [k.format(values) for k in self._keys], [t.format(values) for t in self._tags]

    def values(self, bound: inspect.BoundArguments) -> list[Any]:
        """Every argument of a call, ``*args`` and ``**kwargs`` spread out: where an
        after-commit hook looks for the session or connection."""
        found: list[Any] = []
        for name, value in bound.arguments.items():
            kind = self._signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_POSITIONAL:
                found.extend(value)
            elif kind is inspect.Parameter.VAR_KEYWORD:
                found.extend(value.values())
            else:
                found.append(value)
        return found


AfterCommitName = Literal["sqlalchemy", "django", "dbapi"]


class AfterCommitHook(Protocol):
    """How ``invalidates(..., after_commit=NAME)`` ties a call's invalidation to a
    transaction. Each ``cachewise.integrations`` module that can provides one
    (its ``_after_commit_hook``), built on its own after-commit helper."""

    def before(self, arguments: list[Any]) -> Any:
        """Before the write: find what the invalidation will hang on among the
        call's ``arguments`` and return it (with whatever ``after`` needs), or
        raise ``TypeError`` (nothing is written then)."""

    def after(self, found: Any, keys: list[str], tags: list[str]) -> bool:
        """Once the write returned (or raised): register ``keys`` and ``tags`` to be
        invalidated when the transaction in ``found`` commits (dropped if it rolls
        back).
        ``True``: the invalidation must (also) run now, because the write has
        committed already or there is no transaction to wait for."""


def after_commit_hook(
    name: str | None, cache: Cache | AsyncCache, invalidator: Invalidator, *, is_async: bool
) -> AfterCommitHook | None:
    """The hook for ``after_commit=name`` (``None``: invalidate on return). The
    integration is imported here, at decoration, so a missing extra or a cache it
    cannot serve fails there, not at the first write."""
    if name is None:
        return None
    if name not in AFTER_COMMIT:
        raise ValueError(
            f"after_commit must be one of {', '.join(map(repr, AFTER_COMMIT))} or None, "
            f"not {name!r}"
        )
    module = importlib.import_module(f"cachewise.integrations.{name}")
    hook: AfterCommitHook = module._after_commit_hook(
        cache, is_async=is_async, function=invalidator.name
    )
    return hook


def after_failure(
    hook: AfterCommitHook | None, found: Any, keys: list[str], tags: list[str]
) -> bool:
    """Whether to invalidate at once after a write that raised.

    A write that raises may have written before it did (the caller may catch
    the exception and commit), or committed (a failure after its commit): what
    it invalidates is invalidated all the same, the same way as on a return
    (deletes are cheap; a missed one is a stale value for a whole TTL). With an
    after-commit hook the invalidation is registered with the transaction, and
    dropped if it rolls back. Where the hook cannot follow the transaction (a
    DB-API write that left one open with no cachewise block), it runs at once;
    the write's own exception propagates in every case."""
    if hook is None:
        return True
    try:
        return hook.after(found, keys, tags)
    except Exception:
        return True


def failed_after_failure(invalidator: Invalidator, exc: BaseException, error: Exception) -> None:
    """An invalidation after a write that raised failed too: logged, not raised
    (the write's exception is the one its caller must see)."""
    logger.error(
        "cachewise: invalidating after %s() raised %s failed (%s: %s); "
        "the values it covers may be stale until they expire",
        invalidator.name,
        type(exc).__name__,
        type(error).__name__,
        error,
        exc_info=error,
    )


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


def check_not_generator(func: object, decorator: str) -> None:
    """Refuse a generator function: its result is consumed once, so a cached one
    would come back exhausted (an empty iterator) from the second call on, and an
    invalidating one would write after its invalidation."""
    call = getattr(func, "__call__", None)  # noqa: B004 - we want the method itself
    if any(inspect.isgeneratorfunction(f) or inspect.isasyncgenfunction(f) for f in (func, call)):
        raise TypeError(
            f"{getattr(func, '__qualname__', func)!s} is a generator function: its body "
            "runs only as the generator is consumed, after the cache is done with the "
            "call (a cached generator comes back exhausted); "
            f"{decorator}() a function that returns a list instead"
        )


def is_async_callable(func: object) -> bool:
    """Whether calling ``func`` gives a coroutine (functions, partials, callables)."""
    if inspect.iscoroutinefunction(func):
        return True
    call = getattr(func, "__call__", None)  # noqa: B004 - we want the method itself
    return call is not None and inspect.iscoroutinefunction(call)
