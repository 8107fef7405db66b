"""Hostile input at every public entry point (issue 9, section 3, "Bad input").

Each table pairs an input with what must happen: a typed error at the call that
passed it (``TypeError`` for a wrong type, ``ValueError`` for a wrong value), or
correct behaviour (the value round-trips, a delete really deletes, a namespace
stays its own). Never a backend failure, a held invalidation, an open breaker or
a hang: every case ends with ``stats()`` clean, and every call runs under a
deadline (a hang fails with a dump of the threads or tasks).

The key, tag, TTL and namespace tables run over every backend and both flavours
through the ``make_cache`` facades of ``conftest.py`` (fake clock, no jitter).
Cases that fail today are listed in ``KNOWN_BREAKS``, the one place to edit as
fixes land: the marks are strict, so a fixed case fails until its entry goes.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import math
import sys
import threading
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest

from cachewise import (
    MISSING,
    AsyncCache,
    BreakerPolicy,
    Cache,
    MemoryBackend,
)
from cachewise.serialization import Codec, PickleSerializer
from cachewise.testing import FakeClock
from tests.conftest import Facade
from tests.support import patient

# Patient client timeouts for this module's Redis tests (see support/patient.py).
redis_url = patient.redis_url
redis_cluster_url = patient.redis_cluster_url

# A backstop for anything the per-call deadline cannot interrupt (a blocked event loop).
pytestmark = pytest.mark.timeout(60)

#: Every call into a cache must return (or raise) within this many seconds.
DEADLINE = 5.0

BACKEND_NAMES = ("memory", "redis", "redis-cluster")
FLAVOURS = ("sync", "async")
REDIS = ("redis", "redis-cluster")

#: Five consecutive failures open a URL-built breaker: repeating each bad call
#: that often shows whether bad input is (wrongly) counted against the backend.
REPEAT = 5


# -- Known breaks --------------------------------------------------------------------
#
# The cases that fail today, by table and case id (and, where it matters, backend
# and flavour). Each becomes a strict xfail: remove the entry when its fix lands.
#
# The issue's own bad-input breaks are pinned below and pass now: 9 (empty keys:
# the "empty" key cases, "get_many-empty-key"), 10 (keys starting with "}" on
# Redis Cluster: "close-brace", "starts-with-close-brace", "reversed-braces"), 13
# ("long-then-*" keys), 14 (the namespace collision tables), 16 (the MISSING
# sentinel on Redis) and 17 ("huge-*" TTLs, "ttl-1e17").


@dataclass(frozen=True)
class Known:
    table: str
    case: str
    reason: str
    backends: tuple[str, ...] = BACKEND_NAMES
    flavours: tuple[str, ...] = FLAVOURS


WEIGHERS_IDS = ("negative", "float", "str", "true", "none", "raises")

KNOWN_BREAKS: list[Known] = [
    # Empty: every case these tables found (the issue's and eight new ones: hashed
    # long-key aliases, clear() of long namespaces, lone surrogates on Redis, bare
    # strings to the bulk methods, MISSING stored as a value, broken weighers, a
    # bool failure_ratio, invalidates() with a badly filled key) is fixed and pinned.
]


def _known(table: str, case: str, backend: str | None, flavour: str | None) -> str | None:
    reasons = [
        known.reason
        for known in KNOWN_BREAKS
        if known.table == table
        and known.case == case
        and (backend is None or backend in known.backends)
        and (flavour is None or flavour in known.flavours)
    ]
    return "; ".join(reasons) or None


def _marks(reason: str | None) -> list[pytest.MarkDecorator]:
    return [pytest.mark.xfail(strict=True, reason=reason)] if reason else []


def matrix(table: str, cases: Sequence[Any]) -> list[Any]:
    """``(case, backend_name, flavour)`` for every backend and flavour, with the
    known breaks marked. ``backend_name`` and ``flavour`` override the conftest
    fixtures of those names, so ``make_cache`` builds the matching cache."""
    return [
        pytest.param(
            case,
            backend,
            flavour,
            marks=_marks(_known(table, case.id, backend, flavour)),
            id=f"{case.id}-{backend}-{flavour}",
        )
        for case in cases
        for backend in BACKEND_NAMES
        for flavour in FLAVOURS
    ]


def plain(table: str, cases: Sequence[Any]) -> list[Any]:
    """One parameter per case (tables that need no backend), known breaks marked."""
    return [
        pytest.param(case, marks=_marks(_known(table, case.id, None, None)), id=case.id)
        for case in cases
    ]


MATRIX = ("case", "backend_name", "flavour")


# -- Calls under a deadline ------------------------------------------------------------


def _thread_dump() -> str:
    out = io.StringIO()
    for ident, frame in sys._current_frames().items():
        out.write(f"\n--- thread {ident}\n")
        traceback.print_stack(frame, file=out)
    return out.getvalue()


def _task_dump(loop: asyncio.AbstractEventLoop) -> str:
    out = io.StringIO()
    for task in asyncio.all_tasks(loop):
        out.write(f"\n--- {task!r}\n")
        task.print_stack(file=out)
    return out.getvalue()


def run(facade: Facade, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, awaited on the facade's loop for ``AsyncCache``;
    fails the test with a dump if it has not returned within ``DEADLINE``."""
    label = getattr(fn, "__name__", repr(fn))
    if facade.flavour == "async":
        loop: asyncio.AbstractEventLoop = facade.loop  # type: ignore[attr-defined]

        async def bounded() -> Any:
            result = fn(*args, **kwargs)
            if inspect.isawaitable(result):
                try:
                    return await asyncio.wait_for(result, DEADLINE)
                except asyncio.TimeoutError:
                    pytest.fail(f"{label} hung past {DEADLINE}s:{_task_dump(loop)}")
            return result

        return loop.run_until_complete(bounded())

    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # handed to the test thread below
            box["error"] = exc

    # A daemon thread, so a call that hangs for good cannot keep pytest from exiting.
    thread = threading.Thread(target=work, name=f"bad-input-{label}", daemon=True)
    thread.start()
    thread.join(DEADLINE)
    if thread.is_alive():
        pytest.fail(f"{label} hung past {DEADLINE}s:{_thread_dump()}")
    if "error" in box:
        raise box["error"]
    return box.get("value")


class Loader:
    """A loader that counts its calls; ``of(facade)`` is the flavour's callable."""

    def __init__(self, value: Any = "loaded") -> None:
        self.value = value
        self.calls = 0

    def __call__(self) -> Any:
        self.calls += 1
        return self.value

    def __cache_key__(self) -> str:
        # A decorated closure over a Loader is named by it (see default_key_name).
        return repr(self.value)

    def of(self, facade: Facade) -> Callable[[], Any]:
        if facade.flavour == "sync":
            return self

        async def load() -> Any:
            return self()

        return load


def decorate(facade: Facade, *args: Any, **kwargs: Any) -> tuple[Any, Loader]:
    """``cache.cached(*args, **kwargs)`` over a one-parameter function ``f(x)``
    (a coroutine function for ``AsyncCache``), and the counter of its calls."""
    body = Loader("computed")
    deco = facade.cache.cached(*args, **kwargs)
    if facade.flavour == "sync":

        def f(x: Any) -> Any:
            return body()

        return deco(f), body

    async def af(x: Any) -> Any:
        return body()

    return deco(af), body


def counters(facade: Facade) -> tuple[int, int, int]:
    stats = facade.stats()
    return stats.backend_errors, stats.invalidations_pending, stats.breaker_opens


def assert_clean(facade: Facade, context: str = "") -> None:
    """No backend error, no held invalidation, no breaker open."""
    errors, pending, opens = counters(facade)
    assert (errors, pending, opens) == (0, 0, 0), (
        f"{context}: backend_errors={errors}, invalidations_pending={pending}, "
        f"breaker_opens={opens}"
    )


Expected = type[Exception] | tuple[type[Exception], ...]


def _names(error: Expected) -> str:
    errors = error if isinstance(error, tuple) else (error,)
    return " or ".join(e.__name__ for e in errors)


def expect_error(facade: Facade, label: str, error: Expected, call: Callable[[], Any]) -> list[str]:
    """Problems with ``call``: it must raise ``error`` and leave the counters alone."""
    before = counters(facade)
    problems: list[str] = []
    try:
        result = call()
    except error:
        pass
    except Exception as exc:
        problems.append(f"{label}: raised {type(exc).__name__}({exc}), not {_names(error)}")
    else:
        problems.append(f"{label}: returned {result!r} instead of raising {_names(error)}")
    after = counters(facade)
    if after != before:
        problems.append(
            f"{label}: (backend_errors, invalidations_pending, breaker_opens) "
            f"went from {before} to {after}"
        )
    return problems


# -- Keys ------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyCase:
    id: str
    key: Any
    error: type[Exception] | None = None  # None: the key must work
    namespace: str = ""


LONG = "k" * 10_000

BAD_KEYS = [
    KeyCase("int", 1, TypeError),
    KeyCase("float", 1.5, TypeError),
    KeyCase("bytes", b"user:1", TypeError),
    KeyCase("none", None, TypeError),
    KeyCase("tuple", ("user", 1), TypeError),
    KeyCase("int-in-namespace", 7, TypeError, namespace="app"),
    KeyCase("empty", "", ValueError),
    KeyCase("empty-in-namespace", "", ValueError, namespace="app"),
    KeyCase("space", "user 1", ValueError),
    KeyCase("only-space", " ", ValueError),
    KeyCase("tab", "user\t1", ValueError),
    KeyCase("newline", "user:1\n", ValueError),
    KeyCase("crlf-injection", "user:1\r\nFLUSHALL", ValueError),
    KeyCase("nbsp", "user\u00a01", ValueError),
    KeyCase("line-separator", "user\u20281", ValueError),
    KeyCase("nul", "user\x001", ValueError),
    KeyCase("del", "user\x7f", ValueError),
    KeyCase("next-line", "user\x851", ValueError),
    KeyCase("lone-surrogate", "user\ud800", ValueError),
    KeyCase("long-then-lone-surrogate", "k" * 250 + "\udfff", ValueError),
    KeyCase("escape", "\x1b[31muser", ValueError),
    KeyCase("space-in-namespace", "a b", ValueError, namespace="app"),
    # Past byte 200 only a prefix of the key is kept (then a digest): the check
    # must still see the whole key (break 13).
    KeyCase("long-then-space", "k" * 250 + " x", ValueError),
    KeyCase("long-then-newline", "k" * 250 + "\n", ValueError),
    KeyCase("long-then-nul", "k" * 5_000 + "\x00", ValueError),
    KeyCase("long-multibyte-then-tab", "é" * 150 + "\t", ValueError),
    KeyCase("long-then-space-in-namespace", "k" * 250 + " x", ValueError, namespace="app"),
]

OK_KEYS = [
    KeyCase("open-brace", "{"),
    KeyCase("close-brace", "}"),
    KeyCase("starts-with-close-brace", "}user:1"),
    KeyCase("starts-with-close-brace-in-namespace", "}user:1", namespace="app"),
    KeyCase("braced", "{user}:1"),
    KeyCase("empty-braces", "{}"),
    KeyCase("reversed-braces", "}{"),
    KeyCase("brace-mid", "a}b{c"),
    KeyCase("glob-star", "user:*"),
    KeyCase("glob-question", "user:?"),
    KeyCase("glob-class", "user:[a-z]"),
    KeyCase("backslash", "user\\1"),
    KeyCase("escaped-star", "user\\*"),
    KeyCase("colons", "::"),
    KeyCase("lease-lookalike", "user}:lease"),
    KeyCase("tag-lookalike", "user}:tag"),
    KeyCase("hash-lookalike", "user#" + "0" * 32),
    KeyCase("quote", "user:'\"1"),
    KeyCase("very-long", LONG),
    KeyCase("very-long-braces", "}" + "{" * 300 + "}" * 300),
    KeyCase("very-long-multibyte", "ключ" * 2_500),
    KeyCase("very-long-in-namespace", LONG, namespace="app"),
    KeyCase("cyrillic", "ключ:1"),
    KeyCase("cjk", "用户:1"),
    KeyCase("emoji", "🔑:1"),
    KeyCase("combining", "e\u0301"),
    KeyCase("str-subclass", type("Key", (str,), {})("user:1")),
]


def _bad_key_calls(facade: Facade, key: Any, loader: Loader) -> list[tuple[str, Callable[[], Any]]]:
    cache = facade.cache
    load = loader.of(facade)
    return [
        ("get", lambda: run(facade, cache.get, key)),
        ("get(default)", lambda: run(facade, cache.get, key, "default")),
        ("get_or_load", lambda: run(facade, cache.get_or_load, key, load)),
        ("get_or_load(tags)", lambda: run(facade, cache.get_or_load, key, load, tags=["t"])),
        ("set", lambda: run(facade, cache.set, key, "v")),
        ("set(tags)", lambda: run(facade, cache.set, key, "v", tags=["t"])),
        ("set_many", lambda: run(facade, cache.set_many, {key: "v"})),
        ("get_many", lambda: run(facade, cache.get_many, [key])),
        ("delete", lambda: run(facade, cache.delete, key)),
        ("delete_many", lambda: run(facade, cache.delete_many, [key])),
    ]


@pytest.mark.parametrize(MATRIX, matrix("keys", BAD_KEYS))
def test_a_bad_key_is_a_typed_error_at_every_call(
    case: KeyCase, make_cache: Callable[..., Facade]
) -> None:
    assert case.error is not None
    facade = make_cache(namespace=case.namespace)
    loader = Loader()
    problems: list[str] = []
    for _ in range(REPEAT):
        for label, call in _bad_key_calls(facade, case.key, loader):
            problems += expect_error(facade, label, case.error, call)
    if loader.calls:
        problems.append(f"the loader ran {loader.calls} times")
    assert not problems, "\n".join(dict.fromkeys(problems))
    assert_clean(facade, repr(case.key)[:80])


def round_trip(facade: Facade, key: str, make_twin: Callable[[], Facade]) -> None:
    """Every key operation on ``key`` does what it says; ``make_twin()`` is a
    second cache on the same backend and namespace (it sees only what the
    backend holds, so a delete that did not land shows there)."""
    cache = facade.cache
    context = f"key {key[:40]!r}"
    assert run(facade, cache.get, key) is MISSING, context

    first = Loader("loaded")
    assert run(facade, cache.get_or_load, key, first.of(facade)) == "loaded", context
    again = Loader("other")
    assert run(facade, cache.get_or_load, key, again.of(facade)) == "loaded", context
    assert (first.calls, again.calls) == (1, 0), f"{context}: the second read must hit"
    assert run(facade, cache.get, key) == "loaded", context
    twin = make_twin()
    assert run(twin, twin.cache.get, key) == "loaded", f"{context}: not in the backend"

    assert run(facade, cache.delete, key) is True, context
    assert run(facade, cache.get, key) is MISSING, context
    assert run(twin, twin.cache.get, key) is MISSING, f"{context}: the delete did not land"
    reload = Loader("reloaded")
    assert run(facade, cache.get_or_load, key, reload.of(facade)) == "reloaded", context
    assert reload.calls == 1, context

    run(facade, cache.set, key, {"v": 2})
    assert run(facade, cache.get, key) == {"v": 2}, context
    other = key + "-other"
    run(facade, cache.set_many, {key: 3, other: 4})
    assert run(facade, cache.get_many, [key, other]) == {key: 3, other: 4}, context
    assert run(facade, cache.delete_many, [key, other]) == 2, context
    assert run(facade, cache.get_many, [key, other]) == {}, context
    assert run(twin, twin.cache.get_many, [key, other]) == {}, f"{context}: not deleted"

    run(facade, cache.set, key, 5, tags=["t"])
    tagged = Loader("tagged")
    assert run(facade, cache.get_or_load, key, tagged.of(facade), tags=["t"]) == 5, context
    run(facade, cache.invalidate_tags, "t")
    assert run(facade, cache.get, key) is MISSING, f"{context}: invalidate_tags"
    assert run(facade, cache.get_or_load, key, tagged.of(facade), tags=["t"]) == "tagged"

    run(facade, cache.set, key, 6)
    run(facade, cache.clear)
    assert run(facade, cache.get, key) is MISSING, f"{context}: clear"
    assert run(twin, twin.cache.get, key) is MISSING, f"{context}: clear did not land"
    assert_clean(facade, context)
    assert_clean(twin, f"{context} (twin)")


@pytest.mark.parametrize(MATRIX, matrix("keys", OK_KEYS))
def test_an_unusual_key_round_trips(case: KeyCase, make_cache: Callable[..., Facade]) -> None:
    facade = make_cache(namespace=case.namespace)
    round_trip(
        facade,
        case.key,
        lambda: make_cache(namespace=case.namespace, share_backend_of=facade),
    )


@dataclass(frozen=True)
class ArgCase:
    """A decorated ``f(x)`` called with ``x``; ``template`` builds its key."""

    id: str
    x: Any
    template: str | None = "item:{x}"
    error: type[Exception] | None = None


DECORATED = [
    # A template of fields alone filled with "" is the key "%" (see KeyTemplate.format).
    ArgCase("empty-key", "", template="{x}"),
    # Free text fills a template quoted (cachewise.keys.quote): a valid key.
    ArgCase("space", "a b"),
    ArgCase("newline", "a\n"),
    ArgCase("long-then-space", "k" * 250 + " "),
    ArgCase("colon-and-percent", "a:b%20"),
    ArgCase("braces", "}{"),
    ArgCase("starts-with-close-brace", "}a", template="{x}"),
    ArgCase("very-long", LONG),
    ArgCase("unicode", "ключ"),
    ArgCase("default-key-hostile-str", "a b\n{}", template=None),
    ArgCase("default-key-very-long", LONG, template=None),
]


@pytest.mark.parametrize(MATRIX, matrix("decorated", DECORATED))
def test_a_decorated_call_with_a_hostile_argument(
    case: ArgCase, make_cache: Callable[..., Facade]
) -> None:
    facade = make_cache()
    f, body = decorate(facade, case.template)
    if case.error is not None:
        problems = expect_error(facade, "call", case.error, lambda: run(facade, f, case.x))
        problems += expect_error(
            facade, "invalidate", case.error, lambda: run(facade, f.invalidate, case.x)
        )
        assert not problems, "\n".join(problems)
        assert body.calls == 0
    else:
        assert run(facade, f, case.x) == "computed"
        assert run(facade, f, case.x) == "computed"
        assert body.calls == 1, "the second call must hit"
        assert run(facade, f.invalidate, case.x) is True
        assert run(facade, f, case.x) == "computed"
        assert body.calls == 2, "invalidate must really delete"
        assert isinstance(f.key_for(case.x), str)
    assert_clean(facade)


ALIASED = [
    KeyCase("hashed-long-key", "page:" + "x" * 300),
    KeyCase("hashed-long-key-in-namespace", "page:" + "x" * 300, namespace="app"),
]


@pytest.mark.parametrize(MATRIX, matrix("alias", ALIASED))
def test_a_short_key_spelled_like_a_hashed_long_key_is_not_that_key(
    case: KeyCase, make_cache: Callable[..., Facade]
) -> None:
    """Keys past 200 bytes are stored as a prefix and a digest. A short key that
    spells out exactly that form (anyone who controls part of a key can compute it)
    must not read or overwrite the long key's entry: it is refused, or kept apart."""
    from cachewise.keys import normalize_key

    facade = make_cache(namespace=case.namespace)
    cache = facade.cache
    long_key = case.key
    # What the stored name is made of, minus the namespace prefix (which any
    # encoding of the namespace leaves in front of a hashed key).
    prefix = facade.cache._prefix
    alias = normalize_key(prefix + long_key)[len(prefix) :]
    assert alias != long_key
    run(facade, cache.set, long_key, "long")
    try:
        value = run(facade, cache.get, alias)
    except ValueError:
        return
    assert value is MISSING, "the alias reads the long key's entry"
    run(facade, cache.set, alias, "poisoned")
    assert run(facade, cache.get, long_key) == "long", "the alias overwrote the long key's entry"
    assert_clean(facade)


@pytest.mark.parametrize(MATRIX, matrix("missing-value", [KeyCase("missing", "k")]))
def test_storing_the_missing_sentinel_is_refused_or_reads_as_a_miss(
    case: KeyCase, make_cache: Callable[..., Facade]
) -> None:
    """``MISSING`` is the miss: a cache that stores it as a value would hand it to
    ``get(key, default)`` in place of ``default``."""
    facade = make_cache()
    cache = facade.cache
    try:
        run(facade, cache.set, case.key, MISSING)
    except (TypeError, ValueError):
        pass
    assert run(facade, cache.get, case.key, "default") == "default"
    assert run(facade, cache.get_many, [case.key]) == {}
    assert_clean(facade)


@dataclass(frozen=True)
class WriteCase:
    """An ``invalidates`` declaration whose call fills one name badly."""

    id: str
    keys: tuple[str, ...]
    tags: tuple[str, ...]
    y: str  # the badly filled argument


INVALIDATES = [
    WriteCase("second-key-space", ("a:{x}", "b:{y}"), (), "a b"),
    WriteCase("second-key-empty", ("a:{x}", "{y}"), (), ""),
    WriteCase("key-bad-tag-good", ("b:{y}",), ("t:{x}",), "a\n"),
    WriteCase("key-good-tag-bad", ("a:{x}",), ("{y}",), ""),
    WriteCase("key-good-tag-long-then-space", ("a:{x}",), ("t:{y}",), "t" * 250 + " "),
]


@pytest.mark.parametrize(MATRIX, matrix("invalidates", INVALIDATES))
def test_invalidates_with_a_bad_name_fails_before_the_write_or_invalidates_the_rest(
    case: WriteCase, make_cache: Callable[..., Facade]
) -> None:
    """A write whose declared invalidation names a bad key must not leave the good
    names of that declaration stale: either the call fails before the write runs,
    or every good key and tag is invalidated (like break 4's after-commit helpers)."""
    facade = make_cache()
    cache = facade.cache
    run(facade, cache.set, "a:1", "old", tags=["t:1"])
    body = Loader("written")
    deco = cache.invalidates(*case.keys, tags=list(case.tags))
    if facade.flavour == "sync":

        def write(x: int, y: str) -> Any:
            return body()

        wrapped = deco(write)
    else:

        async def awrite(x: int, y: str) -> Any:
            return body()

        wrapped = deco(awrite)
    try:
        run(facade, wrapped, 1, case.y)
    except ValueError:
        pass
    if body.calls:
        assert run(facade, cache.get, "a:1") is MISSING, "the write ran; a:1 stayed stale"
    assert_clean(facade)


# -- Bulk arguments ---------------------------------------------------------------------


@dataclass(frozen=True)
class BulkCase:
    id: str
    method: str
    arg: Any
    error: type[Exception]


BULK = [
    # A bare str is an iterable of one-character keys: delete_many("user:1") would
    # delete "u", "s", ... and leave "user:1" in place.
    BulkCase("delete_many-bare-str", "delete_many", "user:1", TypeError),
    BulkCase("get_many-bare-str", "get_many", "user:1", TypeError),
    BulkCase("get_many-none", "get_many", None, TypeError),
    BulkCase("delete_many-none", "delete_many", None, TypeError),
    BulkCase("set_many-none", "set_many", None, TypeError),
    BulkCase("set_many-pairs", "set_many", [("user:1", 1)], TypeError),
    BulkCase("get_many-int-key", "get_many", ["ok", 1], TypeError),
    BulkCase("delete_many-none-key", "delete_many", ["ok", None], TypeError),
    BulkCase("set_many-int-key", "set_many", {"ok": 1, 2: 2}, TypeError),
    BulkCase("get_many-empty-key", "get_many", ["ok", ""], ValueError),
    BulkCase("delete_many-space-key", "delete_many", ["ok", "a b"], ValueError),
    BulkCase("set_many-space-key", "set_many", {"ok": 1, "a b": 2}, ValueError),
]


@pytest.mark.parametrize(MATRIX, matrix("bulk", BULK))
def test_a_bad_bulk_argument_is_a_typed_error(
    case: BulkCase, make_cache: Callable[..., Facade]
) -> None:
    facade = make_cache()
    run(facade, facade.cache.set, "user:1", "kept")
    run(facade, facade.cache.set, "ok", "kept")
    method = getattr(facade.cache, case.method)
    problems = expect_error(facade, case.method, case.error, lambda: run(facade, method, case.arg))
    assert not problems, "\n".join(problems)
    # Nothing of a rejected batch was applied.
    assert run(facade, facade.cache.get_many, ["user:1", "ok"]) == {"user:1": "kept", "ok": "kept"}
    assert_clean(facade)


# -- Loaders ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoaderCase:
    id: str
    make: Callable[[str], Any]  # flavour -> the loader to pass
    error: type[Exception]


async def _coroutine_value() -> str:
    return "value"


LOADERS = [
    LoaderCase("none", lambda flavour: None, TypeError),
    LoaderCase("str", lambda flavour: "value", TypeError),
    # The wrong kind for the flavour: a coroutine function to Cache, a plain one to AsyncCache.
    LoaderCase(
        "wrong-flavour",
        lambda flavour: _coroutine_value if flavour == "sync" else (lambda: "value"),
        TypeError,
    ),
]


@pytest.mark.parametrize(MATRIX, matrix("loaders", LOADERS))
def test_a_bad_loader_is_a_type_error(case: LoaderCase, make_cache: Callable[..., Facade]) -> None:
    facade = make_cache()
    loader = case.make(facade.flavour)
    problems: list[str] = []
    for _ in range(REPEAT):
        problems += expect_error(
            facade,
            "get_or_load",
            case.error,
            lambda: run(facade, facade.cache.get_or_load, "k", loader),
        )
    assert not problems, "\n".join(dict.fromkeys(problems))
    # The key is not poisoned: a good loader works at once.
    good = Loader("good")
    assert run(facade, facade.cache.get_or_load, "k", good.of(facade)) == "good"
    assert_clean(facade)


# -- TTLs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TtlCase:
    id: str
    ttl: Any
    #: backend ("*": any) -> the error the call must raise; none: the TTL must work.
    errors: dict[str, type[Exception]] = field(default_factory=dict)
    #: Backends that may either raise that error or store the TTL and work.
    may_work: tuple[str, ...] = ()

    def error(self, backend: str) -> type[Exception] | None:
        return self.errors.get(backend, self.errors.get("*"))


BAD_TTLS = [
    TtlCase("nan", math.nan, {"*": ValueError}),
    TtlCase("inf", math.inf, {"*": ValueError}),
    TtlCase("minus-inf", -math.inf, {"*": ValueError}),
    TtlCase("negative", -1, {"*": ValueError}),
    TtlCase("tiny-negative", -1e-300, {"*": ValueError}),
    TtlCase("true", True, {"*": TypeError}),
    TtlCase("str", "5", {"*": TypeError}),
    TtlCase("bytes", b"5", {"*": TypeError}),
    TtlCase("list", [5], {"*": TypeError}),
    TtlCase("decimal", Decimal(5), {"*": TypeError}),
    # Redis cannot store an expiry that far out (break 17); memory may keep it.
    TtlCase("huge-1e17", 1e17, {"*": ValueError}, may_work=("memory",)),
    TtlCase("huge-int", 10**30, {"*": ValueError}, may_work=("memory",)),
    # Near whatever limit the cache sets: refused at the call, or stored and working.
    TtlCase("large-1e15", 1e15, {"*": ValueError}, may_work=BACKEND_NAMES),
    TtlCase("large-1e16", 1e16, {"*": ValueError}, may_work=BACKEND_NAMES),
]

OK_TTLS = [
    TtlCase("zero-stores-nothing", 0),
    TtlCase("negative-zero-stores-nothing", -0.0),
    TtlCase("int", 5),
    TtlCase("tiny", 0.001),
    TtlCase("large", 1e9),
    TtlCase("int-subclass", type("Seconds", (int,), {})(5)),
]


def _ttl_calls(facade: Facade, ttl: Any, loader: Loader) -> list[tuple[str, Callable[[], Any]]]:
    cache = facade.cache
    load = loader.of(facade)
    return [
        ("get_or_load", lambda: run(facade, cache.get_or_load, "k", load, ttl=ttl)),
        ("set", lambda: run(facade, cache.set, "k", "v", ttl=ttl)),
        ("set_many", lambda: run(facade, cache.set_many, {"k": "v", "k2": "v"}, ttl=ttl)),
        ("cached", lambda: decorate(facade, "item:{x}", ttl=ttl)),
    ]


@pytest.mark.parametrize(MATRIX, matrix("ttl", BAD_TTLS))
def test_a_bad_ttl_is_an_error_at_the_call(
    case: TtlCase, backend_name: str, make_cache: Callable[..., Facade]
) -> None:
    error = case.error(backend_name)
    facade = make_cache()
    cache = facade.cache
    loader = Loader()
    problems: list[str] = []
    works = error is None
    if error is not None and backend_name in case.may_work:
        try:
            run(facade, cache.get_or_load, "k", loader.of(facade), ttl=case.ttl)
            works = True
        except error:
            pass  # refused: then every call must refuse it, as below
    if works:
        # This backend can hold the value: then it must work, with nothing lost.
        assert run(facade, cache.get_or_load, "k", loader.of(facade), ttl=case.ttl) == "loaded"
        assert loader.calls == 1
        run(facade, cache.set, "k2", "v", ttl=case.ttl)
        assert run(facade, cache.get_many, ["k", "k2"]) == {"k": "loaded", "k2": "v"}
        assert_clean(facade)
        return
    assert error is not None
    # On a cold key, then on a warm one (the hit path checks the TTL too).
    for state in ("cold", "warm"):
        for label, call in _ttl_calls(facade, case.ttl, loader):
            problems += expect_error(facade, f"{label} ({state})", error, call)
        if state == "cold":
            assert run(facade, cache.get_many, ["k", "k2"]) == {}, "a rejected write landed"
            run(facade, cache.set, "k", "warm")
    assert loader.calls == 0, "a rejected call ran its loader"
    assert not problems, "\n".join(problems)
    assert_clean(facade)


@pytest.mark.parametrize(MATRIX, matrix("ttl", OK_TTLS))
def test_an_unusual_ttl_works(case: TtlCase, make_cache: Callable[..., Facade]) -> None:
    facade = make_cache()
    cache = facade.cache
    run(facade, cache.set, "k", "old")
    loader = Loader("loaded")
    assert run(facade, cache.get_or_load, "fresh", loader.of(facade), ttl=case.ttl) == "loaded"
    run(facade, cache.set, "k", "new", ttl=case.ttl)
    stored = case.ttl > 0
    # ttl=0 stores nothing, and a set with it removes what was there.
    expected = {"fresh": "loaded", "k": "new"} if stored else {}
    assert run(facade, cache.get_many, ["fresh", "k"]) == expected
    run(facade, cache.get_or_load, "fresh", loader.of(facade), ttl=case.ttl)
    assert loader.calls == (1 if stored else 2)
    assert_clean(facade)


@dataclass(frozen=True)
class OptionCase:
    id: str
    options: dict[str, Any]  # cache options: refused with ValueError, or working


HUGE_OPTIONS = [
    OptionCase("ttl-1e17", {"ttl": 1e17}),
    OptionCase("stale_ttl-1e17", {"stale_ttl": 1e17}),
    OptionCase("negative_ttl-1e17", {"negative_ttl": 1e17}),
    OptionCase("early_refresh-1e17", {"early_refresh": 1e17}),
    OptionCase("ttl-1e9-stale_ttl-1e9", {"ttl": 1e9, "stale_ttl": 1e9}),
    OptionCase("ttl-1e15-stale_ttl-1e15", {"ttl": 1e15, "stale_ttl": 1e15}),
    OptionCase("ttl-1e14-jitter-0.99", {"ttl": 1e14, "jitter": 0.99}),
]


@pytest.mark.parametrize(MATRIX, matrix("huge-options", HUGE_OPTIONS))
def test_a_huge_duration_option_is_rejected_or_works(
    case: OptionCase, make_cache: Callable[..., Facade]
) -> None:
    """A duration a backend cannot store is a ``ValueError`` when the cache is
    built; one it accepts must work, never turn every write into a backend error."""
    try:
        facade = make_cache(**case.options)
    except ValueError:
        return
    cache = facade.cache
    loader = Loader("loaded")
    for _ in range(REPEAT):
        assert run(facade, cache.get_or_load, "k", loader.of(facade)) == "loaded"
    assert loader.calls == 1
    run(facade, cache.set, "k2", None)  # a negative entry: negative_ttl applies
    assert run(facade, cache.get_many, ["k", "k2"]) == {"k": "loaded", "k2": None}
    assert run(facade, cache.delete, "k") is True
    assert_clean(facade)


# -- Tags ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TagCase:
    id: str
    tags: Any  # what ``tags=`` gets
    invalidate: tuple[Any, ...]  # what ``invalidate_tags(*...)`` gets
    error: type[Exception] | None = None


BAD_TAGS = [
    TagCase("empty", [""], ("",), ValueError),
    TagCase("empty-among-good", ["ok", ""], ("ok", ""), ValueError),
    TagCase("int", [1], (1,), TypeError),
    TagCase("none", [None], (None,), TypeError),
    TagCase("bytes", [b"t"], (b"t",), TypeError),
    TagCase("bare-str", "users", (["users"],), TypeError),
    TagCase("tuple-element", [("a", "b")], (("a", "b"),), TypeError),
    TagCase("int-not-iterable", 5, ([5],), TypeError),
    TagCase("space", ["a b"], ("a b",), ValueError),
    TagCase("newline", ["t\n"], ("t\n",), ValueError),
    TagCase("nul", ["t\x00"], ("t\x00",), ValueError),
    TagCase("lone-surrogate", ["t\ud800"], ("t\ud800",), ValueError),
    TagCase("long-then-space", ["t" * 250 + " "], ("t" * 250 + " ",), ValueError),
]

OK_TAGS = [
    TagCase("open-brace", ["{"], ("{",)),
    TagCase("close-brace", ["}"], ("}",)),
    TagCase("starts-with-close-brace", ["}users"], ("}users",)),
    TagCase("braced", ["{users}"], ("{users}",)),
    TagCase("glob", ["users:*"], ("users:*",)),
    TagCase("glob-class", ["[a-z]?"], ("[a-z]?",)),
    TagCase("backslash", ["a\\b"], ("a\\b",)),
    TagCase("colons", ["a:b:"], ("a:b:",)),
    TagCase("tag-lookalike", ["t}:tag"], ("t}:tag",)),
    TagCase("very-long", [LONG], (LONG,)),
    TagCase("very-long-braces", ["}" * 5_000], ("}" * 5_000,)),
    TagCase("unicode", ["ключ"], ("ключ",)),
    TagCase("same-as-key", ["k"], ("k",)),
    TagCase("duplicate", ["t", "t"], ("t", "t")),
]


def _bad_tag_calls(
    facade: Facade, case: TagCase, loader: Loader
) -> list[tuple[str, Callable[[], Any]]]:
    cache = facade.cache
    load = loader.of(facade)
    return [
        ("get_or_load", lambda: run(facade, cache.get_or_load, "k", load, tags=case.tags)),
        ("set", lambda: run(facade, cache.set, "k", "v", tags=case.tags)),
        ("set_many", lambda: run(facade, cache.set_many, {"k": "v"}, tags=case.tags)),
        ("invalidate_tags", lambda: run(facade, cache.invalidate_tags, *case.invalidate)),
    ]


@pytest.mark.parametrize(MATRIX, matrix("tags", BAD_TAGS))
def test_a_bad_tag_is_a_typed_error_at_the_call(
    case: TagCase, make_cache: Callable[..., Facade]
) -> None:
    assert case.error is not None
    facade = make_cache()
    loader = Loader()
    problems: list[str] = []
    for _ in range(REPEAT):
        for label, call in _bad_tag_calls(facade, case, loader):
            problems += expect_error(facade, label, case.error, call)
    assert loader.calls == 0, "a rejected call ran its loader"
    assert run(facade, facade.cache.get, "k") is MISSING, "a rejected write landed"
    assert not problems, "\n".join(dict.fromkeys(problems))
    assert_clean(facade)


@pytest.mark.parametrize(MATRIX, matrix("tags", OK_TAGS))
def test_an_unusual_tag_invalidates_exactly_its_entries(
    case: TagCase, make_cache: Callable[..., Facade]
) -> None:
    facade = make_cache()
    cache = facade.cache
    # A tag that differs only at its end: invalidating one must spare the other.
    near = [tag + "~" for tag in case.tags]
    run(facade, cache.set, "k", "tagged", tags=case.tags)
    run(facade, cache.set, "near", "spared", tags=near)
    hit = Loader("loaded")
    assert run(facade, cache.get_or_load, "k", hit.of(facade), tags=case.tags) == "tagged"
    assert hit.calls == 0
    run(facade, cache.invalidate_tags, *case.invalidate)
    assert run(facade, cache.get, "k") is MISSING, "invalidate_tags missed its entry"
    assert run(facade, cache.get, "near") == "spared", "invalidate_tags hit another tag"
    assert run(facade, cache.get_or_load, "k", hit.of(facade), tags=case.tags) == "loaded"
    assert run(facade, cache.get_or_load, "k", hit.of(facade), tags=case.tags) == "loaded"
    assert hit.calls == 1, "a reloaded tagged entry must hit"
    assert_clean(facade)


@dataclass(frozen=True)
class TemplateCase:
    id: str
    kwargs: dict[str, Any]  # for cached(...)
    x: Any = "1"  # the argument of the call
    error: type[Exception] = ValueError


# A tag template may fail when it is declared or when a call fills it, but with a
# typed error, and before anything reaches the backend.
DECORATOR_TAGS = [
    TemplateCase("tags-bare-str", {"tags": "item:{x}"}, error=TypeError),
    TemplateCase("tag-template-space", {"tags": ["item {x}"]}),
    TemplateCase("tag-unknown-field", {"tags": ["t:{y}"]}),
    TemplateCase("tag-positional-field", {"tags": ["t:{0}"]}),
    TemplateCase("tag-not-str", {"tags": [1]}, error=TypeError),
]


@pytest.mark.parametrize(MATRIX, matrix("decorator-tags", DECORATOR_TAGS))
def test_a_bad_decorator_tag_is_a_typed_error(
    case: TemplateCase, make_cache: Callable[..., Facade]
) -> None:
    facade = make_cache()
    try:
        f, body = decorate(facade, "item:{x}", **case.kwargs)
    except case.error:
        assert_clean(facade)
        return
    problems = expect_error(facade, "call", case.error, lambda: run(facade, f, case.x))
    assert not problems, "\n".join(problems)
    assert body.calls == 0
    assert_clean(facade)


# -- Namespaces and versions ---------------------------------------------------------------


@dataclass(frozen=True)
class Collision:
    """Two caches on one backend, whose (options, key) pairs must stay apart."""

    id: str
    first: dict[str, Any]
    first_key: str
    second: dict[str, Any]
    second_key: str


COLLISIONS = [
    Collision("users+admin:1-vs-users:admin+1", {"namespace": "users"}, "admin:1",
              {"namespace": "users:admin"}, "1"),
    Collision("v3:price-vs-version3+price", {"namespace": "shop"}, "v3:price",
              {"namespace": "shop", "version": 3}, "price"),
    Collision("clear-users-vs-users:admin", {"namespace": "users"}, "k",
              {"namespace": "users:admin"}, "k"),
    Collision("version-with-colon", {"namespace": "shop", "version": "3:x"}, "k",
              {"namespace": "shop", "version": 3}, "x:k"),
    Collision("empty-version-vs-v:key", {"namespace": "shop", "version": ""}, "price",
              {"namespace": "shop"}, "v:price"),
    Collision("namespace-trailing-colon", {"namespace": "a:"}, "b", {"namespace": "a"}, ":b"),
    Collision("glob-star-namespace", {"namespace": "a*"}, "k", {"namespace": "ab"}, "k"),
    Collision("glob-question-namespace", {"namespace": "a?"}, "k", {"namespace": "ab"}, "k"),
    Collision("glob-class-namespace", {"namespace": "[ab]"}, "k", {"namespace": "a"}, "k"),
    Collision("backslash-namespace", {"namespace": "a\\"}, "k", {"namespace": "a\\b"}, "k"),
    Collision("brace-namespace", {"namespace": "{a}"}, "k", {"namespace": "a"}, "k"),
    Collision("dotted-namespaces", {"namespace": "users"}, "k",
              {"namespace": "users.admin"}, "k"),
    # Namespaces past the 200-byte key limit that share their first 200 bytes.
    Collision("long-namespaces", {"namespace": "n" * 300 + "a"}, "k",
              {"namespace": "n" * 300 + "b"}, "k"),
]  # fmt: skip


@pytest.mark.parametrize(MATRIX, matrix("namespaces", COLLISIONS))
def test_distinct_namespaces_never_share_an_entry(
    case: Collision, make_cache: Callable[..., Facade]
) -> None:
    """Either one of the two is refused (a ``ValueError`` when the cache is built)
    or they never meet: not by key, not by ``clear()``."""
    try:
        first = make_cache(**case.first)
        second = make_cache(share_backend_of=first, **case.second)
    except ValueError:
        return
    a, b = first.cache, second.cache
    run(first, a.set, case.first_key, "first")
    assert run(second, b.get, case.second_key) is MISSING, "the second cache sees the first's"
    run(second, b.set, case.second_key, "second")
    assert run(first, a.get, case.first_key) == "first", "the second cache overwrote the first's"
    assert run(second, b.delete, case.second_key) is True
    assert run(first, a.get, case.first_key) == "first", "the second cache deleted the first's"
    # clear() of each empties its own namespace and spares the other's.
    run(second, b.set, case.second_key, "second")
    run(first, a.clear)
    assert run(first, a.get, case.first_key) is MISSING, "clear() missed its own entry"
    assert run(second, b.get, case.second_key) == "second", "clear() wiped another namespace"
    run(first, a.set, case.first_key, "first")
    run(second, b.clear)
    assert run(second, b.get, case.second_key) is MISSING, "clear() missed its own entry"
    assert run(first, a.get, case.first_key) == "first", "clear() wiped another namespace"
    assert_clean(first, "first")
    assert_clean(second, "second")


TAG_COLLISIONS = [
    Collision("users+admin:t-vs-users:admin+t", {"namespace": "users"}, "admin:t",
              {"namespace": "users:admin"}, "t"),
    Collision("v3:t-vs-version3+t", {"namespace": "shop"}, "v3:t",
              {"namespace": "shop", "version": 3}, "t"),
]  # fmt: skip


@pytest.mark.parametrize(MATRIX, matrix("tag-namespaces", TAG_COLLISIONS))
def test_distinct_namespaces_never_share_a_tag(
    case: Collision, make_cache: Callable[..., Facade]
) -> None:
    try:
        first = make_cache(**case.first)
        second = make_cache(share_backend_of=first, **case.second)
    except ValueError:
        return
    run(second, second.cache.set, "k", "second", tags=[case.second_key])
    run(first, first.cache.invalidate_tags, case.first_key)
    assert run(second, second.cache.get, "k") == "second", "another namespace's tag hit it"
    assert_clean(first, "first")
    assert_clean(second, "second")


@dataclass(frozen=True)
class NamespaceCase:
    id: str
    namespace: str
    version: Any = None


OK_NAMESPACES = [
    NamespaceCase("open-brace", "{"),
    NamespaceCase("close-brace", "}"),
    NamespaceCase("starts-with-close-brace", "}app"),
    NamespaceCase("braced", "{app}"),
    NamespaceCase("glob", "app*?[x]"),
    NamespaceCase("backslash", "app\\"),
    NamespaceCase("unicode", "ключ"),
    NamespaceCase("brace-version", "app", version="}"),
    NamespaceCase("negative-version", "app", version=-1),
    NamespaceCase("longest", "n" * 96),
    NamespaceCase("longest-with-version", "app", version="v" * 91),
]


@pytest.mark.parametrize(
    ("namespace", "version"),
    [("n" * 10_000, None), ("n" * 199, None), ("n" * 100, None), ("app", "v" * 300)],
    ids=["very-long", "just-over-the-key-limit", "just-over-the-prefix-limit", "long-version"],
)
@pytest.mark.parametrize("cls", [Cache, AsyncCache])
def test_a_namespace_too_long_to_start_every_stored_name_is_refused(
    cls: type[Any], namespace: str, version: str | None
) -> None:
    """A prefix longer than what a hashed long key keeps would make clear() miss
    that cache's long keys (their stored names would not start with it)."""
    with pytest.raises(ValueError, match="at most 99 bytes"):
        cls(namespace=namespace, version=version)


@pytest.mark.parametrize(MATRIX, matrix("namespace-round-trip", OK_NAMESPACES))
@pytest.mark.parametrize("key", ["k", "x" * 300], ids=["short-key", "long-key"])
def test_an_unusual_namespace_round_trips(
    case: NamespaceCase, key: str, make_cache: Callable[..., Facade]
) -> None:
    options = {"namespace": case.namespace, "version": case.version}
    facade = make_cache(**options)
    round_trip(facade, key, lambda: make_cache(share_backend_of=facade, **options))


@pytest.mark.parametrize(("backend_name", "flavour"), [("memory", f) for f in FLAVOURS])
def test_zero_pending_refreshes_still_serves_a_stale_hit(
    make_cache: Callable[..., Facade], clock: FakeClock
) -> None:
    """``max_pending_refreshes=0`` is allowed: a stale hit is then served (or
    reloaded) at once, never waits on a refresh that has no room to run."""
    facade = make_cache(ttl=1, stale_ttl=60, max_pending_refreshes=0)
    cache = facade.cache
    assert run(facade, cache.get_or_load, "k", Loader("old").of(facade)) == "old"
    clock.advance(2)
    assert run(facade, cache.get_or_load, "k", Loader("new").of(facade)) in ("old", "new")
    assert run(facade, cache.wait_background, timeout=DEADLINE)
    assert_clean(facade)


# -- Constructors and options (no backend needed) -----------------------------------------


@dataclass(frozen=True)
class CtorCase:
    id: str
    options: dict[str, Any]
    error: type[Exception]
    classes: tuple[type, ...] = (Cache, AsyncCache)


def _bad_number_cases(name: str) -> list[CtorCase]:
    return [
        CtorCase(f"{name}-nan", {name: math.nan}, ValueError),
        CtorCase(f"{name}-inf", {name: math.inf}, ValueError),
        CtorCase(f"{name}-negative", {name: -1}, ValueError),
        CtorCase(f"{name}-true", {name: True}, TypeError),
        CtorCase(f"{name}-str", {name: "5"}, TypeError),
        CtorCase(f"{name}-none", {name: None}, TypeError),
    ]


CONSTRUCTOR = [
    *_bad_number_cases("ttl"),
    *_bad_number_cases("stale_ttl"),
    *_bad_number_cases("negative_ttl"),
    *_bad_number_cases("early_refresh"),
    CtorCase("jitter-one", {"jitter": 1.0}, ValueError),
    CtorCase("jitter-negative", {"jitter": -0.1}, ValueError),
    CtorCase("jitter-nan", {"jitter": math.nan}, ValueError),
    CtorCase("jitter-inf", {"jitter": math.inf}, ValueError),
    CtorCase("jitter-true", {"jitter": True}, TypeError),
    CtorCase("jitter-str", {"jitter": "0.1"}, TypeError),
    CtorCase("refresh_workers-zero", {"refresh_workers": 0}, ValueError, (Cache,)),
    CtorCase("refresh_workers-negative", {"refresh_workers": -1}, ValueError, (Cache,)),
    CtorCase("refresh_workers-true", {"refresh_workers": True}, TypeError, (Cache,)),
    CtorCase("refresh_workers-float", {"refresh_workers": 1.5}, TypeError, (Cache,)),
    CtorCase("refresh_workers-async", {"refresh_workers": 4}, TypeError, (AsyncCache,)),
    CtorCase("max_pending_refreshes-negative", {"max_pending_refreshes": -1}, ValueError),
    CtorCase("max_pending_refreshes-true", {"max_pending_refreshes": True}, TypeError),
    CtorCase("max_pending_refreshes-float", {"max_pending_refreshes": 2.5}, TypeError),
    CtorCase("namespace-space", {"namespace": "my app"}, ValueError),
    CtorCase("namespace-only-space", {"namespace": " "}, ValueError),
    CtorCase("namespace-newline", {"namespace": "app\n"}, ValueError),
    CtorCase("namespace-nul", {"namespace": "app\x00"}, ValueError),
    CtorCase("namespace-lone-surrogate", {"namespace": "app\ud800"}, ValueError),
    CtorCase("namespace-long-then-tab", {"namespace": "n" * 300 + "\t"}, ValueError),
    CtorCase("namespace-int", {"namespace": 1}, TypeError),
    CtorCase("namespace-bytes", {"namespace": b"app"}, TypeError),
    CtorCase("namespace-none", {"namespace": None}, TypeError),
    CtorCase("version-space", {"version": "v 2"}, ValueError),
    CtorCase("version-newline", {"version": "2\n"}, ValueError),
    CtorCase("version-true", {"version": True}, TypeError),
    CtorCase("version-float", {"version": 1.5}, TypeError),
    CtorCase("version-bytes", {"version": b"2"}, TypeError),
    CtorCase("version-list", {"version": [2]}, TypeError),
    CtorCase("clock-not-callable", {"clock": 1.0}, TypeError),
    CtorCase("rng-not-random", {"rng": 42}, TypeError),
    CtorCase("is_negative-not-callable", {"is_negative": True}, TypeError),
    CtorCase("backend-not-a-backend", {"backend": "memory://"}, TypeError),
    CtorCase("unknown-option", {"timeout": 1}, TypeError),
]


@pytest.mark.parametrize(
    ("case", "cls"),
    [
        pytest.param(case, cls, id=f"{case.id}-{cls.__name__}")
        for case in CONSTRUCTOR
        for cls in case.classes
    ],
)
def test_a_bad_constructor_option_is_a_typed_error(case: CtorCase, cls: type) -> None:
    options = dict(case.options)
    backend = options.pop("backend", None)
    with pytest.raises(case.error):
        cls(backend, **options)


@dataclass(frozen=True)
class DecoratorCase:
    id: str
    kind: str  # "cached" or "invalidates"
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    error: type[Exception]


DECORATOR_OPTIONS = [
    DecoratorCase("cached-key-int", "cached", (1,), {}, TypeError),
    DecoratorCase("cached-key-bytes", "cached", (b"k",), {}, TypeError),
    DecoratorCase("cached-key-unclosed-brace", "cached", ("item:{x",), {}, ValueError),
    DecoratorCase("cached-key-stray-close-brace", "cached", ("item:}",), {}, ValueError),
    DecoratorCase("cached-key-unknown-field", "cached", ("item:{y}",), {}, ValueError),
    DecoratorCase("cached-key-positional-field", "cached", ("item:{0}",), {}, ValueError),
    DecoratorCase("cached-ttl-nan", "cached", ("k:{x}",), {"ttl": math.nan}, ValueError),
    DecoratorCase("cached-ttl-negative", "cached", ("k:{x}",), {"ttl": -1}, ValueError),
    DecoratorCase("cached-ttl-str", "cached", ("k:{x}",), {"ttl": "5"}, TypeError),
    DecoratorCase("cached-ttl-true", "cached", ("k:{x}",), {"ttl": True}, TypeError),
    DecoratorCase("max_keys-zero", "cached", ("k:{x}",), {"max_keys": 0}, ValueError),
    DecoratorCase("max_keys-negative", "cached", ("k:{x}",), {"max_keys": -1}, ValueError),
    DecoratorCase("max_keys-true", "cached", ("k:{x}",), {"max_keys": True}, TypeError),
    DecoratorCase("max_keys-float", "cached", ("k:{x}",), {"max_keys": 1.5}, TypeError),
    DecoratorCase("on_max_keys-unknown", "cached", ("k:{x}",), {"on_max_keys": "drop"}, ValueError),
    DecoratorCase("invalidates-nothing", "invalidates", (), {}, ValueError),
    DecoratorCase("invalidates-key-int", "invalidates", (1,), {}, TypeError),
    DecoratorCase("invalidates-unknown-field", "invalidates", ("k:{y}",), {}, ValueError),
    DecoratorCase("invalidates-tags-bare-str", "invalidates", (), {"tags": "t:{x}"}, TypeError),
    DecoratorCase("invalidates-bad-template", "invalidates", ("k:{x",), {}, ValueError),
]


@pytest.mark.parametrize("case", plain("decorator-options", DECORATOR_OPTIONS))
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_bad_decorator_option_is_a_typed_error_when_declared(
    case: DecoratorCase, flavour: str
) -> None:
    cache: Any = Cache() if flavour == "sync" else AsyncCache()

    def f(x: Any) -> Any:
        return x

    async def af(x: Any) -> Any:
        return x

    try:
        with pytest.raises(case.error):
            getattr(cache, case.kind)(*case.args, **case.kwargs)(f if flavour == "sync" else af)
    finally:
        if flavour == "sync":
            cache.close()
        else:
            asyncio.run(cache.aclose())


@dataclass(frozen=True)
class Case:
    """A call into a constructor that takes no cache, and the error it must raise."""

    id: str
    call: Callable[[], Any]
    error: type[Exception] | tuple[type[Exception], ...]


# Typed as Any: this table passes wrong types on purpose.
_MemoryBackend: Any = MemoryBackend
_BreakerPolicy: Any = BreakerPolicy
_Codec: Any = Codec
_PickleSerializer: Any = PickleSerializer

OTHER_CONSTRUCTORS = [
    Case("memory-max_entries-zero", lambda: _MemoryBackend(max_entries=0), ValueError),
    Case("memory-max_entries-negative", lambda: _MemoryBackend(max_entries=-1), ValueError),
    Case("memory-max_entries-true", lambda: _MemoryBackend(max_entries=True), TypeError),
    Case("memory-max_entries-float", lambda: _MemoryBackend(max_entries=10.0), TypeError),
    Case("memory-max_entries-str", lambda: _MemoryBackend(max_entries="10"), TypeError),
    Case("memory-max_bytes-zero", lambda: _MemoryBackend(max_bytes=0), ValueError),
    Case("memory-max_bytes-inf", lambda: _MemoryBackend(max_bytes=math.inf), TypeError),
    Case("memory-max_bytes-none", lambda: _MemoryBackend(max_bytes=None), TypeError),
    Case("memory-max_tags-zero", lambda: _MemoryBackend(max_tags=0), ValueError),
    Case("memory-weigher-not-callable", lambda: _MemoryBackend(weigher=8), TypeError),
    Case("breaker-failure_threshold-zero", lambda: _BreakerPolicy(failure_threshold=0), ValueError),
    Case("breaker-failure_threshold-true", lambda: _BreakerPolicy(failure_threshold=True),
         (TypeError, ValueError)),
    Case("breaker-min_calls-zero", lambda: _BreakerPolicy(min_calls=0), ValueError),
    Case("breaker-min_calls-float", lambda: _BreakerPolicy(min_calls=2.5), (TypeError, ValueError)),
    Case("breaker-failure_ratio-zero", lambda: _BreakerPolicy(failure_ratio=0), ValueError),
    Case("breaker-failure_ratio-over-one", lambda: _BreakerPolicy(failure_ratio=1.5), ValueError),
    Case("breaker-failure_ratio-nan", lambda: _BreakerPolicy(failure_ratio=math.nan), ValueError),
    Case("breaker-failure_ratio-str", lambda: _BreakerPolicy(failure_ratio="0.5"), TypeError),
    Case("breaker-failure_ratio-true", lambda: _BreakerPolicy(failure_ratio=True),
         (TypeError, ValueError)),
    Case("breaker-window-zero", lambda: _BreakerPolicy(window=0), ValueError),
    Case("breaker-window-inf", lambda: _BreakerPolicy(window=math.inf), ValueError),
    Case("breaker-open_seconds-negative", lambda: _BreakerPolicy(open_seconds=-1), ValueError),
    Case("breaker-open_seconds-nan", lambda: _BreakerPolicy(open_seconds=math.nan), ValueError),
    Case("breaker-open_seconds-true", lambda: _BreakerPolicy(open_seconds=True), TypeError),
    Case("codec-serializer-name", lambda: _Codec("json"), TypeError),
    Case("codec-max_value_bytes-zero", lambda: _Codec(max_value_bytes=0), ValueError),
    Case("codec-max_value_bytes-true", lambda: _Codec(max_value_bytes=True), TypeError),
    Case("codec-max_value_bytes-float", lambda: _Codec(max_value_bytes=1e6), TypeError),
    Case("codec-compress_threshold-negative", lambda: _Codec(compress_threshold=-1), ValueError),
    Case("codec-compress-unknown", lambda: _Codec(compress="gzip"), ValueError),
    Case("codec-compress-int", lambda: _Codec(compress=1), (TypeError, ValueError)),
    Case("pickle-secret-empty", lambda: _PickleSerializer(""), ValueError),
    Case("pickle-secret-short", lambda: _PickleSerializer(b"15 bytes secret"), ValueError),
    Case("pickle-secret-none", lambda: _PickleSerializer(None), TypeError),
    Case("pickle-secret-int", lambda: _PickleSerializer(1234567890123456), TypeError),
    Case("pickle-secret-list", lambda: _PickleSerializer([b"x"] * 16), TypeError),
]  # fmt: skip


@pytest.mark.parametrize("case", plain("other-constructors", OTHER_CONSTRUCTORS))
def test_a_bad_option_of_another_public_constructor_is_a_typed_error(case: Case) -> None:
    with pytest.raises(case.error):
        case.call()


def test_a_sixteen_byte_secret_of_any_spelling_is_accepted() -> None:
    for secret in ("s" * 16, b"s" * 16, "é" * 8):  # "é" is two bytes in UTF-8
        PickleSerializer(secret)


@dataclass(frozen=True)
class WeigherCase:
    id: str
    weigher: Callable[[Any], Any]
    error: type[Exception] | tuple[type[Exception], ...]


def _raising_weigher(value: Any) -> int:
    raise RuntimeError("weigher bug")


WEIGHERS = [
    WeigherCase("negative", lambda value: -1, ValueError),
    WeigherCase("float", lambda value: 1.5, ValueError),
    WeigherCase("str", lambda value: "10", ValueError),
    WeigherCase("true", lambda value: True, ValueError),
    WeigherCase("none", lambda value: None, ValueError),
    # Its own exception, or a typed one wrapping it.
    WeigherCase("raises", _raising_weigher, (RuntimeError, ValueError, TypeError)),
]


@pytest.mark.parametrize("case", plain("weigher", WEIGHERS))
@pytest.mark.parametrize("backend_name", ["memory"])
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_broken_weigher_is_the_callers_error_not_the_backends(
    case: WeigherCase, make_cache: Callable[..., Facade]
) -> None:
    """A weigher is the application's code: its bad answer raises at the write,
    like an unserializable value, and is not held as an invalidation to retry."""
    facade = make_cache({"weigher": case.weigher})
    cache = facade.cache
    loader = Loader()
    problems = expect_error(facade, "set", case.error, lambda: run(facade, cache.set, "k", "v"))
    problems += expect_error(
        facade, "set_many", case.error, lambda: run(facade, cache.set_many, {"k": "v"})
    )
    problems += expect_error(
        facade,
        "get_or_load",
        case.error,
        lambda: run(facade, cache.get_or_load, "k", loader.of(facade)),
    )
    assert not problems, "\n".join(problems)
    assert run(facade, cache.get, "k") is MISSING
    assert_clean(facade)


# -- from_url keyword options -----------------------------------------------------------------


@dataclass(frozen=True)
class UrlCase:
    id: str
    url: Any  # a str, or a fixture name in angle brackets
    options: dict[str, Any]
    error: type[Exception]


FROM_URL = [
    UrlCase("url-int", 1, {}, TypeError),
    UrlCase("url-empty", "", {}, ValueError),
    UrlCase("url-whitespace", "  ", {}, ValueError),
    UrlCase("url-no-scheme", "localhost:6379", {}, ValueError),
    UrlCase("url-unknown-scheme", "memcached://localhost", {}, ValueError),
    UrlCase("memory-ttl-nan", "memory://", {"ttl": math.nan}, ValueError),
    UrlCase("memory-namespace-space", "memory://", {"namespace": "my app"}, ValueError),
    UrlCase("memory-serializer", "memory://", {"serializer": PickleSerializer(b"s" * 16)},
            ValueError),
    UrlCase("memory-unknown-option", "memory://", {"max_items": 10}, TypeError),
    UrlCase("memory-redis-option", "memory://", {"socket_timeout": 1.0}, TypeError),
    UrlCase("memory-backend-twice", "memory://", {"backend": MemoryBackend()}, TypeError),
    UrlCase("redis-serializer-name", "<redis_url>", {"serializer": "yaml"}, ValueError),
    UrlCase("redis-pickle-no-secret", "<redis_url>", {"serializer": "pickle"}, ValueError),
    UrlCase("redis-client-option", "<redis_url>", {"client_options": {"bogus": 1}}, TypeError),
    UrlCase("redis-ttl-inf", "<redis_url>", {"ttl": math.inf}, ValueError),
    UrlCase("redis-namespace-newline", "<redis_url>", {"namespace": "app\n"}, ValueError),
    UrlCase("redis-jitter-one", "<redis_url>", {"jitter": 1.0}, ValueError),
    UrlCase("cluster-version-true", "<redis_cluster_url>", {"version": True}, TypeError),
]  # fmt: skip


def _own_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.is_alive()}


@pytest.mark.parametrize("case", plain("from_url", FROM_URL))
@pytest.mark.parametrize("cls", [Cache, AsyncCache], ids=["sync", "async"])
def test_from_url_with_a_bad_option_fails_at_the_call_and_leaks_nothing(
    case: UrlCase, cls: Any, request: pytest.FixtureRequest
) -> None:
    url = case.url
    if isinstance(url, str) and url.startswith("<"):
        url = request.getfixturevalue(url.strip("<>"))
    before = _own_threads()
    with pytest.raises(case.error):
        cls.from_url(url, **case.options)
    leaked = [t.name for t in _own_threads() - before]
    assert not leaked, f"threads left running by a failed from_url: {leaked}"


def _iterable_of(items: Iterable[Any]) -> Iterable[Any]:
    yield from items


@pytest.mark.parametrize(
    ("backend_name", "flavour"), [(b, f) for b in BACKEND_NAMES for f in FLAVOURS]
)
def test_bulk_calls_take_any_iterable_of_good_keys(make_cache: Callable[..., Facade]) -> None:
    """The other side of the bulk table: a generator of good keys is fine."""
    facade = make_cache()
    cache = facade.cache
    run(facade, cache.set_many, {"a": 1, "b": 2})
    assert run(facade, cache.get_many, _iterable_of(["a", "b"])) == {"a": 1, "b": 2}
    assert run(facade, cache.delete_many, _iterable_of(["a", "b"])) == 2
    assert run(facade, cache.delete_many, []) == 0
    assert run(facade, cache.get_many, []) == {}
    run(facade, cache.invalidate_tags)  # no tags: nothing to do
    assert_clean(facade)
