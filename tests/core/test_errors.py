"""The one error classifier: whose fault an exception from a backend call is."""

from __future__ import annotations

import asyncio
import warnings

import pytest

import cachewise
from cachewise import AsyncCache, Cache
from cachewise._core.errors import FAST_FAILURE, ErrorKind, classify, retry_fast_failure
from cachewise._errors import TagsUnsupportedError
from cachewise.backends import BackpressureError, CircuitOpenError, PoolTimeoutError
from cachewise.serialization import DecodeError, SerializationError, ValueTooLargeError
from tests.support.stores import AsyncTagless, Tagless

CASES = [
    (SerializationError("no"), ErrorKind.CALLER),
    (ValueTooLargeError("big"), ErrorKind.CALLER),
    (cachewise.WeigherError("weigher"), ErrorKind.CALLER),
    (TagsUnsupportedError("no tags"), ErrorKind.CALLER),
    (BackpressureError("queue"), ErrorKind.NOT_SENT),
    (PoolTimeoutError("pool"), ErrorKind.NOT_SENT),
    (CircuitOpenError("open"), ErrorKind.NOT_SENT),
    (cachewise.NotificationsLostError("quiet"), ErrorKind.NOT_SENT),
    (UnicodeEncodeError("utf-8", "\udcff", 0, 1, "surrogate"), ErrorKind.NOT_SENT),
    (ConnectionError("refused"), ErrorKind.BACKEND),
    (TimeoutError("slow"), ErrorKind.BACKEND),
    (cachewise.BackendError("down"), ErrorKind.BACKEND),
    (TypeError("a backend's own bug"), ErrorKind.BACKEND),
    (DecodeError("garbled"), ErrorKind.BACKEND),
    (asyncio.CancelledError(), ErrorKind.INTERRUPTED),
    (KeyboardInterrupt(), ErrorKind.INTERRUPTED),
    (SystemExit(1), ErrorKind.INTERRUPTED),
]


@pytest.mark.parametrize(("exc", "kind"), CASES, ids=[type(e).__name__ for e, _ in CASES])
def test_classify(exc: BaseException, kind: ErrorKind) -> None:
    assert classify(exc) is kind


def test_tags_unsupported_is_a_type_error() -> None:
    # Callers who caught TypeError for "this backend has no tags" still do.
    assert issubclass(TagsUnsupportedError, TypeError)
    assert cachewise.TagsUnsupportedError is TagsUnsupportedError


@pytest.mark.parametrize(
    ("elapsed", "attempt", "again"),
    [
        (0.0, 1, True),
        (FAST_FAILURE, 1, True),
        (FAST_FAILURE + 0.001, 1, False),  # it waited on the network: no second wait
        (0.0, 2, False),  # one retry at most
    ],
)
def test_retry_fast_failure(elapsed: float, attempt: int, again: bool) -> None:
    assert retry_fast_failure(elapsed, attempt) is again


def test_moved_errors_still_resolve_with_a_warning() -> None:
    for name in ("BackpressureError", "CircuitOpenError", "PoolTimeoutError"):
        assert name not in cachewise.__all__
        with pytest.warns(DeprecationWarning, match=f"cachewise.backends.{name}"):
            assert getattr(cachewise, name) is getattr(cachewise.backends, name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AttributeError):
            cachewise.NoSuchName  # type: ignore[attr-defined]  # noqa: B018


def test_public_names_users_meet_are_importable() -> None:
    from cachewise import DecodeError as Top
    from cachewise import KeyCardinalityError
    from cachewise.backends import LeaseReply

    assert Top is DecodeError
    assert issubclass(KeyCardinalityError, cachewise.CacheError)
    assert LeaseReply._fields  # a named tuple


def test_tags_on_a_tagless_backend_are_the_callers_error_in_both_front_ends() -> None:
    """Once ``Cache`` loaded and silently never cached while ``AsyncCache`` raised:
    now both raise before loading, and nothing is counted as a backend failure."""
    loads: list[str] = []

    def load() -> int:
        loads.append("sync")
        return 1

    with Cache(Tagless()) as cache:  # type: ignore[arg-type]
        with pytest.raises(TagsUnsupportedError, match="does not support tags"):
            cache.get_or_load("k", load, tags=["t"])
        with pytest.raises(TagsUnsupportedError):
            cache.set("k", 1, tags=["t"])
        with pytest.raises(TagsUnsupportedError):
            cache.invalidate_tags("t")
        assert cache.get_or_load("k", load) == 1  # untagged calls work
        assert cache.stats().backend_errors == 0

    async def scenario() -> None:
        async def aload() -> int:
            loads.append("async")
            return 1

        async with AsyncCache(AsyncTagless()) as cache:  # type: ignore[arg-type]
            with pytest.raises(TagsUnsupportedError, match="does not support tags"):
                await cache.get_or_load("k", aload, tags=["t"])
            with pytest.raises(TagsUnsupportedError):
                await cache.set("k", 1, tags=["t"])
            with pytest.raises(TagsUnsupportedError):
                await cache.invalidate_tags("t")
            assert await cache.get_or_load("k", aload) == 1
            assert cache.stats().backend_errors == 0

    asyncio.run(scenario())
    assert loads == ["sync", "async"]
